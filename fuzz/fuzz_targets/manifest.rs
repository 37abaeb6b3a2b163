//! `Manifest::parse` and `KeyObject::parse` on arbitrary bytes: never panic, and whatever parses
//! serialises back to JSON that parses to the same value.
#![no_main]

use coffre::format::objects::MAX_SMALL_OBJECT;
use coffre::store::{KeyObject, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let json = m.to_json();
        // Pretty printing can push a compact input just over the size limit; only round-trip
        // what fits.
        if json.len() as u64 <= MAX_SMALL_OBJECT {
            let again = Manifest::parse(&json).expect("a parsed manifest re-parses");
            assert_eq!(again, m, "manifest round trip");
        }
    }
    if let Ok(k) = KeyObject::parse(data) {
        let json = k.to_json();
        if json.len() as u64 <= MAX_SMALL_OBJECT {
            let again = KeyObject::parse(&json).expect("a parsed key object re-parses");
            assert_eq!(again, k, "key object round trip");
        }
    }
});
