//! Retention carried out with an injected clock (library API): due epochs are destroyed, the
//! newest snapshot of a source survives by re-wrap, and a clock that jumps far ahead stops
//! shredding.

#[path = "common/matrix.rs"]
mod matrix;

use std::path::Path;

use coffre::{Coffre, Config};

fn config(dir: &Path) -> Config {
    let d = dir.display();
    let text = format!(
        r#"state-dir = "{d}/state"
[[source]]
name = "emr"
path = "{d}/in"
[source.retention]
keep-within = "2d"
[[store]]
name = "a"
kind = "local"
site = "a"
jurisdiction = "CA-QC"
path = "{d}/stores/a"
[[store]]
name = "b"
kind = "local"
site = "b"
jurisdiction = "CA-QC"
path = "{d}/stores/b"
[[key-provider]]
name = "local"
kind = "file"
master-key = "{d}/keys/master.key"
create-master-key = true
"#
    );
    Config::from_toml(&text, Path::new("t.toml")).unwrap()
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
            coffre::pipeline::protect(&app, "emr", &f)
                .await
                .unwrap()
                .manifest
                .snapshot,
        );
    }
    let now = time::OffsetDateTime::now_utc();
    // Nothing is due yet.
    let plan = coffre::retention::shred::current_plan(&app, now).unwrap();
    assert!(plan.due.is_empty());
    assert_eq!(plan.upcoming.len(), 3);
    // Ten days later the epoch is due: two shredded, the newest kept by re-wrap.
    let later = now + time::Duration::days(10);
    let plan = coffre::retention::shred::current_plan(&app, later).unwrap();
    assert_eq!(plan.due.len(), 1);
    assert_eq!(plan.due[0].shred, vec![ids[0], ids[1]]);
    assert_eq!(plan.due[0].keep[0].snapshot, ids[2]);
    let (done, errors) = coffre::retention::shred::run_due(&app, later, "test").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done.len(), 1);
    assert!(done[0]
        .copies
        .iter()
        .all(|c| c.decrypt_check == "key destroyed"));
    let left: Vec<_> = app
        .catalog
        .list(None)
        .unwrap()
        .into_iter()
        .map(|e| e.manifest.snapshot)
        .collect();
    assert_eq!(left, vec![ids[2]]);
    // The survivor restores from each store; the shredded ones are gone from both.
    for store in ["a", "b"] {
        let to = dir.path().join(format!("r-{store}"));
        let req = coffre::restore::Request {
            source: "emr".into(),
            snapshot: coffre::restore::Selector::Id(ids[2]),
            to: to.clone(),
            store: Some(store.into()),
            purpose: "test".into(),
            actor: "test".into(),
            action: "restore".into(),
            progress: false,
            stream: None,
        };
        coffre::restore::restore(&app, &req).await.unwrap();
        assert!(std::fs::read_to_string(&to)
            .unwrap()
            .starts_with("snapshot 2"));
        let gone = app.store(store).unwrap().get_manifest("emr", &ids[0]).await;
        assert!(gone.unwrap_err().is_not_found());
    }
    // Running again is idempotent: nothing more is due.
    let (done, errors) = coffre::retention::shred::run_due(&app, later, "test").await;
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
            coffre::pipeline::protect(&app, "emr", &f)
                .await
                .unwrap()
                .manifest
                .snapshot,
        );
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let plan = coffre::retention::shred::current_plan(&app, later).unwrap();
    let ep = plan.due[0].clone();
    // The run got as far as moving the survivor's key and destroying the epoch key, then the
    // process died: the shredded snapshots' objects and catalog entries are still there.
    for k in &ep.keep {
        coffre::retention::shred::rewrap(&app, &k.snapshot, &k.to_epoch, None, "test", "retention")
            .await
            .unwrap();
    }
    for p in &app.providers {
        p.destroy(&ep.epoch).unwrap();
    }
    assert_eq!(app.catalog.list(None).unwrap().len(), 3);
    // A restart finishes it: checks, deletes, records.
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let (done, errors) = coffre::retention::shred::run_due(&app, later, "test").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].snapshots, vec![ids[0], ids[1]]);
    assert!(done[0]
        .copies
        .iter()
        .all(|c| c.decrypt_check == "key destroyed" && c.deletion == "deleted"));
    let left: Vec<_> = app
        .catalog
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
