//! The queue backends, one module each, and [`open`], which connects to the
//! one a [`QueueUrl`] names and checks that its queue exists.

mod nats;
mod redis_common;
mod redis_list;
mod redis_stream;
mod sqlite;

use crate::{Backend, Queue, QueueError, QueueUrl};

/// Whether [`open`] may create a missing queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The stream, consumer group or durable consumer must exist already; a
    /// missing one is [`QueueError::Missing`] with a hint to create it.
    Existing,
    /// Create what is missing (idempotent): `nullworker queue create`,
    /// producers given `--create`, tests and the demo.
    Create,
}

/// Connects to the queue `url` names. SQLite databases and tables are
/// always created (the file is the queue); server-side queues follow `mode`.
pub async fn open(url: &QueueUrl, mode: OpenMode) -> Result<Box<dyn Queue>, QueueError> {
    let options = url.options.clone();
    match &url.backend {
        Backend::Sqlite { path, queue } => sqlite::open(path, queue, options).await,
        Backend::RedisList { server, list } => redis_list::open(server, list, options, mode).await,
        Backend::RedisStream {
            server,
            stream,
            group,
        } => redis_stream::open(server, stream, group, options, mode).await,
        Backend::Nats {
            server,
            stream,
            subject,
            consumer,
        } => nats::open(server, stream, subject, consumer, options, mode).await,
    }
}
