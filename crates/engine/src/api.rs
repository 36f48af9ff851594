//! The engine's HTTP surface on one port: the route service (`/route/`,
//! `/pubkey/`, `/worker_status/`, `/delete_requests/`,
//! `/get_endpoint_workers/`), the web API (`/api/v0/endptjobs/`,
//! `/api/v0/workergroups/`), engine extras (worker lists with history and
//! worker logs under `/api/v0/endptjobs/{id}/workers/`) and `GET /metrics`.
//! Every path answers with and without its trailing slash.
//!
//! Handlers validate input, then read or change the registry and the
//! database; bad input gets a 4xx naming the field, never a panic.

// Early-return helpers hand back a ready `Response` as their error.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use nullworker_protocol::messages::{
    ApiError, ApiList, ApiOk, ApiResult, DeleteRequestsBody, EndpointParams, EndpointRecord,
    WorkerStatus,
};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::db::DbError;
use crate::endpoint::{validate_name, EndpointSettings, ParamError, WorkerTemplate};
use crate::engine::{now, Core};
use crate::metrics::RouteAnswer;
use crate::policy::worker_state::{ProcessPhase, ReportFacts};
use crate::policy::EndpointPolicy;
use crate::registry::{policy_of, Endpoint, Worker};
use crate::scaler::record_transition;
use crate::state::random_key;

type Ctx = State<Arc<Core>>;

/// Builds the router over the engine's shared context.
pub fn router(core: Arc<Core>) -> Router {
    let routes: Vec<(&str, MethodRouter<Arc<Core>>)> = vec![
        ("/route/", post(route)),
        ("/pubkey/", get(pubkey)),
        ("/worker_status/", post(worker_status)),
        ("/delete_requests/", post(delete_requests)),
        ("/get_endpoint_workers/", post(get_endpoint_workers)),
        (
            "/api/v0/endptjobs/",
            get(list_endpoints).post(create_endpoint),
        ),
        (
            "/api/v0/endptjobs/{id}/",
            get(get_endpoint)
                .put(update_endpoint)
                .delete(delete_endpoint),
        ),
        ("/api/v0/endptjobs/{id}/workers/", get(list_workers)),
        (
            "/api/v0/endptjobs/{id}/workers/{worker_id}/logs/",
            get(worker_logs),
        ),
        (
            "/api/v0/workergroups/",
            get(list_workergroups).post(create_workergroup),
        ),
        (
            "/api/v0/workergroups/{id}/",
            get(get_workergroup)
                .put(update_workergroup)
                .delete(delete_workergroup),
        ),
        ("/metrics", get(metrics)),
    ];
    let mut router = Router::new();
    for (path, handler) in routes {
        let other = match path.strip_suffix('/') {
            Some(bare) => bare.to_owned(),
            None => format!("{path}/"),
        };
        router = router.route(path, handler.clone()).route(&other, handler);
    }
    router.fallback(not_found).with_state(core)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(err) => {
            tracing::error!(%err, "cannot serialise a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn route_error(status: StatusCode, msg: impl Into<String>) -> Response {
    json_response(status, &json!({ "error_msg": msg.into() }))
}

fn api_error(status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    json_response(status, &ApiError::new(code, msg))
}

fn internal(err: impl std::fmt::Display) -> Response {
    tracing::error!(%err, "internal error");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal error; see the engine log",
    )
}

/// What a web API handler returns: its answer, or the error answer of the
/// first check that failed.
type ApiReply = Result<Response, Response>;

/// 400 `invalid_args` with a message naming the bad field.
fn invalid_args(msg: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, "invalid_args", msg)
}

/// 404 `not_found` for `what` (e.g. "endpoint 3").
fn not_found_error(what: impl std::fmt::Display) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

fn param_error(err: &ParamError) -> Response {
    invalid_args(err.to_string())
}

fn query_pairs(query: &Option<String>) -> Vec<(String, String)> {
    query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn query_value(query: &Option<String>, key: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Keys presented by a caller: bearer token and `api_key` query parameter.
fn presented_keys(headers: &HeaderMap, query: &Option<String>) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = auth.strip_prefix("Bearer ").unwrap_or(auth).trim();
        if !token.is_empty() {
            keys.push(token.to_owned());
        }
    }
    if let Some(key) = query_value(query, "api_key").filter(|k| !k.is_empty()) {
        keys.push(key);
    }
    keys
}

fn require_account(
    core: &Core,
    headers: &HeaderMap,
    query: &Option<String>,
) -> Result<(), Response> {
    let keys = presented_keys(headers, query);
    if keys.iter().any(|k| k == &core.account_key) {
        Ok(())
    } else if keys.is_empty() {
        Err(api_error(
            StatusCode::UNAUTHORIZED,
            "auth_error",
            "missing account key: send Authorization: Bearer <account key>",
        ))
    } else {
        Err(api_error(
            StatusCode::UNAUTHORIZED,
            "auth_error",
            "invalid account key",
        ))
    }
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, String> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "body must be a JSON object, got {}",
            json_kind(&other)
        )),
        Err(err) => Err(format!("body is not valid JSON: {err}")),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON object body of a web API call, or a 400 `invalid_args`.
fn parse_args(body: &Bytes) -> Result<Map<String, Value>, Response> {
    parse_object(body).map_err(invalid_args)
}

/// Checks the account key, then parses the resource id of the path.
fn authorised_id(
    core: &Core,
    headers: &HeaderMap,
    query: &Option<String>,
    raw: &str,
    what: &str,
) -> Result<i64, Response> {
    require_account(core, headers, query)?;
    parse_id(raw, what)
}

/// The policy of `settings` under the engine's configuration, validated.
fn checked_policy(core: &Core, settings: &EndpointSettings) -> Result<EndpointPolicy, Response> {
    let policy = policy_of(
        settings,
        core.config.stale_after,
        core.config.scale_down_delay,
    );
    policy
        .validate()
        .map_err(|err| invalid_args(err.to_string()))?;
    Ok(policy)
}

fn parse_id(raw: &str, what: &str) -> Result<i64, Response> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid_args(format!("Invalid {what} ID {raw:?}")))
}

// ---------------------------------------------------------------------------
// Route service
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Ready<'a> {
    endpoint: &'a str,
    url: &'a str,
    cost: &'a Value,
    reqnum: u64,
    request_idx: u64,
    signature: &'a str,
    #[serde(rename = "__request_id")]
    request_id: String,
}

#[derive(Serialize)]
struct Waiting<'a> {
    endpoint: &'a str,
    request_idx: u64,
    status: String,
}

async fn route(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let bad = |msg: String| {
        core.metrics.route(RouteAnswer::BadRequest);
        route_error(StatusCode::BAD_REQUEST, msg)
    };
    let obj = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return bad(format!(
                "body must be a JSON object, got {}",
                json_kind(&other)
            ))
        }
        Err(err) => return bad(format!("body is not valid JSON: {err}")),
    };
    let name = match obj.get("endpoint") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return bad(format!(
                "endpoint: expected the endpoint name as a string, got {}",
                json_kind(other)
            ))
        }
    };
    let endpoint_id = match obj.get("endpoint_id") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(id) => Some(id),
            None => return bad(format!("endpoint_id: expected an integer, got {v}")),
        },
    };
    if name.is_none() && endpoint_id.is_none() {
        return bad("endpoint: missing; expected the endpoint name (or endpoint_id)".into());
    }
    let cost_value = match obj.get("cost") {
        None | Some(Value::Null) => return bad("cost: missing; expected a number >= 0".into()),
        Some(v) => v,
    };
    let cost = match cost_value.as_f64() {
        Some(c) if c.is_finite() && c >= 0.0 => c,
        _ => {
            return bad(format!(
                "cost: expected a finite number >= 0, got {cost_value}"
            ))
        }
    };
    let request_idx = match obj.get("request_idx") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64() {
            Some(i) => i,
            None => return bad(format!("request_idx: expected an integer >= 0, got {v}")),
        },
    };
    let replay_timeout = match obj.get("replay_timeout") {
        None | Some(Value::Null) => crate::policy::requests::DEFAULT_REPLAY_TIMEOUT,
        Some(v) => match v.as_f64() {
            Some(r) => r,
            None => {
                return bad(format!(
                    "replay_timeout: expected a number of seconds, got {v}"
                ))
            }
        },
    };
    let mut keys = presented_keys(&headers, &query);
    if let Some(Value::String(k)) = obj.get("api_key") {
        if !k.is_empty() {
            keys.push(k.clone());
        }
    }

    let deadline = tokio::time::Instant::now() + core.config.route_hold;
    let mut idx = request_idx;
    loop {
        // Registered before looking, so a worker becoming ready in between
        // is not missed.
        let ready_signal = core.worker_ready.notified();
        tokio::pin!(ready_signal);
        ready_signal.as_mut().enable();
        let attempt = try_route(&core, name, endpoint_id, &keys, idx, cost, replay_timeout);
        match attempt {
            Attempt::Unauthorized => {
                core.metrics.route(RouteAnswer::Unauthorized);
                let label = name
                    .map(str::to_owned)
                    .or(endpoint_id.map(|i| i.to_string()))
                    .unwrap_or_default();
                return route_error(
                    StatusCode::UNAUTHORIZED,
                    format!("invalid api_key or endpoint {label} not found"),
                );
            }
            Attempt::Ready {
                endpoint,
                url,
                signature,
                request_idx,
            } => {
                core.metrics.route(RouteAnswer::Ready);
                let reqnum = core.reqnum.fetch_add(1, Ordering::Relaxed);
                return json_response(
                    StatusCode::OK,
                    &Ready {
                        endpoint: &endpoint,
                        url: &url,
                        cost: cost_value,
                        reqnum,
                        request_idx,
                        signature: &signature,
                        request_id: uuid::Uuid::new_v4().to_string(),
                    },
                );
            }
            Attempt::Waiting {
                endpoint_id,
                endpoint,
                request_idx,
                status,
                hold,
            } => {
                // Coalesced by the scaler: at most one early pass per
                // endpoint every 100 ms however many answers wait.
                core.kick_waiting(endpoint_id);
                idx = request_idx;
                let waited_enough = tokio::time::Instant::now() >= deadline;
                if hold && !waited_enough {
                    // Hold the answer while a worker may become ready, so a
                    // client whose first poll comes a second later does not
                    // wait for nothing (the SDK's /route/ timeout is 10 s).
                    tokio::select! {
                        () = &mut ready_signal => continue,
                        () = tokio::time::sleep_until(deadline) => continue,
                        () = core.shutdown.cancelled() => {}
                    }
                }
                core.metrics.route(RouteAnswer::Waiting);
                return json_response(
                    StatusCode::OK,
                    &Waiting {
                        endpoint: &endpoint,
                        request_idx,
                        status,
                    },
                );
            }
        }
    }
}

enum Attempt {
    Unauthorized,
    Ready {
        endpoint: String,
        url: Arc<str>,
        signature: Arc<str>,
        request_idx: u64,
    },
    Waiting {
        endpoint_id: i64,
        endpoint: String,
        request_idx: u64,
        status: String,
        hold: bool,
    },
}

/// One pass of §12.4 under the registry lock: O(log workers), and no
/// allocation beyond the answer's strings.
fn try_route(
    core: &Core,
    name: Option<&str>,
    endpoint_id: Option<i64>,
    keys: &[String],
    request_idx: u64,
    cost: f64,
    replay_timeout: f64,
) -> Attempt {
    let t = now();
    let mut reg = core.registry();
    let ep: Option<&mut Endpoint> = match (name, endpoint_id) {
        (Some(name), _) => reg.by_name_mut(name),
        (None, Some(id)) => reg.endpoints.get_mut(&id),
        (None, None) => None,
    };
    let ep = match ep {
        Some(ep) if keys.contains(&ep.stored.api_key) => ep,
        _ => return Attempt::Unauthorized,
    };
    ep.last_activity = ep.last_activity.max(t);
    let idx = ep.requests.route(request_idx, cost, replay_timeout, t);
    ep.apply_request_changes();
    if let Some(worker_id) = ep.choose(cost) {
        let first_wait = ep.requests.assign(idx, worker_id, cost, t);
        ep.sync_candidate(worker_id);
        let w = &ep.workers[&worker_id];
        let (url, signature) = match (&w.url, &w.signature) {
            (Some(u), Some(s)) => (u.clone(), s.clone()),
            _ => unreachable!("routable workers always have a signed URL"),
        };
        let endpoint = ep.stored.name.clone();
        drop(reg);
        if let Some(since) = first_wait {
            core.metrics.wait_to_ready(t - since);
        }
        return Attempt::Ready {
            endpoint,
            url,
            signature,
            request_idx: idx,
        };
    }
    ep.requests.mark_waiting(idx, cost, t);
    let status = ep.waiting_status();
    Attempt::Waiting {
        endpoint_id: ep.stored.id,
        endpoint: ep.stored.name.clone(),
        request_idx: idx,
        status,
        hold: ep.policy.state != crate::policy::EndpointState::Stopped,
    }
}

async fn pubkey(State(core): Ctx) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        core.pubkey_pem.clone(),
    )
        .into_response()
}

fn report_error(status: StatusCode, msg: impl Into<String>) -> Response {
    json_response(status, &json!({ "error": msg.into() }))
}

/// What a report needs before it can be applied under the lock.
enum ReportPrep {
    /// Known worker, nothing to sign.
    Ready,
    /// An external worker to register (endpoint id), or a known external
    /// worker whose URL changed: its URL must be signed first.
    Sign(Option<i64>),
}

async fn worker_status(State(core): Ctx, body: Bytes) -> Response {
    let report: WorkerStatus = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => {
            return report_error(
                StatusCode::BAD_REQUEST,
                format!("invalid worker report: {err}"),
            )
        }
    };
    let prep = match prepare_report(&core, &report) {
        Ok(prep) => prep,
        Err(resp) => return resp,
    };
    // Signing takes milliseconds: done before taking the lock, off the
    // runtime threads.
    let signature = match prep {
        ReportPrep::Ready => None,
        ReportPrep::Sign(_) => match core.signature(&report.url).await {
            Some(sig) => Some(sig),
            None => return report_error(StatusCode::SERVICE_UNAVAILABLE, "engine shutting down"),
        },
    };
    let t = now();
    let mut reg = core.registry();
    if let (ReportPrep::Sign(Some(ep_id)), Some(sig)) = (&prep, &signature) {
        if reg.worker_mut(report.id).is_none() {
            let mut w = Worker::launched(report.id, report.mtoken.clone(), t);
            w.external = true;
            w.process = ProcessPhase::Running;
            w.url = Some(report.url.as_str().into());
            w.signature = Some(sig.clone());
            tracing::info!(worker = report.id, url = %report.url, "registered an external worker");
            reg.add_worker(*ep_id, w);
        }
    }
    let Some((ep, id)) = reg.worker_mut(report.id) else {
        return report_error(
            StatusCode::NOT_FOUND,
            format!("worker {} is gone", report.id),
        );
    };
    let w = ep.workers.get_mut(&id).expect("worker_mut checked it");
    if w.mtoken != report.mtoken {
        return report_error(StatusCode::UNAUTHORIZED, "bad mtoken");
    }
    if w.external && w.url.as_deref() != Some(report.url.as_str()) && report.url.starts_with("http")
    {
        // Signed above unless the URL changed again meanwhile: then the
        // next report signs it.
        w.url = Some(report.url.as_str().into());
        w.signature = signature;
    }
    let load_before = w.reported_load() + ep.requests.pending_cost(id);
    w.last_report = Some(ReportFacts {
        at: t,
        max_perf: report.max_perf,
        loadtime: report.loadtime,
        error_msg: report.error_msg.clone(),
        version: report.version.clone(),
    });
    let idxs = report.working_request_idxs.clone();
    w.report = Some(report);
    ep.requests.observe_report(id, &idxs, t);
    ep.apply_request_changes();
    let name = ep.stored.name.clone();
    let ep_id = ep.stored.id;
    let transition = ep.refresh(id, t);
    // Held `/route/` calls only care about a worker that is routable and
    // just became so or got lighter.
    let wake = ep.is_routable(id)
        && (transition.is_some() || {
            let w = &ep.workers[&id];
            w.reported_load() + ep.requests.pending_cost(id) < load_before
        });
    drop(reg);
    core.metrics.report();
    if wake {
        core.worker_ready.notify_waiters();
    }
    if let Some(tr) = transition {
        record_transition(&core, &name, &tr);
        core.kick_endpoint(ep_id);
    }
    json_response(StatusCode::OK, &json!({ "ok": true }))
}

/// Checks a report against the registry: a known worker, an external
/// worker to register, or a refusal.
fn prepare_report(core: &Core, report: &WorkerStatus) -> Result<ReportPrep, Response> {
    let mut reg = core.registry();
    if let Some((ep, id)) = reg.worker_mut(report.id) {
        let w = &ep.workers[&id];
        let moved = w.external
            && w.mtoken == report.mtoken
            && w.url.as_deref() != Some(report.url.as_str())
            && report.url.starts_with("http");
        return Ok(if moved {
            ReportPrep::Sign(None)
        } else {
            ReportPrep::Ready
        });
    }
    // An unknown worker: an external worker registers with its
    // endpoint's api_key as MASTER_TOKEN.
    if core.config.strict {
        return Err(report_error(
            StatusCode::UNAUTHORIZED,
            format!("unknown worker id {}", report.id),
        ));
    }
    let Some(ep_id) = reg
        .endpoints
        .values()
        .find(|ep| !report.mtoken.is_empty() && ep.stored.api_key == report.mtoken)
        .map(|ep| ep.stored.id)
    else {
        return Err(report_error(
            StatusCode::UNAUTHORIZED,
            format!(
                "unknown worker id {}: an external worker must use its endpoint's api_key as MASTER_TOKEN",
                report.id
            ),
        ));
    };
    if !(report.url.starts_with("http://") || report.url.starts_with("https://")) {
        return Err(report_error(
            StatusCode::BAD_REQUEST,
            format!("url: expected an http(s) URL, got {:?}", report.url),
        ));
    }
    Ok(ReportPrep::Sign(Some(ep_id)))
}

async fn delete_requests(State(core): Ctx, body: Bytes) -> Response {
    let parsed: DeleteRequestsBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(err) => {
            return report_error(
                StatusCode::BAD_REQUEST,
                format!("invalid delete_requests body: {err}"),
            )
        }
    };
    let idxs: Vec<u64> = parsed.records().iter().map(|r| r.request_idx).collect();
    let mut reg = core.registry();
    let Some((ep, id)) = reg.worker_mut(parsed.worker_id()) else {
        return report_error(
            StatusCode::UNAUTHORIZED,
            format!("unknown worker id {}", parsed.worker_id()),
        );
    };
    if ep.workers[&id].mtoken != parsed.mtoken() {
        return report_error(StatusCode::UNAUTHORIZED, "bad mtoken");
    }
    ep.requests.observe_finished(id, &idxs);
    ep.apply_request_changes();
    drop(reg);
    core.worker_ready.notify_waiters();
    json_response(StatusCode::OK, &json!({ "ok": true }))
}

async fn get_endpoint_workers(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let obj = match parse_object(&body) {
        Ok(o) => o,
        Err(msg) => return route_error(StatusCode::BAD_REQUEST, msg),
    };
    let id = match obj.get("id").or_else(|| obj.get("endpoint_id")) {
        Some(v) => match v.as_i64() {
            Some(id) => id,
            None => {
                return route_error(
                    StatusCode::BAD_REQUEST,
                    format!("id: expected the endpoint id as an integer, got {v}"),
                )
            }
        },
        None => {
            return route_error(
                StatusCode::BAD_REQUEST,
                "id: missing; expected the endpoint id",
            )
        }
    };
    let mut keys = presented_keys(&headers, &query);
    if let Some(Value::String(k)) = obj.get("api_key") {
        keys.push(k.clone());
    }
    let reg = core.registry();
    match reg.endpoints.get(&id) {
        Some(ep)
            if keys
                .iter()
                .any(|k| *k == core.account_key || *k == ep.stored.api_key) =>
        {
            let workers = ep.wire_workers();
            drop(reg);
            json_response(StatusCode::OK, &workers)
        }
        _ => route_error(
            StatusCode::UNAUTHORIZED,
            format!("invalid api_key or endpoint {id} not found"),
        ),
    }
}

// ---------------------------------------------------------------------------
// Web API: endpoints
// ---------------------------------------------------------------------------

const INT_FIELDS: &[&str] = &["max_workers", "cold_workers", "min_workers"];
const NUM_FIELDS: &[&str] = &[
    "min_load",
    "min_cold_load",
    "target_util",
    "cold_mult",
    "max_queue_time",
    "target_queue_time",
    "inactivity_timeout",
    "overrecruit_ratio",
];
const STR_FIELDS: &[&str] = &[
    "endpoint_name",
    "autoscaler_instance",
    "client_id",
    "endpoint_state",
];

/// Type-checks the known fields so that errors name them, then parses.
fn endpoint_params(obj: &Map<String, Value>) -> Result<EndpointParams, String> {
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        let k = key.as_str();
        if INT_FIELDS.contains(&k) && value.as_i64().is_none() {
            return Err(format!("{k}: expected an integer, got {value}"));
        }
        if NUM_FIELDS.contains(&k) && value.as_f64().is_none() {
            return Err(format!("{k}: expected a number, got {value}"));
        }
        if STR_FIELDS.contains(&k) && !value.is_string() {
            return Err(format!("{k}: expected a string, got {value}"));
        }
    }
    if let Some(Value::String(state)) = obj.get("endpoint_state") {
        if !matches!(state.as_str(), "active" | "suspended" | "stopped") {
            return Err(format!(
                "endpoint_state: expected one of \"active\", \"suspended\", \"stopped\", got {state:?}"
            ));
        }
    }
    let mut clean = obj.clone();
    clean.retain(|k, v| {
        !v.is_null()
            && !matches!(
                k.as_str(),
                "worker_command"
                    | "consumer_command"
                    | "consumer_health_path"
                    | "worker_env"
                    | "env"
            )
    });
    serde_json::from_value(Value::Object(clean))
        .map_err(|e| format!("invalid endpoint parameters: {e}"))
}

/// Applies the template keys of a create/update body to `template`:
/// absent keys keep their value, `null` clears it.
fn apply_template(obj: &Map<String, Value>, template: &mut WorkerTemplate) -> Result<(), String> {
    for (key, slot, expected) in [
        (
            "worker_command",
            &mut template.worker_command,
            "a shell command line",
        ),
        (
            "consumer_command",
            &mut template.consumer_command,
            "a shell command line",
        ),
        (
            "consumer_health_path",
            &mut template.consumer_health_path,
            "a URL path such as \"/health\"",
        ),
    ] {
        match obj.get(key) {
            None => {}
            Some(Value::Null) => *slot = None,
            Some(Value::String(s)) => *slot = Some(s.clone()),
            Some(other) => {
                return Err(format!(
                    "{key}: expected {expected} as a string, got {other}"
                ))
            }
        }
    }
    for key in ["worker_env", "env"] {
        match obj.get(key) {
            None => {}
            Some(Value::Null) => template.env.clear(),
            Some(Value::Object(map)) => {
                let mut env = BTreeMap::new();
                for (k, v) in map {
                    let Some(v) = v.as_str() else {
                        return Err(format!("{key}.{k}: expected a string value, got {v}"));
                    };
                    env.insert(k.clone(), v.to_owned());
                }
                template.env = env;
            }
            Some(other) => {
                return Err(format!("{key}: expected an object of strings, got {other}"))
            }
        }
    }
    template.validate().map_err(|e| e.to_string())
}

fn record_of(ep: &Endpoint) -> EndpointRecord {
    let s = &ep.stored;
    s.settings.record(s.id, &s.name, &s.api_key, s.created_at)
}

/// An endpoint record with the engine's extras (workergroup).
fn record_with_template(ep: &Endpoint) -> Value {
    let mut v = serde_json::to_value(record_of(ep)).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("workergroup_id".into(), json!(ep.stored.workergroup_id));
        map.insert(
            "worker_command".into(),
            json!(ep.stored.template.worker_command),
        );
        map.insert(
            "consumer_command".into(),
            json!(ep.stored.template.consumer_command),
        );
        map.insert(
            "consumer_health_path".into(),
            json!(ep.stored.template.consumer_health_path),
        );
        map.insert("worker_env".into(), json!(ep.stored.template.env));
        map.insert("spawn_backoff".into(), backoff_json(ep));
    }
    v
}

/// The endpoint's spawn backoff: consecutive failed launches, the current
/// delay and when the next launch may happen (`null` when none is held back).
fn backoff_json(ep: &Endpoint) -> Value {
    let b = &ep.backoff;
    json!({
        "failures": b.failures(),
        "delay": b.delay(),
        "last_failure_at": b.last_failure(),
        "retry_at": b.retry_at(),
        "spawns": ep.spawns,
        "failed_spawns": ep.spawn_failures,
    })
}

async fn list_endpoints(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiReply {
    require_account(&core, &headers, &query)?;
    let reg = core.registry();
    let list: Vec<Value> = reg.endpoints.values().map(record_with_template).collect();
    drop(reg);
    Ok(json_response(StatusCode::OK, &ApiList::ok(list)))
}

async fn get_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let reg = core.registry();
    let ep = reg
        .endpoints
        .get(&id)
        .ok_or_else(|| not_found_error(format!("endpoint {id}")))?;
    Ok(json_response(
        StatusCode::OK,
        &ApiResult::ok(record_with_template(ep)),
    ))
}

async fn create_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiReply {
    require_account(&core, &headers, &query)?;
    let obj = parse_args(&body)?;
    let params = endpoint_params(&obj).map_err(invalid_args)?;
    let Some(name) = params.endpoint_name.clone() else {
        return Err(invalid_args("endpoint_name: missing"));
    };
    validate_name(&name).map_err(|err| param_error(&err))?;
    let settings = EndpointSettings::default()
        .merged(&params)
        .map_err(|err| param_error(&err))?;
    checked_policy(&core, &settings)?;
    let mut template = WorkerTemplate::default();
    apply_template(&obj, &mut template).map_err(invalid_args)?;
    let t = now();
    let api_key = random_key(40);
    let stored = match core
        .db
        .create_endpoint(&name, &api_key, &settings, &template, t)
    {
        Ok(s) => s,
        Err(DbError::Duplicate(_)) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "duplicate",
                format!("endpoint_name: an endpoint named {name:?} already exists"),
            ))
        }
        Err(err) => return Err(internal(err)),
    };
    let id = stored.id;
    tracing::info!(endpoint = %name, id, "endpoint created");
    let live = core.live_endpoint(stored, t);
    core.registry().insert(live);
    core.kick_endpoint(id);
    Ok(json_response(StatusCode::OK, &ApiResult::ok(id)))
}

async fn update_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let obj = parse_args(&body)?;
    let params = endpoint_params(&obj).map_err(invalid_args)?;
    let mut reg = core.registry();
    let ep = reg
        .endpoints
        .get_mut(&id)
        .ok_or_else(|| not_found_error(format!("endpoint {id}")))?;
    if let Some(name) = &params.endpoint_name {
        if *name != ep.stored.name {
            return Err(invalid_args(format!(
                "endpoint_name: cannot rename {:?} to {name:?}; create a new endpoint instead",
                ep.stored.name
            )));
        }
    }
    let settings = ep
        .stored
        .settings
        .merged(&params)
        .map_err(|err| param_error(&err))?;
    let policy = checked_policy(&core, &settings)?;
    let mut template = ep.stored.template.clone();
    apply_template(&obj, &mut template).map_err(invalid_args)?;
    core.db.update_settings(id, &settings).map_err(internal)?;
    if template != ep.stored.template {
        core.db.update_template(id, &template).map_err(internal)?;
    }
    ep.stored.settings = settings;
    ep.stored.template = template;
    ep.policy = policy;
    let ids: Vec<i64> = ep.workers.keys().copied().collect();
    for wid in ids {
        ep.sync_candidate(wid);
    }
    tracing::info!(endpoint = %ep.stored.name, id, "endpoint updated");
    drop(reg);
    core.kick_endpoint(id);
    Ok(json_response(StatusCode::OK, &ApiOk::OK))
}

async fn delete_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let removed = core.registry().remove_endpoint(id);
    let ep = removed.ok_or_else(|| not_found_error(format!("endpoint {id}")))?;
    core.db.delete_endpoint(id).map_err(internal)?;
    let count = ep.workers.len();
    for (wid, mut w) in ep.workers {
        let spawned = w.spawned.take();
        let core2 = core.clone();
        core.tasks.spawn(async move {
            if let Some(s) = spawned {
                core2.supervisor.stop(wid, &s).await;
            }
            let _ = core2.db.update_worker(
                wid,
                "DESTROYING",
                None,
                Some("endpoint deleted"),
                Some(now()),
            );
        });
    }
    tracing::info!(endpoint = %ep.stored.name, id, workers = count, "endpoint deleted");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "success": true, "deleted_workers": count, "failed_workers": 0, "msg": format!("deleted endpoint {id}") }),
    ))
}

async fn list_workers(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let live: Vec<Value> = {
        let reg = core.registry();
        let ep = reg
            .endpoints
            .get(&id)
            .ok_or_else(|| not_found_error(format!("endpoint {id}")))?;
        ep.workers
            .values()
            .map(|w| {
                let mut v = serde_json::to_value(w.wire_view(ep.requests.pending_cost(w.id)))
                    .unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    let (pid, consumer_pid) = w.pids();
                    map.insert("error".into(), json!(w.error));
                    map.insert("external".into(), json!(w.external));
                    map.insert("control_port".into(), json!(w.control_port()));
                    map.insert("consumer_port".into(), json!(w.consumer_port()));
                    map.insert("pid".into(), json!(pid));
                    map.insert("consumer_pid".into(), json!(consumer_pid));
                }
                v
            })
            .collect()
    };
    let history = core.db.worker_history(id, 50).map_err(internal)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "success": true, "results": live, "history": history }),
    ))
}

async fn worker_logs(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path((id, worker_id)): Path<(String, String)>,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let worker_id = parse_id(&worker_id, "worker")?;
    match core.db.worker_endpoint(worker_id).map_err(internal)? {
        Some(ep) if ep == id => {}
        _ => {
            return Err(not_found_error(format!(
                "worker {worker_id} of endpoint {id}"
            )))
        }
    }
    let consumer =
        query_value(&query, "consumer").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"));
    let tail: u64 = match query_value(&query, "tail") {
        None => 1 << 20,
        Some(v) => v
            .parse()
            .map_err(|_| invalid_args(format!("tail: expected a number of bytes, got {v:?}")))?,
    };
    let kind = if consumer {
        crate::supervisor::ProcKind::Consumer
    } else {
        crate::supervisor::ProcKind::Worker
    };
    let path = core.supervisor.log_path(worker_id, kind);
    let text = tokio::task::spawn_blocking(move || read_tail(&path, tail))
        .await
        .map_err(internal)?;
    match text {
        Ok(bytes) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            bytes,
        )
            .into_response()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {} for worker {worker_id}", kind.log_name()),
        )),
        Err(err) => Err(internal(err)),
    }
}

fn read_tail(path: &std::path::Path, tail: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > tail {
        file.seek(SeekFrom::Start(len - tail))?;
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

// ---------------------------------------------------------------------------
// Web API: workergroups (one per endpoint: how its workers are launched)
// ---------------------------------------------------------------------------

fn workergroup_json(ep: &Endpoint) -> Value {
    json!({
        "id": ep.stored.workergroup_id,
        "endpoint_id": ep.stored.id,
        "worker_command": ep.stored.template.worker_command,
        "consumer_command": ep.stored.template.consumer_command,
        "consumer_health_path": ep.stored.template.consumer_health_path,
        "env": ep.stored.template.env,
    })
}

async fn list_workergroups(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiReply {
    require_account(&core, &headers, &query)?;
    let reg = core.registry();
    let list: Vec<Value> = reg.endpoints.values().map(workergroup_json).collect();
    Ok(json_response(StatusCode::OK, &ApiList::ok(list)))
}

fn set_template(core: &Core, endpoint_id: i64, obj: &Map<String, Value>, reset: bool) -> ApiReply {
    let mut reg = core.registry();
    let ep = reg
        .endpoints
        .get_mut(&endpoint_id)
        .ok_or_else(|| not_found_error(format!("endpoint {endpoint_id}")))?;
    let mut template = if reset {
        WorkerTemplate::default()
    } else {
        ep.stored.template.clone()
    };
    apply_template(obj, &mut template).map_err(invalid_args)?;
    core.db
        .update_template(endpoint_id, &template)
        .map_err(internal)?;
    ep.stored.template = template;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "success": true, "id": ep.stored.workergroup_id }),
    ))
}

/// The endpoint that owns workergroup `wg`, or a 404 naming it.
fn endpoint_of_workergroup(core: &Core, wg: i64) -> Result<i64, Response> {
    core.registry()
        .endpoints
        .values()
        .find(|ep| ep.stored.workergroup_id == wg)
        .map(|ep| ep.stored.id)
        .ok_or_else(|| not_found_error(format!("workergroup {wg}")))
}

async fn create_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiReply {
    require_account(&core, &headers, &query)?;
    let obj = parse_args(&body)?;
    let Some(endpoint_id) = obj.get("endpoint_id").and_then(Value::as_i64) else {
        return Err(invalid_args("endpoint_id: missing; expected an integer"));
    };
    set_template(&core, endpoint_id, &obj, true)
}

async fn get_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "workergroup")?;
    let reg = core.registry();
    let ep = reg
        .endpoints
        .values()
        .find(|ep| ep.stored.workergroup_id == id)
        .ok_or_else(|| not_found_error(format!("workergroup {id}")))?;
    Ok(json_response(
        StatusCode::OK,
        &ApiResult::ok(workergroup_json(ep)),
    ))
}

async fn update_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "workergroup")?;
    let obj = parse_args(&body)?;
    let ep = endpoint_of_workergroup(&core, id)?;
    set_template(&core, ep, &obj, false)
}

async fn delete_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> ApiReply {
    let id = authorised_id(&core, &headers, &query, &id, "workergroup")?;
    let ep = endpoint_of_workergroup(&core, id)?;
    // An endpoint always has a workergroup: deleting it restores the default.
    set_template(&core, ep, &Map::new(), true)
}

// ---------------------------------------------------------------------------
// Metrics and fallback
// ---------------------------------------------------------------------------

async fn metrics(State(core): Ctx) -> Response {
    let text = {
        let reg = core.registry();
        core.metrics.render(&reg)
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "error": format!("not found: {}", uri.path()) }),
    )
}
