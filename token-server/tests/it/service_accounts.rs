//! Workload identity: the real binary fetches a fake API server's OIDC
//! discovery and JWKS, and accepts service-account tokens it signed as
//! client assertions, over HTTP (RFC 7523 form fields) and gRPC
//! (`x-client-assertion`, no client id, as the sidecar sends it).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};
use tokenmesh_proto::v1::{IntrospectRequest, token_service_client::TokenServiceClient};
use tokenmesh_tokens::{Algorithm, signing::SigningKey};
use tonic::{Code, Request};

use crate::harness::{Config, Server, now};

pub const K8S_ISSUER: &str = "https://kubernetes.default.svc";
const AUDIENCE: &str = "tokenmesh-it";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The two documents an API server publishes for its service-account issuer.
pub struct FakeApiServer {
    pub url: String,
    jwks_fetches: Arc<AtomicUsize>,
}

impl FakeApiServer {
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let jwks = json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()});
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|| async {
                    Json(json!({"issuer": K8S_ISSUER, "jwks_uri": format!("{K8S_ISSUER}/openid/v1/jwks")}))
                }),
            )
            .route(
                "/openid/v1/jwks",
                get(|State((jwks, n)): State<(Value, Arc<AtomicUsize>)>| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    Json(jwks)
                }),
            )
            .with_state((jwks, jwks_fetches.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, jwks_fetches }
    }
}

/// A token as `kubectl create token <name> -n <namespace> --audience <aud>` makes it.
pub fn sa_token(key: &SigningKey, namespace: &str, name: &str, aud: &str, exp: u64) -> String {
    let claims = json!({
        "iss": K8S_ISSUER, "aud": [aud], "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "exp": exp, "iat": now() - 5, "nbf": now() - 5, "jti": "f5c3c2a4",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "0c7e"}},
    });
    key.sign_jwt("JWT", &claims).unwrap()
}

fn config(api: &FakeApiServer) -> Config {
    let config = Config::new(&format!(
        "{{kubernetes: {{issuer: \"{K8S_ISSUER}\", audience: {AUDIENCE}, discoveryUrl: \"{}\"}}}}",
        api.url
    ));
    let client = |name: &str| {
        format!(
            "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  authentication: {{method: kubernetes_service_account, serviceAccount: {{name: {name}}}}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  allowIntrospection: true\n"
        )
    };
    let mut yaml = std::fs::read_to_string(config.file()).unwrap();
    yaml += &client("orders");
    yaml += &client("payments");
    std::fs::write(config.file(), yaml).unwrap();
    config
}

async fn token_with(
    server: &Server,
    assertion: &str,
    client_id: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    form.extend(client_id.map(|id| ("client_id", id)));
    server.post("/oauth2/token", None, &form).await
}

async fn refused(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    body["error_description"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn service_account_tokens_authenticate_their_client_over_http_and_grpc() {
    let rsa = SigningKey::generate("rsa-1".into(), Algorithm::RS256).unwrap();
    let ec = SigningKey::generate("ec-1".into(), Algorithm::ES256).unwrap();
    let api = FakeApiServer::start(&[&rsa, &ec]).await;
    let config = config(&api);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let valid = sa_token(&rsa, "shop", "orders", AUDIENCE, now() + 600);

    // HTTP, with and without client_id; the same token twice (no replay check).
    for client_id in [Some("shop/orders"), None, Some("shop/orders")] {
        let response = token_with(&server, &valid, client_id).await;
        assert_eq!(response.status(), 200, "{client_id:?}");
        let body: Value = response.json().await.unwrap();
        let claims = server
            .introspect(body["access_token"].as_str().unwrap())
            .await;
        assert_eq!(claims["client_id"], "shop/orders");
    }
    let ec_token = sa_token(&ec, "shop", "orders", AUDIENCE, now() + 600);
    assert_eq!(token_with(&server, &ec_token, None).await.status(), 200);

    let other_audience = sa_token(&rsa, "shop", "orders", "https://elsewhere", now() + 600);
    let why = refused(token_with(&server, &other_audience, Some("shop/orders")).await).await;
    assert!(why.contains("aud"), "{why}");
    let other_account = sa_token(&rsa, "shop", "payments", AUDIENCE, now() + 600);
    refused(token_with(&server, &other_account, Some("shop/orders")).await).await;
    let stranger = sa_token(&rsa, "shop", "nobody", AUDIENCE, now() + 600);
    refused(token_with(&server, &stranger, None).await).await;
    let expired = sa_token(&rsa, "shop", "orders", AUDIENCE, now() - 120);
    let why = refused(token_with(&server, &expired, Some("shop/orders")).await).await;
    assert!(why.contains("expired"), "{why}");
    let forged = SigningKey::generate("rsa-1".into(), Algorithm::RS256).unwrap();
    refused(
        token_with(
            &server,
            &sa_token(&forged, "shop", "orders", AUDIENCE, now() + 600),
            None,
        )
        .await,
    )
    .await;

    // gRPC: the assertion alone names the client.
    let mut grpc = TokenServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let issued: Value = token_with(&server, &valid, None)
        .await
        .json()
        .await
        .unwrap();
    let as_account = |token: &str| {
        let mut request = Request::new(IntrospectRequest {
            token: issued["access_token"].as_str().unwrap().into(),
        });
        request
            .metadata_mut()
            .insert("x-client-assertion", token.parse().unwrap());
        request
    };
    let answer = grpc
        .introspect(as_account(&valid))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.active);
    let payments = grpc
        .introspect(as_account(&other_account))
        .await
        .unwrap()
        .into_inner();
    assert!(payments.active, "payments is a client of its own");
    let status = grpc
        .introspect(as_account(&other_audience))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains(&other_audience));

    // Keys were fetched once (at startup or first use), not per request.
    assert_eq!(api.jwks_fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_503_not_a_refusal() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let api = FakeApiServer {
        url: closed,
        jwks_fetches: Arc::default(),
    };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config(&api), data.path()).await;
    let key = SigningKey::generate("k".into(), Algorithm::ES256).unwrap();
    let response = token_with(
        &server,
        &sa_token(&key, "shop", "orders", AUDIENCE, now() + 600),
        None,
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
}
