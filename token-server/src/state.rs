//! What every request handler shares.

use std::sync::Arc;

use arc_swap::ArcSwap;

use tokenmesh_tokens::{cache::TtlCache, claims::AccessTokenClaims, secret::SecretHash};
use tokio::sync::{Mutex, Notify, watch};

use crate::{
    keys::KeyRing,
    metrics::Metrics,
    registry::{Registry, SecretSource},
    store::Store,
};

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
    /// Where `secretRef`s of applied resources resolve.
    pub secrets: Box<dyn SecretSource>,
    /// Serialises changes to the registry (ControlService).
    pub changes: Mutex<()>,
    /// The configuration version, bumped on every change; watchers wake on it.
    pub version: watch::Sender<u64>,
    /// Woken on every revocation this replica records.
    pub revoked: Notify,
    /// Revocations in memory, for checks without a store round trip.
    pub revocations: crate::revocations::Revocations,
    /// Opaque tokens already looked up, by hash, until they expire. A record
    /// never changes once stored (revocation is checked apart, above), so a
    /// hit is as good as the store's answer and spares a round trip.
    pub opaque_tokens: TtlCache<SecretHash, AccessTokenClaims>,
    /// Digest of the admin credential of ControlService.
    pub admin: Option<SecretHash>,
    /// What the registry is rebuilt from when stored resources change.
    pub source: crate::RegistrySource,
    /// Verifies service-account tokens (TokenServer `spec.kubernetes`),
    /// with the cluster's keys cached.
    pub service_accounts: crate::kubernetes_issuer::ServiceAccountIssuer,
}

impl AppState {
    /// Rebuilds the registry from the files and the stored resources (after
    /// a change on any replica), makes sure its keys exist, and puts it in force.
    pub async fn reload(&self) -> Result<u64, String> {
        let _serial = self.changes.lock().await;
        let stored = self.store.resources().await.map_err(|e| e.to_string())?;
        let next = self
            .source
            .build(self.secrets.as_ref(), &stored)
            .map_err(|e| e.to_string())?;
        self.keys
            .refresh(
                self.store.as_ref(),
                &next.server,
                &next.algorithms_in_use(),
                self.now(),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.registry.store(std::sync::Arc::new(next));
        self.version.send_modify(|v| *v += 1);
        Ok(*self.version.borrow())
    }
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
