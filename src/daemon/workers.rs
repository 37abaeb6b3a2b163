//! The daemon's periodic workers, under one runner: each worker is a name, a wait between rounds
//! and a round; the runner owns the loop (shutdown, config reloads, the worker's state on the
//! status page) so that every worker stops, reloads and reports the same way.
//!
//! | worker   | waits                                  | a round                                   |
//! |----------|----------------------------------------|-------------------------------------------|
//! | intake   | a file-system event or `scan-interval` | protect each complete, new snapshot       |
//! | catch-up | `catch-up-interval`                    | probe stores, copy missing replicas, replicate the access log |
//! | scrub    | `scrub-every`                          | re-hash every replica, repair bad ones    |
//! | drill    | 5 s                                    | drill each source whose `drill.every` is due |
//! | wal-spool | a WAL file spooled, or 5 s            | archive the WAL acknowledged from the spool (`archive-async`) |
//! | shred    | `shred.every` (a round at start)       | shred due epochs and expired access-log segments, behind the clock guard |
//!
//! State: `idle` between rounds, `busy` while a round does work (the worker says when: a drill
//! round that finds nothing due is not a run), `backing-off` after a round that failed (it is
//! tried again at the next round), `stopped` after shutdown or a halt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::intake::{self, Journal, JournalState};
use super::replicate;
use crate::app::Coffre;
use crate::status::{Runtime, WorkState, Worker};

/// How a round ended, which sets the worker's state until the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Done (or nothing to do): `idle`.
    Done,
    /// Something failed and is tried again at the next round: `backing-off`.
    Failed,
    /// The worker must not run again until an operator restarts the daemon: `stopped`.
    Halt,
}

/// What a round is given: the worker's own view of the runtime and the shutdown token.
pub struct RoundEnv {
    worker: Worker,
    pub rt: Arc<Runtime>,
    pub cancel: CancellationToken,
}

impl RoundEnv {
    /// The round starts real work (counted as a run on the status page).
    pub(crate) fn busy(&self) {
        self.rt.worker(self.worker, WorkState::Busy);
    }
    pub(crate) fn idle(&self) {
        self.rt.worker(self.worker, WorkState::Idle);
    }
    /// Record an error of this worker (status page, `coffre_worker_errors_total`).
    pub fn error(&self, e: &str) {
        self.rt.worker_error(self.worker, e);
    }
}

/// One periodic worker.
pub trait Periodic: Send + 'static {
    const WORKER: Worker;
    /// Run a round at start, before the first wait.
    const AT_START: bool = false;
    /// Run a round as soon as the configuration is reloaded.
    const ON_RELOAD: bool = false;
    /// Wait until the next round is due (read from the current configuration).
    fn wait(&mut self, app: &Coffre) -> impl Future<Output = ()> + Send;
    fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> impl Future<Output = Round> + Send;
}

/// Run `w` until `cancel`: wait, round, state; again.
pub async fn run<W: Periodic>(
    mut w: W,
    mut app_rx: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) {
    let ctx = RoundEnv {
        worker: W::WORKER,
        rt,
        cancel,
    };
    ctx.idle();
    let mut first = true;
    loop {
        let app = app_rx.borrow_and_update().clone();
        if !(first && W::AT_START) {
            tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                _ = w.wait(&app) => {}
                r = app_rx.changed(), if W::ON_RELOAD => if r.is_err() { break },
            }
        }
        first = false;
        let app = app_rx.borrow_and_update().clone();
        let state = match w.round(app, &ctx).await {
            Round::Done => WorkState::Idle,
            Round::Failed => WorkState::BackingOff,
            Round::Halt => {
                ctx.rt.worker(W::WORKER, WorkState::Stopped);
                ctx.cancel.cancelled().await;
                break;
            }
        };
        ctx.rt.worker(W::WORKER, state);
    }
    ctx.rt.worker(W::WORKER, WorkState::Stopped);
}

/// Protect each complete snapshot that lands in a source folder, exactly once (the journal).
/// File-system events only wake the scan early; the periodic scan is the backstop (events can
/// be lost, e.g. on network file systems).
pub struct Intake {
    journal: Arc<Journal>,
    /// The configuration the watcher and intakes were built for.
    built_for: Arc<Coffre>,
    intakes: Vec<intake::SourceGate>,
    _watcher: Option<notify::RecommendedWatcher>,
    wake_tx: mpsc::Sender<()>,
    wake_rx: mpsc::Receiver<()>,
}

impl Intake {
    pub fn new(app: Arc<Coffre>, journal: Arc<Journal>, rt: &Runtime) -> Intake {
        let (wake_tx, wake_rx) = mpsc::channel(1);
        let intakes = build_intakes(&app);
        // Every source folder's state from the start (the first scan waits for an event or the
        // scan interval).
        for i in &intakes {
            rt.source_folder(
                &i.source().name,
                i.open_folder().err().map(|e| e.to_string()).as_deref(),
            );
        }
        Intake {
            journal,
            _watcher: watch_sources(&app, wake_tx.clone()),
            built_for: app,
            intakes,
            wake_tx,
            wake_rx,
        }
    }
}

/// Protect one scanned snapshot unless the journal has it done, sealing, or waiting for its
/// next try.
async fn consider(
    app: &Coffre,
    journal: &Journal,
    ctx: &RoundEnv,
    source: &str,
    key: &intake::Key,
) {
    let attempts = match journal.get(source, key) {
        Ok(None) => 0,
        Ok(Some(JournalState::Done(_))) | Ok(Some(JournalState::Sealing(_))) => return,
        Ok(Some(JournalState::Failed {
            attempts,
            next_try_unix,
            ..
        })) => {
            if time::OffsetDateTime::now_utc().unix_timestamp() < next_try_unix {
                return;
            }
            attempts
        }
        Err(e) => {
            tracing::error!(error = %e, "journal unavailable: not protecting until it is back");
            ctx.error(&e.to_string());
            return;
        }
    };
    ctx.busy();
    protect_one(app, journal, &ctx.rt, source, key, attempts).await;
    ctx.idle();
}

impl Periodic for Intake {
    const WORKER: Worker = Worker::Intake;
    const ON_RELOAD: bool = true;

    async fn wait(&mut self, app: &Coffre) {
        tokio::select! {
            _ = self.wake_rx.recv() => {
                // Let a burst of events settle a little.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = tokio::time::sleep(app.config.daemon.scan_interval) => {}
        }
    }

    async fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> Round {
        if !Arc::ptr_eq(&app, &self.built_for) {
            self._watcher = None;
            self._watcher = watch_sources(&app, self.wake_tx.clone());
            self.intakes = build_intakes(&app);
            self.built_for = app.clone();
        }
        let now = Instant::now();
        for intake in self.intakes.iter_mut() {
            let source = intake.source().name.clone();
            let keys = match intake.scan(now) {
                Ok(keys) => {
                    ctx.rt.source_folder(&source, None);
                    keys
                }
                Err(e) => {
                    ctx.rt.source_folder(&source, Some(&e.to_string()));
                    continue;
                }
            };
            for key in keys {
                if ctx.cancel.is_cancelled() {
                    return Round::Done;
                }
                consider(&app, &self.journal, ctx, &source, &key).await;
            }
        }
        Round::Done
    }
}

fn build_intakes(app: &Coffre) -> Vec<intake::SourceGate> {
    app.config
        .sources
        .iter()
        .map(|s| intake::SourceGate::new(s.clone()))
        .collect()
}

fn watch_sources(app: &Coffre, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = wake.try_send(());
    })
    .map_err(
        |e| tracing::warn!(error = %e, "file-system events unavailable; scanning on a timer only"),
    )
    .ok()?;
    for s in &app.config.sources {
        if let Err(e) = w.watch(&s.path, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(source = %s.name, path = %s.path.display(), error = %e, "cannot watch source folder; scanning on a timer only");
        }
    }
    Some(w)
}

/// Keep every store caught up: probe, copy missing replicas, replicate the access log.
pub struct CatchUp;

impl Periodic for CatchUp {
    const WORKER: Worker = Worker::CatchUp;

    async fn wait(&mut self, app: &Coffre) {
        tokio::time::sleep(app.config.daemon.catch_up_interval).await
    }

    async fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> Round {
        ctx.busy();
        replicate::probe(&app, &ctx.rt).await;
        let (copied, failed) = replicate::catch_up(&app, &ctx.rt).await;
        if let Err(e) = crate::ops::audit_replicate::replicate(&app).await {
            ctx.error(&format!("access log not replicated: {e}"));
        }
        if copied > 0 {
            tracing::info!(copied, "catch-up copied replicas");
        }
        if failed > 0 {
            ctx.error(&format!("{failed} replica(s) could not be copied yet"));
            return Round::Failed;
        }
        Round::Done
    }
}

/// Archive the WAL files acknowledged from the spool (`archive-async`), as soon as one is
/// spooled and every 5 s while some wait.
pub struct Spool;

impl Periodic for Spool {
    const WORKER: Worker = Worker::Spool;
    const AT_START: bool = true;

    async fn wait(&mut self, _app: &Coffre) {
        tokio::select! {
            _ = crate::ops::wal::spool::WAKE.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }

    async fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> Round {
        let waiting =
            app.config.sources.iter().any(|s| {
                s.pitr.is_some() && crate::ops::wal::spool::depth(&app, &s.name).files > 0
            });
        if !waiting {
            return Round::Done;
        }
        ctx.busy();
        let (done, failures) =
            crate::ops::wal::spool::drain(&app, "coffre-daemon (wal-spool)").await;
        if done > 0 {
            tracing::info!(archived = done, "spooled WAL archived");
        }
        if let Some(f) = failures.first() {
            ctx.error(&format!("spooled WAL not archived yet: {f}"));
            return Round::Failed;
        }
        Round::Done
    }
}

/// Re-hash every replica against its manifest and repair the bad ones from a good copy.
pub struct Scrub;

impl Periodic for Scrub {
    const WORKER: Worker = Worker::Scrub;

    async fn wait(&mut self, app: &Coffre) {
        tokio::time::sleep(app.config.daemon.scrub_every).await
    }

    async fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> Round {
        ctx.busy();
        let (checked, bad, repaired) = replicate::scrub(&app, &ctx.rt).await;
        tracing::info!(checked, bad, repaired, "scrub finished");
        if bad > repaired {
            ctx.error(&format!(
                "{} replica(s) bad and not repaired",
                bad - repaired
            ));
        }
        Round::Done
    }
}

/// Scheduled drills: each source with `drill.every` is drilled from its stores when its last
/// drill (any store) is older than that.
pub struct Drill;

impl Periodic for Drill {
    const WORKER: Worker = Worker::Drill;

    async fn wait(&mut self, _app: &Coffre) {
        tokio::time::sleep(Duration::from_secs(5)).await
    }

    async fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> Round {
        let now = time::OffsetDateTime::now_utc();
        let last = last_drills(&app);
        for s in &app.config.sources {
            let Some(every) = s.drill.every else { continue };
            let due = last.get(&s.name).is_none_or(|t| now - *t >= every);
            let has_snapshot = app.catalog.latest(&s.name).ok().flatten().is_some();
            if !due || !has_snapshot || ctx.cancel.is_cancelled() {
                continue;
            }
            ctx.busy();
            drill_source(&app, ctx, &s.name).await;
            ctx.idle();
        }
        Round::Done
    }
}

/// The start of the last drill of each source, from the catalog.
fn last_drills(app: &Coffre) -> HashMap<String, time::OffsetDateTime> {
    let mut last: HashMap<String, time::OffsetDateTime> = HashMap::new();
    let drills = app.catalog.drills().unwrap_or_default();
    let reports = drills
        .iter()
        .filter_map(|(t, _)| serde_json::from_str::<crate::ops::drill::DrillReport>(t).ok());
    for r in reports {
        let Ok(t) =
            time::OffsetDateTime::parse(&r.started, &time::format_description::well_known::Rfc3339)
        else {
            continue;
        };
        let e = last.entry(r.source).or_insert(t);
        if t > *e {
            *e = t;
        }
    }
    last
}

async fn drill_source(app: &Coffre, ctx: &RoundEnv, source: &str) {
    let req = crate::ops::drill::DrillRequest {
        source: Some(source.to_string()),
        actor: "coffre-daemon".into(),
        purpose: "scheduled disaster-recovery drill".into(),
        ..Default::default()
    };
    match crate::ops::drill::drill(app, &req).await {
        Ok(reports) => {
            for r in reports.iter().filter(|r| !r.ok) {
                ctx.error(&format!(
                    "{} from {}: {}",
                    r.source,
                    r.store,
                    r.error.clone().unwrap_or_default()
                ));
            }
            tracing::info!(
                source,
                drills = reports.len(),
                failed = reports.iter().filter(|r| !r.ok).count(),
                "scheduled drill finished"
            );
        }
        Err(e) => ctx.error(&e.to_string()),
    }
}

/// Crypto-shred due epochs and expire the access log's segments, behind the clock guard. A
/// round runs at start, so a clock that jumped while the daemon was stopped is caught too.
pub struct Shred {
    pub journal: Arc<Journal>,
}

const CLOCK_ALERT: &str = "clock jumped forward beyond shred.max-clock-jump: shredding stopped; check the system clock, then restart coffre";

impl Periodic for Shred {
    const WORKER: Worker = Worker::Shred;
    const AT_START: bool = true;

    async fn wait(&mut self, app: &Coffre) {
        tokio::time::sleep(app.config.shred.every).await
    }

    async fn round(&mut self, app: Arc<Coffre>, ctx: &RoundEnv) -> Round {
        if !app.config.shred.enabled {
            return Round::Done;
        }
        let now = time::OffsetDateTime::now_utc();
        match clock_ok(&self.journal, now, app.config.shred.max_clock_jump) {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("{CLOCK_ALERT}");
                ctx.rt.shred_stopped_by_clock(CLOCK_ALERT);
                // Stay stopped until an operator restarts the daemon.
                return Round::Halt;
            }
            Err(e) => {
                ctx.error(&e.to_string());
                return Round::Failed;
            }
        }
        ctx.busy();
        let mut failed = false;
        let (done, errors) =
            crate::ops::lifecycle::shred::run_due(&app, now, "coffre-daemon").await;
        for r in &done {
            tracing::info!(epoch = %r.epoch, snapshots = r.snapshots.len(), "retention shredded an epoch");
        }
        for e in &errors {
            ctx.error(&e.to_string());
            failed = true;
        }
        // The access log's own retention, under the same clock guard.
        match crate::ops::lifecycle::audit_expire::expire(&app, now, "coffre-daemon").await {
            Ok(r) => {
                for e in &r.errors {
                    ctx.error(e);
                    failed = true;
                }
            }
            Err(e) => {
                ctx.error(&e.to_string());
                failed = true;
            }
        }
        if failed {
            Round::Failed
        } else {
            Round::Done
        }
    }
}

/// Guard against a clock that jumps far ahead: compares `now` with the last time seen (kept in
/// the journal) and says whether shredding may proceed.
pub fn clock_ok(
    journal: &Journal,
    now: time::OffsetDateTime,
    max_jump: Duration,
) -> Result<bool, crate::journal::JournalError> {
    let last = journal.last_clock()?;
    let ok = last.is_none_or(|l| now.unix_timestamp() - l <= max_jump.as_secs() as i64);
    // A jumped time is never recorded, so a restart does not launder it.
    if ok {
        journal.observe_clock(now.unix_timestamp())?;
    }
    Ok(ok)
}

/// Protect one landed snapshot (the intake worker's job), its journal entry and counters kept.
async fn protect_one(
    app: &Coffre,
    journal: &Journal,
    rt: &Runtime,
    source: &str,
    key: &intake::Key,
    attempts: u32,
) {
    let id = crate::ids::SnapshotId::new();
    if let Err(e) = journal.mark_sealing(source, key, &id) {
        tracing::error!(error = %e, "journal write failed: snapshot not started");
        rt.worker_error(Worker::Intake, &e.to_string());
        return;
    }
    let count = |outcome: &str| rt.count_snapshot(source, outcome);
    match crate::ops::snapshot::protect::protect_as(
        app,
        source,
        crate::ops::snapshot::protect::Input::Path(&key.path),
        id,
        crate::ops::snapshot::protect::What::Snapshot,
    )
    .await
    {
        Ok(out) => {
            for s in &out.committed {
                rt.uploaded(s, out.manifest.sealed_size);
                rt.store_ok(s);
            }
            for f in &out.failed {
                rt.store_failed(&f.store, &f.kind);
            }
            let _ = journal.mark_done(source, key, &id);
            count(match out.protection {
                crate::ops::snapshot::protect::Protection::Protected => "protected",
                crate::ops::snapshot::protect::Protection::Degraded => "degraded",
                crate::ops::snapshot::protect::Protection::AtRisk => "at-risk",
            });
            rt.metrics
                .last_protected
                .get_or_create(&crate::status::SourceLabel {
                    source: source.to_string(),
                })
                .set(id.timestamp_ms() as f64 / 1000.0);
        }
        Err(crate::ops::snapshot::protect::PipelineError::AtRisk {
            committed,
            ref failures,
            ..
        }) if committed > 0 => {
            // Committed somewhere: catch-up brings the other stores along.
            tracing::warn!(snapshot = %id, committed, failures = %failures, "snapshot at risk: fewer sites than min-sites");
            for s in &app.stores {
                rt.store_failed(&s.name, "unavailable");
            }
            let _ = journal.mark_done(source, key, &id);
            count("at-risk");
        }
        Err(e) => {
            tracing::error!(snapshot = %id, error = %e, "snapshot not protected; will retry");
            rt.worker_error(Worker::Intake, &e.to_string());
            if matches!(
                e,
                crate::ops::snapshot::protect::PipelineError::AtRisk { .. }
                    | crate::ops::snapshot::protect::PipelineError::NoStore { .. }
            ) {
                for s in &app.stores {
                    rt.store_failed(&s.name, "unavailable");
                }
            }
            let _ = journal.mark_failed(source, key, attempts + 1, &e.to_string());
            count(
                if matches!(
                    e,
                    crate::ops::snapshot::protect::PipelineError::Changed { .. }
                ) {
                    "changed-while-read"
                } else {
                    "failed"
                },
            );
        }
    }
}
