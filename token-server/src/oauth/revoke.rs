//! Token revocation (RFC 7009): one token, or with `revoke=grant` every token
//! issued under the same grant when the client started it; a client that
//! got its token by exchange revokes that token and the ones embedded in it.

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
    let Some(claims) = active_claims(state, token).await? else {
        return Ok(no_store(()));
    };
    if claims.client_id != client.id {
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client".into(),
        ));
    }
    // Exchange always adds `act`: a token without one was issued to the
    // client that started the grant, which alone may revoke all of it.
    // Another client revokes what was issued to it: this token and the
    // tokens embedded in it, never the tokens of the clients before it.
    let grant = claims
        .grant_id
        .as_deref()
        .filter(|_| whole_grant && claims.act.is_none());
    let seq = match grant {
        Some(grant_id) => {
            let until = state
                .now()
                .saturating_add(registry.server.max_ttl.as_secs());
            record(state, RevocationKind::Grant, grant_id, until).await?
        }
        None => {
            if whole_grant {
                for inner in claims.embedded_tokens.values() {
                    if let Some(inner) = active_claims(state, inner).await? {
                        record(state, RevocationKind::Token, &inner.jti, inner.exp).await?;
                    }
                }
            }
            record(state, RevocationKind::Token, &claims.jti, claims.exp).await?
        }
    };
    state.revoked.notify_waiters();
    tracing::info!(client_id = %client.id, jti = %claims.jti, whole_grant = grant.is_some(), seq, "token revoked");
    Ok(no_store(()))
}

/// Stores a revocation and remembers it at once on this replica.
async fn record(
    state: &AppState,
    kind: RevocationKind,
    id: &str,
    until: u64,
) -> Result<i64, OAuthError> {
    let seq = state.store.revoke(kind, id, until).await?;
    state.revocations.add(id, until, state.now());
    Ok(seq)
}
