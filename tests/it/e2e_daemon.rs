//! End-to-end tests of `coffre daemon`: the real binary, real folders, a real S3-compatible server
//! (s3s-fs) for outages, and the real status endpoint.

use crate::matrix;

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::config::ConfigBuilder;
use common::daemon::{http_get, wait_until, OnDrop, TestDaemon};
use common::{free_port, S3Server, CANARY_INSURANCE, CANARY_LAST_NAME};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

struct Env {
    dir: tempfile::TempDir,
    port: u16,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        for d in ["incoming", "base", "keys"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Env {
            dir,
            port: free_port(),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A config with two local stores (two sites) and optionally an S3 store, written to
    /// coffre.toml; `extra` is appended verbatim.
    fn config(&self, s3: Option<&S3Server>, extra: &str) -> PathBuf {
        let config = ConfigBuilder::new(self.dir.path())
            .quick_daemon()
            .status(self.port)
            .source("emr", &self.p("incoming"), "complete = \"rename\"")
            .source("base", &self.p("base"), "complete = \"marker\"")
            .local_stores(&[("site-a", "a")])
            .file_keys();
        let config = match s3 {
            Some(s) => config.s3_store_keys_in("s3-b", "b", s, ("T_AK", "T_SK")),
            None => config.local_stores(&[("site-b", "b")]),
        };
        config.raw(extra).write(&self.p("coffre.toml"))
    }

    /// The local-stores config of [`Env::config`] with source `base` archiving WAL:
    /// `[source.pitr] window = "7d"` then `pitr_extra` (lines of that table). Returns the text
    /// written.
    fn config_pitr(&self, pitr_extra: &str) -> String {
        self.config(None, "");
        let text = std::fs::read_to_string(self.p("coffre.toml"))
            .unwrap()
            .replace(
                "complete = \"marker\"\n",
                &format!("complete = \"marker\"\n[source.pitr]\nwindow = \"7d\"\n{pitr_extra}"),
            );
        std::fs::write(self.p("coffre.toml"), &text).unwrap();
        text
    }

    /// Write a 1 MiB WAL-like segment `seg` (its bytes vary with `salt`) and push it to source
    /// `base` (through the daemon when it runs); returns its bytes.
    fn push_segment(&self, seg: &str, salt: u8) -> Vec<u8> {
        let wal = self.p(seg);
        let mut bytes: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8 ^ salt)
            .collect();
        crate::common::coffre::stamp_wal_header(&mut bytes, seg);
        std::fs::write(&wal, &bytes).unwrap();
        let (code, out, err) = self.run(
            None,
            &["wal-push", "--source", "base", wal.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{out}{err}");
        bytes
    }

    fn cmd(&self, s3: Option<&S3Server>) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.p("coffre.toml"))
            .arg("--log-format")
            .arg("json");
        c.env("COFFRE_LOG", "info");
        if let Some(s) = s3 {
            c.env("T_AK", s.access_key()).env("T_SK", s.secret_key());
        }
        c
    }

    fn run(&self, s3: Option<&S3Server>, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(s3).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn start(&self, s3: Option<&S3Server>) -> TestDaemon {
        let log = self.p(&format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        TestDaemon::spawn(self.cmd(s3), Some(&log))
            .on_drop(OnDrop::Kill)
            .wait_ready(self.port, 30)
    }

    fn snapshots(&self, s3: Option<&S3Server>) -> Vec<serde_json::Value> {
        let (code, out, err) = self.run(s3, &["snapshots", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
    }
}

/// A basebackup's tree at `dir` (`PG_VERSION`, `global/pg_control`), without its marker.
fn basebackup_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("global")).unwrap();
    std::fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(dir.join("global/pg_control"), vec![7u8; 8192]).unwrap();
}

/// SQL-like text with the canary patient, `mib` MiB.
fn dump(path: &Path, mib: usize) {
    let mut s = String::with_capacity(mib << 20);
    let mut i = 0u64;
    s.push_str(&format!("INSERT INTO patients VALUES (1, 'Do-Not-Leak', '{CANARY_LAST_NAME}', '{CANARY_INSURANCE}');\n"));
    while s.len() < mib << 20 {
        i += 1;
        s.push_str(&format!(
            "INSERT INTO lab_results VALUES ({i}, {}, 'glucose', {}.{}, 'mmol/L', '2026-11-{:02}');\n",
            i * 7919 % 100_003,
            i % 17,
            i % 10,
            i % 28 + 1
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn assert_no_canary(dir: &Path) {
    for rel in coffre::ops::snapshot::protect::source::walk(dir).unwrap() {
        let p = dir.join(&rel);
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            for canary in [CANARY_LAST_NAME, CANARY_INSURANCE] {
                assert!(
                    !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                    "canary found in {}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn daemon_protects_renamed_dumps_and_marked_basebackups_once() {
    let env = Env::new();
    env.config(None, "");
    let d = env.start(None);
    dump(&env.p("incoming/emr-1.sql"), 3);
    // A basebackup without its marker is not complete.
    basebackup_tree(&env.p("base/b1"));
    // Temporary names are never picked up.
    std::fs::write(env.p("incoming/emr-2.sql.partial"), "partial").unwrap();
    wait_until("the dump is protected", 30, || {
        env.snapshots(None).len() == 1
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        env.snapshots(None).len(),
        1,
        "no marker yet: the basebackup must wait"
    );
    std::fs::write(env.p("base/b1/backup_manifest"), "{}").unwrap();
    wait_until("the basebackup is protected", 30, || {
        env.snapshots(None).len() == 2
    });

    let status = d.status();
    let sources = status["sources"].as_array().unwrap();
    assert!(
        sources.iter().all(|s| s["state"] == "protected"),
        "{status}"
    );
    assert!(
        status["stores"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["up"] == true && s["lag_snapshots"] == 0),
        "{status}"
    );
    let (code, metrics) = http_get(env.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("coffre_snapshots_total{source=\"emr\",outcome=\"protected\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("coffre_store_up{store=\"site-a\"} 1"));
    assert!(metrics.contains("coffre_replication_lag_snapshots{store=\"site-b\"} 0"));
    assert!(metrics.contains("coffre_uploaded_bytes_total{store=\"site-a\"}"));
    let (code, out, _) = env.run(None, &["status", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"protected\""));

    // Restart: the journal remembers, nothing is protected twice.
    let log1 = d.stop();
    let d = env.start(None);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.snapshots(None).len(), 2);
    let log2 = d.stop();
    // Nothing personal in logs, status or metrics; nothing in the stores or state.
    for text in [&log1, &log2, &metrics, &status.to_string()] {
        assert!(!text.contains(CANARY_LAST_NAME) && !text.contains(CANARY_INSURANCE));
    }
    assert_no_canary(&env.p("stores"));
    assert_no_canary(&env.p("state"));

    // The basebackup restores as a tree.
    let snaps = env.snapshots(None);
    let base = snaps.iter().find(|s| s["source"] == "base").unwrap();
    let (code, _, err) = env.run(
        None,
        &[
            "restore",
            base["id"].as_str().unwrap(),
            "--source",
            "base",
            "--to",
            env.p("restored-b1").to_str().unwrap(),
            "--purpose",
            "test",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(env.p("restored-b1/global/pg_control")).unwrap(),
        vec![7u8; 8192]
    );
    assert_eq!(
        std::fs::read_to_string(env.p("restored-b1/backup_manifest")).unwrap(),
        "{}"
    );
}

#[test]
fn kill_9_mid_snapshot_loses_nothing_and_never_lists_a_partial_snapshot() {
    let env = Env::new();
    env.config(None, "");
    // A first snapshot, committed before any fault.
    let d = env.start(None);
    dump(&env.p("incoming/first.sql"), 2);
    wait_until("first snapshot", 30, || env.snapshots(None).len() == 1);
    let first = env.snapshots(None)[0]["id"].as_str().unwrap().to_string();
    // A big one, killed while it is being sealed.
    dump(&env.p("incoming/big.sql"), 160);
    wait_until("sealing started", 30, || {
        d.log_text().matches("protecting snapshot").count() >= 2
    });
    let _ = d.kill9();
    // No partial snapshot is listed, locally or in any store.
    let listed = env.snapshots(None);
    assert!(
        listed
            .iter()
            .all(|s| s["stores"].as_array().unwrap().len() == 2),
        "{listed:?}"
    );
    let (code, out, _) = env.run(None, &["verify", "--json"]);
    assert_eq!(code, 0, "every listed replica is whole: {out}");
    // Restart: the interrupted snapshot is protected exactly once.
    let d = env.start(None);
    wait_until("big snapshot protected after restart", 90, || {
        env.snapshots(None).len() == 2
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(env.snapshots(None).len(), 2);
    d.stop();
    for (id, file) in [(first.as_str(), "first.sql"), ("latest", "big.sql")] {
        let to = env.p(&format!("restored-{file}"));
        let (code, _, err) = env.run(
            None,
            &[
                "restore",
                id,
                "--source",
                "emr",
                "--to",
                to.to_str().unwrap(),
                "--purpose",
                "after kill -9",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read(&to).unwrap(),
            std::fs::read(env.p(&format!("incoming/{file}"))).unwrap()
        );
    }
}

#[test]
fn a_store_that_is_down_catches_up_when_it_returns() {
    let mut s3 = S3Server::start();
    let env = Env::new();
    env.config(Some(&s3), "");
    let d = env.start(Some(&s3));
    s3.stop();
    dump(&env.p("incoming/during-outage.sql"), 2);
    wait_until("snapshot committed in the surviving store", 30, || {
        env.snapshots(Some(&s3)).len() == 1
    });
    wait_until("status shows the store down and lagging", 20, || {
        let st = d.status();
        let s3b = st["stores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "s3-b")
            .cloned()
            .unwrap();
        s3b["up"] == false && s3b["lag_snapshots"] == 1 && st["sources"][0]["state"] == "at-risk"
    });
    s3.restart();
    wait_until("catch-up copied the snapshot", 30, || {
        let st = d.status();
        st["stores"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["lag_snapshots"] == 0 && s["up"] == true)
    });
    // Delete the source file: what is in the stores is enough.
    std::fs::remove_file(env.p("incoming/during-outage.sql")).unwrap();
    d.stop();
    let (code, out, err) = env.run(Some(&s3), &["verify", "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    let to = env.p("from-s3.sql");
    let (code, _, err) = env.run(
        Some(&s3),
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--store",
            "s3-b",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "check catch-up",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&to)
        .unwrap()
        .contains(CANARY_LAST_NAME));
}

#[test]
fn scrub_repairs_a_replica_with_wrong_bytes() {
    let env = Env::new();
    env.config(None, "");
    let d = env.start(None);
    dump(&env.p("incoming/a.sql"), 2);
    wait_until("protected", 30, || env.snapshots(None).len() == 1);
    d.stop();
    let id = env.snapshots(None)[0]["id"].as_str().unwrap().to_string();
    let data = env.p(&format!("stores/b/coffre/snapshots/emr/{id}/data"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let (code, out, _) = env.run(None, &["verify"]);
    assert_ne!(code, 0);
    assert!(out.contains("site-b") && out.contains("bad"), "{out}");
    // Scrub on a short schedule. The catch-up stays out of the way: `verify` marked the
    // replica bad in the catalog, so a catch-up round would copy it back first, the scrub would
    // then find nothing to repair, and the test would wait for a repair that never comes (the
    // flaky timeouts of earlier sessions under load).
    env.config(None, "").to_str().unwrap().to_string();
    let text = std::fs::read_to_string(env.p("coffre.toml"))
        .unwrap()
        .replace("scrub-every = \"1h\"", "scrub-every = \"1s\"")
        .replace("catch-up-interval = \"1s\"", "catch-up-interval = \"1h\"");
    std::fs::write(env.p("coffre.toml"), text).unwrap();
    let d = env.start(None);
    wait_until("scrub repaired the replica", 90, || {
        let (_, m) = http_get(env.port, "/metrics").unwrap();
        m.contains("coffre_repairs_total{store=\"site-b\"} 1")
    });
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    assert!(
        m.contains("coffre_scrub_errors_total{store=\"site-b\"} 1"),
        "{m}"
    );
    d.stop();
    let (code, out, _) = env.run(None, &["verify"]);
    assert_eq!(code, 0, "{out}");
    matrix::record("store keeps wrong bytes (scrub finds and repairs)", 1, 1, 0);
}

#[test]
fn scrub_repairs_a_wal_copy_with_wrong_bytes() {
    let env = Env::new();
    // Source `base` archives WAL; the scrub runs every second (below).
    let text = env.config_pitr("");
    let seg = "000000010000000000000003";
    let bytes = env.push_segment(seg, 0);
    let dir = env.p(&format!("stores/b/coffre/wal/base/00000001/{seg}"));
    let data = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .unwrap_or_else(|| panic!("no sealed object in {}", dir.display()));
    let mut sealed = std::fs::read(&data).unwrap();
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x40;
    std::fs::write(&data, &sealed).unwrap();
    let (code, out, _) = env.run(None, &["verify"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("WAL {seg}")) && out.contains("bad"),
        "{out}"
    );
    std::fs::write(
        env.p("coffre.toml"),
        text.replace("scrub-every = \"1h\"", "scrub-every = \"1s\""),
    )
    .unwrap();
    let d = env.start(None);
    wait_until("scrub repaired the WAL copy", 90, || {
        let (_, m) = http_get(env.port, "/metrics").unwrap();
        m.contains("coffre_repairs_total{store=\"site-b\"} 1")
    });
    d.stop();
    let (code, out, _) = env.run(None, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("WAL {seg}")), "{out}");
    // The repaired copy opens, from store site-b alone.
    let back = env.p("back");
    let (code, out, err) = env.run(
        None,
        &[
            "wal-fetch",
            "--source",
            "base",
            "--store",
            "site-b",
            seg,
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read(&back).unwrap() == bytes);
}

/// Through the daemon, `wal-fetch` opens the temporary file itself and the daemon writes the
/// segment into it (no copy through the socket): the right bytes, private to the caller, and
/// nothing else left beside `%p`, whether the fetch succeeds, finds nothing or meets a file.
#[test]
fn wal_fetch_through_the_daemon_writes_the_callers_file_and_leaves_nothing_else() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.config_pitr("");
    let seg = "000000010000000000000007";
    let d = env.start(None);
    let bytes = env.push_segment(seg, 1);
    let pg_wal = env.p("restored-pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let to = pg_wal.join("RECOVERYXLOG");
    let fetch = |name: &str| {
        env.run(
            None,
            &["wal-fetch", "--source", "base", name, to.to_str().unwrap()],
        )
    };
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(&pg_wal)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (code, out, err) = fetch(seg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read(&to).unwrap() == bytes, "other bytes fetched");
    let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the fetched WAL file is not private");
    assert_eq!(listing(), vec!["RECOVERYXLOG".to_string()]);
    // Written by the daemon into the caller's file, not sent as frames.
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    assert!(
        m.contains("coffre_wal_fetches_into_caller_file_total 1\n"),
        "{m}"
    );
    // A file already at %p is never overwritten, and nothing is left beside it.
    let (code, _, err) = fetch(seg);
    assert_ne!(code, 0, "a fetch overwrote {}", to.display());
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(listing(), vec!["RECOVERYXLOG".to_string()]);
    // The end of the archive: exit 1, nothing written.
    std::fs::remove_file(&to).unwrap();
    let (code, _, err) = fetch("000000010000000000000008");
    assert_eq!(code, 1, "{err}");
    assert!(listing().is_empty(), "left behind: {:?}", listing());
    d.stop();
}

/// A caller that passes no descriptor (a `coffre` from before the descriptor handover) still
/// gets the WAL file, as frames through the socket, and writes it itself.
#[test]
fn wal_fetch_without_a_descriptor_gets_the_bytes_as_frames() {
    use coffre::cli::client::{self as control, RestoreWriter};
    use coffre::cli::protocol::{Begin, Written};
    use coffre::cli::receive::ReceiveError;
    #[derive(Default)]
    struct Collect {
        began: Option<u64>,
        bytes: Vec<u8>,
        finished: bool,
        written: bool,
    }
    impl RestoreWriter for Collect {
        fn begin(&mut self, b: &Begin) -> Result<(), ReceiveError> {
            self.began = Some(b.size);
            Ok(())
        }
        fn data(&mut self, bytes: Vec<u8>) -> Result<(), ReceiveError> {
            self.bytes.extend_from_slice(&bytes);
            Ok(())
        }
        fn written(&mut self, _: &Written) -> Result<(), ReceiveError> {
            self.written = true;
            Err(ReceiveError::NotPassed)
        }
        fn finish(&mut self) -> Result<(), ReceiveError> {
            self.finished = true;
            Ok(())
        }
        fn abort(&mut self) {}
    }
    let env = Env::new();
    env.config_pitr("");
    let seg = "00000001000000000000000B";
    let d = env.start(None);
    let bytes = env.push_segment(seg, 3);
    let s = std::os::unix::net::UnixStream::connect(env.p("state/run/coffre.sock")).unwrap();
    let cmd = coffre::cli::Command::WalFetch(coffre::cli::WalFetchArgs {
        source: "base".into(),
        name: seg.into(),
        to: env.p("unused"),
        purpose: "frames test".into(),
        session: None,
        store: None,
    });
    let mut w = Collect::default();
    let code = control::call(s, &cmd, Some(&mut w), None).unwrap().code;
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    d.stop();
    assert_eq!(code, 0);
    assert!(
        m.contains("coffre_wal_fetches_into_caller_file_total 0\n")
            && m.contains("coffre_wal_fetches_total 1\n"),
        "{m}"
    );
    assert!(
        !w.written,
        "the daemon wrote into a file that was not passed"
    );
    assert_eq!(w.began, Some(bytes.len() as u64));
    assert!(w.bytes == bytes, "other bytes in the frames");
    assert!(w.finished);
    assert!(
        !env.p("unused").exists(),
        "the daemon wrote the caller's path"
    );
}

/// A full `pg_wal` (a 512 KiB tmpfs; the segment is 1 MiB): the daemon's write into the
/// caller's file fails with a clear error, nothing is left there, and once there is room the
/// same fetch succeeds.
#[test]
fn wal_fetch_through_the_daemon_into_a_full_disk_fails_cleanly() {
    let env = Env::new();
    env.config_pitr("");
    let seg = "000000010000000000000009";
    let d = env.start(None);
    let bytes = env.push_segment(seg, 2);
    let small = crate::faults_disk::Tmpfs::new(&env.p("small-pg_wal"), 512);
    let to = small.0.join("RECOVERYXLOG");
    let fetch = |to: &Path| {
        env.run(
            None,
            &["wal-fetch", "--source", "base", seg, to.to_str().unwrap()],
        )
    };
    let (code, _, err) = fetch(&to);
    assert_ne!(code, 0, "a fetch into a full disk succeeded");
    assert!(
        err.contains(seg) && err.contains("No space left on device") && err.contains("free space"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&small.0).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the full pg_wal: {left:?}");
    let roomy = env.p("RECOVERYXLOG");
    let (code, _, err) = fetch(&roomy);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&roomy).unwrap() == bytes);
    d.stop();
    matrix::record("full disk: wal-fetch target (through the daemon)", 1, 1, 0);
}

/// PostgreSQL's archiver pushes one segment at a time; the daemon archives the next `.ready`
/// ones ahead, acknowledges each when it is pushed if the file did not change, and compares a
/// changed one with its archived copy (refused: other bytes under an archived name).
#[test]
fn the_daemon_archives_ready_segments_ahead_and_acknowledges_only_unchanged_files() {
    let env = Env::new();
    let pg_wal = env.p("pg_wal");
    // The look-ahead opens segments only beneath the pg_wal the config names.
    env.config_pitr(&format!(
        "archive-parallel = 3\npg-wal = \"{}\"\n",
        pg_wal.display()
    ));
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let segs: Vec<String> = (1..=5)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, seg) in segs.iter().enumerate() {
        let mut bytes: Vec<u8> = (0..(1u32 << 20))
            .map(|j| (j % 251) as u8 ^ (j >> 12) as u8 ^ i as u8)
            .collect();
        crate::common::coffre::stamp_wal_header(&mut bytes, seg);
        std::fs::write(pg_wal.join(seg), &bytes).unwrap();
        std::fs::write(pg_wal.join(format!("archive_status/{seg}.ready")), b"").unwrap();
    }
    let committed = |seg: &str| {
        ["a", "b"].iter().all(|s| {
            env.p(&format!(
                "stores/{s}/coffre/wal/base/00000001/{seg}/manifest.json"
            ))
            .is_file()
        })
    };
    let push = |seg: &str| {
        let r = env.run(
            None,
            &[
                "wal-push",
                "--source",
                "base",
                pg_wal.join(seg).to_str().unwrap(),
            ],
        );
        // As PostgreSQL does once a push is acknowledged.
        if r.0 == 0 {
            let st = pg_wal.join("archive_status");
            std::fs::rename(
                st.join(format!("{seg}.ready")),
                st.join(format!("{seg}.done")),
            )
            .unwrap();
        }
        r
    };
    let d = env.start(None);
    let (code, out, err) = push(&segs[0]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("ahead"), "{out}");
    // The next three (archive-parallel), not the fifth, before PostgreSQL asks for them.
    wait_until("segments 2 to 4 archived ahead", 60, || {
        segs[1..4].iter().all(|s| committed(s))
    });
    assert!(
        !committed(&segs[4]),
        "only archive-parallel segments are archived ahead"
    );
    let (code, out, err) = push(&segs[1]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{} archived as", segs[1])) && out.contains("ahead of its push"),
        "{out}"
    );
    // Segment 3 changed after it was archived ahead: compared with the archived copy, refused.
    std::fs::write(pg_wal.join(&segs[2]), vec![7u8; 1 << 20]).unwrap();
    let (code, out, err) = push(&segs[2]);
    assert_ne!(code, 0, "a changed file was acknowledged: {out}{err}");
    assert!(
        err.contains(&segs[2]) && err.to_lowercase().contains("different bytes"),
        "{err}"
    );
    assert!(!out.contains("ahead"), "{out}");
    // Pushing 3 again started the look-ahead of 5; 4 is acknowledged from its own.
    let (code, out, err) = push(&segs[3]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ahead of its push"), "{out}");
    wait_until("segment 5 archived ahead", 60, || committed(&segs[4]));
    let (code, out, err) = push(&segs[4]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ahead of its push"), "{out}");
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    assert!(m.contains("coffre_wal_archived_ahead_total 3"), "{m}");
    d.stop();
    // What was acknowledged ahead is the right bytes, in both stores.
    for seg in [&segs[1], &segs[3], &segs[4]] {
        let want = std::fs::read(pg_wal.join(seg)).unwrap();
        for store in ["site-a", "site-b"] {
            let back = env.p(&format!("back-{store}-{seg}"));
            let (code, out, err) = env.run(
                None,
                &[
                    "wal-fetch",
                    "--source",
                    "base",
                    "--store",
                    store,
                    seg,
                    back.to_str().unwrap(),
                ],
            );
            assert_eq!(code, 0, "{out}{err}");
            assert!(std::fs::read(&back).unwrap() == want, "{seg} from {store}");
        }
    }
}

#[test]
fn reload_refuses_a_bad_config_and_applies_a_good_one() {
    let env = Env::new();
    env.config(None, "");
    let d = env.start(None);
    // A bad config: the daemon keeps running on the old one and raises an alert, with the
    // reason in /status (issue 13, 3.9).
    let good = std::fs::read_to_string(env.p("coffre.toml")).unwrap();
    std::fs::write(env.p("coffre.toml"), format!("colour = 1\n{good}")).unwrap();
    d.signal(Signal::SIGHUP);
    wait_until("reload refused alert", 10, || {
        d.status()["alerts"].to_string().contains("reload refused")
    });
    let st = d.status();
    let reason = st["config_reload"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("colour (line 1): unknown field `colour`"),
        "{st}"
    );
    assert!(st["config_reload"]["last_refused_at"].is_string(), "{st}");
    // `coffre status` reaches the running daemon though the file is broken now.
    let (code, out, err) = env.run(None, &["status"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("has 1 problem(s) (`coffre check-config` lists them)"),
        "{err}"
    );
    assert!(out.contains("reload refused at "), "{out}");
    assert!(out.contains("unknown field `colour`"), "{out}");
    // A file not even TOML: still refused with its reason.
    std::fs::write(env.p("coffre.toml"), "state-dir = 5\n").unwrap();
    d.signal(Signal::SIGHUP);
    wait_until("reason of the second refusal", 10, || {
        d.status()["config_reload"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("state-dir (line 1)"))
    });
    dump(&env.p("incoming/still-working.sql"), 1);
    wait_until("still protecting", 30, || {
        env_snapshots_with_config(&env).len() == 1
    });
    // A good config with a new source: it is watched after the reload.
    std::fs::create_dir_all(env.p("new-source")).unwrap();
    env.config(
        None,
        &format!(
            "[[source]]\nname = \"emr2\"\npath = \"{}\"\ncomplete = \"rename\"\n",
            env.p("new-source").display()
        ),
    );
    d.signal(Signal::SIGHUP);
    wait_until("alert cleared", 10, || {
        !d.status()["alerts"].to_string().contains("reload refused")
    });
    dump(&env.p("new-source/x.sql"), 1);
    wait_until("new source protected", 30, || {
        env.snapshots(None).iter().any(|s| s["source"] == "emr2")
    });
    assert!(d.status()["config_reload"]["reason"].is_null());
    let log = d.stop();
    assert!(log.contains("reload refused"), "{log}");
}

/// Issue 13, 3.4: the daemon never creates a source folder; a missing one is a worker error,
/// an alert, `coffre_source_folder_readable` 0 and the reason in `/status` and `coffre status`,
/// until the folder appears.
#[test]
fn a_missing_source_folder_is_reported_and_never_created() {
    let env = Env::new();
    let absent = env.p("dumps-not-yet");
    env.config(
        None,
        &format!(
            "[[source]]\nname = \"late\"\npath = \"{}\"\ncomplete = \"rename\"\n",
            absent.display()
        ),
    );
    let d = env.start(None);
    let st = d.status();
    let late = st["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "late").cloned())
        .unwrap_or_default();
    assert!(
        late["folder_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist: coffre never creates a source folder")),
        "{st}"
    );
    assert!(
        st["alerts"]
            .to_string()
            .contains("source late: folder cannot be scanned"),
        "{st}"
    );
    let emr = &st["sources"][0];
    assert_eq!(emr["name"], "emr");
    assert!(emr["folder_error"].is_null(), "{st}");
    let metrics = http_get(env.port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("coffre_source_folder_readable{source=\"late\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("coffre_source_folder_readable{source=\"emr\"} 1"),
        "{metrics}"
    );
    wait_until("one intake error", 10, || {
        sample(
            &http_get(env.port, "/metrics").unwrap().1,
            "coffre_worker_errors_total{worker=\"intake\"}",
        ) == Some(1.0)
    });
    let (code, out, _) = env.run(None, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("folder cannot be scanned:"), "{out}");
    // Scans go on (the error is counted once), and nothing creates the folder.
    std::thread::sleep(Duration::from_millis(800));
    assert!(!absent.exists());
    assert_eq!(
        sample(
            &http_get(env.port, "/metrics").unwrap().1,
            "coffre_worker_errors_total{worker=\"intake\"}"
        ),
        Some(1.0)
    );
    // The folder appears: the alert clears and its snapshots are protected.
    std::fs::create_dir(&absent).unwrap();
    dump(&absent.join("late.sql"), 1);
    wait_until("late source protected", 30, || {
        env.snapshots(None).iter().any(|s| s["source"] == "late")
    });
    let st = d.status();
    assert!(
        !st["alerts"]
            .to_string()
            .contains("folder cannot be scanned"),
        "{st}"
    );
    assert!(http_get(env.port, "/metrics")
        .unwrap()
        .1
        .contains("coffre_source_folder_readable{source=\"late\"} 1"));
    let log = d.stop();
    assert!(log.contains("source folder cannot be scanned"), "{log}");
}

fn env_snapshots_with_config(env: &Env) -> Vec<serde_json::Value> {
    // The config file is broken on purpose in one test: read the catalog with a good copy.
    let good = env.p("good.toml");
    if !good.exists() {
        // A provider that never creates a key: this one reads the key the daemon made.
        ConfigBuilder::new(env.dir.path())
            .local_stores(&[("site-a", "a"), ("site-b", "b")])
            .providers_text(&format!(
                "[[key-provider]]\nname = \"local\"\nkind = \"file\"\nmaster-key = \"{}\"\n",
                env.p("keys/master.key").display()
            ))
            .write(&good);
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .args(["snapshots", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_endpoint_requires_the_bearer_token_when_one_is_configured() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let token = env.p("keys/status-token");
    std::fs::write(&token, "s3cr3t-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = env.config(None, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[status]\n",
        &format!("[status]\ntoken-file = \"{}\"\n", token.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let log = env.p("daemon-token.log");
    let d = TestDaemon::spawn(env.cmd(None), Some(&log)).on_drop(OnDrop::Kill);
    wait_until("healthz answers (no token needed)", 30, || {
        matches!(http_get(env.port, "/healthz"), Some((200, _)))
    });
    assert_eq!(http_get(env.port, "/status").unwrap().0, 401);
    assert_eq!(http_get(env.port, "/metrics").unwrap().0, 401);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    write!(
        s,
        "GET /status HTTP/1.0\r\nAuthorization: Bearer s3cr3t-token\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert!(
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200"),
        "{buf}"
    );
    // `coffre status` reads the token file itself.
    let (code, out, err) = env.run(None, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"sources\""));
    d.kill9();
    // A world-readable token file is refused at start.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = env.run(None, &["check-config"]);
    assert_ne!(code, 0);
    assert!(err.contains("chmod 600"), "{err}");
}

/// The value of the sample `name{labels}` (labels exactly as the exposition writes them).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn counters_survive_a_restart_of_the_daemon() {
    let env = Env::new();
    env.config(None, "");
    let d = env.start(None);
    dump(&env.p("incoming/emr-1.sql"), 1);
    dump(&env.p("incoming/emr-2.sql"), 1);
    wait_until("both dumps are protected", 30, || {
        env.snapshots(None).len() == 2
    });
    let series = [
        r#"coffre_snapshots_total{source="emr",outcome="protected"}"#,
        r#"coffre_uploaded_bytes_total{store="site-a"}"#,
        r#"coffre_uploaded_bytes_total{store="site-b"}"#,
    ];
    let before: Vec<f64> = {
        let (_, m) = http_get(env.port, "/metrics").unwrap();
        series
            .iter()
            .map(|s| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}")))
            .collect()
    };
    assert_eq!(before[0], 2.0);
    assert!(before[1] > 0.0 && before[1] == before[2], "{before:?}");
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    let runs_before = sample(&m, r#"coffre_worker_runs_total{worker="intake"}"#).unwrap();
    let uploaded_status = d.status()["stores"][0]["uploaded_bytes"].as_f64().unwrap();
    assert_eq!(uploaded_status, before[1]);
    d.stop();

    let d = env.start(None);
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    for (s, b) in series.iter().zip(&before) {
        assert_eq!(sample(&m, s), Some(*b), "{s} after the restart:\n{m}");
    }
    assert!(
        sample(&m, r#"coffre_worker_runs_total{worker="intake"}"#).unwrap() >= runs_before,
        "worker runs go on from the last run's count"
    );
    assert_eq!(
        d.status()["stores"][0]["uploaded_bytes"].as_f64(),
        Some(before[1])
    );
    // And they keep counting from there.
    dump(&env.p("incoming/emr-3.sql"), 1);
    wait_until("the third dump is protected", 30, || {
        env.snapshots(None).len() == 3
    });
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    assert_eq!(sample(&m, series[0]), Some(3.0), "{m}");
    d.stop();
}

/// The WAL counters (fetches, their time, prefetch hits, archived ahead) are kept in the catalog
/// like the others: a restart does not reset them.
#[test]
fn wal_counters_survive_a_restart_of_the_daemon() {
    let env = Env::new();
    env.config_pitr("");
    let seg = "000000010000000000000007";
    let d = env.start(None);
    env.push_segment(seg, 1);
    let to = env.p("RECOVERYXLOG");
    let (code, out, err) = env.run(
        None,
        &["wal-fetch", "--source", "base", seg, to.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let series = [
        "coffre_wal_fetches_total",
        "coffre_wal_fetches_into_caller_file_total",
        "coffre_wal_fetch_seconds_total",
        "coffre_wal_prefetch_hits_total",
        "coffre_wal_archived_ahead_total",
    ];
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    let before: Vec<f64> = series
        .iter()
        .map(|s| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}")))
        .collect();
    assert_eq!((before[0], before[1]), (1.0, 1.0), "{m}");
    assert!(before[2] > 0.0, "{m}");
    d.stop();

    let d = env.start(None);
    let (_, m) = http_get(env.port, "/metrics").unwrap();
    for (s, b) in series.iter().zip(&before) {
        let after = sample(&m, s).unwrap_or_else(|| panic!("no {s} after the restart:\n{m}"));
        assert!(
            (after - b).abs() < 1e-6,
            "{s}: {b} before, {after} after the restart"
        );
    }
    d.stop();
}

/// The workers the daemon runs are the ones `/status` lists, and `coffre daemon --help`, the
/// README and docs/operations.md name them all and count them right.
#[test]
fn the_docs_and_the_help_count_and_name_the_daemons_workers() {
    let env = Env::new();
    env.config(None, "");
    let d = env.start(None);
    let names = || -> Vec<String> {
        d.status()["workers"]
            .as_object()
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default()
    };
    wait_until("every worker reports a state", 30, || names().len() >= 6);
    let workers = names();
    d.stop();
    let mut expected = vec!["catch-up", "drill", "intake", "scrub", "shred", "wal-spool"];
    expected.sort_unstable();
    assert_eq!(
        workers, expected,
        "the daemon's workers changed: update the docs and this test"
    );
    let (code, help, _) = env.run(None, &["daemon", "--help"]);
    assert_eq!(code, 0);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let ops = std::fs::read_to_string(repo.join("docs/operations.md")).unwrap();
    for (what, text) in [("--help", &help), ("README.md", &readme)] {
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("six workers"),
            "{what} does not say six workers:\n{text}"
        );
        for n in ["five", "seven"] {
            assert!(
                !flat.contains(&format!("{n} workers")),
                "{what} says {n} workers"
            );
        }
        for w in &expected {
            assert!(
                flat.contains(&format!("({w})")),
                "{what} does not name worker {w}"
            );
        }
    }
    let flat = ops.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("workers (intake, catch-up, scrub, drill, wal-spool, shred)"),
        "docs/operations.md does not list the six workers"
    );
}

#[test]
fn status_shows_the_snapshot_being_protected_with_bytes_rate_and_eta() {
    let env = Env::new();
    // Level 19 on one thread: slow enough to be seen in progress.
    env.config(None, "[pipeline]\nzstd-level = 19\nzstd-threads = 1\n");
    let d = env.start(None);
    dump(&env.p("incoming/big.sql"), 24);
    let size = std::fs::metadata(env.p("incoming/big.sql")).unwrap().len();
    let mut seen: Option<serde_json::Value> = None;
    let mut text = String::new();
    wait_until("the protect shows in /status", 60, || {
        let st = d.status();
        let Some(p) = st["in_progress"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["activity"] == "protect"))
        else {
            return false;
        };
        if p["bytes_done"].as_u64().unwrap_or(0) == 0 {
            return false;
        }
        assert!(
            !st.to_string().contains("big.sql"),
            "no file names in the status: {st}"
        );
        seen = Some(p.clone());
        let (_, out, _) = env.run(None, &["status"]);
        text = out;
        true
    });
    let p = seen.unwrap();
    assert_eq!(p["source"], "emr");
    assert_eq!(p["bytes_total"].as_u64(), Some(size), "{p}");
    assert!(p["bytes_done"].as_u64().unwrap() <= size, "{p}");
    assert!(p["bytes_per_second"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["eta_seconds"].as_f64().unwrap() >= 0.0, "{p}");
    let id = p["snapshot"].as_str().unwrap().to_string();
    wait_until("the dump is protected", 120, || {
        env.snapshots(None).len() == 1
    });
    assert_eq!(env.snapshots(None)[0]["id"].as_str(), Some(id.as_str()));
    assert!(
        d.status()["in_progress"].as_array().unwrap().is_empty(),
        "done work leaves the board"
    );
    // `coffre status`, asked while the work was going (it takes seconds), printed it.
    assert!(
        text.contains(&format!("protect   emr snapshot {id}: ")),
        "{text}"
    );
    assert!(text.contains("MiB/s, eta "), "{text}");
    d.stop();
}
