//! Prometheus metrics, served at `/metrics`.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    pub grant_type: &'static str,
    pub format: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `cache` or `store`.
    pub source: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<HttpLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub issued: Family<IssuedLabels, Counter>,
    /// Opaque-token records found by introspection, by where they came from.
    pub opaque_lookups: Family<LookupLabels, Counter>,
}

impl Metrics {
    /// Counts a token issued by `grant_type` in `format`.
    pub fn count_issued(&self, grant_type: &'static str, format: tokenmesh_crds::TokenFormat) {
        let format = match format {
            tokenmesh_crds::TokenFormat::Opaque => "opaque",
            _ => "jwt",
        };
        self.issued
            .get_or_create(&IssuedLabels { grant_type, format })
            .inc();
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenmesh");
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let issued = Family::<IssuedLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            latency.clone(),
        );
        registry.register(
            "tokens_issued",
            "Access tokens issued by grant type and format",
            issued.clone(),
        );
        let opaque_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "opaque_token_lookups",
            "Opaque-token records found at introspection, from the cache or the store",
            opaque_lookups.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            issued,
            opaque_lookups,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
