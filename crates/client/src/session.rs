//! Sessions (reservations of one worker) and their lease.
//!
//! Owns [`Session`], [`SessionOptions`] and the lease task. The worker ends a
//! session at its expiration and extends it additively by the session's
//! `lifetime` on every in-session request (PROTOCOL.md §9.3). With
//! `keep_alive` (the default) the SDK asks the worker for a lifetime of half
//! the user's `lifetime` and sends a signed `/ping` with the session id
//! whenever less than a quarter of the user's lifetime is left, so:
//!
//! * the session stays held for as long as the holder keeps it, however long;
//! * if the holder dies, the worker frees itself within ¾ of `lifetime`
//!   (plus the worker's 5 s garbage-collection tick);
//! * a session that the worker ended on its own (the consumer's
//!   `POST /release`, or expiry) is noticed at the next renewal or check
//!   (`/session/get`, every `check_interval`);
//! * a worker whose address refuses the connection at a renewal or check
//!   has no process listening, and the session held in that process is gone
//!   with it: the session ends at once as [`SessionEnd::WorkerLost`] (a
//!   worker released and then stopped by scale-in before the next check is
//!   the common case), rather than after its lease runs out;
//! * a worker that stops answering at all (its machine gone, packets
//!   dropped) is noticed within 3 check intervals: with a check interval,
//!   each check and renewal waits at most ¾ of the interval (0.5 s to 10 s),
//!   a failed one is repeated after ¼ of the interval, and once calls have
//!   failed at the transport level for 1.5 intervals in a row (two calls at
//!   least) the session ends as [`SessionEnd::WorkerLost`]. An HTTP error
//!   answer is not a loss: the worker is there.
//!
//! Dropping a [`Session`] without [`Session::close`] stops the lease (the
//! session then ends by expiry) and logs a warning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use nullworker_protocol::{paths, SessionCreateResponse};

use backon::Retryable as _;

use crate::client::{Endpoint, Progress, RequestOptions, Response, SESSION_CREATE_TIMEOUT};
use crate::error::{transport_reason, truncate_body, Error, Step};
use crate::http::{Failure, Reply};
use crate::retry;

/// Timeout of `/session/end`, `/session/get` and renewal pings.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of `/session/end` and of in-session requests on transport errors
/// and retryable statuses.
const SESSION_CALL_ATTEMPTS: u32 = 3;
/// How long after its expiration a worker may still hold a session (its GC tick).
const WORKER_GC_GRACE: Duration = Duration::from_secs(6);
/// Bounds of the timeout of checks and renewals when a check interval is set.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Timeout of one check or renewal: ¾ of the check interval, from 0.5 s to
/// 10 s; 10 s without checks.
pub(crate) fn probe_timeout(check_interval: Option<Duration>) -> Duration {
    check_interval.map_or(SESSION_CALL_TIMEOUT, |c| {
        c.mul_f64(0.75)
            .clamp(MIN_PROBE_TIMEOUT, SESSION_CALL_TIMEOUT)
    })
}

/// Whether transport failures that began at `since` (the start of the first
/// failed call) and number `failures` mean the worker is lost at `now`:
/// two calls at least, failing for 1.5 check intervals.
pub(crate) fn unreachable_long_enough(
    since: Instant,
    failures: u32,
    now: Instant,
    check_interval: Duration,
) -> bool {
    failures >= 2 && now.saturating_duration_since(since) >= check_interval.mul_f64(1.5)
}

/// Options of [`Endpoint::session`].
#[derive(Clone)]
pub struct SessionOptions {
    /// Workload units the session holds on the worker (default 100, the null
    /// worker's `max_perf`: one session fills one worker).
    pub cost: f64,
    /// How long the session survives its holder going silent (default 60 s).
    /// With `keep_alive` the session is renewed for as long as it is held.
    pub lifetime: Duration,
    /// Renew the lease in the background (default true). Without it the
    /// worker is asked for `lifetime` and the session ends then, as with the
    /// Python SDK.
    pub keep_alive: bool,
    /// How often to ask the worker whether the session is still open
    /// (`/session/get`), to notice a release from the worker side between
    /// renewals. `None` checks only at renewals (default 5 s).
    pub check_interval: Option<Duration>,
    /// URL the worker POSTs to when the session closes.
    pub on_close_route: Option<String>,
    /// Body of that POST.
    pub on_close_payload: Option<Value>,
    /// Time allowed to get a worker and create the session (default: unlimited).
    pub timeout: Option<Duration>,
    /// Cancels the reservation while it waits (default: never).
    pub cancel: CancellationToken,
    /// Receives routing events while the reservation waits.
    pub progress: Option<Progress>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            cost: nullworker_protocol::DEFAULT_COST,
            lifetime: Duration::from_secs_f64(nullworker_protocol::DEFAULT_SESSION_LIFETIME),
            keep_alive: true,
            check_interval: Some(Duration::from_secs(5)),
            on_close_route: None,
            on_close_payload: None,
            timeout: None,
            cancel: CancellationToken::new(),
            progress: None,
        }
    }
}

impl SessionOptions {
    fn validate(&self) -> Result<(), Error> {
        crate::client::check_cost("session cost", self.cost)?;
        let max_lifetime = Duration::from_secs_f64(nullworker_protocol::MAX_SESSION_LIFETIME);
        if self.lifetime < Duration::from_secs(1) || self.lifetime > max_lifetime {
            return Err(Error::Config(format!(
                "session lifetime {:?} is invalid; expected from 1 s to {} s (30 days)",
                self.lifetime,
                max_lifetime.as_secs()
            )));
        }
        if self.check_interval.is_some_and(|c| c.is_zero()) {
            return Err(Error::Config(
                "session check interval must be greater than zero".to_owned(),
            ));
        }
        Ok(())
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Closed by this client ([`Session::close`]).
    Closed,
    /// Ended on the worker side while its lease still ran: the consumer's
    /// `POST /release` on the instance, or a `/session/end` by someone else.
    ReleasedByWorker,
    /// The lease ran out (keep-alive disabled, or renewals failed).
    Expired,
    /// The worker stopped answering and the lease has run out since, or
    /// nothing listens at the worker's address any more (connection refused).
    WorkerLost {
        /// The last failure seen.
        reason: String,
    },
}

impl SessionEnd {
    /// Whether this is a normal end (closed by the client or released by the worker).
    pub fn is_normal(&self) -> bool {
        matches!(self, Self::Closed | Self::ReleasedByWorker)
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::ReleasedByWorker => f.write_str("released by worker"),
            Self::Expired => f.write_str("expired"),
            Self::WorkerLost { reason } => write!(f, "worker lost ({reason})"),
        }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStatus {
    /// Held.
    Open,
    /// Over; `after` is the time from creation to when the end was noticed.
    Ended {
        /// How it ended.
        how: SessionEnd,
        /// Time held.
        after: Duration,
    },
}

struct Shared {
    endpoint: Endpoint,
    session_id: String,
    url: String,
    auth_data: Value,
    lifetime: Duration,
    wire_lifetime: Duration,
    keep_alive: bool,
    /// Timeout of checks and renewals.
    probe_timeout: Duration,
    expiration: f64,
    opened_at: Instant,
    /// Our estimate of the worker-side expiration (never later than the real one).
    lease_until: Mutex<Instant>,
    closing: AtomicBool,
    status: watch::Sender<SessionStatus>,
}

/// A reserved worker. Close it with [`Session::close`]; a dropped session
/// ends by expiry.
pub struct Session {
    shared: Arc<Shared>,
    stop: CancellationToken,
    lease_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.shared.session_id)
            .field("url", &self.shared.url)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

enum Probe {
    /// The worker still has the session.
    Open,
    /// The worker does not know the session any more.
    Gone,
    /// An answer, but not a usable one (an HTTP error): the worker is there.
    Failed(String),
    /// No answer at all (timeout, reset, unreachable host).
    Unreachable(String),
    /// Nothing listens at the worker's address (connection refused): its
    /// process is gone, and the session it held with it.
    Refused(String),
}

/// The probe result of a transport error: [`Probe::Refused`] when the
/// connection was refused, else [`Probe::Unreachable`].
fn transport_probe(url: &str, err: &reqwest::Error) -> Probe {
    let reason = format!("{url}: {}", transport_reason(err));
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return Probe::Refused(reason);
        }
        source = cause.source();
    }
    Probe::Unreachable(reason)
}

impl Session {
    pub(crate) async fn open(endpoint: Endpoint, options: SessionOptions) -> Result<Self, Error> {
        options.validate()?;
        let wire_lifetime = if options.keep_alive {
            options.lifetime / 2
        } else {
            options.lifetime
        };
        let payload = json!({
            "lifetime": wire_lifetime.as_secs_f64(),
            "on_close_route": options.on_close_route,
            "on_close_payload": if options.on_close_route.is_some() { options.on_close_payload.clone() } else { None },
        });
        let request = RequestOptions {
            cost: options.cost,
            timeout: options.timeout,
            worker_timeout: SESSION_CREATE_TIMEOUT,
            retry: true,
            max_attempts: None,
            cancel: options.cancel.clone(),
            progress: options.progress.clone(),
        };
        let step = Step::SessionCreate;
        let (reply, assignment) = endpoint
            .route_and_call(paths::SESSION_CREATE, &payload, &request, step.clone())
            .await?;
        let create_url = format!("{}{}", assignment.url, paths::SESSION_CREATE);
        if !reply.ok() {
            return Err(reply.status_error(step, &create_url));
        }
        let created: SessionCreateResponse =
            serde_json::from_value(reply.json_or_invalid(step.clone(), &create_url)?.clone())
                .map_err(|e| Error::InvalidReply {
                    step: step.clone(),
                    url: create_url.clone(),
                    reason: format!("expected {{\"session_id\", \"expiration\"}}: {e}"),
                })?;
        let (status, _) = watch::channel(SessionStatus::Open);
        let shared = Arc::new(Shared {
            endpoint,
            session_id: created.session_id,
            url: assignment.url,
            auth_data: assignment.auth_data,
            lifetime: options.lifetime,
            wire_lifetime,
            keep_alive: options.keep_alive,
            probe_timeout: probe_timeout(options.check_interval),
            expiration: created.expiration,
            opened_at: Instant::now(),
            lease_until: Mutex::new(assignment.sent_at + wire_lifetime),
            closing: AtomicBool::new(false),
            status,
        });
        let stop = CancellationToken::new();
        let mut session = Session {
            shared: shared.clone(),
            stop: stop.clone(),
            lease_task: None,
        };
        if options.cancel.is_cancelled() {
            // Cancelled while the create was in flight: give the worker back.
            let _ = session.close().await;
            return Err(Error::Cancelled { step });
        }
        session.lease_task = Some(tokio::spawn(run_lease(
            shared,
            stop,
            options.check_interval,
        )));
        tracing::debug!(session_id = %session.id(), url = %session.url(), "session opened");
        Ok(session)
    }

    /// The worker's session id.
    pub fn id(&self) -> &str {
        &self.shared.session_id
    }

    /// The worker's URL.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The `auth_data` the session was created with (its `session_auth`).
    pub fn auth_data(&self) -> &Value {
        &self.shared.auth_data
    }

    /// The lifetime asked for in [`SessionOptions::lifetime`].
    pub fn lifetime(&self) -> Duration {
        self.shared.lifetime
    }

    /// The lifetime sent to the worker (half of [`Self::lifetime`] with keep-alive).
    pub fn worker_lifetime(&self) -> Duration {
        self.shared.wire_lifetime
    }

    /// The expiration the worker reported at creation (epoch seconds, worker clock).
    pub fn initial_expiration(&self) -> f64 {
        self.shared.expiration
    }

    /// Time since the session was created.
    pub fn held_for(&self) -> Duration {
        self.shared.opened_at.elapsed()
    }

    /// The session's current status (no network call).
    pub fn status(&self) -> SessionStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits until the session ends, for any reason, and says how.
    pub async fn ended(&self) -> SessionEnd {
        let mut rx = self.shared.status.subscribe();
        let status = rx
            .wait_for(|s| matches!(s, SessionStatus::Ended { .. }))
            .await
            .map(|s| s.clone());
        match status {
            Ok(SessionStatus::Ended { how, .. }) => how,
            // The sender lives in `shared`, which we hold: it cannot close.
            _ => SessionEnd::Closed,
        }
    }

    /// Asks the worker whether the session is open (`/session/get`, which
    /// does not extend it). 400/410 ⇒ `false` (and the session is marked
    /// ended); transport errors and other statuses are errors.
    pub async fn is_open(&self) -> Result<bool, Error> {
        if !matches!(self.status(), SessionStatus::Open) {
            return Ok(false);
        }
        match self.shared.probe().await {
            Probe::Open => Ok(true),
            Probe::Gone => {
                self.shared.end(self.shared.gone_reason(Instant::now()));
                Ok(false)
            }
            Probe::Failed(reason) | Probe::Unreachable(reason) | Probe::Refused(reason) => {
                Err(Error::Transport {
                    step: Step::SessionGet,
                    url: format!("{}{}", self.shared.url, paths::SESSION_GET),
                    reason,
                })
            }
        }
    }

    /// Sends a request inside the session (no routing; each accepted request
    /// extends the worker-side lease by [`Self::worker_lifetime`]). A 410
    /// means the session is gone: it is marked ended and an error returned.
    pub async fn request(&self, route: &str, payload: Value) -> Result<Response, Error> {
        self.ensure_open()?;
        let started = Instant::now();
        let step = Step::WorkerRequest(route.to_owned());
        let url = format!("{}{}", self.shared.url, route);
        let body = json!({
            "auth_data": self.shared.auth_data,
            "session_id": self.shared.session_id,
            "payload": payload,
        });
        let max = self.shared.endpoint.client.retry.max_poll_interval;
        let outcome = (|| async {
            let reply = self
                .shared
                .endpoint
                .client
                .http
                .send(
                    Method::POST,
                    &url,
                    "",
                    Some(&body),
                    Duration::from_secs(600),
                )
                .await
                .map_err(Failure::Transport)?;
            if extends_lease(reply.status) {
                self.shared.extend();
            }
            if reply.retryable() {
                Err(Failure::Status(reply))
            } else {
                Ok(reply)
            }
        })
        .retry(retry::worker(Some(SESSION_CALL_ATTEMPTS), max))
        .notify(|failure, delay| {
            tracing::debug!(%url, ?failure, ?delay, "session request failed; retrying");
        })
        .await;
        let reply = match outcome {
            Ok(reply) | Err(Failure::Status(reply)) => reply,
            Err(Failure::Transport(err)) => return Err(Error::transport(step, &url, &err)),
        };
        if reply.status == 410 {
            self.shared.end(self.shared.gone_reason(Instant::now()));
            self.ensure_open()?;
        }
        Ok(Response::from_reply(
            reply,
            self.shared.url.clone(),
            0,
            self.shared.auth_data.clone(),
            started.elapsed(),
        ))
    }

    /// Releases the worker (`POST <worker>/session/end`). Idempotent: a
    /// session that has already ended reports how. If the worker no longer
    /// knows the session (400/410) it was released on the worker side or
    /// expired, which is reported, not raised. On failure the lease is no
    /// longer renewed, so the session still ends by expiry.
    pub async fn close(&self) -> Result<SessionEnd, Error> {
        if let SessionStatus::Ended { how, .. } = self.status() {
            return Ok(how);
        }
        if self.shared.closing.swap(true, Ordering::SeqCst) {
            return Ok(self.ended().await);
        }
        self.stop.cancel();
        let step = Step::SessionEnd;
        let url = format!("{}{}", self.shared.url, paths::SESSION_END);
        let body = json!({
            "session_id": self.shared.session_id,
            "session_auth": self.shared.auth_data,
        });
        let max = self.shared.endpoint.client.retry.max_poll_interval;
        let outcome = (|| async {
            match self
                .shared
                .endpoint
                .client
                .http
                .send(Method::POST, &url, "", Some(&body), SESSION_CALL_TIMEOUT)
                .await
            {
                Ok(reply) if reply.retryable() => Err(Failure::Status(reply)),
                Ok(reply) => Ok(reply),
                Err(err) => Err(Failure::Transport(err)),
            }
        })
        .retry(retry::worker(Some(SESSION_CALL_ATTEMPTS), max))
        .await;
        let outcome: Result<Reply, Error> = match outcome {
            Ok(reply) | Err(Failure::Status(reply)) => Ok(reply),
            Err(Failure::Transport(err)) => Err(Error::transport(step.clone(), &url, &err)),
        };
        match outcome {
            Ok(reply) if reply.ok() => {
                self.shared.end(SessionEnd::Closed);
                Ok(SessionEnd::Closed)
            }
            Ok(reply) if matches!(reply.status, 400 | 410) => {
                let how = self.shared.gone_reason(Instant::now());
                self.shared.end(how.clone());
                Ok(how)
            }
            Ok(reply) => {
                let err = reply.status_error(step, &url);
                self.shared.end(SessionEnd::WorkerLost {
                    reason: format!(
                        "close failed, the session ends by expiry: HTTP {}",
                        reply.status
                    ),
                });
                Err(err)
            }
            Err(err) => {
                self.shared.end(SessionEnd::WorkerLost {
                    reason: format!("close failed, the session ends by expiry: {err}"),
                });
                Err(err)
            }
        }
    }

    fn ensure_open(&self) -> Result<(), Error> {
        match self.status() {
            SessionStatus::Open => Ok(()),
            SessionStatus::Ended { how, .. } => Err(Error::SessionEnded {
                session_id: self.shared.session_id.clone(),
                how: how.to_string(),
            }),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.lease_task.take() {
            task.abort();
        }
        if matches!(self.status(), SessionStatus::Open)
            && !self.shared.closing.load(Ordering::SeqCst)
        {
            let remaining = self
                .shared
                .lease_until
                .lock()
                .map(|l| l.saturating_duration_since(Instant::now()))
                .unwrap_or_default();
            tracing::warn!(
                session_id = %self.shared.session_id,
                url = %self.shared.url,
                "session dropped without close(); the worker frees it by expiry in about {:.0} s",
                remaining.as_secs_f64()
            );
        }
    }
}

/// Whether a worker reply to an in-session request means the worker has
/// extended the session: the extension happens before the signature and
/// queue checks, so 401 and 429 count too (PROTOCOL.md Q6).
fn extends_lease(status: u16) -> bool {
    (200..300).contains(&status) || matches!(status, 401 | 429 | 500)
}

impl Shared {
    fn end(&self, how: SessionEnd) {
        let after = self.opened_at.elapsed();
        self.status.send_if_modified(|status| {
            if matches!(status, SessionStatus::Open) {
                *status = SessionStatus::Ended { how, after };
                true
            } else {
                false
            }
        });
    }

    fn extend(&self) {
        if let Ok(mut lease) = self.lease_until.lock() {
            *lease += self.wire_lifetime;
        }
    }

    fn lease_until(&self) -> Instant {
        self.lease_until
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|_| Instant::now())
    }

    /// Why a session the worker no longer knows has gone.
    fn gone_reason(&self, now: Instant) -> SessionEnd {
        if now < self.lease_until() {
            SessionEnd::ReleasedByWorker
        } else {
            SessionEnd::Expired
        }
    }

    async fn probe(&self) -> Probe {
        let url = format!("{}{}", self.url, paths::SESSION_GET);
        let body = json!({ "session_id": self.session_id, "session_auth": self.auth_data });
        match self
            .endpoint
            .client
            .http
            .send(Method::POST, &url, "", Some(&body), self.probe_timeout)
            .await
        {
            Ok(reply) if reply.ok() => Probe::Open,
            Ok(reply) if matches!(reply.status, 400 | 410) => Probe::Gone,
            Ok(reply) => Probe::Failed(format!(
                "{url} answered HTTP {}: {}",
                reply.status,
                truncate_body(&reply.text)
            )),
            Err(err) => transport_probe(&url, &err),
        }
    }

    /// A signed `/ping` in the session: extends it by `wire_lifetime`.
    async fn renew(&self) -> Probe {
        let url = format!("{}{}", self.url, paths::PING);
        let body = json!({
            "auth_data": self.auth_data,
            "session_id": self.session_id,
            "payload": {},
        });
        match self
            .endpoint
            .client
            .http
            .send(Method::POST, &url, "", Some(&body), self.probe_timeout)
            .await
        {
            Ok(reply) if extends_lease(reply.status) => {
                self.extend();
                if !reply.ok() {
                    tracing::warn!(session_id = %self.session_id, status = reply.status, "renewal ping refused, but the worker extended the session");
                }
                Probe::Open
            }
            Ok(reply) if reply.status == 410 => Probe::Gone,
            Ok(reply) => Probe::Failed(format!(
                "{url} answered HTTP {}: {}",
                reply.status,
                truncate_body(&reply.text)
            )),
            Err(err) => transport_probe(&url, &err),
        }
    }
}

/// The lease task: renews before expiry and checks for a worker-side end.
async fn run_lease(shared: Arc<Shared>, stop: CancellationToken, check_interval: Option<Duration>) {
    let renew_margin = shared.lifetime / 4;
    let max_backoff = shared.endpoint.client.retry.max_poll_interval;
    let mut next_check = check_interval.map(|c| Instant::now() + c);
    let mut retry_at: Option<Instant> = None;
    let mut renew_backoff = crate::retry::session_backoff(max_backoff.min(renew_margin / 2));
    let mut last_failure = String::new();
    let mut failures = 0u32;
    // Start of the first of the calls that have failed at the transport
    // level in a row, and how many they are.
    let mut unreachable: Option<(Instant, u32)> = None;
    loop {
        let lease_until = shared.lease_until();
        let renew_at = if shared.keep_alive {
            Some(retry_at.unwrap_or(lease_until.checked_sub(renew_margin).unwrap_or(lease_until)))
        } else {
            None
        };
        // Without renewals, look once more after the worker's GC must have run.
        let final_check = (!shared.keep_alive).then_some(lease_until + WORKER_GC_GRACE);
        let wake = [renew_at, next_check, final_check]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(lease_until + WORKER_GC_GRACE);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let renewing = renew_at.is_some_and(|at| now >= at);
        let probe = tokio::select! {
            () = stop.cancelled() => return,
            probe = async {
                if renewing { shared.renew().await } else { shared.probe().await }
            } => probe,
        };
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        if let Some(c) = check_interval {
            next_check = Some(Instant::now() + c);
        }
        let transport = matches!(probe, Probe::Unreachable(_));
        match probe {
            Probe::Open => {
                failures = 0;
                unreachable = None;
                retry_at = None;
                renew_backoff = crate::retry::session_backoff(max_backoff.min(renew_margin / 2));
            }
            Probe::Gone => {
                let how = shared.gone_reason(now);
                tracing::info!(session_id = %shared.session_id, %how, "session ended on the worker side");
                shared.end(how);
                return;
            }
            Probe::Refused(reason) => {
                tracing::info!(session_id = %shared.session_id, %reason, "the worker is gone: its address refuses connections");
                shared.end(SessionEnd::WorkerLost { reason });
                return;
            }
            Probe::Failed(reason) | Probe::Unreachable(reason) => {
                failures += 1;
                tracing::warn!(session_id = %shared.session_id, %reason, "session lease check failed");
                last_failure = reason;
                if renewing {
                    let delay = renew_backoff.next().unwrap_or(max_backoff);
                    retry_at = Some(Instant::now() + delay);
                }
                if !transport {
                    unreachable = None;
                } else if let Some(c) = check_interval {
                    let (since, count) = unreachable.unwrap_or((now, 0));
                    unreachable = Some((since, count + 1));
                    if unreachable_long_enough(since, count + 1, Instant::now(), c) {
                        tracing::info!(session_id = %shared.session_id, reason = %last_failure, "the worker stopped answering");
                        shared.end(SessionEnd::WorkerLost {
                            reason: format!(
                                "no answer for {:.1} s: {last_failure}",
                                since.elapsed().as_secs_f64()
                            ),
                        });
                        return;
                    }
                    // Look again soon: a loss is declared within 3 intervals.
                    next_check = Some(Instant::now() + c / 4);
                }
            }
        }
        if failures > 0 && Instant::now() >= shared.lease_until() + WORKER_GC_GRACE {
            shared.end(SessionEnd::WorkerLost {
                reason: last_failure.clone(),
            });
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_wait_three_quarters_of_the_check_interval_within_bounds() {
        let ms = Duration::from_millis;
        for (interval, want) in [
            (None, ms(10_000)),
            (Some(ms(100)), ms(500)),
            (Some(ms(1_000)), ms(750)),
            (Some(ms(5_000)), ms(3_750)),
            (Some(ms(60_000)), ms(10_000)),
        ] {
            assert_eq!(probe_timeout(interval), want, "{interval:?}");
        }
    }

    #[test]
    fn a_worker_is_lost_after_two_failures_over_one_and_a_half_intervals() {
        let t0 = Instant::now();
        let c = Duration::from_secs(1);
        let ms = Duration::from_millis;
        for (failures, after, lost) in [
            (1, ms(5_000), false),
            (2, ms(1_499), false),
            (2, ms(1_500), true),
            (3, ms(1_400), false),
            (5, ms(2_000), true),
        ] {
            assert_eq!(
                unreachable_long_enough(t0, failures, t0 + after, c),
                lost,
                "{failures} failures over {after:?}"
            );
        }
        // Worst case of the schedule: the loss happens just after a good
        // check; the next check starts ≤ 1 interval later and times out
        // after ¾; the re-check starts ¼ later and times out after ¾.
        let first = c;
        let second = first + probe_timeout(Some(c)) + c / 4;
        let declared = second + probe_timeout(Some(c));
        assert!(unreachable_long_enough(t0 + first, 2, t0 + declared, c));
        assert!(declared <= c * 3, "{declared:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_told_apart_from_other_transport_failures() {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/session/get");
        let err = http.get(&url).send().await.unwrap_err();
        assert!(
            matches!(transport_probe(&url, &err), Probe::Refused(ref r) if r.contains(&url)),
            "{err}"
        );
        // A listener that never answers: a timeout, not a refusal.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/session/get", silent.local_addr().unwrap());
        let err = http.get(&url).send().await.unwrap_err();
        assert!(
            matches!(transport_probe(&url, &err), Probe::Unreachable(_)),
            "{err}"
        );
    }
}
