//! Queue-driven runs for end-to-end tests: `nullworker queue` as a
//! command, plain producers (`redis-cli`, a raw NATS `PUB`), an endpoint
//! whose consumer command runs `nullworker consume` beside each worker, a
//! real `nullworker dispatch` whose `--json` events are collected, the
//! record each job writes of its own runs, a sampler of the engine's worker
//! list, and the checks of the counting rule on the dispatcher's decisions.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::engine::{EngineGuard, TestEndpoint};
use super::process::{binary, nullworker, ChildGuard};

// ---------------------------------------------------------------------------
// `nullworker queue` and plain producers
// ---------------------------------------------------------------------------

/// `nullworker queue ARGS…` as a command.
pub fn queue_cmd(args: &[&str]) -> Command {
    let mut cmd = nullworker();
    cmd.arg("queue").args(args);
    cmd
}

/// Runs `nullworker queue ARGS…`, requires exit 0 and returns stdout.
pub fn queue_ok(args: &[&str]) -> String {
    let out = queue_cmd(args).output().expect("run nullworker queue");
    assert!(
        out.status.success(),
        "nullworker queue {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nullworker queue stats --json` as JSON.
pub fn stats_json(url: &str) -> Value {
    let text = queue_ok(&["stats", "--queue", url, "--json"]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// `(backlog, in_flight, dead)` from `nullworker queue stats --json`.
pub fn counts(url: &str) -> (u64, u64, u64) {
    let v = stats_json(url);
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (n("backlog"), n("in_flight"), n("dead"))
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS…` (the producer a user would
/// use), requires exit 0 and a reply that is not an error; returns stdout.
/// A missing `redis-cli` fails with the install hint.
pub fn redis_cli(server: SocketAddr, args: &[&str]) -> String {
    let cli = nullworker_queue::testing::find_binary("redis-cli", "redis-tools")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.starts_with("ERR") && !text.contains("(error)"),
        "redis-cli {args:?}: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Publishes `payloads` on `subject` with the plain NATS protocol (`PUB`,
/// no JetStream API, no headers), then waits for the server's `PONG` so
/// every message has been processed.
pub fn nats_publish(server: SocketAddr, subject: &str, payloads: &[&str]) {
    let mut conn = TcpStream::connect(server).expect("connect to nats-server");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut out = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    for payload in payloads {
        out.push_str(&format!("PUB {subject} {}\r\n{payload}\r\n", payload.len()));
    }
    out.push_str("PING\r\n");
    conn.write_all(out.as_bytes())
        .expect("write to nats-server");
    let mut reader = BufReader::new(conn);
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read from nats-server");
        assert!(n > 0, "nats-server closed the connection: {seen:?}");
        assert!(
            !line.starts_with("-ERR"),
            "nats-server refused the publish: {line}"
        );
        if line.starts_with("PONG") {
            return;
        }
        seen.push(line);
    }
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// Jobs and their record
// ---------------------------------------------------------------------------

/// One line a job wrote when it started or finished.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLine {
    /// `start`, `done` (written just before the command exits 0) or `fail`
    /// (just before it exits non-zero).
    pub kind: String,
    /// The payload (one word).
    pub payload: String,
    /// `NULLWORKER_JOB_ID`.
    pub id: String,
    /// `NULLWORKER_JOB_ATTEMPT`.
    pub attempt: u32,
    /// `CONTAINER_ID`: the worker the job ran beside.
    pub worker: i64,
    /// Pid of the job's shell (its process group leader).
    pub pid: i32,
    /// Wall-clock time, seconds since the epoch.
    pub at: f64,
}

/// The file every job of a run appends its `start` and `done` lines to.
pub struct JobRecord {
    /// Its path.
    pub path: PathBuf,
}

impl JobRecord {
    /// A record at `path` (created by the first job).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The job command: `sh -c` script that reads its payload (one word) from
    /// stdin, records `start`, runs `body` in a subshell (it may use `$p` and
    /// the `NULLWORKER_*` variables, and may `exit` non-zero to fail the
    /// job), and records `done` (exit 0) or `fail` before exiting with the
    /// body's status.
    pub fn script(&self, body: &str) -> String {
        let rec = shell_quote(&self.path.display().to_string());
        format!(
            "read -r p; \
             rec() {{ echo \"$1 $p $NULLWORKER_JOB_ID $NULLWORKER_JOB_ATTEMPT $CONTAINER_ID $$ $(date +%s.%N)\" >> {rec}; }}; \
             rec start; ( {body}\n ); rc=$?; \
             if [ $rc -eq 0 ]; then rec done; else rec fail; fi; exit $rc"
        )
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<JobLine> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 7, "malformed job record line {line:?}");
                JobLine {
                    kind: f[0].to_owned(),
                    payload: f[1].to_owned(),
                    id: f[2].to_owned(),
                    attempt: f[3]
                        .parse()
                        .unwrap_or_else(|_| panic!("attempt in {line:?}")),
                    worker: f[4]
                        .parse()
                        .unwrap_or_else(|_| panic!("worker in {line:?}")),
                    pid: f[5].parse().unwrap_or_else(|_| panic!("pid in {line:?}")),
                    at: f[6].parse().unwrap_or_else(|_| panic!("time in {line:?}")),
                }
            })
            .collect()
    }

    /// Lines of `kind` for `payload`.
    pub fn of(&self, kind: &str, payload: &str) -> Vec<JobLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.kind == kind && l.payload == payload)
            .collect()
    }

    /// `done` lines per payload.
    pub fn done_counts(&self) -> BTreeMap<String, usize> {
        let mut map = BTreeMap::new();
        for line in self.lines().into_iter().filter(|l| l.kind == "done") {
            *map.entry(line.payload).or_insert(0) += 1;
        }
        map
    }

    /// Panics unless every payload in `payloads` started once and finished
    /// once, with one distinct job id each, and nothing else ran.
    pub fn assert_each_ran_once(&self, payloads: &[String]) {
        let lines = self.lines();
        let mut starts: HashMap<&str, usize> = HashMap::new();
        let mut dones: HashMap<&str, usize> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for l in &lines {
            match l.kind.as_str() {
                "start" => *starts.entry(&l.payload).or_default() += 1,
                "done" => {
                    *dones.entry(&l.payload).or_default() += 1;
                    ids.insert(l.id.clone());
                }
                "fail" => {}
                other => panic!("unknown record kind {other:?}"),
            }
        }
        for p in payloads {
            assert_eq!(
                starts.get(p.as_str()),
                Some(&1),
                "{p} started once: {lines:#?}"
            );
            assert_eq!(
                dones.get(p.as_str()),
                Some(&1),
                "{p} finished once: {lines:#?}"
            );
        }
        assert_eq!(
            starts.len(),
            payloads.len(),
            "only the pushed jobs ran: {lines:#?}"
        );
        assert_eq!(ids.len(), payloads.len(), "one job id per job: {lines:#?}");
    }
}

// ---------------------------------------------------------------------------
// The endpoint and its consumers
// ---------------------------------------------------------------------------

/// The consumer command of an endpoint: `nullworker consume` on `queue_url`
/// running `script` with `sh -c`, releasing an idle session after
/// `claim_timeout` seconds. `exec` makes the engine's `consumer_pid` the
/// consumer's own.
pub fn consumer_command(queue_url: &str, claim_timeout: f64, script: &str) -> String {
    format!(
        "exec {} consume --queue {} --claim-timeout {claim_timeout} -- /bin/sh -c {}",
        shell_quote(binary()),
        shell_quote(queue_url),
        shell_quote(script)
    )
}

/// An endpoint with the seed configuration plus `extra`, whose workers each
/// run `consumer` beside them with its health check on the worker
/// (`consumer_health_path` `/health`, checked every second so a dead
/// consumer is noticed quickly). `inactivity_timeout` is 2 s unless `extra`
/// sets it, so tests return to zero workers quickly.
pub fn consumer_endpoint(
    engine: &EngineGuard,
    name: &str,
    consumer: &str,
    extra: Value,
) -> TestEndpoint {
    let mut body = json!({
        "inactivity_timeout": 2,
        "consumer_command": consumer,
        "consumer_health_path": "/health",
        "worker_env": {"NULLWORKER_HEALTH_INTERVAL": "1", "RUST_LOG": "info"},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    engine.create_seed_endpoint(name, body)
}

// ---------------------------------------------------------------------------
// `nullworker dispatch`
// ---------------------------------------------------------------------------

/// A running `nullworker dispatch --json`: its events are collected as they
/// come; killed (SIGKILL) when dropped. Its log goes to a file.
pub struct Dispatch {
    /// The process.
    pub child: ChildGuard,
    events: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
    /// Its stderr (the log).
    pub log: PathBuf,
    /// Wall-clock time just before it was spawned (seconds since the epoch).
    pub spawned_at: f64,
}

/// Field added to each collected event: the wall-clock time it was read.
pub const RECEIVED: &str = "_received";

impl Dispatch {
    /// Starts `nullworker dispatch` for `ep` on `queue_url` against `engine`,
    /// with `--json`, metrics on an ephemeral port and `extra` flags; waits
    /// for its `started` event. The log goes to `log`.
    pub fn start(
        engine: &EngineGuard,
        ep: &TestEndpoint,
        queue_url: &str,
        extra: &[&str],
        log: &Path,
    ) -> Self {
        let mut cmd = nullworker();
        cmd.args(["dispatch", "--endpoint", &ep.name, "--queue", queue_url])
            .args(["--json", "--metrics-listen", "127.0.0.1:0"])
            .args(["--api-key", &engine.account_key])
            .args(["--autoscaler-url", &engine.url])
            .args(["--webserver-url", &engine.url])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(log).expect("dispatch log file"));
        let spawned_at = now_epoch();
        let mut child = ChildGuard::spawn(cmd);
        let rx = child.stdout_lines();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let reader = std::thread::spawn(move || {
            for line in rx {
                let mut value = serde_json::from_str(&line).unwrap_or_else(
                    |e| json!({"event": "not_json", "line": line, "error": e.to_string()}),
                );
                if let Some(map) = value.as_object_mut() {
                    map.insert(RECEIVED.into(), json!(now_epoch()));
                }
                sink.lock().expect("events").push(value);
            }
        });
        let dispatch = Self {
            child,
            events,
            reader: Some(reader),
            log: log.to_owned(),
            spawned_at,
        };
        dispatch.wait_event("the dispatcher to start", Duration::from_secs(30), |e| {
            e["event"] == "started"
        });
        dispatch
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until an event satisfies `pred`; returns it.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(&pred) {
                return e;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; events: {:#?}\nlog:\n{}",
                    self.events(),
                    self.log_text()
                );
            }
            if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
                panic!(
                    "dispatch exited while waiting for {what}; events: {:#?}\nlog:\n{}",
                    self.events(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `started` event's field `key`.
    pub fn started(&self, key: &str) -> Value {
        self.events()
            .into_iter()
            .find(|e| e["event"] == "started")
            .map(|e| e[key].clone())
            .unwrap_or(Value::Null)
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        let url = self.started("metrics_url");
        let url = url.as_str().expect("metrics_url");
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
            .get(url)
            .send()
            .and_then(|r| r.text())
            .expect("GET /metrics")
    }

    /// SIGTERM, then waits (up to `timeout`) for the exit and the end of its
    /// event stream; returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.child.signal(libc::SIGTERM);
        let status = self.child.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "dispatch did not exit within {timeout:?} of SIGTERM; events: {:#?}\nlog:\n{}",
                self.events(),
                self.log_text()
            )
        });
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// SIGKILL and reap; the events read so far stay.
    pub fn kill(&mut self) {
        self.child.signal(libc::SIGKILL);
        let _ = self.child.wait_timeout(Duration::from_secs(10));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Events named `name`.
pub fn events_named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// A Prometheus sample's value (summed over the lines that start with `name`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// The engine's workers over time
// ---------------------------------------------------------------------------

/// One reading of the engine's worker list.
#[derive(Debug, Clone)]
pub struct WorkerSample {
    /// Wall-clock time of the reading, seconds since the epoch.
    pub at: f64,
    /// The workers (`/api/v0/endptjobs/ID/workers/` results).
    pub workers: Vec<Value>,
}

impl WorkerSample {
    /// Workers that run: listed, and neither stopped (kept as cold
    /// capacity) nor being stopped or destroyed.
    pub fn live(&self) -> Vec<&Value> {
        self.workers
            .iter()
            .filter(|w| {
                !matches!(
                    w["status"].as_str(),
                    Some("DESTROYING" | "STOPPING" | "STOPPED")
                )
            })
            .collect()
    }

    /// The live worker with id `id`.
    pub fn worker(&self, id: i64) -> Option<&Value> {
        self.live()
            .into_iter()
            .find(|w| w["id"].as_i64() == Some(id))
    }
}

/// Reads the engine's worker list of one endpoint every 50 ms on a thread
/// of its own, until dropped.
pub struct WorkerSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<WorkerSample>>>,
    thread: Option<JoinHandle<()>>,
}

/// Seconds since the epoch.
pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

impl WorkerSampler {
    /// Starts sampling `ep` on `engine`.
    pub fn start(engine: &EngineGuard, ep: &TestEndpoint) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{}/api/v0/endptjobs/{}/workers/", engine.url, ep.id);
        let key = engine.account_key.clone();
        let thread = {
            let stop = Arc::clone(&stop);
            let samples = Arc::clone(&samples);
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("client");
                while !stop.load(Ordering::SeqCst) {
                    let reply = http
                        .get(&url)
                        .bearer_auth(&key)
                        .send()
                        .and_then(|r| r.json::<Value>());
                    if let Ok(v) = reply {
                        if let Some(workers) = v["results"].as_array() {
                            samples.lock().expect("samples").push(WorkerSample {
                                at: now_epoch(),
                                workers: workers.clone(),
                            });
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<WorkerSample> {
        self.samples.lock().expect("samples").clone()
    }

    /// The most live workers seen at once.
    pub fn peak(&self) -> usize {
        self.samples()
            .iter()
            .map(|s| s.live().len())
            .max()
            .unwrap_or(0)
    }

    /// The latest sample, waiting for a first one.
    pub fn latest(&self) -> WorkerSample {
        super::process::wait_for("a sample of the workers", Duration::from_secs(10), || {
            self.samples.lock().expect("samples").last().cloned()
        })
    }
}

impl Drop for WorkerSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The counting rule, checked on the dispatcher's own decisions
// ---------------------------------------------------------------------------

/// What [`check_counting`] found over one dispatcher's run.
#[derive(Debug, Default)]
pub struct CountingReport {
    /// Decisions checked.
    pub decisions: usize,
    /// Most sessions open beyond backlog + in flight at one decision.
    pub most_above: u64,
    /// Longest stretch with fewer sessions open than min(max, backlog +
    /// in flight) (s).
    pub longest_below: f64,
}

/// Checks the counting rule on every `decision` event of `dispatch` (each
/// carries the counts it read and the sessions it had open, requested or
/// held, at that same moment) against the jobs' own `record`, and panics
/// naming the decisions that break it:
///
/// * **Never above demand, beyond sessions being released.** A consumer
///   acknowledges its job and then releases its session, and the dispatcher
///   notices a release within one `check_interval`; until then that session
///   is open while its job is no longer counted. So at each decision:
///   `open_after ≤ demand + F`, where `F` is the number of jobs that
///   finished (their `done` or `fail` line, written just before the
///   command exits) within the last `check_interval + 2 × poll_interval +
///   slack` seconds. And a decision above demand opens nothing.
/// * **No job waits for the dispatcher.** A stretch of decisions with
///   `open_after < min(max, demand)` must end within `2 × poll_interval +
///   slack`: one reading, because counts read before a session ended open
///   nothing until the next. The engine's routing time is not part of it: a
///   session counts from the moment it is requested.
///
/// `slack` covers scheduling on a loaded test machine and the dispatcher's
/// start-up (its `t` is turned into wall-clock time between its spawn and
/// its `started` event).
pub fn check_counting(dispatch: &Dispatch, record: &JobRecord, slack: f64) -> CountingReport {
    let events = dispatch.events();
    let started = events
        .iter()
        .find(|e| e["event"] == "started")
        .expect("a started event");
    let poll = started["poll_interval_ms"]
        .as_f64()
        .expect("poll_interval_ms")
        / 1000.0;
    let check = started["check_interval_secs"]
        .as_f64()
        .expect("check_interval_secs");
    let started_seen = started[RECEIVED].as_f64().expect("receive time");
    let release_window = check + 2.0 * poll + slack;
    let below_limit = 2.0 * poll + slack;
    let finished: Vec<f64> = record
        .lines()
        .iter()
        .filter(|l| l.kind != "start")
        .map(|l| l.at)
        .collect();
    let end_t = events
        .iter()
        .filter_map(|e| e["t"].as_f64())
        .fold(0.0, f64::max);
    let mut report = CountingReport::default();
    let mut below_since: Option<(f64, usize)> = None;
    let mut failures = Vec::new();
    let decisions: Vec<&Value> = events_named(&events, "decision");
    let n = |d: &Value, k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{k} in {d}"));
    for (i, d) in decisions.iter().enumerate() {
        report.decisions += 1;
        let t = d["t"].as_f64().expect("t");
        let demand = n(d, "demand");
        let open = n(d, "open_after");
        let max = n(d, "max");
        assert_eq!(
            demand,
            n(d, "backlog") + n(d, "in_flight"),
            "demand is backlog + in flight: {d}"
        );
        assert_eq!(open, n(d, "requested") + n(d, "held"), "{d}");
        if open > demand {
            report.most_above = report.most_above.max(open - demand);
            let (from, to) = (dispatch.spawned_at + t - release_window, started_seen + t);
            let releasing = finished.iter().filter(|&&at| at > from && at <= to).count() as u64;
            if open > demand + releasing {
                failures.push(format!(
                    "{open} open for demand {demand} with {releasing} job(s) finished in the \
                     last {release_window:.3} s: {d}"
                ));
            }
            if n(d, "to_open") > 0 {
                failures.push(format!("opened sessions above demand: {d}"));
            }
        }
        if open < demand.min(max) {
            below_since.get_or_insert((t, i));
        } else if let Some((since, first)) = below_since.take() {
            let lasted = t - since;
            report.longest_below = report.longest_below.max(lasted);
            if lasted > below_limit {
                failures.push(format!(
                    "{lasted:.3} s below min(max, demand) (limit {below_limit:.3} s) from {}",
                    decisions[first]
                ));
            }
        }
    }
    if let Some((since, first)) = below_since {
        if end_t - since > below_limit {
            failures.push(format!(
                "still below min(max, demand) at the end, since {}",
                decisions[first]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the counting rule was broken:\n{}\n(poll {poll} s, check {check} s, slack {slack} s)\n\
         record: {:#?}",
        failures.join("\n"),
        record.lines()
    );
    assert!(report.decisions > 0, "no decision to check");
    report
}
