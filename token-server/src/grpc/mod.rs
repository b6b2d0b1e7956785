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
    client_auth::{self, Audience, Credentials, SecretMethod, basic_credentials_of, refused},
};

use crate::{registry::Client, state::AppState};

/// Metadata carrying a client assertion (RFC 7523).
pub const ASSERTION_METADATA: &str = "x-client-assertion";

/// The credentials request metadata carries: an assertion, else Basic.
fn credentials(metadata: &MetadataMap) -> Result<Credentials, OAuthError> {
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
        None => Err(refused(
            "authenticate the client: `authorization: Basic` or `x-client-assertion` metadata",
        )),
    }
}

/// Authenticates the calling OAuth client from request metadata. An
/// assertion's `aud` may name the issuer (gRPC has no endpoint URL of its own).
pub async fn authenticate(
    state: &AppState,
    metadata: &MetadataMap,
) -> Result<Arc<Client>, OAuthError> {
    let registry = state.registry.load();
    let credentials = credentials(metadata)?;
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
