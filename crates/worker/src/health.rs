//! The consumer health check (PROTOCOL.md §8.3): GET `BACKEND_HEALTH_URL`
//! at once and then every interval; until the first success, sooner (see
//! [`next_check_in`]), so a consumer that starts beside the worker makes it
//! ready within milliseconds instead of at the next 10 s tick. The first success makes the worker ready
//! (with the key, see [`crate::app`]); before it failures are only logged,
//! after it any failure records a sticky `error_msg` (Q12). With no
//! `BACKEND_HEALTH_URL` the target is the control server's own stub, which is
//! healthy for as long as the worker runs, so no request is made.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::HealthTarget;

/// HTTP timeout of one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long startup waits for the first success (§8.3).
pub const STARTUP_WAIT: Duration = Duration::from_secs(300);

/// First delay between startup checks; it doubles up to the interval.
const STARTUP_FIRST_RETRY: Duration = Duration::from_millis(25);
/// How often a consumer that is not healthy yet is logged at info level
/// while its message stays the same.
const STARTUP_LOG_EVERY: Duration = Duration::from_secs(30);

/// How long to wait before the next check: the interval once the consumer
/// has been healthy; before that, 25 ms doubling with each failed check
/// (`failures` ≥ 1), never more than the interval.
pub fn next_check_in(healthy_once: bool, failures: u32, interval: Duration) -> Duration {
    if healthy_once {
        return interval;
    }
    let doublings = failures.saturating_sub(1).min(16);
    (STARTUP_FIRST_RETRY * (1u32 << doublings)).min(interval)
}

/// One check: `Ok` on HTTP 200, else the error text the reference records.
pub async fn check_once(client: &reqwest::Client, url: &url::Url) -> Result<(), String> {
    match client.get(url.clone()).timeout(CHECK_TIMEOUT).send().await {
        Ok(resp) if resp.status() == http::StatusCode::OK => Ok(()),
        Ok(resp) => Err(format!(
            "Healthcheck failed with status: {}",
            resp.status().as_u16()
        )),
        Err(err) => Err(format!("Healthcheck failed: {err}")),
    }
}

/// Whether a failed startup check is logged at info level: when its message
/// differs from the previous one (the first included), else once every
/// [`STARTUP_LOG_EVERY`].
fn startup_log_due(
    changed: bool,
    last_logged: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
) -> bool {
    changed || last_logged.is_none_or(|at| now.saturating_duration_since(at) >= STARTUP_LOG_EVERY)
}

/// Runs until shutdown.
pub async fn health_loop(app: Arc<App>) {
    let url = match &app.config.health {
        HealthTarget::Stub => {
            app.health_succeeded_once();
            return;
        }
        HealthTarget::Url(url) => url.clone(),
    };
    let started = tokio::time::Instant::now();
    let mut healthy_once = false;
    let mut startup_failed = false;
    let mut last_failure: Option<String> = None;
    let mut startup_failures = 0u32;
    let mut last_startup_log: Option<tokio::time::Instant> = None;
    loop {
        let outcome = tokio::select! {
            () = app.shutdown.cancelled() => return,
            outcome = check_once(app.http.for_url(url.as_str()), &url) => outcome,
        };
        match outcome {
            Ok(()) => {
                if !healthy_once {
                    healthy_once = true;
                    last_failure = None;
                    tracing::info!(%url, "consumer health check passed");
                    app.health_succeeded_once();
                } else if last_failure.take().is_some() {
                    tracing::info!(%url, "consumer health check passes again (the error stays reported)");
                }
            }
            Err(message) if healthy_once => {
                if last_failure.as_deref() != Some(message.as_str()) {
                    tracing::warn!(%url, %message, "consumer health check failed");
                }
                app.record_error(&message);
                last_failure = Some(message);
            }
            Err(message) => {
                startup_failures = startup_failures.saturating_add(1);
                // At info the first time, when the reason changes and every
                // 30 s: the consumer not coming up is why the worker stays
                // LOADING, and the log is where a user looks for it.
                let now = tokio::time::Instant::now();
                let changed = last_failure.as_deref() != Some(message.as_str());
                if startup_log_due(changed, last_startup_log, now) {
                    tracing::info!(%url, %message, waited_s = started.elapsed().as_secs(), "consumer not healthy yet");
                    last_startup_log = Some(now);
                } else {
                    tracing::debug!(%url, %message, "consumer not healthy yet");
                }
                last_failure = Some(message);
                if !startup_failed && started.elapsed() >= STARTUP_WAIT {
                    startup_failed = true;
                    app.record_error(&format!(
                        "Lifecycle startup failed: Timed out waiting for healthcheck after lifecycle ready ({}s)",
                        STARTUP_WAIT.as_secs()
                    ));
                }
            }
        }
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            () = tokio::time::sleep(next_check_in(healthy_once, startup_failures, app.config.health_interval)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unhealthy_consumer_is_logged_when_its_message_changes_and_every_30_s() {
        let t0 = tokio::time::Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        // (message changed, last info line, now, logged at info)
        let cases = [
            (true, None, s(0), true),
            (false, None, s(0), true),
            (false, Some(s(0)), s(1), false),
            (false, Some(s(0)), s(29), false),
            (false, Some(s(0)), s(30), true),
            (true, Some(s(0)), s(1), true),
            (false, Some(s(10)), s(5), false),
        ];
        for (changed, last, now, due) in cases {
            assert_eq!(
                startup_log_due(changed, last, now),
                due,
                "{changed} {last:?} {now:?}"
            );
        }
    }

    #[test]
    fn startup_checks_back_off_to_the_interval() {
        let interval = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=12)
            .map(|n| next_check_in(false, n, interval).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(next_check_in(false, u32::MAX, interval), interval);
        assert_eq!(next_check_in(true, 3, interval), interval);
        let short = Duration::from_millis(30);
        assert_eq!(next_check_in(false, 5, short), short);
    }
}
