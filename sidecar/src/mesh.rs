//! What the sidecar knows of the mesh: the token server's keys, the routes
//! from WatchPolicies, the revocations from WatchRevocations, and the caches
//! that keep the token server off the request path.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tokenmesh_proto::v1::{Mode, revocation_event::Kind};
use tokenmesh_tokens::{
    cache::TtlCache,
    claims::{ACCESS_TOKEN_TYP, AccessTokenClaims},
    jwk::JwkSet,
    secret::SecretHash,
    verify::{Expected, KeySet, VerifyError, verify},
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{cache::SingleFlight, metrics::Metrics, token_server::TokenServer};

/// The JWKS is fetched again on an unknown `kid` at most this often.
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(5);
const CACHE_ENTRIES: usize = 10_000;
/// An exchanged token is used until this close to its expiry.
const EXCHANGE_MARGIN: u64 = 30;
/// A misconfiguration warned about on the request path is repeated at
/// most this often (seconds), so a flood of requests cannot flood the log.
const WARN_INTERVAL: u64 = 60;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token that passed inbound validation, and the JWT the application gets.
#[derive(Debug)]
pub struct Verified {
    pub claims: AccessTokenClaims,
    pub jwt: String,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("no policy lets this token reach {0}")]
    Forbidden(String),
    #[error("the token server is unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// What the caller is told: the kind of refusal, never the internal
    /// detail (that goes to the debug log).
    pub fn public(&self) -> String {
        match self {
            Self::Missing => "a bearer token is required".into(),
            Self::Invalid(_) => "the token is not valid".into(),
            Self::Forbidden(host) => format!("no policy lets this request reach {host}"),
            Self::Unavailable(_) => "the token server is unavailable; retry later".into(),
        }
    }
}

/// How tokens are made for one destination host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub audience: Arc<str>,
    pub mode: Mode,
    /// The scopes the policy allows, sorted and space-joined: part of the
    /// exchange cache key, so a policy that narrows them takes effect at once.
    pub scopes: Arc<str>,
}

/// (subject token, audience, scopes): what an exchanged token answers for.
type ExchangeKey = (SecretHash, Arc<str>, Arc<str>);

fn scope_key(mut scopes: Vec<String>) -> Arc<str> {
    scopes.sort_unstable();
    scopes.dedup();
    Arc::from(scopes.join(" "))
}

struct Keys {
    issuer: String,
    set: KeySet,
}

pub struct Mesh {
    pub token_server: TokenServer,
    pub audience: String,
    /// Clock skew accepted on `exp` and `nbf`, in seconds.
    leeway: u64,
    pub metrics: Metrics,
    keys: ArcSwap<Option<Keys>>,
    keys_fetched: tokio::sync::Mutex<Option<Instant>>,
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    routes_ready: AtomicBool,
    /// Revoked jti and grant ids → when they stop mattering.
    revoked: RwLock<HashMap<String, u64>>,
    verified: TtlCache<SecretHash, Arc<Verified>>,
    exchanged: TtlCache<ExchangeKey, Arc<str>>,
    exchanging: SingleFlight<ExchangeKey>,
    shared: TtlCache<(SecretHash, String), bool>,
    /// When the last "may not introspect" warning was logged (unix seconds).
    introspection_warned: AtomicU64,
}

fn hash(token: &str) -> SecretHash {
    SecretHash::of(token.as_bytes())
}

/// The claims of a JWT without verifying it (for tokens this sidecar passes
/// on, not for tokens it accepts).
fn unverified_claims(jwt: &str) -> Option<AccessTokenClaims> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

impl Mesh {
    pub fn new(token_server: TokenServer, audience: String, leeway: u64) -> Self {
        Self {
            token_server,
            audience,
            leeway,
            metrics: Metrics::new(),
            keys: ArcSwap::from_pointee(None),
            keys_fetched: tokio::sync::Mutex::new(None),
            routes: ArcSwap::from_pointee(HashMap::new()),
            routes_ready: AtomicBool::new(false),
            revoked: RwLock::new(HashMap::new()),
            verified: TtlCache::new(CACHE_ENTRIES),
            exchanged: TtlCache::new(CACHE_ENTRIES),
            exchanging: SingleFlight::new(),
            shared: TtlCache::new(CACHE_ENTRIES),
            introspection_warned: AtomicU64::new(0),
        }
    }

    /// PermissionDenied from Introspect or GetEmbeddedToken (opaque tokens)
    /// means this sidecar's own client lacks `allowIntrospection`: not the
    /// token's fault, and invisible in a debug-level reason, so say so at
    /// WARN, at most once per [`WARN_INTERVAL`].
    fn warn_if_introspection_denied(&self, status: &tonic::Status) {
        if status.code() != Code::PermissionDenied {
            return;
        }
        let now = now();
        let last = self.introspection_warned.load(Ordering::Relaxed);
        if now >= last.saturating_add(WARN_INTERVAL)
            && self
                .introspection_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client_id = self.token_server.client_id(),
                reason = status.message(),
                "the token server refused this sidecar an opaque token's introspection: the \
                 sidecar's client may not introspect: set allowIntrospection: true on its \
                 OAuthClient"
            );
        }
    }

    /// Ready once the keys and the first policy snapshot are in.
    pub fn ready(&self) -> bool {
        self.keys.load().is_some() && self.routes_ready.load(Ordering::Relaxed)
    }

    pub fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.routes.load().get(host).cloned()
    }

    fn is_revoked(&self, claims: &AccessTokenClaims) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.contains_key(&claims.jti)
            || claims
                .grant_id
                .as_ref()
                .is_some_and(|g| revoked.contains_key(g))
    }

    /// Fetches the keys; unless `force`, at most once per [`JWKS_MIN_INTERVAL`],
    /// so a flood of unknown `kid`s cannot hammer the token server.
    pub async fn refresh_keys(&self, force: bool) -> Result<(), Refusal> {
        let mut fetched = self.keys_fetched.lock().await;
        if !force && fetched.is_some_and(|at| at.elapsed() < JWKS_MIN_INTERVAL) {
            return Ok(());
        }
        *fetched = Some(Instant::now());
        let response = self.token_server.jwks().await.map_err(unavailable)?;
        let jwks: JwkSet = serde_json::from_str(&response.jwks_json)
            .map_err(|e| Refusal::Unavailable(format!("the JWKS does not parse: {e}")))?;
        let (set, errors) = KeySet::from_jwks(&jwks);
        for error in errors {
            tracing::warn!(%error, "unusable key in the token server's JWKS");
        }
        self.metrics.jwks_fetches.inc();
        self.keys.store(Arc::new(Some(Keys {
            issuer: response.issuer,
            set,
        })));
        Ok(())
    }

    fn verify_jwt(&self, jwt: &str) -> Result<AccessTokenClaims, VerifyError> {
        let keys = self.keys.load();
        let Some(keys) = keys.as_ref() else {
            return Err(VerifyError::UnknownKey);
        };
        let expected = Expected {
            typ: Some(ACCESS_TOKEN_TYP),
            issuers: &[keys.issuer.as_str()],
            audiences: &[self.audience.as_str()],
            require_exp: true,
            leeway: self.leeway,
            now: now(),
        };
        let claims = verify(jwt, &keys.set, &expected)?;
        serde_json::from_value(serde_json::Value::Object(claims))
            .map_err(|_| VerifyError::Claim("claims"))
    }

    /// Validates an inbound token: a JWT against the keys (fetched again on
    /// an unknown `kid`), an opaque token by introspection (swapped for its
    /// phantom JWT). Results are cached by the token's digest until expiry;
    /// revocations apply to cached entries too.
    pub async fn validate(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let key = hash(token);
        let now = now();
        if let Some(hit) = self.verified.get(&key, now) {
            self.metrics.cache_hits.inc();
            return if self.is_revoked(&hit.claims) {
                Err(Refusal::Invalid("revoked".into()))
            } else {
                Ok(hit)
            };
        }
        let verified = if token.matches('.').count() == 2 {
            let claims = match self.verify_jwt(token) {
                Err(VerifyError::UnknownKey) => {
                    self.refresh_keys(false).await?;
                    self.verify_jwt(token)
                }
                other => other,
            }
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
            Verified {
                claims,
                jwt: token.to_owned(),
            }
        } else {
            if token.is_empty() || token.len() > 4096 {
                return Err(Refusal::Invalid("malformed token".into()));
            }
            // PermissionDenied stays a 503: the token is not at fault.
            let answer = self
                .token_server
                .introspect(token)
                .await
                .map_err(|status| {
                    self.warn_if_introspection_denied(&status);
                    unavailable(status)
                })?;
            if !answer.active {
                return Err(Refusal::Invalid("not active".into()));
            }
            let claims = self
                .verify_jwt(&answer.phantom_jwt)
                .map_err(|e| Refusal::Invalid(e.to_string()))?;
            Verified {
                claims,
                jwt: answer.phantom_jwt,
            }
        };
        if self.is_revoked(&verified.claims) {
            return Err(Refusal::Invalid("revoked".into()));
        }
        let verified = Arc::new(verified);
        self.verified.insert(
            key,
            verified.clone(),
            verified.claims.exp + self.leeway,
            now,
        );
        Ok(verified)
    }

    /// The token to send to `host`, whose route is `route`, given the token
    /// the application propagated.
    pub async fn outbound_token(
        &self,
        host: &str,
        route: &Route,
        incoming: &str,
    ) -> Result<Arc<str>, Refusal> {
        match route.mode {
            Mode::Share => self
                .share(host, incoming)
                .await
                .map(|()| Arc::from(incoming)),
            Mode::Exchange => self.exchange(route, incoming).await,
            Mode::Embed => self.embedded(&route.audience, incoming).await,
            Mode::Unspecified => Err(Refusal::Forbidden(host.to_owned())),
        }
    }

    async fn share(&self, host: &str, token: &str) -> Result<(), Refusal> {
        let key = (hash(token), host.to_owned());
        let now = now();
        let allowed = match self.shared.get(&key, now) {
            Some(allowed) => {
                self.metrics.cache_hits.inc();
                allowed
            }
            None => {
                let answer = self
                    .token_server
                    .check_share(token, host)
                    .await
                    .map_err(unavailable)?;
                let until = unverified_claims(token)
                    .map_or(now + 60, |c| c.exp)
                    .min(now + 300);
                self.shared.insert(key, answer.allowed, until, now);
                if !answer.allowed {
                    tracing::debug!(%host, reason = %answer.reason, "share refused");
                }
                answer.allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden(host.to_owned()))
        }
    }

    async fn exchange(&self, route: &Route, subject: &str) -> Result<Arc<str>, Refusal> {
        let audience = &*route.audience;
        let key = (hash(subject), route.audience.clone(), route.scopes.clone());
        if let Some(hit) = self.exchanged.get(&key, now()) {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        let lock = self.exchanging.lock_for(&key);
        let _flight = lock.lock().await;
        if let Some(hit) = self.exchanged.get(&key, now()) {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        let result = self.token_server.exchange(subject, audience).await;
        self.exchanging.done(&key);
        let answer = result.map_err(|status| match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal => {
                unavailable(status)
            }
            _ => {
                tracing::debug!(%audience, reason = status.message(), "exchange refused");
                Refusal::Forbidden(audience.to_owned())
            }
        })?;
        self.metrics.exchanges.inc();
        let token: Arc<str> = Arc::from(answer.access_token);
        let now = now();
        let lifetime = u64::try_from(answer.expires_in).unwrap_or(0);
        let margin = EXCHANGE_MARGIN.min(lifetime / 10);
        self.exchanged
            .insert(key, token.clone(), now + lifetime - margin, now);
        Ok(token)
    }

    async fn embedded(&self, audience: &str, outer: &str) -> Result<Arc<str>, Refusal> {
        if let Some(token) =
            unverified_claims(outer).and_then(|c| c.embedded_tokens.get(audience).cloned())
        {
            return Ok(Arc::from(token));
        }
        if outer.matches('.').count() == 2 {
            return Err(Refusal::Forbidden(audience.to_owned()));
        }
        // An opaque outer token: its embedded tokens come from the token server.
        self.token_server
            .embedded_token(outer, audience)
            .await
            .map(Arc::from)
            .map_err(|status| {
                self.warn_if_introspection_denied(&status);
                match status.code() {
                    Code::Unavailable | Code::DeadlineExceeded => unavailable(status),
                    _ => Refusal::Forbidden(audience.to_owned()),
                }
            })
    }

    /// Follows WatchPolicies for ever, reconnecting with backoff.
    pub async fn follow_policies(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            match self.token_server.watch_policies().await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(snapshot) => {
                                backoff.reset();
                                let routes = snapshot
                                    .routes
                                    .into_iter()
                                    .map(|r| {
                                        let mode =
                                            Mode::try_from(r.mode).unwrap_or(Mode::Unspecified);
                                        (
                                            r.host.to_ascii_lowercase(),
                                            Arc::new(Route {
                                                audience: Arc::from(r.audience),
                                                mode,
                                                scopes: scope_key(r.scopes),
                                            }),
                                        )
                                    })
                                    .collect::<HashMap<_, _>>();
                                tracing::info!(
                                    version = snapshot.version,
                                    routes = routes.len(),
                                    "policies received"
                                );
                                self.routes.store(Arc::new(routes));
                                self.shared.clear();
                                self.routes_ready.store(true, Ordering::Relaxed);
                            }
                            Err(status) => {
                                tracing::warn!(code = ?status.code(), message = status.message(), "policy stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch policies")
                }
            }
            backoff.wait().await;
        }
    }

    /// Follows WatchRevocations for ever, resuming after the last event seen.
    pub async fn follow_revocations(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        let mut cursor = 0i64;
        loop {
            match self.token_server.watch_revocations(cursor).await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(event) => {
                                backoff.reset();
                                cursor = cursor.max(event.seq);
                                let kind = Kind::try_from(event.kind).unwrap_or(Kind::Unspecified);
                                tracing::debug!(seq = event.seq, ?kind, "revocation received");
                                let until = u64::try_from(event.expires_at).unwrap_or(u64::MAX);
                                let mut revoked =
                                    self.revoked.write().unwrap_or_else(|e| e.into_inner());
                                let now = now();
                                if revoked.len() > 100_000 {
                                    revoked.retain(|_, at| *at > now);
                                }
                                revoked.insert(event.id, until);
                                self.metrics.revocations.inc();
                            }
                            Err(status) => {
                                tracing::warn!(code = ?status.code(), message = status.message(), "revocation stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch revocations")
                }
            }
            backoff.wait().await;
        }
    }

    /// Fetches the keys at start and keeps trying until they come.
    pub async fn load_keys(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        while let Err(err) = self.refresh_keys(true).await {
            tracing::warn!(error = %err, "cannot fetch the token server's keys");
            backoff.wait().await;
        }
    }
}

fn unavailable(status: tonic::Status) -> Refusal {
    Refusal::Unavailable(format!("{:?}: {}", status.code(), status.message()))
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.delay = Duration::from_millis(100);
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
    }
}
