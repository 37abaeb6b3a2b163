//! End to end (issue 30): several hosts on one S3 bucket (s3s-fs) and one Azure container
//! (Azurite), the real `coffre` binary, each host its own state folder, master key and process,
//! one of them a daemon. The same source name on every host; each restores only its own; a new
//! machine recovers a lost host by name; a host id claimed by another installation is refused;
//! a shred on one host leaves the others' bytes untouched.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::coffre::{azure_store, emr_sql, s3_store, CoffreEnv};
use common::{Azurite, S3Server};

/// One host: its env (state, master key, incoming folder) with `host = "<id>"` in its config.
fn host(id: &str, s3: &S3Server, az: &Azurite) -> CoffreEnv {
    let stores = format!(
        "{}{}",
        s3_store("s3", "mtl", s3),
        azure_store("az", "qc", az)
    );
    let env = CoffreEnv::new(&stores).with_s3(s3).with_azure(az);
    set_host(&env, id, &env.state.clone());
    env
}

/// Rewrite `env`'s config as host `id` with state folder `state`.
fn set_host(env: &CoffreEnv, id: &str, state: &Path) {
    env.write_config(&format!("host = \"{id}\"\n{}", env.config_text(state)));
}

/// A dump of `id` (its own bytes) in its incoming folder.
fn dump(env: &CoffreEnv, id: &str) -> (PathBuf, Vec<u8>) {
    let mut data = emr_sql(300 * 1024);
    data.extend_from_slice(format!("-- host {id}\n").as_bytes());
    let p = env.incoming.join("emr.sql");
    fs::write(&p, &data).unwrap();
    (p, data)
}

/// Every file beneath `dir` with its bytes.
fn bytes_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::coffre::files_under(dir)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn snapshot_ids(env: &CoffreEnv) -> Vec<String> {
    let r = env.run(&["snapshots", "--json"]);
    r.expect_ok();
    r.json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array\n{r}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn restored(env: &CoffreEnv, snap: &str, store: &str) -> Vec<u8> {
    let to = env.out.join(format!("{snap}-{store}.sql"));
    let _ = fs::remove_file(&to);
    env.restore(snap, &to, Some(store)).expect_ok();
    fs::read(&to).unwrap()
}

#[test]
fn hosts_share_stores_without_meeting_and_a_lost_host_is_recovered_by_name() {
    let az = std::thread::spawn(Azurite::start);
    let s3 = S3Server::start();
    let az = az.join().expect("Azurite failed to start");
    let envs: Vec<CoffreEnv> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| host(h, &s3, &az))
        .collect();

    // h1 runs a daemon that protects what lands; h2 and h3 back up with the CLI.
    let (_, d1) = dump(&envs[0], "h1");
    let daemon = envs[0].daemon();
    common::daemon::wait_until("h1's daemon protected its dump", 60, || {
        snapshot_ids(&envs[0]).len() == 1
    });
    let mut ids = vec![snapshot_ids(&envs[0])[0].clone()];
    let mut data = vec![d1];
    for (i, h) in [(1, "h2"), (2, "h3")] {
        let (p, d) = dump(&envs[i], h);
        ids.push(envs[i].backup(&p));
        data.push(d);
    }
    // Each host lists and restores its own snapshot only, from either store.
    for i in 0..3 {
        assert_eq!(snapshot_ids(&envs[i]), [ids[i].clone()], "host {i}");
        for store in ["s3", "az"] {
            assert_eq!(
                restored(&envs[i], &ids[i], store),
                data[i],
                "host {i}, {store}"
            );
        }
        let r = envs[i].restore(&ids[(i + 1) % 3], &envs[i].out.join("other"), None);
        r.expect_failure();
    }
    // The first host owns the root; the others their own folders, each with its claim.
    let root = s3.root().join("coffre");
    assert!(root.join("root-owner.json").is_file());
    assert!(root.join(format!("snapshots/emr/{}", ids[0])).is_dir());
    for (i, h) in [(1, "h2"), (2, "h3")] {
        assert!(root.join(format!("hosts/{h}/claim.json")).is_file());
        assert!(root
            .join(format!("hosts/{h}/snapshots/emr/{}", ids[i]))
            .is_dir());
        assert!(root.join(format!("hosts/{h}/keyring/local")).is_dir());
    }
    drop(daemon);

    // A new machine takes h2's id with an empty state folder: reading is fine, writing is
    // refused until it says it replaces h2.
    let fresh = envs[1].out.join("new-machine-state");
    set_host(&envs[1], "h2", &fresh);
    envs[1].run(&["catalog", "rebuild"]).expect_ok();
    assert_eq!(snapshot_ids(&envs[1]), [ids[1].clone()]);
    let (p, _) = dump(&envs[1], "h2-again");
    let r = envs[1].run(&["backup", "--source", "emr", p.to_str().unwrap()]);
    r.expect_failure();
    assert!(
        r.stderr.contains("already claimed") && r.stderr.contains("catalog rebuild --host h2"),
        "{r}"
    );
    let r = envs[1].run(&["catalog", "rebuild", "--host", "h3"]);
    r.expect_failure();
    assert!(r.stderr.contains("this config is host `h2`"), "{r}");
    // A hostile --host: a newline, a quote, a path, 64 KiB; refused, shown escaped and cut.
    let long = "x".repeat(64 * 1024);
    for bad in ["h2\nforged line", "h2\"; rm -rf /", "../h1", long.as_str()] {
        let r = envs[1].run(&["catalog", "rebuild", "--host", bad]);
        r.expect_failure();
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            line.contains("this config is host `h2`") && line.len() < 1024,
            "{r}"
        );
        assert!(!r.stderr.contains("forged line\n"), "{r}");
    }
    envs[1]
        .run(&["catalog", "rebuild", "--host", "h2"])
        .expect_ok();
    assert_eq!(restored(&envs[1], &ids[1], "az"), data[1]);
    let log = envs[1].run(&["audit", "show", "--action", "host-take-over", "--json"]);
    log.expect_ok();
    assert!(
        log.stdout.contains("ok: claim taken over in 2 store(s)"),
        "{log}"
    );
    let second = envs[1].backup(&p);
    assert!(root
        .join(format!("hosts/h2/snapshots/emr/{second}"))
        .is_dir());

    // A second machine configured as h1 by mistake (with h1's master key, so that it opens):
    // refused at its first write, nothing written.
    let impostor = host("h1", &s3, &az);
    fs::create_dir_all(impostor.master_key.parent().unwrap()).unwrap();
    fs::copy(&envs[0].master_key, &impostor.master_key).unwrap();
    let (p, _) = dump(&impostor, "impostor");
    let before = bytes_under(&root);
    let r = impostor.run(&["backup", "--source", "emr", p.to_str().unwrap()]);
    r.expect_failure();
    assert!(r.stderr.contains("host id `h1` is already claimed"), "{r}");
    assert_eq!(bytes_under(&root), before);

    // h1 shreds its snapshot: every byte of h2's and h3's namespaces stays, and they restore.
    let others: Vec<_> = ["h2", "h3"]
        .iter()
        .map(|h| bytes_under(&root.join("hosts").join(h)))
        .collect();
    envs[0]
        .run(&[
            "shred",
            "--snapshot",
            &ids[0],
            "--purpose",
            "erasure order",
            "--yes",
        ])
        .expect_ok();
    // (s3s-fs keeps empty folders: no object is left in it.)
    assert!(bytes_under(&root.join(format!("snapshots/emr/{}", ids[0]))).is_empty());
    for (k, h) in ["h2", "h3"].iter().enumerate() {
        assert_eq!(bytes_under(&root.join("hosts").join(h)), others[k], "{h}");
    }
    assert_eq!(restored(&envs[2], &ids[2], "s3"), data[2]);
    assert_eq!(restored(&envs[1], &ids[1], "s3"), data[1]);
}
