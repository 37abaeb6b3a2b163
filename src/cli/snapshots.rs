//! `coffre snapshots`: the catalog's snapshots and where each is committed.

use anyhow::{bail, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::Snapshots { source, json } => {
            let list = app.catalog.list(source.as_deref())?;
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
                            "stores": e.replicas.iter().filter(|r| r.state == crate::catalog::ReplicaState::Committed).map(|r| r.store.clone()).collect::<Vec<_>>(),
                            "replicas": e.replicas,
                        })
                    })
                    .collect();
                w.json(&v)?;
            } else {
                outln!(
                    w,
                    "{:<26}  {:<12}  {:<20}  {:>14}  stores",
                    "id",
                    "source",
                    "created",
                    "size"
                );
                for e in &list {
                    let stores: Vec<_> = e
                        .replicas
                        .iter()
                        .filter(|r| r.state == crate::catalog::ReplicaState::Committed)
                        .map(|r| r.store.as_str())
                        .collect();
                    outln!(
                        w,
                        "{:<26}  {:<12}  {:<20}  {:>14}  {}",
                        e.manifest.snapshot,
                        e.manifest.source,
                        e.manifest.created,
                        e.manifest.size,
                        stores.join(",")
                    );
                }
            }
            Ok(exit::OK)
        }
        other => bail!(
            "internal error: `{}` was routed to `snapshots`",
            other.action()
        ),
    }
}
