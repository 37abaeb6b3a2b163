//! Issue 27, trust boundaries of point-in-time recovery, through the real binary and a real
//! PostgreSQL 15: a superuser of the primary planted commands and libraries in its configuration
//! (`ALTER SYSTEM`, so they travel in the base backup's postgresql.auto.conf) before the
//! pg_basebackup. coffre's replays (`restore --replay` as the folder's owner, a PITR drill by the
//! daemon as `drill.pg-user`) run none of them (N5), and a purpose and a restore point name with
//! a quote, a backslash and `\047` neither break nor change the recovery settings (N1, N10, N11).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::e2e_pitr::{wait_archived, Host};
use crate::common::servers::Postgres;
use crate::common::users::TempUser;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");
/// A restore point name PostgreSQL's configuration parser would decode if coffre did not escape.
const POINT: &str = r"it's \047 a \n point";

/// What the backup's configuration says: each command touches a canary file named after its
/// setting; the libraries do not exist (a server that loaded them would not start).
fn planted(canaries: &Path) -> Vec<(&'static str, String)> {
    let touch = |n: &str| format!("touch {}/{n}", canaries.display());
    vec![
        ("recovery_end_command", touch("recovery_end_command")),
        ("archive_cleanup_command", touch("archive_cleanup_command")),
        (
            "restore_command",
            format!("{}; false", touch("restore_command")),
        ),
        ("archive_command", touch("archive_command")),
        ("ssl", "on".into()),
        ("ssl_passphrase_command", touch("ssl_passphrase_command")),
        ("shared_preload_libraries", "nonexistent_lib".into()),
        ("session_preload_libraries", "nonexistent_lib".into()),
        ("dynamic_library_path", canaries.display().to_string()),
        (
            "external_pid_file",
            format!("{}/external_pid_file", canaries.display()),
        ),
        ("logging_collector", "on".into()),
        ("log_directory", canaries.display().to_string()),
    ]
}

fn canaries_seen(canaries: &Path) -> Vec<String> {
    std::fs::read_dir(canaries)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn postgresql_started_by_coffre_runs_nothing_from_the_backups_configuration() {
    let host = Host::start();
    let canaries = host.d.join("canaries");
    std::fs::create_dir(&canaries).unwrap();
    // User postgres could write there, were anything run.
    std::fs::set_permissions(&canaries, std::fs::Permissions::from_mode(0o777)).unwrap();
    let primary = Postgres::start_with(&[
        ("archive_mode", "on"),
        ("archive_command", &host.archive_command()),
    ]);
    for (k, v) in planted(&canaries) {
        primary.psql("postgres", &format!("ALTER SYSTEM SET {k} = '{v}'"));
    }
    primary.create_db("emr");
    primary.psql(
        "emr",
        "CREATE TABLE notes (id serial PRIMARY KEY, note text NOT NULL); \
         INSERT INTO notes (note) VALUES ('before')",
    );
    let base = host.d.join("in/base-1");
    let out = primary
        .client("pg_basebackup")
        .arg("-D")
        .arg(&base)
        .args(["-Fp", "-X", "stream", "-c", "fast"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let auto = std::fs::read_to_string(base.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("recovery_end_command"), "{auto}");
    host.wait_protected();
    primary.psql("emr", "INSERT INTO notes (note) VALUES ('after')");
    let point_sql = POINT.replace('\'', "''");
    primary.psql(
        "postgres",
        &format!("SELECT pg_create_restore_point('{point_sql}')"),
    );
    primary.psql("emr", "INSERT INTO notes (note) VALUES ('later')");
    let last = primary
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    wait_archived(&primary, &last);

    // restore --replay as an operator (the archiver `postgres` may not restore) who owns the
    // target's folder, to the restore point, with a purpose that once ended the shell's quoting
    // of restore_command.
    let operator = TempUser::operator();
    let owned = host.d.join("pg");
    std::fs::create_dir_all(&owned).unwrap();
    let st = Command::new("chown")
        .arg(&operator.name)
        .arg(&owned)
        .status()
        .unwrap();
    assert!(st.success());
    let to = owned.join("replayed");
    let purpose = format!(
        "chart of Mrs O'Brien x\\047; touch {}/purpose; echo \\047",
        canaries.display()
    );
    let out = Command::new("runuser")
        .args(["-u", &operator.name, "--", "env"])
        .arg(format!("COFFRE_SOCKET={}", host.socket.display()))
        .arg(BIN)
        .args(["restore", "--source", "emr", "--to"])
        .arg(&to)
        .args(["--target-name", POINT, "--replay", "--purpose", &purpose])
        .current_dir(&owned)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let replay_log = std::fs::read_to_string(to.join("coffre-replay.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "restore --replay: {said}\n--- coffre-replay.log:\n{replay_log}"
    );
    assert!(said.contains("replayed to restore point"), "{said}");
    assert_eq!(
        canaries_seen(&canaries),
        Vec::<String>::new(),
        "the backup's configuration ran; coffre-replay.log:\n{replay_log}"
    );

    // The copy holds what was written up to the restore point (started here with the planted
    // settings overridden, as coffre did: they are still in its postgresql.auto.conf).
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success());
    let pg = Postgres::start_from_with(
        &to,
        &[
            ("shared_preload_libraries", ""),
            ("session_preload_libraries", ""),
            ("dynamic_library_path", "$libdir"),
            ("ssl", "off"),
            ("external_pid_file", ""),
            ("archive_mode", "off"),
        ],
    );
    let notes = pg.psql("emr", "SELECT note FROM notes ORDER BY id");
    assert_eq!(notes.lines().collect::<Vec<_>>(), ["before", "after"]);
    drop(pg);

    // A point-in-time drill of one store: the daemon (root) runs PostgreSQL as drill.pg-user.
    let (ok, out, err) = host.run(&["drill", "--source", "emr", "--store", "a", "--json"]);
    assert!(ok, "drill: {out}{err}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(reports.len(), 1, "{out}");
    assert_eq!(reports[0]["ok"], true, "{out}");
    assert_eq!(reports[0]["stage"], "done", "{out}");
    assert_eq!(canaries_seen(&canaries), Vec::<String>::new());
    drop(primary);
}
