//! Command-line edge of the engine: `nullworker engine` runs the engine
//! until SIGTERM/SIGINT. Parses and prints; the engine itself lives in
//! [`nullworker_engine::engine`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use nullworker_engine::config::{default_state_dir, Command, EngineConfig};
use nullworker_engine::engine::Engine;
use nullworker_engine::error::EngineError;

/// Options of `nullworker engine`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Address of the HTTP server (route service, web API and metrics on one port).
    #[arg(long, env = "NULLWORKER_LISTEN", default_value = nullworker_engine::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// State directory (database, signing key, worker logs).
    /// Default: $XDG_STATE_HOME/nullworker or ~/.local/state/nullworker.
    #[arg(long, env = "NULLWORKER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Account key for the web API. Default: the stored one, or a new one
    /// generated and printed once at first start.
    #[arg(long, env = "NULLWORKER_ACCOUNT_KEY", hide_env_values = true)]
    pub account_key: Option<String>,
    /// Default worker command (a shell command line) for endpoints that do
    /// not set one. Default: this executable with `serve`.
    #[arg(long, env = "NULLWORKER_WORKER_COMMAND")]
    pub worker_command: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping a worker.
    #[arg(long, default_value_t = 5.0)]
    pub stop_grace: f64,
    /// Seconds without a report after which a worker is broken (ERROR).
    #[arg(long, default_value_t = 30.0)]
    pub stale_after: f64,
    /// Seconds an idle worker stays up before it may be stopped.
    #[arg(long, default_value_t = 5.0)]
    pub scale_down_delay: f64,
    /// Longest time (seconds) `/route/` holds a WAITING answer while a
    /// worker may become ready; 0 answers at once.
    #[arg(long, default_value_t = 2.0)]
    pub route_hold: f64,
    /// Take reports from workers the engine did not launch: a worker
    /// reporting with an endpoint's api_key as MASTER_TOKEN registers as an
    /// external worker of that endpoint, and clients are routed to the URL
    /// it reports. Off by default.
    #[arg(long, env = "NULLWORKER_ALLOW_EXTERNAL_WORKERS")]
    pub allow_external_workers: bool,
    /// Refuse reports from workers the engine did not launch: the default
    /// (kept for compatibility).
    #[arg(long, hide = true, conflicts_with = "allow_external_workers")]
    pub strict: bool,
    /// Seconds a client has to send a request's headers, from when its
    /// connection opens or from its previous answer (an idle keep-alive
    /// connection is closed after it).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Stop every worker when the engine exits on SIGTERM, and tie workers
    /// to the engine's life (they get SIGTERM if it dies). Default: workers
    /// outlive the engine on SIGTERM, SIGKILL or a crash, and the next
    /// engine on the state directory re-adopts them (SIGINT, Ctrl-C, always
    /// stops them).
    #[arg(long)]
    pub stop_workers_on_exit: bool,
    /// Ended workers whose history row and directory are kept, per endpoint.
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_KEEP_ENDED)]
    pub keep_ended_workers: u32,
    /// Days an ended worker's history row and directory are kept at most.
    #[arg(long, default_value_t = 7.0)]
    pub keep_ended_days: f64,
    /// Size (bytes) above which a worker's or consumer's log is rotated.
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_LOG_MAX_BYTES)]
    pub log_max_bytes: u64,
    /// Rotated files kept per log (`worker.log.1`, ...; 0: only truncate).
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_LOG_FILES)]
    pub log_files: u32,
    /// Open HTTP connections at most; at the cap the connection idle the
    /// longest is closed for a new one. Default: half the file-descriptor
    /// limit, at most 8192.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Address of the dashboard (`/ui/`), or `off`. Default: the --listen
    /// address with its port + 1 (127.0.0.1:8081), or port 0 (any free
    /// port) when --listen has port 0.
    #[arg(long, env = "NULLWORKER_UI_LISTEN", value_name = "ADDR|off")]
    pub ui_listen: Option<String>,
    /// Serve the dashboard without the account key (only on a loopback
    /// --ui-listen address).
    #[arg(long, env = "NULLWORKER_UI_NO_AUTH")]
    pub ui_no_auth: bool,
}

/// The dashboard's address: `--ui-listen` (`off`: none), else `listen`
/// with its port + 1 (port 0 stays 0).
pub fn ui_address(
    listen: SocketAddr,
    ui_listen: Option<&str>,
) -> Result<Option<SocketAddr>, EngineError> {
    match ui_listen.map(str::trim) {
        Some("off") => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            EngineError::Config(format!(
                "--ui-listen {raw:?}: expected an address such as 127.0.0.1:8081, or off"
            ))
        }),
        None => {
            let port = match listen.port() {
                0 => 0,
                p => p.checked_add(1).ok_or_else(|| {
                    EngineError::Config(format!(
                        "--listen {listen}: no port above it for the dashboard; set --ui-listen"
                    ))
                })?,
            };
            Ok(Some(SocketAddr::new(listen.ip(), port)))
        }
    }
}

impl EngineArgs {
    /// The validated configuration.
    pub fn config(&self) -> Result<EngineConfig, EngineError> {
        let mut config =
            EngineConfig::new(self.state_dir.clone().unwrap_or_else(default_state_dir))?;
        config.listen = self.listen;
        config.account_key = self.account_key.clone();
        if let Some(cmd) = &self.worker_command {
            config.worker_command = Command::Shell(cmd.clone());
        }
        if !(self.stop_grace.is_finite() && self.stop_grace >= 0.0 && self.stop_grace <= 3600.0) {
            return Err(EngineError::Config(format!(
                "--stop-grace {}: expected seconds from 0 to 3600",
                self.stop_grace
            )));
        }
        config.stop_grace = Duration::from_secs_f64(self.stop_grace);
        if !(self.route_hold.is_finite() && self.route_hold >= 0.0 && self.route_hold <= 8.0) {
            return Err(EngineError::Config(format!(
                "--route-hold {}: expected seconds from 0 to 8",
                self.route_hold
            )));
        }
        config.route_hold = Duration::from_secs_f64(self.route_hold);
        config.stale_after = self.stale_after;
        config.scale_down_delay = self.scale_down_delay;
        config.strict = !self.allow_external_workers;
        if !(self.header_timeout.is_finite()
            && self.header_timeout > 0.0
            && self.header_timeout <= 3600.0)
        {
            return Err(EngineError::Config(format!(
                "--header-timeout {}: expected seconds above 0, at most 3600",
                self.header_timeout
            )));
        }
        config.serve.header_timeout = Duration::from_secs_f64(self.header_timeout);
        config.serve.max_connections = self.max_connections;
        config.workers_outlive_engine = !self.stop_workers_on_exit;
        if !(self.keep_ended_days.is_finite()
            && self.keep_ended_days > 0.0
            && self.keep_ended_days <= 36_500.0)
        {
            return Err(EngineError::Config(format!(
                "--keep-ended-days {}: expected days above 0, at most 36500",
                self.keep_ended_days
            )));
        }
        config.retention.keep_ended = self.keep_ended_workers;
        config.retention.max_age = Duration::from_secs_f64(self.keep_ended_days * 86_400.0);
        config.retention.log_max_bytes = self.log_max_bytes;
        config.retention.log_files = self.log_files;
        config.ui_listen = ui_address(self.listen, self.ui_listen.as_deref())?;
        config.ui_no_auth = self.ui_no_auth;
        config.validate()?;
        Ok(config)
    }
}

/// Runs the engine until a signal: on SIGTERM it exits leaving its workers
/// running for the next engine to re-adopt (unless
/// `--stop-workers-on-exit`); on SIGINT (Ctrl-C) it stops every worker.
pub async fn run_engine(args: EngineArgs) -> anyhow::Result<ExitCode> {
    let config = match args.config() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("nullworker engine: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let handle = Engine::start(config).await?;
    if handle.account_key_generated() {
        println!(
            "nullworker engine: generated account key {} (stored in the state directory; it will not be printed again)",
            handle.account_key()
        );
    }
    println!("nullworker engine: listening on {}", handle.url());
    if let Some(url) = handle.ui_url() {
        println!("nullworker engine: dashboard on {url}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let stop_workers = tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM received; stopping");
            args.stop_workers_on_exit
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received; stopping the engine and its workers");
            true
        }
        () = handle.stopped() => true,
    };
    if stop_workers {
        handle.shutdown().await;
    } else {
        handle.leave().await;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn config(args: &[&str]) -> EngineConfig {
        let dir = ["x", "--state-dir", "/tmp/nullworker-cli-test"];
        let argv = dir.iter().chain(args);
        Cli::try_parse_from(argv).unwrap().engine.config().unwrap()
    }

    #[test]
    fn strict_is_the_default_and_external_workers_are_opt_in() {
        assert!(config(&[]).strict);
        assert!(config(&["--strict"]).strict);
        assert!(!config(&["--allow-external-workers"]).strict);
        let both = Cli::try_parse_from(["x", "--strict", "--allow-external-workers"]);
        assert!(both.is_err());
    }

    #[test]
    fn the_dashboard_listens_one_port_above_unless_told() {
        assert_eq!(
            config(&[]).ui_listen,
            Some("127.0.0.1:8081".parse().unwrap())
        );
        let c = config(&["--listen", "127.0.0.1:0"]);
        assert_eq!(c.ui_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config(&["--ui-listen", "off"]).ui_listen, None);
        let c = config(&["--ui-listen", "127.0.0.1:0", "--ui-no-auth"]);
        assert!(c.ui_no_auth);
        let bad = Cli::try_parse_from(["x", "--ui-listen", "0.0.0.0:9", "--ui-no-auth"])
            .unwrap()
            .engine
            .config()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("--ui-no-auth"), "{bad}");
        let bad = Cli::try_parse_from(["x", "--ui-listen", "nowhere"])
            .unwrap()
            .engine
            .config()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("\"nowhere\""), "{bad}");
    }
}
