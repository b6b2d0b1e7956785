//! The gRPC API (`proto/tokenmesh/v1`): TokenService for sidecars,
//! ControlService for the operator, health and reflection.

mod control;
mod token_service;

use std::sync::Arc;

use tokenmesh_proto::v1::{
    FILE_DESCRIPTOR_SET, control_service_server::ControlServiceServer,
    token_service_server::TokenServiceServer,
};
use tonic::{Status, metadata::MetadataMap, service::Routes};

use crate::{
    oauth::{
        client_auth::{basic_credentials_of, check_any_secret, check_assertion},
        error::OAuthError,
    },
    registry::Client,
    state::AppState,
};

/// OAuth errors as gRPC status codes; the message helps and leaks nothing.
impl From<OAuthError> for Status {
    fn from(err: OAuthError) -> Self {
        let message = format!("{err}: {}", err.description());
        match err {
            OAuthError::InvalidRequest(_)
            | OAuthError::InvalidScope(_)
            | OAuthError::InvalidTarget(_)
            | OAuthError::TooLarge => Status::invalid_argument(message),
            OAuthError::InvalidClient(_) => Status::unauthenticated(message),
            OAuthError::InvalidGrant(_) => Status::failed_precondition(message),
            OAuthError::UnauthorizedClient(_)
            | OAuthError::AccessDenied(_)
            | OAuthError::UnsupportedGrantType(_) => Status::permission_denied(message),
            OAuthError::Unavailable | OAuthError::KeysUnavailable => Status::unavailable(message),
            OAuthError::TooManyRequests(_) => Status::resource_exhausted(message),
            OAuthError::Internal => Status::internal(message),
        }
    }
}

/// Metadata carrying a client assertion (RFC 7523).
pub const ASSERTION_METADATA: &str = "x-client-assertion";

/// Authenticates the calling OAuth client from request metadata.
pub async fn authenticate(state: &AppState, metadata: &MetadataMap) -> Result<Arc<Client>, Status> {
    let registry = state.registry.load();
    if let Some(assertion) = metadata.get(ASSERTION_METADATA) {
        let assertion = assertion
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed client assertion"))?;
        let endpoint = registry.server.issuer.clone();
        return Ok(check_assertion(state, &registry, None, assertion, &endpoint).await?);
    }
    match metadata.get("authorization") {
        Some(value) => {
            let (id, secret) = basic_credentials_of(value.as_bytes())?;
            Ok(check_any_secret(&registry, &id, secret.as_bytes())?)
        }
        None => Err(Status::unauthenticated(
            "authenticate the client: `authorization: Basic` or `x-client-assertion` metadata",
        )),
    }
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
