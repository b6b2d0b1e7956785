//! Client authentication at the HTTP endpoints: the credentials an HTTP
//! request carries (`Authorization: Basic`, `client_secret`,
//! `client_assertion`, or the TLS client certificate of its connection),
//! handed to the core's one authentication.

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};
pub use tokenmesh_core::client_auth::JWT_BEARER_ASSERTION;
use tokenmesh_core::{
    certificate::ClientCertificate,
    client_auth::{self, Audience, Credentials, SecretMethod, basic_credentials_of, refused},
};
use tokenmesh_tokens::listen::tls::PeerCertificate;

use super::{error::OAuthError, form::Form};
use crate::{
    registry::{Client, Registry},
    state::AppState,
};

/// The TLS client certificate of the request's connection (the listener
/// sets it as a request extension), as the core sees it.
pub struct ClientCert(pub Option<ClientCertificate>);

impl<S: Send + Sync> FromRequestParts<S> for ClientCert {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<PeerCertificate>().map(of_peer)))
    }
}

/// The core's view of a connection's certificate (HTTP and gRPC).
pub fn of_peer(peer: &PeerCertificate) -> ClientCertificate {
    ClientCertificate::new(peer.der.to_vec(), peer.chain_verified)
}

/// Authenticates the calling client. `endpoint` is the URL being called,
/// accepted (with the issuer and the token endpoint) as an assertion `aud`.
pub async fn authenticate(
    state: &AppState,
    registry: &Registry,
    headers: &HeaderMap,
    form: &Form,
    endpoint: &str,
    certificate: Option<&ClientCertificate>,
) -> Result<Arc<Client>, OAuthError> {
    let credentials = credentials(headers, form, certificate)?;
    let audience = Audience {
        issuer: &registry.server.issuer,
        token_endpoint: &state.endpoints.token,
        endpoint,
    };
    client_auth::authenticate(state, registry, &credentials, audience, state.now()).await
}

/// The one set of credentials the request carries (RFC 6749 §2.3: a client
/// uses one method per request). A certificate authenticates only when
/// nothing else does (RFC 8705 §2: `client_id` and the certificate); beside
/// a secret or an assertion it may still bind the tokens.
pub fn credentials(
    headers: &HeaderMap,
    form: &Form,
    certificate: Option<&ClientCertificate>,
) -> Result<Credentials, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .map(|value| basic_credentials_of(value.as_bytes()))
        .transpose()?;
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
        return Ok(Credentials::Secret {
            id,
            secret,
            method: SecretMethod::Basic,
        });
    }
    if let Some(secret) = post_secret {
        return Ok(Credentials::Secret {
            id: form.require("client_id")?.to_owned(),
            secret: secret.to_owned(),
            method: SecretMethod::Post,
        });
    }
    if let Some(assertion) = assertion {
        if form.get("client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
            return Err(OAuthError::InvalidRequest(
                format!("client_assertion_type must be {JWT_BEARER_ASSERTION}").into(),
            ));
        }
        return Ok(Credentials::Assertion {
            claimed_id: form.get("client_id").map(str::to_owned),
            assertion: assertion.to_owned(),
        });
    }
    if let Some(certificate) = certificate {
        return Ok(Credentials::Certificate {
            id: form.require("client_id")?.to_owned(),
            certificate: certificate.clone(),
        });
    }
    match form.get("client_id") {
        Some(id) => Ok(Credentials::Public { id: id.to_owned() }),
        None => Err(refused("client authentication is required")),
    }
}
