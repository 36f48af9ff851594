//! Worker configuration: the `nullworker serve` flags and environment
//! variables (PROTOCOL.md §8.1), and their validation into a [`WorkerConfig`].
//!
//! [`ServeArgs`] is what the user typed (every value a raw string, so a bad
//! value can be reported with its variable name instead of a clap usage
//! dump); [`WorkerConfig`] is the validated, typed result the rest of the
//! crate uses. Validation happens once, before any port is bound, and loads
//! the TLS certificate so an unreadable file is a configuration error. This
//! module does no networking.

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

/// Options of `nullworker serve`. Every option can also be set through the
/// environment variable named in its help; the protocol's variables keep the
/// reference names, the settings of our own start with `NULLWORKER_`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Integer id of this worker, sent as `id` / `worker_id` in reports.
    #[arg(long, env = "CONTAINER_ID", value_name = "ID")]
    pub container_id: Option<String>,

    /// Engine base URL(s), comma-separated; reports fail over in order.
    #[arg(long, env = "REPORT_ADDR", value_name = "URLS")]
    pub report_addr: Option<String>,

    /// Worker token sent as `mtoken`; bearer token of `/pyworker/update`.
    #[arg(
        long,
        env = "MASTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub master_token: Option<String>,

    /// Port of the public listener (HTTP, or HTTPS with USE_SSL=true).
    #[arg(long, env = "WORKER_PORT", value_name = "PORT")]
    pub worker_port: Option<String>,

    /// Port of the HTTP-only `/session/end` listener [default: WORKER_PORT + 1].
    #[arg(long, env = "WORKER_HTTP_PORT", value_name = "PORT")]
    pub worker_http_port: Option<String>,

    /// External port mapped to WORKER_PORT, used in the worker URL
    /// [default: the variable VAST_TCP_PORT_<WORKER_PORT>].
    #[arg(long, value_name = "PORT")]
    pub public_port: Option<String>,

    /// External IP address (or host name) used in the worker URL.
    #[arg(long, env = "PUBLIC_IPADDR", value_name = "ADDR")]
    pub public_ipaddr: Option<String>,

    /// Exactly `true` serves the public listener over TLS and advertises https.
    #[arg(long, env = "USE_SSL", value_name = "BOOL")]
    pub use_ssl: Option<String>,

    /// Disable the signature and `auth_data.url` checks (yes/no, true/false,
    /// on/off, 1/0) [default: false].
    #[arg(long, env = "UNSECURED", value_name = "BOOL")]
    pub unsecured: Option<String>,

    /// Absolute http(s) URL of the consumer's health check [default: the
    /// control server's own `/health` stub].
    #[arg(long, env = "BACKEND_HEALTH_URL", value_name = "URL")]
    pub backend_health_url: Option<String>,

    /// Port of the loopback control server (`/release`, `/health`, `/session`) [default: 18999].
    #[arg(long, env = "NULL_CONTROL_PORT", value_name = "PORT")]
    pub control_port: Option<String>,

    /// Sessions that may be open at once; 0 means unlimited [default: 1].
    #[arg(long, env = "NULLWORKER_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<String>,

    /// Seconds between health checks of the consumer [default: 10].
    #[arg(long, env = "NULLWORKER_HEALTH_INTERVAL", value_name = "SECONDS")]
    pub health_interval: Option<String>,

    /// TLS certificate chain (PEM) used with USE_SSL=true [default: /etc/instance.crt].
    #[arg(long, env = "NULLWORKER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) used with USE_SSL=true [default: /etc/instance.key].
    #[arg(long, env = "NULLWORKER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Require `auth_data.url` to be this worker's own URL (yes/no) [default: yes].
    #[arg(long, env = "NULLWORKER_BIND_AUTH_URL", value_name = "BOOL")]
    pub bind_auth_url: Option<String>,

    /// Largest accepted public request body in bytes [default: 1048576].
    #[arg(long, env = "NULLWORKER_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<String>,

    /// Connections the public and HTTP-only listeners hold open at once;
    /// further ones wait until one closes [default: 1024].
    #[arg(long, env = "NULLWORKER_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<String>,

    /// Address the public and HTTP-only listeners bind [default: 0.0.0.0].
    #[arg(long, env = "NULLWORKER_LISTEN_ADDR", value_name = "IP")]
    pub listen_addr: Option<String>,

    /// File created by an authorised `/pyworker/update` [default: /.force_update].
    #[arg(long, env = "NULLWORKER_FORCE_UPDATE_FILE", value_name = "FILE")]
    pub force_update_file: Option<PathBuf>,

    /// Microseconds the worker keeps polling its sockets after an
    /// authenticated request before it sleeps, so that a closely following
    /// request is answered without waiting for an idle CPU to wake; 0 turns
    /// this off [default: 500].
    #[arg(long, env = "NULLWORKER_BUSY_POLL_US", value_name = "MICROSECONDS")]
    pub busy_poll_us: Option<String>,
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
    const VAR: &str = "CONTAINER_ID (--container-id)";
    let raw = raw.ok_or_else(|| ConfigError::missing(VAR, "the integer id of this worker"))?;
    raw.parse::<i64>()
        .map_err(|_| ConfigError::invalid(VAR, raw, "an integer worker id"))
}

fn parse_report_addrs(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    const VAR: &str = "REPORT_ADDR (--report-addr)";
    const EXPECTED: &str = "comma-separated absolute http(s) engine URLs";
    let raw = raw.ok_or_else(|| ConfigError::missing(VAR, EXPECTED))?;
    let entries = protocol::parse_report_addrs(raw);
    if entries.is_empty() {
        return Err(ConfigError::invalid(VAR, raw, EXPECTED));
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
                    VAR,
                    raw,
                    format!("{EXPECTED} (entry {entry:?} is not one)"),
                ))
            }
        })
        .collect()
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
            return parse_port("--public-port", raw);
        }
        let var = format!("VAST_TCP_PORT_{worker_port}");
        match std::env::var(&var) {
            Ok(raw) if !raw.trim().is_empty() => parse_port(&var, &raw),
            _ => Err(ConfigError::missing(
                format!("{var} (--public-port)"),
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

    /// Validates every value into a [`WorkerConfig`]; the first problem wins.
    pub fn validate(&self) -> Result<WorkerConfig, ConfigError> {
        let container_id = parse_container_id(non_empty(&self.container_id))?;
        let report_addrs = parse_report_addrs(non_empty(&self.report_addr))?;
        let master_token = self.master_token.clone().unwrap_or_default();

        let worker_port = match non_empty(&self.worker_port) {
            Some(raw) => parse_port("WORKER_PORT (--worker-port)", raw)?,
            None => {
                return Err(ConfigError::missing(
                    "WORKER_PORT (--worker-port)",
                    "the port of the public listener",
                ))
            }
        };
        let http_port = match non_empty(&self.worker_http_port) {
            Some(raw) => parse_port("WORKER_HTTP_PORT (--worker-http-port)", raw)?,
            None => worker_port.checked_add(1).ok_or_else(|| {
                ConfigError::invalid(
                    "WORKER_PORT (--worker-port)",
                    &worker_port.to_string(),
                    "a port below 65535 when WORKER_HTTP_PORT is unset (it defaults to WORKER_PORT + 1)",
                )
            })?,
        };
        if http_port == worker_port {
            return Err(ConfigError::invalid(
                "WORKER_HTTP_PORT (--worker-http-port)",
                &http_port.to_string(),
                "a port different from WORKER_PORT",
            ));
        }
        let public_port = self.public_port(worker_port)?;
        let public_ip = non_empty(&self.public_ipaddr).ok_or_else(|| {
            ConfigError::missing(
                "PUBLIC_IPADDR (--public-ipaddr)",
                "the external IP address of this instance",
            )
        })?;
        if public_ip.contains(['/', ' ', '?', '#', '@']) {
            return Err(ConfigError::invalid(
                "PUBLIC_IPADDR (--public-ipaddr)",
                public_ip,
                "an IP address or host name",
            ));
        }
        let use_ssl = self.use_ssl();
        let worker_url = protocol::worker_url(use_ssl, public_ip, public_port);

        let unsecured = match non_empty(&self.unsecured) {
            Some(raw) => parse_bool("UNSECURED (--unsecured)", raw)?,
            None => false,
        };
        let bind_auth_url = match non_empty(&self.bind_auth_url) {
            Some(raw) => parse_bool("NULLWORKER_BIND_AUTH_URL (--bind-auth-url)", raw)?,
            None => true,
        };

        let health = match non_empty(&self.backend_health_url) {
            None => HealthTarget::Stub,
            Some(raw) => {
                let parsed = url::Url::parse(raw).ok().filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some_and(|h| !h.is_empty())
                });
                match parsed {
                    Some(url) => HealthTarget::Url(url),
                    None => return Err(ConfigError::invalid(
                        "BACKEND_HEALTH_URL (--backend-health-url)",
                        raw,
                        "an absolute http(s) URL with a host, e.g. http://127.0.0.1:9090/health",
                    )),
                }
            }
        };
        let control_port = match non_empty(&self.control_port) {
            Some(raw) => parse_port("NULL_CONTROL_PORT (--control-port)", raw)?,
            None => protocol::DEFAULT_NULL_CONTROL_PORT,
        };
        if control_port == worker_port || control_port == http_port {
            return Err(ConfigError::invalid(
                "NULL_CONTROL_PORT (--control-port)",
                &control_port.to_string(),
                "a port different from WORKER_PORT and WORKER_HTTP_PORT",
            ));
        }

        let max_sessions = match non_empty(&self.max_sessions) {
            None => Some(1),
            Some(raw) => match raw.parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(ConfigError::invalid(
                        "NULLWORKER_MAX_SESSIONS (--max-sessions)",
                        raw,
                        "a non-negative integer (0 = unlimited)",
                    ))
                }
            },
        };
        let health_interval = match non_empty(&self.health_interval) {
            None => Duration::from_secs(10),
            Some(raw) => match raw.parse::<f64>() {
                Ok(s) if s.is_finite() && (0.05..=86_400.0).contains(&s) => {
                    Duration::from_secs_f64(s)
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "NULLWORKER_HEALTH_INTERVAL (--health-interval)",
                        raw,
                        "a number of seconds from 0.05 to 86400",
                    ))
                }
            },
        };
        let busy_poll = match non_empty(&self.busy_poll_us) {
            None => crate::busy_poll::DEFAULT_WINDOW,
            Some(raw) => match raw.parse::<u64>() {
                Ok(us) if Duration::from_micros(us) <= crate::busy_poll::MAX_WINDOW => {
                    Duration::from_micros(us)
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "NULLWORKER_BUSY_POLL_US (--busy-poll-us)",
                        raw,
                        format!(
                            "a whole number of microseconds from 0 (off) to {}",
                            crate::busy_poll::MAX_WINDOW.as_micros()
                        ),
                    ))
                }
            },
        };
        let max_body_bytes = match non_empty(&self.max_body_bytes) {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if n >= 1024 => n,
                _ => {
                    return Err(ConfigError::invalid(
                        "NULLWORKER_MAX_BODY_BYTES (--max-body-bytes)",
                        raw,
                        "a number of bytes, at least 1024",
                    ))
                }
            },
        };
        let max_connections = match non_empty(&self.max_connections) {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_MAX_CONNECTIONS).contains(&n) => n,
                _ => {
                    return Err(ConfigError::invalid(
                        "NULLWORKER_MAX_CONNECTIONS (--max-connections)",
                        raw,
                        format!("a whole number of connections from 1 to {MAX_MAX_CONNECTIONS}"),
                    ))
                }
            },
        };
        let listen_addr = match non_empty(&self.listen_addr) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(raw) => raw.parse::<IpAddr>().map_err(|_| {
                ConfigError::invalid(
                    "NULLWORKER_LISTEN_ADDR (--listen-addr)",
                    raw,
                    "an IP address such as 0.0.0.0 or 127.0.0.1",
                )
            })?,
        };
        let force_update_file = self
            .force_update_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(protocol::FORCE_UPDATE_FILE));

        let tls = if use_ssl {
            let cert = self
                .tls_cert
                .clone()
                .unwrap_or_else(|| PathBuf::from(protocol::DEFAULT_TLS_CERT));
            let key = self
                .tls_key
                .clone()
                .unwrap_or_else(|| PathBuf::from(protocol::DEFAULT_TLS_KEY));
            Some(Arc::new(load_tls(&cert, &key)?))
        } else {
            None
        };

        Ok(WorkerConfig {
            container_id,
            report_addrs,
            master_token,
            listen_addr,
            worker_port,
            http_port,
            control_port,
            worker_url,
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
        })
    }
}

/// Loads a PEM certificate chain and private key into a rustls server
/// configuration (ring provider, HTTP/1.1 only).
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ConfigError> {
    const CERT_VAR: &str = "NULLWORKER_TLS_CERT (--tls-cert)";
    const KEY_VAR: &str = "NULLWORKER_TLS_KEY (--tls-key)";
    let cert_shown = cert.display().to_string();
    let key_shown = key.display().to_string();

    let cert_pem = std::fs::read(cert).map_err(|e| {
        ConfigError::invalid(
            CERT_VAR,
            &cert_shown,
            format!("a readable PEM certificate file with USE_SSL=true ({e})"),
        )
    })?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::invalid(
                CERT_VAR,
                &cert_shown,
                format!("a PEM certificate chain ({e})"),
            )
        })?;
    if chain.is_empty() {
        return Err(ConfigError::invalid(
            CERT_VAR,
            &cert_shown,
            "a PEM file with at least one CERTIFICATE block",
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| {
        ConfigError::invalid(
            KEY_VAR,
            &key_shown,
            format!("a readable PEM private key file with USE_SSL=true ({e})"),
        )
    })?;
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| ConfigError::invalid(KEY_VAR, &key_shown, format!("a PEM private key ({e})")))?
        .ok_or_else(|| {
            ConfigError::invalid(
                KEY_VAR,
                &key_shown,
                "a PEM file with a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            ConfigError::invalid(CERT_VAR, &cert_shown, format!("usable TLS settings ({e})"))
        })?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            ConfigError::invalid(
                KEY_VAR,
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
