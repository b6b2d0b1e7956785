//! DPoP at the token endpoint (RFC 9449 §5) and at UserInfo (§7, with the
//! access token's hash `ath`): the proof in the `DPoP` header is verified
//! for this endpoint, its `jti` used once across every
//! replica (the store's `use_once` table, namespaced by the key's
//! thumbprint), its nonce checked when the TokenServer requires one. What it
//! proves goes to the core as a [`Holder`].

mod nonce;

use axum::http::HeaderMap;
use tokenmesh_core::{OAuthError, binding::Holder};
pub use tokenmesh_tokens::dpop::Request;
use tokenmesh_tokens::dpop::{self, Window};

use crate::state::AppState;

pub use nonce::NONCE_HEADER;

/// The request header carrying a proof.
pub const DPOP_HEADER: &str = "dpop";
/// How `use_once` keys DPoP proofs: no client id can begin so, since client
/// ids are names or `<namespace>/<name>`.
const REPLAY_NAMESPACE: &str = "dpop:";

/// The key the proof of this `method` request to `url` proves, or an empty
/// holder when there is no `DPoP` header.
pub async fn holder(
    state: &AppState,
    headers: &HeaderMap,
    method: &str,
    url: &str,
    require_nonce: bool,
) -> Result<Holder, OAuthError> {
    holder_of(state, &proofs(headers), method, url, require_nonce).await
}

/// The values of the `DPoP` headers.
fn proofs(headers: &HeaderMap) -> Vec<&[u8]> {
    headers
        .get_all(DPOP_HEADER)
        .iter()
        .map(|value| value.as_bytes())
        .collect()
}

/// The key the proof presented with `access_token` at a protected resource
/// of this server proves (RFC 9449 §7: `ath` required); an empty holder
/// when there is no `DPoP` header.
pub async fn holder_at_resource(
    state: &AppState,
    headers: &HeaderMap,
    request: Request<'_>,
    require_nonce: bool,
) -> Result<Holder, OAuthError> {
    verified(state, &proofs(headers), request, require_nonce).await
}

/// [`holder`] from the `DPoP` values however they came (HTTP headers, gRPC
/// metadata).
pub async fn holder_of(
    state: &AppState,
    values: &[&[u8]],
    method: &str,
    url: &str,
    require_nonce: bool,
) -> Result<Holder, OAuthError> {
    let request = Request {
        method,
        url,
        access_token: None,
    };
    verified(state, values, request, require_nonce).await
}

async fn verified(
    state: &AppState,
    values: &[&[u8]],
    request: Request<'_>,
    require_nonce: bool,
) -> Result<Holder, OAuthError> {
    let value = match values {
        [] => return Ok(Holder::default()),
        [one] => *one,
        _ => return Err(refused("send one DPoP header, not several")),
    };
    let proof = std::str::from_utf8(value)
        .ok()
        .filter(|proof| proof.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| refused("the DPoP header is not a JWT"))?;
    let now = state.now();
    let window = Window::default();
    let proof = dpop::verify(proof, &request, window, now).map_err(|err| {
        tracing::debug!(reason = %err, "DPoP proof refused");
        OAuthError::InvalidDpopProof(err.to_string().into())
    })?;
    if require_nonce && !nonce::is_current(state, proof.nonce.as_deref(), now) {
        tracing::debug!(
            had_nonce = proof.nonce.is_some(),
            "DPoP proof without a current nonce"
        );
        return Err(OAuthError::UseDpopNonce(nonce::current(state, now)?));
    }
    let replay_key = format!("{REPLAY_NAMESPACE}{}", proof.jkt);
    let until = window
        .accepted_until(proof.iat)
        .saturating_add(window.max_skew);
    if !state.store.use_once(&replay_key, &proof.jti, until).await? {
        tracing::debug!(jkt = %proof.jkt, "DPoP proof replayed");
        return Err(refused("the DPoP proof was used before: sign a new one"));
    }
    Ok(Holder {
        jkt: Some(proof.jkt),
        x5t_s256: None,
    })
}

/// A fresh nonce for a successful answer, when nonces are required.
pub fn fresh_nonce(state: &AppState, require_nonce: bool) -> Option<String> {
    require_nonce
        .then(|| nonce::current(state, state.now()).ok())
        .flatten()
}

/// `token_type` of a token issued to `holder` (RFC 9449 §5).
pub fn token_type(holder: &Holder) -> &'static str {
    if holder.jkt.is_some() {
        "DPoP"
    } else {
        "Bearer"
    }
}

fn refused(message: &'static str) -> OAuthError {
    OAuthError::InvalidDpopProof(message.into())
}
