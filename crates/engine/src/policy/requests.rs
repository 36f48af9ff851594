//! The request table of `/route/` (PROTOCOL §12.4 steps 2–3 and 6): one entry
//! per logical client request, keyed by `request_idx`.
//!
//! It remembers which requests wait, since when, and which worker each
//! assigned request went to until that worker's reports show it, so that
//! [`RequestTable::pending_cost`] can add assignments the worker has not
//! reported yet to its load. One table per endpoint.
//!
//! Demand is what clients are still asking for: a waiting request not
//! polled again within [`WAITING_POLL_WINDOW`] stops counting as waiting,
//! and an assignment that no report of its worker confirms within
//! [`ASSIGNMENT_CONFIRM_WINDOW`] is released. Either entry stays known,
//! for answering a late poll or replay, until its `replay_timeout` runs
//! out; then it is forgotten, so memory is bounded by the request rate
//! times the timeout.
//!
//! Owns no I/O and reads no clock: every time is passed in.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};

/// `replay_timeout` used when a request gives none or a non-finite one.
pub const DEFAULT_REPLAY_TIMEOUT: f64 = 60.0;
/// Smallest `replay_timeout` honoured, in seconds.
pub const MIN_REPLAY_TIMEOUT: f64 = 1.0;
/// Largest `replay_timeout` honoured, in seconds: a client cannot pin an
/// entry in memory for longer than this without polling.
pub const MAX_REPLAY_TIMEOUT: f64 = 600.0;

/// A waiting request not polled again for this long (seconds) stops
/// counting as demand: 3 × the SDK's longest poll interval (5 s, PROTOCOL
/// §7.1), so a client that is still polling never lapses even if a poll
/// is lost, while one that was interrupted stops keeping workers up (or
/// blocking scale-down) within 15 s instead of its `replay_timeout`
/// (60 s, up to 600 s). The engine's own `/route/` hold (at most 8 s)
/// counts as polling: it re-polls when it answers.
pub const WAITING_POLL_WINDOW: f64 = 15.0;

/// An assignment (READY answer) that no report of its worker lists, and no
/// `/delete_requests/` record finishes, within this long (seconds) is
/// released: its worker stops counting it (pending cost, held session). A
/// worker reports within about a second of a request or session starting
/// (PROTOCOL §10.1), and the SDK gives a worker 10 s to answer
/// `/session/create`, so a READY still unconfirmed after 10 s was not used.
pub const ASSIGNMENT_CONFIRM_WINDOW: f64 = 10.0;

/// Clamps a client-supplied `replay_timeout` to
/// [`MIN_REPLAY_TIMEOUT`, `MAX_REPLAY_TIMEOUT`]; NaN, infinite or negative
/// values give [`DEFAULT_REPLAY_TIMEOUT`].
pub fn clamp_replay_timeout(replay_timeout: f64) -> f64 {
    if replay_timeout.is_finite() && replay_timeout >= 0.0 {
        replay_timeout.clamp(MIN_REPLAY_TIMEOUT, MAX_REPLAY_TIMEOUT)
    } else {
        DEFAULT_REPLAY_TIMEOUT
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Known, neither waiting nor assigned (just routed, or replayed).
    Unassigned { since: f64 },
    /// Answered WAITING; `last_poll` is the latest `/route/` for it.
    Waiting { last_poll: f64 },
    /// Answered READY with `worker`; `seen` once a report of that worker
    /// lists the index (its cost is then in the reported load).
    Assigned {
        worker: i64,
        at: f64,
        seen: bool,
        last_seen: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    cost: f64,
    replay_timeout: f64,
    /// When the request was first answered WAITING, kept across replays.
    first_wait: Option<f64>,
    phase: Phase,
}

impl Entry {
    /// When the entry changes unless it is heard of again: a waiting
    /// request lapses, an unconfirmed assignment is released, anything
    /// else is forgotten.
    fn deadline(&self) -> f64 {
        match self.phase {
            Phase::Unassigned { since } => since + self.replay_timeout,
            Phase::Waiting { last_poll } => {
                last_poll + WAITING_POLL_WINDOW.min(self.replay_timeout)
            }
            Phase::Assigned {
                at, seen: false, ..
            } => at + ASSIGNMENT_CONFIRM_WINDOW.min(self.replay_timeout),
            Phase::Assigned {
                seen: true,
                last_seen,
                ..
            } => last_seen + self.replay_timeout,
        }
    }
}

/// A scheduled expiry check; ordered by time, then index.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: f64,
    idx: u64,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.total_cmp(&other.at).then(self.idx.cmp(&other.idx))
    }
}

/// Assignments of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
struct WorkerAssignments {
    /// Σ cost of assignments not yet seen in its reports.
    pending_cost: f64,
    /// Number of assignments not yet seen.
    unseen: u32,
    /// Every assigned index (seen or not); a set, so that releasing one of
    /// many assignments of a worker is O(1), not a scan of them all.
    idxs: HashSet<u64>,
}

/// The request table of one endpoint. See the module documentation.
#[derive(Debug, Clone)]
pub struct RequestTable {
    entries: HashMap<u64, Entry>,
    workers: HashMap<i64, WorkerAssignments>,
    waiting: HashSet<u64>,
    next_idx: u64,
    changed: HashSet<i64>,
    /// At least one check per entry, at or before its deadline; checks of
    /// removed entries are skipped when they come up.
    deadlines: BinaryHeap<Reverse<Deadline>>,
}

impl Default for RequestTable {
    fn default() -> Self {
        RequestTable::new()
    }
}

/// Report lists longer than this are hashed before membership tests.
const LINEAR_SEARCH_MAX: usize = 16;

impl RequestTable {
    /// An empty table whose first `request_idx` is 1.
    pub fn new() -> Self {
        RequestTable::starting_at(1)
    }

    /// An empty table whose first `request_idx` is `first` (0 counts as 1).
    /// After an engine restart, start above any index workers may still
    /// report (e.g. at the current time in milliseconds) so that new
    /// requests are not confused with sessions held across the restart.
    pub fn starting_at(first: u64) -> Self {
        RequestTable {
            entries: HashMap::new(),
            workers: HashMap::new(),
            waiting: HashSet::new(),
            next_idx: first.max(1),
            changed: HashSet::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// The index the next new request will get.
    pub fn next_idx(&self) -> u64 {
        self.next_idx
    }

    /// Registers a `/route/` call and returns the request's index.
    ///
    /// `request_idx` 0 or unknown ⇒ a new entry with a fresh index. A known
    /// index is the same logical request: a poll of a waiting request keeps
    /// it alive; a request that had an assignment is being replayed (its
    /// worker rejected or lost it), so the assignment is dropped. The caller
    /// then calls [`assign`](Self::assign) or
    /// [`mark_waiting`](Self::mark_waiting) with the returned index.
    /// `replay_timeout` is clamped by [`clamp_replay_timeout`].
    pub fn route(&mut self, request_idx: u64, cost: f64, replay_timeout: f64, now: f64) -> u64 {
        let replay_timeout = clamp_replay_timeout(replay_timeout);
        if request_idx != 0 {
            if let Some(phase) = self.entries.get(&request_idx).map(|entry| entry.phase) {
                // Detach first: it subtracts the cost the assignment added.
                let phase = match phase {
                    Phase::Waiting { .. } => Phase::Waiting { last_poll: now },
                    Phase::Unassigned { .. } => Phase::Unassigned { since: now },
                    Phase::Assigned { .. } => {
                        self.detach(request_idx);
                        Phase::Unassigned { since: now }
                    }
                };
                if let Some(entry) = self.entries.get_mut(&request_idx) {
                    let shorter = replay_timeout < entry.replay_timeout;
                    entry.cost = cost;
                    entry.replay_timeout = replay_timeout;
                    entry.phase = phase;
                    if shorter {
                        // The pending check may now be too late.
                        self.schedule(request_idx, now + replay_timeout);
                    }
                }
                return request_idx;
            }
        }
        let idx = self.next_idx;
        self.next_idx += 1;
        self.entries.insert(
            idx,
            Entry {
                cost,
                replay_timeout,
                first_wait: None,
                phase: Phase::Unassigned { since: now },
            },
        );
        self.schedule(idx, now + replay_timeout);
        idx
    }

    /// Records that request `idx` was answered READY with `worker_id`.
    /// Its `cost` counts in [`pending_cost`](Self::pending_cost) of that
    /// worker until a report of the worker lists `idx`. Returns when the
    /// request was first answered WAITING, if it ever was (for the
    /// wait-to-ready histogram). An index not in the table is added.
    pub fn assign(&mut self, idx: u64, worker_id: i64, cost: f64, now: f64) -> Option<f64> {
        let entry = self.reset_entry(idx, cost, now);
        entry.phase = Phase::Assigned {
            worker: worker_id,
            at: now,
            seen: false,
            last_seen: now,
        };
        let first_wait = entry.first_wait;
        let release_at = entry.deadline();
        // Its release may come before the check already scheduled.
        self.schedule(idx, release_at);
        let assignments = self.workers.entry(worker_id).or_default();
        assignments.pending_cost += cost;
        assignments.unseen += 1;
        assignments.idxs.insert(idx);
        self.changed.insert(worker_id);
        if idx >= self.next_idx {
            self.next_idx = idx + 1;
        }
        first_wait
    }

    /// The entry of request `idx` with `cost`, detached from any earlier
    /// assignment (or added, with its expiry scheduled, if unknown), for
    /// the caller to give its new phase.
    fn reset_entry(&mut self, idx: u64, cost: f64, now: f64) -> &mut Entry {
        if self.entries.contains_key(&idx) {
            self.detach(idx);
        } else {
            self.schedule(idx, now + DEFAULT_REPLAY_TIMEOUT);
        }
        let entry = self.entries.entry(idx).or_insert_with(|| Entry {
            cost,
            replay_timeout: DEFAULT_REPLAY_TIMEOUT,
            first_wait: None,
            phase: Phase::Unassigned { since: now },
        });
        entry.cost = cost;
        entry
    }

    /// Records that request `idx` was answered WAITING. The first WAITING
    /// of a request sets its wait start ([`waiting`](Self::waiting)); later
    /// polls only keep it alive. An index not in the table is added.
    pub fn mark_waiting(&mut self, idx: u64, cost: f64, now: f64) {
        let was_waiting = matches!(
            self.entries.get(&idx).map(|e| e.phase),
            Some(Phase::Waiting { .. })
        );
        let entry = self.reset_entry(idx, cost, now);
        entry.first_wait.get_or_insert(now);
        entry.phase = Phase::Waiting { last_poll: now };
        let lapse_at = entry.deadline();
        if !was_waiting {
            // A poll of a waiting request only moves its lapse later; a
            // request starting (or resuming) to wait may lapse before the
            // check already scheduled.
            self.schedule(idx, lapse_at);
        }
        self.waiting.insert(idx);
        if idx >= self.next_idx {
            self.next_idx = idx + 1;
        }
    }

    /// Takes a `/worker_status/` report of `worker_id` into account: its
    /// assignments listed in `working_request_idxs` become visible (no longer
    /// pending); visible ones no longer listed are finished and forgotten.
    pub fn observe_report(&mut self, worker_id: i64, working_request_idxs: &[u64], now: f64) {
        let Some(assignments) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let hashed: Option<HashSet<u64>> = (working_request_idxs.len() > LINEAR_SEARCH_MAX)
            .then(|| working_request_idxs.iter().copied().collect());
        let listed = |idx: u64| match &hashed {
            Some(set) => set.contains(&idx),
            None => working_request_idxs.contains(&idx),
        };
        let mut changed = false;
        let entries = &mut self.entries;
        assignments.idxs.retain(|&idx| {
            let Some(entry) = entries.get_mut(&idx) else {
                return false;
            };
            let Phase::Assigned { at, seen, .. } = entry.phase else {
                return false;
            };
            if listed(idx) {
                if !seen {
                    assignments.pending_cost -= entry.cost;
                    assignments.unseen -= 1;
                    changed = true;
                }
                entry.phase = Phase::Assigned {
                    worker: worker_id,
                    at,
                    seen: true,
                    last_seen: now,
                };
                true
            } else if seen {
                entries.remove(&idx);
                changed = true;
                false
            } else {
                true
            }
        });
        if assignments.unseen == 0 {
            assignments.pending_cost = 0.0;
        }
        let empty = assignments.idxs.is_empty();
        if empty {
            self.workers.remove(&worker_id);
        }
        if changed {
            self.changed.insert(worker_id);
        }
    }

    /// Takes a `/delete_requests/` notification into account: the listed
    /// requests are finished on `worker_id` and forgotten. An index now
    /// assigned to another worker (the client replayed it) is left alone.
    pub fn observe_finished(&mut self, worker_id: i64, idxs: &[u64]) {
        for &idx in idxs {
            let assigned_here = matches!(
                self.entries.get(&idx),
                Some(Entry { phase: Phase::Assigned { worker, .. }, .. }) if *worker == worker_id
            );
            if assigned_here {
                self.detach(idx);
                self.entries.remove(&idx);
            }
        }
    }

    /// Forgets every assignment to `worker_id` (it is gone or will receive
    /// nothing more). Their clients will replay; replays of an index no
    /// longer known get a fresh one. Returns how many were dropped.
    pub fn forget_worker(&mut self, worker_id: i64) -> usize {
        let Some(assignments) = self.workers.remove(&worker_id) else {
            return 0;
        };
        for idx in &assignments.idxs {
            self.entries.remove(idx);
        }
        self.changed.insert(worker_id);
        assignments.idxs.len()
    }

    /// Ends what is no longer asked for: a waiting request not polled
    /// within [`WAITING_POLL_WINDOW`] stops waiting (it no longer counts as
    /// demand), an assignment not confirmed within
    /// [`ASSIGNMENT_CONFIRM_WINDOW`] is released from its worker; either
    /// stays known for replays. Entries not heard of within their
    /// `replay_timeout` (requests left unassigned, lapsed or released
    /// ones, assignments no longer reported) are dropped. Returns how many
    /// entries were dropped. Costs O(log n) per entry changed or
    /// re-checked, not a scan.
    pub fn expire(&mut self, now: f64) -> usize {
        let mut dropped = 0;
        while let Some(Reverse(check)) = self.deadlines.peek().copied() {
            if check.at >= now {
                break;
            }
            self.deadlines.pop();
            let Some(entry) = self.entries.get(&check.idx) else {
                continue;
            };
            let deadline = entry.deadline();
            if deadline >= now {
                // Heard of since: check again at its new deadline.
                self.schedule(check.idx, deadline);
                continue;
            }
            // The client's last sign: from then on it only counts for
            // answering its replay, until its replay_timeout.
            let last = match entry.phase {
                Phase::Waiting { last_poll } => Some(last_poll),
                Phase::Assigned {
                    at, seen: false, ..
                } => Some(at),
                _ => None,
            };
            let replay_timeout = entry.replay_timeout;
            self.detach(check.idx);
            match last {
                Some(since) if since + replay_timeout >= now => {
                    if let Some(entry) = self.entries.get_mut(&check.idx) {
                        entry.phase = Phase::Unassigned { since };
                    }
                    self.schedule(check.idx, since + replay_timeout);
                }
                _ => {
                    self.entries.remove(&check.idx);
                    dropped += 1;
                }
            }
        }
        // Checks of entries removed otherwise pile up; rebuild when they
        // outnumber the live ones.
        if self.deadlines.len() > 2 * self.entries.len() + 1024 {
            self.deadlines = self
                .entries
                .iter()
                .map(|(&idx, entry)| {
                    Reverse(Deadline {
                        at: entry.deadline(),
                        idx,
                    })
                })
                .collect();
        }
        dropped
    }

    /// Σ cost of assignments to `worker_id` that its reports do not show
    /// yet. O(1).
    pub fn pending_cost(&self, worker_id: i64) -> f64 {
        // Never below 0: adding then subtracting costs of very different
        // sizes may leave a rounding residue.
        self.workers
            .get(&worker_id)
            .map_or(0.0, |assignments| assignments.pending_cost.max(0.0))
    }

    /// The worker has an assignment in the table (pending, or visible and
    /// still in its reports). O(1).
    pub fn has_outstanding(&self, worker_id: i64) -> bool {
        self.workers.contains_key(&worker_id)
    }

    /// Number of assignments to `worker_id` in the table.
    pub fn outstanding(&self, worker_id: i64) -> usize {
        self.workers
            .get(&worker_id)
            .map_or(0, |assignments| assignments.idxs.len())
    }

    /// The worker a request is assigned to, if it is.
    pub fn assigned_worker(&self, idx: u64) -> Option<i64> {
        match self.entries.get(&idx)?.phase {
            Phase::Assigned { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// When request `idx` was first answered WAITING, if it was.
    pub fn waiting_since(&self, idx: u64) -> Option<f64> {
        self.entries.get(&idx)?.first_wait
    }

    /// `(cost, since)` of every waiting request, `since` being its first
    /// WAITING answer. O(waiting requests).
    pub fn waiting(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.waiting.iter().filter_map(|idx| {
            let entry = self.entries.get(idx)?;
            Some((entry.cost, entry.first_wait?))
        })
    }

    /// The earliest `since` among waiting requests.
    pub fn oldest_wait(&self) -> Option<f64> {
        self.waiting().map(|(_, since)| since).reduce(f64::min)
    }

    /// Number of waiting requests.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Σ cost of waiting requests.
    pub fn waiting_cost(&self) -> f64 {
        // Folded from +0.0: an empty f64 sum is -0.0, which prints as "-0".
        self.waiting().fold(0.0, |sum, (cost, _)| sum + cost)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Workers whose [`pending_cost`](Self::pending_cost) or
    /// [`has_outstanding`](Self::has_outstanding) may have changed since the
    /// last call, so a router that caches candidates can refresh just those.
    pub fn drain_changed(&mut self) -> Vec<i64> {
        self.changed.drain().collect()
    }

    /// Like [`drain_changed`](Self::drain_changed), appending to `out` (a
    /// buffer the caller reuses, so the `/route/` path does not allocate).
    pub fn drain_changed_into(&mut self, out: &mut Vec<i64>) {
        out.extend(self.changed.drain());
    }

    fn schedule(&mut self, idx: u64, at: f64) {
        self.deadlines.push(Reverse(Deadline { at, idx }));
    }

    /// Removes `idx` from the waiting set and from its worker's assignments,
    /// leaving the entry itself in place (phase unchanged).
    fn detach(&mut self, idx: u64) {
        let Some(entry) = self.entries.get(&idx) else {
            return;
        };
        match entry.phase {
            Phase::Waiting { .. } => {
                self.waiting.remove(&idx);
            }
            Phase::Assigned { worker, seen, .. } => {
                let cost = entry.cost;
                if let Some(assignments) = self.workers.get_mut(&worker) {
                    if assignments.idxs.remove(&idx) && !seen {
                        assignments.unseen -= 1;
                        assignments.pending_cost -= cost;
                    }
                    if assignments.unseen == 0 {
                        assignments.pending_cost = 0.0;
                    }
                    if assignments.idxs.is_empty() {
                        self.workers.remove(&worker);
                    }
                    self.changed.insert(worker);
                }
            }
            Phase::Unassigned { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: f64 = 1_000.0;

    #[test]
    fn an_empty_table_waits_for_positive_zero_cost() {
        let table = RequestTable::new();
        let cost = table.waiting_cost();
        assert_eq!(cost, 0.0);
        assert!(cost.is_sign_positive(), "metrics would print {cost}");
    }

    #[test]
    fn new_requests_get_fresh_indexes_from_one() {
        let mut table = RequestTable::new();
        assert_eq!(table.route(0, 100.0, 60.0, T), 1);
        assert_eq!(table.route(0, 100.0, 60.0, T), 2);
        // An unknown index is a new request too.
        assert_eq!(table.route(77, 100.0, 60.0, T), 3);
        assert_eq!(table.len(), 3);
        let mut table = RequestTable::starting_at(5_000);
        assert_eq!(table.route(0, 1.0, 60.0, T), 5_000);
        assert_eq!(RequestTable::starting_at(0).next_idx(), 1);
    }

    #[test]
    fn waiting_requests_keep_their_first_wait_across_polls() {
        let mut table = RequestTable::new();
        let idx = table.route(0, 100.0, 60.0, T);
        table.mark_waiting(idx, 100.0, T);
        assert_eq!(table.route(idx, 100.0, 60.0, T + 2.0), idx);
        table.mark_waiting(idx, 100.0, T + 2.0);
        assert_eq!(table.waiting().collect::<Vec<_>>(), vec![(100.0, T)]);
        assert_eq!(table.oldest_wait(), Some(T));
        assert_eq!(table.waiting_len(), 1);
        assert_eq!(table.waiting_cost(), 100.0);
        // Being assigned ends the wait and reports when it began.
        assert_eq!(table.assign(idx, 9, 100.0, T + 3.0), Some(T));
        assert_eq!(table.waiting_len(), 0);
        assert_eq!(table.oldest_wait(), None);
        assert_eq!(table.waiting_since(idx), Some(T));
    }

    #[test]
    fn assignment_is_pending_until_the_worker_reports_it() {
        let mut table = RequestTable::new();
        let idx = table.route(0, 100.0, 60.0, T);
        assert_eq!(table.assign(idx, 1, 100.0, T), None);
        assert_eq!(table.pending_cost(1), 100.0);
        assert!(table.has_outstanding(1));
        assert_eq!(table.assigned_worker(idx), Some(1));
        // A report that does not list it yet changes nothing.
        table.observe_report(1, &[], T + 0.5);
        assert_eq!(table.pending_cost(1), 100.0);
        // Listed: now in the worker's own cur_load, no longer pending.
        table.observe_report(1, &[idx], T + 1.0);
        assert_eq!(table.pending_cost(1), 0.0);
        assert!(table.has_outstanding(1));
        // No longer listed: finished and forgotten.
        table.observe_report(1, &[], T + 2.0);
        assert!(!table.has_outstanding(1));
        assert!(table.is_empty());
    }

    #[test]
    fn delete_requests_finish_an_assignment_never_reported() {
        let mut table = RequestTable::new();
        let a = table.route(0, 100.0, 60.0, T);
        let b = table.route(0, 50.0, 60.0, T);
        table.assign(a, 1, 100.0, T);
        table.assign(b, 1, 50.0, T);
        assert_eq!(table.pending_cost(1), 150.0);
        table.observe_finished(1, &[a]);
        assert_eq!(table.pending_cost(1), 50.0);
        assert_eq!(table.outstanding(1), 1);
        table.observe_finished(1, &[b, 999]);
        assert_eq!(table.pending_cost(1), 0.0);
        assert!(!table.has_outstanding(1));
        assert!(table.is_empty());
    }

    #[test]
    fn a_replay_drops_the_old_assignment() {
        let mut table = RequestTable::new();
        let idx = table.route(0, 100.0, 60.0, T);
        table.assign(idx, 1, 100.0, T);
        table.drain_changed();
        // The worker rejected it; the client routes again with the same idx.
        assert_eq!(table.route(idx, 100.0, 60.0, T + 1.0), idx);
        assert_eq!(table.pending_cost(1), 0.0);
        assert!(!table.has_outstanding(1));
        assert_eq!(table.drain_changed(), vec![1]);
        table.assign(idx, 2, 100.0, T + 1.0);
        assert_eq!(table.pending_cost(2), 100.0);
        // The late rejection record of worker 1 does not touch worker 2's.
        table.observe_finished(1, &[idx]);
        assert_eq!(table.assigned_worker(idx), Some(2));
        assert_eq!(table.pending_cost(2), 100.0);
    }

    #[test]
    fn a_replay_of_a_seen_assignment_also_drops_it() {
        let mut table = RequestTable::new();
        let idx = table.route(0, 100.0, 60.0, T);
        table.assign(idx, 1, 100.0, T);
        table.observe_report(1, &[idx], T + 1.0);
        table.route(idx, 100.0, 60.0, T + 2.0);
        assert!(!table.has_outstanding(1));
        table.mark_waiting(idx, 100.0, T + 2.0);
        assert_eq!(table.waiting().collect::<Vec<_>>(), vec![(100.0, T + 2.0)]);
    }

    #[test]
    fn forgetting_a_worker_drops_its_assignments() {
        let mut table = RequestTable::new();
        for _ in 0..3 {
            let idx = table.route(0, 100.0, 60.0, T);
            table.assign(idx, 4, 100.0, T);
        }
        let other = table.route(0, 100.0, 60.0, T);
        table.assign(other, 5, 100.0, T);
        table.drain_changed();
        assert_eq!(table.forget_worker(4), 3);
        assert_eq!(table.pending_cost(4), 0.0);
        assert_eq!(table.drain_changed(), vec![4]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.forget_worker(4), 0);
        // Its clients' replays get fresh indexes.
        assert_eq!(table.route(1, 100.0, 60.0, T + 1.0), 5);
    }

    #[test]
    fn entries_expire_after_replay_timeout() {
        let mut table = RequestTable::new();
        let waiting = table.route(0, 100.0, 10.0, T);
        table.mark_waiting(waiting, 100.0, T);
        let unseen = table.route(0, 100.0, 10.0, T);
        table.assign(unseen, 1, 100.0, T);
        let seen = table.route(0, 100.0, 10.0, T);
        table.assign(seen, 2, 100.0, T);
        let unassigned = table.route(0, 100.0, 10.0, T);
        assert_eq!(table.expire(T + 10.0), 0);
        // Worker 2 keeps reporting its request; the waiting one is polled.
        table.observe_report(2, &[seen], T + 9.0);
        table.route(waiting, 100.0, 10.0, T + 9.0);
        table.mark_waiting(waiting, 100.0, T + 9.0);
        assert_eq!(table.expire(T + 10.5), 2);
        assert_eq!(table.assigned_worker(unseen), None);
        assert_eq!(table.pending_cost(1), 0.0);
        assert!(!table.has_outstanding(1));
        assert_eq!(table.waiting_since(unassigned), None);
        assert_eq!(table.len(), 2);
        // With no more polls or reports, everything goes.
        assert_eq!(table.expire(T + 20.0), 2);
        assert!(table.is_empty());
        assert_eq!(table.waiting_len(), 0);
        assert!(!table.has_outstanding(2));
    }

    #[test]
    fn a_waiting_request_not_polled_stops_counting_but_stays_known() {
        let mut table = RequestTable::new();
        let polled = table.route(0, 100.0, 60.0, T);
        table.mark_waiting(polled, 100.0, T);
        let gone = table.route(0, 50.0, 60.0, T);
        table.mark_waiting(gone, 50.0, T);
        // One client keeps polling (every 5 s at most); the other stopped.
        for t in [5.0, 10.0, 14.0] {
            table.route(polled, 100.0, 60.0, T + t);
            table.mark_waiting(polled, 100.0, T + t);
        }
        assert_eq!(table.expire(T + WAITING_POLL_WINDOW + 0.5), 0);
        assert_eq!(table.waiting().collect::<Vec<_>>(), vec![(100.0, T)]);
        assert_eq!(table.waiting_cost(), 100.0);
        assert_eq!(table.len(), 2);
        // A late poll is the same request, still waiting since T.
        assert_eq!(table.route(gone, 50.0, 60.0, T + 30.0), gone);
        table.mark_waiting(gone, 50.0, T + 30.0);
        assert_eq!(table.waiting_len(), 2);
        assert_eq!(table.waiting_since(gone), Some(T));
        // And it lapses again without polls; forgotten after replay_timeout.
        table.expire(T + 46.0);
        assert_eq!(table.waiting_len(), 0);
        assert_eq!(table.len(), 2);
        assert_eq!(table.expire(T + 91.0), 2);
        assert!(table.is_empty());
    }

    #[test]
    fn an_assignment_no_report_confirms_is_released() {
        let mut table = RequestTable::new();
        let unused = table.route(0, 100.0, 60.0, T);
        table.assign(unused, 1, 100.0, T);
        let used = table.route(0, 100.0, 60.0, T);
        table.assign(used, 2, 100.0, T);
        table.observe_report(2, &[used], T + 1.0);
        table.drain_changed();
        assert_eq!(table.expire(T + ASSIGNMENT_CONFIRM_WINDOW - 0.5), 0);
        assert!(table.has_outstanding(1));
        table.expire(T + ASSIGNMENT_CONFIRM_WINDOW + 0.5);
        assert!(!table.has_outstanding(1));
        assert_eq!(table.pending_cost(1), 0.0);
        assert_eq!(table.drain_changed(), vec![1]);
        // The released one is still known: a replay keeps its index.
        assert_eq!(table.len(), 2);
        assert_eq!(table.route(unused, 100.0, 60.0, T + 20.0), unused);
        // The confirmed one holds its worker as long as reports list it.
        table.observe_report(2, &[used], T + 50.0);
        table.expire(T + 100.0);
        assert!(table.has_outstanding(2));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_shorter_replay_timeout_takes_effect() {
        let mut table = RequestTable::new();
        let idx = table.route(0, 1.0, 600.0, T);
        table.mark_waiting(idx, 1.0, T);
        table.route(idx, 1.0, 5.0, T + 1.0);
        table.mark_waiting(idx, 1.0, T + 1.0);
        assert_eq!(table.expire(T + 6.0), 0);
        assert_eq!(table.expire(T + 6.5), 1);
    }

    #[test]
    fn expiry_checks_do_not_pile_up() {
        let mut table = RequestTable::new();
        for i in 0..10_000 {
            let now = T + f64::from(i) * 0.01;
            let idx = table.route(0, 1.0, 60.0, now);
            table.assign(idx, 1, 1.0, now);
            table.observe_finished(1, &[idx]);
            table.expire(now);
        }
        assert!(table.is_empty());
        assert!(
            table.deadlines.len() <= 1024 + 1,
            "{}",
            table.deadlines.len()
        );
    }

    #[test]
    fn replay_timeout_is_clamped() {
        assert_eq!(clamp_replay_timeout(60.0), 60.0);
        assert_eq!(clamp_replay_timeout(0.0), MIN_REPLAY_TIMEOUT);
        assert_eq!(clamp_replay_timeout(1e12), MAX_REPLAY_TIMEOUT);
        assert_eq!(clamp_replay_timeout(-5.0), DEFAULT_REPLAY_TIMEOUT);
        assert_eq!(clamp_replay_timeout(f64::NAN), DEFAULT_REPLAY_TIMEOUT);
        assert_eq!(clamp_replay_timeout(f64::INFINITY), DEFAULT_REPLAY_TIMEOUT);
        let mut table = RequestTable::new();
        let idx = table.route(0, 1.0, 1e12, T);
        table.mark_waiting(idx, 1.0, T);
        assert_eq!(table.expire(T + MAX_REPLAY_TIMEOUT + 1.0), 1);
    }

    #[test]
    fn large_reports_are_matched_too() {
        let mut table = RequestTable::new();
        let mut idxs = Vec::new();
        for _ in 0..100 {
            let idx = table.route(0, 1.0, 60.0, T);
            table.assign(idx, 1, 1.0, T);
            idxs.push(idx);
        }
        let reported: Vec<u64> = (1000..1100).chain(idxs[..60].iter().copied()).collect();
        table.observe_report(1, &reported, T + 1.0);
        assert_eq!(table.pending_cost(1), 40.0);
        assert_eq!(table.outstanding(1), 100);
    }

    #[test]
    fn indexes_given_by_assign_or_wait_are_not_reused() {
        let mut table = RequestTable::new();
        table.assign(10, 1, 1.0, T);
        table.mark_waiting(20, 1.0, T);
        assert_eq!(table.route(0, 1.0, 60.0, T), 21);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Route { slot: usize, cost: u8 },
        Assign { slot: usize, worker: i64, cost: u8 },
        Wait { slot: usize },
        Report { worker: i64, slots: Vec<usize> },
        Finished { worker: i64, slots: Vec<usize> },
        Forget { worker: i64 },
        Expire,
        Tick { dt: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let slot = 0usize..12;
        let worker = 1i64..4;
        prop_oneof![
            (slot.clone(), any::<u8>()).prop_map(|(slot, cost)| Op::Route { slot, cost }),
            (slot.clone(), worker.clone(), any::<u8>())
                .prop_map(|(slot, worker, cost)| Op::Assign { slot, worker, cost }),
            slot.clone().prop_map(|slot| Op::Wait { slot }),
            (worker.clone(), prop::collection::vec(slot.clone(), 0..5))
                .prop_map(|(worker, slots)| Op::Report { worker, slots }),
            (worker.clone(), prop::collection::vec(slot, 0..3))
                .prop_map(|(worker, slots)| Op::Finished { worker, slots }),
            worker.prop_map(|worker| Op::Forget { worker }),
            Just(Op::Expire),
            (0u8..30).prop_map(|dt| Op::Tick { dt }),
        ]
    }

    proptest! {
        /// Whatever the sequence of calls, each worker's pending cost is the
        /// sum over its unseen assignments (never negative), the waiting set
        /// matches the entries, and everything expires once nobody polls.
        #[test]
        fn aggregates_stay_consistent(ops in prop::collection::vec(op(), 1..80)) {
            let mut table = RequestTable::new();
            let mut slots = [0u64; 12];
            let mut now = T;
            for op in ops {
                match op {
                    Op::Route { slot, cost } => {
                        slots[slot] = table.route(slots[slot], f64::from(cost), 20.0, now);
                    }
                    Op::Assign { slot, worker, cost } => {
                        if slots[slot] != 0 {
                            table.assign(slots[slot], worker, f64::from(cost), now);
                        }
                    }
                    Op::Wait { slot } => {
                        if slots[slot] != 0 {
                            table.mark_waiting(slots[slot], 10.0, now);
                        }
                    }
                    Op::Report { worker, slots: listed } => {
                        let idxs: Vec<u64> = listed.iter().map(|&s| slots[s]).collect();
                        table.observe_report(worker, &idxs, now);
                    }
                    Op::Finished { worker, slots: listed } => {
                        let idxs: Vec<u64> = listed.iter().map(|&s| slots[s]).collect();
                        table.observe_finished(worker, &idxs);
                    }
                    Op::Forget { worker } => {
                        table.forget_worker(worker);
                    }
                    Op::Expire => {
                        table.expire(now);
                    }
                    Op::Tick { dt } => now += f64::from(dt),
                }
                check_consistency(&table);
            }
            table.expire(now + MAX_REPLAY_TIMEOUT + 1.0);
            prop_assert!(table.is_empty());
            prop_assert_eq!(table.waiting_len(), 0);
            for worker in 1..4 {
                prop_assert!(!table.has_outstanding(worker));
                prop_assert_eq!(table.pending_cost(worker), 0.0);
            }
        }
    }

    fn check_consistency(table: &RequestTable) {
        let mut expected: HashMap<i64, (f64, u32, usize)> = HashMap::new();
        let mut waiting = HashSet::new();
        for (&idx, entry) in &table.entries {
            match entry.phase {
                Phase::Assigned { worker, seen, .. } => {
                    let e = expected.entry(worker).or_default();
                    if !seen {
                        e.0 += entry.cost;
                        e.1 += 1;
                    }
                    e.2 += 1;
                }
                Phase::Waiting { .. } => {
                    waiting.insert(idx);
                }
                Phase::Unassigned { .. } => {}
            }
        }
        assert_eq!(waiting, table.waiting);
        assert_eq!(expected.len(), table.workers.len());
        for (worker, (cost, unseen, all)) in expected {
            let got = &table.workers[&worker];
            assert!((got.pending_cost - cost).abs() < 1e-6, "{got:?} vs {cost}");
            assert!(got.pending_cost >= 0.0);
            assert_eq!(got.unseen, unseen);
            assert_eq!(got.idxs.len(), all);
            assert_eq!(table.pending_cost(worker), got.pending_cost);
        }
    }
}
