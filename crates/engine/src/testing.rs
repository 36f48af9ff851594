//! In-process test harness (test builds only): an engine on a real
//! ephemeral loopback listener whose launcher starts no process, called
//! through `Router::oneshot`, meant for tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::config::EngineConfig;
use crate::context::Core;
use crate::endpoint::WorkerTemplate;
use crate::engine::{Engine, EngineHandle};
use crate::supervisor::{Launcher, ProcHandle, ProcKind, SpawnError, Spawned};

/// Launches nothing: records each launch (id, mtoken), or fails it with
/// the OS error set by [`FakeLauncher::fail_with`].
#[derive(Debug, Default)]
pub struct FakeLauncher {
    /// Launches so far: worker id and `MASTER_TOKEN`.
    pub launched: Mutex<Vec<(i64, String)>>,
    /// Failed launch attempts.
    pub failed: Mutex<usize>,
    fail: Mutex<Option<i32>>,
}

impl FakeLauncher {
    /// Makes later launches fail with OS error `errno` (`None`: succeed),
    /// as opening the worker's log would.
    pub fn fail_with(&self, errno: Option<i32>) {
        *self.fail.lock().unwrap() = errno;
    }

    /// Launch attempts that failed.
    pub fn failures(&self) -> usize {
        *self.failed.lock().unwrap()
    }

    /// The URL a launched worker gets.
    pub fn url(worker_id: i64) -> String {
        format!("http://127.0.0.1:{}", 40_000 + worker_id)
    }

    /// Launches so far.
    pub fn launches(&self) -> Vec<(i64, String)> {
        self.launched.lock().unwrap().clone()
    }
}

impl Launcher for FakeLauncher {
    fn spawn(
        &self,
        worker_id: i64,
        mtoken: &str,
        _template: &WorkerTemplate,
    ) -> Result<Spawned, SpawnError> {
        if let Some(errno) = *self.fail.lock().unwrap() {
            *self.failed.lock().unwrap() += 1;
            return Err(SpawnError::Io {
                what: format!("/state/workers/{worker_id}/worker.log"),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        self.launched
            .lock()
            .unwrap()
            .push((worker_id, mtoken.to_owned()));
        let (worker, exited) = ProcHandle::unwatched(0);
        std::mem::forget(exited);
        Ok(Spawned {
            generation: worker_id as u64,
            url: Self::url(worker_id),
            worker_port: 0,
            control_port: 0,
            consumer_port: None,
            worker,
            consumer: None,
        })
    }

    fn stop<'a>(
        &'a self,
        _worker_id: i64,
        _spawned: &'a Spawned,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn log_path(&self, worker_id: i64, kind: ProcKind) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/nonexistent/{worker_id}/{}", kind.log_name()))
    }
}

/// An engine on `dir/state` with the fake launcher; `tweak` adjusts the
/// configuration first.
pub async fn engine(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut EngineConfig),
) -> (EngineHandle, Arc<FakeLauncher>) {
    let mut config = EngineConfig::new(dir.join("state")).unwrap();
    config.route_hold = Duration::from_secs(1);
    tweak(&mut config);
    let fake = Arc::new(FakeLauncher::default());
    let f = fake.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = Engine::start_with(config, listener, Box::new(move |_, _, _| f))
        .await
        .unwrap();
    (handle, fake)
}

/// Calls the engine with the account key and a raw body; returns the
/// status and the body as text.
pub async fn call_raw(
    core: &Arc<Core>,
    method: &str,
    path: &str,
    body: String,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", core.account_key))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = crate::api::router(core.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// [`call_raw`] with a JSON body and answer (`Null` if the answer is not JSON).
pub async fn call(core: &Arc<Core>, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = call_raw(core, method, path, body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `probe` every 10 ms of (paused) engine time, for at most 10 s.
pub async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(v) = probe() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 10 s of engine time");
}

/// Polls `probe` in real time (1 ms apart, at most 10 s) without moving
/// the paused clock: for what the engine's own threads (spawner, signer,
/// store) do, which a paused clock's auto-advance would otherwise outrun.
pub async fn wait_real(what: &str, mut probe: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if probe() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
    }
    panic!("{what}: not reached in 10 s");
}

/// Every number in `value` is finite and no field is `null` (the wire
/// never carries a non-finite number); returns the paths that are not.
pub fn non_finite(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Null => out.push(path.to_owned()),
        Value::Number(n) if !n.as_f64().is_some_and(f64::is_finite) => out.push(path.to_owned()),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                non_finite(v, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                non_finite(v, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Creates endpoint `name` with the seed's parameters (and no cold
/// workers) through the web API; returns its id.
pub async fn seed_endpoint(core: &Arc<Core>, name: &str) -> i64 {
    let (status, body) = call(
        core,
        "POST",
        "/api/v0/endptjobs/",
        serde_json::json!({"endpoint_name": name, "cold_workers": 0, "target_util": 1.0,
               "max_queue_time": 1.0, "target_queue_time": 0.5, "inactivity_timeout": 10.0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["result"].as_i64().expect("the new endpoint's id")
}
