//! DPoP (RFC 9449) at the token endpoint, in process on a manual clock:
//! bound tokens, introspection, nonces, exchange rules, and the attacks of
//! issue #18 that the token server sees.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::StatusCode;
use serde_json::Value;
use tokenmesh_tokens::{Algorithm, clock::Clock, dpop::create::ProofKey};

use crate::{
    exchange::mesh_config,
    harness::Config,
    in_process::{App, ISSUER},
};

const TOKEN_URL: &str = "http://127.0.0.1:8080/oauth2/token";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const GRANT: [(&str, &str); 1] = [("grant_type", "client_credentials")];

fn key() -> ProofKey {
    ProofKey::generate(Algorithm::ES256).unwrap()
}

fn proof(app: &App, key: &ProofKey, nonce: Option<&str>) -> String {
    key.proof("POST", TOKEN_URL, None, nonce, app.clock.unix())
        .unwrap()
}

/// A token request of `client` with the `DPoP` header `proof`.
async fn with_proof(
    app: &App,
    client: &str,
    form: &[(&str, &str)],
    proof: &str,
) -> (StatusCode, http::HeaderMap, Value) {
    app.post_with("/oauth2/token", Some(client), form, &[("DPoP", proof)])
        .await
}

fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_proof_binds_the_token_and_introspection_and_the_phantom_jwt_say_so() {
    assert_eq!(TOKEN_URL, format!("{ISSUER}/oauth2/token"));
    let app = App::start(Config::new("{}")).await;
    let key = key();
    let (status, _, body) = with_proof(&app, "gateway", &GRANT, &proof(&app, &key, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(payload(token)["cnf"]["jkt"], key.jkt());

    let introspected = app.introspect(token).await;
    assert_eq!(introspected["token_type"], "DPoP");
    assert_eq!(introspected["cnf"]["jkt"], key.jkt());
    let (status, _, phantom) = app
        .send(
            "/oauth2/introspect",
            Some("gateway"),
            &[("token", token)],
            &[("Accept", "application/jwt")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let phantom = std::str::from_utf8(&phantom).unwrap();
    assert_eq!(payload(phantom)["cnf"]["jkt"], key.jkt());

    let (_, _, bearer) = app.post("/oauth2/token", Some("gateway"), &GRANT).await;
    assert_eq!(bearer["token_type"], "Bearer");
    let bearer = bearer["access_token"].as_str().unwrap();
    assert!(payload(bearer).get("cnf").is_none());
    assert_eq!(app.introspect(bearer).await["token_type"], "Bearer");
}

#[tokio::test]
async fn replayed_stale_and_misdirected_proofs_are_refused() {
    let app = App::start(Config::new("{}")).await;
    let key = key();
    let refused = async |proof: &str| {
        let (status, _, body) = with_proof(&app, "gateway", &GRANT, proof).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
        body["error_description"].as_str().unwrap().to_owned()
    };

    let once = proof(&app, &key, None);
    let (status, _, _) = with_proof(&app, "gateway", &GRANT, &once).await;
    assert_eq!(status, StatusCode::OK);
    assert!(refused(&once).await.contains("used before"));

    let now = app.clock.unix();
    let get = key.proof("GET", TOKEN_URL, None, None, now).unwrap();
    assert!(refused(&get).await.contains("htm"));
    let elsewhere = key
        .proof(
            "POST",
            "http://127.0.0.1:8080/oauth2/introspect",
            None,
            None,
            now,
        )
        .unwrap();
    assert!(refused(&elsewhere).await.contains("htu"));

    let old = proof(&app, &key, None);
    app.clock.advance(Duration::from_secs(61));
    assert!(refused(&old).await.contains("iat"));

    let (status, _, body) = app
        .post_with(
            "/oauth2/token",
            Some("gateway"),
            &GRANT,
            &[
                ("DPoP", &proof(&app, &key, None)),
                ("DPoP", &proof(&app, &key, None)),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_dpop_proof");
}

#[tokio::test]
async fn a_dpop_client_without_a_proof_gets_no_token() {
    let config = Config::new("{}");
    config.append("---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: bound}\nspec:\n  clientId: bound\n  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n  accessToken: {binding: dpop}\n");
    let app = App::start(config).await;
    let (status, _, body) = app.post("/oauth2/token", Some("bound"), &GRANT).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_dpop_proof");
    let (status, _, body) = with_proof(&app, "bound", &GRANT, &proof(&app, &key(), None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
}

#[tokio::test]
async fn a_required_nonce_is_handed_out_and_expires_with_its_window() {
    let app = App::start(Config::new("{dpop: {requireNonce: true}}")).await;
    let key = key();
    let (status, headers, body) =
        with_proof(&app, "gateway", &GRANT, &proof(&app, &key, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "use_dpop_nonce");
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();

    let (status, headers, body) =
        with_proof(&app, "gateway", &GRANT, &proof(&app, &key, Some(&nonce))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers.contains_key("dpop-nonce"),
        "a fresh nonce comes along"
    );

    let forged = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAA",
        nonce.split('.').next().unwrap()
    );
    let (_, _, body) = with_proof(&app, "gateway", &GRANT, &proof(&app, &key, Some(&forged))).await;
    assert_eq!(body["error"], "use_dpop_nonce");

    app.clock.advance(Duration::from_secs(241));
    let (_, headers, body) =
        with_proof(&app, "gateway", &GRANT, &proof(&app, &key, Some(&nonce))).await;
    assert_eq!(
        body["error"], "use_dpop_nonce",
        "the nonce's windows passed"
    );
    assert_ne!(headers["dpop-nonce"], nonce.as_str());
}

#[tokio::test]
async fn metadata_lists_the_proof_algorithms() {
    let app = App::start(Config::new("{}")).await;
    let response = tower::ServiceExt::oneshot(
        token_server::http::router(app.state.clone()),
        http::Request::get("/.well-known/oauth-authorization-server")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let meta: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA", "RS256", "PS256"])
    );
}

/// Issue #18: a token bound to gateway's key reaches orders. Its holder's
/// proof exchanges it into a token bound to gateway's key; the actor
/// orders-svc presents it with a proof of its own key and gets a token bound
/// to that key (the sidecar's outbound case). Refused: the actor without a
/// proof (the new token would be bearer), a client no policy lets act.
#[tokio::test]
async fn a_bound_subject_token_is_exchanged_by_its_holder_or_a_bound_actor() {
    let app = App::start(mesh_config()).await;
    let gateway_key = key();
    let (_, _, body) = with_proof(
        &app,
        "gateway",
        &[("grant_type", "client_credentials"), ("audience", "orders")],
        &proof(&app, &gateway_key, None),
    )
    .await;
    let subject = body["access_token"].as_str().unwrap().to_owned();
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", "payments"),
    ];

    let (status, _, body) = app.post("/oauth2/token", Some("orders-svc"), &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let thief_key = key();
    let (_, _, body) =
        with_proof(&app, "payments-svc", &form, &proof(&app, &thief_key, None)).await;
    assert_eq!(body["error"], "unauthorized_client", "no policy: {body}");

    for (key, why) in [
        (&gateway_key, "the holder's key"),
        (&key(), "the actor's own key"),
    ] {
        let (status, _, body) =
            with_proof(&app, "orders-svc", &form, &proof(&app, key, None)).await;
        assert_eq!(status, StatusCode::OK, "{why}: {body}");
        assert_eq!(body["token_type"], "DPoP");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(payload(token)["cnf"]["jkt"], key.jkt(), "{why}");
    }
}
