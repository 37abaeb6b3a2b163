//! End to end: the real `coffre` binary against real object stores on 127.0.0.1 (s3s-fs for S3,
//! Azurite for Azure Blob), two sites, a file key provider. Every test builds its own servers and
//! config (tests/common/coffre.rs) and checks what an operator would check: the bytes that come
//! back, the exit codes, the messages, and what is (not) left on disk.
//! Run `tests/setup.sh` first.

use crate::common;
use crate::matrix;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::coffre::{
    azure_store, contains, emr_sql, file_key_provider, files_under, names_in, s3_store, CoffreEnv,
    S3_SK_ENV,
};
use common::{Azurite, S3Server, CANARY_INSURANCE, CANARY_LAST_NAME};
use serde_json::Value;

const S3: &str = "s3-mtl";
const AZ: &str = "azure-qc";
/// Header length of a sealed object with a 26-character ULID (docs/FORMAT.md).
const HEADER_LEN: usize = 53 + 26;
/// Ciphertext length of one 64 KiB segment (the test configs use 64 KiB segments).
const CT_SEGMENT: usize = 64 * 1024 + 16;

/// An S3 site (`s3-mtl`, site mtl) and an Azure site (`azure-qc`, site qc), and a coffre
/// installation using both.
struct TwoSites {
    s3: S3Server,
    az: Azurite,
    env: CoffreEnv,
}

fn two_sites() -> TwoSites {
    // Azurite takes about a second to start: start it while s3s-fs starts.
    let az = std::thread::spawn(Azurite::start);
    let s3 = S3Server::start();
    let az = az.join().expect("Azurite failed to start");
    let stores = format!("{}{}", s3_store(S3, "mtl", &s3), azure_store(AZ, "qc", &az));
    let env = CoffreEnv::new(&stores).with_s3(&s3).with_azure(&az);
    TwoSites { s3, az, env }
}

impl TwoSites {
    /// Write `len` bytes of SQL dump text into the source folder; returns (path, bytes).
    fn dump(&self, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        let data = emr_sql(len);
        assert!(contains(&data, CANARY_LAST_NAME.as_bytes()));
        assert!(contains(&data, CANARY_INSURANCE.as_bytes()));
        let p = self.env.incoming.join(name);
        fs::write(&p, &data).unwrap();
        (p, data)
    }

    /// Folder of a snapshot in the S3 bucket, on s3s-fs's disk.
    fn s3_dir(&self, id: &str) -> PathBuf {
        self.s3.root().join(format!("coffre/snapshots/emr/{id}"))
    }
    fn s3_data(&self, id: &str) -> PathBuf {
        self.s3_dir(id).join("data")
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_string()
        })
        .collect()
}

/// The verify check of one store.
fn check_of<'a>(checks: &'a [Value], store: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["store"] == store)
        .unwrap_or_else(|| panic!("no check for store {store}: {checks:?}"))
}

/// The failures of a restore report, as (store, kind, error).
fn failures(report: &Value) -> Vec<(String, String, String)> {
    report["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("no failures array: {report}"))
        .iter()
        .map(|f| {
            (
                f["store"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Nothing at `to`, and no partial file or folder beside it.
fn assert_nothing_left(to: &Path) {
    assert!(
        fs::symlink_metadata(to).is_err(),
        "{} exists after a failed restore",
        to.display()
    );
    let dir = to.parent().unwrap();
    let leftovers: Vec<String> = names_in(dir)
        .into_iter()
        .filter(|n| n.contains("coffre-partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial restore left behind in {}: {leftovers:?}",
        dir.display()
    );
}

// ------------------------------------------------------------------------------------------
// 1. a file snapshot, restored from each store
// ------------------------------------------------------------------------------------------

#[test]
fn file_snapshot_restores_byte_identical_from_s3_and_from_azure() {
    let t = two_sites();
    let (src, data) = t.dump("emr-2026-01-15.sql", 6 << 20);
    let id = t.env.backup(&src);

    // The snapshot is listed, committed in both stores.
    let snaps = t.env.run(&["snapshots", "--json"]);
    let snaps = snaps.expect_ok().json();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["id"], id.as_str());
    assert_eq!(snaps[0]["kind"], "file");
    assert_eq!(snaps[0]["size"], data.len() as u64);
    let stores: BTreeSet<String> = strs(&snaps[0]["stores"]).into_iter().collect();
    assert_eq!(stores, BTreeSet::from([S3.to_string(), AZ.to_string()]));
    // The object layout in the bucket (docs/FORMAT.md): data, key object, manifest.
    assert_eq!(
        names_in(&t.s3_dir(&id)),
        ["data", "key.json", "manifest.json"]
    );
    let sealed = fs::read(t.s3_data(&id)).unwrap();
    assert!(sealed.starts_with(b"\x89COFFRE\n"), "not a sealed object");
    assert_eq!(snaps[0]["sealed_size"], sealed.len() as u64);
    assert!(
        sealed.len() > 4 * CT_SEGMENT,
        "the test wants several segments, got {} bytes",
        sealed.len()
    );

    for store in [S3, AZ] {
        let to = t.env.out.join(format!("from-{store}.sql"));
        let r = t.env.restore(&id, &to, Some(store));
        let report = r.expect_ok().json();
        assert_eq!(report["snapshot"], id.as_str());
        assert_eq!(strs(&report["stores_used"]), [store], "{r}");
        assert!(failures(&report).is_empty(), "{r}");
        assert_eq!(report["size"], data.len() as u64);
        let got = fs::read(&to).unwrap();
        assert!(
            got == data,
            "restore from {store} differs from the original"
        );
    }

    let (r, checks) = t.env.verify(None);
    r.expect_ok();
    assert_eq!(checks.len(), 2, "{r}");
    for store in [S3, AZ] {
        let c = check_of(&checks, store);
        assert_eq!(c["state"], "ok", "{r}");
        assert_eq!(c["snapshot"], id.as_str());
    }
    // The text form says it too.
    let r = t.env.run(&["verify", &id]);
    assert!(
        r.expect_ok()
            .stdout
            .contains("2 replica(s) checked, 0 not ok"),
        "{r}"
    );
}

// ------------------------------------------------------------------------------------------
// 2. a directory snapshot
// ------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct EntryInfo {
    kind: &'static str,
    mode: u32,
    /// File contents, or the symlink target.
    content: Vec<u8>,
    /// Modification time of regular files (seconds).
    mtime: Option<i64>,
}

fn tree(root: &Path) -> Vec<(String, EntryInfo)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let m = fs::symlink_metadata(&full).unwrap();
        let info = if m.file_type().is_symlink() {
            EntryInfo {
                kind: "symlink",
                mode: 0,
                content: fs::read_link(&full)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes(),
                mtime: None,
            }
        } else if m.is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
            EntryInfo {
                kind: "dir",
                mode: m.permissions().mode() & 0o7777,
                content: Vec::new(),
                mtime: None,
            }
        } else {
            EntryInfo {
                kind: "file",
                mode: m.permissions().mode() & 0o7777,
                content: fs::read(&full).unwrap(),
                mtime: Some(m.mtime()),
            }
        };
        out.push((rel.display().to_string(), info));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_mode(p: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)
        .unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn directory_snapshot_restores_tree_contents_and_modes() {
    let t = two_sites();
    // A small base-backup-like tree.
    let base = t.env.incoming.join("basebackup-2026-01-15");
    fs::create_dir(&base).unwrap();
    write_mode(&base.join("PG_VERSION"), b"16\n", 0o600);
    write_mode(&base.join("postgresql.auto.conf"), b"", 0o600); // empty file
    write_mode(&base.join("empty.txt"), b"", 0o644);
    write_mode(&base.join("base/16384/2619"), &emr_sql(700 << 10), 0o600);
    write_mode(&base.join("base/16384/2619_fsm"), &[0u8; 24576], 0o600);
    write_mode(&base.join("global/pg_control"), &[7u8; 8192], 0o600);
    write_mode(
        &base.join("scripts/post-restore.sh"),
        b"#!/bin/sh\necho ok\n",
        0o750,
    );
    write_mode(
        &base.join("backup_manifest"),
        b"{\"PostgreSQL-Backup-Manifest-Version\": 1}\n",
        0o644,
    );
    fs::create_dir_all(base.join("pg_wal/archive_status")).unwrap(); // empty folders
    fs::create_dir_all(base.join("pg_tblspc")).unwrap();
    std::os::unix::fs::symlink("base/16384", base.join("current_db")).unwrap();
    for d in [
        "base",
        "base/16384",
        "global",
        "pg_wal",
        "pg_wal/archive_status",
        "pg_tblspc",
    ] {
        fs::set_permissions(base.join(d), fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::set_permissions(base.join("scripts"), fs::Permissions::from_mode(0o755)).unwrap();
    // PostgreSQL refuses a data directory that is not 0700 (or 0750).
    fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
    let before = tree(&base);

    let id = t.env.backup(&base);
    let snaps = t.env.run(&["snapshots", "--json"]).expect_ok().json();
    assert_eq!(snaps[0]["kind"], "directory");

    for store in [S3, AZ] {
        let to = t.env.out.join(format!("pgdata-{store}"));
        let r = t.env.restore(&id, &to, Some(store));
        let report = r.expect_ok().json();
        assert_eq!(report["kind"], "directory", "{r}");
        let after = tree(&to);
        let names = |v: &[(String, EntryInfo)]| v.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&after),
            names(&before),
            "restored tree differs in entries"
        );
        // Every entry below the snapshot folder (the folder's own mode is checked by
        // restored_snapshots_are_as_private_as_their_source).
        for ((name, a), (_, b)) in before.iter().zip(after.iter()).skip(1) {
            assert_eq!(
                (a.kind, a.mode, a.mtime),
                (b.kind, b.mode, b.mtime),
                "{name}: kind, mode or mtime differs after restore from {store} (mode {:o} -> {:o})",
                a.mode,
                b.mode
            );
            assert!(
                a.content == b.content,
                "{name}: content differs after restore from {store}"
            );
        }
    }
}

/// A restore holds every patient record: it must not come back readable by other local users.
/// A file snapshot (0600 at the source) is restored owner-only, and a directory snapshot keeps
/// the mode of its top folder (PostgreSQL refuses to start on a data directory that is not
/// 0700 or 0750).
#[test]
fn restored_snapshots_are_as_private_as_their_source() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 1 << 20);
    fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
    let base = t.env.incoming.join("pgdata");
    write_mode(&base.join("PG_VERSION"), b"16\n", 0o600);
    fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
    let file_id = t.env.backup(&src);
    let dir_id = t.env.backup(&base);

    let to = t.env.out.join("emr.sql");
    t.env.restore(&file_id, &to, None).expect_ok();
    assert!(fs::read(&to).unwrap() == data);
    let mode = fs::metadata(&to).unwrap().permissions().mode() & 0o777;
    let to_dir = t.env.out.join("pgdata");
    t.env.restore(&dir_id, &to_dir, None).expect_ok();
    let dir_mode = fs::metadata(&to_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        fs::metadata(to_dir.join("PG_VERSION"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        mode & 0o077 == 0,
        "the restored file snapshot is mode {mode:o} (source 600): readable by other users"
    );
    assert_eq!(
        dir_mode, 0o700,
        "the restored snapshot folder is mode {dir_mode:o}, the source folder was 700"
    );
}

// ------------------------------------------------------------------------------------------
// 3. one server down
// ------------------------------------------------------------------------------------------

#[test]
fn restore_goes_on_from_the_other_site_when_one_server_is_down() {
    let mut t = two_sites();
    let (src, data) = t.dump("emr.sql", 3 << 20);
    let id = t.env.backup(&src);

    // S3 down: the restore comes from Azure and names the S3 store as failed.
    t.s3.stop();
    let to = t.env.out.join("s3-down.sql");
    let r = t.env.restore(&id, &to, None);
    let report = r.expect_ok().json();
    assert_eq!(strs(&report["stores_used"]), [AZ], "{r}");
    let f = failures(&report);
    assert!(
        f.iter().any(|(s, _, _)| s == S3),
        "failures do not name {S3}: {r}"
    );
    assert!(f.iter().all(|(s, _, _)| s == S3), "{r}");
    assert!(
        fs::read(&to).unwrap() == data,
        "restore with S3 down differs"
    );

    let (r, checks) = t.env.verify(Some(&id));
    r.expect_code(1);
    assert_eq!(check_of(&checks, AZ)["state"], "ok", "{r}");
    assert_eq!(check_of(&checks, S3)["state"], "unreachable", "{r}");
    let r = t.env.run(&["verify"]);
    r.expect_code(1);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(S3))
        .unwrap_or_else(|| panic!("verify does not name {S3}\n{r}"));
    assert!(line.contains("unreachable"), "{r}");

    // S3 back, Azure down: the restore comes from S3.
    t.s3.restart();
    t.az.stop();
    let to = t.env.out.join("azure-down.sql");
    let r = t.env.restore(&id, &to, None);
    let report = r.expect_ok().json();
    assert_eq!(strs(&report["stores_used"]), [S3], "{r}");
    assert!(
        fs::read(&to).unwrap() == data,
        "restore with Azure down differs"
    );
    let r = t.env.restore(&id, &t.env.out.join("x.sql"), Some(AZ));
    r.expect_failure();
    assert!(r.error_text().contains(AZ), "{r}");
    assert_nothing_left(&t.env.out.join("x.sql"));

    let (r, checks) = t.env.verify(None);
    r.expect_code(1);
    assert_eq!(check_of(&checks, S3)["state"], "ok", "{r}");
    assert_eq!(check_of(&checks, AZ)["state"], "unreachable", "{r}");
}

// ------------------------------------------------------------------------------------------
// 4. a corrupted replica
// ------------------------------------------------------------------------------------------

#[test]
fn corrupted_replica_is_detected_and_restore_falls_back() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 4 << 20);
    let id = t.env.backup(&src);

    // Flip one bit in the middle of the S3 copy, on s3s-fs's disk.
    let path = t.s3_data(&id);
    let mut sealed = fs::read(&path).unwrap();
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x20;
    fs::write(&path, &sealed).unwrap();
    let segment = (mid - HEADER_LEN) / CT_SEGMENT;
    assert!(segment > 0, "the flip should not be in the first segment");

    // Plain restore: starts from S3 (first in the config), fails at the bad segment, goes on
    // from Azure.
    let to = t.env.out.join("fallback.sql");
    let r = t.env.restore(&id, &to, None);
    let report = r.expect_ok().json();
    assert!(
        fs::read(&to).unwrap() == data,
        "restore after fallback differs"
    );
    assert_eq!(strs(&report["stores_used"]), [S3, AZ], "{r}");
    let f = failures(&report);
    assert_eq!(f.len(), 1, "{r}");
    assert_eq!((f[0].0.as_str(), f[0].1.as_str()), (S3, "tampered"), "{r}");
    assert!(f[0].2.contains(&format!("segment {segment}")), "{r}");
    // The warning on stderr names the bad replica too.
    assert!(
        r.stderr
            .contains(&format!("replica in store `{S3}` failed (tampered)")),
        "{r}"
    );

    // Only the bad store: refused, naming the store and the segment, nothing left behind.
    let to = t.env.out.join("only-s3.sql");
    let r = t.env.restore(&id, &to, Some(S3));
    r.expect_failure();
    let e = r.error_text();
    assert!(e.contains(S3), "error does not name the store\n{r}");
    assert!(
        e.contains(&format!("segment {segment}")),
        "error does not name the segment\n{r}"
    );
    assert!(e.contains("tampered"), "{r}");
    assert_nothing_left(&to);

    // The good store alone still works.
    let to = t.env.out.join("only-azure.sql");
    t.env.restore(&id, &to, Some(AZ)).expect_ok();
    assert!(fs::read(&to).unwrap() == data);

    let (r, checks) = t.env.verify(None);
    r.expect_code(1);
    let c = check_of(&checks, S3);
    assert_eq!(c["state"], "bad", "{r}");
    assert!(
        c["detail"].as_str().unwrap_or("").contains("SHA-256"),
        "{r}"
    );
    assert_eq!(check_of(&checks, AZ)["state"], "ok", "{r}");
}

// ------------------------------------------------------------------------------------------
// 5. truncated object, trailing bytes
// ------------------------------------------------------------------------------------------

#[test]
fn truncated_and_extended_objects_fail_with_distinct_messages() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 2 << 20);
    let id = t.env.backup(&src);
    let path = t.s3_data(&id);
    let original = fs::read(&path).unwrap();

    // Cut off the last 1000 bytes.
    fs::write(&path, &original[..original.len() - 1000]).unwrap();
    let to = t.env.out.join("truncated.sql");
    let r = t.env.restore(&id, &to, Some(S3));
    r.expect_failure();
    let truncated = r.error_text();
    assert!(
        truncated.contains(S3) && truncated.contains("truncated"),
        "{r}"
    );
    assert!(!truncated.contains("trailing"), "{r}");
    assert_nothing_left(&to);
    let (r, checks) = t.env.verify(None);
    r.expect_code(1);
    assert_eq!(check_of(&checks, S3)["state"], "bad", "{r}");

    // 17 bytes appended.
    let mut longer = original.clone();
    longer.extend_from_slice(b"appended garbage!");
    fs::write(&path, &longer).unwrap();
    let to = t.env.out.join("trailing.sql");
    let r = t.env.restore(&id, &to, Some(S3));
    r.expect_failure();
    let trailing = r.error_text();
    assert!(
        trailing.contains(S3) && trailing.contains("17 trailing bytes"),
        "{r}"
    );
    assert!(!trailing.contains("truncated"), "{r}");
    assert_nothing_left(&to);
    let (r, checks) = t.env.verify(None);
    r.expect_code(1);
    assert_eq!(check_of(&checks, S3)["state"], "bad", "{r}");

    // Cut exactly at a segment boundary (the last segment dropped whole).
    let cut = HEADER_LEN + ((original.len() - HEADER_LEN - 1) / CT_SEGMENT) * CT_SEGMENT;
    fs::write(&path, &original[..cut]).unwrap();
    let to = t.env.out.join("boundary.sql");
    let r = t.env.restore(&id, &to, Some(S3));
    r.expect_failure();
    assert!(r.error_text().contains("truncated"), "{r}");
    assert_nothing_left(&to);

    // The same store with its object put back restores fine.
    fs::write(&path, &original).unwrap();
    let to = t.env.out.join("repaired.sql");
    t.env.restore(&id, &to, Some(S3)).expect_ok();
    assert!(fs::read(&to).unwrap() == data);
    t.env.verify(None).0.expect_ok();
}

// ------------------------------------------------------------------------------------------
// 6. a manifest missing from one store
// ------------------------------------------------------------------------------------------

#[test]
fn missing_manifest_in_one_store() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 2 << 20);
    let id = t.env.backup(&src);
    fs::remove_file(t.s3_dir(&id).join("manifest.json")).unwrap();

    let (r, checks) = t.env.verify(None);
    r.expect_code(1);
    let c = check_of(&checks, S3);
    assert_eq!(c["state"], "missing", "{r}");
    assert!(
        c["detail"].as_str().unwrap_or("").contains("manifest"),
        "{r}"
    );
    assert_eq!(check_of(&checks, AZ)["state"], "ok", "{r}");

    let to = t.env.out.join("only-s3.sql");
    let r = t.env.restore(&id, &to, Some(S3));
    r.expect_failure();
    let e = r.error_text();
    assert!(e.contains("manifest") && e.contains(S3), "{r}");
    assert_nothing_left(&to);

    let to = t.env.out.join("any.sql");
    let r = t.env.restore(&id, &to, None);
    let report = r.expect_ok().json();
    assert_eq!(strs(&report["stores_used"]), [AZ], "{r}");
    let f = failures(&report);
    assert!(
        f.iter().any(|(s, k, _)| s == S3 && k == "missing-manifest"),
        "{r}"
    );
    assert!(fs::read(&to).unwrap() == data);
}

// ------------------------------------------------------------------------------------------
// 7. no plaintext in any store or in the state folder
// ------------------------------------------------------------------------------------------

#[test]
fn canary_appears_in_no_stored_object_nor_in_the_state_folder() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 3 << 20);
    let b = t
        .env
        .run(&["backup", "--source", "emr", src.to_str().unwrap()]);
    b.expect_ok();
    let id = b.stdout.trim().to_string();
    // Exercise the state folder further: a restore (access log) and a verify (catalog).
    let to = t.env.out.join("r.sql");
    t.env.restore(&id, &to, None).expect_ok();
    assert!(fs::read(&to).unwrap() == data);
    t.env.verify(None).0.expect_ok();

    let sealed = fs::read(t.s3_data(&id)).unwrap();
    let needles: [&[u8]; 3] = [
        CANARY_LAST_NAME.as_bytes(),
        CANARY_INSURANCE.as_bytes(),
        b"COPY public.patients",
    ];
    let mut scanned = 0;
    let mut azure_has_the_object = false;
    let roots = [
        t.s3.data_dir(),
        t.az.data_dir(),
        t.env.state.clone(),
        t.env.master_key.parent().unwrap().to_path_buf(),
        t.env.config.clone(),
    ];
    for root in &roots {
        let files = if root.is_file() {
            vec![root.clone()]
        } else {
            files_under(root)
        };
        for f in files {
            let bytes = fs::read(&f).unwrap();
            scanned += bytes.len();
            for n in needles {
                assert!(
                    !contains(&bytes, n),
                    "{} holds plaintext ({:?})",
                    f.display(),
                    String::from_utf8_lossy(n)
                );
            }
            if f.starts_with(t.az.data_dir()) && contains(&bytes, &sealed[..HEADER_LEN + 64]) {
                azure_has_the_object = true;
            }
        }
    }
    // The scan did see the sealed bytes of both stores.
    assert!(scanned >= 2 * sealed.len(), "scanned only {scanned} bytes");
    assert!(
        azure_has_the_object,
        "the sealed object was not found under Azurite's folder: the scan proves nothing"
    );
    // Nor in what coffre printed.
    for n in needles {
        assert!(
            !contains(b.all().as_bytes(), n),
            "backup output holds plaintext"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 8. restore on a new host
// ------------------------------------------------------------------------------------------

#[test]
fn restore_on_a_new_host_with_only_config_and_master_key() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 3 << 20);
    let id = t.env.backup(&src);

    // The new host: same stores, a fresh state folder, and only the master key copied over.
    let stores = format!(
        "{}{}",
        s3_store(S3, "mtl", &t.s3),
        azure_store(AZ, "qc", &t.az)
    );
    let host = CoffreEnv::new(&stores).with_s3(&t.s3).with_azure(&t.az);
    assert_ne!(host.state, t.env.state);
    assert!(!host.state.exists());
    fs::create_dir_all(host.master_key.parent().unwrap()).unwrap();
    fs::copy(&t.env.master_key, &host.master_key).unwrap();
    fs::set_permissions(&host.master_key, fs::Permissions::from_mode(0o600)).unwrap();
    // Never create a key here: the copied one must be used.
    host.write_config(
        &host
            .config_text(&host.state)
            .replace("create-master-key = true", "create-master-key = false"),
    );

    let r = host.run(&["catalog", "rebuild"]);
    assert!(
        r.expect_ok()
            .stdout
            .contains("1 snapshot(s), 2 committed replica(s)"),
        "{r}"
    );
    let snaps = host.run(&["snapshots", "--json"]).expect_ok().json();
    assert_eq!(snaps[0]["id"], id.as_str());

    let to = host.out.join("restored.sql");
    let r = host.restore("latest", &to, None);
    let report = r.expect_ok().json();
    assert_eq!(report["snapshot"], id.as_str(), "{r}");
    assert!(
        fs::read(&to).unwrap() == data,
        "restore on the new host differs"
    );
    // The keyring came from the stores.
    assert!(host.state.join("keys/local.keyring").is_file());
    let keys = host.run(&["keys", "status", "--json"]).expect_ok().json();
    assert_eq!(keys[0]["provider"], "local");
    assert_eq!(keys[0]["health"], "ok");
    // The snapshot's epoch (the access log's sealed copy has its own `audit-...` epoch).
    assert_eq!(
        keys[0]["epochs"].as_array().map(|a| a
            .iter()
            .filter(|e| !e["epoch"].as_str().unwrap_or("").starts_with("audit-"))
            .count()),
        Some(1),
        "{keys}"
    );
}

// ------------------------------------------------------------------------------------------
// 9. wrong S3 credentials
// ------------------------------------------------------------------------------------------

#[test]
fn wrong_s3_secret_fails_the_backup_and_commits_nothing_in_s3() {
    let t = two_sites();
    let mut env = t.env;
    env.set_env(S3_SK_ENV, "definitely-not-the-secret");
    let (src, _) = {
        let data = emr_sql(1 << 20);
        let p = env.incoming.join("emr.sql");
        fs::write(&p, &data).unwrap();
        (p, data)
    };
    let r = env.run(&["backup", "--source", "emr", src.to_str().unwrap()]);
    r.expect_code(1);
    let e = r.error_text();
    assert!(e.contains(S3), "the error does not name the store\n{r}");
    assert!(e.contains("min-sites"), "{r}");
    // Nothing committed in S3: no manifest (nor any object) in the bucket.
    let in_bucket = files_under(&t.s3.root());
    assert!(
        !in_bucket.iter().any(|p| p.ends_with("manifest.json")),
        "a manifest reached the bucket: {in_bucket:?}"
    );
    assert!(
        !in_bucket.iter().any(|p| p.ends_with("data")),
        "a data object reached the bucket: {in_bucket:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 10. master key: wrong key, world-readable key
// ------------------------------------------------------------------------------------------

fn write_key(path: &Path, hex: &str, mode: u32) {
    fs::remove_file(path).ok();
    write_mode(path, format!("{hex}\n").as_bytes(), mode);
}

#[test]
fn wrong_or_world_readable_master_key_is_refused() {
    let t = two_sites();
    let (src, _) = t.dump("emr.sql", 1 << 20);
    let id = t.env.backup(&src);
    let good = fs::read_to_string(&t.env.master_key).unwrap();
    assert_eq!(good.trim().len(), 64);
    let other = "5a".repeat(32);
    assert_ne!(good.trim(), other);

    // Another key on the same host: the local keyring does not open.
    write_key(&t.env.master_key, &other, 0o600);
    let to = t.env.out.join("wrong-key.sql");
    let r = t.env.restore(&id, &to, None);
    r.expect_failure();
    assert!(r.error_text().contains("wrong master key"), "{r}");
    assert_nothing_left(&to);

    // Another key on a new host (keyring only in the stores): refused, naming the keyring.
    let stores = format!(
        "{}{}",
        s3_store(S3, "mtl", &t.s3),
        azure_store(AZ, "qc", &t.az)
    );
    let host = CoffreEnv::new(&stores).with_s3(&t.s3).with_azure(&t.az);
    write_key(&host.master_key, &other, 0o600);
    let to = host.out.join("new-host.sql");
    let r = host.restore(&id, &to, None);
    r.expect_failure();
    assert!(r.all().contains("wrong master key"), "{r}");
    assert!(r.error_text().contains("keyring"), "{r}");
    assert_nothing_left(&to);

    // The right key, but readable by everyone: every command refuses to start.
    write_key(&t.env.master_key, good.trim(), 0o644);
    let to = t.env.out.join("world-readable.sql");
    let to_s = to.to_str().unwrap().to_string();
    let src_s = src.to_str().unwrap().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["check-config"],
        vec!["backup", "--source", "emr", &src_s],
        vec![
            "restore",
            &id,
            "--source",
            "emr",
            "--to",
            &to_s,
            "--purpose",
            "test",
        ],
        vec!["verify"],
        vec!["snapshots"],
        vec!["catalog", "rebuild"],
        vec!["keys", "status"],
        vec!["keys", "init"],
        vec!["audit", "verify"],
        vec!["audit", "show"],
    ];
    for args in &commands {
        let r = t.env.run(args);
        r.expect_failure();
        assert!(r.error_text().contains("chmod 600"), "{r}");
    }
    assert_nothing_left(&to);
    // chmod 600 again and it works.
    fs::set_permissions(&t.env.master_key, fs::Permissions::from_mode(0o600)).unwrap();
    t.env.restore(&id, &to, None).expect_ok();
    matrix::record("wrong master key / world-readable key file", 2, 2, 0);
}

// ------------------------------------------------------------------------------------------
// 11. restore target checks
// ------------------------------------------------------------------------------------------

#[test]
fn restore_never_overwrites_and_needs_an_existing_folder() {
    let t = two_sites();
    let (src, data) = t.dump("emr.sql", 1 << 20);
    let id = t.env.backup(&src);

    // An existing file is never overwritten.
    let existing = t.env.out.join("existing.sql");
    fs::write(&existing, b"do not touch").unwrap();
    let r = t.env.restore(&id, &existing, None);
    r.expect_failure();
    assert!(r.error_text().contains("already exists"), "{r}");
    assert_eq!(fs::read(&existing).unwrap(), b"do not touch");
    // Nor an existing (empty) folder.
    let folder = t.env.out.join("folder");
    fs::create_dir(&folder).unwrap();
    let r = t.env.restore("latest", &folder, None);
    r.expect_failure();
    assert!(r.error_text().contains("already exists"), "{r}");
    assert!(names_in(&folder).is_empty());

    // A missing parent folder is a clear error, and is not created.
    let missing = t.env.out.join("no-such-folder");
    let r = t.env.restore(&id, &missing.join("emr.sql"), None);
    r.expect_failure();
    let e = r.error_text();
    assert!(
        e.contains("does not exist") && e.contains("no-such-folder"),
        "{r}"
    );
    assert!(!missing.exists());

    // Neither refusal unwrapped a key.
    let log = t.env.run(&["audit", "show", "--json"]).expect_ok().json();
    assert!(
        !log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "key-unwrap"),
        "{log}"
    );
    // And a fresh target works.
    let to = t.env.out.join("fresh.sql");
    t.env.restore(&id, &to, None).expect_ok();
    assert!(fs::read(&to).unwrap() == data);
}

// ------------------------------------------------------------------------------------------
// 12. the access log
// ------------------------------------------------------------------------------------------

#[test]
fn restore_is_in_the_access_log_before_the_key_unwrap() {
    let t = two_sites();
    let (src, _) = t.dump("emr.sql", 1 << 20);
    let id = t.env.backup(&src);
    let purpose = "transfer of care, ticket INC-4711";
    let to = t.env.out.join("r.sql");
    let r = t.env.run(&[
        "restore",
        &id,
        "--source",
        "emr",
        "--to",
        to.to_str().unwrap(),
        "--purpose",
        purpose,
    ]);
    r.expect_ok();

    let r = t.env.run(&["audit", "verify"]);
    assert!(r.expect_ok().stdout.contains("chain intact"), "{r}");
    let log = t.env.run(&["audit", "show", "--json"]).expect_ok().json();
    let entries = log.as_array().unwrap();
    let seq_of = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| {
                e["action"] == action
                    && e["purpose"] == purpose
                    && e["outcome"].as_str().unwrap_or("").starts_with(outcome)
            })
            .unwrap_or_else(|| panic!("no {action} {outcome} entry with the purpose: {log:#}"))
            ["seq"]
            .as_u64()
            .unwrap()
    };
    let started = seq_of("restore", "started");
    let unwrap = seq_of("key-unwrap", "started");
    let ok = seq_of("restore", "ok");
    assert!(
        started < unwrap && unwrap < ok,
        "order {started} {unwrap} {ok}: {log:#}"
    );
    let e = entries.iter().find(|e| e["seq"] == started).unwrap();
    assert_eq!(e["target"]["snapshot"], id.as_str());
    assert_eq!(e["target"]["source"], "emr");
    assert!(!e["actor"].as_str().unwrap_or("").is_empty());
    // Filtering by action.
    let only = t
        .env
        .run(&["audit", "show", "--action", "restore", "--json"])
        .expect_ok()
        .json();
    assert!(only
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"] == "restore"));
    assert!(only.as_array().unwrap().len() >= 2);

    // An edited entry breaks the chain.
    let path = t.env.state.join("audit/access.log");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(purpose));
    fs::write(&path, text.replace(purpose, "routine maintenance")).unwrap();
    let r = t.env.run(&["audit", "verify"]);
    r.expect_failure();
    assert!(r.error_text().contains("broken"), "{r}");
}

// ------------------------------------------------------------------------------------------
// 13. bad configs
// ------------------------------------------------------------------------------------------

/// A valid config under `dir`: source `emr`, an S3 and an Azure store (nothing listening).
fn good_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"state-dir = "{d}/state"
[[source]]
name = "emr"
path = "{d}/in"
{provider}[[store]]
name = "s3-mtl"
kind = "s3"
site = "mtl"
jurisdiction = "CA-QC"
bucket = "coffre-test"
endpoint = "http://127.0.0.1:9"
[[store]]
name = "azure-qc"
kind = "azure"
site = "qc"
jurisdiction = "CA-QC"
account = "devstoreaccount1"
container = "coffre-test"
endpoint = "http://127.0.0.1:10/devstoreaccount1"
access-key-env = "AZ_KEY"
"#,
        provider = file_key_provider(&dir.join("master.key")),
    )
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_config(dir.path());
    let config = dir.path().join("coffre.toml");
    // check-config checks this host too: the source folder must exist.
    fs::create_dir_all(dir.path().join("in")).unwrap();
    let check = |text: &str| {
        fs::write(&config, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coffre"))
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .env("COFFRE_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = check(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("valid (1 source(s), 2 store(s) in 2 site(s)"),
        "{out}"
    );

    // Plaintext http to a remote host.
    let (code, out) = check(&good.replace("http://127.0.0.1:9", "http://s3.example.com"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("store[0].endpoint") && out.contains("plaintext http"),
        "{out}"
    );
    let (code, out) = check(&good.replace(
        "http://127.0.0.1:10/devstoreaccount1",
        "http://blob.example.com/devstoreaccount1",
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("store[1].endpoint"), "{out}");

    // One site only.
    let (code, out) = check(&good.replace("site = \"qc\"", "site = \"mtl\""));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("replication.min-sites"), "{out}");

    // Both at once: every problem is reported.
    let (code, out) = check(
        &good
            .replace("site = \"qc\"", "site = \"mtl\"")
            .replace("http://127.0.0.1:9", "http://s3.example.com"),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("store[0].endpoint") && out.contains("replication.min-sites"),
        "{out}"
    );

    // Unknown keys, at the top and inside a store.
    let (code, out) = check(&good.replace("[[source]]", "colour = \"blue\"\n[[source]]"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unknown field `colour`"), "{out}");
    let (code, out) = check(&good.replace(
        "bucket = \"coffre-test\"",
        "bucket = \"coffre-test\"\nbuckett = \"typo\"",
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unknown field `buckett`"), "{out}");
    assert!(
        out.contains("line 16"),
        "the message does not locate the unknown key: {out}"
    );
}
