//! `nullworker dispatch` as a user runs it: the real binary against a real
//! engine (workers started from zero) and a SQLite queue.

use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nullworker_queue::{OpenMode, QueueUrl};
use serde_json::{json, Value};

use crate::common::engine::EngineGuard;
use crate::common::process::{nullworker, ChildGuard};

/// Reads JSON events from `rx` into `seen` until `done` holds for them.
fn read_until(
    rx: &Receiver<String>,
    seen: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; events so far: {seen:#?}"));
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
    }
}

fn count(events: &[Value], name: &str) -> usize {
    events.iter().filter(|e| e["event"] == name).count()
}

#[test]
fn one_session_per_job_then_a_clean_drain_on_sigterm() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("dispatch-smoke", json!({}));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}?queue=jobs", dir.path().join("jobs.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let parsed: QueueUrl = url.parse().expect("queue URL");
    let queue = rt
        .block_on(nullworker_queue::open(&parsed, OpenMode::Create))
        .expect("open the queue");
    for payload in [b"one", b"two"] {
        rt.block_on(queue.push(payload)).expect("push");
    }

    let mut cmd = nullworker();
    cmd.args([
        "dispatch",
        "--endpoint",
        &ep.name,
        "--queue",
        &url,
        "--json",
    ])
    .args(["--api-key", &engine.account_key])
    .args([
        "--autoscaler-url",
        &engine.url,
        "--webserver-url",
        &engine.url,
    ])
    .args(["--metrics-listen", "127.0.0.1:0"])
    .env("RUST_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = ChildGuard::spawn(cmd);
    let rx = child.stdout_lines();
    let mut events = Vec::new();
    read_until(&rx, &mut events, "two held sessions", |e| {
        count(e, "session_held") == 2
    });
    assert_eq!(events[0]["event"], "started");
    let metrics_url = events[0]["metrics_url"]
        .as_str()
        .expect("metrics_url")
        .to_owned();
    let opened: u64 = events
        .iter()
        .filter(|e| e["event"] == "decision")
        .map(|e| e["to_open"].as_u64().unwrap())
        .sum();
    assert_eq!(opened, 2, "one session per job: {events:#?}");

    let metrics = reqwest::blocking::get(&metrics_url)
        .and_then(|r| r.text())
        .expect("GET /metrics");
    assert!(
        metrics.contains("nullworker_dispatch_sessions{state=\"held\"} 2"),
        "{metrics}"
    );

    // The dispatcher reports its counts to the engine, whose dashboard
    // stream shows them in the endpoint's samples.
    let ui = engine.ui_url.as_deref().expect("the dashboard's URL");
    let stream = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{ui}events"))
        .bearer_auth(&engine.account_key)
        .send()
        .expect("GET /ui/events");
    let dispatch = std::io::BufRead::lines(std::io::BufReader::new(stream))
        .map_while(Result::ok)
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_owned))
        .filter_map(|data| serde_json::from_str::<Value>(&data).ok())
        .find(|e| {
            e["type"] == "sample" && e["endpoint"] == ep.name.as_str() && e["dispatch"]["held"] == 2
        })
        .expect("a sample with the dispatcher's counts");
    let d = &dispatch["dispatch"];
    assert_eq!(
        d["backlog"].as_u64().unwrap() + d["in_flight"].as_u64().unwrap(),
        2,
        "{dispatch}"
    );

    // The consumers' part: take both jobs and acknowledge them.
    for _ in 0..2 {
        let job = rt
            .block_on(queue.claim("smoke-consumer", Duration::from_secs(5)))
            .expect("claim")
            .expect("a job");
        rt.block_on(queue.ack(&job)).expect("ack");
    }
    child.signal(libc::SIGTERM);
    read_until(&rx, &mut events, "the drain", |e| count(e, "drained") == 1);
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "{events:#?}");
    assert_eq!(count(&events, "shutdown"), 1);
    let ended: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "session_ended")
        .collect();
    assert_eq!(ended.len(), 2, "{events:#?}");
    assert!(ended.iter().all(|e| e["how"] == "closed"), "{ended:#?}");
    assert_eq!(
        count(&events, "session_held"),
        2,
        "no session beyond the two jobs"
    );
}
