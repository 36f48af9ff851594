//! The engine's persistent state in an embedded SQLite database (bundled, one
//! file in the state directory): account key, endpoints with their settings,
//! workergroups (worker templates) and the worker history. Live worker state
//! is not stored here: it is rebuilt from worker reports after a restart.
//!
//! The schema carries a version in the `meta` table; a database written by a
//! newer engine, or a file that is not a (healthy) SQLite database, is refused
//! with a clear error instead of being overwritten.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::endpoint::{EndpointSettings, WorkerTemplate};
use crate::error::EngineError;

/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    api_key    TEXT NOT NULL,
    settings   TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workergroups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id INTEGER NOT NULL UNIQUE REFERENCES endpoints(id) ON DELETE CASCADE,
    template    TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    ended_at    REAL,
    url         TEXT,
    last_state  TEXT NOT NULL,
    reason      TEXT
);
";

/// A database error that is not about opening the file.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column does not parse.
    #[error("state database: stored {what} is unreadable: {reason}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// Parser message.
        reason: String,
    },
    /// An endpoint with this name exists.
    #[error("an endpoint named {0:?} already exists")]
    Duplicate(String),
}

impl DbError {
    /// The disk (or the database's size limit) is full: SQLite reports
    /// `SQLITE_FULL` when a write fails with `ENOSPC`.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// One stored endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEndpoint {
    /// Endpoint id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// The endpoint key for `/route/`.
    pub api_key: String,
    /// Parameters.
    pub settings: EndpointSettings,
    /// Epoch seconds.
    pub created_at: f64,
    /// Workergroup id.
    pub workergroup_id: i64,
    /// How its workers are launched.
    pub template: WorkerTemplate,
}

/// One row of worker history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerHistory {
    /// Worker id (`CONTAINER_ID`).
    pub id: i64,
    /// Owning endpoint.
    pub endpoint_id: i64,
    /// Epoch when it was decided.
    pub created_at: f64,
    /// Epoch when it was destroyed, if it was.
    pub ended_at: Option<f64>,
    /// Its URL once known.
    pub url: Option<String>,
    /// Last recorded state name.
    pub last_state: String,
    /// Why it ended or erred.
    pub reason: Option<String>,
}

/// The database handle. Calls are short and serialised by a mutex.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Creates `path` empty with mode 0600 if missing (an empty file is an
/// empty SQLite database), else sets mode 0600 on it and on its `-wal` and
/// `-shm` files (SQLite gives those the database's mode when it creates
/// them).
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %file.display(), "the state database was readable by others; set mode 0600");
        }
    }
    Ok(())
}

fn db_err(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Database {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and checks its
    /// integrity and schema version.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        // It holds the account key and endpoint keys: readable by its owner
        // only, whether created now or by an earlier version.
        restrict_to_owner(path).map_err(|e| db_err(path, e))?;
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        let corrupt = |e: rusqlite::Error| {
            db_err(
                path,
                format!(
                    "not a readable nullworker state database ({e}); move it away to start afresh"
                ),
            )
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(corrupt)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(db_err(
                path,
                format!("integrity check failed: {check}; move it away to start afresh"),
            ));
        }
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(corrupt)?;
        let has_meta: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(corrupt)?
            > 0;
        let other_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                [],
                |row| row.get(0),
            )
            .map_err(corrupt)?;
        if !has_meta && other_tables > 0 {
            return Err(db_err(
                path,
                "this SQLite file is not a nullworker state database",
            ));
        }
        if has_meta {
            let version: Option<String> = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'schema_version'",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(corrupt)?;
            let version: i64 =
                version.as_deref().unwrap_or("").parse().map_err(|_| {
                    db_err(path, format!("schema version {version:?} is unreadable"))
                })?;
            if version > SCHEMA_VERSION {
                return Err(db_err(
                    path,
                    format!(
                        "written by a newer nullworker (schema version {version}, this build understands up to {SCHEMA_VERSION}); upgrade nullworker or use another --state-dir"
                    ),
                ));
            }
        }
        conn.execute_batch(SCHEMA).map_err(corrupt)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(corrupt)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// Caps the database at its current size, so that the next write
    /// needing a new page fails as on a full disk (`SQLITE_FULL`).
    #[cfg(test)]
    pub fn fill_disk_for_test(&self) -> Result<(), DbError> {
        let conn = self.conn();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Sets a `meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Inserts an endpoint and its workergroup; returns the stored endpoint.
    pub fn create_endpoint(
        &self,
        name: &str,
        api_key: &str,
        settings: &EndpointSettings,
        template: &WorkerTemplate,
        now: f64,
    ) -> Result<StoredEndpoint, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: i64 = tx.query_row(
            "SELECT count(*) FROM endpoints WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?;
        if exists > 0 {
            return Err(DbError::Duplicate(name.to_owned()));
        }
        tx.execute(
            "INSERT INTO endpoints (name, api_key, settings, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, api_key, to_json(settings), now],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO workergroups (endpoint_id, template, created_at) VALUES (?1, ?2, ?3)",
            params![id, to_json(template), now],
        )?;
        let workergroup_id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(StoredEndpoint {
            id,
            name: name.to_owned(),
            api_key: api_key.to_owned(),
            settings: settings.clone(),
            created_at: now,
            workergroup_id,
            template: template.clone(),
        })
    }

    /// Every endpoint, by id.
    pub fn endpoints(&self) -> Result<Vec<StoredEndpoint>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT e.id, e.name, e.api_key, e.settings, e.created_at, w.id, w.template
             FROM endpoints e JOIN workergroups w ON w.endpoint_id = e.id ORDER BY e.id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, f64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, api_key, settings, created_at, workergroup_id, template) = row?;
            out.push(StoredEndpoint {
                id,
                name,
                api_key,
                settings: from_json("endpoint settings", &settings)?,
                created_at,
                workergroup_id,
                template: from_json("workergroup template", &template)?,
            });
        }
        Ok(out)
    }

    /// Replaces an endpoint's settings.
    pub fn update_settings(&self, id: i64, settings: &EndpointSettings) -> Result<(), DbError> {
        self.conn().execute(
            "UPDATE endpoints SET settings = ?2 WHERE id = ?1",
            params![id, to_json(settings)],
        )?;
        Ok(())
    }

    /// Replaces an endpoint's worker template.
    pub fn update_template(
        &self,
        endpoint_id: i64,
        template: &WorkerTemplate,
    ) -> Result<(), DbError> {
        self.conn().execute(
            "UPDATE workergroups SET template = ?2 WHERE endpoint_id = ?1",
            params![endpoint_id, to_json(template)],
        )?;
        Ok(())
    }

    /// Deletes an endpoint and its workergroup.
    pub fn delete_endpoint(&self, id: i64) -> Result<bool, DbError> {
        let n = self
            .conn()
            .execute("DELETE FROM endpoints WHERE id = ?1", params![id])?;
        Ok(n > 0)
    }

    /// Records a new worker and returns its id (ids are never reused).
    pub fn insert_worker(&self, endpoint_id: i64, now: f64) -> Result<i64, DbError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO workers (endpoint_id, created_at, last_state) VALUES (?1, ?2, 'CREATING')",
            params![endpoint_id, now],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Updates a worker's history row.
    pub fn update_worker(
        &self,
        id: i64,
        state: &str,
        url: Option<&str>,
        reason: Option<&str>,
        ended_at: Option<f64>,
    ) -> Result<(), DbError> {
        self.conn().execute(
            "UPDATE workers SET last_state = ?2, url = COALESCE(?3, url), reason = COALESCE(?4, reason),
                    ended_at = COALESCE(?5, ended_at) WHERE id = ?1",
            params![id, state, url, reason, ended_at],
        )?;
        Ok(())
    }

    /// Commits a batch of store writes in one transaction.
    pub fn apply_batch(&self, ops: &[crate::store::StoreOp]) -> Result<(), DbError> {
        use crate::store::StoreOp;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for op in ops {
            match op {
                StoreOp::InsertWorker {
                    id,
                    endpoint_id,
                    created_at,
                } => {
                    tx.execute(
                        "INSERT OR IGNORE INTO workers (id, endpoint_id, created_at, last_state) VALUES (?1, ?2, ?3, 'CREATING')",
                        params![id, endpoint_id, created_at],
                    )?;
                }
                StoreOp::UpdateWorker {
                    id,
                    state,
                    url,
                    reason,
                    ended_at,
                } => {
                    tx.execute(
                        "UPDATE workers SET last_state = ?2, url = COALESCE(?3, url), reason = COALESCE(?4, reason),
                                ended_at = COALESCE(?5, ended_at) WHERE id = ?1",
                        params![id, state, url, reason, ended_at],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The highest worker id ever recorded (0 if none): new ids go above it.
    pub fn max_worker_id(&self) -> Result<i64, DbError> {
        let conn = self.conn();
        let max: Option<i64> = conn.query_row("SELECT max(id) FROM workers", [], |r| r.get(0))?;
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'workers'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(max.unwrap_or(0).max(seq.unwrap_or(0)))
    }

    /// Marks every worker not ended yet as ended, but those in `keep` (used
    /// at start: only the re-adopted workers of the previous run live on).
    pub fn end_all_workers(
        &self,
        now: f64,
        reason: &str,
        keep: &[i64],
    ) -> Result<Vec<i64>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = tx
            .prepare("SELECT id FROM workers WHERE ended_at IS NULL")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<Vec<i64>, _>>()?
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        for id in &ids {
            tx.execute(
                "UPDATE workers SET ended_at = ?1, last_state = 'DESTROYING', reason = COALESCE(reason, ?2) WHERE id = ?3",
                params![now, reason, id],
            )?;
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Deletes the history rows of ended workers beyond retention: those
    /// not among the `keep` most recent ended workers of their endpoint,
    /// those ended before `cutoff` (epoch seconds), and those of deleted
    /// endpoints. Rows of live workers are never touched. Returns the ids
    /// deleted.
    pub fn prune_workers(&self, keep: u32, cutoff: f64) -> Result<Vec<i64>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "DELETE FROM workers WHERE id IN (
                 SELECT id FROM (
                     SELECT id, endpoint_id, ended_at,
                            ROW_NUMBER() OVER (PARTITION BY endpoint_id ORDER BY id DESC) AS rank
                     FROM workers WHERE ended_at IS NOT NULL)
                 WHERE rank > ?1 OR ended_at < ?2
                    OR endpoint_id NOT IN (SELECT id FROM endpoints))
             RETURNING id",
        )?;
        let mut ids = stmt
            .query_map(params![keep, cutoff], |row| row.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// One worker's history row.
    pub fn worker(&self, worker_id: i64) -> Result<Option<WorkerHistory>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, endpoint_id, created_at, ended_at, url, last_state, reason FROM workers WHERE id = ?1",
                params![worker_id],
                |row| {
                    Ok(WorkerHistory {
                        id: row.get(0)?,
                        endpoint_id: row.get(1)?,
                        created_at: row.get(2)?,
                        ended_at: row.get(3)?,
                        url: row.get(4)?,
                        last_state: row.get(5)?,
                        reason: row.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    /// The most recent `limit` workers of an endpoint, newest first.
    pub fn worker_history(
        &self,
        endpoint_id: i64,
        limit: u32,
    ) -> Result<Vec<WorkerHistory>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, endpoint_id, created_at, ended_at, url, last_state, reason FROM workers
             WHERE endpoint_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![endpoint_id, limit], |row| {
            Ok(WorkerHistory {
                id: row.get(0)?,
                endpoint_id: row.get(1)?,
                created_at: row.get(2)?,
                ended_at: row.get(3)?,
                url: row.get(4)?,
                last_state: row.get(5)?,
                reason: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The endpoint a historical worker belonged to.
    pub fn worker_endpoint(&self, worker_id: i64) -> Result<Option<i64>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT endpoint_id FROM workers WHERE id = ?1",
                params![worker_id],
                |r| r.get(0),
            )
            .optional()?)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("settings serialise")
}

fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = Db::open(&path).unwrap();
        let settings = EndpointSettings::default();
        let template = WorkerTemplate {
            consumer_command: Some("sleep 100".into()),
            consumer_health_path: Some("/health".into()),
            ..Default::default()
        };
        let ep = db
            .create_endpoint("a", "key-a", &settings, &template, 1.0)
            .unwrap();
        assert!(matches!(
            db.create_endpoint("a", "key-b", &settings, &template, 2.0),
            Err(DbError::Duplicate(_))
        ));
        let w = db.insert_worker(ep.id, 3.0).unwrap();
        db.update_worker(w, "IDLE", Some("http://x"), None, None)
            .unwrap();
        let adopted = db.insert_worker(ep.id, 3.5).unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        let eps = db.endpoints().unwrap();
        assert_eq!(eps, vec![ep.clone()]);
        assert_eq!(
            db.end_all_workers(4.0, "engine restarted", &[adopted])
                .unwrap(),
            vec![w]
        );
        let hist = db.worker_history(ep.id, 10).unwrap();
        assert_eq!(hist[1].url.as_deref(), Some("http://x"));
        assert_eq!(hist[1].ended_at, Some(4.0));
        // A re-adopted worker lives on.
        assert_eq!(db.worker(adopted).unwrap().unwrap().ended_at, None);
        assert_eq!(db.worker(999).unwrap(), None);
        assert!(db.delete_endpoint(ep.id).unwrap());
        assert!(db.endpoints().unwrap().is_empty());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_database_is_created_0600_and_an_open_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sqlite3");
        let db = Db::open(&path).unwrap();
        db.set_meta("k", "v").unwrap();
        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("engine.sqlite3-wal");
        assert_eq!(mode(&wal), 0o600);
        drop(db);
        for file in [&path, &wal] {
            if file.exists() {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.meta("k").unwrap().as_deref(), Some("v"));
        assert_eq!(mode(&path), 0o600);
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
    }

    #[test]
    fn pruning_keeps_live_workers_and_the_most_recent_ended_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let settings = EndpointSettings::default();
        let template = WorkerTemplate::default();
        let a = db
            .create_endpoint("a", "key-a", &settings, &template, 0.0)
            .unwrap();
        let b = db
            .create_endpoint("b", "key-b", &settings, &template, 0.0)
            .unwrap();
        let gone = db
            .create_endpoint("gone", "key-c", &settings, &template, 0.0)
            .unwrap();
        let day = 86_400.0;
        let now = 100.0 * day;
        // a: 8 ended recently, then 2 live.
        let mut a_ended = Vec::new();
        for i in 0..8 {
            let id = db.insert_worker(a.id, now - 100.0).unwrap();
            db.update_worker(
                id,
                "DESTROYING",
                None,
                None,
                Some(now - 50.0 + f64::from(i)),
            )
            .unwrap();
            a_ended.push(id);
        }
        let a_live: Vec<i64> = (0..2)
            .map(|_| db.insert_worker(a.id, now - 100.0).unwrap())
            .collect();
        // b: one ended 8 days ago, one ended an hour ago, one live since long.
        let b_old = db.insert_worker(b.id, now - 9.0 * day).unwrap();
        db.update_worker(b_old, "DESTROYING", None, None, Some(now - 8.0 * day))
            .unwrap();
        let b_recent = db.insert_worker(b.id, now - 2.0 * 3600.0).unwrap();
        db.update_worker(b_recent, "DESTROYING", None, None, Some(now - 3600.0))
            .unwrap();
        let b_live = db.insert_worker(b.id, now - 30.0 * day).unwrap();
        // A deleted endpoint's ended worker.
        let orphan = db.insert_worker(gone.id, now - 10.0).unwrap();
        db.update_worker(orphan, "DESTROYING", None, None, Some(now - 5.0))
            .unwrap();
        assert!(db.delete_endpoint(gone.id).unwrap());

        let pruned = db.prune_workers(5, now - 7.0 * day).unwrap();
        let mut expected = a_ended[..3].to_vec();
        expected.extend([b_old, orphan]);
        expected.sort_unstable();
        assert_eq!(pruned, expected);
        let left: Vec<i64> = db
            .worker_history(a.id, 100)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let mut want: Vec<i64> = a_ended[3..].iter().chain(&a_live).copied().collect();
        want.sort_unstable_by(|x, y| y.cmp(x));
        assert_eq!(left, want);
        let left: Vec<i64> = db
            .worker_history(b.id, 100)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, vec![b_live, b_recent]);
        // Nothing more to prune.
        assert!(db.prune_workers(5, now - 7.0 * day).unwrap().is_empty());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = Db::open(&path).unwrap();
        db.set_meta("schema_version", "99").unwrap();
        drop(db);
        let err = Db::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer nullworker"), "{err}");
    }

    #[test]
    fn garbage_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Db::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("not a readable nullworker state database"),
            "{err}"
        );
        // The file is left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 8192]);
    }

    #[test]
    fn foreign_sqlite_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE other (x INTEGER);")
            .unwrap();
        drop(conn);
        let err = Db::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a nullworker state database"), "{err}");
    }
}
