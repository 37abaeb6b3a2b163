//! Issue 28, items 1-7, through the real binary and a real PostgreSQL 15: what a point-in-time
//! restore leaves behind and what an operator meets.
//!
//! * A source that never archived: `status` claims no recoverable range, `coffre_wal_files` is 0
//!   (item 4).
//! * An empty "base backup" protected after the real one is skipped by PITR (item 2).
//! * A restore as root says who owns the folder and to `chown -R postgres:` it (item 6).
//! * `--replay --archive-mode preserve`: the copy, started as the new primary (as postgres,
//!   archiving through the daemon with the archive settings it carried in its backup), archives
//!   timeline 2 with its history file first; the next restore to the latest point reaches the rows
//!   of timeline 2 and promotes onto timeline 3; with the default `--archive-mode off` that copy
//!   archives nothing (items 1, 7). `verify` passes, then flags timeline 2 once its history file
//!   is gone from the stores (item 1).
//! * `wal-push` as a non-root user with no daemon says the daemon is not running (item 5).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::e2e_pitr::{wait_archived, Host};
use crate::common::config::ConfigBuilder;
use crate::common::servers::Postgres;
use crate::common::users::TempUser;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

/// `coffre restore --source emr --to TO ARGS…` as `user` through the daemon's socket, from a
/// folder `user` owns: (success, stdout + stderr).
fn restore_as(host: &Host, user: &str, to: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("runuser")
        .args(["-u", user, "--", "env"])
        .arg(format!("COFFRE_SOCKET={}", host.socket.display()))
        .arg(BIN)
        .args(["restore", "--source", "emr", "--to"])
        .arg(to)
        .args(args)
        .args(["--purpose", "issue 28 timelines"])
        .current_dir(to.parent().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn chown(owner: &str, path: &Path) {
    let st = Command::new("chown")
        .args(["-R", owner])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chown {owner} {}", path.display());
}

fn notes(pg: &Postgres) -> Vec<String> {
    pg.psql("emr", "SELECT note FROM notes ORDER BY id")
        .lines()
        .map(str::to_string)
        .collect()
}

fn timeline(pg: &Postgres) -> String {
    pg.psql(
        "postgres",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    )
    .trim()
    .to_string()
}

/// Item 4: a PITR source with nothing archived claims no range, and its file count is 0.
fn nothing_archived_yet(host: &Host) {
    let (ok, out, err) = host.run(&["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("nothing archived yet"), "{out}");
    assert!(!out.contains("recoverable from"), "{out}");
    let (ok, out, err) = host.run(&["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let wal = &status["sources"][0]["wal"];
    assert_eq!(wal["files"], 0, "{wal}");
    assert!(wal["window_start"].is_null(), "{wal}");
    let metrics = host.http_get("/metrics");
    assert!(
        metrics.contains("coffre_wal_files{source=\"emr\"} 0"),
        "{metrics}"
    );
}

/// A primary archiving through the daemon, with its archive settings also in its
/// postgresql.auto.conf (so that they travel in its base backups), a table `notes` with one row
/// `first`, and a base backup `in/base-1` protected.
fn primary_with_a_base_backup(host: &Host) -> Postgres {
    let archive = host.archive_command();
    let primary = Postgres::start_with(&[("archive_mode", "on"), ("archive_command", &archive)]);
    primary.psql("postgres", "ALTER SYSTEM SET archive_mode = 'on'");
    primary.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            archive.replace('\'', "''")
        ),
    );
    primary.create_db("emr");
    primary.psql(
        "emr",
        "CREATE TABLE notes (id serial PRIMARY KEY, note text NOT NULL)",
    );
    let out = primary
        .client("pg_basebackup")
        .arg("-D")
        .arg(host.d.join("in/base-1"))
        .args(["-Fp", "-X", "stream", "-c", "fast"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.wait_protected();
    primary.psql("emr", "INSERT INTO notes (note) VALUES ('first')");
    let last = primary
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    wait_archived(&primary, &last);
    primary
}

#[test]
fn a_replayed_copy_archives_its_timeline_and_the_next_restore_follows_it_onto_timeline_3() {
    let host = Host::start();
    nothing_archived_yet(&host);
    let primary = primary_with_a_base_backup(&host);

    root_restore_skips_an_empty_base_and_names_the_owner(&host);
    let operator = TempUser::operator();
    let owned = host.d.join("pg");
    std::fs::create_dir_all(&owned).unwrap();
    chown(&operator.name, &owned);
    new_primary_on_timeline_2(&host, &operator, &owned, primary);
    next_restore_on_timeline_3(&host, &operator, &owned);
    verify_flags_a_timeline_without_its_history(&host);
}

/// Items 2 and 6 (as root, without --replay).
fn root_restore_skips_an_empty_base_and_names_the_owner(host: &Host) {
    // Item 2: a folder with a backup_manifest and nothing else, protected after the base backup
    // (a pg_basebackup that failed early): no pg_wal_start, so PITR skips it.
    let empty = host.d.join("in/base-2-empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("backup_manifest"), "{}").unwrap();
    host.wait_protected_n(2);

    // Item 6 (and 2): as root, without --replay: base-1 is restored, and the message names the
    // owner and the chown.
    let as_root = host.d.join("as-root");
    let said = host.pitr_restore(&as_root, &["--target-latest"]);
    assert!(as_root.join("PG_VERSION").is_file(), "{said}");
    assert!(
        said.contains(&format!(
            "{} is owned by root (mode 0700)",
            as_root.display()
        )) && said.contains(&format!("chown -R postgres: {}", as_root.display())),
        "{said}"
    );
    assert!(
        said.contains("keeps the backup's archive settings"),
        "{said}"
    );
}

/// Items 1 and 7 (preserve): the copy becomes the primary of timeline 2 and archives it.
fn new_primary_on_timeline_2(host: &Host, operator: &TempUser, owned: &Path, primary: Postgres) {
    // Items 1 and 7: replayed by an operator, archive settings preserved; the history file of
    // the new timeline is queued for the copy's archiver.
    let tl2 = owned.join("tl2");
    let (ok, said) = restore_as(
        host,
        &operator.name,
        &tl2,
        &["--target-latest", "--replay", "--archive-mode", "preserve"],
    );
    assert!(ok, "restore --replay --archive-mode preserve: {said}");
    assert!(said.contains("Archive mode preserved"), "{said}");
    assert!(said.contains("archives timeline 2"), "{said}");
    assert!(said.contains("00000002.history first"), "{said}");
    assert!(
        said.contains(&format!("chown -R postgres: {}", tl2.display())),
        "{said}"
    );
    assert!(tl2
        .join("pg_wal/archive_status/00000002.history.ready")
        .is_file());
    drop(primary);

    // Started as the new primary with nothing but its own configuration: it archives timeline
    // 2 through the daemon, as postgres, the history file included.
    chown("postgres:postgres", &tl2);
    let pg = Postgres::start_from(&tl2);
    assert_eq!(timeline(&pg), "2");
    assert_eq!(
        pg.psql("postgres", "SHOW archive_mode").trim(),
        "on",
        "preserved"
    );
    pg.psql("emr", "INSERT INTO notes (note) VALUES ('on timeline 2')");
    let last2 = pg
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    assert!(last2.starts_with("00000002"), "{last2}");
    wait_archived(&pg, &last2);
    for store in ["a", "b"] {
        let history = host.d.join(format!(
            "stores/{store}/coffre/wal/emr/00000002/00000002.history/manifest.json"
        ));
        assert!(
            history.is_file(),
            "00000002.history not archived in {store}"
        );
    }
    drop(pg);
}

/// Items 1 and 7 (off): the next restore follows timeline 2 onto timeline 3.
fn next_restore_on_timeline_3(host: &Host, operator: &TempUser, owned: &Path) {
    // The next restore to the latest point follows timeline 2 and promotes onto timeline 3;
    // by default (--archive-mode off) that copy archives nothing.
    let tl3 = owned.join("tl3");
    let (ok, said) = restore_as(host, &operator.name, &tl3, &["--target-latest", "--replay"]);
    let replay_log = std::fs::read_to_string(tl3.join("coffre-replay.log")).unwrap_or_default();
    assert!(ok, "second restore: {said}\n{replay_log}");
    assert!(said.contains("Archive mode off"), "{said}");
    assert!(said.contains("remove that line"), "{said}");
    assert!(
        replay_log.contains("selected new timeline ID: 3"),
        "{replay_log}"
    );
    let auto = std::fs::read_to_string(tl3.join("postgresql.auto.conf")).unwrap();
    assert!(auto.trim_end().ends_with("archive_mode = 'off'"), "{auto}");
    chown("postgres:postgres", &tl3);
    let pg = Postgres::start_from(&tl3);
    assert_eq!(notes(&pg), ["first", "on timeline 2"]);
    assert_eq!(timeline(&pg), "3");
    assert_eq!(pg.psql("postgres", "SHOW archive_mode").trim(), "off");
    drop(pg);
}

/// Item 1: verify passes with every history, and flags a timeline without one.
fn verify_flags_a_timeline_without_its_history(host: &Host) {
    // Both timelines continuous, each with its history: verify passes...
    let (ok, out, err) = host.run(&["verify"]);
    assert!(ok, "verify: {out}{err}");
    // ...and flags timeline 2 once its history file is gone from every store.
    for store in ["a", "b"] {
        std::fs::remove_dir_all(host.d.join(format!(
            "stores/{store}/coffre/wal/emr/00000002/00000002.history"
        )))
        .unwrap();
    }
    let (ok, out, err) = host.run(&["verify"]);
    assert!(!ok, "verify passed without 00000002.history: {out}{err}");
    assert!(
        out.contains("WAL timeline 00000002 of source `emr`")
            && out.contains("no 00000002.history"),
        "{out}"
    );
    assert!(
        out.contains("1 timeline(s) without their history file"),
        "{out}"
    );
}

/// Item 5: in the packaged layout the state folder is the daemon's alone (0700 root); with no
/// daemon, PostgreSQL's push as user postgres is told that the daemon is not running.
#[test]
fn a_push_without_a_daemon_says_the_daemon_is_not_running() {
    let tmp = tempfile::Builder::new()
        .prefix("coffre-nodaemon-")
        .tempdir()
        .unwrap();
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = ConfigBuilder::new(d)
        .audit("operators-group = \"postgres\"")
        .source(
            "emr",
            &d.join("in"),
            "[source.pitr]\narchiver = \"postgres\"",
        )
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .write(&d.join("coffre.toml"));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let wal = d.join("000000010000000000000001");
    std::fs::write(&wal, vec![0u8; 16 << 20]).unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "env"])
        .arg(format!(
            "COFFRE_SOCKET={}",
            d.join("run/coffre.sock").display()
        ))
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .args(["wal-push", "--source", "emr"])
        .arg(&wal)
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the coffre daemon is not running"), "{err}");
    assert!(err.contains("systemctl start coffre"), "{err}");
    assert!(err.contains("retries archive_command"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "wrote state");
}
