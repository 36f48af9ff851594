//! The embedded SQLite queue, `sqlite:PATH?queue=NAME`: the default for one
//! machine (the demo, tests, local development). It owns the database
//! schema, the job state machine and the claim wait loop; it does not own
//! URL parsing ([`crate::url`]) or the options' ranges.
//!
//! One table, `nullworker_jobs`, holds the jobs of every queue in the file
//! (a `queue` column tells them apart). A job is
//!
//! * `waiting`: claimable once `visible_at` (unix ms) has passed; a failed
//!   job waits out its retry delay here, and counts as backlog meanwhile;
//! * `claimed`: held by `consumer` until `lease_until` (unix ms) = claim or
//!   last heartbeat + visibility timeout;
//! * `dead`: dead-lettered after `max_attempts` deliveries.
//!
//! Every state change is one statement or one `BEGIN IMMEDIATE` transaction,
//! the database is in WAL mode with a busy timeout, so several consumer
//! processes on the same host can share the file safely. Times are wall-clock
//! unix milliseconds, because several processes share them.
//!
//! * `attempt` counts deliveries: each claim adds one. [`Queue::release`]
//!   takes that one back (the next delivery shows the same attempt number
//!   again), so a hand-back never counts against `max_attempts`.
//! * The receipt is `ROWID.CLAIM`, where `CLAIM` is the row's claim counter:
//!   once a job has been reclaimed (or acked, failed, released), an ack,
//!   heartbeat, fail or release with an older receipt is refused with
//!   [`QueueError::Lost`]. A consumer whose lease has run out but whose job
//!   nobody has reclaimed yet may still ack it.
//! * Expired claims go back to `waiting` in [`Queue::requeue_expired`] and at
//!   the start of every claim, so a lone consumer recovers its own crashed
//!   jobs. An expired claim that has used up `max_attempts` (a job that kills
//!   its consumer every time) is dead-lettered instead.
//! * Row ids are never reused (`AUTOINCREMENT`), so job ids and receipts stay
//!   unique for the life of the file.
//!
//! rusqlite is synchronous: every call runs on tokio's blocking pool while
//! the handle's connection mutex is held, never on an async task.
//!
//! `claim(consumer, wait)` waits by polling `PRAGMA data_version` on a second,
//! read-only connection (it changes whenever any other connection, in this
//! process or another, commits) and the wall clock against the earliest time
//! a waiting job becomes visible or a lease runs out. The poll interval is
//! [`poll_interval`]: 2 ms for the first 2 s of an idle wait, so a pushed job
//! is noticed within a few milliseconds, then 10 ms, then 50 ms after 10 s, so
//! a consumer idle for long costs next to nothing; any change resets it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::time::Instant;

use crate::{FailOutcome, Job, Queue, QueueError, QueueOptions, QueueStats};

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nullworker_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('waiting', 'claimed', 'dead')),
    visible_at  INTEGER NOT NULL,
    lease_until INTEGER,
    consumer    TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0,
    claims      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nullworker_jobs_by_state ON nullworker_jobs (queue, state, id);
CREATE INDEX IF NOT EXISTS nullworker_jobs_by_lease ON nullworker_jobs (queue, state, lease_until);
";

/// Opens (creating if missing) the database at `path` and its jobs table.
pub(super) async fn open(
    path: &Path,
    queue: &str,
    options: QueueOptions,
) -> Result<Box<dyn Queue>, QueueError> {
    options.validate()?;
    let owned = path.to_owned();
    let (conn, watch) = tokio::task::spawn_blocking(move || connect(&owned))
        .await
        .map_err(|e| {
            QueueError::backend("sqlite", "open", format!("blocking task failed: {e}"))
        })??;
    Ok(Box::new(SqliteQueue {
        inner: Arc::new(Inner {
            conn: Mutex::new(conn),
            watch: Mutex::new(watch),
            path: path.to_owned(),
            queue: queue.to_owned(),
            options,
        }),
    }))
}

/// The read-write connection (schema created, WAL on) and the read-only one
/// that claim waits poll.
fn connect(path: &Path) -> Result<(Connection, Connection), QueueError> {
    let unreachable = |e: rusqlite::Error| QueueError::Unreachable {
        what: "SQLite database",
        addr: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut conn = Connection::open(path).map_err(unreachable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unreachable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(unreachable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Unreachable {
            what: "SQLite database",
            addr: path.display().to_string(),
            reason: format!(
                "cannot switch to WAL mode (journal mode is {mode:?}); expected a database file on a local disk"
            ),
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(unreachable)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unreachable)?;
    tx.execute_batch(SCHEMA).map_err(unreachable)?;
    tx.commit().map_err(unreachable)?;

    let watch = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unreachable)?;
    watch.busy_timeout(BUSY_TIMEOUT).map_err(unreachable)?;
    Ok((conn, watch))
}

struct SqliteQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every read and write of jobs.
    conn: Mutex<Connection>,
    /// Only `PRAGMA data_version`, while a claim waits.
    watch: Mutex<Connection>,
    path: PathBuf,
    queue: String,
    options: QueueOptions,
}

impl Inner {
    fn sql_error(&self, op: &'static str, e: rusqlite::Error) -> QueueError {
        QueueError::backend("sqlite", op, format!("{}: {e}", self.path.display()))
    }

    fn lost(job: &Job) -> QueueError {
        QueueError::Lost { id: job.id.clone() }
    }
}

/// What one claim attempt found.
enum ClaimTry {
    Claimed(Job),
    /// Nothing claimable; the earliest unix ms at which a waiting job becomes
    /// visible or a lease runs out, if any.
    Empty {
        next_due_ms: Option<i64>,
    },
}

impl SqliteQueue {
    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Inner) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, &inner).map_err(|e| inner.sql_error(op, e))
        })
        .await
        .map_err(|e| QueueError::backend("sqlite", op, format!("blocking task failed: {e}")))?
    }

    /// `PRAGMA data_version` of the watch connection.
    async fn data_version(&self) -> Result<i64, QueueError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let watch = inner.watch.lock().unwrap_or_else(PoisonError::into_inner);
            watch
                .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .map_err(|e| inner.sql_error("claim", e))
        })
        .await
        .map_err(|e| QueueError::backend("sqlite", "claim", format!("blocking task failed: {e}")))?
    }

    /// One claim transaction: requeue expired claims, then take the oldest
    /// visible job.
    async fn try_claim(&self, consumer: &str) -> Result<ClaimTry, QueueError> {
        let consumer = consumer.to_owned();
        self.run("claim", move |conn, inner| {
            let now = unix_ms(SystemTime::now());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            requeue_expired_in(&tx, &inner.queue, inner.options.max_attempts, now)?;
            let next: Option<i64> = tx
                .query_row(
                    "SELECT id FROM nullworker_jobs
                     WHERE queue = ?1 AND state = 'waiting' AND visible_at <= ?2
                     ORDER BY id LIMIT 1",
                    params![inner.queue, now],
                    |r| r.get(0),
                )
                .optional()?;
            let found = match next {
                Some(id) => {
                    let lease = lease_deadline(now, inner.options.visibility_timeout);
                    let (payload, attempt, claims): (Vec<u8>, i64, i64) = tx.query_row(
                        "UPDATE nullworker_jobs
                         SET state = 'claimed', consumer = ?2, lease_until = ?3,
                             attempt = attempt + 1, claims = claims + 1
                         WHERE id = ?1
                         RETURNING payload, attempt, claims",
                        params![id, consumer, lease],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                    ClaimTry::Claimed(Job {
                        id: id.to_string(),
                        payload,
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        receipt: format_receipt(id, claims),
                    })
                }
                None => {
                    let next_due_ms: Option<i64> = tx.query_row(
                        "SELECT MIN(t) FROM (
                             SELECT MIN(visible_at) AS t FROM nullworker_jobs
                             WHERE queue = ?1 AND state = 'waiting'
                             UNION ALL
                             SELECT MIN(lease_until) FROM nullworker_jobs
                             WHERE queue = ?1 AND state = 'claimed')",
                        params![inner.queue],
                        |r| r.get(0),
                    )?;
                    ClaimTry::Empty { next_due_ms }
                }
            };
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    /// Runs `statement` (which must bind `?1` = row id, `?2` = queue, `?3`
    /// = claim counter, then `extra`) against the delivery `job` holds;
    /// [`QueueError::Lost`] when it changed no row.
    async fn on_held(
        &self,
        op: &'static str,
        job: &Job,
        statement: &'static str,
        extra: Vec<i64>,
    ) -> Result<(), QueueError> {
        let (id, claims) =
            parse_receipt(&job.id, &job.receipt).map_err(|reason| QueueError::Backend {
                backend: "sqlite",
                op,
                reason,
            })?;
        let changed = self
            .run(op, move |conn, inner| {
                let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![
                    Box::new(id),
                    Box::new(inner.queue.clone()),
                    Box::new(claims),
                ];
                values.extend(
                    extra
                        .into_iter()
                        .map(|v| Box::new(v) as Box<dyn rusqlite::ToSql>),
                );
                conn.execute(statement, rusqlite::params_from_iter(values))
            })
            .await?;
        if changed == 0 {
            return Err(Inner::lost(job));
        }
        Ok(())
    }
}

/// Moves the queue's expired claims back to `waiting` (or to `dead` once
/// they have had `max_attempts` deliveries); returns how many it moved.
fn requeue_expired_in(
    conn: &Connection,
    queue: &str,
    max_attempts: u32,
    now: i64,
) -> Result<u64, rusqlite::Error> {
    // `lease_until <= now` is `lease_expired(lease_until, now)`.
    let moved = conn.execute(
        "UPDATE nullworker_jobs
         SET state = CASE WHEN attempt >= ?3 THEN 'dead' ELSE 'waiting' END,
             visible_at = ?2, lease_until = NULL, consumer = NULL
         WHERE queue = ?1 AND state = 'claimed' AND lease_until <= ?2",
        params![queue, now, max_attempts],
    )?;
    Ok(moved as u64)
}

#[async_trait::async_trait]
impl Queue for SqliteQueue {
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.run("stats", |conn, inner| {
            let mut stmt = conn.prepare_cached(
                "SELECT state, COUNT(*) FROM nullworker_jobs WHERE queue = ?1 GROUP BY state",
            )?;
            let mut stats = QueueStats::default();
            let rows = stmt.query_map(params![inner.queue], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (state, count) = row?;
                let count = u64::try_from(count).unwrap_or(0);
                match state.as_str() {
                    "waiting" => stats.backlog = count,
                    "claimed" => stats.in_flight = count,
                    _ => stats.dead = count,
                }
            }
            Ok(stats)
        })
        .await
    }

    async fn claim(&self, consumer: &str, wait: Duration) -> Result<Option<Job>, QueueError> {
        let deadline = Instant::now() + wait;
        let mut idle_since = Instant::now();
        loop {
            // Read before the claim transaction: any commit after this read
            // changes it, and every commit before it is seen by the claim.
            let version = self.data_version().await?;
            let next_due_ms = match self.try_claim(consumer).await? {
                ClaimTry::Claimed(job) => return Ok(Some(job)),
                ClaimTry::Empty { next_due_ms } => next_due_ms,
            };
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                let pause = poll_interval(now - idle_since).min(deadline - now);
                tokio::time::sleep(pause).await;
                if next_due_ms.is_some_and(|due| due <= unix_ms(SystemTime::now())) {
                    break;
                }
                if self.data_version().await? != version {
                    idle_since = Instant::now();
                    break;
                }
            }
        }
    }

    async fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        let lease = lease_deadline(
            unix_ms(SystemTime::now()),
            self.inner.options.visibility_timeout,
        );
        self.on_held(
            "heartbeat",
            job,
            "UPDATE nullworker_jobs SET lease_until = ?4
             WHERE id = ?1 AND queue = ?2 AND claims = ?3 AND state = 'claimed'",
            vec![lease],
        )
        .await
    }

    async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        self.on_held(
            "ack",
            job,
            "DELETE FROM nullworker_jobs
             WHERE id = ?1 AND queue = ?2 AND claims = ?3 AND state = 'claimed'",
            Vec::new(),
        )
        .await
    }

    async fn fail(&self, job: &Job) -> Result<FailOutcome, QueueError> {
        let (id, claims) =
            parse_receipt(&job.id, &job.receipt).map_err(|reason| QueueError::Backend {
                backend: "sqlite",
                op: "fail",
                reason,
            })?;
        let outcome = self
            .run("fail", move |conn, inner| {
                let now = unix_ms(SystemTime::now());
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let attempt: Option<i64> = tx
                    .query_row(
                        "SELECT attempt FROM nullworker_jobs
                         WHERE id = ?1 AND queue = ?2 AND claims = ?3 AND state = 'claimed'",
                        params![id, inner.queue, claims],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(attempt) = attempt else {
                    return Ok(None);
                };
                let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
                let outcome = match after_failure(attempt, &inner.options, now) {
                    AfterFailure::Retry { visible_at } => {
                        tx.execute(
                            "UPDATE nullworker_jobs
                             SET state = 'waiting', visible_at = ?2, lease_until = NULL, consumer = NULL
                             WHERE id = ?1",
                            params![id, visible_at],
                        )?;
                        FailOutcome::Retried
                    }
                    AfterFailure::DeadLetter => {
                        tx.execute(
                            "UPDATE nullworker_jobs
                             SET state = 'dead', lease_until = NULL, consumer = NULL
                             WHERE id = ?1",
                            params![id],
                        )?;
                        FailOutcome::DeadLettered
                    }
                };
                tx.commit()?;
                Ok(Some(outcome))
            })
            .await?;
        outcome.ok_or_else(|| Inner::lost(job))
    }

    async fn release(&self, job: &Job) -> Result<(), QueueError> {
        let now = unix_ms(SystemTime::now());
        self.on_held(
            "release",
            job,
            "UPDATE nullworker_jobs
             SET state = 'waiting', visible_at = ?4, lease_until = NULL, consumer = NULL,
                 attempt = MAX(attempt - 1, 0)
             WHERE id = ?1 AND queue = ?2 AND claims = ?3 AND state = 'claimed'",
            vec![now],
        )
        .await
    }

    async fn requeue_expired(&self) -> Result<u64, QueueError> {
        self.run("requeue_expired", |conn, inner| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let moved = requeue_expired_in(
                &tx,
                &inner.queue,
                inner.options.max_attempts,
                unix_ms(SystemTime::now()),
            )?;
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    async fn push(&self, payload: &[u8]) -> Result<String, QueueError> {
        let payload = payload.to_vec();
        self.run("push", move |conn, inner| {
            let now = unix_ms(SystemTime::now());
            conn.execute(
                "INSERT INTO nullworker_jobs (queue, payload, state, visible_at, created_at)
                 VALUES (?1, ?2, 'waiting', ?3, ?3)",
                params![inner.queue, payload, now],
            )?;
            Ok(conn.last_insert_rowid().to_string())
        })
        .await
    }
}

// ---- Pure lease and retry arithmetic -------------------------------------

/// Unix milliseconds of `t` (0 before the epoch).
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `d` in whole milliseconds, saturating.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When a lease taken or renewed at `now` runs out.
fn lease_deadline(now: i64, visibility_timeout: Duration) -> i64 {
    now.saturating_add(duration_ms(visibility_timeout))
}

/// Whether a lease running until `lease_until` has run out at `now` (the
/// rule the SQL applies as `lease_until <= now`).
#[cfg(test)]
fn lease_expired(lease_until: i64, now: i64) -> bool {
    lease_until <= now
}

/// What a failed delivery leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFailure {
    /// Waiting again, claimable from `visible_at` (unix ms).
    Retry { visible_at: i64 },
    /// Out of attempts.
    DeadLetter,
}

/// Delivery number `attempt` failed at `now`.
fn after_failure(attempt: u32, options: &QueueOptions, now: i64) -> AfterFailure {
    if attempt >= options.max_attempts {
        AfterFailure::DeadLetter
    } else {
        AfterFailure::Retry {
            visible_at: now.saturating_add(duration_ms(options.retry_delay)),
        }
    }
}

/// How long a claim that has seen no change for `idle` sleeps before
/// looking again.
fn poll_interval(idle: Duration) -> Duration {
    if idle < Duration::from_secs(2) {
        Duration::from_millis(2)
    } else if idle < Duration::from_secs(10) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(50)
    }
}

fn format_receipt(id: i64, claims: i64) -> String {
    format!("{id}.{claims}")
}

/// `(row id, claim counter)` of a receipt; the message names the bad value.
fn parse_receipt(job_id: &str, receipt: &str) -> Result<(i64, i64), String> {
    let bad = || {
        format!(
            "receipt {receipt:?} of job {job_id:?} is not an SQLite receipt; expected ROWID.CLAIM with ROWID = the job id"
        )
    };
    let (id, claims) = receipt.split_once('.').ok_or_else(bad)?;
    let id: i64 = id.parse().map_err(|_| bad())?;
    let claims: i64 = claims.parse().map_err(|_| bad())?;
    if id.to_string() != job_id || claims < 1 {
        return Err(bad());
    }
    Ok((id, claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(max_attempts: u32, retry_delay_ms: u64) -> QueueOptions {
        QueueOptions {
            visibility_timeout: Duration::from_secs(30),
            max_attempts,
            retry_delay: Duration::from_millis(retry_delay_ms),
        }
    }

    #[test]
    fn lease_deadline_adds_the_visibility_timeout() {
        let cases: &[(i64, Duration, i64)] = &[
            (1_000, Duration::from_secs(1), 2_000),
            (1_000, Duration::from_millis(2_500), 3_500),
            (0, Duration::from_secs(86_400), 86_400_000),
            (i64::MAX - 5, Duration::from_secs(1), i64::MAX),
            (1_000, Duration::from_micros(1_999), 1_001),
        ];
        for &(now, vt, want) in cases {
            assert_eq!(lease_deadline(now, vt), want, "now={now} vt={vt:?}");
        }
    }

    #[test]
    fn a_lease_expires_at_its_deadline_not_before() {
        let deadline = lease_deadline(10_000, Duration::from_secs(1));
        let cases: &[(i64, bool)] = &[
            (10_000, false),
            (10_999, false),
            (11_000, true),
            (20_000, true),
        ];
        for &(now, want) in cases {
            assert_eq!(lease_expired(deadline, now), want, "now={now}");
        }
        // A heartbeat at 10 900 moves the deadline past 11 000.
        let renewed = lease_deadline(10_900, Duration::from_secs(1));
        assert!(!lease_expired(renewed, 11_000));
        assert!(lease_expired(renewed, 11_900));
    }

    #[test]
    fn failure_retries_until_max_attempts_then_dead_letters() {
        let cases: &[(u32, u32, u64, AfterFailure)] = &[
            (1, 2, 0, AfterFailure::Retry { visible_at: 5_000 }),
            (2, 2, 0, AfterFailure::DeadLetter),
            (3, 2, 0, AfterFailure::DeadLetter),
            (1, 1, 0, AfterFailure::DeadLetter),
            (1, 5, 1_500, AfterFailure::Retry { visible_at: 6_500 }),
            (4, 5, 1_000, AfterFailure::Retry { visible_at: 6_000 }),
            (5, 5, 1_000, AfterFailure::DeadLetter),
            (0, 1, 0, AfterFailure::Retry { visible_at: 5_000 }),
        ];
        for &(attempt, max, delay, want) in cases {
            assert_eq!(
                after_failure(attempt, &options(max, delay), 5_000),
                want,
                "attempt {attempt} of {max}, delay {delay} ms"
            );
        }
    }

    #[test]
    fn poll_interval_backs_off_while_idle() {
        let cases: &[(u64, u64)] = &[
            (0, 2),
            (1_999, 2),
            (2_000, 10),
            (9_999, 10),
            (10_000, 50),
            (3_600_000, 50),
        ];
        for &(idle_ms, want_ms) in cases {
            assert_eq!(
                poll_interval(Duration::from_millis(idle_ms)),
                Duration::from_millis(want_ms),
                "idle {idle_ms} ms"
            );
        }
        // Never slower than 50 ms, never a busy loop.
        for idle_ms in (0..100_000).step_by(777) {
            let p = poll_interval(Duration::from_millis(idle_ms));
            assert!(p >= Duration::from_millis(1) && p <= Duration::from_millis(50));
        }
    }

    #[test]
    fn receipts_round_trip_and_bad_ones_name_the_value() {
        assert_eq!(parse_receipt("42", &format_receipt(42, 3)), Ok((42, 3)));
        for (id, receipt) in [
            ("42", "42"),
            ("42", "41.1"),
            ("42", "42.x"),
            ("42", "42.0"),
            ("42", ""),
        ] {
            let err = parse_receipt(id, receipt).expect_err(receipt);
            assert!(err.contains(&format!("{receipt:?}")), "{err}");
        }
    }

    #[test]
    fn unix_ms_is_zero_before_the_epoch() {
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
