//! What an operator meets (issue 28, items 30 to 35), each through the real binary: an unknown
//! source is an error naming the configured ones, `backup --json` names its snapshot, a drill
//! without a verify command says it is unverified, `retention plan` never says "destroyed" of
//! what the guards keep, and a refused WAL push is logged once an hour, not once per retry.

use crate::common::coffre::{local_stores, CoffreEnv};

/// Source `emr` on two local stores (two sites), with `source` in the `emr` source's table and
/// `tables` at the end of the config.
fn env_with(tables: &str, source: &str) -> CoffreEnv {
    let env = CoffreEnv::new("");
    let text = env
        .config_text(&env.state)
        .replace("[[key-provider]]", &format!("{source}\n[[key-provider]]"));
    let stores = local_stores(env.dir.path(), &[("site-a", "a"), ("site-b", "b")]);
    env.write_config(&format!("{text}{stores}\n{tables}"));
    env
}

fn env() -> CoffreEnv {
    env_with("", "")
}

/// A small dump in the source's folder.
fn dump(env: &CoffreEnv, name: &str) -> std::path::PathBuf {
    let p = env.incoming.join(name);
    std::fs::write(&p, crate::common::coffre::emr_sql(64 << 10)).unwrap();
    p
}

#[test]
fn an_unknown_source_is_an_error_naming_the_configured_ones() {
    let env = env();
    env.run(&["keys", "init"]).expect_ok();
    let file = dump(&env, "emr-1.sql");
    let f = file.to_str().unwrap();
    let to = env.dir.path().join("wal-out");
    for args in [
        vec!["snapshots", "--source", "emrr"],
        vec!["snapshots", "--source", "emrr", "--json"],
        vec!["drill", "--source", "emrr"],
        vec!["backup", "--source", "emrr", f],
        vec!["wal-push", "--source", "emrr", f],
        vec![
            "wal-fetch",
            "--source",
            "emrr",
            "000000010000000000000001",
            to.to_str().unwrap(),
        ],
    ] {
        let r = env.run(&args);
        r.expect_code(2);
        let e = r.error_text();
        assert!(
            e.contains("unknown source `emrr`") && e.contains("`emr`"),
            "{args:?}: {r}"
        );
        assert!(r.stdout.trim().is_empty(), "{args:?} printed a listing: {r}");
    }
    // A configured source without snapshots is an empty listing, not an error.
    env.run(&["snapshots", "--source", "emr", "--json"]).expect_ok();
}

#[test]
fn backup_json_names_its_snapshot_at_the_top() {
    let env = env();
    let file = dump(&env, "emr-1.sql");
    let r = env.run(&["backup", "--source", "emr", file.to_str().unwrap(), "--json"]);
    r.expect_ok();
    let j = r.json();
    let id = j["snapshot"].as_str().unwrap_or_else(|| panic!("no snapshot field: {r}"));
    assert_eq!(id.len(), 26, "{r}");
    // The fields it had stay.
    assert_eq!(j["manifest"]["snapshot"].as_str(), Some(id), "{r}");
    for field in ["committed", "failed", "protection", "epoch", "planned_expiry"] {
        assert!(j.get(field).is_some(), "no {field}: {r}");
    }
    let listed = env.run(&["snapshots", "--json"]);
    assert_eq!(listed.json()[0]["id"].as_str(), Some(id), "{listed}");
}
