//! The sign-in grants at the token endpoint: `authorization_code` (RFC 6749
//! §4.1.3, with PKCE) and `refresh_token` (§6, rotated on every use). Each
//! answers an access token for the user, an ID token for OpenID Connect,
//! and a refresh token when the grant allows one.

use axum::{Json, response::Response};
use tokenmesh_core::{
    OAuthError,
    binding::Holder,
    certificate::ClientCertificate,
    registry::{Client, Registry},
    signin::{
        code::{self, Redemption},
        grant::Authorization,
        refresh, tokens,
    },
};
use tokenmesh_crds::GrantType;

use super::{dpop, form::Form, no_store, token::TokenResponse};
use crate::state::AppState;

pub async fn authorization_code(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
    proof: (&Holder, Option<&ClientCertificate>),
) -> Result<Response, OAuthError> {
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use the authorization_code grant".into(),
        ));
    }
    let now = state.now();
    let presented = Redemption {
        code: form.require("code")?,
        redirect_uri: form.get("redirect_uri"),
        code_verifier: form.get("code_verifier"),
    };
    // A replay revokes until whatever the code issued has expired.
    let until = now.saturating_add(
        registry
            .server
            .max_ttl
            .max(client.sign_in.refresh_token_ttl)
            .as_secs(),
    );
    let record = code::redeem(state, client, presented, now, until).await?;
    let authorization = record.authorization;
    let refresh_token = if refresh::is_offered(client, &authorization) {
        Some(refresh::issue(state, &client.sign_in, &authorization, now).await?)
    } else {
        None
    };
    let response = respond(
        state,
        registry,
        client,
        &authorization,
        record.nonce.as_deref(),
        proof,
        refresh_token,
    )
    .await?;
    state
        .metrics
        .count_issued("authorization_code", client.format);
    Ok(response)
}

pub async fn refresh_token(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
    proof: (&Holder, Option<&ClientCertificate>),
) -> Result<Response, OAuthError> {
    let refreshed = refresh::refresh(
        state,
        client,
        &client.sign_in,
        form.require("refresh_token")?,
        form.get("scope"),
        state.now(),
    )
    .await?;
    let response = respond(
        state,
        registry,
        client,
        &refreshed.authorization,
        None,
        proof,
        Some(refreshed.refresh_token),
    )
    .await?;
    state.metrics.count_issued("refresh_token", client.format);
    Ok(response)
}

/// The access token, the ID token (OpenID Connect) and the refresh token.
async fn respond(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    authorization: &Authorization,
    nonce: Option<&str>,
    proof: (&Holder, Option<&ClientCertificate>),
    refresh_token: Option<String>,
) -> Result<Response, OAuthError> {
    let now = state.now();
    let (holder, certificate) = proof;
    let issued = tokens::access_token(
        state,
        registry,
        client,
        authorization,
        (holder, certificate),
        now,
    )
    .await?;
    let id_token = tokens::id_token(
        state,
        registry,
        client,
        authorization,
        nonce,
        &issued.access_token,
        now,
    )?;
    Ok(no_store(Json(TokenResponse {
        access_token: issued.access_token,
        token_type: dpop::token_type(holder),
        expires_in: issued.expires_in,
        scope: issued.claims.scope,
        issued_token_type: None,
        refresh_token,
        id_token,
    })))
}
