//! Client configuration: which route service and web API to talk to, the
//! account key, TLS trust and retry timing, validated once by
//! [`ClientBuilder::build`].
//!
//! Owns [`Instance`], [`RetryPolicy`] and [`ClientBuilder`]; the HTTP work
//! itself lives in `http` and `client`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// A Vast route-service deployment (the SDK's `instance` argument, PROTOCOL.md §1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Instance {
    /// `https://run.vast.ai` (the Python SDK's default).
    #[default]
    Prod,
    /// `https://run-alpha.vast.ai`.
    Alpha,
    /// `https://run-candidate.vast.ai`.
    Candidate,
    /// A local engine on this machine: `http://127.0.0.1:8080` for both APIs.
    Local,
}

impl Instance {
    /// Every instance, in the order shown in help texts.
    pub const ALL: [Instance; 4] = [Self::Prod, Self::Alpha, Self::Candidate, Self::Local];

    /// The name used on the command line and by the Python SDK.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prod => "prod",
            Self::Alpha => "alpha",
            Self::Candidate => "candidate",
            Self::Local => "local",
        }
    }

    /// Route service base URL.
    ///
    /// `local` is `http://127.0.0.1:8080` rather than the Python SDK's
    /// `http://localhost:8080`: the local engine binds the IPv4 loopback, and
    /// `localhost` may resolve to `::1` first.
    pub fn autoscaler_url(self) -> &'static str {
        match self {
            Self::Prod => "https://run.vast.ai",
            Self::Alpha => "https://run-alpha.vast.ai",
            Self::Candidate => "https://run-candidate.vast.ai",
            Self::Local => LOCAL_URL,
        }
    }

    /// Web API base URL. Unlike the Python SDK, `local` also moves the web API
    /// to the local engine, which serves both APIs on one port.
    pub fn webserver_url(self) -> &'static str {
        match self {
            Self::Local => LOCAL_URL,
            _ => "https://console.vast.ai",
        }
    }
}

const LOCAL_URL: &str = "http://127.0.0.1:8080";

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown instance name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance {0:?}: expected one of prod, alpha, candidate, local")]
pub struct ParseInstanceError(pub String);

impl FromStr for Instance {
    type Err = ParseInstanceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| ParseInstanceError(s.to_owned()))
    }
}

/// Timing of polls and retries. The defaults are the Python SDK's.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Sleep before the first re-poll of a WAITING route (1 s).
    pub first_poll: Duration,
    /// Cap of the jittered poll interval and of retry backoff (5 s).
    pub max_poll_interval: Duration,
    /// Attempts of a web API call on retryable statuses and transport errors (5).
    pub web_attempts: u32,
    /// Consecutive `/route/` failures (transport errors or retryable statuses)
    /// tolerated before routing gives up (5). The Python SDK tolerates none.
    pub route_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_poll: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(5),
            web_attempts: 5,
            route_attempts: 5,
        }
    }
}

/// Builder of a [`Client`](crate::Client); see [`Client::builder`](crate::Client::builder).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) api_key: String,
    pub(crate) instance: Instance,
    pub(crate) autoscaler_url: Option<String>,
    pub(crate) webserver_url: Option<String>,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) retry: RetryPolicy,
}

impl ClientBuilder {
    pub(crate) fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            instance: Instance::default(),
            autoscaler_url: None,
            webserver_url: None,
            ca_cert: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Selects the route service and web API by deployment name.
    pub fn instance(mut self, instance: Instance) -> Self {
        self.instance = instance;
        self
    }

    /// Overrides the route service base URL (wins over [`Self::instance`]).
    pub fn autoscaler_url(mut self, url: impl Into<String>) -> Self {
        self.autoscaler_url = Some(url.into());
        self
    }

    /// Overrides the web API base URL (wins over [`Self::instance`]).
    pub fn webserver_url(mut self, url: impl Into<String>) -> Self {
        self.webserver_url = Some(url.into());
        self
    }

    /// Trusts an extra root CA (PEM file) in addition to the built-in roots,
    /// e.g. Vast's root for workers that serve HTTPS. Nothing is downloaded.
    pub fn extra_root_ca(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(pem_file.into());
        self
    }

    /// Replaces the poll and retry timing.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Validates the configuration and builds the client.
    pub fn build(self) -> Result<crate::Client, Error> {
        crate::Client::from_builder(self)
    }
}

/// Checks that `url` is an absolute http(s) URL and returns it without a
/// trailing slash. `what` names the setting in the error.
pub(crate) fn normalise_base_url(what: &str, url: &str) -> Result<String, Error> {
    let parsed = url::Url::parse(url).map_err(|e| {
        Error::Config(format!(
            "{what} {url:?} is not a valid URL ({e}); expected e.g. http://127.0.0.1:8080"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::Config(format!(
            "{what} {url:?} must be an http:// or https:// URL with a host"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::Config(format!(
            "{what} {url:?} must not have a query or fragment"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_round_trip() {
        for i in Instance::ALL {
            assert_eq!(i.as_str().parse::<Instance>(), Ok(i));
        }
        let err = "staging".parse::<Instance>().unwrap_err();
        assert!(err.to_string().contains("\"staging\""), "{err}");
    }

    #[test]
    fn instance_urls() {
        assert_eq!(Instance::Prod.autoscaler_url(), "https://run.vast.ai");
        assert_eq!(
            Instance::Alpha.autoscaler_url(),
            "https://run-alpha.vast.ai"
        );
        assert_eq!(
            Instance::Candidate.autoscaler_url(),
            "https://run-candidate.vast.ai"
        );
        assert_eq!(Instance::Local.autoscaler_url(), "http://127.0.0.1:8080");
        assert_eq!(Instance::Local.webserver_url(), "http://127.0.0.1:8080");
        assert_eq!(Instance::Alpha.webserver_url(), "https://console.vast.ai");
    }

    #[test]
    fn base_urls_are_checked_and_normalised() {
        assert_eq!(
            normalise_base_url("x", "http://127.0.0.1:9/").unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            normalise_base_url("x", "https://h/api").unwrap(),
            "https://h/api"
        );
        for bad in ["127.0.0.1:8080", "ftp://h", "http://h/?a=1", "not a url"] {
            let err = normalise_base_url("--autoscaler-url", bad).unwrap_err();
            assert!(err.to_string().contains("--autoscaler-url"), "{err}");
        }
    }
}
