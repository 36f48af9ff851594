//! The Python side of the interop tests: finding an interpreter that imports
//! the official `vastai` 1.9.1 package, and running the scripts of
//! `tests/e2e/python/` with a deadline and one JSON result line each.
//!
//! Interpreter: `NULLWORKER_PYTHON`, else `<repo>/.venv/bin/python` (made by
//! `scripts/setup-python.sh`), else `python3`. When it cannot import `vastai`
//! the tests are skipped with a loud note on stderr, or fail when
//! `NULLWORKER_REQUIRE_INTEROP=1`.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::common::process::ChildGuard;

/// The `vastai` version the scripts are written against.
pub const VASTAI_VERSION: &str = "1.9.1";

/// Root of the repository (two levels above this package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Directory of the interop scripts.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python")
}

/// A Python interpreter that imports `vastai` 1.9.1.
#[derive(Debug)]
pub struct Python {
    pub exe: PathBuf,
}

/// Checks run on a candidate interpreter: the client and the worker
/// framework import, and the package has the pinned version.
const PROBE: &str = "\
import sys
from importlib.metadata import version
from vastai.serverless.client.client import Serverless
from vastai.serverless.server.worker import Worker
v = version('vastai')
sys.exit(0 if v == sys.argv[1] else 'vastai ' + v + ' found, expected ' + sys.argv[1])
";

/// A Python 3: `NULLWORKER_PYTHON`, else the repository's `.venv`
/// (scripts/setup-python.sh), else `python3`.
pub(crate) fn candidate() -> PathBuf {
    if let Some(exe) = std::env::var_os("NULLWORKER_PYTHON").filter(|v| !v.is_empty()) {
        return PathBuf::from(exe);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

fn probe() -> Result<Python, String> {
    let exe = candidate();
    let output = Command::new(&exe)
        .args(["-c", PROBE, VASTAI_VERSION])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if output.status.success() {
        Ok(Python { exe })
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        let why = if last.is_empty() {
            output.status.to_string()
        } else {
            last.to_owned()
        };
        Err(format!(
            "{} cannot import vastai {VASTAI_VERSION} ({why})",
            exe.display()
        ))
    }
}

/// The interpreter for the interop tests, or `None` (after a loud note on
/// stderr) when it is unavailable and the interop tests are not required.
///
/// Panics when `NULLWORKER_REQUIRE_INTEROP=1` and no usable interpreter exists.
pub fn python(test: &str) -> Option<&'static Python> {
    static PYTHON: OnceLock<Result<Python, String>> = OnceLock::new();
    match PYTHON.get_or_init(probe) {
        Ok(python) => Some(python),
        Err(reason) => {
            let required = std::env::var("NULLWORKER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "interop test {test} is required (NULLWORKER_REQUIRE_INTEROP=1) but {reason}: \
                 run scripts/setup-python.sh (or set NULLWORKER_PYTHON)"
            );
            eprintln!(
                "\n********************************************************************\n\
                 SKIPPED interop test {test}: {reason}.\n\
                 Run scripts/setup-python.sh to enable it (NULLWORKER_REQUIRE_INTEROP=1 makes this a failure).\n\
                 ********************************************************************\n"
            );
            None
        }
    }
}

/// The outcome of one script run.
#[derive(Debug)]
pub struct ScriptRun {
    pub script: String,
    pub status: ExitStatus,
    /// The last line of stdout parsed as JSON (`Value::Null` if it is not JSON).
    pub result: Value,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptRun {
    /// Asserts the script succeeded (exit 0 and `"ok": true`); returns its result.
    #[track_caller]
    pub fn expect_ok(&self) -> &Value {
        self.expect_ok_with(String::new)
    }

    /// Like [`Self::expect_ok`], appending `context()` (e.g. a server log) to
    /// the failure message.
    #[track_caller]
    pub fn expect_ok_with(&self, context: impl FnOnce() -> String) -> &Value {
        assert!(
            self.status.success() && self.result["ok"] == Value::Bool(true),
            "{} failed ({}): {}\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}\n{}",
            self.script,
            self.status,
            self.result,
            self.stdout,
            tail(&self.stderr, 60),
            context()
        );
        &self.result
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Python {
    /// A command running `exe` with a clean environment for the SDK.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        for var in [
            "VAST_DEBUG_WORKER_URL",
            "VAST_API_KEY",
            "PYTHONPATH",
            "PYTHONHOME",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    }

    /// Runs `tests/e2e/python/<script>` with `args`, feeding `stdin`, and
    /// waits up to `timeout` (the process is killed past it and the test fails).
    pub fn run_script(
        &self,
        script: &str,
        args: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> ScriptRun {
        let dir = tempfile::tempdir().expect("tempdir");
        let out_path = dir.path().join("stdout");
        let err_path = dir.path().join("stderr");
        let mut cmd = self.command();
        cmd.arg(scripts_dir().join(script))
            .args(args)
            .current_dir(dir.path())
            .stdout(File::create(&out_path).expect("stdout file"))
            .stderr(File::create(&err_path).expect("stderr file"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut guard = ChildGuard {
            child: Some(cmd.spawn().expect("spawn python")),
        };
        if let Some(input) = stdin {
            let mut pipe = guard
                .child
                .as_mut()
                .and_then(|c| c.stdin.take())
                .expect("stdin pipe");
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        let status = guard.wait_timeout(timeout);
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "{script} did not finish within {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr (tail) ---\n{}",
                tail(&stderr, 60)
            );
        };
        let result = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        ScriptRun {
            script: script.to_owned(),
            status,
            result,
            stdout,
            stderr,
        }
    }
}
