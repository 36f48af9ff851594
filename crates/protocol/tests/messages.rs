//! Wire shapes of the message types: what parses, what is written, and the
//! decisions the SDK and engine make from them.

use nullworker_protocol::*;
use serde_json::{json, Value};

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serialise")
}

#[test]
fn route_response_decides_by_url_key() {
    let ready = json!({"endpoint": "null-test", "url": "http://203.0.113.10:8000", "cost": 100,
        "reqnum": 42, "request_idx": 7, "signature": "c2ln", "__request_id": "abc", "extra": [1]});
    let parsed: RouteResponse = serde_json::from_value(ready.clone()).unwrap();
    let RouteResponse::Ready(r) = &parsed else {
        panic!("a reply with `url` is READY: {parsed:?}")
    };
    assert_eq!(r.url, "http://203.0.113.10:8000");
    assert_eq!(r.cost, 100.0);
    assert_eq!(r.request_id, "abc");
    assert_eq!(r.extra.get("extra"), Some(&json!([1])));
    assert_eq!(parsed.request_idx(), 7);
    // Lossless round trip, `cost` stays an integer.
    assert_eq!(to_value(&parsed), ready);

    let waiting = json!({"endpoint": "null-test", "request_idx": 7, "status": "WAITING"});
    let parsed: RouteResponse = serde_json::from_value(waiting.clone()).unwrap();
    assert!(matches!(parsed, RouteResponse::Waiting(_)), "{parsed:?}");
    assert_eq!(to_value(&parsed), waiting);
    assert!(
        to_value(&parsed).get("url").is_none(),
        "WAITING must never carry `url`"
    );

    // Extra keys in a WAITING reply do not make it READY.
    let waiting_extra =
        json!({"request_idx": 3, "status": "2 workers loading", "signature": "x", "reqnum": 1});
    assert!(matches!(
        RouteResponse::from_value(waiting_extra).unwrap(),
        RouteResponse::Waiting(_)
    ));

    // `url: null` counts as READY for the SDK; as a typed READY it is malformed.
    let null_url = json!({"endpoint": "e", "url": null, "request_idx": 1, "status": "x"});
    assert!(RouteResponse::from_value(null_url).is_err());

    // READY missing a required auth_data field is an error, not a silent WAITING.
    let incomplete = json!({"endpoint": "e", "url": "http://h:1", "request_idx": 1});
    assert!(serde_json::from_value::<RouteResponse>(incomplete).is_err());

    // The text form goes through the same decision.
    let text = r#"{"url": "http://h:1", "endpoint": "e", "cost": 2.5, "reqnum": 1, "request_idx": 2, "signature": "s"}"#;
    let parsed: RouteResponse = serde_json::from_str(text).unwrap();
    let RouteResponse::Ready(r) = parsed else {
        panic!("READY expected")
    };
    assert_eq!(r.cost, 2.5);
    assert_eq!(r.request_id, "", "`__request_id` is optional");
}

#[test]
fn cost_is_written_as_integer_when_integral() {
    let mut ready = RouteReady {
        endpoint: "e".into(),
        url: "http://h:1".into(),
        cost: 100.0,
        reqnum: 1,
        request_idx: 2,
        signature: "s".into(),
        request_id: "r".into(),
        extra: Default::default(),
    };
    assert_eq!(
        serde_json::to_string(&to_value(&ready)["cost"]).unwrap(),
        "100"
    );
    ready.cost = 0.5;
    assert_eq!(
        serde_json::to_string(&to_value(&ready)["cost"]).unwrap(),
        "0.5"
    );
    ready.cost = 1e300;
    assert!(
        to_value(&ready)["cost"].is_f64(),
        "beyond 2^53 stays a float"
    );
    ready.cost = -3.0;
    assert_eq!(to_value(&ready)["cost"], json!(-3));
}

#[test]
fn auth_data_required_fields_and_conversion() {
    assert_eq!(
        AuthData::REQUIRED_FIELDS,
        [
            "cost",
            "endpoint",
            "reqnum",
            "request_idx",
            "signature",
            "url"
        ]
    );
    let obj = json!({"cost": 1, "url": "u", "endpoint": "e"});
    assert_eq!(
        AuthData::missing_fields(obj.as_object().unwrap()),
        vec!["reqnum", "request_idx", "signature"]
    );
    let full = json!({"cost": 100, "endpoint": "null-test", "reqnum": 42, "request_idx": 7,
        "signature": "c2ln", "url": "http://203.0.113.10:8000", "__request_id": "abc"});
    assert!(AuthData::missing_fields(full.as_object().unwrap()).is_empty());
    let auth: AuthData = serde_json::from_value(full.clone()).unwrap();
    assert_eq!(auth.extra.get("__request_id"), Some(&json!("abc")));
    assert_eq!(to_value(&auth), full);

    let RouteResponse::Ready(ready) = RouteResponse::from_value(full.clone()).unwrap() else {
        panic!("READY expected")
    };
    assert_eq!(AuthData::from(ready), auth);
}

#[test]
fn route_request_matches_sdk_body() {
    let sdk = json!({"endpoint": "null-test", "api_key": "k", "cost": 100, "request_idx": 0, "replay_timeout": 60.0});
    let req: RouteRequest = serde_json::from_value(sdk).unwrap();
    assert_eq!(req.endpoint.as_deref(), Some("null-test"));
    assert_eq!(req.cost, Some(100.0));
    assert_eq!(req.request_idx, Some(0));
    assert_eq!(req.replay_timeout, Some(REPLAY_TIMEOUT));
    let by_id: RouteRequest = serde_json::from_value(json!({"endpoint_id": 5})).unwrap();
    assert_eq!(by_id.endpoint_id, Some(5));
    assert_eq!(to_value(&RouteRequest::default()), json!({}));
}

#[test]
fn delete_requests_body_accepts_both_shapes() {
    let v191 = json!({"worker_id": 123, "mtoken": "t", "requests": [
        {"request_idx": 7, "success": true, "status": "Success", "entered_queue_at": 1760000000.1,
         "work_started_at": 1760000000.1, "work_completed_at": 1760000060.4},
        {"request_idx": 8, "success": false, "status": "Rejected", "entered_queue_at": 1.0,
         "work_started_at": 0.0, "work_completed_at": 0.0}]});
    let body: DeleteRequestsBody = serde_json::from_value(v191.clone()).unwrap();
    assert!(matches!(body, DeleteRequestsBody::V191(_)), "{body:?}");
    assert_eq!(body.worker_id(), 123);
    assert_eq!(body.mtoken(), "t");
    let records = body.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].status, DeleteRequestStatus::Rejected);
    assert_eq!(to_value(&body), v191);

    let legacy = json!({"worker_id": 9, "mtoken": "m", "request_idxs": [1, 2], "success": false});
    let body: DeleteRequestsBody = serde_json::from_value(legacy.clone()).unwrap();
    assert!(
        matches!(body, DeleteRequestsBody::Legacy { .. }),
        "{body:?}"
    );
    assert_eq!(body.worker_id(), 9);
    let records = body.records();
    assert_eq!(
        records.iter().map(|r| r.request_idx).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(records
        .iter()
        .all(|r| !r.success && r.status == DeleteRequestStatus::Error));
    assert_eq!(to_value(&body), legacy);

    let err = serde_json::from_value::<DeleteRequestsBody>(json!({"worker_id": 1})).unwrap_err();
    assert!(err.to_string().contains("request_idxs"), "{err}");
    let err = serde_json::from_value::<DeleteRequestsBody>(json!({"requests": []})).unwrap_err();
    assert!(err.to_string().contains("worker_id"), "{err}");
    assert!(serde_json::from_value::<DeleteRequestsBody>(json!([1])).is_err());
    // Also through text, as an HTTP body arrives.
    let body: DeleteRequestsBody =
        serde_json::from_str(r#"{"worker_id": 2, "request_idxs": [], "success": true}"#).unwrap();
    assert!(body.records().is_empty());
    assert!(serde_json::from_value::<DeleteRequestsBody>(
        json!({"worker_id": 1, "requests": [{"request_idx": 1, "success": true, "status": "Done"}]})
    )
    .is_err());
}

#[test]
fn delete_status_success_flags() {
    use DeleteRequestStatus::*;
    assert!(Success.success() && Cancelled.success());
    assert!(!Error.success() && !Rejected.success());
    let rec = DeleteRecord::new(4, Cancelled, 1.0, 0.0, 0.0);
    assert!(rec.success);
    assert_eq!(to_value(&rec)["status"], json!("Cancelled"));
}

#[test]
fn worker_status_parses_observed_reports() {
    // Integers where floats are declared, as the reference writes them.
    let report = json!({"id": 5, "mtoken": "m", "version": "1.1.0", "loadtime": 0.022, "cur_load": 100,
        "rej_load": 0, "new_load": 200.0, "error_msg": "", "max_perf": 100.0, "cur_perf": 0,
        "cur_capacity": 0, "max_capacity": 0, "num_requests_working": 1, "num_requests_recieved": 3,
        "additional_disk_usage": 0.0, "disk_usage": 12.5, "working_request_idxs": [7],
        "url": "http://203.0.113.10:8000"});
    let status: WorkerStatus = serde_json::from_value(report).unwrap();
    assert_eq!(status.cur_load, 100.0);
    assert_eq!(status.num_requests_recieved, 3);
    assert_eq!(status.disk_usage, Some(12.5));
    assert_eq!(status.working_request_idxs, vec![7]);

    // [git] reports lack `disk_usage`; it is then not written back either.
    let status: WorkerStatus =
        serde_json::from_value(json!({"id": 1, "version": FRAMEWORK_VERSION})).unwrap();
    assert_eq!(status.disk_usage, None);
    let v = to_value(&status);
    assert!(v.get("disk_usage").is_none());
    assert_eq!(v["num_requests_recieved"], json!(0));
    assert_eq!(v.as_object().unwrap().len(), 17);
}

#[test]
fn session_api_shapes() {
    let create = HandlerRequest {
        auth_data: json!({"url": "u"}),
        payload: to_value(&SessionCreatePayload {
            lifetime: Some(DEFAULT_SESSION_LIFETIME),
            ..Default::default()
        }),
        session_id: None,
    };
    assert_eq!(
        to_value(&create),
        json!({"auth_data": {"url": "u"}, "session_id": null,
               "payload": {"lifetime": 60.0, "on_close_route": null, "on_close_payload": null}})
    );
    let payload: SessionCreatePayload = serde_json::from_value(json!({})).unwrap();
    assert_eq!(payload.lifetime, None);

    let end: SessionEndRequest = serde_json::from_value(json!({"session_id": "abc"})).unwrap();
    assert_eq!(end.session_auth, None);
    let ended = SessionEndResponse {
        ended: true,
        removed_session: "abc".into(),
    };
    assert_eq!(
        to_value(&ended),
        json!({"ended": true, "removed_session": "abc"})
    );

    let info: SessionInfo =
        serde_json::from_value(json!({"session_id": "s", "auth_data": {}, "lifetime": 60,
        "expiration": 1.5, "created_at": 1.0, "on_close_route": null, "on_close_payload": null}))
        .unwrap();
    assert_eq!(info.lifetime, 60.0);
    assert_eq!(
        to_value(&ErrorBody::new("invalid session")),
        json!({"error": "invalid session"})
    );
    assert_eq!(to_value(&OkResponse { ok: false }), json!({"ok": false}));
}

#[test]
fn release_response_shapes() {
    assert_eq!(
        to_value(&ReleaseResponse::released(vec!["a".into()])),
        json!({"released": true, "session_ids": ["a"]})
    );
    assert_eq!(
        to_value(&ReleaseResponse::not_released(
            ReleaseResponse::REASON_NO_SESSION
        )),
        json!({"released": false, "reason": "no active session"})
    );
    let parsed: ReleaseResponse =
        serde_json::from_value(json!({"released": false, "reason": "backend not ready"})).unwrap();
    assert_eq!(
        parsed,
        ReleaseResponse::not_released(ReleaseResponse::REASON_NOT_READY)
    );
}

#[test]
fn session_status_response_shapes() {
    let held = SessionStatusResponse::held("abc".into(), 1_764_500_000.125, 1_764_500_060.0, 1);
    assert_eq!(
        to_value(&held),
        json!({"held": true, "session_id": "abc", "since": 1_764_500_000.125,
               "expiration": 1_764_500_060.0, "open_sessions": 1})
    );
    assert_eq!(
        serde_json::from_value::<SessionStatusResponse>(to_value(&held)).unwrap(),
        held
    );
    assert_eq!(
        to_value(&SessionStatusResponse::not_held()),
        json!({"held": false, "open_sessions": 0})
    );
    let parsed: SessionStatusResponse = serde_json::from_value(json!({"held": false})).unwrap();
    assert_eq!(parsed, SessionStatusResponse::not_held());
}

#[test]
fn endpoint_worker_defaults() {
    let w: EndpointWorker = serde_json::from_value(json!({"id": 3})).unwrap();
    assert_eq!(w.status, "UNKNOWN");
    assert_eq!(w.cur_load, 0.0);
    assert!(serde_json::from_value::<EndpointWorker>(json!({"status": "IDLE"})).is_err());
}

#[test]
fn endpoint_params_and_records() {
    let p: EndpointParams =
        serde_json::from_value(json!({"endpoint_name": "null-test", "min_workers": 0,
        "target_util": 1.0, "min_load": 0, "max_queue_time": 1, "target_queue_time": 0.5,
        "inactivity_timeout": 10, "endpoint_state": "suspended", "client_id": "me"}))
        .unwrap();
    assert_eq!(p.cold_workers, Some(0));
    assert_eq!(p.endpoint_state, Some(EndpointState::Suspended));
    assert_eq!(p.inactivity_timeout, Some(10.0));
    let v = to_value(&p);
    assert_eq!(v["cold_workers"], json!(0));
    assert!(
        v.get("max_workers").is_none(),
        "unset parameters are not written"
    );
    assert!(serde_json::from_value::<EndpointParams>(json!({"endpoint_state": "paused"})).is_err());
    assert_eq!(
        "stopped".parse::<EndpointState>(),
        Ok(EndpointState::Stopped)
    );
    assert!("Active"
        .parse::<EndpointState>()
        .unwrap_err()
        .to_string()
        .contains("\"Active\""));

    let rec: EndpointRecord =
        serde_json::from_value(json!({"id": 1, "endpoint_name": "e", "api_key": "k",
        "user_id": 2, "created_at": 1700000000.5}))
        .unwrap();
    assert_eq!(rec.created_at, 1700000000.5);
    let iso: EndpointRecord =
        serde_json::from_value(json!({"id": 1, "endpoint_name": "e", "api_key": "k",
        "user_id": 2, "created_at": "2025-01-01T00:00:00Z"}))
        .unwrap();
    assert_eq!(iso.created_at, 0.0);
    assert!(
        serde_json::from_value::<EndpointRecord>(
            json!({"id": 1, "endpoint_name": "e", "api_key": "k",
        "user_id": 2})
        )
        .is_err(),
        "created_at is required, as for the SDK"
    );
    let v = to_value(&ApiList::ok(vec![rec]));
    assert_eq!(v["success"], json!(true));
    let item = &v["results"][0];
    for key in [
        "cold_workers",
        "max_workers",
        "min_load",
        "min_cold_load",
        "target_util",
        "cold_mult",
        "max_queue_time",
        "target_queue_time",
        "endpoint_state",
        "inactivity_timeout",
        "auto_delete_in_seconds",
        "auto_delete_due_24h",
    ] {
        assert!(
            item.get(key).is_some(),
            "endpoint record must carry `{key}`"
        );
    }
    assert_eq!(
        to_value(&ApiResult::ok(5)),
        json!({"success": true, "result": 5})
    );
    assert_eq!(to_value(&ApiOk::OK), json!({"success": true}));
    assert_eq!(
        to_value(&ApiError::new("not_found", "no such endpoint")),
        json!({"success": false, "error": "not_found", "msg": "no such endpoint"})
    );
    assert_eq!(
        to_value(&RouteError {
            error_msg: "x".into()
        }),
        json!({"error_msg": "x"})
    );
}

/// Every number in `value`, with its path, for "nothing is null" checks.
fn nulls(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Null => out.push(path.to_owned()),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                nulls(v, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                nulls(v, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn non_finite_numbers_are_never_written_as_null() {
    // serde_json writes NaN and infinities as `null`; an engine answers a
    // report carrying `"cur_load": null` with 400, forever.
    let bad = [f64::INFINITY, f64::NEG_INFINITY, f64::NAN];
    for x in bad {
        let status = WorkerStatus {
            id: 1,
            loadtime: x,
            cur_load: x,
            rej_load: x,
            new_load: x,
            max_perf: x,
            cur_perf: x,
            cur_capacity: x,
            max_capacity: x,
            additional_disk_usage: x,
            disk_usage: Some(x),
            ..WorkerStatus::default()
        };
        let record = DeleteRecord::new(1, DeleteRequestStatus::Success, x, x, x);
        let info = SessionInfo {
            session_id: "s".into(),
            auth_data: json!({}),
            lifetime: x,
            expiration: x,
            created_at: x,
            on_close_route: None,
            on_close_payload: None,
        };
        let created = SessionCreateResponse {
            session_id: "s".into(),
            expiration: x,
        };
        let held = SessionStatusResponse::held("s".into(), x, x, 1);
        let route = RouteRequest {
            cost: Some(x),
            replay_timeout: Some(x),
            latency: Some(x),
            ..RouteRequest::default()
        };
        let ready = RouteReady {
            endpoint: "e".into(),
            url: "u".into(),
            cost: x,
            reqnum: 1,
            request_idx: 1,
            signature: "s".into(),
            request_id: String::new(),
            extra: Default::default(),
        };
        let values = [
            to_value(&status),
            to_value(&record),
            to_value(&info),
            to_value(&created),
            to_value(&held),
            to_value(&route),
            to_value(&ready),
        ];
        for value in values {
            let mut found = Vec::new();
            // `on_close_*` are null by design.
            let mut value = value;
            if let Some(obj) = value.as_object_mut() {
                obj.remove("on_close_route");
                obj.remove("on_close_payload");
            }
            nulls(&value, "$", &mut found);
            assert!(found.is_empty(), "{x}: null at {found:?} in {value}");
        }
        // Saturated, not zeroed, for infinities; NaN becomes 0.
        let written = to_value(&status)["cur_load"].as_f64().unwrap();
        match x {
            x if x.is_nan() => assert_eq!(written, 0.0),
            x if x > 0.0 => assert_eq!(written, f64::MAX),
            _ => assert_eq!(written, f64::MIN),
        }
    }
    // Finite values are untouched, and `None` stays absent or null.
    let status = WorkerStatus {
        id: 1,
        cur_load: 250.5,
        ..WorkerStatus::default()
    };
    let value = to_value(&status);
    assert_eq!(value["cur_load"], json!(250.5));
    assert!(value.get("disk_usage").is_none());
    let parsed: WorkerStatus = serde_json::from_value(value).unwrap();
    assert_eq!(parsed, status);
    assert_eq!(
        to_value(&SessionStatusResponse::not_held()),
        json!({"held": false, "open_sessions": 0})
    );
    let parsed: SessionStatusResponse =
        serde_json::from_value(json!({"held": false, "open_sessions": 0})).unwrap();
    assert_eq!(parsed.expiration, None);
}
