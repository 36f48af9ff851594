//! The engine's shared context ([`Core`]): the registry behind its one
//! mutex, and the drivers of its effects: the store thread (SQLite), the
//! spawner thread (process launches), the signer (RSA on blocking threads),
//! the scaler's kick set and the wake-up of held `/route/` calls.
//!
//! [`Core::apply`] is the one way into the registry: it takes the lock,
//! applies the event with the injected clock's `now`, releases the lock and
//! only then carries out the effects. Depends on the registry, store,
//! supervisor and signer; the HTTP surface, the scaler and the composition
//! root (`engine`) depend on it.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::endpoint::WorkerTemplate;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::registry::{Count, Effect, Event, Registry, Reply};
use crate::signer::{SignatureCache, UrlSigner};
use crate::store::Store;
use crate::supervisor::Launcher;

/// A request for an early scaler pass over one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kick {
    /// The endpoint.
    pub endpoint_id: i64,
    /// After a WAITING decision (else after an event).
    pub waiting: bool,
}

/// A launch for the spawner thread.
#[derive(Debug)]
pub struct SpawnJob {
    /// Endpoint id.
    pub endpoint_id: i64,
    /// Worker id.
    pub worker_id: i64,
    /// Its `MASTER_TOKEN`.
    pub mtoken: String,
    /// How to launch it.
    pub template: WorkerTemplate,
}

/// Shared context of the engine.
#[derive(Debug)]
pub struct Core {
    /// Configuration.
    pub config: EngineConfig,
    /// The clock every decision reads.
    pub clock: Clock,
    /// The database, behind its own thread.
    pub store: Store,
    /// Signs worker URLs.
    pub signer: UrlSigner,
    /// `GET /pubkey/` body.
    pub pubkey_pem: String,
    /// Account key.
    pub account_key: String,
    /// Live state.
    registry: Mutex<Registry>,
    /// Counters.
    pub metrics: Metrics,
    /// Starts and stops worker processes.
    pub launcher: Arc<dyn Launcher>,
    /// Launches waiting for the spawner thread.
    spawns: Mutex<Option<std_mpsc::Sender<SpawnJob>>>,
    /// Endpoints whose scaler pass is wanted early.
    kicked: Mutex<HashSet<Kick>>,
    /// Wakes the scaler when `kicked` gains a kick.
    pub kick: Notify,
    /// Wakes held `/route/` calls when a worker may have become routable.
    pub worker_ready: Notify,
    /// Engine-wide `reqnum` counter.
    pub reqnum: AtomicU64,
    /// Signatures by URL (the signature covers only the URL).
    signatures: SignatureCache,
    /// The event stream (dashboard, `GET /ui/events`).
    pub events: EventHub,
    /// Cancelled when the engine shuts down.
    pub shutdown: CancellationToken,
    /// Background work that must finish before the engine is gone.
    pub tasks: TaskTracker,
}

/// The parts [`Core::new`] assembles.
#[derive(Debug)]
pub struct CoreParts {
    /// Configuration.
    pub config: EngineConfig,
    /// Clock.
    pub clock: Clock,
    /// Store.
    pub store: Store,
    /// Signer.
    pub signer: UrlSigner,
    /// `GET /pubkey/` body.
    pub pubkey_pem: String,
    /// Account key.
    pub account_key: String,
    /// The registry, endpoints restored.
    pub registry: Registry,
    /// Launcher.
    pub launcher: Arc<dyn Launcher>,
}

impl Core {
    /// Assembles the context and starts the spawner thread (which runs
    /// until [`Core::stop_spawner`]).
    pub fn new(parts: CoreParts) -> Arc<Self> {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        let core = Arc::new(Self {
            config: parts.config,
            clock: parts.clock,
            store: parts.store,
            signer: parts.signer,
            pubkey_pem: parts.pubkey_pem,
            account_key: parts.account_key,
            registry: Mutex::new(parts.registry),
            metrics: Metrics::default(),
            launcher: parts.launcher,
            spawns: Mutex::new(Some(tx)),
            kicked: Mutex::new(HashSet::new()),
            kick: Notify::new(),
            worker_ready: Notify::new(),
            reqnum: AtomicU64::new(1),
            signatures: SignatureCache::default(),
            events: EventHub::starting_at(parts.clock.now()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let weak = Arc::downgrade(&core);
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("nullworker-spawner".into())
            .spawn(move || {
                // Processes are spawned here, never under the registry lock
                // nor on the scaler task; the thread lives as long as the
                // engine, as the processes' parent-death signal needs when
                // workers are tied to the engine.
                let _runtime = runtime.enter();
                while let Ok(job) = rx.recv() {
                    let Some(core) = weak.upgrade() else { return };
                    let result = core
                        .launcher
                        .spawn(job.worker_id, &job.mtoken, &job.template)
                        .map_err(|e| e.to_string());
                    core.apply(Event::SpawnDone {
                        endpoint_id: job.endpoint_id,
                        worker_id: job.worker_id,
                        result,
                    });
                }
            })
            .expect("cannot start the spawner thread");
        core
    }

    /// Stops taking launches; the spawner thread ends after the current one.
    pub fn stop_spawner(&self) {
        self.spawns.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Locks the registry for a read-only query. Keep the guard short:
    /// `/route/` waits for it.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an event at the clock's `now`, then carries out its effects
    /// after releasing the lock, and returns its answer.
    pub fn apply(self: &Arc<Self>, event: Event<'_>) -> Reply {
        let outcome = {
            let now = self.clock.now();
            self.registry().apply(event, now)
        };
        self.run(outcome.effects);
        outcome.reply
    }

    /// Carries out effects (never under the registry lock).
    pub fn run(self: &Arc<Self>, effects: Vec<Effect>) {
        let mut wake = false;
        for effect in effects {
            match effect {
                Effect::Spawn {
                    endpoint_id,
                    worker_id,
                    mtoken,
                    template,
                } => {
                    let job = SpawnJob {
                        endpoint_id,
                        worker_id,
                        mtoken,
                        template,
                    };
                    let sent = self
                        .spawns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .map(|tx| tx.send(job).is_ok());
                    if sent != Some(true) {
                        tracing::debug!(worker = worker_id, "launch dropped: the engine stops");
                    }
                }
                Effect::Stop {
                    worker_id,
                    spawned,
                    destroy,
                } => {
                    let core = self.clone();
                    self.tasks.spawn(async move {
                        if let Some(spawned) = &spawned {
                            core.launcher.stop(worker_id, spawned).await;
                        }
                        core.apply(Event::StopDone { worker_id, destroy });
                    });
                }
                Effect::Sign {
                    endpoint_id,
                    worker_id,
                    url,
                } => {
                    // Signed off the runtime threads; the worker is
                    // routable only once signed, long before its first report.
                    let core = self.clone();
                    self.tasks.spawn(async move {
                        if let Some(signature) = core.signature(&url).await {
                            core.apply(Event::Signed {
                                endpoint_id,
                                worker_id,
                                url,
                                signature,
                            });
                        }
                    });
                }
                Effect::Store(op) => self.store.write(op),
                Effect::WakeRouters => wake = true,
                Effect::Kick {
                    endpoint_id,
                    waiting,
                } => self.kick(Kick {
                    endpoint_id,
                    waiting,
                }),
                Effect::Count(count) => match count {
                    Count::ScaleAction { action, reason } => {
                        self.metrics.scale_action(action, reason)
                    }
                    Count::WorkerExit(kind) => self.metrics.worker_exit(kind),
                    Count::WaitToReady(seconds) => self.metrics.wait_to_ready(seconds),
                    Count::Report => self.metrics.report(),
                },
                Effect::Observe(observation) => {
                    self.events.observe(observation, self.clock.now());
                }
            }
        }
        if wake {
            self.worker_ready.notify_waiters();
        }
    }

    /// Asks for an early scaler pass over one endpoint after an event.
    pub fn kick_endpoint(&self, endpoint_id: i64) {
        self.kick(Kick {
            endpoint_id,
            waiting: false,
        });
    }

    fn kick(&self, kick: Kick) {
        let added = self
            .kicked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kick);
        if added {
            self.kick.notify_one();
        }
    }

    /// Takes the kicks received since the last call.
    pub fn take_kicked(&self) -> HashSet<Kick> {
        std::mem::take(&mut *self.kicked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The signature of `url`, computed once per URL on a blocking thread
    /// (an RSA signature takes milliseconds: never under a lock, never on
    /// the async runtime's threads). `None` only if the engine is shutting
    /// down.
    pub async fn signature(self: &Arc<Self>, url: &str) -> Option<Arc<str>> {
        if let Some(sig) = self.signatures.get(url) {
            return Some(sig);
        }
        let core = self.clone();
        let owned = url.to_owned();
        let sig: Arc<str> = tokio::task::spawn_blocking(move || core.signer.sign_url(&owned))
            .await
            .ok()?
            .into();
        self.signatures.insert(url, sig.clone());
        Some(sig)
    }
}
