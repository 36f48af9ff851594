//! Talking to the engine: the public-key fetch (PROTOCOL.md §6.4, trying each
//! `REPORT_ADDR` entry, Q5 hardened), `/worker_status/` reports (§10.1 cadence
//! plus immediate reports on readiness, errors and session changes, Q8
//! hardened), `/delete_requests/` batches (§10.3), the last report at
//! shutdown and the launch-failure beacon (§8.5).
//!
//! Report contents come from [`crate::metrics`]; this module only decides
//! when to send and delivers with the reference's retry and failover policy,
//! except that a body the engine refuses with a 4xx other than 408 and 429
//! is not sent again: a refused report's per-interval totals and a refused
//! delete batch are dropped with a warning, so one bad body cannot wedge the
//! reports (and get the worker declared stale).
//!
//! `backon` runs both retry loops (report delivery and the key fetch), as it
//! does the SDK's: the schedules are the protocol's constant lists, and
//! tokio's sleep drives them, so tests pin them on a paused clock.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ConstantBuilder, Retryable as _};
use nullworker_protocol::{self as protocol, paths, DeleteRequests, VerifyingKey, WorkerStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{App, HttpClients};
use crate::config::BeaconTarget;

/// Report loop tick (§10.1).
const TICK: Duration = Duration::from_secs(1);
/// Heartbeat threshold (§10.1): a loaded worker sends when more than this passed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Attempts per address, HTTP timeout and the sleep after a failed attempt (§10.2).
const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_SLEEP: Duration = Duration::from_secs(2);
/// Smallest spacing between two immediate reports: bursts of session events
/// are coalesced into one report instead of one per event.
const MIN_GAP: Duration = Duration::from_millis(20);
/// Largest `/delete_requests/` batch.
const MAX_DELETE_BATCH: usize = 2_000;
/// Public key fetch: attempts and the sleeps between them (§6.4).
const PUBKEY_BACKOFF: [u64; 4] = [1, 2, 4, 8];
/// Error recorded when the key cannot be fetched (§6.4).
pub const PUBKEY_ERROR: &str = "Failed to get Serverless public key after all retry attempts";
/// Per-attempt timeout of the last report at shutdown and of the beacon.
const FINAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How hard to try delivering one body.
#[derive(Debug, Clone, Copy)]
struct Policy {
    attempts: u32,
    timeout: Duration,
    retry_sleep: Duration,
}

const NORMAL: Policy = Policy {
    attempts: ATTEMPTS,
    timeout: TIMEOUT,
    retry_sleep: RETRY_SLEEP,
};
const FINAL: Policy = Policy {
    attempts: 1,
    timeout: FINAL_TIMEOUT,
    retry_sleep: Duration::ZERO,
};

/// Used GiB of the root file system, if it can be read.
pub fn disk_used_gib() -> Option<f64> {
    let path = c"/";
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs writes into `stat`, which lives for the call; the path is NUL-terminated.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0 means the structure was filled in.
    let stat = unsafe { stat.assume_init() };
    let used_blocks = (stat.f_blocks as f64) - (stat.f_bfree as f64);
    Some(used_blocks * stat.f_frsize as f64 / f64::from(1u32 << 30))
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// An address answered 2xx.
    Delivered,
    /// No address took it, and one answered a 4xx other than 408 and 429:
    /// the engine understood the body and will not take it, so sending the
    /// same body again cannot succeed.
    Refused(u16),
    /// Every attempt failed (transport errors, timeouts, 408, 429, 5xx).
    Failed,
}

/// Whether an answer with `status` means the body itself was refused
/// (retrying it cannot help): a 4xx the SDK would not retry.
fn refuses_the_body(status: u16) -> bool {
    (400..500).contains(&status) && !protocol::is_retryable_status(status)
}

/// How one POST of a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// 2xx.
    Delivered,
    /// A 4xx that retrying cannot fix (see [`refuses_the_body`]).
    Refused(u16),
    /// Transport error, timeout, 408, 429 or 5xx: worth another attempt.
    Failed,
}

/// POSTs `body` to `path` on each address in order with `policy`, until one
/// answers 2xx. An address that refuses the body (see [`refuses_the_body`])
/// is not tried again; the next one is.
async fn deliver(
    clients: &HttpClients,
    addrs: &[String],
    path: &str,
    body: &[u8],
    policy: Policy,
    cancel: &CancellationToken,
) -> Delivery {
    deliver_with(addrs, policy, cancel, |addr, attempt| {
        let url = protocol::join_engine_path(addr, path);
        let request = clients
            .for_url(&url)
            .post(&url)
            .timeout(policy.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        async move {
            match request.send().await {
                Ok(resp) if resp.status().is_success() => Attempt::Delivered,
                Ok(resp) if refuses_the_body(resp.status().as_u16()) => {
                    let status = resp.status().as_u16();
                    let answer = resp.text().await.unwrap_or_default();
                    let answer: String = answer.chars().take(200).collect();
                    tracing::warn!(%url, status, %answer, "engine refused the body; not retrying it");
                    Attempt::Refused(status)
                }
                Ok(resp) => {
                    tracing::warn!(%url, attempt, status = resp.status().as_u16(), "engine did not take a report");
                    Attempt::Failed
                }
                Err(err) => {
                    tracing::warn!(%url, attempt, error = %err, "report delivery failed");
                    Attempt::Failed
                }
            }
        }
    })
    .await
}

/// The delivery policy of §10.2 around `post` (one attempt at an address;
/// the attempt number counts from 1): for each address in order, up to
/// `policy.attempts` attempts with `policy.retry_sleep` after every failed
/// one, the last included (the reference sleeps after its third failure
/// too, so `backon` retries and the trailing sleep follows it). A refused
/// body moves on to the next address at once. Cancelling `cancel` ends the
/// delivery as failed, in an attempt or a sleep.
async fn deliver_with<F, Fut>(
    addrs: &[String],
    policy: Policy,
    cancel: &CancellationToken,
    mut post: F,
) -> Delivery
where
    F: FnMut(&str, u32) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let retries = usize::try_from(policy.attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let schedule = ConstantBuilder::new()
        .with_delay(policy.retry_sleep)
        .with_max_times(retries);
    let mut refused = None;
    for addr in addrs {
        let mut attempt = 0;
        let post = &mut post;
        let tries = (move || {
            attempt += 1;
            let sent = post(addr, attempt);
            async move {
                match sent.await {
                    Attempt::Delivered => Ok(()),
                    other => Err(other),
                }
            }
        })
        .retry(schedule)
        .when(|failure| *failure == Attempt::Failed);
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Delivery::Failed,
            outcome = tries => outcome,
        };
        match outcome {
            Ok(()) => return Delivery::Delivered,
            Err(Attempt::Refused(status)) => refused = Some(status),
            Err(_) => {
                if !policy.retry_sleep.is_zero() {
                    tokio::select! {
                        () = cancel.cancelled() => return Delivery::Failed,
                        () = tokio::time::sleep(policy.retry_sleep) => {}
                    }
                }
            }
        }
    }
    refused.map_or(Delivery::Failed, Delivery::Refused)
}

/// Waits until [`MIN_GAP`] after the previous send, then records this one;
/// `false` if shutdown came first.
async fn pace(last_send: &mut Option<Instant>, shutdown: &CancellationToken) -> bool {
    if let Some(last) = *last_send {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep_until(last + MIN_GAP) => {}
        }
    }
    *last_send = Some(Instant::now());
    true
}

/// Sends `/worker_status/` on the §10.1 cadence and at once on urgent events.
pub async fn status_loop(app: Arc<App>) {
    let mut baseline = disk_used_gib().unwrap_or(0.0);
    let mut last_answered: Option<Instant> = None;
    let mut last_send: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let urgent = tokio::select! {
            biased;
            () = app.shutdown.cancelled() => return,
            () = app.report_now.notified() => true,
            _ = tick.tick() => false,
        };
        let elapsed = last_answered.map(|t| t.elapsed());
        let due = match elapsed {
            None => true,
            Some(elapsed) if !app.metrics.loaded() => elapsed >= HEARTBEAT,
            Some(elapsed) => app.metrics.update_pending() || elapsed > HEARTBEAT,
        };
        if !(urgent || due) {
            continue;
        }
        if !pace(&mut last_send, &app.shutdown).await {
            return;
        }
        app.report_taken();
        // A refused report was answered too: the engine is up, and the next
        // report (without the dropped totals) follows the usual cadence.
        if send_status(&app, &mut baseline, NORMAL, &app.shutdown).await != Delivery::Failed {
            last_answered = Some(Instant::now());
        }
    }
}

/// Builds and delivers one `/worker_status/`. Commits the counters when it
/// was delivered, and also when it was refused: the per-interval totals it
/// carried are then dropped (with a warning), since a body the engine
/// refuses would be refused again, and keeping them would only make every
/// later report carry them too, until the engine declared the worker stale.
async fn send_status(
    app: &App,
    baseline: &mut f64,
    policy: Policy,
    cancel: &CancellationToken,
) -> Delivery {
    let snapshot = app.metrics.snapshot();
    let mut status = snapshot.status;
    let disk = disk_used_gib();
    fill_identity(app, &mut status);
    if let Some(used) = disk {
        status.disk_usage = Some(used);
        status.additional_disk_usage = used - *baseline;
    }
    let body = serde_json::to_vec(&status).expect("a worker status always serialises");
    let delivered = deliver(
        &app.http,
        &app.config.report_addrs,
        paths::WORKER_STATUS,
        &body,
        policy,
        cancel,
    )
    .await;
    match delivered {
        Delivery::Delivered => {
            app.metrics.commit(snapshot.sent);
            if let Some(used) = disk {
                *baseline = used;
            }
            tracing::debug!(cur_load = status.cur_load, error_msg = %status.error_msg, "worker status reported");
        }
        Delivery::Refused(answer) => {
            app.metrics.commit(snapshot.sent);
            tracing::warn!(
                status = answer,
                new_load = status.new_load,
                cur_perf = status.cur_perf,
                rej_load = status.rej_load,
                "the engine refused a worker status; its per-interval totals are dropped"
            );
        }
        Delivery::Failed => {}
    }
    delivered
}

fn fill_identity(app: &App, status: &mut WorkerStatus) {
    status.id = app.config.container_id;
    status.mtoken = app.config.master_token.clone();
    status.url = app.config.worker_url.clone();
}

/// Sends queued `/delete_requests/` every second and soon after session closes.
pub async fn deletes_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_send: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = app.shutdown.cancelled() => return,
            () = app.deletes_now.notified() => {}
            () = app.metrics.deletes_ready.notified() => {}
            _ = tick.tick() => {}
        }
        if app.metrics.pending_deletes() == 0 {
            continue;
        }
        if !pace(&mut last_send, &app.shutdown).await {
            return;
        }
        send_deletes(&app, NORMAL, &app.shutdown).await;
    }
}

/// Delivers the queued delete records in batches; stops at the first failure.
async fn send_deletes(app: &App, policy: Policy, cancel: &CancellationToken) -> bool {
    let addrs = delete_addrs(&app.config.report_addrs);
    let mut drained = 0;
    loop {
        let batch = app.metrics.peek_deletes(MAX_DELETE_BATCH);
        if batch.is_empty() {
            if drained >= TRIM_AFTER_RECORDS {
                crate::memory::release_free_memory().await;
            }
            return true;
        }
        let n = batch.len();
        let body = DeleteRequests {
            worker_id: app.config.container_id,
            mtoken: app.config.master_token.clone(),
            requests: batch,
        };
        let body = serde_json::to_vec(&body).expect("delete requests always serialise");
        match deliver(
            &app.http,
            &addrs,
            paths::DELETE_REQUESTS,
            &body,
            policy,
            cancel,
        )
        .await
        {
            Delivery::Delivered => {}
            Delivery::Refused(status) => tracing::warn!(
                status,
                records = n,
                "the engine refused a batch of finished requests; it is dropped"
            ),
            Delivery::Failed => return false,
        }
        app.metrics.drop_deletes(n);
        drained += n;
    }
}

/// A backlog of at least this many delete records (left by a burst of plain
/// requests while the engine was slow to take them) is worth returning the
/// freed heap to the system for once it has drained; a steady trickle of
/// small batches never triggers it.
const TRIM_AFTER_RECORDS: usize = 10_000;

/// The `REPORT_ADDR` entries that take `/delete_requests/`: all but the
/// literal `https://cloud.vast.ai/api/v0`, which the reference skips (§10.3).
fn delete_addrs(report_addrs: &[String]) -> Vec<String> {
    let skipped = protocol::DELETE_REQUESTS_SKIPPED_ADDR.trim_end_matches('/');
    report_addrs
        .iter()
        .filter(|addr| addr.trim_end_matches('/') != skipped)
        .cloned()
        .collect()
}

/// The last report at shutdown: pending deletes, then the status, one quick attempt per address.
pub async fn final_report(app: &App) {
    let never = CancellationToken::new();
    send_deletes(app, FINAL, &never).await;
    let mut baseline = disk_used_gib().unwrap_or(0.0);
    if send_status(app, &mut baseline, FINAL, &never).await == Delivery::Delivered {
        tracing::info!("last report sent");
    } else {
        tracing::warn!("last report could not be delivered");
    }
}

/// Fetches the engine's public key (§6.4): five rounds over every address,
/// sleeping 1, 2, 4, 8 s between rounds. Records an error on failure unless
/// `UNSECURED` (Q7 hardened).
pub async fn fetch_pubkey(app: Arc<App>) {
    let addrs = &app.config.report_addrs;
    let http = &app.http;
    let fetched = fetch_in_rounds(&app.shutdown, |round| async move {
        for addr in addrs {
            let url = protocol::join_engine_path(addr, paths::PUBKEY);
            match fetch_key_once(http.for_url(&url), &url).await {
                Ok(key) => return Some(key),
                Err(reason) => {
                    tracing::warn!(%url, attempt = round, %reason, "public key fetch failed")
                }
            }
        }
        None
    })
    .await;
    match fetched {
        KeyFetch::Loaded(key) => app.key_loaded(key),
        KeyFetch::Cancelled => {}
        KeyFetch::GaveUp if app.config.unsecured => {
            tracing::warn!("{PUBKEY_ERROR} (ignored: UNSECURED is set)");
        }
        KeyFetch::GaveUp => app.record_error(PUBKEY_ERROR),
    }
}

/// How the key fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFetch<K> {
    /// A round produced the key.
    Loaded(K),
    /// Every round failed.
    GaveUp,
    /// Shutdown came first.
    Cancelled,
}

/// Runs `round` (numbered from 1) until it yields a key: at most
/// `PUBKEY_BACKOFF.len() + 1` rounds, sleeping the [`PUBKEY_BACKOFF`] delays
/// between them and not after the last.
async fn fetch_in_rounds<K, F, Fut>(cancel: &CancellationToken, mut round: F) -> KeyFetch<K>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Option<K>>,
{
    let mut n = 0;
    let rounds = (move || {
        n += 1;
        let fetched = round(n);
        async move { fetched.await.ok_or(()) }
    })
    .retry(PUBKEY_BACKOFF.map(Duration::from_secs).into_iter());
    tokio::select! {
        biased;
        () = cancel.cancelled() => KeyFetch::Cancelled,
        fetched = rounds => fetched.map_or(KeyFetch::GaveUp, KeyFetch::Loaded),
    }
}

async fn fetch_key_once(client: &reqwest::Client, url: &str) -> Result<VerifyingKey, String> {
    let resp = client
        .get(url)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("status {}", status.as_u16()));
    }
    let text = resp.text().await.map_err(|e| e.to_string())?;
    VerifyingKey::from_pem(&text).map_err(|e| e.to_string())
}

/// Sends one launch-failure report (§8.5): `error_msg` "Worker Server failed
/// to launch: <reason>", `max_perf` 0, one quick attempt per address.
pub async fn send_beacon(target: &BeaconTarget, reason: &str) -> bool {
    let status = WorkerStatus {
        id: target.container_id,
        mtoken: target.master_token.clone(),
        version: protocol::FRAMEWORK_VERSION.to_owned(),
        loadtime: 0.0,
        cur_load: 0.0,
        rej_load: 0.0,
        new_load: 0.0,
        error_msg: format!("Worker Server failed to launch: {reason}"),
        max_perf: 0.0,
        cur_perf: 0.0,
        cur_capacity: 0.0,
        max_capacity: 0.0,
        num_requests_working: 0,
        num_requests_recieved: 0,
        additional_disk_usage: 0.0,
        disk_usage: disk_used_gib(),
        working_request_idxs: Vec::new(),
        url: target.worker_url.clone(),
    };
    let body = serde_json::to_vec(&status).expect("a worker status always serialises");
    let client = HttpClients::new();
    deliver(
        &client,
        &target.report_addrs,
        paths::WORKER_STATUS,
        &body,
        FINAL,
        &CancellationToken::new(),
    )
    .await
        == Delivery::Delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_batches_skip_the_reference_cloud_address() {
        let addrs = [
            "https://cloud.vast.ai/api/v0".to_owned(),
            "https://run.vast.ai".to_owned(),
            "https://cloud.vast.ai/api/v0/".to_owned(),
            "https://cloud.vast.ai/api/v1".to_owned(),
        ];
        assert_eq!(
            delete_addrs(&addrs),
            ["https://run.vast.ai", "https://cloud.vast.ai/api/v1"]
        );
    }

    #[test]
    fn only_a_4xx_that_retrying_cannot_fix_refuses_the_body() {
        for status in [400, 401, 403, 404, 405, 413, 422, 499] {
            assert!(refuses_the_body(status), "{status}");
        }
        for status in [200, 204, 301, 408, 429, 500, 502, 503] {
            assert!(!refuses_the_body(status), "{status}");
        }
    }

    /// Seconds since `start` on the (paused) clock.
    fn at(start: Instant) -> f64 {
        start.elapsed().as_secs_f64()
    }

    fn addrs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Delivers with `outcome(addr, attempt)` for every POST; returns the
    /// delivery, each attempt as (addr, attempt, seconds from the start)
    /// and when the delivery ended.
    async fn run_delivery(
        names: &[&str],
        policy: Policy,
        cancel: &CancellationToken,
        outcome: impl Fn(&str, u32) -> Attempt,
    ) -> (Delivery, Vec<(String, u32, f64)>, f64) {
        let start = Instant::now();
        let mut calls = Vec::new();
        let delivery = deliver_with(&addrs(names), policy, cancel, |addr, attempt| {
            calls.push((addr.to_owned(), attempt, at(start)));
            std::future::ready(outcome(addr, attempt))
        })
        .await;
        (delivery, calls, at(start))
    }

    fn call(addr: &str, attempt: u32, secs: f64) -> (String, u32, f64) {
        (addr.to_owned(), attempt, secs)
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_tries_each_address_three_times_sleeping_2_s_after_every_failure() {
        let never = CancellationToken::new();
        let (delivery, calls, ended) =
            run_delivery(&["a", "b"], NORMAL, &never, |_, _| Attempt::Failed).await;
        assert_eq!(delivery, Delivery::Failed);
        assert_eq!(
            calls,
            [
                call("a", 1, 0.0),
                call("a", 2, 2.0),
                call("a", 3, 4.0),
                // The sleep after the third failure comes before the next address...
                call("b", 1, 6.0),
                call("b", 2, 8.0),
                call("b", 3, 10.0),
            ]
        );
        // ...and after the last address's third failure too.
        assert_eq!(ended, 12.0);
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_ends_at_the_first_success_without_sleeping() {
        let never = CancellationToken::new();
        let (delivery, calls, ended) = run_delivery(&["a", "b"], NORMAL, &never, |_, n| {
            if n == 2 {
                Attempt::Delivered
            } else {
                Attempt::Failed
            }
        })
        .await;
        assert_eq!(delivery, Delivery::Delivered);
        assert_eq!(calls, [call("a", 1, 0.0), call("a", 2, 2.0)]);
        assert_eq!(ended, 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_body_moves_to_the_next_address_at_once() {
        let never = CancellationToken::new();
        let (delivery, calls, ended) = run_delivery(&["a", "b"], NORMAL, &never, |addr, _| {
            if addr == "a" {
                Attempt::Refused(422)
            } else {
                Attempt::Failed
            }
        })
        .await;
        // Remembered: no address took it and one refused it.
        assert_eq!(delivery, Delivery::Refused(422));
        assert_eq!(
            calls,
            [
                call("a", 1, 0.0),
                call("b", 1, 0.0),
                call("b", 2, 2.0),
                call("b", 3, 4.0)
            ]
        );
        assert_eq!(ended, 6.0);
        let (delivery, calls, _) =
            run_delivery(&["a", "b"], NORMAL, &never, |_, _| Attempt::Refused(400)).await;
        assert_eq!(delivery, Delivery::Refused(400));
        assert_eq!(calls, [call("a", 1, 0.0), call("b", 1, 0.0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_report_tries_each_address_once_without_sleeping() {
        let never = CancellationToken::new();
        let (delivery, calls, ended) =
            run_delivery(&["a", "b"], FINAL, &never, |_, _| Attempt::Failed).await;
        assert_eq!(delivery, Delivery::Failed);
        assert_eq!(calls, [call("a", 1, 0.0), call("b", 1, 0.0)]);
        assert_eq!(ended, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_delivery_in_its_sleep() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            trigger.cancel();
        });
        let (delivery, calls, ended) =
            run_delivery(&["a", "b"], NORMAL, &cancel, |_, _| Attempt::Failed).await;
        assert_eq!(delivery, Delivery::Failed);
        // In the trailing sleep after a's third attempt: b is never tried.
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(ended, 5.0);
    }

    /// Runs the key fetch with `key(round)` as every round's outcome;
    /// returns how it ended and when (seconds from the start) each round ran.
    async fn run_key_fetch(
        cancel: &CancellationToken,
        key: impl Fn(u32) -> Option<&'static str>,
    ) -> (KeyFetch<&'static str>, Vec<f64>, f64) {
        let start = Instant::now();
        let mut rounds = Vec::new();
        let fetched = fetch_in_rounds(cancel, |n| {
            rounds.push(at(start));
            assert_eq!(n as usize, rounds.len(), "rounds count from 1");
            std::future::ready(key(n))
        })
        .await;
        (fetched, rounds, at(start))
    }

    #[tokio::test(start_paused = true)]
    async fn the_key_fetch_sleeps_1_2_4_8_s_between_five_rounds() {
        let never = CancellationToken::new();
        let (fetched, rounds, ended) = run_key_fetch(&never, |_| None).await;
        assert_eq!(fetched, KeyFetch::GaveUp);
        assert_eq!(rounds, [0.0, 1.0, 3.0, 7.0, 15.0]);
        // No sleep after the last round.
        assert_eq!(ended, 15.0);

        let (fetched, rounds, ended) = run_key_fetch(&never, |n| (n == 3).then_some("key")).await;
        assert_eq!(fetched, KeyFetch::Loaded("key"));
        assert_eq!(rounds, [0.0, 1.0, 3.0]);
        assert_eq!(ended, 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_key_fetch_without_an_outcome() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            trigger.cancel();
        });
        let (fetched, rounds, ended) = run_key_fetch(&cancel, |_| None).await;
        assert_eq!(fetched, KeyFetch::Cancelled);
        assert_eq!(rounds, [0.0, 1.0]);
        assert_eq!(ended, 2.0);
    }

    #[test]
    fn disk_usage_is_readable() {
        let used = disk_used_gib().expect("statvfs on /");
        assert!(used >= 0.0);
    }
}
