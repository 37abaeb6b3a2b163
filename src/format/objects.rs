//! The small JSON objects beside each sealed object: the manifest (immutable, written last) and
//! the key object (wrapped DEKs; rewritten on re-wrap). Neither holds personal data or key
//! material in clear. Parsers refuse unknown fields, unknown format versions and oversized input.

use serde::{Deserialize, Serialize};

use crate::ids::{EpochId, SnapshotId};

/// Largest manifest or key object accepted (checked before reading it).
pub const MAX_SMALL_OBJECT: u64 = 64 * 1024;
/// Manifest format written: 2 (keyed BLAKE3 plaintext digest). Format 1 (HMAC-SHA-256 plaintext
/// digest, written by the first versions) is still read, so that old snapshots keep restoring.
pub const MANIFEST_FORMAT: u32 = 2;
pub const KEY_OBJECT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    /// A single file (pg_dump output), restored as a file.
    File,
    /// A directory (pg_basebackup plain format), sealed as one tar stream in a stable order.
    Directory,
    /// A PostgreSQL WAL file (segment, partial segment, backup or timeline history), archived
    /// by `coffre wal-push` and restored as a file; `original_name` is its WAL file name.
    Wal,
}

/// How the manifest's keyed plaintext digest is computed (both keys derive from the DEK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    /// Manifest format 1: HMAC-SHA-256 under HKDF(DEK, salt, "coffre/v1/digest" || id).
    HmacSha256,
    /// Manifest format 2: BLAKE3 keyed mode under HKDF(DEK, salt, "coffre/v1/digest-blake3" || id).
    Blake3Keyed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub snapshot: SnapshotId,
    pub source: String,
    pub host: String,
    /// RFC 3339 UTC.
    pub created: String,
    pub kind: SnapshotKind,
    /// File or folder name of the snapshot as it landed (e.g. `emr.sql`, `base-2026-11-28`).
    pub original_name: String,
    /// Plaintext bytes (the tar stream for a directory).
    pub size: u64,
    pub compressed_size: u64,
    pub sealed_size: u64,
    /// SHA-256 of the sealed object, hex: lets scrubs check replicas without keys.
    pub sealed_sha256: String,
    /// Format 1 only: HMAC-SHA-256 of the plaintext under a key derived from the DEK, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_hmac_sha256: Option<String>,
    /// Format 2: keyed BLAKE3 of the plaintext under a key derived from the DEK, hex. Either
    /// way the digest is keyed so that it shreds with the DEK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_blake3: Option<String>,
    pub cipher: String,
    pub compression: String,
    pub segment_log2: u8,
    /// A PostgreSQL base backup (a `directory` snapshot with a `backup_label`): the WAL file
    /// its backup starts at, the oldest one a point-in-time recovery from it needs (a WAL file
    /// name, never data). Retention keeps the WAL from there while this backup starts the
    /// recovery window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_wal_start: Option<String>,
}

/// A manifest that [`Manifest::parse`] refuses: what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest too large")]
    TooLarge,
    #[error("not a manifest: {0}")]
    NotJson(serde_json::Error),
    #[error("manifest format {format} is not supported (this coffre reads 1 and {MANIFEST_FORMAT}): upgrade coffre")]
    Format { format: u32 },
    #[error("sealed_sha256 is not a SHA-256 in hex")]
    SealedDigest,
    #[error("{field} is not a 32-byte digest in hex")]
    PlainDigest { field: &'static str },
    #[error("manifest format {format} needs {field}")]
    MissingDigest { format: u32, field: &'static str },
    #[error("manifest format {format} has a plaintext digest of another format")]
    OtherDigest { format: u32 },
    #[error("source is not a valid name")]
    Source,
    #[error(transparent)]
    WalName(#[from] crate::format::wal::WalNameError),
}

/// A key object that [`KeyObject::parse`] refuses: what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum KeyObjectError {
    #[error("key object too large")]
    TooLarge,
    #[error("not a key object: {0}")]
    NotJson(serde_json::Error),
    #[error("key object format {format} is not supported: upgrade coffre")]
    Format { format: u32 },
    #[error("key object holds no wrapped key")]
    NoWraps,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() as u64 > MAX_SMALL_OBJECT {
            return Err(ManifestError::TooLarge);
        }
        let mut m: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::NotJson)?;
        // Hex is compared as text further on: one case only.
        m.sealed_sha256.make_ascii_lowercase();
        for d in [&mut m.plaintext_hmac_sha256, &mut m.plaintext_blake3]
            .into_iter()
            .flatten()
        {
            d.make_ascii_lowercase();
        }
        if m.format != 1 && m.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { format: m.format });
        }
        if m.sealed_sha256.len() != 64 || hex::decode(&m.sealed_sha256).is_err() {
            return Err(ManifestError::SealedDigest);
        }
        let (field, present, other) = match m.format {
            1 => (
                "plaintext_hmac_sha256",
                &m.plaintext_hmac_sha256,
                &m.plaintext_blake3,
            ),
            _ => (
                "plaintext_blake3",
                &m.plaintext_blake3,
                &m.plaintext_hmac_sha256,
            ),
        };
        match present {
            Some(d) if d.len() == 64 && hex::decode(d).is_ok() => {}
            Some(_) => return Err(ManifestError::PlainDigest { field }),
            None => {
                return Err(ManifestError::MissingDigest {
                    format: m.format,
                    field,
                })
            }
        }
        if other.is_some() {
            return Err(ManifestError::OtherDigest { format: m.format });
        }
        if !crate::ids::is_valid_name(&m.source) {
            return Err(ManifestError::Source);
        }
        if m.kind == SnapshotKind::Wal {
            crate::format::wal::WalName::parse(&m.original_name)?;
        }
        Ok(m)
    }

    /// The keyed plaintext digest (hex) and how it was computed. `None` only for a manifest
    /// that did not come through [`Manifest::parse`] and lacks the field of its format.
    pub(crate) fn plaintext_digest(&self) -> Option<(DigestAlg, &str)> {
        match self.format {
            1 => self
                .plaintext_hmac_sha256
                .as_deref()
                .map(|d| (DigestAlg::HmacSha256, d)),
            _ => self
                .plaintext_blake3
                .as_deref()
                .map(|d| (DigestAlg::Blake3Keyed, d)),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// One provider's wrap of the DEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wrap {
    pub provider: String,
    pub kind: String,
    pub algorithm: String,
    pub epoch: EpochId,
    /// Base64 of the wrapped DEK.
    pub wrapped: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyObject {
    pub format: u32,
    pub snapshot: SnapshotId,
    pub source: String,
    pub epoch: EpochId,
    /// RFC 3339 UTC time at which the snapshot is planned to expire.
    pub planned_expiry: String,
    pub wraps: Vec<Wrap>,
    /// Reason of a legal hold, if any (no personal data).
    #[serde(default)]
    pub legal_hold: Option<String>,
    /// Authentication of this key object together with its snapshot's manifest, one tag per
    /// key provider, under keys the stores never see (`crate::auth`). Empty in key objects
    /// written before format 2 of the manifest's authentication (`coffre catalog seal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth: Vec<AuthTag>,
}

/// An HMAC-SHA-256 tag over a key object and its manifest, under one provider's
/// object-authentication key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthTag {
    pub provider: String,
    /// Hex of the 32-byte tag.
    pub hmac: String,
}

impl KeyObject {
    pub fn parse(bytes: &[u8]) -> Result<KeyObject, KeyObjectError> {
        if bytes.len() as u64 > MAX_SMALL_OBJECT {
            return Err(KeyObjectError::TooLarge);
        }
        let k: KeyObject = serde_json::from_slice(bytes).map_err(KeyObjectError::NotJson)?;
        if k.format != KEY_OBJECT_FORMAT {
            return Err(KeyObjectError::Format { format: k.format });
        }
        if k.wraps.is_empty() {
            return Err(KeyObjectError::NoWraps);
        }
        Ok(k)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// A manifest for unit tests.
#[cfg(test)]
pub(crate) fn sample_manifest(id: SnapshotId) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        snapshot: id,
        source: "emr".into(),
        host: "h".into(),
        created: "2026-11-28T00:00:00Z".into(),
        kind: SnapshotKind::File,
        original_name: "emr.sql".into(),
        size: 10,
        compressed_size: 9,
        sealed_size: 100,
        sealed_sha256: "0".repeat(64),
        plaintext_hmac_sha256: None,
        plaintext_blake3: Some("1".repeat(64)),
        cipher: "aes-256-gcm".into(),
        compression: "zstd".into(),
        segment_log2: 20,
        pg_wal_start: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        sample_manifest(SnapshotId::new())
    }

    #[test]
    fn manifest_round_trips_and_refuses_bad_input() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert_eq!(
            m.plaintext_digest(),
            Some((DigestAlg::Blake3Keyed, "1".repeat(64).as_str()))
        );
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert!(v.get("plaintext_hmac_sha256").is_none(), "{v}");
        v["format"] = 3.into();
        assert!(Manifest::parse(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string()
            .contains("format 3"));
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["extra"] = 1.into();
        assert!(Manifest::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(Manifest::parse(b"{").is_err());
        assert!(Manifest::parse(&vec![b' '; 70_000])
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn format_1_manifests_keep_their_hmac_and_formats_do_not_mix() {
        let reparse = |v: &serde_json::Value| Manifest::parse(&serde_json::to_vec(v).unwrap());
        let mut v: serde_json::Value = serde_json::from_slice(&manifest().to_json()).unwrap();
        // A format-1 manifest as the first versions wrote it.
        v["format"] = 1.into();
        v.as_object_mut().unwrap().remove("plaintext_blake3");
        v["plaintext_hmac_sha256"] = "2".repeat(64).into();
        let m1 = reparse(&v).unwrap();
        assert_eq!(
            m1.plaintext_digest(),
            Some((DigestAlg::HmacSha256, "2".repeat(64).as_str()))
        );
        // Serialised again, it is byte-for-byte the same shape (no new field appears).
        let again: serde_json::Value = serde_json::from_slice(&m1.to_json()).unwrap();
        assert_eq!(again, v);
        // Format 1 without its HMAC, or with a BLAKE3 digest as well: refused.
        let mut both = v.clone();
        both["plaintext_blake3"] = "3".repeat(64).into();
        assert!(reparse(&both)
            .unwrap_err()
            .to_string()
            .contains("another format"));
        let mut none = v.clone();
        none.as_object_mut()
            .unwrap()
            .remove("plaintext_hmac_sha256");
        assert!(reparse(&none)
            .unwrap_err()
            .to_string()
            .contains("needs plaintext_hmac_sha256"));
        // Format 2 with only an HMAC: refused (no downgrade to the older digest).
        let mut downgrade = v.clone();
        downgrade["format"] = 2.into();
        assert!(reparse(&downgrade)
            .unwrap_err()
            .to_string()
            .contains("needs plaintext_blake3"));
        // Upper-case hex reads as the same digest.
        let mut upper: serde_json::Value = serde_json::from_slice(&manifest().to_json()).unwrap();
        upper["sealed_sha256"] = "AB".repeat(32).into();
        upper["plaintext_blake3"] = "CD".repeat(32).into();
        let m = reparse(&upper).unwrap();
        assert_eq!(m.sealed_sha256, "ab".repeat(32));
        assert_eq!(m.plaintext_digest().unwrap().1, "cd".repeat(32));
        // A digest that is not 32 bytes of hex.
        let mut short: serde_json::Value = serde_json::from_slice(&manifest().to_json()).unwrap();
        short["plaintext_blake3"] = "zz".into();
        assert!(reparse(&short)
            .unwrap_err()
            .to_string()
            .contains("not a 32-byte digest"));
    }
}
