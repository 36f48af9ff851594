//! The engine's event stream: what the dashboard and any other watcher see
//! of the engine, as a bounded in-memory ring of [`Stamped`] events with
//! monotonically increasing ids.
//!
//! The registry reports what it did as [`Observation`]s (an effect like
//! any other, carried out after its lock is released); the hub turns them
//! into wire events ([`EngineEvent`]), keeps the little per-endpoint state
//! a reconnecting watcher needs to redraw (the last samples, the last scale
//! decisions, the sessions each worker holds), and wakes subscribers
//! through a `watch` channel. A publish is O(1) under the hub's own short
//! lock, never the registry's; nothing waits on a subscriber, and a slow
//! subscriber that falls behind the ring gets a [`Catchup::Reset`].
//!
//! Nothing secret is ever put in an event: endpoints appear by id, name,
//! state and policy parameters (no api_key, no worker template), workers
//! by id and state (no `MASTER_TOKEN`, no signature).
//!
//! It does not serve HTTP (see `ui`) nor read the registry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use crate::endpoint::EndpointSettings;
use crate::policy::{EndpointPolicy, WorkerState};

/// Events kept for replay: about ten minutes of a busy 1,000-worker
/// endpoint's state changes plus its samples.
pub const DEFAULT_CAPACITY: usize = 16_384;
/// One-second samples kept per endpoint for a reset (30 minutes).
pub const SAMPLE_HISTORY: usize = 1_800;
/// Scale actions kept per endpoint for a reset.
pub const DECISION_HISTORY: usize = 500;
/// Samples summed for the cost of the last minute.
pub const COST_WINDOW: usize = 60;

/// An endpoint as the stream shows it: no api_key, no worker template (its
/// environment may hold secrets).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointView {
    /// Endpoint id.
    pub id: i64,
    /// Endpoint name.
    pub name: String,
    /// `active`, `suspended` or `stopped`.
    pub state: String,
    /// The parameters equal the `seed` preset's.
    pub seed: bool,
    /// The §11.1 parameters.
    pub params: EndpointSettings,
}

impl EndpointView {
    /// The view of an endpoint's settings.
    pub fn new(id: i64, name: &str, settings: &EndpointSettings) -> Self {
        let seed = EndpointSettings::from_policy(&EndpointPolicy::seed()).params();
        Self {
            id,
            name: name.to_owned(),
            state: settings.endpoint_state.as_str().to_owned(),
            seed: settings.params() == seed,
            params: settings.clone(),
        }
    }
}

/// What the registry reports as it applies events (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// An event published as it is: scale actions, worker states, workers
    /// forgotten (destroyed, or silent external workers), endpoints deleted.
    Published(EngineEvent),
    /// The sessions a worker's report lists changed.
    Sessions {
        /// Endpoint name.
        endpoint: String,
        /// Worker id.
        worker: i64,
        /// Sessions it holds now.
        held: usize,
    },
    /// A scaler pass decided (kept for the samples, not published).
    Demand {
        /// Endpoint name.
        endpoint: String,
        /// Demand in perf units.
        demand: f64,
        /// Active workers wanted.
        want_active: u32,
    },
    /// An endpoint was created or changed.
    Endpoint(EndpointView),
}

/// What a `nullworker dispatch` driving an endpoint last reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DispatchCounts {
    /// Jobs waiting in the queue.
    pub backlog: u64,
    /// Jobs taken and not finished.
    pub in_flight: u64,
    /// Sessions the dispatcher holds.
    pub held: u64,
}

/// Reports older than this no longer show (the dispatcher reports every
/// second while it runs).
pub const DISPATCH_STALE_AFTER: f64 = 5.0;

/// One per-second sample of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Endpoint name.
    pub endpoint: String,
    /// Workers per state (states with none left out).
    pub workers: BTreeMap<&'static str, usize>,
    /// `IDLE` workers holding at least one session.
    pub busy: usize,
    /// Demand at the last scaler pass (perf units).
    pub demand: f64,
    /// Active workers wanted at the last scaler pass.
    pub want_active: u32,
    /// Sessions held, as the workers' reports list them.
    pub sessions: usize,
    /// Requests waiting for a worker.
    pub waiting: usize,
    /// Worker-seconds of the last minute (workers not `STOPPED`, summed over
    /// the last 60 samples, this one included).
    pub cost_last_minute: f64,
    /// The dispatcher's counts, if one reported within
    /// [`DISPATCH_STALE_AFTER`].
    pub dispatch: Option<DispatchCounts>,
}

/// One event on the wire (`type` names the kind).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EngineEvent {
    /// A scale action carried out.
    Scale {
        /// Endpoint name.
        endpoint: String,
        /// `create`, `start`, `stop` or `destroy`.
        action: &'static str,
        /// The worker acted on (`null` for `create`).
        worker: Option<i64>,
        /// Stable reason label.
        reason: &'static str,
        /// The reason as a sentence.
        detail: String,
        /// Active workers wanted.
        want_active: u32,
        /// Demand in perf units.
        demand: f64,
    },
    /// A worker changed state.
    WorkerState {
        /// Endpoint name.
        endpoint: String,
        /// Worker id.
        worker: i64,
        /// Previous state.
        from: WorkerState,
        /// New state.
        to: WorkerState,
        /// Why, for `ERROR`.
        reason: Option<String>,
    },
    /// A worker was forgotten.
    WorkerGone {
        /// Endpoint name.
        endpoint: String,
        /// Worker id.
        worker: i64,
    },
    /// A worker's report lists a different number of sessions.
    Session {
        /// Endpoint name.
        endpoint: String,
        /// Worker id.
        worker: i64,
        /// Sessions held now.
        held: usize,
        /// `held` (from none to some) or `released` (from some to none);
        /// `changed` otherwise.
        change: &'static str,
    },
    /// An endpoint was created or changed.
    Endpoint {
        /// The endpoint.
        endpoint: EndpointView,
    },
    /// An endpoint was deleted.
    EndpointDeleted {
        /// Endpoint name.
        endpoint: String,
    },
    /// The per-second sample of an endpoint.
    Sample(Sample),
}

impl EngineEvent {
    /// The `type` field (the SSE `event:` name).
    pub fn kind(&self) -> &'static str {
        match self {
            EngineEvent::Scale { .. } => "scale",
            EngineEvent::WorkerState { .. } => "worker_state",
            EngineEvent::WorkerGone { .. } => "worker_gone",
            EngineEvent::Session { .. } => "session",
            EngineEvent::Endpoint { .. } => "endpoint",
            EngineEvent::EndpointDeleted { .. } => "endpoint_deleted",
            EngineEvent::Sample(_) => "sample",
        }
    }

    fn endpoint(&self) -> &str {
        match self {
            EngineEvent::Scale { endpoint, .. }
            | EngineEvent::WorkerState { endpoint, .. }
            | EngineEvent::WorkerGone { endpoint, .. }
            | EngineEvent::Session { endpoint, .. }
            | EngineEvent::EndpointDeleted { endpoint } => endpoint,
            EngineEvent::Endpoint { endpoint } => &endpoint.name,
            EngineEvent::Sample(s) => &s.endpoint,
        }
    }
}

/// An event with its id and time (engine clock, Unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stamped {
    /// Strictly increasing across the engine's life, and above any id of
    /// an earlier engine run (ids start at the start time in microseconds).
    pub id: u64,
    /// When it was published.
    pub at: f64,
    /// The event.
    #[serde(flatten)]
    pub event: EngineEvent,
}

/// What a session holds for one worker: how many, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HeldSessions {
    /// Sessions held.
    pub held: usize,
    /// Since when the worker holds any (Unix seconds).
    pub since: f64,
}

/// Per-endpoint state kept for resets and samples.
#[derive(Debug, Default)]
struct Track {
    view: Option<EndpointView>,
    samples: VecDeque<Arc<Stamped>>,
    decisions: VecDeque<Arc<Stamped>>,
    sessions: HashMap<i64, HeldSessions>,
    sessions_total: usize,
    states: HashMap<i64, WorkerState>,
    demand: f64,
    want_active: u32,
    dispatch: Option<(DispatchCounts, f64)>,
    /// Billable workers of the last [`COST_WINDOW`] samples.
    billable: VecDeque<usize>,
}

impl Track {
    fn busy(&self) -> usize {
        self.sessions
            .iter()
            .filter(|(id, s)| s.held > 0 && self.states.get(id) == Some(&WorkerState::Idle))
            .count()
    }
}

/// What one endpoint looks like in a reset snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointHistory {
    /// The endpoint, if known.
    pub endpoint: Option<EndpointView>,
    /// Its last samples, oldest first.
    pub samples: Vec<Arc<Stamped>>,
    /// Its last scale actions, oldest first.
    pub decisions: Vec<Arc<Stamped>>,
    /// Sessions held per worker id.
    pub sessions: BTreeMap<i64, HeldSessions>,
}

/// What a subscriber gets after the id it last saw.
#[derive(Debug)]
pub enum Catchup {
    /// Every event after it, in order (perhaps none).
    Replay(Vec<Arc<Stamped>>),
    /// It is no longer in the ring (or was never issued): start over from
    /// this snapshot, taken as of event `last_id`.
    Reset {
        /// The id the snapshot is as of.
        last_id: u64,
        /// Every endpoint's history, by name.
        endpoints: BTreeMap<String, EndpointHistory>,
    },
}

#[derive(Debug)]
struct HubState {
    first_id: u64,
    next_id: u64,
    capacity: usize,
    ring: VecDeque<Arc<Stamped>>,
    tracks: BTreeMap<String, Track>,
}

/// The event hub. See the module docs.
#[derive(Debug)]
pub struct EventHub {
    state: Mutex<HubState>,
    latest: watch::Sender<u64>,
}

impl EventHub {
    /// A hub keeping `capacity` events whose first id is `first_id` (≥ 1).
    pub fn new(first_id: u64, capacity: usize) -> Self {
        let first_id = first_id.max(1);
        let (latest, _) = watch::channel(first_id - 1);
        Self {
            state: Mutex::new(HubState {
                first_id,
                next_id: first_id,
                capacity: capacity.max(1),
                ring: VecDeque::with_capacity(capacity.clamp(1, 4096)),
                tracks: BTreeMap::new(),
            }),
            latest,
        }
    }

    /// A hub whose ids start at `now` in microseconds, so that a watcher
    /// of an earlier engine run on the same address resets.
    pub fn starting_at(now: f64) -> Self {
        let micros = if now.is_finite() && now > 0.0 {
            (now * 1e6) as u64
        } else {
            1
        };
        Self::new(micros, DEFAULT_CAPACITY)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes when a new event is published (`borrow_and_update` before
    /// reading, then `changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The id of the last event published (`first id - 1` before any).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// Takes in what the registry observed; publishes what is worth it.
    pub fn observe(&self, observation: Observation, now: f64) {
        let event = match observation {
            Observation::Demand {
                endpoint,
                demand,
                want_active,
            } => {
                let mut st = self.lock();
                let track = st.tracks.entry(endpoint).or_default();
                track.demand = demand;
                track.want_active = want_active;
                return;
            }
            Observation::Published(event) => event,
            Observation::Sessions {
                endpoint,
                worker,
                held,
            } => {
                let before = {
                    let st = self.lock();
                    st.tracks
                        .get(&endpoint)
                        .and_then(|t| t.sessions.get(&worker))
                        .map_or(0, |s| s.held)
                };
                let change = match (before, held) {
                    (0, n) if n > 0 => "held",
                    (n, 0) if n > 0 => "released",
                    _ => "changed",
                };
                EngineEvent::Session {
                    endpoint,
                    worker,
                    held,
                    change,
                }
            }
            Observation::Endpoint(view) => EngineEvent::Endpoint { endpoint: view },
        };
        self.publish(event, now);
    }

    /// Records what a dispatcher reported for an endpoint.
    pub fn dispatch_report(&self, endpoint: &str, counts: DispatchCounts, now: f64) {
        let mut st = self.lock();
        st.tracks.entry(endpoint.to_owned()).or_default().dispatch = Some((counts, now));
    }

    /// The sample of an endpoint now, from the registry's O(1) gauges
    /// (`counts` per state in [`WorkerState::ALL`] order, `waiting`) and
    /// what the hub tracks; published as a `sample` event.
    pub fn sample(
        &self,
        endpoint: &str,
        counts: &[usize; WorkerState::ALL.len()],
        waiting: usize,
        now: f64,
    ) -> Arc<Stamped> {
        let sample = {
            let mut st = self.lock();
            let track = st.tracks.entry(endpoint.to_owned()).or_default();
            let workers: BTreeMap<&'static str, usize> = WorkerState::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (s.as_str(), *n))
                .collect();
            let billable: usize =
                counts.iter().sum::<usize>() - counts[WorkerState::Stopped.index()];
            track.billable.push_back(billable);
            while track.billable.len() > COST_WINDOW {
                track.billable.pop_front();
            }
            let dispatch = track
                .dispatch
                .filter(|(_, at)| now - at <= DISPATCH_STALE_AFTER)
                .map(|(c, _)| c);
            Sample {
                endpoint: endpoint.to_owned(),
                workers,
                busy: track.busy(),
                demand: track.demand,
                want_active: track.want_active,
                sessions: track.sessions_total,
                waiting,
                cost_last_minute: track.billable.iter().sum::<usize>() as f64,
                dispatch,
            }
        };
        self.publish(EngineEvent::Sample(sample), now)
    }

    /// Publishes one event: O(1) under the hub's lock.
    pub fn publish(&self, event: EngineEvent, now: f64) -> Arc<Stamped> {
        let stamped = {
            let mut st = self.lock();
            let id = st.next_id;
            st.next_id += 1;
            let stamped = Arc::new(Stamped { id, at: now, event });
            st.track(&stamped);
            st.ring.push_back(stamped.clone());
            while st.ring.len() > st.capacity {
                st.ring.pop_front();
            }
            stamped
        };
        self.latest.send_replace(stamped.id);
        stamped
    }

    /// Sessions held per worker of an endpoint (for the worker table).
    pub fn sessions(&self, endpoint: &str) -> HashMap<i64, HeldSessions> {
        self.lock()
            .tracks
            .get(endpoint)
            .map(|t| t.sessions.clone())
            .unwrap_or_default()
    }

    /// Every event after `last` (the `Last-Event-ID`), or a reset if some
    /// of them have left the ring, if `last` was never issued by this hub,
    /// or if there is no `last` (a first connection).
    pub fn since(&self, last: Option<u64>) -> Catchup {
        let st = self.lock();
        let newest = st.next_id - 1;
        let oldest = st.ring.front().map_or(st.next_id, |e| e.id);
        match last {
            Some(last) if last >= st.first_id - 1 && last <= newest && last + 1 >= oldest => {
                let skip = (last + 1 - oldest) as usize;
                Catchup::Replay(st.ring.iter().skip(skip).cloned().collect())
            }
            _ => Catchup::Reset {
                last_id: newest,
                endpoints: st
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.view.is_some() || !t.samples.is_empty())
                    .map(|(name, t)| {
                        (
                            name.clone(),
                            EndpointHistory {
                                endpoint: t.view.clone(),
                                samples: t.samples.iter().cloned().collect(),
                                decisions: t.decisions.iter().cloned().collect(),
                                sessions: t.sessions.iter().map(|(k, v)| (*k, *v)).collect(),
                            },
                        )
                    })
                    .collect(),
            },
        }
    }
}

impl HubState {
    /// Updates the per-endpoint state an event changes.
    fn track(&mut self, stamped: &Arc<Stamped>) {
        let name = stamped.event.endpoint();
        if let EngineEvent::EndpointDeleted { .. } = stamped.event {
            self.tracks.remove(name);
            return;
        }
        let track = match self.tracks.get_mut(name) {
            Some(t) => t,
            None => self.tracks.entry(name.to_owned()).or_default(),
        };
        match &stamped.event {
            EngineEvent::Scale { .. } => {
                track.decisions.push_back(stamped.clone());
                while track.decisions.len() > DECISION_HISTORY {
                    track.decisions.pop_front();
                }
            }
            EngineEvent::WorkerState { worker, to, .. } => {
                track.states.insert(*worker, *to);
            }
            EngineEvent::WorkerGone { worker, .. } => {
                track.states.remove(worker);
                if let Some(s) = track.sessions.remove(worker) {
                    track.sessions_total -= s.held;
                }
            }
            EngineEvent::Session { worker, held, .. } => {
                let before = track.sessions.get(worker).map_or(0, |s| s.held);
                track.sessions_total = track.sessions_total - before + held;
                if *held == 0 {
                    track.sessions.remove(worker);
                } else if before == 0 {
                    track.sessions.insert(
                        *worker,
                        HeldSessions {
                            held: *held,
                            since: stamped.at,
                        },
                    );
                } else if let Some(s) = track.sessions.get_mut(worker) {
                    s.held = *held;
                }
            }
            EngineEvent::Endpoint { endpoint } => track.view = Some(endpoint.clone()),
            EngineEvent::Sample(_) => {
                track.samples.push_back(stamped.clone());
                while track.samples.len() > SAMPLE_HISTORY {
                    track.samples.pop_front();
                }
            }
            EngineEvent::EndpointDeleted { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(endpoint: &str, worker: i64, to: WorkerState) -> Observation {
        Observation::Published(EngineEvent::WorkerState {
            endpoint: endpoint.into(),
            worker,
            from: WorkerState::Creating,
            to,
            reason: None,
        })
    }

    fn ids(events: &[Arc<Stamped>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn ids_increase_and_replay_keeps_the_order() {
        let hub = EventHub::new(100, 64);
        for w in 0..5 {
            hub.observe(state("e", w, WorkerState::Loading), f64::from(w as u8));
        }
        assert_eq!(hub.last_id(), 104);
        let Catchup::Replay(all) = hub.since(Some(99)) else {
            panic!("expected a replay from before the first id");
        };
        assert_eq!(ids(&all), vec![100, 101, 102, 103, 104]);
        let workers: Vec<i64> = all
            .iter()
            .map(|e| match &e.event {
                EngineEvent::WorkerState { worker, .. } => *worker,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(workers, vec![0, 1, 2, 3, 4]);
        let times: Vec<f64> = all.iter().map(|e| e.at).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn reconnect_with_a_last_event_id_gets_only_what_is_newer() {
        let hub = EventHub::new(1, 64);
        for w in 0..10 {
            hub.observe(state("e", w, WorkerState::Idle), 1.0);
        }
        let Catchup::Replay(newer) = hub.since(Some(7)) else {
            panic!("id 7 is still in the ring");
        };
        assert_eq!(ids(&newer), vec![8, 9, 10]);
        let Catchup::Replay(none) = hub.since(Some(10)) else {
            panic!("the newest id replays nothing");
        };
        assert!(none.is_empty());
    }

    #[test]
    fn a_too_old_unknown_or_missing_id_gets_a_reset_snapshot() {
        let hub = EventHub::new(1, 4);
        hub.observe(
            Observation::Endpoint(EndpointView::new(
                3,
                "e",
                &EndpointSettings::from_policy(&EndpointPolicy::seed()),
            )),
            0.0,
        );
        hub.observe(
            Observation::Sessions {
                endpoint: "e".into(),
                worker: 7,
                held: 1,
            },
            2.0,
        );
        hub.sample("e", &[0, 0, 0, 1, 0, 0, 0, 0, 0], 0, 3.0);
        for w in 0..4 {
            hub.observe(state("e", w, WorkerState::Idle), 4.0);
        }
        // Ids 1..=7; the ring keeps 4..=7.
        for last in [Some(1), Some(2), None, Some(1_000)] {
            match hub.since(last) {
                Catchup::Reset { last_id, endpoints } => {
                    assert_eq!(last_id, 7, "{last:?}");
                    let e = &endpoints["e"];
                    let view = e.endpoint.as_ref().expect("the endpoint survives the ring");
                    assert!(view.seed, "{view:?}");
                    assert_eq!(e.samples.len(), 1);
                    assert_eq!(e.sessions[&7].held, 1);
                    assert_eq!(e.sessions[&7].since, 2.0);
                }
                Catchup::Replay(events) => panic!("{last:?}: expected a reset, got {events:?}"),
            }
        }
        let Catchup::Replay(newer) = hub.since(Some(3)) else {
            panic!("id 3 is just before the oldest kept");
        };
        assert_eq!(ids(&newer), vec![4, 5, 6, 7]);
    }

    #[test]
    fn sessions_held_and_released_and_the_sample_counts_them() {
        let hub = EventHub::new(1, 64);
        let mut counts = [0; WorkerState::ALL.len()];
        counts[WorkerState::Idle.index()] = 3;
        for w in 1..=3 {
            hub.observe(state("e", w, WorkerState::Idle), 0.0);
            hub.observe(
                Observation::Sessions {
                    endpoint: "e".into(),
                    worker: w,
                    held: 1,
                },
                1.0,
            );
        }
        hub.observe(
            Observation::Demand {
                endpoint: "e".into(),
                demand: 300.0,
                want_active: 3,
            },
            1.0,
        );
        let s = hub.sample("e", &counts, 2, 2.0);
        let EngineEvent::Sample(sample) = &s.event else {
            panic!("not a sample: {s:?}");
        };
        assert_eq!((sample.busy, sample.sessions, sample.waiting), (3, 3, 2));
        assert_eq!((sample.demand, sample.want_active), (300.0, 3));
        assert_eq!(sample.workers.get("IDLE"), Some(&3));
        assert_eq!(sample.cost_last_minute, 3.0);
        hub.observe(
            Observation::Sessions {
                endpoint: "e".into(),
                worker: 2,
                held: 0,
            },
            3.0,
        );
        let Catchup::Replay(last) = hub.since(Some(hub.last_id() - 1)) else {
            panic!("expected a replay");
        };
        assert!(
            matches!(
                &last[0].event,
                EngineEvent::Session {
                    change: "released",
                    worker: 2,
                    ..
                }
            ),
            "{last:?}"
        );
        let s = hub.sample("e", &counts, 0, 3.0);
        let EngineEvent::Sample(sample) = &s.event else {
            panic!("not a sample");
        };
        assert_eq!((sample.busy, sample.sessions), (2, 2));
        assert_eq!(sample.cost_last_minute, 6.0);
    }

    #[test]
    fn the_dispatcher_counts_show_until_stale() {
        let hub = EventHub::new(1, 64);
        let counts = [0; WorkerState::ALL.len()];
        let reported = DispatchCounts {
            backlog: 40,
            in_flight: 3,
            held: 3,
        };
        hub.dispatch_report("e", reported, 10.0);
        let sample = |now| match &hub.sample("e", &counts, 0, now).event {
            EngineEvent::Sample(s) => s.dispatch,
            other => panic!("not a sample: {other:?}"),
        };
        assert_eq!(sample(11.0), Some(reported));
        assert_eq!(sample(10.0 + DISPATCH_STALE_AFTER + 1.0), None);
    }

    /// Every event kind, serialised, carries no key, token or signature.
    #[test]
    fn no_event_kind_carries_a_secret() {
        const API_KEY: &str = "endpoint-api-key-0123456789abcdef";
        const MTOKEN: &str = "master-token-0123456789abcdef";
        let hub = EventHub::new(1, 64);
        let mut settings = EndpointSettings::from_policy(&EndpointPolicy::seed());
        settings.autoscaler_instance = "local".into();
        let observations = vec![
            Observation::Endpoint(EndpointView::new(1, "e", &settings)),
            state("e", 1, WorkerState::Idle),
            Observation::Published(EngineEvent::WorkerState {
                endpoint: "e".into(),
                worker: 1,
                from: WorkerState::Idle,
                to: WorkerState::Error,
                reason: Some("no report for 31 s".into()),
            }),
            Observation::Sessions {
                endpoint: "e".into(),
                worker: 1,
                held: 1,
            },
            Observation::Published(EngineEvent::Scale {
                endpoint: "e".into(),
                action: "create",
                worker: None,
                reason: "scale_from_zero",
                detail: "requests are waiting and no worker is active".into(),
                want_active: 1,
                demand: 100.0,
            }),
            Observation::Demand {
                endpoint: "e".into(),
                demand: 1.0,
                want_active: 1,
            },
            Observation::Published(EngineEvent::WorkerGone {
                endpoint: "e".into(),
                worker: 1,
            }),
            Observation::Published(EngineEvent::EndpointDeleted {
                endpoint: "e".into(),
            }),
        ];
        for o in observations {
            hub.observe(o, 1.0);
        }
        hub.dispatch_report(
            "e",
            DispatchCounts {
                backlog: 1,
                in_flight: 1,
                held: 1,
            },
            1.0,
        );
        hub.sample("e", &[1; WorkerState::ALL.len()], 1, 1.0);
        let Catchup::Replay(all) = hub.since(Some(0)) else {
            panic!("expected a replay");
        };
        let kinds: std::collections::BTreeSet<&str> = all.iter().map(|e| e.event.kind()).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            vec![
                "endpoint",
                "endpoint_deleted",
                "sample",
                "scale",
                "session",
                "worker_gone",
                "worker_state"
            ]
        );
        let Catchup::Reset { endpoints, .. } = hub.since(None) else {
            panic!("expected a reset");
        };
        let mut text = serde_json::to_string(&all).unwrap();
        text.push_str(&serde_json::to_string(&endpoints).unwrap());
        for word in [
            API_KEY,
            MTOKEN,
            "api_key",
            "mtoken",
            "signature",
            "account",
            "secret",
            "token",
            "key",
        ] {
            assert!(!text.contains(word), "{word:?} appears in {text}");
        }
        for e in &all {
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v["type"], e.event.kind(), "{v}");
            assert_eq!(v["id"], e.id, "{v}");
        }
    }
}
