//! One span per request on both listeners (HTTP and gRPC), continuing the
//! caller's W3C trace context: a sidecar's exchange shows in the trace of
//! the request that needed it. Probes and metrics scrapes get none.

use axum::http::{Method, Request, header};
use tokenmesh_tokens::runtime::trace_context;

/// The span of `request`, to instrument its answer with. Made where each
/// request enters (`http::bounded`), not as a router layer: a layer is
/// applied to every route and cost each request a clone of the route, two
/// boxed futures and copies of the handler's future even with spans off.
pub fn span<B>(request: &Request<B>) -> tracing::Span {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return tracing::Span::none();
    }
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let name = SpanName {
        grpc,
        method: request.method(),
        path,
    };
    // A root unless the caller sent a context: not a child of the connection.
    // Fields are formatted only when something takes the span.
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.name = %name,
        otel.kind = "server",
        rpc.system = grpc.then_some("grpc"),
        http.request.method = %request.method(),
        url.path = %path,
    );
    trace_context::continue_from(&span, request.headers());
    span
}

/// gRPC: `/package.Service/Method`, named `package.Service/Method` by
/// OpenTelemetry's convention; HTTP: the method and the path.
struct SpanName<'a> {
    grpc: bool,
    method: &'a Method,
    path: &'a str,
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.grpc {
            f.write_str(self.path.trim_start_matches('/'))
        } else {
            write!(f, "{} {}", self.method, self.path)
        }
    }
}
