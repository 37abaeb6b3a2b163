//! Point-in-time recovery: which base backup a restore starts from, and the recovery settings
//! PostgreSQL reads on its first start (`recovery.signal`, appended lines in
//! `postgresql.auto.conf`) so that it fetches the archived WAL with `coffre wal-fetch`, replays it
//! to the target and promotes.
//!
//! The base backup is a `directory` snapshot of the source (a pg_basebackup in plain format).
//! For a time target it is the newest one coffre had protected by that time: a snapshot is
//! protected after pg_basebackup finished, so its backup ends before the target. For an LSN,
//! transaction or restore-point target, and for `latest`, it is the newest one (name another
//! with the snapshot id when the target is older).

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::app::Coffre;
use crate::ids::SnapshotId;
use crate::store::SnapshotKind;

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error("{0}")]
    Target(String),
    #[error("source `{0}` does not archive WAL, so it has nothing to replay after a base backup: a point-in-time restore needs a `[source.pitr]` table and `coffre wal-push` as PostgreSQL's archive_command (docs/operations.md)")]
    NotArchiving(String),
    #[error("source `{source_name}` has no base backup (a pg_basebackup folder, kind `directory`) {when}in the catalog; `coffre snapshots --source {source_name}` lists what there is")]
    NoBase { source_name: String, when: String },
    #[error("{0} is not a PostgreSQL base backup in plain format (it has no {1}): restore a pg_basebackup snapshot for a point-in-time recovery")]
    NotABaseBackup(String, &'static str),
    #[error("cannot write the recovery settings in {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("--replay runs PostgreSQL, which never runs as root: run the restore as the user who will own the database (e.g. `runuser -u postgres -- coffre restore … --replay`, that user in the daemon's operators group), or leave out --replay and start PostgreSQL on the folder yourself")]
    ReplayAsRoot,
    #[error("no PostgreSQL server program for the replay: looked for {0}; give its folder with --pg-bin (e.g. /usr/lib/postgresql/15/bin)")]
    NoPostgres(String),
    #[error("cannot run PostgreSQL for the replay ({what}): {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("PostgreSQL stopped before it reached the recovery target ({status}); its last lines, from {log}:\n{tail}")]
    ReplayFailed {
        status: String,
        log: String,
        tail: String,
    },
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Time(OffsetDateTime),
    Lsn(String),
    Xid(u64),
    Name(String),
    /// The end of the archive.
    Latest,
}

impl Target {
    /// At most one of the `--target-*` options (clap enforces it too); `None` without any.
    pub fn from_options(
        time: Option<&str>,
        lsn: Option<&str>,
        xid: Option<&str>,
        name: Option<&str>,
        latest: bool,
    ) -> Result<Option<Target>, PitrError> {
        let given = [
            time.is_some(),
            lsn.is_some(),
            xid.is_some(),
            name.is_some(),
            latest,
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(PitrError::Target(
                "give one recovery target: --target-time, --target-lsn, --target-xid, --target-name or --target-latest".into(),
            ));
        }
        if let Some(t) = time {
            return parse_time(t).map(|t| Some(Target::Time(t)));
        }
        if let Some(l) = lsn {
            return parse_lsn(l).map(|l| Some(Target::Lsn(l)));
        }
        if let Some(x) = xid {
            return x
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|x| *x >= 3)
                .map(|x| Some(Target::Xid(x)))
                .ok_or_else(|| {
                    PitrError::Target(format!(
                        "--target-xid {x:?} is not a transaction id (a number from 3 up, as txid_current() returns)"
                    ))
                });
        }
        if let Some(n) = name {
            return parse_restore_point(n).map(|n| Some(Target::Name(n)));
        }
        Ok(latest.then_some(Target::Latest))
    }

    /// For messages and the access log.
    pub fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("time {}", pg_time(*t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point {n:?}"),
            Target::Latest => "the end of the archive".into(),
        }
    }

    /// The `recovery_target_*` settings.
    fn settings(&self) -> Vec<(&'static str, String)> {
        let target = match self {
            Target::Time(t) => ("recovery_target_time", pg_time(*t)),
            Target::Lsn(l) => ("recovery_target_lsn", l.clone()),
            Target::Xid(x) => ("recovery_target_xid", x.to_string()),
            Target::Name(n) => ("recovery_target_name", n.clone()),
            Target::Latest => return vec![("recovery_target_timeline", "latest".into())],
        };
        vec![
            target,
            ("recovery_target_action", "promote".into()),
            ("recovery_target_timeline", "latest".into()),
        ]
    }
}

/// RFC 3339 (`2026-12-06T17:30:00Z`, `2026-12-06T12:30:00.250-05:00`; a space may stand for
/// the `T`).
fn parse_time(s: &str) -> Result<OffsetDateTime, PitrError> {
    let t = s.trim();
    let normalised = match t.split_once(' ') {
        Some((d, rest)) if d.len() == 10 => format!("{d}T{rest}"),
        _ => t.to_string(),
    };
    OffsetDateTime::parse(&normalised, &Rfc3339).map_err(|e| {
        PitrError::Target(format!(
            "--target-time {s:?} is not an RFC 3339 time ({e}): write it like 2026-12-06T17:30:00Z or 2026-12-06T12:30:00-05:00"
        ))
    })
}

/// PostgreSQL's own spelling, in UTC with microseconds: `2026-12-06 17:30:00.000000+00`.
fn pg_time(t: OffsetDateTime) -> String {
    let u = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        u.year(),
        u8::from(u.month()),
        u.day(),
        u.hour(),
        u.minute(),
        u.second(),
        u.microsecond()
    )
}

fn parse_lsn(s: &str) -> Result<String, PitrError> {
    let ok = s.split_once('/').is_some_and(|(hi, lo)| {
        [hi, lo]
            .iter()
            .all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_hexdigit()))
    });
    if ok {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(PitrError::Target(format!(
            "--target-lsn {s:?} is not an LSN: write it as PostgreSQL prints one, e.g. 0/3000148 (pg_current_wal_lsn())"
        )))
    }
}

fn parse_restore_point(s: &str) -> Result<String, PitrError> {
    // PostgreSQL keeps restore point names under 64 bytes (MAXFNAMELEN).
    if s.is_empty() || s.len() >= 64 || s.chars().any(|c| c.is_control()) {
        return Err(PitrError::Target(format!(
            "--target-name {s:?} is not a restore point name: 1 to 63 bytes without control characters, as given to pg_create_restore_point()"
        )));
    }
    Ok(s.to_string())
}

/// The base backup a point-in-time restore of `source` to `target` starts from: `explicit`
/// when given, else the newest `directory` snapshot (protected by the target time, for a time).
pub fn choose_base(
    app: &Coffre,
    source: &str,
    target: &Target,
    explicit: Option<SnapshotId>,
) -> Result<SnapshotId, PitrError> {
    if app.config.source(source).is_some_and(|s| s.pitr.is_none()) {
        return Err(PitrError::NotArchiving(source.to_string()));
    }
    if let Some(id) = explicit {
        return Ok(id);
    }
    let entries = app
        .catalog
        .list(Some(source))
        .map_err(|e| PitrError::Catalog(e.to_string()))?;
    let limit = match target {
        Target::Time(t) => Some(*t),
        _ => None,
    };
    let mut best: Option<(OffsetDateTime, SnapshotId)> = None;
    for e in entries {
        if e.manifest.kind != SnapshotKind::Directory {
            continue;
        }
        let Ok(created) = OffsetDateTime::parse(&e.manifest.created, &Rfc3339) else {
            continue;
        };
        if limit.is_some_and(|l| created > l) {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| created > *b) {
            best = Some((created, e.manifest.snapshot));
        }
    }
    best.map(|(_, id)| id).ok_or_else(|| PitrError::NoBase {
        source_name: source.to_string(),
        when: limit
            .map(|l| format!("protected before {} ", pg_time(l)))
            .unwrap_or_default(),
    })
}

/// `restore_command` for PostgreSQL: this coffre binary, with the config (and control socket)
/// the restore used, each word quoted for the shell PostgreSQL runs it with.
pub fn restore_command(
    exe: &Path,
    config: Option<&Path>,
    socket: Option<&Path>,
    source: &str,
    session: &str,
    purpose: &str,
    store: Option<&str>,
) -> String {
    let mut words = Vec::new();
    if let Some(s) = socket {
        words.push(format!(
            "COFFRE_SOCKET={}",
            shell_quote(&s.to_string_lossy())
        ));
    }
    words.push(shell_quote(&exe.to_string_lossy()));
    if let Some(c) = config {
        words.push("--config".into());
        words.push(shell_quote(&c.to_string_lossy()));
    }
    words.extend(["wal-fetch".into(), "--source".into(), shell_quote(source)]);
    words.extend(["--session".into(), shell_quote(session)]);
    words.extend(["--purpose".into(), shell_quote(purpose)]);
    if let Some(s) = store {
        words.extend(["--store".into(), shell_quote(s)]);
    }
    words.extend(["%f".into(), "%p".into()]);
    words.join(" ")
}

/// One shell word: as it is when it has only safe characters, else in single quotes.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A value in postgresql.conf syntax: single quotes, a quote doubled.
fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The lines appended to postgresql.auto.conf (later lines win over the backup's own).
pub fn settings_text(target: &Target, restore_command: &str) -> String {
    let mut text = format!(
        "\n# Added by coffre restore: point-in-time recovery to {}.\n",
        target.describe()
    );
    let mut lines = vec![("restore_command", restore_command.to_string())];
    lines.extend(target.settings());
    for (k, v) in lines {
        text.push_str(&format!("{k} = {}\n", conf_value(&v)));
    }
    text
}

/// Make the restored base backup at `dir` start in targeted recovery: the settings appended to
/// `postgresql.auto.conf`, an empty `recovery.signal`, both fsynced with the folder.
pub fn write_recovery(dir: &Path, settings: &str) -> Result<(), PitrError> {
    for needed in ["PG_VERSION", "backup_label"] {
        if !dir.join(needed).is_file() {
            return Err(PitrError::NotABaseBackup(dir.display().to_string(), needed));
        }
    }
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| PitrError::Write { path, source }
    };
    let auto = dir.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(err(&auto))?;
    f.write_all(settings.as_bytes()).map_err(err(&auto))?;
    f.sync_all().map_err(err(&auto))?;
    let signal = dir.join("recovery.signal");
    std::fs::File::create(&signal)
        .and_then(|f| f.sync_all())
        .map_err(err(&signal))?;
    crate::fsutil::sync_dir(dir).map_err(err(dir))
}

/// What a replay took.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// From the start of PostgreSQL to its promotion at the target.
    pub seconds: f64,
    pub log: std::path::PathBuf,
}

/// The `postgres` program for the data folder `dir`: in `pg_bin` when given, else Debian's
/// `/usr/lib/postgresql/<major>/bin` for the folder's PG_VERSION, else on PATH.
pub fn find_postgres(dir: &Path, pg_bin: Option<&Path>) -> Result<std::path::PathBuf, PitrError> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(b) = pg_bin {
        candidates.push(b.join("postgres"));
    } else {
        if let Ok(v) = std::fs::read_to_string(dir.join("PG_VERSION")) {
            let major = v.trim();
            if !major.is_empty() && major.chars().all(|c| c.is_ascii_digit() || c == '.') {
                candidates.push(
                    Path::new("/usr/lib/postgresql")
                        .join(major)
                        .join("bin/postgres"),
                );
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|p| p.join("postgres")));
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(PitrError::NoPostgres(if tried.is_empty() {
        "nothing (no PATH)".into()
    } else {
        tried.join(", ")
    }))
}

/// Run PostgreSQL on the restored base backup at `dir` (prepared by [`write_recovery`]) until it
/// has replayed to the target and promoted, then stop it (fast shutdown), leaving a database
/// that starts at once. The server listens on no TCP address and on a private socket folder, and
/// archives nothing (`archive_mode = off`: a restored copy must not push WAL into the archive
/// it came from). It runs as the caller, who must own `dir`; its output goes to
/// `dir/coffre-replay.log`.
pub fn replay(dir: &Path, pg_bin: Option<&Path>) -> Result<Replayed, PitrError> {
    replay_as(dir, pg_bin, None)
}

/// [`replay`], as the OS user `as_user` (uid, gid) when the caller is root (the daemon's PITR
/// drill: `drill.pg-user`), who must own `dir`.
pub fn replay_as(
    dir: &Path,
    pg_bin: Option<&Path>,
    as_user: Option<(u32, u32)>,
) -> Result<Replayed, PitrError> {
    use std::os::unix::fs::PermissionsExt;
    let as_user = as_user.filter(|_| nix::unistd::geteuid().is_root());
    if nix::unistd::geteuid().is_root() && as_user.is_none() {
        return Err(PitrError::ReplayAsRoot);
    }
    let postgres = find_postgres(dir, pg_bin)?;
    let spawn_err = |what: &str| {
        let what = what.to_string();
        move |source| PitrError::Spawn { what, source }
    };
    // PostgreSQL refuses a data folder that others can read.
    let mode = std::fs::metadata(dir)
        .map_err(spawn_err("the restored folder"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(spawn_err("chmod 0700 the restored folder"))?;
    }
    let sockets = std::env::temp_dir().join(format!(
        "coffre-replay-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&sockets)
        .map_err(spawn_err("a private socket folder"))?;
    if let Some((uid, gid)) = as_user {
        std::os::unix::fs::chown(&sockets, Some(uid), Some(gid))
            .map_err(spawn_err("chown the private socket folder"))?;
    }
    let result = replay_in(dir, &postgres, &sockets, as_user);
    let _ = std::fs::remove_dir_all(&sockets);
    result
}

fn replay_in(
    dir: &Path,
    postgres: &Path,
    sockets: &Path,
    as_user: Option<(u32, u32)>,
) -> Result<Replayed, PitrError> {
    use std::os::unix::process::CommandExt;
    let spawn_err = |what: &str| {
        let what = what.to_string();
        move |source| PitrError::Spawn { what, source }
    };
    let log = dir.join("coffre-replay.log");
    let out = std::fs::File::create(&log).map_err(spawn_err("create coffre-replay.log"))?;
    let err = out.try_clone().map_err(spawn_err("coffre-replay.log"))?;
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new(postgres);
    if let Some((uid, gid)) = as_user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .arg("-D")
        .arg(dir)
        .arg("-c")
        .arg("listen_addresses=")
        .arg("-c")
        .arg(format!("unix_socket_directories={}", sockets.display()))
        .args(["-c", "archive_mode=off"])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(spawn_err(&postgres.display().to_string()))?;
    let signal = dir.join("recovery.signal");
    loop {
        if let Some(status) = child.try_wait().map_err(spawn_err("wait for PostgreSQL"))? {
            return Err(PitrError::ReplayFailed {
                status: status.to_string(),
                log: log.display().to_string(),
                tail: tail(&log, 15),
            });
        }
        // Promoted: recovery.signal removed and pg_control says "in production" (the end of
        // recovery is written; stopping earlier would leave a copy that replays past the
        // target on its next start).
        if !signal.exists()
            && control_state(dir) == Some(DB_IN_PRODUCTION)
            && postmaster_status(dir).as_deref() == Some("ready")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let seconds = started.elapsed().as_secs_f64();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match child.try_wait().map_err(spawn_err("wait for PostgreSQL"))? {
            Some(status) if status.success() => break,
            Some(status) => {
                return Err(PitrError::ReplayFailed {
                    status: format!("{status} while stopping after the promotion"),
                    log: log.display().to_string(),
                    tail: tail(&log, 15),
                })
            }
            None if std::time::Instant::now() > deadline => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
                let _ = child.wait();
                break;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    Ok(Replayed { seconds, log })
}

/// `DBState::DB_IN_PRODUCTION` in PostgreSQL's `pg_control` (the same in every version since
/// 9.0).
const DB_IN_PRODUCTION: u32 = 6;

/// The cluster state of `dir/global/pg_control`: a `u32` in the machine's byte order at offset
/// 16, after the system identifier, the control file version and the catalog version.
fn control_state(dir: &Path) -> Option<u32> {
    let bytes = std::fs::read(dir.join("global/pg_control")).ok()?;
    let b: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

/// Line 8 of postmaster.pid: `starting`, `standby`, `ready` or `stopping`.
fn postmaster_status(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    Some(text.lines().nth(7)?.trim().to_string())
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_target_at_most_and_each_is_checked() {
        assert_eq!(
            Target::from_options(None, None, None, None, false).unwrap(),
            None
        );
        assert_eq!(
            Target::from_options(None, None, None, None, true).unwrap(),
            Some(Target::Latest)
        );
        let two =
            Target::from_options(Some("2026-12-06T17:00:00Z"), Some("0/1"), None, None, false);
        assert!(two.unwrap_err().to_string().contains("one recovery target"));
        let t = Target::from_options(
            Some("2026-12-06 12:30:00.25-05:00"),
            None,
            None,
            None,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.describe(), "time 2026-12-06 17:30:00.250000+00");
        let bad = Target::from_options(Some("yesterday"), None, None, None, false).unwrap_err();
        assert!(bad.to_string().contains("2026-12-06T17:30:00Z"), "{bad}");
        assert_eq!(
            Target::from_options(None, Some("0/3000a48"), None, None, false).unwrap(),
            Some(Target::Lsn("0/3000A48".into()))
        );
        for lsn in ["3000148", "0/", "0/xyz", "123456789/0"] {
            assert!(
                Target::from_options(None, Some(lsn), None, None, false).is_err(),
                "{lsn}"
            );
        }
        assert_eq!(
            Target::from_options(None, None, Some("742"), None, false).unwrap(),
            Some(Target::Xid(742))
        );
        assert!(Target::from_options(None, None, Some("-1"), None, false).is_err());
        assert!(Target::from_options(None, None, None, Some(""), false).is_err());
        assert!(Target::from_options(None, None, None, Some(&"x".repeat(64)), false).is_err());
    }

    #[test]
    fn settings_quote_for_postgresql_and_the_shell() {
        let cmd = restore_command(
            Path::new("/usr/bin/coffre"),
            Some(Path::new("/etc/coffre/it's here.toml")),
            None,
            "emr",
            "01JSESSION",
            "ticket 4711",
            None,
        );
        assert_eq!(
            cmd,
            r"/usr/bin/coffre --config '/etc/coffre/it'\''s here.toml' wal-fetch --source emr --session 01JSESSION --purpose 'ticket 4711' %f %p"
        );
        let t = Target::Xid(900);
        let text = settings_text(&t, &cmd);
        assert!(text.contains("point-in-time recovery to transaction 900."));
        assert!(text.contains(
            r"restore_command = '/usr/bin/coffre --config ''/etc/coffre/it''\''''s here.toml'' wal-fetch --source emr --session 01JSESSION --purpose ''ticket 4711'' %f %p'"
        ));
        assert!(text.contains("recovery_target_xid = '900'\n"));
        assert!(text.contains("recovery_target_action = 'promote'\n"));
        // A drill pins its store (and reaches the daemon through its socket).
        let pinned = restore_command(
            Path::new("/usr/bin/coffre"),
            None,
            Some(Path::new("/run/coffre/coffre.sock")),
            "emr",
            "01JDRILL",
            "weekly drill",
            Some("montreal s3"),
        );
        assert_eq!(
            pinned,
            r"COFFRE_SOCKET=/run/coffre/coffre.sock /usr/bin/coffre wal-fetch --source emr --session 01JDRILL --purpose 'weekly drill' --store 'montreal s3' %f %p"
        );
        let latest = settings_text(&Target::Latest, "x");
        assert!(!latest.contains("recovery_target_action"));
        assert!(latest.contains("recovery_target_timeline = 'latest'"));
    }

    #[test]
    fn recovery_is_written_only_into_a_base_backup() {
        let d = tempfile::tempdir().unwrap();
        let e = write_recovery(d.path(), "x = '1'\n").unwrap_err();
        assert!(e.to_string().contains("no PG_VERSION"), "{e}");
        std::fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(d.path().join("backup_label"), "START WAL LOCATION").unwrap();
        std::fs::write(
            d.path().join("postgresql.auto.conf"),
            "archive_mode = 'on'\n",
        )
        .unwrap();
        write_recovery(d.path(), "\nrestore_command = 'c'\n").unwrap();
        assert!(d.path().join("recovery.signal").is_file());
        assert_eq!(
            std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap(),
            "archive_mode = 'on'\n\nrestore_command = 'c'\n"
        );
    }
}
