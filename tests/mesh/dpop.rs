//! DPoP through the mesh: a token bound at the real token server is
//! accepted by the sidecar only as `Authorization: DPoP` with a fresh proof
//! of its key for this request, and the application gets the JWT without
//! the proof. Outbound, a hop whose policy says `binding: dpop` gets a token
//! bound to the calling sidecar's own key and a fresh proof with every call.

use serde_json::Value;
use tokenmesh_tokens::{Algorithm, clock::Clock, clock::SystemClock, dpop::create::ProofKey};

use crate::harness::{
    App, ORDERS_TO_PAYMENTS, SECRET, Sidecar, TokenServer, caller, claims, free_port, get, policy,
};

/// A token for `frontend` bound to `key` (a proof sent to the token endpoint).
async fn bound_token(server: &TokenServer, key: &ProofKey) -> String {
    bound_token_for(server, key, "gateway").await
}

/// A token for `frontend` and `audience` bound to `key`.
async fn bound_token_for(server: &TokenServer, key: &ProofKey, audience: &str) -> String {
    let url = format!("{}/oauth2/token", server.http);
    let proof = key
        .proof("POST", &url, None, None, SystemClock.unix())
        .unwrap();
    let resp = reqwest::Client::new()
        .post(&url)
        .basic_auth("frontend", Some(SECRET))
        .header("DPoP", proof)
        .form(&[("grant_type", "client_credentials"), ("audience", audience)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
    body["access_token"].as_str().unwrap().to_owned()
}

/// GET `url` with `authorization` and, if any, a `DPoP` proof.
async fn call(url: &str, authorization: &str, proof: Option<&str>) -> (u16, Option<String>, Value) {
    let mut headers = vec![("authorization", authorization)];
    headers.extend(proof.map(|proof| ("DPoP", proof)));
    get(url, &headers, None).await
}

/// The attacks of issue #18 at the next hop: a bound token without proof,
/// with the Bearer scheme, with a proof of another key, for another URL,
/// replayed; and the one good call.
#[tokio::test]
async fn the_sidecar_accepts_a_bound_token_only_with_a_fresh_proof_of_its_key() {
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
    let key = ProofKey::generate(Algorithm::ES256).unwrap();
    let token = bound_token(&server, &key).await;
    let url = format!("http://{}/orders", sidecar.inbound);
    let proof_for = |key: &ProofKey, url: &str| {
        key.proof("GET", url, Some(&token), None, SystemClock.unix())
            .unwrap()
    };
    let dpop = format!("DPoP {token}");

    let refusals = [
        ("no proof", call(&url, &dpop, None).await),
        (
            "the Bearer scheme",
            call(
                &url,
                &format!("Bearer {token}"),
                Some(&proof_for(&key, &url)),
            )
            .await,
        ),
        (
            "another key",
            call(
                &url,
                &dpop,
                Some(&proof_for(
                    &ProofKey::generate(Algorithm::ES256).unwrap(),
                    &url,
                )),
            )
            .await,
        ),
        (
            "another URL",
            call(
                &url,
                &dpop,
                Some(&proof_for(
                    &key,
                    &format!("http://{}/admin", sidecar.inbound),
                )),
            )
            .await,
        ),
    ];
    for (name, (status, challenge, _)) in refusals {
        assert_eq!(status, 401, "{name}");
        assert!(
            challenge
                .as_deref()
                .unwrap_or_default()
                .starts_with("DPoP error=\"invalid_dpop_proof\""),
            "{name}: {challenge:?}"
        );
    }
    assert_eq!(app.hits(), 0, "nothing reached the application");

    let proof = proof_for(&key, &format!("{url}?page=2"));
    let (status, _, body) = call(&format!("{url}?page=2"), &dpop, Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["received"].as_str().unwrap().starts_with("Bearer ey"));
    assert!(
        body["headers"].get("dpop").is_none(),
        "the proof does not reach the application: {body}"
    );

    let (status, _, _) = call(&format!("{url}?page=2"), &dpop, Some(&proof)).await;
    assert_eq!(status, 401, "a replayed proof");
    assert_eq!(app.hits(), 1);
}

/// Issue #18, outbound: app A (orders) calls app B (payments) through their
/// sidecars with a plain request; the policy says payments needs DPoP, and
/// payments' sidecar requires nonces. A's sidecar exchanges the token for
/// one bound to its own key, asks the nonce, sends it again with it, and B's
/// application receives the validated JWT (no proof). The same token
/// replayed to B without a fresh proof is refused. A client's own DPoP-bound
/// token is exchanged the same way (the actor proves its own key).
#[tokio::test]
async fn a_sidecar_binds_the_next_hops_token_to_its_own_key_and_proves_it() {
    let server = TokenServer::start().await;
    server
        .apply(policy(
            "orders-to-payments",
            &ORDERS_TO_PAYMENTS.replace(
                "hosts: [payments.local]}",
                "hosts: [payments.local], binding: dpop}",
            ),
        ))
        .await;
    let payments_app = App::start(None).await;
    let payments = Sidecar::start_with(
        &server,
        "payments-svc",
        "payments",
        payments_app.addr,
        &[],
        free_port(),
        &["--dpop-require-nonce".to_owned()],
    )
    .await;
    let payments_at = ("payments.local", payments.inbound);
    let (_orders_app, orders) = caller(&server, "orders-svc", "orders", payments_at, &[]).await;
    let url = format!("http://{}/hop", orders.inbound);

    let bearer = server.token("frontend", Some("orders")).await;
    let (status, _, body) = get(
        &url,
        &[("authorization", &format!("Bearer {bearer}"))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next_status"], 200, "{body}");
    let received = &body["next"]["received"];
    let token = received
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let bound = claims(received);
    assert_eq!(bound["aud"], "payments");
    assert_eq!(bound["act"]["sub"], "orders-svc");
    let jkt = bound["cnf"]["jkt"].as_str().unwrap().to_owned();
    assert!(
        body["next"]["headers"].get("dpop").is_none(),
        "the proof stays in payments' sidecar: {body}"
    );
    // The nonce round trip: asked once (401), sent again with it.
    assert_eq!(
        orders.metric("tokenmesh_sidecar_dpop_nonce_retries").await,
        1
    );
    assert_eq!(
        payments
            .metric("tokenmesh_sidecar_requests_total{direction=\"inbound\",status=\"401\"}")
            .await,
        1
    );
    // The nonce (renewed by every answer) is used from then on.
    let (status, _, _) = get(
        &url,
        &[("authorization", &format!("Bearer {bearer}"))],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        orders.metric("tokenmesh_sidecar_dpop_nonce_retries").await,
        1
    );
    assert_eq!(payments_app.hits(), 2);

    // The token payments received, replayed without a fresh proof.
    let direct = format!("http://{}/hop", payments.inbound);
    for authorization in [format!("DPoP {token}"), format!("Bearer {token}")] {
        let (status, challenge, _) = get(&direct, &[("authorization", &authorization)], None).await;
        assert_eq!(status, 401, "{authorization:.5}");
        assert!(
            challenge
                .unwrap_or_default()
                .starts_with("DPoP error=\"invalid_dpop_proof\""),
            "{authorization:.5}"
        );
    }
    assert_eq!(payments_app.hits(), 2);

    // The client's own DPoP-bound token: orders' sidecar checks its proof
    // inbound, then presents it as the actor with a proof of its own key.
    let client_key = ProofKey::generate(Algorithm::ES256).unwrap();
    let client_token = bound_token_for(&server, &client_key, "orders").await;
    let proof = client_key
        .proof("GET", &url, Some(&client_token), None, SystemClock.unix())
        .unwrap();
    let (status, _, body) = call(&url, &format!("DPoP {client_token}"), Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next_status"], 200, "{body}");
    let bound = claims(&body["next"]["received"]);
    assert_eq!(
        bound["cnf"]["jkt"],
        jkt.as_str(),
        "bound to orders' sidecar key"
    );
    assert_ne!(jkt, client_key.jkt());
    assert_eq!(bound["sub"], "frontend");
}
