//! The engine's clock: Unix epoch seconds as `f64`, read from tokio's clock
//! so that tests which pause and advance tokio's time move the engine's time
//! with it. Everything that decides by time (routing, expiry, staleness,
//! scaling, backoff) is given `now` from here; nothing else reads the time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Epoch seconds, anchored once to the system clock and then advanced by
/// tokio's (monotonic, pausable) clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch_at_start: f64,
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock reading the system time now and tokio's clock afterwards.
    /// Under a paused tokio runtime it only moves when time is advanced.
    pub fn new() -> Self {
        Self {
            epoch_at_start: unix_now(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> f64 {
        self.epoch_at_start + self.start.elapsed().as_secs_f64()
    }
}

/// The system's Unix epoch seconds now (for display outside the engine,
/// e.g. the CLI's ages; decisions use a [`Clock`]).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let clock = Clock::new();
        let t0 = clock.now();
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        let dt = clock.now() - t0;
        assert!((dt - 90.0).abs() < 1e-6, "{dt}");
    }
}
