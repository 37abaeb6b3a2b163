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
            // Through the daemon: the next `.ready` segments are archived ahead, and this one
            // may have been already.
            if let Some(d) = &ctx.daemon {
                crate::ops::wal_ahead::start(d, source, path, &ctx.actor);
                if let Some(pushed) = crate::ops::wal_ahead::take(source, path).await {
                    if *json {
                        w.json(&pushed)?;
                    } else {
                        outln!(
                            w,
                            "{} archived as {} (ahead of its push)",
                            pushed.name,
                            pushed.object
                        );
                    }
                    return Ok(exit::OK);
                }
            }
            // archive-async, through the daemon: acknowledged from the spool.
            let asynchronous = ctx.daemon.is_some()
                && app
                    .config
                    .source(source)
                    .and_then(|s| s.pitr.as_ref())
                    .is_some_and(|p| p.archive_async);
            if asynchronous {
                if let Some(sp) = crate::ops::wal_spool::spool(app, source, path)? {
                    if *json {
                        w.json(&sp)?;
                    } else {
                        outln!(w, "{} spooled (archived in the background)", sp.name);
                    }
                    return Ok(exit::OK);
                }
            }
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
            store,
        } => {
            let by = crate::ops::wal::FetchBy {
                actor: &ctx.actor,
                purpose,
                session: session.as_deref(),
                store: store.as_deref(),
            };
            let t0 = std::time::Instant::now();
            let fetched = crate::ops::wal::fetch(app, source, name, by, ctx.daemon.clone()).await;
            let crate::ops::wal::Fetched {
                object,
                plain,
                prefetched,
            } = match fetched {
                Ok(x) => x,
                // The normal end of the archive during recovery: a short note, exit 1.
                Err(e @ WalError::NotArchived(_)) => {
                    errln!(w, "{e}");
                    return Ok(exit::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            let passed = ctx
                .caller_file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .and_then(|fd| match crate::fsutil::empty_file_to_write(fd) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(reason = %e, "wal-fetch: not writing into the file the caller passed; sending the bytes instead");
                        None
                    }
                });
            match (&ctx.restore_sink, passed) {
                // Through the daemon, into the empty file the caller opened with its own rights
                // and passed: no copy through the socket.
                (Some(tx), Some(f)) => {
                    let size = plain.len() as u64;
                    let written = tokio::task::spawn_blocking(move || {
                        crate::ops::restore::write_into(&f, [&plain[..]])
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("the writer of {name} stopped: {e}"))?;
                    match written {
                        Ok(n) if n == size => {}
                        Ok(n) => {
                            bail!("wrote {n} of the {size} bytes of {name} into the file passed")
                        }
                        Err(e) => bail!(
                            "cannot write {name} into {}: {e} (nothing is left there; free space on its file system and PostgreSQL asks again)",
                            to.display()
                        ),
                    }
                    let done = Chunk::Written {
                        snapshot: object,
                        size,
                    };
                    if tx.send(done).await.is_err() {
                        bail!("the caller went away before {name} was written");
                    }
                    crate::ops::wal::FETCHES_INTO_CALLER_FILE
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Through the daemon: the caller writes the file with its own rights.
                (Some(tx), None) => {
                    let begin = Chunk::Begin {
                        snapshot: object,
                        kind: crate::store::SnapshotKind::Wal,
                        size: plain.len() as u64,
                    };
                    let mut sent = tx.send(begin).await.is_ok();
                    // Slices of the one buffer, not copies.
                    let plain = bytes::Bytes::from(plain);
                    let mut at = 0;
                    while sent && at < plain.len() {
                        let end = (at + (1 << 20)).min(plain.len());
                        sent = tx.send(Chunk::Data(plain.slice(at..end))).await.is_ok();
                        at = end;
                    }
                    if !sent {
                        bail!("the caller went away before {name} was written");
                    }
                }
                (None, _) => crate::ops::wal::write_atomically(to, &plain)?,
            }
            crate::ops::wal::served(app, session.as_deref(), t0.elapsed(), prefetched);
            Ok(exit::OK)
        }
        other => bail!("internal error: `{}` was routed to `wal`", other.action()),
    }
}
