//! Values in `application/x-www-form-urlencoded` form: a request body's
//! parameters, and the client id and secret of HTTP Basic (RFC 6749 §2.3.1).

use std::borrow::Cow;

/// A value that is not UTF-8 once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a form value is not UTF-8")]
pub struct NotUtf8;

/// Decodes `raw`: `+` is a space, `%XX` a byte. Most values on the hot
/// path (grant types, scopes, client ids) hold neither and are copied as
/// they are.
pub fn decode(raw: &[u8]) -> Result<String, NotUtf8> {
    let bytes = if raw.iter().any(|b| matches!(b, b'+' | b'%')) {
        let spaced: Cow<[u8]> = if raw.contains(&b'+') {
            Cow::Owned(
                raw.iter()
                    .map(|b| if *b == b'+' { b' ' } else { *b })
                    .collect(),
            )
        } else {
            Cow::Borrowed(raw)
        };
        Cow::<[u8]>::from(percent_encoding::percent_decode(&spaced)).into_owned()
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|_| NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_and_percent_a_byte() {
        assert_eq!(decode(b"client_credentials").unwrap(), "client_credentials");
        assert_eq!(decode(b"orders%3Aread+video").unwrap(), "orders:read video");
        assert_eq!(decode(b"a%2Bb+c%20d").unwrap(), "a+b c d");
        assert_eq!(decode(b"caf%C3%A9").unwrap(), "café");
        assert_eq!(decode(b"%zz%").unwrap(), "%zz%", "not an escape: kept");
        assert_eq!(decode(b"").unwrap(), "");
    }

    #[test]
    fn what_is_not_utf8_is_refused() {
        assert_eq!(decode(b"%FF"), Err(NotUtf8));
        assert_eq!(decode(&[0xC3]), Err(NotUtf8));
    }
}
