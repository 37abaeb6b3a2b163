//! Point-in-time recovery: which base backup a restore starts from, and the recovery settings
//! PostgreSQL reads on its first start (`recovery.signal`, appended lines in
//! `postgresql.auto.conf`) so that it fetches the archived WAL with `coffre wal-fetch`, replays it
//! to the target and promotes; and how coffre starts PostgreSQL on such a copy (`restore
//! --replay`, point-in-time drills): with the settings of `FORCED` on its command line, so that
//! nothing in the backup's own configuration runs a program or loads a library.
//!
//! No caller text reaches a setting: the values written are paths, names and ids coffre chose
//! or checked, escaped by PostgreSQL's quoting rules ([`conf_value`]); control characters are
//! refused. The restored folder is untrusted data, read and written through
//! [`crate::ops::pitr::pgdir`].
//!
//! The base backup is a `directory` snapshot of the source (a pg_basebackup in plain format)
//! whose backup_label coffre read when it protected it (`pg_wal_start` in its manifest): a
//! folder without one is no base backup, whatever its kind.
//! For a time target it is the newest one coffre had protected by that time: a snapshot is
//! protected after pg_basebackup finished, so its backup ends before the target. For an LSN,
//! transaction or restore-point target, and for `latest`, it is the newest one (name another
//! with the snapshot id when the target is older).
//!
//! After a replay ([`after_replay`]), PostgreSQL has promoted onto a new timeline with
//! `archive_mode = off` (forced), so it neither archived nor queued that timeline's history
//! file. coffre queues it (`pg_wal/archive_status/<history>.ready`, as PostgreSQL itself does
//! when it promotes while archiving) rather than pushing it: the history reaches the archive only
//! if the copy is started archiving, by its own archiver as its own archive_command says. A copy
//! that never archives (an investigation copy) thus leaves no timeline in the archive that
//! `recovery_target_timeline = 'latest'` would follow; a copy that does archives its history
//! before its first segment, which makes the next promotion take a timeline after it (PostgreSQL
//! takes one more than the newest history file `restore_command` finds). With `--archive-mode
//! off` coffre also appends `archive_mode = 'off'` to the copy's postgresql.auto.conf.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::app::Coffre;
use crate::ids::SnapshotId;
use crate::ops::pitr::pgdir::{DataDir, DirError};
use crate::store::SnapshotKind;

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error("{0}")]
    Target(String),
    #[error("source `{0}` does not archive WAL, so it has nothing to replay after a base backup: a point-in-time restore needs a `[source.pitr]` table and `coffre wal-push` as PostgreSQL's archive_command (docs/operations.md)")]
    NotArchiving(String),
    #[error("source `{source_name}` has no base backup (a pg_basebackup folder, kind `directory`, with a backup_label) {when}in the catalog; `coffre snapshots --source {source_name}` lists what there is")]
    NoBase { source_name: String, when: String },
    #[error("{0} is not a PostgreSQL base backup in plain format (it has no {1}): restore a pg_basebackup snapshot for a point-in-time recovery")]
    NotABaseBackup(String, &'static str),
    #[error("{what} holds a control character (newline, carriage return, tab, NUL, another below 0x20, or DEL): coffre writes none into PostgreSQL's setting {setting}. Move the file to a path without one, rename the source or store, or give a target without one")]
    ControlCharacter { setting: String, what: String },
    #[error("the restored folder: {0}")]
    Folder(#[from] DirError),
    #[error("cannot start PostgreSQL as user {user}: {source}. Switching to another user takes root, or the capabilities CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_DAC_OVERRIDE: run the daemon as root, or grant them in a systemd drop-in (AmbientCapabilities= and CapabilityBoundingSet= with those four, SystemCallFilter=@setuid @chown)")]
    CannotSwitch {
        user: String,
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
/// when given, else the newest `directory` snapshot with a recorded `pg_wal_start` (its
/// backup_label's WAL start; protected by the target time, for a time).
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
        // A base backup: a directory snapshot whose backup_label gave its WAL start. Any other
        // folder (an empty or unfinished pg_basebackup protected under `settled`) cannot start
        // a recovery.
        if e.manifest.kind != SnapshotKind::Directory || e.manifest.pg_wal_start.is_none() {
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
/// the restore used, each word quoted for the shell PostgreSQL runs it with, and every `%` of
/// those words doubled (PostgreSQL expands `%f`, `%p`, `%r` and `%%` in the command). No caller
/// text goes in: the purpose stays in the access entry of the restore or drill that opened the
/// session (`wal-fetch` logs its own default purpose). Refused when a word holds a control
/// character (see [`conf_value`]).
pub fn restore_command(
    exe: &Path,
    config: Option<&Path>,
    socket: Option<&Path>,
    source: &str,
    session: &str,
    store: Option<&str>,
) -> Result<String, PitrError> {
    let word = |what: &str, s: &str| -> Result<String, PitrError> {
        check_plain("restore_command", what, s)?;
        Ok(shell_quote(s).replace('%', "%%"))
    };
    let mut words = Vec::new();
    if let Some(s) = socket {
        let s = word("the control socket path", &s.to_string_lossy())?;
        words.push(format!("COFFRE_SOCKET={s}"));
    }
    words.push(word("the coffre binary's path", &exe.to_string_lossy())?);
    if let Some(c) = config {
        words.push("--config".into());
        words.push(word("the config file's path", &c.to_string_lossy())?);
    }
    words.extend(["wal-fetch".into(), "--source".into()]);
    words.push(word("the source name", source)?);
    words.push("--session".into());
    words.push(word("the recovery session id", session)?);
    if let Some(s) = store {
        words.push("--store".into());
        words.push(word("the store name", s)?);
    }
    words.extend(["%f".into(), "%p".into()]);
    Ok(words.join(" "))
}

/// One shell word: as it is when it has only safe characters, else in single quotes (inside
/// which the shell decodes nothing; a quote is closed, escaped and reopened).
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

/// Refuse a control character (below 0x20, or DEL) in `value`, `what` of the setting `setting`:
/// PostgreSQL's configuration files end a value at a newline, and coffre writes none of them.
fn check_plain(setting: &str, what: &str, value: &str) -> Result<(), PitrError> {
    if value.chars().any(|c| c < ' ' || c == '\u{7f}') {
        return Err(PitrError::ControlCharacter {
            setting: setting.to_string(),
            what: format!("{what} ({})", value.escape_debug()),
        });
    }
    Ok(())
}

/// The value `s` of the setting `setting` in postgresql.conf syntax, escaped by PostgreSQL's own
/// rules for a quoted string: in single quotes, a quote doubled and a backslash doubled (the
/// parser decodes backslash escapes such as `\n` and `\047` inside quotes). A control character
/// is refused: no escape of it is safe to rely on.
pub fn conf_value(setting: &str, s: &str) -> Result<String, PitrError> {
    check_plain(setting, "the value", s)?;
    Ok(format!("'{}'", s.replace('\\', r"\\").replace('\'', "''")))
}

/// The recovery settings of a restore to `target` (the target timeline `timeline` when given,
/// else `latest`).
fn recovery_settings(
    target: &Target,
    restore_command: &str,
    timeline: Option<u32>,
) -> Vec<(&'static str, String)> {
    let mut lines = vec![("restore_command", restore_command.to_string())];
    lines.extend(target.settings());
    if let Some(tl) = timeline {
        for (k, v) in lines.iter_mut() {
            if *k == "recovery_target_timeline" {
                *v = tl.to_string();
            }
        }
    }
    lines
}

/// The lines appended to postgresql.auto.conf (later lines win over the backup's own), each
/// value escaped by [`conf_value`]. `timeline` pins the target timeline (a drill's point).
pub fn settings_text(
    target: &Target,
    restore_command: &str,
    timeline: Option<u32>,
) -> Result<String, PitrError> {
    let mut text = format!(
        "\n# Added by coffre restore: point-in-time recovery to {}.\n",
        target.describe().escape_debug()
    );
    for (k, v) in recovery_settings(target, restore_command, timeline) {
        text.push_str(&format!("{k} = {}\n", conf_value(k, &v)?));
    }
    Ok(text)
}

/// Make the restored base backup at `dir` start in targeted recovery: the settings appended to
/// `postgresql.auto.conf`, a new empty `recovery.signal`, both fsynced with the folder. The
/// folder is untrusted data ([`crate::ops::pitr::pgdir`]): every file is reached beneath one handle of
/// it, never through a symlink, and must be a regular file; a symlink is refused as a sign of a
/// planted backup and nothing is written through it.
pub fn write_recovery(dir: &Path, settings: &str) -> Result<(), PitrError> {
    let d = DataDir::open(dir)?;
    for needed in ["PG_VERSION", "backup_label"] {
        match d.check_regular(needed) {
            Err(DirError::Missing(_)) => {
                return Err(PitrError::NotABaseBackup(dir.display().to_string(), needed))
            }
            r => r?,
        }
    }
    // Checked before anything is written: a planted backup is left as it was.
    d.absent_or_regular("recovery.signal")?;
    d.append("postgresql.auto.conf", settings.as_bytes())?;
    d.create_fresh("recovery.signal")?;
    d.sync()?;
    Ok(())
}

/// What a replay took.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// From the start of PostgreSQL to its promotion at the target.
    pub seconds: f64,
    pub log: std::path::PathBuf,
}

/// The OS user a PostgreSQL started by coffre runs as (a drill's `drill.pg-user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The replay's output, in the restored folder.
const REPLAY_LOG: &str = "coffre-replay.log";

/// What a replayed copy was left ready to do ([`after_replay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterReplay {
    /// The timeline the copy promoted onto (from its pg_control).
    pub timeline: Option<u32>,
    /// Its history file, queued for archiving (`pg_wal/archive_status/<name>.ready`).
    pub history_queued: Option<String>,
    /// `archive_mode = 'off'` was appended to its postgresql.auto.conf.
    pub archive_off: bool,
}

/// Leave the copy at `dir`, replayed and promoted with archiving off ([`replay`]), ready for its
/// first real start: its new timeline's history file queued for the archiver (a `.ready` file
/// beneath the folder's handle, unless PostgreSQL marked it `.done`), and, unless `preserve`,
/// `archive_mode = 'off'` appended to its postgresql.auto.conf (later lines win) so that it
/// archives nothing until someone removes that line. A queued history file is inert while
/// archiving is off.
pub fn after_replay(dir: &Path, preserve: bool) -> Result<AfterReplay, PitrError> {
    let d = DataDir::open(dir)?;
    let timeline = control_timeline(&d);
    let mut history_queued = None;
    if let Some(tl) = timeline.filter(|tl| *tl > 1) {
        let history = format!("{tl:08X}.history");
        let wal = d.sub("pg_wal")?;
        wal.check_regular(&history)?;
        let status = wal.sub("archive_status")?;
        let ready = format!("{history}.ready");
        // `.done`: PostgreSQL archived it already (never under coffre's forced settings).
        if !status.has(&format!("{history}.done")) {
            status.absent_or_regular(&ready)?;
            if !status.has(&ready) {
                status.create_fresh(&ready)?;
                status.sync()?;
            }
            history_queued = Some(history);
        }
    }
    if !preserve {
        let text = format!(
            "\n# Added by coffre restore --archive-mode off: this copy archives nothing. Remove these lines to make it a primary that archives (its new timeline's history file goes first).\narchive_mode = {}\n",
            conf_value("archive_mode", "off")?
        );
        d.append("postgresql.auto.conf", text.as_bytes())?;
        d.sync()?;
    }
    Ok(AfterReplay {
        timeline,
        history_queued,
        archive_off: !preserve,
    })
}

/// The folder's PG_VERSION (`15`, `9.6`), read beneath it without following a symlink.
fn pg_version(d: &DataDir) -> Option<String> {
    let bytes = d.read("PG_VERSION", 64).ok()?;
    let v = String::from_utf8(bytes).ok()?.trim().to_string();
    (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')).then_some(v)
}

fn pg_major(d: &DataDir) -> Option<u32> {
    pg_version(d)?.split('.').next()?.parse().ok()
}

/// The `postgres` program for the data folder `dir`: in `pg_bin` when given, else Debian's
/// `/usr/lib/postgresql/<major>/bin` for the folder's PG_VERSION, else on PATH.
pub fn find_postgres(dir: &Path, pg_bin: Option<&Path>) -> Result<std::path::PathBuf, PitrError> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(b) = pg_bin {
        candidates.push(b.join("postgres"));
    } else {
        if let Some(v) = DataDir::open(dir).ok().as_ref().and_then(pg_version) {
            candidates.push(
                Path::new("/usr/lib/postgresql")
                    .join(v)
                    .join("bin/postgres"),
            );
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

/// How a forced setting gets its value.
#[derive(Debug, Clone, Copy)]
enum Forced {
    Is(&'static str),
    /// coffre's own restore_command.
    RestoreCommand,
    /// The private socket folder of this run.
    SocketFolder,
    /// The restored folder.
    DataFolder,
}

/// What coffre forces on every PostgreSQL it starts (`restore --replay`, point-in-time drills),
/// on the command line (`-c name=value` wins over the backup's postgresql.conf and
/// postgresql.auto.conf): nothing in the backup's configuration runs a program, loads a library,
/// listens, or writes outside the folder. (name, value, first major version that has it); every
/// name exists in PostgreSQL 15 (`postgres --describe-config`), which a unit test checks.
const FORCED: &[(&str, Forced, u32)] = &[
    // The archived WAL comes through coffre, never through the backup's own command.
    ("restore_command", Forced::RestoreCommand, 12),
    // A restored copy never pushes WAL into the archive it came from, nor runs a command for it.
    ("archive_mode", Forced::Is("off"), 12),
    ("archive_command", Forced::Is(""), 12),
    // An archive module is a library (PostgreSQL 15 and later).
    ("archive_library", Forced::Is(""), 15),
    // Shell commands run at the end of recovery and at restart points.
    ("recovery_end_command", Forced::Is(""), 12),
    ("archive_cleanup_command", Forced::Is(""), 12),
    // Libraries loaded at start or into sessions: code chosen by whoever wrote the backup.
    ("shared_preload_libraries", Forced::Is(""), 12),
    ("session_preload_libraries", Forced::Is(""), 12),
    ("local_preload_libraries", Forced::Is(""), 12),
    // Any library still loaded comes from PostgreSQL's own folder only.
    ("dynamic_library_path", Forced::Is("$libdir"), 12),
    // No TLS: ssl_passphrase_command runs a program, and TLS reads files the backup names.
    ("ssl", Forced::Is("off"), 12),
    ("ssl_passphrase_command", Forced::Is(""), 12),
    // JIT loads a provider library.
    ("jit", Forced::Is("off"), 12),
    // All output to coffre-replay.log: the collector writes files where log_directory says.
    ("logging_collector", Forced::Is("off"), 12),
    ("log_destination", Forced::Is("stderr"), 12),
    // A pid file written at a path of the backup's choosing.
    ("external_pid_file", Forced::Is(""), 12),
    // No TCP; a private socket folder that only PostgreSQL's user reaches.
    ("listen_addresses", Forced::Is(""), 12),
    ("unix_socket_directories", Forced::SocketFolder, 12),
    ("unix_socket_group", Forced::Is(""), 12),
    ("unix_socket_permissions", Forced::Is("0700"), 12),
    // No connection to a primary the backup names (with a standby.signal it would stream).
    ("primary_conninfo", Forced::Is(""), 12),
    ("primary_slot_name", Forced::Is(""), 12),
    // The folder coffre restored, never another one the backup's postgresql.conf names.
    ("data_directory", Forced::DataFolder, 12),
];

/// The settings of `FORCED` for a server of major version `major` replaying `dir` with
/// `restore_command`, its socket in `sockets`: the one protocol of every PostgreSQL coffre
/// starts.
fn forced_settings(
    dir: &Path,
    sockets: &Path,
    restore_command: &str,
    major: u32,
) -> Vec<(&'static str, std::ffi::OsString)> {
    FORCED
        .iter()
        .filter(|(_, _, since)| *since <= major)
        .map(|(name, value, _)| {
            let value = match value {
                Forced::Is(v) => (*v).into(),
                Forced::RestoreCommand => restore_command.into(),
                // A list: each folder in double quotes (a quote doubled) keeps commas and spaces.
                Forced::SocketFolder => {
                    let mut v = std::ffi::OsString::from("\"");
                    v.push(sockets.as_os_str().to_string_lossy().replace('"', "\"\""));
                    v.push("\"");
                    v
                }
                Forced::DataFolder => dir.as_os_str().to_os_string(),
            };
            (*name, value)
        })
        .collect()
}

/// `-c name=value` for each setting.
fn setting_args(settings: &[(&str, std::ffi::OsString)]) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    for (name, value) in settings {
        let mut a = std::ffi::OsString::from(*name);
        a.push("=");
        a.push(value);
        args.push("-c".into());
        args.push(a);
    }
    args
}

/// Run PostgreSQL on the restored base backup at `dir` (prepared by [`write_recovery`]) until it
/// has replayed to the target and promoted, then stop it (fast shutdown), leaving a database
/// that starts at once. It runs with coffre's own settings (`FORCED`: no TCP, a private
/// socket folder, nothing archived, no command or library of the backup's configuration), as
/// the caller, who must own `dir`; its output goes to `dir/coffre-replay.log`.
pub fn replay(
    dir: &Path,
    pg_bin: Option<&Path>,
    restore_command: &str,
) -> Result<Replayed, PitrError> {
    replay_as(dir, pg_bin, None, restore_command)
}

/// [`replay`], as the OS user `as_user` (the daemon's PITR drill: `drill.pg-user`), who must own
/// `dir`. Switching users takes root or the capabilities [`PitrError::CannotSwitch`] names.
pub fn replay_as(
    dir: &Path,
    pg_bin: Option<&Path>,
    as_user: Option<&PgUser>,
    restore_command: &str,
) -> Result<Replayed, PitrError> {
    use std::os::unix::fs::PermissionsExt;
    if nix::unistd::geteuid().is_root() && as_user.is_none_or(|u| u.uid == 0) {
        return Err(PitrError::ReplayAsRoot);
    }
    let postgres = find_postgres(dir, pg_bin)?;
    // PostgreSQL refuses a data folder that others can read.
    let mode = std::fs::symlink_metadata(dir)
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
    let result = match as_user {
        Some(u) => std::os::unix::fs::chown(&sockets, Some(u.uid), Some(u.gid)).map_err(|source| {
            PitrError::CannotSwitch {
                user: u.name.clone(),
                source,
            }
        }),
        None => Ok(()),
    }
    .and_then(|()| replay_in(dir, &postgres, &sockets, as_user, restore_command));
    let _ = std::fs::remove_dir_all(&sockets);
    result
}

/// Start `cmd` from a thread of its own that first drops its ambient and inheritable
/// capabilities, so that the program holds none of this process's. A non-root daemon that may
/// switch users (CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_DAC_OVERRIDE, granted as ambient
/// capabilities) keeps every capability across a switch between two non-root users, and exec
/// passes the ambient ones on: PostgreSQL as drill.pg-user, and whatever runs in it, would hold
/// them (CAP_SETUID is a setuid(0) away from root). The daemon's other threads keep theirs.
fn spawn_without_capabilities(
    cmd: &mut std::process::Command,
) -> std::io::Result<std::process::Child> {
    std::thread::scope(|s| {
        s.spawn(|| {
            match rustix::thread::clear_ambient_capability_set() {
                // A kernel without ambient capabilities (before 4.3) has none to pass on.
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => return Err(e.into()),
            }
            let mut caps = rustix::thread::capabilities(None)?;
            caps.inheritable = rustix::thread::CapabilitySet::empty();
            rustix::thread::set_capabilities(None, caps)?;
            cmd.spawn()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread starting it panicked")))
    })
}

/// `postgres`, run as `as_user` when given: through util-linux's `setpriv` (Debian essential),
/// which switches to the user with its own supplementary groups (`--init-groups`: the group
/// that owns the control socket is usually a supplementary one, and Rust's `Command::uid` drops
/// them all, so the replay's `wal-fetch` could not connect) and clears the inheritable and
/// ambient capabilities before it executes PostgreSQL, which then holds none of the daemon's.
fn as_pg_user(postgres: &Path, as_user: Option<&PgUser>) -> std::process::Command {
    let Some(u) = as_user else {
        return std::process::Command::new(postgres);
    };
    let mut cmd = std::process::Command::new(SETPRIV);
    cmd.arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .args([
            "--init-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--",
        ])
        .arg(postgres);
    cmd
}

/// util-linux's setpriv (package util-linux, essential on Debian).
const SETPRIV: &str = "/usr/bin/setpriv";

fn spawn_err(what: &str) -> impl FnOnce(std::io::Error) -> PitrError {
    let what = what.to_string();
    move |source| PitrError::Spawn { what, source }
}

fn replay_in(
    dir: &Path,
    postgres: &Path,
    sockets: &Path,
    as_user: Option<&PgUser>,
    restore_command: &str,
) -> Result<Replayed, PitrError> {
    let d = DataDir::open(dir)?;
    let log = dir.join(REPLAY_LOG);
    let out = d.create_fresh(REPLAY_LOG)?;
    let err = out.try_clone().map_err(spawn_err(REPLAY_LOG))?;
    let major = pg_major(&d).unwrap_or(u32::MAX);
    let forced = forced_settings(dir, sockets, restore_command, major);
    let mut cmd = as_pg_user(postgres, as_user);
    let started = std::time::Instant::now();
    cmd.arg("-D")
        .arg(dir)
        .args(setting_args(&forced))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let spawned = match as_user {
        // setpriv needs the daemon's CAP_SETUID/CAP_SETGID, and drops them itself.
        Some(_) => cmd.spawn(),
        None => spawn_without_capabilities(&mut cmd),
    };
    let mut child = spawned.map_err(|source| match as_user {
        Some(u) if source.raw_os_error() == Some(nix::libc::EPERM) => PitrError::CannotSwitch {
            user: u.name.clone(),
            source,
        },
        _ => spawn_err(&postgres.display().to_string())(source),
    })?;
    let failed = |status: String| PitrError::ReplayFailed {
        status,
        log: log.display().to_string(),
        tail: tail(&d, 15),
    };
    // Promoted: recovery.signal removed and pg_control says "in production" (the end of
    // recovery is written; stopping earlier would leave a copy that replays past the target on
    // its next start).
    loop {
        if let Some(status) = child.try_wait().map_err(spawn_err("wait for PostgreSQL"))? {
            return Err(failed(status.to_string()));
        }
        if !d.has("recovery.signal")
            && control_state(&d) == Some(DB_IN_PRODUCTION)
            && postmaster_status(&d).as_deref() == Some("ready")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let seconds = started.elapsed().as_secs_f64();
    stop(&mut child)
        .map_err(|status| failed(format!("{status} while stopping after the promotion")))?;
    Ok(Replayed { seconds, log })
}

/// How stopping PostgreSQL after the promotion failed.
#[derive(Debug, thiserror::Error)]
enum StopError {
    #[error("{0}")]
    Exit(std::process::ExitStatus),
    #[error("{0}")]
    Wait(std::io::Error),
}

/// Fast shutdown (SIGINT), immediate (SIGQUIT) after 120 s; the exit status when it failed.
fn stop(child: &mut std::process::Child) -> Result<(), StopError> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(StopError::Exit(status)),
            Err(e) => return Err(StopError::Wait(e)),
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
                let _ = child.wait();
                return Ok(());
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// `DBState::DB_IN_PRODUCTION` in PostgreSQL's `pg_control` (the same in every version since
/// 9.0).
const DB_IN_PRODUCTION: u32 = 6;

/// The cluster state of `global/pg_control`: a `u32` in the machine's byte order at offset 16,
/// after the system identifier, the control file version and the catalog version.
fn control_state(d: &DataDir) -> Option<u32> {
    let bytes = d.sub("global").ok()?.read("pg_control", 8192).ok()?;
    let b: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

/// The timeline of the last checkpoint in `global/pg_control` (`checkPointCopy.ThisTimeLineID`:
/// a `u32` at offset 48, after the state, the time, the checkpoint location and the redo
/// pointer); after a promotion and a shutdown, the new timeline.
fn control_timeline(d: &DataDir) -> Option<u32> {
    let bytes = d.sub("global").ok()?.read("pg_control", 8192).ok()?;
    let b: [u8; 4] = bytes.get(48..52)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b)).filter(|tl| *tl >= 1)
}

/// Line 8 of postmaster.pid: `starting`, `standby`, `ready` or `stopping`.
fn postmaster_status(d: &DataDir) -> Option<String> {
    let bytes = d.read("postmaster.pid", 4096).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    Some(text.lines().nth(7)?.trim().to_string())
}

/// The last `n` lines of the replay's log (its first 16 MiB).
fn tail(d: &DataDir, n: usize) -> String {
    let bytes = d.read(REPLAY_LOG, 16 << 20).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
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
            Some(Path::new("/etc/coffre/it's 100% here.toml")),
            None,
            "emr",
            "01JSESSION",
            None,
        )
        .unwrap();
        // The shell's quoting, then PostgreSQL's `%%` for a `%`; no purpose.
        assert_eq!(
            cmd,
            r"/usr/bin/coffre --config '/etc/coffre/it'\''s 100%% here.toml' wal-fetch --source emr --session 01JSESSION %f %p"
        );
        let t = Target::Xid(900);
        let text = settings_text(&t, &cmd, None).unwrap();
        assert!(text.contains("point-in-time recovery to transaction 900."));
        // PostgreSQL's quoting: a quote doubled, a backslash doubled.
        assert!(text.contains(
            r"restore_command = '/usr/bin/coffre --config ''/etc/coffre/it''\\''''s 100%% here.toml'' wal-fetch --source emr --session 01JSESSION %f %p'"
        ), "{text}");
        assert!(text.contains("recovery_target_xid = '900'\n"));
        assert!(text.contains("recovery_target_action = 'promote'\n"));
        assert!(text.contains("recovery_target_timeline = 'latest'\n"));
        let pinned = settings_text(&t, &cmd, Some(3)).unwrap();
        assert!(
            pinned.contains("recovery_target_timeline = '3'\n"),
            "{pinned}"
        );
        assert!(!pinned.contains("'latest'"), "{pinned}");
        // A drill pins its store (and reaches the daemon through its socket).
        let pinned = restore_command(
            Path::new("/usr/bin/coffre"),
            None,
            Some(Path::new("/run/coffre/coffre.sock")),
            "emr",
            "01JDRILL",
            Some("montreal s3"),
        )
        .unwrap();
        assert_eq!(
            pinned,
            r"COFFRE_SOCKET=/run/coffre/coffre.sock /usr/bin/coffre wal-fetch --source emr --session 01JDRILL --store 'montreal s3' %f %p"
        );
        let latest = settings_text(&Target::Latest, "x", None).unwrap();
        assert!(!latest.contains("recovery_target_action"));
        assert!(latest.contains("recovery_target_timeline = 'latest'"));
    }

    #[test]
    fn control_characters_are_refused_with_the_setting_named() {
        for bad in ["a\nb", "a\rb", "a\0b", "a\tb", "a\u{1}b", "a\u{7f}b"] {
            let e = conf_value("recovery_target_name", bad).unwrap_err();
            assert!(
                e.to_string().contains("setting recovery_target_name"),
                "{e}"
            );
            let e = restore_command(Path::new("/c"), Some(Path::new(bad)), None, "s", "x", None)
                .unwrap_err();
            assert!(e.to_string().contains("the config file's path"), "{e}");
            let e = restore_command(Path::new("/c"), None, None, "s", "x", Some(bad)).unwrap_err();
            assert!(e.to_string().contains("store name"), "{e}");
        }
        assert!(Target::from_options(None, None, None, Some("a\nb"), false).is_err());
    }

    /// The PostgreSQL server programs of this host (`$PGBIN`, else the newest
    /// /usr/lib/postgresql/*/bin).
    fn pg_bin() -> std::path::PathBuf {
        if let Some(p) = std::env::var_os("PGBIN").map(std::path::PathBuf::from) {
            return p;
        }
        let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, b)| b.join("postgres").is_file())
            .collect();
        found.sort();
        found.pop().map(|(_, b)| b).expect(
            "this test asks PostgreSQL itself: install it (apt-get install postgresql-15) or set PGBIN",
        )
    }

    /// A minimal data folder PostgreSQL reads the configuration of (`postgres -C`): an empty
    /// postgresql.conf and `auto` as postgresql.auto.conf, owned by user postgres when root.
    fn conf_dir(auto: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("postgresql.conf"), "").unwrap();
        std::fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(d.path().join("postgresql.auto.conf"), auto).unwrap();
        if nix::unistd::geteuid().is_root() {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(d.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown postgres: the user postgres must exist");
        }
        d
    }

    /// `postgres -C name -D dir [extra]`: the value PostgreSQL itself reads (as user postgres
    /// when root: PostgreSQL never runs as root).
    fn postgres_says(dir: &Path, name: &str, extra: &[std::ffi::OsString]) -> String {
        let postgres = pg_bin().join("postgres");
        let mut c = if nix::unistd::geteuid().is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&postgres);
            c
        } else {
            std::process::Command::new(&postgres)
        };
        let out = c
            .arg("-C")
            .arg(name)
            .arg("-D")
            .arg(dir)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postgres -C {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v = String::from_utf8(out.stdout).unwrap();
        assert_eq!(v.pop(), Some('\n'));
        v
    }

    /// Issue 27, N1/N10/N11: every value coffre writes into postgresql.auto.conf reads back in
    /// PostgreSQL exactly as meant, for the corpus the review used (`\047` once ended the
    /// shell's quoting).
    #[test]
    fn every_value_round_trips_through_postgresql_itself() {
        let long = "x'\\".repeat(1366);
        let corpus = [
            "'",
            "\\",
            "\\047",
            "x\\047; touch /tmp/pwned; echo \\047",
            "O'Brien",
            "é✓",
            long.as_str(),
            "/var/lib/coffre folder/with spaces",
            "100% %p %f",
        ];
        for v in corpus {
            let path = Path::new("/opt").join(v);
            let cmd = restore_command(&path, Some(&path), Some(&path), v, "01J", Some(v)).unwrap();
            let target = match Target::from_options(None, None, None, Some(v), false) {
                Ok(Some(t)) => t,
                _ => Target::Latest,
            };
            let text = settings_text(&target, &cmd, None).unwrap();
            let d = conf_dir(&text);
            assert_eq!(
                postgres_says(d.path(), "restore_command", &[]),
                cmd,
                "{v:?}"
            );
            if let Target::Name(n) = &target {
                assert_eq!(&postgres_says(d.path(), "recovery_target_name", &[]), n);
            }
            // What the shell makes of each word: the value itself.
            let word = shell_quote(v);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {word}"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), v, "{word}");
        }
        // A restore point with a quote and backslashes, and the timeline pinned.
        let t = Target::from_options(None, None, None, Some(r"it's \047 \n"), false)
            .unwrap()
            .unwrap();
        let d = conf_dir(&settings_text(&t, "c", Some(2)).unwrap());
        assert_eq!(
            postgres_says(d.path(), "recovery_target_name", &[]),
            r"it's \047 \n"
        );
        assert_eq!(
            postgres_says(d.path(), "recovery_target_timeline", &[]),
            "2"
        );
    }

    /// Issue 27, N5: every setting coffre forces exists in the server and wins over what the
    /// backup's postgresql.auto.conf says.
    #[test]
    fn forced_settings_exist_and_win_over_the_backups_configuration() {
        let planted = "recovery_end_command = 'touch /tmp/x'\narchive_cleanup_command = 'touch /tmp/x'\n\
             shared_preload_libraries = 'nonexistent_lib'\nssl = on\nssl_passphrase_command = 'touch /tmp/x'\n\
             archive_mode = on\narchive_command = 'touch /tmp/x'\nrestore_command = 'touch /tmp/x'\n\
             dynamic_library_path = '/tmp'\nexternal_pid_file = '/tmp/x'\nlogging_collector = on\n";
        let d = conf_dir(planted);
        let sockets = Path::new("/run/coffre replay,1");
        let forced = forced_settings(d.path(), sockets, "coffre wal-fetch %f %p", 15);
        assert_eq!(forced.len(), FORCED.len());
        assert_eq!(
            forced_settings(d.path(), sockets, "c", 14).len(),
            FORCED.len() - 1
        );
        let args = setting_args(&forced);
        for (name, value) in &forced {
            let said = postgres_says(d.path(), name, &args);
            let want = match *name {
                // Printed in decimal.
                "unix_socket_permissions" => "448".into(),
                _ => value.to_string_lossy(),
            };
            assert_eq!(said, want, "{name}");
        }
        assert_eq!(
            postgres_says(d.path(), "unix_socket_directories", &args),
            "\"/run/coffre replay,1\""
        );
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
        // A recovery.signal already there (a regular file) is made anew.
        std::fs::write(d.path().join("recovery.signal"), "old").unwrap();
        write_recovery(d.path(), "\nrestore_command = 'c'\n").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("recovery.signal")).unwrap(),
            b""
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap(),
            "archive_mode = 'on'\n\nrestore_command = 'c'\n"
        );
    }

    /// Issue 27, N4: a planted base backup whose control files are symlinks to a file outside:
    /// the recovery settings are refused, nothing is written through the link, and the backup
    /// is called suspicious.
    #[test]
    fn a_planted_base_backup_with_symlinked_control_files_is_refused() {
        for planted in [
            "recovery.signal",
            "postgresql.auto.conf",
            "PG_VERSION",
            "backup_label",
        ] {
            let d = tempfile::tempdir().unwrap();
            let outside = d.path().join("master.key");
            std::fs::write(&outside, "SECRET").unwrap();
            let data = d.path().join("base");
            std::fs::create_dir(&data).unwrap();
            for f in ["PG_VERSION", "backup_label", "postgresql.auto.conf"] {
                std::fs::write(data.join(f), "15\n").unwrap();
            }
            let _ = std::fs::remove_file(data.join(planted));
            std::os::unix::fs::symlink(&outside, data.join(planted)).unwrap();
            let e = write_recovery(&data, "\nrestore_command = 'c'\n").unwrap_err();
            assert!(e.to_string().contains("suspicious"), "{planted}: {e}");
            assert_eq!(std::fs::read_to_string(&outside).unwrap(), "SECRET");
            assert_eq!(
                std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default(),
                if planted == "postgresql.auto.conf" {
                    "SECRET"
                } else {
                    "15\n"
                },
                "{planted}"
            );
            // PG_VERSION is read the same way: no version from a link.
            if planted == "PG_VERSION" {
                let dir = DataDir::open(&data).unwrap();
                assert_eq!(pg_version(&dir), None);
            }
        }
    }

    /// A non-root daemon with the capabilities docs/security.md grants for drills
    /// (CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_DAC_OVERRIDE as ambient capabilities of a
    /// systemd drop-in) starts a drill's PostgreSQL as drill.pg-user holding none of them.
    /// Linux keeps every capability across a switch between two non-root users and passes the
    /// ambient ones on through exec: without dropping them, PostgreSQL (and whatever a database
    /// superuser makes it run: COPY TO PROGRAM over its socket, restore_command's children) ran
    /// with CAP_SETUID and CAP_DAC_OVERRIDE, one setuid(0) away from root. The test runs itself
    /// again as user `daemon` with those ambient capabilities (setpriv), as such a daemon does,
    /// and a stand-in `postgres` prints its own capability sets into coffre-replay.log.
    #[test]
    fn a_drills_postgresql_holds_none_of_the_daemons_capabilities() {
        use std::os::unix::fs::PermissionsExt;
        const INNER: &str = "COFFRE_TEST_CAPS_INNER";
        if let Some(d) = std::env::var_os(INNER) {
            return replay_without_capabilities_as_bin(Path::new(&d));
        }
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).is_file());
        let users = ["daemon", "bin"]
            .iter()
            .all(|u| nix::unistd::User::from_name(u).ok().flatten().is_some());
        let (Some(setpriv), true, true) = (setpriv, nix::unistd::geteuid().is_root(), users) else {
            eprintln!("skipped: needs root, setpriv and the users daemon and bin");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(
            bin.join("postgres"),
            "#!/bin/sh\nid\ngrep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(bin.join("postgres"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let data = d.path().join("data");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&data)
            .unwrap();
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        let caps = "+chown,+dac_override,+setgid,+setuid";
        let out = std::process::Command::new(setpriv)
            .args(["--reuid=daemon", "--regid=daemon", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ops::pitr::recovery::tests::a_drills_postgresql_holds_none_of_the_daemons_capabilities",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, d.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the run as a non-root daemon with capabilities failed:\n{text}"
        );
    }

    /// The inner run of the test above (user `daemon`, four ambient capabilities): the stand-in
    /// PostgreSQL, started as `bin`, must hold no capability at all.
    fn replay_without_capabilities_as_bin(d: &Path) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status.contains("CapAmb:\t00000000000000c3"),
            "the inner run should hold the four ambient capabilities: {status}"
        );
        let bin = nix::unistd::User::from_name("bin").unwrap().unwrap();
        let user = PgUser {
            name: "bin".into(),
            uid: bin.uid.as_raw(),
            gid: bin.gid.as_raw(),
        };
        let e = replay_as(&d.join("data"), Some(&d.join("bin")), Some(&user), "true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("uid=") && e.contains("CapEff:"), "{e}");
        // With the user's own groups (its supplementary ones too: the socket's group).
        let id = std::process::Command::new("id")
            .arg("bin")
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&id.stdout);
        assert!(
            e.contains(id.trim()),
            "PostgreSQL ran as another identity than `{}`: {e}",
            id.trim()
        );
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert!(
                e.contains(&format!("{set}:\t0000000000000000")),
                "PostgreSQL kept {set} of the daemon: {e}"
            );
        }
    }
}
