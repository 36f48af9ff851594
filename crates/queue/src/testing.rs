//! Real queue servers for tests: `redis-server` and `nats-server` (with
//! JetStream) started on ephemeral loopback ports with temporary data
//! directories, and stopped when dropped. A missing binary is an error with
//! an install hint, never a skip. Only built with the `testing` feature.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server process; killed and its data directory removed on drop.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl TestServer {
    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it printed so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `name` on PATH (and in /usr/sbin, /usr/bin), or explains how to install it.
pub fn find_binary(name: &str, package: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{name} not found on PATH: install it with `apt-get install {package}` \
(scripts/setup-test-deps.sh does this; scripts/test.sh runs it)"
    ))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Starts a server, retrying on another port if the one picked was taken in between.
fn start(binary: &Path, args: impl Fn(u16, &Path) -> Vec<String>) -> Result<TestServer, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port();
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(args(port, dir.path()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = TestServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&server.addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                last = format!(
                    "{} exited with {status}: {}",
                    binary.display(),
                    server.log()
                );
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on {} within {START_TIMEOUT:?}: {}",
                    binary.display(),
                    server.addr,
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(last)
}

/// Starts `redis-server` on a free loopback port, without persistence.
pub fn redis() -> Result<TestServer, String> {
    let binary = find_binary("redis-server", "redis-server")?;
    let server = start(&binary, |port, dir| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    })?;
    wait_redis_ready(server.addr)?;
    Ok(server)
}

/// Redis accepts connections before it has loaded; wait for a PONG.
fn wait_redis_ready(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut conn) = TcpStream::connect(addr) {
            use std::io::Write;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            if conn.write_all(b"PING\r\n").is_ok() {
                let mut line = String::new();
                if BufReader::new(&mut conn).read_line(&mut line).is_ok()
                    && line.starts_with("+PONG")
                {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("redis-server at {addr} never answered PING"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `nats-server` with JetStream on a free loopback port.
pub fn nats() -> Result<TestServer, String> {
    let binary = find_binary("nats-server", "nats-server")?;
    let server = start(&binary, |port, dir| {
        [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            &dir.join("jetstream").display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    })?;
    wait_nats_ready(server.addr)?;
    Ok(server)
}

/// NATS greets every client with `INFO {...}` once it serves.
fn wait_nats_ready(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut conn) = TcpStream::connect(addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let mut head = [0u8; 4];
            if conn.read_exact(&mut head).is_ok() && &head == b"INFO" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("nats-server at {addr} never sent INFO"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
