//! Deciding what a token says: its scopes, audiences, lifetime and claims.

use std::collections::BTreeMap;

use serde_json::Map;
use tokenmesh_tokens::{
    claims::{AccessTokenClaims, Audience},
    scope,
    secret::random_id,
};

use crate::{
    error::OAuthError,
    registry::{Client, Registry, ScopeDef},
};

const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 256;

/// A scope granted, with the unix time it stops counting if it expires early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedScope {
    pub name: String,
    pub expires_at: Option<u64>,
}

/// Scopes for a request: the requested ones (each defined and allowed for
/// the client), or by default the client's named scopes.
pub fn resolve_scopes(
    registry: &Registry,
    client: &Client,
    requested: Option<&str>,
    now: u64,
) -> Result<Vec<GrantedScope>, OAuthError> {
    let names: Vec<String> = match requested {
        None => client
            .scopes
            .iter()
            .filter(|s| registry.find_scope(s).is_some())
            .cloned()
            .collect(),
        Some(text) => requested_scopes(text)?,
    };
    let mut granted: Vec<GrantedScope> = Vec::with_capacity(names.len());
    for name in names {
        let def = registry.find_scope(&name).ok_or_else(|| {
            OAuthError::InvalidScope(format!("unknown scope {}", printable(&name)).into())
        })?;
        let allowed = client.scopes.iter().any(|s| s == def_text(def));
        if !allowed {
            return Err(OAuthError::InvalidScope(
                format!("scope {} is not allowed for this client", printable(&name)).into(),
            ));
        }
        if granted.iter().all(|g| g.name != name) {
            let expires_at = def.ttl.map(|ttl| now.saturating_add(ttl.as_secs()));
            granted.push(GrantedScope { name, expires_at });
        }
    }
    Ok(granted)
}

/// A requested `scope` parameter, split strictly (RFC 6749 §3.3) and bounded.
pub fn requested_scopes(text: &str) -> Result<Vec<String>, OAuthError> {
    let names: Vec<String> = scope::split(text)
        .map_err(|err| OAuthError::InvalidScope(err.to_string().into()))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    check_requested_scopes(&names)?;
    Ok(names)
}

/// Bounds requested scopes, and refuses any that is not a scope-token
/// (gRPC sends them as a list, unsplit).
pub fn check_requested_scopes(names: &[String]) -> Result<(), OAuthError> {
    if names.len() > MAX_SCOPES {
        return Err(OAuthError::InvalidScope("too many scopes".into()));
    }
    if names.iter().any(|name| name.len() > MAX_SCOPE_LEN) {
        return Err(OAuthError::InvalidScope("a scope is too long".into()));
    }
    if !names.iter().all(|name| scope::is_scope_token(name)) {
        return Err(OAuthError::InvalidScope(
            scope::InvalidScope.to_string().into(),
        ));
    }
    Ok(())
}

fn def_text(def: &ScopeDef) -> &str {
    def.pattern.text()
}

/// Quotes a client-supplied value for an error message, bounded.
pub(crate) fn printable(value: &str) -> String {
    let short: String = value.chars().take(64).filter(|c| !c.is_control()).collect();
    format!("`{short}`")
}

/// Audiences for a request (`audience` and `resource` parameters): each
/// must be one of the client's; none asked means all of them.
pub fn resolve_audiences(client: &Client, requested: &[String]) -> Result<Vec<String>, OAuthError> {
    if requested.is_empty() {
        return Ok(client.audiences.clone());
    }
    let mut audiences = Vec::with_capacity(requested.len());
    for aud in requested {
        if !client.audiences.contains(aud) {
            return Err(OAuthError::InvalidTarget(
                format!("audience {} is not allowed for this client", printable(aud)).into(),
            ));
        }
        if !audiences.contains(aud) {
            audiences.push(aud.clone());
        }
    }
    Ok(audiences)
}

/// Everything a new token says, before it is minted.
pub struct TokenPlan<'a> {
    pub client: &'a Client,
    pub subject: String,
    pub scopes: Vec<GrantedScope>,
    pub audiences: Vec<String>,
    pub grant_id: Option<String>,
    pub now: u64,
    pub ttl: u64,
}

pub fn claims(issuer: &str, plan: TokenPlan<'_>) -> Result<AccessTokenClaims, OAuthError> {
    let jti = random_id().map_err(|_| OAuthError::Internal)?;
    // A token that starts a grant names the grant after itself.
    let grant_id = plan.grant_id.unwrap_or_else(|| jti.clone());
    let exp = plan.now.saturating_add(plan.ttl);
    let scope_exp: BTreeMap<String, u64> = plan
        .scopes
        .iter()
        .filter_map(|s| {
            s.expires_at
                .filter(|at| *at < exp)
                .map(|at| (s.name.clone(), at))
        })
        .collect();
    let mut extra = Map::new();
    extra.extend(
        plan.client
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    Ok(AccessTokenClaims {
        iss: issuer.to_owned(),
        sub: plan.subject,
        aud: Audience::from_vec(plan.audiences),
        exp,
        iat: plan.now,
        nbf: plan.now,
        jti,
        client_id: plan.client.id.clone(),
        scope: plan
            .scopes
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        scope_exp,
        grant_id: Some(grant_id),
        act: None,
        may_act: plan.client.may_act.clone(),
        embedded_tokens: BTreeMap::new(),
        cnf: None,
        extra,
    })
}
