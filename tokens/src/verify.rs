//! JWT verification against a set of public keys.
//!
//! The algorithm comes from the key, never from the token: a header naming
//! `none`, an HMAC algorithm, or any algorithm the selected key does not
//! carry is refused, which closes algorithm confusion. Registered claims are
//! checked here against an injected clock.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::jwk::{Jwk, JwkSet};

/// Longest JWT accepted (tokens carrying embedded tokens are the largest).
pub const MAX_JWT_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is too large")]
    TooLarge,
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no key matches the token's kid and algorithm")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("the token type is not {0}")]
    Type(String),
    #[error("the issuer is not accepted")]
    Issuer,
    #[error("the audience is not accepted")]
    Audience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the claim {0} is missing or malformed")]
    Claim(&'static str),
    #[error("the key is not usable: {0}")]
    Key(String),
    #[error("the token names critical header parameters this verifier does not understand")]
    Critical,
}

/// A public key with the algorithms it may verify.
pub struct VerifyingKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Builds a key from a public JWK. Its `alg`, when present, is the only
    /// algorithm it verifies; otherwise the key type decides.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, VerifyError> {
        let key_err = |what: &str| VerifyError::Key(what.to_owned());
        let member = |value: &Option<String>, name: &str| {
            value
                .clone()
                .ok_or_else(|| key_err(&format!("{} key without {name}", jwk.kty)))
        };
        let (key, by_type): (DecodingKey, Vec<Algorithm>) =
            match (jwk.kty.as_str(), jwk.crv.as_deref()) {
                ("EC", Some(crv @ ("P-256" | "P-384"))) => (
                    DecodingKey::from_ec_components(&member(&jwk.x, "x")?, &member(&jwk.y, "y")?)
                        .map_err(|e| key_err(&e.to_string()))?,
                    vec![if crv == "P-256" {
                        Algorithm::ES256
                    } else {
                        Algorithm::ES384
                    }],
                ),
                ("OKP", Some("Ed25519")) => (
                    DecodingKey::from_ed_components(&member(&jwk.x, "x")?)
                        .map_err(|e| key_err(&e.to_string()))?,
                    vec![Algorithm::EdDSA],
                ),
                ("RSA", _) => (
                    DecodingKey::from_rsa_components(&member(&jwk.n, "n")?, &member(&jwk.e, "e")?)
                        .map_err(|e| key_err(&e.to_string()))?,
                    vec![
                        Algorithm::RS256,
                        Algorithm::PS256,
                        Algorithm::RS384,
                        Algorithm::PS384,
                        Algorithm::RS512,
                        Algorithm::PS512,
                    ],
                ),
                (kty, crv) => {
                    return Err(key_err(&format!(
                        "unsupported key type {kty} {}",
                        crv.unwrap_or("")
                    )));
                }
            };
        let algorithms = match &jwk.alg {
            Some(alg) => {
                let alg: Algorithm = alg
                    .parse()
                    .map_err(|_| key_err(&format!("unknown alg {alg}")))?;
                if !by_type.contains(&alg) {
                    return Err(key_err(&format!(
                        "alg {alg:?} does not fit a {} key",
                        jwk.kty
                    )));
                }
                vec![alg]
            }
            None => by_type,
        };
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err(key_err("key is not for signatures (use != sig)"));
        }
        Ok(Self {
            kid: jwk.kid.clone(),
            algorithms,
            key,
        })
    }
}

/// The keys one issuer (or client) signs with.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        Self { keys }
    }

    /// Every usable key of a JWK Set; unusable ones are returned as errors.
    pub fn from_jwks(jwks: &JwkSet) -> (Self, Vec<VerifyError>) {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for jwk in &jwks.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => keys.push(key),
                Err(err) => errors.push(err),
            }
        }
        (Self { keys }, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// What a verified token must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// Required `typ` header (compared as RFC 8725 §3.11 says: case
    /// insensitive, `application/` optional).
    pub typ: Option<&'a str>,
    /// Accepted `iss` values; empty accepts any.
    pub issuers: &'a [&'a str],
    /// Accepted audiences: the token's `aud` must name one; empty skips.
    pub audiences: &'a [&'a str],
    /// Whether `exp` must be present.
    pub require_exp: bool,
    /// Allowed clock skew in seconds.
    pub leeway: u64,
    /// Now, as unix seconds.
    pub now: u64,
}

/// Verifies `token` and returns its claims.
pub fn verify(
    token: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
) -> Result<Map<String, Value>, VerifyError> {
    if token.len() > MAX_JWT_LEN {
        return Err(VerifyError::TooLarge);
    }
    let header = decode_header(token).map_err(|err| match err.kind() {
        jsonwebtoken::errors::ErrorKind::Json(_) => VerifyError::Algorithm("(unknown)".into()),
        _ => VerifyError::Malformed,
    })?;
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(VerifyError::Algorithm(format!("{:?}", header.alg)));
    }
    // RFC 7515 §4.1.11: `crit` lists extensions the recipient must
    // understand or refuse the JWS; this verifier understands none.
    if header.crit.is_some() {
        return Err(VerifyError::Critical);
    }
    if let Some(typ) = expected.typ
        && !header.typ.as_deref().is_some_and(|t| same_type(t, typ))
    {
        return Err(VerifyError::Type(typ.to_owned()));
    }
    let candidates = keys.keys.iter().filter(|key| {
        key.algorithms.contains(&header.alg)
            && match (&header.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                (Some(_), None) => true,
                (None, _) => true,
            }
    });
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut tried = false;
    let mut claims = None;
    for key in candidates {
        tried = true;
        match decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(err) => match err.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                _ => return Err(VerifyError::Malformed),
            },
        }
    }
    let claims = match (tried, claims) {
        (false, _) => return Err(VerifyError::UnknownKey),
        (true, None) => return Err(VerifyError::Signature),
        (true, Some(claims)) => claims,
    };
    check_registered_claims(&claims, expected)?;
    Ok(claims)
}

fn same_type(actual: &str, wanted: &str) -> bool {
    let strip = |t: &str| {
        let t = t.trim();
        t.get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(t.to_owned(), |_| t[12..].to_owned())
    };
    strip(actual).eq_ignore_ascii_case(&strip(wanted))
}

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(VerifyError::Claim(name)),
        Some(_) => Err(VerifyError::Claim(name)),
    }
}

fn check_registered_claims(
    claims: &Map<String, Value>,
    expected: &Expected<'_>,
) -> Result<(), VerifyError> {
    let now = expected.now;
    match numeric(claims, "exp")? {
        Some(exp) if now >= exp.saturating_add(expected.leeway) => {
            return Err(VerifyError::Expired);
        }
        None if expected.require_exp => return Err(VerifyError::Claim("exp")),
        _ => {}
    }
    if let Some(nbf) = numeric(claims, "nbf")?
        && now.saturating_add(expected.leeway) < nbf
    {
        return Err(VerifyError::NotYetValid);
    }
    if !expected.issuers.is_empty() {
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(VerifyError::Issuer)?;
        if !expected.issuers.contains(&iss) {
            return Err(VerifyError::Issuer);
        }
    }
    if !expected.audiences.is_empty() {
        let matches = |aud: &str| expected.audiences.contains(&aud);
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => matches(aud),
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(matches),
            _ => false,
        };
        if !ok {
            return Err(VerifyError::Audience);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use serde_json::json;

    const NOW: u64 = 1_000_000;

    fn expected<'a>() -> Expected<'a> {
        Expected {
            typ: Some("at+jwt"),
            issuers: &["https://iss"],
            audiences: &["orders"],
            require_exp: true,
            leeway: 5,
            now: NOW,
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://iss", "aud": ["x", "orders"], "exp": NOW + 60, "nbf": NOW - 1, "sub": "s"})
    }

    fn keyset(key: &SigningKey) -> KeySet {
        KeySet::new(vec![VerifyingKey::from_jwk(&key.public_jwk()).unwrap()])
    }

    #[test]
    fn every_algorithm_signs_and_verifies() {
        for alg in [
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::PS256,
        ] {
            let key = SigningKey::generate("k1".into(), alg).unwrap();
            let jwt = key.sign_jwt("at+jwt", &claims()).unwrap();
            let got = verify(&jwt, &keyset(&key), &expected()).unwrap();
            assert_eq!(got["sub"], "s", "{alg:?}");
            let reparsed = SigningKey::from_pkcs8("k1".into(), alg, key.pkcs8().to_vec()).unwrap();
            assert!(
                verify(
                    &reparsed.sign_jwt("at+jwt", &claims()).unwrap(),
                    &keyset(&key),
                    &expected()
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn registered_claims_are_enforced() {
        let key = SigningKey::generate("k1".into(), Algorithm::ES256).unwrap();
        let keys = keyset(&key);
        let with = |patch: Value| {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            verify(&key.sign_jwt("at+jwt", &c).unwrap(), &keys, &expected())
        };
        assert_eq!(with(json!({"exp": NOW - 10})), Err(VerifyError::Expired));
        assert!(with(json!({"exp": NOW - 2})).is_ok(), "leeway");
        assert_eq!(with(json!({"exp": null})), Err(VerifyError::Claim("exp")));
        assert_eq!(
            with(json!({"nbf": NOW + 60})),
            Err(VerifyError::NotYetValid)
        );
        assert_eq!(
            with(json!({"iss": "https://evil"})),
            Err(VerifyError::Issuer)
        );
        assert_eq!(with(json!({"aud": "payments"})), Err(VerifyError::Audience));
        assert_eq!(with(json!({"exp": "soon"})), Err(VerifyError::Claim("exp")));
        let wrong_typ = key.sign_jwt("JWT", &claims()).unwrap();
        assert_eq!(
            verify(&wrong_typ, &keys, &expected()),
            Err(VerifyError::Type("at+jwt".into()))
        );
        let long_typ = key.sign_jwt("application/AT+JWT", &claims()).unwrap();
        assert!(verify(&long_typ, &keys, &expected()).is_ok());
    }

    fn forge(header: Value, body: &Value, sig: &[u8]) -> String {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            b(header.to_string().as_bytes()),
            b(body.to_string().as_bytes()),
            b(sig)
        )
    }

    #[test]
    fn forged_tokens_are_refused() {
        let key = SigningKey::generate("k1".into(), Algorithm::ES256).unwrap();
        let keys = keyset(&key);
        let none = forge(json!({"alg": "none", "typ": "at+jwt"}), &claims(), b"");
        assert!(matches!(
            verify(&none, &keys, &expected()),
            Err(VerifyError::Algorithm(_) | VerifyError::Malformed)
        ));
        // HS256 keyed with the public key: the classic confusion attack.
        let hs = forge(
            json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
            &claims(),
            b"mac",
        );
        assert_eq!(
            verify(&hs, &keys, &expected()),
            Err(VerifyError::Algorithm("HS256".into()))
        );
        // An algorithm the key does not carry.
        let rs = forge(
            json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"}),
            &claims(),
            b"sig",
        );
        assert_eq!(
            verify(&rs, &keys, &expected()),
            Err(VerifyError::UnknownKey)
        );
        let unknown_kid = SigningKey::generate("k2".into(), Algorithm::ES256).unwrap();
        let jwt = unknown_kid.sign_jwt("at+jwt", &claims()).unwrap();
        assert_eq!(
            verify(&jwt, &keys, &expected()),
            Err(VerifyError::UnknownKey)
        );
        // Same kid, other key: the signature fails.
        let impostor = SigningKey::generate("k1".into(), Algorithm::ES256).unwrap();
        let jwt = impostor.sign_jwt("at+jwt", &claims()).unwrap();
        assert_eq!(
            verify(&jwt, &keys, &expected()),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify("a.b", &keys, &expected()),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify(&"a".repeat(MAX_JWT_LEN + 1), &keys, &expected()),
            Err(VerifyError::TooLarge)
        );
    }

    /// A `crit` header refuses a token whose signature verifies.
    #[test]
    fn critical_header_parameters_are_refused() {
        let key = SigningKey::generate("k1".into(), Algorithm::ES256).unwrap();
        let keys = keyset(&key);
        for crit in [vec!["x-unknown"], vec!["b64"], vec![]] {
            let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
            header.typ = Some("at+jwt".into());
            header.kid = Some("k1".into());
            header.crit = Some(crit.iter().map(|c| (*c).to_owned()).collect());
            header.extras.insert("x-unknown", 1);
            let der = jsonwebtoken::EncodingKey::from_ec_der(key.pkcs8());
            let jwt = jsonwebtoken::encode(&header, &claims(), &der).unwrap();
            assert_eq!(
                verify(&jwt, &keys, &expected()),
                Err(VerifyError::Critical),
                "{crit:?}"
            );
        }
        let not_a_list = forge(
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1", "crit": "x-unknown"}),
            &claims(),
            b"sig",
        );
        assert!(matches!(
            verify(&not_a_list, &keys, &expected()),
            Err(VerifyError::Algorithm(_) | VerifyError::Malformed)
        ));
    }

    #[test]
    fn jwk_alg_must_fit_its_key() {
        let key = SigningKey::generate("k".into(), Algorithm::ES256).unwrap();
        let mut jwk = key.public_jwk();
        jwk.alg = Some("RS256".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        jwk.alg = None;
        jwk.key_use = Some("enc".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
    }
}
