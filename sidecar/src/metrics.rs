//! The sidecar's Prometheus metrics.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub cache_hits: Counter,
    pub exchanges: Counter,
    pub jwks_fetches: Counter,
    pub revocations: Counter,
    pub revocations_dropped: Counter,
    /// Calls made again with the DPoP nonce the other side asked for.
    pub dpop_nonce_retries: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenmesh_sidecar");
        let requests = Family::default();
        let cache_hits = Counter::default();
        let exchanges = Counter::default();
        let jwks_fetches = Counter::default();
        let revocations = Counter::default();
        registry.register(
            "requests",
            "Proxied requests by direction and status",
            requests.clone(),
        );
        registry.register(
            "cache_hits",
            "Token decisions answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "exchanges",
            "Token exchanges made with the token server",
            exchanges.clone(),
        );
        registry.register(
            "jwks_fetches",
            "JWKS fetches from the token server",
            jwks_fetches.clone(),
        );
        registry.register("revocations", "Revocations received", revocations.clone());
        let revocations_dropped = Counter::default();
        registry.register(
            "revocations_dropped",
            "Revocations dropped from a full memory (--max-revocations); tokens expiring by then are refused",
            revocations_dropped.clone(),
        );
        let dpop_nonce_retries = Counter::default();
        registry.register(
            "dpop_nonce_retries",
            "Outbound calls and exchanges made again with the DPoP nonce the other side asked for",
            dpop_nonce_retries.clone(),
        );
        Self {
            registry,
            dpop_nonce_retries,
            requests,
            cache_hits,
            exchanges,
            jwks_fetches,
            revocations,
            revocations_dropped,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
