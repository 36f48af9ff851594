//! HTTP paths of the route service, the web API and the worker (PROTOCOL.md §1.1).
//!
//! Engine paths end with `/`; worker paths do not. Joining with a base URL is
//! done by [`crate::join_engine_path`] (engine) or plain concatenation (worker
//! URLs never end with `/`).

/// Route service: get a worker for one request.
pub const ROUTE: &str = "/route/";
/// Route service: the signing public key as PEM.
pub const PUBKEY: &str = "/pubkey/";
/// Route service: worker metrics reports.
pub const WORKER_STATUS: &str = "/worker_status/";
/// Route service: finished request notifications.
pub const DELETE_REQUESTS: &str = "/delete_requests/";
/// Route service: list an endpoint's workers.
pub const GET_ENDPOINT_WORKERS: &str = "/get_endpoint_workers/";
/// Web API: endpoints collection (`/api/v0/endptjobs/{id}/` for one).
pub const ENDPTJOBS: &str = "/api/v0/endptjobs/";

/// Worker: open a session.
pub const SESSION_CREATE: &str = "/session/create";
/// Worker: close a session (also on the HTTP-only listener).
pub const SESSION_END: &str = "/session/end";
/// Worker: read a session.
pub const SESSION_GET: &str = "/session/get";
/// Worker: probe a session.
pub const SESSION_HEALTH: &str = "/session/health";
/// Worker: request a rolling update.
pub const PYWORKER_UPDATE: &str = "/pyworker/update";
/// Null worker: the benchmarked handler route.
pub const PING: &str = "/ping";

/// Null worker control server: release every open session.
pub const RELEASE: &str = "/release";
/// Null worker control server: reservation status (our extension), `?wait=S` long-polls.
pub const SESSION_STATUS: &str = "/session";
/// Null worker control server: stub health check.
pub const HEALTH: &str = "/health";

/// Web API path of one endpoint: `/api/v0/endptjobs/{id}/`.
pub fn endptjob(id: i64) -> String {
    format!("{ENDPTJOBS}{id}/")
}
