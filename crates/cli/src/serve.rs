//! Command-line edge of the worker: `nullworker serve` and `nullworker release`.
//!
//! `serve` validates the configuration before binding anything (a bad value
//! prints one line naming it and exits 2, after a launch-failure report to
//! the engine when `CONTAINER_ID` and `REPORT_ADDR` are usable), then runs
//! the worker until SIGTERM or SIGINT. `release` POSTs the control server's
//! `/release` and prints the answer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use nullworker_worker::config::ServeArgs;
use nullworker_worker::reporter;
use nullworker_worker::run::{run, Listeners};

/// Exit code of a configuration error (like a usage error).
pub const EXIT_CONFIG: u8 = 2;

/// Options of `nullworker release`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Prints the control server's JSON answer, e.g. {\"released\": true, \"session_ids\": [...]}.\nExit 0 when it answered 200 (whether or not a session was open), 1 otherwise."
)]
pub struct ReleaseArgs {
    /// Port of the worker's control server on 127.0.0.1.
    #[arg(long, env = "NULL_CONTROL_PORT", default_value_t = nullworker_protocol::DEFAULT_NULL_CONTROL_PORT)]
    pub port: u16,

    /// Seconds to wait for the answer (closing runs the on-close callback, up to 10 s).
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    pub timeout: f64,
}

async fn launch_failed(args: &ServeArgs, reason: &str) {
    if let Some(target) = args.beacon_target() {
        if reporter::send_beacon(&target, reason).await {
            tracing::info!("launch failure reported to the engine");
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Runs the worker until SIGTERM/SIGINT.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match args.validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nullworker: error: invalid configuration: {err}");
            launch_failed(&args, &err.to_string()).await;
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            launch_failed(&args, &err.to_string()).await;
            return Ok(ExitCode::FAILURE);
        }
    };
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal_token.cancel();
    });
    run(config, listeners, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// Calls the local control server's `/release` and prints its JSON answer.
///
/// Exit 0 when the control server answered 200 (whether or not a session
/// was open), 1 otherwise.
pub async fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let url = format!(
        "http://127.0.0.1:{}{}",
        args.port,
        nullworker_protocol::paths::RELEASE
    );
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .with_context(|| {
            format!(
                "--timeout {}: expected a positive number of seconds",
                args.timeout
            )
        })?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let resp = client
        .post(&url)
        .send()
        .await
        .with_context(|| format!("no worker control server answered at {url}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    println!("{}", text.trim_end());
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("nullworker: release: {url} answered {status}");
        Ok(ExitCode::FAILURE)
    }
}
