//! The OAuth domain of tokenmesh, without a protocol: no HTTP, gRPC,
//! database or Kubernetes client in here.
//!
//! - [`document`] and [`registry`]: the applied resources (clients, scopes,
//!   exchange policies, identity providers, server settings), applied and
//!   validated;
//! - [`plan`]: which scopes and audiences a request gets, and the claims of
//!   a new token;
//! - [`policy`]: the ExchangePolicy engine (exchange, embed, share);
//! - [`certificate`]: the TLS client certificate of a request (RFC 8705);
//! - [`binding`]: proof of possession (what a token is bound to, who may
//!   present a bound one);
//! - [`client_auth`]: who the calling client is, from protocol-neutral
//!   [`client_auth::Credentials`];
//! - [`issue`] and [`exchange`]: issuance and RFC 8693 exchange decisions,
//!   minting through the [`ports`];
//! - [`password`]: argon2id password hashes of `static` users;
//! - [`signin`]: signing people in: authorization requests, codes with
//!   PKCE, refresh-token rotation, ID tokens;
//! - [`upstream`]: signing in at an upstream OpenID Provider (its ID
//!   token's rules, the local subject, claim mapping by CEL);
//! - [`error`]: the RFC 6749 error every part answers with.
//!
//! Side effects (signing, the opaque-token store, looking up presented
//! tokens, assertion replay, service-account verification) sit behind the
//! small traits of [`ports`]; the time is passed in as unix seconds, read by
//! the caller from its injected [`tokenmesh_tokens::clock::Clock`].

pub mod binding;
pub mod certificate;
pub mod client_auth;
pub mod document;
pub mod error;
pub mod exchange;
pub mod introspection;
pub mod issue;
pub mod key_wrap;
pub mod password;
pub mod plan;
pub mod policy;
pub mod ports;
pub mod registry;
pub mod signin;
#[cfg(test)]
mod testing;
pub mod upstream;
pub mod urlencoded;

pub use error::OAuthError;
