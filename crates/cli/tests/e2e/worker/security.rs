//! Signatures and tokens: `/ping` and `/session/create` verify the engine's
//! signature (create too, unlike the reference), `auth_data.url` must be this
//! worker, `UNSECURED` turns checks off, the key is fetched with failover,
//! and `/pyworker/update` needs `MASTER_TOKEN`.

use std::time::Duration;

use serde_json::json;

use super::{sign, signed_auth, wait_ready, Worker, WorkerSpec, SOON};
use crate::common::fake_engine::{other_key, FakeEngine};
use crate::common::process::free_port;

#[test]
fn bad_signatures_are_refused_on_ping_and_create() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);

    let good = signed_auth(&w.url, 1, 100);
    let (status, text) = w.post(
        "/ping",
        &json!({"auth_data": good, "session_id": null, "payload": {}}),
    );
    assert_eq!((status, text.as_str()), (200, r#"{"result":{"ok":true}}"#));

    let mut tampered = good.clone();
    tampered["signature"] = json!(other_key().sign_url(&w.url));
    let mut garbage = good.clone();
    garbage["signature"] = json!("not base64 at all!");
    let mut wrong_url = good.clone();
    wrong_url["url"] = json!(format!("{}/", w.url.replace("127.0.0.1", "localhost")));
    for bad in [&tampered, &garbage, &wrong_url] {
        let (status, text) = w.post(
            "/ping",
            &json!({"auth_data": bad, "session_id": null, "payload": {}}),
        );
        assert_eq!((status, text.as_str()), (401, ""), "ping with {bad}");
        let (status, text) = w.post(
            "/session/create",
            &json!({"auth_data": bad, "payload": {"lifetime": 30}}),
        );
        assert_eq!(status, 401, "create with {bad}: {text}");
        assert!(text.contains("error"), "{text}");
    }
    // Nothing was stored: the one slot is still free. Nor counted: a
    // request that fails authentication has no effect at all (Q6 hardened).
    w.open(2, 30.0, json!({}));
    engine.wait_status("the session reported", SOON, |s| {
        s["working_request_idxs"] == json!([2])
    });
    assert!(
        engine
            .statuses()
            .iter()
            .all(|s| s["rej_load"].as_f64() == Some(0.0)),
        "{:?}",
        engine.statuses()
    );
    assert!(
        engine
            .delete_records()
            .iter()
            .all(|r| r["status"] != json!("Rejected")),
        "{:?}",
        engine.delete_records()
    );
}

#[test]
fn auth_data_for_another_worker_is_refused_unless_binding_is_off() {
    let engine = FakeEngine::start();
    let elsewhere = "http://203.0.113.7:40000";
    let foreign = json!({"endpoint": "e", "url": elsewhere, "cost": 100, "reqnum": 1,
                         "request_idx": 1, "signature": sign(elsewhere)});

    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": foreign, "payload": {}}),
    );
    assert_eq!(status, 401, "{text}");
    assert!(text.contains(elsewhere), "{text}");
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": foreign, "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 401);
    drop(w);

    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine).env("NULLWORKER_BIND_AUTH_URL", "false"));
    wait_ready(&engine);
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": foreign, "payload": {}}),
    );
    assert_eq!(status, 201, "{text}");
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": foreign, "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 200);
}

#[test]
fn unsecured_skips_checks_and_needs_no_key() {
    let engine = FakeEngine::start();
    engine.fail_pubkey(-1);
    let w = Worker::start(WorkerSpec::new(&engine).env("UNSECURED", "true"));
    wait_ready(&engine);
    let unsigned = json!({"endpoint": "e", "url": "http://elsewhere:1", "cost": 100, "reqnum": 1,
                          "request_idx": 1, "signature": ""});
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": unsigned, "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 200);
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": unsigned, "payload": {"lifetime": 5}}),
    );
    assert_eq!(status, 201, "{text}");
}

#[test]
fn unsecured_create_accepts_the_sdk_debug_shortcut_body() {
    // VAST_DEBUG_WORKER_URL makes the SDK send only `request_idx` and `url`.
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine).env("UNSECURED", "true"));
    wait_ready(&engine);
    let body = json!({"auth_data": {"request_idx": 1, "url": w.url}, "session_id": null,
                      "payload": {"lifetime": 60.0, "on_close_route": null, "on_close_payload": null}});
    let (status, text) = w.post("/session/create", &body);
    assert_eq!(status, 201, "{text}");
    // The session weighs the SDK's default cost of 100 in the next report.
    let report = engine.wait_status("the session in a report", SOON, |r| {
        r["num_requests_working"] == json!(1)
    });
    assert_eq!(report["cur_load"].as_f64(), Some(100.0), "{report}");
    assert_eq!(report["working_request_idxs"], json!([1]), "{report}");
}

#[test]
fn signed_create_needs_url_and_signature_only() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let minimal = json!({"url": w.url, "signature": sign(&w.url)});
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": minimal, "payload": {}}),
    );
    assert_eq!(status, 201, "{text}");
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": {"url": w.url, "request_idx": 2}, "payload": {}}),
    );
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("missing parameter signature"), "{text}");
}

#[test]
fn not_ready_until_the_key_is_loaded_and_key_fetch_fails_over() {
    let engine = FakeEngine::start();
    // First entry refuses connections; the engine fails the first three
    // fetches, so the key arrives after 1 + 2 + 4 s of backoff.
    engine.fail_pubkey(3);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let spec = WorkerSpec {
        report_addr: Some(format!("{dead},{}", engine.url())),
        ..WorkerSpec::new(&engine)
    };
    let w = Worker::start(spec);
    // Reports fail over to the second entry; not ready while the key is missing.
    let first = engine.wait_status("a first report", SOON, |_| true);
    assert_eq!(first["max_perf"], json!(0.0), "{first}");
    assert_eq!(first["loadtime"], json!(0.0));
    // Without the key nothing signed is accepted, and /release is refused.
    let (status, text) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 1, 100), "session_id": null, "payload": {}}),
    );
    assert_eq!((status, text.as_str()), (401, ""));
    let (status, text) = w.post(
        "/session/create",
        &json!({"auth_data": signed_auth(&w.url, 2, 100), "payload": {}}),
    );
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("public key is not loaded"), "{text}");
    let (status, body) = w.release();
    assert_eq!(
        (status, body),
        (
            503,
            json!({"released": false, "reason": "backend not ready"})
        )
    );
    engine.wait_status("a ready report", Duration::from_secs(30), |s| {
        s["max_perf"] == json!(100.0)
    });
    assert_eq!(engine.pubkey_requests(), 4);
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 3, 100), "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 200);
}

#[test]
fn pyworker_update_needs_the_master_token() {
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    let flag = w.dir.path().join("force_update");
    let client = super::plain_client();
    let url = format!("{}/pyworker/update", w.url);
    for auth in [None, Some("Bearer wrong"), Some("wrong")] {
        let mut req = client.post(&url);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.text().unwrap(), r#"{"error":"unauthorized"}"#);
    }
    assert!(!flag.exists());
    for auth in ["Bearer secret-token", "secret-token"] {
        let resp = client
            .post(&url)
            .header("authorization", auth)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().unwrap(), r#"{"ok":true}"#);
        assert!(flag.exists());
        std::fs::remove_file(&flag).unwrap();
    }
    drop(w);

    // With MASTER_TOKEN empty nobody is authorised (the reference lets everyone in).
    let w = Worker::start(WorkerSpec::new(&engine).env("MASTER_TOKEN", ""));
    let resp = client
        .post(format!("{}/pyworker/update", w.url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(!w.dir.path().join("force_update").exists());
}
