//! Server nonces for DPoP (RFC 9449 §8) without shared state
//! ([`tokenmesh_tokens::dpop::nonce`]), under a secret derived from each
//! signing key. Every replica holds the same signing keys (from the store, a
//! key directory or key files), so each accepts the others' nonces; across a
//! key rotation a replica that has not seen the new key yet answers
//! `use_dpop_nonce` once more, which a client handles by retrying with the
//! new nonce.

use aws_lc_rs::digest;
use tokenmesh_core::OAuthError;
use tokenmesh_tokens::{
    dpop::nonce::{self, NonceKey},
    signing::SigningKey,
};

use crate::state::AppState;

pub use nonce::NONCE_HEADER;

fn secret(key: &SigningKey) -> NonceKey {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"tokenmesh dpop nonce\0");
    context.update(key.pkcs8());
    NonceKey::new(context.finish().as_ref())
}

/// The nonce to hand out at `now`: made with the signing key of the lowest
/// `kid`, so that replicas with the same keys make the same nonce.
pub fn current(state: &AppState, now: u64) -> Result<String, OAuthError> {
    let keys = state.keys.snapshot();
    let key = keys
        .signers()
        .min_by(|a, b| a.kid().cmp(b.kid()))
        .ok_or(OAuthError::Internal)?;
    Ok(secret(key).current(now))
}

/// Whether `nonce` was made by a signing key of this server in the current
/// window or the one before.
pub fn is_current(state: &AppState, nonce: Option<&str>, now: u64) -> bool {
    let keys = state.keys.snapshot();
    let secrets: Vec<NonceKey> = keys.signers().map(|key| secret(key)).collect();
    nonce::is_current(&secrets, nonce, now)
}
