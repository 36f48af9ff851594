//! The Rust SDK for Vast Serverless sessions.
//!
//! The SDK is the counterpart of the Python SDK's serverless client
//! (PROTOCOL.md §1, §2, §7), hardened where §14 allows:
//!
//! * [`Client`] — account level: built from the **account** api key and an
//!   [`Instance`] (or explicit URLs); finds an [`Endpoint`] by name through
//!   the web API. Nothing is downloaded for plain-HTTP targets; an extra root
//!   CA can be trusted for real Vast workers.
//! * [`Endpoint`] — reserves a worker ([`Endpoint::session`]), sends a single
//!   routed request ([`Endpoint::request`]) and lists workers
//!   ([`Endpoint::workers`]). Routing polls WAITING with jittered exponential
//!   backoff; retryable statuses and transport errors are retried with backoff.
//! * [`Session`] — a held worker with a renewed lease: [`Session::close`],
//!   [`Session::is_open`], [`Session::request`], [`Session::ended`].
//! * [`consumer::release`] and [`consumer::session_status`] — the consumer's
//!   `POST /release` and `GET /session` on the instance.
//! * [`Error`] — every failure names the step ([`Step`]) and the reason.
//!
//! * [`Client::endpoint_by_id`], [`Client::create_endpoint_with`],
//!   [`Client::update_endpoint`], [`Client::delete_endpoint`] — endpoint
//!   management on the web API (§4), plus a local engine's worker details
//!   and logs ([`Client::worker_details`], [`Client::worker_log`]).
//!
//! Modules: `config` (instances, builder), `http` (the one HTTP helper),
//! `endpoints` (endpoint management), `backoff` (pure delays), `retry` (the
//! one retry policy: schedules that `backon` drives), `client` (client,
//! endpoint, routing), `session`
//! (sessions and leases), [`runner`] (a run of `count` sessions, as `nullworker client` does).
//!
//! ```no_run
//! # async fn demo() -> Result<(), nullworker_client::Error> {
//! use std::time::Duration;
//! use nullworker_client::{Client, Instance, SessionOptions};
//!
//! let client = Client::builder("my-account-key").instance(Instance::Local).build()?;
//! let endpoint = client.endpoint("my-endpoint").await?;
//! let session = endpoint
//!     .session(SessionOptions { lifetime: Duration::from_secs(60), ..Default::default() })
//!     .await?;
//! println!("holding {} on {}", session.id(), session.url());
//! session.close().await?;
//! # Ok(()) }
//! ```

pub mod backoff;
mod client;
mod config;
pub mod consumer;
mod endpoints;
mod error;
mod http;
mod retry;
pub mod runner;
mod session;

pub use client::{Client, Endpoint, Progress, RequestOptions, Response, RouteEvent};
pub use config::{ClientBuilder, Instance, ParseInstanceError, RetryPolicy};
pub use endpoints::{
    Deleted, EndedWorker, EndpointConfig, EndpointDetail, LogChunk, LogRange, SpawnBackoff,
    WorkerDetail, WorkerDetails, LOG_LENGTH_HEADER, LOG_START_HEADER, MAX_LOG_LINES,
};
pub use error::{Error, Step};
pub use session::{Session, SessionEnd, SessionOptions, SessionStatus};
