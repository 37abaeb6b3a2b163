//! Carrying out retention for snapshots: re-wrap the keys of snapshots that stay, destroy due
//! epoch keys (crypto-shredding every copy of the snapshots they covered), with the destruction
//! record. Also holds and early shred of one snapshot, and the retention lock.
//!
//! Owns what is due and the checks before a destruction (holds, every store's key object, the
//! copies); the destruction itself and the re-wrap are [`crate::ops::lifecycle::destroy`]'s, the only
//! protocol for both. May call: app, catalog, retention (the plan), keys, store, and in ops:
//! destroy, erasure (catch-up), clock_guard, wal_retention (the WAL archive's share of a run).
//!
//! Invariants:
//! - keys move, data never does: keeping a snapshot past its epoch re-wraps its DEK under a later
//!   epoch and rewrites its key object in every store *before* the old epoch key is destroyed; if
//!   any store cannot be updated, the epoch is not destroyed this round;
//! - a held snapshot and the newest snapshot of a source are never shredded by retention;
//! - every unwrap (re-wrap) and every shred is in the access log before it happens;
//! - idempotent: a crash half-way is finished by the next run (destroying a destroyed key and
//!   deleting a deleted object are no-ops);
//! - a plan and its execution happen under one lock (`<state-dir>/retention.lock`), which holds
//!   and early shreds take too; right before an epoch key is destroyed the holds are read again
//!   from the catalog, and every store's key object of each snapshot to shred must agree with
//!   the catalog (epoch, no hold): a key object changed outside coffre stops the destruction;
//! - a copy is deleted only after its own key object, read back from its store, fails to unwrap
//!   with "key destroyed"; anything else keeps the copy, says so in the destruction record and
//!   raises a lasting alert;
//! - the clock guard ([`crate::ops::lifecycle::clock_guard`]) runs before anything is destroyed, whatever the entry
//!   point.

use crate::app::Coffre;
use crate::ids::{EpochId, SnapshotId};
use crate::ops::lifecycle::destroy::{
    Destruction, Indexed, Rewrap, RewrapError, SealedCopy, ShredError,
};
use crate::ops::lifecycle::erasure;
use crate::retention::{self, EpochPlan, Keep};
use crate::store::KeyObject;

pub use crate::ops::lifecycle::destroy::{CopyResult, DestructionRecord, ProviderResult};

/// The lock under which retention plans are made and carried out, holds are added and released
/// and snapshots are shredded: one at a time, across the daemon, the commands and the threads
/// of one process (an exclusive `flock` on `<state-dir>/retention.lock`, taken by each caller on
/// its own open file).
pub struct RetentionLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Take the retention lock, waiting for the holder to finish.
pub async fn lock(app: &Coffre) -> Result<RetentionLock, ShredError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = app.config.state_dir.join("retention.lock");
    let err = |source| ShredError::Lock {
        path: path.clone(),
        source,
    };
    let mut waited = std::time::Duration::ZERO;
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(RetentionLock { _lock: l }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                if waited == std::time::Duration::from_secs(5) {
                    tracing::info!(path = %path.display(), "waiting for another retention, hold or shred to finish");
                }
                let step = std::time::Duration::from_millis(50);
                tokio::time::sleep(step).await;
                waited += step;
            }
            Err((_, errno)) => return Err(err(std::io::Error::from(errno))),
        }
    }
}

/// Re-wrap a snapshot's DEK under `to` (and set or clear its hold), in every store that holds it
/// ([`crate::ops::lifecycle::destroy::Rewrap`]: the access-log entry first, no key moves without it).
/// Logged as `hold-add` when it sets a hold, `hold-release` when it clears one, else
/// `key-rewrap`.
pub async fn rewrap(
    app: &Coffre,
    id: &SnapshotId,
    to: &EpochId,
    hold: Option<Option<String>>,
    actor: &str,
    purpose: &str,
) -> Result<KeyObject, ShredError> {
    let old = app
        .catalog
        .get_key(id)?
        .ok_or(ShredError::UnknownSnapshot(*id))?;
    let action = match &hold {
        Some(Some(_)) => "hold-add",
        Some(None) => "hold-release",
        None => "key-rewrap",
    };
    let copies = app
        .committed_stores(id)
        .into_iter()
        .map(|s| (s, s.key_path(&old.source, id)))
        .collect();
    let manifest = app.catalog.get(id).ok().flatten().map(|e| e.manifest);
    let r = Rewrap {
        app,
        actor,
        action,
        purpose,
        subject: String::new(),
        old,
        manifest,
        copies,
        index: Indexed::Snapshot,
    };
    r.run(to, hold).await.map_err(|e| match e {
        RewrapError::Audit { source, .. } => ShredError::Audit(source),
        RewrapError::Key { source, .. } => ShredError::Key {
            snapshot: *id,
            source,
        },
        RewrapError::Store { store, source, .. } => ShredError::Rewrap {
            snapshot: *id,
            store,
            source,
        },
        RewrapError::Catalog { source, .. } => ShredError::Catalog(source),
    })
}

/// Why the key object a store holds for a snapshot about to be shredded does not match what the
/// catalog says (`None` when it matches).
fn key_object_mismatch(epoch: &EpochId, k: &KeyObject) -> Option<String> {
    if let Some(h) = &k.legal_hold {
        return Some(format!("under legal hold ({h})"));
    }
    // Which keys its wraps name is checked after the destruction, copy by copy: a copy whose
    // key object still unwraps is kept.
    (&k.epoch != epoch).then(|| format!("under epoch {}", k.epoch))
}

/// Destroy an epoch and the objects of the snapshots it covers (`shred`), after re-wrapping the
/// keys of those that stay (`keep`). The caller holds the retention lock ([`lock`]) and has run
/// the clock guard.
///
/// Move the keys that stay; refuse while anything unlisted depends on the epoch; read the holds
/// again; check every store's key object (authentic, same epoch, no hold); list the copies;
/// refuse a wrap by a provider not configured here; then the destruction protocol
/// ([`crate::ops::lifecycle::destroy`]): destroy the epoch key in every provider, push the keyrings, check
/// each copy says "key destroyed" before deleting it, keep the record.
pub async fn execute(
    app: &Coffre,
    plan: &EpochPlan,
    actor: &str,
    reason: &str,
) -> Result<DestructionRecord, ShredError> {
    move_kept_keys(app, plan, actor).await?;
    refuse_if_others_depend(app, plan)?;
    let run = Shredding::new(app, plan, actor, reason);
    run.d
        .log(format!("started: {} snapshot(s)", plan.shred.len()))?;
    let (keys, moved) = run.reread_holds()?;
    run.check_store_key_objects(&keys).await?;
    let copies = run.copies_of(&keys)?;
    run.refuse_unconfigured_wraps(&keys)?;
    let erased = run.d.run(&copies).await?;
    let _ = app.catalog.clear_alert(&run.refused_alert);
    let shred: Vec<SnapshotId> = keys.iter().map(|k| k.snapshot).collect();
    // A snapshot with a copy kept stays in the catalog: the next run checks it again.
    for id in shred.iter().filter(|id| !erased.kept.contains(id)) {
        app.catalog.remove(id)?;
    }
    // Holds were read again from the catalog and every store just before the destruction.
    let mut record = erased.record(&run.d, shred);
    record.rewrapped = plan.keep.clone();
    let left_alone = if moved.is_empty() {
        String::new()
    } else {
        format!(", {} left alone (key moved since the plan)", moved.len())
    };
    let done = format!(
        "{} snapshot(s), {} copies{left_alone}",
        record.snapshots.len(),
        record.copies.len()
    );
    run.d.finish(&record, &done).await?;
    Ok(record)
}

/// Re-wrap the keys of the snapshots that stay (a hold stays as it is; only the key moves, to
/// the hold's live generation).
async fn move_kept_keys(app: &Coffre, plan: &EpochPlan, actor: &str) -> Result<(), ShredError> {
    for k in &plan.keep {
        let to = if retention::is_hold_epoch(&k.to_epoch) {
            retention::live_hold_epoch(&app.providers, &k.snapshot)
        } else {
            k.to_epoch.clone()
        };
        rewrap(
            app,
            &k.snapshot,
            &to,
            None,
            actor,
            &format!("retention: {}", k.reason),
        )
        .await?;
    }
    Ok(())
}

/// Anything still under this epoch that the plan did not list stays: refuse to destroy.
fn refuse_if_others_depend(app: &Coffre, plan: &EpochPlan) -> Result<(), ShredError> {
    let stragglers = app
        .catalog
        .all_keys()?
        .into_iter()
        .filter(|k| k.epoch == plan.epoch && !plan.shred.contains(&k.snapshot))
        .count();
    if stragglers > 0 {
        return Err(ShredError::NotDestroyed {
            epoch: plan.epoch.clone(),
            reason: format!("{stragglers} snapshot(s) still depend on it"),
        });
    }
    Ok(())
}

/// One epoch's destruction under way: the checks before it ([`Destruction`] carries it out and
/// writes its access-log entries) and the refusal alert.
struct Shredding<'a> {
    app: &'a Coffre,
    plan: &'a EpochPlan,
    d: Destruction<'a>,
    refused_alert: String,
}

impl<'a> Shredding<'a> {
    fn new(app: &'a Coffre, plan: &'a EpochPlan, actor: &'a str, reason: &'a str) -> Self {
        Shredding {
            app,
            plan,
            d: Destruction {
                app,
                epoch: &plan.epoch,
                actor,
                reason,
                action: "shred",
                alert_kept: true,
            },
            refused_alert: format!("shred-refused:{}", plan.epoch),
        }
    }

    fn log(&self, outcome: String) -> Result<(), crate::audit::AuditError> {
        self.d.log(outcome)
    }

    /// Log a refusal, raise its alert, and hand the error back.
    fn refuse(&self, e: ShredError) -> ShredError {
        let _ = self.log(format!("refused: {e}"));
        tracing::error!(epoch = %self.plan.epoch, error = %e, "epoch not destroyed");
        if let Err(ce) = self
            .app
            .catalog
            .set_alert(&self.refused_alert, &e.to_string())
        {
            tracing::error!(error = %ce, "cannot record the alert");
        }
        e
    }

    fn disagree(&self, snapshot: SnapshotId, detail: String) -> ShredError {
        self.refuse(ShredError::Disagree {
            epoch: self.plan.epoch.clone(),
            snapshot,
            detail,
        })
    }

    /// The holds, read again right before the destruction: a snapshot whose key moved away
    /// since the plan (a hold added meanwhile) is left alone; one still under this epoch but
    /// marked held stops everything. Returns the key objects to shred and the ids left alone.
    fn reread_holds(&self) -> Result<(Vec<KeyObject>, Vec<SnapshotId>), ShredError> {
        let (mut keys, mut moved) = (Vec::new(), Vec::new());
        for id in &self.plan.shred {
            match self.app.catalog.get_key(id)? {
                Some(k) if k.epoch == self.plan.epoch && k.legal_hold.is_none() => keys.push(k),
                Some(k) if k.epoch == self.plan.epoch => {
                    return Err(self.refuse(ShredError::Held {
                        snapshot: *id,
                        hold: k.legal_hold.unwrap_or_default(),
                    }))
                }
                Some(k) => {
                    tracing::info!(snapshot = %id, epoch = %k.epoch, "snapshot left alone: its key moved since the plan (hold added)");
                    moved.push(*id);
                }
                None => {}
            }
        }
        Ok((keys, moved))
    }

    /// Every store's key object of each snapshot must be authentic and say what the catalog
    /// says: a store whose key object names a hold or another epoch means the catalog was
    /// misled (say, rebuilt from a store where someone edited it). Which keys the wraps name is
    /// checked per copy after the destruction.
    async fn check_store_key_objects(&self, keys: &[KeyObject]) -> Result<(), ShredError> {
        let epoch = &self.plan.epoch;
        let auth = crate::auth::ObjectAuth::for_reading(&self.app.providers);
        for k in keys {
            if let Some(why) = key_object_mismatch(epoch, k) {
                return Err(self.disagree(k.snapshot, format!("the catalog's key object is {why}")));
            }
            let manifest = self.app.catalog.get(&k.snapshot)?.map(|e| e.manifest);
            for s in &self.app.stores {
                let sk = match s.get_key_object(&k.source, &k.snapshot).await {
                    Ok(sk) => sk,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => {
                        return Err(self.refuse(ShredError::NotDestroyed {
                            epoch: epoch.clone(),
                            reason: format!(
                                "the key object of snapshot {} in store `{}` cannot be read to check its hold ({e})",
                                k.snapshot, s.name
                            ),
                        }))
                    }
                };
                // Never destroy on the word of a key object that is not authenticated
                // (crate::auth): forged, or unsealed and never checked by an operator.
                let check = match &manifest {
                    Some(m) => auth.check(&sk, m),
                    None => crate::auth::Check::Unverifiable {
                        reason: "the catalog has no manifest for it".into(),
                    },
                };
                if !check.is_authentic() {
                    return Err(self.disagree(
                        k.snapshot,
                        format!("the key object in store `{}` is {check}", s.name),
                    ));
                }
                if let Some(why) = key_object_mismatch(epoch, &sk) {
                    return Err(self.disagree(
                        k.snapshot,
                        format!(
                            "the catalog says epoch {epoch} with no hold, but the key object in store `{}` is {why}",
                            s.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every copy of the snapshots to shred, remembered before anything is destroyed.
    fn copies_of(&self, keys: &[KeyObject]) -> Result<Vec<SealedCopy<'a>>, ShredError> {
        let mut copies = Vec::new();
        for k in keys {
            let Some(m) = self.app.catalog.get(&k.snapshot)?.map(|e| e.manifest) else {
                continue;
            };
            let (source, id) = (&m.source, &m.snapshot);
            for s in self.app.committed_stores(id) {
                copies.push(SealedCopy {
                    store: s,
                    id: *id,
                    label: format!("snapshot {id}"),
                    path: s.snapshot_dir(source, id).to_string(),
                    sealed_sha256: m.sealed_sha256.clone(),
                    objects: vec![
                        s.manifest_path(source, id),
                        s.data_path(source, id),
                        s.key_path(source, id),
                    ],
                    manifest: Some(m.clone()),
                });
            }
        }
        Ok(copies)
    }

    /// A wrap by a provider that is not configured here would survive the destruction.
    fn refuse_unconfigured_wraps(&self, keys: &[KeyObject]) -> Result<(), ShredError> {
        let configured: Vec<&str> = self.app.providers.iter().map(|p| p.name()).collect();
        for k in keys {
            if let Some(w) = k
                .wraps
                .iter()
                .find(|w| !configured.contains(&w.provider.as_str()))
            {
                let why = format!(
                    "snapshot {} is also wrapped by provider `{}`, which is not configured here: destroying the epoch would leave that key; configure the provider again so it is destroyed too, then retry",
                    k.snapshot, w.provider
                );
                let _ = self.log(format!("refused: {why}"));
                return Err(ShredError::NotDestroyed {
                    epoch: self.plan.epoch.clone(),
                    reason: why,
                });
            }
        }
        Ok(())
    }
}

/// The error that reports an incomplete erasure, if `record` is one.
fn incomplete(record: &DestructionRecord) -> Option<ShredError> {
    (!record.complete).then(|| ShredError::Incomplete {
        epoch: record.epoch.clone(),
        record: record.record.clone(),
        reasons: record.incomplete_reasons().join("; "),
    })
}

/// Items for planning at `now`, from the catalog's key objects and manifests.
pub(crate) fn items(
    app: &Coffre,
    now: time::OffsetDateTime,
) -> Result<Vec<retention::Item>, ShredError> {
    let bases = crate::ops::lifecycle::wal_retention::window_bases(app, now);
    let mut out = Vec::new();
    for k in app.catalog.all_keys()? {
        let Some(e) = app.catalog.get(&k.snapshot)? else {
            continue;
        };
        let created = time::OffsetDateTime::parse(
            &e.manifest.created,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        out.push(retention::Item {
            id: k.snapshot,
            source: k.source.clone(),
            created,
            epoch: k.epoch.clone(),
            hold: k.legal_hold.clone(),
            keep: bases
                .get(&k.source)
                .filter(|b| b.snapshot == k.snapshot)
                .map(|b| {
                    format!(
                        "start of the point-in-time recovery window (its WAL from {})",
                        b.wal_start
                    )
                }),
        });
    }
    Ok(out)
}

/// The retention plan at `now`.
pub fn current_plan(
    app: &Coffre,
    now: time::OffsetDateTime,
) -> Result<retention::Plan, ShredError> {
    let rules = app
        .config
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.retention.clone()))
        .collect();
    Ok(retention::plan(&items(app, now)?, &rules, now))
}

/// Carry out every due epoch at `now`: the clock guard first, then, under the retention lock,
/// the catch-up of earlier erasures (stale temporary keyrings, keyring pushes that failed), the
/// plan and its execution. An epoch destroyed with its erasure incomplete is both in the records
/// and in the errors.
pub async fn run_due(
    app: &Coffre,
    now: time::OffsetDateTime,
    actor: &str,
) -> (Vec<DestructionRecord>, Vec<ShredError>) {
    if let Err(e) = crate::ops::lifecycle::clock_guard::check(app, now) {
        return (vec![], vec![e.into()]);
    }
    let _lock = match lock(app).await {
        Ok(l) => l,
        Err(e) => return (vec![], vec![e]),
    };
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    errors.extend(
        erasure::catch_up(app, actor)
            .await
            .into_iter()
            .map(ShredError::Erasure),
    );
    let plan = match current_plan(app, now) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return (done, errors);
        }
    };
    // Close the due epochs to new snapshots and wait for those being protected under them,
    // then plan again: what was committed meanwhile is in the catalog and in the plan.
    let mut closed = Vec::new();
    for ep in &plan.due {
        closed.push(app.inflight.close(&ep.epoch).await);
    }
    let plan = if closed.is_empty() {
        plan
    } else {
        match current_plan(app, now) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                return (done, errors);
            }
        }
    };
    clear_resolved_alerts(app, &plan);
    // The WAL archive: keys of WAL files the window still needs move first, so that no epoch
    // destroyed below takes them along; an epoch whose move failed stays.
    let wal = crate::ops::lifecycle::wal_retention::plan(app, now);
    let (blocked, wal_errors) =
        crate::ops::lifecycle::wal_retention::move_kept(app, &wal, now, actor).await;
    errors.extend(wal_errors);
    for ep in &plan.due {
        if !closed.iter().any(|c| c.epoch() == &ep.epoch) {
            // Became due while we waited: the next run takes it.
            continue;
        }
        if blocked.contains(&ep.epoch) {
            continue;
        }
        match execute(app, ep, actor, "retention: planned expiry reached").await {
            Ok(r) => {
                errors.extend(incomplete(&r));
                done.push(r);
            }
            Err(e) => {
                tracing::error!(epoch = %ep.epoch, error = %e, "epoch not shredded");
                errors.push(e);
            }
        }
    }
    let (wal_done, wal_errors) =
        crate::ops::lifecycle::wal_retention::shred_due(app, &wal, &blocked, actor).await;
    done.extend(wal_done);
    errors.extend(wal_errors);
    (done, errors)
}

/// Clear the alerts of refused destructions and kept copies that the plan no longer has: the
/// cause was repaired (say, key objects put back and the catalog rebuilt), so nothing is due
/// there any more.
fn clear_resolved_alerts(app: &Coffre, plan: &retention::Plan) {
    let Ok(alerts) = app.catalog.alerts() else {
        return;
    };
    let due = |epoch: &str| plan.due.iter().any(|e| e.epoch.as_str() == epoch);
    let shredded = |id: &str| {
        plan.due
            .iter()
            .any(|e| e.shred.iter().any(|s| s.to_string() == id))
    };
    for (key, _, _) in alerts {
        let resolved = match (
            key.strip_prefix("shred-refused:"),
            key.strip_prefix("shred-kept:"),
        ) {
            (Some(epoch), _) => !due(epoch),
            (_, Some(rest)) => !shredded(rest.split(':').next().unwrap_or_default()),
            _ => false,
        };
        if resolved {
            tracing::info!(alert = %key, "alert cleared: nothing is due there any more");
            let _ = app.catalog.clear_alert(&key);
        }
    }
}

/// Shred one snapshot now (an erasure order): its epoch-mates move to a fresh epoch key, then
/// the old epoch key is destroyed and its objects deleted.
pub async fn shred_one(
    app: &Coffre,
    id: &SnapshotId,
    actor: &str,
    purpose: &str,
) -> Result<DestructionRecord, ShredError> {
    crate::ops::lifecycle::clock_guard::check(app, time::OffsetDateTime::now_utc())?;
    let _lock = lock(app).await?;
    for e in erasure::catch_up(app, actor).await {
        tracing::error!(error = %e, "earlier erasure still incomplete");
    }
    let key = app
        .catalog
        .get_key(id)?
        .ok_or(ShredError::UnknownSnapshot(*id))?;
    if let Some(h) = &key.legal_hold {
        return Err(ShredError::Held {
            snapshot: *id,
            hold: h.clone(),
        });
    }
    // Snapshots being protected under this epoch right now are epoch-mates too: wait until
    // their key objects are in the catalog (new ones wait for the shred, then plan again).
    let _closed = app.inflight.close(&key.epoch).await;
    let mates: Vec<KeyObject> = app
        .catalog
        .all_keys()?
        .into_iter()
        .filter(|k| k.epoch == key.epoch && k.snapshot != *id)
        .collect();
    let fresh = match retention::epoch_day(&key.epoch) {
        Some(day) => {
            let next = retention::epoch_generation(&key.epoch) + 1;
            retention::epoch_with_generation(
                day,
                next.max(retention::epoch_generation(&retention::live_epoch(
                    &app.providers,
                    day,
                ))),
            )
        }
        None => retention::live_epoch(&app.providers, time::OffsetDateTime::now_utc().date()),
    };
    let keep: Vec<Keep> = mates
        .iter()
        .map(|m| Keep {
            snapshot: m.snapshot,
            source: m.source.clone(),
            reason: format!("epoch-mate of early-shredded snapshot {id}"),
            to_epoch: fresh.clone(),
        })
        .collect();
    let plan = EpochPlan {
        epoch: key.epoch.clone(),
        shred: vec![*id],
        keep,
    };
    let record = execute(app, &plan, actor, &format!("early shred: {purpose}")).await?;
    match incomplete(&record) {
        Some(e) => Err(e),
        None => Ok(record),
    }
}

/// Put a snapshot under legal hold: its key moves to its own hold epoch. A snapshot held
/// already is refused (a second hold never silently replaces the first).
pub async fn hold_add(
    app: &Coffre,
    id: &SnapshotId,
    actor: &str,
    purpose: &str,
) -> Result<KeyObject, ShredError> {
    let _lock = lock(app).await?;
    let key = app
        .catalog
        .get_key(id)?
        .ok_or(ShredError::UnknownSnapshot(*id))?;
    if let Some(hold) = key.legal_hold {
        return Err(ShredError::AlreadyHeld {
            snapshot: *id,
            hold,
        });
    }
    rewrap(
        app,
        id,
        &retention::live_hold_epoch(&app.providers, id),
        Some(Some(purpose.to_string())),
        actor,
        &format!("hold add: {purpose}"),
    )
    .await
}

/// Release a hold: the key moves back to the epoch of its planned expiry (or today's, if that
/// day is past) and the hold key is destroyed. A snapshot not held is an error (nothing is
/// re-wrapped or logged).
pub(crate) async fn hold_release(
    app: &Coffre,
    id: &SnapshotId,
    actor: &str,
    purpose: &str,
) -> Result<KeyObject, ShredError> {
    let _lock = lock(app).await?;
    let key = app
        .catalog
        .get_key(id)?
        .ok_or(ShredError::UnknownSnapshot(*id))?;
    if key.legal_hold.is_none() {
        return Err(ShredError::NotHeld(*id));
    }
    let now = time::OffsetDateTime::now_utc();
    let expiry = time::OffsetDateTime::parse(
        &key.planned_expiry,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or(now);
    let day = if expiry > now {
        expiry.date()
    } else {
        now.date()
    };
    let to = retention::live_epoch(&app.providers, day);
    let new = rewrap(
        app,
        id,
        &to,
        Some(None),
        actor,
        &format!("hold release: {purpose}"),
    )
    .await?;
    // The hold's key protects nothing any more: destroyed (a later hold takes the next
    // generation).
    if retention::is_hold_epoch(&key.epoch) && key.epoch != new.epoch {
        crate::ops::lifecycle::destroy::destroy_spent_key(app, &key.epoch);
        for s in app.committed_stores(id) {
            if let Err(e) = app.push_keyrings(s).await {
                tracing::warn!(store = %s.name, error = %e, "keyring without the released hold's key not pushed; the next push carries it");
            }
        }
    }
    Ok(new)
}
