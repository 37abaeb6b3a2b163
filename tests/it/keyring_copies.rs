//! Finding 2 of issue 11 (keyring: last writer wins), end to end: a long-lived copy of the
//! application (as the daemon holds one, loaded before) keeps protecting snapshots while a
//! standalone `coffre shred` run (the real binary) destroys an epoch. Every epoch-mate of the
//! shredded snapshot stays restorable, the shredded epoch stays destroyed on disk and in every
//! store, and no new snapshot is sealed under it.

use crate::common;

use std::path::PathBuf;

use coffre::keys::file::FileProvider;
use coffre::keys::KeyProvider;
use coffre::{Coffre, Config};
use common::coffre::{emr_sql, local_store, CoffreEnv};

fn env_with_two_local_stores() -> CoffreEnv {
    let env = CoffreEnv::new("");
    let stores = env.dir.path().join("stores");
    let text = format!(
        "{}{}{}",
        env.config_text(&env.state),
        local_store("site-a", "site-a", &stores.join("a")),
        local_store("site-b", "site-b", &stores.join("b")),
    );
    env.write_config(&text);
    env
}

fn store_dir(env: &CoffreEnv, site: &str) -> PathBuf {
    env.dir.path().join("stores").join(site)
}

/// The epoch a snapshot's key object (in store `a`) names.
fn epoch_of(env: &CoffreEnv, id: &str) -> String {
    let p = store_dir(env, "a").join(format!("coffre/snapshots/emr/{id}/key.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["epoch"].as_str().unwrap().to_string()
}

fn destroyed(infos: &[coffre::keys::EpochInfo], epoch: &str) -> bool {
    infos
        .iter()
        .any(|e| e.epoch.as_str() == epoch && e.destroyed.is_some())
}

/// The epochs of the newest keyring generation in a store, read by a fresh copy.
fn store_epochs(env: &CoffreEnv, config: &Config, site: &str) -> Vec<coffre::keys::EpochInfo> {
    let dir = store_dir(env, site).join("coffre/keyring/local");
    let mut rings: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    rings.sort();
    let newest = rings.last().expect("a keyring in the store");
    let mut k = config.key_providers[0].clone();
    k.keyring = Some(env.dir.path().join(format!("probe-{site}/local.keyring")));
    let probe = FileProvider::open(config, &k).unwrap();
    probe
        .adopt_replicated_state(&std::fs::read(newest).unwrap())
        .unwrap();
    probe.epochs().unwrap()
}

fn write_input(env: &CoffreEnv, name: &str) -> PathBuf {
    let p = env.incoming.join(name);
    let mut body = emr_sql(64 * 1024);
    body.extend_from_slice(name.as_bytes());
    std::fs::write(&p, body).unwrap();
    p
}

fn restores(env: &CoffreEnv, id: &str, store: &str) -> bool {
    let to = env.out.join(format!("{id}-{store}"));
    env.restore(id, &to, Some(store)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_by_another_process_survives_a_stale_copy() {
    let env = env_with_two_local_stores();
    let a = env.backup(&write_input(&env, "a.sql"));
    let b = env.backup(&write_input(&env, "b.sql"));
    let epoch = epoch_of(&env, &a);
    assert_eq!(epoch_of(&env, &b), epoch, "A and B must be epoch-mates");

    // The long-lived copy, loaded while the epoch is live (as the daemon's is).
    let config = Config::load(&env.config).unwrap();
    let app = Coffre::open(config.clone()).await.unwrap();

    // A standalone run shreds A: its epoch is destroyed, B moves to another epoch.
    let r = env.run(&[
        "shred",
        "--snapshot",
        &a,
        "--purpose",
        "keyring copies test",
        "--yes",
    ]);
    r.expect_ok();

    // The stale copy protects three new snapshots (each writes and pushes its keyring).
    let mut fresh = Vec::new();
    for n in ["c.sql", "d.sql", "e.sql"] {
        let p = write_input(&env, n);
        let out = coffre::ops::snapshot::protect::protect(&app, "emr", &p)
            .await
            .unwrap();
        fresh.push(out.manifest.snapshot.to_string());
    }
    drop(app);

    // Nothing is sealed under the destroyed epoch.
    for id in &fresh {
        assert_ne!(
            epoch_of(&env, id),
            epoch,
            "{id} sealed under a destroyed epoch"
        );
    }
    // The shredded epoch is destroyed locally and in both stores, for good.
    let local = FileProvider::open(&config, &config.key_providers[0]).unwrap();
    assert!(destroyed(&local.epochs().unwrap(), &epoch), "local keyring");
    for site in ["a", "b"] {
        assert!(
            destroyed(&store_epochs(&env, &config, site), &epoch),
            "keyring in store {site}"
        );
    }
    // A is gone; B and the new snapshots restore from both stores.
    assert!(!restores(&env, &a, "site-a"));
    for id in std::iter::once(&b).chain(fresh.iter()) {
        for store in ["site-a", "site-b"] {
            assert!(restores(&env, id, store), "{id} from {store}");
        }
    }
    // `keys status` agrees.
    let r = env.run(&["keys", "status", "--json"]);
    r.expect_ok();
    assert!(r.stdout.contains(&epoch), "{r}");
}

/// Finding 6 of issue 11 (upload vs early shred): a snapshot being protected under an epoch
/// (its data key wrapped, its key object not yet in the catalog) is an epoch-mate an early shred
/// must wait for and move; a snapshot that starts while the shred runs never enters the closing
/// epoch. The test holds the epoch itself as a slow upload would, so the order is certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_shred_waits_for_snapshots_being_protected_under_its_epoch() {
    let env = env_with_two_local_stores();
    let config = Config::load(&env.config).unwrap();
    let app = std::sync::Arc::new(Coffre::open(config.clone()).await.unwrap());
    let a = coffre::ops::snapshot::protect::protect(&app, "emr", &write_input(&env, "a.sql"))
        .await
        .unwrap()
        .manifest
        .snapshot
        .to_string();
    let epoch = epoch_of(&env, &a);
    let epoch_id = coffre::ids::EpochId::try_from(epoch.clone()).unwrap();

    // A slow upload under the epoch (held by the test), and a real one that may be inside too.
    let slow = app
        .inflight()
        .try_enter(&epoch_id)
        .expect("the epoch is open");
    let big = env.incoming.join("big.sql");
    std::fs::write(&big, emr_sql(8 * 1024 * 1024)).unwrap();
    let b_task = {
        let app = app.clone();
        tokio::spawn(
            async move { coffre::ops::snapshot::protect::protect(&app, "emr", &big).await },
        )
    };
    while app.inflight().inside(&epoch_id) < 2 && !b_task.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }

    let shred = {
        let app = app.clone();
        let id: coffre::SnapshotId = a.parse().unwrap();
        tokio::spawn(async move {
            coffre::ops::lifecycle::shred::shred_one(&app, &id, "test", "in-flight test").await
        })
    };
    // The shred cannot finish while a snapshot is inside the epoch.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !shred.is_finished(),
        "the shred did not wait for the upload"
    );
    // A snapshot that starts now waits for the shred, then takes a live epoch.
    let c_task = {
        let app = app.clone();
        let p = write_input(&env, "c.sql");
        tokio::spawn(async move { coffre::ops::snapshot::protect::protect(&app, "emr", &p).await })
    };
    let b = b_task.await.unwrap().unwrap().manifest.snapshot.to_string();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !shred.is_finished(),
        "the shred did not wait for the held epoch"
    );
    drop(slow);
    shred.await.unwrap().unwrap();
    let c = c_task.await.unwrap().unwrap().manifest.snapshot.to_string();

    // The epoch is destroyed; neither B nor C is sealed under it; both restore from both
    // stores; A does not.
    let local = FileProvider::open(&config, &config.key_providers[0]).unwrap();
    assert!(destroyed(&local.epochs().unwrap(), &epoch));
    for id in [&b, &c] {
        assert_ne!(
            epoch_of(&env, id),
            epoch,
            "{id} sealed under the shredded epoch"
        );
        let k = app
            .catalog()
            .get_key(&id.parse().unwrap())
            .unwrap()
            .unwrap();
        assert_ne!(k.epoch.as_str(), epoch, "{id} in the catalog");
    }
    drop(app);
    for id in [&b, &c] {
        for store in ["site-a", "site-b"] {
            assert!(restores(&env, id, store), "{id} from {store}");
        }
    }
    assert!(!restores(&env, &a, "site-a"));
}

/// Issue 12 (one commit protocol) and finding 3 of issue 11: a catch-up copies the catalog's
/// authenticated manifest and key object into the lagging store, never the copy found in the
/// store it reads the sealed bytes from, which may have been edited there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_never_spreads_a_key_object_edited_in_the_store_it_copies_from() {
    let env = env_with_two_local_stores();
    let config = Config::load(&env.config).unwrap();
    let app = Coffre::open(config).await.unwrap();
    let out = coffre::ops::snapshot::protect::protect(&app, "emr", &write_input(&env, "x.sql"))
        .await
        .unwrap();
    let id = out.manifest.snapshot;
    let key_in =
        |site: &str| store_dir(&env, site).join(format!("coffre/snapshots/emr/{id}/key.json"));
    let authentic = std::fs::read(key_in("a")).unwrap();

    // Store a's key object is edited (an older epoch, a hold dropped); store b loses the snapshot.
    let mut forged: serde_json::Value = serde_json::from_slice(&authentic).unwrap();
    forged["epoch"] = "2000-01-01.1".into();
    std::fs::write(key_in("a"), serde_json::to_vec(&forged).unwrap()).unwrap();
    std::fs::remove_dir_all(store_dir(&env, "b").join(format!("coffre/snapshots/emr/{id}")))
        .unwrap();
    app.catalog()
        .set_replica(&id, "site-b", coffre::catalog::ReplicaState::Missing)
        .unwrap();

    let (from, to) = (app.store("site-a").unwrap(), app.store("site-b").unwrap());
    coffre::daemon::replicate::copy_snapshot(
        &app,
        "emr",
        &id,
        from,
        to,
        coffre::progress::Activity::CatchUp,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(key_in("b")).unwrap(),
        authentic,
        "the lagging store got the edited key object"
    );
    drop(app);
    assert!(restores(&env, &id.to_string(), "site-b"));
}
