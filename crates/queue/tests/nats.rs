//! The NATS JetStream backend against a real `nats-server -js`: the shared
//! conformance checks, plus what is specific to NATS (plain publishers,
//! missing stream/consumer, an unreachable server, `ack_wait` redelivery,
//! dead letters, `+WPI` heartbeats).

mod conformance;

use std::time::{Duration, Instant};

use conformance::{options_query, unique_name, Caps};
use nullworker_queue::testing::TestServer;
use nullworker_queue::{open, FailOutcome, OpenMode, Queue, QueueError, QueueOptions, QueueUrl};

fn server() -> TestServer {
    nullworker_queue::testing::nats().expect("nats-server with JetStream")
}

/// A queue URL on `server` with fresh stream, subject and consumer names.
fn fresh_url(server: &TestServer, options: &QueueOptions) -> (String, String, String) {
    let stream = unique_name("JOBS");
    let subject = format!("{}.new", stream.to_lowercase());
    let url = format!(
        "{}?stream={stream}&subject={subject}&consumer=workers&{}",
        server.url("nats"),
        options_query(options)
    );
    (url, stream, subject)
}

async fn open_url(url: &str, mode: OpenMode) -> Result<Box<dyn Queue>, QueueError> {
    let url: QueueUrl = url
        .parse()
        .unwrap_or_else(|e| panic!("queue URL {url}: {e}"));
    open(&url, mode).await
}

fn options(visibility_timeout: Duration, max_attempts: u32, retry_delay: Duration) -> QueueOptions {
    QueueOptions {
        visibility_timeout,
        max_attempts,
        retry_delay,
    }
}

async fn client(server: &TestServer) -> async_nats::Client {
    async_nats::connect(server.url("nats"))
        .await
        .expect("connect a plain NATS client")
}

async fn claim_some(q: &dyn Queue, consumer: &str) -> nullworker_queue::Job {
    q.claim(consumer, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("claim by {consumer}: {e}"))
        .unwrap_or_else(|| panic!("claim by {consumer} found no job within 5 s"))
}

async fn expect_stats(q: &dyn Queue, backlog: u64, in_flight: u64, dead: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = q
            .stats()
            .await
            .unwrap_or_else(|e| panic!("{what}: stats: {e}"));
        if (got.backlog, got.in_flight, got.dead) == (backlog, in_flight, dead) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: stats are {got:?}, expected backlog {backlog}, in flight {in_flight}, dead {dead}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_conforms() {
    let server = server();
    let open = |options: QueueOptions| {
        let (url, _, _) = fresh_url(&server, &options);
        async move {
            open_url(&url, OpenMode::Create)
                .await
                .expect("open a fresh NATS queue")
        }
    };
    let caps = Caps::default();
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            eprintln!("conformance: {} ...", stringify!($check));
            conformance::$check(&open, caps).await;
        )*};
    }
    // `fail_waits_out_retry_delay` is replaced by
    // `retry_delay_holds_the_job_back_counted_in_flight` below: NATS counts a
    // job waiting out a delayed NAK as ack-pending.
    run!(
        push_then_claim_is_byte_exact,
        fifo_order,
        claim_on_empty_waits,
        claim_wakes_on_push,
        stats_follow_the_lifecycle,
        ack_removes,
        fail_retries_then_dead_letters,
        release_hands_back_without_burning_an_attempt,
        expired_claim_is_reclaimed_and_stale_ack_is_refused,
        heartbeat_keeps_the_claim,
        no_double_claim_under_concurrency,
    );
}

/// A failed job waits out its retry delay unclaimable, counted in flight
/// (demand stays 1), then comes back as attempt 2 with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delay_holds_the_job_back_counted_in_flight() {
    let server = server();
    let (url, _, _) = fresh_url(
        &server,
        &options(Duration::from_secs(30), 5, Duration::from_secs(2)),
    );
    let q = open_url(&url, OpenMode::Create).await.expect("open");
    let id = q.push(b"later").await.expect("push");
    let job = claim_some(&*q, "c1").await;
    let failed_at = Instant::now();
    assert_eq!(q.fail(&job).await.expect("fail"), FailOutcome::Retried);
    expect_stats(&*q, 0, 1, 0, "during the retry delay").await;
    assert!(
        q.claim("c2", Duration::from_millis(500))
            .await
            .expect("claim")
            .is_none(),
        "a failed job was claimable during its 2 s retry delay"
    );
    let again = claim_some(&*q, "c2").await;
    let after = failed_at.elapsed();
    assert!(
        after >= Duration::from_millis(1_900),
        "retried after {after:?}, before the 2 s delay"
    );
    assert_eq!((again.id.as_str(), again.attempt), (id.as_str(), 2));
    q.ack(&again).await.expect("ack");
    expect_stats(&*q, 0, 0, 0, "after ack").await;
}

/// Messages from plain NATS producers (core publish and JetStream publish,
/// not `push`) are claimed byte for byte, with the stream sequence as id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_publishers_are_claimed_byte_exact() {
    let server = server();
    let (url, stream, subject) = fresh_url(&server, &QueueOptions::default());
    let q = open_url(&url, OpenMode::Create).await.expect("open");
    let nc = client(&server).await;

    let core: &[u8] = b"\x00core \xff\xfe publish\n";
    nc.publish(subject.clone(), core.to_vec().into())
        .await
        .expect("core publish");
    nc.flush().await.expect("flush");
    let js = async_nats::jetstream::new(nc);
    let js_payload: &[u8] = b"{\"via\":\"jetstream\"}";
    let ack = js
        .publish(subject.clone(), js_payload.to_vec().into())
        .await
        .expect("JetStream publish")
        .await
        .expect("JetStream publish ack");
    assert_eq!(ack.stream, stream);

    let first = claim_some(&*q, "c1").await;
    assert_eq!(first.payload, core);
    assert_eq!((first.id.as_str(), first.attempt), ("1", 1));
    let second = claim_some(&*q, "c1").await;
    assert_eq!(second.payload, js_payload);
    assert_eq!(second.id, ack.sequence.to_string());
    for job in [first, second] {
        q.ack(&job).await.expect("ack");
    }
    expect_stats(&*q, 0, 0, 0, "after acks").await;
}

/// `OpenMode::Existing` names the missing stream, then the missing
/// consumer, and says how to create them; `Create` is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_stream_and_consumer_are_named() {
    let server = server();
    let (url, stream, subject) = fresh_url(&server, &QueueOptions::default());
    let err = open_url(&url, OpenMode::Existing)
        .await
        .err()
        .expect("open of a missing stream");
    let text = err.to_string();
    assert!(matches!(err, QueueError::Missing { .. }), "{err:?}");
    assert!(text.contains(&format!("NATS stream {stream:?}")), "{text}");
    assert!(
        text.contains("create it with `nullworker queue create --queue URL`"),
        "{text}"
    );

    let js = async_nats::jetstream::new(client(&server).await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("create the stream by hand");
    let err = open_url(&url, OpenMode::Existing)
        .await
        .err()
        .expect("open of a missing consumer");
    let text = err.to_string();
    assert!(matches!(err, QueueError::Missing { .. }), "{err:?}");
    assert!(
        text.contains(&format!(
            "NATS durable consumer \"workers\" of stream {stream:?}"
        )),
        "{text}"
    );
    assert!(
        text.contains("nullworker queue create --queue URL"),
        "{text}"
    );

    for _ in 0..2 {
        open_url(&url, OpenMode::Create)
            .await
            .expect("create (twice: idempotent)");
    }
    let q = open_url(&url, OpenMode::Existing)
        .await
        .expect("open once created");
    let id = q.push(b"x").await.expect("push");
    assert_eq!(claim_some(&*q, "c1").await.id, id);
}

/// An unreachable server fails `open` within a few seconds, naming NATS
/// and the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_fast() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("nats://127.0.0.1:{port}?stream=JOBS&subject=jobs&consumer=workers");
    let started = Instant::now();
    let err = open_url(&url, OpenMode::Existing)
        .await
        .err()
        .expect("open of a closed port");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "open took {took:?} to fail");
    let text = err.to_string();
    assert!(
        matches!(err, QueueError::Unreachable { what: "NATS", .. }),
        "{err:?}"
    );
    assert!(
        text.contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}")),
        "{text}"
    );
}

/// A consumer that stops acking: its job goes to another process's handle
/// after `ack_wait` (1 s) as attempt 2, and the dead consumer's late ack is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_job_is_redelivered_after_ack_wait() {
    let server = server();
    let (url, _, _) = fresh_url(&server, &options(Duration::from_secs(1), 5, Duration::ZERO));
    let dies = open_url(&url, OpenMode::Create).await.expect("open");
    let rescuer = open_url(&url, OpenMode::Existing)
        .await
        .expect("open a second handle");
    let id = dies.push(b"abandoned").await.expect("push");
    let stale = claim_some(&*dies, "dies").await;
    let claimed_at = Instant::now();
    let fresh = loop {
        if let Some(job) = rescuer
            .claim("rescuer", Duration::from_millis(300))
            .await
            .expect("claim")
        {
            break job;
        }
        assert!(
            claimed_at.elapsed() < Duration::from_secs(10),
            "not redelivered within 10 s"
        );
    };
    assert!(
        claimed_at.elapsed() >= Duration::from_millis(900),
        "redelivered before ack_wait"
    );
    assert_eq!((fresh.id.as_str(), fresh.attempt), (id.as_str(), 2));
    assert!(matches!(
        dies.ack(&stale).await,
        Err(QueueError::Lost { .. })
    ));
    expect_stats(&*rescuer, 0, 1, 0, "after the refused stale ack").await;
    rescuer.ack(&fresh).await.expect("ack by the rescuer");
    expect_stats(&*rescuer, 0, 0, 0, "after the rescuer's ack").await;
}

/// `max_attempts` failures land the payload, byte for byte and with headers
/// naming its origin, in the `NAME_dead` stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_after_max_attempts() {
    let server = server();
    let (url, stream, subject) = fresh_url(
        &server,
        &options(Duration::from_secs(30), 3, Duration::ZERO),
    );
    let q = open_url(&url, OpenMode::Create).await.expect("open");
    let payload: &[u8] = b"\x01poison\xff";
    let id = q.push(payload).await.expect("push");
    for attempt in 1..=3 {
        let job = claim_some(&*q, "c1").await;
        assert_eq!((job.id.as_str(), job.attempt), (id.as_str(), attempt));
        let want = if attempt < 3 {
            FailOutcome::Retried
        } else {
            FailOutcome::DeadLettered
        };
        assert_eq!(q.fail(&job).await.expect("fail"), want, "attempt {attempt}");
    }
    expect_stats(&*q, 0, 0, 1, "after 3 failures").await;

    let js = async_nats::jetstream::new(client(&server).await);
    let dead = js
        .get_stream(format!("{stream}_dead"))
        .await
        .expect("dead-letter stream");
    let msg = dead.get_raw_message(1).await.expect("the dead letter");
    assert_eq!(msg.payload.as_ref(), payload);
    assert_eq!(msg.subject.as_str(), format!("nullworker.dead.{stream}"));
    let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Nullworker-Stream").as_deref(),
        Some(stream.as_str())
    );
    assert_eq!(
        header("Nullworker-Subject").as_deref(),
        Some(subject.as_str())
    );
    assert_eq!(header("Nullworker-Job-Id").as_deref(), Some(id.as_str()));
    assert_eq!(header("Nullworker-Attempts").as_deref(), Some("3"));
    assert!(
        header("Nullworker-Sequence").is_some(),
        "no sequence header: {:?}",
        msg.headers
    );
}

/// A job whose consumers keep dying is dead-lettered once it would be
/// delivered beyond `max_attempts`, instead of looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_consumers_exhaust_attempts_too() {
    let server = server();
    let (url, _, _) = fresh_url(&server, &options(Duration::from_secs(1), 1, Duration::ZERO));
    let q = open_url(&url, OpenMode::Create).await.expect("open");
    q.push(b"kills its consumer").await.expect("push");
    let _abandoned = claim_some(&*q, "dies").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            q.claim("next", Duration::from_millis(300))
                .await
                .expect("claim")
                .is_none(),
            "a job out of attempts was handed out again"
        );
        if q.stats().await.expect("stats").dead == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered within 10 s");
    }
    expect_stats(&*q, 0, 0, 1, "after the dead letter").await;
}

/// `+WPI` heartbeats keep a job from a second handle (another connection)
/// well past a 1 s `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_job_past_ack_wait() {
    let server = server();
    let (url, _, _) = fresh_url(&server, &options(Duration::from_secs(1), 5, Duration::ZERO));
    let q = open_url(&url, OpenMode::Create).await.expect("open");
    let thief = open_url(&url, OpenMode::Existing)
        .await
        .expect("open a second handle");
    q.push(b"long job").await.expect("push");
    let job = claim_some(&*q, "worker").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        q.heartbeat(&job).await.expect("heartbeat");
        let stolen = thief
            .claim("thief", Duration::from_millis(400))
            .await
            .expect("claim");
        assert!(
            stolen.is_none(),
            "job handed out while heart-beaten: {stolen:?}"
        );
    }
    q.ack(&job).await.expect("ack after 3 s of heartbeats");
    expect_stats(&*q, 0, 0, 0, "after ack").await;
}

/// An existing consumer's `ack_wait` wins over the URL's visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_consumer_keeps_its_ack_wait() {
    let server = server();
    let (url, stream, subject) =
        fresh_url(&server, &options(Duration::from_secs(1), 5, Duration::ZERO));
    open_url(&url, OpenMode::Create)
        .await
        .expect("create with 1 s");
    let long = url.replace("visibility_timeout=1&", "visibility_timeout=60&");
    assert_ne!(long, url, "{url}");
    let q = open_url(&long, OpenMode::Existing)
        .await
        .expect("open with 60 s");
    q.push(b"x").await.expect("push");
    let _held = claim_some(&*q, "c1").await;
    let started = Instant::now();
    let again = loop {
        if let Some(job) = q
            .claim("c2", Duration::from_millis(300))
            .await
            .expect("claim")
        {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "consumer of {stream}/{subject} did not redeliver after its own 1 s ack_wait"
        );
    };
    assert_eq!(again.attempt, 2);
}

/// A server running without JetStream is named as such, with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_jetstream_is_named() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let binary = nullworker_queue::testing::find_binary("nats-server", "nats-server")
        .unwrap_or_else(|e| panic!("{e}"));
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let _server = Kill(
        std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server without -js"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("nats://127.0.0.1:{port}?stream=JOBS&subject=jobs&consumer=workers");
    let err = open_url(&url, OpenMode::Create)
        .await
        .err()
        .expect("open without JetStream");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            QueueError::Unreachable {
                what: "NATS JetStream",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(text.contains("nats-server -js"), "{text}");
}
