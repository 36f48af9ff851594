//! `nullworker endpoint` against a real `nullworker engine` reached through
//! `--engine-url`, with the account key given the Vast ways (`VAST_API_KEY`,
//! Vast's CLI key file under a temporary HOME) or found in the engine's
//! state: every subcommand, `--json` output, logs by lines and followed
//! across a rotation, held workers, delete refusals and exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::engine::{EngineGuard, TestEndpoint, ACCOUNT_KEY};
use crate::common::process::{nullworker, wait_for, ChildGuard};

const LONG: Duration = Duration::from_secs(60);

/// `nullworker endpoint --engine-url <engine>` with HOME at `home` and no
/// XDG directories, so nothing of the developer's own keys is read.
fn endpoint_cmd(engine_url: &str, home: &Path) -> Command {
    let mut cmd = nullworker();
    cmd.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .arg("endpoint")
        .args(["--engine-url", engine_url]);
    cmd
}

struct Cli {
    url: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(engine: &EngineGuard) -> Self {
        Self {
            url: engine.url.clone(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs with the key in VAST_API_KEY.
    fn run(&self, args: &[&str]) -> Output {
        endpoint_cmd(&self.url, self.home.path())
            .env("VAST_API_KEY", ACCOUNT_KEY)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn test_endpoint(cli: &Cli, name: &str) -> TestEndpoint {
    let show = cli.json(&["show", name, "--json"]);
    TestEndpoint {
        id: show["id"].as_i64().unwrap(),
        name: name.into(),
        api_key: show["api_key"].as_str().unwrap().into(),
    }
}

/// Waits for an IDLE worker of `name`; returns its `workers --json` row.
fn idle_worker(cli: &Cli, name: &str) -> Value {
    wait_for("an IDLE worker", LONG, || {
        let rows = cli.json(&["workers", name, "--json"]);
        rows.as_array()
            .unwrap()
            .iter()
            .find(|w| w["state"] == "IDLE")
            .cloned()
    })
}

fn log_path(engine: &EngineGuard, worker_id: i64) -> std::path::PathBuf {
    engine
        .state_dir
        .join("workers")
        .join(worker_id.to_string())
        .join("worker.log")
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn endpoint_cli_manages_an_endpoint_with_the_vast_api_key() {
    let engine = EngineGuard::start();
    let cli = Cli::new(&engine);

    let created = cli.ok(&["create", "clied", "--preset", "seed", "--max-workers", "3"]);
    assert!(created.contains("created endpoint clied"), "{created}");
    for line in [
        "max_workers         3          (given)",
        "cold_workers        0          (preset seed)",
        "cold_mult           2.5        (default)",
    ] {
        assert!(created.contains(line), "{line}: {created}");
    }
    let list = cli.json(&["list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["clied"]);
    assert!(cli.ok(&["list"]).contains("clied"));
    let show = cli.json(&["show", "clied", "--json"]);
    assert_eq!(show["max_workers"], 3);
    assert_eq!(show["max_queue_time"], 1.0);

    let updated = cli.ok(&["update", "clied", "--min-load", "100"]);
    assert!(
        updated.contains("min_load            100.0      (given)")
            && updated.contains("cold_workers        0          (set)"),
        "{updated}"
    );
    let worker = idle_worker(&cli, "clied");
    let id = worker["id"].as_i64().unwrap();
    assert!(worker["control_port"].as_u64().is_some(), "{worker}");
    assert_eq!(
        (worker["status"].clone(), worker["sessions"].clone()),
        (json!("IDLE"), json!(0))
    );
    let table = cli.ok(&["workers", "clied"]);
    assert!(
        table.contains("IDLE") && table.contains("http://127.0.0.1:"),
        "{table}"
    );

    // Logs: exactly N whole lines.
    let log = log_path(&engine, id);
    append(&log, "extra one\nextra two\nextra three\n");
    let out = cli.ok(&["logs", "clied", "--worker", &id.to_string(), "--tail", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("===== worker {id} ====="), "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    let file = std::fs::read_to_string(&log).unwrap();
    for line in &lines[1..] {
        assert!(
            file.lines().any(|l| l == *line),
            "{line:?} is not a whole line of {file}"
        );
    }
    assert!(cli.ok(&["logs", "clied"]).contains("===== worker"));

    // A worker holding a session is shown held, here and in show.
    let ep = test_endpoint(&cli, "clied");
    let ready = engine.route_until_ready(&ep, LONG);
    let resp = http()
        .post(format!("{}/session/create", ready["url"].as_str().unwrap()))
        .json(&json!({"auth_data": ready, "payload": {"lifetime": 300}, "session_id": null}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let held = wait_for("the worker shown held", LONG, || {
        let rows = cli.json(&["workers", "clied", "--json"]);
        rows.as_array()
            .unwrap()
            .iter()
            .find(|w| w["state"] == "HELD (1 session)")
            .cloned()
    });
    assert_eq!(
        (
            held["status"].clone(),
            held["sessions"].clone(),
            held["busy"].clone()
        ),
        (json!("IDLE"), json!(1), json!(true))
    );
    let table = cli.ok(&["workers", "clied"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&held["id"].to_string()))
        .unwrap();
    assert!(
        row.contains("HELD (1 session)") && !row.contains("IDLE"),
        "{table}"
    );
    assert!(cli.ok(&["show", "clied"]).contains("HELD (1 session)"));

    // Delete refuses while a session is held, exit code 1.
    let out = cli.run(&["delete", "clied"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 open session") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(cli.ok(&["list"]).contains("clied"));
    let deleted = cli.ok(&["delete", "clied", "--force"]);
    assert!(deleted.contains("deleted endpoint clied"), "{deleted}");
    assert!(!cli.ok(&["list"]).contains("clied"));

    // An unknown endpoint is a runtime failure.
    let out = cli.run(&["show", "clied"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"clied\" not found"));
}

#[test]
fn endpoint_cli_finds_the_key_in_vast_files_and_the_engine_state() {
    let engine = EngineGuard::start();
    let home = tempfile::tempdir().unwrap();
    let list = |cmd: &mut Command| cmd.arg("list").output().unwrap();

    // No key anywhere: a usage error naming every place looked at.
    let out = list(
        endpoint_cmd(&engine.url, home.path())
            .env("NULLWORKER_STATE_DIR", home.path().join("none")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for place in [
        "--api-key",
        "VAST_API_KEY",
        "engine.sqlite3",
        ".config/vastai/vast_api_key",
        ".vast_api_key",
    ] {
        assert!(stderr.contains(place), "{place}: {stderr}");
    }

    // Vast's legacy file, then its XDG file (which wins).
    std::fs::write(
        home.path().join(".vast_api_key"),
        format!("{ACCOUNT_KEY}\n"),
    )
    .unwrap();
    let out = list(&mut endpoint_cmd(&engine.url, home.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xdg = home.path().join(".config/vastai");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::write(xdg.join("vast_api_key"), "not-the-key\n").unwrap();
    let out = list(&mut endpoint_cmd(&engine.url, home.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rejected") && stderr.contains("vastai/vast_api_key"),
        "{stderr}"
    );

    // A local engine's own key, from its state directory, comes first.
    let state = tempfile::tempdir().unwrap();
    let generated = EngineGuard::start_in(&state.path().join("state"), &[]);
    assert!(!generated.account_key.is_empty());
    let out = list(
        endpoint_cmd(&generated.url, home.path()).env("NULLWORKER_STATE_DIR", &generated.state_dir),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn endpoint_cli_rejects_bad_numbers_as_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9";
    for (args, needles) in [
        (
            vec!["update", "x", "--min-load", "-1"],
            vec!["--min-load", "from 0 to 1e12"],
        ),
        (
            vec!["create", "x", "--max-queue-time", "1e9"],
            vec!["--max-queue-time", "30 days"],
        ),
        (vec!["logs", "x", "--tail", "-5"], vec!["--tail"]),
    ] {
        let out = endpoint_cmd(url, home.path()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("unexpected argument"), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
        }
    }
    // A missing name: the usage line does not ask for a key.
    let out = endpoint_cmd(url, home.path()).arg("show").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("Usage: nullworker endpoint show <NAME>"),
        "{stderr}"
    );
    assert!(!stderr.contains("--api-key"), "{stderr}");
    // Nothing listens there: a runtime failure.
    let out = endpoint_cmd(url, home.path())
        .env("VAST_API_KEY", ACCOUNT_KEY)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn endpoint_logs_follow_prints_new_lines_across_a_rotation() {
    let engine = EngineGuard::start();
    let cli = Cli::new(&engine);
    cli.ok(&["create", "follow", "--preset", "seed", "--min-load", "100"]);
    let id = idle_worker(&cli, "follow")["id"].as_i64().unwrap();
    let log = log_path(&engine, id);

    let mut cmd = endpoint_cmd(&cli.url, cli.home.path());
    cmd.env("VAST_API_KEY", ACCOUNT_KEY)
        .args([
            "logs",
            "follow",
            "--worker",
            &id.to_string(),
            "--tail",
            "1",
            "--follow",
        ])
        .stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let rx = child.stdout_lines();
    let mut seen: Vec<String> = Vec::new();
    let mut wait_line = |want: Option<&str>| {
        wait_for(want.unwrap_or("the last line"), LONG, || {
            while let Ok(line) = rx.try_recv() {
                seen.push(line);
            }
            match want {
                Some(want) => seen.iter().any(|l| l == want).then_some(()),
                None => (!seen.is_empty()).then_some(()),
            }
        })
    };
    // The last line, printed by the first read: the follower has started.
    wait_line(None);
    append(&log, "appended after start\n");
    wait_line(Some("appended after start"));
    // Rotate as the engine does: copy, then truncate; then write again.
    std::fs::copy(&log, log.with_extension("log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, "after rotation\n");
    wait_line(Some("after rotation"));
    append(&log, "and more\n");
    wait_line(Some("and more"));
    child.signal(libc::SIGINT);
    let status = child
        .wait_timeout(Duration::from_secs(10))
        .expect("follow exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        seen.push(line);
    }
    for line in ["appended after start", "after rotation", "and more"] {
        assert_eq!(
            seen.iter().filter(|l| *l == line).count(),
            1,
            "{line}: {seen:?}"
        );
    }
}

/// `nullworker client` and `dispatch` find the key and the engine as
/// `endpoint` does: `--engine-url` and Vast's key file, or a usage error
/// naming the places looked at.
#[test]
fn client_and_dispatch_find_the_key_and_engine_as_endpoint_does() {
    let engine = EngineGuard::start();
    let ep = engine.create_seed_endpoint("keyed", json!({}));
    let home = tempfile::tempdir().unwrap();
    let run = |command: &str, args: &[&str]| {
        let mut cmd = nullworker();
        cmd.env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("VAST_API_KEY")
            .env("NULLWORKER_STATE_DIR", home.path().join("none"))
            .arg(command)
            .args(["--endpoint", &ep.name, "--engine-url", &engine.url])
            .args(args);
        cmd.output().unwrap()
    };
    let client_args = ["--count", "1", "--hold", "0.2", "--json"];
    let dispatch_args = ["--queue", "sqlite:///nonexistent-dir/q.db?queue=jobs"];

    for (command, args) in [
        ("client", &client_args[..]),
        ("dispatch", &dispatch_args[..]),
    ] {
        let out = run(command, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("no account key found") && stderr.contains(".vast_api_key"),
            "{command}: {stderr}"
        );
    }

    let xdg = home.path().join(".config/vastai");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::write(xdg.join("vast_api_key"), format!("{ACCOUNT_KEY}\n")).unwrap();
    let out = run("client", &client_args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"event\":\"held\""), "{stdout}");
}
