//! Client authentication at the token, introspection and revocation
//! endpoints: `client_secret_basic`, `client_secret_post`,
//! `private_key_jwt` (RFC 7523) and `kubernetes_service_account`.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;
use tokenmesh_crds::AuthMethod;
use tokenmesh_tokens::verify::{Expected, VerifyError, verify};

use super::{error::OAuthError, form::Form};
use crate::{
    kubernetes_issuer::{unverified_claim, unverified_issuer},
    registry::{Client, ClientAuth, Registry},
    state::AppState,
};

pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MAX_ASSERTION_LEN: usize = 8 * 1024;
/// An assertion may not live longer than this, which bounds the replay records.
const MAX_ASSERTION_LIFETIME: u64 = 3600;
const LEEWAY: u64 = 30;

pub(super) fn refused(reason: &'static str) -> OAuthError {
    OAuthError::InvalidClient(reason.into())
}

/// Authenticates the calling client. `endpoint` is the URL being called,
/// accepted (with the issuer and the token endpoint) as an assertion `aud`.
pub async fn authenticate(
    state: &AppState,
    registry: &Registry,
    headers: &HeaderMap,
    form: &Form,
    endpoint: &str,
) -> Result<Arc<Client>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let assertion = form.get("client_assertion");
    let post_secret = form.get("client_secret");
    let presented = [basic.is_some(), assertion.is_some(), post_secret.is_some()];
    if presented.iter().filter(|p| **p).count() > 1 {
        return Err(OAuthError::InvalidRequest(
            "use exactly one client authentication method".into(),
        ));
    }
    if let Some((id, secret)) = basic {
        if form.get("client_id").is_some_and(|form_id| form_id != id) {
            return Err(OAuthError::InvalidRequest(
                "client_id differs from the Authorization header".into(),
            ));
        }
        return check_secret(
            registry,
            &id,
            secret.as_bytes(),
            AuthMethod::ClientSecretBasic,
        );
    }
    if let Some(secret) = post_secret {
        let id = form.require("client_id")?;
        return check_secret(
            registry,
            id,
            secret.as_bytes(),
            AuthMethod::ClientSecretPost,
        );
    }
    if let Some(assertion) = assertion {
        if form.get("client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
            return Err(OAuthError::InvalidRequest(
                format!("client_assertion_type must be {JWT_BEARER_ASSERTION}").into(),
            ));
        }
        return check_assertion(state, registry, form.get("client_id"), assertion, endpoint).await;
    }
    Err(refused("client authentication is required"))
}

/// `Authorization: Basic` with form-urlencoded id and secret (RFC 6749 §2.3.1).
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    headers
        .get(header::AUTHORIZATION)
        .map(|value| basic_credentials_of(value.as_bytes()))
        .transpose()
}

/// The client id and secret of an `Authorization: Basic` value.
pub fn basic_credentials_of(value: &[u8]) -> Result<(String, String), OAuthError> {
    let malformed = || refused("malformed Basic credentials");
    let value = std::str::from_utf8(value).map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(refused("use HTTP Basic to authenticate the client"));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| malformed())
    };
    Ok((unescape(id)?, unescape(secret)?))
}

/// Authenticates a client by its secret, presented with any secret method
/// (gRPC metadata has no form to tell basic from post).
pub fn check_any_secret(
    registry: &Registry,
    id: &str,
    secret: &[u8],
) -> Result<Arc<Client>, OAuthError> {
    let used = match registry.client(id).map(|c| c.auth.method()) {
        Some(AuthMethod::ClientSecretPost) => AuthMethod::ClientSecretPost,
        _ => AuthMethod::ClientSecretBasic,
    };
    check_secret(registry, id, secret, used)
}

fn check_secret(
    registry: &Registry,
    id: &str,
    secret: &[u8],
    used: AuthMethod,
) -> Result<Arc<Client>, OAuthError> {
    let Some(client) = registry.client(id) else {
        // Spend the same work on an unknown client as on a known one.
        let _ = tokenmesh_tokens::secret::SecretHash::of(secret);
        return Err(refused("unknown client or wrong secret"));
    };
    match &client.auth {
        ClientAuth::Secret { method, hashes } if *method == used => {
            // Each comparison is constant time; rotation may leave several.
            let mut ok = false;
            for hash in hashes {
                ok |= hash.matches(secret);
            }
            if ok {
                Ok(client.clone())
            } else {
                Err(refused("unknown client or wrong secret"))
            }
        }
        _ => Err(refused("the client authenticates with another method")),
    }
}

/// Authenticates a client by its RFC 7523 assertion: `private_key_jwt`,
/// or a service-account token of the configured cluster (its `iss` says
/// which). `claimed_id` is a `client_id` sent beside it, which must match.
pub async fn check_assertion(
    state: &AppState,
    registry: &Registry,
    claimed_id: Option<&str>,
    assertion: &str,
    endpoint: &str,
) -> Result<Arc<Client>, OAuthError> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(refused("the client assertion is too large"));
    }
    // Unverified: only to know whose keys verify it.
    let id = unverified_issuer(assertion)
        .ok_or_else(|| refused("the client assertion names no issuer"))?;
    let mut cluster_issuer = None;
    if let Some(kubernetes) = &registry.server.kubernetes {
        let verifier = state.service_accounts.verifier(kubernetes).map_err(|err| {
            tracing::error!(error = %err, "the service-account verifier cannot be set up");
            OAuthError::KeysUnavailable
        })?;
        let sub = unverified_claim(assertion, "sub");
        if verifier.is_for(&id, sub.as_deref()) {
            return super::service_account::authenticate(
                state, registry, &verifier, claimed_id, assertion,
            )
            .await;
        }
        cluster_issuer = Some(verifier.issuer());
    }
    if claimed_id.is_some_and(|claimed| claimed != id) {
        return Err(refused("client_id differs from the assertion issuer"));
    }
    let client = registry.client(&id).ok_or_else(|| match &cluster_issuer {
        // A service-account token of another cluster, or of this one under
        // an issuer spec.kubernetes does not name.
        Some(expected) => {
            tracing::debug!(
                received = %id,
                expected = %expected.as_deref().unwrap_or("(not discovered yet)"),
                "client assertion refused: its iss is neither a client id nor the cluster's service-account issuer"
            );
            refused("unknown client: the assertion's iss is neither a client id nor the cluster's service-account issuer")
        }
        None => refused("unknown client"),
    })?;
    let ClientAuth::PrivateKeyJwt { keys } = &client.auth else {
        return Err(refused("the client authenticates with another method"));
    };
    let now = state.now();
    let issuer = registry.server.issuer.as_str();
    let audiences = [issuer, state.endpoints.token.as_str(), endpoint];
    let expected = Expected {
        typ: None,
        issuers: &[id.as_str()],
        audiences: &audiences,
        require_exp: true,
        leeway: LEEWAY,
        now,
    };
    let claims = verify(assertion, keys, &expected).map_err(|err| {
        tracing::debug!(client_id = %id, reason = %err, "client assertion refused");
        match err {
            VerifyError::Expired => refused("the client assertion has expired"),
            VerifyError::Audience => {
                refused("the client assertion's aud does not name this server")
            }
            _ => refused("the client assertion does not verify"),
        }
    })?;
    if claims.get("sub").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(refused("the client assertion's sub must be the client id"));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| refused("exp is required"))?;
    if exp > now + MAX_ASSERTION_LIFETIME + LEEWAY {
        return Err(refused(
            "the client assertion lives too long (at most one hour)",
        ));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("jti is required"))?;
    if jti.is_empty() || jti.len() > 256 {
        return Err(refused("jti must be 1 to 256 characters"));
    }
    if !state.store.use_once(&id, jti, exp + LEEWAY).await? {
        tracing::debug!(client_id = %id, "client assertion replayed");
        return Err(refused("the client assertion was already used"));
    }
    Ok(client.clone())
}
