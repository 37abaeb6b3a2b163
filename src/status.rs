//! Status: the daemon's visible state (stores, workers, alerts), `/healthz`, `/readyz`, `/status`
//! (JSON) and `/metrics` (Prometheus text format).
//!
//! Invariant: nothing personal is ever served: ids, names of sources and stores, counts, sizes,
//! times and error kinds only (never file contents, never patient data, never key material).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::ids::SnapshotId;
use tokio::sync::watch;

use crate::app::Coffre;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    pub source: String,
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceStore {
    pub source: String,
    pub store: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceState {
    pub source: String,
    pub state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
    pub kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderEpochs {
    pub provider: String,
    pub state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerStateLabel {
    pub worker: String,
    pub state: String,
}

/// The commit coffre was built from (`build.rs`; "unknown" outside a git checkout).
pub const BUILD_COMMIT: &str = env!("COFFRE_BUILD_COMMIT");
/// `coffre --version`: the crate version and the commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("COFFRE_BUILD_COMMIT"),
    ")"
);

/// The protection states of a source, as in `/status` (one of them is 1 in `coffre_source_state`).
const SOURCE_STATES: [&str; 4] = ["protected", "degraded", "at-risk", "none"];
/// The daemon's background workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    Intake,
    CatchUp,
    Scrub,
    Shred,
    Drill,
    Spool,
}

impl Worker {
    pub fn as_str(self) -> &'static str {
        match self {
            Worker::Intake => "intake",
            Worker::CatchUp => "catch-up",
            Worker::Scrub => "scrub",
            Worker::Shred => "shred",
            Worker::Drill => "drill",
            Worker::Spool => "wal-spool",
        }
    }
}

/// The states of a worker, as in `/status` (one of them is 1 in `coffre_worker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkState {
    #[default]
    Idle,
    Busy,
    BackingOff,
    Stopped,
}

impl WorkState {
    pub const ALL: [WorkState; 4] = [
        WorkState::Idle,
        WorkState::Busy,
        WorkState::BackingOff,
        WorkState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Idle => "idle",
            WorkState::Busy => "busy",
            WorkState::BackingOff => "backing-off",
            WorkState::Stopped => "stopped",
        }
    }
}
/// Every outcome of `coffre_snapshots_total` (each has a sample, 0, from the first scrape).
const SNAPSHOT_OUTCOMES: [&str; 6] = [
    "protected",
    "degraded",
    "at-risk",
    "failed",
    "interrupted",
    "changed-while-read",
];

/// Prometheus metrics (conventional names).
pub struct Metrics {
    registry: Registry,
    pub snapshots_total: Family<SourceOutcome, Counter>,
    pub last_protected: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub snapshot_age: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub store_up: Family<StoreLabel, Gauge>,
    pub lag: Family<StoreLabel, Gauge>,
    pub uploaded_bytes: Family<StoreLabel, Counter>,
    pub scrub_errors: Family<StoreLabel, Counter>,
    pub repairs: Family<StoreLabel, Counter>,
    pub drill_last_success: Family<SourceStore, Gauge<f64, AtomicU64>>,
    pub drill_duration: Family<SourceStore, Gauge<f64, AtomicU64>>,
    pub drill_last_attempt: Family<SourceStore, Gauge<f64, AtomicU64>>,
    pub drill_last_ok: Family<SourceStore, Gauge>,
    pub drill_verified: Family<SourceStore, Gauge>,
    pub drill_interval: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub build_info: Family<BuildLabels, Gauge>,
    pub source_state: Family<SourceState, Gauge>,
    pub source_folder_readable: Family<SourceLabel, Gauge>,
    pub key_provider_up: Family<ProviderLabel, Gauge>,
    pub key_epochs: Family<ProviderEpochs, Gauge>,
    pub worker_state: Family<WorkerStateLabel, Gauge>,
    pub worker_runs: Family<WorkerLabel, Counter>,
    pub worker_errors: Family<WorkerLabel, Counter>,
    /// 1 until a reload is refused, 1 again after a reload is applied.
    pub config_reload_ok: Gauge,
    pub config_reload_time: Gauge<f64, AtomicU64>,
    /// 1 once the clock guard stopped shredding (until the daemon is restarted).
    pub shred_clock_jump: Gauge,
    pub access_log_writable: Gauge,
    pub wal_files: Family<SourceLabel, Gauge>,
    pub wal_last_archived: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub wal_archive_age: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub pitr_window_start: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub pitr_window: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub wal_prefetch_hits: Counter,
    pub wal_fetch_seconds: Counter<f64, AtomicU64>,
    pub wal_fetches: Counter,
    pub wal_fetches_into_caller_file: Counter,
    pub wal_archived_ahead: Counter,
    pub wal_spool_files: Family<SourceLabel, Gauge>,
    pub wal_spool_oldest_age: Family<SourceLabel, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    // A table: the metric registry, one registration (name, help, type) per metric.
    #[allow(clippy::too_many_lines)]
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("coffre");
        let m = Metrics {
            snapshots_total: Family::default(),
            last_protected: Family::default(),
            snapshot_age: Family::default(),
            store_up: Family::default(),
            lag: Family::default(),
            uploaded_bytes: Family::default(),
            scrub_errors: Family::default(),
            repairs: Family::default(),
            drill_last_success: Family::default(),
            drill_duration: Family::default(),
            drill_last_attempt: Family::default(),
            drill_last_ok: Family::default(),
            drill_verified: Family::default(),
            drill_interval: Family::default(),
            build_info: Family::default(),
            source_state: Family::default(),
            source_folder_readable: Family::default(),
            key_provider_up: Family::default(),
            key_epochs: Family::default(),
            worker_state: Family::default(),
            worker_runs: Family::default(),
            worker_errors: Family::default(),
            config_reload_ok: Gauge::default(),
            config_reload_time: Gauge::default(),
            shred_clock_jump: Gauge::default(),
            access_log_writable: Gauge::default(),
            wal_files: Family::default(),
            wal_last_archived: Family::default(),
            wal_archive_age: Family::default(),
            pitr_window_start: Family::default(),
            pitr_window: Family::default(),
            wal_prefetch_hits: Counter::default(),
            wal_fetch_seconds: Counter::default(),
            wal_fetches: Counter::default(),
            wal_fetches_into_caller_file: Counter::default(),
            wal_archived_ahead: Counter::default(),
            wal_spool_files: Family::default(),
            wal_spool_oldest_age: Family::default(),
            registry: Registry::default(),
        };
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                commit: BUILD_COMMIT.into(),
            })
            .set(1);
        // The configuration the daemon starts with is its first successful load.
        m.config_reload_ok.set(1);
        m.config_reload_time.set(unix_now());
        registry.register(
            "wal_files",
            "WAL files archived for the source (segments, history files, partial segments)",
            m.wal_files.clone(),
        );
        registry.register(
            "wal_last_archived_timestamp_seconds",
            "Time the newest WAL file of the source was committed",
            m.wal_last_archived.clone(),
        );
        registry.register(
            "wal_archive_age_seconds",
            "Seconds since the source's last WAL file was committed (the recovery point as it stands, while PostgreSQL writes)",
            m.wal_archive_age.clone(),
        );
        registry.register(
            "pitr_window_start_timestamp_seconds",
            "Oldest moment a point-in-time restore of the source can reach (its oldest base backup)",
            m.pitr_window_start.clone(),
        );
        registry.register(
            "wal_spool_files",
            "WAL files acknowledged from the local spool (archive-async) and not archived in the stores yet",
            m.wal_spool_files.clone(),
        );
        registry.register(
            "wal_spool_oldest_age_seconds",
            "Age of the oldest WAL file waiting in the spool (0 when it is empty)",
            m.wal_spool_oldest_age.clone(),
        );
        registry.register(
            "wal_prefetch_hits",
            "WAL files a recovery session found fetched ahead (restore_command did not wait on a store)",
            m.wal_prefetch_hits.clone(),
        );
        registry.register(
            "wal_fetch_seconds",
            "Time spent serving restore_command fetches (set against the replay time: how long PostgreSQL waited on coffre)",
            m.wal_fetch_seconds.clone(),
        );
        registry.register(
            "wal_fetches",
            "WAL files served to restore_command",
            m.wal_fetches.clone(),
        );
        registry.register(
            "wal_fetches_into_caller_file",
            "WAL files the daemon wrote straight into the file the wal-fetch process passed (the others went through the socket as frames)",
            m.wal_fetches_into_caller_file.clone(),
        );
        registry.register(
            "wal_archived_ahead",
            "WAL segments archived ahead of their push (from pg_wal/archive_status/*.ready) and acknowledged from it",
            m.wal_archived_ahead.clone(),
        );
        registry.register(
            "pitr_window_seconds",
            "Configured recovery window of the source (source.pitr.window)",
            m.pitr_window.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots handled, by source and outcome",
            m.snapshots_total.clone(),
        );
        registry.register(
            "last_protected_timestamp_seconds",
            "Creation time of the newest committed snapshot",
            m.last_protected.clone(),
        );
        registry.register(
            "last_snapshot_age_seconds",
            "Age of the newest committed snapshot",
            m.snapshot_age.clone(),
        );
        registry.register(
            "store_up",
            "1 when the store answered its last request",
            m.store_up.clone(),
        );
        registry.register(
            "replication_lag_snapshots",
            "Snapshots not yet committed in this store",
            m.lag.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Sealed bytes uploaded to the store",
            m.uploaded_bytes.clone(),
        );
        registry.register(
            "scrub_errors",
            "Replicas found missing or bad by the scrub",
            m.scrub_errors.clone(),
        );
        registry.register(
            "repairs",
            "Replicas repaired from a good replica",
            m.repairs.clone(),
        );
        registry.register(
            "drill_last_success_timestamp_seconds",
            "Time of the last successful drill",
            m.drill_last_success.clone(),
        );
        registry.register(
            "drill_duration_seconds",
            "Duration (restore + verify: the RTO) of the last successful drill",
            m.drill_duration.clone(),
        );
        registry.register(
            "drill_last_attempt_timestamp_seconds",
            "Time the last drill finished, successful or not",
            m.drill_last_attempt.clone(),
        );
        registry.register(
            "drill_last_ok",
            "1 when the last drill succeeded, 0 when it failed",
            m.drill_last_ok.clone(),
        );
        registry.register(
            "drill_verified",
            "1 when the last drill succeeded and the source's verify command passed, 0 when it failed or ran without a verify command (the bytes came back, nothing checked the copy works)",
            m.drill_verified.clone(),
        );
        registry.register(
            "drill_interval_seconds",
            "Configured drill interval (source.drill.every) of sources with scheduled drills",
            m.drill_interval.clone(),
        );
        registry.register(
            "build_info",
            "Version and commit of the running coffre (always 1)",
            m.build_info.clone(),
        );
        registry.register(
            "source_state",
            "1 for the current protection state of the source's newest snapshot, 0 for the others",
            m.source_state.clone(),
        );
        registry.register(
            "source_folder_readable",
            "1 when the source's folder was scanned, 0 when it is absent or unreadable",
            m.source_folder_readable.clone(),
        );
        registry.register(
            "key_provider_up",
            "1 when the key provider answered its health check",
            m.key_provider_up.clone(),
        );
        registry.register(
            "key_epochs",
            "Epoch keys by provider and state (live or destroyed)",
            m.key_epochs.clone(),
        );
        registry.register(
            "worker_state",
            "1 for the current state of the background worker, 0 for the others",
            m.worker_state.clone(),
        );
        registry.register(
            "worker_runs",
            "Runs started by the background worker",
            m.worker_runs.clone(),
        );
        registry.register(
            "worker_errors",
            "Errors met by the background worker",
            m.worker_errors.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last configuration load (start or SIGHUP) was applied, 0 when a reload was refused",
            m.config_reload_ok.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Time the running configuration was loaded",
            m.config_reload_time.clone(),
        );
        registry.register(
            "shred_clock_jump_detected",
            "1 when the clock jumped forward beyond shred.max-clock-jump and shredding stopped",
            m.shred_clock_jump.clone(),
        );
        registry.register(
            "access_log_writable",
            "1 when the access log can be appended to (0: every access is refused)",
            m.access_log_writable.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// Health of one store as last seen.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StoreHealth {
    pub up: bool,
    pub last_error_kind: Option<String>,
    pub last_error_at: Option<String>,
    pub uploaded_bytes: u64,
}

/// State of a background worker.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct WorkerState {
    pub state: WorkState,
    pub runs: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_run: Option<String>,
}

/// Shared runtime state of the daemon.
pub struct Runtime {
    pub started: Instant,
    pub ready: AtomicBool,
    pub metrics: Metrics,
    pub stores: Mutex<BTreeMap<String, StoreHealth>>,
    pub workers: Mutex<BTreeMap<String, WorkerState>>,
    pub alerts: Mutex<Vec<String>>,
    /// Bearer token of the status endpoint (redacted in `Debug`, zeroized on drop).
    pub token: Option<secrecy::SecretString>,
    /// Where the counters are kept so that they survive a restart ([`Runtime::keep_counters`]).
    counters: Mutex<Option<crate::catalog::Catalog>>,
    /// The last refused reload, until one is applied.
    reload: Mutex<ReloadStatus>,
    /// Per source, why its folder cannot be scanned (absent when it can).
    source_folders: Mutex<BTreeMap<String, String>>,
}

/// The last refused configuration reload (`config_reload` in `/status`): when and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub last_refused_at: Option<String>,
    /// The validation problems of the refused file (keys and paths of the config, no data).
    pub reason: Option<String>,
}

/// Counter families kept in the catalog (their label values, in order, are the row's labels).
mod family {
    pub const SNAPSHOTS: &str = "snapshots";
    pub const UPLOADED: &str = "uploaded_bytes";
    pub const SCRUB_ERRORS: &str = "scrub_errors";
    pub const REPAIRS: &str = "repairs";
    pub const WORKER_RUNS: &str = "worker_runs";
    pub const WORKER_ERRORS: &str = "worker_errors";
    pub const WAL_PREFETCH_HITS: &str = "wal_prefetch_hits";
    pub const WAL_FETCHES: &str = "wal_fetches";
    pub const WAL_FETCHES_INTO_CALLER_FILE: &str = "wal_fetches_into_caller_file";
    /// `coffre_wal_fetch_seconds_total`, kept in microseconds (the catalog keeps integers).
    pub const WAL_FETCH_MICROS: &str = "wal_fetch_micros";
    pub const WAL_ARCHIVED_AHEAD: &str = "wal_archived_ahead";
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn new(token: Option<secrecy::SecretString>) -> Arc<Runtime> {
        Arc::new(Runtime {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            metrics: Metrics::new(),
            stores: Mutex::new(BTreeMap::new()),
            workers: Mutex::new(BTreeMap::new()),
            alerts: Mutex::new(Vec::new()),
            token,
            counters: Mutex::new(None),
            reload: Mutex::new(ReloadStatus::default()),
            source_folders: Mutex::new(BTreeMap::new()),
        })
    }

    /// Restore the counters a previous run kept in `catalog`, then keep every increment there.
    /// Rows this version does not know are left alone.
    pub(crate) fn keep_counters(
        &self,
        catalog: crate::catalog::Catalog,
    ) -> Result<(), crate::catalog::CatalogError> {
        catalog.relaxed_durability()?;
        let rows = catalog.counters()?;
        for (fam, labels, value) in rows {
            let Ok(labels) = serde_json::from_str::<Vec<String>>(&labels) else {
                tracing::warn!(family = %fam, "counter row with unreadable labels skipped");
                continue;
            };
            self.apply(&fam, &labels, value);
        }
        *lock(&self.counters) = Some(catalog);
        Ok(())
    }

    /// Add `n` to one counter (metric and status document); false for an unknown family.
    fn apply(&self, fam: &str, labels: &[String], n: u64) -> bool {
        let m = &self.metrics;
        match (fam, labels) {
            (family::SNAPSHOTS, [source, outcome]) => {
                m.snapshots_total
                    .get_or_create(&SourceOutcome {
                        source: source.clone(),
                        outcome: outcome.clone(),
                    })
                    .inc_by(n);
            }
            (family::UPLOADED, [store]) => {
                lock(&self.stores)
                    .entry(store.clone())
                    .or_default()
                    .uploaded_bytes += n;
                m.uploaded_bytes
                    .get_or_create(&StoreLabel {
                        store: store.clone(),
                    })
                    .inc_by(n);
            }
            (family::SCRUB_ERRORS | family::REPAIRS, [store]) => {
                let f = if fam == family::REPAIRS {
                    &m.repairs
                } else {
                    &m.scrub_errors
                };
                f.get_or_create(&StoreLabel {
                    store: store.clone(),
                })
                .inc_by(n);
            }
            (family::WORKER_RUNS | family::WORKER_ERRORS, [worker]) => {
                let mut w = lock(&self.workers);
                let e = w.entry(worker.clone()).or_default();
                let label = WorkerLabel {
                    worker: worker.clone(),
                };
                if fam == family::WORKER_RUNS {
                    e.runs += n;
                    m.worker_runs.get_or_create(&label).inc_by(n);
                } else {
                    e.errors += n;
                    m.worker_errors.get_or_create(&label).inc_by(n);
                }
            }
            (family::WAL_FETCH_MICROS, []) => {
                m.wal_fetch_seconds.inc_by(n as f64 / 1e6);
            }
            (family::WAL_PREFETCH_HITS, []) => {
                m.wal_prefetch_hits.inc_by(n);
            }
            (family::WAL_FETCHES, []) => {
                m.wal_fetches.inc_by(n);
            }
            (family::WAL_FETCHES_INTO_CALLER_FILE, []) => {
                m.wal_fetches_into_caller_file.inc_by(n);
            }
            (family::WAL_ARCHIVED_AHEAD, []) => {
                m.wal_archived_ahead.inc_by(n);
            }
            _ => return false,
        }
        true
    }

    /// Move what the WAL code counted since the last call (process-wide atomics) into the
    /// WAL counters, kept in the catalog like the others so that a restart does not reset them.
    fn take_wal_counts(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for (fam, counted) in [
            (
                family::WAL_PREFETCH_HITS,
                &crate::ops::wal::archive::PREFETCH_HITS,
            ),
            (family::WAL_FETCHES, &crate::ops::wal::archive::FETCHES),
            (
                family::WAL_FETCHES_INTO_CALLER_FILE,
                &crate::ops::wal::archive::FETCHES_INTO_CALLER_FILE,
            ),
            (
                family::WAL_FETCH_MICROS,
                &crate::ops::wal::archive::FETCH_MICROS,
            ),
            (
                family::WAL_ARCHIVED_AHEAD,
                &crate::ops::wal::ahead::ACKNOWLEDGED,
            ),
        ] {
            let n = counted.swap(0, Relaxed);
            if n > 0 {
                self.count(fam, &[], n);
            }
        }
    }

    /// Count `n` in a counter and keep it in the catalog (when kept there).
    fn count(&self, fam: &str, labels: &[&str], n: u64) {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        self.apply(fam, &labels, n);
        if let Some(c) = lock(&self.counters).as_ref() {
            let key = serde_json::to_string(&labels).unwrap_or_default();
            if let Err(e) = c.add_counter(fam, &key, n) {
                tracing::warn!(error = %e, family = fam, "counter not kept in the catalog: it restarts lower after a restart");
            }
        }
    }

    /// A snapshot handled by the daemon, by outcome (`coffre_snapshots_total`).
    pub(crate) fn count_snapshot(&self, source: &str, outcome: &str) {
        self.count(family::SNAPSHOTS, &[source, outcome], 1);
    }

    /// A replica the scrub found missing or bad.
    pub(crate) fn scrub_error(&self, store: &str) {
        self.count(family::SCRUB_ERRORS, &[store], 1);
    }

    /// A replica repaired from a good one.
    pub fn repaired(&self, store: &str) {
        self.count(family::REPAIRS, &[store], 1);
    }

    pub(crate) fn store_ok(&self, store: &str) {
        lock(&self.stores).entry(store.to_string()).or_default().up = true;
        self.metrics
            .store_up
            .get_or_create(&StoreLabel {
                store: store.into(),
            })
            .set(1);
    }

    pub(crate) fn store_failed(&self, store: &str, kind: &str) {
        let mut s = lock(&self.stores);
        let h = s.entry(store.to_string()).or_default();
        h.up = false;
        h.last_error_kind = Some(kind.to_string());
        h.last_error_at = Some(crate::clock::now_rfc3339());
        self.metrics
            .store_up
            .get_or_create(&StoreLabel {
                store: store.into(),
            })
            .set(0);
    }

    pub fn uploaded(&self, store: &str, bytes: u64) {
        self.count(family::UPLOADED, &[store], bytes);
    }

    pub fn worker(&self, worker: Worker, state: WorkState) {
        let name = worker.as_str();
        let label = WorkerLabel {
            worker: name.to_string(),
        };
        // Runs and errors have a sample (0) from the worker's first state.
        drop(self.metrics.worker_runs.get_or_create(&label));
        drop(self.metrics.worker_errors.get_or_create(&label));
        if state == WorkState::Busy {
            self.count(family::WORKER_RUNS, &[name], 1);
        }
        let mut w = lock(&self.workers);
        let e = w.entry(name.to_string()).or_default();
        if state == WorkState::Busy {
            e.last_run = Some(crate::clock::now_rfc3339());
        }
        e.state = state;
        for s in WorkState::ALL {
            self.metrics
                .worker_state
                .get_or_create(&WorkerStateLabel {
                    worker: name.to_string(),
                    state: s.as_str().to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    pub(crate) fn worker_error(&self, worker: Worker, error: &str) {
        let name = worker.as_str();
        self.count(family::WORKER_ERRORS, &[name], 1);
        lock(&self.workers)
            .entry(name.to_string())
            .or_default()
            .last_error = Some(error.to_string());
    }

    /// Outcome of a SIGHUP reload: a refused one raises an alert and
    /// `coffre_config_last_reload_successful` 0 until a later reload is applied.
    /// The refusal's reason is kept for `/status` (`config_reload`) until a reload is applied.
    pub(crate) fn reload_result(&self, outcome: Result<(), &str>) {
        let applied = outcome.is_ok();
        *lock(&self.reload) = match outcome {
            Ok(()) => ReloadStatus::default(),
            Err(reason) => ReloadStatus {
                last_refused_at: Some(crate::clock::now_rfc3339()),
                reason: Some(reason.to_string()),
            },
        };
        self.set_alert("reload refused", !applied);
        self.metrics.config_reload_ok.set(i64::from(applied));
        if applied {
            self.metrics.config_reload_time.set(unix_now());
        }
    }

    /// The outcome of a scan of a source's folder: an error (absent, unreadable) raises an alert,
    /// sets `coffre_source_folder_readable` 0 and counts one intake error when it starts.
    pub(crate) fn source_folder(&self, source: &str, error: Option<&str>) {
        let label = SourceLabel {
            source: source.to_string(),
        };
        self.metrics
            .source_folder_readable
            .get_or_create(&label)
            .set(i64::from(error.is_none()));
        let alert = format!("source {source}: folder cannot be scanned");
        let mut f = lock(&self.source_folders);
        match error {
            None => {
                if f.remove(source).is_some() {
                    tracing::info!(source, "source folder readable again");
                }
                drop(f);
                self.set_alert(&alert, false);
            }
            Some(e) => {
                let new = f.get(source).map(String::as_str) != Some(e);
                f.insert(source.to_string(), e.to_string());
                drop(f);
                if new {
                    tracing::error!(source, error = e, "source folder cannot be scanned");
                    self.worker_error(Worker::Intake, &format!("source {source}: {e}"));
                }
                self.set_alert(&alert, true);
            }
        }
    }

    /// The clock guard stopped shredding (for as long as this daemon runs).
    pub(crate) fn shred_stopped_by_clock(&self, alert: &str) {
        self.set_alert(alert, true);
        self.metrics.shred_clock_jump.set(1);
    }

    pub(crate) fn set_alert(&self, alert: &str, on: bool) {
        let mut a = lock(&self.alerts);
        a.retain(|x| x != alert);
        if on {
            a.push(alert.to_string());
        }
    }
}

// The status document: what `/status` serves and `coffre status` reads back (one type for
// both ends). No personal data: names of sources, stores and providers, counts, times, states.

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub snapshots: u64,
    pub last_snapshot: Option<String>,
    pub last_created: Option<String>,
    pub age_seconds: Option<f64>,
    /// `protected`, `degraded`, `at-risk` or `none`.
    pub state: String,
    /// Why the source's folder cannot be scanned (absent when it can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_error: Option<String>,
    /// The WAL archive of a source with `[source.pitr]` (absent for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalStatus>,
}

/// A source's WAL archive as the catalog knows it: what the recovery point and the recovery
/// window are now. Names of WAL files and times only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalStatus {
    /// WAL files archived (segments, history files, partial segments).
    pub files: u64,
    pub last_archived: Option<String>,
    pub last_archived_at: Option<String>,
    /// Seconds since the last WAL file was archived: what a loss now would lose at most,
    /// while PostgreSQL writes (the recovery point objective as it stands).
    pub archive_age_seconds: Option<f64>,
    /// The oldest moment a point-in-time restore can reach: when the oldest base backup of
    /// the source (a directory snapshot with a backup_label) was protected. Absent while no
    /// WAL file is archived (`files` 0): there is no range then.
    pub window_start: Option<String>,
    /// WAL files acknowledged from the local spool (`archive-async`) and not archived yet, and
    /// the age of the oldest.
    #[serde(default)]
    pub spool_files: u64,
    #[serde(default)]
    pub spool_oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStatus {
    pub name: String,
    pub site: String,
    pub jurisdiction: String,
    #[serde(flatten)]
    pub health: StoreHealth,
    pub lag_snapshots: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStatus {
    pub provider: String,
    pub kind: String,
    pub health: String,
    pub live_epochs: usize,
    pub destroyed_epochs: usize,
    pub next_epoch_to_shred: Option<String>,
}

/// The last drill of a source from a store, with the last successful one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillStatus {
    pub source: String,
    pub store: String,
    pub snapshot: Option<SnapshotId>,
    pub ok: bool,
    /// Its verify command ran and passed (false: failed, or no `verify-command`).
    #[serde(default)]
    pub verified: bool,
    pub stage: String,
    pub finished: String,
    pub rto_seconds: f64,
    pub error: Option<String>,
    pub last_success: Option<DrillSuccess>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillSuccess {
    pub snapshot: Option<SnapshotId>,
    pub finished: String,
    pub rto_seconds: f64,
    /// Its verify command ran and passed.
    #[serde(default)]
    pub verified: bool,
}

/// The JSON status document (also what `coffre status` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    pub version: String,
    pub commit: String,
    pub host: String,
    pub uptime_seconds: f64,
    pub ready: bool,
    pub sources: Vec<SourceStatus>,
    pub stores: Vec<StoreStatus>,
    pub keys: Vec<KeyStatus>,
    pub workers: BTreeMap<String, WorkerState>,
    /// What is being done now: each snapshot being protected, copied, restored or drilled.
    pub in_progress: Vec<crate::progress::Progress>,
    pub drills: Vec<DrillStatus>,
    /// The last refused reload and its reason, until a reload is applied.
    pub config_reload: ReloadStatus,
    pub alerts: Vec<String>,
}

fn unix_now() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9
}

fn unix_of(rfc3339: &str) -> Option<f64> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Whether the access log can be appended to: the file, or, before its first entry, the nearest
/// existing folder on its path (the log and its folders are created on first write). Root passes
/// permission checks, as it does when it writes.
fn access_log_writable(path: &std::path::Path) -> bool {
    use nix::unistd::{access, AccessFlags};
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path
            .ancestors()
            .skip(1)
            .find(|d| d.exists())
            .is_some_and(|d| {
                d.is_dir() && access(d, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
            }),
        Err(_) => false,
    }
}

fn age_of(created: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time::OffsetDateTime::now_utc() - t).as_seconds_f64())
}

/// Build the status document and refresh the gauges derived from the catalog.
pub fn build(app: &Coffre, rt: &Runtime) -> StatusDoc {
    // WAL archived since the last look counts in the uploaded bytes, as snapshots do.
    for (store, bytes) in crate::ops::wal::archive::take_uploaded() {
        rt.uploaded(&store, bytes);
    }
    let sources = sources(app, rt);
    let stores = stores(app, rt);
    let keys = keys(app, rt);
    let drills = drills(app, rt);
    rt.metrics
        .access_log_writable
        .set(i64::from(access_log_writable(app.audit.path())));
    StatusDoc {
        drills,
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: BUILD_COMMIT.to_string(),
        host: app.host.clone(),
        uptime_seconds: rt.started.elapsed().as_secs_f64(),
        ready: rt.ready.load(Ordering::Relaxed),
        sources,
        stores,
        keys,
        workers: lock(&rt.workers).clone(),
        in_progress: app.progress.list(),
        config_reload: lock(&rt.reload).clone(),
        alerts: alerts(app, rt),
    }
}

/// Every configured source, and every source the catalog still holds snapshots of.
fn sources(app: &Coffre, rt: &Runtime) -> Vec<SourceStatus> {
    let summaries = app.catalog.summary().unwrap_or_default();
    let mut names: Vec<String> = app.config.sources.iter().map(|s| s.name.clone()).collect();
    for s in summaries.keys() {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let sum = summaries.get(&name);
            source_status(app, rt, name, sum)
        })
        .collect()
}

/// One source: its protection state (protected in every store, degraded but in `min-sites`
/// sites, at risk), its last snapshot and its age.
fn source_status(
    app: &Coffre,
    rt: &Runtime,
    name: String,
    sum: Option<&crate::catalog::SourceSummary>,
) -> SourceStatus {
    let min_sites = app.config.replication.min_sites;
    let (state, last, created, count) = match sum {
        None => ("none".to_string(), None, None, 0),
        Some(s) => {
            let sites: std::collections::BTreeSet<&str> = app
                .stores
                .iter()
                .filter(|st| s.last_committed_stores.contains(&st.name))
                .map(|st| st.site.as_str())
                .collect();
            let state = if s.last_committed_stores.len() >= app.stores.len() {
                "protected"
            } else if sites.len() >= min_sites {
                "degraded"
            } else {
                "at-risk"
            };
            (
                state.to_string(),
                Some(s.last_id.clone()),
                Some(s.last_created.clone()),
                s.count,
            )
        }
    };
    for st in SOURCE_STATES {
        rt.metrics
            .source_state
            .get_or_create(&SourceState {
                source: name.clone(),
                state: st.to_string(),
            })
            .set(i64::from(st == state));
    }
    for outcome in SNAPSHOT_OUTCOMES {
        drop(rt.metrics.snapshots_total.get_or_create(&SourceOutcome {
            source: name.clone(),
            outcome: outcome.to_string(),
        }));
    }
    let age = created.as_deref().and_then(age_of);
    if let Some(c) = created.as_deref() {
        if let Ok(t) =
            time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339)
        {
            rt.metrics
                .last_protected
                .get_or_create(&SourceLabel {
                    source: name.clone(),
                })
                .set(t.unix_timestamp_nanos() as f64 / 1e9);
        }
    }
    if let Some(a) = age {
        rt.metrics
            .snapshot_age
            .get_or_create(&SourceLabel {
                source: name.clone(),
            })
            .set(a);
    }
    let wal = wal_status(app, rt, &name);
    SourceStatus {
        folder_error: lock(&rt.source_folders).get(&name).cloned(),
        wal,
        name,
        snapshots: count,
        last_snapshot: last,
        last_created: created,
        age_seconds: age,
        state,
    }
}

/// The WAL archive of a source that keeps one, and its gauges.
/// When the oldest base backup of `name` (a directory snapshot with a backup_label, as
/// point-in-time recovery takes them) was protected.
fn base_backups_since(app: &Coffre, name: &str) -> Option<String> {
    let parse = |c: &str| {
        time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
    };
    app.catalog
        .list(Some(name))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.manifest.kind == crate::store::SnapshotKind::Directory
                && e.manifest.pg_wal_start.is_some()
        })
        .map(|e| e.manifest.created)
        .min_by_key(|c| parse(c))
}

fn wal_status(app: &Coffre, rt: &Runtime, name: &str) -> Option<WalStatus> {
    rt.take_wal_counts();
    let pitr = app.config.source(name)?.pitr.as_ref()?;
    let label = SourceLabel {
        source: name.to_string(),
    };
    rt.metrics
        .pitr_window
        .get_or_create(&label)
        .set(pitr.window.as_secs_f64());
    let (files, last) = app.catalog.wal_summary(name).unwrap_or((0, None));
    rt.metrics.wal_files.get_or_create(&label).set(files as i64);
    let parse = |c: &str| {
        time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
    };
    let last_at = last.as_ref().map(|(_, c)| c.clone());
    if let Some(t) = last_at.as_deref().and_then(parse) {
        rt.metrics
            .wal_last_archived
            .get_or_create(&label)
            .set(t.unix_timestamp_nanos() as f64 / 1e9);
    }
    let age = last_at.as_deref().and_then(age_of);
    if let Some(a) = age {
        rt.metrics.wal_archive_age.get_or_create(&label).set(a);
    }
    let window_start = base_backups_since(app, name);
    if let Some(t) = window_start.as_deref().and_then(parse) {
        rt.metrics
            .pitr_window_start
            .get_or_create(&label)
            .set(t.unix_timestamp_nanos() as f64 / 1e9);
    }
    let spool = crate::ops::wal::spool::depth(app, name);
    rt.metrics
        .wal_spool_files
        .get_or_create(&label)
        .set(spool.files as i64);
    rt.metrics
        .wal_spool_oldest_age
        .get_or_create(&label)
        .set(spool.oldest_seconds.unwrap_or(0.0));
    Some(WalStatus {
        spool_files: spool.files,
        spool_oldest_age_seconds: spool.oldest_seconds,
        files,
        last_archived: last.map(|(n, _)| n),
        last_archived_at: last_at,
        archive_age_seconds: age,
        // No archived WAL, no point-in-time range to claim.
        window_start: window_start.filter(|_| files > 0),
    })
}

fn stores(app: &Coffre, rt: &Runtime) -> Vec<StoreStatus> {
    let names: Vec<String> = app.stores.iter().map(|s| s.name.clone()).collect();
    let lags = app.catalog.lag_by_store(&names).unwrap_or_default();
    let health = lock(&rt.stores).clone();
    app.stores
        .iter()
        .map(|s| {
            let lag = lags.get(&s.name).copied().unwrap_or(0);
            let label = StoreLabel {
                store: s.name.clone(),
            };
            rt.metrics.lag.get_or_create(&label).set(lag as i64);
            // Counters have a sample (0) from the first scrape, so rates and alerts see them.
            drop(rt.metrics.uploaded_bytes.get_or_create(&label));
            drop(rt.metrics.scrub_errors.get_or_create(&label));
            drop(rt.metrics.repairs.get_or_create(&label));
            StoreStatus {
                name: s.name.clone(),
                site: s.site.clone(),
                jurisdiction: s.jurisdiction.clone(),
                health: health.get(&s.name).cloned().unwrap_or_default(),
                lag_snapshots: lag,
            }
        })
        .collect()
}

fn keys(app: &Coffre, rt: &Runtime) -> Vec<KeyStatus> {
    app.providers
        .iter()
        .map(|p| {
            let epochs = p.epochs().unwrap_or_default();
            let live: Vec<_> = epochs.iter().filter(|e| e.destroyed.is_none()).collect();
            let health = p.health();
            rt.metrics
                .key_provider_up
                .get_or_create(&ProviderLabel {
                    provider: p.name().to_string(),
                    kind: p.kind().to_string(),
                })
                .set(i64::from(health.is_ok()));
            for (state, n) in [
                ("live", live.len()),
                ("destroyed", epochs.len() - live.len()),
            ] {
                rt.metrics
                    .key_epochs
                    .get_or_create(&ProviderEpochs {
                        provider: p.name().to_string(),
                        state: state.to_string(),
                    })
                    .set(n as i64);
            }
            KeyStatus {
                provider: p.name().to_string(),
                kind: p.kind().to_string(),
                health: health
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| format!("{e}")),
                live_epochs: live.len(),
                destroyed_epochs: epochs.len() - live.len(),
                next_epoch_to_shred: live.iter().map(|e| e.epoch.to_string()).min(),
            }
        })
        .collect()
}

/// The last drill of each source from each store; the drill gauges (success time and RTO from
/// the last successful drill, whatever came after it).
fn drills(app: &Coffre, rt: &Runtime) -> Vec<DrillStatus> {
    let mut drills = Vec::new();
    for (text, last_ok) in app.catalog.drills().unwrap_or_default() {
        let Ok(r) = serde_json::from_str::<crate::ops::drill::DrillReport>(&text) else {
            continue;
        };
        let success = last_ok
            .as_deref()
            .and_then(|t| serde_json::from_str::<crate::ops::drill::DrillReport>(t).ok());
        let label = SourceStore {
            source: r.source.clone(),
            store: r.store.clone(),
        };
        rt.metrics
            .drill_last_ok
            .get_or_create(&label)
            .set(i64::from(r.ok));
        rt.metrics
            .drill_verified
            .get_or_create(&label)
            .set(i64::from(r.is_verified()));
        if let Some(t) = unix_of(&r.finished) {
            rt.metrics.drill_last_attempt.get_or_create(&label).set(t);
        }
        // Success time and RTO come from the last successful drill, whatever came after it.
        if let Some(ok) = &success {
            rt.metrics
                .drill_duration
                .get_or_create(&label)
                .set(ok.rto_seconds);
            if let Some(t) = unix_of(&ok.finished) {
                rt.metrics.drill_last_success.get_or_create(&label).set(t);
            }
        }
        drills.push(DrillStatus {
            verified: r.is_verified(),
            last_success: success.map(|s| DrillSuccess {
                verified: s.is_verified(),
                snapshot: s.snapshot,
                finished: s.finished,
                rto_seconds: s.rto_seconds,
            }),
            source: r.source,
            store: r.store,
            snapshot: r.snapshot,
            ok: r.ok,
            stage: r.stage,
            finished: r.finished,
            rto_seconds: r.rto_seconds,
            error: r.error,
        });
    }
    for s in &app.config.sources {
        if let Some(every) = s.drill.every {
            rt.metrics
                .drill_interval
                .get_or_create(&SourceLabel {
                    source: s.name.clone(),
                })
                .set(every.as_secs_f64());
        }
    }
    drills
}

/// The daemon's own alerts, then the lasting ones any run recorded in the catalog.
fn alerts(app: &Coffre, rt: &Runtime) -> Vec<String> {
    let mut a = lock(&rt.alerts).clone();
    for (_, text, since) in app.catalog.alerts().unwrap_or_default() {
        a.push(format!("{text} (since {since})"));
    }
    a
}

/// One line for systemd's STATUS=.
pub(crate) fn summary_line(doc: &StatusDoc) -> String {
    let protected = doc
        .sources
        .iter()
        .filter(|s| s.state == "protected")
        .count();
    let down = doc
        .stores
        .iter()
        .filter(|s| !s.health.up && s.health.last_error_kind.is_some())
        .count();
    let lag: u64 = doc.stores.iter().map(|s| s.lag_snapshots).sum();
    format!(
        "{protected}/{} sources protected, {down} store(s) down, {lag} replica(s) lagging{}",
        doc.sources.len(),
        if doc.alerts.is_empty() {
            String::new()
        } else {
            format!(", ALERT: {}", doc.alerts.join("; "))
        }
    )
}

#[derive(Clone)]
struct StatusServer {
    app: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
}

fn authorized(ctx: &StatusServer, headers: &HeaderMap) -> bool {
    match &ctx.rt.token {
        None => true,
        Some(t) => {
            let t = secrecy::ExposeSecret::expose_secret(t);
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| {
                    // Constant-time comparison of the token.
                    given.len() == t.len()
                        && given
                            .bytes()
                            .zip(t.bytes())
                            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                            == 0
                })
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctx): State<StatusServer>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if ctx.rt.ready.load(Ordering::Relaxed) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn status(State(ctx): State<StatusServer>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let app = ctx.app.borrow().clone();
    let rt = ctx.rt.clone();
    match tokio::task::spawn_blocking(move || build(&app, &rt)).await {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics(State(ctx): State<StatusServer>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Prometheus asks for OpenMetrics; curl and `promtool check metrics` get the classic text.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let app = ctx.app.borrow().clone();
    let rt = ctx.rt.clone();
    let body = tokio::task::spawn_blocking(move || {
        let _ = build(&app, &rt);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &rt.metrics.registry).map(|_| out)
    })
    .await;
    match body {
        Ok(Ok(text)) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            openmetrics_to_text(&text),
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// OpenMetrics text as Prometheus text format 0.0.4: a counter family `x` (samples `x_total`)
/// is described as `x_total` there, and there is no `# UNIT` or `# EOF`.
fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(described.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

pub(crate) fn router(app: watch::Receiver<Arc<Coffre>>, rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(StatusServer { app, rt })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_are_named_with_total_in_the_classic_text() {
        let om = "# HELP coffre_repairs Replicas repaired.\n# TYPE coffre_repairs counter\n\
                  coffre_repairs_total{store=\"a\"} 0\n# HELP coffre_store_up 1 when up.\n\
                  # TYPE coffre_store_up gauge\n# UNIT coffre_store_up x\ncoffre_store_up{store=\"a\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP coffre_repairs_total Replicas repaired.\n# TYPE coffre_repairs_total counter\n\
             coffre_repairs_total{store=\"a\"} 0\n# HELP coffre_store_up 1 when up.\n\
             # TYPE coffre_store_up gauge\ncoffre_store_up{store=\"a\"} 1\n"
        );
    }

    #[test]
    fn first_scrape_has_build_info_and_health_gauges() {
        let rt = Runtime::new(None);
        rt.worker(Worker::Scrub, WorkState::Idle);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &rt.metrics.registry).unwrap();
        let text = openmetrics_to_text(&out);
        for line in [
            "coffre_config_last_reload_successful 1",
            "coffre_shred_clock_jump_detected 0",
            "coffre_worker_errors_total{worker=\"scrub\"} 0",
            "coffre_worker_state{worker=\"scrub\",state=\"idle\"} 1",
            "coffre_worker_state{worker=\"scrub\",state=\"busy\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(
            text.contains(&format!(
                "coffre_build_info{{version=\"{}\",commit=\"{BUILD_COMMIT}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        rt.reload_result(Err("store[0].path: missing"));
        assert_eq!(
            lock(&rt.reload).reason.as_deref(),
            Some("store[0].path: missing")
        );
        rt.shred_stopped_by_clock("clock jumped");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &rt.metrics.registry).unwrap();
        assert!(out
            .lines()
            .any(|l| l == "coffre_config_last_reload_successful 0"));
        assert!(out
            .lines()
            .any(|l| l == "coffre_shred_clock_jump_detected 1"));
        assert!(lock(&rt.alerts).contains(&"reload refused".to_string()));
    }

    #[test]
    fn access_log_writable_checks_the_file_or_its_nearest_folder() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit").join("access.log");
        assert!(
            access_log_writable(&log),
            "not created yet: its folder decides"
        );
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "").unwrap();
        assert!(access_log_writable(&log));
        std::fs::remove_file(&log).unwrap();
        std::fs::create_dir(&log).unwrap();
        assert!(!access_log_writable(&log), "a folder in its place");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(
            !access_log_writable(&file.join("access.log")),
            "under a file"
        );
    }
}
