//! The routing choice of `/route/` (PROTOCOL §12.4 steps 3–5): which worker,
//! if any, takes a request of a given cost.
//!
//! Owns only the choice among candidates the runtime passes in; the request
//! table ([`super::requests`]) supplies each worker's pending cost, and the
//! runtime builds the READY or WAITING answer.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::ops::Bound;

use super::{EndpointPolicy, EndpointState, WorkerState};

/// Divisor floor for a worker's `max_perf`, as the worker framework uses for
/// its own queue estimate: a loaded worker reporting `max_perf = 0` gets an
/// enormous implied queue instead of a division by zero.
pub const MIN_PERF: f64 = 0.00001;

/// Slack on the `max_queue_time` comparison so that decimal costs and perfs
/// (e.g. 0.1 + 0.2) do not flip an exact fit into a miss.
const QUEUE_TIME_EPSILON: f64 = 1e-9;

/// One worker as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteCandidate {
    /// Worker id.
    pub id: i64,
    /// Derived state; only `IDLE` is routable.
    pub state: WorkerState,
    /// Last reported `cur_load`.
    pub reported_load: f64,
    /// Σ cost of assignments its reports do not show yet
    /// ([`super::requests::RequestTable::pending_cost`]).
    pub pending_cost: f64,
    /// Last reported `max_perf`.
    pub max_perf: f64,
}

impl RouteCandidate {
    /// `L(w)`: reported load plus pending assignments.
    pub fn effective_load(&self) -> f64 {
        self.reported_load + self.pending_cost
    }

    /// Implied queue time, in seconds, if a request of `cost` were added:
    /// `(L(w) + cost) / max_perf`.
    pub fn queue_time(&self, cost: f64) -> f64 {
        (self.effective_load() + cost) / perf_divisor(self.max_perf)
    }
}

/// `max_perf` floored at [`MIN_PERF`] (NaN counts as the floor).
fn perf_divisor(max_perf: f64) -> f64 {
    if max_perf > MIN_PERF {
        max_perf
    } else {
        MIN_PERF
    }
}

/// Picks the worker for a request of `cost` (PROTOCOL §12.4 steps 3–5).
///
/// A candidate is routable when it is `IDLE`, the endpoint is not `stopped`,
/// and either `(L + cost) / max_perf ≤ max_queue_time` or `L = 0` (so a
/// request larger than the queue limit still takes a free worker). Among
/// routable candidates the smallest `(L + cost) / max_perf` wins; ties go to
/// the lowest id. `None` means the request waits.
///
/// One pass, no allocation: safe to call per request with 10,000 candidates.
pub fn choose_worker(
    candidates: &[RouteCandidate],
    cost: f64,
    policy: &EndpointPolicy,
) -> Option<i64> {
    if policy.state == EndpointState::Stopped {
        return None;
    }
    let limit = policy.max_queue_time + QUEUE_TIME_EPSILON;
    let mut best: Option<(f64, i64)> = None;
    for candidate in candidates {
        if candidate.state != WorkerState::Idle {
            continue;
        }
        let load = candidate.effective_load();
        let queue_time = (load + cost) / perf_divisor(candidate.max_perf);
        // `!(x <= limit)` also rejects NaN.
        if !(queue_time <= limit || load <= 0.0) {
            continue;
        }
        let better = match best {
            None => true,
            Some((best_time, best_id)) => {
                queue_time < best_time || (queue_time == best_time && candidate.id < best_id)
            }
        };
        if better {
            best = Some((queue_time, candidate.id));
        }
    }
    best.map(|(_, id)| id)
}

/// A float ordered by `total_cmp`, NaN mapped to +∞ (never routable).
#[derive(Debug, Clone, Copy)]
struct OrdF64(f64);

impl OrdF64 {
    fn new(value: f64) -> Self {
        OrdF64(if value.is_nan() { f64::INFINITY } else { value })
    }
}

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The routable (`IDLE`) workers of one endpoint, kept ordered so that
/// [`RouteIndex::choose`] costs O(log n) instead of the O(n) of
/// [`choose_worker`], with the same answer.
///
/// Workers are grouped by `max_perf` (usually one group: every worker of an
/// endpoint runs the same template); inside a group the smallest `L(w)` has
/// the smallest implied queue for any cost, so only group heads are
/// compared. Keep it current with [`upsert`](Self::upsert) whenever a
/// worker's state, reported load, pending cost
/// ([`super::requests::RequestTable::drain_changed`]) or `max_perf` changes,
/// and [`remove`](Self::remove) when it goes.
#[derive(Debug, Clone, Default)]
pub struct RouteIndex {
    /// Worker id ⇒ (perf divisor, effective load) it is filed under.
    members: HashMap<i64, (OrdF64, OrdF64)>,
    /// Perf divisor ⇒ workers ordered by (effective load, id).
    groups: BTreeMap<OrdF64, BTreeSet<(OrdF64, i64)>>,
}

impl RouteIndex {
    /// An empty index.
    pub fn new() -> Self {
        RouteIndex::default()
    }

    /// Files or refiles a worker; a worker not `IDLE` is removed.
    pub fn upsert(&mut self, candidate: &RouteCandidate) {
        if candidate.state != WorkerState::Idle {
            self.remove(candidate.id);
            return;
        }
        let key = (
            OrdF64::new(perf_divisor(candidate.max_perf)),
            OrdF64::new(candidate.effective_load()),
        );
        if let Some(old) = self.members.insert(candidate.id, key) {
            if old == key {
                return;
            }
            self.unfile(candidate.id, old);
        }
        self.groups
            .entry(key.0)
            .or_default()
            .insert((key.1, candidate.id));
    }

    /// Forgets a worker.
    pub fn remove(&mut self, id: i64) {
        if let Some(old) = self.members.remove(&id) {
            self.unfile(id, old);
        }
    }

    fn unfile(&mut self, id: i64, (perf, load): (OrdF64, OrdF64)) {
        if let Some(group) = self.groups.get_mut(&perf) {
            group.remove(&(load, id));
            if group.is_empty() {
                self.groups.remove(&perf);
            }
        }
    }

    /// Number of workers filed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No worker is filed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The worker is filed (it was `IDLE` when last upserted).
    pub fn contains(&self, id: i64) -> bool {
        self.members.contains_key(&id)
    }

    /// Whether the worker is filed with exactly the figures of `candidate`
    /// (for invariant checks).
    pub fn matches(&self, candidate: &RouteCandidate) -> bool {
        let key = (
            OrdF64::new(perf_divisor(candidate.max_perf)),
            OrdF64::new(candidate.effective_load()),
        );
        self.members.get(&candidate.id) == Some(&key)
            && self
                .groups
                .get(&key.0)
                .is_some_and(|g| g.contains(&(key.1, candidate.id)))
    }

    /// The same choice as [`choose_worker`] over the filed workers.
    pub fn choose(&self, cost: f64, policy: &EndpointPolicy) -> Option<i64> {
        if policy.state == EndpointState::Stopped {
            return None;
        }
        let limit = policy.max_queue_time + QUEUE_TIME_EPSILON;
        let mut best: Option<(f64, i64)> = None;
        for (perf, group) in &self.groups {
            let Some(&(load, mut id)) = group.first() else {
                continue;
            };
            let queue_time = (load.0 + cost) / perf.0;
            if !(queue_time <= limit || load.0 <= 0.0) {
                continue;
            }
            // A larger load can round to the same queue time: the lowest
            // id among equal queue times wins, as in `choose_worker`.
            let mut at = load;
            while let Some(&(next_load, next_id)) = group
                .range((Bound::Excluded((at, i64::MAX)), Bound::Unbounded))
                .next()
            {
                let routable = queue_time <= limit || next_load.0 <= 0.0;
                if !routable || (next_load.0 + cost) / perf.0 != queue_time {
                    break;
                }
                id = id.min(next_id);
                at = next_load;
            }
            let better = match best {
                None => true,
                Some((best_time, best_id)) => {
                    queue_time < best_time || (queue_time == best_time && id < best_id)
                }
            };
            if better {
                best = Some((queue_time, id));
            }
        }
        best.map(|(_, id)| id)
    }
}

/// Workers of an endpoint per state, indexed by [`WorkerState::index`].
pub type StateCounts = [usize; WorkerState::ALL.len()];

/// What the `status` of a WAITING answer is made from: the registry's
/// per-state worker counts and a few facts of the endpoint, all kept up to
/// date by the caller so that a WAITING answer costs O(1) however many
/// workers the endpoint has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitingFacts<'a> {
    /// Endpoint name, for the `nullworker endpoint logs` pointer.
    pub endpoint: &'a str,
    /// The endpoint's state.
    pub state: EndpointState,
    /// Workers per state.
    pub counts: &'a StateCounts,
    /// The endpoint's `max_workers`.
    pub max_workers: u32,
    /// Launches that failed in a row before a worker became ready, and the
    /// last one's error (`None`: launches are not failing).
    pub launches_failing: Option<(u32, &'a str)>,
}

/// Why a request waits, beyond the worker counts (docs/client.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason<'a> {
    /// Launches keep failing before a worker becomes ready.
    LaunchesFailing {
        /// Failed launches in a row.
        in_a_row: u32,
        /// The last launch's error.
        error: &'a str,
    },
    /// Every worker `max_workers` allows is up and busy, so no new one may
    /// start until one is free.
    MaxWorkersReached {
        /// `IDLE` workers, none of which can take the request.
        busy: usize,
        /// The endpoint's `max_workers`.
        max_workers: u32,
    },
    /// Workers run and report, but are not loaded: their consumer's health
    /// check has not passed yet (`MODEL_LOADING`).
    ConsumerNotHealthy {
        /// Workers in `MODEL_LOADING`.
        workers: usize,
    },
}

impl fmt::Display for WaitReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WaitReason::LaunchesFailing { in_a_row, error } => {
                write!(f, "launches failing ({in_a_row} in a row): {error}")
            }
            WaitReason::MaxWorkersReached { busy, max_workers } => {
                write!(f, "max_workers reached ({busy} of {max_workers} busy)")
            }
            WaitReason::ConsumerNotHealthy { workers } => {
                let noun = if workers == 1 { "worker" } else { "workers" };
                write!(
                    f,
                    "consumer not healthy yet ({workers} {noun} waiting for its health check)"
                )
            }
        }
    }
}

/// Why a request of an endpoint with `facts` waits, most telling first:
/// failing launches, then `max_workers` reached (every slot `IDLE` and no
/// worker could take the request, so none may start), then workers whose
/// consumer is not healthy yet. Empty for a stopped endpoint (which says
/// so) or when workers are merely on their way.
pub fn waiting_reasons<'a>(facts: &WaitingFacts<'a>) -> Vec<WaitReason<'a>> {
    let mut reasons = Vec::new();
    if facts.state == EndpointState::Stopped {
        return reasons;
    }
    if let Some((in_a_row, error)) = facts.launches_failing {
        if in_a_row > 0 {
            reasons.push(WaitReason::LaunchesFailing { in_a_row, error });
        }
    }
    let busy = facts.counts[WorkerState::Idle.index()];
    if busy > 0 && busy >= facts.max_workers as usize {
        reasons.push(WaitReason::MaxWorkersReached {
            busy,
            max_workers: facts.max_workers,
        });
    }
    let unhealthy = facts.counts[WorkerState::ModelLoading.index()];
    if unhealthy > 0 {
        reasons.push(WaitReason::ConsumerNotHealthy { workers: unhealthy });
    }
    reasons
}

/// The `status` text of a WAITING answer: `"endpoint stopped"`, or the
/// [`waiting_reasons`] (first, so a narrow display still shows them), a
/// pointer to the logs that explain them, and a count of workers by kind,
/// e.g. `"waiting: max_workers reached (1 of 1 busy); 1 ready, 0 loading,
/// 0 stopped, 0 error"`.
pub fn waiting_status(facts: &WaitingFacts<'_>) -> String {
    if facts.state == EndpointState::Stopped {
        return "endpoint stopped".to_owned();
    }
    let (mut ready, mut loading, mut stopped, mut error) = (0usize, 0usize, 0usize, 0usize);
    for worker in WorkerState::ALL {
        let n = facts.counts[worker.index()];
        match worker {
            WorkerState::Idle => ready += n,
            WorkerState::Creating
            | WorkerState::Loading
            | WorkerState::ModelLoading
            | WorkerState::Starting => loading += n,
            WorkerState::Stopping | WorkerState::Stopped => stopped += n,
            WorkerState::Error | WorkerState::Destroying => error += n,
        }
    }
    let mut status = if facts.state == EndpointState::Suspended {
        "waiting (endpoint suspended): ".to_owned()
    } else {
        "waiting: ".to_owned()
    };
    let reasons = waiting_reasons(facts);
    for reason in &reasons {
        let _ = write!(status, "{reason}; ");
    }
    let launches = reasons
        .iter()
        .any(|r| matches!(r, WaitReason::LaunchesFailing { .. }));
    let consumer = reasons
        .iter()
        .any(|r| matches!(r, WaitReason::ConsumerNotHealthy { .. }));
    if launches || consumer {
        // The worker's log says why a launch failed; the consumer's, why
        // it is not healthy.
        let which = if launches { "" } else { " --consumer" };
        let _ = write!(
            status,
            "see `nullworker endpoint logs {}{which}`; ",
            facts.endpoint
        );
    }
    let _ = write!(
        status,
        "{ready} ready, {loading} loading, {stopped} stopped, {error} error"
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn idle(id: i64, reported_load: f64, pending_cost: f64) -> RouteCandidate {
        RouteCandidate {
            id,
            state: WorkerState::Idle,
            reported_load,
            pending_cost,
            max_perf: 100.0,
        }
    }

    #[test]
    fn seed_configuration_routes_only_to_free_workers() {
        let policy = EndpointPolicy::seed();
        // Free: (0 + 100) / 100 = 1 ≤ 1.
        assert_eq!(choose_worker(&[idle(1, 0.0, 0.0)], 100.0, &policy), Some(1));
        // Holding a session (reported or still pending): 2 > 1.
        assert_eq!(choose_worker(&[idle(1, 100.0, 0.0)], 100.0, &policy), None);
        assert_eq!(choose_worker(&[idle(1, 0.0, 100.0)], 100.0, &policy), None);
        assert_eq!(
            choose_worker(&[idle(1, 100.0, 0.0), idle(2, 0.0, 0.0)], 100.0, &policy),
            Some(2)
        );
    }

    #[test]
    fn default_configuration_stacks_up_to_max_queue_time() {
        let policy = EndpointPolicy::default();
        // (2900 + 100) / 100 = 30 ≤ 30; one more is 31.
        assert_eq!(
            choose_worker(&[idle(1, 2900.0, 0.0)], 100.0, &policy),
            Some(1)
        );
        assert_eq!(choose_worker(&[idle(1, 2900.0, 0.1)], 100.0, &policy), None);
    }

    #[test]
    fn a_free_worker_takes_a_request_larger_than_the_limit() {
        let policy = EndpointPolicy::seed();
        assert_eq!(
            choose_worker(&[idle(1, 0.0, 0.0)], 10_000.0, &policy),
            Some(1)
        );
        assert_eq!(choose_worker(&[idle(1, 1.0, 0.0)], 10_000.0, &policy), None);
        // Even one that reports max_perf 0.
        let mut zero = idle(2, 0.0, 0.0);
        zero.max_perf = 0.0;
        assert_eq!(choose_worker(&[zero], 100.0, &policy), Some(2));
    }

    #[test]
    fn least_queue_wins_and_ties_go_to_the_lowest_id() {
        let policy = EndpointPolicy::default();
        let candidates = [
            idle(5, 300.0, 0.0),
            idle(3, 100.0, 100.0),
            idle(4, 100.0, 0.0),
            idle(2, 100.0, 0.0),
        ];
        assert_eq!(choose_worker(&candidates, 100.0, &policy), Some(2));
        // A faster worker with more load can still be the shorter queue.
        let mut fast = idle(9, 300.0, 0.0);
        fast.max_perf = 1000.0;
        assert_eq!(
            choose_worker(&[idle(1, 100.0, 0.0), fast], 100.0, &policy),
            Some(9)
        );
    }

    #[test]
    fn only_idle_workers_of_a_running_endpoint_are_routable() {
        let mut policy = EndpointPolicy::seed();
        for state in WorkerState::ALL {
            let candidate = RouteCandidate {
                state,
                ..idle(1, 0.0, 0.0)
            };
            let expected = (state == WorkerState::Idle).then_some(1);
            assert_eq!(
                choose_worker(&[candidate], 100.0, &policy),
                expected,
                "{state}"
            );
        }
        policy.state = EndpointState::Suspended;
        assert_eq!(choose_worker(&[idle(1, 0.0, 0.0)], 100.0, &policy), Some(1));
        policy.state = EndpointState::Stopped;
        assert_eq!(choose_worker(&[idle(1, 0.0, 0.0)], 100.0, &policy), None);
        assert_eq!(choose_worker(&[], 100.0, &EndpointPolicy::seed()), None);
    }

    #[test]
    fn nonsense_numbers_never_route() {
        let policy = EndpointPolicy::default();
        assert_eq!(
            choose_worker(&[idle(1, f64::NAN, 0.0)], 100.0, &policy),
            None
        );
        assert_eq!(
            choose_worker(&[idle(1, 10.0, 0.0)], f64::NAN, &policy),
            None
        );
        let mut nan_perf = idle(1, 10.0, 0.0);
        nan_perf.max_perf = f64::NAN;
        assert_eq!(choose_worker(&[nan_perf], 100.0, &policy), None);
    }

    /// Per-state counts from `(state, how many)` pairs.
    fn counts(of: &[(WorkerState, usize)]) -> StateCounts {
        let mut counts: StateCounts = [0; WorkerState::ALL.len()];
        for &(state, n) in of {
            counts[state.index()] += n;
        }
        counts
    }

    #[test]
    fn waiting_status_says_why_a_request_waits() {
        use EndpointState::{Active, Stopped, Suspended};
        use WorkerState::{
            Creating, Error, Idle, Loading, ModelLoading, Starting, Stopped as Cold,
        };
        const DISK: Option<(u32, &str)> = Some((3, "no space left on device"));
        #[rustfmt::skip]
        // Endpoint state, workers, max_workers, failing launches, status.
        type Row = (EndpointState, &'static [(WorkerState, usize)], u32, Option<(u32, &'static str)>, &'static str);
        let table: &[Row] = &[
            // Workers merely on their way: the counts say it all.
            (Active, &[], 1, None,
             "waiting: 0 ready, 0 loading, 0 stopped, 0 error"),
            (Active, &[(Creating, 1), (Loading, 1), (Starting, 1)], 5, None,
             "waiting: 0 ready, 3 loading, 0 stopped, 0 error"),
            (Active, &[(Idle, 1), (Creating, 1), (Cold, 1), (Error, 1)], 5, None,
             "waiting: 1 ready, 1 loading, 1 stopped, 1 error"),
            // Every slot busy: no worker may start.
            (Active, &[(Idle, 1)], 1, None,
             "waiting: max_workers reached (1 of 1 busy); 1 ready, 0 loading, 0 stopped, 0 error"),
            (Active, &[(Idle, 3)], 3, None,
             "waiting: max_workers reached (3 of 3 busy); 3 ready, 0 loading, 0 stopped, 0 error"),
            // max_workers lowered below the workers that exist.
            (Active, &[(Idle, 3)], 2, None,
             "waiting: max_workers reached (3 of 2 busy); 3 ready, 0 loading, 0 stopped, 0 error"),
            // A free slot, or a cold worker to restart: not the limit.
            (Active, &[(Idle, 1)], 2, None,
             "waiting: 1 ready, 0 loading, 0 stopped, 0 error"),
            (Active, &[(Idle, 1), (Cold, 1)], 2, None,
             "waiting: 1 ready, 0 loading, 1 stopped, 0 error"),
            // Reporting but not loaded: the consumer's health check.
            (Active, &[(ModelLoading, 1)], 1, None,
             "waiting: consumer not healthy yet (1 worker waiting for its health check); \
              see `nullworker endpoint logs ep --consumer`; 0 ready, 1 loading, 0 stopped, 0 error"),
            (Active, &[(Idle, 1), (ModelLoading, 2)], 3, None,
             "waiting: consumer not healthy yet (2 workers waiting for its health check); \
              see `nullworker endpoint logs ep --consumer`; 1 ready, 2 loading, 0 stopped, 0 error"),
            // Failing launches point at the worker's log.
            (Active, &[(Error, 1)], 1, DISK,
             "waiting: launches failing (3 in a row): no space left on device; \
              see `nullworker endpoint logs ep`; 0 ready, 0 loading, 0 stopped, 1 error"),
            (Active, &[(ModelLoading, 1)], 2, DISK,
             "waiting: launches failing (3 in a row): no space left on device; \
              consumer not healthy yet (1 worker waiting for its health check); \
              see `nullworker endpoint logs ep`; 0 ready, 1 loading, 0 stopped, 0 error"),
            (Active, &[], 1, Some((0, "stale")),
             "waiting: 0 ready, 0 loading, 0 stopped, 0 error"),
            // Suspended: no new worker, whatever the reason.
            (Suspended, &[], 1, None,
             "waiting (endpoint suspended): 0 ready, 0 loading, 0 stopped, 0 error"),
            (Suspended, &[(Idle, 1)], 1, None,
             "waiting (endpoint suspended): max_workers reached (1 of 1 busy); 1 ready, 0 loading, 0 stopped, 0 error"),
            // Stopped says only that.
            (Stopped, &[(Idle, 1), (ModelLoading, 1)], 1, DISK, "endpoint stopped"),
        ];
        for &(state, of, max_workers, launches_failing, want) in table {
            let counts = counts(of);
            let facts = WaitingFacts {
                endpoint: "ep",
                state,
                counts: &counts,
                max_workers,
                launches_failing,
            };
            assert_eq!(
                waiting_status(&facts),
                want,
                "{state:?} {of:?} max {max_workers}"
            );
        }
        for (i, state) in WorkerState::ALL.into_iter().enumerate() {
            assert_eq!(state.index(), i, "{state}");
        }
    }

    fn candidate() -> impl Strategy<Value = RouteCandidate> {
        (
            0i64..50,
            prop::sample::select(WorkerState::ALL.to_vec()),
            prop::sample::select(vec![0.0, 50.0, 100.0, 200.0, 1000.0]),
            prop::sample::select(vec![0.0, 100.0]),
            prop::sample::select(vec![0.0, 50.0, 100.0, 400.0]),
        )
            .prop_map(|(id, state, reported_load, pending_cost, max_perf)| {
                RouteCandidate {
                    id,
                    state,
                    reported_load,
                    pending_cost,
                    max_perf,
                }
            })
    }

    #[test]
    fn index_follows_updates() {
        let policy = EndpointPolicy::seed();
        let mut index = RouteIndex::new();
        assert_eq!(index.choose(100.0, &policy), None);
        index.upsert(&idle(1, 0.0, 0.0));
        index.upsert(&idle(2, 0.0, 0.0));
        assert_eq!(index.len(), 2);
        assert_eq!(index.choose(100.0, &policy), Some(1));
        index.upsert(&idle(1, 0.0, 100.0));
        assert_eq!(index.choose(100.0, &policy), Some(2));
        index.upsert(&idle(2, 100.0, 0.0));
        assert_eq!(index.choose(100.0, &policy), None);
        index.upsert(&RouteCandidate {
            state: WorkerState::Stopping,
            ..idle(2, 0.0, 0.0)
        });
        assert!(!index.contains(2));
        index.upsert(&idle(1, 0.0, 0.0));
        assert_eq!(index.choose(100.0, &policy), Some(1));
        index.remove(1);
        index.remove(1);
        assert!(index.is_empty());
        assert_eq!(index.choose(100.0, &policy), None);
    }

    #[derive(Debug, Clone)]
    enum IndexOp {
        Upsert(RouteCandidate),
        Remove(i64),
    }

    proptest! {
        /// After any sequence of updates the index chooses exactly what
        /// `choose_worker` chooses over the same workers.
        #[test]
        fn index_matches_choose_worker(
            ops in prop::collection::vec(
                prop_oneof![
                    4 => candidate().prop_map(IndexOp::Upsert),
                    1 => (0i64..50).prop_map(IndexOp::Remove),
                ],
                0..60,
            ),
            cost in prop::sample::select(vec![0.0, 1.0, 100.0, 250.0, 1e30]),
            max_queue_time in prop::sample::select(vec![0.0, 0.5, 1.0, 2.0, 30.0]),
            state in prop::sample::select(vec![EndpointState::Active, EndpointState::Stopped]),
        ) {
            let policy = EndpointPolicy { max_queue_time, state, ..EndpointPolicy::default() };
            let mut index = RouteIndex::new();
            let mut current: HashMap<i64, RouteCandidate> = HashMap::new();
            for op in ops {
                match op {
                    IndexOp::Upsert(c) => {
                        index.upsert(&c);
                        current.insert(c.id, c);
                    }
                    IndexOp::Remove(id) => {
                        index.remove(id);
                        current.remove(&id);
                    }
                }
            }
            let candidates: Vec<RouteCandidate> = current.into_values().collect();
            prop_assert_eq!(index.len(), candidates.iter().filter(|c| c.state == WorkerState::Idle).count());
            prop_assert_eq!(index.choose(cost, &policy), choose_worker(&candidates, cost, &policy));
        }

        /// The choice is the minimum over routable candidates by
        /// (queue time, id), compared with a straightforward filter+sort.
        #[test]
        fn matches_a_naive_choice(
            candidates in prop::collection::vec(candidate(), 0..30),
            cost in prop::sample::select(vec![0.0, 1.0, 100.0, 250.0]),
            max_queue_time in prop::sample::select(vec![0.0, 0.5, 1.0, 2.0, 30.0]),
        ) {
            let policy = EndpointPolicy { max_queue_time, ..EndpointPolicy::default() };
            let mut routable: Vec<(f64, i64)> = candidates
                .iter()
                .filter(|c| c.state == WorkerState::Idle)
                .filter(|c| c.queue_time(cost) <= max_queue_time + 1e-9 || c.effective_load() == 0.0)
                .map(|c| (c.queue_time(cost), c.id))
                .collect();
            routable.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            prop_assert_eq!(
                choose_worker(&candidates, cost, &policy),
                routable.first().map(|&(_, id)| id)
            );
        }
    }
}
