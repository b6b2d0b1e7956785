//! `kubernetes_service_account` client authentication: a service-account
//! token of the cluster, presented as an RFC 7523 client assertion (HTTP
//! `client_assertion`, gRPC `x-client-assertion`), names the client by its
//! `sub`.

use std::sync::Arc;

use tokenmesh_tokens::verify::VerifyError;

use super::{client_auth::refused, error::OAuthError};
use crate::{
    kubernetes_issuer::{SaTokenError, Verifier},
    registry::{Client, ClientAuth, Registry},
    state::AppState,
};

/// The client whose service account the token belongs to. `claimed_id`,
/// when sent, must be that client.
pub async fn authenticate(
    state: &AppState,
    registry: &Registry,
    verifier: &Verifier,
    claimed_id: Option<&str>,
    token: &str,
) -> Result<Arc<Client>, OAuthError> {
    let account = verifier
        .verify(token, state.now())
        .await
        .map_err(|err| match err {
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
        })?;
    let client = match claimed_id {
        Some(id) => registry
            .client(id)
            .filter(|c| matches!(&c.auth, ClientAuth::ServiceAccount(a) if *a == account)),
        None => registry.client_for_service_account(&account),
    };
    client.cloned().ok_or_else(|| {
        tracing::debug!(service_account = %account, client_id = ?claimed_id, "no client of this service account");
        refused("the service account does not authenticate this client")
    })
}
