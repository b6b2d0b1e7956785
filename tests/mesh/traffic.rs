//! Requests through the mesh.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokenmesh_tokens::{Algorithm, signing::SigningKey};

use crate::harness::{
    App, Mesh, ORDERS_TO_PAYMENTS, Sidecar, TokenServer, claims, free_port, policy,
};

#[tokio::test]
async fn three_hops_carry_the_right_token_by_share_exchange_and_embed() {
    let mesh = Mesh::start().await;
    let t0 = mesh.server.token("frontend", None).await;
    let (status, body, _) = mesh.call(Some(&t0)).await;
    assert_eq!(status, 200, "{body}");
    // gateway: the caller's token.
    assert_eq!(body["received"], format!("Bearer {t0}"));
    // orders: the same token, shared.
    assert_eq!(body["next_status"], 200, "{body}");
    assert_eq!(body["next"]["received"], format!("Bearer {t0}"));
    // payments: a token exchanged for its audience, with orders-svc as actor.
    let at_payments = &body["next"]["next"];
    assert_eq!(body["next"]["next_status"], 200, "{body}");
    let t1 = claims(&at_payments["received"]);
    assert_eq!(t1["aud"], "payments");
    assert_eq!(t1["sub"], "frontend");
    assert_eq!(t1["client_id"], "orders-svc");
    assert_eq!(
        t1["act"],
        json!({"sub": "orders-svc", "client_id": "orders-svc"})
    );
    assert_eq!(t1["scope"], "orders:read", "narrowed by the policy");
    // ledger: the token embedded for it in the payments token.
    assert_eq!(at_payments["next_status"], 200, "{body}");
    let t2 = claims(&at_payments["next"]["received"]);
    assert_eq!(t2["aud"], "ledger");
    assert_eq!(t2["sub"], "frontend");
    assert_eq!(t2["scope"], "orders:read");
    assert_eq!(
        format!(
            "Bearer {}",
            t1["embedded_tokens"]["ledger"].as_str().unwrap()
        ),
        at_payments["next"]["received"]
    );

    // Again: every decision comes from the caches; the token server is not asked.
    let exchanges = mesh.server.issued("token_exchange").await;
    let sidecar_exchanges = mesh.sidecars[1]
        .metric("tokenmesh_sidecar_exchanges_total")
        .await;
    let (status, again, _) = mesh.call(Some(&t0)).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["next"]["next"]["received"], at_payments["received"],
        "the cached exchanged token"
    );
    assert_eq!(mesh.server.issued("token_exchange").await, exchanges);
    assert_eq!(
        mesh.sidecars[1]
            .metric("tokenmesh_sidecar_exchanges_total")
            .await,
        sidecar_exchanges
    );
    assert!(
        mesh.sidecars[0]
            .metric("tokenmesh_sidecar_cache_hits_total")
            .await
            >= 2
    );
}

#[tokio::test]
async fn a_policy_that_changes_scopes_is_not_answered_from_the_exchange_cache() {
    let mesh = Mesh::start().await;
    let t0 = mesh.server.token("frontend", None).await;
    let scope_at_payments =
        |body: &Value| claims(&body["next"]["next"]["received"])["scope"].clone();
    let (status, body, _) = mesh.call(Some(&t0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(scope_at_payments(&body), "orders:read");

    let narrowed =
        ORDERS_TO_PAYMENTS.replace("scopes: [\"orders:read\"]", "scopes: [\"orders:write\"]");
    assert_ne!(narrowed, ORDERS_TO_PAYMENTS);
    mesh.server
        .apply(policy("orders-to-payments", &narrowed))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = mesh.call(Some(&t0)).await;
        assert_eq!(status, 200, "{body}");
        if scope_at_payments(&body) == "orders:write" {
            break;
        }
        assert_eq!(scope_at_payments(&body), "orders:read", "{body}");
        assert!(
            Instant::now() < deadline,
            "the cached token for the old scopes is still sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn opaque_tokens_reach_the_application_as_their_phantom_jwt() {
    let mesh = Mesh::start().await;
    let opaque = mesh.server.token("frontend-opaque", None).await;
    assert_eq!(opaque.matches('.').count(), 0);
    let (status, body, _) = mesh.call(Some(&opaque)).await;
    assert_eq!(status, 200, "{body}");
    let phantom = claims(&body["received"]);
    assert_eq!(phantom["client_id"], "frontend-opaque");
    assert_eq!(phantom["aud"], json!(["gateway", "orders"]));
    assert_eq!(claims(&body["next"]["next"]["received"])["aud"], "payments");
}

fn forge(header: Value, body: &Value, signature: &[u8]) -> String {
    let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    format!(
        "{}.{}.{}",
        b(header.to_string().as_bytes()),
        b(body.to_string().as_bytes()),
        b(signature)
    )
}

#[tokio::test]
async fn bad_tokens_never_reach_the_application() {
    let mesh = Mesh::start().await;
    let real = mesh.server.token("frontend", None).await;
    let real_claims = claims(&json!(format!("Bearer {real}")));
    let stranger = SigningKey::generate("stranger".into(), Algorithm::ES256).unwrap();
    let kid = {
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(real.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        header["kid"].clone()
    };
    let short = mesh.server.token("short-lived", None).await;
    let wrong_audience = mesh.server.token("frontend", Some("orders")).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // `short` expires (1 s, no skew in tests)
    let cases = [
        ("no token", None),
        ("garbage", Some("not-a-token".to_owned())),
        (
            "alg none",
            Some(forge(
                json!({"alg": "none", "typ": "at+jwt"}),
                &real_claims,
                b"",
            )),
        ),
        (
            "HS256 with the public key",
            Some(forge(
                json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
                &real_claims,
                b"mac",
            )),
        ),
        (
            "unknown kid",
            Some(stranger.sign_jwt("at+jwt", &real_claims).unwrap()),
        ),
        ("wrong audience", Some(wrong_audience)),
        ("expired", Some(short)),
    ];
    let hits = mesh.apps[0].hits();
    for (name, token) in cases {
        let (status, body, challenge) = mesh.call(token.as_deref()).await;
        assert_eq!(status, 401, "{name}: {body}");
        let challenge = challenge.unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
        if token.is_some() {
            assert!(challenge.contains("invalid_token"), "{name}: {challenge}");
        }
    }
    assert_eq!(
        mesh.apps[0].hits(),
        hits,
        "no bad request reached the application"
    );

    // Revoked: refused at the next request once the revocation streams in.
    let (status, _, _) = mesh.call(Some(&real)).await;
    assert_eq!(status, 200);
    mesh.server.revoke("frontend", &real).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = mesh.call(Some(&real)).await;
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked token still got through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A destination no policy names is refused, and the token does not leave.
    let fresh = mesh.server.token("frontend", None).await;
    let (status, body, _) = mesh
        .call_with(Some(&fresh), Some("http://elsewhere.local/hop"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["next_status"], 403, "{body}");
}

#[tokio::test]
async fn the_token_server_going_down_and_coming_back() {
    let mut mesh = Mesh::start().await;
    let warm = mesh.server.token("frontend", None).await;
    let cold = mesh.server.token("frontend", None).await;
    assert_eq!(mesh.call(Some(&warm)).await.0, 200);
    mesh.server.stop();

    // Cached decisions keep working.
    let (status, body, _) = mesh.call(Some(&warm)).await;
    assert_eq!(status, 200);
    assert_eq!(body["next"]["next"]["next_status"], 200, "{body}");
    // A new one needs the token server: a fast, clear 503.
    let started = Instant::now();
    let (status, body, _) = mesh.call(Some(&cold)).await;
    assert_eq!(status, 200, "the gateway itself verifies locally");
    assert_eq!(body["next_status"], 503, "{body}");
    assert!(
        body["next"]
            .as_str()
            .unwrap_or_default()
            .contains("unavailable"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    mesh.server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body, _) = mesh.call(Some(&cold)).await;
        if body["next"]["next"]["next_status"] == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mesh did not recover: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The streams resumed: a revocation made now still arrives.
    mesh.server.revoke("frontend", &cold).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.call(Some(&cold)).await.0 != 401 {
        assert!(
            Instant::now() < deadline,
            "revocation after reconnect not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kubelet_probes_reach_the_application_only_by_their_configured_path() {
    let server = TokenServer::start().await;
    let app = App::start(None).await;
    let probe = format!("/app-health/app/livez={}/healthz?deep=1", app.addr.port());
    let sidecar = Sidecar::start_with(
        &server,
        "orders-svc",
        "orders",
        app.addr,
        &[],
        free_port(),
        &["--app-probe".into(), probe],
    )
    .await;
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);
    let client = reqwest::Client::new();

    let resp = client
        .get(admin("/app-health/app/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["path"], "/healthz?deep=1",
        "the configured target, not the caller's path"
    );
    assert_eq!(body["received"], Value::Null, "no token needed, none added");

    let resp = client
        .post(admin("/app-health/app/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = client
        .get(admin("/app-health/app/livez/../../orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Only the exact path: nothing below it reaches the application.
    let hits_before = app.hits();
    let resp = client
        .get(admin("/app-health/app/livez/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(app.hits(), hits_before);
    let hits = app.hits();
    let resp = client
        .get(format!("http://{}/healthz?deep=1", sidecar.inbound))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the application's port still wants a token"
    );
    assert_eq!(app.hits(), hits);
}
