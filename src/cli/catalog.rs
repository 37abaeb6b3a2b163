//! `coffre catalog seal|rebuild`: authenticate older key objects; rebuild the catalog from the stores.

use anyhow::{bail, Result};

use super::args::CatalogCommand;
use super::ctx::{exit, Ctx};
use super::out::{errln, outln};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, command: &CatalogCommand, ctx: &Ctx) -> Result<u8> {
    match command {
        CatalogCommand::Seal { json } => seal(app, ctx, *json).await,
        CatalogCommand::Rebuild { host, json } => {
            if let Some(host) = host {
                take_over(app, ctx, host).await?;
            }
            rebuild(app, ctx, *json).await
        }
    }
}

/// `catalog seal`: authenticate the key objects written before authentication existed.
async fn seal(app: &Coffre, ctx: &Ctx, json: bool) -> Result<u8> {
    let w = &ctx.out;
    let entry = |outcome: String| crate::audit::NewEntry {
        actor: ctx.actor.clone(),
        action: "catalog-seal".into(),
        target: Default::default(),
        purpose: "authenticate key objects written before authentication existed".into(),
        outcome,
        exposes: None,
    };
    app.audit.append(entry("started".into()))?;
    let r = app.seal_catalog().await?;
    app.audit.append(entry(format!(
        "ok: {} sealed, {} already, {} refused",
        r.sealed.len(),
        r.already,
        r.refused.len()
    )))?;
    if json {
        w.json(&r)?;
    } else {
        outln!(
            w,
            "{} key object(s) sealed, {} already authenticated, {} refused",
            r.sealed.len(),
            r.already,
            r.refused.len()
        );
        for p in &r.refused {
            errln!(w, "refused: {p}");
        }
    }
    Ok(if r.refused.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// `catalog rebuild --host <id>`: this machine replaces the lost host `id` (the config's own
/// host id): its claim in every store becomes this installation's. Logged before it is done.
async fn take_over(app: &Coffre, ctx: &Ctx, host: &str) -> Result<()> {
    if host != app.host {
        // The argument is the caller's: shown escaped and cut, never as it came.
        let shown: String = host
            .chars()
            .take(64)
            .collect::<String>()
            .escape_debug()
            .to_string();
        bail!(
            "--host {shown}: this config is host `{}`. To recover host \"{shown}\" on this machine, run coffre with a config that says host = \"{shown}\" (its stores and key providers) and its own state folder, then `coffre catalog rebuild --host {shown}`",
            app.host.escape_debug()
        );
    }
    app.take_over_host(&ctx.actor).await?;
    Ok(())
}

/// `catalog rebuild`: the local catalog again from what the stores hold.
async fn rebuild(app: &Coffre, ctx: &Ctx, json: bool) -> Result<u8> {
    let w = &ctx.out;
    let entry = |outcome: String| crate::audit::NewEntry {
        actor: ctx.actor.clone(),
        action: "catalog-rebuild".into(),
        target: Default::default(),
        purpose: "rebuild the local catalog from the stores".into(),
        outcome,
        exposes: None,
    };
    app.audit.append(entry("started".into()))?;
    let (snapshots, replicas) = app.rebuild_catalog().await?;
    // The WAL archive's index too (the catalog is cleared of snapshots and keys only).
    let wal = crate::ops::lifecycle::wal_retention::reindex(app).await;
    if wal > 0 {
        tracing::info!(wal_files = wal, "WAL archive indexed from the stores");
    }
    app.audit.append(entry(format!(
        "ok: {snapshots} snapshots, {replicas} replicas"
    )))?;
    let unsealed = app
        .catalog
        .all_keys()?
        .iter()
        .filter(|k| k.auth.is_empty())
        .count();
    if json {
        w.json(&serde_json::json!({"snapshots": snapshots, "replicas": replicas, "unsealed": unsealed}))?;
        return Ok(exit::OK);
    }
    outln!(
        w,
        "catalog rebuilt: {snapshots} snapshot(s), {replicas} committed replica(s)"
    );
    if unsealed > 0 {
        outln!(
            w,
            "{unsealed} key object(s) are unsealed (written before key objects were authenticated): they restore, but are never shredded until an operator checks them with `coffre catalog seal`"
        );
    }
    Ok(exit::OK)
}
