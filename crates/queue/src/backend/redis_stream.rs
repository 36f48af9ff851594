//! (in progress)
#![allow(unused)]
use std::path::Path;
use crate::{backend::OpenMode, Queue, QueueError, QueueOptions};
pub(super) async fn open(server: &str, stream: &str, group: &str, options: QueueOptions, mode: OpenMode) -> Result<Box<dyn Queue>, QueueError> {
    Err(QueueError::Config("redis stream backend in progress".into()))
}
