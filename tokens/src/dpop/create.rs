//! Signing DPoP proofs with a key of one's own (the sidecar's outbound calls,
//! tests, the benchmark). The private key never leaves the process.

use serde::Serialize;

use super::{DPOP_TYP, access_token_hash, target_uri, thumbprint};
use crate::{
    Algorithm,
    jwk::Jwk,
    secret::random_id,
    signing::{SigningError, SigningKey, algorithm_name},
};

/// A DPoP key pair with its public JWK and thumbprint computed once.
pub struct ProofKey {
    key: SigningKey,
    jwk: Jwk,
    jkt: String,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKey")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    jwk: &'a Jwk,
}

#[derive(Serialize)]
struct Claims<'a> {
    jti: String,
    htm: &'a str,
    htu: String,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl ProofKey {
    /// A fresh key for `alg` (ES256, EdDSA, RS256 or PS256).
    pub fn generate(alg: Algorithm) -> Result<Self, SigningError> {
        let key = SigningKey::generate(String::new(), alg)?;
        let public = key.public_jwk();
        // Only the key itself: no kid (the proof names none) and no use.
        let jwk = Jwk {
            kty: public.kty,
            crv: public.crv,
            x: public.x,
            y: public.y,
            n: public.n,
            e: public.e,
            ..Jwk::default()
        };
        let jkt = thumbprint(&jwk).ok_or(SigningError::Generate)?;
        Ok(Self { key, jwk, jkt })
    }

    /// The thumbprint a token bound to this key names in `cnf.jkt`.
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// A proof for `method` `url` at `now`, with `ath` when a token goes
    /// with it and the server's `nonce` when it asked for one.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, SigningError> {
        let header = Header {
            typ: DPOP_TYP,
            alg: algorithm_name(self.key.algorithm()),
            jwk: &self.jwk,
        };
        let claims = Claims {
            jti: random_id().map_err(|_| SigningError::Sign)?,
            htm: method,
            htu: target_uri(url).unwrap_or_else(|| url.to_owned()),
            iat: now,
            ath: access_token.map(access_token_hash),
            nonce,
        };
        self.key.sign_with_header(&header, &claims)
    }
}
