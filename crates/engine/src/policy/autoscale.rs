//! The autoscaling decision (PROTOCOL §12.5, refined in
//! `docs/engine-policy.md`): from a snapshot of one endpoint to the workers
//! it wants and the actions that get it there.
//!
//! [`decide`] is pure: the runtime's scaler loop builds an
//! [`EndpointSnapshot`] every tick (and after a WAITING answer), calls it,
//! stores [`Decision::last_activity`] back, and carries out and logs each
//! [`Action`] with its [`ScaleReason`]. Nothing here spawns or signals a
//! process.

use std::fmt;

use super::{EndpointPolicy, EndpointState, WorkerState};

/// Perf units per second assumed for a worker when none was ever measured
/// on the endpoint (the null worker's pinned `max_perf`).
pub const DEFAULT_PERF: f64 = 100.0;

/// Subtracted before rounding a worker count up, so that exact multiples
/// (100 / 1.0 / 100 = 1) are not pushed to the next integer by rounding.
const ROUNDING_SLACK: f64 = 1e-9;

/// One worker as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// Worker id.
    pub id: i64,
    /// Derived state.
    pub state: WorkerState,
    /// `L(w)`: last reported `cur_load` plus pending assignments.
    pub load: f64,
    /// Holds work: `load > 0`, an outstanding assignment, or a non-empty
    /// `working_request_idxs`. A carrying worker is never stopped or
    /// destroyed, unless it is in `ERROR`.
    pub carrying: bool,
    /// Since when the worker has been `IDLE` and carrying nothing; `None` if
    /// it is not.
    pub idle_since: Option<f64>,
    /// When the worker was last seen loaded (became `IDLE`).
    pub loaded_at: Option<f64>,
    /// When the worker was stopped, if it is `STOPPING` or `STOPPED`.
    pub stopped_at: Option<f64>,
    /// When the engine decided to create the worker (or first heard of it).
    pub created_at: f64,
    /// Last reported `max_perf`, if it reported a positive one.
    pub max_perf: Option<f64>,
    /// Not launched by the engine (registered by its reports): counted as
    /// capacity and routed to, but never started, stopped or destroyed.
    pub external: bool,
}

impl WorkerView {
    /// A worker in `state`, created at `created_at`, carrying nothing, with
    /// every optional fact unknown. Set the other fields as needed.
    pub fn new(id: i64, state: WorkerState, created_at: f64) -> Self {
        WorkerView {
            id,
            state,
            load: 0.0,
            carrying: false,
            idle_since: None,
            loaded_at: None,
            stopped_at: None,
            created_at,
            max_perf: None,
            external: false,
        }
    }
}

/// Everything [`decide`] looks at for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// The time of the decision (epoch seconds).
    pub now: f64,
    /// The endpoint's parameters and state.
    pub policy: EndpointPolicy,
    /// Every worker not yet forgotten, any state.
    pub workers: Vec<WorkerView>,
    /// `(cost, since)` of every waiting request
    /// ([`super::requests::RequestTable::waiting`]).
    pub waiting: Vec<(f64, f64)>,
    /// Last activity for `inactivity_timeout`: the endpoint's creation, the
    /// latest `/route/` call, or the latest [`Decision::last_activity`].
    pub last_activity: f64,
    /// The last `max_perf` seen on this endpoint, kept after its workers
    /// are gone.
    pub last_perf: Option<f64>,
}

impl EndpointSnapshot {
    /// A snapshot with no worker, no waiting request, and activity `now`.
    pub fn new(now: f64, policy: EndpointPolicy) -> Self {
        EndpointSnapshot {
            now,
            policy,
            workers: Vec::new(),
            waiting: Vec::new(),
            last_activity: now,
            last_perf: None,
        }
    }
}

/// Why an action is taken; `as_str` is a stable metrics label, `Display` a
/// sentence for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScaleReason {
    /// Requests wait and no worker is active.
    ScaleFromZero,
    /// Load plus queued requests exceed the active capacity.
    DemandAbove,
    /// `min_load` asks for more active capacity.
    BelowMinLoad,
    /// `inactivity_timeout < 0`: one worker is always kept active.
    NeverScaleToZero,
    /// A worker in `ERROR` is destroyed; the work it carried asks for a
    /// replacement, or the endpoint is within its inactivity window.
    ErrorReplaced,
    /// An active worker carried nothing for `scale_down_delay` and is
    /// beyond what demand (and the inactivity window) asks for.
    Idle,
    /// A stopped worker is beyond `cold_workers`, `min_cold_load` and
    /// demand × `cold_mult`.
    Surplus,
    /// More workers exist than `max_workers` allows (it was lowered).
    AboveMaxWorkers,
    /// The endpoint is `stopped`.
    EndpointStopped,
}

impl ScaleReason {
    /// Every reason (for pre-registering metrics labels).
    pub const ALL: [ScaleReason; 9] = [
        ScaleReason::ScaleFromZero,
        ScaleReason::DemandAbove,
        ScaleReason::BelowMinLoad,
        ScaleReason::NeverScaleToZero,
        ScaleReason::ErrorReplaced,
        ScaleReason::Idle,
        ScaleReason::Surplus,
        ScaleReason::AboveMaxWorkers,
        ScaleReason::EndpointStopped,
    ];

    /// A stable snake_case label, e.g. `"scale_from_zero"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleReason::ScaleFromZero => "scale_from_zero",
            ScaleReason::DemandAbove => "demand_above",
            ScaleReason::BelowMinLoad => "below_min_load",
            ScaleReason::NeverScaleToZero => "never_scale_to_zero",
            ScaleReason::ErrorReplaced => "error_replaced",
            ScaleReason::Idle => "idle",
            ScaleReason::Surplus => "surplus",
            ScaleReason::AboveMaxWorkers => "above_max_workers",
            ScaleReason::EndpointStopped => "endpoint_stopped",
        }
    }
}

impl fmt::Display for ScaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScaleReason::ScaleFromZero => "requests are waiting and no worker is active",
            ScaleReason::DemandAbove => "demand is above the active capacity",
            ScaleReason::BelowMinLoad => "active capacity is below min_load",
            ScaleReason::NeverScaleToZero => "inactivity_timeout < 0 keeps one worker active",
            ScaleReason::ErrorReplaced => "worker is in ERROR",
            ScaleReason::Idle => "worker carried nothing for scale_down_delay and is not needed",
            ScaleReason::Surplus => "stopped worker is beyond the cold capacity wanted",
            ScaleReason::AboveMaxWorkers => "more workers than max_workers",
            ScaleReason::EndpointStopped => "endpoint is stopped",
        })
    }
}

/// What to do to one worker (or a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// Launch a new worker.
    Create,
    /// Start a `STOPPED` worker again.
    Start {
        /// Worker id.
        worker: i64,
    },
    /// Stop a worker and keep it as cold capacity (`STOPPING`, then
    /// `STOPPED`). May target any active state: a `CREATING` worker is then
    /// simply not spawned.
    Stop {
        /// Worker id.
        worker: i64,
    },
    /// Terminate a worker for good (`DESTROYING`, then forgotten).
    Destroy {
        /// Worker id.
        worker: i64,
    },
}

/// One action and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action {
    /// What to do.
    pub kind: ActionKind,
    /// Why.
    pub reason: ScaleReason,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ActionKind::Create => write!(f, "create a worker: {}", self.reason),
            ActionKind::Start { worker } => write!(f, "start worker {worker}: {}", self.reason),
            ActionKind::Stop { worker } => write!(f, "stop worker {worker}: {}", self.reason),
            ActionKind::Destroy { worker } => write!(f, "destroy worker {worker}: {}", self.reason),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Active workers wanted (after the inactivity floor and the
    /// `max_workers` clamp).
    pub want_active: u32,
    /// Workers wanted in total, active and stopped
    /// (`want_active ≤ want_total ≤ max_workers`).
    pub want_total: u32,
    /// `load + queued + lost` in perf units.
    pub demand: f64,
    /// Σ `L(w)` over active workers.
    pub load: f64,
    /// Σ cost of waiting requests counted as demand: all of them once the
    /// oldest has waited `target_queue_time`, or at once while no worker is
    /// ready and they exceed what the workers on their way can take; else 0.
    pub queued: f64,
    /// Σ load of `ERROR` workers that carried work (their clients will come
    /// back).
    pub lost: f64,
    /// `P`: the perf units per second of one worker used for the counts.
    pub perf: f64,
    /// The endpoint's last activity after this tick: `now` if any worker
    /// carries work or a request waits, else the snapshot's. Store it and
    /// pass it in the next snapshot.
    pub last_activity: f64,
    /// What to do, in order: destroy broken workers, then scale up or down.
    pub actions: Vec<Action>,
}

impl Decision {
    /// The action kinds taken for `worker`.
    pub fn actions_for(&self, worker: i64) -> impl Iterator<Item = &Action> + '_ {
        self.actions.iter().filter(move |action| match action.kind {
            ActionKind::Create => false,
            ActionKind::Start { worker: w }
            | ActionKind::Stop { worker: w }
            | ActionKind::Destroy { worker: w } => w == worker,
        })
    }

    /// Number of `Create` actions.
    pub fn creates(&self) -> usize {
        self.actions
            .iter()
            .filter(|action| action.kind == ActionKind::Create)
            .count()
    }
}

/// `P`: the median positive `max_perf` over every worker of the snapshot
/// (any state, so that state changes do not move it), else `last_perf`,
/// else [`DEFAULT_PERF`].
pub fn endpoint_perf(workers: &[WorkerView], last_perf: Option<f64>) -> f64 {
    let mut perfs: Vec<f64> = workers
        .iter()
        .filter_map(|w| w.max_perf)
        .filter(|p| p.is_finite() && *p > 0.0)
        .collect();
    if perfs.is_empty() {
        return match last_perf {
            Some(p) if p.is_finite() && p > 0.0 => p,
            _ => DEFAULT_PERF,
        };
    }
    perfs.sort_by(f64::total_cmp);
    let mid = perfs.len() / 2;
    if perfs.len() % 2 == 1 {
        perfs[mid]
    } else {
        (perfs[mid - 1] + perfs[mid]) / 2.0
    }
}

/// ⌈`capacity / perf` − slack⌉ as a worker count, saturating; never
/// negative.
fn workers_for(capacity: f64, perf: f64) -> u32 {
    let count = (capacity / perf - ROUNDING_SLACK).ceil();
    if count.is_nan() || count <= 0.0 {
        0
    } else if count >= u32::MAX as f64 {
        u32::MAX
    } else {
        count as u32
    }
}

/// A finite non-negative value, else 0 (bad input never poisons the sums).
fn sane(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

/// Decides what one endpoint wants and the actions that get it there. See
/// the module documentation and `docs/engine-policy.md`.
///
/// Guarantees, for any snapshot:
/// * no action targets an external worker, and no `Stop` or `Destroy`
///   targets a carrying worker unless it is in `ERROR`;
/// * creates never bring the workers that exist (every state but
///   `DESTROYING`, minus those destroyed now) above `max_workers`;
/// * `suspended` ⇒ no action; `stopped` ⇒ only stops of workers that carry
///   nothing and destroys of `ERROR` workers;
/// * deciding again on the snapshot with the actions applied yields no
///   `Create` or `Start`.
pub fn decide(snapshot: &EndpointSnapshot) -> Decision {
    let policy = &snapshot.policy;
    let now = snapshot.now;
    let workers = &snapshot.workers;
    let perf = endpoint_perf(workers, snapshot.last_perf);

    let active: Vec<&WorkerView> = workers.iter().filter(|w| w.state.is_active()).collect();
    let active_count = u32::try_from(active.len()).unwrap_or(u32::MAX);
    let load: f64 = active.iter().map(|w| sane(w.load)).sum();
    let lost: f64 = workers
        .iter()
        .filter(|w| w.state == WorkerState::Error && w.carrying)
        .map(|w| sane(w.load))
        .sum();
    let oldest_wait = snapshot
        .waiting
        .iter()
        .map(|&(_, since)| since)
        .reduce(f64::min);
    let target_util = if policy.target_util > 0.0 {
        policy.target_util
    } else {
        1.0
    };
    let waiting_cost: f64 = snapshot.waiting.iter().map(|&(cost, _)| sane(cost)).sum();
    // Cold start: with no worker ready yet, requests the workers on their
    // way cannot absorb count at once (each WAITING answer of a burst from
    // zero adds its worker); otherwise they count after target_queue_time.
    let ready = active.iter().any(|w| w.state == WorkerState::Idle);
    let coming: f64 = active
        .iter()
        .filter(|w| w.state != WorkerState::Idle)
        .map(|w| (perf * target_util - sane(w.load)).max(0.0))
        .sum();
    let queue_counts = match oldest_wait {
        Some(since) => (!ready && waiting_cost > coming) || now - since >= policy.target_queue_time,
        None => false,
    };
    let queued = if queue_counts { waiting_cost } else { 0.0 };
    let demand = load + queued + lost;

    // Activity: a carrying worker or a waiting request keeps the endpoint
    // active, so a held session is never ended by `inactivity_timeout`.
    let busy = !snapshot.waiting.is_empty()
        || workers
            .iter()
            .any(|w| w.carrying && w.state != WorkerState::Error);
    let last_activity = if busy {
        now.max(snapshot.last_activity)
    } else {
        snapshot.last_activity
    };

    let by_demand = workers_for(demand / target_util, perf);
    let by_min_load = workers_for(sane(policy.min_load) / target_util, perf);
    let has_worker = active_count > 0 || workers.iter().any(|w| w.state == WorkerState::Error);
    let floor = match policy.inactivity_timeout {
        Some(t) if t < 0.0 => 1,
        Some(t) if t > 0.0 && has_worker && now - last_activity < t => 1,
        // A waiting request always deserves a worker, even before it
        // counts as demand: never scale to zero under it.
        _ if !snapshot.waiting.is_empty() => 1,
        _ => 0,
    };
    let max_workers = policy.max_workers.max(1);
    let want_active = by_demand.max(by_min_load).max(floor).min(max_workers);
    let by_cold = workers_for(
        sane(policy.min_cold_load).max(demand * sane(policy.cold_mult)),
        perf,
    );
    let want_total = want_active
        .max(policy.cold_workers)
        .max(by_cold)
        .min(max_workers);

    let mut decision = Decision {
        want_active,
        want_total,
        demand,
        load,
        queued,
        lost,
        perf,
        last_activity,
        actions: Vec::new(),
    };

    if policy.state == EndpointState::Suspended {
        return decision;
    }

    if policy.state == EndpointState::Stopped {
        decision.want_active = 0;
    }
    let actions = &mut decision.actions;
    // 1. Broken workers go, whatever they carry: they are never routed to
    //    and their error is sticky.
    for w in workers
        .iter()
        .filter(|w| w.state == WorkerState::Error && !w.external)
    {
        actions.push(Action {
            kind: ActionKind::Destroy { worker: w.id },
            reason: ScaleReason::ErrorReplaced,
        });
    }
    let destroyed_errors = actions.len();

    if policy.state == EndpointState::Stopped {
        for w in &active {
            if !w.external && !w.carrying {
                actions.push(Action {
                    kind: ActionKind::Stop { worker: w.id },
                    reason: ScaleReason::EndpointStopped,
                });
            }
        }
        return decision;
    }

    // Workers that exist: every state but DESTROYING, minus those destroyed
    // just above.
    let existing = workers
        .iter()
        .filter(|w| w.state != WorkerState::Destroying)
        .count()
        .saturating_sub(destroyed_errors);
    let mut total = u32::try_from(existing).unwrap_or(u32::MAX);

    let mut stopped: Vec<&WorkerView> = workers
        .iter()
        .filter(|w| w.state == WorkerState::Stopped && !w.external && !w.carrying)
        .collect();

    if active_count < want_active {
        // 2. Scale up: restart stopped workers (most recently loaded first),
        //    then create, within max_workers.
        // One reason for every start and create: what asked for them.
        let reason = if !ready && queued > 0.0 {
            ScaleReason::ScaleFromZero
        } else if by_min_load >= by_demand.max(floor) && by_min_load > active_count {
            ScaleReason::BelowMinLoad
        } else if by_demand > active_count {
            if lost > 0.0 && queued == 0.0 {
                ScaleReason::ErrorReplaced
            } else {
                ScaleReason::DemandAbove
            }
        } else if !snapshot.waiting.is_empty() && active_count == 0 {
            ScaleReason::ScaleFromZero
        } else if matches!(policy.inactivity_timeout, Some(t) if t < 0.0) {
            ScaleReason::NeverScaleToZero
        } else {
            ScaleReason::ErrorReplaced
        };
        let mut missing = want_active - active_count;
        stopped.sort_by(|a, b| {
            b.loaded_at
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.loaded_at.unwrap_or(f64::NEG_INFINITY))
                .then(b.id.cmp(&a.id))
        });
        let restart = (missing as usize).min(stopped.len());
        for w in stopped.drain(..restart) {
            actions.push(Action {
                kind: ActionKind::Start { worker: w.id },
                reason,
            });
        }
        missing -= restart as u32;
        let room = max_workers.saturating_sub(total);
        for _ in 0..missing.min(room) {
            actions.push(Action {
                kind: ActionKind::Create,
                reason,
            });
        }
        total += missing.min(room);
    }

    // 3. Scale down: idle active workers beyond want_active, newest first.
    let mut to_stop: Vec<&WorkerView> = Vec::new();
    // Never while requests wait: an idle worker is about to take them.
    if active_count > want_active && snapshot.waiting.is_empty() {
        let mut idle: Vec<&WorkerView> = active
            .iter()
            .copied()
            .filter(|w| {
                w.state == WorkerState::Idle
                    && !w.external
                    && !w.carrying
                    && w.idle_since
                        .is_some_and(|since| now - since >= policy.scale_down_delay)
            })
            .collect();
        idle.sort_by(|a, b| b.created_at.total_cmp(&a.created_at).then(b.id.cmp(&a.id)));
        idle.truncate((active_count - want_active) as usize);
        to_stop = idle;
    }

    // 4. Too many workers in total: destroy stopped ones (oldest stop
    //    first), then destroy rather than stop the idle ones of step 3.
    let mut excess = total.saturating_sub(want_total);
    let surplus_reason = if total > max_workers {
        ScaleReason::AboveMaxWorkers
    } else {
        ScaleReason::Surplus
    };
    stopped.sort_by(|a, b| {
        a.stopped_at
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&b.stopped_at.unwrap_or(f64::NEG_INFINITY))
            .then(a.id.cmp(&b.id))
    });
    for w in stopped {
        if excess == 0 {
            break;
        }
        actions.push(Action {
            kind: ActionKind::Destroy { worker: w.id },
            reason: surplus_reason,
        });
        excess -= 1;
    }
    let idle_reason = if active_count > max_workers {
        ScaleReason::AboveMaxWorkers
    } else {
        ScaleReason::Idle
    };
    for w in to_stop {
        let kind = if excess > 0 {
            excess -= 1;
            ActionKind::Destroy { worker: w.id }
        } else {
            ActionKind::Stop { worker: w.id }
        };
        actions.push(Action {
            kind,
            reason: idle_reason,
        });
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: f64 = 10_000.0;

    fn snapshot(policy: EndpointPolicy) -> EndpointSnapshot {
        EndpointSnapshot {
            last_activity: NOW - 1_000.0,
            ..EndpointSnapshot::new(NOW, policy)
        }
    }

    /// A loaded `IDLE` worker that has carried nothing for `idle_for` s.
    fn idle(id: i64, idle_for: f64) -> WorkerView {
        WorkerView {
            idle_since: Some(NOW - idle_for),
            loaded_at: Some(NOW - idle_for - 1.0),
            max_perf: Some(100.0),
            ..WorkerView::new(
                id,
                WorkerState::Idle,
                NOW - idle_for - 2.0 + id as f64 * 1e-3,
            )
        }
    }

    /// A loaded `IDLE` worker carrying `load` (a held session).
    fn busy(id: i64, load: f64) -> WorkerView {
        WorkerView {
            load,
            carrying: true,
            idle_since: None,
            ..idle(id, 0.0)
        }
    }

    fn stopped(id: i64, stopped_at: f64, loaded_at: f64) -> WorkerView {
        WorkerView {
            stopped_at: Some(stopped_at),
            loaded_at: Some(loaded_at),
            max_perf: Some(100.0),
            ..WorkerView::new(id, WorkerState::Stopped, loaded_at - 1.0)
        }
    }

    fn in_state(id: i64, state: WorkerState) -> WorkerView {
        WorkerView::new(id, state, NOW - 1.0)
    }

    fn kinds(decision: &Decision) -> Vec<ActionKind> {
        decision.actions.iter().map(|a| a.kind).collect()
    }

    fn reasons(decision: &Decision) -> Vec<ScaleReason> {
        decision.actions.iter().map(|a| a.reason).collect()
    }

    #[test]
    fn seed_scales_from_zero_one_worker_per_waiting_session() {
        for n in [1usize, 3, 7] {
            let mut s = snapshot(EndpointPolicy::seed());
            s.waiting = vec![(100.0, NOW); n];
            let d = decide(&s);
            assert_eq!(d.creates(), n);
            assert_eq!(d.want_active, n as u32);
            assert_eq!(d.queued, 100.0 * n as f64);
            assert!(reasons(&d).iter().all(|r| *r == ScaleReason::ScaleFromZero));
            assert_eq!(d.last_activity, NOW);
        }
    }

    #[test]
    fn a_waiting_request_of_cost_zero_still_gets_a_worker() {
        let mut s = snapshot(EndpointPolicy::seed());
        s.waiting = vec![(0.0, NOW)];
        let d = decide(&s);
        assert_eq!((d.demand, d.want_active), (0.0, 1));
        assert_eq!(reasons(&d), vec![ScaleReason::ScaleFromZero]);
        // And the worker it has is not stopped under it.
        s.workers = vec![idle(1, 60.0)];
        assert!(decide(&s).actions.is_empty());
        // Nor any idle worker, while requests wait.
        s.policy.inactivity_timeout = None;
        s.workers = vec![
            idle(1, 60.0),
            idle(2, 60.0),
            in_state(3, WorkerState::Loading),
        ];
        assert!(decide(&s).actions.is_empty());
    }

    #[test]
    fn queued_requests_count_once_they_waited_target_queue_time() {
        let mut s = snapshot(EndpointPolicy::seed());
        s.workers = vec![busy(1, 100.0)];
        s.waiting = vec![(100.0, NOW - 0.4)];
        let d = decide(&s);
        assert_eq!((d.queued, d.want_active, d.creates()), (0.0, 1, 0));
        s.waiting = vec![(100.0, NOW - 0.5)];
        let d = decide(&s);
        assert_eq!((d.queued, d.demand, d.want_active), (100.0, 200.0, 2));
        assert_eq!(kinds(&d), vec![ActionKind::Create]);
        assert_eq!(reasons(&d), vec![ScaleReason::DemandAbove]);
    }

    #[test]
    fn target_util_gives_headroom() {
        // Defaults: one session of 100 on a 100-perf worker wants 2 active.
        let mut s = snapshot(EndpointPolicy::default());
        s.workers = vec![busy(1, 100.0)];
        let d = decide(&s);
        assert_eq!(d.want_active, 2);
        assert_eq!(kinds(&d), vec![ActionKind::Create]);
        // Nine sessions want ten, ten want twelve (⌈1.11 N⌉).
        let mut s = snapshot(EndpointPolicy::default());
        s.workers = (1..=9).map(|id| busy(id, 100.0)).collect();
        assert_eq!(decide(&s).want_active, 10);
        s.workers = (1..=10).map(|id| busy(id, 100.0)).collect();
        assert_eq!(decide(&s).want_active, 12);
    }

    #[test]
    fn idle_workers_go_after_scale_down_delay_newest_first() {
        let mut policy = EndpointPolicy::seed();
        policy.inactivity_timeout = None;
        let mut s = snapshot(policy);
        s.workers = vec![busy(1, 100.0), idle(2, 4.0), idle(3, 6.0), idle(4, 6.0)];
        let d = decide(&s);
        assert_eq!(d.want_active, 1);
        assert_eq!(d.want_total, 3); // ⌈100 × 2.5 / 100⌉
                                     // Worker 2 has not been idle long enough; 4 is newer than 3. Four
                                     // workers exceed want_total by one, so the newest goes for good and
                                     // the other is kept as cold capacity.
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Destroy { worker: 4 },
                ActionKind::Stop { worker: 3 }
            ]
        );
        assert!(reasons(&d).iter().all(|r| *r == ScaleReason::Idle));
    }

    #[test]
    fn surplus_idle_workers_are_destroyed_directly_when_no_cold_capacity_is_wanted() {
        // Seed: three sessions closed 6 s ago, activity 6 s ago: the
        // inactivity window keeps one active, want_total is 1.
        let mut s = snapshot(EndpointPolicy::seed());
        s.last_activity = NOW - 6.0;
        s.workers = vec![idle(1, 6.0), idle(2, 6.0), idle(3, 6.0)];
        let d = decide(&s);
        assert_eq!((d.want_active, d.want_total), (1, 1));
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Destroy { worker: 3 },
                ActionKind::Destroy { worker: 2 }
            ]
        );
        // 10 s after the last activity, the last one goes too: zero.
        s.last_activity = NOW - 10.0;
        s.workers = vec![idle(1, 10.0)];
        let d = decide(&s);
        assert_eq!((d.want_active, d.want_total), (0, 0));
        assert_eq!(kinds(&d), vec![ActionKind::Destroy { worker: 1 }]);
    }

    #[test]
    fn stopped_workers_are_restarted_most_recently_loaded_first() {
        let mut s = snapshot(EndpointPolicy::seed());
        s.workers = vec![
            stopped(1, NOW - 5.0, NOW - 50.0),
            stopped(2, NOW - 9.0, NOW - 20.0),
        ];
        s.waiting = vec![(100.0, NOW)];
        let d = decide(&s);
        // One start; the other stays stopped (want_total = ⌈100 × 2.5 / 100⌉).
        assert_eq!(d.want_total, 3);
        assert_eq!(kinds(&d), vec![ActionKind::Start { worker: 2 }]);
        assert_eq!(reasons(&d), vec![ScaleReason::ScaleFromZero]);
        // With cold_mult 0 it is beyond want_total and goes.
        s.policy.cold_mult = 0.0;
        let d = decide(&s);
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Start { worker: 2 },
                ActionKind::Destroy { worker: 1 }
            ]
        );
        assert_eq!(
            reasons(&d),
            vec![ScaleReason::ScaleFromZero, ScaleReason::Surplus]
        );
        s.policy.cold_mult = 2.5;
        // Need more than are stopped: start all, create the rest.
        s.waiting = vec![(100.0, NOW); 3];
        let d = decide(&s);
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Start { worker: 2 },
                ActionKind::Start { worker: 1 },
                ActionKind::Create
            ]
        );
    }

    #[test]
    fn stopped_workers_beyond_want_total_are_destroyed_oldest_stop_first() {
        let policy = EndpointPolicy {
            cold_workers: 1,
            ..EndpointPolicy::seed()
        };
        let mut s = snapshot(policy);
        s.workers = vec![
            stopped(1, NOW - 5.0, NOW - 60.0),
            stopped(2, NOW - 1.0, NOW - 60.0),
            stopped(3, NOW - 3.0, NOW - 60.0),
        ];
        let d = decide(&s);
        assert_eq!((d.want_active, d.want_total), (0, 1));
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Destroy { worker: 1 },
                ActionKind::Destroy { worker: 3 }
            ]
        );
    }

    #[test]
    fn cold_capacity_follows_cold_workers_min_cold_load_and_cold_mult() {
        let base = EndpointPolicy {
            target_util: 1.0,
            cold_workers: 0,
            cold_mult: 1.0,
            ..EndpointPolicy::default()
        };
        let cases = [
            (
                EndpointPolicy {
                    cold_workers: 4,
                    ..base.clone()
                },
                4,
            ),
            (
                EndpointPolicy {
                    min_cold_load: 550.0,
                    ..base.clone()
                },
                6,
            ),
            (
                EndpointPolicy {
                    cold_mult: 4.0,
                    ..base.clone()
                },
                8,
            ),
            (
                EndpointPolicy {
                    cold_mult: 0.0,
                    ..base.clone()
                },
                2,
            ),
            (
                EndpointPolicy {
                    cold_workers: 30,
                    max_workers: 30,
                    ..base.clone()
                },
                30,
            ),
            (
                EndpointPolicy {
                    cold_mult: 100.0,
                    max_workers: 7,
                    ..base.clone()
                },
                7,
            ),
        ];
        for (policy, want_total) in cases {
            let mut s = snapshot(policy);
            s.workers = vec![busy(1, 100.0), busy(2, 100.0)];
            let d = decide(&s);
            assert_eq!(d.want_active, 2);
            assert_eq!(d.want_total, want_total, "{:?}", s.policy);
            // Cold capacity is not pre-created.
            assert!(d.actions.is_empty());
        }
    }

    #[test]
    fn max_workers_caps_creates() {
        let policy = EndpointPolicy {
            max_workers: 2,
            ..EndpointPolicy::seed()
        };
        let mut s = snapshot(policy);
        s.waiting = vec![(100.0, NOW); 5];
        let d = decide(&s);
        assert_eq!((d.want_active, d.creates()), (2, 2));
        // Both busy: the third session waits, nothing is created.
        s.workers = vec![busy(1, 100.0), busy(2, 100.0)];
        s.waiting = vec![(100.0, NOW - 30.0)];
        let d = decide(&s);
        assert_eq!(d.want_active, 2);
        assert!(d.actions.is_empty());
        // A stopped or broken worker still counts until it is destroyed.
        s.workers = vec![busy(1, 100.0), stopped(2, NOW - 1.0, NOW - 9.0)];
        let d = decide(&s);
        assert_eq!(kinds(&d), vec![ActionKind::Start { worker: 2 }]);
        s.workers = vec![busy(1, 100.0), in_state(2, WorkerState::Stopping)];
        assert!(decide(&s).actions.is_empty());
        s.workers = vec![busy(1, 100.0), in_state(2, WorkerState::Error)];
        assert_eq!(
            kinds(&decide(&s)),
            vec![ActionKind::Destroy { worker: 2 }, ActionKind::Create]
        );
    }

    #[test]
    fn lowering_max_workers_sheds_idle_workers() {
        let policy = EndpointPolicy {
            max_workers: 2,
            ..EndpointPolicy::seed()
        };
        let mut s = snapshot(policy);
        s.last_activity = NOW - 1.0;
        s.workers = vec![busy(1, 100.0), idle(2, 6.0), idle(3, 6.0), idle(4, 6.0)];
        let d = decide(&s);
        assert_eq!((d.want_active, d.want_total), (1, 2));
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Destroy { worker: 4 },
                ActionKind::Destroy { worker: 3 },
                ActionKind::Stop { worker: 2 }
            ]
        );
        assert!(reasons(&d)
            .iter()
            .all(|r| *r == ScaleReason::AboveMaxWorkers));
    }

    #[test]
    fn carrying_and_unloaded_workers_are_never_stopped() {
        let mut policy = EndpointPolicy::seed();
        policy.inactivity_timeout = Some(0.0);
        let mut s = snapshot(policy);
        let mut assigned = idle(2, 100.0);
        assigned.carrying = true; // an assignment not yet in its reports
        s.workers = vec![
            busy(1, 100.0),
            assigned,
            in_state(3, WorkerState::Creating),
            in_state(4, WorkerState::Loading),
            in_state(5, WorkerState::ModelLoading),
            in_state(6, WorkerState::Starting),
        ];
        let d = decide(&s);
        assert_eq!(d.want_active, 1);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
    }

    #[test]
    fn error_workers_are_destroyed_and_replaced_when_needed() {
        // Carrying work when it broke: its clients will come back.
        let mut s = snapshot(EndpointPolicy::seed());
        let mut broken = busy(1, 100.0);
        broken.state = WorkerState::Error;
        s.workers = vec![broken.clone()];
        let d = decide(&s);
        assert_eq!(d.lost, 100.0);
        assert_eq!(
            kinds(&d),
            vec![ActionKind::Destroy { worker: 1 }, ActionKind::Create]
        );
        assert_eq!(reasons(&d), vec![ScaleReason::ErrorReplaced; 2]);
        // Idle when it broke, inside the inactivity window: replaced.
        s.workers = vec![in_state(1, WorkerState::Error)];
        s.last_activity = NOW - 2.0;
        let d = decide(&s);
        assert_eq!(
            kinds(&d),
            vec![ActionKind::Destroy { worker: 1 }, ActionKind::Create]
        );
        // Idle when it broke, endpoint inactive: only destroyed.
        s.last_activity = NOW - 20.0;
        assert_eq!(kinds(&decide(&s)), vec![ActionKind::Destroy { worker: 1 }]);
        // Its load does not make the endpoint active.
        s.workers = vec![broken];
        assert_eq!(decide(&s).last_activity, NOW - 20.0);
    }

    #[test]
    fn suspended_endpoints_take_no_action() {
        let mut s = snapshot(EndpointPolicy {
            state: EndpointState::Suspended,
            ..EndpointPolicy::seed()
        });
        s.waiting = vec![(100.0, NOW - 5.0)];
        s.workers = vec![idle(1, 100.0), in_state(2, WorkerState::Error)];
        let d = decide(&s);
        assert!(d.actions.is_empty());
        assert_eq!(d.want_active, 1);
    }

    #[test]
    fn stopped_endpoints_stop_workers_once_they_carry_nothing() {
        let mut s = snapshot(EndpointPolicy {
            state: EndpointState::Stopped,
            ..EndpointPolicy::seed()
        });
        s.waiting = vec![(100.0, NOW - 5.0)];
        s.workers = vec![
            idle(1, 0.0),
            busy(2, 100.0),
            in_state(3, WorkerState::Creating),
            in_state(4, WorkerState::Error),
            stopped(5, NOW - 1.0, NOW - 9.0),
        ];
        let d = decide(&s);
        assert_eq!(d.want_active, 0);
        assert_eq!(
            kinds(&d),
            vec![
                ActionKind::Destroy { worker: 4 },
                ActionKind::Stop { worker: 1 },
                ActionKind::Stop { worker: 3 }
            ]
        );
        assert_eq!(reasons(&d)[1..], [ScaleReason::EndpointStopped; 2]);
    }

    #[test]
    fn inactivity_timeout_meanings() {
        let with = |timeout: Option<f64>| EndpointPolicy {
            inactivity_timeout: timeout,
            ..EndpointPolicy::seed()
        };
        // Negative: one worker always, even from nothing.
        let s = snapshot(with(Some(-1.0)));
        let d = decide(&s);
        assert_eq!(kinds(&d), vec![ActionKind::Create]);
        assert_eq!(reasons(&d), vec![ScaleReason::NeverScaleToZero]);
        let mut s = snapshot(with(Some(-1.0)));
        s.workers = vec![idle(1, 1e6)];
        assert!(decide(&s).actions.is_empty());
        // Positive: a recently active endpoint keeps one worker...
        let mut s = snapshot(with(Some(10.0)));
        s.last_activity = NOW - 9.0;
        s.workers = vec![idle(1, 9.0)];
        assert!(decide(&s).actions.is_empty());
        // ... but does not create one from zero.
        s.workers.clear();
        assert!(decide(&s).actions.is_empty());
        // Zero or unset: plain autoscaling, the idle worker goes.
        for timeout in [Some(0.0), None] {
            let mut s = snapshot(with(timeout));
            s.last_activity = NOW;
            s.workers = vec![idle(1, 6.0)];
            assert_eq!(kinds(&decide(&s)), vec![ActionKind::Destroy { worker: 1 }]);
        }
    }

    #[test]
    fn min_load_keeps_capacity_active() {
        let mut s = snapshot(EndpointPolicy {
            min_load: 250.0,
            target_util: 1.0,
            ..EndpointPolicy::seed()
        });
        let d = decide(&s);
        assert_eq!(d.want_active, 3);
        assert_eq!(reasons(&d), vec![ScaleReason::BelowMinLoad; 3]);
        s.workers = (1..=4).map(|id| idle(id, 100.0)).collect();
        let d = decide(&s);
        assert_eq!(kinds(&d), vec![ActionKind::Destroy { worker: 4 }]);
    }

    #[test]
    fn activity_is_refreshed_by_work_and_waiting() {
        let mut s = snapshot(EndpointPolicy::seed());
        assert_eq!(decide(&s).last_activity, NOW - 1_000.0);
        s.workers = vec![busy(1, 100.0)];
        assert_eq!(decide(&s).last_activity, NOW);
        s.workers.clear();
        s.waiting = vec![(100.0, NOW - 3.0)];
        assert_eq!(decide(&s).last_activity, NOW);
    }

    #[test]
    fn perf_is_the_median_of_known_perfs() {
        let with_perf = |id: i64, perf: Option<f64>, state: WorkerState| WorkerView {
            max_perf: perf,
            ..in_state(id, state)
        };
        let workers = vec![
            with_perf(1, Some(50.0), WorkerState::Idle),
            with_perf(2, Some(400.0), WorkerState::Stopped),
            with_perf(3, Some(100.0), WorkerState::Idle),
            with_perf(4, None, WorkerState::Loading),
            with_perf(5, Some(f64::NAN), WorkerState::Idle),
        ];
        assert_eq!(endpoint_perf(&workers, Some(7.0)), 100.0);
        assert_eq!(endpoint_perf(&workers[..2], None), 225.0);
        assert_eq!(endpoint_perf(&workers[3..], Some(7.0)), 7.0);
        assert_eq!(endpoint_perf(&[], Some(0.0)), DEFAULT_PERF);
        assert_eq!(endpoint_perf(&[], None), DEFAULT_PERF);
        // P drives the counts: 2 sessions of 100 fit one 200-perf worker.
        let mut s = snapshot(EndpointPolicy::seed());
        s.last_perf = Some(200.0);
        s.waiting = vec![(100.0, NOW); 2];
        assert_eq!(decide(&s).creates(), 1);
    }

    #[test]
    fn external_workers_count_but_are_never_acted_on() {
        let mut s = snapshot(EndpointPolicy::seed());
        let external = |mut w: WorkerView| {
            w.external = true;
            w
        };
        s.workers = vec![
            external(idle(1, 1e4)),
            external(in_state(2, WorkerState::Error)),
            external(stopped(3, NOW - 100.0, NOW - 200.0)),
        ];
        assert!(decide(&s).actions.is_empty());
        s.waiting = vec![(100.0, NOW - 1.0)];
        s.workers = vec![
            external(busy(1, 100.0)),
            external(stopped(3, NOW - 1.0, NOW - 2.0)),
        ];
        // The stopped external worker is not started; a new one is created.
        assert_eq!(kinds(&decide(&s)), vec![ActionKind::Create]);
    }

    #[test]
    fn garbage_numbers_do_not_poison_the_decision() {
        let mut s = snapshot(EndpointPolicy::seed());
        let mut w = busy(1, f64::NAN);
        w.max_perf = Some(f64::INFINITY);
        s.workers = vec![w];
        s.waiting = vec![
            (f64::INFINITY, NOW - 1.0),
            (-5.0, NOW - 1.0),
            (100.0, f64::NAN),
        ];
        let d = decide(&s);
        assert!(d.demand.is_finite());
        assert!(d.want_active <= s.policy.max_workers);
    }

    #[test]
    fn actions_display_their_reason() {
        let action = Action {
            kind: ActionKind::Stop { worker: 7 },
            reason: ScaleReason::Idle,
        };
        assert_eq!(
            action.to_string(),
            "stop worker 7: worker carried nothing for scale_down_delay and is not needed"
        );
        let labels: std::collections::HashSet<_> =
            ScaleReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), ScaleReason::ALL.len());
    }

    // ---------------------------------------------------------------------
    // Properties
    // ---------------------------------------------------------------------

    fn any_policy() -> impl Strategy<Value = EndpointPolicy> {
        let custom = (
            1u32..8,
            0u32..4,
            prop::sample::select(vec![0.0, 100.0, 350.0]),
            prop::sample::select(vec![0.0, 300.0]),
            prop::sample::select(vec![0.3, 0.9, 1.0]),
            prop::sample::select(vec![0.0, 1.0, 2.5]),
            prop::sample::select(vec![None, Some(-1.0), Some(0.0), Some(10.0)]),
            prop::sample::select(vec![
                EndpointState::Active,
                EndpointState::Active,
                EndpointState::Suspended,
                EndpointState::Stopped,
            ]),
        )
            .prop_map(
                |(
                    max_workers,
                    cold,
                    min_load,
                    min_cold_load,
                    target_util,
                    cold_mult,
                    inactivity,
                    state,
                )| {
                    EndpointPolicy {
                        max_workers,
                        cold_workers: cold.min(max_workers),
                        min_load,
                        min_cold_load,
                        target_util,
                        cold_mult,
                        inactivity_timeout: inactivity,
                        state,
                        ..EndpointPolicy::seed()
                    }
                },
            );
        prop_oneof![
            Just(EndpointPolicy::seed()),
            Just(EndpointPolicy::default()),
            custom
        ]
    }

    fn any_worker(id: i64) -> impl Strategy<Value = WorkerView> {
        (
            prop::sample::select(WorkerState::ALL.to_vec()),
            prop::sample::select(vec![0.0, 0.0, 50.0, 100.0, 300.0]),
            any::<bool>(),
            0.0f64..20.0,
            prop::sample::select(vec![None, Some(50.0), Some(100.0)]),
            prop::bool::weighted(0.1),
        )
            .prop_map(move |(state, load, assigned, ago, max_perf, external)| {
                let load = if state.is_active() || state == WorkerState::Error {
                    load
                } else {
                    0.0
                };
                let carrying = load > 0.0 || (assigned && state == WorkerState::Idle);
                WorkerView {
                    id,
                    state,
                    load,
                    carrying,
                    idle_since: (state == WorkerState::Idle && !carrying).then_some(NOW - ago),
                    loaded_at: max_perf.map(|_| NOW - ago - 1.0),
                    stopped_at: matches!(state, WorkerState::Stopped | WorkerState::Stopping)
                        .then_some(NOW - ago),
                    created_at: NOW - ago - 2.0,
                    max_perf,
                    external,
                }
            })
    }

    fn any_snapshot() -> impl Strategy<Value = EndpointSnapshot> {
        (
            any_policy(),
            (0usize..10).prop_flat_map(|n| (0..n as i64).map(any_worker).collect::<Vec<_>>()),
            prop::collection::vec(
                (prop::sample::select(vec![1.0, 100.0, 250.0]), 0.0f64..3.0),
                0..6,
            ),
            0.0f64..20.0,
            prop::sample::select(vec![None, Some(100.0), Some(40.0)]),
        )
            .prop_map(
                |(policy, workers, waiting, idle_for, last_perf)| EndpointSnapshot {
                    now: NOW,
                    policy,
                    workers,
                    waiting: waiting
                        .into_iter()
                        .map(|(cost, ago)| (cost, NOW - ago))
                        .collect(),
                    last_activity: NOW - idle_for,
                    last_perf,
                },
            )
    }

    /// The snapshot as it would be once the actions are carried out at the
    /// same instant (created workers are `CREATING`, never measured).
    fn apply(snapshot: &EndpointSnapshot, decision: &Decision) -> EndpointSnapshot {
        let mut next = snapshot.clone();
        next.last_activity = decision.last_activity;
        let mut next_id = next.workers.iter().map(|w| w.id).max().unwrap_or(0) + 1;
        for action in &decision.actions {
            let (id, state) = match action.kind {
                ActionKind::Create => {
                    next.workers.push(WorkerView::new(
                        next_id,
                        WorkerState::Creating,
                        snapshot.now,
                    ));
                    next_id += 1;
                    continue;
                }
                ActionKind::Start { worker } => (worker, WorkerState::Starting),
                ActionKind::Stop { worker } => (worker, WorkerState::Stopping),
                ActionKind::Destroy { worker } => (worker, WorkerState::Destroying),
            };
            let w = next
                .workers
                .iter_mut()
                .find(|w| w.id == id)
                .expect("action on a known worker");
            w.state = state;
            w.idle_since = None;
        }
        next
    }

    fn existing(snapshot: &EndpointSnapshot) -> usize {
        snapshot
            .workers
            .iter()
            .filter(|w| w.state != WorkerState::Destroying)
            .count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn actions_are_safe(s in any_snapshot()) {
            let d = decide(&s);
            prop_assert!(d.want_active <= d.want_total);
            prop_assert!(d.want_total <= s.policy.max_workers);
            let mut targeted = std::collections::HashSet::new();
            for action in &d.actions {
                let id = match action.kind {
                    ActionKind::Create => continue,
                    ActionKind::Start { worker } | ActionKind::Stop { worker } | ActionKind::Destroy { worker } => worker,
                };
                prop_assert!(targeted.insert(id), "two actions on worker {}", id);
                let w = s.workers.iter().find(|w| w.id == id).unwrap();
                prop_assert!(!w.external, "action on external worker {}", id);
                match action.kind {
                    ActionKind::Start { .. } => prop_assert_eq!(w.state, WorkerState::Stopped),
                    ActionKind::Stop { .. } => {
                        prop_assert!(w.state.is_active());
                        prop_assert!(!w.carrying, "stopping carrying worker {}", id);
                    }
                    ActionKind::Destroy { .. } => {
                        prop_assert!(matches!(w.state, WorkerState::Error | WorkerState::Stopped | WorkerState::Idle));
                        prop_assert!(!w.carrying || w.state == WorkerState::Error, "destroying carrying worker {}", id);
                    }
                    ActionKind::Create => unreachable!(),
                }
            }
            match s.policy.state {
                EndpointState::Suspended => prop_assert!(d.actions.is_empty()),
                EndpointState::Stopped => {
                    let only_stops = d.actions.iter().all(|a| matches!(
                        (a.kind, a.reason),
                        (ActionKind::Stop { .. }, ScaleReason::EndpointStopped)
                            | (ActionKind::Destroy { .. }, ScaleReason::ErrorReplaced)
                    ));
                    prop_assert!(only_stops, "{:?}", d.actions);
                }
                EndpointState::Active => {}
            }
            // Never above max_workers because of this decision.
            let after = apply(&s, &d);
            let max = s.policy.max_workers as usize;
            prop_assert!(existing(&after) <= max.max(existing(&s)));
            if d.creates() > 0 {
                prop_assert!(existing(&after) <= max);
            }
        }

        #[test]
        fn decisions_are_idempotent(s in any_snapshot()) {
            let d = decide(&s);
            let again = decide(&apply(&s, &d));
            prop_assert!(
                again.actions.iter().all(|a| !matches!(a.kind, ActionKind::Create | ActionKind::Start { .. })),
                "first {:?} then {:?}", d.actions, again.actions
            );
        }

        #[test]
        fn seed_waiting_sessions_at_zero_create_one_worker_each(n in 1usize..=20, ages in prop::collection::vec(0.0f64..5.0, 20)) {
            let mut s = snapshot(EndpointPolicy::seed());
            s.waiting = ages[..n].iter().map(|ago| (100.0, NOW - ago)).collect();
            let d = decide(&s);
            prop_assert_eq!(d.creates(), n);
            prop_assert_eq!(d.actions.len(), n);
        }

        #[test]
        fn seed_reaches_zero_once_idle_past_inactivity_timeout(
            idle_workers in prop::collection::vec(5.0f64..100.0, 0..10),
            stopped_workers in prop::collection::vec(0.0f64..100.0, 0..5),
            inactive_for in 10.0f64..100.0,
        ) {
            let mut s = snapshot(EndpointPolicy::seed());
            s.last_activity = NOW - inactive_for;
            let mut id = 0;
            for ago in idle_workers {
                id += 1;
                s.workers.push(idle(id, ago));
            }
            for ago in stopped_workers {
                id += 1;
                s.workers.push(stopped(id, NOW - ago, NOW - ago - 10.0));
            }
            let d = decide(&s);
            prop_assert_eq!((d.want_active, d.want_total), (0, 0));
            prop_assert_eq!(existing(&apply(&s, &d)), 0);
        }
    }
}
