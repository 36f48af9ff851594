//! Handlers of the loopback control server (PROTOCOL.md §5.8): `POST /release`
//! closes every open session without `session_auth`; `GET /health` is the
//! stub health target when `BACKEND_HEALTH_URL` is unset.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nullworker_protocol::ReleaseResponse;

use super::json;
use crate::app::{App, CloseReason, CALLBACK_TIMEOUT};

/// `POST /release` (body ignored, no auth).
pub async fn release(State(app): State<Arc<App>>) -> Response {
    if !app.is_ready() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ReleaseResponse::not_released(ReleaseResponse::REASON_NOT_READY),
        );
    }
    let closed = app.close_all(CloseReason::Release, CALLBACK_TIMEOUT).await;
    if closed.is_empty() {
        json(
            StatusCode::OK,
            &ReleaseResponse::not_released(ReleaseResponse::REASON_NO_SESSION),
        )
    } else {
        json(StatusCode::OK, &ReleaseResponse::released(closed))
    }
}

/// `GET /health`: 200 `ok` (text).
pub async fn health() -> &'static str {
    "ok"
}
