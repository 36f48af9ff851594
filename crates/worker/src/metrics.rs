//! Load accounting (PROTOCOL.md §10.4) and the contents of `/worker_status/`
//! and `/delete_requests/` (§3.3, §3.4).
//!
//! Every request and session event updates one [`Metrics`] value under a
//! short lock. Reports are built from a [`Snapshot`]; after a successful send
//! exactly the amounts that were sent are subtracted, so events that arrive
//! while a report is in flight are kept for the next one (the reference
//! resets to zero and loses them). Sending is done by [`crate::reporter`].
//!
//! Every amount is finite by construction: a load entering the accounting is
//! clamped to `0 ..= MAX_COST` and every total saturates at
//! [`protocol::MAX_LOAD_TOTAL`], so no sequence of events can make a report
//! carry an infinity (which `serde_json` would write as `null`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use nullworker_protocol::{self as protocol, DeleteRecord, DeleteRequestStatus, WorkerStatus};

/// Oldest delete records are dropped beyond this many (engine unreachable for long).
const MAX_DELETE_QUEUE: usize = 100_000;
/// Queue length at which the delete sender is woken before its next tick,
/// so that a flood of requests keeps the queue (and memory) small.
const DELETE_FLUSH_AT: usize = 512;

/// `load` as the accounting takes it: finite, from 0 to [`protocol::MAX_COST`].
fn bounded(load: f64) -> f64 {
    if load.is_nan() {
        0.0
    } else {
        load.clamp(0.0, protocol::MAX_COST)
    }
}

/// `total + amount`, saturating at [`protocol::MAX_LOAD_TOTAL`].
fn add(total: &mut f64, amount: f64) {
    *total = (*total + amount).min(protocol::MAX_LOAD_TOTAL);
}

/// `total - amount`, never below zero (a saturated total loses the excess).
fn sub(total: &mut f64, amount: f64) {
    *total = (*total - amount).max(0.0);
}

/// Handle of a tracked in-flight item (plain request or session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackKey(u64);

#[derive(Debug, Clone, Copy)]
struct Tracked {
    request_idx: u64,
    load: f64,
    session: bool,
    entered_at: f64,
}

#[derive(Debug, Default)]
struct Inner {
    next_key: u64,
    working: HashMap<TrackKey, Tracked>,
    /// Σ load of tracked items that are not sessions (the `wait_time` numerator).
    plain_load: f64,
    received: f64,
    cancelled: f64,
    cur_perf: f64,
    rej_load: f64,
    num_received: u64,
    error_msg: String,
    loadtime: f64,
    max_perf: f64,
    /// Events that call for a report ("update pending", §10.1), counted so
    /// that one recorded while a report is in flight is not cleared by it.
    events: u64,
    /// `events` as of the last delivered report.
    reported_events: u64,
    deletes: VecDeque<DeleteRecord>,
    dropped_deletes: u64,
}

/// The per-interval amounts a report carried, subtracted once it is delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// `events` when the snapshot was taken.
    events: u64,
    received: f64,
    cancelled: f64,
    cur_perf: f64,
    rej_load: f64,
}

/// A report's content plus what to subtract after a successful delivery.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The `/worker_status/` body (disk fields and identity are filled by the reporter).
    pub status: WorkerStatus,
    /// Interval amounts included in `status`.
    pub sent: Sent,
}

/// The worker's load counters, error state and delete queue.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Notified when the delete queue reaches [`DELETE_FLUSH_AT`] records.
    pub deletes_ready: tokio::sync::Notify,
}

impl Metrics {
    /// Fresh counters: not loaded, no error.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("metrics lock")
    }

    fn track(inner: &mut Inner, item: Tracked) -> TrackKey {
        inner.next_key += 1;
        let key = TrackKey(inner.next_key);
        if !item.session {
            add(&mut inner.plain_load, item.load);
        }
        inner.working.insert(key, item);
        key
    }

    fn untrack(inner: &mut Inner, key: TrackKey) -> Option<Tracked> {
        let item = inner.working.remove(&key)?;
        if !item.session {
            sub(&mut inner.plain_load, item.load);
            if !inner.working.values().any(|t| !t.session) {
                // Keep the running sum exact once nothing plain is in flight.
                inner.plain_load = 0.0;
            }
        }
        Some(item)
    }

    fn push_delete(&self, inner: &mut Inner, record: DeleteRecord) {
        if inner.deletes.len() >= MAX_DELETE_QUEUE {
            inner.deletes.pop_front();
            inner.dropped_deletes += 1;
        }
        inner.deletes.push_back(record);
        if inner.deletes.len() == DELETE_FLUSH_AT {
            self.deletes_ready.notify_one();
        }
    }

    /// The admission estimate of §5.2 step 6: Σ load of in-flight plain
    /// requests ÷ max(`max_perf`, 0.00001).
    pub fn wait_time(&self) -> f64 {
        let inner = self.lock();
        inner.plain_load / inner.max_perf.max(protocol::WAIT_TIME_PERF_FLOOR)
    }

    /// A plain request was admitted (`new_load += w`, tracked, received).
    pub fn plain_admitted(&self, request_idx: u64, load: f64, now: f64) -> TrackKey {
        self.admit(request_idx, load, false, now)
    }

    /// A tracked plain request ended with `status` (`Success`, `Error` or `Cancelled`).
    pub fn plain_finished(&self, key: TrackKey, status: DeleteRequestStatus, now: f64) {
        let mut inner = self.lock();
        let Some(item) = Self::untrack(&mut inner, key) else {
            return;
        };
        let completed = match status {
            DeleteRequestStatus::Success => {
                add(&mut inner.cur_perf, item.load);
                inner.events += 1;
                now
            }
            DeleteRequestStatus::Error => {
                inner.events += 1;
                now
            }
            DeleteRequestStatus::Cancelled | DeleteRequestStatus::Rejected => {
                add(&mut inner.cancelled, item.load);
                0.0
            }
        };
        let record = DeleteRecord::new(
            item.request_idx,
            status,
            item.entered_at,
            item.entered_at,
            completed,
        );
        self.push_delete(&mut inner, record);
    }

    /// A plain request or a session create was refused (401/429).
    pub fn rejected(&self, request_idx: u64, load: f64, now: f64) {
        let mut inner = self.lock();
        add(&mut inner.rej_load, bounded(load));
        inner.num_received += 1;
        inner.events += 1;
        self.push_delete(
            &mut inner,
            DeleteRecord::new(request_idx, DeleteRequestStatus::Rejected, now, 0.0, 0.0),
        );
    }

    /// A session opened: its cost enters `cur_load` until it closes.
    pub fn session_opened(&self, request_idx: u64, cost: f64, created_at: f64) -> TrackKey {
        self.admit(request_idx, cost, true, created_at)
    }

    /// A tracked item arrived: `new_load += load`, received, tracked (§10.4).
    fn admit(&self, request_idx: u64, load: f64, session: bool, now: f64) -> TrackKey {
        let load = bounded(load);
        let mut inner = self.lock();
        add(&mut inner.received, load);
        inner.num_received += 1;
        inner.events += 1;
        Self::track(
            &mut inner,
            Tracked {
                request_idx,
                load,
                session,
                entered_at: now,
            },
        )
    }

    /// A session closed (end, release, expiry, shutdown): counted as successful.
    pub fn session_closed(&self, key: TrackKey, now: f64) {
        let mut inner = self.lock();
        let Some(item) = Self::untrack(&mut inner, key) else {
            return;
        };
        add(&mut inner.cur_perf, item.load);
        inner.events += 1;
        let record = DeleteRecord::new(
            item.request_idx,
            DeleteRequestStatus::Success,
            item.entered_at,
            item.entered_at,
            now,
        );
        self.push_delete(&mut inner, record);
    }

    /// A request inside a session was admitted (`new_load += w`, not tracked).
    pub fn in_session_admitted(&self, load: f64) {
        let mut inner = self.lock();
        add(&mut inner.received, bounded(load));
        inner.events += 1;
    }

    /// A request inside a session succeeded.
    pub fn in_session_succeeded(&self, load: f64) {
        let mut inner = self.lock();
        add(&mut inner.cur_perf, bounded(load));
        inner.events += 1;
    }

    /// A request inside a session was cut by the session closing.
    pub fn in_session_cancelled(&self, load: f64) {
        add(&mut self.lock().cancelled, bounded(load));
    }

    /// A request inside a session was refused (401/429).
    pub fn in_session_rejected(&self, load: f64) {
        let mut inner = self.lock();
        add(&mut inner.rej_load, bounded(load));
        inner.events += 1;
    }

    /// Records an error (sticky, Q12). Returns whether `error_msg` changed.
    pub fn record_error(&self, message: &str) -> bool {
        let mut inner = self.lock();
        if inner.error_msg == message {
            return false;
        }
        inner.error_msg = message.to_owned();
        true
    }

    /// The current `error_msg` (empty when healthy).
    pub fn error_msg(&self) -> String {
        self.lock().error_msg.clone()
    }

    /// Marks the worker loaded: `loadtime` and `max_perf` from now on.
    pub fn set_loaded(&self, loadtime: f64, max_perf: f64) {
        let mut inner = self.lock();
        // A loaded worker always reports loadtime > 0 (the engine's readiness test).
        inner.loadtime = loadtime.max(1e-6);
        inner.max_perf = max_perf;
    }

    /// Whether the worker counts as loaded for the report cadence (§10.1):
    /// it is ready, or it has recorded an error.
    pub fn loaded(&self) -> bool {
        let inner = self.lock();
        inner.max_perf > 0.0 || !inner.error_msg.is_empty()
    }

    /// Whether an event since the last successful report asks for a new one.
    pub fn update_pending(&self) -> bool {
        let inner = self.lock();
        inner.events != inner.reported_events
    }

    /// Number of tracked in-flight items.
    pub fn working(&self) -> usize {
        self.lock().working.len()
    }

    /// The report content now. Identity, `url` and disk fields are left for the caller.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let mut idxs: Vec<(TrackKey, u64)> = inner
            .working
            .iter()
            .map(|(key, item)| (*key, item.request_idx))
            .collect();
        idxs.sort_unstable_by_key(|(key, _)| key.0);
        let mut cur_load = 0.0;
        for item in inner.working.values() {
            add(&mut cur_load, item.load);
        }
        let sent = Sent {
            events: inner.events,
            received: inner.received,
            cancelled: inner.cancelled,
            cur_perf: inner.cur_perf,
            rej_load: inner.rej_load,
        };
        let status = WorkerStatus {
            id: 0,
            mtoken: String::new(),
            version: protocol::FRAMEWORK_VERSION.to_owned(),
            loadtime: inner.loadtime,
            cur_load,
            rej_load: inner.rej_load,
            new_load: (inner.received - inner.cancelled).max(0.0),
            error_msg: inner.error_msg.clone(),
            max_perf: inner.max_perf,
            cur_perf: inner.cur_perf,
            cur_capacity: 0.0,
            max_capacity: 0.0,
            num_requests_working: inner.working.len() as u64,
            num_requests_recieved: inner.num_received,
            additional_disk_usage: 0.0,
            disk_usage: None,
            working_request_idxs: idxs.into_iter().map(|(_, idx)| idx).collect(),
            url: String::new(),
        };
        Snapshot { status, sent }
    }

    /// A report built from `sent` was delivered: subtract it and clear "update pending".
    pub fn commit(&self, sent: Sent) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        sub(&mut inner.received, sent.received);
        sub(&mut inner.cancelled, sent.cancelled);
        sub(&mut inner.cur_perf, sent.cur_perf);
        sub(&mut inner.rej_load, sent.rej_load);
        // Exactly zero when nothing happened meanwhile (no float residue).
        for v in [
            &mut inner.received,
            &mut inner.cancelled,
            &mut inner.cur_perf,
            &mut inner.rej_load,
        ] {
            if v.abs() < 1e-9 {
                *v = 0.0;
            }
        }
        // Events recorded while this report was in flight stay pending.
        inner.reported_events = inner.reported_events.max(sent.events);
    }

    /// Up to `max` queued delete records, oldest first, without removing them.
    pub fn peek_deletes(&self, max: usize) -> Vec<DeleteRecord> {
        self.lock().deletes.iter().take(max).cloned().collect()
    }

    /// Removes the `n` oldest delete records (they were delivered).
    pub fn drop_deletes(&self, n: usize) {
        let mut inner = self.lock();
        let n = n.min(inner.deletes.len());
        inner.deletes.drain(..n);
        if inner.deletes.capacity() > 4 * DELETE_FLUSH_AT && inner.deletes.len() < DELETE_FLUSH_AT {
            inner.deletes.shrink_to(2 * DELETE_FLUSH_AT);
        }
    }

    /// Number of queued delete records.
    pub fn pending_deletes(&self) -> usize {
        self.lock().deletes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lifecycle_matches_the_table() {
        let m = Metrics::new();
        m.set_loaded(0.01, 100.0);
        let key = m.session_opened(7, 100.0, 10.0);
        let s = m.snapshot().status;
        assert_eq!(
            (s.cur_load, s.new_load, s.num_requests_working),
            (100.0, 100.0, 1)
        );
        assert_eq!(s.working_request_idxs, vec![7]);
        assert_eq!(s.num_requests_recieved, 1);
        // Sessions do not count in wait_time.
        assert_eq!(m.wait_time(), 0.0);

        m.rejected(8, 100.0, 11.0);
        m.session_closed(key, 12.0);
        let snap = m.snapshot();
        assert_eq!(snap.status.cur_load, 0.0);
        assert_eq!(snap.status.cur_perf, 100.0);
        assert_eq!(snap.status.rej_load, 100.0);
        assert_eq!(snap.status.num_requests_recieved, 2);
        let deletes = m.peek_deletes(10);
        assert_eq!(deletes.len(), 2);
        assert_eq!(deletes[0].status, DeleteRequestStatus::Rejected);
        assert!(!deletes[0].success);
        assert_eq!(deletes[1].status, DeleteRequestStatus::Success);
        assert_eq!(
            (
                deletes[1].entered_queue_at,
                deletes[1].work_started_at,
                deletes[1].work_completed_at
            ),
            (10.0, 10.0, 12.0)
        );
        m.drop_deletes(1);
        assert_eq!(m.pending_deletes(), 1);

        // An event during the send survives the commit.
        m.in_session_rejected(100.0);
        m.commit(snap.sent);
        let s = m.snapshot().status;
        assert_eq!((s.cur_perf, s.new_load, s.rej_load), (0.0, 0.0, 100.0));
        assert_eq!(s.num_requests_recieved, 2, "cumulative, never reset");
    }

    #[test]
    fn plain_requests_and_wait_time() {
        let m = Metrics::new();
        let a = m.plain_admitted(1, 100.0, 1.0);
        // Not loaded: max_perf 0 makes any plain load a huge wait.
        assert!(m.wait_time() > 1e6);
        m.set_loaded(0.5, 100.0);
        let b = m.plain_admitted(2, 100.0, 1.0);
        assert_eq!(m.wait_time(), 2.0);
        m.plain_finished(a, DeleteRequestStatus::Success, 2.0);
        m.plain_finished(b, DeleteRequestStatus::Cancelled, 2.0);
        assert_eq!(m.wait_time(), 0.0);
        let s = m.snapshot().status;
        assert_eq!((s.new_load, s.cur_perf, s.cur_load), (100.0, 100.0, 0.0));
        let d = m.peek_deletes(10);
        assert_eq!(d[1].status, DeleteRequestStatus::Cancelled);
        assert!(d[1].success);
        assert_eq!(d[1].work_completed_at, 0.0);
    }

    #[test]
    fn errors_are_sticky_and_mark_loaded() {
        let m = Metrics::new();
        assert!(!m.loaded());
        assert!(m.record_error("boom"));
        assert!(!m.record_error("boom"));
        assert!(m.loaded());
        m.commit(m.snapshot().sent);
        assert_eq!(m.error_msg(), "boom");
    }

    /// The numbers of a report, by name.
    fn numbers(s: &WorkerStatus) -> [(&'static str, f64); 4] {
        [
            ("cur_load", s.cur_load),
            ("new_load", s.new_load),
            ("cur_perf", s.cur_perf),
            ("rej_load", s.rej_load),
        ]
    }

    #[test]
    fn huge_costs_saturate_instead_of_overflowing() {
        // Before the bounds: two rejected creates with cost 1e308 made
        // rej_load infinite, the report carried null and the engine refused
        // it forever.
        let m = Metrics::new();
        m.set_loaded(0.01, 100.0);
        for i in 0..4 {
            m.rejected(i, 1e308, 1.0);
            let key = m.session_opened(10 + i, f64::INFINITY, 1.0);
            m.session_closed(key, 2.0);
            m.in_session_rejected(f64::NAN);
        }
        let _open = m.session_opened(20, 1e308, 3.0);
        let s = m.snapshot().status;
        for (name, value) in numbers(&s) {
            assert!(
                value.is_finite() && (0.0..=protocol::MAX_LOAD_TOTAL).contains(&value),
                "{name} = {value}"
            );
        }
        assert_eq!(s.cur_load, protocol::MAX_COST);
        assert_eq!(s.rej_load, 4.0 * protocol::MAX_COST);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("null"), "{json}");
    }

    proptest::proptest! {
        /// Whatever the events and their loads, every reported total is
        /// finite, non-negative and at most MAX_LOAD_TOTAL, and a commit
        /// of what was sent leaves the totals non-negative.
        #[test]
        fn report_totals_stay_finite_and_bounded(
            ops in proptest::collection::vec(
                (0u8..7, proptest::prop_oneof![
                    proptest::num::f64::ANY,
                    0.0..1e3,
                    proptest::strategy::Just(1e308),
                    proptest::strategy::Just(protocol::MAX_COST),
                ]),
                1..200,
            )
        ) {
            let m = Metrics::new();
            m.set_loaded(0.01, 100.0);
            let mut open = Vec::new();
            let mut in_flight = None;
            for (op, load) in ops {
                match op {
                    0 => open.push(m.session_opened(1, load, 1.0)),
                    1 => if let Some(key) = open.pop() { m.session_closed(key, 2.0) },
                    2 => m.rejected(2, load, 1.0),
                    3 => { m.in_session_admitted(load); m.in_session_succeeded(load) }
                    4 => m.in_session_cancelled(load),
                    5 => in_flight = Some(m.snapshot()),
                    _ => if let Some(snap) = in_flight.take() { m.commit(snap.sent) },
                }
                let s = m.snapshot().status;
                for (name, value) in numbers(&s) {
                    proptest::prop_assert!(
                        value.is_finite() && (0.0..=protocol::MAX_LOAD_TOTAL).contains(&value),
                        "{} = {}", name, value
                    );
                }
                proptest::prop_assert!(m.wait_time().is_finite());
            }
        }
    }

    #[test]
    fn an_event_during_a_report_in_flight_stays_pending() {
        let m = Metrics::new();
        let key = m.session_opened(7, 100.0, 1.0);
        assert!(m.update_pending());
        let in_flight = m.snapshot();
        // The session closes while that report is being delivered.
        m.session_closed(key, 2.0);
        m.commit(in_flight.sent);
        assert!(m.update_pending(), "the close must still be reported soon");
        m.commit(m.snapshot().sent);
        assert!(!m.update_pending());
    }
}
