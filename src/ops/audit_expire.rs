//! The end of the access log's retention (`audit.retention`, default 7 years): what is no longer
//! needed is destroyed with its copies, as for snapshots.
//!
//! - The local log loses the entries written before `now - retention` (its head), keeping the
//!   chain verifiable through a pruning record (see [`crate::audit::AccessLog::prune_before`]).
//! - Sealed segments in the stores are grouped by epoch, `audit-<day>.<n>`, the day their
//!   retention ends (every entry in a segment is at least as old as the segment). Once that day
//!   is over, the epoch key is destroyed in every provider (crypto-shredding every copy,
//!   including any a store kept), the segments are deleted from every store, and a destruction
//!   record is written (catalog and stores) like the records of snapshot epochs.
//!
//! Invariants: the clock guard runs first and the whole run holds the retention lock (see
//! `retention::shred`); each step is logged before it happens; a copy that still decrypts after
//! the destruction is kept and named in the record; an epoch whose key a provider could not
//! destroy keeps its segments (retried at the next run); idempotent (destroying a destroyed key
//! and deleting a deleted object are no-ops). Only this host's segments are swept: another host's
//! segments are under its own keys and its own log.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::app::Coffre;
use crate::audit::{NewEntry, Pruned, Target};
use crate::format::objects::MAX_SMALL_OBJECT;
use crate::ids::{EpochId, SnapshotId};
use crate::ops::shred::{CopyResult, DestructionRecord, ProviderResult};
use crate::store::KeyObject;

const REASON: &str = "access-log retention ended";

/// The UTC day an access-log epoch (`audit-YYYY-MM-DD.N`) ends, if `e` is one.
pub(crate) fn epoch_day(e: &EpochId) -> Option<time::Date> {
    let rest = e.as_str().strip_prefix("audit-")?;
    let id = EpochId::try_from(rest.to_string()).ok()?;
    crate::retention::epoch_day(&id)
}

/// What one run did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ExpireReport {
    /// Entries removed from the head of the local log.
    pub local: Option<Pruned>,
    /// Access-log epochs destroyed, with their segments.
    pub epochs: Vec<DestructionRecord>,
    /// Epochs that are due but could not be destroyed this time (retried at the next run).
    pub errors: Vec<String>,
    /// Epochs not yet due, with the UTC day after which they are destroyed.
    pub upcoming: Vec<(EpochId, String)>,
}

struct Copy {
    store: usize,
    id: Option<SnapshotId>,
    legal_hold: Option<String>,
    data: object_store::path::Path,
    key: object_store::path::Path,
}

/// Carry out the access log's retention at `now`. Each part goes on when another fails (a store
/// that cannot be listed, a log line that does not parse): the failures are in `errors`.
pub async fn expire(
    app: &Coffre,
    now: time::OffsetDateTime,
    actor: &str,
) -> Result<ExpireReport, String> {
    // Nothing, not even the local log's head, goes when the clock jumped.
    crate::ops::clock_guard::check(app, now).map_err(|e| e.to_string())?;
    let _lock = crate::ops::shred::lock(app)
        .await
        .map_err(|e| e.to_string())?;
    let mut report = ExpireReport::default();
    report
        .errors
        .extend(crate::ops::erasure::catch_up(app, actor).await);
    let cutoff = now
        .checked_sub(
            time::Duration::try_from(app.config.audit.retention).map_err(|e| e.to_string())?,
        )
        .ok_or_else(|| "audit.retention reaches before the start of time".to_string())?;
    match app.audit.prune_before(cutoff, actor, REASON) {
        Ok(p) => report.local = p,
        Err(e) => report.errors.push(format!("local log not pruned: {e}")),
    }

    let mut by_epoch = copies_by_epoch(app, &mut report.errors).await;
    due_epochs_without_copies(app, &mut by_epoch, &mut report.errors);
    for (epoch, mut copies) in by_epoch {
        let Some(day) = epoch_day(&epoch) else {
            continue;
        };
        if !is_due_day(day, now) {
            report.upcoming.push((epoch, day.to_string()));
            continue;
        }
        match destroy_epoch(app, &epoch, &mut copies, actor).await {
            Ok(r) => report.epochs.push(r),
            Err(e) => {
                tracing::error!(epoch = %epoch, error = %e, "access-log epoch not destroyed");
                report.errors.push(format!("epoch {epoch}: {e}"));
            }
        }
    }
    Ok(report)
}

/// Every segment copy of this host in every store, by the epoch its key object names (the
/// folder's name when the key object cannot be read).
async fn copies_by_epoch(app: &Coffre, errors: &mut Vec<String>) -> BTreeMap<EpochId, Vec<Copy>> {
    let mut by_epoch: BTreeMap<EpochId, Vec<Copy>> = BTreeMap::new();
    for (i, s) in app.stores.iter().enumerate() {
        let segs = match crate::ops::audit_replicate::segments(s, &app.host).await {
            Ok(segs) => segs,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for seg in segs {
            let key = match s.get_small(&seg.key, MAX_SMALL_OBJECT).await {
                Ok(b) => KeyObject::parse(&b).ok(),
                Err(_) => None,
            };
            // The folder names the epoch too; the key object is what decides.
            let folder = seg
                .data
                .parts()
                .collect::<Vec<_>>()
                .iter()
                .rev()
                .nth(1)
                .and_then(|p| EpochId::try_from(p.as_ref().to_string()).ok());
            let Some(epoch) = key.as_ref().map(|k| k.epoch.clone()).or(folder) else {
                continue;
            };
            by_epoch.entry(epoch).or_default().push(Copy {
                store: i,
                id: key.as_ref().map(|k| k.snapshot),
                legal_hold: key.and_then(|k| k.legal_hold),
                data: seg.data,
                key: seg.key,
            });
        }
    }
    by_epoch
}

/// Due epochs the providers still hold a key for, even when no store lists a segment under
/// them any more (deleted by hand, a store taken out of the config): the key must go too.
fn due_epochs_without_copies(
    app: &Coffre,
    by_epoch: &mut BTreeMap<EpochId, Vec<Copy>>,
    errors: &mut Vec<String>,
) {
    for p in &app.providers {
        match p.epochs() {
            Ok(es) => {
                for e in es {
                    if e.destroyed.is_none() && epoch_day(&e.epoch).is_some() {
                        by_epoch.entry(e.epoch).or_default();
                    }
                }
            }
            Err(e) => errors.push(format!("provider `{}`: cannot list epochs: {e}", p.name())),
        }
    }
}

fn is_due_day(day: time::Date, now: time::OffsetDateTime) -> bool {
    day.next_day()
        .is_some_and(|n| n.midnight().assume_utc() <= now)
}

/// Crypto-shred one epoch of the access log's sealed segments: refuse under a legal hold, hash
/// each copy, destroy the key in every provider, push the keyrings, delete each copy that no
/// longer opens (key object last), keep the destruction record, log the outcome.
async fn destroy_epoch(
    app: &Coffre,
    epoch: &EpochId,
    copies: &mut [Copy],
    actor: &str,
) -> Result<DestructionRecord, String> {
    let log = |outcome: String| {
        app.audit
            .append(NewEntry {
                actor: actor.into(),
                action: "audit-expire".into(),
                target: Target {
                    epoch: Some(epoch.to_string()),
                    ..Default::default()
                },
                purpose: REASON.into(),
                outcome,
                exposes: None,
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    log(format!(
        "started: {} sealed segment copies of the access log",
        copies.len()
    ))?;
    // The access log has no legal hold of its own today; if a key object ever carries one,
    // its epoch stays.
    if let Some(hold) = copies.iter().find_map(|c| c.legal_hold.clone()) {
        let _ = log(format!("refused: a segment is under legal hold ({hold})"));
        return Err(format!(
            "a segment is under legal hold ({hold}); nothing was destroyed"
        ));
    }
    let sealed = hashes_before(app, copies).await;
    let providers = destroy_key(app, epoch, &log)?;
    // Recorded per store, retried by later runs while it fails.
    let keyrings = crate::ops::erasure::push_after_destruction(app, epoch).await;
    let mut results = Vec::new();
    for (c, sha) in copies.iter().zip(sealed) {
        results.push(erase_copy(app, epoch, c, sha, &log).await);
    }
    let mut ids: Vec<SnapshotId> = copies.iter().filter_map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    // Legal hold checked above: no copy's key object carries one.
    let record = DestructionRecord::new(actor, REASON, epoch, ids, providers, results, keyrings);
    crate::ops::shred::keep_record(app, &record)
        .await
        .map_err(|e| e.to_string())?;
    if !record.complete {
        let why = record.incomplete_reasons().join("; ");
        log(format!(
            "failed: epoch destroyed but the erasure is not complete: {why}"
        ))?;
        return Err(format!(
            "epoch destroyed and its segments deleted, but the erasure is not complete (record {}): {why}; an alert stays raised and the next run retries",
            record.record
        ));
    }
    log(format!(
        "ok: epoch destroyed, {} segment copies deleted",
        record.copies.len()
    ))?;
    tracing::info!(epoch = %epoch, copies = record.copies.len(), "access-log epoch crypto-shredded");
    Ok(record)
}

/// Each copy's SHA-256, taken before anything is destroyed (for the record).
async fn hashes_before(app: &Coffre, copies: &[Copy]) -> Vec<String> {
    let mut sealed = Vec::with_capacity(copies.len());
    for c in copies {
        let s = &app.stores[c.store];
        sealed.push(match s.get_small(&c.data, 256 * 1024 * 1024).await {
            Ok(b) => hex::encode(Sha256::digest(&b)),
            Err(e) => format!("unreadable before destruction: {e}"),
        });
    }
    sealed
}

/// Destroy the epoch key in every provider; the first that fails stops everything (nothing is
/// deleted).
fn destroy_key(
    app: &Coffre,
    epoch: &EpochId,
    log: &impl Fn(String) -> Result<(), String>,
) -> Result<Vec<ProviderResult>, String> {
    let mut providers = Vec::new();
    for p in &app.providers {
        if let Err(e) = p.destroy(epoch) {
            let _ = log(format!("failed: provider {}: {e}", p.name()));
            return Err(format!(
                "provider `{}` did not destroy the key ({e}); nothing was deleted",
                p.name()
            ));
        }
        providers.push(ProviderResult {
            provider: p.name().into(),
            destroyed: true,
            detail: "destroyed".into(),
        });
    }
    Ok(providers)
}

/// One copy after the key's destruction: check that it no longer opens, then delete it (key
/// object last). One whose key object names a key that was not destroyed is left, and said so
/// in the record (it goes when the epoch it names ends).
async fn erase_copy(
    app: &Coffre,
    epoch: &EpochId,
    c: &Copy,
    sealed_sha256: String,
    log: &impl Fn(String) -> Result<(), String>,
) -> CopyResult {
    let s = &app.stores[c.store];
    let decrypt_check = match s.get_small(&c.key, MAX_SMALL_OBJECT).await {
        Ok(b) => match KeyObject::parse(&b) {
            Ok(k) => match crate::ops::restore::unwrap_dek(app, &k) {
                Ok(_) => "STILL DECRYPTABLE".to_string(),
                Err(e) if e.is_destroyed() => "key destroyed".to_string(),
                Err(e) => format!("not decryptable: {e}"),
            },
            Err(e) => format!("key object unreadable: {e}"),
        },
        Err(e) => format!("key object unavailable: {e}"),
    };
    let kept = decrypt_check == "STILL DECRYPTABLE";
    let mut deletion = "deleted".to_string();
    if kept {
        let _ = log(format!(
            "failed: {} in store `{}` still decrypts; not deleted",
            c.data, s.name
        ));
        tracing::error!(store = %s.name, segment = %c.data, epoch = %epoch, "access-log segment still decrypts after the destruction of its epoch: kept");
        deletion =
            "kept: it still decrypts after the destruction (its key object names another key)"
                .into();
    } else {
        for path in [&c.data, &c.key] {
            if let Err(e) = s.delete(path).await {
                deletion = format!("not deleted ({path}), unreadable anyway: {e}");
            }
        }
    }
    CopyResult {
        // A key object that could not be read leaves the segment without an id: the nil id
        // says "unknown" (the path and hash identify the copy).
        snapshot: c.id.unwrap_or_else(SnapshotId::nil),
        store: s.name.clone(),
        path: c.data.to_string(),
        sealed_sha256,
        deletion,
        decrypt_check,
        kept,
    }
}
