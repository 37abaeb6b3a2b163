//! A restored PostgreSQL data folder is untrusted data: whoever could write into a source
//! folder chose its content, links included. This module owns every read and write coffre makes
//! of its control files (PG_VERSION, backup_label, postgresql.auto.conf, recovery.signal,
//! global/pg_control, postmaster.pid, coffre-replay.log): each is opened relative to one
//! `O_DIRECTORY|O_NOFOLLOW` handle of the folder with `O_NOFOLLOW` (openat semantics), checked to
//! be a regular file on the open descriptor, and written durably through the descriptors. A
//! symlink or anything but a regular file where one of them belongs is [`Planted`]: a base
//! backup never holds one, so the backup is suspicious.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// What went wrong with a control file of a restored folder.
#[derive(Debug)]
pub enum DirError {
    /// The file is not there.
    Missing(PathBuf),
    /// A symlink, or not a regular file (or, for the folder itself, not a directory).
    Planted(PathBuf),
    /// Any other failure of the file system.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for DirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirError::Missing(p) => write!(f, "{} does not exist", p.display()),
            DirError::Planted(p) => write!(
                f,
                "{} is a symlink or not a regular file: a PostgreSQL base backup never has one there, so this backup is suspicious (a link planted to make coffre write or read elsewhere). coffre wrote nothing through it: check who could write into the source folder before it was protected, and restore another snapshot",
                p.display()
            ),
            DirError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for DirError {}

/// A data folder opened once; every control file is reached beneath it.
pub struct DataDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Flags of every open: never through a symlink, never blocking on a FIFO planted in.
fn base_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY
}

impl DataDir {
    /// Open `path` as a directory, refusing a symlink in its last component.
    pub fn open(path: &Path) -> Result<DataDir, DirError> {
        let flags = base_flags() | OFlags::DIRECTORY | OFlags::RDONLY;
        let fd = rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty())
            .map_err(|e| classify(path, e))?;
        Ok(DataDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened with (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn full(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The sub-folder `name`, not followed through a symlink.
    pub fn sub(&self, name: &str) -> Result<DataDir, DirError> {
        let flags = base_flags() | OFlags::DIRECTORY | OFlags::RDONLY;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty())
            .map_err(|e| classify(&self.full(name), e))?;
        Ok(DataDir {
            fd,
            path: self.full(name),
        })
    }

    /// Open the regular file `name` with `flags` (plus the no-follow flags) and check it.
    fn open_regular(&self, name: &str, flags: OFlags, mode: u32) -> Result<File, DirError> {
        let full = self.full(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            base_flags() | flags,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| classify(&full, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| DirError::Io(full.clone(), e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(DirError::Planted(full));
        }
        Ok(File::from(fd))
    }

    /// The regular file `name` exists (a symlink or anything else is refused).
    pub fn check_regular(&self, name: &str) -> Result<(), DirError> {
        self.open_regular(name, OFlags::RDONLY, 0).map(drop)
    }

    /// The first `limit` bytes of the regular file `name`.
    pub fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, DirError> {
        let f = self.open_regular(name, OFlags::RDONLY, 0)?;
        let mut bytes = Vec::new();
        f.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| DirError::Io(self.full(name), e))?;
        Ok(bytes)
    }

    /// Append `bytes` to the regular file `name` (created 0600 when missing), fsynced.
    pub fn append(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE;
        let mut f = self.open_regular(name, flags, 0o600)?;
        let io = |e| DirError::Io(self.full(name), e);
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Create `name` anew (`O_CREAT|O_EXCL`, 0600): a regular file already there is removed
    /// first; a symlink or anything else is refused. The file is fsynced (empty).
    pub fn create_fresh(&self, name: &str) -> Result<File, DirError> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        match self.open_regular(name, flags, 0o600) {
            Err(DirError::Io(_, e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
            r => return r,
        }
        let full = self.full(name);
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| DirError::Io(full.clone(), e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(DirError::Planted(full));
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| DirError::Io(full.clone(), e.into()))?;
        let f = self.open_regular(name, flags, 0o600)?;
        f.sync_all().map_err(|e| DirError::Io(full, e))?;
        Ok(f)
    }

    /// `name` is missing, or a regular file (never followed through a symlink).
    pub fn absent_or_regular(&self, name: &str) -> Result<(), DirError> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(DirError::Io(self.full(name), e.into())),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => Ok(()),
            Ok(_) => Err(DirError::Planted(self.full(name))),
        }
    }

    /// `name` is there, as anything (a symlink is not followed).
    pub fn has(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// fsync the folder itself (its entries' creation and removal).
    pub fn sync(&self) -> Result<(), DirError> {
        rustix::fs::fsync(&self.fd).map_err(|e| DirError::Io(self.path.clone(), e.into()))
    }
}

fn classify(path: &Path, e: Errno) -> DirError {
    match e {
        Errno::NOENT => DirError::Missing(path.to_path_buf()),
        // O_NOFOLLOW on a symlink, O_DIRECTORY on a file, O_NONBLOCK on a FIFO with no reader
        // opened for writing, a socket.
        Errno::LOOP | Errno::NOTDIR | Errno::NXIO | Errno::OPNOTSUPP => {
            DirError::Planted(path.to_path_buf())
        }
        e => DirError::Io(path.to_path_buf(), e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_files_are_never_reached_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        for name in ["a", "b", "c"] {
            std::os::unix::fs::symlink(&outside, data.join(name)).unwrap();
        }
        std::fs::write(data.join("plain"), "old").unwrap();
        let dir = DataDir::open(&data).unwrap();
        assert!(matches!(dir.read("a", 10), Err(DirError::Planted(_))));
        assert!(matches!(dir.append("b", b"x"), Err(DirError::Planted(_))));
        assert!(matches!(dir.create_fresh("c"), Err(DirError::Planted(_))));
        assert!(matches!(dir.read("none", 10), Err(DirError::Missing(_))));
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        // A regular file is replaced by an empty one.
        dir.create_fresh("plain").unwrap();
        assert_eq!(std::fs::read(data.join("plain")).unwrap(), b"");
        assert!(dir.has("a") && !dir.has("none"));
        // The folder itself as a symlink.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        assert!(matches!(DataDir::open(&link), Err(DirError::Planted(_))));
        std::os::unix::fs::symlink(&data, data.join("sub")).unwrap();
        assert!(matches!(dir.sub("sub"), Err(DirError::Planted(_))));
    }
}
