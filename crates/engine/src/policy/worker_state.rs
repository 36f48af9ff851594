//! Worker states (PROTOCOL §11.3 log names) and their derivation from what
//! the engine knows of a worker's process and reports (PROTOCOL §12.3).
//!
//! Owns only the mapping; the runtime records the facts (process phase,
//! reports) and calls [`derive_state`] whenever it needs the state.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::WORKER_PROTOCOL_VERSION;

/// A worker's state, serialised as its log/CLI name (`"IDLE"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerState {
    /// Decided; the process is not spawned yet.
    Creating,
    /// Process running, no report yet.
    Loading,
    /// Reports arrive but the worker is not loaded yet.
    ModelLoading,
    /// Loaded, healthy and reporting: routable ("Ready").
    Idle,
    /// Re-spawned after a stop, not yet `IDLE`.
    Starting,
    /// Being stopped as a cold worker.
    Stopping,
    /// Stopped, kept as cold capacity (record and `max_perf` kept).
    Stopped,
    /// Broken: error message, wrong version, silent, or exited unexpectedly.
    Error,
    /// Being terminated; forgotten once gone.
    Destroying,
}

impl WorkerState {
    /// Every state, in lifecycle order.
    pub const ALL: [WorkerState; 9] = [
        WorkerState::Creating,
        WorkerState::Loading,
        WorkerState::ModelLoading,
        WorkerState::Idle,
        WorkerState::Starting,
        WorkerState::Stopping,
        WorkerState::Stopped,
        WorkerState::Error,
        WorkerState::Destroying,
    ];

    /// Position in [`WorkerState::ALL`], for per-state counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The log/CLI name, e.g. `"MODEL_LOADING"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Creating => "CREATING",
            WorkerState::Loading => "LOADING",
            WorkerState::ModelLoading => "MODEL_LOADING",
            WorkerState::Idle => "IDLE",
            WorkerState::Starting => "STARTING",
            WorkerState::Stopping => "STOPPING",
            WorkerState::Stopped => "STOPPED",
            WorkerState::Error => "ERROR",
            WorkerState::Destroying => "DESTROYING",
        }
    }

    /// Counts as active capacity: `CREATING`, `LOADING`, `MODEL_LOADING`,
    /// `STARTING` or `IDLE`.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            WorkerState::Creating
                | WorkerState::Loading
                | WorkerState::ModelLoading
                | WorkerState::Starting
                | WorkerState::Idle
        )
    }

    /// May receive requests: only `IDLE`.
    pub fn is_routable(self) -> bool {
        self == WorkerState::Idle
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorkerState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown worker state {s:?}"))
    }
}

/// What the engine knows of a worker's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessPhase {
    /// Decided, not spawned yet.
    NotSpawned,
    /// The process is running.
    Running,
    /// The process exited; `expected` when the engine asked it to.
    Exited {
        /// The engine had asked the process to stop.
        expected: bool,
    },
    /// The engine asked the process to stop, to keep it as a cold worker.
    Stopping,
    /// Stopped as a cold worker; may be started again.
    Stopped,
    /// The engine is terminating the process for good.
    Destroying,
}

/// The fields of the worker's last `/worker_status/` report that decide its
/// state.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFacts {
    /// When the engine received the report (epoch seconds).
    pub at: f64,
    /// Reported `max_perf`.
    pub max_perf: f64,
    /// Reported `loadtime`.
    pub loadtime: f64,
    /// Reported `error_msg` (`""` when healthy).
    pub error_msg: String,
    /// Reported `version`.
    pub version: String,
}

/// Everything [`derive_state`] looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerFacts {
    /// The process phase.
    pub process: ProcessPhase,
    /// The process was re-spawned from `STOPPED` (so it is `STARTING`, not
    /// `LOADING`, until ready).
    pub restarted: bool,
    /// When the current process was spawned (epoch seconds), if it was.
    /// Reports received before it belong to an earlier process and are
    /// ignored; a running process with no report `stale_after` seconds after
    /// this is `ERROR` (silent).
    pub spawned_at: Option<f64>,
    /// The last report received.
    pub last_report: Option<ReportFacts>,
}

/// Derives a worker's state (PROTOCOL §12.3, refined in
/// `docs/engine-policy.md`); the second value is the reason when the state is
/// `ERROR`.
///
/// For a running process, checks are made in this order: a non-empty
/// `error_msg`, a `version` other than `"1.1.0"`, a report older than
/// `stale_after` (or no report `stale_after` after spawn), then loaded
/// (`loadtime > 0` or `max_perf > 0`) ⇒ `IDLE`, else `MODEL_LOADING` (or
/// `STARTING` for a restarted worker). With no report yet: `LOADING` (or
/// `STARTING`).
pub fn derive_state(
    facts: &WorkerFacts,
    now: f64,
    stale_after: f64,
) -> (WorkerState, Option<String>) {
    derive_state_from(
        facts.process,
        facts.restarted,
        facts.spawned_at,
        facts.last_report.as_ref(),
        now,
        stale_after,
    )
}

/// [`derive_state`] on the facts passed one by one, so a caller that keeps
/// them in its own structure does not clone the report (the scaler
/// re-derives every worker each second).
pub fn derive_state_from(
    process: ProcessPhase,
    restarted: bool,
    spawned_at: Option<f64>,
    last_report: Option<&ReportFacts>,
    now: f64,
    stale_after: f64,
) -> (WorkerState, Option<String>) {
    match process {
        ProcessPhase::NotSpawned => (WorkerState::Creating, None),
        ProcessPhase::Stopping => (WorkerState::Stopping, None),
        ProcessPhase::Stopped | ProcessPhase::Exited { expected: true } => {
            (WorkerState::Stopped, None)
        }
        ProcessPhase::Destroying => (WorkerState::Destroying, None),
        ProcessPhase::Exited { expected: false } => (
            WorkerState::Error,
            Some("worker process exited unexpectedly".to_owned()),
        ),
        ProcessPhase::Running => {
            running_state(restarted, spawned_at, last_report, now, stale_after)
        }
    }
}

fn running_state(
    restarted: bool,
    spawned_at: Option<f64>,
    last_report: Option<&ReportFacts>,
    now: f64,
    stale_after: f64,
) -> (WorkerState, Option<String>) {
    let not_ready = if restarted {
        WorkerState::Starting
    } else {
        WorkerState::ModelLoading
    };
    let report = last_report.filter(|report| match spawned_at {
        Some(spawned) => report.at >= spawned,
        None => true,
    });
    let Some(report) = report else {
        if let Some(spawned) = spawned_at {
            let silent = now - spawned;
            if silent > stale_after {
                return (
                    WorkerState::Error,
                    Some(format!(
                        "no report {silent:.0} s after start (limit {stale_after} s)"
                    )),
                );
            }
        }
        let state = if restarted {
            WorkerState::Starting
        } else {
            WorkerState::Loading
        };
        return (state, None);
    };
    if !report.error_msg.is_empty() {
        return (WorkerState::Error, Some(report.error_msg.clone()));
    }
    if report.version != WORKER_PROTOCOL_VERSION {
        return (
            WorkerState::Error,
            Some(format!(
                "version mismatch: worker reports {:?}, expected {WORKER_PROTOCOL_VERSION:?}",
                report.version
            )),
        );
    }
    let age = now - report.at;
    if age > stale_after {
        return (
            WorkerState::Error,
            Some(format!("no report for {age:.0} s (limit {stale_after} s)")),
        );
    }
    if report.loadtime > 0.0 || report.max_perf > 0.0 {
        (WorkerState::Idle, None)
    } else {
        (not_ready, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAWN: f64 = 1_000.0;
    const STALE: f64 = 30.0;

    fn report(
        at: f64,
        max_perf: f64,
        loadtime: f64,
        error_msg: &str,
        version: &str,
    ) -> ReportFacts {
        ReportFacts {
            at,
            max_perf,
            loadtime,
            error_msg: error_msg.to_owned(),
            version: version.to_owned(),
        }
    }

    fn running(restarted: bool, last_report: Option<ReportFacts>) -> WorkerFacts {
        WorkerFacts {
            process: ProcessPhase::Running,
            restarted,
            spawned_at: Some(SPAWN),
            last_report,
        }
    }

    fn state(facts: &WorkerFacts, now: f64) -> WorkerState {
        derive_state(facts, now, STALE).0
    }

    #[test]
    fn process_phases_map_to_states() {
        let table = [
            (ProcessPhase::NotSpawned, WorkerState::Creating),
            (ProcessPhase::Stopping, WorkerState::Stopping),
            (ProcessPhase::Stopped, WorkerState::Stopped),
            (
                ProcessPhase::Exited { expected: true },
                WorkerState::Stopped,
            ),
            (ProcessPhase::Destroying, WorkerState::Destroying),
            (ProcessPhase::Exited { expected: false }, WorkerState::Error),
        ];
        for (process, expected) in table {
            let facts = WorkerFacts {
                process,
                restarted: false,
                spawned_at: Some(SPAWN),
                // A healthy report does not override the process phase.
                last_report: Some(report(SPAWN + 1.0, 100.0, 0.5, "", "1.1.0")),
            };
            assert_eq!(state(&facts, SPAWN + 2.0), expected, "{process:?}");
        }
        let crashed = WorkerFacts {
            process: ProcessPhase::Exited { expected: false },
            restarted: false,
            spawned_at: Some(SPAWN),
            last_report: None,
        };
        let (_, reason) = derive_state(&crashed, SPAWN, STALE);
        assert!(reason.unwrap().contains("exited unexpectedly"));
    }

    #[test]
    fn running_worker_states_follow_reports() {
        let now = SPAWN + 5.0;
        let table: [(&str, WorkerFacts, WorkerState); 10] = [
            ("no report yet", running(false, None), WorkerState::Loading),
            (
                "restarted, no report",
                running(true, None),
                WorkerState::Starting,
            ),
            (
                "loading",
                running(false, Some(report(now - 1.0, 0.0, 0.0, "", "1.1.0"))),
                WorkerState::ModelLoading,
            ),
            (
                "restarted, loading",
                running(true, Some(report(now - 1.0, 0.0, 0.0, "", "1.1.0"))),
                WorkerState::Starting,
            ),
            (
                "loaded by loadtime",
                running(false, Some(report(now - 1.0, 0.0, 0.7, "", "1.1.0"))),
                WorkerState::Idle,
            ),
            (
                "loaded by max_perf",
                running(false, Some(report(now - 1.0, 100.0, 0.0, "", "1.1.0"))),
                WorkerState::Idle,
            ),
            (
                "restarted and loaded",
                running(true, Some(report(now - 1.0, 100.0, 0.7, "", "1.1.0"))),
                WorkerState::Idle,
            ),
            (
                "error message",
                running(
                    false,
                    Some(report(
                        now - 1.0,
                        100.0,
                        0.7,
                        "health check failed",
                        "1.1.0",
                    )),
                ),
                WorkerState::Error,
            ),
            (
                "wrong version",
                running(false, Some(report(now - 1.0, 100.0, 0.7, "", "1.0.0"))),
                WorkerState::Error,
            ),
            (
                "report from before the spawn is ignored",
                running(true, Some(report(SPAWN - 100.0, 100.0, 0.7, "", "1.1.0"))),
                WorkerState::Starting,
            ),
        ];
        for (name, facts, expected) in table {
            let (got, reason) = derive_state(&facts, now, STALE);
            assert_eq!(got, expected, "{name}");
            assert_eq!(reason.is_some(), got == WorkerState::Error, "{name}");
        }
    }

    #[test]
    fn error_reasons_say_what_went_wrong() {
        let now = SPAWN + 5.0;
        let facts = running(
            false,
            Some(report(now, 100.0, 0.7, "health check failed", "1.1.0")),
        );
        assert_eq!(
            derive_state(&facts, now, STALE).1.as_deref(),
            Some("health check failed")
        );
        let facts = running(false, Some(report(now, 100.0, 0.7, "", "0.9")));
        let reason = derive_state(&facts, now, STALE).1.unwrap();
        assert!(
            reason.contains("version mismatch") && reason.contains("0.9"),
            "{reason}"
        );
    }

    #[test]
    fn silence_is_an_error() {
        // A report exactly stale_after old is still fresh; older is not.
        let facts = running(false, Some(report(SPAWN + 1.0, 100.0, 0.7, "", "1.1.0")));
        assert_eq!(state(&facts, SPAWN + 1.0 + STALE), WorkerState::Idle);
        let (got, reason) = derive_state(&facts, SPAWN + 1.5 + STALE, STALE);
        assert_eq!(got, WorkerState::Error);
        assert!(reason.unwrap().contains("no report for"));
        // A process that never reports.
        let facts = running(false, None);
        assert_eq!(state(&facts, SPAWN + STALE), WorkerState::Loading);
        let (got, reason) = derive_state(&facts, SPAWN + STALE + 1.0, STALE);
        assert_eq!(got, WorkerState::Error);
        assert!(reason.unwrap().contains("after start"));
        // Without a known spawn time, no first-report deadline applies.
        let facts = WorkerFacts {
            spawned_at: None,
            ..running(false, None)
        };
        assert_eq!(state(&facts, SPAWN + 1e6), WorkerState::Loading);
    }

    #[test]
    fn names_round_trip() {
        for state in WorkerState::ALL {
            assert_eq!(state.as_str().parse::<WorkerState>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<WorkerState>(&json).unwrap(), state);
        }
        assert!("idle".parse::<WorkerState>().is_err());
        let active: Vec<_> = WorkerState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(
            active,
            [
                WorkerState::Creating,
                WorkerState::Loading,
                WorkerState::ModelLoading,
                WorkerState::Idle,
                WorkerState::Starting
            ]
        );
        assert!(WorkerState::ALL
            .into_iter()
            .all(|s| s.is_routable() == (s == WorkerState::Idle)));
    }
}
