//! `coffre verify`: every replica checked without keys.

use anyhow::{bail, Result};

use super::args::VerifyArgs;
use super::ctx::{exit, Ctx};
use super::out::{outln, Out};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, a: &VerifyArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    let VerifyArgs { snapshot, json } = a;
    let mut checks = crate::ops::verify::verify(app, *snapshot).await;
    // The WAL archive of every source that keeps one: each store's copy of each WAL
    // file, and continuity per timeline.
    let mut gaps = Vec::new();
    let mut histories = Vec::new();
    if snapshot.is_none() {
        for s in app.config.sources.iter().filter(|s| s.pitr.is_some()) {
            checks.extend(crate::ops::wal::check::copies(app, &s.name).await);
            let (g, archive) = crate::ops::wal::check::gaps(app, &s.name).await;
            gaps.extend(g);
            histories.extend(crate::ops::wal::check::missing_histories(&s.name, &archive));
        }
    }
    let mut bad = checks.iter().filter(|c| !c.ok()).count();
    bad += gaps.len() + histories.len();
    if *json {
        let mut all: Vec<serde_json::Value> = checks
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        for g in &gaps {
            all.push(archive_entry(g, "wal-continuity", "gap", g.describe())?);
        }
        for h in &histories {
            all.push(archive_entry(
                h,
                "wal-timeline-history",
                "missing",
                h.describe(),
            )?);
        }
        w.json(&all)?;
    } else {
        text(w, &checks, &gaps, &histories);
    }
    if snapshot.is_some() && checks.is_empty() {
        bail!(
            "snapshot {} is not known in the catalog or any store",
            snapshot.map(|s| s.to_string()).unwrap_or_default()
        );
    }
    Ok(if bad > 0 { exit::FAILURE } else { exit::OK })
}

/// One finding about a source's WAL archive as a `--json` entry: its fields, with `check`,
/// `state` and `detail` as a replica's entry has them.
fn archive_entry(
    finding: &impl serde::Serialize,
    check: &str,
    state: &str,
    detail: String,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(finding)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("check".into(), check.into());
        o.insert("state".into(), state.into());
        o.insert("detail".into(), detail.into());
    }
    Ok(v)
}

/// `coffre verify` as text: one line per check and per finding about the archives, then a sum.
fn text(
    w: &Out,
    checks: &[crate::ops::verify::ReplicaCheck],
    gaps: &[crate::ops::wal::check::WalGap],
    histories: &[crate::ops::wal::check::MissingHistory],
) {
    for c in checks {
        outln!(
            w,
            "{}  {:<12}  {:<12}  {}{}",
            c.wal
                .as_deref()
                .map_or_else(|| c.snapshot.to_string(), |n| format!("WAL {n:<22}")),
            c.source,
            c.store,
            c.state,
            c.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
    for g in gaps {
        outln!(w, "{}", g.describe());
    }
    for h in histories {
        outln!(w, "{}", h.describe());
    }
    outln!(
        w,
        "{} replica(s) checked, {} not ok{}{}",
        checks.len(),
        checks.iter().filter(|c| !c.ok()).count(),
        if gaps.is_empty() {
            String::new()
        } else {
            format!("; {} gap(s) in the WAL archive", gaps.len())
        },
        if histories.is_empty() {
            String::new()
        } else {
            format!(
                "; {} timeline(s) without their history file",
                histories.len()
            )
        }
    );
}
