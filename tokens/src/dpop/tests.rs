//! The attacks of issue #18 on a proof, each refused; and a proof made by
//! [`ProofKey`] accepted.

use serde_json::{Value, json};

use super::{create::ProofKey, *};
use crate::{Algorithm, signing::SigningKey};

const NOW: u64 = 1_700_000_000;
const URL: &str = "https://orders.example/api/orders";

fn request(token: Option<&str>) -> Request<'_> {
    Request {
        method: "GET",
        url: URL,
        access_token: token,
    }
}

fn check(proof: &str, token: Option<&str>) -> Result<Proof, ProofError> {
    verify(proof, &request(token), Window::default(), NOW)
}

/// A proof signed by `key` with any header and claims.
fn forged(key: &SigningKey, header: Value, claims: Value) -> String {
    key.sign_with_header(&header, &claims).unwrap()
}

fn es256() -> SigningKey {
    SigningKey::generate(String::new(), Algorithm::ES256).unwrap()
}

fn header_of(key: &SigningKey) -> Value {
    let mut jwk = serde_json::to_value(key.public_jwk()).unwrap();
    jwk.as_object_mut().unwrap().remove("kid");
    json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})
}

fn claims() -> Value {
    json!({"jti": "j-1", "htm": "GET", "htu": URL, "iat": NOW})
}

#[test]
fn a_proof_of_every_supported_algorithm_verifies_with_its_thumbprint() {
    for alg in [
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::PS256,
    ] {
        let key = ProofKey::generate(alg).unwrap();
        let proof = key
            .proof("GET", URL, Some("the-token"), Some("n-1"), NOW)
            .unwrap();
        let verified = check(&proof, Some("the-token")).unwrap();
        assert_eq!(verified.jkt, key.jkt(), "{alg:?}");
        assert_eq!(verified.iat, NOW);
        assert_eq!(verified.nonce.as_deref(), Some("n-1"));
        assert!(!verified.jti.is_empty());
    }
}

#[test]
fn htu_ignores_query_and_fragment_and_normalises() {
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let proof = key
        .proof(
            "GET",
            "HTTPS://Orders.example:443/api/orders?x=1#f",
            None,
            None,
            NOW,
        )
        .unwrap();
    let asked = Request {
        method: "GET",
        url: "https://orders.example/api/orders?page=2",
        access_token: None,
    };
    assert!(verify(&proof, &asked, Window::default(), NOW).is_ok());
}

#[test]
fn another_method_or_url_is_refused() {
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let post = key.proof("POST", URL, None, None, NOW).unwrap();
    assert_eq!(check(&post, None), Err(ProofError::Method));
    let elsewhere = key
        .proof("GET", "https://orders.example/api/admin", None, None, NOW)
        .unwrap();
    assert_eq!(check(&elsewhere, None), Err(ProofError::Url));
    let other_host = key
        .proof("GET", "https://evil.example/api/orders", None, None, NOW)
        .unwrap();
    assert_eq!(check(&other_host, None), Err(ProofError::Url));
}

#[test]
fn a_stale_or_future_iat_is_refused() {
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let window = Window::default();
    let stale = key
        .proof("GET", URL, None, None, NOW - window.max_age - 1)
        .unwrap();
    assert_eq!(check(&stale, None), Err(ProofError::IssuedAt));
    let oldest = key
        .proof("GET", URL, None, None, NOW - window.max_age)
        .unwrap();
    assert!(check(&oldest, None).is_ok());
    let future = key
        .proof("GET", URL, None, None, NOW + window.max_skew + 1)
        .unwrap();
    assert_eq!(check(&future, None), Err(ProofError::IssuedAt));
}

#[test]
fn hs256_and_none_are_refused() {
    let hs = [
        URL_SAFE_NO_PAD.encode(
            json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}})
                .to_string(),
        ),
        URL_SAFE_NO_PAD.encode(claims().to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 32]),
    ]
    .join(".");
    assert!(matches!(
        check(&hs, None),
        Err(ProofError::Algorithm | ProofError::PrivateKey)
    ));
    let key = es256();
    let mut header = header_of(&key);
    header["alg"] = "HS256".into();
    let hs_with_public_key = forged(&key, header.clone(), claims());
    assert_eq!(check(&hs_with_public_key, None), Err(ProofError::Algorithm));
    header["alg"] = "none".into();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_eq!(check(&none, None), Err(ProofError::Algorithm));
}

#[test]
fn a_private_key_in_jwk_is_refused() {
    let key = es256();
    for member in ["d", "p", "q", "k"] {
        let mut header = header_of(&key);
        header["jwk"][member] = "AAAA".into();
        let proof = forged(&key, header, claims());
        assert_eq!(check(&proof, None), Err(ProofError::PrivateKey), "{member}");
    }
}

#[test]
fn a_signature_by_another_key_than_jwk_is_refused() {
    let signer = es256();
    let proof = forged(&signer, header_of(&es256()), claims());
    assert_eq!(check(&proof, None), Err(ProofError::Signature));
}

#[test]
fn typ_jwk_jti_and_size_are_checked() {
    let key = es256();
    let mut header = header_of(&key);
    header["typ"] = "JWT".into();
    assert_eq!(
        check(&forged(&key, header, claims()), None),
        Err(ProofError::Type)
    );
    let mut header = header_of(&key);
    header.as_object_mut().unwrap().remove("jwk");
    assert_eq!(
        check(&forged(&key, header, claims()), None),
        Err(ProofError::Key)
    );
    for jti in [json!(null), json!(""), json!("j".repeat(MAX_JTI_LEN + 1))] {
        let mut body = claims();
        body["jti"] = jti;
        assert_eq!(
            check(&forged(&key, header_of(&key), body), None),
            Err(ProofError::Jti)
        );
    }
    let mut big = claims();
    big["pad"] = "x".repeat(MAX_PROOF_LEN).into();
    assert_eq!(
        check(&forged(&key, header_of(&key), big), None),
        Err(ProofError::TooLarge)
    );
    assert_eq!(check("a.b", None), Err(ProofError::Malformed));
}

#[test]
fn ath_must_hash_the_presented_token() {
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let for_other = key.proof("GET", URL, Some("other"), None, NOW).unwrap();
    assert_eq!(
        check(&for_other, Some("the-token")),
        Err(ProofError::AccessTokenHash)
    );
    let without = key.proof("GET", URL, None, None, NOW).unwrap();
    assert_eq!(
        check(&without, Some("the-token")),
        Err(ProofError::AccessTokenHash)
    );
}

/// RFC 9449 §4.2's example `ath`.
#[test]
fn ath_is_the_rfc_hash() {
    assert_eq!(
        access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}
