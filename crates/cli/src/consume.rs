//! `nullworker consume`: the consumer loop beside `nullworker serve` on a
//! worker. Parses the flags, opens the queue, serves the consumer's
//! `GET /health` (what `BACKEND_HEALTH_URL` points at), turns SIGTERM/SIGINT
//! into the loop's stop requests and runs
//! [`nullworker_queue::consume::run`], which owns the loop itself.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::get;
use nullworker_queue::consume::{self, ConsumeConfig, Health, StopSignals};
use nullworker_queue::{OpenMode, QueueUrl};

use crate::queue::{open_queue, parse_queue_url, parse_seconds};

/// Set by the engine for each worker's consumer: its health port.
pub const ENV_CONSUMER_PORT: &str = "NULL_CONSUMER_PORT";
/// The worker's control port (`nullworker serve` reads it too).
pub const ENV_CONTROL_PORT: &str = "NULL_CONTROL_PORT";

/// Options of `nullworker consume`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Loop: wait until this worker holds a session (GET /session?wait=30 on \
the control URL) → claim one job, waiting up to --claim-timeout (none: release the session and \
wait again) → run CMD with the payload on stdin and NULLWORKER_JOB_ID, NULLWORKER_JOB_ATTEMPT, \
NULLWORKER_QUEUE (password hidden) and NULLWORKER_SESSION_ID in its environment, heart-beating \
the job every third of the visibility timeout → exit 0 acks, anything else fails the job (retried \
after --retry-delay, dead-lettered after --max-attempts deliveries) → POST /release → repeat.\n\n\
CMD runs in its own process group; its stdout and stderr are this process's.\n\n\
SIGTERM or SIGINT: stop claiming; a running job has --grace seconds to finish (then it is acked \
or failed as usual); past the grace its process group gets SIGTERM, then SIGKILL 5 s later, and \
the job is handed back to the queue unfinished (no job is lost). A second signal skips the \
grace. The session is released on the way out.\n\n\
--health-listen serves GET /health: 200 `ok` while the loop runs and the queue is reachable, \
503 otherwise. Default: 127.0.0.1:$NULL_CONSUMER_PORT when that is set (the local engine sets \
it), else no health server.\n\n\
Exit 0 after a stop (or the job of --once); 1 on a runtime error (queue unreachable at start, \
CMD cannot be started); 2 on a usage error."
)]
pub struct ConsumeArgs {
    /// The queue to take jobs from (see `nullworker queue --help`).
    #[arg(long, value_name = "URL", value_parser = parse_queue_url)]
    pub queue: QueueUrl,

    /// Seconds a claimed job stays invisible to others without a heartbeat
    /// (overrides the URL's visibility_timeout) [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub visibility_timeout: Option<Duration>,

    /// Deliveries before a failing job is dead-lettered (overrides the
    /// URL's max_attempts) [default: 5].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_attempts: Option<u32>,

    /// Seconds before a failed job is visible again (overrides the URL's
    /// retry_delay) [default: 1].
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub retry_delay: Option<Duration>,

    /// Seconds a held session waits for a job before it is released
    /// (the work it was opened for went to another worker).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub claim_timeout: Duration,

    /// Seconds a running job may still take after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub grace: Duration,

    /// Address of the health endpoint, e.g. 127.0.0.1:18998
    /// [default: 127.0.0.1:$NULL_CONSUMER_PORT if set, else none].
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// The worker's control server [default: http://127.0.0.1:$NULL_CONTROL_PORT, or port 18999].
    #[arg(long, value_name = "URL")]
    pub control_url: Option<String>,

    /// Handle one job, then exit.
    #[arg(long)]
    pub once: bool,

    /// The command that does one job, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A port from environment variable `name`, if set.
fn env_port(name: &str) -> Result<Option<u16>, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(raw) => match raw.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(Some(port)),
            _ => Err(format!(
                "{name}={raw:?}: expected a port number from 1 to 65535"
            )),
        },
        Err(std::env::VarError::NotUnicode(raw)) => Err(format!(
            "{name}={raw:?}: expected a port number from 1 to 65535"
        )),
    }
}

/// The loop's settings from the flags and the environment.
pub(crate) fn settings(
    args: ConsumeArgs,
) -> Result<(QueueUrl, ConsumeConfig, Option<SocketAddr>), String> {
    let mut url = args.queue;
    if let Some(vt) = args.visibility_timeout {
        url.options.visibility_timeout = vt;
    }
    if let Some(n) = args.max_attempts {
        url.options.max_attempts = n;
    }
    if let Some(rd) = args.retry_delay {
        url.options.retry_delay = rd;
    }
    url.options.validate().map_err(|e| e.to_string())?;
    let control_url = match args.control_url {
        Some(control) => {
            let rest = control
                .strip_prefix("http://")
                .or_else(|| control.strip_prefix("https://"));
            if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                return Err(format!(
                    "--control-url {control:?}: expected http://HOST:PORT"
                ));
            }
            control
        }
        None => {
            let port = env_port(ENV_CONTROL_PORT)?
                .unwrap_or(nullworker_protocol::DEFAULT_NULL_CONTROL_PORT);
            format!("http://127.0.0.1:{port}")
        }
    };
    let health = match args.health_listen {
        Some(addr) => Some(addr),
        None => env_port(ENV_CONSUMER_PORT)?.map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
    };
    let mut config = ConsumeConfig::new(args.command, control_url, &url);
    config.claim_timeout = args.claim_timeout;
    config.grace = args.grace;
    config.once = args.once;
    config.validate().map_err(|e| e.to_string())?;
    Ok((url, config, health))
}

/// First SIGTERM/SIGINT → `drain`; the second → `now` as well.
fn watch_signals(stop: StopSignals) -> anyhow::Result<()> {
    let StopSignals { drain, now } = stop;
    crate::signals::on_first_and_second(
        move || {
            tracing::info!(
                "stop requested: no more jobs; a running job may finish within the grace"
            );
            drain.cancel();
        },
        move || {
            tracing::warn!("second stop request: skipping the grace");
            now.cancel();
        },
    )
}

/// Serves `GET /health` on `listener` until the process ends.
fn serve_health(listener: tokio::net::TcpListener, health: Arc<Health>) {
    let app = axum::Router::new().route(
        "/health",
        get(move || {
            let health = Arc::clone(&health);
            async move {
                match health.problem() {
                    None => (StatusCode::OK, "ok".to_owned()),
                    Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem.to_owned()),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!("the health endpoint stopped: {err}");
        }
    });
}

/// Runs `nullworker consume`.
pub async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let (url, config, health_addr) = match settings(args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("nullworker: error: {message}");
            return Ok(ExitCode::from(crate::exit::USAGE));
        }
    };
    let stop = StopSignals::default();
    watch_signals(stop.clone())?;
    let queue = open_queue(&url, OpenMode::Existing).await?;
    let health = Arc::new(Health::default());
    if let Some(addr) = health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--health-listen {addr}: cannot listen"))?;
        let bound = listener.local_addr().context("health endpoint address")?;
        tracing::info!("health endpoint on http://{bound}/health");
        serve_health(listener, Arc::clone(&health));
    }
    consume::run(&*queue, &config, &health, &stop).await?;
    Ok(ExitCode::SUCCESS)
}
