//! `nullworker dispatch`: the command-line edge of the dispatcher.
//!
//! Owns the flags ([`DispatchArgs`]) and their validation, connecting to
//! the queue and the endpoint, the `/metrics` server, printing `--json`
//! events, the signals (the first SIGINT/SIGTERM drains, the second exits)
//! and the exit code. The counting, the sessions and the reports live in
//! `nullworker_queue::dispatch`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::client::TargetArgs;
use anyhow::Context as _;
use nullworker_client::SessionOptions;
use nullworker_queue::dispatch::{
    DispatchEvent, Driver, DriverConfig, Metrics, Outcome, SdkReserver, Stop,
};
use nullworker_queue::{OpenMode, QueueUrl};
use serde_json::json;

use crate::exit::USAGE as EXIT_USAGE;
// Exit code when held sessions were left to expire (second signal or
// `--drain-timeout`): the convention's "interrupted".
use crate::exit::INTERRUPTED as EXIT_ABANDONED;

const AFTER_LONG_HELP: &str = "\
HOW IT COUNTS:
  Keeps min(--max-sessions, backlog + in-flight) sessions open on the endpoint, reading
  the queue's counts every --poll-interval. A session counts from the moment it is
  requested, also while the engine starts a worker from zero, so a slow start never
  leads to a second session for the same job. It never closes a session to scale in:
  each session ends when the consumer on its worker releases it after acknowledging
  its job, and is replaced only if the queue still shows work. Sessions that fail to
  start (no worker, engine errors) are retried after 0.5 s, doubling up to 30 s.

LOAD:
  One stats call to the queue per --poll-interval (50 per second at the default 20 ms;
  a few commands each on Redis, one read transaction on SQLite) and one requeue call per
  second (jobs of consumers that stopped heart-beating become claimable again). Each
  held session asks its worker every --check-interval whether it is still held: a
  release by the worker is noticed within that time, so a shorter interval replaces
  finished sessions sooner at the cost of one small request per session and interval.

STOPPING (Ctrl-C / SIGTERM):
  The first signal stops opening sessions and cancels requests still waiting for a
  worker (they hold no job). Held sessions are kept, their leases renewed, until the
  consumer on each worker releases it after its job: running jobs are never cut short.
  Once the queue shows no job waiting or in flight, the held sessions left hold no job
  and are closed. A second signal, or --drain-timeout, exits at once without closing
  held sessions: their workers free themselves within --lifetime.

RESTARTS:
  A dispatcher counts only the sessions it opened. Sessions of one that died are no
  longer renewed and end within --lifetime (or when their consumers release them); a
  restarted dispatcher opens sessions for the work it sees, so for up to --lifetime
  there may be more sessions than work, never fewer. No cleanup is needed.

EXIT CODES:
  0    stopped by a signal after every session ended
  1    could not start: queue unreachable or missing, unknown endpoint, api key
       refused, metrics address unusable (one line says why)
  2    invalid flag values (one line names the flag and the value)
  130  stopped by a second signal or --drain-timeout with sessions still held";

/// Options of `nullworker dispatch`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = AFTER_LONG_HELP)]
pub struct DispatchArgs {
    /// Name of the endpoint to reserve workers on.
    #[arg(long, env = "VAST_ENDPOINT", value_name = "NAME")]
    pub endpoint: String,

    /// The queue to watch: redis://HOST:PORT[/DB]?list=NAME,
    /// redis://HOST:PORT?stream=NAME&group=GROUP,
    /// nats://HOST:PORT?stream=NAME&subject=SUBJ&consumer=DURABLE or
    /// sqlite:PATH?queue=NAME. The queue must exist.
    #[arg(long, value_name = "URL", value_parser = parse_queue)]
    pub queue: QueueUrl,

    /// Where the engine is and the key to it (as for `nullworker client`).
    #[command(flatten)]
    pub target: TargetArgs,

    /// Most sessions open at once (1 to 10000).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    pub max_sessions: u32,

    /// `cost` of each session (default 100 = the null worker's max_perf, so
    /// one session fills one worker).
    #[arg(long, default_value = "100", value_parser = parse_cost, allow_negative_numbers = true, value_name = "UNITS")]
    pub cost: f64,

    /// Session lifetime in seconds: how long a worker stays reserved after
    /// this dispatcher stops renewing it (e.g. dies). Held sessions are
    /// renewed. At least 4.
    #[arg(long, default_value = "60", value_parser = parse_lifetime, allow_negative_numbers = true, value_name = "SECONDS")]
    pub lifetime: Duration,

    /// Milliseconds between readings of the queue's counts (1 to 250).
    #[arg(long, default_value = "20", value_parser = parse_poll_interval, allow_negative_numbers = true, value_name = "MS")]
    pub poll_interval: Duration,

    /// Seconds between checks that a held session is still held on its
    /// worker: how soon a release by the worker is noticed (at least 0.1).
    #[arg(long, default_value = "1", value_parser = parse_check_interval, allow_negative_numbers = true, value_name = "SECONDS")]
    pub check_interval: Duration,

    /// Seconds one session request may wait for a worker before it counts
    /// as failed (default: as long as it takes).
    #[arg(long, value_parser = parse_positive_seconds, allow_negative_numbers = true, value_name = "SECONDS")]
    pub reserve_timeout: Option<Duration>,

    /// After the first signal, seconds to wait for held sessions to be
    /// released before exiting without them (default: as long as it takes).
    #[arg(long, value_parser = parse_positive_seconds, allow_negative_numbers = true, value_name = "SECONDS")]
    pub drain_timeout: Option<Duration>,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Visibility timeout in seconds, overriding the queue URL's
    /// `visibility_timeout=`; must match the consumers'.
    #[arg(long, value_parser = parse_positive_seconds, allow_negative_numbers = true, value_name = "SECONDS")]
    pub visibility_timeout: Option<Duration>,

    /// Deliveries before a failing job is dead-lettered, overriding the
    /// queue URL's `max_attempts=`; must match the consumers'.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,

    /// Print one JSON object per event and line on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_queue(s: &str) -> Result<QueueUrl, String> {
    s.parse::<QueueUrl>().map_err(|e| e.to_string())
}

fn parse_seconds(s: &str, min: f64, inclusive: bool) -> Result<Duration, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {s:?}"))?;
    let ok = value.is_finite() && if inclusive { value >= min } else { value > min };
    if !ok {
        let relation = if inclusive {
            "at least"
        } else {
            "greater than"
        };
        return Err(format!(
            "expected a finite number of seconds {relation} {min}"
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|_| format!("{value} seconds is too large"))
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 4.0, true)
}

fn parse_check_interval(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 0.1, true)
}

fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    parse_seconds(s, 0.0, false)
}

fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(ms) if (1..=250).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err("expected a whole number of milliseconds from 1 to 250".to_owned()),
    }
}

fn parse_cost(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c >= 0.0 => Ok(c),
        _ => Err("expected a finite number >= 0".to_owned()),
    }
}

impl DispatchArgs {
    /// The queue URL with the flag overrides applied and checked.
    fn queue_url(&self) -> Result<QueueUrl, String> {
        let mut url = self.queue.clone();
        if let Some(vt) = self.visibility_timeout {
            url.options.visibility_timeout = vt;
        }
        if let Some(n) = self.max_attempts {
            url.options.max_attempts = n;
        }
        url.options.validate().map_err(|e| e.to_string())?;
        if self.endpoint.trim().is_empty() {
            return Err(
                "--endpoint is empty: expected an endpoint name (or set VAST_ENDPOINT)".to_owned(),
            );
        }
        Ok(url)
    }

    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            cost: self.cost,
            lifetime: self.lifetime,
            keep_alive: true,
            check_interval: Some(self.check_interval),
            timeout: self.reserve_timeout,
            ..SessionOptions::default()
        }
    }
}

/// Runs `nullworker dispatch`.
pub async fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let url = match args.queue_url() {
        Ok(url) => url,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let (client, account_key) = match args.target.client() {
        Ok(target) => target,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let queue = nullworker_queue::open(&url, OpenMode::Existing)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the queue {url}: {e}"))?;
    let endpoint = client.endpoint(&args.endpoint).await.with_context(|| {
        format!(
            "cannot use endpoint {:?} at {}",
            args.endpoint,
            client.webserver_url()
        )
    })?;

    let metrics = Arc::new(Metrics::new());
    let metrics_url = match args.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, metrics.clone()).await?),
        None => None,
    };
    let stop = Stop::default();
    watch_signals(stop.clone())?;
    if let Some(engine) = local_engine(client.webserver_url()) {
        tokio::spawn(report_to_engine(
            engine,
            account_key,
            endpoint.name().to_owned(),
            metrics.clone(),
            stop.shutdown.clone(),
        ));
    }

    if args.json {
        print_json(&json!({
            "event": "started",
            "t": 0.0,
            "endpoint": endpoint.name(),
            "queue": url.to_string(),
            "max_sessions": args.max_sessions,
            "poll_interval_ms": args.poll_interval.as_millis() as u64,
            "check_interval_secs": args.check_interval.as_secs_f64(),
            "lifetime_secs": args.lifetime.as_secs_f64(),
            "metrics_url": metrics_url,
        }));
    }
    tracing::info!(
        endpoint = %endpoint.name(),
        queue = %url,
        max_sessions = args.max_sessions,
        "dispatching: one session per job waiting or in flight"
    );

    let config = DriverConfig {
        max_sessions: args.max_sessions as usize,
        poll_interval: args.poll_interval,
        drain_timeout: args.drain_timeout,
        ..DriverConfig::default()
    };
    let reserver = Arc::new(SdkReserver::new(endpoint, args.session_options()));
    let mut driver = Driver::new(Arc::from(queue), reserver, config).metrics(metrics);
    if args.json {
        driver = driver.events(Box::new(|event: &DispatchEvent| {
            if let Ok(value) = serde_json::to_value(event) {
                print_json(&value);
            }
        }));
    }
    match driver.run(stop).await {
        Outcome::Drained => Ok(ExitCode::SUCCESS),
        Outcome::Abandoned { held, .. } => {
            eprintln!(
                "nullworker: stopped with {held} held session(s) left; they end by expiry within {} s",
                args.lifetime.as_secs_f64()
            );
            Ok(ExitCode::from(EXIT_ABANDONED))
        }
    }
}

/// The base URL of the web API if it is a `nullworker engine` on this
/// machine (a loopback `http://` address), to which the dispatcher reports.
fn local_engine(webserver_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(webserver_url).ok()?;
    if url.scheme() != "http" || !crate::target::is_loopback(webserver_url) {
        return None;
    }
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("http://{host}:{port}"),
        None => format!("http://{host}"),
    })
}

/// Once a second, tells a local engine's dashboard the backlog, in-flight
/// jobs and held sessions (`POST /api/v0/dispatch_report/`, account key).
/// Failures are logged at debug level; the dispatcher never waits on them
/// (each report has a 2 s timeout, on its own task).
async fn report_to_engine(
    engine: String,
    account_key: String,
    endpoint: String,
    metrics: Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return;
    };
    let url = format!("{engine}/api/v0/dispatch_report/");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let (backlog, in_flight, held) = metrics.counts_now();
        let body =
            json!({"endpoint": endpoint, "backlog": backlog, "in_flight": in_flight, "held": held});
        match http
            .post(&url)
            .bearer_auth(&account_key)
            .json(&body)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => {
                tracing::debug!(status = %resp.status(), "the engine refused the dispatch report")
            }
            Err(err) => tracing::debug!(%err, "cannot report to the engine"),
        }
    }
}

fn print_json(value: &serde_json::Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Serves `/metrics` on `addr`; returns its URL.
async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<String> {
    use axum::http::header;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!("metrics server stopped: {err}");
        }
    });
    let url = format!("http://{bound}/metrics");
    tracing::info!("metrics on {url}");
    Ok(url)
}

/// The first SIGINT or SIGTERM begins the drain; the second exits at once.
fn watch_signals(stop: Stop) -> anyhow::Result<()> {
    let Stop { shutdown, abort } = stop;
    crate::signals::on_first_and_second(
        move || {
            eprintln!(
                "nullworker: stopping: no new sessions; held sessions are kept until their workers \
                 release them (signal again to exit now)"
            );
            shutdown.cancel();
        },
        move || abort.cancel(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_engine_gets_the_dispatch_reports() {
        assert_eq!(
            local_engine("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            local_engine("http://[::1]:9000/").as_deref(),
            Some("http://[::1]:9000")
        );
        assert_eq!(local_engine("https://console.vast.ai"), None);
        assert_eq!(local_engine("http://10.0.0.1:8080"), None);
        assert_eq!(local_engine("http://127.0.0.1.example.com:80"), None);
        assert_eq!(local_engine("http://localhost.example.com"), None);
    }
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DispatchArgs,
    }

    fn parse(extra: &[&str]) -> Result<DispatchArgs, clap::Error> {
        let mut argv = vec![
            "dispatch",
            "--endpoint",
            "e",
            "--queue",
            "sqlite:q.db?queue=q",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.max_sessions, 16);
        assert_eq!(args.cost, 100.0);
        assert_eq!(args.lifetime, Duration::from_secs(60));
        assert_eq!(args.poll_interval, Duration::from_millis(20));
        assert_eq!(args.check_interval, Duration::from_secs(1));
        assert_eq!(args.drain_timeout, None);
        assert_eq!(args.target.instance, None);
        let options = args.session_options();
        assert!(options.keep_alive);
        assert_eq!(options.check_interval, Some(Duration::from_secs(1)));
        assert_eq!(options.timeout, None);
    }

    #[test]
    fn bad_values_are_usage_errors_naming_flag_and_value() {
        for (flags, needles) in [
            (vec!["--max-sessions", "0"], vec!["--max-sessions", "0"]),
            (
                vec!["--max-sessions", "10001"],
                vec!["--max-sessions", "10001"],
            ),
            (
                vec!["--lifetime", "3"],
                vec!["--lifetime", "'3'", "at least 4"],
            ),
            (vec!["--lifetime", "-5"], vec!["--lifetime", "'-5'"]),
            (
                vec!["--poll-interval", "251"],
                vec!["--poll-interval", "1 to 250"],
            ),
            (
                vec!["--poll-interval", "0"],
                vec!["--poll-interval", "1 to 250"],
            ),
            (
                vec!["--check-interval", "0"],
                vec!["--check-interval", "at least 0.1"],
            ),
            (vec!["--cost", "NaN"], vec!["--cost", "NaN"]),
            (
                vec!["--drain-timeout", "inf"],
                vec!["--drain-timeout", "inf"],
            ),
            (vec!["--instance", "staging"], vec!["--instance", "staging"]),
        ] {
            let err = parse(&flags).expect_err(&format!("{flags:?}"));
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{flags:?}");
            let text = err.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{flags:?}: {text}");
            }
        }
    }

    #[test]
    fn a_bad_queue_url_is_one_clear_usage_error() {
        let argv = ["dispatch", "--endpoint", "e", "--queue", "amqp://h/q"];
        let err = Cli::try_parse_from(argv).err().expect("refused");
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        let text = err.to_string();
        assert!(
            text.contains("amqp://h/q") && text.contains("unknown scheme"),
            "{text}"
        );
    }

    #[test]
    fn queue_overrides_are_checked() {
        let args = parse(&["--visibility-timeout", "7", "--max-attempts", "3"]).unwrap();
        let url = args.queue_url().unwrap();
        assert_eq!(url.options.visibility_timeout, Duration::from_secs(7));
        assert_eq!(url.options.max_attempts, 3);
        let err = parse(&["--max-attempts", "0"])
            .unwrap()
            .queue_url()
            .unwrap_err();
        assert!(err.contains("max attempts 0"), "{err}");
        let args = Cli::try_parse_from([
            "dispatch",
            "--endpoint",
            " ",
            "--queue",
            "sqlite:q.db?queue=q",
        ])
        .unwrap()
        .args;
        assert!(args
            .queue_url()
            .unwrap_err()
            .contains("--endpoint is empty"));
    }
}
