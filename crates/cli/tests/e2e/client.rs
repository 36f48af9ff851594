//! End-to-end tests of `nullworker client` and `nullworker demo` with the
//! real engine and worker binaries: counts, intervals and holds; every
//! session closed at the end; SIGINT and SIGKILL; leases longer than the
//! lifetime; releases from the worker side; `--json`; error exits.

use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::engine::{EngineGuard, TestEndpoint};
use crate::common::process::{nullworker, wait_for, ChildGuard};

/// `nullworker client --json` on endpoint `ep` of the engine at `url`, as `account_key`.
fn client_as(url: &str, account_key: &str, ep: &TestEndpoint, args: &[&str]) -> Command {
    let mut cmd = nullworker();
    cmd.arg("client")
        .args(["--endpoint", &ep.name, "--api-key", account_key])
        .args(["--autoscaler-url", url, "--webserver-url", url])
        .arg("--json")
        .args(args);
    cmd
}

/// `nullworker client --json` against `engine`'s endpoint `ep`.
fn client(engine: &EngineGuard, ep: &TestEndpoint, args: &[&str]) -> Command {
    client_as(&engine.url, &engine.account_key, ep, args)
}

/// A running client whose stdout lines arrive on a channel.
struct RunningClient {
    child: ChildGuard,
    lines: Receiver<String>,
    seen: Vec<Value>,
}

impl RunningClient {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(cmd);
        let rx = child.stdout_lines();
        Self {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the first JSON event matching `pred` (every line must parse).
    fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; saw {:?}",
                    self.seen
                )
            });
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("--json line {line:?}: {e}"));
            self.seen.push(value.clone());
            if pred(&value) {
                return value;
            }
        }
    }

    /// Waits for exit; returns the exit code and every event.
    fn finish(&mut self, timeout: Duration) -> (i32, Vec<Value>) {
        let status = self
            .child
            .wait_timeout(timeout)
            .expect("client exited in time");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("--json line {line:?}: {e}")),
            );
        }
        (status.code().unwrap_or(-1), self.seen.clone())
    }
}

fn events<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| v["event"] == name).collect()
}

/// Total `cur_load` the engine sees on the endpoint's workers.
fn load(engine: &EngineGuard, ep: &TestEndpoint) -> f64 {
    engine
        .workers(ep)
        .iter()
        .map(|w| w["cur_load"].as_f64().unwrap_or(0.0))
        .sum()
}

/// Runs a command to completion; returns exit code and stderr.
fn run_to_end(mut cmd: Command) -> (i32, String) {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_opens_count_sessions_interval_apart_holds_and_closes_them() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-basic", json!({}));
    let mut run = RunningClient::spawn(client(
        &engine,
        &ep,
        &["--count", "2", "--interval", "2", "--hold", "3"],
    ));
    let (code, all) = run.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{all:#?}");

    let routing = events(&all, "routing");
    assert_eq!(routing.len(), 2);
    let gap = routing[1]["t"].as_f64().unwrap() - routing[0]["t"].as_f64().unwrap();
    assert!(gap >= 1.9, "second session started {gap} s after the first");
    let held = events(&all, "held");
    assert_eq!(held.len(), 2, "{all:#?}");
    let ended = events(&all, "ended");
    assert_eq!(ended.len(), 2);
    // Sessions held at the same time are on different workers (max_sessions = 1).
    let first_end = ended.iter().find(|e| e["session"] == 1).unwrap()["t"]
        .as_f64()
        .unwrap();
    if held[1]["t"].as_f64().unwrap() < first_end {
        assert_ne!(
            held[0]["worker_url"], held[1]["worker_url"],
            "one session per worker"
        );
    }
    for e in &ended {
        assert_eq!(e["how"], "closed", "{e}");
        assert!(e["held_secs"].as_f64().unwrap() >= 3.0, "{e}");
    }
    let summary = events(&all, "summary");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["exit_code"], 0);
    assert_eq!(summary[0]["sessions"].as_array().unwrap().len(), 2);
    // Every session was closed: the engine sees no load.
    wait_for("zero load on the endpoint", Duration::from_secs(15), || {
        (load(&engine, &ep) == 0.0).then_some(())
    });
}

#[test]
fn sigint_mid_hold_closes_every_session_at_once() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-sigint", json!({}));
    let mut run = RunningClient::spawn(client(
        &engine,
        &ep,
        &["--count", "2", "--interval", "0", "--hold", "600"],
    ));
    for n in [1, 2] {
        run.wait_event("two held sessions", Duration::from_secs(60), |v| {
            v["event"] == "held" && v["session"] == n
        });
    }
    wait_for(
        "the engine to see both sessions",
        Duration::from_secs(15),
        || (load(&engine, &ep) >= 200.0).then_some(()),
    );
    run.child.signal(libc::SIGINT);
    let (code, all) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 130, "{all:#?}");
    let ended = events(&all, "ended");
    assert_eq!(ended.len(), 2, "{all:#?}");
    assert!(ended.iter().all(|e| e["how"] == "interrupted"), "{ended:?}");
    // Freed at once: far sooner than the 60 s lifetime.
    wait_for("zero load after SIGINT", Duration::from_secs(10), || {
        (load(&engine, &ep) == 0.0).then_some(())
    });
}

#[test]
fn a_killed_client_frees_its_worker_within_one_lifetime() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-sigkill", json!({}));
    let lifetime = 8.0;
    let mut run = RunningClient::spawn(client(&engine, &ep, &["--hold", "600", "--lifetime", "8"]));
    run.wait_event("a held session", Duration::from_secs(60), |v| {
        v["event"] == "held"
    });
    wait_for(
        "the engine to see the session",
        Duration::from_secs(15),
        || (load(&engine, &ep) >= 100.0).then_some(()),
    );
    run.child.signal(libc::SIGKILL);
    let killed = Instant::now();
    // Within one lifetime (the lease keeps the worker-side expiration at
    // most ¾ of it ahead; the worker expires on time and reports at once),
    // plus slack for a loaded machine.
    wait_for(
        "the session to expire",
        Duration::from_secs_f64(lifetime + 3.0),
        || (load(&engine, &ep) == 0.0).then_some(()),
    );
    eprintln!(
        "freed {:.1} s after SIGKILL (lifetime {lifetime} s)",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_hold_longer_than_the_lifetime_stays_held() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-lease", json!({}));
    let mut run = RunningClient::spawn(client(&engine, &ep, &["--hold", "12", "--lifetime", "4"]));
    let (code, all) = run.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{all:#?}");
    let ended = events(&all, "ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["how"], "closed", "{all:#?}");
    assert!(ended[0]["held_secs"].as_f64().unwrap() >= 12.0);
}

#[test]
fn a_release_on_the_instance_is_shown_as_released_by_worker() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-release", json!({}));
    let mut run = RunningClient::spawn(client(
        &engine,
        &ep,
        &["--hold", "120", "--check-interval", "1"],
    ));
    let held = run.wait_event("a held session", Duration::from_secs(60), |v| {
        v["event"] == "held"
    });
    let worker_url = held["worker_url"].as_str().unwrap().to_owned();
    // The engine lists each worker's control port (NULL_CONTROL_PORT).
    let control_port = engine
        .workers_detail(&ep)
        .into_iter()
        .find(|w| w["url"] == worker_url.as_str())
        .and_then(|w| w["control_port"].as_u64())
        .unwrap_or_else(|| panic!("no control port listed for {worker_url}"));
    let answer: Value = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{control_port}/release"))
        .send()
        .expect("release")
        .json()
        .expect("json");
    assert_eq!(answer["released"], true, "{answer}");
    let ended = run.wait_event("the end", Duration::from_secs(15), |v| {
        v["event"] == "ended"
    });
    assert_eq!(ended["how"], "released_by_worker", "{ended}");
    let (code, all) = run.finish(Duration::from_secs(15));
    assert_eq!(code, 0, "released by the worker is not a failure: {all:#?}");
}

#[test]
fn bad_input_and_failures_exit_non_zero_with_one_clear_line() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-errors", json!({}));

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--hold", "-5"], 2, "--hold -5 is invalid"),
        (vec!["--count", "0"], 2, "--count 0 is invalid"),
        (vec!["--interval", "nan"], 2, "--interval NaN is invalid"),
    ];
    for (args, want, needle) in cases {
        let (code, stderr) = run_to_end(client(&engine, &ep, &args));
        assert_eq!(code, want, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }

    let unknown = TestEndpoint {
        name: "no-such-endpoint".into(),
        ..ep.clone()
    };
    let (code, stderr) = run_to_end(client(&engine, &unknown, &["--hold", "1"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("\"no-such-endpoint\" not found"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let (code, stderr) = run_to_end(client_as(&engine.url, "wrong-key", &ep, &["--hold", "1"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("api key was rejected"), "{stderr}");
}

#[test]
fn an_unreachable_engine_is_reported_at_once_and_given_up_on_after_the_documented_time() {
    let dead = format!("http://127.0.0.1:{}", crate::common::process::free_port());
    let mut cmd = nullworker();
    cmd.args([
        "client",
        "--endpoint",
        "x",
        "--api-key",
        "k",
        "--autoscaler-url",
        &dead,
        "--webserver-url",
        &dead,
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = ChildGuard::spawn(cmd);
    let stderr = child.child.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let (first_at, first) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a line on stderr");
    let first_after = first_at - started;
    eprintln!(
        "first message {:.2} s after start: {first}",
        first_after.as_secs_f64()
    );
    // The first attempt fails at once (connection refused); the message
    // comes before the first retry, not after the last.
    assert!(
        first_after < Duration::from_secs(3),
        "{first_after:?}: {first}"
    );
    assert!(
        first.contains(&dead) && first.contains("retrying"),
        "{first}"
    );
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("gave up within 30 s");
    let gave_up = started.elapsed();
    let lines: Vec<String> = rx.try_iter().map(|(_, l)| l).collect();
    assert_eq!(status.code(), Some(1), "{lines:?}");
    let last = lines.last().expect("a final error line");
    assert!(
        last.contains("cannot reach") && last.contains(&dead),
        "{last}"
    );
    // Documented: 5 attempts, giving up 12 to 16 s after the first.
    eprintln!("gave up after {:.1} s", gave_up.as_secs_f64());
    assert!(
        gave_up >= Duration::from_secs(12) && gave_up < Duration::from_secs(20),
        "{gave_up:?}"
    );
}

#[test]
fn an_engine_that_never_produces_a_worker_fails_after_the_timeout() {
    let engine = EngineGuard::start();
    // Workers that never become ready.
    let ep =
        engine.create_seed_endpoint("client-never", json!({ "worker_command": "sleep 100000" }));
    let started = Instant::now();
    let mut run = RunningClient::spawn(client(&engine, &ep, &["--hold", "5", "--timeout", "3"]));
    let (code, all) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 1, "{all:#?}");
    let failed = events(&all, "failed");
    assert_eq!(failed.len(), 1, "{all:#?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("gave up after"),
        "{all:#?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[test]
fn demo_runs_the_whole_system_and_exits_zero() {
    let mut cmd = nullworker();
    cmd.args([
        "demo",
        "--count",
        "3",
        "--interval",
        "2",
        "--hold",
        "6",
        "--release-after",
        "3",
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let status = child
        .wait_timeout(Duration::from_secs(120))
        .expect("demo finished within 120 s");
    let mut out = String::new();
    std::io::Read::read_to_string(
        child.child.as_mut().unwrap().stdout.as_mut().unwrap(),
        &mut out,
    )
    .unwrap();
    assert!(status.success(), "demo failed: {out}");
    assert!(out.contains("released by worker after"), "{out}");
    assert!(out.contains("0 → 1 → 2 → 3"), "{out}");
    assert!(out.contains("done: scaled 0 → 3 → 0 workers"), "{out}");
}

/// A client holding one session with `--check-interval 1`; returns it, the
/// `held` event and when (test clock) its line arrived.
fn held_session(
    engine: &EngineGuard,
    ep: &TestEndpoint,
    extra: &[&str],
) -> (RunningClient, Value, Instant) {
    let mut args = vec!["--check-interval", "1"];
    if !extra.contains(&"--hold") {
        args.extend(["--hold", "30"]);
    }
    args.extend_from_slice(extra);
    let mut run = RunningClient::spawn(client(engine, ep, &args));
    let held = run.wait_event("a held session", Duration::from_secs(60), |v| {
        v["event"] == "held"
    });
    (run, held, Instant::now())
}

/// The pid of the worker at `url`.
fn worker_pid(engine: &EngineGuard, ep: &TestEndpoint, url: &str) -> i32 {
    engine
        .workers_detail(ep)
        .into_iter()
        .find(|w| w["url"] == url)
        .and_then(|w| w["pid"].as_i64())
        .unwrap_or_else(|| panic!("no pid listed for {url}")) as i32
}

/// Seconds (client clock) from the loss to the `ended` event: the loss
/// happened `lag` after the `held` line arrived, so no later than
/// `held.t + lag` on the client's clock (the line arrives after its `t`).
fn noticed_after(held: &Value, lag: Duration, ended: &Value) -> f64 {
    ended["t"].as_f64().unwrap() - (held["t"].as_f64().unwrap() + lag.as_secs_f64())
}

#[test]
fn deleting_the_endpoint_mid_hold_is_reported_within_three_check_intervals() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-delete", json!({}));
    let (mut run, held, arrived) = held_session(&engine, &ep, &[]);
    let (status, v) = engine.api(
        reqwest::Method::DELETE,
        &format!("/api/v0/endptjobs/{}/", ep.id),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let lag = arrived.elapsed();
    let ended = run.wait_event("the loss", Duration::from_secs(30), |v| {
        v["event"] == "ended"
    });
    let after = noticed_after(&held, lag, &ended);
    eprintln!("endpoint deletion noticed {after:.2} s after it (check interval 1 s)");
    assert!(
        after <= 3.0,
        "noticed {after} s after the deletion: {ended}"
    );
    assert_eq!(ended["how"], "worker_lost", "{ended}");
    assert_eq!(ended["cause"], "endpoint_deleted", "{ended}");
    let (code, all) = run.finish(Duration::from_secs(15));
    assert_eq!(code, 1, "{all:#?}");
    assert!(
        events(&all, "replacing").is_empty(),
        "nothing can replace a deleted endpoint's worker: {all:#?}"
    );
}

#[test]
fn a_killed_worker_is_noticed_and_a_replacement_reserved() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-killed-worker", json!({}));
    let (mut run, held, arrived) = held_session(&engine, &ep, &["--hold", "12"]);
    let url = held["worker_url"].as_str().unwrap().to_owned();
    // SAFETY: kill(2) on a worker process this test's engine started.
    assert_eq!(
        unsafe { libc::kill(worker_pid(&engine, &ep, &url), libc::SIGKILL) },
        0
    );
    let lag = arrived.elapsed();
    let ended = run.wait_event("the loss", Duration::from_secs(30), |v| {
        v["event"] == "ended"
    });
    let after = noticed_after(&held, lag, &ended);
    eprintln!("SIGKILLed worker noticed {after:.2} s after the kill (check interval 1 s)");
    assert!(after <= 3.0, "noticed {after} s after the kill: {ended}");
    assert_eq!(ended["how"], "worker_lost", "{ended}");
    assert!(ended["cause"].is_string(), "{ended}");
    run.wait_event("a replacement", Duration::from_secs(5), |v| {
        v["event"] == "replacing" && v["session"] == 1
    });
    let second = run.wait_event("the replacement held", Duration::from_secs(60), |v| {
        v["event"] == "held" && v["worker_url"] != url.as_str()
    });
    assert_ne!(second["session_id"], held["session_id"]);
    let (code, all) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "the hold was completed on a replacement: {all:#?}");
    let summary = &events(&all, "summary")[0]["sessions"][0];
    assert_eq!(summary["outcome"], "closed", "{summary}");
    assert_eq!(summary["replacements"], 1, "{summary}");
}

#[test]
fn a_worker_that_stops_answering_is_lost_within_three_check_intervals() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-silent-worker", json!({}));
    let (mut run, held, arrived) = held_session(&engine, &ep, &["--no-replace"]);
    let url = held["worker_url"].as_str().unwrap().to_owned();
    let pid = worker_pid(&engine, &ep, &url);
    // A stopped process keeps its listening socket: connections are
    // accepted by the kernel and never answered, as with a vanished host.
    // SAFETY: kill(2) on a worker process this test's engine started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let lag = arrived.elapsed();
    let ended = run.wait_event("the loss", Duration::from_secs(30), |v| {
        v["event"] == "ended"
    });
    // SAFETY: as above; lets the engine stop it normally.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let after = noticed_after(&held, lag, &ended);
    eprintln!("silent worker noticed {after:.2} s after it stopped (check interval 1 s)");
    assert!(
        after <= 3.0,
        "noticed {after} s after it stopped answering: {ended}"
    );
    assert_eq!(ended["how"], "worker_lost", "{ended}");
    assert_eq!(ended["cause"], "worker_unreachable", "{ended}");
    let (code, all) = run.finish(Duration::from_secs(15));
    assert_eq!(code, 1, "--no-replace: the loss fails the run: {all:#?}");
    assert!(events(&all, "replacing").is_empty(), "{all:#?}");
}

#[test]
fn a_client_waiting_behind_max_workers_is_told_why() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("client-capped", json!({ "max_workers": 1 }));
    let (mut holder, held, _) = held_session(&engine, &ep, &["--hold", "120"]);
    wait_for(
        "the engine to see the session",
        Duration::from_secs(15),
        || (load(&engine, &ep) >= 100.0).then_some(()),
    );
    let mut waiter =
        RunningClient::spawn(client(&engine, &ep, &["--hold", "1", "--timeout", "60"]));
    let waiting = waiter.wait_event(
        "a waiting line naming max_workers",
        Duration::from_secs(30),
        |v| {
            v["event"] == "waiting"
                && v["status"]
                    .as_str()
                    .is_some_and(|s| s.contains("max_workers reached (1 of 1 busy)"))
        },
    );
    eprintln!("while the only worker is held: {waiting}");
    assert!(
        events(&waiter.seen, "held").is_empty(),
        "the waiting client got a worker: {:?}",
        waiter.seen
    );
    assert_eq!(engine.workers(&ep).len(), 1, "max_workers 1");
    waiter.child.signal(libc::SIGINT);
    let (code, all) = waiter.finish(Duration::from_secs(30));
    assert_eq!(code, 130, "{all:#?}");
    holder.child.signal(libc::SIGINT);
    let (code, all) = holder.finish(Duration::from_secs(30));
    assert_eq!(code, 130, "{all:#?}");
    assert_eq!(events(&all, "held")[0]["session_id"], held["session_id"]);
}
