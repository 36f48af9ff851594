//! The SDK's error type: every failure names the step that failed and why.
//!
//! Owns [`Error`] and [`Step`]; it does not decide what is retried (that is
//! the caller's policy in `endpoint` and `session`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The operation an [`Error`] happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Listing the account's endpoints on the web API (`GET /api/v0/endptjobs/`).
    ListEndpoints,
    /// Asking the route service for a worker (`POST /route/`).
    Route,
    /// Reserving the worker (`POST <worker>/session/create`).
    SessionCreate,
    /// Releasing the session (`POST <worker>/session/end`).
    SessionEnd,
    /// Reading the session (`POST <worker>/session/get`).
    SessionGet,
    /// Extending the session's lease (`POST <worker>/ping` with the session id).
    Renew,
    /// Calling a worker route (the route is named).
    WorkerRequest(String),
    /// Listing the endpoint's workers (`POST /get_endpoint_workers/`).
    ListWorkers,
    /// Creating an endpoint (`POST /api/v0/endptjobs/`).
    CreateEndpoint,
    /// Reading one endpoint (`GET /api/v0/endptjobs/{id}/`).
    GetEndpoint,
    /// Changing an endpoint (`PUT /api/v0/endptjobs/{id}/`).
    UpdateEndpoint,
    /// Deleting an endpoint (`DELETE /api/v0/endptjobs/{id}/`).
    DeleteEndpoint,
    /// Reading a local engine's worker list (`GET /api/v0/endptjobs/{id}/workers/`).
    WorkerDetails,
    /// Reading a worker's log from a local engine.
    WorkerLog,
    /// Releasing from the instance (`POST <control server>/release`).
    Release,
    /// Reading the reservation status on the instance (`GET <control server>/session`).
    SessionStatus,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ListEndpoints => f.write_str("listing endpoints"),
            Self::Route => f.write_str("routing (POST /route/)"),
            Self::SessionCreate => f.write_str("creating the session (POST /session/create)"),
            Self::SessionEnd => f.write_str("ending the session (POST /session/end)"),
            Self::SessionGet => f.write_str("reading the session (POST /session/get)"),
            Self::Renew => f.write_str("renewing the session (POST /ping)"),
            Self::WorkerRequest(route) => write!(f, "calling the worker (POST {route})"),
            Self::ListWorkers => f.write_str("listing workers (POST /get_endpoint_workers/)"),
            Self::CreateEndpoint => f.write_str("creating the endpoint (POST /api/v0/endptjobs/)"),
            Self::GetEndpoint => f.write_str("reading the endpoint (GET /api/v0/endptjobs/{id}/)"),
            Self::UpdateEndpoint => {
                f.write_str("updating the endpoint (PUT /api/v0/endptjobs/{id}/)")
            }
            Self::DeleteEndpoint => {
                f.write_str("deleting the endpoint (DELETE /api/v0/endptjobs/{id}/)")
            }
            Self::WorkerDetails => {
                f.write_str("reading the worker list (GET /api/v0/endptjobs/{id}/workers/)")
            }
            Self::WorkerLog => f.write_str("reading a worker log"),
            Self::Release => f.write_str("releasing on the instance (POST /release)"),
            Self::SessionStatus => {
                f.write_str("reading the reservation status on the instance (GET /session)")
            }
        }
    }
}

/// Everything the SDK can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid (the message names it and what was expected).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The extra root CA file could not be used.
    #[error("cannot use CA certificate file {path}: {reason}")]
    CaCert {
        /// The file given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// The peer could not be reached or did not answer in time.
    #[error("{step}: cannot reach {url}: {reason}")]
    Transport {
        /// What was being done.
        step: Step,
        /// The URL called (without the query string).
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The peer answered with a status that ends the operation.
    #[error("{step}: {url} answered HTTP {status}{}", body_suffix(.body))]
    Status {
        /// What was being done.
        step: Step,
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body (truncated).
        body: String,
    },
    /// The peer answered 2xx with a body the SDK cannot use.
    #[error("{step}: invalid reply from {url}: {reason}")]
    InvalidReply {
        /// What was being done.
        step: Step,
        /// The URL called.
        url: String,
        /// What is wrong with the reply.
        reason: String,
    },
    /// The account api key was refused by the web API.
    #[error(
        "{step}: the api key was rejected by {url} (HTTP {status}); check --api-key / VAST_API_KEY"
    )]
    Unauthorized {
        /// What was being done.
        step: Step,
        /// The URL called.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// No endpoint of that name exists on the account.
    #[error("endpoint {name:?} not found (the account has: {known})")]
    EndpointNotFound {
        /// The name asked for.
        name: String,
        /// The names that do exist, comma-separated, or `no endpoints`.
        known: String,
    },
    /// The operation did not finish within its time limit.
    #[error("{step}: gave up after {:.1} s: {detail}", .waited.as_secs_f64())]
    Timeout {
        /// What was being done when time ran out.
        step: Step,
        /// How long the operation ran.
        waited: Duration,
        /// The last thing observed (e.g. the route service's WAITING status).
        detail: String,
    },
    /// The session has ended; no more requests can be made on it.
    #[error("session {session_id} has ended ({how})")]
    SessionEnded {
        /// The session.
        session_id: String,
        /// How it ended.
        how: String,
    },
    /// The operation was cancelled by its caller.
    #[error("{step}: cancelled")]
    Cancelled {
        /// What was being done.
        step: Step,
    },
}

fn body_suffix(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return " (empty body)".to_owned();
    }
    // Vast's web API (and the local engine) explain a refusal in `msg`
    // (`{"success": false, "error": "duplicate", "msg": "..."}`): show the
    // sentence, not the JSON around it.
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
        .filter(|m| !m.trim().is_empty());
    format!(": {}", msg.as_deref().unwrap_or(body))
}

impl Error {
    /// Builds a [`Error::Transport`] from a reqwest error, keeping its causes
    /// (e.g. "connection refused") in the message.
    pub(crate) fn transport(step: Step, url: &str, err: &reqwest::Error) -> Self {
        Self::Transport {
            step,
            url: url.to_owned(),
            reason: transport_reason(err),
        }
    }
}

/// One line describing a reqwest error and its causes, without repeating the URL.
pub(crate) fn transport_reason(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    if err.is_timeout() {
        parts.push("timed out".to_owned());
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(err.to_string());
    }
    parts.join(": ")
}

/// Shortens a response body for an error message.
pub(crate) fn truncate_body(text: &str) -> String {
    const LIMIT: usize = 300;
    let text = text.trim();
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_shows_its_message_not_its_json() {
        let cases = [
            ("", " (empty body)"),
            (
                r#"{"success":false,"error":"duplicate","msg":"an endpoint named \"a\" already exists"}"#,
                r#": an endpoint named "a" already exists"#,
            ),
            (r#"{"error":"x"}"#, r#": {"error":"x"}"#),
            (r#"{"msg":""}"#, r#": {"msg":""}"#),
            ("plain text\n", ": plain text"),
        ];
        for (body, shown) in cases {
            assert_eq!(body_suffix(body), shown, "{body}");
        }
    }
}
