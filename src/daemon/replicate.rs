//! Replication repair: catch-up of stores that lag (copying the sealed bytes from a store where the
//! snapshot is committed, so the source file is not needed) and the scrub (re-read every replica,
//! check its hash, repair a bad one from a good one).
//!
//! Invariants: a copy is checked against the manifest's SHA-256 while it streams and aborted on a
//! mismatch, so a bad replica never spreads; the manifest is written last.

use futures::StreamExt;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};

use crate::app::Coffre;
use crate::catalog::ReplicaState;
use crate::ids::SnapshotId;
use crate::progress::Activity;
use crate::status::Runtime;
use crate::store::{Store, StoreError};

fn bad(store: &Store, path: &object_store::path::Path, reason: String) -> StoreError {
    StoreError::BadObject {
        store: store.name.clone(),
        path: path.to_string(),
        reason,
    }
}

fn catalog_err(to: &Store, e: crate::catalog::CatalogError) -> StoreError {
    StoreError::Catalog {
        store: to.name.clone(),
        reason: format!("cannot read the catalog: {e}"),
    }
}

fn not_in_catalog(to: &Store, source: &str, id: &SnapshotId) -> StoreError {
    StoreError::Catalog {
        store: to.name.clone(),
        reason: format!("snapshot {id} of source `{source}` has no manifest and key object in the catalog: run `coffre catalog rebuild`"),
    }
}

/// Copy one snapshot's objects from `from` to `to`, verifying the sealed hash on the way.
/// Returns the sealed bytes written.
pub async fn copy_snapshot(
    app: &Coffre,
    source: &str,
    id: &SnapshotId,
    from: &Store,
    to: &Store,
    activity: Activity,
) -> Result<u64, StoreError> {
    // The manifest and key object come from the catalog (authenticated when it was built), not
    // from the store copied from: a forged copy there never spreads.
    let entry = app
        .catalog
        .get(id)
        .map_err(|e| catalog_err(to, e))?
        .ok_or_else(|| not_in_catalog(to, source, id))?;
    let m = entry.manifest;
    let key = app
        .catalog
        .get_key(id)
        .map_err(|e| catalog_err(to, e))?
        .ok_or_else(|| not_in_catalog(to, source, id))?;
    let src = from.data_path(source, id);
    let dst = to.data_path(source, id);
    let tracker = app.progress.start(
        activity,
        &id.to_string(),
        source,
        Some(&to.name),
        Some(m.sealed_size),
    );
    let res = from.get(&src).await?;
    if res.meta.size != m.sealed_size {
        return Err(bad(
            from,
            &src,
            format!("{} bytes, manifest says {}", res.meta.size, m.sealed_size),
        ));
    }
    let up = to.put_multipart(&dst).await?;
    let mut w =
        WriteMultipart::new_with_chunk_size(up, app.config.pipeline.part_size.as_u64() as usize);
    let mut sha = Sha256::new();
    let mut stream = res.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = w.abort().await;
                return Err(from.op_err("read", &src, e));
            }
        };
        sha.update(&chunk);
        tracker.add(chunk.len() as u64);
        if let Err(e) = w
            .wait_for_capacity(app.config.pipeline.upload_concurrency)
            .await
        {
            let _ = w.abort().await;
            return Err(to.op_err("upload part", &dst, e));
        }
        w.put(chunk);
    }
    if hex::encode(sha.finalize()) != m.sealed_sha256 {
        let _ = w.abort().await;
        return Err(bad(
            from,
            &src,
            "its SHA-256 differs from the manifest: not copied".into(),
        ));
    }
    w.finish()
        .await
        .map_err(|e| to.op_err("complete upload", &dst, e))?;
    crate::ops::snapshot::commit::commit(
        app,
        to,
        &m,
        &key,
        crate::ops::snapshot::commit::Existing::Repair,
    )
    .await?;
    Ok(m.sealed_size)
}

/// Copy every lagging snapshot into every store that lacks it. Returns (copied, failed).
pub async fn catch_up(app: &Coffre, rt: &Runtime) -> (u64, u64) {
    let (mut copied, mut failed) = (0, 0);
    for to in &app.stores {
        let lagging = match app.catalog.lagging(&to.name) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "catalog unavailable for catch-up");
                return (copied, failed + 1);
            }
        };
        for (source, id) in lagging {
            let committed: Vec<String> = match app.catalog.get(&id) {
                Ok(Some(e)) => e
                    .replicas
                    .into_iter()
                    .filter(|r| r.state == ReplicaState::Committed)
                    .map(|r| r.store)
                    .collect(),
                _ => continue,
            };
            let mut done = false;
            let mut last_err = None;
            for from in app.stores.iter().filter(|s| committed.contains(&s.name)) {
                match copy_snapshot(app, &source, &id, from, to, Activity::CatchUp).await {
                    Ok(bytes) => {
                        rt.uploaded(&to.name, bytes);
                        rt.store_ok(&to.name);
                        let _ = app
                            .catalog
                            .set_replica(&id, &to.name, ReplicaState::Committed);
                        tracing::info!(snapshot = %id, from = %from.name, to = %to.name, bytes, "replica caught up");
                        done = true;
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if done {
                copied += 1;
            } else if let Some(e) = last_err {
                failed += 1;
                tracing::warn!(snapshot = %id, store = %to.name, error = %e, "catch-up failed; will retry");
                rt.store_failed(&to.name, e.kind().as_str());
                // A store that is down: do not hammer it with every lagging snapshot.
                if e.is_retryable() {
                    break;
                }
            }
        }
    }
    (copied, failed)
}

/// Re-read every replica, check its hash, and repair bad or missing ones from a good replica.
/// Returns (checked, bad, repaired).
pub async fn scrub(app: &Coffre, rt: &Runtime) -> (u64, u64, u64) {
    let checks = crate::ops::verify::verify(app, None).await;
    let (mut bad_n, mut repaired) = (0, 0);
    let checked = checks.len() as u64;
    for c in checks.iter().filter(|c| c.state.needs_repair()) {
        bad_n += 1;
        rt.scrub_error(&c.store);
        tracing::warn!(snapshot = %c.snapshot, store = %c.store, state = %c.state, detail = c.detail.as_deref().unwrap_or(""), "scrub found a replica that is not ok");
        let Some(to) = app.store(&c.store) else {
            continue;
        };
        let good: Vec<&Store> = checks
            .iter()
            .filter(|g| g.snapshot == c.snapshot && g.ok())
            .filter_map(|g| app.store(&g.store))
            .collect();
        for from in good {
            match copy_snapshot(app, &c.source, &c.snapshot, from, to, Activity::Repair).await {
                Ok(bytes) => {
                    rt.uploaded(&to.name, bytes);
                    rt.repaired(&to.name);
                    let _ = app
                        .catalog
                        .set_replica(&c.snapshot, &to.name, ReplicaState::Committed);
                    tracing::warn!(snapshot = %c.snapshot, store = %to.name, from = %from.name, "replica repaired from a good replica");
                    repaired += 1;
                    break;
                }
                Err(e) => {
                    tracing::warn!(snapshot = %c.snapshot, store = %to.name, error = %e, "repair failed")
                }
            }
        }
    }
    // Each store's copy of each WAL file.
    let (mut w_checked, mut w_bad, mut w_repaired) = (0, 0, 0);
    for s in app.config.sources.iter().filter(|s| s.pitr.is_some()) {
        let checks = crate::ops::wal::check::copies(app, &s.name).await;
        w_checked += checks.len() as u64;
        for c in checks.iter().filter(|c| c.state.needs_repair()) {
            w_bad += 1;
            rt.scrub_error(&c.store);
            let wal = c.wal.as_deref().unwrap_or("");
            tracing::warn!(wal, source = %c.source, store = %c.store, state = %c.state, detail = c.detail.as_deref().unwrap_or(""), "scrub found a WAL copy that is not ok");
            let Some(to) = app.store(&c.store) else {
                continue;
            };
            let good = checks
                .iter()
                .filter(|g| g.wal == c.wal && g.ok())
                .filter_map(|g| app.store(&g.store));
            for from in good {
                match crate::ops::wal::check::repair(app, c, from, to).await {
                    Ok(bytes) => {
                        rt.uploaded(&to.name, bytes);
                        rt.repaired(&to.name);
                        tracing::warn!(wal, store = %to.name, from = %from.name, "WAL copy repaired from a good copy");
                        w_repaired += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(wal, store = %to.name, error = %e, "WAL copy repair failed")
                    }
                }
            }
        }
    }
    (checked + w_checked, bad_n + w_bad, repaired + w_repaired)
}

/// Probe every store (a cheap listing) and record up/down.
pub async fn probe(app: &Coffre, rt: &Runtime) {
    for s in &app.stores {
        match s.probe().await {
            Ok(()) => rt.store_ok(&s.name),
            Err(e) => rt.store_failed(&s.name, e.kind().as_str()),
        }
    }
}
