//! The W3C trace context (`traceparent`, `tracestate`) across hops: a span
//! takes the caller's context as its parent, and a call made inside a span
//! carries that span's context on. Without trace export nothing is read or
//! written, so headers pass through a proxy untouched.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes the context in `headers` (if any) the parent of `span`.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() {
        return; // nothing takes it: spare the parsing on every request
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// The context of the current span as (header name, value) pairs, none
/// when the span is not exported.
pub fn current() -> Vec<(&'static str, String)> {
    let mut fields = Fields(Vec::new());
    let span = tracing::Span::current();
    if span.is_disabled() {
        return fields.0;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut fields);
    fields.0
}

/// Writes the current span's context into `headers`, replacing what came
/// in (the hop is the next one's parent); leaves them as they are when
/// spans are not exported.
pub fn inject(headers: &mut http::HeaderMap) {
    for (name, value) in current() {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Fields(Vec<(&'static str, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            // An empty `tracestate` says nothing.
            return;
        }
        // The propagator writes only these two.
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_span_continues_the_callers_trace_and_passes_itself_on() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
            let span = tracing::info_span!("hop");
            continue_from(&span, &headers);
            let _entered = span.enter();
            let context = span.context();
            let own = context.span().span_context().clone();
            assert_eq!(
                own.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );

            inject(&mut headers);
            let sent = headers["traceparent"].to_str().unwrap();
            assert_eq!(
                sent,
                format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", own.span_id()),
                "the same trace, this hop as the parent"
            );
        });
    }

    #[test]
    fn without_export_headers_pass_untouched() {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
        let span = tracing::info_span!("hop");
        continue_from(&span, &headers);
        let _entered = span.enter();
        assert!(current().is_empty());
        inject(&mut headers);
        assert_eq!(headers["traceparent"], PARENT);
    }
}
