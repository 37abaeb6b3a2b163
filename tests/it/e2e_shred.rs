//! Crypto-shredding with the file key provider, end to end through the real binary: early shred
//! of one snapshot, holds, and the retained-bytes test (someone kept every byte ever written to
//! the stores). The PKCS#11 version of the retained-bytes test is in e2e_pkcs11.rs.

use crate::common::config::ConfigBuilder;

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("in")).unwrap();
        let e = Env { dir };
        e.write_config("coffre.toml", "state");
        e
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write_config(&self, name: &str, state: &str) -> PathBuf {
        self.write_config_with(name, state, "")
    }

    /// The config with `source` added to the `emr` source's table (e.g. its retention).
    fn write_config_with(&self, name: &str, state: &str, source: &str) -> PathBuf {
        ConfigBuilder::new(self.dir.path())
            .state(&self.p(state))
            .source("emr", &self.p("in"), source)
            .local_stores(&[("site-a", "a"), ("site-b", "b")])
            .file_keys()
            .write(&self.p(name))
    }

    fn run_with(&self, config: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.p(config))
            .args(args)
            .env("COFFRE_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with("coffre.toml", args)
    }

    fn backup(&self, name: &str, content: &[u8]) -> String {
        let f = self.p(&format!("in/{name}"));
        std::fs::write(&f, content).unwrap();
        let (code, out, err) = self.run(&["backup", "--source", "emr", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    }

    fn restore(&self, config: &str, id: &str, store: &str, to: &str) -> (i32, String) {
        let (code, _, err) = self.run_with(
            config,
            &[
                "restore",
                id,
                "--source",
                "emr",
                "--store",
                store,
                "--to",
                self.p(to).to_str().unwrap(),
                "--purpose",
                "shred test",
            ],
        );
        (code, err)
    }
}

fn content(tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..40_000 {
        v.extend_from_slice(
            format!("{tag} row {i} CANARY-ZXQ-PATIENT CNRY-99887766-00\n").as_bytes(),
        );
    }
    v
}

/// Every file under `root`, relative.
fn files(root: &Path) -> Vec<PathBuf> {
    coffre::ops::snapshot::protect::source::walk(root)
        .unwrap()
        .into_iter()
        .filter(|r| root.join(r).is_file())
        .collect()
}

fn copy_tree(from: &Path, to: &Path, only_missing: bool) -> usize {
    let mut n = 0;
    for rel in files(from) {
        let dst = to.join(&rel);
        if only_missing && dst.exists() {
            continue;
        }
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), &dst).unwrap();
        n += 1;
    }
    n
}

#[test]
fn early_shred_destroys_one_snapshot_and_keeps_its_epoch_mates() {
    let env = Env::new();
    let a = env.backup("a.sql", &content("A"));
    let b = env.backup("b.sql", &content("B"));
    // Both share an epoch (same planned expiry day).
    let (_, keys, _) = env.run(&["keys", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&keys).unwrap();
    let epoch = v[0]["epochs"][0].clone();
    assert_eq!(epoch["snapshots"], 2, "{keys}");

    // Without --yes nothing happens.
    let (code, out, _) = env.run(&["shred", "--snapshot", &a, "--purpose", "erasure order 7"]);
    assert_eq!(code, 4, "a dry run has its own exit code: {out}");
    assert!(out.contains("--yes"));

    // Retained bytes: someone copies every store before the shred.
    let kept = env.p("kept");
    copy_tree(&env.p("stores"), &kept, false);

    let (code, out, err) = env.run(&[
        "shred",
        "--snapshot",
        &a,
        "--purpose",
        "erasure order 7",
        "--yes",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["snapshots"][0], a.as_str());
    assert_eq!(rec["providers"][0]["destroyed"], true);
    let copies = rec["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    assert!(
        copies
            .iter()
            .all(|c| c["decrypt_check"] == "key destroyed" && c["deletion"] == "deleted"),
        "{out}"
    );
    assert_eq!(rec["rewrapped"][0]["snapshot"], b.as_str());

    // The epoch-mate still restores, byte-identical, from each store.
    for store in ["site-a", "site-b"] {
        let (code, err) = env.restore("coffre.toml", &b, store, &format!("b-{store}"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read(env.p(&format!("b-{store}"))).unwrap(),
            content("B")
        );
    }
    // The shredded one is gone from the catalog and the stores.
    let (_, list, _) = env.run(&["snapshots", "--json"]);
    assert!(!list.contains(&a));
    // Restoring it says it was shredded, when, why, and where the record is (issue 13, 3.14),
    // not that a manifest is missing.
    let record = rec["record"].as_str().unwrap();
    for store in ["site-a", "site-b"] {
        let (code, err) = env.restore("coffre.toml", &a, store, &format!("a-gone-{store}"));
        assert_eq!(code, 1, "{err}");
        for needle in [
            format!(
                "snapshot {a} was crypto-shredded on {}",
                rec["time"].as_str().unwrap()
            ),
            "(early shred: erasure order 7)".to_string(),
            format!("Destruction record {record} (`coffre shred --records`)"),
        ] {
            assert!(err.contains(&needle), "no `{needle}` in: {err}");
        }
        assert!(!err.contains("not committed"), "{err}");
    }
    let (code, _, err) = env.run(&["shred", "--snapshot", &a, "--purpose", "again", "--yes"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("snapshot {a} was already crypto-shredded on")),
        "{err}"
    );
    // A mistyped id is named as such, not as a damaged or uncommitted copy (issue 13, 3.15).
    let typo = format!(
        "{}{}",
        &a[..a.len() - 1],
        if a.ends_with('0') { '1' } else { '0' }
    );
    let (code, err) = env.restore("coffre.toml", &typo, "site-a", "typo");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("there is no snapshot {typo} of source `emr` in the catalog or in any store: check the id")), "{err}");
    assert!(!err.contains("catalog rebuild"), "{err}");

    // Put back every retained byte that was deleted (data, manifests, key objects, old keyrings).
    let restored = copy_tree(&kept, &env.p("stores"), true);
    assert!(
        restored >= 6,
        "the shred deleted data, key and manifest in two stores ({restored})"
    );
    // This host: the key is destroyed, from every store.
    for store in ["site-a", "site-b"] {
        let (code, err) = env.restore("coffre.toml", &a, store, &format!("a-{store}"));
        assert_ne!(code, 0);
        assert!(err.contains("destroyed"), "{err}");
        assert!(!env.p(&format!("a-{store}")).exists());
    }
    // A new host with the config and master key: the newest keyring in the stores has the
    // destruction, so the key is destroyed there too.
    env.write_config("newhost.toml", "newhost-state");
    let (code, err) = env.restore("newhost.toml", &a, "site-a", "a-newhost");
    assert_ne!(code, 0);
    assert!(err.contains("destroyed"), "{err}");

    // The honest limit of the file provider: with the master key AND an old keyring copy kept
    // by someone (here: only the old generations left in a store), the key comes back. This is
    // why erasure with the file provider depends on old keyring copies really being gone.
    // (The restores above rewrote the keyrings and deleted the old generations again: the kept
    // copies are put back once more.)
    copy_tree(&kept, &env.p("stores"), true);
    for site in ["a", "b"] {
        let ring_dir = env.p(&format!("stores/{site}/coffre/keyring/local"));
        let mut rings: Vec<_> = std::fs::read_dir(&ring_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        rings.sort();
        assert!(
            rings.len() >= 2,
            "old keyring generations were put back: {rings:?}"
        );
        for newer in &rings[1..] {
            std::fs::remove_file(newer).unwrap();
        }
    }
    env.write_config("attacker.toml", "attacker-state");
    let (code, err) = env.restore("attacker.toml", &a, "site-a", "a-attacker");
    assert_eq!(
        code, 0,
        "{err}: old keyring + master key decrypts: the documented limit of the file provider"
    );
}

#[test]
fn a_held_snapshot_is_never_shredded_until_released() {
    let env = Env::new();
    let a = env.backup("a.sql", &content("A"));
    let _b = env.backup("b.sql", &content("B"));
    let (code, _, err) = env.run(&["hold", "add", &a, "--purpose", "court order 2026-114"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.run(&["shred", "--snapshot", &a, "--purpose", "x", "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("legal hold"), "{err}");
    // Its key moved to its own hold epoch.
    let (_, keys, _) = env.run(&["keys", "status", "--json"]);
    assert!(keys.contains(&format!("hold-{a}")), "{keys}");
    let (code, _, err) = env.run(&["hold", "release", &a, "--purpose", "case closed"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.run(&["shred", "--snapshot", &a, "--purpose", "erasure", "--yes"]);
    assert_eq!(code, 0, "{err}");
    // Every access is in the access log, and the chain holds.
    let (code, out, _) = env.run(&["audit", "show", "--json", "--snapshot", &a]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"hold-add\"") && out.contains("hold add: court order 2026-114"),
        "{out}"
    );
    let (code, _, err) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.run(&["shred", "--records", "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&a) && out.contains("early shred: erasure"),
        "{out}"
    );
}

/// Authenticate a key object again after an edit, as only someone holding the key provider
/// could (crate::auth): the insider case, where the stores' own checks must still hold.
fn reseal(env: &Env, store: &str, id: &str) {
    let dir = env.p(&format!("stores/{store}/coffre/snapshots/emr/{id}"));
    let mut k =
        coffre::store::KeyObject::parse(&std::fs::read(dir.join("key.json")).unwrap()).unwrap();
    let m = coffre::format::objects::Manifest::parse(
        &std::fs::read(dir.join("manifest.json")).unwrap(),
    )
    .unwrap();
    let config = coffre::Config::load(&env.p("coffre.toml")).unwrap();
    let providers = coffre::app::build_providers(&config).unwrap();
    coffre::auth::ObjectAuth::for_writing(&providers)
        .unwrap()
        .seal(&mut k, &m);
    std::fs::write(dir.join("key.json"), k.to_json()).unwrap();
}

/// Rewrite a snapshot's key object in one store, as someone with write access to that store
/// only could (its authentication tag then no longer verifies).
fn edit_key_object(env: &Env, store: &str, id: &str, edit: impl Fn(&mut serde_json::Value)) {
    let p = env.p(&format!(
        "stores/{store}/coffre/snapshots/emr/{id}/key.json"
    ));
    let mut k: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut k);
    std::fs::write(&p, serde_json::to_string_pretty(&k).unwrap()).unwrap();
}

/// The snapshot's three objects are in both stores.
fn assert_copies_intact(env: &Env, id: &str) {
    for store in ["a", "b"] {
        for obj in ["manifest.json", "data", "key.json"] {
            let p = env.p(&format!("stores/{store}/coffre/snapshots/emr/{id}/{obj}"));
            assert!(p.exists(), "{} was deleted", p.display());
        }
    }
}

#[test]
fn a_held_snapshot_made_to_look_unheld_in_one_store_is_not_deleted() {
    // Finding 3: with write access to one store only, editing a held snapshot's key.json (older
    // epoch, no hold), then `catalog rebuild` and `retention run`, deleted it from both stores.
    let env = Env::new();
    let a = env.backup("a.sql", &content("A"));
    let _b = env.backup("b.sql", &content("B"));
    let _c = env.backup("c.sql", &content("C"));
    let (code, _, err) = env.run(&["hold", "add", &a, "--purpose", "court order 2026-115"]);
    assert_eq!(code, 0, "{err}");
    let key_a = env.p(&format!("stores/a/coffre/snapshots/emr/{a}/key.json"));
    let genuine = std::fs::read(&key_a).unwrap();
    edit_key_object(&env, "a", &a, |k| {
        k["epoch"] = "2020-01-01.1".into();
        k["legal_hold"] = serde_json::Value::Null;
    });
    // The edit breaks the key object's authentication: the rebuild names the store and keeps
    // the catalog (where the snapshot is held).
    let (code, _, err) = env.run(&["catalog", "rebuild"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&a) && err.contains("site-a") && err.contains("FORGED"),
        "names the snapshot and the store: {err}"
    );
    // Even re-authenticated by an insider, one store disagreeing with the others is refused.
    reseal(&env, "a", &a);
    let (code, _, err) = env.run(&["catalog", "rebuild"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&a) && err.contains("site-a") && err.contains("site-b"),
        "{err}"
    );
    let (_, plan, _) = env.run(&["retention", "plan", "--json"]);
    assert!(
        !plan.contains("2020-01-01.1"),
        "the plan was not misled: {plan}"
    );
    let (code, _, err) = env.run(&["retention", "run"]);
    assert_eq!(code, 0, "{err}");
    assert_copies_intact(&env, &a);
    for store in ["site-a", "site-b"] {
        let (code, err) = env.restore("coffre.toml", &a, store, &format!("held-{store}.sql"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read(env.p(&format!("held-{store}.sql"))).unwrap(),
            content("A")
        );
    }
    // Repaired (the genuine key object back): the rebuild is clean again; still held.
    std::fs::write(&key_a, genuine).unwrap();
    let (code, _, err) = env.run(&["catalog", "rebuild"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.run(&["retention", "run"]);
    assert_eq!(code, 0, "{err}");
    assert_copies_intact(&env, &a);
    let (_, keys, _) = env.run(&["keys", "status", "--json"]);
    assert!(keys.contains(&format!("hold-{a}")), "{keys}");
}

#[test]
fn a_copy_that_still_decrypts_after_the_destruction_is_kept_and_reported() {
    // Finding 3: the shred deleted copies that its own check called "STILL DECRYPTABLE". Here
    // both stores' key objects say an old epoch while their wraps name the real one.
    let env = Env::new();
    let a = env.backup("a.sql", &content("A"));
    let _b = env.backup("b.sql", &content("B"));
    let _c = env.backup("c.sql", &content("C"));
    for store in ["a", "b"] {
        edit_key_object(&env, store, &a, |k| k["epoch"] = "2020-01-01.1".into());
    }
    // Not authentic any more: refused by the rebuild.
    let (code, _, err) = env.run(&["catalog", "rebuild"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("FORGED"), "{err}");
    // An insider who holds the key provider re-authenticates them: the last check, per copy
    // after the destruction, still keeps what decrypts.
    for store in ["a", "b"] {
        reseal(&env, store, &a);
    }
    let (code, _, err) = env.run(&["catalog", "rebuild"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = env.run(&["retention", "run", "--json"]);
    assert_ne!(code, 0, "the run reports the kept copies\n{out}\n{err}");
    assert!(
        err.contains("not complete") && err.contains("STILL DECRYPTABLE"),
        "{err}"
    );
    let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let r = records
        .iter()
        .find(|r| r["epoch"] == "2020-01-01.1")
        .expect("a record of the run");
    assert_eq!(r["complete"], false, "{r}");
    let copies = r["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{r}");
    for c in copies {
        assert_eq!(c["decrypt_check"], "STILL DECRYPTABLE", "{r}");
        assert_eq!(c["kept"], true, "{r}");
        assert!(c["deletion"].as_str().unwrap().starts_with("kept"), "{r}");
    }
    assert_copies_intact(&env, &a);
    let (code, err) = env.restore("coffre.toml", &a, "site-b", "kept.sql");
    assert_eq!(code, 0, "{err}");
    // Still in the catalog, and an alert per kept copy.
    let (_, snaps, _) = env.run(&["snapshots", "--json"]);
    assert!(snaps.contains(&a), "{snaps}");
    let cat = coffre::catalog::Catalog::open(&env.p("state/catalog.sqlite")).unwrap();
    let kept = cat
        .alerts()
        .unwrap()
        .into_iter()
        .filter(|(k, _, _)| k.starts_with(&format!("shred-kept:{a}:")))
        .count();
    assert_eq!(kept, 2);
}

/// The destruction record (`shred --records --json`) that names snapshot `id` first.
fn record_of(env: &Env, id: &str) -> serde_json::Value {
    let (_, recs, _) = env.run(&["shred", "--records", "--json"]);
    let recs: Vec<serde_json::Value> = serde_json::from_str(&recs).unwrap();
    recs.into_iter().find(|r| r["snapshots"][0] == id).unwrap()
}

#[test]
fn a_failed_keyring_push_is_recorded_retried_and_stale_temporary_keyrings_are_swept() {
    // Finding 7: pushes were best effort and the record said "destroyed" anyway; a crashed
    // atomic write left `*.tmp-<pid>` keyrings holding old keys, never swept.
    let env = Env::new();
    // The first snapshot of a day is kept a week, later ones two days: `a` is alone in its
    // epoch, so shredding it moves no key.
    env.write_config_with(
        "coffre.toml",
        "state",
        "[source.retention]\nkeep-within = \"2d\"\nkeep-daily = 7",
    );
    let a = env.backup("a.sql", &content("A"));
    let _b = env.backup("b.sql", &content("B"));
    // A crashed keyring write left a temporary copy, holding a's epoch key (no such process).
    let keys = env.p("state/keys");
    let stale = keys.join("local.tmp-4194305");
    std::fs::copy(keys.join("local.keyring"), &stale).unwrap();
    // Store b cannot take keyrings any more.
    let ring_b = env.p("stores/b/coffre/keyring/local");
    std::fs::remove_dir_all(&ring_b).unwrap();
    std::fs::write(&ring_b, b"not a folder").unwrap();

    let (code, _, err) = env.run(&["shred", "--snapshot", &a, "--purpose", "erasure 9", "--yes"]);
    assert_ne!(code, 0, "not reported as done\n{err}");
    assert!(
        err.contains("not complete") && err.contains("site-b"),
        "{err}"
    );
    assert!(!stale.exists(), "the stale temporary keyring is gone");
    let r = &record_of(&env, &a);
    assert_eq!(r["complete"], false, "{r}");
    let pushed = |r: &serde_json::Value, store: &str| {
        r["keyrings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["store"] == store)
            .map(|k| k["pushed"].clone())
    };
    assert_eq!(pushed(r, "site-a"), Some(true.into()), "{r}");
    assert_eq!(pushed(r, "site-b"), Some(false.into()), "{r}");
    let alerts = || {
        coffre::catalog::Catalog::open(&env.p("state/catalog.sqlite"))
            .unwrap()
            .alerts()
            .unwrap()
    };
    assert!(
        alerts().iter().any(|(k, _, _)| k == "keyring-push:site-b"),
        "{:?}",
        alerts()
    );
    // The copies themselves are gone (the key is destroyed locally and in store a).
    assert!(!env
        .p(&format!("stores/b/coffre/snapshots/emr/{a}"))
        .join("data")
        .exists());

    // A later run still cannot push: still an error.
    let (code, _, err) = env.run(&["retention", "run"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("site-b"), "{err}");
    // Store b is back: the next run pushes, updates the record and clears the alert.
    std::fs::remove_file(&ring_b).unwrap();
    let (code, _, err) = env.run(&["retention", "run"]);
    assert_eq!(code, 0, "{err}");
    let r = &record_of(&env, &a);
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(pushed(r, "site-b"), Some(true.into()), "{r}");
    assert!(alerts().is_empty(), "{:?}", alerts());
    // Store b holds only the keyring generation written after the destruction, as store a.
    let names = |dir: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let in_b = names(&ring_b);
    assert_eq!(in_b.len(), 1, "{in_b:?}");
    assert_eq!(in_b, names(&env.p("stores/a/coffre/keyring/local")));
    let (code, _, err) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{err}");
}
