//! The dispatcher's Prometheus metrics (names prefixed
//! `nullworker_dispatch_`), updated from its events and rendered in the
//! OpenMetrics text format; serving them over HTTP is the caller's job.
//!
//! | Metric | Type | Meaning |
//! |---|---|---|
//! | `backlog` | gauge | Jobs waiting, at the last reading. |
//! | `in_flight` | gauge | Jobs claimed and not yet acknowledged. |
//! | `dead` | gauge | Dead-lettered jobs. |
//! | `sessions{state="requested"\|"held"}` | gauge | Sessions open, by state. |
//! | `sessions_opened_total` | counter | Sessions requested. |
//! | `sessions_released_total` | counter | Sessions released by their workers. |
//! | `sessions_ended_total{how}` | counter | Held sessions ended, by how (`released`, `closed`, `expired`, `worker_lost`). |
//! | `session_failures_total` | counter | Session requests that failed before holding a worker. |
//! | `queue_errors_total` | counter | Failed readings of the queue. |
//! | `decision_seconds` | histogram | From reading counts that call for sessions to having requested them. |

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::machine::{Counts, DispatchEvent, EndKind};

type Labels = Vec<(&'static str, &'static str)>;

/// The dispatcher's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    backlog: Gauge,
    in_flight: Gauge,
    dead: Gauge,
    sessions: Family<Labels, Gauge>,
    opened: Counter,
    released: Counter,
    ended: Family<Labels, Counter>,
    failures: Counter,
    queue_errors: Counter,
    decision: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nullworker_dispatch");
        let backlog = Gauge::default();
        let in_flight = Gauge::default();
        let dead = Gauge::default();
        let sessions = Family::<Labels, Gauge>::default();
        let opened = Counter::default();
        let released = Counter::default();
        let ended = Family::<Labels, Counter>::default();
        let failures = Counter::default();
        let queue_errors = Counter::default();
        // 10 µs to about 10 s.
        let decision = Histogram::new(exponential_buckets(0.000_01, 4.0, 11));
        registry.register(
            "backlog",
            "Jobs waiting, at the last reading",
            backlog.clone(),
        );
        registry.register(
            "in_flight",
            "Jobs claimed and not yet acknowledged, at the last reading",
            in_flight.clone(),
        );
        registry.register(
            "dead",
            "Dead-lettered jobs, at the last reading",
            dead.clone(),
        );
        registry.register("sessions", "Sessions open, by state", sessions.clone());
        registry.register("sessions_opened", "Sessions requested", opened.clone());
        registry.register(
            "sessions_released",
            "Sessions released by their workers",
            released.clone(),
        );
        registry.register(
            "sessions_ended",
            "Held sessions ended, by how",
            ended.clone(),
        );
        registry.register(
            "session_failures",
            "Session requests that failed before holding a worker",
            failures.clone(),
        );
        registry.register(
            "queue_errors",
            "Failed readings of the queue",
            queue_errors.clone(),
        );
        registry.register(
            "decision_seconds",
            "Time from reading counts that call for sessions to having requested them",
            decision.clone(),
        );
        for state in ["requested", "held"] {
            sessions.get_or_create(&vec![("state", state)]).set(0);
        }
        Self {
            registry,
            backlog,
            in_flight,
            dead,
            sessions,
            opened,
            released,
            ended,
            failures,
            queue_errors,
            decision,
        }
    }

    /// Updates the metrics an event changes.
    pub fn record(&self, event: &DispatchEvent) {
        match event {
            DispatchEvent::Stats {
                backlog,
                in_flight,
                dead,
                ..
            } => {
                self.backlog.set(clamp(*backlog));
                self.in_flight.set(clamp(*in_flight));
                self.dead.set(clamp(*dead));
            }
            DispatchEvent::Decision(d) => {
                self.opened.inc_by(d.to_open as u64);
            }
            DispatchEvent::SessionEnded { how, .. } => {
                if *how == EndKind::Released {
                    self.released.inc();
                }
                self.ended.get_or_create(&vec![("how", how.as_str())]).inc();
            }
            DispatchEvent::SessionFailed { .. } => {
                self.failures.inc();
            }
            DispatchEvent::QueueError { .. } => {
                self.queue_errors.inc();
            }
            _ => {}
        }
    }

    /// Sets the sessions-by-state gauges.
    pub fn set_counts(&self, counts: Counts) {
        self.sessions
            .get_or_create(&vec![("state", "requested")])
            .set(counts.requested as i64);
        self.sessions
            .get_or_create(&vec![("state", "held")])
            .set(counts.held as i64);
    }

    /// The backlog, in-flight and held-session gauges, as last set (what
    /// `nullworker dispatch` reports to a local engine's dashboard).
    pub fn counts_now(&self) -> (u64, u64, u64) {
        let held = self.sessions.get_or_create(&vec![("state", "held")]).get();
        (
            self.backlog.get().max(0) as u64,
            self.in_flight.get().max(0) as u64,
            held.max(0) as u64,
        )
    }

    /// Records one decision's latency.
    pub fn observe_decision(&self, took: Duration) {
        self.decision.observe(took.as_secs_f64());
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
