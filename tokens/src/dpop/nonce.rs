//! Server nonces for DPoP (RFC 9449 §8, §9) without shared state: a nonce
//! is the time window it was made in and an HMAC of that window under a
//! secret, so whoever holds the secret checks it without remembering it. A
//! nonce is good for its window and the next (`PERIOD`..2×`PERIOD`). The
//! token server derives its secrets from its signing keys (replicas agree);
//! the sidecar makes one at start.

use aws_lc_rs::hmac;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// Seconds of one nonce window.
pub const PERIOD: u64 = 120;
/// Bytes of the HMAC kept in a nonce.
const MAC_LEN: usize = 16;

/// The response header (and gRPC metadata) carrying a nonce.
pub const NONCE_HEADER: &str = "dpop-nonce";

/// A nonce secret.
pub struct NonceKey(hmac::Key);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// A secret of 32 bytes derived elsewhere (never shown).
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A random secret, for a single process.
    pub fn generate() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).map(Self)
    }

    fn tag(&self, window: u64) -> hmac::Tag {
        hmac::sign(&self.0, &window.to_be_bytes())
    }

    /// The nonce to hand out at `now` (unix seconds).
    pub fn current(&self, now: u64) -> String {
        let window = now / PERIOD;
        let tag = self.tag(window);
        let mac = tag.as_ref().get(..MAC_LEN).unwrap_or_default();
        format!("{window}.{}", URL_SAFE_NO_PAD.encode(mac))
    }
}

/// Whether `nonce` was made at `now` (its window or the one before) under
/// one of `keys`.
pub fn is_current<'a>(
    keys: impl IntoIterator<Item = &'a NonceKey>,
    nonce: Option<&str>,
    now: u64,
) -> bool {
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
    keys.into_iter().any(|key| {
        key.tag(window)
            .as_ref()
            .get(..MAC_LEN)
            .is_some_and(|mine| subtle::ConstantTimeEq::ct_eq(mine, tag.as_slice()).into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_for_its_window_and_the_next_under_its_key_only() {
        let key = NonceKey::generate().unwrap();
        let now = 1_700_000_000;
        let nonce = key.current(now);
        assert!(is_current([&key], Some(&nonce), now));
        assert!(is_current([&key], Some(&nonce), now + PERIOD));
        assert!(!is_current([&key], Some(&nonce), now + 2 * PERIOD));
        let other = NonceKey::generate().unwrap();
        assert!(!is_current([&other], Some(&nonce), now));
        assert!(is_current([&other, &key], Some(&nonce), now));
        let forged = format!("{}.AAAAAAAAAAAAAAAAAAAAAA", now / PERIOD);
        assert!(!is_current([&key], Some(&forged), now));
        assert!(!is_current([&key], None, now));
        assert!(!is_current([&key], Some("nonsense"), now));
    }
}
