//! Server nonces for DPoP (RFC 9449 §8) without shared state: a nonce is
//! the time window it was made in and an HMAC of that window under a secret
//! derived from a signing key. Every replica holds the same signing keys
//! (from the store, a key directory or key files), so each accepts the
//! others' nonces. A nonce is good for its window and the next
//! (`PERIOD`..2×`PERIOD`); across a key rotation a replica that has not
//! seen the new key yet answers `use_dpop_nonce` once more, which a client
//! handles by retrying with the new nonce.

use aws_lc_rs::{digest, hmac};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tokenmesh_core::OAuthError;
use tokenmesh_tokens::signing::SigningKey;

use crate::state::AppState;

/// The response header carrying a nonce.
pub const NONCE_HEADER: &str = "dpop-nonce";
/// Seconds of one nonce window.
const PERIOD: u64 = 120;
/// Bytes of the HMAC kept in a nonce.
const MAC_LEN: usize = 16;

fn secret(key: &SigningKey) -> hmac::Key {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"tokenmesh dpop nonce\0");
    context.update(key.pkcs8());
    hmac::Key::new(hmac::HMAC_SHA256, context.finish().as_ref())
}

fn mac(key: &SigningKey, window: u64) -> String {
    let tag = hmac::sign(&secret(key), &window.to_be_bytes());
    URL_SAFE_NO_PAD.encode(tag.as_ref().get(..MAC_LEN).unwrap_or_default())
}

/// The nonce to hand out at `now`: made with the signing key of the lowest
/// `kid`, so that replicas with the same keys make the same nonce.
pub fn current(state: &AppState, now: u64) -> Result<String, OAuthError> {
    let keys = state.keys.snapshot();
    let key = keys
        .signers()
        .min_by(|a, b| a.kid().cmp(b.kid()))
        .ok_or(OAuthError::Internal)?;
    let window = now / PERIOD;
    Ok(format!("{window}.{}", mac(key, window)))
}

/// Whether `nonce` was made by a signing key of this server in the current
/// window or the one before.
pub fn is_current(state: &AppState, nonce: Option<&str>, now: u64) -> bool {
    let Some((window, tag)) = nonce.and_then(|n| n.split_once('.')) else {
        return false;
    };
    let Ok(window) = window.parse::<u64>() else {
        return false;
    };
    let this = now / PERIOD;
    if window != this && window.saturating_add(1) != this {
        return false;
    }
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    let keys = state.keys.snapshot();
    keys.signers().any(|key| {
        let full = hmac::sign(&secret(key), &window.to_be_bytes());
        full.as_ref()
            .get(..MAC_LEN)
            .is_some_and(|mine| subtle::ConstantTimeEq::ct_eq(mine, tag.as_slice()).into())
    })
}
