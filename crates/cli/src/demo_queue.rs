//! `nullworker demo --queue`: the queue use case end to end on this machine.
//!
//! Starts an embedded engine and an embedded SQLite queue in a temporary
//! directory, creates an endpoint with the seed configuration whose
//! consumer beside each worker is `nullworker consume` (its health endpoint
//! is the worker's `BACKEND_HEALTH_URL`), runs the dispatcher in process,
//! pushes jobs of 2–6 s, and prints backlog, in-flight, sessions and
//! workers as they change: one worker per job, 0 → N → 0. It checks that
//! every job ran exactly once and that the endpoint went back to zero.
//!
//! Owns the queue demo's plan, its sampler and its checks; the engine,
//! the dispatcher and the consumer are the real ones.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::time::Instant;

use nullworker_client::{Client, Endpoint, SessionOptions};
use nullworker_engine::{Engine, EngineConfig, EngineHandle};
use nullworker_queue::dispatch::{DispatchEvent, Driver, DriverConfig, Outcome, SdkReserver, Stop};
use nullworker_queue::{OpenMode, Queue, QueueStats, QueueUrl};

use crate::demo::{
    active_workers, announce_engine, count_of, say, watch_interrupt, Out, TempDir,
    SCALE_TO_ZERO_LIMIT,
};

/// Name of the endpoint the queue demo creates.
const ENDPOINT: &str = "demo-queue";
/// The longest the jobs may take to be done once pushed.
const JOBS_LIMIT: Duration = Duration::from_secs(60);
/// How often the sampler reads the queue, the dispatcher and the engine.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Seconds job `i` (0-based) of the demo works: 2, 3, 4, 5, 6, 2, 3, …
pub fn job_seconds(i: u32) -> u32 {
    2 + i % 5
}

/// One line of the timeline: what the demo saw at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sample {
    backlog: u64,
    in_flight: u64,
    sessions: usize,
    workers: usize,
}

/// The dispatcher's sessions, as its events report them.
#[derive(Default)]
struct SessionCount {
    requested: usize,
    held: usize,
}

impl SessionCount {
    fn apply(&mut self, event: &DispatchEvent) {
        match event {
            DispatchEvent::Decision(d) => {
                self.requested = d.requested;
                self.held = d.held;
            }
            DispatchEvent::SessionHeld { .. } => {
                self.requested = self.requested.saturating_sub(1);
                self.held += 1;
            }
            DispatchEvent::SessionEnded { .. } => self.held = self.held.saturating_sub(1),
            DispatchEvent::SessionFailed { .. } | DispatchEvent::SessionCancelled { .. } => {
                self.requested = self.requested.saturating_sub(1)
            }
            _ => {}
        }
    }
}

/// Runs the queue demo with `jobs` jobs.
pub async fn run(jobs: u32) -> anyhow::Result<ExitCode> {
    let dir = TempDir::new()?;
    let mut engine_config =
        EngineConfig::new(dir.0.join("state")).context("cannot configure the embedded engine")?;
    engine_config.listen = "127.0.0.1:0".parse().expect("valid address");
    // The dashboard on a free loopback port, without a login (loopback only).
    engine_config.ui_listen = Some("127.0.0.1:0".parse().expect("valid address"));
    engine_config.ui_no_auth = true;
    let engine = Engine::start(engine_config)
        .await
        .context("cannot start the embedded engine")?;
    let outcome = demo(&engine, &dir, jobs).await;
    engine.shutdown().await;
    drop(dir);
    outcome
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

async fn demo(engine: &EngineHandle, dir: &TempDir, jobs: u32) -> anyhow::Result<ExitCode> {
    let out: Out = Arc::new(Mutex::new(Box::new(std::io::stdout())));
    let t0 = Instant::now();
    let engine_url = engine.url();
    announce_engine(&out, t0, engine);

    // The queue: a SQLite file in the temporary directory.
    let db = dir.0.join("queue.sqlite3");
    let url: QueueUrl = format!("sqlite:{}?queue=demo&visibility_timeout=30", db.display())
        .parse()
        .context("the demo's queue URL")?;
    let queue: Arc<dyn Queue> = Arc::from(
        nullworker_queue::open(&url, OpenMode::Create)
            .await
            .context("cannot open the demo's queue")?,
    );
    say(&out, t0, &format!("queue {url} (embedded SQLite)"));

    // The endpoint: seed parameters, `nullworker consume` beside each worker.
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let done_file = dir.0.join("done.log");
    let consumer = format!(
        "{} consume --queue {} -- sh -c {}",
        shell_quote(&exe.display().to_string()),
        shell_quote(&url.to_string()),
        shell_quote(r#"sleep "$(cat)" && echo "$NULLWORKER_JOB_ID" >> "$DEMO_DONE_FILE""#),
    );
    let client = Client::builder(engine.account_key())
        .autoscaler_url(&engine_url)
        .webserver_url(&engine_url)
        .build()?;
    client
        .create_endpoint(&json!({
            "endpoint_name": ENDPOINT,
            "target_util": 1.0,
            "min_load": 0,
            "max_queue_time": 1,
            "target_queue_time": 0.5,
            "inactivity_timeout": 10,
            "cold_workers": 0,
            "max_workers": jobs,
            "consumer_command": consumer,
            "consumer_health_path": "/health",
            "worker_env": {"DEMO_DONE_FILE": done_file.display().to_string()},
        }))
        .await?;
    let endpoint = client.endpoint(ENDPOINT).await?;
    say(
        &out,
        t0,
        &format!(
            "endpoint {ENDPOINT}: seed configuration, max_workers {jobs}; beside each worker: \
             nullworker consume --queue … -- sh -c 'sleep \"$(cat)\" && …'"
        ),
    );

    // The dispatcher, in process.
    let sessions = Arc::new(Mutex::new(SessionCount::default()));
    let stop = Stop::default();
    let interrupted = watch_interrupt(stop.shutdown.clone());
    let reserver = Arc::new(SdkReserver::new(
        endpoint.clone(),
        SessionOptions {
            lifetime: Duration::from_secs(30),
            check_interval: Some(Duration::from_millis(500)),
            ..SessionOptions::default()
        },
    ));
    let sink_sessions = sessions.clone();
    let sink_out = out.clone();
    let driver = Driver::new(
        queue.clone(),
        reserver,
        DriverConfig {
            max_sessions: jobs as usize,
            ..DriverConfig::default()
        },
    )
    .events(Box::new(move |event: &DispatchEvent| {
        sink_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(event);
        if let DispatchEvent::Decision(d) = event {
            if d.to_open > 0 {
                say(&sink_out, t0, &format!("dispatch: {}", d.reason));
            }
        }
    }));
    let dispatcher = tokio::spawn(driver.run(stop.clone()));
    say(
        &out,
        t0,
        "dispatcher running: open sessions = min(max, backlog + in-flight)",
    );

    // Push the jobs.
    let mut ids = Vec::new();
    for i in 0..jobs {
        let id = queue
            .push(job_seconds(i).to_string().as_bytes())
            .await
            .context("cannot push a demo job")?;
        ids.push(id);
    }
    let total: u32 = (0..jobs).map(job_seconds).sum();
    say(
        &out,
        t0,
        &format!(
            "pushed {} of 2–6 s ({total} s of work in all)",
            count_of(jobs, "job", "jobs")
        ),
    );

    // Watch until every job is done.
    let mut timeline = vec![(t0.elapsed().as_secs_f64(), Sample::default())];
    let deadline = Instant::now() + JOBS_LIMIT;
    let mut all_done = false;
    while Instant::now() < deadline && !interrupted.is_cancelled() {
        let stats = queue.stats().await.unwrap_or_default();
        record(&out, t0, &mut timeline, &endpoint, &sessions, stats).await;
        if stats.backlog == 0 && stats.in_flight == 0 && done_ids(&done_file).len() >= ids.len() {
            all_done = true;
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }

    // Stop the dispatcher: every session has been released by its consumer.
    stop.shutdown.cancel();
    let dispatched = tokio::time::timeout(Duration::from_secs(40), dispatcher).await;

    // Back to zero.
    let mut reached_zero = false;
    if all_done && !interrupted.is_cancelled() {
        say(
            &out,
            t0,
            "all jobs done; waiting for the endpoint to scale back to zero (inactivity_timeout 10 s)",
        );
        let deadline = Instant::now() + SCALE_TO_ZERO_LIMIT;
        while Instant::now() < deadline && !interrupted.is_cancelled() {
            let stats = queue.stats().await.unwrap_or_default();
            record(&out, t0, &mut timeline, &endpoint, &sessions, stats).await;
            if active_workers(&endpoint).await == Some(0) {
                reached_zero = true;
                break;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    print_timeline(&out, &timeline);
    if interrupted.is_cancelled() {
        return Ok(ExitCode::from(crate::exit::INTERRUPTED));
    }

    let done = done_ids(&done_file);
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &done {
        *runs.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !runs.contains_key(id.as_str()))
        .collect();
    let repeated: Vec<(&&str, &usize)> = runs.iter().filter(|(_, n)| **n > 1).collect();
    anyhow::ensure!(
        all_done,
        "the jobs were not all done within {} s",
        JOBS_LIMIT.as_secs()
    );
    anyhow::ensure!(missing.is_empty(), "jobs never ran: {missing:?}");
    anyhow::ensure!(repeated.is_empty(), "jobs ran more than once: {repeated:?}");
    match dispatched {
        Ok(Ok(Outcome::Drained)) => {}
        Ok(Ok(other)) => anyhow::bail!("the dispatcher did not drain: {other:?}"),
        Ok(Err(err)) => anyhow::bail!("the dispatcher task failed: {err}"),
        Err(_) => anyhow::bail!("the dispatcher did not stop within 40 s"),
    }
    anyhow::ensure!(
        reached_zero,
        "the endpoint did not scale back to zero within {} s",
        SCALE_TO_ZERO_LIMIT.as_secs()
    );
    let peak = timeline.iter().map(|(_, s)| s.workers).max().unwrap_or(0);
    let peak_sessions = timeline.iter().map(|(_, s)| s.sessions).max().unwrap_or(0);
    say(
        &out,
        t0,
        &format!(
            "done: {}, each run exactly once; sessions 0 → {peak_sessions} → 0, \
             workers 0 → {peak} → 0 in {:.0} s; everything stopped",
            count_of(jobs, "job", "jobs"),
            t0.elapsed().as_secs_f64()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads the counts, prints a line when they changed and keeps the point.
async fn record(
    out: &Out,
    t0: Instant,
    timeline: &mut Vec<(f64, Sample)>,
    endpoint: &Endpoint,
    sessions: &Mutex<SessionCount>,
    stats: QueueStats,
) {
    let (requested, held) = {
        let s = sessions.lock().unwrap_or_else(|e| e.into_inner());
        (s.requested, s.held)
    };
    let workers = active_workers(endpoint)
        .await
        .unwrap_or_else(|| timeline.last().map_or(0, |(_, s)| s.workers));
    let sample = Sample {
        backlog: stats.backlog,
        in_flight: stats.in_flight,
        sessions: requested + held,
        workers,
    };
    if timeline.last().map(|(_, s)| *s) != Some(sample) {
        timeline.push((t0.elapsed().as_secs_f64(), sample));
        say(
            out,
            t0,
            &format!(
                "backlog {:>2} · in flight {:>2} · sessions {:>2} ({requested} waiting for a worker, {held} held) · workers up {:>2}",
                sample.backlog, sample.in_flight, sample.sessions, sample.workers
            ),
        );
    }
}

/// Ids of the jobs whose command finished, one line each, in order.
fn done_ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn print_timeline(out: &Out, points: &[(f64, Sample)]) {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(
        out,
        "\nover time (W workers up, S sessions, B backlog, F in flight):"
    );
    for (t, s) in points {
        let _ = writeln!(
            out,
            "  {t:6.1}s  W {:>2} {:<12} S {:>2}  B {:>2}  F {:>2}",
            s.workers,
            "█".repeat(s.workers.min(12)),
            s.sessions,
            s.backlog,
            s.in_flight
        );
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_last_two_to_six_seconds() {
        let secs: Vec<u32> = (0..8).map(job_seconds).collect();
        assert_eq!(secs, [2, 3, 4, 5, 6, 2, 3, 4]);
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
