//! Command-line edge of `nullworker endpoint ...`: manage endpoints on a
//! local engine or on Vast (`--instance`, `--engine-url`) through the SDK's
//! typed web API calls. Parses flags, finds the account key (`key`), calls
//! the SDK, prints (`render`, `follow`); decides nothing else.
//!
//! Exit codes: 0 success, 1 runtime failure (unreachable, an HTTP error
//! answer, a refused delete), 2 usage or bad input (clap's own errors, a
//! value out of range, no account key).

mod follow;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use nullworker_client::{Client, EndpointConfig, Instance, LogRange};
use nullworker_engine::endpoint::{preset, MAX_MAX_WORKERS, PRESETS};
use nullworker_engine::policy::{MAX_DURATION, MAX_LOAD};
use nullworker_protocol::{EndpointParams, EndpointState};

use crate::key::KeySource;
use follow::LogFollower;
use render::{
    config_text, effective_config, endpoints_table, engine_defaults, param_values, workers_table,
    Source, WorkerRow,
};

use crate::exit::USAGE as EXIT_USAGE;

const EXIT_CODES: &str = "\
ACCOUNT KEY (first found):
  --api-key, then VAST_API_KEY; for a local engine (a loopback target) the key the engine
  stored in its state directory (NULLWORKER_STATE_DIR, else ~/.local/state/nullworker);
  then Vast's CLI key file ($XDG_CONFIG_HOME/vastai/vast_api_key, else
  ~/.config/vastai/vast_api_key) and the legacy ~/.vast_api_key.

EXIT CODES:
  0    success
  1    runtime failure: the engine or Vast is unreachable, it answered an error (4xx/5xx: an
       unknown endpoint, a rejected key, a refused value), or delete refused (sessions held)
  2    usage or bad input: unknown flag, missing name, a value out of range, no account key
  130  interrupted (Ctrl-C), except `logs --follow`, which Ctrl-C ends with 0";

const CREATE_HELP: &str = "\
Parameters not given take the engine's defaults, which are Vast's (shown with each flag):
cold_workers 5 keeps five workers around, target_util 0.9 starts a second worker early.
For the Null PyWorker's tested set-up (one session per worker, scale from zero and back to
zero), start from the seed preset:

  nullworker endpoint create my-queue --preset seed

The effective configuration is printed after create and update, each value marked given,
preset, default or set.";

/// `nullworker endpoint` and its subcommands.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXIT_CODES)]
pub struct EndpointArgs {
    /// Deployment: `prod` (web API https://console.vast.ai, route service
    /// https://run.vast.ai), `alpha`, `candidate`, or `local` (a nullworker
    /// engine at http://127.0.0.1:8080). Default: local.
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_instance, conflicts_with = "engine_url")]
    instance: Option<Instance>,
    /// Base URL of a nullworker engine (or any server with both Vast APIs
    /// on one URL). Default: NULLWORKER_ENGINE_URL, else `--instance local`.
    #[arg(long, global = true, value_name = "URL")]
    engine_url: Option<String>,
    /// Account key (default: VAST_API_KEY, then the key files in --help).
    #[arg(long, global = true, value_name = "KEY")]
    api_key: Option<String>,
    #[command(subcommand)]
    command: EndpointCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EndpointCommand {
    /// Create an endpoint and print its effective configuration.
    #[command(after_help = CREATE_HELP)]
    Create {
        /// Endpoint name ([a-zA-Z0-9_-], at most 255 characters).
        #[arg(value_parser = parse_name)]
        name: String,
        /// Start from a named configuration; `seed` is the Null PyWorker's
        /// tested one (its values are shown with each flag).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
        preset: Option<String>,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// List endpoints.
    List {
        /// A JSON array of endpoint records (the web API's §4.1 objects).
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint: configuration, launches and workers.
    Show {
        /// Endpoint name.
        name: String,
        /// The endpoint record as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Change parameters of an endpoint and print its effective configuration.
    Update {
        /// Endpoint name.
        name: String,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Delete an endpoint and stop its workers (refused while sessions are held).
    Delete {
        /// Endpoint name.
        name: String,
        /// Delete even while its workers hold sessions (they end).
        #[arg(long)]
        force: bool,
    },
    /// Show an endpoint's workers: id, state (HELD when holding a session),
    /// load, url, control port, age, error.
    Workers {
        /// Endpoint name.
        name: String,
        /// Also list workers that are gone (local engine).
        #[arg(long)]
        all: bool,
        /// A JSON array of workers (fields in docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Print worker logs (every recent worker, or one) from a local engine.
    Logs {
        /// Endpoint name.
        name: String,
        /// Only this worker.
        #[arg(long, value_name = "ID")]
        worker: Option<i64>,
        /// The consumer's log instead of the worker's.
        #[arg(long)]
        consumer: bool,
        /// Last LINES lines of each log (whole lines).
        #[arg(long, default_value_t = 100, value_name = "LINES", allow_negative_numbers = true,
              value_parser = clap::value_parser!(u64).range(0..=nullworker_client::MAX_LOG_LINES))]
        tail: u64,
        /// Keep printing lines as they are written, until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

fn parse_instance(s: &str) -> Result<Instance, String> {
    s.parse::<Instance>().map_err(|e| e.to_string())
}

/// Help of a parameter flag: `text` plus its default and seed value, read
/// from the engine's one definition.
fn param_help(name: &str, text: &str) -> String {
    let show = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "unset".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let defaults = param_values(&engine_defaults());
    let seed = preset("seed").map(|p| param_values(&p)).unwrap_or_default();
    match seed.get(name) {
        Some(v) => format!(
            "{text} [default: {}; --preset seed: {}]",
            show(defaults.get(name)),
            show(Some(v))
        ),
        None => format!("{text} [default: {}]", show(defaults.get(name))),
    }
}

fn int_in(min: i64, max: i64) -> impl Fn(&str) -> Result<i64, String> + Clone + Send + Sync {
    move |s: &str| {
        let expected = format!("expected an integer from {min} to {max}");
        let v: i64 = s.trim().parse().map_err(|_| expected.clone())?;
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is out of range: {expected}"))
        }
    }
}

fn range_text(v: f64) -> String {
    if v == MAX_DURATION {
        format!("{v} (30 days)")
    } else if v == -MAX_DURATION {
        format!("{v} (-30 days)")
    } else if v.abs() >= 1e6 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// A finite number in `[min, max]` (`min_open`: `(min, max]`).
fn num_in(
    min: f64,
    max: f64,
    min_open: bool,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |s: &str| {
        let expected = if min_open {
            format!(
                "expected a number above {} and at most {}",
                range_text(min),
                range_text(max)
            )
        } else {
            format!(
                "expected a number from {} to {}",
                range_text(min),
                range_text(max)
            )
        };
        let v: f64 = s.trim().parse().map_err(|_| expected.clone())?;
        let above_min = if min_open { v > min } else { v >= min };
        if v.is_finite() && above_min && v <= max {
            Ok(v)
        } else {
            Err(format!("{v} is out of range: {expected}"))
        }
    }
}

fn parse_state(s: &str) -> Result<EndpointState, String> {
    s.parse::<EndpointState>().map_err(|e| e.to_string())
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// Endpoint parameters under their Vast names, plus the local workergroup.
/// Numbers are range-checked here (the engine's limits), so a bad value is
/// a usage error naming the flag.
#[derive(Debug, Default, clap::Args)]
struct ParamArgs {
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          help = param_help("max_workers", "Hard cap on workers (1 to 100000)"),
          value_parser = int_in(1, MAX_MAX_WORKERS))]
    max_workers: Option<i64>,
    #[arg(long, visible_alias = "min-workers", value_name = "N", allow_negative_numbers = true,
          help = param_help("cold_workers", "Workers kept even without load (`min_workers`)"),
          value_parser = int_in(0, MAX_MAX_WORKERS))]
    cold_workers: Option<i64>,
    #[arg(long, value_name = "LOAD", allow_negative_numbers = true,
          help = param_help("min_load", "Floor on anticipated load (perf units)"),
          value_parser = num_in(0.0, MAX_LOAD, false))]
    min_load: Option<f64>,
    #[arg(long, value_name = "LOAD", allow_negative_numbers = true,
          help = param_help("min_cold_load", "Total capacity target (perf units)"),
          value_parser = num_in(0.0, MAX_LOAD, false))]
    min_cold_load: Option<f64>,
    #[arg(long, value_name = "UTIL", allow_negative_numbers = true,
          help = param_help("target_util", "Target utilisation, in (0, 1]"),
          value_parser = num_in(0.0, 1.0, true))]
    target_util: Option<f64>,
    #[arg(long, value_name = "MULT", allow_negative_numbers = true,
          help = param_help("cold_mult", "Total capacity = active load × cold_mult"),
          value_parser = num_in(0.0, MAX_LOAD, false))]
    cold_mult: Option<f64>,
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true,
          help = param_help("max_queue_time", "Per-worker routing limit (seconds of implied queue)"),
          value_parser = num_in(0.0, MAX_DURATION, false))]
    max_queue_time: Option<f64>,
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true,
          help = param_help("target_queue_time", "Scale-up trigger (seconds waited)"),
          value_parser = num_in(0.0, MAX_DURATION, false))]
    target_queue_time: Option<f64>,
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true,
          help = param_help("inactivity_timeout", "Scale-to-zero gate in seconds: 0 none, negative never"),
          value_parser = num_in(-MAX_DURATION, MAX_DURATION, false))]
    inactivity_timeout: Option<f64>,
    #[arg(long, value_name = "STATE",
          help = param_help("endpoint_state", "active, suspended or stopped"),
          value_parser = parse_state)]
    endpoint_state: Option<EndpointState>,
    /// Worker command (shell command line). Default: `nullworker serve`.
    #[arg(long, value_name = "COMMAND")]
    worker_command: Option<String>,
    /// Consumer command started beside each worker with the same environment
    /// plus NULL_CONSUMER_PORT, a free loopback port of its own.
    #[arg(long, value_name = "COMMAND")]
    consumer_command: Option<String>,
    /// Path of the consumer's health endpoint on NULL_CONSUMER_PORT (e.g.
    /// /health): each worker then checks
    /// BACKEND_HEALTH_URL=http://127.0.0.1:<NULL_CONSUMER_PORT><PATH>, unless
    /// --worker-env sets BACKEND_HEALTH_URL.
    #[arg(long, value_name = "PATH")]
    consumer_health_path: Option<String>,
    /// Extra environment for worker and consumer, KEY=VALUE (repeatable).
    #[arg(long = "worker-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    worker_env: Vec<(String, String)>,
}

impl ParamArgs {
    /// The §11.1 parameters given on the command line.
    fn params(&self) -> EndpointParams {
        EndpointParams {
            max_workers: self.max_workers,
            cold_workers: self.cold_workers,
            min_load: self.min_load,
            min_cold_load: self.min_cold_load,
            target_util: self.target_util,
            cold_mult: self.cold_mult,
            max_queue_time: self.max_queue_time,
            target_queue_time: self.target_queue_time,
            inactivity_timeout: self.inactivity_timeout,
            endpoint_state: self.endpoint_state,
            ..EndpointParams::default()
        }
    }

    /// Everything to send: `base` (e.g. a preset) overridden by the flags.
    fn config(&self, base: EndpointParams) -> EndpointConfig {
        let given = param_values(&self.params());
        let mut params = param_values(&base);
        params.extend(given);
        let params = serde_json::to_value(params)
            .and_then(serde_json::from_value)
            .unwrap_or_else(|_| self.params());
        EndpointConfig {
            params,
            worker_command: self.worker_command.clone(),
            consumer_command: self.consumer_command.clone(),
            consumer_health_path: self.consumer_health_path.clone(),
            worker_env: (!self.worker_env.is_empty())
                .then(|| self.worker_env.iter().cloned().collect::<BTreeMap<_, _>>()),
        }
    }
}

/// Checks an endpoint name by the engine's rule before anything is sent
/// (clap value parser: a bad name is a usage error).
fn parse_name(name: &str) -> Result<String, String> {
    nullworker_engine::endpoint::validate_name(name)
        .map(|()| name.to_owned())
        .map_err(|e| e.to_string())
}

/// Bad input found after parsing: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Where the commands go, and with which key.
struct Target {
    client: Client,
    key_source: KeySource,
    /// Web API base URL, for messages.
    web: String,
}

impl EndpointArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let resolved = crate::target::resolve(
            self.instance,
            self.engine_url.clone(),
            self.api_key.clone(),
            None,
        )
        .map_err(|e| UsageError(e.to_string()))?;
        let client = resolved
            .builder
            .build()
            .map_err(|e| UsageError(format!("--engine-url: {e}")))?;
        Ok(Target {
            web: client.webserver_url().to_owned(),
            client,
            key_source: resolved.key_source,
        })
    }
}

impl Target {
    /// An SDK error, with where the key came from when it was refused.
    fn explain(&self, err: nullworker_client::Error) -> anyhow::Error {
        match err {
            nullworker_client::Error::Unauthorized { .. } => anyhow::anyhow!(
                "{err} (the key came from {}; see `nullworker endpoint --help`)",
                self.key_source
            ),
            other => anyhow::Error::new(other),
        }
    }

    async fn endpoint(&self, name: &str) -> anyhow::Result<nullworker_client::Endpoint> {
        self.client
            .endpoint(name)
            .await
            .map_err(|e| self.explain(e))
            .with_context(|| format!("at {}", self.web))
    }
}

/// Runs an endpoint subcommand. Usage errors are printed here and give
/// exit code 2; runtime errors are returned (exit code 1).
pub async fn endpoint(args: EndpointArgs) -> anyhow::Result<ExitCode> {
    match run(args).await {
        Err(err) if err.chain().any(|c| c.is::<UsageError>()) => {
            eprintln!("nullworker: error: {err:#}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
        other => other,
    }
}

async fn run(args: EndpointArgs) -> anyhow::Result<ExitCode> {
    let target = args.target()?;
    let t = &target;
    match args.command {
        EndpointCommand::Create {
            name,
            preset: preset_name,
            params,
        } => {
            let preset_values = preset_name.as_deref().and_then(preset);
            let config = EndpointConfig {
                params: EndpointParams {
                    endpoint_name: Some(name.clone()),
                    ..params
                        .config(preset_values.clone().unwrap_or_default())
                        .params
                },
                ..params.config(EndpointParams::default())
            };
            let id = t
                .client
                .create_endpoint_with(&config)
                .await
                .map_err(|e| t.explain(e))?;
            let detail = t
                .client
                .endpoint_by_id(id)
                .await
                .map_err(|e| t.explain(e))?;
            println!(
                "created endpoint {name} (id {id}); endpoint api_key: {}",
                detail.record.api_key
            );
            let preset_ref = preset_name.as_deref().zip(preset_values.as_ref());
            let lines = effective_config(
                &detail.record,
                &params.params(),
                preset_ref,
                &engine_defaults(),
            );
            println!("effective configuration:");
            print!("{}", config_text(&lines));
            let cold = lines.iter().find(|l| l.name == "cold_workers");
            if let Some(cold) = cold.filter(|l| l.source == Source::Default && l.value != "0") {
                println!(
                    "note: cold_workers {} (default) keeps {} workers even without load; \
                     `--preset seed` scales from zero and back (see `nullworker endpoint create --help`)",
                    cold.value, cold.value
                );
            }
        }
        EndpointCommand::List { json } => {
            let records = t.client.endpoints().await.map_err(|e| t.explain(e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", endpoints_table(&records));
            }
        }
        EndpointCommand::Show { name, json } => {
            let ep = t.endpoint(&name).await?;
            let detail = t
                .client
                .endpoint_by_id(ep.id())
                .await
                .map_err(|e| t.explain(e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(ExitCode::SUCCESS);
            }
            let r = &detail.record;
            println!("endpoint {} (id {})", r.endpoint_name, r.id);
            println!("  api_key             {}", r.api_key);
            println!("configuration:");
            let lines = effective_config(r, &EndpointParams::default(), None, &engine_defaults());
            print!("{}", config_text(&lines));
            let template = [
                ("worker_command", detail.worker_command.clone()),
                ("consumer_command", detail.consumer_command.clone()),
                ("consumer_health_path", detail.consumer_health_path.clone()),
            ];
            for (k, v) in template
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            {
                println!("  {k:<19} {v}");
            }
            for (k, v) in detail.worker_env.iter().flatten() {
                println!("  worker_env          {k}={v}");
            }
            if let Some(b) = &detail.spawn_backoff {
                println!(
                    "launches: {} ({} failed before ready); failing in a row: {}{}",
                    b.spawns,
                    b.failed_spawns,
                    b.failures,
                    b.last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                );
            }
            let rows = worker_rows(t, &ep, false).await?;
            println!("workers:");
            print!(
                "{}",
                workers_table(&rows, nullworker_engine::clock::unix_now())
            );
        }
        EndpointCommand::Update { name, params } => {
            let config = params.config(EndpointParams::default());
            if config.is_empty() {
                return Err(UsageError(
                    "nothing to update: give at least one parameter (see --help)".into(),
                )
                .into());
            }
            let ep = t.endpoint(&name).await?;
            t.client
                .update_endpoint(ep.id(), &config)
                .await
                .map_err(|e| t.explain(e))?;
            let detail = t
                .client
                .endpoint_by_id(ep.id())
                .await
                .map_err(|e| t.explain(e))?;
            println!("updated endpoint {name}; effective configuration:");
            let lines =
                effective_config(&detail.record, &params.params(), None, &engine_defaults());
            print!("{}", config_text(&lines));
        }
        EndpointCommand::Delete { name, force } => {
            let ep = t.endpoint(&name).await?;
            let workers = ep.workers().await.map_err(|e| t.explain(e))?;
            let held: Vec<_> = workers.iter().filter(|w| w.reqs_working > 0).collect();
            let sessions: u64 = held.iter().map(|w| w.reqs_working).sum();
            if sessions > 0 && !force {
                let ids: Vec<String> = held.iter().map(|w| w.id.to_string()).collect();
                bail!(
                    "endpoint {name} has {} held on {} (worker {}); deleting it ends them. \
                     Pass --force to delete it anyway",
                    plural(sessions, "open session", "open sessions"),
                    plural(held.len() as u64, "worker", "workers"),
                    ids.join(", ")
                );
            }
            let deleted = t
                .client
                .delete_endpoint(ep.id())
                .await
                .map_err(|e| t.explain(e))?;
            match deleted.deleted_workers {
                Some(n) => println!(
                    "deleted endpoint {name} ({} stopped)",
                    plural(n, "worker", "workers")
                ),
                None => println!("deleted endpoint {name}"),
            }
        }
        EndpointCommand::Workers { name, all, json } => {
            let ep = t.endpoint(&name).await?;
            let rows = worker_rows(t, &ep, all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!(
                    "{}",
                    workers_table(&rows, nullworker_engine::clock::unix_now())
                );
            }
        }
        EndpointCommand::Logs {
            name,
            worker,
            consumer,
            tail,
            follow,
        } => {
            let ep = t.endpoint(&name).await?;
            let what = if consumer { "consumer" } else { "worker" };
            let ids = match worker {
                Some(w) => vec![w],
                None => recent_worker_ids(t, &ep).await?,
            };
            if follow {
                return follow_logs(t, &ep, worker, ids, consumer, tail).await;
            }
            let mut found = false;
            for wid in ids {
                let chunk = t
                    .client
                    .worker_log(ep.id(), wid, consumer, LogRange::LastLines(tail))
                    .await
                    .map_err(|e| t.explain(e))?;
                let Some(chunk) = chunk else {
                    if worker.is_some() {
                        bail!("no {what} log for worker {wid} of endpoint {name}");
                    }
                    continue;
                };
                found = true;
                println!("===== worker {wid} =====");
                let text = String::from_utf8_lossy(&chunk.bytes);
                print!("{text}");
                if !text.is_empty() && !text.ends_with('\n') {
                    println!();
                }
            }
            if !found {
                println!("no {what} logs for endpoint {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The endpoint's workers from the route service (the Vast call), with what
/// a local engine adds (control port, error; ended workers with `all`).
async fn worker_rows(
    t: &Target,
    ep: &nullworker_client::Endpoint,
    all: bool,
) -> anyhow::Result<Vec<WorkerRow>> {
    let live = ep.workers().await.map_err(|e| t.explain(e))?;
    // The engine's extension; Vast has none, and its absence is not an error.
    let details = match t.client.worker_details(ep.id()).await {
        Ok(details) => details,
        Err(err) => {
            tracing::debug!(%err, "no worker details");
            None
        }
    };
    let mut rows: Vec<WorkerRow> = live
        .into_iter()
        .map(|w| {
            let detail = details
                .as_ref()
                .and_then(|d| d.results.iter().find(|r| r.worker.id == w.id));
            WorkerRow::live(w, detail)
        })
        .collect();
    if all {
        match &details {
            Some(d) => {
                let live: BTreeSet<i64> = rows.iter().map(|r| r.worker.id).collect();
                rows.extend(
                    d.history
                        .iter()
                        .filter(|h| !live.contains(&h.id))
                        .map(WorkerRow::ended),
                );
            }
            None => eprintln!(
                "nullworker endpoint: --all: {} keeps no worker history (a nullworker engine does)",
                t.web
            ),
        }
    }
    Ok(rows)
}

/// Ids of the endpoint's recent workers, oldest first (local engine).
async fn recent_worker_ids(
    t: &Target,
    ep: &nullworker_client::Endpoint,
) -> anyhow::Result<Vec<i64>> {
    let Some(details) = t
        .client
        .worker_details(ep.id())
        .await
        .map_err(|e| t.explain(e))?
    else {
        bail!(
            "{} serves no worker logs (a nullworker engine does; on Vast use the instance's own logs)",
            t.web
        );
    };
    let ids: BTreeSet<i64> = details
        .history
        .iter()
        .map(|h| h.id)
        .chain(details.results.iter().map(|r| r.worker.id))
        .collect();
    Ok(ids.into_iter().collect())
}

/// Time between two reads of a followed log.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// Reads between two looks for new workers (without `--worker`).
const FOLLOW_RELIST: u32 = 10;

/// `logs --follow`: the last `tail` lines of each log, then new lines as
/// they come, prefixed with the worker when several are followed, until
/// Ctrl-C. Failed reads are retried (a restarting engine does not end it).
async fn follow_logs(
    t: &Target,
    ep: &nullworker_client::Endpoint,
    worker: Option<i64>,
    ids: Vec<i64>,
    consumer: bool,
    tail: u64,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut followers: BTreeMap<i64, (LogFollower, bool)> = BTreeMap::new();
    for id in ids {
        followers.insert(id, (LogFollower::new(), false));
    }
    let prefix = worker.is_none();
    let mut round: u32 = 0;
    let mut warned = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if prefix && round > 0 && round.is_multiple_of(FOLLOW_RELIST) {
            if let Ok(ids) = recent_worker_ids(t, ep).await {
                for id in ids {
                    followers.entry(id).or_insert((LogFollower::new(), true));
                }
            }
        }
        let mut out = std::io::stdout().lock();
        for (id, (follower, started)) in followers.iter_mut() {
            let range = if *started {
                follower.next()
            } else {
                LogRange::LastLines(tail)
            };
            match t.client.worker_log(ep.id(), *id, consumer, range).await {
                Ok(Some(chunk)) => {
                    *started = true;
                    for line in follower.take(&chunk) {
                        if prefix {
                            writeln!(out, "[worker {id}] {line}")?;
                        } else {
                            writeln!(out, "{line}")?;
                        }
                    }
                }
                Ok(None) => {}
                Err(err) if !warned => {
                    warned = true;
                    eprintln!("nullworker endpoint: {err} (retrying)");
                }
                Err(_) => {}
            }
        }
        out.flush()?;
        drop(out);
        round = round.wrapping_add(1);
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: EndpointArgs,
    }

    fn parse(args: &[&str]) -> Result<EndpointArgs, clap::Error> {
        let mut argv = vec!["endpoint"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn numbers_out_of_range_name_the_flag_and_the_range() {
        for (flags, needles) in [
            (
                vec!["--min-load", "-1"],
                vec!["--min-load", "-1", "from 0 to 1e12"],
            ),
            (vec!["--min-load", "1e13"], vec!["--min-load", "1e12"]),
            (
                vec!["--max-queue-time", "3e6"],
                vec!["--max-queue-time", "30 days"],
            ),
            (
                vec!["--inactivity-timeout", "-3e6"],
                vec!["--inactivity-timeout", "30 days"],
            ),
            (
                vec!["--max-workers", "0"],
                vec!["--max-workers", "from 1 to 100000"],
            ),
            (
                vec!["--cold-workers", "-2"],
                vec!["--cold-workers", "from 0"],
            ),
            (
                vec!["--target-util", "0"],
                vec!["--target-util", "above 0 and at most 1"],
            ),
            (vec!["--target-util", "NaN"], vec!["--target-util"]),
            (vec!["--cold-mult", "inf"], vec!["--cold-mult"]),
            (
                vec!["--worker-env", "NOEQUALS"],
                vec!["--worker-env", "KEY=VALUE"],
            ),
            (
                vec!["--endpoint-state", "paused"],
                vec!["--endpoint-state", "active"],
            ),
        ] {
            let mut argv = vec!["update", "ep"];
            argv.extend(flags.iter());
            let err = parse(&argv).expect_err(&format!("{flags:?}"));
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{flags:?}");
            let text = err.to_string();
            assert!(!text.contains("unexpected argument"), "{text}");
            for needle in needles {
                assert!(text.contains(needle), "{flags:?}: {text}");
            }
        }
        // In range, negative where allowed.
        let args = parse(&[
            "update",
            "ep",
            "--inactivity-timeout",
            "-1",
            "--min-load",
            "0",
        ])
        .unwrap();
        let EndpointCommand::Update { params, .. } = args.command else {
            panic!("update");
        };
        assert_eq!(params.inactivity_timeout, Some(-1.0));
    }

    #[test]
    fn a_missing_name_does_not_ask_for_a_key() {
        let err = parse(&["show"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        let text = err.to_string();
        assert!(text.contains("<NAME>"), "{text}");
        assert!(!text.contains("--api-key"), "{text}");
        let err = parse(&["--instance", "prod", "--engine-url", "http://h", "list"]).unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn a_bad_name_is_refused_before_anything_is_sent() {
        for bad in ["bad name", "", "a/b"] {
            let err = parse(&["create", bad]).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
            assert!(err.to_string().contains("[a-zA-Z0-9_-]"), "{err}");
        }
        assert!(parse(&["create", "ok_name-1"]).is_ok());
    }

    #[test]
    fn presets_and_flags_make_one_body() {
        let args = parse(&[
            "create",
            "ep",
            "--preset",
            "seed",
            "--max-workers",
            "3",
            "--worker-env",
            "A=1=2",
        ])
        .unwrap();
        let EndpointCommand::Create {
            params, preset: p, ..
        } = args.command
        else {
            panic!("create");
        };
        let seed = preset(p.as_deref().unwrap()).unwrap();
        let config = params.config(seed);
        assert_eq!(config.params.max_workers, Some(3));
        assert_eq!(config.params.cold_workers, Some(0));
        assert_eq!(config.params.max_queue_time, Some(1.0));
        assert_eq!(
            config.worker_env,
            Some(BTreeMap::from([("A".to_owned(), "1=2".to_owned())]))
        );
        assert!(parse(&["create", "ep", "--preset", "nope"]).is_err());
    }

    #[test]
    fn help_shows_defaults_and_the_seed_path() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let create = cmd.find_subcommand_mut("create").unwrap();
        // Wrapping depends on the width: compare with single spaces.
        let flat = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let help = flat(create.render_long_help().to_string());
        for needle in [
            "[default: 5; --preset seed: 0]",
            "[default: 0.9; --preset seed: 1.0]",
            "[default: unset; --preset seed: 10.0]",
            "nullworker endpoint create my-queue --preset seed",
        ] {
            assert!(help.contains(needle), "{needle}: {help}");
        }
        let help = flat(Cli::command().render_long_help().to_string());
        assert!(help.contains("EXIT CODES"), "{help}");
        assert!(help.contains("~/.config/vastai/vast_api_key"), "{help}");
    }
}
