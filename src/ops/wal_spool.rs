//! The asynchronous WAL spool (`[source.pitr] archive-async = true`, through the daemon): a
//! pushed WAL file is acknowledged once it is written, fsynced and renamed into
//! `<state-dir>/spool/<source>/`; the daemon's `wal-spool` worker then archives it like a
//! synchronous push (every store, `min-sites`) and removes it from the spool only when that
//! succeeded. A spooled file survives a crash or a kill -9 (it was fsynced before the ack) and
//! is archived after the restart; `wal-fetch` serves it from the spool meanwhile.
//!
//! The guarantees of a synchronous push hold: a name archived already (in the catalog's index)
//! goes the synchronous way, which compares its bytes; a name spooled already with other bytes
//! is refused. When the spool would grow past `spool-max`, the push is synchronous again.

use std::path::{Path, PathBuf};

use crate::app::Coffre;
use crate::format::wal::WalName;
use crate::ops::wal::{read_bounded, wal_name, write_atomically, WalError};

/// Wakes the `wal-spool` worker as soon as a file is spooled.
pub static WAKE: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

pub fn spool_dir(app: &Coffre, source: &str) -> PathBuf {
    app.config.state_dir.join("spool").join(source)
}

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

/// Spool the WAL file at `path`: `Ok(Some(_))` when it is acknowledged from the spool,
/// `Ok(None)` when it must be pushed synchronously (archived already, or the spool is full).
pub fn spool(app: &Coffre, source: &str, path: &Path) -> Result<Option<Spooled>, WalError> {
    crate::ops::wal::archiving_source(app, source)?;
    let name = wal_name(path)?;
    let archived = app.catalog.has_wal(source, name.as_str()).unwrap_or(true);
    if archived {
        return Ok(None);
    }
    let bytes = read_bounded(path)?;
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

/// A spooled WAL file, for `wal-fetch` before it reached the stores.
pub fn read(app: &Coffre, source: &str, name: &WalName) -> Option<Vec<u8>> {
    std::fs::read(spool_dir(app, source).join(name.as_str())).ok()
}

/// Archive every spooled file of every source, oldest name first; a file leaves the spool only
/// once it is committed in `min-sites` sites. Per source, the first failure stops the round
/// (the stores are likely down for the next files too). Returns (archived, failures).
pub async fn drain(app: &Coffre, actor: &str) -> (usize, Vec<String>) {
    let (mut done, mut failures) = (0, Vec::new());
    for s in app.config.sources.iter().filter(|s| s.pitr.is_some()) {
        let dir = spool_dir(app, &s.name);
        for (path, _) in spooled_files(&dir) {
            match crate::ops::wal::push(app, &s.name, &path, actor).await {
                Ok(_) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(error = %e, path = %path.display(), "archived WAL file left in the spool");
                    }
                    let _ = crate::fsutil::sync_dir(&dir);
                    done += 1;
                }
                Err(e) => {
                    failures.push(format!("{}: {e}", path.display()));
                    break;
                }
            }
        }
    }
    (done, failures)
}
