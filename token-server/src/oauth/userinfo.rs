//! The UserInfo endpoint (OIDC Core §5.3): GET or POST with a Bearer
//! access token (RFC 6750 §2.1) that carries `openid`; answers `sub` and
//! the claims the token's scopes release, as JSON.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value};
use tokenmesh_core::signin::id_token;

use super::{active_claims, no_store};
use crate::state::AppState;

pub async fn userinfo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim())
    else {
        return challenge(StatusCode::UNAUTHORIZED, None);
    };
    let claims = match active_claims(&state, token).await {
        Ok(Some(claims)) => claims,
        Ok(None) => return challenge(StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Err(err) => return super::error::HttpError(err).into_response(),
    };
    // A bound token needs its proof, which this endpoint does not check yet.
    if claims.cnf.is_some() {
        return challenge(StatusCode::UNAUTHORIZED, Some("invalid_token"));
    }
    let (active, _) = claims.scopes_at(state.now());
    if !active.contains(&"openid") {
        return challenge(StatusCode::FORBIDDEN, Some("insufficient_scope"));
    }
    let mut body = Map::new();
    body.insert("sub".into(), Value::from(claims.sub.clone()));
    body.extend(id_token::released(|s| active.contains(&s), &claims.extra));
    no_store(Json(Value::Object(body)))
}

/// RFC 6750 §3: the Bearer challenge, with the error when a token was sent.
fn challenge(status: StatusCode, error: Option<&str>) -> Response {
    let value = match error {
        Some(error) => format!("Bearer error=\"{error}\""),
        None => "Bearer".to_owned(),
    };
    let mut response = no_store(status);
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
