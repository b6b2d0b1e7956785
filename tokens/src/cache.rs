//! The one bounded cache of tokenmesh: entries expire at a time the caller
//! gives (unix seconds for tokens, the clock's monotonic time for short-lived
//! answers), and, with the `remote` feature, concurrent misses of one key
//! make one call (single flight, [`TtlCache::get_or_fill`]).
//!
//! Time is passed in, never read here: callers take it from their clock.

#[cfg(feature = "remote")]
mod flight;

use std::{collections::HashMap, hash::Hash, sync::Mutex};

#[cfg(feature = "remote")]
pub use flight::Flight;

/// Entries expire at a time of type `T`. When full, expired entries go
/// first; if that frees too little, the eighth of the entries that expire
/// soonest go too, so a full cache costs one scan per `capacity / 8` inserts
/// and keeps most of what it holds.
pub struct TtlCache<K, V, T = u64> {
    entries: Mutex<HashMap<K, (V, T)>>,
    capacity: usize,
    #[cfg(feature = "remote")]
    flights: flight::Flights<K>,
}

impl<K: Eq + Hash, V: Clone, T: Copy + Ord> TtlCache<K, V, T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
            #[cfg(feature = "remote")]
            flights: flight::Flights::default(),
        }
    }

    pub fn get(&self, key: &K, now: T) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` until `expires`; a cache of capacity 0 keeps nothing.
    pub fn insert(&self, key: K, value: V, expires: T, now: T) {
        if expires <= now || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, at)| *at > now);
            let room = (self.capacity / 8).max(1);
            let excess = (entries.len() + room).saturating_sub(self.capacity);
            if excess > 0 {
                evict_soonest(&mut entries, excess);
            }
        }
        entries.insert(key, (value, expires));
    }

    pub fn remove(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
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

/// Removes the `count` entries that expire first.
fn evict_soonest<K: Eq + Hash, V, T: Copy + Ord>(entries: &mut HashMap<K, (V, T)>, count: usize) {
    let mut expiries: Vec<T> = entries.values().map(|(_, at)| *at).collect();
    let Some(index) = count.checked_sub(1).filter(|i| *i < expiries.len()) else {
        entries.clear();
        return;
    };
    let (_, &mut cutoff, _) = expiries.select_nth_unstable(index);
    // Entries at the cutoff may outnumber what is needed; drop only enough.
    let mut at_cutoff = count - expiries[..index].iter().filter(|at| **at < cutoff).count();
    entries.retain(|_, (_, at)| {
        if *at < cutoff {
            false
        } else if *at == cutoff && at_cutoff > 0 {
            at_cutoff -= 1;
            false
        } else {
            true
        }
    });
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
        cache.insert(4, "d", 20, 6); // full of live entries: the soonest (1) goes
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&1, 6), None);
        assert_eq!(cache.get(&3, 6), Some("c"));
        assert_eq!(cache.get(&4, 6), Some("d"));
        cache.insert(5, "e", 3, 6);
        assert_eq!(
            cache.get(&5, 6),
            None,
            "already expired entries are not kept"
        );
    }

    #[test]
    fn a_cache_of_capacity_zero_keeps_nothing() {
        let cache = TtlCache::new(0);
        cache.insert(1, "a", 10, 0);
        cache.insert(2, "b", 10, 0);
        assert!(cache.is_empty());
        assert_eq!(cache.get(&1, 0), None);
    }

    #[test]
    fn a_full_cache_evicts_an_eighth_that_expires_soonest_and_keeps_the_rest() {
        let cache = TtlCache::new(64);
        for key in 0..64u64 {
            cache.insert(key, key, 1_000 + key, 0);
        }
        cache.insert(64, 64, 5_000, 0);
        assert_eq!(cache.len(), 64 - 8 + 1);
        assert!((0..8).all(|key| cache.get(&key, 0).is_none()));
        assert!((8..=64).all(|key| cache.get(&key, 0) == Some(key)));
        // Replacing a key already present evicts nothing.
        for key in 65..72 {
            cache.insert(key, key, 5_000, 0);
        }
        cache.insert(64, 0, 6_000, 0);
        assert_eq!(cache.len(), 64);
        assert_eq!(cache.get(&8, 0), Some(8));
    }

    #[test]
    fn ties_at_the_cutoff_evict_only_what_is_needed() {
        let cache = TtlCache::new(16);
        for key in 0..16u64 {
            cache.insert(key, (), 100, 0);
        }
        cache.insert(99, (), 100, 0);
        assert_eq!(cache.len(), 16 - 2 + 1);
    }
}
