//! Reconcile of IdentityProviders against the mock API server and the fake
//! token server: the Secret a provider names reaches the token server
//! inline (users, or the upstream client secret), never as a reference; a
//! missing or unreadable Secret is `SecretUnavailable`, and the provider
//! leaves the token server until it is back.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokenmesh_crds::{
    IdentityProvider, IdentityProviderSpec, IdentityProviderType, OidcProviderSpec, SecretKeyRef,
    StaticProviderSpec,
};
use tokenmesh_tokens::clock::ManualClock;

use super::{Error, FINALIZER, reconcile};
use crate::fixtures::{
    ApiServer, Call, FakeTokenServer, context_at, expect, expect_event, expect_status, not_found,
};

const CORP: &str = "/apis/tokenmesh.dev/v1alpha1/namespaces/shop/identityproviders/corp";
const USERS: &str = "/api/v1/namespaces/shop/secrets/people";
const UPSTREAM: &str = "/api/v1/namespaces/shop/secrets/corp-oidc";
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

fn provider(name: &str, spec: IdentityProviderSpec) -> IdentityProvider {
    let mut provider = IdentityProvider::new(name, spec);
    provider.metadata.namespace = Some("shop".into());
    provider.metadata.uid = Some(format!("uid-{name}"));
    provider.metadata.generation = Some(1);
    provider.metadata.finalizers = Some(vec![FINALIZER.into()]);
    provider
}

fn people() -> IdentityProvider {
    provider(
        "people",
        IdentityProviderSpec {
            kind: IdentityProviderType::Static,
            static_users: Some(StaticProviderSpec {
                users_secret_ref: Some(SecretKeyRef {
                    name: "people".into(),
                    key: "users.yaml".into(),
                }),
                users: None,
            }),
            ..Default::default()
        },
    )
}

fn corp() -> IdentityProvider {
    provider(
        "corp",
        IdentityProviderSpec {
            kind: IdentityProviderType::Oidc,
            oidc: Some(OidcProviderSpec {
                issuer: "https://login.corp.example".into(),
                client_id: "tokenmesh".into(),
                client_secret_ref: Some(SecretKeyRef {
                    name: "corp-oidc".into(),
                    key: "client_secret".into(),
                }),
                claim_mappings: BTreeMap::from([("email".into(), "claims.mail".into())]),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

fn secret(name: &str, key: &str, value: &str) -> Value {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "shop"},
        "data": {key: encoded}
    })
}

/// The `Ready` condition of a status patch: (status, reason, message).
fn ready(patch: &Value) -> (String, String, String) {
    let c = &patch["status"]["conditions"][0];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&c["status"]), text(&c["reason"]), text(&c["message"]))
}

/// Reconciles `provider`, answers the GET of the Secret it names (at
/// `secret_path`) with `secret`, and returns the task and the status it wrote.
async fn reconcile_reading(
    ctx: Arc<super::Context>,
    api: &mut ApiServer,
    provider: IdentityProvider,
    secret_path: &str,
    secret: Value,
) -> (tokio::task::JoinHandle<Result<Action, Error>>, Value) {
    let path = format!(
        "/apis/tokenmesh.dev/v1alpha1/namespaces/shop/identityproviders/{}/status",
        provider.metadata.name.as_deref().unwrap_or_default()
    );
    let task = tokio::spawn(reconcile(Arc::new(provider.clone()), ctx));
    expect(api, Method::GET, secret_path, secret).await;
    let status = expect(api, Method::PATCH, &path, json!(provider)).await;
    (task, status)
}

async fn outcome<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("reconcile made a call the test did not expect")
        .unwrap()
}

#[tokio::test]
async fn a_static_provider_sends_its_secrets_users_inline_and_is_ready() {
    let (token_server, control) = FakeTokenServer::start().await;
    let (ctx, mut api) = context_at(control, ManualClock::at_unix(1_800_000_000));
    let users = format!(
        "- username: alice\n  passwordHash: \"{HASH}\"\n  claims: {{email: alice@example.com}}\n"
    );
    let (task, status) = reconcile_reading(
        ctx,
        &mut api,
        people(),
        USERS,
        secret("people", "users.yaml", &users),
    )
    .await;
    assert_eq!(ready(&status).1, "Applied");
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["reason"], &event["regarding"]["kind"]),
        (&json!("Applied"), &json!("IdentityProvider"))
    );
    assert_eq!(
        outcome(task).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(
        token_server.calls(),
        [Call::Apply(json!({
            "apiVersion": "tokenmesh.dev/v1alpha1",
            "kind": "IdentityProvider",
            "metadata": {"name": "people", "namespace": "shop"},
            "spec": {"type": "static", "static": {"users": [
                {"username": "alice", "passwordHash": HASH, "claims": {"email": "alice@example.com"}}
            ]}},
        }))]
    );
}

#[tokio::test]
async fn an_oidc_providers_client_secret_travels_inline_and_its_loss_removes_the_provider() {
    let (token_server, control) = FakeTokenServer::start().await;
    let (ctx, mut api) = context_at(control, ManualClock::at_unix(1_800_000_000));
    let value = secret("corp-oidc", "client_secret", "upstream-secret\n");
    let (task, status) = reconcile_reading(ctx.clone(), &mut api, corp(), UPSTREAM, value).await;
    assert_eq!(ready(&status).1, "Applied");
    expect_event(&mut api, "shop").await;
    outcome(task).await.unwrap();
    let calls = token_server.calls();
    let Call::Apply(document) = &calls[0] else {
        panic!("{calls:?}")
    };
    let oidc = &document["spec"]["oidc"];
    assert_eq!(
        oidc["clientSecret"], "upstream-secret",
        "without the line end"
    );
    assert!(oidc.get("clientSecretRef").is_none(), "{oidc}");
    assert_eq!(oidc["claimMappings"], json!({"email": "claims.mail"}));

    // The Secret is deleted: the provider leaves the token server and says why.
    let task = tokio::spawn(reconcile(Arc::new(corp()), ctx));
    expect_status(&mut api, Method::GET, UPSTREAM, 404, not_found()).await;
    let status = expect(
        &mut api,
        Method::PATCH,
        &format!("{CORP}/status"),
        json!(corp()),
    )
    .await;
    let (state, reason, message) = ready(&status);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("False", "SecretUnavailable")
    );
    assert_eq!(
        message,
        "spec.oidc.clientSecretRef names the Secret `corp-oidc` (key `client_secret`), which does not exist in this namespace"
    );
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("SecretUnavailable"))
    );
    assert!(matches!(
        outcome(task).await,
        Err(Error::SecretMissing { .. })
    ));
    assert_eq!(
        token_server.calls()[1..],
        [Call::delete("IdentityProvider", "shop", "corp")]
    );
}

#[tokio::test]
async fn users_that_are_not_a_yaml_list_are_reported_and_not_applied() {
    let (token_server, control) = FakeTokenServer::start().await;
    let (ctx, mut api) = context_at(control, ManualClock::at_unix(1_800_000_000));
    let bad = secret("people", "users.yaml", "alice: hunter2\n");
    let (task, status) = reconcile_reading(ctx, &mut api, people(), USERS, bad).await;
    let (state, reason, message) = ready(&status);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("False", "SecretUnavailable")
    );
    assert!(
        message.contains("`users.yaml` is not a YAML list"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    expect_event(&mut api, "shop").await;
    assert_eq!(outcome(task).await.unwrap_err().label(), "secret");
    assert_eq!(token_server.calls(), []);
}

#[tokio::test]
async fn an_unreachable_upstream_is_not_ready_with_the_token_servers_reason_and_is_checked_again_soon()
 {
    let (token_server, control) = FakeTokenServer::start().await;
    token_server.report_health(tokenmesh_proto::v1::ResourceHealth {
        ready: false,
        reason: "UpstreamUnavailable".into(),
        message: "https://login.corp.example/.well-known/openid-configuration cannot be reached"
            .into(),
    });
    let (ctx, mut api) = context_at(control, ManualClock::at_unix(1_800_000_000));
    let value = secret("corp-oidc", "client_secret", "upstream-secret");
    let (task, status) = reconcile_reading(ctx, &mut api, corp(), UPSTREAM, value).await;
    let (state, reason, message) = ready(&status);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("False", "UpstreamUnavailable")
    );
    assert!(message.contains("cannot be reached"), "{message}");
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("UpstreamUnavailable"))
    );
    assert_eq!(
        outcome(task).await.unwrap(),
        Action::requeue(Duration::from_secs(30)),
        "in force, and checked again before the resync"
    );
    assert_eq!(token_server.calls().len(), 1, "applied all the same");
}

#[test]
fn a_secret_change_maps_to_the_providers_that_name_it() {
    let providers = [Arc::new(people()), Arc::new(corp())];
    let named = |name: &str| -> Vec<String> {
        crate::references::naming(&providers, Some("shop"), name)
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(named("people"), ["people"]);
    assert_eq!(named("corp-oidc"), ["corp"]);
    assert!(named("other").is_empty());
}
