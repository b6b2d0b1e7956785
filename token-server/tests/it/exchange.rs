//! RFC 8693 token exchange along gateway → orders → payments.

use serde_json::{Value, json};

use crate::harness::{Config, SECRET, Server, jwt_part};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

pub fn mesh_config() -> Config {
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
    config.append("---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: kiosk}\nspec:\n  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  claims: {may_act: {client_id: payments-svc}}\n");
    config.append("---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: orders-to-ledger}\nspec:\n  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [payments-svc]}\n  to: {audience: ledger, scopes: [\"orders:read\"]}\n");
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

/// Issue #14 item 3: an `actor_token` must identify the caller. payments-svc
/// holds a token of orders-svc (it receives such tokens downstream); it must
/// not lend payments-svc orders-svc's name for `act.sub` and `may_act`.
#[tokio::test]
async fn an_actor_token_of_another_client_is_invalid_grant() {
    let config = mesh_config();
    config.append("---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: kiosk}\nspec:\n  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}\n  scopes: [\"orders:read\"]\n  audiences: [payments]\n  claims: {may_act: {sub: orders-svc}}\n");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let issue = async |client: &str| {
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
        ];
        let resp = server
            .post("/oauth2/token", Some((client, SECRET)), &form)
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    };
    let subject = issue("kiosk").await;
    let orders_token = issue("orders-svc").await;
    let own_token = issue("payments-svc").await;
    let with_actor = async |actor_token: &str| {
        let form = [
            ("grant_type", EXCHANGE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", ACCESS_TOKEN),
            ("actor_token", actor_token),
            ("actor_token_type", ACCESS_TOKEN),
            ("audience", "ledger"),
        ];
        let resp = server
            .post("/oauth2/token", Some(("payments-svc", SECRET)), &form)
            .await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(
        with_actor(&orders_token).await,
        (400, "invalid_grant".to_owned())
    );
    // Its own token is accepted as an actor token, and may_act, naming
    // orders-svc, still refuses payments-svc.
    assert_eq!(
        with_actor(&own_token).await,
        (400, "unauthorized_client".to_owned())
    );
}

/// Issue #14 item 6: a client that got its token by exchange revokes, with
/// `revoke=grant`, what was issued to it (the token and the tokens embedded
/// in it), never the token of the client that started the grant.
#[tokio::test]
async fn only_the_client_that_started_a_grant_revokes_all_of_it() {
    let config = mesh_config();
    config.append("---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: embed-ledger}\nspec:\n  mode: embed\n  from: {audiences: [payments], clients: [orders-svc]}\n  to: {audience: ledger, scopes: [\"orders:read\"]}\n");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let gateway_token = async || {
        let body = server
            .token(&[("scope", "orders:read"), ("audience", "orders")])
            .await;
        body["access_token"].as_str().unwrap().to_owned()
    };
    let exchanged = async |subject: &str| {
        let resp = exchange(&server, "orders-svc", subject, "payments").await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    };
    let revoke_grant = async |client: &str, token: &str| {
        let form = [("token", token), ("revoke", "grant")];
        let resp = server
            .post("/oauth2/revoke", Some((client, SECRET)), &form)
            .await;
        assert_eq!(resp.status(), 200);
    };
    let active = async |token: &str| server.introspect(token).await["active"] == true;

    // orders-svc joined gateway's grant by exchange, twice: it revokes every
    // token the grant issued to it, and nothing of gateway's.
    let first = gateway_token().await;
    let second = exchanged(&first).await;
    let sibling = exchanged(&first).await;
    let inner = jwt_part(&second, 1)["embedded_tokens"]["ledger"]
        .as_str()
        .unwrap()
        .to_owned();
    revoke_grant("orders-svc", &second).await;
    assert!(!active(&second).await);
    assert!(!active(&inner).await);
    assert!(
        !active(&sibling).await,
        "its other token under the grant goes too"
    );
    assert!(
        active(&first).await,
        "gateway's token is not orders-svc's to revoke"
    );

    // gateway started a grant: its revocation reaches every token of it.
    let start = gateway_token().await;
    let joined = exchanged(&start).await;
    revoke_grant("gateway", &start).await;
    assert!(!active(&start).await);
    assert!(!active(&joined).await);
    assert!(active(&first).await, "another grant stays");
}
