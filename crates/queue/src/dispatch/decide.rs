//! The dispatcher's pure decisions: how many sessions to open for the
//! counts just read ([`decide`]), and how long to wait before asking again
//! after sessions failed to start ([`backoff_delay`]).
//!
//! Counting rule: the target is `min(max, backlog + in_flight)`, and every
//! session counts from the moment it is requested, so a session whose worker
//! is still starting is never requested twice. Nothing here ever closes a
//! session: when there are more sessions than work, the surplus ends as the
//! consumers release their workers after acknowledging their jobs.

use std::time::Duration;

use crate::QueueStats;

/// First delay after a session failed to start.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest delay between attempts while sessions keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Units of work that want a session, capped at `max`.
pub fn target(stats: QueueStats, max: usize) -> usize {
    usize::try_from(stats.demand())
        .unwrap_or(usize::MAX)
        .min(max)
}

/// Sessions to open now, given the queue's counts, the sessions already
/// open (requested or held) and the most allowed:
/// `min(max, backlog + in_flight) - open`, or 0 when `open` is already at
/// or above that. It never asks to close one.
pub fn decide(stats: QueueStats, open: usize, max: usize) -> usize {
    target(stats, max).saturating_sub(open)
}

/// How long to wait before opening sessions again after `failures`
/// consecutive sessions failed to start: 0 for none, then 0.5 s doubling
/// per failure up to 30 s.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats(backlog: u64, in_flight: u64) -> QueueStats {
        QueueStats {
            backlog,
            in_flight,
            dead: 0,
        }
    }

    #[test]
    fn table() {
        // (backlog, in_flight, open, max, to_open)
        let cases: &[(u64, u64, usize, usize, usize)] = &[
            (0, 0, 0, 10, 0),
            (1, 0, 0, 10, 1),
            (5, 0, 2, 10, 3),
            // Running jobs count: new work does not wait for them (KEDA #1222).
            (3, 2, 2, 10, 3),
            // Jobs claimed by sessions still counted: nothing to add.
            (0, 4, 4, 10, 0),
            // Capped at max.
            (50, 0, 0, 10, 10),
            (50, 5, 8, 10, 2),
            (50, 5, 10, 10, 0),
            // More sessions than work: never negative, never a close.
            (1, 0, 5, 10, 0),
            (0, 0, 7, 10, 0),
            // Open above max (max lowered on restart): nothing to open.
            (20, 0, 12, 10, 0),
            // Huge counts from the wire do not overflow.
            (u64::MAX, u64::MAX, 0, 10_000, 10_000),
            (u64::MAX, 1, 9_999, 10_000, 1),
        ];
        for &(backlog, in_flight, open, max, want) in cases {
            assert_eq!(
                decide(stats(backlog, in_flight), open, max),
                want,
                "backlog {backlog}, in_flight {in_flight}, open {open}, max {max}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = |f| backoff_delay(f).as_millis();
        assert_eq!(ms(0), 0);
        assert_eq!(ms(1), 500);
        assert_eq!(ms(2), 1_000);
        assert_eq!(ms(3), 2_000);
        assert_eq!(ms(6), 16_000);
        assert_eq!(ms(7), 30_000);
        assert_eq!(ms(u32::MAX), 30_000);
    }

    proptest! {
        #[test]
        fn never_opens_beyond_the_target(
            backlog in 0u64..20_000, in_flight in 0u64..20_000,
            open in 0usize..12_000, max in 1usize..=10_000,
        ) {
            let s = stats(backlog, in_flight);
            let to_open = decide(s, open, max);
            let demand = (backlog + in_flight) as usize;
            prop_assert!(open + to_open <= max.max(open));
            prop_assert!(open + to_open <= demand.max(open));
            if to_open > 0 {
                prop_assert_eq!(open + to_open, demand.min(max));
            }
        }

        #[test]
        fn reaches_the_target_from_below(
            backlog in 0u64..20_000, in_flight in 0u64..20_000,
            open in 0usize..12_000, max in 1usize..=10_000,
        ) {
            let s = stats(backlog, in_flight);
            let goal = target(s, max);
            let after = open + decide(s, open, max);
            if open <= goal {
                prop_assert_eq!(after, goal);
            } else {
                prop_assert_eq!(after, open, "above the target nothing is opened");
            }
            // Deciding again at once changes nothing.
            prop_assert_eq!(decide(s, after, max), 0);
        }

        #[test]
        fn more_work_never_means_fewer_sessions(
            backlog in 0u64..5_000, in_flight in 0u64..5_000, extra in 0u64..5_000,
            open in 0usize..6_000, max in 1usize..=10_000,
        ) {
            let less = decide(stats(backlog, in_flight), open, max);
            prop_assert!(decide(stats(backlog + extra, in_flight), open, max) >= less);
            prop_assert!(decide(stats(backlog, in_flight + extra), open, max) >= less);
        }

        #[test]
        fn backoff_is_monotonic_and_bounded(f in 0u32..100) {
            prop_assert!(backoff_delay(f) <= backoff_delay(f + 1));
            prop_assert!(backoff_delay(f) <= BACKOFF_MAX);
        }
    }
}
