//! The dispatcher's state machine: every session it has asked for (a
//! "slot"), from the request to the end, and the decisions made from the
//! queue's counts. No I/O and no clock: the driver feeds it [`Input`]s with
//! the time they happened and carries out the [`Effect`]s it returns.
//!
//! Rules, each enforced here and nowhere else:
//!
//! * A slot counts as open from the moment it is requested, through the
//!   worker's cold start, until its session ends; so a slow start never
//!   leads to a second session for the same work.
//! * Sessions are opened only while `open < min(max, backlog + in_flight)`
//!   (see [`decide`](super::decide::decide)); none is ever closed to scale
//!   in. A session released by its worker frees its slot; it is replaced
//!   only if a later reading of the queue still shows the work.
//! * Counts read before a session ended may still include that session's
//!   job: they open nothing (the next reading, a poll later, decides).
//! * Sessions that fail to start are retried after a bounded exponential
//!   delay ([`backoff_delay`](super::decide::backoff_delay)).
//! * Shutdown: no more opens; requests still waiting for a worker are
//!   cancelled (they hold no job); held sessions are kept (their leases
//!   renewed) until their workers release them, except that once the queue
//!   shows no job waiting or in flight the remaining ones hold no job and
//!   are closed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::decide::{backoff_delay, decide, target};
use crate::QueueStats;

/// Identifies one session the dispatcher asked for (from 1, never reused).
pub type SlotId = u64;

/// How a held session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    /// The worker released it (the consumer's `POST /release` after its job).
    Released,
    /// The dispatcher closed it (shutdown with no job waiting or in flight).
    Closed,
    /// Its lease ran out.
    Expired,
    /// Its worker stopped answering.
    WorkerLost,
}

impl EndKind {
    /// The label used in logs, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Closed => "closed",
            Self::Expired => "expired",
            Self::WorkerLost => "worker_lost",
        }
    }
}

/// Something that happened, fed to [`Dispatcher::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The queue's counts, read by a call sent at `asked_at`.
    QueueObserved {
        /// The counts.
        stats: QueueStats,
        /// When the call that read them was sent.
        asked_at: Instant,
    },
    /// The slot's session holds a worker.
    SessionHeld {
        /// The slot.
        slot: SlotId,
        /// The worker's session id.
        session_id: String,
        /// The worker's URL.
        worker_url: String,
    },
    /// The slot's request failed before it held a worker.
    SessionFailed {
        /// The slot.
        slot: SlotId,
        /// Why, as one line.
        reason: String,
    },
    /// The slot's request was cancelled (after [`Effect::Cancel`]).
    SessionCancelled {
        /// The slot.
        slot: SlotId,
    },
    /// The slot's held session ended.
    SessionEnded {
        /// The slot.
        slot: SlotId,
        /// How.
        how: EndKind,
        /// Details for abnormal ends.
        detail: Option<String>,
    },
    /// Stop opening sessions and wind down (first SIGINT / SIGTERM).
    ShutdownRequested,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Request a session for this new slot.
    Open {
        /// The new slot.
        slot: SlotId,
    },
    /// Cancel the slot's request (it holds no worker yet).
    Cancel {
        /// The slot.
        slot: SlotId,
    },
    /// Close the slot's held session (shutdown, queue empty).
    Close {
        /// The slot.
        slot: SlotId,
    },
    /// Report this (log line, `--json` object, metrics).
    Report(DispatchEvent),
}

/// One decision on the queue's counts, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Seconds since the dispatcher started.
    pub t: f64,
    /// Why, in words: e.g. `opening 3: backlog 5 + in-flight 0 = demand 5, open 2, max 10`.
    pub reason: String,
    /// Jobs waiting.
    pub backlog: u64,
    /// Jobs claimed, not yet acknowledged.
    pub in_flight: u64,
    /// `backlog + in_flight`.
    pub demand: u64,
    /// `--max-sessions`.
    pub max: usize,
    /// Sessions open (requested or held) before the decision.
    pub open_before: usize,
    /// Sessions opened by this decision.
    pub to_open: usize,
    /// Sessions open after it.
    pub open_after: usize,
    /// Of those, requested and not yet holding a worker.
    pub requested: usize,
    /// Of those, holding a worker.
    pub held: usize,
    /// Held sessions this decision closes (shutdown with an empty queue only).
    pub to_close: usize,
}

/// Everything the dispatcher reports: one JSON object per line with
/// `--json`, `event` naming the variant and `t` the seconds since start.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DispatchEvent {
    /// The queue's counts changed.
    Stats {
        /// Seconds since start.
        t: f64,
        /// Jobs waiting.
        backlog: u64,
        /// Jobs claimed, not yet acknowledged.
        in_flight: u64,
        /// Dead-lettered jobs.
        dead: u64,
    },
    /// A decision that opens sessions or follows a change of counts.
    Decision(Decision),
    /// A session holds a worker.
    SessionHeld {
        /// Seconds since start.
        t: f64,
        /// The slot.
        slot: SlotId,
        /// The worker's session id.
        session_id: String,
        /// The worker's URL.
        worker_url: String,
        /// Seconds from the request to holding the worker.
        reserve_secs: f64,
    },
    /// A held session ended.
    SessionEnded {
        /// Seconds since start.
        t: f64,
        /// The slot.
        slot: SlotId,
        /// The worker's session id.
        session_id: String,
        /// The worker's URL.
        worker_url: String,
        /// `released`, `closed`, `expired` or `worker_lost`.
        how: EndKind,
        /// Seconds it was held.
        held_secs: f64,
        /// Details for abnormal ends.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A session request failed before holding a worker.
    SessionFailed {
        /// Seconds since start.
        t: f64,
        /// The slot.
        slot: SlotId,
        /// Why.
        error: String,
        /// Consecutive failures so far.
        failures: u32,
        /// Seconds before sessions are requested again.
        retry_in_secs: f64,
    },
    /// A session request was cancelled at shutdown.
    SessionCancelled {
        /// Seconds since start.
        t: f64,
        /// The slot.
        slot: SlotId,
    },
    /// Shutdown began: no more sessions are opened.
    Shutdown {
        /// Requests being cancelled.
        cancelling: usize,
        /// Held sessions kept until their workers release them.
        held: usize,
        /// Seconds since start.
        t: f64,
    },
    /// Shutdown finished: every session has ended.
    Drained {
        /// Seconds since start.
        t: f64,
    },
    /// Reading the queue failed (reported once until it works again).
    QueueError {
        /// Seconds since start.
        t: f64,
        /// Why.
        error: String,
    },
    /// The queue is readable again after [`DispatchEvent::QueueError`].
    QueueRecovered {
        /// Seconds since start.
        t: f64,
    },
    /// Jobs of consumers that stopped heart-beating were made claimable again.
    Requeued {
        /// Seconds since start.
        t: f64,
        /// How many.
        count: u64,
    },
    /// The dispatcher exits leaving held sessions to expire (second signal
    /// or `--drain-timeout`).
    Abandoned {
        /// Seconds since start.
        t: f64,
        /// Held sessions left to end by expiry.
        held: usize,
        /// Requests dropped.
        requested: usize,
        /// Why.
        reason: String,
    },
}

/// Sessions by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requested, not yet holding a worker (including requests being cancelled).
    pub requested: usize,
    /// Holding a worker (including sessions being closed).
    pub held: usize,
}

#[derive(Debug, Clone)]
enum State {
    Requested,
    Cancelling,
    Held(Holding),
    Closing(Holding),
}

#[derive(Debug, Clone)]
struct Holding {
    session_id: String,
    worker_url: String,
    since: Instant,
}

#[derive(Debug, Clone)]
struct Slot {
    requested_at: Instant,
    state: State,
}

/// Which kind of decision, to report each situation once rather than on
/// every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    BackingOff,
    Stale,
    AboveDemand,
    AtMax,
    Steady,
    Draining,
    DrainClose,
}

/// The dispatcher's state. Feed it [`Input`]s through [`Dispatcher::handle`].
#[derive(Debug)]
pub struct Dispatcher {
    max: usize,
    started: Instant,
    slots: BTreeMap<SlotId, Slot>,
    next_slot: SlotId,
    stats: Option<QueueStats>,
    last_reported: Option<(u64, u64, Counts, Kind)>,
    failures: u32,
    retry_at: Option<Instant>,
    last_end_at: Option<Instant>,
    draining: bool,
    drained_reported: bool,
}

impl Dispatcher {
    /// A dispatcher keeping at most `max` sessions open (`max` ≥ 1), started at `now`.
    pub fn new(max: usize, now: Instant) -> Self {
        Self {
            max: max.max(1),
            started: now,
            slots: BTreeMap::new(),
            next_slot: 1,
            stats: None,
            last_reported: None,
            failures: 0,
            retry_at: None,
            last_end_at: None,
            draining: false,
            drained_reported: false,
        }
    }

    /// Sessions by state.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for slot in self.slots.values() {
            match slot.state {
                State::Requested | State::Cancelling => counts.requested += 1,
                State::Held(_) | State::Closing(_) => counts.held += 1,
            }
        }
        counts
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether shutdown has finished: every session has ended.
    pub fn is_drained(&self) -> bool {
        self.draining && self.slots.is_empty()
    }

    /// Seconds since start, to the millisecond.
    pub fn t(&self, now: Instant) -> f64 {
        (now.saturating_duration_since(self.started).as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// Applies one input at `now` and returns what the driver must do.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        let mut effects = Vec::new();
        match input {
            Input::QueueObserved { stats, asked_at } => {
                self.observe(now, stats, asked_at, &mut effects)
            }
            Input::SessionHeld {
                slot,
                session_id,
                worker_url,
            } => self.held(now, slot, session_id, worker_url, &mut effects),
            Input::SessionFailed { slot, reason } => self.failed(now, slot, reason, &mut effects),
            Input::SessionCancelled { slot } => {
                if self.slots.remove(&slot).is_some() {
                    effects.push(Effect::Report(DispatchEvent::SessionCancelled {
                        t: self.t(now),
                        slot,
                    }));
                }
            }
            Input::SessionEnded { slot, how, detail } => {
                self.ended(now, slot, how, detail, &mut effects)
            }
            Input::ShutdownRequested => self.shutdown(now, &mut effects),
        }
        if self.is_drained() && !self.drained_reported {
            self.drained_reported = true;
            effects.push(Effect::Report(DispatchEvent::Drained { t: self.t(now) }));
        }
        self.check_invariants(&effects);
        effects
    }

    fn observe(
        &mut self,
        now: Instant,
        stats: QueueStats,
        asked_at: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if self.stats != Some(stats) {
            effects.push(Effect::Report(DispatchEvent::Stats {
                t: self.t(now),
                backlog: stats.backlog,
                in_flight: stats.in_flight,
                dead: stats.dead,
            }));
        }
        self.stats = Some(stats);
        let open_before = self.slots.len();
        let demand = stats.demand();
        let (b, i, max) = (stats.backlog, stats.in_flight, self.max);
        let counts = format!("backlog {b} + in-flight {i} = demand {demand}");
        let mut to_open = 0;
        let mut to_close = Vec::new();
        let (kind, reason) = if self.draining {
            let held: Vec<SlotId> = self
                .slots
                .iter()
                .filter(|(_, s)| matches!(s.state, State::Held(_)))
                .map(|(id, _)| *id)
                .collect();
            if demand == 0 && !held.is_empty() {
                to_close = held;
                (
                    Kind::DrainClose,
                    format!(
                        "shutting down: no job waiting or in flight, closing {} idle held session(s)",
                        to_close.len()
                    ),
                )
            } else {
                let c = self.counts();
                (
                    Kind::Draining,
                    format!(
                        "shutting down: waiting for {} held session(s) to be released by their workers, \
                         {} request(s) being cancelled; {counts}",
                        c.held, c.requested
                    ),
                )
            }
        } else {
            let want = decide(stats, open_before, max);
            if want > 0 && self.retry_at.is_some_and(|at| now < at) {
                let wait = self.retry_at.map_or(Duration::ZERO, |at| at - now);
                (
                    Kind::BackingOff,
                    format!(
                        "waiting {:.1} s before opening {want} after {} failed session request(s); \
                         {counts}, open {open_before}, max {max}",
                        wait.as_secs_f64(),
                        self.failures
                    ),
                )
            } else if want > 0 && self.last_end_at.is_some_and(|end| asked_at < end) {
                (
                    Kind::Stale,
                    format!(
                        "not opening yet: these counts were read before a session ended; {counts}, \
                         open {open_before}, max {max}"
                    ),
                )
            } else if want > 0 {
                to_open = want;
                (
                    Kind::Open,
                    format!("opening {want}: {counts}, open {open_before}, max {max}"),
                )
            } else if (open_before as u64) > demand {
                (
                    Kind::AboveDemand,
                    format!(
                        "holding {open_before}: {counts}; the extra sessions end when their workers release them"
                    ),
                )
            } else if target(stats, max) == max && demand > max as u64 {
                (
                    Kind::AtMax,
                    format!("holding {open_before}: {counts}, capped at max {max}"),
                )
            } else {
                (
                    Kind::Steady,
                    format!("holding {open_before}: {counts}, max {max}"),
                )
            }
        };
        for _ in 0..to_open {
            let slot = self.next_slot;
            self.next_slot += 1;
            self.slots.insert(
                slot,
                Slot {
                    requested_at: now,
                    state: State::Requested,
                },
            );
            effects.push(Effect::Open { slot });
        }
        for slot in &to_close {
            if let Some(s) = self.slots.get_mut(slot) {
                if let State::Held(h) = &s.state {
                    s.state = State::Closing(h.clone());
                    effects.push(Effect::Close { slot: *slot });
                }
            }
        }
        let after = self.counts();
        // Once the opens are made, the same counts read again are steady:
        // keyed as such so they are not reported a second time.
        let settled = match kind {
            Kind::Open if demand > max as u64 => Kind::AtMax,
            Kind::Open => Kind::Steady,
            other => other,
        };
        let key = (b, i, after, settled);
        if to_open > 0 || !to_close.is_empty() || self.last_reported != Some(key) {
            self.last_reported = Some(key);
            effects.push(Effect::Report(DispatchEvent::Decision(Decision {
                t: self.t(now),
                reason,
                backlog: b,
                in_flight: i,
                demand,
                max,
                open_before,
                to_open,
                open_after: self.slots.len(),
                requested: after.requested,
                held: after.held,
                to_close: to_close.len(),
            })));
        }
    }

    fn held(
        &mut self,
        now: Instant,
        slot: SlotId,
        session_id: String,
        worker_url: String,
        effects: &mut Vec<Effect>,
    ) {
        let Some(s) = self.slots.get_mut(&slot) else {
            return;
        };
        if !matches!(s.state, State::Requested | State::Cancelling) {
            return;
        }
        // A request cancelled too late to stop it holds a worker whose
        // consumer may already be taking a job: keep it like any other.
        s.state = State::Held(Holding {
            session_id: session_id.clone(),
            worker_url: worker_url.clone(),
            since: now,
        });
        let reserve = now.saturating_duration_since(s.requested_at);
        self.failures = 0;
        self.retry_at = None;
        effects.push(Effect::Report(DispatchEvent::SessionHeld {
            t: self.t(now),
            slot,
            session_id,
            worker_url,
            reserve_secs: secs(reserve),
        }));
    }

    fn failed(&mut self, now: Instant, slot: SlotId, reason: String, effects: &mut Vec<Effect>) {
        let Some(s) = self.slots.get(&slot) else {
            return;
        };
        match s.state {
            State::Requested => {
                self.slots.remove(&slot);
                self.failures = self.failures.saturating_add(1);
                let delay = backoff_delay(self.failures);
                self.retry_at = Some(now + delay);
                effects.push(Effect::Report(DispatchEvent::SessionFailed {
                    t: self.t(now),
                    slot,
                    error: reason,
                    failures: self.failures,
                    retry_in_secs: secs(delay),
                }));
            }
            State::Cancelling => {
                self.slots.remove(&slot);
                effects.push(Effect::Report(DispatchEvent::SessionCancelled {
                    t: self.t(now),
                    slot,
                }));
            }
            State::Held(_) | State::Closing(_) => {}
        }
    }

    fn ended(
        &mut self,
        now: Instant,
        slot: SlotId,
        how: EndKind,
        detail: Option<String>,
        effects: &mut Vec<Effect>,
    ) {
        let holding = match self.slots.get(&slot).map(|s| &s.state) {
            Some(State::Held(h) | State::Closing(h)) => h.clone(),
            _ => return,
        };
        self.slots.remove(&slot);
        self.last_end_at = Some(now);
        effects.push(Effect::Report(DispatchEvent::SessionEnded {
            t: self.t(now),
            slot,
            session_id: holding.session_id,
            worker_url: holding.worker_url,
            how,
            held_secs: secs(now.saturating_duration_since(holding.since)),
            detail,
        }));
    }

    fn shutdown(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if self.draining {
            return;
        }
        self.draining = true;
        let mut cancelling = 0;
        for (id, s) in self.slots.iter_mut() {
            if matches!(s.state, State::Requested) {
                s.state = State::Cancelling;
                cancelling += 1;
                effects.push(Effect::Cancel { slot: *id });
            }
        }
        let held = self.counts().held;
        effects.push(Effect::Report(DispatchEvent::Shutdown {
            cancelling,
            held,
            t: self.t(now),
        }));
    }

    /// The invariants, checked after every input in debug builds.
    fn check_invariants(&self, effects: &[Effect]) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            self.slots.len() <= self.max,
            "more sessions open than max: {self:?}"
        );
        assert!(
            self.slots.keys().all(|id| *id < self.next_slot),
            "slot id from the future: {self:?}"
        );
        for s in self.slots.values() {
            match s.state {
                State::Requested => {
                    assert!(!self.draining, "a request left uncancelled at shutdown")
                }
                State::Cancelling | State::Closing(_) => {
                    assert!(self.draining, "cancelling or closing outside shutdown")
                }
                State::Held(_) => {}
            }
        }
        assert_eq!(
            self.failures == 0,
            self.retry_at.is_none(),
            "backoff out of step"
        );
        for effect in effects {
            match effect {
                Effect::Open { slot } => {
                    assert!(!self.draining, "opened a session during shutdown");
                    assert!(
                        matches!(
                            self.slots.get(slot).map(|s| &s.state),
                            Some(State::Requested)
                        ),
                        "opened slot {slot} is not requested"
                    );
                }
                Effect::Close { .. } => assert!(self.draining, "closed a session outside shutdown"),
                Effect::Cancel { .. } | Effect::Report(_) => {}
            }
        }
        if let Some(stats) = self.stats {
            let opened = effects.iter().any(|e| matches!(e, Effect::Open { .. }));
            if opened {
                assert!(
                    self.slots.len() <= target(stats, self.max),
                    "opened beyond min(max, demand): {self:?}"
                );
            }
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
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

    /// A dispatcher with a clock the test moves.
    struct Script {
        d: Dispatcher,
        t0: Instant,
        now: Instant,
    }

    impl Script {
        fn new(max: usize) -> Self {
            let t0 = Instant::now();
            Self {
                d: Dispatcher::new(max, t0),
                t0,
                now: t0,
            }
        }

        fn at(&mut self, ms: u64) -> &mut Self {
            self.now = self.t0 + Duration::from_millis(ms);
            self
        }

        fn send(&mut self, input: Input) -> Vec<Effect> {
            self.d.handle(self.now, input)
        }

        /// Counts read by a call sent just now.
        fn observe(&mut self, backlog: u64, in_flight: u64) -> Vec<Effect> {
            let now = self.now;
            self.send(Input::QueueObserved {
                stats: stats(backlog, in_flight),
                asked_at: now,
            })
        }

        fn hold(&mut self, slot: SlotId) -> Vec<Effect> {
            self.send(Input::SessionHeld {
                slot,
                session_id: format!("s{slot}"),
                worker_url: format!("http://127.0.0.1:{}", 40_000 + slot),
            })
        }

        fn end(&mut self, slot: SlotId, how: EndKind) -> Vec<Effect> {
            self.send(Input::SessionEnded {
                slot,
                how,
                detail: None,
            })
        }
    }

    fn opened(effects: &[Effect]) -> Vec<SlotId> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Open { slot } => Some(*slot),
                _ => None,
            })
            .collect()
    }

    fn decisions(effects: &[Effect]) -> Vec<&Decision> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Report(DispatchEvent::Decision(d)) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn has(effects: &[Effect], pred: impl Fn(&DispatchEvent) -> bool) -> bool {
        effects
            .iter()
            .any(|e| matches!(e, Effect::Report(ev) if pred(ev)))
    }

    #[test]
    fn opens_for_the_backlog_with_a_reason() {
        let mut s = Script::new(10);
        let effects = s.observe(5, 0);
        assert_eq!(opened(&effects), vec![1, 2, 3, 4, 5]);
        let d = decisions(&effects);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].reason,
            "opening 5: backlog 5 + in-flight 0 = demand 5, open 0, max 10"
        );
        assert_eq!((d[0].open_before, d[0].to_open, d[0].open_after), (0, 5, 5));
        assert_eq!((d[0].requested, d[0].held), (5, 0));
        assert!(has(&effects, |e| matches!(
            e,
            DispatchEvent::Stats { backlog: 5, .. }
        )));
    }

    #[test]
    fn a_slow_cold_start_never_duplicates() {
        let mut s = Script::new(10);
        assert_eq!(opened(&s.observe(3, 0)).len(), 3);
        // Workers start from zero for a minute: the requests count all along.
        for ms in (20..60_000).step_by(20) {
            let effects = s.at(ms).observe(3, 0);
            assert!(opened(&effects).is_empty(), "duplicate at {ms} ms");
        }
        s.at(60_000).hold(1);
        // The consumer of slot 1 claims its job: demand is unchanged.
        assert!(opened(&s.at(60_020).observe(2, 1)).is_empty());
        assert_eq!(
            s.d.counts(),
            Counts {
                requested: 2,
                held: 1
            }
        );
        // One more job: one more session.
        let effects = s.at(60_040).observe(3, 1);
        assert_eq!(opened(&effects), vec![4]);
        assert_eq!(
            decisions(&effects)[0].reason,
            "opening 1: backlog 3 + in-flight 1 = demand 4, open 3, max 10"
        );
    }

    #[test]
    fn caps_at_max_and_reports_it_once() {
        let mut s = Script::new(4);
        assert_eq!(opened(&s.observe(50, 0)).len(), 4);
        // Same counts again: nothing to do, nothing to say.
        assert!(s.at(20).observe(50, 0).is_empty());
        s.at(30).hold(1);
        let effects = s.at(40).observe(50, 0);
        assert!(opened(&effects).is_empty());
        assert_eq!(
            decisions(&effects)[0].reason,
            "holding 4: backlog 50 + in-flight 0 = demand 50, capped at max 4"
        );
        assert_eq!(
            (
                decisions(&effects)[0].requested,
                decisions(&effects)[0].held
            ),
            (3, 1)
        );
        assert!(s.at(60).observe(50, 0).is_empty());
    }

    #[test]
    fn a_released_session_is_not_replaced_without_work() {
        let mut s = Script::new(10);
        s.observe(1, 0);
        s.at(100).hold(1);
        s.at(200).observe(0, 1);
        // The consumer acks, then releases.
        s.at(5_000).observe(0, 0);
        let effects = s.at(5_500).end(1, EndKind::Released);
        assert!(has(&effects, |e| matches!(
            e,
            DispatchEvent::SessionEnded {
                how: EndKind::Released,
                slot: 1,
                ..
            }
        )));
        assert!(opened(&s.at(5_520).observe(0, 0)).is_empty());
        assert_eq!(s.d.counts(), Counts::default());
        // New work later: a new session.
        assert_eq!(opened(&s.at(9_000).observe(1, 0)), vec![2]);
    }

    #[test]
    fn counts_read_before_a_session_ended_open_nothing() {
        let mut s = Script::new(10);
        s.observe(1, 0);
        s.at(100).hold(1);
        s.at(5_000).end(1, EndKind::Released);
        // A reading sent before the end still shows the acked job.
        let asked_at = s.t0 + Duration::from_millis(4_990);
        let effects = s.at(5_010).send(Input::QueueObserved {
            stats: stats(0, 1),
            asked_at,
        });
        assert!(opened(&effects).is_empty());
        assert!(decisions(&effects)[0].reason.starts_with("not opening yet"));
        // A fresh reading decides.
        assert!(opened(&s.at(5_030).observe(0, 0)).is_empty());
        assert_eq!(opened(&s.at(5_050).observe(0, 1)), vec![2]);
    }

    #[test]
    fn never_closes_to_scale_in() {
        let mut s = Script::new(10);
        s.observe(3, 0);
        for slot in 1..=3 {
            s.at(100).hold(slot);
        }
        let effects = s.at(200).observe(0, 1);
        assert!(effects
            .iter()
            .all(|e| !matches!(e, Effect::Close { .. } | Effect::Cancel { .. })));
        assert!(decisions(&effects)[0]
            .reason
            .contains("the extra sessions end when their workers release them"));
        assert_eq!(s.d.counts().held, 3);
    }

    #[test]
    fn failures_back_off_exponentially_and_a_held_session_resets() {
        let mut s = Script::new(10);
        s.observe(1, 0);
        let effects = s.at(1_000).send(Input::SessionFailed {
            slot: 1,
            reason: "no worker".into(),
        });
        assert!(has(&effects, |e| matches!(
            e,
            DispatchEvent::SessionFailed { failures: 1, retry_in_secs, .. } if *retry_in_secs == 0.5
        )));
        let effects = s.at(1_100).observe(1, 0);
        assert!(opened(&effects).is_empty());
        assert!(decisions(&effects)[0]
            .reason
            .starts_with("waiting 0.4 s before opening 1"));
        assert_eq!(opened(&s.at(1_500).observe(1, 0)), vec![2]);
        s.at(2_000).send(Input::SessionFailed {
            slot: 2,
            reason: "no worker".into(),
        });
        assert!(
            opened(&s.at(2_900).observe(1, 0)).is_empty(),
            "second failure waits 1 s"
        );
        assert_eq!(opened(&s.at(3_000).observe(1, 0)), vec![3]);
        s.at(3_100).hold(3);
        assert_eq!(s.d.failures, 0);
        assert_eq!(
            opened(&s.at(3_200).observe(2, 0)),
            vec![4],
            "no delay after success"
        );
    }

    #[test]
    fn shutdown_cancels_requests_and_keeps_held_sessions() {
        let mut s = Script::new(10);
        s.observe(3, 0);
        s.at(100).hold(1);
        s.at(150).observe(2, 1);
        let effects = s.at(200).send(Input::ShutdownRequested);
        let cancelled: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Cancel { slot } => Some(*slot),
                _ => None,
            })
            .collect();
        assert_eq!(cancelled, vec![2, 3]);
        assert!(has(&effects, |e| matches!(
            e,
            DispatchEvent::Shutdown {
                cancelling: 2,
                held: 1,
                ..
            }
        )));
        assert!(!s.d.is_drained());
        // More work arrives: nothing is opened any more.
        assert!(opened(&s.at(250).observe(9, 1)).is_empty());
        // Slot 3's worker was reserved before the cancel landed: kept.
        s.at(300).send(Input::SessionCancelled { slot: 2 });
        s.at(300).hold(3);
        assert_eq!(
            s.d.counts(),
            Counts {
                requested: 0,
                held: 2
            }
        );
        // Jobs still in flight: nothing closed.
        let effects = s.at(400).observe(0, 2);
        assert!(effects.iter().all(|e| !matches!(e, Effect::Close { .. })));
        s.at(5_000).end(1, EndKind::Released);
        let effects = s.at(6_000).end(3, EndKind::Released);
        assert!(s.d.is_drained());
        assert!(has(&effects, |e| matches!(
            e,
            DispatchEvent::Drained { .. }
        )));
    }

    #[test]
    fn shutdown_closes_idle_sessions_once_the_queue_is_empty() {
        let mut s = Script::new(10);
        s.observe(2, 0);
        s.at(100).hold(1);
        s.at(100).hold(2);
        // One job was taken by a consumer elsewhere: slot 2 holds no job.
        s.at(150).observe(0, 1);
        s.at(200).send(Input::ShutdownRequested);
        assert!(s
            .at(250)
            .observe(0, 1)
            .iter()
            .all(|e| !matches!(e, Effect::Close { .. })));
        let effects = s.at(3_000).observe(0, 0);
        let closed: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Close { slot } => Some(*slot),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![1, 2]);
        assert_eq!(decisions(&effects)[0].to_close, 2);
        // Closing is not repeated while the closes are under way.
        assert!(s
            .at(3_020)
            .observe(0, 0)
            .iter()
            .all(|e| !matches!(e, Effect::Close { .. })));
        s.at(3_050).end(1, EndKind::Closed);
        s.at(3_060).end(2, EndKind::Released);
        assert!(s.d.is_drained());
    }

    #[test]
    fn shutdown_with_nothing_open_is_drained_at_once() {
        let mut s = Script::new(10);
        let effects = s.send(Input::ShutdownRequested);
        assert!(s.d.is_drained());
        assert!(has(&effects, |e| matches!(
            e,
            DispatchEvent::Drained { .. }
        )));
        // Reported once.
        assert!(!has(&s.send(Input::ShutdownRequested), |e| matches!(
            e,
            DispatchEvent::Drained { .. }
        )));
    }

    #[test]
    fn unknown_or_repeated_slot_events_change_nothing() {
        let mut s = Script::new(10);
        s.observe(1, 0);
        assert!(s.hold(7).is_empty());
        assert!(s.end(7, EndKind::Released).is_empty());
        s.hold(1);
        assert!(s.hold(1).is_empty());
        assert!(s
            .send(Input::SessionFailed {
                slot: 1,
                reason: "late".into()
            })
            .is_empty());
        assert_eq!(
            s.d.counts(),
            Counts {
                requested: 0,
                held: 1
            }
        );
    }

    #[test]
    fn events_serialise_with_stable_names() {
        let mut s = Script::new(10);
        let effects = s.at(1_500).observe(2, 1);
        let json: Vec<String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Report(ev) => Some(serde_json::to_string(ev).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(
            json[0],
            r#"{"event":"stats","t":1.5,"backlog":2,"in_flight":1,"dead":0}"#
        );
        assert_eq!(
            json[1],
            r#"{"event":"decision","t":1.5,"reason":"opening 3: backlog 2 + in-flight 1 = demand 3, open 0, max 10","backlog":2,"in_flight":1,"demand":3,"max":10,"open_before":0,"to_open":3,"open_after":3,"requested":3,"held":0,"to_close":0}"#
        );
        s.at(2_000).hold(1);
        let effects = s.at(3_000).end(1, EndKind::WorkerLost);
        let Effect::Report(ev) = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!(
            serde_json::to_string(ev).unwrap(),
            r#"{"event":"session_ended","t":3.0,"slot":1,"session_id":"s1","worker_url":"http://127.0.0.1:40001","how":"worker_lost","held_secs":1.0}"#
        );
    }

    /// One step of a random run.
    #[derive(Debug, Clone)]
    enum Step {
        Observe(u64, u64),
        ObserveStale(u64, u64),
        Hold(usize),
        Fail(usize),
        End(usize),
        Shutdown,
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..30, 0u64..30).prop_map(|(b, i)| Step::Observe(b, i)),
            1 => (0u64..30, 0u64..30).prop_map(|(b, i)| Step::ObserveStale(b, i)),
            3 => (0usize..64).prop_map(Step::Hold),
            1 => (0usize..64).prop_map(Step::Fail),
            2 => (0usize..64).prop_map(Step::End),
            1 => Just(Step::Shutdown),
            2 => (1u64..5_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Whatever happens, in whatever order: never more open than
        /// `min(max, demand)` right after opening, never an open during
        /// shutdown, and a fresh reading without backoff leaves at least
        /// `min(max, demand)` open.
        #[test]
        fn random_runs_keep_the_counting_rule(
            max in 1usize..20,
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut s = Script::new(max);
            let mut ms = 0u64;
            for step in steps {
                let live: Vec<SlotId> = s.d.slots.keys().copied().collect();
                let pick = |i: usize| live.get(i % live.len().max(1)).copied().unwrap_or(999);
                let effects = match step {
                    Step::Observe(b, i) => {
                        let effects = s.observe(b, i);
                        let goal = target(stats(b, i), max);
                        let fresh = s.d.retry_at.is_none_or(|at| s.now >= at);
                        if !s.d.draining && fresh {
                            prop_assert!(s.d.slots.len() >= goal, "below the target after a fresh reading");
                        }
                        if !opened(&effects).is_empty() {
                            prop_assert_eq!(s.d.slots.len(), goal);
                        }
                        effects
                    }
                    Step::ObserveStale(b, i) => {
                        let asked_at = s.t0;
                        s.send(Input::QueueObserved { stats: stats(b, i), asked_at })
                    }
                    Step::Hold(i) => s.hold(pick(i)),
                    Step::Fail(i) => s.send(Input::SessionFailed { slot: pick(i), reason: "x".into() }),
                    Step::End(i) => s.end(pick(i), EndKind::Released),
                    Step::Shutdown => s.send(Input::ShutdownRequested),
                    Step::Wait(d) => { ms += d; s.at(ms); Vec::new() }
                };
                prop_assert!(s.d.slots.len() <= max);
                if s.d.draining {
                    prop_assert!(opened(&effects).is_empty());
                }
            }
        }
    }
}
