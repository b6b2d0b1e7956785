//! Issuing tokens: `client_credentials`, the tokens embedded in a new token,
//! and minting in the client's format (a signed JWT, or an opaque value
//! whose claims are stored).

use std::collections::BTreeMap;

use tokenmesh_crds::{GrantType, TokenFormat};
use tokenmesh_tokens::{
    claims::{AccessTokenClaims, Audience},
    opaque,
    secret::random_id,
};

use crate::{
    binding::{self, Holder},
    certificate::{self, ClientCertificate},
    error::OAuthError,
    plan::{self, TokenPlan},
    ports::{OpaqueTokens, Signer},
    registry::{Client, Registry},
};

/// Prefix of opaque tokens, so secret scanners can find leaked ones.
pub const OPAQUE_PREFIX: &str = opaque::PREFIX;

/// What a `client_credentials` request asks for.
#[derive(Debug, Default, Clone)]
pub struct ClientCredentialsRequest<'a> {
    /// The `scope` parameter; `None`: the client's named scopes.
    pub scope: Option<&'a str>,
    /// The `audience` and `resource` parameters; none: all of the client's.
    pub audiences: Vec<String>,
    /// The TLS client certificate of the request, if any.
    pub certificate: Option<&'a ClientCertificate>,
    /// The key the caller proved (a DPoP proof), which the token is bound to.
    pub holder: Holder,
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
    let cnf = certificate::confirmation(client, request.certificate, false)?;
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
    claims.cnf = binding::combine(cnf, binding::bind(client, &request.holder)?);
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
#[tracing::instrument(name = "token issuance", skip_all, fields(client_id = %client.id, ?format))]
pub async fn mint(
    ports: &(impl Signer + OpaqueTokens),
    registry: &Registry,
    client: &Client,
    format: TokenFormat,
    claims: &AccessTokenClaims,
) -> Result<String, OAuthError> {
    match format {
        TokenFormat::Opaque => {
            let token = opaque::new_token(claims.iat).map_err(|_| OAuthError::Internal)?;
            ports.put_opaque_token(opaque::key(&token), claims).await?;
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
            cnf: None,
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testing::{FakePorts, ISSUER, NOW, client, doc, registry, scopes};

    fn gateway(extra: &str) -> Registry {
        registry(&(scopes() + &client("gateway", "orders, payments", extra)))
    }

    #[tokio::test]
    async fn client_credentials_plans_the_clients_defaults_and_signs() {
        let reg = gateway("  accessToken: {ttl: 120s}\n  claims: {tenant: acme}\n");
        let client = reg.client("gateway").unwrap();
        let ports = FakePorts::default();
        let issued = client_credentials(&ports, &reg, client, Default::default(), NOW)
            .await
            .unwrap();
        assert_eq!(
            issued.access_token,
            format!("signed.ES256.{}", issued.claims.jti)
        );
        let claims = ports.claims_of(&issued.access_token);
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.sub, "gateway");
        assert_eq!(claims.exp, NOW + 120);
        assert_eq!(issued.expires_in, 120);
        assert_eq!(
            claims.scope, "orders:read orders:write",
            "named scopes only"
        );
        assert_eq!(claims.aud.to_vec(), ["orders", "payments"]);
        assert_eq!(claims.grant_id.as_deref(), Some(claims.jti.as_str()));
        assert_eq!(claims.extra["tenant"], "acme");
    }

    #[tokio::test]
    async fn an_expiring_scope_carries_its_own_end() {
        let reg = gateway("");
        let ports = FakePorts::default();
        let request = ClientCredentialsRequest {
            scope: Some("video_7 orders:read"),
            audiences: vec!["orders".into()],

            ..Default::default()
        };
        let issued = client_credentials(&ports, &reg, reg.client("gateway").unwrap(), request, NOW)
            .await
            .unwrap();
        assert_eq!(issued.claims.scope_exp.get("video_7"), Some(&(NOW + 60)));
        assert_eq!(issued.claims.aud.to_vec(), ["orders"]);
    }

    #[tokio::test]
    async fn opaque_tokens_are_stored_by_digest_only() {
        let reg = gateway("  accessToken: {format: opaque}\n");
        let ports = FakePorts::default();
        let issued = client_credentials(
            &ports,
            &reg,
            reg.client("gateway").unwrap(),
            Default::default(),
            NOW,
        )
        .await
        .unwrap();
        assert!(issued.access_token.starts_with(OPAQUE_PREFIX));
        let stored = ports.opaque.lock().unwrap();
        assert_eq!(
            stored.get(&opaque::key(&issued.access_token)),
            Some(&issued.claims)
        );
        assert_eq!(stored.len(), 1, "nothing else: not the value");
    }

    #[tokio::test]
    async fn refusals_carry_their_rfc_error() {
        let reg = registry(
            &(scopes()
                + &doc(
                    "OAuthClient",
                    "exchanger",
                    "  clientId: exchanger\n  grantTypes: [\"urn:ietf:params:oauth:grant-type:token-exchange\"]\n  authentication: {method: client_secret_basic, secretRef: {name: s, key: k}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n",
                )
                + &client("gateway", "orders", "")),
        );
        let ports = FakePorts::default();
        let refused = |id: &str, scope: Option<&'static str>, audience: &str| {
            let request = ClientCredentialsRequest {
                scope,
                audiences: vec![audience.to_owned()],

                ..Default::default()
            };
            let reg = &reg;
            let ports = &ports;
            let id = id.to_owned();
            async move {
                client_credentials(ports, reg, reg.client(&id).unwrap(), request, NOW)
                    .await
                    .unwrap_err()
            }
        };
        assert!(matches!(
            refused("exchanger", None, "orders").await,
            OAuthError::UnauthorizedClient(_)
        ));
        assert!(matches!(
            refused("gateway", Some("orders:delete"), "orders").await,
            OAuthError::InvalidScope(_)
        ));
        assert!(matches!(
            refused("gateway", Some("a\tb"), "orders").await,
            OAuthError::InvalidScope(_)
        ));
        assert!(matches!(
            refused("gateway", None, "billing").await,
            OAuthError::InvalidTarget(_)
        ));
        assert!(
            ports.active.lock().unwrap().is_empty(),
            "nothing was minted"
        );
    }

    #[tokio::test]
    async fn embedded_tokens_are_narrower_and_shorter_than_the_outer_one() {
        let reg = registry(
            &(scopes()
                + &client("gateway", "orders", "  accessToken: {ttl: 300s}\n")
                + &client("orders", "payments", "")
                + &doc(
                    "ExchangePolicy",
                    "embed-payments",
                    "  mode: embed\n  from: {clients: [gateway]}\n  actor: {clients: [orders]}\n  to: {audience: payments, scopes: [\"orders:read\"]}\n  ttl: 60s\n",
                )),
        );
        let ports = FakePorts::default();
        let request = ClientCredentialsRequest {
            scope: Some("orders:read orders:write"),
            audiences: Vec::new(),

            ..Default::default()
        };
        let issued = client_credentials(&ports, &reg, reg.client("gateway").unwrap(), request, NOW)
            .await
            .unwrap();
        let inner = &issued.claims.embedded_tokens["payments"];
        let inner = ports.claims_of(inner);
        assert_eq!(inner.aud.to_vec(), ["payments"]);
        assert_eq!(inner.scope, "orders:read");
        assert_eq!(inner.exp, NOW + 60);
        assert_eq!(inner.sub, issued.claims.sub);
        assert_eq!(
            inner.grant_id, issued.claims.grant_id,
            "one grant: revoked together"
        );
        assert_ne!(inner.jti, issued.claims.jti);
    }
}
