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
//!   in closed loops and records every answer's latency;
//! * per run, creates a fresh endpoint with the Null PyWorker's tested
//!   configuration and zero workers, and times our SDK's
//!   `Endpoint::session` from the call to the session held (the worker's
//!   201), with the SDK's default polling and with fast polling; the engine
//!   launches a real `nullworker serve` for it.
//!
//! ```text
//! cargo bench -p nullworker --bench engine -- [--runs N] [--quick]
//!     [--save FILE] [--compare FILE] [--connections N] [--workers N]
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
use serde_json::{json, Value};

use common::args::CommonArgs;
use common::loadgen::{self, Connection, OpError, Operation, Phase};
use common::process::{self, ChildGuard};
use common::report::{self, Better, Bound, Metric, SavedRun};

/// Benchmark of the engine's router and of scale-from-zero.
#[derive(Debug, Parser)]
#[command(name = "engine-bench")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Simulated workers of the large endpoint (the engine accepts at most
    /// 10,000 per endpoint).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    workers: u32,

    /// Simulated workers of the small endpoint.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    small_workers: u32,

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
        target: Some((Bound::AtMost(1000.0), "<= 1,000 ms")),
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

/// Account key of the benchmark's engine.
const ACCOUNT_KEY: &str = "nullworker-bench-account-key";
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
        }),
    );
    println!(
        "engine benchmark: {runs} run(s), {} CPUs, load average {}",
        saved.cpus, saved.loadavg_at_start
    );

    let engine = SpawnedEngine::start().await?;
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
            let mut result = route_phase(&engine, endpoint, args.connections, phase).await?;
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
            waiting += result.waiting;
            run_errors += result.phase.errors;
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
// The engine process
// ---------------------------------------------------------------------------

/// Our engine, spawned on a free loopback port with a fresh state directory.
struct SpawnedEngine {
    guard: ChildGuard,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl SpawnedEngine {
    async fn start() -> anyhow::Result<SpawnedEngine> {
        let dir = tempfile::Builder::new()
            .prefix("nullworker-bench-engine-")
            .tempdir()?;
        let log = dir.path().join("engine.log");
        let port = process::free_port()?;
        let mut cmd = process::command(env!("CARGO_BIN_EXE_nullworker"), &log)?;
        cmd.arg("engine")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--account-key")
            .arg(ACCOUNT_KEY)
            // Simulated workers report once; they must stay routable.
            .arg("--stale-after")
            .arg("86400")
            // SIGTERM at the end stops its workers (and they die with it).
            .arg("--stop-workers-on-exit")
            .current_dir(dir.path());
        let guard = ChildGuard::spawn(cmd, log)?;
        let mut engine = SpawnedEngine {
            guard,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            _dir: dir,
        };
        engine.wait_serving().await?;
        Ok(engine)
    }

    /// The engine's recent output, for error messages.
    fn context(&self) -> String {
        format!("the engine's last output:\n{}", self.guard.log_tail())
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = self
                .http
                .get(format!("{}/api/v0/endptjobs/", self.url))
                .bearer_auth(ACCOUNT_KEY)
                .send()
                .await;
            if matches!(&probe, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self.guard.exited() {
                bail!("the engine exited before serving ({status})");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the engine did not serve its web API within 60 s; {}",
                    self.context()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create_endpoint(&self, body: Value) -> anyhow::Result<i64> {
        let reply = self
            .http
            .post(format!("{}/api/v0/endptjobs/", self.url))
            .bearer_auth(ACCOUNT_KEY)
            .json(&body)
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        if !status.is_success() {
            bail!("creating endpoint {body}: HTTP {status}: {text}");
        }
        let value: Value = serde_json::from_str(&text)?;
        value
            .get("result")
            .and_then(Value::as_i64)
            .with_context(|| format!("create endpoint reply without an id: {text}"))
    }

    async fn delete_endpoint(&self, id: i64) -> anyhow::Result<()> {
        let reply = self
            .http
            .delete(format!("{}/api/v0/endptjobs/{id}/", self.url))
            .bearer_auth(ACCOUNT_KEY)
            .send()
            .await?;
        if !reply.status().is_success() {
            bail!("deleting endpoint {id}: HTTP {}", reply.status());
        }
        Ok(())
    }
}

impl Drop for SpawnedEngine {
    fn drop(&mut self) {
        // With --stop-workers-on-exit, the engine stops the workers it
        // launched when it receives SIGTERM.
        self.guard.terminate(Duration::from_secs(15));
    }
}

// ---------------------------------------------------------------------------
// /route/ with simulated workers
// ---------------------------------------------------------------------------

/// An endpoint whose workers are simulated by reports.
struct SimulatedEndpoint {
    name: String,
    api_key: String,
    workers: u32,
}

/// Creates an endpoint sized for `workers` simulated workers and registers
/// them. The settings make every `/route/` READY: `max_queue_time` is huge,
/// so no worker counts as full (each READY adds one second of queue to a
/// worker until it is forgotten after the 60 s `replay_timeout`). They also
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
                // Distinct URLs, as real workers have; never contacted.
                let url = format!("http://127.0.{}.{}:8000", 1 + i / 250, 1 + i % 250);
                let report = json!({
                    "id": id, "mtoken": api_key, "version": "1.1.0",
                    "loadtime": 0.05, "cur_load": 0, "rej_load": 0, "new_load": 0,
                    "error_msg": "", "max_perf": 100.0, "cur_perf": 0,
                    "cur_capacity": 0, "max_capacity": 0,
                    "num_requests_working": 0, "num_requests_recieved": 0,
                    "additional_disk_usage": 0.0, "disk_usage": 0.0,
                    "working_request_idxs": [], "url": url,
                });
                let reply = conn
                    .post_json("/worker_status/", Bytes::from(report.to_string()))
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
    })
}

/// Waits until the endpoint lists `count` routable (`IDLE`) workers.
async fn wait_idle_workers(endpoint: &Endpoint, count: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
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
                "endpoint {} did not list {count} IDLE workers within 120 s (last: {last})",
                endpoint.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct RoutePhase {
    phase: loadgen::PhaseResult,
    ready: u64,
    waiting: u64,
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
    let phase = loadgen::run_closed_loop(ops, phase).await;
    Ok(RoutePhase {
        phase,
        ready: ready.load(Ordering::Relaxed),
        waiting: waiting.load(Ordering::Relaxed),
    })
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
