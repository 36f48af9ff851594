//! Housekeeping of the state directory, so it does not grow without bound:
//! retention of ended workers (history rows and directories) and rotation
//! of the logs of worker and consumer processes. It runs on its own task
//! every [`Retention::interval`], its database work on the store thread and
//! its file work on a blocking thread: never under the registry lock nor
//! on a request's path.
//!
//! **Retention.** An ended worker's history row and directory are removed
//! once it is not among the [`Retention::keep_ended`] most recent ended
//! workers of its endpoint, or it ended more than [`Retention::max_age`]
//! ago, or its endpoint was deleted. Live workers are never touched. At
//! start, directories with no history row and no live worker are removed.
//!
//! **Log rotation: copy and truncate.** A process writes its log through a
//! descriptor of its own, opened in append mode, which outlives the engine
//! (workers survive engine restarts and keep logging to the same file), so
//! the file cannot be renamed from under it nor piped through the engine.
//! When `worker.log` or `consumer.log` exceeds [`Retention::log_max_bytes`],
//! `<log>.1` … are shifted up (at most [`Retention::log_files`] kept), the
//! log is copied to `<log>.1` and truncated; the process's next write lands
//! at the start of the emptied file (append mode). Lines written between the
//! copy and the truncation are lost: a rare, small loss traded for logs that
//! never stop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::context::Core;
use crate::db::Db;

/// Ended workers kept per endpoint.
pub const DEFAULT_KEEP_ENDED: u32 = 50;
/// Longest time an ended worker is kept.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Size above which a log is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// Rotated files kept per log (`worker.log.1`, `worker.log.2`).
pub const DEFAULT_LOG_FILES: u32 = 2;
/// Time between two housekeeping passes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// What the state directory keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Ended workers kept per endpoint.
    pub keep_ended: u32,
    /// Longest time an ended worker is kept.
    pub max_age: Duration,
    /// Size above which `worker.log` / `consumer.log` is rotated.
    pub log_max_bytes: u64,
    /// Rotated files kept per log (0: the log is only truncated).
    pub log_files: u32,
    /// Time between two passes.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_ended: DEFAULT_KEEP_ENDED,
            max_age: DEFAULT_MAX_AGE,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_files: DEFAULT_LOG_FILES,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Ended workers whose row and directory were removed.
    pub pruned: Vec<i64>,
    /// Logs rotated.
    pub rotated: usize,
}

/// Path of rotated file `n` of `log` (`worker.log.1`).
pub fn rotated_path(log: &Path, n: u32) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `log` by copy and truncation if it is larger than `max_bytes`,
/// keeping `files` rotated copies. Returns whether it rotated.
pub fn rotate_log(log: &Path, max_bytes: u64, files: u32) -> io::Result<bool> {
    let len = match fs::metadata(log) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if files > 0 {
        let _ = fs::remove_file(rotated_path(log, files));
        for n in (1..files).rev() {
            let from = rotated_path(log, n);
            if from.exists() {
                fs::rename(&from, rotated_path(log, n + 1))?;
            }
        }
        fs::copy(log, rotated_path(log, 1))?;
    }
    fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

/// Rotates every worker's and consumer's log under `state_dir` that is over
/// the limit; returns how many.
pub fn rotate_logs(state_dir: &Path, retention: &Retention) -> usize {
    let Ok(entries) = fs::read_dir(state_dir.join("workers")) else {
        return 0;
    };
    let mut rotated = 0;
    for entry in entries.flatten() {
        for name in ["worker.log", "consumer.log"] {
            let log = entry.path().join(name);
            match rotate_log(&log, retention.log_max_bytes, retention.log_files) {
                Ok(true) => rotated += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(path = %log.display(), %err, "cannot rotate a log")
                }
            }
        }
    }
    rotated
}

/// Removes the directories of workers `ids`.
fn remove_worker_dirs(state_dir: &Path, ids: &[i64]) {
    for id in ids {
        let dir = crate::config::worker_dir(state_dir, *id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %dir.display(), %err, "cannot remove a worker directory")
            }
        }
    }
}

/// At start, before any launch: removes worker directories that have no
/// history row (pruned, or left by an interrupted run) and no live worker
/// (`live`). Returns how many.
pub fn sweep_orphan_dirs(state_dir: &Path, db: &Db, live: &[i64]) -> usize {
    let Ok(entries) = fs::read_dir(state_dir.join("workers")) else {
        return 0;
    };
    let mut orphans = Vec::new();
    for entry in entries.flatten() {
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        if !live.contains(&id) && matches!(db.worker(id), Ok(None)) {
            orphans.push(id);
        }
    }
    remove_worker_dirs(state_dir, &orphans);
    orphans.len()
}

/// One pass: prunes ended workers (rows on the store thread, directories on
/// a blocking thread) and rotates the logs that are over the limit.
pub async fn pass(core: &Arc<Core>) -> PassReport {
    let retention = core.config.retention;
    let cutoff = core.clock.now() - retention.max_age.as_secs_f64();
    let pruned = core
        .store
        .call(move |db| db.prune_workers(retention.keep_ended, cutoff))
        .await;
    let pruned = match pruned {
        Some(Ok(ids)) => ids,
        Some(Err(err)) => {
            tracing::warn!(%err, "cannot prune the worker history");
            Vec::new()
        }
        None => Vec::new(),
    };
    let state_dir = core.config.state_dir.clone();
    let ids = pruned.clone();
    let rotated = tokio::task::spawn_blocking(move || {
        remove_worker_dirs(&state_dir, &ids);
        rotate_logs(&state_dir, &retention)
    })
    .await
    .unwrap_or(0);
    if !pruned.is_empty() || rotated > 0 {
        tracing::info!(
            pruned = pruned.len(),
            rotated,
            "state directory housekeeping"
        );
    }
    PassReport { pruned, rotated }
}

/// Runs a pass every [`Retention::interval`], the first one interval after
/// the start, until the engine shuts down.
pub async fn run(core: Arc<Core>) {
    let period = core.config.retention.interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = core.shutdown.cancelled() => return,
        }
        pass(&core).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_log_over_the_limit_is_copied_and_truncated_under_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        // The process's descriptor, in append mode, as the supervisor opens it.
        let mut writer = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writer.write_all(&[b'a'; 100]).unwrap();
        assert!(!rotate_log(&log, 100, 2).unwrap(), "at the limit: kept");
        writer.write_all(b"b").unwrap();
        assert!(rotate_log(&log, 100, 2).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(fs::read(rotated_path(&log, 1)).unwrap().len(), 101);
        // The writer goes on at the start of the emptied file, not at its
        // old offset (no hole).
        writer.write_all(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "after\n");
        // Two more rotations: two files kept, the oldest dropped.
        writer.write_all(&[b'c'; 200]).unwrap();
        assert!(rotate_log(&log, 100, 2).unwrap());
        writer.write_all(&[b'd'; 300]).unwrap();
        assert!(rotate_log(&log, 100, 2).unwrap());
        assert_eq!(fs::metadata(rotated_path(&log, 1)).unwrap().len(), 300);
        assert_eq!(fs::metadata(rotated_path(&log, 2)).unwrap().len(), 206);
        assert!(!rotated_path(&log, 3).exists());
        // No copy kept: only truncated.
        writer.write_all(&[b'e'; 150]).unwrap();
        assert!(rotate_log(&log, 100, 0).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(fs::metadata(rotated_path(&log, 1)).unwrap().len(), 300);
        // A missing log is not an error.
        assert!(!rotate_log(&dir.path().join("none.log"), 1, 2).unwrap());
    }

    #[test]
    fn logs_of_every_worker_directory_are_rotated() {
        let dir = tempfile::tempdir().unwrap();
        for (id, size) in [(1, 10), (2, 5000), (3, 0)] {
            let wd = crate::config::worker_dir(dir.path(), id);
            fs::create_dir_all(&wd).unwrap();
            fs::write(wd.join("worker.log"), vec![b'x'; size]).unwrap();
            fs::write(wd.join("consumer.log"), vec![b'y'; size]).unwrap();
        }
        let retention = Retention {
            log_max_bytes: 1000,
            ..Retention::default()
        };
        assert_eq!(rotate_logs(dir.path(), &retention), 2);
        let two = crate::config::worker_dir(dir.path(), 2);
        assert_eq!(fs::metadata(two.join("worker.log")).unwrap().len(), 0);
        assert_eq!(
            fs::metadata(two.join("consumer.log.1")).unwrap().len(),
            5000
        );
        let one = crate::config::worker_dir(dir.path(), 1);
        assert_eq!(fs::metadata(one.join("worker.log")).unwrap().len(), 10);
    }

    #[test]
    fn directories_without_a_row_or_a_live_worker_are_swept_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let ep = db
            .create_endpoint(
                "a",
                "key-a",
                &crate::endpoint::EndpointSettings::default(),
                &crate::endpoint::WorkerTemplate::default(),
                0.0,
            )
            .unwrap();
        let recorded = db.insert_worker(ep.id, 1.0).unwrap();
        for id in [recorded, 77, 78] {
            fs::create_dir_all(crate::config::worker_dir(dir.path(), id)).unwrap();
        }
        fs::create_dir_all(dir.path().join("workers/not-a-worker")).unwrap();
        assert_eq!(sweep_orphan_dirs(dir.path(), &db, &[78]), 1);
        assert!(crate::config::worker_dir(dir.path(), recorded).exists());
        assert!(!crate::config::worker_dir(dir.path(), 77).exists());
        assert!(crate::config::worker_dir(dir.path(), 78).exists());
        assert!(dir.path().join("workers/not-a-worker").exists());
    }
}
