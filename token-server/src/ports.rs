//! The core's side effects, carried out by this server: signing with the
//! key ring, opaque tokens and assertion `jti`s in the store, presented
//! tokens looked up as introspection does, and service-account tokens
//! verified against the cluster; sign-in's codes, refresh tokens and grant
//! revocations in the store, and ID tokens signed with the key ring.

use tokenmesh_core::{
    OAuthError,
    client_auth::refused,
    ports::{
        AssertionReplay, AuthorizationCodes, ClusterToken, Grants, IdTokenSigner, OpaqueTokens,
        PresentedTokens, RefreshTokens, ServiceAccountTokens, Signer,
    },
    registry::{KubernetesSettings, ServiceAccount},
    signin::{
        grant::{Authorization, CodeRecord, CodeRedemption, RefreshRecord},
        id_token::IdTokenClaims,
    },
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
    store::{AuthCode, CodeUse, OpaqueToken, RefreshToken, RevocationKind},
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

/// The grant of a code or refresh token, as its row's `details`.
fn details(authorization: &Authorization) -> Result<String, OAuthError> {
    serde_json::to_string(authorization).map_err(|_| OAuthError::Internal)
}

fn authorization_of(details: &str) -> Result<Authorization, OAuthError> {
    serde_json::from_str(details).map_err(|err| {
        tracing::error!(error = %err, "a stored grant does not read");
        OAuthError::Internal
    })
}

impl AuthorizationCodes for AppState {
    async fn put_code(&self, hash: SecretHash, code: &CodeRecord) -> Result<(), OAuthError> {
        let grant = &code.authorization;
        let row = AuthCode {
            hash,
            client_id: grant.client_id.clone(),
            redirect_uri: code.redirect_uri.clone(),
            code_challenge: code.code_challenge.clone(),
            scope: grant.scopes.join(" "),
            nonce: code.nonce.clone(),
            session_id: grant.sid.clone(),
            subject: grant.subject.clone(),
            auth_time: grant.auth_time,
            grant_id: grant.grant_id.clone(),
            expires_at: code.expires_at,
            details: details(grant)?,
        };
        Ok(self.store.put_auth_code(&row).await?)
    }

    async fn use_code(&self, hash: SecretHash) -> Result<CodeRedemption, OAuthError> {
        let record = |row: AuthCode| -> Result<CodeRecord, OAuthError> {
            Ok(CodeRecord {
                authorization: authorization_of(&row.details)?,
                redirect_uri: row.redirect_uri,
                code_challenge: row.code_challenge,
                nonce: row.nonce,
                expires_at: row.expires_at,
            })
        };
        Ok(match self.store.use_auth_code(&hash).await? {
            CodeUse::First(row) => CodeRedemption::First(record(row)?),
            CodeUse::Replayed(row) => CodeRedemption::Replayed(record(row)?),
            CodeUse::Unknown => CodeRedemption::Unknown,
        })
    }
}

fn refresh_row(hash: SecretHash, token: &RefreshRecord) -> Result<RefreshToken, OAuthError> {
    let grant = &token.authorization;
    Ok(RefreshToken {
        hash,
        grant_id: grant.grant_id.clone(),
        client_id: grant.client_id.clone(),
        subject: grant.subject.clone(),
        scope: grant.scopes.join(" "),
        session_id: grant.sid.clone(),
        auth_time: grant.auth_time,
        expires_at: token.expires_at,
        idle_expires_at: token.idle_expires_at,
        rotated: token.rotated,
        details: details(grant)?,
    })
}

impl RefreshTokens for AppState {
    async fn put_refresh_token(
        &self,
        hash: SecretHash,
        token: &RefreshRecord,
    ) -> Result<(), OAuthError> {
        Ok(self
            .store
            .put_refresh_token(&refresh_row(hash, token)?)
            .await?)
    }

    async fn refresh_token(&self, hash: SecretHash) -> Result<Option<RefreshRecord>, OAuthError> {
        let Some(row) = self.store.refresh_token(&hash).await? else {
            return Ok(None);
        };
        Ok(Some(RefreshRecord {
            authorization: authorization_of(&row.details)?,
            expires_at: row.expires_at,
            idle_expires_at: row.idle_expires_at,
            rotated: row.rotated,
        }))
    }

    async fn rotate_refresh_token(
        &self,
        old: SecretHash,
        next_hash: SecretHash,
        next: &RefreshRecord,
    ) -> Result<bool, OAuthError> {
        Ok(self
            .store
            .rotate_refresh_token(&old, &refresh_row(next_hash, next)?)
            .await?)
    }
}

impl Grants for AppState {
    async fn revoke_grant(&self, grant_id: &str, until: u64) -> Result<(), OAuthError> {
        crate::oauth::revoke::record(self, RevocationKind::Grant, grant_id, until).await?;
        self.revoked.notify_waiters();
        Ok(())
    }

    async fn is_grant_revoked(&self, grant_id: &str, client_id: &str) -> Result<bool, OAuthError> {
        Ok(self
            .revocations
            .is_revoked(self.store.as_ref(), "", Some(grant_id), client_id, u64::MAX)
            .await?)
    }
}

impl IdTokenSigner for AppState {
    fn sign_id_token(
        &self,
        alg: SigningAlgorithm,
        claims: &IdTokenClaims,
    ) -> Result<String, OAuthError> {
        sign(self, jose_algorithm(alg), "JWT", claims)
    }
}
