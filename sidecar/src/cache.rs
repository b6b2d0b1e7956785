//! Single-flight for cache misses.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

type Lock = Arc<tokio::sync::Mutex<()>>;

/// One lock per key in flight, so concurrent identical misses make one call.
pub struct SingleFlight<K: Eq + Hash + Clone> {
    locks: Mutex<HashMap<K, Lock>>,
}

/// A caller's place in the flight for one key. The key's lock is forgotten
/// when the last caller's `Flight` drops, whether its call finished or its
/// request was cancelled mid-wait.
pub struct Flight<'a, K: Eq + Hash + Clone> {
    flights: &'a SingleFlight<K>,
    key: K,
    lock: Lock,
}

impl<K: Eq + Hash + Clone> SingleFlight<K> {
    pub fn new() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the flight for `key`; hold [`Flight::lock`] while checking the
    /// cache and filling it.
    pub fn join(&self, key: &K) -> Flight<'_, K> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let lock = locks.entry(key.clone()).or_default().clone();
        Flight {
            flights: self,
            key: key.clone(),
            lock,
        }
    }

    /// Keys with a flight under way.
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash + Clone> Flight<'_, K> {
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }
}

impl<K: Eq + Hash + Clone> Drop for Flight<'_, K> {
    fn drop(&mut self) {
        let mut locks = self.flights.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are made under this mutex: the map's and ours alone mean
        // nobody else waits on or holds the lock.
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::ptr_eq(lock, &self.lock) && Arc::strong_count(lock) == 2)
        {
            locks.remove(&self.key);
        }
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
        let a = flights.join(&1);
        let b = flights.join(&1);
        let held = a.lock().await;
        assert!(b.lock.try_lock().is_err());
        drop(held);
        assert!(b.lock.try_lock().is_ok());
        assert!(flights.join(&2).lock.try_lock().is_ok());
        drop((a, b));
        assert!(flights.is_empty(), "the last caller out forgets the key");
    }

    #[tokio::test]
    async fn cancelled_waits_leave_no_entry_behind() {
        let flights: SingleFlight<u8> = SingleFlight::new();
        let first = flights.join(&1);
        let held = first.lock().await;
        // A request that waits on the flight and is cancelled (its future dropped).
        let waiting = async {
            let flight = flights.join(&1);
            let _held = flight.lock().await;
        };
        let cancelled = tokio::time::timeout(std::time::Duration::ZERO, waiting).await;
        assert!(cancelled.is_err(), "it was still waiting");
        assert_eq!(flights.len(), 1, "the holder's flight is still under way");
        // The holder itself is cancelled mid-call.
        drop(held);
        drop(first);
        assert!(flights.is_empty());
    }
}
