//! Token exchange (RFC 8693), shared by the token endpoint and gRPC.

use tokenmesh_crds::TokenFormat;
use tokenmesh_tokens::claims::AccessTokenClaims;

use crate::{
    issue::{self, GrantedScope, TokenPlan},
    metrics::IssuedLabels,
    oauth::{active_claims, error::OAuthError},
    policy::{self, ActingParty, ExchangeRequest},
    registry::{Client, Registry},
    state::AppState,
};

pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

pub struct ExchangeParams<'a> {
    pub subject_token: &'a str,
    pub actor_token: Option<&'a str>,
    /// `None`: the one audience the policies open to this actor and subject.
    pub audience: Option<&'a str>,
    /// `None`: every scope the policy allows.
    pub scopes: Option<Vec<String>>,
    pub requested_token_type: Option<&'a str>,
}

pub struct Issued {
    pub access_token: String,
    pub issued_token_type: &'static str,
    pub expires_in: u64,
    pub scopes: Vec<String>,
}

/// The active claims of a presented token, or `invalid_grant`.
async fn presented(
    state: &AppState,
    token: &str,
    name: &'static str,
) -> Result<AccessTokenClaims, OAuthError> {
    match active_claims(state, token).await? {
        Some(claims) => Ok(claims),
        None => {
            tracing::debug!(
                parameter = name,
                "exchange refused: token not active (unknown, expired, revoked or forged)"
            );
            Err(OAuthError::InvalidGrant(
                format!("the {name} is not active").into(),
            ))
        }
    }
}

/// Exchanges a subject token for one for `audience`, as `client` acting.
#[tracing::instrument(name = "token exchange", skip_all, fields(client_id = %client.id, audience = params.audience, tokenmesh.policy = tracing::field::Empty))]
pub async fn exchange(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    params: ExchangeParams<'_>,
) -> Result<Issued, OAuthError> {
    if !client
        .grant_types
        .contains(&tokenmesh_crds::GrantType::TokenExchange)
    {
        tracing::debug!(client_id = %client.id, "exchange refused: the client lacks the token-exchange grant type");
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use token exchange".into(),
        ));
    }
    let (format, issued_token_type) = match params.requested_token_type {
        None | Some("") | Some(ACCESS_TOKEN_TYPE) => (client.format, ACCESS_TOKEN_TYPE),
        Some(JWT_TYPE) => (TokenFormat::Jwt, JWT_TYPE),
        Some(other) => {
            tracing::debug!(client_id = %client.id, requested_token_type = other, "exchange refused: requested_token_type not supported");
            return Err(OAuthError::InvalidRequest(
                "requested_token_type is not supported".into(),
            ));
        }
    };
    if let Some(scopes) = &params.scopes {
        issue::check_requested_scopes(scopes)?;
    }
    let subject = presented(state, params.subject_token, "subject_token").await?;
    let actor_claims = match params.actor_token {
        Some(token) => Some(presented(state, token, "actor_token").await?),
        None => None,
    };
    if let Some(actor) = &actor_claims
        && !policy::actor_token_identifies(actor, &client.id)
    {
        tracing::debug!(client_id = %client.id, actor_jti = %actor.jti, "exchange refused: the actor_token does not identify the calling client");
        return Err(OAuthError::InvalidGrant(
            "the actor_token must identify the calling client".into(),
        ));
    }
    let now = state.now();
    let audience = match params.audience {
        Some(audience) => audience.to_owned(),
        None => policy::sole_audience(registry, &subject, &client.id).inspect_err(|err| {
            tracing::debug!(client_id = %client.id, subject_jti = %subject.jti, reason = err.description(), "exchange refused");
        })?,
    };
    let request = ExchangeRequest {
        subject: &subject,
        actor: ActingParty {
            client_id: &client.id,
            sub: actor_claims
                .as_ref()
                .map_or(client.id.as_str(), |a| a.sub.as_str()),
            claims: actor_claims.as_ref(),
        },
        audience: &audience,
        scopes: params.scopes,
        now,
    };
    let decision = policy::decide(registry, &request).inspect_err(|err| {
        tracing::debug!(client_id = %client.id, subject_jti = %subject.jti, %audience, reason = err.description(), "exchange refused");
    })?;
    tracing::Span::current().record("tokenmesh.policy", decision.policy.as_str());
    let scopes = decision
        .scopes
        .iter()
        .map(|name| GrantedScope {
            name: name.clone(),
            expires_at: subject.scope_exp.get(name).copied(),
        })
        .collect();
    let mut claims = issue::claims(
        &registry.server.issuer,
        TokenPlan {
            client,
            subject: subject.sub.clone(),
            scopes,
            audiences: vec![audience.clone()],
            grant_id: subject.grant_id.clone(),
            now,
            ttl: decision.ttl,
        },
    )?;
    claims.act = Some(decision.act);
    claims.extra.extend(decision.claims);
    issue::embed(state, registry, client, &mut claims, now)?;
    let access_token = issue::mint(state, registry, client, format, &claims).await?;
    let label = if format == TokenFormat::Opaque {
        "opaque"
    } else {
        "jwt"
    };
    state
        .metrics
        .issued
        .get_or_create(&IssuedLabels {
            grant_type: "token_exchange",
            format: label,
        })
        .inc();
    tracing::debug!(client_id = %client.id, policy = %decision.policy, jti = %claims.jti, "token exchanged");
    Ok(Issued {
        access_token,
        issued_token_type,
        expires_in: decision.ttl,
        scopes: decision.scopes,
    })
}
