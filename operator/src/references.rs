//! Secrets named by a `secretRef`. Such a Secret is not owned by the client
//! that names it, so `owns` does not see it change; without a watch of its
//! own a new value took effect only at the next resync (5 minutes), while the
//! old one kept working. The Secrets' metadata is watched (values never
//! travel for it) and a change, creation or deletion reconciles the clients
//! that name the Secret, within seconds.

use std::sync::Arc;

use kube::{ResourceExt, runtime::reflector::ObjectRef};

use crate::reconcile::Managed;

/// The resources among `objects` that name the Secret `name` of `namespace`.
pub fn naming<K: Managed>(
    objects: &[Arc<K>],
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<K>> {
    objects
        .iter()
        .filter(|o| o.namespace().as_deref() == namespace && o.secret_ref() == Some(name))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenmesh_crds::{ClientAuthentication, OAuthClient, OAuthClientSpec, SecretKeyRef};

    fn client(namespace: &str, name: &str, secret: Option<&str>) -> Arc<OAuthClient> {
        let mut client = OAuthClient::new(
            name,
            OAuthClientSpec {
                authentication: ClientAuthentication {
                    secret_ref: secret.map(|s| SecretKeyRef {
                        name: s.into(),
                        key: "client_secret".into(),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        client.metadata.namespace = Some(namespace.into());
        Arc::new(client)
    }

    #[test]
    fn a_secret_maps_to_the_clients_of_its_namespace_that_name_it() {
        let clients = [
            client("shop", "gateway", Some("gateway-oauth")),
            client("shop", "admin", Some("gateway-oauth")),
            client("shop", "orders", Some("orders-oauth")),
            client("shop", "generated", None),
            client("bank", "gateway", Some("gateway-oauth")),
        ];
        let named: Vec<String> = naming(&clients, Some("shop"), "gateway-oauth")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(named, ["gateway", "admin"]);
        assert!(naming(&clients, Some("shop"), "other").is_empty());
    }
}
