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
use serde::Serialize;
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
}

impl Metrics {
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
            registry: Registry::default(),
        };
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
            "Duration (restore + verify) of the last drill",
            m.drill_duration.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// Health of one store as last seen.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StoreHealth {
    pub up: bool,
    pub last_error_kind: Option<String>,
    pub last_error_at: Option<String>,
    pub uploaded_bytes: u64,
}

/// State of a background worker.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WorkerState {
    /// `idle`, `busy`, `backing-off`, `stopped`.
    pub state: String,
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
        })
    }

    pub fn store_ok(&self, store: &str) {
        lock(&self.stores).entry(store.to_string()).or_default().up = true;
        self.metrics
            .store_up
            .get_or_create(&StoreLabel {
                store: store.into(),
            })
            .set(1);
    }

    pub fn store_failed(&self, store: &str, kind: &str) {
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
        lock(&self.stores)
            .entry(store.to_string())
            .or_default()
            .uploaded_bytes += bytes;
        self.metrics
            .uploaded_bytes
            .get_or_create(&StoreLabel {
                store: store.into(),
            })
            .inc_by(bytes);
    }

    pub fn worker(&self, name: &str, state: &str) {
        let mut w = lock(&self.workers);
        let e = w.entry(name.to_string()).or_default();
        if state == "busy" {
            e.runs += 1;
            e.last_run = Some(crate::clock::now_rfc3339());
        }
        e.state = state.to_string();
    }

    pub fn worker_error(&self, name: &str, error: &str) {
        let mut w = lock(&self.workers);
        let e = w.entry(name.to_string()).or_default();
        e.errors += 1;
        e.last_error = Some(error.to_string());
    }

    pub fn set_alert(&self, alert: &str, on: bool) {
        let mut a = lock(&self.alerts);
        a.retain(|x| x != alert);
        if on {
            a.push(alert.to_string());
        }
    }
}

#[derive(Serialize)]
struct SourceStatus {
    name: String,
    snapshots: u64,
    last_snapshot: Option<String>,
    last_created: Option<String>,
    age_seconds: Option<f64>,
    /// `protected`, `degraded`, `at-risk` or `none`.
    state: String,
}

#[derive(Serialize)]
struct StoreStatus {
    name: String,
    site: String,
    jurisdiction: String,
    #[serde(flatten)]
    health: StoreHealth,
    lag_snapshots: u64,
}

#[derive(Serialize)]
struct KeyStatus {
    provider: String,
    kind: String,
    health: String,
    live_epochs: usize,
    destroyed_epochs: usize,
    next_epoch_to_shred: Option<String>,
}

/// The JSON status document (also what `coffre status` prints).
#[derive(Serialize)]
pub struct StatusDoc {
    version: &'static str,
    host: String,
    uptime_seconds: f64,
    ready: bool,
    sources: Vec<SourceStatus>,
    stores: Vec<StoreStatus>,
    keys: Vec<KeyStatus>,
    workers: BTreeMap<String, WorkerState>,
    drills: Vec<serde_json::Value>,
    alerts: Vec<String>,
}

fn age_of(created: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time::OffsetDateTime::now_utc() - t).as_seconds_f64())
}

/// Build the status document and refresh the gauges derived from the catalog.
pub fn build(app: &Coffre, rt: &Runtime) -> StatusDoc {
    let summaries = app.catalog.summary().unwrap_or_default();
    let min_sites = app.config.replication.min_sites;
    let mut sources = Vec::new();
    let mut names: Vec<String> = app.config.sources.iter().map(|s| s.name.clone()).collect();
    for s in summaries.keys() {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    for name in names {
        let sum = summaries.get(&name);
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
        sources.push(SourceStatus {
            name,
            snapshots: count,
            last_snapshot: last,
            last_created: created,
            age_seconds: age,
            state,
        });
    }
    let names: Vec<String> = app.stores.iter().map(|s| s.name.clone()).collect();
    let lags = app.catalog.lag_by_store(&names).unwrap_or_default();
    let health = lock(&rt.stores).clone();
    let stores = app
        .stores
        .iter()
        .map(|s| {
            let lag = lags.get(&s.name).copied().unwrap_or(0);
            rt.metrics
                .lag
                .get_or_create(&StoreLabel {
                    store: s.name.clone(),
                })
                .set(lag as i64);
            StoreStatus {
                name: s.name.clone(),
                site: s.site.clone(),
                jurisdiction: s.jurisdiction.clone(),
                health: health.get(&s.name).cloned().unwrap_or_default(),
                lag_snapshots: lag,
            }
        })
        .collect();
    let keys = app
        .providers
        .iter()
        .map(|p| {
            let epochs = p.epochs().unwrap_or_default();
            let live: Vec<_> = epochs.iter().filter(|e| e.destroyed.is_none()).collect();
            KeyStatus {
                provider: p.name().to_string(),
                kind: p.kind().to_string(),
                health: p
                    .health()
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| format!("{e}")),
                live_epochs: live.len(),
                destroyed_epochs: epochs.len() - live.len(),
                next_epoch_to_shred: live.iter().map(|e| e.epoch.to_string()).min(),
            }
        })
        .collect();
    let mut drills = Vec::new();
    for text in app.catalog.drills().unwrap_or_default() {
        let Ok(r) = serde_json::from_str::<crate::ops::drill::DrillReport>(&text) else {
            continue;
        };
        let label = SourceStore {
            source: r.source.clone(),
            store: r.store.clone(),
        };
        rt.metrics
            .drill_duration
            .get_or_create(&label)
            .set(r.rto_seconds);
        if r.ok {
            if let Ok(t) = time::OffsetDateTime::parse(
                &r.finished,
                &time::format_description::well_known::Rfc3339,
            ) {
                rt.metrics
                    .drill_last_success
                    .get_or_create(&label)
                    .set(t.unix_timestamp_nanos() as f64 / 1e9);
            }
        }
        drills.push(serde_json::json!({
            "source": r.source, "store": r.store, "snapshot": r.snapshot, "ok": r.ok, "stage": r.stage,
            "finished": r.finished, "rto_seconds": r.rto_seconds, "error": r.error,
        }));
    }
    StatusDoc {
        drills,
        version: env!("CARGO_PKG_VERSION"),
        host: app.host.clone(),
        uptime_seconds: rt.started.elapsed().as_secs_f64(),
        ready: rt.ready.load(Ordering::Relaxed),
        sources,
        stores,
        keys,
        workers: lock(&rt.workers).clone(),
        alerts: {
            // The daemon's own alerts, then the lasting ones any run recorded in the catalog.
            let mut a = lock(&rt.alerts).clone();
            for (_, text, since) in app.catalog.alerts().unwrap_or_default() {
                a.push(format!("{text} (since {since})"));
            }
            a
        },
    }
}

/// One line for systemd's STATUS=.
pub fn summary_line(doc: &StatusDoc) -> String {
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
struct Ctx {
    app: watch::Receiver<Arc<Coffre>>,
    rt: Arc<Runtime>,
}

fn authorized(ctx: &Ctx, headers: &HeaderMap) -> bool {
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

async fn readyz(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if ctx.rt.ready.load(Ordering::Relaxed) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn status(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
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

async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let app = ctx.app.borrow().clone();
    let rt = ctx.rt.clone();
    let body = tokio::task::spawn_blocking(move || {
        let _ = build(&app, &rt);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &rt.metrics.registry).map(|_| out)
    })
    .await;
    match body {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub fn router(app: watch::Receiver<Arc<Coffre>>, rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(Ctx { app, rt })
}
