//! Single-flight for cache misses.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

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
