//! `coffre restore`: a snapshot from any surviving store (logged first).

use anyhow::{bail, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::Restore(a) => {
            if a.purpose.trim().is_empty() {
                bail!(
                    "--purpose must say why the data is accessed; it is recorded in the access log"
                );
            }
            let req = Request {
                source: a.source.clone(),
                snapshot: a.snapshot,
                to: a.to.clone(),
                store: a.store.clone(),
                purpose: a.purpose.clone(),
                actor: ctx.actor.clone(),
                action: "restore".into(),
                progress: !w.is_remote() && std::io::stderr().is_terminal() && !a.json,
                stream: ctx.restore_sink.clone(),
            };
            let report = crate::ops::restore::restore(app, &req).await?;
            if a.json {
                w.json(&report)?;
            } else {
                outln!(
                    w,
                    "restored snapshot {} to {} ({} bytes, from {}, {:.1} s)",
                    report.snapshot,
                    report.to.display(),
                    report.size,
                    report.stores_used.join(" then "),
                    report.seconds
                );
            }
            for f in &report.failures {
                errln!(
                    w,
                    "warning: replica in store `{}` failed ({}): {}",
                    f.store,
                    f.kind,
                    f.error
                );
            }
            Ok(exit::OK)
        }
        other => bail!(
            "internal error: `{}` was routed to `restore`",
            other.action()
        ),
    }
}
