//! Support for the `nullworker` binary: the command line ([`cli`]), logging
//! set-up, the exit-code convention ([`exit`]), error reporting at the
//! process edge, each command's module, completions and man pages
//! ([`manual`]), and `nullworker demo`, which wires the engine, the worker
//! and the client together on one machine.
//!
//! Every role lives in its own crate (`nullworker-worker`, `nullworker-engine`,
//! `nullworker-client`); this crate only connects them.

pub mod cli;
pub mod client;
pub mod consume;
pub mod demo;
pub mod demo_queue;
pub mod dispatch;
pub mod endpoint;
pub mod engine;
pub mod exit;
pub mod key;
pub mod logging;
pub mod manual;
pub mod queue;
pub mod serve;
pub mod signals;
pub mod target;

use std::process::ExitCode;

/// Prints an error chain as one line on stderr and returns the runtime
/// failure exit code ([`exit::FAILURE`]).
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("nullworker: error: {err:#}");
    ExitCode::from(exit::FAILURE)
}
