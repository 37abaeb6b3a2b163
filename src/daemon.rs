//! The daemon: its six periodic workers ([`workers`]: intake protects each complete snapshot
//! exactly once, catch-up keeps every store caught up, scrub re-hashes replicas, drill runs the
//! scheduled drills, wal-spool archives the WAL acknowledged from the spool, shred destroys
//! expired epochs), the status endpoint, the control socket
//! ([`control`]), and systemd's notify protocol (READY, STATUS, WATCHDOG, RELOADING on SIGHUP,
//! STOPPING on SIGTERM).
//!
//! Invariants: one shutdown token that every worker selects on; in-flight work is drained up to
//! `daemon.drain-timeout` and otherwise resumed at the next start from the journal; a reload whose
//! config fails validation is refused and the running config stays.

mod admission;
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

use crate::status::{self, Runtime};
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
    #[error("status.token-file: {source}")]
    Token {
        path: PathBuf,
        source: crate::config::SecretFileError,
    },
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
            .map_err(|source| DaemonError::Token {
                path: p.clone(),
                source,
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
    let token = read_token(&config)?;
    let drain = config.daemon.drain_timeout;
    // The daemon owns the state folder for as long as it runs: commands reach it through its
    // control socket, never beside it.
    let mut lock = crate::lock::acquire(&config.state_dir, crate::lock::Role::Daemon)?;
    let journal = Arc::new(Journal::open(&config.state_dir.join("journal.sqlite"))?);
    let app = Arc::new(Coffre::open(config).await?);
    let rt = Runtime::new(token);
    restore_counters(&app, &rt);
    let d = Daemon::new(config_path, app, rt, journal);
    d.serve_status().await?;
    // The control socket first: commands wait for a starting daemon, not for its recovery.
    d.serve_control(&mut lock);
    d.recover().await;
    d.spawn_workers();
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let (watchdog, tick) = watchdog_tick();
    let mut ticker = tokio::time::interval(tick);
    d.announce_ready().await;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = hup.recv() => d.reload().await,
            _ = &mut shutdown => break,
            _ = ticker.tick() => d.tick(watchdog).await,
        }
    }
    d.drain(drain).await;
    Ok(())
}

/// Counters go on from where the last run left them.
fn restore_counters(app: &Coffre, rt: &Runtime) {
    let kept = crate::catalog::Catalog::open(&app.config.state_dir.join("catalog.sqlite"))
        .and_then(|c| rt.keep_counters(c));
    if let Err(e) = kept {
        tracing::warn!(error = %e, "counters not restored: they start from 0 in this run");
    }
}

/// Whether systemd's watchdog is on, and how often to notify it (and refresh STATUS).
fn watchdog_tick() -> (bool, Duration) {
    let mut wd_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut wd_usec);
    let tick = if watchdog {
        Duration::from_micros(wd_usec / 2).max(Duration::from_millis(200))
    } else {
        Duration::from_secs(10)
    };
    (watchdog, tick)
}

/// What the running daemon holds: the current configuration (replaced on reload), the runtime
/// state behind `/status`, the journal, and every task it started.
struct Daemon {
    config_path: PathBuf,
    app_tx: watch::Sender<Arc<Coffre>>,
    app_rx: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
    journal: Arc<Journal>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Daemon {
    fn new(
        config_path: PathBuf,
        app: Arc<Coffre>,
        rt: Arc<Runtime>,
        journal: Arc<Journal>,
    ) -> Daemon {
        let (app_tx, app_rx) = watch::channel(app);
        Daemon {
            config_path,
            app_tx,
            app_rx,
            rt,
            journal,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    fn app(&self) -> Arc<Coffre> {
        self.app_rx.borrow().clone()
    }

    async fn serve_status(&self) -> Result<(), DaemonError> {
        let listen = self.app().config.status.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: listen,
                source,
            })?;
        let router = status::router(self.app_rx.clone(), self.rt.clone());
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
        });
        tracing::info!(%listen, "status endpoint listening");
        Ok(())
    }

    /// Listen on the control socket and note where in the state folder's lock; without a
    /// socket the daemon still runs (and alerts): commands cannot reach it.
    fn serve_control(&self, lock: &mut crate::lock::StateLock) {
        let app = self.app();
        let path = control::socket_path(&app.config);
        match control::bind(&path, app.config.audit.operators_group.as_deref()) {
            Ok(listener) => {
                if let Err(e) = lock.mark_ready(&path) {
                    tracing::warn!(error = %e, "cannot note the control socket as ready in the state folder's lock");
                }
                let (rx, c) = (self.app_rx.clone(), self.cancel.clone());
                self.tracker.spawn(async move {
                    control::serve(listener, path, rx, c).await;
                });
            }
            Err(e) => {
                tracing::error!(socket = %path.display(), error = %e, "control socket unavailable: CLI commands cannot reach the daemon (and do not run beside it)");
                self.rt.set_alert("control socket unavailable", true);
            }
        }
    }

    /// Finish what a crash or a stop interrupted, and see which stores answer.
    async fn recover(&self) {
        let app = self.app();
        recover_interrupted(&app, &self.journal, &self.rt).await;
        replicate::probe(&app, &self.rt).await;
    }

    fn spawn_workers(&self) {
        let intake = workers::Intake::new(self.app(), self.journal.clone(), &self.rt);
        self.spawn(intake);
        self.spawn(workers::CatchUp);
        self.spawn(workers::Scrub);
        self.spawn(workers::Drill);
        self.spawn(workers::Spool);
        self.spawn(workers::Shred {
            journal: self.journal.clone(),
        });
    }

    fn spawn<W: workers::Periodic>(&self, w: W) {
        let (rx, rt, c) = (self.app_rx.clone(), self.rt.clone(), self.cancel.clone());
        self.tracker.spawn(workers::run(w, rx, rt, c));
    }

    async fn summary_line(&self) -> Option<String> {
        let (a, r) = (self.app(), self.rt.clone());
        tokio::task::spawn_blocking(move || status::summary_line(&status::build(&a, &r)))
            .await
            .ok()
    }

    async fn announce_ready(&self) {
        self.rt.ready.store(true, Ordering::Relaxed);
        let line = self.summary_line().await.unwrap_or_default();
        notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        let app = self.app();
        tracing::info!(
            sources = app.config.sources.len(),
            stores = app.stores.len(),
            "coffre daemon ready"
        );
    }

    /// SIGHUP: load and validate the config file again; a refused one leaves the running one.
    async fn reload(&self) {
        notify(&[NotifyState::Reloading]);
        let app = self.app();
        match reload(&self.config_path, &app.config.state_dir).await {
            Ok(mut new) => {
                // One in-flight registry and one progress board for the whole run: a shred
                // under the new config still waits for a protect started under the old one,
                // and /status still shows it.
                new.inflight = app.inflight.clone();
                new.progress = app.progress.clone();
                let _ = self.app_tx.send(Arc::new(new));
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                self.rt.reload_result(Ok(()));
                notify(&[
                    NotifyState::Ready,
                    NotifyState::Status("configuration reloaded"),
                ]);
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the running configuration stays");
                self.rt.reload_result(Err(&e.to_string()));
                notify(&[
                    NotifyState::Ready,
                    NotifyState::Status("reload refused: config invalid, running config kept"),
                ]);
            }
        }
    }

    /// The watchdog's keep-alive and a fresh STATUS line.
    async fn tick(&self, watchdog: bool) {
        if watchdog {
            notify(&[NotifyState::Watchdog]);
        }
        if let Some(line) = self.summary_line().await {
            notify(&[NotifyState::Status(&line)]);
        }
    }

    /// Stop every task; in-flight work gets up to `drain`, and otherwise resumes at the next
    /// start from the journal.
    async fn drain(&self, drain: Duration) {
        tracing::info!(drain = ?drain, "stopping: draining in-flight work");
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        self.rt.ready.store(false, Ordering::Relaxed);
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: unfinished snapshots resume at the next start");
        }
    }
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("state-dir changed from {} to {}: restart the daemon to move it", .from.display(), .to.display())]
    StateDir { from: PathBuf, to: PathBuf },
    #[error(transparent)]
    App(#[from] AppError),
}

async fn reload(path: &Path, state_dir: &Path) -> Result<Coffre, ReloadError> {
    let config = Config::load(path)?;
    if config.state_dir != state_dir {
        // The daemon holds the lock of the state folder it started with.
        return Err(ReloadError::StateDir {
            from: state_dir.to_path_buf(),
            to: config.state_dir.clone(),
        });
    }
    Ok(Coffre::open(config).await?)
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
