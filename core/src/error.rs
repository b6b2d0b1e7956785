//! OAuth errors (RFC 6749 §5.2 and the RFCs that add codes), without a
//! protocol: the token server maps them once to HTTP and once to gRPC.

use std::borrow::Cow;

type Text = Cow<'static, str>;

/// An error a client is told about. `Display` is the registered code; the
/// description helps the caller and never carries a token, a secret or an
/// internal detail.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    /// A DPoP proof is missing, malformed or does not fit the request
    /// (RFC 9449 §5).
    #[error("invalid_dpop_proof")]
    InvalidDpopProof(Text),
    /// The DPoP proof must carry this server nonce (RFC 9449 §8); it goes
    /// back in the `DPoP-Nonce` header.
    #[error("use_dpop_nonce")]
    UseDpopNonce(String),
    /// The client went past its rate (RFC 6585 429); `slow_down` is the
    /// registered OAuth code for it (RFC 8628). Carries the seconds to wait.
    #[error("slow_down")]
    TooManyRequests(u64),
    /// A dependency (the store) failed: the request may succeed later and
    /// must not get a wrong answer now.
    #[error("temporarily_unavailable")]
    Unavailable,
    /// The cluster's service-account keys cannot be fetched, or a
    /// TokenReview not made (the Kubernetes API server is down or
    /// misconfigured): the client is not to blame.
    #[error("temporarily_unavailable")]
    KeysUnavailable,
    #[error("server_error")]
    Internal,
    /// The authorization endpoint serves `response_type=code` only.
    #[error("unsupported_response_type")]
    UnsupportedResponseType(Text),
    /// `prompt=none` and no session that may be used (OIDC Core §3.1.2.6).
    #[error("login_required")]
    LoginRequired(Text),
    /// `prompt=none` and consent is still to be given.
    #[error("consent_required")]
    ConsentRequired(Text),
    /// Request objects (`request`, `request_uri`) are not supported.
    #[error("request_not_supported")]
    RequestNotSupported(Text),
    /// An essential `acr` cannot be met (OpenID Connect Core Unmet
    /// Authentication Requirements 1.0).
    #[error("unmet_authentication_requirements")]
    UnmetAuthenticationRequirements(Text),
    /// A Bearer token that is missing, expired or revoked (RFC 6750 §3.1).
    #[error("invalid_token")]
    InvalidToken(Text),
}

pub type Result<T, E = OAuthError> = std::result::Result<T, E>;

impl OAuthError {
    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidClient(d)
            | Self::InvalidGrant(d)
            | Self::UnauthorizedClient(d)
            | Self::UnsupportedGrantType(d)
            | Self::InvalidScope(d)
            | Self::InvalidTarget(d)
            | Self::AccessDenied(d)
            | Self::InvalidDpopProof(d)
            | Self::UnsupportedResponseType(d)
            | Self::LoginRequired(d)
            | Self::ConsentRequired(d)
            | Self::RequestNotSupported(d)
            | Self::UnmetAuthenticationRequirements(d)
            | Self::InvalidToken(d) => d,
            Self::UseDpopNonce(_) => "the DPoP proof must carry the nonce of the DPoP-Nonce header",
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
