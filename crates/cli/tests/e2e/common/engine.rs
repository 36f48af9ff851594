//! A real `nullworker engine` for tests: started on an ephemeral loopback
//! port with its own state directory, stopped with SIGINT (so it stops its
//! workers) when dropped, plus small blocking clients for its APIs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};

use super::process::{nullworker, wait_for, ChildGuard};

/// Account key every test engine uses.
pub const ACCOUNT_KEY: &str = "test-account-key-0123456789";

/// A running engine.
pub struct EngineGuard {
    /// The process.
    pub child: ChildGuard,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The account key.
    pub account_key: String,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Lines the engine printed on stdout before it was ready.
    pub stdout: Vec<String>,
    /// The dashboard's URL (`http://127.0.0.1:<port>/ui/`), as printed.
    pub ui_url: Option<String>,
    _tmp: Option<tempfile::TempDir>,
    http: Client,
}

/// An endpoint created in a test.
#[derive(Debug, Clone)]
pub struct TestEndpoint {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Endpoint api_key.
    pub api_key: String,
}

impl EngineGuard {
    /// An engine on a fresh temporary state directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        let mut guard = Self::start_in(
            &dir,
            &["--account-key", ACCOUNT_KEY, "--scale-down-delay", "1"],
        );
        guard._tmp = Some(tmp);
        guard
    }

    /// An engine on `state_dir` with extra arguments (e.g. `--account-key`).
    pub fn start_in(state_dir: &Path, args: &[&str]) -> Self {
        Self::start_with_fd_limit(state_dir, args, None)
    }

    /// Like [`start_in`](Self::start_in), the engine's stderr going to
    /// `stderr` (a file or a pipe) instead of the test's.
    pub fn start_with_stderr(state_dir: &Path, args: &[&str], stderr: Stdio) -> Self {
        Self::spawn(state_dir, args, None, stderr)
    }

    /// Like [`start_in`](Self::start_in), the engine limited to `nofile`
    /// open file descriptors (soft and hard) when given.
    pub fn start_with_fd_limit(state_dir: &Path, args: &[&str], nofile: Option<u64>) -> Self {
        Self::spawn(state_dir, args, nofile, Stdio::inherit())
    }

    fn spawn(state_dir: &Path, args: &[&str], nofile: Option<u64>, stderr: Stdio) -> Self {
        let mut cmd = nullworker();
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("engine");
        match args.iter().position(|a| *a == "--listen") {
            None => {
                cmd.arg("--listen").arg("127.0.0.1:0");
            }
            Some(i) => {
                // A restart on a known address: the port was free a moment
                // ago, but a connection of another test may hold it as its
                // local port until it closes. The dashboard would default
                // to the next port, which nothing reserved: take any.
                if let Some(addr) = args.get(i + 1) {
                    wait_until_bindable(addr);
                }
                if !args.contains(&"--ui-listen") {
                    cmd.arg("--ui-listen").arg("127.0.0.1:0");
                }
            }
        }
        cmd.arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env_remove("NULLWORKER_ACCOUNT_KEY")
            .env_remove("NULLWORKER_WORKER_COMMAND")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = ChildGuard::spawn(cmd);
        let rx = child.stdout_lines();
        let mut lines = Vec::new();
        let url = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("engine did not print its address within 60 s");
            lines.push(line.clone());
            if let Some(url) = line.strip_prefix("nullworker engine: listening on ") {
                break url.trim().to_owned();
            }
        };
        // The dashboard's line follows, unless it is off.
        let ui_off = args.windows(2).any(|w| w == ["--ui-listen", "off"]);
        let ui_url = (!ui_off).then(|| {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("engine did not print its dashboard's URL");
            lines.push(line.clone());
            line.strip_prefix("nullworker engine: dashboard on ")
                .unwrap_or_else(|| panic!("expected the dashboard's URL, got {line:?}"))
                .trim()
                .to_owned()
        });
        let account_key = args
            .windows(2)
            .find(|w| w[0] == "--account-key")
            .map(|w| w[1].to_owned())
            .or_else(|| {
                lines.iter().find_map(|l| {
                    l.strip_prefix("nullworker engine: generated account key ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned)
                })
            })
            .unwrap_or_default();
        Self {
            child,
            url,
            account_key,
            state_dir: state_dir.to_owned(),
            stdout: lines,
            ui_url,
            _tmp: None,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    /// Calls the web API with the account key; returns status and JSON body.
    pub fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.account_key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().expect("engine request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs JSON without any key header.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .expect("engine request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates an endpoint with the seed preset plus `extra` parameters.
    pub fn create_seed_endpoint(&self, name: &str, extra: Value) -> TestEndpoint {
        let mut body = json!({
            "endpoint_name": name,
            "target_util": 1.0,
            "min_load": 0,
            "max_queue_time": 1.0,
            "target_queue_time": 0.5,
            "inactivity_timeout": 10,
            "cold_workers": 0,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = self.api(Method::POST, "/api/v0/endptjobs/", Some(body));
        assert_eq!(status, 200, "create endpoint: {v}");
        let id = v["result"].as_i64().expect("id");
        let (status, v) = self.api(Method::GET, &format!("/api/v0/endptjobs/{id}/"), None);
        assert_eq!(status, 200, "get endpoint: {v}");
        TestEndpoint {
            id,
            name: name.to_owned(),
            api_key: v["result"]["api_key"].as_str().expect("api_key").to_owned(),
        }
    }

    /// One `/route/` call.
    pub fn route(&self, ep: &TestEndpoint, request_idx: u64, cost: f64) -> Value {
        let (status, v) = self.post(
            "/route/",
            &json!({"endpoint": ep.name, "api_key": ep.api_key, "cost": cost,
                    "request_idx": request_idx, "replay_timeout": 60.0}),
        );
        assert_eq!(status, 200, "route: {v}");
        v
    }

    /// Polls `/route/` (every 100 ms) until READY; returns the READY body.
    pub fn route_until_ready(&self, ep: &TestEndpoint, timeout: Duration) -> Value {
        self.poll_until_ready(ep, 0, timeout)
    }

    /// Like [`route_until_ready`](Self::route_until_ready), re-polling the
    /// request `request_idx` (0 = a new one).
    pub fn poll_until_ready(
        &self,
        ep: &TestEndpoint,
        request_idx: u64,
        timeout: Duration,
    ) -> Value {
        let mut idx = request_idx;
        wait_for("a READY answer from /route/", timeout, || {
            let v = self.route(ep, idx, 100.0);
            if v.get("url").is_some() {
                return Some(v);
            }
            idx = v["request_idx"].as_u64().expect("request_idx");
            std::thread::sleep(Duration::from_millis(100));
            None
        })
    }

    /// The endpoint's workers as `/get_endpoint_workers/` lists them.
    pub fn workers(&self, ep: &TestEndpoint) -> Vec<Value> {
        let (status, v) = self.post(
            "/get_endpoint_workers/",
            &json!({"id": ep.id, "api_key": self.account_key}),
        );
        assert_eq!(status, 200, "get_endpoint_workers: {v}");
        v.as_array().expect("array").clone()
    }

    /// The engine's worker list with pids (engine extra API).
    pub fn workers_detail(&self, ep: &TestEndpoint) -> Vec<Value> {
        let (status, v) = self.api(
            Method::GET,
            &format!("/api/v0/endptjobs/{}/workers/", ep.id),
            None,
        );
        assert_eq!(status, 200, "workers: {v}");
        v["results"].as_array().expect("results").clone()
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .expect("metrics")
            .text()
            .expect("text")
    }

    /// Stops the engine with SIGTERM and waits for it (its workers keep
    /// running unless it runs with `--stop-workers-on-exit`).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Stops the engine with `signal` and waits for it (up to 30 s).
    pub fn stop_with(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        self.child.child.as_ref()?;
        if matches!(
            self.child.child.as_mut().map(|c| c.try_wait()),
            Some(Ok(Some(_)))
        ) {
            return self.child.wait_timeout(Duration::from_secs(1));
        }
        self.child.signal(signal);
        self.child.wait_timeout(Duration::from_secs(30))
    }
}

impl Drop for EngineGuard {
    /// SIGINT: the engine stops every worker before it exits.
    fn drop(&mut self) {
        let _ = self.stop_with(libc::SIGINT);
    }
}

/// Whether a process is alive (signal 0).
pub fn alive(pid: i64) -> bool {
    // SAFETY: kill(2) with signal 0 only checks existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Waits (up to 30 s) until `addr` can be bound, so an engine restarted on
/// it does not fail on a port that a closing connection still holds.
fn wait_until_bindable(addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => panic!("{addr} is still in use after 30 s: {err}"),
        }
    }
}
