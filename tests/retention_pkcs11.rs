//! Scheduled retention with the `pkcs11` key provider (SoftHSM2), through the library API with an
//! injected clock: the due epoch key is destroyed on the token (a tombstone stays), the newest
//! snapshot survives by re-wrap under a new epoch key on the token, and bytes kept from before
//! the shred no longer decrypt.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process (at C_Initialize): this file holds one test.

mod common;

use std::path::{Path, PathBuf};

use coffre::{Coffre, Config};
use common::config::ConfigBuilder;
use common::SoftHsm;

fn config(dir: &Path, hsm: &SoftHsm) -> Config {
    ConfigBuilder::new(dir)
        .clock_jumps_allowed()
        .emr()
        .retention("keep-within = \"2d\"")
        .local_stores(&[("a", "a"), ("b", "b")])
        .softhsm_keys("hsm", hsm)
        .config()
}

fn copy_tree(from: &Path, to: &Path, only_missing: bool) -> usize {
    let mut n = 0;
    for file in common::coffre::files_under(from) {
        let dst = to.join(file.strip_prefix(from).unwrap());
        if only_missing && dst.exists() {
            continue;
        }
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dst).unwrap();
        n += 1;
    }
    n
}

/// Object labels in `pkcs11-tool --list-objects` output.
fn labels(objects: &str) -> Vec<String> {
    objects
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:"))
        .map(|l| l.trim().trim_matches('\'').to_string())
        .collect()
}

fn request(
    id: coffre::SnapshotId,
    store: &str,
    to: PathBuf,
) -> coffre::ops::snapshot::restore::Request {
    coffre::ops::snapshot::restore::Request {
        source: "emr".into(),
        snapshot: coffre::ops::snapshot::restore::Selector::Id(id),
        to,
        store: Some(store.into()),
        purpose: "test".into(),
        actor: "test".into(),
        action: "restore".into(),
        progress: false,
        stream: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_epochs_are_shredded_on_the_token_and_the_newest_snapshot_survives() {
    let hsm = SoftHsm::init("coffre-retention", "5678", "1234");
    // Before the first C_Initialize of this process (edition 2021: set_var is safe).
    std::env::set_var(SoftHsm::CONF_ENV, hsm.conf_path());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let app = Coffre::open(config(d, &hsm)).await.unwrap();
    assert_eq!(app.providers()[0].kind(), "pkcs11");
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = d.join(format!("in/{i}.sql"));
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
    let old_epoch = app.catalog().get_key(&ids[0]).unwrap().unwrap().epoch;
    for id in &ids {
        let k = app.catalog().get_key(id).unwrap().unwrap();
        assert_eq!(k.epoch, old_epoch);
        assert_eq!(k.wraps.len(), 1);
        assert_eq!(k.wraps[0].kind, "pkcs11");
    }
    let objects = hsm.list_objects();
    assert!(
        labels(&objects).contains(&format!("coffre-epoch-{old_epoch}")),
        "{objects}"
    );
    // Someone keeps every byte of both stores.
    let kept = d.join("kept");
    assert!(copy_tree(&d.join("stores"), &kept, false) >= 18);

    let now = time::OffsetDateTime::now_utc();
    let (done, errors) = coffre::ops::lifecycle::shred::run_due(&app, now, "test").await;
    assert!(done.is_empty() && errors.is_empty(), "nothing is due yet");
    let later = now + time::Duration::days(10);
    let plan = coffre::ops::lifecycle::shred::current_plan(&app, later).unwrap();
    assert_eq!(plan.due.len(), 1);
    assert_eq!(plan.due[0].shred, vec![ids[0], ids[1]]);
    assert_eq!(plan.due[0].keep[0].snapshot, ids[2]);
    let (done, errors) = coffre::ops::lifecycle::shred::run_due(&app, later, "test").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done.len(), 1);
    let rec = &done[0];
    assert_eq!(rec.epoch, old_epoch);
    assert_eq!(rec.providers.len(), 1);
    assert!(rec.providers[0].destroyed, "{rec:?}");
    assert_eq!(rec.copies.len(), 4);
    assert!(
        rec.copies
            .iter()
            .all(|c| c.decrypt_check == "key destroyed" && c.deletion == "deleted"),
        "{rec:?}"
    );

    // On the token: the old epoch key is gone, its tombstone is there, the survivor's new epoch
    // key too.
    let new_epoch = app.catalog().get_key(&ids[2]).unwrap().unwrap().epoch;
    assert_ne!(new_epoch, old_epoch);
    let objects = hsm.list_objects();
    let labels = labels(&objects);
    assert!(
        !labels.contains(&format!("coffre-epoch-{old_epoch}")),
        "{objects}"
    );
    assert!(
        labels.contains(&format!("coffre-tombstone-{old_epoch}")),
        "{objects}"
    );
    assert!(
        labels.contains(&format!("coffre-epoch-{new_epoch}")),
        "{objects}"
    );
    let epochs = app.providers()[0].epochs().unwrap();
    let old = epochs.iter().find(|e| e.epoch == old_epoch).unwrap();
    assert!(old.destroyed.is_some());

    // The survivor restores, byte-identical, from each store.
    for store in ["a", "b"] {
        let to = d.join(format!("r-{store}"));
        coffre::ops::snapshot::restore::restore(&app, &request(ids[2], store, to.clone()))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&to).unwrap(),
            "snapshot 2 CANARY-ZXQ-PATIENT\n".repeat(1000).into_bytes()
        );
    }

    // Every kept byte put back: the shredded snapshots stay unreadable from every store.
    assert!(copy_tree(&kept, &d.join("stores"), true) >= 12);
    for id in &ids[..2] {
        for store in ["a", "b"] {
            let to = d.join(format!("{id}-{store}"));
            let e = coffre::ops::snapshot::restore::restore(&app, &request(*id, store, to.clone()))
                .await
                .unwrap_err();
            assert!(e.is_key_destroyed(), "{e}");
            assert!(e.to_string().contains("destroyed"), "{e}");
            assert!(!to.exists());
        }
    }
    // Running again is idempotent.
    let (done, errors) = coffre::ops::lifecycle::shred::run_due(&app, later, "test").await;
    assert!(done.is_empty() && errors.is_empty(), "{errors:?}");
}
