//! `nullworker dispatch`'s engine: keeps one session open per job waiting
//! or in flight on a queue, up to a maximum.
//!
//! * [`decide`] — the pure counting rule:
//!   `open = min(max, backlog + in_flight)`, never closing to scale in, and
//!   the bounded backoff after failed session requests.
//! * [`machine`] — the [`Dispatcher`] state machine: every requested
//!   session from request to end, decisions with their reasons, shutdown.
//!   Events in, effects out, time passed in; no I/O.
//! * [`driver`] — the async [`Driver`]: polls the queue, runs one task per
//!   session through the SDK ([`SdkReserver`]), reports [`DispatchEvent`]s.
//! * [`metrics`] — the Prometheus [`Metrics`] (`nullworker_dispatch_*`).
//!
//! Sessions are counted only by the dispatcher that opened them: after a
//! restart the old process's sessions expire within their lifetime (they
//! are no longer renewed) and the new one converges on the queue's counts.

pub mod decide;
pub mod driver;
pub mod machine;
pub mod metrics;

pub use decide::{backoff_delay, decide, target};
pub use driver::{
    Driver, DriverConfig, EventSink, HeldSession, Outcome, ReserveError, Reserver, SdkReserver,
    Stop,
};
pub use machine::{Counts, Decision, DispatchEvent, Dispatcher, Effect, EndKind, Input, SlotId};
pub use metrics::Metrics;
