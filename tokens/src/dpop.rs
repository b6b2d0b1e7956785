//! DPoP proofs (RFC 9449): verifying the proof a client sends with a
//! request, the JWK thumbprint (RFC 7638) a bound token's `cnf.jkt` names,
//! and signing proofs (module [`create`]).
//!
//! The verifier checks what the proof itself can say: `typ: dpop+jwt`, an
//! asymmetric algorithm (never `none` or HMAC), a public key and only a
//! public key in `jwk`, the signature by that key, `htm`, `htu` (without
//! query and fragment, §4.3), `iat` within a window, a bounded `jti`, `ath`
//! when a token comes with it. Replay of `jti` and server nonces are the
//! caller's: they need state this function does not hold.

pub mod create;
pub mod nonce;
pub mod replay;
mod thumbprint;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

pub use thumbprint::thumbprint;

use crate::{
    jwk::Jwk,
    verify::{self, Expected, KeySet, VerifyError, VerifyingKey},
};

/// The `typ` header of a proof (RFC 9449 §4.2).
pub const DPOP_TYP: &str = "dpop+jwt";
/// The algorithms a proof may use, as the metadata lists them.
pub const ALGORITHMS: [&str; 4] = ["ES256", "EdDSA", "RS256", "PS256"];
/// Longest proof accepted: an RSA 4096 key in `jwk` and a long `htu` fit.
pub const MAX_PROOF_LEN: usize = 8 * 1024;
/// Longest `jti` accepted (RFC 9449 suggests 96 bits of randomness).
pub const MAX_JTI_LEN: usize = 128;
/// Longest `nonce` accepted.
pub const MAX_NONCE_LEN: usize = 256;
/// JWK members that only a private or symmetric key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a proof is refused. The text is safe to send back to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("the DPoP proof is too large")]
    TooLarge,
    #[error("the DPoP proof is not a well-formed JWT")]
    Malformed,
    #[error("the DPoP proof's typ is not dpop+jwt")]
    Type,
    #[error("the DPoP proof's alg must be one of ES256, EdDSA, RS256, PS256")]
    Algorithm,
    #[error("the DPoP proof's jwk is not a usable public key")]
    Key,
    #[error("the DPoP proof's jwk carries private key material")]
    PrivateKey,
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    #[error("the DPoP proof's htm is not this request's method")]
    Method,
    #[error("the DPoP proof's htu is not this request's URL")]
    Url,
    #[error("the DPoP proof's iat is missing or outside the accepted window")]
    IssuedAt,
    #[error("the DPoP proof's jti is missing or too long")]
    Jti,
    #[error("the DPoP proof's ath does not match the access token")]
    AccessTokenHash,
    #[error("the DPoP proof's nonce is malformed")]
    Nonce,
}

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method, as sent (`POST`).
    pub method: &'a str,
    /// The URL the client called; query and fragment are ignored.
    pub url: &'a str,
    /// The access token presented with the proof, whose hash `ath` must be.
    pub access_token: Option<&'a str>,
}

/// How old (and how far in the future) a proof's `iat` may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Seconds a proof is accepted after its `iat`.
    pub max_age: u64,
    /// Seconds a proof's `iat` may be ahead of this clock.
    pub max_skew: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            max_age: 60,
            max_skew: 5,
        }
    }
}

impl Window {
    /// Until when a proof issued at `iat` could be accepted: a replay store
    /// must remember its `jti` that long.
    pub fn accepted_until(&self, iat: u64) -> u64 {
        iat.saturating_add(self.max_age)
    }
}

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The JWK SHA-256 thumbprint of the key that signed it (`cnf.jkt`).
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
    /// The server nonce it carries, if any (the caller checks it).
    pub nonce: Option<String>,
}

/// `ath`: base64url SHA-256 of the access token (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The URL as `htu` compares it: normalised (RFC 3986 §6.2.2–6.2.3), no
/// query, no fragment.
pub fn target_uri(url: &str) -> Option<String> {
    let mut url = url::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

/// Verifies `proof` for `request` at `now` (unix seconds).
pub fn verify(
    proof: &str,
    request: &Request<'_>,
    window: Window,
    now: u64,
) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::TooLarge);
    }
    let header = header(proof)?;
    let typ = header.get("typ").and_then(Value::as_str);
    if typ != Some(DPOP_TYP) {
        return Err(ProofError::Type);
    }
    let alg = header.get("alg").and_then(Value::as_str);
    if !alg.is_some_and(|alg| ALGORITHMS.contains(&alg)) {
        return Err(ProofError::Algorithm);
    }
    let jwk = match header.get("jwk") {
        Some(Value::Object(jwk)) => jwk,
        _ => return Err(ProofError::Key),
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let jwk: Jwk =
        serde_json::from_value(Value::Object(jwk.clone())).map_err(|_| ProofError::Key)?;
    let key = VerifyingKey::from_jwk(&jwk).map_err(|_| ProofError::Key)?;
    let expected = Expected {
        typ: Some(DPOP_TYP),
        issuers: &[],
        audiences: &[],
        require_exp: false,
        leeway: 0,
        now,
    };
    let claims =
        verify::verify(proof, &KeySet::new(vec![key]), &expected).map_err(|err| match err {
            VerifyError::Signature | VerifyError::UnknownKey => ProofError::Signature,
            VerifyError::Algorithm(_) => ProofError::Algorithm,
            VerifyError::TooLarge => ProofError::TooLarge,
            VerifyError::Type(_) => ProofError::Type,
            _ => ProofError::Malformed,
        })?;
    check_claims(&claims, request, window, now)?;
    Ok(Proof {
        jkt: thumbprint(&jwk).ok_or(ProofError::Key)?,
        jti: string(&claims, "jti").ok_or(ProofError::Jti)?.to_owned(),
        iat: iat(&claims).ok_or(ProofError::IssuedAt)?,
        nonce: string(&claims, "nonce").map(str::to_owned),
    })
}

/// The decoded JOSE header, read before any key is known (the key is in it).
fn header(proof: &str) -> Result<Map<String, Value>, ProofError> {
    let mut parts = proof.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| ProofError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed)
}

fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

fn iat(claims: &Map<String, Value>) -> Option<u64> {
    claims.get("iat").and_then(Value::as_u64)
}

fn check_claims(
    claims: &Map<String, Value>,
    request: &Request<'_>,
    window: Window,
    now: u64,
) -> Result<(), ProofError> {
    if string(claims, "htm") != Some(request.method) {
        return Err(ProofError::Method);
    }
    let htu = string(claims, "htu").and_then(target_uri);
    if htu.is_none() || htu != target_uri(request.url) {
        return Err(ProofError::Url);
    }
    let iat = iat(claims).ok_or(ProofError::IssuedAt)?;
    if iat > now.saturating_add(window.max_skew) || window.accepted_until(iat) < now {
        return Err(ProofError::IssuedAt);
    }
    if !string(claims, "jti").is_some_and(|jti| !jti.is_empty() && jti.len() <= MAX_JTI_LEN) {
        return Err(ProofError::Jti);
    }
    match claims.get("nonce") {
        None => {}
        Some(Value::String(nonce)) if !nonce.is_empty() && nonce.len() <= MAX_NONCE_LEN => {}
        Some(_) => return Err(ProofError::Nonce),
    }
    if let Some(token) = request.access_token {
        let wanted = access_token_hash(token);
        let ath = string(claims, "ath").unwrap_or_default();
        if !bool::from(ath.as_bytes().ct_eq(wanted.as_bytes())) {
            return Err(ProofError::AccessTokenHash);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
