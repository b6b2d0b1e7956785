//! Token revocation (RFC 7009): one token, or with `revoke=grant` every token
//! issued under the same grant.

use std::{sync::Arc, time::Instant};

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
    // Every revocation reaches every sidecar and stays in its memory until
    // the token would have expired: one client may not flood them.
    if let Err(wait) = state.revoke_limit.take(&client.id, Instant::now()) {
        tracing::debug!(client_id = %client.id, "revocation refused: over --revoke-rate");
        return Err(OAuthError::TooManyRequests(wait.as_secs_f64().ceil() as u64));
    }
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
        let now = state.now();
        let (kind, id, until) = match grant {
            // Tokens of the grant issued until now expire by then.
            Some(grant_id) => (
                RevocationKind::Grant,
                grant_id,
                now.saturating_add(registry.server.max_ttl.as_secs()),
            ),
            None => (RevocationKind::Token, claims.jti.as_str(), claims.exp),
        };
        let seq = state.store.revoke(kind, id, until).await?;
        state.revocations.add(id, until, now);
        state.revoked.notify_waiters();
        tracing::info!(client_id = %client.id, jti = %claims.jti, whole_grant = grant.is_some(), seq, "token revoked");
    }
    Ok(no_store(()))
}
