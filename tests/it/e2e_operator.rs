//! What an operator meets (issue 28, items 8 to 21), each through the real binary: read-only
//! commands create no master key, a daemon that never answers is a clear error, what `backup`
//! protected the intake does not protect again, exit codes (2 for bad arguments, 77 for
//! refusals by role) the same locally and through the daemon, shred's dry run (JSON, a held
//! snapshot, the newest one), holds that are never silently replaced, `audit show --action`,
//! a drill's relative verify command, the uploaded-bytes counter with WAL, and the example
//! config. The tests that need real Unix users (roles, the refusal limit) are in e2e_roles.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::coffre::{local_stores, CoffreEnv};
use crate::common::daemon::{http_body as http_get, wait_until};

/// Source `emr` on two local stores (two sites), the master key created on first use.
fn env() -> CoffreEnv {
    env_with("", "")
}

/// [`env`] with `tables` (e.g. `[daemon]`) added at the end of the config and `source` in the
/// `emr` source's table. The status server listens on a port of its own.
fn env_with(tables: &str, source: &str) -> CoffreEnv {
    let env = CoffreEnv::new("");
    let text = env
        .config_text(&env.state)
        .replace("[[key-provider]]", &format!("{source}\n[[key-provider]]"));
    let stores = local_stores(env.dir.path(), &[("site-a", "a"), ("site-b", "b")]);
    env.write_config(&format!(
        "{text}{stores}\n[status]\nlisten = \"127.0.0.1:0\"\n{tables}"
    ));
    env
}

fn write(p: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(p, bytes).unwrap();
    p.to_path_buf()
}

/// Item 8: with `create-master-key = true` and no daemon, listing and checking commands report
/// the missing key and create none; `keys init` does.
#[test]
fn read_only_commands_never_create_a_master_key() {
    let env = env();
    for args in [
        &["snapshots"][..],
        &["keys", "status"],
        &["verify"],
        &["audit", "show"],
    ] {
        let r = env.run(args);
        assert!(
            !env.master_key.exists(),
            "`coffre {}` created the master key\n{r}",
            args.join(" ")
        );
        r.expect_failure();
        assert!(r.stderr.contains("keys init"), "no way forward named\n{r}");
    }
    env.run(&["keys", "init"]).expect_ok();
    assert!(env.master_key.exists());
    env.run(&["snapshots"]).expect_ok();
}

/// Item 9: a daemon that holds its socket but never answers (SIGSTOP) is a clear error within
/// the first-answer limit (30 s), not a wait without end; once it runs again, commands work.
#[test]
fn a_stopped_daemon_is_an_error_within_the_first_answer_limit() {
    let env = env();
    let d = env.daemon();
    nix::sys::signal::kill(d.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let mut c = env.command(&["snapshots"]);
    c.env("COFFRE_SOCKET", env.socket());
    let out = c.output().unwrap();
    let took = t.elapsed();
    nix::sys::signal::kill(d.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(60),
        "gave up after {took:?}"
    );
    assert!(
        err.contains("answered nothing for 30 s") && err.contains("stopped or hung"),
        "{err}"
    );
    env.run(&["snapshots"]).expect_ok();
}

/// The snapshots of source `emr` in the catalog, by name.
fn snapshot_names(env: &CoffreEnv) -> Vec<String> {
    let r = env.run(&["snapshots", "--source", "emr", "--json"]);
    r.expect_ok();
    let mut v: Vec<String> = r
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array\n{r}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// Item 10: a file and a base backup folder protected by `coffre backup` (locally before the
/// daemon starts, and through it while it runs) are not protected again by the intake, which
/// still takes what nobody backed up.
#[test]
fn what_backup_protected_the_intake_does_not_protect_again() {
    let env = env_with(
        "[daemon]\nscan-interval = \"200ms\"\n",
        "settle-time = \"2s\"\n",
    );
    let file = write(&env.incoming.join("a.sql"), &vec![b'a'; 100_000]);
    let base = env.incoming.join("base1");
    std::fs::create_dir_all(base.join("global")).unwrap();
    write(&base.join("global/pg_control"), &vec![b'c'; 8192]);
    write(&base.join("PG_VERSION"), b"15\n");
    write(&base.join("backup_manifest"), b"{}\n");
    env.backup(&file);
    env.backup(&base);
    let _d = env.daemon();
    // Through the daemon, before the intake finds it settled.
    let c = write(&env.incoming.join("c.sql"), &vec![b'c'; 50_000]);
    env.backup(&c);
    // Nobody backs this one up: the intake takes it.
    write(&env.incoming.join("d.sql"), &vec![b'd'; 50_000]);
    wait_until("the intake protects d.sql", 60, || {
        snapshot_names(&env).iter().any(|n| n == "d.sql")
    });
    // Several more scans past the settle time.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        snapshot_names(&env),
        ["a.sql", "base1", "c.sql", "d.sql"],
        "the intake protected again what backup had protected"
    );
}

/// Items 11 and 12: bad arguments exit 2 (usage), the same locally and through the daemon: a
/// 1025-byte purpose, a 257-byte name, and (through the daemon) a backup path outside the
/// source's folder. 77 stays for refusals by role (e2e_roles, e2e_socket).
#[test]
fn bad_arguments_exit_2_locally_and_through_the_daemon() {
    let env = env();
    let id = env.backup(&write(&env.incoming.join("a.sql"), b"rows"));
    let purpose = "p".repeat(1025);
    let name = "n".repeat(257);
    let to = env.out.join("a.sql");
    let to_s = to.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "restore",
                &id,
                "--source",
                "emr",
                "--to",
                &to_s,
                "--purpose",
                &purpose,
            ],
            "1025 bytes; at most 1024",
        ),
        (
            vec!["shred", "--snapshot", &id, "--purpose", &purpose, "--yes"],
            "1025 bytes; at most 1024",
        ),
        (vec!["snapshots", "--source", &name], "257 bytes"),
        (vec!["audit", "show", "--actor", &name], "257 bytes"),
    ];
    let check = |how: &str| {
        for (args, says) in &cases {
            let r = env.run(args);
            assert_eq!(r.code, Some(2), "{how}: {r}");
            assert!(r.stderr.contains(says), "{how}: {r}");
            assert!(!to.exists(), "{how}: restored anyway\n{r}");
        }
    };
    check("locally");
    let outside = write(&env.dir.path().join("outside.sql"), b"elsewhere");
    let d = env.daemon();
    check("through the daemon");
    let r = env.run(&["backup", "--source", "emr", outside.to_str().unwrap()]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.stderr.contains("is not inside source `emr`'s folder"),
        "{r}"
    );
    drop(d);
    // Locally, root's backup of any path is allowed (the daemon reads only the source's folder).
    env.backup(&outside);
}

/// Items 13, 14, 15: a shred dry run prints JSON with `--json`; on a held snapshot it refuses as
/// `--yes` would, with the same exit; on a source's newest snapshot it warns that the erasure
/// order overrides the keep-newest guard, and so does the shred itself.
#[test]
fn a_shred_dry_run_says_what_yes_would_do() {
    let env = env();
    let older = env.backup(&write(&env.incoming.join("a.sql"), b"older rows"));
    let newest = env.backup(&write(&env.incoming.join("b.sql"), b"newest rows"));
    let shred = |id: &str, more: &[&str]| {
        let mut args = vec!["shred", "--snapshot", id, "--purpose", "erasure order 28"];
        args.extend_from_slice(more);
        env.run(&args)
    };

    // 13: JSON.
    let r = shred(&older, &["--json"]);
    r.expect_code(4);
    let j = r.json();
    assert_eq!(j["dry_run"], true, "{r}");
    assert_eq!(j["snapshot"], older.as_str(), "{r}");
    assert_eq!(j["newest_of_source"], false, "{r}");
    assert!(j["would"].as_str().unwrap().contains("would crypto-shred"));

    // 15: the newest snapshot of its source.
    let r = shred(&newest, &[]);
    r.expect_code(4);
    assert!(
        r.stderr.contains("newest snapshot of source `emr`")
            && r.stderr.contains("an erasure order overrides that guard"),
        "{r}"
    );
    let r = shred(&newest, &["--json"]);
    r.expect_code(4);
    assert_eq!(r.json()["newest_of_source"], true, "{r}");
    assert!(r.json()["warnings"][0]
        .as_str()
        .unwrap()
        .contains("overrides"));

    // 14: held: the dry run refuses as --yes does, with the same exit and reason.
    env.run(&["hold", "add", &older, "--purpose", "litigation 2026-17"])
        .expect_ok();
    let dry = shred(&older, &[]);
    let yes = shred(&older, &["--yes"]);
    assert_eq!(dry.code, yes.code, "dry run\n{dry}\n--yes\n{yes}");
    assert_eq!(dry.code, Some(1), "{dry}");
    for r in [&dry, &yes] {
        assert!(
            r.stderr.contains("under legal hold (litigation 2026-17)"),
            "{r}"
        );
    }

    // 15: the shred of the newest snapshot goes ahead, and says so.
    let r = shred(&newest, &["--yes"]);
    r.expect_ok();
    assert!(r.stderr.contains("overrides that guard"), "{r}");
    assert_eq!(snapshot_names(&env), ["a.sql"]);
}

/// Access-log entries of snapshot `id`, as (action, outcome).
fn audit_of(env: &CoffreEnv, args: &[&str]) -> Vec<(String, String)> {
    let mut a = vec!["audit", "show", "--json"];
    a.extend_from_slice(args);
    let r = env.run(&a);
    r.expect_ok();
    r.json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array\n{r}"))
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Items 16 and 17: a second hold is refused, naming the first; releasing a snapshot that is
/// not held fails and re-wraps nothing; holds are logged as `hold-add` and `hold-release`, which
/// `audit show --action` finds (and `--action hold` finds both); an unknown action is refused
/// with the list (exit 2).
#[test]
fn holds_are_never_silently_replaced_and_audit_show_finds_them() {
    let env = env();
    let id = env.backup(&write(&env.incoming.join("a.sql"), b"rows"));
    env.run(&["hold", "add", &id, "--purpose", "court order A-1"])
        .expect_ok();
    let r = env.run(&["hold", "add", &id, "--purpose", "court order B-2"]);
    r.expect_code(1);
    assert!(
        r.stderr
            .contains("under legal hold already (court order A-1)"),
        "{r}"
    );
    let snaps = env.run(&["snapshots", "--json"]);
    assert!(!snaps.stdout.contains("B-2"));
    let before = audit_of(&env, &["--snapshot", &id]).len();
    env.run(&["hold", "release", &id, "--purpose", "case closed"])
        .expect_ok();
    let after_release = audit_of(&env, &["--snapshot", &id]).len();
    let r = env.run(&["hold", "release", &id, "--purpose", "again"]);
    r.expect_code(1);
    assert!(r.stderr.contains("is not under legal hold"), "{r}");
    assert_eq!(
        audit_of(&env, &["--snapshot", &id]).len(),
        after_release,
        "releasing an unheld snapshot logged something"
    );
    assert!(after_release > before);
    assert!(audit_of(&env, &["--action", "key-rewrap", "--snapshot", &id]).is_empty());

    let adds = audit_of(&env, &["--action", "hold-add"]);
    assert_eq!(adds.len(), 2, "{adds:?}");
    assert!(adds.iter().all(|(a, _)| a == "hold-add"));
    let releases = audit_of(&env, &["--action", "hold-release"]);
    assert_eq!(releases.len(), 2, "{releases:?}");
    let holds = audit_of(&env, &["--action", "hold"]);
    assert_eq!(holds.len(), 4, "{holds:?}");

    let r = env.run(&["audit", "show", "--action", "holds"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("hold-add") && r.stderr.contains("restore"),
        "the known actions are not listed\n{r}"
    );
}

/// Item 18: a drill's `verify-command` by a relative path is found from the config file's
/// folder, whatever the working folder of the drill (systemd's is `/`).
#[test]
fn a_drills_relative_verify_command_is_found_from_the_config_folder() {
    use std::os::unix::fs::PermissionsExt;
    let env = env_with(
        "",
        "[source.drill]\nverify-command = \"checks/verify.sh {file}\"\n",
    );
    let checks = env.dir.path().join("checks");
    std::fs::create_dir_all(&checks).unwrap();
    let marker = env.dir.path().join("verified");
    let script = write(
        &checks.join("verify.sh"),
        format!(
            "#!/bin/sh\ngrep -q 'drill rows' \"$1\" && echo ok > '{}'\n",
            marker.display()
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.backup(&write(&env.incoming.join("a.sql"), b"drill rows\n"));
    let elsewhere = tempfile::tempdir().unwrap();
    let out = env
        .command(&["drill", "--source", "emr", "--json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("\"verify_exit\": 0"), "{text}");
    assert!(marker.exists(), "the verify command did not run\n{text}");
}

/// `coffre_uploaded_bytes_total{store="NAME"}` in a scrape (0 when absent).
fn uploaded(metrics: &str, store: &str) -> u64 {
    let head = format!("coffre_uploaded_bytes_total{{store=\"{store}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Item 19: `coffre_uploaded_bytes_total` counts the WAL the daemon archives, per store.
#[test]
fn uploaded_bytes_count_archived_wal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = CoffreEnv::new("");
    let stores = local_stores(env.dir.path(), &[("site-a", "a"), ("site-b", "b")]);
    let text = env.config_text(&env.state).replace(
        "[[key-provider]]",
        "[source.pitr]\nwindow = \"7d\"\n\n[[key-provider]]",
    );
    env.write_config(&format!(
        "{text}{stores}\n[status]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let _d = env.daemon();
    let scrape = || http_get(port, "/metrics").unwrap_or_default();
    wait_until("the status server answers", 30, || !scrape().is_empty());
    let before = scrape();
    let name = "000000010000000000000003";
    let mut wal = vec![0u8; 1 << 20];
    for (i, b) in wal.iter_mut().enumerate().skip(64) {
        *b = (i * 7 % 251) as u8;
    }
    crate::common::coffre::stamp_wal_header(&mut wal, name);
    let path = write(&env.dir.path().join(name), &wal);
    let r = env.run(&[
        "wal-push",
        "--source",
        "emr",
        path.to_str().unwrap(),
        "--json",
    ]);
    r.expect_ok();
    let after = scrape();
    for store in ["site-a", "site-b"] {
        let grew = uploaded(&after, store) - uploaded(&before, store);
        // The segment compresses well: its sealed copy is a few hundred bytes.
        assert!(
            grew > 100,
            "store {store}: the WAL push added {grew} bytes\n{after}"
        );
    }
}
