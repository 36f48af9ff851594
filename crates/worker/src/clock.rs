//! Time for the worker: epoch seconds (the wire's timestamps) derived from
//! tokio's monotonic clock, so that a paused test clock moves both.
//!
//! The epoch is sampled once at start; later timestamps add monotonic time to
//! it. Session deadlines are monotonic instants, and the epoch `expiration`
//! shown on the wire is computed from them, so the two never disagree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Converts between monotonic instants and epoch seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_epoch: f64,
    base_instant: Instant,
}

impl Clock {
    /// A clock anchored at the current wall-clock time.
    pub fn system() -> Self {
        let base_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Self::anchored(base_epoch)
    }

    /// A clock whose "now" is `epoch` seconds (tests).
    pub fn anchored(epoch: f64) -> Self {
        Self {
            base_epoch: epoch,
            base_instant: Instant::now(),
        }
    }

    /// The current monotonic instant.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The current time in epoch seconds.
    pub fn now_epoch(&self) -> f64 {
        self.epoch_of(Instant::now())
    }

    /// Epoch seconds of a monotonic instant.
    pub fn epoch_of(&self, instant: Instant) -> f64 {
        if instant >= self.base_instant {
            self.base_epoch + (instant - self.base_instant).as_secs_f64()
        } else {
            self.base_epoch - (self.base_instant - instant).as_secs_f64()
        }
    }

    /// Seconds elapsed since the clock was created.
    pub fn uptime(&self) -> Duration {
        Instant::now() - self.base_instant
    }
}
