//! Headless Chromium for the dashboard's tests and benchmark: starts
//! `chromedriver` on a free loopback port and opens a WebDriver session
//! with a fresh profile. A missing `chromium` or `chromedriver` fails with
//! the install hint; it is never a skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::json;

use super::process::{free_port, wait_for, ChildGuard};

/// How to install what the browser tests need.
pub const INSTALL_HINT: &str = "install Debian's chromium and chromium-driver: run scripts/setup-test-deps.sh (or apt-get install chromium chromium-driver)";

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A running chromedriver and a browser session on it.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    _driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and headless Chromium (a `width`×`height` window).
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("no chromium found on PATH: {INSTALL_HINT}"));
        let driver = find(&["chromedriver"])
            .unwrap_or_else(|| panic!("no chromedriver found on PATH: {INSTALL_HINT}"));
        let port = free_port();
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let driver_guard = ChildGuard::spawn(cmd);
        wait_for("chromedriver to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let profile = tempfile::tempdir().expect("profile directory");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": chromium.to_string_lossy(), "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!("cannot start headless chromium through chromedriver: {e}; {INSTALL_HINT}")
            });
        Browser {
            client,
            _driver: driver_guard,
            _profile: profile,
        }
    }

    /// Ends the session (the browser exits) and stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Where CI keeps artifacts: `<workspace>/target/artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}
