//! Stores: every configured object store as an `Arc<dyn ObjectStore>` (local folders, S3 and
//! S3-compatible, Azure Blob, GCS) with its name, site and jurisdiction, and the object layout
//! inside each (docs/FORMAT.md). Every host writes beneath its own namespace `<ns>`, which is
//! `<prefix>/hosts/<host>`, or `<prefix>` itself for the one host that owned the store before
//! hosts had namespaces (claims and the rule: [`namespace`]):
//!
//! ```text
//! <ns>/snapshots/<source>/<snapshot-id>/data           sealed object
//! <ns>/snapshots/<source>/<snapshot-id>/key.json       wrapped DEKs + epoch
//! <ns>/snapshots/<source>/<snapshot-id>/manifest.json  written last, PutMode::Create
//! <ns>/wal/<source>/<timeline>/<wal file name>/...     archived WAL
//! <ns>/keyring/<provider>/<generation>.keyring         sealed keyring (file provider)
//! <ns>/audit/<host>/<first>-<last>                     sealed access-log segments
//! <ns>/destruction/<record>.json                       destruction records
//! <prefix>/hosts/<host>/claim.json                     the host's claim on its namespace
//! <prefix>/root-owner.json                             the claim of the host owning the root
//! ```
//!
//! Invariant: a snapshot is committed in a store iff its manifest is there and the data matches
//! the manifest's SHA-256. Nothing here ever sees plaintext.

use object_store::ObjectStoreExt;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, GetResult, ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{is_loopback_host, Config, StoreConfig, StoreKind};
use crate::ids::SnapshotId;

pub mod namespace;

pub use crate::format::objects::{KeyObject, Manifest, SnapshotKind, Wrap};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store `{store}` cannot be set up: {reason}")]
    Setup { store: String, reason: String },
    #[error("store `{store}`: {op} {path} failed: {source}")]
    Op {
        store: String,
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("store `{store}`: {path} is not a valid coffre object: {reason}")]
    BadObject {
        store: String,
        path: String,
        reason: String,
    },
    /// What to copy into this store is not in the local catalog (catch-up and repair take the
    /// manifest and key object from there, never from another store).
    #[error("store `{store}`: {reason}")]
    Catalog { store: String, reason: String },
    /// This host's claim on its namespace in the store (src/store/namespace.rs) refuses the
    /// write: another installation holds the host id, or the root is another host's.
    #[error("{reason}")]
    Claim { store: String, reason: String },
    /// The keyring to push to this store, or the copy found there, cannot be used.
    #[error("store `{store}`: keyring: {source}")]
    Keyring {
        store: String,
        #[source]
        source: crate::keys::KeyError,
    },
}

impl StoreError {
    /// Short, stable kind for the status page and metrics (no personal data).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Setup { .. } => ErrorKind::Setup,
            StoreError::Op { source, .. } => error_kind(source),
            StoreError::BadObject { .. } => ErrorKind::BadObject,
            StoreError::Catalog { .. } => ErrorKind::Catalog,
            StoreError::Keyring { source, .. } if source.is_fatal() => ErrorKind::KeyringConflict,
            StoreError::Keyring { .. } => ErrorKind::Keyring,
            StoreError::Claim { .. } => ErrorKind::HostClaim,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::Op {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    /// True when trying again later may succeed (outage, timeout), false for refusals.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable | ErrorKind::Other)
    }
}

/// What went wrong with a store, in a word: the status page, the metrics and the retry decision
/// use it (kebab-case, stable, no personal data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Setup,
    BadObject,
    Catalog,
    Keyring,
    KeyringConflict,
    /// This host's claim on its namespace refuses the write (src/store/namespace.rs).
    HostClaim,
    NotFound,
    AlreadyExists,
    Precondition,
    Unauthorized,
    NotSupported,
    Unavailable,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Setup => "setup",
            ErrorKind::BadObject => "bad-object",
            ErrorKind::Catalog => "catalog",
            ErrorKind::Keyring => "keyring",
            ErrorKind::KeyringConflict => "keyring-conflict",
            ErrorKind::HostClaim => "host-claim",
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::Precondition => "precondition",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotSupported => "not-supported",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable classification of an object_store error.
fn error_kind(e: &object_store::Error) -> ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        E::Precondition { .. } => ErrorKind::Precondition,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::Unauthorized,
        E::NotSupported { .. } | E::NotImplemented { .. } => ErrorKind::NotSupported,
        E::Generic { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// One configured store.
#[derive(Clone)]
pub struct Store {
    pub name: String,
    pub site: String,
    pub jurisdiction: String,
    pub kind: StoreKind,
    pub prefix: ObjPath,
    /// This host's name (the namespace it writes in, src/store/namespace.rs).
    pub(crate) host: String,
    /// The host whose namespace is this store's root (the pre-fleet layout), if any: read from
    /// `<prefix>/root-owner.json` when the application opens.
    pub(crate) root_owner: Option<String>,
    /// This host's claims, asked before every write (absent for a store built outside the
    /// application, such as `check-config`'s probe, which writes nothing).
    pub(crate) claimant: Option<Arc<dyn WriteGuard>>,
    /// The object store itself: private, so that every operation goes through the methods
    /// below, which name the store, the operation and the path in their errors.
    inner: Arc<dyn ObjectStore>,
}

/// What writing a keyring generation that must not exist yet found.
#[derive(Debug)]
pub enum KeyringPut {
    /// Written: the store did not hold this generation.
    Written,
    /// The store already held this generation with the same bytes.
    AlreadyThere,
    /// The store held this generation with other bytes (another host or process wrote it):
    /// left in place, its bytes returned.
    Differs(bytes::Bytes),
}

/// Largest keyring read back from a store.
pub const MAX_KEYRING: u64 = 16 * 1024 * 1024;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("site", &self.site)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Asked before every write to a store: this host's claim on its namespace there (the one
/// implementation is `namespace::Claimant`; a trait so that this file does not import it).
pub(crate) trait WriteGuard: Send + Sync + std::fmt::Debug {
    /// `Ok` when this process may write to `store`; [`StoreError::Claim`] (or the store's own
    /// error while the claim was checked) otherwise.
    fn before_write<'a>(
        &'a self,
        store: &'a Store,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>>;
}

/// The three objects of one sealed object in a store.
pub(crate) struct ObjectPaths {
    pub(crate) data: ObjPath,
    pub(crate) key: ObjPath,
    pub(crate) manifest: ObjPath,
}

impl Store {
    /// This host's namespace in this store: where everything it writes lives.
    pub(crate) fn ns(&self) -> ObjPath {
        self.ns_of(&self.host)
    }
    /// The namespace of `host` in this store: `<prefix>/hosts/<host>`, or `<prefix>` itself for
    /// the one host that owns the root (a store written before hosts had namespaces).
    pub(crate) fn ns_of(&self, host: &str) -> ObjPath {
        if self.root_owner.as_deref() == Some(host) {
            self.prefix.clone()
        } else {
            self.prefix.clone().join("hosts").join(host)
        }
    }
    pub(crate) fn snapshot_dir(&self, source: &str, id: &SnapshotId) -> ObjPath {
        self.ns()
            .join("snapshots")
            .join(source)
            .join(id.to_string())
    }
    pub(crate) fn data_path(&self, source: &str, id: &SnapshotId) -> ObjPath {
        self.snapshot_dir(source, id).join("data")
    }
    pub(crate) fn key_path(&self, source: &str, id: &SnapshotId) -> ObjPath {
        self.snapshot_dir(source, id).join("key.json")
    }
    pub(crate) fn manifest_path(&self, source: &str, id: &SnapshotId) -> ObjPath {
        self.snapshot_dir(source, id).join("manifest.json")
    }
    /// `<prefix>/wal/<source>/<timeline>/<wal file name>`: one folder per WAL file, holding
    /// `manifest.json` (the commit, naming the sealed object's id) and `<id>.data` and
    /// `<id>.key.json` (an attempt that never committed leaves only those, under its own id).
    pub(crate) fn wal_dir(&self, source: &str, name: &crate::format::wal::WalName) -> ObjPath {
        self.wal_prefix(source)
            .join(name.timeline_hex())
            .join(name.as_str())
    }
    pub(crate) fn wal_prefix(&self, source: &str) -> ObjPath {
        self.ns().join("wal").join(source)
    }
    /// Where the data, key object and manifest of the object `m` describes are.
    pub(crate) fn object_paths(&self, m: &Manifest) -> Result<ObjectPaths, StoreError> {
        self.paths_of(m.kind, &m.source, &m.original_name, &m.snapshot)
    }
    pub(crate) fn paths_of(
        &self,
        kind: SnapshotKind,
        source: &str,
        original_name: &str,
        id: &SnapshotId,
    ) -> Result<ObjectPaths, StoreError> {
        if kind != SnapshotKind::Wal {
            return Ok(ObjectPaths {
                data: self.data_path(source, id),
                key: self.key_path(source, id),
                manifest: self.manifest_path(source, id),
            });
        }
        let name =
            crate::format::wal::WalName::parse(original_name).map_err(|e| StoreError::Setup {
                store: self.name.clone(),
                reason: e.to_string(),
            })?;
        let dir = self.wal_dir(source, &name);
        Ok(ObjectPaths {
            data: dir.clone().join(format!("{id}.data")),
            key: dir.clone().join(format!("{id}.key.json")),
            manifest: dir.join("manifest.json"),
        })
    }
    /// This store's committed manifest of WAL file `name` of `source` (it must describe that file).
    pub(crate) async fn wal_manifest(
        &self,
        source: &str,
        name: &str,
    ) -> Result<Manifest, StoreError> {
        let wal = crate::format::wal::WalName::parse(name).map_err(|e| StoreError::Setup {
            store: self.name.clone(),
            reason: e.to_string(),
        })?;
        let path = self.wal_dir(source, &wal).join("manifest.json");
        let bad = |reason| StoreError::BadObject {
            store: self.name.clone(),
            path: path.to_string(),
            reason,
        };
        let bytes = self
            .get_small(&path, crate::format::objects::MAX_SMALL_OBJECT)
            .await?;
        let m = Manifest::parse(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.source != source || m.original_name != name || m.kind != SnapshotKind::Wal {
            return Err(bad(format!(
                "it describes {} of source `{}`",
                m.original_name, m.source
            )));
        }
        Ok(m)
    }
    pub(crate) fn snapshots_prefix(&self) -> ObjPath {
        self.ns().join("snapshots")
    }
    pub(crate) fn keyring_dir(&self, provider: &str) -> ObjPath {
        self.ns().join("keyring").join(provider)
    }
    pub(crate) fn keyring_path(&self, provider: &str, generation: u64) -> ObjPath {
        self.keyring_dir(provider)
            .join(format!("{generation:020}.keyring"))
    }

    pub(crate) fn op_err(
        &self,
        op: &'static str,
        path: &ObjPath,
        source: object_store::Error,
    ) -> StoreError {
        StoreError::Op {
            store: self.name.clone(),
            op,
            path: path.to_string(),
            source,
        }
    }

    /// Put a decorator around the object store (a limit, a fault injector in tests): every
    /// method of this type then goes through it.
    pub(crate) fn wrap_object_store(
        &mut self,
        f: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) {
        self.inner = f(self.inner.clone());
    }

    pub async fn head(&self, path: &ObjPath) -> Result<ObjectMeta, StoreError> {
        self.inner
            .head(path)
            .await
            .map_err(|e| self.op_err("head", path, e))
    }

    /// True when the object is there, false when the store says it is not; an error otherwise.
    pub async fn exists(&self, path: &ObjPath) -> Result<bool, StoreError> {
        match self.head(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Open an object for streaming (the data object of a snapshot).
    pub async fn get(&self, path: &ObjPath) -> Result<GetResult, StoreError> {
        self.inner
            .get(path)
            .await
            .map_err(|e| self.op_err("get", path, e))
    }

    pub(crate) async fn get_range(
        &self,
        path: &ObjPath,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, StoreError> {
        self.inner
            .get_range(path, range)
            .await
            .map_err(|e| self.op_err("get", path, e))
    }

    /// Write an object, over any copy there.
    pub async fn put(&self, path: &ObjPath, body: PutPayload) -> Result<(), StoreError> {
        self.claimed().await?;
        self.put_unclaimed(path, body).await
    }

    /// This host's claim on its namespace here, before a write ([`WriteGuard`]).
    async fn claimed(&self) -> Result<(), StoreError> {
        match &self.claimant {
            Some(c) => c.before_write(self).await,
            None => Ok(()),
        }
    }

    /// `put` without the claim (the claim itself).
    pub(crate) async fn put_unclaimed(
        &self,
        path: &ObjPath,
        body: PutPayload,
    ) -> Result<(), StoreError> {
        self.inner
            .put(path, body)
            .await
            .map(|_| ())
            .map_err(|e| self.op_err("put", path, e))
    }

    /// Write an object that must not exist yet (`PutMode::Create`): an object already there is
    /// an error of kind [`ErrorKind::AlreadyExists`], and it is left as it was.
    pub(crate) async fn put_new(&self, path: &ObjPath, body: PutPayload) -> Result<(), StoreError> {
        self.claimed().await?;
        self.put_new_unclaimed(path, body).await
    }

    /// `put_new` without the claim (the claim itself).
    pub(crate) async fn put_new_unclaimed(
        &self,
        path: &ObjPath,
        body: PutPayload,
    ) -> Result<(), StoreError> {
        self.inner
            .put_opts(path, body, PutOptions::from(PutMode::Create))
            .await
            .map(|_| ())
            .map_err(|e| self.op_err("put", path, e))
    }

    /// Start a multipart upload (the data object of a snapshot).
    pub async fn put_multipart(
        &self,
        path: &ObjPath,
    ) -> Result<Box<dyn object_store::MultipartUpload>, StoreError> {
        self.claimed().await?;
        self.inner
            .put_multipart(path)
            .await
            .map_err(|e| self.op_err("put_multipart", path, e))
    }

    /// Delete an object; one already gone is not an error (deletions are retried after a crash).
    pub async fn delete(&self, path: &ObjPath) -> Result<(), StoreError> {
        self.claimed().await?;
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.op_err("delete", path, e)),
        }
    }

    /// Every object under `prefix`, recursively.
    pub async fn list(&self, prefix: &ObjPath) -> Result<Vec<ObjectMeta>, StoreError> {
        use futures::TryStreamExt;
        self.inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.op_err("list", prefix, e))
    }

    /// The first page of objects beneath `prefix` (is anything there?).
    pub(crate) async fn list_page(&self, prefix: &ObjPath) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner
            .list_with_delimiter(Some(prefix))
            .await
            .map(|l| l.objects)
            .map_err(|e| self.op_err("list", prefix, e))
    }

    /// A cheap call that proves the store answers (the daemon's probe).
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.inner
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.op_err("list", &self.prefix, e))
    }

    /// The keyring generations of `provider` in this store, oldest first, with their paths.
    /// Objects whose names are not generations are ignored.
    pub async fn keyrings(&self, provider: &str) -> Result<Vec<(u64, ObjPath)>, StoreError> {
        let mut out: Vec<(u64, ObjPath)> = self
            .list(&self.keyring_dir(provider))
            .await?
            .into_iter()
            .filter_map(|m| Some((keyring_generation(&m.location)?, m.location)))
            .collect();
        out.sort_by_key(|g| g.0);
        Ok(out)
    }

    pub(crate) async fn get_keyring(&self, path: &ObjPath) -> Result<bytes::Bytes, StoreError> {
        self.get_small(path, MAX_KEYRING).await
    }

    /// Write keyring `generation` of `provider`, never over another copy of that generation.
    pub(crate) async fn put_keyring_new(
        &self,
        provider: &str,
        generation: u64,
        bytes: &[u8],
    ) -> Result<KeyringPut, StoreError> {
        let path = self.keyring_path(provider, generation);
        match self.put_new(&path, bytes.to_vec().into()).await {
            Ok(()) => Ok(KeyringPut::Written),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let theirs = self.get_keyring(&path).await?;
                if theirs == bytes {
                    Ok(KeyringPut::AlreadyThere)
                } else {
                    Ok(KeyringPut::Differs(theirs))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Keep a destruction record under `<namespace>/destruction/<record>.json`.
    pub(crate) async fn put_destruction_record(
        &self,
        record: &str,
        json: &str,
    ) -> Result<(), StoreError> {
        let path = self.ns().join("destruction").join(format!("{record}.json"));
        self.put(&path, json.as_bytes().to_vec().into()).await
    }

    /// Rewrite a key object: conditional update where the store supports it.
    pub(crate) async fn put_key_object(&self, k: &KeyObject) -> Result<(), StoreError> {
        let path = self.key_path(&k.source, &k.snapshot);
        self.put_key_object_at(&path, k).await
    }

    /// Rewrite a key object at `path` (a WAL file's key object lives in its WAL folder).
    pub(crate) async fn put_key_object_at(
        &self,
        path: &ObjPath,
        k: &KeyObject,
    ) -> Result<(), StoreError> {
        let path = path.clone();
        let body = k.to_json();
        self.claimed().await?;
        let mode = match self.head(&path).await {
            Ok(meta) => PutMode::Update(UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            }),
            Err(e) if e.is_not_found() => PutMode::Create,
            Err(e) => return Err(e),
        };
        match self
            .inner
            .put_opts(&path, body.clone().into(), PutOptions::from(mode))
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => self.put(&path, body.into()).await,
            Err(e) => Err(self.op_err("put", &path, e)),
        }
    }

    /// Read a small object (manifest, key object, keyring) with a size cap checked before reading.
    pub(crate) async fn get_small(
        &self,
        path: &ObjPath,
        cap: u64,
    ) -> Result<bytes::Bytes, StoreError> {
        let r = self
            .inner
            .get(path)
            .await
            .map_err(|e| self.op_err("get", path, e))?;
        if r.meta.size > cap {
            return Err(StoreError::BadObject {
                store: self.name.clone(),
                path: path.to_string(),
                reason: format!("{} bytes, more than the {cap} allowed", r.meta.size),
            });
        }
        r.bytes().await.map_err(|e| self.op_err("get", path, e))
    }

    pub async fn get_manifest(
        &self,
        source: &str,
        id: &SnapshotId,
    ) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(source, id);
        let bytes = self
            .get_small(&path, crate::format::objects::MAX_SMALL_OBJECT)
            .await?;
        let m = Manifest::parse(&bytes).map_err(|e| StoreError::BadObject {
            store: self.name.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if m.snapshot != *id || m.source != source {
            return Err(StoreError::BadObject {
                store: self.name.clone(),
                path: path.to_string(),
                reason: format!(
                    "it describes snapshot {} of source `{}`",
                    m.snapshot, m.source
                ),
            });
        }
        Ok(m)
    }

    pub async fn get_key_object(
        &self,
        source: &str,
        id: &SnapshotId,
    ) -> Result<KeyObject, StoreError> {
        let path = self.key_path(source, id);
        let bytes = self
            .get_small(&path, crate::format::objects::MAX_SMALL_OBJECT)
            .await?;
        let k = KeyObject::parse(&bytes).map_err(|e| StoreError::BadObject {
            store: self.name.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if k.snapshot != *id {
            return Err(StoreError::BadObject {
                store: self.name.clone(),
                path: path.to_string(),
                reason: format!("it belongs to snapshot {}", k.snapshot),
            });
        }
        Ok(k)
    }

    /// Every manifest in this store: (source, snapshot id) pairs, from the object listing.
    pub async fn list_manifests(&self) -> Result<Vec<(String, SnapshotId)>, StoreError> {
        self.list_manifests_under(&self.snapshots_prefix()).await
    }

    /// Every manifest beneath `prefix` (a `snapshots` folder).
    pub(crate) async fn list_manifests_under(
        &self,
        prefix: &ObjPath,
    ) -> Result<Vec<(String, SnapshotId)>, StoreError> {
        use futures::TryStreamExt;
        let prefix = prefix.clone();
        let mut out = Vec::new();
        let mut stream = self.inner.list(Some(&prefix));
        while let Some(meta) = stream
            .try_next()
            .await
            .map_err(|e| self.op_err("list", &prefix, e))?
        {
            let parts: Vec<_> = meta.location.parts().collect();
            let n = parts.len();
            if n >= 3 && parts[n - 1].as_ref() == "manifest.json" {
                if let Ok(id) = parts[n - 2].as_ref().parse::<SnapshotId>() {
                    out.push((parts[n - 3].as_ref().to_string(), id));
                }
            }
        }
        out.sort_by_key(|x| x.1);
        Ok(out)
    }
}

/// Build every configured store.
pub fn build(config: &Config) -> Result<Vec<Store>, StoreError> {
    config.stores.iter().map(|s| build_one(config, s)).collect()
}

fn retry_config(config: &Config) -> RetryConfig {
    RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: config.replication.backoff,
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: config.replication.retries as usize,
        retry_timeout: Duration::from_secs(60),
    }
}

fn client_options(loopback_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(loopback_http)
}

/// A store credential from an environment variable or a file (owner, mode and presence of the
/// file checked), held as a secret until handed to the store's client.
fn read_secret(
    store: &str,
    env: Option<&String>,
    file: Option<&std::path::PathBuf>,
) -> Result<Option<SecretString>, StoreError> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(|v| Some(SecretString::from(v)))
            .map_err(|_| StoreError::Setup {
                store: store.to_string(),
                reason: format!("environment variable {var} is not set"),
            });
    }
    if let Some(path) = file {
        return crate::config::read_secret_file(path)
            .map(Some)
            .map_err(|e| StoreError::Setup {
                store: store.to_string(),
                reason: e.to_string(),
            });
    }
    Ok(None)
}

fn build_one(config: &Config, s: &StoreConfig) -> Result<Store, StoreError> {
    let loopback_http = s
        .endpoint
        .as_deref()
        .and_then(|e| url::Url::parse(e).ok())
        .map(|u| u.scheme() == "http" && is_loopback_host(&u))
        .unwrap_or(false);
    let inner = match s.kind {
        StoreKind::Local => local(s)?,
        StoreKind::S3 => s3(config, s, loopback_http)?,
        StoreKind::Azure => azure(config, s, loopback_http)?,
        StoreKind::Gcs => gcs(config, s)?,
    };
    Ok(Store {
        name: s.name.clone(),
        site: s.site.clone(),
        jurisdiction: s.jurisdiction.clone(),
        kind: s.kind,
        prefix: ObjPath::from(s.prefix.as_str()),
        host: config.host(),
        root_owner: None,
        claimant: None,
        inner,
    })
}

fn setup_err(s: &StoreConfig, reason: String) -> StoreError {
    StoreError::Setup {
        store: s.name.clone(),
        reason,
    }
}

/// A local folder (created private when absent).
fn local(s: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let path = s
        .path
        .as_ref()
        .ok_or_else(|| setup_err(s, "a local store needs path".into()))?;
    crate::fsutil::create_private_dir(path)
        .map_err(|e| setup_err(s, format!("cannot create {}: {e}", path.display())))?;
    Ok(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| setup_err(s, e.to_string()))?,
    ))
}

/// S3 or S3-compatible; plain http only to a loopback endpoint.
fn s3(
    config: &Config,
    s: &StoreConfig,
    loopback_http: bool,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(s.bucket.clone().unwrap_or_default())
        .with_region(s.region.clone().unwrap_or_else(|| "us-east-1".into()))
        .with_virtual_hosted_style_request(s.virtual_hosted_style)
        .with_retry(retry_config(config))
        .with_client_options(client_options(loopback_http));
    if let Some(ep) = &s.endpoint {
        b = b.with_endpoint(ep.clone());
    }
    if let Some(ak) = read_secret(
        &s.name,
        s.access_key_id_env.as_ref(),
        s.access_key_id_file.as_ref(),
    )? {
        b = b.with_access_key_id(ak.expose_secret());
    }
    if let Some(sk) = read_secret(
        &s.name,
        s.secret_access_key_env.as_ref(),
        s.secret_access_key_file.as_ref(),
    )? {
        b = b.with_secret_access_key(sk.expose_secret());
    }
    Ok(Arc::new(
        b.build().map_err(|e| setup_err(s, e.to_string()))?,
    ))
}

/// Azure Blob (or Azurite on a loopback endpoint).
fn azure(
    config: &Config,
    s: &StoreConfig,
    loopback_http: bool,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_account(s.account.clone().unwrap_or_default())
        .with_container_name(s.container.clone().unwrap_or_default())
        .with_retry(retry_config(config))
        .with_client_options(client_options(loopback_http));
    if let Some(ep) = &s.endpoint {
        b = b.with_endpoint(ep.clone()).with_allow_http(loopback_http);
    }
    if let Some(k) = read_secret(
        &s.name,
        s.access_key_env.as_ref(),
        s.access_key_file.as_ref(),
    )? {
        b = b.with_access_key(k.expose_secret());
    }
    Ok(Arc::new(
        b.build().map_err(|e| setup_err(s, e.to_string()))?,
    ))
}

/// Google Cloud Storage.
fn gcs(config: &Config, s: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(s.bucket.clone().unwrap_or_default())
        .with_retry(retry_config(config))
        .with_client_options(client_options(false));
    if let Some(f) = &s.service_account_file {
        b = b.with_service_account_path(f.display().to_string());
    }
    Ok(Arc::new(
        b.build().map_err(|e| setup_err(s, e.to_string()))?,
    ))
}

/// The generation in a keyring object's name (`<generation>.keyring`).
fn keyring_generation(location: &ObjPath) -> Option<u64> {
    location.filename()?.strip_suffix(".keyring")?.parse().ok()
}

/// The WAL file a listed `…/<timeline>/<name>/manifest.json` commits (its timeline folder
/// must match its name).
pub(crate) fn wal_manifest_name(location: &str) -> Option<crate::format::wal::WalName> {
    let mut parts = location.rsplit('/');
    let (file, name, timeline) = (parts.next()?, parts.next()?, parts.next()?);
    let name = crate::format::wal::WalName::parse(name).ok()?;
    (file == "manifest.json" && name.timeline_hex() == timeline).then_some(name)
}
