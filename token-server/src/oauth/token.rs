//! The token endpoint (RFC 6749 §3.2).

use std::sync::Arc;

use axum::{Json, body::Body, extract::State, http::HeaderMap, response::Response};
use serde::Serialize;
use tokenmesh_crds::{GrantType, TokenFormat};

use super::{client_auth::authenticate, error::OAuthError, form::Form, no_store, respond};
use tokenmesh_tokens::claims::AccessTokenClaims;

use super::introspect::active_claims;
use crate::{
    issue::{self, GrantedScope, TokenPlan},
    metrics::IssuedLabels,
    policy::{self, ActingParty, ExchangeRequest},
    registry::{Client, Registry},
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

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

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
        TOKEN_EXCHANGE => {
            if !client.grant_types.contains(&GrantType::TokenExchange) {
                return Err(OAuthError::UnauthorizedClient(
                    "the client may not use this grant type".into(),
                ));
            }
            return exchange(state, &registry, &client, &form).await;
        }
        _ => {
            return Err(OAuthError::UnsupportedGrantType(
                "supported: client_credentials, token exchange".into(),
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
    let access_token = issue::mint(state, &registry, &client, client.format, &claims).await?;
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

/// The active claims of a token given as `name` with its `<name>_type`.
async fn presented_token(
    state: &AppState,
    form: &Form,
    name: &'static str,
    type_name: &'static str,
) -> Result<Option<AccessTokenClaims>, OAuthError> {
    let Some(token) = form.get(name) else {
        return Ok(None);
    };
    match form.get(type_name) {
        Some(ACCESS_TOKEN_TYPE | JWT_TYPE) => {}
        _ => {
            return Err(OAuthError::InvalidRequest(
                format!("{type_name} must be {ACCESS_TOKEN_TYPE} or {JWT_TYPE}").into(),
            ));
        }
    }
    match active_claims(state, token).await? {
        Some(claims) => Ok(Some(claims)),
        None => {
            tracing::debug!(
                parameter = name,
                "exchange refused: token not active (unknown, expired, revoked or forged)"
            );
            Err(OAuthError::InvalidGrant(
                format!("the {name} is not active").into(),
            ))
        }
    }
}

/// RFC 8693 token exchange under the ExchangePolicy resources.
async fn exchange(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
) -> Result<Response, OAuthError> {
    form.require("subject_token")?;
    let subject = presented_token(state, form, "subject_token", "subject_token_type")
        .await?
        .ok_or(OAuthError::Internal)?;
    let actor_claims = presented_token(state, form, "actor_token", "actor_token_type").await?;
    let targets: Vec<&String> = form
        .all("audience")
        .iter()
        .chain(form.all("resource"))
        .collect();
    let [audience] = targets.as_slice() else {
        return Err(OAuthError::InvalidTarget(
            "name exactly one audience or resource".into(),
        ));
    };
    let (format, issued_type) = match form.get("requested_token_type") {
        None | Some(ACCESS_TOKEN_TYPE) => (client.format, ACCESS_TOKEN_TYPE),
        Some(JWT_TYPE) => (TokenFormat::Jwt, JWT_TYPE),
        Some(_) => {
            return Err(OAuthError::InvalidRequest(
                "requested_token_type is not supported".into(),
            ));
        }
    };
    let now = state.now();
    let request = ExchangeRequest {
        subject: &subject,
        actor: ActingParty {
            client_id: &client.id,
            sub: actor_claims
                .as_ref()
                .map_or(client.id.as_str(), |a| a.sub.as_str()),
        },
        audience,
        scopes: form.get("scope").map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        now,
    };
    let decision = policy::decide(registry, &request).inspect_err(|err| {
        tracing::debug!(client_id = %client.id, subject_jti = %subject.jti, audience = %audience, reason = err.description(), "exchange refused");
    })?;
    let scopes = decision
        .scopes
        .iter()
        .map(|name| GrantedScope {
            name: name.clone(),
            expires_at: subject.scope_exp.get(name).copied(),
        })
        .collect();
    let mut claims = issue::claims(
        &registry.server.issuer,
        TokenPlan {
            client,
            subject: subject.sub.clone(),
            scopes,
            audiences: vec![(*audience).clone()],
            grant_id: subject.grant_id.clone(),
            now,
            ttl: decision.ttl,
        },
    )?;
    claims.act = Some(decision.act);
    let access_token = issue::mint(state, registry, client, format, &claims).await?;
    let label = if format == TokenFormat::Opaque {
        "opaque"
    } else {
        "jwt"
    };
    state
        .metrics
        .issued
        .get_or_create(&IssuedLabels {
            grant_type: "token_exchange",
            format: label,
        })
        .inc();
    tracing::debug!(client_id = %client.id, policy = %decision.policy, jti = %claims.jti, "token exchanged");
    Ok(no_store(Json(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: decision.ttl,
        scope: claims.scope,
        issued_token_type: Some(issued_type),
    })))
}
