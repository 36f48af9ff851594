//! Interop with the official Python SDK and worker framework (`vastai` 1.9.1).
//!
//! * The framework's own signature check accepts what our protocol crate
//!   signs, and rejects tampered or foreign signatures.
//! * The SDK opens, checks and closes a session straight on `nullworker serve`
//!   through its debug shortcut (`VAST_DEBUG_WORKER_URL`, `UNSECURED=true`,
//!   no engine).
//! * Through `nullworker engine` (`autoscaler_url = webserver_url` = the
//!   engine, account key), the SDK lists endpoints, opens a session via
//!   `/route/` (waiting while a worker starts), sees it held on one worker in
//!   `get_endpoint_workers`, makes a signed `/ping` in it, and closes it — on
//!   our workers, and on the Python reference workers as the worker command.
//! * The Python reference worker (`bench/reference/null_worker.py`, the
//!   benchmark's baseline) and ours keep the same null-worker contract against
//!   the same stand-in engine: ready report, signed `/ping`, one session,
//!   `/release`, reports and delete records.
//!
//! The Python scripts live in `tests/e2e/python/`; see docs/interop.md. Every
//! test here is skipped with a loud note when no interpreter imports `vastai`
//! 1.9.1, and fails instead when `NULLWORKER_REQUIRE_INTEROP=1`.

/// Shared with the Vast boot simulation (`vast_boot`).
pub(crate) mod python;
mod workers;

use std::time::Duration;

use nullworker_protocol::SigningKey;
use serde_json::{json, Value};

use crate::common::engine::{EngineGuard, ACCOUNT_KEY};
use crate::common::fake_engine::{other_key, primary_key, FakeEngine};
use crate::common::process::free_port;
use python::{python, Python};
use workers::{Kind, RunningWorker, WorkerSpec};

/// Deadline of one script run (generous: a loaded 2-core machine).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The protocol crate's test vectors (`crates/protocol/tests/data/signing.json`).
fn signing_vectors() -> Option<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/data/signing.json");
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).expect("signing.json is JSON"))
}

/// The signing key and a foreign key: the test-only vector keys when present,
/// else freshly generated ones.
fn test_keys(vectors: Option<&Value>) -> (SigningKey, SigningKey) {
    let load = |name: &str| {
        vectors
            .and_then(|v| v["keys"][name]["private_key_pkcs8_pem"].as_str())
            .map(|pem| SigningKey::from_pem(pem).expect("vector key"))
    };
    match (load("primary"), load("other")) {
        (Some(primary), Some(other)) => (primary, other),
        _ => (
            SigningKey::generate_default().expect("generate key"),
            SigningKey::generate(1024).expect("generate foreign key"),
        ),
    }
}

/// URLs to sign: every valid vector URL (IPv6, escapes, non-ASCII, control
/// characters, emoji, empty) when the vectors exist, plus loopback workers.
fn urls_to_sign(vectors: Option<&Value>) -> Vec<String> {
    let mut urls: Vec<String> = vectors
        .and_then(|v| v["cases"].as_array())
        .into_iter()
        .flatten()
        .filter(|case| case["valid"] == Value::Bool(true))
        .filter_map(|case| case["url"].as_str().map(str::to_owned))
        .collect();
    urls.extend(
        [
            "http://127.0.0.1:40123",
            "https://[2001:db8::7]:443",
            "http://bücher.example:8000/päth?q=\"x\"&r=\\",
            "http://host:1/\u{1f600}\u{7f}\t",
        ]
        .map(str::to_owned),
    );
    urls
}

fn auth_data(url: &str, signature: &str, n: usize) -> Value {
    json!({"cost": 100, "endpoint": "interop", "reqnum": n, "request_idx": n,
           "signature": signature, "url": url, "__request_id": "interop"})
}

/// Replaces one base64 character in the middle of `signature` by another.
fn tamper(signature: &str) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn framework_signature_check_accepts_what_we_sign() {
    let Some(python) = python("framework_signature_check_accepts_what_we_sign") else {
        return;
    };
    let vectors = signing_vectors();
    let (key, foreign) = test_keys(vectors.as_ref());

    let mut cases = Vec::new();
    for (n, url) in urls_to_sign(vectors.as_ref()).iter().enumerate() {
        cases.push(json!({"name": format!("valid {url:?}"),
                          "auth_data": auth_data(url, &key.sign_url(url), n),
                          "expect": true}));
    }
    let url = "http://127.0.0.1:40123";
    let good = key.sign_url(url);
    let mut unsigned_fields_changed = auth_data(url, &good, 1);
    unsigned_fields_changed["cost"] = json!(1_000_000);
    unsigned_fields_changed["endpoint"] = json!("another");
    cases.extend([
        // Only the URL is signed (quirk Q2): the other fields may change.
        json!({"name": "unsigned fields changed", "auth_data": unsigned_fields_changed, "expect": true}),
        json!({"name": "tampered signature", "auth_data": auth_data(url, &tamper(&good), 2), "expect": false}),
        json!({"name": "tampered url", "auth_data": auth_data("http://127.0.0.1:40124", &good, 3), "expect": false}),
        json!({"name": "foreign key", "auth_data": auth_data(url, &foreign.sign_url(url), 4), "expect": false}),
        json!({"name": "empty signature", "auth_data": auth_data(url, "", 5), "expect": false}),
    ]);
    let total = cases.len();

    // The engine serves SubjectPublicKeyInfo PEM; PKCS#1 is accepted too.
    let public = key.verifying_key();
    for pem in [public.to_spki_pem(), public.to_pkcs1_pem()] {
        let input = json!({"public_key_pem": pem, "cases": cases}).to_string();
        let run = python.run_script("framework_verify.py", &[], Some(&input), SCRIPT_TIMEOUT);
        let result = run.expect_ok();
        assert_eq!(result["accepted"], json!(total - 4), "{result}");
        assert_eq!(result["rejected"], json!(4), "{result}");
        assert_eq!(result["key_bits"], json!(key.bits()), "{result}");
    }
}

#[test]
fn framework_check_script_reports_disagreement() {
    // The script must be able to fail: a valid signature expected to be
    // rejected makes it exit non-zero.
    let Some(python) = python("framework_check_script_reports_disagreement") else {
        return;
    };
    let (key, _) = test_keys(signing_vectors().as_ref());
    let url = "http://127.0.0.1:40123";
    let input = json!({
        "public_key_pem": key.verifying_key().to_spki_pem(),
        "cases": [{"name": "valid but expected rejected",
                   "auth_data": auth_data(url, &key.sign_url(url), 1), "expect": false}],
    })
    .to_string();
    let run = python.run_script("framework_verify.py", &[], Some(&input), SCRIPT_TIMEOUT);
    assert!(!run.status.success(), "script succeeded: {}", run.stdout);
    assert_eq!(run.result["ok"], json!(false), "{}", run.stdout);
    assert!(
        run.result["error"]
            .as_str()
            .is_some_and(|e| e.contains("valid but expected rejected")),
        "{}",
        run.result
    );
}

#[test]
fn sdk_opens_and_closes_a_session_on_our_worker() {
    let Some(python) = python("sdk_opens_and_closes_a_session_on_our_worker") else {
        return;
    };
    // UNSECURED=true and nothing listening at REPORT_ADDR: no engine at all.
    let report_addr = format!("http://127.0.0.1:{}", free_port());
    let worker = RunningWorker::start_ours(&WorkerSpec {
        container_id: 41,
        report_addr: &report_addr,
        unsecured: true,
        master_token: "interop-token",
    });
    let run = python.run_script(
        "sdk_worker_session.py",
        &["--worker-url", &worker.url, "--timeout", "60"],
        None,
        SCRIPT_TIMEOUT,
    );
    run.expect_ok_with(|| format!("--- worker log (tail) ---\n{}", worker.log_tail()));
    let sessions = run.result["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{}", run.result);
    for session in sessions {
        let id = session["session_id"].as_str().expect("session id");
        assert!(nullworker_protocol::is_session_id(id), "{id}");
    }
}

/// How long a report may take to show a change (the heartbeat is 10 s).
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

fn post(client: &reqwest::blocking::Client, url: &str, body: &Value) -> (u16, String) {
    let response = client
        .post(url)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The null-worker contract, checked the same way on either implementation.
fn null_worker_contract(kind: Kind, python: &Python) {
    let (key, foreign) = (primary_key(), other_key());
    let sink = FakeEngine::start();
    let report_addr = sink.url();
    let spec = WorkerSpec {
        container_id: 77,
        report_addr: &report_addr,
        unsecured: false,
        master_token: "interop-token",
    };
    let worker = match kind {
        Kind::Ours => RunningWorker::start_ours(&spec),
        Kind::Reference => RunningWorker::start_reference(python, &spec),
    };
    let context = || format!("{kind:?} worker log (tail):\n{}", worker.log_tail());
    let client = http();

    let ready = sink.wait_status("a ready report", REPORT_TIMEOUT, |r| {
        r["max_perf"].as_f64() == Some(100.0) && r["loadtime"].as_f64().is_some_and(|t| t > 0.0)
    });
    assert_eq!(ready["id"], json!(77), "{ready}");
    assert_eq!(ready["mtoken"], json!("interop-token"), "{ready}");
    assert_eq!(ready["version"], json!("1.1.0"), "{ready}");
    assert_eq!(ready["url"], json!(worker.url), "{ready}");
    assert_eq!(ready["error_msg"], json!(""), "{ready}\n{}", context());

    // The public key is fetched concurrently with readiness: wait until a
    // signed /ping is accepted, then check a foreign signature is refused.
    let signed = |request_idx: u64, reqnum: u64| {
        json!({"cost": 100, "endpoint": "interop", "reqnum": reqnum, "request_idx": request_idx,
               "signature": key.sign_url(&worker.url), "url": worker.url})
    };
    let ping_url = format!("{}/ping", worker.url);
    let mut reqnum = 0;
    let ping = crate::common::process::wait_for(
        "a signed /ping to be accepted",
        REPORT_TIMEOUT,
        || {
            reqnum += 1;
            let body = json!({"auth_data": signed(1000 + reqnum, reqnum), "payload": {}, "session_id": null});
            let (status, text) = post(&client, &ping_url, &body);
            (status == 200).then_some(text)
        },
    );
    assert_eq!(parse(&ping)["result"], json!({"ok": true}), "{ping}");
    let mut forged = signed(2000, 2000);
    forged["signature"] = json!(foreign.sign_url(&worker.url));
    let (status, _) = post(
        &client,
        &ping_url,
        &json!({"auth_data": forged, "payload": {}, "session_id": null}),
    );
    assert_eq!(
        status,
        401,
        "/ping signed with a foreign key\n{}",
        context()
    );

    // One session per worker.
    let auth = signed(7, 3000);
    let create = json!({"auth_data": auth, "payload": {"lifetime": 120, "on_close_route": null,
                                                        "on_close_payload": null},
                        "session_id": null});
    let (status, text) = post(&client, &format!("{}/session/create", worker.url), &create);
    assert_eq!(status, 201, "{text}\n{}", context());
    let created = parse(&text);
    let session_id = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    assert!(nullworker_protocol::is_session_id(&session_id), "{created}");
    let mut second = create.clone();
    second["auth_data"] = signed(8, 3001);
    let (status, _) = post(&client, &format!("{}/session/create", worker.url), &second);
    assert_eq!(
        status,
        429,
        "second session on a max_sessions=1 worker\n{}",
        context()
    );

    sink.wait_status("a report holding the session", REPORT_TIMEOUT, |r| {
        r["cur_load"].as_f64() == Some(100.0)
            && r["num_requests_working"] == json!(1)
            && r["working_request_idxs"] == json!([7])
    });
    let (status, text) = post(
        &client,
        &format!("{}/session/get", worker.url),
        &json!({"session_id": session_id, "session_auth": auth}),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["auth_data"], auth, "{text}");

    // Release through the control server, as a consumer does.
    let release_url = format!("{}/release", worker.control_url);
    let reports_before_release = sink.statuses().len();
    let (status, text) = post(&client, &release_url, &json!({}));
    assert_eq!(status, 200, "{text}\n{}", context());
    assert_eq!(
        parse(&text),
        json!({"released": true, "session_ids": [session_id]}),
        "{text}"
    );
    let (status, text) = post(&client, &release_url, &json!({}));
    assert_eq!(
        (status, parse(&text)),
        (
            200,
            json!({"released": false, "reason": "no active session"})
        )
    );

    sink.wait_status_after(
        reports_before_release,
        "a report after the release",
        REPORT_TIMEOUT,
        |r| r["cur_load"].as_f64() == Some(0.0) && r["num_requests_working"] == json!(0),
    );
    let record = sink.wait_delete("the session's delete record", REPORT_TIMEOUT, |r| {
        r["request_idx"] == json!(7)
    });
    assert_eq!(record["status"], json!("Success"), "{record}");
    assert_eq!(record["success"], json!(true), "{record}");
    let rejected = sink.wait_delete("the rejected create's delete record", REPORT_TIMEOUT, |r| {
        r["request_idx"] == json!(8)
    });
    assert_eq!(rejected["status"], json!("Rejected"), "{rejected}");

    let health = client
        .get(format!("{}/health", worker.control_url))
        .send()
        .expect("GET /health");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().expect("body"), "ok");
    let last = sink.statuses().pop().expect("reports");
    assert_eq!(last["error_msg"], json!(""), "{last}\n{}", context());
}

#[test]
fn reference_worker_keeps_the_null_worker_contract() {
    let Some(python) = python("reference_worker_keeps_the_null_worker_contract") else {
        return;
    };
    null_worker_contract(Kind::Reference, python);
}

#[test]
fn our_worker_keeps_the_same_contract_as_the_reference() {
    let Some(python) = python("our_worker_keeps_the_same_contract_as_the_reference") else {
        return;
    };
    null_worker_contract(Kind::Ours, python);
}

/// The engine's log is on the test's stderr; these are its workers' logs.
fn worker_logs(engine: &EngineGuard) -> String {
    let mut out = String::new();
    let dirs = std::fs::read_dir(engine.state_dir.join("workers"))
        .into_iter()
        .flatten();
    for dir in dirs.flatten() {
        let log = dir.path().join("worker.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        out.push_str(&format!(
            "--- {} ---\n{}\n",
            log.display(),
            python::tail(&text, 40)
        ));
    }
    out
}

fn sdk_session_through_engine(python: &Python, worker_command: Option<&str>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--account-key", ACCOUNT_KEY];
    if let Some(command) = worker_command {
        args.extend(["--worker-command", command]);
    }
    let engine = EngineGuard::start_in(&tmp.path().join("state"), &args);
    engine.create_seed_endpoint("interop-seed", json!({}));
    let run = python.run_script(
        "sdk_engine_session.py",
        &[
            "--engine-url",
            &engine.url,
            "--api-key",
            ACCOUNT_KEY,
            "--endpoint",
            "interop-seed",
            "--timeout",
            "90",
            "--report-timeout",
            "60",
        ],
        None,
        SCRIPT_TIMEOUT,
    );
    let result = run.expect_ok_with(|| worker_logs(&engine));
    assert_eq!(result["endpoints"], json!(["interop-seed"]), "{result}");
    assert_eq!(
        result["holding_worker"]["reqs_working"],
        json!(1),
        "{result}"
    );
    assert_eq!(
        result["ping_response"],
        json!({"result": {"ok": true}}),
        "{result}"
    );
    assert!(
        result["worker_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{result}"
    );
}

#[test]
fn sdk_session_through_our_engine() {
    let Some(python) = python("sdk_session_through_our_engine") else {
        return;
    };
    sdk_session_through_engine(python, None);
}

#[test]
fn sdk_session_through_our_engine_on_reference_workers() {
    let Some(python) = python("sdk_session_through_our_engine_on_reference_workers") else {
        return;
    };
    let script = python::repo_root().join("bench/reference/null_worker.py");
    let command = format!("'{}' '{}'", python.exe.display(), script.display());
    sdk_session_through_engine(python, Some(&command));
}
