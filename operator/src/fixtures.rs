//! A mock Kubernetes API server at the HTTP level (kube's tower-test
//! pattern): each scenario lists the calls reconcile must make, checks
//! method, path and body, and answers as the API server would. With it, a
//! fake token server ([`FakeTokenServer`]) and a clock of the test's choice.

mod token_server;

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::{
    Client,
    client::Body,
    runtime::events::{Recorder, Reporter},
};
use serde_json::{Value, json};
use tokenmesh_crds::{
    ClientAuthentication, OAuthClient, OAuthClientSpec, Scope, ScopeSpec, SecretKeyRef,
};
use tokenmesh_tokens::clock::{SharedClock, SystemClock};
use tower_test::mock::{self, Handle};

pub use self::token_server::{Call, FakeTokenServer};
use crate::{control::Control, reconcile::Context};

pub type ApiServer = Handle<Request<Body>, Response<Body>>;

pub fn context(control: Control) -> (Arc<Context>, ApiServer) {
    context_at(control, SystemClock::shared())
}

/// A context whose reconciles read the time from `clock`.
pub fn context_at(control: Control, clock: SharedClock) -> (Arc<Context>, ApiServer) {
    let (client, handle) = api_server();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tokenmesh-operator".into(),
            instance: None,
        },
    );
    let ctx = Context::new(
        client,
        control,
        recorder,
        std::time::Duration::from_secs(300),
        std::time::Duration::from_secs(60),
        clock,
    );
    (Arc::new(ctx), handle)
}

/// A real [`Client`] whose calls reach the returned mock API server.
pub fn api_server() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// Where [`scope`] and the `gateway` client live on the API server.
pub const SCOPE: &str = "/apis/tokenmesh.dev/v1alpha1/namespaces/shop/scopes/read";
pub const GATEWAY: &str = "/apis/tokenmesh.dev/v1alpha1/namespaces/shop/oauthclients/gateway";

pub fn scope(finalizer: bool) -> Scope {
    let mut scope = Scope::new(
        "read",
        ScopeSpec {
            name: Some("orders:read".into()),
            ..Default::default()
        },
    );
    scope.metadata.namespace = Some("shop".into());
    scope.metadata.generation = Some(2);
    scope.metadata.resource_version = Some("7".into());
    scope.metadata.uid = Some("uid-7".into());
    if finalizer {
        scope.metadata.finalizers = Some(vec![crate::reconcile::FINALIZER.into()]);
    }
    scope
}

/// An OAuthClient that has its finalizer, as the API server holds it.
pub fn oauth_client(namespace: &str, name: &str, spec: OAuthClientSpec) -> OAuthClient {
    let mut client = OAuthClient::new(name, spec);
    client.metadata.namespace = Some(namespace.into());
    client.metadata.uid = Some(format!("uid-{name}"));
    client.metadata.generation = Some(1);
    client.metadata.finalizers = Some(vec![crate::reconcile::FINALIZER.into()]);
    client
}

/// A client spec whose secret is its own, in the Secret `gateway-oauth`.
pub fn with_secret_ref() -> OAuthClientSpec {
    OAuthClientSpec {
        authentication: ClientAuthentication {
            secret_ref: Some(SecretKeyRef {
                name: "gateway-oauth".into(),
                key: "client_secret".into(),
            }),
            ..Default::default()
        },
        audiences: vec!["orders".into()],
        ..Default::default()
    }
}

/// A Secret someone other than the operator made.
pub fn foreign_secret(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"client_secret": "c29tZW9uZS1lbHNlcw=="}
    })
}

/// Waits for the next call, checks it, and answers with `answer`.
pub async fn expect(handle: &mut ApiServer, method: Method, path: &str, answer: Value) -> Value {
    expect_status(handle, method, path, 200, answer).await
}

/// Like [`expect`], answering with an HTTP status of choice.
pub async fn expect_status(
    handle: &mut ApiServer,
    method: Method,
    path: &str,
    status: u16,
    answer: Value,
) -> Value {
    let (request, send) =
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no call came; expected {method} {path}"))
            .expect("the client went away");
    let (actual_method, uri) = (request.method().clone(), request.uri().clone());
    let bytes = http_body_util::BodyExt::collect(request.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(actual_method, method, "{uri}");
    assert_eq!(
        uri.path(),
        path,
        "body: {}",
        String::from_utf8_lossy(&bytes)
    );
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
        .unwrap();
    send.send_response(response);
    body
}

/// The decoded value of `key` in a Secret's JSON (as a request carries it).
pub fn secret_data(secret: &Value, key: &str) -> Vec<u8> {
    use base64::Engine;
    let encoded = secret["data"][key].as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap()
}

pub fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

pub fn as_json(scope: &Scope) -> Value {
    json!(scope)
}

/// Expects the controller to publish an Event in `namespace`; returns it.
pub async fn expect_event(handle: &mut ApiServer, namespace: &str) -> Value {
    let answer = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": namespace},
        "eventTime": "2026-01-01T00:00:00.000000Z"
    });
    expect(
        handle,
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
        answer,
    )
    .await
}
