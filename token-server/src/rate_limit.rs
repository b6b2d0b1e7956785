//! Per-client token buckets, for what one client must not do in bulk
//! (revocations: each one reaches every sidecar and stays in its memory
//! until the token would have expired).
//!
//! Keys are authenticated client ids, so there are at most as many buckets
//! as clients; buckets that refilled are forgotten when the map grows.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Buckets kept before full ones are forgotten.
const PRUNE_AT: usize = 4_096;

pub struct RateLimiter {
    /// Tokens added per second; 0 turns the limit off.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` per second on average, up to `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`; `Err` carries how long until the
    /// next one (for `Retry-After`).
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key) {
            buckets.retain(|_, b| self.refilled(b, now) < self.burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use tokenmesh_tokens::clock::{Clock, ManualClock};

    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = ManualClock::starting_now().instant();
        for _ in 0..3 {
            assert_eq!(limiter.take("a", t0), Ok(()));
        }
        let wait = limiter.take("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(limiter.take("b", t0), Ok(()), "buckets are per client");
        let later = t0 + Duration::from_millis(500);
        assert_eq!(limiter.take("a", later), Ok(()));
        assert!(limiter.take("a", later).is_err());
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let limiter = RateLimiter::new(0.0, 1);
        let now = ManualClock::starting_now().instant();
        assert!((0..100).all(|_| limiter.take("a", now).is_ok()));
    }

    #[test]
    fn full_buckets_are_forgotten_when_the_map_grows() {
        let limiter = RateLimiter::new(1.0, 1);
        let t0 = ManualClock::starting_now().instant();
        for n in 0..PRUNE_AT {
            assert!(limiter.take(&n.to_string(), t0).is_ok());
        }
        let refilled = t0 + Duration::from_secs(2);
        assert!(limiter.take("new", refilled).is_ok());
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
