//! Command-line edge of the worker: `nullworker serve` and `nullworker release`.
//!
//! `serve`'s flags are built here, with clap's builder API, from the worker
//! library's settings table ([`SETTINGS`]), which defines each setting once
//! (flag, variable, help); the library itself has no argument parser.
//! `serve` validates the configuration before binding anything (every bad
//! value is printed, one line each, and it exits 2, after a launch-failure
//! report to the engine when `CONTAINER_ID` and `REPORT_ADDR` are usable),
//! then runs the worker until SIGTERM or SIGINT. `release` POSTs the
//! control server's `/release` and prints the answer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Arg, ArgAction, ArgMatches};
use tokio_util::sync::CancellationToken;

pub use nullworker_worker::config::ServeArgs;
use nullworker_worker::config::{Setting, SETTINGS};
use nullworker_worker::reporter;
use nullworker_worker::run::{run, Listeners};

use crate::exit;

/// Options of `nullworker serve`: the worker library's [`ServeArgs`], with
/// a command line built from its settings table.
#[derive(Debug, Clone, Default)]
pub struct ServeCli(pub ServeArgs);

/// The clap argument of one setting: `--flag VALUE`, its variable, its help.
/// Values are taken as raw text, negative numbers included, and checked by
/// [`ServeArgs::validate`] so that a bad one is named with its variable.
fn setting_arg(setting: &Setting) -> Arg {
    let help = setting.help.strip_suffix('.').unwrap_or(setting.help);
    let mut arg = Arg::new(setting.id)
        .long(setting.flag)
        .value_name(setting.value_name)
        .help(help)
        .action(ArgAction::Set)
        .allow_hyphen_values(true);
    if let Some(env) = setting.env {
        arg = arg.env(env).hide_env_values(setting.secret);
    }
    arg
}

impl clap::FromArgMatches for ServeCli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Self::default();
        cli.update_from_arg_matches(matches)?;
        Ok(cli)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in SETTINGS {
            if let Some(value) = matches.get_one::<String>(setting.id) {
                self.0.set(setting.id, value.clone());
            }
        }
        Ok(())
    }
}

impl clap::Args for ServeCli {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SETTINGS
            .iter()
            .fold(cmd, |cmd, setting| cmd.arg(setting_arg(setting)))
            .after_help(SERVE_AFTER_HELP)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

const SERVE_AFTER_HELP: &str = "Every option can also be set through the environment variable \
named in its help; the protocol's variables keep the reference names, the settings of our own \
start with NULLWORKER_.\n\n\
Exit codes: 0 after SIGTERM or SIGINT; 2 when the configuration is invalid (every bad value is \
printed, one line each); 1 when a listener cannot be bound (e.g. its port is in use).";

/// Options of `nullworker release`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Prints the control server's JSON answer, e.g. {\"released\": true, \"session_ids\": [...]}.\nExit 0 when it answered 200 (whether or not a session was open), 1 otherwise, 2 on a usage error."
)]
pub struct ReleaseArgs {
    /// Port of the worker's control server on 127.0.0.1 (1 to 65535).
    #[arg(long, env = "NULL_CONTROL_PORT", default_value_t = nullworker_protocol::DEFAULT_NULL_CONTROL_PORT,
          value_parser = clap::value_parser!(u16).range(1..), allow_negative_numbers = true)]
    pub port: u16,

    /// Seconds to wait for the answer, above 0 (closing runs the on-close
    /// callback, up to 10 s).
    #[arg(
        long,
        default_value_t = 15.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
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
pub async fn serve(ServeCli(args): ServeCli) -> anyhow::Result<ExitCode> {
    let config = match args.validate() {
        Ok(config) => config,
        Err(errors) => {
            for message in errors.messages() {
                eprintln!("nullworker: error: invalid configuration: {message}");
            }
            let reason = errors.messages().collect::<Vec<_>>().join("; ");
            launch_failed(&args, &reason).await;
            return Ok(ExitCode::from(exit::USAGE));
        }
    };
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            launch_failed(&args, &err.to_string()).await;
            return Ok(ExitCode::from(exit::FAILURE));
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

/// `release --timeout`: a positive number of seconds.
pub(crate) fn release_timeout(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| format!("--timeout {secs}: expected a number of seconds above 0"))
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
    let timeout = match release_timeout(args.timeout) {
        Ok(timeout) => timeout,
        Err(message) => {
            eprintln!("nullworker: error: {message}");
            return Ok(ExitCode::from(exit::USAGE));
        }
    };
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
