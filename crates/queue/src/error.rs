//! The queue library's error type. Every message names the value at fault
//! and what was expected, so the CLI can print it as one line.

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue URL is malformed or names an unknown scheme or option.
    #[error("queue URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (credentials removed).
        url: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A queue option (visibility timeout, attempts, ...) is out of range.
    #[error("invalid queue option: {0}")]
    Config(String),
    /// The queue server could not be reached.
    #[error("cannot reach {what} at {addr}: {reason}")]
    Unreachable {
        /// `redis`, `NATS`, `SQLite database`.
        what: &'static str,
        /// Where we tried.
        addr: String,
        /// The underlying error.
        reason: String,
    },
    /// The queue (stream, consumer group, durable consumer, table) does not
    /// exist; `hint` says how to create it.
    #[error("{what} does not exist; {hint}")]
    Missing {
        /// What is missing, e.g. `stream "jobs"`.
        what: String,
        /// How to create it.
        hint: String,
    },
    /// The server answered an operation with an error.
    #[error("{op} failed on {backend}: {reason}")]
    Backend {
        /// `redis`, `nats`, `sqlite`.
        backend: &'static str,
        /// The operation (`claim`, `ack`, ...).
        op: &'static str,
        /// The underlying error.
        reason: String,
    },
    /// The job is no longer held by this consumer (its visibility timeout
    /// passed and it was handed to someone else, or it was acked already).
    #[error("job {id} is no longer held by this consumer")]
    Lost {
        /// The job's id.
        id: String,
    },
}

impl QueueError {
    /// Shorthand for [`QueueError::Backend`].
    pub(crate) fn backend(
        backend: &'static str,
        op: &'static str,
        err: impl std::fmt::Display,
    ) -> Self {
        Self::Backend {
            backend,
            op,
            reason: err.to_string(),
        }
    }
}
