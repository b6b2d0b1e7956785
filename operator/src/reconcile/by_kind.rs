//! Reconcile of every kind against the mock API server and a fake token
//! server (the real `ControlService` API, in process), on a manual clock:
//! the exact documents applied and resources deleted, the status, the
//! finalizer and the Events, on the happy paths and the main refusals.

use std::{sync::Arc, time::Duration};

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokenmesh_crds::{
    ExchangeMode, ExchangePolicy, ExchangePolicySpec, OAuthClient, OAuthClientSpec, PolicyActor,
    PolicyTo, ResourceStatus, TokenServer,
};
use tokenmesh_tokens::{
    clock::{Clock, ManualClock},
    secret::SecretHash,
};
use tonic::Code;

use super::{Context, Error, FINALIZER, reconcile, reconcile_keys};
use crate::{
    fixtures::{
        ApiServer, Call, FakeTokenServer, GATEWAY, SCOPE, as_json, context_at, expect,
        expect_event, expect_status, not_found, oauth_client, scope, secret_data, with_secret_ref,
    },
    secrets,
};

/// 2027-01-15T08:00:00Z.
const T0: u64 = 1_800_000_000;
const T0_TEXT: &str = "2027-01-15T08:00:00Z";
const RESYNC: Duration = Duration::from_secs(300);
const POLICY: &str = "/apis/tokenmesh.dev/v1alpha1/namespaces/shop/exchangepolicies/embed-orders";
const GENERATED: &str = "/api/v1/namespaces/shop/secrets/gateway-client-secret";

/// A fake token server, a context that reaches it, and the mock API
/// server, on a clock standing at [`T0`].
async fn fakes() -> (FakeTokenServer, Arc<Context>, ApiServer) {
    fakes_on(ManualClock::at_unix(T0)).await
}

/// Fakes of their own on `clock`. (A context's event recorder folds a
/// repeated reason into the earlier Event, so a test that expects it again
/// takes new ones.)
async fn fakes_on(clock: Arc<ManualClock>) -> (FakeTokenServer, Arc<Context>, ApiServer) {
    let (token_server, control) = FakeTokenServer::start().await;
    let (ctx, api) = context_at(control, clock);
    (token_server, ctx, api)
}

/// The outcome of a spawned reconcile that has made every call the test
/// answered; one more call (unanswered) would hang it, so it fails instead.
async fn outcome<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("reconcile made a call the test did not expect")
        .unwrap()
}

/// Expects the status patch of the object at `path`; answers with `object`.
async fn status_patch(api: &mut ApiServer, path: &str, object: Value) -> Value {
    expect(api, Method::PATCH, &format!("{path}/status"), object).await
}

/// The `Ready` condition of a status patch: (status, reason, message).
fn ready(patch: &Value) -> (&str, &str, &str) {
    let condition = &patch["status"]["conditions"][0];
    assert_eq!(condition["type"], "Ready");
    (
        condition["status"].as_str().unwrap(),
        condition["reason"].as_str().unwrap(),
        condition["message"].as_str().unwrap(),
    )
}

/// `object` as the API server holds it after an earlier successful reconcile.
fn already_ready<K: super::Managed>(object: &K, at: std::time::SystemTime) -> ResourceStatus {
    crate::desired::status(None, object.meta().generation, Ok(()), at)
}

fn doc(kind: &str, name: &str, spec: Value) -> Call {
    Call::Apply(json!({
        "apiVersion": "tokenmesh.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }))
}

fn deleting<K: kube::Resource>(mut object: K) -> K {
    let at = k8s_openapi::jiff::Timestamp::from_second(T0 as i64).unwrap();
    object.meta_mut().deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
    object
}

#[tokio::test]
async fn a_scope_is_applied_reported_ready_once_and_deleted_with_its_finalizer() {
    let clock = ManualClock::at_unix(T0);
    let (token_server, ctx, mut api) = fakes_on(clock.clone()).await;
    let task = tokio::spawn(reconcile(Arc::new(scope(true)), ctx.clone()));
    let status = status_patch(&mut api, SCOPE, as_json(&scope(true))).await;
    assert_eq!(
        ready(&status),
        ("True", "Applied", "in force in the token server")
    );
    assert_eq!(status["status"]["observedGeneration"], 2);
    assert_eq!(
        status["status"]["conditions"][0]["lastTransitionTime"],
        T0_TEXT
    );
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["type"], &event["reason"], &event["note"]),
        (
            &json!("Normal"),
            &json!("Applied"),
            &json!("applied to the token server")
        )
    );
    assert_eq!(event["regarding"]["kind"], "Scope");
    assert_eq!(outcome(task).await.unwrap(), Action::requeue(RESYNC));
    let document = doc("Scope", "read", json!({"name": "orders:read"}));
    assert_eq!(token_server.calls(), std::slice::from_ref(&document));

    // Ready already: applied again at the resync, no second event.
    clock.advance(RESYNC);
    let mut applied = scope(true);
    applied.status = Some(already_ready(&applied, clock.now() - RESYNC));
    let task = tokio::spawn(reconcile(Arc::new(applied.clone()), ctx.clone()));
    let status = status_patch(&mut api, SCOPE, as_json(&applied)).await;
    assert_eq!(ready(&status).1, "Applied");
    assert_eq!(
        status["status"]["conditions"][0]["lastTransitionTime"], T0_TEXT,
        "no transition"
    );
    assert_eq!(outcome(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(token_server.calls(), [document.clone(), document.clone()]);

    // Deleted: removed from the token server, then the finalizer goes.
    let task = tokio::spawn(reconcile(Arc::new(deleting(applied)), ctx));
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Normal"), &json!("Removed"))
    );
    let patch = expect(&mut api, Method::PATCH, SCOPE, as_json(&scope(false))).await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ])
    );
    assert_eq!(outcome(task).await.unwrap(), Action::await_change());
    assert_eq!(
        token_server.calls(),
        [
            document.clone(),
            document,
            Call::delete("Scope", "shop", "read")
        ]
    );
}

fn embed_policy(finalizer: bool) -> ExchangePolicy {
    let mut policy = ExchangePolicy::new(
        "embed-orders",
        ExchangePolicySpec {
            mode: ExchangeMode::Embed,
            actor: PolicyActor {
                clients: vec!["shop/gateway".into()],
                ..Default::default()
            },
            to: PolicyTo {
                audience: "orders".into(),
                scopes: vec!["orders:read".into()],
                ..Default::default()
            },
            ..Default::default()
        },
    );
    policy.metadata.namespace = Some("shop".into());
    policy.metadata.generation = Some(1);
    policy.metadata.uid = Some("uid-policy".into());
    if finalizer {
        policy.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    policy
}

#[tokio::test]
async fn an_exchange_policy_gets_its_finalizer_before_anything_is_applied_then_its_document() {
    let (token_server, ctx, mut api) = fakes().await;
    let task = tokio::spawn(reconcile(Arc::new(embed_policy(false)), ctx.clone()));
    let patch = expect(&mut api, Method::PATCH, POLICY, json!(embed_policy(true))).await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
        ])
    );
    assert_eq!(outcome(task).await.unwrap(), Action::await_change());
    assert_eq!(token_server.calls(), [], "nothing before the finalizer");

    let task = tokio::spawn(reconcile(Arc::new(embed_policy(true)), ctx));
    let status = status_patch(&mut api, POLICY, json!(embed_policy(true))).await;
    assert_eq!(ready(&status).0, "True");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(expect_event(&mut api, "shop").await["reason"], "Applied");
    assert_eq!(outcome(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(
        token_server.calls(),
        [doc(
            "ExchangePolicy",
            "embed-orders",
            json!({
                "mode": "embed",
                "from": {},
                "actor": {"clients": ["shop/gateway"]},
                "to": {"audience": "orders", "scopes": ["orders:read"]}
            })
        )]
    );
}

fn gateway() -> OAuthClient {
    oauth_client(
        "shop",
        "gateway",
        OAuthClientSpec {
            audiences: vec!["orders".into()],
            ..Default::default()
        },
    )
}

/// The digests an applied OAuthClient document carries.
fn hashes(call: &Call) -> Vec<String> {
    let Call::Apply(document) = call else {
        panic!("not an apply: {call:?}")
    };
    assert_eq!(document["kind"], "OAuthClient");
    assert!(
        document["spec"]["authentication"]
            .get("secretRef")
            .is_none()
    );
    serde_json::from_value(document["spec"]["authentication"]["secretHashes"].clone()).unwrap()
}

fn digest(secret: &[u8]) -> String {
    SecretHash::of(secret).encode()
}

#[tokio::test]
async fn a_client_gets_a_generated_secret_and_the_token_server_only_its_digest() {
    let (token_server, ctx, mut api) = fakes().await;
    let task = tokio::spawn(reconcile(Arc::new(gateway()), ctx));
    expect_status(&mut api, Method::GET, GENERATED, 404, not_found()).await;
    let written = expect(&mut api, Method::PATCH, GENERATED, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gateway-client-secret"}})).await;
    let secret = secret_data(&written, secrets::SECRET_KEY);
    assert!(secret.len() >= 43, "256 bits or more");
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(event["reason"], "SecretWritten");
    assert_eq!(
        event["note"],
        "client secret generated into Secret gateway-client-secret"
    );
    let status = status_patch(&mut api, GATEWAY, json!(gateway())).await;
    assert_eq!(ready(&status).1, "Applied");
    assert_eq!(status["status"]["clientId"], "shop/gateway");
    assert_eq!(expect_event(&mut api, "shop").await["reason"], "Applied");
    assert_eq!(outcome(task).await.unwrap(), Action::requeue(RESYNC));

    let calls = token_server.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(hashes(&calls[0]), [digest(&secret)]);
    let Call::Apply(document) = &calls[0] else {
        unreachable!()
    };
    let text = document.to_string();
    assert!(!text.contains(std::str::from_utf8(&secret).unwrap()));
    assert_eq!(
        document["metadata"],
        json!({"name": "gateway", "namespace": "shop"})
    );
}

#[tokio::test]
async fn a_rotated_secret_keeps_the_previous_one_until_the_clock_passes_its_grace() {
    let clock = ManualClock::at_unix(T0);
    let (token_server, ctx, mut api) = fakes_on(clock.clone()).await;
    // Rotated 30 s ago with 60 s of grace: the previous secret works until T0 + 30.
    let mut rotating = gateway();
    rotating.metadata.annotations = Some([(secrets::ROTATE.to_owned(), "1".to_owned())].into());
    let first = secrets::plan(&gateway(), None, T0 - 100, 60, || "first-secret".into()).write;
    let plan = secrets::plan(&rotating, first.as_ref(), T0 - 30, 60, || {
        "second-secret".into()
    });
    assert_eq!(plan.grace_ends, Some(T0 + 30));
    let stored = serde_json::to_value(plan.write.unwrap()).unwrap();

    let task = tokio::spawn(reconcile(Arc::new(rotating.clone()), ctx.clone()));
    expect(&mut api, Method::GET, GENERATED, stored.clone()).await;
    status_patch(&mut api, GATEWAY, json!(rotating)).await;
    expect_event(&mut api, "shop").await;
    assert_eq!(
        outcome(task).await.unwrap(),
        Action::requeue(Duration::from_secs(31)),
        "back when the grace ends"
    );
    assert_eq!(
        hashes(&token_server.calls()[0]),
        [digest(b"second-secret"), digest(b"first-secret")]
    );

    // The clock passes the end of the grace: only the new secret is accepted.
    clock.advance(Duration::from_secs(31));
    let mut applied = rotating.clone();
    applied.status = Some(tokenmesh_crds::OAuthClientStatus {
        common: already_ready(&rotating, clock.now()),
        ..Default::default()
    });
    let task = tokio::spawn(reconcile(Arc::new(applied.clone()), ctx));
    expect(&mut api, Method::GET, GENERATED, stored).await;
    status_patch(&mut api, GATEWAY, json!(applied)).await;
    assert_eq!(outcome(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(hashes(&token_server.calls()[1]), [digest(b"second-secret")]);
}

const REFERENCED: &str = "/api/v1/namespaces/shop/secrets/gateway-oauth";

#[tokio::test]
async fn a_referenced_secret_reaches_the_token_server_as_a_digest_and_its_loss_removes_the_client()
{
    let (token_server, ctx, mut api) = fakes().await;
    let client = oauth_client("shop", "gateway", with_secret_ref());
    let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx.clone()));
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "gateway-oauth", "namespace": "shop"},
        // "their-own-secret"
        "data": {"client_secret": "dGhlaXItb3duLXNlY3JldA=="}
    });
    expect(&mut api, Method::GET, REFERENCED, secret).await;
    let status = status_patch(&mut api, GATEWAY, json!(client)).await;
    assert_eq!(ready(&status).1, "Applied");
    assert_eq!(expect_event(&mut api, "shop").await["reason"], "Applied");
    assert_eq!(outcome(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(
        hashes(&token_server.calls()[0]),
        [digest(b"their-own-secret")]
    );

    // The Secret is deleted: the client is removed from the token server.
    let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx));
    expect_status(&mut api, Method::GET, REFERENCED, 404, not_found()).await;
    let status = status_patch(&mut api, GATEWAY, json!(client)).await;
    assert_eq!(ready(&status).0, "False");
    assert_eq!(ready(&status).1, "SecretUnavailable");
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("SecretUnavailable"))
    );
    assert_eq!(outcome(task).await.unwrap_err().label(), "secret");
    assert_eq!(
        token_server.calls()[1..],
        [Call::delete("OAuthClient", "shop", "gateway")]
    );
}

#[tokio::test]
async fn a_client_id_of_another_namespace_reaches_neither_secrets_nor_the_token_server() {
    let (token_server, ctx, mut api) = fakes().await;
    let squatter = oauth_client(
        "evil",
        "innocent",
        OAuthClientSpec {
            client_id: Some("shop/orders".into()),
            ..Default::default()
        },
    );
    let task = tokio::spawn(reconcile(Arc::new(squatter.clone()), ctx));
    let path = "/apis/tokenmesh.dev/v1alpha1/namespaces/evil/oauthclients/innocent/status";
    let status = expect(&mut api, Method::PATCH, path, json!(squatter)).await;
    assert_eq!(ready(&status).1, "Rejected");
    assert_eq!(expect_event(&mut api, "evil").await["reason"], "Rejected");
    assert!(matches!(outcome(task).await, Err(Error::Rejected(_))));
    assert_eq!(token_server.calls(), []);
}

#[tokio::test]
async fn a_refusal_of_the_token_server_is_reported_with_its_reason_and_message() {
    for (code, reason) in [
        (Code::InvalidArgument, "Rejected"),
        (Code::Unauthenticated, "NotAuthorized"),
        (Code::PermissionDenied, "NotAuthorized"),
        (Code::Unavailable, "TokenServerUnavailable"),
    ] {
        let (token_server, ctx, mut api) = fakes().await;
        token_server.refuse_apply(code, "spec.name: orders:read is taken");
        let task = tokio::spawn(reconcile(Arc::new(scope(true)), ctx));
        let status = status_patch(&mut api, SCOPE, as_json(&scope(true))).await;
        assert_eq!(
            ready(&status),
            (
                "False",
                reason,
                "token server: spec.name: orders:read is taken"
            ),
            "{code:?}"
        );
        let event = expect_event(&mut api, "shop").await;
        assert_eq!(
            (&event["type"], &event["reason"]),
            (&json!("Warning"), &json!(reason))
        );
        assert_eq!(
            event["note"],
            "token server: spec.name: orders:read is taken"
        );
        assert_eq!(outcome(task).await.unwrap_err().label(), "token_server");
        assert_eq!(
            token_server.calls(),
            [doc("Scope", "read", json!({"name": "orders:read"}))]
        );
    }
}

#[tokio::test]
async fn a_deletion_the_token_server_refuses_keeps_the_finalizer_and_says_why() {
    let (token_server, ctx, mut api) = fakes().await;
    token_server.refuse_delete(
        Code::InvalidArgument,
        "orders:read is in use by shop/gateway",
    );
    let gone = deleting(scope(true));
    let task = tokio::spawn(reconcile(Arc::new(gone.clone()), ctx));
    let status = status_patch(&mut api, SCOPE, as_json(&gone)).await;
    let message =
        "cannot remove it from the token server yet: orders:read is in use by shop/gateway";
    assert_eq!(ready(&status), ("False", "DeletionBlocked", message));
    let event = expect_event(&mut api, "shop").await;
    assert_eq!(
        (&event["reason"], &event["note"]),
        (&json!("DeletionBlocked"), &json!(message))
    );
    // No finalizer patch: the task ends without another call.
    assert_eq!(outcome(task).await.unwrap_err().label(), "token_server");
    assert_eq!(
        token_server.calls(),
        [Call::delete("Scope", "shop", "read")]
    );
}

fn token_server_resource() -> TokenServer {
    let mut server = TokenServer::new("default", Default::default());
    server.metadata.namespace = Some("tokenmesh".into());
    server.metadata.uid = Some("uid-ts".into());
    server.metadata.generation = Some(1);
    server
}

const KEYS: &str = "/api/v1/namespaces/tokenmesh/secrets/default-signing-keys";

/// The activation times of the key entries of a written Secret.
fn activations(secret: &Value) -> Vec<u64> {
    let mut times: Vec<u64> = secret["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(|name| name.split_once('-').unwrap().0.parse().unwrap())
        .collect();
    times.sort();
    times
}

/// Fakes on `clock` whose resync (a week) outlasts the rotation period (a
/// day), so the requeue shows when the keys change next.
async fn resyncing_weekly(clock: Arc<ManualClock>) -> (FakeTokenServer, Arc<Context>, ApiServer) {
    let (token_server, mut ctx, api) = fakes_on(clock).await;
    Arc::get_mut(&mut ctx).unwrap().resync = Duration::from_secs(7 * 86_400);
    (token_server, ctx, api)
}

#[tokio::test]
async fn signing_keys_rotate_as_the_clock_moves_and_never_reach_the_token_server() {
    let clock = ManualClock::at_unix(T0);
    let server = Arc::new(token_server_resource());
    let day = Duration::from_secs(86_400);
    let path = "/apis/tokenmesh.dev/v1alpha1/namespaces/tokenmesh/tokenservers/default/status";
    let answer =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "default-signing-keys"}});

    // None yet: the current key from now, its successor a period (a day) ahead.
    let (token_server, ctx, mut api) = resyncing_weekly(clock.clone()).await;
    let task = tokio::spawn(reconcile_keys(server.clone(), ctx));
    expect_status(&mut api, Method::GET, KEYS, 404, not_found()).await;
    let written = expect(&mut api, Method::PATCH, KEYS, answer.clone()).await;
    assert_eq!(activations(&written), [T0, T0 + 86_400]);
    let event = expect_event(&mut api, "tokenmesh").await;
    assert_eq!(
        (&event["reason"], &event["note"]),
        (
            &json!("KeysRotated"),
            &json!("signing keys: 2 added, 0 removed, in Secret default-signing-keys")
        )
    );
    let status = expect(&mut api, Method::PATCH, path, json!(server.as_ref())).await;
    assert_eq!(ready(&status).0, "True");
    assert_eq!(
        outcome(task).await.unwrap(),
        Action::requeue(day),
        "back when the successor activates"
    );
    assert_eq!(token_server.calls(), []);

    // A day on, the successor signs: its own successor is published.
    clock.advance(day);
    let (token_server, ctx, mut api) = resyncing_weekly(clock.clone()).await;
    let task = tokio::spawn(reconcile_keys(server.clone(), ctx));
    expect(&mut api, Method::GET, KEYS, written).await;
    let rotated = expect(&mut api, Method::PATCH, KEYS, answer).await;
    assert_eq!(activations(&rotated), [T0, T0 + 86_400, T0 + 2 * 86_400]);
    let event = expect_event(&mut api, "tokenmesh").await;
    assert_eq!(
        event["note"],
        "signing keys: 1 added, 0 removed, in Secret default-signing-keys"
    );
    expect(&mut api, Method::PATCH, path, json!(server.as_ref())).await;
    assert_eq!(
        outcome(task).await.unwrap(),
        Action::requeue(day),
        "the next change: the third key activates"
    );
    assert_eq!(token_server.calls(), []);
}
