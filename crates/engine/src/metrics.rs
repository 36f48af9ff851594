//! Engine counters and the Prometheus text rendering of `GET /metrics`.
//! Counters are updated where things happen (`api`, registry effects);
//! gauges (workers by state, load, queue) come from the registry's
//! per-endpoint [`EndpointGauges`], O(1) each, so a scrape never holds the
//! registry lock for O(workers).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::policy::WorkerState;
use crate::registry::EndpointGauges;

/// Upper bounds (seconds) of the wait-to-ready histogram buckets.
pub const WAIT_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Kind of a `/route/` answer.
#[derive(Debug, Clone, Copy)]
pub enum RouteAnswer {
    /// A worker was assigned.
    Ready,
    /// No worker yet.
    Waiting,
    /// 400 (bad body).
    BadRequest,
    /// 401 (key or endpoint).
    Unauthorized,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; WAIT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The engine's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    route: [AtomicU64; 4],
    reports: AtomicU64,
    scale_actions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    worker_exits: Mutex<BTreeMap<&'static str, u64>>,
    wait_to_ready: Mutex<Histogram>,
}

impl Metrics {
    /// Counts one `/route/` answer.
    pub fn route(&self, answer: RouteAnswer) {
        self.route[answer as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one accepted `/worker_status/` report.
    pub fn report(&self) {
        self.reports.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one scale action.
    pub fn scale_action(&self, action: &'static str, reason: &'static str) {
        let mut map = self.scale_actions.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((action, reason)).or_insert(0) += 1;
    }

    /// Counts a worker process exit (`expected` or `unexpected`).
    pub fn worker_exit(&self, kind: &'static str) {
        let mut map = self.worker_exits.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(kind).or_insert(0) += 1;
    }

    /// Records the time from a request's first WAITING to its READY.
    pub fn wait_to_ready(&self, seconds: f64) {
        let mut h = self.wait_to_ready.lock().unwrap_or_else(|p| p.into_inner());
        for (i, bound) in WAIT_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self, registry: &[EndpointGauges]) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP nullworker_workers Workers by endpoint and state.\n# TYPE nullworker_workers gauge\n");
        for ep in registry {
            for state in WorkerState::ALL {
                let n = ep.counts[state.index()];
                let _ = writeln!(
                    out,
                    "nullworker_workers{{endpoint=\"{}\",state=\"{}\"}} {n}",
                    ep.name,
                    state.as_str()
                );
            }
        }
        per_endpoint(
            &mut out,
            registry,
            "nullworker_endpoint_load",
            "Sum of the effective load of active workers (perf units), as of the last scaler pass.",
            "gauge",
            |ep| ep.load,
        );
        per_endpoint(
            &mut out,
            registry,
            "nullworker_queued_requests",
            "Requests answered WAITING and still polling.",
            "gauge",
            |ep| ep.queued,
        );
        per_endpoint(
            &mut out,
            registry,
            "nullworker_queued_cost",
            "Sum of the cost of waiting requests.",
            "gauge",
            |ep| ep.queued_cost,
        );
        per_endpoint(
            &mut out,
            registry,
            "nullworker_worker_spawns_total",
            "Worker processes launched (first starts and restarts).",
            "counter",
            |ep| ep.spawns,
        );
        per_endpoint(
            &mut out,
            registry,
            "nullworker_worker_spawn_failures_total",
            "Launches that failed before their worker became IDLE.",
            "counter",
            |ep| ep.spawn_failures,
        );
        per_endpoint(
            &mut out,
            registry,
            "nullworker_spawn_backoff_failures",
            "Consecutive failed launches (0: no backoff).",
            "gauge",
            |ep| ep.backoff_failures,
        );
        per_endpoint(
            &mut out,
            registry,
            "nullworker_spawn_backoff_seconds",
            "Current delay between a failed launch and the next one.",
            "gauge",
            |ep| ep.backoff_delay,
        );
        out.push_str("# HELP nullworker_route_answers_total /route/ answers by kind.\n# TYPE nullworker_route_answers_total counter\n");
        for (i, kind) in ["ready", "waiting", "bad_request", "unauthorized"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "nullworker_route_answers_total{{kind=\"{kind}\"}} {}",
                self.route[i].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP nullworker_worker_reports_total Accepted /worker_status/ reports.\n# TYPE nullworker_worker_reports_total counter\n");
        let _ = writeln!(
            out,
            "nullworker_worker_reports_total {}",
            self.reports.load(Ordering::Relaxed)
        );
        out.push_str("# HELP nullworker_scale_actions_total Autoscaler actions by action and reason.\n# TYPE nullworker_scale_actions_total counter\n");
        for ((action, reason), n) in self
            .scale_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "nullworker_scale_actions_total{{action=\"{action}\",reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP nullworker_worker_exits_total Worker process exits, expected or not.\n# TYPE nullworker_worker_exits_total counter\n");
        for (kind, n) in self
            .worker_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "nullworker_worker_exits_total{{kind=\"{kind}\"}} {n}");
        }
        out.push_str("# HELP nullworker_wait_to_ready_seconds Time from a request's first WAITING answer to its READY answer.\n# TYPE nullworker_wait_to_ready_seconds histogram\n");
        let h = self.wait_to_ready.lock().unwrap_or_else(|p| p.into_inner());
        for (i, bound) in WAIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "nullworker_wait_to_ready_seconds_bucket{{le=\"{bound}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "nullworker_wait_to_ready_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "nullworker_wait_to_ready_seconds_sum {}", h.sum);
        let _ = writeln!(out, "nullworker_wait_to_ready_seconds_count {}", h.count);
        out
    }
}

/// Writes one gauge or counter family with a sample per endpoint (label
/// `endpoint`), `value` giving each endpoint's sample.
fn per_endpoint<V: std::fmt::Display>(
    out: &mut String,
    registry: &[EndpointGauges],
    name: &str,
    help: &str,
    kind: &str,
    value: impl Fn(&EndpointGauges) -> V,
) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for ep in registry {
        let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {}", ep.name, value(ep));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.wait_to_ready(0.3);
        m.wait_to_ready(4.0);
        m.route(RouteAnswer::Waiting);
        m.scale_action("create", "scale_from_zero");
        let text = m.render(&[]);
        assert!(
            text.contains("nullworker_wait_to_ready_seconds_bucket{le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nullworker_wait_to_ready_seconds_bucket{le=\"5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("nullworker_wait_to_ready_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("nullworker_route_answers_total{kind=\"waiting\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "nullworker_scale_actions_total{action=\"create\",reason=\"scale_from_zero\"} 1\n"
        ));
    }
}
