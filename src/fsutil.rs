//! File-system helpers every layer uses: private folders, durable creates and renames.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Create a folder (and parents) with mode 0700 for the leaf.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// fsync the parent folder of `path` so a create or rename is durable.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Write a file atomically: temp file, fsync, rename, fsync folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// What to do about an SQLite error of a state-folder database, when the cause is the disk or
/// the folder: a full or failing disk is the common cause of I/O errors.
pub(crate) fn db_hint(e: &rusqlite::Error) -> Option<&'static str> {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) | Some(rusqlite::ErrorCode::SystemIoFailure) => Some(
            ". The state folder's disk is full or failing: free space (nothing was committed by this command)",
        ),
        Some(rusqlite::ErrorCode::ReadOnly) | Some(rusqlite::ErrorCode::PermissionDenied) => {
            Some(". The state folder is not writable: check its permissions")
        }
        _ => None,
    }
}
