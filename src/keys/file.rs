//! The `file` key provider: epoch keys live in a keyring sealed (AES-256-GCM) under a master key
//! read from a file or a systemd credential. DEKs are wrapped with AES key wrap with padding
//! (RFC 5649) under the epoch key.
//!
//! Invariants: the keyring file is replaced atomically (temp, fsync, rename, fsync dir) and carries
//! a generation number so that an older copy never replaces a newer one; a destroyed epoch keeps a
//! tombstone (id and time, no key) so that a later unwrap says "key destroyed", not "unknown".
//!
//! Honest limit: erasure with this provider holds only once every old copy of the keyring (local
//! disk, store versions, backups of the state folder) is gone. HSM providers give cryptographic
//! erase without that condition.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::{generic_array::GenericArray, Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::{DataKey, EpochInfo, KeyError, KeyProvider};
use crate::config::{secret_file_problem, Config, KeyProviderConfig};
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

impl Drop for Keyring {
    fn drop(&mut self) {
        for e in self.epochs.values_mut() {
            if let Some(k) = e.key.as_mut() {
                k.zeroize();
            }
        }
    }
}

pub struct FileProvider {
    name: String,
    keyring_path: PathBuf,
    sealing_key: Zeroizing<[u8; 32]>,
    ring: Mutex<Keyring>,
}

fn now() -> String {
    crate::audit::now_rfc3339()
}

impl FileProvider {
    /// Load the master key (creating it when configured to) and the local keyring, if any.
    pub fn open(config: &Config, k: &KeyProviderConfig) -> Result<FileProvider, KeyError> {
        let master = load_master_key(k)?;
        let sealing_key = sealing_key(&k.name, &master)?;
        let keyring_path = config.keyring_path(k);
        let p = FileProvider {
            name: k.name.clone(),
            keyring_path,
            sealing_key,
            ring: Mutex::new(Keyring::default()),
        };
        match std::fs::read(&p.keyring_path) {
            Ok(bytes) => {
                let ring = p.unseal(&bytes)?;
                *p.lock() = ring;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(p.io(e)),
        }
        Ok(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keyring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Write the keyring atomically with a bumped generation.
    fn persist(&self, ring: &mut Keyring) -> Result<(), KeyError> {
        ring.generation += 1;
        let bytes = self.seal(ring)?;
        write_atomic(&self.keyring_path, &bytes, 0o600).map_err(|e| self.io(e))
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
        self.lock().generation
    }

    /// Key rotation (`keys::rotate`): this keyring sealed under another master key, carrying
    /// `generation`. Neither the file on disk nor this provider changes; the caller writes the
    /// bytes (atomically) and from then on opens the keyring with the new master key.
    pub(crate) fn reseal_with(
        &self,
        new_master: &[u8; 32],
        generation: u64,
    ) -> Result<Vec<u8>, KeyError> {
        let key = sealing_key(&self.name, new_master)?;
        let mut ring = self.lock();
        let current = ring.generation;
        ring.generation = generation;
        let sealed = self.seal_under(&key, &ring);
        ring.generation = current;
        sealed
    }
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
        let mut ring = self.lock();
        match ring.epochs.get(epoch) {
            Some(Entry { key: Some(_), .. }) => Ok(()),
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
                self.persist(&mut ring)
            }
        }
    }

    fn wrap(
        &self,
        epoch: &EpochId,
        dek: &DataKey,
        _snapshot: &SnapshotId,
    ) -> Result<Vec<u8>, KeyError> {
        let ring = self.lock();
        let k = self.epoch_key(&ring, epoch)?;
        let kek = aes_kw::KekAes256::from(*k);
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
        let ring = self.lock();
        let k = self.epoch_key(&ring, epoch)?;
        let kek = aes_kw::KekAes256::from(*k);
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
        let mut ring = self.lock();
        let entry = ring.epochs.entry(epoch.clone()).or_insert_with(|| Entry {
            key: None,
            created: now(),
            destroyed: None,
        });
        if entry.key.is_none() && entry.destroyed.is_some() {
            return Ok(());
        }
        if let Some(k) = entry.key.as_mut() {
            k.zeroize();
        }
        entry.key = None;
        entry.destroyed = Some(now());
        self.persist(&mut ring)
    }

    fn epochs(&self) -> Result<Vec<EpochInfo>, KeyError> {
        Ok(self
            .lock()
            .epochs
            .iter()
            .map(|(id, e)| EpochInfo {
                epoch: id.clone(),
                created: e.created.clone(),
                destroyed: e.destroyed.clone(),
            })
            .collect())
    }

    fn health(&self) -> Result<(), KeyError> {
        Ok(())
    }

    fn replicated_state(&self) -> Result<Option<(u64, Vec<u8>)>, KeyError> {
        let ring = self.lock();
        if ring.generation == 0 {
            return Ok(None);
        }
        Ok(Some((ring.generation, self.seal(&ring)?)))
    }

    fn adopt_replicated_state(&self, bytes: &[u8]) -> Result<bool, KeyError> {
        let theirs = self.unseal(bytes)?;
        let mut ring = self.lock();
        // Merge: the union of epoch keys, where a destruction known to either side wins. Keyrings
        // written by two hosts therefore converge, and a stale copy never brings a key back.
        let mut changed = false;
        for (id, e) in theirs.epochs.iter() {
            match ring.epochs.get_mut(id) {
                None => {
                    ring.epochs.insert(
                        id.clone(),
                        Entry {
                            key: e.key.clone(),
                            created: e.created.clone(),
                            destroyed: e.destroyed.clone(),
                        },
                    );
                    changed = true;
                }
                Some(mine) => {
                    if e.destroyed.is_some() && mine.destroyed.is_none() {
                        if let Some(k) = mine.key.as_mut() {
                            k.zeroize();
                        }
                        mine.key = None;
                        mine.destroyed = e.destroyed.clone();
                        changed = true;
                    }
                }
            }
        }
        if changed {
            ring.generation = ring.generation.max(theirs.generation);
            self.persist(&mut ring)?;
        }
        Ok(changed)
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
        if let Some(problem) = secret_file_problem(&path) {
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

/// Create a folder (and parents) with mode 0700 for the leaf.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// fsync the parent folder of `path` so a create or rename is durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Write a file atomically: temp file, fsync, rename, fsync folder.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
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
}
