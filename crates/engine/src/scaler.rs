//! The scaler loop: every tick, and soon after a kick for an endpoint (a
//! WAITING answer, a process exit, a state change, an update), it expires
//! old requests, re-derives worker states, asks `policy::autoscale::decide`
//! what the endpoint wants, and carries out the actions through the
//! supervisor, logging each with its reason and counting it in the metrics.
//!
//! Kicks are coalesced: at most one early pass per endpoint every
//! [`KICK_INTERVAL`] for WAITING decisions, and as many for other events,
//! so a flood of WAITING answers or reports does not turn into a flood of
//! O(workers) passes. Launches (`Create`, `Start`) are held back
//! while the endpoint's spawn backoff is in force.
//!
//! State changes are applied to the registry before any process is touched,
//! so a worker being stopped is unrouted at once and the next decision
//! already sees actions in flight. The registry lock is taken once per
//! endpoint, never across a process spawn or a signature.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::engine::{now, worker_exited, Core, Kick};
use crate::policy::autoscale::{decide, ActionKind, EndpointSnapshot};
use crate::policy::worker_state::ProcessPhase;
use crate::policy::WorkerState;
use crate::registry::{Transition, Worker};
use crate::state::random_key;
use crate::supervisor::{SpawnError, Spawned};

/// Shortest time between two early passes over the same endpoint for the
/// same kind of kick (WAITING decisions; other events).
pub const KICK_INTERVAL: Duration = Duration::from_millis(100);

/// Runs until the engine shuts down.
pub async fn run(core: Arc<Core>) {
    let mut interval = tokio::time::interval(core.config.tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // When each kind of kick last got a pass, and kicks not served yet.
    let mut last_pass: HashMap<Kick, Instant> = HashMap::new();
    let mut deferred: HashSet<Kick> = HashSet::new();
    loop {
        let wake = deferred
            .iter()
            .filter_map(|kick| last_pass.get(kick))
            .min()
            .map(|at| *at + KICK_INTERVAL);
        let full = tokio::select! {
            _ = interval.tick() => true,
            () = core.kick.notified() => false,
            () = sleep_until(wake) => false,
            () = core.shutdown.cancelled() => return,
        };
        deferred.extend(core.take_kicked());
        if full {
            deferred.clear();
            tick(&core, None);
            last_pass.retain(|_, at| at.elapsed() < KICK_INTERVAL);
            continue;
        }
        let t = Instant::now();
        let due: Vec<Kick> = deferred
            .iter()
            .copied()
            .filter(|kick| {
                last_pass
                    .get(kick)
                    .is_none_or(|at| t.duration_since(*at) >= KICK_INTERVAL)
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let mut endpoints: Vec<i64> = Vec::with_capacity(due.len());
        for kick in &due {
            deferred.remove(kick);
            last_pass.insert(*kick, t);
            if !endpoints.contains(&kick.endpoint_id) {
                endpoints.push(kick.endpoint_id);
            }
        }
        tick(&core, Some(&endpoints));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Records a state transition in the log and the worker history.
pub fn record_transition(core: &Core, endpoint: &str, tr: &Transition) {
    match &tr.reason {
        Some(reason) => {
            tracing::warn!(endpoint, worker = tr.worker, from = %tr.from, to = %tr.to, %reason, "worker state")
        }
        None => {
            tracing::info!(endpoint, worker = tr.worker, from = %tr.from, to = %tr.to, "worker state")
        }
    }
    if let Err(err) =
        core.db
            .update_worker(tr.worker, tr.to.as_str(), None, tr.reason.as_deref(), None)
    {
        tracing::error!(%err, "cannot record worker state");
    }
}

enum Work {
    Spawn {
        endpoint_id: i64,
        worker_id: i64,
        mtoken: String,
        template: crate::endpoint::WorkerTemplate,
    },
    Stop {
        worker_id: i64,
        spawned: Option<Spawned>,
        destroy: bool,
    },
}

/// Workers re-derived per hold of the registry lock: a pass over an
/// endpoint of 10,000 workers releases the lock about 40 times, so
/// `/route/` never waits for more than one chunk.
const CHUNK: usize = 256;

/// One scaler pass over the endpoints `only`, or over every endpoint.
pub fn tick(core: &Arc<Core>, only: Option<&[i64]>) {
    let ids: Vec<i64> = match only {
        Some(ids) => ids.to_vec(),
        None => core.registry().endpoints.keys().copied().collect(),
    };
    for ep_id in ids {
        if core.shutdown.is_cancelled() {
            return;
        }
        let Some(Plan {
            name,
            work,
            transitions,
        }) = plan(core, ep_id, now())
        else {
            continue;
        };
        for tr in &transitions {
            record_transition(core, &name, tr);
        }
        carry_out(core, work);
    }
}

/// What one pass decided for one endpoint.
struct Plan {
    name: String,
    /// Process work to carry out (outside the lock).
    work: Vec<Work>,
    /// State transitions to record (outside the lock).
    transitions: Vec<Transition>,
}

/// Decides for one endpoint and applies the decision to the registry.
///
/// Workers are re-derived and snapshotted in chunks of [`CHUNK`] (the lock
/// is released between chunks), `decide` runs without the lock, and the
/// actions are applied under the lock after checking that each still holds:
/// a worker to stop or destroy (unless in `ERROR`) must be in the state the
/// decision saw and carry nothing, so a request routed to it meanwhile keeps
/// it alive. `None` if the endpoint is gone.
fn plan(core: &Arc<Core>, ep_id: i64, t: f64) -> Option<Plan> {
    let mut transitions = Vec::new();
    let mut views = Vec::new();
    let mut after = None;
    let snapshot = loop {
        let mut reg = core.registry();
        let ep = reg.endpoints.get_mut(&ep_id)?;
        if after.is_none() && views.is_empty() {
            ep.requests.expire(t);
            ep.apply_request_changes();
            views.reserve(ep.workers.len());
        }
        match ep.refresh_chunk(after, CHUNK, t, &mut views, &mut transitions) {
            Some(last) => after = Some(last),
            None => {
                break EndpointSnapshot {
                    now: t,
                    policy: ep.policy.clone(),
                    workers: std::mem::take(&mut views),
                    waiting: ep.requests.waiting().collect(),
                    last_activity: ep.last_activity,
                    last_perf: ep.last_perf,
                };
            }
        }
    };
    let decision = decide(&snapshot);

    let mut work = Vec::new();
    let mut new_workers = Vec::new();
    let mut reg = core.registry();
    let ep = reg.endpoints.get_mut(&ep_id)?;
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
    let may_launch = ep.backoff.allows(t);
    if !decision.actions.is_empty() {
        tracing::debug!(
            endpoint = %name,
            want_active = decision.want_active,
            want_total = decision.want_total,
            demand = decision.demand,
            "scale decision"
        );
    }
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
            if w.state != WorkerState::Error && (Some(w.state) != seen || ep.is_carrying(worker)) {
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
        core.metrics.scale_action(kind, action.reason.as_str());
        match action.kind {
            ActionKind::Create => {
                let id = match core.db.insert_worker(ep_id, t) {
                    Ok(id) => id,
                    Err(err) => {
                        tracing::error!(%err, "cannot record a new worker");
                        continue;
                    }
                };
                let mtoken = random_key(32);
                new_workers.push(Worker::launched(id, mtoken.clone(), t));
                work.push(Work::Spawn {
                    endpoint_id: ep_id,
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
                let mtoken = w.mtoken.clone();
                transitions.extend(ep.refresh(worker, t));
                work.push(Work::Spawn {
                    endpoint_id: ep_id,
                    worker_id: worker,
                    mtoken,
                    template: ep.stored.template.clone(),
                });
            }
            ActionKind::Stop { worker } | ActionKind::Destroy { worker } => {
                let destroy = matches!(action.kind, ActionKind::Destroy { .. });
                ep.unroute(worker);
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
                    w.stopped_at = Some(t);
                }
                let spawned = w.spawned.take();
                if destroy {
                    ep.requests.forget_worker(worker);
                    ep.apply_request_changes();
                }
                transitions.extend(ep.refresh(worker, t));
                work.push(Work::Stop {
                    worker_id: worker,
                    spawned,
                    destroy,
                });
            }
        }
    }
    for w in new_workers {
        reg.add_worker(ep_id, w);
    }
    Some(Plan {
        name,
        work,
        transitions,
    })
}

fn carry_out(core: &Arc<Core>, work: Vec<Work>) {
    for item in work {
        match item {
            Work::Spawn {
                endpoint_id,
                worker_id,
                mtoken,
                template,
            } => {
                let result = core.supervisor.spawn(worker_id, &mtoken, &template);
                let url = result.as_ref().ok().map(|s| s.url.clone());
                finish_spawn(core, endpoint_id, worker_id, result);
                if let Some(url) = url {
                    // Signed off the runtime threads; the worker is routable
                    // only once signed, long before its first report.
                    let core2 = core.clone();
                    core.tasks.spawn(async move {
                        if let Some(sig) = core2.signature(&url).await {
                            attach_signature(&core2, endpoint_id, worker_id, &url, sig);
                        }
                    });
                }
            }
            Work::Stop {
                worker_id,
                spawned,
                destroy,
            } => {
                let core2 = core.clone();
                core.tasks.spawn(async move {
                    if let Some(spawned) = &spawned {
                        core2.supervisor.stop(worker_id, spawned).await;
                    }
                    finish_stop(&core2, worker_id, destroy);
                });
            }
        }
    }
}

/// Gives a spawned worker the signature of its URL (if it still has that URL).
fn attach_signature(
    core: &Arc<Core>,
    endpoint_id: i64,
    worker_id: i64,
    url: &str,
    signature: Arc<str>,
) {
    let mut reg = core.registry();
    let Some(ep) = reg.endpoints.get_mut(&endpoint_id) else {
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
    let routable = ep.is_routable(worker_id);
    drop(reg);
    if routable {
        core.worker_ready.notify_waiters();
    }
}

fn finish_spawn(
    core: &Arc<Core>,
    endpoint_id: i64,
    worker_id: i64,
    result: Result<Spawned, SpawnError>,
) {
    let t = now();
    let mut reg = core.registry();
    let Some(ep) = reg.endpoints.get_mut(&endpoint_id) else {
        drop(reg);
        if let Ok(spawned) = result {
            // The endpoint went away meanwhile.
            let core2 = core.clone();
            core.tasks
                .spawn(async move { core2.supervisor.stop(worker_id, &spawned).await });
        }
        return;
    };
    let name = ep.stored.name.clone();
    ep.spawns += 1;
    let Some(w) = ep.workers.get_mut(&worker_id) else {
        return;
    };
    let mut exited_already = false;
    match result {
        Ok(spawned) => {
            tracing::info!(endpoint = %name, worker = worker_id, url = %spawned.url, pid = spawned.worker.pid, control_port = spawned.control_port, "worker spawned");
            let _ = core
                .db
                .update_worker(worker_id, "LOADING", Some(&spawned.url), None, None);
            w.url = Some(spawned.url.as_str().into());
            w.signature = None;
            w.process = ProcessPhase::Running;
            w.spawned_at = Some(t);
            w.idle_this_life = false;
            // Its exit event may have been handled before this point and
            // ignored (the worker had no process yet): look for ourselves.
            exited_already = spawned.worker.has_exited();
            w.spawned = Some(spawned);
        }
        Err(err) => {
            tracing::error!(endpoint = %name, worker = worker_id, %err, "cannot spawn worker");
            w.process = ProcessPhase::Exited { expected: false };
            w.error = Some(err.to_string());
            let _ = core
                .db
                .update_worker(worker_id, "ERROR", None, Some(&err.to_string()), None);
        }
    }
    if exited_already {
        tracing::warn!(endpoint = %name, worker = worker_id, "worker process exited at once");
        core.metrics.worker_exit("unexpected");
        worker_exited(ep, worker_id);
    }
    let transition = ep.refresh(worker_id, t);
    let broken = transition
        .as_ref()
        .is_some_and(|tr| tr.to == crate::policy::WorkerState::Error);
    drop(reg);
    if let Some(tr) = transition {
        record_transition(core, &name, &tr);
    }
    if broken {
        core.kick_endpoint(endpoint_id);
    }
}

fn finish_stop(core: &Arc<Core>, worker_id: i64, destroy: bool) {
    let t = now();
    let mut reg = core.registry();
    if destroy {
        let removed = reg.remove_worker(worker_id).is_some();
        drop(reg);
        if removed {
            tracing::info!(worker = worker_id, "worker destroyed");
        }
        let _ = core
            .db
            .update_worker(worker_id, "DESTROYING", None, None, Some(t));
        return;
    }
    let Some((ep, id)) = reg.worker_mut(worker_id) else {
        drop(reg);
        let _ = core
            .db
            .update_worker(worker_id, "DESTROYING", None, None, Some(t));
        return;
    };
    let name = ep.stored.name.clone();
    if let Some(w) = ep.workers.get_mut(&id) {
        if w.process == ProcessPhase::Stopping {
            w.process = ProcessPhase::Stopped;
            w.stopped_at = Some(t);
        }
    }
    let transition = ep.refresh(id, t);
    drop(reg);
    if let Some(tr) = transition {
        record_transition(core, &name, &tr);
    }
}
