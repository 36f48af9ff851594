//! Chaos: a bounded loop that SIGKILLs, at random points, the engine (and
//! restarts it on the same state directory and address), a worker, a
//! consumer (the endpoint's `nullworker consume`, usually mid-job) and a
//! client (`nullworker client` holding a session), and after each round
//! checks what must survive all of it:
//!
//! * no session is lost while its holder lives: every live client still
//!   holds its session, on the same worker process, which still lists it on
//!   its control port (`GET /session`), and the client saw no end;
//! * no worker holding a session is stopped;
//! * no endpoint is lost: the engine lists it after every restart;
//! * no orphan process: every process carrying the run's marker (an
//!   environment variable set through `worker_env`, so workers, consumers,
//!   job commands and whatever they start carry it) descends from, or is in
//!   the process group of, a worker or consumer the engine lists;
//! * workers return to the floor: `min_load` 0, so once the killed
//!   clients' sessions expire, one worker per held session, and zero at the
//!   end once nothing is held;
//! * at the end, after SIGINT to the engine, nothing with the marker is left.
//!
//! The random choices come from a seeded generator; the seed is printed at
//! the start and in every failure (`CHAOS_SEED=<n>` replays a run).
//!
//! Also here: a SIGKILLed `nullworker consume` takes its job's command and
//! what that command started along.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::engine::{EngineGuard, TestEndpoint, ACCOUNT_KEY};
use crate::common::process::{binary, nullworker, wait_for, ChildGuard};
use crate::common::queue::{queue_ok, shell_quote};

/// Rounds of kills.
const ROUNDS: usize = 6;
/// No round starts once this much of the run has passed (the end checks
/// follow), so the whole test stays within about two minutes.
const ROUNDS_BUDGET: Duration = Duration::from_secs(85);
/// Clients holding a session at the start of each round.
const CLIENTS: usize = 2;
/// The endpoint's cap (room for the clients and a replacement worker).
const MAX_WORKERS: u32 = 4;
/// The clients' session lifetime (s): a killed client's session ends
/// within it.
const LIFETIME: f64 = 4.0;
/// The endpoint's `inactivity_timeout` (s).
const INACTIVITY: f64 = 2.0;
/// Longest wait for a client to hold its session.
const HOLD_WAIT: Duration = Duration::from_secs(45);
/// Longest wait for a state to settle after a round's kills (a worker
/// re-adopted, an orphan's group stopped after the engine's stop grace).
const SETTLE: Duration = Duration::from_secs(30);
/// Longest wait for the floor: the killed clients' sessions expire
/// (lifetime), READY answers nobody used are released (10 s), idle workers
/// go after the inactivity timeout and the scale-down delay, then stop.
const FLOOR: Duration = Duration::from_secs(35);
/// Longest pause between two kills of a round.
const MAX_PAUSE_MS: u64 = 700;

// ---------------------------------------------------------------------------
// A seeded random generator (splitmix64): reproducible from the seed alone.
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A random point in time: a pause of up to `max_ms` (a choice of
    /// moment, not a wait for anything).
    fn pause(&mut self, max_ms: u64) {
        std::thread::sleep(Duration::from_millis(self.next() % (max_ms + 1)));
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED={s:?}: expected an unsigned integer")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

// ---------------------------------------------------------------------------
// Processes, from /proc
// ---------------------------------------------------------------------------

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgid: i32,
    zombie: bool,
}

fn stat(pid: i32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the name: state (field 3), ppid (4), pgrp (5).
    Some(Proc {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        zombie: *f.first()? == "Z",
    })
}

/// Every process, by pid.
fn all_processes() -> HashMap<i32, Proc> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter_map(stat)
        .map(|p| (p.pid, p))
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
fn running(pid: i32) -> bool {
    stat(pid).is_some_and(|p| !p.zombie)
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `pid`'s environment variable `name`.
fn env_of(pid: i32, name: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    bytes
        .split(|&c| c == 0)
        .map(String::from_utf8_lossy)
        .find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
}

/// Running (not zombie) processes whose environment holds `marker`
/// (`CHAOS_RUN=<id>`), oldest pid first (so a seed picks the same victims).
fn marked(marker: &str) -> Vec<Proc> {
    let (name, value) = marker.split_once('=').expect("NAME=VALUE");
    let mut found: Vec<Proc> = all_processes()
        .into_values()
        .filter(|p| !p.zombie && env_of(p.pid, name).as_deref() == Some(value))
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// How a marked process reads in a failure message.
fn describe(p: &Proc) -> String {
    format!(
        "pid {} (ppid {}, pgid {}): {}",
        p.pid,
        p.ppid,
        p.pgid,
        cmdline(p.pid).join(" ")
    )
}

/// Marked processes running `nullworker <sub>`.
fn marked_nullworker(marker: &str, sub: &str) -> Vec<Proc> {
    marked(marker)
        .into_iter()
        .filter(|p| {
            let argv = cmdline(p.pid);
            argv.first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|name| name == "nullworker")
                && argv.get(1).map(String::as_str) == Some(sub)
        })
        .collect()
}

/// Running descendants of `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let procs = all_processes();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in procs.values().filter(|p| p.ppid == parent && !p.zombie) {
            found.push(p.pid);
            frontier.push(p.pid);
        }
    }
    found
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a process this test's engine started; nothing is
    // touched in memory. ESRCH (already gone) is fine.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

// ---------------------------------------------------------------------------
// `nullworker client`, its events collected as they come
// ---------------------------------------------------------------------------

struct Client {
    n: usize,
    child: ChildGuard,
    events: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
    log: PathBuf,
    /// The worker process it holds its session on, once seen.
    worker_pid: Option<i64>,
}

impl Client {
    /// One session held for far longer than the test, renewed every
    /// lifetime, checked on its worker every half second.
    fn start(engine: &EngineGuard, ep: &TestEndpoint, n: usize, dir: &Path) -> Self {
        let log = dir.join(format!("client-{n}.log"));
        let mut cmd = nullworker();
        cmd.arg("client")
            .args(["--endpoint", &ep.name, "--api-key", &engine.account_key])
            .args([
                "--autoscaler-url",
                &engine.url,
                "--webserver-url",
                &engine.url,
            ])
            .args(["--json", "--hold", "3600", "--timeout", "120"])
            .args([
                "--lifetime",
                &LIFETIME.to_string(),
                "--check-interval",
                "0.5",
            ])
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("client log"));
        let mut child = ChildGuard::spawn(cmd);
        let rx = child.stdout_lines();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let reader = std::thread::spawn(move || {
            for line in rx {
                let value = serde_json::from_str(&line).unwrap_or_else(
                    |e| json!({"event": "not_json", "line": line, "error": e.to_string()}),
                );
                sink.lock().expect("events").push(value);
            }
        });
        Self {
            n,
            child,
            events,
            reader: Some(reader),
            log,
            worker_pid: None,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// `(session_id, worker_url)` once it holds its session.
    fn held(&self) -> Option<(String, String)> {
        self.events()
            .iter()
            .find(|e| e["event"] == "held")
            .map(|e| {
                (
                    e["session_id"].as_str().expect("session_id").to_owned(),
                    e["worker_url"].as_str().expect("worker_url").to_owned(),
                )
            })
    }

    /// An event saying its session ended or never came, if any.
    fn trouble(&self) -> Option<Value> {
        self.events()
            .into_iter()
            .find(|e| matches!(e["event"].as_str(), Some("ended" | "failed" | "not_json")))
    }

    /// Its exit status, if it exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.child.as_mut()?.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        if self.exited().is_none() {
            self.child.signal(libc::SIGKILL);
        }
        let _ = self.child.wait_timeout(Duration::from_secs(10));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn describe(&self) -> String {
        format!(
            "client {}: events {:?}\n  log: {}",
            self.n,
            self.events(),
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .trim()
        )
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// One thing done to the system at a random point of a round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    KillEngine,
    RestartEngine,
    KillWorker,
    KillConsumer,
    KillClient,
    StartClient,
}

struct Chaos {
    seed: u64,
    /// The schedule: orders, moments, engines killed while starting. Its
    /// draws never depend on the system's state, so a seed replays it.
    rng: Rng,
    /// The victims, among what runs at the moment.
    pick: Rng,
    started: Instant,
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    listen: String,
    engine: Option<EngineGuard>,
    ep: TestEndpoint,
    marker: String,
    clients: Vec<Client>,
    next_client: usize,
    /// Sessions (by id) and worker URLs lost with a worker this test
    /// killed: their clients are no longer holders whose sessions must
    /// survive.
    forfeited: BTreeSet<String>,
    /// What was done so far, for failure messages.
    journal: Vec<String>,
}

impl Chaos {
    fn engine_args(&self) -> Vec<String> {
        [
            "--account-key",
            ACCOUNT_KEY,
            "--scale-down-delay",
            "1",
            "--stop-grace",
            "2",
            "--listen",
            &self.listen,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn engine(&self) -> &EngineGuard {
        self.engine.as_ref().expect("the engine runs")
    }

    fn note(&mut self, what: String) {
        let line = format!("{:6.2}s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.journal.push(line);
    }

    /// Panics with `what`, the seed and everything done so far.
    fn fail(&self, what: &str) -> ! {
        let clients: Vec<String> = self.clients.iter().map(Client::describe).collect();
        panic!(
            "chaos invariant broken (seed {seed}; rerun with CHAOS_SEED={seed}): {what}\n\
             journal:\n  {}\nclients:\n  {}",
            self.journal.join("\n  "),
            clients.join("\n  "),
            seed = self.seed,
        );
    }

    /// Polls `condition` every 50 ms until it gives `Ok`; past `timeout`
    /// fails with its last `Err`.
    fn settle<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match condition(self) {
                Ok(value) => return value,
                Err(why) if Instant::now() >= deadline => {
                    self.fail(&format!("{what}: not within {timeout:?}: {why}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn start() -> Self {
        let seed = seed();
        eprintln!("chaos: seed {seed} (rerun with CHAOS_SEED={seed})");
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        let marker = format!("CHAOS_RUN={}-{seed}", std::process::id());
        let queue = format!(
            "sqlite:{}?queue=jobs&visibility_timeout=3",
            dir.path().join("queue.sqlite3").display()
        );
        // Jobs run until they are killed (so no consumer ever releases a
        // client's session), each with a child of its own.
        let consumer = format!(
            "exec {} consume --queue {} --claim-timeout 86400 --grace 1 -- /bin/sh -c {}",
            shell_quote(binary()),
            shell_quote(&queue),
            shell_quote("sleep 1000 & wait")
        );
        let engine = EngineGuard::start_in(
            &state_dir,
            &[
                "--account-key",
                ACCOUNT_KEY,
                "--scale-down-delay",
                "1",
                "--stop-grace",
                "2",
            ],
        );
        let listen = engine.url.trim_start_matches("http://").to_owned();
        let (marker_name, marker_value) = marker.split_once('=').expect("marker");
        let ep = engine.create_seed_endpoint(
            "chaos",
            json!({
                "max_workers": MAX_WORKERS,
                "inactivity_timeout": INACTIVITY,
                "consumer_command": consumer,
                "worker_env": {marker_name: marker_value, "RUST_LOG": "info"},
            }),
        );
        queue_ok(&[
            "push", "--queue", &queue, "--create", "--count", "6", "job-{i}",
        ]);
        Self {
            seed,
            rng: Rng(seed),
            pick: Rng(seed ^ 0x5EED_C4A0_5EED_0F0F),
            started: Instant::now(),
            dir,
            state_dir,
            listen,
            engine: Some(engine),
            ep,
            marker,
            clients: Vec::new(),
            next_client: 1,
            forfeited: BTreeSet::new(),
            journal: Vec::new(),
        }
    }

    fn start_client(&mut self) {
        let n = self.next_client;
        self.next_client += 1;
        let client = Client::start(self.engine(), &self.ep, n, self.dir.path());
        self.clients.push(client);
        self.note(format!("client {n} started"));
    }

    fn act(&mut self, act: Act) {
        match act {
            Act::KillEngine => {
                let engine = self.engine.as_mut().expect("the engine runs");
                engine.stop_with(libc::SIGKILL).expect("the engine exits");
                self.engine = None;
                self.note("SIGKILL engine".into());
            }
            Act::RestartEngine => {
                let args = self.engine_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                if self.rng.below(2) == 0 {
                    // Every other time, one more engine killed while it
                    // starts: re-adopting, stopping leftovers, binding.
                    let mut cmd = nullworker();
                    cmd.arg("engine")
                        .args(&args)
                        .arg("--state-dir")
                        .arg(&self.state_dir)
                        .env("RUST_LOG", "info")
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit());
                    let mut starting = ChildGuard::spawn(cmd);
                    let after = Duration::from_millis(self.rng.next() % 400);
                    std::thread::sleep(after);
                    starting.signal(libc::SIGKILL);
                    if starting.wait_timeout(Duration::from_secs(10)).is_none() {
                        self.fail("an engine did not die of SIGKILL");
                    }
                    self.note(format!("SIGKILL engine {after:?} into its start"));
                }
                self.engine = Some(EngineGuard::start_in(&self.state_dir, &args));
                self.note("engine restarted".into());
            }
            Act::KillWorker => {
                let workers = marked_nullworker(&self.marker, "serve");
                if workers.is_empty() {
                    self.note("no worker to kill".into());
                    return;
                }
                let victim = workers[self.pick.below(workers.len())].clone();
                let url = env_of(victim.pid, "WORKER_PORT")
                    .map(|port| format!("http://127.0.0.1:{port}"))
                    .unwrap_or_default();
                // The session it holds, if any, even one whose client has
                // not printed it yet.
                let session = env_of(victim.pid, "NULL_CONTROL_PORT").and_then(|port| {
                    let v: Value = http()
                        .get(format!("http://127.0.0.1:{port}/session"))
                        .send()
                        .and_then(|r| r.json())
                        .ok()?;
                    v["session_id"].as_str().map(str::to_owned)
                });
                sigkill(victim.pid);
                self.note(format!(
                    "SIGKILL worker pid {} ({url}, session {session:?})",
                    victim.pid
                ));
                self.forfeited.insert(url);
                self.forfeited.extend(session);
                self.drop_forfeited();
            }
            Act::KillConsumer => {
                let consumers = marked_nullworker(&self.marker, "consume");
                if consumers.is_empty() {
                    self.note("no consumer to kill".into());
                    return;
                }
                // Preferably one running a job.
                let busy: Vec<&Proc> = consumers
                    .iter()
                    .filter(|c| !descendants(c.pid).is_empty())
                    .collect();
                let victim = if busy.is_empty() {
                    consumers[self.pick.below(consumers.len())].clone()
                } else {
                    busy[self.pick.below(busy.len())].clone()
                };
                let job = descendants(victim.pid);
                sigkill(victim.pid);
                self.note(format!(
                    "SIGKILL consumer pid {} (job processes {job:?})",
                    victim.pid
                ));
                // Its job's command, and what that started, go with it.
                self.settle(
                    "a killed consumer's job gone",
                    Duration::from_secs(5),
                    |_| {
                        let left: Vec<i32> = job.iter().copied().filter(|&p| running(p)).collect();
                        if left.is_empty() {
                            Ok(())
                        } else {
                            Err(format!(
                                "still running: {:?}",
                                left.iter()
                                    .filter_map(|&p| stat(p))
                                    .map(|p| describe(&p))
                                    .collect::<Vec<_>>()
                            ))
                        }
                    },
                );
            }
            Act::StartClient => self.start_client(),
            Act::KillClient => {
                if self.clients.is_empty() {
                    self.note("no client to kill".into());
                    return;
                }
                let i = self.pick.below(self.clients.len());
                let mut client = self.clients.remove(i);
                client.kill();
                self.note(format!("SIGKILL client {}", client.n));
            }
        }
    }

    /// One round: the four kills in a random order at random moments, the
    /// engine's restart at a random later point, then the checks.
    fn round(&mut self, round: usize) {
        let mut acts = vec![
            Act::KillEngine,
            Act::KillWorker,
            Act::KillConsumer,
            Act::KillClient,
        ];
        self.rng.shuffle(&mut acts);
        let killed_at = acts
            .iter()
            .position(|a| *a == Act::KillEngine)
            .expect("an engine kill");
        let restart_at = killed_at + 1 + self.rng.below(acts.len() - killed_at);
        acts.insert(restart_at, Act::RestartEngine);
        // A replacement client at a random later point: it may be waiting
        // for a worker through later kills. It needs the engine to start
        // (its first call looks the endpoint up), so not while it is down.
        let client_killed = acts
            .iter()
            .position(|a| *a == Act::KillClient)
            .expect("a client kill");
        let down = killed_at + 1..restart_at + 1;
        let spots: Vec<usize> = (client_killed + 1..=acts.len())
            .filter(|i| !down.contains(i))
            .collect();
        acts.insert(spots[self.rng.below(spots.len())], Act::StartClient);
        self.note(format!("round {round}: {acts:?}"));
        for act in acts {
            self.rng.pause(MAX_PAUSE_MS);
            self.act(act);
        }
        self.check(round);
    }

    /// Kills and forgets the clients whose session was on a worker this
    /// test killed (by session id, or by URL for those already held then).
    fn drop_forfeited(&mut self) {
        let mut i = 0;
        while i < self.clients.len() {
            let lost = self.clients[i].held().is_some_and(|(id, url)| {
                self.forfeited.contains(&id) || self.forfeited.contains(&url)
            });
            if lost {
                let mut client = self.clients.remove(i);
                client.kill();
                self.note(format!("client {} killed: its worker was killed", client.n));
            } else {
                i += 1;
            }
        }
    }

    /// Clients back to [`CLIENTS`], each holding its session.
    fn refill_clients(&mut self) {
        while self.clients.len() < CLIENTS {
            self.start_client();
        }
        self.settle("every client to hold its session", HOLD_WAIT, |chaos| {
            chaos.drop_forfeited();
            for c in &mut chaos.clients {
                if let Some(trouble) = c.trouble() {
                    return Err(format!("client {}: {trouble}", c.n));
                }
                if let Some(status) = c.exited() {
                    return Err(format!("client {} exited: {status}", c.n));
                }
            }
            match chaos.clients.iter().find(|c| c.held().is_none()) {
                Some(c) => Err(format!("client {} holds nothing yet", c.n)),
                None => Ok(()),
            }
        });
    }

    /// The invariants after a round.
    fn check(&mut self, round: usize) {
        self.check_endpoint();
        self.check_sessions();
        self.check_orphans();
        self.check_floor();
        self.note(format!("round {round}: every invariant holds"));
    }

    /// The engine lists the endpoint, with its id and key.
    fn check_endpoint(&mut self) {
        let (status, v) = self.engine().api(Method::GET, "/api/v0/endptjobs/", None);
        let found = v["results"].as_array().is_some_and(|list| {
            list.iter().any(|e| {
                e["id"].as_i64() == Some(self.ep.id)
                    && e["endpoint_name"] == self.ep.name.as_str()
                    && e["api_key"] == self.ep.api_key.as_str()
            })
        });
        if status != 200 || !found {
            self.fail(&format!("endpoint {} lost: {status} {v}", self.ep.name));
        }
    }

    /// Every live client still holds its session on the same running
    /// worker, which the engine lists (not being stopped) and whose control
    /// port shows that session.
    fn check_sessions(&mut self) {
        self.drop_forfeited();
        let n = self.clients.len();
        for i in 0..n {
            let c = &mut self.clients[i];
            if let Some(status) = c.exited() {
                let what = format!("client {} exited: {status}", c.n);
                self.fail(&what);
            }
            let Some((session_id, url)) = self.clients[i].held() else {
                // Still waiting for a worker (started this round).
                continue;
            };
            if self.forfeited.contains(&session_id) || self.forfeited.contains(&url) {
                // Held on a worker killed meanwhile: dropped at the next check.
                continue;
            }
            let client_n = self.clients[i].n;
            let worker = self.settle(
                &format!("client {client_n}'s session on {url}"),
                SETTLE,
                |chaos| {
                    if let Some(trouble) = chaos.clients[i].trouble() {
                        return Err(format!("the client saw {trouble}"));
                    }
                    let workers = chaos.engine().workers_detail(&chaos.ep);
                    let w = workers
                        .iter()
                        .find(|w| w["url"] == url.as_str())
                        .ok_or_else(|| format!("no worker listed at {url}: {workers:?}"))?;
                    let status = w["status"].as_str().unwrap_or_default();
                    if matches!(status, "STOPPING" | "DESTROYING" | "STOPPED") {
                        return Err(format!("its worker is {status}: {w}"));
                    }
                    let pid = w["pid"].as_i64().ok_or_else(|| format!("no pid: {w}"))?;
                    if !running(pid as i32) {
                        return Err(format!("its worker pid {pid} does not run: {w}"));
                    }
                    let port = w["control_port"]
                        .as_u64()
                        .ok_or_else(|| format!("no control port: {w}"))?;
                    let held: Value = http()
                        .get(format!("http://127.0.0.1:{port}/session"))
                        .send()
                        .and_then(|r| r.json())
                        .map_err(|e| format!("GET /session on {port}: {e}"))?;
                    if held["held"] != true || held["session_id"] != session_id.as_str() {
                        return Err(format!("the worker shows {held}, not {session_id}"));
                    }
                    Ok(pid)
                },
            );
            let c = &mut self.clients[i];
            match c.worker_pid {
                None => c.worker_pid = Some(worker),
                Some(pid) if pid == worker => {}
                Some(pid) => {
                    let what = format!(
                        "client {}'s worker at {url} was pid {pid}, is now pid {worker}",
                        c.n
                    );
                    self.fail(&what);
                }
            }
        }
    }

    /// Every marked process descends from, or is in the group of, a worker
    /// or consumer the engine lists.
    fn check_orphans(&mut self) {
        self.settle("no orphan process", SETTLE, |chaos| {
            let owners: BTreeSet<i32> = chaos
                .engine()
                .workers_detail(&chaos.ep)
                .iter()
                .flat_map(|w| [w["pid"].as_i64(), w["consumer_pid"].as_i64()])
                .flatten()
                .map(|p| p as i32)
                .collect();
            // The marker must be where it is looked for, or this check
            // would pass on nothing.
            let (name, value) = chaos.marker.split_once('=').expect("marker");
            let unmarked: Vec<i32> = owners
                .iter()
                .copied()
                .filter(|&p| running(p) && env_of(p, name).as_deref() != Some(value))
                .collect();
            if !unmarked.is_empty() {
                chaos.fail(&format!(
                    "listed processes without the marker: {unmarked:?}"
                ));
            }
            let orphans = chaos.orphans(&owners);
            if orphans.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "owners {owners:?}; orphans:\n    {}",
                    orphans
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ))
            }
        });
    }

    /// Marked processes that neither descend from nor share a group with
    /// one of `owners`.
    fn orphans(&self, owners: &BTreeSet<i32>) -> Vec<Proc> {
        let procs = all_processes();
        let owned = |p: &Proc| {
            if owners.contains(&p.pgid) {
                return true;
            }
            let mut pid = p.pid;
            for _ in 0..64 {
                if owners.contains(&pid) {
                    return true;
                }
                match procs.get(&pid) {
                    Some(q) if q.ppid > 1 => pid = q.ppid,
                    _ => return false,
                }
            }
            false
        };
        marked(&self.marker)
            .into_iter()
            .filter(|p| !owned(p))
            .collect()
    }

    /// One running worker per held session, no more: the workers of killed
    /// clients and killed workers' replacements go back down.
    fn check_floor(&mut self) {
        self.settle("workers back to one per held session", FLOOR, |chaos| {
            let holding: BTreeMap<String, usize> = chaos
                .clients
                .iter()
                .filter_map(|c| c.held().map(|(_, url)| (url, c.n)))
                .collect();
            let routing = chaos.clients.len() - holding.len();
            let workers = chaos.engine().workers_detail(&chaos.ep);
            let live: Vec<&Value> = workers
                .iter()
                .filter(|w| {
                    !matches!(
                        w["status"].as_str(),
                        Some("STOPPING" | "DESTROYING" | "STOPPED")
                    )
                })
                .collect();
            if live.len() <= holding.len() + routing {
                Ok(())
            } else {
                Err(format!(
                    "{} workers for {} held session(s) and {routing} waiting: {workers:?}",
                    live.len(),
                    holding.len()
                ))
            }
        });
    }

    /// The end: every client interrupted (closing its session), zero
    /// workers and nothing marked; then SIGINT to the engine and still
    /// nothing marked.
    fn finish(&mut self) {
        for c in &mut self.clients {
            c.child.signal(libc::SIGINT);
        }
        for mut c in std::mem::take(&mut self.clients) {
            if c.child.wait_timeout(Duration::from_secs(30)).is_none() {
                self.fail(&format!("client {} did not exit on SIGINT", c.n));
            }
            c.kill();
        }
        self.note("clients interrupted".into());
        let to_zero = Duration::from_secs_f64(INACTIVITY + 15.0);
        self.settle("zero workers once nothing is held", to_zero, |chaos| {
            let workers = chaos.engine().workers_detail(&chaos.ep);
            if workers.is_empty() {
                Ok(())
            } else {
                Err(format!("{workers:?}"))
            }
        });
        self.settle("no marked process at zero workers", SETTLE, |chaos| {
            let left = marked(&chaos.marker);
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.iter().map(describe).collect::<Vec<_>>().join("; "))
            }
        });
        self.note("zero workers, nothing left".into());
        let mut engine = self.engine.take().expect("the engine runs");
        let status = engine.stop_with(libc::SIGINT).expect("the engine exits");
        if !status.success() {
            self.fail(&format!("the engine exited with {status} on SIGINT"));
        }
        self.settle(
            "nothing marked after SIGINT",
            Duration::from_secs(10),
            |chaos| {
                let left = marked(&chaos.marker);
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(left.iter().map(describe).collect::<Vec<_>>().join("; "))
                }
            },
        );
    }
}

impl Drop for Chaos {
    /// Whatever a failing run leaves: the engine goes with SIGINT (its
    /// guard), and any marked process is killed.
    fn drop(&mut self) {
        self.clients.clear();
        self.engine.take();
        for p in marked(&self.marker) {
            sigkill(p.pid);
        }
    }
}

#[test]
fn chaos_kills_engine_worker_consumer_and_client_and_nothing_is_lost() {
    let mut chaos = Chaos::start();
    chaos.refill_clients();
    chaos.check(0);
    let mut rounds = 0;
    while rounds < ROUNDS && chaos.started.elapsed() < ROUNDS_BUDGET {
        rounds += 1;
        chaos.refill_clients();
        chaos.round(rounds);
    }
    chaos.note(format!("{rounds} rounds"));
    assert!(rounds >= 3, "only {rounds} rounds within {ROUNDS_BUDGET:?}");
    chaos.refill_clients();
    chaos.check_sessions();
    chaos.finish();
}

// ---------------------------------------------------------------------------
// A SIGKILLed consumer leaves no job behind
// ---------------------------------------------------------------------------

/// Kills its processes when dropped.
struct Reaper(Vec<i32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if running(pid) {
                sigkill(pid);
            }
        }
    }
}

#[test]
fn a_sigkilled_consumer_takes_its_job_and_the_jobs_child_along() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = format!(
        "sqlite:{}?queue=jobs",
        dir.path().join("queue.sqlite3").display()
    );
    let pids = dir.path().join("pids");
    // The job records its shell's pid and its background child's.
    let script = format!(
        "sleep 60 & echo \"$$ $!\" > {0}.tmp; mv {0}.tmp {0}; wait",
        shell_quote(&pids.display().to_string())
    );
    let consumer = format!(
        "exec {} consume --queue {} --claim-timeout 60 -- /bin/sh -c {}",
        shell_quote(binary()),
        shell_quote(&queue),
        shell_quote(&script)
    );
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint(
        "consumer-kill",
        json!({"max_workers": 1, "consumer_command": consumer}),
    );
    queue_ok(&["push", "--queue", &queue, "--create", "one"]);
    // A session on the worker, so its consumer takes the job.
    let ready = engine.route_until_ready(&ep, Duration::from_secs(60));
    let url = ready["url"].as_str().expect("url");
    let resp = http()
        .post(format!("{url}/session/create"))
        .json(&json!({"auth_data": ready, "payload": {"lifetime": 300}, "session_id": null}))
        .send()
        .expect("session/create");
    assert_eq!(resp.status().as_u16(), 201, "session/create");
    let text = wait_for("the job to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&pids).ok()
    });
    let (shell, sleeper) = text.trim().split_once(' ').expect("two pids");
    let (shell, sleeper): (i32, i32) = (shell.parse().unwrap(), sleeper.parse().unwrap());
    let consumer_pid = engine
        .workers_detail(&ep)
        .first()
        .and_then(|w| w["consumer_pid"].as_i64())
        .expect("the consumer's pid") as i32;
    // A failing run leaves neither behind.
    let _reaper = Reaper(vec![shell, sleeper]);
    assert_eq!(stat(shell).map(|p| p.ppid), Some(consumer_pid));
    assert!(running(sleeper));

    sigkill(consumer_pid);
    wait_for(
        "the job's command and its child gone",
        Duration::from_secs(5),
        || (!running(shell) && !running(sleeper)).then_some(()),
    );
}
