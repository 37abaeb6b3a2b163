//! The `file` key provider: epoch keys live in a keyring sealed (AES-256-GCM) under a master key
//! read from a file or a systemd credential. DEKs are wrapped with AES key wrap with padding
//! (RFC 5649) under the epoch key.
//!
//! Invariants: the keyring file is replaced atomically (temp, fsync, rename, fsync dir) and carries
//! a generation number so that an older copy never replaces a newer one; a destroyed epoch keeps a
//! tombstone (id and time, no key) so that a later unwrap says "key destroyed", not "unknown".
//! Several copies of one keyring may be in memory at once (the daemon's app and the one it opens
//! on reload, a standalone command): every change, and every read of a key, re-reads the file
//! under an exclusive `flock` of `<keyring>.lock` and merges it in (the union of epochs; a
//! destruction known to either side wins and is never undone), then writes generation max + 1 if
//! the file lacks anything. Two different keys under one epoch id are
//! [`KeyError::ConflictingEpochKeys`], never resolved.
//!
//! Honest limit: erasure with this provider holds only once every old copy of the keyring (local
//! disk, store versions, backups of the state folder) is gone. HSM providers give cryptographic
//! erase without that condition.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::{generic_array::GenericArray, Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::{DataKey, EpochInfo, KeyError, KeyProvider};
use crate::config::{present_secret_file_problem, Config, KeyProviderConfig};
use crate::fsutil::{create_private_dir, sync_dir, write_atomic};
use crate::ids::{EpochId, SnapshotId};

const KEYRING_MAGIC: &[u8; 8] = b"COFFREKR";
const KEYRING_VERSION: u16 = 1;

#[derive(Serialize, Deserialize, Default)]
struct Keyring {
    generation: u64,
    epochs: BTreeMap<EpochId, Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    /// Hex of the 32-byte epoch key; `None` once destroyed.
    key: Option<String>,
    created: String,
    destroyed: Option<String>,
}

impl Keyring {
    fn copy(&self) -> Keyring {
        Keyring {
            generation: self.generation,
            epochs: self
                .epochs
                .iter()
                .map(|(id, e)| (id.clone(), e.copy()))
                .collect(),
        }
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        for e in self.epochs.values_mut() {
            if let Some(k) = e.key.as_mut() {
                k.zeroize();
            }
        }
    }
}

impl Entry {
    fn copy(&self) -> Entry {
        Entry {
            key: self.key.clone(),
            created: self.created.clone(),
            destroyed: self.destroyed.clone(),
        }
    }

    /// A tombstone: no key, whatever `destroyed` says.
    fn is_destroyed(&self) -> bool {
        self.key.is_none()
    }
}

/// Merge `theirs` into `ours`: the union of epochs, where a destruction known to either side wins
/// and is never undone. Two different keys under one epoch id are an error (never resolved here:
/// snapshots may be wrapped under either). Returns true when `ours` changed. Generations are the
/// caller's business.
fn merge(
    ours: &mut Keyring,
    theirs: &Keyring,
    provider: &str,
    from: &str,
) -> Result<bool, KeyError> {
    // Check every epoch first, so that a conflict leaves `ours` untouched.
    for (id, e) in &theirs.epochs {
        if let (Some(mine), Some(their_key)) = (
            ours.epochs.get(id).and_then(|m| m.key.as_ref()),
            e.key.as_ref(),
        ) {
            if !same_key(mine, their_key) {
                return Err(KeyError::ConflictingEpochKeys {
                    provider: provider.to_string(),
                    epoch: id.clone(),
                    from: from.to_string(),
                });
            }
        }
    }
    let mut changed = false;
    for (id, e) in &theirs.epochs {
        match ours.epochs.get_mut(id) {
            None => {
                ours.epochs.insert(id.clone(), e.copy());
                changed = true;
            }
            Some(mine) => {
                if e.is_destroyed() && !mine.is_destroyed() {
                    if let Some(k) = mine.key.as_mut() {
                        k.zeroize();
                    }
                    mine.key = None;
                    mine.destroyed = e.destroyed.clone().or_else(|| Some(now()));
                    changed = true;
                }
            }
        }
    }
    Ok(changed)
}

/// True when `a` already holds everything `b` knows: each epoch of `b`, destroyed in `a` when
/// destroyed in `b`.
fn covers(a: &Keyring, b: &Keyring) -> bool {
    b.epochs.iter().all(|(id, e)| {
        a.epochs
            .get(id)
            .is_some_and(|mine| mine.is_destroyed() || !e.is_destroyed())
    })
}

/// Constant-time comparison of two hex-encoded keys (lengths are not secret).
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What this process last read from or wrote to the keyring file: its generation and its exact
/// bytes (a generation pushed to a store is always these bytes, so pushing it twice is idempotent).
struct OnDisk {
    generation: u64,
    bytes: Vec<u8>,
}

struct State {
    ring: Keyring,
    on_disk: Option<OnDisk>,
}

/// What [`FileProvider::synced`] writes after its closure ran.
enum Persist {
    /// A new generation if the keyring in memory holds anything the file lacks.
    IfStale,
    /// A new generation in any case.
    NewGeneration,
    /// These exact bytes (a replicated keyring, sealed under the same master key, that holds
    /// everything the merge holds) with their generation, above the file's: the same generation
    /// keeps the same bytes everywhere, so hosts that share stores converge without rewriting.
    Verbatim { generation: u64, bytes: Vec<u8> },
}

/// Several copies of one keyring may live in memory at once (the daemon re-opens the app on
/// reload, a CLI run races with the daemon): every change is a read-merge-write of the file under
/// an exclusive `flock` of `<keyring>.lock`, and every read of a key re-reads the file first, so a
/// destruction made by one copy is seen by all and never undone.
pub struct FileProvider {
    name: String,
    keyring_path: PathBuf,
    lock_path: PathBuf,
    sealing_key: Zeroizing<[u8; 32]>,
    state: Mutex<State>,
}

fn now() -> String {
    crate::clock::now_rfc3339()
}

impl FileProvider {
    /// Load the master key (creating it when configured to) and the local keyring, if any.
    pub fn open(config: &Config, k: &KeyProviderConfig) -> Result<FileProvider, KeyError> {
        let master = load_master_key(k)?;
        let sealing_key = sealing_key(&k.name, &master)?;
        let keyring_path = config.keyring_path(k);
        let mut lock_path = keyring_path.clone().into_os_string();
        lock_path.push(".lock");
        let p = FileProvider {
            name: k.name.clone(),
            keyring_path,
            lock_path: PathBuf::from(lock_path),
            sealing_key,
            state: Mutex::new(State {
                ring: Keyring::default(),
                on_disk: None,
            }),
        };
        if let Some((ring, bytes)) = p.read_disk()? {
            let mut st = p.lock();
            st.on_disk = Some(OnDisk {
                generation: ring.generation,
                bytes,
            });
            st.ring = ring;
        }
        Ok(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exclusive lock every process takes before reading the keyring file to change it.
    fn flock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, KeyError> {
        let lock_err = |source: std::io::Error| KeyError::Io {
            provider: self.name.clone(),
            path: self.lock_path.display().to_string(),
            source,
        };
        if let Some(dir) = self.lock_path.parent() {
            create_private_dir(dir).map_err(lock_err)?;
        }
        // flock needs no write access: a lock file created by another account (root running a
        // command) does not lock this one out as long as it can read it.
        let f = match std::fs::File::open(&self.lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.lock_path)
                .map_err(lock_err)?,
            Err(e) => return Err(lock_err(e)),
        };
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_err(std::io::Error::from(errno)))
    }

    /// The keyring on disk and its bytes; `None` when there is none yet.
    fn read_disk(&self) -> Result<Option<(Keyring, Vec<u8>)>, KeyError> {
        match std::fs::read(&self.keyring_path) {
            Ok(bytes) => Ok(Some((self.unseal(&bytes)?, bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Run `f` on the in-memory keyring brought up to date with the file, under the file's lock;
    /// `f` also sees the file's generation and bytes as just read. Then write a new generation if
    /// the result holds anything the file lacks, or if `f` asks for one (its second value). A
    /// conflict between memory and the file is an error and changes nothing.
    fn synced<T>(
        &self,
        f: impl FnOnce(&mut Keyring, Option<(u64, &[u8])>) -> Result<(T, Persist), KeyError>,
    ) -> Result<T, KeyError> {
        let mut st = self.lock();
        let _flock = self.flock()?;
        let disk = self.read_disk()?;
        let disk_generation = disk.as_ref().map_or(0, |(d, _)| d.generation);
        if let Some((d, _)) = &disk {
            let from = format!("the keyring on disk {}", self.keyring_path.display());
            merge(&mut st.ring, d, &self.name, &from)?;
        }
        st.ring.generation = st.ring.generation.max(disk_generation);
        let result = f(
            &mut st.ring,
            disk.as_ref().map(|(d, b)| (d.generation, b.as_slice())),
        );
        let (forced, verbatim) = match &result {
            Ok((_, Persist::NewGeneration)) => (true, None),
            Ok((_, Persist::Verbatim { generation, bytes })) if *generation > disk_generation => {
                (false, Some((*generation, bytes.clone())))
            }
            _ => (false, None),
        };
        let stale = match &disk {
            None => !st.ring.epochs.is_empty() || forced,
            Some((d, _)) => forced || !covers(d, &st.ring) || st.ring.generation > d.generation,
        };
        if let Some((generation, bytes)) = verbatim {
            write_atomic(&self.keyring_path, &bytes, 0o600).map_err(|e| self.io(e))?;
            self.sweep_temporaries();
            st.ring.generation = generation;
            st.on_disk = Some(OnDisk { generation, bytes });
        } else if stale {
            st.ring.generation = st.ring.generation.max(disk_generation) + 1;
            let bytes = self.seal(&st.ring)?;
            write_atomic(&self.keyring_path, &bytes, 0o600).map_err(|e| self.io(e))?;
            self.sweep_temporaries();
            st.on_disk = Some(OnDisk {
                generation: st.ring.generation,
                bytes,
            });
        } else if let Some((d, bytes)) = disk {
            st.on_disk = Some(OnDisk {
                generation: d.generation,
                bytes,
            });
        }
        result.map(|(t, _)| t)
    }

    /// Remove temporary keyrings left by a crash in the middle of a write (they hold old keys).
    /// Called under the lock, when no other write can be under way.
    fn sweep_temporaries(&self) {
        let (Some(dir), Some(stem)) = (
            self.keyring_path.parent(),
            self.keyring_path.file_stem().and_then(|s| s.to_str()),
        ) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{stem}.tmp-");
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let pid = name.strip_prefix(&prefix);
            if pid.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(provider = %self.name, path = %e.path().display(), "removed a temporary keyring left by an interrupted write")
                    }
                    Err(err) => {
                        tracing::warn!(provider = %self.name, path = %e.path().display(), error = %err, "cannot remove a temporary keyring left by an interrupted write: remove it by hand")
                    }
                }
            }
        }
    }

    fn io(&self, source: std::io::Error) -> KeyError {
        KeyError::Io {
            provider: self.name.clone(),
            path: self.keyring_path.display().to_string(),
            source,
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(GenericArray::from_slice(self.sealing_key.as_ref()))
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = KEYRING_MAGIC.to_vec();
        aad.extend_from_slice(&KEYRING_VERSION.to_be_bytes());
        aad.extend_from_slice(self.name.as_bytes());
        aad
    }

    fn seal(&self, ring: &Keyring) -> Result<Vec<u8>, KeyError> {
        self.seal_under(&self.sealing_key, ring)
    }

    fn seal_under(&self, sealing_key: &[u8; 32], ring: &Keyring) -> Result<Vec<u8>, KeyError> {
        let plain = Zeroizing::new(
            serde_json::to_vec(ring).map_err(|e| self.io(std::io::Error::other(e)))?,
        );
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let ct = Aes256Gcm::new(GenericArray::from_slice(sealing_key))
            .encrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &self.aad(),
                },
            )
            .map_err(|_| self.io(std::io::Error::other("keyring encryption failed")))?;
        let mut out = KEYRING_MAGIC.to_vec();
        out.extend_from_slice(&KEYRING_VERSION.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(&self, bytes: &[u8]) -> Result<Keyring, KeyError> {
        let wrong = || KeyError::WrongMasterKey {
            provider: self.name.clone(),
            path: self.keyring_path.display().to_string(),
        };
        if bytes.len() < 8 + 2 + 12 + 16 || &bytes[..8] != KEYRING_MAGIC {
            return Err(wrong());
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != KEYRING_VERSION {
            return Err(KeyError::MasterKey {
                provider: self.name.clone(),
                reason: format!("keyring version {version} is not supported: upgrade coffre"),
            });
        }
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    GenericArray::from_slice(&bytes[10..22]),
                    Payload {
                        msg: &bytes[22..],
                        aad: &self.aad(),
                    },
                )
                .map_err(|_| wrong())?,
        );
        serde_json::from_slice(&plain).map_err(|_| wrong())
    }

    fn epoch_key(&self, ring: &Keyring, epoch: &EpochId) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        match ring.epochs.get(epoch) {
            None => Err(KeyError::UnknownEpoch {
                provider: self.name.clone(),
                epoch: epoch.clone(),
            }),
            Some(Entry {
                key: None,
                destroyed,
                ..
            }) => Err(KeyError::KeyDestroyed {
                provider: self.name.clone(),
                epoch: epoch.clone(),
                at: destroyed.clone(),
            }),
            Some(Entry {
                key: Some(hexkey), ..
            }) => {
                let mut k = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(hexkey, k.as_mut()).map_err(|_| KeyError::MasterKey {
                    provider: self.name.clone(),
                    reason: format!("epoch key {epoch} in the keyring is malformed"),
                })?;
                Ok(k)
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.lock().ring.generation
    }

    /// Key rotation (`keys::rotate`): under the keyring's lock, merge the file into this copy,
    /// seal the result under another master key with a generation above `above_generation` and
    /// the file's, and replace the file with it. Returns the generation, the bytes written and
    /// the epochs they hold. From then on the keyring opens with the new master key only (this
    /// provider, holding the old one, must be dropped).
    pub(crate) fn reseal_to_disk(
        &self,
        new_master: &[u8; 32],
        above_generation: u64,
    ) -> Result<(u64, Vec<u8>, Vec<EpochInfo>), KeyError> {
        let key = sealing_key(&self.name, new_master)?;
        let mut st = self.lock();
        let _flock = self.flock()?;
        if let Some((d, _)) = self.read_disk()? {
            let from = format!("the keyring on disk {}", self.keyring_path.display());
            merge(&mut st.ring, &d, &self.name, &from)?;
            st.ring.generation = st.ring.generation.max(d.generation);
        }
        let current = st.ring.generation;
        let generation = current.max(above_generation) + 1;
        st.ring.generation = generation;
        let sealed = self.seal_under(&key, &st.ring);
        st.ring.generation = current;
        let sealed = sealed?;
        write_atomic(&self.keyring_path, &sealed, 0o600).map_err(|e| self.io(e))?;
        self.sweep_temporaries();
        Ok((generation, sealed, epoch_infos(&st.ring)))
    }
}

fn epoch_infos(ring: &Keyring) -> Vec<EpochInfo> {
    ring.epochs
        .iter()
        .map(|(id, e)| EpochInfo {
            epoch: id.clone(),
            created: e.created.clone(),
            destroyed: e.destroyed.clone(),
        })
        .collect()
}

/// The keyring's sealing key, derived from the master key.
fn sealing_key(provider: &str, master: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let hk = Hkdf::<Sha256>::new(None, master);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(b"coffre/v1/keyring", key.as_mut())
        .map_err(|_| KeyError::MasterKey {
            provider: provider.to_string(),
            reason: "key derivation failed".into(),
        })?;
    Ok(key)
}

impl KeyProvider for FileProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "file"
    }
    fn algorithm(&self) -> &'static str {
        "aes256-kwp"
    }

    fn ensure_epoch(&self, epoch: &EpochId) -> Result<(), KeyError> {
        // Decided on the keyring as it is on disk, under its lock: two copies never each create
        // their own key for one epoch, and an epoch another copy destroyed is never used again.
        self.synced(|ring, _| match ring.epochs.get(epoch) {
            Some(Entry { key: Some(_), .. }) => Ok(((), Persist::IfStale)),
            Some(Entry {
                key: None,
                destroyed,
                ..
            }) => Err(KeyError::KeyDestroyed {
                provider: self.name.clone(),
                epoch: epoch.clone(),
                at: destroyed.clone(),
            }),
            None => {
                let mut k = Zeroizing::new([0u8; 32]);
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, k.as_mut());
                ring.epochs.insert(
                    epoch.clone(),
                    Entry {
                        key: Some(hex::encode(k.as_ref())),
                        created: now(),
                        destroyed: None,
                    },
                );
                Ok(((), Persist::NewGeneration))
            }
        })
    }

    fn wrap(
        &self,
        epoch: &EpochId,
        dek: &DataKey,
        _snapshot: &SnapshotId,
    ) -> Result<Vec<u8>, KeyError> {
        let k = self.synced(|ring, _| Ok((self.epoch_key(ring, epoch)?, Persist::IfStale)))?;
        let kek = aes_kw::KekAes256::new(GenericArray::from_slice(k.as_ref()));
        kek.wrap_with_padding_vec(dek.expose())
            .map_err(|_| KeyError::MasterKey {
                provider: self.name.clone(),
                reason: "key wrap failed".into(),
            })
    }

    fn unwrap(
        &self,
        epoch: &EpochId,
        wrapped: &[u8],
        snapshot: &SnapshotId,
    ) -> Result<DataKey, KeyError> {
        // Re-read: an epoch destroyed by another copy of the keyring is destroyed here too.
        let k = self.synced(|ring, _| Ok((self.epoch_key(ring, epoch)?, Persist::IfStale)))?;
        let kek = aes_kw::KekAes256::new(GenericArray::from_slice(k.as_ref()));
        let mut out = Zeroizing::new([0u8; 32]);
        let fail = || KeyError::UnwrapFailed {
            provider: self.name.clone(),
            epoch: epoch.clone(),
            snapshot: snapshot.to_string(),
        };
        if wrapped.len() != 40 {
            return Err(fail());
        }
        let plain = kek
            .unwrap_with_padding(wrapped, out.as_mut())
            .map_err(|_| fail())?;
        if plain.len() != 32 {
            return Err(fail());
        }
        let mut dek = [0u8; 32];
        dek.copy_from_slice(plain);
        let key = DataKey::from_bytes(dek);
        dek.zeroize();
        Ok(key)
    }

    fn destroy(&self, epoch: &EpochId) -> Result<(), KeyError> {
        self.synced(|ring, _| {
            let entry = ring.epochs.entry(epoch.clone()).or_insert_with(|| Entry {
                key: None,
                created: now(),
                destroyed: None,
            });
            if entry.key.is_none() && entry.destroyed.is_some() {
                return Ok(((), Persist::IfStale));
            }
            if let Some(k) = entry.key.as_mut() {
                k.zeroize();
            }
            entry.key = None;
            entry.destroyed = Some(now());
            Ok(((), Persist::NewGeneration))
        })
    }

    fn epochs(&self) -> Result<Vec<EpochInfo>, KeyError> {
        self.synced(|ring, _| Ok((epoch_infos(ring), Persist::IfStale)))
    }

    fn health(&self) -> Result<(), KeyError> {
        Ok(())
    }

    fn replicated_state(&self) -> Result<Option<(u64, Vec<u8>)>, KeyError> {
        // Exactly the bytes on disk for their generation: the same generation always has the
        // same bytes, wherever it is pushed.
        self.synced(|_, _| Ok(((), Persist::IfStale)))?;
        Ok(self
            .lock()
            .on_disk
            .as_ref()
            .filter(|d| d.generation > 0)
            .map(|d| (d.generation, d.bytes.clone())))
    }

    fn adopt_replicated_state(&self, bytes: &[u8]) -> Result<bool, KeyError> {
        let theirs = self.unseal(bytes)?;
        // Merge: the union of epoch keys, where a destruction known to either side wins. Keyrings
        // written by two hosts therefore converge, and a stale copy never brings a key back.
        self.synced(|ring, disk| {
            let from = format!("a replicated keyring of generation {}", theirs.generation);
            let changed = merge(ring, &theirs, &self.name, &from)?;
            if disk.is_some_and(|(g, b)| g == theirs.generation && b == bytes) {
                return Ok((changed, Persist::IfStale));
            }
            // Theirs holds everything the merge holds and is newer: take it as it is.
            if covers(&theirs, ring) && theirs.generation > ring.generation {
                *ring = theirs.copy();
                return Ok((
                    changed,
                    Persist::Verbatim {
                        generation: theirs.generation,
                        bytes: bytes.to_vec(),
                    },
                ));
            }
            // A copy at our generation or above that is not ours: the merge must become a newer
            // generation, so that it can be pushed without overwriting that one.
            if theirs.generation >= ring.generation {
                ring.generation = theirs.generation;
                return Ok((changed, Persist::NewGeneration));
            }
            Ok((changed, Persist::IfStale))
        })
    }
}

pub(crate) fn load_master_key(k: &KeyProviderConfig) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let err = |reason: String| KeyError::MasterKey {
        provider: k.name.clone(),
        reason,
    };
    let path: PathBuf = match (&k.master_key, &k.master_key_credential) {
        (Some(p), None) => p.clone(),
        (None, Some(cred)) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                err(format!("master-key-credential = \"{cred}\" but CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential={cred}:/path/to/master.key"))
            })?;
            Path::new(&dir).join(cred)
        }
        _ => {
            return Err(err(
                "set exactly one of master-key or master-key-credential".into(),
            ))
        }
    };
    if !path.exists() && k.create_master_key && k.master_key.is_some() {
        create_master_key(&path)
            .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
        tracing::info!(provider = %k.name, path = %path.display(), "created a new master key (mode 0600); back it up off-site: without it no snapshot can be restored");
    }
    if k.master_key.is_some() {
        // A missing file is reported below, with how to create it.
        if let Some(problem) = present_secret_file_problem(&path) {
            return Err(err(problem));
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        err(format!(
            "cannot read {}: {e}. Create it with `coffre keys init`, or restore it from your key escrow",
            path.display()
        ))
    })?);
    let trimmed = text.trim();
    let mut key = Zeroizing::new([0u8; 32]);
    if trimmed.len() != 64 || hex::decode_to_slice(trimmed, key.as_mut()).is_err() {
        return Err(err(format!(
            "{} must hold exactly 64 hexadecimal characters (a 32-byte key)",
            path.display()
        )));
    }
    Ok(key)
}

/// Create a new random master key file (mode 0600, never overwriting).
pub fn create_master_key(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut());
    let mut text = Zeroizing::new(hex::encode(key.as_ref()));
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    sync_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T>(r: Result<T, KeyError>) -> KeyError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn config(dir: &Path) -> (Config, KeyProviderConfig) {
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
        let c = Config::from_toml(&text, Path::new("t")).unwrap();
        let k = c.key_providers[0].clone();
        (c, k)
    }

    #[test]
    fn wrap_unwrap_destroy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let p = FileProvider::open(&c, &k).unwrap();
        let mode = std::fs::metadata(dir.path().join("keys/master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = EpochId::try_from("2026-12-01.1".to_string()).unwrap();
        let id = SnapshotId::new();
        p.ensure_epoch(&e).unwrap();
        let dek = DataKey::generate();
        let w = p.wrap(&e, &dek, &id).unwrap();
        assert_eq!(p.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
        // Reopen from disk.
        let p2 = FileProvider::open(&c, &k).unwrap();
        assert_eq!(p2.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
        // Tampered wrap.
        let mut bad = w.clone();
        bad[3] ^= 1;
        assert!(matches!(
            err(p2.unwrap(&e, &bad, &id)),
            KeyError::UnwrapFailed { .. }
        ));
        p2.destroy(&e).unwrap();
        assert!(err(p2.unwrap(&e, &w, &id)).is_destroyed());
        let p3 = FileProvider::open(&c, &k).unwrap();
        assert!(err(p3.unwrap(&e, &w, &id)).is_destroyed());
        assert!(p3.ensure_epoch(&e).unwrap_err().is_destroyed());
        // The keyring on disk holds no trace of the key.
        let raw = std::fs::read(c.keyring_path(&k)).unwrap();
        assert!(!raw.windows(4).any(|w| w == b"key\""));
    }

    #[test]
    fn wrong_master_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let p = FileProvider::open(&c, &k).unwrap();
        p.ensure_epoch(&EpochId::try_from("2026-12-01.1".to_string()).unwrap())
            .unwrap();
        std::fs::remove_file(dir.path().join("keys/master.key")).unwrap();
        create_master_key(&dir.path().join("keys/master.key")).unwrap();
        let mut k2 = k.clone();
        k2.create_master_key = false;
        assert!(matches!(
            err(FileProvider::open(&c, &k2)),
            KeyError::WrongMasterKey { .. }
        ));
    }

    #[test]
    fn older_replicated_keyring_never_replaces_newer() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let p = FileProvider::open(&c, &k).unwrap();
        let e = EpochId::try_from("2026-12-01.1".to_string()).unwrap();
        p.ensure_epoch(&e).unwrap();
        let (g1, old) = p.replicated_state().unwrap().unwrap();
        p.destroy(&e).unwrap();
        assert!(p.generation() > g1);
        assert!(!p.adopt_replicated_state(&old).unwrap());
        assert!(p.ensure_epoch(&e).unwrap_err().is_destroyed());
    }

    fn epoch(s: &str) -> EpochId {
        EpochId::try_from(s.to_string()).unwrap()
    }

    /// Finding 2 of issue 11: one copy destroys epoch A, another (loaded before) then creates
    /// epoch B and writes: A stays destroyed on disk and in both copies.
    #[test]
    fn a_destruction_by_another_copy_is_never_undone() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let a = epoch("2026-12-31.1");
        let b = epoch("2027-01-01.1");
        let id = SnapshotId::new();
        let p1 = FileProvider::open(&c, &k).unwrap();
        p1.ensure_epoch(&a).unwrap();
        let dek = DataKey::generate();
        let w = p1.wrap(&a, &dek, &id).unwrap();
        let p2 = FileProvider::open(&c, &k).unwrap();
        assert_eq!(p2.unwrap(&a, &w, &id).unwrap().expose(), dek.expose());
        let before_destroy = std::fs::read(c.keyring_path(&k)).unwrap();
        p1.destroy(&a).unwrap();
        // p2 still held A's key in memory: it neither uses it nor writes it back.
        p2.ensure_epoch(&b).unwrap();
        assert!(err(p2.unwrap(&a, &w, &id)).is_destroyed());
        assert!(err(p2.wrap(&a, &dek, &id)).is_destroyed());
        assert!(p2.ensure_epoch(&a).unwrap_err().is_destroyed());
        let infos = p2.epochs().unwrap();
        assert!(infos.iter().any(|e| e.epoch == a && e.destroyed.is_some()));
        assert!(infos.iter().any(|e| e.epoch == b && e.destroyed.is_none()));
        let p3 = FileProvider::open(&c, &k).unwrap();
        assert!(err(p3.unwrap(&a, &w, &id)).is_destroyed());
        p3.wrap(&b, &dek, &id).unwrap();
        // p1 sees B, created by p2.
        p1.wrap(&b, &dek, &id).unwrap();
        // A replicated copy from before the destruction brings nothing back either.
        p2.adopt_replicated_state(&before_destroy).unwrap();
        assert!(err(p1.unwrap(&a, &w, &id)).is_destroyed());
        assert!(err(FileProvider::open(&c, &k).unwrap().unwrap(&a, &w, &id)).is_destroyed());
    }

    /// Two copies asked for the same new epoch end with one key between them.
    #[test]
    fn two_copies_creating_one_epoch_share_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let e = epoch("audit-2033-12-01.1");
        let p1 = FileProvider::open(&c, &k).unwrap();
        let p2 = FileProvider::open(&c, &k).unwrap();
        p1.ensure_epoch(&e).unwrap();
        p2.ensure_epoch(&e).unwrap();
        let id = SnapshotId::new();
        let d1 = DataKey::generate();
        let d2 = DataKey::generate();
        let w1 = p1.wrap(&e, &d1, &id).unwrap();
        let w2 = p2.wrap(&e, &d2, &id).unwrap();
        assert_eq!(p2.unwrap(&e, &w1, &id).unwrap().expose(), d1.expose());
        assert_eq!(p1.unwrap(&e, &w2, &id).unwrap().expose(), d2.expose());
        let p3 = FileProvider::open(&c, &k).unwrap();
        assert_eq!(p3.unwrap(&e, &w2, &id).unwrap().expose(), d2.expose());
        assert_eq!(p3.epochs().unwrap().len(), 1);
    }

    /// Many threads, each with its own copy, creating and destroying epochs at once: every
    /// creation and every destruction is on disk at the end.
    #[test]
    fn concurrent_copies_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        FileProvider::open(&c, &k).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (c, k) = (&c, &k);
                scope.spawn(move || {
                    let p = FileProvider::open(c, k).unwrap();
                    for i in 0..10 {
                        let e = epoch(&format!("2030-01-{:02}.{}", i + 1, t + 1));
                        p.ensure_epoch(&e).unwrap();
                        if i % 2 == 0 {
                            p.destroy(&e).unwrap();
                        }
                    }
                });
            }
        });
        let p = FileProvider::open(&c, &k).unwrap();
        let infos = p.epochs().unwrap();
        assert_eq!(infos.len(), 40);
        assert_eq!(infos.iter().filter(|e| e.destroyed.is_some()).count(), 20);
        assert!(p.generation() >= 60, "{}", p.generation());
    }

    /// Two keyrings that each created their own key for one epoch: a merge refuses, naming the
    /// provider and the epoch, and changes nothing.
    #[test]
    fn two_keys_for_one_epoch_are_a_fatal_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let mut k2 = k.clone();
        k2.keyring = Some(dir.path().join("elsewhere/local.keyring"));
        let e = epoch("2026-12-31.2");
        let p1 = FileProvider::open(&c, &k).unwrap();
        let p2 = FileProvider::open(&c, &k2).unwrap();
        p1.ensure_epoch(&e).unwrap();
        p2.ensure_epoch(&e).unwrap();
        let id = SnapshotId::new();
        let dek = DataKey::generate();
        let w = p1.wrap(&e, &dek, &id).unwrap();
        // From a store.
        let (_, theirs) = p2.replicated_state().unwrap().unwrap();
        let before = std::fs::read(c.keyring_path(&k)).unwrap();
        let e1 = err(p1.adopt_replicated_state(&theirs));
        assert!(e1.is_fatal(), "{e1}");
        match &e1 {
            KeyError::ConflictingEpochKeys {
                provider, epoch, ..
            } => {
                assert_eq!(provider, "local");
                assert_eq!(epoch, &e);
            }
            other => panic!("{other}"),
        }
        let text = e1.to_string();
        assert!(
            text.contains("`local`") && text.contains("2026-12-31.2"),
            "{text}"
        );
        assert_eq!(std::fs::read(c.keyring_path(&k)).unwrap(), before);
        assert_eq!(p1.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
        // From the file on disk (another copy's keyring put in its place).
        std::fs::copy(c.keyring_path(&k2), c.keyring_path(&k)).unwrap();
        assert!(matches!(
            err(p1.unwrap(&e, &w, &id)),
            KeyError::ConflictingEpochKeys { .. }
        ));
        assert!(err(p1.ensure_epoch(&epoch("2027-01-01.1"))).is_fatal());
    }

    /// Two hosts sharing stores (each its own keyring file, one master key): a newer copy that
    /// holds everything is taken byte for byte, so the same generation has the same bytes on
    /// both and nobody writes a new one just for having read the other's.
    #[test]
    fn hosts_sharing_stores_converge_on_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let mut k2 = k.clone();
        k2.keyring = Some(dir.path().join("host2/local.keyring"));
        let p1 = FileProvider::open(&c, &k).unwrap();
        let p2 = FileProvider::open(&c, &k2).unwrap();
        p1.ensure_epoch(&epoch("2026-12-01.1")).unwrap();
        let (g1, b1) = p1.replicated_state().unwrap().unwrap();
        assert!(p2.adopt_replicated_state(&b1).unwrap());
        assert_eq!(p2.replicated_state().unwrap().unwrap(), (g1, b1.clone()));
        p2.ensure_epoch(&epoch("2026-12-02.1")).unwrap();
        let (g2, b2) = p2.replicated_state().unwrap().unwrap();
        assert!(g2 > g1);
        assert!(p1.adopt_replicated_state(&b2).unwrap());
        assert_eq!(p1.replicated_state().unwrap().unwrap(), (g2, b2.clone()));
        assert!(!p1.adopt_replicated_state(&b2).unwrap());
        assert!(!p2.adopt_replicated_state(&b2).unwrap());
        assert_eq!(p1.generation(), g2);
        assert_eq!(p2.generation(), g2);
        // Same generation, other bytes: the merge becomes a newer generation.
        p1.destroy(&epoch("2026-12-01.1")).unwrap();
        p2.destroy(&epoch("2026-12-02.1")).unwrap();
        let (g3, b3) = p2.replicated_state().unwrap().unwrap();
        assert_eq!(p1.generation(), g3);
        p1.adopt_replicated_state(&b3).unwrap();
        let (g4, _) = p1.replicated_state().unwrap().unwrap();
        assert!(g4 > g3);
        assert!(p1.epochs().unwrap().iter().all(|e| e.destroyed.is_some()));
    }

    #[test]
    fn stale_temporary_keyrings_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = config(dir.path());
        let p = FileProvider::open(&c, &k).unwrap();
        p.ensure_epoch(&epoch("2026-12-01.1")).unwrap();
        let stale = c.keyring_path(&k).with_extension("tmp-999999");
        std::fs::write(&stale, b"old keys").unwrap();
        p.ensure_epoch(&epoch("2026-12-02.1")).unwrap();
        assert!(!stale.exists());
    }
}
