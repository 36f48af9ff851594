//! Queue-driven autoscaling end to end, with every part real: a
//! `nullworker engine` starting workers from zero, `nullworker consume`
//! beside each worker (the endpoint's consumer command), a
//! `nullworker dispatch --json` process, and real redis-server /
//! nats-server queues fed by plain producers (`redis-cli LPUSH`, `XADD`, a
//! raw NATS `PUB`). Each job appends a `start` and a `done` line to a
//! record file, so the tests see exactly which job ran where and how often.
//!
//! What is shown: each job runs once in the normal case with one worker per
//! job and back to zero; the counting rule holds at every decision; a job
//! whose consumer is SIGKILLed runs again after the visibility timeout and a
//! job that keeps failing is dead-lettered; a dispatcher SIGKILLed and
//! restarted converges with nothing lost or duplicated; a worker holding a
//! job is never stopped by scale-in.

use std::time::{Duration, Instant};

use nullworker_queue::{OpenMode, QueueUrl};
use serde_json::{json, Value};

use crate::common::engine::{alive, EngineGuard, TestEndpoint};
use crate::common::process::wait_for;
use crate::common::queue::{
    check_counting, consumer_command, consumer_endpoint, counts, events_named, metric,
    nats_publish, now_epoch, queue_ok, redis_cli, shell_quote, Dispatch, JobRecord, WorkerSampler,
};

/// Longest wait for a run's jobs to complete.
const RUN: Duration = Duration::from_secs(60);
/// Longest wait for scale to zero once the queue is empty (inactivity
/// timeout 2 s, scale-down delay 1 s, plus the engine's ticks).
const TO_ZERO: Duration = Duration::from_secs(30);
/// Scheduling allowance of the counting checks on a loaded 2-core machine.
const SLACK: f64 = 0.5;

/// One run: an engine, an endpoint whose consumers run `body` as each job,
/// the job record and a sampler of the engine's workers.
struct Flow {
    engine: EngineGuard,
    ep: TestEndpoint,
    record: JobRecord,
    url: String,
    sampler: WorkerSampler,
    dir: tempfile::TempDir,
}

impl Flow {
    /// `body` is the job's shell code (see [`JobRecord::script`]);
    /// `extra` adds endpoint parameters.
    fn new(name: &str, url: &str, body: &str, claim_timeout: f64, extra: Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = JobRecord::new(dir.path().join("record"));
        let engine = EngineGuard::start();
        let consumer = consumer_command(url, claim_timeout, &record.script(body));
        let ep = consumer_endpoint(&engine, name, &consumer, extra);
        let sampler = WorkerSampler::start(&engine, &ep);
        Self {
            engine,
            ep,
            record,
            url: url.to_owned(),
            sampler,
            dir,
        }
    }

    /// A dispatcher for this run, its log in the run's directory.
    fn dispatch(&self, extra: &[&str], log: &str) -> Dispatch {
        Dispatch::start(
            &self.engine,
            &self.ep,
            &self.url,
            extra,
            &self.dir.path().join(log),
        )
    }

    /// Waits until every payload has a `done` line and the queue shows
    /// nothing waiting or in flight (the last ack has landed); returns the
    /// time that was seen.
    fn wait_all_done(&self, payloads: &[String], dead: u64) -> f64 {
        let deadline = Instant::now() + RUN;
        loop {
            let done = self.record.done_counts();
            if payloads.iter().all(|p| done.contains_key(p)) && counts(&self.url) == (0, 0, dead) {
                return now_epoch();
            }
            assert!(
                Instant::now() < deadline,
                "jobs not all done within {RUN:?}: queue {:?}, record {:#?}\n{}",
                counts(&self.url),
                self.record.lines(),
                self.worker_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the engine lists no worker.
    fn wait_zero_workers(&self) {
        wait_for("zero workers", TO_ZERO, || {
            self.engine
                .workers_detail(&self.ep)
                .is_empty()
                .then_some(())
        });
    }

    /// The consumers' logs (for failure messages).
    fn worker_logs(&self) -> String {
        let mut text = String::new();
        let root = self.engine.state_dir.join("workers");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return text;
        };
        for dir in dirs.flatten() {
            for file in ["consumer.log", "worker.log"] {
                let path = dir.path().join(file);
                if let Ok(log) = std::fs::read_to_string(&path) {
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    text.push_str(&format!("--- {}\n", path.display()));
                    for line in tail.into_iter().rev() {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
        }
        text
    }
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Stops the dispatcher with SIGTERM and requires the clean drain (exit 0).
fn stop_cleanly(dispatch: &mut Dispatch) -> Vec<Value> {
    let status = dispatch.stop(Duration::from_secs(30));
    let events = dispatch.events();
    assert_eq!(
        status.code(),
        Some(0),
        "dispatch exit: {events:#?}\n{}",
        dispatch.log_text()
    );
    assert_eq!(events_named(&events, "drained").len(), 1, "{events:#?}");
    events
}

// ---------------------------------------------------------------------------
// 1. Exactly once, one worker per job, back to zero: per producer kind
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Producer {
    RedisList,
    RedisStream,
    Nats,
}

fn exactly_once(producer: Producer) {
    const N: usize = 3;
    let (server, url) = match producer {
        Producer::RedisList => {
            let s = nullworker_queue::testing::redis().expect("redis-server for the test");
            let url = format!("{}?list=jobs", s.url("redis"));
            (s, url)
        }
        Producer::RedisStream => {
            let s = nullworker_queue::testing::redis().expect("redis-server for the test");
            let url = format!("{}?stream=jobs&group=workers", s.url("redis"));
            (s, url)
        }
        Producer::Nats => {
            let s = nullworker_queue::testing::nats().expect("nats-server for the test");
            let url = format!(
                "{}?stream=JOBS&subject=jobs.new&consumer=workers",
                s.url("nats")
            );
            (s, url)
        }
    };
    if !matches!(producer, Producer::RedisList) {
        queue_ok(&["create", "--queue", &url]);
    }
    // Jobs of 2.5 s, longer than the engine takes to start the second and
    // third worker from zero (one at once, the others at its next tick, 1 s
    // later): all three run at once, one per worker.
    let flow = Flow::new("once", &url, "sleep 2.5", 10.0, json!({"max_workers": 5}));
    let mut dispatch = flow.dispatch(&[], "dispatch.log");
    let jobs = payloads("job", N);
    match producer {
        Producer::RedisList => {
            let mut args = vec!["LPUSH", "jobs"];
            args.extend(jobs.iter().map(String::as_str));
            assert_eq!(redis_cli(server.addr(), &args).trim(), N.to_string());
        }
        Producer::RedisStream => {
            for job in &jobs {
                redis_cli(server.addr(), &["XADD", "jobs", "*", "payload", job]);
            }
        }
        Producer::Nats => {
            let refs: Vec<&str> = jobs.iter().map(String::as_str).collect();
            nats_publish(server.addr(), "jobs.new", &refs);
        }
    }

    flow.wait_all_done(&jobs, 0);
    flow.record.assert_each_ran_once(&jobs);
    let workers: std::collections::BTreeSet<i64> =
        flow.record.lines().iter().map(|l| l.worker).collect();
    assert_eq!(
        workers.len(),
        N,
        "one worker per job: {:#?}",
        flow.record.lines()
    );
    flow.wait_zero_workers();
    // Peak workers: one per job, no more (max_workers 5 ≥ N). This depends
    // on the engine starting no worker beyond the sessions asked for.
    assert_eq!(flow.sampler.peak(), N, "peak workers");

    let events = stop_cleanly(&mut dispatch);
    assert_eq!(
        events_named(&events, "session_held").len(),
        N,
        "one session per job: {events:#?}"
    );
    assert!(
        events_named(&events, "session_failed").is_empty(),
        "{events:#?}"
    );
    check_counting(&dispatch, &flow.record, SLACK);
}

#[test]
fn redis_list_lpush_jobs_each_run_once_on_one_worker_each_then_zero() {
    exactly_once(Producer::RedisList);
}

#[test]
fn redis_stream_xadd_jobs_each_run_once_on_one_worker_each_then_zero() {
    exactly_once(Producer::RedisStream);
}

#[test]
fn nats_published_jobs_each_run_once_on_one_worker_each_then_zero() {
    exactly_once(Producer::Nats);
}

// ---------------------------------------------------------------------------
// 2. The counting rule at every sample of one run
// ---------------------------------------------------------------------------

/// Sessions the dispatcher has open (requested or held) per its `/metrics`.
fn metric_sessions(dispatch: &Dispatch) -> u64 {
    let m = dispatch.metrics();
    metric(&m, "nullworker_dispatch_sessions{") as u64
}

#[test]
fn sessions_track_backlog_plus_in_flight_at_every_sample() {
    let redis = nullworker_queue::testing::redis().expect("redis-server for the test");
    let url = format!("{}?list=jobs", redis.url("redis"));
    const MAX: u64 = 3;
    // Mixed durations so jobs end at different times while others wait.
    let body = "case \"$p\" in *-1|*-4) sleep 2.5;; *-2|*-6) sleep 0.3;; *) sleep 1.2;; esac";
    let flow = Flow::new("counting", &url, body, 10.0, json!({}));
    let mut dispatch = flow.dispatch(&["--max-sessions", &MAX.to_string()], "dispatch.log");
    let poll = dispatch.started("poll_interval_ms").as_f64().expect("poll") / 1000.0;

    // An independent reading beside the dispatcher's own: the queue's counts
    // (read first) and the dispatcher's sessions from /metrics (read next).
    // Sessions are never fewer than the dispatcher's own count (a release is
    // seen up to a check interval late), so a stretch below
    // min(max, demand) here is a job really waiting for the dispatcher.
    let parsed: QueueUrl = url.parse().expect("queue URL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let queue = rt
        .block_on(nullworker_queue::open(&parsed, OpenMode::Existing))
        .expect("open the queue");
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let sample = |samples: &mut Vec<(f64, u64, u64)>| {
        let stats = rt.block_on(queue.stats()).expect("stats");
        let sessions = metric_sessions(&dispatch);
        samples.push((now_epoch(), stats.backlog + stats.in_flight, sessions));
    };

    let first = payloads("wave1", 4);
    let second = payloads("wave2", 3);
    let mut args = vec!["LPUSH", "jobs"];
    args.extend(first.iter().map(String::as_str));
    redis_cli(redis.addr(), &args);
    // The second wave arrives while the first runs.
    let deadline = Instant::now() + RUN;
    while flow
        .record
        .lines()
        .iter()
        .filter(|l| l.kind == "start")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "first wave did not start");
        sample(&mut samples);
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut args = vec!["LPUSH", "jobs"];
    args.extend(second.iter().map(String::as_str));
    redis_cli(redis.addr(), &args);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    loop {
        sample(&mut samples);
        let done = flow.record.done_counts();
        if all.iter().all(|p| done.contains_key(p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs not done: {:#?}\ndispatch log:\n{}\n{}",
            flow.record.lines(),
            dispatch.log_text(),
            flow.worker_logs()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    flow.wait_all_done(&all, 0);
    flow.record.assert_each_ran_once(&all);

    // Independent samples: no stretch below min(max, demand) longer than two
    // polls plus the slack and one sampling gap.
    let limit = 2.0 * poll + SLACK + 0.2;
    let mut below_since: Option<f64> = None;
    let mut longest = 0.0f64;
    for &(at, demand, sessions) in &samples {
        if sessions < demand.min(MAX) {
            let since = *below_since.get_or_insert(at);
            longest = longest.max(at - since);
        } else {
            below_since = None;
        }
    }
    assert!(
        longest <= limit,
        "a job waited {longest:.3} s with fewer sessions than min(max, backlog + in flight) \
         (limit {limit:.3} s): {samples:?}"
    );
    assert!(
        samples.iter().any(|&(_, d, s)| d > MAX && s == MAX),
        "the run reached the cap with work left over: {samples:?}"
    );

    let events = stop_cleanly(&mut dispatch);
    let report = check_counting(&dispatch, &flow.record, SLACK);
    assert!(report.decisions >= 4, "{report:?}");
    assert!(
        events_named(&events, "session_failed").is_empty(),
        "{events:#?}"
    );
    // Never more than max at once.
    for d in events_named(&events, "decision") {
        assert!(d["open_after"].as_u64().unwrap() <= MAX, "{d}");
    }
}

// ---------------------------------------------------------------------------
// 3. A consumer killed mid-job; a job that keeps failing
// ---------------------------------------------------------------------------

#[test]
fn a_job_whose_consumer_is_killed_runs_again_after_the_visibility_timeout() {
    let redis = nullworker_queue::testing::redis().expect("redis-server for the test");
    let url = format!("{}?list=jobs&visibility_timeout=2", redis.url("redis"));
    // The victim's first delivery hangs; later ones finish at once.
    let body =
        "if [ \"$p\" = victim ] && [ \"$NULLWORKER_JOB_ATTEMPT\" = 1 ]; then sleep 120; fi; \
                sleep 0.5";
    let flow = Flow::new("killed", &url, body, 10.0, json!({}));
    let mut dispatch = flow.dispatch(&[], "dispatch.log");
    redis_cli(redis.addr(), &["LPUSH", "jobs", "victim", "bystander"]);

    let first = wait_for("the victim's first run", RUN, || {
        flow.record.of("start", "victim").into_iter().next()
    });
    assert_eq!(first.attempt, 1);
    let worker = flow
        .engine
        .workers_detail(&flow.ep)
        .into_iter()
        .find(|w| w["id"].as_i64() == Some(first.worker))
        .unwrap_or_else(|| panic!("worker {} is listed", first.worker));
    let consumer_pid = worker["consumer_pid"].as_i64().expect("consumer_pid") as i32;
    assert!(alive(consumer_pid as i64));
    // SAFETY: kill(2) on the consumer the engine started for this test.
    unsafe {
        assert_eq!(libc::kill(consumer_pid, libc::SIGKILL), 0);
    }
    let killed_at = now_epoch();
    // Its job's process group (a group of its own) goes with it.
    wait_for(
        "the killed consumer's job gone",
        Duration::from_secs(5),
        || {
            // SAFETY: signal 0 only checks whether the group has members.
            (unsafe { libc::kill(-first.pid, 0) } != 0).then_some(())
        },
    );

    flow.wait_all_done(&["victim".to_owned(), "bystander".to_owned()], 0);
    let starts = flow.record.of("start", "victim");
    assert_eq!(starts.len(), 2, "{:#?}", flow.record.lines());
    assert_eq!(starts[1].attempt, 2);
    assert_eq!(starts[1].id, first.id, "the same job again");
    // Its last heartbeat was at most a third of the visibility timeout
    // before the kill, so it expired at least 2 × 2/3 s after it.
    assert!(
        starts[1].at - killed_at >= 1.3,
        "not handed out again before its visibility timeout: {starts:#?}"
    );
    assert_eq!(flow.record.of("done", "victim").len(), 1);
    assert_eq!(flow.record.of("start", "bystander").len(), 1);
    assert_eq!(flow.record.of("done", "bystander").len(), 1);
    flow.wait_zero_workers();
    let events = stop_cleanly(&mut dispatch);
    assert!(
        events_named(&events, "session_failed").is_empty(),
        "{events:#?}"
    );
}

#[test]
fn a_job_failing_every_time_lands_in_the_dead_letters_after_max_attempts() {
    let nats = nullworker_queue::testing::nats().expect("nats-server for the test");
    let url = format!(
        "{}?stream=JOBS&subject=jobs.new&consumer=workers&max_attempts=3&retry_delay=0",
        nats.url("nats")
    );
    queue_ok(&["create", "--queue", &url]);
    let body = "[ \"$p\" = doomed ] && exit 1; sleep 0.2";
    let flow = Flow::new("doomed", &url, body, 10.0, json!({}));
    let mut dispatch = flow.dispatch(&[], "dispatch.log");
    nats_publish(nats.addr(), "jobs.new", &["doomed", "fine"]);

    flow.wait_all_done(&["fine".to_owned()], 1);
    let starts = flow.record.of("start", "doomed");
    let attempts: Vec<u32> = starts.iter().map(|l| l.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "{:#?}", flow.record.lines());
    assert!(starts.iter().all(|l| l.id == starts[0].id));
    assert!(flow.record.of("done", "doomed").is_empty());
    assert_eq!(flow.record.of("done", "fine").len(), 1);
    assert_eq!(counts(&url), (0, 0, 1), "dead = 1");
    flow.wait_zero_workers();
    let events = stop_cleanly(&mut dispatch);
    assert!(
        events_named(&events, "session_failed").is_empty(),
        "{events:#?}"
    );
    check_counting(&dispatch, &flow.record, SLACK);
}

// ---------------------------------------------------------------------------
// 4. A dispatcher killed and restarted
// ---------------------------------------------------------------------------

#[test]
fn a_dispatcher_killed_and_restarted_converges_with_every_job_run_once() {
    let redis = nullworker_queue::testing::redis().expect("redis-server for the test");
    let url = format!("{}?stream=jobs&group=workers", redis.url("redis"));
    queue_ok(&["create", "--queue", &url]);
    // Idle sessions (more than the work, after the restart) are released
    // after 2 s.
    let flow = Flow::new("restart", &url, "sleep 2", 2.0, json!({}));
    let flags = ["--max-sessions", "2", "--lifetime", "5"];
    let mut first = flow.dispatch(&flags, "dispatch-1.log");
    let jobs = payloads("job", 5);
    for job in &jobs {
        redis_cli(redis.addr(), &["XADD", "jobs", "*", "payload", job]);
    }
    wait_for("two jobs running", RUN, || {
        (flow
            .record
            .lines()
            .iter()
            .filter(|l| l.kind == "start")
            .count()
            >= 2)
            .then_some(())
    });
    first.kill();
    let before = first.events();
    assert_eq!(
        events_named(&before, "session_held").len(),
        2,
        "two held at the kill: {before:#?}"
    );

    let mut second = flow.dispatch(&flags, "dispatch-2.log");
    flow.wait_all_done(&jobs, 0);
    // No consumer died, so no job may run twice.
    flow.record.assert_each_ran_once(&jobs);
    // The new dispatcher converges: its sessions end once the work is done.
    wait_for("the restarted dispatcher to hold nothing", TO_ZERO, || {
        (metric_sessions(&second) == 0).then_some(())
    });
    flow.wait_zero_workers();
    let events = stop_cleanly(&mut second);
    assert!(
        !events_named(&events, "session_held").is_empty(),
        "the restarted dispatcher took over: {events:#?}"
    );
    for d in events_named(&events, "decision") {
        assert!(d["open_after"].as_u64().unwrap() <= 2, "{d}");
    }
}

// ---------------------------------------------------------------------------
// 5. Scale-in never stops a worker holding a job
// ---------------------------------------------------------------------------

#[test]
fn a_worker_holding_a_long_job_survives_scale_in_around_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}?queue=jobs", dir.path().join("jobs.db").display());
    queue_ok(&["create", "--queue", &url]);
    // The long job runs until the test lets it finish (at most 60 s), after
    // the other workers have been stopped around it.
    let go = dir.path().join("go");
    let body = format!(
        "case \"$p\" in long) i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; \
         i=$((i+1)); done;; *) sleep 0.3;; esac",
        go = shell_quote(&go.display().to_string())
    );
    let flow = Flow::new("long", &url, &body, 10.0, json!({"inactivity_timeout": 1}));
    // A check interval longer than the engine takes to stop a released
    // worker: the dispatcher's next look at a short job's session finds its
    // worker gone, which must end that session then, not when its lease
    // runs out.
    const CHECK: f64 = 5.0;
    let mut dispatch = flow.dispatch(&["--check-interval", &CHECK.to_string()], "dispatch.log");
    queue_ok(&["push", "--queue", &url, "long"]);
    queue_ok(&["push", "--queue", &url, "--count", "3", "short-{i}"]);

    let start = wait_for("the long job to start", RUN, || {
        flow.record.of("start", "long").into_iter().next()
    });
    let shorts = payloads("short", 3);
    wait_for(
        "the short jobs to finish and their workers to be stopped",
        RUN,
        || {
            let done = flow.record.done_counts();
            let live: Vec<i64> = flow
                .sampler
                .latest()
                .live()
                .iter()
                .filter_map(|w| w["id"].as_i64())
                .collect();
            (shorts.iter().all(|p| done.contains_key(p)) && live == [start.worker]).then_some(())
        },
    );
    let scaled_in_at = Instant::now();
    // The dispatcher notices within one check that those sessions ended.
    wait_for(
        "the short jobs' sessions to end",
        Duration::from_secs_f64(CHECK + 2.0),
        || (events_named(&dispatch.events(), "session_ended").len() >= 3).then_some(()),
    );
    assert!(
        scaled_in_at.elapsed() <= Duration::from_secs_f64(CHECK + 2.0),
        "sessions of stopped workers ended within a check: {:#?}",
        dispatch.events()
    );
    std::fs::write(&go, b"").expect("let the long job finish");

    let mut all = vec!["long".to_owned()];
    all.extend(shorts);
    let acked_at = flow.wait_all_done(&all, 0);
    flow.record.assert_each_ran_once(&all);
    let done = flow.record.of("done", "long").remove(0);
    assert_eq!(done.worker, start.worker, "{done:?}");

    // From the long job's start to its ack, its worker is listed every time
    // with the same process, while the other workers were stopped around it.
    let window: Vec<_> = flow
        .sampler
        .samples()
        .into_iter()
        .filter(|s| s.at >= start.at && s.at <= acked_at)
        .collect();
    assert!(window.len() >= 20, "samples over the job: {}", window.len());
    let pid = window[0]
        .worker(start.worker)
        .and_then(|w| w["pid"].as_i64())
        .expect("the long job's worker and pid");
    for s in &window {
        let w = s.worker(start.worker).unwrap_or_else(|| {
            panic!(
                "worker {} missing at {}: {:#?}",
                start.worker, s.at, s.workers
            )
        });
        assert_eq!(w["pid"].as_i64(), Some(pid), "same process: {w}");
        assert_ne!(w["status"], "STOPPING", "{w}");
    }
    assert!(alive(pid), "the worker outlived its job");
    let peak = window.iter().map(|s| s.live().len()).max().unwrap_or(0);
    assert!(
        peak >= 2,
        "other workers ran beside the long job: peak {peak}"
    );
    flow.wait_zero_workers();
    let events = stop_cleanly(&mut dispatch);
    assert!(
        events_named(&events, "session_failed").is_empty(),
        "{events:#?}"
    );
    check_counting(&dispatch, &flow.record, SLACK);
}
