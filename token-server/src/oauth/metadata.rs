//! Authorization server metadata (RFC 8414, OpenID Connect Discovery) and the JWKS.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use tokenmesh_core::signin::{claims, grant::OIDC_SCOPES, id_token};
use tokenmesh_crds::GrantType;

use crate::state::AppState;

const AUTH_METHODS: [&str; 3] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];
/// At the token endpoint a public client (`none`) names itself too.
const TOKEN_AUTH_METHODS: [&str; 4] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
];
const MTLS_AUTH_METHODS: [&str; 2] = ["tls_client_auth", "self_signed_tls_client_auth"];
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
    // OpenID Connect is advertised once a client can sign people in: the
    // algorithms their ID tokens are signed with (RS256 first, which OIDC
    // requires), and the OIDC scopes beside the defined ones.
    let mut id_token_algs: Vec<&str> = registry
        .clients()
        .filter(|c| c.grant_types.contains(&GrantType::AuthorizationCode))
        .map(|c| c.sign_in.id_token_algorithm.as_str())
        .collect();
    id_token_algs.sort_by_key(|a| (*a != "RS256", *a));
    id_token_algs.dedup();
    let mut scopes: Vec<String> = if id_token_algs.is_empty() {
        Vec::new()
    } else {
        OIDC_SCOPES.iter().map(|s| (*s).to_owned()).collect()
    };
    scopes.extend(registry.scope_names());
    let mut metadata = json!({
        "issuer": server.issuer,
        "token_endpoint": state.endpoints.token,
        "jwks_uri": state.endpoints.jwks,
        "introspection_endpoint": state.endpoints.introspection,
        "revocation_endpoint": state.endpoints.revocation,
        "authorization_endpoint": state.endpoints.authorization,
        "userinfo_endpoint": state.endpoints.userinfo,
        "end_session_endpoint": state.endpoints.end_session,
        "grant_types_supported": ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": id_token::claims_supported(),
        "claims_parameter_supported": true,
        "acr_values_supported": claims::ACR_VALUES_SUPPORTED,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "scopes_supported": scopes,
        "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_signing_alg_values_supported": [server.algorithm.as_str()],
        "access_token_signing_alg_values_supported": algs,
        "subject_types_supported": ["public"],
        "dpop_signing_alg_values_supported": tokenmesh_tokens::dpop::ALGORITHMS,
    });
    if !id_token_algs.is_empty()
        && let Some(map) = metadata.as_object_mut()
    {
        map.insert(
            "id_token_signing_alg_values_supported".into(),
            id_token_algs.into(),
        );
    }
    let mut userinfo_algs: Vec<&str> = registry
        .clients()
        .filter_map(|c| c.sign_in.userinfo_algorithm)
        .map(|a| a.as_str())
        .collect();
    userinfo_algs.sort_unstable();
    userinfo_algs.dedup();
    if !userinfo_algs.is_empty()
        && let Some(map) = metadata.as_object_mut()
    {
        map.insert(
            "userinfo_signing_alg_values_supported".into(),
            userinfo_algs.into(),
        );
    }
    if state.client_certificates {
        add_mtls(&state, &mut metadata);
    }
    cacheable(Json(metadata))
}

/// RFC 8705: certificate-bound tokens, and the certificate methods. The
/// endpoints ask for certificates themselves, so the aliases are the same
/// URLs (§5: published so that clients know to present one there).
fn add_mtls(state: &AppState, metadata: &mut serde_json::Value) {
    let Some(map) = metadata.as_object_mut() else {
        return;
    };
    map.insert(
        "tls_client_certificate_bound_access_tokens".into(),
        true.into(),
    );
    map.insert(
        "mtls_endpoint_aliases".into(),
        json!({
            "token_endpoint": state.endpoints.token,
            "introspection_endpoint": state.endpoints.introspection,
            "revocation_endpoint": state.endpoints.revocation,
            "userinfo_endpoint": state.endpoints.userinfo,
        }),
    );
    for key in [
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ] {
        if let Some(serde_json::Value::Array(methods)) = map.get_mut(key) {
            methods.extend(MTLS_AUTH_METHODS.map(serde_json::Value::from));
        }
    }
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
