//! Worker benchmark: what a user of `nullworker serve` feels, measured side
//! by side with the Python reference null worker (`bench/reference/`).
//!
//! For each run it spawns a fresh worker against an in-process fake engine
//! (`/pubkey/`, `/worker_status/`, `/delete_requests/` on 127.0.0.1) and
//! measures: the time from spawn to the first ready report; idle resident
//! memory; session create+end cycles per second and their latency from one
//! keep-alive connection (signed `auth_data`); `/ping` requests per second
//! and their latency from 16 concurrent keep-alive connections; resident
//! memory again after that load; then (ours) a flood of connections that
//! each send half a request: resident memory at its peak, 10 s after the
//! flood closed, and how long it took to come back within twice the idle
//! figure. A second worker of ours (100 ms busy-poll window, no periodic
//! health checks) gives the CPU-time figures of busy polling (it polls after
//! signed requests, sleeps when quiet and after refused requests) and the
//! heartbeat interval of a quiet worker. With `--worker-url` it measures an already
//! running worker instead (throughput, latency, and memory if its pid is
//! given). Figures are min/median/max over runs, checked against the
//! targets of the worker's performance requirements.
//!
//! ```text
//! cargo bench -p nullworker --bench worker -- [--target ours|reference|both]
//!     [--runs N] [--quick] [--save FILE] [--compare FILE]
//! cargo bench -p nullworker --bench worker -- --worker-url http://127.0.0.1:8000 \
//!     [--worker-pid PID] (--engine-key KEY.pem | --unsigned)
//! ```
//!
//! See docs/benchmarks.md for what each figure means.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use nullworker_protocol::SigningKey;
use serde_json::{json, Value};

use common::args::CommonArgs;
use common::loadgen::{self, Connection, OpError, Operation, Phase};
use common::process::{self, ChildGuard};
use common::report::{self, Better, Bound, Metric, SavedRun};

/// Benchmark of the worker (ours, the Python reference, or any worker URL).
#[derive(Debug, Parser)]
#[command(name = "worker-bench")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Which worker(s) to spawn and measure [default: both when the Python
    /// reference can run, else ours].
    #[arg(long, value_enum, conflicts_with = "worker_url")]
    target: Option<TargetChoice>,

    /// Measure an already running worker at this plain-http URL (its
    /// `auth_data.url`) instead of spawning one: throughput and latency only.
    #[arg(long, value_name = "URL")]
    worker_url: Option<String>,

    /// Process id of the worker at --worker-url, to read its memory.
    #[arg(long, value_name = "PID", requires = "worker_url")]
    worker_pid: Option<u32>,

    /// PEM private key of the engine the worker trusts, used to sign
    /// `auth_data` [default with spawned workers: a fresh key].
    #[arg(long, value_name = "FILE")]
    engine_key: Option<PathBuf>,

    /// Send placeholder signatures (for a worker running with UNSECURED=true).
    #[arg(long, conflicts_with = "engine_key")]
    unsigned: bool,

    /// Python interpreter for the reference worker [default: .venv/bin/python
    /// of the repository].
    #[arg(long, env = "NULLWORKER_PYTHON", value_name = "FILE")]
    python: Option<PathBuf>,

    /// Extra environment for our spawned worker (repeatable), e.g.
    /// `--ours-env RUST_LOG=warn`.
    #[arg(long, value_name = "KEY=VALUE")]
    ours_env: Vec<String>,

    /// Concurrent keep-alive connections of the `/ping` phase.
    #[arg(long, default_value_t = 16)]
    connections: usize,

    /// Measured seconds of the create+end phase [default: 3, quick: 0.5].
    #[arg(long, value_name = "SECONDS")]
    cycle_secs: Option<f64>,

    /// Measured seconds of the `/ping` phase [default: 5, quick: 1].
    #[arg(long, value_name = "SECONDS")]
    ping_secs: Option<f64>,

    /// Warm-up seconds before each measured phase [default: 1, quick: 0.2].
    #[arg(long, value_name = "SECONDS")]
    warmup_secs: Option<f64>,

    /// Seconds a spawned worker may take to send its first ready report.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    ready_timeout: f64,

    /// Connections of the flood phase (ours only; 0 skips it) [default:
    /// 15000, quick: 2000].
    #[arg(long, value_name = "N")]
    flood_connections: Option<usize>,

    /// Skip the busy-polling CPU and heartbeat figures (a second worker).
    #[arg(long)]
    skip_behaviour: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetChoice {
    Ours,
    Reference,
    Both,
}

/// A worker implementation the benchmark can spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Reference,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Reference => "reference",
        }
    }
}

/// The published figures of the Python reference and the targets derived
/// from them (the worker's performance requirements).
const METRICS: &[Metric] = &[
    Metric {
        key: "ready_ms",
        label: "spawn to first ready report",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(100.0), "<= 100 ms")),
        published: Some(1300.0),
    },
    Metric {
        key: "idle_rss_mib",
        label: "idle RSS",
        unit: "MiB",
        better: Better::Lower,
        target: Some((Bound::AtMost(8.0), "< 8 MiB")),
        published: Some(62.0),
    },
    Metric {
        key: "rss_after_load_mib",
        label: "RSS after load",
        unit: "MiB",
        better: Better::Lower,
        target: Some((Bound::AtMost(8.0), "< 8 MiB")),
        published: Some(70.0),
    },
    Metric {
        key: "rss_growth_mib",
        label: "RSS growth under load",
        unit: "MiB",
        better: Better::Lower,
        target: Some((Bound::AtMost(1.0), "<= 1 MiB (flat)")),
        published: Some(8.0),
    },
    Metric {
        key: "cycles_per_s",
        label: "create+end cycles/s, 1 conn",
        unit: "1/s",
        better: Better::Higher,
        target: Some((Bound::TimesReference(5.0), ">= 5x ref")),
        published: Some(3900.0),
    },
    Metric {
        key: "cycle_p50_ms",
        label: "create+end p50",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: Some(0.23),
    },
    Metric {
        key: "cycle_p99_ms",
        label: "create+end p99",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(1.0), "< 1 ms")),
        published: Some(0.44),
    },
    Metric {
        key: "ping_per_s",
        label: "/ping req/s, 16 conns",
        unit: "1/s",
        better: Better::Higher,
        target: Some((Bound::TimesReference(10.0), ">= 10x ref")),
        published: Some(1800.0),
    },
    Metric {
        key: "ping_p50_ms",
        label: "/ping p50",
        unit: "ms",
        better: Better::Lower,
        target: None,
        published: Some(8.6),
    },
    Metric {
        key: "ping_p99_ms",
        label: "/ping p99",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(2.0), "< 2 ms")),
        published: Some(13.8),
    },
    Metric {
        key: "flood_peak_rss_mib",
        label: "RSS during a connection flood",
        unit: "MiB",
        better: Better::Lower,
        target: Some((Bound::AtMost(64.0), "<= 64 MiB")),
        published: None,
    },
    Metric {
        key: "flood_rss_10s_mib",
        label: "RSS 10 s after the flood",
        unit: "MiB",
        better: Better::Lower,
        target: None,
        published: None,
    },
    Metric {
        key: "flood_rss_10s_ratio",
        label: "RSS 10 s after the flood / idle",
        unit: "x",
        better: Better::Lower,
        target: Some((Bound::AtMost(2.0), "<= 2x idle")),
        published: None,
    },
    Metric {
        key: "flood_recover_s",
        label: "flood closed to RSS <= 2x idle",
        unit: "s",
        better: Better::Lower,
        target: Some((Bound::AtMost(10.0), "<= 10 s")),
        published: None,
    },
    Metric {
        key: "flood_connected",
        label: "flood connections established",
        unit: "count",
        better: Better::Higher,
        target: None,
        published: None,
    },
    Metric {
        key: "busy_cpu_ms",
        label: "CPU, signed /ping every 20 ms, 2 s",
        unit: "ms",
        better: Better::Higher,
        target: Some((Bound::AtLeast(300.0), ">= 300 ms (polls)")),
        published: None,
    },
    Metric {
        key: "quiet_cpu_ms",
        label: "CPU in a quiet second",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(100.0), "<= 100 ms (sleeps)")),
        published: None,
    },
    Metric {
        key: "refused_cpu_ms",
        label: "CPU, refused requests every 20 ms, 1 s",
        unit: "ms",
        better: Better::Lower,
        target: Some((Bound::AtMost(200.0), "<= 200 ms (no polling)")),
        published: None,
    },
    Metric {
        key: "heartbeat_s",
        label: "heartbeat interval, quiet worker",
        unit: "s",
        better: Better::Lower,
        target: Some((Bound::Between(9.0, 14.0), "9 to 14 s")),
        published: None,
    },
    report::ERRORS,
];

/// Durations of the measured phases.
#[derive(Debug, Clone, Copy)]
struct Timings {
    cycles: Phase,
    ping: Phase,
    /// Wait after the ready report before reading idle memory.
    idle_settle: Duration,
    /// Wait after the load before reading memory again.
    after_load_settle: Duration,
    /// Connections of the flood phase (0: none).
    flood_connections: usize,
    /// Whether to wait for two heartbeats (about 20 s).
    heartbeat: bool,
}

impl Timings {
    fn from_args(args: &Args) -> anyhow::Result<Timings> {
        let quick = args.common.quick;
        let warmup = args
            .common
            .secs(args.warmup_secs, 1.0, 0.2, "warmup-secs")?;
        Ok(Timings {
            cycles: Phase {
                warmup,
                measure: args.common.secs(args.cycle_secs, 3.0, 0.5, "cycle-secs")?,
                poll: !args.common.client_sleeps,
            },
            ping: Phase {
                warmup,
                measure: args.common.secs(args.ping_secs, 5.0, 1.0, "ping-secs")?,
                poll: !args.common.client_sleeps,
            },
            idle_settle: Duration::from_secs_f64(if quick { 0.3 } else { 1.0 }),
            after_load_settle: Duration::from_millis(500),
            flood_connections: args
                .flood_connections
                .unwrap_or(if quick { 2_000 } else { 15_000 }),
            heartbeat: !quick,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::main("worker bench", args.common.runtime(), run(args))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference_script() -> PathBuf {
    repo_root().join("bench/reference/null_worker.py")
}

fn python_path(args: &Args) -> PathBuf {
    args.python
        .clone()
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// Why the Python reference cannot run here, if it cannot.
fn reference_unavailable(args: &Args) -> Option<String> {
    let script = reference_script();
    if !script.is_file() {
        return Some(format!("{} does not exist", script.display()));
    }
    let python = python_path(args);
    if !python.exists() {
        return Some(format!(
            "no Python at {} (run scripts/setup-python.sh or set NULLWORKER_PYTHON)",
            python.display()
        ));
    }
    None
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let timings = Timings::from_args(&args)?;
    let runs = args.common.runs();
    let settings = json!({
        "runs": runs,
        "quick": args.common.quick,
        "connections": args.connections,
        "client_threads": args.common.client_threads,
        "client_sleeps": args.common.client_sleeps,
        "cycle_warmup_secs": timings.cycles.warmup.as_secs_f64(),
        "cycle_secs": timings.cycles.measure.as_secs_f64(),
        "ping_warmup_secs": timings.ping.warmup.as_secs_f64(),
        "ping_secs": timings.ping.measure.as_secs_f64(),
        "worker_url": args.worker_url,
        "flood_connections": timings.flood_connections,
        "behaviour": !args.skip_behaviour,
    });
    let mut saved = SavedRun::new("worker", settings);
    let key = signing_key(&args)?;
    println!(
        "worker benchmark: {runs} run(s), {} CPUs, load average {}",
        saved.cpus, saved.loadavg_at_start
    );

    let (primary, reference, errors) = match &args.worker_url {
        Some(url) => {
            let errors = run_against_url(&args, url, key.as_ref(), timings, &mut saved).await?;
            ("worker", None, errors)
        }
        None => {
            let key = key.expect("spawned workers always get a key");
            let kinds = spawn_kinds(&args)?;
            let errors = run_spawned(&args, &kinds, &key, timings, &mut saved).await?;
            let primary = if kinds.contains(&Kind::Ours) {
                "ours"
            } else {
                "reference"
            };
            let reference = (kinds.len() == 2).then_some("reference");
            (primary, reference, errors)
        }
    };

    println!();
    let failed = report::print_results(&saved, METRICS, primary, reference);
    report::finish(
        "worker bench",
        &args.common,
        &saved,
        METRICS,
        failed,
        errors,
    )
}

fn signing_key(args: &Args) -> anyhow::Result<Option<SigningKey>> {
    if let Some(path) = &args.engine_key {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --engine-key {}", path.display()))?;
        let key = SigningKey::from_pem(&pem).with_context(|| {
            format!(
                "--engine-key {}: expected an RSA private key PEM",
                path.display()
            )
        })?;
        return Ok(Some(key));
    }
    if args.worker_url.is_some() {
        if !args.unsigned {
            bail!("--worker-url needs --engine-key FILE (the key of the engine the worker trusts) or --unsigned");
        }
        return Ok(None);
    }
    Ok(Some(
        SigningKey::generate_default().context("generating the bench signing key")?,
    ))
}

fn spawn_kinds(args: &Args) -> anyhow::Result<Vec<Kind>> {
    let unavailable = reference_unavailable(args);
    Ok(match args.target {
        Some(TargetChoice::Ours) => vec![Kind::Ours],
        Some(TargetChoice::Reference | TargetChoice::Both) => {
            if let Some(why) = unavailable {
                bail!("the Python reference cannot run: {why}");
            }
            if args.target == Some(TargetChoice::Both) {
                vec![Kind::Ours, Kind::Reference]
            } else {
                vec![Kind::Reference]
            }
        }
        None => match unavailable {
            None => vec![Kind::Ours, Kind::Reference],
            Some(why) => {
                println!("Python reference not measured ({why}); its published figures are shown instead");
                vec![Kind::Ours]
            }
        },
    })
}

// ---------------------------------------------------------------------------
// Spawned workers
// ---------------------------------------------------------------------------

/// Spawns and measures each kind once per run, alternating kinds so that
/// drifting background load affects both alike. Returns failed operations.
async fn run_spawned(
    args: &Args,
    kinds: &[Kind],
    key: &SigningKey,
    timings: Timings,
    saved: &mut SavedRun,
) -> anyhow::Result<u64> {
    let engine = FakeEngine::start(key.verifying_key().to_spki_pem()).await?;
    let ids = AtomicU64::new(1);
    let mut errors = 0;
    let mut probed = Vec::new();
    for run in 1..=args.common.runs() {
        for &kind in kinds {
            let container_id = ids.fetch_add(1, Ordering::Relaxed) as i64;
            let mut worker = spawn_worker(args, kind, &engine, container_id, &[])?;
            let mut figures = measure_spawned(args, kind, &engine, &mut worker, key, timings)
                .await
                .with_context(|| {
                    format!(
                        "{} worker, run {run}; its last output:\n{}",
                        kind.name(),
                        worker.guard.log_tail()
                    )
                })?;
            if !probed.contains(&kind) {
                probed.push(kind);
                let verdict = probe_create_signature(&worker.url, key, &worker.seq).await;
                println!(
                    "{}: signature check on /session/create: {verdict}",
                    kind.name()
                );
            }
            drop(worker);
            if kind == Kind::Ours && !args.skip_behaviour {
                let container_id = ids.fetch_add(1, Ordering::Relaxed) as i64;
                figures.behaviour =
                    Some(measure_behaviour(args, &engine, key, container_id, timings).await?);
            }
            errors += figures.errors;
            figures.print_line(kind.name(), run);
            figures.push(saved, kind.name());
        }
    }
    engine.stop();
    Ok(errors)
}

/// A spawned worker: its process, URL and the counter of `reqnum`s sent to it.
struct SpawnedWorker {
    guard: ChildGuard,
    url: String,
    container_id: i64,
    seq: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

fn spawn_worker(
    args: &Args,
    kind: Kind,
    engine: &FakeEngine,
    container_id: i64,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<SpawnedWorker> {
    let dir = tempfile::Builder::new()
        .prefix("nullworker-bench-")
        .tempdir()?;
    let log = dir.path().join("worker.log");
    let port = process::free_port()?;
    let http_port = process::free_port()?;
    let control_port = process::free_port()?;
    let mut cmd = match kind {
        Kind::Ours => {
            let mut cmd = process::command(env!("CARGO_BIN_EXE_nullworker"), &log)?;
            cmd.arg("serve");
            for pair in &args.ours_env {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--ours-env {pair:?}: expected KEY=VALUE"))?;
                cmd.env(k, v);
            }
            cmd
        }
        Kind::Reference => {
            let mut cmd = process::command(python_path(args), &log)?;
            cmd.arg(reference_script()).env("PYTHONUNBUFFERED", "1");
            cmd
        }
    };
    cmd.current_dir(dir.path())
        .env("CONTAINER_ID", container_id.to_string())
        .env("REPORT_ADDR", engine.base_url())
        .env("MASTER_TOKEN", "bench-master-token")
        .env("WORKER_PORT", port.to_string())
        .env("WORKER_HTTP_PORT", http_port.to_string())
        .env(format!("VAST_TCP_PORT_{port}"), port.to_string())
        .env("PUBLIC_IPADDR", "127.0.0.1")
        .env("NULL_CONTROL_PORT", control_port.to_string())
        .env("USE_SSL", "false")
        .env("UNSECURED", "false");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let guard = ChildGuard::spawn(cmd, log)?;
    Ok(SpawnedWorker {
        guard,
        url: format!("http://127.0.0.1:{port}"),
        container_id,
        seq: Arc::new(AtomicU64::new(1)),
        _dir: dir,
    })
}

/// The figures of one run of one worker.
#[derive(Debug, Default)]
struct RunFigures {
    ready_ms: Option<f64>,
    idle_rss_mib: Option<f64>,
    rss_after_load_mib: Option<f64>,
    cycles_per_s: f64,
    cycle_p50_ms: f64,
    cycle_p99_ms: f64,
    ping_per_s: f64,
    ping_p50_ms: f64,
    ping_p99_ms: f64,
    flood: Option<FloodFigures>,
    behaviour: Option<BehaviourFigures>,
    errors: u64,
}

impl RunFigures {
    fn push(&self, saved: &mut SavedRun, target: &str) {
        let mut put = |key: &str, value: Option<f64>| {
            if let Some(v) = value {
                saved.push(target, key, v);
            }
        };
        put("ready_ms", self.ready_ms);
        put("idle_rss_mib", self.idle_rss_mib);
        put("rss_after_load_mib", self.rss_after_load_mib);
        put(
            "rss_growth_mib",
            self.idle_rss_mib
                .zip(self.rss_after_load_mib)
                .map(|(idle, after)| after - idle),
        );
        put("cycles_per_s", Some(self.cycles_per_s));
        put("cycle_p50_ms", Some(self.cycle_p50_ms));
        put("cycle_p99_ms", Some(self.cycle_p99_ms));
        put("ping_per_s", Some(self.ping_per_s));
        put("ping_p50_ms", Some(self.ping_p50_ms));
        put("ping_p99_ms", Some(self.ping_p99_ms));
        if let Some(flood) = &self.flood {
            put("flood_peak_rss_mib", Some(flood.peak_rss_mib));
            put("flood_rss_10s_mib", Some(flood.rss_10s_mib));
            put(
                "flood_rss_10s_ratio",
                Some(flood.rss_10s_mib / flood.idle_rss_mib),
            );
            put("flood_recover_s", flood.recover_s);
            put("flood_connected", Some(flood.connected as f64));
        }
        if let Some(b) = &self.behaviour {
            put("busy_cpu_ms", Some(b.busy_cpu_ms));
            put("quiet_cpu_ms", Some(b.quiet_cpu_ms));
            put("refused_cpu_ms", Some(b.refused_cpu_ms));
            put("heartbeat_s", b.heartbeat_s);
        }
        put("errors", Some(self.errors as f64));
    }

    fn print_line(&self, target: &str, run: u32) {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), report::fmt_num);
        println!(
            "{target} run {run}: ready {} ms, RSS idle {} / after load {} MiB, \
             create+end {}/s (p50 {} ms, p99 {} ms), /ping {}/s (p50 {} ms, p99 {} ms), errors {}",
            opt(self.ready_ms),
            opt(self.idle_rss_mib),
            opt(self.rss_after_load_mib),
            report::fmt_num(self.cycles_per_s),
            report::fmt_num(self.cycle_p50_ms),
            report::fmt_num(self.cycle_p99_ms),
            report::fmt_num(self.ping_per_s),
            report::fmt_num(self.ping_p50_ms),
            report::fmt_num(self.ping_p99_ms),
            self.errors,
        );
        if let Some(f) = &self.flood {
            println!(
                "{target} run {run}: flood of {} ({} established): RSS idle {} / peak {} / 10 s after {} MiB, \
                 back within 2x idle after {} s",
                f.attempted,
                f.connected,
                report::fmt_num(f.idle_rss_mib),
                report::fmt_num(f.peak_rss_mib),
                report::fmt_num(f.rss_10s_mib),
                opt(f.recover_s),
            );
        }
        if let Some(b) = &self.behaviour {
            println!(
                "{target} run {run}: CPU busy {} ms / quiet {} ms / refused {} ms, heartbeat every {} s",
                report::fmt_num(b.busy_cpu_ms),
                report::fmt_num(b.quiet_cpu_ms),
                report::fmt_num(b.refused_cpu_ms),
                opt(b.heartbeat_s),
            );
        }
    }
}

async fn measure_spawned(
    args: &Args,
    kind: Kind,
    engine: &FakeEngine,
    worker: &mut SpawnedWorker,
    key: &SigningKey,
    timings: Timings,
) -> anyhow::Result<RunFigures> {
    let ready = wait_ready(engine, worker, Duration::from_secs_f64(args.ready_timeout)).await?;
    tokio::time::sleep(timings.idle_settle).await;
    let pid = worker.guard.pid();
    let idle_rss = process::tree_rss_mib(pid);
    let auth = AuthTemplate::new(&worker.url, Some(key));
    wait_accepting(&worker.url, &auth, &worker.seq, &mut worker.guard).await?;
    let mut figures = load_phases(args, &worker.url, &auth, &worker.seq, timings).await?;
    tokio::time::sleep(timings.after_load_settle).await;
    figures.ready_ms = Some(ready.as_secs_f64() * 1000.0);
    figures.idle_rss_mib = idle_rss;
    figures.rss_after_load_mib = process::tree_rss_mib(pid);
    if kind == Kind::Ours && timings.flood_connections > 0 {
        figures.flood = Some(flood(&worker.url, pid, timings.flood_connections).await?);
    }
    if let Some(status) = worker.guard.exited() {
        bail!("the worker exited during the run ({status})");
    }
    Ok(figures)
}

// ---------------------------------------------------------------------------
// Connection flood (memory) and behaviour (CPU time, heartbeat)
// ---------------------------------------------------------------------------

/// What a connection flood did to the worker's memory.
#[derive(Debug)]
struct FloodFigures {
    attempted: usize,
    /// Connections the kernel completed (the rest waited past the connect
    /// timeout in a full backlog).
    connected: usize,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    rss_10s_mib: f64,
    /// Seconds from closing the flood until RSS was within 2x idle (`None`:
    /// not within the 10 s watched).
    recover_s: Option<f64>,
}

/// Half a request: what each flood connection sends before it waits.
const FLOOD_PARTIAL: &[u8] = b"POST /ping HTTP/1.1\r\nHost: flood\r\n";
/// Connects in flight at once during a flood, and the time each may take.
const FLOOD_CONCURRENCY: usize = 1_024;
const FLOOD_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the flood holds its connections before closing them all.
const FLOOD_HOLD: Duration = Duration::from_secs(2);
/// How long memory is watched after the flood closed.
const FLOOD_WATCH: Duration = Duration::from_secs(10);

/// Opens `n` connections to the worker at `url` (process `pid`), each
/// sending half a request, holds them, closes them all, and watches the
/// worker's resident memory throughout.
async fn flood(url: &str, pid: u32, n: usize) -> anyhow::Result<FloodFigures> {
    let addr = loadgen::resolve(url).await?;
    let rss = move || process::tree_rss_mib(pid).unwrap_or(0.0);
    let idle_rss_mib = rss();
    let peak = Arc::new(Mutex::new(idle_rss_mib));
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let peak = Arc::clone(&peak);
        let stop = stop_sampling.clone();
        async move {
            while !stop.is_cancelled() {
                let now = rss();
                {
                    let mut peak = peak.lock().expect("peak");
                    *peak = peak.max(now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(FLOOD_CONCURRENCY));
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..n {
        let slot = Arc::clone(&slots).acquire_owned().await?;
        connecting.spawn(async move {
            let _slot = slot;
            let mut stream =
                tokio::time::timeout(FLOOD_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                    .ok()?
                    .ok()?;
            tokio::io::AsyncWriteExt::write_all(&mut stream, FLOOD_PARTIAL)
                .await
                .ok()?;
            Some(stream)
        });
    }
    let mut streams = Vec::with_capacity(n);
    while let Some(joined) = connecting.join_next().await {
        if let Some(stream) = joined? {
            streams.push(stream);
        }
    }
    let connected = streams.len();
    tokio::time::sleep(FLOOD_HOLD).await;
    stop_sampling.cancel();
    sampler.await?;
    let peak_rss_mib = (*peak.lock().expect("peak")).max(rss());
    drop(streams);
    let closed = Instant::now();
    let mut recover_s = None;
    while closed.elapsed() < FLOOD_WATCH {
        if recover_s.is_none() && rss() <= 2.0 * idle_rss_mib {
            recover_s = Some(closed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(FloodFigures {
        attempted: n,
        connected,
        idle_rss_mib,
        peak_rss_mib,
        rss_10s_mib: rss(),
        recover_s,
    })
}

/// CPU time of busy polling, and the heartbeat interval.
#[derive(Debug)]
struct BehaviourFigures {
    busy_cpu_ms: f64,
    quiet_cpu_ms: f64,
    refused_cpu_ms: f64,
    heartbeat_s: Option<f64>,
}

/// One request of a CPU-time phase: path, body and the status expected.
type Probe = (&'static str, Bytes, StatusCode);

/// CPU time process `pid` uses while the requests `probes(n)` are sent on
/// `conn` every 20 ms for `secs`.
async fn cpu_while(
    pid: u32,
    secs: f64,
    conn: &mut Connection,
    mut probes: impl FnMut(u64) -> Vec<Probe>,
) -> anyhow::Result<f64> {
    let cpu = || process::cpu_time(pid).ok_or_else(|| anyhow!("cannot read the CPU time of {pid}"));
    let before = cpu()?;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs_f64(secs) {
        n += 1;
        for (path, body, expected) in probes(n) {
            let reply = conn.post_json(path, body).await?;
            if reply.status != expected {
                bail!("{path} answered {}, expected {expected}", reply.status);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((cpu()? - before).as_secs_f64() * 1000.0)
}

/// Spawns a worker of ours with a 100 ms busy-poll window and no periodic
/// health checks (so only the benchmark's requests wake it) and measures
/// the CPU it uses while signed requests come every 20 ms (it should poll
/// between them), in a quiet second (it should sleep), while refused
/// requests come every 20 ms (they must not make it poll), then the time
/// between two heartbeats of the quiet worker.
async fn measure_behaviour(
    args: &Args,
    engine: &FakeEngine,
    key: &SigningKey,
    container_id: i64,
    timings: Timings,
) -> anyhow::Result<BehaviourFigures> {
    let env = [
        ("NULLWORKER_BUSY_POLL_US", "100000"),
        ("NULLWORKER_HEALTH_INTERVAL", "3600"),
    ];
    let mut worker = spawn_worker(args, Kind::Ours, engine, container_id, &env)?;
    wait_ready(
        engine,
        &mut worker,
        Duration::from_secs_f64(args.ready_timeout),
    )
    .await?;
    let auth = AuthTemplate::new(&worker.url, Some(key));
    wait_accepting(&worker.url, &auth, &worker.seq, &mut worker.guard).await?;
    let addr = loadgen::resolve(&worker.url).await?;
    let pid = worker.guard.pid();
    let mut conn = Connection::open(addr).await?;
    let seq = Arc::clone(&worker.seq);
    let busy_cpu_ms = cpu_while(pid, 2.0, &mut conn, |_| {
        let body = auth.ping_body(seq.fetch_add(1, Ordering::Relaxed));
        vec![("/ping", body, StatusCode::OK)]
    })
    .await?;
    // The window after the last request passes, then a quiet second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet_cpu_ms = cpu_while(pid, 1.0, &mut conn, |_| Vec::new()).await?;
    let forged = AuthTemplate::with_signature(&worker.url, "Zm9yZ2Vk");
    let refused_cpu_ms = cpu_while(pid, 1.0, &mut conn, |_| {
        let body = forged.ping_body(seq.fetch_add(1, Ordering::Relaxed));
        let unknown = Bytes::from_static(br#"{"session_id":"AAAAAAAAAAAAA","session_auth":{}}"#);
        vec![
            ("/ping", body, StatusCode::UNAUTHORIZED),
            ("/session/health", unknown, StatusCode::OK),
        ]
    })
    .await?;
    let heartbeat_s = if timings.heartbeat {
        Some(heartbeat(engine, container_id).await?)
    } else {
        None
    };
    if let Some(status) = worker.guard.exited() {
        bail!("the worker exited during the behaviour phase ({status})");
    }
    Ok(BehaviourFigures {
        busy_cpu_ms,
        quiet_cpu_ms,
        refused_cpu_ms,
        heartbeat_s,
    })
}

/// Seconds between two consecutive reports of a quiet worker.
async fn heartbeat(engine: &FakeEngine, container_id: i64) -> anyhow::Result<f64> {
    let reports = || {
        engine
            .state
            .lock()
            .expect("fake engine state")
            .reports_at
            .get(&container_id)
            .cloned()
            .unwrap_or_default()
    };
    let next_after = |seen: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all = reports();
            if all.len() > seen {
                return Ok::<_, anyhow::Error>((all.len(), all[all.len() - 1]));
            }
            if Instant::now() >= deadline {
                bail!("no heartbeat within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Reports of the phases before settle first; then two heartbeats.
    let (seen, _) = next_after(reports().len()).await?;
    let (seen, first) = next_after(seen).await?;
    let (_, second) = next_after(seen).await?;
    Ok((second - first).as_secs_f64())
}

/// Waits for the worker's first ready report; returns its delay after spawn.
async fn wait_ready(
    engine: &FakeEngine,
    worker: &mut SpawnedWorker,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let state = engine.state.lock().expect("fake engine state");
            if let Some(at) = state.ready_at.get(&worker.container_id) {
                return Ok(at.saturating_duration_since(worker.guard.spawned_at));
            }
            if let Some(error) = state.errors.get(&worker.container_id) {
                bail!("the worker reported error_msg {error:?}");
            }
        }
        if let Some(status) = worker.guard.exited() {
            bail!("the worker exited before its first ready report ({status})");
        }
        if Instant::now() >= deadline {
            bail!("no ready report within {timeout:?} of spawn");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a signed `/ping` is accepted (the worker fetches the engine
/// key concurrently with becoming ready, so signed routes may answer 401 at
/// first).
async fn wait_accepting(
    url: &str,
    auth: &AuthTemplate,
    seq: &AtomicU64,
    guard: &mut ChildGuard,
) -> anyhow::Result<()> {
    let addr = loadgen::resolve(url).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(mut conn) = Connection::open(addr).await {
            let body = auth.ping_body(seq.fetch_add(1, Ordering::Relaxed));
            match conn.post_json("/ping", body).await {
                Ok(reply) if reply.status == StatusCode::OK => return Ok(()),
                Ok(reply) => {
                    last = format!("/ping answered {}: {}", reply.status, reply.body_text())
                }
                Err(err) => last = format!("{err:#}"),
            }
        }
        if let Some(status) = guard.exited() {
            bail!("the worker exited before accepting signed requests ({status})");
        }
        if Instant::now() >= deadline {
            bail!("the worker did not accept a signed /ping within 30 s (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Load phases (spawned workers and --worker-url alike)
// ---------------------------------------------------------------------------

/// Runs the create+end phase, then the `/ping` phase.
async fn load_phases(
    args: &Args,
    url: &str,
    auth: &AuthTemplate,
    seq: &Arc<AtomicU64>,
    timings: Timings,
) -> anyhow::Result<RunFigures> {
    let addr = loadgen::resolve(url).await?;
    let mut figures = RunFigures::default();

    let cycle = CreateEnd {
        conn: Connection::open(addr).await?,
        auth: auth.clone(),
        seq: seq.clone(),
    };
    let mut cycles = loadgen::run_closed_loop(vec![cycle], timings.cycles).await;
    figures.cycles_per_s = cycles.per_second();
    figures.cycle_p50_ms = cycles.latencies.percentile_ms(50.0);
    figures.cycle_p99_ms = cycles.latencies.percentile_ms(99.0);
    figures.errors += cycles.errors;
    if let Some(first) = &cycles.first_error {
        println!("  create+end: {} failure(s), first: {first}", cycles.errors);
    }

    let mut pings = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        pings.push(Ping {
            conn: Connection::open(addr).await?,
            auth: auth.clone(),
            seq: seq.clone(),
        });
    }
    let mut ping = loadgen::run_closed_loop(pings, timings.ping).await;
    figures.ping_per_s = ping.per_second();
    figures.ping_p50_ms = ping.latencies.percentile_ms(50.0);
    figures.ping_p99_ms = ping.latencies.percentile_ms(99.0);
    figures.errors += ping.errors;
    if let Some(first) = &ping.first_error {
        println!("  /ping: {} failure(s), first: {first}", ping.errors);
    }
    Ok(figures)
}

/// `auth_data` as the engine would sign it for one worker URL; only
/// `reqnum` and `request_idx` change between requests.
#[derive(Debug, Clone)]
struct AuthTemplate {
    /// JSON string literal of the signature.
    signature: Arc<str>,
    /// JSON string literal of the URL.
    url: Arc<str>,
}

impl AuthTemplate {
    fn new(url: &str, key: Option<&SigningKey>) -> AuthTemplate {
        let signature = key.map_or_else(|| "unsigned".to_owned(), |k| k.sign_url(url));
        Self::with_signature(url, &signature)
    }

    fn with_signature(url: &str, signature: &str) -> AuthTemplate {
        AuthTemplate {
            signature: Value::from(signature).to_string().into(),
            url: Value::from(url).to_string().into(),
        }
    }

    /// The `auth_data` object with `reqnum` = `request_idx` = `n`.
    fn render(&self, n: u64) -> String {
        format!(
            r#"{{"cost":100,"endpoint":"bench","reqnum":{n},"request_idx":{n},"signature":{},"url":{}}}"#,
            self.signature, self.url
        )
    }

    fn create_body(&self, n: u64) -> (String, Bytes) {
        let auth = self.render(n);
        let body =
            format!(r#"{{"auth_data":{auth},"payload":{{"lifetime":60}},"session_id":null}}"#);
        (auth, Bytes::from(body))
    }

    fn ping_body(&self, n: u64) -> Bytes {
        let auth = self.render(n);
        Bytes::from(format!(
            r#"{{"auth_data":{auth},"payload":{{}},"session_id":null}}"#
        ))
    }
}

/// One session create followed by its end, on one connection.
struct CreateEnd {
    conn: Connection,
    auth: AuthTemplate,
    seq: Arc<AtomicU64>,
}

#[derive(serde::Deserialize)]
struct Created {
    session_id: String,
}

impl Operation for CreateEnd {
    async fn run(&mut self) -> Result<(), OpError> {
        let (auth, body) = self
            .auth
            .create_body(self.seq.fetch_add(1, Ordering::Relaxed));
        let reply = self
            .conn
            .post_json("/session/create", body)
            .await
            .map_err(|e| OpError::Broken(format!("{e:#}")))?;
        if reply.status != StatusCode::CREATED {
            return Err(OpError::Unexpected(format!(
                "/session/create answered {}: {}",
                reply.status,
                reply.body_text()
            )));
        }
        let created: Created = serde_json::from_slice(&reply.body).map_err(|e| {
            OpError::Unexpected(format!(
                "/session/create reply {:?}: {e}",
                reply.body_text()
            ))
        })?;
        let end = format!(
            r#"{{"session_id":{},"session_auth":{auth}}}"#,
            Value::from(created.session_id)
        );
        let reply = self
            .conn
            .post_json("/session/end", Bytes::from(end))
            .await
            .map_err(|e| OpError::Broken(format!("{e:#}")))?;
        if reply.status != StatusCode::OK {
            return Err(OpError::Unexpected(format!(
                "/session/end answered {}: {}",
                reply.status,
                reply.body_text()
            )));
        }
        Ok(())
    }
}

/// One signed `/ping` outside any session.
struct Ping {
    conn: Connection,
    auth: AuthTemplate,
    seq: Arc<AtomicU64>,
}

impl Operation for Ping {
    async fn run(&mut self) -> Result<(), OpError> {
        let body = self
            .auth
            .ping_body(self.seq.fetch_add(1, Ordering::Relaxed));
        let reply = self
            .conn
            .post_json("/ping", body)
            .await
            .map_err(|e| OpError::Broken(format!("{e:#}")))?;
        if reply.status != StatusCode::OK {
            return Err(OpError::Unexpected(format!(
                "/ping answered {}: {}",
                reply.status,
                reply.body_text()
            )));
        }
        Ok(())
    }
}

/// Whether the worker verifies the signature on `/session/create`: sends a
/// create whose signature was made with another key. (The reference
/// framework does not verify, PROTOCOL.md quirk Q1.)
async fn probe_create_signature(url: &str, key: &SigningKey, seq: &AtomicU64) -> String {
    let outcome = async {
        let addr = loadgen::resolve(url).await?;
        let mut conn = Connection::open(addr).await?;
        // A valid signature of a different URL: wrong for this worker.
        let forged = AuthTemplate::with_signature(url, &key.sign_url("http://192.0.2.1:1"));
        let (auth, body) = forged.create_body(seq.fetch_add(1, Ordering::Relaxed));
        let reply = conn.post_json("/session/create", body).await?;
        let verdict = match reply.status.as_u16() {
            201 => {
                let created: Created = serde_json::from_slice(&reply.body)?;
                let end = format!(
                    r#"{{"session_id":{},"session_auth":{auth}}}"#,
                    Value::from(created.session_id)
                );
                conn.post_json("/session/end", Bytes::from(end)).await?;
                "no (a create with a bad signature is accepted)".to_owned()
            }
            401 => "yes (a create with a bad signature is refused with 401)".to_owned(),
            other => format!("unknown (a create with a bad signature got {other})"),
        };
        anyhow::Ok(verdict)
    }
    .await;
    outcome.unwrap_or_else(|err| format!("unknown (probe failed: {err:#})"))
}

// ---------------------------------------------------------------------------
// --worker-url
// ---------------------------------------------------------------------------

async fn run_against_url(
    args: &Args,
    url: &str,
    key: Option<&SigningKey>,
    timings: Timings,
    saved: &mut SavedRun,
) -> anyhow::Result<u64> {
    let url = url.trim_end_matches('/');
    loadgen::http_authority(url)?;
    let auth = AuthTemplate::new(url, key);
    // Unique reqnums across invocations against the same long-running worker.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let seq = Arc::new(AtomicU64::new(base));
    let mut errors = 0;
    for run in 1..=args.common.runs() {
        let idle = args.worker_pid.and_then(process::tree_rss_mib);
        let mut figures = load_phases(args, url, &auth, &seq, timings).await?;
        if args.worker_pid.is_some() {
            tokio::time::sleep(timings.after_load_settle).await;
            figures.idle_rss_mib = idle;
            figures.rss_after_load_mib = args.worker_pid.and_then(process::tree_rss_mib);
        }
        errors += figures.errors;
        figures.print_line("worker", run);
        figures.push(saved, "worker");
    }
    if let Some(key) = key {
        let verdict = probe_create_signature(url, key, &seq).await;
        println!("worker: signature check on /session/create: {verdict}");
    }
    Ok(errors)
}

// ---------------------------------------------------------------------------
// The fake engine
// ---------------------------------------------------------------------------

/// An in-process engine that serves the bench public key, records when each
/// worker's first ready report arrives and accepts finished-request batches.
struct FakeEngine {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<FakeState>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct FakeState {
    pubkey_pem: String,
    /// Worker id → arrival of its first ready report.
    ready_at: HashMap<i64, Instant>,
    /// Worker id → first non-empty `error_msg`.
    errors: HashMap<i64, String>,
    /// Worker id → arrival of each of its reports.
    reports_at: HashMap<i64, Vec<Instant>>,
}

impl FakeEngine {
    async fn start(pubkey_pem: String) -> anyhow::Result<FakeEngine> {
        let state = Arc::new(Mutex::new(FakeState {
            pubkey_pem,
            ..FakeState::default()
        }));
        let router = Router::new()
            .route("/pubkey/", get(pubkey))
            .route("/pubkey", get(pubkey))
            .route("/worker_status/", post(worker_status))
            .route("/worker_status", post(worker_status))
            .route("/delete_requests/", post(delete_requests))
            .route("/delete_requests", post(delete_requests))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                eprintln!("fake engine stopped: {err}");
            }
        });
        Ok(FakeEngine {
            addr,
            state,
            server,
        })
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&self) {
        self.server.abort();
    }
}

type Shared = State<Arc<Mutex<FakeState>>>;

async fn pubkey(State(state): Shared) -> String {
    state.lock().expect("fake engine state").pubkey_pem.clone()
}

async fn worker_status(State(state): Shared, body: Bytes) -> (StatusCode, &'static str) {
    let arrived = Instant::now();
    let Ok(report) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, r#"{"error": "invalid JSON"}"#);
    };
    let Some(id) = report.get("id").and_then(Value::as_i64) else {
        return (StatusCode::BAD_REQUEST, r#"{"error": "id missing"}"#);
    };
    let number = |k: &str| report.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let error = report
        .get("error_msg")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut state = state.lock().expect("fake engine state");
    state.reports_at.entry(id).or_default().push(arrived);
    if !error.is_empty() {
        state.errors.entry(id).or_insert_with(|| error.to_owned());
    } else if number("loadtime") > 0.0 || number("max_perf") > 0.0 {
        state.ready_at.entry(id).or_insert(arrived);
    }
    (StatusCode::OK, r#"{"ok": true}"#)
}

/// Takes the whole body, as an engine does: answering before the upload is
/// read would cut the worker's connection mid-send and fail the delivery.
async fn delete_requests(_body: Bytes) -> (StatusCode, &'static str) {
    (StatusCode::OK, r#"{"ok": true}"#)
}
