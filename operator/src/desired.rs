//! Pure functions: the document the token server should hold for a
//! resource, and the status to report from the outcome.

use std::time::SystemTime;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokenmesh_crds::{
    API_VERSION, AuthMethod, IdentityProvider, OAuthClient, ResourceStatus, SecretKeyRef,
    StaticUserSpec,
};
use tokenmesh_tokens::secret::SecretHash;

/// The resource as a ControlService document: kind, name, namespace and spec.
pub fn document<K>(object: &K) -> Result<String, serde_json::Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let mut value = serde_json::to_value(object)?;
    let spec = value
        .get_mut("spec")
        .map(Value::take)
        .unwrap_or(Value::Null);
    serde_json::to_string(&json!({
        "apiVersion": API_VERSION,
        "kind": K::kind(&()),
        "metadata": {"name": object.name_any(), "namespace": object.namespace()},
        "spec": spec,
    }))
}

/// Whether the client authenticates with a secret the operator manages.
pub fn uses_secret(client: &OAuthClient) -> bool {
    matches!(
        client.spec.authentication.method,
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
    )
}

/// An OAuthClient document with its secrets replaced by their digests: the
/// token server never sees a client secret, nor where it is kept.
pub fn client_document(
    client: &OAuthClient,
    secrets: &[Vec<u8>],
) -> Result<String, serde_json::Error> {
    let mut client = client.clone();
    if uses_secret(&client) {
        let auth = &mut client.spec.authentication;
        auth.secret_ref = None;
        auth.secret_hashes
            .extend(secrets.iter().map(|s| SecretHash::of(s).encode()));
    }
    document(&client)
}

/// The Secret an IdentityProvider reads, with the field that names it:
/// a static provider's users, an oidc provider's client secret.
pub fn provider_secret_ref(provider: &IdentityProvider) -> Option<(&'static str, &SecretKeyRef)> {
    let spec = &provider.spec;
    let users = spec
        .static_users
        .as_ref()
        .and_then(|s| s.users_secret_ref.as_ref());
    let client_secret = spec
        .oidc
        .as_ref()
        .and_then(|o| o.client_secret_ref.as_ref());
    users
        .map(|r| ("spec.static.usersSecretRef", r))
        .or(client_secret.map(|r| ("spec.oidc.clientSecretRef", r)))
}

/// An IdentityProvider document with its Secret's value in place of the
/// reference (the users, or the client secret), so the token server, which
/// cannot read Secrets, gets what it needs and where it is kept stays here.
/// `Err` says why the value does not fit.
pub fn provider_document(provider: &IdentityProvider, value: &[u8]) -> Result<String, String> {
    let mut provider = provider.clone();
    let spec = &mut provider.spec;
    if let Some(users) = spec
        .static_users
        .as_mut()
        .filter(|s| s.users_secret_ref.is_some())
    {
        let key = users
            .users_secret_ref
            .take()
            .map(|r| r.key)
            .unwrap_or_default();
        let list: Vec<StaticUserSpec> = serde_yaml_ng::from_slice(value).map_err(|e| {
            format!("its key `{key}` is not a YAML list of {{username, passwordHash, claims}}: {e}")
        })?;
        users.users = Some(list);
    } else if let Some(oidc) = spec.oidc.as_mut().filter(|o| o.client_secret_ref.is_some()) {
        let key = oidc
            .client_secret_ref
            .take()
            .map(|r| r.key)
            .unwrap_or_default();
        let secret = String::from_utf8(value.to_vec())
            .map_err(|_| format!("its key `{key}` is not UTF-8 text"))?;
        oidc.client_secret = Some(secret.trim_end_matches(['\r', '\n']).to_owned());
    }
    document(&provider).map_err(|e| e.to_string())
}

/// The status after a reconcile at `now`: `Ready` with reason and message;
/// the transition time moves only when the status changes.
pub fn status(
    previous: Option<&ResourceStatus>,
    generation: Option<i64>,
    outcome: Result<(), (&str, String)>,
    now: SystemTime,
) -> ResourceStatus {
    let (status, reason, message) = match outcome {
        Ok(()) => (
            "True",
            "Applied".to_owned(),
            "in force in the token server".to_owned(),
        ),
        Err((reason, message)) => ("False", reason.to_owned(), message),
    };
    let before = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        // Every time a clock gives is within jiff's range (years -9999 to 9999).
        _ => Time(Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH)),
    };
    ResourceStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason,
            message,
            last_transition_time,
            observed_generation: generation,
        }],
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenmesh_crds::{ClientAuthentication, OAuthClientSpec, Scope, ScopeSpec, SecretKeyRef};

    fn client() -> OAuthClient {
        let mut client = OAuthClient::new(
            "gateway",
            OAuthClientSpec {
                authentication: ClientAuthentication {
                    method: AuthMethod::ClientSecretBasic,
                    secret_ref: Some(SecretKeyRef {
                        name: "gw".into(),
                        key: "client_secret".into(),
                    }),
                    ..Default::default()
                },
                audiences: vec!["orders".into()],
                ..Default::default()
            },
        );
        client.metadata.namespace = Some("shop".into());
        client
    }

    #[test]
    fn documents_carry_kind_name_namespace_and_spec_only() {
        let mut scope = Scope::new(
            "read",
            ScopeSpec {
                name: Some("orders:read".into()),
                ..Default::default()
            },
        );
        scope.metadata.namespace = Some("shop".into());
        scope.metadata.resource_version = Some("42".into());
        let doc: Value = serde_json::from_str(&document(&scope).unwrap()).unwrap();
        assert_eq!(doc["kind"], "Scope");
        assert_eq!(
            doc["metadata"],
            json!({"name": "read", "namespace": "shop"})
        );
        assert_eq!(doc["spec"]["name"], "orders:read");
        assert!(doc.get("status").is_none());
    }

    #[test]
    fn client_secrets_travel_only_as_digests() {
        let doc =
            client_document(&client(), &[b"new-secret".to_vec(), b"old-secret".to_vec()]).unwrap();
        assert!(!doc.contains("new-secret") && !doc.contains("secretRef"));
        let doc: Value = serde_json::from_str(&doc).unwrap();
        let hashes = doc["spec"]["authentication"]["secretHashes"]
            .as_array()
            .unwrap();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], SecretHash::of(b"new-secret").encode());
    }

    #[test]
    fn status_transition_time_moves_only_on_change() {
        use tokenmesh_tokens::clock::{Clock, ManualClock};
        let clock = ManualClock::at_unix(1_800_000_000);
        let ready = status(None, Some(3), Ok(()), clock.now());
        assert_eq!(ready.observed_generation, Some(3));
        let condition = &ready.conditions[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "Applied")
        );
        assert_eq!(condition.last_transition_time.0.as_second(), 1_800_000_000);
        clock.advance(std::time::Duration::from_secs(60));
        let again = status(Some(&ready), Some(4), Ok(()), clock.now());
        assert_eq!(
            again.conditions[0].last_transition_time,
            condition.last_transition_time
        );
        let failed = status(
            Some(&ready),
            Some(4),
            Err(("TokenServerUnavailable", "connection refused".into())),
            clock.now(),
        );
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(failed.conditions[0].reason, "TokenServerUnavailable");
        assert_eq!(failed.conditions[0].message, "connection refused");
        assert_eq!(
            failed.conditions[0].last_transition_time.0.as_second(),
            1_800_000_060,
            "the transition is dated by the clock"
        );
    }
}
