//! What users read: log lines without colour codes when they do not go to
//! a terminal (the engine's piped stderr, each worker's `worker.log`),
//! `--log-format json` lines that parse, inherited by the engine's workers,
//! and the consumer's release snippet that the README documents, run as
//! written beside a worker of the local engine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nullworker_queue::testing::find_binary;
use serde_json::{json, Value};

use crate::common::engine::{EngineGuard, TestEndpoint};
use crate::common::process::{nullworker, wait_for, ChildGuard};

const LONG: Duration = Duration::from_secs(60);
const ESC: u8 = 0x1b;

/// An engine whose stderr goes to `<tmp>/engine.stderr`, with extra flags.
fn engine_with_stderr_file(tmp: &Path, args: &[&str]) -> (EngineGuard, PathBuf) {
    let stderr_path = tmp.join("engine.stderr");
    let file = std::fs::File::create(&stderr_path).expect("create the stderr file");
    let mut all = vec!["--account-key", crate::common::engine::ACCOUNT_KEY];
    all.extend_from_slice(args);
    let engine = EngineGuard::start_with_stderr(&tmp.join("state"), &all, Stdio::from(file));
    (engine, stderr_path)
}

/// Starts a worker of `ep` and waits until it is ready; returns its
/// `worker.log` path.
fn ready_worker_log(engine: &EngineGuard, ep: &TestEndpoint) -> PathBuf {
    engine.route_until_ready(ep, LONG);
    let workers = engine.workers_detail(ep);
    let id = workers[0]["id"].as_i64().expect("worker id");
    let log = engine.state_dir.join(format!("workers/{id}/worker.log"));
    // The worker logs that it is ready once it has reported.
    wait_for("the worker's log", LONG, || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().filter(|l| !l.starts_with("--- ")).count() >= 2).then_some(())
    });
    log
}

/// Stops the engine with SIGINT (it stops its workers) and returns what it
/// wrote on stderr.
fn stop_and_read(mut engine: EngineGuard, stderr: &Path) -> Vec<u8> {
    let status = engine.stop_with(libc::SIGINT).expect("engine exited");
    assert!(status.success(), "engine exit: {status:?}");
    std::fs::read(stderr).expect("read the engine's stderr")
}

fn has_esc(bytes: &[u8]) -> bool {
    bytes.contains(&ESC)
}

#[test]
fn piped_engine_and_worker_logs_have_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, stderr) = engine_with_stderr_file(tmp.path(), &["--ui-listen", "off"]);
    let ep = engine.create_seed_endpoint("plain", json!({}));
    let log = ready_worker_log(&engine, &ep);
    let engine_err = stop_and_read(engine, &stderr);
    let worker_log = std::fs::read(&log).unwrap();

    let engine_text = String::from_utf8_lossy(&engine_err);
    assert!(
        engine_text.contains("INFO") && engine_text.contains("engine listening"),
        "the engine logged nothing at info: {engine_text}"
    );
    assert!(
        !has_esc(&engine_err),
        "ESC in the engine's stderr: {engine_text:?}"
    );
    let worker_text = String::from_utf8_lossy(&worker_log);
    assert!(
        worker_text.contains("INFO"),
        "the worker logged nothing: {worker_text}"
    );
    assert!(!has_esc(&worker_log), "ESC in worker.log: {worker_text:?}");
}

/// Every line that is not the supervisor's own `--- ` marker is a JSON
/// object with a `level` and a `message`; returns how many there were.
fn assert_json_lines(what: &str, text: &str) -> usize {
    let mut count = 0;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("--- "))
    {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line:?}"));
        assert!(
            value["level"].is_string() && value["message"].is_string(),
            "{what}: no level or message: {line}"
        );
        count += 1;
    }
    count
}

#[test]
fn log_format_json_reaches_the_engine_and_its_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, stderr) =
        engine_with_stderr_file(tmp.path(), &["--ui-listen", "off", "--log-format", "json"]);
    let ep = engine.create_seed_endpoint("json-logs", json!({}));
    let log = ready_worker_log(&engine, &ep);
    let engine_err = String::from_utf8(stop_and_read(engine, &stderr)).unwrap();
    let worker_log = std::fs::read_to_string(&log).unwrap();

    assert!(
        assert_json_lines("engine stderr", &engine_err) >= 2,
        "{engine_err}"
    );
    assert!(
        engine_err.contains("\"message\":\"engine listening\""),
        "{engine_err}"
    );
    assert!(
        assert_json_lines("worker.log", &worker_log) >= 1,
        "{worker_log}"
    );
}

#[test]
fn serve_log_format_json_and_no_colour_on_a_pipe() {
    // A configuration error after a log line: stderr carries both.
    let out = nullworker()
        .args(["--log-format", "json", "serve", "--worker-port", "x"])
        .env("RUST_LOG", "info")
        .output()
        .expect("run nullworker serve");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !has_esc(&out.stderr),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nullworker()
        .args(["--log-format", "xml", "serve"])
        .output()
        .expect("run nullworker serve");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--log-format") && stderr.contains("xml"),
        "{stderr}"
    );
}

/// The consumer snippet of the README, as written there.
fn documented_release_snippet() -> String {
    const SNIPPET: &str = "curl -X POST http://127.0.0.1:${NULL_CONTROL_PORT:-18999}/release";
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&readme).expect("read README.md");
    assert!(
        text.contains(SNIPPET),
        "README.md no longer documents `{SNIPPET}`; keep this test and the README in step"
    );
    SNIPPET.to_owned()
}

#[test]
fn the_documented_release_snippet_works_beside_a_local_engine_worker() {
    let curl = find_binary("curl", "curl").unwrap_or_else(|e| panic!("{e}"));
    let snippet = documented_release_snippet();
    // The consumer: wait until its worker holds a session, then release it
    // with exactly the documented line (curl found where the test found it).
    let consumer = format!(
        "PATH={dir}:$PATH; \
         until curl -fsS \"http://127.0.0.1:${{NULL_CONTROL_PORT:-18999}}/session?wait=5\" \
         | grep -q '\"held\":true'; do sleep 0.1; done; \
         echo released-by-snippet; {snippet}; echo; exec sleep 600",
        dir = curl.parent().expect("curl's directory").display(),
    );
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("snippet", json!({"consumer_command": consumer}));
    let url = engine.url.clone();
    let mut client = nullworker();
    client
        .arg("client")
        .args(["--endpoint", &ep.name, "--api-key", &engine.account_key])
        .args(["--autoscaler-url", &url, "--webserver-url", &url])
        .args(["--count", "1", "--hold", "120", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = ChildGuard::spawn(client);
    // Held for 120 s unless the worker side releases it: the snippet did.
    let status = client
        .wait_timeout(Duration::from_secs(90))
        .expect("the session was not released by the documented snippet within 90 s");
    let workers = engine.workers_detail(&ep);
    let id = workers[0]["id"].as_i64().expect("worker id");
    let consumer_log = engine.state_dir.join(format!("workers/{id}/consumer.log"));
    let log = std::fs::read_to_string(&consumer_log).unwrap_or_default();
    assert!(
        status.success(),
        "client exit {status:?}; consumer log: {log}"
    );
    assert!(
        log.contains("released-by-snippet") && log.contains("\"released\":true"),
        "the snippet did not release the session: {log}"
    );
}

/// `nullworker engine key` prints the generated key again, beside the
/// running engine, and says why when there is none.
#[test]
fn engine_key_prints_the_generated_account_key_again() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let key_of = |dir: &Path| {
        nullworker()
            .args(["engine", "key", "--state-dir"])
            .arg(dir)
            .output()
            .expect("run nullworker engine key")
    };
    let none = key_of(&state);
    assert_eq!(none.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");

    let engine = EngineGuard::start_in(&state, &["--ui-listen", "off"]);
    assert!(
        engine.stdout[0].contains("nullworker engine key"),
        "the first-start line should say how to see the key again: {:?}",
        engine.stdout
    );
    let out = key_of(&state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        engine.account_key
    );
    assert!(!engine.account_key.is_empty());
    // The same through NULLWORKER_STATE_DIR.
    let out = nullworker()
        .args(["engine", "key"])
        .env("NULLWORKER_STATE_DIR", &state)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        engine.account_key
    );
}

/// A port in use is one line naming the flag and the address; exit 1.
#[test]
fn a_port_in_use_is_named_by_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (vec!["--listen", addr.as_str()], "--listen"),
        (
            vec!["--listen", "127.0.0.1:0", "--ui-listen", addr.as_str()],
            "--ui-listen",
        ),
    ] {
        let out = nullworker()
            .arg("engine")
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains(flag)
                && lines[0].contains(&addr)
                && lines[0].contains("address already in use")
                && lines[0].matches("in use").count() == 1,
            "{stderr}"
        );
    }
}

/// `release` takes ports 1 to 65535 only.
#[test]
fn release_refuses_port_0() {
    let out = nullworker()
        .args(["release", "--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--port") && stderr.contains('0'),
        "{stderr}"
    );
}

/// The completion script and the man page come out of the binary.
#[test]
fn completions_and_man_page_are_printed() {
    let bash = nullworker().args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("complete -F") && script.contains("serve"),
        "{script}"
    );
    let man = nullworker().arg("man").output().unwrap();
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH nullworker 1"));
}

/// A command that prints data ends quietly when its reader goes away, as
/// with `nullworker man | head -1`: no error line, no panic, no failure code.
#[test]
fn a_printing_command_ends_quietly_when_its_pipe_closes() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = nullworker()
        .arg("man")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader closes before (or while) the page is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        out.status
    );
}

/// The documented `max_workers` limit is the one the engine enforces.
#[test]
fn the_documented_max_workers_limit_is_the_engines() {
    let limit = nullworker_engine::policy::MAX_WORKERS_LIMIT;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let policy = std::fs::read_to_string(docs.join("engine-policy.md")).unwrap();
    let spaced = format!("{} {:03}", limit / 1000, limit % 1000);
    assert!(
        policy.contains(&format!(
            "| `max_workers` | 20 | 20 | integer 1 … {spaced} |"
        )),
        "docs/engine-policy.md does not give max_workers 1 … {spaced}"
    );
    let engine_doc = std::fs::read_to_string(docs.join("engine.md")).unwrap();
    assert!(
        engine_doc.contains(&format!("`max_workers` 1..{limit}")),
        "docs/engine.md does not give max_workers 1..{limit}"
    );

    let engine = EngineGuard::start();
    let ok = engine.create_seed_endpoint("big", json!({"max_workers": limit}));
    assert!(ok.id > 0);
    let (status, body) = engine.api(
        reqwest::Method::POST,
        "/api/v0/endptjobs/",
        Some(json!({"endpoint_name": "too-big", "max_workers": limit + 1})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("max_workers"), "{body}");
}
