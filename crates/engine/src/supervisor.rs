//! Worker processes: spawning `nullworker serve` (or the workergroup's
//! command) with the §12.2 environment on free loopback ports, an optional
//! consumer process beside it with the same environment (plus a free port of
//! its own, `NULL_CONSUMER_PORT`, for its health endpoint), logs captured per
//! process under the worker's directory, exit watching, and stopping
//! (SIGTERM to the process group, SIGKILL after a grace).
//!
//! A shell command line runs as `/bin/sh -c '<line>'` (not `exec`'d, so a
//! compound line like `a; b` runs whole). Each process leads its own process
//! group, and stopping signals the whole group (SIGTERM, then SIGKILL after
//! the grace, then SIGKILL to anything left in the group), so the shell, its
//! children and what they started all stop. A pidfile per worker lets the
//! next engine start kill anything a crashed engine left running, including
//! group members that outlived their shell. What to spawn or stop is decided elsewhere
//! (`scaler`); this module only carries it out and reports exits.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use crate::config::{worker_dir, Command};
use crate::endpoint::WorkerTemplate;

/// Which process of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcKind {
    /// The worker (`nullworker serve`).
    Worker,
    /// The consumer started beside it.
    Consumer,
}

impl ProcKind {
    /// Log file name of this process kind.
    pub fn log_name(self) -> &'static str {
        match self {
            ProcKind::Worker => "worker.log",
            ProcKind::Consumer => "consumer.log",
        }
    }
}

/// A process exited.
#[derive(Debug, Clone)]
pub struct ExitEvent {
    /// Worker id.
    pub worker_id: i64,
    /// Spawn generation (distinguishes a restarted worker's processes).
    pub generation: u64,
    /// Worker or consumer.
    pub kind: ProcKind,
    /// How it ended, e.g. `exit status: 1` or `signal: 9 (SIGKILL)`.
    pub status: String,
}

/// One running process: its group id and a way to wait for its exit.
#[derive(Debug, Clone)]
pub struct ProcHandle {
    /// Process id (= process group id).
    pub pid: i32,
    exited: watch::Receiver<bool>,
}

impl ProcHandle {
    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// A handle for a process this module does not watch (launchers other
    /// than [`Supervisor`], e.g. in-process tests): the process counts as
    /// exited once `true` is sent on the returned sender.
    pub fn unwatched(pid: i32) -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (Self { pid, exited: rx }, tx)
    }

    async fn wait(&mut self) {
        let _ = self.exited.wait_for(|exited| *exited).await;
    }
}

/// The processes of one spawned worker.
#[derive(Debug, Clone)]
pub struct Spawned {
    /// Spawn generation.
    pub generation: u64,
    /// `http://127.0.0.1:<WORKER_PORT>`.
    pub url: String,
    /// Public listener port.
    pub worker_port: u16,
    /// `NULL_CONTROL_PORT`.
    pub control_port: u16,
    /// `NULL_CONSUMER_PORT`: the port given to the consumer for its health
    /// endpoint (only with a consumer).
    pub consumer_port: Option<u16>,
    /// The worker process.
    pub worker: ProcHandle,
    /// The consumer process, if the template has one.
    pub consumer: Option<ProcHandle>,
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// I/O while preparing or spawning; a full disk is named as such
    /// (`no space left on device writing <path>`).
    #[error("{}", describe_io(what, source))]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn describe_io(what: &str, source: &std::io::Error) -> String {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        format!("no space left on device writing {what}")
    } else {
        format!("cannot start {what}: {source}")
    }
}

/// What the engine needs to run workers: [`Supervisor`] for real
/// processes; tests may launch nothing.
pub trait Launcher: Send + Sync + std::fmt::Debug + 'static {
    /// Starts the processes of a worker. Called on the engine's spawner
    /// thread, never under a lock.
    fn spawn(
        &self,
        worker_id: i64,
        mtoken: &str,
        template: &WorkerTemplate,
    ) -> Result<Spawned, SpawnError>;

    /// Stops the processes of a worker; resolves once they are gone.
    fn stop<'a>(
        &'a self,
        worker_id: i64,
        spawned: &'a Spawned,
    ) -> futures_util::future::BoxFuture<'a, ()>;

    /// Path of a worker's log file.
    fn log_path(&self, worker_id: i64, kind: ProcKind) -> PathBuf;
}

impl Launcher for Supervisor {
    fn spawn(
        &self,
        worker_id: i64,
        mtoken: &str,
        template: &WorkerTemplate,
    ) -> Result<Spawned, SpawnError> {
        Supervisor::spawn(self, worker_id, mtoken, template)
    }

    fn stop<'a>(
        &'a self,
        worker_id: i64,
        spawned: &'a Spawned,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(Supervisor::stop(self, worker_id, spawned))
    }

    fn log_path(&self, worker_id: i64, kind: ProcKind) -> PathBuf {
        Supervisor::log_path(self, worker_id, kind)
    }
}

/// Spawns and stops worker processes.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state_dir: PathBuf,
    default_command: Command,
    report_addr: String,
    grace: Duration,
    generation: AtomicU64,
    events: mpsc::UnboundedSender<ExitEvent>,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Start time of a process in clock ticks since boot (`/proc/<pid>/stat`
/// field 22), used to tell a pid from a later process reusing it.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // After the command name: state is field 3, start time is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

fn pidfile(state_dir: &Path, worker_id: i64) -> PathBuf {
    worker_dir(state_dir, worker_id).join("pids")
}

/// Whether any process is in process group `pgid`.
fn group_exists(pgid: i32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Kills every process group recorded in worker pidfiles under `state_dir`
/// that is still ours (a previous engine died without stopping them):
/// the leader is the same process (same start time), or the leader is gone
/// but members of its group remain (Linux does not reuse a pid while a
/// group of that id exists, so those are the old group's). Returns how
/// many groups were killed.
pub async fn reap_stale(state_dir: &Path) -> usize {
    let mut killed = 0;
    let Ok(entries) = fs::read_dir(state_dir.join("workers")) else {
        return 0;
    };
    let mut groups = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("pids");
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
                continue;
            };
            if pid <= 1 {
                continue;
            }
            let ours = match process_start_time(pid) {
                Some(now_start) => now_start == start,
                None => group_exists(pid),
            };
            if ours {
                groups.push(pid);
            }
        }
        let _ = fs::remove_file(&path);
    }
    for pid in &groups {
        tracing::warn!(
            pid,
            "stopping a worker process left running by a previous engine"
        );
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    // Give them a moment, then make sure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for pid in &groups {
        while group_exists(*pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
        killed += 1;
    }
    killed
}

impl Supervisor {
    /// A supervisor that puts worker directories under `state_dir`, tells
    /// workers to report to `report_addr` and sends exits to `events`.
    pub fn new(
        state_dir: PathBuf,
        default_command: Command,
        report_addr: String,
        grace: Duration,
        events: mpsc::UnboundedSender<ExitEvent>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                state_dir,
                default_command,
                report_addr,
                grace,
                generation: AtomicU64::new(1),
                events,
            }),
        }
    }

    /// Path of a worker's log file.
    pub fn log_path(&self, worker_id: i64, kind: ProcKind) -> PathBuf {
        worker_dir(&self.inner.state_dir, worker_id).join(kind.log_name())
    }

    /// Spawns the worker `worker_id` (and its consumer) with `template`.
    ///
    /// Must be called with a tokio runtime entered, from a thread that
    /// lives as long as the engine (the engine's spawner thread): the
    /// processes are told to exit when the thread that spawned them dies.
    pub fn spawn(
        &self,
        worker_id: i64,
        mtoken: &str,
        template: &WorkerTemplate,
    ) -> Result<Spawned, SpawnError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| SpawnError::Io { what, source }
        };
        let dir = worker_dir(&self.inner.state_dir, worker_id);
        fs::create_dir_all(&dir).map_err(io(&dir.display().to_string()))?;
        let worker_port = free_port().map_err(io("port allocation"))?;
        let mut http_port = free_port().map_err(io("port allocation"))?;
        while http_port == worker_port {
            http_port = free_port().map_err(io("port allocation"))?;
        }
        let mut control_port = free_port().map_err(io("port allocation"))?;
        while control_port == worker_port || control_port == http_port {
            control_port = free_port().map_err(io("port allocation"))?;
        }
        let consumer_port = match &template.consumer_command {
            Some(_) => {
                let mut port = free_port().map_err(io("port allocation"))?;
                while [worker_port, http_port, control_port].contains(&port) {
                    port = free_port().map_err(io("port allocation"))?;
                }
                Some(port)
            }
            None => None,
        };
        let url = format!("http://127.0.0.1:{worker_port}");
        let mut env: Vec<(String, String)> = vec![
            ("CONTAINER_ID".into(), worker_id.to_string()),
            ("REPORT_ADDR".into(), self.inner.report_addr.clone()),
            ("MASTER_TOKEN".into(), mtoken.to_owned()),
            ("WORKER_PORT".into(), worker_port.to_string()),
            ("WORKER_HTTP_PORT".into(), http_port.to_string()),
            (
                format!("VAST_TCP_PORT_{worker_port}"),
                worker_port.to_string(),
            ),
            ("PUBLIC_IPADDR".into(), "127.0.0.1".into()),
            // Bind what the URL says: loopback only.
            ("NULLWORKER_LISTEN_ADDR".into(), "127.0.0.1".into()),
            ("USE_SSL".into(), "false".into()),
            ("UNSECURED".into(), "false".into()),
            ("NULL_CONTROL_PORT".into(), control_port.to_string()),
        ];
        if let Some(port) = consumer_port {
            env.push(("NULL_CONSUMER_PORT".into(), port.to_string()));
            if let Some(url) = template.consumer_health_url(port) {
                env.push(("BACKEND_HEALTH_URL".into(), url));
            }
        }
        for (key, value) in &template.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let worker_cmd = match &template.worker_command {
            Some(line) => Command::Shell(line.clone()),
            None => self.inner.default_command.clone(),
        };
        let worker = self.start_process(
            worker_id,
            generation,
            ProcKind::Worker,
            &worker_cmd,
            &env,
            &dir,
        )?;
        let consumer = match &template.consumer_command {
            Some(line) => {
                match self.start_process(
                    worker_id,
                    generation,
                    ProcKind::Consumer,
                    &Command::Shell(line.clone()),
                    &env,
                    &dir,
                ) {
                    Ok(handle) => Some(handle),
                    Err(err) => {
                        let _ = killpg(Pid::from_raw(worker.pid), Signal::SIGKILL);
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        let mut pids = format!(
            "{} {}\n",
            worker.pid,
            process_start_time(worker.pid).unwrap_or(0)
        );
        if let Some(c) = &consumer {
            pids.push_str(&format!(
                "{} {}\n",
                c.pid,
                process_start_time(c.pid).unwrap_or(0)
            ));
        }
        let pid_path = pidfile(&self.inner.state_dir, worker_id);
        fs::write(&pid_path, pids).map_err(io(&pid_path.display().to_string()))?;
        Ok(Spawned {
            generation,
            url,
            worker_port,
            control_port,
            consumer_port,
            worker,
            consumer,
        })
    }

    fn start_process(
        &self,
        worker_id: i64,
        generation: u64,
        kind: ProcKind,
        command: &Command,
        env: &[(String, String)],
        dir: &Path,
    ) -> Result<ProcHandle, SpawnError> {
        let log_path = dir.join(kind.log_name());
        let what = format!(
            "{} ({} of worker {worker_id}: {})",
            log_path.display(),
            kind.log_name(),
            command.display()
        );
        let io = |source| SpawnError::Io {
            what: what.clone(),
            source,
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io)?;
        let _ = writeln!(
            log,
            "--- nullworker engine: starting {} of worker {worker_id}: {}",
            match kind {
                ProcKind::Worker => "worker",
                ProcKind::Consumer => "consumer",
            },
            command.display()
        );
        let stderr = log.try_clone().map_err(io)?;
        let mut cmd = match command {
            Command::Argv(argv) => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            Command::Shell(line) => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-c").arg(line);
                cmd
            }
        };
        cmd.current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: prctl is async-signal-safe; the closure touches no memory
        // shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io)?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let (tx, rx) = watch::channel(false);
        let events = self.inner.events.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => describe_status(status),
                Err(err) => format!("wait failed: {err}"),
            };
            let _ = tx.send(true);
            let _ = events.send(ExitEvent {
                worker_id,
                generation,
                kind,
                status,
            });
        });
        Ok(ProcHandle { pid, exited: rx })
    }

    /// Stops a process: SIGTERM to its group, SIGKILL after the grace (or at
    /// once when `kill` is set). Returns when the process has exited.
    pub async fn stop_process(&self, handle: &ProcHandle, kill: bool) {
        let mut handle = handle.clone();
        let pgid = Pid::from_raw(handle.pid);
        if handle.pid <= 1 {
            return;
        }
        if !handle.has_exited() {
            let signal = if kill {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let _ = killpg(pgid, signal);
            if tokio::time::timeout(self.inner.grace, handle.wait())
                .await
                .is_err()
            {
                tracing::warn!(pid = handle.pid, "process ignored SIGTERM; sending SIGKILL");
                let _ = killpg(pgid, Signal::SIGKILL);
                handle.wait().await;
            }
        }
        // Anything the process left in its group goes too.
        let _ = killpg(pgid, Signal::SIGKILL);
    }

    /// Stops both processes of a spawned worker and removes its pidfile.
    pub async fn stop(&self, worker_id: i64, spawned: &Spawned) {
        let consumer = spawned.consumer.clone();
        let this = self.clone();
        let consumer_stop = async move {
            if let Some(c) = consumer {
                this.stop_process(&c, false).await;
            }
        };
        tokio::join!(self.stop_process(&spawned.worker, false), consumer_stop);
        let _ = fs::remove_file(pidfile(&self.inner.state_dir, worker_id));
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
        format!("killed by signal {sig} ({name})")
    } else {
        status.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor(dir: &Path, grace: Duration) -> (Supervisor, mpsc::UnboundedReceiver<ExitEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sup = Supervisor::new(
            dir.to_owned(),
            Command::Shell("sleep 1000".into()),
            "http://127.0.0.1:1".into(),
            grace,
            tx,
        );
        (sup, rx)
    }

    #[tokio::test]
    async fn spawn_sets_environment_logs_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, mut rx) = supervisor(dir.path(), Duration::from_secs(5));
        let template = WorkerTemplate {
            worker_command: Some("env; echo to-stderr >&2".into()),
            consumer_command: Some("echo consumer $NULL_CONTROL_PORT $NULL_CONSUMER_PORT".into()),
            env: [("EXTRA_VAR".to_owned(), "42".to_owned())].into(),
            consumer_health_path: Some("/healthz".into()),
        };
        let spawned = sup.spawn(7, "tok", &template).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(ev.worker_id, 7);
            assert_eq!(ev.status, "exit status 0");
            seen.push(ev.kind);
        }
        let log = fs::read_to_string(sup.log_path(7, ProcKind::Worker)).unwrap();
        assert!(log.contains("CONTAINER_ID=7"), "{log}");
        assert!(log.contains("MASTER_TOKEN=tok"), "{log}");
        assert!(log.contains("NULLWORKER_LISTEN_ADDR=127.0.0.1\n"), "{log}");
        assert!(log.contains("EXTRA_VAR=42"), "{log}");
        assert!(
            log.contains(&format!("VAST_TCP_PORT_{0}={0}", spawned.worker_port)),
            "{log}"
        );
        assert!(log.contains("to-stderr"), "{log}");
        // The consumer's own port: free, distinct from the worker's, and
        // known to both processes; the worker's health check points at it.
        let consumer_port = spawned.consumer_port.expect("a consumer port");
        assert!(
            ![spawned.worker_port, spawned.control_port].contains(&consumer_port),
            "{consumer_port}"
        );
        assert!(
            log.contains(&format!("NULL_CONSUMER_PORT={consumer_port}\n")),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "BACKEND_HEALTH_URL=http://127.0.0.1:{consumer_port}/healthz\n"
            )),
            "{log}"
        );
        let consumer = fs::read_to_string(sup.log_path(7, ProcKind::Consumer)).unwrap();
        assert!(
            consumer.contains(&format!(
                "consumer {} {consumer_port}",
                spawned.control_port
            )),
            "{consumer}"
        );
    }

    /// The worker log of `id` once it contains `marker`.
    fn wait_for_log(sup: &Supervisor, id: i64, marker: &str) -> String {
        let mut log = String::new();
        wait_until("the worker's environment in its log", || {
            log = fs::read_to_string(sup.log_path(id, ProcKind::Worker)).unwrap_or_default();
            log.contains(marker)
        });
        log
    }

    #[tokio::test]
    async fn consumer_ports_are_distinct_and_only_given_with_a_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, mut rx) = supervisor(dir.path(), Duration::from_secs(5));
        let with_consumer = WorkerTemplate {
            worker_command: Some("env".into()),
            consumer_command: Some("true".into()),
            env: [(
                "BACKEND_HEALTH_URL".to_owned(),
                "http://127.0.0.1:9/own".to_owned(),
            )]
            .into(),
            consumer_health_path: Some("/health".into()),
        };
        for id in 1..=3 {
            let spawned = sup.spawn(id, "t", &with_consumer).unwrap();
            let port = spawned.consumer_port.unwrap();
            assert!(
                ![spawned.worker_port, spawned.control_port].contains(&port),
                "worker {id}: consumer port {port} is one of the worker's"
            );
            let log = wait_for_log(&sup, id, "NULL_CONSUMER_PORT=");
            assert!(
                log.contains(&format!("NULL_CONSUMER_PORT={port}\n")),
                "{log}"
            );
        }
        let plain = WorkerTemplate {
            worker_command: Some("env".into()),
            ..Default::default()
        };
        let spawned = sup.spawn(4, "t", &plain).unwrap();
        assert_eq!(spawned.consumer_port, None);
        // Every process exits: 3 workers and 3 consumers, then the plain worker.
        for _ in 0..7 {
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap()
                .unwrap();
        }
        // The endpoint's own BACKEND_HEALTH_URL is kept.
        let log = fs::read_to_string(sup.log_path(1, ProcKind::Worker)).unwrap();
        assert!(
            log.contains("BACKEND_HEALTH_URL=http://127.0.0.1:9/own\n"),
            "{log}"
        );
        assert_eq!(log.matches("BACKEND_HEALTH_URL=").count(), 1, "{log}");
        let log = fs::read_to_string(sup.log_path(4, ProcKind::Worker)).unwrap();
        assert!(!log.contains("NULL_CONSUMER_PORT"), "{log}");
        assert!(!log.contains("BACKEND_HEALTH_URL"), "{log}");
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_and_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, mut rx) = supervisor(dir.path(), Duration::from_millis(300));
        let template = WorkerTemplate {
            // Ignores SIGTERM and has a child of its own. (The log's header
            // line holds the command, so the marker is computed.)
            worker_command: Some("trap '' TERM; echo trapped-$((40+2)); sleep 1000 & wait".into()),
            ..Default::default()
        };
        let spawned = sup.spawn(3, "t", &template).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(sup.log_path(3, ProcKind::Worker))
            .unwrap()
            .contains("trapped-42")
        {
            assert!(std::time::Instant::now() < deadline, "shell never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pidfile(dir.path(), 3).exists());
        sup.stop(3, &spawned).await;
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(ev.status.contains("SIGKILL"), "{}", ev.status);
        assert!(!pidfile(dir.path(), 3).exists());
        // No member of the group is left (once the orphaned child is reaped).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while killpg(Pid::from_raw(spawned.worker.pid), None).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "process group still alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Live (not zombie) processes of process group `pgid`.
    fn live_group_members(pgid: i32) -> Vec<(i32, String)> {
        let mut members = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_owned();
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // After the name: state (field 3), ppid (4), pgrp (5).
            if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
                members.push((pid, comm));
            }
        }
        members
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn a_compound_command_runs_whole_and_stops_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, _rx) = supervisor(dir.path(), Duration::from_secs(5));
        let template = WorkerTemplate {
            worker_command: Some("echo first-$((40+2)); sleep 1000; true".into()),
            consumer_command: Some("sleep 1000; true".into()),
            ..Default::default()
        };
        let spawned = sup.spawn(4, "t", &template).unwrap();
        let consumer = spawned.consumer.clone().unwrap();
        // The shell runs the line (it does not exec its first command): a
        // `sleep` child shows up in each process group.
        let mut sleeps = Vec::new();
        for pgid in [spawned.worker.pid, consumer.pid] {
            let mut found = None;
            wait_until("a sleep in the group", || {
                found = live_group_members(pgid)
                    .into_iter()
                    .find(|(pid, comm)| *pid != pgid && comm == "sleep")
                    .map(|(pid, _)| pid);
                found.is_some()
            });
            sleeps.push(found.unwrap());
        }
        let log = fs::read_to_string(sup.log_path(4, ProcKind::Worker)).unwrap();
        assert!(log.contains("first-42"), "{log}");
        sup.stop(4, &spawned).await;
        for pid in sleeps {
            wait_until("the sleep to be gone", || {
                !live_group_members(spawned.worker.pid)
                    .iter()
                    .chain(live_group_members(consumer.pid).iter())
                    .any(|(p, _)| *p == pid)
            });
        }
        assert!(live_group_members(spawned.worker.pid).is_empty());
        assert!(live_group_members(consumer.pid).is_empty());
    }

    #[tokio::test]
    async fn reap_stale_kills_group_members_that_outlived_their_shell() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, mut rx) = supervisor(dir.path(), Duration::from_secs(5));
        let template = WorkerTemplate {
            worker_command: Some("sleep 1000 & echo started".into()),
            ..Default::default()
        };
        let spawned = sup.spawn(5, "t", &template).unwrap();
        let pgid = spawned.worker.pid;
        // The shell exits at once, leaving its background sleep behind.
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.kind, ProcKind::Worker);
        wait_until("the orphaned sleep", || {
            live_group_members(pgid).iter().any(|(_, c)| c == "sleep")
        });
        assert_eq!(reap_stale(dir.path()).await, 1);
        wait_until("the group to be gone", || {
            live_group_members(pgid).is_empty()
        });
    }

    #[tokio::test]
    async fn reap_stale_kills_recorded_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, _rx) = supervisor(dir.path(), Duration::from_secs(5));
        let spawned = sup.spawn(9, "t", &WorkerTemplate::default()).unwrap();
        assert!(process_start_time(spawned.worker.pid).is_some());
        assert_eq!(reap_stale(dir.path()).await, 1);
        let mut handle = spawned.worker.clone();
        tokio::time::timeout(Duration::from_secs(30), handle.wait())
            .await
            .unwrap();
        assert!(!pidfile(dir.path(), 9).exists());
    }
}
