//! Key rotation (`coffre keys rotate`):
//! - master-key rotation of a `file` provider: the keyring (every epoch key, destroyed epochs'
//!   tombstones) is re-sealed under a new master key, on this host and in every store; no epoch
//!   key and no DEK changes, no data is re-encrypted;
//! - migration to another provider: every snapshot's DEK is also wrapped by a provider added to
//!   the config, under the same epoch, so that the old provider can later be removed.
//!
//! Invariants:
//! - the local keyring is replaced atomically and is at every moment sealed under exactly one of
//!   the two master keys: a rotation interrupted after it (stores not updated yet) is finished by
//!   running it again with the *old* config, which finds the keyring already under the new key;
//! - the re-sealed keyring carries a generation above every copy in the stores, so the copies
//!   under the old master key are the older generations that the push deletes;
//! - adding wraps unwraps each DEK: the access-log entry is written first; the key object is
//!   rewritten in every store that holds the snapshot (after the store's keyring copy carries
//!   the new provider's epoch keys) before the catalog; a re-run skips snapshots already done.
//!
//! Honest limits: rotating the master key does not rotate the epoch keys. Anyone who holds the
//! old master key *and* a copy of the keyring sealed under it (an old store version, a backup of
//! the state folder) still has the epoch keys of that time. And a provider removed from the
//! config after [`add_provider_wraps`] keeps its epoch keys, and the key objects keep its wraps:
//! later shreds destroy epoch keys only in the configured providers, so the removed provider's
//! keys (keyring and master key, or token objects) must be destroyed by hand.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::app::Coffre;
use crate::audit::{AccessLog, NewEntry, Target};
use crate::config::{Config, KeyProviderConfig, ProviderKind};
use crate::ids::{EpochId, SnapshotId};
use crate::keys::file::{self, FileProvider};
use crate::keys::KeyError;
use crate::store::{KeyObject, KeyringPut, Store, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    #[error("key provider `{0}` is not configured")]
    UnknownProvider(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("epoch {epoch}: {source}")]
    Epoch {
        epoch: EpochId,
        #[source]
        source: KeyError,
    },
    #[error("snapshot {snapshot}: {source}")]
    Snapshot {
        snapshot: SnapshotId,
        #[source]
        source: KeyError,
    },
    #[error("key object of snapshot {snapshot} not rewritten in store `{store}`: {source}. Run the command again once the store is reachable: snapshots already done are skipped")]
    KeyObject {
        snapshot: SnapshotId,
        store: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// What a master-key rotation did on this host.
#[derive(Debug, Clone, Serialize)]
pub struct MasterKeyRotation {
    pub provider: String,
    /// The local keyring, now sealed under the new master key.
    pub keyring: PathBuf,
    pub new_master_key: PathBuf,
    /// Generation of the re-sealed keyring.
    pub generation: u64,
    /// Epochs in the keyring (live and destroyed).
    pub epochs: usize,
    pub destroyed_epochs: usize,
    /// The new master key file was created by this rotation.
    pub created_master_key: bool,
    /// The local keyring was already sealed under the new master key (an interrupted rotation
    /// being finished).
    pub resumed: bool,
}

/// What a master-key rotation did on this host and in the stores.
#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    #[serde(flatten)]
    pub local: MasterKeyRotation,
    /// Stores that now hold the keyring sealed under the new master key only.
    pub stores_updated: Vec<String>,
    /// `store: error` for each store not updated (run the rotation again once it is back).
    pub store_failures: Vec<String>,
    /// Keyring copies under the old master key deleted from the stores.
    pub old_copies_deleted: usize,
}

fn master_key_err(provider: &str, reason: String) -> KeyError {
    KeyError::MasterKey {
        provider: provider.to_string(),
        reason,
    }
}

/// The config of a `file` provider, checked for rotation.
fn file_provider<'a>(
    config: &'a Config,
    provider: &str,
) -> Result<&'a KeyProviderConfig, KeyError> {
    let k = config
        .key_providers
        .iter()
        .find(|k| k.name == provider)
        .ok_or_else(|| master_key_err(provider, "no such key provider in the config".into()))?;
    if k.kind != ProviderKind::File {
        return Err(master_key_err(
            provider,
            "only a `file` provider has a master key to rotate; add another provider and use `coffre keys rotate --to-provider` to move to it".into(),
        ));
    }
    Ok(k)
}

/// `k` reading its master key from `path`, never creating it.
fn with_master_key(k: &KeyProviderConfig, path: &Path) -> KeyProviderConfig {
    let mut k = k.clone();
    k.master_key = Some(path.to_path_buf());
    k.master_key_credential = None;
    k.create_master_key = false;
    k
}

/// The preconditions of a master-key rotation: a local keyring to re-seal, and a new master
/// key (created when asked and absent) that is a valid key file and not the current one.
/// Returns the new key and whether it was created.
fn check_new_master_key(
    provider: &str,
    keyring: &Path,
    current: &KeyProviderConfig,
    next: &KeyProviderConfig,
    new_master_key: &Path,
    create: bool,
) -> Result<(zeroize::Zeroizing<[u8; 32]>, bool), KeyError> {
    if !keyring.exists() {
        return Err(master_key_err(
            provider,
            format!(
                "there is no keyring at {} to rotate. On a new host, run any command first (e.g. `coffre keys status`): it fetches the keyring from the stores",
                keyring.display()
            ),
        ));
    }
    if current.master_key.as_deref() == Some(new_master_key) {
        return Err(master_key_err(
            provider,
            format!(
                "{} is the current master key: give a new file",
                new_master_key.display()
            ),
        ));
    }
    let created_master_key = create && !new_master_key.exists();
    if created_master_key {
        file::create_master_key(new_master_key).map_err(|e| {
            master_key_err(
                provider,
                format!("cannot create {}: {e}", new_master_key.display()),
            )
        })?;
    }
    // Checks existence, 64 hex characters and mode (no group or other access).
    let new_master = file::load_master_key(next)?;
    let old_master = file::load_master_key(current)?;
    if *old_master == *new_master {
        return Err(master_key_err(
            provider,
            format!(
                "{} holds the current master key: give a new one (or let coffre create it)",
                new_master_key.display()
            ),
        ));
    }
    Ok((new_master, created_master_key))
}

/// Check what was written: the new key opens it with every epoch at the new generation, the
/// old one does not (unless this run resumed an earlier one).
#[allow(clippy::too_many_arguments)]
fn check_resealed(
    config: &Config,
    provider: &str,
    keyring: &Path,
    current: &KeyProviderConfig,
    next: &KeyProviderConfig,
    before: &[crate::keys::EpochInfo],
    generation: u64,
    resumed: bool,
) -> Result<(), KeyError> {
    let reopened = FileProvider::open(config, next)?;
    if crate::keys::KeyProvider::epochs(&reopened)? != before || reopened.generation() != generation
    {
        return Err(master_key_err(
            provider,
            format!(
                "the re-sealed keyring {} does not read back as written",
                keyring.display()
            ),
        ));
    }
    if !resumed && FileProvider::open(config, current).is_ok() {
        return Err(master_key_err(
            provider,
            format!(
                "the keyring {} still opens with the old master key after rotation",
                keyring.display()
            ),
        ));
    }
    Ok(())
}

/// Re-seal the local keyring of `file` provider `provider` under `new_master_key`, with a
/// generation above `above_generation`. Returns the report and the bytes written.
fn rotate_local(
    config: &Config,
    provider: &str,
    new_master_key: &Path,
    create: bool,
    above_generation: u64,
) -> Result<(MasterKeyRotation, Vec<u8>), KeyError> {
    let k = file_provider(config, provider)?;
    let mut current = k.clone();
    current.create_master_key = false;
    let keyring = config.keyring_path(k);
    let next = with_master_key(k, new_master_key);
    let (new_master, created_master_key) =
        check_new_master_key(provider, &keyring, &current, &next, new_master_key, create)?;
    let (p, resumed) = match FileProvider::open(config, &current) {
        Ok(p) => (p, false),
        // Interrupted earlier, after the local keyring was re-sealed: finish the job.
        Err(KeyError::WrongMasterKey { .. }) => match FileProvider::open(config, &next) {
            Ok(p) => (p, true),
            Err(_) => {
                return Err(KeyError::WrongMasterKey {
                    provider: provider.to_string(),
                    path: keyring.display().to_string(),
                })
            }
        },
        Err(e) => return Err(e),
    };
    // Merged with the file, sealed and written under the keyring's lock: an epoch another
    // process adds meanwhile is either in these bytes or waits for the rotation to end.
    let (generation, bytes, before) = p.reseal_to_disk(&new_master, above_generation)?;
    drop(new_master);
    drop(p);
    check_resealed(
        config, provider, &keyring, &current, &next, &before, generation, resumed,
    )?;
    let report = MasterKeyRotation {
        provider: provider.to_string(),
        keyring,
        new_master_key: new_master_key.to_path_buf(),
        generation,
        epochs: before.len(),
        destroyed_epochs: before.iter().filter(|e| e.destroyed.is_some()).count(),
        created_master_key,
        resumed,
    };
    Ok((report, bytes))
}

/// Re-seal the local keyring of `file` provider `provider` under the master key in
/// `new_master_key` (created, mode 0600, when `create` is set and it does not exist; otherwise it
/// must exist, hold 64 hex characters and be readable by its owner only). Only this host's
/// keyring changes: use [`rotate_master_key_everywhere`] to rewrite the stores' copies too. Then
/// point `master-key` in the config at the new file.
pub fn rotate_master_key(
    config: &Config,
    provider: &str,
    new_master_key: &Path,
    create: bool,
) -> Result<MasterKeyRotation, KeyError> {
    rotate_local(config, provider, new_master_key, create, 0).map(|(r, _)| r)
}

/// Highest keyring generation of `provider` in store `s`.
async fn store_generation(s: &Store, provider: &str) -> Result<u64, StoreError> {
    Ok(s.keyrings(provider).await?.last().map_or(0, |g| g.0))
}

/// Write the re-sealed keyring to a store, then delete every other copy there (all older).
async fn push_keyring(
    s: &Store,
    provider: &str,
    generation: u64,
    bytes: &[u8],
) -> Result<usize, StoreError> {
    // Never over another copy: the generation is above every one the stores held when the
    // rotation began, so one already there is this rotation's own (same bytes) or a race.
    if let KeyringPut::Differs(_) = s.put_keyring_new(provider, generation, bytes).await? {
        return Err(StoreError::Setup {
            store: s.name.clone(),
            reason: format!(
                "keyring generation {generation} of provider `{provider}` appeared in the store during the rotation, with other contents; it was left in place. Run the rotation again (old config) once no other coffre process writes"
            ),
        });
    }
    let mut deleted = 0;
    for (g, path) in s.keyrings(provider).await? {
        if g != generation {
            s.delete(&path).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Rotate the master key of `file` provider `provider` on this host and in every store: the
/// local keyring is re-sealed under `new_master_key` (see [`rotate_master_key`]) with a
/// generation above every store's copy, written to each store, and every older copy there
/// (sealed under the old master key) is deleted. Then point `master-key` in the config at the new
/// file, on every host that uses this provider.
///
/// Works from the config, not from an open [`Coffre`]: an open app holds the old master key, and
/// after an interrupted rotation (local keyring already re-sealed, stores not) the app no longer
/// opens with the old config while this function, run again with the old config, finishes the
/// job. A store that cannot be updated is listed in `store_failures` (not an error): the local
/// keyring is rotated either way; run the rotation again (old config) once the store is back.
/// The rotation is in the access log (action `key-rotate`).
pub async fn rotate_master_key_everywhere(
    config: &Config,
    provider: &str,
    new_master_key: &Path,
    create: bool,
    actor: &str,
    purpose: &str,
) -> Result<RotationReport, RotateError> {
    file_provider(config, provider)?;
    let (stores, _claimant) = crate::app::open_stores(config).await?;
    let audit = AccessLog::open(&config.audit_path(), &config.host());
    let log = |outcome: String| {
        audit.append(NewEntry {
            actor: actor.into(),
            action: "key-rotate".into(),
            target: Target::default(),
            purpose: purpose.into(),
            outcome,
            exposes: None,
        })
    };
    log(format!(
        "started: master key of provider {provider} to {}",
        new_master_key.display()
    ))?;
    // The new generation is above every one the reachable stores hold.
    let mut above = 0;
    let mut failures = Vec::new();
    let mut reachable = Vec::new();
    for s in &stores {
        match store_generation(s, provider).await {
            Ok(g) => {
                above = above.max(g);
                reachable.push(s);
            }
            Err(e) => failures.push(format!("{}: {e}", s.name)),
        }
    }
    let (local, bytes) =
        rotate_local(config, provider, new_master_key, create, above).map_err(|e| {
            let _ = log(format!("failed: {e}"));
            e
        })?;
    let mut updated = Vec::new();
    let mut deleted = 0;
    for s in reachable {
        match push_keyring(s, provider, local.generation, &bytes).await {
            Ok(n) => {
                deleted += n;
                updated.push(s.name.clone());
            }
            Err(e) => failures.push(format!("{}: {e}", s.name)),
        }
    }
    log(if failures.is_empty() {
        format!(
            "ok: keyring generation {} under the new master key in {} store(s)",
            local.generation,
            updated.len()
        )
    } else {
        format!(
            "partial: local keyring rotated, stores not updated: {}",
            failures.join("; ")
        )
    })?;
    Ok(RotationReport {
        local,
        stores_updated: updated,
        store_failures: failures,
        old_copies_deleted: deleted,
    })
}

/// Wrap every snapshot's DEK (every key object in the catalog) with provider `to_provider` too,
/// under the snapshot's epoch, and rewrite its key object in every store that holds it and in
/// the catalog. The other wraps stay; a wrap of `to_provider` under another epoch is replaced.
/// Snapshots that already have a wrap of `to_provider` under their epoch are skipped, and so are
/// those whose epoch key is destroyed (crypto-shredded: nothing to migrate). Returns the number
/// of key objects rewritten. Each unwrap is in the access log first (action `key-rotate`). No
/// data is re-encrypted. Run `coffre catalog rebuild` first on a host whose catalog may be
/// incomplete.
pub async fn add_provider_wraps(
    app: &Coffre,
    to_provider: &str,
    actor: &str,
    purpose: &str,
) -> Result<usize, RotateError> {
    let to = app
        .providers
        .iter()
        .find(|p| p.name() == to_provider)
        .ok_or_else(|| RotateError::UnknownProvider(to_provider.to_string()))?;
    let todo: Vec<KeyObject> = app
        .catalog
        .all_keys()?
        .into_iter()
        .filter(|k| {
            !k.wraps
                .iter()
                .any(|w| w.provider == to_provider && w.epoch == k.epoch)
        })
        .collect();
    if todo.is_empty() {
        return Ok(0);
    }
    // 1. The epoch keys, then the stores' keyring copies (a file provider's new epoch keys must
    //    be in a store before a key object there depends on them).
    let destroyed = ensure_epochs(to.as_ref(), &todo)?;
    push_keyrings_for(app, &todo).await?;
    // 2. One snapshot at a time: log, unwrap, wrap, rewrite the key object everywhere.
    let mut done = 0;
    for old in todo {
        if destroyed.contains(&old.epoch) {
            tracing::warn!(snapshot = %old.snapshot, epoch = %old.epoch, provider = to_provider, "epoch key destroyed in the new provider: snapshot skipped");
            continue;
        }
        if add_wrap(app, to.as_ref(), old, actor, purpose).await? {
            done += 1;
        }
    }
    Ok(done)
}

/// Create the epoch keys of `todo` in the new provider; returns the epochs it already
/// destroyed (their snapshots are skipped).
fn ensure_epochs(
    to: &dyn crate::keys::KeyProvider,
    todo: &[KeyObject],
) -> Result<std::collections::BTreeSet<crate::ids::EpochId>, RotateError> {
    let mut destroyed = std::collections::BTreeSet::new();
    let epochs: std::collections::BTreeSet<_> = todo.iter().map(|k| k.epoch.clone()).collect();
    for e in epochs {
        match to.ensure_epoch(&e) {
            Ok(()) => {}
            Err(err) if err.is_destroyed() => {
                destroyed.insert(e);
            }
            Err(source) => return Err(RotateError::Epoch { epoch: e, source }),
        }
    }
    Ok(destroyed)
}

/// Push the keyrings to every store that holds one of the snapshots in `todo`. The
/// object-authentication key of the new provider exists first: the key objects re-sealed next
/// carry its tag, and a recovery host must check it.
async fn push_keyrings_for(app: &Coffre, todo: &[KeyObject]) -> Result<(), RotateError> {
    let mut involved: Vec<&Store> = Vec::new();
    for k in todo {
        for s in app.committed_stores(&k.snapshot) {
            if !involved.iter().any(|x| x.name == s.name) {
                involved.push(s);
            }
        }
    }
    crate::auth::ObjectAuth::for_writing(&app.providers).map_err(|source| RotateError::Epoch {
        epoch: crate::ids::EpochId::try_from(crate::keys::OBJECT_AUTH_EPOCH.to_string())
            .unwrap_or_else(|_| crate::ids::EpochId::for_day(time::Date::MIN)),
        source,
    })?;
    for s in &involved {
        app.push_keyrings(s).await?;
    }
    Ok(())
}

/// Add the wrap of provider `to` to one snapshot's key object: log, unwrap, wrap, re-seal,
/// rewrite it in every store that holds the snapshot, then in the catalog. False when the
/// snapshot's epoch key is destroyed (skipped).
async fn add_wrap(
    app: &Coffre,
    to: &dyn crate::keys::KeyProvider,
    old: KeyObject,
    actor: &str,
    purpose: &str,
) -> Result<bool, RotateError> {
    let id = old.snapshot;
    let log = |outcome: String| {
        app.audit.append(NewEntry {
            actor: actor.into(),
            action: "key-rotate".into(),
            target: Target::key_object(&old),
            purpose: purpose.into(),
            outcome,
            exposes: None,
        })
    };
    let failed = |source: KeyError| {
        let _ = log(format!("failed: {source}"));
        RotateError::Snapshot {
            snapshot: id,
            source,
        }
    };
    log(format!("started: add a wrap of provider {}", to.name()))?;
    let dek = match crate::keys::unwrap_dek(&app.providers, &old) {
        Ok(k) => k,
        Err(e) if e.is_destroyed() => {
            let _ = log(format!("skipped: {e}"));
            tracing::warn!(snapshot = %id, error = %e, "epoch key destroyed: snapshot skipped");
            return Ok(false);
        }
        Err(source) => return Err(failed(source)),
    };
    let wrap = crate::keys::wrap_with(to, &old.epoch, &dek, &id).map_err(failed)?;
    drop(dek);
    let mut new = old.clone();
    match new.wraps.iter_mut().find(|w| w.provider == to.name()) {
        Some(w) => *w = wrap,
        None => new.wraps.push(wrap),
    }
    // The tags now include the new provider's.
    app.seal_key_object(&mut new).map_err(failed)?;
    for s in app.committed_stores(&id) {
        if let Err(source) = s.put_key_object(&new).await {
            let _ = log(format!("failed: store {}: {source}", s.name));
            return Err(RotateError::KeyObject {
                snapshot: id,
                store: s.name.clone(),
                source,
            });
        }
    }
    app.catalog.put_key(&new)?;
    log(format!("ok: wrapped by provider {}", to.name()))?;
    Ok(true)
}
