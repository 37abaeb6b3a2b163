//! Disaster-recovery drills end to end with real PostgreSQL: the project's EMR generator makes a
//! database and its pg_basebackup; the daemon protects the backup in two sites (a local folder and
//! s3s-fs); drills restore it from each store, start PostgreSQL on the restored copy and check the
//! row counts and the canary patient.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::ConfigBuilder;
use common::daemon::{http_body as http_get, wait_until, OnDrop, TestDaemon};
use common::{free_port, Postgres, S3Server};

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

struct Env {
    dir: PathBuf,
    port: u16,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn config(&self, s3: &S3Server, counts: &Path, state: &str) -> PathBuf {
        let d = self.dir.display();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/drill-verify-pg.sh");
        let drill = format!(
            "complete = \"marker\"\n[source.drill]\nevery = \"1h\"\nverify-command = \"{script} {{file}} {{port}} {counts}\"\nscratch-dir = \"{d}/scratch\"\ntimeout = \"5m\"",
            script = script.display(),
            counts = counts.display(),
        );
        ConfigBuilder::new(&self.dir)
            .state(&self.dir.join(state))
            .table("daemon", "scan-interval = \"200ms\"")
            .status(self.port)
            .source("emr-base", &self.dir.join("incoming"), &drill)
            .local_store("site-a", "mtl", &self.dir.join("stores/a"))
            .s3_store_keys_in("s3-qc", "qc", s3, ("T_AK", "T_SK"))
            .file_keys()
            .write(&self.dir.join(format!("{state}.toml")))
    }

    fn cmd(&self, config: &Path, s3: &S3Server) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(config)
            .env("T_AK", s3.access_key())
            .env("T_SK", s3.secret_key())
            .env("COFFRE_LOG", "warn");
        c
    }

    fn run(&self, config: &Path, s3: &S3Server, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(config, s3).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn scratch_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true)
}

#[test]
fn drills_restore_a_basebackup_start_postgres_and_survive_the_loss_of_a_site() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        dir: tmp.path().to_path_buf(),
        port: free_port(),
        _tmp: tmp,
    };
    let db = Postgres::make_emr_db(&env.dir.join("emr"), 300);
    let config = env.config(&s3, &db.counts, "state");
    std::fs::create_dir_all(env.dir.join("incoming")).unwrap();

    // The daemon protects the basebackup once it lands (renamed in whole, marker inside).
    let daemon = TestDaemon::spawn(env.cmd(&config, &s3), Some(&env.dir.join("daemon.log")))
        .on_drop(OnDrop::Kill);
    Command::new("cp")
        .arg("-a")
        .arg(&db.basebackup)
        .arg(env.dir.join("incoming/.landing"))
        .status()
        .unwrap();
    std::fs::rename(
        env.dir.join("incoming/.landing"),
        env.dir.join("incoming/base-1"),
    )
    .unwrap();
    wait_until("the basebackup is protected in both sites", 60, || {
        let (_, out, _) = env.run(&config, &s3, &["snapshots", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .map(|v| v[0]["stores"].as_array().is_some_and(|s| s.len() == 2))
            .unwrap_or(false)
    });
    // The scheduled drill (every 1h, never run yet) runs from both stores.
    wait_until("the scheduled drill reported both stores", 240, || {
        http_get(env.port, "/status")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["drills"].as_array().is_some_and(|d| d.len() == 2))
    });
    let status: serde_json::Value =
        serde_json::from_str(&http_get(env.port, "/status").unwrap()).unwrap();
    for d in status["drills"].as_array().unwrap() {
        assert_eq!(d["ok"], true, "{status}");
        assert!(d["rto_seconds"].as_f64().unwrap() > 0.0);
    }
    let metrics = http_get(env.port, "/metrics").unwrap();
    assert!(
        metrics.contains(
            "coffre_drill_last_success_timestamp_seconds{source=\"emr-base\",store=\"s3-qc\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("coffre_drill_duration_seconds{source=\"emr-base\",store=\"site-a\"}"));
    daemon.terminate();
    assert!(
        scratch_is_empty(&env.dir.join("scratch")),
        "scratch folder wiped"
    );

    // An on-demand drill, JSON report.
    let (code, out, err) = env.run(&config, &s3, &["drill", "--source", "emr-base", "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["verify_exit"], 0);
        assert_eq!(r["scratch_wiped"], true);
        assert!(
            r["restore_seconds"].as_f64().unwrap() > 0.0
                && r["rto_seconds"].as_f64().unwrap() >= r["restore_seconds"].as_f64().unwrap()
        );
    }
    assert!(
        !out.contains("CANARY"),
        "drill output holds no personal data"
    );

    // A tampered replica: the drill from that store fails and names it; the other still passes.
    let id = reports[0]["snapshot"].as_str().unwrap().to_string();
    let data = env
        .dir
        .join(format!("stores/a/coffre/snapshots/emr-base/{id}/data"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let (code, out, _) = env.run(&config, &s3, &["drill", "--source", "emr-base", "--json"]);
    assert_ne!(code, 0);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let bad = reports.iter().find(|r| r["store"] == "site-a").unwrap();
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("site-a"), "{bad}");
    assert!(reports.iter().find(|r| r["store"] == "s3-qc").unwrap()["ok"] == true);
    assert!(
        scratch_is_empty(&env.dir.join("scratch")),
        "scratch wiped after a failed drill too"
    );
    // The status shows the failed drill for that store.
    let daemon = TestDaemon::spawn(env.cmd(&config, &s3), Some(&env.dir.join("daemon2.log")))
        .on_drop(OnDrop::Kill);
    wait_until("status answers", 30, || {
        http_get(env.port, "/status").is_some()
    });
    let status: serde_json::Value =
        serde_json::from_str(&http_get(env.port, "/status").unwrap()).unwrap();
    let d = status["drills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["store"] == "site-a")
        .cloned()
        .unwrap();
    assert_eq!(d["ok"], false, "{status}");
    assert!(d["error"].as_str().unwrap().contains("site-a"), "{status}");
    // The failed drill and the restart did not erase the last success (issue 13, part 2).
    let success = &d["last_success"];
    assert_eq!(success["snapshot"].as_str(), Some(id.as_str()), "{status}");
    assert!(success["finished"].as_str().unwrap() < d["finished"].as_str().unwrap());
    assert!(success["rto_seconds"].as_f64().unwrap() > 0.0, "{status}");
    let metrics = http_get(env.port, "/metrics").unwrap();
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{source=\"emr-base\",store=\"site-a\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} for site-a in\n{metrics}"))
    };
    assert_eq!(sample("coffre_drill_last_ok"), 0.0);
    assert!(
        sample("coffre_drill_last_success_timestamp_seconds")
            < sample("coffre_drill_last_attempt_timestamp_seconds")
    );
    assert!(
        sample("coffre_drill_duration_seconds") > 0.0,
        "the RTO of the last success"
    );
    daemon.terminate();

    // The access log has the drills, and its chain holds.
    let (code, out, _) = env.run(
        &config,
        &s3,
        &["audit", "show", "--json", "--action", "drill-result"],
    );
    assert_eq!(code, 0);
    assert!(out.matches("\"drill-result\"").count() >= 6, "{out}");
    let (code, _, err) = env.run(&config, &s3, &["audit", "verify"]);
    assert_eq!(code, 0, "{err}");

    // Disaster: the local state folder and one site are gone. A new host with the config and
    // the master key runs a fresh-catalog drill from the surviving store.
    std::fs::remove_dir_all(env.dir.join("state")).unwrap();
    std::fs::remove_dir_all(env.dir.join("stores/a")).unwrap();
    let (code, out, err) = env.run(
        &config,
        &s3,
        &["drill", "--fresh-catalog", "--store", "s3-qc", "--json"],
    );
    assert_eq!(code, 0, "{out} {err}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["ok"], true);
    assert_eq!(reports[0]["fresh_catalog"], true);
}
