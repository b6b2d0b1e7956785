//! JWT signing with keys parsed once: `jsonwebtoken::encode` parses the
//! private key on every call (8–10 µs for EC, ~400 µs for RSA), so the issuer
//! keeps aws-lc-rs key pairs and signs the compact JWS itself.

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use serde::Serialize;

use crate::{claims::ACCESS_TOKEN_TYP, jwk::Jwk};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{0} is not a signing algorithm tokenmesh supports (ES256, RS256, PS256, EdDSA)")]
    Unsupported(String),
    #[error("the private key is not a PKCS#8 {0} key")]
    BadKey(&'static str),
    #[error("key generation failed")]
    Generate,
    #[error("signing failed")]
    Sign,
    #[error("claims do not serialise: {0}")]
    Claims(#[from] serde_json::Error),
}

enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key that signs JWTs, with its `kid` and algorithm.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pair: Pair,
    pkcs8: Vec<u8>,
    /// The encoded header of access tokens, built once.
    access_token_header: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: Algorithm,
    typ: &'a str,
    kid: &'a str,
}

impl SigningKey {
    /// A fresh key for `alg` (RSA keys are 2048 bits).
    pub fn generate(kid: String, alg: Algorithm) -> Result<Self, SigningError> {
        let pkcs8 = match alg {
            Algorithm::ES256 => EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|pair| pair.to_pkcs8v1())
                .map(|doc| doc.as_ref().to_vec()),
            Algorithm::EdDSA => Ed25519KeyPair::generate()
                .and_then(|pair| pair.to_pkcs8v1())
                .map(|doc| doc.as_ref().to_vec()),
            Algorithm::RS256 | Algorithm::PS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|pair| pair.as_der())
                .map(|der| der.as_ref().to_vec()),
            other => return Err(SigningError::Unsupported(format!("{other:?}"))),
        }
        .map_err(|_| SigningError::Generate)?;
        Self::from_pkcs8(kid, alg, pkcs8)
    }

    /// Parses a PKCS#8 DER private key for `alg`.
    pub fn from_pkcs8(kid: String, alg: Algorithm, pkcs8: Vec<u8>) -> Result<Self, SigningError> {
        let pair = match alg {
            Algorithm::ES256 => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                    .map(Pair::Ec)
                    .map_err(|_| SigningError::BadKey("P-256"))?
            }
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
                .map(Pair::Ed)
                .map_err(|_| SigningError::BadKey("Ed25519"))?,
            Algorithm::RS256 | Algorithm::PS256 => RsaKeyPair::from_pkcs8(&pkcs8)
                .map(Pair::Rsa)
                .map_err(|_| SigningError::BadKey("RSA"))?,
            other => return Err(SigningError::Unsupported(format!("{other:?}"))),
        };
        let access_token_header = encoded_header(alg, ACCESS_TOKEN_TYP, &kid)?;
        Ok(Self {
            kid,
            alg,
            pair,
            pkcs8,
            access_token_header,
        })
    }

    /// Which algorithm a PKCS#8 key suits: ES256 for P-256, EdDSA for
    /// Ed25519, RS256 for RSA (PS256 must be asked for).
    pub fn detect_algorithm(pkcs8: &[u8]) -> Option<Algorithm> {
        if EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).is_ok() {
            Some(Algorithm::ES256)
        } else if Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).is_ok() {
            Some(Algorithm::EdDSA)
        } else if RsaKeyPair::from_pkcs8(pkcs8).is_ok() {
            Some(Algorithm::RS256)
        } else {
            None
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The PKCS#8 DER private key, for the store. Never log it.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Signs `claims` as a compact JWS with header `typ`.
    pub fn sign_jwt<T: Serialize + ?Sized>(
        &self,
        typ: &str,
        claims: &T,
    ) -> Result<String, SigningError> {
        let payload = serde_json::to_vec(claims)?;
        let mut jwt = String::with_capacity(128 + payload.len() * 4 / 3 + 350);
        if typ == ACCESS_TOKEN_TYP {
            jwt.push_str(&self.access_token_header);
        } else {
            jwt.push_str(&encoded_header(self.alg, typ, &self.kid)?);
        }
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jwt);
        let signature = self.sign(jwt.as_bytes())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }

    /// Signs `claims` as a compact JWS under a header of the caller's (a
    /// DPoP proof carries its public key in `jwk` instead of a `kid`).
    pub fn sign_with_header<H: Serialize + ?Sized, T: Serialize + ?Sized>(
        &self,
        header: &H,
        claims: &T,
    ) -> Result<String, SigningError> {
        let mut jwt = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims)?, &mut jwt);
        let signature = self.sign(jwt.as_bytes())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ec(pair) => pair
                .sign(&rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| SigningError::Sign),
            Pair::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| SigningError::Sign)?;
                Ok(sig)
            }
        }
    }

    /// The public half as a JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Jwk {
        let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
        let mut jwk = Jwk {
            kid: Some(self.kid.clone()),
            alg: Some(algorithm_name(self.alg).to_owned()),
            key_use: Some("sig".to_owned()),
            ..Jwk::default()
        };
        match &self.pair {
            Pair::Ec(pair) => {
                // Uncompressed point: 0x04 || X || Y.
                let point = pair.public_key().as_ref();
                jwk.kty = "EC".to_owned();
                jwk.crv = Some("P-256".to_owned());
                jwk.x = point.get(1..33).and_then(b64);
                jwk.y = point.get(33..65).and_then(b64);
            }
            Pair::Ed(pair) => {
                jwk.kty = "OKP".to_owned();
                jwk.crv = Some("Ed25519".to_owned());
                jwk.x = b64(pair.public_key().as_ref());
            }
            Pair::Rsa(pair) => {
                let public = pair.public_key();
                jwk.kty = "RSA".to_owned();
                jwk.n = b64(public.modulus().big_endian_without_leading_zero());
                jwk.e = b64(public.exponent().big_endian_without_leading_zero());
            }
        }
        jwk
    }
}

fn encoded_header(alg: Algorithm, typ: &str, kid: &str) -> Result<String, SigningError> {
    let header = serde_json::to_vec(&Header { alg, typ, kid })?;
    Ok(URL_SAFE_NO_PAD.encode(header))
}

/// The JOSE name of an algorithm (`ES256`, `EdDSA`, ...).
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        #[allow(unreachable_patterns)]
        _ => "unknown",
    }
}
