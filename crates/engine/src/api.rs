//! The engine's HTTP surface on one port: the route service (`/route/`,
//! `/pubkey/`, `/worker_status/`, `/delete_requests/`,
//! `/get_endpoint_workers/`), the web API (`/api/v0/endptjobs/`,
//! `/api/v0/workergroups/`), engine extras (worker lists with history and
//! worker logs under `/api/v0/endptjobs/{id}/workers/`) and `GET /metrics`.
//! Every path answers with and without its trailing slash.
//!
//! Handlers validate input, turn it into registry events through
//! [`Core::apply`], and answer; errors are the enums of `http_error`, never
//! a panic. Nothing here holds the registry lock for more than one event or
//! one page of [`PAGE`] workers, and nothing here waits for the disk under it.

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
    ApiList, ApiOk, ApiResult, DeleteRequestsBody, EndpointParams,
};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::context::Core;
use crate::db::{DbError, StoredEndpoint};
use crate::endpoint::{validate_name, EndpointSettings, WorkerTemplate};
use crate::http_error::{json_response, ReportError, RouteError, WebError};
use crate::metrics::RouteAnswer;
use crate::registry::{
    EndpointGauges, Event, Reply, ReportCheck, RouteReply, RouteRequest, WorkerRow,
};
use crate::state::random_key;

type Ctx = State<Arc<Core>>;

/// Largest accepted `/route/` `cost`: the worker's own bound (a session
/// of a larger cost would get READY here and 422 at the worker), well under
/// the policy's load cap, so sums of costs stay finite and exact.
pub const MAX_COST: f64 = nullworker_protocol::MAX_COST;

/// Workers read per hold of the registry lock by the listing endpoints.
pub const PAGE: usize = 256;

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

/// Every worker row of an endpoint, read a page at a time so that the
/// registry lock is never held for O(workers). `None` if there is no such
/// endpoint.
pub fn all_worker_rows(core: &Core, endpoint_id: i64) -> Option<Vec<WorkerRow>> {
    let mut rows: Vec<WorkerRow> = Vec::new();
    loop {
        let after = rows.last().map(|r| r.wire.worker.id);
        let page = core.registry().worker_rows(endpoint_id, after, PAGE);
        let page = match (page, after) {
            (Some(page), _) => page,
            (None, None) => return None,
            // Deleted between pages: what was read is the answer.
            (None, Some(_)) => return Some(rows),
        };
        let done = page.len() < PAGE;
        rows.extend(page);
        if done {
            return Some(rows);
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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
) -> Result<(), WebError> {
    let keys = presented_keys(headers, query);
    if keys.iter().any(|k| k == &core.account_key) {
        Ok(())
    } else if keys.is_empty() {
        Err(WebError::Unauthorized(
            "missing account key: send Authorization: Bearer <account key>".into(),
        ))
    } else {
        Err(WebError::Unauthorized("invalid account key".into()))
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

/// The JSON object body of a web API call.
fn parse_args(body: &Bytes) -> Result<Map<String, Value>, WebError> {
    parse_object(body).map_err(WebError::InvalidArgs)
}

/// Checks the account key, then parses the resource id of the path.
fn authorised_id(
    core: &Core,
    headers: &HeaderMap,
    query: &Option<String>,
    raw: &str,
    what: &str,
) -> Result<i64, WebError> {
    require_account(core, headers, query)?;
    parse_id(raw, what)
}

fn parse_id(raw: &str, what: &str) -> Result<i64, WebError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| WebError::InvalidArgs(format!("Invalid {what} ID {raw:?}")))
}

fn endpoint_not_found(id: i64) -> WebError {
    WebError::NotFound(format!("endpoint {id}"))
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
    /// Engine extra: why launches fail, while they do (clients ignore
    /// unknown keys; the cause is in `status` too).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A validated `/route/` body.
struct RouteBody<'a> {
    name: Option<&'a str>,
    endpoint_id: Option<i64>,
    cost_value: &'a Value,
    cost: f64,
    request_idx: u64,
    replay_timeout: f64,
}

fn route_body(obj: &Map<String, Value>) -> Result<RouteBody<'_>, String> {
    let name = match obj.get("endpoint") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(format!(
                "endpoint: expected the endpoint name as a string, got {}",
                json_kind(other)
            ))
        }
    };
    let endpoint_id = match obj.get("endpoint_id") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(id) => Some(id),
            None => return Err(format!("endpoint_id: expected an integer, got {v}")),
        },
    };
    if name.is_none() && endpoint_id.is_none() {
        return Err("endpoint: missing; expected the endpoint name (or endpoint_id)".into());
    }
    let cost_value = match obj.get("cost") {
        None | Some(Value::Null) => return Err("cost: missing; expected a number >= 0".into()),
        Some(v) => v,
    };
    let cost = match cost_value.as_f64() {
        Some(c) if c.is_finite() && (0.0..=MAX_COST).contains(&c) => c,
        _ => {
            return Err(format!(
                "cost: expected a number from 0 to {MAX_COST:e}, got {cost_value}"
            ))
        }
    };
    let request_idx = match obj.get("request_idx") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64() {
            Some(i) => i,
            None => return Err(format!("request_idx: expected an integer >= 0, got {v}")),
        },
    };
    let replay_timeout = match obj.get("replay_timeout") {
        None | Some(Value::Null) => crate::policy::requests::DEFAULT_REPLAY_TIMEOUT,
        Some(v) => match v.as_f64() {
            Some(r) => r,
            None => {
                return Err(format!(
                    "replay_timeout: expected a number of seconds, got {v}"
                ))
            }
        },
    };
    Ok(RouteBody {
        name,
        endpoint_id,
        cost_value,
        cost,
        request_idx,
        replay_timeout,
    })
}

async fn route(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, RouteError> {
    let bad = |msg: String| {
        core.metrics.route(RouteAnswer::BadRequest);
        RouteError::BadRequest(msg)
    };
    let obj = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(bad(format!(
                "body must be a JSON object, got {}",
                json_kind(&other)
            )))
        }
        Err(err) => return Err(bad(format!("body is not valid JSON: {err}"))),
    };
    let req = route_body(&obj).map_err(bad)?;
    let mut keys = presented_keys(&headers, &query);
    if let Some(Value::String(k)) = obj.get("api_key") {
        if !k.is_empty() {
            keys.push(k.clone());
        }
    }

    let deadline = tokio::time::Instant::now() + core.config.route_hold;
    let mut idx = req.request_idx;
    loop {
        // Registered before looking, so a worker becoming ready in between
        // is not missed.
        let ready_signal = core.worker_ready.notified();
        tokio::pin!(ready_signal);
        ready_signal.as_mut().enable();
        let reply = core.apply(Event::Route(RouteRequest {
            name: req.name,
            endpoint_id: req.endpoint_id,
            keys: &keys,
            request_idx: idx,
            cost: req.cost,
            replay_timeout: req.replay_timeout,
        }));
        let Reply::Route(reply) = reply else {
            unreachable!("a route event answers with a route reply")
        };
        match reply {
            RouteReply::Unauthorized => {
                core.metrics.route(RouteAnswer::Unauthorized);
                let label = req
                    .name
                    .map(str::to_owned)
                    .or(req.endpoint_id.map(|i| i.to_string()))
                    .unwrap_or_default();
                return Err(RouteError::Unauthorized(format!(
                    "invalid api_key or endpoint {label} not found"
                )));
            }
            RouteReply::Ready {
                endpoint,
                url,
                signature,
                request_idx,
            } => {
                core.metrics.route(RouteAnswer::Ready);
                let reqnum = core.reqnum.fetch_add(1, Ordering::Relaxed);
                return Ok(json_response(
                    StatusCode::OK,
                    &Ready {
                        endpoint: &endpoint,
                        url: &url,
                        cost: req.cost_value,
                        reqnum,
                        request_idx,
                        signature: &signature,
                        request_id: uuid::Uuid::new_v4().to_string(),
                    },
                ));
            }
            RouteReply::Waiting {
                endpoint,
                request_idx,
                status,
                hold,
                reason,
                ..
            } => {
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
                return Ok(json_response(
                    StatusCode::OK,
                    &Waiting {
                        endpoint: &endpoint,
                        request_idx,
                        status,
                        reason,
                    },
                ));
            }
        }
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

fn accepted(reply: Reply) -> Result<Response, ReportError> {
    match reply {
        Reply::Accepted(Ok(())) => Ok(json_response(StatusCode::OK, &json!({ "ok": true }))),
        Reply::Accepted(Err(refusal)) => Err(refusal.into()),
        _ => unreachable!("a report event answers with an acceptance"),
    }
}

async fn worker_status(State(core): Ctx, body: Bytes) -> Result<Response, ReportError> {
    // Lenient: null or non-finite numbers are taken and bounded, so a
    // worker whose totals overflowed is not refused forever.
    let report = crate::report::parse(&body).map_err(ReportError::BadRequest)?;
    let check = core.registry().check_report(&report)?;
    // Signing takes milliseconds: done before the event, off the runtime
    // threads.
    let signature = match check {
        ReportCheck::Apply => None,
        ReportCheck::Sign => Some(
            core.signature(&report.url)
                .await
                .ok_or(ReportError::ShuttingDown)?,
        ),
    };
    accepted(core.apply(Event::Report { report, signature }))
}

async fn delete_requests(State(core): Ctx, body: Bytes) -> Result<Response, ReportError> {
    let parsed: DeleteRequestsBody = serde_json::from_slice(&body)
        .map_err(|err| ReportError::BadRequest(format!("invalid delete_requests body: {err}")))?;
    let idxs: Vec<u64> = parsed.records().iter().map(|r| r.request_idx).collect();
    accepted(core.apply(Event::RequestsDone {
        worker_id: parsed.worker_id(),
        mtoken: parsed.mtoken(),
        idxs,
    }))
}

async fn get_endpoint_workers(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, RouteError> {
    let obj = parse_object(&body).map_err(RouteError::BadRequest)?;
    let id = match obj.get("id").or_else(|| obj.get("endpoint_id")) {
        Some(v) => v.as_i64().ok_or_else(|| {
            RouteError::BadRequest(format!(
                "id: expected the endpoint id as an integer, got {v}"
            ))
        })?,
        None => {
            return Err(RouteError::BadRequest(
                "id: missing; expected the endpoint id".into(),
            ))
        }
    };
    let mut keys = presented_keys(&headers, &query);
    if let Some(Value::String(k)) = obj.get("api_key") {
        keys.push(k.clone());
    }
    let allowed = core.registry().stored(id).is_some_and(|ep| {
        keys.iter()
            .any(|k| *k == core.account_key || *k == ep.api_key)
    });
    let rows = allowed.then(|| all_worker_rows(&core, id)).flatten();
    match rows {
        Some(rows) => {
            let wire: Vec<_> = rows.into_iter().map(|r| r.wire).collect();
            Ok(json_response(StatusCode::OK, &wire))
        }
        None => Err(RouteError::Unauthorized(format!(
            "invalid api_key or endpoint {id} not found"
        ))),
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

/// An endpoint record with the engine's extras (workergroup, backoff).
fn record_json(stored: &StoredEndpoint, gauges: Option<&EndpointGauges>) -> Value {
    let s = stored;
    let record = s.settings.record(s.id, &s.name, &s.api_key, s.created_at);
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("workergroup_id".into(), json!(s.workergroup_id));
        map.insert("worker_command".into(), json!(s.template.worker_command));
        map.insert(
            "consumer_command".into(),
            json!(s.template.consumer_command),
        );
        map.insert(
            "consumer_health_path".into(),
            json!(s.template.consumer_health_path),
        );
        map.insert("worker_env".into(), json!(s.template.env));
        if let Some(g) = gauges {
            map.insert("spawn_backoff".into(), backoff_json(g));
        }
    }
    v
}

/// The endpoint's spawn backoff: consecutive failed launches, the current
/// delay and when the next launch may happen (`null` when none is held back).
fn backoff_json(g: &EndpointGauges) -> Value {
    json!({
        "failures": g.backoff_failures,
        "delay": g.backoff_delay,
        "last_failure_at": g.backoff_last_failure,
        "retry_at": g.backoff_retry_at,
        "spawns": g.spawns,
        "failed_spawns": g.spawn_failures,
        "last_error": g.last_error.as_ref().map(|(err, _)| err),
        "last_error_at": g.last_error.as_ref().map(|(_, at)| at),
    })
}

/// A store failure as the web API answers it: a full disk is 503 naming
/// the database file (the engine keeps running; retry once space is
/// freed), anything else an internal error.
fn store_failure(core: &Core, err: DbError) -> WebError {
    if err.is_disk_full() {
        tracing::error!(%err, "state database: disk full");
        WebError::Unavailable(format!(
            "no space left on device writing {}",
            core.config.db_path().display()
        ))
    } else {
        WebError::internal(err)
    }
}

fn endpoint_json(core: &Core, id: i64) -> Option<Value> {
    let reg = core.registry();
    let stored = reg.stored(id)?;
    Some(record_json(stored, reg.gauges(id).as_ref()))
}

async fn list_endpoints(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, WebError> {
    require_account(&core, &headers, &query)?;
    let ids = core.registry().endpoint_ids();
    let list: Vec<Value> = ids
        .into_iter()
        .filter_map(|id| endpoint_json(&core, id))
        .collect();
    Ok(json_response(StatusCode::OK, &ApiList::ok(list)))
}

async fn get_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let record = endpoint_json(&core, id).ok_or_else(|| endpoint_not_found(id))?;
    Ok(json_response(StatusCode::OK, &ApiResult::ok(record)))
}

/// Settings from wire parameters: the one chain wire fields → validated
/// settings → policy ([`EndpointSettings::merged`] checks the policy's
/// rules too).
fn validated_settings(
    base: &EndpointSettings,
    params: &EndpointParams,
) -> Result<EndpointSettings, WebError> {
    base.merged(params)
        .map_err(|err| WebError::InvalidArgs(err.to_string()))
}

async fn create_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, WebError> {
    require_account(&core, &headers, &query)?;
    let obj = parse_args(&body)?;
    let params = endpoint_params(&obj).map_err(WebError::InvalidArgs)?;
    let Some(name) = params.endpoint_name.clone() else {
        return Err(WebError::InvalidArgs("endpoint_name: missing".into()));
    };
    validate_name(&name).map_err(|err| WebError::InvalidArgs(err.to_string()))?;
    let settings = validated_settings(&EndpointSettings::default(), &params)?;
    let mut template = WorkerTemplate::default();
    apply_template(&obj, &mut template).map_err(WebError::InvalidArgs)?;
    let t = core.clock.now();
    let api_key = random_key(40);
    let stored = core
        .store
        .call(move |db| db.create_endpoint(&name, &api_key, &settings, &template, t))
        .await
        .ok_or_else(|| WebError::Unavailable("engine shutting down".into()))?
        .map_err(|err| match err {
            DbError::Duplicate(name) => WebError::Duplicate(format!(
                "endpoint_name: an endpoint named {name:?} already exists"
            )),
            other => store_failure(&core, other),
        })?;
    let id = stored.id;
    tracing::info!(endpoint = %stored.name, id, "endpoint created");
    core.apply(Event::EndpointCreated(stored));
    Ok(json_response(StatusCode::OK, &ApiResult::ok(id)))
}

async fn update_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let obj = parse_args(&body)?;
    let params = endpoint_params(&obj).map_err(WebError::InvalidArgs)?;
    let stored = core
        .registry()
        .stored(id)
        .cloned()
        .ok_or_else(|| endpoint_not_found(id))?;
    if let Some(name) = &params.endpoint_name {
        if *name != stored.name {
            return Err(WebError::InvalidArgs(format!(
                "endpoint_name: cannot rename {:?} to {name:?}; create a new endpoint instead",
                stored.name
            )));
        }
    }
    let settings = validated_settings(&stored.settings, &params)?;
    let mut template = stored.template.clone();
    apply_template(&obj, &mut template).map_err(WebError::InvalidArgs)?;
    let (s, t, template_changed) = (
        settings.clone(),
        template.clone(),
        template != stored.template,
    );
    core.store
        .call(move |db| {
            db.update_settings(id, &s)?;
            if template_changed {
                db.update_template(id, &t)?;
            }
            Ok::<(), DbError>(())
        })
        .await
        .ok_or_else(|| WebError::Unavailable("engine shutting down".into()))?
        .map_err(|e| store_failure(&core, e))?;
    match core.apply(Event::EndpointUpdated {
        id,
        settings,
        template,
    }) {
        Reply::Endpoint(Some(_)) => {}
        _ => return Err(endpoint_not_found(id)),
    }
    tracing::info!(endpoint = %stored.name, id, "endpoint updated");
    Ok(json_response(StatusCode::OK, &ApiOk::OK))
}

async fn delete_endpoint(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let name = core
        .registry()
        .stored(id)
        .map(|s| s.name.clone())
        .ok_or_else(|| endpoint_not_found(id))?;
    let count = match core.apply(Event::EndpointDeleted(id)) {
        Reply::Endpoint(Some(count)) => count,
        _ => return Err(endpoint_not_found(id)),
    };
    core.store
        .call(move |db| db.delete_endpoint(id))
        .await
        .ok_or_else(|| WebError::Unavailable("engine shutting down".into()))?
        .map_err(|e| store_failure(&core, e))?;
    tracing::info!(endpoint = %name, id, workers = count, "endpoint deleted");
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
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let rows = all_worker_rows(&core, id).ok_or_else(|| endpoint_not_found(id))?;
    let history = core
        .store
        .call(move |db| db.worker_history(id, 50))
        .await
        .ok_or_else(|| WebError::Unavailable("engine shutting down".into()))?
        .map_err(|e| store_failure(&core, e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "success": true, "results": rows, "history": history }),
    ))
}

async fn worker_logs(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path((id, worker_id)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "endpoint job")?;
    let worker_id = parse_id(&worker_id, "worker")?;
    let consumer =
        query_value(&query, "consumer").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"));
    let range = LogRead::from_query(
        query_value(&query, "tail").as_deref(),
        query_value(&query, "lines").as_deref(),
        query_value(&query, "from").as_deref(),
    )?;
    worker_log_range(&core, id, worker_id, consumer, range).await
}

/// The end of a worker's (or its consumer's) log as text, for the web API
/// and the dashboard: the worker must belong to endpoint `id`; `tail` is
/// the `?tail=` value, if any.
pub async fn worker_log(
    core: &Core,
    id: i64,
    worker_id: i64,
    consumer: bool,
    tail: Option<&str>,
) -> Result<Response, WebError> {
    let range = LogRead::from_query(tail, None, None)?;
    worker_log_range(core, id, worker_id, consumer, range).await
}

/// Part of a worker's (or its consumer's) log as text: the worker must
/// belong to endpoint `id`. The answer carries [`LOG_START_HEADER`] (offset
/// of its first byte in the log) and [`LOG_LENGTH_HEADER`] (the log's
/// length when read), so a follower can ask for what comes next.
pub async fn worker_log_range(
    core: &Core,
    id: i64,
    worker_id: i64,
    consumer: bool,
    range: LogRead,
) -> Result<Response, WebError> {
    let owner = core
        .store
        .call(move |db| db.worker_endpoint(worker_id))
        .await
        .ok_or_else(|| WebError::Unavailable("engine shutting down".into()))?
        .map_err(|e| store_failure(core, e))?;
    if owner != Some(id) {
        return Err(WebError::NotFound(format!(
            "worker {worker_id} of endpoint {id}"
        )));
    }
    let kind = if consumer {
        crate::supervisor::ProcKind::Consumer
    } else {
        crate::supervisor::ProcKind::Worker
    };
    let path = core.launcher.log_path(worker_id, kind);
    let text = tokio::task::spawn_blocking(move || read_log(&path, range))
        .await
        .map_err(WebError::internal)?;
    match text {
        Ok(piece) => Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (
                    header::HeaderName::from_static(LOG_START_HEADER),
                    piece.start.to_string(),
                ),
                (
                    header::HeaderName::from_static(LOG_LENGTH_HEADER),
                    piece.length.to_string(),
                ),
            ],
            piece.bytes,
        )
            .into_response()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(WebError::NotFound(format!(
            "{} for worker {worker_id}",
            kind.log_name()
        ))),
        Err(err) => Err(WebError::internal(err)),
    }
}

/// Bytes of a log answered when `?tail=` is not given.
pub const DEFAULT_LOG_TAIL: u64 = 1 << 20;
/// Most bytes of a log one call answers (`?tail=` above it is reduced to
/// it): the answer is read into memory.
pub const MAX_LOG_TAIL: u64 = 8 << 20;

/// The `?tail=` of a log request: a number of bytes, at most
/// [`MAX_LOG_TAIL`].
fn log_tail(raw: Option<&str>) -> Result<u64, WebError> {
    match raw {
        None => Ok(DEFAULT_LOG_TAIL),
        Some(v) => v.parse::<u64>().map(|n| n.min(MAX_LOG_TAIL)).map_err(|_| {
            WebError::InvalidArgs(format!("tail: expected a number of bytes, got {v:?}"))
        }),
    }
}

/// Most lines `?lines=` asks for.
pub const MAX_LOG_LINES: u64 = 1_000_000;
/// Response header: offset in the log of the answer's first byte.
pub const LOG_START_HEADER: &str = "x-log-start";
/// Response header: the log's length when it was read.
pub const LOG_LENGTH_HEADER: &str = "x-log-length";

/// Which part of a log a request reads; every variant answers at most
/// [`MAX_LOG_TAIL`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRead {
    /// The last bytes (`?tail=`, the default).
    TailBytes(u64),
    /// The last whole lines (`?lines=`; a final line without its newline
    /// counts).
    TailLines(u64),
    /// From a byte offset on (`?from=`); an offset past the end means the
    /// log was rotated (copied and truncated): the answer starts at 0.
    From(u64),
}

impl LogRead {
    /// The range of `?tail=`, `?lines=` and `?from=` (at most one).
    pub fn from_query(
        tail: Option<&str>,
        lines: Option<&str>,
        from: Option<&str>,
    ) -> Result<Self, WebError> {
        let number = |name: &str, v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| WebError::InvalidArgs(format!("{name}: expected {what}, got {v:?}")))
        };
        match (tail, lines, from) {
            (t, None, None) => Ok(Self::TailBytes(log_tail(t)?)),
            (None, Some(n), None) => {
                let what = "a number of lines from 0 to 1000000";
                let n = number("lines", n, what)?;
                if n > MAX_LOG_LINES {
                    return Err(WebError::InvalidArgs(format!(
                        "lines: expected {what}, got {n}"
                    )));
                }
                Ok(Self::TailLines(n))
            }
            (None, None, Some(offset)) => Ok(Self::From(number("from", offset, "a byte offset")?)),
            _ => Err(WebError::InvalidArgs(
                "tail, lines, from: expected at most one of them".into(),
            )),
        }
    }
}

/// A piece of a log: its bytes, where they start, the log's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPiece {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Offset of the first byte.
    pub start: u64,
    /// Length of the log when read.
    pub length: u64,
}

/// Reads `range` of the log at `path` (blocking: call off the runtime).
pub fn read_log(path: &std::path::Path, range: LogRead) -> std::io::Result<LogPiece> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut read_from = |start: u64, max: u64| -> std::io::Result<Vec<u8>> {
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        (&mut file).take(max).read_to_end(&mut buf)?;
        Ok(buf)
    };
    match range {
        LogRead::TailBytes(tail) => {
            let start = length.saturating_sub(tail.min(MAX_LOG_TAIL));
            let bytes = read_from(start, MAX_LOG_TAIL)?;
            Ok(LogPiece {
                bytes,
                start,
                length,
            })
        }
        LogRead::From(offset) => {
            let start = if offset > length { 0 } else { offset };
            let bytes = read_from(start, MAX_LOG_TAIL)?;
            Ok(LogPiece {
                bytes,
                start,
                length,
            })
        }
        LogRead::TailLines(n) => {
            // Read backwards a block at a time until `n` lines are in hand,
            // the file's start is reached, or the answer is at its cap.
            const BLOCK: u64 = 64 << 10;
            let mut start = length;
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let step = BLOCK.min(start).min(MAX_LOG_TAIL - (length - start));
                if step == 0 {
                    break;
                }
                start -= step;
                let mut block = read_from(start, step)?;
                block.extend_from_slice(&buf);
                buf = block;
                if line_breaks_before_last(&buf) >= n {
                    break;
                }
            }
            let cut = last_lines_start(&buf, n, start == 0);
            Ok(LogPiece {
                bytes: buf[cut..].to_vec(),
                start: start + cut as u64,
                length,
            })
        }
    }
}

/// Line breaks in `buf` that end a line other than its last one (a final
/// `\n` closes the last line and does not count).
fn line_breaks_before_last(buf: &[u8]) -> u64 {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    body.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Index in `buf` (the end of a log) where its last `n` lines start. A
/// final line without its newline counts as a line. When `buf` holds fewer
/// lines and does not reach the log's start (`at_start` false), its first,
/// partial line is left out unless it is all there is.
pub fn last_lines_start(buf: &[u8], n: u64, at_start: bool) -> usize {
    if n == 0 {
        return buf.len();
    }
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    if at_start {
        return 0;
    }
    match body.iter().position(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    }
}

// ---------------------------------------------------------------------------
// Web API: workergroups (one per endpoint: how its workers are launched)
// ---------------------------------------------------------------------------

fn workergroup_json(stored: &StoredEndpoint) -> Value {
    json!({
        "id": stored.workergroup_id,
        "endpoint_id": stored.id,
        "worker_command": stored.template.worker_command,
        "consumer_command": stored.template.consumer_command,
        "consumer_health_path": stored.template.consumer_health_path,
        "env": stored.template.env,
    })
}

async fn list_workergroups(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, WebError> {
    require_account(&core, &headers, &query)?;
    let list: Vec<Value> = core.registry().stored_all().map(workergroup_json).collect();
    Ok(json_response(StatusCode::OK, &ApiList::ok(list)))
}

async fn set_template(
    core: &Arc<Core>,
    endpoint_id: i64,
    obj: &Map<String, Value>,
    reset: bool,
) -> Result<Response, WebError> {
    let stored = core
        .registry()
        .stored(endpoint_id)
        .cloned()
        .ok_or_else(|| endpoint_not_found(endpoint_id))?;
    let mut template = if reset {
        WorkerTemplate::default()
    } else {
        stored.template.clone()
    };
    apply_template(obj, &mut template).map_err(WebError::InvalidArgs)?;
    let t = template.clone();
    core.store
        .call(move |db| db.update_template(endpoint_id, &t))
        .await
        .ok_or_else(|| WebError::Unavailable("engine shutting down".into()))?
        .map_err(|e| store_failure(core, e))?;
    match core.apply(Event::EndpointUpdated {
        id: endpoint_id,
        settings: stored.settings,
        template,
    }) {
        Reply::Endpoint(Some(_)) => Ok(json_response(
            StatusCode::OK,
            &json!({ "success": true, "id": stored.workergroup_id }),
        )),
        _ => Err(endpoint_not_found(endpoint_id)),
    }
}

/// The endpoint that owns workergroup `wg`, or a 404 naming it.
fn endpoint_of_workergroup(core: &Core, wg: i64) -> Result<i64, WebError> {
    core.registry()
        .endpoint_of_workergroup(wg)
        .ok_or_else(|| WebError::NotFound(format!("workergroup {wg}")))
}

async fn create_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, WebError> {
    require_account(&core, &headers, &query)?;
    let obj = parse_args(&body)?;
    let Some(endpoint_id) = obj.get("endpoint_id").and_then(Value::as_i64) else {
        return Err(WebError::InvalidArgs(
            "endpoint_id: missing; expected an integer".into(),
        ));
    };
    set_template(&core, endpoint_id, &obj, true).await
}

async fn get_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "workergroup")?;
    let ep = endpoint_of_workergroup(&core, id)?;
    let json = core
        .registry()
        .stored(ep)
        .map(workergroup_json)
        .ok_or_else(|| WebError::NotFound(format!("workergroup {id}")))?;
    Ok(json_response(StatusCode::OK, &ApiResult::ok(json)))
}

async fn update_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "workergroup")?;
    let obj = parse_args(&body)?;
    let ep = endpoint_of_workergroup(&core, id)?;
    set_template(&core, ep, &obj, false).await
}

async fn delete_workergroup(
    State(core): Ctx,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let id = authorised_id(&core, &headers, &query, &id, "workergroup")?;
    let ep = endpoint_of_workergroup(&core, id)?;
    // An endpoint always has a workergroup: deleting it restores the default.
    set_template(&core, ep, &Map::new(), true).await
}

// ---------------------------------------------------------------------------
// Metrics and fallback
// ---------------------------------------------------------------------------

async fn metrics(State(core): Ctx) -> Response {
    // O(1) per endpoint under the lock: the load gauge is the scaler's.
    let gauges: Vec<EndpointGauges> = {
        let reg = core.registry();
        reg.endpoint_ids()
            .into_iter()
            .filter_map(|id| reg.gauges(id))
            .collect()
    };
    let text = core.metrics.render(&gauges);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call, call_raw, engine, non_finite, wait_for, FakeLauncher};
    use std::time::Duration;

    /// A seed endpoint `e` on the engine; returns its id and api_key.
    async fn seed_endpoint(core: &Arc<Core>, extra: Value) -> (i64, String) {
        let mut body = json!({"endpoint_name": "e", "cold_workers": 0, "target_util": 1.0,
               "max_queue_time": 1.0, "target_queue_time": 0.5, "inactivity_timeout": 10.0});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let (status, body) = call(core, "POST", "/api/v0/endptjobs/", body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["result"].as_i64().unwrap();
        let key = core.registry().stored(id).unwrap().api_key.clone();
        (id, key)
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_with_null_or_huge_loads_is_taken_and_the_worker_stays_alive() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, fake) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let (id, key) = seed_endpoint(&core, json!({})).await;
        let route = json!({"endpoint": "e", "api_key": key, "cost": 100});
        let (_, waiting) = call(&core, "POST", "/route/", route.clone()).await;
        let (wid, mtoken) = wait_for(|| fake.launches().first().cloned()).await;
        let url = FakeLauncher::url(wid);
        let idle = json!({"id": wid, "mtoken": mtoken, "version": "1.1.0", "loadtime": 0.1,
                          "max_perf": 100.0, "url": url});
        let (status, _) = call(&core, "POST", "/worker_status/", idle).await;
        assert_eq!(status, StatusCode::OK);
        let mut poll = route.clone();
        poll["request_idx"] = waiting["request_idx"].clone();
        let (_, ready) = call(&core, "POST", "/route/", poll).await;
        assert_eq!(ready["url"], json!(url), "{ready}");
        // The worker holds the session; its totals overflowed: serde wrote
        // null, a Python worker writes Infinity, a literal may overflow.
        let bad = format!(
            r#"{{"id": {wid}, "mtoken": "{mtoken}", "version": "1.1.0", "loadtime": 0.1,
                "max_perf": 100.0, "url": "{url}", "cur_load": null, "rej_load": 1e400,
                "new_load": Infinity, "cur_perf": NaN, "working_request_idxs": [{}]}}"#,
            ready["request_idx"]
        );
        // Past stale_after (30 s) with only such reports, every 10 s.
        for _ in 0..5 {
            let (status, body) = call_raw(&core, "POST", "/worker_status/", bad.clone()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let workers = handle.workers("e").unwrap();
        assert_eq!(workers.len(), 1, "{workers:?}");
        assert_eq!(workers[0].state, crate::policy::WorkerState::Idle);
        // Nothing non-finite reaches the wire.
        let (status, list) = call(&core, "POST", "/get_endpoint_workers/", json!({"id": id})).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let mut bad_paths = Vec::new();
        non_finite(&list, "", &mut bad_paths);
        assert!(bad_paths.is_empty(), "{bad_paths:?} in {list}");
        let (_, text) = call_raw(&core, "GET", "/metrics", String::new()).await;
        for token in ["inf", "NaN", "nan"] {
            assert!(!text.contains(token), "{token} in {text}");
        }
        let (_, show) = call(
            &core,
            "GET",
            &format!("/api/v0/endptjobs/{id}/"),
            Value::Null,
        )
        .await;
        let mut bad_paths = Vec::new();
        non_finite(
            &show["result"]["spawn_backoff"]["delay"],
            "delay",
            &mut bad_paths,
        );
        assert!(bad_paths.is_empty(), "{show}");
        handle.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_disk_answers_503_backs_off_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, fake) = engine(dir.path(), |_| {}).await;
        let core = handle.core().clone();
        let (id, key) = seed_endpoint(&core, json!({})).await;
        // The state database cannot grow any more: creating endpoints
        // fails at some point, with 503 naming the cause and the file.
        core.store
            .call(|db| db.fill_disk_for_test())
            .await
            .unwrap()
            .unwrap();
        let db_path = core.config.db_path().display().to_string();
        let mut refused = None;
        for i in 0..200 {
            let body = json!({"endpoint_name": format!("more-{i}")});
            let (status, body) = call(&core, "POST", "/api/v0/endptjobs/", body).await;
            if status != StatusCode::OK {
                refused = Some((status, body));
                break;
            }
        }
        let (status, body) = refused.expect("the capped database never filled up");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(
            body["msg"],
            json!(format!("no space left on device writing {db_path}")),
            "{body}"
        );
        // Launches fail the same way (the worker's log cannot be created):
        // they back off, and the cause is in the WAITING answer and in
        // `endpoint show`.
        fake.fail_with(Some(libc::ENOSPC));
        let route = json!({"endpoint": "e", "api_key": key, "cost": 100});
        let (_, mut waiting) = call(&core, "POST", "/route/", route.clone()).await;
        wait_for(|| (fake.failures() >= 1).then_some(())).await;
        let cause = "no space left on device writing /state/workers/";
        for _ in 0..20 {
            let mut poll = route.clone();
            poll["request_idx"] = waiting["request_idx"].clone();
            waiting = call(&core, "POST", "/route/", poll).await.1;
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        let status = waiting["status"].as_str().unwrap_or_default();
        assert!(status.contains("launches failing"), "{waiting}");
        assert!(status.contains(cause), "{waiting}");
        assert!(
            waiting["reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with(cause),
            "{waiting}"
        );
        // About 11 s of retries: launches at 0, 1, 3, 7 s, not every second.
        let failed = fake.failures();
        assert!((3..=5).contains(&failed), "{failed} launches in 11 s");
        let (_, show) = call(
            &core,
            "GET",
            &format!("/api/v0/endptjobs/{id}/"),
            Value::Null,
        )
        .await;
        let backoff = &show["result"]["spawn_backoff"];
        assert_eq!(backoff["failures"], json!(failed), "{backoff}");
        assert!(
            backoff["last_error"]
                .as_str()
                .unwrap_or_default()
                .starts_with(cause),
            "{backoff}"
        );
        assert!(backoff["last_error_at"].is_number(), "{backoff}");
        handle.shutdown().await;
    }

    #[test]
    fn log_tails_are_bounded() {
        assert_eq!(log_tail(None).unwrap(), DEFAULT_LOG_TAIL);
        assert_eq!(log_tail(Some("100")).unwrap(), 100);
        assert_eq!(
            log_tail(Some("18446744073709551615")).unwrap(),
            MAX_LOG_TAIL
        );
        let err = log_tail(Some("-1")).unwrap_err().to_string();
        assert!(err.contains("tail: expected a number of bytes"), "{err}");
        // What is read is the end of the file, at most `tail` bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.log");
        std::fs::write(&path, b"0123456789").unwrap();
        let tail = |n| read_log(&path, LogRead::TailBytes(n)).unwrap();
        assert_eq!(tail(4).bytes, b"6789");
        assert_eq!((tail(4).start, tail(4).length), (6, 10));
        assert_eq!(tail(MAX_LOG_TAIL).bytes, b"0123456789");
    }

    #[test]
    fn log_ranges_come_from_one_query_parameter() {
        assert_eq!(
            LogRead::from_query(None, None, None).unwrap(),
            LogRead::TailBytes(DEFAULT_LOG_TAIL)
        );
        assert_eq!(
            LogRead::from_query(None, Some("5"), None).unwrap(),
            LogRead::TailLines(5)
        );
        assert_eq!(
            LogRead::from_query(None, None, Some("7")).unwrap(),
            LogRead::From(7)
        );
        for (t, l, f, needle) in [
            (Some("1"), Some("1"), None, "at most one"),
            (None, Some("-1"), None, "lines: expected a number of lines"),
            (None, Some("1000001"), None, "lines: expected"),
            (None, None, Some("x"), "from: expected a byte offset"),
        ] {
            let err = LogRead::from_query(t, l, f).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn last_lines_are_whole_lines() {
        // (buffer, n, reaches the log's start, expected answer)
        let table: &[(&[u8], u64, bool, &[u8])] = &[
            (b"a\nb\nc\n", 2, true, b"b\nc\n"),
            (b"a\nb\nc\n", 3, true, b"a\nb\nc\n"),
            (b"a\nb\nc\n", 9, true, b"a\nb\nc\n"),
            (b"a\nb\nc", 1, true, b"c"),
            (b"a\nb\nc", 2, true, b"b\nc"),
            (b"a\nb\n", 0, true, b""),
            (b"", 3, true, b""),
            (b"\n\n\n", 2, true, b"\n\n"),
            // Not at the start: the first, cut line is left out.
            (b"rtial\nb\nc\n", 9, false, b"b\nc\n"),
            (b"no newline at all", 2, false, b"no newline at all"),
        ];
        for (buf, n, at_start, want) in table {
            let got = &buf[last_lines_start(buf, *n, *at_start)..];
            assert_eq!(got, *want, "{:?} n={n}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn logs_are_read_by_lines_and_from_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.log");
        // Lines longer than a read block, so several blocks are needed.
        let long = "x".repeat(70_000);
        let text = format!("one\n{long}\nthree\nfour\n");
        std::fs::write(&path, &text).unwrap();
        let piece = read_log(&path, LogRead::TailLines(2)).unwrap();
        assert_eq!(piece.bytes, b"three\nfour\n");
        assert_eq!(piece.length, text.len() as u64);
        assert_eq!(piece.start, (text.len() - 11) as u64);
        let piece = read_log(&path, LogRead::TailLines(3)).unwrap();
        assert_eq!(piece.bytes, format!("{long}\nthree\nfour\n").as_bytes());
        let piece = read_log(&path, LogRead::TailLines(10)).unwrap();
        assert_eq!((piece.start, piece.bytes.len()), (0, text.len()));
        let piece = read_log(&path, LogRead::From(piece.length - 5)).unwrap();
        assert_eq!(piece.bytes, b"four\n");
        // Past the end: rotated, read from the start.
        std::fs::write(&path, "new\n").unwrap();
        let piece = read_log(&path, LogRead::From(100)).unwrap();
        assert_eq!(
            (piece.start, piece.bytes.as_slice()),
            (0, b"new\n".as_slice())
        );
    }

    #[test]
    fn route_cost_is_bounded_and_finite() {
        for (cost, ok) in [
            (json!(0), true),
            (json!(100.5), true),
            (json!(1e9), true),
            (json!(1e308), false),
            (json!(1.0e9 + 1.0), false),
            (json!(-1), false),
            (json!("5"), false),
        ] {
            let body = json!({"endpoint": "e", "cost": cost});
            let got = route_body(body.as_object().unwrap()).map(|b| b.cost);
            assert_eq!(got.is_ok(), ok, "{cost}: {got:?}");
            if let Err(msg) = got {
                assert!(
                    msg.starts_with("cost: expected a number from 0 to 1e9"),
                    "{msg}"
                );
            }
        }
    }
}
