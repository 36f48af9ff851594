//! In-process engine microbenchmarks (run with `cargo bench -p
//! nullworker-engine`). They drive the registry state machine directly
//! through its events, no HTTP and no processes; the end-to-end `/route/`
//! and scale-from-zero figures come from `cargo bench -p nullworker --bench
//! engine`.
//!
//! Prints, with 100,000, 10,000 and 10 workers: one `/route/` event (what
//! `/route/` does under the engine's lock) per call, against the linear
//! scan the route index replaced; one report event; the lock hold of one
//! 256-worker scan chunk of a scaler pass; and the autoscaler's decision
//! over the whole endpoint (taken without the lock).

use std::sync::Arc;
use std::time::Instant;

use nullworker_engine::db::StoredEndpoint;
use nullworker_engine::endpoint::{EndpointSettings, WorkerTemplate};
use nullworker_engine::policy::autoscale::decide;
use nullworker_engine::policy::routing::{choose_worker, RouteCandidate};
use nullworker_engine::policy::{EndpointPolicy, WorkerState};
use nullworker_engine::registry::{
    Event, Registry, RegistryConfig, Reply, RouteReply, RouteRequest, ScanStep,
};
use nullworker_protocol::messages::WorkerStatus;

fn report(id: i64, t: f64) -> WorkerStatus {
    let _ = t;
    WorkerStatus {
        id,
        mtoken: "k".into(),
        version: "1.1.0".into(),
        loadtime: 0.1,
        max_perf: 100.0,
        url: format!("http://127.0.0.1:{}/w{id}", 20000 + id % 40000),
        ..WorkerStatus::default()
    }
}

/// A registry with one endpoint of `n` IDLE external workers.
fn live_registry(n: i64) -> Registry {
    let mut reg = Registry::new(
        RegistryConfig {
            stale_after: 1e9,
            strict: false,
            ..RegistryConfig::default()
        },
        0,
    );
    let settings = EndpointSettings {
        max_workers: 100_000,
        cold_workers: 0,
        max_queue_time: 100_000.0,
        ..EndpointSettings::default()
    };
    let stored = StoredEndpoint {
        id: 1,
        name: "micro".into(),
        api_key: "k".into(),
        settings,
        created_at: 0.0,
        workergroup_id: 1,
        template: WorkerTemplate::default(),
    };
    reg.apply(Event::EndpointCreated(stored), 0.0);
    let sig: Arc<str> = "sig".into();
    for id in 1..=n {
        let out = reg.apply(
            Event::Report {
                report: report(id, 1.0),
                signature: Some(sig.clone()),
            },
            1.0,
        );
        assert!(matches!(out.reply, Reply::Accepted(Ok(()))));
    }
    reg
}

fn bench(workers: i64) {
    const CALLS: usize = 200_000;
    let mut reg = live_registry(workers);
    let keys = vec!["k".to_owned()];
    let start = Instant::now();
    let mut t = 2.0;
    for _ in 0..CALLS {
        t += 1e-6;
        let out = reg.apply(
            Event::Route(RouteRequest {
                name: Some("micro"),
                endpoint_id: None,
                keys: &keys,
                request_idx: 0,
                cost: 1.0,
                replay_timeout: 60.0,
            }),
            t,
        );
        assert!(matches!(out.reply, Reply::Route(RouteReply::Ready { .. })));
    }
    let route = start.elapsed().as_secs_f64() / CALLS as f64;
    let reports = 50_000;
    let start = Instant::now();
    for i in 0..reports {
        let id = 1 + (i as i64 % workers);
        std::hint::black_box(reg.apply(
            Event::Report {
                report: report(id, t),
                signature: None,
            },
            t,
        ));
    }
    let per_report = start.elapsed().as_secs_f64() / reports as f64;
    // The former path: a linear scan over every candidate per call.
    let candidates: Vec<RouteCandidate> = (1..=workers)
        .map(|id| RouteCandidate {
            id,
            state: WorkerState::Idle,
            reported_load: 0.0,
            pending_cost: 0.0,
            max_perf: 100.0,
        })
        .collect();
    let policy = EndpointPolicy {
        max_queue_time: 100_000.0,
        ..EndpointPolicy::default()
    };
    let scans = (CALLS / workers as usize).clamp(100, CALLS);
    let start = Instant::now();
    for _ in 0..scans {
        std::hint::black_box(choose_worker(
            std::hint::black_box(&candidates),
            1.0,
            &policy,
        ));
    }
    let scan = start.elapsed().as_secs_f64() / scans as f64;
    // A scaler pass: lock holds of one 256-worker chunk each, then the
    // decision (without the lock).
    let mut holds = Vec::new();
    let mut decisions = Vec::new();
    for _ in 0..5 {
        let mut after = None;
        let mut views = Vec::new();
        let snapshot = loop {
            let chunk = Instant::now();
            let out = reg.apply(
                Event::Scan {
                    endpoint_id: 1,
                    after,
                    max: 256,
                    views: &mut views,
                },
                t,
            );
            holds.push(chunk.elapsed().as_secs_f64());
            match out.reply {
                Reply::Scan(Some(ScanStep::More(last))) => after = Some(last),
                Reply::Scan(Some(ScanStep::Done(s))) => break s,
                other => panic!("scan answered {other:?}"),
            }
        };
        let start = Instant::now();
        std::hint::black_box(decide(&snapshot));
        decisions.push(start.elapsed().as_secs_f64());
    }
    holds.sort_by(f64::total_cmp);
    decisions.sort_by(f64::total_cmp);
    println!(
        "{workers:>6} workers: /route/ event {:.2} µs (linear scan it replaced: {:.2} µs); report event {:.2} µs; scaler lock hold per 256-worker chunk: median {:.3} ms, max {:.3} ms; decision over the endpoint: median {:.2} ms",
        route * 1e6,
        scan * 1e6,
        per_report * 1e6,
        holds[holds.len() / 2] * 1e3,
        holds[holds.len() - 1] * 1e3,
        decisions[decisions.len() / 2] * 1e3,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    bench(100_000);
    bench(10_000);
    bench(10);
}
