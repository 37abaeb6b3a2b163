//! Fault matrix rows 4 to 8 on real sealed objects, counted for the summary table: every byte
//! flipped in turn, truncation at every segment boundary and mid-segment, trailing garbage, an
//! empty object, segments reordered, duplicated, dropped, spliced from another snapshot, and
//! headers with unknown versions, ids, flags or out-of-range lengths. Every one must be refused.

use crate::matrix;

use coffre::format::seal::{self, Header, SealError, TAG_LEN};
use coffre::ids::SnapshotId;
use coffre::keys::DataKey;

const LOG2: u8 = 16;
const CT: usize = (1 << LOG2) + TAG_LEN;

fn sealed(dek: &DataKey, len: usize) -> (Header, Vec<u8>) {
    let h = Header::new(&SnapshotId::new(), LOG2);
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let s = seal::seal_to_vec(dek, &h, &data).unwrap();
    (h, s)
}

#[test]
fn every_corruption_of_a_sealed_object_is_refused() {
    let dek = DataKey::from_bytes([9; 32]);

    // Row 4: every byte position of a small object, flipped in turn.
    let (_, small) = sealed(&dek, 300);
    let mut refused = 0;
    for i in 0..small.len() {
        let mut v = small.clone();
        v[i] ^= 0x80;
        if seal::open_to_vec(&dek, &v, None).is_err() {
            refused += 1;
        }
    }
    matrix::record(
        "byte flipped at every position (small object)",
        small.len() as u64,
        refused,
        0,
    );
    assert_eq!(refused, small.len() as u64);

    // Row 5: truncation at every segment boundary and mid-segment, trailing garbage, empty.
    let (h, big) = sealed(&dek, 4 * (1 << LOG2) + 1000);
    let hl = h.encode().len();
    let mut cuts: Vec<usize> = vec![0, 5, hl - 1, hl];
    for k in 1..=4 {
        cuts.push(hl + k * CT);
        cuts.push(hl + k * CT - CT / 2);
    }
    cuts.push(big.len() - 1);
    let mut refused = 0;
    let mut truncated_named = 0;
    for &c in &cuts {
        match seal::open_to_vec(&dek, &big[..c], None) {
            Err(SealError::Truncated(_)) => {
                refused += 1;
                truncated_named += 1;
            }
            Err(_) => refused += 1,
            Ok(_) => {}
        }
    }
    let mut trailing = big.clone();
    trailing.extend_from_slice(b"garbage");
    if seal::open_to_vec(&dek, &trailing, None).is_err() {
        refused += 1;
    }
    if seal::open_to_vec(&dek, &[], None).is_err() {
        refused += 1;
    }
    let runs = cuts.len() as u64 + 2;
    matrix::record(
        "truncated (boundaries, mid-segment), trailing bytes, empty",
        runs,
        refused,
        0,
    );
    assert_eq!(refused, runs);
    assert!(
        truncated_named >= 4,
        "cuts at segment boundaries are named truncation"
    );

    // Row 6: reordered, duplicated, dropped segments; header or segment from another snapshot.
    let seg = |s: &[u8], i: usize| s[hl + i * CT..(hl + (i + 1) * CT).min(s.len())].to_vec();
    let build = |s: &[u8], order: &[usize]| {
        let mut v = s[..hl].to_vec();
        for &i in order {
            v.extend_from_slice(&seg(s, i));
        }
        v
    };
    let (h2, other) = sealed(&dek, 4 * (1 << LOG2) + 1000);
    let mut cases: Vec<Vec<u8>> = vec![
        build(&big, &[1, 0, 2, 3, 4]),
        build(&big, &[0, 2, 1, 3, 4]),
        build(&big, &[0, 1, 2, 4, 3]),
        build(&big, &[0, 0, 1, 2, 3, 4]),
        build(&big, &[0, 1, 2, 3, 3, 4]),
        build(&big, &[0, 2, 3, 4]),
        build(&big, &[0, 1, 2, 3]),
    ];
    let mut spliced = big.clone();
    spliced[hl + CT..hl + 2 * CT].copy_from_slice(&other[hl + CT..hl + 2 * CT]);
    cases.push(spliced);
    let mut header_swapped = other[..h2.encode().len()].to_vec();
    header_swapped.extend_from_slice(&big[hl..]);
    cases.push(header_swapped);
    let refused = cases
        .iter()
        .filter(|c| seal::open_to_vec(&dek, c, Some(&h.snapshot)).is_err())
        .count() as u64;
    matrix::record(
        "segments reordered, duplicated, dropped, spliced; foreign header",
        cases.len() as u64,
        refused,
        0,
    );
    assert_eq!(refused, cases.len() as u64);

    // Row 7 (crypto part): the wrong key fails at segment 0, with no fallback to other keys.
    let wrong = DataKey::from_bytes([10; 32]);
    assert!(matches!(
        seal::open_to_vec(&wrong, &big, None),
        Err(SealError::Tampered { segment: 0 })
    ));

    // Row 8: unknown version, ids, flags; out-of-range lengths, refused before allocation.
    let hb = h.encode();
    let mut bad_headers = Vec::new();
    for (i, v) in [
        (9usize, 2u8),
        (12, 7),
        (13, 7),
        (14, 7),
        (15, 40),
        (15, 8),
        (19, 1),
        (10, 0xff),
        (11, 0),
        (52, 0),
        (52, 200),
    ] {
        let mut x = hb.clone();
        x[i] = v;
        bad_headers.push(x);
    }
    let refused = bad_headers
        .iter()
        .filter(|x| Header::decode(x).is_err())
        .count() as u64;
    matrix::record(
        "unknown version/ids/flags, out-of-range lengths",
        bad_headers.len() as u64,
        refused,
        0,
    );
    assert_eq!(refused, bad_headers.len() as u64);
}
