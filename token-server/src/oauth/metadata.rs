//! Authorization server metadata (RFC 8414, OpenID Connect Discovery) and the JWKS.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::state::AppState;

const AUTH_METHODS: [&str; 3] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];
const ASSERTION_ALGS: [&str; 8] = [
    "ES256", "ES384", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384",
];

fn cacheable(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

pub async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    let registry = state.registry.load();
    let server = &registry.server;
    let mut algs: Vec<&str> = registry
        .algorithms_in_use()
        .iter()
        .map(|a| a.as_str())
        .collect();
    algs.sort_by_key(|a| *a != server.algorithm.as_str());
    cacheable(Json(json!({
        "issuer": server.issuer,
        "token_endpoint": state.endpoints.token,
        "jwks_uri": state.endpoints.jwks,
        "introspection_endpoint": state.endpoints.introspection,
        "revocation_endpoint": state.endpoints.revocation,
        "grant_types_supported": ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"],
        "response_types_supported": [],
        "scopes_supported": registry.scope_names(),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_signing_alg_values_supported": [server.algorithm.as_str()],
        "access_token_signing_alg_values_supported": algs,
        "subject_types_supported": ["public"],
        "dpop_signing_alg_values_supported": tokenmesh_tokens::dpop::ALGORITHMS,
    })))
}

pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let body = state.keys.snapshot().jwks_json.to_string();
    let mut response = cacheable(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    response
}
