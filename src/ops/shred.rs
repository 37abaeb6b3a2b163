//! Carrying out retention: re-wrap the keys of snapshots that stay, destroy due epoch keys in
//! every provider (crypto-shredding every copy of the snapshots they covered), then delete the
//! objects and write a destruction record. Also holds and early shred of one snapshot.
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
//! - the clock guard ([`crate::ops::clock_guard`]) runs before anything is destroyed, whatever the entry
//!   point.

use serde::{Deserialize, Serialize};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::ids::{EpochId, SnapshotId};
use crate::keys::KeyError;
use crate::ops::clock_guard::ClockError;
use crate::ops::erasure::{self, KeyringPush};
use crate::retention::{self, EpochPlan, Keep};
use crate::store::{KeyObject, Manifest, Store, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShredError {
    #[error("there is no snapshot {0} in the catalog: check the id (`coffre snapshots` lists them; on a new host, `coffre catalog rebuild` first)")]
    UnknownSnapshot(SnapshotId),
    #[error("snapshot {snapshot} is under legal hold ({hold}): release the hold first (`coffre hold release`)")]
    Held { snapshot: SnapshotId, hold: String },
    #[error("snapshot {snapshot} is under legal hold already ({hold}): a second hold would replace the first, so nothing was changed. Release it first (`coffre hold release`) if the new hold is to replace it")]
    AlreadyHeld { snapshot: SnapshotId, hold: String },
    #[error("snapshot {0} is not under legal hold: there is nothing to release, and nothing was changed (`coffre snapshots` shows `held` on held snapshots)")]
    NotHeld(SnapshotId),
    #[error("snapshot {snapshot}: {source}")]
    Key {
        snapshot: SnapshotId,
        #[source]
        source: KeyError,
    },
    #[error("epoch {epoch} was not destroyed: {reason}. It is retried at the next run; nothing was deleted")]
    NotDestroyed { epoch: EpochId, reason: String },
    #[error("re-wrap of snapshot {snapshot} failed in store `{store}`: {source}. The old epoch key is kept until every store is updated")]
    Rewrap {
        snapshot: SnapshotId,
        store: String,
        #[source]
        source: StoreError,
    },
    #[error("epoch {epoch} was not destroyed: the key object of snapshot {snapshot} is not the same everywhere ({detail}). A key object was changed outside coffre, or a store missed an update: nothing was destroyed or deleted. Check the key objects named, then run `coffre catalog rebuild`; retried at the next run")]
    Disagree {
        epoch: EpochId,
        snapshot: SnapshotId,
        detail: String,
    },
    #[error("epoch {epoch} was destroyed, but the erasure is not complete (destruction record {record}): {reasons}. An alert stays raised until it is; the next retention run retries")]
    Incomplete {
        epoch: EpochId,
        record: String,
        reasons: String,
    },
    #[error("cannot take the retention lock {path}: {source}. Check the state folder")]
    Lock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Erasure(String),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderResult {
    pub provider: String,
    pub destroyed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyResult {
    pub snapshot: SnapshotId,
    pub store: String,
    pub path: String,
    pub sealed_sha256: String,
    /// `deleted`, `already gone`, the error (the copy is unreadable either way), or `kept: ...`
    /// when its check did not say "key destroyed".
    pub deletion: String,
    /// What an unwrap of this copy's key object gives after the destruction.
    pub decrypt_check: String,
    /// The copy was left in place because its check did not say "key destroyed" (an alert is
    /// raised until it is resolved).
    #[serde(default)]
    pub kept: bool,
}

/// The record of one destruction (no personal data).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestructionRecord {
    pub record: String,
    pub time: String,
    pub actor: String,
    pub reason: String,
    pub epoch: EpochId,
    pub snapshots: Vec<SnapshotId>,
    pub legal_hold_checked: bool,
    pub rewrapped: Vec<Keep>,
    pub providers: Vec<ProviderResult>,
    pub copies: Vec<CopyResult>,
    /// Each store's keyring copy after the destruction (a provider that replicates its keyring).
    #[serde(default)]
    pub keyrings: Vec<KeyringPush>,
    /// Every copy deleted (or unreadable) and every keyring copy replaced. When false, `copies`
    /// and `keyrings` say what is left, and an alert stays raised until it is done.
    #[serde(default)]
    pub complete: bool,
}

/// The destruction record that names snapshot `id`, from the catalog (a new host has them after
/// `coffre catalog rebuild`).
pub(crate) fn record_of(app: &Coffre, id: &SnapshotId) -> Option<DestructionRecord> {
    app.catalog
        .destructions()
        .ok()?
        .iter()
        .filter_map(|r| serde_json::from_str::<DestructionRecord>(r).ok())
        .find(|r| r.snapshots.contains(id))
}

impl DestructionRecord {
    /// A new record (its id and time now) and whether the erasure is complete. A destruction
    /// always reads the legal holds again first (`legal_hold_checked`).
    pub fn new(
        actor: &str,
        reason: &str,
        epoch: &EpochId,
        snapshots: Vec<SnapshotId>,
        providers: Vec<ProviderResult>,
        copies: Vec<CopyResult>,
        keyrings: Vec<KeyringPush>,
    ) -> DestructionRecord {
        let mut record = DestructionRecord {
            record: SnapshotId::new().to_string(),
            time: crate::clock::now_rfc3339(),
            actor: actor.into(),
            reason: reason.into(),
            epoch: epoch.clone(),
            snapshots,
            legal_hold_checked: true,
            rewrapped: Vec::new(),
            providers,
            copies,
            keyrings,
            complete: false,
        };
        record.complete = record.is_complete();
        record
    }

    /// No copy kept and every keyring copy replaced.
    pub(crate) fn is_complete(&self) -> bool {
        !self.copies.iter().any(|c| c.kept) && self.keyrings.iter().all(|k| k.pushed)
    }

    /// What keeps the erasure from being complete, in words.
    pub(crate) fn incomplete_reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .copies
            .iter()
            .filter(|c| c.kept)
            .map(|c| {
                format!(
                    "copy of snapshot {} in store `{}` kept ({})",
                    c.snapshot, c.store, c.decrypt_check
                )
            })
            .collect();
        out.extend(self.keyrings.iter().filter(|k| !k.pushed).map(|k| {
            format!(
                "keyring copy in store `{}` not replaced ({})",
                k.store, k.detail
            )
        }));
        out
    }
}

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

/// Re-wrap a snapshot's DEK under `to` (and set or clear its hold), in every store that holds it.
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
    let log = |outcome: String| {
        app.audit.append(NewEntry {
            actor: actor.into(),
            action: action.into(),
            target: Target::key_object(&old),
            purpose: purpose.into(),
            outcome,
            exposes: None,
        })
    };
    log(format!("started: to epoch {to}"))?;
    let key_err = |source| ShredError::Key {
        snapshot: *id,
        source,
    };
    let dek = crate::ops::restore::unwrap_dek(app, &old).map_err(key_err)?;
    let wraps = crate::keys::wrap_for_all(&app.providers, to, &dek, id).map_err(key_err)?;
    drop(dek);
    let mut new = KeyObject {
        epoch: to.clone(),
        wraps,
        legal_hold: hold.unwrap_or_else(|| old.legal_hold.clone()),
        ..old.clone()
    };
    app.seal_key_object(&mut new).map_err(key_err)?;
    for s in app.committed_stores(id) {
        let r = async {
            app.push_keyrings(s).await?;
            s.put_key_object(&new).await
        }
        .await;
        if let Err(source) = r {
            let _ = log(format!("failed: store {}: {source}", s.name));
            return Err(ShredError::Rewrap {
                snapshot: *id,
                store: s.name.clone(),
                source,
            });
        }
    }
    app.catalog.put_key(&new)?;
    log(format!("ok: now under epoch {to}"))?;
    Ok(new)
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
/// refuse a wrap by a provider not configured here; destroy the epoch key in every provider;
/// push the keyrings; check each copy says "key destroyed" before deleting it; keep the record.
pub async fn execute(
    app: &Coffre,
    plan: &EpochPlan,
    actor: &str,
    reason: &str,
) -> Result<DestructionRecord, ShredError> {
    move_kept_keys(app, plan, actor).await?;
    refuse_if_others_depend(app, plan)?;
    let run = Shredding::new(app, plan, actor, reason);
    run.log(format!("started: {} snapshot(s)", plan.shred.len()))?;
    let (keys, moved) = run.reread_holds()?;
    run.check_store_key_objects(&keys).await?;
    let copies = run.copies_of(&keys)?;
    run.refuse_unconfigured_wraps(&keys)?;
    let providers = run.destroy_in_every_provider()?;
    let keyrings = erasure::push_after_destruction(app, &plan.epoch).await;
    let (results, kept) = run.delete_destroyed_copies(copies).await;
    let shred: Vec<SnapshotId> = keys.iter().map(|k| k.snapshot).collect();
    // A snapshot with a copy kept stays in the catalog: the next run checks it again.
    for id in shred.iter().filter(|id| !kept.contains(id)) {
        app.catalog.remove(id)?;
    }
    // Holds were read again from the catalog and every store just before the destruction.
    let mut record = DestructionRecord::new(
        actor,
        reason,
        &plan.epoch,
        shred,
        providers,
        results,
        keyrings,
    );
    record.rewrapped = plan.keep.clone();
    keep_record(app, &record).await?;
    run.log_outcome(&record, moved.len())?;
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

/// One epoch's destruction under way: its access-log entries and its alerts.
struct Shredding<'a> {
    app: &'a Coffre,
    plan: &'a EpochPlan,
    actor: &'a str,
    reason: &'a str,
    refused_alert: String,
}

impl<'a> Shredding<'a> {
    fn new(app: &'a Coffre, plan: &'a EpochPlan, actor: &'a str, reason: &'a str) -> Self {
        Shredding {
            app,
            plan,
            actor,
            reason,
            refused_alert: format!("shred-refused:{}", plan.epoch),
        }
    }

    fn log(&self, outcome: String) -> Result<crate::audit::Entry, crate::audit::AuditError> {
        self.app.audit.append(NewEntry {
            actor: self.actor.into(),
            action: "shred".into(),
            target: Target {
                epoch: Some(self.plan.epoch.to_string()),
                ..Default::default()
            },
            purpose: self.reason.into(),
            outcome,
            exposes: None,
        })
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
    fn copies_of(&self, keys: &[KeyObject]) -> Result<Vec<(&'a Store, Manifest)>, ShredError> {
        let mut copies = Vec::new();
        for k in keys {
            if let Some(m) = self.app.catalog.get(&k.snapshot)?.map(|e| e.manifest) {
                for s in self.app.committed_stores(&k.snapshot) {
                    copies.push((s, m.clone()));
                }
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

    /// Destroy the epoch key in every provider (idempotent), then clear the refusal alert.
    fn destroy_in_every_provider(&self) -> Result<Vec<ProviderResult>, ShredError> {
        let mut providers = Vec::new();
        for p in &self.app.providers {
            if let Err(e) = p.destroy(&self.plan.epoch) {
                let _ = self.log(format!("failed: provider {}: {e}", p.name()));
                return Err(ShredError::NotDestroyed {
                    epoch: self.plan.epoch.clone(),
                    reason: format!("provider `{}`: {e}", p.name()),
                });
            }
            providers.push(ProviderResult {
                provider: p.name().into(),
                destroyed: true,
                detail: "destroyed".into(),
            });
        }
        let _ = self.app.catalog.clear_alert(&self.refused_alert);
        Ok(providers)
    }

    /// Check that each copy is now unreadable, then delete it (manifest first). Only "key
    /// destroyed" lets a copy go; anything else keeps it, with an alert. Returns the copies'
    /// results and the snapshots with a copy kept.
    async fn delete_destroyed_copies(
        &self,
        copies: Vec<(&Store, Manifest)>,
    ) -> (Vec<CopyResult>, std::collections::BTreeSet<SnapshotId>) {
        let mut results = Vec::new();
        let mut kept = std::collections::BTreeSet::new();
        for (s, m) in copies {
            let (source, id) = (m.source.clone(), m.snapshot);
            let (decrypt_check, destroyed) = self.check_copy(s, &source, &id).await;
            let deletion = if destroyed {
                let _ = self
                    .app
                    .catalog
                    .clear_alert(&format!("shred-kept:{id}:{}", s.name));
                delete_copy(s, &source, &id).await
            } else {
                self.keep_copy(s, &id, &decrypt_check);
                kept.insert(id);
                format!(
                    "kept: its check after the destruction did not say \"key destroyed\" ({decrypt_check})"
                )
            };
            results.push(CopyResult {
                snapshot: id,
                store: s.name.clone(),
                path: s.snapshot_dir(&source, &id).to_string(),
                sealed_sha256: m.sealed_sha256.clone(),
                deletion,
                decrypt_check,
                kept: !destroyed,
            });
        }
        (results, kept)
    }

    /// What a copy's own key object says now: ("key destroyed", true) lets it go.
    async fn check_copy(&self, s: &Store, source: &str, id: &SnapshotId) -> (String, bool) {
        match s.get_key_object(source, id).await {
            Ok(k) => match crate::ops::restore::unwrap_dek(self.app, &k) {
                Ok(_) => ("STILL DECRYPTABLE".to_string(), false),
                Err(e) if e.is_destroyed() => ("key destroyed".to_string(), true),
                Err(e) => (format!("not decryptable: {e}"), false),
            },
            Err(e) if e.is_not_found() => {
                // A run that crashed after deleting the copy (the key object goes last).
                let mut any = false;
                for path in [s.manifest_path(source, id), s.data_path(source, id)] {
                    // Unreachable counts as there: the erasure is not proven.
                    any |= s.exists(&path).await.unwrap_or(true);
                }
                if any {
                    (
                        "key object missing while the copy's data or manifest is still there"
                            .to_string(),
                        false,
                    )
                } else {
                    ("key destroyed".to_string(), true)
                }
            }
            Err(e) => (format!("key object unavailable: {e}"), false),
        }
    }

    /// A copy kept after the destruction: alert and access-log entry.
    fn keep_copy(&self, s: &Store, id: &SnapshotId, decrypt_check: &str) {
        let text = format!(
            "the copy of snapshot {id} in store `{}` was kept after the destruction of epoch {}: {decrypt_check}. Its key object names a key that was not destroyed, or could not be checked: find out why (`coffre shred --records`), then run `coffre retention run` again",
            s.name, self.plan.epoch
        );
        tracing::error!(snapshot = %id, store = %s.name, epoch = %self.plan.epoch, check = %decrypt_check, "copy kept after the destruction of its epoch");
        if let Err(ce) = self
            .app
            .catalog
            .set_alert(&format!("shred-kept:{id}:{}", s.name), &text)
        {
            tracing::error!(error = %ce, "cannot record the alert");
        }
        let _ = self.log(format!(
            "failed: snapshot {id} in store `{}` kept: {decrypt_check}",
            s.name
        ));
    }

    fn log_outcome(&self, record: &DestructionRecord, moved: usize) -> Result<(), ShredError> {
        if record.complete {
            self.log(format!(
                "ok: epoch destroyed, {} snapshot(s), {} copies{}",
                record.snapshots.len(),
                record.copies.len(),
                if moved == 0 {
                    String::new()
                } else {
                    format!(", {moved} left alone (key moved since the plan)")
                }
            ))?;
            tracing::info!(epoch = %record.epoch, snapshots = record.snapshots.len(), "epoch crypto-shredded");
        } else {
            self.log(format!(
                "failed: epoch destroyed but the erasure is not complete: {}",
                record.incomplete_reasons().join("; ")
            ))?;
            tracing::error!(epoch = %record.epoch, record = %record.record, "epoch destroyed, erasure incomplete");
        }
        Ok(())
    }
}

/// Delete a copy whose key is destroyed: manifest first, key object last.
async fn delete_copy(s: &Store, source: &str, id: &SnapshotId) -> String {
    let mut deletion = "deleted".to_string();
    for path in [
        s.manifest_path(source, id),
        s.data_path(source, id),
        s.key_path(source, id),
    ] {
        if let Err(e) = s.delete(&path).await {
            deletion = format!("not deleted ({path}), unreadable anyway: {e}");
        }
    }
    deletion
}

/// The error that reports an incomplete erasure, if `record` is one.
fn incomplete(record: &DestructionRecord) -> Option<ShredError> {
    (!record.complete).then(|| ShredError::Incomplete {
        epoch: record.epoch.clone(),
        record: record.record.clone(),
        reasons: record.incomplete_reasons().join("; "),
    })
}

/// Keep a destruction record: in the catalog (an error if that fails) and under
/// `<prefix>/destruction/` in every store (best effort: a warning).
pub(crate) async fn keep_record(
    app: &Coffre,
    record: &DestructionRecord,
) -> Result<(), crate::catalog::CatalogError> {
    let json = serde_json::to_string_pretty(record).unwrap_or_default();
    app.catalog.put_destruction(&record.record, &json)?;
    for s in &app.stores {
        if let Err(e) = s.put_destruction_record(&record.record, &json).await {
            tracing::warn!(store = %s.name, error = %e, "destruction record not replicated to store");
        }
    }
    Ok(())
}

/// Items for planning at `now`, from the catalog's key objects and manifests.
pub(crate) fn items(
    app: &Coffre,
    now: time::OffsetDateTime,
) -> Result<Vec<retention::Item>, ShredError> {
    let bases = crate::ops::wal_retention::window_bases(app, now);
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
    if let Err(e) = crate::ops::clock_guard::check(app, now) {
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
    let wal = crate::ops::wal_retention::plan(app, now);
    let (blocked, wal_errors) = crate::ops::wal_retention::move_kept(app, &wal, now, actor).await;
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
        crate::ops::wal_retention::shred_due(app, &wal, &blocked, actor).await;
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
    crate::ops::clock_guard::check(app, time::OffsetDateTime::now_utc())?;
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
        for p in &app.providers {
            if let Err(e) = p.destroy(&key.epoch) {
                tracing::warn!(provider = p.name(), error = %e, "hold key not destroyed; it protects nothing any more");
            }
        }
        for s in app.committed_stores(id) {
            if let Err(e) = app.push_keyrings(s).await {
                tracing::warn!(store = %s.name, error = %e, "keyring without the released hold's key not pushed; the next push carries it");
            }
        }
    }
    Ok(new)
}
