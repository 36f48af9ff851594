//! The session table (PROTOCOL.md §9): open sessions, the `max_sessions`
//! cap, additive extension (quirk Q6) capped at
//! [`protocol::MAX_SESSION_AHEAD`] from now, the `session_auth` check with
//! Python equality (Q21) and the deadline each session expires at.
//!
//! The table also indexes sessions by deadline, so one expiry task (run by
//! [`crate::app`]) sleeps until the earliest deadline and takes the due
//! sessions out ([`SessionTable::take_due`]); it is woken only when a new
//! deadline is earlier than the one it sleeps until, so opening and closing
//! sessions costs no timer work. Closing a session (metrics, callback,
//! reports, logs) is orchestrated by [`crate::app`]. Each session carries a
//! cancellation token that fires when it leaves the table, which cuts its
//! in-flight requests. The number of open sessions is published on a
//! `watch` channel ([`SessionTable::subscribe`]), which is how the control
//! server's `GET /session?wait=S` learns that a session opened.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nullworker_protocol as protocol;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::TrackKey;

/// Longest time a deadline can lie ahead; larger lifetimes are clamped
/// (about 31 years, far beyond any real reservation).
const MAX_AHEAD_SECS: f64 = 1.0e9;

/// What a client asked for in `/session/create`, already validated.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The `auth_data` object, stored verbatim as the session's `session_auth`.
    pub auth_data: Value,
    /// `auth_data.cost`: the session's load while open.
    pub cost: f64,
    /// `auth_data.request_idx`.
    pub request_idx: u64,
    /// Seconds to live, also the per-request extension.
    pub lifetime: f64,
    /// On-close callback URL as given.
    pub on_close_route: Option<String>,
    /// On-close callback body (kept only with a route).
    pub on_close_payload: Option<Value>,
}

/// One open session.
#[derive(Debug)]
pub struct Session {
    /// 13 characters from `[A-Za-z0-9]`.
    pub id: String,
    /// What the client asked for.
    pub spec: SessionSpec,
    /// Epoch seconds at creation.
    pub created_at: f64,
    /// Monotonic instant at creation.
    created: Instant,
    /// Opening order (instants can tie).
    seq: u64,
    /// Epoch `expiration`, extended additively.
    expiration: Mutex<f64>,
    /// Fires when the session closes.
    closed: CancellationToken,
    /// Its entry in the load accounting, set right after opening.
    pub(crate) track: OnceLock<TrackKey>,
}

impl Session {
    /// Current expiration in epoch seconds.
    pub fn expiration(&self) -> f64 {
        *self.expiration.lock().expect("session lock")
    }

    /// The monotonic instant of the current expiration.
    pub fn deadline(&self) -> Instant {
        self.deadline_of(self.expiration())
    }

    fn deadline_of(&self, expiration: f64) -> Instant {
        let ahead = (expiration - self.created_at).clamp(0.0, MAX_AHEAD_SECS);
        self.created + Duration::from_secs_f64(ahead)
    }

    /// Whether `session_auth` equals the stored `auth_data` as Python compares them.
    pub fn auth_matches(&self, session_auth: &Value) -> bool {
        protocol::python_json_eq(&self.spec.auth_data, session_auth)
    }

    /// The token cancelled when this session closes.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// The `/session/get` reply.
    pub fn info(&self) -> protocol::SessionInfo {
        protocol::SessionInfo {
            session_id: self.id.clone(),
            auth_data: self.spec.auth_data.clone(),
            lifetime: self.spec.lifetime,
            expiration: self.expiration(),
            created_at: self.created_at,
            on_close_route: self.spec.on_close_route.clone(),
            on_close_payload: self.spec.on_close_payload.clone(),
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// `max_sessions` sessions are already open.
    #[error("the maximum number of sessions ({0}) is open")]
    Full(usize),
    /// The worker is shutting down.
    #[error("the worker is shutting down")]
    Closed,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Arc<Session>>,
    /// `(deadline, id)` of every open session.
    deadlines: BTreeSet<(Instant, String)>,
    /// The instant the expiry task sleeps until (`None`: until woken).
    armed: Option<Instant>,
    /// Sessions opened so far (the next one's `seq`).
    opened: u64,
}

/// All open sessions.
#[derive(Debug)]
pub struct SessionTable {
    inner: Mutex<Inner>,
    max_sessions: Option<usize>,
    closed_for_new: AtomicBool,
    /// Wakes the expiry task when a deadline earlier than its alarm appears.
    wake: Notify,
    /// The number of open sessions, published on every open and close.
    open_count: watch::Sender<usize>,
}

impl SessionTable {
    /// An empty table admitting at most `max_sessions` open sessions (`None` = unlimited).
    pub fn new(max_sessions: Option<usize>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_sessions,
            closed_for_new: AtomicBool::new(false),
            wake: Notify::new(),
            open_count: watch::Sender::new(0),
        }
    }

    /// Publishes the number of open sessions (called with the lock held, so
    /// the published counts follow the table's order of changes).
    fn publish(&self, inner: &Inner) {
        self.open_count.send_if_modified(|count| {
            let changed = *count != inner.sessions.len();
            *count = inner.sessions.len();
            changed
        });
    }

    /// A receiver of the number of open sessions, marked changed whenever a
    /// session opens or closes after it was last read.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.open_count.subscribe()
    }

    /// The oldest open session and how many sessions are open.
    pub fn oldest(&self) -> Option<(Arc<Session>, usize)> {
        let inner = self.lock();
        let oldest = inner.sessions.values().min_by_key(|s| s.seq)?;
        Some((Arc::clone(oldest), inner.sessions.len()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("session table lock")
    }

    /// Opens a session if there is room; the capacity check and the insert are atomic.
    pub fn open(&self, spec: SessionSpec, clock: &Clock) -> Result<Arc<Session>, OpenError> {
        if self.closed_for_new.load(Ordering::Acquire) {
            return Err(OpenError::Closed);
        }
        let mut inner = self.lock();
        if let Some(max) = self.max_sessions {
            if inner.sessions.len() >= max {
                return Err(OpenError::Full(max));
            }
        }
        let mut rng = rand::thread_rng();
        let id = loop {
            let id = protocol::new_session_id(&mut rng);
            if !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        let created = clock.now();
        let created_at = clock.epoch_of(created);
        inner.opened += 1;
        let session = Arc::new(Session {
            id: id.clone(),
            expiration: Mutex::new(created_at + spec.lifetime),
            spec,
            created_at,
            created,
            seq: inner.opened,
            closed: CancellationToken::new(),
            track: OnceLock::new(),
        });
        let deadline = session.deadline();
        inner.deadlines.insert((deadline, id.clone()));
        inner.sessions.insert(id, Arc::clone(&session));
        self.publish(&inner);
        let earlier = match inner.armed {
            None => true,
            Some(armed) => deadline < armed,
        };
        if earlier {
            inner.armed = Some(deadline);
            self.wake.notify_one();
        }
        Ok(session)
    }

    /// The open session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().sessions.get(id).cloned()
    }

    /// Extends `session` by one lifetime (`expiration += lifetime`, Q6:
    /// additive), saturating at [`protocol::MAX_SESSION_AHEAD`] seconds
    /// after now. Called only for requests that passed authentication. Does
    /// nothing if the session has left the table.
    pub fn extend(&self, session: &Arc<Session>, clock: &Clock) {
        let mut inner = self.lock();
        match inner.sessions.get(&session.id) {
            Some(current) if Arc::ptr_eq(current, session) => {}
            _ => return,
        }
        let limit = clock.now_epoch() + protocol::MAX_SESSION_AHEAD;
        let mut expiration = session.expiration.lock().expect("session lock");
        let extended = (*expiration + session.spec.lifetime).min(limit);
        if extended <= *expiration {
            return;
        }
        let old = session.deadline_of(*expiration);
        *expiration = extended;
        let new = session.deadline_of(extended);
        drop(expiration);
        // Deadlines only move later, so the expiry task needs no wake-up.
        let key = (old, session.id.clone());
        inner.deadlines.remove(&key);
        inner.deadlines.insert((new, key.1));
    }

    fn remove_locked(inner: &mut Inner, session: &Session) {
        inner.sessions.remove(&session.id);
        let deadline = session.deadline();
        inner.deadlines.remove(&(deadline, session.id.clone()));
    }

    /// Removes exactly this session (not a later one with the same id) and
    /// cancels its token. `false` if it was already gone.
    pub fn remove(&self, session: &Arc<Session>) -> bool {
        let removed = {
            let mut inner = self.lock();
            match inner.sessions.get(&session.id) {
                Some(current) if Arc::ptr_eq(current, session) => {
                    Self::remove_locked(&mut inner, session);
                    self.publish(&inner);
                    true
                }
                _ => false,
            }
        };
        if removed {
            session.closed.cancel();
        }
        removed
    }

    /// Removes every session whose deadline is at or before `now` (their
    /// tokens are cancelled) and returns them.
    pub fn take_due(&self, now: Instant) -> Vec<Arc<Session>> {
        let due: Vec<Arc<Session>> = {
            let mut inner = self.lock();
            let ids: Vec<String> = inner
                .deadlines
                .iter()
                .take_while(|(deadline, _)| *deadline <= now)
                .map(|(_, id)| id.clone())
                .collect();
            let due: Vec<_> = ids
                .iter()
                .filter_map(|id| inner.sessions.get(id).cloned())
                .collect();
            for session in &due {
                Self::remove_locked(&mut inner, session);
            }
            self.publish(&inner);
            due
        };
        for session in &due {
            session.closed.cancel();
        }
        due
    }

    /// The earliest deadline, recorded as the expiry task's alarm.
    pub fn arm(&self) -> Option<Instant> {
        let mut inner = self.lock();
        let next = inner.deadlines.first().map(|(deadline, _)| *deadline);
        inner.armed = next;
        next
    }

    /// Resolves when a deadline earlier than the current alarm appears.
    pub async fn rearm_needed(&self) {
        self.wake.notified().await;
    }

    /// Every open session, oldest first.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = self.lock().sessions.values().cloned().collect();
        all.sort_by_key(|s| s.seq);
        all
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses every later [`Self::open`] (shutdown).
    pub fn stop_accepting(&self) {
        self.closed_for_new.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(lifetime: f64) -> SessionSpec {
        SessionSpec {
            auth_data: json!({"cost": 100, "endpoint": "e", "reqnum": 1, "request_idx": 7,
                              "signature": "s", "url": "http://h:1"}),
            cost: 100.0,
            request_idx: 7,
            lifetime,
            on_close_route: None,
            on_close_payload: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_extension_and_deadline() {
        let clock = Clock::anchored(1_000.0);
        let table = SessionTable::new(Some(1));
        let s = table.open(spec(60.0), &clock).unwrap();
        assert!(protocol::is_session_id(&s.id));
        assert_eq!(s.expiration(), 1_060.0);
        assert_eq!(
            table.open(spec(60.0), &clock).unwrap_err(),
            OpenError::Full(1)
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        table.extend(&s, &clock);
        table.extend(&s, &clock);
        // Additive to the expiration, not now + lifetime.
        assert_eq!(s.expiration(), 1_180.0);
        assert_eq!(s.deadline() - clock.now(), Duration::from_secs(170));

        assert!(s.auth_matches(
            &json!({"url": "http://h:1", "signature": "s", "request_idx": 7,
                                       "reqnum": 1.0, "endpoint": "e", "cost": 100.0})
        ));
        assert!(!s.auth_matches(&json!({"url": "http://h:1"})));

        assert!(table.remove(&s));
        assert!(s.closed().is_cancelled());
        assert!(!table.remove(&s));
        assert!(table.is_empty());
        table.open(spec(1.0), &clock).unwrap();
        table.stop_accepting();
        assert_eq!(table.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn take_due_follows_extended_deadlines() {
        let clock = Clock::anchored(0.0);
        let table = SessionTable::new(None);
        let a = table.open(spec(1.0), &clock).unwrap();
        let b = table.open(spec(2.0), &clock).unwrap();
        assert_eq!(table.arm(), Some(a.deadline()));
        table.extend(&a, &clock); // a now expires at 2.0 too
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(table.take_due(clock.now()).is_empty());
        tokio::time::advance(Duration::from_millis(500)).await;
        let due = table.take_due(clock.now());
        assert_eq!(due.len(), 2);
        assert!(a.closed().is_cancelled() && b.closed().is_cancelled());
        assert!(table.is_empty());
        assert_eq!(table.arm(), None);
        assert!(!table.remove(&a), "already taken out");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_and_closed() {
        let clock = Clock::anchored(0.0);
        let table = SessionTable::new(None);
        for _ in 0..50 {
            table.open(spec(1.0), &clock).unwrap();
        }
        assert_eq!(table.all().len(), 50);
        table.stop_accepting();
        assert_eq!(
            table.open(spec(1.0), &clock).unwrap_err(),
            OpenError::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_count_is_published_on_every_change() {
        let clock = Clock::anchored(0.0);
        let table = SessionTable::new(None);
        let mut count = table.subscribe();
        assert_eq!(*count.borrow_and_update(), 0);
        assert!(table.oldest().is_none());

        let a = table.open(spec(1.0), &clock).unwrap();
        assert!(count.has_changed().unwrap());
        assert_eq!(*count.borrow_and_update(), 1);
        let b = table.open(spec(5.0), &clock).unwrap();
        assert_eq!(*count.borrow_and_update(), 2);
        let (oldest, open) = table.oldest().unwrap();
        assert!(Arc::ptr_eq(&oldest, &a));
        assert_eq!(open, 2);

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(table.take_due(clock.now()).len(), 1);
        assert_eq!(*count.borrow_and_update(), 1);
        assert!(Arc::ptr_eq(&table.oldest().unwrap().0, &b));
        // Nothing taken out: nothing published.
        assert!(table.take_due(clock.now()).is_empty());
        assert!(!count.has_changed().unwrap());
        assert!(table.remove(&b));
        assert_eq!(*count.borrow_and_update(), 0);
        assert!(!table.remove(&b));
        assert!(!count.has_changed().unwrap());
        assert!(table.oldest().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn extensions_saturate_at_the_cap_from_now() {
        let clock = Clock::anchored(1_000.0);
        let table = SessionTable::new(None);
        let day = 86_400.0;
        let s = table.open(spec(10.0 * day), &clock).unwrap();
        // 10 days, 20, 30, then saturated at now + 30 days.
        for _ in 0..100 {
            table.extend(&s, &clock);
        }
        let cap = 1_000.0 + protocol::MAX_SESSION_AHEAD;
        assert_eq!(s.expiration(), cap);
        assert_eq!(s.deadline() - clock.now(), Duration::from_secs(30 * 86_400));
        // Time passes: the cap moves with now, never further.
        tokio::time::advance(Duration::from_secs(86_400)).await;
        table.extend(&s, &clock);
        assert_eq!(s.expiration(), cap + day);
        assert!(s.expiration().is_finite());
        // A session that left the table is not extended.
        assert!(table.remove(&s));
        table.extend(&s, &clock);
        assert_eq!(s.expiration(), cap + day);
        assert!(table.arm().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn huge_lifetime_is_clamped() {
        let clock = Clock::anchored(0.0);
        let table = SessionTable::new(None);
        let s = table.open(spec(1e300), &clock).unwrap();
        assert!(s.deadline() > clock.now() + Duration::from_secs(1_000_000));
    }
}
