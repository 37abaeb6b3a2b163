//! Point-in-time recovery against a real PostgreSQL 15 (issue 14): the primary archives its WAL
//! with `archive_command = 'coffre wal-push …'` through the running daemon, a base backup lands
//! in the watched folder and is protected by the daemon, writes go on with known times, and
//! `coffre restore --target-time` / `--target-latest` bring the database back: to a moment
//! between two writes (the first present, the second absent) and to the end of the archive
//! (both present). The restored server fetches its WAL with `coffre wal-fetch` as user
//! `postgres`, through the daemon's socket. No canary byte reaches a store or the daemon's log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::coffre::{contains, files_under, local_stores};
use crate::common::coffre::{s3_store, S3_AK_ENV, S3_SK_ENV};
use crate::common::config::ConfigBuilder;
use crate::common::daemon::{coffre_command, wait_until, OnDrop, TestDaemon};
use crate::common::free_port;
use crate::common::servers::{Postgres, S3Server};

const BIN: &str = env!("CARGO_BIN_EXE_coffre");
const CANARY: &str = "CANARY-PITR-Gagnon-RAMQ-GAGN87654321";

/// A coffre daemon as root on a temp folder with two local stores, source `emr` watching `in/`
/// (`complete = "marker"`: a pg_basebackup is complete once its `backup_manifest` is there) and
/// archiving WAL; operators are the group `postgres`, so PostgreSQL's archive and restore
/// commands reach it through the socket.
pub(crate) struct Host {
    /// First, so that it goes (killed) before its folder.
    daemon: TestDaemon,
    _tmp: tempfile::TempDir,
    pub(crate) d: PathBuf,
    config: PathBuf,
    pub(crate) socket: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Host {
    /// Two local stores, `a` and `b`.
    pub(crate) fn start() -> Host {
        // A point-in-time drill: PostgreSQL replays as user postgres; the verify command checks
        // that the copy was promoted and shut down cleanly.
        let controldata = Postgres::pg_bin_dir().join("pg_controldata");
        let drill = format!(
            "\n[source.drill]\npitr = true\npg-user = \"postgres\"\nverify-command = \"{} {{dir}} | grep -q 'cluster state: *shut down$'\"\n",
            controldata.display()
        );
        Host::start_with(|d| local_stores(d, &[("a", "a"), ("b", "b")]), &[], &drill)
    }

    /// `stores(d)` gives the `[[store]]` tables; `envs` go to the daemon; `pitr` are more
    /// lines of `[source.pitr]`.
    fn start_with(stores: impl Fn(&Path) -> String, envs: &[(&str, &str)], pitr: &str) -> Host {
        let tmp = tempfile::Builder::new()
            .prefix("coffre-pitr-")
            .tempdir()
            .unwrap();
        let d = tmp.path().to_path_buf();
        // User postgres must reach the socket in d/run.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(d.join("in")).unwrap();
        let port = free_port();
        let config = ConfigBuilder::new(&d)
            .table(
                "replication",
                "min-sites = 2\nretries = 1\nbackoff = \"100ms\"",
            )
            .status(port)
            .audit("operators-group = \"postgres\"")
            .source("emr", &d.join("in"), "complete = \"marker\"")
            .pitr("7d", &format!("archiver = \"postgres\"\n{pitr}\n"))
            .stores_text(&stores(&d))
            .file_keys()
            .write(&d.join("coffre.toml"));
        let log = d.join("daemon.log");
        let socket = d.join("run/coffre.sock");
        let daemon = spawn_daemon(&config, &d, &log, envs);
        Host {
            _tmp: tmp,
            d,
            config,
            socket,
            log,
            port,
            daemon,
        }
    }

    /// The archive command PostgreSQL runs (as user postgres), through the daemon's socket.
    pub(crate) fn archive_command(&self) -> String {
        format!(
            "COFFRE_SOCKET={} {BIN} wal-push --source emr %p",
            self.socket.display()
        )
    }

    /// `coffre wal-push --source emr PATH` through the daemon's socket only, as PostgreSQL runs it.
    fn wal_push(&self, path: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.args(["wal-push", "--source", "emr"])
            .arg(path)
            .env("COFFRE_SOCKET", &self.socket)
            .env("COFFRE_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// coffre as root with the daemon's config (the daemon answers through its socket).
    pub(crate) fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .env("COFFRE_LOG", "warn")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// GET a path of the status endpoint.
    pub(crate) fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until a snapshot of the source is in both stores; returns its id.
    pub(crate) fn wait_protected(&self) -> String {
        self.wait_protected_n(1).remove(0)
    }

    /// The ids of the snapshots committed in both stores, once there are `n` (60 s at most).
    pub(crate) fn wait_protected_n(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        crate::common::daemon::wait_until(
            &format!("{n} snapshot(s) protected in both stores"),
            60,
            || {
                let (ok, out, err) = self.run(&["snapshots", "--json"]);
                assert!(ok, "{err}");
                let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
                ids = list
                    .iter()
                    .filter(|s| s["stores"].as_array().is_some_and(|a| a.len() == 2))
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect();
                ids.len() >= n
            },
        );
        ids
    }

    /// `coffre restore --source emr --to TO TARGET…` through the socket, as root.
    pub(crate) fn pitr_restore(&self, to: &Path, target: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["restore", "--source", "emr", "--to"])
            .arg(to)
            .args(target)
            .args(["--purpose", "PITR e2e test"])
            .env("COFFRE_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "restore {target:?} failed: {text}");
        text
    }
}

/// Start the daemon (its log appended to `log`) and wait for its control socket.
fn spawn_daemon(config: &Path, d: &Path, log: &Path, envs: &[(&str, &str)]) -> TestDaemon {
    let socket = d.join("run/coffre.sock");
    // A daemon killed with -9 leaves its socket file behind.
    let _ = std::fs::remove_file(&socket);
    let mut c = coffre_command(config);
    c.args(["--log-format", "text"])
        .envs(envs.iter().copied())
        .env("RUNTIME_DIRECTORY", d.join("run"))
        .env("COFFRE_LOG", "info");
    TestDaemon::spawn_appending(c, log)
        .on_drop(OnDrop::Kill)
        .wait_socket_file(&socket, 30)
}

/// (last archived WAL file, failed attempts) from pg_stat_archiver.
fn archiver(pg: &Postgres) -> (String, u64) {
    let row = pg.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') || '|' || failed_count FROM pg_stat_archiver",
    );
    let (last, failed) = row.trim().split_once('|').unwrap_or(("", ""));
    (last.to_string(), failed.parse().unwrap_or(0))
}

/// Wait (up to 120 s) until `pg` has archived `walfile` or a later one.
pub(crate) fn wait_archived(pg: &Postgres, walfile: &str) {
    let t = Instant::now();
    loop {
        let last = pg.psql(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') || '|' || failed_count FROM pg_stat_archiver",
        );
        let (last, _failed) = last.trim().split_once('|').unwrap_or(("", ""));
        // WAL file names of one timeline sort in LSN order.
        if last.len() == 24 && last >= walfile {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "PostgreSQL did not archive {walfile} in 120 s (pg_stat_archiver: {last}); its log:\n{}",
            std::fs::read_to_string(pg.log_path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start PostgreSQL on a restored base backup and wait until recovery has ended (promoted).
fn replay(dir: &Path) -> Postgres {
    replay_with(dir, &[])
}

fn replay_with(dir: &Path, settings: &[(&str, &str)]) -> Postgres {
    let pg = Postgres::start_from_with(dir, settings);
    let t = Instant::now();
    while pg.psql("postgres", "SELECT pg_is_in_recovery()").trim() != "f" {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "recovery did not end in 120 s; PostgreSQL's log:\n{}",
            std::fs::read_to_string(pg.log_path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    pg
}

fn notes(pg: &Postgres) -> Vec<String> {
    pg.psql("emr", "SELECT note FROM notes ORDER BY id")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_database_archived_through_coffre_comes_back_to_a_moment_between_two_writes_and_to_the_end() {
    let host = Host::start();
    let primary = Postgres::start_with(&[
        ("archive_mode", "on"),
        ("archive_command", &host.archive_command()),
    ]);
    primary.create_db("emr");
    primary.psql(
        "emr",
        "CREATE TABLE notes (id serial PRIMARY KEY, note text NOT NULL); \
         CREATE TABLE patients (id serial PRIMARY KEY, name text NOT NULL)",
    );
    primary.psql(
        "emr",
        &format!("INSERT INTO patients (name) VALUES ('{CANARY}')"),
    );
    // The base backup lands in the watched folder; the daemon protects it once its
    // backup_manifest is there.
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
    host.wait_protected();

    primary.psql("emr", "INSERT INTO notes (note) VALUES ('first')");
    std::thread::sleep(Duration::from_millis(1200));
    let target = primary
        .psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(1200));
    primary.psql("emr", "INSERT INTO notes (note) VALUES ('second')");
    let last = primary
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    wait_archived(&primary, &last);

    // The status knows the archive: files, the newest, the window's start; no personal data.
    let (ok, out, err) = host.run(&["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let wal = &status["sources"][0]["wal"];
    assert!(wal["files"].as_u64().unwrap_or(0) >= 2, "{wal}");
    assert!(
        wal["last_archived"]
            .as_str()
            .is_some_and(|n| n >= last.as_str()),
        "{wal} (last switched: {last})"
    );
    assert!(wal["window_start"].is_string(), "{wal}");
    assert!(
        wal["archive_age_seconds"]
            .as_f64()
            .is_some_and(|a| a < 600.0),
        "{wal}"
    );
    let metrics = host.http_get("/metrics");
    for m in [
        "coffre_wal_last_archived_timestamp_seconds{source=\"emr\"}",
        "coffre_wal_archive_age_seconds{source=\"emr\"}",
        "coffre_pitr_window_start_timestamp_seconds{source=\"emr\"}",
        "coffre_pitr_window_seconds{source=\"emr\"} 604800",
    ] {
        assert!(metrics.contains(m), "{m} not in /metrics:\n{metrics}");
    }
    assert!(!metrics.contains(CANARY) && !out.contains(CANARY));

    // To the moment between the two writes (started later, as the new primary).
    let at_target = host.d.join("pitr-time");
    let said = host.pitr_restore(&at_target, &["--target-time", &target]);
    assert!(said.contains("point-in-time recovery"), "{said}");

    // The same, replayed by coffre as an operator (--replay; the archiver `postgres` may not
    // restore): the folder it leaves is a promoted database, at the target.
    let operator = crate::common::users::TempUser::operator();
    let owned = host.d.join("pg");
    std::fs::create_dir_all(&owned).unwrap();
    let st = Command::new("chown")
        .arg(&operator.name)
        .arg(&owned)
        .status()
        .unwrap();
    assert!(st.success());
    let to = owned.join("replayed");
    let out = Command::new("runuser")
        .args(["-u", &operator.name, "--", "env"])
        .arg(format!("COFFRE_SOCKET={}", host.socket.display()))
        .arg(BIN)
        .args(["restore", "--source", "emr", "--to"])
        .arg(&to)
        .args([
            "--target-time",
            &target,
            "--replay",
            "--purpose",
            "PITR e2e replay",
        ])
        .current_dir(&owned)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restore --replay: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("replayed to time"), "{said}");
    assert!(!to.join("recovery.signal").exists(), "not promoted");
    // Handed over to the database's account, as an operator would.
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success());
    let pg = Postgres::start_from(&to);
    assert_eq!(
        pg.psql("postgres", "SELECT pg_is_in_recovery()").trim(),
        "f"
    );
    assert_eq!(
        notes(&pg),
        ["first"],
        "replayed to {target}; restore said: {said}\n--- coffre-replay.log:\n{}\n--- the copy's log:\n{}",
        std::fs::read_to_string(to.join("coffre-replay.log")).unwrap_or_default(),
        std::fs::read_to_string(pg.log_path()).unwrap_or_default()
    );
    drop(pg);
    // As root, --replay is refused before anything is restored.
    let refused = host.d.join("as-root");
    let out = Command::new(BIN)
        .args(["restore", "--source", "emr", "--to"])
        .arg(&refused)
        .args([
            "--target-latest",
            "--replay",
            "--purpose",
            "PITR e2e replay",
        ])
        .env("COFFRE_SOCKET", &host.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never runs as root"), "{err}");
    assert!(!refused.exists());

    // To the end of the archive.
    let to = host.d.join("pitr-latest");
    host.pitr_restore(&to, &["--target-latest"]);
    let pg = replay(&to);
    assert_eq!(notes(&pg), ["first", "second"]);
    drop(pg);

    // The copy restored to the target becomes the primary: it promotes onto timeline 2,
    // archives its history file and its new WAL into the same source, and a restore to the
    // latest follows the new timeline (first and third, not second).
    let primary_wal = primary.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    drop(primary);
    let archive = host.archive_command();
    let pg = replay_with(
        &at_target,
        &[("archive_mode", "on"), ("archive_command", &archive)],
    );
    assert_eq!(notes(&pg), ["first"], "restored to {target}");
    assert_eq!(
        pg.psql("emr", "SELECT count(*) FROM patients").trim(),
        "1",
        "the row written before the base backup"
    );
    let timeline = pg.psql(
        "postgres",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    );
    assert_eq!(timeline.trim(), "2", "promoted onto a new timeline");
    pg.psql("emr", "INSERT INTO notes (note) VALUES ('third')");
    let last2 = pg
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    assert!(last2.starts_with("00000002"), "{last2}");
    wait_archived(&pg, &last2);
    drop(pg);
    let to = host.d.join("pitr-timeline-2");
    host.pitr_restore(&to, &["--target-latest"]);
    let pg = replay(&to);
    assert_eq!(notes(&pg), ["first", "third"], "the latest timeline");
    drop(pg);
    for f in ["00000002.history", last2.as_str()] {
        let dir = host.d.join(format!("stores/a/coffre/wal/emr/00000002/{f}"));
        assert!(dir.join("manifest.json").is_file(), "{f} not archived");
    }
    // Both timelines continuous: verify finds no gap.
    let (ok, out, err) = host.run(&["verify"]);
    assert!(ok, "verify: {out}{err} (old primary was at {primary_wal})");

    // PostgreSQL's fetches are in the access log under the restore's purpose.
    let (ok, out, err) = host.run(&["audit", "show", "--json", "--action", "wal-fetch"]);
    assert!(ok, "{err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let outcome = |e: &serde_json::Value| e["outcome"].as_str().unwrap_or("").to_string();
    // One entry per recovery session (four restores were replayed), not one per WAL file.
    let started: Vec<String> = entries
        .iter()
        .map(outcome)
        .filter(|o| o.starts_with("started: recovery session"))
        .collect();
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(
        entries
            .iter()
            .all(|e| outcome(e).starts_with("started: recovery session")),
        "a per-file entry for a session's fetch: {out}"
    );
    // No caller text in restore_command (issue 27, N1): each session carries the purpose of
    // the restore that opened it, from coffre's own record.
    assert!(
        entries.iter().all(|e| e["purpose"]
            .as_str()
            .is_some_and(|p| p.starts_with("PITR e2e"))),
        "{out}"
    );
    let (ok, out, err) = host.run(&["audit", "show", "--json", "--action", "restore"]);
    assert!(ok, "{err}");
    assert!(out.contains("PITR e2e replay"), "{out}");

    // The drill: a random point of the archive, replayed from each store's base backup.
    let (ok, out, err) = host.run(&["drill", "--source", "emr", "--json"]);
    assert!(ok, "drill: {out}{err}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(reports.len(), 2, "{out}");
    for r in &reports {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["stage"], "done", "{r}");
        assert!(
            r["target"].as_str().is_some_and(|t| t.starts_with("lsn ")),
            "{r}"
        );
        assert!(r["replay_seconds"].as_f64().is_some_and(|s| s > 0.0), "{r}");
        assert!(
            r["rto_seconds"].as_f64().unwrap_or(0.0) >= r["replay_seconds"].as_f64().unwrap_or(1.0),
            "{r}"
        );
        assert_eq!(r["scratch_wiped"], true, "{r}");
        // The replay's fetches are counted, and served within the replay's own time.
        let fetched = r["wal_fetched"].as_u64().unwrap_or(0);
        assert!(fetched >= 1, "the drill fetched no WAL: {r}");
        assert!(
            r["wal_prefetch_hits"].as_u64().unwrap_or(u64::MAX) <= fetched,
            "{r}"
        );
        let fetch_s = r["fetch_seconds"].as_f64().unwrap_or(-1.0);
        assert!(
            (0.0..=r["replay_seconds"].as_f64().unwrap_or(0.0)).contains(&fetch_s),
            "{r}"
        );
    }
    // Each drill's recovery session read its own store only (`wal-fetch --store`).
    let (ok, out, err) = host.run(&["audit", "show", "--json", "--action", "wal-fetch"]);
    assert!(ok, "{err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for r in &reports {
        let drill = r["drill"].as_str().unwrap_or("?");
        let session = entries
            .iter()
            .find(|e| {
                e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(&format!("started: recovery session {drill},")))
            })
            .unwrap_or_else(|| panic!("no recovery session of drill {drill}: {out}"));
        assert_eq!(session["target"]["store"], r["store"], "{session}");
    }
    let metrics = host.http_get("/metrics");
    assert!(
        metrics.contains("coffre_wal_fetches_total ")
            && metrics.contains("coffre_wal_fetch_seconds_total "),
        "{metrics}"
    );

    // The restores' WAL came from the prefetch once a session was under way.
    let metrics = host.http_get("/metrics");
    let hits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("coffre_wal_prefetch_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no coffre_wal_prefetch_hits_total in:\n{metrics}"));
    assert!(hits >= 1.0, "no WAL file served from the prefetch ({hits})");

    // Nothing readable in the stores or the daemon's log.
    for f in files_under(&host.d.join("stores")) {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !contains(&b, CANARY.as_bytes()),
            "canary in {}",
            f.display()
        );
    }
    assert!(
        !host.log_text().contains(CANARY),
        "canary in the daemon log"
    );
}

#[test]
fn with_a_store_down_postgresql_keeps_the_wal_and_retries_until_both_sites_have_it() {
    let mut s3 = S3Server::start();
    let table = s3_store("s3", "s3-site", &s3);
    let host = Host::start_with(
        |d| format!("{}{table}", local_stores(d, &[("a", "a")])),
        &[(S3_AK_ENV, s3.access_key()), (S3_SK_ENV, s3.secret_key())],
        "",
    );
    let primary = Postgres::start_with(&[
        ("archive_mode", "on"),
        ("archive_command", &host.archive_command()),
    ]);
    primary.create_db("emr");
    primary.psql(
        "emr",
        &format!("CREATE TABLE patients (name text); INSERT INTO patients VALUES ('{CANARY}')"),
    );
    let first = primary
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    wait_archived(&primary, &first);
    let (_, failed_before) = archiver(&primary);

    // S3 down: the next segment is refused (one site only), PostgreSQL keeps it and retries.
    s3.stop();
    primary.psql("emr", "INSERT INTO patients VALUES ('during the outage')");
    let held = primary
        .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_string();
    let t = Instant::now();
    while archiver(&primary).1 < failed_before + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "PostgreSQL never saw archive_command fail: {:?}",
            archiver(&primary)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (last, _) = archiver(&primary);
    assert!(
        last < held,
        "{held} acknowledged while S3 was down (last archived {last})"
    );
    let ready = primary
        .data_dir()
        .join(format!("pg_wal/archive_status/{held}.ready"));
    assert!(
        ready.exists(),
        "PostgreSQL no longer holds {held} for archiving"
    );
    assert!(primary.data_dir().join("pg_wal").join(&held).exists());

    // S3 back: the retry succeeds and both sites have the segment.
    s3.restart();
    wait_archived(&primary, &held);
    let at_a = host.d.join(format!(
        "stores/a/coffre/wal/emr/00000001/{held}/manifest.json"
    ));
    assert!(at_a.is_file());
    let (ok, out, err) = host.run(&["verify", "--json"]);
    assert!(ok, "verify after the outage: {out}{err}");
    let fetched = host.d.join("fetched");
    let (ok, _, err) = host.run(&[
        "wal-fetch",
        "--source",
        "emr",
        &held,
        fetched.to_str().unwrap(),
        "--purpose",
        "check the segment archived after the outage",
    ]);
    assert!(ok, "{err}");
    let original = std::fs::read(primary.data_dir().join("pg_wal").join(&held));
    if let Ok(original) = original {
        // PostgreSQL may have recycled the segment since; when it is still there, same bytes.
        assert!(
            std::fs::read(&fetched).unwrap() == original,
            "fetched bytes differ"
        );
    }
}

/// A WAL-sized file of bytes zstd cannot shrink (so sealing and uploading take a while), with
/// the canary inside.
fn incompressible(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[4096..4096 + CANARY.len()].copy_from_slice(CANARY.as_bytes());
    let name = path.file_name().unwrap().to_string_lossy();
    crate::common::coffre::stamp_wal_header(&mut v, &name);
    std::fs::write(path, &v).unwrap();
    v
}

#[test]
fn a_push_cut_by_kill_9_of_the_daemon_is_not_acknowledged_and_the_retry_archives_it() {
    let mut host = Host::start();
    let pg_wal = host.d.join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    // 32 MiB: a WAL segment of `initdb --wal-segsize=32`.
    let name = "000000010000000000000001";
    let seg = pg_wal.join(name);
    let bytes = incompressible(&seg, 32 << 20, 42);
    let push = |host: &Host| {
        host.wal_push(&seg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let client = push(&host);
    // Kill the daemon once the push is under way (its data object is being written).
    let t = Instant::now();
    let data_seen = || {
        crate::common::coffre::files_under(&host.d.join("stores"))
            .iter()
            .any(|f| f.to_string_lossy().contains(name))
    };
    while !data_seen() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    host.daemon.kill_now();
    let out = client.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let committed_everywhere = ["a", "b"].iter().all(|s| {
        host.d
            .join(format!(
                "stores/{s}/coffre/wal/emr/00000001/{name}/manifest.json"
            ))
            .is_file()
    });
    if out.status.success() {
        // The push won the race: it may say so only once both sites had committed it.
        assert!(
            committed_everywhere,
            "acknowledged without both sites: {said}"
        );
    } else {
        assert!(!said.is_empty(), "a failed push says why");
    }
    // The daemon restarts; PostgreSQL's retry archives the segment and it comes back whole.
    host.daemon = spawn_daemon(&host.config, &host.d, &host.log, &[]);
    let retry = push(&host).wait_with_output().unwrap();
    assert!(
        retry.status.success(),
        "retry after the restart: {}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let fetched = host.d.join("fetched");
    let (ok, _, err) = host.run(&[
        "wal-fetch",
        "--source",
        "emr",
        name,
        fetched.to_str().unwrap(),
        "--purpose",
        "check the segment archived after the crash",
    ]);
    assert!(ok, "{err}");
    assert!(
        std::fs::read(&fetched).unwrap() == bytes,
        "fetched bytes differ"
    );
    let (ok, out, err) = host.run(&["verify"]);
    assert!(ok, "verify after the crash: {out}{err}");
    for f in crate::common::coffre::files_under(&host.d.join("stores")) {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !contains(&b, CANARY.as_bytes()),
            "canary in {}",
            f.display()
        );
    }
}

#[test]
fn archive_async_acknowledges_from_the_spool_and_archives_after_the_stores_and_the_daemon_come_back(
) {
    let mut s3 = S3Server::start();
    let table = s3_store("s3", "s3-site", &s3);
    let (ak, sk) = (s3.access_key().to_string(), s3.secret_key().to_string());
    let envs = [(S3_AK_ENV, ak.as_str()), (S3_SK_ENV, sk.as_str())];
    let mut host = Host::start_with(
        |d| format!("{}{table}", local_stores(d, &[("a", "a")])),
        &envs,
        "archive-async = true",
    );
    let pg_wal = host.d.join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let push = |host: &Host, path: &Path| {
        let out = host.wal_push(path).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let name = "000000010000000000000001";
    let seg = pg_wal.join(name);
    let bytes = incompressible(&seg, 2 << 20, 7);

    // S3 down: acknowledged all the same, from the spool.
    s3.stop();
    let (ok, said) = push(&host, &seg);
    assert!(ok && said.contains("spooled"), "{said}");
    let spooled = host.d.join("state/spool/emr").join(name);
    assert!(spooled.is_file());
    let (ok, out, err) = host.run(&["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["sources"][0]["wal"]["spool_files"], 1, "{out}");
    // The same name with other bytes is refused while the first waits.
    let other = host.d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    incompressible(&other.join(name), 2 << 20, 8);
    let (ok, said) = push(&host, &other.join(name));
    assert!(!ok && said.contains("DIFFERENT"), "{said}");
    // A restore can have it meanwhile: the worker commits it in store a at once (it stays in
    // the spool while S3 lacks it), and the fetch reads a's copy. It is never served from the
    // spool while S3 cannot answer that it lacks the name (issue 27, N15).
    let in_a = host.d.join(format!(
        "stores/a/coffre/wal/emr/00000001/{name}/manifest.json"
    ));
    // (On a timeout the daemon's log is printed as the host goes.)
    wait_until(
        "the spool worker commits the segment in store a",
        60,
        || in_a.is_file(),
    );
    let fetched = host.d.join("fetched");
    let (ok, _, err) = host.run(&[
        "wal-fetch",
        "--source",
        "emr",
        name,
        fetched.to_str().unwrap(),
        "--purpose",
        "read a spooled segment",
    ]);
    assert!(ok, "{err}");
    assert!(std::fs::read(&fetched).unwrap() == bytes);

    // kill -9: the spool survives, and the restarted daemon archives it once S3 is back.
    host.daemon.kill_now();
    host.daemon = spawn_daemon(&host.config, &host.d, &host.log, &envs);
    assert!(
        spooled.is_file(),
        "the spooled segment was lost with the daemon"
    );
    s3.restart();
    wait_until("the spool drained once S3 is back", 90, || {
        !spooled.exists()
    });
    let (ok, out, err) = host.run(&["verify"]);
    assert!(ok, "both sites hold it: {out}{err}");
    assert!(out.contains("0 not ok"), "{out}");
    let metrics = host.http_get("/metrics");
    assert!(
        metrics.contains("coffre_wal_spool_files{source=\"emr\"} 0"),
        "{metrics}"
    );
    // Archived now: other bytes under its name are refused by the stores' copy.
    let (ok, said) = push(&host, &other.join(name));
    assert!(!ok && said.contains("DIFFERENT"), "{said}");
}
