//! JWK SHA-256 thumbprints (RFC 7638), the `jkt` of a DPoP-bound token.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use crate::jwk::Jwk;

/// The thumbprint of a public key: SHA-256 over the required members in
/// lexicographic order, without whitespace (§3.2). `None` for a key type
/// without required members here or a missing member.
pub fn thumbprint(jwk: &Jwk) -> Option<String> {
    let members: &[(&str, &Option<String>)] = match jwk.kty.as_str() {
        "EC" => &[("crv", &jwk.crv), ("x", &jwk.x), ("y", &jwk.y)],
        "OKP" => &[("crv", &jwk.crv), ("x", &jwk.x)],
        "RSA" => &[("e", &jwk.e), ("n", &jwk.n)],
        _ => return None,
    };
    // serde_json's Map is ordered by key, which is the order §3.2 asks for.
    let mut object = Map::new();
    object.insert("kty".into(), Value::String(jwk.kty.clone()));
    for (name, value) in members {
        object.insert((*name).into(), Value::String(value.as_ref()?.clone()));
    }
    let json = serde_json::to_vec(&object).ok()?;
    Some(URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 7638 §3.1.
    #[test]
    fn the_rfc_7638_example_key_has_the_rfc_thumbprint() {
        let jwk = Jwk {
            kty: "RSA".into(),
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            alg: Some("RS256".into()),
            kid: Some("2011-04-29".into()),
            ..Jwk::default()
        };
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn a_key_without_its_required_members_has_none() {
        let jwk = Jwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some("x".into()),
            ..Jwk::default()
        };
        assert_eq!(thumbprint(&jwk), None);
        let oct = Jwk {
            kty: "oct".into(),
            ..Jwk::default()
        };
        assert_eq!(thumbprint(&oct), None);
    }
}
