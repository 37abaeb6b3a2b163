//! `open_to_vec` (header, `Framer` segment framing, STREAM opening) on arbitrary bytes, under the
//! DEK of the golden fixtures (32 bytes of 0x42). It must return an error, never panic; memory is
//! bounded by one segment (at most 2^24 + 16 bytes) plus the input, which libFuzzer's
//! `-rss_limit_mb` / `-malloc_limit_mb` check.
#![no_main]

use coffre::keys::DataKey;
use coffre::format::seal::{open_to_vec, Header, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dek = DataKey::from_bytes([0x42; 32]);
    if let Ok(plain) = open_to_vec(&dek, data, None) {
        // Only a genuine object sealed under this DEK opens (the golden seeds): its plaintext is
        // the input less the header and one tag per segment.
        let h = Header::decode(data).expect("opened without a valid header");
        let hlen = Header::peek_len(data).expect("opened without a header length");
        let body = data.len() - hlen;
        let ct_seg = h.segment_size() + TAG_LEN;
        let segments = body.div_ceil(ct_seg).max(1);
        assert_eq!(plain.len(), body - segments * TAG_LEN, "plaintext length");
    }
    // With an expected snapshot id the header is checked first; must not panic either.
    let _ = open_to_vec(&dek, data, Some("01JDGOLDEN0000000000000000"));
});
