//! The sidecar's own DPoP key (RFC 9449) for the hops that need bound
//! tokens: made at start, never written anywhere nor sent, so a token bound
//! to it is good only through this process. It signs the proof of every
//! Exchange that binds and of every call forwarded with a bound token, each
//! with a fresh `jti`, and carries the nonce each origin last asked for
//! (§8, §9).

use std::{collections::HashMap, sync::Mutex};

use tokenmesh_tokens::{
    Algorithm,
    dpop::{MAX_NONCE_LEN, create::ProofKey},
    signing::SigningError,
};

/// Origins whose nonce is remembered: more than the hops one workload
/// calls; past it, the memory starts again (the next call is asked again).
const NONCE_ORIGINS: usize = 1024;

#[derive(Debug)]
pub struct Signer {
    key: ProofKey,
    /// Origin (`scheme://authority`) → the nonce it last handed out.
    nonces: Mutex<HashMap<String, String>>,
}

/// The origin a nonce belongs to (RFC 9449 §8: per server).
fn origin(url: &str) -> Option<String> {
    let uri = url.parse::<http::Uri>().ok()?;
    Some(format!(
        "{}://{}",
        uri.scheme_str()?,
        uri.authority()?.as_str().to_ascii_lowercase()
    ))
}

impl Signer {
    /// A fresh ES256 key.
    pub fn generate() -> Result<Self, SigningError> {
        Ok(Self {
            key: ProofKey::generate(Algorithm::ES256)?,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// The thumbprint tokens bound to this key carry in `cnf.jkt`.
    pub fn jkt(&self) -> &str {
        self.key.jkt()
    }

    /// A proof for `method` `url` at `now`, with `ath` of `token` when one
    /// goes with it, and the nonce `url`'s origin asked for, if any.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        now: u64,
    ) -> Result<String, SigningError> {
        let nonce = origin(url).and_then(|origin| {
            let nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
            nonces.get(&origin).cloned()
        });
        self.key.proof(method, url, token, nonce.as_deref(), now)
    }

    /// Remembers the nonce `url`'s origin handed out (a `DPoP-Nonce`
    /// header, or gRPC metadata); a malformed one is ignored. Whether it
    /// changed: a call refused for want of it is worth one retry.
    pub fn remember(&self, url: &str, nonce: &[u8]) -> bool {
        let Some(origin) = origin(url) else {
            return false;
        };
        let Some(nonce) = std::str::from_utf8(nonce)
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_LEN)
            .filter(|n| n.bytes().all(|b| b.is_ascii_graphic()))
        else {
            return false;
        };
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if nonces.get(&origin).is_some_and(|known| known == nonce) {
            return false;
        }
        if nonces.len() >= NONCE_ORIGINS && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, nonce.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use tokenmesh_tokens::dpop::{self, Request, Window};

    use super::*;

    const NOW: u64 = 1_700_000_000;

    /// What a proof says, verified as the next hop verifies it.
    fn verified(proof: &str, method: &str, url: &str, token: Option<&str>) -> dpop::Proof {
        let request = Request {
            method,
            url,
            access_token: token,
        };
        dpop::verify(proof, &request, Window::default(), NOW).unwrap()
    }

    #[test]
    fn every_proof_is_for_its_request_with_a_fresh_jti_and_this_key() {
        let signer = Signer::generate().unwrap();
        let url = "http://payments.local:8080/charge?id=1";
        let first = signer.proof("POST", url, Some("the-token"), NOW).unwrap();
        let second = signer.proof("POST", url, Some("the-token"), NOW).unwrap();
        let (a, b) = (
            verified(&first, "POST", url, Some("the-token")),
            verified(&second, "POST", url, Some("the-token")),
        );
        assert_eq!(a.jkt, signer.jkt());
        assert_eq!(a.iat, NOW, "iat from the clock it is given");
        assert_ne!(a.jti, b.jti, "a fresh jti for every call");
        assert_eq!(a.nonce, None);
        let request = Request {
            method: "GET",
            url,
            access_token: Some("the-token"),
        };
        assert_eq!(
            dpop::verify(&first, &request, Window::default(), NOW),
            Err(dpop::ProofError::Method)
        );
        let request = Request {
            method: "POST",
            url,
            access_token: Some("another-token"),
        };
        assert_eq!(
            dpop::verify(&first, &request, Window::default(), NOW),
            Err(dpop::ProofError::AccessTokenHash)
        );
        // The jwk carries only the public key.
        let header = first.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(header["jwk"].get("d").is_none(), "{header}");
    }

    #[test]
    fn nonces_are_remembered_per_origin() {
        let signer = Signer::generate().unwrap();
        let payments = "http://payments.local:8080/charge";
        assert!(signer.remember(payments, b"n1"));
        assert!(
            !signer.remember("http://PAYMENTS.local:8080/other", b"n1"),
            "the same"
        );
        let proof = signer.proof("GET", payments, None, NOW).unwrap();
        assert_eq!(
            verified(&proof, "GET", payments, None).nonce.as_deref(),
            Some("n1")
        );
        let ledger = "http://ledger.local/";
        let proof = signer.proof("GET", ledger, None, NOW).unwrap();
        assert_eq!(
            verified(&proof, "GET", ledger, None).nonce,
            None,
            "another origin"
        );
        assert!(
            signer.remember(payments, b"n2"),
            "updated from a newer answer"
        );
        let proof = signer.proof("GET", payments, None, NOW).unwrap();
        assert_eq!(
            verified(&proof, "GET", payments, None).nonce.as_deref(),
            Some("n2")
        );
        assert!(!signer.remember(payments, b"bad nonce\n"));
        assert!(!signer.remember(payments, &[b'x'; 300]));
    }
}
