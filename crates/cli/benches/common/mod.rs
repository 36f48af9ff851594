//! Support shared by the benchmark binaries (`benches/worker.rs`,
//! `benches/engine.rs`): command-line options common to every benchmark,
//! statistics, the HTTP/1.1 load generator, child-process handling and
//! memory sampling, saved runs and their comparison, and the result table.
//!
//! It owns no benchmark logic: what is measured, and against which targets,
//! lives in each benchmark binary.

// Each benchmark binary compiles this module on its own and uses a subset of it.
#![allow(dead_code)]

pub mod args;
pub mod loadgen;
pub mod process;
pub mod report;
pub mod stats;
