//! [`Client`] (account level: find endpoints) and [`Endpoint`] (route, reserve,
//! call workers, list workers), following PROTOCOL.md §2, §3.1, §3.5, §4.1 and §7.
//!
//! Owns the routing loop: `/route/` polled while WAITING with jittered
//! exponential backoff, then the worker call, re-routed with the same
//! `request_idx` after a retryable status or a transport error. Sessions
//! themselves (lease renewal, close) live in `session`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use nullworker_protocol::{paths, ApiList, EndpointRecord, EndpointWorker, RouteResponse};

use crate::backoff;
use crate::config::{normalise_base_url, ClientBuilder, RetryPolicy};
use crate::error::{truncate_body, Error, Step};
use crate::http::{Failure, Http, Reply};
use crate::retry;
use crate::session::{Session, SessionOptions};

/// Timeout of one `/route/` call.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one web API call.
const WEB_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of each question asked to the engine after a worker was lost.
const LOSS_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of `/session/create` on the worker.
pub(crate) const SESSION_CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Something observed while a request or reservation waits for a worker,
/// reported through [`Progress`] callbacks.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteEvent {
    /// `/route/` answered WAITING (`status` is the engine's free text).
    Waiting {
        /// The engine's status text.
        status: String,
        /// The request's index at the engine.
        request_idx: u64,
    },
    /// `/route/` answered READY with this worker.
    Assigned {
        /// The worker's URL.
        url: String,
    },
    /// The worker refused with a retryable status (e.g. 429 when it already
    /// holds a session); the request is routed again after a backoff.
    Rejected {
        /// The worker's URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A call failed at the transport level or with a retryable status and
    /// will be retried after a backoff.
    Retrying {
        /// What failed.
        reason: String,
    },
}

/// `Ok` when `cost` is a number from 0 to [`nullworker_protocol::MAX_COST`],
/// which workers accept (they refuse a larger `auth_data.cost`).
pub(crate) fn check_cost(what: &str, cost: f64) -> Result<(), Error> {
    if (0.0..=nullworker_protocol::MAX_COST).contains(&cost) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {cost:?} is invalid; expected a number from 0 to {:e}",
            nullworker_protocol::MAX_COST
        )))
    }
}

/// Callback receiving [`RouteEvent`]s.
pub type Progress = Arc<dyn Fn(&RouteEvent) + Send + Sync>;

/// Options of [`Endpoint::request`].
#[derive(Clone)]
pub struct RequestOptions {
    /// Workload units of the request (default 100).
    pub cost: f64,
    /// Total time allowed, routing included (default: unlimited).
    pub timeout: Option<Duration>,
    /// Timeout of the worker call itself (default 600 s).
    pub worker_timeout: Duration,
    /// Whether retryable statuses from the worker are retried (default true).
    pub retry: bool,
    /// Attempts allowed in total when retrying (default: unlimited).
    pub max_attempts: Option<u32>,
    /// Cancels the request while it waits (default: never).
    pub cancel: CancellationToken,
    /// Receives routing events.
    pub progress: Option<Progress>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            cost: nullworker_protocol::DEFAULT_COST,
            timeout: None,
            worker_timeout: Duration::from_secs(600),
            retry: true,
            max_attempts: None,
            cancel: CancellationToken::new(),
            progress: None,
        }
    }
}

/// A worker's answer to a request.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body as JSON (`{"error": <text>}` when the body is not JSON).
    pub body: Value,
    /// Body as text.
    pub text: String,
    /// The worker that answered.
    pub url: String,
    /// The request's index at the engine (0 inside a session).
    pub request_idx: u64,
    /// The `auth_data` sent to the worker.
    pub auth_data: Value,
    /// Time from the first `/route/` to the answer.
    pub latency: Duration,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub(crate) fn from_reply(
        reply: Reply,
        url: String,
        request_idx: u64,
        auth_data: Value,
        latency: Duration,
    ) -> Self {
        let body = reply
            .json
            .clone()
            .unwrap_or_else(|| json!({ "error": reply.text }));
        Self {
            status: reply.status,
            body,
            text: reply.text,
            url,
            request_idx,
            auth_data,
            latency,
        }
    }
}

pub(crate) struct ClientInner {
    pub http: Http,
    pub api_key: String,
    pub autoscaler_url: String,
    pub webserver_url: String,
    pub retry: RetryPolicy,
}

/// An account-level client: finds endpoints by name.
///
/// Cheap to clone. Built with [`Client::builder`]; nothing is fetched or
/// downloaded until an endpoint is looked up.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("autoscaler_url", &self.inner.autoscaler_url)
            .field("webserver_url", &self.inner.webserver_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client for the account whose key is `api_key`
    /// (the **account** key, as in the Python SDK; endpoint keys are looked up).
    pub fn builder(api_key: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(api_key)
    }

    pub(crate) fn from_builder(b: ClientBuilder) -> Result<Self, Error> {
        let autoscaler_url = normalise_base_url(
            "autoscaler url",
            b.autoscaler_url
                .as_deref()
                .unwrap_or(b.instance.autoscaler_url()),
        )?;
        let webserver_url = normalise_base_url(
            "webserver url",
            b.webserver_url
                .as_deref()
                .unwrap_or(b.instance.webserver_url()),
        )?;
        let r = &b.retry;
        if r.web_attempts == 0 || r.route_attempts == 0 {
            return Err(Error::Config(
                "retry attempts must be at least 1".to_owned(),
            ));
        }
        let http = Http::new(b.ca_cert.as_deref())?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                api_key: b.api_key,
                autoscaler_url,
                webserver_url,
                retry: b.retry,
            }),
        })
    }

    /// The route service base URL in use.
    pub fn autoscaler_url(&self) -> &str {
        &self.inner.autoscaler_url
    }

    /// The web API base URL in use.
    pub fn webserver_url(&self) -> &str {
        &self.inner.webserver_url
    }

    /// Every endpoint of the account (`GET /api/v0/endptjobs/?client_id=me`).
    pub async fn endpoints(&self) -> Result<Vec<EndpointRecord>, Error> {
        self.endpoints_reporting(None).await
    }

    /// [`Self::endpoints`], telling `progress` about each failed attempt
    /// ([`RouteEvent::Retrying`]) before the retry. With the default policy
    /// the call gives up after 5 attempts, 12 to 16 s after the first.
    pub async fn endpoints_reporting(
        &self,
        progress: Option<&Progress>,
    ) -> Result<Vec<EndpointRecord>, Error> {
        let step = Step::ListEndpoints;
        let url = format!("{}{}", self.inner.webserver_url, paths::ENDPTJOBS);
        let full = format!("{url}?client_id=me");
        let reply = self
            .inner
            .http
            .send_with_retries(
                step.clone(),
                Method::GET,
                &full,
                &self.inner.api_key,
                None,
                WEB_TIMEOUT,
                self.inner.retry.web_attempts,
                self.inner.retry.max_poll_interval,
                progress,
            )
            .await?;
        if matches!(reply.status, 401 | 403) {
            return Err(Error::Unauthorized {
                step,
                url,
                status: reply.status,
            });
        }
        if !reply.ok() {
            return Err(reply.status_error(step, &url));
        }
        let body = reply.json_or_invalid(step.clone(), &url)?;
        let list: ApiList<EndpointRecord> =
            serde_json::from_value(body.clone()).map_err(|e| Error::InvalidReply {
                step,
                url,
                reason: format!("not an endpoint list: {e}"),
            })?;
        Ok(list.results)
    }

    /// Creates an endpoint (`POST /api/v0/endptjobs/`) and returns its id.
    /// `body` holds `endpoint_name` and any endpoint parameters (PROTOCOL.md
    /// §4.3); a local engine also accepts its worker template keys.
    pub async fn create_endpoint(&self, body: &Value) -> Result<i64, Error> {
        let step = Step::CreateEndpoint;
        let url = format!("{}{}", self.inner.webserver_url, paths::ENDPTJOBS);
        let reply = self
            .inner
            .http
            .send(
                Method::POST,
                &url,
                &self.inner.api_key,
                Some(body),
                WEB_TIMEOUT,
            )
            .await
            .map_err(|e| Error::transport(step.clone(), &url, &e))?;
        if matches!(reply.status, 401 | 403) {
            return Err(Error::Unauthorized {
                step,
                url,
                status: reply.status,
            });
        }
        if !reply.ok() {
            return Err(reply.status_error(step, &url));
        }
        reply
            .json
            .as_ref()
            .and_then(|v| v.get("result"))
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::InvalidReply {
                step,
                url,
                reason: format!(
                    "expected {{\"success\": true, \"result\": <id>}}, got {:?}",
                    truncate_body(&reply.text)
                ),
            })
    }

    /// The endpoint called `name` (exact match, first wins).
    pub async fn endpoint(&self, name: &str) -> Result<Endpoint, Error> {
        self.endpoint_reporting(name, None).await
    }

    /// [`Self::endpoint`], telling `progress` about each failed attempt of
    /// the lookup before it is retried (see [`Self::endpoints_reporting`]).
    pub async fn endpoint_reporting(
        &self,
        name: &str,
        progress: Option<&Progress>,
    ) -> Result<Endpoint, Error> {
        let endpoints = self.endpoints_reporting(progress).await?;
        let known = if endpoints.is_empty() {
            "no endpoints".to_owned()
        } else {
            endpoints
                .iter()
                .map(|e| e.endpoint_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let record = endpoints
            .into_iter()
            .find(|e| e.endpoint_name == name)
            .ok_or_else(|| Error::EndpointNotFound {
                name: name.to_owned(),
                known,
            })?;
        Ok(Endpoint {
            client: self.inner.clone(),
            record: Arc::new(record),
        })
    }
}

/// One endpoint: reserve workers ([`Endpoint::session`]), send single
/// requests ([`Endpoint::request`]) and list workers ([`Endpoint::workers`]).
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) client: Arc<ClientInner>,
    record: Arc<EndpointRecord>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.record.endpoint_name)
            .field("id", &self.record.id)
            .finish_non_exhaustive()
    }
}

/// A READY assignment: the worker URL and the `auth_data` to present.
pub(crate) struct Assignment {
    pub url: String,
    pub auth_data: Value,
    pub request_idx: u64,
    /// When the final worker call was sent (set by `route_and_call`).
    pub sent_at: Instant,
}

impl Endpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.record.endpoint_name
    }

    /// The endpoint's id.
    pub fn id(&self) -> i64 {
        self.record.id
    }

    /// The endpoint as the web API listed it (parameters, key, ...).
    pub fn record(&self) -> &EndpointRecord {
        &self.record
    }

    /// Reserves a worker: routes (waiting while the engine scales up), then
    /// `POST <worker>/session/create`. See [`SessionOptions`] for the lease.
    pub async fn session(&self, options: SessionOptions) -> Result<Session, Error> {
        Session::open(self.clone(), options).await
    }

    /// Sends one request to a worker of this endpoint (PROTOCOL.md §7.1):
    /// route, call, and re-route with the same `request_idx` after a retryable
    /// status or a transport error. A final non-2xx status is returned, not raised.
    pub async fn request(
        &self,
        route: &str,
        payload: Value,
        options: RequestOptions,
    ) -> Result<Response, Error> {
        check_cost("request cost", options.cost)?;
        let started = Instant::now();
        let (reply, assignment) = self
            .route_and_call(
                route,
                &payload,
                &options,
                Step::WorkerRequest(route.to_owned()),
            )
            .await?;
        Ok(Response::from_reply(
            reply,
            assignment.url,
            assignment.request_idx,
            assignment.auth_data,
            started.elapsed(),
        ))
    }

    /// The endpoint's workers (`POST /get_endpoint_workers/`). A 200 object
    /// with `error_msg` means "no workers yet" and gives an empty list.
    pub async fn workers(&self) -> Result<Vec<EndpointWorker>, Error> {
        let step = Step::ListWorkers;
        let url = format!(
            "{}{}",
            self.client.autoscaler_url,
            paths::GET_ENDPOINT_WORKERS
        );
        let body = json!({ "id": self.record.id, "api_key": self.client.api_key });
        let reply = self
            .client
            .http
            .post_plain(&url, &body, WEB_TIMEOUT)
            .await
            .map_err(|e| Error::transport(step.clone(), &url, &e))?;
        if reply.status != 200 {
            return Err(reply.status_error(step, &url));
        }
        match reply.json {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| {
                    serde_json::from_value(item).map_err(|e| Error::InvalidReply {
                        step: step.clone(),
                        url: url.clone(),
                        reason: format!("bad worker object: {e}"),
                    })
                })
                .collect(),
            Some(Value::Object(obj)) if obj.contains_key("error_msg") => {
                tracing::warn!(endpoint = %self.name(), error_msg = %obj["error_msg"], "no workers yet");
                Ok(Vec::new())
            }
            _ => Err(Error::InvalidReply {
                step,
                url,
                reason: format!(
                    "expected a JSON array, got {:?}",
                    truncate_body(&reply.text)
                ),
            }),
        }
    }

    /// What the engine says after a held session's worker was lost: whether
    /// the endpoint is still listed, and whether the worker at `worker_url`
    /// still is (`None` when the engine could not be asked). One attempt
    /// each, with a short timeout: this runs while a user waits.
    pub async fn loss_facts(&self, worker_url: &str) -> (Option<bool>, Option<bool>) {
        let url = format!(
            "{}{}?client_id=me",
            self.client.webserver_url,
            paths::ENDPTJOBS
        );
        let listed = match self
            .client
            .http
            .send(
                Method::GET,
                &url,
                &self.client.api_key,
                None,
                LOSS_CHECK_TIMEOUT,
            )
            .await
        {
            Ok(reply) if reply.ok() => reply
                .json
                .and_then(|v| serde_json::from_value::<ApiList<EndpointRecord>>(v).ok())
                .map(|list| list.results.iter().any(|e| e.id == self.record.id)),
            _ => None,
        };
        if listed != Some(true) {
            return (listed, None);
        }
        let workers = tokio::time::timeout(LOSS_CHECK_TIMEOUT, self.workers()).await;
        let worker_listed = match workers {
            Ok(Ok(workers)) => Some(
                workers
                    .iter()
                    .any(|w| w.url.trim_end_matches('/') == worker_url.trim_end_matches('/')),
            ),
            _ => None,
        };
        (listed, worker_listed)
    }

    /// Routes until READY, calls `<worker><route>`, and retries the whole
    /// thing (same `request_idx`) after retryable statuses and transport
    /// errors. Returns the first non-retryable reply.
    pub(crate) async fn route_and_call(
        &self,
        route: &str,
        payload: &Value,
        options: &RequestOptions,
        step: Step,
    ) -> Result<(Reply, Assignment), Error> {
        let started = Instant::now();
        let deadline = options.timeout.map(|t| started + t);
        let mut request_idx = 0u64;
        let mut delays = retry::worker(None, self.client.retry.max_poll_interval);
        let mut attempts = 0u32;
        let emit = |event: RouteEvent| {
            if let Some(progress) = &options.progress {
                progress(&event);
            }
        };
        loop {
            attempts += 1;
            let assignment = self
                .route_until_ready(options.cost, &mut request_idx, deadline, started, options)
                .await?;
            emit(RouteEvent::Assigned {
                url: assignment.url.clone(),
            });
            let mut assignment = assignment;
            assignment.sent_at = Instant::now();
            let url = format!("{}{}", assignment.url, route);
            let body = json!({
                "auth_data": assignment.auth_data,
                "session_id": Value::Null,
                "payload": payload,
            });
            // Workers ignore the endpoint key; it is not sent to them (Q3).
            let call =
                self.client
                    .http
                    .send(Method::POST, &url, "", Some(&body), options.worker_timeout);
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = options.cancel.cancelled() => return Err(Error::Cancelled { step }),
            };
            let may_retry = options.retry && options.max_attempts.is_none_or(|max| attempts < max);
            let reason = match outcome {
                Ok(reply) if reply.ok() || !reply.retryable() || !may_retry => {
                    return Ok((reply, assignment));
                }
                Ok(reply) => {
                    emit(RouteEvent::Rejected {
                        url: assignment.url.clone(),
                        status: reply.status,
                    });
                    format!("{} answered HTTP {}", assignment.url, reply.status)
                }
                Err(err) if !may_retry => return Err(Error::transport(step, &url, &err)),
                Err(err) => {
                    let reason = format!(
                        "{}: {}",
                        assignment.url,
                        crate::error::transport_reason(&err)
                    );
                    emit(RouteEvent::Retrying {
                        reason: reason.clone(),
                    });
                    reason
                }
            };
            let delay = delays.next().unwrap_or(self.client.retry.max_poll_interval);
            tracing::debug!(%reason, ?delay, request_idx, "worker call failed; routing again");
            self.sleep_within(delay, deadline, started, &options.cancel, &step, &reason)
                .await?;
        }
    }

    /// Polls `/route/` until a worker is assigned.
    async fn route_until_ready(
        &self,
        cost: f64,
        request_idx: &mut u64,
        deadline: Option<Instant>,
        started: Instant,
        options: &RequestOptions,
    ) -> Result<Assignment, Error> {
        let step = Step::Route;
        let url = format!("{}{}", self.client.autoscaler_url, paths::ROUTE);
        let key = &self.record.api_key;
        let mut polls = 0u32;
        let new_delays = || {
            retry::worker(
                Some(self.client.retry.route_attempts),
                self.client.retry.max_poll_interval,
            )
        };
        let mut delays = new_delays();
        let mut poll = self.client.retry.first_poll;
        let mut last_status = String::from("no reply from the route service yet");
        loop {
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        step,
                        waited: started.elapsed(),
                        detail: format!("no worker assigned; last status: {last_status}"),
                    });
                }
            }
            let body = json!({
                "endpoint": self.record.endpoint_name,
                "api_key": key,
                "cost": cost,
                "request_idx": *request_idx,
                "replay_timeout": nullworker_protocol::REPLAY_TIMEOUT,
            });
            let call = self
                .client
                .http
                .send(Method::POST, &url, key, Some(&body), ROUTE_TIMEOUT);
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = options.cancel.cancelled() => return Err(Error::Cancelled { step }),
            };
            let failure = match outcome {
                Ok(reply) if reply.ok() => {
                    delays = new_delays();
                    Ok(reply)
                }
                Ok(reply) if reply.retryable() => Err(Failure::Status(reply)),
                Ok(reply) => return Err(reply.status_error(step, &url)),
                Err(err) => Err(Failure::Transport(err)),
            };
            let reply = match failure {
                Ok(reply) => reply,
                Err(failure) => {
                    let Some(delay) = delays.next() else {
                        return Err(match failure {
                            Failure::Status(reply) => reply.status_error(step, &url),
                            Failure::Transport(err) => Error::transport(step, &url, &err),
                        });
                    };
                    last_status = match &failure {
                        Failure::Status(reply) => {
                            format!("route service answered HTTP {}", reply.status)
                        }
                        Failure::Transport(err) => crate::error::transport_reason(err),
                    };
                    self.route_retry(delay, deadline, started, options, &last_status)
                        .await?;
                    continue;
                }
            };
            let value = reply.json_or_invalid(step.clone(), &url)?.clone();
            let parsed =
                RouteResponse::from_value(value.clone()).map_err(|e| Error::InvalidReply {
                    step: step.clone(),
                    url: url.clone(),
                    reason: e.to_string(),
                });
            match parsed {
                Ok(RouteResponse::Waiting(waiting)) => {
                    if waiting.request_idx != 0 {
                        *request_idx = waiting.request_idx;
                    }
                    last_status = if waiting.status.is_empty() {
                        "WAITING".to_owned()
                    } else {
                        waiting.status.clone()
                    };
                    if let Some(progress) = &options.progress {
                        progress(&RouteEvent::Waiting {
                            status: last_status.clone(),
                            request_idx: *request_idx,
                        });
                    }
                    self.sleep_within(
                        poll,
                        deadline,
                        started,
                        &options.cancel,
                        &step,
                        &last_status,
                    )
                    .await?;
                    polls += 1;
                    poll = backoff::poll_interval(
                        polls,
                        self.client.retry.max_poll_interval,
                        &mut rand::thread_rng(),
                    );
                }
                // READY: the whole object is the auth_data, kept verbatim.
                _ => {
                    let worker_url = value
                        .get("url")
                        .and_then(Value::as_str)
                        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                        .ok_or_else(|| Error::InvalidReply {
                            step: step.clone(),
                            url: url.clone(),
                            reason: format!("READY reply without a usable worker url: {value}"),
                        })?
                        .trim_end_matches('/')
                        .to_owned();
                    if let Some(idx) = value.get("request_idx").and_then(Value::as_u64) {
                        if idx != 0 {
                            *request_idx = idx;
                        }
                    }
                    return Ok(Assignment {
                        url: worker_url,
                        auth_data: value,
                        request_idx: *request_idx,
                        sent_at: Instant::now(),
                    });
                }
            }
        }
    }

    async fn route_retry(
        &self,
        delay: Duration,
        deadline: Option<Instant>,
        started: Instant,
        options: &RequestOptions,
        reason: &str,
    ) -> Result<(), Error> {
        if let Some(progress) = &options.progress {
            progress(&RouteEvent::Retrying {
                reason: format!("route service: {reason}"),
            });
        }
        self.sleep_within(
            delay,
            deadline,
            started,
            &options.cancel,
            &Step::Route,
            reason,
        )
        .await
    }

    /// Sleeps `delay`, but not past `deadline` (then: timeout) and not past a
    /// cancellation (then: cancelled).
    async fn sleep_within(
        &self,
        delay: Duration,
        deadline: Option<Instant>,
        started: Instant,
        cancel: &CancellationToken,
        step: &Step,
        detail: &str,
    ) -> Result<(), Error> {
        let wake = Instant::now() + delay;
        let (wake, times_out) = match deadline {
            Some(deadline) if deadline <= wake => (deadline, true),
            _ => (wake, false),
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = cancel.cancelled() => return Err(Error::Cancelled { step: step.clone() }),
        }
        if times_out {
            return Err(Error::Timeout {
                step: step.clone(),
                waited: started.elapsed(),
                detail: format!("no worker assigned; last status: {detail}"),
            });
        }
        Ok(())
    }
}
