//! What the sidecar knows of the mesh: the token server's keys, the routes
//! from WatchPolicies, the revocations from WatchRevocations, and the caches
//! that keep the token server off the request path. The token server is a
//! [`TokenService`] and the time comes from a [`SharedClock`], so the
//! decisions are tested against fakes (`decisions` tests).

mod keys;
pub mod proof;
pub mod signer;

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tokenmesh_proto::v1::{Binding, Mode, RevocationEvent};
use tokenmesh_tokens::{
    cache::TtlCache,
    claims::{ACCESS_TOKEN_TYP, AccessTokenClaims},
    clock::{SharedClock, SystemClock},
    dpop::nonce::NonceKey,
    keyset::{Freshness, RemoteKeySet, unverified_kid},
    revoked::RevokedSet,
    secret::SecretHash,
    signing::SigningError,
    verify::{Expected, VerifyError, verify},
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{
    metrics::Metrics,
    token_server::{Exchanged, TokenServer, TokenService, dpop_nonce},
};

/// The JWKS is fetched again on an unknown `kid` at most this often; the
/// age bounds are the key set's defaults (an hour, a day).
const JWKS_FRESHNESS: Freshness = Freshness {
    min_interval: Duration::from_secs(5),
    max_age: Duration::from_secs(3600),
    max_stale: Duration::from_secs(24 * 3600),
};
const CACHE_ENTRIES: usize = 10_000;
/// An exchanged token is used until this close to its expiry.
const EXCHANGE_MARGIN: u64 = 30;
/// A misconfiguration warned about on the request path is repeated at
/// most this often (seconds), so a flood of requests cannot flood the log.
const WARN_INTERVAL: u64 = 60;

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
    /// A DPoP-bound token without a valid proof of its key.
    #[error("DPoP proof refused: {0}")]
    Proof(String),
    /// Sharing a DPoP-bound token to this host: the next hop would need a
    /// proof of a key this sidecar does not hold.
    #[error("a DPoP-bound token cannot be shared to {0}")]
    BoundShare(String),
    /// A DPoP proof without the nonce this sidecar requires: the nonce to use.
    #[error("the DPoP proof must carry a current nonce")]
    UseNonce(String),
    /// The next hop needs a token bound to a TLS client certificate, and
    /// this sidecar has none.
    #[error("{0} needs certificate-bound tokens")]
    NoCertificate(String),
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
            Self::Proof(_) => {
                "the token is DPoP-bound: a valid DPoP proof of its key is required".into()
            }
            Self::BoundShare(host) => format!(
                "the token is DPoP-bound and the sidecar cannot prove its key to {host}: share needs a bearer token (an exchange policy gives the next hop its own token)"
            ),
            Self::UseNonce(_) => {
                "the DPoP proof must carry the nonce of the DPoP-Nonce header".into()
            }
            Self::NoCertificate(host) => format!(
                "the policy for {host} asks for tokens bound to a TLS client certificate, and this sidecar presents none"
            ),
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
    /// The ExchangePolicy that opened the route (a span attribute).
    pub policy: Arc<str>,
    /// What the next hop needs the token bound to (`to.binding`).
    pub binding: Binding,
}

/// The token for the next hop, and whether it is bound to this sidecar's
/// DPoP key (then every call needs a fresh proof).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub token: Arc<str>,
    pub dpop: bool,
}

impl Outbound {
    fn bearer(token: Arc<str>) -> Self {
        Self { token, dpop: false }
    }
}

/// The token itself.
impl std::ops::Deref for Outbound {
    type Target = str;

    fn deref(&self) -> &str {
        &self.token
    }
}

/// (subject token, audience, scopes, the thumbprint of the key the token is
/// bound to): what an exchanged token answers for. A token bound to a key
/// is reused only with that key.
type ExchangeKey = (SecretHash, Arc<str>, Arc<str>, Option<Arc<str>>);

/// The token an exchange or share decision was made for, so a cached
/// decision is dropped once that token is revoked.
#[derive(Debug)]
struct Subject {
    jti: String,
    grant_id: Option<String>,
    client_id: String,
    exp: u64,
}

impl From<&AccessTokenClaims> for Subject {
    fn from(claims: &AccessTokenClaims) -> Self {
        Self {
            jti: claims.jti.clone(),
            grant_id: claims.grant_id.clone(),
            client_id: claims.client_id.clone(),
            exp: claims.exp,
        }
    }
}

/// A cached decision and the token it was made for.
type Derived<V> = (V, Arc<Subject>);

fn scope_key(mut scopes: Vec<String>) -> Arc<str> {
    scopes.sort_unstable();
    scopes.dedup();
    Arc::from(scopes.join(" "))
}

pub struct Mesh<S = TokenServer> {
    pub token_server: Arc<S>,
    pub audience: String,
    /// Clock skew accepted on `exp` and `nbf`, in seconds.
    leeway: u64,
    pub metrics: Metrics,
    clock: SharedClock,
    /// The token server's signing keys and issuer.
    keys: RemoteKeySet<keys::Jwks<S>>,
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    routes_ready: AtomicBool,
    /// Revoked jti and grant ids, until they stop mattering (`--max-revocations`).
    revoked: RwLock<RevokedSet>,
    verified: TtlCache<SecretHash, Arc<Verified>>,
    /// DPoP proofs already used, until their window closes.
    proofs: tokenmesh_tokens::dpop::replay::ReplayWindow,
    /// Exchanges in flight share one call per key.
    exchanged: TtlCache<ExchangeKey, Derived<Arc<str>>>,
    /// This sidecar's own DPoP key, for the hops that need bound tokens.
    pub signer: signer::Signer,
    /// The token endpoint the token server names (GetJwks): the `htu` of
    /// the proofs sent with Exchange.
    token_endpoint: Arc<ArcSwapOption<String>>,
    /// With `--dpop-require-nonce`, inbound proofs must carry a nonce
    /// made under this key.
    pub nonces: Option<NonceKey>,
    shared: TtlCache<(SecretHash, String), Derived<bool>>,
    /// When the last "may not introspect" warning was logged (unix seconds).
    introspection_warned: AtomicU64,
    /// When the last "revocations dropped" warning was logged (unix seconds).
    revocations_warned: AtomicU64,
}

/// A revocation's `expires_at` as unix seconds (never before it was sent).
fn until(expires_at: i64) -> u64 {
    u64::try_from(expires_at).unwrap_or(u64::MAX)
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

impl<S: TokenService> Mesh<S> {
    /// A mesh on the system clock.
    pub fn new(
        token_server: S,
        audience: String,
        leeway: u64,
        max_revocations: usize,
    ) -> Result<Self, SigningError> {
        Self::with_clock(
            token_server,
            SystemClock::shared(),
            audience,
            leeway,
            max_revocations,
        )
    }

    pub fn with_clock(
        token_server: S,
        clock: SharedClock,
        audience: String,
        leeway: u64,
        max_revocations: usize,
    ) -> Result<Self, SigningError> {
        let token_server = Arc::new(token_server);
        let metrics = Metrics::new();
        let token_endpoint = Arc::new(ArcSwapOption::empty());
        let source = keys::Jwks::new(
            token_server.clone(),
            metrics.jwks_fetches.clone(),
            token_endpoint.clone(),
        );
        Ok(Self {
            keys: RemoteKeySet::new(source, clock.clone(), JWKS_FRESHNESS),
            token_server,
            audience,
            leeway,
            metrics,
            clock,
            routes: ArcSwap::from_pointee(HashMap::new()),
            routes_ready: AtomicBool::new(false),
            revoked: RwLock::new(RevokedSet::new(max_revocations)),
            verified: TtlCache::new(CACHE_ENTRIES),
            proofs: tokenmesh_tokens::dpop::replay::ReplayWindow::new(proof::REPLAY_ENTRIES),
            exchanged: TtlCache::new(CACHE_ENTRIES),
            signer: signer::Signer::generate()?,
            token_endpoint,
            nonces: None,
            shared: TtlCache::new(CACHE_ENTRIES),
            introspection_warned: AtomicU64::new(0),
            revocations_warned: AtomicU64::new(0),
        })
    }

    /// Inbound DPoP proofs must carry a nonce of this sidecar's
    /// (`--dpop-require-nonce`).
    pub fn requiring_nonces(mut self) -> Result<Self, SigningError> {
        self.nonces = Some(NonceKey::generate().map_err(|_| SigningError::Generate)?);
        Ok(self)
    }

    /// PermissionDenied from Introspect or GetEmbeddedToken (opaque tokens)
    /// means this sidecar's own client lacks `allowIntrospection`: not the
    /// token's fault, and invisible in a debug-level reason, so say so at
    /// WARN, at most once per [`WARN_INTERVAL`].
    fn warn_if_introspection_denied(&self, status: &tonic::Status) {
        if status.code() != Code::PermissionDenied {
            return;
        }
        if due(&self.introspection_warned, self.clock.unix()) {
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
        self.keys.current().is_some() && self.routes_ready.load(Ordering::Relaxed)
    }

    /// The token server's issuer, as its keys name it (fetched first if
    /// none are in yet): the authorization server of this sidecar's
    /// protected-resource metadata.
    pub async fn issuer(&self) -> Result<String, Refusal> {
        self.keys
            .keys_for(None)
            .await
            .map(|keys| keys.issuer.clone())
            .map_err(|e| Refusal::Unavailable(e.0))
    }

    pub fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.routes.load().get(host).cloned()
    }

    /// On every inbound request, cache hits included: borrows, copies nothing.
    fn is_revoked(&self, claims: &AccessTokenClaims) -> bool {
        self.covered(
            &claims.jti,
            claims.grant_id.as_deref(),
            &claims.client_id,
            claims.exp,
        )
    }

    fn subject_revoked(&self, subject: &Subject) -> bool {
        self.covered(
            &subject.jti,
            subject.grant_id.as_deref(),
            &subject.client_id,
            subject.exp,
        )
    }

    /// Revoked, or possibly revoked when full memory dropped its revocation.
    fn covered(&self, jti: &str, grant_id: Option<&str>, client_id: &str, exp: u64) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .covers(jti, grant_id, client_id, exp)
    }

    /// The token an outbound decision is made for: a JWT's own claims (the
    /// token server refuses to exchange or share a forged one), an opaque
    /// token's from its inbound validation here; `None` if unknown, and
    /// then the decision is not cached.
    /// The claims of a token this sidecar passes on: read from a JWT, or
    /// the ones inbound validation found for an opaque token.
    fn subject_claims(&self, token: &str) -> Option<AccessTokenClaims> {
        unverified_claims(token).or_else(|| {
            self.verified
                .get(&hash(token), self.clock.unix())
                .map(|v| v.claims.clone())
        })
    }

    fn subject_of(&self, token: &str, now: u64) -> Option<Arc<Subject>> {
        let subject = match unverified_claims(token) {
            Some(claims) => Subject::from(&claims),
            None => Subject::from(&self.verified.get(&hash(token), now)?.claims),
        };
        Some(Arc::new(subject))
    }

    /// A cached outbound decision, unless the token it was made for has
    /// been revoked since: then the entry goes.
    fn derived<K: Eq + std::hash::Hash, V: Clone>(
        &self,
        cache: &TtlCache<K, Derived<V>>,
        key: &K,
        now: u64,
    ) -> Option<V> {
        let (value, subject) = cache.get(key, now)?;
        if self.subject_revoked(&subject) {
            cache.remove(key);
            return None;
        }
        self.metrics.cache_hits.inc();
        Some(value)
    }

    /// Records a WatchRevocations event: one revocation, or a part of the
    /// starting snapshot. Expired ids go on the way, in O(log n) each.
    pub fn revoke(&self, event: RevocationEvent) {
        // A token passes until `exp` + leeway: its revocation must outlive that.
        let now = self.clock.unix().saturating_sub(self.leeway);
        let count = event.snapshot.len().max(1);
        let dropped = {
            let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
            let mut dropped = 0;
            if event.snapshot.is_empty() {
                dropped += revoked
                    .insert(&event.id, until(event.expires_at), now)
                    .dropped;
            }
            for part in &event.snapshot {
                dropped += revoked
                    .insert(&part.id, until(part.expires_at), now)
                    .dropped;
            }
            dropped
        };
        self.metrics.revocations.inc_by(count as u64);
        if dropped > 0 {
            self.metrics.revocations_dropped.inc_by(dropped as u64);
            if due(&self.revocations_warned, self.clock.unix()) {
                let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
                tracing::warn!(
                    max = revoked.capacity(),
                    refused_until = revoked.dropped_until(),
                    "--max-revocations reached: revocations that expire soonest were dropped, \
                     and every token expiring by refused_until is refused as possibly revoked"
                );
            }
        }
    }

    /// Verifies a JWT against the token server's keys, fetched again when
    /// it names a `kid` they lack (the key set's rule: [`JWKS_FRESHNESS`]).
    async fn verify_jwt(&self, jwt: &str) -> Result<AccessTokenClaims, Refusal> {
        let kid = unverified_kid(jwt);
        let keys = self
            .keys
            .keys_for(kid.as_deref())
            .await
            .map_err(|e| Refusal::Unavailable(e.0))?;
        let expected = Expected {
            typ: Some(ACCESS_TOKEN_TYP),
            issuers: &[keys.issuer.as_str()],
            audiences: &[self.audience.as_str()],
            require_exp: true,
            leeway: self.leeway,
            now: self.clock.unix(),
        };
        let invalid = |e: VerifyError| Refusal::Invalid(e.to_string());
        let claims = verify(jwt, &keys.set, &expected).map_err(invalid)?;
        serde_json::from_value(serde_json::Value::Object(claims))
            .map_err(|_| invalid(VerifyError::Claim("claims")))
    }

    /// Validates an inbound credential: the token, and the DPoP proof of
    /// its key when it is bound (module [`proof`]).
    pub async fn validate_presented(
        &self,
        presented: &proof::Presented<'_>,
    ) -> Result<Arc<Verified>, Refusal> {
        let verified = self.validate(presented.token).await?;
        let nonces = self.nonces.as_ref();
        proof::check(
            &verified.claims,
            presented,
            &self.proofs,
            nonces,
            self.clock.unix(),
        )?;
        Ok(verified)
    }

    /// Validates an inbound token: a JWT against the keys (fetched again on
    /// an unknown `kid`), an opaque token by introspection (swapped for its
    /// phantom JWT). Results are cached by the token's digest until expiry;
    /// revocations apply to cached entries too.
    pub async fn validate(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let key = hash(token);
        let now = self.clock.unix();
        if let Some(hit) = self.verified.get(&key, now) {
            self.metrics.cache_hits.inc();
            return if self.is_revoked(&hit.claims) {
                Err(Refusal::Invalid("revoked".into()))
            } else {
                Ok(hit)
            };
        }
        let verified = if token.matches('.').count() == 2 {
            Verified {
                claims: self.verify_jwt(token).await?,
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
            Verified {
                claims: self.verify_jwt(&answer.phantom_jwt).await?,
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
    ) -> Result<Outbound, Refusal> {
        let dpop_bound = || {
            self.subject_claims(incoming)
                .is_some_and(|c| c.cnf.as_ref().is_some_and(|cnf| cnf.jkt.is_some()))
        };
        match route.mode {
            Mode::Share => {
                // Checked before any policy: the next hop would refuse it anyway.
                if dpop_bound() {
                    return Err(Refusal::BoundShare(host.to_owned()));
                }
                self.share(host, incoming)
                    .await
                    .map(|()| Outbound::bearer(Arc::from(incoming)))
            }
            Mode::Exchange => {
                if route.binding == Binding::Mtls {
                    return Err(Refusal::NoCertificate(host.to_owned()));
                }
                // A bound subject stays bound: the token server takes it
                // from an actor only with a proof of the actor's own key.
                let dpop = route.binding == Binding::Dpop || dpop_bound();
                let token = self.exchange(route, incoming, dpop).await?;
                Ok(Outbound { token, dpop })
            }
            Mode::Embed => self
                .embedded(&route.audience, incoming)
                .await
                .map(Outbound::bearer),
            Mode::Unspecified => Err(Refusal::Forbidden(host.to_owned())),
        }
    }

    async fn share(&self, host: &str, token: &str) -> Result<(), Refusal> {
        let key = (hash(token), host.to_owned());
        let now = self.clock.unix();
        let allowed = match self.derived(&self.shared, &key, now) {
            Some(allowed) => allowed,
            None => {
                let answer = self
                    .token_server
                    .check_share(token, host)
                    .await
                    .map_err(unavailable)?;
                if let Some(subject) = self.subject_of(token, now) {
                    let until = subject.exp.min(now + 300);
                    self.shared
                        .insert(key, (answer.allowed, subject), until, now);
                }
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

    async fn exchange(
        &self,
        route: &Route,
        subject: &str,
        dpop: bool,
    ) -> Result<Arc<str>, Refusal> {
        let audience = &*route.audience;
        let jkt = dpop.then(|| Arc::from(self.signer.jkt()));
        let key = (
            hash(subject),
            route.audience.clone(),
            route.scopes.clone(),
            jkt,
        );
        if let Some(hit) = self.derived(&self.exchanged, &key, self.clock.unix()) {
            return Ok(hit);
        }
        // Dropped at the end or when the request is cancelled, whichever first.
        let flight = self.exchanged.flight(&key);
        let _held = flight.lock().await;
        if let Some(hit) = self.derived(&self.exchanged, &key, self.clock.unix()) {
            return Ok(hit);
        }
        let result = if dpop {
            self.exchange_bound(subject, audience).await?
        } else {
            self.token_server.exchange(subject, audience, None).await
        };
        let answer = result
            .map(|a| a.response)
            .map_err(|status| match status.code() {
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
        let now = self.clock.unix();
        let lifetime = u64::try_from(answer.expires_in).unwrap_or(0);
        let margin = EXCHANGE_MARGIN.min(lifetime / 10);
        if let Some(derived_from) = self.subject_of(subject, now) {
            self.exchanged.insert(
                key,
                (token.clone(), derived_from),
                now + lifetime - margin,
                now,
            );
        }
        Ok(token)
    }

    /// The proof for a call forwarded with a token bound to this sidecar's
    /// key: `htm` the method, `htu` the URL as called, `ath` of the token,
    /// `iat` now, the nonce the origin asked for.
    pub fn call_proof(&self, method: &str, url: &str, token: &str) -> Result<String, Refusal> {
        self.signer
            .proof(method, url, Some(token), self.clock.unix())
            .map_err(|e| Refusal::Unavailable(format!("cannot sign a DPoP proof: {e}")))
    }

    /// A fresh nonce for an answer, when this sidecar requires them.
    pub fn fresh_nonce(&self) -> Option<String> {
        self.nonces
            .as_ref()
            .map(|key| key.current(self.clock.unix()))
    }

    /// An exchange with a proof of this sidecar's key, so the new token is
    /// bound to it: `htm` POST, `htu` the token endpoint, the nonce the
    /// token server handed out last. Asked for a newer nonce, once more with it.
    async fn exchange_bound(
        &self,
        subject: &str,
        audience: &str,
    ) -> Result<Result<Exchanged, tonic::Status>, Refusal> {
        let endpoint = self.token_endpoint.load_full().ok_or_else(|| {
            Refusal::Unavailable("the token server has not named its token endpoint".into())
        })?;
        let sign = || {
            self.signer
                .proof("POST", &endpoint, None, self.clock.unix())
                .map_err(|e| Refusal::Unavailable(format!("cannot sign a DPoP proof: {e}")))
        };
        let mut retried = false;
        loop {
            let proof = sign()?;
            let result = self
                .token_server
                .exchange(subject, audience, Some(&proof))
                .await;
            let nonce = match &result {
                Ok(answer) => answer.dpop_nonce.clone(),
                Err(status) => dpop_nonce(status.metadata()),
            };
            let renewed = nonce.is_some_and(|nonce| self.signer.remember(&endpoint, &nonce));
            let asked = matches!(&result, Err(s) if s.code() == Code::InvalidArgument);
            if asked && renewed && !retried {
                retried = true;
                self.metrics.dpop_nonce_retries.inc();
                continue;
            }
            return Ok(result);
        }
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
                                                policy: Arc::from(r.policy),
                                                binding: Binding::try_from(r.binding)
                                                    .unwrap_or(Binding::None),
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
            // From the start: a snapshot of what is in force, not every event kept.
            match self
                .token_server
                .watch_revocations(cursor, cursor == 0)
                .await
            {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(event) => {
                                backoff.reset();
                                cursor = cursor.max(event.seq);
                                tracing::debug!(
                                    seq = event.seq,
                                    snapshot = event.snapshot.len(),
                                    "revocation received"
                                );
                                self.revoke(event);
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
        while let Err(err) = self.keys.refresh().await {
            tracing::warn!(error = %err, "cannot fetch the token server's keys");
            backoff.wait().await;
        }
    }
}

/// Whether a warning last logged at `last` (unix seconds) is due again
/// `now`, at most once per [`WARN_INTERVAL`]; marks it logged now if so.
fn due(last: &AtomicU64, now: u64) -> bool {
    let at = last.load(Ordering::Relaxed);
    now >= at.saturating_add(WARN_INTERVAL)
        && last
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod decisions;
