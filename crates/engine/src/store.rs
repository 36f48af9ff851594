//! The store: one thread that owns the SQLite database. Writes from the
//! registry (worker rows, state changes) are queued without waiting and
//! committed in batches, one transaction (one fsync) per batch; calls that
//! need an answer (endpoint creation, history) are queued too and answered
//! through a oneshot, after every write queued before them. Nothing that
//! holds the registry lock ever waits for the disk.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::db::{Db, DbError};

/// A write the registry asks for; never waited on.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// A new worker row (ids are allocated by the registry).
    InsertWorker {
        /// Worker id.
        id: i64,
        /// Its endpoint.
        endpoint_id: i64,
        /// When it was decided.
        created_at: f64,
    },
    /// A worker's state, URL, reason or end time changed.
    UpdateWorker {
        /// Worker id.
        id: i64,
        /// The state name.
        state: &'static str,
        /// Its URL, when it changes.
        url: Option<String>,
        /// Why (errors, ends).
        reason: Option<String>,
        /// When it ended.
        ended_at: Option<f64>,
    },
}

type Call = Box<dyn FnOnce(&Db) + Send>;

enum Msg {
    Write(StoreOp),
    Call(Call),
}

/// Most writes committed in one transaction.
const BATCH: usize = 1024;

/// Handle to the store thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Write(op) => write!(f, "Write({op:?})"),
            Msg::Call(_) => f.write_str("Call"),
        }
    }
}

impl Store {
    /// Starts the store thread owning `db`. The thread ends once every
    /// handle is dropped, after committing what was queued.
    pub fn start(db: Db) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("nullworker-store".into())
            .spawn(move || run(db, rx))
            .expect("cannot start the store thread");
        (Self { tx }, thread)
    }

    /// Queues a write; returns at once.
    pub fn write(&self, op: StoreOp) {
        let _ = self.tx.send(Msg::Write(op));
    }

    /// Runs `f` on the store thread after every write queued so far and
    /// returns its answer (`None` if the store thread is gone).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let call: Call = Box::new(move |db| {
            let _ = reply.send(f(db));
        });
        self.tx.send(Msg::Call(call)).ok()?;
        answer.await.ok()
    }

    /// Waits until every write queued so far is committed.
    pub async fn flush(&self) {
        let _ = self.call(|_| ()).await;
    }
}

fn run(db: Db, rx: mpsc::Receiver<Msg>) {
    let mut writes: Vec<StoreOp> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(op) => writes.push(op),
                Msg::Call(call) => {
                    commit(&db, &mut writes);
                    call(&db);
                }
            }
            if writes.len() >= BATCH {
                commit(&db, &mut writes);
            }
            next = rx.try_recv().ok();
        }
        commit(&db, &mut writes);
    }
    commit(&db, &mut writes);
}

fn commit(db: &Db, writes: &mut Vec<StoreOp>) {
    if writes.is_empty() {
        return;
    }
    if let Err(err) = db.apply_batch(writes) {
        log_failure(&err, writes.len());
    }
    writes.clear();
}

fn log_failure(err: &DbError, count: usize) {
    tracing::error!(%err, count, "cannot record worker history");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_committed_before_a_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite3")).unwrap();
        let (store, thread) = Store::start(db);
        for id in 1..=3 {
            store.write(StoreOp::InsertWorker {
                id,
                endpoint_id: 7,
                created_at: 1.0,
            });
        }
        store.write(StoreOp::UpdateWorker {
            id: 2,
            state: "IDLE",
            url: Some("http://127.0.0.1:1".into()),
            reason: None,
            ended_at: None,
        });
        let rows = store
            .call(|db| db.worker_history(7, 10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.len(), 3);
        let two = rows.iter().find(|r| r.id == 2).unwrap();
        assert_eq!(two.last_state, "IDLE");
        assert_eq!(two.url.as_deref(), Some("http://127.0.0.1:1"));
        drop(store);
        thread.join().unwrap();
    }
}
