//! End-to-end tests of the `pkcs11` key provider: the real binary with a config whose only key
//! provider is a SoftHSM2 token (two local stores in two sites). Each test has its own SoftHSM
//! conf and token dir, handed to the child process through `SOFTHSM2_CONF`.

use crate::matrix;

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::ConfigBuilder;
use common::SoftHsm;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");
const LABEL: &str = "coffre-e2e";
const USER_PIN: &str = "5678";
const SO_PIN: &str = "1234";

struct Env {
    dir: tempfile::TempDir,
    hsm: SoftHsm,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("incoming")).unwrap();
        Env {
            dir,
            hsm: SoftHsm::init(LABEL, USER_PIN, SO_PIN),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// coffre.toml with two local stores in two sites and one pkcs11 provider.
    fn config(&self, module: &Path, pin_file: &Path) -> PathBuf {
        self.config_as("coffre.toml", "state", module, pin_file)
    }

    /// The same config under another name, with its own state folder (another host).
    fn config_as(&self, name: &str, state: &str, module: &Path, pin_file: &Path) -> PathBuf {
        ConfigBuilder::new(self.dir.path())
            .state(&self.p(state))
            .table(
                "replication",
                "min-sites = 2\nretries = 1\nbackoff = \"50ms\"",
            )
            .source("emr", &self.p("incoming"), "complete = \"rename\"")
            .local_stores(&[("site-a", "a"), ("site-b", "b")])
            .pkcs11_keys("hsm", module, LABEL, pin_file)
            .write(&self.p(name))
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with("coffre.toml", args)
    }

    fn run_with(&self, config: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.p(config))
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("COFFRE_LOG", "info")
            .env(SoftHsm::CONF_ENV, self.hsm.conf_path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A snapshot file of `len` pseudo-random bytes (poorly compressible).
    fn snapshot(&self, name: &str, len: usize) -> PathBuf {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let path = self.p(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

#[test]
fn backup_restore_and_keys_status_with_only_an_hsm() {
    let env = Env::new();
    env.config(env.hsm.module_path(), env.hsm.pin_file());
    let snap = env.snapshot("emr-2026-11-28.dump", 3 * 1024 * 1024 + 17);

    let (code, out, err) = env.run(&["backup", "--source", "emr", snap.to_str().unwrap()]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");

    let to = env.p("restored.dump");
    let (code, out, err) = env.run(&[
        "restore",
        "latest",
        "--source",
        "emr",
        "--to",
        to.to_str().unwrap(),
        "--purpose",
        "test",
    ]);
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    assert!(
        std::fs::read(&to).unwrap() == std::fs::read(&snap).unwrap(),
        "restored bytes differ from the snapshot"
    );

    let (code, out, err) = env.run(&["keys", "status", "--json"]);
    assert_eq!(code, 0, "keys status failed:\n{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let providers = v.as_array().unwrap();
    assert_eq!(providers.len(), 1, "{out}");
    let p = &providers[0];
    assert_eq!(p["provider"], "hsm");
    assert_eq!(p["kind"], "pkcs11");
    assert_eq!(p["health"], "ok");
    // The snapshot's epoch (the access log's sealed copy has its own `audit-...` epoch).
    let epochs: Vec<&serde_json::Value> = p["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["epoch"].as_str().unwrap_or("").starts_with("audit-"))
        .collect();
    assert_eq!(epochs.len(), 1, "{out}");
    assert!(epochs[0]["destroyed"].is_null(), "{out}");
    let epoch = epochs[0]["epoch"].as_str().unwrap();

    // The epoch key lives on the token (seen by OpenSC's pkcs11-tool, another process).
    let objects = env.hsm.list_objects();
    assert!(
        objects.contains(&format!("coffre-epoch-{epoch}")),
        "{objects}"
    );

    // The key object in every store names the pkcs11 wrap, and no store holds the plaintext.
    let mut key_objects = 0;
    for site in ["a", "b"] {
        for entry in walk(&env.p(&format!("stores/{site}"))) {
            if entry.file_name().is_some_and(|n| n == "key.json") {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(text.contains("aes256-kwp-pkcs11"), "{text}");
                assert!(text.contains(epoch), "{text}");
                key_objects += 1;
            }
        }
    }
    assert_eq!(key_objects, 2);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn wrong_pin_fails_the_backup_and_says_so() {
    let env = Env::new();
    let pin = env.p("wrong.pin");
    write_secret(&pin, "0000\n");
    env.config(env.hsm.module_path(), &pin);
    let snap = env.snapshot("emr.dump", 4096);
    let (code, out, err) = env.run(&["backup", "--source", "emr", snap.to_str().unwrap()]);
    assert_ne!(code, 0, "backup with a wrong PIN succeeded:\n{out}\n{err}");
    assert!(err.contains("PIN"), "{err}");
    assert!(err.contains("CKR_PIN_INCORRECT"), "{err}");
    assert!(!err.contains("unavailable"), "{err}");
    assert!(
        !err.contains("0000"),
        "the PIN leaked into the output: {err}"
    );
    // Nothing reached the stores.
    assert!(walk(&env.p("stores")).is_empty());
    matrix::record("wrong HSM PIN (distinct error, no fallback)", 1, 1, 0);
}

#[test]
fn missing_module_says_the_hsm_is_unavailable() {
    let env = Env::new();
    env.config(Path::new("/nonexistent/libsofthsm2.so"), env.hsm.pin_file());
    let snap = env.snapshot("emr.dump", 4096);
    let (code, out, err) = env.run(&["backup", "--source", "emr", snap.to_str().unwrap()]);
    assert_ne!(code, 0, "backup without a module succeeded:\n{out}\n{err}");
    assert!(err.contains("unavailable"), "{err}");
    assert!(err.contains("/nonexistent/libsofthsm2.so"), "{err}");
    let (code, _, err) = env.run(&["keys", "status", "--json"]);
    assert_ne!(code, 0);
    assert!(err.contains("unavailable"), "{err}");
    matrix::record("HSM unavailable (distinct error)", 1, 1, 0);
}

/// Every file under `from`, copied to the same place under `to` (only those missing there, or
/// all). Returns how many were copied.
fn copy_tree(from: &Path, to: &Path, only_missing: bool) -> usize {
    let mut n = 0;
    for file in walk(from) {
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

/// Object labels in `pkcs11-tool --list-objects` output (data object labels are quoted).
fn labels(objects: &str) -> Vec<String> {
    objects
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:"))
        .map(|l| l.trim().trim_matches('\'').to_string())
        .collect()
}

/// The retained-bytes test with only an HSM: someone keeps every byte ever written to both
/// stores, the snapshot is crypto-shredded, every byte is put back. The snapshot stays
/// unreadable from every store, on this host and on a new one, because the epoch key is gone
/// from the token (unlike the file provider, no old copy of anything brings it back), while its
/// epoch-mate restores.
#[test]
fn retained_bytes_do_not_survive_a_shred_with_an_hsm() {
    let env = Env::new();
    env.config(env.hsm.module_path(), env.hsm.pin_file());
    let snap_a = env.snapshot("emr-a.dump", 2 * 1024 * 1024 + 5);
    let snap_b = env.p("emr-b.dump");
    let mut b_bytes = std::fs::read(&snap_a).unwrap();
    b_bytes.reverse();
    std::fs::write(&snap_b, &b_bytes).unwrap();
    let backup = |path: &Path| {
        let (code, out, err) = env.run(&["backup", "--source", "emr", path.to_str().unwrap()]);
        assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
        out.trim().to_string()
    };
    let a = backup(&snap_a);
    let b = backup(&snap_b);
    assert_eq!(a.len(), 26, "{a}");

    // Same epoch (the only one covering snapshots).
    let (code, out, err) = env.run(&["keys", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let epochs: Vec<_> = v[0]["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["snapshots"].as_u64() != Some(0))
        .collect();
    assert_eq!(epochs.len(), 1, "{out}");
    assert_eq!(epochs[0]["snapshots"], 2, "{out}");
    let epoch = epochs[0]["epoch"].as_str().unwrap().to_string();
    let epoch_label = format!("coffre-epoch-{epoch}");
    assert!(labels(&env.hsm.list_objects()).contains(&epoch_label));

    // Someone keeps every byte under both stores: data, manifests, key objects, everything.
    let stores = env.p("stores");
    let kept = env.p("kept");
    let n = copy_tree(&stores, &kept, false);
    assert!(n >= 12, "{n} files kept");
    let key_a = |root: &Path, site: &str| {
        root.join(site)
            .join("coffre/snapshots/emr")
            .join(&a)
            .join("key.json")
    };
    assert!(key_a(&kept, "a").is_file() && key_a(&kept, "b").is_file());

    let (code, out, err) = env.run(&[
        "shred",
        "--snapshot",
        &a,
        "--purpose",
        "erasure order",
        "--yes",
        "--json",
    ]);
    assert_eq!(code, 0, "shred failed:\n{out}\n{err}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["epoch"], epoch.as_str(), "{out}");
    assert_eq!(rec["snapshots"], serde_json::json!([a]), "{out}");
    let providers = rec["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 1, "{out}");
    assert!(
        providers
            .iter()
            .all(|p| p["provider"] == "hsm" && p["destroyed"] == true),
        "{out}"
    );
    let copies = rec["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{out}");
    assert!(
        copies
            .iter()
            .all(|c| c["decrypt_check"] == "key destroyed" && c["deletion"] == "deleted"),
        "{out}"
    );
    assert_eq!(rec["rewrapped"][0]["snapshot"], b.as_str(), "{out}");
    assert!(!key_a(&stores, "a").exists() && !key_a(&stores, "b").exists());

    // Every kept byte goes back: everything now missing, and A's key object over whatever is
    // there.
    let restored = copy_tree(&kept, &stores, true);
    assert!(
        restored >= 6,
        "data, key object and manifest of A in two stores ({restored})"
    );
    for site in ["a", "b"] {
        std::fs::copy(key_a(&kept, site), key_a(&stores, site)).unwrap();
    }

    let restore = |config: &str, store: &str, id: &str, to: &str| {
        let to = env.p(to);
        let (code, out, err) = env.run_with(
            config,
            &[
                "restore",
                id,
                "--source",
                "emr",
                "--store",
                store,
                "--to",
                to.to_str().unwrap(),
                "--purpose",
                "retained-bytes test",
            ],
        );
        (code, format!("{out}\n{err}"), to)
    };
    // This host: A is destroyed, from every store.
    for store in ["site-a", "site-b"] {
        let (code, out, to) = restore("coffre.toml", store, &a, &format!("a-{store}"));
        assert_ne!(code, 0, "A restored from {store}:\n{out}");
        assert!(out.contains("destroyed"), "{out}");
        assert!(!to.exists());
    }
    // A new host: a copy of the config with a fresh, empty state folder, the same token.
    env.config_as(
        "newhost.toml",
        "newhost-state",
        env.hsm.module_path(),
        env.hsm.pin_file(),
    );
    let (code, out, err) = env.run_with("newhost.toml", &["catalog", "rebuild"]);
    assert_eq!(code, 0, "catalog rebuild failed:\n{out}\n{err}");
    for store in ["site-a", "site-b"] {
        let (code, out, to) = restore("newhost.toml", store, &a, &format!("a-new-{store}"));
        assert_ne!(code, 0, "A restored on a new host from {store}:\n{out}");
        assert!(out.contains("destroyed"), "{out}");
        assert!(!to.exists());
    }

    // The token holds the tombstone, not the key.
    let objects = env.hsm.list_objects();
    let labels = labels(&objects);
    assert!(!labels.contains(&epoch_label), "{objects}");
    assert!(
        labels.contains(&format!("coffre-tombstone-{epoch}")),
        "{objects}"
    );

    // The epoch-mate restores, byte-identical, from each store, here and on the new host.
    for config in ["coffre.toml", "newhost.toml"] {
        for store in ["site-a", "site-b"] {
            let (code, out, to) = restore(config, store, &b, &format!("b-{config}-{store}"));
            assert_eq!(code, 0, "B did not restore from {store} ({config}):\n{out}");
            assert!(std::fs::read(&to).unwrap() == b_bytes, "B differs");
        }
    }
    matrix::record("destroyed epoch key with every byte kept (HSM)", 1, 1, 0);
}
