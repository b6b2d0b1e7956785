//! The OAuth HTTP endpoints.

mod authorize;
pub mod client_auth;
pub mod dpop;
pub mod error;
mod federation;
pub mod form;
mod introspect;
mod logout;
mod metadata;
pub mod pages;
pub(crate) mod revoke;
pub mod session;
mod sign_in_grants;
mod token;
mod userinfo;

pub use authorize::{authorize_get, authorize_post};
pub use federation::callback as upstream_callback;
pub use introspect::{active_claims, introspect};
pub use logout::{logout_get, logout_post};
pub use metadata::{jwks, metadata};
pub use revoke::revoke;
pub use token::token;
pub use userinfo::userinfo;

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
