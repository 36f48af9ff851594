//! The engine's validated configuration ([`EngineConfig`]), built once from
//! the command line (`nullworker engine` in the CLI crate) or by an embedding program
//! (`nullworker demo`, benchmarks, tests). It owns defaults and validation,
//! not parsing of the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::EngineError;

/// Default listen address: the Python SDK's `instance="local"`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Grace between SIGTERM and SIGKILL when stopping a worker (§12.2).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest time `/route/` holds a WAITING answer (the SDK's timeout is 10 s).
pub const DEFAULT_ROUTE_HOLD: Duration = Duration::from_secs(2);
/// File name of the state database in the state directory.
pub const DB_FILE: &str = "engine.sqlite3";
/// Autoscaler tick (§12.5).
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// How a worker (or consumer) process is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A program and its arguments, executed directly.
    Argv(Vec<String>),
    /// A shell command line, run as `/bin/sh -c '<line>'` (so `a; b` and
    /// pipelines work) in a process group of its own, which is signalled
    /// as a whole on stop.
    Shell(String),
}

impl Command {
    /// `<this executable> serve`, the default worker command.
    pub fn this_binary_serve() -> Result<Self, EngineError> {
        let exe = std::env::current_exe().map_err(|e| {
            EngineError::Config(format!(
                "cannot find this executable for the default worker command: {e}"
            ))
        })?;
        Ok(Self::Argv(vec![
            exe.to_string_lossy().into_owned(),
            "serve".to_owned(),
        ]))
    }

    /// A human-readable form for logs and the API.
    pub fn display(&self) -> String {
        match self {
            Self::Argv(argv) => argv.join(" "),
            Self::Shell(line) => line.clone(),
        }
    }
}

/// Everything the engine needs to run, validated.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Address of the single HTTP server (route service + web API + metrics).
    pub listen: SocketAddr,
    /// Directory holding the database, the signing key and worker directories.
    pub state_dir: PathBuf,
    /// Account key; `None` ⇒ the stored one, or a fresh one printed once.
    pub account_key: Option<String>,
    /// Worker command used by workergroups that do not set their own.
    pub worker_command: Command,
    /// SIGTERM → SIGKILL grace when stopping a worker.
    pub stop_grace: Duration,
    /// Autoscaler period.
    pub tick: Duration,
    /// Reject reports from unknown worker ids instead of registering them
    /// as external workers (the default; `false` is
    /// `--allow-external-workers`).
    pub strict: bool,
    /// Seconds without a report after which a worker counts as broken.
    pub stale_after: f64,
    /// Seconds an idle worker must stay idle before it is stopped.
    pub scale_down_delay: f64,
    /// How long `/route/` may hold a WAITING answer while a worker may
    /// become ready (0 answers at once).
    pub route_hold: Duration,
    /// Workers keep running when the engine exits or dies, and the next
    /// engine on the state directory re-adopts them (`nullworker engine`);
    /// else they are stopped with it and get a parent-death signal
    /// (embedding programs: demos, tests, benchmarks).
    pub workers_outlive_engine: bool,
    /// What the state directory keeps (ended workers, log sizes).
    pub retention: crate::housekeeping::Retention,
    /// Limits of the HTTP server (header and request timeouts, connection
    /// cap, body size).
    pub serve: crate::serve::ServeLimits,
    /// Address of the dashboard (`/ui/` and its event stream), on a port
    /// of its own; `None`: no dashboard.
    pub ui_listen: Option<SocketAddr>,
    /// Serve the dashboard without the account key (loopback addresses
    /// only).
    pub ui_no_auth: bool,
}

impl EngineConfig {
    /// A configuration with defaults for everything but the state directory.
    /// The worker command defaults to `<this executable> serve`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self, EngineError> {
        Ok(Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            state_dir: state_dir.into(),
            account_key: None,
            worker_command: Command::this_binary_serve()?,
            stop_grace: DEFAULT_STOP_GRACE,
            tick: DEFAULT_TICK,
            strict: true,
            stale_after: 30.0,
            scale_down_delay: 5.0,
            route_hold: DEFAULT_ROUTE_HOLD,
            workers_outlive_engine: false,
            retention: crate::housekeeping::Retention::default(),
            serve: crate::serve::ServeLimits::default(),
            ui_listen: None,
            ui_no_auth: false,
        })
    }

    /// Checks every value; the error names the bad one and what was expected.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(EngineError::Config(
                "state directory is empty: expected a path".into(),
            ));
        }
        if let Some(key) = &self.account_key {
            validate_key(key)?;
        }
        match &self.worker_command {
            Command::Argv(argv) if argv.is_empty() || argv[0].is_empty() => {
                return Err(EngineError::Config(
                    "worker command is empty: expected a program and its arguments".into(),
                ))
            }
            Command::Shell(line) if line.trim().is_empty() => {
                return Err(EngineError::Config(
                    "worker command is empty: expected a shell command line".into(),
                ))
            }
            _ => {}
        }
        if self.route_hold > Duration::from_secs(8) {
            return Err(EngineError::Config(format!(
                "route hold {:?}: expected at most 8 s (the SDK gives up on /route/ after 10 s)",
                self.route_hold
            )));
        }
        if self.ui_no_auth && !self.ui_listen.is_some_and(|a| a.ip().is_loopback()) {
            return Err(EngineError::Config(format!(
                "--ui-no-auth with the dashboard on {}: expected a loopback address (127.0.0.1 or ::1); elsewhere the dashboard needs the account key",
                self.ui_listen
                    .map_or_else(|| "no address".to_owned(), |a| a.to_string())
            )));
        }
        if self.tick.is_zero() {
            return Err(EngineError::Config(
                "tick is 0: expected a positive duration".into(),
            ));
        }
        if !(self.stale_after.is_finite() && self.stale_after > 0.0) {
            return Err(EngineError::Config(format!(
                "stale_after {}: expected a positive number of seconds",
                self.stale_after
            )));
        }
        if !(self.scale_down_delay.is_finite() && self.scale_down_delay >= 0.0) {
            return Err(EngineError::Config(format!(
                "scale_down_delay {}: expected a non-negative number of seconds",
                self.scale_down_delay
            )));
        }
        let r = &self.retention;
        if r.interval.is_zero() || r.log_max_bytes == 0 || r.keep_ended == 0 {
            return Err(EngineError::Config(format!(
                "retention: keep {} ended workers, logs of {} bytes, every {:?}: expected each above 0",
                r.keep_ended, r.log_max_bytes, r.interval
            )));
        }
        let serve = &self.serve;
        if serve.header_timeout.is_zero() || serve.request_timeout.is_zero() {
            return Err(EngineError::Config(format!(
                "header timeout {:?}, request timeout {:?}: expected positive durations",
                serve.header_timeout, serve.request_timeout
            )));
        }
        if serve.max_connections == Some(0) || serve.max_body == 0 {
            return Err(EngineError::Config(format!(
                "max connections {:?}, max body {}: expected at least 1",
                serve.max_connections, serve.max_body
            )));
        }
        Ok(())
    }

    /// Path of the state database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join(DB_FILE)
    }

    /// Path of the signing key.
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("signing_key.pem")
    }

    /// Directory of one worker (working directory, logs, pidfile).
    pub fn worker_dir(&self, worker_id: i64) -> PathBuf {
        worker_dir(&self.state_dir, worker_id)
    }
}

/// Directory of one worker under `state_dir`.
pub fn worker_dir(state_dir: &Path, worker_id: i64) -> PathBuf {
    state_dir.join("workers").join(worker_id.to_string())
}

/// The per-user default state directory: `$XDG_STATE_HOME/nullworker`, else
/// `~/.local/state/nullworker`, else `./.nullworker-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("nullworker");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/nullworker");
    }
    PathBuf::from(".nullworker-state")
}

/// An account or endpoint key: 8–256 printable ASCII characters without spaces.
pub fn validate_key(key: &str) -> Result<(), EngineError> {
    if key.len() < 8 || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EngineError::Config(format!(
            "account key of {} characters: expected 8 to 256 printable ASCII characters without spaces",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let config = EngineConfig::new("/tmp/x").unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn bad_values_are_named() {
        let mut config = EngineConfig::new("/tmp/x").unwrap();
        config.account_key = Some("short".into());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("account key"));
        let mut config = EngineConfig::new("/tmp/x").unwrap();
        config.worker_command = Command::Shell("  ".into());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("worker command"));
        let mut config = EngineConfig::new("/tmp/x").unwrap();
        config.ui_listen = Some("0.0.0.0:8081".parse().unwrap());
        config.ui_no_auth = true;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--ui-no-auth") && err.contains("0.0.0.0:8081"),
            "{err}"
        );
        config.ui_listen = Some("127.0.0.1:0".parse().unwrap());
        config.validate().unwrap();
        config.stale_after = -1.0;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stale_after"));
    }
}
