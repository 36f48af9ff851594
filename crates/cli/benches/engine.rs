//! Engine benchmark: `/route/` throughput and latency of `nullworker engine`
//! with many registered workers, and the time a client waits for a session
//! when an endpoint has no worker at all (scale from zero).
//!
//! It spawns one engine (our binary, fresh state directory, 127.0.0.1) and:
//!
//! * registers simulated workers — `/worker_status/` reports from unknown
//!   ids carrying the endpoint's `api_key` as `mtoken`, which the engine
//!   takes as external workers of that endpoint; no processes — on two
//!   endpoints, one with 10,000 workers and one with 10, configured so that
//!   every `/route/` is answered READY and the autoscaler neither adds nor
//!   removes workers;
//! * per run and per endpoint, drives `/route/` from keep-alive connections
//!   in closed loops and records every answer's latency, while beside it
//!   every simulated worker of that endpoint reports again once per
//!   `--report-interval` (10 s: 1,000 reports/s at 10,000 workers) and
//!   `GET /metrics` is scraped once per `--scrape-interval` (1 s), both on
//!   fixed schedules, timed too;
//! * per run, creates a fresh endpoint with the Null PyWorker's tested
//!   configuration and zero workers, and times our SDK's
//!   `Endpoint::session` from the call to the session held (the worker's
//!   201), with the SDK's default polling and with fast polling; the engine
//!   launches a real `nullworker serve` for it.
//!
//! ```text
//! cargo bench -p nullworker --bench engine -- [--runs N] [--quick]
//!     [--save FILE] [--compare FILE] [--connections N] [--workers N]
//!     [--report-interval S] [--scrape-interval S]
//! ```
//!
//! See docs/benchmarks.md for what each figure means.

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::http::StatusCode;
use bytes::Bytes;
use clap::Parser;
use nullworker_client::{Client, Endpoint, RetryPolicy, SessionOptions};
use serde_json::json;
use tokio::task::JoinHandle;

use common::args::CommonArgs;
use common::engine::{SpawnedEngine, ACCOUNT_KEY};
use common::loadgen::{self, Connection, OpError, Operation, Phase};
use common::process;
use common::report::{self, Better, Bound, Metric, SavedRun};
use common::stats::Latencies;

/// Benchmark of the engine's router and of scale-from-zero.
#[derive(Debug, Parser)]
#[command(name = "engine-bench")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Simulated workers of the large endpoint (the engine accepts at most
    /// 100,000 per endpoint).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: u32,

    /// Simulated workers of the small endpoint.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    small_workers: u32,

    /// Each simulated worker of the endpoint measured reports again once
    /// per this many seconds during its `/route/` phase (0: no reports).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    report_interval: f64,

    /// Keep-alive connections sending those reports.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    report_connections: u16,

    /// `GET /metrics` once per this many seconds during each `/route/`
    /// phase (0: no scraping).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    scrape_interval: f64,

    /// Concurrent keep-alive connections sending `/route/`.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Measured seconds of each `/route/` phase [default: 5, quick: 1].
    #[arg(long, value_name = "SECONDS")]
    route_secs: Option<f64>,

    /// Warm-up seconds before each `/route/` phase [default: 1, quick: 0.2].
    #[arg(long, value_name = "SECONDS")]
    warmup_secs: Option<f64>,

    /// Skip the scale-from-zero measurement.
    #[arg(long)]
    no_scale_from_zero: bool,
}

const METRICS: &[Metric] = &[
    Metric {
        key: "route_large_per_s",
        label: "/route/ answers/s, large endpoint",
        unit: "1/s",
        better: Better::Higher,
        target: Some((Bound::AtLeast(20_000.0), ">= 20,000")),
        published: None,
    },
    Metric {
        key: "route_large_p50_ms",
        label: "/route/ p50, large endpoint",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "route_large_p99_ms",
        label: "/route/ p99, large endpoint",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(1.0), "< 1 ms")),
        published: None,
    },
    Metric {
        key: "reports_large_per_s",
        label: "worker reports/s beside it",
        unit: "1/s",
        better: Better::Higher,
        target: None,
        published: None,
    },
    Metric {
        key: "reports_large_pct",
        label: "reports answered, % of the schedule",
        unit: "%",
        better: Better::Higher,
        target: Some((Bound::AtLeast(99.0), ">= 99 %")),
        published: None,
    },
    Metric {
        key: "report_large_p50_ms",
        label: "/worker_status/ p50, large endpoint",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "report_large_p99_ms",
        label: "/worker_status/ p99, large endpoint",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "scrape_large_median_ms",
        label: "/metrics scrape, median, large endpoint",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "scrape_large_max_ms",
        label: "/metrics scrape, max, large endpoint",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "route_small_per_s",
        label: "/route/ answers/s, small endpoint",
        unit: "1/s",
        better: Better::Higher,
        target: None,
        published: None,
    },
    Metric {
        key: "route_small_p50_ms",
        label: "/route/ p50, small endpoint",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "route_small_p99_ms",
        label: "/route/ p99, small endpoint",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(1.0), "< 1 ms")),
        published: None,
    },
    Metric {
        key: "route_waiting",
        label: "/route/ WAITING answers",
        unit: "count",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "engine_rss_mib",
        label: "engine RSS, after the /route/ phases",
        unit: "MiB",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "zero_to_session_ms",
        label: "scale from zero: request to session held",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(50.0), "<= 50 ms")),
        published: None,
    },
    Metric {
        key: "zero_to_session_fast_poll_ms",
        label: "same, polling every 0.1 s",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: None,
    },
    report::ERRORS,
];

/// First id of simulated workers (far above the ids the engine assigns).
const FIRST_SIMULATED_ID: i64 = 1_000_000_000;
/// Session cost sent with every `/route/`, the SDK default.
const COST: u32 = 100;

fn main() -> ExitCode {
    let args = Args::parse();
    common::main("engine bench", args.common.runtime(), run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let quick = args.common.quick;
    let phase = Phase {
        warmup: args
            .common
            .secs(args.warmup_secs, 1.0, 0.2, "warmup-secs")?,
        measure: args.common.secs(args.route_secs, 5.0, 1.0, "route-secs")?,
        poll: !args.common.client_sleeps,
    };
    let runs = args.common.runs();
    let background = Background {
        report_interval: interval(args.report_interval, "report-interval")?,
        report_connections: usize::from(args.report_connections),
        scrape_interval: interval(args.scrape_interval, "scrape-interval")?,
    };
    let mut saved = SavedRun::new(
        "engine",
        json!({
            "runs": runs,
            "quick": quick,
            "workers": args.workers,
            "small_workers": args.small_workers,
            "connections": args.connections,
            "client_threads": args.common.client_threads,
            "client_sleeps": args.common.client_sleeps,
            "route_warmup_secs": phase.warmup.as_secs_f64(),
            "route_secs": phase.measure.as_secs_f64(),
            "report_interval_secs": args.report_interval,
            "report_connections": args.report_connections,
            "scrape_interval_secs": args.scrape_interval,
        }),
    );
    println!(
        "engine benchmark: {runs} run(s), {} CPUs, load average {}",
        saved.cpus, saved.loadavg_at_start
    );

    // Simulated workers are external; they report once and must stay routable.
    let engine =
        SpawnedEngine::start(&["--allow-external-workers", "--stale-after", "86400"]).await?;
    let client = Client::builder(ACCOUNT_KEY)
        .autoscaler_url(engine.url.clone())
        .webserver_url(engine.url.clone())
        .build()?;
    let fast_client = Client::builder(ACCOUNT_KEY)
        .autoscaler_url(engine.url.clone())
        .webserver_url(engine.url.clone())
        .retry_policy(RetryPolicy {
            first_poll: Duration::from_millis(100),
            max_poll_interval: Duration::from_millis(100),
            ..RetryPolicy::default()
        })
        .build()?;

    let large = simulated_endpoint(&engine, &client, "bench-route-large", args.workers, 0)
        .await
        .with_context(|| engine.context())?;
    let small = simulated_endpoint(
        &engine,
        &client,
        "bench-route-small",
        args.small_workers,
        i64::from(args.workers),
    )
    .await
    .with_context(|| engine.context())?;

    let mut errors = 0;
    for run in 1..=runs {
        let mut waiting = 0;
        let mut run_errors = 0;
        for (key, endpoint) in [("large", &large), ("small", &small)] {
            let mut result =
                route_phase(&engine, endpoint, args.connections, phase, background).await?;
            let per_s = result.phase.per_second();
            let p50 = result.phase.latencies.percentile_ms(50.0);
            let p99 = result.phase.latencies.percentile_ms(99.0);
            println!(
                "run {run}: /route/ with {} workers: {}/s (p50 {} ms, p99 {} ms), {} READY, {} WAITING, {} failed",
                endpoint.workers,
                report::fmt_num(per_s),
                report::fmt_num(p50),
                report::fmt_num(p99),
                result.ready,
                result.waiting,
                result.phase.errors,
            );
            if let Some(first) = &result.phase.first_error {
                println!("  first failure: {first}");
            }
            saved.push("ours", &format!("route_{key}_per_s"), per_s);
            saved.push("ours", &format!("route_{key}_p50_ms"), p50);
            saved.push("ours", &format!("route_{key}_p99_ms"), p99);
            let bg = &mut result.background;
            let measured = phase.measure.as_secs_f64();
            if background.report_interval.is_some() {
                let per_s = bg.reports as f64 / measured;
                let pct = 100.0 * per_s / bg.wanted_per_s;
                let (r50, r99) = (
                    bg.report_latencies.percentile_ms(50.0),
                    bg.report_latencies.percentile_ms(99.0),
                );
                println!(
                    "  beside it: {}/s worker reports ({} % of the {}/s scheduled; p50 {} ms, p99 {} ms)",
                    report::fmt_num(per_s),
                    report::fmt_num(pct),
                    report::fmt_num(bg.wanted_per_s),
                    report::fmt_num(r50),
                    report::fmt_num(r99),
                );
                saved.push("ours", &format!("reports_{key}_per_s"), per_s);
                saved.push("ours", &format!("reports_{key}_pct"), pct);
                saved.push("ours", &format!("report_{key}_p50_ms"), r50);
                saved.push("ours", &format!("report_{key}_p99_ms"), r99);
            }
            if background.scrape_interval.is_some() {
                let (median, max) = (
                    bg.scrape_latencies.percentile_ms(50.0),
                    bg.scrape_latencies.percentile_ms(100.0),
                );
                println!(
                    "  beside it: {} /metrics scrapes (median {} ms, max {} ms)",
                    bg.scrape_latencies.len(),
                    report::fmt_num(median),
                    report::fmt_num(max),
                );
                saved.push("ours", &format!("scrape_{key}_median_ms"), median);
                saved.push("ours", &format!("scrape_{key}_max_ms"), max);
            }
            if let Some(first) = &bg.first_error {
                println!("  first failure beside it: {first}");
            }
            waiting += result.waiting;
            run_errors += result.phase.errors + bg.errors;
        }
        saved.push("ours", "route_waiting", waiting as f64);
        if let Some(rss) = process::rss_kib(engine.guard.pid()) {
            saved.push("ours", "engine_rss_mib", rss as f64 / 1024.0);
        }

        if !args.no_scale_from_zero {
            for (key, which) in [
                ("zero_to_session_ms", &client),
                ("zero_to_session_fast_poll_ms", &fast_client),
            ] {
                match scale_from_zero(&engine, which, run, key).await {
                    Ok(took) => {
                        let ms = took.as_secs_f64() * 1000.0;
                        println!("run {run}: {key}: {} ms", report::fmt_num(ms));
                        saved.push("ours", key, ms);
                    }
                    Err(err) => {
                        println!("run {run}: {key} failed: {err:#}");
                        run_errors += 1;
                    }
                }
            }
        }
        errors += run_errors;
        saved.push("ours", "errors", run_errors as f64);
    }

    println!();
    println!(
        "large endpoint: {} simulated workers; small endpoint: {}; {} connection(s) send /route/",
        args.workers, args.small_workers, args.connections
    );
    match background.report_interval {
        Some(every) => println!(
            "beside each /route/ phase, every simulated worker of the endpoint reports once per {} s ({} connection(s))",
            report::fmt_num(every.as_secs_f64()),
            background.report_connections
        ),
        None => println!("no worker reports beside the /route/ phases"),
    }
    match background.scrape_interval {
        Some(every) => println!(
            "and GET /metrics is scraped once per {} s",
            report::fmt_num(every.as_secs_f64())
        ),
        None => println!("no /metrics scrapes beside the /route/ phases"),
    }
    let failed = report::print_results(&saved, METRICS, "ours", None);
    drop(engine);
    report::finish(
        "engine bench",
        &args.common,
        &saved,
        METRICS,
        failed,
        errors,
    )
}

// ---------------------------------------------------------------------------
// /route/ with simulated workers
// ---------------------------------------------------------------------------

/// An endpoint whose workers are simulated by reports.
struct SimulatedEndpoint {
    name: String,
    api_key: String,
    workers: u32,
    /// Worker `i` (0-based) has id `FIRST_SIMULATED_ID + id_offset + i`.
    id_offset: i64,
    /// The next worker to report (modulo `workers`), kept across phases so
    /// that every worker takes its turn.
    next_report: Arc<AtomicU32>,
}

impl SimulatedEndpoint {
    /// The `/worker_status/` body of worker `i`: ready, idle, `max_perf`
    /// 100, its own URL (the one it registered with, so the engine does not
    /// sign it again).
    fn report_body(&self, i: u32) -> Bytes {
        report_body(
            FIRST_SIMULATED_ID + self.id_offset + i64::from(i),
            &self.api_key,
            i,
        )
    }
}

/// The report of simulated worker `i` with id `id`.
fn report_body(id: i64, api_key: &str, i: u32) -> Bytes {
    // Distinct URLs, as real workers have; never contacted.
    let url = format!(
        "http://127.{}.{}.{}:8000",
        1 + i / 62_500,
        (i / 250) % 250,
        1 + i % 250
    );
    let report = json!({
        "id": id, "mtoken": api_key, "version": "1.1.0",
        "loadtime": 0.05, "cur_load": 0, "rej_load": 0, "new_load": 0,
        "error_msg": "", "max_perf": 100.0, "cur_perf": 0,
        "cur_capacity": 0, "max_capacity": 0,
        "num_requests_working": 0, "num_requests_recieved": 0,
        "additional_disk_usage": 0.0, "disk_usage": 0.0,
        "working_request_idxs": [], "url": url,
    });
    Bytes::from(report.to_string())
}

/// Creates an endpoint sized for `workers` simulated workers and registers
/// them. The settings make every `/route/` READY: `max_queue_time` is huge,
/// so no worker counts as full (each READY adds one second of queue to a
/// worker until it is released, unconfirmed, after 10 s). They also
/// keep the autoscaler from launching processes: `min_load` 0 wants no
/// worker before the simulated ones register, and `max_workers` equal to
/// their number caps the demand the READY answers create (the engine never
/// stops or destroys external workers).
async fn simulated_endpoint(
    engine: &SpawnedEngine,
    client: &Client,
    name: &str,
    workers: u32,
    id_offset: i64,
) -> anyhow::Result<SimulatedEndpoint> {
    engine
        .create_endpoint(json!({
            "endpoint_name": name,
            "max_workers": workers,
            "cold_workers": 0,
            "min_load": 0,
            "target_util": 1.0,
            "max_queue_time": 2.0e6,
            "target_queue_time": 2.0e6,
        }))
        .await?;
    let endpoint = client.endpoint(name).await?;
    let api_key = endpoint.record().api_key.clone();

    let started = Instant::now();
    let addr = loadgen::resolve(&engine.url).await?;
    let next = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let next = next.clone();
        let api_key = api_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= workers {
                    return anyhow::Ok(());
                }
                let id = FIRST_SIMULATED_ID + id_offset + i64::from(i);
                let reply = conn
                    .post_json("/worker_status/", report_body(id, &api_key, i))
                    .await?;
                if !reply.status.is_success() {
                    bail!(
                        "report of simulated worker {id}: HTTP {}: {}",
                        reply.status,
                        reply.body_text()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    wait_idle_workers(&endpoint, workers).await?;
    println!(
        "registered {workers} simulated workers on {name} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(SimulatedEndpoint {
        name: name.to_owned(),
        api_key,
        workers,
        id_offset,
        next_report: Arc::new(AtomicU32::new(0)),
    })
}

/// Waits until the endpoint lists `count` routable (`IDLE`) workers.
async fn wait_idle_workers(endpoint: &Endpoint, count: u32) -> anyhow::Result<()> {
    let limit = 120 + u64::from(count / 1000);
    let deadline = Instant::now() + Duration::from_secs(limit);
    loop {
        let last = match endpoint.workers().await {
            Ok(workers) => {
                if workers.len() > count as usize {
                    bail!(
                        "endpoint {} lists {} workers, more than the {count} simulated ones: \
                         the engine launched worker processes",
                        endpoint.name(),
                        workers.len()
                    );
                }
                let idle = workers.iter().filter(|w| w.status == "IDLE").count();
                if idle == count as usize {
                    return Ok(());
                }
                format!("{idle} of {} listed workers IDLE", workers.len())
            }
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "endpoint {} did not list {count} IDLE workers within {limit} s (last: {last})",
                endpoint.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct RoutePhase {
    phase: loadgen::PhaseResult,
    ready: u64,
    waiting: u64,
    background: BackgroundResult,
}

/// One new logical request per `/route/` (`request_idx` 0), as a client
/// reserving a worker sends it; counts READY and WAITING answers.
struct RouteOp {
    conn: Connection,
    body: Bytes,
    ready: Arc<AtomicU64>,
    waiting: Arc<AtomicU64>,
}

impl Operation for RouteOp {
    async fn run(&mut self) -> Result<(), OpError> {
        let reply = self
            .conn
            .post_json("/route/", self.body.clone())
            .await
            .map_err(|e| OpError::Broken(format!("{e:#}")))?;
        if reply.status != StatusCode::OK {
            return Err(OpError::Unexpected(format!(
                "/route/ answered {}: {}",
                reply.status,
                reply.body_text()
            )));
        }
        // READY carries `url`; WAITING does not (PROTOCOL.md §3.1).
        let counter = if reply.body.windows(6).any(|w| w == b"\"url\":") {
            &self.ready
        } else {
            &self.waiting
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn route_phase(
    engine: &SpawnedEngine,
    endpoint: &SimulatedEndpoint,
    connections: usize,
    phase: Phase,
    background: Background,
) -> anyhow::Result<RoutePhase> {
    let addr = loadgen::resolve(&engine.url).await?;
    let body = Bytes::from(
        json!({
            "endpoint": endpoint.name,
            "api_key": endpoint.api_key,
            "cost": COST,
            "request_idx": 0,
            "replay_timeout": 60.0,
        })
        .to_string(),
    );
    let ready = Arc::new(AtomicU64::new(0));
    let waiting = Arc::new(AtomicU64::new(0));
    let mut ops = Vec::with_capacity(connections);
    for _ in 0..connections {
        ops.push(RouteOp {
            conn: Connection::open(addr).await?,
            body: body.clone(),
            ready: ready.clone(),
            waiting: waiting.clone(),
        });
    }
    let start = Instant::now();
    let beside = background.spawn(addr, endpoint, phase, start).await?;
    let phase = loadgen::run_closed_loop_from(ops, phase, start).await;
    let background = beside.join().await;
    Ok(RoutePhase {
        phase,
        ready: ready.load(Ordering::Relaxed),
        waiting: waiting.load(Ordering::Relaxed),
        background,
    })
}

// ---------------------------------------------------------------------------
// Load beside /route/: worker reports and /metrics scrapes
// ---------------------------------------------------------------------------

/// What runs beside each `/route/` phase.
#[derive(Debug, Clone, Copy)]
struct Background {
    /// Each simulated worker reports once per this interval (`None`: no reports).
    report_interval: Option<Duration>,
    /// Connections the reports are spread over.
    report_connections: usize,
    /// `GET /metrics` once per this interval (`None`: no scrapes).
    scrape_interval: Option<Duration>,
}

/// What the load beside a `/route/` phase measured.
#[derive(Debug, Default)]
struct BackgroundResult {
    /// Reports started in the measured window and answered 200.
    reports: u64,
    /// The rate the schedule asks for: workers / interval.
    wanted_per_s: f64,
    /// Latency of those reports.
    report_latencies: Latencies,
    /// Latency of the scrapes started in the measured window.
    scrape_latencies: Latencies,
    /// Reports or scrapes that failed (warm-up included).
    errors: u64,
    first_error: Option<String>,
}

impl BackgroundResult {
    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    fn merge(&mut self, other: BackgroundResult) {
        self.reports += other.reports;
        self.report_latencies.merge(other.report_latencies);
        self.scrape_latencies.merge(other.scrape_latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The tasks of the load beside one phase.
struct Beside {
    wanted_per_s: f64,
    tasks: Vec<JoinHandle<BackgroundResult>>,
}

impl Beside {
    async fn join(self) -> BackgroundResult {
        let mut total = BackgroundResult {
            wanted_per_s: self.wanted_per_s,
            ..BackgroundResult::default()
        };
        for task in self.tasks {
            match task.await {
                Ok(part) => total.merge(part),
                Err(join) => total.fail(format!("background task failed: {join}")),
            }
        }
        total
    }
}

/// The `n`-th instant of a schedule of one event per `period` from `start`.
fn nth(start: Instant, period: Duration, n: u64) -> Instant {
    start + period.mul_f64(n as f64)
}

impl Background {
    /// Starts the reports and scrapes of a phase that starts at `start`;
    /// they stop at the phase's end. Connections are opened first.
    async fn spawn(
        self,
        addr: std::net::SocketAddr,
        endpoint: &SimulatedEndpoint,
        phase: Phase,
        start: Instant,
    ) -> anyhow::Result<Beside> {
        let measure_start = start + phase.warmup;
        let end = measure_start + phase.measure;
        let mut beside = Beside {
            wanted_per_s: 0.0,
            tasks: Vec::new(),
        };
        if let Some(every) = self.report_interval {
            let workers = endpoint.workers;
            beside.wanted_per_s = f64::from(workers) / every.as_secs_f64();
            let connections = self.report_connections.min(workers as usize).max(1);
            // Each connection sends every `connections`-th report of the
            // schedule, on time (or at once when behind).
            let period = every.mul_f64(connections as f64 / f64::from(workers));
            let bodies: Arc<Vec<Bytes>> =
                Arc::new((0..workers).map(|i| endpoint.report_body(i)).collect());
            for k in 0..connections {
                let mut conn = Connection::open(addr).await?;
                let bodies = bodies.clone();
                let next = endpoint.next_report.clone();
                let first = start + period.mul_f64(k as f64 / connections as f64);
                beside.tasks.push(tokio::spawn(async move {
                    let mut out = BackgroundResult::default();
                    for n in 0.. {
                        let at = nth(first, period, n);
                        if at >= end {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        let i = next.fetch_add(1, Ordering::Relaxed) % workers;
                        let began = Instant::now();
                        match conn
                            .post_json("/worker_status/", bodies[i as usize].clone())
                            .await
                        {
                            Ok(reply) if reply.status == StatusCode::OK => {
                                if (measure_start..end).contains(&began) {
                                    out.reports += 1;
                                    out.report_latencies.record(began.elapsed());
                                }
                            }
                            Ok(reply) => out.fail(format!(
                                "/worker_status/ answered {}: {}",
                                reply.status,
                                reply.body_text()
                            )),
                            Err(err) => {
                                out.fail(format!("{err:#}"));
                                break;
                            }
                        }
                    }
                    out
                }));
            }
        }
        if let Some(every) = self.scrape_interval {
            let mut conn = Connection::open(addr).await?;
            beside.tasks.push(tokio::spawn(async move {
                let mut out = BackgroundResult::default();
                for n in 0.. {
                    let at = nth(start, every, n);
                    if at >= end {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    let began = Instant::now();
                    match conn.get("/metrics").await {
                        Ok(reply)
                            if reply.status == StatusCode::OK
                                && reply.body.starts_with(b"# HELP nullworker_") =>
                        {
                            if (measure_start..end).contains(&began) {
                                out.scrape_latencies.record(began.elapsed());
                            }
                        }
                        Ok(reply) => out.fail(format!(
                            "GET /metrics answered {}: {}",
                            reply.status,
                            reply.body_text()
                        )),
                        Err(err) => {
                            out.fail(format!("{err:#}"));
                            break;
                        }
                    }
                }
                out
            }));
        }
        Ok(beside)
    }
}

/// An interval option: `None` for 0, else a positive number of seconds.
fn interval(secs: f64, flag: &str) -> anyhow::Result<Option<Duration>> {
    if !(secs.is_finite() && secs >= 0.0) {
        bail!("--{flag} {secs}: expected a non-negative number of seconds");
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

// ---------------------------------------------------------------------------
// Scale from zero
// ---------------------------------------------------------------------------

/// Creates an endpoint with the Null PyWorker's tested configuration (no
/// workers), reserves a session on it through our SDK and returns the time
/// from the call to the session held; then closes the session and deletes
/// the endpoint (which stops its worker).
async fn scale_from_zero(
    engine: &SpawnedEngine,
    client: &Client,
    run: u32,
    key: &str,
) -> anyhow::Result<Duration> {
    let name = format!("bench-zero-{key}-{run}").replace('_', "-");
    let id = engine
        .create_endpoint(json!({
            "endpoint_name": name,
            "target_util": 1.0,
            "min_load": 0,
            "max_queue_time": 1.0,
            "target_queue_time": 0.5,
            "inactivity_timeout": 10,
            "cold_workers": 0,
            "max_workers": 2,
        }))
        .await?;
    let outcome = async {
        let endpoint = client.endpoint(&name).await?;
        let started = Instant::now();
        let session = endpoint
            .session(SessionOptions {
                keep_alive: false,
                check_interval: None,
                timeout: Some(Duration::from_secs(60)),
                ..SessionOptions::default()
            })
            .await?;
        let took = started.elapsed();
        session.close().await?;
        anyhow::Ok(took)
    }
    .await;
    let deleted = engine.delete_endpoint(id).await;
    let took = outcome.with_context(|| engine.context())?;
    deleted?;
    Ok(took)
}
