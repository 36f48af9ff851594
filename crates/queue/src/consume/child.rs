//! The user's command for one job: spawned in its own process group (so a
//! stop reaches its children too) with the payload on stdin and the job in
//! its environment, then supervised until it exits: heart-beaten every
//! period, and on shutdown given its grace before SIGTERM and SIGKILL to the
//! whole group. Whatever the command leaves running in its group when it
//! exits is killed.
//!
//! The group also dies with the consumer, even a SIGKILLed one, so nothing
//! of a job outlives it as an orphan:
//!
//! * the command is forked by one long-lived thread of its own (the
//!   spawner) with `PR_SET_PDEATHSIG(SIGKILL)`, which the kernel fires when
//!   the forking *thread* exits: a pool thread would kill the command when
//!   it idles out. The consumer may die between the fork and the `prctl`;
//!   the child then sees another parent (`getppid`) and does not start;
//! * the parent-death signal reaches only the command itself, not what it
//!   started, so beside it runs a *watcher*: `/bin/sh` in the command's
//!   group, ignoring SIGTERM, SIGINT and the like (not SIGKILL), blocked
//!   reading a pipe whose
//!   only writer is the consumer. When the consumer goes, however it goes,
//!   the read ends and the watcher sends SIGKILL to its own group, the job's
//!   whole group. When the job ends normally, the group's final SIGKILL
//!   takes the watcher too. Being a member, it also keeps the group's id
//!   from being reused while the consumer may still signal it.
//!
//! The watcher joins the group just after the command starts: a consumer
//! killed within that instant leaves the command to its parent-death
//! signal alone.

use std::future::Future;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getppid, Pid};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, Instant};

use super::policy::{JobStop, StopAction};
use super::StopSignals;

/// The watcher's script: ignore the signals a stop sends the group, wait
/// for the consumer's end of the pipe on stdin to close, then SIGKILL the
/// own process group (`kill 0`), the job's.
const WATCH_SCRIPT: &str =
    "trap '' HUP INT QUIT TERM USR1 USR2 PIPE ALRM; read -r _; kill -s KILL 0";

/// Longest wait for the watcher to be reaped once its group was killed.
const WATCHER_REAP: Duration = Duration::from_secs(5);

/// A spawned job command.
pub(crate) struct RunningJob {
    child: Child,
    /// Its process group (its own pid); 0 if unknown.
    pgid: i32,
    /// Kills the group if the consumer dies; `None` if it could not start
    /// (the command then still has its parent-death signal).
    watcher: Option<Watcher>,
}

/// The watcher of a job's group and the consumer's end of its pipe. Dropped,
/// the pipe closes and the watcher kills the group (so a job dropped without
/// supervision leaves nothing either); tokio reaps it in the background.
struct Watcher {
    child: Child,
    _pipe: io::PipeWriter,
}

/// How a supervised command ended.
pub(crate) struct Supervised {
    /// Its exit status (an error only if waiting on it failed).
    pub status: io::Result<ExitStatus>,
    /// When it was sent SIGTERM because the grace ran out (or was
    /// skipped); such a job goes back to the queue rather than being acked
    /// or failed.
    pub terminated_at: Option<Instant>,
}

impl Supervised {
    /// Whether the command was signalled rather than left to finish.
    pub fn cut_short(&self) -> bool {
        self.terminated_at.is_some()
    }
}

/// Timings of one job's supervision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub heartbeat_every: Duration,
    pub grace: Duration,
    pub kill_wait: Duration,
}

/// Spawns `argv` with `env` added, stdout and stderr inherited, and
/// `payload` written to its stdin (then closed) by a task of its own, so a
/// command that does not read its stdin does not stall the loop. The fork
/// happens on the spawner thread, with the command's watcher.
pub(crate) async fn spawn(
    argv: &[String],
    env: Vec<(&'static str, String)>,
    payload: Vec<u8>,
) -> io::Result<RunningJob> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    let parent = Pid::this();
    // SAFETY: prctl and getppid are async-signal-safe system calls, and the
    // error is built without allocating; nothing is shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != parent {
                // The consumer died before the prctl: nobody is left to
                // supervise the job, so it must not start.
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
    let (reply, answer) = oneshot::channel();
    submit(SpawnRequest {
        cmd,
        runtime: tokio::runtime::Handle::current(),
        reply,
    })?;
    let (mut child, watcher) = answer
        .await
        .map_err(|_| io::Error::other("the job spawner thread dropped the launch"))??;
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or(0);
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            // A command that exits without reading its stdin closes the
            // pipe: the write fails with EPIPE, which is not an error here.
            let _ = stdin.write_all(&payload).await;
        });
    }
    Ok(RunningJob {
        child,
        pgid,
        watcher,
    })
}

/// One launch for the spawner thread.
struct SpawnRequest {
    cmd: Command,
    /// The runtime the child is registered with (its reaper).
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<(Child, Option<Watcher>)>>,
}

/// The spawner thread's queue; the thread starts with the first launch and
/// lives as long as the process (it blocks on this channel, whose sender
/// is never dropped), as the parent-death signal requires.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

fn submit(request: SpawnRequest) -> io::Result<()> {
    let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    let tx = match spawner.as_ref() {
        Some(tx) => tx,
        None => {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("nullworker-job-spawner".into())
                .spawn(move || {
                    for request in rx {
                        let _entered = request.runtime.enter();
                        let _ = request.reply.send(launch(request.cmd));
                    }
                })?;
            spawner.insert(tx)
        }
    };
    tx.send(request)
        .map_err(|_| io::Error::other("the job spawner thread is gone"))
}

/// On the spawner thread: forks the command, then its watcher.
fn launch(mut cmd: Command) -> io::Result<(Child, Option<Watcher>)> {
    let child = cmd.spawn()?;
    let watcher = match child.id().and_then(|pid| i32::try_from(pid).ok()) {
        Some(pgid) => match watch(pgid) {
            Ok(watcher) => Some(watcher),
            // The command already exited and its group is empty: nothing
            // to watch.
            Err(err) if err.raw_os_error() == Some(Errno::EPERM as i32) => None,
            Err(err) => {
                // The command still dies with the consumer (its parent-death
                // signal), only what it started would not.
                tracing::warn!(
                    pid = pgid,
                    "cannot start /bin/sh to watch the job's process group: {err}"
                );
                None
            }
        },
        None => None,
    };
    Ok((child, watcher))
}

/// Starts the watcher of group `pgid` (see the module documentation).
fn watch(pgid: i32) -> io::Result<Watcher> {
    // Both ends close on exec: the watcher gets the reading end as its
    // stdin, and no other process inherits the writing end.
    let (reader, writer) = io::pipe()?;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", WATCH_SCRIPT])
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid)
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    Ok(Watcher {
        child,
        _pipe: writer,
    })
}

impl RunningJob {
    /// Its process id (for logs).
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    fn signal_group(&self, signal: Signal) {
        if self.pgid > 1 {
            // ESRCH (nobody left in the group) is the normal case after exit.
            let _ = killpg(Pid::from_raw(self.pgid), signal);
        }
    }
}

/// Waits for `job` to exit, calling `heartbeat` every
/// `timing.heartbeat_every`; after `stop.drain` the job has `timing.grace`
/// to finish, then its group gets SIGTERM and, `timing.kill_wait` later,
/// SIGKILL (`stop.now` skips the grace).
pub(crate) async fn supervise<H, F>(
    job: &mut RunningJob,
    timing: Timing,
    stop: &StopSignals,
    mut heartbeat: H,
) -> Supervised
where
    H: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut state = JobStop::new(timing.grace, timing.kill_wait);
    let mut next_beat = Instant::now() + timing.heartbeat_every;
    let status = loop {
        let wake = state
            .next_deadline()
            .map_or(next_beat, |deadline| deadline.min(next_beat));
        tokio::select! {
            biased;
            status = job.child.wait() => break status,
            () = stop.now.cancelled(), if !state.grace_skipped() => {
                tracing::warn!(pid = job.pgid, "second stop request: no more grace for the running job");
                state.skip_grace(Instant::now());
            }
            () = stop.drain.cancelled(), if !state.draining() => {
                tracing::info!(
                    pid = job.pgid,
                    "stop requested: the running job has {:?} to finish", timing.grace
                );
                state.drain(Instant::now());
            }
            () = sleep_until(wake) => {}
        }
        let now = Instant::now();
        match state.due(now) {
            StopAction::Terminate => {
                tracing::warn!(pid = job.pgid, "sending SIGTERM to the job's process group");
                job.signal_group(Signal::SIGTERM);
            }
            StopAction::Kill => {
                tracing::warn!(
                    pid = job.pgid,
                    "the job ignored SIGTERM for {:?}; sending SIGKILL",
                    timing.kill_wait
                );
                job.signal_group(Signal::SIGKILL);
            }
            StopAction::Nothing => {}
        }
        if now >= next_beat {
            heartbeat().await;
            next_beat = Instant::now() + timing.heartbeat_every;
        }
    };
    // Anything the command left running in its group goes too, the
    // watcher included (reaped here, so it is gone before the next job).
    job.signal_group(Signal::SIGKILL);
    if let Some(watcher) = job.watcher.as_mut() {
        let _ = timeout(WATCHER_REAP, watcher.child.wait()).await;
    }
    Supervised {
        status,
        terminated_at: state.terminated_at(),
    }
}

/// `exit 3`, `signal 9 (SIGKILL)`, ... for logs.
pub(crate) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn timing(grace: u64, kill_wait_ms: u64) -> Timing {
        Timing {
            heartbeat_every: Duration::from_secs(10),
            grace: Duration::from_secs(grace),
            kill_wait: Duration::from_millis(kill_wait_ms),
        }
    }

    /// On a paused clock: a job that outlives its grace is sent SIGTERM
    /// exactly at the end of the grace; the heartbeats before that fall on
    /// whole periods.
    #[tokio::test(start_paused = true)]
    async fn grace_ends_in_sigterm_on_a_paused_clock() {
        let stop = StopSignals::default();
        let mut job = spawn(&sh("exec sleep 600"), vec![], vec![]).await.unwrap();
        let t0 = Instant::now();
        let beats = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&beats);
        let drain = stop.drain.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            drain.cancel();
        });
        let out = supervise(&mut job, timing(30, 5000), &stop, || {
            let recorded = Arc::clone(&recorded);
            async move { recorded.lock().unwrap().push(t0.elapsed()) }
        })
        .await;
        // Drain at 25 s + 30 s of grace.
        assert_eq!(out.terminated_at, Some(t0 + Duration::from_secs(55)));
        assert!(out.cut_short());
        // SIGTERM, or SIGKILL if the paused clock ran past the kill wait
        // before the process was reaped: either way a signal, not an exit.
        assert_eq!(out.status.unwrap().code(), None);
        let before: Vec<_> = beats
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|at| *at < Duration::from_secs(55))
            .collect();
        assert_eq!(before, [10, 20, 30, 40, 50].map(Duration::from_secs));
    }

    /// Polls for `path` to exist, up to 10 s (real time).
    fn wait_for_file(path: &std::path::Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A job that outlives its grace gets SIGTERM; one that ignores SIGTERM
    /// is killed `kill_wait` later. A second stop request skips the grace.
    #[tokio::test]
    async fn sigterm_then_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("touch READY; exec sleep 600", "signal 15 (SIGTERM)"),
            // `trap '' TERM` makes the shell and its `sleep` ignore SIGTERM.
            (
                "trap '' TERM; touch READY; sleep 600; exit 0",
                "signal 9 (SIGKILL)",
            ),
        ];
        for (i, (script, want)) in cases.into_iter().enumerate() {
            let ready = dir.path().join(format!("ready{i}"));
            let script = script.replace("READY", &ready.display().to_string());
            let mut job = spawn(&sh(&script), vec![], vec![]).await.unwrap();
            let path = ready.clone();
            tokio::task::spawn_blocking(move || wait_for_file(&path))
                .await
                .unwrap();
            let stop = StopSignals::default();
            stop.drain.cancel();
            stop.now.cancel();
            let t0 = Instant::now();
            let out = supervise(&mut job, timing(600, 1000), &stop, || async {}).await;
            assert!(out.cut_short(), "{script}");
            assert_eq!(describe(&out.status.unwrap()), want, "{script}");
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{script}: the grace was not skipped"
            );
        }
    }

    /// A job that finishes within its grace is not cut short: its own exit
    /// status counts, and it read its payload on stdin.
    #[tokio::test]
    async fn a_job_finishing_within_the_grace_keeps_its_status() {
        let stop = StopSignals::default();
        stop.drain.cancel();
        let script = "read line; [ \"$line\" = hello ] && [ \"$X\" = y ] && exit 3; exit 1";
        let mut job = spawn(&sh(script), vec![("X", "y".into())], b"hello\n".to_vec())
            .await
            .unwrap();
        let out = supervise(&mut job, timing(30, 5), &stop, || async {}).await;
        assert!(!out.cut_short());
        assert_eq!(describe(&out.status.unwrap()), "exit 3");
    }

    /// Whether process `pid` runs (exists and is not a zombie).
    fn running(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rfind(')')
                .and_then(|close| stat[close + 1..].split_whitespace().next())
                .is_some_and(|state| state != "Z"),
            Err(_) => false,
        }
    }

    /// Polls until `pid` no longer runs, up to 10 s (real time).
    async fn wait_gone(pid: i32, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} (pid {pid}) still runs after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Without supervision (the consumer's side of the pipe closes, as when
    /// it is killed), the watcher kills the job's whole group: the command
    /// and the child it started in the background.
    #[tokio::test]
    async fn a_job_dropped_unsupervised_takes_its_whole_group_along() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "sleep 600 & echo \"$$ $!\" > {}.tmp; mv {0}.tmp {0}; wait",
            pids.display()
        );
        let job = spawn(&sh(&script), vec![], vec![]).await.unwrap();
        assert!(job.watcher.is_some(), "the job has a watcher");
        let path = pids.clone();
        tokio::task::spawn_blocking(move || wait_for_file(&path))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&pids).unwrap();
        let (shell, sleeper) = text.trim().split_once(' ').unwrap();
        let (shell, sleeper): (i32, i32) = (shell.parse().unwrap(), sleeper.parse().unwrap());
        assert_eq!(shell, job.pid());
        assert!(running(sleeper));
        drop(job);
        wait_gone(sleeper, "the job's background child").await;
        wait_gone(shell, "the job's command").await;
    }

    /// A job that ends normally leaves no watcher behind: it goes with the
    /// group's final SIGKILL and is reaped before `supervise` returns.
    #[tokio::test]
    async fn the_watcher_ends_with_the_job() {
        let stop = StopSignals::default();
        let mut job = spawn(&sh("sleep 0.3; exit 4"), vec![], vec![])
            .await
            .unwrap();
        let out = supervise(&mut job, timing(30, 5), &stop, || async {}).await;
        assert_eq!(describe(&out.status.unwrap()), "exit 4");
        let watcher = job.watcher.as_mut().expect("the job had a watcher");
        let pid = watcher.child.id();
        assert!(
            matches!(watcher.child.try_wait(), Ok(Some(_))),
            "the watcher (pid {pid:?}) was reaped"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let err = spawn(&["/nonexistent/prog".into()], vec![], vec![])
            .await
            .err()
            .expect("spawn fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
