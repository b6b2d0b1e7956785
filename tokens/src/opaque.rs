//! Opaque access-token values, and the key a store files each one under.
//!
//! A value is `tmo_` then, base64url, 8 bytes of issue order and 32 random
//! bytes. Stores keep only a digest of it. Filed under the digest alone,
//! every new row lands on a random page of the index, so a commit of many
//! tokens wrote one 4 KiB page per token to the embedded store's log, and
//! the checkpoints of that log were the p99 of opaque issuance. Filed under
//! the issue order first, new rows go to the end of the index: a commit of
//! 64 tokens dirties a few pages.
//!
//! The order is public (it says when the token was issued, as a JWT's `iat`
//! does); the 256 random bits are the secret, and the key keeps 192 bits of
//! their SHA-256, so a leaked store still gives no token.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::secret::{RANDOM_BYTES, SecretHash};

/// What every opaque access token starts with.
pub const PREFIX: &str = "tmo_";

const ORDER_BYTES: usize = 8;
/// Base64url length of the order and the random bytes (40 bytes).
const ENCODED_LEN: usize = (ORDER_BYTES + RANDOM_BYTES).div_ceil(3) * 4 - 2;

/// The last issue order handed out in this process.
static LAST_ORDER: AtomicU64 = AtomicU64::new(0);

/// The next issue order at `unix` seconds: microseconds since the epoch,
/// counted up one per token within a second, and never back.
fn next_order(unix: u64) -> u64 {
    let floor = unix.saturating_mul(1_000_000);
    let step = |last: u64| Some(floor.max(last.saturating_add(1)));
    // The closure always returns Some: the update cannot fail.
    match LAST_ORDER.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step) {
        Ok(last) | Err(last) => floor.max(last.saturating_add(1)),
    }
}

/// A new opaque token issued at `unix` seconds.
pub fn new_token(unix: u64) -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut bytes = [0u8; ORDER_BYTES + RANDOM_BYTES];
    bytes[..ORDER_BYTES].copy_from_slice(&next_order(unix).to_be_bytes());
    aws_lc_rs::rand::fill(&mut bytes[ORDER_BYTES..])?;
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The key of `token` in a store: its issue order then 24 bytes of its
/// SHA-256; for a value without an order (tokens of earlier versions, 32
/// random bytes, and anything else presented) the whole SHA-256, as those
/// were filed.
pub fn key(token: &str) -> SecretHash {
    let digest = SecretHash::of(token.as_bytes());
    let Some(order) = order_of(token) else {
        return digest;
    };
    let mut key = [0u8; 32];
    key[..ORDER_BYTES].copy_from_slice(&order);
    key[ORDER_BYTES..].copy_from_slice(&digest.as_bytes()[..32 - ORDER_BYTES]);
    SecretHash::from_bytes(&key).unwrap_or(digest)
}

/// The issue order bytes of a token of this format.
fn order_of(token: &str) -> Option<[u8; ORDER_BYTES]> {
    let encoded = token.strip_prefix(PREFIX)?;
    if encoded.len() != ENCODED_LEN {
        return None;
    }
    let mut bytes = [0u8; ORDER_BYTES + RANDOM_BYTES];
    match URL_SAFE_NO_PAD.decode_slice(encoded, &mut bytes) {
        Ok(len) if len == bytes.len() => bytes[..ORDER_BYTES].try_into().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::random_token;

    #[test]
    fn a_token_holds_its_order_and_256_random_bits() {
        let token = new_token(1_700_000_000).unwrap();
        let encoded = token.strip_prefix(PREFIX).unwrap();
        assert_eq!(encoded.len(), ENCODED_LEN);
        let bytes = URL_SAFE_NO_PAD.decode(encoded).unwrap();
        assert_eq!(bytes.len(), ORDER_BYTES + RANDOM_BYTES);
        let order = u64::from_be_bytes(bytes[..ORDER_BYTES].try_into().unwrap());
        assert!(order >= 1_700_000_000_000_000, "{order}");
        assert_ne!(
            new_token(1_700_000_000).unwrap()[PREFIX.len() + 11..],
            token[PREFIX.len() + 11..],
            "the random part differs"
        );
    }

    #[test]
    fn keys_rise_in_issue_order_and_only_the_order_is_readable() {
        let tokens: Vec<String> = (0..1000)
            .map(|i| new_token(1_700_000_000 + i / 100).unwrap())
            .collect();
        let keys: Vec<[u8; 32]> = tokens.iter().map(|t| *key(t).as_bytes()).collect();
        assert!(
            keys.windows(2).all(|pair| pair[0] < pair[1]),
            "each key sorts after the one before"
        );
        // Past the order: the token's digest, not its random bytes.
        let token = &tokens[0];
        let digest = SecretHash::of(token.as_bytes());
        assert_eq!(keys[0][ORDER_BYTES..], digest.as_bytes()[..24]);
        let random = &URL_SAFE_NO_PAD.decode(&token[PREFIX.len()..]).unwrap()[ORDER_BYTES..];
        assert!(
            !keys[0]
                .windows(8)
                .any(|w| random.windows(8).any(|r| r == w))
        );
    }

    #[test]
    fn the_order_never_goes_back() {
        let late = next_order(2_000_000_000);
        assert!(next_order(1_000_000_000) > late, "a clock set back");
        assert!(next_order(2_000_000_000) > late);
    }

    #[test]
    fn tokens_of_earlier_versions_and_anything_else_are_filed_by_their_digest() {
        let earlier = format!("{PREFIX}{}", random_token().unwrap());
        assert_eq!(key(&earlier), SecretHash::of(earlier.as_bytes()));
        let new = new_token(1_700_000_000).unwrap();
        for other in [
            "",
            "tmo_",
            "not an opaque token",
            &new[PREFIX.len()..],                   // no prefix
            &format!("{}!", &new[..new.len() - 1]), // not base64url
            &format!("{new}A"),                     // too long
        ] {
            assert_eq!(key(other), SecretHash::of(other.as_bytes()), "{other:?}");
        }
        assert_ne!(key(&new), SecretHash::of(new.as_bytes()));
        assert_eq!(key(&new), key(new.as_str()), "the same token, the same key");
    }
}
