//! What a user granted a client, as one-time codes and refresh tokens carry
//! it to the token endpoint.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::claims::ClaimsRequest;

/// The scopes of OpenID Connect (OIDC Core §5.4, §11): always open to a
/// client that signs people in; they release the user's claims.
pub const OIDC_SCOPES: [&str; 6] = [
    "openid",
    "profile",
    "email",
    "address",
    "phone",
    "offline_access",
];

/// Who signed in, to which client, granting what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authorization {
    /// The grant: every token issued under it carries this id, so one
    /// revocation ends them all.
    pub grant_id: String,
    pub client_id: String,
    /// The user (`sub`).
    pub subject: String,
    pub scopes: Vec<String>,
    /// Audiences the access tokens are for (`resource`/`audience`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The SSO session's public id (`sid`).
    #[serde(default)]
    pub sid: Option<String>,
    pub auth_time: u64,
    /// Authentication methods (RFC 8176).
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default)]
    pub acr: Option<String>,
    /// The user's claims from the IdentityProvider (`name`, `email`, ...).
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// The `claims` request parameter (OIDC Core §5.5), honoured by every
    /// token of the grant (refreshes too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_claims: Option<ClaimsRequest>,
}

impl Authorization {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// An OpenID Connect grant: it gets ID tokens.
    pub fn is_oidc(&self) -> bool {
        self.has_scope("openid")
    }
}

/// A code as stored: the authorization and what redeeming it must match.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRecord {
    pub authorization: Authorization,
    /// The `redirect_uri` the authorization request named; empty when it
    /// named none (the client's only one was used).
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub expires_at: u64,
}

/// What redeeming a code found (see [`crate::ports::AuthorizationCodes`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CodeRedemption {
    First(CodeRecord),
    Replayed(CodeRecord),
    Unknown,
}

/// A refresh token as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshRecord {
    pub authorization: Authorization,
    /// The absolute end, fixed when the grant began.
    pub expires_at: u64,
    /// The end if unused, moved by every rotation.
    pub idle_expires_at: u64,
    /// Used once already: another use is a reuse.
    pub rotated: bool,
}
