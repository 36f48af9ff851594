//! The dashboard in a real browser: headless Chromium (through
//! chromedriver) logs in, watches a seed endpoint scale 0 → 3 → 0 while
//! three `nullworker client` sessions are held and released, and the test
//! reads what the page rendered (the DOM, not the stream). A screenshot of
//! each run is saved to `target/artifacts/dashboard.png`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::common::browser::{artifacts_dir, Browser};
use crate::common::engine::EngineGuard;
use crate::common::process::{nullworker, ChildGuard};

/// Runs `script` in the page until `accept` takes its value, or panics
/// after `timeout` with the last value and what was awaited.
async fn wait_page(
    client: &Client,
    what: &str,
    timeout: Duration,
    script: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = client.execute(script, vec![]).await.unwrap_or(Value::Null);
        if accept(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for the page to show {what}; last: {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const BUSY: &str =
    "const e = document.querySelector('#busy'); return e ? Number(e.dataset.value) : null;";
const ACTIVE: &str =
    "const e = document.querySelector('#active .v'); return e ? Number(e.textContent) : null;";
const DECISIONS: &str = "return [...document.querySelectorAll('#decisions tr.decision')].map(r => ({action: r.dataset.action, up: r.classList.contains('up'), reason: r.querySelector('.reason').textContent, detail: r.querySelector('.detail').textContent}));";

#[test]
fn dashboard_shows_a_seed_endpoint_scaling_0_3_0_with_reasons() {
    let engine = EngineGuard::start();
    let ui_url = engine
        .ui_url
        .clone()
        .expect("the engine printed its dashboard's URL");
    assert!(
        ui_url.starts_with("http://127.0.0.1:") && ui_url.ends_with("/ui/"),
        "{ui_url}"
    );
    let ep = engine.create_seed_endpoint("dash", json!({}));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let browser = rt.block_on(Browser::start(1400, 1300));
    let client = browser.client.clone();

    rt.block_on(async {
        // The login form: the key goes into a POST body, never a URL.
        browser.log_in(&ui_url, &engine.account_key).await;
        wait_page(&client, "the endpoint in the overview", Duration::from_secs(20),
            "const r = document.querySelector('tr.endpoint-row[data-endpoint=\"dash\"]'); return r ? r.textContent : null;",
            |v| v.as_str().is_some_and(|t| t.contains("seed"))).await;
        client
            .goto(&format!("{ui_url}#/endpoint/dash"))
            .await
            .unwrap();
        let html = client.source().await.unwrap();
        for secret in [engine.account_key.as_str(), ep.api_key.as_str()] {
            assert!(!html.contains(secret), "a key is rendered into the page");
        }
        wait_page(&client, "0 busy workers", Duration::from_secs(20), BUSY, |v| v == &json!(0)).await;
    });

    // Three sessions held for a while, then released.
    let mut cmd = nullworker();
    cmd.arg("client")
        .args(["--endpoint", &ep.name, "--api-key", &engine.account_key])
        .args([
            "--autoscaler-url",
            &engine.url,
            "--webserver-url",
            &engine.url,
        ])
        .args(["--count", "3", "--interval", "0", "--hold", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut sessions = ChildGuard::spawn(cmd);

    rt.block_on(async {
        wait_page(&client, "3 busy workers", Duration::from_secs(60), BUSY, |v| v == &json!(3)).await;
        wait_page(&client, "3 worker rows in BUSY", Duration::from_secs(10),
            "return document.querySelectorAll('#workers tr.worker-row[data-state=\"busy\"]').length;",
            |v| v == &json!(3)).await;
        // A row opens the worker's log, followed live.
        client
            .find(Locator::Css("#workers tr.worker-row"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_page(&client, "a worker's log", Duration::from_secs(10),
            "const e = document.querySelector('#log'); return e ? e.textContent : null;",
            |v| v.as_str().is_some_and(|t| t.len() > 20 && t != "…")).await;
    });
    let status = sessions
        .wait_timeout(Duration::from_secs(60))
        .expect("the client released its sessions and exited");
    assert!(status.success(), "nullworker client: {status:?}");

    rt.block_on(async {
        wait_page(
            &client,
            "0 busy workers after the release",
            Duration::from_secs(30),
            BUSY,
            |v| v == &json!(0),
        )
        .await;
        wait_page(
            &client,
            "0 workers (scaled to zero)",
            Duration::from_secs(60),
            ACTIVE,
            |v| v == &json!(0),
        )
        .await;
        let decisions = wait_page(
            &client,
            "a scale-up and a scale-down decision",
            Duration::from_secs(20),
            DECISIONS,
            |v| {
                let rows = v.as_array().cloned().unwrap_or_default();
                rows.iter().any(|r| r["up"] == true) && rows.iter().any(|r| r["up"] == false)
            },
        )
        .await;
        for row in decisions.as_array().unwrap() {
            let reason = row["reason"].as_str().unwrap_or_default();
            assert!(
                !reason.is_empty() && !row["detail"].as_str().unwrap_or_default().is_empty(),
                "{row}"
            );
        }
        let ups: Vec<&str> = decisions
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["up"] == true)
            .filter_map(|r| r["reason"].as_str())
            .collect();
        let downs: Vec<&str> = decisions
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["up"] == false)
            .filter_map(|r| r["reason"].as_str())
            .collect();
        assert!(
            ups.iter()
                .any(|r| ["scale_from_zero", "demand_above"].contains(r)),
            "{decisions}"
        );
        assert!(
            downs.iter().any(|r| ["idle", "surplus"].contains(r)),
            "{decisions}"
        );
        // The chart drew the busy layer at some point in its window.
        let layers = client
            .execute(
                "return document.querySelectorAll('#chart-svg path.layer-busy').length;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(layers, json!(1), "the chart has a busy layer");
        let png = client.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("dashboard.png"), png).unwrap();
    });
    rt.block_on(browser.close());
}
