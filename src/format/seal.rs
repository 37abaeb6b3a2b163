//! Sealed object format v1 (docs/FORMAT.md): a plaintext, authenticated header followed by the
//! STREAM construction (RustCrypto `aead::stream::StreamBE32`) over AES-256-GCM segments.
//!
//! Invariants:
//! - the payload key is HKDF-SHA-256(DEK, salt, "coffre/v1/payload" || snapshot id), never the DEK;
//!   a fresh salt per object means a fresh key, so a nonce is never reused under one key;
//! - every segment's AAD is the SHA-256 of the header bytes, so a header edit or a segment spliced
//!   from another object fails authentication;
//! - the last segment is sealed with the STREAM "last" flag: truncation at a segment boundary,
//!   trailing bytes, reordering and bit flips all fail closed, each with its own error;
//! - every length read from an object is bounds-checked before anything is allocated.

use std::io::{self, Write};

use aes_gcm::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::{generic_array::GenericArray, KeyInit};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::format::objects::DigestAlg;
use crate::format::DataKey;
use crate::ids::SnapshotId;

/// First bytes of every sealed object.
pub const MAGIC: [u8; 8] = *b"\x89COFFRE\n";
/// The only format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
pub const CIPHER_AES256GCM: u8 = 1;
pub const KDF_HKDF_SHA256: u8 = 1;
pub const COMPRESSION_ZSTD: u8 = 1;
/// Smallest and largest accepted segment sizes (log2): 64 KiB to 16 MiB.
pub const MIN_SEGMENT_LOG2: u8 = 16;
pub const MAX_SEGMENT_LOG2: u8 = 24;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes of the fixed part of the header, before the snapshot id.
pub const FIXED_HEADER_LEN: usize = 53;
/// Longest snapshot id accepted in a header.
pub const MAX_ID_LEN: usize = 64;
/// Longest header accepted.
pub const MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + MAX_ID_LEN;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error(
        "not a coffre sealed object (bad magic bytes): the object is corrupt or is not coffre data"
    )]
    BadMagic,
    #[error("sealed format version {0} is not supported by this coffre (it reads version {FORMAT_VERSION}): upgrade coffre to open it")]
    UnsupportedVersion(u16),
    #[error("sealed header declares unsupported {what} {value}: refusing to guess (the object is corrupt or from a newer coffre)")]
    UnsupportedAlgorithm { what: &'static str, value: u32 },
    #[error("sealed header is malformed: {0}")]
    MalformedHeader(String),
    #[error("sealed object is truncated: {0}")]
    Truncated(String),
    #[error("sealed object has {0} trailing byte(s) after its last segment")]
    TrailingBytes(u64),
    #[error("segment {segment} failed authentication: the object was tampered with, corrupted, reordered, or sealed with another key")]
    Tampered { segment: u64 },
    #[error("the object header names snapshot {found}, not {expected}: a header or object from another snapshot was spliced in")]
    WrongSnapshot { expected: String, found: String },
    #[error("too many segments: the STREAM counter would overflow")]
    CounterOverflow,
    #[error("I/O error while sealing: {0}")]
    Io(#[from] io::Error),
}

/// The plaintext header of a sealed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub segment_log2: u8,
    pub salt: [u8; 32],
    pub snapshot: String,
}

impl Header {
    pub fn new(snapshot: &SnapshotId, segment_log2: u8) -> Header {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        Header {
            segment_log2,
            salt,
            snapshot: snapshot.to_string(),
        }
    }

    pub fn segment_size(&self) -> usize {
        1usize << self.segment_log2
    }

    /// Encoded header bytes.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.snapshot.as_bytes();
        let len = FIXED_HEADER_LEN + id.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.push(CIPHER_AES256GCM);
        out.push(KDF_HKDF_SHA256);
        out.push(COMPRESSION_ZSTD);
        out.push(self.segment_log2);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out
    }

    /// Length of the whole header, read from its first 12 bytes. Checks magic, version and the
    /// bounds of the declared length, so that a caller can read exactly that many bytes.
    pub fn peek_len(prefix: &[u8]) -> Result<usize, SealError> {
        if prefix.len() < 12 {
            return Err(SealError::Truncated(format!(
                "{} byte(s), shorter than a header",
                prefix.len()
            )));
        }
        if prefix[..8] != MAGIC {
            return Err(SealError::BadMagic);
        }
        let version = u16::from_be_bytes([prefix[8], prefix[9]]);
        if version != FORMAT_VERSION {
            return Err(SealError::UnsupportedVersion(version));
        }
        let len = u16::from_be_bytes([prefix[10], prefix[11]]) as usize;
        if !(FIXED_HEADER_LEN + 1..=MAX_HEADER_LEN).contains(&len) {
            return Err(SealError::MalformedHeader(format!(
                "declared header length {len} is outside {}..={MAX_HEADER_LEN}",
                FIXED_HEADER_LEN + 1
            )));
        }
        Ok(len)
    }

    /// Parse a header from exactly its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Header, SealError> {
        let len = Self::peek_len(bytes)?;
        if bytes.len() < len {
            return Err(SealError::Truncated(format!(
                "header of {len} bytes cut at {}",
                bytes.len()
            )));
        }
        let bytes = &bytes[..len];
        if bytes[12] != CIPHER_AES256GCM {
            return Err(SealError::UnsupportedAlgorithm {
                what: "cipher id",
                value: bytes[12] as u32,
            });
        }
        if bytes[13] != KDF_HKDF_SHA256 {
            return Err(SealError::UnsupportedAlgorithm {
                what: "kdf id",
                value: bytes[13] as u32,
            });
        }
        if bytes[14] != COMPRESSION_ZSTD {
            return Err(SealError::UnsupportedAlgorithm {
                what: "compression id",
                value: bytes[14] as u32,
            });
        }
        let segment_log2 = bytes[15];
        if !(MIN_SEGMENT_LOG2..=MAX_SEGMENT_LOG2).contains(&segment_log2) {
            return Err(SealError::MalformedHeader(format!(
                "segment size 2^{segment_log2} is outside 2^{MIN_SEGMENT_LOG2}..=2^{MAX_SEGMENT_LOG2}"
            )));
        }
        let flags = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if flags != 0 {
            return Err(SealError::UnsupportedAlgorithm {
                what: "flags",
                value: flags,
            });
        }
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&bytes[20..52]);
        let id_len = bytes[52] as usize;
        if id_len == 0 || FIXED_HEADER_LEN + id_len != len {
            return Err(SealError::MalformedHeader(format!(
                "snapshot id length {id_len} does not match header length {len}"
            )));
        }
        let snapshot = std::str::from_utf8(&bytes[FIXED_HEADER_LEN..len])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or_else(|| {
                SealError::MalformedHeader("snapshot id is not ASCII alphanumeric".into())
            })?
            .to_string();
        Ok(Header {
            segment_log2,
            salt,
            snapshot,
        })
    }
}

/// Keys derived from a snapshot's DEK for one object.
pub struct ObjectKeys {
    stream: StreamBE32<Aes256Gcm>,
    aad: [u8; 32],
}

/// HKDF-SHA-256(DEK, salt, label || snapshot id) into 32 bytes.
pub fn derive(dek: &DataKey, salt: &[u8; 32], label: &str, snapshot: &str) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), dek.expose());
    let mut okm = Zeroizing::new([0u8; 32]);
    let mut info = Vec::with_capacity(label.len() + snapshot.len());
    info.extend_from_slice(label.as_bytes());
    info.extend_from_slice(snapshot.as_bytes());
    // 32 bytes is always a valid HKDF-SHA-256 output length.
    hk.expand(&info, okm.as_mut())
        .unwrap_or_else(|_| unreachable!("32 <= 255 * 32"));
    okm
}

/// Key of the keyed plaintext digest recorded in the manifest (shreds with the DEK): HMAC-SHA-256
/// for manifest format 1, BLAKE3's keyed mode for format 2 (distinct labels, distinct keys).
pub(crate) fn digest_key(
    dek: &DataKey,
    salt: &[u8; 32],
    snapshot: &str,
    alg: DigestAlg,
) -> Zeroizing<[u8; 32]> {
    let label = match alg {
        DigestAlg::HmacSha256 => "coffre/v1/digest",
        DigestAlg::Blake3Keyed => "coffre/v1/digest-blake3",
    };
    derive(dek, salt, label, snapshot)
}

impl ObjectKeys {
    pub fn new(dek: &DataKey, header: &Header, header_bytes: &[u8]) -> ObjectKeys {
        let key = derive(dek, &header.salt, "coffre/v1/payload", &header.snapshot);
        let aead = Aes256Gcm::new(GenericArray::from_slice(key.as_ref()));
        // The key is unique per object (fresh salt), so a fixed nonce prefix is safe.
        let prefix = GenericArray::default();
        ObjectKeys {
            stream: StreamBE32::from_aead(aead, &prefix),
            aad: Sha256::digest(header_bytes).into(),
        }
    }
}

/// Streaming sealer: write compressed plaintext in, sealed bytes come out of `out`.
pub struct Sealer<W: Write> {
    keys: ObjectKeys,
    buf: Zeroizing<Vec<u8>>,
    seg: usize,
    position: u32,
    out: W,
}

impl<W: Write> Sealer<W> {
    /// Start a sealed object: writes the header to `out`.
    pub fn new(dek: &DataKey, header: &Header, mut out: W) -> Result<Self, SealError> {
        let hb = header.encode();
        out.write_all(&hb)?;
        let seg = header.segment_size();
        Ok(Sealer {
            keys: ObjectKeys::new(dek, header, &hb),
            buf: Zeroizing::new(Vec::with_capacity(seg + TAG_LEN)),
            seg,
            position: 0,
            out,
        })
    }

    fn flush_segment(&mut self, last: bool) -> Result<(), SealError> {
        self.keys
            .stream
            .encrypt_in_place(self.position, last, &self.keys.aad, &mut *self.buf)
            .map_err(|_| SealError::Io(io::Error::other("AES-GCM encryption failed")))?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        if !last {
            self.position = self
                .position
                .checked_add(1)
                .ok_or(SealError::CounterOverflow)?;
        }
        Ok(())
    }

    /// Seal the last segment and return the inner writer.
    pub fn finish(mut self) -> Result<W, SealError> {
        self.flush_segment(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            // A full buffer is sealed only once more data arrives: it may be the last segment.
            if self.buf.len() == self.seg {
                self.flush_segment(false).map_err(io::Error::other)?;
            }
            let take = (self.seg - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Segment-by-segment opener: the caller frames segments (see [`Framer`]) and opens them in order.
pub struct Opener {
    keys: ObjectKeys,
    position: u32,
    done: bool,
}

impl Opener {
    pub fn new(dek: &DataKey, header: &Header, header_bytes: &[u8]) -> Opener {
        Opener {
            keys: ObjectKeys::new(dek, header, header_bytes),
            position: 0,
            done: false,
        }
    }

    /// Index of the next segment to open.
    pub fn position(&self) -> u64 {
        self.position as u64
    }

    /// Open one segment in place (ciphertext + tag in, plaintext out). `last` says whether the
    /// framer saw the end of the object after it.
    pub(crate) fn open_segment(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), SealError> {
        let segment = self.position as u64;
        if self.done {
            return Err(SealError::TrailingBytes(buf.len() as u64));
        }
        if buf.len() < TAG_LEN {
            return Err(SealError::Truncated(format!(
                "segment {segment} has {} byte(s), shorter than its tag",
                buf.len()
            )));
        }
        if last {
            let saved = buf.clone();
            match self
                .keys
                .stream
                .decrypt_in_place(self.position, true, &self.keys.aad, buf)
            {
                Ok(()) => {
                    self.done = true;
                    Ok(())
                }
                Err(_) => {
                    // A segment that authenticates as a middle segment means the object ends
                    // early at a segment boundary: truncation, not tampering.
                    let mut probe = saved;
                    if self
                        .keys
                        .stream
                        .decrypt_in_place(self.position, false, &self.keys.aad, &mut probe)
                        .is_ok()
                    {
                        Err(SealError::Truncated(format!(
                            "the object ends after segment {segment} but that segment is not the last one"
                        )))
                    } else {
                        Err(SealError::Tampered { segment })
                    }
                }
            }
        } else {
            self.keys
                .stream
                .decrypt_in_place(self.position, false, &self.keys.aad, buf)
                .map_err(|_| SealError::Tampered { segment })?;
            self.position = self
                .position
                .checked_add(1)
                .ok_or(SealError::CounterOverflow)?;
            Ok(())
        }
    }
}

/// Splits a sealed byte stream (after the header) into ciphertext segments, holding back one byte
/// of lookahead so that it knows which segment is last.
pub struct Framer {
    ct_seg: usize,
    buf: Vec<u8>,
}

impl Framer {
    pub fn new(segment_log2: u8) -> Framer {
        let ct_seg = (1usize << segment_log2) + TAG_LEN;
        Framer {
            ct_seg,
            buf: Vec::with_capacity(ct_seg + 1),
        }
    }

    /// Sealed size of a segment (plaintext segment + tag).
    pub(crate) fn ct_segment_len(&self) -> usize {
        self.ct_seg
    }

    /// Feed bytes; returns how many were taken (stops once a full segment plus one byte is held).
    pub fn push(&mut self, data: &[u8]) -> usize {
        let room = (self.ct_seg + 1).saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        take
    }

    /// A complete middle segment, if one is known (a full segment followed by at least one byte).
    pub(crate) fn next_middle(&mut self) -> Option<Vec<u8>> {
        if self.buf.len() > self.ct_seg {
            let rest = self.buf.split_off(self.ct_seg);
            let seg = std::mem::replace(&mut self.buf, rest);
            self.buf.reserve(self.ct_seg + 1);
            Some(seg)
        } else {
            None
        }
    }

    /// At end of input: the final segment (whatever is left; may be too short, which the opener
    /// reports as truncation).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Drop buffered bytes (when resuming from another store at a segment boundary).
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
    }
}

/// Open a whole sealed object held in memory (tests, the golden fixture, small objects).
pub fn open_to_vec(
    dek: &DataKey,
    sealed: &[u8],
    expected_snapshot: Option<&str>,
) -> Result<Vec<u8>, SealError> {
    let hlen = Header::peek_len(sealed)?;
    let header = Header::decode(sealed)?;
    if let Some(exp) = expected_snapshot {
        if header.snapshot != exp {
            return Err(SealError::WrongSnapshot {
                expected: exp.to_string(),
                found: header.snapshot,
            });
        }
    }
    let mut opener = Opener::new(dek, &header, &sealed[..hlen]);
    let mut framer = Framer::new(header.segment_log2);
    let mut rest = &sealed[hlen..];
    let mut out = Vec::new();
    loop {
        let n = framer.push(rest);
        rest = &rest[n..];
        if let Some(mut seg) = framer.next_middle() {
            opener.open_segment(&mut seg, false)?;
            out.extend_from_slice(&seg);
            continue;
        }
        if rest.is_empty() {
            let mut seg = framer.finish();
            opener.open_segment(&mut seg, true)?;
            out.extend_from_slice(&seg);
            return Ok(out);
        }
    }
}

/// Seal a whole buffer in memory (tests and small objects).
pub fn seal_to_vec(dek: &DataKey, header: &Header, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut s = Sealer::new(dek, header, Vec::new())?;
    s.write_all(plaintext)?;
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOG2: u8 = 16;
    const SEG: usize = 1 << LOG2;
    const CT: usize = SEG + TAG_LEN;

    fn key(b: u8) -> DataKey {
        DataKey::from_bytes([b; 32])
    }

    fn seal(dek: &DataKey, data: &[u8]) -> (Header, Vec<u8>) {
        let h = Header::new(&SnapshotId::new(), LOG2);
        let s = seal_to_vec(dek, &h, data).unwrap();
        (h, s)
    }

    fn hlen(h: &Header) -> usize {
        h.encode().len()
    }

    #[test]
    fn round_trips_at_the_edges() {
        let dek = key(7);
        for len in [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (h, sealed) = seal(&dek, &data);
            let segments = if len == 0 { 1 } else { len.div_ceil(SEG) };
            assert_eq!(
                sealed.len(),
                hlen(&h) + len + segments * TAG_LEN,
                "len {len}"
            );
            assert_eq!(
                open_to_vec(&dek, &sealed, Some(&h.snapshot)).unwrap(),
                data,
                "len {len}"
            );
        }
    }

    #[test]
    fn header_round_trips_and_rejects_unknowns() {
        let h = Header::new(&SnapshotId::new(), 20);
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut v = b.clone();
        v[9] = 2;
        assert!(matches!(
            Header::decode(&v),
            Err(SealError::UnsupportedVersion(2))
        ));
        for (i, what) in [(12, "cipher id"), (13, "kdf id"), (14, "compression id")] {
            let mut v = b.clone();
            v[i] = 9;
            match Header::decode(&v) {
                Err(SealError::UnsupportedAlgorithm { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{other:?}"),
            }
        }
        let mut v = b.clone();
        v[19] = 1;
        assert!(matches!(
            Header::decode(&v),
            Err(SealError::UnsupportedAlgorithm { what: "flags", .. })
        ));
        let mut v = b.clone();
        v[15] = 40;
        assert!(matches!(
            Header::decode(&v),
            Err(SealError::MalformedHeader(_))
        ));
        let mut v = b.clone();
        v[10] = 0xff;
        assert!(matches!(
            Header::decode(&v),
            Err(SealError::MalformedHeader(_))
        ));
        let mut v = b.clone();
        v[0] = b'X';
        assert!(matches!(Header::decode(&v), Err(SealError::BadMagic)));
        assert!(matches!(
            Header::decode(&b[..5]),
            Err(SealError::Truncated(_))
        ));
    }

    #[test]
    fn wrong_key_fails_at_segment_zero() {
        let (_, sealed) = seal(&key(1), b"hello");
        assert!(matches!(
            open_to_vec(&key(2), &sealed, None),
            Err(SealError::Tampered { segment: 0 })
        ));
    }

    #[test]
    fn truncation_at_a_segment_boundary_is_truncation() {
        let dek = key(3);
        let data = vec![5u8; 3 * SEG];
        let (h, sealed) = seal(&dek, &data);
        let cut = hlen(&h) + 2 * CT;
        assert!(matches!(
            open_to_vec(&dek, &sealed[..cut], None),
            Err(SealError::Truncated(_))
        ));
        // Mid-segment truncation of the last segment fails closed as tampering of that segment.
        let cut = sealed.len() - 5;
        assert!(matches!(
            open_to_vec(&dek, &sealed[..cut], None),
            Err(SealError::Tampered { segment: 2 })
        ));
        // Nothing after the header at all.
        assert!(matches!(
            open_to_vec(&dek, &sealed[..hlen(&h)], None),
            Err(SealError::Truncated(_))
        ));
        assert!(open_to_vec(&dek, &[], None).is_err());
    }

    #[test]
    fn trailing_bytes_fail() {
        let dek = key(4);
        let (_, mut sealed) = seal(&dek, &vec![1u8; 2 * SEG]);
        sealed.extend_from_slice(b"junk");
        assert!(open_to_vec(&dek, &sealed, None).is_err());
    }

    #[test]
    fn swapped_duplicated_and_dropped_segments_fail() {
        let dek = key(5);
        let data: Vec<u8> = (0..3 * SEG + 10).map(|i| i as u8).collect();
        let (h, sealed) = seal(&dek, &data);
        let hl = hlen(&h);
        let seg = |i: usize| sealed[hl + i * CT..(hl + (i + 1) * CT).min(sealed.len())].to_vec();
        let build = |order: &[usize]| {
            let mut v = sealed[..hl].to_vec();
            for &i in order {
                v.extend_from_slice(&seg(i));
            }
            v
        };
        assert!(matches!(
            open_to_vec(&dek, &build(&[1, 0, 2, 3]), None),
            Err(SealError::Tampered { segment: 0 })
        ));
        assert!(matches!(
            open_to_vec(&dek, &build(&[0, 0, 2, 3]), None),
            Err(SealError::Tampered { segment: 1 })
        ));
        assert!(matches!(
            open_to_vec(&dek, &build(&[0, 2, 3]), None),
            Err(SealError::Tampered { segment: 1 })
        ));
        assert!(open_to_vec(&dek, &build(&[0, 1, 2, 3]), None).is_ok());
    }

    #[test]
    fn a_segment_or_header_from_another_object_fails() {
        let dek = key(6);
        let data = vec![9u8; 2 * SEG];
        let (h1, s1) = seal(&dek, &data);
        let (h2, s2) = seal(&dek, &data);
        let hl = hlen(&h1);
        // Segment 0 of object 2 spliced into object 1 (same DEK, other salt).
        let mut v = s1.clone();
        v[hl..hl + CT].copy_from_slice(&s2[hl..hl + CT]);
        assert!(matches!(
            open_to_vec(&dek, &v, None),
            Err(SealError::Tampered { segment: 0 })
        ));
        // Header of object 2 on object 1's body.
        let mut v = s2[..hlen(&h2)].to_vec();
        v.extend_from_slice(&s1[hl..]);
        assert!(matches!(
            open_to_vec(&dek, &v, Some(&h1.snapshot)),
            Err(SealError::WrongSnapshot { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_position_in_a_small_object_is_refused() {
        let dek = key(8);
        let (_, sealed) = seal(&dek, b"a small snapshot");
        for i in 0..sealed.len() {
            let mut v = sealed.clone();
            v[i] ^= 0x01;
            assert!(
                open_to_vec(&dek, &v, None).is_err(),
                "flip at byte {i} was accepted"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn proptest_round_trip(data in proptest::collection::vec(any::<u8>(), 0..(3 * SEG)), k in any::<u8>()) {
            let dek = key(k);
            let (_, sealed) = seal(&dek, &data);
            prop_assert_eq!(open_to_vec(&dek, &sealed, None).unwrap(), data);
        }
    }
}
