//! The running engine: the shared context ([`Core`]) every handler and loop
//! uses, [`Engine::start`] which opens the state directory, restores the
//! endpoints, binds the listener and starts the HTTP server, the scaler loop
//! and the process-exit watcher, and the [`EngineHandle`] that stops it all
//! (every worker included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nullworker_protocol::signing::SigningKey;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EngineConfig;
use crate::db::{Db, StoredEndpoint};
use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::policy::worker_state::ProcessPhase;
use crate::registry::{policy_of, Endpoint, Registry};
use crate::state::StateDir;
use crate::supervisor::{reap_stale, ExitEvent, ProcKind, Supervisor};

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Shared context of the engine.
#[derive(Debug)]
pub struct Core {
    /// Configuration.
    pub config: EngineConfig,
    /// Database.
    pub db: Db,
    /// Signing key.
    pub signing_key: SigningKey,
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
    /// Wakes the scaler early (after a WAITING answer, an exit, an update).
    pub kick: Notify,
    /// Wakes held `/route/` calls when a worker may have become routable.
    pub worker_ready: Notify,
    /// Engine-wide `reqnum` counter.
    pub reqnum: AtomicU64,
    /// Signatures by URL (the signature covers only the URL).
    signatures: Mutex<HashMap<String, Arc<str>>>,
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

    /// The signature of `url`, computed once.
    pub fn signature(&self, url: &str) -> Arc<str> {
        if let Some(sig) = self
            .signatures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
        {
            return sig.clone();
        }
        let sig: Arc<str> = self.signing_key.sign_url(url).into();
        self.signatures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_owned(), sig.clone());
        sig
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
        let core = Arc::new(Core {
            db,
            signing_key,
            pubkey_pem,
            account_key,
            registry: Mutex::new(Registry::default()),
            metrics: Metrics::default(),
            supervisor,
            kick: Notify::new(),
            worker_ready: Notify::new(),
            reqnum: AtomicU64::new(1),
            signatures: Mutex::new(HashMap::new()),
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
            ProcKind::Worker => {
                if w.process == ProcessPhase::Running {
                    w.process = ProcessPhase::Exited { expected: false };
                    ep.unroute(id);
                    let dropped = ep.requests.forget_worker(id);
                    ep.apply_request_changes();
                    tracing::warn!(worker = id, status = %event.status, dropped_requests = dropped, "worker process exited unexpectedly");
                    core.metrics.worker_exit("unexpected");
                    if let Some(tr) = ep.refresh(id, t) {
                        let _ = core.db.update_worker(
                            id,
                            tr.to.as_str(),
                            None,
                            tr.reason.as_deref(),
                            None,
                        );
                    }
                    drop(reg);
                    core.kick.notify_one();
                } else {
                    core.metrics.worker_exit("expected");
                }
            }
        }
    }
}
