//! Support shared by the benchmark binaries (`benches/worker.rs`,
//! `benches/engine.rs`, `benches/queue.rs`): command-line options common to
//! every benchmark, statistics, the HTTP/1.1 load generator, child-process
//! handling and memory sampling, a spawned engine and its web API, saved
//! runs and their comparison, and the result table.
//!
//! It owns no benchmark logic: what is measured, and against which targets,
//! lives in each benchmark binary.

// Each benchmark binary compiles this module on its own and uses a subset of it.
#![allow(dead_code)]

pub mod args;
pub mod engine;
pub mod loadgen;
pub mod process;
pub mod report;
pub mod stats;

use std::future::Future;
use std::process::ExitCode;

/// Runs a benchmark's body on `runtime` and turns its outcome into the
/// exit status; `name` (e.g. "engine bench") prefixes error messages.
pub fn main(
    name: &str,
    runtime: std::io::Result<tokio::runtime::Runtime>,
    body: impl Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{name}: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{name}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
