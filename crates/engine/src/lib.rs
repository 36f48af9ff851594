//! The local serverless engine (`nullworker engine`): a Vast-compatible
//! route service, web API and autoscaler that runs workers as local
//! processes.
//!
//! Layers, each depending only on those below it:
//!
//! * [`engine`] — the composition root: starts and stops everything.
//! * [`api`] (the HTTP surface, errors in [`http_error`], served with its
//!   connection limits by [`serve`]) and [`scaler`]
//!   (the autoscaler loop) — both feed events to the context.
//! * [`context`] — the shared [`context::Core`]: the registry behind one
//!   mutex, and the drivers of its effects (spawner thread, [`store`]
//!   thread, [`signer`], wake-ups); [`metrics`] — counters and `/metrics`.
//! * [`registry`] — the live state as a state machine: events in, effects
//!   out, `now` passed in ([`clock`] gives it); [`report`] — worker reports
//!   parsed leniently, their numbers bounded.
//! * [`policy`] — pure decisions; [`endpoint`] — endpoint settings, the
//!   `seed` preset, worker templates; [`supervisor`] — processes;
//!   [`state`] / [`db`] — the state directory, kept in bounds by
//!   [`housekeeping`]; [`config`] — the validated
//!   [`EngineConfig`].
//! * [`cli`] — `nullworker engine` and `nullworker endpoint ...`.
//! * [`ui`] — the dashboard on its own port, fed by [`events`], the
//!   engine's event stream (the registry's observations, published after
//!   its lock is released).
pub mod api;
pub mod clock;
pub mod config;
pub mod context;
pub mod db;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod events;
pub mod housekeeping;
pub mod http_error;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod report;
pub mod scaler;
pub mod serve;
pub mod signer;
pub mod state;
pub mod store;
pub mod supervisor;
#[cfg(test)]
mod testing;
pub mod ui;

pub use config::EngineConfig;
pub use engine::{Engine, EngineHandle, WorkerInfo};
pub use error::EngineError;

/// The single local account's user id (`user_id` in the web API).
pub const USER_ID: i64 = 1;
