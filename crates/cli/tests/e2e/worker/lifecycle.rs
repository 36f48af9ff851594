//! Start-up and shut-down: configuration errors (one line per bad value,
//! exit 2, a beacon to the engine), readiness and health transitions, TLS with a self-signed
//! certificate, graceful shutdown on SIGTERM/SIGINT, and reports when quiet
//! and after work. (The CPU time of busy polling and the heartbeat interval
//! are benchmark figures, in benches/worker.rs.)

use std::time::Duration;

use serde_json::{json, Value};

use super::{signed_auth, wait_ready, worker_command, Worker, WorkerSpec, SOON};
use crate::common::fake_engine::FakeEngine;

/// Runs `nullworker serve` expecting a configuration error; returns stderr.
fn config_error(engine: &FakeEngine, env: &[(&str, &str)], remove: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let spec = env
        .iter()
        .fold(WorkerSpec::new(engine), |spec, (k, v)| spec.env(k, v));
    let (mut cmd, ..) = worker_command(&spec, dir.path());
    for var in remove {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run nullworker serve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nullworker: error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    error_lines[0].to_owned()
}

#[test]
fn bad_configuration_exits_2_naming_the_value() {
    let engine = FakeEngine::start();
    let line = config_error(&engine, &[("WORKER_PORT", "eighty")], &[]);
    assert!(
        line.contains("WORKER_PORT") && line.contains("\"eighty\"") && line.contains("port"),
        "{line}"
    );

    let line = config_error(
        &engine,
        &[("BACKEND_HEALTH_URL", "localhost:9090/health")],
        &[],
    );
    assert!(
        line.contains("BACKEND_HEALTH_URL")
            && line.contains("localhost:9090/health")
            && line.contains("absolute"),
        "{line}"
    );

    let line = config_error(&engine, &[("NULL_CONTROL_PORT", "70000")], &[]);
    assert!(
        line.contains("NULL_CONTROL_PORT") && line.contains("70000"),
        "{line}"
    );

    let line = config_error(&engine, &[("UNSECURED", "sometimes")], &[]);
    assert!(
        line.contains("UNSECURED") && line.contains("sometimes"),
        "{line}"
    );

    let line = config_error(&engine, &[], &["PUBLIC_IPADDR"]);
    assert!(
        line.contains("PUBLIC_IPADDR") && line.contains("not set"),
        "{line}"
    );

    let line = config_error(
        &engine,
        &[
            ("USE_SSL", "true"),
            ("NULLWORKER_TLS_CERT", "/nonexistent/instance.crt"),
        ],
        &[],
    );
    assert!(
        line.contains("/nonexistent/instance.crt") && line.contains("TLS"),
        "{line}"
    );

    // REPORT_ADDR and CONTAINER_ID are known: each failure was also reported
    // to the engine the way the reference's beacon does.
    let beacons: Vec<Value> = engine
        .statuses()
        .into_iter()
        .filter(|s| {
            s["error_msg"]
                .as_str()
                .unwrap_or("")
                .starts_with("Worker Server failed to launch: ")
        })
        .collect();
    assert_eq!(beacons.len(), 6, "{beacons:?}");
    assert!(beacons
        .iter()
        .all(|b| b["id"] == json!(42) && b["max_perf"] == json!(0.0)));
    assert!(beacons[0]["error_msg"]
        .as_str()
        .unwrap()
        .contains("WORKER_PORT"));

    // Without CONTAINER_ID there is nobody to report as: just the line.
    let before = engine.statuses().len();
    let line = config_error(&engine, &[], &["CONTAINER_ID"]);
    assert!(line.contains("CONTAINER_ID"), "{line}");
    assert_eq!(engine.statuses().len(), before);
}

#[test]
fn every_bad_variable_is_reported_at_once_one_line_each() {
    let engine = FakeEngine::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = WorkerSpec::new(&engine)
        .env("WORKER_PORT", "eighty")
        .env("UNSECURED", "sometimes")
        .env("NULLWORKER_MAX_SESSIONS", "-2");
    let (mut cmd, ..) = worker_command(&spec, dir.path());
    cmd.env_remove("PUBLIC_IPADDR");
    let out = cmd.output().expect("run nullworker serve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nullworker: error:"))
        .collect();
    let expected = [
        "WORKER_PORT (--worker-port)=\"eighty\"",
        "PUBLIC_IPADDR (--public-ipaddr) is not set",
        "UNSECURED (--unsecured)=\"sometimes\"",
        "NULLWORKER_MAX_SESSIONS (--max-sessions)=\"-2\"",
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, part) in lines.iter().zip(expected) {
        assert!(line.contains(part), "{line:?} should name {part}");
    }
    // One launch-failure report carries them all.
    let beacons: Vec<String> = engine
        .statuses()
        .into_iter()
        .filter_map(|s| s["error_msg"].as_str().map(str::to_owned))
        .filter(|m| m.starts_with("Worker Server failed to launch: "))
        .collect();
    assert_eq!(beacons.len(), 1, "{beacons:?}");
    for part in expected {
        assert!(
            beacons[0].contains(part),
            "{} should name {part}",
            beacons[0]
        );
    }
}

#[test]
fn health_gates_readiness_and_a_later_failure_is_sticky() {
    let engine = FakeEngine::start();
    engine.set_health(503);
    let w = Worker::start(
        WorkerSpec::new(&engine)
            .env("BACKEND_HEALTH_URL", &format!("{}/health", engine.url()))
            .env("NULLWORKER_HEALTH_INTERVAL", "0.1"),
    );
    crate::common::process::wait_for("health checks", SOON, || {
        (engine.health_requests() >= 3).then_some(())
    });
    // Not ready: reports say so, /release refuses, /health is not served (the consumer's is used).
    assert!(engine
        .statuses()
        .iter()
        .all(|s| s["max_perf"] == json!(0.0) && s["error_msg"] == json!("")));
    let (status, body) = w.release();
    assert_eq!(
        (status, body),
        (
            503,
            json!({"released": false, "reason": "backend not ready"})
        )
    );
    let resp = super::plain_client()
        .get(format!("http://127.0.0.1:{}/health", w.control_port))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    engine.set_health(200);
    wait_ready(&engine);
    let (status, _) = w.release();
    assert_eq!(status, 200);

    engine.set_health(500);
    engine.wait_status("the health error", SOON, |s| {
        s["error_msg"] == json!("Healthcheck failed with status: 500")
    });
    // Sticky: passing again does not clear it.
    engine.set_health(200);
    let seen = engine.health_requests();
    crate::common::process::wait_for("more health checks", SOON, || {
        (engine.health_requests() >= seen + 3).then_some(())
    });
    let n = engine.statuses().len();
    let (id, auth) = w.open(3, 30.0, json!({}));
    let report = engine.wait_status_after(n, "a report after the recovery", SOON, |s| {
        s["cur_load"] == json!(100.0)
    });
    assert_eq!(
        report["error_msg"],
        json!("Healthcheck failed with status: 500")
    );
    let (status, _) = w.post(
        "/session/end",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200);
}

#[test]
fn stub_health_is_served_on_the_control_port() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    let resp = super::plain_client()
        .get(format!("http://127.0.0.1:{}/health", w.control_port))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), "ok");
    wait_ready(&engine);
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let engine = FakeEngine::start();
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert_path = dir.path().join("instance.crt");
    let key_path = dir.path().join("instance.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut spec = WorkerSpec::new(&engine)
        .env("USE_SSL", "true")
        .env("NULLWORKER_TLS_CERT", cert_path.to_str().unwrap())
        .env("NULLWORKER_TLS_KEY", key_path.to_str().unwrap());
    spec.tls = true;
    let w = Worker::start(spec);
    assert!(w.url.starts_with("https://"));
    let ready = wait_ready(&engine);
    assert_eq!(ready["url"], json!(w.url));

    let (id, auth) = w.open(1, 30.0, json!({}));
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 2, 100), "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 200);
    // The HTTP-only listener stays plain HTTP.
    let (status, text) = w.post_http_only(
        "/session/end",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200, "{text}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = super::plain_client()
        .post(format!("http://127.0.0.1:{}/ping", w.port))
        .body("{}")
        .send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[test]
fn sigterm_closes_sessions_reports_and_exits_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let engine = FakeEngine::start();
        let mut w = Worker::start(WorkerSpec::new(&engine).env("NULLWORKER_MAX_SESSIONS", "2"));
        wait_ready(&engine);
        let callback = format!("{}/callback", engine.url());
        let (a, _) = w.open(5, 600.0, json!({"on_close_route": callback}));
        let (b, _) = w.open(6, 600.0, json!({}));
        engine.wait_status("both sessions reported", SOON, |s| {
            s["cur_load"] == json!(200.0)
        });
        let n = engine.statuses().len();

        w.child.signal(signal);
        let status = w.wait_exit(Duration::from_secs(8));
        assert_eq!(status.code(), Some(0), "{}", w.log());
        // Callbacks fired, the last report shows the worker empty, the records were sent.
        assert_eq!(engine.callbacks(), vec![json!({"session_id": a})]);
        let last = engine
            .statuses()
            .into_iter()
            .skip(n)
            .last()
            .expect("a last report");
        assert_eq!(last["cur_load"], json!(0.0), "{last}");
        assert_eq!(last["working_request_idxs"], json!([]));
        for idx in [5, 6] {
            assert!(
                engine
                    .delete_records()
                    .iter()
                    .any(|r| r["request_idx"] == json!(idx) && r["status"] == json!("Success")),
                "no Success record for {idx}"
            );
        }
        let log = w.log();
        assert!(log.contains(&b) && log.contains("shutdown"), "{log}");
    }
}

#[test]
fn reports_heartbeat_when_quiet_and_follow_work() {
    // §10.1: a quiet worker still reports (a heartbeat, about every 10 s);
    // work is reported at the next tick. (The interval itself is a
    // benchmark figure: `heartbeat_s` in benches/worker.rs.)
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let n = engine.statuses().len();
    let heartbeat = engine.wait_status_after(n, "a heartbeat", Duration::from_secs(30), |_| true);
    assert_eq!(heartbeat["cur_perf"], json!(0.0), "{heartbeat}");

    // A plain /ping: admitted, completed, reported.
    let n = engine.statuses().len();
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 31, 100), "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 200);
    let report = engine.wait_status_after(n, "the ping in a report", SOON, |s| {
        s["cur_perf"] == json!(100.0)
    });
    assert_eq!(report["new_load"], json!(100.0), "{report}");
    assert_eq!(report["cur_load"], json!(0.0), "{report}");
    assert_eq!(report["num_requests_recieved"], json!(1), "{report}");
    assert_eq!(report["num_requests_working"], json!(0), "{report}");
    let record = engine.wait_delete("the ping's Success record", SOON, |r| {
        r["request_idx"] == json!(31)
    });
    assert_eq!(record["status"], json!("Success"), "{record}");
    assert_eq!(record["work_started_at"], record["entered_queue_at"]);
    assert!(record["work_completed_at"].as_f64() >= record["entered_queue_at"].as_f64());
    // Counters are per interval: the next report starts from zero again.
    let n = engine.statuses().len();
    let later =
        engine.wait_status_after(n, "the next heartbeat", Duration::from_secs(30), |_| true);
    assert_eq!(
        (later["cur_perf"].as_f64(), later["new_load"].as_f64()),
        (Some(0.0), Some(0.0)),
        "{later}"
    );
    assert_eq!(
        later["num_requests_recieved"],
        json!(1),
        "cumulative: {later}"
    );
}
