//! `coffre verify`: every replica checked without keys.

use anyhow::{bail, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::Verify { snapshot, json } => {
            let checks = crate::ops::verify::verify(app, *snapshot).await;
            let bad = checks.iter().filter(|c| !c.ok()).count();
            if *json {
                w.json(&checks)?;
            } else {
                for c in &checks {
                    outln!(
                        w,
                        "{}  {:<12}  {:<12}  {}{}",
                        c.snapshot,
                        c.source,
                        c.store,
                        c.state,
                        c.detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    );
                }
                outln!(w, "{} replica(s) checked, {} not ok", checks.len(), bad);
            }
            if snapshot.is_some() && checks.is_empty() {
                bail!(
                    "snapshot {} is not known in the catalog or any store",
                    snapshot.map(|s| s.to_string()).unwrap_or_default()
                );
            }
            Ok(if bad > 0 { exit::FAILURE } else { exit::OK })
        }
        other => bail!(
            "internal error: `{}` was routed to `verify`",
            other.action()
        ),
    }
}
