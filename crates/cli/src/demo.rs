//! `nullworker demo`: the whole system on this machine in under a minute.
//!
//! Starts an embedded engine (temporary state directory, free loopback
//! port, workers = this executable's `serve`), creates an endpoint with the
//! seed's tested configuration, runs a short client run (by default 3
//! sessions 5 s apart, held 15 s, the last one released early from the
//! instance side, as a queue consumer does, with `POST /release` on the
//! worker's control port, which the engine lists for each worker), prints
//! the workers scaling from zero up and back to zero as a timeline, and
//! stops everything.
//!
//! Owns the demo's flags, the timeline and the early release. Sessions,
//! display and summary come from `nullworker_client::cli`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::display::{Display, Mode};
use nullworker_client::runner::{self, Event, Plan};
use nullworker_client::{Client, Endpoint};
use nullworker_engine::{Engine, EngineConfig, EngineHandle};

/// Name of the endpoint the demo creates.
const DEMO_ENDPOINT: &str = "demo";
/// Worker states that count as "up" in the timeline.
pub(crate) const ACTIVE_STATES: [&str; 5] =
    ["CREATING", "LOADING", "MODEL_LOADING", "STARTING", "IDLE"];
/// How long to wait for the endpoint to scale back to zero after the run.
pub(crate) const SCALE_TO_ZERO_LIMIT: Duration = Duration::from_secs(60);

/// Options of `nullworker demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Sessions to open (1 to 20).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub count: u32,

    /// Seconds between session starts.
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    pub interval: f64,

    /// Seconds each session is held.
    #[arg(long, default_value_t = 15.0, allow_negative_numbers = true)]
    pub hold: f64,

    /// Seconds into its hold at which the last session is released from the
    /// worker side (the consumer's `POST /release`); 0 disables it.
    #[arg(long, default_value_t = 8.0, allow_negative_numbers = true)]
    pub release_after: f64,

    /// Run the queue demo instead: an embedded SQLite queue, `nullworker
    /// dispatch` in process and `nullworker consume` beside each worker run
    /// `--jobs` jobs of 2–6 s, one worker per job, 0 → N → 0.
    #[arg(long)]
    pub queue: bool,

    /// Jobs the queue demo pushes (1 to 20; with --queue).
    #[arg(long, default_value_t = 8, requires = "queue", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub jobs: u32,
}

pub(crate) struct DemoConfig {
    plan: Plan,
    release_after: Option<Duration>,
}

pub(crate) fn seconds(flag: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    let ok = value.is_finite() && (value > 0.0 || (allow_zero && value == 0.0));
    anyhow::ensure!(
        ok,
        "{flag} {value} is invalid: expected a finite number of seconds {}",
        if allow_zero { ">= 0" } else { "> 0" }
    );
    Ok(Duration::from_secs_f64(value))
}

impl DemoArgs {
    /// Checks every value; the error names the flag and what was expected.
    pub(crate) fn check(&self) -> anyhow::Result<DemoConfig> {
        anyhow::ensure!(
            (1..=20).contains(&self.count),
            "--count {} is invalid: expected 1 to 20",
            self.count
        );
        let hold = seconds("--hold", self.hold, false)?;
        let release_after = seconds("--release-after", self.release_after, true)?;
        anyhow::ensure!(
            release_after < hold,
            "--release-after {} is invalid: expected less than --hold {}",
            self.release_after,
            self.hold
        );
        Ok(DemoConfig {
            plan: Plan {
                count: self.count,
                hold,
                interval: seconds("--interval", self.interval, true)?,
                cost: nullworker_protocol::DEFAULT_COST,
                lifetime: Duration::from_secs(30),
                timeout: Some(Duration::from_secs(60)),
                check_interval: Duration::from_secs(1),
                replace: false,
            },
            release_after: (!release_after.is_zero()).then_some(release_after),
        })
    }
}

/// `n` and the noun, singular for 1: `1 job`, `3 jobs`.
pub(crate) fn count_of(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("nullworker-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the temporary directory {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Shared output: the run's display and the demo's own lines.
pub(crate) type Out = Arc<Mutex<Box<dyn std::io::Write + Send>>>;

pub(crate) fn say(out: &Out, t0: Instant, line: &str) {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(out, "[{:7.1}s] {line}", t0.elapsed().as_secs_f64());
    let _ = out.flush();
}

/// Says where the embedded engine and its dashboard listen.
pub(crate) fn announce_engine(out: &Out, t0: Instant, engine: &EngineHandle) {
    say(
        out,
        t0,
        &format!(
            "engine listening on {} (temporary state, workers run `nullworker serve`)",
            engine.url()
        ),
    );
    if let Some(ui) = engine.ui_url() {
        say(out, t0, &format!("dashboard on {ui}"));
    }
}

/// Writes through the shared output (so display and timeline lines do not interleave mid-line).
struct SharedWriter(Out);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.queue {
        if !(1..=20).contains(&args.jobs) {
            eprintln!(
                "nullworker: error: --jobs {} is invalid: expected 1 to 20",
                args.jobs
            );
            return Ok(ExitCode::from(crate::exit::USAGE));
        }
        return crate::demo_queue::run(args.jobs).await;
    }
    let config = match args.check() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            return Ok(ExitCode::from(crate::exit::USAGE));
        }
    };
    let dir = TempDir::new()?;
    let state_dir = dir.0.join("state");

    let mut engine_config =
        EngineConfig::new(&state_dir).context("cannot configure the embedded engine")?;
    engine_config.listen = "127.0.0.1:0".parse().expect("valid address");
    // The dashboard on a free loopback port, without a login (loopback only).
    engine_config.ui_listen = Some("127.0.0.1:0".parse().expect("valid address"));
    engine_config.ui_no_auth = true;
    let engine = Engine::start(engine_config)
        .await
        .context("cannot start the embedded engine")?;
    let outcome = demo(&engine, &config).await;
    engine.shutdown().await;
    drop(dir);
    outcome
}

async fn demo(engine: &EngineHandle, config: &DemoConfig) -> anyhow::Result<ExitCode> {
    let engine_url = engine.url();
    let account_key = engine.account_key();
    let out: Out = Arc::new(Mutex::new(Box::new(std::io::stdout())));
    let t0 = Instant::now();
    announce_engine(&out, t0, engine);

    let client = Client::builder(account_key)
        .autoscaler_url(&engine_url)
        .webserver_url(&engine_url)
        .build()?;
    client
        .create_endpoint(&json!({
            "endpoint_name": DEMO_ENDPOINT,
            "target_util": 1.0,
            "min_load": 0,
            "max_queue_time": 1,
            "target_queue_time": 0.5,
            "inactivity_timeout": 10,
            "cold_workers": 0,
        }))
        .await?;
    let endpoint = client.endpoint(DEMO_ENDPOINT).await?;
    say(
        &out,
        t0,
        &format!(
            "endpoint {DEMO_ENDPOINT} created with the seed configuration (target_util 1.0, min_load 0, \
             max_queue_time 1, target_queue_time 0.5, inactivity_timeout 10, cold_workers 0)"
        ),
    );

    let cancel = CancellationToken::new();
    let interrupted = watch_interrupt(cancel.clone());

    // Timeline of active workers, sampled every 250 ms until told to stop.
    let timeline = Arc::new(Mutex::new(vec![(0.0_f64, 0_usize)]));
    let stop_timeline = CancellationToken::new();
    let timeline_task = tokio::spawn(sample_workers(
        endpoint.clone(),
        t0,
        timeline.clone(),
        out.clone(),
        stop_timeline.clone(),
    ));

    // The run, with a tap on its events for the early release.
    let plan = config.plan.clone();
    let (run_tx, mut run_rx) = mpsc::unbounded_channel::<Event>();
    let (display_tx, display_rx) = mpsc::unbounded_channel::<Event>();
    let mut display = Display::new(
        Mode::Plain,
        plan.clone(),
        t0,
        Box::new(SharedWriter(out.clone())),
    );
    let _ = display_tx.send(Event::Start {
        t: round(t0.elapsed()),
        endpoint: DEMO_ENDPOINT.to_owned(),
        count: plan.count,
        hold_secs: plan.hold.as_secs_f64(),
        interval_secs: plan.interval.as_secs_f64(),
        cost: plan.cost,
        lifetime_secs: plan.lifetime.as_secs_f64(),
    });
    let release_after = config.release_after;
    let last = plan.count;
    let tap_out = out.clone();
    // Polled in place (not spawned) so that it can look workers up on the
    // engine it borrows.
    let tap = async move {
        let mut releases = Vec::new();
        while let Some(event) = run_rx.recv().await {
            if let (
                Event::Held {
                    session,
                    worker_url,
                    ..
                },
                Some(after),
            ) = (&event, release_after)
            {
                if *session == last {
                    let control_port = control_port_of(engine, worker_url);
                    releases.push(tokio::spawn(release_later(
                        worker_url.clone(),
                        control_port,
                        after,
                        tap_out.clone(),
                        t0,
                    )));
                }
            }
            let _ = display_tx.send(event);
        }
        for release in releases {
            let _ = release.await;
        }
    };
    let run = runner::run_plan(&endpoint, &plan, t0, run_tx, cancel.clone());
    let (reports, (), _) = tokio::join!(run, display.drive(display_rx), tap);
    let failed = reports.iter().any(|r| r.outcome.is_failure());

    // Back to zero: the engine stops idle workers after inactivity_timeout.
    let mut reached_zero = false;
    if !interrupted.is_cancelled() {
        say(&out, t0, "all sessions over; waiting for the endpoint to scale back to zero (inactivity_timeout 10 s)");
        let deadline = Instant::now() + SCALE_TO_ZERO_LIMIT;
        while Instant::now() < deadline && !interrupted.is_cancelled() {
            if active_workers(&endpoint).await == Some(0) {
                reached_zero = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    stop_timeline.cancel();
    let _ = timeline_task.await;

    let code = runner::exit_code(&reports, interrupted.is_cancelled());
    display.finish(&reports, code);
    let points = timeline.lock().unwrap_or_else(|e| e.into_inner()).clone();
    print_timeline(&out, &points);
    let peak = points.iter().map(|(_, n)| *n).max().unwrap_or(0);
    if interrupted.is_cancelled() {
        return Ok(ExitCode::from(code));
    }
    if failed {
        anyhow::bail!("the demo run had failed sessions (see above)");
    }
    anyhow::ensure!(
        reached_zero,
        "the endpoint did not scale back to zero within {} s",
        SCALE_TO_ZERO_LIMIT.as_secs()
    );
    say(
        &out,
        t0,
        &format!(
            "done: scaled 0 → {peak} → 0 workers in {:.0} s; everything stopped",
            t0.elapsed().as_secs_f64()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn round(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// The control port (`NULL_CONTROL_PORT`) of the demo endpoint's worker
/// serving `worker_url`, from the engine's worker listing.
fn control_port_of(engine: &EngineHandle, worker_url: &str) -> Option<u16> {
    engine
        .workers(DEMO_ENDPOINT)?
        .into_iter()
        .find(|w| w.url.as_deref() == Some(worker_url))?
        .control_port
}

/// Releases the session held on `worker_url` from the instance side, `after`
/// into its hold, the way a queue consumer does (`POST /release` on the
/// worker's control port).
async fn release_later(
    worker_url: String,
    control_port: Option<u16>,
    after: Duration,
    out: Out,
    t0: Instant,
) {
    tokio::time::sleep(after).await;
    let Some(control_port) = control_port else {
        say(
            &out,
            t0,
            &format!("consumer: the engine lists no control port for {worker_url}"),
        );
        return;
    };
    let control_url = format!("http://127.0.0.1:{control_port}");
    match nullworker_client::consumer::release(&control_url).await {
        Ok(answer) if answer.released => say(
            &out,
            t0,
            &format!(
                "consumer on {worker_url}: work done, POST {control_url}/release → released {}",
                answer.session_ids.unwrap_or_default().join(", ")
            ),
        ),
        Ok(answer) => say(
            &out,
            t0,
            &format!(
                "consumer on {worker_url}: nothing to release ({})",
                answer.reason.unwrap_or_default()
            ),
        ),
        Err(err) => say(&out, t0, &format!("consumer on {worker_url}: {err}")),
    }
}

pub(crate) async fn active_workers(endpoint: &Endpoint) -> Option<usize> {
    let workers = endpoint.workers().await.ok()?;
    Some(
        workers
            .iter()
            .filter(|w| ACTIVE_STATES.contains(&w.status.as_str()))
            .count(),
    )
}

async fn sample_workers(
    endpoint: Endpoint,
    t0: Instant,
    timeline: Arc<Mutex<Vec<(f64, usize)>>>,
    out: Out,
    stop: CancellationToken,
) {
    let mut last_states = String::new();
    loop {
        if let Ok(workers) = endpoint.workers().await {
            let active = workers
                .iter()
                .filter(|w| ACTIVE_STATES.contains(&w.status.as_str()))
                .count();
            let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
            for w in &workers {
                *by_state.entry(w.status.as_str()).or_default() += 1;
            }
            let states = by_state
                .iter()
                .map(|(s, n)| format!("{n} {}", s.to_lowercase()))
                .collect::<Vec<_>>()
                .join(", ");
            let changed = {
                let mut points = timeline.lock().unwrap_or_else(|e| e.into_inner());
                let changed = points.last().map(|(_, n)| *n) != Some(active);
                if changed {
                    points.push((t0.elapsed().as_secs_f64(), active));
                }
                changed
            };
            if changed || states != last_states {
                let detail = if states.is_empty() {
                    "none".to_owned()
                } else {
                    states.clone()
                };
                say(&out, t0, &format!("workers: {active} up ({detail})"));
                last_states = states;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn print_timeline(out: &Out, points: &[(f64, usize)]) {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(out, "\nworkers up over time:");
    let peak = points.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    for (t, n) in points {
        let bar = "█".repeat(*n * 20 / peak);
        let _ = writeln!(out, "  {t:6.1}s  {n:>2}  {bar}");
    }
    let path = points
        .iter()
        .map(|(_, n)| n.to_string())
        .collect::<Vec<_>>()
        .join(" → ");
    let _ = writeln!(out, "  {path}");
    let _ = out.flush();
}

/// Cancels `cancel` on the first SIGINT/SIGTERM; exits at once on the second.
pub(crate) fn watch_interrupt(cancel: CancellationToken) -> CancellationToken {
    let received = CancellationToken::new();
    let flag = received.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot watch SIGINT/SIGTERM");
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                eprintln!("nullworker: interrupted: closing sessions and stopping the engine (Ctrl-C again to exit at once)");
                flag.cancel();
                cancel.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_singular_for_one() {
        for (n, expected) in [
            (0_u32, "0 jobs"),
            (1, "1 job"),
            (2, "2 jobs"),
            (20, "20 jobs"),
        ] {
            assert_eq!(count_of(n, "job", "jobs"), expected);
        }
    }
}
