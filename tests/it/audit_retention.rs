//! The access log's own retention (library API, injected clock, two local stores, the file key
//! provider): entries older than `audit.retention` leave the local log with the chain still
//! verifiable; once a sealed segment's epoch has ended its key is destroyed, every copy is
//! deleted and a destruction record written; bytes someone kept no longer open.

use crate::common::config::ConfigBuilder;

use std::path::Path;

use coffre::{Coffre, Config};

fn config(dir: &Path) -> Config {
    ConfigBuilder::new(dir)
        .clock_jumps_allowed()
        .audit("retention = \"30d\"")
        .emr()
        .local_stores(&[("a", "a"), ("b", "b")])
        .file_keys()
        .config()
}

fn access(what: &str) -> coffre::audit::NewEntry {
    coffre::audit::NewEntry {
        actor: "tester".into(),
        action: what.into(),
        target: coffre::audit::Target {
            snapshot: Some("01JTEST".into()),
            ..Default::default()
        },
        purpose: "audit retention test".into(),
        outcome: "ok".into(),
        exposes: None,
    }
}

/// Every file under the stores' `audit/` folders: (path, bytes).
fn audit_objects(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("stores")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.components().any(|c| c.as_os_str() == "audit") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_destroyed_with_its_copies_when_its_retention_ends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    for what in ["restore", "drill", "unwrap"] {
        app.audit().append(access(what)).unwrap();
    }
    let written = coffre::ops::audit_replicate::replicate(&app).await.unwrap();
    assert_eq!(written.values().copied().collect::<Vec<_>>(), [3, 3]);
    let sealed_before = audit_objects(dir.path());
    assert_eq!(
        sealed_before.len(),
        4,
        "a segment and its key object per store"
    );
    let last_time = time::OffsetDateTime::parse(
        &app.audit().entries().unwrap()[2].time,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    // Today: nothing is older than 30 days; the segments' epoch ends in 30 days.
    let now = time::OffsetDateTime::now_utc();
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, now, "test")
        .await
        .unwrap();
    assert!(r.local.is_none() && r.epochs.is_empty() && r.errors.is_empty());
    assert_eq!(r.upcoming.len(), 1, "{r:?}");

    // Just past 30 days after the last entry: the local entries go (a pruning record stays
    // and the chain verifies), but the segments' epoch day is not over yet.
    let later = last_time + time::Duration::days(30) + time::Duration::seconds(1);
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, later, "test")
        .await
        .unwrap();
    let pruned = r.local.clone().expect("entries 1-3 pruned");
    assert_eq!((pruned.first, pruned.through), (1, 3));
    assert!(r.epochs.is_empty(), "{r:?}");
    let left = app.audit().entries().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 4);
    assert_eq!(left[0].action, "audit-expire");
    assert_eq!(app.audit().verify().unwrap(), 1);
    // The stores still hold entries 1-3 (their epoch runs to the end of its day); the check
    // of the copies does not call that a disagreement.
    assert_eq!(audit_objects(dir.path()), sealed_before);
    let findings = coffre::ops::audit_replicate::verify_stores_at(&app, later)
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    // The pruning record replicates after them, continuing each store's copy.
    coffre::ops::audit_replicate::replicate(&app).await.unwrap();
    let findings = coffre::ops::audit_replicate::verify_stores_at(&app, later)
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:?}");

    // Two days later every epoch written today is over: keys destroyed, copies deleted.
    let much_later = now + time::Duration::days(32);
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, much_later, "test")
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.epochs.len(), 1, "one epoch: {r:?}");
    let rec = &r.epochs[0];
    assert!(rec.epoch.as_str().starts_with("audit-"));
    assert_eq!(rec.copies.len(), 4, "two segments in each of two stores");
    for c in &rec.copies {
        assert_eq!(c.decrypt_check, "key destroyed", "{c:?}");
        assert_eq!(c.deletion, "deleted", "{c:?}");
        assert_eq!(c.sealed_sha256.len(), 64);
    }
    assert!(rec.providers.iter().all(|p| p.destroyed));
    assert!(audit_objects(dir.path()).is_empty(), "no segment is left");
    // The destruction is in the catalog's records and in every store.
    let records = app.catalog().destructions().unwrap();
    assert!(records.iter().any(|r| r.contains(&rec.record)));
    for s in ["a", "b"] {
        let p = dir
            .path()
            .join("stores")
            .join(s)
            .join("coffre/destruction")
            .join(format!("{}.json", rec.record));
        assert!(p.exists(), "{}", p.display());
    }
    // The log names it, and still verifies.
    let actions: Vec<String> = app
        .audit()
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.action, e.outcome))
        .collect();
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("audit-expire ok: epoch destroyed")),
        "{actions:?}"
    );
    app.audit().verify().unwrap();

    // Someone kept every byte: put them back. They no longer open, in any store.
    for (p, bytes) in &sealed_before {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let findings = coffre::ops::audit_replicate::verify_stores_at(&app, much_later)
        .await
        .unwrap();
    let unopened = findings
        .iter()
        .filter(|f| f.problem.contains("does not open") && f.problem.contains("destroyed"))
        .count();
    assert_eq!(
        unopened, 2,
        "the kept segment (1-3) in each store: {findings:?}"
    );

    // Idempotent: the next run finds the epoch destroyed and deletes the put-back copies.
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, much_later, "test")
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(audit_objects(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_was_down_while_entries_expired_is_not_called_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    for what in ["restore", "drill", "unwrap"] {
        app.audit().append(access(what)).unwrap();
    }
    coffre::ops::audit_replicate::replicate(&app).await.unwrap();
    // Store b goes away (its folder is replaced by a file) while entries 4-5 are written:
    // store a gets them, b does not.
    let b = dir.path().join("stores/b");
    let away = dir.path().join("stores/b.away");
    std::fs::rename(&b, &away).unwrap();
    std::fs::write(&b, b"not a folder").unwrap();
    for what in ["restore", "drill"] {
        app.audit().append(access(what)).unwrap();
    }
    let err = coffre::ops::audit_replicate::replicate(&app)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`b`"), "names the store: {err}");
    std::fs::remove_file(&b).unwrap();
    std::fs::rename(&away, &b).unwrap();
    // While b was away the retention of entries 1-5 ended: they leave the local log.
    let last = app.audit().entries().unwrap().last().unwrap().time.clone();
    let last =
        time::OffsetDateTime::parse(&last, &time::format_description::well_known::Rfc3339).unwrap();
    let later = last + time::Duration::days(30) + time::Duration::seconds(1);
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, later, "test")
        .await
        .unwrap();
    assert_eq!(r.local.map(|p| (p.first, p.through)), Some((1, 5)));
    // b is back: it gets the entries the local log still holds; 4-5 are past retention, so
    // their absence from b is not a finding, while an entry the log holds would be.
    coffre::ops::audit_replicate::replicate(&app).await.unwrap();
    let findings = coffre::ops::audit_replicate::verify_stores_at(&app, later)
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    app.audit().append(access("restore")).unwrap();
    coffre::ops::audit_replicate::replicate(&app).await.unwrap();
    // Remove b's segment holding entry 6 (the pruning record, which the local log holds): it is
    // missing from b's copy, between the expired entries and entry 7.
    let mut seg6 = None;
    let mut stack = vec![b.join("coffre/audit")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy() == "000000000006-000000000006.sealed"
            {
                seg6 = Some(p);
            }
        }
    }
    std::fs::remove_file(seg6.expect("b holds segment 6-6")).unwrap();
    let findings = coffre::ops::audit_replicate::verify_stores_at(&app, later)
        .await
        .unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.store == "b" && f.problem.contains("missing")),
        "{findings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_epoch_is_destroyed_even_when_no_store_lists_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let app = Coffre::open(config(dir.path())).await.unwrap();
    app.audit().append(access("restore")).unwrap();
    coffre::ops::audit_replicate::replicate(&app).await.unwrap();
    // Someone deleted the segments by hand (or the store left the config): the epoch key that
    // wrapped them must still be destroyed when its day is over, in case a copy survives.
    for s in ["a", "b"] {
        std::fs::remove_dir_all(dir.path().join("stores").join(s).join("coffre/audit")).unwrap();
    }
    let epochs = |app: &Coffre| -> Vec<(String, bool)> {
        app.providers()[0]
            .epochs()
            .unwrap()
            .into_iter()
            .filter(|e| e.epoch.as_str().starts_with("audit-"))
            .map(|e| (e.epoch.to_string(), e.destroyed.is_some()))
            .collect()
    };
    assert_eq!(epochs(&app).len(), 1);
    assert!(!epochs(&app)[0].1);
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(32);
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, later, "test")
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.epochs.len(), 1, "{r:?}");
    assert!(r.epochs[0].copies.is_empty());
    assert!(epochs(&app)[0].1, "the epoch key is destroyed");
    // A store that cannot be listed does not stop the rest.
    let b = dir.path().join("stores/b");
    std::fs::remove_dir_all(&b).unwrap();
    std::fs::write(&b, b"not a folder").unwrap();
    let r = coffre::ops::lifecycle::audit_expire::expire(&app, later, "test")
        .await
        .unwrap();
    assert!(r.errors.iter().any(|e| e.contains("`b`")), "{:?}", r.errors);
}
