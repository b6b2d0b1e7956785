//! Which client ids an OAuthClient may take. A namespaced client speaks only
//! for its own namespace: its id is `<namespace>/<name>` or another id under
//! `<namespace>/`, so no namespace can take (squat) another's ids and the
//! tokens issued under them. The token server refuses the rest, the operator
//! reports them, and the chart's ValidatingAdmissionPolicy refuses them at
//! admission.

use crate::OAuthClient;

/// The id a client has when `spec.clientId` names none: `<namespace>/<name>`,
/// or `<name>` standalone.
pub fn default_client_id(name: &str, namespace: Option<&str>) -> String {
    namespace.map_or_else(|| name.to_owned(), |ns| format!("{ns}/{name}"))
}

/// Whether a client in `namespace` may take `id`: without a namespace
/// (standalone files) any id; else one that begins with `<namespace>/` and
/// goes on after it. The error says why, in words.
pub fn check_client_id(namespace: Option<&str>, id: &str) -> Result<(), String> {
    let Some(namespace) = namespace else {
        return Ok(());
    };
    let owned = id
        .strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| !rest.is_empty());
    if owned {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not this namespace's: a client id of an OAuthClient in namespace `{namespace}` must begin with `{namespace}/`"
        ))
    }
}

impl OAuthClient {
    /// `spec.clientId`, or the default id.
    pub fn client_id(&self) -> String {
        self.spec.client_id.clone().unwrap_or_else(|| {
            let name = self.metadata.name.as_deref().unwrap_or_default();
            default_client_id(name, self.metadata.namespace.as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OAuthClientSpec;

    #[test]
    fn a_namespaced_client_takes_only_ids_under_its_namespace() {
        let shop = Some("shop");
        assert_eq!(check_client_id(shop, "shop/orders"), Ok(()));
        assert_eq!(check_client_id(shop, "shop/orders/v2"), Ok(()));
        for squat in [
            "orders",
            "bank/orders",
            "shop",
            "shop/",
            "shopping/orders",
            "/orders",
        ] {
            let err = check_client_id(shop, squat).unwrap_err();
            assert!(err.contains("must begin with `shop/`"), "{squat}: {err}");
        }
        assert_eq!(check_client_id(None, "bank/orders"), Ok(()), "standalone");
    }

    #[test]
    fn the_client_id_defaults_to_namespace_and_name() {
        let mut client = OAuthClient::new("orders", OAuthClientSpec::default());
        assert_eq!(client.client_id(), "orders");
        client.metadata.namespace = Some("shop".into());
        assert_eq!(client.client_id(), "shop/orders");
        client.spec.client_id = Some("shop/orders-v2".into());
        assert_eq!(client.client_id(), "shop/orders-v2");
    }
}
