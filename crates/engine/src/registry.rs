//! The engine's live state as one state machine: every endpoint, its
//! workers (process phase, last report, derived state, signed URL), its
//! request table, its [`RouteIndex`] of routable workers, per-state worker
//! counts and the spawn backoff.
//!
//! The only way to change it is [`Registry::apply`]: reports, routes,
//! process exits and spawn results, scaler passes and API changes are
//! [`Event`]s, each applied with the time `now` given by the caller; the
//! answer comes back in an [`Outcome`] together with the [`Effect`]s the
//! caller must carry out afterwards, outside the lock (spawn or stop a
//! process, sign a URL, write to the store, wake held `/route/` calls,
//! kick the scaler). Fields are private, so the invariants (per-state
//! counts, route index, worker → endpoint index) are kept here and checked
//! in one place ([`Registry::check_invariants`]), after every event in
//! debug builds. Read-only queries take `&self`.
//!
//! Nothing here locks, reads a clock or does I/O; `/route/` costs
//! O(log workers) with no allocation beyond its answer. Nothing is
//! persisted here either: the endpoints come from the database at start,
//! the workers from reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nullworker_protocol::messages::{EndpointWorker, WorkerStatus};
use serde::Serialize;

use crate::db::StoredEndpoint;
use crate::endpoint::{EndpointSettings, WorkerTemplate};
use crate::events::{EndpointView, EngineEvent, Observation};
use crate::policy::autoscale::{ActionKind, Decision, EndpointSnapshot, WorkerView};
use crate::policy::backoff::SpawnBackoff;
use crate::policy::requests::RequestTable;
use crate::policy::routing::{
    waiting_status, RouteCandidate, RouteIndex, StateCounts, WaitingFacts,
};
use crate::policy::worker_state::{derive_state_from, ProcessPhase, ReportFacts};
use crate::policy::{EndpointPolicy, EndpointState, WorkerState};
use crate::store::StoreOp;
use crate::supervisor::{ExitEvent, ProcKind, Spawned};

/// Engine-wide knobs the registry needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    /// Seconds without a report before a worker is `ERROR`.
    pub stale_after: f64,
    /// Scale-down hysteresis (seconds).
    pub scale_down_delay: f64,
    /// Refuse reports from workers the engine did not launch (the
    /// default); else a report with an endpoint's api_key as `mtoken`
    /// registers an external worker.
    pub strict: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            stale_after: 30.0,
            scale_down_delay: 5.0,
            strict: true,
        }
    }
}

// ---------------------------------------------------------------------------
// Events, replies, effects
// ---------------------------------------------------------------------------

/// A `/route/` call, validated.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Endpoint name, if given.
    pub name: Option<&'a str>,
    /// Endpoint id, if given (the name wins).
    pub endpoint_id: Option<i64>,
    /// Keys presented (one must be the endpoint's api_key).
    pub keys: &'a [String],
    /// `request_idx` (0: a new request).
    pub request_idx: u64,
    /// Cost, finite and ≥ 0.
    pub cost: f64,
    /// Replay timeout asked for (clamped by the request table).
    pub replay_timeout: f64,
}

/// Something that happened; the only input of [`Registry::apply`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A `/route/` call.
    Route(RouteRequest<'a>),
    /// A `/worker_status/` report, with the signature of its URL when
    /// [`Registry::check_report`] asked for one.
    Report {
        /// The report.
        report: WorkerStatus,
        /// Signature of `report.url`.
        signature: Option<Arc<str>>,
    },
    /// A `/delete_requests/` call: requests a worker finished.
    RequestsDone {
        /// Worker id.
        worker_id: i64,
        /// Its `MASTER_TOKEN`.
        mtoken: &'a str,
        /// Finished `request_idx`s.
        idxs: Vec<u64>,
    },
    /// A worker or consumer process exited.
    ProcessExited(ExitEvent),
    /// A spawn asked by [`Effect::Spawn`] finished.
    SpawnDone {
        /// Endpoint id.
        endpoint_id: i64,
        /// Worker id.
        worker_id: i64,
        /// The processes, or why they could not be started.
        result: Result<Spawned, String>,
    },
    /// A signature asked by [`Effect::Sign`] is ready.
    Signed {
        /// Endpoint id.
        endpoint_id: i64,
        /// Worker id.
        worker_id: i64,
        /// The URL signed.
        url: String,
        /// Its signature.
        signature: Arc<str>,
    },
    /// A stop asked by [`Effect::Stop`] finished.
    StopDone {
        /// Worker id.
        worker_id: i64,
        /// It was destroyed (else stopped as cold capacity).
        destroy: bool,
    },
    /// One chunk of a scaler pass: re-derive at most `max` workers with ids
    /// above `after` and append their views; the first chunk (`after` is
    /// `None` and `views` empty) also expires old requests.
    Scan {
        /// Endpoint id.
        endpoint_id: i64,
        /// Last id of the previous chunk.
        after: Option<i64>,
        /// Chunk size.
        max: usize,
        /// Views gathered so far.
        views: &'a mut Vec<WorkerView>,
    },
    /// The decision of a scaler pass over `snapshot`, to carry out.
    Decided {
        /// Endpoint id.
        endpoint_id: i64,
        /// What the decision saw.
        snapshot: &'a EndpointSnapshot,
        /// The decision.
        decision: &'a Decision,
    },
    /// An endpoint was created (and stored).
    EndpointCreated(StoredEndpoint),
    /// An endpoint's settings and template changed (and were stored).
    EndpointUpdated {
        /// Endpoint id.
        id: i64,
        /// New settings.
        settings: EndpointSettings,
        /// New template.
        template: WorkerTemplate,
    },
    /// An endpoint was deleted: stop every worker.
    EndpointDeleted(i64),
    /// The engine stops: stop every worker.
    StopAll,
    /// A worker a previous engine launched still runs and was taken over.
    Adopted {
        /// Endpoint id.
        endpoint_id: i64,
        /// Worker id.
        worker_id: i64,
        /// Its `MASTER_TOKEN`.
        mtoken: String,
        /// Its processes.
        spawned: Spawned,
    },
}

/// Why a report or `/delete_requests/` call is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Malformed content (the message names the field).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown worker or wrong token.
    #[error("{0}")]
    Unauthorized(String),
    /// The worker was removed.
    #[error("worker {0} is gone")]
    Gone(i64),
}

/// What [`Registry::check_report`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportCheck {
    /// Apply it as it is.
    Apply,
    /// Sign `report.url` first (a new or moved external worker).
    Sign,
}

/// The answer of a `/route/` event.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteReply {
    /// Bad key or no such endpoint.
    Unauthorized,
    /// A worker was assigned.
    Ready {
        /// Endpoint name.
        endpoint: String,
        /// Worker URL.
        url: Arc<str>,
        /// Its signature.
        signature: Arc<str>,
        /// The request's index.
        request_idx: u64,
    },
    /// No worker yet.
    Waiting {
        /// Endpoint id.
        endpoint_id: i64,
        /// Endpoint name.
        endpoint: String,
        /// The request's index.
        request_idx: u64,
        /// The WAITING `status` line.
        status: String,
        /// Worth holding the answer for a worker to become ready.
        hold: bool,
        /// Why launches are failing, while they are held back (also in
        /// `status`).
        reason: Option<String>,
    },
}

/// The answer of one scan chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanStep {
    /// More workers are left after this id.
    More(i64),
    /// Every worker was seen: the snapshot to decide on.
    Done(EndpointSnapshot),
}

/// The direct answer of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Nothing to answer.
    None,
    /// Answer of [`Event::Route`].
    Route(RouteReply),
    /// Answer of [`Event::Report`] and [`Event::RequestsDone`].
    Accepted(Result<(), Refusal>),
    /// Answer of [`Event::Scan`]; `None` if the endpoint is gone.
    Scan(Option<ScanStep>),
    /// Answer of endpoint events: whether the endpoint existed, and how
    /// many workers it had (for a deletion).
    Endpoint(Option<usize>),
}

/// A counter to bump in the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Count {
    /// A scale action carried out.
    ScaleAction {
        /// `create`, `start`, `stop` or `destroy`.
        action: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A worker process exited (`expected` or `unexpected`).
    WorkerExit(&'static str),
    /// A request waited this long before its READY.
    WaitToReady(f64),
    /// An accepted report.
    Report,
}

/// What the caller must do after an event, outside the lock.
#[derive(Debug)]
pub enum Effect {
    /// Launch a worker's processes, then apply [`Event::SpawnDone`].
    Spawn {
        /// Endpoint id.
        endpoint_id: i64,
        /// Worker id.
        worker_id: i64,
        /// Its `MASTER_TOKEN`.
        mtoken: String,
        /// How to launch it.
        template: WorkerTemplate,
    },
    /// Stop a worker's processes, then apply [`Event::StopDone`].
    Stop {
        /// Worker id.
        worker_id: i64,
        /// Its processes, if it has any.
        spawned: Option<Spawned>,
        /// Destroy (else stop as cold capacity).
        destroy: bool,
    },
    /// Sign a URL, then apply [`Event::Signed`].
    Sign {
        /// Endpoint id.
        endpoint_id: i64,
        /// Worker id.
        worker_id: i64,
        /// The URL.
        url: String,
    },
    /// Write to the store (never waited on).
    Store(StoreOp),
    /// A worker may have become routable: wake held `/route/` calls.
    WakeRouters,
    /// Ask for an early scaler pass over an endpoint.
    Kick {
        /// Endpoint id.
        endpoint_id: i64,
        /// After a WAITING answer (else after an event).
        waiting: bool,
    },
    /// Bump a metric.
    Count(Count),
    /// Tell the event stream (never waited on).
    Observe(Observation),
}

/// The result of [`Registry::apply`].
#[derive(Debug)]
pub struct Outcome {
    /// The direct answer.
    pub reply: Reply,
    /// What to carry out, in order.
    pub effects: Vec<Effect>,
}

// ---------------------------------------------------------------------------
// Read-only views
// ---------------------------------------------------------------------------

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

/// Everything the engine shows about one live worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    /// The `/get_endpoint_workers/` view.
    #[serde(flatten)]
    pub wire: WireWorker,
    /// Derived state.
    #[serde(skip)]
    pub state: WorkerState,
    /// Why it is in ERROR.
    pub error: Option<String>,
    /// Registered by its reports, not launched by the engine.
    pub external: bool,
    /// `NULL_CONSUMER_PORT`.
    pub consumer_port: Option<u16>,
    /// Worker process id, while it runs.
    pub pid: Option<i32>,
    /// Consumer process id, while it runs.
    pub consumer_pid: Option<i32>,
}

/// What `/metrics` and `endpoint show` report about one endpoint, in O(1).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointGauges {
    /// Endpoint name.
    pub name: String,
    /// Workers per state.
    pub counts: StateCounts,
    /// Σ effective load of active workers, as of the last scaler pass.
    pub load: f64,
    /// Requests waiting.
    pub queued: usize,
    /// Σ cost of waiting requests.
    pub queued_cost: f64,
    /// Worker launches.
    pub spawns: u64,
    /// Launches that failed before IDLE.
    pub spawn_failures: u64,
    /// Consecutive failed launches.
    pub backoff_failures: u32,
    /// Current backoff delay (s).
    pub backoff_delay: f64,
    /// Last failure time.
    pub backoff_last_failure: Option<f64>,
    /// When the next launch may happen, if held back.
    pub backoff_retry_at: Option<f64>,
    /// Why the last launch failed (e.g. `no space left on device writing
    /// <path>`), and when.
    pub last_error: Option<(String, f64)>,
}

// ---------------------------------------------------------------------------
// Workers and endpoints (private)
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Worker {
    id: i64,
    mtoken: String,
    external: bool,
    url: Option<Arc<str>>,
    signature: Option<Arc<str>>,
    process: ProcessPhase,
    restarted: bool,
    /// When its processes were last asked for (a report from them cannot
    /// be older; one can arrive before the launch's result is applied).
    spawn_requested_at: Option<f64>,
    spawned_at: Option<f64>,
    spawned: Option<Spawned>,
    last_report: Option<ReportFacts>,
    report: Option<WorkerStatus>,
    created_at: f64,
    loaded_at: Option<f64>,
    idle_since: Option<f64>,
    stopped_at: Option<f64>,
    state: WorkerState,
    error: Option<String>,
    idle_this_life: bool,
    /// A report with numbers out of bounds was logged (once per worker).
    numbers_warned: bool,
    /// Relaunches in a row because its ports were taken (reset at IDLE).
    port_relaunches: u32,
    /// Relaunch once the current processes are stopped.
    relaunch: bool,
}

impl Worker {
    fn launched(id: i64, mtoken: String, now: f64) -> Self {
        Self {
            id,
            mtoken,
            external: false,
            url: None,
            signature: None,
            process: ProcessPhase::NotSpawned,
            restarted: false,
            spawn_requested_at: None,
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
            numbers_warned: false,
            port_relaunches: 0,
            relaunch: false,
        }
    }

    fn reported_load(&self) -> f64 {
        self.report
            .as_ref()
            .map_or(0.0, |r| finite_or_zero(r.cur_load))
    }

    fn max_perf(&self) -> f64 {
        self.report
            .as_ref()
            .map_or(0.0, |r| finite_or_zero(r.max_perf))
    }

    fn control_port(&self) -> Option<u16> {
        self.spawned.as_ref().map(|s| s.control_port)
    }

    fn pids(&self) -> (Option<i32>, Option<i32>) {
        let spawned = self.spawned.as_ref();
        (
            spawned.map(|s| s.worker.pid),
            spawned.and_then(|s| s.consumer.as_ref()).map(|c| c.pid),
        )
    }

    fn wire_view(&self, pending_cost: f64) -> EndpointWorker {
        let r = self.report.as_ref();
        EndpointWorker {
            id: self.id,
            status: self.state.as_str().to_owned(),
            cur_load: self.reported_load() + pending_cost,
            new_load: r.map_or(0.0, |r| finite_or_zero(r.new_load)),
            cur_load_rolling_avg: self.reported_load(),
            cur_perf: r.map_or(0.0, |r| finite_or_zero(r.cur_perf)),
            perf: self.max_perf(),
            measured_perf: self.max_perf(),
            dlperf: 0.0,
            reliability: 1.0,
            reqs_working: r.map_or(0, |r| r.num_requests_working),
            disk_usage: r.and_then(|r| r.disk_usage).map_or(0.0, finite_or_zero),
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

/// A state change worth logging and recording.
#[derive(Debug, Clone, PartialEq)]
struct Transition {
    worker: i64,
    from: WorkerState,
    to: WorkerState,
    reason: Option<String>,
}

#[derive(Debug)]
struct Endpoint {
    stored: StoredEndpoint,
    policy: EndpointPolicy,
    workers: BTreeMap<i64, Worker>,
    requests: RequestTable,
    route_index: RouteIndex,
    state_counts: StateCounts,
    scratch: Vec<i64>,
    last_activity: f64,
    last_perf: Option<f64>,
    backoff: SpawnBackoff,
    backoff_logged: u32,
    spawns: u64,
    spawn_failures: u64,
    /// Σ load of active workers at the last scaler pass (for `/metrics`).
    load: f64,
    /// Sessions an engine-launched worker holds at most (`None`: no limit).
    max_sessions: Option<usize>,
    /// Why the last launch failed, and when.
    last_error: Option<(String, f64)>,
}

/// Sessions a worker launched with `template` holds at most: its
/// `NULLWORKER_MAX_SESSIONS` (0: unlimited), else the worker's default of 1.
pub fn template_max_sessions(template: &WorkerTemplate) -> Option<usize> {
    match template.env.get("NULLWORKER_MAX_SESSIONS") {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => Some(1),
        },
        None => Some(1),
    }
}

/// The policy parameters of an endpoint's settings: the last link of the
/// chain wire fields → [`EndpointSettings`] → [`EndpointPolicy`].
pub fn policy_of(
    settings: &EndpointSettings,
    stale_after: f64,
    scale_down_delay: f64,
) -> EndpointPolicy {
    settings.policy(stale_after, scale_down_delay)
}

impl Endpoint {
    fn new(stored: StoredEndpoint, policy: EndpointPolicy, now: f64) -> Self {
        let stored_template = stored.template.clone();
        // Request indexes start above anything a previous run handed out.
        let first_idx = (now * 1000.0) as u64;
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
            load: 0.0,
            max_sessions: template_max_sessions(&stored_template),
            last_error: None,
        }
    }

    fn insert_worker(&mut self, worker: Worker) {
        self.state_counts[worker.state.index()] += 1;
        if let Some(old) = self.workers.insert(worker.id, worker) {
            self.state_counts[old.state.index()] -= 1;
        }
    }

    fn take_worker(&mut self, id: i64) -> Option<Worker> {
        self.route_index.remove(id);
        self.requests.forget_worker(id);
        self.apply_request_changes();
        let w = self.workers.remove(&id)?;
        self.state_counts[w.state.index()] -= 1;
        Some(w)
    }

    fn carrying(&self, w: &Worker) -> bool {
        w.reported_load() > 0.0
            || self.requests.has_outstanding(w.id)
            || w.report
                .as_ref()
                .is_some_and(|r| !r.working_request_idxs.is_empty())
    }

    fn is_carrying(&self, id: i64) -> bool {
        self.workers.get(&id).is_some_and(|w| self.carrying(w))
    }

    /// Re-derives one worker's state and updates its candidate entry.
    fn refresh(&mut self, id: i64, now: f64) -> Option<Transition> {
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
                    w.port_relaunches = 0;
                    self.backoff.reset();
                } else if state == WorkerState::Error && !w.idle_this_life {
                    self.backoff.record_failure(now);
                    self.spawn_failures += 1;
                    if let Some(reason) = &reason {
                        self.last_error = Some((reason.clone(), now));
                    }
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
        let transition = (from != state || new_error).then_some(Transition {
            worker: id,
            from,
            to: state,
            reason,
        });
        let perf = w.max_perf();
        if perf > 0.0 {
            self.last_perf = Some(perf);
        }
        self.sync_candidate(id);
        transition
    }

    /// Takes the request table's changed workers into the route index.
    fn apply_request_changes(&mut self) {
        let mut changed = std::mem::take(&mut self.scratch);
        self.requests.drain_changed_into(&mut changed);
        for &id in &changed {
            self.sync_candidate(id);
        }
        changed.clear();
        self.scratch = changed;
    }

    /// Sessions the worker holds as far as the engine knows: assignments
    /// not yet finished, or the requests its last report lists, whichever
    /// is more.
    fn sessions_held(&self, w: &Worker) -> usize {
        let listed = w
            .report
            .as_ref()
            .map_or(0, |r| r.working_request_idxs.len());
        self.requests.outstanding(w.id).max(listed)
    }

    /// What the route index should hold for a worker, if anything: an IDLE,
    /// running, signed worker with a session free. A worker at its
    /// `max_sessions` is never a candidate, whatever its load says (a
    /// `cost: 0` session leaves the load at 0).
    fn candidate(&self, id: i64) -> Option<RouteCandidate> {
        let w = self.workers.get(&id)?;
        let session_free = w.external
            || self
                .max_sessions
                .is_none_or(|max| self.sessions_held(w) < max);
        let routable = w.state == WorkerState::Idle
            && w.process == ProcessPhase::Running
            && w.url.is_some()
            && w.signature.is_some()
            && session_free;
        routable.then(|| RouteCandidate {
            id,
            state: w.state,
            reported_load: w.reported_load(),
            pending_cost: self.requests.pending_cost(id),
            max_perf: w.max_perf(),
        })
    }

    /// Files the worker in, or takes it out of, the route index. O(log n).
    fn sync_candidate(&mut self, id: i64) {
        match self.candidate(id) {
            Some(c) => self.route_index.upsert(&c),
            None => self.route_index.remove(id),
        }
    }

    fn view(&self, w: &Worker) -> WorkerView {
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

    fn row(&self, w: &Worker) -> WorkerRow {
        let (pid, consumer_pid) = w.pids();
        WorkerRow {
            wire: WireWorker {
                worker: w.wire_view(self.requests.pending_cost(w.id)),
                control_port: w.control_port(),
            },
            state: w.state,
            error: w.error.clone(),
            external: w.external,
            consumer_port: w.spawned.as_ref().and_then(|s| s.consumer_port),
            pid,
            consumer_pid,
        }
    }

    /// Marks a running worker's process as exited unexpectedly: it leaves
    /// the routing table and its assignments are forgotten (their clients
    /// replay). Returns how many assignments were dropped.
    fn worker_exited(&mut self, id: i64) -> usize {
        if let Some(w) = self.workers.get_mut(&id) {
            w.process = ProcessPhase::Exited { expected: false };
        }
        self.route_index.remove(id);
        let dropped = self.requests.forget_worker(id);
        self.apply_request_changes();
        dropped
    }

    fn gauges(&self) -> EndpointGauges {
        EndpointGauges {
            name: self.stored.name.clone(),
            counts: self.state_counts,
            load: self.load,
            queued: self.requests.waiting_len(),
            queued_cost: self.requests.waiting_cost(),
            spawns: self.spawns,
            spawn_failures: self.spawn_failures,
            backoff_failures: self.backoff.failures(),
            backoff_delay: self.backoff.delay(),
            backoff_last_failure: self.backoff.last_failure(),
            backoff_retry_at: self.backoff.retry_at(),
            last_error: self.last_error.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

/// Every live endpoint, with name and worker indexes. See the module docs.
#[derive(Debug, Default)]
pub struct Registry {
    config: RegistryConfig,
    endpoints: BTreeMap<i64, Endpoint>,
    names: HashMap<String, i64>,
    worker_endpoint: HashMap<i64, i64>,
    /// Highest worker id handed out or seen.
    last_worker_id: i64,
}

/// Above this many workers, debug builds check the invariants of the
/// touched endpoint only, not of every endpoint, after each event.
const FULL_CHECK_MAX_WORKERS: usize = 2_000;

/// A launched worker whose ports were taken before it could bind them (the
/// engine picks free ports, then the worker binds them: another process
/// may take one in between) is relaunched at once on fresh ports, this
/// many times in a row, without counting as a failed launch; after that
/// the error counts like any other.
pub const MAX_PORT_RELAUNCHES: u32 = 3;

/// Whether a report's `error_msg` says the worker could not bind a port
/// because it is in use (the worker's launch-failure report: `cannot listen
/// on 127.0.0.1:<port> for the ..., WORKER_PORT: address already in use`).
fn port_taken(error_msg: &str) -> bool {
    error_msg
        .to_ascii_lowercase()
        .contains("address already in use")
}

/// An external worker silent for this many times `stale_after` (60 s by
/// default: `ERROR` at `stale_after`, then as long again of grace) is
/// forgotten: the engine cannot stop it, and kept in `ERROR` it would count
/// against `max_workers` for ever. If it reports again it registers anew.
pub const EXTERNAL_FORGET_AFTER_STALE: f64 = 2.0;

/// Logs and records one state transition.
fn record(effects: &mut Vec<Effect>, endpoint: &str, tr: Transition) {
    match &tr.reason {
        Some(reason) => {
            tracing::warn!(endpoint, worker = tr.worker, from = %tr.from, to = %tr.to, %reason, "worker state")
        }
        None => {
            tracing::info!(endpoint, worker = tr.worker, from = %tr.from, to = %tr.to, "worker state")
        }
    }
    effects.push(Effect::Observe(Observation::Published(
        EngineEvent::WorkerState {
            endpoint: endpoint.to_owned(),
            worker: tr.worker,
            from: tr.from,
            to: tr.to,
            reason: tr.reason.clone(),
        },
    )));
    effects.push(Effect::Store(StoreOp::UpdateWorker {
        id: tr.worker,
        state: tr.to.as_str(),
        url: None,
        reason: tr.reason,
        ended_at: None,
    }));
}

impl Registry {
    /// An empty registry; new worker ids go above `last_worker_id`.
    pub fn new(config: RegistryConfig, last_worker_id: i64) -> Self {
        Self {
            config,
            last_worker_id,
            ..Self::default()
        }
    }

    /// Applies one event at time `now` and returns its answer and effects.
    pub fn apply(&mut self, event: Event<'_>, now: f64) -> Outcome {
        let mut effects = Vec::new();
        let touched = event_endpoint(&event, &self.worker_endpoint, &self.names);
        let reply = match event {
            Event::Route(req) => Reply::Route(self.route(req, now, &mut effects)),
            Event::Report { report, signature } => {
                Reply::Accepted(self.report(report, signature, now, &mut effects))
            }
            Event::RequestsDone {
                worker_id,
                mtoken,
                idxs,
            } => Reply::Accepted(self.requests_done(worker_id, mtoken, &idxs, &mut effects)),
            Event::ProcessExited(exit) => {
                self.process_exited(&exit, now, &mut effects);
                Reply::None
            }
            Event::SpawnDone {
                endpoint_id,
                worker_id,
                result,
            } => {
                self.spawn_done(endpoint_id, worker_id, result, now, &mut effects);
                Reply::None
            }
            Event::Signed {
                endpoint_id,
                worker_id,
                url,
                signature,
            } => {
                self.signed(endpoint_id, worker_id, &url, signature, &mut effects);
                Reply::None
            }
            Event::StopDone { worker_id, destroy } => {
                self.stop_done(worker_id, destroy, now, &mut effects);
                Reply::None
            }
            Event::Scan {
                endpoint_id,
                after,
                max,
                views,
            } => Reply::Scan(self.scan(endpoint_id, after, max, views, now, &mut effects)),
            Event::Decided {
                endpoint_id,
                snapshot,
                decision,
            } => {
                self.decided(endpoint_id, snapshot, decision, now, &mut effects);
                Reply::None
            }
            Event::EndpointCreated(stored) => {
                let id = stored.id;
                let policy = policy_of(
                    &stored.settings,
                    self.config.stale_after,
                    self.config.scale_down_delay,
                );
                self.names.insert(stored.name.clone(), id);
                effects.push(Effect::Observe(Observation::Endpoint(EndpointView::new(
                    id,
                    &stored.name,
                    &stored.settings,
                ))));
                self.endpoints
                    .insert(id, Endpoint::new(stored, policy, now));
                effects.push(Effect::Kick {
                    endpoint_id: id,
                    waiting: false,
                });
                Reply::Endpoint(Some(0))
            }
            Event::EndpointUpdated {
                id,
                settings,
                template,
            } => Reply::Endpoint(self.update_endpoint(id, settings, template, &mut effects)),
            Event::EndpointDeleted(id) => {
                Reply::Endpoint(self.delete_endpoint(id, now, &mut effects))
            }
            Event::StopAll => Reply::Endpoint(Some(self.stop_all(now, &mut effects))),
            Event::Adopted {
                endpoint_id,
                worker_id,
                mtoken,
                spawned,
            } => {
                self.adopted(endpoint_id, worker_id, mtoken, spawned, now, &mut effects);
                Reply::None
            }
        };
        if cfg!(debug_assertions) {
            self.debug_check(touched);
        }
        Outcome { reply, effects }
    }

    fn debug_check(&self, touched: Option<i64>) {
        let total = self.worker_endpoint.len();
        if total <= FULL_CHECK_MAX_WORKERS {
            self.check_invariants();
        } else if let Some(ep) = touched.and_then(|id| self.endpoints.get(&id)) {
            if let Err(err) = check_endpoint(ep) {
                panic!("registry invariant broken: {err}");
            }
        }
    }

    /// Checks every invariant, panicking with the first broken one: the
    /// per-state counts match the workers, the route index holds exactly the
    /// routable workers with their current figures, and the name and
    /// worker → endpoint indexes match the endpoints.
    pub fn check_invariants(&self) {
        if let Err(err) = self.invariants() {
            panic!("registry invariant broken: {err}");
        }
    }

    fn invariants(&self) -> Result<(), String> {
        if self.names.len() != self.endpoints.len() {
            return Err(format!(
                "{} names for {} endpoints",
                self.names.len(),
                self.endpoints.len()
            ));
        }
        let mut workers = 0;
        for (id, ep) in &self.endpoints {
            if self.names.get(&ep.stored.name) != Some(id) {
                return Err(format!("endpoint {id} is not indexed by its name"));
            }
            check_endpoint(ep)?;
            for wid in ep.workers.keys() {
                if self.worker_endpoint.get(wid) != Some(id) {
                    return Err(format!("worker {wid} is not indexed to endpoint {id}"));
                }
                if *wid > self.last_worker_id {
                    return Err(format!("worker {wid} is above the last id handed out"));
                }
            }
            workers += ep.workers.len();
        }
        if workers != self.worker_endpoint.len() {
            return Err(format!(
                "{} workers indexed, {workers} held",
                self.worker_endpoint.len()
            ));
        }
        Ok(())
    }

    // -- queries -----------------------------------------------------------

    /// Ids of every endpoint.
    pub fn endpoint_ids(&self) -> Vec<i64> {
        self.endpoints.keys().copied().collect()
    }

    /// The endpoint named `name`.
    pub fn endpoint_id(&self, name: &str) -> Option<i64> {
        self.names.get(name).copied()
    }

    /// What the database holds for an endpoint.
    pub fn stored(&self, id: i64) -> Option<&StoredEndpoint> {
        self.endpoints.get(&id).map(|ep| &ep.stored)
    }

    /// Every endpoint as stored, by id.
    pub fn stored_all(&self) -> impl Iterator<Item = &StoredEndpoint> {
        self.endpoints.values().map(|ep| &ep.stored)
    }

    /// The endpoint owning workergroup `wg`.
    pub fn endpoint_of_workergroup(&self, wg: i64) -> Option<i64> {
        self.endpoints
            .values()
            .find(|ep| ep.stored.workergroup_id == wg)
            .map(|ep| ep.stored.id)
    }

    /// The endpoint's gauges, in O(1).
    pub fn gauges(&self, id: i64) -> Option<EndpointGauges> {
        self.endpoints.get(&id).map(Endpoint::gauges)
    }

    /// Whether the launch of `worker_id` has been applied (test builds).
    #[cfg(test)]
    pub fn is_spawned(&self, endpoint_id: i64, worker_id: i64) -> bool {
        self.endpoints
            .get(&endpoint_id)
            .and_then(|ep| ep.workers.get(&worker_id))
            .is_some_and(|w| w.spawned.is_some())
    }

    /// Whether `worker_id` is a routing candidate (test builds).
    #[cfg(test)]
    pub fn is_routable(&self, endpoint_id: i64, worker_id: i64) -> bool {
        self.endpoints
            .get(&endpoint_id)
            .is_some_and(|ep| ep.route_index.contains(worker_id))
    }

    /// Number of live workers.
    pub fn worker_count(&self) -> usize {
        self.worker_endpoint.len()
    }

    /// At most `max` rows of an endpoint's workers with ids above `after`,
    /// in id order (`None` if there is no such endpoint). Callers page
    /// through with the last id, releasing the lock between pages.
    pub fn worker_rows(&self, id: i64, after: Option<i64>, max: usize) -> Option<Vec<WorkerRow>> {
        use std::ops::Bound;
        let ep = self.endpoints.get(&id)?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Some(
            ep.workers
                .range((lower, Bound::Unbounded))
                .take(max)
                .map(|(_, w)| ep.row(w))
                .collect(),
        )
    }

    /// Whether a report can be applied, needs its URL signed first, or is
    /// refused.
    pub fn check_report(&self, report: &WorkerStatus) -> Result<ReportCheck, Refusal> {
        if let Some(w) = self.worker(report.id) {
            let moved = w.external
                && w.mtoken == report.mtoken
                && w.url.as_deref() != Some(report.url.as_str())
                && report.url.starts_with("http");
            return Ok(if moved {
                ReportCheck::Sign
            } else {
                ReportCheck::Apply
            });
        }
        self.external_endpoint(report).map(|_| ReportCheck::Sign)
    }

    fn worker(&self, id: i64) -> Option<&Worker> {
        let ep = self.worker_endpoint.get(&id)?;
        self.endpoints.get(ep)?.workers.get(&id)
    }

    /// The endpoint an unknown worker registers with (its api_key as
    /// `MASTER_TOKEN`), or why it may not.
    fn external_endpoint(&self, report: &WorkerStatus) -> Result<i64, Refusal> {
        if self.config.strict {
            return Err(Refusal::Unauthorized(format!(
                "unknown worker id {}: this engine only takes reports from workers it launched (start it with --allow-external-workers to register others)",
                report.id
            )));
        }
        let ep_id = self
            .endpoints
            .values()
            .find(|ep| !report.mtoken.is_empty() && ep.stored.api_key == report.mtoken)
            .map(|ep| ep.stored.id)
            .ok_or_else(|| {
                Refusal::Unauthorized(format!(
                    "unknown worker id {}: an external worker must use its endpoint's api_key as MASTER_TOKEN",
                    report.id
                ))
            })?;
        if !(report.url.starts_with("http://") || report.url.starts_with("https://")) {
            return Err(Refusal::BadRequest(format!(
                "url: expected an http(s) URL, got {:?}",
                report.url
            )));
        }
        Ok(ep_id)
    }

    // -- events ------------------------------------------------------------

    /// One pass of §12.4: O(log workers).
    fn route(&mut self, req: RouteRequest<'_>, now: f64, effects: &mut Vec<Effect>) -> RouteReply {
        let id = match (req.name, req.endpoint_id) {
            (Some(name), _) => self.names.get(name).copied(),
            (None, id) => id,
        };
        let Some(ep) = id.and_then(|id| self.endpoints.get_mut(&id)) else {
            return RouteReply::Unauthorized;
        };
        if !req.keys.contains(&ep.stored.api_key) {
            return RouteReply::Unauthorized;
        }
        ep.last_activity = ep.last_activity.max(now);
        let idx = ep
            .requests
            .route(req.request_idx, req.cost, req.replay_timeout, now);
        ep.apply_request_changes();
        if let Some(worker_id) = ep.route_index.choose(req.cost, &ep.policy) {
            let first_wait = ep.requests.assign(idx, worker_id, req.cost, now);
            ep.sync_candidate(worker_id);
            let w = &ep.workers[&worker_id];
            let (Some(url), Some(signature)) = (&w.url, &w.signature) else {
                unreachable!("routable workers always have a signed URL");
            };
            if let Some(since) = first_wait {
                effects.push(Effect::Count(Count::WaitToReady(now - since)));
            }
            return RouteReply::Ready {
                endpoint: ep.stored.name.clone(),
                url: url.clone(),
                signature: signature.clone(),
                request_idx: idx,
            };
        }
        ep.requests.mark_waiting(idx, req.cost, now);
        // Coalesced by the scaler: at most one early pass per endpoint
        // every 100 ms however many answers wait.
        effects.push(Effect::Kick {
            endpoint_id: ep.stored.id,
            waiting: true,
        });
        let failures = ep.backoff.failures();
        let launches_failing = match &ep.last_error {
            Some((err, _)) if failures > 0 => Some((failures, err.as_str())),
            _ => None,
        };
        // No countdown in it: clients print the status when it changes.
        let status = waiting_status(&WaitingFacts {
            endpoint: &ep.stored.name,
            state: ep.policy.state,
            counts: &ep.state_counts,
            max_workers: ep.policy.max_workers,
            launches_failing,
        });
        let reason = launches_failing
            .filter(|_| ep.policy.state != EndpointState::Stopped)
            .map(|(_, err)| err.to_owned());
        RouteReply::Waiting {
            endpoint_id: ep.stored.id,
            endpoint: ep.stored.name.clone(),
            request_idx: idx,
            status,
            hold: ep.policy.state != EndpointState::Stopped,
            reason,
        }
    }

    fn next_worker_id(&mut self) -> i64 {
        self.last_worker_id += 1;
        while self.worker_endpoint.contains_key(&self.last_worker_id) {
            self.last_worker_id += 1;
        }
        self.last_worker_id
    }

    fn report(
        &mut self,
        mut report: WorkerStatus,
        signature: Option<Arc<str>>,
        now: f64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        // Numbers are bounded before anything adds them up; a report with
        // a bad number is still a sign of life (see `report`).
        let repaired = crate::report::bound_numbers(&mut report);
        if !self.worker_endpoint.contains_key(&report.id) {
            // An external worker registering: signed by the caller.
            let ep_id = self.external_endpoint(&report)?;
            let Some(sig) = signature.clone() else {
                return Err(Refusal::Unauthorized(format!(
                    "worker {} must be registered again",
                    report.id
                )));
            };
            let mut w = Worker::launched(report.id, report.mtoken.clone(), now);
            w.external = true;
            w.process = ProcessPhase::Running;
            w.url = Some(report.url.as_str().into());
            w.signature = Some(sig);
            tracing::info!(worker = report.id, url = %report.url, "registered an external worker");
            self.last_worker_id = self.last_worker_id.max(report.id);
            self.worker_endpoint.insert(report.id, ep_id);
            effects.push(Effect::Store(StoreOp::InsertWorker {
                id: report.id,
                endpoint_id: ep_id,
                created_at: now,
            }));
            if let Some(ep) = self.endpoints.get_mut(&ep_id) {
                ep.insert_worker(w);
            }
        }
        let ep_id = self.worker_endpoint[&report.id];
        let ep = self
            .endpoints
            .get_mut(&ep_id)
            .ok_or(Refusal::Gone(report.id))?;
        let id = report.id;
        let w = ep.workers.get_mut(&id).ok_or(Refusal::Gone(id))?;
        if w.mtoken != report.mtoken {
            return Err(Refusal::Unauthorized("bad mtoken".into()));
        }
        if !w.external
            && !w.idle_this_life
            && w.process == ProcessPhase::Running
            && w.port_relaunches < MAX_PORT_RELAUNCHES
            && port_taken(&report.error_msg)
        {
            // Its port was taken between the engine choosing it and the
            // worker binding it: not the worker's fault. Stop what is left
            // of it, then launch it again on fresh ports (`stop_done`).
            w.port_relaunches += 1;
            w.relaunch = true;
            w.process = ProcessPhase::NotSpawned;
            w.url = None;
            w.signature = None;
            let spawned = w.spawned.take();
            tracing::warn!(
                endpoint = %ep.stored.name,
                worker = id,
                error = %report.error_msg,
                attempt = w.port_relaunches,
                "worker port taken before the worker could bind it; relaunching on fresh ports"
            );
            ep.requests.forget_worker(id);
            ep.apply_request_changes();
            if let Some(tr) = ep.refresh(id, now) {
                record(effects, &ep.stored.name, tr);
            }
            effects.push(Effect::Count(Count::Report));
            effects.push(Effect::Stop {
                worker_id: id,
                spawned,
                destroy: false,
            });
            return Ok(());
        }
        if !repaired.is_empty() && !w.numbers_warned {
            w.numbers_warned = true;
            tracing::warn!(
                endpoint = %ep.stored.name,
                worker = id,
                fields = ?repaired,
                "worker report carried null, non-finite or out-of-range numbers; taken as 0 or clamped to their bounds (logged once per worker)"
            );
        }
        if w.external
            && w.url.as_deref() != Some(report.url.as_str())
            && report.url.starts_with("http")
        {
            // Signed by the caller unless the URL changed again meanwhile:
            // then the next report signs it.
            w.url = Some(report.url.as_str().into());
            w.signature = signature;
        }
        let load_before = w.reported_load() + ep.requests.pending_cost(id);
        w.last_report = Some(ReportFacts {
            at: now,
            max_perf: report.max_perf,
            loadtime: report.loadtime,
            error_msg: report.error_msg.clone(),
            version: report.version.clone(),
        });
        let idxs = report.working_request_idxs.clone();
        let listed_before = w
            .report
            .as_ref()
            .map_or(0, |r| r.working_request_idxs.len());
        if listed_before != idxs.len() {
            effects.push(Effect::Observe(Observation::Sessions {
                endpoint: ep.stored.name.clone(),
                worker: id,
                held: idxs.len(),
            }));
        }
        w.report = Some(report);
        ep.requests.observe_report(id, &idxs, now);
        ep.apply_request_changes();
        let transition = ep.refresh(id, now);
        // Held `/route/` calls only care about a worker that is routable and
        // just became so or got lighter.
        let wake = ep.route_index.contains(id)
            && (transition.is_some() || {
                let w = &ep.workers[&id];
                w.reported_load() + ep.requests.pending_cost(id) < load_before
            });
        effects.push(Effect::Count(Count::Report));
        if wake {
            effects.push(Effect::WakeRouters);
        }
        if let Some(tr) = transition {
            record(effects, &ep.stored.name, tr);
            effects.push(Effect::Kick {
                endpoint_id: ep_id,
                waiting: false,
            });
        }
        Ok(())
    }

    fn requests_done(
        &mut self,
        worker_id: i64,
        mtoken: &str,
        idxs: &[u64],
        effects: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let unknown = || Refusal::Unauthorized(format!("unknown worker id {worker_id}"));
        let ep_id = *self.worker_endpoint.get(&worker_id).ok_or_else(unknown)?;
        let ep = self.endpoints.get_mut(&ep_id).ok_or_else(unknown)?;
        let w = ep.workers.get(&worker_id).ok_or_else(unknown)?;
        if w.mtoken != mtoken {
            return Err(Refusal::Unauthorized("bad mtoken".into()));
        }
        ep.requests.observe_finished(worker_id, idxs);
        ep.apply_request_changes();
        effects.push(Effect::WakeRouters);
        Ok(())
    }

    fn process_exited(&mut self, exit: &ExitEvent, now: f64, effects: &mut Vec<Effect>) {
        let Some(&ep_id) = self.worker_endpoint.get(&exit.worker_id) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&ep_id) else {
            return;
        };
        let id = exit.worker_id;
        let Some(w) = ep.workers.get(&id) else {
            return;
        };
        if w.spawned.as_ref().map(|s| s.generation) != Some(exit.generation) {
            return;
        }
        match exit.kind {
            ProcKind::Consumer => {
                tracing::warn!(worker = id, status = %exit.status, "consumer process exited");
            }
            ProcKind::Worker => match w.process {
                ProcessPhase::Running => {
                    let dropped = ep.worker_exited(id);
                    tracing::warn!(endpoint = %ep.stored.name, worker = id, status = %exit.status, dropped_requests = dropped, "worker process exited unexpectedly");
                    effects.push(Effect::Count(Count::WorkerExit("unexpected")));
                    if let Some(tr) = ep.refresh(id, now) {
                        record(effects, &ep.stored.name, tr);
                    }
                    effects.push(Effect::Kick {
                        endpoint_id: ep_id,
                        waiting: false,
                    });
                }
                // Seen as exited when its spawn completed.
                ProcessPhase::Exited { expected: false } => {}
                _ => effects.push(Effect::Count(Count::WorkerExit("expected"))),
            },
        }
    }

    fn spawn_done(
        &mut self,
        endpoint_id: i64,
        worker_id: i64,
        result: Result<Spawned, String>,
        now: f64,
        effects: &mut Vec<Effect>,
    ) {
        let live = self
            .endpoints
            .get(&endpoint_id)
            .is_some_and(|ep| ep.workers.contains_key(&worker_id));
        if !live {
            // The endpoint or the worker went away meanwhile.
            if let Ok(spawned) = result {
                effects.push(Effect::Stop {
                    worker_id,
                    spawned: Some(spawned),
                    destroy: true,
                });
            }
            return;
        }
        let ep = self.endpoints.get_mut(&endpoint_id).expect("checked above");
        let name = ep.stored.name.clone();
        ep.spawns += 1;
        let w = ep.workers.get_mut(&worker_id).expect("checked above");
        if w.process != ProcessPhase::NotSpawned {
            // Stopped or destroyed while spawning: stop what was started.
            if let Ok(spawned) = result {
                effects.push(Effect::Stop {
                    worker_id,
                    spawned: Some(spawned),
                    destroy: w.process == ProcessPhase::Destroying,
                });
            }
            return;
        }
        let mut exited_already = false;
        match result {
            Ok(spawned) => {
                tracing::info!(endpoint = %name, worker = worker_id, url = %spawned.url, pid = spawned.worker.pid, control_port = spawned.control_port, "worker spawned");
                effects.push(Effect::Store(StoreOp::UpdateWorker {
                    id: worker_id,
                    state: "LOADING",
                    url: Some(spawned.url.clone()),
                    reason: None,
                    ended_at: None,
                }));
                effects.push(Effect::Sign {
                    endpoint_id,
                    worker_id,
                    url: spawned.url.clone(),
                });
                w.url = Some(spawned.url.as_str().into());
                w.signature = None;
                w.process = ProcessPhase::Running;
                // Its first report may have been applied before this event:
                // reports count from when the launch was asked for.
                w.spawned_at = Some(w.spawn_requested_at.take().unwrap_or(now));
                w.idle_this_life = false;
                // Its exit event may have been applied before this point and
                // ignored (the worker had no process yet): look for ourselves.
                exited_already = spawned.worker.has_exited();
                w.spawned = Some(spawned);
            }
            Err(err) => {
                tracing::error!(endpoint = %name, worker = worker_id, %err, "cannot spawn worker");
                w.process = ProcessPhase::Exited { expected: false };
                w.error = Some(err.clone());
                effects.push(Effect::Store(StoreOp::UpdateWorker {
                    id: worker_id,
                    state: "ERROR",
                    url: None,
                    reason: Some(err),
                    ended_at: None,
                }));
            }
        }
        if exited_already {
            tracing::warn!(endpoint = %name, worker = worker_id, "worker process exited at once");
            effects.push(Effect::Count(Count::WorkerExit("unexpected")));
            ep.worker_exited(worker_id);
        }
        let spawn_error = ep
            .workers
            .get(&worker_id)
            .filter(|w| w.spawned.is_none())
            .and_then(|w| w.error.clone());
        let transition = ep.refresh(worker_id, now);
        if let Some(err) = spawn_error {
            // The launch itself failed: its error is the cause, not the
            // generic "exited" the state derivation gives.
            if let Some(w) = ep.workers.get_mut(&worker_id) {
                w.error = Some(err.clone());
            }
            ep.last_error = Some((err, now));
        }
        if let Some(tr) = transition {
            let broken = tr.to == WorkerState::Error;
            record(effects, &name, tr);
            if broken {
                effects.push(Effect::Kick {
                    endpoint_id,
                    waiting: false,
                });
            }
        }
    }

    fn signed(
        &mut self,
        endpoint_id: i64,
        worker_id: i64,
        url: &str,
        signature: Arc<str>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(ep) = self.endpoints.get_mut(&endpoint_id) else {
            return;
        };
        let Some(w) = ep.workers.get_mut(&worker_id) else {
            return;
        };
        if w.url.as_deref() != Some(url) {
            return;
        }
        w.signature = Some(signature);
        ep.sync_candidate(worker_id);
        if ep.route_index.contains(worker_id) {
            effects.push(Effect::WakeRouters);
        }
    }

    fn stop_done(&mut self, worker_id: i64, destroy: bool, now: f64, effects: &mut Vec<Effect>) {
        let ended = |effects: &mut Vec<Effect>| {
            effects.push(Effect::Store(StoreOp::UpdateWorker {
                id: worker_id,
                state: "DESTROYING",
                url: None,
                reason: None,
                ended_at: Some(now),
            }));
        };
        let Some(&ep_id) = self.worker_endpoint.get(&worker_id) else {
            ended(effects);
            return;
        };
        if destroy {
            self.worker_endpoint.remove(&worker_id);
            if let Some(ep) = self.endpoints.get_mut(&ep_id) {
                if ep.take_worker(worker_id).is_some() {
                    tracing::info!(worker = worker_id, "worker destroyed");
                    effects.push(Effect::Observe(Observation::Published(
                        EngineEvent::WorkerGone {
                            endpoint: ep.stored.name.clone(),
                            worker: worker_id,
                        },
                    )));
                }
            }
            ended(effects);
            return;
        }
        let Some(ep) = self.endpoints.get_mut(&ep_id) else {
            return;
        };
        if let Some(w) = ep.workers.get_mut(&worker_id) {
            if w.process == ProcessPhase::Stopping {
                w.process = ProcessPhase::Stopped;
                w.stopped_at = Some(now);
            }
            if std::mem::take(&mut w.relaunch) && w.process == ProcessPhase::NotSpawned {
                w.spawn_requested_at = Some(now);
                effects.push(Effect::Spawn {
                    endpoint_id: ep_id,
                    worker_id,
                    mtoken: w.mtoken.clone(),
                    template: ep.stored.template.clone(),
                });
            }
        }
        if let Some(tr) = ep.refresh(worker_id, now) {
            record(effects, &ep.stored.name, tr);
        }
    }

    fn scan(
        &mut self,
        endpoint_id: i64,
        after: Option<i64>,
        max: usize,
        views: &mut Vec<WorkerView>,
        now: f64,
        effects: &mut Vec<Effect>,
    ) -> Option<ScanStep> {
        use std::ops::Bound;
        let ep = self.endpoints.get_mut(&endpoint_id)?;
        if after.is_none() && views.is_empty() {
            ep.requests.expire(now);
            ep.apply_request_changes();
            views.reserve(ep.workers.len());
        }
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let ids: Vec<i64> = ep
            .workers
            .range((lower, Bound::Unbounded))
            .take(max)
            .map(|(id, _)| *id)
            .collect();
        let forget_after = EXTERNAL_FORGET_AFTER_STALE * ep.policy.stale_after;
        let mut forgotten = Vec::new();
        for &id in &ids {
            if let Some(tr) = ep.refresh(id, now) {
                record(effects, &ep.stored.name, tr);
            }
            if let Some(w) = ep.workers.get(&id) {
                let heard = w.last_report.as_ref().map_or(w.created_at, |r| r.at);
                if w.external && now - heard > forget_after {
                    forgotten.push((id, now - heard));
                    continue;
                }
                views.push(ep.view(w));
            }
        }
        for &(id, silent) in &forgotten {
            ep.take_worker(id);
            let reason = format!(
                "external worker silent for {silent:.0} s (more than {forget_after:.0} s): forgotten"
            );
            tracing::warn!(endpoint = %ep.stored.name, worker = id, %reason, "worker removed");
            effects.push(Effect::Observe(Observation::Published(
                EngineEvent::WorkerGone {
                    endpoint: ep.stored.name.clone(),
                    worker: id,
                },
            )));
            effects.push(Effect::Store(StoreOp::UpdateWorker {
                id,
                state: "DESTROYING",
                url: None,
                reason: Some(reason),
                ended_at: Some(now),
            }));
        }
        if !forgotten.is_empty() {
            for (id, _) in &forgotten {
                self.worker_endpoint.remove(id);
            }
            effects.push(Effect::Kick {
                endpoint_id,
                waiting: false,
            });
        }
        if let Some(last) = ids.last() {
            return Some(ScanStep::More(*last));
        }
        let ep = self.endpoints.get_mut(&endpoint_id)?;
        // A waiting request needs a session slot whatever its cost: it
        // counts as demand for at least one slot's share of a worker.
        let session_floor = match (ep.max_sessions, ep.last_perf) {
            (Some(max), Some(perf)) => perf / max as f64,
            _ => 0.0,
        };
        let workers = std::mem::take(views);
        ep.load = workers
            .iter()
            .filter(|v| v.state.is_active())
            .fold(0.0, |sum, v| sum + v.load);
        Some(ScanStep::Done(EndpointSnapshot {
            now,
            policy: ep.policy.clone(),
            workers,
            waiting: ep
                .requests
                .waiting()
                .map(|(cost, since)| (cost.max(session_floor), since))
                .collect(),
            last_activity: ep.last_activity,
            last_perf: ep.last_perf,
        }))
    }

    /// Applies a decision after checking that each action still holds: a
    /// worker to stop or destroy (unless in `ERROR`) must be in the state
    /// the decision saw and carry nothing, so a request routed to it
    /// meanwhile keeps it alive. Launches wait out the spawn backoff.
    fn decided(
        &mut self,
        endpoint_id: i64,
        snapshot: &EndpointSnapshot,
        decision: &Decision,
        now: f64,
        effects: &mut Vec<Effect>,
    ) {
        let mut new_ids = Vec::new();
        for action in &decision.actions {
            if matches!(action.kind, ActionKind::Create) {
                new_ids.push(self.next_worker_id());
            }
        }
        let mut new_ids = new_ids.into_iter();
        let Some(ep) = self.endpoints.get_mut(&endpoint_id) else {
            return;
        };
        let name = ep.stored.name.clone();
        ep.last_activity = ep.last_activity.max(decision.last_activity);
        let failures = ep.backoff.failures();
        if failures != ep.backoff_logged {
            if failures == 0 {
                tracing::info!(endpoint = %name, "spawn backoff cleared: a worker became ready");
            } else {
                let delay = ep.backoff.delay();
                tracing::warn!(
                    endpoint = %name,
                    failures,
                    delay_s = delay,
                    "spawn backoff: {failures} launch(es) in a row failed before the worker became ready; next launch {delay} s after the last failure"
                );
            }
            ep.backoff_logged = failures;
        }
        let may_launch = ep.backoff.allows(now);
        effects.push(Effect::Observe(Observation::Demand {
            endpoint: name.clone(),
            demand: decision.demand,
            want_active: decision.want_active,
        }));
        if !decision.actions.is_empty() {
            tracing::debug!(
                endpoint = %name,
                want_active = decision.want_active,
                want_total = decision.want_total,
                demand = decision.demand,
                "scale decision"
            );
        }
        let mut created = Vec::new();
        for action in &decision.actions {
            let (kind, worker) = match action.kind {
                ActionKind::Create => ("create", None),
                ActionKind::Start { worker } => ("start", Some(worker)),
                ActionKind::Stop { worker } => ("stop", Some(worker)),
                ActionKind::Destroy { worker } => ("destroy", Some(worker)),
            };
            let launch = matches!(action.kind, ActionKind::Create | ActionKind::Start { .. });
            if launch && !may_launch {
                tracing::debug!(
                    endpoint = %name,
                    worker,
                    action = kind,
                    retry_at = ep.backoff.retry_at(),
                    "scale: {action} held back by the spawn backoff"
                );
                continue;
            }
            if let ActionKind::Stop { worker } | ActionKind::Destroy { worker } = action.kind {
                let seen = snapshot
                    .workers
                    .binary_search_by_key(&worker, |v| v.id)
                    .ok()
                    .map(|i| snapshot.workers[i].state);
                let Some(w) = ep.workers.get(&worker) else {
                    continue;
                };
                if w.state != WorkerState::Error
                    && (Some(w.state) != seen || ep.is_carrying(worker))
                {
                    tracing::debug!(endpoint = %name, worker, action = kind, "scale: {action} skipped: the worker changed since the decision");
                    continue;
                }
            }
            tracing::info!(
                endpoint = %name,
                worker,
                action = kind,
                reason = action.reason.as_str(),
                want_active = decision.want_active,
                demand = decision.demand,
                "scale: {action}"
            );
            effects.push(Effect::Count(Count::ScaleAction {
                action: kind,
                reason: action.reason.as_str(),
            }));
            effects.push(Effect::Observe(Observation::Published(
                EngineEvent::Scale {
                    endpoint: name.clone(),
                    action: kind,
                    worker,
                    reason: action.reason.as_str(),
                    detail: action.reason.to_string(),
                    want_active: decision.want_active,
                    demand: decision.demand,
                },
            )));
            match action.kind {
                ActionKind::Create => {
                    let Some(id) = new_ids.next() else { continue };
                    let mtoken = crate::state::random_key(32);
                    effects.push(Effect::Store(StoreOp::InsertWorker {
                        id,
                        endpoint_id,
                        created_at: now,
                    }));
                    let mut w = Worker::launched(id, mtoken.clone(), now);
                    w.spawn_requested_at = Some(now);
                    created.push(w);
                    effects.push(Effect::Spawn {
                        endpoint_id,
                        worker_id: id,
                        mtoken,
                        template: ep.stored.template.clone(),
                    });
                }
                ActionKind::Start { worker } => {
                    let Some(w) = ep.workers.get_mut(&worker) else {
                        continue;
                    };
                    if w.process != ProcessPhase::Stopped
                        && w.process != (ProcessPhase::Exited { expected: true })
                    {
                        continue;
                    }
                    w.process = ProcessPhase::NotSpawned;
                    w.restarted = true;
                    w.stopped_at = None;
                    w.spawn_requested_at = Some(now);
                    let mtoken = w.mtoken.clone();
                    if let Some(tr) = ep.refresh(worker, now) {
                        record(effects, &name, tr);
                    }
                    effects.push(Effect::Spawn {
                        endpoint_id,
                        worker_id: worker,
                        mtoken,
                        template: ep.stored.template.clone(),
                    });
                }
                ActionKind::Stop { worker } | ActionKind::Destroy { worker } => {
                    let destroy = matches!(action.kind, ActionKind::Destroy { .. });
                    ep.route_index.remove(worker);
                    let Some(w) = ep.workers.get_mut(&worker) else {
                        continue;
                    };
                    if matches!(w.process, ProcessPhase::Destroying | ProcessPhase::Stopping) {
                        continue;
                    }
                    w.process = if destroy {
                        ProcessPhase::Destroying
                    } else {
                        ProcessPhase::Stopping
                    };
                    if !destroy {
                        w.stopped_at = Some(now);
                    }
                    let spawned = w.spawned.take();
                    if destroy {
                        ep.requests.forget_worker(worker);
                        ep.apply_request_changes();
                    }
                    if let Some(tr) = ep.refresh(worker, now) {
                        record(effects, &name, tr);
                    }
                    effects.push(Effect::Stop {
                        worker_id: worker,
                        spawned,
                        destroy,
                    });
                }
            }
        }
        for w in created {
            self.worker_endpoint.insert(w.id, endpoint_id);
            if let Some(ep) = self.endpoints.get_mut(&endpoint_id) {
                ep.insert_worker(w);
            }
        }
    }

    fn update_endpoint(
        &mut self,
        id: i64,
        settings: EndpointSettings,
        template: WorkerTemplate,
        effects: &mut Vec<Effect>,
    ) -> Option<usize> {
        let ep = self.endpoints.get_mut(&id)?;
        ep.policy = policy_of(
            &settings,
            self.config.stale_after,
            self.config.scale_down_delay,
        );
        effects.push(Effect::Observe(Observation::Endpoint(EndpointView::new(
            id,
            &ep.stored.name,
            &settings,
        ))));
        ep.stored.settings = settings;
        ep.max_sessions = template_max_sessions(&template);
        ep.stored.template = template;
        let ids: Vec<i64> = ep.workers.keys().copied().collect();
        for wid in ids {
            ep.sync_candidate(wid);
        }
        effects.push(Effect::Kick {
            endpoint_id: id,
            waiting: false,
        });
        Some(ep.workers.len())
    }

    fn delete_endpoint(&mut self, id: i64, now: f64, effects: &mut Vec<Effect>) -> Option<usize> {
        let ep = self.endpoints.remove(&id)?;
        self.names.remove(&ep.stored.name);
        effects.push(Effect::Observe(Observation::Published(
            EngineEvent::EndpointDeleted {
                endpoint: ep.stored.name.clone(),
            },
        )));
        let count = ep.workers.len();
        for (wid, mut w) in ep.workers {
            self.worker_endpoint.remove(&wid);
            effects.push(Effect::Store(StoreOp::UpdateWorker {
                id: wid,
                state: "DESTROYING",
                url: None,
                reason: Some("endpoint deleted".into()),
                ended_at: Some(now),
            }));
            effects.push(Effect::Stop {
                worker_id: wid,
                spawned: w.spawned.take(),
                destroy: true,
            });
        }
        Some(count)
    }

    /// Files a re-adopted worker in as running since `now`: it is routable
    /// again once its URL is signed and it reports, and the sessions its
    /// reports list keep counting against its `max_sessions`. A worker whose
    /// endpoint is gone is stopped.
    fn adopted(
        &mut self,
        endpoint_id: i64,
        worker_id: i64,
        mtoken: String,
        spawned: Spawned,
        now: f64,
        effects: &mut Vec<Effect>,
    ) {
        let known = self.worker_endpoint.contains_key(&worker_id);
        let Some(ep) = self.endpoints.get_mut(&endpoint_id).filter(|_| !known) else {
            effects.push(Effect::Stop {
                worker_id,
                spawned: Some(spawned),
                destroy: true,
            });
            return;
        };
        tracing::info!(endpoint = %ep.stored.name, worker = worker_id, url = %spawned.url, pid = spawned.worker.pid, "re-adopted a running worker");
        let mut w = Worker::launched(worker_id, mtoken, now);
        w.url = Some(spawned.url.as_str().into());
        w.process = ProcessPhase::Running;
        w.spawned_at = Some(now);
        // It became ready in an earlier life: its failures are not launches'.
        w.idle_this_life = true;
        effects.push(Effect::Sign {
            endpoint_id,
            worker_id,
            url: spawned.url.clone(),
        });
        w.spawned = Some(spawned);
        ep.insert_worker(w);
        self.worker_endpoint.insert(worker_id, endpoint_id);
        self.last_worker_id = self.last_worker_id.max(worker_id);
        if let Some(tr) = ep.refresh(worker_id, now) {
            record(effects, &ep.stored.name, tr);
        }
        effects.push(Effect::Kick {
            endpoint_id,
            waiting: false,
        });
    }

    fn stop_all(&mut self, now: f64, effects: &mut Vec<Effect>) -> usize {
        let mut count = 0;
        for ep in self.endpoints.values_mut() {
            let ids: Vec<i64> = ep.workers.keys().copied().collect();
            for id in ids {
                ep.route_index.remove(id);
                let Some(w) = ep.workers.get_mut(&id) else {
                    continue;
                };
                w.process = ProcessPhase::Destroying;
                if let Some(spawned) = w.spawned.take() {
                    count += 1;
                    effects.push(Effect::Store(StoreOp::UpdateWorker {
                        id,
                        state: "DESTROYING",
                        url: None,
                        reason: Some("engine stopped".into()),
                        ended_at: Some(now),
                    }));
                    effects.push(Effect::Stop {
                        worker_id: id,
                        spawned: Some(spawned),
                        destroy: true,
                    });
                }
                ep.refresh(id, now);
            }
        }
        count
    }
}

/// The endpoint an event concerns, when it is cheap to tell.
fn event_endpoint(
    event: &Event<'_>,
    worker_endpoint: &HashMap<i64, i64>,
    names: &HashMap<String, i64>,
) -> Option<i64> {
    match event {
        Event::Route(req) => match req.name {
            Some(name) => names.get(name).copied(),
            None => req.endpoint_id,
        },
        Event::Report { report, .. } => worker_endpoint.get(&report.id).copied(),
        Event::RequestsDone { worker_id, .. } | Event::StopDone { worker_id, .. } => {
            worker_endpoint.get(worker_id).copied()
        }
        Event::ProcessExited(exit) => worker_endpoint.get(&exit.worker_id).copied(),
        Event::SpawnDone { endpoint_id, .. }
        | Event::Signed { endpoint_id, .. }
        | Event::Scan { endpoint_id, .. }
        | Event::Decided { endpoint_id, .. } => Some(*endpoint_id),
        Event::EndpointCreated(stored) => Some(stored.id),
        Event::EndpointUpdated { id, .. } | Event::EndpointDeleted(id) => Some(*id),
        Event::StopAll => None,
        Event::Adopted { endpoint_id, .. } => Some(*endpoint_id),
    }
}

/// One endpoint's invariants: counts per state, and a route index holding
/// exactly the routable workers with their current figures.
fn check_endpoint(ep: &Endpoint) -> Result<(), String> {
    let name = &ep.stored.name;
    let mut counts: StateCounts = [0; WorkerState::ALL.len()];
    for (id, w) in &ep.workers {
        if *id != w.id {
            return Err(format!("{name}: worker {} filed under {id}", w.id));
        }
        counts[w.state.index()] += 1;
        match ep.candidate(*id) {
            Some(c) => {
                if !ep.route_index.matches(&c) {
                    return Err(format!(
                        "{name}: worker {id} is routable but not indexed as {c:?}"
                    ));
                }
            }
            None => {
                if ep.route_index.contains(*id) {
                    return Err(format!("{name}: worker {id} is indexed but not routable"));
                }
            }
        }
    }
    if counts != ep.state_counts {
        return Err(format!(
            "{name}: state counts {:?}, workers say {counts:?}",
            ep.state_counts
        ));
    }
    if ep.route_index.len() > ep.workers.len() {
        return Err(format!(
            "{name}: {} routable of {} workers",
            ep.route_index.len(),
            ep.workers.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::autoscale::decide;
    use crate::policy::requests::{ASSIGNMENT_CONFIRM_WINDOW, WAITING_POLL_WINDOW};

    const KEY: &str = "key";

    fn stored(id: i64, settings: EndpointSettings) -> StoredEndpoint {
        StoredEndpoint {
            id,
            name: format!("e{id}"),
            api_key: KEY.into(),
            settings,
            created_at: 0.0,
            workergroup_id: id,
            template: WorkerTemplate::default(),
        }
    }

    fn seed() -> EndpointSettings {
        EndpointSettings::from_policy(&EndpointPolicy::seed())
    }

    fn registry() -> Registry {
        let mut reg = Registry::new(RegistryConfig::default(), 0);
        reg.apply(Event::EndpointCreated(stored(1, seed())), 0.0);
        reg
    }

    fn route(reg: &mut Registry, idx: u64, cost: f64, now: f64) -> (RouteReply, Vec<Effect>) {
        let keys = vec![KEY.to_owned()];
        let out = reg.apply(
            Event::Route(RouteRequest {
                name: Some("e1"),
                endpoint_id: None,
                keys: &keys,
                request_idx: idx,
                cost,
                replay_timeout: 60.0,
            }),
            now,
        );
        match out.reply {
            Reply::Route(r) => (r, out.effects),
            other => panic!("route answered {other:?}"),
        }
    }

    /// A scaler pass; returns its effects.
    fn pass(reg: &mut Registry, now: f64) -> Vec<Effect> {
        pass_decision(reg, now).0
    }

    /// A scaler pass; returns its effects and the decision.
    fn pass_decision(reg: &mut Registry, now: f64) -> (Vec<Effect>, Decision) {
        let mut views = Vec::new();
        let mut after = None;
        let mut effects = Vec::new();
        let snapshot = loop {
            let out = reg.apply(
                Event::Scan {
                    endpoint_id: 1,
                    after,
                    max: 2,
                    views: &mut views,
                },
                now,
            );
            effects.extend(out.effects);
            match out.reply {
                Reply::Scan(Some(ScanStep::More(last))) => after = Some(last),
                Reply::Scan(Some(ScanStep::Done(s))) => break s,
                other => panic!("scan answered {other:?}"),
            }
        };
        let decision = decide(&snapshot);
        effects.extend(
            reg.apply(
                Event::Decided {
                    endpoint_id: 1,
                    snapshot: &snapshot,
                    decision: &decision,
                },
                now,
            )
            .effects,
        );
        (effects, decision)
    }

    /// A report of worker `id` listing `idxs` as its sessions.
    fn report_sessions(reg: &mut Registry, id: i64, idxs: Vec<u64>, now: f64) {
        let mtoken = reg.worker(id).unwrap().mtoken.clone();
        let url = format!("http://127.0.0.1:{}", 20_000 + id);
        let mut report = idle_report(id, &mtoken, &url);
        report.cur_load = 100.0 * idxs.len() as f64;
        report.working_request_idxs = idxs;
        let out = reg.apply(
            Event::Report {
                report,
                signature: None,
            },
            now,
        );
        assert!(matches!(out.reply, Reply::Accepted(Ok(()))), "{out:?}");
    }

    fn stops(effects: &[Effect]) -> Vec<i64> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Stop { worker_id, .. } => Some(*worker_id),
                _ => None,
            })
            .collect()
    }

    fn spawns(effects: &[Effect]) -> Vec<(i64, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Spawn {
                    worker_id, mtoken, ..
                } => Some((*worker_id, mtoken.clone())),
                _ => None,
            })
            .collect()
    }

    fn fake_spawned(id: i64) -> (Spawned, tokio::sync::watch::Sender<bool>) {
        let (worker, exited) = crate::supervisor::ProcHandle::unwatched(10_000 + id as i32);
        (
            Spawned {
                generation: id as u64,
                url: format!("http://127.0.0.1:{}", 20_000 + id),
                worker_port: 20_000 + id as u16,
                control_port: 30_000 + id as u16,
                consumer_port: None,
                worker,
                consumer: None,
            },
            exited,
        )
    }

    fn idle_report(id: i64, mtoken: &str, url: &str) -> WorkerStatus {
        WorkerStatus {
            id,
            mtoken: mtoken.into(),
            version: "1.1.0".into(),
            loadtime: 0.1,
            max_perf: 100.0,
            url: url.into(),
            ..WorkerStatus::default()
        }
    }

    /// Launches what a pass asks for, signs and reports it IDLE.
    fn bring_up(reg: &mut Registry, effects: &[Effect], now: f64) -> Vec<(i64, String)> {
        let launched = spawns(effects);
        for (id, mtoken) in &launched {
            let (spawned, exited) = fake_spawned(*id);
            std::mem::forget(exited);
            let url = spawned.url.clone();
            reg.apply(
                Event::SpawnDone {
                    endpoint_id: 1,
                    worker_id: *id,
                    result: Ok(spawned),
                },
                now,
            );
            reg.apply(
                Event::Signed {
                    endpoint_id: 1,
                    worker_id: *id,
                    url: url.clone(),
                    signature: "sig".into(),
                },
                now,
            );
            let out = reg.apply(
                Event::Report {
                    report: idle_report(*id, mtoken, &url),
                    signature: None,
                },
                now,
            );
            assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
        }
        launched
    }

    #[test]
    fn scales_from_zero_routes_and_expires_a_silent_worker() {
        let mut reg = registry();
        let (reply, effects) = route(&mut reg, 0, 100.0, 1.0);
        let RouteReply::Waiting { request_idx, .. } = reply else {
            panic!("{reply:?}")
        };
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Kick { waiting: true, .. })));
        let effects = pass(&mut reg, 1.1);
        let launched = bring_up(&mut reg, &effects, 1.2);
        assert_eq!(launched.len(), 1);
        let (reply, _) = route(&mut reg, request_idx, 100.0, 1.3);
        let RouteReply::Ready { url, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(&*url, "http://127.0.0.1:20001");
        // Silent past stale_after: ERROR, unroutable, then destroyed.
        let effects = pass(&mut reg, 100.0);
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Store(StoreOp::UpdateWorker { state: "ERROR", .. })
        )));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Stop { destroy: true, .. })));
        reg.apply(
            Event::StopDone {
                worker_id: 1,
                destroy: true,
            },
            100.1,
        );
        assert_eq!(reg.worker_count(), 0);
        reg.check_invariants();
    }

    #[test]
    fn a_ready_report_applied_before_the_launch_result_counts() {
        let mut reg = registry();
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        let launched = spawns(&effects);
        let (id, mtoken) = launched[0].clone();
        let (spawned, exited) = fake_spawned(id);
        std::mem::forget(exited);
        let url = spawned.url.clone();
        // The new process reports ready before the spawner's result is
        // applied (the worker starts in milliseconds).
        let out = reg.apply(
            Event::Report {
                report: idle_report(id, &mtoken, &url),
                signature: None,
            },
            1.12,
        );
        assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
        reg.apply(
            Event::SpawnDone {
                endpoint_id: 1,
                worker_id: id,
                result: Ok(spawned),
            },
            1.15,
        );
        reg.apply(
            Event::Signed {
                endpoint_id: 1,
                worker_id: id,
                url,
                signature: "sig".into(),
            },
            1.16,
        );
        // Routable at once, not after its next report (10 s later).
        let (reply, _) = route(&mut reg, 0, 100.0, 1.17);
        assert!(matches!(reply, RouteReply::Ready { .. }), "{reply:?}");
        reg.check_invariants();
    }

    #[test]
    fn a_worker_that_exits_is_unrouted_and_its_requests_dropped() {
        let mut reg = registry();
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        bring_up(&mut reg, &effects, 1.2);
        let (reply, _) = route(&mut reg, 0, 1.0, 1.3);
        assert!(matches!(reply, RouteReply::Ready { .. }));
        let out = reg.apply(
            Event::ProcessExited(ExitEvent {
                worker_id: 1,
                generation: 1,
                kind: ProcKind::Worker,
                status: "killed".into(),
            }),
            1.4,
        );
        assert!(out
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Count(Count::WorkerExit("unexpected")))));
        let (reply, _) = route(&mut reg, 0, 1.0, 1.5);
        assert!(matches!(reply, RouteReply::Waiting { .. }), "{reply:?}");
        assert_eq!(reg.gauges(1).unwrap().counts[WorkerState::Error.index()], 1);
    }

    #[test]
    fn a_worker_holding_its_one_session_is_not_a_candidate_even_at_cost_0() {
        let mut reg = registry();
        route(&mut reg, 0, 0.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        bring_up(&mut reg, &effects, 1.2);
        let (reply, _) = route(&mut reg, 0, 0.0, 1.3);
        let RouteReply::Ready { request_idx, .. } = reply else {
            panic!("{reply:?}")
        };
        // The worker reports the session; its load stays 0.
        let rows = reg.worker_rows(1, None, 1).unwrap();
        let url = rows[0].wire.worker.url.clone();
        let mtoken = reg.worker(1).unwrap().mtoken.clone();
        let mut report = idle_report(1, &mtoken, &url);
        report.working_request_idxs = vec![request_idx];
        reg.apply(
            Event::Report {
                report,
                signature: None,
            },
            1.4,
        );
        // A second request waits instead of being sent to a full worker,
        // and the scaler starts a second worker for it.
        let (reply, _) = route(&mut reg, 0, 0.0, 1.5);
        assert!(matches!(reply, RouteReply::Waiting { .. }), "{reply:?}");
        let effects = pass(&mut reg, 2.5);
        assert_eq!(spawns(&effects).len(), 1);
        // With NULLWORKER_MAX_SESSIONS=0 (unlimited) it is a candidate again.
        let mut template = WorkerTemplate::default();
        template
            .env
            .insert("NULLWORKER_MAX_SESSIONS".into(), "0".into());
        reg.apply(
            Event::EndpointUpdated {
                id: 1,
                settings: seed(),
                template,
            },
            2.6,
        );
        let (reply, _) = route(&mut reg, 0, 0.0, 2.7);
        assert!(matches!(reply, RouteReply::Ready { .. }), "{reply:?}");
    }

    #[test]
    fn reported_numbers_are_bounded_before_any_sum() {
        let mut reg = registry();
        let mut settings = seed();
        settings.max_queue_time = 1e9;
        reg.apply(
            Event::EndpointUpdated {
                id: 1,
                settings,
                template: WorkerTemplate::default(),
            },
            0.5,
        );
        route(&mut reg, 0, 100.0, 1.0);
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        let launched = bring_up(&mut reg, &effects, 1.2);
        assert_eq!(launched.len(), 2);
        for (id, mtoken) in &launched {
            let url = format!("http://127.0.0.1:{}", 20_000 + id);
            let mut report = idle_report(*id, mtoken, &url);
            report.cur_load = 1e308;
            report.new_load = f64::INFINITY;
            report.max_perf = f64::NAN;
            let out = reg.apply(
                Event::Report {
                    report,
                    signature: None,
                },
                1.3,
            );
            assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
        }
        pass(&mut reg, 1.4);
        let load = reg.gauges(1).unwrap().load;
        assert_eq!(load, 2.0 * crate::report::MAX_REPORTED_LOAD);
        for row in reg.worker_rows(1, None, 10).unwrap() {
            let w = &row.wire.worker;
            for v in [w.cur_load, w.new_load, w.perf, w.cur_load_rolling_avg] {
                assert!(v.is_finite(), "{row:?}");
            }
        }
    }

    #[test]
    fn a_silent_external_worker_is_forgotten_and_frees_its_place() {
        let mut reg = Registry::new(
            RegistryConfig {
                strict: false,
                ..RegistryConfig::default()
            },
            0,
        );
        let mut settings = seed();
        settings.max_workers = 1;
        reg.apply(Event::EndpointCreated(stored(1, settings)), 0.0);
        let report = idle_report(9, KEY, "http://127.0.0.1:1");
        let out = reg.apply(
            Event::Report {
                report,
                signature: Some("sig".into()),
            },
            1.0,
        );
        assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
        // It goes quiet: ERROR after stale_after, never stopped by the
        // engine, and it fills max_workers, so a waiting request gets none.
        pass(&mut reg, 39.0);
        let (reply, _) = route(&mut reg, 0, 100.0, 40.0);
        let RouteReply::Waiting { request_idx, .. } = reply else {
            panic!("{reply:?}")
        };
        assert!(spawns(&pass(&mut reg, 40.5)).is_empty());
        assert_eq!(reg.gauges(1).unwrap().counts[WorkerState::Error.index()], 1);
        route(&mut reg, request_idx, 100.0, 55.0);
        assert!(spawns(&pass(&mut reg, 55.5)).is_empty());
        // Silent for more than 2 x stale_after: forgotten, and the endpoint
        // starts a worker of its own.
        route(&mut reg, request_idx, 100.0, 61.5);
        let effects = pass(&mut reg, 61.5);
        assert_eq!(reg.worker_rows(1, None, 10).unwrap().len(), 1);
        assert_eq!(spawns(&effects).len(), 1, "{effects:?}");
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Store(StoreOp::UpdateWorker {
                id: 9,
                ended_at: Some(_),
                ..
            })
        )));
        assert!(reg.worker(9).is_none());
        // If it reports again, it registers anew.
        let report = idle_report(9, KEY, "http://127.0.0.1:1");
        assert_eq!(reg.check_report(&report), Ok(ReportCheck::Sign));
    }

    #[test]
    fn an_interrupted_waiting_client_stops_counting_as_demand() {
        let mut reg = registry();
        // Two sessions held on workers 1 and 2.
        let mut asked = Vec::new();
        for _ in 0..2 {
            let (reply, _) = route(&mut reg, 0, 100.0, 1.0);
            let RouteReply::Waiting { request_idx, .. } = reply else {
                panic!("{reply:?}")
            };
            asked.push(request_idx);
        }
        let effects = pass(&mut reg, 1.1);
        assert_eq!(bring_up(&mut reg, &effects, 1.2).len(), 2);
        let mut held = Vec::new();
        for (w, idx) in [1, 2].into_iter().zip(asked) {
            let (reply, _) = route(&mut reg, idx, 100.0, 1.3);
            let RouteReply::Ready { request_idx, .. } = reply else {
                panic!("{reply:?}")
            };
            report_sessions(&mut reg, w, vec![request_idx], 1.4);
            held.push(request_idx);
        }
        // A third client waits, gets worker 3 started, then is interrupted
        // and never polls again.
        let (reply, _) = route(&mut reg, 0, 100.0, 2.0);
        assert!(matches!(reply, RouteReply::Waiting { .. }), "{reply:?}");
        let (effects, decision) = pass_decision(&mut reg, 2.6);
        assert_eq!(decision.want_active, 3);
        assert_eq!(bring_up(&mut reg, &effects, 2.7).len(), 1);
        // The sessions go on (reports every 5 s); worker 3 stays idle.
        let mut t = 3.0;
        let mut stopped = Vec::new();
        while t < 30.0 {
            for (w, idx) in [(1, held[0]), (2, held[1])] {
                report_sessions(&mut reg, w, vec![idx], t);
            }
            let (effects, decision) = pass_decision(&mut reg, t + 0.1);
            stopped.extend(stops(&effects));
            if t > 2.0 + WAITING_POLL_WINDOW {
                // want_active follows the real sessions.
                assert_eq!(decision.want_active, 2, "t={t}");
                assert_eq!(reg.gauges(1).unwrap().queued, 0);
            }
            t += 5.0;
        }
        // Idle for scale_down_delay once the phantom request lapsed: gone
        // well before the request's replay_timeout (60 s).
        assert_eq!(stopped, vec![3]);
    }

    #[test]
    fn unused_ready_answers_do_not_block_a_full_endpoint() {
        let mut reg = registry();
        let mut settings = seed();
        settings.max_workers = 2;
        reg.apply(
            Event::EndpointUpdated {
                id: 1,
                settings,
                template: WorkerTemplate::default(),
            },
            0.5,
        );
        route(&mut reg, 0, 100.0, 1.0);
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        assert_eq!(bring_up(&mut reg, &effects, 1.2).len(), 2);
        // Two READY answers that their clients never use.
        for _ in 0..2 {
            let (reply, _) = route(&mut reg, 0, 100.0, 1.3);
            assert!(matches!(reply, RouteReply::Ready { .. }), "{reply:?}");
        }
        // A third client polls (every 5 s at most) while the workers go on
        // reporting no session.
        let (reply, _) = route(&mut reg, 0, 100.0, 2.0);
        let RouteReply::Waiting { request_idx, .. } = reply else {
            panic!("{reply:?}")
        };
        let mut t = 2.0;
        let served = loop {
            t += 2.0;
            assert!(t < 20.0, "still waiting at t={t}");
            for w in [1, 2] {
                report_sessions(&mut reg, w, vec![], t);
            }
            pass(&mut reg, t);
            if let (RouteReply::Ready { .. }, _) = route(&mut reg, request_idx, 100.0, t) {
                break t;
            }
        };
        assert!(served > 1.3 + ASSIGNMENT_CONFIRM_WINDOW, "{served}");
    }

    #[test]
    fn a_worker_whose_port_was_taken_is_relaunched_at_once_without_backoff() {
        let mut reg = registry();
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        let (id, mtoken) = spawns(&effects)[0].clone();
        let taken = |port: i64| {
            format!(
                "Worker Server failed to launch: cannot listen on 127.0.0.1:{port} (public listener, WORKER_PORT): Address already in use (os error 98)"
            )
        };
        let mut t = 1.2;
        for attempt in 0..=MAX_PORT_RELAUNCHES {
            let (spawned, exited) = fake_spawned(id);
            std::mem::forget(exited);
            let url = spawned.url.clone();
            reg.apply(
                Event::SpawnDone {
                    endpoint_id: 1,
                    worker_id: id,
                    result: Ok(spawned),
                },
                t,
            );
            let mut report = idle_report(id, &mtoken, &url);
            report.loadtime = 0.0;
            report.max_perf = 0.0;
            report.error_msg = taken(20_000 + id);
            let out = reg.apply(
                Event::Report {
                    report,
                    signature: None,
                },
                t + 0.01,
            );
            assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
            let g = reg.gauges(1).unwrap();
            if attempt == MAX_PORT_RELAUNCHES {
                // Taken again and again: now it is a failed launch.
                assert!(stops(&out.effects).is_empty(), "{:?}", out.effects);
                assert_eq!(g.backoff_failures, 1);
                assert_eq!(g.counts[WorkerState::Error.index()], 1);
                break;
            }
            // Stopped, then launched again at once: no failure counted.
            assert_eq!(stops(&out.effects), vec![id], "{:?}", out.effects);
            assert_eq!(g.backoff_failures, 0);
            assert_eq!(g.spawn_failures, 0);
            assert_eq!(g.counts[WorkerState::Error.index()], 0);
            let out = reg.apply(
                Event::StopDone {
                    worker_id: id,
                    destroy: false,
                },
                t + 0.02,
            );
            assert_eq!(spawns(&out.effects), vec![(id, mtoken.clone())]);
            t += 0.1;
        }
        // A relaunch that binds resets the count.
        let mut reg = registry();
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        let (id, mtoken) = spawns(&effects)[0].clone();
        let (spawned, exited) = fake_spawned(id);
        std::mem::forget(exited);
        let url = spawned.url.clone();
        reg.apply(
            Event::SpawnDone {
                endpoint_id: 1,
                worker_id: id,
                result: Ok(spawned),
            },
            1.2,
        );
        let mut report = idle_report(id, &mtoken, &url);
        report.error_msg = taken(1);
        let out = reg.apply(
            Event::Report {
                report,
                signature: None,
            },
            1.3,
        );
        assert_eq!(stops(&out.effects), vec![id]);
        let out = reg.apply(
            Event::StopDone {
                worker_id: id,
                destroy: false,
            },
            1.4,
        );
        let relaunched = bring_up(&mut reg, &out.effects, 1.5);
        assert_eq!(relaunched, vec![(id, mtoken)]);
        assert_eq!(reg.worker(id).unwrap().port_relaunches, 0);
        let (reply, _) = route(&mut reg, 0, 100.0, 1.6);
        assert!(matches!(reply, RouteReply::Ready { .. }), "{reply:?}");
    }

    #[test]
    fn launches_failing_before_idle_back_off() {
        let mut reg = registry();
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        let (id, _) = spawns(&effects)[0].clone();
        reg.apply(
            Event::SpawnDone {
                endpoint_id: 1,
                worker_id: id,
                result: Err("cannot start worker.log: No space left on device".into()),
            },
            1.2,
        );
        let g = reg.gauges(1).unwrap();
        assert_eq!(g.backoff_failures, 1);
        assert!(g.backoff_retry_at.is_some());
        // Held back: no launch before the backoff delay.
        let effects = pass(&mut reg, 1.3);
        assert!(spawns(&effects).is_empty());
    }

    #[test]
    fn reports_are_refused_with_a_reason() {
        // By default only launched workers may report.
        let mut reg = registry();
        let report = idle_report(9, KEY, "http://127.0.0.1:1");
        let refusal = reg.check_report(&report).unwrap_err();
        assert!(
            refusal.to_string().contains("--allow-external-workers"),
            "{refusal}"
        );
        let out = reg.apply(
            Event::Report {
                report,
                signature: Some("sig".into()),
            },
            1.0,
        );
        assert!(matches!(
            out.reply,
            Reply::Accepted(Err(Refusal::Unauthorized(_)))
        ));
        assert_eq!(reg.worker_count(), 0);
        let mut reg = Registry::new(
            RegistryConfig {
                strict: false,
                ..RegistryConfig::default()
            },
            0,
        );
        reg.apply(Event::EndpointCreated(stored(1, seed())), 0.0);
        let out = reg.apply(
            Event::Report {
                report: idle_report(9, "nope", "http://127.0.0.1:1"),
                signature: None,
            },
            1.0,
        );
        assert!(matches!(
            out.reply,
            Reply::Accepted(Err(Refusal::Unauthorized(_)))
        ));
        // An external worker registers with the endpoint key, once signed.
        let report = idle_report(9, KEY, "http://127.0.0.1:1");
        assert_eq!(reg.check_report(&report), Ok(ReportCheck::Sign));
        let out = reg.apply(
            Event::Report {
                report,
                signature: Some("sig".into()),
            },
            1.0,
        );
        assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
        let rows = reg.worker_rows(1, None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].external);
        // New ids go above ids seen.
        assert_eq!(reg.next_worker_id(), 10);
    }

    #[test]
    fn deleting_an_endpoint_stops_its_workers() {
        let mut reg = registry();
        route(&mut reg, 0, 100.0, 1.0);
        let effects = pass(&mut reg, 1.1);
        bring_up(&mut reg, &effects, 1.2);
        let out = reg.apply(Event::EndpointDeleted(1), 2.0);
        assert_eq!(out.reply, Reply::Endpoint(Some(1)));
        assert!(out.effects.iter().any(|e| matches!(
            e,
            Effect::Stop {
                spawned: Some(_),
                destroy: true,
                ..
            }
        )));
        assert_eq!(reg.worker_count(), 0);
        let (reply, _) = route(&mut reg, 0, 1.0, 2.1);
        assert_eq!(reply, RouteReply::Unauthorized);
    }

    #[test]
    fn an_adopted_worker_keeps_its_session_and_is_routable_once_it_reports() {
        let mut reg = registry();
        let (spawned, exited) = fake_spawned(7);
        std::mem::forget(exited);
        let url = spawned.url.clone();
        let out = reg.apply(
            Event::Adopted {
                endpoint_id: 1,
                worker_id: 7,
                mtoken: "tok".into(),
                spawned,
            },
            5.0,
        );
        assert!(out
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Sign { worker_id: 7, .. })));
        // Listed, running, not routable before its signature and report.
        let rows = reg.worker_rows(1, None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, WorkerState::Loading);
        assert_eq!(rows[0].pid, Some(10_007));
        reg.apply(
            Event::Signed {
                endpoint_id: 1,
                worker_id: 7,
                url: url.clone(),
                signature: "sig".into(),
            },
            5.0,
        );
        // Its report lists the session it held before the restart: at its
        // max_sessions (1), it is not routed to.
        let mut report = idle_report(7, "tok", &url);
        report.working_request_idxs = vec![42];
        let accepted = reg.apply(
            Event::Report {
                report: report.clone(),
                signature: None,
            },
            6.0,
        );
        assert_eq!(accepted.reply, Reply::Accepted(Ok(())));
        assert_eq!(
            reg.worker_rows(1, None, 10).unwrap()[0].state,
            WorkerState::Idle
        );
        let (reply, _) = route(&mut reg, 0, 10.0, 6.5);
        assert!(matches!(reply, RouteReply::Waiting { .. }), "{reply:?}");
        // The session ends: routable again.
        report.working_request_idxs.clear();
        reg.apply(
            Event::Report {
                report,
                signature: None,
            },
            7.0,
        );
        let (reply, _) = route(&mut reg, 0, 10.0, 7.5);
        assert!(
            matches!(&reply, RouteReply::Ready { url: u, .. } if **u == *url),
            "{reply:?}"
        );
        // A wrong token is still refused, and new ids go above it.
        let mut bad = idle_report(7, "other", &url);
        bad.working_request_idxs.clear();
        assert!(matches!(
            reg.apply(
                Event::Report {
                    report: bad,
                    signature: None
                },
                8.0
            )
            .reply,
            Reply::Accepted(Err(Refusal::Unauthorized(_)))
        ));
        // Adopted into an endpoint that is gone: stopped.
        let (spawned, exited) = fake_spawned(8);
        std::mem::forget(exited);
        let out = reg.apply(
            Event::Adopted {
                endpoint_id: 99,
                worker_id: 8,
                mtoken: "t".into(),
                spawned,
            },
            9.0,
        );
        assert!(out.effects.iter().any(|e| matches!(
            e,
            Effect::Stop {
                worker_id: 8,
                destroy: true,
                ..
            }
        )));
        reg.check_invariants();
    }

    /// Through the HTTP API of an in-process engine: a WAITING answer says
    /// when `max_workers` is reached, and when the only worker reports but
    /// its consumer is not healthy yet.
    #[tokio::test(start_paused = true)]
    async fn waiting_answers_say_max_workers_is_reached_and_the_consumer_is_not_healthy() {
        use crate::testing::{call, engine, wait_for, wait_real, FakeLauncher};
        use axum::http::StatusCode;
        use serde_json::json;

        let dir = tempfile::tempdir().unwrap();
        let (handle, fake) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let (status, body) = call(
            &core,
            "POST",
            "/api/v0/endptjobs/",
            json!({"endpoint_name": "capped", "cold_workers": 0, "max_workers": 1,
                   "target_util": 1.0, "max_queue_time": 1.0, "target_queue_time": 0.5}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["result"].as_i64().unwrap();
        let api_key = core.registry().stored(id).unwrap().api_key.clone();
        let route = json!({"endpoint": "capped", "api_key": api_key, "cost": 100});
        let (_, first) = call(&core, "POST", "/route/", route.clone()).await;
        // A worker on its way: nothing to explain.
        assert!(
            first["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("waiting: 0 ready, ")),
            "{first}"
        );
        let (wid, mtoken) = wait_for(|| fake.launches().first().cloned()).await;
        let url = FakeLauncher::url(wid);

        // Reporting, not loaded: its consumer's health check has not passed.
        let report = |loaded: bool, load: f64| {
            json!({"id": wid, "mtoken": mtoken, "version": "1.1.0", "url": url,
                   "loadtime": if loaded { 0.1 } else { 0.0 },
                   "max_perf": if loaded { 100.0 } else { 0.0 }, "cur_load": load})
        };
        let (status, body) = call(&core, "POST", "/worker_status/", report(false, 0.0)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut poll = route.clone();
        poll["request_idx"] = first["request_idx"].clone();
        let (_, waiting) = call(&core, "POST", "/route/", poll.clone()).await;
        let text = waiting["status"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("waiting: consumer not healthy yet (1 worker")
                && text.contains("see `nullworker endpoint logs capped --consumer`"),
            "{waiting}"
        );
        assert_eq!(
            waiting.get("reason"),
            None,
            "only failing launches set it: {waiting}"
        );

        // Loaded: the first request takes the worker and holds it.
        let (status, body) = call(&core, "POST", "/worker_status/", report(true, 0.0)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        wait_real("the worker routable", || {
            core.registry().is_routable(id, wid)
        })
        .await;
        let (_, ready) = call(&core, "POST", "/route/", poll).await;
        assert_eq!(ready["url"], json!(url), "{ready}");
        let (status, body) = call(&core, "POST", "/worker_status/", report(true, 100.0)).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // A second request: the only slot is busy and no worker may start.
        let (_, second) = call(&core, "POST", "/route/", route.clone()).await;
        assert_eq!(
            second["status"],
            "waiting: max_workers reached (1 of 1 busy); 1 ready, 0 loading, 0 stopped, 0 error",
            "{second}"
        );
        // Still so after the scaler has had its passes: nothing was launched.
        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        let mut again = route;
        again["request_idx"] = second["request_idx"].clone();
        let (_, second) = call(&core, "POST", "/route/", again).await;
        assert!(
            second["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("waiting: max_workers reached (1 of 1 busy)")),
            "{second}"
        );
        assert_eq!(fake.launches().len(), 1);
        handle.shutdown().await;
    }
}
