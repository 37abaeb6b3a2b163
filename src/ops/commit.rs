//! The one commit protocol, used by a backup and by the catch-up and repair of a lagging or bad
//! replica: the sealed data is in the store at the manifest's size; then the key object; then
//! the keyrings (so a recovery host can unwrap it); then the manifest, last: a snapshot is
//! committed in a store iff its manifest is there.

use object_store::{ObjectStoreExt, PutMode, PutOptions};

use crate::app::Coffre;
use crate::store::{put_key_object, KeyObject, Manifest, Store, StoreError};

/// What a commit does with objects of the snapshot already in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// A new snapshot (backup): its id is fresh, so any key object or manifest already there is
    /// a conflict, and the commit fails rather than write over it.
    Refuse,
    /// Catch-up or repair: the key object is replaced by the catalog's (authenticated) one; a
    /// manifest already there is kept if it is the same, else replaced.
    Repair,
}

/// Commit `manifest` and `key` in `store`, whose data object is already written.
pub async fn commit(
    app: &Coffre,
    store: &Store,
    manifest: &Manifest,
    key: &KeyObject,
    existing: Existing,
) -> Result<(), StoreError> {
    check_data(store, manifest).await?;
    put_key(store, key, existing).await?;
    app.push_keyrings(store).await?;
    put_manifest(store, manifest, existing).await
}

/// The data object is there, at the sealed size the manifest names.
async fn check_data(store: &Store, manifest: &Manifest) -> Result<(), StoreError> {
    let data = store.data_path(&manifest.source, &manifest.snapshot);
    let meta = store
        .inner
        .head(&data)
        .await
        .map_err(|e| store.op_err("head", &data, e))?;
    if meta.size != manifest.sealed_size {
        return Err(StoreError::BadObject {
            store: store.name.clone(),
            path: data.to_string(),
            reason: format!(
                "{} bytes stored, {} sealed",
                meta.size, manifest.sealed_size
            ),
        });
    }
    Ok(())
}

async fn put_key(store: &Store, key: &KeyObject, existing: Existing) -> Result<(), StoreError> {
    match existing {
        Existing::Refuse => {
            let kp = store.key_path(&key.source, &key.snapshot);
            store
                .inner
                .put_opts(&kp, key.to_json().into(), PutOptions::from(PutMode::Create))
                .await
                .map_err(|e| store.op_err("put", &kp, e))?;
            Ok(())
        }
        Existing::Repair => put_key_object(store, key).await,
    }
}

async fn put_manifest(
    store: &Store,
    manifest: &Manifest,
    existing: Existing,
) -> Result<(), StoreError> {
    let (source, id) = (&manifest.source, &manifest.snapshot);
    let mp = store.manifest_path(source, id);
    let body = manifest.to_json();
    match store
        .inner
        .put_opts(&mp, body.clone().into(), PutOptions::from(PutMode::Create))
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) if existing == Existing::Repair => {
            match store.get_manifest(source, id).await {
                Ok(there) if there == *manifest => Ok(()),
                _ => {
                    tracing::warn!(store = %store.name, snapshot = %id, "replacing a manifest that differs from the catalog's");
                    store
                        .inner
                        .put(&mp, body.into())
                        .await
                        .map(|_| ())
                        .map_err(|e| store.op_err("put", &mp, e))
                }
            }
        }
        Err(e) => Err(store.op_err("put", &mp, e)),
    }
}
