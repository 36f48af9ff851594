//! End-to-end tests of the worker (`nullworker serve`, `nullworker release`):
//! the real binary on ephemeral loopback ports against the fake engine.
//!
//! [`Worker`] starts one worker process with the protocol's environment and
//! kills it when dropped; the submodules group the tests by area.

mod bounds;
mod lifecycle;
mod robustness;
mod security;
mod sessions;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::fake_engine::{primary_key, FakeEngine};
use crate::common::process::{free_port, nullworker, wait_for, ChildGuard};

/// Generous deadline for anything that should happen "at once".
pub const SOON: Duration = Duration::from_secs(10);

/// A worker process under test.
pub struct Worker {
    pub child: ChildGuard,
    pub port: u16,
    pub http_port: u16,
    pub control_port: u16,
    /// The worker's own URL (what it reports and what `auth_data.url` must be).
    pub url: String,
    pub dir: tempfile::TempDir,
    client: reqwest::blocking::Client,
}

/// How to start a worker: the protocol variables are filled in, `env` adds or overrides.
pub struct WorkerSpec {
    pub report_addr: Option<String>,
    pub env: Vec<(String, String)>,
    pub tls: bool,
}

impl WorkerSpec {
    pub fn new(engine: &FakeEngine) -> Self {
        Self {
            report_addr: Some(engine.url()),
            env: Vec::new(),
            tls: false,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A command with every variable a worker needs, on fresh ports.
pub fn worker_command(spec: &WorkerSpec, dir: &std::path::Path) -> (Command, u16, u16, u16) {
    let port = free_port();
    let http_port = free_port();
    let control_port = free_port();
    let mut cmd = nullworker();
    cmd.arg("serve")
        .current_dir(dir)
        .env("CONTAINER_ID", "42")
        .env("MASTER_TOKEN", "secret-token")
        .env("WORKER_PORT", port.to_string())
        .env("WORKER_HTTP_PORT", http_port.to_string())
        .env(format!("VAST_TCP_PORT_{port}"), port.to_string())
        .env("PUBLIC_IPADDR", "127.0.0.1")
        .env("NULL_CONTROL_PORT", control_port.to_string())
        .env("NULLWORKER_LISTEN_ADDR", "127.0.0.1")
        .env("NULLWORKER_FORCE_UPDATE_FILE", dir.join("force_update"))
        .env("RUST_LOG", "info");
    if let Some(addr) = &spec.report_addr {
        cmd.env("REPORT_ADDR", addr);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null());
    (cmd, port, http_port, control_port)
}

impl Worker {
    /// Starts a worker and waits until its public port accepts connections.
    pub fn start(spec: WorkerSpec) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut cmd, port, http_port, control_port) = worker_command(&spec, dir.path());
        let log = std::fs::File::create(dir.path().join("worker.log")).expect("log file");
        cmd.stderr(log);
        let child = ChildGuard::spawn(cmd);
        let scheme = if spec.tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let client = if spec.tls {
            let cert = std::fs::read(
                spec.env
                    .iter()
                    .find(|(k, _)| k == "NULLWORKER_TLS_CERT")
                    .map(|(_, v)| PathBuf::from(v))
                    .expect("TLS tests set NULLWORKER_TLS_CERT"),
            )
            .expect("read test certificate");
            reqwest::blocking::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&cert).expect("certificate"))
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client")
        } else {
            plain_client()
        };
        let worker = Self {
            child,
            port,
            http_port,
            control_port,
            url,
            dir,
            client,
        };
        wait_for("worker listening", SOON, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        worker
    }

    /// The worker's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// POSTs JSON to a public route; returns status and body text.
    pub fn post(&self, path: &str, body: &Value) -> (u16, String) {
        self.post_raw(path, body.to_string())
    }

    /// POSTs raw text to a public route.
    pub fn post_raw(&self, path: &str, body: impl Into<String>) -> (u16, String) {
        send(
            self.client
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(body.into()),
        )
    }

    /// POSTs JSON to the HTTP-only listener.
    pub fn post_http_only(&self, path: &str, body: &Value) -> (u16, String) {
        send(
            plain_client()
                .post(format!("http://127.0.0.1:{}{path}", self.http_port))
                .body(body.to_string()),
        )
    }

    /// POSTs the control server's `/release`.
    pub fn release(&self) -> (u16, Value) {
        let (status, text) =
            send(plain_client().post(format!("http://127.0.0.1:{}/release", self.control_port)));
        (
            status,
            serde_json::from_str(&text).expect("release answers JSON"),
        )
    }

    /// Opens a session with signed `auth_data`; panics unless 201.
    pub fn open(&self, request_idx: u64, lifetime: f64, extra_payload: Value) -> (String, Value) {
        let auth = signed_auth(&self.url, request_idx, 100);
        let mut payload =
            json!({"lifetime": lifetime, "on_close_route": null, "on_close_payload": null});
        if let (Some(p), Some(extra)) = (payload.as_object_mut(), extra_payload.as_object()) {
            p.extend(extra.clone());
        }
        let (status, text) = self.post(
            "/session/create",
            &json!({"auth_data": auth, "payload": payload, "session_id": null}),
        );
        assert_eq!(
            status,
            201,
            "create answered {status} {text}\n{}",
            self.log()
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        (body["session_id"].as_str().unwrap().to_owned(), auth)
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.child
            .wait_timeout(timeout)
            .unwrap_or_else(|| panic!("worker did not exit within {timeout:?}\n{}", self.log()))
    }
}

fn send(req: reqwest::blocking::RequestBuilder) -> (u16, String) {
    let resp = req.send().expect("request to the worker");
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// A blocking client without proxy, with a generous timeout.
pub fn plain_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn signatures() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The engine's signature over `url` with the primary test key (cached).
pub fn sign(url: &str) -> String {
    let mut cache = signatures().lock().unwrap();
    cache
        .entry(url.to_owned())
        .or_insert_with(|| primary_key().sign_url(url))
        .clone()
}

/// A READY `/route/` body for `url`, signed by the engine's key.
pub fn signed_auth(url: &str, request_idx: u64, cost: u64) -> Value {
    json!({
        "endpoint": "null-test",
        "url": url,
        "cost": cost,
        "reqnum": request_idx + 1000,
        "request_idx": request_idx,
        "signature": sign(url),
        "__request_id": "00000000-0000-4000-8000-000000000000",
    })
}

/// Waits until the worker reported itself ready.
pub fn wait_ready(engine: &FakeEngine) -> Value {
    engine.wait_status("a ready report", SOON, |s| {
        s["max_perf"] == json!(100.0) && s["loadtime"].as_f64().unwrap_or(0.0) > 0.0
    })
}

/// Seconds since the epoch.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
