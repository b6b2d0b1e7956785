//! A strict `application/x-www-form-urlencoded` body: bounded, UTF-8 only,
//! no repeated parameters except those the RFCs allow to repeat.

use std::collections::BTreeMap;

use tokenmesh_core::urlencoded;

use axum::{
    body::Body,
    http::{HeaderMap, header},
};
use http_body_util::BodyExt;

use super::error::OAuthError;

/// Largest request body accepted by the OAuth endpoints.
pub const MAX_BODY: usize = 64 * 1024;
/// An oversized body is read (and dropped) up to this size before the 413,
/// so the client sees the answer instead of a reset connection.
const MAX_DRAIN: usize = 1024 * 1024;
/// Parameters that may repeat (RFC 8707 `resource`, RFC 8693 `audience`).
const REPEATABLE: &[&str] = &["resource", "audience"];

#[derive(Debug, Default)]
pub struct Form {
    params: BTreeMap<String, Vec<String>>,
}

impl Form {
    /// Reads and parses the body of a form POST.
    pub async fn read(headers: &HeaderMap, body: Body) -> Result<Self, OAuthError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ));
        }
        Self::parse(&read_bounded(body).await?)
    }

    /// Parses a query string, bounded like a body.
    pub fn from_query(query: Option<&str>) -> Result<Self, OAuthError> {
        let query = query.unwrap_or_default();
        if query.len() > MAX_BODY {
            return Err(OAuthError::TooLarge);
        }
        Self::parse(query.as_bytes())
    }

    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = decode(parts.next().unwrap_or_default())?;
            let value = decode(parts.next().unwrap_or_default())?;
            // RFC 6749 §3.1: a parameter without a value is as if omitted.
            if value.is_empty() {
                continue;
            }
            let repeatable = REPEATABLE.contains(&name.as_str());
            let values = params.entry(name).or_default();
            if !values.is_empty() && !repeatable {
                return Err(OAuthError::InvalidRequest("a parameter is repeated".into()));
            }
            values.push(value);
        }
        Ok(Self { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.params.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {name}").into()))
    }
}

async fn read_bounded(mut body: Body) -> Result<Vec<u8>, OAuthError> {
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| OAuthError::InvalidRequest("the body could not be read".into()))?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= MAX_BODY {
                bytes.extend_from_slice(&data);
            } else if seen > MAX_DRAIN {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(OAuthError::TooLarge);
    }
    Ok(bytes)
}

fn decode(raw: &[u8]) -> Result<String, OAuthError> {
    urlencoded::decode(raw).map_err(|_| OAuthError::InvalidRequest("the body is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_skips_empty_values() {
        let form = Form::parse(b"grant_type=client_credentials&scope=a+b%3Ac&audience=&x").unwrap();
        assert_eq!(form.get("grant_type"), Some("client_credentials"));
        assert_eq!(form.get("scope"), Some("a b:c"));
        assert_eq!(form.get("audience"), None);
        assert_eq!(form.get("x"), None);
    }

    #[test]
    fn repeats_only_where_allowed() {
        assert!(Form::parse(b"scope=a&scope=b").is_err());
        let form = Form::parse(b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb").unwrap();
        assert_eq!(form.all("resource").len(), 2);
    }

    #[test]
    fn refuses_non_utf8() {
        assert_eq!(
            Form::parse(b"scope=%FF").unwrap_err(),
            OAuthError::InvalidRequest("the body is not UTF-8".into())
        );
        assert!(Form::parse(&[b's', b'=', 0xC3]).is_err());
    }
}
