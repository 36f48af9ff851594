//! Workers started for the interop tests: ours (`nullworker serve`) and the
//! Python reference (`bench/reference/null_worker.py` on the `vastai` 1.9.1
//! framework), with the same environment, on ephemeral loopback ports, each
//! in its own scratch directory, killed when dropped.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::python::{repo_root, tail, Python};
use crate::common::process::{free_port, nullworker, ChildGuard};

/// How long a worker may take to listen (interpreter start-up included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Reference,
}

/// A running worker process.
pub struct RunningWorker {
    pub kind: Kind,
    /// Public URL (`http://127.0.0.1:<WORKER_PORT>`).
    pub url: String,
    /// Control server URL (`http://127.0.0.1:<NULL_CONTROL_PORT>`).
    pub control_url: String,
    log: PathBuf,
    guard: ChildGuard,
    _dir: TempDir,
}

/// Start parameters shared by both implementations.
pub struct WorkerSpec<'a> {
    pub container_id: i64,
    pub report_addr: &'a str,
    pub unsecured: bool,
    pub master_token: &'a str,
}

fn apply_env(cmd: &mut Command, spec: &WorkerSpec<'_>, public: u16, http: u16, control: u16) {
    cmd.env("CONTAINER_ID", spec.container_id.to_string())
        .env("REPORT_ADDR", spec.report_addr)
        .env("MASTER_TOKEN", spec.master_token)
        .env("WORKER_PORT", public.to_string())
        .env("WORKER_HTTP_PORT", http.to_string())
        .env(format!("VAST_TCP_PORT_{public}"), public.to_string())
        .env("PUBLIC_IPADDR", "127.0.0.1")
        .env("USE_SSL", "false")
        .env("UNSECURED", if spec.unsecured { "true" } else { "false" })
        .env("NULL_CONTROL_PORT", control.to_string());
}

impl RunningWorker {
    /// Starts `nullworker serve` (listening on loopback only).
    pub fn start_ours(spec: &WorkerSpec<'_>) -> Self {
        let mut cmd = nullworker();
        cmd.arg("serve").env("NULLWORKER_LISTEN_ADDR", "127.0.0.1");
        Self::start(Kind::Ours, cmd, spec)
    }

    /// Starts the Python reference worker with `python`.
    pub fn start_reference(python: &Python, spec: &WorkerSpec<'_>) -> Self {
        let mut cmd = python.command();
        cmd.arg(repo_root().join("bench/reference/null_worker.py"));
        for var in ["BACKEND_HEALTH_URL", "MODEL_HEALTH_ENDPOINT"] {
            cmd.env_remove(var);
        }
        Self::start(Kind::Reference, cmd, spec)
    }

    fn start(kind: Kind, mut cmd: Command, spec: &WorkerSpec<'_>) -> Self {
        let dir = tempfile::tempdir().expect("worker dir");
        let (public, http, control) = (free_port(), free_port(), free_port());
        apply_env(&mut cmd, spec, public, http, control);
        let log = dir.path().join("worker.log");
        let file = File::create(&log).expect("log file");
        cmd.current_dir(dir.path())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .env("RUST_LOG", "debug");
        let guard = ChildGuard::spawn(cmd);
        let mut worker = Self {
            kind,
            url: format!("http://127.0.0.1:{public}"),
            control_url: format!("http://127.0.0.1:{control}"),
            log,
            guard,
            _dir: dir,
        };
        worker.wait_listening();
        worker
    }

    /// The last lines of the worker's log.
    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 80)
    }

    /// Waits until the public listener answers HTTP (any status).
    fn wait_listening(&mut self) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answered = client
                .post(format!("{}/session/get", self.url))
                .json(&serde_json::json!({}))
                .send()
                .is_ok();
            if answered {
                return;
            }
            let exited = self
                .guard
                .child
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"));
            assert!(
                exited.is_none(),
                "{:?} worker exited ({}) before listening\n--- log ---\n{}",
                self.kind,
                exited.map(|s| s.to_string()).unwrap_or_default(),
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "{:?} worker did not listen on {} within {START_TIMEOUT:?}\n--- log ---\n{}",
                self.kind,
                self.url,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
