//! Worker configuration: the settings of `nullworker serve` (flags and
//! environment variables, PROTOCOL.md §8.1) and their validation into a
//! [`WorkerConfig`].
//!
//! Each setting is defined once, in the [`SETTINGS`] table (flag, variable
//! exactly as the protocol spells it, value name, help); the command line
//! is built from that table by the CLI crate, so this crate needs no
//! argument parser. [`ServeArgs`] is what the user gave (every value raw
//! text, so a bad value is reported with its variable's name instead of a
//! usage dump); [`WorkerConfig`] is the validated, typed result the rest of
//! the crate uses. Validation happens once, before any port is bound,
//! reports every problem at once ([`ConfigErrors`]), and loads the TLS
//! certificate so an unreadable file is a configuration error. This module
//! does no networking.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nullworker_protocol as protocol;

/// Default cap on a public request body (bytes); larger bodies get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default cap on connections the public and HTTP-only listeners hold open
/// at once (a client holds one or two; this leaves room for many clients
/// while bounding the memory a flood can take, about 15 KiB each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Largest accepted `NULLWORKER_MAX_CONNECTIONS`.
pub const MAX_MAX_CONNECTIONS: usize = 65_536;

/// One setting of `nullworker serve`: everything a command line needs to
/// offer it (flag, environment variable, value name, help), defined once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The [`ServeArgs`] field that holds it (also the argument's id).
    pub id: &'static str,
    /// The long flag, without its dashes.
    pub flag: &'static str,
    /// The environment variable, spelled as the protocol spells it (§8.1),
    /// or `NULLWORKER_*` for settings of our own; `None`: flag only.
    pub env: Option<&'static str>,
    /// Placeholder for the value in usage lines (`PORT`, `URL`, ...).
    pub value_name: &'static str,
    /// One-paragraph help, defaults in brackets.
    pub help: &'static str,
    /// The value is a secret: never shown in help or debug output.
    pub secret: bool,
}

impl Setting {
    /// How errors name it: `WORKER_PORT (--worker-port)`, or `--public-port`
    /// for a flag without a variable.
    pub fn label(&self) -> String {
        match self.env {
            Some(env) => format!("{env} (--{})", self.flag),
            None => format!("--{}", self.flag),
        }
    }
}

/// Defines [`ServeArgs`], one `Option<String>` field per setting, the
/// [`setting`] constants and the [`SETTINGS`] table from a single list.
macro_rules! serve_settings {
    ($(
        $konst:ident $field:ident {
            flag: $flag:literal,
            env: $env:expr,
            value: $value:literal,
            secret: $secret:literal,
            help: $help:literal $(,)?
        }
    )*) => {
        /// Every setting of `nullworker serve`, one constant each.
        pub mod setting {
            use super::Setting;
            $(
                #[doc = concat!("`--", $flag, "`: ", $help)]
                pub const $konst: Setting = Setting {
                    id: stringify!($field),
                    flag: $flag,
                    env: $env,
                    value_name: $value,
                    help: $help,
                    secret: $secret,
                };
            )*
        }

        /// Every setting of `nullworker serve`, in the order `--help` lists them.
        pub const SETTINGS: &[Setting] = &[$(setting::$konst),*];

        /// What the user gave `nullworker serve`, flag or environment
        /// variable, as raw text (so that a bad value is reported with its
        /// variable's name, and every bad value at once).
        #[derive(Clone, Default, PartialEq, Eq)]
        pub struct ServeArgs {
            $(
                #[doc = $help]
                pub $field: Option<String>,
            )*
        }

        impl ServeArgs {
            /// The value of the setting whose [`Setting::id`] is `id`.
            pub fn get(&self, id: &str) -> Option<&str> {
                match id {
                    $(stringify!($field) => self.$field.as_deref(),)*
                    _ => None,
                }
            }

            /// Sets the setting whose [`Setting::id`] is `id`; `false` when
            /// there is no such setting.
            pub fn set(&mut self, id: &str, value: String) -> bool {
                match id {
                    $(stringify!($field) => {
                        self.$field = Some(value);
                        true
                    })*
                    _ => false,
                }
            }
        }
    };
}

serve_settings! {
    CONTAINER_ID container_id {
        flag: "container-id", env: Some("CONTAINER_ID"), value: "ID", secret: false,
        help: "Integer id of this worker, sent as `id` / `worker_id` in reports.",
    }
    REPORT_ADDR report_addr {
        flag: "report-addr", env: Some("REPORT_ADDR"), value: "URLS", secret: false,
        help: "Engine base URL(s), comma-separated; reports fail over in order.",
    }
    MASTER_TOKEN master_token {
        flag: "master-token", env: Some("MASTER_TOKEN"), value: "TOKEN", secret: true,
        help: "Worker token sent as `mtoken`; bearer token of `/pyworker/update`.",
    }
    WORKER_PORT worker_port {
        flag: "worker-port", env: Some("WORKER_PORT"), value: "PORT", secret: false,
        help: "Port of the public listener (HTTP, or HTTPS with USE_SSL=true).",
    }
    WORKER_HTTP_PORT worker_http_port {
        flag: "worker-http-port", env: Some("WORKER_HTTP_PORT"), value: "PORT", secret: false,
        help: "Port of the HTTP-only `/session/end` listener [default: WORKER_PORT + 1].",
    }
    PUBLIC_PORT public_port {
        flag: "public-port", env: None, value: "PORT", secret: false,
        help: "External port mapped to WORKER_PORT, used in the worker URL \
               [default: the variable VAST_TCP_PORT_<WORKER_PORT>].",
    }
    PUBLIC_IPADDR public_ipaddr {
        flag: "public-ipaddr", env: Some("PUBLIC_IPADDR"), value: "ADDR", secret: false,
        help: "External IP address (or host name) used in the worker URL.",
    }
    USE_SSL use_ssl {
        flag: "use-ssl", env: Some("USE_SSL"), value: "BOOL", secret: false,
        help: "Exactly `true` serves the public listener over TLS and advertises https.",
    }
    UNSECURED unsecured {
        flag: "unsecured", env: Some("UNSECURED"), value: "BOOL", secret: false,
        help: "Disable the signature and `auth_data.url` checks (yes/no, true/false, \
               on/off, 1/0) [default: false].",
    }
    BACKEND_HEALTH_URL backend_health_url {
        flag: "backend-health-url", env: Some("BACKEND_HEALTH_URL"), value: "URL", secret: false,
        help: "Absolute http(s) URL of the consumer's health check [default: the \
               control server's own `/health` stub].",
    }
    NULL_CONTROL_PORT control_port {
        flag: "control-port", env: Some("NULL_CONTROL_PORT"), value: "PORT", secret: false,
        help: "Port of the loopback control server (`/release`, `/health`, `/session`) \
               [default: 18999].",
    }
    MAX_SESSIONS max_sessions {
        flag: "max-sessions", env: Some("NULLWORKER_MAX_SESSIONS"), value: "N", secret: false,
        help: "Sessions that may be open at once; 0 means unlimited [default: 1].",
    }
    HEALTH_INTERVAL health_interval {
        flag: "health-interval", env: Some("NULLWORKER_HEALTH_INTERVAL"), value: "SECONDS",
        secret: false,
        help: "Seconds between health checks of the consumer, 0.05 to 86400 [default: 10].",
    }
    TLS_CERT tls_cert {
        flag: "tls-cert", env: Some("NULLWORKER_TLS_CERT"), value: "FILE", secret: false,
        help: "TLS certificate chain (PEM) used with USE_SSL=true [default: /etc/instance.crt].",
    }
    TLS_KEY tls_key {
        flag: "tls-key", env: Some("NULLWORKER_TLS_KEY"), value: "FILE", secret: false,
        help: "TLS private key (PEM) used with USE_SSL=true [default: /etc/instance.key].",
    }
    BIND_AUTH_URL bind_auth_url {
        flag: "bind-auth-url", env: Some("NULLWORKER_BIND_AUTH_URL"), value: "BOOL",
        secret: false,
        help: "Require `auth_data.url` to be this worker's own URL (yes/no) [default: yes].",
    }
    MAX_BODY_BYTES max_body_bytes {
        flag: "max-body-bytes", env: Some("NULLWORKER_MAX_BODY_BYTES"), value: "BYTES",
        secret: false,
        help: "Largest accepted public request body in bytes, at least 1024 [default: 1048576].",
    }
    MAX_CONNECTIONS max_connections {
        flag: "max-connections", env: Some("NULLWORKER_MAX_CONNECTIONS"), value: "COUNT",
        secret: false,
        help: "Connections the public and HTTP-only listeners hold open at once, 1 to \
               65536; further ones wait until one closes [default: 1024].",
    }
    LISTEN_ADDR listen_addr {
        flag: "listen-addr", env: Some("NULLWORKER_LISTEN_ADDR"), value: "IP", secret: false,
        help: "Address the public and HTTP-only listeners bind [default: 0.0.0.0].",
    }
    FORCE_UPDATE_FILE force_update_file {
        flag: "force-update-file", env: Some("NULLWORKER_FORCE_UPDATE_FILE"), value: "FILE",
        secret: false,
        help: "File created by an authorised `/pyworker/update` [default: /.force_update].",
    }
    BUSY_POLL_US busy_poll_us {
        flag: "busy-poll-us", env: Some("NULLWORKER_BUSY_POLL_US"), value: "MICROSECONDS",
        secret: false,
        help: "Microseconds the worker keeps polling its sockets after an authenticated \
               request before it sleeps, so that a closely following request is answered \
               without waiting for an idle CPU to wake; 0 (off) to 100000 [default: 500].",
    }
}

impl std::fmt::Debug for ServeArgs {
    /// Lists the settings given, secrets redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("ServeArgs");
        for s in SETTINGS {
            if let Some(value) = self.get(s.id) {
                out.field(s.id, if s.secret { &"<redacted>" } else { &value });
            }
        }
        out.finish()
    }
}

/// A configuration value that cannot be used. The message names the
/// variable, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is absent or empty.
    #[error("{var} is not set: expected {expected}")]
    Missing {
        /// Variable (and flag) name.
        var: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// A variable holds an unusable value.
    #[error("{var}={value:?}: expected {expected}")]
    Invalid {
        /// Variable (and flag) name.
        var: String,
        /// The value found.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
}

impl ConfigError {
    fn invalid(var: impl Into<String>, value: &str, expected: impl Into<String>) -> Self {
        Self::Invalid {
            var: var.into(),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    fn missing(var: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::Missing {
            var: var.into(),
            expected: expected.into(),
        }
    }
}

/// Every problem of a configuration, in the order of [`SETTINGS`] (at least
/// one). Displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The problems, one message each.
    pub fn messages(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(ToString::to_string)
    }
}

/// What the health loop checks (§8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTarget {
    /// The control server's own `/health` stub: healthy while the worker runs.
    Stub,
    /// `BACKEND_HEALTH_URL`: an absolute http(s) URL, 200 means healthy.
    Url(url::Url),
}

/// The validated worker configuration.
#[derive(Clone)]
pub struct WorkerConfig {
    /// `CONTAINER_ID`.
    pub container_id: i64,
    /// `REPORT_ADDR` entries in order, trailing slashes removed.
    pub report_addrs: Vec<String>,
    /// `MASTER_TOKEN` (empty when unset).
    pub master_token: String,
    /// Address the public and HTTP-only listeners bind.
    pub listen_addr: IpAddr,
    /// `WORKER_PORT`.
    pub worker_port: u16,
    /// `WORKER_HTTP_PORT`.
    pub http_port: u16,
    /// `NULL_CONTROL_PORT` (bound on 127.0.0.1).
    pub control_port: u16,
    /// This worker's public URL (§8.2), as reported to the engine.
    pub worker_url: String,
    /// TLS server configuration of the public listener when `USE_SSL=true`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `UNSECURED`: no signature checks at all.
    pub unsecured: bool,
    /// Require `auth_data.url` to equal [`Self::worker_url`].
    pub bind_auth_url: bool,
    /// Health check target.
    pub health: HealthTarget,
    /// Time between health checks.
    pub health_interval: Duration,
    /// Open sessions allowed at once (`None` = unlimited).
    pub max_sessions: Option<usize>,
    /// Public request body cap in bytes.
    pub max_body_bytes: usize,
    /// Connections the public and HTTP-only listeners hold open at once.
    pub max_connections: usize,
    /// File written by `/pyworker/update`.
    pub force_update_file: PathBuf,
    /// Polling window after each request (zero: off); see [`crate::busy_poll`].
    pub busy_poll: Duration,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("container_id", &self.container_id)
            .field("report_addrs", &self.report_addrs)
            .field("master_token", &"<redacted>")
            .field("listen_addr", &self.listen_addr)
            .field("worker_port", &self.worker_port)
            .field("http_port", &self.http_port)
            .field("control_port", &self.control_port)
            .field("worker_url", &self.worker_url)
            .field("tls", &self.tls.is_some())
            .field("unsecured", &self.unsecured)
            .field("bind_auth_url", &self.bind_auth_url)
            .field("health", &self.health)
            .field("health_interval", &self.health_interval)
            .field("max_sessions", &self.max_sessions)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("force_update_file", &self.force_update_file)
            .field("busy_poll", &self.busy_poll)
            .finish()
    }
}

/// Where to send a launch-failure report (§8.5) when the rest of the
/// configuration is unusable: known when `CONTAINER_ID` and `REPORT_ADDR` are.
#[derive(Debug, Clone)]
pub struct BeaconTarget {
    /// `CONTAINER_ID`.
    pub container_id: i64,
    /// `REPORT_ADDR` entries.
    pub report_addrs: Vec<String>,
    /// `MASTER_TOKEN`.
    pub master_token: String,
    /// The worker URL if it could be derived, else empty.
    pub worker_url: String,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_port(var: &str, raw: &str) -> Result<u16, ConfigError> {
    match raw.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ConfigError::invalid(
            var,
            raw,
            "a TCP port number from 1 to 65535",
        )),
    }
}

fn parse_bool(var: &str, raw: &str) -> Result<bool, ConfigError> {
    protocol::parse_strtobool(raw.trim()).ok_or_else(|| {
        ConfigError::invalid(var, raw, "a boolean: yes/no, true/false, on/off or 1/0")
    })
}

fn parse_container_id(raw: Option<&str>) -> Result<i64, ConfigError> {
    let var = setting::CONTAINER_ID.label();
    let raw = raw.ok_or_else(|| ConfigError::missing(&var, "the integer id of this worker"))?;
    raw.parse::<i64>()
        .map_err(|_| ConfigError::invalid(var, raw, "an integer worker id"))
}

fn parse_report_addrs(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    const EXPECTED: &str = "comma-separated absolute http(s) engine URLs";
    let var = setting::REPORT_ADDR.label();
    let raw = raw.ok_or_else(|| ConfigError::missing(&var, EXPECTED))?;
    let entries = protocol::parse_report_addrs(raw);
    if entries.is_empty() {
        return Err(ConfigError::invalid(var, raw, EXPECTED));
    }
    entries
        .into_iter()
        .map(|entry| {
            let ok = url::Url::parse(&entry).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if ok {
                Ok(entry.trim_end_matches('/').to_owned())
            } else {
                Err(ConfigError::invalid(
                    &var,
                    raw,
                    format!("{EXPECTED} (entry {entry:?} is not one)"),
                ))
            }
        })
        .collect()
}

/// An optional setting parsed with `parse`, or `default` when unset.
fn optional<T>(
    raw: &Option<String>,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    non_empty(raw).map_or(Ok(default), parse)
}

/// `raw` parsed as a `T` accepted by `ok`, else an error naming `setting`
/// and `expected`.
fn parse_in<T: std::str::FromStr>(
    setting: &Setting,
    raw: &str,
    ok: impl FnOnce(&T) -> bool,
    expected: impl Into<String>,
) -> Result<T, ConfigError> {
    match raw.parse::<T>() {
        Ok(value) if ok(&value) => Ok(value),
        _ => Err(ConfigError::invalid(setting.label(), raw, expected)),
    }
}

/// The problems found so far; validation goes on after one, so that every
/// bad setting is reported at once.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value, or `None` after recording the problem.
    fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }

    /// The value, or `placeholder` after recording the problem (the
    /// placeholder is never used: validation fails).
    fn or<T>(&mut self, result: Result<T, ConfigError>, placeholder: T) -> T {
        self.check(result).unwrap_or(placeholder)
    }
}

impl ServeArgs {
    /// The launch-failure report target, if `CONTAINER_ID` and `REPORT_ADDR` are usable.
    pub fn beacon_target(&self) -> Option<BeaconTarget> {
        let container_id = parse_container_id(non_empty(&self.container_id)).ok()?;
        let report_addrs = parse_report_addrs(non_empty(&self.report_addr)).ok()?;
        let worker_url = self
            .worker_url_parts()
            .map_or_else(String::new, |(ssl, ip, port)| {
                protocol::worker_url(ssl, &ip, port)
            });
        Some(BeaconTarget {
            container_id,
            report_addrs,
            master_token: self.master_token.clone().unwrap_or_default(),
            worker_url,
        })
    }

    fn use_ssl(&self) -> bool {
        // Exactly "true", like the reference (§8.1).
        self.use_ssl.as_deref() == Some("true")
    }

    fn public_port(&self, worker_port: u16) -> Result<u16, ConfigError> {
        if let Some(raw) = non_empty(&self.public_port) {
            return parse_port(&setting::PUBLIC_PORT.label(), raw);
        }
        let var = format!("VAST_TCP_PORT_{worker_port}");
        match std::env::var(&var) {
            Ok(raw) if !raw.trim().is_empty() => parse_port(&var, &raw),
            _ => Err(ConfigError::missing(
                format!("{var} (--{})", setting::PUBLIC_PORT.flag),
                format!("the external port mapped to WORKER_PORT {worker_port}"),
            )),
        }
    }

    fn worker_url_parts(&self) -> Option<(bool, String, u16)> {
        let worker_port = parse_port("", non_empty(&self.worker_port)?).ok()?;
        let public_port = self.public_port(worker_port).ok()?;
        let ip = non_empty(&self.public_ipaddr)?.to_owned();
        Some((self.use_ssl(), ip, public_port))
    }

    /// Validates every value into a [`WorkerConfig`]; on failure the error
    /// lists every problem found, in the order of [`SETTINGS`].
    pub fn validate(&self) -> Result<WorkerConfig, ConfigErrors> {
        let mut problems = Problems::default();
        let container_id = problems.or(parse_container_id(non_empty(&self.container_id)), 0);
        let report_addrs = problems.or(parse_report_addrs(non_empty(&self.report_addr)), vec![]);
        let master_token = self.master_token.clone().unwrap_or_default();

        let worker_port_label = setting::WORKER_PORT.label();
        let worker_port = problems.check(match non_empty(&self.worker_port) {
            Some(raw) => parse_port(&worker_port_label, raw),
            None => Err(ConfigError::missing(
                &worker_port_label,
                "the port of the public listener",
            )),
        });
        let http_label = setting::WORKER_HTTP_PORT.label();
        let http_port = match (non_empty(&self.worker_http_port), worker_port) {
            (Some(raw), _) => problems.check(parse_port(&http_label, raw)),
            (None, Some(worker_port)) => problems.check(worker_port.checked_add(1).ok_or_else(|| {
                ConfigError::invalid(
                    &worker_port_label,
                    &worker_port.to_string(),
                    "a port below 65535 when WORKER_HTTP_PORT is unset (it defaults to WORKER_PORT + 1)",
                )
            })),
            (None, None) => None,
        };
        if let (Some(http), Some(public)) = (http_port, worker_port) {
            if http == public {
                problems.0.push(ConfigError::invalid(
                    &http_label,
                    &http.to_string(),
                    "a port different from WORKER_PORT",
                ));
            }
        }
        let public_port = match worker_port {
            Some(worker_port) => problems.check(self.public_port(worker_port)),
            None => non_empty(&self.public_port)
                .and_then(|raw| problems.check(parse_port(&setting::PUBLIC_PORT.label(), raw))),
        };
        let ip_label = setting::PUBLIC_IPADDR.label();
        let public_ip = problems.check(match non_empty(&self.public_ipaddr) {
            None => Err(ConfigError::missing(
                &ip_label,
                "the external IP address of this instance",
            )),
            Some(ip) if ip.contains(['/', ' ', '?', '#', '@']) => Err(ConfigError::invalid(
                &ip_label,
                ip,
                "an IP address or host name",
            )),
            Some(ip) => Ok(ip),
        });
        let use_ssl = self.use_ssl();

        let unsecured = problems.or(
            optional(&self.unsecured, false, |raw| {
                parse_bool(&setting::UNSECURED.label(), raw)
            }),
            false,
        );
        let bind_auth_url = problems.or(
            optional(&self.bind_auth_url, true, |raw| {
                parse_bool(&setting::BIND_AUTH_URL.label(), raw)
            }),
            true,
        );
        let health = problems.or(
            optional(&self.backend_health_url, HealthTarget::Stub, |raw| {
                url::Url::parse(raw)
                    .ok()
                    .filter(|u| {
                        matches!(u.scheme(), "http" | "https")
                            && u.host_str().is_some_and(|h| !h.is_empty())
                    })
                    .map(HealthTarget::Url)
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            setting::BACKEND_HEALTH_URL.label(),
                            raw,
                            "an absolute http(s) URL with a host, e.g. http://127.0.0.1:9090/health",
                        )
                    })
            }),
            HealthTarget::Stub,
        );
        let control_label = setting::NULL_CONTROL_PORT.label();
        let control_port = problems.check(optional(
            &self.control_port,
            protocol::DEFAULT_NULL_CONTROL_PORT,
            |raw| parse_port(&control_label, raw),
        ));
        if let Some(control) = control_port {
            if Some(control) == worker_port || Some(control) == http_port {
                problems.0.push(ConfigError::invalid(
                    &control_label,
                    &control.to_string(),
                    "a port different from WORKER_PORT and WORKER_HTTP_PORT",
                ));
            }
        }

        let max_sessions = problems.or(
            optional(&self.max_sessions, Some(1), |raw| {
                parse_in::<usize>(
                    &setting::MAX_SESSIONS,
                    raw,
                    |_| true,
                    "a non-negative integer (0 = unlimited)",
                )
                .map(|n| (n > 0).then_some(n))
            }),
            None,
        );
        let health_interval = problems.or(
            optional(&self.health_interval, Duration::from_secs(10), |raw| {
                parse_in::<f64>(
                    &setting::HEALTH_INTERVAL,
                    raw,
                    |s| s.is_finite() && (0.05..=86_400.0).contains(s),
                    "a number of seconds from 0.05 to 86400",
                )
                .map(Duration::from_secs_f64)
            }),
            Duration::ZERO,
        );
        let busy_poll = problems.or(
            optional(
                &self.busy_poll_us,
                crate::busy_poll::DEFAULT_WINDOW,
                |raw| {
                    parse_in::<u64>(
                        &setting::BUSY_POLL_US,
                        raw,
                        |us| Duration::from_micros(*us) <= crate::busy_poll::MAX_WINDOW,
                        format!(
                            "a whole number of microseconds from 0 (off) to {}",
                            crate::busy_poll::MAX_WINDOW.as_micros()
                        ),
                    )
                    .map(Duration::from_micros)
                },
            ),
            Duration::ZERO,
        );
        let max_body_bytes = problems.or(
            optional(&self.max_body_bytes, DEFAULT_MAX_BODY_BYTES, |raw| {
                parse_in::<usize>(
                    &setting::MAX_BODY_BYTES,
                    raw,
                    |n| *n >= 1024,
                    "a number of bytes, at least 1024",
                )
            }),
            0,
        );
        let max_connections = problems.or(
            optional(&self.max_connections, DEFAULT_MAX_CONNECTIONS, |raw| {
                parse_in::<usize>(
                    &setting::MAX_CONNECTIONS,
                    raw,
                    |n| (1..=MAX_MAX_CONNECTIONS).contains(n),
                    format!("a whole number of connections from 1 to {MAX_MAX_CONNECTIONS}"),
                )
            }),
            0,
        );
        let listen_addr = problems.or(
            optional(&self.listen_addr, IpAddr::from([0, 0, 0, 0]), |raw| {
                parse_in::<IpAddr>(
                    &setting::LISTEN_ADDR,
                    raw,
                    |_| true,
                    "an IP address such as 0.0.0.0 or 127.0.0.1",
                )
            }),
            IpAddr::from([0, 0, 0, 0]),
        );
        let force_update_file = PathBuf::from(
            non_empty(&self.force_update_file).unwrap_or(protocol::FORCE_UPDATE_FILE),
        );

        let tls = if use_ssl {
            let cert = non_empty(&self.tls_cert).unwrap_or(protocol::DEFAULT_TLS_CERT);
            let key = non_empty(&self.tls_key).unwrap_or(protocol::DEFAULT_TLS_KEY);
            problems
                .check(load_tls(
                    std::path::Path::new(cert),
                    std::path::Path::new(key),
                ))
                .map(Arc::new)
        } else {
            None
        };

        match (worker_port, http_port, public_port, public_ip, control_port) {
            (
                Some(worker_port),
                Some(http_port),
                Some(public_port),
                Some(public_ip),
                Some(control_port),
            ) if problems.0.is_empty() => Ok(WorkerConfig {
                container_id,
                report_addrs,
                master_token,
                listen_addr,
                worker_port,
                http_port,
                control_port,
                worker_url: protocol::worker_url(use_ssl, public_ip, public_port),
                tls,
                unsecured,
                bind_auth_url,
                health,
                health_interval,
                max_sessions,
                max_body_bytes,
                max_connections,
                force_update_file,
                busy_poll,
            }),
            _ => Err(ConfigErrors(problems.0)),
        }
    }
}

/// Loads a PEM certificate chain and private key into a rustls server
/// configuration (ring provider, HTTP/1.1 only).
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ConfigError> {
    let cert_var = setting::TLS_CERT.label();
    let key_var = setting::TLS_KEY.label();
    let cert_shown = cert.display().to_string();
    let key_shown = key.display().to_string();

    let cert_pem = std::fs::read(cert).map_err(|e| {
        ConfigError::invalid(
            &cert_var,
            &cert_shown,
            format!("a readable PEM certificate file with USE_SSL=true ({e})"),
        )
    })?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::invalid(
                &cert_var,
                &cert_shown,
                format!("a PEM certificate chain ({e})"),
            )
        })?;
    if chain.is_empty() {
        return Err(ConfigError::invalid(
            &cert_var,
            &cert_shown,
            "a PEM file with at least one CERTIFICATE block",
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| {
        ConfigError::invalid(
            &key_var,
            &key_shown,
            format!("a readable PEM private key file with USE_SSL=true ({e})"),
        )
    })?;
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            ConfigError::invalid(&key_var, &key_shown, format!("a PEM private key ({e})"))
        })?
        .ok_or_else(|| {
            ConfigError::invalid(
                &key_var,
                &key_shown,
                "a PEM file with a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            ConfigError::invalid(&cert_var, &cert_shown, format!("usable TLS settings ({e})"))
        })?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            ConfigError::invalid(
                &key_var,
                &key_shown,
                format!("the private key matching {cert_shown} ({e})"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServeArgs {
        ServeArgs {
            container_id: Some("7".into()),
            report_addr: Some("http://127.0.0.1:9/, http://127.0.0.1:10".into()),
            worker_port: Some("3000".into()),
            public_port: Some("41234".into()),
            public_ipaddr: Some("203.0.113.10".into()),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn defaults() {
        let c = base().validate().unwrap();
        assert_eq!(c.container_id, 7);
        assert_eq!(
            c.report_addrs,
            ["http://127.0.0.1:9", "http://127.0.0.1:10"]
        );
        assert_eq!(c.http_port, 3001);
        assert_eq!(c.control_port, 18999);
        assert_eq!(c.worker_url, "http://203.0.113.10:41234");
        assert_eq!(c.max_sessions, Some(1));
        assert_eq!(c.health, HealthTarget::Stub);
        assert_eq!(c.health_interval, Duration::from_secs(10));
        assert!(c.bind_auth_url && !c.unsecured && c.tls.is_none());
        assert_eq!(c.master_token, "");
        assert_eq!(c.busy_poll, Duration::from_micros(500));
    }

    #[test]
    fn max_connections_is_a_count_from_1() {
        let max = |raw: &str| {
            let mut a = base();
            a.max_connections = Some(raw.into());
            a.validate().map(|c| c.max_connections)
        };
        assert_eq!(base().validate().unwrap().max_connections, 1024);
        assert_eq!(max("1"), Ok(1));
        assert_eq!(max("65536"), Ok(65_536));
        for bad in ["0", "65537", "-3", "many", "1.5"] {
            let msg = max(bad).unwrap_err().to_string();
            assert!(
                msg.contains("NULLWORKER_MAX_CONNECTIONS")
                    && msg.contains(&format!("{bad:?}"))
                    && msg.contains("from 1 to 65536"),
                "{msg}"
            );
        }
    }

    #[test]
    fn busy_poll_window_is_microseconds_up_to_a_limit() {
        let window = |raw: &str| {
            let mut a = base();
            a.busy_poll_us = Some(raw.into());
            a.validate().map(|c| c.busy_poll)
        };
        assert_eq!(window("0"), Ok(Duration::ZERO));
        assert_eq!(window("250"), Ok(Duration::from_micros(250)));
        assert_eq!(window("100000"), Ok(Duration::from_millis(100)));
        for bad in ["100001", "-1", "0.5", "soon"] {
            let msg = window(bad).unwrap_err().to_string();
            assert!(
                msg.contains("NULLWORKER_BUSY_POLL_US")
                    && msg.contains(&format!("{bad:?}"))
                    && msg.contains("0 (off) to 100000"),
                "{msg}"
            );
        }
    }

    #[test]
    fn errors_name_variable_and_value() {
        let mut a = base();
        a.worker_port = Some("abc".into());
        let msg = a.validate().unwrap_err().to_string();
        assert!(
            msg.contains("WORKER_PORT") && msg.contains("\"abc\""),
            "{msg}"
        );

        let mut a = base();
        a.backend_health_url = Some("/health".into());
        let msg = a.validate().unwrap_err().to_string();
        assert!(
            msg.contains("BACKEND_HEALTH_URL") && msg.contains("absolute"),
            "{msg}"
        );

        let mut a = base();
        a.container_id = None;
        let msg = a.validate().unwrap_err().to_string();
        assert!(
            msg.contains("CONTAINER_ID is not set")
                || msg.contains("CONTAINER_ID (--container-id) is not set"),
            "{msg}"
        );

        let mut a = base();
        a.unsecured = Some("maybe".into());
        assert!(a.validate().unwrap_err().to_string().contains("UNSECURED"));

        let mut a = base();
        a.use_ssl = Some("true".into());
        a.tls_cert = Some("/nonexistent/cert.pem".into());
        let msg = a.validate().unwrap_err().to_string();
        assert!(
            msg.contains("NULLWORKER_TLS_CERT") && msg.contains("/nonexistent/cert.pem"),
            "{msg}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_in_table_order() {
        let args = ServeArgs {
            worker_port: Some("abc".into()),
            unsecured: Some("maybe".into()),
            max_connections: Some("0".into()),
            ..ServeArgs::default()
        };
        let err = args.validate().unwrap_err();
        let messages: Vec<String> = err.messages().collect();
        let expected = [
            "CONTAINER_ID (--container-id) is not set",
            "REPORT_ADDR (--report-addr) is not set",
            "WORKER_PORT (--worker-port)=\"abc\"",
            "PUBLIC_IPADDR (--public-ipaddr) is not set",
            "UNSECURED (--unsecured)=\"maybe\"",
            "NULLWORKER_MAX_CONNECTIONS (--max-connections)=\"0\"",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, start) in messages.iter().zip(expected) {
            assert!(
                message.starts_with(start),
                "{message:?} should start with {start:?}"
            );
        }
        assert_eq!(err.to_string().lines().count(), expected.len());
    }

    #[test]
    fn dependent_checks_still_run_beside_other_problems() {
        let mut a = base();
        a.container_id = None;
        a.worker_http_port = Some("3000".into());
        a.control_port = Some("3000".into());
        let messages: Vec<String> = a.validate().unwrap_err().messages().collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(
            messages[1].contains("different from WORKER_PORT"),
            "{messages:#?}"
        );
        assert!(messages[2].contains("NULL_CONTROL_PORT"), "{messages:#?}");
    }

    #[test]
    fn the_table_names_each_setting_once_with_protocol_variables() {
        let mut ids = std::collections::HashSet::new();
        let mut flags = std::collections::HashSet::new();
        let mut envs = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(ids.insert(s.id), "{s:?}");
            assert!(flags.insert(s.flag), "{s:?}");
            if let Some(env) = s.env {
                assert!(envs.insert(env), "{s:?}");
                assert!(
                    protocol::WORKER_ENV_VARS.contains(&env) || env.starts_with("NULLWORKER_"),
                    "{env} is neither a protocol variable nor one of ours"
                );
            }
            let mut args = ServeArgs::default();
            assert!(args.set(s.id, "x".into()), "{s:?}");
            assert_eq!(args.get(s.id), Some("x"));
        }
        for var in protocol::WORKER_ENV_VARS {
            assert!(envs.contains(var), "{var} has no setting");
        }
        assert!(!ServeArgs::default().set("no_such_setting", "x".into()));
    }

    #[test]
    fn debug_output_hides_the_master_token() {
        let mut a = base();
        a.master_token = Some("very-secret".into());
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("very-secret") && shown.contains("master_token"),
            "{shown}"
        );
        assert!(shown.contains("203.0.113.10"), "{shown}");
    }

    #[test]
    fn use_ssl_is_exactly_true() {
        let mut a = base();
        a.use_ssl = Some("TRUE".into());
        assert_eq!(
            a.validate().unwrap().worker_url,
            "http://203.0.113.10:41234"
        );
    }

    #[test]
    fn ipv6_is_bracketed_and_max_sessions_zero_is_unlimited() {
        let mut a = base();
        a.public_ipaddr = Some("2001:db8::7".into());
        a.max_sessions = Some("0".into());
        let c = a.validate().unwrap();
        assert_eq!(c.worker_url, "http://[2001:db8::7]:41234");
        assert_eq!(c.max_sessions, None);
    }

    #[test]
    fn beacon_target_needs_only_id_and_addr() {
        let mut a = base();
        a.worker_port = Some("x".into());
        let t = a.beacon_target().unwrap();
        assert_eq!(t.container_id, 7);
        assert_eq!(t.worker_url, "");
        a.container_id = Some("seven".into());
        assert!(a.beacon_target().is_none());
    }
}
