//! Busy-polling after activity: for a short window after each authenticated,
//! successful request (an answer marked [`crate::http::PollAfter`]) the
//! worker's runtime keeps checking its sockets instead of putting the thread
//! to sleep, so a request that follows closely (a session's `/session/end`
//! after its create, a client's next `/ping`) is picked up at once instead of
//! after the operating system has woken an idle CPU. On virtual machines
//! whose idle CPUs halt at once, that wake-up costs more than the worker's
//! own work on a request.
//!
//! Outside the window the worker sleeps as usual and uses no CPU. The cost is
//! bounded: at most one window of polling per such request, and none while
//! idle. A window of zero turns polling off.
//!
//! Ordering: [`BusyPoll::touch`] stores the time, then sets `polling`; the
//! poller clears `polling`, then reads the time. Both pairs are `SeqCst`, so
//! at least one side sees the other's write and no touch goes unnoticed, on
//! any runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Default polling window after the last request.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(500);

/// Largest window accepted; longer ones would only burn CPU.
pub const MAX_WINDOW: Duration = Duration::from_millis(100);

/// Keeps the runtime polling for a window after the last [`BusyPoll::touch`].
#[derive(Debug)]
pub struct BusyPoll {
    window_ns: u64,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last activity.
    last_ns: AtomicU64,
    /// Whether the polling task is (or is about to be) polling.
    polling: AtomicBool,
    wake: Notify,
    /// Number of polling spells started (read by tests).
    spells: AtomicU64,
}

impl BusyPoll {
    /// A poller with the given window (zero: never poll).
    pub fn new(window: Duration) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            wake: Notify::new(),
            spells: AtomicU64::new(0),
        })
    }

    /// Records activity now: polling goes on until a window after this call.
    pub fn touch(&self) {
        if self.window_ns == 0 {
            return;
        }
        self.last_ns.store(self.now_ns(), Ordering::SeqCst);
        if !self.polling.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Whether the polling task is polling now.
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }

    /// How many polling spells have started since the worker began.
    pub fn spells(&self) -> u64 {
        self.spells.load(Ordering::Relaxed)
    }

    /// The polling task: sleeps until [`BusyPoll::touch`], then yields to
    /// the runtime (which checks its sockets and timers without blocking
    /// each time) until the window has passed with no activity. Ends on
    /// `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.window_ns == 0 {
            return;
        }
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
            }
            self.spells.fetch_add(1, Ordering::Relaxed);
            loop {
                if stop.is_cancelled() {
                    self.polling.store(false, Ordering::Release);
                    return;
                }
                if self.within_window() {
                    tokio::task::yield_now().await;
                    continue;
                }
                self.polling.store(false, Ordering::SeqCst);
                // A touch between the check above and the store saw
                // `polling` still set and did not notify: look again.
                if self.within_window() && !self.polling.swap(true, Ordering::SeqCst) {
                    continue;
                }
                break;
            }
        }
    }

    fn within_window(&self) -> bool {
        let last = self.last_ns.load(Ordering::SeqCst);
        self.now_ns().saturating_sub(last) < self.window_ns
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (by yielding, on a current-thread runtime) until `cond` holds.
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..1_000_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition never held");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polls_after_a_touch_and_stops_when_the_window_passes() {
        let poll = BusyPoll::new(Duration::from_millis(5));
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&poll).run(stop.clone()));
        assert!(!poll.is_polling(), "no polling before any activity");

        let touched = Instant::now();
        poll.touch();
        assert!(poll.is_polling());
        until(|| poll.spells() == 1).await;
        // Wait for the spell to end by sleeping on the runtime's timer: the
        // poller yields, so the timer still fires.
        while poll.is_polling() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            touched.elapsed() >= Duration::from_millis(5),
            "polling ended {:?} after the touch, before its 5 ms window",
            touched.elapsed()
        );

        // A later touch starts a new spell.
        poll.touch();
        until(|| poll.spells() == 2).await;
        stop.cancel();
        task.await.unwrap();
        assert!(!poll.is_polling(), "stopping ends polling");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn touches_during_a_spell_extend_it_instead_of_starting_another() {
        // A window far longer than the test, however slowly it runs.
        let poll = BusyPoll::new(Duration::from_secs(30));
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&poll).run(stop.clone()));
        for _ in 0..5 {
            poll.touch();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(poll.spells(), 1);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_zero_window_never_polls() {
        let poll = BusyPoll::new(Duration::ZERO);
        let stop = CancellationToken::new();
        poll.touch();
        assert!(!poll.is_polling());
        // The task returns at once instead of waiting for `stop`.
        Arc::clone(&poll).run(stop).await;
        assert_eq!(poll.spells(), 0);
    }
}
