//! WAL archiving through the real binary (issue 14, first part): `coffre wal-push` seals a WAL
//! file into every store under `wal/<source>/<timeline>/<name>/`, a re-push of the same bytes
//! succeeds and of other bytes is refused, `coffre wal-fetch` restores it from any store that
//! has a good copy, and every fetch is in the access log.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::coffre::{self as coffre_env, CoffreEnv};

const SEG: &str = "00000001000000000000000A";

fn local_stores(root: &Path) -> String {
    format!(
        "\n{}",
        coffre_env::local_stores(root, &[("a", "a"), ("b", "b")])
    )
}

/// Two local stores, source `emr` archiving WAL.
fn wal_env() -> CoffreEnv {
    wal_env_with("")
}

/// [`wal_env`] with more lines in `[source.pitr]`.
fn wal_env_with(pitr_extra: &str) -> CoffreEnv {
    let env = CoffreEnv::new("");
    let text = env.config_text(&env.state).replace(
        "[[key-provider]]",
        &format!("[source.pitr]\nwindow = \"7d\"\n{pitr_extra}\n[[key-provider]]"),
    );
    env.write_config(&format!("{text}{}", local_stores(env.dir.path())));
    env
}

/// A WAL-like file: a canary in the middle of pseudo-random bytes (16 MiB, as PostgreSQL's),
/// behind the first page header of the segment its name says.
fn wal_file(dir: &Path, name: &str, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut v = Vec::with_capacity(16 << 20);
    let mut x = seed | 1;
    while v.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Compressible, like WAL: runs of zeros between records.
        v.extend_from_slice(&x.to_le_bytes());
        v.extend_from_slice(&[0u8; 24]);
    }
    v.truncate(16 << 20);
    v[1000..1000 + CANARY.len()].copy_from_slice(CANARY.as_bytes());
    coffre_env::stamp_wal_header(&mut v, name);
    let p = dir.join(name);
    fs::write(&p, &v).unwrap();
    (p, v)
}

const CANARY: &str = "CANARY-PATIENT-Tremblay-RAMQ-TREM12345678";

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_pushed_wal_file_is_sealed_in_every_store_and_fetched_back_byte_for_byte() {
    let env = wal_env();
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let (seg, bytes) = wal_file(&pgwal, SEG, 7);
    let r = env.run(&[
        "wal-push",
        "--source",
        "emr",
        seg.to_str().unwrap(),
        "--json",
    ]);
    r.expect_ok();
    let j = r.json();
    assert_eq!(j["name"], SEG);
    assert_eq!(j["already"], false);
    assert_eq!(j["stores"].as_array().map(|a| a.len()), Some(2), "{r}");
    let object = j["object"].as_str().unwrap().to_string();
    for store in ["a", "b"] {
        let dir = env
            .dir
            .path()
            .join(format!("stores/{store}/coffre/wal/emr/00000001/{SEG}"));
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("{object}.data"),
                format!("{object}.key.json"),
                "manifest.json".to_string()
            ]
        );
    }
    // Nothing of the WAL's content in any store: not the canary, not the plaintext.
    for f in files_under(&env.dir.path().join("stores")) {
        let b = fs::read(&f).unwrap();
        assert!(
            !b.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "canary in {}",
            f.display()
        );
    }
    let out = env.out.join(SEG);
    let r = env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()]);
    r.expect_ok();
    assert!(fs::read(&out).unwrap() == bytes, "fetched bytes differ");
    let log = fs::read_to_string(env.state.join("audit/access.log")).unwrap();
    let fetches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"wal-fetch\""))
        .collect();
    assert_eq!(fetches.len(), 1, "{log}");
    assert!(fetches[0].contains(&object) && fetches[0].contains("point-in-time recovery"));
    assert!(!log.contains(CANARY));
}

/// WAL is compressed at the source's `[source.pitr] zstd-level` (default 1), not at the
/// snapshots' `pipeline.zstd-level`: the same text-like WAL file is stored smaller at level 12,
/// and opens byte for byte at either level.
#[test]
fn wal_is_compressed_at_the_sources_own_level() {
    let words = [
        "INSERT",
        "UPDATE",
        "patient",
        "note",
        "lab",
        "result",
        "Tremblay",
        "Gagnon",
        "Roy",
        "glucose",
        "mmol/L",
        "prescription",
        "dose",
        "mg",
        "visit",
        "2026-12-07",
        "clinic",
        "Montreal",
        "Quebec",
        "normal",
        "high",
        "low",
        "follow-up",
        "referral",
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut text = Vec::with_capacity(1 << 20);
    while text.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        text.push(if x % 11 == 0 { b'\n' } else { b' ' });
    }
    text.truncate(1 << 20);
    coffre_env::stamp_wal_header(&mut text, SEG);
    let mut sizes = Vec::new();
    for extra in ["", "zstd-level = 12\n"] {
        let env = wal_env_with(extra);
        let seg = env.dir.path().join(SEG);
        fs::write(&seg, &text).unwrap();
        let r = env.run(&[
            "wal-push",
            "--source",
            "emr",
            seg.to_str().unwrap(),
            "--json",
        ]);
        r.expect_ok();
        let object = r.json()["object"].as_str().unwrap().to_string();
        let data = env.dir.path().join(format!(
            "stores/a/coffre/wal/emr/00000001/{SEG}/{object}.data"
        ));
        sizes.push(fs::metadata(&data).unwrap().len());
        let out = env.out.join(SEG);
        let r = env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()]);
        r.expect_ok();
        assert!(
            fs::read(&out).unwrap() == text,
            "fetched bytes differ ({extra:?})"
        );
    }
    assert!(
        sizes[1] * 100 < sizes[0] * 95,
        "level 12 did not store the WAL file smaller than the default level 1: {sizes:?}"
    );
}

#[test]
fn a_re_push_with_the_same_bytes_succeeds_and_with_other_bytes_is_refused() {
    let env = wal_env();
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let (seg, _) = wal_file(&pgwal, SEG, 7);
    let first = env.run(&[
        "wal-push",
        "--source",
        "emr",
        seg.to_str().unwrap(),
        "--json",
    ]);
    first.expect_ok();
    let again = env.run(&[
        "wal-push",
        "--source",
        "emr",
        seg.to_str().unwrap(),
        "--json",
    ]);
    again.expect_ok();
    assert_eq!(again.json()["already"], true);
    assert_eq!(again.json()["object"], first.json()["object"]);
    // Same name, other bytes: refused, and the archived copy is untouched.
    let (seg2, _) = wal_file(&env.out, SEG, 99);
    let r = env.run(&["wal-push", "--source", "emr", seg2.to_str().unwrap()]);
    r.expect_failure();
    assert!(r.error_text().contains("DIFFERENT bytes"), "{r}");
    let out = env.dir.path().join("fetched");
    env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()])
        .expect_ok();
    assert!(fs::read(&out).unwrap() == fs::read(&seg).unwrap());
}

/// `coffre wal-fetch --source emr --store STORE SEG TO`.
fn fetch_pinned(env: &CoffreEnv, store: &str, to: &Path) -> coffre_env::Run {
    env.run(&[
        "wal-fetch",
        "--source",
        "emr",
        "--store",
        store,
        SEG,
        to.to_str().unwrap(),
    ])
}

/// The sealed bytes (`*.data`) of the one WAL file under `dir`.
fn sealed_data(dir: &Path) -> PathBuf {
    files_under(dir)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "data"))
        .unwrap()
}

#[test]
fn a_push_completes_a_copy_missing_from_a_store_and_a_fetch_survives_a_lost_or_corrupt_store() {
    let env = wal_env();
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let (seg, bytes) = wal_file(&pgwal, SEG, 3);
    env.run(&["wal-push", "--source", "emr", seg.to_str().unwrap()])
        .expect_ok();
    let wal_a = env.dir.path().join("stores/a/coffre/wal");
    let wal_b = env.dir.path().join("stores/b/coffre/wal");
    // Store a loses its copy: a fetch reads b's.
    fs::remove_dir_all(&wal_a).unwrap();
    let out = env.out.join("one");
    env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()])
        .expect_ok();
    assert!(fs::read(&out).unwrap() == bytes);
    // PostgreSQL pushing it again (a retry) puts the same sealed object back into a.
    env.run(&["wal-push", "--source", "emr", seg.to_str().unwrap()])
        .expect_ok();
    let a_files = files_under(&wal_a);
    assert_eq!(a_files.len(), 3, "{a_files:?}");
    // Store b's sealed bytes corrupted: detected, and a serves the fetch.
    let data = sealed_data(&wal_b);
    let mut d = fs::read(&data).unwrap();
    let mid = d.len() / 2;
    d[mid] ^= 0x40;
    fs::write(&data, &d).unwrap();
    let out2 = env.out.join("two");
    let r = env.run(&["wal-fetch", "--source", "emr", SEG, out2.to_str().unwrap()]);
    r.expect_ok();
    assert!(fs::read(&out2).unwrap() == bytes);
    // A fetch pinned to a store (as a drill of that store runs it) reads that store only: b's
    // bad copy fails with no fallback to a, a's serves, and an unknown store is named.
    let pinned = env.out.join("pinned");
    let fetch_from = |store: &str| fetch_pinned(&env, store, &pinned);
    let r = fetch_from("b");
    r.expect_failure();
    assert!(
        r.error_text()
            .contains("could not be read from any store: b: sealed bytes do not match"),
        "{r}"
    );
    assert!(!pinned.exists());
    fetch_from("a").expect_ok();
    assert!(fs::read(&pinned).unwrap() == bytes);
    // verify re-hashes each store's copy: b's is bad, a's ok.
    let (r, entries) = env.verify(None);
    r.expect_failure();
    let copy = |store: &str| {
        entries
            .iter()
            .find(|e| e["wal"] == SEG && e["store"] == store)
            .unwrap_or_else(|| panic!("no check of {store}'s copy of {SEG}: {entries:?}"))
            .clone()
    };
    assert_eq!(copy("a")["state"], "ok");
    assert_eq!(copy("b")["state"], "bad");
    assert!(
        copy("b")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("SHA-256")),
        "{entries:?}"
    );
    let r = fetch_from("nowhere");
    r.expect_failure();
    assert!(
        r.error_text()
            .contains("unknown store `nowhere`; configured: `a`, `b`"),
        "{r}"
    );
    // Both copies gone bad: a clear error, and nothing written at the destination.
    let a_data = sealed_data(&wal_a);
    fs::write(&a_data, b"truncated").unwrap();
    let out3 = env.out.join("three");
    let r = env.run(&["wal-fetch", "--source", "emr", SEG, out3.to_str().unwrap()]);
    r.expect_failure();
    assert!(
        r.error_text().contains("could not be read from any store"),
        "{r}"
    );
    assert!(!out3.exists());
}

#[test]
fn wal_fetch_of_a_name_never_archived_exits_1_and_bad_names_and_sources_are_refused() {
    let env = wal_env();
    let out = env.out.join("x");
    let r = env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()]);
    r.expect_code(1);
    assert!(r.stderr.contains("is not archived in any store"), "{r}");
    let r = env.run(&[
        "wal-fetch",
        "--source",
        "emr",
        "../../etc/passwd",
        out.to_str().unwrap(),
    ]);
    r.expect_failure();
    assert!(
        r.error_text().contains("not a PostgreSQL WAL file name"),
        "{r}"
    );
    let bad = env.dir.path().join("notwal.txt");
    fs::write(&bad, b"x").unwrap();
    let r = env.run(&["wal-push", "--source", "emr", bad.to_str().unwrap()]);
    r.expect_failure();
    assert!(
        r.error_text().contains("not a PostgreSQL WAL file name"),
        "{r}"
    );
    // A source without [source.pitr] does not archive WAL, and says how to turn it on.
    let plain = CoffreEnv::new("");
    plain.write_config(&format!(
        "{}{}",
        plain.config_text(&plain.state),
        local_stores(plain.dir.path())
    ));
    let seg = plain.dir.path().join(SEG);
    fs::write(&seg, b"wal").unwrap();
    let r = plain.run(&["wal-push", "--source", "emr", seg.to_str().unwrap()]);
    r.expect_failure();
    assert!(r.error_text().contains("[source.pitr]"), "{r}");
}

/// `coffre restore --source emr --to TO --purpose ... TARGET...`.
fn pitr_restore(env: &CoffreEnv, to: &Path, target: &[&str]) -> coffre_env::Run {
    let mut args = vec!["restore", "--source", "emr", "--to", to.to_str().unwrap()];
    args.extend_from_slice(target);
    args.extend(["--purpose", "PITR test"]);
    env.run(&args)
}

/// The `restore_command` docs/operations.md shows under "Point-in-time restore" is, word for
/// word, the one coffre wrote into `auto` (its binary, config and session id put in).
fn restore_command_is_the_documented_one(env: &CoffreEnv, auto: &str) {
    let ops = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
        .unwrap();
    let (_, section) = ops.split_once("### Point-in-time restore").unwrap();
    let documented = section
        .lines()
        .find(|l| l.starts_with("restore_command = "))
        .expect("docs/operations.md shows the restore_command coffre writes");
    let written = auto
        .lines()
        .find(|l| l.starts_with("restore_command = "))
        .unwrap_or_else(|| panic!("no restore_command in {auto}"));
    let session = written
        .split_once("--session ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap();
    let config = std::path::absolute(&env.config).unwrap();
    let expected = documented
        .replace("/usr/bin/coffre", env!("CARGO_BIN_EXE_coffre"))
        .replace("/etc/coffre/coffre.toml", config.to_str().unwrap())
        .replace("01JF3Q8ZK2M4X7V9B1N5C6D8EA", session);
    assert_eq!(written, expected, "docs/operations.md: {documented}");
}

#[test]
fn a_point_in_time_restore_writes_the_recovery_settings_into_the_restored_base_backup() {
    let env = wal_env();
    let base = env.dir.path().join("base-1");
    fs::create_dir_all(base.join("global")).unwrap();
    fs::write(base.join("PG_VERSION"), "15\n").unwrap();
    // A label with its WAL file: a base backup of unknown start is never a PITR base (issue 28).
    fs::write(
        base.join("backup_label"),
        format!("START WAL LOCATION: 0/2000028 (file {SEG})\n"),
    )
    .unwrap();
    fs::write(base.join("global/pg_control"), vec![3u8; 8192]).unwrap();
    env.backup(&base);
    let to = env.dir.path().join("pitr");
    let r = pitr_restore(&env, &to, &["--target-time", "2999-01-01T00:00:00Z"]);
    r.expect_ok();
    assert!(
        r.stdout
            .contains("point-in-time recovery to time 2999-01-01 00:00:00.000000+00"),
        "{}",
        r.all()
    );
    assert!(to.join("recovery.signal").is_file());
    let auto = fs::read_to_string(to.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("wal-fetch --source emr --session ")
            && auto.contains(" %f %p'")
            // No caller text in a PostgreSQL setting (issue 27, N1): the purpose stays in the
            // restore's own access entry.
            && !auto.contains("--purpose")
            && !auto.contains("PITR test"),
        "{auto}"
    );
    restore_command_is_the_documented_one(&env, &auto);
    assert!(
        auto.contains("recovery_target_time = '2999-01-01 00:00:00.000000+00'"),
        "{auto}"
    );
    assert!(
        auto.contains("recovery_target_action = 'promote'"),
        "{auto}"
    );
    // A target before every base backup: a clear error, nothing written.
    let early = env.dir.path().join("early");
    let r = pitr_restore(&env, &early, &["--target-time", "2001-01-01T00:00:00Z"]);
    assert!(!r.ok());
    assert!(r.error_text().contains("no base backup"), "{}", r.all());
    assert!(!early.exists());
    // Two targets at once are refused by the command line.
    let r = pitr_restore(&env, &early, &["--target-latest", "--target-xid", "900"]);
    assert!(!r.ok(), "{}", r.all());
}

#[test]
fn verify_reports_a_gap_in_the_wal_archive_with_the_moments_it_cuts_out() {
    let env = wal_env();
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    // verify creates no master key (issue 28 item 8): keys init does.
    env.run(&["keys", "init"]).expect_ok();
    let (r, _) = env.verify(None);
    r.expect_ok();
    for (i, n) in [1u64, 2, 5].iter().enumerate() {
        let (p, _) = wal_file(
            &pgwal,
            &format!("0000000100000000000000{n:02X}"),
            11 + i as u64,
        );
        env.run(&["wal-push", "--source", "emr", p.to_str().unwrap()])
            .expect_ok();
    }
    let (r, checks) = env.verify(None);
    assert_eq!(r.code, Some(1), "a gap fails verify\n{r}");
    let gaps: Vec<_> = checks
        .iter()
        .filter(|c| c["check"] == "wal-continuity")
        .collect();
    assert_eq!(gaps.len(), 1, "{r}");
    let g = gaps[0];
    assert_eq!(g["timeline"], "00000001");
    assert_eq!(g["first_missing"], "000000010000000000000003");
    assert_eq!(g["last_missing"], "000000010000000000000004");
    assert_eq!(g["missing"], 2);
    assert_eq!(g["before"], "000000010000000000000002");
    assert_eq!(g["after"], "000000010000000000000005");
    assert!(g["before_archived"].is_string() && g["after_archived"].is_string());
    let text = env.run(&["verify"]);
    assert!(
        text.stdout
            .contains("2 segment(s) missing, 000000010000000000000003 to 000000010000000000000004"),
        "{text}"
    );
    // Filled: no gap.
    for n in [3u64, 4] {
        let (p, _) = wal_file(&pgwal, &format!("0000000100000000000000{n:02X}"), 20 + n);
        env.run(&["wal-push", "--source", "emr", p.to_str().unwrap()])
            .expect_ok();
    }
    env.verify(None).0.expect_ok();
}

/// The real binary with its clock `offset` ahead (libfaketime, from tests/setup.sh).
fn run_at(env: &CoffreEnv, offset: &str, args: &[&str]) -> coffre_env::Run {
    let out = std::process::Command::new("faketime")
        .arg("-f")
        .arg(offset)
        .arg(coffre_env::coffre_bin())
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env("COFFRE_LOG", "warn")
        .env("DONT_FAKE_MONOTONIC", "1")
        .current_dir(env.dir.path())
        .output()
        .expect("faketime (Debian package faketime) is installed by tests/setup.sh");
    coffre_env::Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A pg_basebackup-like folder whose backup_label starts at `start`.
fn base_backup(dir: &Path, start: &str) -> PathBuf {
    fs::create_dir_all(dir.join("global")).unwrap();
    fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
    fs::write(
        dir.join("backup_label"),
        format!("START WAL LOCATION: 0/2000028 (file {start})\nBACKUP METHOD: streamed\n"),
    )
    .unwrap();
    fs::write(dir.join("global/pg_control"), vec![3u8; 8192]).unwrap();
    fs::write(dir.join("backup_manifest"), "{}\n").unwrap();
    dir.to_path_buf()
}

fn wal_dir(env: &CoffreEnv, store: &str, name: &str) -> PathBuf {
    env.dir
        .path()
        .join(format!("stores/{store}/coffre/wal/emr/00000001/{name}"))
}

#[test]
fn wal_that_leaves_the_window_is_shredded_with_its_epoch_and_what_the_window_needs_is_kept() {
    let env = wal_env(); // window 7d
                         // The clock moves by days between runs here.
    let text = fs::read_to_string(&env.config).unwrap();
    env.write_config(&format!("{text}\n[shred]\nmax-clock-jump = \"100d\"\n"));
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let names: Vec<String> = (1..=3)
        .map(|n| format!("0000000100000000000000{n:02X}"))
        .collect();
    let mut bytes = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (p, b) = wal_file(&pgwal, n, 100 + i as u64);
        env.run(&["wal-push", "--source", "emr", p.to_str().unwrap()])
            .expect_ok();
        bytes.push(b);
    }
    // The base backup starts at segment 2: segment 1 is needed by nothing once it is due.
    let base = env.backup(&base_backup(&env.dir.path().join("base-1"), &names[1]));
    // Every byte of segment 1's copy, kept aside (as an attacker who copied the store would).
    let aside: Vec<(PathBuf, Vec<u8>)> = files_under(&wal_dir(&env, "a", &names[0]))
        .into_iter()
        .map(|f| {
            let b = fs::read(&f).unwrap();
            (f, b)
        })
        .collect();
    assert_eq!(aside.len(), 3);

    // Not due yet at +5d: nothing happens.
    run_at(&env, "+5d", &["retention", "run"]).expect_ok();
    assert!(wal_dir(&env, "a", &names[0])
        .join("manifest.json")
        .is_file());

    // +10d: the WAL's epochs (archived + 7d window + 1d) are over. The plan says what goes.
    let plan = run_at(&env, "+10d", &["retention", "plan", "--json"]);
    plan.expect_ok();
    let p = &plan.json()["pitr"][0];
    assert_eq!(p["source"], "emr", "{plan}");
    assert_eq!(p["base"], base.as_str(), "{plan}");
    assert_eq!(
        (p["wal_due_shred"].as_u64(), p["wal_due_keep"].as_u64()),
        (Some(1), Some(2)),
        "{plan}"
    );
    assert!(
        p["recoverable_from"].is_string() && p["recoverable_to"].is_string(),
        "{plan}"
    );
    let text = run_at(&env, "+10d", &["retention", "plan"]);
    assert!(
        text.stdout.contains("source emr: any moment from"),
        "{text}"
    );
    let r = run_at(&env, "+10d", &["retention", "run", "--json"]);
    r.expect_ok();
    for store in ["a", "b"] {
        assert!(
            files_under(&wal_dir(&env, store, &names[0])).is_empty(),
            "segment 1 still in store {store}\n{r}"
        );
        for n in &names[1..] {
            assert!(
                wal_dir(&env, store, n).join("manifest.json").is_file(),
                "{n} (needed by the base backup) was removed from {store}\n{r}"
            );
        }
    }
    let records = run_at(&env, "+10d", &["shred", "--records", "--json"]);
    records.expect_ok();
    assert!(
        records
            .stdout
            .contains("the WAL file left the recovery window"),
        "{records}"
    );
    let log = fs::read_to_string(env.state.join("audit/access.log")).unwrap();
    assert!(log.contains("\"action\":\"shred\""), "no shred entry");
    assert!(
        log.contains("\"action\":\"key-rewrap\""),
        "no re-wrap entry"
    );

    // Every byte put back: the shredded segment does not open; the kept ones do.
    for (f, b) in &aside {
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, b).unwrap();
    }
    let out = env.out.join("seg1");
    let r = run_at(
        &env,
        "+10d",
        &[
            "wal-fetch",
            "--source",
            "emr",
            &names[0],
            out.to_str().unwrap(),
        ],
    );
    assert!(!r.ok(), "a shredded WAL file opened\n{r}");
    assert!(r.error_text().contains("destroyed"), "{r}");
    assert!(!out.exists());
    let out2 = env.out.join("seg2");
    run_at(
        &env,
        "+10d",
        &[
            "wal-fetch",
            "--source",
            "emr",
            &names[1],
            out2.to_str().unwrap(),
        ],
    )
    .expect_ok();
    assert!(fs::read(&out2).unwrap() == bytes[1], "kept segment differs");

    // +40d: the base backup is past its own plan (keep-within 30d) but, as the only base
    // backup, starts the window: kept, with the WAL it needs.
    let base2_dir = env.dir.path().join("base-2");
    base_backup(&base2_dir, "000000010000000000000009");
    let r = run_at(
        &env,
        "+38d",
        &["backup", "--source", "emr", base2_dir.to_str().unwrap()],
    );
    r.expect_ok();
    let plan = run_at(&env, "+40d", &["retention", "plan", "--json"]);
    plan.expect_ok();
    assert!(
        plan.json()["pitr"][0]["next_start_at"].is_string(),
        "the next base backup takes over the window later\n{plan}"
    );
    assert!(
        plan.stdout.contains(
            "start of the point-in-time recovery window (its WAL from 000000010000000000000002)"
        ),
        "{plan}"
    );
    let r = run_at(&env, "+40d", &["retention", "run"]);
    r.expect_ok();
    let list = run_at(&env, "+40d", &["snapshots", "--json"]);
    assert!(
        list.stdout.contains(&base),
        "the base backup starting the window was shredded\n{list}"
    );
    assert!(wal_dir(&env, "a", &names[1])
        .join("manifest.json")
        .is_file());
}

#[test]
fn a_rebuilt_catalog_knows_the_wal_archive_again_so_retention_can_shred_it() {
    let env = wal_env();
    push_two_segments(&env, 300);
    // A new host: the catalog is gone.
    for f in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = fs::remove_file(env.state.join(f));
    }
    env.run(&["catalog", "rebuild"]).expect_ok();
    let plan = run_at(&env, "+10d", &["retention", "plan", "--json"]);
    plan.expect_ok();
    // No base backup: nothing needs them once their epochs are due.
    assert_eq!(plan.json()["pitr"][0]["wal_due_shred"], 2, "{plan}");
}

#[test]
fn wal_is_kept_while_a_base_backup_of_unknown_start_is_kept() {
    let env = wal_env();
    push_two_segments(&env, 500);
    // A directory snapshot without a backup_label (a tar-format pg_basebackup, say): where
    // its WAL starts is not known, so no WAL may go while it is kept.
    let tar_format = env.dir.path().join("base-tar");
    fs::create_dir_all(&tar_format).unwrap();
    fs::write(tar_format.join("base.tar"), vec![1u8; 4096]).unwrap();
    env.backup(&tar_format);
    let plan = run_at(&env, "+10d", &["retention", "plan", "--json"]);
    plan.expect_ok();
    let p = &plan.json()["pitr"][0];
    assert_eq!(
        (p["wal_due_shred"].as_u64(), p["wal_due_keep"].as_u64()),
        (Some(0), Some(2)),
        "{plan}"
    );
}

/// Push segments 1 and 2 of timeline 1 (pseudo-random contents from `seed`).
fn push_two_segments(env: &CoffreEnv, seed: u64) {
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    for (i, n) in ["000000010000000000000001", "000000010000000000000002"]
        .iter()
        .enumerate()
    {
        let (p, _) = wal_file(&pgwal, n, seed + i as u64);
        env.run(&["wal-push", "--source", "emr", p.to_str().unwrap()])
            .expect_ok();
    }
}

/// The key object of WAL file `name` in `store`, as JSON.
fn wal_key_object(env: &CoffreEnv, store: &str, name: &str) -> PathBuf {
    files_under(&wal_dir(env, store, name))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".key.json"))
        .unwrap_or_else(|| panic!("no key object of {name} in {store}"))
}

/// Issue 27, N8: one store's administrator relabels a WAL file's key object so that its tags
/// name a provider this host does not have (`ghost`). Such a copy was accepted for WAL (not for
/// snapshots); it is a tampered copy now: the fetch takes the other store's, a fetch pinned to
/// that store refuses it saying why, and verify reports it.
#[test]
fn a_wal_key_object_relabelled_to_an_unknown_provider_is_tampered_and_the_other_copy_serves() {
    let env = wal_env();
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let (seg, bytes) = wal_file(&pgwal, SEG, 41);
    env.run(&["wal-push", "--source", "emr", seg.to_str().unwrap()])
        .expect_ok();
    let key = wal_key_object(&env, "a", SEG);
    let mut k: serde_json::Value = serde_json::from_slice(&fs::read(&key).unwrap()).unwrap();
    let tags = k["auth"]
        .as_array_mut()
        .expect("WAL key objects are tagged");
    assert!(!tags.is_empty());
    for t in tags {
        t["provider"] = "ghost".into();
    }
    fs::write(&key, serde_json::to_vec(&k).unwrap()).unwrap();

    let out = env.out.join("fetched");
    let r = env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()]);
    r.expect_ok();
    assert!(fs::read(&out).unwrap() == bytes, "not the archived bytes");
    assert!(
        r.stderr.contains("ghost") && r.stderr.contains("tampered"),
        "store a's copy was not set aside\n{r}"
    );
    let pinned = env.out.join("pinned");
    let r = env.run(&[
        "wal-fetch",
        "--source",
        "emr",
        "--store",
        "a",
        SEG,
        pinned.to_str().unwrap(),
    ]);
    r.expect_failure();
    assert!(
        r.error_text()
            .contains("a: key object and manifest cannot be checked")
            && r.error_text().contains("ghost")
            && r.error_text().contains("coffre verify"),
        "{r}"
    );
    assert!(!pinned.exists());
    let (r, entries) = env.verify(None);
    r.expect_failure();
    let copy = |store: &str| {
        entries
            .iter()
            .find(|e| e["wal"] == SEG && e["store"] == store)
            .unwrap_or_else(|| panic!("no check of {store}'s copy: {entries:?}"))
            .clone()
    };
    assert_eq!(copy("b")["state"], "ok", "{entries:?}");
    assert_eq!(copy("a")["state"], "bad", "{entries:?}");
    assert!(
        copy("a")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ghost") && d.contains("tampered")),
        "{entries:?}"
    );
}

/// Issue 27, N8: a WAL file whose first page header is another segment's (archived under the
/// wrong name) is never served: every store's copy is set aside, and the error names them and
/// says what to do.
#[test]
fn a_segment_whose_page_header_is_another_segments_is_not_served() {
    let env = wal_env();
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let (other, bytes) = wal_file(&pgwal, "000000010000000000000009", 43);
    fs::remove_file(other).unwrap();
    // Segment 9's bytes, named SEG (segment 10).
    let seg = pgwal.join(SEG);
    fs::write(&seg, &bytes).unwrap();
    env.run(&["wal-push", "--source", "emr", seg.to_str().unwrap()])
        .expect_ok();
    let out = env.out.join("fetched");
    let r = env.run(&["wal-fetch", "--source", "emr", SEG, out.to_str().unwrap()]);
    r.expect_failure();
    let e = r.error_text();
    assert!(
        e.contains("a: the copy is not WAL file 00000001000000000000000A")
            && e.contains("b: the copy is not WAL file")
            && e.contains("first page is at LSN 0/9000000, the name says 0/A000000")
            && e.contains("coffre verify"),
        "{r}"
    );
    assert!(!out.exists());
}

/// Issue 27, N15: `wal-fetch` serves a spooled WAL file only when every store answers that it
/// does not have it; when a store answers with something it cannot read, the spool is not a
/// fallback (the store may hold the archived copy PostgreSQL acknowledged).
#[test]
fn the_spool_serves_a_wal_file_only_when_no_store_has_it() {
    let env = wal_env();
    let name = "000000010000000000000021";
    let spool = env.state.join("spool/emr");
    fs::create_dir_all(&spool).unwrap();
    let (_, bytes) = wal_file(&spool, name, 45);
    let out = env.out.join("fetched");
    let fetch = || env.run(&["wal-fetch", "--source", "emr", name, out.to_str().unwrap()]);
    // In no store: from the spool.
    fetch().expect_ok();
    assert!(fs::read(&out).unwrap() == bytes);
    fs::remove_file(&out).unwrap();
    // Store b answers with a manifest it cannot read: not "not there", so no spool.
    let dir = wal_dir(&env, "b", name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("manifest.json"), b"{ not a manifest").unwrap();
    let r = fetch();
    r.expect_failure();
    assert!(
        r.error_text()
            .contains("could not be read from any store: b:"),
        "{r}"
    );
    assert!(
        !out.exists(),
        "served from the spool while store b answered"
    );
}

/// Issue 27, N4: a base backup planted in a source folder carries links. One that leaves the
/// folder (absolute, or climbing out with `..`) is refused when the backup is unpacked, naming
/// the entry; one that stays inside but stands where coffre writes its recovery settings
/// (`recovery.signal`, `postgresql.auto.conf`) is refused before anything is written through it.
/// The files the links point at are never changed.
#[test]
fn a_planted_base_backup_cannot_make_a_restore_write_through_its_links() {
    let env = wal_env();
    let victim = env.dir.path().join("victim.conf");
    fs::write(&victim, "owned by someone else\n").unwrap();
    // Out of the folder: absolute, and by `..`.
    for (i, (entry, target)) in [
        ("recovery.signal", victim.clone()),
        ("postgresql.auto.conf", PathBuf::from("../../victim.conf")),
    ]
    .into_iter()
    .enumerate()
    {
        let base = base_backup(&env.dir.path().join(format!("planted-{i}")), SEG);
        std::os::unix::fs::symlink(&target, base.join(entry)).unwrap();
        env.backup(&base);
        let to = env.dir.path().join(format!("restored-{i}"));
        let r = pitr_restore(&env, &to, &["--target-latest"]);
        assert!(!r.ok(), "{}", r.all());
        assert!(
            r.all().contains(entry),
            "the error names the entry: {}",
            r.all()
        );
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "owned by someone else\n"
        );
    }
    // Inside the folder, where the recovery settings go: refused, the target file unchanged.
    let base = base_backup(&env.dir.path().join("planted-inside"), SEG);
    fs::write(base.join("keep.conf"), "inside\n").unwrap();
    std::os::unix::fs::symlink("keep.conf", base.join("postgresql.auto.conf")).unwrap();
    env.backup(&base);
    let to = env.dir.path().join("restored-inside");
    let r = pitr_restore(&env, &to, &["--target-latest"]);
    assert!(!r.ok(), "{}", r.all());
    assert!(r.all().contains("postgresql.auto.conf"), "{}", r.all());
    assert_eq!(
        fs::read_to_string(to.join("keep.conf")).unwrap(),
        "inside\n"
    );
    assert!(!to.join("recovery.signal").exists());
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "owned by someone else\n"
    );
}

/// Issue 27, N17: a base backup under legal hold keeps the WAL a replay from it needs (from its
/// start to the next base backup's) while the hold stands, though that WAL left the window; the
/// same WAL with no hold is shredded (the test above).
#[test]
fn a_held_base_backup_keeps_its_wal_past_the_window() {
    let env = wal_env(); // window 7d
    let text = fs::read_to_string(&env.config).unwrap();
    env.write_config(&format!("{text}\n[shred]\nmax-clock-jump = \"100d\"\n"));
    let pgwal = env.dir.path().join("pg_wal");
    fs::create_dir_all(&pgwal).unwrap();
    let names: Vec<String> = (1..=4)
        .map(|n| format!("0000000100000000000000{n:02X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        let (p, _) = wal_file(&pgwal, n, 300 + i as u64);
        env.run(&["wal-push", "--source", "emr", p.to_str().unwrap()])
            .expect_ok();
    }
    let held = env.backup(&base_backup(&env.dir.path().join("base-1"), &names[0]));
    env.backup(&base_backup(&env.dir.path().join("base-2"), &names[2]));
    env.run(&["hold", "add", &held, "--purpose", "litigation 27"])
        .expect_ok();
    // +10d: every WAL file's epoch is over; the held base backup still needs segments 1 to 3.
    let r = run_at(&env, "+10d", &["retention", "run", "--json"]);
    r.expect_ok();
    for store in ["a", "b"] {
        for n in &names[..3] {
            assert!(
                wal_dir(&env, store, n).join("manifest.json").is_file(),
                "{n}, needed by the held base backup, was removed from {store}\n{r}"
            );
        }
    }
    let out = env.out.join("seg1");
    run_at(
        &env,
        "+10d",
        &[
            "wal-fetch",
            "--source",
            "emr",
            &names[0],
            out.to_str().unwrap(),
        ],
    )
    .expect_ok();
}
