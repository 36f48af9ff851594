//! Live state of every endpoint: its workers (process phase, last report,
//! derived state, signed URL, control port), its request table, the
//! [`RouteIndex`] of routable workers, per-state worker counts and the spawn
//! backoff, all kept up to date in place so that `/route/` costs O(log n)
//! whatever the number of workers, with no allocation. Nothing here is
//! persisted; after a restart it is rebuilt from the database (endpoints)
//! and from worker reports.
//!
//! The registry holds no locks and does no I/O; the engine wraps it in one
//! mutex and calls the policy functions on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nullworker_protocol::messages::{EndpointWorker, WorkerStatus};
use serde::Serialize;

use crate::db::StoredEndpoint;
use crate::endpoint::EndpointSettings;
use crate::policy::autoscale::{EndpointSnapshot, WorkerView};
use crate::policy::backoff::SpawnBackoff;
use crate::policy::requests::RequestTable;
use crate::policy::routing::{waiting_status_from_counts, RouteCandidate, RouteIndex, StateCounts};
use crate::policy::worker_state::{derive_state_from, ProcessPhase, ReportFacts, WorkerFacts};
use crate::policy::{EndpointPolicy, WorkerState};
use crate::supervisor::Spawned;

/// One worker the engine knows.
#[derive(Debug)]
pub struct Worker {
    /// Worker id (`CONTAINER_ID`).
    pub id: i64,
    /// Its `MASTER_TOKEN`; reports must carry it.
    pub mtoken: String,
    /// Registered by its reports, not launched by the engine.
    pub external: bool,
    /// Public URL once known.
    pub url: Option<Arc<str>>,
    /// Signature of `url` (the `auth_data.signature` of every READY to it).
    pub signature: Option<Arc<str>>,
    /// Process phase.
    pub process: ProcessPhase,
    /// Re-spawned after a stop.
    pub restarted: bool,
    /// When the current process was spawned.
    pub spawned_at: Option<f64>,
    /// Handles of the current processes.
    pub spawned: Option<Spawned>,
    /// Facts of the last report.
    pub last_report: Option<ReportFacts>,
    /// The last report itself.
    pub report: Option<WorkerStatus>,
    /// When the engine decided to create it (or first heard of it).
    pub created_at: f64,
    /// When it was first seen loaded.
    pub loaded_at: Option<f64>,
    /// Since when it has been IDLE and carrying nothing.
    pub idle_since: Option<f64>,
    /// When it was stopped.
    pub stopped_at: Option<f64>,
    /// Derived state (refreshed on every event and tick).
    pub state: WorkerState,
    /// Why it is in ERROR.
    pub error: Option<String>,
    /// Reached `IDLE` since its current process was spawned.
    pub idle_this_life: bool,
}

impl Worker {
    /// A worker the engine is about to launch.
    pub fn launched(id: i64, mtoken: String, now: f64) -> Self {
        Self {
            id,
            mtoken,
            external: false,
            url: None,
            signature: None,
            process: ProcessPhase::NotSpawned,
            restarted: false,
            spawned_at: None,
            spawned: None,
            last_report: None,
            report: None,
            created_at: now,
            loaded_at: None,
            idle_since: None,
            stopped_at: None,
            state: WorkerState::Creating,
            error: None,
            idle_this_life: false,
        }
    }

    /// Last reported `cur_load`.
    pub fn reported_load(&self) -> f64 {
        self.report
            .as_ref()
            .map_or(0.0, |r| finite_or_zero(r.cur_load))
    }

    /// Last reported `max_perf`.
    pub fn max_perf(&self) -> f64 {
        self.report
            .as_ref()
            .map_or(0.0, |r| finite_or_zero(r.max_perf))
    }

    /// What the policy's `derive_state` looks at (a copy).
    pub fn facts(&self) -> WorkerFacts {
        WorkerFacts {
            process: self.process,
            restarted: self.restarted,
            spawned_at: self.spawned_at,
            last_report: self.last_report.clone(),
        }
    }

    /// `NULL_CONTROL_PORT` of its running processes (the worker's loopback
    /// `/release` server); `None` for external or stopped workers.
    pub fn control_port(&self) -> Option<u16> {
        self.spawned.as_ref().map(|s| s.control_port)
    }

    /// `NULL_CONSUMER_PORT` of its running consumer (the port its health
    /// endpoint may listen on); `None` without a consumer.
    pub fn consumer_port(&self) -> Option<u16> {
        self.spawned.as_ref().and_then(|s| s.consumer_port)
    }

    /// Process ids of the worker and its consumer, while they run.
    pub fn pids(&self) -> (Option<i32>, Option<i32>) {
        let spawned = self.spawned.as_ref();
        (
            spawned.map(|s| s.worker.pid),
            spawned.and_then(|s| s.consumer.as_ref()).map(|c| c.pid),
        )
    }

    /// The `/get_endpoint_workers/` view.
    pub fn wire_view(&self, pending_cost: f64) -> EndpointWorker {
        let r = self.report.as_ref();
        EndpointWorker {
            id: self.id,
            status: self.state.as_str().to_owned(),
            cur_load: self.reported_load() + pending_cost,
            new_load: r.map_or(0.0, |r| r.new_load),
            cur_load_rolling_avg: self.reported_load(),
            cur_perf: r.map_or(0.0, |r| r.cur_perf),
            perf: self.max_perf(),
            measured_perf: self.max_perf(),
            dlperf: 0.0,
            reliability: 1.0,
            reqs_working: r.map_or(0, |r| r.num_requests_working),
            disk_usage: r.and_then(|r| r.disk_usage).unwrap_or(0.0),
            loaded_at: self.loaded_at.unwrap_or(0.0),
            started_at: self.spawned_at.unwrap_or(self.created_at),
            url: self.url.as_deref().unwrap_or_default().to_owned(),
            created_at: self.created_at,
        }
    }
}

/// An error reason without its figures, to tell a new error from the same
/// one restated ("no report for 31 s" and "no report for 32 s" are one).
fn error_kind(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_ascii_digit() && *c != '.')
        .collect()
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// One element of `/get_endpoint_workers/`: the §3.5 fields plus the
/// engine's extras (clients that do not know them ignore them).
#[derive(Debug, Clone, Serialize)]
pub struct WireWorker {
    /// The §3.5 fields.
    #[serde(flatten)]
    pub worker: EndpointWorker,
    /// The worker's `NULL_CONTROL_PORT` (`POST /release` on 127.0.0.1).
    pub control_port: Option<u16>,
}

/// A state change worth logging and recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Worker id.
    pub worker: i64,
    /// Previous state.
    pub from: WorkerState,
    /// New state.
    pub to: WorkerState,
    /// Reason when `to` is ERROR.
    pub reason: Option<String>,
}

/// One endpoint's live state.
#[derive(Debug)]
pub struct Endpoint {
    /// What the database holds.
    pub stored: StoredEndpoint,
    /// Policy parameters derived from the settings.
    pub policy: EndpointPolicy,
    /// Workers by id.
    pub workers: BTreeMap<i64, Worker>,
    /// The `/route/` request table.
    pub requests: RequestTable,
    /// Routable workers (IDLE, running, signed URL), kept in place.
    route_index: RouteIndex,
    /// Workers per state, kept in place.
    state_counts: StateCounts,
    /// Reused buffer for the request table's changed workers.
    scratch: Vec<i64>,
    /// Last activity for `inactivity_timeout`.
    pub last_activity: f64,
    /// The last `max_perf` seen.
    pub last_perf: Option<f64>,
    /// Consecutive launches that failed before their worker became IDLE.
    pub backoff: SpawnBackoff,
    /// The backoff as last logged (`failures`), so it is logged once per change.
    pub backoff_logged: u32,
    /// Processes launched (worker spawns, first or restarted).
    pub spawns: u64,
    /// Launches that failed before their worker became IDLE.
    pub spawn_failures: u64,
}

/// The policy parameters of an endpoint's settings.
pub fn policy_of(
    settings: &EndpointSettings,
    stale_after: f64,
    scale_down_delay: f64,
) -> EndpointPolicy {
    EndpointPolicy {
        max_workers: settings.max_workers,
        cold_workers: settings.cold_workers,
        min_load: settings.min_load,
        min_cold_load: settings.min_cold_load,
        target_util: settings.target_util,
        cold_mult: settings.cold_mult,
        max_queue_time: settings.max_queue_time,
        target_queue_time: settings.target_queue_time,
        inactivity_timeout: settings.inactivity_timeout,
        state: settings.endpoint_state,
        scale_down_delay,
        stale_after,
    }
}

impl Endpoint {
    /// A live endpoint with no worker; request indexes start at `first_idx`.
    pub fn new(stored: StoredEndpoint, policy: EndpointPolicy, first_idx: u64, now: f64) -> Self {
        Self {
            stored,
            policy,
            workers: BTreeMap::new(),
            requests: RequestTable::starting_at(first_idx),
            route_index: RouteIndex::new(),
            state_counts: [0; WorkerState::ALL.len()],
            scratch: Vec::new(),
            last_activity: now,
            last_perf: None,
            backoff: SpawnBackoff::new(),
            backoff_logged: 0,
            spawns: 0,
            spawn_failures: 0,
        }
    }

    /// Adds a worker (its state is counted).
    pub fn insert_worker(&mut self, worker: Worker) {
        self.state_counts[worker.state.index()] += 1;
        if let Some(old) = self.workers.insert(worker.id, worker) {
            self.state_counts[old.state.index()] -= 1;
        }
    }

    /// Removes a worker and its routing entry.
    pub fn take_worker(&mut self, id: i64) -> Option<Worker> {
        self.route_index.remove(id);
        let w = self.workers.remove(&id)?;
        self.state_counts[w.state.index()] -= 1;
        Some(w)
    }

    /// The worker for a request of `cost`, in O(log n).
    pub fn choose(&self, cost: f64) -> Option<i64> {
        self.route_index.choose(cost, &self.policy)
    }

    /// The worker is routable now.
    pub fn is_routable(&self, id: i64) -> bool {
        self.route_index.contains(id)
    }

    /// Number of routable workers.
    pub fn routable_len(&self) -> usize {
        self.route_index.len()
    }

    /// The `status` of a WAITING answer, in O(1).
    pub fn waiting_status(&self) -> String {
        waiting_status_from_counts(self.policy.state, &self.state_counts)
    }

    fn carrying(&self, w: &Worker) -> bool {
        w.reported_load() > 0.0
            || self.requests.has_outstanding(w.id)
            || w.report
                .as_ref()
                .is_some_and(|r| !r.working_request_idxs.is_empty())
    }

    /// Re-derives one worker's state and updates its candidate entry.
    pub fn refresh(&mut self, id: i64, now: f64) -> Option<Transition> {
        let stale_after = self.policy.stale_after;
        let carrying = {
            let w = self.workers.get(&id)?;
            self.carrying(w)
        };
        let w = self.workers.get_mut(&id)?;
        let (state, reason) = derive_state_from(
            w.process,
            w.restarted,
            w.spawned_at,
            w.last_report.as_ref(),
            now,
            stale_after,
        );
        let from = w.state;
        w.state = state;
        if from != state {
            self.state_counts[from.index()] -= 1;
            self.state_counts[state.index()] += 1;
            if !w.external {
                if state == WorkerState::Idle {
                    w.idle_this_life = true;
                    self.backoff.reset();
                } else if state == WorkerState::Error && !w.idle_this_life {
                    self.backoff.record_failure(now);
                    self.spawn_failures += 1;
                }
            }
        }
        if state == WorkerState::Idle {
            if w.loaded_at.is_none() {
                w.loaded_at = Some(now);
            }
            if carrying {
                w.idle_since = None;
            } else if w.idle_since.is_none() {
                w.idle_since = Some(now);
            }
        } else {
            w.idle_since = None;
        }
        // A new kind of error is worth recording; the same one with an
        // updated figure (e.g. seconds without a report) is not.
        let new_error = state == WorkerState::Error
            && reason.is_some()
            && w.error.as_deref().map(error_kind) != reason.as_deref().map(error_kind);
        if state == WorkerState::Error && reason.is_some() {
            w.error.clone_from(&reason);
        }
        let transition = if from != state || new_error {
            Some(Transition {
                worker: id,
                from,
                to: state,
                reason,
            })
        } else {
            None
        };
        let perf = w.max_perf();
        if perf > 0.0 {
            self.last_perf = Some(perf);
        }
        self.sync_candidate(id);
        transition
    }

    /// Re-derives every worker (staleness depends on time).
    pub fn refresh_all(&mut self, now: f64) -> Vec<Transition> {
        let ids: Vec<i64> = self.workers.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.refresh(id, now))
            .collect()
    }

    /// Takes the request table's changed workers into the route index.
    /// Allocates nothing once its buffer has grown.
    pub fn apply_request_changes(&mut self) {
        let mut changed = std::mem::take(&mut self.scratch);
        self.requests.drain_changed_into(&mut changed);
        for &id in &changed {
            self.sync_candidate(id);
        }
        changed.clear();
        self.scratch = changed;
    }

    /// Files the worker in, or takes it out of, the route index. O(log n).
    pub fn sync_candidate(&mut self, id: i64) {
        let candidate = self.workers.get(&id).and_then(|w| {
            let routable = w.state == WorkerState::Idle
                && w.process == ProcessPhase::Running
                && w.url.is_some()
                && w.signature.is_some();
            routable.then(|| RouteCandidate {
                id,
                state: w.state,
                reported_load: w.reported_load(),
                pending_cost: self.requests.pending_cost(id),
                max_perf: w.max_perf(),
            })
        });
        match candidate {
            Some(c) => self.route_index.upsert(&c),
            None => self.route_index.remove(id),
        }
    }

    /// Stops routing to a worker at once (it is being stopped or has died).
    pub fn unroute(&mut self, id: i64) {
        self.route_index.remove(id);
    }

    /// The autoscaler's view of one worker.
    pub fn view(&self, w: &Worker) -> WorkerView {
        WorkerView {
            id: w.id,
            state: w.state,
            load: w.reported_load() + self.requests.pending_cost(w.id),
            carrying: self.carrying(w),
            idle_since: w.idle_since,
            loaded_at: w.loaded_at,
            stopped_at: w.stopped_at,
            created_at: w.created_at,
            max_perf: (w.max_perf() > 0.0).then(|| w.max_perf()),
            external: w.external,
        }
    }

    /// The worker carries work: reported load, an assignment in the table,
    /// or request indexes in its last report.
    pub fn is_carrying(&self, id: i64) -> bool {
        self.workers.get(&id).is_some_and(|w| self.carrying(w))
    }

    /// Re-derives at most `max` workers with ids above `after` (all ids when
    /// `None`), in id order, appending their transitions and autoscaler
    /// views. Returns the last id handled, or `None` when no worker was
    /// left. The scaler calls it in a loop, releasing the lock between
    /// calls, so that the lock is never held for O(workers).
    pub fn refresh_chunk(
        &mut self,
        after: Option<i64>,
        max: usize,
        now: f64,
        views: &mut Vec<WorkerView>,
        transitions: &mut Vec<Transition>,
    ) -> Option<i64> {
        use std::ops::Bound;
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let ids: Vec<i64> = self
            .workers
            .range((lower, Bound::Unbounded))
            .take(max)
            .map(|(id, _)| *id)
            .collect();
        for &id in &ids {
            transitions.extend(self.refresh(id, now));
            if let Some(w) = self.workers.get(&id) {
                views.push(self.view(w));
            }
        }
        ids.last().copied()
    }

    /// The autoscaler's view of this endpoint.
    pub fn snapshot(&self, now: f64) -> EndpointSnapshot {
        let workers = self.workers.values().map(|w| self.view(w)).collect();
        EndpointSnapshot {
            now,
            policy: self.policy.clone(),
            workers,
            waiting: self.requests.waiting().collect(),
            last_activity: self.last_activity,
            last_perf: self.last_perf,
        }
    }

    /// The `/get_endpoint_workers/` array.
    pub fn wire_workers(&self) -> Vec<WireWorker> {
        self.workers
            .values()
            .map(|w| WireWorker {
                worker: w.wire_view(self.requests.pending_cost(w.id)),
                control_port: w.control_port(),
            })
            .collect()
    }

    /// Workers per state, indexed by [`WorkerState::index`].
    pub fn state_counts(&self) -> &StateCounts {
        &self.state_counts
    }
}

/// Every live endpoint, with name and worker indexes.
#[derive(Debug, Default)]
pub struct Registry {
    /// Endpoints by id.
    pub endpoints: BTreeMap<i64, Endpoint>,
    /// Endpoint id by name.
    pub names: HashMap<String, i64>,
    /// Endpoint id by worker id.
    pub worker_endpoint: HashMap<i64, i64>,
}

impl Registry {
    /// Adds (or replaces) an endpoint.
    pub fn insert(&mut self, endpoint: Endpoint) {
        self.names
            .insert(endpoint.stored.name.clone(), endpoint.stored.id);
        self.endpoints.insert(endpoint.stored.id, endpoint);
    }

    /// An endpoint by name.
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut Endpoint> {
        let id = *self.names.get(name)?;
        self.endpoints.get_mut(&id)
    }

    /// The endpoint owning a worker, and the worker.
    pub fn worker_mut(&mut self, worker_id: i64) -> Option<(&mut Endpoint, i64)> {
        let ep = *self.worker_endpoint.get(&worker_id)?;
        let endpoint = self.endpoints.get_mut(&ep)?;
        endpoint
            .workers
            .contains_key(&worker_id)
            .then_some((endpoint, worker_id))
    }

    /// Adds a worker to an endpoint.
    pub fn add_worker(&mut self, endpoint_id: i64, worker: Worker) {
        if let Some(ep) = self.endpoints.get_mut(&endpoint_id) {
            self.worker_endpoint.insert(worker.id, endpoint_id);
            ep.insert_worker(worker);
        }
    }

    /// Forgets a worker entirely.
    pub fn remove_worker(&mut self, worker_id: i64) -> Option<Worker> {
        let ep = self.worker_endpoint.remove(&worker_id)?;
        let endpoint = self.endpoints.get_mut(&ep)?;
        endpoint.unroute(worker_id);
        endpoint.requests.forget_worker(worker_id);
        endpoint.apply_request_changes();
        endpoint.take_worker(worker_id)
    }

    /// Removes an endpoint and returns it (its workers must then be stopped).
    pub fn remove_endpoint(&mut self, id: i64) -> Option<Endpoint> {
        let ep = self.endpoints.remove(&id)?;
        self.names.remove(&ep.stored.name);
        for wid in ep.workers.keys() {
            self.worker_endpoint.remove(wid);
        }
        Some(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::WorkerTemplate;

    fn endpoint() -> Endpoint {
        let stored = StoredEndpoint {
            id: 1,
            name: "e".into(),
            api_key: "k".into(),
            settings: EndpointSettings::default(),
            created_at: 0.0,
            workergroup_id: 1,
            template: WorkerTemplate::default(),
        };
        Endpoint::new(stored, EndpointPolicy::seed(), 1, 0.0)
    }

    fn ready_worker(id: i64, now: f64) -> Worker {
        let mut w = Worker::launched(id, "t".into(), now);
        w.process = ProcessPhase::Running;
        w.spawned_at = Some(now);
        w.url = Some(format!("http://127.0.0.1:{id}").into());
        w.signature = Some("sig".into());
        w.last_report = Some(ReportFacts {
            at: now,
            max_perf: 100.0,
            loadtime: 0.1,
            error_msg: String::new(),
            version: "1.1.0".into(),
        });
        w.report = Some(WorkerStatus {
            id,
            mtoken: "t".into(),
            version: "1.1.0".into(),
            loadtime: 0.1,
            max_perf: 100.0,
            ..WorkerStatus::default()
        });
        w
    }

    #[test]
    fn route_index_follows_state_and_pending_cost() {
        let mut ep = endpoint();
        for id in [1, 2, 3] {
            ep.insert_worker(ready_worker(id, 1.0));
            ep.refresh(id, 1.0);
        }
        assert_eq!(ep.routable_len(), 3);
        assert_eq!(ep.state_counts()[WorkerState::Idle.index()], 3);
        // Seed policy: a free worker takes cost 100; one with 100 pending does not.
        let idx = ep.requests.route(0, 100.0, 60.0, 1.0);
        ep.requests.assign(idx, 1, 100.0, 1.0);
        ep.apply_request_changes();
        assert_eq!(ep.choose(100.0), Some(2));
        ep.unroute(2);
        assert!(!ep.is_routable(2));
        assert_eq!(ep.choose(100.0), Some(3));
        // Stale reports make a worker ERROR and unroutable.
        let t = ep.refresh(3, 1000.0).unwrap();
        assert_eq!(t.to, WorkerState::Error);
        assert!(!ep.is_routable(3));
        assert_eq!(ep.choose(100.0), None);
        assert_eq!(ep.state_counts()[WorkerState::Error.index()], 1);
        assert_eq!(
            ep.waiting_status(),
            "waiting: 2 ready, 0 loading, 0 stopped, 1 error"
        );
        ep.take_worker(3);
        assert_eq!(ep.state_counts().iter().sum::<usize>(), 2);
    }

    #[test]
    fn workers_failing_before_idle_back_off_and_idle_resets() {
        let mut ep = endpoint();
        // Exits before ever reporting: a failed launch.
        let mut w = Worker::launched(1, "t".into(), 0.0);
        w.process = ProcessPhase::Exited { expected: false };
        ep.insert_worker(w);
        ep.refresh(1, 0.0);
        assert_eq!(ep.backoff.failures(), 1);
        assert!(!ep.backoff.allows(0.5));
        // An IDLE worker resets it; its later ERROR is not a launch failure.
        ep.insert_worker(ready_worker(2, 1.0));
        ep.refresh(2, 1.0);
        assert_eq!(ep.backoff.failures(), 0);
        ep.refresh(2, 1000.0);
        assert_eq!(ep.backoff.failures(), 0);
        assert_eq!(ep.spawn_failures, 1);
    }
}
