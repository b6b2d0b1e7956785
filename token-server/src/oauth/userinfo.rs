//! The UserInfo endpoint (OIDC Core §5.3): GET or POST with an access
//! token that carries `openid`; answers `sub` and the user's claims the
//! token carries (by scope, or asked for with the `claims` parameter), as
//! JSON or, when the client's `userInfo.algorithm` says so, as a signed JWT
//! (§5.3.2, with `iss` and `aud`).
//!
//! A bearer token comes as `Authorization: Bearer` (RFC 6750 §2.1). A
//! DPoP-bound one only as `Authorization: DPoP` with a proof for this URL
//! and the token's `ath` (RFC 9449 §7), under the token endpoint's nonce
//! policy; a certificate-bound one (RFC 8705 §3) only over a connection
//! with that certificate. Failures answer the challenges of RFC 6750 §3 and
//! RFC 9449 §7.1.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value};
use tokenmesh_core::signin::claims;
use tokenmesh_tokens::{
    authorization::AuthScheme as Scheme,
    claims::{AccessTokenClaims, Confirmation},
    listen::tls::PeerCertificate,
};

use super::{
    active_claims,
    dpop::{self, NONCE_HEADER, Request},
    error::OAuthError,
    no_store,
};
use crate::{keys::jose_algorithm, ports::sign, state::AppState};

const JWT: &str = "application/jwt";

/// A refusal: the status and the challenge's `error`, and a DPoP nonce.
struct Refusal {
    status: StatusCode,
    scheme: Option<Scheme>,
    error: Option<&'static str>,
    nonce: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, scheme: Option<Scheme>, error: Option<&'static str>) -> Self {
        Self {
            status,
            scheme,
            error,
            nonce: None,
        }
    }

    fn invalid_token(scheme: Scheme) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            Some(scheme),
            Some("invalid_token"),
        )
    }
}

pub async fn userinfo(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<PeerCertificate>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let peer = peer.map(|Extension(peer)| peer);
    match answer(&state, peer.as_ref(), &method, &headers).await {
        Ok(response) => response,
        Err(Ok(refusal)) => challenge(refusal),
        Err(Err(err)) => super::error::HttpError(err).into_response(),
    }
}

type Outcome = Result<Response, Result<Refusal, OAuthError>>;

async fn answer(
    state: &AppState,
    peer: Option<&PeerCertificate>,
    method: &Method,
    headers: &HeaderMap,
) -> Outcome {
    let Some((scheme, token)) = credentials(headers) else {
        return Err(Ok(Refusal::new(StatusCode::UNAUTHORIZED, None, None)));
    };
    let claims = match active_claims(state, token).await {
        Ok(Some(claims)) => claims,
        Ok(None) => return Err(Ok(Refusal::invalid_token(scheme))),
        Err(err) => return Err(Err(err)),
    };
    let require_nonce = state.registry.load().server.dpop_nonce;
    check_binding(
        state,
        &claims,
        scheme,
        token,
        peer,
        method,
        headers,
        require_nonce,
    )
    .await?;
    let (active, _) = claims.scopes_at(state.now());
    if !active.contains(&"openid") {
        return Err(Ok(Refusal::new(
            StatusCode::FORBIDDEN,
            Some(scheme),
            Some("insufficient_scope"),
        )));
    }
    let token_scopes: Vec<&str> = claims.scope.split(' ').collect();
    let mut body = Map::new();
    body.insert("sub".into(), Value::from(claims.sub.clone()));
    body.extend(claims::userinfo_claims(
        &token_scopes,
        &active,
        &claims.extra,
    ));
    let mut response = respond(state, &claims, body).map_err(Err)?;
    if scheme == Scheme::Dpop
        && let Some(nonce) = dpop::fresh_nonce(state, require_nonce)
        && let Ok(value) = HeaderValue::from_str(&nonce)
    {
        response.headers_mut().insert(NONCE_HEADER, value);
    }
    Ok(response)
}

/// The scheme and the token of the `Authorization` header (read as the
/// sidecar reads it).
fn credentials(headers: &HeaderMap) -> Option<(Scheme, &str)> {
    tokenmesh_tokens::authorization::credential_in(headers.get(header::AUTHORIZATION)?.as_bytes())
}

/// A bound token only from its holder: the DPoP key proved for this
/// request, the certificate on this connection.
#[allow(clippy::too_many_arguments)]
async fn check_binding(
    state: &AppState,
    claims: &AccessTokenClaims,
    scheme: Scheme,
    token: &str,
    peer: Option<&PeerCertificate>,
    method: &Method,
    headers: &HeaderMap,
    require_nonce: bool,
) -> Result<(), Result<Refusal, OAuthError>> {
    let cnf = claims.cnf.as_ref();
    if !Confirmation::holds_certificate(cnf, peer.map(|p| p.der.as_ref())) {
        tracing::debug!(client_id = %claims.client_id, "UserInfo refused: a certificate-bound token without its certificate");
        return Err(Ok(Refusal::invalid_token(scheme)));
    }
    let jkt = cnf.and_then(|cnf| cnf.jkt.as_deref());
    match (jkt, scheme) {
        (None, Scheme::Bearer) => return Ok(()),
        // RFC 9449 §7.2: a bound token presented as a bearer token.
        (Some(_), Scheme::Bearer) | (None, Scheme::Dpop) => {
            return Err(Ok(Refusal::invalid_token(Scheme::Dpop)));
        }
        (Some(_), Scheme::Dpop) => {}
    }
    let url = &state.endpoints.userinfo;
    let request = Request {
        method: method.as_str(),
        url,
        access_token: Some(token),
    };
    let proof_refused = |reason: &str| {
        tracing::debug!(client_id = %claims.client_id, reason, "UserInfo refused: DPoP proof");
        Ok(Refusal::new(
            StatusCode::UNAUTHORIZED,
            Some(Scheme::Dpop),
            Some("invalid_dpop_proof"),
        ))
    };
    match dpop::holder_at_resource(state, headers, request, require_nonce).await {
        Ok(holder) if holder.jkt.as_deref() == jkt => Ok(()),
        Ok(holder) if holder.jkt.is_none() => Err(proof_refused("no proof")),
        Ok(_) => Err(proof_refused("a proof of another key")),
        Err(OAuthError::UseDpopNonce(nonce)) => Err(Ok(Refusal {
            nonce: Some(nonce),
            ..Refusal::new(
                StatusCode::UNAUTHORIZED,
                Some(Scheme::Dpop),
                Some("use_dpop_nonce"),
            )
        })),
        Err(OAuthError::InvalidDpopProof(reason)) => Err(proof_refused(&reason)),
        Err(err) => Err(Err(err)),
    }
}

/// JSON, or a JWT signed as the client's `userInfo.algorithm` asks.
fn respond(
    state: &AppState,
    claims: &AccessTokenClaims,
    mut body: Map<String, Value>,
) -> Result<Response, OAuthError> {
    let registry = state.registry.load();
    let algorithm = registry
        .client(&claims.client_id)
        .and_then(|client| client.sign_in.userinfo_algorithm);
    let Some(algorithm) = algorithm else {
        return Ok(no_store(Json(Value::Object(body))));
    };
    body.insert("iss".into(), registry.server.issuer.clone().into());
    body.insert("aud".into(), claims.client_id.clone().into());
    body.insert("iat".into(), state.now().into());
    let jwt = sign(state, jose_algorithm(algorithm), "JWT", &body)?;
    let mut response = no_store(jwt);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JWT));
    Ok(response)
}

/// The challenges of RFC 6750 §3 and RFC 9449 §7.1: with no token, both
/// schemes; else the scheme the token needs, with the error.
fn challenge(refusal: Refusal) -> Response {
    let dpop_algs = format!("algs=\"{}\"", tokenmesh_tokens::dpop::ALGORITHMS.join(" "));
    let values: Vec<String> = match (refusal.scheme, refusal.error) {
        (Some(Scheme::Bearer), Some(error)) => vec![format!("Bearer error=\"{error}\"")],
        (Some(Scheme::Dpop), Some(error)) => {
            vec![format!("DPoP error=\"{error}\", {dpop_algs}")]
        }
        _ => vec!["Bearer".to_owned(), format!("DPoP {dpop_algs}")],
    };
    let mut response = no_store(refusal.status);
    for value in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .append(header::WWW_AUTHENTICATE, value);
        }
    }
    if let Some(nonce) = refusal.nonce
        && let Ok(value) = HeaderValue::from_str(&nonce)
    {
        response.headers_mut().insert(NONCE_HEADER, value);
    }
    response
}
