//! `coffre retention plan|run`: what is shredded when; the due part now.

use anyhow::{bail, Result};

use super::args::RetentionCommand;
use super::ctx::{exit, Ctx};
use super::out::{outln, Out};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, command: &RetentionCommand, ctx: &Ctx) -> Result<u8> {
    let now = time::OffsetDateTime::now_utc();
    match command {
        RetentionCommand::Plan { json } => plan(app, &ctx.out, now, *json),
        RetentionCommand::Run { json } => run_due(app, ctx, now, *json).await,
    }
}

/// `retention plan`: what is due now (shredded, or kept by re-wrap, and why), what comes when.
fn plan(app: &Coffre, w: &Out, now: time::OffsetDateTime, json: bool) -> Result<u8> {
    let plan = crate::ops::lifecycle::shred::current_plan(app, now)?;
    let pitr = crate::ops::lifecycle::wal_retention::ranges(app, now);
    if json {
        let mut v = serde_json::to_value(&plan)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("pitr".into(), serde_json::to_value(&pitr)?);
        }
        w.json(&v)?;
        return Ok(exit::OK);
    }
    for r in &pitr {
        match (&r.recoverable_from, &r.recoverable_to) {
            (Some(from), Some(to)) => outln!(
                w,
                "source {}: any moment from {from} (base backup {}) to {to} (the last archived WAL) can be recovered; window {}",
                r.source,
                r.base.map(|b| b.to_string()).unwrap_or_default(),
                r.window
            ),
            _ => outln!(
                w,
                "source {}: nothing can be recovered to a point in time yet (it needs a base backup and archived WAL)",
                r.source
            ),
        }
        if r.wal_due_shred + r.wal_due_keep > 0 {
            outln!(
                w,
                "  WAL due now: {} shredded with their epochs, {} kept (needed by the window; keys moved)",
                r.wal_due_shred,
                r.wal_due_keep
            );
        }
        if let (Some(at), Some(next)) = (&r.next_start_at, &r.next_base) {
            outln!(
                w,
                "  from {at} the window starts at base backup {next}: the older base backup and the WAL before it leave the window"
            );
        }
    }
    if plan.due.is_empty() && plan.upcoming.is_empty() {
        outln!(
            w,
            "nothing is planned for destruction: the catalog holds no snapshot under retention"
        );
        return Ok(exit::OK);
    }
    if plan.due.is_empty() {
        outln!(w, "nothing is due now");
    }
    for ep in &plan.due {
        outln!(w, "epoch {} is due now:", ep.epoch);
        for id in &ep.shred {
            outln!(w, "  shred {id}");
        }
        for k in &ep.keep {
            outln!(
                w,
                "  keep  {} ({}) -> epoch {}",
                k.snapshot,
                k.reason,
                k.to_epoch
            );
        }
    }
    upcoming(w, &plan.upcoming);
    Ok(exit::OK)
}

/// The snapshots whose epoch is not due yet: destroyed when it comes, or kept by a guard.
fn upcoming(w: &Out, upcoming: &[crate::retention::Upcoming]) {
    for u in upcoming {
        match &u.kept {
            Some(why) => outln!(
                w,
                "{}  {:<12}  epoch {}  kept ({why}): its key moves to a later epoch at {}",
                u.snapshot,
                u.source,
                u.epoch,
                u.due
            ),
            None => outln!(
                w,
                "{}  {:<12}  epoch {}  destroyed at {}",
                u.snapshot,
                u.source,
                u.epoch,
                u.due
            ),
        }
    }
}

/// `retention run`: shred every epoch that is due now.
async fn run_due(app: &Coffre, ctx: &Ctx, now: time::OffsetDateTime, json: bool) -> Result<u8> {
    let w = &ctx.out;
    let (done, errors) = crate::ops::lifecycle::shred::run_due(app, now, &ctx.actor.clone()).await;
    if json {
        w.json(&done)?;
    } else if done.is_empty() && errors.is_empty() {
        let next = crate::ops::lifecycle::shred::current_plan(app, now)
            .ok()
            .and_then(|p| p.upcoming.into_iter().min_by(|a, b| a.due.cmp(&b.due)));
        match next {
            Some(u) => outln!(
                w,
                "nothing was due: no epoch key has reached its expiry; the next is epoch {} at {} (`coffre retention plan`)",
                u.epoch,
                u.due
            ),
            None => outln!(
                w,
                "nothing was due: the catalog holds no snapshot under retention"
            ),
        }
    } else {
        for r in &done {
            outln!(
                w,
                "epoch {} destroyed: {} snapshot(s) shredded, {} kept by re-wrap",
                r.epoch,
                r.snapshots.len(),
                r.rewrapped.len()
            );
        }
    }
    if let Some(e) = errors.first() {
        bail!("{} epoch(s) not shredded; first: {e}", errors.len());
    }
    Ok(exit::OK)
}
