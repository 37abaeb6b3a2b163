//! Rows of the fault-matrix summary: each fault test appends (fault, runs, survived, bytes lost)
//! to target/tmp/fault-matrix.tsv; tests/run prints the table at the end.

#![allow(dead_code)]

use std::io::Write;

pub fn record(fault: &str, runs: u64, survived: u64, bytes_lost: u64) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-matrix.tsv");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{fault}\t{runs}\t{survived}\t{bytes_lost}");
    }
}
