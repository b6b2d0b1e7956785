//! The SSO session (server-side, in the store, so replicas share it) and
//! the cookies of the sign-in pages: `HttpOnly`, `SameSite=Lax`, `Secure`
//! unless the issuer is on loopback; a double-submit CSRF token on every
//! form.

use axum::http::{HeaderMap, HeaderValue, header};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokenmesh_core::OAuthError;
use tokenmesh_tokens::secret::{SecretHash, random_id, random_token};

use crate::{state::AppState, store::SsoSession};

pub const SESSION_COOKIE: &str = "tokenmesh_session";
pub const CSRF_COOKIE: &str = "tokenmesh_csrf";
/// The form field that must equal the CSRF cookie.
pub const CSRF_FIELD: &str = "csrf_token";
/// A session ends this long after sign-in, whatever happens.
pub const SESSION_TTL: u64 = 10 * 3600;
/// A session unused this long ends.
pub const SESSION_IDLE: u64 = 3600;
/// Longest cookie value read.
const MAX_COOKIE: usize = 256;

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty() && value.len() <= MAX_COOKIE)
}

/// A `Set-Cookie` value; `max_age` 0 deletes the cookie.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if on_loopback(&state.endpoints.token) {
        ""
    } else {
        "; Secure"
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn on_loopback(url: &str) -> bool {
    ["http://127.0.0.1", "http://[::1]", "http://localhost"]
        .iter()
        .any(|prefix| {
            url.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('/'))
        })
}

/// The CSRF token of this browser, and the cookie to set when it is new.
pub fn csrf_token(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Option<HeaderValue>), OAuthError> {
    if let Some(token) = cookie(headers, CSRF_COOKIE) {
        return Ok((token.to_owned(), None));
    }
    let token = random_token().map_err(|_| OAuthError::Internal)?;
    let set = set_cookie(state, CSRF_COOKIE, &token, SESSION_TTL);
    Ok((token, Some(set)))
}

/// Whether a form's CSRF token is this browser's (constant time).
pub fn csrf_matches(headers: &HeaderMap, presented: Option<&str>) -> bool {
    match (cookie(headers, CSRF_COOKIE), presented) {
        (Some(cookie), Some(presented)) => {
            bool::from(cookie.as_bytes().ct_eq(presented.as_bytes()))
        }
        _ => false,
    }
}

/// The browser's session, if it has one that has not ended; its idle end
/// moves forward.
pub async fn current(
    state: &AppState,
    headers: &HeaderMap,
    now: u64,
) -> Result<Option<SsoSession>, OAuthError> {
    let Some(value) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let hash = SecretHash::of(value.as_bytes());
    let Some(session) = state.store.session(&hash).await? else {
        return Ok(None);
    };
    if session.expires_at <= now || session.idle_expires_at <= now {
        return Ok(None);
    }
    let idle = now.saturating_add(SESSION_IDLE).min(session.expires_at);
    // Once a minute at most: a page load is not a write.
    if idle > session.idle_expires_at.saturating_add(60) {
        state.store.touch_session(&hash, idle).await?;
    }
    Ok(Some(session))
}

/// A new session for a user who just signed in (who authenticated at
/// `auth_time`); the cookie to set.
pub async fn start(
    state: &AppState,
    subject: &str,
    idp: &str,
    amr: &[&str],
    claims: &Map<String, Value>,
    auth_time: u64,
    now: u64,
) -> Result<(SsoSession, HeaderValue), OAuthError> {
    let value = random_token().map_err(|_| OAuthError::Internal)?;
    let session = SsoSession {
        hash: SecretHash::of(value.as_bytes()),
        sid: random_id().map_err(|_| OAuthError::Internal)?,
        subject: subject.to_owned(),
        idp: idp.to_owned(),
        auth_time,
        amr: amr.join(" "),
        expires_at: now.saturating_add(SESSION_TTL),
        idle_expires_at: now.saturating_add(SESSION_IDLE),
        claims: serde_json::to_string(claims).map_err(|_| OAuthError::Internal)?,
    };
    state.store.put_session(&session).await?;
    Ok((
        session,
        set_cookie(state, SESSION_COOKIE, &value, SESSION_TTL),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name_and_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tokenmesh_csrf=abc; b=2"),
        );
        assert_eq!(cookie(&headers, CSRF_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert!(csrf_matches(&headers, Some("abc")));
        assert!(!csrf_matches(&headers, Some("abd")));
        assert!(!csrf_matches(&headers, None));
        assert!(!csrf_matches(&HeaderMap::new(), Some("abc")));
    }

    #[test]
    fn loopback_issuers_get_no_secure_flag() {
        assert!(on_loopback("http://127.0.0.1:8080/oauth2/token"));
        assert!(on_loopback("http://[::1]/oauth2/token"));
        assert!(!on_loopback("https://login.example/oauth2/token"));
        assert!(!on_loopback("http://127.0.0.1.evil.example/oauth2/token"));
    }
}
