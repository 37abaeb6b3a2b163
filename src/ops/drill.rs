//! Disaster-recovery drills: restore a snapshot from one store into a scratch folder (every
//! segment, the sealed SHA-256 and the keyed plaintext digest are checked by the restore), run the
//! source's verify command on it, record the time to restore and to verify (RTO), and wipe the
//! scratch folder whatever happens.
//!
//! Invariants: a drill is an access to protected data and goes through the access log like any
//! restore (action `drill`); the verify command's output is discarded (it may print patient data);
//! reports hold ids, names, sizes, hashes, times and exit codes only.
//!
//! May call: app, audit, catalog, clock, config, format, fsutil, store, and in ops:
//! `snapshot::restore`, `wal::archive` (a recovery session), `pitr::recovery` (settings, replay)
//! and `lifecycle::wal_retention` (the WAL index). The highest room: nothing in ops calls it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::config::DrillPick;
use crate::ids::SnapshotId;
use crate::ops::snapshot::restore::{Request, Selector};

/// Result of one drill of one snapshot from one store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub drill: String,
    pub source: String,
    pub store: String,
    pub snapshot: Option<SnapshotId>,
    pub started: String,
    pub finished: String,
    pub ok: bool,
    /// `restore`, `verify` or `done`: how far it got.
    pub stage: String,
    pub error: Option<String>,
    pub restore_seconds: f64,
    pub verify_seconds: f64,
    /// Time to a verified, usable copy: restore + verify.
    pub rto_seconds: f64,
    pub size: u64,
    pub sealed_sha256: Option<String>,
    pub verify_exit: Option<i32>,
    /// The source's verify command ran and passed: the copy works, not only its bytes. False
    /// for a drill without `verify-command` (it proves the bytes come back intact, no more).
    #[serde(default)]
    pub verified: bool,
    pub scratch_wiped: bool,
    pub fresh_catalog: bool,
    /// A point-in-time drill: where the replay stopped (an LSN, in a WAL file archived at a
    /// known time), and how long the replay took (part of the RTO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub replay_seconds: f64,
    /// Of the replay: WAL files fetched (all from the drilled store), how many the prefetch
    /// had ready, and the time spent serving them (PostgreSQL waiting on coffre).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_fetched: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_prefetch_hits: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_seconds: Option<f64>,
}

/// Why a drill failed, or could not start: what failed, on which source, store or user, and
/// what to do. A failed stage lands in its report's `error`.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("scratch folder {}: {source}", .dir.display())]
    Scratch {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("drill exceeded its time limit of {}", humantime::format_duration(*.limit))]
    TimeLimit { limit: Duration },
    #[error(transparent)]
    Restore(#[from] crate::ops::snapshot::restore::RestoreError),
    #[error("verify command cannot start: {0}")]
    VerifyStart(std::io::Error),
    #[error("verify command failed (exit {exit}): the restored copy does not work")]
    VerifyFailed { exit: String },
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("source `{name}` is not configured and the catalog knows no snapshot of it; the configured sources are {configured}")]
    UnknownSource { name: String, configured: String },
    #[error("store `{store}` is not configured; the configured stores are {configured}")]
    UnknownStore { store: String, configured: String },
    #[error("source `{name}` has no snapshot to drill (run `coffre catalog rebuild` on a new host, or use --fresh-catalog)")]
    NoSnapshot { name: String },
    #[error("source `{name}` has nothing to replay yet: a point-in-time drill needs a base backup and at least two archived WAL segments after its start")]
    NothingToReplay { name: String },
    #[error("a point-in-time drill runs PostgreSQL as a user of its own, never as the daemon's user nor root: set drill.pg-user (e.g. \"postgres\", a member of audit.operators-group)")]
    PgUserUnset,
    #[error("drill.pg-user `{name}`: {source}")]
    PgUserLookup {
        name: String,
        source: nix::errno::Errno,
    },
    #[error("drill.pg-user `{name}` is not a user of this host")]
    PgUserMissing { name: String },
    #[error("drill.pg-user `{name}` is {is}: PostgreSQL started on a backup must not run as the daemon's user nor root (a database superuser could reach the daemon's keys through the backup's configuration). Name a user of its own, e.g. postgres")]
    PgUserUnsafe { name: String, is: &'static str },
    #[error("a point-in-time drill runs PostgreSQL as drill.pg-user `{name}`, and this daemon (uid {euid}) cannot switch to it: it lacks {missing}. Run the daemon as root, or grant it CAP_CHOWN CAP_DAC_OVERRIDE CAP_SETGID CAP_SETUID in a systemd drop-in (AmbientCapabilities= and CapabilityBoundingSet= with those, SystemCallFilter=@setuid @chown)")]
    CannotSwitch {
        name: String,
        euid: u32,
        missing: String,
    },
    #[error("where is coffre: {0}")]
    CurrentExe(std::io::Error),
    #[error(transparent)]
    Wal(#[from] crate::ops::wal::archive::WalError),
    #[error(transparent)]
    Pitr(#[from] crate::ops::pitr::recovery::PitrError),
    #[error("chown the scratch copy to {user}: {source}")]
    Chown {
        user: String,
        source: std::io::Error,
    },
    #[error("replay: {0}")]
    ReplayTask(tokio::task::JoinError),
}

/// What to drill.
#[derive(Debug, Clone, Default)]
pub struct DrillRequest {
    pub source: Option<String>,
    /// None: every store (or the source's `drill.stores`).
    pub store: Option<String>,
    pub snapshot: Option<SnapshotId>,
    pub fresh_catalog: bool,
    pub actor: String,
    pub purpose: String,
}

fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Substitute `{dir}`, `{file}`, `{port}` (paths shell-quoted).
pub(crate) fn render_command(cmd: &str, dir: &Path, file: &Path, port: u16) -> String {
    cmd.replace("{dir}", &shell_quote(dir))
        .replace("{file}", &shell_quote(file))
        .replace("{port}", &port.to_string())
}

fn scratch_root(app: &Coffre, source: &str) -> PathBuf {
    app.config
        .source(source)
        .and_then(|s| s.drill.scratch_dir.clone())
        .unwrap_or_else(|| app.config.state_dir.join("drills"))
}

fn pick_snapshot(app: &Coffre, source: &str, pick: DrillPick) -> Option<SnapshotId> {
    let list = app.catalog.list(Some(source)).ok()?;
    match pick {
        DrillPick::Latest => list.last().map(|e| e.manifest.snapshot),
        DrillPick::Random => {
            if list.is_empty() {
                None
            } else {
                let i = rand::random::<u64>() as usize % list.len();
                Some(list[i].manifest.snapshot)
            }
        }
    }
}

/// Drill one snapshot from one store: restore it into a fresh scratch folder, run the verify
/// command on it, all within the drill's time limit; wipe the scratch folder whatever happened;
/// record the result in the access log and the catalog.
pub(crate) async fn drill_one(
    app: &Coffre,
    source: &str,
    store: &str,
    snapshot: SnapshotId,
    req: &DrillRequest,
) -> DrillReport {
    let cfg = app
        .config
        .source(source)
        .map(|s| s.drill.clone())
        .unwrap_or_default();
    let mut report = DrillReport::start(source, store, snapshot, req.fresh_catalog);
    let root = scratch_root(app, source);
    let scratch = root.join(format!("drill-{}", report.drill));
    let limit = cfg.timeout.unwrap_or(Duration::from_secs(3600));
    let t0 = Instant::now();
    let run = async {
        for dir in [&root, &scratch] {
            crate::fsutil::create_private_dir(dir).map_err(|source| DrillError::Scratch {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let to = restore_into(app, &scratch, source, store, snapshot, req, &mut report).await?;
        report.restore_seconds = t0.elapsed().as_secs_f64();
        report.stage = "verify".into();
        if let Some(cmd) = &cfg.verify_command {
            run_verify(cmd, &scratch, &to, source, snapshot, &mut report).await?;
        }
        report.stage = "done".into();
        Ok::<(), DrillError>(())
    };
    let result = within(limit, run).await;
    finish(app, req, report, &scratch, t0, result)
}

/// A drill's stages, stopped at `limit`.
async fn within(
    limit: Duration,
    run: impl std::future::Future<Output = Result<(), DrillError>>,
) -> Result<(), DrillError> {
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or(Err(DrillError::TimeLimit { limit }))
}

/// The end of every drill: its RTO (since `t0`) and outcome, the scratch folder wiped whatever
/// happened, the result recorded.
fn finish(
    app: &Coffre,
    req: &DrillRequest,
    mut report: DrillReport,
    scratch: &Path,
    t0: Instant,
    result: Result<(), DrillError>,
) -> DrillReport {
    report.rto_seconds = t0.elapsed().as_secs_f64();
    match result {
        Ok(()) => report.ok = true,
        Err(e) => report.error = Some(e.to_string()),
    }
    report.verified = report.is_verified();
    let _ = std::fs::remove_dir_all(scratch);
    report.scratch_wiped = !scratch.exists();
    report.finished = crate::clock::now_rfc3339();
    record(app, req, &report);
    report
}

impl DrillReport {
    /// A successful drill whose verify command passed (also for reports recorded before the
    /// `verified` field: their `verify_exit` says it).
    pub fn is_verified(&self) -> bool {
        self.ok && self.verify_exit == Some(0)
    }

    fn start(source: &str, store: &str, snapshot: SnapshotId, fresh_catalog: bool) -> DrillReport {
        DrillReport {
            drill: SnapshotId::new().to_string(),
            source: source.into(),
            store: store.into(),
            snapshot: Some(snapshot),
            started: crate::clock::now_rfc3339(),
            finished: String::new(),
            ok: false,
            stage: "restore".into(),
            error: None,
            restore_seconds: 0.0,
            verify_seconds: 0.0,
            rto_seconds: 0.0,
            size: 0,
            sealed_sha256: None,
            verify_exit: None,
            verified: false,
            scratch_wiped: false,
            fresh_catalog,
            target: None,
            replay_seconds: 0.0,
            wal_fetched: None,
            wal_prefetch_hits: None,
            fetch_seconds: None,
        }
    }
}

/// Restore the snapshot from `store` into `scratch` (under its original name when that is a
/// safe one); returns where it landed.
async fn restore_into(
    app: &Coffre,
    scratch: &Path,
    source: &str,
    store: &str,
    snapshot: SnapshotId,
    req: &DrillRequest,
    report: &mut DrillReport,
) -> Result<PathBuf, DrillError> {
    let name = app
        .catalog
        .get(&snapshot)
        .ok()
        .flatten()
        .map(|e| e.manifest.original_name)
        .filter(|n| crate::ids::is_valid_name(n))
        .unwrap_or_else(|| "snapshot".into());
    let to = scratch.join(&name);
    let rreq = Request {
        source: source.into(),
        snapshot: Selector::Id(snapshot),
        to: to.clone(),
        store: Some(store.into()),
        purpose: req.purpose.clone(),
        actor: req.actor.clone(),
        action: "drill".into(),
        progress: false,
        stream: None,
    };
    let r = crate::ops::snapshot::restore::restore(app, &rreq).await?;
    report.size = r.size;
    report.sealed_sha256 = Some(r.sealed_sha256.clone());
    Ok(to)
}

/// Run the source's verify command on the restored copy (its output discarded: it may print
/// patient data); a non-zero exit fails the drill.
async fn run_verify(
    cmd: &str,
    scratch: &Path,
    to: &Path,
    source: &str,
    snapshot: SnapshotId,
    report: &mut DrillReport,
) -> Result<(), DrillError> {
    let dir = if to.is_dir() { to } else { scratch };
    let line = render_command(cmd, dir, to, free_port());
    let t1 = Instant::now();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&line)
        .env("COFFRE_DRILL_SOURCE", source)
        .env("COFFRE_DRILL_SNAPSHOT", snapshot.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(DrillError::VerifyStart)?;
    report.verify_seconds = t1.elapsed().as_secs_f64();
    report.verify_exit = status.code();
    if !status.success() {
        return Err(DrillError::VerifyFailed {
            exit: status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "by signal".into()),
        });
    }
    Ok(())
}

/// The drill's result in the access log (`drill-result`) and the catalog.
fn record(app: &Coffre, req: &DrillRequest, report: &DrillReport) {
    let _ = app.audit.append(NewEntry {
        actor: req.actor.clone(),
        action: "drill-result".into(),
        target: Target {
            source: Some(report.source.clone()),
            snapshot: report.snapshot.map(|s| s.to_string()),
            store: Some(report.store.clone()),
            sealed_sha256: report.sealed_sha256.clone(),
            epoch: None,
        },
        purpose: req.purpose.clone(),
        outcome: if report.ok {
            format!(
                "ok: rto {:.1} s, scratch wiped: {}",
                report.rto_seconds, report.scratch_wiped
            )
        } else {
            format!(
                "failed at {}: {}",
                report.stage,
                report.error.clone().unwrap_or_default()
            )
        },
        exposes: None,
    });
    if let Ok(json) = serde_json::to_string(report) {
        let _ = app
            .catalog
            .put_drill(&report.source, &report.store, &json, report.ok);
    }
}

/// Drill every requested source from every requested store.
pub async fn drill(app: &Coffre, req: &DrillRequest) -> Result<Vec<DrillReport>, DrillError> {
    if req.fresh_catalog {
        app.rebuild_catalog().await?;
        crate::ops::lifecycle::wal_retention::reindex(app).await;
    }
    let mut sources: Vec<String> = match &req.source {
        Some(s) => vec![s.clone()],
        None => app.config.sources.iter().map(|s| s.name.clone()).collect(),
    };
    if sources.is_empty() {
        // A new host may drill sources it only knows from the stores.
        sources = app
            .catalog
            .summary()
            .map(|m| m.into_keys().collect())
            .unwrap_or_default();
    }
    let mut out = Vec::new();
    for source in sources {
        let cfg = match app.config.source(&source) {
            Some(s) => s.drill.clone(),
            // A source no longer configured is drilled as long as its snapshots are known.
            None if app.catalog.latest(&source).ok().flatten().is_some() => Default::default(),
            None => {
                return Err(DrillError::UnknownSource {
                    name: source,
                    configured: app.config.source_names(),
                })
            }
        };
        let stores: Vec<String> = match (&req.store, &cfg.stores) {
            (Some(s), _) => {
                if app.store(s).is_none() {
                    return Err(DrillError::UnknownStore {
                        store: s.clone(),
                        configured: app.config.store_names(),
                    });
                }
                vec![s.clone()]
            }
            (None, Some(list)) => list.clone(),
            (None, None) => app.stores.iter().map(|s| s.name.clone()).collect(),
        };
        let pitr = cfg.pitr && app.config.source(&source).is_some_and(|s| s.pitr.is_some());
        if pitr {
            let point = pick_point(app, &source)?;
            for store in stores {
                out.push(drill_pitr(app, &source, &store, &point, req).await);
            }
            continue;
        }
        let snapshot = match req.snapshot {
            Some(id) => Some(id),
            None => pick_snapshot(app, &source, cfg.pick),
        };
        let Some(snapshot) = snapshot else {
            return Err(DrillError::NoSnapshot { name: source });
        };
        for store in stores {
            out.push(drill_one(app, &source, &store, snapshot, req).await);
        }
    }
    Ok(out)
}

/// Where a point-in-time drill replays to: a random LSN inside a random archived segment (never
/// the newest of its timeline, so that WAL past the target exists and the replay can stop
/// there), on that segment's timeline, from the newest base backup that starts before it.
#[derive(Debug, Clone)]
pub struct PitrPoint {
    pub base: SnapshotId,
    pub lsn: String,
    pub timeline: u32,
    pub segment: String,
    pub archived: String,
}

fn pick_point(app: &Coffre, source: &str) -> Result<PitrPoint, DrillError> {
    use crate::format::wal::{WalFileKind, WalName};
    let mut by_tl: std::collections::BTreeMap<u32, Vec<(WalName, crate::catalog::WalRow)>> =
        Default::default();
    for r in app.catalog.list_wal(source)? {
        if let Ok(w) = WalName::parse(&r.name) {
            if w.kind() == WalFileKind::Segment {
                by_tl.entry(w.timeline()).or_default().push((w, r));
            }
        }
    }
    let bases: Vec<(u32, u64, SnapshotId)> = app
        .catalog
        .list(Some(source))?
        .into_iter()
        .filter(|e| e.manifest.kind == crate::store::SnapshotKind::Directory)
        .filter_map(|e| {
            let start = WalName::parse(e.manifest.pg_wal_start.as_deref()?).ok()?;
            Some((start.timeline(), start.position(), e.manifest.snapshot))
        })
        .collect();
    let usable = |w: &WalName| {
        bases
            .iter()
            .filter(|(tl, p, _)| *tl <= w.timeline() && *p <= w.position())
            .max_by_key(|(_, p, id)| (*p, *id))
            .map(|(_, _, id)| *id)
    };
    let mut candidates = Vec::new();
    for segs in by_tl.values_mut() {
        segs.sort_by_key(|(w, _)| w.position());
        segs.pop(); // the newest of the timeline: the replay must find WAL after its target
        for (w, r) in segs.iter() {
            if let Some(base) = usable(w) {
                candidates.push((w.clone(), r.clone(), base));
            }
        }
    }
    if candidates.is_empty() {
        return Err(DrillError::NothingToReplay {
            name: source.to_string(),
        });
    }
    let (w, row, base) = &candidates[rand::random::<u64>() as usize % candidates.len()];
    let size = if row.size.is_power_of_two() {
        row.size
    } else {
        16 << 20
    };
    let per_log = crate::format::wal::segments_per_log(size);
    let (log, seg) = (w.position() >> 32, w.position() & 0xFFFF_FFFF);
    let lo = (seg % per_log) * size + rand::random::<u64>() % size;
    Ok(PitrPoint {
        base: *base,
        lsn: format!("{log:X}/{lo:X}"),
        timeline: w.timeline(),
        segment: w.to_string(),
        archived: row.created.clone(),
    })
}

/// `chown -R` of the scratch copy to the user PostgreSQL runs as.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    if root.is_dir() && !root.is_symlink() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Capabilities a non-root daemon needs to run PostgreSQL as `drill.pg-user` on a scratch copy
/// it restored: CAP_CHOWN (the copy), CAP_DAC_OVERRIDE (watch, verify and wipe the copy),
/// CAP_SETGID and CAP_SETUID (the switch). Bits of /proc/self/status `CapEff`.
const SWITCH_CAPS: [(u32, &str); 4] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

/// The effective capabilities of this process (0 when unknown).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The user a point-in-time drill runs PostgreSQL as: `drill.pg-user`, which must be set, name
/// a user of this host other than the daemon's own (effective) uid and root, and be one the
/// daemon can switch to. PostgreSQL started on a backup runs whatever a database superuser put
/// in it within PostgreSQL's own rights; those must never be the daemon's (its keys).
fn drill_pg_user(
    configured: Option<&str>,
) -> Result<crate::ops::pitr::recovery::PgUser, DrillError> {
    let name = configured.ok_or(DrillError::PgUserUnset)?;
    let u = nix::unistd::User::from_name(name)
        .map_err(|source| DrillError::PgUserLookup {
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| DrillError::PgUserMissing {
            name: name.to_string(),
        })?;
    let euid = nix::unistd::geteuid().as_raw();
    let user = crate::ops::pitr::recovery::PgUser {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    };
    check_pg_user(user, euid, effective_caps())
}

/// [`drill_pg_user`]'s rules, given the daemon's effective uid and capabilities.
fn check_pg_user(
    user: crate::ops::pitr::recovery::PgUser,
    euid: u32,
    caps: u64,
) -> Result<crate::ops::pitr::recovery::PgUser, DrillError> {
    if user.uid == euid || user.uid == 0 {
        return Err(DrillError::PgUserUnsafe {
            name: user.name,
            is: if user.uid == 0 {
                "root"
            } else {
                "the daemon's own user"
            },
        });
    }
    let missing: Vec<&str> = SWITCH_CAPS
        .iter()
        .filter(|(bit, _)| caps & (1 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if euid != 0 && !missing.is_empty() {
        return Err(DrillError::CannotSwitch {
            name: user.name,
            euid,
            missing: missing.join(", "),
        });
    }
    Ok(user)
}

/// One point-in-time drill from one store: restore the base backup from it, write the recovery
/// settings (WAL fetched through the daemon's socket, in one recovery session), replay with
/// PostgreSQL to the point and promote, run the verify command on the database; RTO = all of it.
async fn drill_pitr(
    app: &Coffre,
    source: &str,
    store: &str,
    point: &PitrPoint,
    req: &DrillRequest,
) -> DrillReport {
    let cfg = app
        .config
        .source(source)
        .map(|s| s.drill.clone())
        .unwrap_or_default();
    let mut report = DrillReport::start(source, store, point.base, req.fresh_catalog);
    report.target = Some(format!(
        "lsn {} in WAL file {} (archived {})",
        point.lsn, point.segment, point.archived
    ));
    let root = cfg.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = root.join(format!("coffre-pitr-drill-{}", report.drill));
    let limit = cfg.timeout.unwrap_or(Duration::from_secs(3600));
    let t0 = Instant::now();
    let run = async {
        // Refused before anything is restored.
        let user = drill_pg_user(cfg.pg_user.as_deref())?;
        crate::fsutil::create_private_dir(&scratch).map_err(|source| DrillError::Scratch {
            dir: scratch.clone(),
            source,
        })?;
        let to = restore_into(app, &scratch, source, store, point.base, req, &mut report).await?;
        report.restore_seconds = t0.elapsed().as_secs_f64();
        report.stage = "replay".into();
        let exe = std::env::current_exe().map_err(DrillError::CurrentExe)?;
        let socket = app.config.control_socket_path();
        // The replay's fetches go to a session coffre opens, pinned to the drilled store, with
        // the drill's purpose (never in a PostgreSQL setting).
        let session = crate::ops::wal::archive::open_session(
            app,
            Some(&report.drill),
            source,
            Some(store),
            &req.purpose,
        )?;
        let command = crate::ops::pitr::recovery::restore_command(
            &exe,
            None,
            Some(&socket),
            source,
            &session,
            Some(store),
        )?;
        let target = crate::ops::pitr::recovery::Target::Lsn(point.lsn.clone());
        // The point's own timeline.
        let settings =
            crate::ops::pitr::recovery::settings_text(&target, &command, Some(point.timeline))?;
        crate::ops::pitr::recovery::write_recovery(&to, &settings)?;
        chown_tree(&scratch, user.uid, user.gid).map_err(|source| DrillError::Chown {
            user: user.name.clone(),
            source,
        })?;
        let t1 = Instant::now();
        let pg_bin = cfg.pg_bin.clone();
        let dir = to.clone();
        tokio::task::spawn_blocking(move || {
            crate::ops::pitr::recovery::replay_as(&dir, pg_bin.as_deref(), Some(&user), &command)
        })
        .await
        .map_err(DrillError::ReplayTask)??;
        report.replay_seconds = t1.elapsed().as_secs_f64();
        if let Ok(Some(s)) = app.catalog.wal_session(&report.drill) {
            report.wal_fetched = Some(s.count);
            report.wal_prefetch_hits = Some(s.hits);
            report.fetch_seconds = Some(s.fetch_ms as f64 / 1000.0);
        }
        report.stage = "verify".into();
        if let Some(cmd) = &cfg.verify_command {
            run_verify(cmd, &scratch, &to, source, point.base, &mut report).await?;
        }
        report.stage = "done".into();
        Ok::<(), DrillError>(())
    };
    let result = within(limit, run).await;
    finish(app, req, report, &scratch, t0, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pitr::recovery::PgUser;

    fn user(uid: u32) -> PgUser {
        PgUser {
            name: "postgres".into(),
            uid,
            gid: uid,
        }
    }

    /// Issue 27, N5: a PITR drill never runs PostgreSQL as the daemon's user or root, and a
    /// non-root daemon must be able to switch users.
    #[test]
    fn a_pitr_drill_needs_a_user_of_its_own_that_the_daemon_can_switch_to() {
        let all = SWITCH_CAPS.iter().fold(0u64, |c, (bit, _)| c | 1 << bit);
        // Root switches to anyone but itself.
        assert_eq!(check_pg_user(user(105), 0, 0).unwrap(), user(105));
        let e = check_pg_user(user(0), 0, 0).unwrap_err().to_string();
        assert!(e.contains("is root"), "{e}");
        // A non-root daemon: never as itself.
        let e = check_pg_user(user(990), 990, all).unwrap_err().to_string();
        assert!(e.contains("the daemon's own user"), "{e}");
        // Another user only with the capabilities, and the error says how to grant them.
        let e = check_pg_user(user(105), 990, 0).unwrap_err().to_string();
        assert!(
            e.contains("cannot switch") && e.contains("CAP_SETUID") && e.contains("drop-in"),
            "{e}"
        );
        let e = check_pg_user(user(105), 990, all & !(1 << 7))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks CAP_SETUID"), "{e}");
        assert_eq!(check_pg_user(user(105), 990, all).unwrap(), user(105));
        // Unset: refused.
        let e = drill_pg_user(None).unwrap_err().to_string();
        assert!(e.contains("set drill.pg-user"), "{e}");
    }
}
