//! `coffre snapshots`: the catalog's snapshots and where each is committed.

use anyhow::Result;

use super::args::SnapshotsArgs;
use super::ctx::{exit, Ctx};
use super::out::outln;
use crate::ids::SnapshotId;
use crate::Coffre;

pub(super) async fn run(app: &Coffre, a: &SnapshotsArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    let SnapshotsArgs { source, json } = a;
    let list = app.catalog.list(source.as_deref())?;
    let keys: std::collections::HashMap<SnapshotId, crate::format::KeyObject> = app
        .catalog
        .all_keys()?
        .into_iter()
        .map(|k| (k.snapshot, k))
        .collect();
    if *json {
        let v: Vec<_> = list
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.manifest.snapshot,
                    "source": e.manifest.source,
                    "created": e.manifest.created,
                    "kind": e.manifest.kind,
                    "name": e.manifest.original_name,
                    "size": e.manifest.size,
                    "sealed_size": e.manifest.sealed_size,
                    "sealed_sha256": e.manifest.sealed_sha256,
                    "state": state(app, e, &keys),
                    "stores": committed(e),
                    "replicas": e.replicas,
                })
            })
            .collect();
        w.json(&v)?;
    } else if list.is_empty() {
        match source {
                Some(s) => outln!(w, "no snapshots of source `{s}` in the catalog (on a new host, `coffre catalog rebuild` reads them from the stores)"),
                None => outln!(w, "no snapshots in the catalog yet (on a new host, `coffre catalog rebuild` reads them from the stores)"),
            }
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|e| {
                vec![
                    e.manifest.snapshot.to_string(),
                    e.manifest.source.clone(),
                    e.manifest.created.clone(),
                    e.manifest.size.to_string(),
                    state(app, e, &keys),
                    committed(e).join(","),
                ]
            })
            .collect();
        w.table(
            &["id", "source", "created", "size", "state", "stores"],
            &rows,
            &[3],
        );
    }
    Ok(exit::OK)
}

fn committed(e: &crate::catalog::Entry) -> Vec<&str> {
    e.replicas
        .iter()
        .filter(|r| r.state == crate::catalog::ReplicaState::Committed)
        .map(|r| r.store.as_str())
        .collect()
}

/// One word or phrase per snapshot: `protected` (a good copy in every configured store),
/// `degraded N/M` (fewer), `no good copy`, `no key` (a catalog entry whose key is gone), each
/// with `, held` under a legal hold.
fn state(
    app: &Coffre,
    e: &crate::catalog::Entry,
    keys: &std::collections::HashMap<SnapshotId, crate::format::KeyObject>,
) -> String {
    let total = app.config.stores.len();
    let copies = committed(e);
    let good = app
        .config
        .stores
        .iter()
        .filter(|s| copies.contains(&s.name.as_str()))
        .count();
    let key = keys.get(&e.manifest.snapshot);
    let mut s = match (key, good) {
        (None, _) => "no key".to_string(),
        (Some(_), 0) => "no good copy".to_string(),
        (Some(_), g) if g >= total => "protected".to_string(),
        (Some(_), g) => format!("degraded {g}/{total}"),
    };
    if key.is_some_and(|k| k.legal_hold.is_some()) {
        s.push_str(", held");
    }
    s
}
