//! The consumer loop against the real SQLite backend and a small HTTP
//! server on an ephemeral loopback port that answers the worker's control
//! API (`GET /session[?wait=S]`, `POST /release`) as `nullworker serve`
//! documents it, recording every call. The job command is `sh -c '...'`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use nullworker_queue::consume::{
    self, ConsumeConfig, ConsumeError, ConsumeSummary, Health, StopSignals,
};
use nullworker_queue::{open, OpenMode, Queue, QueueStats, QueueUrl};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The worker's control API, as far as the consumer uses it.
struct ControlState {
    /// The session held now, if any.
    held: watch::Sender<Option<String>>,
    /// Reserve a fresh session whenever one is asked for and none is held
    /// (a dispatcher that always has work).
    auto_reserve: AtomicBool,
    sessions: AtomicU64,
    releases: AtomicU64,
    /// `GET /session` long polls in progress.
    waiting: AtomicU64,
}

struct Control {
    state: Arc<ControlState>,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Control {
    async fn start(auto_reserve: bool) -> Self {
        let state = Arc::new(ControlState {
            held: watch::channel(None).0,
            auto_reserve: AtomicBool::new(auto_reserve),
            sessions: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/session", get(session))
            .route("/release", post(release))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, url, server }
    }

    fn reserve(&self) {
        reserve(&self.state);
    }

    fn releases(&self) -> u64 {
        self.state.releases.load(Ordering::SeqCst)
    }
}

fn reserve(state: &ControlState) {
    let n = state.sessions.fetch_add(1, Ordering::SeqCst) + 1;
    state.held.send_replace(Some(format!("session-{n}")));
}

fn status(held: &Option<String>) -> Value {
    match held {
        Some(id) => {
            json!({"held": true, "session_id": id, "since": 1.0e9, "expiration": 2.0e9, "open_sessions": 1})
        }
        None => json!({"held": false, "open_sessions": 0}),
    }
}

async fn session(
    State(state): State<Arc<ControlState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    if state.held.borrow().is_none() && state.auto_reserve.load(Ordering::SeqCst) {
        reserve(&state);
    }
    let wait: f64 = query.get("wait").map_or(0.0, |w| w.parse().unwrap());
    let mut rx = state.held.subscribe();
    if rx.borrow_and_update().is_none() && wait > 0.0 {
        state.waiting.fetch_add(1, Ordering::SeqCst);
        let _ =
            tokio::time::timeout(Duration::from_secs_f64(wait), rx.wait_for(Option::is_some)).await;
        state.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    let held = rx.borrow().clone();
    Json(status(&held))
}

async fn release(State(state): State<Arc<ControlState>>) -> Json<Value> {
    state.releases.fetch_add(1, Ordering::SeqCst);
    match state.held.send_replace(None) {
        Some(id) => Json(json!({"released": true, "session_ids": [id]})),
        None => Json(json!({"released": false, "reason": "no active session"})),
    }
}

/// A SQLite queue in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    url: QueueUrl,
    queue: Box<dyn Queue>,
}

async fn fixture(options: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let raw = format!(
        "sqlite:{}?queue=jobs{options}",
        dir.path().join("q.db").display()
    );
    let url: QueueUrl = raw.parse().unwrap();
    let queue = open(&url, OpenMode::Create).await.unwrap();
    Fixture { dir, url, queue }
}

impl Fixture {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, control: &Control, script: &str) -> ConsumeConfig {
        let mut config = ConsumeConfig::new(
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            control.url.clone(),
            &self.url,
        );
        config.claim_timeout = Duration::from_secs(5);
        config
    }

    async fn stats(&self) -> QueueStats {
        self.queue.stats().await.unwrap()
    }

    /// Runs the loop on its own task, with a second handle on the queue.
    async fn spawn(
        &self,
        config: ConsumeConfig,
        stop: StopSignals,
    ) -> tokio::task::JoinHandle<Result<ConsumeSummary, ConsumeError>> {
        let queue = open(&self.url, OpenMode::Existing).await.unwrap();
        tokio::spawn(async move {
            let health = Health::default();
            consume::run(&*queue, &config, &health, &stop).await
        })
    }
}

/// Polls `cond` every 20 ms until it holds, failing after 20 s.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn payload_on_stdin_env_set_exit_0_acks_and_once_returns() {
    let f = fixture("").await;
    let control = Control::start(true).await;
    let first = f.queue.push(b"first payload\nline 2").await.unwrap();
    f.queue.push(b"second").await.unwrap();
    let script = format!(
        "cat > {stdin}; env | grep -E '^NULLWORKER_(JOB_ID|JOB_ATTEMPT|QUEUE|SESSION_ID)=' | sort > {env}",
        stdin = f.out("stdin").display(),
        env = f.out("env").display()
    );
    let mut config = f.config(&control, &script);
    config.once = true;
    let summary = f
        .spawn(config, StopSignals::default())
        .await
        .await
        .unwrap()
        .unwrap();

    assert_eq!(summary.acked, 1, "{summary:?}");
    assert_eq!(read(&f.out("stdin")), "first payload\nline 2");
    let env = read(&f.out("env"));
    let want = format!(
        "NULLWORKER_JOB_ATTEMPT=1\nNULLWORKER_JOB_ID={first}\nNULLWORKER_QUEUE={}\nNULLWORKER_SESSION_ID=session-1\n",
        f.url
    );
    assert_eq!(env, want);
    // One job done, the other still waiting: --once took exactly one.
    assert_eq!(
        f.stats().await,
        QueueStats {
            backlog: 1,
            in_flight: 0,
            dead: 0
        }
    );
    assert_eq!(
        control.releases(),
        1,
        "the session is released after the job"
    );
}

#[tokio::test]
async fn failures_retry_then_dead_letter() {
    let f = fixture("&max_attempts=2&retry_delay=0").await;
    let control = Control::start(true).await;
    f.queue.push(b"doomed").await.unwrap();
    let script = format!(
        "echo \"$NULLWORKER_JOB_ATTEMPT\" >> {}; exit 1",
        f.out("attempts").display()
    );
    let stop = StopSignals::default();
    let task = f.spawn(f.config(&control, &script), stop.clone()).await;
    wait_until("the job to be dead-lettered", || async {
        f.stats().await.dead == 1
    })
    .await;
    stop.drain.cancel();
    let summary = task.await.unwrap().unwrap();

    assert_eq!(read(&f.out("attempts")), "1\n2\n");
    assert_eq!(
        (summary.retried, summary.dead_lettered, summary.acked),
        (1, 1, 0),
        "{summary:?}"
    );
    assert_eq!(
        f.stats().await,
        QueueStats {
            backlog: 0,
            in_flight: 0,
            dead: 1
        }
    );
    assert!(control.releases() >= 2, "one release per job run");
}

#[tokio::test]
async fn no_session_no_claim() {
    let f = fixture("").await;
    let control = Control::start(false).await;
    f.queue.push(b"job").await.unwrap();
    let ran = f.out("ran");
    let mut config = f.config(&control, &format!("touch {}", ran.display()));
    config.once = true;
    let task = f.spawn(config, StopSignals::default()).await;

    // The consumer is parked in the long poll: nobody reserved this worker.
    let state = Arc::clone(&control.state);
    wait_until("the consumer to long-poll GET /session", || {
        let state = Arc::clone(&state);
        async move { state.waiting.load(Ordering::SeqCst) == 1 }
    })
    .await;
    assert_eq!(
        f.stats().await,
        QueueStats {
            backlog: 1,
            in_flight: 0,
            dead: 0
        }
    );
    assert!(!ran.exists());

    // Once reserved, the same consumer takes the job.
    control.reserve();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.acked, 1);
    assert!(ran.exists());
    assert_eq!(f.stats().await, QueueStats::default());
}

#[tokio::test]
async fn an_idle_session_is_released() {
    let f = fixture("").await;
    let control = Control::start(false).await;
    control.reserve();
    let mut config = f.config(&control, "exit 0");
    config.claim_timeout = Duration::from_millis(300);
    let stop = StopSignals::default();
    let task = f.spawn(config, stop.clone()).await;
    wait_until("the idle session to be released", || async {
        control.releases() == 1
    })
    .await;
    assert!(control.state.held.borrow().is_none());
    stop.drain.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.idle_releases, 1, "{summary:?}");
    assert_eq!(summary.acked, 0);
}

#[tokio::test]
async fn a_dead_consumers_job_is_recovered_by_a_lone_consumer() {
    let f = fixture("&visibility_timeout=1").await;
    let control = Control::start(true).await;
    let id = f.queue.push(b"orphan").await.unwrap();
    // A consumer that claims and then dies without a heartbeat.
    let claimed = f
        .queue
        .claim("dead-consumer", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, id);
    let mut config = f.config(&control, "cat >/dev/null");
    config.once = true;
    let summary = f
        .spawn(config, StopSignals::default())
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.acked, 1);
    assert_eq!(f.stats().await, QueueStats::default());
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test]
async fn shutdown_past_the_grace_hands_the_job_back_and_kills_its_group() {
    let f = fixture("").await;
    let control = Control::start(true).await;
    let id = f.queue.push(b"long").await.unwrap();
    // The shell starts a grandchild and waits; both must die.
    let pids = f.out("pids");
    let script = format!(
        "sleep 600 & echo $! > {}.tmp; mv {0}.tmp {0}; wait",
        pids.display()
    );
    let mut config = f.config(&control, &script);
    config.grace = Duration::from_millis(300);
    let stop = StopSignals::default();
    let task = f.spawn(config, stop.clone()).await;
    wait_until("the job to start", || async { pids.exists() }).await;
    let grandchild: i32 = read(&pids).trim().parse().unwrap();
    assert!(alive(grandchild));
    assert_eq!(f.stats().await.in_flight, 1);

    stop.drain.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.handed_back, 1, "{summary:?}");
    assert_eq!(summary.acked + summary.retried + summary.dead_lettered, 0);
    // Handed back, not failed: waiting again, same attempt number next time.
    assert_eq!(
        f.stats().await,
        QueueStats {
            backlog: 1,
            in_flight: 0,
            dead: 0
        }
    );
    let again = f
        .queue
        .claim("next", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id.as_str(), again.attempt), (id.as_str(), 1));
    wait_until("the grandchild to be gone", || async { !alive(grandchild) }).await;
    assert_eq!(
        control.releases(),
        1,
        "the session is released on the way out"
    );
}

#[tokio::test]
async fn shutdown_within_the_grace_lets_the_job_finish() {
    let f = fixture("").await;
    let control = Control::start(true).await;
    f.queue.push(b"short").await.unwrap();
    let started = f.out("started");
    let go = f.out("go");
    // The job waits for the test to let it finish, after the stop request.
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.02; done; exit 0",
        started.display(),
        go.display()
    );
    let mut config = f.config(&control, &script);
    config.grace = Duration::from_secs(60);
    let stop = StopSignals::default();
    let task = f.spawn(config, stop.clone()).await;
    wait_until("the job to start", || async { started.exists() }).await;
    stop.drain.cancel();
    std::fs::write(&go, b"").unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((summary.acked, summary.handed_back), (1, 0), "{summary:?}");
    assert_eq!(f.stats().await, QueueStats::default());
    assert_eq!(control.releases(), 1);
}

#[tokio::test]
async fn a_command_that_cannot_start_hands_the_job_back() {
    let f = fixture("").await;
    let control = Control::start(true).await;
    f.queue.push(b"job").await.unwrap();
    let mut config = f.config(&control, "");
    config.command = vec![f.out("no-such-program").display().to_string()];
    let err = f
        .spawn(config, StopSignals::default())
        .await
        .await
        .unwrap()
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("no-such-program"), "{message}");
    assert_eq!(
        f.stats().await,
        QueueStats {
            backlog: 1,
            in_flight: 0,
            dead: 0
        }
    );
    assert_eq!(control.releases(), 1);
}

#[tokio::test]
async fn heartbeats_keep_a_long_job_invisible() {
    let f = fixture("&visibility_timeout=1").await;
    let control = Control::start(true).await;
    f.queue.push(b"slow").await.unwrap();
    let started = f.out("started");
    let go = f.out("go");
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.02; done",
        started.display(),
        go.display()
    );
    let stop = StopSignals::default();
    let mut config = f.config(&control, &script);
    config.once = true;
    let task = f.spawn(config, stop.clone()).await;
    wait_until("the job to start", || async { started.exists() }).await;
    // Another consumer waits 2.5 visibility timeouts: the job stays ours.
    let thief = f
        .queue
        .claim("thief", Duration::from_millis(2500))
        .await
        .unwrap();
    assert_eq!(thief, None);
    assert_eq!(f.queue.requeue_expired().await.unwrap(), 0);
    std::fs::write(&go, b"").unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((summary.acked, summary.lost), (1, 0), "{summary:?}");
    assert_eq!(f.stats().await, QueueStats::default());
}
