//! Token revocation (RFC 7009): one token, or with `revoke=grant` every token
//! issued under the same grant when the client started it; a client that
//! joined the grant by exchange revokes every token the grant issued to it.
//! A refresh token revokes its whole grant (§2.1).

use std::sync::Arc;

use tokenmesh_core::{
    certificate::ClientCertificate,
    signin::refresh::{self, REFRESH_PREFIX},
};

use axum::{body::Body, extract::State, http::HeaderMap, response::Response};

use super::{
    client_auth::{ClientCert, authenticate},
    error::OAuthError,
    form::Form,
    introspect::active_claims,
    no_store, respond,
};
use tokenmesh_tokens::revoked::client_grant_id;

use crate::{state::AppState, store::RevocationKind};

pub async fn revoke(
    State(state): State<Arc<AppState>>,
    ClientCert(certificate): ClientCert,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(handle(&state, &headers, body, certificate.as_ref()).await)
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    certificate: Option<&ClientCertificate>,
) -> Result<Response, OAuthError> {
    let form = Form::read(headers, body).await?;
    let registry = state.registry.load();
    let client = authenticate(
        state,
        &registry,
        headers,
        &form,
        &state.endpoints.revocation,
        certificate,
    )
    .await?;
    // Every revocation reaches every sidecar and stays in its memory until
    // the token would have expired: one client may not flood them.
    if let Err(wait) = state.revoke_limit.take(&client.id, state.clock.instant()) {
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
    let until = state
        .now()
        .saturating_add(registry.server.max_ttl.as_secs());
    if token.starts_with(REFRESH_PREFIX) {
        refresh::revoke(state, &client, token, until).await?;
        return Ok(no_store(()));
    }
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
    // Another client revokes what the grant issued to it (every exchange it
    // made under it, and the tokens embedded in them), never the tokens of
    // the clients before it.
    let (seq, revoked) = match (whole_grant, claims.grant_id.as_deref()) {
        (true, Some(grant_id)) if claims.act.is_none() => (
            record(state, RevocationKind::Grant, grant_id, until).await?,
            "grant",
        ),
        (true, grant_id) => {
            // Embedded tokens share their outer token's grant and client, so
            // the client's part of the grant covers them; one revocation
            // each only without a grant.
            if grant_id.is_none() {
                for inner in claims.embedded_tokens.values() {
                    if let Some(inner) = active_claims(state, inner).await? {
                        record(state, RevocationKind::Token, &inner.jti, inner.exp).await?;
                    }
                }
            }
            match grant_id {
                Some(grant_id) => {
                    let joined = client_grant_id(grant_id, &client.id);
                    (
                        record(state, RevocationKind::Grant, &joined, until).await?,
                        "the grant's tokens of this client",
                    )
                }
                None => (
                    record(state, RevocationKind::Token, &claims.jti, claims.exp).await?,
                    "token",
                ),
            }
        }
        (false, _) => (
            record(state, RevocationKind::Token, &claims.jti, claims.exp).await?,
            "token",
        ),
    };
    state.revoked.notify_waiters();
    tracing::info!(client_id = %client.id, jti = %claims.jti, revoked, seq, "token revoked");
    Ok(no_store(()))
}

/// Stores a revocation and remembers it at once on this replica.
pub(crate) async fn record(
    state: &AppState,
    kind: RevocationKind,
    id: &str,
    until: u64,
) -> Result<i64, OAuthError> {
    let seq = state.store.revoke(kind, id, until).await?;
    state.revocations.add(id, until, state.now());
    Ok(seq)
}
