//! Inbound proof of possession for DPoP-bound tokens (RFC 9449 §7): a token
//! with `cnf.jkt` is accepted only as `Authorization: DPoP <token>` with one
//! `DPoP` proof for this request (`htm`, `htu` as the client called it,
//! `ath` of the token, `iat` window), signed by the key the token names,
//! and never seen before by this sidecar; with `--dpop-require-nonce`,
//! carrying a nonce this sidecar handed out (§9).

use subtle::ConstantTimeEq;
use tokenmesh_tokens::{
    claims::AccessTokenClaims,
    dpop::{
        self, Request, Window,
        nonce::{self, NonceKey},
        replay::{Replay, ReplayWindow},
    },
};

use super::Refusal;

/// Proofs remembered at once: a minute of proofs at 1,600 requests a second.
pub const REPLAY_ENTRIES: usize = 100_000;

pub use tokenmesh_tokens::authorization::AuthScheme;

/// A request's credential as the client sent it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub scheme: AuthScheme,
    /// The token as sent (an opaque token stays opaque: `ath` hashes it).
    pub token: &'a str,
    /// Every `DPoP` header value.
    pub proofs: &'a [&'a [u8]],
    pub method: &'a str,
    /// The URL the client called (scheme, host, path).
    pub url: &'a str,
}

/// Checks the proof a bound token needs; a bearer token needs none. With
/// `nonces`, the proof must carry a current nonce made under that key.
pub fn check(
    claims: &AccessTokenClaims,
    presented: &Presented<'_>,
    replay: &ReplayWindow,
    nonces: Option<&NonceKey>,
    now: u64,
) -> Result<(), Refusal> {
    let Some(jkt) = claims.cnf.as_ref().and_then(|cnf| cnf.jkt.as_deref()) else {
        return Ok(());
    };
    let refuse = |why: &str| Err(Refusal::Proof(why.to_owned()));
    if presented.scheme != AuthScheme::Dpop {
        return refuse("a DPoP-bound token came with the Bearer scheme");
    }
    let proof = match presented.proofs {
        [one] => std::str::from_utf8(one).map_err(|_| Refusal::Proof("not ASCII".into()))?,
        [] => return refuse("no DPoP proof"),
        _ => return refuse("more than one DPoP header"),
    };
    let request = Request {
        method: presented.method,
        url: presented.url,
        access_token: Some(presented.token),
    };
    let window = Window::default();
    let proof = dpop::verify(proof, &request, window, now)
        .map_err(|err| Refusal::Proof(err.to_string()))?;
    if !bool::from(proof.jkt.as_bytes().ct_eq(jkt.as_bytes())) {
        return refuse("the proof is signed by another key than the token's");
    }
    if let Some(nonces) = nonces
        && !nonce::is_current([nonces], proof.nonce.as_deref(), now)
    {
        return Err(Refusal::UseNonce(nonces.current(now)));
    }
    let until = window
        .accepted_until(proof.iat)
        .saturating_add(window.max_skew);
    match replay.use_once(&proof, until, now) {
        Ok(()) => Ok(()),
        Err(Replay::Seen) => refuse("the proof was used before"),
        Err(Replay::Full) => refuse("too many proofs in flight to remember another"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokenmesh_tokens::{Algorithm, dpop::create::ProofKey};

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const URL: &str = "http://orders.default.svc:8080/api/orders";

    fn bound_to(key: &ProofKey) -> AccessTokenClaims {
        serde_json::from_value(json!({
            "iss": "https://issuer", "sub": "frontend", "aud": "orders", "exp": NOW + 60,
            "iat": NOW, "nbf": NOW, "jti": "t", "client_id": "frontend",
            "cnf": {"jkt": key.jkt()},
        }))
        .unwrap()
    }

    fn presented<'a>(scheme: AuthScheme, proofs: &'a [&'a [u8]], method: &'a str) -> Presented<'a> {
        Presented {
            scheme,
            token: "the-token",
            proofs,
            method,
            url: URL,
        }
    }

    fn refused(result: Result<(), Refusal>) -> String {
        match result {
            Err(Refusal::Proof(why)) => why,
            other => panic!("not a proof refusal: {other:?}"),
        }
    }

    /// The attacks of issue #18 on a bound token at the next hop.
    #[test]
    fn a_bound_token_needs_a_fresh_proof_of_its_key_for_this_request() {
        let key = ProofKey::generate(Algorithm::ES256).unwrap();
        let claims = bound_to(&key);
        let replay = ReplayWindow::new(10);
        let good = key.proof("GET", URL, Some("the-token"), None, NOW).unwrap();
        let one: &[&[u8]] = &[good.as_bytes()];

        let no_proof = presented(AuthScheme::Dpop, &[], "GET");
        assert!(refused(check(&claims, &no_proof, &replay, None, NOW)).contains("no DPoP proof"));
        let as_bearer = presented(AuthScheme::Bearer, one, "GET");
        assert!(refused(check(&claims, &as_bearer, &replay, None, NOW)).contains("Bearer"));
        let other_method = presented(AuthScheme::Dpop, one, "POST");
        assert!(refused(check(&claims, &other_method, &replay, None, NOW)).contains("htm"));
        let mut other_url = presented(AuthScheme::Dpop, one, "GET");
        other_url.url = "http://orders.default.svc:8080/api/admin";
        assert!(refused(check(&claims, &other_url, &replay, None, NOW)).contains("htu"));
        let mut other_token = presented(AuthScheme::Dpop, one, "GET");
        other_token.token = "another-token";
        assert!(refused(check(&claims, &other_token, &replay, None, NOW)).contains("ath"));
        assert!(
            refused(check(
                &claims,
                &presented(AuthScheme::Dpop, one, "GET"),
                &replay,
                None,
                NOW + 61
            ))
            .contains("iat")
        );

        let thief = ProofKey::generate(Algorithm::ES256).unwrap();
        let stolen = thief
            .proof("GET", URL, Some("the-token"), None, NOW)
            .unwrap();
        let stolen: &[&[u8]] = &[stolen.as_bytes()];
        assert!(
            refused(check(
                &claims,
                &presented(AuthScheme::Dpop, stolen, "GET"),
                &replay,
                None,
                NOW
            ))
            .contains("another key")
        );

        let ok = presented(AuthScheme::Dpop, one, "GET");
        assert_eq!(check(&claims, &ok, &replay, None, NOW), Ok(()));
        assert!(refused(check(&claims, &ok, &replay, None, NOW)).contains("used before"));
    }

    /// `--dpop-require-nonce`: a good proof without a current nonce of this
    /// sidecar's is refused with the nonce to use, and not counted as used.
    #[test]
    fn a_required_nonce_is_handed_out_and_then_accepted() {
        let key = ProofKey::generate(Algorithm::ES256).unwrap();
        let claims = bound_to(&key);
        let replay = ReplayWindow::new(10);
        let nonces = NonceKey::generate().unwrap();
        let without = key.proof("GET", URL, Some("the-token"), None, NOW).unwrap();
        let without: &[&[u8]] = &[without.as_bytes()];
        let asked = check(
            &claims,
            &presented(AuthScheme::Dpop, without, "GET"),
            &replay,
            Some(&nonces),
            NOW,
        );
        let Err(Refusal::UseNonce(nonce)) = asked else {
            panic!("not asked for a nonce: {asked:?}");
        };
        let elsewhere = NonceKey::generate().unwrap().current(NOW);
        let expired = nonces.current(NOW - 300);
        for (wrong, why) in [(elsewhere, "another sidecar's"), (expired, "expired")] {
            let proof = key
                .proof("GET", URL, Some("the-token"), Some(&wrong), NOW)
                .unwrap();
            let proof: &[&[u8]] = &[proof.as_bytes()];
            let result = check(
                &claims,
                &presented(AuthScheme::Dpop, proof, "GET"),
                &replay,
                Some(&nonces),
                NOW,
            );
            assert!(
                matches!(result, Err(Refusal::UseNonce(_))),
                "{why}: {result:?}"
            );
        }
        let with = key
            .proof("GET", URL, Some("the-token"), Some(&nonce), NOW)
            .unwrap();
        let with: &[&[u8]] = &[with.as_bytes()];
        let good = presented(AuthScheme::Dpop, with, "GET");
        assert_eq!(check(&claims, &good, &replay, Some(&nonces), NOW), Ok(()));
        assert!(
            refused(check(&claims, &good, &replay, Some(&nonces), NOW)).contains("used before")
        );
    }

    #[test]
    fn a_bearer_token_needs_no_proof() {
        let mut claims = bound_to(&ProofKey::generate(Algorithm::ES256).unwrap());
        claims.cnf = None;
        let replay = ReplayWindow::new(10);
        assert_eq!(
            check(
                &claims,
                &presented(AuthScheme::Bearer, &[], "GET"),
                &replay,
                None,
                NOW
            ),
            Ok(())
        );
    }
}
