//! A key set fetched from elsewhere (the token server's JWKS for a sidecar,
//! the cluster's service-account keys for the token server), cached under
//! one rule:
//!
//! 1. The keys in hand serve while they are younger than `max_age`.
//! 2. A token naming a `kid` they lack, or keys older than `max_age` (or
//!    none yet), calls for a fetch; at most one starts per `min_interval`
//!    (counted from the last attempt, whatever its outcome), so a flood of
//!    made-up kids costs the source one request per interval. Callers that
//!    ask while a fetch is under way wait for it and share its outcome
//!    (single flight). A token without a `kid` is checked against the keys
//!    in hand.
//! 3. When no fetch is allowed or it fails, the last good keys keep serving
//!    while they are younger than `max_stale`, so an outage of the source is
//!    bridged for a while, but a key it dropped stops verifying at some
//!    point. A `kid` they lack is then [`KeysUnavailable`], not an unknown
//!    key: the source may have a new key nobody could fetch.
//!
//! [`RemoteKeySet::refresh`] fetches at once, ignoring `min_interval` (at
//! start, with the caller's own backoff). Ages are read from the injected
//! clock's monotonic time.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;

use crate::{clock::SharedClock, verify::KeySet};

/// Keys an issuer publishes, as one fetch found them.
#[derive(Debug, Default)]
pub struct Keys {
    /// The issuer the source names (the token server's, or the one OIDC
    /// discovery names).
    pub issuer: String,
    pub set: KeySet,
}

/// Gets the current keys from their source. Its error is only shown (logs,
/// messages), so it must name no secret.
pub trait FetchKeys: Send + Sync {
    type Error: std::fmt::Display + Send;

    fn fetch(&self) -> impl Future<Output = Result<Keys, Self::Error>> + Send;
}

/// The source cannot be asked, or answered wrongly, and the keys in hand
/// cannot answer for the token. Not the token's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeysUnavailable(pub String);

/// The bounds of the rule in the module header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub min_interval: Duration,
    pub max_age: Duration,
    pub max_stale: Duration,
}

impl Default for Freshness {
    /// Fetched again hourly or on an unknown kid at most every 10 s;
    /// bridges a day of outage.
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(3600),
            max_stale: Duration::from_secs(24 * 3600),
        }
    }
}

struct Fetched {
    keys: Arc<Keys>,
    at: Instant,
}

#[derive(Default)]
struct Attempts {
    last: Option<Instant>,
    /// Why the last attempt failed; `None` after a success.
    error: Option<String>,
}

pub struct RemoteKeySet<F> {
    source: F,
    clock: SharedClock,
    freshness: Freshness,
    fetched: ArcSwapOption<Fetched>,
    /// Held while fetching: one fetch at a time, and its rate limit.
    attempts: tokio::sync::Mutex<Attempts>,
    /// Attempts finished, so a caller that waited on the lock knows whether
    /// one ended meanwhile (and shares its outcome instead of fetching).
    finished: AtomicU64,
}

impl<F: FetchKeys> RemoteKeySet<F> {
    pub fn new(source: F, clock: SharedClock, freshness: Freshness) -> Self {
        Self {
            source,
            clock,
            freshness,
            fetched: ArcSwapOption::empty(),
            attempts: tokio::sync::Mutex::new(Attempts::default()),
            finished: AtomicU64::new(0),
        }
    }

    pub fn source(&self) -> &F {
        &self.source
    }

    /// The keys in hand, whatever their age (none before the first fetch).
    pub fn current(&self) -> Option<Arc<Keys>> {
        self.fetched.load().as_ref().map(|f| f.keys.clone())
    }

    /// The keys to verify a token whose header names `kid`, fetched first
    /// when the rule calls for it.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<Keys>, KeysUnavailable> {
        let seen = self.finished.load(Ordering::Acquire);
        if let Some(fetched) = self.fetched.load_full()
            && self.age(&fetched) <= self.freshness.max_age
            && kid.is_none_or(|kid| fetched.keys.set.contains_kid(kid))
        {
            return Ok(fetched.keys.clone());
        }
        self.fetch(seen, kid, true).await
    }

    /// Fetches now, unless a fetch ended while this one waited its turn.
    pub async fn refresh(&self) -> Result<Arc<Keys>, KeysUnavailable> {
        let seen = self.finished.load(Ordering::Acquire);
        self.fetch(seen, None, false).await
    }

    fn age(&self, fetched: &Fetched) -> Duration {
        self.clock.instant().saturating_duration_since(fetched.at)
    }

    async fn fetch(
        &self,
        seen: u64,
        kid: Option<&str>,
        limited: bool,
    ) -> Result<Arc<Keys>, KeysUnavailable> {
        let mut attempts = self.attempts.lock().await;
        let now = self.clock.instant();
        let shared = self.finished.load(Ordering::Acquire) != seen;
        let too_soon = limited
            && attempts
                .last
                .is_some_and(|at| now.saturating_duration_since(at) < self.freshness.min_interval);
        if !shared && !too_soon {
            attempts.last = Some(now);
            let outcome = self.source.fetch().await;
            attempts.error = match outcome {
                Ok(keys) => {
                    let at = self.clock.instant();
                    self.fetched.store(Some(Arc::new(Fetched {
                        keys: Arc::new(keys),
                        at,
                    })));
                    None
                }
                Err(err) => Some(err.to_string()),
            };
            self.finished.fetch_add(1, Ordering::Release);
        }
        self.in_hand(&attempts, kid)
    }

    /// What the keys in hand answer after the last attempt (rule 3).
    fn in_hand(
        &self,
        attempts: &Attempts,
        kid: Option<&str>,
    ) -> Result<Arc<Keys>, KeysUnavailable> {
        let why = || {
            KeysUnavailable(
                attempts
                    .error
                    .clone()
                    .unwrap_or_else(|| "no keys fetched yet".into()),
            )
        };
        let fetched = self.fetched.load_full().ok_or_else(why)?;
        if self.age(&fetched) > self.freshness.max_stale {
            return Err(why());
        }
        let lacks_kid = kid.is_some_and(|kid| !fetched.keys.set.contains_kid(kid));
        if lacks_kid && attempts.error.is_some() {
            return Err(why());
        }
        Ok(fetched.keys.clone())
    }
}

/// The `kid` a JWT's header names, unverified: only to pick its keys.
pub fn unverified_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

#[cfg(test)]
mod tests;
