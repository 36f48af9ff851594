//! Dashboard benchmark: the engine's dashboard with 1,000 workers on one
//! endpoint, in headless Chromium.
//!
//! It spawns one engine (our binary, fresh state directory, 127.0.0.1,
//! dashboard on a free port), registers 1,000 simulated workers (reports
//! from unknown ids with the endpoint's `api_key` as `mtoken`: external
//! workers, no processes), and keeps every one of them reporting once a
//! second, a tenth of them changing the sessions they list each second
//! (so the stream carries about 100 `session` events a second besides the
//! samples). Then it measures:
//!
//! * the event stream's bytes per second at 1,000 workers (a plain SSE
//!   reader, after the reset), and the size of the reset snapshot;
//! * in Chromium (logged in through the form), the time from navigation to
//!   the first render of the endpoint page with its 1,000 workers, and the
//!   per-update cost: the mean and largest time of one render (the page
//!   redraws at most once per animation frame, whatever the event rate),
//!   as the page's own `performance.now()` measures them.
//!
//! ```text
//! cargo bench -p nullworker --bench dashboard -- [--workers N] [--seconds S]
//! ```
//!
//! Needs Debian's `chromium` and `chromium-driver`
//! (`scripts/setup-test-deps.sh`). See docs/benchmarks.md.

#[path = "../tests/e2e/common/browser.rs"]
#[allow(dead_code)]
mod browser;
mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use serde_json::{json, Value};

use common::engine::{SpawnedEngine, ACCOUNT_KEY};
use common::loadgen::{self, Connection};

/// Benchmark of the engine's dashboard at scale.
#[derive(Debug, Parser)]
#[command(name = "dashboard-bench")]
struct Args {
    /// Simulated workers on the endpoint.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    workers: u32,
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

const ENDPOINT: &str = "bench-dashboard";
const FIRST_ID: i64 = 2_000_000_000;

fn main() -> ExitCode {
    let args = Args::parse();
    common::main(
        "dashboard bench",
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        run(args),
    )
}

fn report(id: i64, api_key: &str, i: u32, held: bool) -> Bytes {
    let url = format!("http://127.0.{}.{}:8000", 1 + i / 250, 1 + i % 250);
    let idxs: Vec<u64> = if held { vec![id as u64] } else { vec![] };
    Bytes::from(
        json!({
            "id": id, "mtoken": api_key, "version": "1.1.0",
            "loadtime": 0.05, "cur_load": if held { 100 } else { 0 }, "rej_load": 0, "new_load": 0,
            "error_msg": "", "max_perf": 100.0, "cur_perf": 0,
            "cur_capacity": 0, "max_capacity": 0,
            "num_requests_working": idxs.len(), "num_requests_recieved": 0,
            "additional_disk_usage": 0.0, "disk_usage": 0.0,
            "working_request_idxs": idxs, "url": url,
        })
        .to_string(),
    )
}

/// Every worker reports once per `round`; in round `r`, worker `i` holds a
/// session when `(i + r) % 10 < 5`, so a tenth of them change each round.
async fn report_round(
    addr: std::net::SocketAddr,
    api_key: &str,
    workers: u32,
    round: u32,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let next = next.clone();
        let api_key = api_key.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= workers {
                    return anyhow::Ok(());
                }
                let held = (i + round) % 10 < 5;
                let id = FIRST_ID + i64::from(i);
                let reply = conn
                    .post_json("/worker_status/", report(id, &api_key, i, held))
                    .await?;
                if !reply.status.is_success() {
                    bail!(
                        "report of worker {id}: HTTP {}: {}",
                        reply.status,
                        reply.body_text()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ui_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ui_listen = format!("127.0.0.1:{ui_port}");
    let engine = SpawnedEngine::start(&[
        "--allow-external-workers",
        "--stale-after",
        "86400",
        "--ui-listen",
        &ui_listen,
    ])
    .await?;
    let ui_url = format!("http://{ui_listen}/ui/");
    engine
        .create_endpoint(json!({
            "endpoint_name": ENDPOINT,
            "max_workers": args.workers,
            "cold_workers": 0,
            "min_load": 0,
            "target_util": 1.0,
            "max_queue_time": 2.0e6,
            "target_queue_time": 2.0e6,
        }))
        .await?;
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("{}/api/v0/endptjobs/", engine.url))
        .bearer_auth(ACCOUNT_KEY)
        .send()
        .await?
        .json()
        .await?;
    let api_key = list["results"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["endpoint_name"] == ENDPOINT))
        .and_then(|e| e["api_key"].as_str())
        .context("the endpoint's api_key")?
        .to_owned();
    let addr = loadgen::resolve(&engine.url).await?;
    let started = Instant::now();
    report_round(addr, &api_key, args.workers, 0)
        .await
        .with_context(|| engine.context())?;
    println!(
        "dashboard benchmark: {} workers registered in {:.1} s",
        args.workers,
        started.elapsed().as_secs_f64()
    );

    // Reports every second for the rest of the run.
    let reporting = {
        let api_key = api_key.clone();
        let workers = args.workers;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut round = 1;
            loop {
                tick.tick().await;
                if let Err(err) = report_round(addr, &api_key, workers, round).await {
                    eprintln!("dashboard bench: reports failed: {err:#}");
                    return;
                }
                round += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The stream, as a plain reader sees it.
    let mut stream = http
        .get(format!("{ui_url}events"))
        .bearer_auth(ACCOUNT_KEY)
        .send()
        .await?;
    let mut reset_bytes = 0usize;
    let mut buffered = Vec::new();
    while reset_bytes == 0 {
        let chunk = stream.chunk().await?.context("the stream ended")?;
        buffered.extend_from_slice(&chunk);
        if let Some(end) = buffered.windows(2).position(|w| w == b"\n\n") {
            reset_bytes = end + 2;
            buffered.drain(..end + 2);
        }
    }
    let measure = Duration::from_secs(args.seconds);
    let t0 = Instant::now();
    let mut bytes = buffered.len();
    let mut events = 0usize;
    while t0.elapsed() < measure {
        match tokio::time::timeout(measure.saturating_sub(t0.elapsed()), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                bytes += chunk.len();
                events += chunk.windows(2).filter(|w| w == b"\n\n").count();
            }
            Ok(Ok(None)) => bail!("the stream ended"),
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(stream);
    println!(
        "stream at {} workers: {:.1} KiB/s, {:.0} events/s; reset snapshot {:.1} KiB",
        args.workers,
        bytes as f64 / 1024.0 / secs,
        events as f64 / secs,
        reset_bytes as f64 / 1024.0
    );

    // The page.
    let browser = browser::Browser::start(1400, 1300).await;
    browser.log_in(&ui_url, ACCOUNT_KEY).await;
    let client = browser.client.clone();
    client
        .goto(&format!("{ui_url}#/endpoint/{ENDPOINT}"))
        .await?;
    client.refresh().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let v = client
            .execute(
                "const p = window.nullworkerDashboard && window.nullworkerDashboard.perf; \
                 const rows = document.querySelectorAll('#workers tr.worker-row').length; \
                 return p && p.firstRender !== null && rows > 0 ? {first: p.firstRender, rows} : null;",
                vec![],
            )
            .await?;
        if !v.is_null() {
            break v;
        }
        if Instant::now() > deadline {
            bail!("the endpoint page did not render its workers within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let start = client
        .execute(
            "const p = window.nullworkerDashboard.perf; p.renders = 0; p.renderMs = 0; p.maxMs = 0; p.events = 0; return performance.now();",
            vec![],
        )
        .await?;
    client
        .execute(
            "const p = window.nullworkerDashboard.perf; const orig = window.requestAnimationFrame; \
             window.__frames = 0; (function f(){ window.__frames++; orig(f); })(); return true;",
            vec![],
        )
        .await?;
    tokio::time::sleep(measure).await;
    let v = client
        .execute(
            "const p = window.nullworkerDashboard.perf; return {renders: p.renders, ms: p.renderMs, max: p.maxMs, events: p.events, now: performance.now(), frames: window.__frames};",
            vec![],
        )
        .await?;
    let elapsed_s = (v["now"].as_f64().unwrap_or(0.0) - start.as_f64().unwrap_or(0.0)) / 1000.0;
    let renders = v["renders"].as_f64().unwrap_or(0.0);
    println!(
        "page at {} workers: first render {:.0} ms after navigation ({} rows shown); {:.1} renders/s for {:.0} events/s, {:.1} ms per render (max {:.1} ms), {:.0}% of the main thread; {:.0} frames/s",
        args.workers,
        first["first"].as_f64().unwrap_or(0.0),
        first["rows"],
        renders / elapsed_s,
        v["events"].as_f64().unwrap_or(0.0) / elapsed_s,
        v["ms"].as_f64().unwrap_or(0.0) / renders.max(1.0),
        v["max"].as_f64().unwrap_or(0.0),
        v["ms"].as_f64().unwrap_or(0.0) / 10.0 / elapsed_s,
        v["frames"].as_f64().unwrap_or(0.0) / elapsed_s,
    );
    let png = client.screenshot().await?;
    std::fs::write(browser::artifacts_dir().join("dashboard-1000.png"), png)?;
    browser.close().await;
    reporting.abort();
    Ok(ExitCode::SUCCESS)
}
