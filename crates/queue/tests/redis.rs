//! The Redis list and Redis stream backends against a real `redis-server`
//! on an ephemeral loopback port: the shared conformance suite for both,
//! then what only Redis has (plain `redis-cli` producers, stream fields as
//! JSON, missing stream/group, an unreachable server, a consumer process
//! killed mid-job, dead letters in `NAME:dead`, lag when entries are
//! deleted behind the queue's back).

mod conformance;

use std::process::Stdio;
use std::time::{Duration, Instant};

use conformance::{options_query, unique_name, Caps};
use nullworker_queue::testing::{find_binary, TestServer};
use nullworker_queue::{
    open, FailOutcome, OpenMode, Queue, QueueError, QueueOptions, QueueStats, QueueUrl,
};

fn redis() -> TestServer {
    nullworker_queue::testing::redis().expect("a real redis-server for the Redis backend tests")
}

fn quiet() -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_secs(30),
        max_attempts: 3,
        retry_delay: Duration::ZERO,
    }
}

fn list_url(server: &TestServer, list: &str, options: &QueueOptions) -> QueueUrl {
    let raw = format!(
        "{}?list={list}&{}",
        server.url("redis"),
        options_query(options)
    );
    raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"))
}

fn stream_url(server: &TestServer, stream: &str, group: &str, options: &QueueOptions) -> QueueUrl {
    let raw = format!(
        "{}?stream={stream}&group={group}&{}",
        server.url("redis"),
        options_query(options)
    );
    raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"))
}

async fn open_ok(url: &QueueUrl, mode: OpenMode) -> Box<dyn Queue> {
    open(url, mode)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Runs the real `redis-cli` against the server; its stdout lines.
async fn cli(server: &TestServer, args: &[&[u8]]) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let binary = find_binary("redis-cli", "redis-tools").expect("redis-cli");
    let port = server.addr().port().to_string();
    let out = tokio::process::Command::new(binary)
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {:?} failed: {}",
        args.iter()
            .map(|a| String::from_utf8_lossy(a))
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<Vec<u8>> = out
        .stdout
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

async fn claim_some(q: &dyn Queue, consumer: &str) -> nullworker_queue::Job {
    q.claim(consumer, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("claim by {consumer}: {e}"))
        .unwrap_or_else(|| panic!("claim by {consumer} found no job within 5 s"))
}

async fn expect_stats(q: &dyn Queue, want: QueueStats, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = q
            .stats()
            .await
            .unwrap_or_else(|e| panic!("{what}: stats: {e}"));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: stats are {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(backlog: u64, in_flight: u64, dead: u64) -> QueueStats {
    QueueStats {
        backlog,
        in_flight,
        dead,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_list_conforms() {
    let server = redis();
    let opener = |options: QueueOptions| {
        let url = list_url(&server, &unique_name("jobs"), &options);
        async move { open_ok(&url, OpenMode::Create).await }
    };
    conformance::run_all(&opener, Caps::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stream_conforms() {
    let server = redis();
    let opener = |options: QueueOptions| {
        let url = stream_url(&server, &unique_name("jobs"), "workers", &options);
        async move { open_ok(&url, OpenMode::Create).await }
    };
    conformance::run_all(&opener, Caps::default()).await;
}

/// `redis-cli LPUSH` is a producer: jobs come back byte-exact, oldest
/// first, with the same id `push` gives the same bytes.
#[tokio::test]
async fn redis_cli_lpush_jobs_are_claimed_byte_exact_in_fifo_order() {
    let server = redis();
    let q = open_ok(&list_url(&server, "jobs", &quiet()), OpenMode::Existing).await;
    let payloads: [&[u8]; 4] = [
        br#"{"job": 1, "text": "it's \"quoted\""}"#,
        b"second job with spaces",
        "third: caf\u{e9} \u{1f680}".as_bytes(),
        b"4",
    ];
    for payload in payloads {
        cli(&server, &[b"LPUSH", b"jobs", payload]).await;
    }
    expect_stats(&*q, stats(4, 0, 0), "after 4 LPUSHes").await;
    for (i, payload) in payloads.iter().enumerate() {
        let job = claim_some(&*q, "c1").await;
        assert_eq!(
            job.payload,
            *payload,
            "claim {i} returned {:?}",
            String::from_utf8_lossy(&job.payload)
        );
        assert_eq!(job.attempt, 1);
        assert!(
            job.id.len() == 40 && job.id.bytes().all(|b| b.is_ascii_hexdigit()),
            "job id {:?} is not a SHA-1 in hex",
            job.id
        );
        q.ack(&job).await.expect("ack");
    }
    let id = q.push(payloads[0]).await.expect("push");
    // The longest wait there is must not overflow the claim's deadline.
    let job = q
        .claim("c1", Duration::MAX)
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(
        job.id, id,
        "push and a redis-cli producer give the same bytes different ids"
    );
    q.ack(&job).await.expect("ack");
    expect_stats(&*q, stats(0, 0, 0), "after all acks").await;
}

/// `XADD` with a `payload` field gives that field's bytes; without one,
/// the entry's fields as a JSON object. The job id is the entry id.
#[tokio::test]
async fn xadd_payload_field_and_other_fields_as_json() {
    let server = redis();
    let q = open_ok(
        &stream_url(&server, "events", "workers", &quiet()),
        OpenMode::Create,
    )
    .await;
    let with_payload = cli(
        &server,
        &[b"XADD", b"events", b"*", b"payload", b"raw bytes \xc3\xa9"],
    )
    .await;
    let with_fields = cli(
        &server,
        &[b"XADD", b"events", b"*", b"kind", b"resize", b"size", b"42"],
    )
    .await;

    let first = claim_some(&*q, "c1").await;
    assert_eq!(first.id.as_bytes(), with_payload[0].as_slice());
    assert_eq!(first.payload, b"raw bytes \xc3\xa9");
    assert_eq!(first.attempt, 1);

    let second = claim_some(&*q, "c1").await;
    assert_eq!(second.id.as_bytes(), with_fields[0].as_slice());
    let json: serde_json::Value = serde_json::from_slice(&second.payload).unwrap_or_else(|e| {
        panic!(
            "payload {:?} is not JSON: {e}",
            String::from_utf8_lossy(&second.payload)
        )
    });
    assert_eq!(json, serde_json::json!({"kind": "resize", "size": "42"}));

    expect_stats(&*q, stats(0, 2, 0), "two claimed").await;
    q.ack(&first).await.expect("ack");
    q.ack(&second).await.expect("ack");
    expect_stats(&*q, stats(0, 0, 0), "both acked").await;
    // Acknowledged entries are trimmed away.
    let len = cli(&server, &[b"XLEN", b"events"]).await;
    assert_eq!(
        len,
        [b"0".to_vec()],
        "acknowledged entries are still in the stream"
    );
}

/// OpenMode::Existing refuses a missing stream and a missing group with a
/// hint; OpenMode::Create makes both, and is idempotent.
#[tokio::test]
async fn missing_stream_or_group_is_named_with_a_hint() {
    let server = redis();
    let url = stream_url(&server, "orders", "billing", &quiet());
    let expected = "stream \"orders\" / consumer group \"billing\" does not exist; create it with \
`nullworker queue create --queue URL` or XGROUP CREATE orders billing $ MKSTREAM";

    let err = open(&url, OpenMode::Existing)
        .await
        .map(|_| ())
        .expect_err("a missing stream");
    assert!(matches!(err, QueueError::Missing { .. }), "{err:?}");
    assert_eq!(err.to_string(), expected);

    cli(&server, &[b"XADD", b"orders", b"*", b"payload", b"x"]).await;
    let err = open(&url, OpenMode::Existing)
        .await
        .map(|_| ())
        .expect_err("a missing group");
    assert_eq!(err.to_string(), expected);

    open_ok(&url, OpenMode::Create).await;
    let q = open_ok(&url, OpenMode::Create).await;
    let q2 = open_ok(&url, OpenMode::Existing).await;
    // The group was created at 0: it sees the entry added before it.
    expect_stats(&*q2, stats(1, 0, 0), "entry added before the group").await;
    assert_eq!(claim_some(&*q, "c").await.payload, b"x");

    // A group deleted behind the queue's back is reported as missing too.
    cli(&server, &[b"XGROUP", b"DESTROY", b"orders", b"billing"]).await;
    let err = q.stats().await.expect_err("stats of a destroyed group");
    assert!(matches!(err, QueueError::Missing { .. }), "{err:?}");
    let err = q
        .claim("c", Duration::from_millis(50))
        .await
        .expect_err("claim from a destroyed group");
    assert!(matches!(err, QueueError::Missing { .. }), "{err:?}");
}

/// A closed port is `Unreachable` at open, quickly, for both backends.
#[tokio::test]
async fn unreachable_server_fails_fast_at_open() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    for raw in [
        format!("redis://127.0.0.1:{port}?list=jobs"),
        format!("redis://:secret@127.0.0.1:{port}/3?stream=s&group=g"),
    ] {
        let url: QueueUrl = raw.parse().expect("url");
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), open(&url, OpenMode::Existing))
            .await
            .unwrap_or_else(|_| panic!("open of {raw} hung for 10 s"));
        let err = result.map(|_| ()).expect_err("a closed port");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{raw}: took {:?}",
            started.elapsed()
        );
        match &err {
            QueueError::Unreachable { what, addr, .. } => {
                assert_eq!(*what, "redis");
                assert!(addr.contains(&format!("127.0.0.1:{port}")), "{addr}");
            }
            other => panic!("{raw}: expected Unreachable, got {other:?}"),
        }
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

/// A test binary re-run with `REDIS_CHILD_QUEUE` set claims one job,
/// reports it and then hangs until it is killed.
async fn child_claims_and_hangs(raw: &str) {
    let url: QueueUrl = raw.parse().expect("child url");
    let q = open_ok(&url, OpenMode::Existing).await;
    let job = claim_some(&*q, &format!("child-{}", std::process::id())).await;
    println!("CLAIMED {}", job.id);
    std::future::pending::<()>().await;
}

/// Spawns the child claimer, waits until it claimed, SIGKILLs it; the id
/// it claimed.
async fn claim_in_a_child_and_kill_it(test: &str, url: &QueueUrl) -> String {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = tokio::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("REDIS_CHILD_QUEUE", url.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child claimer");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let id = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("child stdout") {
            // The harness prints `test NAME ... ` on the same line first.
            if let Some((_, id)) = line.split_once("CLAIMED ") {
                return id.trim().to_owned();
            }
        }
        panic!("the child exited without claiming");
    })
    .await
    .expect("the child claimed within 30 s");
    child.kill().await.expect("SIGKILL the child");
    id
}

/// A consumer process killed mid-job: its job is claimable again after the
/// visibility timeout (not before), as attempt 2, and nothing is lost.
async fn killed_consumer_job_runs_again(test: &str, url: QueueUrl) {
    let q = open_ok(&url, OpenMode::Create).await;
    let pushed = q.push(b"survives a crash").await.expect("push");
    let id = claim_in_a_child_and_kill_it(test, &url).await;
    let killed_at = Instant::now();
    assert_eq!(id, pushed);
    expect_stats(&*q, stats(0, 1, 0), "the dead consumer's job is in flight").await;

    let job = loop {
        q.requeue_expired().await.expect("requeue_expired");
        if let Some(job) = q
            .claim("survivor", Duration::from_millis(200))
            .await
            .expect("claim")
        {
            break job;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "job {id} never came back"
        );
    };
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1_500),
        "job {id} came back {:?} after the kill, before the 2 s visibility timeout",
        killed_at.elapsed()
    );
    assert_eq!(job.id, id);
    assert_eq!(job.payload, b"survives a crash");
    assert_eq!(job.attempt, 2);
    q.ack(&job).await.expect("ack");
    expect_stats(&*q, stats(0, 0, 0), "after the survivor's ack").await;
}

fn crash_options() -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_secs(2),
        ..quiet()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_job_of_a_killed_consumer_runs_again() {
    if let Ok(url) = std::env::var("REDIS_CHILD_QUEUE") {
        return child_claims_and_hangs(&url).await;
    }
    let server = redis();
    let url = list_url(&server, "crashy", &crash_options());
    killed_consumer_job_runs_again("list_job_of_a_killed_consumer_runs_again", url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_job_of_a_killed_consumer_runs_again() {
    if let Ok(url) = std::env::var("REDIS_CHILD_QUEUE") {
        return child_claims_and_hangs(&url).await;
    }
    let server = redis();
    let url = stream_url(&server, "crashy", "workers", &crash_options());
    killed_consumer_job_runs_again("stream_job_of_a_killed_consumer_runs_again", url).await;
}

/// A list job failing max_attempts times is `LPUSH`ed to `NAME:dead`,
/// byte-exact.
#[tokio::test]
async fn list_dead_letters_land_in_name_dead() {
    let server = redis();
    let options = QueueOptions {
        max_attempts: 2,
        ..quiet()
    };
    let q = open_ok(&list_url(&server, "jobs", &options), OpenMode::Existing).await;
    cli(&server, &[b"LPUSH", b"jobs", b"poison \x01"]).await;
    let first = claim_some(&*q, "c").await;
    assert_eq!(q.fail(&first).await.expect("fail"), FailOutcome::Retried);
    let second = claim_some(&*q, "c").await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        q.fail(&second).await.expect("fail"),
        FailOutcome::DeadLettered
    );
    assert_eq!(
        cli(&server, &[b"LRANGE", b"jobs:dead", b"0", b"-1"]).await,
        [b"poison \x01".to_vec()]
    );
    assert_eq!(cli(&server, &[b"LLEN", b"jobs"]).await, [b"0".to_vec()]);
    expect_stats(&*q, stats(0, 0, 1), "after dead-lettering").await;
}

/// A stream job failing max_attempts times is copied to `NAME:dead` with
/// its fields, its original id and its attempts, and acknowledged.
#[tokio::test]
async fn stream_dead_letters_land_in_name_dead() {
    let server = redis();
    let options = QueueOptions {
        max_attempts: 2,
        ..quiet()
    };
    let q = open_ok(
        &stream_url(&server, "jobs", "g", &options),
        OpenMode::Create,
    )
    .await;
    let id = cli(&server, &[b"XADD", b"jobs", b"*", b"kind", b"poison"])
        .await
        .remove(0);
    let first = claim_some(&*q, "c").await;
    assert_eq!(q.fail(&first).await.expect("fail"), FailOutcome::Retried);
    let second = claim_some(&*q, "c").await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        q.fail(&second).await.expect("fail"),
        FailOutcome::DeadLettered
    );
    let dead = cli(&server, &[b"XRANGE", b"jobs:dead", b"-", b"+"]).await;
    // redis-cli prints an entry as its id, then field and value lines.
    let fields: Vec<&[u8]> = dead.iter().skip(1).map(Vec::as_slice).collect();
    assert_eq!(
        fields,
        [
            b"kind".as_slice(),
            b"poison",
            b"original_id",
            &id,
            b"attempts",
            b"2"
        ],
        "dead letter {:?}",
        dead.iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>()
    );
    expect_stats(&*q, stats(0, 0, 1), "after dead-lettering").await;
}

/// A job whose consumer keeps dying is dead-lettered after max_attempts
/// deliveries instead of being handed out forever (both backends).
#[tokio::test]
async fn job_that_outlives_its_attempts_is_dead_lettered_when_reclaimed() {
    let server = redis();
    let options = QueueOptions {
        visibility_timeout: Duration::from_secs(1),
        max_attempts: 1,
        ..quiet()
    };
    let urls = [
        list_url(&server, "doomed-list", &options),
        stream_url(&server, "doomed-stream", "g", &options),
    ];
    for url in urls {
        let q = open_ok(&url, OpenMode::Create).await;
        q.push(b"kills its consumer").await.expect("push");
        claim_some(&*q, "doomed").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            q.requeue_expired().await.expect("requeue_expired");
            // An empty claim is also the moment a stream reclaims.
            let got = q
                .claim("next", Duration::from_millis(100))
                .await
                .expect("claim");
            assert_eq!(
                got, None,
                "{url}: a job out of attempts was handed out again"
            );
            if q.stats().await.expect("stats") == stats(0, 0, 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: the job was never dead-lettered"
            );
        }
    }
}

/// When Redis cannot report the group's lag (an entry was `XDEL`ed behind
/// the queue's back), the backlog is counted from the stream.
#[tokio::test]
async fn stream_backlog_without_lag_is_counted() {
    let server = redis();
    let q = open_ok(
        &stream_url(&server, "jobs", "g", &quiet()),
        OpenMode::Create,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(q.push(format!("{i}").as_bytes()).await.expect("push"));
    }
    let job = claim_some(&*q, "c").await;
    cli(&server, &[b"XDEL", b"jobs", ids[3].as_bytes()]).await;
    let info = cli(&server, &[b"XINFO", b"GROUPS", b"jobs"]).await;
    let lag_at = info
        .iter()
        .position(|l| l == b"lag")
        .expect("XINFO GROUPS reports lag");
    assert_eq!(
        info[lag_at + 1],
        b"",
        "Redis still reports a lag, the fallback is not exercised"
    );
    expect_stats(&*q, stats(2, 1, 0), "lag counted from the stream").await;
    q.ack(&job).await.expect("ack");
    expect_stats(&*q, stats(2, 0, 0), "after the ack").await;
}
