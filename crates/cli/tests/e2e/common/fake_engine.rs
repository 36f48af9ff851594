//! A fake engine for worker tests: serves `GET /pubkey/` (the test key's PEM,
//! or failures on demand), captures `/worker_status/` and `/delete_requests/`
//! bodies (refusing, like an engine, the reports a test marks as invalid),
//! captures on-close callbacks on `/callback`, and serves a
//! `/health` whose status a test can change. Tests wait for a captured body
//! matching a predicate, with a deadline.
//!
//! The server runs on its own small tokio runtime, bound to 127.0.0.1:0, and
//! stops when the [`FakeEngine`] is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use nullworker_protocol::{SigningKey, VerifyingKey};
use serde_json::Value;

use super::process::wait_for;

/// Path of the shared signing vectors (test-only RSA keys).
pub const SIGNING_VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../protocol/tests/data/signing.json"
);

fn vectors() -> Value {
    let text = std::fs::read_to_string(SIGNING_VECTORS).expect("read signing vectors");
    serde_json::from_str(&text).expect("parse signing vectors")
}

/// The engine's test signing key (`keys.primary`).
pub fn primary_key() -> SigningKey {
    key_named("primary")
}

/// A second test key the worker does not trust (`keys.other`).
pub fn other_key() -> SigningKey {
    key_named("other")
}

fn key_named(name: &str) -> SigningKey {
    let pem = vectors()["keys"][name]["private_key_pkcs1_pem"]
        .as_str()
        .expect("private key PEM")
        .to_owned();
    SigningKey::from_pem(&pem).expect("load test key")
}

/// The public PEM the fake engine serves (`keys.primary`, SPKI).
pub fn primary_public_pem() -> String {
    vectors()["keys"]["primary"]["public_key_spki_pem"]
        .as_str()
        .expect("public key PEM")
        .to_owned()
}

/// Which `/worker_status/` bodies the engine refuses with 400.
type RefusePredicate = Box<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Default)]
struct Shared {
    /// Reports matching this are answered 400 and kept in `refused`.
    refuse_status: Mutex<Option<RefusePredicate>>,
    refused: Mutex<Vec<Value>>,
    pubkey_pem: String,
    /// Pubkey requests still to fail; negative = fail forever.
    pubkey_failures: AtomicI64,
    pubkey_requests: AtomicUsize,
    statuses: Mutex<Vec<Value>>,
    deletes: Mutex<Vec<Value>>,
    callbacks: Mutex<Vec<Value>>,
    health_status: AtomicU16,
    health_requests: AtomicUsize,
}

/// The fake engine (see the module documentation).
pub struct FakeEngine {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

async fn pubkey(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    shared.pubkey_requests.fetch_add(1, Ordering::SeqCst);
    let left = shared.pubkey_failures.load(Ordering::SeqCst);
    if left < 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no key".into());
    }
    if left > 0 {
        shared.pubkey_failures.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "not yet".into());
    }
    (StatusCode::OK, shared.pubkey_pem.clone())
}

async fn worker_status(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let refuse = shared
        .refuse_status
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|pred| pred(&body));
    if refuse {
        shared.refused.lock().unwrap().push(body);
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error_msg": "invalid worker status"})),
        );
    }
    shared.statuses.lock().unwrap().push(body);
    (StatusCode::OK, Json(serde_json::json!({"ok": true})))
}

async fn delete_requests(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    shared.deletes.lock().unwrap().push(body);
    Json(serde_json::json!({"ok": true}))
}

async fn callback(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> StatusCode {
    shared.callbacks.lock().unwrap().push(body);
    StatusCode::OK
}

async fn health(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.health_requests.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(shared.health_status.load(Ordering::SeqCst)).unwrap()
}

impl FakeEngine {
    /// Starts a fake engine that serves the primary test key.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            pubkey_pem: primary_public_pem(),
            health_status: AtomicU16::new(200),
            ..Shared::default()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake engine runtime");
        let router = Router::new()
            .route("/pubkey/", get(pubkey))
            .route("/worker_status/", post(worker_status))
            .route("/delete_requests/", post(delete_requests))
            .route("/callback", post(callback))
            .route("/health", get(health))
            .with_state(Arc::clone(&shared));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind fake engine");
        let addr = listener.local_addr().expect("fake engine address");
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the next `n` `/pubkey/` requests fail (503); `-1` fails forever.
    pub fn fail_pubkey(&self, n: i64) {
        self.shared.pubkey_failures.store(n, Ordering::SeqCst);
    }

    /// Number of `/pubkey/` requests so far.
    pub fn pubkey_requests(&self) -> usize {
        self.shared.pubkey_requests.load(Ordering::SeqCst)
    }

    /// Sets the status `/health` answers.
    pub fn set_health(&self, status: u16) {
        self.shared.health_status.store(status, Ordering::SeqCst);
    }

    /// Number of `/health` requests so far.
    pub fn health_requests(&self) -> usize {
        self.shared.health_requests.load(Ordering::SeqCst)
    }

    /// From now on, answers 400 to every `/worker_status/` body matching
    /// `pred` (as an engine refuses an invalid report) instead of taking it.
    pub fn refuse_statuses_when(&self, pred: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        *self.shared.refuse_status.lock().unwrap() = Some(Box::new(pred));
    }

    /// Every `/worker_status/` body refused so far.
    pub fn refused_statuses(&self) -> Vec<Value> {
        self.shared.refused.lock().unwrap().clone()
    }

    /// Every `/worker_status/` body taken so far.
    pub fn statuses(&self) -> Vec<Value> {
        self.shared.statuses.lock().unwrap().clone()
    }

    /// Every `/delete_requests/` body so far.
    pub fn delete_bodies(&self) -> Vec<Value> {
        self.shared.deletes.lock().unwrap().clone()
    }

    /// Every record of every `/delete_requests/` body, in arrival order.
    pub fn delete_records(&self) -> Vec<Value> {
        self.delete_bodies()
            .iter()
            .flat_map(|b| b["requests"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Every on-close callback body so far.
    pub fn callbacks(&self) -> Vec<Value> {
        self.shared.callbacks.lock().unwrap().clone()
    }

    /// Waits for a `/worker_status/` body matching `pred` (looking at every
    /// body received so far, then at new ones).
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_status_after(0, what, timeout, pred)
    }

    /// Waits for a status body matching `pred` that arrives after the first `skip` bodies.
    pub fn wait_status_after(
        &self,
        skip: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_in(
            what,
            timeout,
            || self.statuses().into_iter().skip(skip),
            pred,
        )
    }

    /// Waits for a delete record matching `pred`.
    pub fn wait_delete(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_in(what, timeout, || self.delete_records(), pred)
    }

    /// Waits for an on-close callback body matching `pred`.
    pub fn wait_callback(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_in(what, timeout, || self.callbacks(), pred)
    }

    /// The verifying key matching the served PEM.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_pem(&self.shared.pubkey_pem).expect("served PEM parses")
    }
}

/// Waits until a body listed by `bodies` matches `pred`.
fn wait_in<I: IntoIterator<Item = Value>>(
    what: &str,
    timeout: Duration,
    bodies: impl Fn() -> I,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, timeout, || bodies().into_iter().find(|b| pred(b)))
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
