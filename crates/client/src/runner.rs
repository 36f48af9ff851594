//! A client run: open `count` sessions started `interval` apart, hold each
//! for `hold`, close them; report every step as an [`Event`].
//!
//! Owns [`Plan`], [`Event`], [`SessionReport`] and [`run_plan`]. It prints
//! nothing: rendering is `display`'s job, so `nullworker demo` can reuse runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Endpoint, Error, RouteEvent, SessionEnd, SessionOptions};

/// What a run does. Values are validated by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Sessions to open.
    pub count: u32,
    /// How long each session is held once reserved.
    pub hold: Duration,
    /// Time between session starts.
    pub interval: Duration,
    /// `cost` of each session.
    pub cost: f64,
    /// Session lifetime (the lease; renewed while held).
    pub lifetime: Duration,
    /// Time allowed to reserve each worker.
    pub timeout: Option<Duration>,
    /// How often each held session asks its worker whether it is still open.
    pub check_interval: Duration,
    /// Reserve a replacement for the rest of the hold when a held session's
    /// worker is lost (not when the endpoint was deleted).
    pub replace: bool,
}

/// Why a held session was lost, as far as the engine can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossCause {
    /// The endpoint no longer exists: nothing can replace the worker.
    EndpointDeleted,
    /// The engine no longer lists the worker (stopped, crashed, destroyed).
    WorkerGone,
    /// The worker does not answer (refused, timed out) and the engine still
    /// lists it, or the engine could not be asked.
    WorkerUnreachable,
    /// The worker answers but no longer knows the session (its lease ran out).
    SessionGone,
}

impl LossCause {
    /// Human wording.
    pub fn describe(self) -> &'static str {
        match self {
            Self::EndpointDeleted => "endpoint deleted",
            Self::WorkerGone => "worker gone from the endpoint",
            Self::WorkerUnreachable => "worker unreachable",
            Self::SessionGone => "session gone on the worker",
        }
    }

    /// Whether a replacement can be reserved after this loss.
    pub fn replaceable(self) -> bool {
        self != Self::EndpointDeleted
    }
}

/// Classifies a loss: `expired` when the worker answered that the session
/// is gone; `endpoint_listed` / `worker_listed` are what the engine said
/// afterwards (`None`: it could not be asked).
pub fn classify_loss(
    expired: bool,
    endpoint_listed: Option<bool>,
    worker_listed: Option<bool>,
) -> LossCause {
    match (endpoint_listed, worker_listed) {
        (Some(false), _) => LossCause::EndpointDeleted,
        _ if expired => LossCause::SessionGone,
        (_, Some(false)) => LossCause::WorkerGone,
        _ => LossCause::WorkerUnreachable,
    }
}

/// One thing that happened during a run. Serialised as one JSON object per
/// line by `--json`, with `event` naming the variant and `t` the seconds
/// since the run started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run starts.
    Start {
        /// Seconds since the run started (0).
        t: f64,
        /// Endpoint name.
        endpoint: String,
        /// Sessions to open.
        count: u32,
        /// Seconds each session is held.
        hold_secs: f64,
        /// Seconds between starts.
        interval_secs: f64,
        /// Session cost.
        cost: f64,
        /// Session lifetime in seconds.
        lifetime_secs: f64,
    },
    /// A session starts asking for a worker.
    Routing {
        /// Seconds since the run started.
        t: f64,
        /// Session number (from 1).
        session: u32,
    },
    /// The route service has no worker yet (shown when its status changes).
    Waiting {
        /// Seconds since the run started.
        t: f64,
        /// Session number.
        session: u32,
        /// The route service's status text.
        status: String,
    },
    /// A call failed and is being retried (e.g. a worker answered 429).
    Retrying {
        /// Seconds since the run started.
        t: f64,
        /// Session number.
        session: u32,
        /// What failed.
        reason: String,
    },
    /// The session holds a worker.
    Held {
        /// Seconds since the run started.
        t: f64,
        /// Session number.
        session: u32,
        /// The worker's session id.
        session_id: String,
        /// The worker's URL.
        worker_url: String,
        /// Seconds from asking to holding.
        reserve_secs: f64,
    },
    /// The session ended; `how` is `closed`, `released_by_worker`,
    /// `expired`, `worker_lost` or `interrupted`.
    Ended {
        /// Seconds since the run started.
        t: f64,
        /// Session number.
        session: u32,
        /// How it ended.
        how: Outcome,
        /// Seconds it was held.
        held_secs: f64,
        /// Details for abnormal ends.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Why the worker was lost (`worker_lost` and `expired` only).
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<LossCause>,
    },
    /// A lost session is replaced: a new worker is reserved for the rest of the hold.
    Replacing {
        /// Seconds since the run started.
        t: f64,
        /// Session number.
        session: u32,
        /// Seconds of the hold left.
        hold_left_secs: f64,
    },
    /// The session never held a worker.
    Failed {
        /// Seconds since the run started.
        t: f64,
        /// Session number.
        session: u32,
        /// Why, as one line.
        error: String,
    },
    /// Ctrl-C (or SIGTERM): open sessions are being closed.
    Interrupted {
        /// Seconds since the run started.
        t: f64,
    },
    /// The run is over.
    Summary {
        /// Seconds since the run started.
        t: f64,
        /// One report per session.
        sessions: Vec<SessionReport>,
        /// The process exit code.
        exit_code: u8,
    },
}

/// How a session of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Held for the full time, then closed by the client.
    Closed,
    /// Ended from the worker side (the consumer's `/release`) while held.
    ReleasedByWorker,
    /// The lease ran out while held.
    Expired,
    /// The worker stopped answering.
    WorkerLost,
    /// Never reserved a worker (error or timeout).
    Failed,
    /// Closed early (or never reserved) because the run was interrupted.
    Interrupted,
    /// Not started because the run was interrupted first.
    NotStarted,
}

impl Outcome {
    /// Whether this outcome makes the run fail.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Expired | Self::WorkerLost | Self::Failed)
    }

    /// Human wording.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::ReleasedByWorker => "released by worker",
            Self::Expired => "expired",
            Self::WorkerLost => "worker lost",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::NotStarted => "not started",
        }
    }
}

/// The summary of one session of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionReport {
    /// Session number (from 1).
    pub session: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// Seconds from asking to holding.
    pub reserve_secs: Option<f64>,
    /// The worker's URL.
    pub worker_url: Option<String>,
    /// The worker's session id.
    pub session_id: Option<String>,
    /// Seconds held.
    pub held_secs: Option<f64>,
    /// Error or detail for abnormal ends.
    pub error: Option<String>,
    /// Replacements reserved after lost workers.
    pub replacements: u32,
}

impl SessionReport {
    fn new(session: u32, outcome: Outcome) -> Self {
        Self {
            session,
            outcome,
            reserve_secs: None,
            worker_url: None,
            session_id: None,
            held_secs: None,
            error: None,
            replacements: 0,
        }
    }
}

/// The exit code for a set of reports: 1 if any failed, else 130 if the run
/// was interrupted, else 0.
pub fn exit_code(reports: &[SessionReport], interrupted: bool) -> u8 {
    if reports.iter().any(|r| r.outcome.is_failure()) {
        1
    } else if interrupted {
        130
    } else {
        0
    }
}

#[derive(Clone)]
struct Emitter {
    t0: Instant,
    tx: UnboundedSender<Event>,
}

impl Emitter {
    fn t(&self) -> f64 {
        round_ms(self.t0.elapsed())
    }

    fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Runs `plan` against `endpoint`, sending [`Event`]s (all but `Start` and
/// `Summary`, which belong to the caller; the channel closes when the run
/// is over) to `events`. `t0` is the run's
/// start. Cancelling `cancel` stops new starts, abandons reservations in
/// progress and closes held sessions at once.
pub async fn run_plan(
    endpoint: &Endpoint,
    plan: &Plan,
    t0: Instant,
    events: UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Vec<SessionReport> {
    let emitter = Emitter { t0, tx: events };
    let interrupt = tokio::spawn({
        let emitter = emitter.clone();
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            emitter.send(Event::Interrupted { t: emitter.t() });
        }
    });
    let mut tasks = Vec::new();
    let mut reports = Vec::new();
    for index in 0..plan.count {
        let number = index + 1;
        let start_at = t0 + plan.interval * index;
        tokio::select! {
            () = tokio::time::sleep_until(start_at) => {}
            () = cancel.cancelled() => {}
        }
        if cancel.is_cancelled() {
            reports.push(SessionReport::new(number, Outcome::NotStarted));
            continue;
        }
        let endpoint = endpoint.clone();
        let plan = plan.clone();
        let emitter = emitter.clone();
        let cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            run_session(number, &endpoint, &plan, &emitter, &cancel).await
        }));
    }
    for task in tasks {
        match task.await {
            Ok(report) => reports.push(report),
            Err(err) => tracing::error!(error = %err, "session task failed"),
        }
    }
    interrupt.abort();
    reports.sort_by_key(|r| r.session);
    reports
}

async fn run_session(
    number: u32,
    endpoint: &Endpoint,
    plan: &Plan,
    emitter: &Emitter,
    cancel: &CancellationToken,
) -> SessionReport {
    let mut report = SessionReport::new(number, Outcome::Failed);
    let mut hold_until: Option<Instant> = None;
    loop {
        let hold = match hold_until {
            None => plan.hold,
            Some(until) => until.saturating_duration_since(Instant::now()),
        };
        let Some(lost) =
            hold_once(number, endpoint, plan, hold, emitter, cancel, &mut report).await
        else {
            return report;
        };
        let until = *hold_until.get_or_insert(lost.held_since + plan.hold);
        let left = until.saturating_duration_since(Instant::now());
        if !plan.replace || !lost.cause.replaceable() || left.is_zero() || cancel.is_cancelled() {
            return report;
        }
        report.replacements += 1;
        emitter.send(Event::Replacing {
            t: emitter.t(),
            session: number,
            hold_left_secs: round_ms(left),
        });
    }
}

/// A held session that ended with its worker lost.
struct Lost {
    held_since: Instant,
    cause: LossCause,
}

/// Reserves a worker and holds it for `hold`; fills `report`. Returns
/// `Some` when the worker was lost while held.
async fn hold_once(
    number: u32,
    endpoint: &Endpoint,
    plan: &Plan,
    hold: Duration,
    emitter: &Emitter,
    cancel: &CancellationToken,
    report: &mut SessionReport,
) -> Option<Lost> {
    emitter.send(Event::Routing {
        t: emitter.t(),
        session: number,
    });
    let last_status = Arc::new(Mutex::new(String::new()));
    let progress_emitter = emitter.clone();
    let progress: crate::Progress = Arc::new(move |event: &RouteEvent| match event {
        RouteEvent::Waiting { status, .. } => {
            let mut last = last_status.lock().unwrap_or_else(|e| e.into_inner());
            if *last != *status {
                last.clone_from(status);
                progress_emitter.send(Event::Waiting {
                    t: progress_emitter.t(),
                    session: number,
                    status: status.clone(),
                });
            }
        }
        RouteEvent::Rejected { url, status } => progress_emitter.send(Event::Retrying {
            t: progress_emitter.t(),
            session: number,
            reason: format!("{url} answered HTTP {status}"),
        }),
        RouteEvent::Retrying { reason } => progress_emitter.send(Event::Retrying {
            t: progress_emitter.t(),
            session: number,
            reason: reason.clone(),
        }),
        RouteEvent::Assigned { .. } => {}
    });
    let asked = Instant::now();
    let options = SessionOptions {
        cost: plan.cost,
        lifetime: plan.lifetime,
        keep_alive: true,
        check_interval: Some(plan.check_interval),
        timeout: plan.timeout,
        cancel: cancel.clone(),
        progress: Some(progress),
        ..SessionOptions::default()
    };
    report.outcome = Outcome::Failed;
    let session = match endpoint.session(options).await {
        Ok(session) => session,
        Err(Error::Cancelled { .. }) => {
            report.outcome = Outcome::Interrupted;
            report.error = Some(NEVER_RESERVED.to_owned());
            emitter.send(Event::Ended {
                t: emitter.t(),
                session: number,
                how: Outcome::Interrupted,
                held_secs: 0.0,
                detail: Some(NEVER_RESERVED.to_owned()),
                cause: None,
            });
            return None;
        }
        Err(err) => {
            let error = err.to_string();
            emitter.send(Event::Failed {
                t: emitter.t(),
                session: number,
                error: error.clone(),
            });
            report.error = Some(error);
            return None;
        }
    };
    let reserve = round_ms(asked.elapsed());
    report.reserve_secs = Some(reserve);
    report.worker_url = Some(session.url().to_owned());
    report.session_id = Some(session.id().to_owned());
    emitter.send(Event::Held {
        t: emitter.t(),
        session: number,
        session_id: session.id().to_owned(),
        worker_url: session.url().to_owned(),
        reserve_secs: reserve,
    });
    let held_since = Instant::now();
    let (outcome, detail) = tokio::select! {
        () = tokio::time::sleep(hold) => close_outcome(session.close().await, Outcome::Closed),
        how = session.ended() => end_outcome(how),
        () = cancel.cancelled() => close_outcome(session.close().await, Outcome::Interrupted),
    };
    let cause = if matches!(outcome, Outcome::WorkerLost | Outcome::Expired) {
        let (endpoint_listed, worker_listed) = endpoint.loss_facts(session.url()).await;
        Some(classify_loss(
            outcome == Outcome::Expired,
            endpoint_listed,
            worker_listed,
        ))
    } else {
        None
    };
    let held = round_ms(held_since.elapsed());
    report.outcome = outcome;
    report.held_secs = Some(held);
    report.error.clone_from(&detail);
    emitter.send(Event::Ended {
        t: emitter.t(),
        session: number,
        how: outcome,
        held_secs: held,
        detail,
        cause,
    });
    cause.map(|cause| Lost { held_since, cause })
}

/// Detail of a session interrupted while it waited for a worker.
const NEVER_RESERVED: &str = "interrupted before a worker was reserved";

/// The outcome of a close: `wanted` when it closed, else how it had ended.
fn close_outcome(result: Result<SessionEnd, Error>, wanted: Outcome) -> (Outcome, Option<String>) {
    match result {
        Ok(SessionEnd::Closed) => (wanted, None),
        Ok(other) => end_outcome(other),
        Err(err) => (Outcome::WorkerLost, Some(err.to_string())),
    }
}

fn end_outcome(how: SessionEnd) -> (Outcome, Option<String>) {
    match how {
        SessionEnd::Closed => (Outcome::Closed, None),
        SessionEnd::ReleasedByWorker => (Outcome::ReleasedByWorker, None),
        SessionEnd::Expired => (Outcome::Expired, Some("the lease ran out".to_owned())),
        SessionEnd::WorkerLost { reason } => (Outcome::WorkerLost, Some(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome) -> SessionReport {
        SessionReport::new(1, outcome)
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            exit_code(
                &[report(Outcome::Closed), report(Outcome::ReleasedByWorker)],
                false
            ),
            0
        );
        assert_eq!(
            exit_code(&[report(Outcome::Closed), report(Outcome::Failed)], false),
            1
        );
        assert_eq!(
            exit_code(
                &[report(Outcome::Interrupted), report(Outcome::NotStarted)],
                true
            ),
            130
        );
        assert_eq!(
            exit_code(
                &[report(Outcome::Interrupted), report(Outcome::Expired)],
                true
            ),
            1
        );
    }

    #[test]
    fn losses_are_classified_by_what_the_engine_still_lists() {
        use LossCause::*;
        for (expired, endpoint, worker, want) in [
            (false, Some(false), None, EndpointDeleted),
            (true, Some(false), Some(false), EndpointDeleted),
            (false, Some(true), Some(false), WorkerGone),
            (false, Some(true), Some(true), WorkerUnreachable),
            (false, None, None, WorkerUnreachable),
            (false, Some(true), None, WorkerUnreachable),
            (true, Some(true), Some(true), SessionGone),
            (true, None, None, SessionGone),
        ] {
            assert_eq!(
                classify_loss(expired, endpoint, worker),
                want,
                "{expired} {endpoint:?} {worker:?}"
            );
        }
        assert!(!EndpointDeleted.replaceable());
        assert!(WorkerGone.replaceable() && WorkerUnreachable.replaceable());
    }

    #[test]
    fn events_serialise_with_their_name() {
        let event = Event::Ended {
            t: 1.5,
            session: 2,
            how: Outcome::ReleasedByWorker,
            held_secs: 8.25,
            detail: None,
            cause: None,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "ended", "t": 1.5, "session": 2, "how": "released_by_worker", "held_secs": 8.25})
        );
    }
}
