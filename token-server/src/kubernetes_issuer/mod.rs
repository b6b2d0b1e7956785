//! Workload identity: verifying the cluster's service-account tokens
//! (`kubectl create token`, projected tokens) against the keys the API
//! server publishes through OIDC discovery of its issuer.
//!
//! The issuer differs between clusters (`https://kubernetes.default.svc`,
//! `https://kubernetes.default.svc.cluster.local` on kubeadm, kind and
//! minikube, a cloud URL on managed ones). Left out, it is the one the
//! discovery document names; configured, the document must name it, or
//! the token server does not become ready: a wrong issuer would otherwise
//! only show as every service-account client refused.
//!
//! The keys are cached and fetched again when a token names an unknown
//! `kid` (the API server rotated its key) or the cache is an hour old, at
//! most once every [`MIN_REFRESH`]: a flood of tokens with made-up kids
//! costs the API server one request per interval.

mod fetch;
mod review;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::Value;
use tokenmesh_tokens::verify::{Expected, KeySet, VerifyError, verify};

use fetch::{Discovered, Fetcher};
pub use fetch::{FetchError, confidential_url};

/// Fewest seconds between two fetches of the keys.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Cached keys are fetched again after this long, so a key the API server
/// dropped stops verifying.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// How long keys fetched last keep verifying while no fetch succeeds.
const MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// Longest life (`exp - iat`) of an accepted service-account token. Projected
/// tokens live an hour; a year-long `kubectl create token --duration` is a
/// credential nobody will rotate.
const MAX_LIFETIME: u64 = 24 * 3600;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 30;
const SUBJECT_PREFIX: &str = "system:serviceaccount:";
/// How long a TokenReview answer is remembered: a revoked token is refused
/// at most this late, and one token costs the API server at most one
/// review per interval.
pub const REVIEW_TTL: Duration = Duration::from_secs(5);

/// `TokenServer.spec.kubernetes` with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// The `iss` of service-account tokens; `None`: the one discovery names.
    pub issuer: Option<String>,
    /// The `aud` a token must carry.
    pub audience: String,
    /// Base URL of `/.well-known/openid-configuration`.
    pub discovery_url: String,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Ask the API server (TokenReview) after the signature checks out.
    pub token_review: bool,
    /// Where TokenReview goes.
    pub api_server_url: String,
}

/// A service account, as named by a token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// `system:serviceaccount:<namespace>:<name>`; anything else is not a
    /// service account (a node, a user).
    pub fn from_subject(sub: &str) -> Option<Self> {
        let (namespace, name) = sub.strip_prefix(SUBJECT_PREFIX)?.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaTokenError {
    /// The keys cannot be had: the API server is unreachable or answers
    /// wrongly. Not the caller's fault.
    #[error("service-account keys unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Token(#[from] VerifyError),
    #[error("the token's sub is not a service account")]
    Subject,
    #[error("the token lives longer than {MAX_LIFETIME} s (exp - iat, iat required)")]
    Lifetime,
    #[error("the API server no longer accepts the token (TokenReview)")]
    Reviewed,
    /// The token's `iss` is not the cluster's issuer (not secret: both are
    /// in the log at debug level).
    #[error("the token's iss is `{received}`, the cluster's issuer is `{expected}`")]
    Issuer { expected: String, received: String },
}

struct Cached {
    keys: KeySet,
    /// The issuer the last discovery named.
    issuer: Option<String>,
    fetched: Option<Instant>,
}

/// What discovery said about the configured issuer, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IssuerCheck {
    /// No answer yet.
    Pending,
    /// Discovery named it (or, with none configured, named one).
    Confirmed,
    /// The API server could not be asked: its tokens wait for it, the
    /// other clients need not.
    Unreachable,
    /// Discovery names another issuer: the message names both.
    Mismatch(String),
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Verifies service-account tokens of one issuer.
pub struct Verifier {
    settings: KubernetesSettings,
    fetcher: Fetcher,
    cached: ArcSwap<Cached>,
    /// Held while fetching: one fetch at a time, and its rate limit.
    refresh: tokio::sync::Mutex<RefreshState>,
    reviews: review::Reviews,
    check: ArcSwap<IssuerCheck>,
    min_refresh: Duration,
    /// [`MAX_AGE`] and [`MAX_STALE`], shortened by tests.
    max_age: Duration,
    max_stale: Duration,
}

impl Verifier {
    pub fn new(settings: &KubernetesSettings) -> Result<Self, FetchError> {
        Ok(Self {
            settings: settings.clone(),
            fetcher: Fetcher::new(settings)?,
            cached: ArcSwap::from_pointee(Cached {
                keys: KeySet::default(),
                issuer: None,
                fetched: None,
            }),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            reviews: review::Reviews::new(REVIEW_TTL),
            check: ArcSwap::from_pointee(IssuerCheck::Pending),
            min_refresh: MIN_REFRESH,
            max_age: MAX_AGE,
            max_stale: MAX_STALE,
        })
    }

    #[cfg(test)]
    fn with_min_refresh(mut self, min_refresh: Duration) -> Self {
        self.min_refresh = min_refresh;
        self
    }

    #[cfg(test)]
    fn with_ages(mut self, max_age: Duration, max_stale: Duration) -> Self {
        self.max_age = max_age;
        self.max_stale = max_stale;
        self
    }

    /// Fetches the keys now (at startup), so the first client does not wait
    /// and a wrong configuration shows in the log at once.
    pub async fn warm_up(&self) -> Result<(), SaTokenError> {
        let seen = self.cached.load_full();
        self.refresh(seen).await.map(|_| ())
    }

    /// The issuer in force: the configured one, else the one discovery
    /// named last (none before the first discovery).
    pub fn issuer(&self) -> Option<String> {
        self.settings
            .issuer
            .clone()
            .or_else(|| self.cached.load().issuer.clone())
    }

    /// Whether an assertion with this unverified `iss` and `sub` is meant
    /// for this verifier: its issuer, or, while none is known yet, a
    /// service account's subject (verification then discovers the issuer).
    pub fn is_for(&self, iss: &str, sub: Option<&str>) -> bool {
        match self.issuer() {
            Some(issuer) => issuer == iss,
            None => sub.is_some_and(|s| s.starts_with(SUBJECT_PREFIX)),
        }
    }

    /// Ready unless discovery has not answered yet or names another issuer
    /// than the configured one; an unreachable API server only delays the
    /// service-account clients.
    pub fn readiness(&self) -> Result<(), String> {
        match &**self.check.load() {
            IssuerCheck::Pending => Err(format!(
                "asking {} for the cluster's service-account issuer",
                self.settings.discovery_url
            )),
            IssuerCheck::Mismatch(message) => Err(message.clone()),
            IssuerCheck::Confirmed | IssuerCheck::Unreachable => Ok(()),
        }
    }

    /// Checks signature (algorithm from the key: no `none`, no HMAC), `iss`,
    /// `aud`, `exp` (required), `nbf`, and returns the service account of
    /// `sub`; with `tokenReview`, the API server must still accept it. There
    /// is no `jti` replay check: the kubelet hands a pod the same token until
    /// it rotates it, so reuse is the normal case.
    pub async fn verify(&self, token: &str, now: u64) -> Result<ServiceAccount, SaTokenError> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| VerifyError::Malformed)?
            .kid;
        let mut cached = self.cached.load_full();
        let stale = cached.fetched.is_none_or(|at| at.elapsed() > self.max_age);
        let unknown = kid.as_deref().is_none_or(|k| !cached.keys.contains_kid(k));
        if stale || unknown {
            cached = self.refresh(cached).await?;
        }
        let issuer = match (&self.settings.issuer, &cached.issuer) {
            (Some(issuer), _) | (None, Some(issuer)) => issuer.as_str(),
            (None, None) => {
                return Err(SaTokenError::Unavailable(
                    "the cluster's issuer is not discovered yet".into(),
                ));
            }
        };
        let expected = Expected {
            typ: None,
            issuers: &[issuer],
            audiences: &[self.settings.audience.as_str()],
            require_exp: true,
            leeway: LEEWAY,
            now,
        };
        let claims = verify(token, &cached.keys, &expected).map_err(|err| match err {
            VerifyError::Issuer => SaTokenError::Issuer {
                expected: issuer.to_owned(),
                received: unverified_issuer(token).unwrap_or_default(),
            },
            other => SaTokenError::Token(other),
        })?;
        let number = |name: &str| claims.get(name).and_then(Value::as_u64);
        match (number("iat"), number("exp")) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= MAX_LIFETIME => {}
            _ => return Err(SaTokenError::Lifetime),
        }
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let account = ServiceAccount::from_subject(sub).ok_or(SaTokenError::Subject)?;
        if self.settings.token_review {
            self.review(token, sub).await?;
        }
        Ok(account)
    }

    /// Whether the API server accepts `token` as `sub`, remembered for
    /// [`REVIEW_TTL`]. An API server that cannot answer refuses nothing and
    /// accepts nothing: the caller gets `Unavailable`.
    async fn review(&self, token: &str, sub: &str) -> Result<(), SaTokenError> {
        let ask = || async {
            match self.fetcher.review(token).await {
                Ok(user) => Ok(user.as_deref() == Some(sub)),
                Err(err) => {
                    tracing::warn!(api_server = %self.settings.api_server_url, error = %err, "TokenReview failed");
                    Err(err.to_string())
                }
            }
        };
        match self.reviews.answer(token, ask).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SaTokenError::Reviewed),
            Err(message) => Err(SaTokenError::Unavailable(message)),
        }
    }

    /// Fetches the keys unless another caller just did (`seen` is no longer
    /// current) or the last attempt is younger than `min_refresh`. Keeps the
    /// old keys when a fetch fails; fails only when there are none.
    async fn refresh(&self, seen: Arc<Cached>) -> Result<Arc<Cached>, SaTokenError> {
        let mut state = self.refresh.lock().await;
        let current = self.cached.load_full();
        if !Arc::ptr_eq(&current, &seen) {
            return Ok(current);
        }
        // Old keys bridge an API server outage, but not for ever: a key the
        // cluster dropped must stop verifying at some point.
        let too_old = current
            .fetched
            .is_none_or(|at| at.elapsed() > self.max_stale);
        let unavailable = |message: &str| {
            if current.keys.is_empty() || too_old {
                Err(SaTokenError::Unavailable(message.to_owned()))
            } else {
                Ok(current.clone())
            }
        };
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refresh)
        {
            let last = state.last_error.as_deref();
            return unavailable(last.unwrap_or("no key fetched yet"));
        }
        state.last_attempt = Some(Instant::now());
        let discovery = &self.settings.discovery_url;
        match self.fetcher.keys().await {
            Ok(Discovered { issuer, keys }) => {
                tracing::info!(%issuer, %discovery, "service-account keys fetched");
                let fresh = Arc::new(Cached {
                    keys,
                    issuer: Some(issuer),
                    fetched: Some(Instant::now()),
                });
                self.cached.store(fresh.clone());
                self.check.store(Arc::new(IssuerCheck::Confirmed));
                state.last_error = None;
                Ok(fresh)
            }
            Err(err) => {
                let message = err.to_string();
                if let FetchError::IssuerMismatch { .. } = err {
                    tracing::error!(error = %err, "service-account tokens cannot verify: not ready");
                    self.check
                        .store(Arc::new(IssuerCheck::Mismatch(message.clone())));
                } else {
                    tracing::warn!(%discovery, error = %err, "service-account keys unavailable");
                    self.check.rcu(|check| match **check {
                        IssuerCheck::Pending => Arc::new(IssuerCheck::Unreachable),
                        _ => check.clone(),
                    });
                }
                state.last_error = Some(message.clone());
                unavailable(&message)
            }
        }
    }
}

/// The verifier in force: rebuilt when `TokenServer.spec.kubernetes`
/// changes, kept (with its cached keys) otherwise.
#[derive(Default)]
pub struct ServiceAccountIssuer {
    current: ArcSwapOption<Verifier>,
}

impl ServiceAccountIssuer {
    /// The verifier of `settings`. A new one fetches discovery and the keys
    /// at once, in the background: the first client does not wait, and a
    /// wrong issuer shows in the log and at readiness.
    pub fn verifier(&self, settings: &KubernetesSettings) -> Result<Arc<Verifier>, FetchError> {
        if let Some(verifier) = self.current.load_full()
            && verifier.settings == *settings
        {
            return Ok(verifier);
        }
        let verifier = Arc::new(Verifier::new(settings)?);
        self.current.store(Some(verifier.clone()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let warming = verifier.clone();
            // Failures are logged inside; the first client retries.
            runtime.spawn(tracing::Instrument::instrument(
                async move {
                    let _ = warming.warm_up().await;
                },
                tracing::info_span!("service-account keys warm-up"),
            ));
        }
        Ok(verifier)
    }

    /// Readiness with `settings` (none: no service-account clients).
    pub fn readiness(&self, settings: Option<&KubernetesSettings>) -> Result<(), String> {
        match settings {
            None => Ok(()),
            Some(settings) => self
                .verifier(settings)
                .map_err(|e| format!("TokenServer spec.kubernetes: {e}"))?
                .readiness(),
        }
    }
}

/// The `iss` of a token, unverified (for messages only).
pub fn unverified_issuer(token: &str) -> Option<String> {
    unverified_claim(token, "iss")
}

/// A string claim of a JWT, unverified: to route an assertion or name it
/// in a message, never to trust it.
pub fn unverified_claim(token: &str, name: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests;
