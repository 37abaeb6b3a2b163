//! Fault matrix row 13 / scale: 10 000 snapshots in the catalog. Prints how long listing,
//! retention planning and building /status take (figures, not assertions).
//!
//!     cargo bench --bench catalog

use std::path::Path;
use std::time::Instant;

use coffre::ids::{EpochId, SnapshotId};
use coffre::store::{KeyObject, Manifest, SnapshotKind, Wrap};
use coffre::{Coffre, Config};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("COFFRE_BENCH_SNAPSHOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 10_000 } else { 200 });
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let text = format!(
        "state-dir = \"{d}/state\"\n[[source]]\nname = \"emr\"\npath = \"{d}/in\"\n[source.retention]\nkeep-daily = 30\n[[store]]\nname = \"a\"\nkind = \"local\"\nsite = \"a\"\njurisdiction = \"CA-QC\"\npath = \"{d}/a\"\n[[store]]\nname = \"b\"\nkind = \"local\"\nsite = \"b\"\njurisdiction = \"CA-QC\"\npath = \"{d}/b\"\n[[key-provider]]\nname = \"local\"\nkind = \"file\"\nmaster-key = \"{d}/keys/master.key\"\ncreate-master-key = true\n"
    );
    let app = Coffre::open(Config::from_toml(&text, Path::new("bench.toml")).expect("config"))
        .await
        .expect("open");
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    let t = Instant::now();
    for i in 0..n {
        let created = start + time::Duration::minutes(57 * i as i64);
        let id = SnapshotId::from_timestamp_ms((created.unix_timestamp() * 1000) as u64);
        let m = Manifest {
            format: coffre::format::objects::MANIFEST_FORMAT,
            snapshot: id,
            source: "emr".into(),
            host: "bench".into(),
            created: created
                .format(&time::format_description::well_known::Rfc3339)
                .expect("time"),
            kind: SnapshotKind::File,
            original_name: format!("emr-{i}.sql"),
            size: 1 << 30,
            compressed_size: 300 << 20,
            sealed_size: 300 << 20,
            sealed_sha256: "0".repeat(64),
            plaintext_hmac_sha256: None,
            plaintext_blake3: Some("0".repeat(64)),
            cipher: "aes-256-gcm".into(),
            compression: "zstd".into(),
            segment_log2: 20,
            pg_wal_start: None,
        };
        app.catalog().put_manifest(&m).expect("put");
        let epoch = EpochId::for_day((created + time::Duration::days(30)).date());
        app.catalog()
            .put_key(&KeyObject {
                format: 1,
                snapshot: id,
                source: "emr".into(),
                epoch: epoch.clone(),
                planned_expiry: String::new(),
                wraps: vec![Wrap {
                    provider: "local".into(),
                    kind: "file".into(),
                    algorithm: "aes256-kwp".into(),
                    epoch,
                    wrapped: String::new(),
                }],
                legal_hold: None,
                auth: Vec::new(),
            })
            .expect("key");
        for s in ["a", "b"] {
            app.catalog()
                .set_replica(&id, s, coffre::catalog::ReplicaState::Committed)
                .expect("replica");
        }
    }
    println!(
        "catalog with {n} snapshots: filled in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let list = app.catalog().list(None).expect("list");
    println!(
        "list all ({} entries, manifests parsed):     {:>8.1} ms",
        list.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let plan = coffre::ops::lifecycle::shred::current_plan(&app, time::OffsetDateTime::now_utc())
        .expect("plan");
    println!(
        "retention plan ({} due epochs, {} upcoming):  {:>8.1} ms",
        plan.due.len(),
        plan.upcoming.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let rt = coffre::status::Runtime::new(None);
    let t = Instant::now();
    let doc = coffre::status::build(&app, &rt);
    let json = serde_json::to_string(&doc).expect("json");
    println!(
        "/status document ({} bytes):              {:>8.1} ms",
        json.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
}
