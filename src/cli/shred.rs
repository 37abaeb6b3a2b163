//! `coffre shred`: crypto-shred one snapshot now, or show destruction records.

use anyhow::{bail, Context, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    match cmd {
        Command::Shred {
            records: true,
            json,
            ..
        } => records(app, &ctx.out, *json),
        Command::Shred {
            snapshot,
            purpose,
            yes,
            json,
            ..
        } => {
            let (Some(id), Some(purpose)) = (snapshot, purpose) else {
                bail!("shred needs --snapshot ID and --purpose TEXT");
            };
            shred(app, ctx, id, purpose, *yes, *json).await
        }
        other => bail!("internal error: `{}` was routed to `shred`", other.action()),
    }
}

/// `shred --records`: every destruction record kept here.
fn records(app: &Coffre, w: &Out, json: bool) -> Result<u8> {
    let recs: Vec<serde_json::Value> = app
        .catalog
        .destructions()?
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect();
    if json {
        w.json(&recs)?;
    } else if recs.is_empty() {
        outln!(
            w,
            "no destruction records: nothing has been crypto-shredded here yet"
        );
    } else {
        for r in &recs {
            outln!(
                w,
                "{}  {}  epoch {}  {} snapshot(s)  {}",
                r["record"].as_str().unwrap_or("?"),
                r["time"].as_str().unwrap_or("?"),
                r["epoch"].as_str().unwrap_or("?"),
                r["snapshots"].as_array().map(|a| a.len()).unwrap_or(0),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(exit::OK)
}

/// `shred --snapshot ID --purpose TEXT [--yes]`: without `--yes`, say what would be done.
async fn shred(
    app: &Coffre,
    ctx: &Ctx,
    id: &crate::ids::SnapshotId,
    purpose: &str,
    yes: bool,
    json: bool,
) -> Result<u8> {
    let w = &ctx.out;
    if purpose.trim().is_empty() {
        bail!("--purpose must say why the snapshot is destroyed");
    }
    if let Some(r) = crate::ops::shred::record_of(app, id) {
        bail!(
            "snapshot {id} was already crypto-shredded on {} ({}): destruction record {} (`coffre shred --records`)",
            r.time,
            r.reason,
            r.record
        );
    }
    let key = app.catalog.get_key(id)?.with_context(|| {
        format!("there is no snapshot {id} in the catalog: check the id (`coffre snapshots` lists them; on a new host, `coffre catalog rebuild` first)")
    })?;
    if !yes {
        let mates = app
            .catalog
            .all_keys()?
            .iter()
            .filter(|k| k.epoch == key.epoch && k.snapshot != *id)
            .count();
        outln!(w, "would crypto-shred snapshot {id}: destroy epoch key {} after moving its {mates} epoch-mate(s) to a fresh epoch key, then delete its copies. Add --yes to do it.", key.epoch);
        return Ok(exit::DRY_RUN);
    }
    let r = crate::ops::shred::shred_one(app, id, &ctx.actor.clone(), purpose).await?;
    if json {
        w.json(&r)?;
    } else {
        outln!(w, "snapshot {id} crypto-shredded: epoch {} destroyed in {} provider(s), {} copies deleted (record {})", r.epoch, r.providers.len(), r.copies.len(), r.record);
    }
    Ok(exit::OK)
}
