//! Token exchange (RFC 8693), shared by the token endpoint and gRPC.

use tokenmesh_crds::TokenFormat;
use tokenmesh_tokens::claims::AccessTokenClaims;

use crate::{
    binding::{self, Holder},
    certificate::{self, ClientCertificate},
    error::OAuthError,
    issue,
    plan::{self, GrantedScope, TokenPlan},
    policy::{self, ActingParty, ExchangeRequest},
    ports::{OpaqueTokens, PresentedTokens, Signer},
    registry::{Client, Registry},
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
    /// The calling client's TLS certificate, if it presented one: bound
    /// subject and actor tokens must be its, and the new token is bound to it.
    pub certificate: Option<&'a ClientCertificate>,
    /// The key the caller proved: a DPoP-bound subject or actor token needs
    /// it, and the new token is bound to it.
    pub holder: Holder,
}

#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub issued_token_type: &'static str,
    pub expires_in: u64,
    pub scopes: Vec<String>,
    /// The format minted, for the caller's count.
    pub format: TokenFormat,
    /// The policy that admitted the exchange.
    pub policy: String,
}

/// The active claims of a presented token, or `invalid_grant`.
async fn presented(
    tokens: &impl PresentedTokens,
    token: &str,
    name: &'static str,
) -> Result<AccessTokenClaims, OAuthError> {
    match tokens.active_claims(token).await? {
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

/// Exchanges a subject token for one for `audience`, as `client` acting, at
/// `now` (unix seconds).
#[tracing::instrument(name = "token exchange", skip_all, fields(client_id = %client.id, audience = params.audience, tokenmesh.policy = tracing::field::Empty))]
pub async fn exchange(
    ports: &(impl PresentedTokens + Signer + OpaqueTokens),
    registry: &Registry,
    client: &Client,
    params: ExchangeParams<'_>,
    now: u64,
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
        plan::check_requested_scopes(scopes)?;
    }
    let subject = presented(ports, params.subject_token, "subject_token").await?;
    certificate::check_holder(&subject, params.certificate, "subject_token")?;
    let cnf = binding::combine(
        certificate::confirmation(client, params.certificate, true)?,
        binding::bind(client, &params.holder)?,
    );
    let holder = binding::check_subject(&subject, &params.holder, &client.id, cnf.is_some())?;
    let actor_claims = match params.actor_token {
        Some(token) => Some(presented(ports, token, "actor_token").await?),
        None => None,
    };
    if let Some(actor) = &actor_claims {
        certificate::check_holder(actor, params.certificate, "actor_token")?;
        binding::check_holder(actor.cnf.as_ref(), &params.holder, "actor_token")?;
    }
    if let Some(actor) = &actor_claims
        && !policy::actor_token_identifies(actor, &client.id)
    {
        tracing::debug!(client_id = %client.id, actor_jti = %actor.jti, "exchange refused: the actor_token does not identify the calling client");
        return Err(OAuthError::InvalidGrant(
            "the actor_token must identify the calling client".into(),
        ));
    }
    let audience = match params.audience {
        Some(audience) => audience.to_owned(),
        None => policy::sole_audience(registry, &subject, &client.id, holder).inspect_err(|err| {
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
        holder,
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
    let mut claims = plan::claims(
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
    claims.cnf = cnf;
    issue::embed(ports, registry, client, &mut claims, now)?;
    let access_token = issue::mint(ports, registry, client, format, &claims).await?;
    tracing::debug!(client_id = %client.id, policy = %decision.policy, jti = %claims.jti, "token exchanged");
    Ok(Issued {
        access_token,
        issued_token_type,
        expires_in: decision.ttl,
        scopes: decision.scopes,
        format,
        policy: decision.policy,
    })
}

#[cfg(test)]
mod tests_support {
    pub(super) use super::tests::{mesh, params, subject};
    pub(super) use crate::testing::{FakePorts, NOW};
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokenmesh_tokens::claims::{Actor, Audience};

    use super::*;
    use crate::testing::{FakePorts, ISSUER, NOW, client, doc, registry, scopes};

    pub(super) fn mesh() -> Registry {
        registry(
            &(scopes()
                + &client("gateway", "orders", "")
                + &client("orders", "payments", "")
                + &doc(
                    "OAuthClient",
                    "no-exchange",
                    "  clientId: no-exchange\n  authentication: {method: client_secret_basic, secretRef: {name: s, key: k}}\n  scopes: [\"orders:read\"]\n  audiences: [payments]\n",
                )
                + &doc(
                    "ExchangePolicy",
                    "orders-to-payments",
                    "  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders]}\n  to: {audience: payments, scopes: [\"orders:read\"]}\n  ttl: 120s\n",
                )),
        )
    }

    pub(super) fn subject(exp: u64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: Audience::One("orders".into()),
            exp,
            iat: NOW - 10,
            nbf: NOW - 10,
            jti: "subject-jti".into(),
            client_id: "gateway".into(),
            scope: "orders:read orders:write".into(),
            scope_exp: BTreeMap::new(),
            grant_id: Some("grant-1".into()),
            act: None,
            may_act: None,
            embedded_tokens: BTreeMap::new(),
            cnf: None,
            extra: serde_json::Map::new(),
        }
    }

    pub(super) fn params(subject: &str) -> ExchangeParams<'_> {
        ExchangeParams {
            subject_token: subject,
            actor_token: None,
            audience: Some("payments"),
            scopes: None,
            requested_token_type: None,
            certificate: None,
            holder: Holder::default(),
        }
    }

    /// `orders` exchanges the token presented as `subject` for `payments`.
    async fn exchange_as_orders(ports: &FakePorts, reg: &Registry) -> Issued {
        let orders = reg.client("orders").unwrap();
        exchange(ports, reg, orders, params("subject"), NOW)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_new_token_keeps_the_subject_and_grant_and_names_the_actor() {
        let reg = mesh();
        let ports = FakePorts::default();
        ports.present("subject", subject(NOW + 3600));
        let issued = exchange_as_orders(&ports, &reg).await;
        assert_eq!(issued.policy, "orders-to-payments");
        assert_eq!(issued.issued_token_type, ACCESS_TOKEN_TYPE);
        assert_eq!(issued.scopes, ["orders:read"], "narrowed to the policy");
        assert_eq!(issued.expires_in, 120);
        let claims = ports.claims_of(&issued.access_token);
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.client_id, "orders");
        assert_eq!(claims.aud, Audience::One("payments".into()));
        assert_eq!(
            claims.grant_id.as_deref(),
            Some("grant-1"),
            "revoked with its grant"
        );
        assert_eq!(claims.exp, NOW + 120);
        assert_eq!(
            claims.act,
            Some(Actor {
                sub: "orders".into(),
                client_id: Some("orders".into()),
                act: None
            })
        );
    }

    #[tokio::test]
    async fn the_new_token_never_outlives_the_subject_token() {
        let reg = mesh();
        let ports = FakePorts::default();
        ports.present("subject", subject(NOW + 30));
        let issued = exchange_as_orders(&ports, &reg).await;
        assert_eq!(issued.expires_in, 30);
        assert_eq!(ports.claims_of(&issued.access_token).exp, NOW + 30);
    }

    #[tokio::test]
    async fn refusals_carry_their_rfc_error() {
        let reg = mesh();
        let ports = FakePorts::default();
        ports.present("subject", subject(NOW + 3600));
        let run = |client: &'static str, params: ExchangeParams<'static>| {
            let (reg, ports) = (&reg, &ports);
            async move {
                exchange(ports, reg, reg.client(client).unwrap(), params, NOW)
                    .await
                    .unwrap_err()
            }
        };
        assert!(matches!(
            run("no-exchange", params("subject")).await,
            OAuthError::UnauthorizedClient(_)
        ));
        assert!(matches!(
            run("orders", params("unknown")).await,
            OAuthError::InvalidGrant(_)
        ));
        assert!(
            matches!(
                run("gateway", params("subject")).await,
                OAuthError::UnauthorizedClient(_)
            ),
            "not the policy's actor"
        );
        let mut elsewhere = params("subject");
        elsewhere.audience = Some("billing");
        assert!(matches!(
            run("orders", elsewhere).await,
            OAuthError::InvalidTarget(_)
        ));
        let mut broader = params("subject");
        broader.scopes = Some(vec!["orders:write".into()]);
        assert!(matches!(
            run("orders", broader).await,
            OAuthError::InvalidScope(_)
        ));
        let mut saml = params("subject");
        saml.requested_token_type = Some("urn:ietf:params:oauth:token-type:saml2");
        assert!(matches!(
            run("orders", saml).await,
            OAuthError::InvalidRequest(_)
        ));
    }

    #[tokio::test]
    async fn an_actor_token_must_identify_the_calling_client() {
        let reg = mesh();
        let ports = FakePorts::default();
        ports.present("subject", subject(NOW + 3600));
        let mut someone_else = subject(NOW + 3600);
        someone_else.sub = "gateway".into();
        someone_else.client_id = "gateway".into();
        ports.present("actor", someone_else);
        let mut with_actor = params("subject");
        with_actor.actor_token = Some("actor");
        let err = exchange(&ports, &reg, reg.client("orders").unwrap(), with_actor, NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, OAuthError::InvalidGrant(_)), "{err:?}");
    }
}

#[cfg(test)]
mod binding_tests {
    use tokenmesh_tokens::claims::Confirmation;

    use super::tests_support::*;
    use super::*;
    use crate::testing::{client, registry, scopes};

    fn holder(jkt: &str) -> Holder {
        Confirmation {
            jkt: Some(jkt.into()),
            x5t_s256: None,
        }
    }

    /// Issue #18: a DPoP-bound token (gateway's key) reaches `orders`,
    /// whose sidecar checked gateway's proof inbound. Its holder exchanges
    /// it with a proof of its key; the actor `orders` presents it with a
    /// proof of a key of its own and gets a token bound to that key. Refused:
    /// an actor that proves no key (the new token would be a bearer token),
    /// the token's own client without its key, a client no policy names.
    #[tokio::test]
    async fn a_dpop_bound_subject_token_is_exchanged_by_its_holder_or_a_bound_actor() {
        let reg = registry(
            &(scopes()
                + &client("gateway", "orders", "")
                + &client("orders", "payments", "")
                + &client("thief", "payments", "")
                + &crate::testing::doc(
                    "ExchangePolicy",
                    "orders-to-payments",
                    "  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders, gateway]}\n  to: {audience: payments, scopes: [\"orders:read\"]}\n",
                )),
        );
        let ports = FakePorts::default();
        let mut bound = subject(NOW + 3600);
        bound.cnf = Some(holder("gateway-key"));
        ports.present("bound", bound);
        let run = |caller: &'static str, proved: Holder| {
            let (reg, ports) = (&reg, &ports);
            async move {
                let mut request = params("bound");
                request.holder = proved;
                exchange(ports, reg, reg.client(caller).unwrap(), request, NOW).await
            }
        };

        for (caller, proved, why) in [
            ("orders", Holder::default(), "an actor that proved no key"),
            (
                "gateway",
                Holder::default(),
                "its own client without the key",
            ),
            (
                "gateway",
                holder("other-key"),
                "its own client with another key",
            ),
        ] {
            let err = run(caller, proved).await.unwrap_err();
            assert!(matches!(err, OAuthError::InvalidGrant(_)), "{why}: {err:?}");
        }
        let err = run("thief", holder("thief-key")).await.unwrap_err();
        assert!(
            matches!(err, OAuthError::UnauthorizedClient(_)),
            "no policy lets the thief act: {err:?}"
        );

        let issued = run("orders", holder("orders-key")).await.unwrap();
        assert_eq!(
            ports.claims_of(&issued.access_token).cnf,
            Some(holder("orders-key")),
            "bound to the actor's own key"
        );
        let issued = run("orders", holder("gateway-key")).await.unwrap();
        assert_eq!(
            ports.claims_of(&issued.access_token).cnf,
            Some(holder("gateway-key"))
        );
    }

    /// A policy open to any client lets any client exchange bearer tokens,
    /// but a DPoP-bound token presented by another client than its holder
    /// needs a policy that names that client: otherwise anyone who stole a
    /// bound token and registered a key could launder it into a token bound
    /// to their own key.
    #[tokio::test]
    async fn a_bound_subject_token_from_another_actor_needs_a_policy_that_names_it() {
        let reg = registry(
            &(scopes()
                + &client("gateway", "orders", "")
                + &client("thief", "payments", "")
                + &crate::testing::doc(
                    "ExchangePolicy",
                    "open-to-any-client",
                    "  mode: exchange\n  from: {audiences: [orders]}\n  to: {audience: payments, scopes: [\"orders:read\"]}\n",
                )),
        );
        let ports = FakePorts::default();
        let mut bound = subject(NOW + 3600);
        bound.cnf = Some(holder("gateway-key"));
        ports.present("bound", bound);
        ports.present("bearer", subject(NOW + 3600));
        let run = |token: &'static str, caller: &'static str, proved: Holder| {
            let (reg, ports) = (&reg, &ports);
            async move {
                let mut request = params(token);
                request.holder = proved;
                exchange(ports, reg, reg.client(caller).unwrap(), request, NOW).await
            }
        };

        let err = run("bound", "thief", holder("thief-key"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OAuthError::UnauthorizedClient(why) if why.contains("bound to a key")),
            "{err:?}"
        );
        let mut unnamed = params("bound");
        unnamed.holder = holder("thief-key");
        unnamed.audience = None;
        let err = exchange(&ports, &reg, reg.client("thief").unwrap(), unnamed, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OAuthError::InvalidTarget(_)),
            "no audience is open to it: {err:?}"
        );
        assert!(
            run("bearer", "thief", holder("thief-key")).await.is_ok(),
            "bearer subjects stay open"
        );
        assert!(
            run("bound", "gateway", holder("gateway-key")).await.is_ok(),
            "its holder may"
        );
    }

    #[tokio::test]
    async fn a_bearer_subject_exchanged_with_a_proof_gives_a_bound_token() {
        let reg = mesh();
        let ports = FakePorts::default();
        ports.present("subject", subject(NOW + 3600));
        let mut request = params("subject");
        request.holder = holder("orders-key");
        let issued = exchange(&ports, &reg, reg.client("orders").unwrap(), request, NOW)
            .await
            .unwrap();
        assert_eq!(
            ports.claims_of(&issued.access_token).cnf,
            Some(holder("orders-key"))
        );
    }
}
