//! Spawning the real `nullworker` binary in tests, with kill-on-drop guards.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_nullworker")
}

/// Whether the `nullworker` binary reads environment variable `name`: the
/// worker's (§8.1), the `VAST_*` ones (port mappings, account key) and our
/// own `NULLWORKER_*` settings.
pub fn read_by_nullworker(name: &str) -> bool {
    nullworker_protocol::WORKER_ENV_VARS.contains(&name)
        || name.starts_with("VAST_")
        || name.starts_with("NULLWORKER_")
}

/// A `nullworker` command without any variable the binary reads, so the
/// developer's shell cannot leak into a test.
pub fn nullworker() -> Command {
    let mut cmd = Command::new(binary());
    for (key, _) in std::env::vars_os() {
        if read_by_nullworker(&key.to_string_lossy()) {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd.spawn().expect("spawn nullworker");
        Self { child: Some(child) }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Takes the child's piped stdout and delivers its lines on a channel,
    /// read by a thread that ends with the stream.
    pub fn stdout_lines(&mut self) -> Receiver<String> {
        let stdout = self
            .child
            .as_mut()
            .expect("child")
            .stdout
            .take()
            .expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Sends a signal to the child (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        let rc = unsafe { libc::kill(self.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.id());
    }

    /// Waits for the child to exit, up to `timeout`; returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the OS does not hand
/// it out again immediately).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Polls `condition` every 20 ms until it returns `Some`, or panics with
/// `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
