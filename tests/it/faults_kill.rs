//! Fault matrix row 1: `kill -9` of the daemon at seeded random points while snapshots are
//! being taken in, sealed, uploaded and committed. After each kill the daemon restarts; every
//! snapshot committed before is still restorable byte-identical, no partial snapshot is ever
//! listed, and each file ends up protected exactly once.
//!
//! COFFRE_FAULT_SEED=N reproduces a run; COFFRE_KILL_RUNS sets how many kills (default 20).

use crate::common::config::ConfigBuilder;
use crate::common::daemon::{coffre_command, OnDrop, TestDaemon};
use crate::matrix;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*, seeded: the kill points are reproducible from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config(d: &Path) -> PathBuf {
    ConfigBuilder::new(d)
        .table(
            "daemon",
            "scan-interval = \"100ms\"\ncatch-up-interval = \"500ms\"",
        )
        .status(0)
        .table("pipeline", "segment-size = \"64KiB\"\npart-size = \"5MiB\"")
        .source("emr", &d.join("in"), "complete = \"rename\"")
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .write(&d.join("coffre.toml"))
}

/// Start the daemon, its log (warnings and errors) appended to `daemon.log` beside the config;
/// killed with -9 when dropped.
fn start(config: &Path) -> TestDaemon {
    let mut c = coffre_command(config);
    c.env(
        "COFFRE_LOG",
        std::env::var("COFFRE_KILL_LOG").unwrap_or_else(|_| "warn".into()),
    );
    TestDaemon::spawn_appending(c, &config.with_file_name("daemon.log")).on_drop(OnDrop::Kill)
}

/// The last lines of the daemons' log, for a failure message.
fn log_tail(config: &Path) -> String {
    let text = std::fs::read_to_string(config.with_file_name("daemon.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(120)..].join("\n")
}

fn snapshots(config: &Path) -> Vec<serde_json::Value> {
    let out = coffre_command(config)
        .args(["snapshots", "--json"])
        .env("COFFRE_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn make_file(path: &Path, rng: &mut Rng) -> u64 {
    let mib = 1 + rng.below(24) as usize;
    let mut v = Vec::with_capacity(mib << 20);
    let mut i = rng.next();
    while v.len() < mib << 20 {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.extend_from_slice(
            format!(
                "INSERT INTO lab_results VALUES ({}, 'CANARY-ZXQ-PATIENT', {});\n",
                i >> 40,
                i % 997
            )
            .as_bytes(),
        );
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &v).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    v.len() as u64
}

#[test]
fn kill_9_at_random_points_loses_nothing() {
    let seed: u64 = std::env::var("COFFRE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FF_4E00);
    let runs: u64 = std::env::var("COFFRE_KILL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!(
        "kill -9 fault test: seed {seed}, {runs} kills (COFFRE_FAULT_SEED={seed} reproduces)"
    );
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let config = config(d);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut survived = 0;
    for run in 0..runs {
        let daemon = start(&config);
        let f = d.join(format!("in/dump-{run:02}.sql"));
        make_file(&f, &mut rng);
        files.push(f);
        // Kill somewhere between intake and commit (or after).
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        daemon.kill9();
        // No partial snapshot is ever listed: every listed one is complete in both stores.
        for s in snapshots(&config) {
            assert_eq!(
                s["stores"].as_array().map(|a| a.len()),
                Some(2),
                "run {run} (seed {seed}): partial snapshot listed: {s}"
            );
        }
        survived += 1;
    }
    // A last start finishes whatever was interrupted; each file is protected exactly once.
    let daemon = start(&config);
    let t = Instant::now();
    while snapshots(&config).len() < files.len() {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "not every file got protected after the kills (seed {seed}): {} of {}; daemon log:\n{}",
            snapshots(&config).len(),
            files.len(),
            log_tail(&config)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(1500));
    daemon.kill9();
    let list = snapshots(&config);
    assert_eq!(
        list.len(),
        files.len(),
        "each file protected exactly once (seed {seed})"
    );
    let out = coffre_command(&config)
        .args(["verify"])
        .env("COFFRE_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every snapshot restores byte-identical to its file.
    let mut lost = 0u64;
    for s in &list {
        let id = s["id"].as_str().unwrap();
        let name = s["name"].as_str().unwrap();
        let to = d.join(format!("restored-{name}"));
        let out = coffre_command(&config)
            .args([
                "restore",
                id,
                "--source",
                "emr",
                "--to",
                to.to_str().unwrap(),
                "--purpose",
                "kill -9 fault test",
            ])
            .env("COFFRE_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let original = std::fs::read(d.join("in").join(name)).unwrap();
        if std::fs::read(&to).unwrap() != original {
            lost += original.len() as u64;
        }
    }
    matrix::record(
        "kill -9 during intake/seal/upload/commit",
        runs,
        survived,
        lost,
    );
    assert_eq!(lost, 0, "bytes lost (seed {seed})");
}
