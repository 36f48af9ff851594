//! Helpers shared by every end-to-end test: the binary path, processes that
//! are killed when dropped, free ports and waiting on conditions.
#![allow(dead_code)]

pub mod browser;
pub mod engine;
pub mod fake_engine;
pub mod process;
pub mod queue;
