//! Command-line edge of the engine: `nullworker engine` runs the engine
//! until SIGTERM/SIGINT, and `nullworker engine key` prints the account key
//! stored in the state directory. Parses, validates (every flag named in
//! its error) and prints; the engine itself lives in
//! [`nullworker_engine::engine`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use nullworker_engine::config::{default_state_dir, Command, EngineConfig};
use nullworker_engine::engine::Engine;
use nullworker_engine::error::EngineError;

use crate::exit;

const AFTER_HELP: &str = "\
The account key is generated at the first start on a state directory and printed once;
`nullworker engine key` prints it again (same --state-dir).

Workers and consumers are started with the engine's environment plus the worker variables,
so RUST_LOG and NULLWORKER_LOG_FORMAT (--log-format) apply to them too; their output goes
to <state dir>/workers/<id>/worker.log and consumer.log.

EXIT CODES:
  0    stopped by SIGTERM or SIGINT
  1    could not start or keep running: address in use, state directory locked by
       another engine or unreadable (one line says what)
  2    invalid flag values (one line names the flag and the value)";

/// What `nullworker engine` does besides running the engine.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EngineCommand {
    /// Print the account key stored in the state directory (the one
    /// generated and printed at the first start), for `VAST_API_KEY`.
    Key,
}

/// `--max-connections`: a whole number of connections, at least 1.
fn parse_max_connections(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{raw:?}: expected a whole number of connections, at least 1"
        )),
    }
}

/// Options of `nullworker engine`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct EngineArgs {
    /// `key`: print the stored account key instead of running the engine.
    #[command(subcommand)]
    pub command: Option<EngineCommand>,
    /// Address of the HTTP server (route service, web API and metrics on one port).
    #[arg(long, env = "NULLWORKER_LISTEN", default_value = nullworker_engine::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// State directory (database, signing key, worker logs).
    /// Default: $XDG_STATE_HOME/nullworker or ~/.local/state/nullworker.
    #[arg(long, env = "NULLWORKER_STATE_DIR", global = true, value_name = "DIR")]
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
    #[arg(
        long,
        default_value_t = 5.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub stop_grace: f64,
    /// Seconds without a report after which a worker is broken (ERROR).
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub stale_after: f64,
    /// Seconds an idle worker stays up before it may be stopped.
    #[arg(
        long,
        default_value_t = 5.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub scale_down_delay: f64,
    /// Longest time (seconds) `/route/` holds a WAITING answer while a
    /// worker may become ready; 0 answers at once.
    #[arg(
        long,
        default_value_t = 2.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
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
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub header_timeout: f64,
    /// Stop every worker when the engine exits on SIGTERM, and tie workers
    /// to the engine's life (they get SIGTERM if it dies). Default: workers
    /// outlive the engine on SIGTERM, SIGKILL or a crash, and the next
    /// engine on the state directory re-adopts them (SIGINT, Ctrl-C, always
    /// stops them).
    #[arg(long)]
    pub stop_workers_on_exit: bool,
    /// Ended workers whose history row and directory are kept, per endpoint.
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_KEEP_ENDED, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..), allow_negative_numbers = true)]
    pub keep_ended_workers: u32,
    /// Days an ended worker's history row and directory are kept at most.
    #[arg(
        long,
        default_value_t = 7.0,
        value_name = "DAYS",
        allow_negative_numbers = true
    )]
    pub keep_ended_days: f64,
    /// Size (bytes) above which a worker's or consumer's log is rotated.
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_LOG_MAX_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..), allow_negative_numbers = true)]
    pub log_max_bytes: u64,
    /// Rotated files kept per log (`worker.log.1`, ...; 0: only truncate).
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_LOG_FILES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..), allow_negative_numbers = true)]
    pub log_files: u32,
    /// Open HTTP connections at most; at the cap the connection idle the
    /// longest is closed for a new one. Default: half the file-descriptor
    /// limit, at most 8192.
    #[arg(long, value_name = "N", value_parser = parse_max_connections, allow_negative_numbers = true)]
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

/// Largest `--stale-after` and `--scale-down-delay`: the endpoint policy's
/// limit on durations (30 days).
const MAX_POLICY_SECONDS: f64 = nullworker_engine::policy::MAX_DURATION;

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
        if !(self.stale_after.is_finite()
            && self.stale_after > 0.0
            && self.stale_after <= MAX_POLICY_SECONDS)
        {
            return Err(EngineError::Config(format!(
                "--stale-after {}: expected seconds above 0, at most {MAX_POLICY_SECONDS} (30 days)",
                self.stale_after
            )));
        }
        config.stale_after = self.stale_after;
        if !(self.scale_down_delay.is_finite()
            && self.scale_down_delay >= 0.0
            && self.scale_down_delay <= MAX_POLICY_SECONDS)
        {
            return Err(EngineError::Config(format!(
                "--scale-down-delay {}: expected seconds from 0 to {MAX_POLICY_SECONDS} (30 days)",
                self.scale_down_delay
            )));
        }
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

/// Why the engine could not start, in one line; a listener that cannot be
/// bound is named by its flag.
fn start_error(err: EngineError, config: &EngineConfig) -> anyhow::Error {
    match err {
        EngineError::Listen { addr, source } => {
            let flag = if Some(addr) == config.ui_listen && addr != config.listen {
                "--ui-listen"
            } else {
                "--listen"
            };
            let reason = match source.kind() {
                std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
                _ => source.to_string(),
            };
            anyhow::anyhow!("{flag} {addr}: cannot listen: {reason}")
        }
        other => other.into(),
    }
}

/// Prints the account key stored in the state directory.
fn print_key(state_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = state_dir.unwrap_or_else(default_state_dir);
    match nullworker_engine::state::stored_account_key(&dir)? {
        Some(key) => {
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "nullworker engine key: no account key is stored in {}: no engine has started \
                 there yet (--state-dir), or it runs with --account-key / NULLWORKER_ACCOUNT_KEY, \
                 which is never stored",
                dir.display()
            );
            Ok(ExitCode::from(exit::FAILURE))
        }
    }
}

/// Runs the engine until a signal: on SIGTERM it exits leaving its workers
/// running for the next engine to re-adopt (unless
/// `--stop-workers-on-exit`); on SIGINT (Ctrl-C) it stops every worker.
/// `nullworker engine key` prints the stored account key instead.
pub async fn run_engine(args: EngineArgs) -> anyhow::Result<ExitCode> {
    if let Some(EngineCommand::Key) = args.command {
        return print_key(args.state_dir);
    }
    let config = match args.config() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            return Ok(ExitCode::from(exit::USAGE));
        }
    };
    let handle = match Engine::start(config.clone()).await {
        Ok(handle) => handle,
        Err(err) => return Err(start_error(err, &config)),
    };
    if handle.account_key_generated() {
        println!(
            "nullworker engine: generated account key {} (stored in the state directory; \
             `nullworker engine key` prints it again)",
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
