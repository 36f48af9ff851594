//! In-process engine microbenchmarks (run with `cargo bench -p
//! nullworker-engine`). They time the engine's data structures directly, no
//! HTTP and no processes; the end-to-end `/route/` and scale-from-zero
//! figures come from `cargo bench -p nullworker --bench engine`.
//!
//! Prints, with 10,000 and with 10 workers: the routing decision of
//! `/route/` (request table + route index, what `/route/` does under the
//! engine's lock) per call, against the linear scan it replaced; and the
//! lock hold of one 256-worker chunk of a scaler pass.

use std::time::Instant;

use nullworker_engine::db::StoredEndpoint;
use nullworker_engine::endpoint::{EndpointSettings, WorkerTemplate};
use nullworker_engine::policy::routing::{choose_worker, RouteCandidate};
use nullworker_engine::policy::worker_state::{ProcessPhase, ReportFacts};
use nullworker_engine::policy::{EndpointPolicy, WorkerState};
use nullworker_engine::registry::{Endpoint, Worker};
use nullworker_protocol::messages::WorkerStatus;

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
            max_perf: 100.0,
            ..WorkerStatus::default()
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

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    route_decision_bench(10_000);
    route_decision_bench(10);
}
