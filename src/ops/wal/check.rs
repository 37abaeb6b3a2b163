//! WAL continuity (`coffre verify`): per source and timeline, the archived segments must follow
//! one another from the first to the last. A missing segment stops every replay that needs to
//! cross it, so a gap is reported with the moments it cuts out of the recovery window: from the
//! archiving of the segment before it to the archiving of the segment after it. A timeline after
//! the first must have its history file archived too ([`missing_histories`]): without it no
//! replay follows the timeline, and the next promotion may take its number again.
//!
//! The archive is what the stores hold: the union over every reachable store of the
//! `wal/<source>/<timeline>/<name>/manifest.json` objects (manifest last, so a name with a
//! manifest is committed there).
//!
//! Each store's copy of each WAL file is also checked like a snapshot's replica (`copies`, no
//! data key needed): the manifest names the same sealed object as the reference (the catalog's
//! object, else the first store's), the sealed bytes have its size, header and SHA-256, and its
//! key object is authentic ([`crate::auth`]: one that no configured provider can check is a
//! tampered copy, as a fetch treats it). The scrub repairs a missing or bad copy from a good
//! one (`repair`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::app::Coffre;
use crate::format::wal::{WalFileKind, WalName};
use crate::ops::verify::{CheckState, ReplicaCheck};
use crate::store::{Manifest, Store};

/// One run of missing segments on a timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalGap {
    pub source: String,
    /// 8 hex digits.
    pub timeline: String,
    /// First and last missing segment names.
    pub first_missing: String,
    pub last_missing: String,
    pub missing: u64,
    /// The last archived segment before the gap, and when it was archived.
    pub before: String,
    pub before_archived: Option<String>,
    /// The first archived segment after it, and when it was archived.
    pub after: String,
    pub after_archived: Option<String>,
}

impl WalGap {
    /// One line for `coffre verify`.
    pub fn describe(&self) -> String {
        let when = |t: &Option<String>| t.clone().unwrap_or_else(|| "an unknown time".into());
        format!(
            "WAL gap on source `{}` timeline {}: {} segment(s) missing, {} to {}: no replay crosses it, so from a base backup older than the gap no moment after {} (archived {}) can be reached until {} (archived {}) and a newer base backup; take a base backup now if this is the newest part of the archive",
            self.source,
            self.timeline,
            self.missing,
            self.first_missing,
            self.last_missing,
            self.before,
            when(&self.before_archived),
            self.after,
            when(&self.after_archived),
        )
    }
}

/// What one source's archive holds: per timeline, the segments' positions and names.
#[derive(Debug, Default)]
pub struct Archive {
    pub timelines: BTreeMap<u32, BTreeMap<u64, String>>,
    /// The timelines whose history file (`0000000N.history`) is archived.
    pub histories: BTreeSet<u32>,
    /// Stores that could not be listed (their segments are not counted).
    pub unreachable: Vec<String>,
}

/// A timeline after the first whose segments are archived but whose history file is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingHistory {
    pub source: String,
    /// 8 hex digits.
    pub timeline: String,
    /// `0000000N.history`.
    pub history: String,
    pub segments: u64,
}

impl MissingHistory {
    /// One line for `coffre verify`.
    pub fn describe(&self) -> String {
        format!(
            "WAL timeline {tl} of source `{src}` has {n} archived segment(s) but no {h}: a restore with recovery_target_timeline = 'latest' does not follow it, and a later promotion may take timeline {tl} again and collide with these segments. Archive the history file from the cluster that promoted onto it (its pg_wal/{h}: `coffre wal-push --source {src} …/pg_wal/{h}` as the archiver, or create pg_wal/archive_status/{h}.ready there and let its archiver push it)",
            tl = self.timeline,
            src = self.source,
            n = self.segments,
            h = self.history,
        )
    }
}

/// The timelines of `a` after the first with segments and no history file (PostgreSQL writes
/// one at every promotion; without it the timeline cannot be followed, and may be reused).
pub fn missing_histories(source: &str, a: &Archive) -> Vec<MissingHistory> {
    a.timelines
        .iter()
        .filter(|(tl, segs)| **tl > 1 && !segs.is_empty() && !a.histories.contains(tl))
        .map(|(tl, segs)| MissingHistory {
            source: source.to_string(),
            timeline: format!("{tl:08X}"),
            history: format!("{tl:08X}.history"),
            segments: segs.len() as u64,
        })
        .collect()
}

/// The runs of missing positions between the first and the last segment of one timeline, as
/// (last present before, first missing, last missing, first present after, count). Positions
/// are `log << 32 | seg`; a log file holds `per_log` segments.
pub fn find_gaps(positions: &BTreeSet<u64>, per_log: u64) -> Vec<(u64, u64, u64, u64, u64)> {
    let linear = |p: u64| (p >> 32) * per_log + (p & 0xFFFF_FFFF);
    let position = |l: u64| ((l / per_log) << 32) | (l % per_log);
    let mut out = Vec::new();
    let mut prev: Option<u64> = None;
    for &p in positions {
        if let Some(q) = prev {
            let (lq, lp) = (linear(q), linear(p));
            if lp > lq + 1 {
                out.push((q, position(lq + 1), position(lp - 1), p, lp - lq - 1));
            }
        }
        prev = Some(p);
    }
    out
}

fn segment_name(timeline: u32, position: u64) -> String {
    format!(
        "{timeline:08X}{:08X}{:08X}",
        position >> 32,
        position & 0xFFFF_FFFF
    )
}

/// The committed WAL segments of `source`, over every reachable store.
pub async fn archive(app: &Coffre, source: &str) -> Archive {
    let mut a = Archive::default();
    for s in &app.stores {
        let prefix = s.wal_prefix(source);
        let list = match s.list(&prefix).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(store = %s.name, error = %e, "cannot list the WAL archive");
                a.unreachable.push(s.name.clone());
                continue;
            }
        };
        for meta in list {
            let Some(name) = crate::store::wal_manifest_name(meta.location.as_ref()) else {
                continue;
            };
            if name.kind() == WalFileKind::TimelineHistory {
                a.histories.insert(name.timeline());
            }
            if name.kind() != WalFileKind::Segment {
                continue;
            }
            a.timelines
                .entry(name.timeline())
                .or_default()
                .insert(name.position(), name.as_str().to_string());
        }
    }
    a
}

/// A segment's manifest from the first store that has it.
async fn manifest_of(app: &Coffre, source: &str, name: &str) -> Option<Manifest> {
    let name = WalName::parse(name).ok()?;
    for s in &app.stores {
        let path = s.wal_dir(source, &name).join("manifest.json");
        if let Ok(bytes) = s
            .get_small(&path, crate::format::objects::MAX_SMALL_OBJECT)
            .await
        {
            if let Ok(m) = Manifest::parse(&bytes) {
                return Some(m);
            }
        }
    }
    None
}

/// Every store's copy of every archived WAL file of `source`, checked without keys.
pub async fn copies(app: &Coffre, source: &str) -> Vec<ReplicaCheck> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for s in &app.stores {
        match s.list(&s.wal_prefix(source)).await {
            Ok(list) => names.extend(
                list.iter()
                    .filter_map(|m| crate::store::wal_manifest_name(m.location.as_ref()))
                    .map(|n| n.as_str().to_string()),
            ),
            Err(e) => tracing::warn!(store = %s.name, error = %e, "cannot list the WAL archive"),
        }
    }
    // The catalog's object for each name, read once.
    let indexed: std::collections::HashMap<String, crate::ids::SnapshotId> = app
        .catalog
        .list_wal(source)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.name, r.object))
        .collect();
    let auth = crate::auth::ObjectAuth::for_reading(&app.providers);
    let mut out = Vec::new();
    for name in names {
        let Some(reference) =
            reference_manifest(app, source, &name, indexed.get(&name).copied()).await
        else {
            continue;
        };
        let checks =
            futures::future::join_all(app.stores.iter().map(|s| check_copy(&auth, s, &reference)))
                .await;
        out.extend(checks);
    }
    out
}

/// One store's copy of a WAL file: its sealed bytes as a replica, then its key object.
async fn check_copy(
    auth: &crate::auth::ObjectAuth,
    s: &Store,
    reference: &Manifest,
) -> ReplicaCheck {
    let mut c = crate::ops::verify::check_replica(s, reference).await;
    if c.ok() {
        if let Err((state, detail)) = key_object_check(auth, s, reference).await {
            (c.state, c.detail) = (state, Some(detail));
        }
    }
    c
}

/// The copy's key object is the reference's object's and authentic.
async fn key_object_check(
    auth: &crate::auth::ObjectAuth,
    s: &Store,
    m: &Manifest,
) -> Result<(), (CheckState, String)> {
    let bad = |detail: String| (CheckState::Bad, detail);
    let path = s.object_paths(m).map_err(|e| bad(e.to_string()))?.key;
    let bytes = s
        .get_small(&path, crate::format::objects::MAX_SMALL_OBJECT)
        .await
        .map_err(|e| match e.kind() {
            _ if e.is_not_found() => bad(format!("{path} (the key object) is missing")),
            crate::store::ErrorKind::BadObject => bad(e.to_string()),
            crate::store::ErrorKind::Unauthorized => (CheckState::Unauthorized, e.to_string()),
            _ => (CheckState::Unreachable, e.to_string()),
        })?;
    let k = crate::store::KeyObject::parse(&bytes).map_err(|e| bad(format!("{path}: {e}")))?;
    if k.snapshot != m.snapshot || k.source != m.source {
        return Err(bad(format!(
            "{path}: key object of {} of `{}`",
            k.snapshot, k.source
        )));
    }
    let check = auth.check(&k, m);
    if !check.is_authentic() {
        return Err(bad(format!(
            "{path}: key object {check}: the copy is treated as tampered with (a fetch skips it; the scrub puts a good copy's key object in its place)"
        )));
    }
    Ok(())
}

/// The manifest a WAL file's copies are held to: the one naming the catalog's object for it,
/// else the first store's.
async fn reference_manifest(
    app: &Coffre,
    source: &str,
    name: &str,
    indexed: Option<crate::ids::SnapshotId>,
) -> Option<Manifest> {
    let mut first = None;
    for s in &app.stores {
        if let Ok(m) = s.wal_manifest(source, name).await {
            if indexed.is_none_or(|o| o == m.snapshot) {
                return Some(m);
            }
            first.get_or_insert(m);
        }
    }
    first
}

/// Why a WAL copy could not be repaired from another store's copy (the scrub logs it and tries
/// the next good copy).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("not a WAL copy")]
    NotWal,
    #[error("{store} holds another object under {name}")]
    Another { store: String, name: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Copy(#[from] crate::ops::wal::archive::CopyError),
}

/// Put a good copy of WAL file `check.wal` back into `to` (missing there, or bad): the sealed
/// bytes read from `from` and checked against the manifest, its key object authenticated, then
/// committed through the one commit protocol. Returns the bytes copied.
pub async fn repair(
    app: &Coffre,
    check: &ReplicaCheck,
    from: &Store,
    to: &Store,
) -> Result<u64, RepairError> {
    let name = check.wal.as_deref().ok_or(RepairError::NotWal)?;
    let m = from.wal_manifest(&check.source, name).await?;
    if m.snapshot != check.snapshot {
        return Err(RepairError::Another {
            store: from.name.clone(),
            name: name.to_string(),
        });
    }
    let (key, sealed) = crate::ops::wal::archive::read_sealed(app, from, &m).await?;
    let paths = to.object_paths(&m)?;
    to.put(&paths.data, sealed.clone().into()).await?;
    crate::ops::snapshot::commit::commit(
        app,
        to,
        &m,
        &key,
        crate::ops::snapshot::commit::Existing::Repair,
    )
    .await?;
    Ok(sealed.len() as u64)
}

/// Every gap in the WAL archive of `source`, per timeline.
pub async fn gaps(app: &Coffre, source: &str) -> (Vec<WalGap>, Archive) {
    let a = archive(app, source).await;
    let mut out = Vec::new();
    for (&tl, segs) in &a.timelines {
        let Some(first) = segs.values().next() else {
            continue;
        };
        let size = manifest_of(app, source, first)
            .await
            .map(|m| m.size)
            .unwrap_or(crate::format::wal::DEFAULT_SEGMENT_SIZE);
        let positions: BTreeSet<u64> = segs.keys().copied().collect();
        for (before, first, last, after, missing) in
            find_gaps(&positions, crate::format::wal::segments_per_log(size))
        {
            let before = segment_name(tl, before);
            let after = segment_name(tl, after);
            let before_archived = manifest_of(app, source, &before).await.map(|m| m.created);
            let after_archived = manifest_of(app, source, &after).await.map(|m| m.created);
            out.push(WalGap {
                source: source.to_string(),
                timeline: format!("{tl:08X}"),
                first_missing: segment_name(tl, first),
                last_missing: segment_name(tl, last),
                missing,
                before,
                before_archived,
                after,
                after_archived,
            });
        }
    }
    (out, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_found_across_log_files_and_a_contiguous_archive_has_none() {
        let per_log = crate::format::wal::segments_per_log(16 << 20);
        assert_eq!(per_log, 256);
        let pos = |log: u64, seg: u64| (log << 32) | seg;
        let contiguous: BTreeSet<u64> = [pos(0, 0xFE), pos(0, 0xFF), pos(1, 0), pos(1, 1)]
            .into_iter()
            .collect();
        assert!(find_gaps(&contiguous, per_log).is_empty());
        let holed: BTreeSet<u64> = [pos(0, 1), pos(0, 2), pos(0, 0xFF), pos(1, 2), pos(1, 3)]
            .into_iter()
            .collect();
        assert_eq!(
            find_gaps(&holed, per_log),
            vec![
                (pos(0, 2), pos(0, 3), pos(0, 0xFE), pos(0, 0xFF), 0xFC),
                (pos(0, 0xFF), pos(1, 0), pos(1, 1), pos(1, 2), 2),
            ]
        );
        assert_eq!(segment_name(1, pos(0, 0xA)), "00000001000000000000000A");
        // 1 GiB segments: 4 per log file.
        assert_eq!(crate::format::wal::segments_per_log(1 << 30), 4);
        assert_eq!(crate::format::wal::segments_per_log(12345), 256);
    }

    #[test]
    fn a_later_timeline_without_its_history_file_is_flagged() {
        let mut a = Archive::default();
        for (tl, name) in [
            (1, "000000010000000000000003"),
            (2, "000000020000000000000003"),
            (2, "000000020000000000000004"),
            (3, "000000030000000000000005"),
        ] {
            a.timelines.entry(tl).or_default().insert(0, name.into());
        }
        a.timelines.get_mut(&2).unwrap().insert(1, "x".into());
        a.histories.insert(3);
        let missing = missing_histories("emr", &a);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].history, "00000002.history");
        assert_eq!(missing[0].segments, 2);
        assert!(missing[0].describe().contains("no 00000002.history"));
        a.histories.insert(2);
        assert!(missing_histories("emr", &a).is_empty());
    }
}
