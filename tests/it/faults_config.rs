//! Fault matrix row 11: bad configurations are refused with the key path and what to do.

use crate::common::coffre::local_store;
use crate::matrix;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn base(d: &Path) -> String {
    let dd = d.display();
    format!(
        r#"state-dir = "{dd}/state"
[[source]]
name = "emr"
path = "{dd}/in"
{store_a}[[store]]
name = "b"
kind = "s3"
site = "qc"
jurisdiction = "CA-QC"
bucket = "coffre"
endpoint = "https://s3.qc.example"
[[key-provider]]
name = "local"
kind = "file"
master-key = "{dd}/keys/master.key"
"#,
        store_a = local_store("a", "mtl", &d.join("stores/a")),
    )
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = base(d);
    assert!(coffre::Config::from_toml(&good, Path::new("c.toml")).is_ok());
    std::fs::create_dir_all(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/master.key"), "00".repeat(32)).unwrap();
    std::fs::set_permissions(
        d.join("keys/master.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "plaintext http store",
            good.replace("https://s3.qc.example", "http://s3.qc.example"),
            "store[1].endpoint",
        ),
        (
            "TLS verification off",
            good.replace(
                "bucket = \"coffre\"",
                "bucket = \"coffre\"\ntls-verify = false",
            ),
            "store[1].tls-verify",
        ),
        (
            "one site only",
            good.replace("site = \"qc\"", "site = \"mtl\""),
            "replication.min-sites",
        ),
        (
            "jurisdiction outside the allow-list",
            good.replace(
                "jurisdiction = \"CA-QC\"\nbucket",
                "jurisdiction = \"US-VA\"\nbucket",
            ),
            "store[1].jurisdiction",
        ),
        ("world-readable key file", good.clone(), "chmod 600"),
        (
            "keyring inside a data store",
            good.replace(
                "kind = \"file\"\n",
                &format!(
                    "kind = \"file\"\nkeyring = \"{}/stores/a/keyring\"\n",
                    d.display()
                ),
            ),
            "key-provider[0].keyring",
        ),
        (
            "unknown key",
            good.replace("[[source]]", "colour = \"blue\"\n[[source]]"),
            "unknown field `colour`",
        ),
        (
            "wrong type",
            good.replace("name = \"emr\"", "name = 12"),
            "invalid type",
        ),
    ];
    let mut refused = 0;
    for (what, text, expect) in &cases {
        match coffre::Config::from_toml(text, Path::new("c.toml")) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(expect),
                    "{what}: expected `{expect}` in: {msg}"
                );
                refused += 1;
            }
        }
    }
    matrix::record("bad configs (http, TLS off, one site, jurisdiction, key mode, keyring in store, unknown keys, types)", cases.len() as u64, refused, 0);
}

/// Issue 11, point 9: a secret file of another user, a store folder reached through a symlink
/// inside the state folder or holding the access log, and retention periods past 100 years are
/// refused, naming the key.
#[test]
fn owner_symlinked_folders_and_unbounded_retention_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = base(d);
    std::fs::create_dir_all(d.join("state")).unwrap();
    std::fs::create_dir_all(d.join("keys")).unwrap();
    std::os::unix::fs::symlink(d.join("state"), d.join("alias")).unwrap();
    let key = d.join("keys/master.key");
    std::fs::write(&key, "00".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(coffre::Config::from_toml(&good, Path::new("c.toml")).is_ok());
    let mut cases: Vec<(&str, String, &str)> = vec![
        (
            "store inside state-dir through a symlink",
            good.replace(
                &format!("{}/stores/a", d.display()),
                &format!("{}/alias/store-a", d.display()),
            ),
            "is inside state-dir",
        ),
        (
            "access log inside a store",
            format!(
                "{good}[audit]\npath = \"{}/stores/a/access.log\"\n",
                d.display()
            ),
            "contains audit.path",
        ),
        (
            "keep-within of two centuries",
            good.replacen(
                "path = \"",
                "retention = { keep-within = \"200years\" }\npath = \"",
                1,
            ),
            "source[0].retention.keep-within",
        ),
        (
            "keep-yearly past the calendar",
            good.replacen(
                "path = \"",
                "retention = { keep-yearly = 4000000000 }\npath = \"",
                1,
            ),
            "source[0].retention.keep-yearly",
        ),
    ];
    if nix::unistd::geteuid().is_root() {
        let foreign = d.join("keys/foreign.key");
        std::fs::write(&foreign, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).unwrap();
        nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        cases.push((
            "master key of another user",
            good.replace("keys/master.key", "keys/foreign.key"),
            "belongs to uid 65534",
        ));
    }
    for (what, text, expect) in &cases {
        match coffre::Config::from_toml(text, Path::new("c.toml")) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(expect),
                    "{what}: expected `{expect}` in: {msg}"
                );
            }
        }
    }
}

/// Issue 27, N12: `[source.pitr] window = "100000000years"` once passed check-config, then
/// `retention plan` and `wal-push` panicked on the time arithmetic. Every duration is bounded
/// now: each command refuses the config, naming the key and the range, and none panics.
#[test]
fn a_recovery_window_past_the_calendar_is_refused_by_every_command_and_panics_none() {
    use crate::common::coffre::{local_stores, CoffreEnv};
    let env = CoffreEnv::new("");
    let text = env.config_text(&env.state).replace(
        "[[key-provider]]",
        "[source.pitr]\nwindow = \"100000000years\"\n[[key-provider]]",
    );
    let stores = local_stores(env.dir.path(), &[("a", "a"), ("b", "b")]);
    env.write_config(&format!("{text}\n{stores}"));
    let seg = env.dir.path().join("00000001000000000000000A");
    std::fs::write(&seg, vec![0u8; 1 << 20]).unwrap();
    for args in [
        vec!["check-config"],
        vec!["retention", "plan"],
        vec!["wal-push", "--source", "emr", seg.to_str().unwrap()],
    ] {
        let r = env.run(&args);
        assert_eq!(
            r.code,
            Some(1),
            "{args:?} must refuse the config, not panic\n{r}"
        );
        let said = r.all();
        assert!(
            said.contains("source[0].pitr.window")
                && said.contains("is more than 100 years: use 1 hour to 100 years"),
            "{args:?}\n{said}"
        );
        assert!(!said.contains("panicked"), "{args:?}\n{said}");
    }
}
