//! The OAuth HTTP endpoints.

pub mod client_auth;
pub mod dpop;
pub mod error;
pub mod form;
mod introspect;
mod metadata;
mod revoke;
mod token;

pub use introspect::{active_claims, introspect};
pub use metadata::{jwks, metadata};
pub use revoke::revoke;
pub use token::token;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

/// Responses carrying tokens must not be cached (RFC 6749 §5.1).
fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Runs a fallible handler body and renders its OAuth error.
fn respond(result: Result<Response, error::OAuthError>) -> Response {
    result.unwrap_or_else(|err| error::HttpError(err).into_response())
}
