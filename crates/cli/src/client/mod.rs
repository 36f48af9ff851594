//! Command-line edge of the client: `nullworker client`, the seed's demo
//! client (open `--count` sessions `--interval` seconds apart, hold each
//! `--hold` seconds, close them).
//!
//! Owns the flags ([`ClientArgs`]), their validation into [`ClientConfig`],
//! signal handling (Ctrl-C closes every open session; a second Ctrl-C exits
//! at once) and the exit code. Runs live in [`runner`], rendering in [`display`].

pub mod display;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use display::{Display, Mode};
use nullworker_client::runner::{self, Event, Plan};
use nullworker_client::{Client, Instance};

use crate::exit::{INTERRUPTED as EXIT_INTERRUPTED, USAGE as EXIT_USAGE};

/// Options of `nullworker client`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_long_help = "EXIT CODES:\n  0    every session was held and closed (or released by its worker)\n  1    a session failed (no worker within --timeout, lease lost, ...) or the run could not start\n  2    invalid flag values\n  130  interrupted (Ctrl-C / SIGTERM); every open session was closed"
)]
pub struct ClientArgs {
    /// Name of the endpoint to reserve workers on.
    #[arg(long, env = "VAST_ENDPOINT", value_name = "NAME")]
    pub endpoint: String,

    /// Number of concurrent sessions (1 to 10000).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: i64,

    /// Seconds each session is held once it has a worker (greater than 0).
    #[arg(
        long,
        default_value_t = 180.0,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub hold: f64,

    /// Seconds between session starts (when --count > 1).
    #[arg(
        long,
        default_value_t = 30.0,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub interval: f64,

    /// `cost` of each session (default 100 = the null worker's max_perf, so
    /// one session fills one worker).
    #[arg(
        long,
        default_value_t = 100.0,
        allow_negative_numbers = true,
        value_name = "UNITS"
    )]
    pub cost: f64,

    /// Session lifetime in seconds: how long a worker stays reserved after
    /// this client stops renewing (e.g. dies). Held sessions are renewed, so
    /// --hold may be far longer. At least 4.
    #[arg(
        long,
        default_value_t = 60.0,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub lifetime: f64,

    /// Seconds allowed to get a worker for each session before it fails.
    #[arg(
        long,
        default_value_t = 300.0,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub timeout: f64,

    /// Seconds between checks that a held session is still open on its
    /// worker (how soon a release from the worker side is noticed). At least 0.1.
    #[arg(
        long,
        default_value_t = 5.0,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub check_interval: f64,

    /// When a held session's worker is lost (it stops answering, or the
    /// engine stops listing it), reserve a replacement for the rest of the
    /// hold. On by default; not done when the endpoint was deleted.
    #[arg(long, overrides_with = "no_replace")]
    pub replace: bool,

    /// Do not replace lost workers: such a session ends as `worker lost`
    /// and the run exits 1.
    #[arg(long, overrides_with = "replace")]
    pub no_replace: bool,

    /// Print one JSON object per event and line instead of the live display.
    #[arg(long)]
    pub json: bool,

    /// Where the engine is and the key to it.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The engine to talk to and the account key: the connection flags shared
/// by `nullworker client` and `nullworker dispatch`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Deployment: `prod` (route service https://run.vast.ai, web API
    /// https://console.vast.ai), `alpha`, `candidate`, or `local` (a
    /// nullworker engine at http://127.0.0.1:8080, which serves both).
    /// Default: --engine-url, else NULLWORKER_ENGINE_URL, else local.
    #[arg(long, value_parser = parse_instance, value_name = "NAME", conflicts_with = "engine_url")]
    pub instance: Option<Instance>,

    /// Base URL of a nullworker engine (both Vast APIs on one URL).
    /// Default: NULLWORKER_ENGINE_URL, else `--instance local`.
    #[arg(long, value_name = "URL")]
    pub engine_url: Option<String>,

    /// Account api key (not an endpoint key; endpoint keys are looked up).
    /// Default: VAST_API_KEY, then the local engine's own key (for a target
    /// on this machine), then Vast's CLI key files (docs/cli.md).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Route service base URL (overrides --instance and --engine-url).
    #[arg(long, value_name = "URL")]
    pub autoscaler_url: Option<String>,

    /// Web API base URL (overrides --instance and --engine-url).
    #[arg(long, value_name = "URL")]
    pub webserver_url: Option<String>,

    /// Extra root CA (PEM file) to trust, e.g. Vast's root for HTTPS workers.
    #[arg(long, value_name = "PEM_FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// The connection flags cannot be used: a usage error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No account key anywhere.
    #[error(transparent)]
    NoKey(#[from] crate::key::NoKey),
    /// A URL or CA file the SDK refuses.
    #[error(transparent)]
    Client(#[from] nullworker_client::Error),
}

impl TargetArgs {
    /// Builds the SDK client from the connection flags; also returns the
    /// account key it uses.
    pub fn client(&self) -> Result<(Client, String), TargetError> {
        let resolved = crate::target::resolve(
            self.instance,
            self.engine_url.clone(),
            self.api_key.clone(),
            self.webserver_url.as_deref(),
        )?;
        let mut builder = resolved.builder;
        if let Some(url) = &self.autoscaler_url {
            builder = builder.autoscaler_url(url.clone());
        }
        if let Some(url) = &self.webserver_url {
            builder = builder.webserver_url(url.clone());
        }
        if let Some(path) = &self.ca_cert {
            builder = builder.extra_root_ca(path.clone());
        }
        Ok((builder.build()?, resolved.key))
    }
}

/// Parses `--instance` (clap value parser).
fn parse_instance(s: &str) -> Result<Instance, String> {
    s.parse::<Instance>().map_err(|e| e.to_string())
}

/// Validated settings of `nullworker client`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Endpoint name.
    pub endpoint: String,
    /// What to do.
    pub plan: Plan,
    /// How to show it.
    pub json: bool,
}

/// An invalid flag value; the message names the flag, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn seconds(flag: &str, value: f64, min: f64, inclusive: bool) -> Result<Duration, UsageError> {
    let ok = value.is_finite() && if inclusive { value >= min } else { value > min };
    if !ok {
        let relation = if inclusive {
            "at least"
        } else {
            "greater than"
        };
        return Err(UsageError(format!(
            "{flag} {value} is invalid: expected a finite number of seconds {relation} {min}"
        )));
    }
    Duration::try_from_secs_f64(value)
        .map_err(|_| UsageError(format!("{flag} {value} is invalid: too large")))
}

impl ClientArgs {
    /// Checks every value and derives the run's plan.
    pub fn validate(&self) -> Result<ClientConfig, UsageError> {
        if self.endpoint.trim().is_empty() {
            return Err(UsageError(
                "--endpoint is empty: expected an endpoint name (or set VAST_ENDPOINT)".to_owned(),
            ));
        }
        if !(1..=10_000).contains(&self.count) {
            return Err(UsageError(format!(
                "--count {} is invalid: expected a whole number from 1 to 10000",
                self.count
            )));
        }
        if !(0.0..=nullworker_protocol::MAX_COST).contains(&self.cost) {
            return Err(UsageError(format!(
                "--cost {:?} is invalid: expected a number from 0 to {:e}",
                self.cost,
                nullworker_protocol::MAX_COST
            )));
        }
        if self.lifetime > nullworker_protocol::MAX_SESSION_LIFETIME {
            return Err(UsageError(format!(
                "--lifetime {} is invalid: expected at most {} seconds (30 days)",
                self.lifetime,
                nullworker_protocol::MAX_SESSION_LIFETIME
            )));
        }
        Ok(ClientConfig {
            endpoint: self.endpoint.clone(),
            plan: Plan {
                count: self.count as u32,
                hold: seconds("--hold", self.hold, 0.0, false)?,
                interval: seconds("--interval", self.interval, 0.0, true)?,
                cost: self.cost,
                lifetime: seconds("--lifetime", self.lifetime, 4.0, true)?,
                timeout: Some(seconds("--timeout", self.timeout, 0.0, false)?),
                check_interval: seconds("--check-interval", self.check_interval, 0.1, true)?,
                replace: !self.no_replace,
            },
            json: self.json,
        })
    }
}

/// Runs `nullworker client`.
pub async fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let config = match args.validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let client = match args.target.client() {
        Ok((client, _key)) => client,
        Err(err) => {
            eprintln!("nullworker: error: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    // The lookup retries for 12 to 16 s: say at once that the engine does
    // not answer, instead of a blank screen until the error.
    let json = config.json;
    let t_lookup = Instant::now();
    let lookup_progress: nullworker_client::Progress =
        std::sync::Arc::new(move |event: &nullworker_client::RouteEvent| {
            if let nullworker_client::RouteEvent::Retrying { reason } = event {
                if json {
                    let line = serde_json::json!({
                        "event": "engine_retrying",
                        "t": (t_lookup.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                        "reason": reason,
                    });
                    println!("{line}");
                } else {
                    eprintln!("nullworker: cannot look up the endpoint yet: {reason}");
                }
            }
        });
    let endpoint = client
        .endpoint_reporting(&config.endpoint, Some(&lookup_progress))
        .await
        .with_context(|| {
            format!(
                "cannot use endpoint {:?} at {}",
                config.endpoint,
                client.webserver_url()
            )
        })?;

    let cancel = CancellationToken::new();
    let interrupted = watch_signals(cancel.clone())?;

    let t0 = Instant::now();
    let plan = config.plan.clone();
    let mut display = Display::new(
        Mode::detect(config.json),
        plan.clone(),
        t0,
        Box::new(std::io::stdout()),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = tx.send(Event::Start {
        t: 0.0,
        endpoint: endpoint.name().to_owned(),
        count: plan.count,
        hold_secs: plan.hold.as_secs_f64(),
        interval_secs: plan.interval.as_secs_f64(),
        cost: plan.cost,
        lifetime_secs: plan.lifetime.as_secs_f64(),
    });
    let run = runner::run_plan(&endpoint, &plan, t0, tx, cancel.clone());
    let (reports, ()) = tokio::join!(run, display.drive(rx));
    let was_interrupted = interrupted.is_cancelled();
    let code = runner::exit_code(&reports, was_interrupted);
    display.finish(&reports, code);
    let failed = reports.iter().filter(|r| r.outcome.is_failure()).count();
    if failed > 0 {
        eprintln!(
            "nullworker: error: {failed} of {} failed",
            display::count_of(reports.len(), "session", "sessions")
        );
    }
    Ok(ExitCode::from(code))
}

/// Cancels `cancel` on the first SIGINT or SIGTERM; exits the process at
/// once (code 130) on the second. The returned token is cancelled when a
/// signal was received.
fn watch_signals(cancel: CancellationToken) -> anyhow::Result<CancellationToken> {
    let received = CancellationToken::new();
    let flag = received.clone();
    crate::signals::on_first_and_second(
        move || {
            flag.cancel();
            cancel.cancel();
        },
        || {
            eprintln!("nullworker: interrupted again: exiting without closing; open sessions end by expiry");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        },
    )?;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
    }

    fn parse(extra: &[&str]) -> ClientArgs {
        let mut argv = vec!["client", "--endpoint", "e"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("parse").args
    }

    #[test]
    fn defaults_match_the_seed_client() {
        let config = parse(&[]).validate().unwrap();
        assert_eq!(config.plan.count, 1);
        assert_eq!(config.plan.hold, Duration::from_secs(180));
        assert_eq!(config.plan.interval, Duration::from_secs(30));
        assert_eq!(config.plan.cost, 100.0);
        assert!(config.plan.replace, "lost workers are replaced by default");
    }

    #[test]
    fn no_replace_turns_replacement_off_and_the_last_flag_wins() {
        assert!(!parse(&["--no-replace"]).validate().unwrap().plan.replace);
        assert!(
            !parse(&["--replace", "--no-replace"])
                .validate()
                .unwrap()
                .plan
                .replace
        );
        assert!(
            parse(&["--no-replace", "--replace"])
                .validate()
                .unwrap()
                .plan
                .replace
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (flags, needle) in [
            (vec!["--hold", "-5"], "--hold -5"),
            (vec!["--hold", "0"], "--hold 0"),
            (vec!["--count", "0"], "--count 0"),
            (vec!["--interval", "-1"], "--interval -1"),
            (vec!["--cost", "NaN"], "--cost NaN"),
            (vec!["--cost", "1e308"], "--cost 1e308"),
            (vec!["--lifetime", "2592001"], "--lifetime 2592001"),
            (vec!["--hold", "inf"], "--hold inf"),
            (vec!["--lifetime", "1"], "--lifetime 1"),
        ] {
            let err = parse(&flags).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn unknown_instance_is_refused() {
        let argv = ["client", "--endpoint", "e", "--instance", "staging"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
