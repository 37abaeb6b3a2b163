//! The small JSON objects beside each sealed object: the manifest (immutable, written last) and
//! the key object (wrapped DEKs; rewritten on re-wrap). Neither holds personal data or key
//! material in clear. Parsers refuse unknown fields, unknown format versions and oversized input.

use serde::{Deserialize, Serialize};

use crate::ids::{EpochId, SnapshotId};

/// Largest manifest or key object accepted (checked before reading it).
pub const MAX_SMALL_OBJECT: u64 = 64 * 1024;
pub const MANIFEST_FORMAT: u32 = 1;
pub const KEY_OBJECT_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    /// A single file (pg_dump output), restored as a file.
    File,
    /// A directory (pg_basebackup plain format), sealed as one tar stream in a stable order.
    Directory,
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
    /// HMAC-SHA-256 of the plaintext under a key derived from the DEK, hex (shreds with it).
    pub plaintext_hmac_sha256: String,
    pub cipher: String,
    pub compression: String,
    pub segment_log2: u8,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() as u64 > MAX_SMALL_OBJECT {
            return Err("manifest too large".into());
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this coffre reads {MANIFEST_FORMAT}): upgrade coffre",
                m.format
            ));
        }
        if m.sealed_sha256.len() != 64 || hex::decode(&m.sealed_sha256).is_err() {
            return Err("sealed_sha256 is not a SHA-256 in hex".into());
        }
        if m.plaintext_hmac_sha256.len() != 64 || hex::decode(&m.plaintext_hmac_sha256).is_err() {
            return Err("plaintext_hmac_sha256 is not a hex digest".into());
        }
        if !crate::ids::is_valid_name(&m.source) {
            return Err("source is not a valid name".into());
        }
        Ok(m)
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
}

impl KeyObject {
    pub fn parse(bytes: &[u8]) -> Result<KeyObject, String> {
        if bytes.len() as u64 > MAX_SMALL_OBJECT {
            return Err("key object too large".into());
        }
        let k: KeyObject =
            serde_json::from_slice(bytes).map_err(|e| format!("not a key object: {e}"))?;
        if k.format != KEY_OBJECT_FORMAT {
            return Err(format!(
                "key object format {} is not supported: upgrade coffre",
                k.format
            ));
        }
        if k.wraps.is_empty() {
            return Err("key object holds no wrapped key".into());
        }
        Ok(k)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            snapshot: SnapshotId::new(),
            source: "emr".into(),
            host: "h".into(),
            created: "2026-11-28T00:00:00Z".into(),
            kind: SnapshotKind::File,
            original_name: "emr.sql".into(),
            size: 10,
            compressed_size: 9,
            sealed_size: 100,
            sealed_sha256: "0".repeat(64),
            plaintext_hmac_sha256: "1".repeat(64),
            cipher: "aes-256-gcm".into(),
            compression: "zstd".into(),
            segment_log2: 20,
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_bad_input() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["format"] = 2.into();
        assert!(Manifest::parse(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .contains("format 2"));
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["extra"] = 1.into();
        assert!(Manifest::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(Manifest::parse(b"{").is_err());
        assert!(Manifest::parse(&vec![b' '; 70_000])
            .unwrap_err()
            .contains("too large"));
    }
}
