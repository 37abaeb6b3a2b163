//! Snapshots written by the first versions of coffre (manifest format 1: the plaintext digest is
//! HMAC-SHA-256) must keep restoring after the switch to keyed BLAKE3 (manifest format 2).
//!
//! tests/fixtures/manifest-v1 holds two stores exactly as that version wrote them (a file and a
//! directory snapshot, their key objects, the sealed keyring), the test master key that seals the
//! keyring, and the inputs. The test restores them on a "new host" (empty state) with the
//! current binary, byte-identical, and checks `verify` and `catalog rebuild` read them. It also
//! checks that a new backup writes format 2 and that the two digests are not interchangeable.
//! Never regenerate these files: they stand for backups that already exist.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::coffre::{files_under, local_stores, CoffreEnv};
use serde_json::Value;

const FILE_SNAPSHOT: &str = "01M8H5V3Y1YRSR2W01A435NNVE";
const DIR_SNAPSHOT: &str = "01M8H5V3YETT7Q25MMQXXF0M20";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifest-v1")
}

/// Paths of the regular files under `root`, relative to it, sorted.
fn relative_files(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    for rel in relative_files(from) {
        let dst = to.join(&rel);
        assert!(!dst.starts_with(from), "never copy onto the fixture");
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(from.join(&rel), &dst).unwrap();
    }
}

/// A new host: the fixture's stores copied, its master key (0600), an empty state folder.
fn new_host() -> CoffreEnv {
    // The stores live inside the env's own temp dir so that they go with it.
    let env = CoffreEnv::new("");
    let stores = env.dir.path().join("stores");
    copy_tree(&fixture().join("stores"), &stores);
    let text = env
        .config_text(&env.state)
        .replace("create-master-key = true", "create-master-key = false")
        + &local_stores(
            env.dir.path(),
            &[("site-a", "site-a"), ("site-b", "site-b")],
        );
    env.write_config(&text);
    fs::create_dir_all(env.master_key.parent().unwrap()).unwrap();
    fs::copy(fixture().join("master.key"), &env.master_key).unwrap();
    fs::set_permissions(&env.master_key, fs::Permissions::from_mode(0o600)).unwrap();
    env
}

fn manifest(env: &CoffreEnv, store: &str, id: &str) -> Value {
    let p = env
        .dir
        .path()
        .join("stores")
        .join(store)
        .join("coffre/snapshots/emr")
        .join(id)
        .join("manifest.json");
    serde_json::from_slice(&fs::read(&p).unwrap()).unwrap()
}

#[test]
fn format_1_snapshots_restore_verify_and_rebuild_the_catalog() {
    let env = new_host();
    for store in ["site-a", "site-b"] {
        let m = manifest(&env, store, FILE_SNAPSHOT);
        assert_eq!(m["format"], 1, "the fixture is a format-1 manifest");
        assert!(m["plaintext_hmac_sha256"].is_string());
        assert!(m.get("plaintext_blake3").is_none());
    }

    env.run(&["catalog", "rebuild"]).expect_ok();
    let listed = env.run(&["snapshots", "--source", "emr", "--json"]);
    listed.expect_ok();
    let ids: Vec<String> = listed
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, [FILE_SNAPSHOT, DIR_SNAPSHOT]);

    let (v, checks) = env.verify(None);
    v.expect_ok();
    assert_eq!(checks.len(), 4, "two snapshots in two stores\n{v}");

    // The file snapshot, from each store in turn: byte-identical.
    for store in ["site-a", "site-b"] {
        let to = env.out.join(format!("emr-{store}.sql"));
        env.restore(FILE_SNAPSHOT, &to, Some(store)).expect_ok();
        assert_eq!(
            fs::read(&to).unwrap(),
            fs::read(fixture().join("input/emr-golden.sql")).unwrap(),
            "restored from {store}"
        );
    }

    // The directory snapshot: the same files, the same bytes.
    let to = env.out.join("base");
    env.restore(DIR_SNAPSHOT, &to, None).expect_ok();
    let want = fixture().join("input/base");
    assert_eq!(relative_files(&to), relative_files(&want));
    for rel in relative_files(&want) {
        assert_eq!(
            fs::read(to.join(&rel)).unwrap(),
            fs::read(want.join(&rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
}

#[test]
fn a_format_1_manifest_whose_hmac_was_altered_is_refused() {
    let env = new_host();
    // The manifest is immutable in a real store; here someone rewrote one replica's manifest,
    // giving it a wrong HMAC. Restoring from that store must fail on the digest, not succeed.
    let p = env
        .dir
        .path()
        .join("stores/site-a/coffre/snapshots/emr")
        .join(FILE_SNAPSHOT)
        .join("manifest.json");
    let mut m: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    m["plaintext_hmac_sha256"] = "ab".repeat(32).into();
    fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // The stores disagree: a rebuild names them and keeps the catalog as it was.
    let r = env.run(&["catalog", "rebuild"]);
    r.expect_failure();
    assert!(
        r.error_text().contains("site-a") && r.error_text().contains("site-b"),
        "names both stores\n{r}"
    );
    let to = env.out.join("emr.sql");
    let r = env.restore(FILE_SNAPSHOT, &to, Some("site-a"));
    r.expect_failure();
    assert!(
        r.error_text().contains("keyed digest of the plaintext"),
        "names the digest\n{r}"
    );
    assert!(!to.exists(), "nothing is left at the target");
}

#[test]
fn new_backups_write_format_2_with_a_keyed_blake3_digest() {
    let env = new_host();
    let input = env.dir.path().join("again.sql");
    fs::copy(fixture().join("input/emr-golden.sql"), &input).unwrap();
    let id = env.backup(&input);
    let m = manifest(&env, "site-a", &id);
    assert_eq!(m["format"], 2);
    let digest = m["plaintext_blake3"].as_str().expect("a BLAKE3 digest");
    assert_eq!(digest.len(), 64);
    assert!(m.get("plaintext_hmac_sha256").is_none());
    // Keyed: the same plaintext as the format-1 snapshot, yet neither an unkeyed BLAKE3 of it
    // nor the old snapshot's HMAC.
    let plain = fs::read(&input).unwrap();
    assert_ne!(digest, blake3::hash(&plain).to_hex().as_str());
    let old = manifest(&env, "site-a", FILE_SNAPSHOT);
    assert_ne!(Some(digest), old["plaintext_hmac_sha256"].as_str());
    let to = env.out.join("again.sql");
    env.restore(&id, &to, None).expect_ok();
    assert_eq!(fs::read(&to).unwrap(), plain);
}

fn key_object_path(env: &CoffreEnv, store: &str, id: &str) -> PathBuf {
    env.dir
        .path()
        .join("stores")
        .join(store)
        .join("coffre/snapshots/emr")
        .join(id)
        .join("key.json")
}

#[test]
fn older_key_objects_stay_unsealed_until_an_operator_seals_them() {
    let env = new_host();
    let r = env.run(&["catalog", "rebuild"]);
    r.expect_ok();
    assert!(r.all().contains("2 key object(s) are unsealed"), "{r}");
    for store in ["site-a", "site-b"] {
        let k: Value =
            serde_json::from_slice(&fs::read(key_object_path(&env, store, FILE_SNAPSHOT)).unwrap())
                .unwrap();
        assert!(
            k.get("auth").is_none(),
            "the fixture predates authentication"
        );
    }
    let r = env.run(&["catalog", "seal"]);
    r.expect_ok();
    assert!(r.all().contains("2 key object(s) sealed"), "{r}");
    for store in ["site-a", "site-b"] {
        for id in [FILE_SNAPSHOT, DIR_SNAPSHOT] {
            let k: Value =
                serde_json::from_slice(&fs::read(key_object_path(&env, store, id)).unwrap())
                    .unwrap();
            let tags = k["auth"].as_array().expect("tags after the seal");
            assert_eq!(tags.len(), 1, "{k}");
            assert_eq!(tags[0]["hmac"].as_str().unwrap_or_default().len(), 64);
        }
    }
    // Sealed once: a second seal has nothing to do, a rebuild sees no unsealed object, and the
    // snapshots still restore.
    let r = env.run(&["catalog", "seal"]);
    r.expect_ok();
    assert!(r.all().contains("0 key object(s) sealed, 2 already"), "{r}");
    let r = env.run(&["catalog", "rebuild"]);
    r.expect_ok();
    assert!(!r.all().contains("unsealed"), "{r}");
    let to = env.out.join("after-seal.sql");
    env.restore(FILE_SNAPSHOT, &to, Some("site-b")).expect_ok();
    assert_eq!(
        fs::read(&to).unwrap(),
        fs::read(fixture().join("input/emr-golden.sql")).unwrap()
    );
    // The access log has the operator's decision.
    let log = env.run(&["audit", "show", "--action", "catalog-seal", "--json"]);
    log.expect_ok();
    assert!(log.json().as_array().is_some_and(|a| a.len() >= 2), "{log}");
}

#[test]
fn a_key_object_edited_in_every_store_is_refused_by_rebuild_and_restore() {
    let env = new_host();
    let input = env.out.join("fresh.sql");
    fs::write(&input, common::coffre::emr_sql(200_000)).unwrap();
    let id = env.backup(&input);
    let mut k: Value =
        serde_json::from_slice(&fs::read(key_object_path(&env, "site-a", &id)).unwrap()).unwrap();
    assert!(
        k["auth"].as_array().is_some_and(|t| !t.is_empty()),
        "a new key object is sealed: {k}"
    );
    // Someone with write access to both stores moves the snapshot to an earlier epoch, the
    // same in both, so that the stores agree with each other.
    k["legal_hold"] = Value::Null;
    k["planned_expiry"] = Value::String("2000-01-01T00:00:00Z".into());
    for store in ["site-a", "site-b"] {
        fs::write(
            key_object_path(&env, store, &id),
            serde_json::to_vec_pretty(&k).unwrap(),
        )
        .unwrap();
    }
    let r = env.run(&["catalog", "rebuild"]);
    r.expect_failure();
    assert!(
        r.all().contains("FORGED") && r.all().contains("site-a") && r.all().contains(&id),
        "{r}"
    );
    // The catalog built by the backup is kept, not replaced by the forged view.
    let listed = env.run(&["snapshots", "--json"]);
    listed.expect_ok();
    assert!(listed.all().contains(&id), "{listed}");
    // A restore does not use a forged key object from any store.
    let to = env.out.join("forged.sql");
    let r = env.restore(&id, &to, None);
    r.expect_failure();
    assert!(r.all().contains("FORGED"), "{r}");
    assert!(!to.exists());
}
