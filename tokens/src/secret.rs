//! Secrets and opaque tokens: generated with ≥ 256 bits of entropy, kept only
//! as SHA-256 digests, compared in constant time.
//!
//! A fast digest suits secrets of this entropy; a password KDF would cap the
//! token endpoint at a few hundred requests per second for no gain.

use aws_lc_rs::digest;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use subtle::ConstantTimeEq;

/// Random bytes in a generated secret or opaque token (256 bits).
pub const RANDOM_BYTES: usize = 32;
const HASH_PREFIX: &str = "sha256:";

/// The SHA-256 digest of a secret or token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash([u8; 32]);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a secret hash is written `sha256:` followed by 43 base64url characters")]
pub struct BadSecretHash;

impl SecretHash {
    pub fn of(secret: &[u8]) -> Self {
        let digest = digest::digest(&digest::SHA256, secret);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// Whether `presented` hashes to this digest, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        Self::of(presented).0.ct_eq(&self.0).into()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// `sha256:<base64url>`, the form the operator pushes.
    pub fn encode(&self) -> String {
        format!("{HASH_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }

    pub fn parse(text: &str) -> Result<Self, BadSecretHash> {
        let encoded = text.strip_prefix(HASH_PREFIX).ok_or(BadSecretHash)?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| BadSecretHash)?;
        Self::from_bytes(&bytes).ok_or(BadSecretHash)
    }
}

/// A new random value of [`RANDOM_BYTES`] bytes, base64url without padding.
pub fn random_token() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut bytes = [0u8; RANDOM_BYTES];
    aws_lc_rs::rand::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random identifier (128 bits), for `jti` and grant ids.
pub fn random_id() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_only_its_secret() {
        let hash = SecretHash::of(b"correct horse");
        assert!(hash.matches(b"correct horse"));
        assert!(!hash.matches(b"correct horsf"));
        assert!(!hash.matches(b""));
    }

    #[test]
    fn encoded_hash_round_trips_and_rejects_garbage() {
        let hash = SecretHash::of(b"s");
        assert_eq!(SecretHash::parse(&hash.encode()), Ok(hash));
        assert_eq!(SecretHash::parse("sha256:abc"), Err(BadSecretHash));
        assert_eq!(SecretHash::parse("md5:abc"), Err(BadSecretHash));
    }

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }

    #[test]
    fn debug_never_shows_the_digest() {
        assert_eq!(format!("{:?}", SecretHash::of(b"x")), "SecretHash(..)");
    }
}
