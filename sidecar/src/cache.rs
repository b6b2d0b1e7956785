//! A bounded cache whose entries expire, and single-flight for misses.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

/// Entries expire at a unix time; when full, expired entries go first, then
/// everything (a cache that refills is better than one that grows).
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, u64)>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn get(&self, key: &K, now: u64) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone())
    }

    pub fn insert(&self, key: K, value: V, expires: u64, now: u64) {
        if expires <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, at)| *at > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, expires));
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One lock per key in flight, so concurrent identical misses make one call.
pub struct SingleFlight<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> SingleFlight<K> {
    pub fn new() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The lock for `key`; hold it while checking the cache and filling it.
    pub fn lock_for(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    /// Forgets the lock once the call is done.
    pub fn done(&self, key: &K) {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

impl<K: Eq + Hash + Clone> Default for SingleFlight<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = TtlCache::new(2);
        cache.insert(1, "a", 10, 0);
        assert_eq!(cache.get(&1, 9), Some("a"));
        assert_eq!(cache.get(&1, 10), None);
        cache.insert(2, "b", 5, 0);
        cache.insert(3, "c", 20, 6); // full: the expired 2 goes
        assert_eq!(cache.get(&1, 6), Some("a"));
        assert_eq!(cache.get(&3, 6), Some("c"));
        cache.insert(4, "d", 20, 6); // full of live entries: cleared
        assert_eq!(cache.len(), 1);
        cache.insert(5, "e", 3, 6);
        assert_eq!(
            cache.get(&5, 6),
            None,
            "already expired entries are not kept"
        );
    }

    #[tokio::test]
    async fn single_flight_serialises_one_key() {
        let flights: SingleFlight<u8> = SingleFlight::new();
        let a = flights.lock_for(&1);
        let b = flights.lock_for(&1);
        let held = a.lock().await;
        assert!(b.try_lock().is_err());
        drop(held);
        assert!(b.try_lock().is_ok());
        assert!(flights.lock_for(&2).try_lock().is_ok());
    }
}
