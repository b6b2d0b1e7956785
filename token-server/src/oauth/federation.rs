//! Signing in at an upstream OpenID Provider (an `oidc` IdentityProvider)
//! from the login page. Its button posts back to the authorization endpoint
//! (`action=upstream`, with the CSRF token); [`start`] asks the upstream
//! for an authorization URL (`state`, `nonce`, PKCE), keeps the sign-in in
//! the store (`PendingSignIn`: the request, the digest of `state`, nonce,
//! verifier, provider; 10 minutes) so that any replica can take the
//! callback, and sends the browser there (303).
//!
//! The upstream sends the person back to [`callback`]
//! (`<issuer>/oauth2/callback`, registered there as our redirect URI). The
//! pending sign-in is taken once, by the digest of `state`, and counts only
//! in the browser that started it: the digest of its CSRF cookie must be
//! the one kept (compared in constant time), so a callback URL sent to
//! someone else signs nobody in (login CSRF). Then [`complete`] redeems the
//! code (ID token verified, UserInfo, claim mapping) and starts the SSO
//! session, and the authorization request goes on exactly as after a
//! password: consent, then the code to the client.
//!
//! A refusal at the upstream (`access_denied`) goes back to the client as
//! `access_denied`; an upstream that is down, answers another error, or
//! whose ID token does not verify, shows the login page again with a
//! message (502), and nothing is written but the taken pending sign-in's
//! removal. The reasons are logged; codes, tokens, nonces and verifiers
//! never are.

use std::sync::Arc;

use axum::{
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokenmesh_core::{
    OAuthError,
    registry::{Client, IdentityProvider, ProviderKind, Registry},
    signin::authorize::{AuthorizationRequest, AuthorizeParams},
};
use tokenmesh_tokens::secret::SecretHash;

use super::{
    authorize,
    form::Form,
    pages,
    session::{self, CSRF_COOKIE},
};
use crate::{
    state::AppState,
    store::{PendingSignIn, SsoSession},
};

/// How long a person has to sign in at the upstream and come back.
pub const PENDING_TTL: u64 = 600;

/// An upstream's answer at the callback, with the sign-in it belongs to.
pub struct Callback {
    pending: PendingSignIn,
    answer: Answer,
    /// RFC 9207 `iss`, when the upstream sends it.
    iss: Option<String>,
}

enum Answer {
    Code(String),
    /// The upstream's `error`.
    Error(String),
}

/// Why a sign-in at an upstream did not happen, and where that sends the user.
pub enum Refusal {
    /// The person refused at the upstream: `access_denied` to the client.
    Denied,
    /// The upstream (of this display name) could not sign the person in:
    /// the login page again, with a message.
    Failed(String),
    /// An error page.
    Page(StatusCode, &'static str),
    /// An error to the client (the store failed).
    OAuth(OAuthError),
}

impl From<OAuthError> for Refusal {
    fn from(err: OAuthError) -> Self {
        Self::OAuth(err)
    }
}

const STALE: &str =
    "This sign-in has expired or was already used. Go back to the application and sign in again.";

/// The client's `oidc` provider `key`.
fn provider_of<'a>(
    registry: &'a Registry,
    client: &'a Client,
    key: Option<&str>,
) -> Result<&'a Arc<IdentityProvider>, Refusal> {
    registry
        .identity_providers_of(client)
        .find(|p| Some(p.key.as_str()) == key && matches!(p.kind, ProviderKind::Oidc(_)))
        .ok_or(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "This application does not offer that way to sign in. Go back to the application and sign in again.",
        ))
}

/// The login page's button for an upstream provider: the sign-in kept
/// pending in the store, the browser sent to the upstream.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
    params: &AuthorizeParams,
    request: &AuthorizationRequest,
    csrf: &str,
    now: u64,
) -> Result<Response, Refusal> {
    let provider = provider_of(registry, client, form.get("idp"))?;
    let failed = |reason: &dyn std::fmt::Display| {
        tracing::warn!(client_id = %client.id, idp = %provider.key, %reason, "sign-in at the upstream could not start");
        Refusal::Failed(provider.display_name.clone())
    };
    // What the client asked of the sign-in, asked of the upstream too.
    let max_age = request.max_age.map(|m| m.to_string());
    let mut extra = Vec::new();
    if request.prompt.login {
        extra.push(("prompt", "login"));
    }
    if let Some(max_age) = &max_age {
        extra.push(("max_age", max_age.as_str()));
    }
    if let Some(hint) = &request.login_hint {
        extra.push(("login_hint", hint.as_str()));
    }
    let upstream = state
        .upstreams
        .of(provider, &state.clock)
        .map_err(|e| failed(&e))?;
    let started = upstream
        .start(&state.endpoints.callback, &extra)
        .await
        .map_err(|e| failed(&e))?;
    let request_query = serde_urlencoded::to_string(authorize::fields(params, false))
        .map_err(|_| OAuthError::Internal)?;
    let pending = PendingSignIn {
        state_hash: SecretHash::of(started.state.as_bytes()),
        browser_hash: SecretHash::of(csrf.as_bytes()),
        provider: provider.key.clone(),
        nonce: started.nonce,
        verifier: started.verifier,
        request: request_query,
        created_at: now,
        expires_at: now.saturating_add(PENDING_TTL),
    };
    state
        .store
        .put_pending_sign_in(&pending)
        .await
        .map_err(OAuthError::from)?;
    tracing::debug!(client_id = %client.id, idp = %provider.key, "sent to the upstream to sign in");
    let mut response = StatusCode::SEE_OTHER.into_response();
    let location = HeaderValue::from_str(&started.url).map_err(|_| OAuthError::Internal)?;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /oauth2/callback`: the upstream's answer. The pending sign-in is
/// taken (once), checked against this browser, and the authorization
/// request it kept goes on with the answer.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(form) = Form::from_query(query.as_deref()) else {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "The answer of the identity provider is not valid.",
        );
    };
    // Ours are base64url of 32 random bytes: anything else was never issued here,
    // and is refused before it costs a store round trip.
    let Some(upstream_state) = form.get("state").filter(|s| is_our_state(s)) else {
        return pages::error(StatusCode::BAD_REQUEST, STALE);
    };
    let now = state.now();
    let hash = SecretHash::of(upstream_state.as_bytes());
    let pending = match state.store.take_pending_sign_in(&hash, now).await {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            tracing::info!("a callback for an unknown, used or expired sign-in: refused");
            return pages::error(StatusCode::BAD_REQUEST, STALE);
        }
        Err(err) => {
            tracing::warn!(error = %err, "the pending sign-in could not be read");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is not possible just now. Try again in a moment.",
            );
        }
    };
    let this_browser = session::cookie(&headers, CSRF_COOKIE)
        .is_some_and(|cookie| pending.browser_hash.matches(cookie.as_bytes()));
    if !this_browser {
        tracing::info!(idp = %pending.provider, "a callback in another browser than the one that started the sign-in: refused");
        return pages::error(
            StatusCode::FORBIDDEN,
            "This sign-in was started in another browser. Go back to the application and sign in again.",
        );
    }
    let answer = match (form.get("error"), form.get("code")) {
        (Some(error), _) => Answer::Error(error.to_owned()),
        (None, Some(code)) => Answer::Code(code.to_owned()),
        (None, None) => Answer::Error(String::new()),
    };
    let Ok(request) = Form::from_query(Some(&pending.request)) else {
        return pages::error(StatusCode::INTERNAL_SERVER_ERROR, STALE);
    };
    let back = Callback {
        pending,
        answer,
        iss: form.get("iss").map(str::to_owned),
    };
    authorize::resume(&state, &headers, &request, back).await
}

/// Whether `state` could be one this server sent (`Upstream::start`:
/// base64url of 32 random bytes).
fn is_our_state(state: &str) -> bool {
    state.len() == (tokenmesh_tokens::secret::RANDOM_BYTES * 4).div_ceil(3)
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An `error` code as it may be logged: an OAuth error code's characters only.
fn printable(error: &str) -> &str {
    if (1..=64).contains(&error.len()) && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        error
    } else {
        "(malformed)"
    }
}

/// Redeems the upstream's code (ID token verified, UserInfo, claim
/// mapping) and starts the person's SSO session: `amr` the upstream's (or
/// `fed`), `auth_time` the upstream's when it said one.
pub async fn complete(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    back: &Callback,
    now: u64,
) -> Result<(SsoSession, HeaderValue), Refusal> {
    let provider = provider_of(registry, client, Some(&back.pending.provider))?;
    let failed = |reason: &dyn std::fmt::Display| {
        tracing::warn!(client_id = %client.id, idp = %provider.key, %reason, "sign-in at the upstream failed");
        Refusal::Failed(provider.display_name.clone())
    };
    // RFC 9207: an answer (a refusal too) that names another issuer is not
    // this provider's, whatever it says.
    if let (Some(iss), ProviderKind::Oidc(oidc)) = (&back.iss, &provider.kind)
        && *iss != oidc.issuer
    {
        return Err(failed(&"the answer names another issuer (RFC 9207)"));
    }
    let code = match &back.answer {
        Answer::Error(error) if error == "access_denied" => {
            tracing::info!(client_id = %client.id, idp = %provider.key, "the user refused at the upstream");
            return Err(Refusal::Denied);
        }
        Answer::Error(error) if error.is_empty() => return Err(failed(&"the answer has no code")),
        Answer::Error(error) => {
            return Err(failed(&format_args!(
                "the upstream answered {}",
                printable(error)
            )));
        }
        Answer::Code(code) => code,
    };
    let upstream = state
        .upstreams
        .of(provider, &state.clock)
        .map_err(|e| failed(&e))?;
    let identity = upstream
        .complete(
            code,
            &back.pending.verifier,
            &back.pending.nonce,
            &state.endpoints.callback,
        )
        .await
        .map_err(|e| failed(&e))?;
    let auth_time = identity.auth_time.filter(|t| *t <= now).unwrap_or(now);
    let amr: Vec<&str> = identity.amr.iter().map(String::as_str).collect();
    let (session, cookie) = session::start(
        state,
        &identity.subject,
        &provider.key,
        &amr,
        &identity.claims,
        auth_time,
        now,
    )
    .await?;
    tracing::info!(client_id = %client.id, idp = %provider.key, sid = %session.sid, "user signed in at the upstream");
    Ok((session, cookie))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_error_codes_reach_the_log() {
        assert_eq!(super::printable("access_denied"), "access_denied");
        assert_eq!(super::printable("x\ny=1"), "(malformed)");
        assert_eq!(super::printable(&"a".repeat(65)), "(malformed)");
    }
}
