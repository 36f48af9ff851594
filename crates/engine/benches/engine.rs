//! In-process engine microbenchmarks (run with `cargo bench -p
//! nullworker-engine`). They drive the registry state machine directly
//! through its events, no HTTP and no processes; the end-to-end `/route/`
//! and scale-from-zero figures come from `cargo bench -p nullworker --bench
//! engine`.
//!
//! Prints, with 100,000, 10,000 and 10 workers on one endpoint, min /
//! median / max over `--runs N` runs (default 3): one `/route/` event (what
//! `/route/` does under the engine's lock) per call, against the linear
//! scan the route index replaced; one report event; the lock hold of one
//! 256-worker scan chunk of a scaler pass; the autoscaler's decision over
//! the whole endpoint (taken without the lock); and a whole scaler pass
//! (every scan chunk, the decision and applying it), as the scaler makes it
//! once per tick.

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
use nullworker_engine::scaler::CHUNK;
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

/// One run's figures at one worker count (seconds).
#[derive(Default)]
struct Figures {
    route: f64,
    scan: f64,
    report: f64,
    hold_median: f64,
    hold_max: f64,
    decision: f64,
    pass: f64,
}

/// The median and the largest of `values` (sorted here).
fn median_max(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[values.len() - 1])
}

/// One run at `workers` workers; `t` is the registry's clock, moved on.
fn run(reg: &mut Registry, workers: i64, t: &mut f64) -> Figures {
    const CALLS: usize = 200_000;
    let mut out = Figures::default();
    // Reports built beforehand: the event alone is timed. A report costs
    // O(the worker's outstanding assignments); the previous run's are
    // expired first (an untimed scan), as the scaler's ticks do.
    let mut views = Vec::new();
    let mut after = None;
    while let Reply::Scan(Some(ScanStep::More(last))) = reg
        .apply(
            Event::Scan {
                endpoint_id: 1,
                after,
                max: CHUNK,
                views: &mut views,
            },
            *t,
        )
        .reply
    {
        after = Some(last);
    }
    let reports = 50_000;
    let built: Vec<WorkerStatus> = (0..reports)
        .map(|i| report(1 + (i as i64 % workers), *t))
        .collect();
    let start = Instant::now();
    for r in built {
        std::hint::black_box(reg.apply(
            Event::Report {
                report: r,
                signature: None,
            },
            *t,
        ));
    }
    out.report = start.elapsed().as_secs_f64() / reports as f64;
    let keys = vec!["k".to_owned()];
    let start = Instant::now();
    for _ in 0..CALLS {
        *t += 1e-6;
        let got = reg.apply(
            Event::Route(RouteRequest {
                name: Some("micro"),
                endpoint_id: None,
                keys: &keys,
                request_idx: 0,
                cost: 1.0,
                replay_timeout: 60.0,
            }),
            *t,
        );
        assert!(matches!(got.reply, Reply::Route(RouteReply::Ready { .. })));
    }
    out.route = start.elapsed().as_secs_f64() / CALLS as f64;
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
    out.scan = start.elapsed().as_secs_f64() / scans as f64;
    // Scaler passes as `scaler::pass` makes them: lock holds of one
    // CHUNK-worker scan each, then the decision (without the lock), then
    // applying it.
    let mut holds = Vec::new();
    let mut decisions = Vec::new();
    let mut passes = Vec::new();
    for _ in 0..5 {
        *t += 1.0;
        let pass = Instant::now();
        let mut after = None;
        let mut views = Vec::new();
        let snapshot = loop {
            let chunk = Instant::now();
            let got = reg.apply(
                Event::Scan {
                    endpoint_id: 1,
                    after,
                    max: CHUNK,
                    views: &mut views,
                },
                *t,
            );
            holds.push(chunk.elapsed().as_secs_f64());
            match got.reply {
                Reply::Scan(Some(ScanStep::More(last))) => after = Some(last),
                Reply::Scan(Some(ScanStep::Done(s))) => break s,
                other => panic!("scan answered {other:?}"),
            }
        };
        let start = Instant::now();
        let decision = decide(&snapshot);
        decisions.push(start.elapsed().as_secs_f64());
        std::hint::black_box(reg.apply(
            Event::Decided {
                endpoint_id: 1,
                snapshot: &snapshot,
                decision: &decision,
            },
            *t,
        ));
        passes.push(pass.elapsed().as_secs_f64());
    }
    (out.hold_median, out.hold_max) = median_max(&mut holds);
    out.decision = median_max(&mut decisions).0;
    out.pass = median_max(&mut passes).0;
    // Past every request's replay window before the next run.
    *t += 100.0;
    out
}

/// One printed figure: label, how to read it from a run, scale, unit.
type Row<'a> = (&'a str, &'a dyn Fn(&Figures) -> f64, f64, &'a str);

/// `min / median / max` of one figure over runs, scaled by `unit`.
fn spread(runs: &[Figures], pick: impl Fn(&Figures) -> f64, unit: f64) -> String {
    let mut values: Vec<f64> = runs.iter().map(|f| pick(f) * unit).collect();
    values.sort_by(f64::total_cmp);
    let fmt = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    };
    format!(
        "{} / {} / {}",
        fmt(values[0]),
        fmt(values[values.len() / 2]),
        fmt(values[values.len() - 1])
    )
}

fn bench(workers: i64, runs: u32) {
    let built = Instant::now();
    let mut reg = live_registry(workers);
    let built = built.elapsed().as_secs_f64();
    let mut t = 2.0;
    let figures: Vec<Figures> = (0..runs).map(|_| run(&mut reg, workers, &mut t)).collect();
    println!(
        "{workers} workers (registered in {built:.2} s), min / median / max over {runs} run(s):"
    );
    let rows: [Row; 7] = [
        ("/route/ event", &|f| f.route, 1e6, "µs"),
        ("linear scan it replaced", &|f| f.scan, 1e6, "µs"),
        ("report event", &|f| f.report, 1e6, "µs"),
        (
            "scaler lock hold per chunk, median",
            &|f| f.hold_median,
            1e3,
            "ms",
        ),
        (
            "scaler lock hold per chunk, max",
            &|f| f.hold_max,
            1e3,
            "ms",
        ),
        (
            "autoscaler decision over the endpoint",
            &|f| f.decision,
            1e3,
            "ms",
        ),
        ("whole scaler pass", &|f| f.pass, 1e3, "ms"),
    ];
    for (label, pick, unit, name) in rows {
        println!("  {label:<38} {} {name}", spread(&figures, pick, unit));
    }
}

/// Durations of one kind of event in the steady-state simulation.
#[derive(Default)]
struct Holds(Vec<f64>);

impl Holds {
    fn summary(&mut self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0.sort_by(f64::total_cmp);
        let n = self.0.len();
        let at = |p: f64| self.0[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        format!(
            "{n} events: mean {:.2} µs, p99 {:.2} µs, p99.9 {:.1} µs, max {:.2} ms, total {:.1} ms",
            self.0.iter().sum::<f64>() / n as f64 * 1e6,
            at(99.0) * 1e6,
            at(99.9) * 1e6,
            self.0[n - 1] * 1e3,
            self.0.iter().sum::<f64>() * 1e3,
        )
    }
}

/// The engine's lock traffic under the HTTP benchmark's load, replayed in
/// simulated time: `/route/` events at `route_rate` per second (each a new
/// request, READY, never confirmed by a report, as with the simulated
/// workers), every worker reporting once per 10 s, and a scaler pass (in
/// CHUNK-worker lock holds) once per second, for `secs` simulated seconds.
/// Prints the wall time of each kind of event: what a `/route/` call may
/// wait behind.
fn steady(workers: i64, route_rate: f64, secs: f64) {
    let mut reg = live_registry(workers);
    let keys = vec!["k".to_owned()];
    let (mut routes, mut reports, mut chunks, mut decided) = (
        Holds::default(),
        Holds::default(),
        Holds::default(),
        Holds::default(),
    );
    let report_rate = workers as f64 / 10.0;
    let start_t = 2.0;
    let mut next_route = start_t;
    let mut next_report = start_t;
    let mut next_pass = start_t + 1.0;
    let mut reporter = 0i64;
    let end = start_t + secs;
    loop {
        let t = next_route.min(next_report).min(next_pass);
        if t >= end {
            break;
        }
        if t == next_route {
            let began = Instant::now();
            let got = reg.apply(
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
            routes.0.push(began.elapsed().as_secs_f64());
            assert!(matches!(got.reply, Reply::Route(RouteReply::Ready { .. })));
            next_route += 1.0 / route_rate;
        } else if t == next_report {
            let r = report(1 + reporter % workers, t);
            reporter += 1;
            let began = Instant::now();
            std::hint::black_box(reg.apply(
                Event::Report {
                    report: r,
                    signature: None,
                },
                t,
            ));
            reports.0.push(began.elapsed().as_secs_f64());
            next_report += 1.0 / report_rate;
        } else {
            let mut after = None;
            let mut views = Vec::new();
            let snapshot = loop {
                let began = Instant::now();
                let got = reg.apply(
                    Event::Scan {
                        endpoint_id: 1,
                        after,
                        max: CHUNK,
                        views: &mut views,
                    },
                    t,
                );
                chunks.0.push(began.elapsed().as_secs_f64());
                match got.reply {
                    Reply::Scan(Some(ScanStep::More(last))) => after = Some(last),
                    Reply::Scan(Some(ScanStep::Done(s))) => break s,
                    other => panic!("scan answered {other:?}"),
                }
            };
            let decision = decide(&snapshot);
            let began = Instant::now();
            std::hint::black_box(reg.apply(
                Event::Decided {
                    endpoint_id: 1,
                    snapshot: &snapshot,
                    decision: &decision,
                },
                t,
            ));
            decided.0.push(began.elapsed().as_secs_f64());
            next_pass += 1.0;
        }
    }
    println!(
        "steady state, {workers} workers, {route_rate} routes/s and {report_rate} reports/s for {secs} s (simulated):"
    );
    println!("  /route/ events:     {}", routes.summary());
    println!("  report events:      {}", reports.summary());
    println!("  scaler scan chunks: {}", chunks.summary());
    println!("  scaler decisions applied: {}", decided.summary());
}

fn main() {
    // `cargo bench` passes `--bench`; `--runs N` sets the runs, other
    // arguments are ignored.
    let args: Vec<String> = std::env::args().collect();
    let runs = match args.iter().position(|a| a == "--runs") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse::<u32>().ok()) {
            Some(n) if n >= 1 => n,
            _ => {
                eprintln!("--runs: expected an integer >= 1 after it");
                std::process::exit(2);
            }
        },
        None => 3,
    };
    println!("scan chunk: {CHUNK} workers");
    if args.iter().any(|a| a == "--steady") {
        steady(10_000, 40_000.0, 40.0);
        steady(10, 40_000.0, 40.0);
        return;
    }
    bench(100_000, runs);
    bench(10_000, runs);
    bench(10, runs);
}
