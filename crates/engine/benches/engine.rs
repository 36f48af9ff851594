//! Engine benchmark (run with `cargo bench -p nullworker-engine`; build the
//! binary first with `cargo build --release -p nullworker`, or point
//! `NULLWORKER_BIN` at it, for the scale-from-zero part).
//!
//! Prints:
//! * the routing decision alone, in process (request table + route index,
//!   what `/route/` does under the engine's lock), per call, with 10,000 and
//!   10 workers, against the linear scan it replaced; and the longest hold
//!   of the lock by one chunk of a scaler pass at 10,000 workers;
//! * `/route/` answers per second and latency percentiles over loopback HTTP
//!   with 10,000 and with 10 registered workers (external workers simulated
//!   by `/worker_status/` reports, no processes), three runs each (the
//!   figures move with whatever else the machine runs);
//! * time from a session request at zero workers to the session held on a
//!   real `nullworker serve`, min/median/max over runs, polling `/route/`
//!   like a client whose first re-poll comes after 1 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nullworker_engine::config::Command;
use nullworker_engine::db::StoredEndpoint;
use nullworker_engine::endpoint::{EndpointSettings, WorkerTemplate};
use nullworker_engine::policy::routing::{choose_worker, RouteCandidate};
use nullworker_engine::policy::worker_state::{ProcessPhase, ReportFacts};
use nullworker_engine::policy::{EndpointPolicy, WorkerState};
use nullworker_engine::registry::{Endpoint, Worker};
use nullworker_engine::{Engine, EngineConfig, EngineHandle};
use nullworker_protocol::messages::WorkerStatus;
use serde_json::{json, Value};

const CONCURRENCY: usize = 4;
const ROUTE_SECONDS: f64 = 5.0;
const ROUTE_RUNS: usize = 3;
const SCALE_RUNS: usize = 5;

/// An endpoint with `n` IDLE workers, as the registry holds it.
fn live_endpoint(n: i64) -> Endpoint {
    let stored = StoredEndpoint {
        id: 1,
        name: "micro".into(),
        api_key: "k".into(),
        settings: EndpointSettings::default(),
        created_at: 0.0,
        workergroup_id: 1,
        template: WorkerTemplate::default(),
    };
    let policy = EndpointPolicy {
        max_queue_time: 100_000.0,
        stale_after: 1e9,
        ..EndpointPolicy::default()
    };
    let mut ep = Endpoint::new(stored, policy, 1, 0.0);
    for id in 1..=n {
        let mut w = Worker::launched(id, "t".into(), 0.0);
        w.external = true;
        w.process = ProcessPhase::Running;
        w.url = Some(format!("http://127.0.0.1:{}/w{id}", 20000 + id % 40000).into());
        w.signature = Some("sig".into());
        w.last_report = Some(ReportFacts {
            at: 1.0,
            max_perf: 100.0,
            loadtime: 0.1,
            error_msg: String::new(),
            version: "1.1.0".into(),
        });
        w.report = Some(WorkerStatus {
            id,
            mtoken: "t".into(),
            version: "1.1.0".into(),
            loadtime: 0.1,
            cur_load: 0.0,
            rej_load: 0.0,
            new_load: 0.0,
            error_msg: String::new(),
            max_perf: 100.0,
            cur_perf: 0.0,
            cur_capacity: 0.0,
            max_capacity: 0.0,
            num_requests_working: 0,
            num_requests_recieved: 0,
            additional_disk_usage: 0.0,
            disk_usage: None,
            working_request_idxs: vec![],
            url: String::new(),
        });
        ep.insert_worker(w);
        ep.refresh(id, 1.0);
    }
    ep
}

/// The routing decision of `/route/` in process: per-call cost with the
/// route index, and with the linear scan over every worker it replaced.
fn route_decision_bench(workers: i64) {
    const CALLS: usize = 200_000;
    let mut ep = live_endpoint(workers);
    let start = Instant::now();
    let mut t = 2.0;
    for _ in 0..CALLS {
        t += 1e-6;
        let idx = ep.requests.route(0, 1.0, 60.0, t);
        ep.apply_request_changes();
        let worker = ep.choose(1.0).expect("a worker");
        ep.requests.assign(idx, worker, 1.0, t);
        ep.sync_candidate(worker);
    }
    let indexed = start.elapsed().as_secs_f64() / CALLS as f64;
    // The former path: candidates rebuilt in place, one pass per call.
    let candidates: Vec<RouteCandidate> = ep
        .workers
        .values()
        .map(|w| RouteCandidate {
            id: w.id,
            state: WorkerState::Idle,
            reported_load: 0.0,
            pending_cost: ep.requests.pending_cost(w.id),
            max_perf: 100.0,
        })
        .collect();
    let scans = (CALLS / workers as usize).clamp(100, CALLS);
    let start = Instant::now();
    for _ in 0..scans {
        std::hint::black_box(choose_worker(
            std::hint::black_box(&candidates),
            1.0,
            &ep.policy,
        ));
    }
    let scan = start.elapsed().as_secs_f64() / scans as f64;
    // Lock holds of a scaler pass: one chunk of 256 workers each.
    let mut holds = Vec::new();
    for _ in 0..20 {
        let mut after = None;
        let mut views = Vec::new();
        let mut transitions = Vec::new();
        loop {
            let chunk = Instant::now();
            let next = ep.refresh_chunk(after, 256, t, &mut views, &mut transitions);
            holds.push(chunk.elapsed().as_secs_f64());
            match next {
                Some(last) => after = Some(last),
                None => break,
            }
        }
    }
    holds.sort_by(f64::total_cmp);
    println!(
        "routing decision with {workers:>5} workers: {:.2} µs per /route/ (request table + route index); linear scan it replaced: {:.2} µs; scaler lock hold per 256-worker chunk: median {:.3} ms, max {:.3} ms",
        indexed * 1e6,
        scan * 1e6,
        holds[holds.len() / 2] * 1e3,
        holds[holds.len() - 1] * 1e3
    );
}

fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NULLWORKER_BIN") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    ["release", "debug"]
        .iter()
        .map(|p| root.join(p).join("nullworker"))
        .find(|p| p.exists())
}

async fn start_engine(dir: &std::path::Path, worker: Command) -> EngineHandle {
    let mut config = EngineConfig::new(dir).expect("config");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.account_key = Some("bench-account-key".into());
    config.worker_command = worker;
    config.scale_down_delay = 0.5;
    Engine::start(config).await.expect("engine")
}

async fn create_endpoint(
    http: &reqwest::Client,
    engine: &EngineHandle,
    body: Value,
) -> (i64, String) {
    let v: Value = http
        .post(format!("{}/api/v0/endptjobs/", engine.url()))
        .bearer_auth(engine.account_key())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["result"].as_i64().expect("endpoint id");
    let v: Value = http
        .get(format!("{}/api/v0/endptjobs/{id}/", engine.url()))
        .bearer_auth(engine.account_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (id, v["result"]["api_key"].as_str().unwrap().to_owned())
}

async fn report(http: &reqwest::Client, engine: &EngineHandle, id: i64, token: &str) {
    let resp = http
        .post(format!("{}/worker_status/", engine.url()))
        .json(&json!({
            "id": id, "mtoken": token, "version": "1.1.0", "loadtime": 0.1, "cur_load": 0,
            "max_perf": 100.0, "error_msg": "", "working_request_idxs": [],
            "url": format!("http://127.0.0.1:{}/w{id}", 20000 + id % 40000),
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "report: {}", resp.status());
}

async fn route_bench(workers: i64, run: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(dir.path(), Command::Shell("false".into())).await;
    let http = reqwest::Client::new();
    let name = format!("bench{workers}");
    let (_, key) = create_endpoint(
        &http,
        &engine,
        // max_workers = the simulated workers: the load the run piles up
        // must not make the engine launch processes of its own meanwhile.
        json!({"endpoint_name": name, "max_workers": workers, "cold_workers": 0,
               "max_queue_time": 100000, "target_queue_time": 1, "inactivity_timeout": -1}),
    )
    .await;
    let t = Instant::now();
    // Far above the ids the engine gives its own workers.
    let ids: Vec<i64> = (1_000_001..=1_000_000 + workers).collect();
    for chunk in ids.chunks(64) {
        futures_util::future::join_all(chunk.iter().map(|id| report(&http, &engine, *id, &key)))
            .await;
    }
    if run == 1 {
        println!(
            "registered {workers} simulated workers (reports, each URL signed once) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let url = Arc::new(format!("{}/route/", engine.url()));
    let body = Arc::new(
        json!({"endpoint": name, "api_key": key, "cost": 1, "request_idx": 0, "replay_timeout": 60.0}),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(ROUTE_SECONDS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut ready = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let resp = http.post(url.as_str()).json(&*body).send().await.unwrap();
                    let bytes = resp.bytes().await.unwrap();
                    lat.push(t.elapsed().as_secs_f64());
                    if bytes.windows(6).any(|w| w == b"\"url\":") {
                        ready += 1;
                    }
                }
                (lat, ready)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut ready = 0;
    for t in tasks {
        let (l, r) = t.await.unwrap();
        lat.extend(l);
        ready += r;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1000.0;
    println!(
        "/route/ with {workers:>5} workers, run {run}: {:>7.0} answers/s ({} READY of {}), latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({CONCURRENCY} concurrent clients, loopback HTTP)",
        lat.len() as f64 / elapsed,
        ready,
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(0.0) * 1000.0
    );
    engine.shutdown().await;
}

async fn scale_from_zero(bin: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        Command::Argv(vec![bin.to_string_lossy().into_owned(), "serve".into()]),
    )
    .await;
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    for run in 0..SCALE_RUNS {
        let name = format!("zero{run}");
        let (id, key) = create_endpoint(
            &http,
            &engine,
            json!({"endpoint_name": name, "target_util": 1.0, "min_load": 0, "max_queue_time": 1,
                   "target_queue_time": 0.5, "inactivity_timeout": 10, "cold_workers": 0}),
        )
        .await;
        let start = Instant::now();
        let mut idx = 0u64;
        let mut polls = 0;
        let ready = loop {
            let v: Value = http
                .post(format!("{}/route/", engine.url()))
                .json(&json!({"endpoint": name, "api_key": key, "cost": 100, "request_idx": idx, "replay_timeout": 60.0}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v.get("url").is_some() {
                break v;
            }
            idx = v["request_idx"].as_u64().unwrap();
            polls += 1;
            // The SDK's first re-poll comes after 1 s.
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let resp = http
            .post(format!("{}/session/create", ready["url"].as_str().unwrap()))
            .json(&json!({"auth_data": ready, "payload": {"lifetime": 60}, "session_id": null}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let held = start.elapsed().as_secs_f64();
        eprintln!("run {run}: session held after {held:.3} s ({polls} WAITING answers)");
        times.push(held);
        http.delete(format!("{}/api/v0/endptjobs/{id}/", engine.url()))
            .bearer_auth(engine.account_key())
            .send()
            .await
            .unwrap();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "scale from zero to session held ({SCALE_RUNS} runs, {}): min {:.3} s, median {:.3} s, max {:.3} s",
        bin.display(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    engine.shutdown().await;
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument (`decision`,
    // `route`, `scale`) runs only the parts whose name contains it.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| part.contains(f));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if wanted("decision") {
        route_decision_bench(10_000);
        route_decision_bench(10);
    }
    rt.block_on(async {
        for workers in [10_000, 10] {
            for run in 1..=ROUTE_RUNS {
                if wanted("route") {
                    route_bench(workers, run).await;
                }
            }
        }
        if !wanted("scale") {
            return;
        }
        match binary() {
            Some(bin) => scale_from_zero(bin).await,
            None => println!(
                "scale from zero: skipped (build the nullworker binary or set NULLWORKER_BIN)"
            ),
        }
    });
}
