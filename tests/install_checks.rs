//! The install path as the README writes it (issue 13, part 3): `keys init --to` for a master key
//! that is a systemd credential, `check-config` checking this host (files, credentials, source
//! folders) unless `--portable`, and commands that create no state where they should not.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::coffre::CoffreEnv;

/// Two local stores under the environment's folder.
fn stores(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"
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
"#
    )
}

fn local_env() -> CoffreEnv {
    let env = CoffreEnv::new("");
    env.write_config(&format!(
        "{}{}",
        env.config_text(&env.state),
        stores(env.dir.path())
    ));
    env
}

/// `--config` text with the file provider's master key as a systemd credential.
fn credential_config(env: &CoffreEnv, credential: &str) -> String {
    env.config_text(&env.state)
        .replace(
            &format!("master-key = \"{}\"\n", env.master_key.display()),
            &format!("master-key-credential = \"{credential}\"\n"),
        )
        .replace("create-master-key = true\n", "")
        + &stores(env.dir.path())
}

#[test]
fn keys_init_to_writes_one_new_master_key_and_never_overwrites() {
    let env = local_env();
    let creds = env.dir.path().join("credentials");
    let to = creds.join("master.key");
    let to_s = to.to_str().unwrap();

    let r = env.run(&["keys", "init", "--to", to_s]);
    r.expect_code(1);
    assert!(
        r.error_text().contains("does not exist: create it first"),
        "{r}"
    );

    fs::create_dir(&creds).unwrap();
    let r = env.run(&["keys", "init", "--to", to_s]);
    r.expect_ok();
    assert!(r.stdout.contains("created master key"), "{r}");
    let meta = fs::metadata(&to).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = fs::read_to_string(&to).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().chars().all(|c| c.is_ascii_hexdigit()));
    // The key is never printed.
    assert!(!r.all().contains(key.trim()));

    let r = env.run(&["keys", "init", "--to", to_s]);
    r.expect_code(1);
    assert!(r.error_text().contains("already exists"), "{r}");
    assert!(r.error_text().contains("never overwrites"), "{r}");
    assert_eq!(fs::read_to_string(&to).unwrap(), key);

    // No config was needed and no state was created.
    assert!(!env.state.exists());
    assert!(!env.master_key.exists());
    assert!(!env.dir.path().join("stores").exists());
}

#[test]
fn keys_init_under_a_credential_config_says_to_use_keys_init_to() {
    let env = local_env();
    env.write_config(&credential_config(&env, "coffre_master-e2e-absent.key"));
    let r = env.run(&["keys", "init"]);
    r.expect_code(1);
    let e = r.error_text();
    assert!(
        e.contains("coffre keys init --to /etc/coffre/credentials/master-e2e-absent.key"),
        "{r}"
    );
    assert!(e.contains("key-provider local"), "{r}");
    assert!(!env.state.exists(), "{r}");

    env.write_config(&credential_config(&env, "master.key"));
    let r = env.run(&["keys", "init"]);
    r.expect_code(1);
    assert!(
        r.error_text()
            .contains("is not a credential the coffre unit loads"),
        "{r}"
    );
    assert!(r.error_text().contains("coffre_master.key"), "{r}");
}
