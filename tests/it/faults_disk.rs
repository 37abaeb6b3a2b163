//! Full disks (fault matrix row 9), with small real tmpfs mounts: the restore target, the access
//! log, the state folder. Each gives a clear error, and nothing is lost or left half-written.
//! Needs root (mount); tests/run runs as root on CI.

use crate::common::config::ConfigBuilder;
use crate::matrix;

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

/// A tmpfs of `kib` KiB, unmounted on drop.
pub(crate) struct Tmpfs(pub(crate) PathBuf);

impl Tmpfs {
    pub(crate) fn new(at: &Path, kib: u32) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "full-disk tests mount a small tmpfs: run the suite as root (tests/run does on CI)"
        );
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Fill it up.
    fn fill(&self) {
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", self.0.join(".fill").display()))
            .args(["bs=4k"])
            .output();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn write_config(dir: &Path, state: &Path, audit: Option<&Path>) -> PathBuf {
    let mut config = ConfigBuilder::new(dir).state(state);
    if let Some(a) = audit {
        config = config.audit(&format!("path = \"{}\"", a.display()));
    }
    config
        .emr()
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .write(&dir.join("coffre.toml"))
}

fn run(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("COFFRE_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn dump(dir: &Path) -> PathBuf {
    let f = dir.join("in/emr.sql");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    // Incompressible enough that the restored file needs more than the small target tmpfs.
    let mut v = Vec::new();
    let mut x: u64 = 88172645463325252;
    while v.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(
            format!("INSERT INTO lab_results VALUES ({x}, 'CANARY-ZXQ-PATIENT');\n").as_bytes(),
        );
    }
    std::fs::write(&f, v).unwrap();
    f
}

#[test]
fn full_restore_target_gives_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = write_config(d, &d.join("state"), None);
    let f = dump(d);
    let (code, out) = run(&config, &["backup", "--source", "emr", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let small = Tmpfs::new(&d.join("target"), 512);
    let to = small.0.join("emr.sql");
    let (code, out) = run(
        &config,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "full disk test",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("No space left on device") && out.contains("Nothing was left at the target"),
        "{out}"
    );
    let left: Vec<_> = std::fs::read_dir(&small.0).unwrap().collect();
    assert!(left.is_empty(), "leftovers in the full target: {left:?}");
    // The snapshot itself is untouched: it restores elsewhere, byte-identical.
    let ok = d.join("elsewhere.sql");
    let (code, out) = run(
        &config,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            ok.to_str().unwrap(),
            "--purpose",
            "after full disk",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(&ok).unwrap(), std::fs::read(&f).unwrap());
    matrix::record("full disk: restore target", 1, 1, 0);
}

#[test]
fn full_access_log_refuses_the_access() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let logfs = Tmpfs::new(&d.join("auditfs"), 64);
    let config = write_config(d, &d.join("state"), Some(&logfs.0.join("access.log")));
    let f = dump(d);
    let (code, out) = run(&config, &["backup", "--source", "emr", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    logfs.fill();
    let to = d.join("restored.sql");
    let (code, out) = run(
        &config,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "should be refused",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("access log") && out.contains("refused"),
        "{out}"
    );
    assert!(!to.exists(), "no plaintext without an access-log entry");
    matrix::record("full disk: access log (access refused)", 1, 1, 0);
}

#[test]
fn full_state_folder_fails_the_backup_cleanly_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let statefs = Tmpfs::new(&d.join("statefs"), 1024);
    let config = write_config(d, &statefs.0.join("state"), None);
    let f = dump(d);
    let (code, out) = run(&config, &["backup", "--source", "emr", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    statefs.fill();
    std::fs::write(
        d.join("in/second.sql"),
        "INSERT INTO patients VALUES (2);\n".repeat(10_000),
    )
    .unwrap();
    let (code, out) = run(
        &config,
        &[
            "backup",
            "--source",
            "emr",
            d.join("in/second.sql").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_lowercase().contains("full") || out.contains("No space left"),
        "{out}"
    );
    // The first snapshot is still committed and restores byte-identical from each store.
    for store in ["a", "b"] {
        let to = d.join(format!("r-{store}.sql"));
        // Restores need an access-log entry, and the state folder is full: free it first.
        let _ = std::fs::remove_file(statefs.0.join(".fill"));
        let (code, out) = run(
            &config,
            &[
                "restore",
                "latest",
                "--source",
                "emr",
                "--store",
                store,
                "--to",
                to.to_str().unwrap(),
                "--purpose",
                "after full state",
            ],
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&f).unwrap());
    }
    matrix::record("full disk: state folder", 1, 1, 0);
}
