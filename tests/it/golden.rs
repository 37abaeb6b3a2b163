//! The golden sealed objects in tests/fixtures were written by format v1. These tests open them
//! with the current code, so that a format change that would strand old backups fails here.
//! Regenerate only for a NEW format version: `COFFRE_WRITE_GOLDEN=1 cargo test --test golden`.

use coffre::format::seal::{self, Header, SealError};
use coffre::keys::DataKey;
use sha2::{Digest, Sha256};

const SNAPSHOT: &str = "01JDGOLDEN0000000000000000";
const DEK: [u8; 32] = [0x42; 32];
const SALT: [u8; 32] = [0x17; 32];

/// Deterministic, incompressible bytes (xorshift64*), so the large fixture spans three segments.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn plaintexts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "golden-v1-small.sealed",
            b"coffre golden object v1\n-- CANARY-ZXQ-PATIENT must never appear sealed\n".to_vec(),
        ),
        ("golden-v1-3seg.sealed", noise(150 * 1024)),
    ]
}

fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn golden_objects_still_open() {
    if std::env::var_os("COFFRE_WRITE_GOLDEN").is_some() {
        for (name, plain) in plaintexts() {
            let header = Header {
                segment_log2: 16,
                salt: SALT,
                snapshot: SNAPSHOT.into(),
            };
            let compressed = zstd::encode_all(&plain[..], 3).unwrap();
            let sealed =
                seal::seal_to_vec(&DataKey::from_bytes(DEK), &header, &compressed).unwrap();
            std::fs::write(path(name), sealed).unwrap();
        }
    }
    let expected_sha =
        std::fs::read_to_string(path("golden-v1.sha256")).expect("tests/fixtures/golden-v1.sha256");
    for (name, plain) in plaintexts() {
        let sealed = std::fs::read(path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        // The bytes on disk are the ones recorded when the fixture was made.
        let sha = hex::encode(Sha256::digest(&sealed));
        assert!(
            expected_sha.contains(&format!("{sha}  {name}")),
            "{name} changed: sha256 {sha}"
        );
        let header = Header::decode(&sealed).unwrap();
        assert_eq!(header.snapshot, SNAPSHOT);
        assert_eq!(header.segment_log2, 16);
        let opened = seal::open_to_vec(&DataKey::from_bytes(DEK), &sealed, Some(SNAPSHOT)).unwrap();
        assert_eq!(zstd::decode_all(&opened[..]).unwrap(), plain, "{name}");
        // And the canary is nowhere in the sealed bytes.
        assert!(!sealed.windows(8).any(|w| w == b"CANARY-Z"));
        // A wrong key fails at segment 0.
        let wrong = seal::open_to_vec(&DataKey::from_bytes([0x43; 32]), &sealed, None);
        assert!(
            matches!(wrong, Err(SealError::Tampered { segment: 0 })),
            "{name}"
        );
    }
}
