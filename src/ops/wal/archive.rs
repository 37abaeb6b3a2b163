//! WAL archiving for point-in-time recovery: `coffre wal-push` (PostgreSQL's `archive_command`)
//! seals one WAL file like a snapshot (a fresh data key, wrapped under the epoch of the day its
//! recovery window ends, the same bytes in every store, manifest last) under
//! `wal/<source>/<timeline>/<name>/`; `coffre wal-fetch` (`restore_command`) opens it again from
//! any store that has a good copy.
//!
//! A name is archived once: pushing it again with the same bytes succeeds (PostgreSQL retries
//! after a crash or a timeout, and the copy is completed in the stores that lack it); different
//! bytes under an archived name are refused, so a WAL file is never acknowledged twice with
//! different contents.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::format::wal::WalName;
use crate::ids::SnapshotId;
use crate::ops::snapshot::protect::{PipelineError, What};
use crate::store::{KeyObject, Manifest, Store};

/// Largest WAL file accepted (PostgreSQL's `--wal-segsize` goes up to 1 GiB; a push and a fetch
/// hold one file in memory).
pub const MAX_WAL_FILE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Name(#[from] crate::format::wal::WalNameError),
    #[error("`{}` is not a recovery session id (1 to 64 letters, digits and dashes)", .0.escape_debug())]
    NotASession(String),
    #[error("source `{0}` does not archive WAL: add a `[source.pitr]` table (e.g. `window = \"14d\"`) to its `[[source]]` in the config, then reload")]
    NotArchiving(String),
    #[error("unknown source `{0}`; configured: {1}")]
    UnknownSource(String, String),
    #[error("cannot read WAL file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WAL file {0} is archived already with DIFFERENT bytes (sealed object {1}): refused, so that PostgreSQL never has two versions of one WAL file acknowledged. Check that two clusters do not archive into the same source, then remove the WAL file from pg_wal or point archive_command at another source")]
    Conflict(String, SnapshotId),
    #[error("WAL file {name} is archived in {sites} site(s), fewer than replication.min-sites = {min}: not acknowledged; PostgreSQL retries ({detail})")]
    TooFewSites {
        name: String,
        sites: usize,
        min: usize,
        detail: String,
    },
    #[error("WAL file {name} pushed is not the entry of that name in the source's pg_wal {dir} ({why}): refused; push the file PostgreSQL names (%p) from that folder, or correct `[source.pitr] pg-wal`")]
    NotInPgWal {
        name: String,
        dir: PathBuf,
        why: String,
    },
    #[error("the WAL file to push must come open with the request: {0}. Use the coffre binary of the daemon's version (it passes the file's descriptor; the daemon never opens a caller's path)")]
    NotPassed(String),
    #[error("recovery session {0} was not opened by coffre: refused. A point-in-time restore (`coffre restore --target-*`) or drill opens the session its restore_command names; restore again for a session of your own")]
    UnknownSession(String),
    #[error("recovery session {0} belongs to another caller, source or store: refused. A recovery session is bound to the account, the source and the store of its first fetch; start your own restore (coffre restore --target-*) for a session of your own")]
    ForeignSession(String),
    #[error("WAL file {0} waits in the spool with DIFFERENT bytes: refused, so that PostgreSQL never has two versions of one WAL file acknowledged. Check that two clusters do not archive into the same source")]
    SpoolConflict(String),
    #[error("unknown store `{0}`; configured: {1}")]
    UnknownStore(String, String),
    #[error("WAL file {0} is not archived in any store")]
    NotArchived(String),
    #[error("WAL file {name} could not be read from any store: {reasons}. Run `coffre verify` to see each store's copy (the scrub repairs a bad copy from a good one); a store that cannot be reached may hold it: fetch again once it is back")]
    Unreadable { name: String, reasons: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("access log: {0}")]
    Audit(String),
}

/// Why one store's copy of a WAL file cannot be used (the fetch then tries the next store; the
/// message names the store).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    KeyObject(#[from] crate::format::objects::KeyObjectError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Seal(#[from] crate::format::seal::SealError),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("decompressing: {0}")]
    Decompress(std::io::Error),
    #[error("{decompressed} bytes decompressed, manifest says {manifest}")]
    PlainSize { decompressed: u64, manifest: u64 },
    #[error("manifest has no plaintext digest")]
    NoDigest,
    #[error("plaintext digest does not match the manifest")]
    PlainDigest,
    #[error("key object belongs to {snapshot} of `{of_source}`")]
    KeyOfAnother {
        snapshot: SnapshotId,
        of_source: String,
    },
    #[error("key object and manifest {check}: the copy is treated as tampered with")]
    NotAuthentic { check: String },
    #[error("manifest names {size} bytes, more than a WAL file may hold")]
    TooLarge { size: u64 },
    #[error("reading {path}: {source}")]
    ReadData {
        path: String,
        source: object_store::Error,
    },
    #[error("{stored} bytes stored, {sealed} sealed")]
    SealedSize { stored: u64, sealed: u64 },
    #[error("sealed bytes do not match the manifest's SHA-256")]
    SealedDigest,
    #[error("the copy is not WAL file {name} ({source}): treated as tampered with or mislabelled")]
    NotThatWal {
        name: String,
        source: crate::format::wal::WalHeaderError,
    },
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub name: String,
    pub object: SnapshotId,
    /// True when the name was archived already with the same bytes.
    pub already: bool,
    pub stores: Vec<String>,
}

pub(crate) fn archiving_source(app: &Coffre, source: &str) -> Result<(), WalError> {
    let s = app
        .config
        .source(source)
        .ok_or_else(|| WalError::UnknownSource(source.to_string(), app.config.source_names()))?;
    match s.pitr {
        Some(_) => Ok(()),
        None => Err(WalError::NotArchiving(source.to_string())),
    }
}

pub(crate) fn wal_name(path: &Path) -> Result<WalName, WalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    WalName::parse(&name).map_err(WalError::Name)
}

/// Archive the WAL file `file` (open already; `path` names it, and its last part is the WAL
/// name) for `source`: Ok only when it is committed in at least `replication.min-sites` sites.
/// The file is read from its descriptor only: through the daemon it is the one the caller
/// passed, and no path of the caller's is ever opened.
pub async fn push(
    app: &Coffre,
    source: &str,
    path: &Path,
    file: &std::fs::File,
    actor: &str,
) -> Result<Pushed, WalError> {
    archiving_source(app, source)?;
    let name = wal_name(path)?;
    push_named(app, source, &name, (path, file), actor).await
}

/// [`push`] for a caller that checked the source archives and parsed the WAL name already
/// (`coffre wal-push`).
pub async fn push_named(
    app: &Coffre,
    source: &str,
    name: &WalName,
    (path, file): (&Path, &std::fs::File),
    actor: &str,
) -> Result<Pushed, WalError> {
    let copies = committed_copies(app, source, name, None).await;
    if let Some((_, m)) = copies
        .iter()
        .find_map(|(s, r)| r.as_ref().ok().map(|m| (s, m)))
    {
        return repush(app, source, name, (path, file), m.clone(), actor).await;
    }
    let outcome = crate::ops::snapshot::protect::protect_as(
        app,
        source,
        crate::ops::snapshot::protect::Input::Open { file, path },
        SnapshotId::new(),
        What::Wal(name.clone()),
    )
    .await
    .map_err(|e| match e {
        PipelineError::AtRisk {
            committed,
            min_sites,
            failures,
            ..
        } => WalError::TooFewSites {
            name: name.to_string(),
            sites: committed,
            min: min_sites,
            detail: failures,
        },
        e => WalError::Pipeline(e),
    })?;
    index(app, &outcome.manifest, &outcome.epoch);
    for s in &outcome.committed {
        note_uploaded(s, outcome.manifest.sealed_size);
    }
    Ok(Pushed {
        name: name.to_string(),
        object: outcome.manifest.snapshot,
        already: false,
        stores: outcome.committed,
    })
}

type Copy<'a> = (&'a Store, Result<Manifest, crate::store::StoreError>);

/// The stores a fetch reads from: every store, or only the one it is pinned to (a drill proves
/// that one store alone brings the database back).
fn reading_stores<'a>(app: &'a Coffre, pin: Option<&str>) -> Vec<&'a Store> {
    app.stores
        .iter()
        .filter(|s| pin.is_none_or(|p| s.name == p))
        .collect()
}

/// Every store's manifest of `name` (not found and unreachable as errors), or only the pinned
/// store's.
async fn committed_copies<'a>(
    app: &'a Coffre,
    source: &str,
    name: &WalName,
    pin: Option<&str>,
) -> Vec<Copy<'a>> {
    let reads = reading_stores(app, pin).into_iter().map(|s| async move {
        let r = s.wal_manifest(source, name.as_str()).await;
        (s, r)
    });
    futures::future::join_all(reads).await
}

/// The name is archived already: same bytes, complete the copy where it is missing; other
/// bytes, refuse.
async fn repush(
    app: &Coffre,
    source: &str,
    name: &WalName,
    (path, file): (&Path, &std::fs::File),
    manifest: Manifest,
    actor: &str,
) -> Result<Pushed, WalError> {
    let local = read_open(path, file)?;
    let digest: [u8; 32] = Sha256::digest(&local).into();
    if conflicts::known(source, name, &digest) {
        tracing::warn!(source, wal = %name, object = %manifest.snapshot, "a WAL file found with different bytes within the last hour was pushed again, the same bytes: refused without opening the archived copy again");
        return Err(WalError::Conflict(name.to_string(), manifest.snapshot));
    }
    log_access(
        app,
        actor,
        "wal-push-compare",
        source,
        &manifest,
        None,
        "compare a re-pushed WAL file with its archived copy",
    )?;
    let (archived, sealed, key) = open_any(app, source, name, &manifest, None).await?;
    if archived != local {
        tracing::error!(source, wal = %name, object = %manifest.snapshot, "a WAL file was pushed again with different bytes: refused");
        conflicts::remember(source, name, digest);
        return Err(WalError::Conflict(name.to_string(), manifest.snapshot));
    }
    let mut stores = Vec::new();
    let mut failures = Vec::new();
    for (s, r) in committed_copies(app, source, name, None).await {
        match r {
            Ok(m) if m == manifest => stores.push(s),
            Ok(_) => failures.push(format!("{}: holds another object under this name", s.name)),
            Err(e) if e.is_not_found() => match copy_into(app, s, &manifest, &key, &sealed).await {
                Ok(()) => {
                    note_uploaded(&s.name, sealed.len() as u64);
                    stores.push(s)
                }
                Err(e) => failures.push(format!("{}: {e}", s.name)),
            },
            Err(e) => failures.push(format!("{}: {e}", s.name)),
        }
    }
    let sites: std::collections::BTreeSet<&str> = stores.iter().map(|s| s.site.as_str()).collect();
    let min = app.config.replication.min_sites;
    if sites.len() < min {
        return Err(WalError::TooFewSites {
            name: name.to_string(),
            sites: sites.len(),
            min,
            detail: failures.join("; "),
        });
    }
    index(app, &manifest, &key.epoch);
    Ok(Pushed {
        name: name.to_string(),
        object: manifest.snapshot,
        already: true,
        stores: stores.iter().map(|s| s.name.clone()).collect(),
    })
}

/// Sealed WAL bytes this process wrote to each store and the daemon's status has not counted
/// yet: the status adds them to `coffre_uploaded_bytes_total` ([`take_uploaded`]), beside the
/// snapshots' bytes.
static UPLOADED: std::sync::LazyLock<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

fn note_uploaded(store: &str, bytes: u64) {
    let mut m = UPLOADED.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(store.to_string()).or_default() += bytes;
}

/// The sealed WAL bytes written to each store since the last call.
pub fn take_uploaded() -> std::collections::BTreeMap<String, u64> {
    std::mem::take(&mut *UPLOADED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The catalog's WAL index (for the status); the stores hold the archive, so a failure here
/// does not undo an acknowledged push.
fn index(app: &Coffre, m: &Manifest, epoch: &crate::ids::EpochId) {
    if let Err(e) = app.catalog.put_wal(m, epoch) {
        tracing::warn!(error = %e, wal = %m.original_name, "cannot record the archived WAL file in the catalog");
    }
}

/// Write the same sealed object into a store that lacks it, through the one commit protocol.
async fn copy_into(
    app: &Coffre,
    s: &Store,
    manifest: &Manifest,
    key: &KeyObject,
    sealed: &[u8],
) -> Result<(), crate::store::StoreError> {
    let paths = s.object_paths(manifest)?;
    s.put(&paths.data, sealed.to_vec().into()).await?;
    crate::ops::snapshot::commit::commit(
        app,
        s,
        manifest,
        key,
        crate::ops::snapshot::commit::Existing::Refuse,
    )
    .await
}

/// All of an open WAL file (at most [`MAX_WAL_FILE`] bytes), from its descriptor.
pub(crate) fn read_open(path: &Path, file: &std::fs::File) -> Result<Vec<u8>, WalError> {
    crate::fsutil::read_all_at(file, MAX_WAL_FILE).map_err(|source| WalError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Open a WAL file of the caller's own (a push run in the caller's process, not through the
/// daemon; the spool's own files): never through a symlink, a regular file.
pub fn open_wal_file(path: &Path) -> Result<std::fs::File, WalError> {
    crate::ops::snapshot::protect::open_regular(path).map_err(|source| WalError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Where the source names its `pg_wal` folder: the file pushed must be that folder's entry of
/// its name, reached with no symlink (the same device and inode), so that the archiver cannot
/// archive a file from elsewhere under a WAL name.
pub fn check_in_pg_wal(
    app: &Coffre,
    source: &str,
    name: &WalName,
    file: &std::fs::File,
) -> Result<(), WalError> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = app
        .config
        .source(source)
        .and_then(|s| s.pitr.as_ref())
        .and_then(|p| p.pg_wal.as_deref())
    else {
        return Ok(());
    };
    let entry = crate::ops::snapshot::protect::open_regular_beneath(dir, Path::new(name.as_str()))
        .and_then(|e| e.metadata());
    let pushed = file.metadata();
    match (entry, pushed) {
        (Ok(e), Ok(p)) if e.dev() == p.dev() && e.ino() == p.ino() => Ok(()),
        (Err(e), _) => Err(WalError::NotInPgWal {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            why: e.to_string(),
        }),
        _ => Err(WalError::NotInPgWal {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            why: "the file pushed is another file".into(),
        }),
    }
}

/// Re-pushes found to differ from their archived copy: PostgreSQL retries a failed
/// `archive_command` (about once a minute), and each comparison opens the archived copy, one
/// `wal-push-compare` entry in the access log. The same bytes pushed again under the same name
/// within [`conflicts::MEMORY`] are refused from here, without opening it or logging again: one
/// entry per name per hour, not one per retry. (In one process: through the daemon, where
/// PostgreSQL's pushes go.)
mod conflicts {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use crate::format::wal::WalName;

    pub const MEMORY: Duration = Duration::from_secs(3600);

    type Seen = HashMap<(String, String), (Instant, [u8; 32])>;
    static SEEN: LazyLock<Mutex<Seen>> = LazyLock::new(Default::default);

    fn seen() -> MutexGuard<'static, Seen> {
        SEEN.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `digest` (of the bytes pushed) was found to differ from the archived `name` within the
    /// last hour.
    pub fn known(source: &str, name: &WalName, digest: &[u8; 32]) -> bool {
        let key = (source.to_string(), name.to_string());
        seen()
            .get(&key)
            .is_some_and(|(t, d)| t.elapsed() < MEMORY && d == digest)
    }

    pub fn remember(source: &str, name: &WalName, digest: [u8; 32]) {
        let mut s = seen();
        s.retain(|_, (t, _)| t.elapsed() < MEMORY);
        s.insert(
            (source.to_string(), name.to_string()),
            (Instant::now(), digest),
        );
    }
}

fn log_access(
    app: &Coffre,
    actor: &str,
    action: &str,
    source: &str,
    m: &Manifest,
    store: Option<&str>,
    purpose: &str,
) -> Result<(), WalError> {
    app.audit
        .append(NewEntry {
            actor: actor.to_string(),
            action: action.to_string(),
            target: Target {
                source: Some(source.to_string()),
                snapshot: Some(m.snapshot.to_string()),
                store: store.map(str::to_string),
                sealed_sha256: Some(m.sealed_sha256.clone()),
                epoch: None,
            },
            purpose: purpose.to_string(),
            outcome: format!("WAL file {}", m.original_name),
            exposes: Some(format!(
                "the changes to every patient's records in WAL file {}",
                m.original_name
            )),
        })
        .map(|_| ())
        .map_err(|e| WalError::Audit(e.to_string()))
}

/// The plaintext of `manifest`'s object from the first store with a good copy (checked: key
/// object authentic, sealed hash, every segment, keyed plaintext digest), with its sealed bytes
/// and key object.
async fn open_any(
    app: &Coffre,
    source: &str,
    name: &WalName,
    manifest: &Manifest,
    pin: Option<&str>,
) -> Result<(Vec<u8>, Vec<u8>, KeyObject), WalError> {
    open_checked(app, source, name, manifest, pin, false).await
}

/// [`open_any`] for a WAL file about to be served to a replay: a copy whose first page header
/// does not match its name ([`crate::format::wal::check_first_page`]) is a tampered copy, and
/// the next store is tried.
async fn open_served(
    app: &Coffre,
    source: &str,
    name: &WalName,
    manifest: &Manifest,
    pin: Option<&str>,
) -> Result<Vec<u8>, WalError> {
    let (plain, _, _) = open_checked(app, source, name, manifest, pin, true).await?;
    Ok(plain)
}

/// The WAL file's bytes as served: their first page must be the one the name says.
fn header_matches(name: &WalName, plain: &[u8]) -> Result<(), CopyError> {
    crate::format::wal::check_first_page(name, plain).map_err(|source| CopyError::NotThatWal {
        name: name.to_string(),
        source,
    })
}

async fn open_checked(
    app: &Coffre,
    source: &str,
    name: &WalName,
    manifest: &Manifest,
    pin: Option<&str>,
    served: bool,
) -> Result<(Vec<u8>, Vec<u8>, KeyObject), WalError> {
    let mut reasons = Vec::new();
    for s in reading_stores(app, pin) {
        let opened = open_from(app, s, manifest).await.and_then(|x| {
            if served {
                header_matches(name, &x.0)?;
            }
            Ok(x)
        });
        match opened {
            Ok(x) => return Ok(x),
            Err(e) => {
                tracing::warn!(store = %s.name, source, wal = %name, error = %e, "WAL copy unusable; trying the next store");
                reasons.push(format!("{}: {e}", s.name));
            }
        }
    }
    Err(WalError::Unreadable {
        name: name.to_string(),
        reasons: reasons.join("; "),
    })
}

async fn open_from(
    app: &Coffre,
    s: &Store,
    m: &Manifest,
) -> Result<(Vec<u8>, Vec<u8>, KeyObject), CopyError> {
    let (key, sealed) = read_sealed(app, s, m).await?;
    let dek = crate::keys::unwrap_dek(&app.providers, &key)?;
    let compressed =
        crate::format::seal::open_to_vec(&dek, &sealed, Some(&m.snapshot.to_string()))?;
    let mut plain = Vec::with_capacity(m.size as usize);
    let mut dec = zstd::stream::read::Decoder::new(&compressed[..]).map_err(CopyError::Io)?;
    std::io::copy(&mut std::io::Read::take(&mut dec, m.size + 1), &mut plain)
        .map_err(CopyError::Decompress)?;
    if plain.len() as u64 != m.size {
        return Err(CopyError::PlainSize {
            decompressed: plain.len() as u64,
            manifest: m.size,
        });
    }
    let header = crate::format::seal::Header::decode(&sealed)?;
    let (alg, want) = m.plaintext_digest().ok_or(CopyError::NoDigest)?;
    let mut mac =
        crate::ops::snapshot::protect::PlainMac::new(alg, &dek, &header).map_err(CopyError::Io)?;
    mac.update(&plain);
    if hex::encode(mac.finalize()) != want {
        return Err(CopyError::PlainDigest);
    }
    Ok((plain, sealed, key))
}

/// The pieces of `m`'s opening that need no key: its key object (authentic where the providers
/// can tell) and its sealed bytes (size and SHA-256 as the manifest says).
pub(crate) async fn read_sealed(
    app: &Coffre,
    s: &Store,
    m: &Manifest,
) -> Result<(KeyObject, Vec<u8>), CopyError> {
    let paths = s.object_paths(m)?;
    let kb = s
        .get_small(&paths.key, crate::format::objects::MAX_SMALL_OBJECT)
        .await?;
    let key = KeyObject::parse(&kb)?;
    if key.snapshot != m.snapshot || key.source != m.source {
        return Err(CopyError::KeyOfAnother {
            snapshot: key.snapshot,
            of_source: key.source,
        });
    }
    // Only an authentic key object opens a WAL copy, as for a snapshot: one that no configured
    // provider can check (its tags name another provider) is treated as tampered with.
    let check = crate::auth::ObjectAuth::for_reading(&app.providers).check(&key, m);
    if !check.is_authentic() {
        return Err(CopyError::NotAuthentic {
            check: check.to_string(),
        });
    }
    if m.sealed_size > MAX_WAL_FILE + (1 << 20) || m.size > MAX_WAL_FILE {
        return Err(CopyError::TooLarge { size: m.size });
    }
    let sealed = s
        .get(&paths.data)
        .await?
        .bytes()
        .await
        .map_err(|source| CopyError::ReadData {
            path: paths.data.to_string(),
            source,
        })?;
    if sealed.len() as u64 != m.sealed_size {
        return Err(CopyError::SealedSize {
            stored: sealed.len() as u64,
            sealed: m.sealed_size,
        });
    }
    if hex::encode(Sha256::digest(&sealed)) != m.sealed_sha256 {
        return Err(CopyError::SealedDigest);
    }
    Ok((key, sealed.to_vec()))
}

/// A recovery session not used for this long is forgotten (opened by a restore whose copy was
/// never started, or ended long ago): a copy started after that is restored again.
pub const SESSION_KEPT: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// A recovery session with no fetch for this long is closed: its summary goes to the access log.
pub const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
/// Segments fetched ahead of PostgreSQL in a recovery session (through the daemon).
const PREFETCH: u64 = 3;
/// Plaintext WAL held ahead at most, and for how long.
const PREFETCH_MAX_BYTES: usize = 96 << 20;
const PREFETCH_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// (source, WAL file, pinned store, recovery session): prefetched WAL belongs to its session,
/// and only a fetch of that session (bound to its caller and source) takes it.
type Key = (String, String, Option<String>, String);

#[derive(Default)]
struct Prefetched {
    ready: std::collections::HashMap<Key, (std::time::Instant, Manifest, Vec<u8>)>,
    inflight: std::collections::HashSet<Key>,
}

impl Prefetched {
    fn bytes(&self) -> usize {
        self.ready.values().map(|(_, _, b)| b.len()).sum()
    }
    fn expire(&mut self) {
        self.ready.retain(|_, (t, _, _)| t.elapsed() < PREFETCH_TTL);
    }
}

static PREFETCHED: std::sync::LazyLock<std::sync::Mutex<Prefetched>> =
    std::sync::LazyLock::new(Default::default);

fn prefetched() -> std::sync::MutexGuard<'static, Prefetched> {
    PREFETCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// WAL files served from the prefetch (`coffre_wal_prefetch_hits_total`), until the status
/// moves them into the counter kept in the catalog.
pub static PREFETCH_HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A prefetched WAL file, waiting for its prefetch when one is under way (PostgreSQL replays a
/// quiet segment faster than a store hands over the next one).
async fn take_prefetched(key: &Key) -> Option<(Manifest, Vec<u8>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        {
            let mut p = prefetched();
            p.expire();
            if let Some((_, m, b)) = p.ready.remove(key) {
                return Some((m, b));
            }
            if !p.inflight.contains(key) || std::time::Instant::now() > deadline {
                return None;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The committed manifest of `name` in the first store that has one.
async fn locate(
    app: &Coffre,
    source: &str,
    name: &WalName,
    pin: Option<&str>,
) -> Result<Manifest, WalError> {
    let copies = committed_copies(app, source, name, pin).await;
    if let Some(m) = copies.iter().find_map(|(_, r)| r.as_ref().ok().cloned()) {
        return Ok(m);
    }
    let reasons: Vec<String> = copies
        .iter()
        .filter_map(|(s, r)| match r {
            Err(e) if !e.is_not_found() => Some(format!("{}: {e}", s.name)),
            _ => None,
        })
        .collect();
    Err(if reasons.is_empty() {
        WalError::NotArchived(name.to_string())
    } else {
        WalError::Unreadable {
            name: name.to_string(),
            reasons: reasons.join("; "),
        }
    })
}

/// The segment `k` places after `name` on its timeline (`size`: the segment size).
fn segment_after(name: &WalName, k: u64, size: u64) -> Option<WalName> {
    if name.kind() != crate::format::wal::WalFileKind::Segment {
        return None;
    }
    let per_log = crate::format::wal::segments_per_log(size);
    let p = name.position();
    let linear = (p >> 32) * per_log + (p & 0xFFFF_FFFF) + k;
    let next = format!(
        "{}{:08X}{:08X}",
        &name.as_str()[..8],
        linear / per_log,
        linear % per_log
    );
    WalName::parse(&next).ok()
}

/// Fetch the next segments of a recovery session in the background, so that PostgreSQL's next
/// `restore_command` finds them opened already (and checked like any fetch).
fn prefetch_after(
    app: std::sync::Arc<Coffre>,
    (source, session): (&str, &str),
    name: &WalName,
    size: u64,
    pin: Option<&str>,
) {
    for k in 1..=PREFETCH {
        let Some(next) = segment_after(name, k, size) else {
            return;
        };
        let key = (
            source.to_string(),
            next.to_string(),
            pin.map(str::to_string),
            session.to_string(),
        );
        {
            let mut p = prefetched();
            p.expire();
            if p.ready.contains_key(&key)
                || p.inflight.contains(&key)
                || p.bytes() + size as usize > PREFETCH_MAX_BYTES
            {
                continue;
            }
            p.inflight.insert(key.clone());
        }
        let app = app.clone();
        tokio::spawn(async move {
            let r = async {
                let m = locate(&app, &key.0, &next, key.2.as_deref()).await?;
                let plain = open_served(&app, &key.0, &next, &m, key.2.as_deref()).await?;
                Ok::<_, WalError>((m, plain))
            }
            .await;
            let mut p = prefetched();
            p.inflight.remove(&key);
            if let Ok((m, plain)) = r {
                if p.bytes() + plain.len() <= PREFETCH_MAX_BYTES {
                    p.ready.insert(key, (std::time::Instant::now(), m, plain));
                }
            }
        });
    }
}

/// Close the recovery sessions idle for [`SESSION_IDLE`]: one access-log entry each with what
/// it fetched.
pub fn close_idle_sessions(app: &Coffre) {
    let before = time::OffsetDateTime::now_utc() - SESSION_IDLE;
    let before = before
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let forget = (time::OffsetDateTime::now_utc() - SESSION_KEPT)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    if let Err(e) = app.catalog.forget_wal_sessions(&forget) {
        tracing::warn!(error = %e, "cannot forget old recovery sessions");
    }
    let sessions = match app.catalog.take_idle_wal_sessions(&before) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the recovery sessions");
            return;
        }
    };
    for s in sessions {
        let r = app.audit.append(NewEntry {
            actor: s.actor.clone(),
            action: "wal-fetch".into(),
            target: Target {
                source: Some(s.source.clone()),
                ..Default::default()
            },
            purpose: s.purpose.clone(),
            outcome: format!(
                "ended: recovery session {}: {} WAL file(s), {} to {}, fetched from {} to {} ({} from the prefetch, {:.1} s serving fetches)",
                s.id,
                s.count,
                s.first,
                s.last,
                s.started,
                s.last_at,
                s.hits,
                s.fetch_ms as f64 / 1000.0
            ),
            exposes: None,
        });
        if let Err(e) = r {
            tracing::error!(error = %e, session = %s.id, "cannot log the end of a recovery session");
        }
    }
}

/// A recovery session id (as `coffre restore --target-*` makes them): 1 to 64 letters, digits
/// and dashes.
pub fn check_session(id: &str) -> Result<(), WalError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(WalError::NotASession(id.to_string()));
    }
    Ok(())
}

/// Who fetches a WAL file, why, and from where.
#[derive(Debug, Clone, Copy)]
pub struct FetchBy<'a> {
    pub actor: &'a str,
    pub purpose: &'a str,
    /// The recovery session (from the restore that wrote the restore_command).
    pub session: Option<&'a str>,
    /// Read from this store only (a drill of that store), with no fallback.
    pub store: Option<&'a str>,
}

/// Restore the archived WAL file `name` of `source`: logged in the access log before it is
/// opened, then read from the first store whose copy checks (or only the pinned store), its
/// first page header matching its name. Within a recovery session only the session's first
/// fetch is an access entry (and its end, once idle, a summary); through the daemon (`daemon`)
/// the next segments are fetched ahead. A WAL file that no store has (every store answers "not
/// there") is served from the spool when it waits there; never when a store could not be read.
pub async fn fetch(
    app: &Coffre,
    source: &str,
    name: &str,
    by: FetchBy<'_>,
    daemon: Option<std::sync::Arc<Coffre>>,
) -> Result<Fetched, WalError> {
    let pin = by.store;
    let name = check_fetch(app, source, name, by)?;
    close_idle_sessions(app);
    // The session is checked (opened by coffre, bound to its caller, source and store) before
    // its prefetch is taken.
    if let Some(id) = by.session {
        let refusal = app
            .catalog
            .wal_session_refusal(id, &session_by(source, &by))
            .map_err(|e| WalError::Audit(e.to_string()))?;
        if let Some(r) = refusal {
            return Err(session_refused(id, &r));
        }
    }
    let cached = match (by.session, &daemon) {
        (Some(id), Some(_)) => {
            let key = (
                source.to_string(),
                name.to_string(),
                pin.map(str::to_string),
                id.to_string(),
            );
            take_prefetched(&key).await
        }
        _ => None,
    };
    if cached.is_some() {
        PREFETCH_HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let manifest = match &cached {
        Some((m, _)) => m.clone(),
        None => match locate(app, source, &name, pin).await {
            Ok(m) => m,
            // Acknowledged from the spool, in no store yet.
            Err(e @ WalError::NotArchived(_)) if pin.is_none() => {
                return fetch_spooled(app, source, &name, by, e);
            }
            Err(e) => return Err(e),
        },
    };
    log_fetch(app, source, &name, &manifest, by)?;
    let prefetched = cached.is_some();
    let plain = match cached {
        Some((_, b)) => b,
        None => open_served(app, source, &name, &manifest, pin).await?,
    };
    if let (Some(id), Some(d)) = (by.session, daemon) {
        prefetch_after(d, (source, id), &name, manifest.size, pin);
    }
    Ok(Fetched {
        object: manifest.snapshot,
        plain,
        prefetched,
    })
}

/// What a recovery session is bound to: the fetch's source, caller and pinned store.
fn session_by<'a>(source: &'a str, by: &FetchBy<'a>) -> crate::catalog::SessionBy<'a> {
    crate::catalog::SessionBy {
        source,
        actor: by.actor,
        store: by.store.unwrap_or(""),
        purpose: by.purpose,
    }
}

/// The checks of a fetch request before anything is read: an archiving source, a WAL name, a
/// session id and a configured store.
fn check_fetch(
    app: &Coffre,
    source: &str,
    name: &str,
    by: FetchBy<'_>,
) -> Result<WalName, WalError> {
    archiving_source(app, source)?;
    let name = WalName::parse(name).map_err(WalError::Name)?;
    if let Some(id) = by.session {
        check_session(id)?;
    }
    if let Some(p) = by.store {
        if !app.stores.iter().any(|s| s.name == p) {
            return Err(WalError::UnknownStore(
                p.to_string(),
                app.config.store_names(),
            ));
        }
    }
    Ok(name)
}

/// A WAL file no store has (`not_archived`), from the spool if it waits there (checked like a
/// store's copy: its first page header must match its name), logged in the access log.
fn fetch_spooled(
    app: &Coffre,
    source: &str,
    name: &WalName,
    by: FetchBy<'_>,
    not_archived: WalError,
) -> Result<Fetched, WalError> {
    let Some(bytes) = read_spooled(app, source, name) else {
        return Err(not_archived);
    };
    header_matches(name, &bytes).map_err(|e| WalError::Unreadable {
        name: name.to_string(),
        reasons: format!("in no store, and the local spool's {e}"),
    })?;
    app.audit
        .append(NewEntry {
            actor: by.actor.to_string(),
            action: "wal-fetch".into(),
            target: Target {
                source: Some(source.to_string()),
                ..Default::default()
            },
            purpose: by.purpose.to_string(),
            outcome: format!("WAL file {name} from the local spool (not in the stores yet)"),
            exposes: Some(format!(
                "the changes to every patient's records in WAL file {name}"
            )),
        })
        .map_err(|e| WalError::Audit(e.to_string()))?;
    Ok(Fetched {
        object: SnapshotId::new(),
        plain: bytes,
        prefetched: false,
    })
}

/// A WAL file waiting in the spool ([`crate::ops::wal::spool`]), for `wal-fetch` before it reached the stores. Only for a name the stores
/// do not have: `wal-fetch` asks after every store answered "not there"
/// ([`crate::ops::wal::archive::fetch`]), and a name the catalog indexes as archived is never served
/// from here (its archived copy is the one PostgreSQL acknowledged).
fn read_spooled(app: &Coffre, source: &str, name: &WalName) -> Option<Vec<u8>> {
    if app.catalog.has_wal(source, name.as_str()).unwrap_or(true) {
        return None;
    }
    std::fs::read(spool_dir(app, source).join(name.as_str())).ok()
}

/// `<state-dir>/spool/<source>/`: where the spool ([`crate::ops::wal::spool`]) keeps the WAL
/// files it acknowledged and has not archived yet.
pub fn spool_dir(app: &Coffre, source: &str) -> PathBuf {
    app.config.state_dir.join("spool").join(source)
}

/// Why a fetch may not use recovery session `id`.
fn session_refused(id: &str, why: &crate::catalog::SessionFetch) -> WalError {
    match why {
        crate::catalog::SessionFetch::Unknown => WalError::UnknownSession(id.to_string()),
        _ => WalError::ForeignSession(id.to_string()),
    }
}

/// Open a recovery session for a point-in-time restore or drill of `source` (WAL from `store`
/// only, when given): coffre makes the id, and a fetch may use only a session opened so. Its
/// access entries record `purpose`, which never goes into a PostgreSQL setting.
pub fn open_session(
    app: &Coffre,
    id: Option<&str>,
    source: &str,
    store: Option<&str>,
    purpose: &str,
) -> Result<String, WalError> {
    let id = id.map_or_else(|| SnapshotId::new().to_string(), str::to_string);
    check_session(&id)?;
    app.catalog
        .open_wal_session(
            &id,
            source,
            store.unwrap_or(""),
            purpose,
            &crate::clock::now_rfc3339(),
        )
        .map_err(|e| WalError::Audit(e.to_string()))?;
    Ok(id)
}

/// The access-log entry of a fetch from the stores: one per fetch, or within a recovery
/// session one when it starts (with the session's purpose).
fn log_fetch(
    app: &Coffre,
    source: &str,
    name: &WalName,
    manifest: &Manifest,
    by: FetchBy<'_>,
) -> Result<(), WalError> {
    let Some(id) = by.session else {
        return log_access(
            app,
            by.actor,
            "wal-fetch",
            source,
            manifest,
            None,
            by.purpose,
        );
    };
    let now = crate::clock::now_rfc3339();
    let counted = app
        .catalog
        .wal_session_fetch(id, &session_by(source, &by), name.as_str(), &now)
        .map_err(|e| WalError::Audit(e.to_string()))?;
    let purpose = match counted {
        crate::catalog::SessionFetch::Counted => return Ok(()),
        crate::catalog::SessionFetch::New { purpose } => purpose,
        refused => return Err(session_refused(id, &refused)),
    };
    app.audit
        .append(NewEntry {
            actor: by.actor.to_string(),
            action: "wal-fetch".into(),
            target: Target {
                source: Some(source.to_string()),
                snapshot: Some(manifest.snapshot.to_string()),
                sealed_sha256: Some(manifest.sealed_sha256.clone()),
                store: by.store.map(str::to_string),
                ..Default::default()
            },
            purpose,
            outcome: format!(
                "started: recovery session {id}, first WAL file {name} (the session's other fetches are summed up when it ends)"
            ),
            exposes: Some(
                "the changes to every patient's records in the WAL files this recovery replays"
                    .into(),
            ),
        })
        .map(|_| ())
        .map_err(|e| WalError::Audit(e.to_string()))
}

/// A fetched WAL file.
pub struct Fetched {
    pub object: SnapshotId,
    pub plain: Vec<u8>,
    /// Served from the prefetch.
    pub prefetched: bool,
}

/// Time spent serving fetches, in microseconds, and their count (`coffre_wal_fetch_seconds_total`,
/// `coffre_wal_fetches_total`): set against the replay time, it shows whether PostgreSQL waited
/// on coffre. Counted here until the status moves them into the counters kept in the catalog.
pub static FETCH_MICROS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Of those, the ones written straight into the file the caller passed
/// (`coffre_wal_fetches_into_caller_file_total`; the others went through the socket as frames).
pub static FETCHES_INTO_CALLER_FILE: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// One fetch was served (handed over whole) in `took`: counted for the metrics and, within a
/// recovery session, for its summary.
pub fn served(app: &Coffre, session: Option<&str>, took: std::time::Duration, prefetched: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    FETCH_MICROS.fetch_add(micros, Relaxed);
    FETCHES.fetch_add(1, Relaxed);
    if let Some(id) = session {
        if let Err(e) = app
            .catalog
            .wal_session_served(id, micros / 1000, prefetched)
        {
            tracing::warn!(error = %e, session = id, "cannot count a fetch of a recovery session");
        }
    }
}

/// Write `bytes` to `dest` through a temporary name in its folder, fsynced, then renamed.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let werr = |source| WalError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file}.coffre-partial"));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        // 0600 whatever the umask: WAL is every patient's changes (the spool's plaintext, a
        // segment in pg_wal, which PostgreSQL keeps 0600 too).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_segments_after_one_follow_its_timeline_across_log_files() {
        let n = super::WalName::parse("0000000200000000000000FE").unwrap();
        let after = |k| super::segment_after(&n, k, 16 << 20).map(|w| w.to_string());
        assert_eq!(after(1).as_deref(), Some("0000000200000000000000FF"));
        assert_eq!(after(2).as_deref(), Some("000000020000000100000000"));
        let h = super::WalName::parse("00000002.history").unwrap();
        assert!(super::segment_after(&h, 1, 16 << 20).is_none());
    }

    /// Spooled WAL (plaintext) and fetched segments are 0600 whatever the process umask
    /// (issue 27, N13: 0644 was seen under the default umask).
    #[test]
    fn wal_written_locally_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("000000010000000000000001");
        super::write_atomically(&p, b"every patient's changes").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert_eq!(std::fs::read(&p).unwrap(), b"every patient's changes");
    }
}
