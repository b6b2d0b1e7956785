//! One trace span per hop through the sidecar, continuing the W3C
//! `traceparent` the request brings and passing this hop's context on: to
//! the application (inbound), to the destination (outbound) and to the
//! token server (gRPC metadata), so that a request is one trace across the
//! mesh. Outbound spans say how the token was made: `tokenmesh.mode`
//! (share, exchange, embed) and `tokenmesh.policy`. Without trace export
//! (`--otlp-endpoint`, `OTEL_*`) the spans are log context only and the
//! trace headers pass through untouched.

use http::HeaderMap;
use tokenmesh_proto::v1::Mode;
use tokenmesh_tokens::runtime::trace_context;
use tracing::{Span, field::Empty};

use crate::mesh::Route;

/// The span of a request coming in to the application: a root of its own,
/// or the caller's child when it sent a trace context.
pub fn inbound(headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "inbound",
        otel.name = "sidecar inbound",
        otel.kind = "server",
        http.response.status_code = Empty,
    );
    trace_context::continue_from(&span, headers);
    span
}

/// The span of a request going out from the application.
pub fn outbound(headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "outbound",
        otel.name = "sidecar outbound",
        otel.kind = "client",
        server.address = Empty,
        tokenmesh.mode = Empty,
        tokenmesh.policy = Empty,
        tokenmesh.audience = Empty,
        http.response.status_code = Empty,
    );
    trace_context::continue_from(&span, headers);
    span
}

/// Records on the current (outbound) span where the request goes and how
/// its token is made.
pub fn record_route(host: &str, route: Option<&Route>) {
    let span = Span::current();
    span.record("server.address", host);
    if let Some(route) = route {
        span.record("tokenmesh.mode", mode_name(route.mode));
        span.record("tokenmesh.policy", &*route.policy);
        span.record("tokenmesh.audience", &*route.audience);
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Share => "share",
        Mode::Exchange => "exchange",
        Mode::Embed => "embed",
        Mode::Unspecified => "unspecified",
    }
}

/// Writes `span`'s context into the headers of the request it forwards.
pub fn pass_on(span: &Span, headers: &mut HeaderMap) {
    span.in_scope(|| trace_context::inject(headers));
}

/// The current span's context into a gRPC call's metadata.
pub fn trace_into(metadata: &mut tonic::metadata::MetadataMap) {
    for (name, value) in trace_context::current() {
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(value) {
            metadata.insert(name, value);
        }
    }
}
