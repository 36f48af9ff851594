//! Queue benchmark: how soon a pushed job starts on a worker, through the
//! real `nullworker dispatch`, `nullworker engine`, `nullworker serve` and
//! `nullworker consume`, and what the dispatcher costs at 10,000 queued jobs
//! and 1,000 open sessions.
//!
//! * **Warm worker.** An endpoint whose one worker is up and idle (no
//!   session; `inactivity_timeout` one hour keeps it). The benchmark pushes
//!   one job with the queue library and the job's command writes the time it
//!   started (`date +%s%N`, CLOCK_REALTIME like the push time). The next job
//!   is pushed once the job is acknowledged, the dispatcher has seen its
//!   session released and the engine lists the worker idle with no load.
//! * **From zero.** The same on an endpoint with no worker: the engine starts
//!   worker and consumer for the job. Between samples the benchmark waits
//!   until the endpoint has no worker left (`inactivity_timeout` 1 s, engine
//!   `--scale-down-delay 0.5`).
//!
//!   Each sample is also split into steps from the timestamps of the
//!   dispatcher's and the consumer's log lines and of the worker's session
//!   (`GET /session` on its control port, asked by the job's command after
//!   it wrote its start time), all on CLOCK_REALTIME.
//! * **Dispatcher at scale.** In a child process of its own (so its memory is
//!   the dispatcher's): a SQLite queue with 10,000 jobs, 1,000 of them
//!   claimed, and the dispatcher library's `Driver` with `max_sessions`
//!   1,000 over a reserver that holds each session at once (no engine:
//!   1,000 real workers do not fit one machine). CPU per poll (stats read
//!   and decision), CPU of the pure decision, RSS at 1,000 open sessions,
//!   and decision latency while sessions turn over.
//!
//! ```text
//! cargo bench -p nullworker --bench queue -- [--runs N] [--quick]
//!     [--save FILE] [--compare FILE] [--samples N] [--zero-samples N]
//!     [--backends sqlite,redis] [--jobs N] [--sessions N] [--no-warm]
//!     [--no-zero] [--no-scale]
//! ```
//!
//! See docs/benchmarks.md for what each figure means.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use nullworker_queue::dispatch::{
    Dispatcher, Driver, DriverConfig, Effect, EndKind, HeldSession, Input, Metrics, ReserveError,
    Reserver, Stop,
};
use nullworker_queue::{FailOutcome, Job, OpenMode, Queue, QueueError, QueueStats, QueueUrl};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use common::args::CommonArgs;
use common::engine::{SpawnedEngine, ACCOUNT_KEY};
use common::process::{self, ChildGuard};
use common::report::{self, Better, Bound, Metric, SavedRun};
use common::stats::Summary;

/// Benchmark of queue-driven dispatch: push to start latency, and the
/// dispatcher's cost at scale.
#[derive(Debug, Parser)]
#[command(name = "queue-bench")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Samples per run and backend with a warm worker [default: 20, quick: 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    samples: Option<u32>,

    /// Samples per run and backend from zero workers [default: 5, quick: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    zero_samples: Option<u32>,

    /// Queue backends of the latency phases (comma-separated: sqlite, redis).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,redis")]
    backends: Vec<BackendKind>,

    /// Jobs in the queue of the scale phase [default: 10000, quick: 1000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    jobs: Option<u32>,

    /// Open sessions (and claimed jobs) of the scale phase
    /// [default: 1000, quick: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sessions: Option<u32>,

    /// Seconds of each measured window of the scale phase [default: 5, quick: 1].
    #[arg(long, value_name = "SECONDS")]
    scale_secs: Option<f64>,

    /// Print every latency sample with its steps.
    #[arg(long)]
    verbose: bool,

    /// Skip the warm-worker latency.
    #[arg(long)]
    no_warm: bool,

    /// Skip the from-zero latency.
    #[arg(long)]
    no_zero: bool,

    /// Skip the dispatcher-at-scale phase.
    #[arg(long)]
    no_scale: bool,

    /// Internal: run the scale phase in this process and print its figures
    /// as JSON (the parent spawns itself with it).
    #[arg(long, hide = true)]
    scale_child: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    Sqlite,
    Redis,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Warm,
    Zero,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Zero => "zero",
        }
    }
}

/// The steps a sample is split into: key and description.
const STEPS: [(&str, &str); 5] = [
    ("push", "push call"),
    (
        "dispatch",
        "pushed → dispatcher opens a session (poll wait, stats read)",
    ),
    (
        "route",
        "→ session created on the worker (/route/, /session/create, start)",
    ),
    ("claim", "→ job claimed (consumer wakes, requeue, claim)"),
    ("start", "→ command starts (spawn, sh, date)"),
];

const WARM_TARGET_MS: f64 = 20.0;
/// With --verbose, a sample slower than this also prints the dispatcher's
/// and the engine's log lines written while it ran.
const SLOW_SAMPLE_MS: f64 = 1000.0;
const ZERO_TARGET_MS: f64 = 300.0;

/// Every figure, for the given backends and scale settings.
fn metrics(backends: &[BackendKind], jobs: u32, sessions: u32) -> Vec<Metric> {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut out = Vec::new();
    for mode in [Mode::Warm, Mode::Zero] {
        for b in backends {
            let (what, bound, text) = match mode {
                Mode::Warm => ("warm worker", WARM_TARGET_MS, "<= 20 ms"),
                Mode::Zero => ("from zero", ZERO_TARGET_MS, "<= 300 ms"),
            };
            let m = mode.name();
            let n = b.name();
            out.push(Metric {
                key: leak(format!("{m}_{n}_p50_ms")),
                label: leak(format!("push → command start, {what}, {n}, median")),
                unit: "ms",
                better: Better::Lower,
                target: Some((Bound::AtMost(bound), text)),
                published: None,
            });
            out.push(Metric {
                key: leak(format!("{m}_{n}_p90_ms")),
                label: leak(format!("push → command start, {what}, {n}, p90")),
                unit: "ms",
                better: Better::Lower,
                target: None,
                published: None,
            });
            for (step, text) in STEPS {
                out.push(Metric {
                    key: leak(format!("{m}_{n}_step_{step}_ms")),
                    label: leak(format!("  {m} {n}: {text}, median")),
                    unit: "ms",
                    better: Better::Lower,
                    target: None,
                    published: None,
                });
            }
        }
    }
    let scale = |key: &str, label: String, unit: &'static str| Metric {
        key: leak(key.to_owned()),
        label: leak(label),
        unit,
        better: Better::Lower,
        target: None,
        published: None,
    };
    out.extend([
        scale(
            "scale_poll_cpu_us",
            format!(
                "dispatcher poll at {jobs} jobs, {sessions} sessions: CPU (stats read + decision)"
            ),
            "µs",
        ),
        scale(
            "scale_stats_ms",
            format!("  SQLite stats read at {jobs} jobs, median wall time"),
            "ms",
        ),
        scale(
            "scale_decision_cpu_us",
            format!("  decision alone at {sessions} sessions (Dispatcher::handle), CPU"),
            "µs",
        ),
        scale(
            "scale_churn_cpu_us",
            format!("  release + decision + open + held at {sessions} sessions, CPU"),
            "µs",
        ),
        scale(
            "scale_churn_poll_cpu_us",
            "dispatcher poll, one session released per poll: CPU".to_owned(),
            "µs",
        ),
        scale(
            "scale_decision_mean_us",
            "  decision latency (decision_seconds mean) while sessions turn over".to_owned(),
            "µs",
        ),
        scale(
            "scale_open_all_ms",
            format!("time to open {sessions} sessions from start"),
            "ms",
        ),
        scale(
            "scale_rss_mib",
            format!("dispatcher process RSS at {sessions} open sessions"),
            "MiB",
        ),
        scale(
            "scale_rss_growth_mib",
            format!("  RSS growth from 0 to {sessions} sessions"),
            "MiB",
        ),
    ]);
    out.push(report::ERRORS);
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.scale_child {
        return common::main("queue bench (scale)", args.common.runtime(), async move {
            let figures = scale_child(&args).await?;
            println!("{figures}");
            Ok(ExitCode::SUCCESS)
        });
    }
    common::main("queue bench", args.common.runtime(), run(args))
}

struct Settings {
    samples: u32,
    zero_samples: u32,
    jobs: u32,
    sessions: u32,
    scale_secs: Duration,
}

impl Settings {
    fn of(args: &Args) -> anyhow::Result<Settings> {
        let quick = args.common.quick;
        Ok(Settings {
            samples: args.samples.unwrap_or(if quick { 4 } else { 20 }),
            zero_samples: args.zero_samples.unwrap_or(if quick { 2 } else { 5 }),
            jobs: args.jobs.unwrap_or(if quick { 1_000 } else { 10_000 }),
            sessions: args.sessions.unwrap_or(if quick { 100 } else { 1_000 }),
            scale_secs: args.common.secs(args.scale_secs, 5.0, 1.0, "scale-secs")?,
        })
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = Settings::of(&args)?;
    if settings.sessions > settings.jobs {
        bail!(
            "--sessions {} is above --jobs {}: expected at most as many sessions as jobs",
            settings.sessions,
            settings.jobs
        );
    }
    let runs = args.common.runs();
    let mut backends = args.backends.clone();
    backends.dedup();
    let metrics = metrics(&backends, settings.jobs, settings.sessions);
    let mut saved = SavedRun::new(
        "queue",
        json!({
            "runs": runs,
            "quick": args.common.quick,
            "samples": settings.samples,
            "zero_samples": settings.zero_samples,
            "backends": backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "jobs": settings.jobs,
            "sessions": settings.sessions,
            "scale_secs": settings.scale_secs.as_secs_f64(),
            "warm": !args.no_warm,
            "zero": !args.no_zero,
            "scale": !args.no_scale,
        }),
    );
    println!(
        "queue benchmark: {runs} run(s), {} CPUs, load average {}",
        saved.cpus, saved.loadavg_at_start
    );

    let mut modes = Vec::new();
    if !args.no_warm {
        modes.push(Mode::Warm);
    }
    if !args.no_zero {
        modes.push(Mode::Zero);
    }
    let mut latency = if modes.is_empty() || backends.is_empty() {
        None
    } else {
        Some(LatencyBench::start(&backends, &modes).await?)
    };

    let mut errors = 0u64;
    for run in 1..=runs {
        let mut run_errors = 0u64;
        if let Some(bench) = latency.as_mut() {
            for i in 0..bench.setups.len() {
                let setup = &bench.setups[i];
                let (mode, backend) = (setup.mode, setup.backend);
                let count = match mode {
                    Mode::Warm => settings.samples,
                    Mode::Zero => settings.zero_samples,
                };
                match bench.measure(i, run, count, args.verbose).await {
                    Ok(samples) => record_samples(&mut saved, mode, backend, run, &samples),
                    Err(err) => {
                        println!(
                            "run {run}: {} {} failed: {err:#}",
                            mode.name(),
                            backend.name()
                        );
                        run_errors += 1;
                    }
                }
            }
        }
        if !args.no_scale {
            match spawn_scale_child(&settings).await {
                Ok(figures) => record_scale(&mut saved, run, &figures),
                Err(err) => {
                    println!("run {run}: dispatcher at scale failed: {err:#}");
                    run_errors += 1;
                }
            }
        }
        errors += run_errors;
        saved.push("ours", "errors", run_errors as f64);
    }
    drop(latency);

    println!();
    println!(
        "Latency: the real binaries on 127.0.0.1 (engine, dispatch, serve, consume); dispatcher \
         --poll-interval 20 ms (its default), --check-interval 0.1 s (pacing only)."
    );
    println!(
        "Scale: the dispatcher library in a process of its own, sessions held at once by an \
         in-process reserver (no engine: {} real workers do not fit this machine).",
        settings.sessions
    );
    let failed = report::print_results(&saved, &metrics, "ours", None);
    report::finish(
        "queue bench",
        &args.common,
        &saved,
        &metrics,
        failed,
        errors,
    )
}

// ---------------------------------------------------------------------------
// Latency: push → command start, with the real binaries
// ---------------------------------------------------------------------------

/// One sample's timestamps, CLOCK_REALTIME nanoseconds.
#[derive(Debug, Clone, Default)]
struct Sample {
    push: i128,
    pushed: i128,
    decided: Option<i128>,
    session_since: Option<i128>,
    claimed: Option<i128>,
    started: i128,
}

impl Sample {
    fn total_ms(&self) -> f64 {
        ms(self.started - self.push)
    }

    /// The steps of [`STEPS`], in order; `None` where a timestamp is missing.
    fn steps(&self) -> [Option<f64>; 5] {
        let d = |a: Option<i128>, b: Option<i128>| Some(ms(b? - a?));
        [
            Some(ms(self.pushed - self.push)),
            d(Some(self.pushed), self.decided),
            d(self.decided, self.session_since),
            d(self.session_since, self.claimed),
            d(self.claimed, Some(self.started)),
        ]
    }
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

fn realtime_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn median(values: &[f64]) -> f64 {
    Summary::of(values).map_or(f64::NAN, |s| s.median)
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn record_samples(
    saved: &mut SavedRun,
    mode: Mode,
    backend: BackendKind,
    run: u32,
    samples: &[Sample],
) {
    let (m, n) = (mode.name(), backend.name());
    let totals: Vec<f64> = samples.iter().map(Sample::total_ms).collect();
    let p50 = median(&totals);
    let p90 = percentile(&totals, 90.0);
    saved.push("ours", &format!("{m}_{n}_p50_ms"), p50);
    saved.push("ours", &format!("{m}_{n}_p90_ms"), p90);
    let mut parts = Vec::new();
    for (i, (step, _)) in STEPS.iter().enumerate() {
        let values: Vec<f64> = samples.iter().filter_map(|s| s.steps()[i]).collect();
        let v = median(&values);
        saved.push("ours", &format!("{m}_{n}_step_{step}_ms"), v);
        parts.push(format!("{step} {}", report::fmt_num(v)));
    }
    println!(
        "run {run}: {m} {n}: {} samples, push → start median {} ms, p90 {} ms, min {} ms, max {} ms \
         (step medians, ms: {})",
        samples.len(),
        report::fmt_num(p50),
        report::fmt_num(p90),
        report::fmt_num(percentile(&totals, 0.0)),
        report::fmt_num(percentile(&totals, 100.0)),
        parts.join(", ")
    );
}

/// A queue the latency phases push to.
struct BackendQueue {
    url: String,
    queue: Box<dyn Queue>,
}

/// One endpoint with its dispatcher, for one mode and one backend.
struct Setup {
    mode: Mode,
    backend: BackendKind,
    endpoint_id: i64,
    queue: BackendQueue,
    dispatcher: ChildGuard,
    dispatcher_log: PathBuf,
    stamps: PathBuf,
    /// "released" lines the dispatcher has logged so far.
    released: usize,
    warmed_up: bool,
}

struct LatencyBench {
    engine: SpawnedEngine,
    setups: Vec<Setup>,
    _redis: Option<nullworker_queue::testing::TestServer>,
    _dir: tempfile::TempDir,
}

/// `s` quoted for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl LatencyBench {
    async fn start(backends: &[BackendKind], modes: &[Mode]) -> anyhow::Result<LatencyBench> {
        let dir = tempfile::Builder::new()
            .prefix("nullworker-bench-queue-")
            .tempdir()?;
        let redis = if backends.contains(&BackendKind::Redis) {
            Some(nullworker_queue::testing::redis().map_err(|e| anyhow::anyhow!(e))?)
        } else {
            None
        };
        let engine = SpawnedEngine::start(&["--scale-down-delay", "0.5"]).await?;
        let mut setups = Vec::new();
        for &mode in modes {
            for &backend in backends {
                let name = format!("bench-{}-{}", mode.name(), backend.name());
                let url = match backend {
                    BackendKind::Sqlite => format!(
                        "sqlite:{}?queue={name}",
                        dir.path().join("jobs.db").display()
                    ),
                    BackendKind::Redis => format!(
                        "{}?list={name}",
                        redis.as_ref().map(|r| r.url("redis")).unwrap_or_default()
                    ),
                };
                let parsed: QueueUrl = url.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                let queue = nullworker_queue::open(&parsed, OpenMode::Create)
                    .await
                    .with_context(|| format!("opening {url}"))?;
                let stamps = dir.path().join(format!("stamps-{name}"));
                std::fs::create_dir_all(&stamps)?;
                // The job writes its start time first, then asks the worker
                // when its session began (for the breakdown); exits 0 either way.
                let script = r#"date +%s%N > "$0/$NULLWORKER_JOB_ID.t"; curl -s --max-time 5 "http://127.0.0.1:$NULL_CONTROL_PORT/session" > "$0/$NULLWORKER_JOB_ID.s"; exit 0"#;
                let consumer = format!(
                    "RUST_LOG=info,nullworker_queue=debug exec {} consume --queue {} -- sh -c {} {}",
                    shell_quote(env!("CARGO_BIN_EXE_nullworker")),
                    shell_quote(&url),
                    shell_quote(script),
                    shell_quote(&stamps.display().to_string()),
                );
                let inactivity = match mode {
                    // Keeps the worker up between samples.
                    Mode::Warm => 3600.0,
                    // Lets it go soon after each sample.
                    Mode::Zero => 1.0,
                };
                let endpoint_id = engine
                    .create_endpoint(json!({
                        "endpoint_name": name,
                        "target_util": 1.0,
                        "min_load": 0,
                        "max_queue_time": 1.0,
                        "target_queue_time": 0.5,
                        "inactivity_timeout": inactivity,
                        "cold_workers": 0,
                        "max_workers": 1,
                        "consumer_command": consumer,
                    }))
                    .await?;
                let dispatcher_log = dir.path().join(format!("dispatch-{name}.log"));
                let mut cmd = process::command(env!("CARGO_BIN_EXE_nullworker"), &dispatcher_log)?;
                cmd.arg("dispatch")
                    .args(["--endpoint", &name, "--queue", &url])
                    .args(["--api-key", ACCOUNT_KEY])
                    .args(["--autoscaler-url", &engine.url])
                    .args(["--webserver-url", &engine.url])
                    .args(["--check-interval", "0.1"])
                    .env("RUST_LOG", "info")
                    .current_dir(dir.path());
                let dispatcher = ChildGuard::spawn(cmd, dispatcher_log.clone())?;
                setups.push(Setup {
                    mode,
                    backend,
                    endpoint_id,
                    queue: BackendQueue { url, queue },
                    dispatcher,
                    dispatcher_log,
                    stamps,
                    released: 0,
                    warmed_up: false,
                });
            }
        }
        let mut bench = LatencyBench {
            engine,
            setups,
            _redis: redis,
            _dir: dir,
        };
        for i in 0..bench.setups.len() {
            bench.wait_dispatcher_started(i).await?;
        }
        Ok(bench)
    }

    async fn wait_dispatcher_started(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let setup = &mut self.setups[i];
            let text = std::fs::read_to_string(&setup.dispatcher_log).unwrap_or_default();
            if text.contains("holding 0") {
                return Ok(());
            }
            if let Some(status) = setup.dispatcher.exited() {
                bail!(
                    "the dispatcher exited ({status}):\n{}",
                    setup.dispatcher.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the dispatcher did not report its first decision within 30 s:\n{}",
                    setup.dispatcher.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `count` samples on setup `i` (after one unrecorded warm-up sample the
    /// first time).
    async fn measure(
        &mut self,
        i: usize,
        run: u32,
        count: u32,
        verbose: bool,
    ) -> anyhow::Result<Vec<Sample>> {
        if !self.setups[i].warmed_up {
            self.wait_idle(i).await?;
            self.sample(i, run, 0).await?;
            self.setups[i].warmed_up = true;
        }
        let mut samples = Vec::with_capacity(count as usize);
        for n in 1..=count {
            self.wait_idle(i).await?;
            // A pause of 0 to 40 ms, so that pushes do not fall at a fixed
            // phase of the dispatcher's poll (its release checks, which end
            // the previous sample, run on a timer of their own).
            let jitter = (realtime_ns() % 40_000_000) as u64;
            tokio::time::sleep(Duration::from_nanos(jitter)).await;
            let sample = self.sample(i, run, n).await?;
            if verbose {
                let setup = &self.setups[i];
                let steps: Vec<String> = STEPS
                    .iter()
                    .zip(sample.steps())
                    .map(|((step, _), v)| {
                        format!("{step} {}", v.map_or("-".into(), report::fmt_num))
                    })
                    .collect();
                println!(
                    "  {} {} sample {n}: {} ms ({})",
                    setup.mode.name(),
                    setup.backend.name(),
                    report::fmt_num(sample.total_ms()),
                    steps.join(", ")
                );
            }
            if verbose && sample.total_ms() > SLOW_SAMPLE_MS {
                let setup = &self.setups[i];
                let mut logs = vec![
                    setup.dispatcher_log.clone(),
                    self.engine.dir().join("engine.log"),
                ];
                if let Ok(dirs) = std::fs::read_dir(self.engine.state_dir().join("workers")) {
                    for dir in dirs.flatten() {
                        logs.push(dir.path().join("worker.log"));
                        logs.push(dir.path().join("consumer.log"));
                    }
                }
                for path in logs {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines = lines_between(&text, sample.push, sample.started);
                    if lines.is_empty() {
                        continue;
                    }
                    println!("    {} during the sample:", path.display());
                    for line in lines {
                        println!("      {line}");
                    }
                }
            }
            samples.push(sample);
        }
        Ok(samples)
    }

    /// Waits until the next sample may start: warm, the endpoint's one
    /// worker idle with no load; from zero, no worker at all.
    async fn wait_idle(&self, i: usize) -> anyhow::Result<()> {
        let setup = &self.setups[i];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let workers = self.engine.workers(setup.endpoint_id).await?;
            let ready = match setup.mode {
                Mode::Zero => workers.is_empty(),
                Mode::Warm => {
                    workers.len() <= 1
                        && workers
                            .iter()
                            .all(|w| w["status"] == "IDLE" && w["cur_load"].as_f64() == Some(0.0))
                }
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = Value::Array(workers).to_string();
                bail!(
                    "endpoint {} did not become {} within 60 s (workers: {last})",
                    setup.endpoint_id,
                    match setup.mode {
                        Mode::Warm => "idle",
                        Mode::Zero => "empty",
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Pushes one job and follows it to its command's start, its ack and the
    /// release of its session.
    async fn sample(&mut self, i: usize, run: u32, n: u32) -> anyhow::Result<Sample> {
        let state_dir = self.engine.state_dir();
        let setup = &mut self.setups[i];
        let payload = format!(
            "{} {} run {run} sample {n} nonce {}",
            setup.mode.name(),
            setup.backend.name(),
            realtime_ns()
        );
        let push = realtime_ns();
        let id = setup.queue.queue.push(payload.as_bytes()).await?;
        let pushed = realtime_ns();
        let stamp = setup.stamps.join(format!("{id}.t"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let started = loop {
            if let Ok(text) = std::fs::read_to_string(&stamp) {
                if text.ends_with('\n') {
                    break text.trim().parse::<i128>().with_context(|| {
                        format!("{}: not a timestamp: {text:?}", stamp.display())
                    })?;
                }
            }
            if let Some(status) = setup.dispatcher.exited() {
                bail!(
                    "the dispatcher exited ({status}):\n{}",
                    setup.dispatcher.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "job {id} on {} did not start within 60 s; dispatcher:\n{}\n{}",
                    setup.queue.url,
                    setup.dispatcher.log_tail(),
                    consumer_logs_tail(&state_dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };

        // The job is acknowledged…
        loop {
            let stats = setup.queue.queue.stats().await?;
            if stats.backlog == 0 && stats.in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!("job {id} was not acknowledged within 60 s (counts {stats:?})");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // …and the dispatcher saw its session released.
        let log = loop {
            let text = std::fs::read_to_string(&setup.dispatcher_log).unwrap_or_default();
            let released = text
                .lines()
                .filter(|l| l.contains(" released after "))
                .count();
            if released > setup.released {
                setup.released = released;
                break text;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the dispatcher did not see the session of job {id} released within 60 s:\n{}",
                    setup.dispatcher.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };

        let decided = first_line_at_or_after(&log, push, |l| l.contains(" opening "));
        let session_since = std::fs::read_to_string(setup.stamps.join(format!("{id}.s")))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["since"].as_f64())
            .map(|s| (s * 1e9) as i128);
        let job_token = format!("job={id}");
        let claimed = consumer_line(&state_dir, |l| {
            l.contains("claimed job") && l.split_whitespace().any(|w| w == job_token)
        });
        Ok(Sample {
            push,
            pushed,
            decided,
            session_since,
            claimed,
            started,
        })
    }
}

impl Drop for LatencyBench {
    fn drop(&mut self) {
        // Dispatchers first (they close nothing: every session was released),
        // then the engine with its workers.
        for setup in &mut self.setups {
            setup.dispatcher.terminate(Duration::from_secs(5));
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The timestamp a `tracing` log line starts with
/// (`2025-01-02T03:04:05.123456Z`), in Unix nanoseconds.
fn log_time_ns(line: &str) -> Option<i128> {
    let stamp = line.split_whitespace().next()?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    let digits: String = frac
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    let frac_ns = format!("{digits:0<9}").parse::<i128>().ok()?;
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    Some(i128::from(secs) * 1_000_000_000 + frac_ns)
}

/// The lines of `log` stamped from `from` to `to`, ANSI sequences removed.
fn lines_between(log: &str, from: i128, to: i128) -> Vec<String> {
    log.lines()
        .map(strip_ansi)
        .filter(|line| log_time_ns(line).is_some_and(|t| t >= from && t <= to))
        .collect()
}

/// Time of the first line of `log` matching `pred` stamped at or after `after`.
fn first_line_at_or_after(log: &str, after: i128, pred: impl Fn(&str) -> bool) -> Option<i128> {
    log.lines().find_map(|raw| {
        let line = strip_ansi(raw);
        let t = log_time_ns(&line)?;
        (t >= after && pred(&line)).then_some(t)
    })
}

/// Every consumer log of the engine's workers.
fn consumer_logs(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("workers")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join("consumer.log"))
        .filter(|p| p.is_file())
        .collect()
}

/// Time of the first consumer log line matching `pred`, in any worker's log.
fn consumer_line(state_dir: &Path, pred: impl Fn(&str) -> bool) -> Option<i128> {
    consumer_logs(state_dir).iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        first_line_at_or_after(&text, 0, &pred)
    })
}

fn consumer_logs_tail(state_dir: &Path) -> String {
    consumer_logs(state_dir)
        .iter()
        .map(|p| format!("{}:\n{}", p.display(), process::log_tail(p, 10)))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The dispatcher at scale (in a child process)
// ---------------------------------------------------------------------------

async fn spawn_scale_child(settings: &Settings) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("finding the benchmark's own executable")?;
    let output = tokio::process::Command::new(exe)
        .arg("--scale-child")
        .args(["--jobs", &settings.jobs.to_string()])
        .args(["--sessions", &settings.sessions.to_string()])
        .args([
            "--scale-secs",
            &settings.scale_secs.as_secs_f64().to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running the scale phase")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the scale phase failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("scale phase output: {stdout}"))
}

fn record_scale(saved: &mut SavedRun, run: u32, figures: &Value) {
    let keys = [
        "scale_poll_cpu_us",
        "scale_stats_ms",
        "scale_decision_cpu_us",
        "scale_churn_cpu_us",
        "scale_churn_poll_cpu_us",
        "scale_decision_mean_us",
        "scale_open_all_ms",
        "scale_rss_mib",
        "scale_rss_growth_mib",
    ];
    let mut parts = Vec::new();
    for key in keys {
        let value = figures[key].as_f64().unwrap_or(f64::NAN);
        saved.push("ours", key, value);
        parts.push(format!(
            "{} {}",
            key.trim_start_matches("scale_"),
            report::fmt_num(value)
        ));
    }
    println!(
        "run {run}: dispatcher at scale ({} polls, {} decisions observed): {}",
        figures["polls"],
        figures["decisions_observed"],
        parts.join(", ")
    );
}

/// CPU time of this process (user + system), from getrusage.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; nothing else is touched.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the struct we pass.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A queue that counts its `stats` calls (the driver's polls).
struct CountingQueue {
    inner: Box<dyn Queue>,
    stats_calls: AtomicU64,
}

#[async_trait::async_trait]
impl Queue for CountingQueue {
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.stats_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.stats().await
    }
    async fn claim(&self, consumer: &str, wait: Duration) -> Result<Option<Job>, QueueError> {
        self.inner.claim(consumer, wait).await
    }
    async fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        self.inner.heartbeat(job).await
    }
    async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        self.inner.ack(job).await
    }
    async fn fail(&self, job: &Job) -> Result<FailOutcome, QueueError> {
        self.inner.fail(job).await
    }
    async fn release(&self, job: &Job) -> Result<(), QueueError> {
        self.inner.release(job).await
    }
    async fn requeue_expired(&self) -> Result<u64, QueueError> {
        self.inner.requeue_expired().await
    }
    async fn push(&self, payload: &[u8]) -> Result<String, QueueError> {
        self.inner.push(payload).await
    }
}

/// Sessions held at once, each until the benchmark releases it.
#[derive(Default)]
struct InstantReserver {
    next: AtomicU64,
    held: Arc<AtomicUsize>,
    live: Mutex<VecDeque<CancellationToken>>,
}

impl InstantReserver {
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Ends the oldest held session as its worker's release would.
    fn release_one(&self) {
        let token = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        if let Some(token) = token {
            token.cancel();
        }
    }
}

struct InstantSession {
    id: String,
    url: String,
    released: CancellationToken,
    held: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Reserver for InstantReserver {
    type Session = InstantSession;

    async fn reserve(&self, _cancel: CancellationToken) -> Result<InstantSession, ReserveError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let released = CancellationToken::new();
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(released.clone());
        self.held.fetch_add(1, Ordering::Relaxed);
        Ok(InstantSession {
            id: format!("bench-session-{n}"),
            url: format!("http://127.0.{}.{}:8000", 1 + n / 250 % 250, 1 + n % 250),
            released,
            held: Arc::clone(&self.held),
        })
    }
}

#[async_trait::async_trait]
impl HeldSession for InstantSession {
    fn id(&self) -> &str {
        &self.id
    }
    fn url(&self) -> &str {
        &self.url
    }
    async fn ended(&self) -> (EndKind, Option<String>) {
        self.released.cancelled().await;
        self.held.fetch_sub(1, Ordering::Relaxed);
        (EndKind::Released, None)
    }
    async fn close(&self) -> (EndKind, Option<String>) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        (EndKind::Closed, None)
    }
}

/// `sum` and `count` of the driver's `decision_seconds` histogram.
fn decision_histogram(metrics: &Metrics) -> (f64, f64) {
    let text = metrics.render();
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("nullworker_dispatch_decision_seconds_{suffix}")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

/// CPU per `Dispatcher::handle` at `sessions` held sessions: a reading that
/// changes nothing, and a release followed by the reading that replaces it.
fn pure_decisions(sessions: usize, stats: QueueStats, rounds: u32) -> (f64, f64) {
    let t0 = tokio::time::Instant::now();
    let mut machine = Dispatcher::new(sessions, t0);
    let mut held = VecDeque::new();
    let hold = |machine: &mut Dispatcher, effects: Vec<Effect>, held: &mut VecDeque<u64>| {
        for effect in effects {
            if let Effect::Open { slot } = effect {
                let now = tokio::time::Instant::now();
                machine.handle(
                    now,
                    Input::SessionHeld {
                        slot,
                        session_id: format!("s{slot}"),
                        worker_url: format!("http://127.0.0.1:{}", 10_000 + slot),
                    },
                );
                held.push_back(slot);
            }
        }
    };
    let effects = machine.handle(
        t0,
        Input::QueueObserved {
            stats,
            asked_at: t0,
        },
    );
    hold(&mut machine, effects, &mut held);

    let cpu = thread_cpu();
    for _ in 0..rounds {
        let now = tokio::time::Instant::now();
        std::hint::black_box(machine.handle(
            now,
            Input::QueueObserved {
                stats,
                asked_at: now,
            },
        ));
    }
    let steady = (thread_cpu() - cpu).as_secs_f64() * 1e6 / f64::from(rounds);

    let cpu = thread_cpu();
    for _ in 0..rounds {
        let Some(slot) = held.pop_front() else { break };
        let now = tokio::time::Instant::now();
        machine.handle(
            now,
            Input::SessionEnded {
                slot,
                how: EndKind::Released,
                detail: None,
            },
        );
        let now = tokio::time::Instant::now();
        let effects = machine.handle(
            now,
            Input::QueueObserved {
                stats,
                asked_at: now,
            },
        );
        hold(&mut machine, effects, &mut held);
    }
    let churn = (thread_cpu() - cpu).as_secs_f64() * 1e6 / f64::from(rounds);
    (steady, churn)
}

/// The scale phase, run in a process of its own; its figures as JSON.
async fn scale_child(args: &Args) -> anyhow::Result<Value> {
    let settings = Settings::of(args)?;
    let (jobs, sessions) = (settings.jobs, settings.sessions as usize);
    let dir = tempfile::Builder::new()
        .prefix("nullworker-bench-scale-")
        .tempdir()?;
    // Leases far longer than the phase: claimed jobs stay in flight.
    let url = format!(
        "sqlite:{}?queue=jobs&visibility_timeout=86400",
        dir.path().join("jobs.db").display()
    );
    let parsed: QueueUrl = url.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let inner = nullworker_queue::open(&parsed, OpenMode::Create).await?;
    for i in 0..jobs {
        inner.push(format!("job {i}").as_bytes()).await?;
    }
    for _ in 0..sessions {
        inner
            .claim("bench-consumer", Duration::ZERO)
            .await?
            .context("a job to claim")?;
    }
    let stats = inner.stats().await?;
    let want = QueueStats {
        backlog: u64::from(jobs) - sessions as u64,
        in_flight: sessions as u64,
        dead: 0,
    };
    if stats != want {
        bail!("queue counts {stats:?}, expected {want:?}");
    }
    let mut reads = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        inner.stats().await?;
        reads.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let stats_ms = median(&reads);
    let rounds = 2_000;
    let (decision_cpu_us, churn_cpu_us) = pure_decisions(sessions, stats, rounds);

    let queue = Arc::new(CountingQueue {
        inner,
        stats_calls: AtomicU64::new(0),
    });
    let reserver = Arc::new(InstantReserver::default());
    let metrics = Arc::new(Metrics::new());
    let config = DriverConfig {
        max_sessions: sessions,
        ..DriverConfig::default()
    };
    let poll_interval = config.poll_interval;
    let stop = Stop::default();
    let rss_before = process::rss_kib(std::process::id()).unwrap_or(0);
    let driver = Driver::new(
        Arc::clone(&queue) as Arc<dyn Queue>,
        Arc::clone(&reserver),
        config,
    )
    .metrics(Arc::clone(&metrics));
    let started = Instant::now();
    let task = tokio::spawn(driver.run(stop.clone()));
    let deadline = started + Duration::from_secs(120);
    while reserver.held() < sessions {
        if Instant::now() >= deadline {
            bail!(
                "{} of {sessions} sessions held after 120 s",
                reserver.held()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let open_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_at = process::rss_kib(std::process::id()).unwrap_or(0);

    // Steady: nothing changes; every poll reads the counts and decides.
    let (calls, cpu) = (queue.stats_calls.load(Ordering::Relaxed), process_cpu());
    tokio::time::sleep(settings.scale_secs).await;
    let polls = queue.stats_calls.load(Ordering::Relaxed) - calls;
    let poll_cpu_us = (process_cpu() - cpu).as_secs_f64() * 1e6 / polls.max(1) as f64;

    // Turnover: one session released per poll interval; each is replaced.
    let (sum0, count0) = decision_histogram(&metrics);
    let (calls, cpu) = (queue.stats_calls.load(Ordering::Relaxed), process_cpu());
    let churn_until = Instant::now() + settings.scale_secs;
    while Instant::now() < churn_until {
        reserver.release_one();
        tokio::time::sleep(poll_interval).await;
    }
    let churn_polls = queue.stats_calls.load(Ordering::Relaxed) - calls;
    let churn_poll_cpu_us = (process_cpu() - cpu).as_secs_f64() * 1e6 / churn_polls.max(1) as f64;
    let (sum1, count1) = decision_histogram(&metrics);
    let decisions = count1 - count0;
    let decision_mean_us = if decisions > 0.0 {
        (sum1 - sum0) / decisions * 1e6
    } else {
        f64::NAN
    };

    stop.abort.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    Ok(json!({
        "polls": polls,
        "decisions_observed": decisions,
        "scale_poll_cpu_us": poll_cpu_us,
        "scale_stats_ms": stats_ms,
        "scale_decision_cpu_us": decision_cpu_us,
        "scale_churn_cpu_us": churn_cpu_us,
        "scale_churn_poll_cpu_us": churn_poll_cpu_us,
        "scale_decision_mean_us": decision_mean_us,
        "scale_open_all_ms": open_all_ms,
        "scale_rss_mib": rss_at as f64 / 1024.0,
        "scale_rss_growth_mib": (rss_at as f64 - rss_before as f64) / 1024.0,
    }))
}
