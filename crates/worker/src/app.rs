//! The running worker's shared state ([`App`]) and the procedures that touch
//! several parts of it: opening and closing sessions (PROTOCOL.md §9.4, with
//! the on-close callback of §9.5 and the expiry task that closes each session
//! at its deadline),
//! signature verification with a small cache of verified pairs, readiness,
//! recording errors, and the reservation status the control server's
//! `GET /session` reports ([`App::session_status`]).
//!
//! HTTP parsing lives in [`crate::http`], report delivery in
//! [`crate::reporter`]; both call into this module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use nullworker_protocol::{SessionStatusResponse, SignatureError, VerifyingKey};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{HealthTarget, WorkerConfig};
use crate::metrics::Metrics;
use crate::sessions::{OpenError, Session, SessionSpec, SessionTable};

/// On-close callback timeout (§9.5).
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Verified `(url, signature)` pairs remembered (RSA verification is ~50 µs).
const SIGNATURE_CACHE_SIZE: usize = 8;
/// `max_perf` of the null worker.
pub const MAX_PERF: f64 = nullworker_protocol::NULL_MAX_PERF;

/// Why a session closed, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `/session/end` from a client.
    ClientEnd,
    /// `/release` on the control server.
    Release,
    /// Its expiration passed.
    Expiry,
    /// The worker is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientEnd => "client end",
            Self::Release => "release",
            Self::Expiry => "expiry",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The engine's public key has not been fetched (yet).
    #[error("the engine's public key is not loaded")]
    NoKey,
    /// `signature` or `url` missing or not a string.
    #[error("auth_data.{0} is missing or not a string")]
    Field(&'static str),
    /// The signature does not verify.
    #[error("invalid signature: {0}")]
    Signature(#[from] SignatureError),
    /// The signed URL is another worker's.
    #[error("auth_data.url {got:?} is not this worker's URL {expected:?}")]
    WrongWorker {
        /// The URL in `auth_data`.
        got: String,
        /// This worker's URL.
        expected: String,
    },
}

/// Signature checks with the engine's key (set once) and a cache of pairs already verified.
#[derive(Debug, Default)]
pub struct Verifier {
    key: OnceLock<VerifyingKey>,
    cache: RwLock<Vec<(Box<str>, Box<str>)>>,
}

impl Verifier {
    /// Installs the engine's public key; `false` if one was already set.
    pub fn set_key(&self, key: VerifyingKey) -> bool {
        self.key.set(key).is_ok()
    }

    /// Whether the key is loaded.
    pub fn has_key(&self) -> bool {
        self.key.get().is_some()
    }

    /// Verifies `signature` over the canonical message of `url`.
    pub fn verify(&self, url: &str, signature: &str) -> Result<(), AuthError> {
        let key = self.key.get().ok_or(AuthError::NoKey)?;
        {
            let cache = self.cache.read().expect("signature cache lock");
            if cache
                .iter()
                .any(|(u, s)| u.as_ref() == url && s.as_ref() == signature)
            {
                return Ok(());
            }
        }
        key.verify_url(url, signature)?;
        let mut cache = self.cache.write().expect("signature cache lock");
        if !cache
            .iter()
            .any(|(u, s)| u.as_ref() == url && s.as_ref() == signature)
        {
            if cache.len() >= SIGNATURE_CACHE_SIZE {
                cache.remove(0);
            }
            cache.push((url.into(), signature.into()));
        }
        Ok(())
    }
}

/// The state shared by every task of a running worker.
pub struct App {
    /// Validated configuration.
    pub config: WorkerConfig,
    /// Epoch and monotonic time.
    pub clock: Clock,
    /// Open sessions.
    pub sessions: SessionTable,
    /// Load accounting and delete queue.
    pub metrics: Metrics,
    /// Signature verification.
    pub verifier: Verifier,
    /// HTTP clients for reports, the key fetch, health checks and callbacks.
    pub http: HttpClients,
    /// Origin that relative on-close routes resolve against (§9.5).
    pub callback_origin: url::Url,
    /// Wakes the status reporter for an immediate report.
    pub report_now: Notify,
    /// Wakes the delete-requests sender.
    pub deletes_now: Notify,
    /// Set while an immediate report is requested and not yet taken up, so a
    /// burst of events wakes the reporters once.
    report_requested: AtomicBool,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// Every background task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    healthy_once: AtomicBool,
    ready: AtomicBool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The worker's outgoing HTTP clients: one for plain `http://` targets, and
/// one with the web PKI roots for `https://` targets, built on first use (a
/// worker whose engine and health check are plain HTTP never loads them,
/// which keeps its memory small). No proxy: the worker talks to the engine
/// and to loopback services directly.
#[derive(Debug)]
pub struct HttpClients {
    plain: reqwest::Client,
    tls: OnceLock<reqwest::Client>,
}

impl Default for HttpClients {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClients {
    /// Builds the plain client; the TLS one waits for its first use.
    pub fn new() -> Self {
        Self {
            plain: Self::builder()
                .tls_built_in_root_certs(false)
                .build()
                .expect("building an HTTP client with static settings cannot fail"),
            tls: OnceLock::new(),
        }
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(4)
    }

    /// The client for `url`: the TLS client for `https://`, else the plain one.
    pub fn for_url(&self, url: &str) -> &reqwest::Client {
        let https = url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if https {
            self.tls.get_or_init(|| {
                Self::builder()
                    .build()
                    .expect("building an HTTP client with static settings cannot fail")
            })
        } else {
            &self.plain
        }
    }
}

impl App {
    /// A worker that is not ready yet, with no session open.
    pub fn new(config: WorkerConfig, clock: Clock, shutdown: CancellationToken) -> Arc<Self> {
        let callback_origin = match &config.health {
            HealthTarget::Url(url) => origin_of(url),
            HealthTarget::Stub => {
                url::Url::parse(&format!("http://127.0.0.1:{}/", config.control_port))
                    .expect("loopback URL is valid")
            }
        };
        Arc::new(Self {
            sessions: SessionTable::new(config.max_sessions),
            config,
            clock,
            metrics: Metrics::new(),
            verifier: Verifier::default(),
            http: HttpClients::new(),
            callback_origin,
            report_now: Notify::new(),
            deletes_now: Notify::new(),
            report_requested: AtomicBool::new(false),
            shutdown,
            tracker: TaskTracker::new(),
            healthy_once: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        })
    }

    /// Whether the worker has reported itself ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Asks the reporters for an immediate report (readiness, errors, sessions: Q8 hardened).
    pub fn report_soon(&self) {
        if !self.report_requested.swap(true, Ordering::AcqRel) {
            self.report_now.notify_one();
            self.deletes_now.notify_one();
        }
    }

    /// Called by the status reporter when it takes up a requested report.
    pub fn report_taken(&self) {
        self.report_requested.store(false, Ordering::Release);
    }

    /// The consumer's health check succeeded for the first time.
    pub fn health_succeeded_once(&self) {
        self.healthy_once.store(true, Ordering::Release);
        self.maybe_ready();
    }

    /// The engine's public key was loaded.
    pub fn key_loaded(&self, key: VerifyingKey) {
        if self.verifier.set_key(key) {
            tracing::info!("engine public key loaded");
        }
        self.maybe_ready();
    }

    /// Becomes ready once health succeeded and the key is loaded (or checks are off).
    fn maybe_ready(&self) {
        let key_ok = self.config.unsecured || self.verifier.has_key();
        if !(self.healthy_once.load(Ordering::Acquire) && key_ok) {
            return;
        }
        if self
            .ready
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let loadtime = self.clock.uptime().as_secs_f64();
            self.metrics.set_loaded(loadtime, MAX_PERF);
            tracing::info!(loadtime, url = %self.config.worker_url, "worker ready");
            self.report_soon();
        }
    }

    /// Records a (sticky) error and reports it at once.
    pub fn record_error(&self, message: &str) {
        if self.metrics.record_error(message) {
            tracing::error!(error_msg = message, "worker error recorded");
            self.report_soon();
        }
    }

    /// Checks `auth_data` as the handler routes require: the signature
    /// (unless `UNSECURED`), then, when binding is on, that the URL is ours.
    pub fn check_auth(&self, auth_data: &Map<String, Value>) -> Result<(), AuthError> {
        if self.config.unsecured {
            return Ok(());
        }
        let url = auth_data
            .get("url")
            .and_then(Value::as_str)
            .ok_or(AuthError::Field("url"))?;
        let signature = auth_data
            .get("signature")
            .and_then(Value::as_str)
            .ok_or(AuthError::Field("signature"))?;
        self.verifier.verify(url, signature)?;
        if self.config.bind_auth_url && url.trim_end_matches('/') != self.config.worker_url {
            return Err(AuthError::WrongWorker {
                got: url.to_owned(),
                expected: self.config.worker_url.clone(),
            });
        }
        Ok(())
    }

    /// Opens a session and reports it.
    pub fn open_session(&self, spec: SessionSpec) -> Result<Arc<Session>, OpenError> {
        let request_idx = spec.request_idx;
        let cost = spec.cost;
        let session = self.sessions.open(spec, &self.clock)?;
        let key = self
            .metrics
            .session_opened(request_idx, cost, session.created_at);
        let _ = session.track.set(key);
        if session.closed().is_cancelled() {
            // Closed (e.g. by /release) before the key was set: account it now.
            self.metrics.session_closed(key, self.clock.now_epoch());
        }
        tracing::info!(
            session_id = %session.id,
            request_idx,
            cost,
            lifetime = session.spec.lifetime,
            "session opened"
        );
        self.report_soon();
        Ok(session)
    }

    /// Whether this worker holds a session, waiting up to `wait` for one to
    /// open when none is (`GET /session?wait=S`). Answers at once when a
    /// session is open, "not held" when `wait` passes or the worker starts
    /// shutting down. Woken by the session table's open count, not by polling.
    pub async fn session_status(&self, wait: Duration) -> SessionStatusResponse {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.sessions.subscribe();
        loop {
            // Marks the count seen before looking, so an open after the look wakes us.
            changes.borrow_and_update();
            if let Some((session, open)) = self.sessions.oldest() {
                return SessionStatusResponse::held(
                    session.id.clone(),
                    session.created_at,
                    session.expiration(),
                    open as u64,
                );
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                changed = tokio::time::timeout_at(deadline, changes.changed()) => match changed {
                    Ok(Ok(())) => continue,
                    // Timed out, or the table is gone.
                    _ => break,
                },
            }
        }
        SessionStatusResponse::not_held()
    }

    /// The expiry task: sleeps until the earliest deadline, closes the
    /// sessions that are due (each in its own task, so a slow callback
    /// delays no other expiry), and runs until shutdown.
    pub async fn expire_sessions(self: Arc<Self>) {
        loop {
            let next = self.sessions.arm();
            let sleep = async {
                match next {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = self.sessions.rearm_needed() => continue,
                () = sleep => {}
            }
            for session in self.sessions.take_due(self.clock.now()) {
                let app = Arc::clone(&self);
                self.tracker.spawn(async move {
                    app.finish_close(&session, CloseReason::Expiry, CALLBACK_TIMEOUT)
                        .await;
                });
            }
        }
    }

    /// The close procedure (§9.4): remove, cut in-flight requests, account,
    /// run the on-close callback and wait for it. `false` if it was already closed.
    pub async fn close_session(&self, session: &Arc<Session>, reason: CloseReason) -> bool {
        self.close_session_within(session, reason, CALLBACK_TIMEOUT)
            .await
    }

    /// [`Self::close_session`] with a callback time budget (shutdown uses less).
    pub async fn close_session_within(
        &self,
        session: &Arc<Session>,
        reason: CloseReason,
        callback_budget: Duration,
    ) -> bool {
        // Removing cancels the session's token, which cuts its in-flight requests.
        if !self.sessions.remove(session) {
            return false;
        }
        self.finish_close(session, reason, callback_budget).await;
        true
    }

    /// The close procedure after the session left the table.
    async fn finish_close(
        &self,
        session: &Session,
        reason: CloseReason,
        callback_budget: Duration,
    ) {
        self.account_close(session, reason);
        if let Some(route) = &session.spec.on_close_route {
            self.run_callback(session, route, callback_budget).await;
        }
    }

    /// Accounts a session that left the table as completed work, asks for a
    /// report and logs it.
    fn account_close(&self, session: &Session, reason: CloseReason) {
        if let Some(key) = session.track.get() {
            self.metrics.session_closed(*key, self.clock.now_epoch());
        }
        self.report_soon();
        tracing::info!(session_id = %session.id, reason = reason.as_str(), "session closed");
    }

    async fn run_callback(&self, session: &Session, route: &str, budget: Duration) {
        let Some(url) = resolve_callback(&self.callback_origin, route) else {
            tracing::warn!(session_id = %session.id, route, "on-close route is not a usable URL; callback skipped");
            return;
        };
        let body = callback_body(&session.id, session.spec.on_close_payload.as_ref());
        let outcome = self
            .http
            .for_url(url.as_str())
            .post(url.clone())
            .timeout(budget.min(CALLBACK_TIMEOUT))
            .json(&body)
            .send()
            .await;
        match outcome {
            Ok(resp) if resp.status().is_success() => {
                tracing::debug!(session_id = %session.id, %url, status = resp.status().as_u16(), "on-close callback delivered");
            }
            Ok(resp) => {
                tracing::warn!(session_id = %session.id, %url, status = resp.status().as_u16(), "on-close callback answered an error status");
            }
            Err(err) => {
                tracing::warn!(session_id = %session.id, %url, error = %err, "on-close callback failed");
            }
        }
    }

    /// Closes every open session (`/release`, shutdown); returns the ids
    /// closed, oldest first.
    ///
    /// Every session is taken out of the table and accounted before any
    /// on-close callback runs, and the callbacks then run concurrently: a
    /// slow callback neither keeps a later session open nor makes shutdown
    /// give up with sessions still counted in `cur_load`.
    pub async fn close_all(&self, reason: CloseReason, callback_budget: Duration) -> Vec<String> {
        let closed: Vec<Arc<Session>> = self
            .sessions
            .all()
            .into_iter()
            .filter(|session| self.sessions.remove(session))
            .collect();
        for session in &closed {
            self.account_close(session, reason);
        }
        futures_util::future::join_all(closed.iter().filter_map(|session| {
            let route = session.spec.on_close_route.as_deref()?;
            Some(self.run_callback(session, route, callback_budget))
        }))
        .await;
        closed.iter().map(|session| session.id.clone()).collect()
    }
}

/// `scheme://host:port/` of a URL.
fn origin_of(url: &url::Url) -> url::Url {
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    let _ = origin.set_username("");
    let _ = origin.set_password(None);
    origin
}

/// An on-close route as a URL: absolute http(s) as is, anything else resolved
/// against `origin` (§9.5). `None` if the result is not http(s).
pub fn resolve_callback(origin: &url::Url, route: &str) -> Option<url::Url> {
    let url = match url::Url::parse(route) {
        Ok(absolute) => absolute,
        Err(url::ParseError::RelativeUrlWithoutBase) => origin.join(route).ok()?,
        Err(_) => return None,
    };
    (matches!(url.scheme(), "http" | "https") && url.host_str().is_some()).then_some(url)
}

/// The callback body (§9.5): a copy of an object payload, `{}` for none,
/// `{"payload": v}` for any other value; `session_id` added unless present.
pub fn callback_body(session_id: &str, payload: Option<&Value>) -> Value {
    let mut body = match payload {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => {
            let mut map = Map::new();
            map.insert("payload".to_owned(), other.clone());
            map
        }
    };
    body.entry("session_id")
        .or_insert_with(|| Value::String(session_id.to_owned()));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn test_app() -> Arc<App> {
        let args = crate::config::ServeArgs {
            container_id: Some("1".into()),
            report_addr: Some("http://127.0.0.1:9".into()),
            worker_port: Some("3000".into()),
            public_port: Some("3000".into()),
            public_ipaddr: Some("127.0.0.1".into()),
            max_sessions: Some("0".into()),
            ..Default::default()
        };
        let config = args.validate().unwrap();
        App::new(config, Clock::anchored(1_000.0), CancellationToken::new())
    }

    fn spec(request_idx: u64, lifetime: f64) -> SessionSpec {
        SessionSpec {
            auth_data: json!({"request_idx": request_idx}),
            cost: 100.0,
            request_idx,
            lifetime,
            on_close_route: None,
            on_close_payload: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_at_their_deadline_not_later() {
        let app = test_app();
        tokio::spawn(Arc::clone(&app).expire_sessions());
        let short = app.open_session(spec(1, 2.0)).unwrap();
        let long = app.open_session(spec(2, 5.0)).unwrap();
        assert_eq!(app.metrics.snapshot().status.cur_load, 200.0);

        tokio::time::sleep(Duration::from_millis(1_999)).await;
        assert!(!short.closed().is_cancelled());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(short.closed().is_cancelled(), "closed at its deadline");
        assert!(!long.closed().is_cancelled());

        // An extension moves the deadline by one lifetime, additively.
        app.sessions.extend(&long, &app.clock);
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert!(!long.closed().is_cancelled(), "extended to 10 s");
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        assert!(long.closed().is_cancelled());
        tokio::task::yield_now().await;
        let status = app.metrics.snapshot().status;
        assert_eq!((status.cur_load, status.cur_perf), (0.0, 200.0));
        assert_eq!(app.metrics.pending_deletes(), 2);

        // A session opened while the task sleeps on a later alarm still closes on time.
        let later = app.open_session(spec(3, 30.0)).unwrap();
        let sooner = app.open_session(spec(4, 1.0)).unwrap();
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        assert!(sooner.closed().is_cancelled());
        assert!(!later.closed().is_cancelled());
        assert!(app.close_session(&later, CloseReason::ClientEnd).await);
        assert!(!app.close_session(&later, CloseReason::ClientEnd).await);
    }

    #[tokio::test(start_paused = true)]
    async fn session_status_answers_at_once_or_when_a_session_opens() {
        let app = test_app();
        let start = tokio::time::Instant::now();
        assert_eq!(
            app.session_status(Duration::ZERO).await,
            SessionStatusResponse::not_held()
        );
        assert_eq!(start.elapsed(), Duration::ZERO);

        // A long poll started before the session opens returns when it opens.
        let waiting = tokio::spawn({
            let app = Arc::clone(&app);
            async move { app.session_status(Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished());
        let session = app.open_session(spec(1, 60.0)).unwrap();
        let status = waiting.await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "woken, not polled"
        );
        assert_eq!(
            status,
            SessionStatusResponse::held(session.id.clone(), 1_010.0, 1_070.0, 1)
        );

        // Held: answered at once, whatever the wait.
        let again = app.session_status(Duration::from_secs(3_600)).await;
        assert_eq!(again, status);
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        // Closed: a wait runs to its end and answers "not held".
        assert!(app.close_session(&session, CloseReason::Release).await);
        let before = tokio::time::Instant::now();
        assert_eq!(
            app.session_status(Duration::from_millis(2_500)).await,
            SessionStatusResponse::not_held()
        );
        assert_eq!(before.elapsed(), Duration::from_millis(2_500));
    }

    #[tokio::test(start_paused = true)]
    async fn session_status_describes_the_oldest_and_ends_on_shutdown() {
        let app = test_app();
        let first = app.open_session(spec(1, 60.0)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        app.open_session(spec(2, 60.0)).unwrap();
        let status = app.session_status(Duration::ZERO).await;
        assert_eq!(status.session_id.as_deref(), Some(first.id.as_str()));
        assert_eq!(status.open_sessions, 2);
        app.close_all(CloseReason::Release, CALLBACK_TIMEOUT).await;

        let waiting = tokio::spawn({
            let app = Arc::clone(&app);
            async move { app.session_status(Duration::from_secs(600)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = tokio::time::Instant::now();
        app.shutdown.cancel();
        assert_eq!(waiting.await.unwrap(), SessionStatusResponse::not_held());
        assert_eq!(before.elapsed(), Duration::ZERO, "shutdown ends the wait");
    }

    #[tokio::test(start_paused = true)]
    async fn close_all_accounts_every_session_before_slow_callbacks() {
        // A callback target that accepts connections and never answers.
        let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let route = format!("http://{}/closed", hanging.local_addr().unwrap());
        let _accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = hanging.accept().await {
                held.push(conn);
            }
        });
        let app = test_app();
        let mut ids = Vec::new();
        for idx in 1..=3 {
            let mut spec = spec(idx, 600.0);
            spec.on_close_route = Some(route.clone());
            ids.push(app.open_session(spec).unwrap().id.clone());
        }
        let budget = Duration::from_secs(1);
        // The callbacks run side by side: three hanging callbacks take one
        // budget, not three (on tokio's paused clock, so this is exact).
        let closed = tokio::time::timeout(
            budget + Duration::from_millis(500),
            app.close_all(CloseReason::Shutdown, budget),
        )
        .await
        .expect("close_all ran the callbacks concurrently");
        assert_eq!(closed, ids, "oldest first");
        assert!(app.sessions.is_empty());
        let status = app.metrics.snapshot().status;
        assert_eq!((status.cur_load, status.cur_perf), (0.0, 300.0));
        assert_eq!(app.metrics.pending_deletes(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn close_all_leaves_nothing_open_even_when_cut_short() {
        let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let route = format!("http://{}/closed", hanging.local_addr().unwrap());
        let app = test_app();
        for idx in 1..=2 {
            let mut spec = spec(idx, 600.0);
            spec.on_close_route = Some(route.clone());
            app.open_session(spec).unwrap();
        }
        // Shutdown gives up on the callbacks early: the sessions are closed
        // and accounted all the same.
        let cut = tokio::time::timeout(
            Duration::from_millis(10),
            app.close_all(CloseReason::Shutdown, Duration::from_secs(3)),
        )
        .await;
        assert!(cut.is_err(), "the callbacks were still running");
        assert!(app.sessions.is_empty());
        assert_eq!(app.metrics.snapshot().status.cur_load, 0.0);
        drop(hanging);
    }

    #[test]
    fn verifier_caches_only_valid_pairs() {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol/tests/data/signing.json"
        ))
        .unwrap();
        let vectors: Value = serde_json::from_str(&pem).unwrap();
        let private = vectors["keys"]["primary"]["private_key_pkcs1_pem"]
            .as_str()
            .unwrap();
        let key = nullworker_protocol::SigningKey::from_pem(private).unwrap();
        let verifier = Verifier::default();
        assert_eq!(verifier.verify("http://a:1", "x"), Err(AuthError::NoKey));
        assert!(verifier.set_key(key.verifying_key()));
        let sig = key.sign_url("http://a:1");
        for _ in 0..3 {
            verifier.verify("http://a:1", &sig).unwrap();
        }
        assert!(verifier.verify("http://a:2", &sig).is_err());
        assert!(verifier.verify("http://a:1", "AAAA").is_err());
        assert_eq!(verifier.cache.read().unwrap().len(), 1);
        for port in 0..20 {
            let url = format!("http://a:{port}");
            verifier.verify(&url, &key.sign_url(&url)).unwrap();
        }
        assert_eq!(verifier.cache.read().unwrap().len(), SIGNATURE_CACHE_SIZE);
    }

    #[test]
    fn callback_bodies() {
        assert_eq!(callback_body("abc", None), json!({"session_id": "abc"}));
        assert_eq!(
            callback_body("abc", Some(&json!({"k": 1}))),
            json!({"k": 1, "session_id": "abc"})
        );
        assert_eq!(
            callback_body("abc", Some(&json!({"session_id": "x"}))),
            json!({"session_id": "x"})
        );
        assert_eq!(
            callback_body("abc", Some(&json!([1]))),
            json!({"payload": [1], "session_id": "abc"})
        );
        assert_eq!(
            callback_body("abc", Some(&json!("s"))),
            json!({"payload": "s", "session_id": "abc"})
        );
    }

    #[test]
    fn callback_urls() {
        let origin = url::Url::parse("http://127.0.0.1:9090/").unwrap();
        assert_eq!(
            resolve_callback(&origin, "http://example.org/done")
                .unwrap()
                .as_str(),
            "http://example.org/done"
        );
        assert_eq!(
            resolve_callback(&origin, "/closed?x=1").unwrap().as_str(),
            "http://127.0.0.1:9090/closed?x=1"
        );
        assert!(resolve_callback(&origin, "ftp://example.org/").is_none());
        let health = url::Url::parse("https://user:pw@h:8443/health?q=1").unwrap();
        assert_eq!(origin_of(&health).as_str(), "https://h:8443/");
    }
}
