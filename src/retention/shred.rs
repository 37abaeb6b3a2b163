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
//!   deleting a deleted object are no-ops).

use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::ids::{EpochId, SnapshotId};
use crate::keys::KeyError;
use crate::retention::{self, EpochPlan, Keep};
use crate::store::{KeyObject, Store, StoreError, Wrap};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShredError {
    #[error("snapshot {0} is not in the catalog: run `coffre catalog rebuild` first")]
    UnknownSnapshot(SnapshotId),
    #[error("snapshot {snapshot} is under legal hold ({hold}): release the hold first (`coffre hold release`)")]
    Held { snapshot: SnapshotId, hold: String },
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
    /// `deleted`, `already gone`, or the error (the copy is unreadable either way).
    pub deletion: String,
    /// What an unwrap of this copy's key object gives after the destruction.
    pub decrypt_check: String,
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
}

/// Rewrite a key object in a store: conditional update where the store supports it.
pub(crate) async fn put_key_object(store: &Store, k: &KeyObject) -> Result<(), StoreError> {
    let path = store.key_path(&k.source, &k.snapshot);
    let body = k.to_json();
    let head = store.inner.head(&path).await;
    let mode = match head {
        Ok(meta) => PutMode::Update(UpdateVersion {
            e_tag: meta.e_tag,
            version: meta.version,
        }),
        Err(object_store::Error::NotFound { .. }) => PutMode::Create,
        Err(e) => return Err(store.op_err("head", &path, e)),
    };
    match store
        .inner
        .put_opts(&path, body.clone().into(), PutOptions::from(mode))
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => store
            .inner
            .put(&path, body.into())
            .await
            .map(|_| ())
            .map_err(|e| store.op_err("put", &path, e)),
        Err(e) => Err(store.op_err("put", &path, e)),
    }
}

/// Re-wrap a snapshot's DEK under `to` (and set or clear its hold), in every store that holds it.
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
    let target = Target {
        source: Some(old.source.clone()),
        snapshot: Some(id.to_string()),
        epoch: Some(old.epoch.to_string()),
        ..Default::default()
    };
    app.audit.append(NewEntry {
        actor: actor.into(),
        action: "key-rewrap".into(),
        target: target.clone(),
        purpose: purpose.into(),
        outcome: format!("started: to epoch {to}"),
        exposes: None,
    })?;
    let dek = crate::restore::unwrap_dek(app, &old).map_err(|source| ShredError::Key {
        snapshot: *id,
        source,
    })?;
    let mut wraps = Vec::new();
    for p in &app.providers {
        let key_err = |source| ShredError::Key {
            snapshot: *id,
            source,
        };
        p.ensure_epoch(to).map_err(key_err)?;
        let w = p.wrap(to, &dek, id).map_err(key_err)?;
        wraps.push(Wrap {
            provider: p.name().to_string(),
            kind: p.kind().to_string(),
            algorithm: p.algorithm().to_string(),
            epoch: to.clone(),
            wrapped: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, w),
        });
    }
    drop(dek);
    let new = KeyObject {
        epoch: to.clone(),
        wraps,
        legal_hold: hold.unwrap_or_else(|| old.legal_hold.clone()),
        ..old.clone()
    };
    for s in app.committed_stores(id) {
        let r = async {
            app.push_keyrings(s).await?;
            put_key_object(s, &new).await
        }
        .await;
        if let Err(source) = r {
            let _ = app.audit.append(NewEntry {
                actor: actor.into(),
                action: "key-rewrap".into(),
                target: target.clone(),
                purpose: purpose.into(),
                outcome: format!("failed: store {}: {source}", s.name),
                exposes: None,
            });
            return Err(ShredError::Rewrap {
                snapshot: *id,
                store: s.name.clone(),
                source,
            });
        }
    }
    app.catalog.put_key(&new)?;
    app.audit.append(NewEntry {
        actor: actor.into(),
        action: "key-rewrap".into(),
        target,
        purpose: purpose.into(),
        outcome: format!("ok: now under epoch {to}"),
        exposes: None,
    })?;
    Ok(new)
}

/// Destroy an epoch and the objects of the snapshots it covers (`shred`), after re-wrapping the
/// keys of those that stay (`keep`).
pub async fn execute(
    app: &Coffre,
    plan: &EpochPlan,
    actor: &str,
    reason: &str,
) -> Result<DestructionRecord, ShredError> {
    for k in &plan.keep {
        // A hold stays as it is; only the key moves.
        rewrap(
            app,
            &k.snapshot,
            &k.to_epoch,
            None,
            actor,
            &format!("retention: {}", k.reason),
        )
        .await?;
    }
    // Anything still under this epoch that the plan did not list stays: refuse to destroy.
    let stragglers: Vec<SnapshotId> = app
        .catalog
        .all_keys()?
        .into_iter()
        .filter(|k| k.epoch == plan.epoch && !plan.shred.contains(&k.snapshot))
        .map(|k| k.snapshot)
        .collect();
    if !stragglers.is_empty() {
        return Err(ShredError::NotDestroyed {
            epoch: plan.epoch.clone(),
            reason: format!("{} snapshot(s) still depend on it", stragglers.len()),
        });
    }
    let target = Target {
        epoch: Some(plan.epoch.to_string()),
        ..Default::default()
    };
    app.audit.append(NewEntry {
        actor: actor.into(),
        action: "shred".into(),
        target: target.clone(),
        purpose: reason.into(),
        outcome: format!("started: {} snapshot(s)", plan.shred.len()),
        exposes: None,
    })?;
    // Remember every copy before anything is destroyed.
    let mut copies = Vec::new();
    let mut keys = Vec::new();
    for id in &plan.shred {
        let manifest = app.catalog.get(id)?.map(|e| e.manifest);
        let key = app.catalog.get_key(id)?;
        if let (Some(m), Some(k)) = (manifest, key) {
            for s in app.committed_stores(id) {
                copies.push((s, m.clone()));
            }
            keys.push(k);
        }
    }
    // A wrap by a provider that is not configured here would survive the destruction.
    let configured: Vec<&str> = app.providers.iter().map(|p| p.name()).collect();
    for k in &keys {
        if let Some(w) = k
            .wraps
            .iter()
            .find(|w| !configured.contains(&w.provider.as_str()))
        {
            let why = format!(
                "snapshot {} is also wrapped by provider `{}`, which is not configured here: destroying the epoch would leave that key; configure the provider again so it is destroyed too, then retry",
                k.snapshot, w.provider
            );
            let _ = app.audit.append(NewEntry {
                actor: actor.into(),
                action: "shred".into(),
                target: target.clone(),
                purpose: reason.into(),
                outcome: format!("refused: {why}"),
                exposes: None,
            });
            return Err(ShredError::NotDestroyed {
                epoch: plan.epoch.clone(),
                reason: why,
            });
        }
    }
    // 1. Destroy the epoch key in every provider.
    let mut providers = Vec::new();
    for p in &app.providers {
        match p.destroy(&plan.epoch) {
            Ok(()) => providers.push(ProviderResult {
                provider: p.name().into(),
                destroyed: true,
                detail: "destroyed".into(),
            }),
            Err(e) => {
                let _ = app.audit.append(NewEntry {
                    actor: actor.into(),
                    action: "shred".into(),
                    target: target.clone(),
                    purpose: reason.into(),
                    outcome: format!("failed: provider {}: {e}", p.name()),
                    exposes: None,
                });
                return Err(ShredError::NotDestroyed {
                    epoch: plan.epoch.clone(),
                    reason: format!("provider `{}`: {e}", p.name()),
                });
            }
        }
    }
    // The stores' keyring copies must lose the key too (file provider).
    for s in &app.stores {
        if let Err(e) = app.push_keyrings(s).await {
            tracing::warn!(store = %s.name, error = %e, "keyring copy not updated after destruction; retried at next write");
        }
    }
    // 2. Check that each copy is now unreadable, then delete it (manifest first).
    let mut results = Vec::new();
    for (s, m) in copies {
        let decrypt_check = match s.get_key_object(&m.source, &m.snapshot).await {
            Ok(k) => match crate::restore::unwrap_dek(app, &k) {
                Ok(_) => "STILL DECRYPTABLE".to_string(),
                Err(e) if e.is_destroyed() => "key destroyed".to_string(),
                Err(e) => format!("not decryptable: {e}"),
            },
            Err(e) => format!("key object unavailable: {e}"),
        };
        let mut deletion = "deleted".to_string();
        for path in [
            s.manifest_path(&m.source, &m.snapshot),
            s.data_path(&m.source, &m.snapshot),
            s.key_path(&m.source, &m.snapshot),
        ] {
            match s.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => deletion = format!("not deleted ({}), unreadable anyway: {e}", path),
            }
        }
        results.push(CopyResult {
            snapshot: m.snapshot,
            store: s.name.clone(),
            path: s.snapshot_dir(&m.source, &m.snapshot).to_string(),
            sealed_sha256: m.sealed_sha256.clone(),
            deletion,
            decrypt_check,
        });
    }
    for id in &plan.shred {
        app.catalog.remove(id)?;
    }
    let record = DestructionRecord {
        record: SnapshotId::new().to_string(),
        time: crate::audit::now_rfc3339(),
        actor: actor.into(),
        reason: reason.into(),
        epoch: plan.epoch.clone(),
        snapshots: plan.shred.clone(),
        legal_hold_checked: keys.iter().all(|k| k.legal_hold.is_none()),
        rewrapped: plan.keep.clone(),
        providers,
        copies: results,
    };
    keep_record(app, &record).await?;
    app.audit.append(NewEntry {
        actor: actor.into(),
        action: "shred".into(),
        target,
        purpose: reason.into(),
        outcome: format!(
            "ok: epoch destroyed, {} snapshot(s), {} copies",
            record.snapshots.len(),
            record.copies.len()
        ),
        exposes: None,
    })?;
    tracing::info!(epoch = %record.epoch, snapshots = record.snapshots.len(), "epoch crypto-shredded");
    Ok(record)
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
        let path = s
            .prefix
            .clone()
            .join("destruction")
            .join(format!("{}.json", record.record));
        if let Err(e) = s.inner.put(&path, json.clone().into_bytes().into()).await {
            tracing::warn!(store = %s.name, error = %e, "destruction record not replicated to store");
        }
    }
    Ok(())
}

/// Items for planning, from the catalog's key objects and manifests.
pub fn items(app: &Coffre) -> Result<Vec<retention::Item>, ShredError> {
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
    Ok(retention::plan(&items(app)?, &rules, now))
}

/// Carry out every due epoch at `now`.
pub async fn run_due(
    app: &Coffre,
    now: time::OffsetDateTime,
    actor: &str,
) -> (Vec<DestructionRecord>, Vec<ShredError>) {
    let plan = match current_plan(app, now) {
        Ok(p) => p,
        Err(e) => return (vec![], vec![e]),
    };
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    for ep in &plan.due {
        match execute(app, ep, actor, "retention: planned expiry reached").await {
            Ok(r) => done.push(r),
            Err(e) => {
                tracing::error!(epoch = %ep.epoch, error = %e, "epoch not shredded");
                errors.push(e);
            }
        }
    }
    (done, errors)
}

/// Shred one snapshot now (an erasure order): its epoch-mates move to a fresh epoch key, then
/// the old epoch key is destroyed and its objects deleted.
pub async fn shred_one(
    app: &Coffre,
    id: &SnapshotId,
    actor: &str,
    purpose: &str,
) -> Result<DestructionRecord, ShredError> {
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
    execute(app, &plan, actor, &format!("early shred: {purpose}")).await
}

/// Put a snapshot under legal hold: its key moves to its own hold epoch.
pub async fn hold_add(
    app: &Coffre,
    id: &SnapshotId,
    actor: &str,
    purpose: &str,
) -> Result<KeyObject, ShredError> {
    rewrap(
        app,
        id,
        &retention::hold_epoch(id),
        Some(Some(purpose.to_string())),
        actor,
        &format!("hold add: {purpose}"),
    )
    .await
}

/// Release a hold: the key moves back to the epoch of its planned expiry (or today's, if that
/// day is past) and the hold key is destroyed.
pub async fn hold_release(
    app: &Coffre,
    id: &SnapshotId,
    actor: &str,
    purpose: &str,
) -> Result<KeyObject, ShredError> {
    let key = app
        .catalog
        .get_key(id)?
        .ok_or(ShredError::UnknownSnapshot(*id))?;
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
    let hold = retention::hold_epoch(id);
    for p in &app.providers {
        if let Err(e) = p.destroy(&hold) {
            tracing::warn!(provider = p.name(), error = %e, "hold key not destroyed; it protects nothing any more");
        }
    }
    Ok(new)
}
