//! The dispatcher's driver against a queue whose counts the test sets and
//! a reserver whose workers the test starts, releases and breaks; tokio's
//! paused clock makes minutes of polling take no time.
//!
//! The counting and shutdown rules themselves are tested exhaustively on
//! the state machine (`dispatch::machine`); these tests check the wiring:
//! polling, one task per session, cancellation, closing, backoff, queue
//! errors and requeueing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nullworker_queue::dispatch::{
    DispatchEvent, Driver, DriverConfig, EndKind, HeldSession, Metrics, Outcome, ReserveError,
    Reserver, Stop,
};
use nullworker_queue::{FailOutcome, Job, Queue, QueueError, QueueStats};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A queue whose counts the test sets; only what the dispatcher calls works.
#[derive(Default)]
struct CountsQueue {
    stats: Mutex<Option<QueueStats>>,
    stats_calls: AtomicU64,
    requeue_calls: AtomicU64,
}

impl CountsQueue {
    fn set(&self, backlog: u64, in_flight: u64) {
        *self.stats.lock().unwrap() = Some(QueueStats {
            backlog,
            in_flight,
            dead: 0,
        });
    }

    fn break_it(&self) {
        *self.stats.lock().unwrap() = None;
    }
}

fn unused(op: &'static str) -> QueueError {
    QueueError::Backend {
        backend: "test",
        op,
        reason: "not used by the dispatcher".into(),
    }
}

#[async_trait::async_trait]
impl Queue for CountsQueue {
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.stats_calls.fetch_add(1, Ordering::SeqCst);
        self.stats
            .lock()
            .unwrap()
            .ok_or_else(|| QueueError::Unreachable {
                what: "test queue",
                addr: "nowhere".into(),
                reason: "switched off".into(),
            })
    }
    async fn claim(&self, _: &str, _: Duration) -> Result<Option<Job>, QueueError> {
        Err(unused("claim"))
    }
    async fn heartbeat(&self, _: &Job) -> Result<(), QueueError> {
        Err(unused("heartbeat"))
    }
    async fn ack(&self, _: &Job) -> Result<(), QueueError> {
        Err(unused("ack"))
    }
    async fn fail(&self, _: &Job) -> Result<FailOutcome, QueueError> {
        Err(unused("fail"))
    }
    async fn release(&self, _: &Job) -> Result<(), QueueError> {
        Err(unused("release"))
    }
    async fn requeue_expired(&self) -> Result<u64, QueueError> {
        self.requeue_calls.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
    async fn push(&self, _: &[u8]) -> Result<String, QueueError> {
        Err(unused("push"))
    }
}

/// Workers the test controls: a request waits until a worker is started
/// (or fails while `broken`); a held session lasts until the test releases it.
#[derive(Default)]
struct Workers {
    state: Mutex<WorkersState>,
}

#[derive(Default)]
struct WorkersState {
    calls: u64,
    waiting: u64,
    cancelled: u64,
    free: u64,
    broken: bool,
    next_id: u64,
    held: HashMap<String, CancellationToken>,
    closed: Vec<String>,
}

struct TestSession {
    id: String,
    release: CancellationToken,
    workers: Arc<Workers>,
}

#[async_trait::async_trait]
impl HeldSession for TestSession {
    fn id(&self) -> &str {
        &self.id
    }
    fn url(&self) -> &str {
        "http://127.0.0.1:9"
    }
    async fn ended(&self) -> (EndKind, Option<String>) {
        self.release.cancelled().await;
        (EndKind::Released, None)
    }
    async fn close(&self) -> (EndKind, Option<String>) {
        let mut s = self.workers.state.lock().unwrap();
        s.held.remove(&self.id);
        s.closed.push(self.id.clone());
        (EndKind::Closed, None)
    }
}

struct TestReserver(Arc<Workers>);

#[async_trait::async_trait]
impl Reserver for TestReserver {
    type Session = TestSession;

    async fn reserve(&self, cancel: CancellationToken) -> Result<TestSession, ReserveError> {
        self.0.state.lock().unwrap().calls += 1;
        self.0.state.lock().unwrap().waiting += 1;
        loop {
            {
                let mut s = self.0.state.lock().unwrap();
                if s.broken {
                    s.waiting -= 1;
                    return Err(ReserveError::Failed("no worker: engine broken".into()));
                }
                if s.free > 0 {
                    s.free -= 1;
                    s.waiting -= 1;
                    s.next_id += 1;
                    let id = format!("session-{}", s.next_id);
                    let release = CancellationToken::new();
                    s.held.insert(id.clone(), release.clone());
                    return Ok(TestSession {
                        id,
                        release,
                        workers: self.0.clone(),
                    });
                }
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    let mut s = self.0.state.lock().unwrap();
                    s.waiting -= 1;
                    s.cancelled += 1;
                    return Err(ReserveError::Cancelled);
                }
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }
}

impl Workers {
    fn with<T>(&self, f: impl FnOnce(&mut WorkersState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The consumer on one worker releases its session.
    fn release_one(&self) -> String {
        let mut s = self.state.lock().unwrap();
        let id = s.held.keys().min().cloned().expect("a held session");
        let token = s.held.remove(&id).unwrap();
        token.cancel();
        id
    }
}

struct Harness {
    queue: Arc<CountsQueue>,
    workers: Arc<Workers>,
    events: Arc<Mutex<Vec<DispatchEvent>>>,
    metrics: Arc<Metrics>,
    stop: Stop,
    run: tokio::task::JoinHandle<Outcome>,
}

fn start(max: usize, drain_timeout: Option<Duration>) -> Harness {
    let queue = Arc::new(CountsQueue::default());
    queue.set(0, 0);
    let workers = Arc::new(Workers::default());
    let events = Arc::new(Mutex::new(Vec::new()));
    let metrics = Arc::new(Metrics::new());
    let stop = Stop::default();
    let sink = events.clone();
    let driver = Driver::new(
        queue.clone(),
        Arc::new(TestReserver(workers.clone())),
        DriverConfig {
            max_sessions: max,
            drain_timeout,
            ..DriverConfig::default()
        },
    )
    .metrics(metrics.clone())
    .events(Box::new(move |e: &DispatchEvent| {
        sink.lock().unwrap().push(e.clone())
    }));
    let run = tokio::spawn(driver.run(stop.clone()));
    Harness {
        queue,
        workers,
        events,
        metrics,
        stop,
        run,
    }
}

/// Polls `cond` every millisecond of (paused) time until it holds; panics
/// with `what` after 60 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Harness {
    fn count(&self, pred: impl Fn(&DispatchEvent) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(e))
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn one_session_per_job_through_a_slow_cold_start_and_back_to_zero() {
    let h = start(10, None);
    h.queue.set(3, 0);
    wait_until("3 requests", || h.workers.with(|s| s.waiting == 3)).await;
    // The engine takes 30 s to start workers: nothing is requested twice.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.workers.with(|s| s.calls), 3);
    h.workers.with(|s| s.free = 3);
    wait_until("3 held", || h.workers.with(|s| s.held.len() == 3)).await;
    h.queue.set(0, 3);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Each consumer acks, then releases its worker.
    for done in 1..=3 {
        h.queue.set(0, 3 - done);
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.workers.release_one();
    }
    wait_until("3 ended", || {
        h.count(|e| {
            matches!(
                e,
                DispatchEvent::SessionEnded {
                    how: EndKind::Released,
                    ..
                }
            )
        }) == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.workers.with(|s| s.calls),
        3,
        "released sessions were not replaced"
    );
    let text = h.metrics.render();
    for line in [
        "nullworker_dispatch_sessions_opened_total 3",
        "nullworker_dispatch_sessions_released_total 3",
        "nullworker_dispatch_sessions{state=\"held\"} 0",
        "nullworker_dispatch_backlog 0",
        "nullworker_dispatch_decision_seconds_count 1",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
    let stats_calls = h.queue.stats_calls.load(Ordering::SeqCst);
    assert!(
        (1_500..=2_400).contains(&stats_calls),
        "{stats_calls} readings in about 41 s at 20 ms"
    );
    assert!(h.queue.requeue_calls.load(Ordering::SeqCst) >= 35);
    h.stop.shutdown.cancel();
    assert_eq!(h.run.await.unwrap(), Outcome::Drained);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_requests_and_waits_for_held_sessions() {
    let h = start(10, None);
    h.queue.set(3, 0);
    h.workers.with(|s| s.free = 1);
    wait_until("1 held, 2 waiting", || {
        h.workers.with(|s| s.held.len() == 1 && s.waiting == 2)
    })
    .await;
    h.queue.set(2, 1);
    h.stop.shutdown.cancel();
    wait_until("2 cancelled", || h.workers.with(|s| s.cancelled == 2)).await;
    // More work arrives: nothing new is requested while shutting down.
    h.queue.set(9, 1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!h.run.is_finished(), "exited while a session was held");
    assert_eq!(h.workers.with(|s| s.calls), 3);
    h.queue.set(9, 0);
    h.workers.release_one();
    let outcome = tokio::time::timeout(Duration::from_secs(10), h.run).await;
    assert_eq!(outcome.expect("drained").unwrap(), Outcome::Drained);
    assert!(
        h.workers.with(|s| s.closed.is_empty()),
        "a held session was closed"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_idle_sessions_when_the_queue_is_empty() {
    let h = start(10, None);
    h.queue.set(2, 0);
    h.workers.with(|s| s.free = 2);
    wait_until("2 held", || h.workers.with(|s| s.held.len() == 2)).await;
    h.queue.set(0, 1);
    h.stop.shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        h.workers.with(|s| s.closed.is_empty()),
        "closed while a job ran"
    );
    h.queue.set(0, 0);
    let outcome = tokio::time::timeout(Duration::from_secs(10), h.run).await;
    assert_eq!(outcome.expect("drained").unwrap(), Outcome::Drained);
    assert_eq!(h.workers.with(|s| s.closed.len()), 2);
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_or_the_drain_timeout_leaves_held_sessions_to_expire() {
    let h = start(10, None);
    h.queue.set(1, 0);
    h.workers.with(|s| s.free = 1);
    wait_until("1 held", || h.workers.with(|s| s.held.len() == 1)).await;
    h.queue.set(0, 1);
    h.stop.shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.stop.abort.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(1), h.run).await;
    let Outcome::Abandoned { held, .. } = outcome.expect("exits at once").unwrap() else {
        panic!("not abandoned")
    };
    assert_eq!(held, 1);
    assert!(h.workers.with(|s| s.closed.is_empty()), "closed on abort");

    let h = start(10, Some(Duration::from_secs(30)));
    h.queue.set(1, 0);
    h.workers.with(|s| s.free = 1);
    wait_until("1 held", || h.workers.with(|s| s.held.len() == 1)).await;
    h.queue.set(0, 1);
    let t0 = Instant::now();
    h.stop.shutdown.cancel();
    let outcome = h.run.await.unwrap();
    assert!(
        matches!(outcome, Outcome::Abandoned { held: 1, .. }),
        "{outcome:?}"
    );
    let waited = t0.elapsed();
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(31)).contains(&waited),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_broken_endpoint_is_retried_with_growing_delays() {
    let h = start(10, None);
    h.workers.with(|s| s.broken = true);
    h.queue.set(5, 0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Without backoff: 5 requests every 20 ms (15,000). With it: 5, then one
    // round after 0.5, 1, 2, 4, 8, 16, 30 s (61.5 s in all).
    let calls = h.workers.with(|s| s.calls);
    assert!((5..=40).contains(&calls), "{calls} requests in 60 s");
    h.workers.with(|s| {
        s.broken = false;
        s.free = 5;
    });
    wait_until("5 held", || h.workers.with(|s| s.held.len() == 5)).await;
    assert!(h.count(|e| matches!(e, DispatchEvent::SessionFailed { .. })) >= 5);
    h.stop.abort.cancel();
    let _ = h.run.await;
}

#[tokio::test(start_paused = true)]
async fn queue_errors_are_reported_once_and_polled_gently() {
    let h = start(10, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.queue.break_it();
    let before = h.queue.stats_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = h.queue.stats_calls.load(Ordering::SeqCst) - before;
    assert!(during <= 20, "{during} readings in 10 s while failing");
    assert_eq!(
        h.count(|e| matches!(e, DispatchEvent::QueueError { .. })),
        1
    );
    h.queue.set(2, 0);
    h.workers.with(|s| s.free = 2);
    wait_until("2 held", || h.workers.with(|s| s.held.len() == 2)).await;
    assert_eq!(
        h.count(|e| matches!(e, DispatchEvent::QueueRecovered { .. })),
        1
    );
    assert!(h
        .metrics
        .render()
        .contains("nullworker_dispatch_queue_errors_total 1"));
    h.stop.abort.cancel();
    let _ = h.run.await;
}
