//! Key rotation through the library API: master-key rotation of a `file` provider (locally and
//! in the stores' keyring copies), and moving every snapshot to another provider by adding its
//! wraps (after which the first provider can leave the config).

use crate::common::config::ConfigBuilder;

use std::path::{Path, PathBuf};

use coffre::keys::file::FileProvider;
use coffre::keys::{KeyError, KeyProvider};
use coffre::ops::lifecycle::rotate::{self, RotateError};
use coffre::{Coffre, Config, SnapshotId};

/// `[[key-provider]]` table of a file provider.
fn file_provider(name: &str, master_key: &Path) -> String {
    format!(
        r#"
[[key-provider]]
name = "{name}"
kind = "file"
master-key = "{key}"
create-master-key = true
"#,
        key = master_key.display()
    )
}

/// Two local stores in two sites, source `emr`, the given key providers.
fn config(dir: &Path, state: &str, providers: &str) -> Config {
    ConfigBuilder::new(dir)
        .state(&dir.join(state))
        .emr()
        .local_stores(&[("a", "a"), ("b", "b")])
        .providers_text(providers)
        .config()
}

fn content(tag: &str) -> Vec<u8> {
    format!("{tag} row CANARY-ZXQ-PATIENT\n")
        .repeat(5000)
        .into_bytes()
}

async fn backup(app: &Coffre, dir: &Path, name: &str) -> SnapshotId {
    let f = dir.join("in").join(name);
    std::fs::write(&f, content(name)).unwrap();
    coffre::ops::snapshot::protect::protect(app, "emr", &f)
        .await
        .unwrap()
        .manifest
        .snapshot
}

async fn restore(
    app: &Coffre,
    id: SnapshotId,
    store: &str,
    to: PathBuf,
) -> Result<(), coffre::ops::snapshot::restore::RestoreError> {
    let req = coffre::ops::snapshot::restore::Request {
        source: "emr".into(),
        snapshot: coffre::ops::snapshot::restore::Selector::Id(id),
        to,
        store: Some(store.into()),
        purpose: "rotation test".into(),
        actor: "test".into(),
        action: "restore".into(),
        progress: false,
        stream: None,
    };
    coffre::ops::snapshot::restore::restore(app, &req)
        .await
        .map(|_| ())
}

/// Keyring objects of `provider` in a local store.
fn store_keyrings(dir: &Path, site: &str, provider: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(
        dir.join("stores")
            .join(site)
            .join("coffre/keyring")
            .join(provider),
    )
    .map(|rd| rd.flatten().map(|e| e.path()).collect())
    .unwrap_or_default();
    v.sort();
    v
}

fn open_err(c: &Config) -> KeyError {
    match FileProvider::open(c, &c.key_providers[0]) {
        Ok(_) => panic!("the keyring opened"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_reseals_the_keyring_here_and_in_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let old_key = d.join("keys/master.key");
    let new_key = d.join("keys/master-2.key");
    let old_cfg = config(d, "state", &file_provider("local", &old_key));
    let new_cfg = config(d, "state", &file_provider("local", &new_key));

    let app = Coffre::open(old_cfg.clone()).await.unwrap();
    let a = backup(&app, d, "a.sql").await;
    let b = backup(&app, d, "b.sql").await;
    // One destroyed epoch in the keyring too: its tombstone must survive the rotation.
    coffre::ops::lifecycle::shred::shred_one(&app, &b, "test", "erasure before rotation")
        .await
        .unwrap();
    let epochs_before = app.providers()[0].epochs().unwrap();
    assert!(epochs_before.iter().any(|e| e.destroyed.is_some()));
    drop(app);
    for site in ["a", "b"] {
        assert_eq!(store_keyrings(d, site, "local").len(), 1);
    }

    // Refusals: a missing new key (without create), a key readable by others, the same key.
    let r = rotate::rotate_master_key(&old_cfg, "local", &new_key, false);
    assert!(matches!(r, Err(KeyError::MasterKey { .. })), "{r:?}");
    let loose = d.join("keys/loose.key");
    std::fs::write(&loose, format!("{}\n", "ab".repeat(32))).unwrap();
    let r = rotate::rotate_master_key(&old_cfg, "local", &loose, false);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("chmod 600")),
        "{r:?}"
    );
    let r = rotate::rotate_master_key(&old_cfg, "local", &old_key, false);
    assert!(r.is_err(), "{r:?}");
    let copy = d.join("keys/copy.key");
    std::fs::copy(&old_key, &copy).unwrap();
    let r = rotate::rotate_master_key(&old_cfg, "local", &copy, false);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("current master key")),
        "{r:?}"
    );
    let r = rotate::rotate_master_key(&old_cfg, "nope", &new_key, true);
    assert!(r.is_err());
    assert!(!new_key.exists(), "a refused rotation created no key");
    // Nothing changed: the old key still opens the keyring.
    FileProvider::open(&old_cfg, &old_cfg.key_providers[0]).unwrap();

    let report = rotate::rotate_master_key_everywhere(
        &old_cfg,
        "local",
        &new_key,
        true,
        "test",
        "yearly master key rotation",
    )
    .await
    .unwrap();
    assert!(report.local.created_master_key && !report.local.resumed);
    assert_eq!(report.local.epochs, epochs_before.len());
    assert_eq!(report.local.destroyed_epochs, 1);
    assert_eq!(report.stores_updated, ["a", "b"]);
    assert!(report.store_failures.is_empty(), "{report:?}");
    assert_eq!(report.old_copies_deleted, 2);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&new_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The old master key no longer opens the local keyring; the new one does, with every epoch.
    assert!(matches!(
        open_err(&old_cfg),
        KeyError::WrongMasterKey { .. }
    ));
    let p = FileProvider::open(&new_cfg, &new_cfg.key_providers[0]).unwrap();
    assert_eq!(p.epochs().unwrap(), epochs_before);
    assert_eq!(p.generation(), report.local.generation);
    // Each store holds one keyring, of the new generation, sealed under the new key only.
    for site in ["a", "b"] {
        let rings = store_keyrings(d, site, "local");
        assert_eq!(rings.len(), 1, "{rings:?}");
        assert!(rings[0].ends_with(format!("{:020}.keyring", report.local.generation)));
        let bytes = std::fs::read(&rings[0]).unwrap();
        let fresh = config(
            d,
            &format!("probe-new-{site}"),
            &file_provider("local", &new_key),
        );
        let p = FileProvider::open(&fresh, &fresh.key_providers[0]).unwrap();
        assert!(p.adopt_replicated_state(&bytes).unwrap());
        let fresh = config(
            d,
            &format!("probe-old-{site}"),
            &file_provider("local", &old_key),
        );
        let p = FileProvider::open(&fresh, &fresh.key_providers[0]).unwrap();
        assert!(matches!(
            p.adopt_replicated_state(&bytes),
            Err(KeyError::WrongMasterKey { .. })
        ));
    }
    // The old config no longer opens the app; the new one restores, and the shredded snapshot
    // stays shredded.
    assert!(Coffre::open(old_cfg.clone()).await.is_err());
    let app = Coffre::open(new_cfg.clone()).await.unwrap();
    for store in ["a", "b"] {
        restore(&app, a, store, d.join(format!("a-{store}")))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(d.join(format!("a-{store}"))).unwrap(),
            content("a.sql")
        );
    }
    // A backup after the rotation works and restores.
    let c = backup(&app, d, "c.sql").await;
    restore(&app, c, "b", d.join("c-b")).await.unwrap();
    let log = app.audit().entries().unwrap();
    assert!(log
        .iter()
        .any(|e| e.action == "key-rotate" && e.outcome.starts_with("ok")));
    app.audit().verify().unwrap();
    drop(app);

    // A new host with the new master key gets the keyring from the stores.
    let host2 = config(d, "host2", &file_provider("local", &new_key));
    let app2 = Coffre::open(host2).await.unwrap();
    app2.rebuild_catalog().await.unwrap();
    restore(&app2, a, "a", d.join("a-host2")).await.unwrap();
    restore(&app2, c, "a", d.join("c-host2")).await.unwrap();
    // The shredded one is in no store and, on this new host, in no catalog: the error says
    // where to look (the access log, replicated to the stores, keeps its `shred` entry).
    let e = restore(&app2, b, "a", d.join("b-host2")).await.unwrap_err();
    assert!(
        e.to_string().contains("in the catalog or in any store")
            && e.to_string().contains("`shred` entry"),
        "{e}"
    );
    drop(app2);
    // A new host with the old master key: the stores' keyrings do not open.
    let host3 = config(d, "host3", &file_provider("local", &old_key));
    match Coffre::open(host3).await {
        Ok(_) => panic!("the old master key opened the stores' keyrings"),
        Err(e) => assert!(e.to_string().contains("wrong master key"), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_master_key_rotation_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let old_key = d.join("keys/master.key");
    let new_key = d.join("keys/master-2.key");
    let old_cfg = config(d, "state", &file_provider("local", &old_key));
    let new_cfg = config(d, "state", &file_provider("local", &new_key));
    let app = Coffre::open(old_cfg.clone()).await.unwrap();
    let a = backup(&app, d, "a.sql").await;
    drop(app);

    // Local only (as if the process died before the stores were updated).
    let local = rotate::rotate_master_key(&old_cfg, "local", &new_key, true).unwrap();
    assert!(local.created_master_key && !local.resumed);
    assert!(matches!(
        open_err(&old_cfg),
        KeyError::WrongMasterKey { .. }
    ));
    // The stores still hold the keyring under the old key only: the new config does not open
    // the app yet (no keyring in any store opens), and neither does the old one.
    assert!(Coffre::open(new_cfg.clone()).await.is_err());
    assert!(Coffre::open(old_cfg.clone()).await.is_err());
    // Running the rotation again with the old config finishes it.
    let report =
        rotate::rotate_master_key_everywhere(&old_cfg, "local", &new_key, false, "test", "resume")
            .await
            .unwrap();
    assert!(report.local.resumed, "{report:?}");
    assert!(!report.local.created_master_key);
    assert!(report.local.generation > local.generation);
    assert_eq!(report.stores_updated.len(), 2);
    let app = Coffre::open(new_cfg).await.unwrap();
    restore(&app, a, "a", d.join("a")).await.unwrap();
    assert_eq!(std::fs::read(d.join("a")).unwrap(), content("a.sql"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_provider_wraps_moves_every_snapshot_to_another_provider() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let first = file_provider("local", &d.join("keys/master.key"));
    let second = file_provider("vault", &d.join("keys/vault.key"));

    let app = Coffre::open(config(d, "state", &first)).await.unwrap();
    let a = backup(&app, d, "a.sql").await;
    let b = backup(&app, d, "b.sql").await;
    drop(app);

    // Both providers configured: every snapshot gets a wrap of the second.
    let app = Coffre::open(config(d, "state", &format!("{first}{second}")))
        .await
        .unwrap();
    match rotate::add_provider_wraps(&app, "nope", "test", "x").await {
        Err(RotateError::UnknownProvider(p)) => assert_eq!(p, "nope"),
        other => panic!("{other:?}"),
    }
    let n = rotate::add_provider_wraps(&app, "vault", "test", "move to the vault")
        .await
        .unwrap();
    assert_eq!(n, 2);
    // Idempotent.
    assert_eq!(
        rotate::add_provider_wraps(&app, "vault", "test", "again")
            .await
            .unwrap(),
        0
    );
    for id in [a, b] {
        let k = app.catalog().get_key(&id).unwrap().unwrap();
        let providers: Vec<_> = k.wraps.iter().map(|w| w.provider.as_str()).collect();
        assert_eq!(providers, ["local", "vault"]);
        assert!(k.wraps.iter().all(|w| w.epoch == k.epoch));
        for store in ["a", "b"] {
            let in_store = app
                .store(store)
                .unwrap()
                .get_key_object("emr", &id)
                .await
                .unwrap();
            assert_eq!(in_store, k, "store {store}");
        }
    }
    // Each unwrap is in the access log, before it happened.
    let log = app.audit().entries().unwrap();
    let rotations: Vec<_> = log.iter().filter(|e| e.action == "key-rotate").collect();
    assert_eq!(rotations.len(), 4, "{rotations:?}");
    assert!(rotations[0].outcome.starts_with("started"));
    assert!(rotations[1].outcome.starts_with("ok"));
    app.audit().verify().unwrap();
    // The stores carry the second provider's keyring (for a new host).
    for site in ["a", "b"] {
        assert_eq!(store_keyrings(d, site, "vault").len(), 1);
    }
    drop(app);

    // The first provider leaves the config: restores work with the second alone, here and on a
    // new host that has only the second provider's master key.
    let only_second = config(d, "state", &second);
    let app = Coffre::open(only_second).await.unwrap();
    for store in ["a", "b"] {
        for (id, name) in [(a, "a.sql"), (b, "b.sql")] {
            let to = d.join(format!("{name}-{store}"));
            restore(&app, id, store, to.clone()).await.unwrap();
            assert_eq!(std::fs::read(&to).unwrap(), content(name));
        }
    }
    drop(app);
    let new_host = config(d, "newhost", &second);
    let app = Coffre::open(new_host).await.unwrap();
    // This machine replaces the host: it takes its claim over before it may write.
    assert_eq!(app.take_over_host("test").await.unwrap(), ["a", "b"]);
    app.rebuild_catalog().await.unwrap();
    restore(&app, a, "b", d.join("a-newhost")).await.unwrap();
    assert_eq!(
        std::fs::read(d.join("a-newhost")).unwrap(),
        content("a.sql")
    );
    // Shredding with the second provider alone is refused: the first provider's wraps still sit
    // in the key objects, and destroying only the second provider's epoch key would leave them.
    let err = coffre::ops::lifecycle::shred::shred_one(&app, &a, "test", "erasure order")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not configured here"), "{err}");
    restore(&app, a, "a", d.join("a-still")).await.unwrap();
    restore(&app, b, "a", d.join("b-after")).await.unwrap();
}
