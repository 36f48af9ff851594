//! The backend-agnostic contract of [`Queue`]: every backend's integration
//! test runs these checks against a real server (or file), so the dispatcher
//! and the consumer loop can rely on one behaviour.
//!
//! # How a backend test calls it
//!
//! Include the module in the test file and pass an *opener*: any
//! `Fn(QueueOptions) -> impl Future<Output = Box<dyn Queue>>` that returns a
//! handle to a **fresh, empty** queue configured with those options (use
//! [`unique_name`] for the queue/list/stream name and [`options_query`] for
//! the query string):
//!
//! ```ignore
//! mod conformance;
//! use conformance::{options_query, unique_name, Caps};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn redis_list_conforms() {
//!     let server = nullworker_queue::testing::redis().expect("redis-server");
//!     let base = server.url("redis");
//!     let open = |options: nullworker_queue::QueueOptions| {
//!         let url = format!("{base}?list={}&{}", unique_name("jobs"), options_query(&options));
//!         async move {
//!             let url: nullworker_queue::QueueUrl = url.parse().expect("queue URL");
//!             nullworker_queue::open(&url, nullworker_queue::OpenMode::Create).await.expect("open")
//!         }
//!     };
//!     conformance::run_all(&open, Caps::default()).await;
//! }
//! ```
//!
//! [`run_all`] runs every check in turn and names the one that fails; each
//! check is also a `pub async fn` with the same signature
//! `(open: &impl OpenQueue, caps: Caps)` for a backend that wants them as
//! separate tests. Checks never sleep to wait for a condition: they poll it
//! with a deadline, and "nothing happens for a while" is observed through
//! `claim(.., wait)` returning `None`.
//!
//! Prefer a multi-threaded runtime: [`no_double_claim_under_concurrency`]
//! spawns concurrent claimers.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nullworker_queue::{FailOutcome, Job, Queue, QueueError, QueueOptions, QueueStats};

/// What a backend can and cannot observe; [`Caps::default`] is the full
/// contract.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// `ack` / `heartbeat` of a delivery that is no longer held (its
    /// visibility timeout passed and another consumer claimed the job, or it
    /// was acked already) fails with [`QueueError::Lost`]. When `false`, such
    /// a call must still be harmless: `Ok` or `Lost`, and the job is neither
    /// lost nor duplicated by it.
    pub detects_lost: bool,
}

impl Default for Caps {
    fn default() -> Self {
        Self { detects_lost: true }
    }
}

/// Opens a fresh, empty queue with the given options. Implemented for every
/// `Fn(QueueOptions) -> impl Future<Output = Box<dyn Queue>>`.
pub trait OpenQueue {
    /// A handle to a new queue that no other check uses.
    fn open(&self, options: QueueOptions) -> impl Future<Output = Box<dyn Queue>>;
}

impl<F, Fut> OpenQueue for F
where
    F: Fn(QueueOptions) -> Fut,
    Fut: Future<Output = Box<dyn Queue>>,
{
    fn open(&self, options: QueueOptions) -> impl Future<Output = Box<dyn Queue>> {
        self(options)
    }
}

/// `visibility_timeout=..&max_attempts=..&retry_delay=..` for a queue URL.
pub fn options_query(options: &QueueOptions) -> String {
    format!(
        "visibility_timeout={}&max_attempts={}&retry_delay={}",
        options.visibility_timeout.as_secs_f64(),
        options.max_attempts,
        options.retry_delay.as_secs_f64()
    )
}

/// A name unique to this process and call, e.g. `jobs-4242-7`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs every check, each on its own fresh queue, in a fixed order.
pub async fn run_all(open: &impl OpenQueue, caps: Caps) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            let started = Instant::now();
            eprintln!("conformance: {} ...", stringify!($check));
            $check(open, caps).await;
            eprintln!("conformance: {} ok in {:?}", stringify!($check), started.elapsed());
        )*};
    }
    run!(
        push_then_claim_is_byte_exact,
        fifo_order,
        claim_on_empty_waits,
        claim_wakes_on_push,
        stats_follow_the_lifecycle,
        ack_removes,
        fail_retries_then_dead_letters,
        fail_waits_out_retry_delay,
        release_hands_back_without_burning_an_attempt,
        expired_claim_is_reclaimed_and_stale_ack_is_refused,
        heartbeat_keeps_the_claim,
        no_double_claim_under_concurrency,
    );
}

/// Options for checks that do not exercise timeouts.
fn quiet() -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_secs(30),
        max_attempts: 5,
        retry_delay: Duration::ZERO,
    }
}

/// How long a job that should be there may take to show up.
const PRESENT: Duration = Duration::from_secs(5);
/// How long a claim waits when the queue should be empty.
const ABSENT: Duration = Duration::from_millis(300);
/// How long stats may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(3);

async fn claim_some(q: &dyn Queue, consumer: &str, what: &str) -> Job {
    match q.claim(consumer, PRESENT).await {
        Ok(Some(job)) => job,
        Ok(None) => panic!("{what}: claim by {consumer} found no job within {PRESENT:?}"),
        Err(e) => panic!("{what}: claim by {consumer} failed: {e}"),
    }
}

async fn claim_none(q: &dyn Queue, consumer: &str, what: &str) {
    match q.claim(consumer, ABSENT).await {
        Ok(None) => {}
        Ok(Some(job)) => panic!("{what}: expected no claimable job, got {job:?}"),
        Err(e) => panic!("{what}: claim by {consumer} failed: {e}"),
    }
}

async fn push(q: &dyn Queue, payload: &[u8]) -> String {
    q.push(payload)
        .await
        .unwrap_or_else(|e| panic!("push of {} bytes failed: {e}", payload.len()))
}

/// Polls `stats()` until it equals `want`, or panics after [`SETTLE`].
async fn expect_stats(q: &dyn Queue, backlog: u64, in_flight: u64, dead: u64, what: &str) {
    let want = QueueStats {
        backlog,
        in_flight,
        dead,
    };
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = q
            .stats()
            .await
            .unwrap_or_else(|e| panic!("{what}: stats failed: {e}"));
        if got == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: stats are {got:?}, expected {want:?} within {SETTLE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_lost(result: Result<(), QueueError>, caps: Caps, what: &str) {
    match result {
        Err(QueueError::Lost { .. }) => {}
        Ok(()) if !caps.detects_lost => {}
        other => panic!(
            "{what}: expected QueueError::Lost{}, got {other:?}",
            if caps.detects_lost { "" } else { " or Ok" }
        ),
    }
}

/// A pushed payload comes back byte for byte, with the pushed id and
/// attempt 1 (binary bytes, a NUL, invalid UTF-8 and 64 KiB included).
pub async fn push_then_claim_is_byte_exact(open: &impl OpenQueue, _caps: Caps) {
    let q = open.open(quiet()).await;
    let big: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
    let payloads: [&[u8]; 4] = [b"{\"job\":1}", b"\x00\xff\xfe binary \x80\n", b" ", &big];
    for payload in payloads {
        let id = push(&*q, payload).await;
        let job = claim_some(&*q, "c1", "push then claim").await;
        assert_eq!(
            job.payload, payload,
            "payload of job {} differs from what was pushed",
            job.id
        );
        assert_eq!(
            job.id, id,
            "claimed job's id differs from the id push returned"
        );
        assert_eq!(
            job.attempt, 1,
            "first delivery of job {id} must be attempt 1"
        );
        q.ack(&job)
            .await
            .unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
    }
}

/// Visible jobs are claimed in the order they were pushed.
pub async fn fifo_order(open: &impl OpenQueue, _caps: Caps) {
    let q = open.open(quiet()).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(push(&*q, format!("job-{i}").as_bytes()).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let job = claim_some(&*q, "c1", "fifo").await;
        assert_eq!(
            job.payload,
            format!("job-{i}").as_bytes(),
            "fifo: claim {i} returned {:?}",
            String::from_utf8_lossy(&job.payload)
        );
        assert_eq!(&job.id, id);
        q.ack(&job).await.expect("ack");
    }
}

/// `claim` on an empty queue blocks about `wait`, then returns `None`.
pub async fn claim_on_empty_waits(open: &impl OpenQueue, _caps: Caps) {
    let q = open.open(quiet()).await;
    let wait = Duration::from_millis(500);
    let margin = Duration::from_millis(50);
    let started = Instant::now();
    let got = q.claim("c1", wait).await.expect("claim on an empty queue");
    let took = started.elapsed();
    assert!(got.is_none(), "claim on an empty queue returned {got:?}");
    assert!(
        took + margin >= wait,
        "claim on an empty queue returned after {took:?}, expected about {wait:?}"
    );
    assert!(
        took <= wait + Duration::from_secs(2),
        "claim on an empty queue took {took:?}, expected about {wait:?}"
    );
}

/// A claim that is blocked waiting returns promptly when a job is pushed.
pub async fn claim_wakes_on_push(open: &impl OpenQueue, _caps: Caps) {
    let q: Arc<dyn Queue> = Arc::from(open.open(quiet()).await);
    let claimer = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            let job = q.claim("c1", Duration::from_secs(10)).await;
            (job, Instant::now())
        })
    };
    // The scenario: the job arrives while the claimer is blocked (not a
    // wait for a condition; the assertion below holds either way).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pushed_at = Instant::now();
    let id = push(&*q, b"wake").await;
    let (job, claimed_at) = claimer.await.expect("claimer task");
    let job = job
        .expect("blocked claim")
        .expect("blocked claim returned no job");
    assert_eq!(job.id, id);
    let latency = claimed_at.saturating_duration_since(pushed_at);
    assert!(
        latency < Duration::from_secs(1),
        "a blocked claim took {latency:?} to notice a pushed job, expected well under 1 s"
    );
}

/// backlog / in_flight / dead follow push, claim, ack, fail and dead-letter.
pub async fn stats_follow_the_lifecycle(open: &impl OpenQueue, _caps: Caps) {
    let q = open
        .open(QueueOptions {
            max_attempts: 1,
            ..quiet()
        })
        .await;
    expect_stats(&*q, 0, 0, 0, "new queue").await;
    for i in 0..3 {
        push(&*q, format!("s{i}").as_bytes()).await;
    }
    expect_stats(&*q, 3, 0, 0, "after 3 pushes").await;
    let a = claim_some(&*q, "c1", "stats").await;
    expect_stats(&*q, 2, 1, 0, "after 1 claim").await;
    let b = claim_some(&*q, "c2", "stats").await;
    expect_stats(&*q, 1, 2, 0, "after 2 claims").await;
    q.ack(&a).await.expect("ack");
    expect_stats(&*q, 1, 1, 0, "after an ack").await;
    assert_eq!(q.fail(&b).await.expect("fail"), FailOutcome::DeadLettered);
    expect_stats(&*q, 1, 0, 1, "after a dead letter (max_attempts=1)").await;
    let c = claim_some(&*q, "c1", "stats").await;
    q.release(&c).await.expect("release");
    expect_stats(&*q, 1, 0, 1, "after a release").await;
}

/// An acked job is gone: not claimable, not counted, and a second ack of
/// the same delivery is refused (or harmless without `detects_lost`).
pub async fn ack_removes(open: &impl OpenQueue, caps: Caps) {
    let q = open.open(quiet()).await;
    push(&*q, b"ack me").await;
    let job = claim_some(&*q, "c1", "ack").await;
    q.ack(&job).await.expect("ack");
    expect_stats(&*q, 0, 0, 0, "after ack").await;
    claim_none(&*q, "c1", "after ack").await;
    assert_lost(q.ack(&job).await, caps, "second ack of the same delivery");
    expect_stats(&*q, 0, 0, 0, "after a second ack").await;
}

/// With retry_delay=0 and max_attempts=2: the first failure retries (attempt
/// 2 follows), the second dead-letters.
pub async fn fail_retries_then_dead_letters(open: &impl OpenQueue, _caps: Caps) {
    let q = open
        .open(QueueOptions {
            max_attempts: 2,
            ..quiet()
        })
        .await;
    let id = push(&*q, b"flaky").await;
    let first = claim_some(&*q, "c1", "fail").await;
    assert_eq!(first.attempt, 1);
    assert_eq!(q.fail(&first).await.expect("fail"), FailOutcome::Retried);
    let second = claim_some(&*q, "c1", "retry").await;
    assert_eq!(second.id, id, "the retried job keeps its id");
    assert_eq!(second.payload, b"flaky");
    assert_eq!(
        second.attempt, 2,
        "a retried job's second delivery is attempt 2"
    );
    assert_eq!(
        q.fail(&second).await.expect("fail"),
        FailOutcome::DeadLettered
    );
    expect_stats(&*q, 0, 0, 1, "after dead-lettering").await;
    claim_none(&*q, "c1", "after dead-lettering").await;
}

/// A failed job is not claimable during its retry delay and counts as
/// backlog meanwhile.
pub async fn fail_waits_out_retry_delay(open: &impl OpenQueue, _caps: Caps) {
    let q = open
        .open(QueueOptions {
            retry_delay: Duration::from_secs(60),
            ..quiet()
        })
        .await;
    push(&*q, b"later").await;
    let job = claim_some(&*q, "c1", "retry delay").await;
    assert_eq!(q.fail(&job).await.expect("fail"), FailOutcome::Retried);
    expect_stats(&*q, 1, 0, 0, "during the retry delay").await;
    claim_none(&*q, "c2", "during a 60 s retry delay").await;
}

/// `release` makes the job claimable at once (even with a long retry delay)
/// and does not count against max_attempts.
pub async fn release_hands_back_without_burning_an_attempt(open: &impl OpenQueue, _caps: Caps) {
    let q = open
        .open(QueueOptions {
            retry_delay: Duration::from_secs(60),
            ..quiet()
        })
        .await;
    let id = push(&*q, b"handed back").await;
    let job = claim_some(&*q, "c1", "release").await;
    q.release(&job).await.expect("release");
    expect_stats(&*q, 1, 0, 0, "after release").await;
    let again = claim_some(&*q, "c2", "claim after release").await;
    assert_eq!(again.id, id);
    assert_eq!(again.payload, b"handed back");
    q.ack(&again).await.expect("ack");

    // max_attempts=2: two releases, then a failure must still retry.
    let q = open
        .open(QueueOptions {
            max_attempts: 2,
            ..quiet()
        })
        .await;
    push(&*q, b"released twice").await;
    for round in 0..2 {
        let job = claim_some(&*q, "c1", "release round").await;
        q.release(&job)
            .await
            .unwrap_or_else(|e| panic!("release round {round}: {e}"));
    }
    let job = claim_some(&*q, "c1", "after two releases").await;
    assert_eq!(
        q.fail(&job).await.expect("fail"),
        FailOutcome::Retried,
        "releases must not count against max_attempts=2 (attempt is {})",
        job.attempt
    );
}

/// A claim whose consumer stops heart-beating becomes claimable again after
/// the visibility timeout (1 s); the stale consumer's ack and heartbeat are
/// then refused, and the new holder's ack works.
pub async fn expired_claim_is_reclaimed_and_stale_ack_is_refused(
    open: &impl OpenQueue,
    caps: Caps,
) {
    let q = open
        .open(QueueOptions {
            visibility_timeout: Duration::from_secs(1),
            ..quiet()
        })
        .await;
    let id = push(&*q, b"abandoned").await;
    let stale = claim_some(&*q, "dies", "first claim").await;
    let claimed_at = Instant::now();
    claim_none(&*q, "rescuer", "before the visibility timeout").await;

    let deadline = claimed_at + Duration::from_secs(10);
    let fresh = loop {
        q.requeue_expired().await.expect("requeue_expired");
        if let Some(job) = q
            .claim("rescuer", Duration::from_millis(200))
            .await
            .expect("claim by the rescuer")
        {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} was not claimable again within 10 s of a 1 s visibility timeout"
        );
    };
    let after = claimed_at.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "job {id} was handed out again after {after:?}, before its 1 s visibility timeout"
    );
    assert_eq!(fresh.id, id);
    assert_eq!(fresh.payload, b"abandoned");
    assert!(
        fresh.attempt >= 2,
        "a redelivery is attempt 2 or more, got {}",
        fresh.attempt
    );

    assert_lost(
        q.heartbeat(&stale).await,
        caps,
        "heartbeat by the stale consumer",
    );
    assert_lost(q.ack(&stale).await, caps, "ack by the stale consumer");
    if caps.detects_lost {
        expect_stats(&*q, 0, 1, 0, "after a refused stale ack").await;
    }
    match q.ack(&fresh).await {
        Ok(()) => {}
        Err(QueueError::Lost { .. }) if !caps.detects_lost => {}
        Err(e) => panic!("ack by the new holder failed: {e}"),
    }
    expect_stats(&*q, 0, 0, 0, "after the new holder's ack").await;
    claim_none(&*q, "rescuer", "after everything was acked").await;
}

/// Heart-beating keeps a job claimed well past its 1 s visibility timeout.
pub async fn heartbeat_keeps_the_claim(open: &impl OpenQueue, _caps: Caps) {
    let q = open
        .open(QueueOptions {
            visibility_timeout: Duration::from_secs(1),
            ..quiet()
        })
        .await;
    push(&*q, b"long job").await;
    let job = claim_some(&*q, "worker", "heartbeat").await;
    let started = Instant::now();
    // Each empty claim by another consumer is the passage of time (300 ms).
    while started.elapsed() < Duration::from_millis(2_500) {
        q.heartbeat(&job).await.expect("heartbeat of a held job");
        q.requeue_expired().await.expect("requeue_expired");
        claim_none(&*q, "thief", "while the holder heart-beats").await;
    }
    expect_stats(&*q, 0, 1, 0, "while heart-beating").await;
    q.ack(&job).await.expect("ack after heart-beating");
    expect_stats(&*q, 0, 0, 0, "after ack").await;
}

/// Several concurrent claimers on one queue: every job is claimed exactly
/// once.
pub async fn no_double_claim_under_concurrency(open: &impl OpenQueue, _caps: Caps) {
    const JOBS: usize = 40;
    const CLAIMERS: usize = 4;
    let q: Arc<dyn Queue> = Arc::from(open.open(quiet()).await);
    let mut pushed = HashMap::new();
    for i in 0..JOBS {
        let payload = format!("job-{i}").into_bytes();
        pushed.insert(push(&*q, &payload).await, payload);
    }
    let mut tasks = Vec::new();
    for c in 0..CLAIMERS {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let consumer = format!("claimer-{c}");
            let mut got = Vec::new();
            while let Some(job) = q
                .claim(&consumer, Duration::from_millis(300))
                .await
                .unwrap_or_else(|e| panic!("claim by {consumer}: {e}"))
            {
                q.ack(&job)
                    .await
                    .unwrap_or_else(|e| panic!("ack by {consumer}: {e}"));
                got.push(job);
            }
            got
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for task in tasks {
        for job in task.await.expect("claimer task") {
            total += 1;
            assert!(
                seen.insert(job.id.clone()),
                "job {} was claimed twice",
                job.id
            );
            assert_eq!(
                pushed.get(&job.id),
                Some(&job.payload),
                "job {} payload",
                job.id
            );
            assert_eq!(
                job.attempt, 1,
                "job {} was delivered more than once",
                job.id
            );
        }
    }
    assert_eq!(
        total, JOBS,
        "{CLAIMERS} claimers got {total} of {JOBS} jobs"
    );
    expect_stats(&*q, 0, 0, 0, "after all jobs were acked").await;
}
