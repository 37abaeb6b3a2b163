//! `coffre wal-push` and `coffre wal-fetch`: PostgreSQL's `archive_command` and
//! `restore_command`.

use anyhow::{bail, Result};

use super::args::{WalFetchArgs, WalPushArgs};
use super::ctx::{exit, Ctx};
use super::out::{errln, outln};
use crate::ops::snapshot::restore::Chunk;
use crate::ops::wal::archive::WalError;
use crate::Coffre;

/// `wal-push`: archive one WAL file, read from the descriptor the caller opened.
pub(super) async fn push(app: &Coffre, a: &WalPushArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    let WalPushArgs { source, path, json } = a;
    let (name, file) = wal_push_file(app, source, path, ctx)?;
    let pushed = wal_push(app, source, (path, &name, &file), ctx).await?;
    log_push(app, source, &ctx.actor, &pushed)?;
    match pushed {
        Push::Ahead(p) if *json => w.json(&p)?,
        Push::Ahead(p) => {
            outln!(w, "{} archived as {} (ahead of its push)", p.name, p.object)
        }
        Push::Spooled(sp) if *json => w.json(&sp)?,
        Push::Spooled(sp) => outln!(w, "{} spooled (archived in the background)", sp.name),
        Push::Pushed(p) if *json => w.json(&p)?,
        Push::Pushed(p) if p.already => outln!(
            w,
            "{} already archived (same bytes) as {}",
            p.name,
            p.object
        ),
        Push::Pushed(p) => outln!(w, "{} archived as {}", p.name, p.object),
    }
    Ok(exit::OK)
}

/// `wal-fetch`: one archived WAL file, handed to the caller.
pub(super) async fn fetch(app: &Coffre, a: &WalFetchArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    let WalFetchArgs {
        source,
        name,
        to,
        purpose,
        session,
        store,
    } = a;
    let by = crate::ops::wal::archive::FetchBy {
        actor: &ctx.actor,
        purpose,
        session: session.as_deref(),
        store: store.as_deref(),
    };
    let t0 = std::time::Instant::now();
    let fetched = crate::ops::wal::archive::fetch(app, source, name, by, ctx.daemon.clone()).await;
    let crate::ops::wal::archive::Fetched {
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
    hand_over(ctx, name, to, object, plain).await?;
    crate::ops::wal::archive::served(app, session.as_deref(), t0.elapsed(), prefetched);
    Ok(exit::OK)
}

/// Hand a fetched WAL file to the caller: through the daemon, written into the empty file the
/// caller passed (no copy through the socket) or else sent as frames the caller writes with its
/// own rights; in the caller's own process, written at `to` through a temporary name.
async fn hand_over(
    ctx: &Ctx,
    name: &str,
    to: &std::path::Path,
    object: crate::ids::SnapshotId,
    plain: Vec<u8>,
) -> Result<()> {
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
        (Some(tx), Some(f)) => into_callers_file(tx, f, name, to, object, plain).await,
        (Some(tx), None) => as_frames(tx, name, object, plain).await,
        // In the caller's own process: through the same destination as every restore.
        (None, _) => crate::ops::snapshot::destination::RestoreDestination::new(to)
            .write_whole("fetch", &plain)
            .map_err(|source| {
                WalError::Write {
                    path: to.to_path_buf(),
                    source,
                }
                .into()
            }),
    }
}

/// Through the daemon, into the empty file the caller opened with its own rights and passed.
async fn into_callers_file(
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    f: std::fs::File,
    name: &str,
    to: &std::path::Path,
    object: crate::ids::SnapshotId,
    plain: Vec<u8>,
) -> Result<()> {
    let size = plain.len() as u64;
    let written = tokio::task::spawn_blocking(move || {
        crate::ops::snapshot::restore::write_into(&f, [&plain[..]])
    })
    .await
    .map_err(|e| anyhow::anyhow!("the writer of {name} stopped: {e}"))?;
    match written {
        Ok(n) if n == size => {}
        Ok(n) => bail!("wrote {n} of the {size} bytes of {name} into the file passed"),
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
    crate::ops::wal::archive::FETCHES_INTO_CALLER_FILE
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Through the daemon, as frames: the caller writes the file with its own rights.
async fn as_frames(
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    name: &str,
    object: crate::ids::SnapshotId,
    plain: Vec<u8>,
) -> Result<()> {
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
    Ok(())
}

/// What a push did.
enum Push {
    /// Archived ahead of its push, from this very file.
    Ahead(crate::ops::wal::archive::Pushed),
    /// Acknowledged from the spool (archive-async).
    Spooled(crate::ops::wal::spool::Spooled),
    Pushed(crate::ops::wal::archive::Pushed),
}

/// The WAL name and the open file to archive. Through the daemon: only the descriptor the
/// caller passed with the request (the daemon never opens a caller's path); in the caller's own
/// process: opened here without following a symlink. Where the source names its `pg_wal`, the
/// file must be that folder's entry of its name.
fn wal_push_file(
    app: &Coffre,
    source: &str,
    path: &std::path::Path,
    ctx: &Ctx,
) -> Result<(crate::format::wal::WalName, std::fs::File), WalError> {
    use crate::ops::wal::archive as wal;
    wal::archiving_source(app, source)?;
    let name = wal::wal_name(path)?;
    let file = match &ctx.daemon {
        Some(_) => {
            let fd = ctx
                .caller_file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| WalError::NotPassed("no file descriptor came with it".into()))?;
            crate::fsutil::file_to_read(fd, wal::MAX_WAL_FILE)
                .map_err(|e| WalError::NotPassed(e.to_string()))?
        }
        None => wal::open_wal_file(path)?,
    };
    wal::check_in_pg_wal(app, source, &name, &file)?;
    Ok((name, file))
}

/// Archive it: acknowledged from a look-ahead that archived this very file, from the spool
/// (archive-async, through the daemon), or pushed now.
async fn wal_push(
    app: &Coffre,
    source: &str,
    (path, name, file): (
        &std::path::Path,
        &crate::format::wal::WalName,
        &std::fs::File,
    ),
    ctx: &Ctx,
) -> Result<Push, WalError> {
    if let Some(d) = &ctx.daemon {
        crate::ops::wal::ahead::start(d, source, name, &ctx.actor);
        if let Some(pushed) = crate::ops::wal::ahead::take(source, name, file).await {
            return Ok(Push::Ahead(pushed));
        }
        let asynchronous = app
            .config
            .source(source)
            .and_then(|s| s.pitr.as_ref())
            .is_some_and(|p| p.archive_async);
        if asynchronous {
            if let Some(sp) = crate::ops::wal::spool::spool(app, source, name, (path, file))? {
                return Ok(Push::Spooled(sp));
            }
        }
    }
    crate::ops::wal::archive::push_named(app, source, name, (path, file), &ctx.actor)
        .await
        .map(Push::Pushed)
}

/// Who put a WAL file into the archive: one access-log entry per push (the caller from the
/// socket's peer credentials, the source, the name, and what became of it).
fn log_push(app: &Coffre, source: &str, actor: &str, push: &Push) -> Result<(), WalError> {
    let (name, object, outcome) = match push {
        Push::Ahead(p) => (&p.name, Some(p.object), "archived ahead of its push"),
        Push::Spooled(sp) => (&sp.name, None, "spooled (archive-async)"),
        Push::Pushed(p) if p.already => (&p.name, Some(p.object), "archived already, same bytes"),
        Push::Pushed(p) => (&p.name, Some(p.object), "archived"),
    };
    app.audit
        .append(crate::audit::NewEntry {
            actor: actor.to_string(),
            action: "wal-push".into(),
            target: crate::audit::Target {
                source: Some(source.to_string()),
                snapshot: object.map(|o| o.to_string()),
                ..Default::default()
            },
            purpose: "WAL archiving (PostgreSQL archive_command)".into(),
            outcome: format!("WAL file {name}: {outcome}"),
            exposes: None,
        })
        .map(|_| ())
        .map_err(|e| WalError::Audit(e.to_string()))
}
