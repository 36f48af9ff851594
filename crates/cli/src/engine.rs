//! Command-line edge of the engine: `nullworker engine` (run the engine
//! until SIGTERM/SIGINT) and `nullworker endpoint ...` (manage the endpoints
//! of a running engine over its web API with the account key). Parses and
//! prints; the engine itself lives in [`nullworker_engine::engine`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use nullworker_engine::config::{default_state_dir, Command, EngineConfig};
use nullworker_engine::engine::Engine;
use nullworker_engine::error::EngineError;

/// Options of `nullworker engine`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Address of the HTTP server (route service, web API and metrics on one port).
    #[arg(long, env = "NULLWORKER_LISTEN", default_value = nullworker_engine::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// State directory (database, signing key, worker logs).
    /// Default: $XDG_STATE_HOME/nullworker or ~/.local/state/nullworker.
    #[arg(long, env = "NULLWORKER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Account key for the web API. Default: the stored one, or a new one
    /// generated and printed once at first start.
    #[arg(long, env = "NULLWORKER_ACCOUNT_KEY", hide_env_values = true)]
    pub account_key: Option<String>,
    /// Default worker command (a shell command line) for endpoints that do
    /// not set one. Default: this executable with `serve`.
    #[arg(long, env = "NULLWORKER_WORKER_COMMAND")]
    pub worker_command: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping a worker.
    #[arg(long, default_value_t = 5.0)]
    pub stop_grace: f64,
    /// Seconds without a report after which a worker is broken (ERROR).
    #[arg(long, default_value_t = 30.0)]
    pub stale_after: f64,
    /// Seconds an idle worker stays up before it may be stopped.
    #[arg(long, default_value_t = 5.0)]
    pub scale_down_delay: f64,
    /// Longest time (seconds) `/route/` holds a WAITING answer while a
    /// worker may become ready; 0 answers at once.
    #[arg(long, default_value_t = 2.0)]
    pub route_hold: f64,
    /// Take reports from workers the engine did not launch: a worker
    /// reporting with an endpoint's api_key as MASTER_TOKEN registers as an
    /// external worker of that endpoint, and clients are routed to the URL
    /// it reports. Off by default.
    #[arg(long, env = "NULLWORKER_ALLOW_EXTERNAL_WORKERS")]
    pub allow_external_workers: bool,
    /// Refuse reports from workers the engine did not launch: the default
    /// (kept for compatibility).
    #[arg(long, hide = true, conflicts_with = "allow_external_workers")]
    pub strict: bool,
    /// Seconds a client has to send a request's headers, from when its
    /// connection opens or from its previous answer (an idle keep-alive
    /// connection is closed after it).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Stop every worker when the engine exits on SIGTERM, and tie workers
    /// to the engine's life (they get SIGTERM if it dies). Default: workers
    /// outlive the engine on SIGTERM, SIGKILL or a crash, and the next
    /// engine on the state directory re-adopts them (SIGINT, Ctrl-C, always
    /// stops them).
    #[arg(long)]
    pub stop_workers_on_exit: bool,
    /// Ended workers whose history row and directory are kept, per endpoint.
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_KEEP_ENDED)]
    pub keep_ended_workers: u32,
    /// Days an ended worker's history row and directory are kept at most.
    #[arg(long, default_value_t = 7.0)]
    pub keep_ended_days: f64,
    /// Size (bytes) above which a worker's or consumer's log is rotated.
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_LOG_MAX_BYTES)]
    pub log_max_bytes: u64,
    /// Rotated files kept per log (`worker.log.1`, ...; 0: only truncate).
    #[arg(long, default_value_t = nullworker_engine::housekeeping::DEFAULT_LOG_FILES)]
    pub log_files: u32,
    /// Open HTTP connections at most; at the cap the connection idle the
    /// longest is closed for a new one. Default: half the file-descriptor
    /// limit, at most 8192.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Address of the dashboard (`/ui/`), or `off`. Default: the --listen
    /// address with its port + 1 (127.0.0.1:8081), or port 0 (any free
    /// port) when --listen has port 0.
    #[arg(long, env = "NULLWORKER_UI_LISTEN", value_name = "ADDR|off")]
    pub ui_listen: Option<String>,
    /// Serve the dashboard without the account key (only on a loopback
    /// --ui-listen address).
    #[arg(long, env = "NULLWORKER_UI_NO_AUTH")]
    pub ui_no_auth: bool,
}

/// The dashboard's address: `--ui-listen` (`off`: none), else `listen`
/// with its port + 1 (port 0 stays 0).
pub fn ui_address(
    listen: SocketAddr,
    ui_listen: Option<&str>,
) -> Result<Option<SocketAddr>, EngineError> {
    match ui_listen.map(str::trim) {
        Some("off") => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            EngineError::Config(format!(
                "--ui-listen {raw:?}: expected an address such as 127.0.0.1:8081, or off"
            ))
        }),
        None => {
            let port = match listen.port() {
                0 => 0,
                p => p.checked_add(1).ok_or_else(|| {
                    EngineError::Config(format!(
                        "--listen {listen}: no port above it for the dashboard; set --ui-listen"
                    ))
                })?,
            };
            Ok(Some(SocketAddr::new(listen.ip(), port)))
        }
    }
}

impl EngineArgs {
    /// The validated configuration.
    pub fn config(&self) -> Result<EngineConfig, EngineError> {
        let mut config =
            EngineConfig::new(self.state_dir.clone().unwrap_or_else(default_state_dir))?;
        config.listen = self.listen;
        config.account_key = self.account_key.clone();
        if let Some(cmd) = &self.worker_command {
            config.worker_command = Command::Shell(cmd.clone());
        }
        if !(self.stop_grace.is_finite() && self.stop_grace >= 0.0 && self.stop_grace <= 3600.0) {
            return Err(EngineError::Config(format!(
                "--stop-grace {}: expected seconds from 0 to 3600",
                self.stop_grace
            )));
        }
        config.stop_grace = Duration::from_secs_f64(self.stop_grace);
        if !(self.route_hold.is_finite() && self.route_hold >= 0.0 && self.route_hold <= 8.0) {
            return Err(EngineError::Config(format!(
                "--route-hold {}: expected seconds from 0 to 8",
                self.route_hold
            )));
        }
        config.route_hold = Duration::from_secs_f64(self.route_hold);
        config.stale_after = self.stale_after;
        config.scale_down_delay = self.scale_down_delay;
        config.strict = !self.allow_external_workers;
        if !(self.header_timeout.is_finite()
            && self.header_timeout > 0.0
            && self.header_timeout <= 3600.0)
        {
            return Err(EngineError::Config(format!(
                "--header-timeout {}: expected seconds above 0, at most 3600",
                self.header_timeout
            )));
        }
        config.serve.header_timeout = Duration::from_secs_f64(self.header_timeout);
        config.serve.max_connections = self.max_connections;
        config.workers_outlive_engine = !self.stop_workers_on_exit;
        if !(self.keep_ended_days.is_finite()
            && self.keep_ended_days > 0.0
            && self.keep_ended_days <= 36_500.0)
        {
            return Err(EngineError::Config(format!(
                "--keep-ended-days {}: expected days above 0, at most 36500",
                self.keep_ended_days
            )));
        }
        config.retention.keep_ended = self.keep_ended_workers;
        config.retention.max_age = Duration::from_secs_f64(self.keep_ended_days * 86_400.0);
        config.retention.log_max_bytes = self.log_max_bytes;
        config.retention.log_files = self.log_files;
        config.ui_listen = ui_address(self.listen, self.ui_listen.as_deref())?;
        config.ui_no_auth = self.ui_no_auth;
        config.validate()?;
        Ok(config)
    }
}

/// Runs the engine until a signal: on SIGTERM it exits leaving its workers
/// running for the next engine to re-adopt (unless
/// `--stop-workers-on-exit`); on SIGINT (Ctrl-C) it stops every worker.
pub async fn run_engine(args: EngineArgs) -> anyhow::Result<ExitCode> {
    let config = match args.config() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("nullworker engine: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let handle = Engine::start(config).await?;
    if handle.account_key_generated() {
        println!(
            "nullworker engine: generated account key {} (stored in the state directory; it will not be printed again)",
            handle.account_key()
        );
    }
    println!("nullworker engine: listening on {}", handle.url());
    if let Some(url) = handle.ui_url() {
        println!("nullworker engine: dashboard on {url}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let stop_workers = tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM received; stopping");
            args.stop_workers_on_exit
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received; stopping the engine and its workers");
            true
        }
        () = handle.stopped() => true,
    };
    if stop_workers {
        handle.shutdown().await;
    } else {
        handle.leave().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `nullworker endpoint` and its subcommands.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    /// Base URL of the running engine.
    #[arg(
        long,
        env = "NULLWORKER_ENGINE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub engine_url: String,
    /// Account key of the engine.
    #[arg(long, env = "VAST_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    #[command(subcommand)]
    command: EndpointCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EndpointCommand {
    /// Create an endpoint.
    Create {
        /// Endpoint name ([a-zA-Z0-9_-], at most 255 characters).
        name: String,
        /// Start from a named configuration: `seed` (the Null PyWorker's
        /// tested one: target_util 1, min_load 0, max_queue_time 1,
        /// target_queue_time 0.5, inactivity_timeout 10, cold_workers 0).
        #[arg(long)]
        preset: Option<String>,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// List endpoints.
    List,
    /// Show one endpoint as JSON.
    Show {
        /// Endpoint name.
        name: String,
    },
    /// Change parameters of an endpoint.
    Update {
        /// Endpoint name.
        name: String,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Delete an endpoint and stop its workers.
    Delete {
        /// Endpoint name.
        name: String,
    },
    /// Show an endpoint's workers: id, state, load, url, control port, age.
    Workers {
        /// Endpoint name.
        name: String,
        /// Also list workers that are gone.
        #[arg(long)]
        all: bool,
    },
    /// Print worker logs (every recent worker, or one).
    Logs {
        /// Endpoint name.
        name: String,
        /// Only this worker.
        #[arg(long)]
        worker: Option<i64>,
        /// The consumer's log instead of the worker's.
        #[arg(long)]
        consumer: bool,
        /// At most this many bytes from the end of each log (the engine
        /// answers at most 8 MiB).
        #[arg(long, default_value_t = 65536)]
        tail: u64,
    },
}

/// Endpoint parameters under their Vast names, plus the local workergroup.
#[derive(Debug, Default, clap::Args)]
struct ParamArgs {
    /// Hard cap on workers.
    #[arg(long)]
    max_workers: Option<i64>,
    /// Minimum number of workers kept (`min_workers`).
    #[arg(long, visible_alias = "min-workers")]
    cold_workers: Option<i64>,
    /// Floor on anticipated load (perf units).
    #[arg(long)]
    min_load: Option<f64>,
    /// Total capacity target (perf units).
    #[arg(long)]
    min_cold_load: Option<f64>,
    /// Target utilisation, in (0, 1].
    #[arg(long)]
    target_util: Option<f64>,
    /// Total capacity = active load × cold_mult.
    #[arg(long)]
    cold_mult: Option<f64>,
    /// Per-worker routing limit (seconds of implied queue).
    #[arg(long)]
    max_queue_time: Option<f64>,
    /// Scale-up trigger (seconds waited).
    #[arg(long)]
    target_queue_time: Option<f64>,
    /// Scale-to-zero gate in seconds: 0 none, negative never.
    #[arg(long, allow_hyphen_values = true)]
    inactivity_timeout: Option<f64>,
    /// active, suspended or stopped.
    #[arg(long)]
    endpoint_state: Option<String>,
    /// Worker command (shell command line). Default: `nullworker serve`.
    #[arg(long)]
    worker_command: Option<String>,
    /// Consumer command started beside each worker with the same environment
    /// plus NULL_CONSUMER_PORT, a free loopback port of its own.
    #[arg(long)]
    consumer_command: Option<String>,
    /// Path of the consumer's health endpoint on NULL_CONSUMER_PORT (e.g.
    /// /health): each worker then checks
    /// BACKEND_HEALTH_URL=http://127.0.0.1:<NULL_CONSUMER_PORT><PATH>, unless
    /// --worker-env sets BACKEND_HEALTH_URL.
    #[arg(long, value_name = "PATH")]
    consumer_health_path: Option<String>,
    /// Extra environment for worker and consumer, KEY=VALUE (repeatable).
    #[arg(long = "worker-env", value_name = "KEY=VALUE")]
    worker_env: Vec<String>,
}

impl ParamArgs {
    fn to_body(&self, body: &mut Map<String, Value>) -> anyhow::Result<()> {
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                body.insert(k.to_owned(), v);
            }
        };
        put("max_workers", self.max_workers.map(Value::from));
        put("cold_workers", self.cold_workers.map(Value::from));
        put("min_load", self.min_load.map(Value::from));
        put("min_cold_load", self.min_cold_load.map(Value::from));
        put("target_util", self.target_util.map(Value::from));
        put("cold_mult", self.cold_mult.map(Value::from));
        put("max_queue_time", self.max_queue_time.map(Value::from));
        put("target_queue_time", self.target_queue_time.map(Value::from));
        put(
            "inactivity_timeout",
            self.inactivity_timeout.map(Value::from),
        );
        put(
            "endpoint_state",
            self.endpoint_state.clone().map(Value::from),
        );
        put(
            "worker_command",
            self.worker_command.clone().map(Value::from),
        );
        put(
            "consumer_command",
            self.consumer_command.clone().map(Value::from),
        );
        put(
            "consumer_health_path",
            self.consumer_health_path.clone().map(Value::from),
        );
        if !self.worker_env.is_empty() {
            let mut env = BTreeMap::new();
            for item in &self.worker_env {
                let Some((k, v)) = item.split_once('=') else {
                    bail!("--worker-env {item:?}: expected KEY=VALUE");
                };
                env.insert(k.to_owned(), v.to_owned());
            }
            body.insert("worker_env".into(), json!(env));
        }
        Ok(())
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the engine at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the engine's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("msg")
                        .or(v.get("error_msg"))
                        .or(v.get("error"))
                        .cloned()
                })
                .and_then(|m| m.as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("engine answered HTTP {}: {msg}", status.as_u16());
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the engine's answer is not JSON: {text}"))
    }

    async fn text(&self, path: &str) -> anyhow::Result<Option<String>> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the engine at {}", self.base))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("engine answered HTTP {}", resp.status().as_u16());
        }
        Ok(Some(resp.text().await?))
    }

    async fn endpoints(&self) -> anyhow::Result<Vec<Value>> {
        let v = self
            .call(reqwest::Method::GET, "/api/v0/endptjobs/", None)
            .await?;
        Ok(v.get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    async fn find(&self, name: &str) -> anyhow::Result<Value> {
        self.endpoints()
            .await?
            .into_iter()
            .find(|e| e.get("endpoint_name").and_then(Value::as_str) == Some(name))
            .with_context(|| format!("no endpoint named {name:?}"))
    }
}

fn id_of(ep: &Value) -> i64 {
    ep.get("id").and_then(Value::as_i64).unwrap_or(0)
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Runs an endpoint subcommand against a running engine.
pub async fn endpoint(args: EndpointArgs) -> anyhow::Result<ExitCode> {
    let Some(key) = args.api_key.clone().filter(|k| !k.is_empty()) else {
        bail!("no account key: pass --api-key or set VAST_API_KEY (the engine prints it at its first start)");
    };
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: args.engine_url.trim_end_matches('/').to_owned(),
        key,
    };
    match args.command {
        EndpointCommand::Create {
            name,
            preset,
            params,
        } => {
            let mut body = Map::new();
            if let Some(p) = preset {
                let Some(values) = nullworker_engine::endpoint::preset(&p) else {
                    bail!(
                        "--preset {p:?}: expected one of {}",
                        nullworker_engine::endpoint::PRESETS.join(", ")
                    );
                };
                if let Value::Object(map) = serde_json::to_value(values)? {
                    body.extend(map);
                }
            }
            params.to_body(&mut body)?;
            body.insert("endpoint_name".into(), json!(name));
            let v = api
                .call(
                    reqwest::Method::POST,
                    "/api/v0/endptjobs/",
                    Some(Value::Object(body)),
                )
                .await?;
            let id = v.get("result").and_then(Value::as_i64).unwrap_or(0);
            let ep = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v0/endptjobs/{id}/"),
                    None,
                )
                .await?;
            let api_key = ep["result"]["api_key"].as_str().unwrap_or_default();
            println!("created endpoint {name} (id {id}); endpoint api_key: {api_key}");
        }
        EndpointCommand::List => {
            let eps = api.endpoints().await?;
            println!(
                "{:<6} {:<24} {:<10} {:>5} {:>5} {:>7} {:>8} {:>8}",
                "ID", "NAME", "STATE", "MAX", "COLD", "UTIL", "MAXQ", "INACT"
            );
            for e in eps {
                println!(
                    "{:<6} {:<24} {:<10} {:>5} {:>5} {:>7} {:>8} {:>8}",
                    id_of(&e),
                    e["endpoint_name"].as_str().unwrap_or(""),
                    e["endpoint_state"].as_str().unwrap_or(""),
                    e["max_workers"].to_string(),
                    e["cold_workers"].to_string(),
                    e["target_util"].to_string(),
                    e["max_queue_time"].to_string(),
                    e["inactivity_timeout"].to_string(),
                );
            }
        }
        EndpointCommand::Show { name } => {
            let ep = api.find(&name).await?;
            println!("{}", serde_json::to_string_pretty(&ep)?);
        }
        EndpointCommand::Update { name, params } => {
            let ep = api.find(&name).await?;
            let mut body = Map::new();
            params.to_body(&mut body)?;
            if body.is_empty() {
                bail!("nothing to update: give at least one parameter (see --help)");
            }
            api.call(
                reqwest::Method::PUT,
                &format!("/api/v0/endptjobs/{}/", id_of(&ep)),
                Some(Value::Object(body)),
            )
            .await?;
            println!("updated endpoint {name}");
        }
        EndpointCommand::Delete { name } => {
            let ep = api.find(&name).await?;
            let v = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v0/endptjobs/{}/", id_of(&ep)),
                    None,
                )
                .await?;
            println!(
                "deleted endpoint {name} ({} workers stopped)",
                v.get("deleted_workers")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            );
        }
        EndpointCommand::Workers { name, all } => {
            let ep = api.find(&name).await?;
            let v = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v0/endptjobs/{}/workers/", id_of(&ep)),
                    None,
                )
                .await?;
            let now = nullworker_engine::clock::unix_now();
            let live = v
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!(
                "{:<8} {:<14} {:>8} {:<28} {:>7} {:>8}  ERROR",
                "ID", "STATE", "LOAD", "URL", "CONTROL", "AGE"
            );
            for w in &live {
                let control = w["control_port"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |p| p.to_string());
                println!(
                    "{:<8} {:<14} {:>8} {:<28} {:>7} {:>7.0}s  {}",
                    id_of(w),
                    w["status"].as_str().unwrap_or("UNKNOWN"),
                    num(w, "cur_load"),
                    w["url"].as_str().unwrap_or(""),
                    control,
                    (now - num(w, "created_at")).max(0.0),
                    w["error"].as_str().unwrap_or(""),
                );
            }
            if all {
                let live_ids: Vec<i64> = live.iter().map(id_of).collect();
                for h in v
                    .get("history")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if live_ids.contains(&id_of(h)) {
                        continue;
                    }
                    println!(
                        "{:<8} {:<14} {:>8} {:<28} {:>7} {:>7.0}s  {}",
                        id_of(h),
                        "GONE",
                        "-",
                        h["url"].as_str().unwrap_or(""),
                        "-",
                        (now - num(h, "created_at")).max(0.0),
                        h["reason"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        EndpointCommand::Logs {
            name,
            worker,
            consumer,
            tail,
        } => {
            let ep = api.find(&name).await?;
            let id = id_of(&ep);
            let ids: Vec<i64> = match worker {
                Some(w) => vec![w],
                None => {
                    let v = api
                        .call(
                            reqwest::Method::GET,
                            &format!("/api/v0/endptjobs/{id}/workers/"),
                            None,
                        )
                        .await?;
                    let mut ids: Vec<i64> = v
                        .get("history")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(id_of)
                        .collect();
                    ids.sort_unstable();
                    ids
                }
            };
            let q = if consumer { "&consumer=1" } else { "" };
            let mut found = false;
            for wid in ids {
                let path = format!("/api/v0/endptjobs/{id}/workers/{wid}/logs/?tail={tail}{q}");
                if let Some(text) = api.text(&path).await? {
                    found = true;
                    println!("===== worker {wid} =====");
                    print!("{text}");
                    if !text.ends_with('\n') && !text.is_empty() {
                        println!();
                    }
                } else if worker.is_some() {
                    bail!(
                        "no {} log for worker {wid} of endpoint {name}",
                        if consumer { "consumer" } else { "worker" }
                    );
                }
            }
            if !found {
                println!("no logs for endpoint {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn config(args: &[&str]) -> EngineConfig {
        let dir = ["x", "--state-dir", "/tmp/nullworker-cli-test"];
        let argv = dir.iter().chain(args);
        Cli::try_parse_from(argv).unwrap().engine.config().unwrap()
    }

    #[test]
    fn strict_is_the_default_and_external_workers_are_opt_in() {
        assert!(config(&[]).strict);
        assert!(config(&["--strict"]).strict);
        assert!(!config(&["--allow-external-workers"]).strict);
        let both = Cli::try_parse_from(["x", "--strict", "--allow-external-workers"]);
        assert!(both.is_err());
    }

    #[test]
    fn the_dashboard_listens_one_port_above_unless_told() {
        assert_eq!(
            config(&[]).ui_listen,
            Some("127.0.0.1:8081".parse().unwrap())
        );
        let c = config(&["--listen", "127.0.0.1:0"]);
        assert_eq!(c.ui_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config(&["--ui-listen", "off"]).ui_listen, None);
        let c = config(&["--ui-listen", "127.0.0.1:0", "--ui-no-auth"]);
        assert!(c.ui_no_auth);
        let bad = Cli::try_parse_from(["x", "--ui-listen", "0.0.0.0:9", "--ui-no-auth"])
            .unwrap()
            .engine
            .config()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("--ui-no-auth"), "{bad}");
        let bad = Cli::try_parse_from(["x", "--ui-listen", "nowhere"])
            .unwrap()
            .engine
            .config()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("\"nowhere\""), "{bad}");
    }
}
