//! The gRPC API (`proto/tokenmesh/v1`): TokenService for sidecars,
//! ControlService for the operator, health and reflection.

mod control;
pub mod status;
mod token_service;

use std::sync::Arc;

use tokenmesh_proto::v1::{
    FILE_DESCRIPTOR_SET, control_service_server::ControlServiceServer,
    token_service_server::TokenServiceServer,
};
use tonic::{metadata::MetadataMap, service::Routes};

use tokenmesh_core::{
    OAuthError,
    certificate::ClientCertificate,
    client_auth::{self, Audience, Credentials, SecretMethod, basic_credentials_of, refused},
};

use tokenmesh_tokens::listen::tls::PeerCertificate;

use crate::{registry::Client, state::AppState};

/// Metadata carrying a client assertion (RFC 7523).
pub const ASSERTION_METADATA: &str = "x-client-assertion";

/// Metadata naming the client of a TLS client certificate (RFC 8705 over
/// gRPC, which has no form for `client_id`).
pub const CLIENT_ID_METADATA: &str = "x-client-id";

/// The TLS client certificate of the request's connection (the listener
/// sets it as an HTTP extension, which tonic keeps).
pub fn peer_certificate<T>(request: &tonic::Request<T>) -> Option<ClientCertificate> {
    request
        .extensions()
        .get::<PeerCertificate>()
        .map(crate::oauth::client_auth::of_peer)
}

/// The credentials request metadata carries: an assertion, else Basic,
/// else the certificate with `x-client-id`.
fn credentials(
    metadata: &MetadataMap,
    certificate: Option<&ClientCertificate>,
) -> Result<Credentials, OAuthError> {
    if let Some(assertion) = metadata.get(ASSERTION_METADATA) {
        let assertion = assertion
            .to_str()
            .map_err(|_| refused("malformed client assertion"))?;
        return Ok(Credentials::Assertion {
            claimed_id: None,
            assertion: assertion.to_owned(),
        });
    }
    match metadata.get("authorization") {
        Some(value) => {
            let (id, secret) = basic_credentials_of(value.as_bytes())?;
            Ok(Credentials::Secret {
                id,
                secret,
                method: SecretMethod::Either,
            })
        }
        None => match (certificate, metadata.get(CLIENT_ID_METADATA)) {
            (Some(certificate), Some(id)) => Ok(Credentials::Certificate {
                id: id
                    .to_str()
                    .map_err(|_| refused("malformed x-client-id"))?
                    .to_owned(),
                certificate: certificate.clone(),
            }),
            _ => Err(refused(
                "authenticate the client: `authorization: Basic` or `x-client-assertion` metadata, or a TLS client certificate with `x-client-id`",
            )),
        },
    }
}

/// Authenticates the calling OAuth client from request metadata. An
/// assertion's `aud` may name the issuer (gRPC has no endpoint URL of its own).
pub async fn authenticate(
    state: &AppState,
    metadata: &MetadataMap,
    certificate: Option<&ClientCertificate>,
) -> Result<Arc<Client>, OAuthError> {
    let registry = state.registry.load();
    let credentials = credentials(metadata, certificate)?;
    let audience = Audience {
        issuer: &registry.server.issuer,
        token_endpoint: &state.endpoints.token,
        endpoint: &registry.server.issuer,
    };
    client_auth::authenticate(state, &registry, &credentials, audience, state.now()).await
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("gRPC listener: {0}")]
    Serve(#[from] crate::http::ServeError),
}

/// The gRPC services as one router: TokenService, ControlService, health
/// and reflection (v1 and v1alpha, which grpcurl 1.8 uses).
pub async fn router(state: Arc<AppState>) -> Result<axum::Router, GrpcError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TokenServiceServer<token_service::Tokens>>()
        .await;
    health_reporter
        .set_serving::<ControlServiceServer<control::Control>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GrpcError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| GrpcError::Reflection(e.to_string()))?;
    Ok(Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TokenServiceServer::new(token_service::Tokens {
            state: state.clone(),
        }))
        .add_service(ControlServiceServer::new(control::Control { state }))
        .prepare()
        .into_axum_router())
}
