//! The tokens a sign-in grant issues: an access token whose subject is the
//! user (the same RFC 9068 JWT or opaque token as any, so it travels the
//! mesh as today), and for OpenID Connect an ID token.

use crate::{
    binding::{self, Holder},
    certificate::{self, ClientCertificate},
    error::OAuthError,
    issue::{self, Issued},
    plan::{self, GrantedScope, TokenPlan},
    ports::{IdTokenSigner, OpaqueTokens, Signer},
    registry::{Client, Registry},
};

use super::{claims::Target, grant::Authorization, id_token};

/// The access token of `authorization`, bound to `holder`'s DPoP key if
/// any, and to the client's TLS certificate as for any grant (RFC 8705 §3).
/// It carries the user's claims released to UserInfo, which reads them.
pub async fn access_token(
    ports: &(impl Signer + OpaqueTokens),
    registry: &Registry,
    client: &Client,
    authorization: &Authorization,
    proof: (&Holder, Option<&ClientCertificate>),
    now: u64,
) -> Result<Issued, OAuthError> {
    let (holder, certificate) = proof;
    let scopes = authorization
        .scopes
        .iter()
        .map(|name| GrantedScope {
            name: name.clone(),
            expires_at: registry
                .find_scope(name)
                .and_then(|def| def.ttl)
                .map(|ttl| now.saturating_add(ttl.as_secs())),
        })
        .collect();
    let ttl = client.ttl.min(registry.server.max_ttl).as_secs();
    let mut claims = plan::claims(
        &registry.server.issuer,
        TokenPlan {
            client,
            subject: authorization.subject.clone(),
            scopes,
            audiences: authorization.audiences.clone(),
            grant_id: Some(authorization.grant_id.clone()),
            now,
            ttl,
        },
    )?;
    for (name, value) in id_token::user_claims(authorization, Target::UserInfo) {
        claims.extra.entry(name).or_insert(value);
    }
    claims.cnf = binding::combine(
        certificate::confirmation(client, certificate, false)?,
        binding::bind(client, holder)?,
    );
    issue::embed(ports, registry, client, &mut claims, now)?;
    let access_token = issue::mint(ports, registry, client, client.format, &claims).await?;
    tracing::debug!(client_id = %client.id, jti = %claims.jti, "token issued to a user");
    Ok(Issued {
        access_token,
        expires_in: ttl,
        claims,
        format: client.format,
    })
}

/// The signed ID token of an OpenID Connect grant; `None` for plain OAuth.
pub fn id_token(
    ports: &impl IdTokenSigner,
    registry: &Registry,
    client: &Client,
    authorization: &Authorization,
    nonce: Option<&str>,
    access_token: &str,
    now: u64,
) -> Result<Option<String>, OAuthError> {
    if !authorization.is_oidc() {
        return Ok(None);
    }
    let algorithm = client.sign_in.id_token_algorithm;
    let mut claims = id_token::claims(
        &registry.server.issuer,
        authorization,
        nonce,
        Some(access_token),
        algorithm,
        client.sign_in.id_token_ttl.as_secs(),
        now,
    );
    claims.add_client_claims(&client.claims);
    ports.sign_id_token(algorithm, &claims).map(Some)
}
