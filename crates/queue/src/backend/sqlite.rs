//! (in progress)
#![allow(unused)]
use std::path::Path;
use crate::{backend::OpenMode, Queue, QueueError, QueueOptions};
pub(super) async fn open(path: &Path, queue: &str, options: QueueOptions) -> Result<Box<dyn Queue>, QueueError> {
    Err(QueueError::Config("sqlite backend in progress".into()))
}
