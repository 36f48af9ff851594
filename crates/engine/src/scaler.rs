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
//! A pass is three registry events: `Scan` chunks (the lock is released
//! between chunks of [`CHUNK`] workers), `decide` without the lock, then
//! `Decided`, which applies the actions to the registry before any process
//! is touched (a worker being stopped is unrouted at once) and hands the
//! launches and stops to the spawner thread and stop tasks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::context::{Core, Kick};
use crate::policy::autoscale::decide;
use crate::registry::{Event, Reply, ScanStep};

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

/// Workers re-derived per hold of the registry lock: a pass over an
/// endpoint of 10,000 workers releases the lock about 40 times, so
/// `/route/` never waits for more than one chunk.
pub const CHUNK: usize = 256;

/// One scaler pass over the endpoints `only`, or over every endpoint.
pub fn tick(core: &Arc<Core>, only: Option<&[i64]>) {
    let ids: Vec<i64> = match only {
        Some(ids) => ids.to_vec(),
        None => core.registry().endpoint_ids(),
    };
    for endpoint_id in ids {
        if core.shutdown.is_cancelled() {
            return;
        }
        pass(core, endpoint_id);
    }
}

/// Decides for one endpoint and applies the decision.
fn pass(core: &Arc<Core>, endpoint_id: i64) {
    let mut views = Vec::new();
    let mut after = None;
    let snapshot = loop {
        let reply = core.apply(Event::Scan {
            endpoint_id,
            after,
            max: CHUNK,
            views: &mut views,
        });
        match reply {
            Reply::Scan(Some(ScanStep::More(last))) => after = Some(last),
            Reply::Scan(Some(ScanStep::Done(snapshot))) => break snapshot,
            _ => return,
        }
    };
    let decision = decide(&snapshot);
    core.apply(Event::Decided {
        endpoint_id,
        snapshot: &snapshot,
        decision: &decision,
    });
}
