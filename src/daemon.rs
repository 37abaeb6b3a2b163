//! The daemon: its five periodic workers ([`workers`]: intake protects each complete snapshot
//! exactly once, catch-up keeps every store caught up, scrub re-hashes replicas, drill runs the
//! scheduled drills, shred destroys expired epochs), the status endpoint, the control socket
//! ([`control`]), and systemd's notify protocol (READY, STATUS, WATCHDOG, RELOADING on SIGHUP,
//! STOPPING on SIGTERM).
//!
//! Invariants: one shutdown token that every worker selects on; in-flight work is drained up to
//! `daemon.drain-timeout` and otherwise resumed at the next start from the journal; a reload whose
//! config fails validation is refused and the running config stays.

pub mod control;
pub mod intake;
pub mod replicate;
pub mod workers;

pub use workers::clock_ok;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppError, Coffre};
use crate::config::Config;
use crate::ids::SnapshotId;
use crate::ops::protect::{PipelineError, Protection};
use crate::status::{self, Runtime, SourceLabel, Worker};
use intake::Journal;

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
                if let Err(e) = lock.mark_ready(&path) {
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

    let intake = workers::Intake::new(app.clone(), journal.clone(), &rt);
    let shred = workers::Shred {
        journal: journal.clone(),
    };
    let (rx, r, c) = (&app_rx, &rt, &cancel);
    tracker.spawn(workers::run(intake, rx.clone(), r.clone(), c.clone()));
    tracker.spawn(workers::run(
        workers::CatchUp,
        rx.clone(),
        r.clone(),
        c.clone(),
    ));
    tracker.spawn(workers::run(
        workers::Scrub,
        rx.clone(),
        r.clone(),
        c.clone(),
    ));
    tracker.spawn(workers::run(
        workers::Drill,
        rx.clone(),
        r.clone(),
        c.clone(),
    ));
    tracker.spawn(workers::run(shred, rx.clone(), r.clone(), c.clone()));

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
