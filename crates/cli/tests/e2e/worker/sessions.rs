//! Sessions over the wire: create, capacity, get/health, additive
//! extension, end (public and HTTP-only listeners), expiry on time, the
//! on-close callback, what the engine is told about each, and the control
//! server's reservation status (`GET /session`, our extension).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{epoch_now, signed_auth, wait_ready, Worker, WorkerSpec, SOON};
use crate::common::fake_engine::FakeEngine;

#[test]
fn session_lifecycle_and_reports() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    let ready = wait_ready(&engine);
    for field in [
        "id",
        "mtoken",
        "version",
        "loadtime",
        "cur_load",
        "rej_load",
        "new_load",
        "error_msg",
        "max_perf",
        "cur_perf",
        "cur_capacity",
        "max_capacity",
        "num_requests_working",
        "num_requests_recieved",
        "additional_disk_usage",
        "disk_usage",
        "working_request_idxs",
        "url",
    ] {
        assert!(ready.get(field).is_some(), "report lacks {field}: {ready}");
    }
    assert_eq!(ready["id"], json!(42));
    assert_eq!(ready["mtoken"], json!("secret-token"));
    assert_eq!(ready["version"], json!("1.1.0"));
    assert_eq!(ready["url"], json!(w.url));
    assert_eq!(ready["error_msg"], json!(""));

    let before = epoch_now();
    let (id, auth) = w.open(7, 30.0, json!({}));
    let after = epoch_now();
    assert_eq!(id.len(), 13);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");

    // The engine hears of the session at once, not at the next heartbeat.
    engine.wait_status("a report with the session", SOON, |s| {
        s["cur_load"] == json!(100.0) && s["working_request_idxs"] == json!([7])
    });

    // A second reservation on a full worker: 429 with an empty body.
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": signed_auth(&w.url, 8, 100), "payload": {"lifetime": 30}, "session_id": null}),
    );
    assert_eq!((status, text.as_str()), (429, ""));
    let rejected = engine.wait_delete("a Rejected record for request 8", SOON, |r| {
        r["request_idx"] == json!(8)
            && r["status"] == json!("Rejected")
            && r["success"] == json!(false)
    });
    // Rejected work never started nor completed (§3.4).
    assert_eq!(rejected["work_started_at"], json!(0.0), "{rejected}");
    assert_eq!(rejected["work_completed_at"], json!(0.0), "{rejected}");
    assert!(rejected["entered_queue_at"].as_f64().unwrap() >= before);
    engine.wait_status("the refused create in a report", SOON, |s| {
        s["rej_load"] == json!(100.0) && s["num_requests_recieved"] == json!(2)
    });

    // get: every field, no extension.
    let (status, text) = w.post(
        "/session/get",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200, "{text}");
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["session_id"], json!(id));
    assert_eq!(info["auth_data"], auth);
    assert_eq!(info["lifetime"], json!(30.0));
    assert_eq!(info["on_close_route"], Value::Null);
    assert_eq!(info["on_close_payload"], Value::Null);
    let created_at = info["created_at"].as_f64().unwrap();
    let expiration = info["expiration"].as_f64().unwrap();
    assert!(
        before - 0.5 <= created_at && created_at <= after + 0.5,
        "created_at {created_at} outside [{before}, {after}]"
    );
    assert!((expiration - created_at - 30.0).abs() < 1e-6);

    let (status, text) = w.post(
        "/session/health",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!((status, text.as_str()), (200, r#"{"ok":true}"#));

    // Requests in the session extend it additively: expiration += lifetime each.
    for _ in 0..2 {
        let (status, text) = w.post(
            "/ping",
            &json!({"auth_data": auth, "session_id": id, "payload": {}}),
        );
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"result": {"ok": true}})
        );
    }
    let (_, text) = w.post(
        "/session/get",
        &json!({"session_id": id, "session_auth": auth}),
    );
    let info: Value = serde_json::from_str(&text).unwrap();
    assert!(
        (info["expiration"].as_f64().unwrap() - (expiration + 60.0)).abs() < 1e-6,
        "{info}"
    );

    // session_auth compares like Python: 100 == 100.0, key order irrelevant.
    let mut floaty = auth.clone();
    floaty["cost"] = json!(100.0);
    floaty["reqnum"] = json!(1007.0);
    let (status, text) = w.post(
        "/session/end",
        &json!({"session_id": id, "session_auth": floaty}),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"ended": true, "removed_session": id})
    );
    let (status, text) = w.post(
        "/session/end",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 400);
    assert_eq!(
        text,
        format!(r#"{{"error":"session with id {id} not found"}}"#)
    );

    // The engine learns the worker is free, gets the Success record and the work done.
    engine.wait_status("a report with the worker free", SOON, |s| {
        s["cur_load"] == json!(0.0)
            && s["working_request_idxs"] == json!([])
            && s["cur_perf"].as_f64() >= Some(100.0)
    });
    let record = engine.wait_delete("a Success record for request 7", SOON, |r| {
        r["request_idx"] == json!(7) && r["status"] == json!("Success")
    });
    assert_eq!(record["success"], json!(true));
    // A session's record spans create to close (§3.4): queued and started at create.
    assert!(
        (record["entered_queue_at"].as_f64().unwrap() - created_at).abs() < 1e-6,
        "{record} vs created_at {created_at}"
    );
    assert_eq!(record["work_started_at"], record["entered_queue_at"]);
    assert!(
        record["work_completed_at"].as_f64().unwrap() > created_at,
        "{record}"
    );
    // Requests inside the session are not tracked: one record per reservation.
    assert_eq!(
        engine
            .delete_records()
            .iter()
            .filter(|r| r["request_idx"] == json!(7))
            .count(),
        1,
        "{:?}",
        engine.delete_records()
    );
    let body = &engine.delete_bodies()[0];
    assert_eq!(body["worker_id"], json!(42));
    assert_eq!(body["mtoken"], json!("secret-token"));

    // Free again: a new reservation succeeds.
    w.open(9, 30.0, json!({}));
}

#[test]
fn http_only_listener_ends_sessions() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine).env("NULLWORKER_MAX_SESSIONS", "3"));
    wait_ready(&engine);
    let (a, auth_a) = w.open(1, 30.0, json!({}));
    let (b, _) = w.open(2, 30.0, json!({}));
    let (c, _) = w.open(3, 30.0, json!({}));
    assert!(a != b && b != c);
    let (status, _) = w.post(
        "/session/create",
        &json!({"auth_data": signed_auth(&w.url, 4, 100), "payload": {}}),
    );
    assert_eq!(status, 429);

    let (status, text) = w.post_http_only(
        "/session/end",
        &json!({"session_id": a, "session_auth": auth_a}),
    );
    assert_eq!(status, 200, "{text}");
    // Only /session/end lives there.
    let (status, text) = w.post_http_only("/ping", &json!({}));
    assert_eq!(status, 404, "{text}");
    engine.wait_status("cur_load 200 after one end", SOON, |s| {
        s["cur_load"] == json!(200.0)
    });
}

#[test]
fn expiry_is_on_time_and_fires_the_callback() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let callback = format!("{}/callback", engine.url());
    let (id, auth) = w.open(
        11,
        1.0,
        json!({"on_close_route": callback, "on_close_payload": {"job": "j-1"}}),
    );
    let (_, text) = w.post(
        "/session/get",
        &json!({"session_id": id, "session_auth": auth}),
    );
    let expiration = serde_json::from_str::<Value>(&text).unwrap()["expiration"]
        .as_f64()
        .unwrap();

    // Closed by its deadline: the callback arrives well within a second of it
    // (the reference sweeps every 5 s).
    let body = engine.wait_callback("the on-close callback", SOON, |c| {
        c["session_id"] == json!(id)
    });
    let late = epoch_now() - expiration;
    assert!(late < 1.0, "session outlived its expiration by {late:.3} s");
    assert!(late > -0.05, "session closed {:.3} s early", -late);
    assert_eq!(body, json!({"job": "j-1", "session_id": id}));
    let (status, _) = w.post(
        "/session/get",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 400);
    let (status, text) = w.post(
        "/ping",
        &json!({"auth_data": auth, "session_id": id, "payload": {}}),
    );
    assert_eq!(
        (status, text.as_str()),
        (410, r#"{"error":"invalid session"}"#)
    );
    engine.wait_delete("a Success record for the expired session", SOON, |r| {
        r["request_idx"] == json!(11) && r["status"] == json!("Success")
    });
    assert!(w.log().contains("expiry"), "{}", w.log());
}

#[test]
fn relative_callback_resolves_against_the_health_origin() {
    let engine = FakeEngine::start();
    let w = Worker::start(
        WorkerSpec::new(&engine).env("BACKEND_HEALTH_URL", &format!("{}/health", engine.url())),
    );
    wait_ready(&engine);
    let (id, auth) = w.open(
        5,
        30.0,
        json!({"on_close_route": "/callback", "on_close_payload": [1, 2]}),
    );
    let (status, _) = w.post(
        "/session/end",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200);
    // The answer comes after the callback, so it is already there.
    let callbacks = engine.callbacks();
    assert_eq!(
        callbacks,
        vec![json!({"payload": [1, 2], "session_id": id})]
    );
}

#[test]
fn release_closes_every_session_and_the_command_prints_it() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine).env("NULLWORKER_MAX_SESSIONS", "2"));
    wait_ready(&engine);
    let (status, body) = w.release();
    assert_eq!(
        (status, body),
        (
            200,
            json!({"released": false, "reason": "no active session"})
        )
    );

    let (a, _) = w.open(1, 30.0, json!({}));
    let (b, _) = w.open(2, 30.0, json!({}));
    let (status, body) = w.release();
    assert_eq!(status, 200);
    assert_eq!(body["released"], json!(true));
    let mut ids: Vec<String> = serde_json::from_value(body["session_ids"].clone()).unwrap();
    ids.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids, want);
    engine.wait_status("free after release", SOON, |s| {
        s["cur_load"] == json!(0.0) && s["cur_perf"].as_f64() >= Some(200.0)
    });

    // `nullworker release` does the same from the command line.
    let (c, _) = w.open(3, 30.0, json!({}));
    let out = crate::common::process::nullworker()
        .args(["release", "--port", &w.control_port.to_string()])
        .output()
        .expect("run nullworker release");
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("release prints JSON");
    assert_eq!(printed, json!({"released": true, "session_ids": [c]}));
    let out = crate::common::process::nullworker()
        .args(["release"])
        .env("NULL_CONTROL_PORT", w.control_port.to_string())
        .output()
        .expect("run nullworker release");
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["released"], json!(false));
    assert!(w.log().contains("release"));
}

#[test]
fn release_command_fails_without_a_worker() {
    let port = crate::common::process::free_port();
    let out = crate::common::process::nullworker()
        .args(["release", "--port", &port.to_string(), "--timeout", "5"])
        .output()
        .expect("run nullworker release");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&port.to_string()), "{err}");
}

/// `GET /session<query>` on the control server over a plain connection. The
/// request has been written when this returns; the thread reads the answer
/// and returns its status, JSON body and the time from sending to answer.
fn start_session_get(
    control_port: u16,
    query: &str,
) -> std::thread::JoinHandle<(u16, Value, Duration)> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", control_port)).expect("connect control port");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let request =
        format!("GET /session{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let sent = Instant::now();
    stream
        .write_all(request.as_bytes())
        .expect("send GET /session");
    std::thread::spawn(move || {
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the answer");
        let took = sent.elapsed();
        let text = String::from_utf8(raw).expect("UTF-8 answer");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        (status, body, took)
    })
}

/// `GET /session<query>`, waited for.
fn session_get(control_port: u16, query: &str) -> (u16, Value, Duration) {
    start_session_get(control_port, query)
        .join()
        .expect("GET /session thread")
}

#[test]
fn session_status_follows_reservations_and_long_polls() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let port = w.control_port;

    // Nobody reserved this worker.
    let (status, body, _) = session_get(port, "");
    assert_eq!(
        (status, body),
        (200, json!({"held": false, "open_sessions": 0}))
    );

    // A long poll sent before the reservation answers once it exists.
    let waiting = start_session_get(port, "?wait=60");
    let before = epoch_now();
    let (id, _) = w.open(1, 30.0, json!({}));
    let after = epoch_now();
    let (status, body, took) = waiting.join().expect("long poll thread");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["held"], json!(true), "{body}");
    assert_eq!(body["session_id"], json!(id), "{body}");
    assert_eq!(body["open_sessions"], json!(1), "{body}");
    let since = body["since"].as_f64().unwrap();
    assert!(
        before - 0.5 <= since && since <= after + 0.5,
        "since {since} outside [{before}, {after}]"
    );
    assert!((body["expiration"].as_f64().unwrap() - since - 30.0).abs() < 1e-6);
    assert!(took < SOON, "the long poll answered after {took:?}");

    // Held: answered at once, even with a long wait.
    let (_, held, took) = session_get(port, "?wait=3600");
    assert_eq!(held, body);
    assert!(took < SOON, "{took:?}");

    // Released: not held any more.
    let (status, released) = w.release();
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["session_ids"], json!([id]));
    let (status, body, _) = session_get(port, "");
    assert_eq!(
        (status, body),
        (200, json!({"held": false, "open_sessions": 0}))
    );

    // Nobody reserves it: the long poll answers "not held" at the end of the wait, not before.
    let (status, body, took) = session_get(port, "?wait=1.5");
    assert_eq!(
        (status, body),
        (200, json!({"held": false, "open_sessions": 0}))
    );
    assert!(
        took >= Duration::from_millis(1_500),
        "answered early, after {took:?}"
    );
    assert!(took < Duration::from_millis(1_500) + SOON, "{took:?}");

    // A bad wait is refused, naming the value and the range.
    for query in ["?wait=-1", "?wait=3601", "?wait=nan", "?wait=later"] {
        let (status, body, _) = session_get(port, query);
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        let value = query.trim_start_matches("?wait=");
        assert!(
            message.contains(&format!("{value:?}")) && message.contains("from 0 to 3600"),
            "{query}: {body}"
        );
    }
}
