//! Generated client secrets: a Secret owned by its OAuthClient (so it is
//! garbage-collected with it), rotated by an annotation with a grace period
//! during which the previous secret keeps working.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};
use tokenmesh_crds::OAuthClient;

pub const SECRET_KEY: &str = "client_secret";
pub const PREVIOUS_KEY: &str = "previous_client_secret";
/// On the OAuthClient: change its value to rotate the generated secret.
pub const ROTATE: &str = "tokenmesh.dev/rotate-secret";
/// On the Secret: which ROTATE value it answers.
const ROTATED_FOR: &str = "tokenmesh.dev/rotated-for";
/// On the Secret: until when (unix seconds) the previous secret works.
const PREVIOUS_UNTIL: &str = "tokenmesh.dev/previous-valid-until";

pub fn secret_name(client: &OAuthClient) -> String {
    format!("{}-client-secret", client.name_any())
}

/// What to do with a client's generated Secret.
#[derive(Debug, PartialEq)]
pub struct SecretPlan {
    /// A Secret to create or replace, when it changes.
    pub write: Option<Secret>,
    /// The secrets the token server must accept (current first).
    pub accepted: Vec<Vec<u8>>,
    /// When the previous secret stops working, if one is in grace.
    pub grace_ends: Option<u64>,
}

/// The non-empty value of `key`.
pub fn value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| v.0.clone())
        .filter(|v| !v.is_empty())
}

/// Whether the operator created `secret` for `owner` (its controller
/// reference names the owner's uid). Any other Secret of the same name is
/// someone else's: never overwritten, never taken over.
pub fn created_for<K: Resource<DynamicType = ()>>(secret: &Secret, owner: &K) -> bool {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return false;
    };
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Decides from the client and its current Secret. `fresh` makes a new
/// secret value (≥ 256 random bits).
pub fn plan(
    client: &OAuthClient,
    existing: Option<&Secret>,
    now: u64,
    grace: u64,
    fresh: impl FnOnce() -> String,
) -> SecretPlan {
    let wanted = client
        .annotations()
        .get(ROTATE)
        .cloned()
        .unwrap_or_default();
    let current = existing.and_then(|s| value(s, SECRET_KEY));
    let answered = existing
        .and_then(|s| s.annotations().get(ROTATED_FOR).cloned())
        .unwrap_or_default();
    match current {
        Some(current) if answered == wanted => {
            let until = existing
                .and_then(|s| s.annotations().get(PREVIOUS_UNTIL))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|until| *until > now);
            let previous = until.and(existing.and_then(|s| value(s, PREVIOUS_KEY)));
            let mut accepted = vec![current];
            accepted.extend(previous);
            SecretPlan {
                write: None,
                accepted,
                grace_ends: until,
            }
        }
        previous => {
            let new = fresh().into_bytes();
            let grace_ends = previous.as_ref().map(|_| now + grace);
            let mut data = BTreeMap::from([(SECRET_KEY.to_owned(), ByteString(new.clone()))]);
            let mut annotations = BTreeMap::from([(ROTATED_FOR.to_owned(), wanted)]);
            let mut accepted = vec![new];
            if let (Some(previous), Some(until)) = (previous, grace_ends) {
                data.insert(PREVIOUS_KEY.to_owned(), ByteString(previous.clone()));
                annotations.insert(PREVIOUS_UNTIL.to_owned(), until.to_string());
                accepted.push(previous);
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name(client)),
                    namespace: client.namespace(),
                    owner_references: client.controller_owner_ref(&()).map(|o| vec![o]),
                    annotations: Some(annotations),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "tokenmesh-operator".to_owned(),
                    )])),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            SecretPlan {
                write: Some(secret),
                accepted,
                grace_ends,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenmesh_crds::OAuthClientSpec;

    fn client(rotate: Option<&str>) -> OAuthClient {
        let mut client = OAuthClient::new("gw", OAuthClientSpec::default());
        client.metadata.namespace = Some("shop".into());
        client.metadata.uid = Some("uid-1".into());
        if let Some(value) = rotate {
            client.metadata.annotations =
                Some(BTreeMap::from([(ROTATE.to_owned(), value.to_owned())]));
        }
        client
    }

    #[test]
    fn a_missing_secret_is_generated_and_owned_by_its_client() {
        let plan = plan(&client(None), None, 100, 60, || "s1".into());
        let secret = plan.write.unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("gw-client-secret"));
        assert_eq!(secret.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert_eq!(plan.accepted, vec![b"s1".to_vec()]);
        assert_eq!(plan.grace_ends, None);
    }

    #[test]
    fn an_unchanged_secret_is_kept() {
        let first = plan(&client(None), None, 100, 60, || "s1".into())
            .write
            .unwrap();
        let again = plan(&client(None), Some(&first), 100, 60, || unreachable!());
        assert_eq!(
            again,
            SecretPlan {
                write: None,
                accepted: vec![b"s1".to_vec()],
                grace_ends: None
            }
        );
    }

    #[test]
    fn only_a_secret_made_for_this_very_client_is_its_own() {
        let generated = plan(&client(None), None, 100, 60, || "s1".into())
            .write
            .unwrap();
        assert!(created_for(&generated, &client(None)));
        let mut recreated = client(None);
        recreated.metadata.uid = Some("uid-2".into());
        assert!(
            !created_for(&generated, &recreated),
            "another client of the same name"
        );
        let mut foreign = generated.clone();
        foreign.metadata.owner_references = None;
        assert!(
            !created_for(&foreign, &client(None)),
            "made by someone else"
        );
    }

    #[test]
    fn rotation_keeps_the_previous_secret_for_the_grace_period() {
        let first = plan(&client(None), None, 100, 60, || "s1".into())
            .write
            .unwrap();
        let rotated = plan(&client(Some("now")), Some(&first), 100, 60, || "s2".into());
        assert_eq!(rotated.accepted, vec![b"s2".to_vec(), b"s1".to_vec()]);
        assert_eq!(rotated.grace_ends, Some(160));
        let secret = rotated.write.unwrap();
        let during = plan(
            &client(Some("now")),
            Some(&secret),
            159,
            60,
            || unreachable!(),
        );
        assert_eq!(during.accepted.len(), 2);
        let after = plan(
            &client(Some("now")),
            Some(&secret),
            160,
            60,
            || unreachable!(),
        );
        assert_eq!(
            after.accepted,
            vec![b"s2".to_vec()],
            "the previous secret stops working"
        );
        assert!(after.write.is_none());
    }
}
