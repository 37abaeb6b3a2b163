//! `Header::peek_len` and `Header::decode` on arbitrary bytes: never panic, and agree with each
//! other and with `Header::encode`.
#![no_main]

use coffre::format::seal::{
    Header, FIXED_HEADER_LEN, MAX_HEADER_LEN, MAX_SEGMENT_LOG2, MIN_SEGMENT_LOG2,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peeked = Header::peek_len(data);
    if let Ok(len) = peeked {
        // A length the caller will read (and allocate) is always within the format's bounds.
        assert!(
            (FIXED_HEADER_LEN + 1..=MAX_HEADER_LEN).contains(&len),
            "peek_len {len}"
        );
    }
    if let Ok(h) = Header::decode(data) {
        // decode succeeds only where peek_len does, and reads exactly the declared bytes.
        let len = peeked.expect("decode accepted what peek_len refused");
        assert!((MIN_SEGMENT_LOG2..=MAX_SEGMENT_LOG2).contains(&h.segment_log2));
        assert!(!h.snapshot.is_empty());
        // Canonical: re-encoding gives back the very bytes that were decoded.
        assert_eq!(h.encode(), &data[..len], "decode/encode round trip");
        assert_eq!(h.segment_size(), 1usize << h.segment_log2);
    }
});
