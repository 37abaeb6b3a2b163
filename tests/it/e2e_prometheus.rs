//! The Prometheus side of coffre with the real tools: `promtool check rules` and `promtool test
//! rules` on `config/prometheus/`, `promtool check metrics` on a real daemon's `/metrics`, a real
//! Prometheus server scraping that daemon (store up, then one store made unavailable, the rules
//! evaluated), and every PromQL expression of `config/grafana/coffre.json` evaluated against it
//! (its WAL/PITR row too: the daemon has a source with `[source.pitr]` and one archived WAL file).
//! Install the tools with `tests/setup.sh` (Debian package `prometheus`, which ships `promtool`).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::config::ConfigBuilder;
use common::daemon::{wait_until, OnDrop, TestDaemon};
use common::{free_port, http_get_text, promtool, Prometheus};

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
fn rules_dir() -> PathBuf {
    repo().join("config/prometheus")
}
fn rules_file() -> PathBuf {
    rules_dir().join("coffre-alerts.yml")
}
fn dashboard() -> serde_json::Value {
    let p = repo().join("config/grafana/coffre.json");
    let text = std::fs::read_to_string(&p).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// Names of the alerts in the rules file (`- alert: NAME` lines).
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(rules_file())
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let (ok, out) = promtool(
        &["check", "rules", rules_file().to_str().unwrap()],
        None,
        &rules_dir(),
    );
    assert!(ok, "promtool check rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_unit_tests_pass_and_cover_every_alert() {
    let (ok, out) = promtool(
        &["test", "rules", "coffre-alerts.test.yml"],
        None,
        &rules_dir(),
    );
    assert!(ok, "promtool test rules failed:\n{out}");
    // Every alert has a case where it fires and one where it stays silent.
    let tests = std::fs::read_to_string(rules_dir().join("coffre-alerts.test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let names = alert_names();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let cases: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == format!("alertname: {name}"))
            .map(|(i, _)| i)
            .collect();
        let next = |i: usize| lines.get(i + 1).copied().unwrap_or("");
        assert!(
            cases.iter().any(|&i| next(i) == "exp_alerts:"),
            "no test where {name} fires"
        );
        assert!(
            cases.iter().any(|&i| next(i) == "exp_alerts: []"),
            "no test where {name} stays silent"
        );
    }
}

/// Every PromQL expression of the dashboard, with its panel's title, variables substituted.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.to_string(), e.to_string()));
                }
                for (k, x) in m {
                    if k != "templating" {
                        walk(x, title, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(d, "", &mut out);
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("${instance}", ".*")
                .replace("$instance", ".*");
            assert!(!e.contains('$'), "unknown variable in {t:?}: {e}");
            (t, e)
        })
        .collect()
}

#[test]
fn dashboard_is_grafana_json_with_prometheus_variable_datasource() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"] == "coffre");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    let panels = d["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert_eq!(p["datasource"]["type"], "prometheus");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    assert!(dashboard_exprs(&d).len() >= 20);
    // The WAL/PITR row: archive age, WAL files, recovery window, spool, fetches and their time.
    assert!(panels
        .iter()
        .any(|p| p["type"] == "row" && p["title"] == "WAL archiving and point-in-time recovery"));
    let exprs: Vec<String> = dashboard_exprs(&d).into_iter().map(|(_, e)| e).collect();
    for metric in [
        "coffre_wal_archive_age_seconds",
        "coffre_wal_files",
        "coffre_pitr_window_start_timestamp_seconds",
        "coffre_pitr_window_seconds",
        "coffre_wal_spool_files",
        "coffre_wal_spool_oldest_age_seconds",
        "coffre_wal_fetches_total",
        "coffre_wal_prefetch_hits_total",
        "coffre_wal_fetch_seconds_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(&format!("{metric}{{"))),
            "no dashboard panel shows {metric}"
        );
    }
}

/// A base backup of source `pg` starting at segment 2, and segment 2 archived: the WAL/PITR
/// panels (archive age, files, recovery window, spool, fetches) have data.
fn wal_archive(d: &Path) {
    let seg = "000000010000000000000002";
    let base = d.join("pgbase/base-1");
    std::fs::create_dir_all(base.join("global")).unwrap();
    std::fs::write(base.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        base.join("backup_label"),
        format!("START WAL LOCATION: 0/2000028 (file {seg})\nBACKUP METHOD: streamed\n"),
    )
    .unwrap();
    std::fs::write(base.join("global/pg_control"), vec![3u8; 8192]).unwrap();
    std::fs::write(base.join("backup_manifest"), "{}\n").unwrap();
    run_ok(d, &["backup", "--source", "pg", base.to_str().unwrap()]);
    let mut bytes = vec![0u8; 16 << 20];
    common::coffre::stamp_wal_header(&mut bytes, seg);
    let wal = d.join("pg_wal").join(seg);
    std::fs::write(&wal, bytes).unwrap();
    run_ok(d, &["wal-push", "--source", "pg", wal.to_str().unwrap()]);
}

fn coffre(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(dir.join("coffre.toml"))
        .arg("--log-format")
        .arg("text")
        .args(args)
        .env("COFFRE_LOG", "warn")
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = coffre(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "coffre {args:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prometheus_scrapes_the_daemon_and_the_dashboard_queries_return_data() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for sub in ["incoming", "keys", "stores", "pgbase", "pg_wal"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let port = free_port();
    ConfigBuilder::new(d)
        .quick_daemon()
        .status(port)
        .source(
            "emr",
            &d.join("incoming"),
            "complete = \"rename\"\n[source.drill]\nevery = \"1h\"",
        )
        .source("pg", &d.join("pgbase"), "complete = \"marker\"")
        .pitr("7d", "")
        .local_stores(&[("site-a", "a"), ("site-b", "b")])
        .file_keys()
        .write(&d.join("coffre.toml"));

    // Two snapshots and a drill on record before the daemon starts.
    for i in 0..2 {
        let dump = d.join(format!("dump-{i}.sql"));
        let text: String = (0..20_000)
            .map(|n| format!("INSERT INTO lab_results VALUES ({n}, {i}, 'glucose');\n"))
            .collect();
        std::fs::write(&dump, text).unwrap();
        let id = run_ok(d, &["backup", "--source", "emr", dump.to_str().unwrap()]);
        assert_eq!(id.trim().len(), 26, "{id}");
    }
    run_ok(d, &["drill", "--source", "emr", "--json"]);
    wal_archive(d);

    let log = d.join("daemon.log");
    let mut cmd = coffre(d, &[]);
    cmd.env("COFFRE_LOG", "info");
    let daemon = TestDaemon::spawn(cmd, Some(&log))
        .on_drop(OnDrop::Kill)
        .wait_ready(port, 60);

    // The first scrape: promtool accepts it, and the counters and health gauges have samples.
    let (code, metrics) = http_get_text(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let (ok, out) = promtool(&["check", "metrics"], Some(metrics.as_bytes()), d);
    assert!(
        ok,
        "promtool check metrics failed:\n{out}\n--- /metrics:\n{metrics}"
    );
    for line in [
        "coffre_scrub_errors_total{store=\"site-a\"} 0",
        "coffre_scrub_errors_total{store=\"site-b\"} 0",
        "coffre_repairs_total{store=\"site-a\"} 0",
        "coffre_repairs_total{store=\"site-b\"} 0",
        "coffre_config_last_reload_successful 1",
        "coffre_shred_clock_jump_detected 0",
        "coffre_access_log_writable 1",
        "coffre_key_provider_up{provider=\"local\",kind=\"file\"} 1",
        "coffre_source_state{source=\"emr\",state=\"protected\"} 1",
        "coffre_drill_last_ok{source=\"emr\",store=\"site-a\"} 1",
        "coffre_drill_interval_seconds{source=\"emr\"} 3600",
        "coffre_wal_archived_ahead_total 0",
        "coffre_wal_fetches_total 0",
        "coffre_wal_files{source=\"pg\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(line)),
            "{line} missing from the first scrape:\n{metrics}"
        );
    }
    // Every outcome of coffre_snapshots_total has a sample from the first scrape.
    for outcome in [
        "protected",
        "degraded",
        "at-risk",
        "failed",
        "interrupted",
        "changed-while-read",
    ] {
        let line = format!("coffre_snapshots_total{{source=\"pg\",outcome=\"{outcome}\"}} 0");
        assert!(
            metrics.lines().any(|l| *l == line),
            "{line} missing from the first scrape:\n{metrics}"
        );
    }
    let build = format!(
        "coffre_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{metrics}");

    let prom = Prometheus::start(
        "coffre",
        &[format!("127.0.0.1:{port}")],
        std::slice::from_ref(&rules_file()),
    );
    let up = |store: &str| prom.value_where("coffre_store_up", "store", store);
    wait_until(
        "Prometheus reports coffre_store_up 1 for both stores",
        60,
        || up("site-a") == Some(1.0) && up("site-b") == Some(1.0),
    );

    // Every dashboard query returns data (range functions need a second scrape: wait for it).
    let exprs = dashboard_exprs(&dashboard());
    let empty = |exprs: &[(String, String)]| -> Vec<String> {
        exprs
            .iter()
            .filter(|(_, e)| prom.query(e).map(|r| r.is_empty()).unwrap_or(true))
            .map(|(t, e)| format!("{t}: {e} -> {:?}", prom.query(e)))
            .collect()
    };
    let t = Instant::now();
    let mut missing = empty(&exprs);
    while !missing.is_empty() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        missing = empty(&exprs);
    }
    assert!(
        missing.is_empty(),
        "dashboard queries without data:\n{}",
        missing.join("\n")
    );

    // The real server loaded and evaluates every rule without error; nothing fires yet.
    wait_until("every alert rule evaluated without error", 60, || {
        let Ok(data) = prom.api("/api/v1/rules") else {
            return false;
        };
        let rules: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == alert_names().len()
            && rules.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            })
    });
    let alerts = prom.api("/api/v1/alerts").unwrap();
    assert_eq!(alerts["alerts"], serde_json::json!([]), "{alerts}");

    // Site b becomes unavailable: its folder is replaced by a file.
    std::fs::rename(d.join("stores/b"), d.join("stores/b.moved")).unwrap();
    std::fs::write(d.join("stores/b"), "not a folder").unwrap();
    wait_until(
        "Prometheus reports coffre_store_up 0 for site-b",
        60,
        || up("site-b") == Some(0.0),
    );
    assert_eq!(up("site-a"), Some(1.0));
    wait_until("CoffreStoreDown pending for site-b", 60, || {
        prom.api("/api/v1/alerts").is_ok_and(|a| {
            a["alerts"].as_array().is_some_and(|v| {
                v.iter().any(|x| {
                    x["labels"]["alertname"] == "CoffreStoreDown"
                        && x["labels"]["store"] == "site-b"
                        && x["state"] == "pending"
                })
            })
        })
    });

    // Nothing of the snapshots' contents in the metrics or the log.
    let (_, metrics) = http_get_text(port, "/metrics").unwrap();
    for text in [&metrics, &daemon.log_text()] {
        assert!(!text.contains("glucose") && !text.contains("lab_results"));
    }
    drop(prom);
    drop(daemon);
}
