//! A fake route service + web API and fake null workers, in process on
//! ephemeral loopback ports, for testing the SDK without the real binaries.
//!
//! The fakes follow PROTOCOL.md closely enough for the SDK (WAITING/READY by
//! the presence of `url`, additive session extension, 400/410 for unknown
//! sessions, 429 when a worker already holds a session) and record what they
//! saw so tests can assert on it. They do not check signatures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use nullworker_client::{Client, RetryPolicy};

pub const ACCOUNT_KEY: &str = "account-key";
pub const ENDPOINT: &str = "null-test";
pub const ENDPOINT_KEY: &str = "endpoint-key";

/// Serves `router` on 127.0.0.1:0; the server task ends with the runtime.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------
// Fake worker
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct FakeSession {
    pub auth_data: Value,
    pub lifetime: f64,
    pub expires: Instant,
}

#[derive(Debug, Default)]
pub struct WorkerState {
    pub sessions: HashMap<String, FakeSession>,
    /// Answer this many `/session/create` calls with 429 before accepting.
    pub reject_creates: usize,
    pub creates: usize,
    pub pings: usize,
    pub session_pings: usize,
    pub ends: usize,
    pub gets: usize,
    next_id: u64,
}

impl WorkerState {
    fn gc(&mut self) {
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires > now);
    }
}

#[derive(Clone)]
pub struct FakeWorker {
    pub url: String,
    pub state: Arc<Mutex<WorkerState>>,
}

impl FakeWorker {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(WorkerState::default()));
        let router = Router::new()
            .route("/session/create", post(create))
            .route("/session/end", post(end))
            .route("/session/get", post(get_session))
            .route("/ping", post(ping))
            .route("/release", post(release))
            .with_state(state.clone());
        let url = serve(router).await;
        Self { url, state }
    }

    pub fn open_sessions(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.gc();
        state.sessions.len()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut WorkerState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The consumer's release: closes every session.
    pub fn release_all(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        let n = state.sessions.len();
        state.sessions.clear();
        n
    }
}

type WorkerShared = State<Arc<Mutex<WorkerState>>>;

async fn create(State(state): WorkerShared, Json(body): Json<Value>) -> Response {
    let mut state = state.lock().unwrap();
    state.gc();
    state.creates += 1;
    if state.reject_creates > 0 {
        state.reject_creates -= 1;
        return StatusCode::TOO_MANY_REQUESTS.into_response();
    }
    if !state.sessions.is_empty() {
        return StatusCode::TOO_MANY_REQUESTS.into_response();
    }
    let lifetime = body["payload"]["lifetime"].as_f64().unwrap_or(60.0);
    state.next_id += 1;
    let id = format!("sess{:09}", state.next_id);
    let session = FakeSession {
        auth_data: body["auth_data"].clone(),
        lifetime,
        expires: Instant::now() + Duration::from_secs_f64(lifetime),
    };
    state.sessions.insert(id.clone(), session);
    let expiration = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + lifetime;
    (
        StatusCode::CREATED,
        Json(json!({"session_id": id, "expiration": expiration})),
    )
        .into_response()
}

fn session_lookup(state: &mut WorkerState, body: &Value) -> Result<String, Box<Response>> {
    state.gc();
    let id = body["session_id"].as_str().unwrap_or_default().to_owned();
    match state.sessions.get(&id) {
        None => Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("session with id {id} not found")})),
            )
                .into_response(),
        )),
        Some(s) if s.auth_data != body["session_auth"] => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "session_auth is not valid"})),
            )
                .into_response(),
        )),
        Some(_) => Ok(id),
    }
}

async fn end(State(state): WorkerShared, Json(body): Json<Value>) -> Response {
    let mut state = state.lock().unwrap();
    state.ends += 1;
    match session_lookup(&mut state, &body) {
        Ok(id) => {
            state.sessions.remove(&id);
            Json(json!({"ended": true, "removed_session": id})).into_response()
        }
        Err(resp) => *resp,
    }
}

async fn get_session(State(state): WorkerShared, Json(body): Json<Value>) -> Response {
    let mut state = state.lock().unwrap();
    state.gets += 1;
    match session_lookup(&mut state, &body) {
        Ok(id) => {
            let s = state.sessions[&id].clone();
            Json(json!({"session_id": id, "auth_data": s.auth_data, "lifetime": s.lifetime,
                        "expiration": 0.0, "created_at": 0.0, "on_close_route": null, "on_close_payload": null}))
            .into_response()
        }
        Err(resp) => *resp,
    }
}

async fn ping(State(state): WorkerShared, Json(body): Json<Value>) -> Response {
    let mut state = state.lock().unwrap();
    state.gc();
    state.pings += 1;
    if let Some(id) = body["session_id"].as_str() {
        state.session_pings += 1;
        match state.sessions.get_mut(id) {
            Some(s) => s.expires += Duration::from_secs_f64(s.lifetime),
            None => {
                return (StatusCode::GONE, Json(json!({"error": "invalid session"})))
                    .into_response()
            }
        }
    }
    Json(json!({"result": {"ok": true}})).into_response()
}

async fn release(State(state): WorkerShared) -> Response {
    let mut state = state.lock().unwrap();
    state.gc();
    let ids: Vec<String> = state.sessions.drain().map(|(id, _)| id).collect();
    if ids.is_empty() {
        Json(json!({"released": false, "reason": "no active session"})).into_response()
    } else {
        Json(json!({"released": true, "session_ids": ids})).into_response()
    }
}

// ---------------------------------------------------------------------------
// Fake engine (route service + web API)
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct EngineState {
    /// Worker URLs handed out by READY replies, in turn.
    pub workers: Vec<String>,
    next_worker: usize,
    /// WAITING replies to give before each READY.
    pub waiting_polls: usize,
    waited: usize,
    /// Statuses to answer `/route/` with before anything else.
    pub route_failures: Vec<u16>,
    /// Never answer READY.
    pub never_ready: bool,
    /// `request_idx` of every `/route/` call, in order.
    pub route_idxs: Vec<u64>,
    /// Keys seen on `/route/` (header, query, body).
    pub route_keys: Vec<(String, String, String)>,
    next_idx: u64,
    next_reqnum: u64,
}

#[derive(Clone)]
pub struct FakeEngine {
    pub url: String,
    pub state: Arc<Mutex<EngineState>>,
}

impl FakeEngine {
    pub async fn start(workers: &[&FakeWorker]) -> Self {
        let state = Arc::new(Mutex::new(EngineState {
            workers: workers.iter().map(|w| w.url.clone()).collect(),
            next_idx: 6,
            ..EngineState::default()
        }));
        let router = Router::new()
            .route("/api/v0/endptjobs/", get(list_endpoints))
            .route("/route/", post(route))
            .route("/get_endpoint_workers/", post(endpoint_workers))
            .with_state(state.clone());
        let url = serve(router).await;
        Self { url, state }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut EngineState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// A client with fast polls and retries, pointed at this engine.
    pub fn client(&self) -> Client {
        self.client_with_key(ACCOUNT_KEY)
    }

    pub fn client_with_key(&self, key: &str) -> Client {
        Client::builder(key)
            .autoscaler_url(self.url.clone())
            .webserver_url(self.url.clone())
            .retry_policy(fast_retries())
            .build()
            .unwrap()
    }
}

pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        first_poll: Duration::from_millis(50),
        max_poll_interval: Duration::from_millis(200),
        web_attempts: 2,
        route_attempts: 3,
    }
}

type EngineShared = State<Arc<Mutex<EngineState>>>;

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("<none>")
        .to_owned()
}

async fn list_endpoints(
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if bearer(&headers) != ACCOUNT_KEY
        || query.get("api_key").map(String::as_str) != Some(ACCOUNT_KEY)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"success": false, "error": "auth_error", "msg": "Invalid user key"})),
        )
            .into_response();
    }
    Json(json!({"success": true, "results": [
        {"id": 1, "endpoint_name": "other", "api_key": "x", "user_id": 1, "created_at": 0.0},
        {"id": 7, "endpoint_name": ENDPOINT, "api_key": ENDPOINT_KEY, "user_id": 1, "created_at": 0.0,
         "target_util": 1.0, "max_queue_time": 1.0}
    ]}))
    .into_response()
}

async fn route(
    State(state): EngineShared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let mut state = state.lock().unwrap();
    let idx = body["request_idx"].as_u64().unwrap_or(0);
    state.route_idxs.push(idx);
    state.route_keys.push((
        bearer(&headers),
        query.get("api_key").cloned().unwrap_or_default(),
        body["api_key"].as_str().unwrap_or_default().to_owned(),
    ));
    if body["api_key"] != ENDPOINT_KEY || body["endpoint"] != ENDPOINT {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error_msg": "invalid api_key or endpoint not found"})),
        )
            .into_response();
    }
    if !state.route_failures.is_empty() {
        let status = state.route_failures.remove(0);
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let idx = if idx == 0 {
        state.next_idx += 1;
        state.next_idx
    } else {
        idx
    };
    if state.never_ready || state.waited < state.waiting_polls || state.workers.is_empty() {
        state.waited += 1;
        return Json(json!({"endpoint": ENDPOINT, "request_idx": idx, "status": "waiting: 0 ready, 1 loading"})).into_response();
    }
    state.waited = 0;
    let url = state.workers[state.next_worker % state.workers.len()].clone();
    state.next_worker += 1;
    state.next_reqnum += 1;
    Json(
        json!({"endpoint": ENDPOINT, "url": url, "cost": body["cost"], "reqnum": state.next_reqnum,
                "request_idx": idx, "signature": "c2ln", "__request_id": "r"}),
    )
    .into_response()
}

async fn endpoint_workers(State(state): EngineShared, Json(body): Json<Value>) -> Response {
    if body["api_key"] != ACCOUNT_KEY {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error_msg": "bad key"})),
        )
            .into_response();
    }
    let state = state.lock().unwrap();
    let workers: Vec<Value> = state
        .workers
        .iter()
        .enumerate()
        .map(|(i, url)| json!({"id": i + 1, "status": "IDLE", "url": url, "perf": 100.0}))
        .collect();
    Json(Value::Array(workers)).into_response()
}

/// Polls `condition` every 20 ms until it holds, or panics after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
