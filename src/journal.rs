//! The intake journal: which snapshot of which source file or folder is being protected or was
//! protected, so that a crash or a restart protects each snapshot once (SQLite, WAL, fsync).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::ids::SnapshotId;

/// Identity of one version of a snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

/// Where a journal entry stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalState {
    /// Protection started under this snapshot id (a crash leaves it here).
    Sealing(SnapshotId),
    /// Committed in at least one store under this snapshot id.
    Done(SnapshotId),
    /// Failed; retry after this many attempts with backoff.
    Failed {
        attempts: u32,
        next_try_unix: i64,
        error: String,
    },
}

pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "journal {path}: {source}{}. coffre cannot track what it has protected until this is fixed",
    crate::fsutil::db_hint(source).unwrap_or_default()
)]
pub struct JournalError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let err = |source| JournalError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = crate::fsutil::create_private_dir(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS intake (
                 source TEXT NOT NULL,
                 path TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL,
                 ino INTEGER NOT NULL,
                 state TEXT NOT NULL,
                 snapshot TEXT,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 next_try INTEGER NOT NULL DEFAULT 0,
                 error TEXT,
                 updated INTEGER NOT NULL,
                 PRIMARY KEY (source, path, size, mtime_ns, ino)
             );
             CREATE TABLE IF NOT EXISTS clock (id INTEGER PRIMARY KEY CHECK (id = 1), last_seen INTEGER NOT NULL);",
        )
        .map_err(err)?;
        Ok(Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, source: &str, k: &Key) -> Result<Option<JournalState>, JournalError> {
        type Row = (String, Option<String>, u32, i64, Option<String>);
        let row: Option<Row> = self
            .conn()
            .query_row(
                "SELECT state, snapshot, attempts, next_try, error FROM intake
                 WHERE source = ?1 AND path = ?2 AND size = ?3 AND mtime_ns = ?4 AND ino = ?5",
                params![
                    source,
                    k.path.to_string_lossy(),
                    k.size as i64,
                    k.mtime_ns,
                    k.ino as i64
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.and_then(|(state, snap, attempts, next, error)| {
            let id = snap.and_then(|s| s.parse::<SnapshotId>().ok());
            match (state.as_str(), id) {
                ("sealing", Some(id)) => Some(JournalState::Sealing(id)),
                ("done", Some(id)) => Some(JournalState::Done(id)),
                ("failed", _) => Some(JournalState::Failed {
                    attempts,
                    next_try_unix: next,
                    error: error.unwrap_or_default(),
                }),
                _ => None,
            }
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        source: &str,
        k: &Key,
        state: &str,
        snapshot: Option<&SnapshotId>,
        attempts: u32,
        next_try: i64,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "INSERT INTO intake (source, path, size, mtime_ns, ino, state, snapshot, attempts, next_try, error, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(source, path, size, mtime_ns, ino) DO UPDATE SET
                   state = excluded.state, snapshot = excluded.snapshot, attempts = excluded.attempts,
                   next_try = excluded.next_try, error = excluded.error, updated = excluded.updated",
                params![
                    source,
                    k.path.to_string_lossy(),
                    k.size as i64,
                    k.mtime_ns,
                    k.ino as i64,
                    state,
                    snapshot.map(|s| s.to_string()),
                    attempts,
                    next_try,
                    error,
                    now_unix()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn mark_sealing(
        &self,
        source: &str,
        k: &Key,
        id: &SnapshotId,
    ) -> Result<(), JournalError> {
        self.set(source, k, "sealing", Some(id), 0, 0, None)
    }

    pub(crate) fn mark_done(
        &self,
        source: &str,
        k: &Key,
        id: &SnapshotId,
    ) -> Result<(), JournalError> {
        self.set(source, k, "done", Some(id), 0, 0, None)
    }

    /// Record a failure; the next attempt waits 2^attempts × 10 s, at most an hour.
    pub(crate) fn mark_failed(
        &self,
        source: &str,
        k: &Key,
        attempts: u32,
        error: &str,
    ) -> Result<(), JournalError> {
        let wait = (10i64 << attempts.min(12)).min(3600);
        self.set(
            source,
            k,
            "failed",
            None,
            attempts,
            now_unix() + wait,
            Some(error),
        )
    }

    /// Entries left `sealing` by a crash.
    pub fn interrupted(&self) -> Result<Vec<(String, Key, SnapshotId)>, JournalError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT source, path, size, mtime_ns, ino, snapshot FROM intake WHERE state = 'sealing'")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (source, path, size, mtime_ns, ino, snap) = row.map_err(|e| self.err(e))?;
            if let Some(id) = snap.and_then(|s| s.parse().ok()) {
                out.push((
                    source,
                    Key {
                        path: PathBuf::from(path),
                        size: size as u64,
                        mtime_ns,
                        ino: ino as u64,
                    },
                    id,
                ));
            }
        }
        Ok(out)
    }

    /// Last wall-clock time the daemon recorded (unix seconds).
    pub(crate) fn last_clock(&self) -> Result<Option<i64>, JournalError> {
        self.conn()
            .query_row("SELECT last_seen FROM clock WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Last wall-clock time the daemon saw (unix seconds), and record `now` if it is later.
    pub(crate) fn observe_clock(&self, now: i64) -> Result<Option<i64>, JournalError> {
        let conn = self.conn();
        let last: Option<i64> = conn
            .query_row("SELECT last_seen FROM clock WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        if last.is_none_or(|l| now > l) {
            conn.execute(
                "INSERT INTO clock (id, last_seen) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
                params![now],
            )
            .map_err(|e| self.err(e))?;
        }
        Ok(last)
    }
}
