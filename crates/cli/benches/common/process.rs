//! Child processes of a benchmark (spawned in their own process group and
//! killed with it on drop), free loopback ports, and resident memory read
//! from `/proc`.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::Context;

/// Whether the `nullworker` binary reads environment variable `name`: the
/// worker's (§8.1), the `VAST_*` ones (port mappings, account key) and our
/// own `NULLWORKER_*` settings. Such variables are removed from every child
/// so the caller's shell cannot leak into a measurement; settings meant for
/// our worker go through `--ours-env`.
pub fn read_by_nullworker(name: &str) -> bool {
    nullworker_protocol::WORKER_ENV_VARS.contains(&name)
        || name.starts_with("VAST_")
        || name.starts_with("NULLWORKER_")
}

/// A command without any variable [`read_by_nullworker`], stdin closed, and
/// stdout/stderr appended to `log`.
pub fn command(program: impl AsRef<std::ffi::OsStr>, log: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if read_by_nullworker(&key.to_string_lossy()) {
            cmd.env_remove(key);
        }
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    Ok(cmd)
}

/// A child process (and everything it forks) that is killed with SIGKILL
/// and reaped when dropped.
pub struct ChildGuard {
    child: Child,
    /// When `spawn` was called.
    pub spawned_at: Instant,
    /// Where its output goes.
    pub log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> anyhow::Result<ChildGuard> {
        cmd.process_group(0);
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(ChildGuard {
            child,
            spawned_at,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` when the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(err) => Some(format!("unknown state: {err}")),
        }
    }

    /// Sends SIGTERM to the process (only the leader, so it can stop its own
    /// children in order) and waits up to `grace` for it to exit; the drop
    /// that follows kills whatever is left.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        // SAFETY: kill(2) on the process this guard owns; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The last lines of its output, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 15)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group this guard created; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `VmRSS` of one process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmRSS:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Sum of `VmRSS` over `pid` and all its descendants, in MiB.
pub fn tree_rss_mib(pid: u32) -> Option<f64> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = parent_pid(child) {
                children.entry(parent).or_default().push(child);
            }
        }
    }
    let mut total = rss_kib(pid)?;
    let mut stack = children.remove(&pid).unwrap_or_default();
    while let Some(p) = stack.pop() {
        total += rss_kib(p).unwrap_or(0);
        stack.extend(children.remove(&p).unwrap_or_default());
    }
    Some(total as f64 / 1024.0)
}

/// CPU time (user and system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name, utime and stime are the 12th
    // and 13th fields (fields 14 and 15 of the line), in clock ticks.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(std::time::Duration::from_millis(ticks * 1000 / hz.max(1)))
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The number of online CPUs and the 1-minute load average, for the record.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    (cpus, load)
}
