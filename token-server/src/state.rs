//! What every request handler shares.

use std::sync::Arc;

use arc_swap::ArcSwap;

use tokenmesh_tokens::{
    cache::TtlCache, claims::AccessTokenClaims, clock::SharedClock, secret::SecretHash,
};
use tokio::sync::{Mutex, Notify, watch};

use crate::{
    keys::{KeyError, KeyRing},
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
    pub authorization: String,
    pub userinfo: String,
    pub end_session: String,
    /// Where upstream OpenID Providers send people back (`oidc` providers).
    pub callback: String,
}

/// Password attempts per user: a burst of 5, then one every 5 s, so
/// guessing a password online is slow (and argon2id's cost bounded).
const LOGIN_RATE: f64 = 0.2;
const LOGIN_BURST: u32 = 5;

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";
pub const REVOCATION_PATH: &str = "/oauth2/revoke";
pub const JWKS_PATH: &str = "/jwks";
pub const AUTHORIZATION_PATH: &str = "/oauth2/authorize";
pub const USERINFO_PATH: &str = "/oauth2/userinfo";
pub const END_SESSION_PATH: &str = "/oauth2/logout";
/// The redirect URI to register at an upstream OpenID Provider: `<issuer>/oauth2/callback`.
pub const CALLBACK_PATH: &str = "/oauth2/callback";

impl Endpoints {
    pub fn for_issuer(issuer: &str) -> Self {
        Self {
            token: format!("{issuer}{TOKEN_PATH}"),
            introspection: format!("{issuer}{INTROSPECTION_PATH}"),
            revocation: format!("{issuer}{REVOCATION_PATH}"),
            jwks: format!("{issuer}{JWKS_PATH}"),
            authorization: format!("{issuer}{AUTHORIZATION_PATH}"),
            userinfo: format!("{issuer}{USERINFO_PATH}"),
            end_session: format!("{issuer}{END_SESSION_PATH}"),
            callback: format!("{issuer}{CALLBACK_PATH}"),
        }
    }
}

pub struct AppState {
    pub registry: ArcSwap<Registry>,
    pub keys: KeyRing,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub endpoints: Endpoints,
    /// Whether the listeners ask for TLS client certificates (RFC 8705).
    pub client_certificates: bool,
    /// The time, injected so expiry is tested by moving a manual clock.
    pub clock: SharedClock,
    /// Where `secretRef`s of applied resources resolve.
    pub secrets: Box<dyn SecretSource>,
    /// The stored resource documents the registry in force was built from,
    /// by key; its lock serialises changes to the registry.
    pub changes: Mutex<StoredResources>,
    /// The configuration version, bumped on every change; watchers wake on it.
    pub version: watch::Sender<u64>,
    /// Woken on every revocation this replica records.
    pub revoked: Notify,
    /// Revocations in memory, for checks without a store round trip.
    pub revocations: crate::revocations::Revocations,
    /// Revocations per client (`--revoke-rate`, `--revoke-burst`).
    pub revoke_limit: crate::rate_limit::RateLimiter,
    /// Password attempts per user of a static IdentityProvider.
    pub login_limit: crate::rate_limit::RateLimiter,
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
    /// The upstreams of `oidc` IdentityProviders, with their discovery and keys.
    pub upstreams: crate::upstream::Upstreams,
}

/// Stored resource documents by key, as `Store::resources` lists them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredResources(std::collections::BTreeMap<String, String>);

impl StoredResources {
    /// Records a write as `Store::put_resource` makes it: a deletion is an
    /// empty document (a tombstone), kept like any other.
    pub fn put(&mut self, key: &str, document: &str) {
        self.0.insert(key.to_owned(), document.to_owned());
    }
}

impl From<&[(String, String)]> for StoredResources {
    fn from(stored: &[(String, String)]) -> Self {
        Self(stored.iter().cloned().collect())
    }
}

/// What a server's state is made of, besides its registry and store.
pub struct Parts {
    /// What the registry is rebuilt from.
    pub source: crate::RegistrySource,
    pub secrets: Box<dyn SecretSource>,
    /// The stored resources the registry was built with.
    pub stored: Vec<(String, String)>,
    pub clock: SharedClock,
    /// Digest of the ControlService admin credential.
    pub admin: Option<SecretHash>,
    pub max_revocations: usize,
    pub revoke_rate: f64,
    pub revoke_burst: u32,
    pub opaque_token_cache: usize,
    /// Whether the listeners ask for TLS client certificates (--client-ca).
    pub client_certificates: bool,
}

impl AppState {
    /// The state of a server with `registry` in force: its signing keys
    /// made sure of in `store`.
    pub async fn start(
        registry: Registry,
        store: Arc<dyn Store>,
        parts: Parts,
    ) -> Result<Arc<Self>, KeyError> {
        let keys = KeyRing::start(
            store.as_ref(),
            &registry.server,
            &registry.algorithms_in_use(),
            parts.clock.unix(),
        )
        .await?;
        let endpoints = Endpoints::for_issuer(&registry.server.issuer);
        let clock = parts.clock;
        let service_accounts = crate::kubernetes_issuer::ServiceAccountIssuer::new(clock.clone());
        let revocations =
            crate::revocations::Revocations::new(parts.max_revocations, clock.clone());
        Ok(Arc::new(AppState {
            registry: ArcSwap::from_pointee(registry),
            keys,
            store,
            metrics: Metrics::new(),
            endpoints,
            client_certificates: parts.client_certificates,
            clock,
            secrets: parts.secrets,
            source: parts.source,
            changes: Mutex::new(StoredResources::from(parts.stored.as_slice())),
            version: watch::Sender::new(1),
            revoked: Notify::new(),
            revocations,
            revoke_limit: crate::rate_limit::RateLimiter::new(
                parts.revoke_rate,
                parts.revoke_burst,
            ),
            login_limit: crate::rate_limit::RateLimiter::new(LOGIN_RATE, LOGIN_BURST),
            opaque_tokens: TtlCache::new(parts.opaque_token_cache),
            admin: parts.admin,
            service_accounts,
            upstreams: crate::upstream::Upstreams::default(),
        }))
    }

    /// Now, as unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.unix()
    }
}
