//! The install path as docs/operations.md writes it (issue 13, part 3): `keys init --to` for a master key
//! that is a systemd credential, `check-config` checking this host (files, credentials, source
//! folders) unless `--portable`, commands that create no state where they should not, and the
//! messages a newcomer meets (mistyped names, unreadable config, empty lists, drills without a
//! verify command).

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::coffre::{local_stores, CoffreEnv};

/// Two local stores under the environment's folder.
fn stores(d: &Path) -> String {
    local_stores(d, &[("site-a", "a"), ("site-b", "b")])
}

fn local_env() -> CoffreEnv {
    let env = CoffreEnv::new("");
    env.write_config(&format!(
        "{}{}",
        env.config_text(&env.state),
        stores(env.dir.path())
    ));
    env
}

/// `--config` text with the file provider's master key as a systemd credential.
fn credential_config(env: &CoffreEnv, credential: &str) -> String {
    env.config_text(&env.state)
        .replace(
            &format!("master-key = \"{}\"\n", env.master_key.display()),
            &format!("master-key-credential = \"{credential}\"\n"),
        )
        .replace("create-master-key = true\n", "")
        + &stores(env.dir.path())
}

#[test]
fn keys_init_to_writes_one_new_master_key_and_never_overwrites() {
    let env = local_env();
    let creds = env.dir.path().join("credentials");
    let to = creds.join("master.key");
    let to_s = to.to_str().unwrap();

    let r = env.run(&["keys", "init", "--to", to_s]);
    r.expect_code(1);
    assert!(
        r.error_text().contains("does not exist: create it first"),
        "{r}"
    );

    fs::create_dir(&creds).unwrap();
    let r = env.run(&["keys", "init", "--to", to_s]);
    r.expect_ok();
    assert!(r.stdout.contains("created master key"), "{r}");
    let meta = fs::metadata(&to).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = fs::read_to_string(&to).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().chars().all(|c| c.is_ascii_hexdigit()));
    // The key is never printed.
    assert!(!r.all().contains(key.trim()));

    let r = env.run(&["keys", "init", "--to", to_s]);
    r.expect_code(1);
    assert!(r.error_text().contains("already exists"), "{r}");
    assert!(r.error_text().contains("never overwrites"), "{r}");
    assert_eq!(fs::read_to_string(&to).unwrap(), key);

    // No config was needed and no state was created.
    assert!(!env.state.exists());
    assert!(!env.master_key.exists());
    assert!(!env.dir.path().join("stores").exists());
}

#[test]
fn keys_init_under_a_credential_config_says_to_use_keys_init_to() {
    let env = local_env();
    env.write_config(&credential_config(&env, "coffre_master-e2e-absent.key"));
    let r = env.run(&["keys", "init"]);
    r.expect_code(1);
    let e = r.error_text();
    assert!(
        e.contains("coffre keys init --to /etc/coffre/credentials/master-e2e-absent.key"),
        "{r}"
    );
    assert!(e.contains("key-provider local"), "{r}");
    assert!(!env.state.exists(), "{r}");

    env.write_config(&credential_config(&env, "master.key"));
    let r = env.run(&["keys", "init"]);
    r.expect_code(1);
    assert!(
        r.error_text()
            .contains("is not a credential the coffre unit loads"),
        "{r}"
    );
    assert!(r.error_text().contains("coffre_master.key"), "{r}");
}

/// Issue 13, 3.3: check-config checks this host for the service's account: source folders,
/// secret files and credentials (present, owner, mode, readable); `--portable` skips that for a
/// config meant for another host.
#[test]
fn check_config_checks_files_credentials_and_source_folders_on_this_host() {
    let env = local_env();
    let d = env.dir.path();
    let token = d.join("token");
    let text = format!(
        "{}[status]\ntoken-file = \"{}\"\n[[key-provider]]\nname = \"hsm\"\nkind = \"pkcs11\"\nmodule = \"{}/no-such-module.so\"\ntoken-label = \"t\"\npin-file = \"/run/credentials/coffre.service/coffre_e2e-absent-pin\"\n",
        env.config_text(&env.state).replace("[[key-provider]]", "[[source]]\nname = \"base\"\npath = \"/nonexistent/e2e-base\"\n[[key-provider]]"),
        token.display(),
        d.display(),
    ) + &stores(d);
    env.write_config(&text);

    let r = env.run(&["check-config"]);
    r.expect_code(1);
    let e = r.error_text();
    for needle in [
        "source[1].path: /nonexistent/e2e-base does not exist: coffre never creates a source folder",
        &format!("status.token-file: {} does not exist", token.display()),
        "key-provider[1].module:",
        "key-provider[1].pin-file: the credential `coffre_e2e-absent-pin` comes from /etc/coffre/credentials/e2e-absent-pin, which does not exist",
    ] {
        assert!(e.contains(needle), "no `{needle}` in:\n{r}");
    }
    // The master key with create-master-key is made at the first start: not a problem.
    assert!(!e.contains("key-provider[0]"), "{r}");
    assert!(!e.contains("source[0]"), "{r}");

    // For another host: the config as data only.
    let r = env.run(&["check-config", "--portable"]);
    r.expect_ok();
    assert!(
        r.stdout.contains(
            "--portable: the files, credentials and source folders it names were not checked"
        ),
        "{r}"
    );

    // As the service's account: a root-only source folder or token file is not readable by it.
    fs::write(&token, "t0k3n\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&env.incoming, fs::Permissions::from_mode(0o700)).unwrap();
    let only_local = env.config_text(&env.state)
        + &format!("[status]\ntoken-file = \"{}\"\n", token.display())
        + &stores(d);
    env.write_config(&only_local);
    let r = env.run(&["check-config"]);
    r.expect_ok();
    assert!(
        r.stdout
            .contains("every file, credential and source folder it names is in place"),
        "{r}"
    );
    if nix::unistd::geteuid().is_root() {
        let r = env.run(&["check-config", "--user", "nobody"]);
        r.expect_code(1);
        let e = r.error_text();
        assert!(
            e.contains(&format!(
                "source[0].path: {} is not readable by nobody",
                env.incoming.display()
            )),
            "{r}"
        );
        assert!(
            e.contains(&format!(
                "status.token-file: {} is not readable by nobody",
                token.display()
            )),
            "{r}"
        );
    }
    let r = env.run(&["check-config", "--user", "no-such-user-e2e"]);
    r.expect_code(1);
    assert!(
        r.error_text()
            .contains("there is no user `no-such-user-e2e` on this host"),
        "{r}"
    );
    // Nothing was created by any of it.
    assert!(!env.state.exists());
    assert!(!env.master_key.exists());
}

/// Issue 13, 3.2: one pass reports every problem: each syntax and type error with its line and
/// key path, then the validation problems of the rest and those of this host.
#[test]
fn check_config_reports_every_problem_in_one_pass() {
    let env = local_env();
    let good = env.config_text(&env.state) + &stores(env.dir.path());
    let bad = good
        .replace("[pipeline]\n", "colour = 1\n[pipeline]\n")
        .replace("segment-size = \"64KiB\"", "segment-size = ")
        .replace("zstd-threads = 1", "zstd-threads = \"one\"")
        .replace("min-sites = 2", "min-sites = 3")
        .replacen(
            "jurisdiction = \"CA-QC\"",
            "jurisdiction = \"CA-QC\"\ntls-verify = yes",
            1,
        )
        .replace(&env.incoming.display().to_string(), "/nonexistent/e2e-in");
    env.write_config(&bad);
    let line = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let r = env.run(&["check-config"]);
    r.expect_code(1);
    let e = r.error_text();
    for needle in [
        format!("pipeline.segment-size (line {})", line("segment-size = ")),
        format!("store[0].tls-verify (line {})", line("tls-verify")),
        format!("colour (line {}): unknown field `colour`", line("colour")),
        format!(
            "pipeline.zstd-threads (line {}): invalid type",
            line("zstd-threads")
        ),
        "replication.min-sites: 2 distinct site(s)".to_string(),
        "source[0].path: /nonexistent/e2e-in does not exist".to_string(),
    ] {
        assert!(e.contains(&needle), "no `{needle}` in:\n{r}");
    }
    assert!(e.contains("has 6 problem(s)"), "{r}");
}

/// Issue 13, 3.15: the embedded default's relative paths are taken from the config file's
/// folder, so running from another folder neither creates state there nor splits the state in
/// two: the same file names the same catalog, stores and master key wherever coffre is started.
#[test]
fn relative_paths_are_taken_from_the_config_folder_not_the_working_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clone = tempfile::tempdir().unwrap();
    fs::create_dir_all(clone.path().join("config")).unwrap();
    fs::create_dir_all(clone.path().join("var/incoming")).unwrap();
    // The embedded default, in a copy of the repository's layout.
    let config = clone.path().join("config/coffre.toml");
    fs::copy(root.join("config/coffre.toml"), &config).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |cwd: &Path, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coffre"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(elsewhere.path(), &["check-config"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = run(elsewhere.path(), &["keys", "init"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(clone.path().join("var/keys/master.key").is_file());
    assert!(clone.path().join("var/state").is_dir());
    assert_eq!(
        fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing is created in the working directory"
    );
    // From the clone's root and from its config folder: the same state (one master key).
    let key = fs::read(clone.path().join("var/keys/master.key")).unwrap();
    for cwd in [clone.path(), &clone.path().join("config")] {
        let (code, out, err) = run(cwd, &["snapshots"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
    }
    assert_eq!(
        fs::read(clone.path().join("var/keys/master.key")).unwrap(),
        key
    );
    assert!(!clone.path().join("config/var").exists());
    // The repository's own source folder exists in a fresh clone (coffre never creates one).
    assert!(root.join("var/incoming/.gitkeep").is_file());
}

/// Issue 13, 3.15: a mistyped source, store or snapshot is answered with the names that exist,
/// never with "run catalog rebuild"; an unreadable config says who may read it.
#[test]
fn mistyped_names_are_answered_with_the_configured_ones() {
    let env = local_env();
    fs::write(env.incoming.join("a.sql"), b"one small dump\n").unwrap();
    let id = env.backup(&env.incoming.join("a.sql"));
    let to = env.out.join("r");
    let to_s = to.to_str().unwrap();

    let r = env.run(&[
        "backup",
        "--source",
        "emx",
        env.incoming.join("a.sql").to_str().unwrap(),
    ]);
    r.expect_failure();
    assert!(r.stderr.contains("source `emx` is not configured"), "{r}");
    assert!(
        r.stderr.contains("`emr`"),
        "the configured source is named\n{r}"
    );

    let r = env.run(&[
        "restore",
        "latest",
        "--source",
        "emx",
        "--to",
        to_s,
        "--purpose",
        "t",
    ]);
    r.expect_failure();
    assert!(
        r.stderr.contains("source `emx` is not configured")
            && r.stderr.contains("the configured sources are `emr`"),
        "{r}"
    );
    assert!(!r.stderr.contains("catalog rebuild"), "{r}");

    let r = env.restore(&id, &to, Some("site-c"));
    r.expect_failure();
    assert!(
        r.stderr.contains(
            "store `site-c` is not configured; the configured stores are `site-a`, `site-b`"
        ),
        "{r}"
    );

    let r = env.run(&["drill", "--source", "emr", "--store", "site-c"]);
    r.expect_failure();
    assert!(r.stderr.contains("`site-a`, `site-b`"), "{r}");
    let r = env.run(&["drill", "--source", "emx"]);
    r.expect_failure();
    assert!(r.stderr.contains("the configured sources are `emr`"), "{r}");
    assert!(!to.exists(), "nothing was restored");

    // A config the account may not read: who may, and how operators go on without it.
    let open = tempfile::Builder::new()
        .prefix("coffre-perm-")
        .tempdir()
        .unwrap();
    fs::set_permissions(open.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let secret = open.path().join("coffre.toml");
    fs::copy(&env.config, &secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let root = std::process::Command::new("id").arg("-u").output().unwrap();
    let mut cmd = if String::from_utf8_lossy(&root.stdout).trim() == "0" {
        // Root reads any file: ask as `nobody`.
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--"])
            .arg(common::coffre::coffre_bin());
        c
    } else {
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
        std::process::Command::new(common::coffre::coffre_bin())
    };
    let out = cmd
        .env("COFFRE_SOCKET", open.path().join("no.sock"))
        .args(["--config", secret.to_str().unwrap(), "snapshots"])
        .current_dir(open.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("may not read it"), "{err}");
    assert!(err.contains("run the command as root"), "{err}");
    assert!(!err.contains("Pass --config"), "{err}");
}

/// Issue 13, 3.16: empty lists say they are empty, `snapshots` shows each snapshot's state in
/// aligned columns, and a drill with nothing to verify says so.
#[test]
fn empty_outputs_say_so_and_snapshots_show_their_state() {
    let env = local_env();
    // Listing creates no master key (issue 28 item 8): `keys init` does, as on a new install.
    env.run(&["keys", "init"]).expect_ok();
    let r = env.run(&["snapshots"]);
    r.expect_ok();
    assert!(r.stdout.contains("no snapshots in the catalog yet"), "{r}");
    let r = env.run(&["shred", "--records"]);
    r.expect_ok();
    assert!(
        r.stdout
            .contains("no destruction records: nothing has been crypto-shredded"),
        "{r}"
    );
    let r = env.run(&["retention", "run"]);
    r.expect_ok();
    assert!(r.stdout.contains("nothing was due"), "{r}");

    fs::write(env.incoming.join("a.sql"), b"one small dump\n").unwrap();
    let a = env.backup(&env.incoming.join("a.sql"));
    fs::write(env.incoming.join("b.sql"), vec![b'x'; 123_456]).unwrap();
    let b = env.backup(&env.incoming.join("b.sql"));
    env.run(&["hold", "add", &b, "--purpose", "litigation 12"])
        .expect_ok();

    let r = env.run(&["retention", "run"]);
    r.expect_ok();
    assert!(
        r.stdout
            .contains("nothing was due: no epoch key has reached its expiry; the next is epoch"),
        "{r}"
    );

    // A third store configured after the backups: both snapshots lack a copy there.
    env.write_config(&format!(
        "{}{}{}",
        env.config_text(&env.state),
        stores(env.dir.path()),
        local_stores(env.dir.path(), &[("site-c", "c")])
    ));
    let r = env.run(&["snapshots"]);
    r.expect_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r}");
    let head = lines[0];
    assert!(head.starts_with("id "), "{r}");
    let col = |name: &str| {
        head.find(name)
            .unwrap_or_else(|| panic!("no {name} column\n{r}"))
    };
    let (state_col, stores_col) = (col("state"), col("stores"));
    let row_a = lines.iter().find(|l| l.starts_with(&a)).unwrap();
    let row_b = lines.iter().find(|l| l.starts_with(&b)).unwrap();
    for row in [row_a, row_b] {
        assert_eq!(
            &row[stores_col..],
            "site-a,site-b",
            "stores column aligned\n{r}"
        );
        // `size` is right-aligned: each row's size ends where the header's does.
        let size_end = col("size") + "size".len();
        assert!(
            row[..size_end].ends_with(|c: char| c.is_ascii_digit()),
            "{r}"
        );
    }
    assert!(row_a[state_col..].starts_with("degraded 2/3 "), "{r}");
    assert!(row_b[state_col..].starts_with("degraded 2/3, held "), "{r}");
    let r = env.run(&["snapshots", "--json"]);
    let v = r.json();
    let states: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{r}");
    assert!(states.contains(&"degraded 2/3, held"), "{r}");

    // Back to two stores: protected.
    env.write_config(&format!(
        "{}{}",
        env.config_text(&env.state),
        stores(env.dir.path())
    ));
    let r = env.run(&["snapshots", "--source", "emr"]);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&a) && l.contains("  protected  ")),
        "{r}"
    );

    // A drill without a verify command: the digest matched, and it says nothing more was checked.
    let r = env.run(&[
        "drill",
        "--source",
        "emr",
        "--store",
        "site-a",
        "--snapshot",
        &a,
    ]);
    r.expect_ok();
    assert!(r.stdout.contains(": OK ("), "{r}");
    assert!(
        r.stderr
            .contains("warning: source `emr` has no [source.drill] verify-command"),
        "{r}"
    );
    // Once something is shredded, the records list it instead.
    env.run(&["shred", "--snapshot", &a, "--purpose", "erasure 3", "--yes"])
        .expect_ok();
    let r = env.run(&["shred", "--records"]);
    r.expect_ok();
    assert!(!r.stdout.contains("no destruction records"), "{r}");
    assert!(r.stdout.contains("1 snapshot(s)"), "{r}");
}
