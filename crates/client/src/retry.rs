//! The SDK's one retry policy: the schedules of delays between attempts
//! (PROTOCOL.md §2, §7.1), as iterators that `backon` drives.
//!
//! Owns the schedules only. `backon` runs the loops (`Retryable::retry` with
//! `when`, `notify` and tokio's sleep, so tests can pause the clock); the
//! delay arithmetic stays in [`crate::backoff`] because the SDK's jitter is
//! additive (`2^n + U(0, 1)` seconds, then capped), which `backon`'s
//! builders cannot express: their jitter is a random fraction of the delay.
//! Any `Iterator<Item = Duration>` is a `backon` backoff, so these schedules
//! plug straight in.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::backoff;

/// Which formula a [`Schedule`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Web API helper (§2): before attempt `n + 1`, `min(2^(n-1) + U(0, 1), max)`
    /// seconds, i.e. 1–2 s, 2–3 s, 4–5 s, then `max`.
    Web,
    /// Worker and route-service retries (§7.1): after the `n`-th failure,
    /// `min(2^n + U(0, 1), max)` seconds, i.e. 2–3 s, 4–5 s, then `max`.
    Worker,
}

/// A finite or endless sequence of jittered delays between attempts; each
/// `next()` is the sleep before the following attempt, `None` when no
/// attempt is left.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    kind: Kind,
    /// Delays handed out so far.
    given: u32,
    /// Delays allowed in total (attempts − 1), `None` for endless.
    limit: Option<u32>,
    max: Duration,
    rng: StdRng,
}

impl Schedule {
    fn new(kind: Kind, attempts: Option<u32>, max: Duration) -> Self {
        Self {
            kind,
            given: 0,
            limit: attempts.map(|a| a.max(1) - 1),
            max,
            rng: StdRng::from_entropy(),
        }
    }

    /// The same schedule with a fixed random source (tests).
    #[cfg(test)]
    fn seeded(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.limit.is_some_and(|limit| self.given >= limit) {
            return None;
        }
        let n = self.given;
        self.given = self.given.saturating_add(1);
        Some(match self.kind {
            Kind::Web => backoff::web_retry_delay(n, self.max, &mut self.rng),
            Kind::Worker => backoff::retry_delay(n + 1, self.max, &mut self.rng),
        })
    }
}

/// Web API calls: `attempts` in total (at least 1), delays capped at `max`.
pub(crate) fn web(attempts: u32, max: Duration) -> Schedule {
    Schedule::new(Kind::Web, Some(attempts), max)
}

/// Calls to workers and `/route/`: `attempts` in total (`None`: endless),
/// delays capped at `max`.
pub(crate) fn worker(attempts: Option<u32>, max: Duration) -> Schedule {
    Schedule::new(Kind::Worker, attempts, max)
}

/// Retries of a failed lease renewal: endless, capped at `max`.
pub(crate) fn session_backoff(max: Duration) -> Schedule {
    worker(None, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(5);

    fn secs(schedule: Schedule) -> Vec<f64> {
        schedule.map(|d| d.as_secs_f64()).collect()
    }

    #[test]
    fn web_schedule_matches_the_python_helper() {
        // 5 attempts: 4 sleeps of min(2^n + U(0,1), 5) for n = 0..3.
        let delays = secs(web(5, MAX).seeded(1));
        assert_eq!(delays.len(), 4, "{delays:?}");
        for (n, (d, (lo, hi))) in delays
            .iter()
            .zip([(1.0, 2.0), (2.0, 3.0), (4.0, 5.0), (5.0, 5.0)])
            .enumerate()
        {
            assert!((lo..=hi).contains(d), "sleep {n}: {d}");
        }
        assert!(secs(web(1, MAX)).is_empty());
        assert!(secs(web(0, MAX)).is_empty(), "0 attempts is one attempt");
    }

    #[test]
    fn worker_schedule_matches_section_7_1() {
        let delays = secs(worker(Some(4), MAX).seeded(2));
        assert_eq!(delays.len(), 3, "{delays:?}");
        assert!((2.0..3.0).contains(&delays[0]), "{delays:?}");
        assert!((4.0..5.0).contains(&delays[1]), "{delays:?}");
        assert_eq!(delays[2], 5.0);
        let endless: Vec<Duration> = worker(None, MAX).take(100).collect();
        assert_eq!(endless.len(), 100);
        assert!(endless[10..].iter().all(|d| *d == MAX));
    }

    #[test]
    fn jitter_differs_between_schedules() {
        let a = secs(web(3, MAX).seeded(3));
        let b = secs(web(3, MAX).seeded(4));
        assert_ne!(a, b);
    }

    #[test]
    fn caps_below_a_second_hold() {
        let cap = Duration::from_millis(50);
        assert!(worker(Some(10), cap).all(|d| d == cap));
        assert!(web(10, cap).all(|d| d == cap));
    }

    #[tokio::test(start_paused = true)]
    async fn backon_drives_the_schedule_on_the_paused_clock() {
        use backon::Retryable as _;
        let started = tokio::time::Instant::now();
        let mut calls = 0u32;
        let outcome: Result<(), u32> = (|| {
            calls += 1;
            let n = calls;
            async move { Err(n) }
        })
        .retry(worker(Some(3), MAX).seeded(5))
        .await;
        assert_eq!(outcome, Err(3), "the last error is returned");
        let waited = started.elapsed().as_secs_f64();
        // 2–3 s then 4–5 s.
        assert!((6.0..8.0).contains(&waited), "{waited}");
    }
}
