//! The consumer's side of a reservation: what a queue consumer on the
//! instance calls when its unit of work is done (PROTOCOL.md §5.8).
//!
//! Owns [`release`] only; it needs no account or session credentials.

use std::time::Duration;

use nullworker_protocol::{paths, ReleaseResponse};
use reqwest::Method;

use crate::error::{truncate_body, Error, Step};
use crate::http::Http;

/// `POST <control_url>/release` on the null worker's loopback control server
/// (e.g. `http://127.0.0.1:18999`): closes every session the worker holds.
/// `{"released": false, ...}` (nothing to release) is a normal answer.
pub async fn release(control_url: &str) -> Result<ReleaseResponse, Error> {
    let step = Step::Release;
    let url = format!("{}{}", control_url.trim_end_matches('/'), paths::RELEASE);
    let http = Http::new(None)?;
    let reply = http
        .send(Method::POST, &url, "", None, Duration::from_secs(15))
        .await
        .map_err(|e| Error::transport(step.clone(), &url, &e))?;
    if !reply.ok() {
        return Err(reply.status_error(step, &url));
    }
    let value = reply.json_or_invalid(step.clone(), &url)?.clone();
    serde_json::from_value(value).map_err(|e| Error::InvalidReply {
        step,
        url,
        reason: format!("{e}: {}", truncate_body(&reply.text)),
    })
}
