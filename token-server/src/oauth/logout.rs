//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): ends the
//! browser's SSO session, then returns to a registered
//! `post_logout_redirect_uri` with `state`, or shows that the user is out.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokenmesh_core::signin::redirect;
use tokenmesh_tokens::{
    secret::SecretHash,
    verify::{Expected, verify},
};

use super::{
    form::Form,
    pages,
    session::{self, SESSION_COOKIE},
};
use crate::state::AppState;

const MAX_HINT: usize = 16 * 1024;

pub async fn logout_get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    answer(&state, &headers, Form::from_query(query.as_deref()), false).await
}

pub async fn logout_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&state, &headers, Form::read(&headers, body).await, true).await
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    form: Result<Form, tokenmesh_core::OAuthError>,
    post: bool,
) -> Response {
    match form {
        Ok(form) => logout(state, headers, &form, post).await,
        Err(_) => pages::error(StatusCode::BAD_REQUEST, "The logout request is not valid."),
    }
}

/// The client an `id_token_hint` was issued to: one of our ID tokens,
/// expired or not (§2: the hint may have expired).
fn hinted_client(state: &AppState, hint: &str) -> Option<String> {
    if hint.len() > MAX_HINT {
        return None;
    }
    let registry = state.registry.load();
    let keys = state.keys.snapshot();
    let expected = Expected {
        typ: Some("JWT"),
        issuers: &[registry.server.issuer.as_str()],
        audiences: &[],
        require_exp: false,
        leeway: 0,
        // Time 0: an expired hint still names its client.
        now: 0,
    };
    let claims = verify(hint, &keys.verify, &expected).ok()?;
    match claims.get("aud") {
        Some(Value::String(aud)) => Some(aud.clone()),
        _ => None,
    }
}

async fn logout(state: &AppState, headers: &HeaderMap, form: &Form, post: bool) -> Response {
    let hinted = match form.get("id_token_hint") {
        Some(hint) => match hinted_client(state, hint) {
            Some(client) => Some(client),
            None => {
                return pages::error(
                    StatusCode::BAD_REQUEST,
                    "The logout request carries an ID token this server did not issue.",
                );
            }
        },
        None => None,
    };
    let client_id = match (hinted, form.get("client_id")) {
        (Some(hinted), Some(named)) if hinted != named => {
            return pages::error(
                StatusCode::BAD_REQUEST,
                "client_id differs from the ID token's audience.",
            );
        }
        (Some(hinted), _) => Some(hinted),
        (None, named) => named.map(str::to_owned),
    };
    let registry = state.registry.load();
    // Checked before the session ends: a refused request changes nothing.
    let destination = match form.get("post_logout_redirect_uri") {
        None => None,
        Some(uri) => {
            let allowed = client_id
                .as_deref()
                .and_then(|id| registry.client(id))
                .is_some_and(|c| c.sign_in.allows_post_logout_redirect(uri));
            if !allowed {
                return pages::error(
                    StatusCode::BAD_REQUEST,
                    "post_logout_redirect_uri is not registered for this application.",
                );
            }
            Some(uri)
        }
    };
    if let Some(value) = session::cookie(headers, SESSION_COOKIE) {
        let hash = SecretHash::of(value.as_bytes());
        match state.store.session(&hash).await {
            Ok(Some(current)) => {
                if let Err(err) = state.store.end_session(&current.sid).await {
                    tracing::error!(error = %err, "the session could not be ended");
                    return pages::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "You could not be signed out right now. Try again.",
                    );
                }
                tracing::info!(sid = %current.sid, "signed out");
            }
            Ok(None) => {}
            Err(err) => {
                tracing::error!(error = %err, "the session could not be read");
                return pages::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "You could not be signed out right now. Try again.",
                );
            }
        }
    }
    let mut response = match destination {
        Some(uri) => {
            let state_param: Vec<(&str, &str)> = form
                .get("state")
                .map(|s| ("state", s))
                .into_iter()
                .collect();
            match redirect::with_params(uri, &state_param) {
                Some(location) => {
                    let mut response = if post {
                        StatusCode::SEE_OTHER
                    } else {
                        StatusCode::FOUND
                    }
                    .into_response();
                    if let Ok(value) = HeaderValue::from_str(&location) {
                        response.headers_mut().insert(header::LOCATION, value);
                    }
                    response
                }
                None => pages::signed_out(),
            }
        }
        None => pages::signed_out(),
    };
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(state, SESSION_COOKIE, "", 0),
    );
    response
}
