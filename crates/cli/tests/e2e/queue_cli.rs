//! `nullworker queue` and `nullworker consume` as a user runs them: the real
//! binary against SQLite and a real redis-server, and bad input (unknown
//! scheme, malformed URL, unreachable server, missing stream) answered with
//! one line naming the value. `consume` talks to a small HTTP server standing
//! in for the worker's control port (`GET /session`, `POST /release`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::common::process::{free_port, nullworker, wait_for, ChildGuard};
use crate::common::queue::{counts, queue_cmd, queue_ok as ok};

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run nullworker")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Push, stats and create on one queue URL whose queue was just created.
fn exercise(url: &str) {
    let ids = ok(&["push", "--queue", url, "--count", "3", "job {i}"]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.iter().all(|id| !id.is_empty()));
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "distinct ids"
    );

    let mut push = queue_cmd(&["push", "--queue", url, "--json", "-"]);
    push.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = push.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"from\": \"stdin\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ids"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["queue"], url);

    assert_eq!(counts(url), (4, 0, 0));
    let text = ok(&["stats", "--queue", url]);
    assert_eq!(text, "backlog    4\nin-flight  0\ndead       0\n");
    // `create` again is harmless and keeps the jobs.
    let text = ok(&["create", "--queue", url]);
    assert!(text.contains("is ready"), "{text}");
    assert_eq!(counts(url).0, 4);
}

#[test]
fn queue_commands_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?queue=jobs", dir.path().join("q.db").display());
    ok(&["create", "--queue", &url]);
    exercise(&url);
}

#[test]
fn queue_commands_on_redis() {
    let redis = nullworker_queue::testing::redis().unwrap_or_else(|e| panic!("{e}"));
    let server = redis.url("redis");

    let list = format!("{server}?list=jobs");
    exercise(&list);

    let stream = format!("{server}?stream=events&group=workers");
    // Without `create`, the stream and its group do not exist yet.
    let out = run(queue_cmd(&["push", "--queue", &stream, "x"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = one_line(&out);
    assert!(line.contains("events") && line.contains("create"), "{line}");
    ok(&["create", "--queue", &stream]);
    exercise(&stream);

    // `push --create` makes what is missing.
    let other = format!("{server}?stream=other&group=workers");
    ok(&["push", "--queue", &other, "--create", "x"]);
    assert_eq!(counts(&other), (1, 0, 0));
}

/// The one line of stderr (exactly one).
fn one_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr: {err:?}");
    lines[0].to_owned()
}

#[test]
fn bad_queue_input_is_one_clear_line() {
    // URL syntax: clap's usage error, exit 2, naming the URL and the forms.
    for (url, needle) in [
        ("amqp://127.0.0.1/jobs", "unknown scheme \"amqp\""),
        ("redis://127.0.0.1:6379", "needs `list=NAME`"),
        ("not a url", "not a URL"),
        (
            "sqlite:q.db?queue=q&max_attempts=0",
            "max attempts 0 is out of range",
        ),
    ] {
        for sub in ["push", "stats", "create"] {
            let mut args = vec![sub, "--queue", url];
            if sub == "push" {
                args.push("payload");
            }
            let out = run(queue_cmd(&args));
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            let err = stderr(&out);
            let first = err.lines().next().unwrap_or_default();
            assert!(
                first.contains(url) && first.contains(needle),
                "{args:?}: {err}"
            );
        }
    }

    // An unreachable server: runtime error, exit 1, naming the address.
    let port = free_port();
    for url in [
        format!("redis://127.0.0.1:{port}?list=jobs"),
        format!("redis://127.0.0.1:{port}?stream=s&group=g"),
        format!("nats://127.0.0.1:{port}?stream=S&subject=s&consumer=c"),
    ] {
        let out = run(queue_cmd(&["stats", "--queue", &url]));
        assert_eq!(out.status.code(), Some(1), "{url}: {}", stderr(&out));
        let line = one_line(&out);
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{url}: {line}");
        assert!(line.contains("cannot reach"), "{url}: {line}");
    }

    // A bad count is a usage error too.
    let out = run(queue_cmd(&[
        "push",
        "--queue",
        "sqlite:q.db?queue=q",
        "--count",
        "0",
        "x",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The worker's control API: always reserved (a new session whenever the
/// last one was released); counts releases. Runs on its own runtime.
struct ControlStandIn {
    url: String,
    releases: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ControlStandIn {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let releases = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/session",
                get({
                    let releases = Arc::clone(&releases);
                    move || async move {
                        // One session per release: session-1, session-2, ...
                        let n = releases.load(Ordering::SeqCst) + 1;
                        Json(json!({"held": true, "session_id": format!("session-{n}"),
                                    "since": 1.0e9, "expiration": 2.0e9, "open_sessions": 1}))
                    }
                }),
            )
            .route(
                "/release",
                post({
                    let releases = Arc::clone(&releases);
                    move || async move {
                        let n = releases.fetch_add(1, Ordering::SeqCst) + 1;
                        Json(json!({"released": true, "session_ids": [format!("session-{n}")]}))
                    }
                }),
            );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            releases,
            runtime: Some(runtime),
        }
    }
}

impl Drop for ControlStandIn {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Stderr lines of a child, collected by a thread.
fn collect_stderr(child: &mut ChildGuard) -> Arc<Mutex<Vec<String>>> {
    let stderr = child.child.as_mut().unwrap().stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The health URL the consumer logs once it listens.
fn health_url(log: &Mutex<Vec<String>>) -> String {
    wait_for(
        "the health endpoint's address",
        Duration::from_secs(20),
        || {
            log.lock().unwrap().iter().find_map(|line| {
                let start = line.find("http://")?;
                let end = line[start..].find("/health")?;
                Some(line[start..start + end + "/health".len()].to_owned())
            })
        },
    )
}

#[test]
fn consume_runs_jobs_serves_health_and_hands_back_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?queue=jobs", dir.path().join("q.db").display());
    ok(&[
        "push", "--queue", &url, "--create", "--count", "2", "job {i}",
    ]);
    let control = ControlStandIn::start();
    let done = dir.path().join("done");
    // Job 1 finishes; job 2 runs until it is stopped.
    let script = format!(
        "read p; echo \"$p $NULLWORKER_JOB_ATTEMPT $NULLWORKER_SESSION_ID\" >> {}; \
         [ \"$p\" = 'job 2' ] && exec sleep 600; exit 0",
        done.display()
    );
    let mut cmd = nullworker();
    cmd.env_remove("NULL_CONSUMER_PORT")
        .args(["consume", "--queue", &url, "--control-url", &control.url])
        .args(["--health-listen", "127.0.0.1:0", "--grace", "0.5"])
        .args(["--", "/bin/sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let log = collect_stderr(&mut child);

    let health = health_url(&log);
    let lines = wait_for("both jobs to start", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&done).unwrap_or_default();
        (text.lines().count() == 2).then_some(text)
    });
    assert_eq!(lines, "job 1 1 session-1\njob 2 1 session-2\n");
    let reply = reqwest::blocking::get(&health).unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    assert_eq!(reply.text().unwrap(), "ok");
    assert_eq!(counts(&url), (0, 1, 0));

    child.signal(libc::SIGTERM);
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("consume exits");
    assert_eq!(status.code(), Some(0), "{:?}", log.lock().unwrap());
    // Job 1 acked, job 2 handed back unfinished: nothing lost.
    assert_eq!(counts(&url), (1, 0, 0));
    assert_eq!(control.releases.load(Ordering::SeqCst), 2);
    let text = log.lock().unwrap().join("\n");
    assert!(
        text.contains("acked") && text.contains("handed back"),
        "{text}"
    );
}

#[test]
fn consume_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?queue=jobs", dir.path().join("q.db").display());
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--queue", "amqp://h/q", "--", "true"],
            2,
            "unknown scheme",
        ),
        (
            &["--queue", &url, "--visibility-timeout", "0", "--", "true"],
            2,
            "visibility timeout 0 s",
        ),
        (
            &["--queue", &url, "--grace=-1", "--", "true"],
            2,
            "\"-1\" is not a number of seconds",
        ),
        (
            &[
                "--queue",
                &url,
                "--control-url",
                "127.0.0.1:1",
                "--",
                "true",
            ],
            2,
            "--control-url \"127.0.0.1:1\"",
        ),
        (&["--queue", &url], 2, "<CMD>"),
    ];
    for (args, code, needle) in cases {
        let mut cmd = nullworker();
        cmd.env_remove("NULL_CONSUMER_PORT")
            .arg("consume")
            .args(*args);
        let out = run(cmd);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let mut cmd = nullworker();
    cmd.env("NULL_CONSUMER_PORT", "http")
        .args(["consume", "--queue", &url, "--", "true"]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        one_line(&out).contains("NULL_CONSUMER_PORT=\"http\""),
        "{}",
        stderr(&out)
    );

    let port = free_port();
    let mut cmd = nullworker();
    cmd.env_remove("NULL_CONSUMER_PORT").args([
        "consume",
        "--queue",
        &format!("redis://127.0.0.1:{port}?list=jobs"),
        "--",
        "true",
    ]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        one_line(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn consume_health_is_503_while_the_queue_is_unreachable() {
    let redis = nullworker_queue::testing::redis().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("{}?list=jobs", redis.url("redis"));
    let control = ControlStandIn::start();
    let mut cmd = nullworker();
    cmd.env_remove("NULL_CONSUMER_PORT")
        .args(["consume", "--queue", &url, "--control-url", &control.url])
        .args(["--health-listen", "127.0.0.1:0", "--claim-timeout", "0.5"])
        .args(["--", "/bin/sh", "-c", "exit 0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let log = collect_stderr(&mut child);
    let health = health_url(&log);
    let status = || {
        reqwest::blocking::get(&health)
            .map(|r| r.status().as_u16())
            .ok()
    };
    wait_for("health 200", Duration::from_secs(20), || {
        (status() == Some(200)).then_some(())
    });
    // Sessions come and go for lack of work, and the loop goes on.
    wait_for(
        "an idle session to be released",
        Duration::from_secs(20),
        || (control.releases.load(Ordering::SeqCst) >= 1).then_some(()),
    );

    drop(redis);
    wait_for("health 503", Duration::from_secs(20), || {
        (status() == Some(503)).then_some(())
    });
    assert_eq!(
        child.child.as_mut().unwrap().try_wait().unwrap(),
        None,
        "still running"
    );
    child.signal(libc::SIGTERM);
    let exit = child
        .wait_timeout(Duration::from_secs(20))
        .expect("consume exits");
    assert_eq!(exit.code(), Some(0), "{:?}", log.lock().unwrap());
}
