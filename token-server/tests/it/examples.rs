//! The Kubernetes example (examples/kubernetes) as the chart runs it: its
//! resources loaded into the real binary, whose TokenServer trusts a fake
//! API server's service-account keys for the audience the injected sidecars
//! present (the chart's `sidecar.tokenAudience`). The policies must agree:
//! the gateway's token embeds one for orders, and orders' sidecar, signed in
//! with its pod's service-account token, exchanges that for payments.

use serde::Deserialize;
use serde_json::Value;
use tokenmesh_tokens::{Algorithm, secret::SecretHash, signing::SigningKey};

use crate::{
    harness::now,
    harness::{Config, Server, jwt_part},
    service_accounts::{FakeApiServer, JWT_BEARER, K8S_ISSUER, sa_token},
};

/// The chart's default `sidecar.tokenAudience`.
const SIDECAR_TOKEN_AUDIENCE: &str = "tokenmesh";
const GATEWAY_SECRET: &str = "shop-example-gateway-secret-0123456789abcdef";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn example(name: &str) -> String {
    let path = format!(
        "{}/../examples/kubernetes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The documents of `text` as the operator applies them: a client with a
/// secret method and no `secretRef` gets the hash of the secret the operator
/// would generate (here the gateway's value, unused).
fn as_the_operator_applies(text: &str) -> String {
    let mut out = String::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let mut value = serde_yaml_ng::Value::deserialize(document).unwrap();
        // A Kubernetes Secret is the operator's to read (see `secrets_of`).
        if value.get("kind").and_then(|k| k.as_str()) == Some("Secret") {
            continue;
        }
        let auth = value
            .get_mut("spec")
            .and_then(|spec| spec.get_mut("authentication"))
            .and_then(|auth| auth.as_mapping_mut());
        if let Some(auth) = auth {
            let method = auth.get("method").and_then(|m| m.as_str()).unwrap_or("");
            if method.starts_with("client_secret") && !auth.contains_key("secretRef") {
                let hash = SecretHash::of(GATEWAY_SECRET.as_bytes()).encode();
                auth.insert("secretHashes".into(), vec![hash].into());
            }
        }
        out += &format!("---\n{}", serde_yaml_ng::to_string(&value).unwrap());
    }
    out
}

fn config(api: &FakeApiServer) -> Config {
    let config = Config::new("{}");
    let server = format!(
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {{name: default}}\nspec:\n  kubernetes: {{issuer: \"{K8S_ISSUER}\", audience: {SIDECAR_TOKEN_AUDIENCE}, discoveryUrl: \"{}\"}}\n",
        api.url
    );
    let files = [
        "scopes.yaml",
        "oauthclients.yaml",
        "exchangepolicies.yaml",
        "sign-in.yaml",
    ];
    let documents = files
        .into_iter()
        .map(|name| as_the_operator_applies(&example(name)))
        .fold(server, |all, docs| all + &docs);
    std::fs::write(config.file(), documents).unwrap();
    // The Secret the example has you create (kubectl -n shop create secret generic gateway-oauth ...).
    config.write_secret("gateway-oauth", "client_secret", GATEWAY_SECRET);
    // The Secrets the examples hold, where the token server reads secretRefs.
    for (name, key, value) in secrets_of(&example("sign-in.yaml")) {
        config.write_secret(&name, &key, &value);
    }
    config
}

/// (name, key, value) of the `stringData` of the Secrets in `text`.
fn secrets_of(text: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).unwrap();
        if value["kind"] != "Secret" {
            continue;
        }
        let name = value["metadata"]["name"].as_str().unwrap().to_owned();
        for (key, data) in value["stringData"].as_object().into_iter().flatten() {
            found.push((name.clone(), key.clone(), data.as_str().unwrap().to_owned()));
        }
    }
    found
}

#[tokio::test]
async fn the_kubernetes_example_carries_a_gateway_token_through_orders_to_payments() {
    let cluster_key = SigningKey::generate("sa-1".into(), Algorithm::RS256).unwrap();
    let api = FakeApiServer::start(&[&cluster_key]).await;
    let config = config(&api);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;

    // The gateway (client_secret_post, the Secret above) gets its token.
    let response = server
        .post(
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "shop/gateway"),
                ("client_secret", GATEWAY_SECRET),
                ("scope", "orders:read payments:charge"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    let gateway: Value = response.json().await.unwrap();
    let token = gateway["access_token"].as_str().unwrap();
    assert_eq!(
        token.split('.').count(),
        3,
        "the gateway's token is a JWT: the walk-through reads the embedded token out of it"
    );
    let outer = jwt_part(token, 1);
    let inner = outer["embedded_tokens"]["shop/orders"]
        .as_str()
        .unwrap_or_else(|| panic!("no embedded token for shop/orders: {outer}"))
        .to_owned();
    let for_orders = jwt_part(&inner, 1);
    // What the orders sidecar accepts by default: its client id.
    assert_eq!(for_orders["aud"], "shop/orders", "{for_orders}");
    assert_eq!(for_orders["scope"], "orders:read payments:charge");

    // Orders' sidecar exchanges it, authenticated by its pod's projected
    // service-account token, for the route's audience and scopes.
    let projected = |account: &str| {
        sa_token(
            &cluster_key,
            "shop",
            account,
            SIDECAR_TOKEN_AUDIENCE,
            now() + 600,
        )
    };
    let orders = projected("orders");
    let response = server
        .post(
            "/oauth2/token",
            None,
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &inner),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "shop/payments"),
                ("scope", "payments:charge"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &orders),
            ],
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let for_payments = jwt_part(body["access_token"].as_str().unwrap(), 1);
    // What the payments sidecar accepts by default: its client id.
    assert_eq!(for_payments["aud"], "shop/payments", "{for_payments}");
    assert_eq!(for_payments["scope"], "payments:charge");
    assert_eq!(
        for_payments["sub"], outer["sub"],
        "the caller stays the subject"
    );
    assert_eq!(for_payments["act"]["client_id"], "shop/orders");
    assert_eq!(for_payments["via"], "shop/orders");

    // Payments' own sidecar signs in with its service account too.
    let payments = projected("payments");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", payments.as_str()),
    ];
    let response = server.post("/oauth2/token", None, &form).await;
    assert_eq!(response.status(), 200);
}
