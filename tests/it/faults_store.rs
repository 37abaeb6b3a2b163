//! Store faults a real server cannot be made to produce on demand (fault matrix row 2), through a
//! fault-injecting `ObjectStore` wrapper around real local stores: 503 on writes, 500 on reads,
//! a transfer that stalls half-way, a store that accepts objects and loses them. In each case
//! nothing committed is lost and the damage is reported and repaired.

use crate::matrix;

use crate::common::config::ConfigBuilder;
use crate::faulty;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use coffre::ops::snapshot::protect::Protection;
use coffre::ops::snapshot::restore::{Request, Selector};
use coffre::{Coffre, Config};
use faulty::{Faults, FaultyStore};

fn config(dir: &Path) -> Config {
    ConfigBuilder::new(dir)
        .table("pipeline", "segment-size = \"64KiB\"")
        .table("replication", "min-sites = 2\nstall-timeout = \"1s\"")
        .emr()
        .file_keys()
        .local_stores(&[("a", "a"), ("b", "b"), ("c", "c")])
        .config()
}

async fn setup() -> (
    tempfile::TempDir,
    Coffre,
    Vec<Arc<Faults>>,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let mut app = Coffre::open(config(dir.path())).await.unwrap();
    let mut faults = Vec::new();
    app.wrap_object_stores(|inner| {
        let (w, f) = FaultyStore::wrap(inner);
        faults.push(f);
        w
    });
    let f = dir.path().join("in/emr.sql");
    let mut v = Vec::new();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    while v.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(
            format!("INSERT INTO lab_results VALUES ({x}, 'CANARY-ZXQ-PATIENT');\n").as_bytes(),
        );
    }
    std::fs::write(&f, v).unwrap();
    (dir, app, faults, f)
}

fn request(dir: &Path, name: &str, store: Option<&str>) -> Request {
    Request {
        source: "emr".into(),
        snapshot: Selector::Latest,
        to: dir.join(name),
        store: store.map(str::to_string),
        purpose: "fault test".into(),
        actor: "test".into(),
        action: "restore".into(),
        progress: false,
        stream: None,
    }
}

async fn all_ok(app: &Coffre) -> usize {
    let checks = coffre::ops::verify::verify(app, None).await;
    assert!(checks.iter().all(|c| c.ok()), "{checks:?}");
    checks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_answering_503_is_degraded_then_caught_up() {
    let (dir, app, faults, f) = setup().await;
    faults[1].writes_503.store(true, Ordering::SeqCst);
    let out = coffre::ops::snapshot::protect::protect(&app, "emr", &f)
        .await
        .unwrap();
    assert_eq!(out.protection, Protection::Degraded);
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.failed[0].store, "b");
    assert!(out.failed[0].error.contains("503"), "{:?}", out.failed);
    // b comes back: catch-up copies the sealed bytes from a healthy replica.
    faults[1].writes_503.store(false, Ordering::SeqCst);
    std::fs::remove_file(&f).unwrap();
    let rt = coffre::status::Runtime::new(None);
    let (copied, failed) = coffre::daemon::replicate::catch_up(&app, &rt).await;
    assert_eq!((copied, failed), (1, 0));
    assert_eq!(all_ok(&app).await, 3);
    let r = coffre::ops::snapshot::restore::restore(
        &app,
        &request(dir.path(), "from-b.sql", Some("b")),
    )
    .await
    .unwrap();
    assert_eq!(r.stores_used, vec!["b"]);
    matrix::record("store answers 503 on writes (then returns)", 1, 1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_survives_500s_and_a_stall_mid_transfer() {
    let (dir, app, faults, f) = setup().await;
    let out = coffre::ops::snapshot::protect::protect(&app, "emr", &f)
        .await
        .unwrap();
    assert_eq!(out.protection, Protection::Protected);
    let original = std::fs::read(&f).unwrap();

    faults[0].reads_500.store(true, Ordering::SeqCst);
    let r = coffre::ops::snapshot::restore::restore(&app, &request(dir.path(), "r1.sql", None))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("r1.sql")).unwrap(), original);
    assert_eq!(r.failures[0].store, "a");
    faults[0].reads_500.store(false, Ordering::SeqCst);

    // a stalls after ~200 KB: after the stall timeout the restore goes on from b at the last
    // verified segment boundary.
    faults[0].stall_after.store(200_000, Ordering::SeqCst);
    let r = coffre::ops::snapshot::restore::restore(&app, &request(dir.path(), "r2.sql", None))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("r2.sql")).unwrap(), original);
    assert_eq!(r.stores_used, vec!["a", "b"], "{r:?}");
    assert_eq!(r.failures[0].kind, "stalled", "{r:?}");
    // With only the stalling store, the restore fails cleanly and leaves nothing.
    let e =
        coffre::ops::snapshot::restore::restore(&app, &request(dir.path(), "r3.sql", Some("a")))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("no data for 1s"), "{e}");
    assert!(!dir.path().join("r3.sql").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("coffre-partial"))
        .collect();
    assert!(leftovers.is_empty());
    matrix::record("store answers 500 on reads / stalls mid-transfer", 3, 3, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_accepts_then_loses_objects_is_found_and_repaired() {
    let (dir, app, faults, f) = setup().await;
    faults[2].lose_small_puts.store(true, Ordering::SeqCst);
    let out = coffre::ops::snapshot::protect::protect(&app, "emr", &f)
        .await
        .unwrap();
    // The store acknowledged everything...
    assert_eq!(out.committed.len(), 3);
    // ...but the scrub finds the snapshot missing there and repairs it from a good replica.
    faults[2].lose_small_puts.store(false, Ordering::SeqCst);
    let checks = coffre::ops::verify::verify(&app, None).await;
    assert!(
        checks
            .iter()
            .any(|c| c.store == "c" && c.state == coffre::ops::verify::CheckState::Missing),
        "{checks:?}"
    );
    let rt = coffre::status::Runtime::new(None);
    let (checked, bad, repaired) = coffre::daemon::replicate::scrub(&app, &rt).await;
    assert_eq!((checked, bad, repaired), (3, 1, 1));
    assert_eq!(all_ok(&app).await, 3);
    coffre::ops::snapshot::restore::restore(&app, &request(dir.path(), "from-c.sql", Some("c")))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("from-c.sql")).unwrap(),
        std::fs::read(&f).unwrap()
    );
    matrix::record("store accepts then loses objects (scrub repairs)", 1, 1, 0);
}
