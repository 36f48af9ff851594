//! Installing without a Rust toolchain: the `nullworker` wheel and Vast's
//! `PYWORKER_REPO` deploy flow, played on this machine.
//!
//! * `pip install` of the wheel into a fresh venv puts a `nullworker` on PATH
//!   that prints Cargo's version, with the package metadata we publish.
//! * The wheel's binary needs glibc 2.17 at most (manylinux2014), read from
//!   the ELF's version-needed section.
//! * Vast's start script (`PYWORKER_REPO` = a fork with the wheel committed in
//!   `wheels/`, `BACKEND=null`): clone, venv, `pip install -r
//!   requirements.txt` with no index, `python -m workers.null.worker` with
//!   the environment Vast sets; the worker registers with `nullworker engine`
//!   as an external worker, holds a session the official `vastai` SDK opens,
//!   and is idle again after the SDK closes it.
//!
//! The wheel is `NULLWORKER_WHEEL` (scripts/test.sh builds it with
//! scripts/build-wheel.sh and exports it; a relative path is taken from the
//! repository root); a wheel left in `target/wheels/` is never picked up, as
//! it may be older than the sources. Without one, or without Python, git or the `vastai` SDK,
//! these tests fail with the command to run: they are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::engine::{EngineGuard, ACCOUNT_KEY};
use crate::common::process::{read_by_nullworker, wait_for, ChildGuard};
// The interop tests' script runner (deadlines, one JSON result line).
use crate::interop::python::{self as sdk_python, repo_root, tail, Python};

/// Cargo's version: the wheel's and the binary's.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How the tests get a wheel.
const WHEEL_HINT: &str = "build it with `scripts/build-wheel.sh` and export \
    NULLWORKER_WHEEL=<the path it prints> (scripts/test.sh does both)";
/// The worker id the boot test gives its instance, far from the engine's own ids.
const CONTAINER_ID: i64 = 910_001;

/// The wheel under test: only the one named by `NULLWORKER_WHEEL`, never a
/// wheel lying in `target/wheels/`, which may have been built from older
/// sources than the ones under test.
fn wheel() -> PathBuf {
    let Some(path) = std::env::var_os("NULLWORKER_WHEEL").filter(|v| !v.is_empty()) else {
        panic!("NULLWORKER_WHEEL is unset: {WHEEL_HINT}");
    };
    // Relative to the repository root, where the scripts run (the test
    // itself runs in crates/cli).
    let path = repo_root().join(path);
    assert!(
        path.is_file(),
        "NULLWORKER_WHEEL={} is not a file: {WHEEL_HINT}",
        path.display()
    );
    path
}

/// A Python 3 that makes the test venvs (as the interop tests find theirs).
fn base_python() -> PathBuf {
    sdk_python::candidate()
}

/// The interpreter with the official SDK, or a failure naming the setup script.
fn sdk_python() -> Python {
    let exe = base_python();
    let probe = Command::new(&exe)
        .args([
            "-c",
            "import sys; from importlib.metadata import version; \
             from vastai.serverless.client.client import Serverless; \
             sys.exit(0 if version('vastai') == sys.argv[1] else 'vastai ' + version('vastai'))",
            sdk_python::VASTAI_VERSION,
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => Python { exe },
        Ok(out) => panic!(
            "{} cannot import vastai {}: {}; run scripts/setup-python.sh (or set NULLWORKER_PYTHON)",
            exe.display(),
            sdk_python::VASTAI_VERSION,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {}: {e}; run scripts/setup-python.sh (or set NULLWORKER_PYTHON)",
            exe.display()
        ),
    }
}

/// Runs `cmd` to completion; panics with its output unless it succeeds.
#[track_caller]
fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    out
}

/// A fresh virtual environment at `dir` (with pip, from the bundled copy:
/// no network); returns its python.
fn make_venv(dir: &Path) -> PathBuf {
    let python = base_python();
    run(
        "python -m venv",
        Command::new(&python).arg("-m").arg("venv").arg(dir),
    );
    let exe = dir.join("bin/python");
    assert!(exe.is_file(), "{} was not created", exe.display());
    exe
}

/// `pip install` with no index, no cache and no version check.
fn pip_install(python: &Path, cwd: &Path, args: &[&std::ffi::OsStr]) -> Output {
    run(
        "pip install",
        Command::new(python)
            .args(["-m", "pip", "install", "--no-index", "--no-cache-dir"])
            .args(args)
            .current_dir(cwd)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env_remove("PIP_INDEX_URL")
            .env_remove("PIP_FIND_LINKS")
            .env_remove("PYTHONPATH"),
    )
}

#[test]
fn wheel_installs_nullworker_on_path_with_cargo_version() {
    let wheel = wheel();
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("nullworker-{VERSION}-py3-none-"))
            && name.contains("manylinux2014_x86_64")
            && name.contains("manylinux_2_17_x86_64"),
        "wheel {name}: expected nullworker-{VERSION}-py3-none-…manylinux2014_x86_64 (glibc 2.17)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let venv = tmp.path().join("venv");
    let python = make_venv(&venv);
    pip_install(&python, tmp.path(), &[wheel.as_os_str()]);

    let bin = venv.join("bin");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let out = run(
        "nullworker --version on PATH",
        Command::new("/bin/sh")
            .args(["-c", "command -v nullworker && nullworker --version"])
            .env("PATH", path),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            bin.join("nullworker").to_string_lossy().as_ref(),
            &format!("nullworker {VERSION}")
        ],
        "{stdout}"
    );

    let out = run(
        "read the installed metadata",
        Command::new(&python).args([
            "-c",
            "import json, importlib.metadata as m; d = m.metadata('nullworker'); \
             print(json.dumps({k: d.get(k) for k in ('Name', 'Version', 'License-Expression', 'Summary')}))",
        ]),
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    assert_eq!(meta["Name"], json!("nullworker"), "{meta}");
    assert_eq!(meta["Version"], json!(VERSION), "{meta}");
    assert_eq!(
        meta["License-Expression"],
        json!("MIT OR Apache-2.0"),
        "{meta}"
    );
    assert!(
        meta["Summary"]
            .as_str()
            .is_some_and(|s| s.contains("Vast Serverless")),
        "{meta}"
    );
}

/// `GLIBC_x.y[.z]` version requirements of an ELF file, from its
/// `SHT_GNU_VERNEED` section, as `(name, [x, y, z])`.
fn glibc_versions_needed(elf: &[u8]) -> Vec<(String, Vec<u32>)> {
    use object::read::elf::{FileHeader as _, SectionTable};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(elf).expect("a 64-bit ELF");
    let endian = header.endian().expect("endianness");
    let sections: SectionTable<_> = header.sections(endian, elf).expect("section table");
    let (mut needs, link) = sections
        .gnu_verneed(endian, elf)
        .expect("version-needed section")
        .expect("no SHT_GNU_VERNEED section: not a dynamically linked glibc binary");
    let strings = sections
        .strings(endian, elf, link)
        .expect("its string table");
    let mut versions = Vec::new();
    while let Some((_need, mut aux)) = needs.next().expect("verneed entry") {
        while let Some(entry) = aux.next().expect("vernaux entry") {
            let name = String::from_utf8_lossy(entry.name(endian, strings).expect("version name"));
            if let Some(number) = name.strip_prefix("GLIBC_") {
                let parts = number
                    .split('.')
                    .map(|p| {
                        p.parse()
                            .unwrap_or_else(|_| panic!("unexpected glibc version {name}"))
                    })
                    .collect();
                versions.push((name.into_owned(), parts));
            }
        }
    }
    versions
}

#[test]
fn wheel_binary_needs_glibc_2_17_at_most() {
    let wheel = wheel();
    let tmp = tempfile::tempdir().expect("tempdir");
    run(
        "unpack the wheel",
        Command::new(base_python())
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(tmp.path()),
    );
    let binary = tmp
        .path()
        .join(format!("nullworker-{VERSION}.data/scripts/nullworker"));
    let elf = std::fs::read(&binary)
        .unwrap_or_else(|e| panic!("{} not in the wheel: {e}", binary.display()));
    let versions = glibc_versions_needed(&elf);
    assert!(
        !versions.is_empty(),
        "the binary names no GLIBC_ version: expected a glibc-linked binary"
    );
    let (highest, parts) = versions
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1))
        .expect("non-empty");
    eprintln!("vast_boot: highest glibc version the wheel's binary needs: {highest}");
    assert!(
        parts.as_slice() <= [2, 17].as_slice(),
        "the wheel's binary needs {highest}: expected GLIBC_2.17 at most (manylinux2014); \
         build it with scripts/build-wheel.sh (maturin --zig)"
    );
}

#[test]
fn layout_requirements_pin_the_cargo_version() {
    let text = std::fs::read_to_string(repo_root().join("requirements.txt"))
        .expect("requirements.txt at the repository root");
    let pins: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("nullworker"))
        .collect();
    assert_eq!(
        pins,
        [format!("nullworker=={VERSION}")],
        "requirements.txt must pin the wheel at Cargo's version"
    );
    assert!(
        text.lines().any(|l| l.trim() == "--find-links wheels"),
        "requirements.txt must look in wheels/ beside it"
    );
    assert!(
        text.lines().any(|l| l.trim() == "--no-index"),
        "requirements.txt must not ask an index, where another package could take the name"
    );
    assert!(repo_root().join("workers/null/worker.py").is_file());
}

/// A "fork" of the layout: this checkout's `requirements.txt`, `workers/`
/// and `wheels/`, with `wheel` committed in `wheels/`, as a git repository.
fn make_fork(dir: &Path, wheel: &Path) {
    let root = repo_root();
    let mut files = vec![PathBuf::from("requirements.txt")];
    let mut stack = vec![PathBuf::from("workers"), PathBuf::from("wheels")];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).expect("layout directory") {
            let entry = entry.expect("entry");
            let name = entry.file_name();
            if name == "__pycache__" || name.to_string_lossy().ends_with(".whl") {
                continue;
            }
            let rel = rel.join(name);
            if entry.file_type().expect("type").is_dir() {
                stack.push(rel);
            } else {
                files.push(rel);
            }
        }
    }
    for rel in &files {
        let to = dir.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).expect("mkdir");
        std::fs::copy(root.join(rel), &to).expect("copy layout file");
    }
    std::fs::copy(wheel, dir.join("wheels").join(wheel.file_name().unwrap())).expect("copy wheel");
    let git = |args: &[&str]| {
        run(
            &format!("git {}", args.join(" ")),
            Command::new("git")
                .args(["-c", "user.name=fork", "-c", "user.email=fork@localhost"])
                .args(args)
                .current_dir(dir),
        )
    };
    git(&["init", "-q"]);
    git(&["add", "-A", "--force"]);
    git(&["commit", "-q", "-m", "fork with the wheel"]);
}

/// A free port `p` on 127.0.0.1 with `p + 1` free too (the worker's default
/// HTTP-only port).
fn free_port_pair() -> u16 {
    wait_for("two adjacent free ports", Duration::from_secs(10), || {
        let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let port = a.local_addr().ok()?.port();
        let _b = std::net::TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
        Some(port)
    })
}

#[test]
fn vast_start_script_boots_the_layout_and_holds_an_sdk_session() {
    let wheel = wheel();
    let sdk = sdk_python();
    let tmp = tempfile::tempdir().expect("tempdir");

    // PYWORKER_REPO: a fork of the layout with the wheel committed.
    let fork = tmp.path().join("fork");
    make_fork(&fork, &wheel);

    // Vast's start script: clone into $WORKSPACE_DIR/vast-pyworker, a venv in
    // $WORKSPACE_DIR/worker-env, `pip install -r` from $WORKSPACE_DIR.
    let workspace = tmp.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let server_dir = workspace.join("vast-pyworker");
    run(
        "git clone PYWORKER_REPO",
        Command::new("git")
            .args(["clone", "-q"])
            .arg(format!("file://{}", fork.display()))
            .arg(&server_dir),
    );
    let env_path = workspace.join("worker-env");
    let python = make_venv(&env_path);
    pip_install(
        &python,
        &workspace,
        &[
            "-r".as_ref(),
            server_dir.join("requirements.txt").as_os_str(),
        ],
    );
    assert!(
        server_dir.join("workers/null/worker.py").is_file(),
        "BACKEND=null: workers/null/worker.py missing from the clone"
    );

    // The engine Vast's REPORT_ADDR points at; the instance is not one it
    // launched, so it registers as an external worker with its endpoint key.
    let engine_dir = tmp.path().join("engine");
    let engine = EngineGuard::start_in(
        &engine_dir,
        &["--account-key", ACCOUNT_KEY, "--allow-external-workers"],
    );
    let endpoint = engine.create_seed_endpoint("vast-boot", json!({"max_workers": 1}));

    let port = free_port_pair();
    let control_port = free_port_pair();
    let marker = tmp.path().join("consumer-ran");
    let log_path = tmp.path().join("pyworker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(&python);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if read_by_nullworker(&key) || key == "PYTHONPATH" {
            cmd.env_remove(key);
        }
    }
    // Vast activates the venv before `python3 -m workers.$BACKEND.worker`.
    let path = format!(
        "{}:{}",
        env_path.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.args(["-m", "workers.null.worker"])
        .current_dir(&server_dir)
        .env("PATH", path)
        .env("VIRTUAL_ENV", &env_path)
        .env("BACKEND", "null")
        .env("PYWORKER_REPO", format!("file://{}", fork.display()))
        .env("CONTAINER_ID", CONTAINER_ID.to_string())
        .env("REPORT_ADDR", &engine.url)
        .env("MASTER_TOKEN", &endpoint.api_key)
        .env("WORKER_PORT", port.to_string())
        .env(format!("VAST_TCP_PORT_{port}"), port.to_string())
        .env("PUBLIC_IPADDR", "127.0.0.1")
        .env("USE_SSL", "false")
        // Not set by Vast (one instance per machine there); here other tests
        // may run beside this one.
        .env("NULL_CONTROL_PORT", control_port.to_string())
        .env(
            "NULLWORKER_CONSUMER",
            format!(
                "printf '%s\\n%s\\n' \"$CONTAINER_ID\" \"$(command -v nullworker)\" > '{}'",
                marker.display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let mut worker = ChildGuard::spawn(cmd);
    let worker_log = || format!("--- pyworker.log ---\n{}", tail(&read(&log_path), 60));

    // The module execs the wheel's binary: same pid, `nullworker serve`.
    let installed = std::fs::canonicalize(env_path.join("bin/nullworker")).expect("installed");
    wait_for(
        "the module to exec the wheel's nullworker",
        Duration::from_secs(30),
        || {
            let exe = std::fs::read_link(format!("/proc/{}/exe", worker.id())).ok()?;
            (exe == installed).then_some(())
        },
    );
    // Its consumer ran first, with Vast's environment and the same binary.
    let consumer = wait_for(
        "NULLWORKER_CONSUMER to run",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&marker).ok()?;
            (text.lines().count() == 2).then_some(text)
        },
    );
    assert_eq!(
        consumer.lines().collect::<Vec<_>>(),
        [
            CONTAINER_ID.to_string().as_str(),
            env_path.join("bin/nullworker").to_string_lossy().as_ref()
        ],
        "{}",
        worker_log()
    );

    // Ready: the engine lists the instance as an idle worker at its Vast URL.
    let url = format!("http://127.0.0.1:{port}");
    let ours = |engine: &EngineGuard| {
        engine
            .workers(&endpoint)
            .into_iter()
            .find(|w| w["id"].as_i64() == Some(CONTAINER_ID))
    };
    let ready = wait_for(
        "the instance to report ready to the engine",
        Duration::from_secs(60),
        || ours(&engine).filter(|w| w["status"] == "IDLE"),
    );
    assert_eq!(ready["url"], json!(url), "{ready}\n{}", worker_log());

    // The official SDK opens a session through the engine, sees it held on
    // this instance, pings inside it and closes it.
    let result = sdk.run_script(
        "sdk_engine_session.py",
        &[
            "--engine-url",
            &engine.url,
            "--api-key",
            ACCOUNT_KEY,
            "--endpoint",
            "vast-boot",
            "--timeout",
            "60",
            "--report-timeout",
            "60",
        ],
        None,
        Duration::from_secs(120),
    );
    let result = result.expect_ok_with(worker_log);
    assert_eq!(result["worker_url"], json!(url), "{result}");
    assert_eq!(
        result["holding_worker"]["id"],
        json!(CONTAINER_ID),
        "{result}"
    );
    assert_eq!(
        result["ping_response"],
        json!({"result": {"ok": true}}),
        "{result}"
    );

    // Idle again after the close, and still the one worker of the endpoint.
    let idle = wait_for(
        "the instance to report idle after the release",
        Duration::from_secs(60),
        || {
            ours(&engine).filter(|w| {
                w["status"] == "IDLE"
                    && w["cur_load"].as_f64() == Some(0.0)
                    && w["reqs_working"] == json!(0)
            })
        },
    );
    assert_eq!(idle["url"], json!(url), "{idle}");
    assert_eq!(engine.workers(&endpoint).len(), 1, "{}", worker_log());

    // SIGTERM, as Vast sends it: the worker drains and exits 0.
    worker.signal(libc::SIGTERM);
    let status = worker
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no exit within 30 s of SIGTERM\n{}", worker_log()));
    assert!(
        status.success(),
        "exit {status} after SIGTERM\n{}",
        worker_log()
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
