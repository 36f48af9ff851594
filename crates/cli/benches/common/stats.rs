//! Statistics over benchmark figures: min/median/max across runs, and
//! latency percentiles over every sample of a run.

use std::time::Duration;

/// Min, median and max of one figure across runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (NaN values are ignored); `None` when nothing is left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// Every latency sample of one measured phase, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples_ns: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            samples_ns: Vec::with_capacity(capacity),
            sorted: true,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.samples_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    pub fn merge(&mut self, other: Latencies) {
        self.samples_ns.extend(other.samples_ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples_ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples_ns.is_empty()
    }

    /// The `p`-th percentile (0 < p ≤ 100, nearest-rank method) in
    /// milliseconds; NaN when there are no samples.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.samples_ns.is_empty() {
            return f64::NAN;
        }
        if !self.sorted {
            self.samples_ns.sort_unstable();
            self.sorted = true;
        }
        let n = self.samples_ns.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        self.samples_ns[index] as f64 / 1e6
    }
}
