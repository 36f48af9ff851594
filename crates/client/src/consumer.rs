//! The consumer's side of a reservation: what a queue consumer on the
//! instance calls to learn whether its worker is reserved and to release it
//! when its unit of work is done (PROTOCOL.md §5.8).
//!
//! Owns [`release`] and [`session_status`]; they need no account or session
//! credentials.

use std::time::Duration;

use nullworker_protocol::{paths, ReleaseResponse, SessionStatusResponse};
use reqwest::Method;

use crate::error::{truncate_body, Error, Step};
use crate::http::{Http, Reply};

/// Time allowed for a control-server answer beyond any requested wait.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

/// `POST <control_url>/release` on the null worker's loopback control server
/// (e.g. `http://127.0.0.1:18999`): closes every session the worker holds.
/// `{"released": false, ...}` (nothing to release) is a normal answer.
pub async fn release(control_url: &str) -> Result<ReleaseResponse, Error> {
    let step = Step::Release;
    let url = format!("{}{}", control_url.trim_end_matches('/'), paths::RELEASE);
    let http = Http::new(None)?;
    let reply = http
        .send(Method::POST, &url, "", None, CONTROL_TIMEOUT)
        .await
        .map_err(|e| Error::transport(step.clone(), &url, &e))?;
    parse_reply(step, url, &reply)
}

/// `GET <control_url>/session[?wait=S]` on the null worker's control server
/// (our extension): whether the worker holds a session now, which one, and
/// until when. With `wait`, the worker answers as soon as a session is held,
/// or `{"held": false}` once `wait` has passed; `None` answers at once.
/// `wait` is at most [`SessionStatusResponse::MAX_WAIT_SECS`] (else
/// [`Error::Config`]). A consumer takes a job only after `held` is true, so
/// it never works on a worker nobody reserved (one that may be stopped at
/// any moment).
pub async fn session_status(
    control_url: &str,
    wait: Option<Duration>,
) -> Result<SessionStatusResponse, Error> {
    let step = Step::SessionStatus;
    let max = SessionStatusResponse::MAX_WAIT_SECS;
    let wait = wait.unwrap_or(Duration::ZERO);
    if wait.as_secs_f64() > max {
        return Err(Error::Config(format!(
            "session status wait {:.3} s: expected at most {max} s",
            wait.as_secs_f64()
        )));
    }
    let mut url = format!(
        "{}{}",
        control_url.trim_end_matches('/'),
        paths::SESSION_STATUS
    );
    if !wait.is_zero() {
        url.push_str(&format!("?wait={:.3}", wait.as_secs_f64()));
    }
    let http = Http::new(None)?;
    let reply = http
        .get_plain(&url, wait + CONTROL_TIMEOUT)
        .await
        .map_err(|e| Error::transport(step.clone(), &url, &e))?;
    parse_reply(step, url, &reply)
}

/// The typed body of a 2xx control-server reply, or the error naming why not.
fn parse_reply<T: serde::de::DeserializeOwned>(
    step: Step,
    url: String,
    reply: &Reply,
) -> Result<T, Error> {
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
