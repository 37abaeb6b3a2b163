//! Retention carried out with an injected clock (library API): due epochs are destroyed, the
//! newest snapshot of a source survives by re-wrap, and a clock that jumps far ahead stops
//! shredding.

use crate::common::config::ConfigBuilder;
use crate::matrix;

use std::path::Path;

use coffre::{Coffre, Config};

fn config(dir: &Path) -> Config {
    ConfigBuilder::new(dir)
        .clock_jumps_allowed()
        .emr()
        .retention("keep-within = \"2d\"")
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .config()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_epochs_are_shredded_and_the_newest_snapshot_survives() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = dir.path().join(format!("in/{i}.sql"));
        std::fs::write(
            &f,
            format!("snapshot {i} CANARY-ZXQ-PATIENT\n").repeat(1000),
        )
        .unwrap();
        ids.push(
            coffre::ops::snapshot::protect::protect(&app, "emr", &f)
                .await
                .unwrap()
                .manifest
                .snapshot,
        );
    }
    let now = time::OffsetDateTime::now_utc();
    // Nothing is due yet.
    let plan = coffre::ops::lifecycle::shred::current_plan(&app, now).unwrap();
    assert!(plan.due.is_empty());
    assert_eq!(plan.upcoming.len(), 3);
    // Ten days later the epoch is due: two shredded, the newest kept by re-wrap.
    let later = now + time::Duration::days(10);
    let plan = coffre::ops::lifecycle::shred::current_plan(&app, later).unwrap();
    assert_eq!(plan.due.len(), 1);
    assert_eq!(plan.due[0].shred, vec![ids[0], ids[1]]);
    assert_eq!(plan.due[0].keep[0].snapshot, ids[2]);
    let (done, errors) = coffre::ops::lifecycle::shred::run_due(&app, later, "test").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done.len(), 1);
    assert!(done[0]
        .copies
        .iter()
        .all(|c| c.decrypt_check == "key destroyed"));
    let left: Vec<_> = app
        .catalog()
        .list(None)
        .unwrap()
        .into_iter()
        .map(|e| e.manifest.snapshot)
        .collect();
    assert_eq!(left, vec![ids[2]]);
    // The survivor restores from each store; the shredded ones are gone from both.
    for store in ["a", "b"] {
        let to = dir.path().join(format!("r-{store}"));
        let req = coffre::ops::snapshot::restore::Request {
            source: "emr".into(),
            snapshot: coffre::ops::snapshot::restore::Selector::Id(ids[2]),
            to: to.clone(),
            store: Some(store.into()),
            purpose: "test".into(),
            actor: "test".into(),
            action: "restore".into(),
            progress: false,
            stream: None,
        };
        coffre::ops::snapshot::restore::restore(&app, &req)
            .await
            .unwrap();
        assert!(std::fs::read_to_string(&to)
            .unwrap()
            .starts_with("snapshot 2"));
        let gone = app.store(store).unwrap().get_manifest("emr", &ids[0]).await;
        assert!(gone.unwrap_err().is_not_found());
    }
    // Running again is idempotent: nothing more is due.
    let (done, errors) = coffre::ops::lifecycle::shred::run_due(&app, later, "test").await;
    assert!(done.is_empty() && errors.is_empty());
}

#[test]
fn a_clock_that_jumps_ahead_stops_shredding() {
    let dir = tempfile::tempdir().unwrap();
    let j = coffre::daemon::intake::Journal::open(&dir.path().join("j.sqlite")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let bound = std::time::Duration::from_secs(3 * 86_400);
    assert!(coffre::daemon::clock_ok(&j, now, bound).unwrap());
    assert!(coffre::daemon::clock_ok(&j, now + time::Duration::hours(1), bound).unwrap());
    // +10 years: refused.
    assert!(!coffre::daemon::clock_ok(&j, now + time::Duration::days(3650), bound).unwrap());
    // ... and stays refused (a restart does not launder the jumped time).
    assert!(!coffre::daemon::clock_ok(&j, now + time::Duration::days(3650), bound).unwrap());
    // -1 day is not a jump forward: allowed (nothing becomes due that was not).
    assert!(coffre::daemon::clock_ok(&j, now - time::Duration::days(1), bound).unwrap());
    matrix::record(
        "clock jumps (+10 years refused and sticky, -1 day harmless)",
        2,
        2,
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_interrupted_after_the_key_destruction_is_finished_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = dir.path().join(format!("in/{i}.sql"));
        std::fs::write(&f, format!("snapshot {i}\n").repeat(1000)).unwrap();
        ids.push(
            coffre::ops::snapshot::protect::protect(&app, "emr", &f)
                .await
                .unwrap()
                .manifest
                .snapshot,
        );
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let plan = coffre::ops::lifecycle::shred::current_plan(&app, later).unwrap();
    let ep = plan.due[0].clone();
    // The run got as far as moving the survivor's key and destroying the epoch key, then the
    // process died: the shredded snapshots' objects and catalog entries are still there.
    for k in &ep.keep {
        coffre::ops::lifecycle::shred::rewrap(
            &app,
            &k.snapshot,
            &k.to_epoch,
            None,
            "test",
            "retention",
        )
        .await
        .unwrap();
    }
    for p in app.providers() {
        p.destroy(&ep.epoch).unwrap();
    }
    assert_eq!(app.catalog().list(None).unwrap().len(), 3);
    // A restart finishes it: checks, deletes, records.
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let (done, errors) = coffre::ops::lifecycle::shred::run_due(&app, later, "test").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].snapshots, vec![ids[0], ids[1]]);
    assert!(done[0]
        .copies
        .iter()
        .all(|c| c.decrypt_check == "key destroyed" && c.deletion == "deleted"));
    let left: Vec<_> = app
        .catalog()
        .list(None)
        .unwrap()
        .into_iter()
        .map(|e| e.manifest.snapshot)
        .collect();
    assert_eq!(left, vec![ids[2]]);
    matrix::record(
        "crash half-way through a shred (finished at restart)",
        1,
        1,
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_added_between_plan_and_execution_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = dir.path().join(format!("in/{i}.sql"));
        std::fs::write(&f, format!("snapshot {i}\n").repeat(1000)).unwrap();
        ids.push(
            coffre::ops::snapshot::protect::protect(&app, "emr", &f)
                .await
                .unwrap()
                .manifest
                .snapshot,
        );
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let plan = coffre::ops::lifecycle::shred::current_plan(&app, later).unwrap();
    let ep = plan.due[0].clone();
    assert_eq!(ep.shred, vec![ids[0], ids[1]]);
    // The plan is made; then a hold lands on ids[0] before the plan is carried out.
    coffre::ops::lifecycle::shred::hold_add(&app, &ids[0], "test", "court order 7")
        .await
        .unwrap();
    let record = {
        let _lock = coffre::ops::lifecycle::shred::lock(&app).await.unwrap();
        coffre::ops::lifecycle::shred::execute(&app, &ep, "test", "retention")
            .await
            .unwrap()
    };
    assert_eq!(record.snapshots, vec![ids[1]], "only the unheld one");
    assert!(record.complete, "{record:?}");
    assert!(record.copies.iter().all(|c| c.snapshot == ids[1]));
    // The held snapshot is whole in both stores.
    for store in ["a", "b"] {
        let to = dir.path().join(format!("held-{store}"));
        let req = coffre::ops::snapshot::restore::Request {
            source: "emr".into(),
            snapshot: coffre::ops::snapshot::restore::Selector::Id(ids[0]),
            to: to.clone(),
            store: Some(store.into()),
            purpose: "test".into(),
            actor: "test".into(),
            action: "restore".into(),
            progress: false,
            stream: None,
        };
        coffre::ops::snapshot::restore::restore(&app, &req)
            .await
            .unwrap();
        assert!(std::fs::read_to_string(&to)
            .unwrap()
            .starts_with("snapshot 0"));
    }
}

/// The real binary under a clock moved `offset` ahead (libfaketime; `tests/setup.sh` installs
/// it): (exit code, stdout, stderr).
fn coffre_at(dir: &Path, offset: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let bin = env!("CARGO_BIN_EXE_coffre");
    let mut c = match offset {
        Some(o) => {
            let mut c = std::process::Command::new("faketime");
            c.arg("-f").arg(o).arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    };
    let out = c
        .arg("--config")
        .arg(dir.join("coffre.toml"))
        .args(args)
        .env("COFFRE_LOG", "error")
        // Timers and timeouts keep the real monotonic clock.
        .env("DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("faketime (Debian package faketime) is installed by tests/setup.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `root` with its contents.
fn tree(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = coffre::ops::snapshot::protect::source::walk(root)
        .unwrap()
        .into_iter()
        .filter(|r| root.join(r).is_file())
        .map(|r| {
            let b = std::fs::read(root.join(&r)).unwrap();
            (r, b)
        })
        .collect();
    out.sort();
    out
}

/// The CLI's config in `d` (the default clock guard, snapshots kept a day, the access log 30
/// days), three snapshots backed up and the newest restored once (an access in the log, with a
/// sealed copy in the stores). Their ids, oldest first.
fn three_snapshots_one_restored(d: &Path) -> Vec<String> {
    // The default guard (3 days), a short retention for snapshots and for the access log.
    ConfigBuilder::new(d)
        .audit("retention = \"30d\"")
        .emr()
        .retention("keep-within = \"1d\"")
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .write(&d.join("coffre.toml"));
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = d.join(format!("in/{i}.sql"));
        std::fs::write(&f, format!("snapshot {i}\n").repeat(1000)).unwrap();
        let (code, out, err) =
            coffre_at(d, None, &["backup", "--source", "emr", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        ids.push(out.trim().to_string());
    }
    // Something in the access log, with a sealed copy in the stores.
    let to = d.join("r.sql");
    let (code, _, err) = coffre_at(
        d,
        None,
        &[
            "restore",
            &ids[2],
            "--source",
            "emr",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "look",
        ],
    );
    assert_eq!(code, 0, "{err}");
    ids
}

#[test]
fn retention_shred_and_audit_expire_refuse_after_a_clock_jump_from_the_cli() {
    // Finding 5: the guard lived only in the daemon's loop; `coffre retention run` and
    // `coffre audit expire` (also reachable through the socket) used the clock directly.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let ids = three_snapshots_one_restored(d);
    let stores = tree(&d.join("stores"));
    let log = std::fs::read(d.join("state/audit/access.log")).unwrap();

    // Ten years ahead, from a host where no destruction ever ran: the newest snapshot is the
    // reference. Every destruction command refuses, sticky, and says what to do.
    for _ in 0..2 {
        for args in [
            vec!["retention", "run"],
            vec!["audit", "expire"],
            vec![
                "shred",
                "--snapshot",
                &ids[0],
                "--purpose",
                "erasure",
                "--yes",
            ],
        ] {
            let (code, out, err) = coffre_at(d, Some("+3650d"), &args);
            assert_ne!(code, 0, "{args:?} refused\n{out}\n{err}");
            assert!(
                err.contains("clock jumped forward") && err.contains("shred.max-clock-jump"),
                "{args:?}: {err}"
            );
            assert!(err.contains("Nothing was destroyed"), "{err}");
        }
    }
    assert_eq!(
        tree(&d.join("stores")),
        stores,
        "nothing destroyed in the stores"
    );
    assert_eq!(
        std::fs::read(d.join("state/audit/access.log")).unwrap(),
        log,
        "the local log lost nothing"
    );
    let (_, snaps, _) = coffre_at(d, None, &["snapshots", "--json"]);
    for id in &ids {
        assert!(snaps.contains(id.as_str()), "{snaps}");
    }
    // With the clock back, retention runs again; two days ahead (within the guard) the epoch
    // of the first two snapshots (kept one day) is over and they are shredded.
    let (code, _, err) = coffre_at(d, None, &["retention", "run"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = coffre_at(d, None, &["audit", "expire"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = coffre_at(d, Some("+2d"), &["retention", "run", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let done: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(done.len(), 1, "{out}");
    matrix::record(
        "clock jump from the CLI (retention run, shred, audit expire refused; nothing destroyed)",
        3,
        3,
        0,
    );
}
