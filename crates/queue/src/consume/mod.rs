//! The consumer loop that runs beside `nullworker serve` on each worker:
//! wait until this worker holds a session, claim exactly one job, run the
//! user's command with the payload on stdin, ack it (exit 0) or fail it
//! (retry or dead-letter), release the session, repeat.
//!
//! * [`run`] — the loop, against any [`Queue`] and the worker's control
//!   server (`GET /session?wait=S`, `POST /release`).
//! * [`ConsumeConfig`] — the command, the control URL and the timings.
//! * [`StopSignals`] — shutdown: the first request stops claiming and gives a
//!   running job its grace; the second skips the grace. A job cut short is
//!   handed back to the queue ([`Queue::release`]), so none is lost.
//! * [`Health`] — what the consumer's `/health` reports: the loop is alive
//!   and the queue reachable.
//!
//! The pure decisions (grace and kill deadlines, heartbeat period, backoff)
//! live in `policy`; spawning and supervising the command in `child`.
//!
//! A worker that holds no session may be stopped at any moment, so no job is
//! claimed without one; a session for which no job arrives within the claim
//! timeout is released (another consumer took the work it was opened for).

mod child;
mod policy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{FailOutcome, Job, Queue, QueueError, QueueUrl};

pub use policy::{consumer_id, KILL_WAIT};

/// Default `--claim-timeout`: how long a held session waits for a job before
/// it is released.
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--grace`: how long a running job may still take after a stop
/// request before it is signalled and handed back.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Long-poll of `GET /session?wait=S` while no session is held.
pub const SESSION_POLL: Duration = Duration::from_secs(30);
/// Longest accepted claim timeout and grace (one day).
pub const MAX_SETTING: Duration = Duration::from_secs(86_400);
/// Attempts at an ack, fail, hand-back or session release before giving up
/// (the job then comes back after its visibility timeout: at-least-once).
const SETTLE_ATTEMPTS: u32 = 5;
/// Attempts at releasing the session after a job.
const RELEASE_ATTEMPTS: u32 = 3;

/// Environment variables the job's command receives.
pub const ENV_JOB_ID: &str = "NULLWORKER_JOB_ID";
/// The delivery number of the job, 1 the first time.
pub const ENV_JOB_ATTEMPT: &str = "NULLWORKER_JOB_ATTEMPT";
/// The queue URL (any password replaced by `***`).
pub const ENV_QUEUE: &str = "NULLWORKER_QUEUE";
/// The id of the session this worker holds.
pub const ENV_SESSION_ID: &str = "NULLWORKER_SESSION_ID";

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// A setting is out of range.
    #[error("invalid consumer setting: {0}")]
    Config(String),
    /// The job's command could not be started (the job was handed back).
    #[error("cannot start the job command {program:?}: {reason}")]
    Spawn {
        /// The program as given.
        program: String,
        /// The operating system's reason.
        reason: String,
    },
}

/// What the loop runs and how.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// The program and its arguments; the payload goes to its stdin.
    pub command: Vec<String>,
    /// The worker's control server, e.g. `http://127.0.0.1:18999`.
    pub control_url: String,
    /// This process's name towards the queue (see [`consumer_id`]).
    pub consumer_id: String,
    /// The queue URL as shown to the command (password hidden).
    pub queue_display: String,
    /// The queue's visibility timeout: the job is heart-beaten every third.
    pub visibility_timeout: Duration,
    /// How long a held session waits for a job before it is released.
    pub claim_timeout: Duration,
    /// How long a running job may still take after a stop request.
    pub grace: Duration,
    /// Handle one job, then return.
    pub once: bool,
}

impl ConsumeConfig {
    /// Defaults for `queue`: a fresh consumer id, the queue's visibility
    /// timeout, [`DEFAULT_CLAIM_TIMEOUT`], [`DEFAULT_GRACE`].
    pub fn new(command: Vec<String>, control_url: String, queue: &QueueUrl) -> Self {
        Self {
            command,
            control_url,
            consumer_id: new_consumer_id(),
            queue_display: queue.to_string(),
            visibility_timeout: queue.options.visibility_timeout,
            claim_timeout: DEFAULT_CLAIM_TIMEOUT,
            grace: DEFAULT_GRACE,
            once: false,
        }
    }

    /// Checks the settings; the message names the bad value and the range.
    pub fn validate(&self) -> Result<(), ConsumeError> {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ConsumeError::Config(
                "no command: expected `-- CMD [ARGS...]`".into(),
            ));
        }
        let in_range = |name: &str, value: Duration, min: Duration| {
            if value < min || value > MAX_SETTING {
                Err(ConsumeError::Config(format!(
                    "{name} {} s is out of range; expected {} to {} seconds",
                    value.as_secs_f64(),
                    min.as_secs_f64(),
                    MAX_SETTING.as_secs()
                )))
            } else {
                Ok(())
            }
        };
        in_range(
            "claim timeout",
            self.claim_timeout,
            Duration::from_millis(1),
        )?;
        in_range("grace", self.grace, Duration::ZERO)?;
        in_range(
            "visibility timeout",
            self.visibility_timeout,
            Duration::from_secs(1),
        )?;
        Ok(())
    }
}

/// A consumer name unique to this process: host name, pid and a random part.
pub fn new_consumer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    consumer_id(&host, std::process::id(), rand::random())
}

/// Shutdown requests: `drain` (the first SIGTERM/SIGINT) stops claiming and
/// gives a running job its grace; `now` (the second) skips the grace and
/// implies `drain`.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Stop claiming; finish or hand back the running job; release; return.
    pub drain: CancellationToken,
    /// Skip what is left of the grace.
    pub now: CancellationToken,
}

/// The loop's health as `/health` reports it.
#[derive(Debug)]
pub struct Health {
    alive: AtomicBool,
    queue_reachable: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            alive: AtomicBool::new(false),
            queue_reachable: AtomicBool::new(true),
        }
    }
}

impl Health {
    /// Healthy: the loop is running and its last queue call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.problem().is_none()
    }

    /// Why it is unhealthy, if it is.
    pub fn problem(&self) -> Option<&'static str> {
        if !self.alive.load(Ordering::Relaxed) {
            Some("the consumer loop is not running")
        } else if !self.queue_reachable.load(Ordering::Relaxed) {
            Some("the queue is unreachable")
        } else {
            None
        }
    }

    fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    fn set_queue_reachable(&self, ok: bool) {
        let was = self.queue_reachable.swap(ok, Ordering::Relaxed);
        if ok && !was {
            tracing::info!("the queue is reachable again");
        }
    }
}

/// What the loop did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumeSummary {
    /// Jobs whose command exited 0 and that were acked.
    pub acked: u64,
    /// Jobs failed and put back for a retry.
    pub retried: u64,
    /// Jobs failed for the last time and dead-lettered.
    pub dead_lettered: u64,
    /// Jobs handed back unfinished on shutdown.
    pub handed_back: u64,
    /// Jobs that were no longer ours when we settled them (their visibility
    /// timeout had passed).
    pub lost: u64,
    /// Sessions released because no job arrived within the claim timeout.
    pub idle_releases: u64,
}

/// Runs the consumer loop until `stop.drain` (or after one job with
/// `config.once`). Errors of the queue and of the control server are logged
/// and retried with a bounded backoff; only a command that cannot be
/// started ends the loop with an error (after handing its job back).
pub async fn run(
    queue: &dyn Queue,
    config: &ConsumeConfig,
    health: &Health,
    stop: &StopSignals,
) -> Result<ConsumeSummary, ConsumeError> {
    config.validate()?;
    health.set_alive(true);
    let mut consumer = Consumer {
        queue,
        config,
        health,
        stop,
        summary: ConsumeSummary::default(),
        failures: 0,
    };
    tracing::info!(
        consumer = %config.consumer_id,
        queue = %config.queue_display,
        control = %config.control_url,
        "consumer started"
    );
    let result = consumer.run_loop().await;
    health.set_alive(false);
    tracing::info!(summary = ?consumer.summary, "consumer stopped");
    result.map(|()| consumer.summary)
}

/// What one claim attempt gave.
enum Claimed {
    Job(Job),
    /// Nothing within the claim timeout.
    Empty,
    /// A stop was requested while claiming.
    Stopping,
    /// The queue failed (already logged).
    Error,
}

struct Consumer<'a> {
    queue: &'a dyn Queue,
    config: &'a ConsumeConfig,
    health: &'a Health,
    stop: &'a StopSignals,
    summary: ConsumeSummary,
    /// Consecutive failed calls, for the backoff.
    failures: u32,
}

impl Consumer<'_> {
    fn stopping(&self) -> bool {
        self.stop.drain.is_cancelled() || self.stop.now.is_cancelled()
    }

    async fn stop_requested(&self) {
        tokio::select! {
            () = self.stop.drain.cancelled() => {}
            () = self.stop.now.cancelled() => {}
        }
    }

    /// Sleeps for the next backoff step; false if a stop came first.
    async fn back_off(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        let pause = policy::backoff(self.failures);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.stop_requested() => false,
        }
    }

    /// Records the outcome of a queue call for `/health`.
    fn queue_result<T>(&mut self, op: &str, result: &Result<T, QueueError>) {
        match result {
            Ok(_) | Err(QueueError::Lost { .. }) => {
                self.failures = 0;
                self.health.set_queue_reachable(true);
            }
            Err(err) => {
                tracing::warn!("queue {op} failed: {err}");
                self.health.set_queue_reachable(false);
            }
        }
    }

    async fn run_loop(&mut self) -> Result<(), ConsumeError> {
        while !self.stopping() {
            let Some(session_id) = self.wait_for_session().await else {
                break;
            };
            let job = match self.claim_one().await {
                Claimed::Job(job) => job,
                Claimed::Empty => {
                    tracing::info!(
                        "no job within {:?}; releasing the session",
                        self.config.claim_timeout
                    );
                    self.summary.idle_releases += 1;
                    self.release_session().await;
                    continue;
                }
                Claimed::Stopping => {
                    self.release_session().await;
                    break;
                }
                Claimed::Error => {
                    if !self.back_off().await {
                        self.release_session().await;
                        break;
                    }
                    continue;
                }
            };
            tracing::info!(job = %job.id, attempt = job.attempt, session = %session_id, "claimed job");
            if self.stopping() {
                self.hand_back(&job, "stopping before it started").await;
                self.release_session().await;
                break;
            }
            let outcome = self.run_job(&job, &session_id).await;
            self.release_session().await;
            outcome?;
            if self.config.once {
                break;
            }
        }
        Ok(())
    }

    /// Long-polls the control server until this worker holds a session;
    /// its id, or `None` if a stop came first.
    async fn wait_for_session(&mut self) -> Option<String> {
        let mut waiting_logged = false;
        let mut control_failures = 0u32;
        loop {
            let status = tokio::select! {
                () = self.stop_requested() => return None,
                status = nullworker_client::consumer::session_status(
                    &self.config.control_url,
                    Some(SESSION_POLL),
                ) => status,
            };
            if status.is_ok() && control_failures > 0 {
                tracing::info!("the worker's control server answers again");
                control_failures = 0;
            }
            match status {
                Ok(status) if status.held => {
                    self.failures = 0;
                    return Some(status.session_id.unwrap_or_default());
                }
                Ok(_) => {
                    self.failures = 0;
                    if !waiting_logged {
                        tracing::info!("waiting for this worker to be reserved");
                        waiting_logged = true;
                    }
                    // Nothing else touches the queue while nobody reserves
                    // this worker: probe it so that /health stays true.
                    let probe = self.queue.stats().await;
                    self.queue_result("stats", &probe);
                }
                Err(err) => {
                    control_failures += 1;
                    // The worker may still be starting: say so once, then
                    // only at debug level until it answers.
                    if control_failures == 1 {
                        tracing::warn!("cannot read the worker's session status (retrying): {err}");
                    } else {
                        tracing::debug!("cannot read the worker's session status: {err}");
                    }
                    if !self.back_off().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Requeues expired jobs, then claims one, waiting up to the claim
    /// timeout in slices so that a stop is noticed within a second.
    async fn claim_one(&mut self) -> Claimed {
        let requeued = self.queue.requeue_expired().await;
        self.queue_result("requeue", &requeued);
        match requeued {
            Ok(0) => {}
            Ok(n) => tracing::info!("requeued {n} job(s) whose consumer stopped heart-beating"),
            Err(_) => return Claimed::Error,
        }
        let deadline = Instant::now() + self.config.claim_timeout;
        loop {
            if self.stopping() {
                return Claimed::Stopping;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Claimed::Empty;
            }
            let claimed = self
                .queue
                .claim(&self.config.consumer_id, policy::claim_slice(remaining))
                .await;
            self.queue_result("claim", &claimed);
            match claimed {
                Ok(Some(job)) => return Claimed::Job(job),
                Ok(None) => {}
                Err(_) => return Claimed::Error,
            }
        }
    }

    /// Runs the command for `job` and settles the job: ack, fail or hand back.
    async fn run_job(&mut self, job: &Job, session_id: &str) -> Result<(), ConsumeError> {
        let env = vec![
            (ENV_JOB_ID, job.id.clone()),
            (ENV_JOB_ATTEMPT, job.attempt.to_string()),
            (ENV_QUEUE, self.config.queue_display.clone()),
            (ENV_SESSION_ID, session_id.to_owned()),
        ];
        let started = Instant::now();
        let mut running = match child::spawn(&self.config.command, env, job.payload.clone()).await {
            Ok(running) => running,
            Err(err) => {
                let program = self.config.command.first().cloned().unwrap_or_default();
                tracing::error!(job = %job.id, "cannot start {program:?}: {err}");
                self.hand_back(job, "its command could not start").await;
                return Err(ConsumeError::Spawn {
                    program,
                    reason: err.to_string(),
                });
            }
        };
        tracing::debug!(job = %job.id, pid = running.pid(), "command started");
        let timing = child::Timing {
            heartbeat_every: policy::heartbeat_interval(self.config.visibility_timeout),
            grace: self.config.grace,
            kill_wait: KILL_WAIT,
        };
        let lost = AtomicBool::new(false);
        let supervised = child::supervise(&mut running, timing, self.stop, || {
            self.heartbeat(job, timing.heartbeat_every, &lost)
        })
        .await;
        let took = started.elapsed();
        if supervised.cut_short() {
            self.hand_back(job, "stopped after the grace").await;
            return Ok(());
        }
        let status = match supervised.status {
            Ok(status) => status,
            Err(err) => {
                tracing::error!(job = %job.id, "cannot wait for the command: {err}");
                self.hand_back(job, "its command could not be waited for")
                    .await;
                return Ok(());
            }
        };
        let described = child::describe(&status);
        if status.success() {
            match self.settle("ack", || self.queue.ack(job)).await {
                Ok(()) => {
                    self.summary.acked += 1;
                    tracing::info!(job = %job.id, attempt = job.attempt, "{described} after {took:.1?}: acked");
                }
                Err(err) => self.settle_failed(job, &described, &err),
            }
        } else {
            match self.settle("fail", || self.queue.fail(job)).await {
                Ok(FailOutcome::Retried) => {
                    self.summary.retried += 1;
                    tracing::warn!(job = %job.id, attempt = job.attempt, "{described} after {took:.1?}: failed, will be retried");
                }
                Ok(FailOutcome::DeadLettered) => {
                    self.summary.dead_lettered += 1;
                    tracing::warn!(job = %job.id, attempt = job.attempt, "{described} after {took:.1?}: failed, dead-lettered");
                }
                Err(err) => self.settle_failed(job, &described, &err),
            }
        }
        Ok(())
    }

    fn settle_failed(&mut self, job: &Job, described: &str, err: &QueueError) {
        if matches!(err, QueueError::Lost { .. }) {
            self.summary.lost += 1;
            tracing::warn!(job = %job.id, "{described}, but the job was lost: {err}; its new holder runs it");
        } else {
            tracing::error!(job = %job.id, "{described}, but settling it failed: {err}; it runs again after its visibility timeout");
        }
    }

    /// One heartbeat, bounded by a period; a lost job is logged once.
    async fn heartbeat(&self, job: &Job, period: Duration, lost: &AtomicBool) {
        let result = match tokio::time::timeout(period, self.queue.heartbeat(job)).await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Backend {
                backend: "queue",
                op: "heartbeat",
                reason: format!("no answer within {period:?}"),
            }),
        };
        match result {
            Ok(()) => {
                self.health.set_queue_reachable(true);
            }
            Err(QueueError::Lost { .. }) => {
                if !lost.swap(true, Ordering::Relaxed) {
                    tracing::warn!(job = %job.id, "the job's visibility timeout passed and someone else holds it now; letting the command finish");
                }
            }
            Err(err) => {
                self.health.set_queue_reachable(false);
                tracing::warn!(job = %job.id, "heartbeat failed: {err}");
            }
        }
    }

    /// Retries a settling call (ack, fail, release) a bounded number of
    /// times; `Lost` is final.
    async fn settle<T, F, Fut>(&mut self, op: &str, mut call: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = call().await;
            self.queue_result(op, &result);
            match result {
                Err(QueueError::Lost { .. }) => return result,
                Err(_) if attempt < SETTLE_ATTEMPTS => {
                    tokio::time::sleep(policy::backoff(attempt)).await;
                }
                result => return result,
            }
        }
    }

    /// Hands an unfinished job back to the queue at once.
    async fn hand_back(&mut self, job: &Job, why: &str) {
        match self.settle("release", || self.queue.release(job)).await {
            Ok(()) => {
                self.summary.handed_back += 1;
                tracing::warn!(job = %job.id, attempt = job.attempt, "{why}: handed back to the queue");
            }
            Err(err) => self.settle_failed(job, why, &err),
        }
    }

    /// `POST /release` on the control server, retried a few times.
    async fn release_session(&mut self) {
        for attempt in 1..=RELEASE_ATTEMPTS {
            match nullworker_client::consumer::release(&self.config.control_url).await {
                Ok(reply) => {
                    tracing::info!(released = reply.released, "session released");
                    return;
                }
                Err(err) if attempt < RELEASE_ATTEMPTS => {
                    tracing::warn!("releasing the session failed: {err}; retrying");
                    tokio::time::sleep(policy::backoff(attempt)).await;
                }
                Err(err) => {
                    tracing::error!(
                        "releasing the session failed: {err}; it ends when its lease expires"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsumeConfig {
        let url: QueueUrl = "sqlite:q.db?queue=q".parse().unwrap();
        ConsumeConfig::new(vec!["true".into()], "http://127.0.0.1:1".into(), &url)
    }

    #[test]
    fn config_ranges() {
        assert!(config().validate().is_ok());
        let cases: Vec<(ConsumeConfig, &str)> = vec![
            (
                ConsumeConfig {
                    command: vec![],
                    ..config()
                },
                "no command",
            ),
            (
                ConsumeConfig {
                    command: vec![String::new()],
                    ..config()
                },
                "no command",
            ),
            (
                ConsumeConfig {
                    claim_timeout: Duration::ZERO,
                    ..config()
                },
                "claim timeout 0 s",
            ),
            (
                ConsumeConfig {
                    grace: Duration::from_secs(100_000),
                    ..config()
                },
                "grace 100000 s",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn defaults_come_from_the_queue_url() {
        let url: QueueUrl = "redis://:pw@h:1?list=a&visibility_timeout=9"
            .parse()
            .unwrap();
        let c = ConsumeConfig::new(vec!["x".into()], "http://c".into(), &url);
        assert_eq!(c.visibility_timeout, Duration::from_secs(9));
        assert_eq!(c.claim_timeout, DEFAULT_CLAIM_TIMEOUT);
        assert_eq!(c.grace, DEFAULT_GRACE);
        assert!(!c.queue_display.contains("pw"), "{}", c.queue_display);
        assert_ne!(c.consumer_id, new_consumer_id(), "consumer ids are unique");
    }

    #[test]
    fn health_reports_the_first_problem() {
        let h = Health::default();
        assert_eq!(h.problem(), Some("the consumer loop is not running"));
        h.set_alive(true);
        assert!(h.is_healthy());
        h.set_queue_reachable(false);
        assert_eq!(h.problem(), Some("the queue is unreachable"));
        h.set_queue_reachable(true);
        assert!(h.is_healthy());
    }
}
