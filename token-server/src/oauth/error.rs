//! OAuth errors (RFC 6749 §5.2 and the RFCs that add codes), mapped once to HTTP.

use std::borrow::Cow;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::store::StoreError;

type Text = Cow<'static, str>;

/// An error a client is told about. The description helps the caller and
/// never carries a token, a secret or an internal detail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    #[error("invalid_request")]
    InvalidRequest(Text),
    #[error("invalid_client")]
    InvalidClient(Text),
    #[error("invalid_grant")]
    InvalidGrant(Text),
    #[error("unauthorized_client")]
    UnauthorizedClient(Text),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType(Text),
    #[error("invalid_scope")]
    InvalidScope(Text),
    #[error("invalid_target")]
    InvalidTarget(Text),
    /// An authenticated client asked for something it may not do.
    #[error("access_denied")]
    AccessDenied(Text),
    #[error("invalid_request")]
    TooLarge,
    /// The client went past its rate (RFC 6585 429); `slow_down` is the
    /// registered OAuth code for it (RFC 8628). Carries the seconds to wait.
    #[error("slow_down")]
    TooManyRequests(u64),
    #[error("temporarily_unavailable")]
    Unavailable,
    /// The cluster's service-account keys cannot be fetched, or a
    /// TokenReview not made (the Kubernetes API server is down or
    /// misconfigured): the client is not to blame.
    #[error("temporarily_unavailable")]
    KeysUnavailable,
    #[error("server_error")]
    Internal,
}

#[derive(Serialize)]
struct Body<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

impl OAuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidClient(_) => StatusCode::UNAUTHORIZED,
            Self::AccessDenied(_) => StatusCode::FORBIDDEN,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable | Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidClient(d)
            | Self::InvalidGrant(d)
            | Self::UnauthorizedClient(d)
            | Self::UnsupportedGrantType(d)
            | Self::InvalidScope(d)
            | Self::InvalidTarget(d)
            | Self::AccessDenied(d) => d,
            Self::TooLarge => "the request body is too large",
            Self::TooManyRequests(_) => "too many requests from this client; retry later",
            Self::Unavailable => "the token server cannot reach its store; retry later",
            Self::KeysUnavailable => {
                "the token server cannot check service-account tokens with the Kubernetes API server; retry later"
            }
            Self::Internal => "internal error",
        }
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

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.to_string(),
            error_description: Some(self.description()),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if matches!(self, Self::InvalidClient(_)) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tokenmesh\""),
            );
        }
        match self {
            Self::Unavailable | Self::KeysUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::TooManyRequests(seconds) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            _ => {}
        }
        response
    }
}
