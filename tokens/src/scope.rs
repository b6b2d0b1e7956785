//! Scope lists as RFC 6749 §3.3 spells them: scope-tokens of
//! `%x21 / %x23-5B / %x5D-7E` separated by the space character. The one
//! parser for a requested `scope` and for a token's `scope` claim: splitting
//! on other whitespace let a tab-joined list pass a prefix check as one
//! scope and come apart into several later.

use serde::{Deserialize, Deserializer, de::Error as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("scopes are separated by spaces and hold only printable ASCII without space, `\"` or `\\`")]
pub struct InvalidScope;

/// Whether `text` is one scope-token.
pub fn is_scope_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// The scope-tokens of a space-separated list. Extra spaces add nothing;
/// any other byte outside a scope-token refuses the whole list.
pub fn split(text: &str) -> Result<Vec<&str>, InvalidScope> {
    text.split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if is_scope_token(s) {
                Ok(s)
            } else {
                Err(InvalidScope)
            }
        })
        .collect()
}

/// Deserializes a `scope` claim, refusing one [`split`] refuses: a token
/// whose claim does not parse is not a token this code accepts.
pub fn deserialize_claim<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    split(&text).map_err(D::Error::custom)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_space_separates() {
        assert_eq!(
            split(" orders:read  video_1 "),
            Ok(vec!["orders:read", "video_1"])
        );
        assert_eq!(split(""), Ok(vec![]));
        for bad in [
            "video_x\torders:write\tadmin",
            "a\nb",
            "a\u{b}b",
            "a\rb",
            "caf\u{e9}",
            "a\"b",
            "a\\b",
            "a\u{a0}b",
        ] {
            assert_eq!(split(bad), Err(InvalidScope), "{bad:?}");
        }
    }

    #[test]
    fn scope_tokens_are_printable_ascii_without_quote_or_backslash() {
        assert!(is_scope_token("!#[]~"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("a b"));
    }
}
