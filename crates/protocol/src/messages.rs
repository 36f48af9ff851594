//! Serde types for every JSON body on the wire (PROTOCOL.md §3–§10).
//!
//! Owns the shapes exchanged between SDK, route service, web API and worker:
//! `/route/` requests and replies, `auth_data`, worker metrics reports,
//! delete-request batches, the worker session API, the null worker's control
//! server, endpoint workers and the web API envelopes. It holds no behaviour
//! beyond (de)serialisation and a few constructors; validation of values is
//! left to the component that consumes them.
//!
//! Numbers that the reference writes either as integers or as floats are
//! `f64`. Fields the reference may omit carry `#[serde(default)]`.
//!
//! No non-finite number is ever written: `serde_json` would write NaN and
//! infinities as `null`, which a peer rejects (an engine answers a report
//! carrying `"cur_load": null` with 400). Every `f64` field a worker or an
//! engine sends is serialised through [`finite_f64`], which saturates
//! instead. Producers keep their numbers bounded in the first place; this is
//! the last line of defence.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The finite `f64` written for `value`: itself when finite, `0.0` for NaN,
/// `f64::MAX` / `f64::MIN` for positive / negative infinity.
pub fn saturate_finite(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(f64::MIN, f64::MAX)
    }
}

/// Serialises an `f64` as a JSON number even when it is not finite (see
/// [`saturate_finite`]), where `serde_json` alone would write `null`.
/// Deserialisation is the plain `f64` one.
pub mod finite_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes [`super::saturate_finite`]`(value)`.
    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(super::saturate_finite(*value))
    }

    /// Reads any JSON number as `f64`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        f64::deserialize(deserializer)
    }

    /// The same for `Option<f64>` (`None` stays `null`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `None` as `null`, `Some(v)` as [`super::super::saturate_finite`]`(v)`.
        pub fn serialize<S: Serializer>(
            value: &Option<f64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                None => serializer.serialize_none(),
                Some(v) => serializer.serialize_some(&super::super::saturate_finite(*v)),
            }
        }

        /// Reads `null` or any JSON number.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<f64>, D::Error> {
            Option::<f64>::deserialize(deserializer)
        }
    }
}

/// Serialises an `f64` that holds an integral value (|x| < 2^53) as a JSON
/// integer (`100`), anything else as a float (`0.5`).
///
/// Used for `cost`, which the reference engine echoes as the client sent it
/// (the SDK default is the integer `100`). Deserialisation accepts both forms.
pub mod integral_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// 2^53: every integer below this magnitude is exact in an `f64`.
    const EXACT: f64 = 9_007_199_254_740_992.0;

    /// Writes `value` as an integer when it is integral and exact, else as a
    /// float (never `null`: see [`super::finite_f64`]).
    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT {
            serializer.serialize_i64(*value as i64)
        } else {
            serializer.serialize_f64(super::saturate_finite(*value))
        }
    }

    /// Reads any JSON number as `f64`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        f64::deserialize(deserializer)
    }
}

// ---------------------------------------------------------------------------
// auth_data and /route/ (§3.1, §6.1)
// ---------------------------------------------------------------------------

/// The `auth_data` object a worker receives: the READY `/route/` reply, verbatim.
///
/// The worker keeps the raw JSON object (it is compared with
/// [`crate::python_json_eq`] as `session_auth`); this typed view is for reading
/// the six required fields. Unknown keys are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthData {
    /// Workload units of the request; a session's load on the worker.
    #[serde(with = "integral_f64")]
    pub cost: f64,
    /// Endpoint name (not checked by the worker).
    pub endpoint: String,
    /// Per-request sequence number, unique per routed request.
    pub reqnum: u64,
    /// The client request's index.
    pub request_idx: u64,
    /// Base64 RSA signature over the canonical message of `url`.
    pub signature: String,
    /// The worker URL the request was routed to (the only signed field).
    pub url: String,
    /// Any other keys (e.g. `__request_id`), kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AuthData {
    /// The keys the framework requires in `auth_data` (§5.2 step 2), sorted.
    pub const REQUIRED_FIELDS: [&'static str; 6] = [
        "cost",
        "endpoint",
        "reqnum",
        "request_idx",
        "signature",
        "url",
    ];

    /// Required keys absent from `obj`, in [`Self::REQUIRED_FIELDS`] order.
    /// (The framework checks presence only, not types.)
    pub fn missing_fields(obj: &Map<String, Value>) -> Vec<&'static str> {
        Self::REQUIRED_FIELDS
            .iter()
            .copied()
            .filter(|k| !obj.contains_key(*k))
            .collect()
    }
}

impl From<RouteReady> for AuthData {
    fn from(r: RouteReady) -> Self {
        let mut extra = r.extra;
        extra.insert("__request_id".to_owned(), Value::String(r.request_id));
        Self {
            cost: r.cost,
            endpoint: r.endpoint,
            reqnum: r.reqnum,
            request_idx: r.request_idx,
            signature: r.signature,
            url: r.url,
            extra,
        }
    }
}

/// Body of `POST /route/` (§3.1), as the Python SDK sends it.
///
/// `None` fields are not serialised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// Endpoint name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Endpoint id, accepted instead of the name (\[docs\] preview).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<i64>,
    /// The endpoint's `api_key` (also sent as header and query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Workload units of this request (SDK default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "finite_f64::option")]
    pub cost: Option<f64>,
    /// `0` for a new request, a previously returned index to re-poll or replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_idx: Option<u64>,
    /// Seconds after which an unanswered request may be replayed (SDK sends 60.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "finite_f64::option")]
    pub replay_timeout: Option<f64>,
    /// Expected seconds per request (\[docs\] preview only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "finite_f64::option")]
    pub latency: Option<f64>,
    /// Client-supplied id (\[docs\] preview only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<i64>,
}

/// READY reply of `/route/`: a worker is assigned. The whole object becomes `auth_data`.
///
/// `cost` is written as an integer when integral (see [`integral_f64`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReady {
    /// Endpoint name.
    pub endpoint: String,
    /// Worker URL (its presence is what makes a reply READY).
    pub url: String,
    /// Echo of the client's `cost`.
    #[serde(with = "integral_f64")]
    pub cost: f64,
    /// Per-request sequence number.
    pub reqnum: u64,
    /// The client request's index.
    pub request_idx: u64,
    /// Base64 signature over the canonical message of `url`.
    pub signature: String,
    /// Opaque request id (ignored by the SDK).
    #[serde(rename = "__request_id", default)]
    pub request_id: String,
    /// Any other keys, kept as received and passed along in `auth_data`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// WAITING reply of `/route/`: no worker yet; re-poll with `request_idx`.
/// Never carries a `url` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteWaiting {
    /// Endpoint name.
    #[serde(default)]
    pub endpoint: String,
    /// Non-zero index to re-poll with.
    #[serde(default)]
    pub request_idx: u64,
    /// Free text (ignored by the SDK), e.g. `"WAITING"`.
    #[serde(default)]
    pub status: String,
}

/// Either reply of `/route/`.
///
/// Deserialisation decides as the SDK does: READY if and only if the object
/// has a `url` key (whatever its value), otherwise WAITING.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RouteResponse {
    /// A worker is assigned.
    Ready(RouteReady),
    /// No worker yet.
    Waiting(RouteWaiting),
}

impl RouteResponse {
    /// Parses a `/route/` reply, choosing the variant by the presence of `url`.
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        let is_ready = value.as_object().is_some_and(|o| o.contains_key("url"));
        if is_ready {
            serde_json::from_value(value).map(Self::Ready)
        } else {
            serde_json::from_value(value).map(Self::Waiting)
        }
    }

    /// The `request_idx` carried by either variant.
    pub fn request_idx(&self) -> u64 {
        match self {
            Self::Ready(r) => r.request_idx,
            Self::Waiting(w) => w.request_idx,
        }
    }
}

impl<'de> Deserialize<'de> for RouteResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

/// Error body of `/route/` (400/401).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteError {
    /// Human-readable reason.
    pub error_msg: String,
}

// ---------------------------------------------------------------------------
// Worker → engine reports (§3.3, §3.4)
// ---------------------------------------------------------------------------

/// Body of `POST /worker_status/` (§3.3), \[1.9.1\] field set.
///
/// Only `id` is required when parsing; every other field defaults, so older
/// (\[git\]) reports parse too. `disk_usage` is omitted when `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// `CONTAINER_ID` of the worker.
    pub id: i64,
    /// `MASTER_TOKEN` (empty when unset).
    #[serde(default)]
    pub mtoken: String,
    /// Framework protocol version, [`crate::FRAMEWORK_VERSION`].
    #[serde(default)]
    pub version: String,
    /// Seconds from start to loaded; `0.0` until loaded, then repeated (Q9).
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub loadtime: f64,
    /// Workload in flight, including open sessions.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub cur_load: f64,
    /// Workload rejected since the last successful report.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub rej_load: f64,
    /// Workload received minus cancelled since the last successful report, floored at 0.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub new_load: f64,
    /// `""` when healthy, else the sticky latest error.
    #[serde(default)]
    pub error_msg: String,
    /// Benchmarked throughput (null worker: 100.0); `0.0` until loaded.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub max_perf: f64,
    /// Workload completed since the last successful report (an amount).
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub cur_perf: f64,
    /// Always 0.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub cur_capacity: f64,
    /// Always 0.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub max_capacity: f64,
    /// Tracked in-flight items (plain requests + open sessions).
    #[serde(default)]
    pub num_requests_working: u64,
    /// Distinct `reqnum`s ever received or rejected (misspelled on the wire, Q10).
    #[serde(default)]
    pub num_requests_recieved: u64,
    /// GiB of used disk gained since the previous successful report.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub additional_disk_usage: f64,
    /// Absolute used GiB on `/` (\[1.9.1\] only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "finite_f64::option")]
    pub disk_usage: Option<f64>,
    /// `request_idx` of every tracked in-flight item.
    #[serde(default)]
    pub working_request_idxs: Vec<u64>,
    /// The worker's public URL.
    #[serde(default)]
    pub url: String,
}

/// Final status of a tracked item in `/delete_requests/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeleteRequestStatus {
    /// Completed (plain request) or closed (session).
    Success,
    /// Handler failed.
    Error,
    /// Client disconnected.
    Cancelled,
    /// Refused with 401/429.
    Rejected,
}

impl DeleteRequestStatus {
    /// The `success` flag the reference sends with this status:
    /// `true` for `Success` and `Cancelled`.
    pub fn success(self) -> bool {
        matches!(self, Self::Success | Self::Cancelled)
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Error => "Error",
            Self::Cancelled => "Cancelled",
            Self::Rejected => "Rejected",
        }
    }
}

impl fmt::Display for DeleteRequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished item in a \[1.9.1\] `/delete_requests/` batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteRecord {
    /// From the item's `auth_data`.
    pub request_idx: u64,
    /// See [`DeleteRequestStatus::success`].
    pub success: bool,
    /// Final status.
    pub status: DeleteRequestStatus,
    /// When the worker received it (sessions: create time).
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub entered_queue_at: f64,
    /// When work began; `0.0` if never.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub work_started_at: f64,
    /// When it succeeded or errored; `0.0` for cancelled/rejected.
    #[serde(default)]
    #[serde(with = "finite_f64")]
    pub work_completed_at: f64,
}

impl DeleteRecord {
    /// A record whose `success` flag is derived from `status`.
    pub fn new(
        request_idx: u64,
        status: DeleteRequestStatus,
        entered_queue_at: f64,
        work_started_at: f64,
        work_completed_at: f64,
    ) -> Self {
        Self {
            request_idx,
            success: status.success(),
            status,
            entered_queue_at,
            work_started_at,
            work_completed_at,
        }
    }
}

/// Body of `POST /delete_requests/` as our worker sends it (\[1.9.1\] shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteRequests {
    /// `CONTAINER_ID`.
    pub worker_id: i64,
    /// `MASTER_TOKEN`.
    #[serde(default)]
    pub mtoken: String,
    /// The batch.
    pub requests: Vec<DeleteRecord>,
}

/// Any accepted body of `POST /delete_requests/` (§3.4): the \[1.9.1\] batch or
/// the older \[git\] shape with a bare index list.
///
/// Deserialisation picks the shape by key: `requests` ⇒ [`Self::V191`],
/// otherwise `request_idxs` ⇒ [`Self::Legacy`]; an object with neither is an
/// error naming both.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DeleteRequestsBody {
    /// `{"worker_id", "mtoken", "requests": [...]}`.
    V191(DeleteRequests),
    /// `{"worker_id", "mtoken", "request_idxs": [...], "success": bool}`.
    Legacy {
        /// `CONTAINER_ID`.
        worker_id: i64,
        /// `MASTER_TOKEN`.
        #[serde(default)]
        mtoken: String,
        /// Finished indexes.
        request_idxs: Vec<u64>,
        /// Whether they succeeded.
        success: bool,
    },
}

/// The \[git\] `/delete_requests/` shape, used to parse [`DeleteRequestsBody::Legacy`].
#[derive(Deserialize)]
struct LegacyDeleteRequests {
    worker_id: i64,
    #[serde(default)]
    mtoken: String,
    request_idxs: Vec<u64>,
    success: bool,
}

impl<'de> Deserialize<'de> for DeleteRequestsBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        let Some(obj) = value.as_object() else {
            return Err(D::Error::custom(
                "delete_requests body must be a JSON object",
            ));
        };
        if obj.contains_key("requests") {
            serde_json::from_value(value)
                .map(Self::V191)
                .map_err(D::Error::custom)
        } else if obj.contains_key("request_idxs") {
            let legacy: LegacyDeleteRequests =
                serde_json::from_value(value).map_err(D::Error::custom)?;
            Ok(Self::Legacy {
                worker_id: legacy.worker_id,
                mtoken: legacy.mtoken,
                request_idxs: legacy.request_idxs,
                success: legacy.success,
            })
        } else {
            Err(D::Error::custom(
                "delete_requests body has neither `requests` (list of records) nor `request_idxs` (legacy list of indexes)",
            ))
        }
    }
}

impl DeleteRequestsBody {
    /// The reporting worker's id.
    pub fn worker_id(&self) -> i64 {
        match self {
            Self::V191(d) => d.worker_id,
            Self::Legacy { worker_id, .. } => *worker_id,
        }
    }

    /// The reporting worker's token.
    pub fn mtoken(&self) -> &str {
        match self {
            Self::V191(d) => &d.mtoken,
            Self::Legacy { mtoken, .. } => mtoken,
        }
    }

    /// The finished items. Legacy entries become `Success` (`success: true`)
    /// or `Error` (`success: false`) with zero timestamps.
    pub fn records(&self) -> Vec<DeleteRecord> {
        match self {
            Self::V191(d) => d.requests.clone(),
            Self::Legacy {
                request_idxs,
                success,
                ..
            } => request_idxs
                .iter()
                .map(|&request_idx| DeleteRecord {
                    request_idx,
                    success: *success,
                    status: if *success {
                        DeleteRequestStatus::Success
                    } else {
                        DeleteRequestStatus::Error
                    },
                    entered_queue_at: 0.0,
                    work_started_at: 0.0,
                    work_completed_at: 0.0,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Worker HTTP API (§5)
// ---------------------------------------------------------------------------

/// Body of a handler route such as `POST /ping` (§5.2), and of `/session/create`.
///
/// `session_id` is always serialised (`null` outside sessions), like the SDK.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerRequest {
    /// The READY `/route/` reply (or the session's `auth_data`).
    pub auth_data: Value,
    /// Handler input.
    pub payload: Value,
    /// Session this request belongs to, if any.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// `payload` of `/session/create` (§5.3). All keys are serialised (nulls when unset).
///
/// Parsing cannot tell an absent `lifetime` from an explicit `null`; a worker
/// that must distinguish them should inspect the raw JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionCreatePayload {
    /// Time to live in seconds; [`crate::DEFAULT_SESSION_LIFETIME`] when absent.
    #[serde(default)]
    pub lifetime: Option<f64>,
    /// URL to POST when the session closes.
    #[serde(default)]
    pub on_close_route: Option<String>,
    /// Body for that POST.
    #[serde(default)]
    pub on_close_payload: Option<Value>,
}

/// 201 reply of `/session/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreateResponse {
    /// 13 characters from `[A-Za-z0-9]`.
    pub session_id: String,
    /// Epoch seconds.
    #[serde(with = "finite_f64")]
    pub expiration: f64,
}

/// Body of `/session/end`, `/session/get` and `/session/health` (§5.4–§5.6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionEndRequest {
    /// The session to act on.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The `auth_data` object used at create.
    #[serde(default)]
    pub session_auth: Option<Value>,
}

/// Body of `/session/get` (same shape as [`SessionEndRequest`]).
pub type SessionGetRequest = SessionEndRequest;
/// Body of `/session/health` (same shape as [`SessionEndRequest`]).
pub type SessionHealthRequest = SessionEndRequest;

/// 200 reply of `/session/end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEndResponse {
    /// Always `true` on 200.
    pub ended: bool,
    /// The closed session's id.
    pub removed_session: String,
}

/// 200 reply of `/session/get` (§5.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub session_id: String,
    /// The `auth_data` stored at create.
    pub auth_data: Value,
    /// Seconds; also the per-request extension.
    #[serde(with = "finite_f64")]
    pub lifetime: f64,
    /// Epoch seconds.
    #[serde(with = "finite_f64")]
    pub expiration: f64,
    /// Epoch seconds.
    #[serde(with = "finite_f64")]
    pub created_at: f64,
    /// On-close callback URL.
    #[serde(default)]
    pub on_close_route: Option<String>,
    /// On-close callback body.
    #[serde(default)]
    pub on_close_payload: Option<Value>,
}

/// Reply of `/session/health` (200 `{"ok": bool}`) and of `/pyworker/update` (200 `{"ok": true}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkResponse {
    /// Whether the session is open / the update was requested.
    pub ok: bool,
}

/// Alias for the `/session/health` reply.
pub type SessionHealthResponse = OkResponse;

/// Error body used by the worker (`{"error": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message, e.g. `"invalid session"`.
    pub error: String,
}

impl ErrorBody {
    /// An error body with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
        }
    }
}

/// Reply of the null worker's `POST /release` (§5.8).
///
/// `{"released": true, "session_ids": [...]}` or `{"released": false, "reason": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// Whether at least one session was closed.
    pub released: bool,
    /// Closed sessions (only when `released`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ids: Option<Vec<String>>,
    /// Why nothing was released (only when not `released`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReleaseResponse {
    /// `reason` when the framework backend is not up yet (status 503).
    pub const REASON_NOT_READY: &'static str = "backend not ready";
    /// `reason` when there is no open session (status 200).
    pub const REASON_NO_SESSION: &'static str = "no active session";

    /// `{"released": true, "session_ids": ids}`.
    pub fn released(session_ids: Vec<String>) -> Self {
        Self {
            released: true,
            session_ids: Some(session_ids),
            reason: None,
        }
    }

    /// `{"released": false, "reason": reason}`.
    pub fn not_released(reason: impl Into<String>) -> Self {
        Self {
            released: false,
            session_ids: None,
            reason: Some(reason.into()),
        }
    }
}

/// Reply of the null worker's `GET /session` on the control server: whether
/// this worker holds a reservation now. **Our extension** (not in the
/// reference worker); `GET /session?wait=S` long-polls until one is held.
///
/// `{"held": true, "session_id": "...", "since": 1764500000.123,
/// "expiration": 1764500060.0, "open_sessions": 1}` or
/// `{"held": false, "open_sessions": 0}`. With several sessions open (a
/// worker with `max_sessions` above 1) the oldest one is described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStatusResponse {
    /// Whether at least one session is open.
    pub held: bool,
    /// The (oldest) open session's id (only when `held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When that session was opened, epoch seconds (only when `held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "finite_f64::option")]
    pub since: Option<f64>,
    /// When that session expires unless extended, epoch seconds (only when `held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "finite_f64::option")]
    pub expiration: Option<f64>,
    /// Number of open sessions.
    #[serde(default)]
    pub open_sessions: u64,
}

impl SessionStatusResponse {
    /// Largest accepted `wait` query value (seconds).
    pub const MAX_WAIT_SECS: f64 = 3600.0;

    /// `{"held": true, ...}` describing one open session.
    pub fn held(session_id: String, since: f64, expiration: f64, open_sessions: u64) -> Self {
        Self {
            held: true,
            session_id: Some(session_id),
            since: Some(since),
            expiration: Some(expiration),
            open_sessions,
        }
    }

    /// `{"held": false, "open_sessions": 0}`.
    pub fn not_held() -> Self {
        Self {
            held: false,
            session_id: None,
            since: None,
            expiration: None,
            open_sessions: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// /get_endpoint_workers/ (§3.5)
// ---------------------------------------------------------------------------

/// Body of `POST /get_endpoint_workers/` as the SDK sends it (account key in the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEndpointWorkersRequest {
    /// Endpoint id.
    pub id: i64,
    /// Account (or, in our engine, endpoint) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// One element of the bare JSON array returned by `/get_endpoint_workers/`.
///
/// Every field but `id` defaults when absent (numbers 0, `status` `"UNKNOWN"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointWorker {
    /// Worker id (= `CONTAINER_ID`).
    pub id: i64,
    /// Worker state (§11.3 log names, e.g. `"IDLE"`).
    #[serde(default = "unknown_status")]
    pub status: String,
    /// Last reported `cur_load`.
    #[serde(default)]
    pub cur_load: f64,
    /// Last reported `new_load`.
    #[serde(default)]
    pub new_load: f64,
    /// Moving average of `cur_load`.
    #[serde(default)]
    pub cur_load_rolling_avg: f64,
    /// Last reported `cur_perf`.
    #[serde(default)]
    pub cur_perf: f64,
    /// Capacity used for scaling (= `max_perf`).
    #[serde(default)]
    pub perf: f64,
    /// Last reported `max_perf`.
    #[serde(default)]
    pub measured_perf: f64,
    /// Marketplace benchmark; 0 locally.
    #[serde(default)]
    pub dlperf: f64,
    /// Marketplace reliability; 1.0 locally.
    #[serde(default)]
    pub reliability: f64,
    /// Last reported `num_requests_working`.
    #[serde(default)]
    pub reqs_working: u64,
    /// Last reported `disk_usage` (GiB).
    #[serde(default)]
    pub disk_usage: f64,
    /// Epoch when first seen loaded.
    #[serde(default)]
    pub loaded_at: f64,
    /// Epoch when the worker process started.
    #[serde(default)]
    pub started_at: f64,
    /// Worker URL.
    #[serde(default)]
    pub url: String,
    /// Epoch when the worker was created.
    #[serde(default)]
    pub created_at: f64,
}

fn unknown_status() -> String {
    "UNKNOWN".to_owned()
}

// ---------------------------------------------------------------------------
// Web API (§4, §11)
// ---------------------------------------------------------------------------

/// Endpoint state (§11.2). Lowercase on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// The engine manages recruitment and release.
    #[default]
    Active,
    /// Workers keep their state; no scaling.
    Suspended,
    /// Workers moved to inactive; nothing is routed.
    Stopped,
}

impl EndpointState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown endpoint state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint_state {0:?}: expected one of \"active\", \"suspended\", \"stopped\"")]
pub struct ParseEndpointStateError(pub String);

impl FromStr for EndpointState {
    type Err = ParseEndpointStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            "stopped" => Ok(Self::Stopped),
            other => Err(ParseEndpointStateError(other.to_owned())),
        }
    }
}

/// Body of `POST`/`PUT /api/v0/endptjobs/` (§4.3, §4.4): any subset of the
/// §11.1 parameters. `None` fields are not serialised. Values are not
/// validated here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointParams {
    /// Endpoint name (`^[a-zA-Z0-9_-]+$`, ≤ 255 chars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_name: Option<String>,
    /// Hard cap on total workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<i64>,
    /// Minimum number of loaded workers (also accepted as `min_workers`).
    #[serde(
        default,
        alias = "min_workers",
        skip_serializing_if = "Option::is_none"
    )]
    pub cold_workers: Option<i64>,
    /// Minimum active capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_load: Option<f64>,
    /// Total capacity target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cold_load: Option<f64>,
    /// Capacity = load ÷ `target_util`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_util: Option<f64>,
    /// Total capacity = active load × `cold_mult`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_mult: Option<f64>,
    /// Per-worker routing limit in seconds of expected queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_time: Option<f64>,
    /// Scale-up trigger in seconds of observed queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_queue_time: Option<f64>,
    /// Scale-to-zero gate in seconds (may be negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity_timeout: Option<f64>,
    /// Endpoint state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_state: Option<EndpointState>,
    /// Route-service deployment (e.g. `"prod"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_instance: Option<String>,
    /// Over-recruitment ratio (\[docs\] preview; accepted, ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrecruit_ratio: Option<f64>,
    /// Sent by the CLI as `"me"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// An endpoint as listed by `GET /api/v0/endptjobs/` (§4.1).
///
/// All keys are serialised (absent parameters as `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Endpoint id.
    pub id: i64,
    /// Endpoint name.
    pub endpoint_name: String,
    /// The endpoint key used for `/route/` and worker calls.
    pub api_key: String,
    /// Owner account id.
    pub user_id: i64,
    /// Epoch seconds. Parsing also accepts a numeric string and, as the
    /// older web API wrote it, an ISO 8601 text (read as `0.0`: the SDK only stores it).
    #[serde(deserialize_with = "lenient_timestamp")]
    pub created_at: f64,
    /// See [`EndpointParams::cold_workers`].
    #[serde(default, alias = "min_workers")]
    pub cold_workers: Option<i64>,
    /// See [`EndpointParams::max_workers`].
    #[serde(default)]
    pub max_workers: Option<i64>,
    /// See [`EndpointParams::min_load`].
    #[serde(default)]
    pub min_load: Option<f64>,
    /// See [`EndpointParams::min_cold_load`].
    #[serde(default)]
    pub min_cold_load: Option<f64>,
    /// See [`EndpointParams::target_util`].
    #[serde(default)]
    pub target_util: Option<f64>,
    /// See [`EndpointParams::cold_mult`].
    #[serde(default)]
    pub cold_mult: Option<f64>,
    /// See [`EndpointParams::max_queue_time`].
    #[serde(default)]
    pub max_queue_time: Option<f64>,
    /// See [`EndpointParams::target_queue_time`].
    #[serde(default)]
    pub target_queue_time: Option<f64>,
    /// See [`EndpointParams::endpoint_state`].
    #[serde(default)]
    pub endpoint_state: Option<EndpointState>,
    /// See [`EndpointParams::inactivity_timeout`].
    #[serde(default)]
    pub inactivity_timeout: Option<f64>,
    /// See [`EndpointParams::autoscaler_instance`].
    #[serde(default)]
    pub autoscaler_instance: Option<String>,
    /// Seconds until automatic deletion, if scheduled.
    #[serde(default)]
    pub auto_delete_in_seconds: Option<f64>,
    /// Whether automatic deletion is due within 24 h.
    #[serde(default)]
    pub auto_delete_due_24h: bool,
}

/// A number, or a string holding a number; other strings read as `0.0`.
fn lenient_timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(deserializer)? {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| D::Error::custom("created_at is not a finite number")),
        Value::String(s) => Ok(s.trim().parse::<f64>().unwrap_or(0.0)),
        Value::Null => Ok(0.0),
        other => Err(D::Error::custom(format!(
            "invalid created_at {other}: expected epoch seconds as a number"
        ))),
    }
}

/// `{"success": true, "results": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiList<T> {
    /// `true`.
    pub success: bool,
    /// The items.
    pub results: Vec<T>,
}

impl<T> ApiList<T> {
    /// A successful list.
    pub fn ok(results: Vec<T>) -> Self {
        Self {
            success: true,
            results,
        }
    }
}

/// `{"success": true, "result": ...}` (e.g. one endpoint, or the new id on create).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiResult<T> {
    /// `true`.
    pub success: bool,
    /// The item.
    pub result: T,
}

impl<T> ApiResult<T> {
    /// A successful result.
    pub fn ok(result: T) -> Self {
        Self {
            success: true,
            result,
        }
    }
}

/// `{"success": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiOk {
    /// `true`.
    pub success: bool,
}

impl ApiOk {
    /// `{"success": true}`.
    pub const OK: Self = Self { success: true };
}

/// Web API error body: `{"success": false, "error": "<code>", "msg": "<text>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `false`.
    pub success: bool,
    /// Short code, e.g. `"invalid_args"`.
    pub error: String,
    /// Human-readable text.
    pub msg: String,
}

impl ApiError {
    /// An error body with `success: false`.
    pub fn new(error: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            success: false,
            error: error.into(),
            msg: msg.into(),
        }
    }
}

/// Rate-limit body (429): `{"detail": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiDetail {
    /// Human-readable text.
    pub detail: String,
}
