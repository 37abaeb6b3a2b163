//! End-to-end tests of the `pkcs11` key provider: the real binary with a config whose only key
//! provider is a SoftHSM2 token (two local stores in two sites). Each test has its own SoftHSM
//! conf and token dir, handed to the child process through `SOFTHSM2_CONF`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

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
        let d = self.dir.path().display();
        let text = format!(
            r#"state-dir = "{d}/state"
[replication]
min-sites = 2
retries = 1
backoff = "50ms"
[[source]]
name = "emr"
path = "{d}/incoming"
complete = "rename"
[[store]]
name = "site-a"
kind = "local"
site = "a"
jurisdiction = "CA-QC"
path = "{d}/stores/a"
[[store]]
name = "site-b"
kind = "local"
site = "b"
jurisdiction = "CA-QC"
path = "{d}/stores/b"
[[key-provider]]
name = "hsm"
kind = "pkcs11"
module = "{module}"
token-label = "{LABEL}"
pin-file = "{pin}"
"#,
            module = module.display(),
            pin = pin_file.display(),
        );
        let path = self.p("coffre.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.p("coffre.toml"))
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
    let epochs = p["epochs"].as_array().unwrap();
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
}
