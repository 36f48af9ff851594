//! The example consumers of `examples/consumers/` as a user runs them: each
//! is the `consumer_command` of a real engine's workers, a real Redis holds
//! the jobs (pushed with plain `redis-cli LPUSH`), and the real
//! `nullworker dispatch` opens one session per job. Every job is done once,
//! the queue's lists end empty, each worker was made ready by its example's
//! own health endpoint, and the dispatcher drains cleanly on SIGTERM.
//!
//! The Python example runs on `NULLWORKER_PYTHON` (set by scripts/test.sh),
//! else `<repo>/.venv/bin/python`; it needs `redis` (scripts/setup-python.sh
//! installs it). The shell example needs redis-cli, curl and socat. A missing
//! one fails the test with the install hint.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nullworker_queue::testing::find_binary;
use serde_json::{json, Value};

use crate::common::engine::EngineGuard;
use crate::common::process::{nullworker, wait_for, ChildGuard};

/// How long the jobs may take, cold starts of three workers included.
const LONG: Duration = Duration::from_secs(120);

/// The payloads: seconds each job sleeps. Distinct, so each completion line
/// names its job; long enough that the three jobs overlap.
const JOBS: [&str; 3] = ["0.5", "0.75", "1"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/consumers")
}

/// `s` quoted for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The Python that runs the example: `NULLWORKER_PYTHON`, else the
/// repository's `.venv`; it must import `redis`.
fn python() -> PathBuf {
    let exe = std::env::var_os("NULLWORKER_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
            venv.exists().then_some(venv)
        })
        .unwrap_or_else(|| {
            panic!(
                "no Python for examples/consumers/python: NULLWORKER_PYTHON is unset and \
                 .venv/bin/python does not exist; run scripts/setup-python.sh \
                 (or scripts/test.sh, which sets NULLWORKER_PYTHON)"
            )
        });
    let output = Command::new(&exe)
        .args(["-c", "import redis"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(
        output.status.success(),
        "{} cannot import redis ({}); run scripts/setup-python.sh, which installs \
         scripts/python-requirements.txt",
        exe.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    exe
}

/// Runs `redis-cli` against the test server; returns its stdout.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let cli = find_binary("redis-cli", "redis-tools").unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(
        output.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Non-empty lines of `text`.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Runs the jobs of [`JOBS`] through the example started by
/// `consumer_command` and checks the outcome.
fn run_example(name: &str, consumer_command: String) {
    let redis = nullworker_queue::testing::redis().unwrap_or_else(|e| panic!("{e}"));
    let port = redis.addr().port();
    let queue_url = format!("{}?list=jobs", redis.url("redis"));
    let engine = EngineGuard::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let done_file = tmp.path().join("done.txt");
    let ep = engine.create_seed_endpoint(
        name,
        json!({
            "max_workers": 3,
            "consumer_command": consumer_command,
            "consumer_health_path": "/health",
            "worker_env": {
                "REDIS_URL": redis.url("redis"),
                "QUEUE": "jobs",
                "EXAMPLE_DONE_FILE": done_file.display().to_string(),
            },
        }),
    );

    let mut push = vec!["LPUSH", "jobs"];
    push.extend(JOBS);
    assert_eq!(redis_cli(port, &push).trim(), JOBS.len().to_string());

    let mut cmd = nullworker();
    cmd.args(["dispatch", "--endpoint", &ep.name, "--queue", &queue_url])
        .args(["--api-key", &engine.account_key])
        .args([
            "--autoscaler-url",
            &engine.url,
            "--webserver-url",
            &engine.url,
        ])
        .arg("--json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut dispatch = ChildGuard::spawn(cmd);
    let events = dispatch.stdout_lines();

    // Every job completes.
    let read_done = || std::fs::read_to_string(&done_file).unwrap_or_default();
    wait_for("a completion line per job", LONG, || {
        (lines(&read_done()).len() >= JOBS.len()).then_some(())
    });
    // Nothing left waiting, held or counted: the jobs were acknowledged.
    wait_for("the queue's lists to empty", LONG, || {
        let left = redis_cli(port, &["LLEN", "jobs"]);
        let processing = redis_cli(port, &["KEYS", "jobs:processing:*"]);
        let attempts = redis_cli(port, &["HLEN", "jobs:attempts"]);
        (left.trim() == "0" && lines(&processing).is_empty() && attempts.trim() == "0")
            .then_some(())
    });
    assert_eq!(redis_cli(port, &["LLEN", "jobs:dead"]).trim(), "0");

    // The dispatcher drains: each consumer released its worker after its job.
    dispatch.signal(libc::SIGTERM);
    let status = dispatch
        .wait_timeout(LONG)
        .expect("dispatch exits after the drain");
    assert_eq!(status.code(), Some(0), "dispatch exit status");
    // The dispatcher counted the example's claimed jobs as in flight: the
    // example keeps nullworker's key layout.
    let in_flight: Vec<u64> = events
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|e| e["event"] == "stats")
        .filter_map(|e| e["in_flight"].as_u64())
        .collect();
    let peak = in_flight.iter().copied().max().unwrap_or(0);
    assert!(
        (1..=JOBS.len() as u64).contains(&peak),
        "in-flight counts the dispatcher read: {in_flight:?}"
    );

    // Exactly once each: the queue is empty, so no completion can follow.
    let done = read_done();
    let mut seen = lines(&done);
    seen.sort_unstable();
    let mut expected: Vec<String> = JOBS.iter().map(|j| format!("{j} done")).collect();
    expected.sort_unstable();
    assert_eq!(seen, expected, "completion lines:\n{done}");

    // Each worker whose consumer did a job was made ready by the example's
    // health endpoint (BACKEND_HEALTH_URL = its NULL_CONSUMER_PORT + /health).
    let workers = engine.state_dir.join("workers");
    let mut jobs_done = 0;
    for entry in std::fs::read_dir(&workers).expect("workers directory") {
        let dir = entry.expect("entry").path();
        let consumer_log = std::fs::read_to_string(dir.join("consumer.log")).unwrap_or_default();
        let here = consumer_log
            .lines()
            .filter(|l| JOBS.iter().any(|j| l.ends_with(&format!(": job {j} done"))))
            .count();
        if here == 0 {
            continue;
        }
        jobs_done += here;
        let worker_log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
        let passed = worker_log
            .lines()
            .any(|l| l.contains("consumer health check passed") && l.contains("/health"));
        assert!(
            passed,
            "{}: no passed health check of the consumer's /health\nworker log:\n{worker_log}\n\
             consumer log:\n{consumer_log}",
            dir.display()
        );
    }
    assert_eq!(jobs_done, JOBS.len(), "jobs done per the consumers' logs");
}

#[test]
fn python_example_consumer_does_each_job_once_beside_real_workers() {
    let python = python();
    let script = examples_dir().join("python/consumer.py");
    let command = format!(
        "exec {} {}",
        sh_quote(&python.display().to_string()),
        sh_quote(&script.display().to_string())
    );
    run_example("example-python", command);
}

#[test]
fn shell_example_consumer_does_each_job_once_beside_real_workers() {
    for (binary, package) in [
        ("redis-cli", "redis-tools"),
        ("curl", "curl"),
        ("socat", "socat"),
    ] {
        find_binary(binary, package).unwrap_or_else(|e| panic!("the shell example: {e}"));
    }
    let script = examples_dir().join("shell/consumer.sh");
    let command = format!("exec bash {}", sh_quote(&script.display().to_string()));
    run_example("example-shell", command);
}
