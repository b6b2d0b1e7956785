//! The HTTP side of an `oidc` IdentityProvider: the upstream's discovery
//! document and keys (through [`RemoteKeySet`], so keys are fetched again
//! on an unknown `kid` at most every 10 s and an outage is bridged), the
//! authorization URL with `state`, `nonce` and PKCE (S256), the code
//! exchange at its token endpoint with our client secret, and UserInfo.
//! What the answers mean (the ID token's rules, the local subject, claim
//! mapping) is decided by [`tokenmesh_core::upstream`].
//!
//! Every request is bounded (3 s to connect, 10 s in all, 256 KiB of
//! answer), follows no redirect, and goes only to https or loopback http
//! URLs. Errors name URLs and OAuth error codes, never a code, token or
//! secret.

mod fetch;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwapOption;
use aws_lc_rs::digest::{SHA256, digest};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use tokenmesh_core::{
    registry::{IdentityProvider, ProviderKind, UpstreamOidc},
    upstream::{IdTokenRules, UpstreamError, UpstreamIdentity, identity, verify_id_token},
};
use tokenmesh_tokens::{
    clock::SharedClock,
    keyset::{Freshness, KeysUnavailable, RemoteKeySet, unverified_kid},
};

pub use fetch::FetchFailure;
use fetch::{Discovery, Http, UpstreamKeys};

/// Longest authorization code accepted back from the upstream.
pub const MAX_CODE_LEN: usize = 2048;

/// Why a step with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("IdentityProvider {0} is not of type oidc")]
    NotOidc(String),
    #[error(transparent)]
    Fetch(#[from] FetchFailure),
    #[error("the upstream's keys: {0}")]
    Keys(#[from] KeysUnavailable),
    #[error("the upstream refused the code: {error}")]
    Refused { error: String },
    #[error(transparent)]
    Rejected(#[from] UpstreamError),
    #[error("the authorization code is empty or longer than {MAX_CODE_LEN} bytes")]
    Code,
    #[error("no randomness for state, nonce and verifier")]
    Random,
}

/// What the caller keeps (in the sign-in's server-side state) between
/// sending a person to the upstream and their return: `state` to match the
/// callback, `nonce` and `verifier` for [`Upstream::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationStart {
    /// Where to send the browser.
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// How long a health check may take before the upstream counts as down:
/// it answers a ControlService Apply, which the operator gives 10 s.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether an IdentityProvider's upstream can serve sign-ins now: its
/// discovery document and keys fetched. `None` for a static provider.
pub async fn health(
    provider: Arc<IdentityProvider>,
    clock: SharedClock,
) -> Option<Result<String, String>> {
    let ProviderKind::Oidc(oidc) = &provider.kind else {
        return None;
    };
    let issuer = oidc.issuer.clone();
    let checked = match Upstream::new(provider, clock) {
        Ok(upstream) => tokio::time::timeout(HEALTH_TIMEOUT, upstream.check())
            .await
            .unwrap_or_else(|_| {
                Err(
                    KeysUnavailable(format!("{issuer} did not answer within {HEALTH_TIMEOUT:?}"))
                        .into(),
                )
            }),
        Err(err) => Err(err),
    };
    Some(match checked {
        Ok(()) => Ok(format!("discovery and keys fetched from {issuer}")),
        Err(err) => Err(err.to_string()),
    })
}

/// The upstreams of the providers in force, each made once (so its
/// discovery document and keys are fetched once, not per sign-in) and made
/// again when its provider changes.
#[derive(Default)]
pub struct Upstreams {
    made: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    /// The upstream of `provider` (an `oidc` one).
    pub fn of(
        &self,
        provider: &Arc<IdentityProvider>,
        clock: &SharedClock,
    ) -> Result<Arc<Upstream>, UpstreamFailure> {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(upstream) = made.get(&provider.key)
            && Arc::ptr_eq(&upstream.provider, provider)
        {
            return Ok(upstream.clone());
        }
        let upstream = Arc::new(Upstream::new(provider.clone(), clock.clone())?);
        made.insert(provider.key.clone(), upstream.clone());
        Ok(upstream)
    }
}

/// One `oidc` IdentityProvider's upstream.
pub struct Upstream {
    provider: Arc<IdentityProvider>,
    http: Http,
    clock: SharedClock,
    discovery: Arc<ArcSwapOption<Discovery>>,
    keys: RemoteKeySet<UpstreamKeys>,
}

impl Upstream {
    pub fn new(
        provider: Arc<IdentityProvider>,
        clock: SharedClock,
    ) -> Result<Self, UpstreamFailure> {
        let ProviderKind::Oidc(oidc) = &provider.kind else {
            return Err(UpstreamFailure::NotOidc(provider.key.clone()));
        };
        let http = Http::new()?;
        let discovery = Arc::new(ArcSwapOption::empty());
        let source = UpstreamKeys::new(http.clone(), &oidc.issuer, discovery.clone());
        Ok(Self {
            keys: RemoteKeySet::new(source, clock.clone(), Freshness::default()),
            provider,
            http,
            clock,
            discovery,
        })
    }

    fn oidc(&self) -> Result<&UpstreamOidc, UpstreamFailure> {
        match &self.provider.kind {
            ProviderKind::Oidc(oidc) => Ok(oidc),
            ProviderKind::Static(_) => Err(UpstreamFailure::NotOidc(self.provider.key.clone())),
        }
    }

    /// Discovery and keys fetched now: whether the upstream can serve a
    /// sign-in (the IdentityProvider's health).
    pub async fn check(&self) -> Result<(), UpstreamFailure> {
        self.keys.refresh().await?;
        Ok(())
    }

    /// The discovery document, fetched (with the keys) the first time.
    async fn discovered(&self) -> Result<Arc<Discovery>, UpstreamFailure> {
        if let Some(discovery) = self.discovery.load_full() {
            return Ok(discovery);
        }
        self.keys.refresh().await?;
        self.discovery
            .load_full()
            .ok_or_else(|| KeysUnavailable("no discovery document yet".into()).into())
    }

    /// The URL that starts a sign-in at the upstream, returning to
    /// `redirect_uri` (ours, registered there), with fresh `state`, `nonce`
    /// and PKCE verifier for the caller to keep, and `extra` parameters
    /// (`prompt`, `max_age`, `login_hint` passed on).
    pub async fn start(
        &self,
        redirect_uri: &str,
        extra: &[(&str, &str)],
    ) -> Result<AuthorizationStart, UpstreamFailure> {
        let discovery = self.discovered().await?;
        let random =
            || tokenmesh_tokens::secret::random_token().map_err(|_| UpstreamFailure::Random);
        let (state, nonce, verifier) = (random()?, random()?, random()?);
        let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
        let oidc = self.oidc()?;
        let mut url = reqwest::Url::parse(&discovery.authorization_endpoint).map_err(|e| {
            FetchFailure::Document {
                url: discovery.authorization_endpoint.clone(),
                message: format!("not a URL: {e}"),
            }
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &oidc.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &oidc.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .extend_pairs(extra);
        Ok(AuthorizationStart {
            url: url.into(),
            state,
            nonce,
            verifier,
        })
    }

    /// Exchanges the `code` the upstream sent back for its tokens, verifies
    /// the ID token (its keys, our client id, this sign-in's `nonce`), asks
    /// UserInfo when the upstream has it, and maps the person's identity.
    pub async fn complete(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        redirect_uri: &str,
    ) -> Result<UpstreamIdentity, UpstreamFailure> {
        if code.is_empty() || code.len() > MAX_CODE_LEN {
            return Err(UpstreamFailure::Code);
        }
        let discovery = self.discovered().await?;
        let oidc = self.oidc()?;
        let tokens = self
            .http
            .exchange(
                &discovery.token_endpoint,
                oidc,
                code,
                verifier,
                redirect_uri,
            )
            .await?;
        let kid = unverified_kid(&tokens.id_token);
        let keys = self.keys.keys_for(kid.as_deref()).await?;
        let rules = IdTokenRules {
            issuer: &oidc.issuer,
            client_id: &oidc.client_id,
            nonce,
            now: self.clock.unix(),
        };
        let claims = verify_id_token(&tokens.id_token, &keys.set, &rules)?;
        let userinfo = match (&discovery.userinfo_endpoint, &tokens.access_token) {
            (Some(endpoint), Some(access_token)) => {
                Some(self.http.userinfo(endpoint, access_token).await?)
            }
            _ => None,
        };
        Ok(identity(
            oidc,
            &claims,
            userinfo.as_ref().and_then(Value::as_object),
        )?)
    }
}
