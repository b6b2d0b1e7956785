//! The gRPC API (`proto/tokenmesh/v1`): TokenService for sidecars,
//! ControlService for the operator, health and reflection.

mod control;
mod token_service;

use std::{future::Future, path::Path, sync::Arc};

use tokio_stream::StreamExt;

use tokenmesh_proto::v1::{
    FILE_DESCRIPTOR_SET, control_service_server::ControlServiceServer,
    token_service_server::TokenServiceServer,
};
use tonic::{
    Status,
    metadata::MetadataMap,
    transport::{Identity, Server, ServerTlsConfig},
};

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
    #[error("gRPC TLS: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the gRPC API on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    tls: Option<(&Path, &Path)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
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
        .map_err(|e| GrpcError::Tls(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| GrpcError::Tls(e.to_string()))?;
    let mut builder = Server::builder();
    if let Some((cert, key)) = tls {
        let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| GrpcError::Tls(e.to_string()))?;
    }
    listener.set_nonblocking(true)?;
    // Without TCP_NODELAY each response's last frame waits ~40 ms for the
    // peer's delayed ACK (Nagle): measured 727 against ~8,000 calls/s.
    let incoming =
        tonic::transport::server::TcpIncoming::from(tokio::net::TcpListener::from_std(listener)?)
            .with_nodelay(Some(true))
            .map(|accepted| accepted.map(tokenmesh_proto::one_write::OneWrite));
    builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TokenServiceServer::new(token_service::Tokens {
            state: state.clone(),
        }))
        .add_service(ControlServiceServer::new(control::Control { state }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
