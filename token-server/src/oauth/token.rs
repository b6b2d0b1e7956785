//! The token endpoint (RFC 6749 §3.2).

use std::sync::Arc;

use axum::{Json, body::Body, extract::State, http::HeaderMap, response::Response};
use serde::Serialize;

use super::{
    client_auth::{ClientCert, authenticate},
    dpop::{self, NONCE_HEADER},
    error::OAuthError,
    form::Form,
    no_store, respond,
};
use tokenmesh_core::{
    binding::Holder,
    certificate::ClientCertificate,
    exchange::{ACCESS_TOKEN_TYPE, ExchangeParams, JWT_TYPE},
    issue::{self, ClientCredentialsRequest},
    plan,
};

use crate::{
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub async fn token(
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
        &state.endpoints.token,
        certificate,
    )
    .await?;
    let grant_type = form.require("grant_type")?;
    let require_nonce = registry.server.dpop_nonce;
    let holder = dpop::holder(
        state,
        headers,
        "POST",
        &state.endpoints.token,
        require_nonce,
    )
    .await?;
    // The other grants' futures are boxed: inline, the largest (2.7 KB)
    // set the size of every request's future, copied as it is boxed and moved.
    let mut response = match grant_type {
        "client_credentials" => {
            client_credentials(state, &registry, &client, &form, &holder, certificate).await?
        }
        TOKEN_EXCHANGE => {
            Box::pin(exchange(
                state,
                &registry,
                &client,
                &form,
                &holder,
                certificate,
            ))
            .await?
        }
        "authorization_code" => {
            Box::pin(super::sign_in_grants::authorization_code(
                state,
                &registry,
                &client,
                &form,
                (&holder, certificate),
            ))
            .await?
        }
        "refresh_token" => {
            Box::pin(super::sign_in_grants::refresh_token(
                state,
                &registry,
                &client,
                &form,
                (&holder, certificate),
            ))
            .await?
        }
        _ => {
            return Err(OAuthError::UnsupportedGrantType(
                "supported: client_credentials, token exchange, authorization_code, refresh_token"
                    .into(),
            ));
        }
    };
    if let Some(nonce) = dpop::fresh_nonce(state, require_nonce)
        && let Ok(value) = axum::http::HeaderValue::from_str(&nonce)
    {
        response.headers_mut().insert(NONCE_HEADER, value);
    }
    Ok(response)
}

async fn client_credentials(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
    holder: &Holder,
    certificate: Option<&ClientCertificate>,
) -> Result<Response, OAuthError> {
    let request = ClientCredentialsRequest {
        scope: form.get("scope"),
        audiences: form
            .all("audience")
            .iter()
            .chain(form.all("resource"))
            .cloned()
            .collect(),
        certificate,
        holder: holder.clone(),
    };
    let issued = issue::client_credentials(state, registry, client, request, state.now()).await?;
    state
        .metrics
        .count_issued("client_credentials", issued.format);
    Ok(no_store(Json(TokenResponse {
        access_token: issued.access_token,
        token_type: dpop::token_type(holder),
        expires_in: issued.expires_in,
        scope: issued.claims.scope,
        issued_token_type: None,
        refresh_token: None,
        id_token: None,
    })))
}

/// Checks a `<name>_type` parameter: only access tokens and JWTs of this server.
fn check_token_type(form: &Form, type_name: &'static str) -> Result<(), OAuthError> {
    match form.get(type_name) {
        Some(ACCESS_TOKEN_TYPE | JWT_TYPE) => Ok(()),
        _ => Err(OAuthError::InvalidRequest(
            format!("{type_name} must be {ACCESS_TOKEN_TYPE} or {JWT_TYPE}").into(),
        )),
    }
}

/// RFC 8693 token exchange at the token endpoint.
async fn exchange(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
    holder: &Holder,
    certificate: Option<&ClientCertificate>,
) -> Result<Response, OAuthError> {
    let subject_token = form.require("subject_token")?;
    check_token_type(form, "subject_token_type")?;
    let actor_token = form.get("actor_token");
    if actor_token.is_some() {
        check_token_type(form, "actor_token_type")?;
    }
    let targets: Vec<&String> = form
        .all("audience")
        .iter()
        .chain(form.all("resource"))
        .collect();
    // RFC 8693 §2.1: both are optional; without either the policies decide.
    let audience = match targets.as_slice() {
        [] => None,
        [audience] => Some(audience.as_str()),
        _ => {
            return Err(OAuthError::InvalidTarget(
                "name one audience or resource: a token here is for one audience".into(),
            ));
        }
    };
    let params = ExchangeParams {
        subject_token,
        actor_token,
        audience,
        scopes: form.get("scope").map(plan::requested_scopes).transpose()?,
        requested_token_type: form.get("requested_token_type"),
        certificate,
        holder: holder.clone(),
    };
    let issued =
        tokenmesh_core::exchange::exchange(state, registry, client, params, state.now()).await?;
    state.metrics.count_issued("token_exchange", issued.format);
    Ok(no_store(Json(TokenResponse {
        access_token: issued.access_token,
        token_type: dpop::token_type(holder),
        expires_in: issued.expires_in,
        scope: issued.scopes.join(" "),
        issued_token_type: Some(issued.issued_token_type),
        refresh_token: None,
        id_token: None,
    })))
}
