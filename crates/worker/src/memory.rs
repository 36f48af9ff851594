//! Giving freed heap back to the system after a burst, so the worker returns
//! to its idle size next to the GPU job instead of keeping its peak.
//!
//! glibc's allocator keeps freed memory mapped: after a flood of connections
//! (each costs about 15 KiB of buffers while it is open) the worker stayed
//! at its peak (9 → 225 MiB after 15,000 connections, still 225 MiB 15
//! minutes later). [`ConnGauge`] counts open connections and their peak;
//! once the count has fallen to a quarter of a peak of at least
//! [`TRIM_AFTER_CONNECTIONS`], [`ConnGauge::run`] calls `malloc_trim` (on a
//! blocking thread, never on the runtime thread) a short moment later. The
//! decision is the pure [`should_trim`]. The delete-record backlog after a
//! burst of plain requests uses [`release_free_memory`] the same way.
//!
//! It does not own the connection cap (that is [`crate::http::serve`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A peak of at least this many open connections is worth a trim once they
/// have closed; the handful a normal worker holds never triggers one.
pub const TRIM_AFTER_CONNECTIONS: usize = 256;
/// Wait after the count fell before trimming, so that the rest of a
/// closing flood is freed first and one trim covers it.
const SETTLE: Duration = Duration::from_millis(500);

/// Whether to trim now that `open` connections are open, after a peak of
/// `peak` since the last trim.
pub fn should_trim(open: usize, peak: usize) -> bool {
    peak >= TRIM_AFTER_CONNECTIONS && open <= peak / 4
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    /// Highest `open` since the last trim.
    peak: usize,
    /// A trim is requested and not yet done.
    requested: bool,
}

/// Open connections of every listener, and the trims they call for.
#[derive(Debug, Default)]
pub struct ConnGauge {
    counts: Mutex<Counts>,
    trim: Notify,
}

/// One open connection; dropping it counts the connection closed.
#[derive(Debug)]
pub struct OpenConn(Arc<ConnGauge>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.closed();
    }
}

impl ConnGauge {
    /// A gauge with nothing open.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("connection gauge lock")
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn opened(self: &Arc<Self>) -> OpenConn {
        let mut counts = self.lock();
        counts.open += 1;
        counts.peak = counts.peak.max(counts.open);
        drop(counts);
        OpenConn(Arc::clone(self))
    }

    fn closed(&self) {
        let mut counts = self.lock();
        counts.open = counts.open.saturating_sub(1);
        if !counts.requested && should_trim(counts.open, counts.peak) {
            counts.requested = true;
            self.trim.notify_one();
        }
    }

    /// Number of open connections.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Trims when asked, until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.trim.notified() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SETTLE) => {}
            }
            let peak = self.lock().peak;
            tracing::debug!(peak, "returning the memory of closed connections");
            release_free_memory().await;
            let mut counts = self.lock();
            counts.peak = counts.open;
            counts.requested = false;
        }
    }
}

/// Returns free heap pages to the system (`malloc_trim(0)`, glibc only), on
/// a blocking thread: it walks the allocator's free lists, which takes a
/// few milliseconds after a large burst.
pub async fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trimmed = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe { libc::malloc_trim(0) }
        })
        .await;
        if let Err(err) = trimmed {
            tracing::debug!(error = %err, "malloc_trim did not run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_peak_has_mostly_closed() {
        let cases = [
            // (open, peak, trim?)
            (0, 0, false),
            (0, 10, false),
            (0, TRIM_AFTER_CONNECTIONS - 1, false),
            (0, TRIM_AFTER_CONNECTIONS, true),
            (64, 256, true),
            (65, 256, false),
            (3_750, 15_000, true),
            (3_751, 15_000, false),
            (usize::MAX, usize::MAX, false),
        ];
        for (open, peak, want) in cases {
            assert_eq!(should_trim(open, peak), want, "open {open}, peak {peak}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_flood_asks_for_one_trim() {
        let gauge = Arc::new(ConnGauge::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let gauge = Arc::clone(&gauge);
            let shutdown = shutdown.clone();
            async move { gauge.run(shutdown).await }
        });
        {
            let flood: Vec<_> = (0..300).map(|_| gauge.opened()).collect();
            assert_eq!(gauge.open(), 300);
            assert_eq!(gauge.lock().peak, 300);
            drop(flood);
        }
        assert_eq!(gauge.open(), 0);
        assert!(gauge.lock().requested, "a trim is asked for");
        // Done after the settling time; the peak starts again from now.
        tokio::time::sleep(SETTLE + Duration::from_millis(10)).await;
        for _ in 0..1_000 {
            if !gauge.lock().requested {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        {
            let counts = gauge.lock();
            assert!(!counts.requested);
            assert_eq!(counts.peak, 0);
        }
        // A small burst afterwards asks for nothing.
        drop((0..10).map(|_| gauge.opened()).collect::<Vec<_>>());
        assert!(!gauge.lock().requested);
        shutdown.cancel();
        task.await.unwrap();
    }
}
