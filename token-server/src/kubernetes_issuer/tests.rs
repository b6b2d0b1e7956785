//! The verifier against a small in-test "API server" that serves OIDC
//! discovery and a JWKS, and counts the requests.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokenmesh_tokens::{Algorithm, clock::ManualClock, signing::SigningKey};

use super::*;

const ISSUER: &str = "https://kubernetes.default.svc";
const AUDIENCE: &str = "https://tokens.example";
const NOW: u64 = 2_000_000_000;

#[derive(Default)]
struct ApiServer {
    jwks: Mutex<Value>,
    /// Requests for the JWKS (each fetch makes one after discovery).
    jwks_hits: AtomicUsize,
    authorization: Mutex<Vec<Option<String>>>,
    /// When set, discovery answers with this issuer.
    issuer: Mutex<Option<String>>,
    /// TokenReview: the username it authenticates tokens as (none: it does
    /// not), or an HTTP error status to answer with.
    review_user: Mutex<Option<String>>,
    review_status: Mutex<Option<StatusCode>>,
    /// TokenReview requests, as received.
    reviews: Mutex<Vec<(Option<String>, Value)>>,
}

/// Like kube-apiserver: 201 with the review's status.
async fn token_review(
    State(api): State<Arc<ApiServer>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    api.reviews.lock().unwrap().push((auth, review.clone()));
    if let Some(status) = *api.review_status.lock().unwrap() {
        return (status, Json(json!({"kind": "Status"})));
    }
    let user = api.review_user.lock().unwrap().clone();
    let status = match user {
        Some(username) => json!({"authenticated": true, "user": {"username": username}}),
        None => json!({"authenticated": false, "error": "token has been invalidated"}),
    };
    (
        StatusCode::CREATED,
        Json(json!({"kind": "TokenReview", "spec": review["spec"], "status": status})),
    )
}

async fn discovery(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> Json<Value> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    api.authorization.lock().unwrap().push(auth);
    let issuer = api.issuer.lock().unwrap().clone();
    let issuer = issuer.as_deref().unwrap_or(ISSUER);
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/openid/v1/jwks"),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

/// Like kube-apiserver: 406 unless the client accepts `application/jwk-set+json`.
async fn jwks(State(api): State<Arc<ApiServer>>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    api.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let accept = headers.get("accept").and_then(|v| v.to_str().ok());
    if !accept.is_some_and(|a| a.contains("application/jwk-set+json")) {
        return (StatusCode::NOT_ACCEPTABLE, Json(json!({})));
    }
    (StatusCode::OK, Json(api.jwks.lock().unwrap().clone()))
}

async fn start(keys: &[&SigningKey]) -> (Arc<ApiServer>, String) {
    let api = Arc::new(ApiServer::default());
    set_keys(&api, keys);
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/openid/v1/jwks", get(jwks))
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (api, url)
}

fn set_keys(api: &ApiServer, keys: &[&SigningKey]) {
    let keys: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
    *api.jwks.lock().unwrap() = json!({ "keys": keys });
}

fn settings(discovery_url: &str) -> KubernetesSettings {
    KubernetesSettings {
        issuer: Some(ISSUER.into()),
        audience: AUDIENCE.into(),
        discovery_url: discovery_url.into(),
        ca_file: None,
        token_file: None,
        token_review: false,
        api_server_url: discovery_url.into(),
    }
}

/// Claims as `kubectl create token orders -n shop --audience <AUDIENCE>` has them.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": "system:serviceaccount:shop:orders",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "2f0b1c2e",
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "orders", "uid": "u"}},
    })
}

fn with(patch: Value) -> Value {
    let mut c = claims();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign_jwt("JWT", claims).unwrap()
}

fn rsa(kid: &str) -> SigningKey {
    SigningKey::generate(kid.into(), Algorithm::RS256).unwrap()
}

/// A token file (in a folder that lives as long as the first value).
fn token_file(contents: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, contents).unwrap();
    (dir, file)
}

fn orders() -> ServiceAccount {
    ServiceAccount {
        namespace: "shop".into(),
        name: "orders".into(),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_to_their_service_account() {
    let (rs, es) = (
        rsa("rs"),
        SigningKey::generate("es".into(), Algorithm::ES256).unwrap(),
    );
    let (_api, url) = start(&[&rs, &es]).await;
    let verifier = Verifier::new(&settings(&url)).unwrap();
    for key in [&rs, &es] {
        let account = verifier.verify(&sign(key, &claims()), NOW).await.unwrap();
        assert_eq!(account, orders());
    }
    let single_aud = sign(&rs, &with(json!({"aud": AUDIENCE})));
    assert!(verifier.verify(&single_aud, NOW).await.is_ok());
}

#[tokio::test]
async fn wrong_claims_are_refused() {
    let key = rsa("k1");
    let (_api, url) = start(&[&key]).await;
    let verifier = Verifier::new(&settings(&url)).unwrap();
    let refused = |patch: Value| {
        let token = sign(&key, &with(patch));
        let verifier = &verifier;
        async move { verifier.verify(&token, NOW).await.unwrap_err() }
    };
    let token_error = |err: SaTokenError| match err {
        SaTokenError::Token(e) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        token_error(refused(json!({"aud": ["someone-else"]})).await),
        VerifyError::Audience
    );
    match refused(json!({"iss": "https://other.cluster"})).await {
        SaTokenError::Issuer { expected, received } => {
            assert_eq!(
                (expected.as_str(), received.as_str()),
                (ISSUER, "https://other.cluster")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        token_error(refused(json!({"exp": NOW - 60})).await),
        VerifyError::Expired
    );
    assert_eq!(
        token_error(refused(json!({"exp": null})).await),
        VerifyError::Claim("exp")
    );
    assert_eq!(
        token_error(refused(json!({"nbf": NOW + 600})).await),
        VerifyError::NotYetValid
    );
    // A year-long token, or one that does not say how long it lives.
    for patch in [json!({"exp": NOW + 365 * 86400}), json!({"iat": null})] {
        assert!(
            matches!(refused(patch.clone()).await, SaTokenError::Lifetime),
            "{patch}"
        );
    }
    for sub in [
        "system:node:worker-1",
        "alice",
        "system:serviceaccount:shop",
        "system:serviceaccount::orders",
    ] {
        assert!(
            matches!(refused(json!({"sub": sub})).await, SaTokenError::Subject),
            "{sub}"
        );
    }
    let other = sign(
        &key,
        &with(json!({"sub": "system:serviceaccount:shop:payments"})),
    );
    assert_ne!(verifier.verify(&other, NOW).await.unwrap(), orders());
}

/// RFC 7515 §4.1.11: a service-account token with a `crit` this verifier
/// does not understand is refused, though its signature verifies.
#[tokio::test]
async fn a_token_with_crit_is_refused() {
    let key = SigningKey::generate("es".into(), Algorithm::ES256).unwrap();
    let (_api, url) = start(&[&key]).await;
    let verifier = Verifier::new(&settings(&url)).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("es".into());
    header.crit = Some(vec!["x-unknown".into()]);
    header.extras.insert("x-unknown", true);
    let der = jsonwebtoken::EncodingKey::from_ec_der(key.pkcs8());
    let token = jsonwebtoken::encode(&header, &claims(), &der).unwrap();
    assert!(matches!(
        verifier.verify(&token, NOW).await,
        Err(SaTokenError::Token(VerifyError::Critical))
    ));
    header.crit = None;
    let token = jsonwebtoken::encode(&header, &claims(), &der).unwrap();
    assert_eq!(verifier.verify(&token, NOW).await.unwrap(), orders());
}

#[tokio::test]
async fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let key = rsa("k1");
    let (_api, url) = start(&[&key]).await;
    let verifier = Verifier::new(&settings(&url)).unwrap();
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"})),
        b64(claims())
    );
    assert!(matches!(
        verifier.verify(&none, NOW).await,
        Err(SaTokenError::Token(
            VerifyError::Algorithm(_) | VerifyError::Malformed
        ))
    ));
    // HS256 keyed with the RSA public key's bytes: the classic confusion.
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let modulus = key.public_jwk().n.unwrap();
    let secret = jsonwebtoken::EncodingKey::from_secret(modulus.as_bytes());
    let hs = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
    assert!(matches!(
        verifier.verify(&hs, NOW).await,
        Err(SaTokenError::Token(VerifyError::Algorithm(_)))
    ));
    // ES256 under the RSA key's kid: no key carries that algorithm.
    let es = SigningKey::generate("k1".into(), Algorithm::ES256).unwrap();
    assert!(matches!(
        verifier.verify(&sign(&es, &claims()), NOW).await,
        Err(SaTokenError::Token(VerifyError::UnknownKey))
    ));
    // The right kid signed by another key.
    assert!(matches!(
        verifier.verify(&sign(&rsa("k1"), &claims()), NOW).await,
        Err(SaTokenError::Token(VerifyError::Signature))
    ));
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    let verifier = Verifier::new(&settings(&url)).unwrap();
    verifier.verify(&sign(&key, &claims()), NOW).await.unwrap();
    assert_eq!(api.jwks_hits.load(Ordering::SeqCst), 1);
    // ES256 keys are quick to make: fifty tokens under kids never published.
    for i in 0..50 {
        let stranger = SigningKey::generate(format!("made-up-{i}"), Algorithm::ES256).unwrap();
        let err = verifier
            .verify(&sign(&stranger, &claims()), NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, SaTokenError::Token(VerifyError::UnknownKey)));
    }
    assert_eq!(
        api.jwks_hits.load(Ordering::SeqCst),
        1,
        "a flood of unknown kids must not reach the API server"
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_first_use() {
    let (old, new) = (rsa("old"), rsa("new"));
    let (api, url) = start(&[&old]).await;
    let verifier = Verifier::new(&settings(&url))
        .unwrap()
        .with_min_refresh(Duration::ZERO);
    verifier.verify(&sign(&old, &claims()), NOW).await.unwrap();
    set_keys(&api, &[&old, &new]);
    assert_eq!(
        verifier.verify(&sign(&new, &claims()), NOW).await.unwrap(),
        orders()
    );
    assert_eq!(api.jwks_hits.load(Ordering::SeqCst), 2);
    // Known kids are served from the cache.
    verifier.verify(&sign(&old, &claims()), NOW).await.unwrap();
    assert_eq!(api.jwks_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_not_blamed_on_the_token() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let verifier = Verifier::new(&settings(&closed)).unwrap();
    let token = sign(&rsa("k1"), &claims());
    match verifier.verify(&token, NOW).await {
        Err(SaTokenError::Unavailable(message)) => {
            assert!(message.contains("cannot be reached"), "{message}");
            assert!(!message.contains(&token));
        }
        other => panic!("{other:?}"),
    }
    // Within the interval the failure is remembered, not retried.
    assert!(matches!(
        verifier.verify(&token, NOW).await,
        Err(SaTokenError::Unavailable(_))
    ));
    // Only the service-account clients wait for the API server.
    assert_eq!(verifier.readiness(), Ok(()));
}

#[tokio::test]
async fn old_keys_bridge_an_outage_for_a_while_only() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    let clock = ManualClock::at_unix(NOW);
    let verifier = Verifier::with_clock(&settings(&url), clock.clone()).unwrap();
    let bounds = Freshness::default();
    let token = sign(&key, &claims());
    assert!(verifier.verify(&token, NOW).await.is_ok());
    // Every fetch fails from now on; the keys fetched before, too old to
    // serve without asking, still verify ...
    *api.issuer.lock().unwrap() = Some("https://impostor.example".into());
    clock.advance(bounds.max_age + Duration::from_secs(1));
    assert!(verifier.verify(&token, NOW).await.is_ok());
    assert_eq!(api.authorization.lock().unwrap().len(), 2, "it asked again");
    // ... until they are too old to vouch for anything.
    clock.advance(bounds.max_stale);
    assert!(matches!(
        verifier.verify(&token, NOW).await,
        Err(SaTokenError::Unavailable(_))
    ));
}

/// kubeadm's, kind's and minikube's issuer, where the chart used to expect
/// `https://kubernetes.default.svc`.
const KUBEADM_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[tokio::test]
async fn discovery_must_name_the_configured_issuer_or_the_server_is_not_ready() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    *api.issuer.lock().unwrap() = Some(KUBEADM_ISSUER.into());
    let verifier = Verifier::new(&settings(&url)).unwrap();
    assert!(
        verifier.readiness().is_err(),
        "not ready before discovery answered"
    );
    assert!(verifier.warm_up().await.is_err());
    let reason = verifier.readiness().unwrap_err();
    assert!(
        reason.contains(&format!("`{KUBEADM_ISSUER}`")) && reason.contains(&format!("`{ISSUER}`")),
        "{reason}"
    );
    let token = sign(&key, &with(json!({"iss": KUBEADM_ISSUER})));
    match verifier.verify(&token, NOW).await {
        Err(SaTokenError::Unavailable(message)) => {
            assert!(message.contains(KUBEADM_ISSUER), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.jwks_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_issuer_left_out_is_the_one_discovery_names() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    *api.issuer.lock().unwrap() = Some(KUBEADM_ISSUER.into());
    let verifier = Verifier::new(&KubernetesSettings {
        issuer: None,
        ..settings(&url)
    })
    .unwrap();
    let token = sign(&key, &with(json!({"iss": KUBEADM_ISSUER})));
    // Before discovery a service account's token is routed here by its sub.
    assert_eq!(verifier.issuer(), None);
    assert!(verifier.is_for(KUBEADM_ISSUER, Some("system:serviceaccount:shop:orders")));
    assert!(!verifier.is_for("batch", Some("batch")));
    assert_eq!(verifier.verify(&token, NOW).await.unwrap(), orders());
    assert_eq!(verifier.issuer().as_deref(), Some(KUBEADM_ISSUER));
    assert!(verifier.readiness().is_ok());
    assert!(verifier.is_for(KUBEADM_ISSUER, None));
    assert!(!verifier.is_for(ISSUER, Some("system:serviceaccount:shop:orders")));
    // A token of the issuer the chart used to assume is another issuer's.
    assert!(matches!(
        verifier.verify(&sign(&key, &claims()), NOW).await,
        Err(SaTokenError::Issuer { .. })
    ));
}

#[tokio::test]
async fn the_token_file_is_sent_and_read_again_on_each_fetch() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    let (_dir, file) = token_file("first\n");
    let verifier = Verifier::new(&KubernetesSettings {
        token_file: Some(file.clone()),
        ..settings(&url)
    })
    .unwrap()
    .with_min_refresh(Duration::ZERO);
    verifier.warm_up().await.unwrap();
    std::fs::write(&file, "second").unwrap();
    verifier.warm_up().await.unwrap();
    assert_eq!(
        *api.authorization.lock().unwrap(),
        vec![Some("Bearer first".into()), Some("Bearer second".into())]
    );
}

#[test]
fn subjects_name_service_accounts() {
    assert_eq!(
        ServiceAccount::from_subject("system:serviceaccount:shop:orders"),
        Some(orders())
    );
    assert_eq!(
        ServiceAccount::from_subject("system:serviceaccount:a:b:c"),
        None
    );
}

#[test]
fn keys_come_only_over_https_or_loopback() {
    use super::confidential_url;
    for url in [
        "https://kubernetes.default.svc",
        "https://oidc.example/keys",
        "http://127.0.0.1:6443",
        "http://localhost/jwks",
        "http://[::1]:8080/openid/v1/jwks",
    ] {
        assert!(confidential_url(url), "{url}");
    }
    for url in [
        "http://10.0.0.1:6443",
        "http://kubernetes.default.svc/openid/v1/jwks",
        "http://127.0.0.1.evil.example/jwks",
        "http://localhost.evil.example:80/jwks",
        "ftp://127.0.0.1/jwks",
        "http://127.0.0.1@evil.example/jwks",
    ] {
        assert!(!confidential_url(url), "{url}");
    }
}

#[tokio::test]
async fn token_review_asks_the_api_server_and_remembers_the_answer_briefly() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    let (_dir, file) = token_file("reviewer");
    let verifier = Verifier::new(&KubernetesSettings {
        token_file: Some(file),
        token_review: true,
        ..settings(&url)
    })
    .unwrap();
    let token = sign(&key, &claims());
    *api.review_user.lock().unwrap() = Some("system:serviceaccount:shop:orders".into());
    assert_eq!(verifier.verify(&token, NOW).await.unwrap(), orders());
    assert_eq!(verifier.verify(&token, NOW).await.unwrap(), orders());
    {
        let reviews = api.reviews.lock().unwrap();
        assert_eq!(reviews.len(), 1, "the second answer came from memory");
        let (auth, review) = &reviews[0];
        assert_eq!(auth.as_deref(), Some("Bearer reviewer"));
        assert_eq!(review["kind"], "TokenReview");
        assert_eq!(review["spec"]["token"], token.as_str());
        assert_eq!(review["spec"]["audiences"], json!([AUDIENCE]));
    }

    // Invalidated (the account or its pod deleted): refused. (Each case
    // uses another token: answers are remembered per token.)
    *api.review_user.lock().unwrap() = None;
    let other = sign(&key, &with(json!({"jti": "another"})));
    assert!(matches!(
        verifier.verify(&other, NOW).await,
        Err(SaTokenError::Reviewed)
    ));
    // Accepted, but as someone else than the token's sub.
    *api.review_user.lock().unwrap() = Some("system:serviceaccount:shop:payments".into());
    let third = sign(&key, &with(json!({"jti": "third"})));
    assert!(matches!(
        verifier.verify(&third, NOW).await,
        Err(SaTokenError::Reviewed)
    ));
    // No answer: neither accepted nor refused.
    *api.review_status.lock().unwrap() = Some(StatusCode::FORBIDDEN);
    let fourth = sign(&key, &with(json!({"jti": "fourth"})));
    match verifier.verify(&fourth, NOW).await {
        Err(SaTokenError::Unavailable(message)) => {
            assert!(message.contains("tokenreviews"), "{message}");
            assert!(!message.contains(&fourth), "no token in messages");
        }
        other => panic!("{other:?}"),
    }
    // A 2xx that is no TokenReview (a wrong apiServerUrl): no answer either.
    *api.review_status.lock().unwrap() = Some(StatusCode::OK);
    let fifth = sign(&key, &with(json!({"jti": "fifth"})));
    match verifier.verify(&fifth, NOW).await {
        Err(SaTokenError::Unavailable(message)) => {
            assert!(message.contains("not a TokenReview"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.reviews.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn without_token_review_the_api_server_is_not_asked() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    let verifier = Verifier::new(&settings(&url)).unwrap();
    assert_eq!(
        verifier.verify(&sign(&key, &claims()), NOW).await.unwrap(),
        orders()
    );
    assert!(api.reviews.lock().unwrap().is_empty());
}

/// A kid the cached keys lack, while the API server cannot be asked, may be
/// a rotated key nobody could fetch: the client gets 503, not a refusal.
#[tokio::test]
async fn an_unknown_kid_during_an_outage_is_unavailable_not_refused() {
    let key = rsa("k1");
    let (api, url) = start(&[&key]).await;
    let verifier = Verifier::new(&settings(&url))
        .unwrap()
        .with_min_refresh(Duration::ZERO);
    assert!(verifier.verify(&sign(&key, &claims()), NOW).await.is_ok());
    *api.issuer.lock().unwrap() = Some("https://impostor.example".into());
    let rotated = sign(&rsa("k2"), &claims());
    match verifier.verify(&rotated, NOW).await {
        Err(SaTokenError::Unavailable(message)) => {
            assert!(message.contains("impostor"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Keys it holds still verify.
    assert!(verifier.verify(&sign(&key, &claims()), NOW).await.is_ok());
}
