//! Queue-driven autoscaling for nullworker: one worker per unit of work
//! waiting or in flight on the user's own queue.
//!
//! * [`url`] — `--queue URL` parsing into a validated [`QueueUrl`].
//! * [`Queue`] — the operations both loops need, over every backend
//!   ([`backend`]: Redis list, Redis stream, NATS JetStream, SQLite);
//!   [`open`] connects to the one a URL names.
//! * [`dispatch`] — the driver: keeps one session open per job waiting or in
//!   flight (a pure decision, [`dispatch::decide`], and its driver).
//! * [`consume`] — the consumer loop on each worker: wait for a session,
//!   claim one job, run the user's command, ack or fail, release.
//!
//! The trait is shaped so that an SQS backend fits it as well (visible /
//! not-visible counts, a visibility timeout, delete as ack); none is built
//! because SQS cannot be exercised offline.

pub mod backend;
pub mod consume;
pub mod dispatch;
mod error;
pub mod url;

use std::time::Duration;

pub use backend::{open, OpenMode};
pub use error::QueueError;
pub use url::{Backend, QueueOptions, QueueUrl};

/// Counts of a queue at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Jobs waiting to be claimed (SQS: `ApproximateNumberOfMessages`),
    /// including failed jobs waiting out their retry delay.
    pub backlog: u64,
    /// Jobs claimed and not yet acknowledged or failed (SQS:
    /// `ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Jobs dead-lettered after `max_attempts` failures.
    pub dead: u64,
}

impl QueueStats {
    /// Units of work that want a worker: waiting plus in flight.
    pub fn demand(&self) -> u64 {
        self.backlog.saturating_add(self.in_flight)
    }
}

/// One claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Stable id of the job across deliveries (row id, stream entry id,
    /// NATS stream sequence, or a hash for plain Redis list payloads).
    pub id: String,
    /// The job's bytes, as the producer pushed them.
    pub payload: Vec<u8>,
    /// Which delivery this is: 1 the first time.
    pub attempt: u32,
    /// What the backend needs to ack, fail or extend this delivery.
    pub receipt: String,
}

/// What [`Queue::fail`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back in the backlog, visible again after the retry delay.
    Retried,
    /// Out of attempts: moved to the dead letters.
    DeadLettered,
}

/// The operations the dispatcher and the consumer loop need from a queue.
///
/// Delivery is at-least-once: a claimed job is invisible to other consumers
/// while its consumer heart-beats ([`Queue::heartbeat`]) and is handed out
/// again once the visibility timeout passes without one.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Backlog, in-flight and dead-letter counts now.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Claims one job for `consumer` (a name unique to the claiming
    /// process), waiting up to `wait` for one to arrive; `None` on timeout.
    async fn claim(&self, consumer: &str, wait: Duration) -> Result<Option<Job>, QueueError>;

    /// Tells the queue that the consumer of `job` is alive: the job stays
    /// invisible for another visibility timeout.
    async fn heartbeat(&self, job: &Job) -> Result<(), QueueError>;

    /// The job is done: removes it for good.
    async fn ack(&self, job: &Job) -> Result<(), QueueError>;

    /// The job failed: visible again after the retry delay, or dead-lettered
    /// once it has had `max_attempts` deliveries.
    async fn fail(&self, job: &Job) -> Result<FailOutcome, QueueError>;

    /// Hands an unfinished job back at once without counting a failure (a
    /// consumer shutting down).
    async fn release(&self, job: &Job) -> Result<(), QueueError>;

    /// Makes jobs whose consumer stopped heart-beating for longer than the
    /// visibility timeout claimable again; returns how many. Backends whose
    /// server does this itself (NATS `ack_wait`) return 0.
    async fn requeue_expired(&self) -> Result<u64, QueueError>;

    /// Adds a job (producers, tests, the demo); returns its id.
    async fn push(&self, payload: &[u8]) -> Result<String, QueueError>;
}

#[cfg(feature = "testing")]
pub mod testing;
