//! The token server's JWKS (GetJwks) as the source of the mesh's key set,
//! and the token endpoint it names (the `htu` of Exchange's DPoP proofs).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use tokenmesh_tokens::{
    jwk::JwkSet,
    keyset::{FetchKeys, Keys},
    verify::KeySet,
};

use crate::token_server::TokenService;

pub(super) struct Jwks<S> {
    token_server: Arc<S>,
    /// `jwks_fetches`: fetches that brought keys.
    fetches: Counter,
    token_endpoint: Arc<ArcSwapOption<String>>,
}

impl<S> Jwks<S> {
    pub(super) fn new(
        token_server: Arc<S>,
        fetches: Counter,
        token_endpoint: Arc<ArcSwapOption<String>>,
    ) -> Self {
        Self {
            token_server,
            fetches,
            token_endpoint,
        }
    }
}

impl<S: TokenService> FetchKeys for Jwks<S> {
    type Error = String;

    async fn fetch(&self) -> Result<Keys, String> {
        let response = self
            .token_server
            .jwks()
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        let jwks: JwkSet = serde_json::from_str(&response.jwks_json)
            .map_err(|e| format!("the JWKS does not parse: {e}"))?;
        let (set, errors) = KeySet::from_jwks(&jwks);
        for error in errors {
            tracing::warn!(%error, "unusable key in the token server's JWKS");
        }
        self.fetches.inc();
        if !response.token_endpoint.is_empty() {
            self.token_endpoint
                .store(Some(Arc::new(response.token_endpoint)));
        }
        Ok(Keys {
            issuer: response.issuer,
            set,
        })
    }
}
