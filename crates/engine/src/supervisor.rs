//! Worker processes: spawning `nullworker serve` (or the workergroup's
//! command) with the §12.2 environment on free loopback ports, an optional
//! consumer process beside it with the same environment (plus a free port of
//! its own, `NULL_CONSUMER_PORT`, for its health endpoint), logs captured per
//! process under the worker's directory, exit watching, and stopping
//! (SIGTERM to the process group, SIGKILL after a grace).
//!
//! The worker variables are added to the engine's own environment, which
//! the processes inherit: `RUST_LOG` and `NULLWORKER_LOG_FORMAT` (the
//! engine's `--log-format`) reach them unchanged, and so does `NO_COLOR`
//! (their stderr is a log file, never a terminal, so they log without
//! colour anyway). Both processes get `NULL_CONTROL_PORT`, so a consumer's
//! `curl -X POST http://127.0.0.1:${NULL_CONTROL_PORT:-18999}/release`
//! reaches its own worker.
//!
//! A shell command line runs as `/bin/sh -c '<line>'` (not `exec`'d, so a
//! compound line like `a; b` runs whole). Each process leads its own process
//! group, and stopping signals the whole group (SIGTERM, then SIGKILL after
//! the grace, then SIGKILL to anything left in the group), so the shell, its
//! children and what they started all stop.
//!
//! Workers may outlive the engine: each worker's directory holds a
//! [`ProcessRecord`] (`process.json`, mode 0600: its token, URL, ports, and
//! each process's pid with its start time from `/proc/<pid>/stat`), so the
//! next engine finds the processes still running ([`survey`]) and re-adopts
//! them ([`Launcher::adopt`]), watching their exit through a pidfd (they are
//! no longer its children); a pid reused by another process has another
//! start time and is never taken for ours. Groups whose leader is gone but
//! whose members remain are stopped. When the engine ties workers to its
//! own life instead (embedding programs), they get a parent-death signal.
//! What to spawn or stop is decided elsewhere (`scaler`, `registry`); this
//! module only carries it out and reports exits.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
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
    /// A process to re-adopt is not the recorded one any more (it exited,
    /// or its pid now belongs to another process).
    #[error("the {what} is no longer running")]
    Gone {
        /// Which process, e.g. `consumer of worker 3 (pid 1234)`.
        what: String,
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

    /// Takes over the running processes of a worker a previous engine
    /// launched, watching their exits. Launchers that start no real
    /// processes cannot.
    fn adopt(&self, record: &ProcessRecord) -> Result<Spawned, SpawnError> {
        Err(SpawnError::Io {
            what: format!("adoption of worker {}", record.worker_id),
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        })
    }
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

    fn adopt(&self, record: &ProcessRecord) -> Result<Spawned, SpawnError> {
        Supervisor::adopt(self, record)
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
    /// Workers keep running when the engine dies (else they get a
    /// parent-death signal).
    outlive_engine: bool,
}

/// One recorded process: its pid (= its process group id) and its start
/// time in clock ticks since boot, which tells it from a later process
/// reusing the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedProcess {
    /// Process id.
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22.
    pub start: u64,
}

/// What a worker's directory records about its running processes
/// (`process.json`), so a later engine can re-adopt them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Worker id.
    pub worker_id: i64,
    /// Its `MASTER_TOKEN`.
    pub mtoken: String,
    /// Its URL.
    pub url: String,
    /// `WORKER_PORT`.
    pub worker_port: u16,
    /// `NULL_CONTROL_PORT`.
    pub control_port: u16,
    /// `NULL_CONSUMER_PORT`.
    pub consumer_port: Option<u16>,
    /// The worker process.
    pub worker: RecordedProcess,
    /// The consumer process.
    pub consumer: Option<RecordedProcess>,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// State letter and start time of a process in clock ticks since boot
/// (`/proc/<pid>/stat` fields 3 and 22).
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the command name: state is field 3, start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Start time of a process, used to tell a pid from a later process
/// reusing it.
fn process_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// Whether the recorded process still runs (same start time, not a zombie).
pub fn is_running(p: &RecordedProcess) -> bool {
    p.pid > 1
        && matches!(proc_stat(p.pid), Some((state, start)) if start == p.start && state != 'Z' && state != 'X')
}

/// The legacy pidfile of engines before `process.json` (killed at start).
fn pidfile(state_dir: &Path, worker_id: i64) -> PathBuf {
    worker_dir(state_dir, worker_id).join("pids")
}

/// Where a worker's [`ProcessRecord`] lives.
pub fn record_path(state_dir: &Path, worker_id: i64) -> PathBuf {
    worker_dir(state_dir, worker_id).join("process.json")
}

/// Writes `record` atomically with mode 0600 (it holds the worker's token).
fn write_record(state_dir: &Path, record: &ProcessRecord) -> std::io::Result<()> {
    let path = record_path(state_dir, record.worker_id);
    let tmp = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    let text = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    file.write_all(&text)?;
    fs::rename(&tmp, &path)
}

/// Opens a pidfd on `pid` (Linux 5.3+).
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves once the recorded process has exited: through its pidfd, or by
/// looking every half second where pidfds are unavailable.
async fn wait_for_foreign_exit(p: RecordedProcess, pidfd: Option<OwnedFd>) {
    if let Some(fd) = pidfd {
        // SAFETY: an OwnedFd is a valid open descriptor that stays open, and
        // refers to the same pidfd, until the AsyncFd owning it drops it.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        if let Ok(fd) = registered {
            // A pidfd becomes readable when its process exits.
            let _ = fd.readable().await;
            return;
        }
    }
    while is_running(&p) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What [`survey`] found in the worker directories.
#[derive(Debug, Default)]
pub struct Survey {
    /// Workers whose worker process still runs: the caller adopts them or
    /// stops them ([`stop_recorded`]).
    pub running: Vec<ProcessRecord>,
    /// Process groups of dead workers (or of legacy pidfiles) stopped.
    pub stopped: usize,
}

/// Whether any process is in process group `pgid`.
fn group_exists(pgid: i32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Reads every worker's [`ProcessRecord`] under `state_dir`: workers whose
/// worker process still runs are returned for adoption; of the others,
/// anything left in their process groups (a consumer, children of a
/// compound command) is stopped, and their record removed. Groups listed in
/// legacy `pids` files are stopped too.
pub async fn survey(state_dir: &Path) -> Survey {
    let mut survey = Survey::default();
    let Ok(entries) = fs::read_dir(state_dir.join("workers")) else {
        return survey;
    };
    let mut leftovers = Vec::new();
    for entry in entries.flatten() {
        let legacy = entry.path().join("pids");
        if let Ok(text) = fs::read_to_string(&legacy) {
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                let (Some(Ok(pid)), Some(Ok(start))) = (
                    parts.next().map(str::parse::<i32>),
                    parts.next().map(str::parse::<u64>),
                ) else {
                    continue;
                };
                leftovers.extend(ours(RecordedProcess { pid, start }));
            }
            let _ = fs::remove_file(&legacy);
        }
        let path = entry.path().join("process.json");
        let Ok(text) = fs::read(&path) else { continue };
        let Ok(record) = serde_json::from_slice::<ProcessRecord>(&text) else {
            tracing::warn!(path = %path.display(), "unreadable process record: removed");
            let _ = fs::remove_file(&path);
            continue;
        };
        if is_running(&record.worker) {
            survey.running.push(record);
            continue;
        }
        leftovers.extend(ours(record.worker));
        leftovers.extend(record.consumer.and_then(ours));
        let _ = fs::remove_file(&path);
    }
    survey.running.sort_by_key(|r| r.worker_id);
    survey.stopped = kill_groups(&leftovers).await;
    survey
}

/// The group of a recorded process if anything of it is still ours: the
/// leader itself (same start time), or members of its group once the
/// leader is gone (Linux does not reuse a pid while a group of that id
/// exists, so those are the old group's).
fn ours(p: RecordedProcess) -> Option<i32> {
    if p.pid <= 1 {
        return None;
    }
    let ours = match proc_stat(p.pid) {
        Some((_, start)) => start == p.start || group_exists(p.pid),
        None => group_exists(p.pid),
    };
    ours.then_some(p.pid)
}

/// Stops the process groups of recorded workers a new engine does not
/// adopt (their endpoint or history row is gone) and removes their records.
pub async fn stop_recorded(state_dir: &Path, records: &[ProcessRecord]) -> usize {
    let mut groups = Vec::new();
    for record in records {
        groups.extend(ours(record.worker));
        groups.extend(record.consumer.and_then(ours));
        let _ = fs::remove_file(record_path(state_dir, record.worker_id));
    }
    kill_groups(&groups).await
}

/// SIGTERM to each group, up to 2 s to go, then SIGKILL; returns how many.
async fn kill_groups(groups: &[i32]) -> usize {
    for pid in groups {
        tracing::warn!(
            pid,
            "stopping worker processes a previous engine left and no worker owns"
        );
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for pid in groups {
        while group_exists(*pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    groups.len()
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
        outlive_engine: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                state_dir,
                default_command,
                report_addr,
                grace,
                generation: AtomicU64::new(1),
                events,
                outlive_engine,
            }),
        }
    }

    /// Takes over the running processes of `record` (see the module docs):
    /// their exits are watched through pidfds and sent like those of
    /// processes this supervisor started. Fails if the worker process is
    /// not the recorded one any more.
    pub fn adopt(&self, record: &ProcessRecord) -> Result<Spawned, SpawnError> {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let worker = self.watch_foreign(
            record.worker_id,
            generation,
            ProcKind::Worker,
            record.worker,
        )?;
        let consumer = match record.consumer {
            Some(p) => {
                match self.watch_foreign(record.worker_id, generation, ProcKind::Consumer, p) {
                    Ok(handle) => Some(handle),
                    Err(err) => {
                        tracing::warn!(worker = record.worker_id, %err, "consumer not re-adopted");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Spawned {
            generation,
            url: record.url.clone(),
            worker_port: record.worker_port,
            control_port: record.control_port,
            consumer_port: record.consumer_port,
            worker,
            consumer,
        })
    }

    fn watch_foreign(
        &self,
        worker_id: i64,
        generation: u64,
        kind: ProcKind,
        p: RecordedProcess,
    ) -> Result<ProcHandle, SpawnError> {
        // Opened before the identity check, so the pidfd is known to refer
        // to the recorded process, not to a later one reusing its pid.
        let pidfd = pidfd_open(p.pid).ok();
        if !is_running(&p) {
            let name = match kind {
                ProcKind::Worker => "worker process",
                ProcKind::Consumer => "consumer",
            };
            return Err(SpawnError::Gone {
                what: format!("{name} of worker {worker_id} (pid {})", p.pid),
            });
        }
        let (tx, rx) = watch::channel(false);
        let events = self.inner.events.clone();
        tokio::spawn(async move {
            wait_for_foreign_exit(p, pidfd).await;
            let _ = tx.send(true);
            let _ = events.send(ExitEvent {
                worker_id,
                generation,
                kind,
                status: "exited (re-adopted process: status unknown)".into(),
            });
        });
        Ok(ProcHandle {
            pid: p.pid,
            exited: rx,
        })
    }

    /// Path of a worker's log file.
    pub fn log_path(&self, worker_id: i64, kind: ProcKind) -> PathBuf {
        worker_dir(&self.inner.state_dir, worker_id).join(kind.log_name())
    }

    /// Spawns the worker `worker_id` (and its consumer) with `template`.
    ///
    /// Must be called with a tokio runtime entered. Unless workers outlive
    /// the engine, call it from a thread that lives as long as the engine
    /// (the engine's spawner thread): the processes are then told to exit
    /// when the thread that spawned them dies.
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
        let recorded = |h: &ProcHandle| RecordedProcess {
            pid: h.pid,
            start: process_start_time(h.pid).unwrap_or(0),
        };
        let record = ProcessRecord {
            worker_id,
            mtoken: mtoken.to_owned(),
            url: url.clone(),
            worker_port,
            control_port,
            consumer_port,
            worker: recorded(&worker),
            consumer: consumer.as_ref().map(recorded),
        };
        if let Err(err) = write_record(&self.inner.state_dir, &record) {
            for h in std::iter::once(&worker).chain(consumer.as_ref()) {
                let _ = killpg(Pid::from_raw(h.pid), Signal::SIGKILL);
            }
            return Err(io("process record")(err));
        }
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
            "--- nullworker engine: starting {}: {}",
            match kind {
                ProcKind::Worker => format!("worker {worker_id}"),
                ProcKind::Consumer => format!("the consumer of worker {worker_id}"),
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
        if !self.inner.outlive_engine {
            // Tied to the engine (embedding programs): the kernel sends
            // SIGTERM when the spawning thread (the engine's spawner thread)
            // dies. SAFETY: prctl is async-signal-safe; the closure touches
            // no memory shared with the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
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

    /// Stops both processes of a spawned worker and removes its record.
    pub async fn stop(&self, worker_id: i64, spawned: &Spawned) {
        let consumer = spawned.consumer.clone();
        let this = self.clone();
        let consumer_stop = async move {
            if let Some(c) = consumer {
                this.stop_process(&c, false).await;
            }
        };
        tokio::join!(self.stop_process(&spawned.worker, false), consumer_stop);
        let _ = fs::remove_file(record_path(&self.inner.state_dir, worker_id));
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
            false,
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
        assert!(record_path(dir.path(), 3).exists());
        sup.stop(3, &spawned).await;
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(ev.status.contains("SIGKILL"), "{}", ev.status);
        assert!(!record_path(dir.path(), 3).exists());
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
    async fn survey_stops_what_is_left_of_a_dead_worker() {
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
        let survey = survey(dir.path()).await;
        assert!(survey.running.is_empty(), "{:?}", survey.running);
        assert_eq!(survey.stopped, 1);
        wait_until("the group to be gone", || {
            live_group_members(pgid).is_empty()
        });
        assert!(!record_path(dir.path(), 5).exists());
    }

    #[tokio::test]
    async fn a_running_worker_is_found_adopted_watched_and_stopped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _first_rx) = supervisor(dir.path(), Duration::from_secs(5));
        let template = WorkerTemplate {
            worker_command: Some("sleep 1000; true".into()),
            consumer_command: Some("sleep 1000; true".into()),
            ..Default::default()
        };
        let spawned = first.spawn(9, "tok", &template).unwrap();
        let consumer = spawned.consumer.clone().unwrap();
        for pgid in [spawned.worker.pid, consumer.pid] {
            wait_until("a sleep in the group", || {
                live_group_members(pgid)
                    .iter()
                    .any(|(p, c)| *p != pgid && c == "sleep")
            });
        }
        let mode = fs::metadata(record_path(dir.path(), 9))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        // A later engine finds it, as recorded.
        let found = survey(dir.path()).await;
        assert_eq!(found.stopped, 0);
        let [record] = found.running.as_slice() else {
            panic!("{:?}", found.running)
        };
        assert_eq!(record.worker_id, 9);
        assert_eq!(record.mtoken, "tok");
        assert_eq!(record.url, spawned.url);
        assert_eq!(record.control_port, spawned.control_port);
        assert_eq!(record.worker.pid, spawned.worker.pid);
        assert_eq!(record.consumer.map(|c| c.pid), Some(consumer.pid));
        // A pid with another start time is another process.
        let reused = RecordedProcess {
            pid: record.worker.pid,
            start: record.worker.start + 1,
        };
        assert!(!is_running(&reused));

        let (second, mut rx) = supervisor(dir.path(), Duration::from_secs(5));
        let adopted = second.adopt(record).unwrap();
        assert_eq!(adopted.worker.pid, spawned.worker.pid);
        // Its exits are watched although it is not a child of `second`.
        let _ = killpg(Pid::from_raw(consumer.pid), Signal::SIGKILL);
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((ev.worker_id, ev.kind), (9, ProcKind::Consumer));
        assert_eq!(ev.generation, adopted.generation);
        assert!(adopted.consumer.as_ref().unwrap().has_exited());
        // Stopping it stops its whole group and removes the record.
        second.stop(9, &adopted).await;
        assert!(adopted.worker.has_exited());
        wait_until("the worker's group to be gone", || {
            live_group_members(spawned.worker.pid).is_empty()
        });
        assert!(!record_path(dir.path(), 9).exists());
        // Adopting a gone process fails.
        assert!(second.adopt(record).is_err());
    }
}
