//! The token endpoint (RFC 6749 §3.2).

use std::sync::Arc;

use axum::{Json, body::Body, extract::State, http::HeaderMap, response::Response};
use serde::Serialize;
use tokenmesh_crds::{GrantType, TokenFormat};

use super::{client_auth::authenticate, error::OAuthError, form::Form, no_store, respond};
use crate::{
    issue::{self, TokenPlan},
    metrics::IssuedLabels,
    state::AppState,
};

#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

pub async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    respond(handle(&state, &headers, body).await)
}

async fn handle(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, OAuthError> {
    let form = Form::read(headers, body).await?;
    let registry = state.registry.load();
    let client = authenticate(state, &registry, headers, &form, &state.endpoints.token).await?;
    let grant_type = form.require("grant_type")?;
    let grant = match grant_type {
        "client_credentials" => GrantType::ClientCredentials,
        _ => {
            return Err(OAuthError::UnsupportedGrantType(
                "supported: client_credentials".into(),
            ));
        }
    };
    if !client.grant_types.contains(&grant) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use this grant type".into(),
        ));
    }
    let now = state.now();
    let scopes = issue::resolve_scopes(&registry, &client, form.get("scope"), now)?;
    let requested: Vec<String> = form
        .all("audience")
        .iter()
        .chain(form.all("resource"))
        .cloned()
        .collect();
    let audiences = issue::resolve_audiences(&client, &requested)?;
    let ttl = client.ttl.min(registry.server.max_ttl).as_secs();
    let claims = issue::claims(
        &registry.server.issuer,
        TokenPlan {
            client: &client,
            subject: client.id.clone(),
            scopes,
            audiences,
            grant_id: None,
            now,
            ttl,
        },
    )?;
    let access_token = issue::mint(state, &registry, &client, &claims).await?;
    let format = if client.format == TokenFormat::Opaque {
        "opaque"
    } else {
        "jwt"
    };
    state
        .metrics
        .issued
        .get_or_create(&IssuedLabels {
            grant_type: "client_credentials",
            format,
        })
        .inc();
    tracing::debug!(client_id = %client.id, jti = %claims.jti, "token issued");
    Ok(no_store(Json(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        scope: claims.scope,
        issued_token_type: None,
    })))
}
