//! The protection pipeline for one snapshot, as one stream in bounded memory:
//!
//! ```text
//! file or tar(dir) -> digest tee (keyed BLAKE3, on its own thread) -> zstd (multi-threaded) -> seal (STREAM, AES-256-GCM) -> SHA-256
//!   -> fan-out: one bounded channel and one multipart upload per store
//!   -> per store: verify size, key.json, keyring, manifest.json (PutMode::Create, last) -> catalog
//! ```
//!
//! Invariants: compress and seal once, every store gets the same bytes; memory is bounded by the
//! channel depths, the segment size and the multipart part size, whatever the snapshot size; a
//! store that fails is aborted (its upload never completes, no manifest is written) and the others
//! go on; a snapshot that changes while it is read is refused, never protected as if whole.

pub mod source;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use object_store::WriteMultipart;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::app::Coffre;
use crate::catalog::ReplicaState;
use crate::config::SourceConfig;
use crate::format::objects::DigestAlg;
use crate::format::seal::{self, Header, SealError, Sealer};
use crate::ids::{EpochId, SnapshotId};
use crate::keys::{DataKey, KeyError};
use crate::progress::{Activity, Counter};
use crate::store::{KeyObject, Manifest, SnapshotKind, Store, StoreError};

/// Bytes handed to the uploads at a time.
const CHUNK: usize = 1024 * 1024;
/// Chunks queued per store before the sealer waits (backpressure).
const CHANNEL_DEPTH: usize = 4;
/// Bytes per zstd multi-threaded job (see `produce`).
const ZSTD_JOB_SIZE: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The name, then the configured ones.
    #[error("source `{0}` is not configured: add a [[source]] with this name, or pick one of the configured sources: {1}")]
    UnknownSource(String, String),
    #[error("cannot read snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {path} changed while it was being read ({what}): it was not protected; coffre will try again once it is complete")]
    Changed { path: PathBuf, what: String },
    #[error("snapshot {snapshot}: key provider failed: {source}")]
    Key {
        snapshot: SnapshotId,
        #[source]
        source: KeyError,
    },
    #[error("snapshot {snapshot}: sealing failed: {source}")]
    Seal {
        snapshot: SnapshotId,
        #[source]
        source: SealError,
    },
    #[error("snapshot {snapshot} ({path}) was not protected: no store took it ({failures}). Nothing was committed; the source file is kept and coffre tries again")]
    NoStore {
        snapshot: SnapshotId,
        path: PathBuf,
        failures: String,
    },
    #[error("snapshot {snapshot} ({path}) is committed in {committed} site(s), fewer than min-sites = {min_sites}; failures: {failures}")]
    AtRisk {
        snapshot: SnapshotId,
        path: PathBuf,
        committed: usize,
        min_sites: usize,
        failures: String,
    },
    #[error("snapshot {snapshot}: catalog: {source}")]
    Catalog {
        snapshot: SnapshotId,
        #[source]
        source: crate::catalog::CatalogError,
    },
    #[error("snapshot {snapshot}: {source}")]
    Audit {
        snapshot: SnapshotId,
        #[source]
        source: crate::audit::AuditError,
    },
}

/// How well a snapshot is protected across stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// Committed in every configured store.
    Protected,
    /// Committed in at least `min-sites` sites; some stores lag.
    Degraded,
    /// Committed in fewer than `min-sites` sites.
    AtRisk,
}

/// Result of protecting one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub manifest: Manifest,
    pub committed: Vec<String>,
    pub failed: Vec<StoreFailure>,
    pub protection: Protection,
    pub epoch: EpochId,
    pub planned_expiry: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreFailure {
    pub store: String,
    pub kind: String,
    pub error: String,
}

enum Msg {
    Data(Bytes),
    End,
}

/// Sink at the end of the sealer: hashes the sealed bytes and fans chunks out to every store.
struct FanOut {
    senders: Vec<Option<mpsc::Sender<Msg>>>,
    sha: Sha256,
    total: u64,
    buf: Vec<u8>,
}

impl FanOut {
    fn send(&mut self, msg_bytes: Bytes) -> io::Result<()> {
        for s in self.senders.iter_mut() {
            if let Some(tx) = s {
                if tx.blocking_send(Msg::Data(msg_bytes.clone())).is_err() {
                    // That store's upload failed; the others go on.
                    *s = None;
                }
            }
        }
        if self.senders.iter().all(|s| s.is_none()) {
            // Told apart from a read error by its kind ([`no_store_took_it`]).
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "every store upload failed",
            ));
        }
        Ok(())
    }

    fn end(mut self) -> io::Result<([u8; 32], u64)> {
        if !self.buf.is_empty() {
            let b = Bytes::from(std::mem::take(&mut self.buf));
            self.send(b)?;
        }
        for tx in self.senders.iter().flatten() {
            let _ = tx.blocking_send(Msg::End);
        }
        Ok((self.sha.finalize().into(), self.total))
    }
}

impl Write for FanOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sha.update(data);
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            let b = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(CHUNK * 2),
            ));
            self.send(b)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts bytes written through it.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(data)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The keyed digest of the plaintext recorded in the manifest. Backups write keyed BLAKE3
/// (manifest format 2); restores also check the HMAC-SHA-256 of format-1 manifests.
///
/// Why BLAKE3: on the 2-core reference machine zstd level 3 alone keeps both cores busy, and
/// HMAC-SHA-256 of the plaintext (SHA-NI) cost ~0.55 CPU-s per GiB, the largest part of what a
/// backup adds to plain compression; keyed BLAKE3 (AVX-512/AVX2, one thread) costs a fraction
/// of that. Both are PRFs under a key derived from the DEK, so the digest shreds with the key.
pub(crate) enum PlainMac {
    HmacSha256(Hmac<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl PlainMac {
    pub(crate) fn new(alg: DigestAlg, dek: &DataKey, header: &Header) -> io::Result<PlainMac> {
        let key = seal::digest_key(dek, &header.salt, &header.snapshot, alg);
        Ok(match alg {
            DigestAlg::HmacSha256 => PlainMac::HmacSha256(
                <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref())
                    .map_err(|_| io::Error::other("the plaintext digest key was refused"))?,
            ),
            DigestAlg::Blake3Keyed => PlainMac::Blake3(Box::new(blake3::Hasher::new_keyed(&key))),
        })
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            PlainMac::HmacSha256(m) => m.update(data),
            PlainMac::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub(crate) fn finalize(self) -> [u8; 32] {
        match self {
            PlainMac::HmacSha256(m) => m.finalize().into_bytes().into(),
            PlainMac::Blake3(mut h) => {
                let out = *h.finalize().as_bytes();
                // The hasher holds the digest key: wipe it.
                zeroize::Zeroize::zeroize(h.as_mut());
                out
            }
        }
    }
}

/// Keyed digest of the plaintext on a thread of its own: the producer (backup) or the
/// decompressor (restore) hands it each chunk of plaintext (shared, not copied) and goes on.
/// On two cores this keeps the digest off the busiest thread.
pub(crate) struct Digester {
    tx: std::sync::mpsc::SyncSender<Bytes>,
    handle: std::thread::JoinHandle<([u8; 32], u64)>,
}

impl Digester {
    pub(crate) fn spawn(mac: PlainMac) -> io::Result<Digester> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let handle = std::thread::Builder::new()
            .name("coffre-digest".into())
            .spawn(move || {
                let mut mac = mac;
                let mut n = 0u64;
                for chunk in rx {
                    mac.update(&chunk);
                    n += chunk.len() as u64;
                }
                (mac.finalize(), n)
            })?;
        Ok(Digester { tx, handle })
    }

    /// Another handle to feed it from another thread; it must be dropped before `finish`.
    pub(crate) fn sink(&self) -> std::sync::mpsc::SyncSender<Bytes> {
        self.tx.clone()
    }

    fn feed(&self, chunk: Bytes) -> io::Result<()> {
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::other("the plaintext digest thread stopped"))
    }

    /// The digest and the number of bytes digested, once every sender is gone.
    pub(crate) fn finish(self) -> io::Result<([u8; 32], u64)> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| io::Error::other("the plaintext digest thread panicked"))
    }
}

/// In front of the compressor for a directory's tar stream: collects the plaintext into 1 MiB
/// chunks for the digest thread.
struct DigestTee<'a, W> {
    inner: W,
    digester: &'a Digester,
    buf: Vec<u8>,
    progress: &'a Counter,
}

impl<W: Write> DigestTee<'_, W> {
    fn flush_chunk(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.digester.feed(Bytes::from(full))?;
        }
        Ok(())
    }
}

impl<W: Write> Write for DigestTee<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(data)?;
        self.progress.add(k as u64);
        let mut taken = &data[..k];
        while !taken.is_empty() {
            let room = CHUNK - self.buf.len();
            let n = room.min(taken.len());
            self.buf.extend_from_slice(&taken[..n]);
            taken = &taken[n..];
            if self.buf.len() == CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Read a file in 1 MiB chunks into fresh buffers (no zero-filling, no copy): each goes to the
/// digest thread and to the compressor.
fn feed_file(
    f: &mut impl io::Read,
    digester: &Digester,
    w: &mut impl Write,
    progress: &Counter,
) -> io::Result<()> {
    use std::io::Read;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        let k = Read::by_ref(f).take(CHUNK as u64).read_to_end(&mut chunk)?;
        if k == 0 {
            return Ok(());
        }
        let chunk = Bytes::from(chunk);
        digester.feed(chunk.clone())?;
        w.write_all(&chunk)?;
        progress.add(k as u64);
    }
}

struct Produced {
    sealed_sha256: [u8; 32],
    sealed_size: u64,
    compressed_size: u64,
    size: u64,
    /// Keyed BLAKE3 of the plaintext.
    digest: [u8; 32],
}

/// The CPU side, on its own thread: read, compress, seal, hash, hand chunks to the uploads.
fn produce(
    (path, opened): (&Path, Option<std::fs::File>),
    kind: SnapshotKind,
    dek: &DataKey,
    header: &Header,
    (level, threads): (i32, u32),
    fan: FanOut,
    progress: &Counter,
) -> Result<Produced, ProduceError> {
    let print = |opened: Option<&std::fs::File>| match opened {
        Some(f) => source::fingerprint_open(f),
        None => source::fingerprint(path),
    };
    let before = print(opened.as_ref()).map_err(ProduceError::Read)?;
    progress.set_total(before.bytes());
    let mut sealer = Sealer::new(dek, header, fan).map_err(ProduceError::Seal)?;
    let counting = Counting {
        inner: &mut sealer,
        n: 0,
    };
    let mut enc = zstd::stream::write::Encoder::new(counting, level).map_err(ProduceError::Read)?;
    if threads > 1 {
        enc.multithread(threads).map_err(ProduceError::Read)?;
        // 4 MiB jobs rather than zstd's default (8 MiB at level 3): half the compressor's
        // memory (measured with the zstd CLI on the 1 GiB EMR dump: 56 -> 32 MB peak RSS),
        // the same speed, 0.03 % larger output.
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))
            .map_err(ProduceError::Read)?;
    }
    let mac = PlainMac::new(DigestAlg::Blake3Keyed, dek, header).map_err(ProduceError::Read)?;
    let digester = Digester::spawn(mac).map_err(ProduceError::Read)?;
    let fed = match kind {
        // Opened without following symlinks, and checked to be what was fingerprinted.
        SnapshotKind::File | SnapshotKind::Wal => match &opened {
            Some(f) => feed_file(&mut source::AtReader::new(f), &digester, &mut enc, progress),
            None => source::open_file(path).and_then(|mut f| {
                source::check_identity(&f, before.root_ino(), path)?;
                feed_file(&mut f, &digester, &mut enc, progress)
            }),
        },
        SnapshotKind::Directory => {
            let mut tee = DigestTee {
                inner: &mut enc,
                digester: &digester,
                buf: Vec::with_capacity(CHUNK),
                progress,
            };
            source::open_dir(path)
                .and_then(|root| {
                    source::check_identity(&root, before.root_ino(), path)?;
                    source::write_tar_at(&root, path, &mut tee)
                })
                .and_then(|()| tee.flush_chunk())
        }
    };
    // Join the digest thread whatever happened, then report the read error first.
    let digested = digester.finish();
    fed.map_err(ProduceError::Read)?;
    let (digest, size) = digested.map_err(ProduceError::Read)?;
    let counting = enc.finish().map_err(ProduceError::Read)?;
    let compressed_size = counting.n;
    let after = print(opened.as_ref()).map_err(ProduceError::Read)?;
    if before != after {
        return Err(ProduceError::Changed(source::describe_change(
            &before, &after,
        )));
    }
    let fan = sealer.finish().map_err(ProduceError::Seal)?;
    let (sealed_sha256, sealed_size) = fan.end().map_err(ProduceError::Read)?;
    Ok(Produced {
        sealed_sha256,
        sealed_size,
        compressed_size,
        size,
        digest,
    })
}

enum ProduceError {
    Read(io::Error),
    Seal(SealError),
    Changed(String),
}

/// Upload one store's copy from its channel; aborts the multipart upload unless the stream ended
/// cleanly.
async fn upload(
    store: Store,
    path: object_store::path::Path,
    mut rx: mpsc::Receiver<Msg>,
    part_size: usize,
    concurrency: usize,
) -> Result<(), StoreError> {
    let up = store.put_multipart(&path).await?;
    let mut w = WriteMultipart::new_with_chunk_size(up, part_size);
    loop {
        match rx.recv().await {
            Some(Msg::Data(b)) => {
                if let Err(e) = w.wait_for_capacity(concurrency).await {
                    rx.close();
                    let _ = w.abort().await;
                    return Err(store.op_err("upload part", &path, e));
                }
                w.put(b);
            }
            Some(Msg::End) => {
                return w
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| store.op_err("complete upload", &path, e));
            }
            None => {
                let _ = w.abort().await;
                return Err(store.op_err(
                    "upload",
                    &path,
                    object_store::Error::Generic {
                        store: "coffre",
                        source: "the snapshot stream stopped before its end; upload aborted".into(),
                    },
                ));
            }
        }
    }
}

/// Planned expiry of a snapshot created at `created` (by the source's retention rules, given its
/// earlier snapshots in the catalog) and its epoch (the UTC day of expiry).
pub(crate) fn plan_expiry(
    app: &Coffre,
    source: &SourceConfig,
    created: time::OffsetDateTime,
) -> (time::OffsetDateTime, EpochId) {
    let earlier: Vec<time::OffsetDateTime> = app
        .catalog
        .created_times(&source.name)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
        })
        .collect();
    let (expiry, _why) = crate::retention::planned_expiry(&source.retention, created, &earlier);
    (
        expiry,
        crate::retention::live_epoch(&app.providers, expiry.date()),
    )
}

/// Planned expiry of a WAL file archived at `created`: the end of the source's recovery window
/// (`[source.pitr] window`) plus one day, so that the base backup that starts the window can
/// still reach it; its epoch is the UTC day of that expiry.
pub(crate) fn plan_wal_expiry(
    app: &Coffre,
    source: &SourceConfig,
    created: time::OffsetDateTime,
) -> (time::OffsetDateTime, EpochId) {
    let window = source
        .pitr
        .as_ref()
        .map(|p| p.window)
        .unwrap_or(std::time::Duration::from_secs(14 * 86_400));
    let expiry = wal_expiry(created, window);
    (
        expiry,
        crate::retention::live_epoch(&app.providers, expiry.date()),
    )
}

/// `created + window + 1 day`, at most the end of the calendar: a window too long for the
/// arithmetic (refused by `validate`, see [`crate::config::MAX_RETENTION`]) keeps the WAL file
/// for good rather than panicking.
pub(crate) fn wal_expiry(
    created: time::OffsetDateTime,
    window: std::time::Duration,
) -> time::OffsetDateTime {
    let window = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
    created
        .saturating_add(window)
        .saturating_add(time::Duration::days(1))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Protect one snapshot (a file or a directory) of `source` now.
pub async fn protect(
    app: &Coffre,
    source_name: &str,
    path: &Path,
) -> Result<Outcome, PipelineError> {
    protect_as(
        app,
        source_name,
        Input::Path(path),
        SnapshotId::new(),
        What::Snapshot,
    )
    .await
}

/// What is being protected: a snapshot (planned by the source's retention, listed in the
/// catalog) or a WAL file (kept for the source's recovery window, found in the stores by name).
#[derive(Debug, Clone)]
pub(crate) enum What {
    Snapshot,
    Wal(crate::format::wal::WalName),
}

/// Protect one snapshot under an id chosen (and journaled) by the caller. The id must be fresh:
/// a retry after a failure or crash uses a new id, hence a new DEK and salt.
///
/// Inspect the snapshot, plan its expiry and enter that epoch, wrap a fresh data key for every
/// provider, start one upload per store, compress and seal once while fanning the sealed bytes
/// out, build the manifest, authenticate the key object with it, commit in every store that got
/// the bytes, record the commit in the catalog, and classify the outcome.
#[tracing::instrument(skip_all, fields(source = %source_name, snapshot = %id))]
pub(crate) async fn protect_as(
    app: &Coffre,
    source_name: &str,
    input: Input<'_>,
    id: SnapshotId,
    what: What,
) -> Result<Outcome, PipelineError> {
    let path = input.path();
    let source = app
        .config
        .source(source_name)
        .ok_or_else(|| {
            PipelineError::UnknownSource(source_name.to_string(), app.config.source_names())
        })?
        .clone();
    let inspected = match &input {
        Input::Path(p) => inspect(p)?,
        Input::Open { file, .. } => inspect_open(file, path)?,
    };
    let (kind, original_name) = match (&what, inspected) {
        (What::Wal(name), (SnapshotKind::File, _)) => (SnapshotKind::Wal, name.to_string()),
        (What::Wal(_), _) => {
            return Err(PipelineError::Read {
                path: path.to_path_buf(),
                source: io::Error::other("a WAL file must be a regular file"),
            })
        }
        (What::Snapshot, inspected) => inspected,
    };
    let created = time::OffsetDateTime::now_utc();
    let (expiry, epoch, _in_epoch) = enter_epoch(app, &source, created, &what).await;
    tracing::info!(kind = ?kind, "protecting snapshot");
    let dek = DataKey::generate();
    let mut key_object = wrap_for_every_provider(app, &source, id, &epoch, expiry, &dek)?;
    let (fan, uploads) = start_uploads(app, &source, id, kind, &original_name)?;
    let opened = match &input {
        Input::Path(_) => None,
        Input::Open { file, .. } => Some(file.try_clone().map_err(|e| PipelineError::Read {
            path: path.to_path_buf(),
            source: e,
        })?),
    };
    let produced = seal_and_fan_out(app, &source.name, (path, opened), kind, dek, id, fan).await;
    let uploaded = collect_uploads(app, uploads).await;
    let produced = produced.map_err(|e| no_store_took_it(e, id, path, &uploaded))?;
    let mut manifest = build_manifest(app, &source, id, created, kind, original_name, &produced);
    if kind == SnapshotKind::Directory {
        // pg_basebackup writes the label first and never changes it.
        // Read beneath the snapshot, never through a symlink (a label planted as a link to
        // another file would be read with the daemon's rights), and bounded.
        manifest.pg_wal_start = open_regular_beneath(path, Path::new("backup_label"))
            .and_then(|f| {
                let mut t = String::new();
                io::Read::read_to_string(&mut io::Read::take(f, 64 * 1024), &mut t).map(|_| t)
            })
            .ok()
            .and_then(|t| crate::format::wal::backup_label_start(&t));
    }
    authenticate(app, &mut key_object, &manifest)?;
    let results = commit_everywhere(app, uploaded, &manifest, &key_object).await;
    let (committed, failed) = record(app, &manifest, &key_object, results, &what)?;
    let protection = classify(app, &manifest, path, &committed, &failed)?;
    Ok(Outcome {
        manifest,
        committed,
        failed,
        protection,
        epoch,
        planned_expiry: key_object.planned_expiry.clone(),
    })
}

/// Open a regular file without following a symlink (the one way coffre opens a file it then
/// reads as data: a WAL file of the caller's own, a spooled file).
pub(crate) fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    source::open_file(path)
}

/// Open the regular file `rel` beneath the folder `dir`, following no symlink on the way.
pub(crate) fn open_regular_beneath(dir: &Path, rel: &Path) -> io::Result<std::fs::File> {
    let root = source::open_dir(dir)?;
    source::open_beneath(&root, dir, rel)
}

/// Where a snapshot's bytes come from.
pub(crate) enum Input<'a> {
    /// A file or folder the daemon opens itself (a snapshot in a source folder, a spooled WAL
    /// file), never through a symlink.
    Path(&'a Path),
    /// A WAL file open already: passed by the caller with its request, or opened beneath the
    /// source's `pg_wal`. Read from the descriptor only (positioned reads); `path` names it in
    /// messages and is never opened.
    Open {
        file: &'a std::fs::File,
        path: &'a Path,
    },
}

impl Input<'_> {
    fn path(&self) -> &Path {
        match self {
            Input::Path(p) => p,
            Input::Open { path, .. } => path,
        }
    }
}

/// An open file is a regular file (only WAL comes open), named by its path's last part.
fn inspect_open(f: &std::fs::File, path: &Path) -> Result<(SnapshotKind, String), PipelineError> {
    let err = |source| PipelineError::Read {
        path: path.to_path_buf(),
        source,
    };
    if !f.metadata().map_err(err)?.is_file() {
        return Err(err(io::Error::other("not a regular file")));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    Ok((SnapshotKind::File, name))
}

/// A file or a directory, and its name (never followed through a symlink).
fn inspect(path: &Path) -> Result<(SnapshotKind, String), PipelineError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| PipelineError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let kind = if meta.is_dir() {
        SnapshotKind::Directory
    } else if meta.is_file() {
        SnapshotKind::File
    } else {
        return Err(PipelineError::Read {
            path: path.to_path_buf(),
            source: io::Error::other("not a regular file or a directory"),
        });
    };
    let original_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    Ok((kind, original_name))
}

/// Plan the expiry and enter its epoch before its key wraps anything: an early shred of it
/// waits for this snapshot's key object to reach the catalog, and a snapshot never enters an
/// epoch that is being shredded (it waits, then plans again).
async fn enter_epoch(
    app: &Coffre,
    source: &SourceConfig,
    created: time::OffsetDateTime,
    what: &What,
) -> (time::OffsetDateTime, EpochId, crate::inflight::Entered) {
    loop {
        let (expiry, epoch) = match what {
            What::Snapshot => plan_expiry(app, source, created),
            What::Wal(_) => plan_wal_expiry(app, source, created),
        };
        match app.inflight.try_enter(&epoch) {
            Some(entered) => return (expiry, epoch, entered),
            None => app.inflight.wait_open(&epoch).await,
        }
    }
}

/// The key object: the data key wrapped by every provider under the epoch of planned expiry.
fn wrap_for_every_provider(
    app: &Coffre,
    source: &SourceConfig,
    id: SnapshotId,
    epoch: &EpochId,
    expiry: time::OffsetDateTime,
    dek: &DataKey,
) -> Result<KeyObject, PipelineError> {
    let wraps = crate::keys::wrap_for_all(&app.providers, epoch, dek, &id).map_err(|source| {
        PipelineError::Key {
            snapshot: id,
            source,
        }
    })?;
    Ok(KeyObject {
        format: crate::format::objects::KEY_OBJECT_FORMAT,
        snapshot: id,
        source: source.name.clone(),
        epoch: epoch.clone(),
        planned_expiry: rfc3339(expiry),
        wraps,
        legal_hold: None,
        auth: Vec::new(),
    })
}

type Upload = tokio::task::JoinHandle<Result<(), StoreError>>;

/// One bounded channel and one upload task per store.
fn start_uploads(
    app: &Coffre,
    source: &SourceConfig,
    id: SnapshotId,
    kind: SnapshotKind,
    original_name: &str,
) -> Result<(FanOut, Vec<Upload>), PipelineError> {
    let pl = &app.config.pipeline;
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for s in &app.stores {
        let path = s
            .paths_of(kind, &source.name, original_name, &id)
            .map_err(|e| PipelineError::Read {
                path: original_name.into(),
                source: io::Error::other(e.to_string()),
            })?
            .data;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        senders.push(Some(tx));
        tasks.push(tokio::spawn(upload(
            s.clone(),
            path,
            rx,
            pl.part_size.as_u64() as usize,
            pl.upload_concurrency,
        )));
    }
    let fan = FanOut {
        senders,
        sha: Sha256::new(),
        total: 0,
        buf: Vec::with_capacity(CHUNK * 2),
    };
    Ok((fan, tasks))
}

/// Read, compress and seal once (on a blocking thread), the sealed bytes fanned out to the
/// uploads; the data key is dropped as soon as the stream is sealed.
async fn seal_and_fan_out(
    app: &Coffre,
    source: &str,
    (path, opened): (&Path, Option<std::fs::File>),
    kind: SnapshotKind,
    dek: DataKey,
    id: SnapshotId,
    fan: FanOut,
) -> Result<Produced, PipelineError> {
    let pl = &app.config.pipeline;
    let header = Header::new(&id, pl.segment_log2());
    // With archive-parallel > 1 several WAL files are archived at once (ahead of their push,
    // and from the spool): one compressor thread each (the parallelism is across files, and
    // each multi-threaded compressor holds ~32 MiB).
    let pitr = match kind {
        SnapshotKind::Wal => app.config.source(source).and_then(|s| s.pitr.as_ref()),
        _ => None,
    };
    let parallel_wal = pitr.is_some_and(|p| p.archive_parallel > 1);
    // WAL has its own level (`[source.pitr] zstd-level`).
    let level = pitr.map_or(pl.zstd_level, |p| p.zstd_level);
    let threads = if parallel_wal { 1 } else { pl.threads() };
    let path_owned = path.to_path_buf();
    let tracker = app
        .progress
        .start(Activity::Protect, &id.to_string(), source, None, None);
    let counter = tracker.counter();
    let produced = tokio::task::spawn_blocking(move || {
        let r = produce(
            (&path_owned, opened),
            kind,
            &dek,
            &header,
            (level, threads),
            fan,
            &counter,
        );
        drop(dek);
        r
    })
    .await
    .map_err(|e| PipelineError::Read {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    produced.map_err(|e| match e {
        ProduceError::Read(source) => PipelineError::Read {
            path: path.to_path_buf(),
            source,
        },
        ProduceError::Seal(source) => PipelineError::Seal {
            snapshot: id,
            source,
        },
        ProduceError::Changed(what) => PipelineError::Changed {
            path: path.to_path_buf(),
            what,
        },
    })
}

/// When the sealer stopped because every store's upload had failed, the error names each
/// store's own failure (a store down, a refused host claim, a full bucket), not the reading.
fn no_store_took_it(
    e: PipelineError,
    snapshot: SnapshotId,
    path: &Path,
    uploaded: &[(&Store, Result<(), StoreError>)],
) -> PipelineError {
    match e {
        PipelineError::Read { source, .. } if source.kind() == io::ErrorKind::BrokenPipe => {
            let failures: Vec<String> = uploaded
                .iter()
                .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("store `{}`: {e}", s.name)))
                .collect();
            PipelineError::NoStore {
                snapshot,
                path: path.to_path_buf(),
                failures: failures.join("; "),
            }
        }
        other => other,
    }
}

/// Wait for every upload, whatever happened (a failed producer makes them abort).
async fn collect_uploads(
    app: &Coffre,
    tasks: Vec<Upload>,
) -> Vec<(&Store, Result<(), StoreError>)> {
    let mut results = Vec::new();
    for (s, t) in app.stores.iter().zip(tasks) {
        let r = match t.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Setup {
                store: s.name.clone(),
                reason: format!("upload task failed: {e}"),
            }),
        };
        results.push((s, r));
    }
    results
}

fn build_manifest(
    app: &Coffre,
    source: &SourceConfig,
    id: SnapshotId,
    created: time::OffsetDateTime,
    kind: SnapshotKind,
    original_name: String,
    produced: &Produced,
) -> Manifest {
    Manifest {
        format: crate::format::objects::MANIFEST_FORMAT,
        snapshot: id,
        source: source.name.clone(),
        host: app.host.clone(),
        created: rfc3339(created),
        kind,
        original_name,
        size: produced.size,
        compressed_size: produced.compressed_size,
        sealed_size: produced.sealed_size,
        sealed_sha256: hex::encode(produced.sealed_sha256),
        plaintext_hmac_sha256: None,
        plaintext_blake3: Some(hex::encode(produced.digest)),
        cipher: "aes-256-gcm".into(),
        compression: "zstd".into(),
        segment_log2: app.config.pipeline.segment_log2(),
        pg_wal_start: None,
    }
}

/// The key object is authenticated with its manifest under every provider's
/// object-authentication key, which the stores never see (crate::auth).
fn authenticate(
    app: &Coffre,
    key_object: &mut KeyObject,
    manifest: &Manifest,
) -> Result<(), PipelineError> {
    crate::auth::ObjectAuth::for_writing(&app.providers)
        .map_err(|source| PipelineError::Key {
            snapshot: manifest.snapshot,
            source,
        })?
        .seal(key_object, manifest);
    Ok(())
}

/// Commit in every store whose upload completed, concurrently.
async fn commit_everywhere<'a>(
    app: &Coffre,
    uploaded: Vec<(&'a Store, Result<(), StoreError>)>,
    manifest: &Manifest,
    key_object: &KeyObject,
) -> Vec<(&'a Store, Result<(), StoreError>)> {
    use crate::ops::snapshot::commit::{commit, Existing};
    let commits = uploaded.into_iter().map(|(s, r)| async move {
        match r {
            Ok(()) => (
                s,
                commit(app, s, manifest, key_object, Existing::Refuse).await,
            ),
            Err(e) => (s, Err(e)),
        }
    });
    futures::future::join_all(commits).await
}

/// Record the snapshot in the catalog with the state of every store's copy (when it is
/// committed anywhere: a snapshot committed nowhere is not a snapshot, and the caller retries
/// from the source). Returns the stores committed and the failures.
fn record(
    app: &Coffre,
    manifest: &Manifest,
    key_object: &KeyObject,
    results: Vec<(&Store, Result<(), StoreError>)>,
    what: &What,
) -> Result<(Vec<String>, Vec<StoreFailure>), PipelineError> {
    let id = manifest.snapshot;
    let committed_any = results.iter().any(|(_, r)| r.is_ok());
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    let mut replicas = Vec::new();
    for (s, r) in results {
        match r {
            Ok(()) => {
                committed.push(s.name.clone());
                replicas.push((s.name.as_str(), ReplicaState::Committed));
            }
            Err(e) => {
                tracing::warn!(snapshot = %id, store = %s.name, error = %e, "store copy failed");
                failed.push(StoreFailure {
                    store: s.name.clone(),
                    kind: e.kind().to_string(),
                    error: e.to_string(),
                });
                replicas.push((s.name.as_str(), ReplicaState::Missing));
            }
        }
    }
    // WAL files are found in the stores by name (`coffre wal-fetch`); the catalog lists snapshots.
    if committed_any && matches!(what, What::Snapshot) {
        app.catalog
            .record_commit(manifest, key_object, &replicas)
            .map_err(|source| PipelineError::Catalog {
                snapshot: id,
                source,
            })?;
    }
    Ok((committed, failed))
}

/// Protected (every store), degraded (at least min-sites sites) or at risk (an error).
fn classify(
    app: &Coffre,
    manifest: &Manifest,
    path: &Path,
    committed: &[String],
    failed: &[StoreFailure],
) -> Result<Protection, PipelineError> {
    let id = manifest.snapshot;
    let sites: std::collections::BTreeSet<&str> = app
        .stores
        .iter()
        .filter(|s| committed.contains(&s.name))
        .map(|s| s.site.as_str())
        .collect();
    let protection = if failed.is_empty() {
        Protection::Protected
    } else if sites.len() >= app.config.replication.min_sites {
        Protection::Degraded
    } else {
        Protection::AtRisk
    };
    tracing::info!(snapshot = %id, ?protection, size = manifest.size, sealed = manifest.sealed_size, stores = committed.len(), "snapshot sealed");
    if protection == Protection::AtRisk {
        return Err(PipelineError::AtRisk {
            snapshot: id,
            path: path.to_path_buf(),
            committed: sites.len(),
            min_sites: app.config.replication.min_sites,
            failures: failed
                .iter()
                .map(|f| format!("{}: {}", f.store, f.error))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(protection)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wal_expiry_past_the_calendar_saturates_instead_of_panicking() {
        let created = time::macros::datetime!(2026-12-07 00:00 UTC);
        let week = super::wal_expiry(created, std::time::Duration::from_secs(7 * 86_400));
        assert_eq!(week, time::macros::datetime!(2026-12-15 00:00 UTC));
        // "100000000years" (or anything past it) once panicked here.
        for huge in [100_000_000 * 31_557_600, u64::MAX] {
            let t = super::wal_expiry(created, std::time::Duration::from_secs(huge));
            assert!(t > created && t.year() >= 9999, "{t}");
        }
    }
}
