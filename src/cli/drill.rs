//! `coffre drill`: restore, verify, time and wipe, per store.

use anyhow::Result;

use super::args::DrillArgs;
use super::ctx::{exit, Ctx};
use super::out::{errln, outln};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, a: &DrillArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    let DrillArgs {
        source,
        store,
        snapshot,
        fresh_catalog,
        purpose,
        json,
        ..
    } = a;
    let req = crate::ops::drill::DrillRequest {
        source: source.clone(),
        store: store.clone(),
        snapshot: *snapshot,
        fresh_catalog: *fresh_catalog,
        actor: ctx.actor.clone(),
        purpose: purpose.clone(),
    };
    let reports = crate::ops::drill::drill(app, &req)
        .await
        .map_err(anyhow::Error::msg)?;
    if *json {
        w.json(&reports)?;
    } else {
        for r in &reports {
            outln!(w,
                    "drill {} source {} store {} snapshot {}: {} (restore {:.1} s, verify {:.1} s, RTO {:.1} s, scratch wiped: {}){}",
                    r.drill,
                    r.source,
                    r.store,
                    r.snapshot.map(|s| s.to_string()).unwrap_or_default(),
                    if r.ok { "OK" } else { "FAILED" },
                    r.restore_seconds,
                    r.verify_seconds,
                    r.rto_seconds,
                    r.scratch_wiped,
                    r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                );
            if let Some(t) = &r.target {
                outln!(
                        w,
                        "  point in time: {t}; replay {:.1} s, {} WAL file(s) from store {} ({} from the prefetch, {:.1} s serving fetches)",
                        r.replay_seconds,
                        r.wal_fetched.unwrap_or(0),
                        r.store,
                        r.wal_prefetch_hits.unwrap_or(0),
                        r.fetch_seconds.unwrap_or(0.0)
                    );
            }
            if r.ok && r.verify_exit.is_none() {
                errln!(
                        w,
                        "warning: source `{}` has no [source.drill] verify-command: the restored copy matched its digest, but nothing checked that it works (set verify-command to start the database from it)",
                        r.source
                    );
            }
        }
    }
    Ok(if reports.iter().all(|r| r.ok) {
        exit::OK
    } else {
        exit::FAILURE
    })
}
