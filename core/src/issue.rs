//! Issuing tokens: `client_credentials`, the tokens embedded in a new token,
//! and minting in the client's format (a signed JWT, or an opaque value
//! whose claims are stored).

use std::collections::BTreeMap;

use tokenmesh_crds::{GrantType, TokenFormat};
use tokenmesh_tokens::{
    claims::{AccessTokenClaims, Audience},
    secret::{SecretHash, random_id, random_token},
};

use crate::{
    error::OAuthError,
    plan::{self, TokenPlan},
    ports::{OpaqueTokens, Signer},
    registry::{Client, Registry},
};

/// Prefix of opaque tokens, so secret scanners can find leaked ones.
pub const OPAQUE_PREFIX: &str = "tmo_";

/// What a `client_credentials` request asks for.
#[derive(Debug, Default, Clone)]
pub struct ClientCredentialsRequest<'a> {
    /// The `scope` parameter; `None`: the client's named scopes.
    pub scope: Option<&'a str>,
    /// The `audience` and `resource` parameters; none: all of the client's.
    pub audiences: Vec<String>,
}

/// A minted token and what the response says about it.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub claims: AccessTokenClaims,
    pub format: TokenFormat,
}

/// The `client_credentials` grant: the client's own token.
pub async fn client_credentials(
    ports: &(impl Signer + OpaqueTokens),
    registry: &Registry,
    client: &Client,
    request: ClientCredentialsRequest<'_>,
    now: u64,
) -> Result<Issued, OAuthError> {
    if !client.grant_types.contains(&GrantType::ClientCredentials) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use this grant type".into(),
        ));
    }
    let scopes = plan::resolve_scopes(registry, client, request.scope, now)?;
    let audiences = plan::resolve_audiences(client, &request.audiences)?;
    let ttl = client.ttl.min(registry.server.max_ttl).as_secs();
    let mut claims = plan::claims(
        &registry.server.issuer,
        TokenPlan {
            client,
            subject: client.id.clone(),
            scopes,
            audiences,
            grant_id: None,
            now,
            ttl,
        },
    )?;
    embed(ports, registry, client, &mut claims, now)?;
    let access_token = mint(ports, registry, client, client.format, &claims).await?;
    tracing::debug!(client_id = %client.id, jti = %claims.jti, "token issued");
    Ok(Issued {
        access_token,
        expires_in: ttl,
        claims,
        format: client.format,
    })
}

/// Mints the token in `format`: a signed JWT, or an opaque value whose
/// digest and claims go to the store.
pub async fn mint(
    ports: &(impl Signer + OpaqueTokens),
    registry: &Registry,
    client: &Client,
    format: TokenFormat,
    claims: &AccessTokenClaims,
) -> Result<String, OAuthError> {
    match format {
        TokenFormat::Opaque => {
            let value = random_token().map_err(|_| OAuthError::Internal)?;
            let token = format!("{OPAQUE_PREFIX}{value}");
            ports
                .put_opaque_token(SecretHash::of(token.as_bytes()), claims)
                .await?;
            Ok(token)
        }
        TokenFormat::Jwt | TokenFormat::Jwe => {
            ports.sign_access_token(registry.algorithm_of(client), claims)
        }
    }
}

/// Issues, inside `outer`, the tokens its embed policies call for
/// (`embedded_tokens`: audience → JWT). Each has the policy's audience, no
/// broader scopes and no longer life than the outer token, and its grant.
pub fn embed(
    signer: &impl Signer,
    registry: &Registry,
    client: &Client,
    outer: &mut AccessTokenClaims,
    now: u64,
) -> Result<(), OAuthError> {
    let alg = registry.algorithm_of(client);
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
        let token = signer.sign_access_token(alg, &inner)?;
        tracing::debug!(policy = %embed.policy, audience = %embed.audience, jti = %inner.jti, "token embedded");
        outer.embedded_tokens.insert(embed.audience, token);
    }
    Ok(())
}
