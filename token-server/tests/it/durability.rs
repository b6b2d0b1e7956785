//! A 200 from the token server is a promise that outlives the process
//! (issue #20): opaque tokens are issued and revoked under load, the server
//! is killed with SIGKILL at a random moment, started again on the same
//! store, and every token it answered with is still active, every revocation
//! it answered still in force. On the embedded store by default; on
//! PostgreSQL (the replica killed) with `TOKENMESH_IT_DATABASE=postgres`.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, task::JoinSet};

use crate::harness::{Config, SECRET, Server};

/// Requests in flight at once: enough that many share a commit.
const WORKERS: usize = 24;
/// Every fourth worker revokes each token it was issued.
const REVOKER_EVERY: usize = 4;

/// A client with opaque tokens and the shared secret.
const VAULT: &str = "---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {name: vault}
spec:
  clientId: vault
  grantTypes: [client_credentials]
  authentication: {method: client_secret_basic, secretRef: {name: shared, key: client_secret}}
  scopes: [\"orders:read\"]
  audiences: [orders]
  accessToken: {format: opaque, ttl: 600s}
";

#[derive(Default)]
struct Answered {
    /// Tokens answered with a 200 and never revoked.
    active: Mutex<Vec<String>>,
    /// Tokens whose revocation was answered with a 200.
    revoked: Mutex<Vec<String>>,
    /// 200s so far (issued and revoked).
    count: AtomicUsize,
    /// Set once `reached` was notified.
    killing: AtomicBool,
    reached: Notify,
}

impl Answered {
    /// Records an answer; past `kill_at` answers, once at least one of them
    /// was a revocation (on PostgreSQL, 100 issuances could all be answered
    /// before the first revocation was), it is time to kill.
    fn record(&self, list: &Mutex<Vec<String>>, token: String, kill_at: usize) {
        list.lock().unwrap().push(token);
        let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if count >= kill_at
            && !self.revoked.lock().unwrap().is_empty()
            && !self.killing.swap(true, Ordering::SeqCst)
        {
            self.reached.notify_one();
        }
    }
}

/// One client's loop until the server is gone: issue an opaque token, and
/// for a revoker revoke it. Only what was answered with a 200 is recorded; a
/// token whose revocation got no answer may be either, so it is left out.
async fn work(
    http: reqwest::Client,
    base: String,
    revoker: bool,
    answered: Arc<Answered>,
    kill_at: usize,
) {
    loop {
        let issued = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth("vault", Some(SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "orders:read"),
            ])
            .send()
            .await;
        let Ok(resp) = issued else { return };
        if resp.status() != 200 {
            return;
        }
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            return;
        };
        let token = body["access_token"].as_str().unwrap().to_owned();
        if !revoker {
            answered.record(&answered.active, token, kill_at);
            continue;
        }
        let revoked = http
            .post(format!("{base}/oauth2/revoke"))
            .basic_auth("vault", Some(SECRET))
            .form(&[("token", token.as_str())])
            .send()
            .await;
        match revoked {
            Ok(resp) if resp.status() == 200 => answered.record(&answered.revoked, token, kill_at),
            _ => return,
        }
    }
}

#[tokio::test]
async fn answered_tokens_and_revocations_survive_kill_9() {
    let config = Config::new("{}");
    config.append(VAULT);
    let dir = tempfile::tempdir().unwrap();
    // No revocation rate limit: the revokers would only be slowed by 429s.
    let extra = vec!["--revoke-rate".to_owned(), "0".to_owned()];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut server = Server::start_with(&config, dir.path(), extra, http.clone(), "http").await;

    // A random moment: after 100 to 600 answers.
    let kill_at = 100 + (RandomState::new().hash_one(0u8) % 500) as usize;
    let answered = Arc::new(Answered::default());
    let mut workers = JoinSet::new();
    for w in 0..WORKERS {
        workers.spawn(work(
            http.clone(),
            server.base.clone(),
            w % REVOKER_EVERY == 0,
            answered.clone(),
            kill_at,
        ));
    }
    tokio::time::timeout(Duration::from_secs(60), answered.reached.notified())
        .await
        .expect("60 s without the answers to kill after, a revocation among them");
    server.kill();
    workers.join_all().await;

    server.restart().await;
    let active = answered.active.lock().unwrap().clone();
    let revoked = answered.revoked.lock().unwrap().clone();
    assert!(
        active.len() + revoked.len() >= kill_at,
        "killed after {kill_at} answers"
    );
    assert!(
        !revoked.is_empty(),
        "no revocation was answered before the kill"
    );
    for token in &active {
        assert_eq!(
            server.introspect(token).await["active"],
            true,
            "a token answered with 200 before kill -9 is gone ({} answered, killed after {kill_at})",
            active.len()
        );
    }
    for token in &revoked {
        assert_eq!(
            server.introspect(token).await["active"],
            false,
            "a revocation answered with 200 before kill -9 is not in force"
        );
    }
}
