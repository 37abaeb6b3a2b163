//! `coffre backup`: protect one file or folder now.

use anyhow::{bail, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::Backup { source, path, json } => {
            let out = crate::ops::protect::protect(app, source, path).await?;
            if *json {
                w.json(&out)?;
            } else {
                outln!(w, "{}", out.manifest.snapshot);
            }
            for f in &out.failed {
                errln!(
                    w,
                    "warning: store `{}` did not receive snapshot {}: {}",
                    f.store,
                    out.manifest.snapshot,
                    f.error
                );
            }
            if out.protection == Protection::Degraded {
                errln!(w,
                    "warning: snapshot {} is degraded: committed in {} of {} stores (at least min-sites sites)",
                    out.manifest.snapshot,
                    out.committed.len(),
                    app.stores.len()
                );
                return Ok(exit::DEGRADED);
            }
            Ok(exit::OK)
        }
        other => bail!(
            "internal error: `{}` was routed to `backup`",
            other.action()
        ),
    }
}
