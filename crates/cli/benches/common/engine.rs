//! A `nullworker engine` spawned for a benchmark: our binary on a free
//! loopback port with a fresh state directory and a fixed account key, and
//! the web API calls the benchmarks make (create and delete endpoints, list
//! an endpoint's workers).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::process::{self, ChildGuard};

/// Account key of every benchmark engine.
pub const ACCOUNT_KEY: &str = "nullworker-bench-account-key";

/// Our engine, spawned on a free loopback port with a fresh state directory.
pub struct SpawnedEngine {
    pub guard: ChildGuard,
    pub url: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl SpawnedEngine {
    /// Spawns `nullworker engine` with `extra` flags after the usual ones
    /// and waits until its web API answers.
    pub async fn start(extra: &[&str]) -> anyhow::Result<SpawnedEngine> {
        let dir = tempfile::Builder::new()
            .prefix("nullworker-bench-engine-")
            .tempdir()?;
        let log = dir.path().join("engine.log");
        let port = process::free_port()?;
        let mut cmd = process::command(env!("CARGO_BIN_EXE_nullworker"), &log)?;
        cmd.arg("engine")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--account-key")
            .arg(ACCOUNT_KEY)
            // SIGTERM at the end stops its workers (and they die with it).
            .arg("--stop-workers-on-exit")
            .args(if extra.contains(&"--ui-listen") {
                &[][..]
            } else {
                &["--ui-listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .current_dir(dir.path());
        let guard = ChildGuard::spawn(cmd, log)?;
        let mut engine = SpawnedEngine {
            guard,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            dir,
        };
        engine.wait_serving().await?;
        Ok(engine)
    }

    /// The engine's state directory (worker directories are under `workers/`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The engine's temporary working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The engine's recent output, for error messages.
    pub fn context(&self) -> String {
        format!("the engine's last output:\n{}", self.guard.log_tail())
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = self
                .http
                .get(format!("{}/api/v0/endptjobs/", self.url))
                .bearer_auth(ACCOUNT_KEY)
                .send()
                .await;
            if matches!(&probe, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self.guard.exited() {
                bail!("the engine exited before serving ({status})");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the engine did not serve its web API within 60 s; {}",
                    self.context()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates an endpoint (`body` as the web API takes it); its id.
    pub async fn create_endpoint(&self, body: Value) -> anyhow::Result<i64> {
        let reply = self
            .http
            .post(format!("{}/api/v0/endptjobs/", self.url))
            .bearer_auth(ACCOUNT_KEY)
            .json(&body)
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        if !status.is_success() {
            bail!("creating endpoint {body}: HTTP {status}: {text}");
        }
        let value: Value = serde_json::from_str(&text)?;
        value
            .get("result")
            .and_then(Value::as_i64)
            .with_context(|| format!("create endpoint reply without an id: {text}"))
    }

    pub async fn delete_endpoint(&self, id: i64) -> anyhow::Result<()> {
        let reply = self
            .http
            .delete(format!("{}/api/v0/endptjobs/{id}/", self.url))
            .bearer_auth(ACCOUNT_KEY)
            .send()
            .await?;
        if !reply.status().is_success() {
            bail!("deleting endpoint {id}: HTTP {}", reply.status());
        }
        Ok(())
    }

    /// The endpoint's live workers as the web API lists them (`status`,
    /// `control_port`, `pid`, `cur_load`, …).
    pub async fn workers(&self, id: i64) -> anyhow::Result<Vec<Value>> {
        let reply = self
            .http
            .get(format!("{}/api/v0/endptjobs/{id}/workers/", self.url))
            .bearer_auth(ACCOUNT_KEY)
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        if !status.is_success() {
            bail!("listing the workers of endpoint {id}: HTTP {status}: {text}");
        }
        let value: Value = serde_json::from_str(&text)?;
        match value.get("results") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => bail!("worker list of endpoint {id} without `results`: {text}"),
        }
    }
}

impl Drop for SpawnedEngine {
    fn drop(&mut self) {
        // The engine stops the workers it launched when it receives SIGTERM.
        self.guard.terminate(Duration::from_secs(15));
    }
}
