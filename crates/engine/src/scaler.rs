//! The scaler loop: every tick (and when kicked after a WAITING answer, a
//! process exit or an endpoint change) it expires old requests, re-derives
//! worker states, asks `policy::autoscale::decide` what each endpoint wants,
//! and carries out the actions through the supervisor, logging each with its
//! reason and counting it in the metrics.
//!
//! State changes are applied to the registry before any process is touched,
//! so a worker being stopped is unrouted at once and the next decision
//! already sees actions in flight.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;

use crate::engine::{now, Core};
use crate::policy::autoscale::{decide, ActionKind};
use crate::policy::worker_state::ProcessPhase;
use crate::registry::{Transition, Worker};
use crate::state::random_key;
use crate::supervisor::{SpawnError, Spawned};

/// Runs until the engine shuts down.
pub async fn run(core: Arc<Core>) {
    let mut interval = tokio::time::interval(core.config.tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = core.kick.notified() => {}
            () = core.shutdown.cancelled() => return,
        }
        tick(&core);
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

/// One scaler pass over every endpoint.
pub fn tick(core: &Arc<Core>) {
    if core.shutdown.is_cancelled() {
        return;
    }
    let t = now();
    let mut work = Vec::new();
    {
        let mut reg = core.registry();
        let ids: Vec<i64> = reg.endpoints.keys().copied().collect();
        for ep_id in ids {
            let mut new_workers = Vec::new();
            {
                let Some(ep) = reg.endpoints.get_mut(&ep_id) else {
                    continue;
                };
                ep.requests.expire(t);
                ep.apply_request_changes();
                let name = ep.stored.name.clone();
                for tr in ep.refresh_all(t) {
                    record_transition(core, &name, &tr);
                }
                let decision = decide(&ep.snapshot(t));
                ep.last_activity = decision.last_activity;
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
                            ep.refresh(worker, t);
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
                            if matches!(
                                w.process,
                                ProcessPhase::Destroying | ProcessPhase::Stopping
                            ) {
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
                            if let Some(tr) = ep.refresh(worker, t) {
                                record_transition(core, &name, &tr);
                            }
                            work.push(Work::Stop {
                                worker_id: worker,
                                spawned,
                                destroy,
                            });
                        }
                    }
                }
            }
            for w in new_workers {
                reg.add_worker(ep_id, w);
            }
        }
    }
    for item in work {
        match item {
            Work::Spawn {
                endpoint_id,
                worker_id,
                mtoken,
                template,
            } => {
                let result = core.supervisor.spawn(worker_id, &mtoken, &template);
                let signature = result.as_ref().ok().map(|s| core.signature(&s.url));
                finish_spawn(core, endpoint_id, worker_id, result, signature);
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

fn finish_spawn(
    core: &Arc<Core>,
    endpoint_id: i64,
    worker_id: i64,
    result: Result<Spawned, SpawnError>,
    signature: Option<Arc<str>>,
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
    let Some(w) = ep.workers.get_mut(&worker_id) else {
        return;
    };
    match result {
        Ok(spawned) => {
            tracing::info!(endpoint = %name, worker = worker_id, url = %spawned.url, pid = spawned.worker.pid, "worker spawned");
            let _ = core
                .db
                .update_worker(worker_id, "LOADING", Some(&spawned.url), None, None);
            w.url = Some(spawned.url.as_str().into());
            w.signature = signature;
            w.process = ProcessPhase::Running;
            w.spawned_at = Some(t);
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
    if let Some(tr) = ep.refresh(worker_id, t) {
        record_transition(core, &name, &tr);
    }
}

fn finish_stop(core: &Arc<Core>, worker_id: i64, destroy: bool) {
    let t = now();
    let mut reg = core.registry();
    if destroy {
        if reg.remove_worker(worker_id).is_some() {
            tracing::info!(worker = worker_id, "worker destroyed");
        }
        let _ = core
            .db
            .update_worker(worker_id, "DESTROYING", None, None, Some(t));
        return;
    }
    let Some((ep, id)) = reg.worker_mut(worker_id) else {
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
    if let Some(tr) = ep.refresh(id, t) {
        record_transition(core, &name, &tr);
    }
}
