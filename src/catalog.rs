//! Local catalog: a cache of the stores' manifests and of where each snapshot is committed, in an
//! SQLite database under the state folder (WAL, synchronous=FULL).
//!
//! Invariant: the catalog is never the only record of anything; `coffre catalog rebuild` recreates
//! it from any store's manifests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::ids::{EpochId, SnapshotId};
use crate::store::{KeyObject, Manifest};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("catalog {path}: {source}{}", db_hint(source))]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog {path} holds a manifest that does not parse: {reason}; run `coffre catalog rebuild`")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the stores disagree about {count} snapshot(s), so the catalog was not rebuilt (the old one is kept): {first}. Someone may have edited a store: compare the named objects, restore the right copy from the other stores, then rebuild again")]
    StoresDisagree { count: usize, first: String },
}

/// What to do about an SQLite error of the catalog.
pub(crate) fn db_hint(e: &rusqlite::Error) -> &'static str {
    crate::fsutil::db_hint(e)
        .unwrap_or(". If the catalog is damaged, move it aside and run `coffre catalog rebuild`")
}

/// State of one replica as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    Committed,
    Missing,
    Bad,
}

impl ReplicaState {
    fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Committed => "committed",
            ReplicaState::Missing => "missing",
            ReplicaState::Bad => "bad",
        }
    }
    fn parse(s: &str) -> ReplicaState {
        match s {
            "committed" => ReplicaState::Committed,
            "missing" => ReplicaState::Missing,
            _ => ReplicaState::Bad,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    pub store: String,
    pub state: ReplicaState,
    pub updated: String,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub manifest: Manifest,
    pub replicas: Vec<Replica>,
}

/// Per-source summary for the status page.
#[derive(Debug, Clone, Default)]
pub struct SourceSummary {
    pub count: u64,
    pub last_id: String,
    pub last_created: String,
    pub last_committed_stores: Vec<String>,
}

/// One archived WAL file in the catalog's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRow {
    pub source: String,
    pub name: String,
    pub object: SnapshotId,
    pub created: String,
    pub epoch: EpochId,
    /// Plaintext bytes (a segment's size is the cluster's `--wal-segsize`).
    pub size: u64,
}

/// Who a recovery session's fetch is by: what the session is bound to, and the purpose its
/// first fetch records.
#[derive(Debug, Clone, Copy)]
pub struct SessionBy<'a> {
    pub source: &'a str,
    pub actor: &'a str,
    /// The store the session is pinned to, '' for none.
    pub store: &'a str,
    pub purpose: &'a str,
}

/// What one fetch did to its recovery session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFetch {
    /// The session's first fetch (since it opened, or since its last summary): it is logged
    /// before the WAL file is handed out, with the purpose of the restore or drill that opened
    /// the session.
    New { purpose: String },
    /// Counted in the session (same caller, source and store).
    Counted,
    /// The id belongs to another caller's, source's or store's session: refused.
    Foreign,
    /// No restore or drill opened a session of that id: refused.
    Unknown,
}

/// One recovery session's WAL fetches (`restore_command` of one point-in-time restore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSession {
    pub id: String,
    pub source: String,
    pub actor: String,
    pub purpose: String,
    pub started: String,
    pub last_at: String,
    pub first: String,
    pub last: String,
    pub count: u64,
    /// Time spent serving the session's fetches (restore_command waiting on coffre).
    pub fetch_ms: u64,
    /// Fetches served from the prefetch.
    pub hits: u64,
}

pub struct Catalog {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// The catalog's tables (created when absent). `alerts`: alerts that outlive one run (a copy
/// kept because it still decrypts, a store whose keyring copy still holds a destroyed key),
/// shown by `status` until resolved. `counters`: the daemon's Prometheus `_total`s, so they
/// survive a restart.
const SCHEMA: &str = "PRAGMA journal_mode=WAL;
     PRAGMA synchronous=FULL;
     CREATE TABLE IF NOT EXISTS snapshots (
         id TEXT PRIMARY KEY,
         source TEXT NOT NULL,
         created TEXT NOT NULL,
         manifest TEXT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS snapshots_source ON snapshots(source, id);
     CREATE TABLE IF NOT EXISTS keys (
         snapshot TEXT PRIMARY KEY,
         epoch TEXT NOT NULL,
         key_json TEXT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS keys_epoch ON keys(epoch);
     CREATE TABLE IF NOT EXISTS drills (
         source TEXT NOT NULL,
         store TEXT NOT NULL,
         report TEXT NOT NULL,
         PRIMARY KEY (source, store)
     );
     CREATE TABLE IF NOT EXISTS destruction (
         id TEXT PRIMARY KEY,
         record TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS replicas (
         snapshot TEXT NOT NULL,
         store TEXT NOT NULL,
         state TEXT NOT NULL,
         updated TEXT NOT NULL,
         PRIMARY KEY (snapshot, store)
     );
     CREATE TABLE IF NOT EXISTS alerts (
         key TEXT PRIMARY KEY,
         text TEXT NOT NULL,
         since TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS counters (
         family TEXT NOT NULL,
         labels TEXT NOT NULL,
         value INTEGER NOT NULL,
         PRIMARY KEY (family, labels)
     );
     CREATE TABLE IF NOT EXISTS wal (
         source TEXT NOT NULL,
         name TEXT NOT NULL,
         object TEXT NOT NULL,
         created TEXT NOT NULL,
         size INTEGER NOT NULL,
         epoch TEXT NOT NULL,
         PRIMARY KEY (source, name)
     );
     CREATE TABLE IF NOT EXISTS wal_sessions (
         id TEXT PRIMARY KEY,
         source TEXT NOT NULL,
         actor TEXT NOT NULL,
         purpose TEXT NOT NULL,
         started TEXT NOT NULL,
         last_at TEXT NOT NULL,
         first TEXT NOT NULL,
         last TEXT NOT NULL,
         count INTEGER NOT NULL,
         fetch_ms INTEGER NOT NULL DEFAULT 0,
         hits INTEGER NOT NULL DEFAULT 0,
         store TEXT NOT NULL DEFAULT ''
     );";

/// Columns added since the first catalogs: the last successful drill, kept apart from the last
/// attempt; the time a recovery session spent fetching, its prefetch hits and its store.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has = |table: &str, column: &str| {
        conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
            .and_then(|mut st| st.exists(params![table, column]))
    };
    if !has("drills", "last_ok")? {
        conn.execute_batch("ALTER TABLE drills ADD COLUMN last_ok TEXT;")?;
    }
    for column in ["fetch_ms", "hits"] {
        if !has("wal_sessions", column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE wal_sessions ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0;"
            ))?;
        }
    }
    // The store a recovery session is pinned to ('' for none): part of what it is bound to.
    if !has("wal_sessions", "store")? {
        conn.execute_batch("ALTER TABLE wal_sessions ADD COLUMN store TEXT NOT NULL DEFAULT '';")?;
    }
    Ok(())
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        if let Some(dir) = path.parent() {
            crate::fsutil::create_private_dir(dir).map_err(|e| CatalogError::Db {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let db = |source| CatalogError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        migrate(&conn).map_err(db)?;
        Ok(Catalog {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Write this connection's transactions without waiting for the disk (WAL mode: a power
    /// loss may drop the last ones, never corrupt the file). For counters only.
    pub(crate) fn relaxed_durability(&self) -> Result<(), CatalogError> {
        self.conn()
            .execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| self.db(e))
    }

    /// Add `delta` to the counter `family{labels}`.
    pub(crate) fn add_counter(
        &self,
        family: &str,
        labels: &str,
        delta: u64,
    ) -> Result<(), CatalogError> {
        let delta = i64::try_from(delta).unwrap_or(i64::MAX);
        self.conn()
            .execute(
                "INSERT INTO counters (family, labels, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(family, labels) DO UPDATE SET value = value + excluded.value",
                params![family, labels, delta],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Remember an archived WAL file and the epoch its key is wrapped under (the stores hold
    /// the archive: this index feeds the status and retention).
    pub fn put_wal(&self, m: &Manifest, epoch: &EpochId) -> Result<(), CatalogError> {
        let size = i64::try_from(m.size).unwrap_or(i64::MAX);
        self.conn()
            .execute(
                "INSERT INTO wal (source, name, object, created, size, epoch) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(source, name) DO UPDATE SET object = excluded.object,
                   created = excluded.created, size = excluded.size, epoch = excluded.epoch",
                params![
                    m.source,
                    m.original_name,
                    m.snapshot.to_string(),
                    m.created,
                    size,
                    epoch.as_str()
                ],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// How many indexed WAL files (any source) have their key under `epoch`.
    pub fn wal_in_epoch(&self, epoch: &EpochId) -> Result<u64, CatalogError> {
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT count(*) FROM wal WHERE epoch = ?1",
                params![epoch.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.db(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Whether the catalog's index has WAL file `name` of `source`.
    pub fn has_wal(&self, source: &str, name: &str) -> Result<bool, CatalogError> {
        self.conn()
            .prepare("SELECT 1 FROM wal WHERE source = ?1 AND name = ?2")
            .and_then(|mut st| st.exists(params![source, name]))
            .map_err(|e| self.db(e))
    }

    /// Every archived WAL file of `source` the catalog knows, in name order.
    pub fn list_wal(&self, source: &str) -> Result<Vec<WalRow>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT name, object, created, epoch, size FROM wal WHERE source = ?1 ORDER BY name",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map(params![source], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(|e| self.db(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, object, created, epoch, size)| {
                Some(WalRow {
                    source: source.to_string(),
                    name,
                    object: object.parse().ok()?,
                    created,
                    epoch: EpochId::try_from(epoch).ok()?,
                    size: u64::try_from(size).unwrap_or(0),
                })
            })
            .collect())
    }

    /// Open recovery session `id` (a point-in-time restore or drill does, never a fetch): bound
    /// now to its source and store ('' for any), and to the account of its first fetch later;
    /// `purpose` (the restore's or drill's) is what its access entries record.
    pub fn open_wal_session(
        &self,
        id: &str,
        source: &str,
        store: &str,
        purpose: &str,
        now: &str,
    ) -> Result<(), CatalogError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO wal_sessions (id, source, actor, purpose, started, last_at, first, last, count, store)
             VALUES (?1, ?2, '', ?3, ?4, ?4, '', '', 0, ?5)",
            params![id, source, purpose, now, store],
        )
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Whether a fetch by `by` may use recovery session `id`: `None` when it may (the session
    /// was opened by coffre for this source and store, and is unclaimed or this caller's),
    /// else why not ([`SessionFetch::Unknown`] or [`SessionFetch::Foreign`]).
    pub fn wal_session_refusal(
        &self,
        id: &str,
        by: &SessionBy<'_>,
    ) -> Result<Option<SessionFetch>, CatalogError> {
        let conn = self.conn();
        Self::session_refusal(&conn, id, by).map_err(|e| self.db(e))
    }

    fn session_refusal(
        conn: &Connection,
        id: &str,
        by: &SessionBy<'_>,
    ) -> Result<Option<SessionFetch>, rusqlite::Error> {
        let owner = conn
            .query_row(
                "SELECT source, actor, store FROM wal_sessions WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()?;
        Ok(match owner {
            None => Some(SessionFetch::Unknown),
            Some((s, a, st))
                if s != by.source || st != by.store || (!a.is_empty() && a != by.actor) =>
            {
                Some(SessionFetch::Foreign)
            }
            Some(_) => None,
        })
    }

    /// Count one fetch of `name` in recovery session `id`; its first fetch claims it for its
    /// caller. A fetch the session does not admit ([`Self::wal_session_refusal`]) counts nothing.
    pub fn wal_session_fetch(
        &self,
        id: &str,
        by: &SessionBy<'_>,
        name: &str,
        now: &str,
    ) -> Result<SessionFetch, CatalogError> {
        let conn = self.conn();
        if let Some(refused) = Self::session_refusal(&conn, id, by).map_err(|e| self.db(e))? {
            return Ok(refused);
        }
        let (count, purpose) = conn
            .query_row(
                "UPDATE wal_sessions SET actor = ?5, last_at = ?3, count = count + 1,
                   first = CASE WHEN first = '' OR ?2 < first THEN ?2 ELSE first END,
                   last = CASE WHEN ?2 > last THEN ?2 ELSE last END
                 WHERE id = ?1 AND source = ?4 AND store = ?6 AND actor IN ('', ?5)
                 RETURNING count, purpose",
                params![id, name, now, by.source, by.actor, by.store],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(|e| self.db(e))?
            .unwrap_or((0, String::new()));
        Ok(match count {
            0 => SessionFetch::Foreign,
            1 => SessionFetch::New { purpose },
            _ => SessionFetch::Counted,
        })
    }

    /// Recovery sessions with fetches but none since `before` (RFC 3339), to be summed up.
    pub fn take_idle_wal_sessions(&self, before: &str) -> Result<Vec<WalSession>, CatalogError> {
        let conn = self.conn();
        let rows = Self::wal_sessions_where(&conn, "count > 0 AND last_at < ?1", before)
            .map_err(|e| self.db(e))?;
        // Summed up, then kept (claimed by its caller, counted from zero again): a copy that
        // starts its recovery again later fetches in the same session, which logs a new start.
        for r in &rows {
            conn.execute(
                "UPDATE wal_sessions SET count = 0, first = '', last = '', fetch_ms = 0, hits = 0
                 WHERE id = ?1",
                params![r.id],
            )
            .map_err(|e| self.db(e))?;
        }
        Ok(rows)
    }

    /// Forget the recovery sessions with no fetch since `before` (RFC 3339) and nothing left to
    /// sum up: opened and never used, or ended long ago. A copy that starts its recovery after
    /// that is refused (restore it again).
    pub fn forget_wal_sessions(&self, before: &str) -> Result<usize, CatalogError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM wal_sessions WHERE count = 0 AND last_at < ?1",
            params![before],
        )
        .map_err(|e| self.db(e))
    }

    /// A recovery session still open (a drill reads its fetch figures after the replay).
    pub fn wal_session(&self, id: &str) -> Result<Option<WalSession>, CatalogError> {
        let conn = self.conn();
        let rows = Self::wal_sessions_where(&conn, "id = ?1", id).map_err(|e| self.db(e))?;
        Ok(rows.into_iter().next())
    }

    /// One fetch of a session was served in `ms` milliseconds (from the prefetch: `hit`).
    pub fn wal_session_served(&self, id: &str, ms: u64, hit: bool) -> Result<(), CatalogError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE wal_sessions SET fetch_ms = fetch_ms + ?2, hits = hits + ?3 WHERE id = ?1",
            params![id, i64::try_from(ms).unwrap_or(i64::MAX), i64::from(hit)],
        )
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn wal_sessions_where(
        conn: &Connection,
        filter: &str,
        value: &str,
    ) -> Result<Vec<WalSession>, rusqlite::Error> {
        let mut st = conn.prepare(&format!(
            "SELECT id, source, actor, purpose, started, last_at, first, last, count,
                    fetch_ms, hits
             FROM wal_sessions WHERE {filter} ORDER BY started"
        ))?;
        let n =
            |r: &rusqlite::Row<'_>, i| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
        let rows = st
            .query_map(params![value], |r| {
                Ok(WalSession {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    actor: r.get(2)?,
                    purpose: r.get(3)?,
                    started: r.get(4)?,
                    last_at: r.get(5)?,
                    first: r.get(6)?,
                    last: r.get(7)?,
                    count: n(r, 8)?,
                    fetch_ms: n(r, 9)?,
                    hits: n(r, 10)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>();
        rows
    }

    /// A WAL file's key moved to another epoch.
    pub fn set_wal_epoch(
        &self,
        source: &str,
        name: &str,
        epoch: &EpochId,
    ) -> Result<(), CatalogError> {
        self.conn()
            .execute(
                "UPDATE wal SET epoch = ?3 WHERE source = ?1 AND name = ?2",
                params![source, name, epoch.as_str()],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// A WAL file shredded.
    pub fn remove_wal(&self, source: &str, name: &str) -> Result<(), CatalogError> {
        self.conn()
            .execute(
                "DELETE FROM wal WHERE source = ?1 AND name = ?2",
                params![source, name],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The WAL archive of `source` as this catalog knows it: (files, newest archiving time and
    /// its name). Names of one timeline sort in WAL order; the newest is by archiving time.
    pub fn wal_summary(
        &self,
        source: &str,
    ) -> Result<(u64, Option<(String, String)>), CatalogError> {
        let conn = self.conn();
        let count: i64 = conn
            .query_row(
                "SELECT count(*) FROM wal WHERE source = ?1",
                params![source],
                |r| r.get(0),
            )
            .map_err(|e| self.db(e))?;
        let last = conn
            .query_row(
                "SELECT name, created FROM wal WHERE source = ?1 ORDER BY created DESC, name DESC LIMIT 1",
                params![source],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        Ok((u64::try_from(count).unwrap_or(0), last))
    }

    /// Every counter: (family, labels, value).
    pub fn counters(&self) -> Result<Vec<(String, String, u64)>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT family, labels, value FROM counters ORDER BY family, labels")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                let v: i64 = r.get(2)?;
                Ok((r.get(0)?, r.get(1)?, u64::try_from(v).unwrap_or(0)))
            })
            .map_err(|e| self.db(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows)
    }

    fn db(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn put_manifest(&self, m: &Manifest) -> Result<(), CatalogError> {
        let json = String::from_utf8(m.to_json()).unwrap_or_default();
        self.conn()
            .execute(
                "INSERT INTO snapshots (id, source, created, manifest) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest",
                params![m.snapshot.to_string(), m.source, m.created, json],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Record a snapshot just committed: its manifest, its key object and the state of each
    /// store's copy, in one transaction (a crash leaves all of it or none: never a snapshot
    /// listed without its stores).
    pub(crate) fn record_commit(
        &self,
        m: &Manifest,
        k: &KeyObject,
        replicas: &[(&str, ReplicaState)],
    ) -> Result<(), CatalogError> {
        let manifest = String::from_utf8(m.to_json()).unwrap_or_default();
        let key = String::from_utf8(k.to_json()).unwrap_or_default();
        let now = crate::clock::now_rfc3339();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        tx.execute(
            "INSERT INTO snapshots (id, source, created, manifest) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest",
            params![m.snapshot.to_string(), m.source, m.created, manifest],
        )
        .map_err(|e| self.db(e))?;
        tx.execute(
            "INSERT INTO keys (snapshot, epoch, key_json) VALUES (?1, ?2, ?3)
             ON CONFLICT(snapshot) DO UPDATE SET epoch = excluded.epoch, key_json = excluded.key_json",
            params![k.snapshot.to_string(), k.epoch.to_string(), key],
        )
        .map_err(|e| self.db(e))?;
        for (store, state) in replicas {
            tx.execute(
                "INSERT INTO replicas (snapshot, store, state, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(snapshot, store) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                params![m.snapshot.to_string(), store, state.as_str(), now],
            )
            .map_err(|e| self.db(e))?;
        }
        tx.commit().map_err(|e| self.db(e))
    }

    pub fn set_replica(
        &self,
        id: &SnapshotId,
        store: &str,
        state: ReplicaState,
    ) -> Result<(), CatalogError> {
        self.conn()
            .execute(
                "INSERT INTO replicas (snapshot, store, state, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(snapshot, store) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                params![id.to_string(), store, state.as_str(), crate::clock::now_rfc3339()],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn parse(&self, json: &str) -> Result<Manifest, CatalogError> {
        Manifest::parse(json.as_bytes()).map_err(|e| CatalogError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    fn replicas(&self, conn: &Connection, id: &str) -> Result<Vec<Replica>, CatalogError> {
        let mut st = conn
            .prepare_cached(
                "SELECT store, state, updated FROM replicas WHERE snapshot = ?1 ORDER BY store",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(Replica {
                    store: r.get(0)?,
                    state: ReplicaState::parse(&r.get::<_, String>(1)?),
                    updated: r.get(2)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }

    /// Snapshots, oldest first, optionally of one source.
    pub fn list(&self, source: Option<&str>) -> Result<Vec<Entry>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, manifest FROM snapshots WHERE (?1 IS NULL OR source = ?1) ORDER BY id",
            )
            .map_err(|e| self.db(e))?;
        let rows: Vec<(String, String)> = st
            .query_map(params![source], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.db(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, json) in rows {
            out.push(Entry {
                manifest: self.parse(&json)?,
                replicas: self.replicas(&conn, &id)?,
            });
        }
        Ok(out)
    }

    pub fn get(&self, id: &SnapshotId) -> Result<Option<Entry>, CatalogError> {
        let conn = self.conn();
        let json: Option<String> = conn
            .query_row(
                "SELECT manifest FROM snapshots WHERE id = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        match json {
            None => Ok(None),
            Some(j) => Ok(Some(Entry {
                manifest: self.parse(&j)?,
                replicas: self.replicas(&conn, &id.to_string())?,
            })),
        }
    }

    /// Newest snapshot of a source.
    pub fn latest(&self, source: &str) -> Result<Option<Entry>, CatalogError> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT id FROM snapshots WHERE source = ?1 ORDER BY id DESC LIMIT 1",
                params![source],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        match id.and_then(|s| s.parse::<SnapshotId>().ok()) {
            None => Ok(None),
            Some(id) => self.get(&id),
        }
    }

    /// Forget everything (before a rebuild).
    pub fn clear(&self) -> Result<(), CatalogError> {
        self.conn()
            .execute_batch("DELETE FROM replicas; DELETE FROM snapshots; DELETE FROM keys;")
            .map_err(|e| self.db(e))
    }

    pub fn remove(&self, id: &SnapshotId) -> Result<(), CatalogError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM keys WHERE snapshot = ?1",
            params![id.to_string()],
        )
        .map_err(|e| self.db(e))?;
        conn.execute(
            "DELETE FROM replicas WHERE snapshot = ?1",
            params![id.to_string()],
        )
        .map_err(|e| self.db(e))?;
        conn.execute(
            "DELETE FROM snapshots WHERE id = ?1",
            params![id.to_string()],
        )
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Per source: number of snapshots, the newest, and the stores where it is committed.
    pub fn summary(
        &self,
    ) -> Result<std::collections::BTreeMap<String, SourceSummary>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT s.source, count(*), max(s.id) FROM snapshots s GROUP BY s.source")
            .map_err(|e| self.db(e))?;
        let rows: Vec<(String, i64, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.db(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.db(e))?;
        let mut out = std::collections::BTreeMap::new();
        for (source, count, last) in rows {
            let created: String = conn
                .query_row(
                    "SELECT created FROM snapshots WHERE id = ?1",
                    params![last],
                    |r| r.get(0),
                )
                .map_err(|e| self.db(e))?;
            let stores = self
                .replicas(&conn, &last)?
                .into_iter()
                .filter(|r| r.state == ReplicaState::Committed)
                .map(|r| r.store)
                .collect();
            out.insert(
                source,
                SourceSummary {
                    count: count as u64,
                    last_id: last,
                    last_created: created,
                    last_committed_stores: stores,
                },
            );
        }
        Ok(out)
    }

    /// Per store: snapshots in the catalog not committed there.
    pub(crate) fn lag_by_store(
        &self,
        stores: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, CatalogError> {
        let conn = self.conn();
        let total: i64 = conn
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .map_err(|e| self.db(e))?;
        let mut st = conn
            .prepare(
                "SELECT store, count(*) FROM replicas WHERE state = 'committed' GROUP BY store",
            )
            .map_err(|e| self.db(e))?;
        let committed: Vec<(String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.db(e))?;
        let mut out: std::collections::HashMap<String, u64> = stores
            .iter()
            .map(|s| (s.clone(), total.max(0) as u64))
            .collect();
        for (store, c) in committed {
            out.insert(store, (total - c).max(0) as u64);
        }
        Ok(out)
    }

    /// Snapshots not committed in `store` (oldest first): (source, id).
    pub fn lagging(&self, store: &str) -> Result<Vec<(String, SnapshotId)>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT s.source, s.id FROM snapshots s
                 WHERE NOT EXISTS (SELECT 1 FROM replicas r WHERE r.snapshot = s.id AND r.store = ?1 AND r.state = 'committed')
                 ORDER BY s.id",
            )
            .map_err(|e| self.db(e))?;
        let rows: Vec<(String, String)> = st
            .query_map(params![store], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, id)| id.parse().ok().map(|id| (s, id)))
            .collect())
    }

    /// Remember the key object of a snapshot (epoch, planned expiry, hold; wrapped keys only).
    pub fn put_key(&self, k: &KeyObject) -> Result<(), CatalogError> {
        let json = String::from_utf8(k.to_json()).unwrap_or_default();
        self.conn()
            .execute(
                "INSERT INTO keys (snapshot, epoch, key_json) VALUES (?1, ?2, ?3)
                 ON CONFLICT(snapshot) DO UPDATE SET epoch = excluded.epoch, key_json = excluded.key_json",
                params![k.snapshot.to_string(), k.epoch.to_string(), json],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn get_key(&self, id: &SnapshotId) -> Result<Option<KeyObject>, CatalogError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT key_json FROM keys WHERE snapshot = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        match json {
            None => Ok(None),
            Some(j) => {
                KeyObject::parse(j.as_bytes())
                    .map(Some)
                    .map_err(|e| CatalogError::Corrupt {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Every key object, in snapshot order.
    pub(crate) fn all_keys(&self) -> Result<Vec<KeyObject>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT key_json FROM keys ORDER BY snapshot")
            .map_err(|e| self.db(e))?;
        let rows: Vec<String> = st
            .query_map([], |r| r.get(0))
            .map_err(|e| self.db(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.db(e))?;
        rows.iter()
            .map(|j| {
                KeyObject::parse(j.as_bytes()).map_err(|e| CatalogError::Corrupt {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    pub(crate) fn put_destruction(&self, id: &str, record: &str) -> Result<(), CatalogError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO destruction (id, record) VALUES (?1, ?2)",
                params![id, record],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn destructions(&self) -> Result<Vec<String>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT record FROM destruction ORDER BY id")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .map_err(|e| self.db(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows)
    }

    /// Creation times (RFC 3339) of a source's snapshots.
    pub(crate) fn created_times(&self, source: &str) -> Result<Vec<String>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT created FROM snapshots WHERE source = ?1 ORDER BY id")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map(params![source], |r| r.get(0))
            .map_err(|e| self.db(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows)
    }

    /// Remember the last drill report of (source, store); a successful one is also kept as
    /// the last success, which a later failure does not replace.
    pub(crate) fn put_drill(
        &self,
        source: &str,
        store: &str,
        report: &str,
        ok: bool,
    ) -> Result<(), CatalogError> {
        self.conn()
            .execute(
                "INSERT INTO drills (source, store, report, last_ok) VALUES (?1, ?2, ?3, CASE WHEN ?4 THEN ?3 END)
                 ON CONFLICT(source, store) DO UPDATE SET report = excluded.report,
                     last_ok = CASE WHEN ?4 THEN excluded.report ELSE drills.last_ok END",
                params![source, store, report, ok],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Per (source, store): the last drill report and the last successful one, as JSON text.
    pub fn drills(&self) -> Result<Vec<(String, Option<String>)>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT report, last_ok FROM drills ORDER BY source, store")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows)
    }

    /// Raise (or restate) a lasting alert under `key`; `since` keeps its first time.
    pub(crate) fn set_alert(&self, key: &str, text: &str) -> Result<(), CatalogError> {
        self.conn()
            .execute(
                "INSERT INTO alerts (key, text, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET text = excluded.text",
                params![key, text, crate::clock::now_rfc3339()],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Clear a lasting alert (no-op when it is not raised).
    pub(crate) fn clear_alert(&self, key: &str) -> Result<(), CatalogError> {
        self.conn()
            .execute("DELETE FROM alerts WHERE key = ?1", params![key])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Lasting alerts: (key, text, since), oldest first.
    pub fn alerts(&self) -> Result<Vec<(String, String, String)>, CatalogError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT key, text, since FROM alerts ORDER BY since, key")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.db(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        (dir, c)
    }

    #[test]
    fn a_failed_drill_keeps_the_last_success() {
        let (_d, c) = catalog();
        c.put_drill("emr", "a", r#"{"n":1}"#, true).unwrap();
        c.put_drill("emr", "a", r#"{"n":2}"#, false).unwrap();
        c.put_drill("emr", "b", r#"{"n":3}"#, false).unwrap();
        let d = c.drills().unwrap();
        assert_eq!(d[0], (r#"{"n":2}"#.into(), Some(r#"{"n":1}"#.into())));
        assert_eq!(d[1], (r#"{"n":3}"#.into(), None));
        c.put_drill("emr", "a", r#"{"n":4}"#, true).unwrap();
        assert_eq!(c.drills().unwrap()[0].1.as_deref(), Some(r#"{"n":4}"#));
    }

    #[test]
    fn counters_add_up_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let c = Catalog::open(&path).unwrap();
        c.relaxed_durability().unwrap();
        c.add_counter("repairs", r#"["a"]"#, 1).unwrap();
        c.add_counter("repairs", r#"["a"]"#, 2).unwrap();
        c.add_counter("uploaded_bytes", r#"["b"]"#, 10).unwrap();
        drop(c);
        let c = Catalog::open(&path).unwrap();
        assert_eq!(
            c.counters().unwrap(),
            vec![
                ("repairs".into(), r#"["a"]"#.into(), 3),
                ("uploaded_bytes".into(), r#"["b"]"#.into(), 10)
            ]
        );
    }

    #[test]
    fn a_catalog_from_before_last_ok_gets_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE drills (source TEXT NOT NULL, store TEXT NOT NULL, report TEXT NOT NULL, PRIMARY KEY (source, store));
             INSERT INTO drills VALUES ('emr', 'a', '{}');",
        )
        .unwrap();
        drop(conn);
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.drills().unwrap(), vec![("{}".into(), None)]);
        drop(c);
        Catalog::open(&path).expect("opening twice adds the column once");
    }
}
