//! Disaster-recovery drills: restore a snapshot from one store into a scratch folder (every
//! segment, the sealed SHA-256 and the keyed plaintext digest are checked by the restore), run the
//! source's verify command on it, record the time to restore and to verify (RTO), and wipe the
//! scratch folder whatever happens.
//!
//! Invariants: a drill is an access to protected data and goes through the access log like any
//! restore (action `drill`); the verify command's output is discarded (it may print patient data);
//! reports hold ids, names, sizes, hashes, times and exit codes only.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::config::DrillPick;
use crate::ids::SnapshotId;
use crate::ops::restore::{Request, Selector};

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
    pub scratch_wiped: bool,
    pub fresh_catalog: bool,
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
            crate::fsutil::create_private_dir(dir)
                .map_err(|e| format!("scratch folder {}: {e}", dir.display()))?;
        }
        let to = restore_into(app, &scratch, source, store, snapshot, req, &mut report).await?;
        report.restore_seconds = t0.elapsed().as_secs_f64();
        report.stage = "verify".into();
        if let Some(cmd) = &cfg.verify_command {
            run_verify(cmd, &scratch, &to, source, snapshot, &mut report).await?;
        }
        report.stage = "done".into();
        Ok::<(), String>(())
    };
    let result = tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
        Err(format!(
            "drill exceeded its time limit of {}",
            humantime::format_duration(limit)
        ))
    });
    report.rto_seconds = t0.elapsed().as_secs_f64();
    match result {
        Ok(()) => report.ok = true,
        Err(e) => report.error = Some(e),
    }
    // Wipe the scratch folder whatever happened.
    let _ = std::fs::remove_dir_all(&scratch);
    report.scratch_wiped = !scratch.exists();
    report.finished = crate::clock::now_rfc3339();
    record(app, req, &report);
    report
}

impl DrillReport {
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
            scratch_wiped: false,
            fresh_catalog,
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
) -> Result<PathBuf, String> {
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
    let r = crate::ops::restore::restore(app, &rreq)
        .await
        .map_err(|e| e.to_string())?;
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
) -> Result<(), String> {
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
        .map_err(|e| format!("verify command cannot start: {e}"))?;
    report.verify_seconds = t1.elapsed().as_secs_f64();
    report.verify_exit = status.code();
    if !status.success() {
        return Err(format!(
            "verify command failed (exit {}): the restored copy does not work",
            status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "by signal".into())
        ));
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
pub async fn drill(app: &Coffre, req: &DrillRequest) -> Result<Vec<DrillReport>, String> {
    if req.fresh_catalog {
        app.rebuild_catalog().await.map_err(|e| e.to_string())?;
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
                return Err(format!(
                    "source `{source}` is not configured and the catalog knows no snapshot of it; the configured sources are {}",
                    app.config.source_names()
                ))
            }
        };
        let stores: Vec<String> = match (&req.store, &cfg.stores) {
            (Some(s), _) => {
                if app.store(s).is_none() {
                    return Err(format!(
                        "store `{s}` is not configured; the configured stores are {}",
                        app.config.store_names()
                    ));
                }
                vec![s.clone()]
            }
            (None, Some(list)) => list.clone(),
            (None, None) => app.stores.iter().map(|s| s.name.clone()).collect(),
        };
        let snapshot = match req.snapshot {
            Some(id) => Some(id),
            None => pick_snapshot(app, &source, cfg.pick),
        };
        let Some(snapshot) = snapshot else {
            return Err(format!("source `{source}` has no snapshot to drill (run `coffre catalog rebuild` on a new host, or use --fresh-catalog)"));
        };
        for store in stores {
            out.push(drill_one(app, &source, &store, snapshot, req).await);
        }
    }
    Ok(out)
}
