//! What an operator meets (issue 28, items 30 to 35), each through the real binary: an unknown
//! source is an error naming the configured ones, `backup --json` names its snapshot, a drill
//! without a verify command says it is unverified, `retention plan` never says "destroyed" of
//! what the guards keep, and a refused WAL push is logged once an hour, not once per retry.

use crate::common::coffre::{local_stores, CoffreEnv};
use crate::common::daemon::http_body as http_get;
use crate::common::free_port;

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
            e.contains("source `emrr` is not configured")
                && e.contains("the configured sources are `emr`"),
            "{args:?}: {r}"
        );
        assert!(
            r.stdout.trim().is_empty(),
            "{args:?} printed a listing: {r}"
        );
    }
    // A configured source without snapshots is an empty listing, not an error.
    env.run(&["snapshots", "--source", "emr", "--json"])
        .expect_ok();
}

#[test]
fn backup_json_names_its_snapshot_at_the_top() {
    let env = env();
    let file = dump(&env, "emr-1.sql");
    let r = env.run(&[
        "backup",
        "--source",
        "emr",
        file.to_str().unwrap(),
        "--json",
    ]);
    r.expect_ok();
    let j = r.json();
    let id = j["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot field: {r}"));
    assert_eq!(id.len(), 26, "{r}");
    // The fields it had stay.
    assert_eq!(j["manifest"]["snapshot"].as_str(), Some(id), "{r}");
    for field in [
        "committed",
        "failed",
        "protection",
        "epoch",
        "planned_expiry",
    ] {
        assert!(j.get(field).is_some(), "no {field}: {r}");
    }
    let listed = env.run(&["snapshots", "--json"]);
    assert_eq!(listed.json()[0]["id"].as_str(), Some(id), "{listed}");
}

/// Item 32: a drill without a verify command is `verified: false` in its JSON report, in
/// `/status` and in `coffre_drill_verified`; with one that passes, true and 1.
#[test]
fn an_unverified_drill_says_so_in_the_report_the_status_and_a_gauge() {
    let port = free_port();
    let status = format!("[status]\nlisten = \"127.0.0.1:{port}\"\n");
    let env = env_with(&status, "[source.drill]\nevery = \"30d\"\n");
    env.backup(&dump(&env, "emr-1.sql"));
    let check = |verified: bool| {
        let r = env.run(&["drill", "--source", "emr", "--store", "site-a", "--json"]);
        r.expect_ok();
        assert_eq!(r.json()[0]["verified"], verified, "{r}");
        let _d = env.spawn_daemon().wait_answering(port, 60);
        let doc: serde_json::Value =
            serde_json::from_str(&http_get(port, "/status").unwrap()).unwrap();
        let drill = &doc["drills"][0];
        assert_eq!(drill["verified"], verified, "{doc}");
        assert_eq!(drill["last_success"]["verified"], verified, "{doc}");
        let metrics = http_get(port, "/metrics").unwrap();
        let line = format!(
            "coffre_drill_verified{{source=\"emr\",store=\"site-a\"}} {}",
            u8::from(verified)
        );
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    };
    check(false);
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "[source.drill]\n",
        "[source.drill]\nverify-command = \"test -s {file}\"\n",
    );
    env.write_config(&text);
    check(true);
}

/// Item 33: `retention plan` says "kept (reason)", never "destroyed at", of a snapshot a guard
/// will keep when its epoch comes (newest of its source, keep-last, a legal hold), in text and
/// JSON; the others are "destroyed at".
#[test]
fn retention_plan_says_kept_for_what_the_guards_keep() {
    let env = env_with(
        "",
        "[source.retention]\nkeep-within = \"1d\"\nkeep-last = 2\n",
    );
    let ids: Vec<String> = (0..4)
        .map(|i| env.backup(&dump(&env, &format!("emr-{i}.sql"))))
        .collect();
    env.run(&["hold", "add", &ids[0], "--purpose", "case 12"])
        .expect_ok();
    let plan = env.run(&["retention", "plan"]);
    plan.expect_ok();
    let line = |id: &str| -> String {
        plan.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    // Newest (kept as the newest and by keep-last 2), the second newest by keep-last.
    for id in &ids[2..] {
        let l = line(id);
        assert!(
            l.contains("kept (") && !l.contains("destroyed"),
            "{l}\n{plan}"
        );
    }
    assert!(
        line(&ids[3]).contains("kept (newest snapshot of its source)"),
        "{plan}"
    );
    assert!(line(&ids[2]).contains("kept (keep-last 2)"), "{plan}");
    // The third newest is destroyed when its epoch comes.
    assert!(line(&ids[1]).contains("destroyed at"), "{plan}");
    // The held one is never said to be destroyed.
    assert!(!line(&ids[0]).contains("destroyed"), "{plan}");
    let j = env.run(&["retention", "plan", "--json"]).json();
    let kept = |id: &str| {
        j["upcoming"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["snapshot"] == id)
            .map(|u| u["kept"].clone())
    };
    assert_eq!(kept(&ids[2]), Some(serde_json::json!("keep-last 2")), "{j}");
    assert_eq!(kept(&ids[1]), Some(serde_json::Value::Null), "{j}");
}

/// A WAL-like file of 1 MiB named `name` (its page header says so), its bytes from `seed`.
fn wal_file(env: &CoffreEnv, name: &str, seed: u8) -> std::path::PathBuf {
    let mut wal = vec![0u8; 1 << 20];
    for (i, b) in wal.iter_mut().enumerate().skip(64) {
        *b = (i * 7 % 251) as u8 ^ seed;
    }
    crate::common::coffre::stamp_wal_header(&mut wal, name);
    let dir = env.dir.path().join(format!("pg_wal-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, wal).unwrap();
    p
}

/// Item 35: PostgreSQL retries a refused push about once a minute; a push refused because the
/// name is archived with other bytes opens the archived copy (one `wal-push-compare` entry)
/// once per name and bytes per hour, not once per retry.
#[test]
fn a_refused_wal_push_is_logged_once_an_hour_not_once_per_retry() {
    let port = free_port();
    let status = format!("[status]\nlisten = \"127.0.0.1:{port}\"\n");
    let env = env_with(&status, "[source.pitr]\nwindow = \"7d\"\n");
    env.run(&["keys", "init"]).expect_ok();
    let _d = env.spawn_daemon().wait_answering(port, 60);
    let name = "000000010000000000000003";
    let push = |seed: u8| {
        let p = wal_file(&env, name, seed);
        env.run(&["wal-push", "--source", "emr", p.to_str().unwrap()])
    };
    push(1).expect_ok();
    let compares = || {
        let r = env.run(&["audit", "show", "--action", "wal-push-compare", "--json"]);
        r.expect_ok();
        r.json().as_array().map(Vec::len).unwrap_or(0)
    };
    for _ in 0..4 {
        let r = push(2);
        r.expect_code(1);
        assert!(r.error_text().contains("DIFFERENT bytes"), "{r}");
    }
    assert_eq!(
        compares(),
        1,
        "one comparison logged for four refused retries"
    );
    // Other bytes again: compared (and logged) once more; the archived bytes still succeed.
    push(3).expect_code(1);
    assert_eq!(compares(), 2);
    push(1).expect_ok();
}
