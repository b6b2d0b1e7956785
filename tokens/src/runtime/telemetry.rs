//! The log and the optional OpenTelemetry trace export of a binary.
//!
//! The log goes to stderr, as text (ANSI colours on a terminal) or JSON,
//! filtered by the binary's `--log` (`EnvFilter` syntax). Spans are exported
//! over OTLP/gRPC only when asked: `--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_TRACES_EXPORTER=otlp`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn it off. The exporter and the SDK read the
//! rest of the standard variables themselves (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`(`_ARG`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`,
//! `OTEL_BSP_*`). Export failures are the SDK's to retry; they never stop
//! the binary.

use opentelemetry::{KeyValue, trace::TracerProvider};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{Subscriber, level_filters::LevelFilter};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt, Targets, filter_fn},
    layer::{Filter, SubscriberExt},
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a binary's flags say about its log and traces.
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub format: LogFormat,
    /// `EnvFilter` directives; an invalid one falls back to `info`.
    pub filter: String,
    /// The OTLP/gRPC collector (`http://collector:4317`); `None` leaves it
    /// to the `OTEL_*` variables, and without them nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` when `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`) does not set it.
    pub service_name: String,
}

/// Holds the spans not yet sent; [`Exporter::flush`] sends them before the
/// runtime stops.
#[must_use]
pub struct Exporter(Option<SdkTracerProvider>);

impl Exporter {
    pub fn flush(self) {
        if let Some(provider) = self.0
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "OpenTelemetry: spans not sent at shutdown");
        }
    }
}

impl Telemetry {
    /// Installs the global subscriber: the log, and the span exporter when
    /// asked. Runs inside the tokio runtime (the exporter's channel lives there).
    pub fn init(&self) -> Exporter {
        let env = |name: &str| std::env::var(name).ok();
        let (provider, problem) = if export_wanted(self.otlp_endpoint.as_deref(), &env) {
            match self.provider(&env) {
                Ok(provider) => (Some(provider), None),
                Err(err) => (None, Some(err)),
            }
        } else {
            (None, None)
        };
        let _ = Registry::default()
            .with(self.layers(provider.as_ref()))
            .try_init();
        match (&provider, problem) {
            (Some(_), _) => {
                tracing::info!(service = %self.service_name, "exporting traces over OTLP/gRPC")
            }
            (None, Some(err)) => tracing::error!(error = %err, "OpenTelemetry: no trace export"),
            (None, None) => {}
        }
        Exporter(provider)
    }

    /// The log, and the exporter's layer when there is one. Only the layers
    /// there are: an absent layer (`None`) counts as one that wants every
    /// span, and the registry would open them all.
    fn layers(
        &self,
        provider: Option<&SdkTracerProvider>,
    ) -> Vec<Box<dyn Layer<Registry> + Send + Sync>> {
        let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let log = match self.format {
            LogFormat::Json => log.json().with_filter(log_filter(&self.filter)).boxed(),
            LogFormat::Text => log
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(log_filter(&self.filter))
                .boxed(),
        };
        let mut layers = vec![log];
        if let Some(provider) = provider {
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("tokenmesh"))
                    .with_filter(exported())
                    .boxed(),
            );
        }
        layers
    }

    fn provider(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<SdkTracerProvider, String> {
        if let Some(protocol) = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|p| p != "grpc")
        {
            tracing::warn!(%protocol, "OpenTelemetry: only OTLP over gRPC is built in; exporting over gRPC");
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = &self.otlp_endpoint {
            exporter = opentelemetry_otlp::WithExportConfig::with_endpoint(exporter, endpoint);
        }
        let exporter = exporter.build().map_err(|e| e.to_string())?;
        let detected = Resource::builder().build();
        let named = detected
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
        let resource = if named {
            detected
        } else {
            Resource::builder()
                .with_attribute(KeyValue::new("service.name", self.service_name.clone()))
                .build()
        };
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    }
}

/// What the log takes: `directives` (`EnvFilter` syntax; an invalid one
/// falls back to `info`), and spans only when they allow `debug` somewhere.
/// A span in the log costs a formatted copy of its fields when it opens,
/// and the request span opens on every request (6% of the server's time per
/// ES256 token, measured); at `info` log lines go without that context.
fn log_filter<S>(directives: &str) -> impl Filter<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let spans = filter
        .max_level_hint()
        .is_none_or(|level| level >= LevelFilter::DEBUG);
    filter.and(filter_fn(move |meta| spans || !meta.is_span()))
}

/// Off unless a flag or a standard variable asks for it.
fn export_wanted(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let is =
        |name: &str, value: &str| env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return false;
    }
    flag.is_some_and(|f| !f.trim().is_empty())
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        || set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || is("OTEL_TRACES_EXPORTER", "otlp")
}

/// tokenmesh's spans at `info` and above; the exporter's own transport
/// (tonic, hyper, h2) never, or each export would make spans to export.
fn exported() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("h2", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
        .with_target("tonic", tracing::level_filters::LevelFilter::OFF)
        .with_target("tower", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
        .with_target(
            "opentelemetry_sdk",
            tracing::level_filters::LevelFilter::OFF,
        )
        .with_target(
            "opentelemetry_otlp",
            tracing::level_filters::LevelFilter::OFF,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(flag: Option<&str>, vars: &[(&str, &str)]) -> bool {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        export_wanted(flag, &|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    /// What `directives` make of an event inside a span.
    fn logged(directives: &str) -> String {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = out.clone();
            move || Capture(out.clone())
        };
        let log = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_filter(log_filter(directives));
        let subscriber = Registry::default().with(log);
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            let _request = tracing::info_span!("request", path = "/oauth2/token").entered();
            tracing::info!(client_id = "orders", "token issued");
        });
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Without export and at `info`, no span is even opened: nothing would
    /// take it (the request span opens on every request).
    #[test]
    fn without_export_spans_open_only_for_a_debug_log() {
        let opened = |filter: &str| {
            let telemetry = Telemetry {
                format: LogFormat::Text,
                filter: filter.into(),
                otlp_endpoint: None,
                service_name: "test".into(),
            };
            let subscriber = Registry::default().with(telemetry.layers(None));
            tracing::subscriber::with_default(subscriber, || {
                // Other tests' subscribers come and go on other threads: ask
                // this one afresh rather than what a cached interest says.
                tracing::callsite::rebuild_interest_cache();
                !tracing::info_span!("request").is_disabled()
            })
        };
        assert!(!opened("info"));
        assert!(opened("debug"));
    }

    #[test]
    fn spans_reach_the_log_only_at_debug() {
        let info = logged("info");
        assert!(info.contains("token issued client_id=\"orders\""), "{info}");
        assert!(!info.contains("request{"), "{info}");
        for verbose in ["debug", "info,tokenmesh=debug", "trace"] {
            let debug = logged(verbose);
            assert!(
                debug.contains("request{path=\"/oauth2/token\"}"),
                "{verbose}: {debug}"
            );
            assert!(debug.contains("token issued"), "{verbose}: {debug}");
        }
        assert_eq!(logged("warn"), "");
    }

    #[test]
    fn trace_export_is_off_unless_asked_for() {
        assert!(!wanted(None, &[]));
        assert!(!wanted(Some(""), &[("OTEL_SERVICE_NAME", "x")]));
        assert!(wanted(Some("http://collector:4317"), &[]));
        assert!(wanted(
            None,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]
        ));
        assert!(wanted(
            None,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]
        ));
        assert!(wanted(None, &[("OTEL_TRACES_EXPORTER", "otlp")]));
    }

    #[test]
    fn the_standard_switches_turn_it_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(!wanted(
            Some("http://c:4317"),
            &[("OTEL_SDK_DISABLED", "true")]
        ));
        assert!(!wanted(None, &[endpoint, ("OTEL_TRACES_EXPORTER", "none")]));
        assert!(wanted(None, &[endpoint, ("OTEL_SDK_DISABLED", "false")]));
    }
}
