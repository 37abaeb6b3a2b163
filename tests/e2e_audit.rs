//! The access log, end to end: real accesses through the binary, `coffre audit verify` on the
//! real log, then on each kind of tampering, locally and in a store's sealed copy.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env::with("")
    }

    /// With extra top-level TOML (before the tables).
    fn with(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("in")).unwrap();
        std::fs::write(
            dir.path().join("coffre.toml"),
            format!(
                r#"state-dir = "{d}/state"
{extra}
[[source]]
name = "emr"
path = "{d}/in"
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
name = "local"
kind = "file"
master-key = "{d}/keys/master.key"
create-master-key = true
"#
            ),
        )
        .unwrap();
        Env { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.p("coffre.toml"))
            .args(args)
            .env("COFFRE_LOG", "error")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

#[test]
fn audit_verify_catches_every_kind_of_tampering_locally_and_in_store_copies() {
    let env = Env::new();
    std::fs::write(
        env.p("in/emr.sql"),
        "INSERT INTO patients VALUES ('CANARY-ZXQ-PATIENT');\n".repeat(500),
    )
    .unwrap();
    let (code, out) = env.run(&[
        "backup",
        "--source",
        "emr",
        env.p("in/emr.sql").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    for i in 0..3 {
        let to = env.p(&format!("r{i}.sql"));
        let (code, out) = env.run(&[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            &format!("chart review {i}"),
        ]);
        assert_eq!(code, 0, "{out}");
    }
    // The real log verifies, locally and against both stores' sealed copies.
    let (code, out) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain intact") && out.contains("store copies agree"),
        "{out}"
    );
    // The sealed copies are there and hold no plaintext of the log.
    let segs: Vec<_> = coffre::pipeline::source::walk(&env.p("stores/a/coffre/audit")).unwrap();
    assert!(
        segs.iter()
            .any(|p| p.to_string_lossy().ends_with(".sealed")),
        "{segs:?}"
    );
    for p in &segs {
        let f = env.p("stores/a/coffre/audit").join(p);
        if f.is_file() {
            let b = std::fs::read(&f).unwrap();
            assert!(
                !b.windows(12).any(|w| w == b"chart review"),
                "plaintext log in {}",
                f.display()
            );
        }
    }

    let log = env.p("state/audit/access.log");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 8, "{original}");
    let check = |name: &str, tampered: Vec<String>, expect: &str| {
        std::fs::write(&log, tampered.join("\n") + "\n").unwrap();
        let (code, out) = env.run(&["audit", "verify"]);
        assert_ne!(code, 0, "{name}: tampering not detected");
        assert!(
            out.contains(expect),
            "{name}: expected `{expect}` in: {out}"
        );
        std::fs::write(&log, &original).unwrap();
    };
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut v = own(&lines);
    v[3] = v[3].replace("chart review", "chart reviev");
    check("edited", v, "line 5");
    let mut v = own(&lines);
    v.remove(2);
    check("deleted", v, "line 3");
    let mut v = own(&lines);
    v.swap(2, 3);
    check("swapped", v, "line 3");
    let mut v = own(&lines);
    v.insert(2, lines[1].to_string());
    check("inserted", v, "line 3");
    // The head cut off (no pruning record covers it).
    check("head deleted", own(&lines[2..]), "no pruning record");
    // A truncated tail (whole entries removed) leaves a valid chain: the store copies catch it.
    let v = own(&lines[..lines.len() - 2]);
    check("truncated tail", v, "truncated");
    // The store copy disagrees with the local log: a sealed segment was altered.
    let (code, out) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "restored log verifies again: {out}");
    let seg = segs
        .iter()
        .map(|p| env.p("stores/b/coffre/audit").join(p))
        .find(|p| p.to_string_lossy().ends_with(".sealed"))
        .unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len() - 20;
    b[n] ^= 1;
    std::fs::write(&seg, b).unwrap();
    let (code, out) = env.run(&["audit", "verify"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("site-b") && out.contains("does not open"),
        "{out}"
    );

    // `audit show` filters, and holds no personal data.
    let (code, out) = env.run(&["audit", "show", "--json", "--action", "restore"]);
    assert_eq!(code, 0);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(entries.len(), 6, "restore started + outcome, three times");
    assert!(entries.iter().all(|e| e["exposes"]
        .as_str()
        .is_some_and(|x| x.contains("every patient"))));
    assert!(!out.contains("CANARY"));
}

#[test]
fn audit_expire_prunes_the_local_log_and_keeps_it_verifiable() {
    // A 1-second retention so that the real clock gets past it; the segments' epoch (the day
    // the retention of today's entries ends) is today, so they stay until the day is over
    // (the destruction of due epochs is covered in tests/audit_retention.rs with a set clock).
    let env = Env::with("[audit]\nretention = \"1s\"");
    std::fs::write(env.p("in/emr.sql"), "SELECT 1;\n".repeat(100)).unwrap();
    let (code, out) = env.run(&[
        "backup",
        "--source",
        "emr",
        env.p("in/emr.sql").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let to = env.p("r.sql");
    let (code, out) = env.run(&[
        "restore",
        "latest",
        "--source",
        "emr",
        "--to",
        to.to_str().unwrap(),
        "--purpose",
        "drill prep",
    ]);
    assert_eq!(code, 0, "{out}");
    let before = std::fs::read_to_string(env.p("state/audit/access.log")).unwrap();
    let n = before.lines().count() as u64;
    assert!(n >= 2, "{before}");
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let (code, out) = env.run(&["audit", "expire", "--json"]);
    assert_eq!(code, 0, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["local"]["first"], 1, "{r}");
    assert_eq!(r["local"]["through"], n, "{r}");
    assert_eq!(r["epochs"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["upcoming"].as_array().map(Vec::len), Some(1), "{r}");

    let after = std::fs::read_to_string(env.p("state/audit/access.log")).unwrap();
    let first: serde_json::Value = serde_json::from_str(after.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], n + 1);
    assert_eq!(first["action"], "audit-expire");
    assert!(
        !after.contains("drill prep"),
        "the expired entries are gone: {after}"
    );
    let (code, out) = env.run(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain intact") && out.contains("store copies agree"),
        "{out}"
    );
    // Later accesses continue the chain; cutting the pruning record off the head is caught.
    let (code, out) = env.run(&[
        "restore",
        "latest",
        "--source",
        "emr",
        "--to",
        env.p("r2.sql").to_str().unwrap(),
        "--purpose",
        "second look",
    ]);
    assert_eq!(code, 0, "{out}");
    let log = env.p("state/audit/access.log");
    let now = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = now.lines().collect();
    assert!(kept.len() >= 3, "{now}");
    std::fs::write(&log, kept[1..].join("\n") + "\n").unwrap();
    let (code, out) = env.run(&["audit", "verify"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("no pruning record"), "{out}");
}
