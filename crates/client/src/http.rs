//! The one HTTP helper every SDK call goes through (PROTOCOL.md §2): bearer
//! key in the header *and* the `api_key` query parameter, JSON bodies, and a
//! reply that is never an error just because of its status.
//!
//! Owns the reqwest client (rustls with the ring provider, optional extra root
//! CA) and [`Reply`]. Retry policy is the callers' business, except
//! [`Http::send_with_retries`] used for the web API (the `retry` module's
//! schedule, driven by `backon`).

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use backon::Retryable as _;

use crate::error::{truncate_body, Error, Step};
use crate::retry;

/// A response of any status.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body as text.
    pub text: String,
    /// Body parsed as JSON when it looks like JSON (starts with `{` or `[`).
    pub json: Option<Value>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn retryable(&self) -> bool {
        nullworker_protocol::is_retryable_status(self.status)
    }

    /// The error for a final non-2xx reply.
    pub fn status_error(&self, step: Step, url: &str) -> Error {
        Error::Status {
            step,
            url: url.to_owned(),
            status: self.status,
            body: truncate_body(&self.text),
        }
    }

    /// The JSON body of a 2xx reply, or an [`Error::InvalidReply`].
    pub fn json_or_invalid(&self, step: Step, url: &str) -> Result<&Value, Error> {
        self.json.as_ref().ok_or_else(|| Error::InvalidReply {
            step,
            url: url.to_owned(),
            reason: format!("expected JSON, got {:?}", truncate_body(&self.text)),
        })
    }
}

/// The shared HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
}

impl Http {
    /// Builds the client, trusting `extra_ca` (a PEM file with one or more
    /// certificates) on top of the built-in web roots.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("nullworker-sdk/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(16)
            .connect_timeout(Duration::from_secs(10));
        if let Some(path) = extra_ca {
            for cert in read_pem_certificates(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| Error::HttpClient(crate::error::transport_reason(&e)))?;
        Ok(Self { client })
    }

    /// The underlying client, for calls whose answer is not JSON.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    /// One request. `key` goes into `Authorization: Bearer <key>` and the
    /// `api_key` query parameter (both present even when empty). `body` is
    /// sent as JSON for non-GET methods.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        key: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, reqwest::Error> {
        let is_get = method == Method::GET;
        let mut request = self
            .client
            .request(method, url)
            .bearer_auth(key)
            .query(&[("api_key", key)])
            .timeout(timeout);
        if let (Some(body), false) = (body, is_get) {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let trimmed = text.trim_start();
        let json = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            serde_json::from_str(trimmed).ok()
        } else {
            None
        };
        Ok(Reply { status, text, json })
    }

    /// A POST without the common conventions: JSON body only, no
    /// `Authorization` header and no query key (used by `/get_endpoint_workers/`).
    pub async fn post_plain(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Reply, reqwest::Error> {
        let response = self
            .client
            .post(url)
            .json(body)
            .timeout(timeout)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let json = serde_json::from_str(text.trim()).ok();
        Ok(Reply { status, text, json })
    }

    /// A GET without the common conventions: no `Authorization` header and
    /// no query key (the worker's control server refuses unknown parameters).
    pub async fn get_plain(&self, url: &str, timeout: Duration) -> Result<Reply, reqwest::Error> {
        let response = self.client.get(url).timeout(timeout).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let json = serde_json::from_str(text.trim()).ok();
        Ok(Reply { status, text, json })
    }

    /// [`Self::send`] retried on retryable statuses and transport errors, up
    /// to `attempts` attempts with the SDK's helper backoff. The last reply
    /// (of any status) is returned; the last transport error becomes
    /// [`Error::Transport`].
    #[allow(clippy::too_many_arguments)]
    pub async fn send_with_retries(
        &self,
        step: Step,
        method: Method,
        url: &str,
        key: &str,
        body: Option<&Value>,
        timeout: Duration,
        attempts: u32,
        max_delay: Duration,
        progress: Option<&crate::Progress>,
    ) -> Result<Reply, Error> {
        let mut attempt = 1u32;
        let outcome = (|| async {
            match self.send(method.clone(), url, key, body, timeout).await {
                Ok(reply) if reply.retryable() => Err(Failure::Status(reply)),
                Ok(reply) => Ok(reply),
                Err(err) => Err(Failure::Transport(err)),
            }
        })
        .retry(retry::web(attempts, max_delay))
        .notify(|failure, delay| {
            let what = match failure {
                Failure::Status(reply) => format!("answered HTTP {}", reply.status),
                Failure::Transport(err) => crate::error::transport_reason(err),
            };
            tracing::debug!(%url, %what, ?delay, "retrying");
            if let Some(progress) = progress {
                progress(&crate::RouteEvent::Retrying {
                    reason: format!(
                        "{url}: {what}; attempt {attempt} of {attempts} failed, retrying in {:.1} s",
                        delay.as_secs_f64()
                    ),
                });
            }
            attempt += 1;
        })
        .await;
        match outcome {
            Ok(reply) | Err(Failure::Status(reply)) => Ok(reply),
            Err(Failure::Transport(err)) => Err(Error::transport(step, url, &err)),
        }
    }
}

/// Why an attempt is worth another: a retryable status or a transport error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 408, 429 or 5xx.
    Status(Reply),
    /// No answer.
    Transport(reqwest::Error),
}

/// Reads every certificate of a PEM file, failing when there is none.
fn read_pem_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let fail = |reason: String| Error::CaCert {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut reader = std::io::BufReader::new(bytes.as_slice());
    let ders = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not valid PEM: {e}")))?;
    if ders.is_empty() {
        return Err(fail(
            "no \"BEGIN CERTIFICATE\" block found; expected a PEM certificate".to_owned(),
        ));
    }
    ders.iter()
        .map(|der| {
            reqwest::Certificate::from_der(der.as_ref())
                .map_err(|e| fail(format!("unusable certificate: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("nw-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let err = Http::new(Some(&empty)).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("BEGIN CERTIFICATE"),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err = Http::new(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
