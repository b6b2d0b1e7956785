//! Generated signing keys encrypted at rest: a stolen database or data
//! folder then holds no key that can sign. AES-256-GCM under a key derived
//! (HKDF-SHA256) from `spec.signing.keyEncryptionKeyRef`; the key id and
//! algorithm are authenticated with it, so a sealed key cannot be moved to
//! another row.

use std::fmt;

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey},
    hkdf::{HKDF_SHA256, Salt},
};

// The shortest secret accepted, as for client secrets.
use crate::registry::MIN_SECRET_LEN;

/// A stored key that starts with this is sealed; PKCS#8 DER starts with 0x30.
const SEALED: &[u8] = b"tmkw1.";
const SALT: &[u8] = b"tokenmesh signing-key wrap";
const INFO: &[u8] = b"AES-256-GCM v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrapError {
    #[error("the key-encryption secret is {0} bytes; at least {MIN_SECRET_LEN} are needed")]
    ShortSecret(usize),
    #[error("it is stored encrypted and spec.signing.keyEncryptionKeyRef is not set")]
    NoKey,
    #[error(
        "it does not decrypt with spec.signing.keyEncryptionKeyRef nor any of previousKeyEncryptionKeyRefs (another secret, or a damaged row)"
    )]
    Undecryptable,
    #[error("encryption failed")]
    Crypto,
}

pub struct KeyWrap {
    key: RandomizedNonceKey,
}

impl fmt::Debug for KeyWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyWrap(AES-256-GCM, key withheld)")
    }
}

fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(SEALED)
}

fn aad(kid: &str, alg: &str) -> Aad<Vec<u8>> {
    Aad::from([kid.as_bytes(), b"\0", alg.as_bytes()].concat())
}

impl KeyWrap {
    pub fn from_secret(secret: &[u8]) -> Result<Self, WrapError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WrapError::ShortSecret(secret.len()));
        }
        let mut bytes = [0u8; 32];
        Salt::new(HKDF_SHA256, SALT)
            .extract(secret)
            .expand(&[INFO], &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut bytes))
            .map_err(|_| WrapError::Crypto)?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes).map_err(|_| WrapError::Crypto)?;
        Ok(Self { key })
    }

    /// `tmkw1.` ‖ nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, kid: &str, alg: &str, pkcs8: &[u8]) -> Result<Vec<u8>, WrapError> {
        let mut body = pkcs8.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(aad(kid, alg), &mut body)
            .map_err(|_| WrapError::Crypto)?;
        Ok([SEALED, nonce.as_ref(), &body].concat())
    }

    /// The PKCS#8 DER of a row `seal` wrote for the same kid and algorithm.
    pub fn open(&self, kid: &str, alg: &str, stored: &[u8]) -> Result<Vec<u8>, WrapError> {
        let rest = stored
            .strip_prefix(SEALED)
            .ok_or(WrapError::Undecryptable)?;
        let (nonce, sealed) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(WrapError::Undecryptable)?;
        let mut body = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::from(nonce), aad(kid, alg), &mut body)
            .map_err(|_| WrapError::Undecryptable)?;
        Ok(plain.to_vec())
    }
}

/// The secret that seals, and earlier ones that still open (while keys
/// they sealed are sealed again under the current one).
#[derive(Debug)]
pub struct KeyEncryption {
    current: KeyWrap,
    previous: Vec<KeyWrap>,
}

/// A stored key, opened.
pub struct Opened {
    pub pkcs8: Vec<u8>,
    /// In clear, or sealed under a previous secret: to be sealed again.
    pub stale: bool,
}

impl KeyEncryption {
    pub fn new(current: KeyWrap, previous: Vec<KeyWrap>) -> Self {
        Self { current, previous }
    }

    pub fn seal(&self, kid: &str, alg: &str, pkcs8: &[u8]) -> Result<Vec<u8>, WrapError> {
        self.current.seal(kid, alg, pkcs8)
    }

    pub fn open(&self, kid: &str, alg: &str, stored: &[u8]) -> Result<Opened, WrapError> {
        if !is_sealed(stored) {
            return Ok(Opened {
                pkcs8: stored.to_vec(),
                stale: true,
            });
        }
        if let Ok(pkcs8) = self.current.open(kid, alg, stored) {
            return Ok(Opened {
                pkcs8,
                stale: false,
            });
        }
        self.previous
            .iter()
            .find_map(|wrap| wrap.open(kid, alg, stored).ok())
            .map(|pkcs8| Opened { pkcs8, stale: true })
            .ok_or(WrapError::Undecryptable)
    }
}

/// The PKCS#8 DER of a stored key: sealed rows opened, rows from before
/// encryption was set as they are.
pub fn unwrap_stored(
    encryption: Option<&KeyEncryption>,
    kid: &str,
    alg: &str,
    stored: &[u8],
) -> Result<Vec<u8>, WrapError> {
    match encryption {
        Some(encryption) => encryption.open(kid, alg, stored).map(|o| o.pkcs8),
        None if is_sealed(stored) => Err(WrapError::NoKey),
        None => Ok(stored.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const DER: &[u8] = b"\x30\x2e pretend pkcs8";

    #[test]
    fn a_sealed_key_opens_only_with_its_secret_kid_and_algorithm() {
        let wrap = KeyWrap::from_secret(SECRET).unwrap();
        let sealed = wrap.seal("k1", "ES256", DER).unwrap();
        assert!(is_sealed(&sealed));
        assert!(
            !sealed.windows(DER.len()).any(|w| w == DER),
            "no clear key material in the row"
        );
        assert_eq!(wrap.open("k1", "ES256", &sealed).unwrap(), DER);
        assert_ne!(
            sealed,
            wrap.seal("k1", "ES256", DER).unwrap(),
            "fresh nonce"
        );

        let other = KeyWrap::from_secret(b"another secret of thirty-two bytes!").unwrap();
        assert_eq!(
            other.open("k1", "ES256", &sealed),
            Err(WrapError::Undecryptable)
        );
        assert_eq!(
            wrap.open("k2", "ES256", &sealed),
            Err(WrapError::Undecryptable)
        );
        assert_eq!(
            wrap.open("k1", "EdDSA", &sealed),
            Err(WrapError::Undecryptable)
        );
        let mut flipped = sealed.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        assert_eq!(
            wrap.open("k1", "ES256", &flipped),
            Err(WrapError::Undecryptable)
        );
        assert_eq!(
            wrap.open("k1", "ES256", &sealed[..10]),
            Err(WrapError::Undecryptable)
        );
    }

    #[test]
    fn clear_rows_pass_and_sealed_rows_need_the_secret() {
        let encryption = KeyEncryption::new(KeyWrap::from_secret(SECRET).unwrap(), vec![]);
        let sealed = encryption.seal("k", "ES256", DER).unwrap();
        let open =
            |e: Option<&KeyEncryption>, stored: &[u8]| unwrap_stored(e, "k", "ES256", stored);
        assert_eq!(open(None, DER).unwrap(), DER);
        assert_eq!(open(Some(&encryption), DER).unwrap(), DER);
        assert_eq!(open(Some(&encryption), &sealed).unwrap(), DER);
        assert_eq!(open(None, &sealed), Err(WrapError::NoKey));
    }

    #[test]
    fn previous_secrets_open_and_mark_their_keys_stale() {
        let old = KeyEncryption::new(KeyWrap::from_secret(SECRET).unwrap(), vec![]);
        let by_old = old.seal("k", "ES256", DER).unwrap();
        let new_secret = b"the next secret, thirty-two bytes or more";
        let rotated = KeyEncryption::new(
            KeyWrap::from_secret(new_secret).unwrap(),
            vec![KeyWrap::from_secret(SECRET).unwrap()],
        );
        let opened = rotated.open("k", "ES256", &by_old).unwrap();
        assert_eq!((opened.pkcs8.as_slice(), opened.stale), (DER, true));
        let by_new = rotated.seal("k", "ES256", DER).unwrap();
        let opened = rotated.open("k", "ES256", &by_new).unwrap();
        assert_eq!((opened.pkcs8.as_slice(), opened.stale), (DER, false));
        assert!(
            rotated.open("k", "ES256", DER).unwrap().stale,
            "clear rows too"
        );
        assert_eq!(
            old.open("k", "ES256", &by_new).err(),
            Some(WrapError::Undecryptable)
        );
    }

    #[test]
    fn short_secrets_are_refused_and_the_key_is_not_printed() {
        assert_eq!(
            KeyWrap::from_secret(&SECRET[..31]).err(),
            Some(WrapError::ShortSecret(31))
        );
        let wrap = KeyWrap::from_secret(SECRET).unwrap();
        assert_eq!(format!("{wrap:?}"), "KeyWrap(AES-256-GCM, key withheld)");
    }
}
