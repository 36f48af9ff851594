//! The null worker (`nullworker serve`): a drop-in for the Vast Null PyWorker.
//!
//! It holds Vast Serverless sessions (reservations) open, reports its load to
//! the engine and lets the local queue consumer release its session. Modules:
//!
//! * [`config`] — the settings table (flags and environment variables), validated into a `WorkerConfig`.
//! * [`clock`] — epoch timestamps derived from tokio's (pausable) clock.
//! * [`sessions`] — the session table: capacity, extension, deadlines, `session_auth`.
//! * [`metrics`] — load accounting and report contents.
//! * [`app`] — shared state; opening/closing sessions, signatures, readiness, errors.
//! * [`reporter`] — public key fetch, `/worker_status/`, `/delete_requests/`, beacon.
//! * [`health`] — the consumer health-check loop.
//! * [`http`] — the public, HTTP-only and control routers and the connection server.
//! * [`memory`] — open-connection counts, and returning freed heap after a burst.
//! * [`run`] — lifecycle: bind, start the tasks, graceful shutdown.
//!
//! The command line (`nullworker serve`, `nullworker release`) lives in the
//! `nullworker` CLI crate, built from [`config::SETTINGS`].

pub mod app;
pub mod busy_poll;
pub mod clock;
pub mod config;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod reporter;
pub mod run;
pub mod sessions;
