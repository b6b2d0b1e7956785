//! Token introspection (RFC 7662), with signed answers (RFC 9701) and the
//! phantom-token answer (`Accept: application/jwt`: the claims as a JWT
//! access token).

use std::sync::Arc;

use tokenmesh_core::certificate::ClientCertificate;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokenmesh_tokens::{
    claims::{ACCESS_TOKEN_TYP, AccessTokenClaims},
    opaque,
    verify::{Expected, MAX_JWT_LEN, verify},
};

use super::{
    client_auth::{ClientCert, authenticate},
    error::OAuthError,
    form::Form,
    no_store, respond,
};
use tokenmesh_core::introspection::{inactive, introspection_response};

use crate::{keys::jose_algorithm, metrics::LookupLabels, ports::sign, state::AppState};

pub const INTROSPECTION_JWT: &str = "application/token-introspection+jwt";
const PHANTOM_JWT: &str = "application/jwt";

pub async fn introspect(
    State(state): State<Arc<AppState>>,
    ClientCert(certificate): ClientCert,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(handle(&state, &headers, body, certificate.as_ref()).await)
}

/// The claims of `token` if it is one of ours and active: known, signed by
/// a published key, not expired, not revoked (itself or its grant).
pub async fn active_claims(
    state: &AppState,
    token: &str,
) -> Result<Option<AccessTokenClaims>, OAuthError> {
    if token.len() > MAX_JWT_LEN {
        return Ok(None);
    }
    let now = state.now();
    let claims: AccessTokenClaims = if token.matches('.').count() == 2 {
        let registry = state.registry.load();
        let keys = state.keys.snapshot();
        let expected = Expected {
            typ: Some(ACCESS_TOKEN_TYP),
            issuers: &[registry.server.issuer.as_str()],
            audiences: &[],
            require_exp: true,
            leeway: 0,
            now,
        };
        match verify(token, &keys.verify, &expected) {
            Ok(map) => match serde_json::from_value(Value::Object(map)) {
                Ok(claims) => claims,
                Err(_) => return Ok(None),
            },
            Err(reason) => {
                tracing::debug!(%reason, "introspected JWT is not active");
                return Ok(None);
            }
        }
    } else {
        let hash = opaque::key(token);
        let lookups = |source| {
            state
                .metrics
                .opaque_lookups
                .get_or_create(&LookupLabels { source })
                .inc();
        };
        match state.opaque_tokens.get(&hash, now) {
            Some(claims) => {
                lookups("cache");
                claims
            }
            None => {
                // Unknown tokens are not remembered: anyone can make them up.
                let Some(record) = state.store.opaque_token(&hash).await? else {
                    return Ok(None);
                };
                if record.expires_at <= now {
                    return Ok(None);
                }
                let claims: AccessTokenClaims =
                    serde_json::from_str(&record.claims).map_err(|_| OAuthError::Internal)?;
                state
                    .opaque_tokens
                    .insert(hash, claims.clone(), record.expires_at, now);
                lookups("store");
                claims
            }
        }
    };
    if state
        .revocations
        .is_revoked(
            state.store.as_ref(),
            &claims.jti,
            claims.grant_id.as_deref(),
            &claims.client_id,
            claims.exp,
        )
        .await?
    {
        return Ok(None);
    }
    Ok(Some(claims))
}

#[derive(Serialize)]
struct SignedIntrospection<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    token_introspection: &'a Map<String, Value>,
}

fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|part| {
                part.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case(media_type))
            })
        })
}

fn with_content_type(body: String, content_type: &'static str) -> Response {
    let mut response = no_store(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
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
        &state.endpoints.introspection,
        certificate,
    )
    .await?;
    if !client.allow_introspection {
        return Err(OAuthError::AccessDenied(
            "the client may not introspect tokens".into(),
        ));
    }
    let token = form.require("token")?;
    let now = state.now();
    let claims = active_claims(state, token).await?;
    let response = match &claims {
        Some(claims) => introspection_response(claims, now),
        None => inactive(),
    };
    let alg = jose_algorithm(registry.server.algorithm);
    if accepts(headers, INTROSPECTION_JWT) {
        let signed = SignedIntrospection {
            iss: &registry.server.issuer,
            aud: &client.id,
            iat: now,
            token_introspection: &response,
        };
        let jwt = sign(state, alg, "token-introspection+jwt", &signed)?;
        return Ok(with_content_type(jwt, INTROSPECTION_JWT));
    }
    if accepts(headers, PHANTOM_JWT)
        && let Some(claims) = &claims
    {
        let jwt = sign(state, alg, ACCESS_TOKEN_TYP, claims)?;
        return Ok(with_content_type(jwt, PHANTOM_JWT));
    }
    Ok(no_store(Json(response)).into_response())
}
