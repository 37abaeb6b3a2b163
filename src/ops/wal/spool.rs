//! The asynchronous WAL spool (`[source.pitr] archive-async = true`, through the daemon): a
//! pushed WAL file is acknowledged once it is written, fsynced and renamed into
//! `<state-dir>/spool/<source>/`; the daemon's `wal-spool` worker then archives it like a
//! synchronous push (every store, `min-sites`) and removes it from the spool only when that
//! succeeded. A spooled file survives a crash or a kill -9 (it was fsynced before the ack) and
//! is archived after the restart; `wal-fetch` serves it from the spool meanwhile, as long as
//! every store answers that it does not have it (never when a store could not be read).
//!
//! The guarantees of a synchronous push hold: a name archived already (in the catalog's index)
//! goes the synchronous way, which compares its bytes; a name spooled already with other bytes
//! is refused. When the spool would grow past `spool-max`, the push is synchronous again.

use std::path::{Path, PathBuf};

use crate::app::Coffre;
use crate::format::wal::WalName;
use crate::ops::wal::archive::{open_wal_file, read_open, spool_dir, write_atomically, WalError};

/// Wakes the `wal-spool` worker as soon as a file is spooled.
pub static WAKE: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// A WAL file acknowledged from the spool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spooled {
    pub name: String,
    pub spooled: bool,
    /// The same name with the same bytes was in the spool already.
    pub already: bool,
}

/// What the spool of one source holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Depth {
    pub files: u64,
    pub bytes: u64,
    /// Age of the oldest spooled file.
    pub oldest_seconds: Option<f64>,
}

/// The spooled WAL files of `source`, in name order (temporary files left out).
fn spooled_files(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out: Vec<(PathBuf, std::fs::Metadata)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.') && WalName::parse(&n).is_ok()
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| (e.path(), m))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn depth(app: &Coffre, source: &str) -> Depth {
    let files = spooled_files(&spool_dir(app, source));
    let oldest = files
        .iter()
        .filter_map(|(_, m)| m.modified().ok())
        .min()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs_f64());
    Depth {
        files: files.len() as u64,
        bytes: files.iter().map(|(_, m)| m.len()).sum(),
        oldest_seconds: oldest,
    }
}

/// Spool the WAL file `file` (open already: the descriptor the caller passed; `path` names
/// it): `Ok(Some(_))` when it is acknowledged from the spool, `Ok(None)` when it must be pushed
/// synchronously (archived already, or the spool is full). The spooled copy is 0600.
pub fn spool(
    app: &Coffre,
    source: &str,
    name: &crate::format::wal::WalName,
    (path, file): (&Path, &std::fs::File),
) -> Result<Option<Spooled>, WalError> {
    let archived = app.catalog.has_wal(source, name.as_str()).unwrap_or(true);
    if archived {
        return Ok(None);
    }
    let bytes = read_open(path, file)?;
    let dir = spool_dir(app, source);
    let werr = |source| WalError::Write {
        path: dir.clone(),
        source,
    };
    crate::fsutil::create_private_dir(&dir).map_err(werr)?;
    let dest = dir.join(name.as_str());
    if let Ok(existing) = std::fs::read(&dest) {
        if existing == bytes {
            return Ok(Some(Spooled {
                name: name.to_string(),
                spooled: true,
                already: true,
            }));
        }
        tracing::error!(source, wal = %name, "a WAL file was pushed again with different bytes while its first version waits in the spool: refused");
        return Err(WalError::SpoolConflict(name.to_string()));
    }
    let max = app
        .config
        .source(source)
        .and_then(|s| s.pitr.as_ref())
        .map(|p| p.spool_max.as_u64())
        .unwrap_or(0);
    if depth(app, source).bytes + bytes.len() as u64 > max {
        tracing::warn!(source, wal = %name, "the WAL spool is full (spool-max): archiving synchronously");
        return Ok(None);
    }
    write_atomically(&dest, &bytes)?;
    WAKE.notify_one();
    Ok(Some(Spooled {
        name: name.to_string(),
        spooled: true,
        already: false,
    }))
}

/// Archive every spooled file of every source, oldest names first, `archive-parallel` at a
/// time (each one in every store); a file leaves the spool only once it is committed in
/// `min-sites` sites. Returns (archived, failures).
pub async fn drain(app: &Coffre, actor: &str) -> (usize, Vec<String>) {
    let (mut done, mut failures) = (0, Vec::new());
    for s in app.config.sources.iter().filter(|s| s.pitr.is_some()) {
        let parallel = s.pitr.as_ref().map_or(1, |p| p.archive_parallel);
        let dir = spool_dir(app, &s.name);
        let files: Vec<PathBuf> = spooled_files(&dir).into_iter().map(|(p, _)| p).collect();
        let (archived, failed) = in_batches(&files, parallel, |path| async move {
            let file = open_wal_file(path)?;
            crate::ops::wal::archive::push(app, &s.name, path, &file, actor)
                .await
                .map(|_| ())
        })
        .await;
        for path in &archived {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(error = %e, path = %path.display(), "archived WAL file left in the spool");
            }
        }
        if !archived.is_empty() {
            let _ = crate::fsutil::sync_dir(&dir);
        }
        done += archived.len();
        failures.extend(failed);
    }
    (done, failures)
}

/// Run `push` over `files` in name order, up to `parallel` at once; a batch with a failure ends
/// the run (the stores are likely down for the next files too). Returns the files pushed and
/// the failures.
async fn in_batches<'a, F, Fut, E>(
    files: &'a [PathBuf],
    parallel: usize,
    push: F,
) -> (Vec<&'a Path>, Vec<String>)
where
    F: Fn(&'a Path) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    for batch in files.chunks(parallel.max(1)) {
        let pending = futures::stream::FuturesUnordered::new();
        for p in batch {
            let path = p.as_path();
            let f = push(path);
            pending.push(async move { (path, f.await) });
        }
        let results: Vec<(&Path, Result<(), E>)> = pending.collect().await;
        let before = failures.len();
        for (path, r) in results {
            match r {
                Ok(()) => done.push(path),
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
        if failures.len() > before {
            break;
        }
    }
    done.sort();
    (done, failures)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn spooled_files_are_archived_several_at_once_and_a_failed_batch_ends_the_round() {
        let files: Vec<PathBuf> = (1..=10)
            .map(|i| PathBuf::from(format!("/spool/{i:024X}")))
            .collect();
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let push = |p: &std::path::Path| {
            let fail = p.ends_with(format!("{:024X}", 6));
            let (now, most) = (&now, &most);
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                if fail {
                    Err("store b: unreachable".to_string())
                } else {
                    Ok(())
                }
            }
        };
        let (done, failures) = super::in_batches(&files, 4, push).await;
        // Four in flight at once; the batch of 5..=8 has the failure: 1..=4 and 5, 7, 8 are
        // archived (and leave the spool), 6 stays, and 9 and 10 wait for the next round.
        assert_eq!(most.load(Ordering::SeqCst), 4);
        let names: Vec<String> = done
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let want: Vec<String> = [1, 2, 3, 4, 5, 7, 8]
            .iter()
            .map(|i| format!("{i:024X}"))
            .collect();
        assert_eq!(names, want);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].contains("000000000000000000000006: store b: unreachable"),
            "{failures:?}"
        );
        // One at a time when archive-parallel = 1.
        most.store(0, Ordering::SeqCst);
        let (done, _) = super::in_batches(&files[..3], 1, push).await;
        assert_eq!(done.len(), 3);
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
