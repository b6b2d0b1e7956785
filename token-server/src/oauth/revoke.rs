//! Token revocation (RFC 7009): one token, or with `revoke=grant` every token
//! issued under the same grant.

use std::sync::Arc;

use axum::{body::Body, extract::State, http::HeaderMap, response::Response};

use super::{
    client_auth::authenticate, error::OAuthError, form::Form, introspect::active_claims, no_store,
    respond,
};
use crate::{state::AppState, store::RevocationKind};

pub async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(handle(&state, &headers, body).await)
}

async fn handle(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, OAuthError> {
    let form = Form::read(headers, body).await?;
    let registry = state.registry.load();
    let client = authenticate(
        state,
        &registry,
        headers,
        &form,
        &state.endpoints.revocation,
    )
    .await?;
    let token = form.require("token")?;
    // token_type_hint only speeds up a lookup; an unknown hint is ignored (§2.1).
    let whole_grant = match form.get("revoke") {
        None => false,
        Some("grant") => true,
        Some(_) => {
            return Err(OAuthError::InvalidRequest(
                "revoke must be `grant` when given".into(),
            ));
        }
    };
    // Unknown, expired and already revoked tokens: nothing to do, still 200 (§2.2).
    if let Some(claims) = active_claims(state, token).await? {
        if claims.client_id != client.id {
            return Err(OAuthError::UnauthorizedClient(
                "the token was not issued to this client".into(),
            ));
        }
        let grant = claims.grant_id.as_deref().filter(|_| whole_grant);
        let seq = match grant {
            Some(grant_id) => {
                let until = state
                    .now()
                    .saturating_add(registry.server.max_ttl.as_secs());
                state
                    .store
                    .revoke(RevocationKind::Grant, grant_id, until)
                    .await?
            }
            None => {
                state
                    .store
                    .revoke(RevocationKind::Token, &claims.jti, claims.exp)
                    .await?
            }
        };
        state.revocations.add(
            grant.unwrap_or(&claims.jti),
            if grant.is_some() {
                state
                    .now()
                    .saturating_add(registry.server.max_ttl.as_secs())
            } else {
                claims.exp
            },
        );
        state.revoked.notify_waiters();
        tracing::info!(client_id = %client.id, jti = %claims.jti, whole_grant = grant.is_some(), seq, "token revoked");
    }
    Ok(no_store(()))
}
