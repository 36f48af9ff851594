//! Pure retry and polling delays (PROTOCOL.md §2, §7.1), with the random
//! source injected so tests can pin it.
//!
//! Owns the arithmetic only; sleeping and deciding *whether* to retry belong
//! to the callers.

use std::time::Duration;

use rand::Rng;

/// Delay before re-polling a WAITING `/route/` reply, after `attempt` polls
/// (`attempt` ≥ 1): `U(0.1, min(2^min(attempt, 20) + U(0, 1), max_poll))`
/// seconds, as the Python SDK does. The first poll waits a fixed
/// [`RetryPolicy::first_poll`](crate::RetryPolicy) instead.
pub fn poll_interval<R: Rng + ?Sized>(attempt: u32, max_poll: Duration, rng: &mut R) -> Duration {
    let upper = capped_exponential(attempt, max_poll, rng);
    let lower = 0.1_f64.min(upper);
    Duration::from_secs_f64(if upper > lower {
        rng.gen_range(lower..upper)
    } else {
        upper
    })
}

/// Delay before retrying after a retryable status or a transport error, the
/// `failures`-th in a row (`failures` ≥ 1): `min(2^min(failures, 20) + U(0, 1), max)`
/// seconds (≈ 2–3 s, 4–5 s, then `max`).
pub fn retry_delay<R: Rng + ?Sized>(failures: u32, max: Duration, rng: &mut R) -> Duration {
    Duration::from_secs_f64(capped_exponential(failures, max, rng))
}

/// Delay before attempt `attempt + 1` of a web API call (`attempt` ≥ 0 failed
/// attempts so far minus one): `min(2^attempt + U(0, 1), max)` seconds.
pub fn web_retry_delay<R: Rng + ?Sized>(attempt: u32, max: Duration, rng: &mut R) -> Duration {
    let exp = 2f64.powi(attempt.min(20) as i32) + rng.gen_range(0.0..1.0);
    Duration::from_secs_f64(exp.min(max.as_secs_f64()))
}

fn capped_exponential<R: Rng + ?Sized>(n: u32, max: Duration, rng: &mut R) -> f64 {
    let exp = 2f64.powi(n.min(20) as i32) + rng.gen_range(0.0..1.0);
    exp.min(max.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn poll_intervals_stay_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..40 {
            for _ in 0..200 {
                let d = poll_interval(attempt, MAX, &mut rng).as_secs_f64();
                let cap = (2f64.powi(attempt.min(20) as i32) + 1.0).min(5.0);
                assert!((0.1..=cap).contains(&d), "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn poll_interval_is_jittered() {
        let mut rng = StdRng::seed_from_u64(1);
        let samples: Vec<Duration> = (0..20).map(|_| poll_interval(5, MAX, &mut rng)).collect();
        assert!(samples.windows(2).any(|w| w[0] != w[1]), "{samples:?}");
    }

    #[test]
    fn retry_delays_grow_then_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        let d1 = retry_delay(1, MAX, &mut rng).as_secs_f64();
        let d2 = retry_delay(2, MAX, &mut rng).as_secs_f64();
        let d9 = retry_delay(9, MAX, &mut rng).as_secs_f64();
        assert!((2.0..3.0).contains(&d1), "{d1}");
        assert!((4.0..5.0).contains(&d2), "{d2}");
        assert_eq!(d9, 5.0);
        assert_eq!(
            retry_delay(30, Duration::from_millis(50), &mut rng),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn web_retry_delays_start_at_one_second() {
        let mut rng = StdRng::seed_from_u64(4);
        let d0 = web_retry_delay(0, MAX, &mut rng).as_secs_f64();
        assert!((1.0..2.0).contains(&d0), "{d0}");
        assert_eq!(web_retry_delay(10, MAX, &mut rng), MAX);
    }

    #[test]
    fn tiny_caps_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(poll_interval(3, Duration::ZERO, &mut rng), Duration::ZERO);
        let d = poll_interval(3, Duration::from_millis(50), &mut rng);
        assert!(d <= Duration::from_millis(50));
    }
}
