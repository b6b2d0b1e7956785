//! Proof Key for Code Exchange (RFC 7636), `S256` only: `plain` would hand
//! the verifier to whoever sees the authorization request.

use aws_lc_rs::{constant_time::verify_slices_are_equal, digest};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::OAuthError;

/// The `code_challenge` of an authorization request, checked: `None` when
/// absent and not `required`.
pub fn challenge(
    challenge: Option<&str>,
    method: Option<&str>,
    required: bool,
) -> Result<Option<String>, OAuthError> {
    let Some(challenge) = challenge else {
        if method.is_some() {
            return Err(invalid("code_challenge_method without code_challenge"));
        }
        if required {
            return Err(invalid(
                "code_challenge is required (PKCE with S256, RFC 7636)",
            ));
        }
        return Ok(None);
    };
    // RFC 7636 §4.3: no method means `plain`.
    if method != Some("S256") {
        return Err(invalid(
            "code_challenge_method must be S256 (plain is refused)",
        ));
    }
    // A SHA-256 digest in base64url: 43 characters.
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
        return Err(invalid("code_challenge is not a base64url SHA-256 digest"));
    }
    Ok(Some(challenge.to_owned()))
}

/// Whether `verifier` (43–128 unreserved characters) hashes to `challenge`,
/// compared in constant time.
pub fn verifies(challenge: &str, verifier: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed && verify_slices_are_equal(s256(verifier).as_bytes(), challenge.as_bytes()).is_ok()
}

/// `BASE64URL(SHA256(verifier))`.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

fn invalid(text: &'static str) -> OAuthError {
    OAuthError::InvalidRequest(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn s256_matches_the_rfc_example() {
        assert_eq!(s256(VERIFIER), CHALLENGE);
        assert!(verifies(CHALLENGE, VERIFIER));
        assert!(!verifies(CHALLENGE, &VERIFIER.replace('d', "e")));
        assert!(!verifies(CHALLENGE, "short"));
    }

    #[test]
    fn plain_and_missing_challenges_are_refused() {
        assert!(challenge(Some(CHALLENGE), Some("S256"), true).is_ok());
        for (c, m) in [
            (Some(CHALLENGE), None),
            (Some(CHALLENGE), Some("plain")),
            (None, None),
            (None, Some("S256")),
            (Some("abc"), Some("S256")),
        ] {
            assert!(
                matches!(challenge(c, m, true), Err(OAuthError::InvalidRequest(_))),
                "{c:?} {m:?}"
            );
        }
        assert_eq!(challenge(None, None, false).unwrap(), None);
    }
}
