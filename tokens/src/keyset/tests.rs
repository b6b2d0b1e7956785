//! The rule of the module header, with a manual clock and a fake source.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use super::*;
use crate::{Algorithm, clock::ManualClock, jwk::JwkSet, signing::SigningKey};

/// A source that answers with the kids it is given, or fails, and counts
/// its fetches. While `gate` is closed, a fetch waits for it.
#[derive(Default)]
struct Source {
    kids: Mutex<Vec<&'static str>>,
    down: Mutex<bool>,
    fetches: AtomicUsize,
    gate: Option<tokio::sync::Semaphore>,
}

impl FetchKeys for Source {
    type Error = String;

    async fn fetch(&self) -> Result<Keys, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _open = gate.acquire().await.map_err(|e| e.to_string())?;
        }
        if *self.down.lock().unwrap() {
            return Err("the source is down".into());
        }
        let kids = self.kids.lock().unwrap().clone();
        let jwks = JwkSet {
            keys: kids
                .into_iter()
                .map(|kid| {
                    SigningKey::generate(kid.into(), Algorithm::ES256)
                        .unwrap()
                        .public_jwk()
                })
                .collect(),
        };
        Ok(Keys {
            issuer: "https://issuer".into(),
            set: KeySet::from_jwks(&jwks).0,
        })
    }
}

const FRESHNESS: Freshness = Freshness {
    min_interval: Duration::from_secs(10),
    max_age: Duration::from_secs(3600),
    max_stale: Duration::from_secs(24 * 3600),
};

fn keyset(kids: &[&'static str]) -> (RemoteKeySet<Source>, Arc<ManualClock>) {
    let clock = ManualClock::at_unix(1_000_000);
    let source = Source {
        kids: Mutex::new(kids.to_vec()),
        ..Source::default()
    };
    (RemoteKeySet::new(source, clock.clone(), FRESHNESS), clock)
}

fn fetches(keys: &RemoteKeySet<Source>) -> usize {
    keys.source().fetches.load(Ordering::SeqCst)
}

fn has(keys: &Keys, kid: &str) -> bool {
    keys.set.contains_kid(kid)
}

#[tokio::test]
async fn keys_in_hand_serve_without_a_fetch() {
    let (keys, clock) = keyset(&["k1"]);
    assert!(keys.current().is_none());
    assert!(has(&keys.keys_for(Some("k1")).await.unwrap(), "k1"));
    assert_eq!(fetches(&keys), 1, "the first use fetches");
    clock.advance(Duration::from_secs(60));
    for kid in [Some("k1"), None] {
        assert!(has(&keys.keys_for(kid).await.unwrap(), "k1"));
    }
    assert_eq!(fetches(&keys), 1);
}

#[tokio::test]
async fn an_unknown_kid_triggers_one_refetch_and_a_flood_of_them_no_more() {
    let (keys, clock) = keyset(&["k1"]);
    keys.keys_for(Some("k1")).await.unwrap();
    clock.advance(FRESHNESS.min_interval);
    keys.source().kids.lock().unwrap().push("k2");
    assert!(has(&keys.keys_for(Some("k2")).await.unwrap(), "k2"));
    assert_eq!(
        fetches(&keys),
        2,
        "the rotated key was fetched on first use"
    );
    // Made-up kids inside the interval: the keys in hand answer (and do
    // not know them), the source is not asked.
    clock.advance(FRESHNESS.min_interval / 2);
    for _ in 0..100 {
        let answer = keys.keys_for(Some("made-up")).await.unwrap();
        assert!(!has(&answer, "made-up"));
    }
    assert_eq!(fetches(&keys), 2);
    clock.advance(FRESHNESS.min_interval / 2);
    keys.keys_for(Some("made-up")).await.unwrap();
    assert_eq!(fetches(&keys), 3, "one more once the interval is over");
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let clock = ManualClock::at_unix(1_000_000);
    let source = Source {
        kids: Mutex::new(vec!["k1"]),
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Source::default()
    };
    let keys = Arc::new(RemoteKeySet::new(source, clock, FRESHNESS));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let keys = keys.clone();
        callers.spawn(async move { keys.keys_for(Some("k1")).await });
    }
    // The test runtime has one thread: yielding lets every caller run until
    // it waits, the first on the source, the others on its fetch.
    while fetches(&keys) == 0 || keys.attempts.try_lock().is_ok() {
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    keys.source().gate.as_ref().unwrap().add_permits(100);
    while let Some(answer) = callers.join_next().await {
        assert!(has(&answer.unwrap().unwrap(), "k1"));
    }
    assert_eq!(fetches(&keys), 1);
}

#[tokio::test]
async fn keys_older_than_max_age_are_fetched_again() {
    let (keys, clock) = keyset(&["k1"]);
    keys.keys_for(Some("k1")).await.unwrap();
    clock.advance(FRESHNESS.max_age);
    keys.keys_for(Some("k1")).await.unwrap();
    assert_eq!(fetches(&keys), 1, "not older than max_age yet");
    clock.advance(Duration::from_secs(1));
    keys.source().kids.lock().unwrap()[0] = "k2";
    let fresh = keys.keys_for(Some("k1")).await.unwrap();
    assert_eq!(fetches(&keys), 2);
    assert!(
        has(&fresh, "k2") && !has(&fresh, "k1"),
        "a dropped key goes"
    );
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys_within_max_stale_only() {
    let (keys, clock) = keyset(&["k1"]);
    keys.keys_for(Some("k1")).await.unwrap();
    *keys.source().down.lock().unwrap() = true;
    clock.advance(FRESHNESS.max_age + Duration::from_secs(1));
    assert!(
        has(&keys.keys_for(Some("k1")).await.unwrap(), "k1"),
        "stale keys bridge the outage"
    );
    assert_eq!(fetches(&keys), 2);
    // A kid they lack may be a key nobody could fetch: not the token's fault.
    clock.advance(FRESHNESS.min_interval);
    assert_eq!(
        keys.keys_for(Some("k2")).await.unwrap_err(),
        KeysUnavailable("the source is down".into())
    );
    assert_eq!(fetches(&keys), 3);
    // Inside the interval the failure is remembered, not retried.
    assert!(keys.keys_for(Some("k2")).await.is_err());
    assert!(keys.keys_for(Some("k1")).await.is_ok());
    assert_eq!(fetches(&keys), 3);
    // Past max_stale the keys vouch for nothing.
    clock.advance(FRESHNESS.max_stale);
    assert_eq!(
        keys.keys_for(Some("k1")).await.unwrap_err(),
        KeysUnavailable("the source is down".into())
    );
    // The source is back: so are the keys.
    *keys.source().down.lock().unwrap() = false;
    clock.advance(FRESHNESS.min_interval);
    assert!(keys.keys_for(Some("k1")).await.is_ok());
}

#[tokio::test]
async fn without_keys_a_failure_is_unavailable_and_refresh_ignores_the_interval() {
    let (keys, _clock) = keyset(&["k1"]);
    *keys.source().down.lock().unwrap() = true;
    assert!(keys.keys_for(None).await.is_err());
    assert_eq!(
        keys.keys_for(None).await.unwrap_err(),
        KeysUnavailable("the source is down".into()),
        "remembered inside the interval"
    );
    assert_eq!(fetches(&keys), 1);
    *keys.source().down.lock().unwrap() = false;
    assert!(has(&keys.refresh().await.unwrap(), "k1"));
    assert_eq!(fetches(&keys), 2, "refresh fetches at once");
    assert_eq!(keys.current().unwrap().issuer, "https://issuer");
}
