//! The exchange decision (RFC 8693 under ExchangePolicy): which policy
//! admits a subject token, an actor and a target audience, and what the new
//! token may say. Pure: the caller verified the tokens and passes the clock.

use tokenmesh_crds::ExchangeMode;
use tokenmesh_tokens::claims::{AccessTokenClaims, Actor};

use crate::{
    oauth::error::OAuthError,
    registry::{Registry, ScopePattern},
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
}

#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    pub subject: &'a AccessTokenClaims,
    pub actor: ActingParty<'a>,
    pub audience: &'a str,
    /// Requested scopes; `None` asks for all the policy allows.
    pub scopes: Option<Vec<String>>,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub policy: String,
    pub scopes: Vec<String>,
    /// Seconds the new token lives.
    pub ttl: u64,
    pub act: Actor,
}

fn listed(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == value)
}

/// `may_act` (RFC 8693 §4.4), when the subject token carries it, must name the actor.
fn may_act_allows(subject: &AccessTokenClaims, actor: &ActingParty<'_>) -> bool {
    let Some(may_act) = &subject.may_act else {
        return true;
    };
    let named = |key: &str, value: &str| may_act.get(key).and_then(|v| v.as_str()) == Some(value);
    named("sub", actor.sub) || named("client_id", actor.client_id)
}

/// Decides an exchange; the first policy (by name) that admits it wins.
pub fn decide(registry: &Registry, request: &ExchangeRequest<'_>) -> Result<Decision, OAuthError> {
    let subject = request.subject;
    let for_audience: Vec<_> = registry
        .policies()
        .filter(|p| p.spec.mode == ExchangeMode::Exchange && p.spec.to.audience == request.audience)
        .collect();
    if for_audience.is_empty() {
        return Err(OAuthError::InvalidTarget(
            "no exchange policy leads to this audience".into(),
        ));
    }
    let from_matches: Vec<_> = for_audience
        .into_iter()
        .filter(|p| {
            let from = &p.spec.from;
            (from.audiences.is_empty() || from.audiences.iter().any(|a| subject.aud.contains(a)))
                && listed(&from.clients, &subject.client_id)
                && listed(&from.issuers, &subject.iss)
        })
        .collect();
    if from_matches.is_empty() {
        return Err(OAuthError::InvalidTarget(
            "no exchange policy admits this subject token for this audience".into(),
        ));
    }
    let Some(policy) = from_matches
        .into_iter()
        .find(|p| listed(&p.spec.actor.clients, request.actor.client_id))
    else {
        return Err(OAuthError::UnauthorizedClient(
            "no exchange policy lets this client act here".into(),
        ));
    };
    if !may_act_allows(subject, &request.actor) {
        return Err(OAuthError::UnauthorizedClient(
            "the subject token's may_act does not name this actor".into(),
        ));
    }
    let (live, _) = subject.scopes_at(request.now);
    // Only narrowing: a scope the subject holds, named by the policy itself
    // or through the prefix scope it falls under.
    let allowed = |scope: &str| {
        let prefix = match registry.find_scope(scope).map(|def| &def.pattern) {
            Some(ScopePattern::Prefix(prefix)) => Some(prefix.as_str()),
            _ => None,
        };
        live.contains(&scope)
            && policy
                .spec
                .to
                .scopes
                .iter()
                .any(|s| s == scope || Some(s.as_str()) == prefix)
    };
    let scopes: Vec<String> = match &request.scopes {
        Some(requested) => {
            if let Some(bad) = requested.iter().find(|s| !allowed(s)) {
                let bad: String = bad.chars().take(64).filter(|c| !c.is_control()).collect();
                return Err(OAuthError::InvalidScope(
                    format!("scope `{bad}` cannot be carried to this audience").into(),
                ));
            }
            requested.clone()
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
    let remaining = subject.exp.saturating_sub(request.now);
    if remaining == 0 {
        return Err(OAuthError::InvalidGrant(
            "the subject token has expired".into(),
        ));
    }
    let policy_ttl = policy
        .spec
        .ttl
        .as_deref()
        .and_then(|t| tokenmesh_crds::parse_duration(t).ok())
        .map_or(registry.server.default_ttl.as_secs(), |d| d.as_secs());
    Ok(Decision {
        policy: policy.name.clone(),
        scopes,
        ttl: policy_ttl.min(remaining),
        act,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokenmesh_tokens::claims::Audience;

    use super::*;
    use crate::{
        config::parse_documents,
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
        let yaml = format!(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {{name: r}}\nspec: {{name: \"orders:read\"}}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {{name: w}}\nspec: {{name: \"orders:write\"}}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {{name: v}}\nspec: {{prefix: video_}}\n---\n\
             apiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {{name: to-payments}}\nspec:\n{policy}"
        );
        let docs = parse_documents(None, &yaml).unwrap();
        Registry::new("https://issuer".into(), None)
            .from_documents(&docs, &Secrets)
            .unwrap()
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
            },
            audience,
            scopes: None,
            now: NOW,
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
}
