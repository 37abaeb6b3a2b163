//! The assembled application: config, stores, key providers, catalog and access log, built once
//! from a validated config and shared by the CLI commands and the daemon.

use object_store::ObjectStoreExt;
use std::sync::Arc;

use crate::audit::AccessLog;
use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;
use crate::keys::{self, KeyError, KeyProvider};
use crate::store::{self, Store, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error("cannot create the state folder {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What `coffre catalog seal` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct SealReport {
    /// Snapshots whose key objects were authenticated now.
    pub sealed: Vec<crate::ids::SnapshotId>,
    /// Snapshots already authenticated everywhere.
    pub already: usize,
    /// Snapshots not sealed, and why (stores that disagree, forged copies, stores down).
    pub refused: Vec<String>,
}

pub struct Coffre {
    pub config: Config,
    pub host: String,
    pub stores: Vec<Store>,
    pub providers: Vec<Arc<dyn KeyProvider>>,
    pub catalog: Catalog,
    pub audit: AccessLog,
    /// Epochs in use by snapshots being protected (an early shred waits for them).
    pub inflight: crate::inflight::InFlight,
}

impl Coffre {
    /// Build every component. Fetches a file provider's keyring from the stores when this host
    /// has none yet (restore on a new host).
    pub async fn open(config: Config) -> Result<Coffre, AppError> {
        crate::keys::file::create_private_dir(&config.state_dir).map_err(|source| {
            AppError::StateDir {
                path: config.state_dir.clone(),
                source,
            }
        })?;
        let stores = store::build(&config)?;
        let providers = keys::build(&config)?;
        let catalog = Catalog::open(&config.state_dir.join("catalog.sqlite"))?;
        let host = config.host();
        let audit = AccessLog::open(&config.audit_path(), &host);
        let app = Coffre {
            config,
            host,
            stores,
            providers,
            catalog,
            audit,
            inflight: Default::default(),
        };
        app.pull_keyrings().await?;
        Ok(app)
    }

    pub fn store(&self, name: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// The stores where the catalog says a snapshot is committed.
    pub fn committed_stores(&self, id: &crate::ids::SnapshotId) -> Vec<&Store> {
        let names: Vec<String> = self
            .catalog
            .get(id)
            .ok()
            .flatten()
            .map(|e| {
                e.replicas
                    .into_iter()
                    .filter(|r| r.state == crate::catalog::ReplicaState::Committed)
                    .map(|r| r.store)
                    .collect()
            })
            .unwrap_or_default();
        self.stores
            .iter()
            .filter(|s| names.contains(&s.name))
            .collect()
    }

    /// Merge every replicated keyring found in the stores into the local one (newer wins,
    /// destructions are never undone). Best effort: a store that is down is skipped.
    pub async fn pull_keyrings(&self) -> Result<(), KeyError> {
        use futures::TryStreamExt;
        for p in &self.providers {
            let mut opened_any = false;
            let mut wrong_key: Option<String> = None;
            for s in &self.stores {
                let dir = s.keyring_dir(p.name());
                let metas: Vec<_> = match s.inner.list(Some(&dir)).try_collect().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(store = %s.name, provider = p.name(), error = %e, "cannot list replicated keyrings");
                        continue;
                    }
                };
                let newest = metas
                    .iter()
                    .max_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
                let Some(meta) = newest else { continue };
                match s.get_small(&meta.location, 16 * 1024 * 1024).await {
                    Ok(bytes) => match p.adopt_replicated_state(&bytes) {
                        Ok(adopted) => {
                            opened_any = true;
                            if adopted {
                                tracing::info!(store = %s.name, provider = p.name(), "merged a newer keyring from the store");
                            }
                        }
                        Err(KeyError::WrongMasterKey { .. }) => {
                            wrong_key = Some(format!("store `{}`: {}", s.name, meta.location));
                        }
                        Err(e) => {
                            tracing::warn!(store = %s.name, provider = p.name(), error = %e, "replicated keyring does not open")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(store = %s.name, error = %e, "cannot read replicated keyring")
                    }
                }
            }
            // Keyrings exist in the stores but none opens with this master key: every restore
            // would fail later with a misleading "unknown epoch". Say what is wrong now.
            if let (Some(path), false) = (wrong_key, opened_any) {
                return Err(KeyError::WrongMasterKey {
                    provider: p.name().to_string(),
                    path,
                });
            }
        }
        Ok(())
    }

    /// Write the current keyring of every provider that replicates state to one store, then
    /// delete older generations there.
    pub async fn push_keyrings(&self, s: &Store) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        for p in &self.providers {
            let Some((generation, bytes)) =
                p.replicated_state().map_err(|e| StoreError::Setup {
                    store: s.name.clone(),
                    reason: e.to_string(),
                })?
            else {
                continue;
            };
            let path = s.keyring_path(p.name(), generation);
            s.inner
                .put(&path, bytes.into())
                .await
                .map_err(|e| s.op_err("put", &path, e))?;
            let dir = s.keyring_dir(p.name());
            let metas: Vec<_> = s
                .inner
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(|e| s.op_err("list", &dir, e))?;
            for m in metas {
                if m.location.as_ref() < path.as_ref() {
                    match s.inner.delete(&m.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(s.op_err("delete", &m.location, e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Authenticate a key object that changed (re-wrap, hold, rotation) with its snapshot's
    /// manifest from the catalog. Without a manifest it is left unsealed (tags cleared: stale
    /// tags would read as forged).
    pub fn seal_key_object(
        &self,
        k: &mut crate::store::objects::KeyObject,
    ) -> Result<(), crate::keys::KeyError> {
        k.auth.clear();
        let manifest = self
            .catalog
            .get(&k.snapshot)
            .ok()
            .flatten()
            .map(|e| e.manifest);
        if let Some(m) = manifest {
            crate::auth::ObjectAuth::for_writing(&self.providers)?.seal(k, &m);
        }
        Ok(())
    }

    /// `coffre catalog seal`: authenticate the key objects written before authentication
    /// existed. A snapshot is sealed only when every store that holds it agrees with the
    /// catalog (manifest and key object, tags aside) and none holds a forged copy; the sealed
    /// key object then replaces the unsealed one in those stores and in the catalog.
    pub async fn seal_catalog(&self) -> Result<SealReport, AppError> {
        let writer = crate::auth::ObjectAuth::for_writing(&self.providers)?;
        let reader = crate::auth::ObjectAuth::for_reading(&self.providers);
        let mut report = SealReport::default();
        let untagged = |k: &crate::store::objects::KeyObject| {
            let mut k = k.clone();
            k.auth.clear();
            k
        };
        for e in self.catalog.list(None)? {
            let id = e.manifest.snapshot;
            let Some(mut key) = self.catalog.get_key(&id)? else {
                continue;
            };
            let mut problem = None;
            let mut unsealed_in = Vec::new();
            for s in self.committed_stores(&id) {
                let m = match s.get_manifest(&e.manifest.source, &id).await {
                    Ok(m) => m,
                    Err(err) => {
                        problem = Some(format!("store `{}`: {err}", s.name));
                        break;
                    }
                };
                if m != e.manifest {
                    problem = Some(format!(
                        "the manifest in store `{}` differs from the catalog's",
                        s.name
                    ));
                    break;
                }
                let k = match s.get_key_object(&e.manifest.source, &id).await {
                    Ok(k) => k,
                    Err(err) => {
                        problem = Some(format!("store `{}`: {err}", s.name));
                        break;
                    }
                };
                if untagged(&k) != untagged(&key) {
                    problem = Some(format!(
                        "the key object in store `{}` differs from the catalog's",
                        s.name
                    ));
                    break;
                }
                match reader.check(&k, &m) {
                    crate::auth::Check::Authentic => {}
                    crate::auth::Check::Unsealed => unsealed_in.push(s),
                    bad => {
                        problem = Some(format!("the key object in store `{}` is {bad}", s.name));
                        break;
                    }
                }
            }
            if let Some(p) = problem {
                report.refused.push(format!("snapshot {id}: {p}"));
                continue;
            }
            if unsealed_in.is_empty() && reader.check(&key, &e.manifest).is_authentic() {
                report.already += 1;
                continue;
            }
            writer.seal(&mut key, &e.manifest);
            let mut failed = None;
            for s in unsealed_in {
                if let Err(err) = crate::retention::shred::put_key_object(s, &key).await {
                    failed = Some(format!("store `{}`: {err}", s.name));
                }
            }
            self.catalog.put_key(&key)?;
            match failed {
                Some(f) => report.refused.push(format!(
                    "snapshot {id}: sealed in the catalog, not yet in {f}: run the seal again"
                )),
                None => report.sealed.push(id),
            }
        }
        Ok(report)
    }

    /// Rebuild the local catalog from the stores' manifests. A replica counts as committed when
    /// its manifest is there and its data object has the manifest's size (`coffre verify` checks
    /// the hashes). Returns (snapshots, replicas).
    ///
    /// Every store's manifest and key object are compared: the key object decides when a
    /// snapshot is shredded and whether it is held, and a store may have been edited by someone
    /// with write access to that store only. Stores that disagree are named and the rebuild is
    /// refused, leaving the current catalog as it was.
    pub async fn rebuild_catalog(&self) -> Result<(usize, usize), CatalogError> {
        use crate::catalog::ReplicaState;
        let mut found: std::collections::BTreeMap<crate::ids::SnapshotId, Vec<(String, bool)>> =
            Default::default();
        let mut manifests = std::collections::BTreeMap::new();
        let mut keys = std::collections::BTreeMap::new();
        // (snapshot, object) -> first (store, value) seen, to compare the others with.
        let mut first_seen: std::collections::BTreeMap<
            (crate::ids::SnapshotId, &str),
            (String, serde_json::Value),
        > = Default::default();
        let mut disagreements: Vec<String> = Vec::new();
        let mut forged: Vec<String> = Vec::new();
        let auth = crate::auth::ObjectAuth::for_reading(&self.providers);
        let mut compare = |id: crate::ids::SnapshotId,
                           what: &'static str,
                           store: &str,
                           v: serde_json::Value| {
            match first_seen.get(&(id, what)) {
                None => {
                    first_seen.insert((id, what), (store.to_string(), v));
                }
                Some((other, w)) if *w != v => disagreements.push(format!(
                    "snapshot {id}: the {what} in store `{store}` differs from the one in store `{other}`"
                )),
                Some(_) => {}
            }
        };
        for s in &self.stores {
            let list = match s.list_manifests().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(store = %s.name, error = %e, "store skipped during catalog rebuild");
                    continue;
                }
            };
            for (source, id) in list {
                let Ok(m) = s.get_manifest(&source, &id).await else {
                    continue;
                };
                compare(
                    id,
                    "manifest",
                    &s.name,
                    serde_json::to_value(&m).unwrap_or_default(),
                );
                if let Ok(k) = s.get_key_object(&source, &id).await {
                    match auth.check(&k, &m) {
                        crate::auth::Check::Authentic | crate::auth::Check::Unsealed => {}
                        bad => forged.push(format!(
                            "snapshot {id}: the key object in store `{}` is {bad}",
                            s.name
                        )),
                    }
                    compare(
                        id,
                        "key object",
                        &s.name,
                        serde_json::to_value(&k).unwrap_or_default(),
                    );
                    keys.entry(id).or_insert(k);
                }
                let data_ok = matches!(s.inner.head(&s.data_path(&source, &id)).await, Ok(meta) if meta.size == m.sealed_size);
                found.entry(id).or_default().push((s.name.clone(), data_ok));
                manifests.entry(id).or_insert(m);
            }
        }
        disagreements.extend(forged);
        if let Some(first) = disagreements.first() {
            for d in &disagreements {
                tracing::error!("catalog rebuild refused: {d}");
            }
            return Err(CatalogError::StoresDisagree {
                count: disagreements.len(),
                first: first.clone(),
            });
        }
        self.catalog.clear()?;
        let mut replicas = 0;
        for (id, m) in &manifests {
            self.catalog.put_manifest(m)?;
            if let Some(k) = keys.get(id) {
                self.catalog.put_key(k)?;
            }
            for s in &self.stores {
                let state = match found
                    .get(id)
                    .and_then(|v| v.iter().find(|(n, _)| n == &s.name))
                {
                    Some((_, true)) => {
                        replicas += 1;
                        ReplicaState::Committed
                    }
                    Some((_, false)) => ReplicaState::Bad,
                    None => ReplicaState::Missing,
                };
                self.catalog.set_replica(id, &s.name, state)?;
            }
        }
        Ok((manifests.len(), replicas))
    }
}
