//! The assembled application: config, stores, key providers, catalog and access log, built once
//! from a validated config and shared by the CLI commands and the daemon.

use std::sync::Arc;

use crate::audit::AccessLog;
use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;
use crate::keys::{self, KeyError, KeyProvider};
use crate::store::{self, KeyringPut, Store, StoreError};

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
    #[error(transparent)]
    Namespace(#[from] store::namespace::NamespaceError),
    #[error("the claim on host id `{host}` was not taken over everywhere: {failed}. Run the command again when the stores answer")]
    TakeOver { host: String, failed: String },
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// The configured stores, each set to this host's namespace (src/store/namespace.rs): every
/// code path that writes to the stores builds them here. Creates the state folder.
pub(crate) async fn open_stores(
    config: &Config,
) -> Result<(Vec<Store>, Arc<store::namespace::Claimant>), AppError> {
    crate::fsutil::create_private_dir(&config.state_dir).map_err(|source| AppError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let mut stores = store::build(config)?;
    // A catalog without a host record: a state folder of a version without namespaces.
    let pre_fleet = config.state_dir.join("catalog.sqlite").exists()
        && !config.state_dir.join("host.json").exists();
    let claimant =
        store::namespace::settle(&mut stores, &config.state_dir, &config.host(), pre_fleet).await?;
    Ok((stores, claimant))
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

/// How many times a push merges a competing generation before giving up.
const MAX_PUSH_ATTEMPTS: usize = 8;

/// The assembled components. The fields are the crate's: `ops`, `daemon` and `cli` use them
/// directly; code outside the crate (the integration tests) reads them through the accessors.
pub struct Coffre {
    pub(crate) config: Config,
    pub(crate) host: String,
    /// This host's namespace and its claims in the stores (src/store/namespace.rs).
    pub(crate) claimant: Arc<store::namespace::Claimant>,
    pub(crate) stores: Vec<Store>,
    pub(crate) providers: Vec<Arc<dyn KeyProvider>>,
    pub(crate) catalog: Catalog,
    pub(crate) audit: AccessLog,
    /// Epochs in use by snapshots being protected (an early shred waits for them).
    pub(crate) inflight: crate::inflight::InFlight,
    /// Work in progress (protect, copy, restore, drill), shown by `/status`.
    pub(crate) progress: crate::progress::Board,
}

impl Coffre {
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn stores(&self) -> &[Store] {
        &self.stores
    }
    pub fn providers(&self) -> &[Arc<dyn KeyProvider>] {
        &self.providers
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn audit(&self) -> &AccessLog {
        &self.audit
    }
    pub fn inflight(&self) -> &crate::inflight::InFlight {
        &self.inflight
    }
    /// Put a decorator around every store's object store (the fault-injection tests do).
    pub fn wrap_object_stores(
        &mut self,
        mut f: impl FnMut(Arc<dyn object_store::ObjectStore>) -> Arc<dyn object_store::ObjectStore>,
    ) {
        for s in &mut self.stores {
            s.wrap_object_store(&mut f);
        }
    }

    /// Build every component. Fetches a file provider's keyring from the stores when this host
    /// has none yet (restore on a new host).
    pub async fn open(config: Config) -> Result<Coffre, AppError> {
        let (stores, claimant) = open_stores(&config).await?;
        let providers = build_providers(&config)?;
        // Hosts sharing a key store (a PKCS#11 token) keep their keys apart by label.
        let label_ns = claimant.label_namespace();
        for p in &providers {
            p.set_label_namespace(&label_ns);
        }
        let catalog = Catalog::open(&config.state_dir.join("catalog.sqlite"))?;
        let host = config.host();
        let audit = AccessLog::open(&config.audit_path(), &host);
        let app = Coffre {
            config,
            host,
            claimant,
            stores,
            providers,
            catalog,
            audit,
            inflight: Default::default(),
            progress: Default::default(),
        };
        app.pull_keyrings().await?;
        Ok(app)
    }

    /// This machine replaces the lost host of its config's id: its claim in every store becomes
    /// this installation's (src/store/namespace.rs). Logged before and after. Returns the
    /// stores where another installation's claim was replaced.
    pub async fn take_over_host(&self, actor: &str) -> Result<Vec<String>, AppError> {
        let entry = |outcome: String| crate::audit::NewEntry {
            actor: actor.to_string(),
            action: "host-take-over".into(),
            target: Default::default(),
            purpose: format!("this machine replaces the lost host `{}`", self.host),
            outcome,
            exposes: None,
        };
        self.audit.append(entry("started".into()))?;
        self.claimant.take_over();
        let mut failed = Vec::new();
        for s in &self.stores {
            if let Err(e) = self.claimant.ensure(s).await {
                failed.push(format!("store `{}`: {e}", s.name));
            }
        }
        let taken = self.claimant.taken_over();
        if !failed.is_empty() {
            self.audit
                .append(entry(format!("failed: {}", failed.join("; "))))?;
            return Err(AppError::TakeOver {
                host: self.host.clone(),
                failed: failed.join("; "),
            });
        }
        self.audit.append(entry(format!(
            "ok: claim taken over in {} store(s) ({})",
            taken.len(),
            taken.join(", ")
        )))?;
        Ok(taken)
    }

    pub fn store(&self, name: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// The stores where the catalog says a snapshot is committed.
    pub(crate) fn committed_stores(&self, id: &crate::ids::SnapshotId) -> Vec<&Store> {
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

    /// Merge every replicated keyring found in the stores into the local one (the union of
    /// epochs, destructions are never undone). Best effort for a store that is down or a copy
    /// that does not open; but two different keys under one epoch id stop everything
    /// ([`KeyError::ConflictingEpochKeys`]): snapshots may be wrapped under either key.
    pub(crate) async fn pull_keyrings(&self) -> Result<(), KeyError> {
        for p in &self.providers {
            let mut opened_any = false;
            let mut wrong_key: Option<String> = None;
            for s in &self.stores {
                let generations = match s.keyrings(p.name()).await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::debug!(store = %s.name, provider = p.name(), error = %e, "cannot list replicated keyrings");
                        continue;
                    }
                };
                let Some((_, newest)) = generations.last() else {
                    continue;
                };
                match s.get_keyring(newest).await {
                    Ok(bytes) => match p.adopt_replicated_state(&bytes) {
                        Ok(adopted) => {
                            opened_any = true;
                            if adopted {
                                tracing::info!(store = %s.name, provider = p.name(), "merged a newer keyring from the store");
                            }
                        }
                        Err(KeyError::WrongMasterKey { .. }) => {
                            wrong_key = Some(format!("store `{}`: {newest}", s.name));
                        }
                        Err(e) if e.is_fatal() => {
                            tracing::error!(store = %s.name, provider = p.name(), path = %newest, error = %e, "conflicting keyring in a store");
                            return Err(e);
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
    /// delete older generations there. A generation is written with `PutMode::Create`, never
    /// over another: if the store already holds that generation with the same bytes, it is
    /// there; with other bytes (another host or process wrote it), that copy is merged into the
    /// local keyring, which becomes a newer generation, and that one is written instead. Two
    /// different keys under one epoch id in the store's copy are an error
    /// ([`StoreError::Keyring`] holding [`KeyError::ConflictingEpochKeys`]).
    pub(crate) async fn push_keyrings(&self, s: &Store) -> Result<(), StoreError> {
        let key_err = |source: KeyError| StoreError::Keyring {
            store: s.name.clone(),
            source,
        };
        for p in &self.providers {
            let mut attempt = 0;
            'push: loop {
                attempt += 1;
                if attempt > MAX_PUSH_ATTEMPTS {
                    return Err(StoreError::Setup {
                        store: s.name.clone(),
                        reason: format!(
                            "keyring of provider `{}`: other keyrings kept appearing in the store while this host pushed its own ({MAX_PUSH_ATTEMPTS} merges); is another host or process pushing in a loop? Try again later",
                            p.name()
                        ),
                    });
                }
                let Some((generation, bytes)) = p.replicated_state().map_err(key_err)? else {
                    break;
                };
                if let KeyringPut::Differs(theirs) =
                    s.put_keyring_new(p.name(), generation, &bytes).await?
                {
                    tracing::info!(store = %s.name, provider = p.name(), generation, "the store holds another keyring of this generation: merging it, then writing a newer one");
                    p.adopt_replicated_state(&theirs).map_err(key_err)?;
                    continue 'push;
                }
                // Older generations go, once the local keyring holds everything they hold.
                for (g, older) in s.keyrings(p.name()).await? {
                    if g >= generation {
                        continue;
                    }
                    let theirs = match s.get_keyring(&older).await {
                        Ok(b) => b,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e),
                    };
                    match p.adopt_replicated_state(&theirs) {
                        Ok(false) => {}
                        // It held something ours lacked: push the merge first.
                        Ok(true) => continue 'push,
                        Err(e) if e.is_fatal() => return Err(key_err(e)),
                        Err(e) => {
                            tracing::warn!(store = %s.name, provider = p.name(), path = %older, error = %e, "an older keyring in the store does not open: deleted")
                        }
                    }
                    s.delete(&older).await?;
                }
                break;
            }
        }
        Ok(())
    }

    /// Authenticate a key object that changed (re-wrap, hold, rotation) with its snapshot's
    /// manifest from the catalog. Without a manifest it is left unsealed (tags cleared: stale
    /// tags would read as forged).
    pub(crate) fn seal_key_object(
        &self,
        k: &mut crate::format::objects::KeyObject,
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
    pub(crate) async fn seal_catalog(&self) -> Result<SealReport, AppError> {
        let writer = crate::auth::ObjectAuth::for_writing(&self.providers)?;
        let reader = crate::auth::ObjectAuth::for_reading(&self.providers);
        let mut report = SealReport::default();
        let untagged = |k: &crate::format::objects::KeyObject| {
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
                if let Err(err) = s.put_key_object(&key).await {
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
        let auth = crate::auth::ObjectAuth::for_reading(&self.providers);
        let mut survey = Survey::default();
        for s in &self.stores {
            survey.add_store(s, &auth).await;
        }
        survey.refuse_if_disagreeing()?;
        self.catalog.clear()?;
        survey.write(&self.catalog, &self.stores)
    }
}

/// What a catalog rebuild found in the stores: each snapshot's manifest and key object (the
/// first seen), which stores hold it and whether their data object has the sealed size, and
/// every disagreement between stores or key object that fails its authentication.
#[derive(Default)]
struct Survey {
    found: std::collections::BTreeMap<crate::ids::SnapshotId, Vec<(String, bool)>>,
    manifests: std::collections::BTreeMap<crate::ids::SnapshotId, crate::store::Manifest>,
    keys: std::collections::BTreeMap<crate::ids::SnapshotId, crate::store::KeyObject>,
    /// (snapshot, object) -> first (store, value) seen, to compare the others with.
    first_seen: std::collections::BTreeMap<
        (crate::ids::SnapshotId, &'static str),
        (String, serde_json::Value),
    >,
    disagreements: Vec<String>,
    forged: Vec<String>,
}

impl Survey {
    fn compare(
        &mut self,
        id: crate::ids::SnapshotId,
        what: &'static str,
        store: &str,
        v: serde_json::Value,
    ) {
        match self.first_seen.get(&(id, what)) {
            None => {
                self.first_seen.insert((id, what), (store.to_string(), v));
            }
            Some((other, w)) if *w != v => self.disagreements.push(format!(
                "snapshot {id}: the {what} in store `{store}` differs from the one in store `{other}`"
            )),
            Some(_) => {}
        }
    }

    /// Every snapshot of one store (a store that cannot be listed is skipped, with a warning).
    async fn add_store(&mut self, s: &Store, auth: &crate::auth::ObjectAuth) {
        let list = match s.list_manifests().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(store = %s.name, error = %e, "store skipped during catalog rebuild");
                return;
            }
        };
        for (source, id) in list {
            let Ok(m) = s.get_manifest(&source, &id).await else {
                continue;
            };
            if m.host != s.host {
                // A store shared by several hosts before they had namespaces.
                tracing::warn!(store = %s.name, snapshot = %id, host = %m.host.escape_debug(), "snapshot of another host left out of this host's catalog");
                continue;
            }
            self.compare(
                id,
                "manifest",
                &s.name,
                serde_json::to_value(&m).unwrap_or_default(),
            );
            if let Ok(k) = s.get_key_object(&source, &id).await {
                match auth.check(&k, &m) {
                    crate::auth::Check::Authentic | crate::auth::Check::Unsealed => {}
                    bad => self.forged.push(format!(
                        "snapshot {id}: the key object in store `{}` is {bad}",
                        s.name
                    )),
                }
                self.compare(
                    id,
                    "key object",
                    &s.name,
                    serde_json::to_value(&k).unwrap_or_default(),
                );
                self.keys.entry(id).or_insert(k);
            }
            let data_ok = matches!(s.head(&s.data_path(&source, &id)).await, Ok(meta) if meta.size == m.sealed_size);
            self.found
                .entry(id)
                .or_default()
                .push((s.name.clone(), data_ok));
            self.manifests.entry(id).or_insert(m);
        }
    }

    /// Stores that disagree, or a forged key object: named, and the rebuild refused.
    fn refuse_if_disagreeing(&mut self) -> Result<(), CatalogError> {
        self.disagreements.append(&mut self.forged);
        let Some(first) = self.disagreements.first() else {
            return Ok(());
        };
        for d in &self.disagreements {
            tracing::error!("catalog rebuild refused: {d}");
        }
        Err(CatalogError::StoresDisagree {
            count: self.disagreements.len(),
            first: first.clone(),
        })
    }

    /// Into the (cleared) catalog: manifests, key objects, each store's replica state.
    /// Returns (snapshots, committed replicas).
    fn write(&self, catalog: &Catalog, stores: &[Store]) -> Result<(usize, usize), CatalogError> {
        use crate::catalog::ReplicaState;
        let mut replicas = 0;
        for (id, m) in &self.manifests {
            catalog.put_manifest(m)?;
            if let Some(k) = self.keys.get(id) {
                catalog.put_key(k)?;
            }
            for s in stores {
                let state = match self
                    .found
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
                catalog.set_replica(id, &s.name, state)?;
            }
        }
        Ok((self.manifests.len(), replicas))
    }
}

/// Build every configured key provider (here, not in `keys`, so that the providers' files
/// import `keys` and `keys` never imports them) (in config order: restores try them in this order).
pub fn build_providers(config: &Config) -> Result<Vec<Arc<dyn KeyProvider>>, KeyError> {
    let mut out: Vec<Arc<dyn KeyProvider>> = Vec::new();
    for k in &config.key_providers {
        match k.kind {
            crate::config::ProviderKind::File => {
                out.push(Arc::new(keys::file::FileProvider::open(config, k)?))
            }
            crate::config::ProviderKind::Pkcs11 => {
                out.push(Arc::new(keys::pkcs11::Pkcs11Provider::open(config, k)?))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EpochId, SnapshotId};
    use crate::keys::file::FileProvider;
    use crate::keys::DataKey;
    use std::path::Path;

    fn config(dir: &Path) -> Config {
        let text = format!(
            r#"
state-dir = "{d}/state"
[replication]
min-sites = 1
[[store]]
name = "a"
kind = "local"
site = "x"
jurisdiction = "CA-QC"
path = "{d}/store"
[[key-provider]]
name = "local"
kind = "file"
master-key = "{d}/keys/master.key"
create-master-key = true
"#,
            d = dir.display()
        );
        Config::from_toml(&text, Path::new("t")).unwrap()
    }

    fn epoch(s: &str) -> EpochId {
        EpochId::try_from(s.to_string()).unwrap()
    }

    /// Another copy of the keyring (same master key, its own file), as another host would have.
    fn other_copy(c: &Config, dir: &Path) -> FileProvider {
        let mut k = c.key_providers[0].clone();
        k.keyring = Some(dir.join("other/local.keyring"));
        FileProvider::open(c, &k).unwrap()
    }

    fn store_keyrings(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("store/coffre/keyring/local"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Finding 2 of issue 11: a generation already in the store with other bytes is never
    /// overwritten: it is merged, and the merge is written as a newer generation.
    #[tokio::test]
    async fn a_push_never_overwrites_another_generation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let c = config(d);
        let app = Coffre::open(c.clone()).await.unwrap();
        let p = &app.providers[0];
        let (e1, e2) = (epoch("2026-12-31.1"), epoch("2026-12-31.2"));
        p.ensure_epoch(&e1).unwrap();
        let (g, _) = p.replicated_state().unwrap().unwrap();
        // Another copy wrote the same generation, holding another epoch.
        let other = other_copy(&c, d);
        other.ensure_epoch(&e2).unwrap();
        let (og, planted) = other.replicated_state().unwrap().unwrap();
        assert_eq!(og, g);
        let id = SnapshotId::new();
        let dek = DataKey::generate();
        let w2 = other.wrap(&e2, &dek, &id).unwrap();
        let s = &app.stores[0];
        let at = d.join("store").join(s.keyring_path("local", g).as_ref());
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, &planted).unwrap();

        app.push_keyrings(s).await.unwrap();
        // The planted epoch's key is in the local keyring and in the store's newest copy.
        assert_eq!(p.unwrap(&e2, &w2, &id).unwrap().expose(), dek.expose());
        let rings = store_keyrings(d);
        assert_eq!(rings.len(), 1, "{rings:?}");
        let (g2, bytes) = p.replicated_state().unwrap().unwrap();
        assert!(g2 > g);
        assert_eq!(std::fs::read(&rings[0]).unwrap(), bytes);
        let fresh = other_copy(&c, &d.join("fresh"));
        assert!(fresh.adopt_replicated_state(&bytes).unwrap());
        assert_eq!(fresh.unwrap(&e2, &w2, &id).unwrap().expose(), dek.expose());
        fresh.wrap(&e1, &dek, &id).unwrap();

        // Pushing the same generation again is a no-op.
        app.push_keyrings(s).await.unwrap();
        assert_eq!(store_keyrings(d), rings);
        assert_eq!(std::fs::read(&rings[0]).unwrap(), bytes);
    }

    /// A store copy holding another key for one of our epochs: the push fails with the fatal
    /// keyring error, and the store's copy stays as it was.
    #[tokio::test]
    async fn a_conflicting_store_copy_stops_the_push_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let c = config(d);
        let app = Coffre::open(c.clone()).await.unwrap();
        let p = &app.providers[0];
        let e = epoch("2026-12-31.1");
        p.ensure_epoch(&e).unwrap();
        let other = other_copy(&c, d);
        other.ensure_epoch(&e).unwrap();
        let (g, planted) = other.replicated_state().unwrap().unwrap();
        let s = &app.stores[0];
        let at = d.join("store").join(s.keyring_path("local", g).as_ref());
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, &planted).unwrap();
        let err = app.push_keyrings(s).await.unwrap_err();
        assert_eq!(
            err.kind(),
            crate::store::ErrorKind::KeyringConflict,
            "{err}"
        );
        assert!(err.to_string().contains("2026-12-31.1"), "{err}");
        assert_eq!(store_keyrings(d), vec![at.clone()]);
        assert_eq!(std::fs::read(&at).unwrap(), planted);
        // Opening the app (which pulls the stores' keyrings) refuses too.
        let again = Coffre::open(c).await.err().expect("open must fail");
        assert!(again.to_string().contains("two different keys"), "{again}");
    }
}
