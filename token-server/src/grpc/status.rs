//! Why a gRPC call failed, mapped to a status in one place: OAuth errors by
//! their RFC 6749 code, and the few failures only the gRPC API has.

use tokenmesh_core::OAuthError;
use tonic::{Status, metadata::MetadataValue};

use crate::{change::ChangeError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field is malformed or too large.
    #[error("{0}")]
    Invalid(String),
    /// The token carries no embedded token for the audience.
    #[error("the token carries no token for this audience")]
    NotEmbedded,
    /// The caller is not the admin of ControlService.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A configuration change was refused or could not be stored.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A stream could not read the store.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// OAuth errors as gRPC status codes; the message helps and leaks nothing.
fn oauth_status(err: &OAuthError) -> Status {
    let message = format!("{err}: {}", err.description());
    match err {
        OAuthError::InvalidRequest(_)
        | OAuthError::InvalidScope(_)
        | OAuthError::InvalidTarget(_)
        | OAuthError::TooLarge
        | OAuthError::InvalidDpopProof(_)
        | OAuthError::UseDpopNonce(_)
        | OAuthError::UnsupportedResponseType(_)
        | OAuthError::RequestNotSupported(_) => Status::invalid_argument(message),
        OAuthError::InvalidClient(_) | OAuthError::InvalidToken(_) => {
            Status::unauthenticated(message)
        }
        OAuthError::LoginRequired(_)
        | OAuthError::ConsentRequired(_)
        | OAuthError::UnmetAuthenticationRequirements(_) => Status::failed_precondition(message),
        OAuthError::InvalidGrant(_) => Status::failed_precondition(message),
        OAuthError::UnauthorizedClient(_)
        | OAuthError::AccessDenied(_)
        | OAuthError::UnsupportedGrantType(_) => Status::permission_denied(message),
        OAuthError::Unavailable | OAuthError::KeysUnavailable => Status::unavailable(message),
        OAuthError::TooManyRequests(_) => Status::resource_exhausted(message),
        OAuthError::Internal => Status::internal(message),
    }
}

/// `use_dpop_nonce` carries the nonce to use in metadata `dpop-nonce`, as
/// the HTTP answer carries it in the `DPoP-Nonce` header.
fn with_nonce(mut status: Status, err: &OAuthError) -> Status {
    if let OAuthError::UseDpopNonce(nonce) = err
        && let Ok(value) = MetadataValue::try_from(nonce.as_str())
    {
        status
            .metadata_mut()
            .insert(crate::oauth::dpop::NONCE_HEADER, value);
    }
    status
}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Self {
        let message = failure.to_string();
        match &failure {
            Failure::OAuth(err) => with_nonce(oauth_status(err), err),
            Failure::Missing(_) | Failure::Invalid(_) => Status::invalid_argument(message),
            Failure::NotEmbedded => Status::not_found(message),
            Failure::Unauthenticated(_) => Status::unauthenticated(message),
            Failure::Change(err) => match err {
                ChangeError::Invalid(_) => Status::invalid_argument(message),
                ChangeError::IssuerChanged | ChangeError::Keys(_) => {
                    Status::failed_precondition(message)
                }
                ChangeError::Unavailable(_) => Status::unavailable(message),
            },
            Failure::Store(_) => Status::unavailable(message),
        }
    }
}
