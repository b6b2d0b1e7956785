//! The core's OAuth errors as HTTP responses (RFC 6749 §5.2): the one place
//! they are mapped to a status code and headers.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
pub use tokenmesh_core::OAuthError;

use crate::store::StoreError;

/// An [`OAuthError`] on its way out of an HTTP endpoint.
#[derive(Debug)]
pub struct HttpError(pub OAuthError);

impl From<OAuthError> for HttpError {
    fn from(err: OAuthError) -> Self {
        Self(err)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

/// The HTTP status of each error.
pub fn status(err: &OAuthError) -> StatusCode {
    match err {
        OAuthError::InvalidClient(_) | OAuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
        OAuthError::AccessDenied(_) => StatusCode::FORBIDDEN,
        OAuthError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        OAuthError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        OAuthError::Unavailable | OAuthError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        OAuthError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Store failures become 503: the request may succeed later and must not
/// get a wrong answer now.
impl From<StoreError> for OAuthError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "store failure");
        Self::Unavailable
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let err = self.0;
        let body = Body {
            error: err.to_string(),
            error_description: Some(err.description()),
        };
        let mut response = (status(&err), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if matches!(err, OAuthError::InvalidClient(_)) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tokenmesh\""),
            );
        }
        match err {
            OAuthError::UseDpopNonce(nonce) => {
                if let Ok(value) = HeaderValue::from_str(&nonce) {
                    headers.insert(super::dpop::NONCE_HEADER, value);
                }
            }
            OAuthError::Unavailable | OAuthError::KeysUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            OAuthError::TooManyRequests(seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            _ => {}
        }
        response
    }
}
