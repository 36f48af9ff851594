//! (in progress)
#![allow(unused)]
use std::path::Path;
use crate::{backend::OpenMode, Queue, QueueError, QueueOptions};
pub(super) async fn open(server: &str, list: &str, options: QueueOptions, mode: OpenMode) -> Result<Box<dyn Queue>, QueueError> {
    Err(QueueError::Config("redis list backend in progress".into()))
}
