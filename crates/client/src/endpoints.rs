//! Account-level management of endpoints on the web API (PROTOCOL.md §4):
//! read one endpoint ([`Client::endpoint_by_id`]), create one from a typed
//! [`EndpointConfig`] ([`Client::create_endpoint_with`]), change
//! ([`Client::update_endpoint`]) and delete ([`Client::delete_endpoint`])
//! it; plus the two read-only extensions a `nullworker engine` serves beside
//! the Vast API: its worker list with errors, control ports and history
//! ([`Client::worker_details`]) and worker logs ([`Client::worker_log`]).
//!
//! Listing endpoints and workers (§4.1, §3.5) lives in `client`
//! ([`Client::endpoints`], [`crate::Endpoint::workers`]). Mutating calls are
//! sent once (a retried create could create twice); reads are sent once too
//! and fail with a typed [`Error`] naming the step.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use nullworker_protocol::{paths, ApiResult, EndpointParams, EndpointRecord};

use crate::error::{truncate_body, Error, Step};
use crate::http::Reply;
use crate::Client;

/// Timeout of one web API call made here.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Largest `lines` a log request asks for (the engine's own bound).
pub const MAX_LOG_LINES: u64 = 1_000_000;
/// Largest log answer read (the engine sends at most 8 MiB at once).
pub const MAX_LOG_BODY: usize = 16 * 1024 * 1024;

/// What a create or update sends: the §11.1 parameters under their wire
/// names, plus the worker template keys a local engine also accepts (the
/// Vast web API ignores keys it does not know).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointConfig {
    /// Endpoint name and parameters (absent ones are not sent).
    #[serde(flatten)]
    pub params: EndpointParams,
    /// Worker command (local engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_command: Option<String>,
    /// Consumer command started beside each worker (local engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_command: Option<String>,
    /// Path of the consumer's health endpoint (local engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_health_path: Option<String>,
    /// Extra environment of worker and consumer (local engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_env: Option<BTreeMap<String, String>>,
}

impl EndpointConfig {
    /// Whether nothing at all would be sent.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// An endpoint as `GET /api/v0/endptjobs/{id}/` answers it: the §4.1 record
/// plus the keys a local engine adds (absent on Vast).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointDetail {
    /// The §4.1 keys.
    #[serde(flatten)]
    pub record: EndpointRecord,
    /// Local engine: the endpoint's workergroup id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workergroup_id: Option<i64>,
    /// Local engine: the worker command (`None`: the engine's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_command: Option<String>,
    /// Local engine: the consumer command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_command: Option<String>,
    /// Local engine: the consumer's health path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_health_path: Option<String>,
    /// Local engine: extra environment of workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_env: Option<BTreeMap<String, String>>,
    /// Local engine: launch failures and backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_backoff: Option<SpawnBackoff>,
}

/// A local engine's launch backoff of one endpoint (docs/engine.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpawnBackoff {
    /// Consecutive failed launches (0: no backoff).
    #[serde(default)]
    pub failures: u64,
    /// Current delay after a failed launch, seconds.
    #[serde(default)]
    pub delay: f64,
    /// Worker launches so far.
    #[serde(default)]
    pub spawns: u64,
    /// Launches that failed before the worker was ready.
    #[serde(default)]
    pub failed_spawns: u64,
    /// The last launch error, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The answer to `DELETE /api/v0/endptjobs/{id}/` (counts are those of the
/// preview spec; `None` when the server does not send them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    /// Workers stopped with the endpoint.
    #[serde(default)]
    pub deleted_workers: Option<u64>,
    /// Workers that could not be stopped.
    #[serde(default)]
    pub failed_workers: Option<u64>,
    /// The server's message.
    #[serde(default)]
    pub msg: Option<String>,
}

/// One live worker in a local engine's worker list: the §3.5 fields plus
/// what only the engine knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerDetail {
    /// The §3.5 fields.
    #[serde(flatten)]
    pub worker: nullworker_protocol::EndpointWorker,
    /// The worker's `NULL_CONTROL_PORT`.
    #[serde(default)]
    pub control_port: Option<u16>,
    /// Why it is in ERROR.
    #[serde(default)]
    pub error: Option<String>,
    /// Registered by its reports, not launched by the engine.
    #[serde(default)]
    pub external: bool,
}

/// A worker that has ended, as a local engine remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedWorker {
    /// Worker id.
    pub id: i64,
    /// Its URL.
    #[serde(default)]
    pub url: Option<String>,
    /// When it was created (epoch seconds).
    #[serde(default)]
    pub created_at: f64,
    /// Why it ended, if it has.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A local engine's worker list of one endpoint
/// (`GET /api/v0/endptjobs/{id}/workers/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerDetails {
    /// Live workers.
    #[serde(default)]
    pub results: Vec<WorkerDetail>,
    /// Recent workers, live and ended, newest first.
    #[serde(default)]
    pub history: Vec<EndedWorker>,
}

/// Which part of a worker's log to read ([`Client::worker_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRange {
    /// The last `n` whole lines.
    LastLines(u64),
    /// Everything from this byte offset on (a log shorter than the offset
    /// has been rotated: the engine answers from its start).
    From(u64),
}

/// A piece of a worker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Offset in the log of the first byte.
    pub start: u64,
    /// Length of the log when it was read.
    pub length: u64,
}

impl Client {
    fn web_url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.webserver_url)
    }

    /// One web API call with the account key; 401/403 become
    /// [`Error::Unauthorized`], transport failures [`Error::Transport`].
    async fn web_call(
        &self,
        step: &Step,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        let reply = self
            .inner
            .http
            .send(method, url, &self.inner.api_key, body, TIMEOUT)
            .await
            .map_err(|e| Error::transport(step.clone(), url, &e))?;
        if matches!(reply.status, 401 | 403) {
            return Err(Error::Unauthorized {
                step: step.clone(),
                url: url.to_owned(),
                status: reply.status,
            });
        }
        Ok(reply)
    }

    /// `GET /api/v0/endptjobs/{id}/`.
    pub async fn endpoint_by_id(&self, id: i64) -> Result<EndpointDetail, Error> {
        let step = Step::GetEndpoint;
        let url = self.web_url(&paths::endptjob(id));
        let reply = self.web_call(&step, Method::GET, &url, None).await?;
        if !reply.ok() {
            return Err(reply.status_error(step, &url));
        }
        let body = reply.json_or_invalid(step.clone(), &url)?.clone();
        let parsed: ApiResult<EndpointDetail> =
            serde_json::from_value(body).map_err(|e| Error::InvalidReply {
                step,
                url,
                reason: format!("not an endpoint record: {e}"),
            })?;
        Ok(parsed.result)
    }

    /// `POST /api/v0/endptjobs/` with a typed body; returns the new id.
    pub async fn create_endpoint_with(&self, config: &EndpointConfig) -> Result<i64, Error> {
        let body = serde_json::to_value(config)
            .map_err(|e| Error::Config(format!("endpoint configuration cannot be sent: {e}")))?;
        self.create_endpoint(&body).await
    }

    /// `PUT /api/v0/endptjobs/{id}/` with the parameters of `config` that
    /// are set (any subset, §4.4).
    pub async fn update_endpoint(&self, id: i64, config: &EndpointConfig) -> Result<(), Error> {
        let step = Step::UpdateEndpoint;
        let url = self.web_url(&paths::endptjob(id));
        let body = serde_json::to_value(config)
            .map_err(|e| Error::Config(format!("endpoint configuration cannot be sent: {e}")))?;
        let reply = self.web_call(&step, Method::PUT, &url, Some(&body)).await?;
        if !reply.ok() {
            return Err(reply.status_error(step, &url));
        }
        success_flag(&reply, &step, &url)
    }

    /// `DELETE /api/v0/endptjobs/{id}/`: the endpoint and its workers.
    pub async fn delete_endpoint(&self, id: i64) -> Result<Deleted, Error> {
        let step = Step::DeleteEndpoint;
        let url = self.web_url(&paths::endptjob(id));
        let reply = self.web_call(&step, Method::DELETE, &url, None).await?;
        if !reply.ok() {
            return Err(reply.status_error(step, &url));
        }
        success_flag(&reply, &step, &url)?;
        let body = reply.json.clone().unwrap_or(Value::Object(Map::new()));
        serde_json::from_value(body).map_err(|e| Error::InvalidReply {
            step,
            url,
            reason: format!("unexpected delete answer: {e}"),
        })
    }

    /// A local engine's worker list of endpoint `id`, with errors, control
    /// ports and recent ended workers. `Ok(None)` when the server does not
    /// serve this extension (404 or 405: the Vast web API).
    pub async fn worker_details(&self, id: i64) -> Result<Option<WorkerDetails>, Error> {
        let step = Step::WorkerDetails;
        let url = self.web_url(&format!("{}workers/", paths::endptjob(id)));
        let reply = self.web_call(&step, Method::GET, &url, None).await?;
        if matches!(reply.status, 404 | 405) {
            return Ok(None);
        }
        if !reply.ok() {
            return Err(reply.status_error(step, &url));
        }
        let body = reply.json_or_invalid(step.clone(), &url)?.clone();
        serde_json::from_value(body)
            .map(Some)
            .map_err(|e| Error::InvalidReply {
                step,
                url,
                reason: format!("not a worker list: {e}"),
            })
    }

    /// Part of the log of worker `worker_id` of endpoint `id` (its
    /// consumer's log when `consumer`), from a local engine. `Ok(None)` when
    /// there is no such log (or the server has no log route: the Vast web
    /// API).
    pub async fn worker_log(
        &self,
        id: i64,
        worker_id: i64,
        consumer: bool,
        range: LogRange,
    ) -> Result<Option<LogChunk>, Error> {
        let step = Step::WorkerLog;
        let query = match range {
            LogRange::LastLines(n) => format!("lines={}", n.min(MAX_LOG_LINES)),
            LogRange::From(offset) => format!("from={offset}"),
        };
        let consumer = if consumer { "&consumer=1" } else { "" };
        let base = self.web_url(&format!("{}workers/{worker_id}/logs/", paths::endptjob(id)));
        let url = format!("{base}?{query}{consumer}");
        let key = &self.inner.api_key;
        // A text answer with headers: the §2 conventions by hand.
        let response = self
            .inner
            .http
            .reqwest()
            .get(&url)
            .bearer_auth(key)
            .query(&[("api_key", key)])
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| Error::transport(step.clone(), &base, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // Read at most MAX_LOG_BODY: the engine caps its answers below that,
        // so more is a peer that is not one.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(piece) = response
            .chunk()
            .await
            .map_err(|e| Error::transport(step.clone(), &base, &e))?
        {
            if body.len() + piece.len() > MAX_LOG_BODY {
                return Err(Error::InvalidReply {
                    step,
                    url: base,
                    reason: format!("a log answer over {MAX_LOG_BODY} bytes"),
                });
            }
            body.extend_from_slice(&piece);
        }
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(Error::Unauthorized {
                    step,
                    url: base,
                    status,
                })
            }
            404 | 405 => return Ok(None),
            status => {
                return Err(Error::Status {
                    step,
                    url: base,
                    status,
                    body: truncate_body(&String::from_utf8_lossy(&body)),
                })
            }
        }
        let header = |name: &str| -> Result<u64, Error> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Error::InvalidReply {
                    step: step.clone(),
                    url: base.clone(),
                    reason: format!("missing or invalid {name} header; expected a byte offset"),
                })
        };
        let start = header(LOG_START_HEADER)?;
        let length = header(LOG_LENGTH_HEADER)?;
        Ok(Some(LogChunk {
            bytes: body,
            start,
            length,
        }))
    }
}

/// Header of a log answer: offset in the log of its first byte.
pub const LOG_START_HEADER: &str = "x-log-start";
/// Header of a log answer: length of the log when it was read.
pub const LOG_LENGTH_HEADER: &str = "x-log-length";

/// `Ok` unless a 2xx body says `"success": false`.
fn success_flag(reply: &Reply, step: &Step, url: &str) -> Result<(), Error> {
    match reply.json.as_ref().and_then(|v| v.get("success")) {
        Some(Value::Bool(false)) => Err(Error::InvalidReply {
            step: step.clone(),
            url: url.to_owned(),
            reason: format!("answered success: false: {}", truncate_body(&reply.text)),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_send_only_what_is_set() {
        let mut config = EndpointConfig::default();
        assert!(config.is_empty());
        assert_eq!(serde_json::to_value(&config).unwrap(), json!({}));
        config.params.min_load = Some(100.0);
        config.worker_env = Some(BTreeMap::from([("A".to_owned(), "1".to_owned())]));
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            json!({"min_load": 100.0, "worker_env": {"A": "1"}})
        );
    }

    #[test]
    fn details_read_engine_extras_and_vast_records() {
        let vast = json!({"id": 3, "endpoint_name": "e", "api_key": "k", "user_id": 1,
                          "created_at": 1.5, "cold_workers": 5});
        let detail: EndpointDetail = serde_json::from_value(vast).unwrap();
        assert_eq!(detail.record.cold_workers, Some(5));
        assert_eq!(detail.spawn_backoff, None);
        let local = json!({"id": 3, "endpoint_name": "e", "api_key": "k", "user_id": 1,
                           "created_at": 1.5, "worker_command": "x",
                           "spawn_backoff": {"failures": 2, "delay": 2.0, "spawns": 3,
                                             "failed_spawns": 2, "last_error": "boom",
                                             "retry_at": null}});
        let detail: EndpointDetail = serde_json::from_value(local).unwrap();
        assert_eq!(detail.worker_command.as_deref(), Some("x"));
        assert_eq!(detail.spawn_backoff.unwrap().failures, 2);
        let deleted: Deleted = serde_json::from_value(json!({"success": true})).unwrap();
        assert_eq!(deleted.deleted_workers, None);
    }
}
