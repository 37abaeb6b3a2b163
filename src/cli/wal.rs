//! `coffre wal-push` and `coffre wal-fetch`: PostgreSQL's `archive_command` and
//! `restore_command`.

use anyhow::{bail, Result};

use super::*;
use crate::ops::restore::Chunk;
use crate::ops::wal::WalError;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::WalPush { source, path, json } => {
            let pushed = crate::ops::wal::push(app, source, path, &ctx.actor).await?;
            if *json {
                w.json(&pushed)?;
            } else if pushed.already {
                outln!(
                    w,
                    "{} already archived (same bytes) as {}",
                    pushed.name,
                    pushed.object
                );
            } else {
                outln!(w, "{} archived as {}", pushed.name, pushed.object);
            }
            Ok(exit::OK)
        }
        Command::WalFetch {
            source,
            name,
            to,
            purpose,
            session,
        } => {
            let fetched = crate::ops::wal::fetch(
                app,
                source,
                name,
                &ctx.actor,
                purpose,
                session.as_deref(),
                ctx.daemon.clone(),
            )
            .await;
            let (manifest, plain) = match fetched {
                Ok(x) => x,
                // The normal end of the archive during recovery: a short note, exit 1.
                Err(e @ WalError::NotArchived(_)) => {
                    errln!(w, "{e}");
                    return Ok(exit::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            match &ctx.restore_sink {
                // Through the daemon: the caller writes the file with its own rights.
                Some(tx) => {
                    let begin = Chunk::Begin {
                        snapshot: manifest.snapshot,
                        kind: manifest.kind,
                        size: plain.len() as u64,
                    };
                    let mut sent = tx.send(begin).await.is_ok();
                    for part in plain.chunks(1 << 20) {
                        sent = sent && tx.send(Chunk::Data(part.to_vec().into())).await.is_ok();
                    }
                    if !sent {
                        bail!("the caller went away before {name} was written");
                    }
                }
                None => crate::ops::wal::write_atomically(to, &plain)?,
            }
            Ok(exit::OK)
        }
        other => bail!("internal error: `{}` was routed to `wal`", other.action()),
    }
}
