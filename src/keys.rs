//! Keys: the per-snapshot data key (DEK), epoch keys held by key providers, and the `KeyProvider`
//! trait (create epoch key, wrap, unwrap, destroy, health).
//!
//! Invariants:
//! - a DEK never leaves memory in clear; it is zeroized on drop and has no `Clone`, `Debug`,
//!   `Serialize`;
//! - a DEK is wrapped under the epoch key of the UTC day its snapshot is planned to expire;
//!   destroying that epoch key in every provider makes every copy of the snapshot unreadable;
//! - "key destroyed" is a distinct error from "wrong key" and "tampered"; coffre never falls back
//!   to trying other keys.

pub mod file;
pub mod pkcs11;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{EpochId, SnapshotId};

pub use crate::format::DataKey;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("epoch key {epoch} was destroyed by provider `{provider}` (crypto-shredded{}): the snapshots it covered can no longer be decrypted by anyone", at.as_deref().map(|t| format!(" at {t}")).unwrap_or_default())]
    KeyDestroyed {
        provider: String,
        epoch: EpochId,
        at: Option<String>,
    },
    #[error("provider `{provider}` has no epoch key {epoch}: the keyring is older than the snapshot, or belongs to another installation. Restore the keyring from a store (`coffre keys status`), or use the provider that wrapped this snapshot")]
    UnknownEpoch { provider: String, epoch: EpochId },
    #[error("the keyring {path} cannot be opened with the master key of provider `{provider}`: wrong master key, or the keyring is corrupt. Use the master key this installation was created with")]
    WrongMasterKey { provider: String, path: String },
    #[error("the wrapped data key of snapshot {snapshot} does not unwrap under epoch {epoch} of provider `{provider}`: the key object was altered or the provider holds a different key")]
    UnwrapFailed {
        provider: String,
        epoch: EpochId,
        snapshot: String,
    },
    #[error("master key of provider `{provider}` is not usable: {reason}")]
    MasterKey { provider: String, reason: String },
    #[error("key provider `{provider}` is unavailable: {reason}")]
    Unavailable { provider: String, reason: String },
    #[error("keyring of provider `{provider}` at {path}: {source}")]
    Io {
        provider: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("provider `{provider}` holds two different keys for epoch {epoch} (this keyring and {from}): two copies of the keyring each created their own key, so snapshots wrapped under one do not open with the other. coffre will not choose: stop every coffre process using this provider, keep every copy of the keyring (local file, store generations, backups of the state folder) and contact support to find which snapshots use which key")]
    ConflictingEpochKeys {
        provider: String,
        epoch: EpochId,
        /// Where the other key was found (the keyring file, a store's generation).
        from: String,
    },
    #[error("no key provider could unwrap the data key of snapshot {snapshot}: {reasons}")]
    NoProvider { snapshot: String, reasons: String },
}

impl KeyError {
    pub(crate) fn is_destroyed(&self) -> bool {
        matches!(self, KeyError::KeyDestroyed { .. })
    }

    /// True for an inconsistency no retry and no fallback may paper over (an operator must look):
    /// two different keys under one epoch id.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, KeyError::ConflictingEpochKeys { .. })
    }
}

/// What a provider knows of an epoch (no key material).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochInfo {
    pub epoch: EpochId,
    pub created: String,
    /// Set when the epoch key was destroyed.
    pub destroyed: Option<String>,
}

/// The data key of snapshot `id` wrapped by `p` under `epoch`, as a key object records it.
pub(crate) fn wrap_with(
    p: &dyn KeyProvider,
    epoch: &EpochId,
    dek: &DataKey,
    id: &SnapshotId,
) -> Result<crate::format::objects::Wrap, KeyError> {
    let wrapped = p.wrap(epoch, dek, id)?;
    Ok(crate::format::objects::Wrap {
        provider: p.name().to_string(),
        kind: p.kind().to_string(),
        algorithm: p.algorithm().to_string(),
        epoch: epoch.clone(),
        wrapped: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wrapped),
    })
}

/// The data key of snapshot `id` wrapped by every provider under `epoch` (each epoch key
/// created first where it does not exist yet): the wraps of a new key object. The first
/// provider that fails stops it, and its error says which.
pub(crate) fn wrap_for_all(
    providers: &[Arc<dyn KeyProvider>],
    epoch: &EpochId,
    dek: &DataKey,
    id: &SnapshotId,
) -> Result<Vec<crate::format::objects::Wrap>, KeyError> {
    providers
        .iter()
        .map(|p| {
            p.ensure_epoch(epoch)?;
            wrap_with(p.as_ref(), epoch, dek, id)
        })
        .collect()
}

/// Unwrap the DEK with the first provider that can. A destroyed epoch key is final: coffre does
/// not go looking for other keys.
pub(crate) fn unwrap_dek(
    providers: &[Arc<dyn KeyProvider>],
    key: &crate::format::objects::KeyObject,
) -> Result<DataKey, KeyError> {
    let mut reasons = Vec::new();
    let mut destroyed = None;
    for w in &key.wraps {
        let Some(p) = providers.iter().find(|p| p.name() == w.provider) else {
            reasons.push(format!("provider `{}` is not configured here", w.provider));
            continue;
        };
        let wrapped =
            match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &w.wrapped) {
                Ok(b) => b,
                Err(_) => {
                    reasons.push(format!("wrap of provider `{}` is not base64", w.provider));
                    continue;
                }
            };
        match p.unwrap(&w.epoch, &wrapped, &key.snapshot) {
            Ok(k) => return Ok(k),
            Err(e) if e.is_destroyed() => {
                if destroyed.is_none() {
                    destroyed = Some(e);
                }
            }
            Err(e) => reasons.push(e.to_string()),
        }
    }
    if let Some(e) = destroyed {
        return Err(e);
    }
    Err(KeyError::NoProvider {
        snapshot: key.snapshot.to_string(),
        reasons: reasons.join("; "),
    })
}

/// A key provider holds epoch keys and wraps data keys under them.
pub trait KeyProvider: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    /// Wrapping algorithm recorded in the key object.
    fn algorithm(&self) -> &'static str;
    /// Create the epoch key if it does not exist yet (idempotent). Errors if it was destroyed.
    fn ensure_epoch(&self, epoch: &EpochId) -> Result<(), KeyError>;
    fn wrap(
        &self,
        epoch: &EpochId,
        dek: &DataKey,
        snapshot: &SnapshotId,
    ) -> Result<Vec<u8>, KeyError>;
    fn unwrap(
        &self,
        epoch: &EpochId,
        wrapped: &[u8],
        snapshot: &SnapshotId,
    ) -> Result<DataKey, KeyError>;
    /// Destroy the epoch key; idempotent.
    fn destroy(&self, epoch: &EpochId) -> Result<(), KeyError>;
    fn epochs(&self) -> Result<Vec<EpochInfo>, KeyError>;
    fn health(&self) -> Result<(), KeyError>;
    /// State the stores should carry so that a disaster-recovery site can use this provider with
    /// only its master secret (the sealed keyring of a file provider): (generation, bytes).
    fn replicated_state(&self) -> Result<Option<(u64, Vec<u8>)>, KeyError> {
        Ok(None)
    }
    /// Adopt state fetched from a store if it is newer than ours; true when adopted.
    fn adopt_replicated_state(&self, _bytes: &[u8]) -> Result<bool, KeyError> {
        Ok(false)
    }

    /// This provider's object-authentication key (`crate::auth`): 32 bytes the stores never
    /// see, the same on every host that holds the provider. Derived by HKDF from the AES key
    /// wrap (RFC 5649, deterministic) of a fixed block under the epoch key
    /// [`OBJECT_AUTH_EPOCH`], which no retention ever destroys. `create`: make that epoch key
    /// when it is missing (writers only: a reader on a new host must not invent one).
    /// Where this provider's keys live among other hosts' keys in a shared key store (a PKCS#11
    /// token): empty for the host that owns its stores' roots, `<host>/` for the others
    /// (src/store/namespace.rs). Set once, when the application opens; the file provider's
    /// keyring is per host already.
    fn set_label_namespace(&self, _ns: &str) {}

    fn object_auth_key(&self, create: bool) -> Result<zeroize::Zeroizing<[u8; 32]>, KeyError> {
        let fail = |reason: &str| KeyError::MasterKey {
            provider: self.name().to_string(),
            reason: reason.to_string(),
        };
        let epoch = EpochId::try_from(OBJECT_AUTH_EPOCH.to_string()).map_err(|e| fail(&e))?;
        if create {
            self.ensure_epoch(&epoch)?;
        }
        let probe = DataKey::from_bytes(*OBJECT_AUTH_PROBE);
        let id = SnapshotId::nil();
        let w = zeroize::Zeroizing::new(self.wrap(&epoch, &probe, &id)?);
        let again = zeroize::Zeroizing::new(self.wrap(&epoch, &probe, &id)?);
        if *w != *again {
            return Err(fail(
                "its key wrap is not deterministic, so it cannot derive an object-authentication key",
            ));
        }
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"coffre/v1/object-auth"), &w);
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        hk.expand(b"coffre/v1/object-auth/hmac-sha256", key.as_mut())
            .map_err(|_| fail("object-authentication key derivation failed"))?;
        Ok(key)
    }
}

/// The epoch whose key authenticates key objects and manifests; never due, never destroyed.
pub const OBJECT_AUTH_EPOCH: &str = "object-auth.1";
/// The fixed block wrapped to derive the object-authentication key (not secret).
const OBJECT_AUTH_PROBE: &[u8; 32] = b"coffre/v1 object-auth probe key.";
