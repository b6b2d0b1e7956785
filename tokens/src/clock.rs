//! The one place tokenmesh reads the time.
//!
//! Domain code takes a [`Clock`] instead of calling `SystemTime::now` or
//! `Instant::now` (clippy's `disallowed-methods` refuses those elsewhere), so
//! expiry, staleness and rate limits are tested by moving a [`ManualClock`]
//! rather than by sleeping.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Wall time for what other parties read (`exp`, `iat`, `nbf`, expiry
/// columns), monotonic time for intervals measured here (staleness, rate
/// limits, elapsed time).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Wall time.
    fn now(&self) -> SystemTime;

    /// Monotonic time.
    fn instant(&self) -> Instant;

    /// Wall time as whole seconds since the Unix epoch (0 before it).
    fn unix(&self) -> u64 {
        unix_seconds(self.now())
    }
}

/// A clock shared by the parts of one process.
pub type SharedClock = Arc<dyn Clock>;

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

#[allow(clippy::disallowed_methods)] // the one implementation that may read them
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests. Both of its times advance
/// together.
#[derive(Debug)]
pub struct ManualClock {
    wall: SystemTime,
    monotonic: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at `unix` seconds since the epoch.
    #[allow(clippy::disallowed_methods)] // an `Instant` can only be had from the system
    pub fn at_unix(unix: u64) -> Arc<Self> {
        Arc::new(Self {
            wall: UNIX_EPOCH + Duration::from_secs(unix),
            monotonic: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    /// A clock standing at the system's time now.
    pub fn starting_now() -> Arc<Self> {
        Self::at_unix(SystemClock.unix())
    }

    /// Moves both times forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.wall + self.elapsed()
    }

    fn instant(&self) -> Instant {
        self.monotonic + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_times_only_when_advanced() {
        let clock = ManualClock::at_unix(1_000);
        let started = clock.instant();
        assert_eq!(clock.unix(), 1_000);
        assert_eq!(clock.instant(), started);

        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.unix(), 1_090);
        assert_eq!(clock.instant() - started, Duration::from_secs(90));
    }

    #[test]
    fn times_before_the_epoch_read_as_zero() {
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn the_system_clock_reads_the_present() {
        // Any date after this code was written.
        assert!(SystemClock.unix() > 1_700_000_000);
    }
}
