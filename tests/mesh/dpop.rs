//! DPoP through the mesh: a token bound at the real token server is
//! accepted by the sidecar only as `Authorization: DPoP` with a fresh proof
//! of its key for this request, and the application gets the JWT without
//! the proof.

use serde_json::Value;
use tokenmesh_tokens::{Algorithm, clock::Clock, clock::SystemClock, dpop::create::ProofKey};

use crate::harness::{App, SECRET, Sidecar, TokenServer, free_port, get};

/// A token for `frontend` bound to `key` (a proof sent to the token endpoint).
async fn bound_token(server: &TokenServer, key: &ProofKey) -> String {
    let url = format!("{}/oauth2/token", server.http);
    let proof = key
        .proof("POST", &url, None, None, SystemClock.unix())
        .unwrap();
    let resp = reqwest::Client::new()
        .post(&url)
        .basic_auth("frontend", Some(SECRET))
        .header("DPoP", proof)
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "gateway"),
        ])
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
