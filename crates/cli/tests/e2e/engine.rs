//! End-to-end tests of `nullworker engine` with real worker processes
//! (`nullworker serve`): scaling from zero and back, concurrency, the
//! `max_workers` cap, replacement of broken workers, the spawn backoff,
//! control ports, restarts and bad input (the `nullworker endpoint` CLI is in
//! `endpoint_cli`).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::engine::{alive, EngineGuard, TestEndpoint, ACCOUNT_KEY};
use crate::common::process::{free_port, nullworker, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Opens a session on the worker of a READY answer; returns its id.
fn open_session(ready: &Value) -> String {
    let url = ready["url"].as_str().expect("url");
    let resp = http()
        .post(format!("{url}/session/create"))
        .json(&json!({"auth_data": ready, "payload": {"lifetime": 300}, "session_id": null}))
        .send()
        .expect("session/create");
    assert_eq!(resp.status().as_u16(), 201, "session/create");
    let v: Value = resp.json().expect("json");
    v["session_id"].as_str().expect("session_id").to_owned()
}

fn end_session(ready: &Value, session_id: &str) {
    let url = ready["url"].as_str().expect("url");
    let resp = http()
        .post(format!("{url}/session/end"))
        .json(&json!({"session_id": session_id, "session_auth": ready}))
        .send()
        .expect("session/end");
    assert_eq!(resp.status().as_u16(), 200, "session/end");
}

/// Workers that exist (not being destroyed).
fn live_workers(engine: &EngineGuard, ep: &TestEndpoint) -> Vec<Value> {
    engine
        .workers(ep)
        .into_iter()
        .filter(|w| w["status"] != "DESTROYING")
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Local addresses listening on TCP `port`, from `/proc/net/tcp` and
/// `/proc/net/tcp6` (IPv6 ones as `v6:<hex>`).
fn listeners_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Column 3 is the state; 0A is LISTEN.
            if cols.len() < 4 || cols[3] != "0A" {
                continue;
            }
            let Some((addr, p)) = cols[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            found.push(if v6 {
                format!("v6:{addr}")
            } else {
                // Written in host (little-endian) byte order.
                let n = u32::from_str_radix(addr, 16).unwrap_or(0);
                std::net::Ipv4Addr::from(n.swap_bytes()).to_string()
            });
        }
    }
    found
}

#[test]
fn engine_scales_from_zero_holds_a_session_and_returns_to_zero() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("zero", json!({"inactivity_timeout": 2}));
    assert!(engine.workers(&ep).is_empty());

    // The engine holds the first answer while it starts a worker, so a
    // request at zero workers may be READY at once; either way it keeps
    // its index until READY.
    let first = engine.route(&ep, 0, 100.0);
    assert!(first["request_idx"].as_u64().unwrap() > 0);
    let ready = if first.get("url").is_some() {
        first.clone()
    } else {
        assert!(
            first["status"].as_str().unwrap().starts_with("waiting"),
            "{first}"
        );
        engine.poll_until_ready(&ep, first["request_idx"].as_u64().unwrap(), LONG)
    };
    assert_eq!(
        ready["request_idx"], first["request_idx"],
        "the request keeps its index"
    );
    for key in [
        "endpoint",
        "url",
        "cost",
        "reqnum",
        "request_idx",
        "signature",
    ] {
        assert!(ready.get(key).is_some(), "READY lacks {key}: {ready}");
    }
    let session = open_session(&ready);
    let workers = live_workers(&engine, &ep);
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["url"], ready["url"]);
    // The worker binds what its URL says: loopback only.
    let url = ready["url"].as_str().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(listeners_on(port), vec!["127.0.0.1".to_owned()], "{url}");
    // Each worker's control port is listed, and it is the worker's.
    let control_port = workers[0]["control_port"].as_u64().expect("control_port");
    let detail = engine.workers_detail(&ep);
    assert_eq!(detail[0]["control_port"].as_u64(), Some(control_port));
    let resp = http()
        .get(format!("http://127.0.0.1:{control_port}/health"))
        .send()
        .expect("control port health");
    assert!(resp.status().is_success(), "{}", resp.status());
    wait_for("the worker to report the session", LONG, || {
        let w = engine.workers(&ep);
        (w.len() == 1 && w[0]["cur_load"].as_f64() == Some(100.0) && w[0]["reqs_working"] == 1)
            .then_some(())
    });

    // The worker's /ping accepts the engine's signature.
    let resp = http()
        .post(format!("{}/ping", ready["url"].as_str().unwrap()))
        .json(&json!({"auth_data": ready, "payload": {}, "session_id": session}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    end_session(&ready, &session);
    wait_for("scale to zero after inactivity_timeout", LONG, || {
        engine.workers(&ep).is_empty().then_some(())
    });
    let m = engine.metrics();
    assert!(
        metric(
            &m,
            "nullworker_scale_actions_total{action=\"create\",reason=\"scale_from_zero\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "nullworker_wait_to_ready_seconds_count") >= 1.0,
        "{m}"
    );
}

#[test]
fn engine_three_concurrent_sessions_get_three_workers() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("three", json!({"inactivity_timeout": 2}));
    // Three clients poll concurrently until each holds a session.
    let mut idxs = [0u64; 3];
    let mut held: Vec<Option<(Value, String)>> = vec![None, None, None];
    wait_for("three sessions held", LONG, || {
        for i in 0..3 {
            if held[i].is_some() {
                continue;
            }
            let v = engine.route(&ep, idxs[i], 100.0);
            idxs[i] = v["request_idx"].as_u64().unwrap();
            if v.get("url").is_some() {
                let sid = open_session(&v);
                held[i] = Some((v, sid));
            }
        }
        if held.iter().all(Option::is_some) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    let mut urls: Vec<String> = held
        .iter()
        .map(|h| h.as_ref().unwrap().0["url"].as_str().unwrap().to_owned())
        .collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 3, "each session on its own worker: {urls:?}");
    assert_eq!(live_workers(&engine, &ep).len(), 3);
    let creates = metric(
        &engine.metrics(),
        "nullworker_scale_actions_total{action=\"create\"",
    );
    assert_eq!(creates, 3.0, "exactly three workers were created");

    for (ready, sid) in held.iter().flatten() {
        end_session(ready, sid);
    }
    wait_for("scale to zero", LONG, || {
        engine.workers(&ep).is_empty().then_some(())
    });
}

#[test]
fn engine_max_workers_makes_requests_wait_until_a_session_ends() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("capped", json!({"max_workers": 1}));
    let first = engine.route_until_ready(&ep, LONG);
    let session = open_session(&first);
    wait_for("the worker to report the session", LONG, || {
        let w = engine.workers(&ep);
        (w.len() == 1 && w[0]["cur_load"].as_f64() == Some(100.0)).then_some(())
    });
    // A second session waits: the only worker is full and no other may start.
    let mut idx = 0;
    for _ in 0..3 {
        let v = engine.route(&ep, idx, 100.0);
        assert!(
            v.get("url").is_none(),
            "max_workers=1 is full, expected WAITING: {v}"
        );
        idx = v["request_idx"].as_u64().unwrap();
        assert!(live_workers(&engine, &ep).len() <= 1);
    }
    end_session(&first, &session);
    let second = wait_for("READY once the session ended", LONG, || {
        let v = engine.route(&ep, idx, 100.0);
        if v.get("url").is_some() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    assert_eq!(second["url"], first["url"]);
    assert_eq!(
        second["request_idx"].as_u64(),
        Some(idx),
        "the waiting request keeps its index"
    );
}

#[test]
fn engine_replaces_a_killed_worker() {
    let engine = EngineGuard::start();
    // Keep one worker up with no load (never scale to zero).
    let ep =
        engine.create_seed_endpoint("killed", json!({"inactivity_timeout": -1, "min_load": 100}));
    let (old_id, pid, old_url) = wait_for("an IDLE worker", LONG, || {
        engine
            .workers_detail(&ep)
            .into_iter()
            .find(|w| w["status"] == "IDLE")
            .map(|w| {
                let url = w["url"].as_str().expect("url").to_owned();
                (w["id"].as_i64().unwrap(), w["pid"].as_i64().unwrap(), url)
            })
    });
    // SAFETY: kill(2) on the worker process the engine started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // Once the engine has seen the exit, the dead worker is never routed to
    // again (the SDK would retry a dead URL in a hot loop): the next READY
    // names the replacement, although the dead one was idle and first in line.
    wait_for("the engine to see the exit", LONG, || {
        let exits = metric(
            &engine.metrics(),
            "nullworker_worker_exits_total{kind=\"unexpected\"}",
        );
        (exits >= 1.0).then_some(())
    });
    let ready = engine.route_until_ready(&ep, LONG);
    assert_ne!(ready["url"].as_str(), Some(old_url.as_str()), "{ready}");
    wait_for("a replacement worker", LONG, || {
        let ws = engine.workers_detail(&ep);
        let old_gone = ws.iter().all(|w| w["id"].as_i64() != Some(old_id));
        let new_idle = ws
            .iter()
            .any(|w| w["status"] == "IDLE" && w["id"].as_i64() != Some(old_id));
        (old_gone && new_idle).then_some(())
    });
    assert!(
        metric(
            &engine.metrics(),
            "nullworker_worker_exits_total{kind=\"unexpected\"}"
        ) >= 1.0
    );
}

#[test]
fn engine_replaces_a_worker_whose_consumer_health_fails() {
    let engine = EngineGuard::start();
    let health_port = free_port();
    // The consumer serves the health URL; max_workers 1 keeps the port unique.
    let ep = engine.create_seed_endpoint(
        "health",
        json!({
            "inactivity_timeout": -1,
            "min_load": 100,
            "max_workers": 1,
            "consumer_command": format!("exec python3 -m http.server {health_port} --bind 127.0.0.1"),
            "worker_env": {"BACKEND_HEALTH_URL": format!("http://127.0.0.1:{health_port}/")},
        }),
    );
    let (old_id, consumer_pid) = wait_for("an IDLE worker with its consumer", LONG, || {
        engine
            .workers_detail(&ep)
            .into_iter()
            .find(|w| w["status"] == "IDLE")
            .map(|w| {
                (
                    w["id"].as_i64().unwrap(),
                    w["consumer_pid"].as_i64().unwrap(),
                )
            })
    });
    assert!(alive(consumer_pid));
    // SAFETY: kill(2) on the consumer process the engine started.
    assert_eq!(unsafe { libc::kill(consumer_pid as i32, libc::SIGKILL) }, 0);
    // The worker's next health check (every 10 s) fails: ERROR, replaced.
    wait_for(
        "the broken worker to be replaced",
        Duration::from_secs(90),
        || {
            let ws = engine.workers_detail(&ep);
            let replaced = ws.iter().all(|w| w["id"].as_i64() != Some(old_id))
                && ws.iter().any(|w| w["status"] == "IDLE");
            replaced.then_some(())
        },
    );
    let m = engine.metrics();
    assert!(
        metric(
            &m,
            "nullworker_scale_actions_total{action=\"destroy\",reason=\"error_replaced\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[test]
fn each_consumer_gets_its_own_port_and_the_health_url_is_derived() {
    let engine = EngineGuard::start();
    // Two workers, each with a consumer serving its health check on the port
    // the engine gave it; a worker is ready only if its derived
    // BACKEND_HEALTH_URL reaches its own consumer.
    let consumer = "mkdir -p www && echo ok > www/healthz && cd www \
                    && exec python3 -m http.server \"$NULL_CONSUMER_PORT\" --bind 127.0.0.1";
    let ep = engine.create_seed_endpoint(
        "consumer-ports",
        json!({
            "inactivity_timeout": -1,
            "min_load": 200,
            "max_workers": 2,
            "consumer_command": consumer,
            "consumer_health_path": "/healthz",
        }),
    );
    let (status, v) = engine.api(Method::GET, &format!("/api/v0/endptjobs/{}/", ep.id), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["result"]["consumer_health_path"],
        json!("/healthz"),
        "{v}"
    );
    let workers = wait_for("two IDLE workers with their consumers", LONG, || {
        let ws = engine.workers_detail(&ep);
        (ws.len() == 2 && ws.iter().all(|w| w["status"] == "IDLE")).then_some(ws)
    });
    let mut ports = Vec::new();
    for w in &workers {
        let consumer_port = w["consumer_port"].as_u64().expect("a consumer port");
        let control_port = w["control_port"].as_u64().expect("a control port");
        assert_ne!(consumer_port, control_port, "{w}");
        ports.extend([consumer_port, control_port]);
        // The consumer serves on the port it was given.
        let resp = http()
            .get(format!("http://127.0.0.1:{consumer_port}/healthz"))
            .send()
            .expect("the consumer's health endpoint");
        assert_eq!(resp.status().as_u16(), 200);
        // The worker was made ready by that consumer, not by its own stub.
        let log_path = engine
            .state_dir
            .join(format!("workers/{}/worker.log", w["id"].as_i64().unwrap()));
        let url = format!("http://127.0.0.1:{consumer_port}/healthz");
        wait_for("the health check of the consumer's URL", LONG, || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            (log.contains("consumer health check passed") && log.contains(&url)).then_some(())
        });
    }
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "ports shared: {ports:?}");

    // A bad path, or a path without a consumer, is refused naming the field.
    for body in [
        json!({"endpoint_name": "bad-path", "consumer_command": "true", "consumer_health_path": "healthz"}),
        json!({"endpoint_name": "no-consumer", "consumer_health_path": "/healthz"}),
        json!({"endpoint_name": "not-a-string", "consumer_command": "true", "consumer_health_path": 7}),
    ] {
        let (status, v) = engine.api(Method::POST, "/api/v0/endptjobs/", Some(body.clone()));
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["msg"].as_str().unwrap().contains("consumer_health_path"),
            "{body}: {v}"
        );
    }
}

/// The endpoint's `spawn_backoff` as `endpoint show` (GET endptjobs) gives it.
fn backoff(engine: &EngineGuard, ep: &TestEndpoint) -> Value {
    let (status, v) = engine.api(Method::GET, &format!("/api/v0/endptjobs/{}/", ep.id), None);
    assert_eq!(status, 200, "{v}");
    v["result"]["spawn_backoff"].clone()
}

#[test]
fn engine_relaunches_a_worker_whose_port_is_taken_without_backoff() {
    let engine = EngineGuard::start();
    // The worker's public port is held here, so the real worker cannot
    // bind it: it reports why and exits, as when another process takes a
    // port between the engine choosing it and the worker binding it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let mut env = serde_json::Map::new();
    env.insert("WORKER_PORT".into(), json!(port));
    env.insert(format!("VAST_TCP_PORT_{port}"), json!(port));
    let ep = engine.create_seed_endpoint(
        "taken",
        json!({"inactivity_timeout": -1, "worker_env": env}),
    );
    // Relaunched at once three times, then it counts as one failed launch.
    let b = wait_for("a failed launch", LONG, || {
        let b = backoff(&engine, &ep);
        (b["failures"].as_u64() == Some(1)).then_some(b)
    });
    assert_eq!(b["spawns"], json!(4), "{b}");
    let error = b["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("WORKER_PORT") && error.contains("address already in use"),
        "{b}"
    );
    drop(held);
}

#[test]
fn engine_backs_off_a_worker_command_that_exits_at_once() {
    let engine = EngineGuard::start();
    // One worker is always wanted; its command exits at once.
    let ep = engine.create_seed_endpoint(
        "crashing",
        json!({"inactivity_timeout": -1, "worker_command": "exit 3"}),
    );
    // Watch each failure: the time of the k-th and the delay it imposes.
    let mut seen: Vec<(f64, f64)> = Vec::new();
    wait_for("three failed launches", Duration::from_secs(120), || {
        let b = backoff(&engine, &ep);
        let failures = b["failures"].as_u64().unwrap_or(0) as usize;
        if failures > seen.len() {
            assert_eq!(failures, seen.len() + 1, "a failure was skipped: {b}");
            let at = b["last_failure_at"].as_f64().expect("last_failure_at");
            let delay = b["delay"].as_f64().expect("delay");
            assert_eq!(b["retry_at"].as_f64(), Some(at + delay), "{b}");
            // Launches are counted; none is made while held back.
            assert!(b["spawns"].as_u64().unwrap() <= failures as u64 + 1, "{b}");
            seen.push((at, delay));
        }
        (seen.len() >= 3).then_some(())
    });
    // The delay doubles, and the engine waited at least that long before
    // the next launch (a loaded machine only makes the gaps longer).
    let delays: Vec<f64> = seen.iter().map(|(_, d)| *d).collect();
    assert_eq!(delays, [1.0, 2.0, 4.0]);
    for k in 0..2 {
        let gap = seen[k + 1].0 - seen[k].0;
        assert!(
            gap >= seen[k].1,
            "launch {} came {gap} s after failure {k}",
            k + 2
        );
    }
    let m = engine.metrics();
    assert!(
        metric(
            &m,
            "nullworker_spawn_backoff_seconds{endpoint=\"crashing\"}"
        ) >= 4.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "nullworker_worker_spawn_failures_total{endpoint=\"crashing\"}"
        ) >= 3.0,
        "{m}"
    );
    // A working command: the next launch succeeds and clears the backoff.
    let (status, v) = engine.api(
        Method::PUT,
        &format!("/api/v0/endptjobs/{}/", ep.id),
        Some(json!({"worker_command": null})),
    );
    assert_eq!(status, 200, "{v}");
    wait_for(
        "a ready worker clears the backoff",
        Duration::from_secs(120),
        || {
            let idle = engine.workers(&ep).iter().any(|w| w["status"] == "IDLE");
            let b = backoff(&engine, &ep);
            (idle && b["failures"] == 0 && b["retry_at"].is_null()).then_some(())
        },
    );
}

#[test]
fn engine_restart_keeps_endpoints_and_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let (ep, account_key) = {
        let mut engine = EngineGuard::start_in(&dir, &[]);
        assert!(
            !engine.account_key.is_empty(),
            "a generated key is printed at first start: {:?}",
            engine.stdout
        );
        let ep = engine.create_seed_endpoint("kept", json!({}));
        let key = engine.account_key.clone();
        let status = engine.stop().expect("engine exits on SIGTERM");
        assert!(status.success(), "{status:?}");
        (ep, key)
    };
    // The files holding keys are readable by their owner only.
    for file in ["signing_key.pem", "engine.sqlite3"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "{file}"
        );
    }
    let mut engine = EngineGuard::start_in(&dir, &[]);
    assert!(
        engine
            .stdout
            .iter()
            .all(|l| !l.contains("generated account key")),
        "the account key is printed only once: {:?}",
        engine.stdout
    );
    engine.account_key = account_key;
    let (status, v) = engine.api(Method::GET, "/api/v0/endptjobs/?client_id=me", None);
    assert_eq!(status, 200);
    let found = &v["results"][0];
    assert_eq!(found["endpoint_name"], "kept");
    assert_eq!(found["api_key"], ep.api_key.as_str());
    assert_eq!(found["target_util"], 1.0);
    let ready = engine.route_until_ready(&ep, LONG);
    assert!(ready.get("url").is_some());
}

#[test]
fn engine_refuses_a_corrupt_state_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("engine.sqlite3"), vec![7u8; 4096]).unwrap();
    let out = nullworker()
        .args(["engine", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a readable nullworker state database"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.join("engine.sqlite3")).unwrap(),
        vec![7u8; 4096]
    );
}

#[test]
fn engine_rejects_bad_input_with_4xx_naming_the_field() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("strict", json!({}));
    for path in ["/route/", "/route"] {
        let (status, v) = engine.post(
            path,
            &json!({"endpoint": "strict", "api_key": "wrong", "cost": 100}),
        );
        assert_eq!(status, 401, "{v}");
        assert!(
            v["error_msg"].as_str().unwrap().contains("invalid api_key"),
            "{v}"
        );
        let (status, v) = engine.post(
            path,
            &json!({"endpoint": "nope", "api_key": ep.api_key, "cost": 100}),
        );
        assert_eq!(status, 401, "{v}");
        let (status, v) = engine.post(
            path,
            &json!({"endpoint": "strict", "api_key": ep.api_key, "cost": -1}),
        );
        assert_eq!(status, 400, "{v}");
        assert!(v["error_msg"].as_str().unwrap().contains("cost"), "{v}");
        let (status, v) = engine.post(path, &json!([1, 2]));
        assert_eq!(status, 400, "{v}");
    }
    let raw = reqwest::blocking::Client::new()
        .post(format!("{}/route/", engine.url))
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);

    for (body, field) in [
        (
            json!({"endpoint_name": "a", "target_util": 0}),
            "target_util",
        ),
        (
            json!({"endpoint_name": "a", "target_util": 1.5}),
            "target_util",
        ),
        (
            json!({"endpoint_name": "a", "max_workers": 0}),
            "max_workers",
        ),
        (
            json!({"endpoint_name": "a", "max_workers": "many"}),
            "max_workers",
        ),
        (json!({"endpoint_name": "a", "min_load": -5}), "min_load"),
        (
            json!({"endpoint_name": "a", "target_queue_time": 50, "max_queue_time": 1}),
            "target_queue_time",
        ),
        (json!({"endpoint_name": "bad name"}), "endpoint_name"),
        (json!({"endpoint_name": "strict"}), "endpoint_name"),
        (
            json!({"endpoint_name": "a", "endpoint_state": "sleeping"}),
            "endpoint_state",
        ),
    ] {
        for path in ["/api/v0/endptjobs/", "/api/v0/endptjobs"] {
            let (status, v) = engine.api(Method::POST, path, Some(body.clone()));
            assert_eq!(status, 400, "{body}: {v}");
            assert!(v["msg"].as_str().unwrap().contains(field), "{body}: {v}");
        }
    }
    let (status, v) = engine.api(
        Method::PUT,
        &format!("/api/v0/endptjobs/{}/", ep.id),
        Some(json!({"cold_workers": 50})),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("cold_workers"), "{v}");
    // Wrong account key.
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/api/v0/endptjobs/", engine.url))
        .bearer_auth("not-the-key")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Unknown worker reports and endpoints.
    let (status, _) = engine.post("/worker_status/", &json!({"id": 999, "mtoken": "x"}));
    assert_eq!(status, 401);
    let (status, _) = engine.api(Method::GET, "/api/v0/endptjobs/999/", None);
    assert_eq!(status, 404);
    let (status, _) = engine.api(Method::GET, "/api/v0/endptjobs/abc/", None);
    assert_eq!(status, 400);
    // The engine is still fine.
    let (status, _) = engine.api(Method::GET, "/api/v0/endptjobs", None);
    assert_eq!(status, 200);
    let pem = reqwest::blocking::get(format!("{}/pubkey", engine.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
}

#[test]
fn engine_serves_pubkey_while_trickling_connections_hold_its_descriptors() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let engine = EngineGuard::start_with_fd_limit(
        &tmp.path().join("state"),
        &["--account-key", ACCOUNT_KEY],
        Some(256),
    );
    let addr = engine.url.trim_start_matches("http://").to_owned();
    // More half-sent requests than the engine has descriptors.
    let mut trickling = Vec::new();
    for _ in 0..366 {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.write_all(b"GET /pubkey/ HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        trickling.push(s);
    }
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..3 {
        let pem = quick
            .get(format!("{}/pubkey/", engine.url))
            .send()
            .expect("/pubkey/ answers while the connections are held")
            .text()
            .unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    }
    // A declared body over the limit is refused before it is sent.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /worker_status/ HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("an answer without the body");
    assert_eq!(&head, b"HTTP/1.1 413");
    drop(trickling);
}

/// Live (not zombie) processes of process group `pgid`.
fn group_members(pgid: i64) -> Vec<i64> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state (field 3), ppid (4), pgrp (5).
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            members.push(pid);
        }
    }
    members
}

/// Kills process groups when dropped, so a failing test leaves nothing.
struct GroupReaper(Vec<i64>);

impl Drop for GroupReaper {
    fn drop(&mut self) {
        for pgid in &self.0 {
            // SAFETY: killpg(2) on groups this test's engine started.
            unsafe { libc::killpg(*pgid as i32, libc::SIGKILL) };
        }
    }
}

fn session_get(ready: &Value, session_id: &str) -> u16 {
    let url = ready["url"].as_str().expect("url");
    http()
        .post(format!("{url}/session/get"))
        .json(&json!({"session_id": session_id, "session_auth": ready}))
        .send()
        .expect("session/get")
        .status()
        .as_u16()
}

/// The engine goes (by `signal`) while a worker holds a session, and comes
/// back on the same state directory: the worker kept running and kept its
/// session, is listed and routable again, logs to the same file, and
/// stopping it later leaves nothing of its process groups.
fn engine_restart_loses_nothing(signal: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let args = ["--account-key", ACCOUNT_KEY, "--scale-down-delay", "1"];
    let mut engine = EngineGuard::start_in(&dir, &args);
    let ep = engine.create_seed_endpoint(
        "survivor",
        json!({"max_workers": 1, "inactivity_timeout": -1,
               "consumer_command": "sleep 1000; true"}),
    );
    let ready = engine.route_until_ready(&ep, LONG);
    let session = open_session(&ready);
    let (id, pid, consumer_pid) = wait_for("the worker to report the session", LONG, || {
        engine
            .workers_detail(&ep)
            .into_iter()
            .find(|w| w["reqs_working"] == 1)
            .map(|w| {
                (
                    w["id"].as_i64().unwrap(),
                    w["pid"].as_i64().unwrap(),
                    w["consumer_pid"].as_i64().unwrap(),
                )
            })
    });
    let _reaper = GroupReaper(vec![pid, consumer_pid]);
    // The consumer's shell runs a child of its own.
    wait_for("the consumer's sleep", LONG, || {
        (group_members(consumer_pid).len() >= 2).then_some(())
    });
    let members = group_members(pid).len() + group_members(consumer_pid).len();

    engine.stop_with(signal).expect("the engine exits");
    // Nothing was lost while the engine is gone.
    assert!(alive(pid) && alive(consumer_pid));
    assert_eq!(session_get(&ready, &session), 200);
    let log = dir.join(format!("workers/{id}/worker.log"));
    let log_len = std::fs::metadata(&log).unwrap().len();

    // On the same address: the worker reports where it was told to.
    let listen = engine.url.trim_start_matches("http://").to_owned();
    let mut again_args = args.to_vec();
    again_args.extend(["--listen", listen.as_str()]);
    let engine = EngineGuard::start_in(&dir, &again_args);
    let back = wait_for("the worker listed again with its session", LONG, || {
        let ws = engine.workers(&ep);
        ws.iter()
            .find(|w| w["id"] == id && w["status"] == "IDLE" && w["reqs_working"] == 1)
            .cloned()
    });
    assert_eq!(back["url"], ready["url"]);
    let detail = engine.workers_detail(&ep);
    assert_eq!(detail.len(), 1, "{detail:?}");
    assert_eq!(detail[0]["pid"].as_i64(), Some(pid));
    assert_eq!(detail[0]["consumer_pid"].as_i64(), Some(consumer_pid));
    assert_eq!(
        group_members(pid).len() + group_members(consumer_pid).len(),
        members
    );
    // It holds its one session: not routed to while it does.
    let waiting = engine.route(&ep, 0, 100.0);
    assert!(waiting.get("url").is_none(), "{waiting}");
    assert_eq!(session_get(&ready, &session), 200);
    end_session(&ready, &session);
    let again = engine.poll_until_ready(&ep, waiting["request_idx"].as_u64().unwrap(), LONG);
    assert_eq!(again["url"], ready["url"]);
    // Its output still goes to the same file (reports failed while the
    // engine was gone, and were logged).
    assert!(std::fs::metadata(&log).unwrap().len() > log_len);

    // Stopping it leaves nothing of its groups.
    let (status, v) = engine.api(
        Method::DELETE,
        &format!("/api/v0/endptjobs/{}/", ep.id),
        None,
    );
    assert_eq!(status, 200, "{v}");
    wait_for("every process of its groups gone", LONG, || {
        (group_members(pid).is_empty() && group_members(consumer_pid).is_empty()).then_some(())
    });
    assert!(!dir.join(format!("workers/{id}/process.json")).exists());
}

#[test]
fn engine_sigkill_while_a_session_is_held_loses_nothing() {
    engine_restart_loses_nothing(libc::SIGKILL);
}

#[test]
fn engine_sigterm_while_a_session_is_held_loses_nothing() {
    engine_restart_loses_nothing(libc::SIGTERM);
}
