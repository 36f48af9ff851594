//! The HTTP errors of the engine, one `thiserror` enum per surface, each
//! answering with its surface's body shape: the route service
//! (`{"error_msg": ...}`), worker reports (`{"error": ...}`) and the web
//! API (`{"success": false, "error": <code>, "msg": ...}`). Internal errors
//! are logged in full and answered briefly.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use nullworker_protocol::messages::ApiError;
use serde::Serialize;
use serde_json::json;

use crate::registry::Refusal;

/// A JSON answer.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(err) => {
            tracing::error!(%err, "cannot serialise a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// An error of `/route/` and `/get_endpoint_workers/`.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Malformed body; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// Bad key or no such endpoint.
    #[error("{0}")]
    Unauthorized(String),
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        let status = match self {
            RouteError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RouteError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        };
        json_response(status, &json!({ "error_msg": self.to_string() }))
    }
}

/// An error of `/worker_status/` and `/delete_requests/`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Malformed body; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// Unknown worker or bad token.
    #[error("{0}")]
    Unauthorized(String),
    /// The worker was removed.
    #[error("worker {0} is gone")]
    Gone(i64),
    /// The engine is stopping.
    #[error("engine shutting down")]
    ShuttingDown,
}

impl From<Refusal> for ReportError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::BadRequest(m) => ReportError::BadRequest(m),
            Refusal::Unauthorized(m) => ReportError::Unauthorized(m),
            Refusal::Gone(id) => ReportError::Gone(id),
        }
    }
}

impl IntoResponse for ReportError {
    fn into_response(self) -> Response {
        let status = match self {
            ReportError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ReportError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ReportError::Gone(_) => StatusCode::NOT_FOUND,
            ReportError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        json_response(status, &json!({ "error": self.to_string() }))
    }
}

/// An error of the web API (`/api/v0/...`).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Missing or wrong account key.
    #[error("{0}")]
    Unauthorized(String),
    /// A bad argument; the message names it and what was expected.
    #[error("{0}")]
    InvalidArgs(String),
    /// An endpoint of that name exists.
    #[error("{0}")]
    Duplicate(String),
    /// No such resource (the message names it).
    #[error("{0} not found")]
    NotFound(String),
    /// The engine cannot do it now (the message names the cause).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an I/O failure; logged, answered briefly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl WebError {
    /// An internal error from anything displayable.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        WebError::Internal(err.to_string())
    }

    fn status_code(&self) -> StatusCode {
        match self {
            WebError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebError::InvalidArgs(_) | WebError::Duplicate(_) => StatusCode::BAD_REQUEST,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            WebError::Unauthorized(_) => "auth_error",
            WebError::InvalidArgs(_) => "invalid_args",
            WebError::Duplicate(_) => "duplicate",
            WebError::NotFound(_) => "not_found",
            WebError::Unavailable(_) => "unavailable",
            WebError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let msg = match &self {
            WebError::Internal(err) => {
                tracing::error!(%err, "internal error");
                "internal error; see the engine log".to_owned()
            }
            other => other.to_string(),
        };
        json_response(self.status_code(), &ApiError::new(self.code(), msg))
    }
}
