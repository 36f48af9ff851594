//! The worker's lifecycle (PROTOCOL.md §8.3): bind the three listeners, start
//! every task (servers, key fetch, health loop, reporters), then on shutdown
//! stop taking sessions, close the open ones (callbacks fire), send a last
//! report and wait for the tasks to finish.
//!
//! One [`CancellationToken`] (cancelled by the caller on SIGTERM/SIGINT)
//! stops every loop; one `TaskTracker` tells when they have all ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::{App, CloseReason};
use crate::busy_poll::BusyPoll;
use crate::clock::Clock;
use crate::config::{setting, Setting, WorkerConfig};
use crate::http::serve::ServeContext;
use crate::memory::ConnGauge;
use crate::{health, http, reporter};

/// Budget for closing sessions at shutdown (callbacks included).
const SHUTDOWN_CLOSE_BUDGET: Duration = Duration::from_secs(3);
/// Budget for the last report (every `REPORT_ADDR` entry included).
const SHUTDOWN_REPORT_BUDGET: Duration = Duration::from_secs(3);
/// Budget for background tasks to end after the last report.
const SHUTDOWN_TASKS_BUDGET: Duration = Duration::from_secs(2);

/// The worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound. One line naming the listener, its
    /// setting, the address and why (`address already in use` when taken:
    /// the engine looks for those words in a launch-failure report).
    #[error("cannot listen on {addr} for the {what}, {setting}: {}", bind_reason(.error))]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The setting that chose its port (`WORKER_PORT (--worker-port)`).
        setting: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error (part of the message, so not a separate source).
        error: std::io::Error,
    },
}

/// Why a bind failed, in words: `address already in use` for a taken port
/// (without the OS error number), else the OS error.
fn bind_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        _ => error.to_string(),
    }
}

/// The three bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// `WORKER_PORT`.
    pub public: TcpListener,
    /// `WORKER_HTTP_PORT`.
    pub http_only: TcpListener,
    /// `127.0.0.1:NULL_CONTROL_PORT`.
    pub control: TcpListener,
}

async fn bind(
    what: &'static str,
    setting: &Setting,
    addr: SocketAddr,
) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| RunError::Bind {
            what,
            setting: setting.label(),
            addr,
            error,
        })
}

impl Listeners {
    /// Binds the listeners the configuration names (control first: it must
    /// be up before the worker can be ready).
    pub async fn bind(config: &WorkerConfig) -> Result<Self, RunError> {
        let control = bind(
            "control server",
            &setting::NULL_CONTROL_PORT,
            SocketAddr::from(([127, 0, 0, 1], config.control_port)),
        )
        .await?;
        let public = bind(
            "public listener",
            &setting::WORKER_PORT,
            SocketAddr::new(config.listen_addr, config.worker_port),
        )
        .await?;
        let http_only = bind(
            "HTTP-only listener",
            &setting::WORKER_HTTP_PORT,
            SocketAddr::new(config.listen_addr, config.http_port),
        )
        .await?;
        Ok(Self {
            public,
            http_only,
            control,
        })
    }
}

/// Runs a worker on bound listeners until `shutdown` is cancelled, then shuts
/// down gracefully. Returns the shared state for inspection.
pub async fn run(
    config: WorkerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Arc<App> {
    let clock = Clock::system();
    run_with_clock(config, listeners, shutdown, clock).await
}

/// [`run`] with an explicit clock.
pub async fn run_with_clock(
    config: WorkerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
    clock: Clock,
) -> Arc<App> {
    let app = App::new(config, clock, shutdown.clone());
    tracing::info!(
        url = %app.config.worker_url,
        public = %listeners.public.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        http_only = %listeners.http_only.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        control = %listeners.control.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = app.config.tls.is_some(),
        unsecured = app.config.unsecured,
        max_sessions = ?app.config.max_sessions,
        "worker starting"
    );
    // Listeners stop on their own token, after sessions are closed, so that
    // a /session/end in flight during shutdown still gets its answer.
    let servers = CancellationToken::new();
    let tracker = app.tracker.clone();
    let busy_poll = BusyPoll::new(app.config.busy_poll);
    tracker.spawn(Arc::clone(&busy_poll).run(servers.clone()));
    let gauge = Arc::new(ConnGauge::new());
    tracker.spawn({
        let gauge = Arc::clone(&gauge);
        let stop = servers.clone();
        async move { gauge.run(stop).await }
    });
    let ctx = ServeContext {
        shutdown: servers.clone(),
        tracker: tracker.clone(),
        busy_poll,
        gauge,
    };
    // The public and HTTP-only listeners share one cap; the loopback control
    // server has its own, so a flood cannot keep the consumer from /release.
    let public_limit = Arc::new(Semaphore::new(http::serve::connection_cap(
        app.config.max_connections,
    )));
    tracker.spawn(http::serve::serve(
        listeners.control,
        http::control_router(Arc::clone(&app)),
        None,
        Arc::new(Semaphore::new(http::serve::CONTROL_MAX_CONNECTIONS)),
        ctx.clone(),
    ));
    tracker.spawn(http::serve::serve(
        listeners.public,
        http::public_router(Arc::clone(&app)),
        app.config.tls.clone(),
        Arc::clone(&public_limit),
        ctx.clone(),
    ));
    tracker.spawn(http::serve::serve(
        listeners.http_only,
        http::http_only_router(Arc::clone(&app)),
        None,
        public_limit,
        ctx,
    ));
    tracker.spawn(reporter::status_loop(Arc::clone(&app)));
    tracker.spawn(reporter::deletes_loop(Arc::clone(&app)));
    tracker.spawn(reporter::fetch_pubkey(Arc::clone(&app)));
    tracker.spawn(health::health_loop(Arc::clone(&app)));
    tracker.spawn(Arc::clone(&app).expire_sessions());

    shutdown.cancelled().await;
    tracing::info!(open_sessions = app.sessions.len(), "shutting down");
    app.sessions.stop_accepting();
    let closing = app.close_all(CloseReason::Shutdown, SHUTDOWN_CLOSE_BUDGET);
    if tokio::time::timeout(SHUTDOWN_CLOSE_BUDGET + Duration::from_millis(500), closing)
        .await
        .is_err()
    {
        tracing::warn!("closing sessions took too long; continuing shutdown");
    }
    servers.cancel();
    if tokio::time::timeout(SHUTDOWN_REPORT_BUDGET, reporter::final_report(&app))
        .await
        .is_err()
    {
        tracing::warn!("the engine did not take the last report in time");
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_TASKS_BUDGET, tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!("some connections were still open at exit");
    }
    tracing::info!("worker stopped");
    app
}
