//! `coffre shred`: crypto-shred one snapshot now, or show destruction records.
//!
//! Without `--yes`, a dry run says what `--yes` would do (text, or JSON with `--json`) and exits
//! 4; what `--yes` would refuse (a held snapshot) it refuses the same way, with the same exit. An
//! erasure order overrides retention's keep-newest guard: shredding a source's newest snapshot
//! is allowed, and both the dry run and the shred say so.

use anyhow::{bail, Context, Result};

use super::args::ShredArgs;
use super::ctx::{exit, Ctx};
use super::out::{errln, outln, Out};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, a: &ShredArgs, ctx: &Ctx) -> Result<u8> {
    if a.records {
        return records(app, &ctx.out, a.json);
    }
    let (Some(id), Some(purpose)) = (&a.snapshot, &a.purpose) else {
        bail!("shred needs --snapshot ID and --purpose TEXT");
    };
    shred(app, ctx, id, purpose, a.yes, a.json).await
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
    if let Some(r) = crate::ops::lifecycle::destroy::record_of(app, id) {
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
    if let Some(h) = &key.legal_hold {
        // What `--yes` would refuse, the dry run refuses the same way.
        return Err(crate::ops::lifecycle::destroy::ShredError::Held {
            snapshot: *id,
            hold: h.clone(),
        }
        .into());
    }
    let keys = app.catalog.all_keys()?;
    let newest = keys
        .iter()
        .filter(|k| k.source == key.source)
        .map(|k| k.snapshot)
        .max();
    let warning = (newest == Some(*id)).then(|| {
        format!(
            "snapshot {id} is the newest snapshot of source `{}`: retention never shreds a source's newest snapshot, but an erasure order overrides that guard; afterwards the source's newest snapshot is an older one, or none",
            key.source
        )
    });
    if !yes {
        let mates = keys
            .iter()
            .filter(|k| k.epoch == key.epoch && k.snapshot != *id)
            .count();
        return dry_run(w, id, &key, mates, warning, json);
    }
    if let Some(warning) = &warning {
        errln!(w, "warning: {warning}");
    }
    let r = crate::ops::lifecycle::shred::shred_one(app, id, &ctx.actor.clone(), purpose).await?;
    if json {
        w.json(&r)?;
    } else {
        outln!(w, "snapshot {id} crypto-shredded: epoch {} destroyed in {} provider(s), {} copies deleted (record {})", r.epoch, r.providers.len(), r.copies.len(), r.record);
    }
    Ok(exit::OK)
}

/// What `shred --yes` would do, as text or JSON (`dry_run: true`); exit 4.
fn dry_run(
    w: &Out,
    id: &crate::ids::SnapshotId,
    key: &crate::format::KeyObject,
    mates: usize,
    warning: Option<String>,
    json: bool,
) -> Result<u8> {
    let would = format!(
        "would crypto-shred snapshot {id}: destroy epoch key {} after moving its {mates} epoch-mate(s) to a fresh epoch key, then delete its copies. Add --yes to do it.",
        key.epoch
    );
    if json {
        w.json(&serde_json::json!({
            "dry_run": true,
            "snapshot": id,
            "source": key.source,
            "epoch": key.epoch,
            "epoch_mates": mates,
            "newest_of_source": warning.is_some(),
            "warnings": warning.iter().collect::<Vec<_>>(),
            "would": would,
        }))?;
    } else {
        outln!(w, "{would}");
        if let Some(warning) = &warning {
            errln!(w, "warning: {warning}");
        }
    }
    Ok(exit::DRY_RUN)
}
