//! RFC 8693 token exchange along gateway → orders → payments.

use serde_json::{Value, json};

use crate::harness::{Config, SECRET, Server, jwt_part};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn mesh_config() -> Config {
    let config = Config::new("{}");
    let client = |name: &str, audiences: &str| {
        format!(
            "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}}}\nspec:\n  grantTypes: [client_credentials, \"{EXCHANGE}\"]\n  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}\n  scopes: [\"orders:read\", \"orders:write\"]\n  audiences: [{audiences}]\n  allowIntrospection: true\n"
        )
    };
    let policy = |name: &str, from: &str, actor: &str, to: &str, depth: u32| {
        format!(
            "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: exchange\n  from: {{audiences: [{from}]}}\n  actor: {{clients: [{actor}]}}\n  to: {{audience: {to}, scopes: [\"orders:read\"]}}\n  ttl: 120s\n  maxDelegationDepth: {depth}\n"
        )
    };
    let mut yaml = std::fs::read_to_string(config.file()).unwrap();
    yaml += &client("orders-svc", "payments");
    yaml += &client("payments-svc", "ledger");
    yaml += &policy("orders-to-payments", "orders", "orders-svc", "payments", 2);
    yaml += &policy(
        "payments-to-ledger",
        "payments",
        "payments-svc",
        "ledger",
        1,
    );
    std::fs::write(config.file(), yaml).unwrap();
    config
}

async fn exchange(
    server: &Server,
    actor: &str,
    subject: &str,
    audience: &str,
) -> reqwest::Response {
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", audience),
    ];
    server
        .post("/oauth2/token", Some((actor, SECRET)), &form)
        .await
}

#[tokio::test]
async fn exchange_carries_sub_narrows_scopes_and_chains_actors() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let first = server
        .token(&[
            ("scope", "orders:read orders:write"),
            ("audience", "orders"),
        ])
        .await;
    let first = first["access_token"].as_str().unwrap();

    let resp = exchange(&server, "orders-svc", first, "payments").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["scope"], "orders:read", "only what the policy allows");
    assert!(body["expires_in"].as_u64().unwrap() <= 120);
    let second = body["access_token"].as_str().unwrap();
    let info = server.introspect(second).await;
    assert_eq!(info["sub"], "gateway", "the subject stays");
    assert_eq!(info["aud"], "payments");
    assert_eq!(info["client_id"], "orders-svc");
    assert_eq!(
        info["act"],
        json!({"sub": "orders-svc", "client_id": "orders-svc"})
    );

    // The next hop: one more actor, beyond payments-to-ledger's depth of 1.
    let resp = exchange(&server, "payments-svc", second, "ledger").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    // Wrong actor, no policy, inactive subject.
    let resp = exchange(&server, "payments-svc", first, "payments").await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    let resp = exchange(&server, "orders-svc", first, "billing").await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_target"
    );
    let resp = exchange(&server, "orders-svc", "not-a-token", "payments").await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    // Revoking the original grant revokes what was exchanged from it.
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", first), ("revoke", "grant")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(server.introspect(second).await["active"], false);
    let resp = exchange(&server, "orders-svc", first, "payments").await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_client_without_the_exchange_grant_is_refused() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let first = server.token(&[("audience", "orders")]).await;
    let resp = exchange(
        &server,
        "gateway",
        first["access_token"].as_str().unwrap(),
        "payments",
    )
    .await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
}

/// A client's `claims.may_act` goes into its tokens (RFC 8693 §4.4), and an
/// exchange is then open only to the actor it names, whatever policies say.
#[tokio::test]
async fn may_act_in_a_subject_token_names_the_only_actor() {
    let config = mesh_config();
    let mut yaml = std::fs::read_to_string(config.file()).unwrap();
    yaml += "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: kiosk}\nspec:\n  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  claims: {may_act: {client_id: payments-svc}}\n";
    yaml += "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: orders-to-ledger}\nspec:\n  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [payments-svc]}\n  to: {audience: ledger, scopes: [\"orders:read\"]}\n";
    std::fs::write(config.file(), yaml).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "orders:read"),
    ];
    let issued: Value = server
        .post("/oauth2/token", Some(("kiosk", SECRET)), &form)
        .await
        .json()
        .await
        .unwrap();
    let subject = issued["access_token"].as_str().unwrap();
    let claims = jwt_part(subject, 1);
    assert_eq!(claims["may_act"], json!({"client_id": "payments-svc"}));

    // orders-to-payments admits orders-svc, but may_act does not name it.
    let refused = exchange(&server, "orders-svc", subject, "payments").await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("may_act"),
        "{body}"
    );
    let allowed = exchange(&server, "payments-svc", subject, "ledger").await;
    assert_eq!(allowed.status(), 200, "{}", allowed.text().await.unwrap());
}

/// RFC 8693 §2.1: `audience` and `resource` are optional. Without them the
/// one audience the policies open to this actor and subject is taken; two
/// targets are refused, since a token here is for one audience.
#[tokio::test]
async fn the_audience_may_be_left_to_the_policies() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let first = server.token(&[("audience", "orders")]).await;
    let subject = first["access_token"].as_str().unwrap();
    let post = async |targets: &[(&str, &str)]| {
        let mut form = vec![
            ("grant_type", EXCHANGE),
            ("subject_token_type", ACCESS_TOKEN),
            ("subject_token", subject),
        ];
        form.extend_from_slice(targets);
        let resp = server
            .post("/oauth2/token", Some(("orders-svc", SECRET)), &form)
            .await;
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    let (status, body) = post(&[]).await;
    assert_eq!(status, 200, "{body}");
    let exchanged = server
        .introspect(body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(exchanged["aud"], json!("payments"), "{exchanged}");

    let (status, body) = post(&[("audience", "payments"), ("audience", "ledger")]).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (400, Some("invalid_target"))
    );
}
