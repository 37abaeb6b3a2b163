//! The daemon: watch every source, protect each complete snapshot exactly once, keep every store
//! caught up, scrub replicas, serve the status endpoint, and speak systemd's notify protocol
//! (READY, STATUS, WATCHDOG, RELOADING on SIGHUP, STOPPING on SIGTERM).
//!
//! Invariants: one shutdown token that every loop selects on; in-flight work is drained up to
//! `daemon.drain-timeout` and otherwise resumed at the next start from the journal; a reload whose
//! config fails validation is refused and the running config stays.

pub mod control;
pub mod intake;
pub mod replicate;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppError, Coffre};
use crate::config::Config;
use crate::ids::SnapshotId;
use crate::ops::protect::{PipelineError, Protection};
use crate::status::{self, Runtime, SourceLabel, WorkState, Worker};
use intake::{Intake, Journal, JournalState};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Journal(#[from] intake::JournalError),
    #[error("cannot listen on {addr} for the status endpoint: {source}. Is another coffre running? Change status.listen")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("status.token-file: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

fn notify(states: &[NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(false, states);
}

/// The status endpoint's bearer token (owner, mode and presence of the file checked).
fn read_token(config: &Config) -> Result<Option<secrecy::SecretString>, DaemonError> {
    match &config.status.token_file {
        None => Ok(None),
        Some(p) => crate::config::read_secret_file(p)
            .map(Some)
            .map_err(|reason| DaemonError::Token {
                path: p.clone(),
                reason,
            }),
    }
}

/// SIGTERM or SIGINT, installed now (before the daemon starts its work, so that a stop asked
/// while it starts is a clean one): the caller passes it to [`run`].
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Run the daemon until `shutdown` completes (e.g. [`stop_signal`]); SIGHUP reloads the config.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let token = read_token(&config)?;
    let listen = config.status.listen;
    let drain = config.daemon.drain_timeout;
    // The daemon owns the state folder for as long as it runs: commands reach it through its
    // control socket, never beside it.
    let mut lock = crate::lock::acquire(&config.state_dir, crate::lock::Role::Daemon)?;
    let journal = Arc::new(Journal::open(&config.state_dir.join("journal.sqlite"))?);
    let app = Arc::new(Coffre::open(config).await?);
    let rt = Runtime::new(token);
    // Counters go on from where the last run left them.
    match crate::catalog::Catalog::open(&app.config.state_dir.join("catalog.sqlite")) {
        Ok(c) => {
            if let Err(e) = rt.keep_counters(c) {
                tracing::warn!(error = %e, "counters not restored: they start from 0 in this run");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "counters not restored: they start from 0 in this run")
        }
    }
    let (app_tx, app_rx) = watch::channel(app.clone());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: listen,
            source,
        })?;
    {
        let router = status::router(app_rx.clone(), rt.clone());
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
        });
    }
    tracing::info!(%listen, "status endpoint listening");

    // The control socket first: commands wait for a starting daemon, not for its recovery.
    {
        let path = control::socket_path(&app.config);
        match control::bind(&path, app.config.audit.operators_group.as_deref()) {
            Ok(listener) => {
                if let Err(e) = lock.mark_ready() {
                    tracing::warn!(error = %e, "cannot note the control socket as ready in the state folder's lock");
                }
                let (rx, c) = (app_rx.clone(), cancel.clone());
                tracker.spawn(async move {
                    control::serve(listener, path, rx, c).await;
                });
            }
            Err(e) => {
                tracing::error!(socket = %path.display(), error = %e, "control socket unavailable: CLI commands cannot reach the daemon (and do not run beside it)");
                rt.set_alert("control socket unavailable", true);
            }
        }
    }
    recover_interrupted(&app, &journal, &rt).await;
    replicate::probe(&app, &rt).await;

    tracker.spawn(intake_loop(
        app_rx.clone(),
        journal.clone(),
        rt.clone(),
        cancel.clone(),
    ));
    tracker.spawn(catch_up_loop(app_rx.clone(), rt.clone(), cancel.clone()));
    tracker.spawn(scrub_loop(app_rx.clone(), rt.clone(), cancel.clone()));
    tracker.spawn(drill_loop(app_rx.clone(), rt.clone(), cancel.clone()));
    tracker.spawn(shred_loop(
        app_rx.clone(),
        journal.clone(),
        rt.clone(),
        cancel.clone(),
    ));

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let mut wd_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut wd_usec);
    let tick = if watchdog {
        Duration::from_micros(wd_usec / 2).max(Duration::from_millis(200))
    } else {
        Duration::from_secs(10)
    };
    let mut ticker = tokio::time::interval(tick);
    rt.ready.store(true, Ordering::Relaxed);
    let line = {
        let (a, r) = (app.clone(), rt.clone());
        tokio::task::spawn_blocking(move || status::summary_line(&status::build(&a, &r)))
            .await
            .unwrap_or_default()
    };
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    tracing::info!(
        sources = app.config.sources.len(),
        stores = app.stores.len(),
        "coffre daemon ready"
    );

    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify(&[NotifyState::Reloading]);
                match reload(&config_path, &app.config.state_dir).await {
                    Ok(mut new) => {
                        // One in-flight registry and one progress board for the whole run: a
                        // shred under the new config still waits for a protect started under
                        // the old one, and /status still shows it.
                        new.inflight = app.inflight.clone();
                        new.progress = app.progress.clone();
                        let _ = app_tx.send(Arc::new(new));
                        tracing::info!(config = %config_path.display(), "configuration reloaded");
                        rt.reload_result(Ok(()));
                        notify(&[NotifyState::Ready, NotifyState::Status("configuration reloaded")]);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused: the running configuration stays");
                        rt.reload_result(Err(&e));
                        notify(&[NotifyState::Ready, NotifyState::Status("reload refused: config invalid, running config kept")]);
                    }
                }
            }
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                if watchdog {
                    notify(&[NotifyState::Watchdog]);
                }
                let (a, r) = (app_rx.borrow().clone(), rt.clone());
                if let Ok(line) = tokio::task::spawn_blocking(move || status::summary_line(&status::build(&a, &r))).await {
                    notify(&[NotifyState::Status(&line)]);
                }
            }
        }
    }
    tracing::info!(drain = ?drain, "stopping: draining in-flight work");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    rt.ready.store(false, Ordering::Relaxed);
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("drain timeout: unfinished snapshots resume at the next start");
    }
    Ok(())
}

async fn reload(path: &Path, state_dir: &Path) -> Result<Coffre, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if config.state_dir != state_dir {
        // The daemon holds the lock of the state folder it started with.
        return Err(format!(
            "state-dir changed from {} to {}: restart the daemon to move it",
            state_dir.display(),
            config.state_dir.display()
        ));
    }
    Coffre::open(config).await.map_err(|e| e.to_string())
}

/// Entries a crash left `sealing`: committed somewhere already (done), or to be redone.
async fn recover_interrupted(app: &Coffre, journal: &Journal, rt: &Runtime) {
    let Ok(list) = journal.interrupted() else {
        return;
    };
    for (source, key, id) in list {
        let mut committed = 0;
        for s in &app.stores {
            if let Ok(m) = s.get_manifest(&source, &id).await {
                let _ = app.catalog.put_manifest(&m);
                let _ =
                    app.catalog
                        .set_replica(&id, &s.name, crate::catalog::ReplicaState::Committed);
                committed += 1;
            }
        }
        if committed > 0 {
            tracing::info!(snapshot = %id, committed, "interrupted snapshot was already committed; catch-up completes it");
            let _ = journal.mark_done(&source, &key, &id);
        } else {
            tracing::warn!(snapshot = %id, "interrupted snapshot was not committed anywhere; it will be protected again under a new id");
            let _ = journal.mark_failed(
                &source,
                &key,
                0,
                "interrupted (crash or stop) before commit",
            );
            rt.count_snapshot(&source, "interrupted");
        }
    }
}

fn build_intakes(app: &Coffre) -> Vec<Intake> {
    app.config
        .sources
        .iter()
        .map(|s| Intake::new(s.clone()))
        .collect()
}

/// Watch the source folders; `notify` events only wake the scan early, the periodic scan is the
/// backstop (events can be lost, e.g. on network file systems).
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

async fn intake_loop(
    mut app_rx: watch::Receiver<Arc<Coffre>>,
    journal: Arc<Journal>,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) {
    let mut app = app_rx.borrow_and_update().clone();
    let (wake_tx, mut wake_rx) = mpsc::channel(1);
    let mut watcher = watch_sources(&app, wake_tx.clone());
    let mut intakes = build_intakes(&app);
    // Every source folder's state from the start (the first scan waits for an event or the
    // scan interval).
    for i in &intakes {
        rt.source_folder(&i.source().name, i.open_folder().err().as_deref());
    }
    rt.worker(Worker::Intake, WorkState::Idle);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake_rx.recv() => {
                // Let a burst of events settle a little.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = tokio::time::sleep(app.config.daemon.scan_interval) => {}
            r = app_rx.changed() => {
                if r.is_err() { break; }
                app = app_rx.borrow_and_update().clone();
                drop(watcher);
                watcher = watch_sources(&app, wake_tx.clone());
                intakes = build_intakes(&app);
            }
        }
        let now = Instant::now();
        for intake in intakes.iter_mut() {
            let source = intake.source().name.clone();
            let keys = match intake.scan(now) {
                Ok(keys) => {
                    rt.source_folder(&source, None);
                    keys
                }
                Err(e) => {
                    rt.source_folder(&source, Some(&e));
                    continue;
                }
            };
            for key in keys {
                if cancel.is_cancelled() {
                    break;
                }
                let attempts = match journal.get(&source, &key) {
                    Ok(None) => 0,
                    Ok(Some(JournalState::Done(_))) | Ok(Some(JournalState::Sealing(_))) => {
                        continue
                    }
                    Ok(Some(JournalState::Failed {
                        attempts,
                        next_try_unix,
                        ..
                    })) => {
                        if time::OffsetDateTime::now_utc().unix_timestamp() < next_try_unix {
                            continue;
                        }
                        attempts
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "journal unavailable: not protecting until it is back");
                        rt.worker_error(Worker::Intake, &e.to_string());
                        continue;
                    }
                };
                rt.worker(Worker::Intake, WorkState::Busy);
                protect_one(&app, &journal, &rt, &source, &key, attempts).await;
                rt.worker(Worker::Intake, WorkState::Idle);
            }
        }
    }
    rt.worker(Worker::Intake, WorkState::Stopped);
}

async fn protect_one(
    app: &Coffre,
    journal: &Journal,
    rt: &Runtime,
    source: &str,
    key: &intake::Key,
    attempts: u32,
) {
    let id = SnapshotId::new();
    if let Err(e) = journal.mark_sealing(source, key, &id) {
        tracing::error!(error = %e, "journal write failed: snapshot not started");
        rt.worker_error(Worker::Intake, &e.to_string());
        return;
    }
    let count = |outcome: &str| rt.count_snapshot(source, outcome);
    match crate::ops::protect::protect_as(app, source, &key.path, id).await {
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
                Protection::Protected => "protected",
                Protection::Degraded => "degraded",
                Protection::AtRisk => "at-risk",
            });
            rt.metrics
                .last_protected
                .get_or_create(&SourceLabel {
                    source: source.to_string(),
                })
                .set(id.timestamp_ms() as f64 / 1000.0);
        }
        Err(PipelineError::AtRisk {
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
            if let PipelineError::AtRisk { .. } = e {
                for s in &app.stores {
                    rt.store_failed(&s.name, "unavailable");
                }
            }
            let _ = journal.mark_failed(source, key, attempts + 1, &e.to_string());
            count(if matches!(e, PipelineError::Changed { .. }) {
                "changed-while-read"
            } else {
                "failed"
            });
        }
    }
}

async fn catch_up_loop(
    app_rx: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) {
    rt.worker(Worker::CatchUp, WorkState::Idle);
    loop {
        let app = app_rx.borrow().clone();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(app.config.daemon.catch_up_interval) => {}
        }
        rt.worker(Worker::CatchUp, WorkState::Busy);
        replicate::probe(&app, &rt).await;
        let (copied, failed) = replicate::catch_up(&app, &rt).await;
        if let Err(e) = crate::ops::audit_replicate::replicate(&app).await {
            rt.worker_error(Worker::CatchUp, &format!("access log not replicated: {e}"));
        }
        if failed > 0 {
            rt.worker_error(
                Worker::CatchUp,
                &format!("{failed} replica(s) could not be copied yet"),
            );
            rt.worker(Worker::CatchUp, WorkState::BackingOff);
        } else {
            rt.worker(Worker::CatchUp, WorkState::Idle);
        }
        if copied > 0 {
            tracing::info!(copied, "catch-up copied replicas");
        }
    }
    rt.worker(Worker::CatchUp, WorkState::Stopped);
}

async fn scrub_loop(
    app_rx: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) {
    rt.worker(Worker::Scrub, WorkState::Idle);
    loop {
        let app = app_rx.borrow().clone();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(app.config.daemon.scrub_every) => {}
        }
        rt.worker(Worker::Scrub, WorkState::Busy);
        let (checked, bad, repaired) = replicate::scrub(&app, &rt).await;
        tracing::info!(checked, bad, repaired, "scrub finished");
        if bad > repaired {
            rt.worker_error(
                Worker::Scrub,
                &format!("{} replica(s) bad and not repaired", bad - repaired),
            );
        }
        rt.worker(Worker::Scrub, WorkState::Idle);
    }
    rt.worker(Worker::Scrub, WorkState::Stopped);
}

/// Guard against a clock that jumps far ahead: compares `now` with the last time seen (kept in
/// the journal) and says whether shredding may proceed.
pub fn clock_ok(
    journal: &Journal,
    now: time::OffsetDateTime,
    max_jump: Duration,
) -> Result<bool, String> {
    let last = journal.last_clock().map_err(|e| e.to_string())?;
    let ok = last.is_none_or(|l| now.unix_timestamp() - l <= max_jump.as_secs() as i64);
    // A jumped time is never recorded, so a restart does not launder it.
    if ok {
        journal
            .observe_clock(now.unix_timestamp())
            .map_err(|e| e.to_string())?;
    }
    Ok(ok)
}

async fn shred_loop(
    app_rx: watch::Receiver<Arc<Coffre>>,
    journal: Arc<Journal>,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) {
    rt.worker(Worker::Shred, WorkState::Idle);
    const ALERT: &str = "clock jumped forward beyond shred.max-clock-jump: shredding stopped; check the system clock, then restart coffre";
    // The clock is observed at start so a jump while stopped is caught too.
    let mut first = true;
    loop {
        let app = app_rx.borrow().clone();
        if !first {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(app.config.shred.every) => {}
            }
        }
        first = false;
        if !app.config.shred.enabled {
            continue;
        }
        let now = time::OffsetDateTime::now_utc();
        match clock_ok(&journal, now, app.config.shred.max_clock_jump) {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("{ALERT}");
                rt.shred_stopped_by_clock(ALERT);
                rt.worker(Worker::Shred, WorkState::Stopped);
                // Stay stopped until an operator restarts the daemon.
                cancel.cancelled().await;
                break;
            }
            Err(e) => {
                rt.worker_error(Worker::Shred, &e);
                continue;
            }
        }
        rt.worker(Worker::Shred, WorkState::Busy);
        let (done, errors) = crate::ops::shred::run_due(&app, now, "coffre-daemon").await;
        for r in &done {
            tracing::info!(epoch = %r.epoch, snapshots = r.snapshots.len(), "retention shredded an epoch");
        }
        for e in &errors {
            rt.worker_error(Worker::Shred, &e.to_string());
        }
        // The access log's own retention, under the same clock guard.
        let mut errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        match crate::ops::audit_expire::expire(&app, now, "coffre-daemon").await {
            Ok(r) => {
                for e in &r.errors {
                    rt.worker_error(Worker::Shred, e);
                }
                errors.extend(r.errors);
            }
            Err(e) => {
                rt.worker_error(Worker::Shred, &e);
                errors.push(e);
            }
        }
        rt.worker(
            Worker::Shred,
            if errors.is_empty() {
                WorkState::Idle
            } else {
                WorkState::BackingOff
            },
        );
    }
    rt.worker(Worker::Shred, WorkState::Stopped);
}

/// Scheduled drills: each source with `drill.every` is drilled from its stores when its last
/// drill (any store) is older than that.
async fn drill_loop(
    app_rx: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) {
    rt.worker(Worker::Drill, WorkState::Idle);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let app = app_rx.borrow().clone();
        let now = time::OffsetDateTime::now_utc();
        let last: std::collections::HashMap<String, time::OffsetDateTime> = app
            .catalog
            .drills()
            .unwrap_or_default()
            .iter()
            .filter_map(|(t, _)| serde_json::from_str::<crate::ops::drill::DrillReport>(t).ok())
            .filter_map(|r| {
                let t = time::OffsetDateTime::parse(
                    &r.started,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?;
                Some((r.source, t))
            })
            .fold(Default::default(), |mut m, (s, t)| {
                let e = m.entry(s).or_insert(t);
                if t > *e {
                    *e = t;
                }
                m
            });
        for s in &app.config.sources {
            let Some(every) = s.drill.every else { continue };
            let due = last.get(&s.name).is_none_or(|t| now - *t >= every);
            if !due || app.catalog.latest(&s.name).ok().flatten().is_none() || cancel.is_cancelled()
            {
                continue;
            }
            rt.worker(Worker::Drill, WorkState::Busy);
            let req = crate::ops::drill::DrillRequest {
                source: Some(s.name.clone()),
                actor: "coffre-daemon".into(),
                purpose: "scheduled disaster-recovery drill".into(),
                ..Default::default()
            };
            match crate::ops::drill::drill(&app, &req).await {
                Ok(reports) => {
                    for r in reports.iter().filter(|r| !r.ok) {
                        rt.worker_error(
                            Worker::Drill,
                            &format!(
                                "{} from {}: {}",
                                r.source,
                                r.store,
                                r.error.clone().unwrap_or_default()
                            ),
                        );
                    }
                    tracing::info!(source = %s.name, drills = reports.len(), failed = reports.iter().filter(|r| !r.ok).count(), "scheduled drill finished");
                }
                Err(e) => rt.worker_error(Worker::Drill, &e),
            }
            rt.worker(Worker::Drill, WorkState::Idle);
        }
    }
    rt.worker(Worker::Drill, WorkState::Stopped);
}
