//! The gRPC API with a real tonic client: a gateway → orders → payments
//! chain by exchange, embed and share; the revocation and policy streams;
//! the control service.

use std::time::Duration;

use serde_json::Value;
use tokenmesh_proto::v1::{
    ApplyRequest, CheckShareRequest, DeleteRequest, ExchangeRequest, GetEmbeddedTokenRequest,
    GetJwksRequest, IntrospectRequest, ListRequest, Mode, ResourceRef, WatchPoliciesRequest,
    WatchRevocationsRequest, control_service_client::ControlServiceClient, revocation_event::Kind,
    token_service_client::TokenServiceClient,
};
use tokenmesh_tokens::{Algorithm, dpop::create::ProofKey};
use tokio_stream::StreamExt;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};

use crate::harness::{
    ADMIN_TOKEN, Config, SECRET, Server, basic_auth, jwt_part, next_message, now,
};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn mesh_config() -> Config {
    mesh_config_with("{}")
}

/// The mesh under a TokenServer of spec `server_spec`.
fn mesh_config_with(server_spec: &str) -> Config {
    let config = Config::new(server_spec);
    let client = |name: &str, audiences: &str| {
        format!(
            "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}}}\nspec:\n  grantTypes: [client_credentials, \"{EXCHANGE}\"]\n  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}\n  scopes: [\"orders:read\", \"orders:write\"]\n  audiences: [{audiences}]\n  allowIntrospection: true\n"
        )
    };
    let policy = |name: &str, body: &str| {
        format!(
            "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {{name: {name}}}\nspec:\n{body}"
        )
    };
    let mut yaml = std::fs::read_to_string(config.file()).unwrap();
    yaml += &client("orders-svc", "payments");
    yaml += &client("payments-svc", "ledger");
    yaml += &policy(
        "orders-to-payments",
        "  mode: exchange\n  from: {audiences: [orders]}\n  actor: {clients: [orders-svc]}\n  to: {audience: payments, scopes: [\"orders:read\"], hosts: [payments.local]}\n  ttl: 120s\n  condition: \"'orders:read' in request.scopes\"\n  claims: {origin: subject.client_id}\n",
    );
    yaml += &policy(
        "embed-payments",
        "  mode: embed\n  from: {audiences: [orders], clients: [gateway]}\n  actor: {clients: [orders-svc]}\n  to: {audience: payments, scopes: [\"orders:read\"], hosts: [payments.local]}\n  ttl: 60s\n",
    );
    yaml += &policy(
        "share-orders",
        "  mode: share\n  from: {clients: [gateway]}\n  to: {audience: orders, hosts: [orders.local]}\n",
    );
    std::fs::write(config.file(), yaml).unwrap();
    config
}

fn basic(id: &str) -> MetadataValue<tonic::metadata::Ascii> {
    basic_auth(id).parse().unwrap()
}

fn as_client<T>(id: &str, body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert("authorization", basic(id));
    request
}

fn as_admin<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

fn exchange_request(subject: &str, audience: &str) -> ExchangeRequest {
    ExchangeRequest {
        subject_token: subject.into(),
        audience: audience.into(),
        ..Default::default()
    }
}

async fn tokens(server: &Server) -> TokenServiceClient<Channel> {
    TokenServiceClient::connect(server.grpc.clone())
        .await
        .unwrap()
}

#[tokio::test]
async fn exchange_embed_and_share_along_three_hops() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let mut grpc = tokens(&server).await;
    let first = server
        .token(&[
            ("scope", "orders:read orders:write"),
            ("audience", "orders"),
        ])
        .await;
    let first = first["access_token"].as_str().unwrap().to_owned();

    // Embed: the gateway's token carries one for payments.
    let outer = jwt_part(&first, 1);
    let embedded = outer["embedded_tokens"]["payments"].as_str().unwrap();
    let inner = jwt_part(embedded, 1);
    assert_eq!(inner["aud"], "payments");
    assert_eq!(inner["scope"], "orders:read");
    assert_eq!(inner["sub"], "gateway");
    assert!(inner["exp"].as_u64() <= outer["exp"].as_u64());
    let got = grpc
        .get_embedded_token(as_client(
            "orders-svc",
            GetEmbeddedTokenRequest {
                token: first.clone(),
                audience: "payments".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.token, embedded);
    // The embed policy's actor is the workload that extracts (orders-svc),
    // not the client the outer token was issued to (gateway).
    for other in ["gateway", "payments-svc"] {
        let refused = grpc
            .get_embedded_token(as_client(
                other,
                GetEmbeddedTokenRequest {
                    token: first.clone(),
                    audience: "payments".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{other}: {refused:?}"
        );
    }

    // Share: orders.local is covered by the token's aud; payments.local is not.
    let share = |destination: &str| {
        as_client(
            "orders-svc",
            CheckShareRequest {
                token: first.clone(),
                destination: destination.into(),
            },
        )
    };
    let yes = grpc
        .check_share(share("orders.local"))
        .await
        .unwrap()
        .into_inner();
    assert!(yes.allowed);
    assert_eq!(yes.audience, "orders");
    let no = grpc
        .check_share(share("payments.local"))
        .await
        .unwrap()
        .into_inner();
    assert!(!no.allowed && !no.reason.is_empty());

    // Exchange: orders-svc trades the gateway token for one for payments.
    let exchanged = grpc
        .exchange(as_client(
            "orders-svc",
            exchange_request(&first, "payments"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exchanged.scopes, vec!["orders:read"]);
    let info = grpc
        .introspect(as_client(
            "orders-svc",
            IntrospectRequest {
                token: exchanged.access_token.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(info.active);
    let claims: Value = serde_json::from_str(&info.claims_json).unwrap();
    assert_eq!(claims["aud"], "payments");
    assert_eq!(claims["sub"], "gateway");
    assert_eq!(claims["act"]["sub"], "orders-svc");
    assert_eq!(claims["origin"], "gateway", "CEL claim");
    assert_eq!(jwt_part(&info.phantom_jwt, 1)["jti"], claims["jti"]);

    // Refusals map to status codes.
    let status = grpc
        .exchange(as_client(
            "payments-svc",
            exchange_request(&first, "payments"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = grpc
        .exchange(as_client("orders-svc", exchange_request(&first, "billing")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = grpc
        .exchange(Request::new(exchange_request(&first, "payments")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains(&first), "no token in messages");
}

#[tokio::test]
async fn revocations_stream_and_resume_from_a_cursor() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&config, data.path()).await;
    let mut grpc = tokens(&server).await;
    let mut stream = grpc
        .watch_revocations(as_client(
            "orders-svc",
            WatchRevocationsRequest {
                after_seq: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let a = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", &a)],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let event = next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(event.kind, Kind::Token as i32);
    assert_eq!(event.id, jwt_part(&a, 1)["jti"]);
    drop(stream);

    // A reconnecting sidecar resumes after what it saw: nothing old, the new one.
    let b = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = server
        .post(
            "/oauth2/revoke",
            Some(("gateway", SECRET)),
            &[("token", &b), ("revoke", "grant")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut resumed = grpc
        .watch_revocations(as_client(
            "orders-svc",
            WatchRevocationsRequest {
                after_seq: event.seq,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.kind, Kind::Grant as i32);
    assert_eq!(next.id, jwt_part(&b, 1)["grant_id"]);
    assert!(next.seq > event.seq);

    // An open stream does not keep SIGTERM from stopping the server.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    drop(resumed);
}

/// Revokes a fresh token of `gateway` (its grant with `whole_grant`); the
/// revoked id.
async fn revoke_one(server: &Server, whole_grant: bool) -> String {
    let token = server.token(&[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut form = vec![("token", token.as_str())];
    if whole_grant {
        form.push(("revoke", "grant"));
    }
    let resp = server
        .post("/oauth2/revoke", Some(("gateway", SECRET)), &form)
        .await;
    assert_eq!(resp.status(), 200);
    let claims = jwt_part(&token, 1);
    let id = if whole_grant {
        &claims["grant_id"]
    } else {
        &claims["jti"]
    };
    id.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_starting_sidecar_gets_the_revocations_in_force_as_a_snapshot() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let mut kept = Vec::new();
    for whole_grant in [false, false, true] {
        kept.push(revoke_one(&server, whole_grant).await);
    }
    let mut grpc = tokens(&server).await;
    let mut stream = grpc
        .watch_revocations(as_client(
            "orders-svc",
            WatchRevocationsRequest {
                after_seq: 0,
                snapshot: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // One event carries all three, in the order they were made.
    let first = next_message(&mut stream, Duration::from_secs(5)).await;
    let ids: Vec<&str> = first.snapshot.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, kept);
    assert_eq!(first.snapshot[0].kind, Kind::Token as i32);
    assert_eq!(first.snapshot[2].kind, Kind::Grant as i32);
    assert!(first.snapshot.iter().all(|r| r.expires_at > 0));
    assert!(first.id.is_empty());
    // Then live revocations, one per event, after the snapshot's cursor.
    let live = revoke_one(&server, false).await;
    let next = next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(next.id, live);
    assert!(next.snapshot.is_empty());
    assert!(next.seq > first.seq);
}

#[tokio::test]
async fn policy_changes_reach_the_policy_stream_through_the_control_service() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let mut grpc = tokens(&server).await;
    let mut control = ControlServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let mut stream = grpc
        .watch_policies(as_client("orders-svc", WatchPoliciesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_message(&mut stream, Duration::from_secs(5)).await;
    let payments = first
        .routes
        .iter()
        .find(|r| r.host == "payments.local" && r.mode == Mode::Exchange as i32)
        .unwrap();
    assert_eq!(payments.audience, "payments");
    assert!(!first.routes.iter().any(|r| r.host == "ledger.local"));

    let document = "apiVersion: tokenmesh.dev/v1alpha1\nkind: ExchangePolicy\nmetadata: {name: to-ledger}\nspec:\n  mode: exchange\n  actor: {clients: [orders-svc]}\n  to: {audience: ledger, hosts: [ledger.local]}\n";
    let denied = control
        .apply(Request::new(ApplyRequest {
            document: document.into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    // Let the store sync (every 250 ms) take its first look, so that it
    // finds the change below new and must not count it twice.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let applied = control
        .apply(as_admin(ApplyRequest {
            document: document.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let next = next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(next.version, applied.version);
    assert!(next.version > first.version);
    assert!(
        next.routes
            .iter()
            .any(|r| r.host == "ledger.local" && r.audience == "ledger")
    );

    // The new policy is in force on the token endpoint too.
    let subject = server.token(&[("audience", "orders")]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", subject.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("audience", "ledger"),
    ];
    assert_eq!(
        server
            .post("/oauth2/token", Some(("orders-svc", SECRET)), &form)
            .await
            .status(),
        200
    );

    // The server finds its own change in the store on its next sync; that
    // is no new configuration, so no new version reaches the stream.
    let echoed = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
    assert!(echoed.is_err(), "own change pushed twice: {echoed:?}");

    let bad = control
        .apply(as_admin(ApplyRequest {
            document: document.replace("mode: exchange", "mode: teleport"),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("spec.mode"), "{}", bad.message());
    let listed = control
        .list(as_admin(ListRequest {
            kind: "ExchangePolicy".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.resources.iter().any(|r| r.name == "to-ledger"));
    let gone = control
        .delete(as_admin(DeleteRequest {
            resource: Some(ResourceRef {
                kind: "ExchangePolicy".into(),
                namespace: String::new(),
                name: "to-ledger".into(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(gone.existed);
    let after_delete = next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(after_delete.version, gone.version);
    // A deletion is stored as a tombstone; finding it again is no change.
    let echoed = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
    assert!(echoed.is_err(), "own deletion pushed twice: {echoed:?}");
    assert_eq!(
        server
            .post("/oauth2/token", Some(("orders-svc", SECRET)), &form)
            .await
            .status(),
        400
    );
    // A scope still in use cannot be deleted.
    let refused = control
        .delete(as_admin(DeleteRequest {
            resource: Some(ResourceRef {
                kind: "Scope".into(),
                namespace: String::new(),
                name: "orders-read".into(),
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_opaque_tokens_embedded_tokens_are_for_clients_that_may_introspect() {
    let config = mesh_config();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let mut grpc = tokens(&server).await;
    let ask = |client: &str| {
        as_client(
            client,
            GetEmbeddedTokenRequest {
                token: "tmo_not-a-real-token".into(),
                audience: "payments".into(),
            },
        )
    };
    // `poster` has no allowIntrospection: refused before any lookup.
    let refused = grpc.get_embedded_token(ask("poster")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // `gateway` may introspect: the token is looked up (and is not active).
    let looked_up = grpc.get_embedded_token(ask("gateway")).await.unwrap_err();
    assert_eq!(looked_up.code(), Code::FailedPrecondition, "{looked_up:?}");
}

#[tokio::test]
async fn the_control_service_refuses_a_client_id_of_another_namespace() {
    let config = Config::new("{}");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let mut control = ControlServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let client = |namespace: &str, name: &str, client_id: &str| ApplyRequest {
        document: format!(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{client_id}  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n"
        ),
    };
    // `evil/innocent` asks for the id of `shop/orders` before it exists.
    let squat = control
        .apply(as_admin(client(
            "evil",
            "innocent",
            "  clientId: shop/orders\n",
        )))
        .await
        .unwrap_err();
    assert_eq!(squat.code(), Code::InvalidArgument);
    assert!(
        squat.message().contains("spec.clientId") && squat.message().contains("`evil/`"),
        "{}",
        squat.message()
    );
    // The id stays free for its namespace's client.
    control
        .apply(as_admin(client("shop", "orders", "")))
        .await
        .unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "orders:read"),
    ];
    let token = server
        .post("/oauth2/token", Some(("shop/orders", SECRET)), &form)
        .await;
    assert_eq!(token.status(), 200);
}

/// A DPoP-bound token of `gateway` for `orders` at the HTTP token endpoint,
/// fetching the server nonce first.
async fn gateway_bound_token(key: &ProofKey, token_url: &str) -> String {
    let send = |nonce: Option<String>| {
        let proof = key
            .proof("POST", token_url, None, nonce.as_deref(), now())
            .unwrap();
        reqwest::Client::new()
            .post(token_url)
            .basic_auth("gateway", Some(SECRET))
            .header("DPoP", proof)
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", "orders"),
                ("scope", "orders:read"),
            ])
            .send()
    };
    let asked = send(None).await.unwrap();
    assert_eq!(asked.status(), 400);
    let nonce = asked.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    let body: Value = send(Some(nonce)).await.unwrap().json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP", "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Issue #18, the sidecar's door: GetJwks names the token endpoint, the
/// `htu` of the proof an Exchange carries in metadata `dpop`. A DPoP-bound
/// subject token of `gateway` is refused from the actor without a proof,
/// and exchanged with a proof of the actor's own key into a token bound to
/// that key. Nonces travel as metadata `dpop-nonce`: asked for with
/// INVALID_ARGUMENT use_dpop_nonce, renewed with every answer.
#[tokio::test]
async fn an_exchange_carries_the_actors_dpop_proof_and_nonce_in_metadata() {
    let config = mesh_config_with("{dpop: {requireNonce: true}}");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&config, data.path()).await;
    let mut grpc = tokens(&server).await;
    let jwks = grpc
        .get_jwks(as_client("orders-svc", GetJwksRequest {}))
        .await
        .unwrap()
        .into_inner();
    let token_url = jwks.token_endpoint;
    assert_eq!(token_url, server.url("/oauth2/token"));
    let gateway_key = ProofKey::generate(Algorithm::ES256).unwrap();
    let subject = gateway_bound_token(&gateway_key, &token_url).await;

    let orders_key = ProofKey::generate(Algorithm::ES256).unwrap();
    let exchange = |proof: Option<String>| {
        let mut request = as_client("orders-svc", exchange_request(&subject, "payments"));
        if let Some(proof) = proof {
            request
                .metadata_mut()
                .insert("dpop", proof.parse().unwrap());
        }
        let mut grpc = grpc.clone();
        async move { grpc.exchange(request).await }
    };
    let proof = |nonce: Option<&str>| {
        Some(
            orders_key
                .proof("POST", &token_url, None, nonce, now())
                .unwrap(),
        )
    };

    let refused = exchange(None).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("DPoP-bound"), "{refused:?}");

    let asked = exchange(proof(None)).await.unwrap_err();
    assert_eq!(asked.code(), Code::InvalidArgument, "{asked:?}");
    assert!(asked.message().starts_with("use_dpop_nonce"), "{asked:?}");
    let nonce = asked
        .metadata()
        .get("dpop-nonce")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let answer = exchange(proof(Some(&nonce))).await.unwrap();
    assert!(
        answer.metadata().get("dpop-nonce").is_some(),
        "a fresh nonce comes along"
    );
    let claims = jwt_part(&answer.into_inner().access_token, 1);
    assert_eq!(
        claims["cnf"]["jkt"],
        orders_key.jkt(),
        "bound to the actor's key"
    );
    assert_eq!(claims["aud"], "payments");

    let elsewhere = orders_key
        .proof("POST", &server.url("/elsewhere"), None, Some(&nonce), now())
        .unwrap();
    let refused = exchange(Some(elsewhere)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("htu"), "{refused:?}");
}
