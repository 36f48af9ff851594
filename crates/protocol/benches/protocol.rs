//! Micro benchmark of the per-request protocol work: the engine signs one URL
//! per routed request, the worker verifies one signature per handler request
//! and compares `session_auth` per session call.
//!
//! Run with `cargo bench -p nullworker-protocol`. Prints the median time per
//! operation over several batches; no external harness.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nullworker_protocol::{canonical_json, python_json_eq, signing_message, SigningKey};
use serde_json::json;

/// Median nanoseconds per call of `f`, over `batches` batches sized to take ~50 ms each.
fn measure(name: &str, mut f: impl FnMut()) {
    let start = Instant::now();
    let mut calibrate = 0u64;
    while start.elapsed() < Duration::from_millis(20) {
        f();
        calibrate += 1;
    }
    let per_batch = (calibrate * 50 / 20).max(1);
    let batches = 9;
    let mut samples: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let median = samples[batches / 2];
    println!(
        "{name:<40} {:>12.0} ns/op  ({per_batch} ops x {batches} batches)",
        median
    );
}

fn main() {
    let t = Instant::now();
    let key = SigningKey::generate_default().expect("generate key");
    println!(
        "{:<40} {:>12.1} ms (one sample)",
        "generate 2048-bit key",
        t.elapsed().as_secs_f64() * 1e3
    );

    let verifying = key.verifying_key();
    let url = "https://203.0.113.10:41234";
    let sig = key.sign_url(url);
    let auth = json!({"cost": 100, "endpoint": "null-test", "reqnum": 42, "request_idx": 7,
        "signature": sig, "url": url, "__request_id": "0f7c2d0e-8a52-4d8f-9a3e-0f3b7e0c6a11"});
    let auth_floaty = json!({"__request_id": "0f7c2d0e-8a52-4d8f-9a3e-0f3b7e0c6a11", "url": url,
        "signature": sig, "request_idx": 7, "reqnum": 42, "endpoint": "null-test", "cost": 100.0});

    measure("signing_message", || {
        black_box(signing_message(black_box(url)));
    });
    measure("canonical_json(auth_data)", || {
        black_box(canonical_json(black_box(&auth)));
    });
    measure("python_json_eq(auth_data, reordered)", || {
        assert!(python_json_eq(black_box(&auth), black_box(&auth_floaty)));
    });
    measure("sign_url (engine, per route)", || {
        black_box(key.sign_url(black_box(url)));
    });
    measure("verify_url (worker, per request)", || {
        verifying
            .verify_url(black_box(url), black_box(&sig))
            .expect("valid");
    });
}
