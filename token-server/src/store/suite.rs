//! One test suite for every store backend.

use std::{future::Future, task::Poll};

use tokenmesh_tokens::secret::SecretHash;

use super::{OpaqueToken, RevocationKind, Store, StoredKey};

pub fn key(kid: &str) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        alg: "ES256".into(),
        pkcs8: vec![1, 2, 3],
        created_at: 1,
        activates_at: 1,
        retires_at: None,
        publish_until: None,
    }
}

/// Exercises every operation; leaves data for [`after_reopen`].
pub async fn run(store: &dyn Store) {
    store.ping().await.unwrap();

    // Opaque tokens round-trip, and expire.
    let token = OpaqueToken {
        hash: SecretHash::of(b"t"),
        jti: "j".into(),
        client_id: "c".into(),
        grant_id: "g".into(),
        expires_at: 100,
        claims: "{}".into(),
    };
    store.put_opaque_token(&token).await.unwrap();
    assert_eq!(
        store.opaque_token(&token.hash).await.unwrap(),
        Some(token.clone())
    );
    assert_eq!(
        store.opaque_token(&SecretHash::of(b"u")).await.unwrap(),
        None
    );
    let mut long = token.clone();
    long.hash = SecretHash::of(b"long");
    long.expires_at = u64::from(u32::MAX);
    store.put_opaque_token(&long).await.unwrap();
    assert_eq!(store.purge_expired(100).await.unwrap(), 0);
    assert!(store.purge_expired(101).await.unwrap() >= 1);
    assert_eq!(store.opaque_token(&token.hash).await.unwrap(), None);
    assert!(store.opaque_token(&long.hash).await.unwrap().is_some());

    // Revocations are sequenced and found by token or grant.
    let marks_before = store.change_marks().await.unwrap().revoked;
    let a = store
        .revoke(RevocationKind::Token, "jti-1", u64::from(u32::MAX))
        .await
        .unwrap();
    let b = store
        .revoke(RevocationKind::Grant, "grant-1", u64::from(u32::MAX))
        .await
        .unwrap();
    assert!(b > a && a > marks_before);
    assert!(store.is_revoked("jti-1", None, "c").await.unwrap());
    assert!(
        store
            .is_revoked("other", Some("grant-1"), "c")
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_revoked("other", Some("grant-2"), "c")
            .await
            .unwrap()
    );
    let after = store.revocations_after(a, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].kind, RevocationKind::Grant);
    assert_eq!(after[0].seq, b);
    assert_eq!(store.change_marks().await.unwrap().revoked, b);
    // Revoking again keeps one record.
    store
        .revoke(RevocationKind::Token, "jti-1", u64::from(u32::MAX))
        .await
        .unwrap();
    assert_eq!(
        store
            .revocations_after(0, 10)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.id == "jti-1")
            .count(),
        1
    );
    // What a grant issued to one client, and nothing of the other clients'.
    let joined = tokenmesh_tokens::revoked::client_grant_id("grant-2", "orders");
    store
        .revoke(RevocationKind::Grant, &joined, u64::from(u32::MAX))
        .await
        .unwrap();
    assert!(
        store
            .is_revoked("t", Some("grant-2"), "orders")
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_revoked("t", Some("grant-2"), "frontend")
            .await
            .unwrap()
    );

    // Single-use identifiers.
    assert!(
        store
            .use_once("client", "jti", u64::from(u32::MAX))
            .await
            .unwrap()
    );
    assert!(
        !store
            .use_once("client", "jti", u64::from(u32::MAX))
            .await
            .unwrap()
    );
    assert!(
        store
            .use_once("other", "jti", u64::from(u32::MAX))
            .await
            .unwrap()
    );

    // Signing keys; every write and deletion moves the mark.
    let keys_mark = store.change_marks().await.unwrap().keys;
    store.save_signing_key(&key("k1")).await.unwrap();
    let mut retired = key("k1");
    retired.retires_at = Some(5);
    retired.publish_until = Some(9);
    store.save_signing_key(&retired).await.unwrap();
    // Encryption at rest rewrites a stored key's bytes in place.
    retired.pkcs8 = b"sealed in place".to_vec();
    store.save_signing_key(&retired).await.unwrap();
    store.save_signing_key(&key("gone")).await.unwrap();
    let before_delete = store.change_marks().await.unwrap().keys;
    assert_eq!(before_delete, keys_mark + 4);
    store.delete_signing_key("gone").await.unwrap();
    assert_eq!(store.change_marks().await.unwrap().keys, before_delete + 1);
    assert_eq!(store.signing_keys().await.unwrap(), vec![retired.clone()]);
    // Keys that activate together come back in one order every time (the
    // JWKS is built from it), whatever order they were saved in.
    let (mut late_z, mut late_a) = (key("zz"), key("aa"));
    late_z.activates_at = 2;
    late_a.activates_at = 2;
    store.save_signing_key(&late_z).await.unwrap();
    store.save_signing_key(&late_a).await.unwrap();
    assert_eq!(
        store.signing_keys().await.unwrap(),
        vec![retired, late_a, late_z]
    );
    store.delete_signing_key("zz").await.unwrap();
    store.delete_signing_key("aa").await.unwrap();

    // Resources, in the order applied; every change moves the mark.
    let version = store.change_marks().await.unwrap().resources;
    store.put_resource("Scope/a", "doc-a").await.unwrap();
    store.put_resource("Scope/b", "doc-b").await.unwrap();
    store.put_resource("Scope/a", "doc-a2").await.unwrap();
    assert_eq!(
        store.resources().await.unwrap(),
        vec![
            ("Scope/a".into(), "doc-a2".into()),
            ("Scope/b".into(), "doc-b".into())
        ]
    );
    store.put_resource("Scope/b", "").await.unwrap();
    let after_changes = store.change_marks().await.unwrap().resources;
    assert!(after_changes >= version + 4);

    // The rotation lock can be taken and given back.
    let lock = store.try_lock_rotation().await.unwrap().expect("lock free");
    lock.release().await;
}

/// What [`run`] left is still there after the store was closed and opened again.
pub async fn after_reopen(store: &dyn Store) {
    assert!(store.is_revoked("jti-1", None, "c").await.unwrap());
    assert!(
        !store
            .use_once("client", "jti", u64::from(u32::MAX))
            .await
            .unwrap()
    );
    assert_eq!(store.signing_keys().await.unwrap().len(), 1);
    assert_eq!(
        store.resources().await.unwrap(),
        vec![
            ("Scope/a".into(), "doc-a2".into()),
            ("Scope/b".into(), String::new())
        ]
    );
    assert!(
        store
            .opaque_token(&SecretHash::of(b"long"))
            .await
            .unwrap()
            .is_some()
    );
}

/// Revocations committed concurrently all reach a reader that follows the
/// cursor: a revocation must never become visible after one with a higher
/// `seq` (the reader would have moved past it for good).
pub async fn concurrent_revocations(store: &dyn Store) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const WRITERS: usize = 4;
    const EACH: usize = 60;
    let written = AtomicUsize::new(0);
    let mut cursor = store.change_marks().await.unwrap().revoked;
    let writer = |w: usize| {
        let written = &written;
        async move {
            for i in 0..EACH {
                let id = format!("concurrent-{w}-{i}");
                store
                    .revoke(RevocationKind::Token, &id, 4_000_000_000)
                    .await
                    .unwrap();
                written.fetch_add(1, SeqCst);
            }
        }
    };
    let reader = async {
        let mut seen = std::collections::HashSet::new();
        loop {
            // Read "all written" before the query: then that query sees them all.
            let done = written.load(SeqCst) == WRITERS * EACH;
            let batch = store.revocations_after(cursor, 1000).await.unwrap();
            for revocation in &batch {
                seen.insert(revocation.id.clone());
                cursor = cursor.max(revocation.seq);
            }
            if done && batch.is_empty() {
                return seen;
            }
            tokio::task::yield_now().await;
        }
    };
    let ((), (), (), (), seen) = tokio::join!(writer(0), writer(1), writer(2), writer(3), reader);
    assert_eq!(
        seen.len(),
        WRITERS * EACH,
        "the reader following the cursor missed revocations"
    );
}

/// Many opaque tokens written and read at once (so in batches of several
/// sizes: `batch`) each come back as written; unknown digests, and one
/// asked for twice in the same batch, are answered too.
pub async fn concurrent_opaque_tokens(store: &dyn Store) {
    let tokens: Vec<OpaqueToken> = (0..200)
        .map(|i| OpaqueToken {
            hash: SecretHash::of(format!("concurrent-{i}").as_bytes()),
            jti: format!("jti-{i}"),
            client_id: format!("client-{i}"),
            grant_id: format!("grant-{i}"),
            expires_at: 4_000_000_000 + i,
            claims: format!("{{\"n\":{i}}}"),
        })
        .collect();
    for written in join_all(tokens.iter().map(|t| store.put_opaque_token(t)).collect()).await {
        written.unwrap();
    }
    let mut asked: Vec<SecretHash> = tokens.iter().map(|t| t.hash).collect();
    asked.push(tokens[7].hash);
    asked.push(SecretHash::of(b"never issued"));
    let found = join_all(asked.iter().map(|h| store.opaque_token(h)).collect()).await;
    for (token, found) in tokens.iter().zip(&found) {
        assert_eq!(found.as_ref().unwrap().as_ref(), Some(token));
    }
    assert_eq!(found[200].as_ref().unwrap().as_ref(), Some(&tokens[7]));
    assert_eq!(found[201].as_ref().unwrap(), &None);
}

/// Runs `futures` concurrently on this task; their outputs in order.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

/// Authorization codes, SSO sessions, refresh tokens and consents.
pub async fn signin(store: &dyn Store) {
    use super::{AuthCode, CodeUse, RefreshToken, SsoSession};

    // A code is redeemed once; the second time is a replay, with the grant
    // it started, so what it issued can be revoked.
    let code = AuthCode {
        hash: SecretHash::of(b"code"),
        client_id: "web".into(),
        redirect_uri: "https://app.example/cb".into(),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        scope: "openid profile".into(),
        nonce: Some("n-0S6_WzA2Mj".into()),
        session_id: Some("sid-1".into()),
        subject: "alice".into(),
        auth_time: 90,
        grant_id: "grant-code".into(),
        expires_at: 160,
        details: "{}".into(),
    };
    store.put_auth_code(&code).await.unwrap();
    assert_eq!(
        store.use_auth_code(&code.hash).await.unwrap(),
        CodeUse::First(code.clone())
    );
    assert_eq!(
        store.use_auth_code(&code.hash).await.unwrap(),
        CodeUse::Replayed(code.clone())
    );
    assert_eq!(
        store
            .use_auth_code(&SecretHash::of(b"other"))
            .await
            .unwrap(),
        CodeUse::Unknown
    );
    // Many codes written at once (so in batches of several sizes) each come
    // back as written.
    let many: Vec<AuthCode> = (0..150)
        .map(|i| AuthCode {
            hash: SecretHash::of(format!("code-{i}").as_bytes()),
            grant_id: format!("grant-{i}"),
            nonce: (i % 2 == 0).then(|| format!("nonce-{i}")),
            ..code.clone()
        })
        .collect();
    for written in join_all(many.iter().map(|c| store.put_auth_code(c)).collect()).await {
        written.unwrap();
    }
    for code in &many {
        assert_eq!(
            store.use_auth_code(&code.hash).await.unwrap(),
            CodeUse::First(code.clone())
        );
    }
    // Two redemptions racing: exactly one is the first.
    let mut raced = code.clone();
    raced.hash = SecretHash::of(b"raced");
    store.put_auth_code(&raced).await.unwrap();
    let both = join_all(vec![
        store.use_auth_code(&raced.hash),
        store.use_auth_code(&raced.hash),
    ])
    .await;
    let firsts = both
        .iter()
        .filter(|u| matches!(u, Ok(CodeUse::First(_))))
        .count();
    assert_eq!(firsts, 1, "{both:?}");

    // Sessions: found by the digest of the cookie, idle end moved, ended by sid.
    let session = SsoSession {
        hash: SecretHash::of(b"cookie"),
        sid: "sid-1".into(),
        subject: "alice".into(),
        idp: "dev-users".into(),
        auth_time: 90,
        amr: "pwd".into(),
        expires_at: 10_000,
        idle_expires_at: 2_000,
        claims: "{\"email\":\"alice@example.com\"}".into(),
    };
    store.put_session(&session).await.unwrap();
    assert_eq!(
        store.session(&session.hash).await.unwrap(),
        Some(session.clone())
    );
    store.touch_session(&session.hash, 3_000).await.unwrap();
    assert_eq!(
        store
            .session(&session.hash)
            .await
            .unwrap()
            .unwrap()
            .idle_expires_at,
        3_000
    );
    assert!(store.end_session("sid-1").await.unwrap());
    assert!(!store.end_session("sid-1").await.unwrap());
    assert_eq!(store.session(&session.hash).await.unwrap(), None);

    // Refresh tokens rotate once: the second rotation of the same token
    // (a reuse) writes nothing.
    let first = RefreshToken {
        hash: SecretHash::of(b"rt-1"),
        grant_id: "grant-rt".into(),
        client_id: "web".into(),
        subject: "alice".into(),
        scope: "openid offline_access".into(),
        session_id: Some("sid-2".into()),
        auth_time: 90,
        expires_at: 100_000,
        idle_expires_at: 50_000,
        rotated: false,
        details: "{}".into(),
    };
    store.put_refresh_token(&first).await.unwrap();
    assert_eq!(
        store.refresh_token(&first.hash).await.unwrap(),
        Some(first.clone())
    );
    let second = RefreshToken {
        hash: SecretHash::of(b"rt-2"),
        ..first.clone()
    };
    assert!(
        store
            .rotate_refresh_token(&first.hash, &second)
            .await
            .unwrap()
    );
    let third = RefreshToken {
        hash: SecretHash::of(b"rt-3"),
        ..first.clone()
    };
    assert!(
        !store
            .rotate_refresh_token(&first.hash, &third)
            .await
            .unwrap()
    );
    assert!(
        store
            .refresh_token(&first.hash)
            .await
            .unwrap()
            .unwrap()
            .rotated
    );
    assert_eq!(
        store.refresh_token(&second.hash).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.refresh_token(&third.hash).await.unwrap(), None);

    // Consents, per user and client.
    assert_eq!(store.consent("alice", "web").await.unwrap(), None);
    store.put_consent("alice", "web", "openid").await.unwrap();
    store
        .put_consent("alice", "web", "openid profile")
        .await
        .unwrap();
    assert_eq!(
        store.consent("alice", "web").await.unwrap().as_deref(),
        Some("openid profile")
    );
    assert_eq!(store.consent("bob", "web").await.unwrap(), None);

    // Expired codes and refresh tokens go with the rest.
    store.purge_expired(200).await.unwrap();
    assert_eq!(
        store.use_auth_code(&code.hash).await.unwrap(),
        CodeUse::Unknown
    );
    assert!(store.refresh_token(&second.hash).await.unwrap().is_some());
}

/// Sign-ins waiting for an upstream: taken once (of many takes racing,
/// one gets it), not after they expired, and purged when expired.
pub async fn pending_sign_ins(store: &dyn Store) {
    use super::PendingSignIn;

    let pending = PendingSignIn {
        state_hash: SecretHash::of(b"upstream-state"),
        browser_hash: SecretHash::of(b"csrf-cookie"),
        provider: "corp".into(),
        nonce: "n-0S6_WzA2Mj".into(),
        verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
        request: "response_type=code&client_id=web&state=st%201".into(),
        created_at: 1_000,
        expires_at: 1_600,
    };
    store.put_pending_sign_in(&pending).await.unwrap();
    let takes = join_all(
        (0..8)
            .map(|_| store.take_pending_sign_in(&pending.state_hash, 1_599))
            .collect(),
    )
    .await;
    let taken: Vec<PendingSignIn> = takes.into_iter().filter_map(|t| t.unwrap()).collect();
    assert_eq!(taken.len(), 1, "taken exactly once");
    assert_eq!(taken[0], pending, "as written");
    assert_eq!(
        store
            .take_pending_sign_in(&pending.state_hash, 1_000)
            .await
            .unwrap(),
        None,
        "gone once taken"
    );
    assert_eq!(
        store
            .take_pending_sign_in(&SecretHash::of(b"unknown"), 1_000)
            .await
            .unwrap(),
        None
    );

    // An expired one is not handed out (and is gone after the attempt).
    let expired = PendingSignIn {
        state_hash: SecretHash::of(b"expired-state"),
        ..pending.clone()
    };
    store.put_pending_sign_in(&expired).await.unwrap();
    assert_eq!(
        store
            .take_pending_sign_in(&expired.state_hash, 1_600)
            .await
            .unwrap(),
        None
    );
    // Purged once expired; a live one stays.
    let (old, live) = (
        PendingSignIn {
            state_hash: SecretHash::of(b"old-state"),
            ..pending.clone()
        },
        PendingSignIn {
            state_hash: SecretHash::of(b"live-state"),
            expires_at: 5_000,
            ..pending.clone()
        },
    );
    store.put_pending_sign_in(&old).await.unwrap();
    store.put_pending_sign_in(&live).await.unwrap();
    store.purge_expired(2_000).await.unwrap();
    assert_eq!(
        store
            .take_pending_sign_in(&old.state_hash, 0)
            .await
            .unwrap(),
        None,
        "purged"
    );
    assert_eq!(
        store
            .take_pending_sign_in(&live.state_hash, 2_000)
            .await
            .unwrap(),
        Some(live)
    );
}

/// What [`signin`] left is still there after a reopen.
pub async fn signin_after_reopen(store: &dyn Store) {
    assert!(
        store
            .refresh_token(&SecretHash::of(b"rt-2"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.consent("alice", "web").await.unwrap().is_some());
}
