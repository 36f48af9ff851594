//! The worker's three HTTP surfaces (PROTOCOL.md §5.1) and what they share.
//!
//! * [`public_router`]: `/ping`, `/session/*`, `/pyworker/update` on
//!   `WORKER_PORT` (HTTP or HTTPS), see [`public`].
//! * [`http_only_router`]: `/session/end` on `WORKER_HTTP_PORT`.
//! * [`control_router`]: `/release`, `/health` and `/session` (our extension)
//!   on `127.0.0.1:NULL_CONTROL_PORT`, see [`control`].
//!
//! Every error answer is JSON naming what was wrong (except the empty 401
//! and 429 bodies the wire requires, quirk Q4); unknown routes get 404 and
//! wrong methods 405, both JSON. Request bodies are read with a size cap
//! (413) and a time limit (408). Connections are served by [`serve`].

pub mod control;
pub mod public;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;

use crate::app::App;

/// Time allowed to receive a request body once its headers arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON response with `status`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, Bytes::from(bytes)),
        Err(err) => {
            tracing::error!(error = %err, "response body did not serialise");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A JSON response from pre-serialised bytes.
pub fn json_bytes(status: StatusCode, bytes: Bytes) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Marks the answer to an authenticated, successful request: the worker
/// polls for the client's next request after sending it (see
/// [`crate::busy_poll`]). Other answers (refusals, malformed input, a
/// session that does not exist) open no window, so that a peer without
/// credentials cannot keep a CPU busy.
#[derive(Debug, Clone, Copy)]
pub struct PollAfter;

/// `response` marked with [`PollAfter`].
pub fn poll_after(mut response: Response) -> Response {
    response.extensions_mut().insert(PollAfter);
    response
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &nullworker_protocol::ErrorBody::new(message))
}

/// A response with no body (the wire's 401/429 of handler routes).
pub fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

/// A short rendering of a JSON value for error messages.
pub fn show(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 64 {
        let mut cut = 61;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Largest body drained (read and discarded) after a 413, so that a
/// client still sending gets the answer instead of a connection reset.
const DRAIN_MAX: u64 = 16 * 1024 * 1024;

/// Reads and discards the rest of a refused body in the background (at most
/// [`DRAIN_MAX`] bytes, within [`BODY_TIMEOUT`]); the answer goes out at once.
fn drain_in_background(mut body: Body, already: u64) {
    tokio::spawn(async move {
        let drain = async {
            let mut total = already;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    if total > DRAIN_MAX {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(BODY_TIMEOUT, drain).await;
    });
}

/// Reads the whole body (at most `limit` bytes) and parses it as JSON.
///
/// A declared `Content-Length` over `limit` is answered 413 at once, before
/// any of the body is read; a chunked body is read until it passes `limit`.
/// In both cases the rest is drained in the background so the client sees
/// the answer. 408 when the body does not arrive within [`BODY_TIMEOUT`],
/// 400 when the connection breaks, 422 `{"error": "invalid JSON"}` when it
/// does not parse.
#[allow(clippy::result_large_err)]
pub async fn read_json(req: Request, limit: usize) -> Result<Value, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|length| length > limit as u64) {
        drain_in_background(body, 0);
        return Err(too_large());
    }
    let read = async {
        // The declared length is at most `limit` here.
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                return Ok(Err((bytes.len() + data.len()) as u64));
            }
            bytes.extend_from_slice(&data);
        }
        Ok::<_, axum::Error>(Ok(bytes))
    };
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ))
        }
        Ok(Err(err)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("request body could not be read: {err}"),
            ))
        }
        Ok(Ok(Err(read_so_far))) => {
            drain_in_background(body, read_so_far);
            return Err(too_large());
        }
        Ok(Ok(Ok(bytes))) => bytes,
    };
    serde_json::from_slice(&bytes)
        .map_err(|_| error(StatusCode::UNPROCESSABLE_ENTITY, "invalid JSON"))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

fn with_fallbacks(router: Router<Arc<App>>) -> Router<Arc<App>> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The public listener's routes.
pub fn public_router(app: Arc<App>) -> Router {
    use nullworker_protocol::paths;
    with_fallbacks(
        Router::new()
            .route(paths::PING, post(public::ping))
            .route(paths::SESSION_CREATE, post(public::session_create))
            .route(paths::SESSION_END, post(public::session_end))
            .route(paths::SESSION_GET, post(public::session_get))
            .route(paths::SESSION_HEALTH, post(public::session_health))
            .route(paths::PYWORKER_UPDATE, post(public::pyworker_update)),
    )
    .with_state(app)
}

/// The HTTP-only listener's routes: `/session/end` alone.
pub fn http_only_router(app: Arc<App>) -> Router {
    with_fallbacks(Router::new().route(
        nullworker_protocol::paths::SESSION_END,
        post(public::session_end),
    ))
    .with_state(app)
}

/// The loopback control server's routes: `POST /release`, `GET /session`
/// (our extension), and `GET /health` when the health target is the stub.
pub fn control_router(app: Arc<App>) -> Router {
    use nullworker_protocol::paths;
    let mut router = Router::new()
        .route(paths::RELEASE, post(control::release))
        .route(paths::SESSION_STATUS, get(control::session));
    if app.config.health == crate::config::HealthTarget::Stub {
        router = router.route(paths::HEALTH, get(control::health));
    }
    with_fallbacks(router).with_state(app)
}
