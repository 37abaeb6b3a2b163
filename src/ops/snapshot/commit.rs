//! The one commit protocol, used by a backup and by the catch-up and repair of a lagging or bad
//! replica: the sealed data is in the store at the manifest's size; then the key object; then
//! the keyrings (so a recovery host can unwrap it); then the manifest, last: a snapshot is
//! committed in a store iff its manifest is there.

use crate::app::Coffre;
use crate::store::{ErrorKind, KeyObject, Manifest, ObjectPaths, Store, StoreError};

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
    let paths = store.object_paths(manifest)?;
    check_data(store, &paths, manifest).await?;
    put_key(store, &paths, key, existing).await?;
    app.push_keyrings(store).await?;
    put_manifest(store, &paths, manifest, existing).await
}

/// The data object is there, at the sealed size the manifest names.
async fn check_data(
    store: &Store,
    paths: &ObjectPaths,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let data = &paths.data;
    let meta = store.head(data).await?;
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

async fn put_key(
    store: &Store,
    paths: &ObjectPaths,
    key: &KeyObject,
    existing: Existing,
) -> Result<(), StoreError> {
    match existing {
        Existing::Refuse => store.put_new(&paths.key, key.to_json().into()).await,
        // At the object's own path: a WAL file's key object lives in its WAL folder.
        Existing::Repair => store.put_key_object_at(&paths.key, key).await,
    }
}

async fn put_manifest(
    store: &Store,
    paths: &ObjectPaths,
    manifest: &Manifest,
    existing: Existing,
) -> Result<(), StoreError> {
    let (source, id) = (&manifest.source, &manifest.snapshot);
    let mp = paths.manifest.clone();
    let body = manifest.to_json();
    match store.put_new(&mp, body.clone().into()).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && existing == Existing::Repair => {
            match store.get_manifest(source, id).await {
                Ok(there) if there == *manifest => Ok(()),
                _ => {
                    tracing::warn!(store = %store.name, snapshot = %id, "replacing a manifest that differs from the catalog's");
                    store.put(&mp, body.into()).await
                }
            }
        }
        Err(e) => Err(e),
    }
}
