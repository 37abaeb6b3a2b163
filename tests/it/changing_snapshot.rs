//! A snapshot that changes or vanishes while it is being read is reported, never protected as if
//! whole: no manifest in any store, nothing in the catalog.

use crate::common::config::ConfigBuilder;
use crate::matrix;

use std::path::Path;
use std::time::Duration;

use coffre::ops::snapshot::protect::PipelineError;
use coffre::{Coffre, Config};

fn config(dir: &Path) -> Config {
    ConfigBuilder::new(dir)
        .table("pipeline", "zstd-threads = 1")
        .emr()
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .config()
}

fn big(path: &Path) {
    let line = b"INSERT INTO lab_results VALUES (1, 2, 'glucose', 5.4, 'mmol/L');\n";
    let mut v = Vec::with_capacity(200 << 20);
    while v.len() < 200 << 20 {
        v.extend_from_slice(line);
    }
    std::fs::write(path, v).unwrap();
}

async fn nothing_committed(app: &Coffre, dir: &Path) {
    assert!(app.catalog().list(None).unwrap().is_empty());
    for s in app.stores() {
        assert!(
            s.list_manifests().await.unwrap().is_empty(),
            "a manifest was written in {}",
            s.name
        );
    }
    let _ = dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_grows_while_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let f = dir.path().join("in/emr.sql");
    big(&f);
    let f2 = f.clone();
    // The dump is still being written: rows keep arriving until coffre is done reading.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut h = std::fs::OpenOptions::new().append(true).open(&f2).unwrap();
        while !done2.load(std::sync::atomic::Ordering::SeqCst) {
            h.write_all(b"-- late rows\n").unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let r = coffre::ops::snapshot::protect::protect(&app, "emr", &f).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    match r {
        Err(PipelineError::Changed { what, .. }) => assert!(what.contains("size"), "{what}"),
        Err(e) => panic!("expected Changed, got {e}"),
        Ok(o) => panic!(
            "a changing snapshot was protected as {}",
            o.manifest.snapshot
        ),
    }
    nothing_committed(&app, dir.path()).await;
    matrix::record("snapshot changes while read", 1, 1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_vanishes_while_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    let f = dir.path().join("in/emr.sql");
    big(&f);
    let f2 = f.clone();
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        std::fs::remove_file(&f2).unwrap();
    });
    let r = coffre::ops::snapshot::protect::protect(&app, "emr", &f).await;
    remover.join().unwrap();
    match r {
        Err(e @ PipelineError::Read { .. }) => assert!(e.to_string().contains("emr.sql"), "{e}"),
        Err(e) => panic!("expected a read error naming the file, got {e}"),
        Ok(o) => panic!(
            "a vanished snapshot was protected as {}",
            o.manifest.snapshot
        ),
    }
    nothing_committed(&app, dir.path()).await;
    matrix::record("snapshot vanishes while read", 1, 1, 0);
}
