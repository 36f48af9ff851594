//! The composition root: [`Engine::start`] opens the state directory,
//! starts the store thread, restores the endpoints into the registry, builds
//! the shared context, binds the listener and starts the HTTP server, the
//! scaler loop and the process-exit watcher; the [`EngineHandle`] stops it
//! all (every worker included). Every other module depends downward: the
//! HTTP surface and the scaler on the context, the context on the registry
//! and its effect drivers.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::context::{Core, CoreParts};
use crate::error::EngineError;
use crate::registry::{Event, Registry, RegistryConfig};
use crate::signer::UrlSigner;
use crate::state::StateDir;
use crate::store::Store;
use crate::supervisor::{self, ExitEvent, Launcher, ProcessRecord, Supervisor};

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

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    core: Arc<Core>,
    local_addr: SocketAddr,
    ui_addr: Option<SocketAddr>,
    account_key_generated: bool,
}

/// Builds the launcher of an engine, given where exits must be sent.
pub type LauncherFactory =
    Box<dyn FnOnce(&EngineConfig, String, mpsc::UnboundedSender<ExitEvent>) -> Arc<dyn Launcher>>;

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
        config: EngineConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<EngineHandle, EngineError> {
        let factory: LauncherFactory = Box::new(|config, report_url, exits| {
            Arc::new(Supervisor::new(
                config.state_dir.clone(),
                config.worker_command.clone(),
                report_url,
                config.stop_grace,
                exits,
                config.workers_outlive_engine,
            ))
        });
        Self::start_with(config, listener, factory).await
    }

    /// Like [`Engine::start_on`] with workers launched by the launcher
    /// `factory` builds (tests launch nothing, or fakes).
    pub async fn start_with(
        mut config: EngineConfig,
        listener: tokio::net::TcpListener,
        factory: LauncherFactory,
    ) -> Result<EngineHandle, EngineError> {
        config.validate()?;
        let local_addr = listener.local_addr()?;
        config.listen = local_addr;
        let ui_listener = match config.ui_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| EngineError::Listen { addr, source })?,
            ),
            None => None,
        };
        let ui_addr = match &ui_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        config.ui_listen = ui_addr;
        let clock = Clock::new();
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
        let db_fail = |e: crate::db::DbError| EngineError::Database {
            path: config.db_path(),
            reason: e.to_string(),
        };
        let endpoints = db.endpoints().map_err(db_fail)?;
        // Workers of a previous engine that still run are re-adopted if
        // their endpoint still exists and their history row is not ended;
        // what is left of the others is stopped.
        let survey = supervisor::survey(&config.state_dir).await;
        let mut adopt: Vec<(i64, ProcessRecord)> = Vec::new();
        let mut orphans = Vec::new();
        for record in survey.running {
            let owner = db
                .worker(record.worker_id)
                .map_err(db_fail)?
                .filter(|row| row.ended_at.is_none())
                .map(|row| row.endpoint_id)
                .filter(|ep| endpoints.iter().any(|e| e.id == *ep));
            match owner {
                Some(endpoint_id) => adopt.push((endpoint_id, record)),
                None => orphans.push(record),
            }
        }
        let stopped = survey.stopped + supervisor::stop_recorded(&config.state_dir, &orphans).await;
        if stopped > 0 {
            tracing::warn!(
                stopped,
                "stopped process groups left by a previous engine that no worker owns"
            );
        }
        let keep: Vec<i64> = adopt.iter().map(|(_, r)| r.worker_id).collect();
        let _ = db.end_all_workers(clock.now(), "engine restarted", &keep);
        let swept = crate::housekeeping::sweep_orphan_dirs(&config.state_dir, &db, &keep);
        if swept > 0 {
            tracing::info!(swept, "removed worker directories no history row refers to");
        }
        let last_worker_id = db.max_worker_id().map_err(db_fail)?;
        // The store thread ends once the last handle is dropped, after
        // committing what was queued.
        let (store, _store_thread) = Store::start(db);
        let report_host = if local_addr.ip().is_unspecified() {
            match local_addr {
                SocketAddr::V4(_) => format!("127.0.0.1:{}", local_addr.port()),
                SocketAddr::V6(_) => format!("[::1]:{}", local_addr.port()),
            }
        } else {
            local_addr.to_string()
        };
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let launcher = factory(&config, format!("http://{report_host}"), exits_tx);
        let pubkey_pem = signing_key.verifying_key().to_spki_pem();
        let signer = tokio::task::spawn_blocking(move || UrlSigner::new(signing_key))
            .await
            .map_err(|e| EngineError::Config(format!("signing key task failed: {e}")))?;
        let mut registry = Registry::new(
            RegistryConfig {
                stale_after: config.stale_after,
                scale_down_delay: config.scale_down_delay,
                strict: config.strict,
            },
            last_worker_id,
        );
        let t = clock.now();
        let mut kicks = Vec::new();
        for stored in endpoints {
            kicks.extend(registry.apply(Event::EndpointCreated(stored), t).effects);
        }
        for (endpoint_id, record) in adopt {
            match launcher.adopt(&record) {
                Ok(spawned) => {
                    let adopted = Event::Adopted {
                        endpoint_id,
                        worker_id: record.worker_id,
                        mtoken: record.mtoken.clone(),
                        spawned,
                    };
                    kicks.extend(registry.apply(adopted, t).effects);
                }
                Err(err) => {
                    tracing::warn!(worker = record.worker_id, %err, "cannot re-adopt a worker; stopping what is left of it");
                    supervisor::stop_recorded(&config.state_dir, std::slice::from_ref(&record))
                        .await;
                    kicks.push(crate::registry::Effect::Store(
                        crate::store::StoreOp::UpdateWorker {
                            id: record.worker_id,
                            state: "DESTROYING",
                            url: None,
                            reason: Some("engine restarted".into()),
                            ended_at: Some(t),
                        },
                    ));
                }
            }
        }
        let core = Core::new(CoreParts {
            config,
            clock,
            store,
            signer,
            pubkey_pem,
            account_key,
            registry,
            launcher,
        });
        core.run(kicks);
        // The state lock lives as long as the HTTP server task.
        let router = crate::api::router(core.clone()).merge(crate::ui::report_router(core.clone()));
        let shutdown = core.shutdown.clone();
        let limits = core.config.serve;
        let connections = core.tasks.clone();
        core.tasks.spawn(async move {
            let _lock = lock;
            crate::serve::serve(listener, router, limits, shutdown, connections).await;
        });
        if let Some(listener) = ui_listener {
            let router = crate::ui::router(core.clone(), core.config.ui_no_auth);
            let shutdown = core.shutdown.clone();
            core.tasks.spawn(async move {
                let serve = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.cancelled_owned());
                if let Err(err) = serve.await {
                    tracing::error!(%err, "dashboard server failed");
                }
            });
            core.tasks.spawn(crate::ui::sample_loop(core.clone()));
        }
        core.tasks.spawn(watch_exits(core.clone(), exits_rx));
        core.tasks.spawn(crate::scaler::run(core.clone()));
        core.tasks.spawn(crate::housekeeping::run(core.clone()));
        tracing::info!(addr = %local_addr, state_dir = %core.config.state_dir.display(), "engine listening");
        Ok(EngineHandle {
            core,
            local_addr,
            ui_addr,
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

    /// The dashboard's address, if it has one.
    pub fn ui_addr(&self) -> Option<SocketAddr> {
        self.ui_addr
    }

    /// The dashboard's URL (`http://<ui addr>/ui/`), if it has one.
    pub fn ui_url(&self) -> Option<String> {
        self.ui_addr.map(|a| format!("http://{a}/ui/"))
    }

    /// The account key (web API and CLI).
    pub fn account_key(&self) -> &str {
        &self.core.account_key
    }

    /// Whether this start generated the account key (print it once).
    pub fn account_key_generated(&self) -> bool {
        self.account_key_generated
    }

    /// The shared context (for in-process tests and benchmarks).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The live workers of the endpoint named `endpoint` (`None` if there is
    /// no such endpoint), with their control ports and process ids.
    pub fn workers(&self, endpoint: &str) -> Option<Vec<WorkerInfo>> {
        let id = self.core.registry().endpoint_id(endpoint)?;
        let rows = crate::api::all_worker_rows(&self.core, id)?;
        Some(
            rows.into_iter()
                .map(|r| WorkerInfo {
                    id: r.wire.worker.id,
                    state: r.state,
                    url: Some(r.wire.worker.url).filter(|u| !u.is_empty()),
                    control_port: r.wire.control_port,
                    consumer_port: r.consumer_port,
                    pid: r.pid,
                    consumer_pid: r.consumer_pid,
                    external: r.external,
                })
                .collect(),
        )
    }

    /// Resolves when the engine is asked to stop.
    pub async fn stopped(&self) {
        self.core.shutdown.cancelled().await;
    }

    /// Stops serving and exits, leaving the workers running for the next
    /// engine on the state directory to re-adopt (stops in progress finish;
    /// no new launch starts). With workers tied to the engine
    /// ([`EngineConfig::workers_outlive_engine`] unset) this is
    /// [`EngineHandle::shutdown`].
    pub async fn leave(self) {
        if !self.core.config.workers_outlive_engine {
            return self.shutdown().await;
        }
        self.core.shutdown.cancel();
        self.core.stop_spawner();
        let live = self.core.registry().worker_count();
        self.core.tasks.close();
        self.core.tasks.wait().await;
        self.core.store.flush().await;
        tracing::info!(
            workers = live,
            "engine stopped; its workers keep running and will be re-adopted by the next engine on this state directory"
        );
    }

    /// Stops serving, stops every worker it started, and waits for all of it
    /// (the last store writes included).
    pub async fn shutdown(self) {
        self.core.shutdown.cancel();
        self.core.stop_spawner();
        let stopping = self.core.apply(Event::StopAll);
        if let crate::registry::Reply::Endpoint(Some(count)) = stopping {
            if count > 0 {
                tracing::info!(count, "stopping every worker");
            }
        }
        self.core.tasks.close();
        self.core.tasks.wait().await;
        self.core.store.flush().await;
        tracing::info!("engine stopped");
    }
}

/// Applies process exits as they come.
async fn watch_exits(core: Arc<Core>, mut events: mpsc::UnboundedReceiver<ExitEvent>) {
    loop {
        let event = tokio::select! {
            ev = events.recv() => match ev { Some(ev) => ev, None => return },
            () = core.shutdown.cancelled() => return,
        };
        core.apply(Event::ProcessExited(event));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::testing::{call, engine, FakeLauncher};

    async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
        for _ in 0..1000 {
            if let Some(v) = probe() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 10 s of engine time");
    }

    #[tokio::test(start_paused = true)]
    async fn route_scales_from_zero_and_a_silent_worker_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, fake) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let id = crate::testing::seed_endpoint(&core, "e").await;
        let api_key = core.registry().stored(id).unwrap().api_key.clone();
        let route = json!({"endpoint": "e", "api_key": api_key, "cost": 100});
        let (status, waiting) = call(&core, "POST", "/route/", route.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(waiting["status"].as_str().is_some(), "{waiting}");
        let (wid, mtoken) = wait_for(|| fake.launches().first().cloned()).await;
        let url = format!("http://127.0.0.1:{}", 40_000 + wid);
        let report = json!({"id": wid, "mtoken": mtoken, "version": "1.1.0", "loadtime": 0.1,
                            "max_perf": 100.0, "url": url});
        let (status, body) = call(&core, "POST", "/worker_status/", report).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Its URL is signed on a blocking thread, in real time.
        crate::testing::wait_real("the worker routable", || {
            core.registry().is_routable(id, wid)
        })
        .await;
        let mut replay = route.clone();
        replay["request_idx"] = waiting["request_idx"].clone();
        let (status, ready) = call(&core, "POST", "/route/", replay).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ready["url"], json!(url), "{ready}");
        // No report for stale_after: the worker is ERROR, destroyed and
        // replaced while a request waits.
        tokio::time::advance(Duration::from_secs(40)).await;
        let (_, waiting) = call(&core, "POST", "/route/", route).await;
        assert!(waiting["status"].as_str().is_some(), "{waiting}");
        wait_for(|| (fake.launches().len() >= 2).then_some(())).await;
        let workers = handle.workers("e").unwrap();
        assert!(workers.iter().all(|w| w.id != wid), "{workers:?}");
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn housekeeping_prunes_ended_workers_and_rotates_big_logs() {
        use crate::store::StoreOp;
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path().join("state")).unwrap();
        // Only the passes of this test run.
        config.retention.interval = Duration::from_secs(3600);
        let fake = Arc::new(FakeLauncher::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = Engine::start_with(config, listener, Box::new(move |_, _, _| fake))
            .await
            .unwrap();
        let core = handle.core().clone();
        let (status, body) = call(
            &core,
            "POST",
            "/api/v0/endptjobs/",
            json!({"endpoint_name": "e"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ep = body["result"].as_i64().unwrap();
        let now = core.clock.now();
        for id in 100..=106 {
            core.store.write(StoreOp::InsertWorker {
                id,
                endpoint_id: ep,
                created_at: now,
            });
            if id < 106 {
                core.store.write(StoreOp::UpdateWorker {
                    id,
                    state: "DESTROYING",
                    url: None,
                    reason: None,
                    ended_at: Some(now),
                });
            }
            let wd = core.config.worker_dir(id);
            std::fs::create_dir_all(&wd).unwrap();
            std::fs::write(wd.join("worker.log"), vec![b'x'; 20 << 20]).unwrap();
        }
        let report = crate::housekeeping::pass(&core).await;
        // 50 ended kept per endpoint by default: all six stay; the logs over
        // 10 MiB are rotated.
        assert!(report.pruned.is_empty(), "{report:?}");
        for id in 100..=106 {
            let log = core.config.worker_dir(id).join("worker.log");
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "worker {id}");
            let copy = crate::housekeeping::rotated_path(&log, 1);
            assert_eq!(std::fs::metadata(&copy).unwrap().len(), 20 << 20);
        }
        // Ended more than 7 days ago: pruned, rows and directories.
        for id in 100..=103 {
            core.store.write(StoreOp::UpdateWorker {
                id,
                state: "DESTROYING",
                url: None,
                reason: None,
                ended_at: Some(now - 8.0 * 86_400.0),
            });
        }
        crate::housekeeping::pass(&core).await;
        for id in 100..=106 {
            assert_eq!(core.config.worker_dir(id).exists(), id > 103, "worker {id}");
        }
        let history = core
            .store
            .call(move |db| db.worker_history(ep, 100))
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<i64> = history.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![106, 105, 104]);
        handle.shutdown().await;
    }
}
