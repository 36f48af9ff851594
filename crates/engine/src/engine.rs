//! The running engine: the shared context ([`Core`]) every handler and loop
//! uses, [`Engine::start`] which opens the state directory, restores the
//! endpoints, binds the listener and starts the HTTP server, the scaler loop
//! and the process-exit watcher, and the [`EngineHandle`] that stops it all
//! (every worker included).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EngineConfig;
use crate::db::{Db, StoredEndpoint};
use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::policy::worker_state::ProcessPhase;
use crate::registry::{policy_of, Endpoint, Registry};
use crate::signer::{SignatureCache, UrlSigner};
use crate::state::StateDir;
use crate::supervisor::{reap_stale, ExitEvent, ProcKind, Supervisor};

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A request for an early scaler pass over one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kick {
    /// The endpoint.
    pub endpoint_id: i64,
    /// After a WAITING decision (else after an event).
    pub waiting: bool,
}

/// Shared context of the engine.
#[derive(Debug)]
pub struct Core {
    /// Configuration.
    pub config: EngineConfig,
    /// Database.
    pub db: Db,
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
    /// Process supervisor.
    pub supervisor: Supervisor,
    /// Endpoints whose scaler pass is wanted early (after a WAITING answer,
    /// an exit, a state change, an update).
    kicked: Mutex<HashSet<Kick>>,
    /// Wakes the scaler when `kicked` gains a kick.
    pub kick: Notify,
    /// Wakes held `/route/` calls when a worker may have become routable.
    pub worker_ready: Notify,
    /// Engine-wide `reqnum` counter.
    pub reqnum: AtomicU64,
    /// Signatures by URL (the signature covers only the URL).
    signatures: SignatureCache,
    /// Cancelled when the engine shuts down.
    pub shutdown: CancellationToken,
    /// Background work that must finish before the engine is gone.
    pub tasks: TaskTracker,
}

impl Core {
    /// Locks the registry.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for an early scaler pass over one endpoint after an event (a
    /// worker state change, a process exit, an update). The scaler runs at
    /// most one such pass per endpoint every
    /// [`KICK_INTERVAL`](crate::scaler::KICK_INTERVAL), however many kicks
    /// arrive.
    pub fn kick_endpoint(&self, endpoint_id: i64) {
        self.kick(Kick {
            endpoint_id,
            waiting: false,
        });
    }

    /// Asks for an early scaler pass after a WAITING decision, coalesced like
    /// [`kick_endpoint`](Self::kick_endpoint) but separately from it, so a
    /// request arriving just after an event still gets its worker created
    /// at once, and a flood of WAITING answers costs at most one pass per
    /// endpoint every `KICK_INTERVAL`.
    pub fn kick_waiting(&self, endpoint_id: i64) {
        self.kick(Kick {
            endpoint_id,
            waiting: true,
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

    /// A fresh live endpoint for a stored one.
    pub fn live_endpoint(&self, stored: StoredEndpoint, now: f64) -> Endpoint {
        let policy = policy_of(
            &stored.settings,
            self.config.stale_after,
            self.config.scale_down_delay,
        );
        // Request indexes start above anything a previous run handed out.
        let first_idx = (now * 1000.0) as u64;
        Endpoint::new(stored, policy, first_idx, now)
    }
}

/// One live worker as [`EngineHandle::workers`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// Worker id (`CONTAINER_ID`).
    pub id: i64,
    /// Derived state.
    pub state: crate::policy::WorkerState,
    /// Public URL, once known.
    pub url: Option<String>,
    /// `NULL_CONTROL_PORT`: the worker's loopback `POST /release` server.
    pub control_port: Option<u16>,
    /// `NULL_CONSUMER_PORT`: the port given to its consumer, if it has one.
    pub consumer_port: Option<u16>,
    /// Worker process id, while it runs.
    pub pid: Option<i32>,
    /// Consumer process id, while it runs.
    pub consumer_pid: Option<i32>,
    /// Registered by its reports, not launched by the engine.
    pub external: bool,
}

impl WorkerInfo {
    fn of(w: &crate::registry::Worker) -> Self {
        let (pid, consumer_pid) = w.pids();
        Self {
            id: w.id,
            state: w.state,
            url: w.url.as_deref().map(str::to_owned),
            control_port: w.control_port(),
            consumer_port: w.consumer_port(),
            pid,
            consumer_pid,
            external: w.external,
        }
    }
}

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    core: Arc<Core>,
    local_addr: SocketAddr,
    account_key_generated: bool,
}

impl Engine {
    /// Opens the state, binds `config.listen` and starts serving.
    pub async fn start(config: EngineConfig) -> Result<EngineHandle, EngineError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| EngineError::Listen {
                addr: config.listen,
                source,
            })?;
        Self::start_on(config, listener).await
    }

    /// Like [`Engine::start`] on an already bound listener.
    pub async fn start_on(
        mut config: EngineConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<EngineHandle, EngineError> {
        config.validate()?;
        let local_addr = listener.local_addr()?;
        config.listen = local_addr;
        let cfg = config.clone();
        let StateDir {
            db,
            signing_key,
            account_key,
            account_key_generated,
            lock,
        } = tokio::task::spawn_blocking(move || StateDir::open(&cfg))
            .await
            .map_err(|e| EngineError::Config(format!("state directory task failed: {e}")))??;
        let killed = reap_stale(&config.state_dir).await;
        if killed > 0 {
            tracing::warn!(killed, "stopped worker processes left by a previous engine");
        }
        let t = now();
        let _ = db.end_all_workers(t, "engine restarted");
        let report_host = if local_addr.ip().is_unspecified() {
            match local_addr {
                SocketAddr::V4(_) => format!("127.0.0.1:{}", local_addr.port()),
                SocketAddr::V6(_) => format!("[::1]:{}", local_addr.port()),
            }
        } else {
            local_addr.to_string()
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::new(
            config.state_dir.clone(),
            config.worker_command.clone(),
            format!("http://{report_host}"),
            config.stop_grace,
            events_tx,
        );
        let pubkey_pem = signing_key.verifying_key().to_spki_pem();
        let endpoints = db.endpoints().map_err(|e| EngineError::Database {
            path: config.db_path(),
            reason: e.to_string(),
        })?;
        let signer = tokio::task::spawn_blocking(move || UrlSigner::new(signing_key))
            .await
            .map_err(|e| EngineError::Config(format!("signing key task failed: {e}")))?;
        let core = Arc::new(Core {
            db,
            signer,
            pubkey_pem,
            account_key,
            registry: Mutex::new(Registry::default()),
            metrics: Metrics::default(),
            supervisor,
            kicked: Mutex::new(HashSet::new()),
            kick: Notify::new(),
            worker_ready: Notify::new(),
            reqnum: AtomicU64::new(1),
            signatures: SignatureCache::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        {
            let mut reg = core.registry();
            for stored in endpoints {
                let live = core.live_endpoint(stored, t);
                reg.insert(live);
            }
        }
        // The state lock lives as long as the HTTP server task.
        let router = crate::api::router(core.clone());
        let shutdown = core.shutdown.clone();
        core.tasks.spawn(async move {
            let _lock = lock;
            let serve =
                axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::error!(%err, "HTTP server failed");
            }
        });
        core.tasks.spawn(watch_exits(core.clone(), events_rx));
        core.tasks.spawn(crate::scaler::run(core.clone()));
        tracing::info!(addr = %local_addr, state_dir = %core.config.state_dir.display(), "engine listening");
        Ok(EngineHandle {
            core,
            local_addr,
            account_key_generated,
        })
    }
}

impl EngineHandle {
    /// The address the engine serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The account key (web API and CLI).
    pub fn account_key(&self) -> &str {
        &self.core.account_key
    }

    /// Whether this start generated the account key (print it once).
    pub fn account_key_generated(&self) -> bool {
        self.account_key_generated
    }

    /// The live workers of the endpoint named `endpoint` (`None` if there is
    /// no such endpoint), with their control ports and process ids.
    pub fn workers(&self, endpoint: &str) -> Option<Vec<WorkerInfo>> {
        let mut reg = self.core.registry();
        let ep = reg.by_name_mut(endpoint)?;
        Some(ep.workers.values().map(WorkerInfo::of).collect())
    }

    /// Resolves when the engine is asked to stop.
    pub async fn stopped(&self) {
        self.core.shutdown.cancelled().await;
    }

    /// Stops serving, stops every worker it started, and waits for all of it.
    pub async fn shutdown(self) {
        self.core.shutdown.cancel();
        stop_all_workers(&self.core).await;
        self.core.tasks.close();
        self.core.tasks.wait().await;
        tracing::info!("engine stopped");
    }
}

async fn stop_all_workers(core: &Arc<Core>) {
    let spawned: Vec<_> = {
        let mut reg = core.registry();
        let mut list = Vec::new();
        for ep in reg.endpoints.values_mut() {
            let ids: Vec<i64> = ep.workers.keys().copied().collect();
            for id in ids {
                ep.unroute(id);
                if let Some(w) = ep.workers.get_mut(&id) {
                    w.process = ProcessPhase::Destroying;
                    if let Some(s) = w.spawned.take() {
                        list.push((id, s));
                    }
                }
            }
        }
        list
    };
    let t = now();
    let stops = spawned.iter().map(|(id, s)| core.supervisor.stop(*id, s));
    futures_util::future::join_all(stops).await;
    for (id, _) in &spawned {
        let _ = core
            .db
            .update_worker(*id, "DESTROYING", None, Some("engine stopped"), Some(t));
    }
    if !spawned.is_empty() {
        tracing::info!(count = spawned.len(), "stopped every worker");
    }
}

/// Applies process exits: a worker whose process exits unexpectedly is
/// unrouted at once and becomes ERROR (the scaler replaces it).
async fn watch_exits(core: Arc<Core>, mut events: mpsc::UnboundedReceiver<ExitEvent>) {
    loop {
        let event = tokio::select! {
            ev = events.recv() => match ev { Some(ev) => ev, None => return },
            () = core.shutdown.cancelled() => return,
        };
        let t = now();
        let mut reg = core.registry();
        let Some((ep, id)) = reg.worker_mut(event.worker_id) else {
            continue;
        };
        let Some(w) = ep.workers.get_mut(&id) else {
            continue;
        };
        if w.spawned.as_ref().map(|s| s.generation) != Some(event.generation) {
            continue;
        }
        match event.kind {
            ProcKind::Consumer => {
                tracing::warn!(worker = id, status = %event.status, "consumer process exited");
            }
            ProcKind::Worker => match w.process {
                ProcessPhase::Running => {
                    let ep_id = ep.stored.id;
                    let name = ep.stored.name.clone();
                    let dropped = worker_exited(ep, id);
                    tracing::warn!(endpoint = %name, worker = id, status = %event.status, dropped_requests = dropped, "worker process exited unexpectedly");
                    core.metrics.worker_exit("unexpected");
                    if let Some(tr) = ep.refresh(id, t) {
                        drop(reg);
                        crate::scaler::record_transition(&core, &name, &tr);
                    } else {
                        drop(reg);
                    }
                    core.kick_endpoint(ep_id);
                }
                // Seen as exited when its spawn completed.
                ProcessPhase::Exited { expected: false } => {}
                _ => core.metrics.worker_exit("expected"),
            },
        }
    }
}

/// Marks a running worker's process as exited unexpectedly: it leaves the
/// routing table and its assignments are forgotten (their clients replay).
/// Returns how many assignments were dropped. The caller refreshes it.
pub fn worker_exited(ep: &mut Endpoint, id: i64) -> usize {
    if let Some(w) = ep.workers.get_mut(&id) {
        w.process = ProcessPhase::Exited { expected: false };
    }
    ep.unroute(id);
    let dropped = ep.requests.forget_worker(id);
    ep.apply_request_changes();
    dropped
}
