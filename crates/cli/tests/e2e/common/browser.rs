//! Headless Chromium for the dashboard's test and benchmark: starts
//! `chromedriver` on a free loopback port and opens a WebDriver session
//! with a fresh profile. A missing `chromium` or `chromedriver` fails with
//! the install hint; it is never a skip. Self-contained (the benchmark
//! includes this file too).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::json;

/// How to install what the browser tests need.
pub const INSTALL_HINT: &str = "install Debian's chromium and chromium-driver: run scripts/setup-test-deps.sh (or apt-get install chromium chromium-driver)";

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        PathBuf::from("/usr/bin"),
        PathBuf::from("/usr/lib/chromium"),
    ];
    for name in names {
        for dir in std::env::split_paths(&path).chain(extra.iter().cloned()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running chromedriver and a browser session on it.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and headless Chromium (a `width`×`height` window).
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("no chromium found on PATH: {INSTALL_HINT}"));
        let driver = find(&["chromedriver"])
            .unwrap_or_else(|| panic!("no chromedriver found on PATH: {INSTALL_HINT}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", driver.display()));
        let driver_guard = Driver(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// Logs in to the dashboard at `ui_url` with the account key, through
    /// its form (the key goes into a POST body, never a URL).
    pub async fn log_in(&self, ui_url: &str, account_key: &str) {
        use fantoccini::Locator;
        self.client.goto(ui_url).await.unwrap();
        let url = self.client.current_url().await.unwrap();
        assert!(url.path().ends_with("/ui/login"), "{url}");
        self.client
            .find(Locator::Css("input[name=key]"))
            .await
            .unwrap()
            .send_keys(account_key)
            .await
            .unwrap();
        self.client
            .find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Ends the session (the browser exits) and stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Where CI keeps artifacts: `<workspace>/target/artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}
