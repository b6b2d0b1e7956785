//! The credential of an `Authorization` header value, as the sidecar and
//! the token server's UserInfo endpoint read it: `Bearer` (RFC 6750 §2.1)
//! or `DPoP` (RFC 9449 §7.1), the scheme in any case.

/// The authorization scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    Bearer,
    Dpop,
}

/// The token of one Authorization value and its scheme; `None` for
/// another scheme, no token, or anything but visible ASCII (as
/// `HeaderValue::to_str`).
pub fn credential_in(value: &[u8]) -> Option<(AuthScheme, &str)> {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let (scheme, token) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        AuthScheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        AuthScheme::Dpop
    } else {
        return None;
    };
    Some((scheme, token.trim())).filter(|(_, t)| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_dpop_in_any_case_and_nothing_else() {
        assert_eq!(
            credential_in(b"Bearer a.b.c"),
            Some((AuthScheme::Bearer, "a.b.c"))
        );
        assert_eq!(
            credential_in(b"dpop tmo_x"),
            Some((AuthScheme::Dpop, "tmo_x"))
        );
        for refused in [
            &b"Basic eA=="[..],
            b"Bearer",
            b"Bearer  ",
            b"Bearer a\xffb",
            b"Bearer a\nb",
        ] {
            assert_eq!(credential_in(refused), None, "{refused:?}");
        }
    }
}
