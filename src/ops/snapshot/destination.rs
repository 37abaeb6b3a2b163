//! Where restored bytes land: one target that must not exist, written through a private
//! temporary name beside it (hidden, created exclusively, so never through a link planted
//! there), made durable, and moved into place only when every check passed
//! (`renameat2(RENAME_NOREPLACE)`, then the folder fsynced); on any failure, and when dropped
//! unfinished, nothing is left behind. Every writer of restored bytes goes through a
//! [`RestoreDestination`]: a local restore (`ops::snapshot::restore`), the caller of the control socket
//! writing what the daemon streams or wrote into its file (`cli::client`), and `wal-fetch`
//! writing a WAL segment into `pg_wal` in its own process.
//!
//! May call: `fsutil`. It owns no data format: the bytes come from its callers.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One restore's destination: `to`, which must not exist, and the temporary name it is written
/// under until [`finish`](RestoreDestination::finish).
#[derive(Debug)]
pub struct RestoreDestination {
    to: PathBuf,
    tmp: Option<PathBuf>,
    done: bool,
}

impl RestoreDestination {
    pub fn new(to: impl Into<PathBuf>) -> RestoreDestination {
        RestoreDestination {
            to: to.into(),
            tmp: None,
            done: false,
        }
    }

    /// The target.
    pub fn to(&self) -> &Path {
        &self.to
    }

    /// The temporary name for `tag` beside the target (`.<name>.coffre-partial-<tag>`), cleared
    /// of what a killed run left there: a file or folder is then created at it exclusively.
    /// Removed again unless [`finish`](RestoreDestination::finish)ed.
    pub fn scratch(&mut self, tag: &str) -> PathBuf {
        let tmp = partial_path_tagged(&self.to, tag);
        remove_any(&tmp);
        if let Some(old) = self.tmp.replace(tmp.clone()) {
            if old != tmp {
                remove_any(&old);
            }
        }
        tmp
    }

    /// The temporary name in use, if any.
    pub fn scratch_path(&self) -> Option<&Path> {
        self.tmp.as_deref()
    }

    /// An empty private file (0600) at the temporary name for `tag`, created exclusively.
    pub fn create_file(&mut self, tag: &str) -> io::Result<std::fs::File> {
        let tmp = self.scratch(tag);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
    }

    /// Write all of `bytes` here, in this process (`wal-fetch` without a daemon): into a
    /// private file at the temporary name, fsynced, then moved into place.
    pub fn write_whole(mut self, tag: &str, bytes: &[u8]) -> io::Result<()> {
        let mut f = self.create_file(tag)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        self.finish()
    }

    /// Every check passed: move what was written into place, never over anything created at
    /// the target meanwhile, and make the rename durable. On failure nothing is left.
    pub fn finish(&mut self) -> io::Result<()> {
        let Some(tmp) = self.tmp.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "nothing was written",
            ));
        };
        match rename_into_place(&tmp, &self.to) {
            Ok(()) => {
                self.tmp = None;
                self.done = true;
                Ok(())
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// Something failed: remove what was written.
    pub fn abort(&mut self) {
        if let Some(t) = self.tmp.take() {
            remove_any(&t);
        }
    }
}

impl Drop for RestoreDestination {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}

/// The temporary name a restore writes before its final rename: hidden, beside the target,
/// `.<name>.coffre-partial-<tag>` (the snapshot id, or `fetch`).
pub fn partial_path_tagged(to: &Path, tag: &str) -> PathBuf {
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    parent.join(format!(".{name}.coffre-partial-{tag}"))
}

pub fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Move a finished restore into place; never replaces anything created at the target meanwhile
/// (`renameat2(RENAME_NOREPLACE)`), then makes the rename durable.
pub fn rename_into_place(tmp: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        tmp,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| {
        if e == nix::errno::Errno::EEXIST {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} appeared while the restore ran: coffre never overwrites",
                    to.display()
                ),
            )
        } else {
            io::Error::from(e)
        }
    })?;
    crate::fsutil::sync_dir(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_destination_leaves_nothing_and_a_finished_one_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("000000010000000000000001");
        {
            let mut d = RestoreDestination::new(&to);
            let mut f = d.create_file("fetch").unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        RestoreDestination::new(&to)
            .write_whole("fetch", b"segment")
            .unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"segment");
        let e = RestoreDestination::new(&to)
            .write_whole("fetch", b"other")
            .unwrap_err();
        assert!(e.to_string().contains("never overwrites"), "{e}");
        assert_eq!(std::fs::read(&to).unwrap(), b"segment");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
