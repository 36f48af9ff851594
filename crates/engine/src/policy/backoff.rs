//! Spawn backoff: after consecutive worker launches that fail before the
//! worker ever becomes `IDLE` (the command cannot start, exits, reports an
//! error or stays silent), the next launch of the endpoint waits 1 s, then
//! 2 s, 4 s, … up to 60 s. A worker reaching `IDLE` resets it.
//!
//! Owns only the arithmetic; the runtime records failures and successes and
//! holds back `Create`/`Start` actions while [`SpawnBackoff::allows`] is
//! false. Times are epoch seconds passed in.

use serde::Serialize;

/// Delay after the first failure, in seconds.
pub const BACKOFF_INITIAL: f64 = 1.0;
/// Longest delay, in seconds.
pub const BACKOFF_MAX: f64 = 60.0;

/// Consecutive launch failures of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SpawnBackoff {
    /// Launches that failed in a row.
    failures: u32,
    /// When the last of them failed.
    last_failure: Option<f64>,
}

impl SpawnBackoff {
    /// No failure yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A launch failed at `now`.
    pub fn record_failure(&mut self, now: f64) {
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(match self.last_failure {
            Some(last) if last > now => last,
            _ => now,
        });
    }

    /// A worker became `IDLE`: launches work again. Returns whether a
    /// backoff was in force.
    pub fn reset(&mut self) -> bool {
        let was = self.failures > 0;
        *self = Self::default();
        was
    }

    /// Consecutive failures.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the last failure happened.
    pub fn last_failure(&self) -> Option<f64> {
        self.last_failure
    }

    /// Seconds to wait after the last failure: 0 without failures, else
    /// `BACKOFF_INITIAL × 2^(failures − 1)`, at most [`BACKOFF_MAX`].
    pub fn delay(&self) -> f64 {
        if self.failures == 0 {
            return 0.0;
        }
        let doublings = (self.failures - 1).min(16) as i32;
        (BACKOFF_INITIAL * 2f64.powi(doublings)).min(BACKOFF_MAX)
    }

    /// Earliest time of the next launch, if held back at all.
    pub fn retry_at(&self) -> Option<f64> {
        self.last_failure.map(|last| last + self.delay())
    }

    /// Whether a launch may happen at `now`.
    pub fn allows(&self, now: f64) -> bool {
        self.retry_at().is_none_or(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap_and_resets() {
        let mut b = SpawnBackoff::new();
        assert!(b.allows(0.0));
        assert_eq!(b.delay(), 0.0);
        assert_eq!(b.retry_at(), None);
        let mut delays = Vec::new();
        for i in 0..10 {
            b.record_failure(100.0 + i as f64);
            delays.push(b.delay());
        }
        assert_eq!(
            delays,
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
        );
        assert_eq!(b.failures(), 10);
        assert_eq!(b.retry_at(), Some(109.0 + 60.0));
        assert!(!b.allows(168.9));
        assert!(b.allows(169.0));
        assert!(b.reset());
        assert!(!b.reset());
        assert!(b.allows(0.0));
    }

    #[test]
    fn next_attempt_is_scheduled_later_after_each_failure() {
        let mut b = SpawnBackoff::new();
        let mut t = 0.0;
        let mut last_wait = 0.0;
        for _ in 0..8 {
            b.record_failure(t);
            let at = b.retry_at().unwrap();
            assert!(!b.allows(t));
            assert!(at - t >= last_wait);
            last_wait = at - t;
            t = at;
        }
        // Huge failure counts do not overflow.
        for _ in 0..100 {
            b.record_failure(t);
        }
        assert_eq!(b.delay(), BACKOFF_MAX);
    }
}
