//! The SQLite backend against real database files in temporary
//! directories: the shared conformance suite, then what only SQLite has
//! (several handles and processes on one file, queues sharing a file,
//! attempts after a release, crash recovery by a lone consumer).

mod conformance;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{options_query, unique_name, Caps};
use nullworker_queue::{open, FailOutcome, OpenMode, Queue, QueueError, QueueOptions, QueueUrl};

fn url(path: &Path, queue: &str, options: &QueueOptions) -> QueueUrl {
    let raw = format!(
        "sqlite://{}?queue={queue}&{}",
        path.display(),
        options_query(options)
    );
    raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"))
}

async fn open_at(path: &Path, queue: &str, options: &QueueOptions) -> Box<dyn Queue> {
    open(&url(path, queue, options), OpenMode::Existing)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn quiet() -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_secs(30),
        max_attempts: 3,
        retry_delay: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    // Every check gets its own queue in the same file, as queues share it.
    let opener = |options: QueueOptions| {
        let db = db.clone();
        async move { open_at(&db, &unique_name("conformance"), &options).await }
    };
    conformance::run_all(&opener, Caps::default()).await;
}

#[tokio::test]
async fn creates_the_database_and_reports_a_bad_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("new.db");
    assert!(!db.exists());
    let q = open_at(&db, "q", &quiet()).await;
    assert!(db.exists(), "open did not create {}", db.display());
    assert_eq!(q.stats().await.expect("stats").demand(), 0);

    let missing = dir.path().join("no-such-dir").join("jobs.db");
    let err = open(&url(&missing, "q", &quiet()), OpenMode::Create)
        .await
        .map(|_| ())
        .expect_err("a database in a missing directory");
    assert!(
        matches!(err, QueueError::Unreachable { .. }) && err.to_string().contains("no-such-dir"),
        "{err}"
    );
}

#[tokio::test]
async fn queues_in_one_file_are_separate_and_jobs_survive_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    let a = open_at(&db, "a", &quiet()).await;
    let b = open_at(&db, "b", &quiet()).await;
    let id = a.push(b"for a").await.expect("push");
    assert_eq!(
        b.claim("c", Duration::from_millis(100))
            .await
            .expect("claim"),
        None
    );
    assert_eq!(b.stats().await.expect("stats").demand(), 0);
    drop(a);

    let a = open_at(&db, "a", &quiet()).await;
    let job = a
        .claim("c", Duration::from_secs(2))
        .await
        .expect("claim")
        .expect("the job pushed before reopening");
    assert_eq!(
        (job.id.as_str(), job.payload.as_slice()),
        (id.as_str(), &b"for a"[..])
    );
    // A receipt is tied to its queue.
    assert!(matches!(b.ack(&job).await, Err(QueueError::Lost { .. })));
    a.ack(&job).await.expect("ack");
}

#[tokio::test]
async fn release_gives_the_attempt_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = open_at(&dir.path().join("jobs.db"), "q", &quiet()).await;
    q.push(b"x").await.expect("push");
    let first = q.claim("c", Duration::from_secs(2)).await.unwrap().unwrap();
    assert_eq!(first.attempt, 1);
    q.release(&first).await.expect("release");
    // The old receipt is spent.
    assert!(matches!(
        q.release(&first).await,
        Err(QueueError::Lost { .. })
    ));
    let again = q.claim("c", Duration::from_secs(2)).await.unwrap().unwrap();
    assert_eq!(
        again.attempt, 1,
        "a released job is delivered again as the same attempt"
    );
    assert_ne!(again.receipt, first.receipt);
    assert_eq!(q.fail(&again).await.expect("fail"), FailOutcome::Retried);
    let third = q.claim("c", Duration::from_secs(2)).await.unwrap().unwrap();
    assert_eq!(third.attempt, 2);
    assert!(matches!(q.fail(&again).await, Err(QueueError::Lost { .. })));
}

#[tokio::test]
async fn a_lone_consumer_recovers_its_expired_claim_and_requeue_counts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = QueueOptions {
        visibility_timeout: Duration::from_secs(1),
        max_attempts: 2,
        ..quiet()
    };
    let q = open_at(&dir.path().join("jobs.db"), "q", &options).await;
    q.push(b"crashy").await.expect("push");
    let started = Instant::now();
    let first = q.claim("c", Duration::from_secs(2)).await.unwrap().unwrap();
    assert_eq!(
        q.requeue_expired().await.expect("requeue"),
        0,
        "nothing expired yet"
    );
    // No requeue_expired call: the claim itself reclaims the expired job.
    let second = q
        .claim("c", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the expired claim, reclaimed by claim");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((second.id.clone(), second.attempt), (first.id.clone(), 2));

    // Out of attempts when its lease runs out again: dead-lettered, not retried.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if q.requeue_expired().await.expect("requeue") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the second lease never expired");
        // Waiting for the lease; an empty claim would reclaim it itself.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.backlog, stats.in_flight, stats.dead), (0, 0, 1));
}

/// Claims every job through `handles` (a claimer task per handle) and
/// asserts each of `want` ids is seen exactly once.
async fn claim_all_once(handles: Vec<Arc<dyn Queue>>, want: &HashSet<String>) {
    let mut tasks = Vec::new();
    for (i, q) in handles.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while let Some(job) = q
                .claim(&format!("c{i}"), Duration::from_millis(300))
                .await
                .expect("claim")
            {
                q.ack(&job).await.expect("ack");
                ids.push(job.id);
            }
            ids
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.expect("claimer") {
            assert!(seen.insert(id.clone()), "job {id} was claimed twice");
        }
    }
    assert_eq!(&seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_handles_on_one_file_never_double_claim() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    let producer = open_at(&db, "q", &quiet()).await;
    let mut want = HashSet::new();
    for i in 0..60 {
        want.insert(
            producer
                .push(format!("{i}").as_bytes())
                .await
                .expect("push"),
        );
    }
    let mut handles: Vec<Arc<dyn Queue>> = Vec::new();
    for _ in 0..4 {
        handles.push(Arc::from(open_at(&db, "q", &quiet()).await));
    }
    claim_all_once(handles, &want).await;
    assert_eq!(producer.stats().await.expect("stats").demand(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_another_handle_wakes_on_a_push() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    let producer = open_at(&db, "q", &quiet()).await;
    let consumer: Arc<dyn Queue> = Arc::from(open_at(&db, "q", &quiet()).await);
    let mut latencies = Vec::new();
    for _ in 0..15 {
        let waiting = {
            let consumer = Arc::clone(&consumer);
            tokio::spawn(async move {
                let job = consumer.claim("c", Duration::from_secs(10)).await;
                (job, Instant::now())
            })
        };
        // The scenario: the push lands while the claim waits.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let pushed = Instant::now();
        producer.push(b"ping").await.expect("push");
        let (job, at) = waiting.await.expect("claimer");
        let job = job.expect("claim").expect("a job");
        consumer.ack(&job).await.expect("ack");
        latencies.push(at.saturating_duration_since(pushed));
    }
    // Behaviour, not speed (the latency is a benchmark figure): every claim
    // returned because of the push, long before its 10 s wait ran out.
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(2)),
        "a claim on another handle did not wake on the push: {latencies:?}"
    );
}

/// A second OS process: this test binary re-run with `SQLITE_CHILD_DB` set
/// (filtered to this test) claims from the same file while this process
/// claims too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_never_double_claims() {
    if let Some(db) = std::env::var_os("SQLITE_CHILD_DB") {
        return child_claimer(Path::new(&db)).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    let q: Arc<dyn Queue> = Arc::from(open_at(&db, "q", &quiet()).await);
    let mut want = HashSet::new();
    for i in 0..80 {
        want.insert(q.push(format!("{i}").as_bytes()).await.expect("push"));
    }
    let exe = std::env::current_exe().expect("test binary path");
    let child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "a_second_process_never_double_claims",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SQLITE_CHILD_DB", &db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child claimer");

    let mut mine = Vec::new();
    while let Some(job) = q
        .claim("parent", Duration::from_millis(500))
        .await
        .expect("claim")
    {
        q.ack(&job).await.expect("ack");
        mine.push(job.id);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("child claimer finished within 30 s")
        .expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("CHILD DONE"),
        "the child did not run the claimer:\n{stdout}"
    );
    let theirs: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.split_once("CLAIMED ").map(|(_, id)| id.trim().to_owned()))
        .collect();
    let mut seen = HashSet::new();
    for id in mine.iter().chain(&theirs) {
        assert!(
            seen.insert(id.clone()),
            "job {id} was claimed by both processes"
        );
    }
    assert_eq!(
        seen,
        want,
        "parent got {}, child got {}",
        mine.len(),
        theirs.len()
    );
}

/// The child's side: claim and ack until the queue stays empty, printing
/// each id.
async fn child_claimer(db: &Path) {
    let q = open_at(db, "q", &quiet()).await;
    while let Some(job) = q
        .claim("child", Duration::from_millis(500))
        .await
        .expect("claim")
    {
        q.ack(&job).await.expect("ack");
        println!("CLAIMED {}", job.id);
    }
    println!("CHILD DONE");
}
