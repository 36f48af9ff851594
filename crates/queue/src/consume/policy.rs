//! Pure decisions of the consumer loop: when a running job is cut short on
//! shutdown (grace, then SIGTERM, then SIGKILL), how often it is
//! heart-beaten, how long to wait before retrying after an error, and how a
//! claim wait is sliced so that a stop request is noticed promptly.
//!
//! Instants are `tokio::time::Instant`, so the callers run on a paused clock
//! in tests.

use std::time::Duration;

use tokio::time::Instant;

/// How long a job's process group has between SIGTERM and SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// Longest single `claim` call; a longer claim timeout is waited out in
/// slices of this size so that a stop request is seen within one slice
/// without abandoning a claim half-way.
pub const CLAIM_SLICE: Duration = Duration::from_secs(1);

/// Shortest heartbeat period, whatever the visibility timeout.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// First and longest pause after a failed queue or control-port call.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What to send to a running job's process group now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Nothing yet.
    Nothing,
    /// SIGTERM: the grace is over (or was skipped).
    Terminate,
    /// SIGKILL: the group outlived [`KILL_WAIT`] after SIGTERM.
    Kill,
}

/// The shutdown state of one running job.
///
/// Running → (stop requested) draining for `grace` → SIGTERM → after
/// `kill_wait`, SIGKILL. A second stop request skips what is left of the
/// grace. A job that exits by itself while draining is acked or failed as
/// usual; one that had to be signalled is handed back to the queue
/// ([`JobStop::cut_short`]).
#[derive(Debug, Clone)]
pub struct JobStop {
    grace: Duration,
    kill_wait: Duration,
    drain_since: Option<Instant>,
    skip_grace: bool,
    terminated_at: Option<Instant>,
    killed: bool,
}

impl JobStop {
    /// A running job that has not been asked to stop.
    pub fn new(grace: Duration, kill_wait: Duration) -> Self {
        Self {
            grace,
            kill_wait,
            drain_since: None,
            skip_grace: false,
            terminated_at: None,
            killed: false,
        }
    }

    /// The first stop request: the job has `grace` from `now` to finish.
    /// Later calls keep the first deadline.
    pub fn drain(&mut self, now: Instant) {
        self.drain_since.get_or_insert(now);
    }

    /// The second stop request: no more grace.
    pub fn skip_grace(&mut self, now: Instant) {
        self.drain(now);
        self.skip_grace = true;
    }

    /// Whether a stop was requested.
    pub fn draining(&self) -> bool {
        self.drain_since.is_some()
    }

    /// Whether the grace was skipped.
    pub fn grace_skipped(&self) -> bool {
        self.skip_grace
    }

    /// When [`JobStop::due`] next has something to do; `None` when nothing
    /// is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.killed {
            return None;
        }
        if let Some(at) = self.terminated_at {
            return Some(at + self.kill_wait);
        }
        let since = self.drain_since?;
        Some(if self.skip_grace {
            since
        } else {
            since + self.grace
        })
    }

    /// The signal to send at `now`, recording that it was sent.
    pub fn due(&mut self, now: Instant) -> StopAction {
        match self.next_deadline() {
            Some(deadline) if now >= deadline => {
                if self.terminated_at.is_none() {
                    self.terminated_at = Some(now);
                    StopAction::Terminate
                } else {
                    self.killed = true;
                    StopAction::Kill
                }
            }
            _ => StopAction::Nothing,
        }
    }

    /// When SIGTERM was sent.
    pub fn terminated_at(&self) -> Option<Instant> {
        self.terminated_at
    }
}

/// How often a running job is heart-beaten: a third of the visibility
/// timeout, so that two heartbeats can be missed before the job is handed
/// to someone else.
pub fn heartbeat_interval(visibility_timeout: Duration) -> Duration {
    (visibility_timeout / 3).max(MIN_HEARTBEAT)
}

/// Pause after the `failures`-th consecutive failure (1-based): 250 ms,
/// doubling, at most 10 s.
pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1u32 << shift).min(BACKOFF_MAX)
}

/// How long the next `claim` call may wait, with `remaining` of the claim
/// timeout left.
pub fn claim_slice(remaining: Duration) -> Duration {
    remaining.min(CLAIM_SLICE)
}

/// A consumer name unique to this process: `HOST-PID-RANDOM`, with
/// characters outside `[A-Za-z0-9._-]` in the host name replaced by `_`
/// (queue servers use it as a key or consumer name).
pub fn consumer_id(hostname: &str, pid: u32, random: u32) -> String {
    let host: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let host = if host.is_empty() { "host" } else { &host };
    format!("{host}-{pid}-{random:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Drain,
        Skip,
        Tick,
    }

    /// Replays `(seconds since start, event)` and records what `due` said
    /// at each tick.
    fn replay(grace: u64, events: &[(u64, Event)]) -> Vec<(u64, StopAction)> {
        let t0 = Instant::now();
        let mut stop = JobStop::new(Duration::from_secs(grace), 5 * S);
        let mut out = Vec::new();
        for &(at, event) in events {
            let now = t0 + Duration::from_secs(at);
            match event {
                Event::Drain => stop.drain(now),
                Event::Skip => stop.skip_grace(now),
                Event::Tick => out.push((at, stop.due(now))),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn grace_then_sigterm_then_sigkill() {
        use Event::*;
        use StopAction::*;
        type Case<'a> = (&'a str, u64, &'a [(u64, Event)], &'a [(u64, StopAction)]);
        let cases: &[Case] = &[
            (
                "never asked to stop",
                30,
                &[(0, Tick), (1000, Tick)],
                &[(0, Nothing), (1000, Nothing)],
            ),
            (
                "grace runs from the first stop request",
                30,
                &[
                    (10, Drain),
                    (39, Tick),
                    (40, Tick),
                    (44, Tick),
                    (45, Tick),
                    (99, Tick),
                ],
                &[
                    (39, Nothing),
                    (40, Terminate),
                    (44, Nothing),
                    (45, Kill),
                    (99, Nothing),
                ],
            ),
            (
                "a repeated drain keeps the first deadline",
                30,
                &[(10, Drain), (20, Drain), (40, Tick)],
                &[(40, Terminate)],
            ),
            (
                "a second signal skips the grace",
                30,
                &[(10, Drain), (12, Skip), (12, Tick), (16, Tick), (17, Tick)],
                &[(12, Terminate), (16, Nothing), (17, Kill)],
            ),
            (
                "a first signal that skips the grace",
                30,
                &[(3, Skip), (3, Tick), (8, Tick)],
                &[(3, Terminate), (8, Kill)],
            ),
            (
                "zero grace",
                0,
                &[(3, Drain), (3, Tick), (7, Tick), (8, Tick)],
                &[(3, Terminate), (7, Nothing), (8, Kill)],
            ),
            (
                "a late tick sends one signal at a time",
                30,
                &[(0, Drain), (500, Tick), (500, Tick), (500, Tick)],
                &[(500, Terminate), (500, Nothing), (500, Nothing)],
            ),
        ];
        for (name, grace, events, want) in cases {
            assert_eq!(replay(*grace, events), *want, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_and_cut_short() {
        let t0 = Instant::now();
        let mut stop = JobStop::new(30 * S, 5 * S);
        assert_eq!(stop.next_deadline(), None);
        assert!(!stop.draining() && stop.terminated_at().is_none());
        stop.drain(t0);
        assert_eq!(stop.next_deadline(), Some(t0 + 30 * S));
        assert!(stop.draining() && stop.terminated_at().is_none());
        assert_eq!(stop.due(t0 + 30 * S), StopAction::Terminate);
        assert_eq!(stop.terminated_at(), Some(t0 + 30 * S));
        assert_eq!(stop.next_deadline(), Some(t0 + 35 * S));
        assert_eq!(stop.due(t0 + 35 * S), StopAction::Kill);
        assert_eq!(stop.next_deadline(), None);
        assert_eq!(stop.due(t0 + 1000 * S), StopAction::Nothing);
    }

    #[test]
    fn heartbeat_is_a_third_of_the_visibility_timeout() {
        for (vt, want) in [
            (Duration::from_secs(30), Duration::from_secs(10)),
            (Duration::from_secs(1), Duration::from_nanos(333_333_333)),
            (Duration::from_millis(150), Duration::from_millis(100)),
            (Duration::from_secs(86_400), Duration::from_secs(28_800)),
        ] {
            assert_eq!(heartbeat_interval(vt), want, "{vt:?}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 7].map(ms),
            [250, 250, 500, 1000, 2000, 4000, 8000, 10_000]
        );
        assert_eq!(ms(u32::MAX), 10_000);
    }

    #[test]
    fn claim_is_sliced() {
        assert_eq!(claim_slice(Duration::from_secs(10)), CLAIM_SLICE);
        assert_eq!(
            claim_slice(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        assert_eq!(claim_slice(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn consumer_ids_are_safe_names() {
        assert_eq!(
            consumer_id("gpu-7.local", 42, 0xab),
            "gpu-7.local-42-000000ab"
        );
        assert_eq!(consumer_id(" a b:c\n", 1, 1), "a_b_c-1-00000001");
        assert_eq!(consumer_id("", 1, 1), "host-1-00000001");
        assert!(consumer_id(&"x".repeat(500), 1, 1).len() < 100);
    }
}
