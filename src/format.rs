//! What coffre writes, byte for byte: the sealed object (segmented AES-256-GCM with its header)
//! and the JSON objects beside it (manifest, key object). Depends on nothing but `ids`; the fuzz
//! targets link only this. docs/FORMAT.md describes it.

pub mod objects;
pub mod seal;
pub mod wal;

use secrecy::{ExposeSecret, SecretBox};

pub use objects::{KeyObject, Manifest, SnapshotKind, Wrap};

/// 32-byte data key of one snapshot.
pub struct DataKey(SecretBox<[u8; 32]>);

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> DataKey {
        let mut k = Box::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, k.as_mut());
        DataKey(SecretBox::new(k))
    }

    /// From raw bytes (the caller's copy should be zeroized).
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(SecretBox::new(Box::new(bytes)))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}
