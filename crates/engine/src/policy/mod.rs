//! The engine's decision logic, free of I/O: endpoint parameters and their
//! validation, worker states, the request table, the routing choice and the
//! autoscaling decision.
//!
//! Everything here is a pure function of the values passed in. Times are
//! `f64` Unix epoch seconds supplied by the caller; nothing reads a clock,
//! spawns a process or touches the network. The runtime (API handlers, the
//! scaler loop, the process supervisor) builds snapshots, calls into this
//! module and carries out what it returns.
//!
//! * [`autoscale`]: how many workers an endpoint wants, and which to create,
//!   start, stop or destroy ([`autoscale::decide`]).
//! * [`routing`]: which worker takes a request ([`routing::choose_worker`],
//!   or [`routing::RouteIndex`] in O(log n)).
//! * [`requests`]: the request table of `/route/` (`request_idx`, replays,
//!   waiting requests, assignments not yet visible in reports).
//! * [`worker_state`]: a worker's state derived from its process and reports.
//! * [`backoff`]: how long launches wait after consecutive failed workers.
//!
//! The policy is documented, with worked examples, in `docs/engine-policy.md`.

pub mod autoscale;
pub mod backoff;
pub mod requests;
pub mod routing;
pub mod worker_state;

use serde::{Deserialize, Serialize};

pub use nullworker_protocol::messages::EndpointState;
pub use worker_state::WorkerState;

/// The framework protocol version a healthy worker reports (`version`).
pub const WORKER_PROTOCOL_VERSION: &str = "1.1.0";

/// Highest accepted `max_workers`: more local processes than this is a typo,
/// not a configuration.
pub const MAX_WORKERS_LIMIT: u32 = 100_000;

/// Highest accepted duration parameter (queue times, timeouts, delays), in
/// seconds: 30 days. Larger values are rejected as absurd.
pub const MAX_DURATION: f64 = 30.0 * 24.0 * 3600.0;

/// Highest accepted load-like parameter (`min_load`, `min_cold_load`) and
/// `cold_mult`: large enough for any real use, small enough that arithmetic
/// on it stays exact enough.
pub const MAX_LOAD: f64 = 1e12;

/// A parameter that failed validation. The message names the wire field, the
/// value received and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// `field` had `value`, which is not `expected`.
    #[error("{field}: got {value}, expected {expected}")]
    Invalid {
        /// Wire name of the parameter (e.g. `target_util`).
        field: &'static str,
        /// The value received, as text.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl PolicyError {
    /// The wire name of the offending parameter.
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::Invalid { field, .. } => field,
        }
    }
}

/// The scaling and routing parameters of one endpoint (PROTOCOL §11.1), plus
/// two engine knobs (`scale_down_delay`, `stale_after`).
///
/// Field names are the wire names; `cold_workers` is the docs'
/// "Minimum Workers" (`min_workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointPolicy {
    /// Hard cap on workers that exist (every state but destroyed). ≥ 1.
    pub max_workers: u32,
    /// Workers kept (active or stopped) even with no load; floor of the total.
    pub cold_workers: u32,
    /// Floor on the anticipated active load (perf units), `0` allows zero
    /// active workers.
    pub min_load: f64,
    /// Floor on the total (active + stopped) capacity, in perf units.
    pub min_cold_load: f64,
    /// Wanted utilisation of active capacity, in (0, 1].
    pub target_util: f64,
    /// Total capacity kept as a multiple of the demand.
    pub cold_mult: f64,
    /// Seconds of implied queue a worker may hold and still be routed to.
    pub max_queue_time: f64,
    /// Seconds a request may wait before its cost counts as demand.
    pub target_queue_time: f64,
    /// Scale-to-zero gate: `None` not applied, `0` no gate, `< 0` never
    /// scale to zero, `> 0` seconds without activity before zero.
    pub inactivity_timeout: Option<f64>,
    /// `active`, `suspended` or `stopped`.
    #[serde(rename = "endpoint_state")]
    pub state: EndpointState,
    /// Seconds a surplus worker must have carried nothing before it is
    /// stopped (scale-down hysteresis).
    pub scale_down_delay: f64,
    /// A worker whose last report is older than this (seconds) is `ERROR`;
    /// also the time a started process has to send its first report.
    pub stale_after: f64,
}

impl Default for EndpointPolicy {
    /// The engine's defaults (PROTOCOL §11.1, column "[ours] default").
    fn default() -> Self {
        EndpointPolicy {
            max_workers: 20,
            cold_workers: 5,
            min_load: 0.0,
            min_cold_load: 0.0,
            target_util: 0.9,
            cold_mult: 2.5,
            max_queue_time: 30.0,
            target_queue_time: 10.0,
            inactivity_timeout: None,
            state: EndpointState::Active,
            scale_down_delay: 5.0,
            stale_after: 30.0,
        }
    }
}

impl EndpointPolicy {
    /// The configuration tested by the Null PyWorker README (PROTOCOL §13.3)
    /// with `cold_workers = 0`, so an idle endpoint reaches zero workers.
    /// Every other parameter keeps its default.
    pub fn seed() -> Self {
        EndpointPolicy {
            cold_workers: 0,
            min_load: 0.0,
            target_util: 1.0,
            max_queue_time: 1.0,
            target_queue_time: 0.5,
            inactivity_timeout: Some(10.0),
            ..EndpointPolicy::default()
        }
    }

    /// Checks every parameter; the error names the first bad field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_workers < 1 || self.max_workers > MAX_WORKERS_LIMIT {
            return Err(PolicyError::Invalid {
                field: "max_workers",
                value: self.max_workers.to_string(),
                expected: "an integer from 1 to 100000",
            });
        }
        if self.cold_workers > self.max_workers {
            return Err(PolicyError::Invalid {
                field: "cold_workers",
                value: self.cold_workers.to_string(),
                expected: "an integer no greater than max_workers",
            });
        }
        non_negative("min_load", self.min_load, MAX_LOAD)?;
        non_negative("min_cold_load", self.min_cold_load, MAX_LOAD)?;
        if !(self.target_util.is_finite() && self.target_util > 0.0 && self.target_util <= 1.0) {
            return Err(PolicyError::Invalid {
                field: "target_util",
                value: self.target_util.to_string(),
                expected: "a number greater than 0 and at most 1",
            });
        }
        non_negative("cold_mult", self.cold_mult, MAX_LOAD)?;
        non_negative("max_queue_time", self.max_queue_time, MAX_DURATION)?;
        non_negative("target_queue_time", self.target_queue_time, MAX_DURATION)?;
        if self.target_queue_time > self.max_queue_time {
            return Err(PolicyError::Invalid {
                field: "target_queue_time",
                value: self.target_queue_time.to_string(),
                expected: "a number of seconds no greater than max_queue_time",
            });
        }
        if let Some(t) = self.inactivity_timeout {
            if !(t.is_finite() && t.abs() <= MAX_DURATION) {
                return Err(PolicyError::Invalid {
                    field: "inactivity_timeout",
                    value: t.to_string(),
                    expected: "a finite number of seconds (negative: never scale to zero)",
                });
            }
        }
        non_negative("scale_down_delay", self.scale_down_delay, MAX_DURATION)?;
        if !(self.stale_after.is_finite()
            && self.stale_after > 0.0
            && self.stale_after <= MAX_DURATION)
        {
            return Err(PolicyError::Invalid {
                field: "stale_after",
                value: self.stale_after.to_string(),
                expected: "a positive number of seconds",
            });
        }
        Ok(())
    }
}

/// Accepts finite numbers in `[0, max]`.
fn non_negative(field: &'static str, value: f64, max: f64) -> Result<(), PolicyError> {
    if value.is_finite() && value >= 0.0 && value <= max {
        Ok(())
    } else {
        Err(PolicyError::Invalid {
            field,
            value: value.to_string(),
            expected: if max == MAX_DURATION {
                "a non-negative number of seconds, at most 30 days"
            } else {
                "a non-negative finite number"
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_seed_are_valid() {
        let defaults = EndpointPolicy::default();
        defaults.validate().unwrap();
        assert_eq!(defaults.max_workers, 20);
        assert_eq!(defaults.cold_workers, 5);
        assert_eq!(defaults.target_util, 0.9);
        assert_eq!(defaults.cold_mult, 2.5);
        assert_eq!(defaults.max_queue_time, 30.0);
        assert_eq!(defaults.target_queue_time, 10.0);
        assert_eq!(defaults.inactivity_timeout, None);
        let seed = EndpointPolicy::seed();
        seed.validate().unwrap();
        assert_eq!(
            (
                seed.target_util,
                seed.min_load,
                seed.max_queue_time,
                seed.target_queue_time
            ),
            (1.0, 0.0, 1.0, 0.5)
        );
        assert_eq!(
            (seed.inactivity_timeout, seed.cold_workers),
            (Some(10.0), 0)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        type Edit = fn(&mut EndpointPolicy);
        let table: [(Edit, &str); 20] = [
            (|p| p.max_workers = 0, "max_workers"),
            (|p| p.max_workers = MAX_WORKERS_LIMIT + 1, "max_workers"),
            (|p| p.cold_workers = 21, "cold_workers"),
            (|p| p.min_load = -1.0, "min_load"),
            (|p| p.min_load = f64::NAN, "min_load"),
            (|p| p.min_cold_load = f64::INFINITY, "min_cold_load"),
            (|p| p.target_util = 0.0, "target_util"),
            (|p| p.target_util = 1.01, "target_util"),
            (|p| p.target_util = -0.5, "target_util"),
            (|p| p.target_util = f64::NAN, "target_util"),
            (|p| p.cold_mult = -2.0, "cold_mult"),
            (|p| p.max_queue_time = -1.0, "max_queue_time"),
            (|p| p.max_queue_time = 1e300, "max_queue_time"),
            (|p| p.target_queue_time = -0.1, "target_queue_time"),
            (|p| p.target_queue_time = 31.0, "target_queue_time"),
            (
                |p| p.inactivity_timeout = Some(f64::NAN),
                "inactivity_timeout",
            ),
            (
                |p| p.inactivity_timeout = Some(-1e300),
                "inactivity_timeout",
            ),
            (|p| p.scale_down_delay = -1.0, "scale_down_delay"),
            (|p| p.stale_after = 0.0, "stale_after"),
            (|p| p.stale_after = f64::NAN, "stale_after"),
        ];
        for (edit, field) in table {
            let mut policy = EndpointPolicy::default();
            edit(&mut policy);
            let err = policy.validate().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with(field) && text.contains("expected"),
                "{text}"
            );
        }
    }

    #[test]
    fn edge_values_are_accepted() {
        let ok = [
            EndpointPolicy {
                target_util: 1.0,
                max_workers: 1,
                cold_workers: 1,
                ..EndpointPolicy::default()
            },
            EndpointPolicy {
                inactivity_timeout: Some(-1.0),
                ..EndpointPolicy::default()
            },
            EndpointPolicy {
                inactivity_timeout: Some(0.0),
                max_queue_time: 0.0,
                target_queue_time: 0.0,
                ..EndpointPolicy::default()
            },
            EndpointPolicy {
                max_workers: MAX_WORKERS_LIMIT,
                scale_down_delay: 0.0,
                ..EndpointPolicy::default()
            },
        ];
        for policy in ok {
            policy.validate().unwrap();
        }
    }

    #[test]
    fn serde_uses_wire_names_and_fills_defaults() {
        let policy: EndpointPolicy =
            serde_json::from_str(r#"{"target_util": 1.0, "endpoint_state": "suspended"}"#).unwrap();
        assert_eq!(policy.target_util, 1.0);
        assert_eq!(policy.state, EndpointState::Suspended);
        assert_eq!(policy.max_workers, 20);
        let json = serde_json::to_value(EndpointPolicy::seed()).unwrap();
        assert_eq!(json["endpoint_state"], "active");
        assert_eq!(json["inactivity_timeout"], 10.0);
    }
}

/// The policy pieces played together over simulated time: clients poll
/// `/route/` as the SDK does, workers take a second to load and report
/// every tick. Checks the walk-through of `docs/engine-policy.md`.
#[cfg(test)]
mod scenario {
    use super::autoscale::{decide, ActionKind, EndpointSnapshot, WorkerView};
    use super::requests::RequestTable;
    use super::routing::{choose_worker, RouteCandidate};
    use super::*;

    const STEP: f64 = 0.25;
    const LOAD_TIME: f64 = 1.0;
    const COST: f64 = 100.0;

    struct Worker {
        id: i64,
        state: WorkerState,
        ready_at: f64,
        created_at: f64,
        idle_since: Option<f64>,
        sessions: Vec<u64>,
        reported: Vec<u64>,
    }

    struct Session {
        start: f64,
        hold: f64,
        idx: u64,
        next_poll: f64,
        held_at: Option<f64>,
        worker: Option<i64>,
        closed: bool,
    }

    struct Sim {
        policy: EndpointPolicy,
        now: f64,
        table: RequestTable,
        workers: Vec<Worker>,
        next_id: i64,
        last_activity: f64,
        max_alive: usize,
        zero_at: Option<f64>,
    }

    impl Sim {
        fn new(policy: EndpointPolicy) -> Self {
            Sim {
                policy,
                now: 0.0,
                table: RequestTable::new(),
                workers: Vec::new(),
                next_id: 1,
                last_activity: 0.0,
                max_alive: 0,
                zero_at: None,
            }
        }

        fn route(&mut self, session: &mut Session) {
            self.last_activity = self.now;
            session.idx = self.table.route(session.idx, COST, 60.0, self.now);
            let candidates: Vec<RouteCandidate> = self
                .workers
                .iter()
                .map(|w| RouteCandidate {
                    id: w.id,
                    state: w.state,
                    reported_load: COST * w.reported.len() as f64,
                    pending_cost: self.table.pending_cost(w.id),
                    max_perf: 100.0,
                })
                .collect();
            match choose_worker(&candidates, COST, &self.policy) {
                Some(id) => {
                    self.table.assign(session.idx, id, COST, self.now);
                    let worker = self.workers.iter_mut().find(|w| w.id == id).unwrap();
                    // max_sessions = 1: a second session is rejected (429).
                    if worker.sessions.is_empty() {
                        worker.sessions.push(session.idx);
                        worker.idle_since = None;
                        session.held_at = Some(self.now);
                        session.worker = Some(id);
                    } else {
                        self.table.observe_finished(id, &[session.idx]);
                        session.next_poll = self.now;
                    }
                }
                None => {
                    self.table.mark_waiting(session.idx, COST, self.now);
                    session.next_poll = self.now + 1.0;
                    self.tick();
                }
            }
        }

        fn tick(&mut self) {
            let snapshot = EndpointSnapshot {
                now: self.now,
                policy: self.policy.clone(),
                workers: self
                    .workers
                    .iter()
                    .map(|w| WorkerView {
                        load: COST * w.reported.len() as f64 + self.table.pending_cost(w.id),
                        carrying: !w.sessions.is_empty() || self.table.has_outstanding(w.id),
                        idle_since: w.idle_since,
                        max_perf: (w.state == WorkerState::Idle).then_some(100.0),
                        ..WorkerView::new(w.id, w.state, w.created_at)
                    })
                    .collect(),
                waiting: self.table.waiting().collect(),
                last_activity: self.last_activity,
                last_perf: Some(100.0),
            };
            let decision = decide(&snapshot);
            self.last_activity = decision.last_activity;
            for action in decision.actions {
                match action.kind {
                    ActionKind::Create => {
                        self.workers.push(Worker {
                            id: self.next_id,
                            state: WorkerState::Loading,
                            ready_at: self.now + LOAD_TIME,
                            created_at: self.now,
                            idle_since: None,
                            sessions: Vec::new(),
                            reported: Vec::new(),
                        });
                        self.next_id += 1;
                    }
                    ActionKind::Start { worker } => {
                        let w = self.workers.iter_mut().find(|w| w.id == worker).unwrap();
                        w.state = WorkerState::Starting;
                        w.ready_at = self.now + LOAD_TIME;
                    }
                    ActionKind::Stop { worker } => {
                        let w = self.workers.iter_mut().find(|w| w.id == worker).unwrap();
                        assert!(w.sessions.is_empty(), "stopped a worker holding a session");
                        w.state = WorkerState::Stopped;
                        w.idle_since = None;
                    }
                    ActionKind::Destroy { worker } => {
                        let w = self.workers.iter().find(|w| w.id == worker).unwrap();
                        assert!(
                            w.sessions.is_empty(),
                            "destroyed a worker holding a session"
                        );
                        self.workers.retain(|w| w.id != worker);
                        self.table.forget_worker(worker);
                    }
                }
            }
            let alive = self.workers.len();
            assert!(alive <= self.policy.max_workers as usize);
            self.max_alive = self.max_alive.max(alive);
        }

        /// Runs until `end`, returning the sessions as they ended up.
        fn run(&mut self, mut sessions: Vec<Session>, end: f64) -> Vec<Session> {
            let mut next_tick = 0.0;
            while self.now <= end {
                for w in &mut self.workers {
                    if matches!(w.state, WorkerState::Loading | WorkerState::Starting)
                        && self.now >= w.ready_at
                    {
                        w.state = WorkerState::Idle;
                        w.idle_since = Some(self.now);
                    }
                }
                for s in sessions.iter_mut() {
                    if s.closed || self.now < s.start {
                        continue;
                    }
                    match s.held_at {
                        Some(at) if self.now >= at + s.hold => {
                            let w = self
                                .workers
                                .iter_mut()
                                .find(|w| Some(w.id) == s.worker)
                                .unwrap();
                            w.sessions.retain(|&i| i != s.idx);
                            if w.sessions.is_empty() {
                                w.idle_since = Some(self.now);
                            }
                            s.closed = true;
                        }
                        Some(_) => {}
                        None if self.now >= s.next_poll => self.route(s),
                        None => {}
                    }
                }
                // Reports: each worker tells its sessions.
                for w in &mut self.workers {
                    w.reported = w.sessions.clone();
                    self.table.observe_report(w.id, &w.reported, self.now);
                }
                if self.now >= next_tick {
                    self.tick();
                    next_tick += 1.0;
                }
                if self.workers.is_empty()
                    && self.zero_at.is_none()
                    && sessions.iter().all(|s| s.closed)
                {
                    self.zero_at = Some(self.now);
                }
                self.now += STEP;
            }
            sessions
        }
    }

    fn session(start: f64, hold: f64) -> Session {
        Session {
            start,
            hold,
            idx: 0,
            next_poll: start,
            held_at: None,
            worker: None,
            closed: false,
        }
    }

    #[test]
    fn seed_three_concurrent_sessions_get_three_workers_then_zero() {
        let mut sim = Sim::new(EndpointPolicy::seed());
        let sessions = sim.run(
            vec![session(0.0, 20.0), session(0.0, 20.0), session(0.0, 20.0)],
            40.0,
        );
        assert_eq!(sim.max_alive, 3);
        let mut workers: Vec<_> = sessions.iter().map(|s| s.worker.unwrap()).collect();
        workers.sort();
        workers.dedup();
        assert_eq!(workers.len(), 3);
        for s in &sessions {
            // Worker loads in 1 s; the client re-polls 1 s after WAITING.
            assert!(s.held_at.unwrap() <= 1.0, "held at {:?}", s.held_at);
        }
        // Closed at ~21 s; one worker kept until 10 s without activity.
        let zero = sim.zero_at.expect("reached zero workers");
        assert!((30.0..=33.0).contains(&zero), "zero at {zero}");
    }

    #[test]
    fn seed_second_session_scales_up_after_target_queue_time() {
        let mut sim = Sim::new(EndpointPolicy::seed());
        let sessions = sim.run(vec![session(0.0, 30.0), session(5.0, 10.0)], 50.0);
        assert_eq!(sim.max_alive, 2);
        assert_ne!(sessions[0].worker, sessions[1].worker);
        let waited = sessions[1].held_at.unwrap() - 5.0;
        assert!((0.5..=2.5).contains(&waited), "waited {waited}");
        assert!(sim.zero_at.is_some());
    }

    #[test]
    fn seed_at_max_workers_a_session_waits_for_a_free_worker() {
        let mut sim = Sim::new(EndpointPolicy {
            max_workers: 2,
            ..EndpointPolicy::seed()
        });
        let sessions = sim.run(
            vec![session(0.0, 5.0), session(0.0, 30.0), session(0.5, 10.0)],
            60.0,
        );
        assert_eq!(sim.max_alive, 2);
        let first_end = sessions[0].held_at.unwrap() + 5.0;
        // Whichever of the two waiting sessions polls first after the
        // first one ends takes its worker.
        let last = sessions
            .iter()
            .max_by(|a, b| a.held_at.unwrap().total_cmp(&b.held_at.unwrap()))
            .unwrap();
        let third = last.held_at.unwrap();
        assert!(
            third >= first_end && third <= first_end + 1.5,
            "last held at {third}, first ended {first_end}"
        );
        assert_eq!(last.worker, sessions[0].worker);
    }
}
