//! The dispatcher's driver: reads the queue every poll interval, feeds the
//! [`Dispatcher`] state machine and carries out its effects — one task per
//! requested session, which reserves a worker through a [`Reserver`]
//! (the SDK's [`Endpoint`] in production), reports when it holds one, and
//! then waits for the session to end (released by its worker's consumer,
//! or lost) or to be closed at shutdown.
//!
//! It also makes jobs of dead consumers claimable again
//! ([`Queue::requeue_expired`]) about once a second, so a Redis list
//! recovers them even when no consumer is running, and it reports every
//! event to an [`EventSink`], the log (one `info` line per decision) and
//! the [`Metrics`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nullworker_client::{Endpoint, Error as SdkError, Session, SessionEnd, SessionOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::machine::{DispatchEvent, Dispatcher, Effect, EndKind, Input, SlotId};
use super::metrics::Metrics;
use crate::Queue;

/// Longest time one queue call may take before it counts as failed.
pub const QUEUE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between queue readings while the queue keeps failing.
pub const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Why a session request ended without a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    /// The request was cancelled through its token.
    Cancelled,
    /// It failed; the reason as one line.
    Failed(String),
}

/// Reserves workers: one call, one session.
#[async_trait::async_trait]
pub trait Reserver: Send + Sync + 'static {
    /// A held session.
    type Session: HeldSession;
    /// Reserves one worker, giving up when `cancel` fires.
    async fn reserve(&self, cancel: CancellationToken) -> Result<Self::Session, ReserveError>;
}

/// A session holding a worker, its lease renewed until it ends.
#[async_trait::async_trait]
pub trait HeldSession: Send + Sync + 'static {
    /// The worker's session id.
    fn id(&self) -> &str;
    /// The worker's URL.
    fn url(&self) -> &str;
    /// Waits until the session ends on its own and says how.
    async fn ended(&self) -> (EndKind, Option<String>);
    /// Closes the session and says how it ended.
    async fn close(&self) -> (EndKind, Option<String>);
}

/// Sessions from the SDK: [`Endpoint::session`] with fixed options (the
/// cancel token of each request is its own).
#[derive(Clone)]
pub struct SdkReserver {
    endpoint: Endpoint,
    options: SessionOptions,
}

impl SdkReserver {
    /// Reserves on `endpoint` with `options`.
    pub fn new(endpoint: Endpoint, options: SessionOptions) -> Self {
        Self { endpoint, options }
    }
}

#[async_trait::async_trait]
impl Reserver for SdkReserver {
    type Session = Session;

    async fn reserve(&self, cancel: CancellationToken) -> Result<Session, ReserveError> {
        let mut options = self.options.clone();
        options.cancel = cancel;
        match self.endpoint.session(options).await {
            Ok(session) => Ok(session),
            Err(SdkError::Cancelled { .. }) => Err(ReserveError::Cancelled),
            Err(err) => Err(ReserveError::Failed(err.to_string())),
        }
    }
}

fn end_kind(how: SessionEnd) -> (EndKind, Option<String>) {
    match how {
        SessionEnd::Closed => (EndKind::Closed, None),
        SessionEnd::ReleasedByWorker => (EndKind::Released, None),
        SessionEnd::Expired => (EndKind::Expired, None),
        SessionEnd::WorkerLost { reason } => (EndKind::WorkerLost, Some(reason)),
    }
}

#[async_trait::async_trait]
impl HeldSession for Session {
    fn id(&self) -> &str {
        Session::id(self)
    }

    fn url(&self) -> &str {
        Session::url(self)
    }

    async fn ended(&self) -> (EndKind, Option<String>) {
        end_kind(Session::ended(self).await)
    }

    async fn close(&self) -> (EndKind, Option<String>) {
        match Session::close(self).await {
            Ok(how) => end_kind(how),
            Err(err) => (EndKind::WorkerLost, Some(err.to_string())),
        }
    }
}

/// Settings of the driver.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// Most sessions open at once (≥ 1).
    pub max_sessions: usize,
    /// Time between readings of the queue's counts.
    pub poll_interval: Duration,
    /// Time between [`Queue::requeue_expired`] calls.
    pub requeue_interval: Duration,
    /// After shutdown begins, how long to wait for held sessions to be
    /// released before exiting without them (`None`: as long as it takes).
    pub drain_timeout: Option<Duration>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            poll_interval: Duration::from_millis(20),
            requeue_interval: Duration::from_secs(1),
            drain_timeout: None,
        }
    }
}

/// Receives every [`DispatchEvent`] as it happens.
pub type EventSink = Box<dyn FnMut(&DispatchEvent) + Send>;

/// How [`Driver::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown finished: every session ended.
    Drained,
    /// Exited with sessions still open (second signal or drain timeout);
    /// held ones end by expiry within their lifetime.
    Abandoned {
        /// Held sessions left behind.
        held: usize,
        /// Requests dropped.
        requested: usize,
        /// Why.
        reason: String,
    },
}

/// Signals that stop [`Driver::run`].
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// First signal: stop opening, cancel requests, wait for held sessions.
    pub shutdown: CancellationToken,
    /// Second signal: exit now, leaving held sessions to expire.
    pub abort: CancellationToken,
}

struct SlotControl {
    cancel: CancellationToken,
    close: CancellationToken,
}

/// The dispatcher's driver. Build it, then [`Driver::run`] it.
pub struct Driver<R: Reserver> {
    queue: Arc<dyn Queue>,
    reserver: Arc<R>,
    config: DriverConfig,
    metrics: Arc<Metrics>,
    sink: Option<EventSink>,
}

struct Running<R: Reserver> {
    machine: Dispatcher,
    reserver: Arc<R>,
    metrics: Arc<Metrics>,
    sink: Option<EventSink>,
    slots: HashMap<SlotId, SlotControl>,
    tasks: JoinSet<()>,
    task_slots: HashMap<tokio::task::Id, SlotId>,
    tx: mpsc::UnboundedSender<Input>,
}

impl<R: Reserver> Driver<R> {
    /// A driver for `queue`, reserving workers through `reserver`.
    pub fn new(queue: Arc<dyn Queue>, reserver: Arc<R>, config: DriverConfig) -> Self {
        Self {
            queue,
            reserver,
            config,
            metrics: Arc::new(Metrics::new()),
            sink: None,
        }
    }

    /// Updates these metrics (e.g. ones served on `/metrics`).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sends every event to `sink` too.
    pub fn events(mut self, sink: EventSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Runs until shutdown has finished (every session ended) or `stop.abort`
    /// fires or the drain timeout passes.
    pub async fn run(self, stop: Stop) -> Outcome {
        let config = self.config;
        let queue = self.queue;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut run = Running {
            machine: Dispatcher::new(config.max_sessions, Instant::now()),
            reserver: self.reserver,
            metrics: self.metrics,
            sink: self.sink,
            slots: HashMap::new(),
            tasks: JoinSet::new(),
            task_slots: HashMap::new(),
            tx,
        };
        run.metrics.set_counts(run.machine.counts());

        let mut poll = tokio::time::interval(config.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut requeue = tokio::time::interval_at(
            Instant::now() + config.requeue_interval,
            config.requeue_interval,
        );
        requeue.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut queue_failures = 0u32;
        let mut next_poll: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;

        loop {
            if run.machine.is_drained() {
                return Outcome::Drained;
            }
            tokio::select! {
                biased;
                () = stop.abort.cancelled() => {
                    return run.abandon("interrupted again: exiting without waiting for held sessions");
                }
                () = sleep_until_some(drain_deadline) => {
                    return run.abandon("drain timeout passed: exiting without waiting for held sessions");
                }
                () = stop.shutdown.cancelled(), if !run.machine.is_draining() => {
                    drain_deadline = config.drain_timeout.map(|d| Instant::now() + d);
                    run.apply(Input::ShutdownRequested);
                }
                Some(input) = rx.recv() => {
                    run.apply(input);
                }
                Some(joined) = run.tasks.join_next_with_id(), if !run.tasks.is_empty() => {
                    run.reap(joined);
                }
                _ = poll.tick() => {
                    if next_poll.is_some_and(|at| Instant::now() < at) {
                        continue;
                    }
                    let asked_at = Instant::now();
                    let read = tokio::time::timeout(QUEUE_CALL_TIMEOUT, queue.stats()).await;
                    let error = match read {
                        Ok(Ok(stats)) => {
                            if queue_failures > 0 {
                                queue_failures = 0;
                                next_poll = None;
                                let t = run.machine.t(Instant::now());
                                run.report(DispatchEvent::QueueRecovered { t });
                            }
                            let observed = Instant::now();
                            if run.apply(Input::QueueObserved { stats, asked_at }) > 0 {
                                run.metrics.observe_decision(observed.elapsed());
                            }
                            continue;
                        }
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => format!(
                            "reading the queue's counts took longer than {} s",
                            QUEUE_CALL_TIMEOUT.as_secs()
                        ),
                    };
                    queue_failures = queue_failures.saturating_add(1);
                    let pause = config
                        .poll_interval
                        .saturating_mul(1u32 << queue_failures.min(16))
                        .min(MAX_ERROR_BACKOFF);
                    next_poll = Some(Instant::now() + pause);
                    if queue_failures == 1 {
                        let t = run.machine.t(Instant::now());
                        run.report(DispatchEvent::QueueError { t, error });
                    } else {
                        tracing::debug!(%error, "reading the queue failed again");
                    }
                }
                _ = requeue.tick() => {
                    match tokio::time::timeout(QUEUE_CALL_TIMEOUT, queue.requeue_expired()).await {
                        Ok(Ok(0)) => {}
                        Ok(Ok(count)) => {
                            let t = run.machine.t(Instant::now());
                            run.report(DispatchEvent::Requeued { t, count });
                        }
                        Ok(Err(err)) => tracing::debug!(error = %err, "requeueing expired jobs failed"),
                        Err(_) => tracing::debug!("requeueing expired jobs timed out"),
                    }
                }
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<R: Reserver> Running<R> {
    /// Feeds one input to the machine and carries out its effects; returns
    /// how many sessions were requested.
    fn apply(&mut self, input: Input) -> usize {
        let finished = match &input {
            Input::SessionFailed { slot, .. }
            | Input::SessionCancelled { slot }
            | Input::SessionEnded { slot, .. } => Some(*slot),
            _ => None,
        };
        let effects = self.machine.handle(Instant::now(), input);
        if let Some(slot) = finished {
            self.slots.remove(&slot);
        }
        let mut opened = 0;
        for effect in effects {
            match effect {
                Effect::Open { slot } => {
                    self.open(slot);
                    opened += 1;
                }
                Effect::Cancel { slot } => {
                    if let Some(c) = self.slots.get(&slot) {
                        c.cancel.cancel();
                    }
                }
                Effect::Close { slot } => {
                    if let Some(c) = self.slots.get(&slot) {
                        c.close.cancel();
                    }
                }
                Effect::Report(event) => self.report(event),
            }
        }
        self.metrics.set_counts(self.machine.counts());
        opened
    }

    fn open(&mut self, slot: SlotId) {
        let control = SlotControl {
            cancel: CancellationToken::new(),
            close: CancellationToken::new(),
        };
        let task = slot_task(
            self.reserver.clone(),
            slot,
            control.cancel.clone(),
            control.close.clone(),
            self.tx.clone(),
        );
        let handle = self.tasks.spawn(task);
        self.task_slots.insert(handle.id(), slot);
        self.slots.insert(slot, control);
    }

    /// A session task finished; if it died without reporting, its slot is
    /// freed as failed.
    fn reap(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (id, panicked) = match joined {
            Ok((id, ())) => (id, None),
            Err(err) => (err.id(), Some(err.to_string())),
        };
        let slot = self.task_slots.remove(&id);
        if let (Some(slot), Some(reason)) = (slot, panicked) {
            if self.slots.contains_key(&slot) {
                self.apply(Input::SessionFailed {
                    slot,
                    reason: format!("session task failed: {reason}"),
                });
                // A held session would have ended with its task.
                self.apply(Input::SessionEnded {
                    slot,
                    how: EndKind::WorkerLost,
                    detail: Some(format!("session task failed: {reason}")),
                });
            }
        }
    }

    fn report(&mut self, event: DispatchEvent) {
        log(&event);
        self.metrics.record(&event);
        if let Some(sink) = self.sink.as_mut() {
            sink(&event);
        }
    }

    fn abandon(mut self, reason: &str) -> Outcome {
        let counts = self.machine.counts();
        let t = self.machine.t(Instant::now());
        self.report(DispatchEvent::Abandoned {
            t,
            held: counts.held,
            requested: counts.requested,
            reason: reason.to_owned(),
        });
        Outcome::Abandoned {
            held: counts.held,
            requested: counts.requested,
            reason: reason.to_owned(),
        }
    }
}

/// One session: reserve, report, hold until it ends or is closed, report.
async fn slot_task<R: Reserver>(
    reserver: Arc<R>,
    slot: SlotId,
    cancel: CancellationToken,
    close: CancellationToken,
    tx: mpsc::UnboundedSender<Input>,
) {
    let session = match reserver.reserve(cancel).await {
        Ok(session) => session,
        Err(ReserveError::Cancelled) => {
            let _ = tx.send(Input::SessionCancelled { slot });
            return;
        }
        Err(ReserveError::Failed(reason)) => {
            let _ = tx.send(Input::SessionFailed { slot, reason });
            return;
        }
    };
    let _ = tx.send(Input::SessionHeld {
        slot,
        session_id: session.id().to_owned(),
        worker_url: session.url().to_owned(),
    });
    let (how, detail) = tokio::select! {
        ended = session.ended() => ended,
        () = close.cancelled() => session.close().await,
    };
    let _ = tx.send(Input::SessionEnded { slot, how, detail });
}

/// The log line of an event: decisions and session changes at `info`,
/// failures at `warn`, counts at `debug`.
fn log(event: &DispatchEvent) {
    match event {
        DispatchEvent::Stats {
            backlog,
            in_flight,
            dead,
            ..
        } => tracing::debug!(backlog, in_flight, dead, "queue counts changed"),
        DispatchEvent::Decision(d) => tracing::info!(
            backlog = d.backlog,
            in_flight = d.in_flight,
            requested = d.requested,
            held = d.held,
            "{}",
            d.reason
        ),
        DispatchEvent::SessionHeld {
            slot,
            session_id,
            worker_url,
            reserve_secs,
            ..
        } => tracing::info!(
            slot,
            %session_id,
            %worker_url,
            "session {slot} held after {reserve_secs:.3} s"
        ),
        DispatchEvent::SessionEnded {
            slot,
            how,
            held_secs,
            detail,
            ..
        } => {
            let detail = detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            match how {
                EndKind::Released | EndKind::Closed => tracing::info!(
                    slot,
                    "session {slot} {} after {held_secs:.3} s{detail}",
                    how.as_str()
                ),
                EndKind::Expired | EndKind::WorkerLost => tracing::warn!(
                    slot,
                    "session {slot} {} after {held_secs:.3} s{detail}",
                    how.as_str()
                ),
            }
        }
        DispatchEvent::SessionFailed {
            slot,
            error,
            failures,
            retry_in_secs,
            ..
        } => tracing::warn!(
            slot,
            failures,
            "session {slot} failed: {error}; opening again in {retry_in_secs:.1} s at the earliest"
        ),
        DispatchEvent::SessionCancelled { slot, .. } => {
            tracing::info!(slot, "session {slot} request cancelled")
        }
        DispatchEvent::Shutdown {
            cancelling, held, ..
        } => tracing::info!(
            "shutting down: no new sessions; cancelling {cancelling} request(s), \
             keeping {held} held session(s) until their workers release them"
        ),
        DispatchEvent::Drained { .. } => tracing::info!("every session has ended"),
        DispatchEvent::QueueError { error, .. } => {
            tracing::warn!("cannot read the queue: {error}; retrying")
        }
        DispatchEvent::QueueRecovered { .. } => tracing::info!("the queue answers again"),
        DispatchEvent::Requeued { count, .. } => {
            tracing::info!("{count} job(s) of stopped consumers made claimable again")
        }
        DispatchEvent::Abandoned {
            held,
            requested,
            reason,
            ..
        } => tracing::warn!(
            "{reason}; {held} held session(s) end by expiry within their lifetime, \
             {requested} request(s) dropped"
        ),
    }
}
