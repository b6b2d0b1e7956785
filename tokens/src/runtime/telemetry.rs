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
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
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
        let filter = EnvFilter::try_new(&self.filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let log = match self.format {
            LogFormat::Json => log.json().with_filter(filter).boxed(),
            LogFormat::Text => log
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter)
                .boxed(),
        };
        let traces = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("tokenmesh"))
                .with_filter(exported())
        });
        let _ = Registry::default().with(traces).with(log).try_init();
        match (&provider, problem) {
            (Some(_), _) => {
                tracing::info!(service = %self.service_name, "exporting traces over OTLP/gRPC")
            }
            (None, Some(err)) => tracing::error!(error = %err, "OpenTelemetry: no trace export"),
            (None, None) => {}
        }
        Exporter(provider)
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
