//! Wire protocol shared by the nullworker worker, engine and client.
//!
//! This crate is the single place where Vast Serverless compatibility is
//! encoded (PROTOCOL.md is the specification it follows):
//!
//! * [`canonical`] — byte-exact Python `json.dumps(indent=4, sort_keys=True)`
//!   text, the signed message of a worker URL, and Python-style JSON equality.
//! * [`signing`] — RSA PKCS#1 v1.5 / SHA-256 signing of worker URLs (engine)
//!   and verification (worker), with PEM import/export.
//! * [`messages`] — serde types for every JSON body: `/route/`, `auth_data`,
//!   `/worker_status/`, `/delete_requests/`, the worker session API, the
//!   null worker's `/release`, `/get_endpoint_workers/` and the web API.
//! * [`paths`] — the HTTP paths of engine, web API and worker.
//! * This module — protocol constants (PROTOCOL.md Appendix A) and small
//!   helpers: URL building, session ids, `REPORT_ADDR` parsing, `strtobool`.
//!
//! It performs no I/O.

pub mod canonical;
pub mod messages;
pub mod paths;
pub mod signing;

pub use canonical::{canonical_json, python_float_repr, python_json_eq, signing_message};
pub use messages::*;
pub use signing::{KeyError, SignatureError, SigningKey, VerifyingKey};

/// The worker's environment variables (PROTOCOL.md §8.1), apart from the
/// `VAST_TCP_PORT_<port>` family that maps its ports.
pub const WORKER_ENV_VARS: &[&str] = &[
    "CONTAINER_ID",
    "REPORT_ADDR",
    "MASTER_TOKEN",
    "WORKER_PORT",
    "WORKER_HTTP_PORT",
    "PUBLIC_IPADDR",
    "USE_SSL",
    "UNSECURED",
    "BACKEND_HEALTH_URL",
    "NULL_CONTROL_PORT",
];

/// Framework protocol version sent as `version` in worker reports.
pub const FRAMEWORK_VERSION: &str = "1.1.0";
/// The null worker's pinned `max_perf` (workload units per second).
pub const NULL_MAX_PERF: f64 = 100.0;
/// Session lifetime when `/session/create` has no `lifetime` (seconds).
pub const DEFAULT_SESSION_LIFETIME: f64 = 60.0;
/// Default `NULL_CONTROL_PORT` of the null worker's loopback control server.
pub const DEFAULT_NULL_CONTROL_PORT: u16 = 18999;
/// Length of a session id (characters from `[A-Za-z0-9]`).
pub const SESSION_ID_LEN: usize = 13;
/// `REPORT_ADDR` entry skipped when sending `/delete_requests/`.
pub const DELETE_REQUESTS_SKIPPED_ADDR: &str = "https://cloud.vast.ai/api/v0";
/// Worker TLS certificate on a Vast instance.
pub const DEFAULT_TLS_CERT: &str = "/etc/instance.crt";
/// Worker TLS private key on a Vast instance.
pub const DEFAULT_TLS_KEY: &str = "/etc/instance.key";
/// File created by `/pyworker/update` to request a rolling update.
pub const FORCE_UPDATE_FILE: &str = "/.force_update";
/// SDK default `cost` of a request or session.
pub const DEFAULT_COST: f64 = 100.0;
/// Largest `cost` a request or session may carry (workload units). Workers
/// refuse a larger `auth_data.cost` (422), so every load total they report
/// stays finite; 10⁹ is far above any real request (the SDK sends 100, LLM
/// workloads count tokens).
pub const MAX_COST: f64 = 1e9;
/// Largest session `lifetime` a worker accepts (seconds): 30 days, the bound
/// of every other duration in the engine's settings.
pub const MAX_SESSION_LIFETIME: f64 = 30.0 * 86_400.0;
/// How far ahead of now a session's expiration may lie (seconds): extensions
/// (`expiration += lifetime`, §9.3) saturate here, so no sequence of
/// requests pins a worker for longer than this without renewing.
pub const MAX_SESSION_AHEAD: f64 = MAX_SESSION_LIFETIME;
/// Saturation bound of a worker's load totals (`cur_load`, `new_load`,
/// `cur_perf`, `rej_load`): below 2⁵³, so sums of integral costs stay exact.
pub const MAX_LOAD_TOTAL: f64 = 1e15;
/// `replay_timeout` the SDK sends with every `/route/` (seconds).
pub const REPLAY_TIMEOUT: f64 = 60.0;
/// Benchmark cache file, relative to the worker's working directory.
pub const BENCHMARK_CACHE_FILE: &str = ".has_benchmark";
/// Key of the null worker's benchmark payload.
pub const NULL_BENCHMARK_SENTINEL: &str = "__null_worker_benchmark__";
/// Floor of the `wait_time` divisor (worker admission check).
pub const WAIT_TIME_PERF_FLOOR: f64 = 0.00001;
/// Handler `max_queue_time` default (seconds).
pub const DEFAULT_HANDLER_MAX_QUEUE_TIME: f64 = 30.0;
/// Worker session GC interval (seconds).
pub const SESSION_GC_INTERVAL: f64 = 5.0;
/// On-close callback timeout (seconds).
pub const ON_CLOSE_TIMEOUT: f64 = 10.0;
/// Reference web API base URL (SDK `webserver_url` default).
pub const DEFAULT_WEBSERVER_URL: &str = "https://console.vast.ai";
/// `User-Agent` product of the SDK (`vastai-sdk/<version>`).
pub const SDK_USER_AGENT_PRODUCT: &str = "vastai-sdk";

/// Whether the SDK retries a response with this HTTP status: 408, 429, 500–599.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Route service base URL for the SDK's `instance` argument (§1.1); unknown
/// names map to production like the SDK.
pub fn autoscaler_url_for_instance(instance: &str) -> &'static str {
    match instance {
        "alpha" => "https://run-alpha.vast.ai",
        "candidate" => "https://run-candidate.vast.ai",
        "local" => "http://localhost:8080",
        _ => "https://run.vast.ai",
    }
}

/// The worker's public URL (§8.2): `http[s]://PUBLIC_IPADDR:PORT`, no trailing slash.
///
/// An IPv6 address (any `public_ip` containing `:`) is bracketed unless it already is.
pub fn worker_url(use_ssl: bool, public_ip: &str, port: u16) -> String {
    let scheme = if use_ssl { "https" } else { "http" };
    if public_ip.contains(':') && !public_ip.starts_with('[') {
        format!("{scheme}://[{public_ip}]:{port}")
    } else {
        format!("{scheme}://{public_ip}:{port}")
    }
}

/// Joins an engine base URL and an engine path: trailing slashes of `base`
/// are removed, then `path` is appended (a missing leading `/` is added).
///
/// `join_engine_path("http://h:1/", "/worker_status/") == "http://h:1/worker_status/"`.
pub fn join_engine_path(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// Splits a `REPORT_ADDR` value into its entries: comma-separated, trimmed,
/// empty entries dropped, order kept.
pub fn parse_report_addrs(report_addr: &str) -> Vec<String> {
    report_addr
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A fresh session id: [`SESSION_ID_LEN`] characters drawn uniformly from `[A-Za-z0-9]`.
pub fn new_session_id<R: rand::Rng + ?Sized>(rng: &mut R) -> String {
    (0..SESSION_ID_LEN)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}

/// Whether `s` has the shape of a session id (13 ASCII alphanumerics).
pub fn is_session_id(s: &str) -> bool {
    s.len() == SESSION_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Python `strtobool` (§6.5): `y yes t true on 1` ⇒ true, `n no f false off 0`
/// ⇒ false, case-insensitive; anything else ⇒ `None`.
pub fn parse_strtobool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 503, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 201, 400, 401, 404, 409, 410, 422, 499, 600] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn worker_urls() {
        assert_eq!(
            worker_url(false, "203.0.113.10", 8000),
            "http://203.0.113.10:8000"
        );
        assert_eq!(
            worker_url(true, "example.org", 443),
            "https://example.org:443"
        );
        assert_eq!(worker_url(false, "::1", 41234), "http://[::1]:41234");
        assert_eq!(
            worker_url(true, "2001:db8::7", 1),
            "https://[2001:db8::7]:1"
        );
        assert_eq!(worker_url(false, "[::1]", 5), "http://[::1]:5");
    }

    #[test]
    fn engine_paths() {
        assert_eq!(
            join_engine_path("http://h:1", paths::WORKER_STATUS),
            "http://h:1/worker_status/"
        );
        assert_eq!(
            join_engine_path("http://h:1///", "/pubkey/"),
            "http://h:1/pubkey/"
        );
        assert_eq!(
            join_engine_path("http://h:1/api/", "route/"),
            "http://h:1/api/route/"
        );
    }

    #[test]
    fn report_addrs() {
        assert_eq!(
            parse_report_addrs("http://a, http://b/,,"),
            vec!["http://a", "http://b/"]
        );
        assert!(parse_report_addrs("").is_empty());
    }

    #[test]
    fn session_ids() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let id = new_session_id(&mut rng);
            assert!(is_session_id(&id), "{id}");
        }
        assert_ne!(new_session_id(&mut rng), new_session_id(&mut rng));
        assert!(!is_session_id("short"));
        assert!(!is_session_id("abcdefghijk-m"));
    }

    #[test]
    fn strtobool() {
        assert_eq!(parse_strtobool("TRUE"), Some(true));
        assert_eq!(parse_strtobool("on"), Some(true));
        assert_eq!(parse_strtobool("0"), Some(false));
        assert_eq!(parse_strtobool("Off"), Some(false));
        assert_eq!(parse_strtobool("maybe"), None);
        assert_eq!(parse_strtobool(""), None);
    }

    #[test]
    fn instances() {
        assert_eq!(
            autoscaler_url_for_instance("local"),
            "http://localhost:8080"
        );
        assert_eq!(autoscaler_url_for_instance("prod"), "https://run.vast.ai");
        assert_eq!(autoscaler_url_for_instance("bogus"), "https://run.vast.ai");
    }
}
