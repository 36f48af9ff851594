//! End-to-end tests: the real `nullworker` binary on ephemeral loopback ports.
//!
//! One test binary with one module per area; shared helpers live in `common`.

mod common;

mod chaos;
mod client;
mod dashboard;
mod dispatch;
mod endpoint_cli;
mod engine;
mod examples;
mod interop;
mod output;
mod queue_cli;
mod queue_flow;
mod vast_boot;
mod worker;
