//! Handlers of the public listener (PROTOCOL.md §5.2 to §5.7): `/ping`,
//! `/session/create`, `/session/end` (also on the HTTP-only listener),
//! `/session/get`, `/session/health` and `/pyworker/update`.
//!
//! Status codes and bodies follow the reference where a peer can observe
//! them; malformed input the reference answered with a 500 (or half-stored)
//! is answered 422 naming the field, with nothing stored. `/session/create`
//! verifies the signature (Q1 hardened) and, by default, that `auth_data.url`
//! is this worker (Q2 hardened). A request that fails authentication has no
//! effect at all: no session is extended and nothing is counted (Q6
//! hardened). `cost` and `lifetime` are bounded ([`MAX_COST`],
//! [`MAX_SESSION_LIFETIME`]) so every number the worker reports is finite.

// Early returns carry a ready `Response` as their error: that is the point
// of those helpers, and they run once per request, so the size is moot.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use nullworker_protocol::{
    AuthData, DeleteRequestStatus, OkResponse, SessionCreateResponse, SessionEndResponse, MAX_COST,
    MAX_SESSION_LIFETIME,
};
use serde_json::{json, Map, Value};

use super::serve::ConnCutter;
use super::{empty, error, json, json_bytes, poll_after, read_json, show};
use crate::app::{App, CloseReason};
use crate::sessions::{OpenError, Session, SessionSpec};

/// Workload of one `/ping` (§13.1).
const PING_WORKLOAD: f64 = 100.0;
/// `/ping`'s `max_queue_time` (§5.2 step 6).
const PING_MAX_QUEUE_TIME: f64 = nullworker_protocol::DEFAULT_HANDLER_MAX_QUEUE_TIME;
/// The `/ping` success body.
const PING_RESULT: &[u8] = br#"{"result":{"ok":true}}"#;

fn unprocessable(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn object_body(body: &Value) -> Result<&Map<String, Value>, Response> {
    body.as_object()
        .ok_or_else(|| unprocessable(format!("body: expected a JSON object, got {}", show(body))))
}

fn u64_field(value: Option<&Value>) -> Option<u64> {
    value.and_then(Value::as_u64)
}

/// `POST /ping` (§5.2).
pub async fn ping(State(app): State<Arc<App>>, req: Request) -> Response {
    let cutter = req.extensions().get::<ConnCutter>().cloned();
    let body = match read_json(req, app.config.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let body = match object_body(&body) {
        Ok(body) => body,
        Err(resp) => return resp,
    };

    // Step 2: the reference's validation map, both keys at once.
    let mut problems = Map::new();
    let auth_data = match body.get("auth_data") {
        None | Some(Value::Null) => {
            problems.insert("auth_data".into(), json!("field missing"));
            None
        }
        Some(Value::Object(auth)) => {
            let mut missing = Map::new();
            for field in AuthData::missing_fields(auth) {
                missing.insert(field.into(), json!("missing parameter"));
            }
            if missing.is_empty() && u64_field(auth.get("request_idx")).is_none() {
                missing.insert(
                    "request_idx".into(),
                    json!("expected a non-negative integer"),
                );
            }
            if missing.is_empty() {
                Some(auth)
            } else {
                problems.insert("auth_data".into(), Value::Object(missing));
                None
            }
        }
        Some(_) => {
            problems.insert(
                "auth_data".into(),
                json!({"data": "auth_data must be a dictionary"}),
            );
            None
        }
    };
    match body.get("payload") {
        None | Some(Value::Null) => {
            problems.insert("payload".into(), json!("field missing"));
        }
        Some(Value::Object(_)) => {}
        Some(_) => {
            problems.insert(
                "payload".into(),
                json!({"data": "payload must be a dictionary"}),
            );
        }
    }
    let session_id = match body.get("session_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.as_str()),
        Some(_) => {
            problems.insert("session_id".into(), json!("expected a string or null"));
            None
        }
    };
    let Some(auth_data) = auth_data.filter(|_| problems.is_empty()) else {
        return json(StatusCode::UNPROCESSABLE_ENTITY, &Value::Object(problems));
    };
    let request_idx = u64_field(auth_data.get("request_idx")).unwrap_or_default();

    // Step 4: the session exists (410 otherwise, before the signature check
    // as in the reference).
    let session = match session_id {
        None => None,
        Some(id) => match app.sessions.get(id) {
            Some(session) => Some(session),
            None => return error(StatusCode::GONE, "invalid session"),
        },
    };

    // Step 5: signature (and our own URL). A request that fails
    // authentication has no effect at all (Q6 hardened): it extends no
    // session and is not counted, so a peer without credentials can neither
    // pin a worker nor move the load it reports.
    if let Err(err) = app.check_auth(auth_data) {
        tracing::debug!(error = %err, "ping refused");
        return empty(StatusCode::UNAUTHORIZED);
    }
    // Authenticated: the session is extended by one lifetime even if the
    // request is then refused (Q6, additive, capped from now).
    if let Some(session) = &session {
        app.sessions.extend(session, &app.clock);
    }
    // Step 6: admission by estimated queue time.
    if app.metrics.wait_time() > PING_MAX_QUEUE_TIME {
        match &session {
            Some(_) => app.metrics.in_session_rejected(PING_WORKLOAD),
            None => app
                .metrics
                .rejected(request_idx, PING_WORKLOAD, app.clock.now_epoch()),
        }
        return empty(StatusCode::TOO_MANY_REQUESTS);
    }
    let now = app.clock.now_epoch();

    // Step 7: the work (trivial); a session closing meanwhile cuts the request.
    match session {
        None => {
            let key = app.metrics.plain_admitted(request_idx, PING_WORKLOAD, now);
            app.metrics
                .plain_finished(key, DeleteRequestStatus::Success, app.clock.now_epoch());
            poll_after(json_bytes(StatusCode::OK, Bytes::from_static(PING_RESULT)))
        }
        Some(session) => {
            app.metrics.in_session_admitted(PING_WORKLOAD);
            if session.closed().is_cancelled() {
                app.metrics.in_session_cancelled(PING_WORKLOAD);
                if let Some(cutter) = cutter {
                    cutter.cut();
                }
                return error(StatusCode::GONE, "invalid session");
            }
            app.metrics.in_session_succeeded(PING_WORKLOAD);
            poll_after(json_bytes(StatusCode::OK, Bytes::from_static(PING_RESULT)))
        }
    }
}

/// A validated `/session/create` body.
fn parse_create(app: &App, body: &Value) -> Result<SessionSpec, Response> {
    let body = object_body(body)?;
    let auth = match body.get("auth_data") {
        None | Some(Value::Null) => return Err(unprocessable("auth_data: field missing")),
        Some(Value::Object(auth)) => auth,
        Some(other) => {
            return Err(unprocessable(format!(
                "auth_data: expected an object, got {}",
                show(other)
            )))
        }
    };
    // Only what identifies and authorises the session is required: `url`
    // (the signed field) and, unless UNSECURED, `signature`. The SDK's
    // debug shortcut (VAST_DEBUG_WORKER_URL) sends just `url` and
    // `request_idx`, so `cost` defaults to the SDK's default and
    // `request_idx` to 0; fields that are present must have the right type.
    let mut missing = vec![];
    if !auth.contains_key("url") {
        missing.push("url");
    }
    if !app.config.unsecured && !auth.contains_key("signature") {
        missing.push("signature");
    }
    if !missing.is_empty() {
        return Err(unprocessable(format!(
            "auth_data: missing parameter {}",
            missing.join(", ")
        )));
    }
    let cost = match auth.get("cost") {
        None => nullworker_protocol::DEFAULT_COST,
        Some(value) => match value.as_f64() {
            Some(cost) if (0.0..=MAX_COST).contains(&cost) => cost,
            _ => {
                return Err(unprocessable(format!(
                    "auth_data.cost: expected a number from 0 to {MAX_COST:e}, got {}",
                    show(value)
                )))
            }
        },
    };
    let request_idx = match auth.get("request_idx") {
        None => 0,
        Some(value) => match u64_field(Some(value)) {
            Some(idx) => idx,
            None => {
                return Err(unprocessable(format!(
                    "auth_data.request_idx: expected a non-negative integer, got {}",
                    show(value)
                )))
            }
        },
    };
    let payload = match body.get("payload") {
        None => return Err(unprocessable("payload: field missing")),
        Some(Value::Object(payload)) => payload,
        Some(other) => {
            return Err(unprocessable(format!(
                "payload: expected an object, got {}",
                show(other)
            )))
        }
    };
    let lifetime = match payload.get("lifetime") {
        None => nullworker_protocol::DEFAULT_SESSION_LIFETIME,
        Some(value) => match value.as_f64() {
            Some(l) if l > 0.0 && l <= MAX_SESSION_LIFETIME => l,
            _ => {
                return Err(unprocessable(format!(
                    "payload.lifetime: expected a positive number of seconds up to \
                     {MAX_SESSION_LIFETIME} (30 days), got {}",
                    show(value)
                )))
            }
        },
    };
    let on_close_route = match payload.get("on_close_route") {
        None | Some(Value::Null) => None,
        Some(Value::String(route)) => {
            if crate::app::resolve_callback(&app.callback_origin, route).is_none() {
                return Err(unprocessable(format!(
                    "payload.on_close_route: expected an http(s) URL or a path, got {}",
                    show(&Value::String(route.clone()))
                )));
            }
            Some(route.clone())
        }
        Some(other) => {
            return Err(unprocessable(format!(
                "payload.on_close_route: expected a string or null, got {}",
                show(other)
            )))
        }
    };
    let on_close_payload = on_close_route
        .as_ref()
        .and_then(|_| payload.get("on_close_payload").cloned());
    Ok(SessionSpec {
        auth_data: Value::Object(auth.clone()),
        cost,
        request_idx,
        lifetime,
        on_close_route,
        on_close_payload,
    })
}

/// `POST /session/create` (§5.3).
pub async fn session_create(State(app): State<Arc<App>>, req: Request) -> Response {
    let body = match read_json(req, app.config.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let spec = match parse_create(&app, &body) {
        Ok(spec) => spec,
        Err(resp) => return resp,
    };
    let auth = spec.auth_data.as_object().expect("validated as an object");
    if let Err(err) = app.check_auth(auth) {
        // No effect at all, not even on the reported load (Q6 hardened).
        tracing::info!(error = %err, request_idx = spec.request_idx, "session create refused");
        return error(StatusCode::UNAUTHORIZED, err.to_string());
    }
    let (request_idx, cost) = (spec.request_idx, spec.cost);
    match app.open_session(spec) {
        Ok(session) => poll_after(json(
            StatusCode::CREATED,
            &SessionCreateResponse {
                session_id: session.id.clone(),
                expiration: session.expiration(),
            },
        )),
        Err(OpenError::Full(_)) => {
            app.metrics
                .rejected(request_idx, cost, app.clock.now_epoch());
            empty(StatusCode::TOO_MANY_REQUESTS)
        }
        Err(OpenError::Closed) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker is shutting down",
        ),
    }
}

/// The session named by an end/get/health body, and the `session_auth` given.
enum SessionRef {
    Found(Arc<Session>, Option<Value>),
    Unknown(String),
}

fn parse_session_ref(app: &App, body: &Value) -> Result<SessionRef, Response> {
    let body = object_body(body)?;
    let id = match body.get("session_id") {
        None | Some(Value::Null) => return Err(unprocessable("missing session_id")),
        Some(Value::String(id)) if id.is_empty() => {
            return Err(unprocessable("missing session_id"))
        }
        Some(Value::String(id)) => id,
        Some(other) => {
            return Err(unprocessable(format!(
                "session_id: expected a string, got {}",
                show(other)
            )))
        }
    };
    let auth = body.get("session_auth").cloned();
    Ok(match app.sessions.get(id) {
        Some(session) => SessionRef::Found(session, auth),
        None => SessionRef::Unknown(id.clone()),
    })
}

fn auth_ok(session: &Session, auth: Option<&Value>) -> bool {
    auth.is_some_and(|auth| session.auth_matches(auth))
}

fn bad_session_auth() -> Response {
    error(StatusCode::UNAUTHORIZED, "session_auth is not valid")
}

/// `POST /session/end` (§5.4), on the public and the HTTP-only listener.
pub async fn session_end(State(app): State<Arc<App>>, req: Request) -> Response {
    let body = match read_json(req, app.config.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    match parse_session_ref(&app, &body) {
        Err(resp) => resp,
        Ok(SessionRef::Unknown(id)) => error(
            StatusCode::BAD_REQUEST,
            format!("session with id {id} not found"),
        ),
        Ok(SessionRef::Found(session, auth)) => {
            if !auth_ok(&session, auth.as_ref()) {
                return bad_session_auth();
            }
            if app.close_session(&session, CloseReason::ClientEnd).await {
                poll_after(json(
                    StatusCode::OK,
                    &SessionEndResponse {
                        ended: true,
                        removed_session: session.id.clone(),
                    },
                ))
            } else {
                error(StatusCode::GONE, "session already closed")
            }
        }
    }
}

/// `POST /session/get` (§5.5): does not extend.
pub async fn session_get(State(app): State<Arc<App>>, req: Request) -> Response {
    let body = match read_json(req, app.config.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    match parse_session_ref(&app, &body) {
        Err(resp) => resp,
        Ok(SessionRef::Unknown(_)) => error(StatusCode::BAD_REQUEST, "session does not exist"),
        Ok(SessionRef::Found(session, auth)) => {
            if !auth_ok(&session, auth.as_ref()) {
                return bad_session_auth();
            }
            poll_after(json(StatusCode::OK, &session.info()))
        }
    }
}

/// `POST /session/health` (§5.6).
pub async fn session_health(State(app): State<Arc<App>>, req: Request) -> Response {
    let body = match read_json(req, app.config.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    match parse_session_ref(&app, &body) {
        Err(resp) => resp,
        Ok(SessionRef::Unknown(_)) => json(StatusCode::OK, &OkResponse { ok: false }),
        Ok(SessionRef::Found(session, auth)) => {
            if !auth_ok(&session, auth.as_ref()) {
                return bad_session_auth();
            }
            poll_after(json(StatusCode::OK, &OkResponse { ok: true }))
        }
    }
}

/// Constant-time equality of two byte strings (length is not hidden).
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /pyworker/update` (§5.7). An empty `MASTER_TOKEN` authorises nobody (Q11 hardened).
pub async fn pyworker_update(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .unwrap_or("");
    let expected = app.config.master_token.as_str();
    if expected.is_empty() || !same_token(given.as_bytes(), expected.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let path = &app.config.force_update_file;
    match tokio::fs::File::create(path).await {
        Ok(_) => {
            tracing::info!(path = %path.display(), "update requested through /pyworker/update");
            json(StatusCode::OK, &OkResponse { ok: true })
        }
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to write file: {err}"),
        ),
    }
}
