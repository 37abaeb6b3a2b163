//! Retention of the WAL archive (`[source.pitr] window`). A WAL file's data key is wrapped under
//! the epoch of the day after the window has moved past it ([`crate::ops::snapshot::protect`]). When that
//! epoch is due:
//! - a WAL file still needed to reach the window's oldest moment from the base backup that
//!   starts the window (the newest base backup protected before `now - window`, else the oldest
//!   one) is kept: its key moves to tomorrow's epoch in every store (keys move, data does not),
//!   and if that fails for any store the epoch is not destroyed this round;
//! - any other WAL file is crypto-shredded with its epoch (unless a snapshot still depends on
//!   it) by the destruction protocol of [`crate::ops::lifecycle::destroy`]: the epoch key destroyed in
//!   every provider, then each copy checked ("key destroyed") and deleted, manifest first, and a
//!   destruction record kept. Key moves are [`crate::ops::lifecycle::destroy::Rewrap`]'s too.
//!
//! Owns what the window needs and the WAL copies' discovery; may call app, catalog, store,
//! auth, format, retention (the WAL manifest's read is `Store::wal_manifest`), and in
//! ops only destroy.
//!
//! "Needed" is by name: from the segment the base backup's `backup_label` starts at, on its
//! timeline and on every later one (and the history files of those timelines). The base backup
//! itself is kept past its own plan while it starts the window ([`window_bases`]).
//!
//! Two more rules keep WAL, never guessing what a replay needs:
//! - a base backup under legal hold keeps its WAL while the hold stands: from its start segment
//!   to the next base backup's start segment (to the end of the archive when none follows),
//!   so that it can still be brought to any moment up to where the next one takes over
//!   ([`held_ranges`]);
//! - while a `directory` snapshot whose WAL start is unknown is kept (protected by a coffre
//!   older than `pg_wal_start`, or without a `backup_label`), no WAL goes: a point-in-time
//!   restore may pick it as its base ([`crate::ops::pitr::recovery::choose_base`] takes the newest
//!   directory snapshot), and its start may be anywhere.

use std::collections::{BTreeMap, BTreeSet};

use crate::app::Coffre;
use crate::catalog::WalRow;
use crate::format::wal::{WalFileKind, WalName};
use crate::ids::{EpochId, SnapshotId};
use crate::ops::lifecycle::destroy::{
    DestroyError, Destruction, DestructionRecord, Indexed, Rewrap, SealedCopy, ShredError,
};
use crate::store::{KeyObject, Manifest, SnapshotKind, Store};

/// The base backup that starts a source's recovery window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowBase {
    pub snapshot: SnapshotId,
    pub created: String,
    /// The WAL file its backup starts at.
    pub wal_start: String,
}

/// What is due in one source's WAL archive.
#[derive(Debug, Clone, Default)]
pub struct WalDue {
    pub source: String,
    pub base: Option<WindowBase>,
    /// Due but still needed: their keys move to tomorrow's epoch.
    pub keep: Vec<WalRow>,
    /// Due and not needed: shredded with their epoch.
    pub shred: Vec<WalRow>,
}

/// A configured duration for the calendar arithmetic (saturating: no config can make it panic).
fn std_to_time(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn parse_time(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// The base backup starting the window of each source with `[source.pitr]`: the newest base
/// backup (a directory snapshot with a `backup_label`) protected at or before `now - window`,
/// else the oldest one (the window is not full yet).
pub fn window_bases(app: &Coffre, now: time::OffsetDateTime) -> BTreeMap<String, WindowBase> {
    let mut out = BTreeMap::new();
    for s in &app.config.sources {
        let Some(pitr) = &s.pitr else { continue };
        let mut bases: Vec<(time::OffsetDateTime, WindowBase)> = app
            .catalog
            .list(Some(&s.name))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.manifest.kind == SnapshotKind::Directory)
            .filter_map(|e| {
                let m = e.manifest;
                Some((
                    parse_time(&m.created)?,
                    WindowBase {
                        snapshot: m.snapshot,
                        created: m.created,
                        wal_start: m.pg_wal_start?,
                    },
                ))
            })
            .collect();
        bases.sort_by_key(|(t, b)| (*t, b.snapshot));
        let cutoff = now.saturating_sub(std_to_time(pitr.window));
        let chosen = bases
            .iter()
            .rev()
            .find(|(t, _)| *t <= cutoff)
            .or_else(|| bases.first());
        if let Some((_, b)) = chosen {
            out.insert(s.name.clone(), b.clone());
        }
    }
    out
}

/// A source's recovery window as `coffre retention plan` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PitrRange {
    pub source: String,
    /// `source.pitr.window`, e.g. "14days".
    pub window: String,
    /// The base backup that starts the window now (none: nothing can be recovered yet).
    pub base: Option<SnapshotId>,
    /// Any moment from here (when that base backup was protected)…
    pub recoverable_from: Option<String>,
    /// …to here (when the newest WAL file was archived).
    pub recoverable_to: Option<String>,
    /// WAL files due now: shredded, or kept by moving their keys (still needed).
    pub wal_due_shred: usize,
    pub wal_due_keep: usize,
    /// When the window's start moves to the next base backup, and which one.
    pub next_start_at: Option<String>,
    pub next_base: Option<SnapshotId>,
}

/// The recovery window of every source with `[source.pitr]` at `now`.
pub fn ranges(app: &Coffre, now: time::OffsetDateTime) -> Vec<PitrRange> {
    let bases = window_bases(app, now);
    let dues = plan(app, now);
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for s in &app.config.sources {
        let Some(pitr) = &s.pitr else { continue };
        let base = bases.get(&s.name);
        let (_, last) = app.catalog.wal_summary(&s.name).unwrap_or((0, None));
        // The next base backup after the one starting the window takes over once it is
        // `window` old.
        let next = base.and_then(|b| {
            let bt = parse_time(&b.created)?;
            app.catalog
                .list(Some(&s.name))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| {
                    e.manifest.kind == SnapshotKind::Directory && e.manifest.pg_wal_start.is_some()
                })
                .filter_map(|e| Some((parse_time(&e.manifest.created)?, e.manifest.snapshot)))
                .filter(|(t, _)| *t > bt)
                .min()
        });
        let due = dues.iter().find(|d| d.source == s.name);
        out.push(PitrRange {
            source: s.name.clone(),
            window: humantime::format_duration(pitr.window).to_string(),
            base: base.map(|b| b.snapshot),
            recoverable_from: base.map(|b| b.created.clone()),
            recoverable_to: last.map(|(_, t)| t),
            wal_due_shred: due.map(|d| d.shred.len()).unwrap_or(0),
            wal_due_keep: due.map(|d| d.keep.len()).unwrap_or(0),
            next_start_at: next.map(|(t, _)| fmt(t.saturating_add(std_to_time(pitr.window)))),
            next_base: next.map(|(_, id)| id),
        });
    }
    out
}

/// Index the WAL archive of every source with `[source.pitr]` from the stores' manifests and
/// key objects (`coffre catalog rebuild`): a new host's retention and status then know it.
/// A key object that fails its authentication is left out (with a warning). Returns the count.
pub(crate) async fn reindex(app: &Coffre) -> usize {
    let auth = crate::auth::ObjectAuth::for_reading(&app.providers);
    let mut done = BTreeSet::new();
    for src in app.config.sources.iter().filter(|s| s.pitr.is_some()) {
        for s in &app.stores {
            let Ok(list) = s.list(&s.wal_prefix(&src.name)).await else {
                tracing::warn!(store = %s.name, source = %src.name, "cannot list the WAL archive: not indexed from this store");
                continue;
            };
            for meta in list {
                let Some(name) = crate::store::wal_manifest_name(meta.location.as_ref()) else {
                    continue;
                };
                let key = (src.name.clone(), name.to_string());
                if done.contains(&key) {
                    continue;
                }
                let Ok(Some((m, k, _))) = read_copy(s, &src.name, &name).await else {
                    continue;
                };
                if m.source != src.name
                    || m.original_name != name.as_str()
                    || m.kind != SnapshotKind::Wal
                {
                    continue;
                }
                // Authentic only: a key object no configured provider can check is treated as
                // tampered with, as for a snapshot.
                if k.snapshot != m.snapshot || !auth.check(&k, &m).is_authentic() {
                    tracing::warn!(store = %s.name, wal = %name, "WAL key object not authentic: not indexed");
                    continue;
                }
                if app.catalog.put_wal(&m, &k.epoch).is_ok() {
                    done.insert(key);
                }
            }
        }
    }
    done.len()
}

/// Whether WAL file `w` is needed to replay from a backup that starts at segment `start`.
pub fn needed(start: &WalName, w: &WalName) -> bool {
    match w.kind() {
        WalFileKind::TimelineHistory => w.timeline() >= start.timeline(),
        _ => {
            w.timeline() > start.timeline()
                || (w.timeline() == start.timeline() && w.position() >= start.position())
        }
    }
}

/// The WAL a base backup under legal hold keeps: from its start segment to `until`, the start
/// segment of the next base backup (`None`: none follows, to the end of the archive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRange {
    pub snapshot: SnapshotId,
    pub start: WalName,
    pub until: Option<WalName>,
}

/// The ranges of WAL kept by held base backups, from `bases` (each base backup's protection
/// time, id and WAL start) and the held snapshots.
pub fn held_ranges_of(
    mut bases: Vec<(time::OffsetDateTime, SnapshotId, WalName)>,
    held: &BTreeSet<SnapshotId>,
) -> Vec<HeldRange> {
    bases.sort_by_key(|(t, id, _)| (*t, *id));
    bases
        .iter()
        .enumerate()
        .filter(|(_, (_, id, _))| held.contains(id))
        .map(|(i, (_, id, start))| HeldRange {
            snapshot: *id,
            start: start.clone(),
            until: bases.get(i + 1).map(|(_, _, next)| next.clone()),
        })
        .collect()
}

/// [`held_ranges_of`] for `source` from the catalog (its legal holds are on the key objects).
/// A catalog that cannot be read holds everything back (a range from the first segment).
fn held_ranges(app: &Coffre, source: &str) -> Vec<HeldRange> {
    let everything = || {
        WalName::parse("000000010000000000000000")
            .map(|start| HeldRange {
                snapshot: SnapshotId::nil(),
                start,
                until: None,
            })
            .into_iter()
            .collect()
    };
    let (Ok(entries), Ok(keys)) = (app.catalog.list(Some(source)), app.catalog.all_keys()) else {
        return everything();
    };
    let held: BTreeSet<SnapshotId> = keys
        .into_iter()
        .filter(|k| k.legal_hold.is_some())
        .map(|k| k.snapshot)
        .collect();
    let bases = entries
        .into_iter()
        .filter(|e| e.manifest.kind == SnapshotKind::Directory)
        .filter_map(|e| {
            let m = e.manifest;
            let start = WalName::parse(m.pg_wal_start.as_deref()?).ok()?;
            Some((parse_time(&m.created)?, m.snapshot, start))
        })
        .collect();
    held_ranges_of(bases, &held)
}

/// Whether a held base backup keeps WAL file `w`.
pub fn held_needs(ranges: &[HeldRange], w: &WalName) -> bool {
    ranges.iter().any(|r| {
        needed(&r.start, w)
            && r.until.as_ref().is_none_or(|u| {
                w.kind() == WalFileKind::TimelineHistory || w.position() <= u.position()
            })
    })
}

/// What is due at `now` in every source's WAL archive.
pub fn plan(app: &Coffre, now: time::OffsetDateTime) -> Vec<WalDue> {
    let bases = window_bases(app, now);
    let mut out = Vec::new();
    for s in app.config.sources.iter().filter(|s| s.pitr.is_some()) {
        let base = bases.get(&s.name).cloned();
        let start = base
            .as_ref()
            .and_then(|b| WalName::parse(&b.wal_start).ok());
        let held = held_ranges(app, &s.name);
        // A directory snapshot whose WAL start is not known (protected by an older coffre, or a
        // pg_basebackup in tar format) might need any WAL: keep all of it while one is kept.
        let unknown_start = app
            .catalog
            .list(Some(&s.name))
            .map(|l| {
                l.iter().any(|e| {
                    e.manifest.kind == SnapshotKind::Directory && e.manifest.pg_wal_start.is_none()
                })
            })
            .unwrap_or(true);
        let mut due = WalDue {
            source: s.name.clone(),
            base,
            ..Default::default()
        };
        for row in app.catalog.list_wal(&s.name).unwrap_or_default() {
            if !crate::retention::is_due(&row.epoch, now) {
                continue;
            }
            let keep = match (&start, WalName::parse(&row.name)) {
                _ if unknown_start => true,
                (_, Ok(w)) if held_needs(&held, &w) => true,
                (Some(start), Ok(w)) => needed(start, &w),
                // No base backup: nothing can replay it.
                (None, Ok(_)) => false,
                // Not a WAL name (cannot happen: checked at the push): keep, never guess.
                (_, Err(_)) => true,
            };
            if keep {
                due.keep.push(row);
            } else {
                due.shred.push(row);
            }
        }
        out.push(due);
    }
    out
}

/// Why retention could not read or trust a store's copy of a WAL file, or move its key: it
/// then neither moves a key nor deletes a copy (the epoch stays; the next run goes on).
#[derive(Debug, thiserror::Error)]
pub enum WalCopyError {
    #[error(transparent)]
    Name(#[from] crate::format::wal::WalNameError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    KeyObject(#[from] crate::format::objects::KeyObjectError),
    #[error("{store} holds object {object} under {name}, the catalog says {catalog}")]
    Another {
        store: String,
        object: SnapshotId,
        name: String,
        catalog: SnapshotId,
    },
    #[error("the key object of {name} in {store} is {check}: treated as tampered with; `coffre verify` reports it and the scrub repairs it from a good copy")]
    NotAuthentic {
        name: String,
        store: String,
        check: String,
    },
    #[error("{store}: {source}")]
    InStore {
        store: String,
        source: Box<WalCopyError>,
    },
    #[error("WAL file {name} in store `{store}`: {source}")]
    Copy {
        name: String,
        store: String,
        source: Box<WalCopyError>,
    },
    #[error("{name} is in no store")]
    InNoStore { name: String },
    #[error(transparent)]
    Rewrap(#[from] crate::ops::lifecycle::destroy::RewrapError),
}

/// One store's copy of a WAL file: its manifest and key object (`None`: not there). A key
/// object that is not authentic (forged, or tagged by no configured provider) is an error:
/// retention neither moves a key nor deletes a copy on its word.
async fn copy_in(
    app: &Coffre,
    s: &Store,
    row: &WalRow,
) -> Result<Option<(Manifest, KeyObject, crate::store::ObjectPaths)>, WalCopyError> {
    let name = WalName::parse(&row.name)?;
    let copy = read_copy(s, &row.source, &name).await?;
    if let Some((m, k, _)) = &copy {
        if m.snapshot != row.object {
            return Err(WalCopyError::Another {
                store: s.name.clone(),
                object: m.snapshot,
                name: row.name.clone(),
                catalog: row.object,
            });
        }
        let check = crate::auth::ObjectAuth::for_reading(&app.providers).check(k, m);
        if !check.is_authentic() {
            return Err(WalCopyError::NotAuthentic {
                name: row.name.clone(),
                store: s.name.clone(),
                check: check.to_string(),
            });
        }
    }
    Ok(copy)
}

/// The manifest and key object of WAL file `name` in store `s` (`None`: not committed there).
async fn read_copy(
    s: &Store,
    source: &str,
    name: &WalName,
) -> Result<Option<(Manifest, KeyObject, crate::store::ObjectPaths)>, WalCopyError> {
    let max = crate::format::objects::MAX_SMALL_OBJECT;
    let m = match s.wal_manifest(source, name.as_str()).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let paths = s.object_paths(&m)?;
    let kb = s.get_small(&paths.key, max).await?;
    let k = KeyObject::parse(&kb)?;
    Ok(Some((m, k, paths)))
}

const KEEP_PURPOSE: &str =
    "retention: a WAL file still needed by the recovery window or a base backup under legal hold";

/// Move the key of a WAL file still needed to `to`, in every store that holds it
/// ([`crate::ops::lifecycle::destroy::Rewrap`]: the access-log entry first, and nothing moves if it cannot
/// be written). Any store that cannot be read or updated fails the move (the epoch then stays).
async fn rewrap(app: &Coffre, row: &WalRow, to: &EpochId, actor: &str) -> Result<(), WalCopyError> {
    let mut copies = Vec::new();
    for s in &app.stores {
        if let Some(c) = copy_in(app, s, row)
            .await
            .map_err(|e| WalCopyError::InStore {
                store: s.name.clone(),
                source: Box::new(e),
            })?
        {
            copies.push((s, c));
        }
    }
    let Some((_, (m, old, _))) = copies.first() else {
        return Err(WalCopyError::InNoStore {
            name: row.name.clone(),
        });
    };
    let r = Rewrap {
        app,
        actor,
        action: "key-rewrap",
        purpose: KEEP_PURPOSE,
        subject: format!("WAL file {} ", row.name),
        old: old.clone(),
        manifest: Some(m.clone()),
        copies: copies
            .iter()
            .map(|(s, (_, _, p))| (*s, p.key.clone()))
            .collect(),
        index: Indexed::Wal {
            source: &row.source,
            name: &row.name,
        },
    };
    r.run(to, None).await.map(|_| ())?;
    Ok(())
}

/// Move the keys of every due WAL file still needed. Returns the epochs that must not be
/// destroyed this round (a move failed) and the errors.
pub async fn move_kept(
    app: &Coffre,
    dues: &[WalDue],
    now: time::OffsetDateTime,
    actor: &str,
) -> (BTreeSet<EpochId>, Vec<ShredError>) {
    let tomorrow = (now + time::Duration::days(1)).date();
    let to = crate::retention::live_epoch(&app.providers, tomorrow);
    let (mut blocked, mut errors) = (BTreeSet::new(), Vec::new());
    for row in dues.iter().flat_map(|d| &d.keep) {
        if let Err(reason) = rewrap(app, row, &to, actor).await {
            tracing::error!(wal = %row.name, source = %row.source, epoch = %row.epoch, reason = %reason, "key of a needed WAL file not moved: its epoch stays");
            blocked.insert(row.epoch.clone());
            errors.push(ShredError::NotDestroyed {
                epoch: row.epoch.clone(),
                reason: format!(
                    "WAL file {} of `{}` is still needed by the recovery window and its key could not be moved: {reason}",
                    row.name, row.source
                ),
            });
        }
    }
    (blocked, errors)
}

/// Shred every due WAL file that is not needed, epoch by epoch (except `blocked` ones).
pub async fn shred_due(
    app: &Coffre,
    dues: &[WalDue],
    blocked: &BTreeSet<EpochId>,
    actor: &str,
) -> (Vec<DestructionRecord>, Vec<ShredError>) {
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    let mut by_epoch: BTreeMap<EpochId, Vec<&WalRow>> = BTreeMap::new();
    for row in dues.iter().flat_map(|d| &d.shred) {
        by_epoch.entry(row.epoch.clone()).or_default().push(row);
    }
    for (epoch, rows) in by_epoch {
        if blocked.contains(&epoch) {
            continue;
        }
        if let Err(e) = others_depend(app, &epoch, rows.len()) {
            errors.push(e);
            continue;
        }
        match shred_epoch(app, &epoch, &rows, actor).await {
            Ok((record, finished)) => {
                errors.extend(finished.err().map(ShredError::from));
                if !record.complete {
                    errors.push(ShredError::Incomplete {
                        epoch: epoch.clone(),
                        record: record.record.clone(),
                        reasons: record.incomplete_reasons().join("; "),
                    });
                }
                done.push(record);
            }
            Err(e) => errors.push(e),
        }
    }
    (done, errors)
}

/// Refuse an epoch that snapshots (kept by a refused destruction) or WAL files this plan does
/// not shred (a source no longer archiving, say) still depend on: not now.
fn others_depend(app: &Coffre, epoch: &EpochId, rows: usize) -> Result<(), ShredError> {
    let snapshots = app
        .catalog
        .all_keys()
        .map(|ks| ks.iter().filter(|k| &k.epoch == epoch).count())
        .unwrap_or(usize::MAX);
    if snapshots > 0 {
        return Err(ShredError::NotDestroyed {
            epoch: epoch.clone(),
            reason: format!("{snapshots} snapshot(s) still depend on it"),
        });
    }
    let wal = app.catalog.wal_in_epoch(epoch).unwrap_or(u64::MAX);
    if wal > rows as u64 {
        return Err(ShredError::NotDestroyed {
            epoch: epoch.clone(),
            reason: format!("{} other WAL file(s) still depend on it", wal - rows as u64),
        });
    }
    Ok(())
}

/// Crypto-shred one epoch of WAL files with the destruction protocol: log, list every copy
/// (each authentic, read before anything is destroyed), destroy and erase, drop the shredded
/// files from the index, keep the record. Returns the record and whether keeping it and logging
/// the outcome worked.
async fn shred_epoch(
    app: &Coffre,
    epoch: &EpochId,
    rows: &[&WalRow],
    actor: &str,
) -> Result<(DestructionRecord, Result<(), DestroyError>), ShredError> {
    let d = Destruction {
        app,
        epoch,
        actor,
        reason: "retention: the WAL file left the recovery window",
        action: "shred",
        alert_kept: false,
    };
    d.log(format!("started: {} WAL file(s)", rows.len()))?;
    let mut copies = Vec::new();
    for row in rows {
        copies.extend(wal_copies(app, row).await.map_err(|e| {
            let _ = d.log(format!("refused: {e}"));
            ShredError::NotDestroyed {
                epoch: epoch.clone(),
                reason: e.to_string(),
            }
        })?);
    }
    let erased = d.run(&copies).await?;
    for row in rows.iter().filter(|r| !erased.kept.contains(&r.object)) {
        if let Err(e) = app.catalog.remove_wal(&row.source, &row.name) {
            tracing::warn!(error = %e, wal = %row.name, "shredded WAL file left in the catalog's index");
        }
    }
    let record = erased.record(&d, rows.iter().map(|r| r.object).collect());
    let done = format!(
        "{} WAL file(s), {} copies deleted",
        rows.len(),
        record.copies.len()
    );
    let finished = d.finish(&record, &done).await;
    Ok((record, finished))
}

/// Every store's copy of WAL file `row`, for the destruction protocol. A copy that cannot be
/// read or is not authentic stops the destruction (never destroy on its word; the scrub repairs
/// it from a good copy, and the next run goes on).
async fn wal_copies<'a>(
    app: &'a Coffre,
    row: &WalRow,
) -> Result<Vec<SealedCopy<'a>>, WalCopyError> {
    let name = WalName::parse(&row.name)?;
    let mut out = Vec::new();
    for s in &app.stores {
        let Some((m, _, paths)) = copy_in(app, s, row).await.map_err(|e| WalCopyError::Copy {
            name: row.name.clone(),
            store: s.name.clone(),
            source: Box::new(e),
        })?
        else {
            continue;
        };
        out.push(SealedCopy {
            store: s,
            id: row.object,
            label: format!("WAL file {}", row.name),
            path: s.wal_dir(&row.source, &name).to_string(),
            sealed_sha256: m.sealed_sha256.clone(),
            objects: vec![paths.manifest, paths.data, paths.key],
            manifest: Some(m),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_base_backup_keeps_its_wal_up_to_the_next_base_backup_while_the_hold_stands() {
        let w = |n: &str| WalName::parse(n).unwrap();
        let day = |d: u8| {
            time::Date::from_calendar_date(2026, time::Month::December, d)
                .unwrap()
                .midnight()
                .assume_utc()
        };
        let (b1, b2, b3) = (SnapshotId::new(), SnapshotId::new(), SnapshotId::new());
        let bases = vec![
            (day(3), b2, w("000000010000000000000006")),
            (day(1), b1, w("000000010000000000000002")),
            (day(5), b3, w("000000020000000000000009")),
        ];
        // No hold: nothing kept by this rule.
        assert!(held_ranges_of(bases.clone(), &BTreeSet::new()).is_empty());
        // b1 held: from its start to b2's.
        let ranges = held_ranges_of(bases.clone(), &[b1].into_iter().collect());
        assert_eq!(
            ranges,
            vec![HeldRange {
                snapshot: b1,
                start: w("000000010000000000000002"),
                until: Some(w("000000010000000000000006")),
            }]
        );
        for (name, kept) in [
            ("000000010000000000000001", false),
            ("000000010000000000000002", true),
            ("000000010000000000000006", true),
            ("000000010000000000000007", false),
            ("000000010000000000000003.partial", true),
            ("000000010000000000000002.00000028.backup", true),
            ("000000020000000000000004", true),
            ("00000001.history", true),
            ("00000002.history", true),
        ] {
            assert_eq!(held_needs(&ranges, &w(name)), kept, "{name}");
        }
        // The newest base backup held: to the end of the archive, on later timelines too.
        let ranges = held_ranges_of(bases, &[b3].into_iter().collect());
        assert_eq!(ranges[0].until, None);
        assert!(held_needs(&ranges, &w("0000000200000005000000FF")));
        assert!(held_needs(&ranges, &w("000000030000000000000001")));
        assert!(!held_needs(&ranges, &w("000000020000000000000008")));
        assert!(!held_needs(&ranges, &w("0000000100000005000000FF")));
    }

    #[test]
    fn what_a_base_backup_needs_starts_at_its_segment_and_follows_later_timelines() {
        let start = WalName::parse("000000020000000000000010").unwrap();
        let w = |n: &str| WalName::parse(n).unwrap();
        assert!(needed(&start, &w("000000020000000000000010")));
        assert!(needed(&start, &w("000000020000000100000000")));
        assert!(needed(&start, &w("000000030000000000000002")));
        assert!(needed(&start, &w("00000002.history")));
        assert!(needed(&start, &w("00000003.history")));
        assert!(!needed(&start, &w("00000002000000000000000F")));
        assert!(!needed(&start, &w("000000010000000000000011")));
        assert!(!needed(&start, &w("00000001.history")));
        assert!(!needed(
            &start,
            &w("00000002000000000000000F.00000028.backup")
        ));
    }
}
