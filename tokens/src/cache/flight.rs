//! Single flight for cache misses: one lock per key in flight, so
//! concurrent identical misses make one call.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
};

use super::TtlCache;

type Lock = Arc<tokio::sync::Mutex<()>>;

pub(super) struct Flights<K> {
    locks: Mutex<HashMap<K, Lock>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

/// A caller's place in the flight for one key. The key's lock is forgotten
/// when the last caller's `Flight` drops, whether its call finished or its
/// request was cancelled mid-wait.
pub struct Flight<'a, K: Eq + Hash + Clone> {
    flights: &'a Flights<K>,
    key: K,
    lock: Lock,
}

impl<K: Eq + Hash + Clone> Flight<'_, K> {
    /// Hold it while checking the cache and filling it.
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

impl<K: Eq + Hash + Clone, V: Clone, T: Copy + Ord> TtlCache<K, V, T> {
    /// Joins the flight for `key`, for callers that check a hit themselves
    /// before they take it; [`Self::get_or_fill`] does the rest.
    pub fn flight(&self, key: &K) -> Flight<'_, K> {
        let mut locks = self.flights.locks.lock().unwrap_or_else(|e| e.into_inner());
        let lock = locks.entry(key.clone()).or_default().clone();
        Flight {
            flights: &self.flights,
            key: key.clone(),
            lock,
        }
    }

    /// Keys with a flight under way.
    pub fn flights(&self) -> usize {
        self.flights
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The entry for `key`, else what `fill` makes: called once for all the
    /// callers that miss `key` at the same time (the others wait, then read
    /// what it left). `fill` answers the value and until when to keep it
    /// (`None`: not kept); its error is passed on and not kept.
    pub async fn get_or_fill<E, F, Fut>(&self, key: &K, now: T, fill: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Option<T>), E>>,
    {
        if let Some(hit) = self.get(key, now) {
            return Ok(hit);
        }
        let flight = self.flight(key);
        let _held = flight.lock().await;
        if let Some(hit) = self.get(key, now) {
            return Ok(hit);
        }
        let (value, until) = fill().await?;
        if let Some(until) = until {
            self.insert(key.clone(), value.clone(), until, now);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use crate::clock::{Clock, ManualClock};

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_make_one_call_and_its_answer_expires() {
        let clock = ManualClock::at_unix(1_000);
        let cache: Arc<TtlCache<&str, u32>> = Arc::new(TtlCache::new(16));
        let (calls, gate) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
            let now = clock.unix();
            callers.spawn(async move {
                cache
                    .get_or_fill(&"k", now, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _open = gate.acquire().await.map_err(|_| "closed")?;
                        Ok::<_, &str>((7, Some(now + 5)))
                    })
                    .await
            });
        }
        // One thread: yielding runs every caller until it waits, the
        // first in `fill`, the others on its flight.
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        while let Some(answer) = callers.join_next().await {
            assert_eq!(answer.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.flights(), 0, "the last caller out forgets the key");

        clock.advance(Duration::from_secs(4));
        let again = cache.get_or_fill(&"k", clock.unix(), || async { Ok::<_, ()>((8, None)) });
        assert_eq!(again.await, Ok(7), "still kept");
        clock.advance(Duration::from_secs(1));
        let again = cache.get_or_fill(&"k", clock.unix(), || async { Ok::<_, ()>((8, None)) });
        assert_eq!(again.await, Ok(8), "expired: filled again");
        let again = cache.get_or_fill(&"k", clock.unix(), || async { Ok::<_, ()>((9, None)) });
        assert_eq!(again.await, Ok(9), "an answer kept for no time is not kept");
        let failed = cache.get_or_fill(&"k", clock.unix(), || async { Err::<(u32, _), _>("down") });
        assert_eq!(failed.await, Err("down"));
        assert_eq!(cache.get(&"k", clock.unix()), None, "errors are not kept");
    }

    #[tokio::test]
    async fn a_flight_serialises_one_key() {
        let cache: TtlCache<u8, ()> = TtlCache::new(4);
        let a = cache.flight(&1);
        let b = cache.flight(&1);
        let held = a.lock().await;
        assert!(b.lock.try_lock().is_err());
        drop(held);
        assert!(b.lock.try_lock().is_ok());
        assert!(cache.flight(&2).lock.try_lock().is_ok());
        drop((a, b));
        assert_eq!(cache.flights(), 0, "the last caller out forgets the key");
    }

    #[tokio::test]
    async fn cancelled_waits_leave_no_entry_behind() {
        let cache: TtlCache<u8, ()> = TtlCache::new(4);
        let first = cache.flight(&1);
        let held = first.lock().await;
        // A request that waits on the flight and is cancelled (its future dropped).
        let waiting = async {
            let flight = cache.flight(&1);
            let _held = flight.lock().await;
        };
        let cancelled = tokio::time::timeout(std::time::Duration::ZERO, waiting).await;
        assert!(cancelled.is_err(), "it was still waiting");
        assert_eq!(cache.flights(), 1, "the holder's flight is still under way");
        // The holder itself is cancelled mid-call.
        drop(held);
        drop(first);
        assert_eq!(cache.flights(), 0);
    }
}
