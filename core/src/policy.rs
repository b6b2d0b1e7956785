//! The ExchangePolicy engine: which policy admits a token, an actor and a
//! target audience, and what the new token may say, for each mode
//! (exchange, embed, share). Pure: the caller verified the tokens and passes
//! the clock.

use serde_json::{Map, Value, json};
use tokenmesh_crds::{ExchangeMode, TokenBinding};
use tokenmesh_tokens::claims::{AccessTokenClaims, Actor};

use crate::{
    binding::SubjectHolder,
    error::OAuthError,
    registry::{ClientAuth, Policy, Registry, ScopePattern},
};

/// Delegation depth allowed when a policy names none.
pub const DEFAULT_MAX_DEPTH: usize = 4;

/// Who asks to exchange.
#[derive(Debug, Clone)]
pub struct ActingParty<'a> {
    /// The authenticated client.
    pub client_id: &'a str,
    /// The subject of the actor token, when one was given; else the client.
    pub sub: &'a str,
    /// The actor token's claims, for CEL (`actor.claims`).
    pub claims: Option<&'a AccessTokenClaims>,
}

#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    pub subject: &'a AccessTokenClaims,
    pub actor: ActingParty<'a>,
    pub audience: &'a str,
    /// Requested scopes; `None` asks for all the policy allows.
    pub scopes: Option<Vec<String>>,
    pub now: u64,
    /// Who may present the subject token (a bound one presented by another
    /// actor needs a policy that names that actor).
    pub holder: SubjectHolder,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub policy: String,
    pub scopes: Vec<String>,
    /// Seconds the new token lives.
    pub ttl: u64,
    pub act: Actor,
    /// Claims the policy adds (from its CEL `claims`).
    pub claims: Map<String, Value>,
}

/// A token to embed: for `audience`, carrying `scopes`, living `ttl` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    pub policy: String,
    pub audience: String,
    pub scopes: Vec<String>,
    pub ttl: u64,
    pub claims: Map<String, Value>,
}

fn listed(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == value)
}

/// Whether the client `client_id` may act under `policy`: named in
/// `actor.clients`, or authenticated as a service account named in
/// `actor.serviceAccounts`; anyone when the policy names no actor.
fn actor_admits(
    registry: &Registry,
    policy: &Policy,
    client_id: &str,
    holder: SubjectHolder,
) -> bool {
    let actor = &policy.spec.actor;
    if actor.clients.is_empty() && actor.service_accounts.is_empty() {
        return holder == SubjectHolder::Holder;
    }
    actor.clients.iter().any(|c| c == client_id)
        || registry.client(client_id).is_some_and(|client| {
            matches!(&client.auth, ClientAuth::ServiceAccount(account)
                if policy.service_accounts.contains(account))
        })
}

fn from_admits(policy: &Policy, subject: &AccessTokenClaims) -> bool {
    let from = &policy.spec.from;
    (from.audiences.is_empty() || from.audiences.iter().any(|a| subject.aud.contains(a)))
        && listed(&from.clients, &subject.client_id)
        && listed(&from.issuers, &subject.iss)
}

/// Whether an actor token identifies the calling client `caller`: it was
/// issued to it, or it names it as its undelegated `sub` (a client's own
/// tokens carry its id there). A token the caller merely received from
/// another service must not lend it that service's identity (`act.sub`,
/// `may_act`, CEL's `actor`).
pub fn actor_token_identifies(actor: &AccessTokenClaims, caller: &str) -> bool {
    actor.client_id == caller || (actor.sub == caller && actor.act.is_none())
}

/// `may_act` (RFC 8693 §4.4), when the subject token carries it, must name the actor.
fn may_act_allows(subject: &AccessTokenClaims, actor: &ActingParty<'_>) -> bool {
    let Some(may_act) = &subject.may_act else {
        return true;
    };
    let named = |key: &str, value: &str| may_act.get(key).and_then(|v| v.as_str()) == Some(value);
    named("sub", actor.sub) || named("client_id", actor.client_id)
}

/// The CEL variables of one decision, built on first use: most policies have
/// no expression, and building them costs more than the rest of a decision.
struct CelVariables<'a> {
    subject: &'a AccessTokenClaims,
    actor: &'a ActingParty<'a>,
    audience: &'a str,
    scopes: &'a [String],
    built: std::cell::OnceCell<Option<cel::Context<'static, 'static>>>,
}

impl<'a> CelVariables<'a> {
    fn new(
        subject: &'a AccessTokenClaims,
        actor: &'a ActingParty<'a>,
        audience: &'a str,
        scopes: &'a [String],
    ) -> Self {
        Self {
            subject,
            actor,
            audience,
            scopes,
            built: std::cell::OnceCell::new(),
        }
    }

    fn context(&self) -> Option<&cel::Context<'static, 'static>> {
        self.built
            .get_or_init(|| cel_context(self.subject, self.actor, self.audience, self.scopes))
            .as_ref()
    }
}

/// The variables CEL sees: `subject`, `actor`, `request`.
fn cel_context(
    subject: &AccessTokenClaims,
    actor: &ActingParty<'_>,
    audience: &str,
    scopes: &[String],
) -> Option<cel::Context<'static, 'static>> {
    let mut context = cel::Context::default();
    let actor_claims = actor
        .claims
        .map_or(Ok(json!({})), serde_json::to_value)
        .ok()?;
    context.add_variable("subject", subject).ok()?;
    context
        .add_variable(
            "actor",
            json!({"clientId": actor.client_id, "sub": actor.sub, "claims": actor_claims}),
        )
        .ok()?;
    context
        .add_variable("request", json!({"audience": audience, "scopes": scopes}))
        .ok()?;
    Some(context)
}

/// Whether the policy's condition holds. An expression that errors or is not
/// a boolean counts as false: policies fail closed.
fn condition_holds(policy: &Policy, variables: &CelVariables<'_>) -> bool {
    let Some(program) = &policy.condition else {
        return true;
    };
    let Some(context) = variables.context() else {
        tracing::warn!(policy = %policy.name, "the CEL variables cannot be built; refusing");
        return false;
    };
    match program.execute(context) {
        Ok(cel::Value::Bool(result)) => result,
        Ok(other) => {
            tracing::warn!(policy = %policy.name, value = ?other.type_of(), "policy condition is not a boolean; refusing");
            false
        }
        Err(err) => {
            tracing::warn!(policy = %policy.name, error = %err, "policy condition failed; refusing");
            false
        }
    }
}

/// The claims a policy adds; an expression that fails refuses the token.
fn policy_claims(
    policy: &Policy,
    variables: &CelVariables<'_>,
) -> Result<Map<String, Value>, OAuthError> {
    let mut claims = Map::new();
    if policy.claims.is_empty() {
        return Ok(claims);
    }
    let context = variables.context().ok_or(OAuthError::Internal)?;
    for (name, program) in &policy.claims {
        let value = program
            .execute(context)
            .ok()
            .and_then(|v| v.json().ok())
            .ok_or_else(|| {
                tracing::warn!(policy = %policy.name, claim = %name, "policy claim expression failed");
                OAuthError::InvalidGrant(format!("the policy's claim `{name}` cannot be computed").into())
            })?;
        claims.insert(name.clone(), value);
    }
    Ok(claims)
}

/// Whether `scope` may travel under `policy`: named by it, or under a prefix it names.
fn policy_allows_scope(registry: &Registry, policy: &Policy, scope: &str) -> bool {
    let prefix = match registry.find_scope(scope).map(|def| &def.pattern) {
        Some(ScopePattern::Prefix(prefix)) => Some(prefix.as_str()),
        _ => None,
    };
    policy
        .spec
        .to
        .scopes
        .iter()
        .any(|s| s == scope || Some(s.as_str()) == prefix)
}

fn ttl_within(registry: &Registry, policy: &Policy, subject: &AccessTokenClaims, now: u64) -> u64 {
    let policy_ttl = policy.ttl.unwrap_or(registry.server.default_ttl).as_secs();
    policy_ttl.min(subject.exp.saturating_sub(now))
}

/// The audience of an exchange that names none (RFC 8693 leaves it to the
/// server): the one target of the exchange policies that admit this subject
/// token and this actor. Several targets, or none, must be named.
pub fn sole_audience(
    registry: &Registry,
    subject: &AccessTokenClaims,
    actor: &str,
    holder: SubjectHolder,
) -> Result<String, OAuthError> {
    let mut targets: Vec<&str> = registry
        .policies()
        .filter(|p| {
            p.spec.mode == ExchangeMode::Exchange
                && from_admits(p, subject)
                && actor_admits(registry, p, actor, holder)
        })
        .map(|p| p.spec.to.audience.as_str())
        .collect();
    targets.sort_unstable();
    targets.dedup();
    match targets.as_slice() {
        [only] => Ok((*only).to_owned()),
        [] => Err(OAuthError::InvalidTarget(
            "no exchange policy admits this subject token for this client".into(),
        )),
        several => Err(OAuthError::InvalidTarget(
            format!(
                "name the audience (`audience` or `resource`): policies lead to {}",
                several.join(", ")
            )
            .into(),
        )),
    }
}

/// Decides an exchange; the first policy (by name) that admits it wins.
pub fn decide(registry: &Registry, request: &ExchangeRequest<'_>) -> Result<Decision, OAuthError> {
    let subject = request.subject;
    if subject.exp <= request.now {
        return Err(OAuthError::InvalidGrant(
            "the subject token has expired".into(),
        ));
    }
    let candidates: Vec<&Policy> = registry
        .policies()
        .filter(|p| p.spec.mode == ExchangeMode::Exchange && p.spec.to.audience == request.audience)
        .collect();
    if candidates.is_empty() {
        return Err(OAuthError::InvalidTarget(
            "no exchange policy leads to this audience".into(),
        ));
    }
    let candidates: Vec<&Policy> = candidates
        .into_iter()
        .filter(|p| from_admits(p, subject))
        .collect();
    if candidates.is_empty() {
        return Err(OAuthError::InvalidTarget(
            "no exchange policy admits this subject token for this audience".into(),
        ));
    }
    let candidates: Vec<&Policy> = candidates
        .into_iter()
        .filter(|p| actor_admits(registry, p, request.actor.client_id, request.holder))
        .collect();
    if candidates.is_empty() {
        return Err(OAuthError::UnauthorizedClient(
            match request.holder {
                SubjectHolder::Holder => "no exchange policy lets this client act here",
                SubjectHolder::NamedActorOnly => {
                    "the subject token is bound to a key this client does not hold: only an actor an exchange policy names may present it"
                }
            }
            .into(),
        ));
    }
    if !may_act_allows(subject, &request.actor) {
        return Err(OAuthError::UnauthorizedClient(
            "the subject token's may_act does not name this actor".into(),
        ));
    }
    let (live, _) = subject.scopes_at(request.now);
    let requested: Vec<String> = request
        .scopes
        .clone()
        .unwrap_or_else(|| live.iter().map(|s| (*s).to_owned()).collect());
    let variables = CelVariables::new(subject, &request.actor, request.audience, &requested);
    let Some(policy) = candidates
        .into_iter()
        .find(|p| condition_holds(p, &variables))
    else {
        return Err(OAuthError::UnauthorizedClient(
            "no exchange policy's condition holds for this request".into(),
        ));
    };
    // Only narrowing: scopes the subject holds and the policy names.
    let allowed =
        |scope: &str| live.contains(&scope) && policy_allows_scope(registry, policy, scope);
    let scopes: Vec<String> = match &request.scopes {
        Some(asked) => {
            if let Some(bad) = asked.iter().find(|s| !allowed(s)) {
                let bad: String = bad.chars().take(64).filter(|c| !c.is_control()).collect();
                return Err(OAuthError::InvalidScope(
                    format!("scope `{bad}` cannot be carried to this audience").into(),
                ));
            }
            asked.clone()
        }
        None => live
            .iter()
            .filter(|s| allowed(s))
            .map(|s| (*s).to_owned())
            .collect(),
    };
    let act = Actor {
        sub: request.actor.sub.to_owned(),
        client_id: Some(request.actor.client_id.to_owned()),
        act: subject.act.clone().map(Box::new),
    };
    let max_depth = policy
        .spec
        .max_delegation_depth
        .map_or(DEFAULT_MAX_DEPTH, |d| d as usize);
    if act.depth() > max_depth {
        return Err(OAuthError::InvalidGrant(
            format!("delegation deeper than {max_depth} actors").into(),
        ));
    }
    Ok(Decision {
        policy: policy.name.clone(),
        scopes,
        ttl: ttl_within(registry, policy, subject, request.now),
        act,
        claims: policy_claims(policy, &variables)?,
    })
}

/// The tokens to embed in a token being issued with `claims`: one per embed
/// policy whose `from` admits it, never outliving it. An embed policy's
/// `actor` is the workload that extracts the inner token, unknown now: it
/// is checked at extraction ([`may_extract`]) and on `WatchPolicies`, and
/// its CEL may not name `actor` (refused at load).
pub fn embeds(
    registry: &Registry,
    claims: &AccessTokenClaims,
    now: u64,
) -> Result<Vec<Embed>, OAuthError> {
    let actor = ActingParty {
        client_id: "",
        sub: "",
        claims: None,
    };
    let (live, _) = claims.scopes_at(now);
    let mut embeds = Vec::new();
    for policy in registry
        .policies()
        .filter(|p| p.spec.mode == ExchangeMode::Embed && from_admits(p, claims))
    {
        let scopes: Vec<String> = live
            .iter()
            .filter(|s| policy_allows_scope(registry, policy, s))
            .map(|s| (*s).to_owned())
            .collect();
        let variables = CelVariables::new(claims, &actor, &policy.spec.to.audience, &scopes);
        if !condition_holds(policy, &variables) {
            continue;
        }
        let extra = policy_claims(policy, &variables)?;
        embeds.push(Embed {
            policy: policy.name.clone(),
            audience: policy.spec.to.audience.clone(),
            scopes,
            ttl: ttl_within(registry, policy, claims, now),
            claims: extra,
        });
    }
    Ok(embeds)
}

/// Whether `caller` may extract `outer`'s embedded token for `audience`: an
/// embed policy to that audience admits `outer` and names `caller` among its
/// actors (the workloads whose sidecars extract).
pub fn may_extract(
    registry: &Registry,
    outer: &AccessTokenClaims,
    audience: &str,
    caller: &str,
) -> bool {
    registry.policies().any(|p| {
        p.spec.mode == ExchangeMode::Embed
            && p.spec.to.audience == audience
            && from_admits(p, outer)
            && actor_admits(registry, p, caller, SubjectHolder::Holder)
    })
}

/// Whether `caller` (the client passing it on) may pass `claims` unchanged
/// to `destination` (a host a share policy names, or its audience): the
/// answer is that audience. The caller must be among the policy's actors,
/// as it must to see the route on `WatchPolicies`.
pub fn share(
    registry: &Registry,
    claims: &AccessTokenClaims,
    caller: &str,
    destination: &str,
) -> Result<String, &'static str> {
    let actor = ActingParty {
        client_id: caller,
        sub: caller,
        claims: None,
    };
    let mut named = false;
    for policy in registry
        .policies()
        .filter(|p| p.spec.mode == ExchangeMode::Share)
    {
        let to = &policy.spec.to;
        if to.audience != destination && !to.hosts.iter().any(|h| h == destination) {
            continue;
        }
        named = true;
        if !actor_admits(registry, policy, caller, SubjectHolder::Holder)
            || !claims.aud.contains(&to.audience)
            || !from_admits(policy, claims)
        {
            continue;
        }
        let scopes: Vec<String> = claims.scopes().map(str::to_owned).collect();
        let variables = CelVariables::new(claims, &actor, &to.audience, &scopes);
        if condition_holds(policy, &variables) {
            return Ok(to.audience.clone());
        }
    }
    Err(if named {
        "a share policy names the destination but does not admit this token from this client (its aud must cover the destination; the caller must be one of the policy's actors)"
    } else {
        "no share policy names the destination"
    })
}

/// A destination a sidecar may call, and how its token is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub host: String,
    pub audience: String,
    pub mode: ExchangeMode,
    pub scopes: Vec<String>,
    pub policy: String,
    /// What the next hop requires the token to be bound to (`to.binding`).
    pub binding: TokenBinding,
}

/// The routes that concern `client_id`: every policy whose actors include it
/// (or name nobody), one per destination host.
pub fn routes(registry: &Registry, client_id: &str) -> Vec<Route> {
    let mut routes = Vec::new();
    for policy in registry
        .policies()
        .filter(|p| actor_admits(registry, p, client_id, SubjectHolder::Holder))
    {
        for host in &policy.spec.to.hosts {
            routes.push(Route {
                host: host.clone(),
                audience: policy.spec.to.audience.clone(),
                mode: policy.spec.mode,
                scopes: policy.spec.to.scopes.clone(),
                policy: policy.name.clone(),
                binding: policy.spec.to.binding,
            });
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokenmesh_tokens::claims::Audience;

    use super::*;
    use crate::{
        document::parse_documents,
        registry::{Registry, SecretSource},
    };

    struct Secrets;
    impl SecretSource for Secrets {
        fn read(&self, _: &tokenmesh_crds::SecretKeyRef) -> Result<Vec<u8>, String> {
            Ok(vec![b'x'; 40])
        }
    }

    const NOW: u64 = 10_000;

    fn registry(policy: &str) -> Registry {
        load(policy).unwrap()
    }

    /// The three scopes, an ExchangePolicy `to-payments` of spec `policy`,
    /// and any further documents `policy` appends.
    fn load(policy: &str) -> Result<Registry, crate::document::ConfigError> {
        let yaml = format!(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {{name: r}}\nspec: {{name: \"orders:read\"}}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {{name: w}}\nspec: {{name: \"orders:write\"}}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {{name: v}}\nspec: {{prefix: video_}}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {{name: to-payments}}\nspec:\n{policy}"
        );
        let docs = parse_documents(None, &yaml)?;
        Registry::new("https://issuer".into(), None).from_documents(&docs, &Secrets)
    }

    fn subject() -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://issuer".into(),
            sub: "alice".into(),
            aud: Audience::One("orders".into()),
            exp: NOW + 100,
            iat: NOW - 10,
            nbf: NOW - 10,
            jti: "j".into(),
            client_id: "gateway".into(),
            scope: "orders:read orders:write video_1".into(),
            scope_exp: BTreeMap::new(),
            grant_id: Some("g".into()),
            act: None,
            may_act: None,
            embedded_tokens: BTreeMap::new(),
            cnf: None,
            extra: serde_json::Map::new(),
        }
    }

    const BASE: &str = "  mode: exchange\n  from: {audiences: [orders], clients: [gateway]}\n  actor: {clients: [orders]}\n  to: {audience: payments, scopes: [\"orders:read\", video_]}\n  ttl: 60s\n";

    fn request<'a>(
        subject: &'a AccessTokenClaims,
        actor: &'a str,
        audience: &'a str,
    ) -> ExchangeRequest<'a> {
        ExchangeRequest {
            subject,
            actor: ActingParty {
                client_id: actor,
                sub: actor,
                claims: None,
            },
            audience,
            scopes: None,
            now: NOW,
            holder: SubjectHolder::Holder,
        }
    }

    #[test]
    fn exchange_narrows_scopes_bounds_lifetime_and_chains_actors() {
        let reg = registry(BASE);
        let subject = subject();
        let decision = decide(&reg, &request(&subject, "orders", "payments")).unwrap();
        assert_eq!(decision.scopes, vec!["orders:read", "video_1"]);
        assert_eq!(decision.ttl, 60);
        assert_eq!(
            decision.act,
            Actor {
                sub: "orders".into(),
                client_id: Some("orders".into()),
                act: None
            }
        );
        let mut short = subject.clone();
        short.exp = NOW + 5;
        assert_eq!(
            decide(&reg, &request(&short, "orders", "payments"))
                .unwrap()
                .ttl,
            5
        );
        let mut asked = request(&subject, "orders", "payments");
        asked.scopes = Some(vec!["orders:write".into()]);
        assert!(
            matches!(decide(&reg, &asked), Err(OAuthError::InvalidScope(_))),
            "never broader than the policy"
        );
    }

    #[test]
    fn refusals_carry_the_rfc_error() {
        let reg = registry(BASE);
        let subject = subject();
        assert!(matches!(
            decide(&reg, &request(&subject, "orders", "billing")),
            Err(OAuthError::InvalidTarget(_))
        ));
        assert!(matches!(
            decide(&reg, &request(&subject, "intruder", "payments")),
            Err(OAuthError::UnauthorizedClient(_))
        ));
        let mut other = subject.clone();
        other.client_id = "batch".into();
        assert!(matches!(
            decide(&reg, &request(&other, "orders", "payments")),
            Err(OAuthError::InvalidTarget(_))
        ));
        let mut expired = subject.clone();
        expired.exp = NOW;
        assert!(matches!(
            decide(&reg, &request(&expired, "orders", "payments")),
            Err(OAuthError::InvalidGrant(_))
        ));
    }

    #[test]
    fn delegation_depth_counts_every_actor() {
        let reg = registry(&format!("{BASE}  maxDelegationDepth: 2\n"));
        let mut subject = subject();
        subject.act = Some(Actor {
            sub: "gateway".into(),
            client_id: None,
            act: None,
        });
        assert_eq!(
            decide(&reg, &request(&subject, "orders", "payments"))
                .unwrap()
                .act
                .depth(),
            2
        );
        subject.act = Some(Actor {
            sub: "b".into(),
            client_id: None,
            act: subject.act.clone().map(Box::new),
        });
        assert!(matches!(
            decide(&reg, &request(&subject, "orders", "payments")),
            Err(OAuthError::InvalidGrant(_))
        ));
    }

    #[test]
    fn may_act_must_name_the_actor() {
        let reg = registry(BASE);
        let mut subject = subject();
        subject.may_act = Some(serde_json::json!({"sub": "orders"}));
        assert!(decide(&reg, &request(&subject, "orders", "payments")).is_ok());
        subject.may_act = Some(serde_json::json!({"sub": "someone-else"}));
        assert!(matches!(
            decide(&reg, &request(&subject, "orders", "payments")),
            Err(OAuthError::UnauthorizedClient(_))
        ));
    }

    #[test]
    fn cel_conditions_true_false_and_erroring() {
        let subject = subject();
        let with = |condition: &str| {
            let reg = registry(&format!("{BASE}  condition: {condition:?}\n"));
            decide(&reg, &request(&subject, "orders", "payments"))
        };
        assert!(with("subject.client_id == 'gateway' && 'orders:read' in request.scopes").is_ok());
        assert!(with("actor.clientId == 'orders' && request.audience == 'payments'").is_ok());
        assert!(matches!(
            with("subject.client_id == 'batch'"),
            Err(OAuthError::UnauthorizedClient(_))
        ));
        // Errors and non-booleans fail closed.
        assert!(matches!(
            with("subject.no_such_claim == 1"),
            Err(OAuthError::UnauthorizedClient(_))
        ));
        assert!(matches!(
            with("'a string'"),
            Err(OAuthError::UnauthorizedClient(_))
        ));
    }

    #[test]
    fn cel_claims_are_added_and_bad_expressions_refused_at_load() {
        let reg = registry(&format!(
            "{BASE}  claims: {{origin: subject.client_id, hops: \"size(request.scopes)\"}}\n"
        ));
        let decision = decide(&reg, &request(&subject(), "orders", "payments")).unwrap();
        assert_eq!(decision.claims["origin"], "gateway");
        assert_eq!(decision.claims["hops"], 3);
        let yaml = format!(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {{name: p}}\nspec:\n{BASE}  condition: \"subject.(\"\n"
        );
        let docs = parse_documents(None, &yaml).unwrap();
        let err = Registry::new("https://issuer".into(), None)
            .from_documents(&docs, &Secrets)
            .err()
            .unwrap();
        assert_eq!(err.field, "spec.condition");
        let yaml = yaml.replace(
            "  condition: \"subject.(\"\n",
            "  claims: {sub: subject.sub}\n",
        );
        let docs = parse_documents(None, &yaml).unwrap();
        let err = Registry::new("https://issuer".into(), None)
            .from_documents(&docs, &Secrets)
            .err()
            .unwrap();
        assert_eq!(err.field, "spec.claims.sub");
    }

    #[test]
    fn embed_policies_pick_tokens_to_carry() {
        let reg = registry(
            "  mode: embed\n  from: {audiences: [orders], clients: [gateway]}\n  to: {audience: payments, scopes: [\"orders:read\"]}\n  ttl: 30s\n",
        );
        let found = embeds(&reg, &subject(), NOW).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].audience, "payments");
        assert_eq!(found[0].scopes, vec!["orders:read"]);
        assert_eq!(found[0].ttl, 30);
        let mut other = subject();
        other.client_id = "batch".into();
        assert!(embeds(&reg, &other, NOW).unwrap().is_empty());
    }

    /// Issue #15 item 9: `actor` of an embed policy is the workload that
    /// extracts (orders), not the client the outer token is issued to
    /// (gateway); the same list gives orders the route.
    #[test]
    fn an_embed_policys_actor_is_the_workload_that_extracts() {
        let reg = registry(
            "  mode: embed\n  from: {audiences: [orders], clients: [gateway]}\n  actor: {clients: [orders]}\n  to: {audience: payments, scopes: [\"orders:read\"], hosts: [payments.local]}\n",
        );
        let outer = subject();
        let found = embeds(&reg, &outer, NOW).unwrap();
        assert_eq!(found.len(), 1, "gateway's token carries one for payments");
        assert_eq!(found[0].audience, "payments");
        assert!(may_extract(&reg, &outer, "payments", "orders"));
        assert!(!may_extract(&reg, &outer, "payments", "gateway"));
        assert!(!may_extract(&reg, &outer, "ledger", "orders"));
        let mut other = outer.clone();
        other.client_id = "batch".into();
        assert!(!may_extract(&reg, &other, "payments", "orders"));
        assert_eq!(routes(&reg, "orders").len(), 1);
        assert!(routes(&reg, "gateway").is_empty());
    }

    /// Embed policies that no token or workload could satisfy are refused
    /// at load, naming the policy and the field.
    #[test]
    fn embed_policies_that_can_never_match_are_refused_at_load() {
        const EMBED: &str = "  mode: embed\n  to: {audience: payments, scopes: [\"orders:read\"], hosts: [payments.local]}\n";
        let refused = |extra: &str| {
            let err = load(&format!("{EMBED}{extra}")).err().unwrap();
            assert!(err.origin.contains("ExchangePolicy to-payments"), "{err}");
            (err.field, err.message)
        };
        let (field, message) = refused("  condition: \"actor.clientId == 'orders'\"\n");
        assert_eq!(field, "spec.condition");
        assert!(message.contains("`actor` is not known"), "{message}");
        assert_eq!(
            refused("  claims: {via: actor.clientId}\n").0,
            "spec.claims.via"
        );
        assert_eq!(
            refused("  actor: {serviceAccounts: [shop/orders]}\n").0,
            "spec.actor.serviceAccounts"
        );
        assert_eq!(
            refused("  from: {issuers: [\"https://elsewhere\"]}\n").0,
            "spec.from.issuers"
        );
        // What can match still loads: the subject in CEL, this issuer, a
        // service account with spec.kubernetes, an exchange naming `actor`.
        assert!(
            load(&format!(
                "{EMBED}  condition: \"subject.client_id == 'gateway'\"\n"
            ))
            .is_ok()
        );
        assert!(
            load(&format!(
                "{EMBED}  from: {{issuers: [\"https://issuer\"]}}\n"
            ))
            .is_ok()
        );
        assert!(
            load(&format!(
                "{EMBED}  actor: {{serviceAccounts: [shop/orders]}}\n---\napiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {{name: default}}\nspec:\n  issuer: https://issuer\n  kubernetes: {{issuer: \"https://kubernetes.default.svc\"}}\n"
            ))
            .is_ok()
        );
        assert!(
            load(&format!(
                "{BASE}  condition: \"actor.clientId == 'orders'\"\n"
            ))
            .is_ok()
        );
    }

    /// Issue #14 item 3: an actor token must be the caller's own.
    #[test]
    fn an_actor_token_must_identify_the_caller() {
        let mut own = subject();
        own.client_id = "orders".into();
        own.sub = "orders".into();
        assert!(actor_token_identifies(&own, "orders"));
        // orders' token, received downstream by payments.
        assert!(!actor_token_identifies(&own, "payments"));
        // Issued to orders on behalf of alice: still orders'.
        own.sub = "alice".into();
        assert!(actor_token_identifies(&own, "orders"));
        // About payments but delegated to orders: not payments' own.
        let mut delegated = subject();
        delegated.sub = "payments".into();
        delegated.client_id = "orders".into();
        delegated.act = Some(Actor {
            sub: "orders".into(),
            client_id: Some("orders".into()),
            act: None,
        });
        assert!(!actor_token_identifies(&delegated, "payments"));
    }

    #[test]
    fn share_needs_a_policy_and_an_audience_that_covers_the_destination() {
        let reg = registry(
            "  mode: share\n  from: {clients: [gateway]}\n  to: {audience: orders, hosts: [orders.local]}\n",
        );
        let subject = subject();
        assert_eq!(
            share(&reg, &subject, "anyone", "orders.local"),
            Ok("orders".to_owned())
        );
        assert_eq!(
            share(&reg, &subject, "anyone", "orders"),
            Ok("orders".to_owned())
        );
        assert!(share(&reg, &subject, "anyone", "payments.local").is_err());
        let mut elsewhere = subject.clone();
        elsewhere.aud = Audience::One("billing".into());
        assert!(share(&reg, &elsewhere, "anyone", "orders.local").is_err());
        let routes = routes(&reg, "anyone");
        assert_eq!(routes.len(), 1);
        assert_eq!(
            (routes[0].host.as_str(), routes[0].mode),
            ("orders.local", ExchangeMode::Share)
        );
    }

    /// `to.binding` reaches the sidecar with the route; only an exchanged
    /// token can be bound to the sidecar's key.
    #[test]
    fn a_route_says_what_the_next_hop_needs_the_token_bound_to() {
        let to = |binding: &str| {
            format!(
                "  mode: exchange\n  to: {{audience: payments, hosts: [payments.local]{binding}}}\n"
            )
        };
        let binding = |policy: &str| routes(&registry(policy), "orders")[0].binding;
        assert_eq!(binding(&to(", binding: dpop")), TokenBinding::Dpop);
        assert_eq!(binding(&to("")), TokenBinding::None);
        for mode in ["share", "embed"] {
            let policy = to(", binding: dpop").replace("exchange", mode);
            assert_eq!(
                load(&policy).err().unwrap().field,
                "spec.to.binding",
                "{mode}"
            );
        }
    }

    #[test]
    fn share_is_for_the_policys_actors_only() {
        let reg = registry(
            "  mode: share\n  actor: {clients: [edge]}\n  to: {audience: orders, hosts: [orders.local]}\n",
        );
        let subject = subject();
        assert_eq!(
            share(&reg, &subject, "edge", "orders.local"),
            Ok("orders".to_owned())
        );
        assert!(share(&reg, &subject, "batch", "orders.local").is_err());
        assert!(routes(&reg, "batch").is_empty());
    }

    #[test]
    fn service_account_actors_are_the_clients_they_authenticate() {
        let reg = registry(
            "  mode: share\n  actor: {serviceAccounts: [shop/orders]}\n  to: {audience: orders, hosts: [orders.local]}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec:\n  \
             issuer: https://issuer\n  kubernetes: {issuer: \"https://kubernetes.default.svc\"}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: shop-orders}\nspec:\n  \
             authentication: {method: kubernetes_service_account, serviceAccount: {name: orders, namespace: shop}}\n  audiences: [orders]\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: shop-billing}\nspec:\n  \
             authentication: {method: kubernetes_service_account, serviceAccount: {name: billing, namespace: shop}}\n  audiences: [orders]\n",
        );
        let subject = subject();
        assert_eq!(
            share(&reg, &subject, "shop-orders", "orders.local"),
            Ok("orders".to_owned())
        );
        // Another service account, and a client merely named like the account.
        assert!(share(&reg, &subject, "shop-billing", "orders.local").is_err());
        assert!(share(&reg, &subject, "shop/orders", "orders.local").is_err());
        assert_eq!(routes(&reg, "shop-orders").len(), 1);
        assert!(routes(&reg, "gateway").is_empty());
    }

    #[test]
    fn a_service_account_actor_must_be_namespace_slash_name() {
        let yaml = "apiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: p}\nspec:\n  mode: share\n  actor: {serviceAccounts: [orders]}\n  to: {audience: orders}\n";
        let docs = parse_documents(None, yaml).unwrap();
        let err = Registry::new("https://issuer".into(), None)
            .from_documents(&docs, &Secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("spec.actor.serviceAccounts[0]"), "{err}");
    }
}
