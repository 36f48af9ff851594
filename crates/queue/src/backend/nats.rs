//! (in progress)
#![allow(unused)]
use std::path::Path;
use crate::{backend::OpenMode, Queue, QueueError, QueueOptions};
pub(super) async fn open(server: &str, stream: &str, subject: &str, consumer: &str, options: QueueOptions, mode: OpenMode) -> Result<Box<dyn Queue>, QueueError> {
    Err(QueueError::Config("nats backend in progress".into()))
}
