//! Numbers from the wire are bounded, reports stay valid, and nothing an
//! unauthenticated peer sends has an effect: huge `cost` and `lifetime` are
//! refused, expirations are capped, a report the engine refuses does not
//! wedge reporting, and a request that fails authentication neither extends
//! a session nor moves the reported load.

use std::time::Duration;

use nullworker_protocol::{MAX_COST, MAX_SESSION_AHEAD, MAX_SESSION_LIFETIME};
use serde_json::{json, Value};

use super::{epoch_now, signed_auth, wait_ready, Worker, WorkerSpec, SOON};
use crate::common::fake_engine::{other_key, FakeEngine};

/// Whether a report carries a `null` where the engine expects a value (as
/// `serde_json` writes an infinite load); the engine answers such a report 400.
fn has_null(report: &Value) -> bool {
    report
        .as_object()
        .is_some_and(|fields| fields.values().any(Value::is_null))
}

fn error_of(text: &str) -> String {
    serde_json::from_str::<Value>(text).unwrap()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn create(w: &Worker, auth: &Value, lifetime: Value) -> (u16, String) {
    w.post(
        "/session/create",
        &json!({"auth_data": auth, "payload": {"lifetime": lifetime}, "session_id": null}),
    )
}

#[test]
fn huge_costs_and_lifetimes_are_refused_and_reports_stay_valid() {
    // Found: `cost: 1e308` on a few 429'd creates pushed the load totals to
    // infinity, the reports carried null, the engine answered 400 forever and
    // declared the worker stale. `lifetime: 1.7e308` made `expiration` null.
    let engine = FakeEngine::start();
    engine.refuse_statuses_when(has_null);
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);

    let mut huge = signed_auth(&w.url, 1, 100);
    for cost in [json!(1e308), json!(MAX_COST * 2.0), json!(-1)] {
        huge["cost"] = cost.clone();
        let (status, text) = create(&w, &huge, json!(60));
        assert_eq!(status, 422, "cost {cost}: {text}");
        let message = error_of(&text);
        assert!(
            message.starts_with("auth_data.cost") && message.contains("1e9"),
            "cost {cost}: {message}"
        );
    }
    let auth = signed_auth(&w.url, 2, 100);
    for lifetime in [json!(1.7e308), json!(MAX_SESSION_LIFETIME + 1.0), json!(0)] {
        let (status, text) = create(&w, &auth, lifetime.clone());
        assert_eq!(status, 422, "lifetime {lifetime}: {text}");
        let message = error_of(&text);
        assert!(
            message.starts_with("payload.lifetime") && message.contains("2592000"),
            "lifetime {lifetime}: {message}"
        );
    }

    // At the caps: accepted, and five creates refused on the full worker
    // are counted at the largest cost, finitely.
    let mut biggest = signed_auth(&w.url, 3, 100);
    biggest["cost"] = json!(MAX_COST);
    let (status, text) = create(&w, &biggest, json!(MAX_SESSION_LIFETIME));
    assert_eq!(status, 201, "{text}");
    for idx in 4..9 {
        let mut refused = signed_auth(&w.url, idx, 100);
        refused["cost"] = json!(MAX_COST);
        let (status, _) = create(&w, &refused, json!(60));
        assert_eq!(status, 429);
    }
    // rej_load is per interval: the refusals may span several reports.
    crate::common::process::wait_for("the refused creates in the reports", SOON, || {
        let total: f64 = engine
            .statuses()
            .iter()
            .filter_map(|s| s["rej_load"].as_f64())
            .sum();
        (total == 5.0 * MAX_COST).then_some(())
    });
    let last = engine.statuses().pop().unwrap();
    assert_eq!(last["cur_load"].as_f64(), Some(MAX_COST), "{last}");
    assert!(
        engine.refused_statuses().is_empty(),
        "{:?}",
        engine.refused_statuses()
    );
}

#[test]
fn expirations_are_capped_from_now() {
    // Each authenticated request extends a session by its lifetime, but never
    // beyond 30 days from now (before: 30 days + two pings = 90 days).
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let (id, auth) = w.open(1, MAX_SESSION_LIFETIME, json!({}));
    for _ in 0..2 {
        let (status, _) = w.post(
            "/ping",
            &json!({"auth_data": auth, "session_id": id, "payload": {}}),
        );
        assert_eq!(status, 200);
    }
    let (status, text) = w.post(
        "/session/get",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200, "{text}");
    let info: Value = serde_json::from_str(&text).unwrap();
    let expiration = info["expiration"]
        .as_f64()
        .unwrap_or_else(|| panic!("expiration is not a number: {info}"));
    assert!(
        expiration <= epoch_now() + MAX_SESSION_AHEAD,
        "expiration {expiration} is more than 30 days ahead: {info}"
    );
    assert!(
        expiration > epoch_now() + MAX_SESSION_AHEAD - 60.0,
        "{info}"
    );
    assert_eq!(info["lifetime"].as_f64(), Some(MAX_SESSION_LIFETIME));
}

#[test]
fn a_report_the_engine_refuses_does_not_wedge_reporting() {
    // An engine that refuses a report (400) refuses the same totals again:
    // the worker drops them instead of retrying them forever, and its next
    // reports are taken, so it is not declared stale.
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    engine.refuse_statuses_when(|s| s["cur_perf"].as_f64() >= Some(100.0));
    let taken = engine.statuses().len();

    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": signed_auth(&w.url, 5, 100), "session_id": null, "payload": {}}),
    );
    assert_eq!(status, 200);
    crate::common::process::wait_for("the refused report", SOON, || {
        (!engine.refused_statuses().is_empty()).then_some(())
    });
    // The next report comes without the refused totals and is taken; the
    // cumulative count still shows the ping.
    let next = engine.wait_status_after(
        taken,
        "a report taken after the refusal",
        Duration::from_secs(30),
        |s| s["num_requests_recieved"] == json!(1),
    );
    assert_eq!(next["cur_perf"], json!(0.0), "{next}");
    assert_eq!(next["new_load"], json!(0.0), "{next}");
    assert_eq!(
        engine.refused_statuses().len(),
        1,
        "the refused body was sent again: {:?}",
        engine.refused_statuses()
    );
    assert!(w.log().contains("refused"), "{}", w.log());
}

#[test]
fn a_request_that_fails_authentication_has_no_effect() {
    // Found: 100 pings with a known session_id and a bogus signature each got
    // 401 and each extended the session (2 s became 202 s). Quirk Q6
    // hardened: no extension, no rejected load, no delete record.
    let engine = FakeEngine::start();
    let w = Worker::start(WorkerSpec::new(&engine));
    wait_ready(&engine);
    let (id, auth) = w.open(21, 30.0, json!({}));
    let expiration = |w: &Worker| {
        let (status, text) = w.post(
            "/session/get",
            &json!({"session_id": id, "session_auth": auth}),
        );
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["expiration"]
            .as_f64()
            .unwrap()
    };
    let first = expiration(&w);

    let mut forged = auth.clone();
    forged["signature"] = json!(other_key().sign_url(&w.url));
    for _ in 0..100 {
        let (status, text) = w.post(
            "/ping",
            &json!({"auth_data": forged, "session_id": id, "payload": {}}),
        );
        assert_eq!((status, text.as_str()), (401, ""));
    }
    assert_eq!(expiration(&w), first, "a refused ping extended the session");
    let mut forged_create = signed_auth(&w.url, 22, 100);
    forged_create["signature"] = forged["signature"].clone();
    let (status, _) = create(&w, &forged_create, json!(60));
    assert_eq!(status, 401);

    // An authenticated ping extends it by one lifetime, additively.
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": auth, "session_id": id, "payload": {}}),
    );
    assert_eq!(status, 200);
    let extended = expiration(&w);
    assert!(
        (extended - (first + 30.0)).abs() < 1e-6,
        "expiration {first} -> {extended}, expected +30"
    );
    // An unknown session id is 410 and extends nothing.
    let (status, _) = w.post(
        "/ping",
        &json!({"auth_data": auth, "session_id": "AAAAAAAAAAAAA", "payload": {}}),
    );
    assert_eq!(status, 410);
    assert_eq!(expiration(&w), extended);

    // The engine hears of the accepted ping and of nothing refused.
    let report = engine.wait_status("the accepted ping in a report", SOON, |s| {
        s["cur_perf"] == json!(100.0)
    });
    assert_eq!(report["num_requests_recieved"], json!(1), "{report}");
    assert_eq!(report["working_request_idxs"], json!([21]), "{report}");
    let (status, _) = w.post(
        "/session/end",
        &json!({"session_id": id, "session_auth": auth}),
    );
    assert_eq!(status, 200);
    engine.wait_delete("the session's Success record", SOON, |r| {
        r["request_idx"] == json!(21) && r["status"] == json!("Success")
    });
    assert!(
        engine
            .statuses()
            .iter()
            .all(|s| s["rej_load"].as_f64() == Some(0.0)),
        "refused requests were counted: {:?}",
        engine.statuses()
    );
    assert_eq!(
        engine.delete_records().len(),
        1,
        "{:?}",
        engine.delete_records()
    );
}
