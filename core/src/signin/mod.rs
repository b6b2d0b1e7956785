//! Signing people in (the authorization code flow, OpenID Connect and
//! refresh tokens), without a protocol: the token server parses requests,
//! keeps the session cookie and renders pages; these modules decide.
//!
//! - [`redirect`]: answers added to a redirect URI;
//! - [`pkce`]: RFC 7636 with `S256` only;
//! - [`claims`]: the `claims` request parameter and `acr`;
//! - [`authorize`]: the authorization request, validated, and where its
//!   errors go (RFC 6749 §4.1.2.1); whether to log in or ask consent;
//! - [`grant`]: what the user granted, as codes and refresh tokens carry it;
//! - [`code`]: one-time codes, issued and redeemed (a replay revokes);
//! - [`refresh`]: refresh tokens rotated on every use (a reuse revokes);
//! - [`id_token`]: ID token claims (OIDC Core §2) and claims by scope;
//! - [`tokens`]: the access token (the user as `sub`) and the ID token.
//!
//! A client's settings are its [`crate::registry::SignIn`]; storage sits
//! behind the traits of [`crate::ports`].

pub mod authorize;
pub mod claims;
pub mod code;
pub mod grant;
pub mod id_token;
pub mod pkce;
pub mod redirect;
pub mod refresh;
#[cfg(test)]
mod testing;
pub mod tokens;

/// Longest value accepted for any authorization-request parameter.
pub const MAX_PARAM: usize = 2048;
