//! The core's side effects, carried out by this server: signing with the
//! key ring, opaque tokens and assertion `jti`s in the store, presented
//! tokens looked up as introspection does, and service-account tokens
//! verified against the cluster.

use tokenmesh_core::{
    OAuthError,
    client_auth::refused,
    ports::{
        AssertionReplay, ClusterToken, OpaqueTokens, PresentedTokens, ServiceAccountTokens, Signer,
    },
    registry::{KubernetesSettings, ServiceAccount},
};
use tokenmesh_crds::SigningAlgorithm;
use tokenmesh_tokens::{
    claims::{ACCESS_TOKEN_TYP, AccessTokenClaims},
    secret::SecretHash,
    verify::VerifyError,
};

use crate::{
    keys::jose_algorithm,
    kubernetes_issuer::{SaTokenError, Verifier},
    state::AppState,
    store::OpaqueToken,
};

/// Signs `claims` with the current key of `alg`, as a JWT of type `typ`.
pub fn sign<T: serde::Serialize>(
    state: &AppState,
    alg: tokenmesh_tokens::Algorithm,
    typ: &str,
    claims: &T,
) -> Result<String, OAuthError> {
    let keys = state.keys.snapshot();
    let key = keys.signer(alg).ok_or_else(|| {
        tracing::error!(?alg, "no signing key for the algorithm");
        OAuthError::Internal
    })?;
    key.sign_jwt(typ, claims).map_err(|err| {
        tracing::error!(error = %err, "signing failed");
        OAuthError::Internal
    })
}

impl Signer for AppState {
    fn sign_access_token(
        &self,
        alg: SigningAlgorithm,
        claims: &AccessTokenClaims,
    ) -> Result<String, OAuthError> {
        sign(self, jose_algorithm(alg), ACCESS_TOKEN_TYP, claims)
    }
}

impl OpaqueTokens for AppState {
    async fn put_opaque_token(
        &self,
        hash: SecretHash,
        claims: &AccessTokenClaims,
    ) -> Result<(), OAuthError> {
        let record = OpaqueToken {
            hash,
            jti: claims.jti.clone(),
            client_id: claims.client_id.clone(),
            grant_id: claims.grant_id.clone().unwrap_or_default(),
            expires_at: claims.exp,
            claims: serde_json::to_string(claims).map_err(|_| OAuthError::Internal)?,
        };
        Ok(self.store.put_opaque_token(&record).await?)
    }
}

impl PresentedTokens for AppState {
    async fn active_claims(&self, token: &str) -> Result<Option<AccessTokenClaims>, OAuthError> {
        crate::oauth::active_claims(self, token).await
    }
}

impl AssertionReplay for AppState {
    async fn use_once(&self, client_id: &str, jti: &str, until: u64) -> Result<bool, OAuthError> {
        Ok(self.store.use_once(client_id, jti, until).await?)
    }
}

impl AppState {
    fn verifier(
        &self,
        settings: &KubernetesSettings,
    ) -> Result<std::sync::Arc<Verifier>, OAuthError> {
        self.service_accounts.verifier(settings).map_err(|err| {
            tracing::error!(error = %err, "the service-account verifier cannot be set up");
            OAuthError::KeysUnavailable
        })
    }
}

impl ServiceAccountTokens for AppState {
    fn is_cluster_token(
        &self,
        settings: &KubernetesSettings,
        iss: &str,
        sub: Option<&str>,
    ) -> Result<ClusterToken, OAuthError> {
        let verifier = self.verifier(settings)?;
        Ok(if verifier.is_for(iss, sub) {
            ClusterToken::Yes
        } else {
            ClusterToken::No {
                cluster_issuer: verifier.issuer(),
            }
        })
    }

    async fn verify(
        &self,
        settings: &KubernetesSettings,
        token: &str,
        now: u64,
    ) -> Result<ServiceAccount, OAuthError> {
        let verifier = self.verifier(settings)?;
        verifier.verify(token, now).await.map_err(refusal)
    }
}

/// Why a service-account token was refused, in the client's words; the
/// details go to the debug log.
fn refusal(err: SaTokenError) -> OAuthError {
    match err {
        SaTokenError::Unavailable(_) => OAuthError::KeysUnavailable,
        SaTokenError::Token(reason) => {
            tracing::debug!(%reason, "service-account token refused");
            refused(match reason {
                VerifyError::Expired => "the service-account token has expired",
                VerifyError::Audience => {
                    "the service-account token's aud does not name this token server"
                }
                VerifyError::NotYetValid => "the service-account token is not valid yet",
                _ => "the service-account token does not verify",
            })
        }
        SaTokenError::Issuer { expected, received } => {
            tracing::debug!(%expected, %received, "service-account token refused: another issuer");
            refused("the service-account token's iss is not the cluster's service-account issuer")
        }
        SaTokenError::Subject => {
            tracing::debug!("service-account token refused: sub is no service account");
            refused("the token's sub is not a service account")
        }
        SaTokenError::Reviewed => {
            tracing::debug!("service-account token refused by the API server's TokenReview");
            refused("the API server no longer accepts this service-account token (TokenReview)")
        }
        SaTokenError::Lifetime => {
            tracing::debug!("service-account token refused: lives longer than 24 h");
            refused("the service-account token lives longer than 24 h: issue a shorter one")
        }
    }
}
