//! The local serverless engine (`nullworker engine`): a Vast-compatible
//! route service, web API and autoscaler that runs workers as local
//! processes.
//!
//! * [`config`] — the validated [`EngineConfig`].
//! * [`endpoint`] — endpoint settings, the `seed` preset, worker templates.
//! * [`state`] / [`db`] — the state directory: SQLite database, signing key,
//!   account key.
//! * [`supervisor`] — worker and consumer processes.
//! * [`registry`] — live endpoints and workers, the route index.
//! * [`scaler`] — the autoscaler loop carrying out `policy` decisions.
//! * [`signer`] — worker URL signatures.
//! * [`api`] — the HTTP surface; [`metrics`] — `GET /metrics`.
//! * [`cli`] — `nullworker engine` and `nullworker endpoint ...`.
pub mod api;
pub mod cli;
pub mod config;
pub mod db;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod scaler;
pub mod signer;
pub mod state;
pub mod supervisor;

pub use config::EngineConfig;
pub use engine::{Engine, EngineHandle, WorkerInfo};
pub use error::EngineError;

/// The single local account's user id (`user_id` in the web API).
pub const USER_ID: i64 = 1;
