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
//! The keys are a [`RemoteKeySet`] under its one rule, with its default
//! bounds: fetched again when a token names an unknown `kid` (the API
//! server rotated its key) or the keys are an hour old, at most once every
//! 10 s, so a flood of tokens with made-up kids costs the API server one
//! request per interval; the last keys bridge a day of outage.

mod fetch;
mod keys;
mod review;

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokenmesh_tokens::{
    clock::{SharedClock, SystemClock},
    keyset::{Freshness, RemoteKeySet},
    verify::{Expected, VerifyError, verify},
};

use fetch::Fetcher;
pub use fetch::{FetchError, confidential_url};
use keys::{ClusterKeys, IssuerCheck};
/// Longest life (`exp - iat`) of an accepted service-account token. Projected
/// tokens live an hour; a year-long `kubectl create token --duration` is a
/// credential nobody will rotate.
const MAX_LIFETIME: u64 = 24 * 3600;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 30;
/// How long a TokenReview answer is remembered: a revoked token is refused
/// at most this late, and one token costs the API server at most one
/// review per interval.
pub const REVIEW_TTL: Duration = Duration::from_secs(5);

pub use tokenmesh_core::registry::{KubernetesSettings, ServiceAccount};

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

/// Verifies service-account tokens of one issuer.
pub struct Verifier {
    settings: KubernetesSettings,
    keys: RemoteKeySet<ClusterKeys>,
    reviews: review::Reviews,
}

impl Verifier {
    /// A verifier on the system clock.
    pub fn new(settings: &KubernetesSettings) -> Result<Self, FetchError> {
        Self::with_clock(settings, SystemClock::shared())
    }

    pub fn with_clock(
        settings: &KubernetesSettings,
        clock: SharedClock,
    ) -> Result<Self, FetchError> {
        Self::assemble(settings, clock, Freshness::default())
    }

    fn assemble(
        settings: &KubernetesSettings,
        clock: SharedClock,
        freshness: Freshness,
    ) -> Result<Self, FetchError> {
        let source = ClusterKeys::new(Fetcher::new(settings)?, &settings.discovery_url);
        Ok(Self {
            settings: settings.clone(),
            keys: RemoteKeySet::new(source, clock.clone(), freshness),
            reviews: review::Reviews::new(REVIEW_TTL, clock),
        })
    }

    /// The same verifier on the system clock, fetching as often as
    /// `min_interval` allows (tests shorten it).
    #[cfg(test)]
    fn with_min_refresh(self, min_interval: Duration) -> Self {
        let freshness = Freshness {
            min_interval,
            ..Freshness::default()
        };
        Self::assemble(&self.settings, SystemClock::shared(), freshness).unwrap()
    }

    /// Fetches the keys now (at startup), so the first client does not wait
    /// and a wrong configuration shows in the log at once.
    pub async fn warm_up(&self) -> Result<(), SaTokenError> {
        self.keys
            .refresh()
            .await
            .map(|_| ())
            .map_err(|e| SaTokenError::Unavailable(e.0))
    }

    /// The issuer in force: the configured one, else the one discovery
    /// named last (none before the first discovery).
    pub fn issuer(&self) -> Option<String> {
        self.settings
            .issuer
            .clone()
            .or_else(|| self.keys.current().map(|keys| keys.issuer.clone()))
    }

    /// Whether an assertion with this unverified `iss` and `sub` is meant
    /// for this verifier: its issuer, or, while none is known yet, a
    /// service account's subject (verification then discovers the issuer).
    pub fn is_for(&self, iss: &str, sub: Option<&str>) -> bool {
        match self.issuer() {
            Some(issuer) => issuer == iss,
            None => sub.is_some_and(|s| s.starts_with(ServiceAccount::SUBJECT_PREFIX)),
        }
    }

    /// Ready unless discovery has not answered yet or names another issuer
    /// than the configured one; an unreachable API server only delays the
    /// service-account clients.
    pub fn readiness(&self) -> Result<(), String> {
        match &**self.keys.source().check.load() {
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
        let keys = self
            .keys
            .keys_for(kid.as_deref())
            .await
            .map_err(|e| SaTokenError::Unavailable(e.0))?;
        // The keys come with the issuer discovery named.
        let issuer = self.settings.issuer.as_deref().unwrap_or(&keys.issuer);
        let expected = Expected {
            typ: None,
            issuers: &[issuer],
            audiences: &[self.settings.audience.as_str()],
            require_exp: true,
            leeway: LEEWAY,
            now,
        };
        let claims = verify(token, &keys.set, &expected).map_err(|err| match err {
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
            match self.keys.source().fetcher.review(token).await {
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
}

/// The verifier in force: rebuilt when `TokenServer.spec.kubernetes`
/// changes, kept (with its cached keys) otherwise.
pub struct ServiceAccountIssuer {
    current: ArcSwapOption<Verifier>,
    clock: SharedClock,
}

impl Default for ServiceAccountIssuer {
    /// On the system clock.
    fn default() -> Self {
        Self::new(SystemClock::shared())
    }
}

impl ServiceAccountIssuer {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            clock,
        }
    }

    /// The verifier of `settings`. A new one fetches discovery and the keys
    /// at once, in the background: the first client does not wait, and a
    /// wrong issuer shows in the log and at readiness.
    pub fn verifier(&self, settings: &KubernetesSettings) -> Result<Arc<Verifier>, FetchError> {
        if let Some(verifier) = self.current.load_full()
            && verifier.settings == *settings
        {
            return Ok(verifier);
        }
        let verifier = Arc::new(Verifier::with_clock(settings, self.clock.clone())?);
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

/// Claims read without verifying, only to route a token or name it in a message.
pub use tokenmesh_core::client_auth::{unverified_claim, unverified_issuer};

#[cfg(test)]
mod tests;
