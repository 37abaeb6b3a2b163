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
//! Owns which segments and epochs are due; the destruction itself is the protocol of
//! [`crate::ops::lifecycle::destroy`]. May call: app, audit, retention, store, and in ops: destroy,
//! erasure (catch-up), clock_guard, shred (the retention lock), audit_replicate (the listing).
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
use crate::audit::Pruned;
use crate::format::objects::MAX_SMALL_OBJECT;
use crate::ids::{EpochId, SnapshotId};
use crate::ops::lifecycle::destroy::{Destruction, DestructionRecord, SealedCopy};
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

/// Why the access log's retention did not run, or did not destroy an epoch.
#[derive(Debug, thiserror::Error)]
pub enum AuditExpireError {
    #[error(transparent)]
    Clock(#[from] crate::ops::lifecycle::clock_guard::ClockError),
    #[error(transparent)]
    Lock(#[from] crate::ops::lifecycle::destroy::ShredError),
    #[error("{0}")]
    RetentionRange(#[from] time::error::ConversionRange),
    #[error("audit.retention reaches before the start of time")]
    Retention,
    #[error("{0}")]
    Log(crate::audit::AuditError),
    #[error("a segment is under legal hold ({hold}); nothing was destroyed")]
    LegalHold { hold: String },
    #[error(transparent)]
    Destroy(#[from] crate::ops::lifecycle::destroy::DestroyError),
    #[error("epoch destroyed and its segments deleted, but the erasure is not complete (record {record}): {reasons}; an alert stays raised and the next run retries")]
    Incomplete { record: String, reasons: String },
}

/// Carry out the access log's retention at `now`. Each part goes on when another fails (a store
/// that cannot be listed, a log line that does not parse): the failures are in `errors`.
pub async fn expire(
    app: &Coffre,
    now: time::OffsetDateTime,
    actor: &str,
) -> Result<ExpireReport, AuditExpireError> {
    // Nothing, not even the local log's head, goes when the clock jumped.
    crate::ops::lifecycle::clock_guard::check(app, now)?;
    let _lock = crate::ops::lifecycle::shred::lock(app).await?;
    let mut report = ExpireReport::default();
    report
        .errors
        .extend(crate::ops::lifecycle::erasure::catch_up(app, actor).await);
    let cutoff = now
        .checked_sub(time::Duration::try_from(app.config.audit.retention)?)
        .ok_or(AuditExpireError::Retention)?;
    match app.audit.prune_before(cutoff, actor, REASON) {
        Ok(p) => report.local = p,
        Err(e) => report.errors.push(format!("local log not pruned: {e}")),
    }

    let mut by_epoch = copies_by_epoch(app, &mut report.errors).await;
    due_epochs_without_copies(app, &mut by_epoch, &mut report.errors);
    for (epoch, copies) in by_epoch {
        let Some(day) = epoch_day(&epoch) else {
            continue;
        };
        if !is_due_day(day, now) {
            report.upcoming.push((epoch, day.to_string()));
            continue;
        }
        match destroy_epoch(app, &epoch, &copies, actor).await {
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
                errors.push(e.to_string());
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

/// Crypto-shred one epoch of the access log's sealed segments with the destruction protocol
/// ([`crate::ops::lifecycle::destroy`]): refuse under a legal hold, hash each copy, destroy the key in every
/// provider, push the keyrings, delete each copy whose key object says "key destroyed" (key
/// object last), keep the destruction record, log the outcome.
async fn destroy_epoch(
    app: &Coffre,
    epoch: &EpochId,
    copies: &[Copy],
    actor: &str,
) -> Result<DestructionRecord, AuditExpireError> {
    let d = Destruction {
        app,
        epoch,
        actor,
        reason: REASON,
        action: "audit-expire",
        alert_kept: false,
    };
    let log = |outcome: String| d.log(outcome).map_err(AuditExpireError::Log);
    log(format!(
        "started: {} sealed segment copies of the access log",
        copies.len()
    ))?;
    // The access log has no legal hold of its own today; if a key object ever carries one,
    // its epoch stays.
    if let Some(hold) = copies.iter().find_map(|c| c.legal_hold.clone()) {
        let _ = log(format!("refused: a segment is under legal hold ({hold})"));
        return Err(AuditExpireError::LegalHold { hold });
    }
    let sealed = hashes_before(app, copies).await;
    let sealed_copies: Vec<SealedCopy<'_>> = copies
        .iter()
        .zip(sealed)
        .map(|(c, sha)| SealedCopy {
            store: &app.stores[c.store],
            id: c.id.unwrap_or_else(SnapshotId::nil),
            label: format!("segment {}", c.data),
            path: c.data.to_string(),
            sealed_sha256: sha,
            objects: vec![c.data.clone(), c.key.clone()],
            manifest: None,
        })
        .collect();
    let erased = d.run(&sealed_copies).await?;
    let mut ids: Vec<SnapshotId> = copies.iter().filter_map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    // Legal hold checked above: no copy's key object carries one.
    let record = erased.record(&d, ids);
    let done = format!("{} segment copies deleted", record.copies.len());
    d.finish(&record, &done).await?;
    if !record.complete {
        return Err(AuditExpireError::Incomplete {
            record: record.record.to_string(),
            reasons: record.incomplete_reasons().join("; "),
        });
    }
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
