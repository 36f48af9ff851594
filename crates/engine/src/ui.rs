//! The dashboard: a page served on its own port under `/ui/` (static
//! assets embedded in the binary), its event stream (`GET /ui/events`,
//! server-sent events from [`crate::events`]), the worker table and worker
//! logs it opens, the once-a-second sampler that feeds the stream, and the
//! `POST /api/v0/dispatch_report/` route (on the engine's main port) by
//! which a `nullworker dispatch` reports its backlog and in-flight jobs.
//!
//! Access: the account key, given once to a login form that sets an
//! `HttpOnly` cookie holding a random session token (never the key), or as
//! `Authorization: Bearer`; or nothing at all when the engine was started
//! with `--ui-no-auth`, which [`crate::config::EngineConfig::validate`]
//! allows only on a loopback address. No key ever appears in the page, its
//! URLs or the stream.
//!
//! It does not decide anything; it reads the registry through its O(1)
//! gauges and paged worker rows, like the web API.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::MissedTickBehavior;

use crate::context::Core;
use crate::events::{Catchup, DispatchCounts, EndpointHistory, HeldSessions, Stamped};
use crate::http_error::{json_response, WebError};
use crate::policy::WorkerState;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const LOGIN_HTML: &str = include_str!("../ui/login.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// The session cookie's name.
pub const COOKIE: &str = "nullworker_ui";
/// Dashboard sessions kept at most (the oldest are dropped beyond).
const MAX_SESSIONS: usize = 1_000;
/// Largest backlog or in-flight count taken from a dispatcher.
pub const MAX_DISPATCH_COUNT: u64 = 1_000_000_000_000;

/// State of the dashboard's router.
#[derive(Debug)]
pub struct Ui {
    core: Arc<Core>,
    no_auth: bool,
    sessions: Mutex<Vec<String>>,
}

type Ctx = State<Arc<Ui>>;

/// The dashboard's router (`/ui/...`), over the engine's context.
pub fn router(core: Arc<Core>, no_auth: bool) -> Router {
    let ui = Arc::new(Ui {
        core,
        no_auth,
        sessions: Mutex::new(Vec::new()),
    });
    Router::new()
        .route("/", get(|| async { redirect("/ui/") }))
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/ui/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .route("/ui/events", get(events))
        .route("/ui/api/endpoints/{name}/workers", get(workers))
        .route(
            "/ui/api/endpoints/{name}/workers/{worker}/log",
            get(worker_log),
        )
        .with_state(ui)
}

/// Routes added to the engine's main router: `POST
/// /api/v0/dispatch_report/` (account key).
pub fn report_router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v0/dispatch_report/", post(dispatch_report))
        .route("/api/v0/dispatch_report", post(dispatch_report))
        .with_state(core)
}

/// Publishes one sample per endpoint every second until the engine stops.
pub async fn sample_loop(core: Arc<Core>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = core.shutdown.cancelled() => return,
        }
        sample_once(&core);
    }
}

/// Publishes one sample per endpoint now (O(endpoints) under the registry
/// lock: the gauges are O(1) each).
pub fn sample_once(core: &Core) {
    let gauges: Vec<_> = {
        let reg = core.registry();
        reg.endpoint_ids()
            .into_iter()
            .filter_map(|id| reg.gauges(id))
            .collect()
    };
    let now = core.clock.now();
    for g in gauges {
        core.events.sample(&g.name, &g.counts, g.queued, now);
    }
}

// ---------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

impl Ui {
    fn authorised(&self, headers: &HeaderMap) -> bool {
        if self.no_auth {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if bearer == Some(self.core.account_key.as_str()) {
            return true;
        }
        cookie_token(headers).is_some_and(|token| {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|t| t == token)
        })
    }

    fn require(&self, headers: &HeaderMap) -> Result<(), WebError> {
        if self.authorised(headers) {
            Ok(())
        } else {
            Err(WebError::Unauthorized(
                "log in at /ui/login with the account key, or send Authorization: Bearer <account key>"
                    .into(),
            ))
        }
    }
}

async fn index(State(ui): Ctx, headers: HeaderMap) -> Response {
    if !ui.authorised(&headers) {
        return redirect("/ui/login");
    }
    let body = INDEX_HTML.replace("{{AUTH}}", if ui.no_auth { "off" } else { "on" });
    page(StatusCode::OK, body)
}

async fn login_form() -> Response {
    page(StatusCode::OK, LOGIN_HTML.replace("{{MESSAGE}}", ""))
}

async fn login(State(ui): Ctx, body: Bytes) -> Response {
    let key = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if key.trim() != ui.core.account_key {
        return page(
            StatusCode::UNAUTHORIZED,
            LOGIN_HTML.replace(
                "{{MESSAGE}}",
                "<p class=\"error\">That is not the engine's account key.</p>",
            ),
        );
    }
    let token = crate::state::random_key(32);
    {
        let mut sessions = ui.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.remove(0);
        }
        sessions.push(token.clone());
    }
    let cookie = format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict");
    let mut response = redirect("/ui/");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(ui): Ctx, headers: HeaderMap) -> Response {
    if let Some(token) = cookie_token(&headers) {
        ui.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| t != token);
    }
    let mut response = redirect("/ui/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("nullworker_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

// ---------------------------------------------------------------------------
// The worker table and logs
// ---------------------------------------------------------------------------

/// One row of the dashboard's worker table.
#[derive(Debug, Clone, Serialize)]
pub struct UiWorker {
    /// Worker id.
    pub id: i64,
    /// Derived state.
    pub state: WorkerState,
    /// Load (reported plus pending).
    pub load: f64,
    /// Public URL (empty until known).
    pub url: String,
    /// `NULL_CONTROL_PORT`.
    pub control_port: Option<u16>,
    /// When it was created (Unix seconds).
    pub created_at: f64,
    /// Why it is in `ERROR`.
    pub error: Option<String>,
    /// Registered by its reports, not launched by the engine.
    pub external: bool,
    /// Sessions its reports list.
    pub held: usize,
    /// Since when it holds any.
    pub held_since: Option<f64>,
}

fn ui_workers(core: &Core, endpoint: &str) -> Option<Vec<UiWorker>> {
    let id = core.registry().endpoint_id(endpoint)?;
    let rows = crate::api::all_worker_rows(core, id)?;
    let sessions = core.events.sessions(endpoint);
    Some(
        rows.into_iter()
            .map(|r| {
                let held = sessions.get(&r.wire.worker.id).copied();
                UiWorker {
                    id: r.wire.worker.id,
                    state: r.state,
                    load: r.wire.worker.cur_load,
                    url: r.wire.worker.url,
                    control_port: r.wire.control_port,
                    created_at: r.wire.worker.created_at,
                    error: r.error,
                    external: r.external,
                    held: held.map_or(0, |h: HeldSessions| h.held),
                    held_since: held.map(|h| h.since),
                }
            })
            .collect(),
    )
}

async fn workers(
    State(ui): Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    ui.require(&headers)?;
    let rows = ui_workers(&ui.core, &name)
        .ok_or_else(|| WebError::NotFound(format!("endpoint {name:?}")))?;
    Ok(json_response(StatusCode::OK, &json!({ "workers": rows })))
}

async fn worker_log(
    State(ui): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path((name, worker)): Path<(String, String)>,
) -> Result<Response, WebError> {
    ui.require(&headers)?;
    let id = ui
        .core
        .registry()
        .endpoint_id(&name)
        .ok_or_else(|| WebError::NotFound(format!("endpoint {name:?}")))?;
    let worker: i64 = worker.parse().map_err(|_| {
        WebError::InvalidArgs(format!("worker: expected a worker id, got {worker:?}"))
    })?;
    let pairs: Vec<(String, String)> = query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let consumer = matches!(value("consumer"), Some("1" | "true" | "yes"));
    crate::api::worker_log(&ui.core, id, worker, consumer, value("tail")).await
}

// ---------------------------------------------------------------------------
// The event stream
// ---------------------------------------------------------------------------

/// The `reset` event's data: everything a watcher needs to redraw.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The stream continues after this id.
    pub last_id: u64,
    /// Engine time of the snapshot.
    pub at: f64,
    /// Every endpoint, by name.
    pub endpoints: BTreeMap<String, SnapshotEndpoint>,
}

/// One endpoint in a [`Snapshot`].
#[derive(Debug, Serialize)]
pub struct SnapshotEndpoint {
    /// What the stream kept (view, samples, decisions, sessions).
    #[serde(flatten)]
    pub history: EndpointHistory,
    /// Its workers now.
    pub workers: Vec<UiWorker>,
}

/// The snapshot of a reset (worker rows read a page at a time).
pub fn snapshot(
    core: &Core,
    last_id: u64,
    endpoints: BTreeMap<String, EndpointHistory>,
) -> Snapshot {
    let known: HashSet<String> = {
        let reg = core.registry();
        reg.stored_all().map(|s| s.name.clone()).collect()
    };
    Snapshot {
        last_id,
        at: core.clock.now(),
        endpoints: endpoints
            .into_iter()
            .filter(|(name, _)| known.contains(name))
            .map(|(name, history)| {
                let workers = ui_workers(core, &name).unwrap_or_default();
                (name, SnapshotEndpoint { history, workers })
            })
            .collect(),
    }
}

fn sse_event(e: &Stamped) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.event.kind())
        .data(data)
}

struct Follow {
    core: Arc<Core>,
    wake: tokio::sync::watch::Receiver<u64>,
    last: Option<u64>,
}

/// The stream of a watcher whose last seen id is `last`: a reset first if
/// needed, then every event in order, until the engine stops.
pub fn follow(core: Arc<Core>, last: Option<u64>) -> impl Stream<Item = SseEvent> + Send {
    let wake = core.events.subscribe();
    let state = Follow { core, wake, last };
    stream::unfold(state, |mut st| async move {
        loop {
            st.wake.borrow_and_update();
            match st.core.events.since(st.last) {
                Catchup::Replay(events) if !events.is_empty() => {
                    st.last = events.last().map(|e| e.id);
                    let out: Vec<SseEvent> = events.iter().map(|e| sse_event(e)).collect();
                    return Some((out, st));
                }
                Catchup::Replay(_) => {}
                Catchup::Reset { last_id, endpoints } => {
                    let snap = snapshot(&st.core, last_id, endpoints);
                    let data = serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into());
                    st.last = Some(last_id);
                    let reset = SseEvent::default()
                        .id(last_id.to_string())
                        .event("reset")
                        .data(data);
                    return Some((vec![reset], st));
                }
            }
            tokio::select! {
                changed = st.wake.changed() => if changed.is_err() { return None },
                () = st.core.shutdown.cancelled() => return None,
            }
        }
    })
    .flat_map(stream::iter)
}

async fn events(State(ui): Ctx, headers: HeaderMap) -> Result<Response, WebError> {
    ui.require(&headers)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stream = follow(ui.core.clone(), last).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

// ---------------------------------------------------------------------------
// Dispatcher reports
// ---------------------------------------------------------------------------

/// The body of `POST /api/v0/dispatch_report/`.
#[derive(Debug, Deserialize)]
struct DispatchReport {
    endpoint: String,
    backlog: u64,
    in_flight: u64,
    #[serde(default)]
    held: u64,
}

async fn dispatch_report(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if bearer != Some(core.account_key.as_str()) {
        return Err(WebError::Unauthorized(
            "dispatch_report: send Authorization: Bearer <account key>".into(),
        ));
    }
    let report: DispatchReport = serde_json::from_slice(&body).map_err(|e| {
        WebError::InvalidArgs(format!(
            "dispatch_report: expected {{\"endpoint\": name, \"backlog\": n, \"in_flight\": n, \"held\": n}} with counts from 0 to {MAX_DISPATCH_COUNT}: {e}"
        ))
    })?;
    for (field, v) in [
        ("backlog", report.backlog),
        ("in_flight", report.in_flight),
        ("held", report.held),
    ] {
        if v > MAX_DISPATCH_COUNT {
            return Err(WebError::InvalidArgs(format!(
                "{field}: {v} is above {MAX_DISPATCH_COUNT}"
            )));
        }
    }
    if core.registry().endpoint_id(&report.endpoint).is_none() {
        return Err(WebError::NotFound(format!(
            "endpoint {:?}",
            report.endpoint
        )));
    }
    core.events.dispatch_report(
        &report.endpoint,
        DispatchCounts {
            backlog: report.backlog,
            in_flight: report.in_flight,
            held: report.held,
        },
        core.clock.now(),
    );
    Ok(json_response(StatusCode::OK, &json!({"success": true})))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use serde_json::Value;

    use super::*;
    use crate::testing::{call, engine};

    async fn get(router: &Router, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    /// Reads server-sent events from `body` until `count` have come:
    /// (id, event, data) each.
    async fn read_events(body: Body, count: usize) -> Vec<(u64, String, String)> {
        let mut body = body;
        let mut text = String::new();
        let mut out = Vec::new();
        while out.len() < count {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (0, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().unwrap();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !event.is_empty() {
                    out.push((id, event, data));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn the_dashboard_needs_the_account_key_and_login_sets_a_session_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, _) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let ui = router(core.clone(), false);
        let resp = get(&ui, "/ui/", &[]).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[header::LOCATION], "/ui/login");
        for path in ["/ui/events", "/ui/api/endpoints/e/workers"] {
            assert_eq!(
                get(&ui, path, &[]).await.status(),
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
        }
        let login = |key: String| {
            let ui = ui.clone();
            async move {
                ui.oneshot(
                    Request::post("/ui/login")
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Body::from(format!("key={key}")))
                        .unwrap(),
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(
            login("wrong-key-123".into()).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let resp = login(core.account_key.clone()).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let cookie = resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(
            !cookie.contains(&core.account_key),
            "the cookie holds the key: {cookie}"
        );
        let session = cookie.split(';').next().unwrap().to_owned();
        let resp = get(&ui, "/ui/", &[("cookie", &session)]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let page = resp.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains("app.js"), "{page}");
        assert!(!page.contains(&core.account_key));
        let bearer = format!("Bearer {}", core.account_key);
        let resp = get(
            &ui,
            "/ui/api/endpoints/nope/workers",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn the_stream_resets_then_follows_and_replays_after_a_last_event_id() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, _) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let id = crate::testing::seed_endpoint(&core, "e").await;
        let api_key = core.registry().stored(id).unwrap().api_key.clone();
        sample_once(&core);
        let ui = router(core.clone(), true);
        let resp = get(&ui, "/ui/events", &[]).await;
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let first = read_events(resp.into_body(), 1).await;
        let (reset_id, kind, data) = &first[0];
        assert_eq!(kind, "reset");
        let snap: Value = serde_json::from_str(data).unwrap();
        assert_eq!(snap["last_id"], *reset_id);
        assert_eq!(snap["endpoints"]["e"]["endpoint"]["seed"], true, "{snap}");
        assert_eq!(
            snap["endpoints"]["e"]["samples"].as_array().unwrap().len(),
            1
        );
        for secret in [api_key.as_str(), core.account_key.as_str()] {
            assert!(
                !data.contains(secret),
                "a key appears in the snapshot: {data}"
            );
        }
        // Two more events; a watcher back with the reset's id gets both,
        // in order, and nothing before them.
        let (status, _) = call(
            &core,
            "PUT",
            &format!("/api/v0/endptjobs/{id}/"),
            json!({"max_workers": 7}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        sample_once(&core);
        let last = reset_id.to_string();
        let resp = get(&ui, "/ui/events", &[("last-event-id", &last)]).await;
        let next = read_events(resp.into_body(), 2).await;
        assert_eq!(next[0].0, reset_id + 1);
        assert_eq!(next[1].0, reset_id + 2);
        assert_eq!(next[0].1, "endpoint");
        assert_eq!(next[1].1, "sample");
        let endpoint: Value = serde_json::from_str(&next[0].2).unwrap();
        assert_eq!(endpoint["endpoint"]["params"]["max_workers"], 7);
        assert_eq!(endpoint["endpoint"]["seed"], false);
        for (_, _, data) in &next {
            assert!(!data.contains(&api_key), "{data}");
        }
        // An id from before this engine's first: a reset again.
        let resp = get(&ui, "/ui/events", &[("last-event-id", "5")]).await;
        let again = read_events(resp.into_body(), 1).await;
        assert_eq!(again[0].1, "reset");
        assert_eq!(again[0].0, reset_id + 2);
        handle.shutdown().await;
    }

    /// The registry's observations reach the stream: a scale-up with its
    /// reason, the worker's states, a session held and released as its
    /// reports list it, and the sample counting it busy.
    #[tokio::test(start_paused = true)]
    async fn scale_actions_worker_states_and_sessions_reach_the_stream() {
        use crate::events::EngineEvent;
        let dir = tempfile::tempdir().unwrap();
        let (handle, fake) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let id = crate::testing::seed_endpoint(&core, "e").await;
        let first = core.events.last_id();
        let api_key = core.registry().stored(id).unwrap().api_key.clone();
        let route = json!({"endpoint": "e", "api_key": api_key, "cost": 100});
        let (_, waiting) = call(&core, "POST", "/route/", route).await;
        assert!(waiting["status"].is_string(), "{waiting}");
        let (wid, mtoken) = crate::testing::wait_for(|| fake.launches().first().cloned()).await;
        crate::testing::wait_real("the launch applied", || core.registry().is_spawned(id, wid))
            .await;
        let report = |idxs: Vec<u64>| {
            json!({"id": wid, "mtoken": mtoken, "version": "1.1.0", "loadtime": 0.1,
                   "max_perf": 100.0, "url": crate::testing::FakeLauncher::url(wid),
                   "working_request_idxs": idxs})
        };
        for idxs in [vec![], vec![7], vec![]] {
            let (status, body) = call(&core, "POST", "/worker_status/", report(idxs)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let Catchup::Replay(events) = core.events.since(Some(first)) else {
            panic!("expected a replay");
        };
        let scale = events
            .iter()
            .find_map(|e| match &e.event {
                EngineEvent::Scale {
                    action,
                    reason,
                    want_active,
                    demand,
                    ..
                } => Some((*action, *reason, *want_active, *demand)),
                _ => None,
            })
            .expect("a scale event");
        assert_eq!(scale, ("create", "scale_from_zero", 1, 100.0), "{events:?}");
        let states: Vec<WorkerState> = events
            .iter()
            .filter_map(|e| match &e.event {
                EngineEvent::WorkerState { worker, to, .. } if *worker == wid => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(states.last(), Some(&WorkerState::Idle), "{states:?}");
        let sessions: Vec<(usize, &str)> = events
            .iter()
            .filter_map(|e| match &e.event {
                EngineEvent::Session { held, change, .. } => Some((*held, *change)),
                _ => None,
            })
            .collect();
        assert_eq!(sessions, vec![(1, "held"), (0, "released")]);
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn a_dispatcher_report_needs_the_account_key_and_shows_in_the_samples() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, _) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let (status, _) = call(
            &core,
            "POST",
            "/api/v0/endptjobs/",
            json!({"endpoint_name": "q"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let post = |auth: Option<String>, body: Value| {
            let core = core.clone();
            async move {
                let mut req = Request::post("/api/v0/dispatch_report/");
                if let Some(auth) = auth {
                    req = req.header("authorization", auth);
                }
                report_router(core)
                    .oneshot(req.body(Body::from(body.to_string())).unwrap())
                    .await
                    .unwrap()
                    .status()
            }
        };
        let good = json!({"endpoint": "q", "backlog": 12, "in_flight": 3, "held": 3});
        assert_eq!(post(None, good.clone()).await, StatusCode::UNAUTHORIZED);
        let bearer = Some(format!("Bearer {}", core.account_key));
        assert_eq!(
            post(
                bearer.clone(),
                json!({"endpoint": "q", "backlog": -1, "in_flight": 0})
            )
            .await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(
                bearer.clone(),
                json!({"endpoint": "nope", "backlog": 1, "in_flight": 0})
            )
            .await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(post(bearer, good).await, StatusCode::OK);
        let counts = [0; WorkerState::ALL.len()];
        let s = core.events.sample("q", &counts, 0, core.clock.now());
        let crate::events::EngineEvent::Sample(sample) = &s.event else {
            panic!("not a sample");
        };
        assert_eq!(
            sample.dispatch,
            Some(DispatchCounts {
                backlog: 12,
                in_flight: 3,
                held: 3
            })
        );
        handle.shutdown().await;
    }
}
