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

/// Why the daemon refuses a file descriptor a caller passed.
#[derive(Debug, thiserror::Error)]
pub enum PassedFileError {
    #[error("cannot stat the file passed: {0}")]
    Stat(std::io::Error),
    #[error("the descriptor passed is not a regular file")]
    NotRegular,
    #[error("the file passed is not empty ({len} bytes)")]
    NotEmpty { len: u64 },
    #[error("the file passed has {len} bytes, more than the {max} accepted")]
    TooLarge { len: u64, max: u64 },
    #[error("the file passed is not open for writing")]
    NotForWriting,
    #[error("the file passed is open for appending")]
    Appending,
    #[error("the file passed is not open for reading")]
    NotForReading,
    #[error("cannot read the flags of the file passed: {0}")]
    Flags(nix::errno::Errno),
    #[error("cannot stat the file system of the file passed: {0}")]
    StatFs(nix::errno::Errno),
    #[error("the file passed is a kernel interface (procfs, sysfs, ...), not a file")]
    KernelInterface,
}

/// The file of a descriptor a caller passed (the daemon's control socket, `wal-fetch`), if it
/// is an empty regular file open for writing and not appending: the only kind of file the
/// daemon writes for a caller.
pub fn empty_file_to_write(fd: std::os::fd::OwnedFd) -> Result<std::fs::File, PassedFileError> {
    use nix::fcntl::OFlag;
    let f = std::fs::File::from(fd);
    let m = f.metadata().map_err(PassedFileError::Stat)?;
    if !m.is_file() {
        return Err(PassedFileError::NotRegular);
    }
    if m.len() != 0 {
        return Err(PassedFileError::NotEmpty { len: m.len() });
    }
    // Kernel interfaces show "empty regular files" too; a WAL file never belongs there.
    not_a_kernel_interface(&f)?;
    let flags = open_flags(&f)?;
    let mode = flags & OFlag::O_ACCMODE;
    if mode != OFlag::O_WRONLY && mode != OFlag::O_RDWR {
        return Err(PassedFileError::NotForWriting);
    }
    if flags.contains(OFlag::O_APPEND) {
        return Err(PassedFileError::Appending);
    }
    Ok(f)
}

/// The flags a passed descriptor was opened with (access mode, append).
fn open_flags(f: &std::fs::File) -> Result<nix::fcntl::OFlag, PassedFileError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(f, FcntlArg::F_GETFL)
        .map(OFlag::from_bits_truncate)
        .map_err(PassedFileError::Flags)
}

/// Refuse a file on a kernel interface (procfs, sysfs, cgroup, ...): their files look like
/// regular files, and reading or writing them acts on the kernel, not on data.
fn not_a_kernel_interface(f: &std::fs::File) -> Result<(), PassedFileError> {
    use nix::sys::statfs::*;
    let kernel = [
        PROC_SUPER_MAGIC,
        SYSFS_MAGIC,
        CGROUP_SUPER_MAGIC,
        CGROUP2_SUPER_MAGIC,
        SECURITYFS_MAGIC,
        SELINUX_MAGIC,
        SMACK_MAGIC,
        DEBUGFS_MAGIC,
        TRACEFS_MAGIC,
        BPF_FS_MAGIC,
        NSFS_MAGIC,
    ];
    let fs = fstatfs(f).map_err(PassedFileError::StatFs)?;
    if kernel.contains(&fs.filesystem_type()) {
        return Err(PassedFileError::KernelInterface);
    }
    Ok(())
}

/// The file of a descriptor a caller passed to be read (the daemon's control socket,
/// `wal-push`), if it is a regular file of at most `max` bytes, open for reading, and not on a
/// kernel interface: the only kind of file the daemon reads for a caller. It is read with
/// positioned reads, so the caller's file offset does not matter.
pub fn file_to_read(fd: std::os::fd::OwnedFd, max: u64) -> Result<std::fs::File, PassedFileError> {
    use nix::fcntl::OFlag;
    let f = std::fs::File::from(fd);
    let m = f.metadata().map_err(PassedFileError::Stat)?;
    if !m.is_file() {
        return Err(PassedFileError::NotRegular);
    }
    if m.len() > max {
        return Err(PassedFileError::TooLarge { len: m.len(), max });
    }
    not_a_kernel_interface(&f)?;
    let mode = open_flags(&f)? & OFlag::O_ACCMODE;
    if mode != OFlag::O_RDONLY && mode != OFlag::O_RDWR {
        return Err(PassedFileError::NotForReading);
    }
    Ok(f)
}

/// All of `f` (at most `max` bytes) with positioned reads from offset 0.
pub fn read_all_at(f: &std::fs::File, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {max} accepted"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    let mut at = 0usize;
    while at < buf.len() {
        match f.read_at(&mut buf[at..], at as u64) {
            Ok(0) => {
                return Err(std::io::Error::other(format!(
                    "the file shrank while it was read ({at} of {len} bytes)"
                )))
            }
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // A file that grew while it was read is not the file that was sized.
    if f.metadata()?.len() != len {
        return Err(std::io::Error::other(
            "the file changed size while it was read",
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon writes only into an empty regular file open for writing.
    #[test]
    fn only_an_empty_regular_file_open_for_writing_is_written_into() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let ok = std::fs::File::create_new(&empty).unwrap();
        assert!(empty_file_to_write(ok.into()).is_ok());
        let full = dir.path().join("full");
        std::fs::write(&full, b"already here").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&full).unwrap();
        let e = empty_file_to_write(f.into()).unwrap_err().to_string();
        assert!(e.contains("not empty (12 bytes)"), "{e}");
        let ro = std::fs::File::open(&empty).unwrap();
        let e = empty_file_to_write(ro.into()).unwrap_err().to_string();
        assert!(e.contains("not open for writing"), "{e}");
        let ap = std::fs::OpenOptions::new()
            .append(true)
            .open(&empty)
            .unwrap();
        let e = empty_file_to_write(ap.into()).unwrap_err().to_string();
        assert!(e.contains("appending"), "{e}");
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = empty_file_to_write(r).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let d = std::fs::File::open(dir.path()).unwrap();
        let e = empty_file_to_write(d.into()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // The caller's own /proc files are regular, empty and its own.
        let p = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/oom_score_adj")
            .unwrap();
        let e = empty_file_to_write(p.into()).unwrap_err().to_string();
        assert!(e.contains("kernel interface"), "{e}");
    }

    /// The daemon reads for a caller only a regular file open for reading, bounded, and not a
    /// kernel interface; positioned reads ignore the caller's offset.
    #[test]
    fn only_a_bounded_regular_file_open_for_reading_is_read() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        std::fs::write(&wal, b"0123456789").unwrap();
        let mut f = std::fs::File::open(&wal).unwrap();
        f.seek(SeekFrom::Start(7)).unwrap();
        let f = file_to_read(f.into(), 10).unwrap();
        assert_eq!(read_all_at(&f, 10).unwrap(), b"0123456789");
        let e = file_to_read(std::fs::File::open(&wal).unwrap().into(), 9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 9 accepted"), "{e}");
        let wo = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        let e = file_to_read(wo.into(), 10).unwrap_err().to_string();
        assert!(e.contains("not open for reading"), "{e}");
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = file_to_read(r, 10).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let d = std::fs::File::open(dir.path()).unwrap();
        let e = file_to_read(d.into(), 10).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let p = std::fs::File::open("/proc/self/environ").unwrap();
        let e = file_to_read(p.into(), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("kernel interface"), "{e}");
    }
}
