//! Revocations kept in memory, so checking a JWT costs no store round trip.
//! Filled from the store at start, by this replica's own revocations at once,
//! and by the sync with the store (other replicas) every 250 ms. When the
//! sync has not succeeded lately the store is asked instead, so a replica cut
//! off from it never answers from stale knowledge. At most `--max-revocations`
//! ids are kept (ordered by expiry, see `RevokedSet`); past that, a token that
//! may concern a dropped one is checked in the store.

use std::{
    sync::{
        RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokenmesh_tokens::{clock::SharedClock, revoked::RevokedSet};

use crate::store::{Store, StoreResult};

/// How old the last successful sync may be before the store is asked directly.
const FRESH: Duration = Duration::from_secs(2);
const BATCH: u32 = 5_000;

/// The ids and the store's sequence number they reach, changed together.
struct Known {
    set: RevokedSet,
    cursor: i64,
}

pub struct Revocations {
    known: RwLock<Known>,
    clock: SharedClock,
    started: Instant,
    /// Milliseconds since `started` of the last successful sync.
    synced_at: AtomicU64,
    /// Whether the full memory was logged (once: a flood would repeat it).
    full_warned: AtomicBool,
}

impl Revocations {
    /// Keeps at most `capacity` ids in memory (`--max-revocations`); past
    /// that, tokens that may concern a dropped one are checked in the store.
    pub fn new(capacity: usize, clock: SharedClock) -> Self {
        Self {
            started: clock.instant(),
            clock,
            known: RwLock::new(Known {
                set: RevokedSet::new(capacity),
                cursor: 0,
            }),
            synced_at: AtomicU64::new(0),
            full_warned: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        let elapsed = self.clock.instant().saturating_duration_since(self.started);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Reads every revocation after the cursor from the store.
    pub async fn sync(&self, store: &dyn Store, now: u64) -> StoreResult<()> {
        loop {
            let cursor = self.known.read().unwrap_or_else(|e| e.into_inner()).cursor;
            let batch = store.revocations_after(cursor, BATCH).await?;
            let full = batch.len() == BATCH as usize;
            let dropped = {
                let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
                let mut dropped = 0;
                for revocation in &batch {
                    dropped += known
                        .set
                        .insert(&revocation.id, revocation.expires_at, now)
                        .dropped;
                    known.cursor = known.cursor.max(revocation.seq);
                }
                dropped
            };
            if dropped > 0 && !self.full_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    dropped,
                    "--max-revocations reached: tokens that may concern the dropped revocations are checked in the store"
                );
            }
            if !full {
                break;
            }
        }
        self.synced_at
            .store(self.elapsed_ms().max(1), Ordering::Release);
        Ok(())
    }

    /// Records a revocation this replica just stored.
    pub fn add(&self, id: &str, expires_at: u64, now: u64) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .insert(id, expires_at, now);
    }

    /// Whether the token `jti` (expiring at `exp`) or its grant is revoked.
    pub async fn is_revoked(
        &self,
        store: &dyn Store,
        jti: &str,
        grant_id: Option<&str>,
        client_id: &str,
        exp: u64,
    ) -> StoreResult<bool> {
        let synced = self.synced_at.load(Ordering::Acquire);
        if synced == 0 || self.elapsed_ms().saturating_sub(synced) > FRESH.as_millis() as u64 {
            return store.is_revoked(jti, grant_id, client_id).await;
        }
        let (revoked, maybe_dropped) = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            (
                known.set.revokes(jti, grant_id, client_id),
                known.set.may_have_dropped(exp),
            )
        };
        // Not in memory, but it may have been dropped from it: the store knows.
        if !revoked && maybe_dropped {
            return store.is_revoked(jti, grant_id, client_id).await;
        }
        Ok(revoked)
    }

    /// Forgets revocations whose tokens have all expired.
    pub fn purge(&self, now: u64) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .purge(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RevocationKind, SqliteStore};

    /// Whether a token `jti` of no grant, expiring at `exp`, counts as revoked.
    async fn revoked(revocations: &Revocations, store: &SqliteStore, jti: &str, exp: u64) -> bool {
        revocations
            .is_revoked(store, jti, None, "c", exp)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn memory_follows_the_store_and_falls_back_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store.revoke(RevocationKind::Token, "a", 100).await.unwrap();
        let revocations = Revocations::new(100, tokenmesh_tokens::clock::SystemClock::shared());
        // Never synced: the store answers.
        assert!(revoked(&revocations, &store, "a", 100).await);
        revocations.sync(&store, 0).await.unwrap();
        store.revoke(RevocationKind::Grant, "g", 100).await.unwrap();
        // Synced: memory answers, and does not know `g` until the next sync.
        assert!(revoked(&revocations, &store, "a", 100).await);
        assert!(
            !revocations
                .is_revoked(&store, "x", Some("g"), "c", 100)
                .await
                .unwrap()
        );
        revocations.sync(&store, 0).await.unwrap();
        assert!(
            revocations
                .is_revoked(&store, "x", Some("g"), "c", 100)
                .await
                .unwrap()
        );
        revocations.add("b", 50, 0);
        assert!(revoked(&revocations, &store, "b", 50).await);
        revocations.purge(60);
        assert!(!revoked(&revocations, &store, "b", 50).await);
        assert!(revoked(&revocations, &store, "a", 100).await);
    }

    #[tokio::test]
    async fn past_the_memory_limit_the_store_answers_for_tokens_that_may_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        for (id, until) in [("a", 100), ("b", 200), ("c", 300)] {
            store
                .revoke(RevocationKind::Token, id, until)
                .await
                .unwrap();
        }
        let revocations = Revocations::new(2, tokenmesh_tokens::clock::SystemClock::shared());
        revocations.sync(&store, 0).await.unwrap();
        assert_eq!(revocations.known.read().unwrap().set.len(), 2);
        // `a` left memory; the store still says so.
        assert!(revoked(&revocations, &store, "a", 100).await);
        assert!(!revoked(&revocations, &store, "z", 100).await);
        assert!(revoked(&revocations, &store, "c", 300).await);
        assert!(!revoked(&revocations, &store, "z", 400).await);
    }
}
