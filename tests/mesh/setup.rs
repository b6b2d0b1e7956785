//! How a sidecar is set up: its credential, its token server URL, and the
//! token server's grants to its client.

use std::net::SocketAddr;

use crate::harness::{App, KEYED_KID, SECRET, Sidecar, TokenServer, claims, free_port, wait_ok};

/// Flags for `keyed-svc`, whose private_key_jwt key is registered with `kid`.
fn private_key(server: &TokenServer, kid: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--private-key-file".to_owned(),
        server.key_file().display().to_string(),
        "--issuer".to_owned(),
        server.http.clone(),
    ];
    if let Some(kid) = kid {
        args.extend(["--private-key-id".to_owned(), kid.to_owned()]);
    }
    args
}

async fn get(sidecar: &Sidecar, token: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/x", sidecar.inbound))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn private_key_jwt_assertions_name_the_registered_kid() {
    let server = TokenServer::start().await;
    let app = App::start(None).await;
    let sidecar = Sidecar::launch(
        &server.grpc,
        "keyed-svc",
        "gateway",
        app.addr,
        free_port(),
        &private_key(&server, Some(KEYED_KID)),
    );
    // Ready: GetJwks and WatchPolicies took its assertions.
    sidecar.wait_ready().await;
    // Each introspection is one more call with a fresh assertion.
    for _ in 0..2 {
        let opaque = server.token("frontend-opaque", None).await;
        let (status, body) = get(&sidecar, &opaque).await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(claims(&body["received"])["client_id"], "frontend-opaque");
    }
    assert!(
        !sidecar.logs().contains("plaintext"),
        "no warning for a loopback token server"
    );

    // Without the kid, the registered key does not match: refused.
    let unnamed = Sidecar::launch(
        &server.grpc,
        "keyed-svc",
        "gateway",
        app.addr,
        free_port(),
        &private_key(&server, None),
    );
    let line = unnamed
        .wait_log("cannot fetch the token server's keys")
        .await;
    assert!(line.contains("Unauthenticated"), "{line}");
}

#[tokio::test]
async fn a_sidecar_whose_client_may_not_introspect_says_how_to_fix_it() {
    let server = TokenServer::start().await;
    let app = App::start(None).await;
    let sidecar = Sidecar::start_with(
        &server,
        "blind-svc",
        "gateway",
        app.addr,
        &[],
        free_port(),
        &[],
    )
    .await;
    let opaque = server.token("frontend-opaque", None).await;
    for _ in 0..3 {
        let (status, body) = get(&sidecar, &opaque).await;
        // The token is not at fault: 503, as for any token server failure.
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("unavailable"), "{body}");
    }
    assert_eq!(app.hits(), 0);
    let line = sidecar.wait_log("allowIntrospection: true").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(!line.contains(&opaque), "the token is never logged");
    assert_eq!(
        sidecar.logs().matches("allowIntrospection").count(),
        1,
        "warned once, not per request"
    );
}

#[tokio::test]
async fn plaintext_to_a_remote_token_server_is_warned_about() {
    let server = TokenServer::start().await;
    let app = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = vec![
        "--client-secret-file".to_owned(),
        server.secret_file().display().to_string(),
    ];
    // Accepted (in-cluster installs use plain http), but not silently.
    // 192.0.2.1 (TEST-NET-1): never connected to, the warning comes first.
    let sidecar = Sidecar::launch(
        "http://192.0.2.1:8081",
        "gateway-svc",
        "gateway",
        app,
        free_port(),
        &args,
    );
    let line = sidecar.wait_log("plaintext").await;
    assert!(
        line.contains("WARN") && line.contains("192.0.2.1"),
        "{line}"
    );
    assert!(!line.contains(SECRET), "{line}");
    // Serving all the same.
    wait_ok(&format!("http://{}/healthz", sidecar.admin)).await;
}
