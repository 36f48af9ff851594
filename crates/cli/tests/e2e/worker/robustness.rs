//! Bad input never crashes, hangs or leaves state behind: the status-code
//! tables of `/session/end`, `/session/get`, `/session/health` and `/ping`,
//! malformed and mistyped bodies (422 naming the field), huge bodies (413),
//! unknown routes and methods, and slow clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::{signed_auth, wait_ready, Worker, WorkerSpec};
use crate::common::fake_engine::FakeEngine;

fn error_of(text: &str) -> String {
    serde_json::from_str::<Value>(text).unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn session_route_status_tables() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let (id, auth) = w.open(1, 60.0, json!({}));

    for path in ["/session/end", "/session/get", "/session/health"] {
        let (status, text) = w.post_raw(path, "{not json");
        assert_eq!(
            (status, text.as_str()),
            (422, r#"{"error":"invalid JSON"}"#),
            "{path}"
        );
        for body in [
            json!({}),
            json!({"session_id": null}),
            json!({"session_id": ""}),
        ] {
            let (status, text) = w.post(path, &body);
            assert_eq!(
                (status, text.as_str()),
                (422, r#"{"error":"missing session_id"}"#),
                "{path} {body}"
            );
        }
        let (status, text) = w.post(path, &json!([1, 2]));
        assert_eq!(status, 422, "{path}");
        assert!(error_of(&text).contains("object"), "{text}");
        let (status, text) = w.post(path, &json!({"session_id": 12}));
        assert_eq!(status, 422, "{path}");
        assert!(error_of(&text).contains("session_id"), "{text}");
        for bad_auth in [None, Some(json!({"url": w.url})), Some(json!("x"))] {
            let mut body = json!({"session_id": id});
            if let Some(a) = bad_auth {
                body["session_auth"] = a;
            }
            let (status, text) = w.post(path, &body);
            assert_eq!(
                (status, text.as_str()),
                (401, r#"{"error":"session_auth is not valid"}"#),
                "{path} {body}"
            );
        }
    }
    let unknown = json!({"session_id": "AAAAAAAAAAAAA", "session_auth": auth});
    let (status, text) = w.post("/session/end", &unknown);
    assert_eq!(
        (status, text.as_str()),
        (
            400,
            r#"{"error":"session with id AAAAAAAAAAAAA not found"}"#
        )
    );
    let (status, text) = w.post("/session/get", &unknown);
    assert_eq!(
        (status, text.as_str()),
        (400, r#"{"error":"session does not exist"}"#)
    );
    let (status, text) = w.post("/session/health", &unknown);
    assert_eq!((status, text.as_str()), (200, r#"{"ok":false}"#));
    // The session survived every bad call.
    let (status, _) = w.post(
        "/session/end",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200);
}

#[test]
fn ping_status_table() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let auth = signed_auth(&w.url, 1, 100);
    let cases = [
        ("{bad", 422, json!({"error": "invalid JSON"})),
        (
            r#"{"payload": {}}"#,
            422,
            json!({"auth_data": "field missing"}),
        ),
        (
            r#"{"auth_data": {}, "payload": {}}"#,
            422,
            json!({"auth_data": {
            "cost": "missing parameter", "endpoint": "missing parameter", "reqnum": "missing parameter",
            "request_idx": "missing parameter", "signature": "missing parameter", "url": "missing parameter"}}),
        ),
        (
            r#"{}"#,
            422,
            json!({"auth_data": "field missing", "payload": "field missing"}),
        ),
    ];
    for (body, want_status, want) in cases {
        let (status, text) = w.post_raw("/ping", body);
        assert_eq!(status, want_status, "{body}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            want,
            "{body}"
        );
    }
    let (status, text) = w.post("/ping", &json!({"auth_data": auth, "payload": [1]}));
    assert_eq!(status, 422);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"payload": {"data": "payload must be a dictionary"}})
    );
    let (status, text) = w.post(
        "/ping",
        &json!({"auth_data": auth, "payload": {}, "session_id": "nosuchsession"}),
    );
    assert_eq!(
        (status, text.as_str()),
        (410, r#"{"error":"invalid session"}"#)
    );
    let (status, text) = w.post("/ping", &json!({"auth_data": auth, "payload": {}}));
    assert_eq!((status, text.as_str()), (200, r#"{"result":{"ok":true}}"#));
}

#[test]
fn malformed_creates_are_422_and_store_nothing() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let auth = signed_auth(&w.url, 1, 100);
    let mut string_cost = auth.clone();
    string_cost["cost"] = json!("100");
    let mut no_url = auth.clone();
    no_url.as_object_mut().unwrap().remove("url");
    let mut float_idx = auth.clone();
    float_idx["request_idx"] = json!(1.5);
    let cases = [
        (json!([]), "body"),
        (json!("just a string"), "body"),
        (json!(3), "body"),
        (json!({"payload": {}}), "auth_data"),
        (json!({"auth_data": null, "payload": {}}), "auth_data"),
        (json!({"auth_data": [1], "payload": {}}), "auth_data"),
        (
            json!({"auth_data": no_url, "payload": {}}),
            "auth_data: missing parameter url",
        ),
        (
            json!({"auth_data": string_cost, "payload": {}}),
            "auth_data.cost",
        ),
        (
            json!({"auth_data": float_idx, "payload": {}}),
            "auth_data.request_idx",
        ),
        (json!({"auth_data": auth}), "payload"),
        (json!({"auth_data": auth, "payload": null}), "payload"),
        (
            json!({"auth_data": auth, "payload": {"lifetime": "soon"}}),
            "payload.lifetime",
        ),
        (
            json!({"auth_data": auth, "payload": {"lifetime": null}}),
            "payload.lifetime",
        ),
        (
            json!({"auth_data": auth, "payload": {"lifetime": -5}}),
            "payload.lifetime",
        ),
        (
            json!({"auth_data": auth, "payload": {"on_close_route": 5}}),
            "payload.on_close_route",
        ),
        (
            json!({"auth_data": auth, "payload": {"on_close_route": "ftp://x/y"}}),
            "payload.on_close_route",
        ),
    ];
    for (body, field) in cases {
        let (status, text) = w.post("/session/create", &body);
        assert_eq!(status, 422, "{body}: {text}");
        let message = error_of(&text);
        assert!(message.starts_with(field), "{body}: {message}");
    }
    let (status, text) = w.post_raw("/session/create", "{\"auth_data\":");
    assert_eq!(
        (status, text.as_str()),
        (422, r#"{"error":"invalid JSON"}"#)
    );
    // Nothing half-made is left: the single slot is free and nothing was reported.
    w.open(2, 30.0, json!({}));
    assert!(engine
        .statuses()
        .iter()
        .all(|s| s["cur_load"].as_f64() <= Some(100.0)));
}

#[test]
fn huge_bodies_unknown_routes_and_methods() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let huge = format!("{{\"payload\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    for path in ["/ping", "/session/create", "/session/end"] {
        let (status, text) = w.post_raw(path, huge.clone());
        assert_eq!(status, 413, "{path}");
        assert!(error_of(&text).contains("larger than"), "{text}");
    }
    let (status, text) = w.post("/nope", &json!({}));
    assert_eq!(status, 404);
    assert!(error_of(&text).contains("/nope"), "{text}");
    let resp = super::plain_client()
        .get(format!("{}/session/create", w.url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(resp.text().unwrap().contains("GET"));
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 1, 100), "payload": {}}),
    );
    assert_eq!(status, 200, "still serving after the bad input");
}

#[test]
fn slow_clients_do_not_block_others() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    // Half a request line, and a body that never comes.
    let mut stalled_headers = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    stalled_headers
        .write_all(b"POST /session/create HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut stalled_body = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    stalled_body
        .write_all(
            b"POST /session/create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"auth",
        )
        .unwrap();
    // Others are served meanwhile.
    w.open(1, 30.0, json!({}));
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 2, 100), "payload": {}}),
    );
    assert_eq!(status, 200);
    // The stalled body is answered 408 after the body timeout, not held forever.
    stalled_body
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stalled_body.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(stalled_headers);
}

/// Reads from `stream` until it closes (or `limit` passes); returns what it sent.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Result<String, String> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&all).into_owned()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            // A reset also ends the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(String::from_utf8_lossy(&all).into_owned())
            }
            Err(e) => return Err(format!("still open ({e}) after {limit:?}")),
        }
    }
}

#[test]
fn a_declared_oversized_body_is_refused_before_it_is_sent() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    // Headers only: the 413 must not wait for a body that never comes
    // (before: the worker waited for it and answered 408 after 10 s).
    let mut stream = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    stream
        .write_all(
            b"POST /session/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 2000000\r\n\r\n",
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 1048576 bytes"), "{answer}");
    // A client that does send its body (and only then reads) gets the 413
    // too, instead of a reset.
    let (status, _) = w.post_raw("/ping", "x".repeat(1_100_000));
    assert_eq!(status, 413);
}

#[test]
fn idle_and_trickling_connections_are_cut() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let port = w.port;
    let limit = Duration::from_secs(40);
    // Nothing sent at all.
    let silent = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        read_until_closed(&mut s, limit)
    });
    // One request answered, then idle on a kept-alive connection.
    let ping = json!({"auth_data": signed_auth(&w.url, 1, 100), "payload": {}}).to_string();
    let idle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = format!(
            "POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{ping}",
            ping.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        read_until_closed(&mut s, limit)
    });
    // Headers trickled a byte every 500 ms, forever.
    let trickle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nonblocking(false).unwrap();
        let started = std::time::Instant::now();
        for byte in b"POST /ping HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if s.write_all(&[*byte]).is_err() {
                return Ok(String::new());
            }
            std::thread::sleep(Duration::from_millis(500));
            if started.elapsed() > limit {
                return Err(format!("still open after {limit:?}"));
            }
        }
        unreachable!("the byte source is endless")
    });
    assert_eq!(
        silent.join().unwrap(),
        Ok(String::new()),
        "silent connection"
    );
    let answered = idle.join().unwrap().expect("idle connection");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    trickle.join().unwrap().expect("trickling connection");
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine).env("NULLWORKER_MAX_CONNECTIONS", "3"));
    wait_ready(&engine);
    let holders: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
            s.write_all(b"POST /ping HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // The kernel completes the handshake, but the worker does not take the
    // fourth connection while three are open.
    let ping = json!({"auth_data": signed_auth(&w.url, 1, 100), "payload": {}}).to_string();
    let mut waiting = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    let request = format!(
        "POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{ping}",
        ping.len()
    );
    waiting.write_all(request.as_bytes()).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 512];
    let early = waiting.read(&mut buf);
    assert!(
        early.is_err(),
        "answered beyond the cap: {:?}",
        early.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    // The control server has a cap of its own: the consumer still gets through.
    let (status, _) = w.release();
    assert_eq!(status, 200);
    // The holders leave: the waiting connection is taken and answered.
    drop(holders);
    let answer = read_until_closed(&mut waiting, Duration::from_secs(10)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
