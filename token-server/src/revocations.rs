//! Revocations kept in memory, so checking a JWT costs no store round trip.
//! Filled from the store at start, by this replica's own revocations at once,
//! and by the sync with the store (other replicas) every 250 ms. When the
//! sync has not succeeded lately the store is asked instead, so a replica cut
//! off from it never answers from stale knowledge.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::store::{Store, StoreResult};

/// How old the last successful sync may be before the store is asked directly.
const FRESH: Duration = Duration::from_secs(2);
const BATCH: u32 = 5_000;

pub struct Revocations {
    ids: RwLock<HashMap<String, u64>>,
    cursor: AtomicI64,
    started: Instant,
    /// Milliseconds since `started` of the last successful sync.
    synced_at: AtomicU64,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Self {
        Self {
            ids: RwLock::new(HashMap::new()),
            cursor: AtomicI64::new(0),
            started: Instant::now(),
            synced_at: AtomicU64::new(0),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Reads every revocation after the cursor from the store.
    pub async fn sync(&self, store: &dyn Store) -> StoreResult<()> {
        loop {
            let batch = store
                .revocations_after(self.cursor.load(Ordering::Acquire), BATCH)
                .await?;
            let full = batch.len() == BATCH as usize;
            if let Some(last) = batch.last() {
                self.cursor.fetch_max(last.seq, Ordering::AcqRel);
            }
            {
                let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
                for revocation in batch {
                    ids.insert(revocation.id, revocation.expires_at);
                }
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
    pub fn add(&self, id: &str, expires_at: u64) {
        self.ids
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), expires_at);
    }

    /// Whether the token `jti` or its grant is revoked.
    pub async fn is_revoked(
        &self,
        store: &dyn Store,
        jti: &str,
        grant_id: Option<&str>,
    ) -> StoreResult<bool> {
        let synced = self.synced_at.load(Ordering::Acquire);
        if synced == 0 || self.elapsed_ms().saturating_sub(synced) > FRESH.as_millis() as u64 {
            return store.is_revoked(jti, grant_id).await;
        }
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        Ok(ids.contains_key(jti) || grant_id.is_some_and(|g| ids.contains_key(g)))
    }

    /// Forgets revocations whose tokens have all expired.
    pub fn purge(&self, now: u64) {
        self.ids
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until >= now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RevocationKind, SqliteStore};

    #[tokio::test]
    async fn memory_follows_the_store_and_falls_back_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store.revoke(RevocationKind::Token, "a", 100).await.unwrap();
        let revocations = Revocations::new();
        // Never synced: the store answers.
        assert!(revocations.is_revoked(&store, "a", None).await.unwrap());
        revocations.sync(&store).await.unwrap();
        store.revoke(RevocationKind::Grant, "g", 100).await.unwrap();
        // Synced: memory answers, and does not know `g` until the next sync.
        assert!(revocations.is_revoked(&store, "a", None).await.unwrap());
        assert!(
            !revocations
                .is_revoked(&store, "x", Some("g"))
                .await
                .unwrap()
        );
        revocations.sync(&store).await.unwrap();
        assert!(
            revocations
                .is_revoked(&store, "x", Some("g"))
                .await
                .unwrap()
        );
        revocations.add("b", 50);
        assert!(revocations.is_revoked(&store, "b", None).await.unwrap());
        revocations.purge(60);
        assert!(!revocations.is_revoked(&store, "b", None).await.unwrap());
        assert!(revocations.is_revoked(&store, "a", None).await.unwrap());
    }
}
