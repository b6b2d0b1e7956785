//! What every request handler shares.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{keys::KeyRing, metrics::Metrics, registry::Registry, store::Store};

/// Endpoint URLs derived from the issuer.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub token: String,
    pub introspection: String,
    pub revocation: String,
    pub jwks: String,
}

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";
pub const REVOCATION_PATH: &str = "/oauth2/revoke";
pub const JWKS_PATH: &str = "/jwks";

impl Endpoints {
    pub fn for_issuer(issuer: &str) -> Self {
        Self {
            token: format!("{issuer}{TOKEN_PATH}"),
            introspection: format!("{issuer}{INTROSPECTION_PATH}"),
            revocation: format!("{issuer}{REVOCATION_PATH}"),
            jwks: format!("{issuer}{JWKS_PATH}"),
        }
    }
}

pub struct AppState {
    pub registry: ArcSwap<Registry>,
    pub keys: KeyRing,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub endpoints: Endpoints,
    /// Now, as unix seconds; replaceable so expiry is testable.
    pub clock: fn() -> u64,
}

impl AppState {
    pub fn now(&self) -> u64 {
        (self.clock)()
    }
}

/// The system clock, as unix seconds.
pub fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
