//! Deciding what a token says (scopes, audiences, lifetime) and minting it
//! as a JWT or an opaque token.

use std::collections::BTreeMap;

use serde_json::Map;
use tokenmesh_crds::TokenFormat;
use tokenmesh_tokens::{
    claims::{ACCESS_TOKEN_TYP, AccessTokenClaims, Audience},
    scope,
    secret::{SecretHash, random_id, random_token},
};

use crate::{
    keys::jose_algorithm,
    oauth::error::OAuthError,
    registry::{Client, Registry},
    state::AppState,
    store::OpaqueToken,
};

const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 256;
/// Prefix of opaque tokens, so secret scanners can find leaked ones.
pub const OPAQUE_PREFIX: &str = "tmo_";

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

fn def_text(def: &crate::registry::ScopeDef) -> &str {
    match &def.pattern {
        crate::registry::ScopePattern::Name(s) | crate::registry::ScopePattern::Prefix(s) => s,
    }
}

/// Quotes a client-supplied value for an error message, bounded.
fn printable(value: &str) -> String {
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
        extra,
    })
}

/// Mints the token in the client's format: a signed JWT, or an opaque value
/// whose digest and claims go to the store.
#[tracing::instrument(name = "token issuance", skip_all, fields(client_id = %client.id, ?format))]
pub async fn mint(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    format: TokenFormat,
    claims: &AccessTokenClaims,
) -> Result<String, OAuthError> {
    match format {
        TokenFormat::Opaque => {
            let value = random_token().map_err(|_| OAuthError::Internal)?;
            let token = format!("{OPAQUE_PREFIX}{value}");
            let record = OpaqueToken {
                hash: SecretHash::of(token.as_bytes()),
                jti: claims.jti.clone(),
                client_id: claims.client_id.clone(),
                grant_id: claims.grant_id.clone().unwrap_or_default(),
                expires_at: claims.exp,
                claims: serde_json::to_string(claims).map_err(|_| OAuthError::Internal)?,
            };
            state.store.put_opaque_token(&record).await?;
            Ok(token)
        }
        TokenFormat::Jwt | TokenFormat::Jwe => sign(
            state,
            jose_algorithm(registry.algorithm_of(client)),
            ACCESS_TOKEN_TYP,
            claims,
        ),
    }
}

/// Signs `claims` with the current key of `alg`.
pub fn sign<T: serde::Serialize>(
    state: &AppState,
    alg: tokenmesh_tokens::Algorithm,
    typ: &str,
    claims: &T,
) -> Result<String, OAuthError> {
    let keys = state.keys.snapshot();
    let key = keys.signer(alg).ok_or_else(|| {
        tracing::error!(?alg, "no signing key for the algorithm");
        OAuthError::Internal
    })?;
    key.sign_jwt(typ, claims).map_err(|err| {
        tracing::error!(error = %err, "signing failed");
        OAuthError::Internal
    })
}

/// Issues, inside `outer`, the tokens its embed policies call for
/// (`embedded_tokens`: audience → JWT). Each has the policy's audience, no
/// broader scopes and no longer life than the outer token, and its grant.
pub fn embed(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    outer: &mut AccessTokenClaims,
    now: u64,
) -> Result<(), OAuthError> {
    let alg = jose_algorithm(registry.algorithm_of(client));
    for embed in crate::policy::embeds(registry, outer, now)? {
        let inner = AccessTokenClaims {
            jti: random_id().map_err(|_| OAuthError::Internal)?,
            aud: Audience::One(embed.audience.clone()),
            exp: now.saturating_add(embed.ttl).min(outer.exp),
            scope: embed.scopes.join(" "),
            scope_exp: outer
                .scope_exp
                .iter()
                .filter(|(s, _)| embed.scopes.contains(s))
                .map(|(s, e)| (s.clone(), *e))
                .collect(),
            embedded_tokens: BTreeMap::new(),
            extra: outer
                .extra
                .clone()
                .into_iter()
                .chain(embed.claims)
                .collect(),
            ..outer.clone()
        };
        let token = sign(state, alg, ACCESS_TOKEN_TYP, &inner)?;
        tracing::debug!(policy = %embed.policy, audience = %embed.audience, jti = %inner.jti, "token embedded");
        outer.embedded_tokens.insert(embed.audience, token);
    }
    Ok(())
}
