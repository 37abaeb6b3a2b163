//! Replica verification without any key: for each snapshot and each store, the manifest is there,
//! the sealed object has the manifest's size, its header parses and names the snapshot, and its
//! SHA-256 matches the manifest. Used by `coffre verify` and by the scrub.
//!
//! May call: app, catalog, format, store; no other room (wal's copy check and the scrub call it).

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::app::Coffre;
use crate::catalog::ReplicaState;
use crate::format::seal::Header;
use crate::ids::SnapshotId;
use crate::store::{Manifest, Store};

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaCheck {
    pub snapshot: SnapshotId,
    pub source: String,
    pub store: String,
    pub state: CheckState,
    pub detail: Option<String>,
    /// A WAL file's copy: its name (`snapshot` is its sealed object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<String>,
}

/// What the check of one replica found (kebab-case in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckState {
    Ok,
    /// Not committed in this store (no manifest, or no data).
    Missing,
    /// Present but not what the manifest says (size, header, SHA-256, or another manifest).
    Bad,
    /// The store refuses this host's credentials.
    Unauthorized,
    /// The store could not be read.
    Unreachable,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Missing => "missing",
            CheckState::Bad => "bad",
            CheckState::Unauthorized => "unauthorized",
            CheckState::Unreachable => "unreachable",
        }
    }

    /// Missing or bad: the scrub puts a good copy in its place.
    pub(crate) fn needs_repair(self) -> bool {
        matches!(self, CheckState::Missing | CheckState::Bad)
    }

    /// The catalog's replica state this check establishes, if any (an unreachable or refusing
    /// store says nothing about the copy).
    pub(crate) fn replica_state(self) -> Option<ReplicaState> {
        match self {
            CheckState::Ok => Some(ReplicaState::Committed),
            CheckState::Missing => Some(ReplicaState::Missing),
            CheckState::Bad => Some(ReplicaState::Bad),
            CheckState::Unauthorized | CheckState::Unreachable => None,
        }
    }
}

impl std::fmt::Display for CheckState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ReplicaCheck {
    pub fn ok(&self) -> bool {
        self.state == CheckState::Ok
    }
}

/// Check one replica; `expected` is the reference manifest (from the catalog or another store):
/// its manifest agrees, then its data object is hashed in full and its header names the
/// snapshot. No key is needed.
pub(crate) async fn check_replica(store: &Store, expected: &Manifest) -> ReplicaCheck {
    let (state, detail) = match check(store, expected).await {
        Ok(()) => (CheckState::Ok, None),
        Err((state, detail)) => (state, Some(detail)),
    };
    ReplicaCheck {
        snapshot: expected.snapshot,
        source: expected.source.clone(),
        store: store.name.clone(),
        state,
        detail,
        wal: (expected.kind == crate::store::SnapshotKind::Wal)
            .then(|| expected.original_name.clone()),
    }
}

type Verdict = (CheckState, String);

async fn check(store: &Store, expected: &Manifest) -> Result<(), Verdict> {
    let m = replica_manifest(store, expected).await?;
    let path = store
        .object_paths(&m)
        .map_err(|e| (CheckState::Bad, e.to_string()))?
        .data;
    let res = store.get(&path).await.map_err(|e| {
        if e.is_not_found() {
            (CheckState::Missing, format!("{path} is missing"))
        } else {
            (CheckState::Unreachable, e.to_string())
        }
    })?;
    if res.meta.size != m.sealed_size {
        return Err((
            CheckState::Bad,
            format!(
                "{path} has {} bytes, the manifest says {}",
                res.meta.size, m.sealed_size
            ),
        ));
    }
    let (sha, head) = hash_object(store, &path, res).await?;
    match Header::decode(&head) {
        Ok(h) if h.snapshot == m.snapshot.to_string() => {}
        Ok(h) => {
            return Err((
                CheckState::Bad,
                format!("{path}: header names snapshot {}", h.snapshot),
            ))
        }
        Err(e) => return Err((CheckState::Bad, format!("{path}: {e}"))),
    }
    if sha != m.sealed_sha256 {
        return Err((
            CheckState::Bad,
            format!(
                "{path}: SHA-256 {sha} differs from the manifest's {}",
                m.sealed_sha256
            ),
        ));
    }
    Ok(())
}

/// The replica's manifest, which must describe the same sealed bytes as `expected`.
async fn replica_manifest(store: &Store, expected: &Manifest) -> Result<Manifest, Verdict> {
    let read = if expected.kind == crate::store::SnapshotKind::Wal {
        store
            .wal_manifest(&expected.source, &expected.original_name)
            .await
    } else {
        store
            .get_manifest(&expected.source, &expected.snapshot)
            .await
    };
    let m = match read {
        Ok(m) => m,
        Err(e) if e.is_not_found() => {
            return Err((
                CheckState::Missing,
                "manifest missing: the snapshot is not committed here".into(),
            ))
        }
        Err(e) if e.kind() == crate::store::ErrorKind::BadObject => {
            return Err((CheckState::Bad, e.to_string()))
        }
        Err(e) if e.kind() == crate::store::ErrorKind::Unauthorized => {
            return Err((
                CheckState::Unauthorized,
                format!("{e}: check this store's credentials"),
            ))
        }
        Err(e) => return Err((CheckState::Unreachable, e.to_string())),
    };
    if m.snapshot != expected.snapshot
        || m.sealed_sha256 != expected.sealed_sha256
        || m.sealed_size != expected.sealed_size
    {
        return Err((
            CheckState::Bad,
            "manifest differs from the other replicas".into(),
        ));
    }
    Ok(m)
}

/// Stream the whole object: its SHA-256 (hex) and its first bytes (up to a header's length).
async fn hash_object(
    store: &Store,
    path: &object_store::path::Path,
    res: object_store::GetResult,
) -> Result<(String, Vec<u8>), Verdict> {
    let max = crate::format::seal::MAX_HEADER_LEN;
    let mut sha = Sha256::new();
    let mut head: Vec<u8> = Vec::new();
    let mut stream = res.into_stream();
    while let Some(chunk) = stream.next().await {
        let c = chunk.map_err(|e| {
            (
                CheckState::Unreachable,
                store.op_err("read", path, e).to_string(),
            )
        })?;
        if head.len() < max {
            head.extend_from_slice(&c[..c.len().min(max - head.len())]);
        }
        sha.update(&c);
    }
    Ok((hex::encode(sha.finalize()), head))
}

/// Reference manifests: the catalog's, plus any found in the stores that the catalog lacks.
pub(crate) async fn known_manifests(app: &Coffre, only: Option<SnapshotId>) -> Vec<Manifest> {
    let mut out: std::collections::BTreeMap<SnapshotId, Manifest> = app
        .catalog
        .list(None)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.manifest.snapshot, e.manifest))
        .collect();
    for s in &app.stores {
        if let Ok(list) = s.list_manifests().await {
            for (source, id) in list {
                if out.contains_key(&id) || only.is_some_and(|o| o != id) {
                    continue;
                }
                if let Ok(m) = s.get_manifest(&source, &id).await {
                    out.insert(id, m);
                }
            }
        }
    }
    out.into_values()
        .filter(|m| only.is_none_or(|o| o == m.snapshot))
        .collect()
}

/// Check every replica of every known snapshot (or one), updating the catalog's replica states.
pub async fn verify(app: &Coffre, only: Option<SnapshotId>) -> Vec<ReplicaCheck> {
    let mut out = Vec::new();
    for m in known_manifests(app, only).await {
        let checks =
            futures::future::join_all(app.stores.iter().map(|s| check_replica(s, &m))).await;
        for c in checks {
            let state = c.state.replica_state();
            if let Some(st) = state {
                let _ = app.catalog.put_manifest(&m);
                let _ = app.catalog.set_replica(&m.snapshot, &c.store, st);
            }
            out.push(c);
        }
    }
    out
}
