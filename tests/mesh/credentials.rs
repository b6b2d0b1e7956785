//! Credentials that must not slip past the sidecar: a second Authorization
//! header, and ext_authz answers Envoy would treat as errors (and so, with
//! `failure_mode_allow`, let through). Probes: traffic.rs.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokenmesh_proto::envoy_auth_v3::{
    AttributeContext, CheckRequest, CheckResponse, HeaderMap, HeaderValue,
    attribute_context::{HttpRequest, Request},
    authorization_client::AuthorizationClient,
    check_response::HttpResponse,
};

use crate::harness::{self, App, SECRET, Sidecar, TokenServer, claims, free_port, wait_ok};

/// GET `url` with one header per (name, value), in order.
async fn get(url: &str, headers: &[(&str, &str)], proxy: Option<SocketAddr>) -> (u16, Value) {
    let (status, _, body) = harness::get(url, headers, proxy).await;
    (status, body)
}

#[tokio::test]
async fn a_second_authorization_header_is_refused_inbound() {
    let server = TokenServer::start().await;
    let app = App::start(None).await;
    let sidecar = Sidecar::start(
        &server,
        "gateway-svc",
        "gateway",
        app.addr,
        &[],
        free_port(),
    )
    .await;
    let good = format!("Bearer {}", server.token("frontend", None).await);
    let url = format!("http://{}/x", sidecar.inbound);
    assert_eq!(get(&url, &[("authorization", &good)], None).await.0, 200);

    let unsigned = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    for (name, second) in [
        ("an unsigned token", unsigned),
        ("a Basic credential", "Basic YWRtaW46YWRtaW4="),
        ("the same token again", good.as_str()),
    ] {
        let hits = app.hits();
        let resp = reqwest::Client::new()
            .get(&url)
            .header("authorization", &good)
            .header("authorization", second)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_request\"",
            "{name}"
        );
        assert_eq!(app.hits(), hits, "{name}: reached the application");
    }
}

#[tokio::test]
async fn outbound_sends_exactly_the_one_token_it_set() {
    let server = TokenServer::start().await;
    // The destinations are this recorder itself, no sidecar in between:
    // it sees every Authorization value the outbound proxy sends.
    let recorder = App::start(None).await;
    let out = free_port();
    let _orders = Sidecar::start(
        &server,
        "orders-svc",
        "orders",
        recorder.addr,
        &[
            ("orders.local", recorder.addr),
            ("payments.local", recorder.addr),
        ],
        out,
    )
    .await;
    let proxy = Some(SocketAddr::from(([127, 0, 0, 1], out)));
    let subject = server.token("frontend", Some("orders")).await;
    let bearer = format!("Bearer {subject}");

    // share: the token passes on, and only it.
    let (status, body) = get(
        "http://orders.local/share",
        &[
            ("authorization", &bearer),
            ("authorization", "Bearer smuggled"),
        ],
        proxy,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["authorization"], json!([bearer]), "{body}");

    // exchange, the token after another credential: the exchanged token
    // alone, not the subject token beside it.
    let (status, body) = get(
        "http://payments.local/exchange",
        &[
            ("authorization", "Basic YWRtaW46YWRtaW4="),
            ("authorization", &bearer),
        ],
        proxy,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = body["headers"]["authorization"].as_array().unwrap();
    assert_eq!(sent.len(), 1, "{body}");
    assert_eq!(claims(&sent[0])["aud"], "payments", "{body}");
}

fn check_request(authorizations: &[&str]) -> CheckRequest {
    let header_map = HeaderMap {
        headers: authorizations
            .iter()
            .map(|value| HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: value.as_bytes().to_vec(),
            })
            .collect(),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    header_map: Some(header_map),
                    ..Default::default()
                }),
            }),
            source: None,
        }),
    }
}

/// `request` with `key: value` in its `headers` map, as Envoy sends them by default.
fn with_header(mut request: CheckRequest, key: &str, value: String) -> CheckRequest {
    let http = request.attributes.as_mut().and_then(|a| a.request.as_mut());
    let http = http.and_then(|r| r.http.as_mut()).unwrap();
    http.headers.insert(key.into(), value);
    request
}

/// The HTTP status of a denied answer (0 for OK).
fn denied_status(answer: &CheckResponse) -> i32 {
    match &answer.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied.status.as_ref().map_or(0, |s| s.code),
        _ => 0,
    }
}

/// A sidecar with --ext-authz-addr, its credential in `args`; ready to check.
async fn ext_authz_sidecar(
    token_server: &str,
    client_id: &str,
    args: &[String],
) -> (Sidecar, AuthorizationClient<tonic::transport::Channel>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args = args.to_vec();
    args.extend(["--ext-authz-addr".into(), addr.to_string()]);
    let app = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sidecar = Sidecar::launch(token_server, client_id, "gateway", app, free_port(), &args);
    // The admin listener serves once every listener is bound.
    wait_ok(&format!("http://{}/healthz", sidecar.admin)).await;
    let client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (sidecar, client)
}

#[tokio::test]
async fn ext_authz_answers_a_denial_never_an_error() {
    let server = TokenServer::start().await;
    let secret = [
        "--client-secret-file".into(),
        server.secret_file().display().to_string(),
    ];
    // blind-svc may not introspect: an opaque token cannot be decided.
    let (blind, mut client) = ext_authz_sidecar(&server.grpc, "blind-svc", &secret).await;
    blind.wait_ready().await;
    let answer = client
        .check(check_request(&["Bearer x"]))
        .await
        .expect("a decision, not a gRPC error Envoy may fail open on")
        .into_inner();
    assert_eq!(denied_status(&answer), 503, "{answer:?}");
    assert_ne!(answer.status.as_ref().map(|s| s.code), Some(0));

    // Larger than the sidecar reads (4 MiB; with_request_body can get
    // there): refused, where tonic's own limit answered a gRPC error.
    let good = format!("Bearer {}", server.token("frontend", None).await);
    let large = with_header(check_request(&[&good]), "x-large", "x".repeat(5 << 20));
    let answer = client
        .check(large)
        .await
        .expect("a decision, not a gRPC error")
        .into_inner();
    assert_eq!(denied_status(&answer), 413, "{answer:?}");
}

#[tokio::test]
async fn ext_authz_refuses_two_credentials() {
    let server = TokenServer::start().await;
    let secret = [
        "--client-secret-file".into(),
        server.secret_file().display().to_string(),
    ];
    let (sidecar, mut client) = ext_authz_sidecar(&server.grpc, "gateway-svc", &secret).await;
    sidecar.wait_ready().await;
    let good = format!("Bearer {}", server.token("frontend", None).await);
    let answer = client
        .check(check_request(&[&good]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
        "{answer:?}"
    );
    // Whichever is good, as separate entries or as Envoy sends them:
    // joined with a comma into one value.
    let apart = check_request(&[&good, "Basic YWRtaW46YWRtaW4="]);
    let joined = with_header(
        check_request(&[]),
        "authorization",
        format!("{good},Basic YWRtaW46YWRtaW4="),
    );
    for request in [apart, joined] {
        let answer = client.check(request).await.unwrap().into_inner();
        assert_eq!(denied_status(&answer), 400, "{answer:?}");
    }
}

#[tokio::test]
async fn ext_authz_answers_before_the_callers_deadline() {
    // A token server that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), SECRET).unwrap();
    let (_sidecar, mut client) = ext_authz_sidecar(
        &format!("http://{silent_addr}"),
        "gateway-svc",
        &[
            "--client-secret-file".into(),
            secret.path().display().to_string(),
        ],
    )
    .await;
    // The token server's calls time out after 5 s; Envoy gives up sooner
    // (200 ms by default) and, failing open, would let the request through.
    let mut request = tonic::Request::new(check_request(&["Bearer opaque-token"]));
    request.set_timeout(std::time::Duration::from_secs(1));
    let answer = client
        .check(request)
        .await
        .expect("a decision within the deadline, not DEADLINE_EXCEEDED")
        .into_inner();
    assert_eq!(denied_status(&answer), 503, "{answer:?}");
}
