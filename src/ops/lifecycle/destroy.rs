//! The one destruction protocol (crypto-shredding) and the one key re-wrap, for every kind of
//! sealed object coffre keeps: snapshots (retention and early shred, [`crate::ops::lifecycle::shred`]), WAL
//! files ([`crate::ops::lifecycle::wal_retention`]) and the access log's sealed segments
//! ([`crate::ops::lifecycle::audit_expire`]).
//!
//! Owns:
//! - **the destruction** ([`Destruction`]): destroy the epoch key in every provider (this is the
//!   only file that calls `KeyProvider::destroy`; the first provider that fails stops it and
//!   nothing is deleted) -> replace every store's keyring copy -> each copy's own key object,
//!   read again, must say "key destroyed" -> delete the copy, manifest first and key object
//!   last, stopping at the first delete that fails (the key object stays, so a later attempt
//!   checks the copy again and finishes it) -> the destruction record, kept in the catalog and
//!   in every store, and the outcome in the access log. A copy whose check says anything else
//!   is kept, logged, named in the record (the erasure is then incomplete) and, for snapshots,
//!   raises a lasting alert;
//! - **the re-wrap** ([`Rewrap`]): the access-log entry first, and no key moves if it cannot be
//!   written; then unwrap, wrap under the new epoch by every provider, seal, write the key object
//!   in every store that holds the object (after that store's keyring copy), the catalog last;
//! - the destruction records ([`DestructionRecord`]) and the keyring pushes after a destruction.
//!
//! May call: keys (providers), store, catalog, audit, auth, app. It never calls its callers: they
//! decide what is due, check holds and key objects before anything is destroyed, list the copies
//! and say how their access-log entries read (action, started and done texts).

use std::collections::BTreeSet;

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::app::Coffre;
use crate::audit::{AuditError, NewEntry, Target};
use crate::catalog::CatalogError;
use crate::format::objects::MAX_SMALL_OBJECT;
use crate::ids::{EpochId, SnapshotId};
use crate::keys::KeyError;
use crate::store::{KeyObject, Manifest, Store, StoreError};

/// Why a destruction stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestroyError {
    #[error("provider `{provider}` did not destroy the key of epoch {epoch} ({source}); nothing was deleted. It is retried at the next run")]
    Provider {
        epoch: EpochId,
        provider: String,
        #[source]
        source: KeyError,
    },
    #[error("epoch {epoch}: the access log cannot be written ({source}); nothing more was done. Check the access log's folder (`coffre audit verify`), then run again")]
    Audit {
        epoch: EpochId,
        #[source]
        source: AuditError,
    },
    #[error("epoch {epoch}: the destruction record cannot be kept in the catalog ({source}). Check the state folder")]
    Record {
        epoch: EpochId,
        #[source]
        source: CatalogError,
    },
}

/// Why a re-wrap stopped. Until it succeeds, the old epoch key is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewrapError {
    #[error("the key of {object} was not moved: the access log cannot be written ({source}), and every unwrap is logged before it happens. Check the access log's folder (`coffre audit verify`); retried at the next run")]
    Audit {
        object: String,
        #[source]
        source: AuditError,
    },
    #[error("{object}: {source}")]
    Key {
        object: String,
        #[source]
        source: KeyError,
    },
    #[error("re-wrap of {object} failed in store `{store}`: {source}. The old epoch key is kept until every store is updated")]
    Store {
        object: String,
        store: String,
        #[source]
        source: StoreError,
    },
    #[error("{object}: the key moved in every store but the catalog was not updated ({source}); `coffre catalog rebuild` reads it back")]
    Catalog {
        object: String,
        #[source]
        source: CatalogError,
    },
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

/// One store's keyring copy after a destruction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyringPush {
    pub store: String,
    /// The store's keyring copy is the keyring without the destroyed key.
    pub pushed: bool,
    pub detail: String,
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
    pub rewrapped: Vec<crate::retention::Keep>,
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

/// Keep a destruction record: in the catalog (an error if that fails) and under
/// `<prefix>/destruction/` in every store (best effort: a warning).
pub(crate) async fn keep_record(
    app: &Coffre,
    record: &DestructionRecord,
) -> Result<(), CatalogError> {
    let json = serde_json::to_string_pretty(record).unwrap_or_default();
    app.catalog.put_destruction(&record.record, &json)?;
    for s in &app.stores {
        if let Err(e) = s.put_destruction_record(&record.record, &json).await {
            tracing::warn!(store = %s.name, error = %e, "destruction record not replicated to store");
        }
    }
    Ok(())
}

/// The alerts of keyring pushes that failed after a destruction: `keyring-push:<store>`.
pub(crate) const KEYRING_ALERT_PREFIX: &str = "keyring-push:";

pub(crate) fn keyring_alert(store: &str) -> String {
    format!("{KEYRING_ALERT_PREFIX}{store}")
}

/// Push the keyring to every store after `epoch` was destroyed; record each store's outcome and
/// raise (or clear) its lasting alert (retried by `crate::ops::lifecycle::erasure::catch_up`).
pub(crate) async fn push_after_destruction(app: &Coffre, epoch: &EpochId) -> Vec<KeyringPush> {
    let replicates = app
        .providers
        .iter()
        .any(|p| !matches!(p.replicated_state(), Ok(None)));
    let mut out = Vec::new();
    for s in &app.stores {
        if !replicates {
            out.push(KeyringPush {
                store: s.name.clone(),
                pushed: true,
                detail: "no replicated keyring: the key provider keeps its keys itself".into(),
            });
            continue;
        }
        out.push(match app.push_keyrings(s).await {
            Ok(()) => {
                let _ = app.catalog.clear_alert(&keyring_alert(&s.name));
                KeyringPush {
                    store: s.name.clone(),
                    pushed: true,
                    detail: format!("keyring copy replaced: it no longer holds {epoch}"),
                }
            }
            Err(e) => {
                let text = format!(
                    "store `{}` may still hold a keyring copy with the destroyed epoch key {epoch}: the push after the destruction failed ({e}). The erasure is not complete there; coffre retries at every retention run until it succeeds",
                    s.name
                );
                tracing::error!(store = %s.name, epoch = %epoch, error = %e, "keyring copy not replaced after a destruction: erasure incomplete in this store");
                if let Err(ce) = app.catalog.set_alert(&keyring_alert(&s.name), &text) {
                    tracing::error!(error = %ce, "cannot record the alert");
                }
                KeyringPush {
                    store: s.name.clone(),
                    pushed: false,
                    detail: format!("push failed, retried at the next run: {e}"),
                }
            }
        });
    }
    out
}

/// Destroy a key that protects nothing any more (a released hold's), best effort: a provider
/// that fails is a warning (the key opens nothing).
pub(crate) fn destroy_spent_key(app: &Coffre, epoch: &EpochId) {
    for p in &app.providers {
        if let Err(e) = p.destroy(epoch) {
            tracing::warn!(provider = p.name(), epoch = %epoch, error = %e, "spent key not destroyed; it protects nothing any more");
        }
    }
}

/// One copy of an object to erase, listed by the caller before anything is destroyed.
#[derive(Debug, Clone)]
pub(crate) struct SealedCopy<'a> {
    pub store: &'a Store,
    /// The object's id (snapshot, WAL file, segment; nil when it could not be read).
    pub id: SnapshotId,
    /// What the entries call it: "snapshot <id>", "WAL file <name>", "segment <path>".
    pub label: String,
    /// Where it is, for the record.
    pub path: String,
    pub sealed_sha256: String,
    /// Its objects in deletion order: manifest first, key object last.
    pub objects: Vec<ObjPath>,
    /// The manifest its key object must authenticate with (`None`: not sealed, as the access
    /// log's segments).
    pub manifest: Option<Manifest>,
}

/// What the destruction did, for the caller's record.
#[derive(Debug)]
pub(crate) struct Erased {
    pub providers: Vec<ProviderResult>,
    pub keyrings: Vec<KeyringPush>,
    pub copies: Vec<CopyResult>,
    /// Objects with a copy kept: the caller keeps their index entries (checked again later).
    pub kept: BTreeSet<SnapshotId>,
}

impl Erased {
    /// The destruction record of these results.
    pub(crate) fn record(self, d: &Destruction<'_>, ids: Vec<SnapshotId>) -> DestructionRecord {
        DestructionRecord::new(
            d.actor,
            d.reason,
            d.epoch,
            ids,
            self.providers,
            self.copies,
            self.keyrings,
        )
    }
}

/// One epoch's destruction: who does it, why, and how its access-log entries read.
pub(crate) struct Destruction<'a> {
    pub app: &'a Coffre,
    pub epoch: &'a EpochId,
    pub actor: &'a str,
    /// The entries' purpose and the record's reason.
    pub reason: &'a str,
    /// The entries' action: `shred`, `audit-expire`.
    pub action: &'static str,
    /// A kept copy raises a lasting `shred-kept:<id>:<store>` alert (snapshots: retention clears
    /// it once nothing is due there).
    pub alert_kept: bool,
}

impl Destruction<'_> {
    /// An access-log entry about this epoch.
    pub(crate) fn log(&self, outcome: String) -> Result<(), AuditError> {
        self.app
            .audit
            .append(NewEntry {
                actor: self.actor.into(),
                action: self.action.into(),
                target: Target {
                    epoch: Some(self.epoch.to_string()),
                    ..Default::default()
                },
                purpose: self.reason.into(),
                outcome,
                exposes: None,
            })
            .map(|_| ())
    }

    /// [`Self::log`], as this module's error.
    pub(crate) fn log_or_stop(&self, outcome: String) -> Result<(), DestroyError> {
        self.log(outcome).map_err(|source| DestroyError::Audit {
            epoch: self.epoch.clone(),
            source,
        })
    }

    /// Destroy the epoch key in every provider, replace the keyring copies, then check and
    /// delete every copy. The caller has logged the start and done its own checks.
    pub(crate) async fn run(&self, copies: &[SealedCopy<'_>]) -> Result<Erased, DestroyError> {
        let providers = self.destroy_key()?;
        let keyrings = push_after_destruction(self.app, self.epoch).await;
        let mut results = Vec::with_capacity(copies.len());
        let mut kept = BTreeSet::new();
        for c in copies {
            let r = self.erase(c).await;
            if r.kept {
                kept.insert(c.id);
            }
            results.push(r);
        }
        Ok(Erased {
            providers,
            keyrings,
            copies: results,
            kept,
        })
    }

    /// Keep the record and log the outcome (`done`: what was destroyed, in words).
    pub(crate) async fn finish(
        &self,
        record: &DestructionRecord,
        done: &str,
    ) -> Result<(), DestroyError> {
        keep_record(self.app, record)
            .await
            .map_err(|source| DestroyError::Record {
                epoch: self.epoch.clone(),
                source,
            })?;
        if record.complete {
            self.log_or_stop(format!("ok: epoch destroyed, {done}"))?;
            tracing::info!(epoch = %self.epoch, action = self.action, objects = record.snapshots.len(), "epoch crypto-shredded");
        } else {
            self.log_or_stop(format!(
                "failed: epoch destroyed but the erasure is not complete: {}",
                record.incomplete_reasons().join("; ")
            ))?;
            tracing::error!(epoch = %self.epoch, record = %record.record, "epoch destroyed, erasure incomplete");
        }
        Ok(())
    }

    /// Destroy the epoch key in every provider (idempotent); the first that fails stops it.
    fn destroy_key(&self) -> Result<Vec<ProviderResult>, DestroyError> {
        let mut providers = Vec::new();
        for p in &self.app.providers {
            if let Err(source) = p.destroy(self.epoch) {
                let _ = self.log(format!("failed: provider {}: {source}", p.name()));
                return Err(DestroyError::Provider {
                    epoch: self.epoch.clone(),
                    provider: p.name().into(),
                    source,
                });
            }
            providers.push(ProviderResult {
                provider: p.name().into(),
                destroyed: true,
                detail: "destroyed".into(),
            });
        }
        Ok(providers)
    }

    /// Check one copy, then delete it or keep it.
    async fn erase(&self, c: &SealedCopy<'_>) -> CopyResult {
        let (decrypt_check, destroyed) = check_copy(self.app, c).await;
        let deletion = if destroyed {
            if self.alert_kept {
                let _ = self.app.catalog.clear_alert(&kept_alert(c));
            }
            delete_copy(c).await
        } else {
            self.keep_copy(c, &decrypt_check);
            format!(
                "kept: its check after the destruction did not say \"key destroyed\" ({decrypt_check})"
            )
        };
        CopyResult {
            snapshot: c.id,
            store: c.store.name.clone(),
            path: c.path.clone(),
            sealed_sha256: c.sealed_sha256.clone(),
            deletion,
            decrypt_check,
            kept: !destroyed,
        }
    }

    /// A copy kept after the destruction: access-log entry, error, and (snapshots) an alert.
    fn keep_copy(&self, c: &SealedCopy<'_>, decrypt_check: &str) {
        tracing::error!(object = %c.label, store = %c.store.name, epoch = %self.epoch, check = %decrypt_check, "copy kept after the destruction of its epoch");
        if self.alert_kept {
            let text = format!(
                "the copy of {} in store `{}` was kept after the destruction of epoch {}: {decrypt_check}. Its key object names a key that was not destroyed, or could not be checked: find out why (`coffre shred --records`), then run `coffre retention run` again",
                c.label, c.store.name, self.epoch
            );
            if let Err(ce) = self.app.catalog.set_alert(&kept_alert(c), &text) {
                tracing::error!(error = %ce, "cannot record the alert");
            }
        }
        let _ = self.log(format!(
            "failed: {} in store `{}` kept: {decrypt_check}",
            c.label, c.store.name
        ));
    }
}

fn kept_alert(c: &SealedCopy<'_>) -> String {
    format!("shred-kept:{}:{}", c.id, c.store.name)
}

/// What a copy's own key object says now: ("key destroyed", true) lets it go; anything else
/// (it still opens, it cannot be read, it is not authentic, it belongs to another object)
/// keeps it.
async fn check_copy(app: &Coffre, c: &SealedCopy<'_>) -> (String, bool) {
    let Some((key_path, others)) = c.objects.split_last() else {
        return ("no key object to check".into(), false);
    };
    let k = match c.store.get_small(key_path, MAX_SMALL_OBJECT).await {
        Ok(bytes) => match KeyObject::parse(&bytes) {
            Ok(k) => k,
            Err(reason) => return (format!("key object unavailable: {reason}"), false),
        },
        Err(e) if e.is_not_found() => {
            // A run that stopped after deleting the rest (the key object goes last).
            for path in others {
                // Unreachable counts as there: the erasure is not proven.
                if c.store.exists(path).await.unwrap_or(true) {
                    return (
                        "key object missing while the copy's data or manifest is still there"
                            .into(),
                        false,
                    );
                }
            }
            return ("key destroyed".into(), true);
        }
        Err(e) => return (format!("key object unavailable: {e}"), false),
    };
    if c.id != SnapshotId::nil() && k.snapshot != c.id {
        return (
            format!("key object unavailable: it belongs to {}", k.snapshot),
            false,
        );
    }
    if let Some(m) = &c.manifest {
        let check = crate::auth::ObjectAuth::for_reading(&app.providers).check(&k, m);
        if !check.is_authentic() {
            return (format!("key object is {check}"), false);
        }
    }
    match crate::keys::unwrap_dek(&app.providers, &k) {
        Ok(_) => ("STILL DECRYPTABLE".into(), false),
        Err(e) if e.is_destroyed() => ("key destroyed".into(), true),
        Err(e) => (format!("not decryptable: {e}"), false),
    }
}

/// Delete a copy whose key is destroyed, in order (manifest first, key object last), stopping
/// at the first delete that fails: the copy is unreadable anyway, and its key object stays so
/// that the next attempt can check it again and finish.
async fn delete_copy(c: &SealedCopy<'_>) -> String {
    for path in &c.objects {
        if let Err(e) = c.store.delete(path).await {
            return format!("not deleted ({path}), unreadable anyway: {e}");
        }
    }
    "deleted".into()
}

/// Which catalog entry records a re-wrapped key's epoch.
pub(crate) enum Indexed<'a> {
    /// The snapshot's key object (`keys` table).
    Snapshot,
    /// A WAL file's epoch in the WAL index.
    Wal { source: &'a str, name: &'a str },
}

/// One re-wrap: a key object moved to another epoch (and its hold set or cleared) in every
/// store that holds it. The access-log entry comes first: if it cannot be written, no key moves.
pub(crate) struct Rewrap<'a> {
    pub app: &'a Coffre,
    pub actor: &'a str,
    /// `key-rewrap`, `hold-add`, `hold-release`.
    pub action: &'static str,
    pub purpose: &'a str,
    /// Named in the entries before the epoch ("WAL file <name> "; empty for a snapshot).
    pub subject: String,
    pub old: KeyObject,
    /// The manifest the new key object is sealed with (`None`: left unsealed).
    pub manifest: Option<Manifest>,
    /// Every copy of the key object: its store and path.
    pub copies: Vec<(&'a Store, ObjPath)>,
    pub index: Indexed<'a>,
}

impl Rewrap<'_> {
    fn object(&self) -> String {
        match &self.index {
            Indexed::Snapshot => format!("snapshot {}", self.old.snapshot),
            Indexed::Wal { source, name } => format!("WAL file {name} of `{source}`"),
        }
    }

    fn log(&self, outcome: String) -> Result<(), RewrapError> {
        self.app
            .audit
            .append(NewEntry {
                actor: self.actor.into(),
                action: self.action.into(),
                target: Target::key_object(&self.old),
                purpose: self.purpose.into(),
                outcome,
                exposes: None,
            })
            .map(|_| ())
            .map_err(|source| RewrapError::Audit {
                object: self.object(),
                source,
            })
    }

    /// Move the key to `to` (`hold`: `Some(Some(reason))` sets a hold, `Some(None)` clears it,
    /// `None` keeps it as it is). Returns the new key object.
    pub(crate) async fn run(
        self,
        to: &EpochId,
        hold: Option<Option<String>>,
    ) -> Result<KeyObject, RewrapError> {
        self.log(format!("started: {}to epoch {to}", self.subject))?;
        let new = match self.rewrapped(to, hold) {
            Ok(k) => k,
            Err(e) => {
                let _ = self.log(format!("failed: {e}"));
                return Err(e);
            }
        };
        for (s, path) in &self.copies {
            let r = async {
                self.app.push_keyrings(s).await?;
                s.put_key_object_at(path, &new).await
            }
            .await;
            if let Err(source) = r {
                let _ = self.log(format!("failed: store {}: {source}", s.name));
                return Err(RewrapError::Store {
                    object: self.object(),
                    store: s.name.clone(),
                    source,
                });
            }
        }
        let indexed = match &self.index {
            Indexed::Snapshot => self.app.catalog.put_key(&new),
            Indexed::Wal { source, name } => self.app.catalog.set_wal_epoch(source, name, to),
        };
        indexed.map_err(|source| RewrapError::Catalog {
            object: self.object(),
            source,
        })?;
        self.log(format!("ok: now under epoch {to}"))?;
        Ok(new)
    }

    /// The new key object: the DEK unwrapped, wrapped under `to` by every provider, sealed.
    fn rewrapped(
        &self,
        to: &EpochId,
        hold: Option<Option<String>>,
    ) -> Result<KeyObject, RewrapError> {
        let key_err = |source| RewrapError::Key {
            object: self.object(),
            source,
        };
        let providers = &self.app.providers;
        let dek = crate::keys::unwrap_dek(providers, &self.old).map_err(key_err)?;
        let wraps =
            crate::keys::wrap_for_all(providers, to, &dek, &self.old.snapshot).map_err(key_err)?;
        drop(dek);
        let mut new = KeyObject {
            epoch: to.clone(),
            wraps,
            legal_hold: hold.unwrap_or_else(|| self.old.legal_hold.clone()),
            ..self.old.clone()
        };
        new.auth.clear();
        if let Some(m) = &self.manifest {
            crate::auth::ObjectAuth::for_writing(providers)
                .map_err(key_err)?
                .seal(&mut new, m);
        }
        Ok(new)
    }
}

/// The error of a retention run, an early shred or a hold, as the destruction's callers report
/// it (snapshots and WAL alike).
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
    Clock(#[from] crate::ops::lifecycle::clock_guard::ClockError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

impl From<DestroyError> for ShredError {
    fn from(e: DestroyError) -> Self {
        match e {
            DestroyError::Provider {
                epoch,
                provider,
                source,
            } => ShredError::NotDestroyed {
                epoch,
                reason: format!("provider `{provider}`: {source}"),
            },
            DestroyError::Audit { source, .. } => ShredError::Audit(source),
            DestroyError::Record { source, .. } => ShredError::Catalog(source),
        }
    }
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

#[cfg(test)]
mod tests {
    //! Both protocols on object_store's in-memory store, behind a decorator that forwards every
    //! method and can make chosen deletes and writes fail.

    use super::*;
    use std::ops::Range;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures::stream::BoxStream;
    use futures::StreamExt;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    };

    use crate::config::Config;
    use crate::format::objects::KEY_OBJECT_FORMAT;
    use crate::keys::DataKey;

    /// Which calls of one store fail: deleting, or writing, an object whose path ends with the
    /// suffix set (as a store that refuses them).
    #[derive(Debug, Default)]
    struct Faults {
        delete: Mutex<Option<&'static str>>,
        put: Mutex<Option<&'static str>>,
    }

    impl Faults {
        fn fail_deletes_of(&self, suffix: &'static str) {
            *self.delete.lock().unwrap() = Some(suffix);
        }

        fn fail_puts_of(&self, suffix: &'static str) {
            *self.put.lock().unwrap() = Some(suffix);
        }

        fn heal(&self) {
            *self.delete.lock().unwrap() = None;
            *self.put.lock().unwrap() = None;
        }

        /// The injected error when `slot` names a suffix of `path`.
        fn check(slot: &Mutex<Option<&'static str>>, path: &ObjPath) -> object_store::Result<()> {
            match *slot.lock().unwrap() {
                Some(suffix) if path.as_ref().ends_with(suffix) => {
                    Err(object_store::Error::Generic {
                        store: "faulty",
                        source: format!("injected fault: {path} refused").into(),
                    })
                }
                _ => Ok(()),
            }
        }
    }

    /// Forwards every method, failing the calls its [`Faults`] choose.
    #[derive(Debug)]
    struct Faulty {
        inner: Arc<dyn ObjectStore>,
        faults: Arc<Faults>,
    }

    impl std::fmt::Display for Faulty {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Faulty({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    #[deny(clippy::missing_trait_methods)]
    impl ObjectStore for Faulty {
        async fn put_opts(
            &self,
            location: &ObjPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            Faults::check(&self.faults.put, location)?;
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &ObjPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            Faults::check(&self.faults.put, location)?;
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &ObjPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        async fn get_ranges(
            &self,
            location: &ObjPath,
            ranges: &[Range<u64>],
        ) -> object_store::Result<Vec<Bytes>> {
            self.inner.get_ranges(location, ranges).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjPath>> {
            let (inner, faults) = (self.inner.clone(), self.faults.clone());
            locations
                .then(move |loc| {
                    let (inner, faults) = (inner.clone(), faults.clone());
                    async move {
                        let p = loc?;
                        Faults::check(&faults.delete, &p)?;
                        inner.delete(&p).await.map(|()| p)
                    }
                })
                .boxed()
        }

        fn list(
            &self,
            prefix: Option<&ObjPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        fn list_with_offset(
            &self,
            prefix: Option<&ObjPath>,
            offset: &ObjPath,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list_with_offset(prefix, offset)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjPath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &ObjPath,
            to: &ObjPath,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }

        async fn rename_opts(
            &self,
            from: &ObjPath,
            to: &ObjPath,
            options: RenameOptions,
        ) -> object_store::Result<()> {
            self.inner.rename_opts(from, to, options).await
        }
    }

    /// Stores `a` and `b` (local, replaced by in-memory ones) and a file key provider per name.
    fn config(dir: &Path, providers: &[&str]) -> Config {
        let store = |name: &str| {
            format!(
                "[[store]]\nname = \"{name}\"\nkind = \"local\"\nsite = \"{name}\"\njurisdiction = \"CA-QC\"\npath = \"{d}/{name}\"\n",
                d = dir.display()
            )
        };
        let provider = |name: &str| {
            format!(
                "[[key-provider]]\nname = \"{name}\"\nkind = \"file\"\nmaster-key = \"{d}/keys/{name}.key\"\ncreate-master-key = true\n",
                d = dir.display()
            )
        };
        let text = format!(
            "state-dir = \"{d}/state\"\n[replication]\nmin-sites = 1\n{a}{b}{p}",
            d = dir.display(),
            a = store("a"),
            b = store("b"),
            p = providers.iter().map(|n| provider(n)).collect::<String>(),
        );
        Config::from_toml(&text, Path::new("t")).unwrap()
    }

    /// An app whose stores `a` and `b` are in-memory, each behind its own faults, with one file
    /// key provider `local`.
    async fn app(dir: &Path) -> (Coffre, Vec<Arc<Faults>>) {
        app_with(dir, &["local"]).await
    }

    /// [`app`] with these file key providers.
    async fn app_with(dir: &Path, providers: &[&str]) -> (Coffre, Vec<Arc<Faults>>) {
        let mut app = Coffre::open(config(dir, providers)).await.unwrap();
        let mut faults = Vec::new();
        app.wrap_object_stores(|_| {
            let f = Arc::new(Faults::default());
            faults.push(f.clone());
            Arc::new(Faulty {
                inner: Arc::new(InMemory::new()),
                faults: f,
            })
        });
        (app, faults)
    }

    fn epoch(s: &str) -> EpochId {
        EpochId::try_from(s.to_string()).unwrap()
    }

    /// A fresh data key for snapshot `id`, wrapped under `e`.
    fn key_object(app: &Coffre, id: SnapshotId, e: &EpochId) -> KeyObject {
        let dek = DataKey::generate();
        KeyObject {
            format: KEY_OBJECT_FORMAT,
            snapshot: id,
            source: "db".into(),
            epoch: e.clone(),
            planned_expiry: "2030-01-31T00:00:00Z".into(),
            wraps: crate::keys::wrap_for_all(&app.providers, e, &dek, &id).unwrap(),
            legal_hold: None,
            auth: Vec::new(),
        }
    }

    /// Put a snapshot's three objects in store `s`; its copy as the protocol sees it.
    async fn put_copy<'a>(s: &'a Store, k: &KeyObject) -> SealedCopy<'a> {
        let id = k.snapshot;
        let objects = vec![
            s.manifest_path("db", &id),
            s.data_path("db", &id),
            s.key_path("db", &id),
        ];
        s.put(&objects[0], PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        s.put(&objects[1], PutPayload::from_static(b"sealed bytes"))
            .await
            .unwrap();
        s.put_key_object_at(&objects[2], k).await.unwrap();
        SealedCopy {
            store: s,
            id,
            label: format!("snapshot {id}"),
            path: s.snapshot_dir("db", &id).to_string(),
            sealed_sha256: "00".repeat(32),
            objects,
            manifest: None,
        }
    }

    async fn present(c: &SealedCopy<'_>) -> Vec<bool> {
        let mut out = Vec::new();
        for p in &c.objects {
            out.push(c.store.exists(p).await.unwrap());
        }
        out
    }

    fn outcomes(app: &Coffre) -> Vec<String> {
        app.audit
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}", e.action, e.outcome))
            .collect()
    }

    fn destruction<'a>(app: &'a Coffre, e: &'a EpochId) -> Destruction<'a> {
        Destruction {
            app,
            epoch: e,
            actor: "test",
            reason: "test: expiry",
            action: "shred",
            alert_kept: true,
        }
    }

    /// The key goes first, then each copy manifest first; a delete that fails stops that copy
    /// with its key object in place (recorded, the erasure complete: it no longer opens), and
    /// the next run checks it again and finishes it.
    #[tokio::test]
    async fn a_copy_whose_delete_fails_is_recorded_and_finished_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let (app, switches) = app(dir.path()).await;
        let e = epoch("2030-01-01.1");
        let k = key_object(&app, SnapshotId::new(), &e);
        let copies = vec![
            put_copy(&app.stores[0], &k).await,
            put_copy(&app.stores[1], &k).await,
        ];
        switches[1].fail_deletes_of("manifest.json");
        let d = destruction(&app, &e);
        let erased = d.run(&copies).await.unwrap();
        assert!(erased.providers.iter().all(|p| p.destroyed));
        assert!(erased.kept.is_empty(), "{erased:?}");
        let (a, b) = (&erased.copies[0], &erased.copies[1]);
        assert_eq!(
            (a.decrypt_check.as_str(), a.deletion.as_str()),
            ("key destroyed", "deleted")
        );
        assert_eq!(present(&copies[0]).await, [false, false, false]);
        assert_eq!(b.decrypt_check, "key destroyed");
        assert!(!b.kept);
        assert!(
            b.deletion.starts_with("not deleted (") && b.deletion.contains("manifest.json"),
            "{}",
            b.deletion
        );
        // Manifest first: nothing after it went, the key object stays to be checked again.
        assert_eq!(present(&copies[1]).await, [true, true, true]);
        let record = erased.record(&d, vec![k.snapshot]);
        assert!(record.complete, "{record:?}");
        d.finish(&record, "1 snapshot(s), 2 copies").await.unwrap();
        let records = app.catalog.destructions().unwrap();
        assert!(records.iter().any(|r| r.contains(&record.record)));
        assert!(outcomes(&app)
            .contains(&"shred ok: epoch destroyed, 1 snapshot(s), 2 copies".to_string()));

        // The next run: the key is destroyed already, the copy left behind goes.
        switches[1].heal();
        let again = d.run(&copies).await.unwrap();
        for c in &again.copies {
            assert_eq!(
                (c.decrypt_check.as_str(), c.deletion.as_str()),
                ("key destroyed", "deleted"),
                "{c:?}"
            );
        }
        assert_eq!(present(&copies[1]).await, [false, false, false]);
    }

    /// A copy whose key object names a key that was not destroyed still opens: it is kept,
    /// logged, alerted and named in the record, which is incomplete.
    #[tokio::test]
    async fn a_copy_that_still_opens_is_kept_logged_and_alerted() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path()).await;
        let (due, other) = (epoch("2030-01-02.1"), epoch("2030-01-03.1"));
        let k = key_object(&app, SnapshotId::new(), &other);
        let copies = vec![put_copy(&app.stores[0], &k).await];
        let d = destruction(&app, &due);
        let erased = d.run(&copies).await.unwrap();
        let c = &erased.copies[0];
        assert_eq!(c.decrypt_check, "STILL DECRYPTABLE");
        assert!(c.kept && c.deletion.starts_with("kept: "), "{c:?}");
        assert!(erased.kept.contains(&k.snapshot));
        assert_eq!(present(&copies[0]).await, [true, true, true]);
        let alert = format!("shred-kept:{}:a", k.snapshot);
        assert!(app
            .catalog
            .alerts()
            .unwrap()
            .iter()
            .any(|(key, _, _)| *key == alert));
        let line = format!(
            "shred failed: snapshot {} in store `a` kept: STILL DECRYPTABLE",
            k.snapshot
        );
        assert!(outcomes(&app).contains(&line), "{:?}", outcomes(&app));
        let record = erased.record(&d, vec![k.snapshot]);
        assert!(!record.complete);
        assert!(record.incomplete_reasons()[0].contains("STILL DECRYPTABLE"));
        d.finish(&record, "unused").await.unwrap();
        assert!(outcomes(&app).last().is_some_and(
            |o| o.starts_with("shred failed: epoch destroyed but the erasure is not complete")
        ));
    }

    fn wal_rewrap<'a>(app: &'a Coffre, old: &KeyObject) -> Rewrap<'a> {
        Rewrap {
            app,
            actor: "test",
            action: "key-rewrap",
            purpose: "retention: a WAL file still needed",
            subject: "WAL file 000000010000000000000001 ".into(),
            old: old.clone(),
            manifest: None,
            copies: app
                .stores
                .iter()
                .map(|s| (s, s.key_path("db", &old.snapshot)))
                .collect(),
            index: Indexed::Wal {
                source: "db",
                name: "000000010000000000000001",
            },
        }
    }

    async fn stored_key(s: &Store, id: &SnapshotId) -> KeyObject {
        s.get_key_object("db", id).await.unwrap()
    }

    /// The entry first, then the key moves in every store; the old epoch's key no longer
    /// matters to it.
    #[tokio::test]
    async fn a_rewrap_logs_first_then_moves_the_key_in_every_store() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path()).await;
        let (from, to) = (epoch("2030-01-04.1"), epoch("2030-01-05.1"));
        let k = key_in_every_store(&app, &from).await;
        let new = wal_rewrap(&app, &k).run(&to, None).await.unwrap();
        assert_eq!(new.epoch, to);
        for s in &app.stores {
            let stored = stored_key(s, &k.snapshot).await;
            assert_eq!(stored.epoch, to, "store {}", s.name);
            crate::keys::unwrap_dek(&app.providers, &stored).unwrap();
        }
        assert_eq!(
            outcomes(&app),
            [
                format!("key-rewrap started: WAL file 000000010000000000000001 to epoch {to}"),
                format!("key-rewrap ok: now under epoch {to}"),
            ]
        );
    }

    /// The rule WAL retention now follows too: no entry, no move.
    #[tokio::test]
    async fn a_wal_rewrap_with_an_unwritable_access_log_moves_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, _) = app(dir.path()).await;
        let (from, to) = (epoch("2030-01-06.1"), epoch("2030-01-07.1"));
        let k = key_in_every_store(&app, &from).await;
        break_access_log(&mut app, dir.path());
        let err = wal_rewrap(&app, &k).run(&to, None).await.unwrap_err();
        assert!(matches!(err, RewrapError::Audit { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("WAL file 000000010000000000000001 of `db` was not moved")
                && text.contains("access log cannot be written"),
            "{text}"
        );
        for s in &app.stores {
            assert_eq!(stored_key(s, &k.snapshot).await, k, "store {}", s.name);
        }
    }

    // ---- The destruction, step by step, and the re-wrap's refusals. ----

    /// What an unwrap of `k` through provider `p` alone says.
    fn unwrap_through(app: &Coffre, p: usize, k: &KeyObject) -> Result<(), KeyError> {
        crate::keys::unwrap_dek(&app.providers[p..=p], k).map(|_| ())
    }

    /// Store `s` holds destruction record `record`.
    async fn record_in_store(s: &Store, record: &str) -> bool {
        let path = s
            .prefix
            .clone()
            .join("destruction")
            .join(format!("{record}.json"));
        s.exists(&path).await.unwrap()
    }

    /// Every provider destroys the key, each copy's own check then says "key destroyed", every
    /// copy goes, and the record is kept in the catalog and in every store.
    #[tokio::test]
    async fn the_key_goes_in_every_provider_then_every_copy_then_the_record_is_kept_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app_with(dir.path(), &["local", "spare"]).await;
        let e = epoch("2030-01-08.1");
        let k = key_object(&app, SnapshotId::new(), &e);
        assert_eq!(k.wraps.len(), 2, "{k:?}");
        let mut copies = Vec::new();
        for s in &app.stores {
            copies.push(put_copy(s, &k).await);
        }
        let d = destruction(&app, &e);
        let erased = d.run(&copies).await.unwrap();
        let names: Vec<_> = erased
            .providers
            .iter()
            .map(|p| (p.provider.as_str(), p.destroyed))
            .collect();
        assert_eq!(names, [("local", true), ("spare", true)]);
        for p in 0..2 {
            let err = unwrap_through(&app, p, &k).unwrap_err();
            assert!(err.is_destroyed(), "provider {p}: {err}");
        }
        for (c, copy) in erased.copies.iter().zip(&copies) {
            assert_eq!(
                (c.decrypt_check.as_str(), c.deletion.as_str(), c.kept),
                ("key destroyed", "deleted", false),
                "{c:?}"
            );
            assert_eq!(present(copy).await, [false, false, false]);
        }
        let record = erased.record(&d, vec![k.snapshot]);
        assert!(record.complete && record.legal_hold_checked, "{record:?}");
        d.finish(&record, "1 snapshot(s), 2 copies").await.unwrap();
        assert!(app
            .catalog
            .destructions()
            .unwrap()
            .iter()
            .any(|r| r.contains(&record.record)));
        for s in &app.stores {
            assert!(record_in_store(s, &record.record).await, "store {}", s.name);
        }
        assert_eq!(
            outcomes(&app),
            ["shred ok: epoch destroyed, 1 snapshot(s), 2 copies"]
        );
    }

    /// A provider that cannot destroy the key stops everything: no later provider is asked, no
    /// copy is checked or deleted, the failure is logged and no record is kept.
    #[tokio::test]
    async fn a_provider_that_fails_stops_the_destruction_before_any_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app_with(dir.path(), &["local", "spare"]).await;
        let e = epoch("2030-01-09.1");
        let k = key_object(&app, SnapshotId::new(), &e);
        let copies = vec![put_copy(&app.stores[0], &k).await];
        // The first provider's keyring can no longer be read or written.
        let keyring = dir.path().join("state/keys/local.keyring");
        assert!(keyring.is_file(), "{}", keyring.display());
        std::fs::remove_file(&keyring).unwrap();
        std::fs::create_dir(&keyring).unwrap();
        let d = destruction(&app, &e);
        let err = d.run(&copies).await.unwrap_err();
        assert!(
            matches!(&err, DestroyError::Provider { provider, .. } if provider == "local"),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was deleted"), "{err}");
        assert_eq!(present(&copies[0]).await, [true, true, true]);
        // The next provider was not asked: the copy still opens through it.
        unwrap_through(&app, 1, &k).unwrap();
        let log = outcomes(&app);
        assert!(
            log.len() == 1 && log[0].starts_with("shred failed: provider local: "),
            "{log:?}"
        );
        assert!(app.catalog.destructions().unwrap().is_empty());
    }

    /// Deletion goes manifest, data, key object and stops at the first delete that fails: what
    /// comes after it stays, and the next run checks the key object again and finishes.
    #[tokio::test]
    async fn deletion_stops_at_the_first_failed_delete_and_the_next_run_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (app, faults) = app(dir.path()).await;
        let e = epoch("2030-01-10.1");
        let k = key_object(&app, SnapshotId::new(), &e);
        let copies = vec![put_copy(&app.stores[0], &k).await];
        faults[0].fail_deletes_of("/data");
        let d = destruction(&app, &e);
        let erased = d.run(&copies).await.unwrap();
        let c = &erased.copies[0];
        assert_eq!(c.decrypt_check, "key destroyed");
        assert!(!c.kept);
        assert!(
            c.deletion.starts_with("not deleted (") && c.deletion.contains("/data)"),
            "{}",
            c.deletion
        );
        assert_eq!(present(&copies[0]).await, [false, true, true]);
        faults[0].heal();
        let again = d.run(&copies).await.unwrap();
        assert_eq!(
            (
                again.copies[0].decrypt_check.as_str(),
                again.copies[0].deletion.as_str()
            ),
            ("key destroyed", "deleted")
        );
        assert_eq!(present(&copies[0]).await, [false, false, false]);
    }

    /// A snapshot under epoch `e`, its objects in every store; its key object.
    async fn key_in_every_store(app: &Coffre, e: &EpochId) -> KeyObject {
        let k = key_object(app, SnapshotId::new(), e);
        for s in &app.stores {
            put_copy(s, &k).await;
        }
        k
    }

    /// From now on the access log cannot be written (its folder is a file).
    fn break_access_log(app: &mut Coffre, dir: &Path) {
        let blocker = dir.join("not-a-folder");
        std::fs::write(&blocker, b"").unwrap();
        app.audit = crate::audit::AccessLog::open(&blocker.join("audit.log"), "test-host");
    }

    fn snapshot_rewrap<'a>(app: &'a Coffre, old: &KeyObject) -> Rewrap<'a> {
        Rewrap {
            subject: String::new(),
            action: "hold-add",
            purpose: "legal hold: case 7",
            index: Indexed::Snapshot,
            ..wal_rewrap(app, old)
        }
    }

    /// A store that refuses the new key object stops the re-wrap there: the entry came first,
    /// the failure is logged, that store keeps the old key object and the catalog is not
    /// updated (the old epoch key is kept, so the object still opens).
    #[tokio::test]
    async fn a_rewrap_that_a_store_refuses_stops_there_and_leaves_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let (app, faults) = app(dir.path()).await;
        let (from, to) = (epoch("2030-01-11.1"), epoch("2030-01-12.1"));
        let k = key_in_every_store(&app, &from).await;
        faults[1].fail_puts_of("key.json");
        let hold = Some(Some("case 7".to_string()));
        let err = snapshot_rewrap(&app, &k).run(&to, hold).await.unwrap_err();
        assert!(
            matches!(&err, RewrapError::Store { store, .. } if store == "b"),
            "{err}"
        );
        assert_eq!(stored_key(&app.stores[1], &k.snapshot).await, k);
        assert!(app.catalog.get_key(&k.snapshot).unwrap().is_none());
        crate::keys::unwrap_dek(&app.providers, &k).unwrap();
        let log = outcomes(&app);
        assert_eq!(log[0], format!("hold-add started: to epoch {to}"));
        assert!(
            log.len() == 2 && log[1].starts_with("hold-add failed: store b: "),
            "{log:?}"
        );
    }

    /// The snapshot re-wrap follows the same rule: no entry, no move (nor any hold set).
    #[tokio::test]
    async fn a_snapshot_rewrap_with_an_unwritable_access_log_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, _) = app(dir.path()).await;
        let (from, to) = (epoch("2030-01-13.1"), epoch("2030-01-14.1"));
        let k = key_in_every_store(&app, &from).await;
        break_access_log(&mut app, dir.path());
        let hold = Some(Some("case 7".to_string()));
        let err = snapshot_rewrap(&app, &k).run(&to, hold).await.unwrap_err();
        assert!(matches!(err, RewrapError::Audit { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("snapshot {} was not moved", k.snapshot)),
            "{err}"
        );
        for s in &app.stores {
            assert_eq!(stored_key(s, &k.snapshot).await, k, "store {}", s.name);
        }
        assert!(app.catalog.get_key(&k.snapshot).unwrap().is_none());
    }

    /// A snapshot re-wrap that goes through: every store and the catalog hold the new key
    /// object, under the new epoch with the hold set.
    #[tokio::test]
    async fn a_snapshot_rewrap_moves_the_key_everywhere_and_records_it_in_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path()).await;
        let (from, to) = (epoch("2030-01-15.1"), epoch("2030-01-16.1"));
        let k = key_in_every_store(&app, &from).await;
        let hold = Some(Some("case 7".to_string()));
        let new = snapshot_rewrap(&app, &k).run(&to, hold).await.unwrap();
        assert_eq!(
            (&new.epoch, new.legal_hold.as_deref()),
            (&to, Some("case 7"))
        );
        for s in &app.stores {
            assert_eq!(stored_key(s, &k.snapshot).await, new, "store {}", s.name);
        }
        assert_eq!(app.catalog.get_key(&k.snapshot).unwrap(), Some(new));
        assert_eq!(
            outcomes(&app),
            [
                format!("hold-add started: to epoch {to}"),
                format!("hold-add ok: now under epoch {to}"),
            ]
        );
    }
}
