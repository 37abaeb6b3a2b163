//! `coffre restore`, the handler: a snapshot from any surviving store (logged first), run here
//! or in the daemon for a caller of its socket. The caller's half (routing, a point-in-time
//! restore's recovery settings) is `restore_caller`.

use std::io::IsTerminal;

use anyhow::{bail, Result};

use super::args::RestoreArgs;
use super::ctx::{exit, Ctx};
use super::out::{errln, outln};
use crate::ops::snapshot::restore::{Request, Selector};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, a: &RestoreArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    {
        {
            if a.purpose.trim().is_empty() {
                bail!(
                    "--purpose must say why the data is accessed; it is recorded in the access log"
                );
            }
            let target = a.pitr_target()?;
            let snapshot = match (&target, a.snapshot) {
                (Some(t), explicit) => {
                    let explicit = match explicit {
                        Some(Selector::Id(id)) => Some(id),
                        _ => None,
                    };
                    Selector::Id(crate::ops::pitr::recovery::choose_base(app, &a.source, t, explicit)?)
                }
                (None, Some(s)) => s,
                (None, None) => bail!(
                    "give a snapshot id or `latest`, or a --target-* option for a point-in-time recovery"
                ),
            };
            let req = Request {
                source: a.source.clone(),
                snapshot,
                to: a.to.clone(),
                store: a.store.clone(),
                purpose: a.purpose.clone(),
                actor: ctx.actor.clone(),
                action: "restore".into(),
                progress: !w.is_remote() && std::io::stderr().is_terminal() && !a.json,
                stream: ctx.restore_sink.clone(),
            };
            let report = crate::ops::snapshot::restore::restore(app, &req).await?;
            if target.is_some() {
                // The replay's WAL fetches belong to this session, which coffre opens (with the
                // restore's purpose): a fetch under an id coffre did not open is refused.
                let id =
                    crate::ops::wal::archive::open_session(app, None, &a.source, None, &a.purpose)?;
                *ctx.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
            }
            if a.json {
                w.json(&report)?;
            } else {
                let (what, purpose) = match &target {
                    Some(t) => (
                        "base backup",
                        format!(" for a point-in-time recovery to {}", t.describe()),
                    ),
                    None => ("snapshot", String::new()),
                };
                outln!(
                    w,
                    "restored {what} {} to {} ({} bytes, from {}, {:.1} s){purpose}",
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
    }
}
