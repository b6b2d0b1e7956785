//! Signing in at an upstream OpenID Provider (an `oidc` IdentityProvider),
//! the parts without a protocol: the rules for its ID token (OpenID Connect
//! Core §3.1.3.7), the stable local subject, and the claim mapping by CEL.
//! The token server fetches discovery, keys, the token and UserInfo
//! (`token-server/src/upstream/`) and asks this module what they mean.
//!
//! The local `sub` of an upstream user is
//! `base64url(SHA-256(len(iss) ‖ iss ‖ len(sub) ‖ sub))` (lengths as 8-byte
//! big-endian numbers, 43 characters): stable while the upstream's issuer
//! and subject are, the same through every IdentityProvider naming that
//! issuer, and telling nothing of the upstream's own identifier.

use aws_lc_rs::digest::{SHA256, digest};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};
use tokenmesh_tokens::verify::{self, Expected, KeySet, VerifyError};

use crate::registry::{UpstreamOidc, reserved_for_users};

/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY: u64 = 60;
/// Claims taken as they are when a provider maps none.
pub const DEFAULT_CLAIMS: [&str; 7] = [
    "name",
    "given_name",
    "family_name",
    "preferred_username",
    "email",
    "email_verified",
    "picture",
];

/// Why a sign-in at the upstream does not count. The messages name no
/// token, code or secret: they may be logged.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream ID token: {0}")]
    IdToken(#[from] VerifyError),
    #[error("the upstream ID token's `{0}` is missing or malformed")]
    Claim(&'static str),
    #[error("the upstream ID token was issued in the future")]
    IssuedInFuture,
    #[error("the upstream ID token's nonce is not the one of this sign-in")]
    Nonce,
    #[error("the upstream ID token is for several audiences and its azp is not our client id")]
    AuthorizedParty,
    #[error("the upstream's UserInfo answers for another subject")]
    UserInfoSubject,
    #[error("the upstream claim `{0}` that names the user is missing")]
    Subject(String),
    #[error("the claim mapping `{claim}` failed: {message}")]
    Mapping { claim: String, message: String },
}

/// What the ID token of this sign-in must say.
#[derive(Debug, Clone, Copy)]
pub struct IdTokenRules<'a> {
    /// The upstream's issuer, exactly (the one discovery named).
    pub issuer: &'a str,
    /// Our client id at the upstream.
    pub client_id: &'a str,
    /// The nonce this sign-in sent.
    pub nonce: &'a str,
    pub now: u64,
}

/// Verifies an upstream ID token against the upstream's keys: the
/// algorithm comes from the key (never `none` or HMAC), `iss` exact, `aud`
/// naming our client id (and `azp` it when there are several), `exp` and
/// `iat` on the given clock, `sub` present, `nonce` the one sent.
pub fn verify_id_token(
    token: &str,
    keys: &KeySet,
    rules: &IdTokenRules<'_>,
) -> Result<Map<String, Value>, UpstreamError> {
    let expected = Expected {
        typ: None,
        issuers: &[rules.issuer],
        audiences: &[rules.client_id],
        require_exp: true,
        leeway: LEEWAY,
        now: rules.now,
    };
    let claims = verify::verify(token, keys, &expected)?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(UpstreamError::Claim("iat"))?;
    if iat > rules.now.saturating_add(LEEWAY) {
        return Err(UpstreamError::IssuedInFuture);
    }
    let sub = claims.get("sub").and_then(Value::as_str);
    if sub.is_none_or(|s| s.is_empty() || s.len() > 255) {
        return Err(UpstreamError::Claim("sub"));
    }
    let several = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == rules.client_id => {}
        None if !several => {}
        _ => return Err(UpstreamError::AuthorizedParty),
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !constant_time_eq(nonce.as_bytes(), rules.nonce.as_bytes()) {
        return Err(UpstreamError::Nonce);
    }
    Ok(claims)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The local `sub` of the upstream user `subject` at `issuer` (module header).
pub fn local_subject(issuer: &str, subject: &str) -> String {
    let mut input = Vec::with_capacity(16 + issuer.len() + subject.len());
    for part in [issuer, subject] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(digest(&SHA256, &input))
}

/// A person signed in at an upstream, as tokenmesh knows them.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamIdentity {
    /// The local `sub` ([`local_subject`]).
    pub subject: String,
    /// The upstream's value of the provider's `subjectClaim`.
    pub upstream_subject: String,
    /// The user's claims after mapping (never a reserved claim).
    pub claims: Map<String, Value>,
    /// The upstream's `auth_time`, when it said.
    pub auth_time: Option<u64>,
    /// How the person authenticated (RFC 8176): the upstream's `amr`, or
    /// `fed` (federated) when it named none that can be passed on.
    pub amr: Vec<String>,
}

/// Methods of an upstream `amr` passed on, at most.
pub const MAX_AMR: usize = 8;

/// The upstream ID token's `amr` as a short list of short method names
/// (RFC 8176 values are a few letters), or `["fed"]`: what the upstream
/// sends reaches our ID tokens, so nothing else is passed on.
fn methods(id_token: &Map<String, Value>) -> Vec<String> {
    let named: Vec<String> = match id_token.get("amr") {
        Some(Value::Array(values)) if values.len() <= MAX_AMR => values
            .iter()
            .filter_map(Value::as_str)
            .filter(|m| {
                (1..=32).contains(&m.len())
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if named.is_empty() {
        vec!["fed".to_owned()]
    } else {
        named
    }
}

/// The identity of a verified sign-in: the ID token's claims with the
/// UserInfo answer on top (whose `sub` must be the ID token's, OpenID
/// Connect Core §5.3.2), the local subject, and the claims the provider's
/// mappings make of them.
pub fn identity(
    provider: &UpstreamOidc,
    id_token: &Map<String, Value>,
    userinfo: Option<&Map<String, Value>>,
) -> Result<UpstreamIdentity, UpstreamError> {
    let mut claims = id_token.clone();
    if let Some(userinfo) = userinfo {
        if userinfo.get("sub") != id_token.get("sub") {
            return Err(UpstreamError::UserInfoSubject);
        }
        for (name, value) in userinfo {
            if !matches!(
                name.as_str(),
                "iss" | "aud" | "exp" | "iat" | "nonce" | "azp"
            ) {
                claims.insert(name.clone(), value.clone());
            }
        }
    }
    let upstream_subject = match claims.get(&provider.subject_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(UpstreamError::Subject(provider.subject_claim.clone())),
    };
    let mapped = if provider.claim_mappings.is_empty() {
        DEFAULT_CLAIMS
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), claims.get(*name)?.clone())))
            .collect()
    } else {
        map_claims(provider, &claims)?
    };
    Ok(UpstreamIdentity {
        subject: local_subject(&provider.issuer, &upstream_subject),
        upstream_subject,
        claims: mapped,
        auth_time: id_token.get("auth_time").and_then(Value::as_u64),
        amr: methods(id_token),
    })
}

/// Runs each mapping over `claims`; a `null` result leaves the claim out.
fn map_claims(
    provider: &UpstreamOidc,
    claims: &Map<String, Value>,
) -> Result<Map<String, Value>, UpstreamError> {
    let failed = |claim: &str, message: String| UpstreamError::Mapping {
        claim: claim.to_owned(),
        message,
    };
    let mut context = cel::Context::default();
    context
        .add_variable("claims", Value::Object(claims.clone()))
        .map_err(|e| failed("claims", e.to_string()))?;
    let mut mapped = Map::new();
    for (name, program) in &provider.claim_mappings {
        // Checked when the provider was applied; kept as a last guard.
        if reserved_for_users(name) {
            continue;
        }
        let value = program
            .execute(&context)
            .map_err(|e| failed(name, e.to_string()))?
            .json()
            .map_err(|e| failed(name, e.to_string()))?;
        if !value.is_null() {
            mapped.insert(name.clone(), value);
        }
    }
    Ok(mapped)
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
