//! Revocations and the caches, against a token server that does not answer.

use clap::Parser;
use serde_json::json;
use tokenmesh_proto::v1::{Revoked, revocation_event::Kind};

use tokenmesh_tokens::clock::Clock;

use super::*;

/// These tests run on the system clock, as the mesh they build does.
fn now() -> u64 {
    SystemClock.unix()
}

/// A mesh whose token server is `url` (nothing answers there).
fn mesh(url: &str, max_revocations: usize) -> (Mesh, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "secret").unwrap();
    let args = crate::cli::Args::try_parse_from([
        "tokenmesh-sidecar",
        "--token-server",
        url,
        "--client-id",
        "orders-svc",
        "--audience",
        "orders",
        "--client-secret-file",
        secret.to_str().unwrap(),
    ])
    .unwrap();
    let server = TokenServer::new(&args).unwrap();
    (
        Mesh::new(server, "orders".into(), 0, max_revocations).unwrap(),
        dir,
    )
}

fn claims(jti: &str, grant_id: Option<&str>, exp: u64) -> AccessTokenClaims {
    serde_json::from_value(json!({
        "iss": "https://issuer", "sub": "frontend", "aud": "orders", "exp": exp,
        "iat": 0, "nbf": 0, "jti": jti, "client_id": "frontend", "grant_id": grant_id,
    }))
    .unwrap()
}

/// An (unsigned) JWT carrying `claims`: outbound decisions read it unverified.
fn jwt(claims: &AccessTokenClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln")
}

pub(super) fn revocation(id: &str, expires_at: u64) -> RevocationEvent {
    RevocationEvent {
        seq: 1,
        kind: Kind::Token as i32,
        id: id.into(),
        expires_at: i64::try_from(expires_at).unwrap(),
        snapshot: Vec::new(),
    }
}

fn route() -> Route {
    Route {
        audience: Arc::from("payments"),
        mode: Mode::Exchange,
        scopes: Arc::from(""),
        policy: Arc::from("orders-to-payments"),
        binding: Binding::None,
    }
}

#[tokio::test]
async fn a_revoked_subject_token_is_not_exchanged_or_shared_from_the_caches() {
    let (mesh, _dir) = mesh("http://127.0.0.1:1", 100);
    let now = now();
    let subject = claims("t0", None, now + 600);
    let token = jwt(&subject);
    // What an earlier exchange and share check left in the caches.
    let from = mesh.subject_of(&token, now).unwrap();
    let route = route();
    let key = (
        hash(&token),
        route.audience.clone(),
        route.scopes.clone(),
        None,
    );
    mesh.exchanged
        .insert(key, (Arc::from("exchanged"), from.clone()), now + 300, now);
    mesh.shared.insert(
        (hash(&token), "orders.local".into()),
        (true, from),
        now + 300,
        now,
    );
    assert_eq!(
        mesh.exchange(&route, &token, false).await.as_deref(),
        Ok("exchanged")
    );
    assert_eq!(mesh.share("orders.local", &token).await, Ok(()));

    mesh.revoke(revocation("t0", now + 600));
    // Asked again, of a token server that is down: the cached answers are gone.
    assert!(matches!(
        mesh.exchange(&route, &token, false).await,
        Err(Refusal::Unavailable(_))
    ));
    assert!(matches!(
        mesh.share("orders.local", &token).await,
        Err(Refusal::Unavailable(_))
    ));
    assert!(mesh.exchanged.is_empty() && mesh.shared.is_empty());
}

#[tokio::test]
async fn a_cancelled_exchange_leaves_no_single_flight_entry() {
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (mesh, _dir) = mesh(&url, 100);
    let token = jwt(&claims("t0", None, now() + 600));
    let route = route();
    for _ in 0..3 {
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            mesh.exchange(&route, &token, false),
        )
        .await;
        assert!(waited.is_err(), "the token server never answers");
    }
    assert!(
        mesh.exchanged.flights() == 0,
        "cancelled flights were forgotten"
    );
}

#[tokio::test]
async fn a_full_revocation_memory_refuses_every_token_that_may_be_a_dropped_one() {
    let (mesh, _dir) = mesh("http://127.0.0.1:1", 2);
    let now = now();
    // The start: one snapshot event with three revocations, one too many.
    let snapshot = [("a", now + 100), ("b", now + 200), ("c", now + 300)]
        .map(|(id, until)| Revoked {
            kind: Kind::Token as i32,
            id: id.into(),
            expires_at: i64::try_from(until).unwrap(),
        })
        .to_vec();
    mesh.revoke(RevocationEvent {
        seq: 3,
        snapshot,
        ..Default::default()
    });
    assert_eq!(mesh.metrics.revocations.get(), 3);
    assert_eq!(mesh.metrics.revocations_dropped.get(), 1);
    assert!(
        mesh.is_revoked(&claims("a", None, now + 100)),
        "dropped, still refused"
    );
    assert!(mesh.is_revoked(&claims("other", None, now + 50)));
    assert!(!mesh.is_revoked(&claims("other", None, now + 101)));
    assert!(mesh.is_revoked(&claims("c", None, now + 300)));
    mesh.revoke(revocation("g", now + 1_000));
    assert!(mesh.is_revoked(&claims("x", Some("g"), now + 500)));
    // `b` made room for `g`: tokens expiring by `b`'s expiry are refused now.
    assert!(mesh.is_revoked(&claims("other", None, now + 200)));
    assert!(!mesh.is_revoked(&claims("other", None, now + 201)));
}
