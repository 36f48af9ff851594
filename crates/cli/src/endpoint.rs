//! Command-line edge of `nullworker endpoint ...`: manage the endpoints of a
//! running engine over its web API with the account key. Parses and prints.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

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
