//! Reading a snapshot as it landed: a single file, or a directory turned into one tar stream in a
//! stable (byte-wise sorted) order, and a fingerprint to detect a snapshot that changes or
//! vanishes while it is read. Also which names in a source folder are never snapshots and the
//! identity the intake's journal keys an entry by ([`key_of`]), shared by the daemon's intake and
//! `coffre backup`.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// (relative path, size, mtime ns, inode) of every entry; equal before and after reading means the
/// snapshot did not change while it was read.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, i128, u64)>);

impl Fingerprint {
    /// Inode of the snapshot itself (the file, or the root of the directory).
    pub(crate) fn root_ino(&self) -> Option<u64> {
        self.0.first().map(|e| e.3)
    }

    /// The bytes the snapshot's entries hold (a directory's tar stream is a little larger).
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|e| e.1).sum()
    }
}

/// Flags of every open of a snapshot's files: never through a symlink (a symlink swapped in
/// after the checks would make coffre read, and seal into the stores, whatever it points at),
/// never blocking on a FIFO swapped in.
fn read_flags() -> i32 {
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits()
}

fn swapped(path: &Path, what: &str) -> io::Error {
    io::Error::other(format!(
        "{} is no longer {what}: it was replaced while coffre read it (a symlink or another file swapped in); the snapshot is skipped",
        path.display()
    ))
}

/// Open a snapshot file for reading, without following a symlink, and check on the open
/// descriptor that it is a regular file.
pub(crate) fn open_file(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(read_flags())
        .open(path)
        .map_err(|e| nofollow_error(path, e))?;
    if !f.metadata()?.is_file() {
        return Err(swapped(path, "a regular file"));
    }
    Ok(f)
}

/// Open a snapshot directory, without following a symlink, and check on the open descriptor
/// that it is a directory.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(read_flags() | OFlag::O_DIRECTORY.bits())
        .open(path)
        .map_err(|e| nofollow_error(path, e))?;
    if !f.metadata()?.is_dir() {
        return Err(swapped(path, "a directory"));
    }
    Ok(f)
}

fn nofollow_error(path: &Path, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) if code == nix::libc::ELOOP || code == nix::libc::ENOTDIR => {
            swapped(path, "what coffre checked")
        }
        _ => e,
    }
}

/// The open descriptor is the inode `expected` (from the fingerprint taken before reading).
pub(crate) fn check_identity(f: &File, expected: Option<u64>, path: &Path) -> io::Result<()> {
    match expected {
        Some(ino) if f.metadata()?.ino() != ino => Err(swapped(path, "the entry coffre checked")),
        _ => Ok(()),
    }
}

/// Open the regular file `rel` beneath the directory `root` is open on, following no symlink
/// on the way (openat2 with RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH; on a kernel without openat2,
/// only the last component is protected).
pub(crate) fn open_beneath(root: &File, dir: &Path, rel: &Path) -> io::Result<File> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let flags = OFlag::from_bits_truncate(read_flags()) | OFlag::O_RDONLY;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    let full = dir.join(rel);
    let f = match openat2(root, rel, how) {
        Ok(fd) => File::from(fd),
        Err(nix::errno::Errno::ENOSYS) | Err(nix::errno::Errno::EPERM) => {
            // No openat2 (kernel before 5.6, or refused by a seccomp filter).
            let fd = nix::fcntl::openat(root, rel, flags, nix::sys::stat::Mode::empty())
                .map_err(|e| nofollow_error(&full, io::Error::from(e)))?;
            File::from(fd)
        }
        Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::EXDEV) => {
            return Err(swapped(&full, "what coffre checked"))
        }
        Err(e) => return Err(io::Error::from(e)),
    };
    if !f.metadata()?.is_file() {
        return Err(swapped(&full, "a regular file"));
    }
    Ok(f)
}

fn stat(p: &Path) -> io::Result<(u64, i128, u64)> {
    let m = std::fs::symlink_metadata(p)?;
    Ok((
        m.len(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.ino(),
    ))
}

/// Every path under `root` (root first), sorted by bytes, without following symlinks.
pub fn walk(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![PathBuf::new()];
    let mut i = 0;
    while i < out.len() {
        let rel = out[i].clone();
        let full = root.join(&rel);
        if std::fs::symlink_metadata(&full)?.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&full)?
                .map(|e| e.map(|e| rel.join(e.file_name())))
                .collect::<io::Result<_>>()?;
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    let (root_entry, mut rest) = (out[0].clone(), out.split_off(1));
    rest.sort();
    let mut all = vec![root_entry];
    all.extend(rest);
    Ok(all)
}

pub(crate) fn fingerprint(path: &Path) -> io::Result<Fingerprint> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut v = Vec::new();
        for rel in walk(path)? {
            let (len, mtime, ino) = stat(&path.join(&rel))?;
            let len = if std::fs::symlink_metadata(path.join(&rel))?.is_dir() {
                0
            } else {
                len
            };
            v.push((rel, len, mtime, ino));
        }
        Ok(Fingerprint(v))
    } else {
        let (len, mtime, ino) = stat(path)?;
        Ok(Fingerprint(vec![(PathBuf::new(), len, mtime, ino)]))
    }
}

/// The fingerprint of a file open already (size, mtime, inode of the descriptor).
pub(crate) fn fingerprint_open(f: &File) -> io::Result<Fingerprint> {
    let m = f.metadata()?;
    let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    Ok(Fingerprint(vec![(PathBuf::new(), m.len(), mtime, m.ino())]))
}

/// Reads a file from offset 0 with positioned reads (a descriptor a caller passed shares its
/// offset with the caller's: this never moves it).
pub(crate) struct AtReader<'a> {
    file: &'a File,
    at: u64,
}

impl<'a> AtReader<'a> {
    pub(crate) fn new(file: &'a File) -> AtReader<'a> {
        AtReader { file, at: 0 }
    }
}

impl io::Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A short description of what changed (paths are the snapshot's own file names).
pub(crate) fn describe_change(before: &Fingerprint, after: &Fingerprint) -> String {
    for (a, b) in before.0.iter().zip(after.0.iter()) {
        if a != b {
            let name = if a.0.as_os_str().is_empty() {
                "the file".to_string()
            } else {
                a.0.display().to_string()
            };
            return if a.0 != b.0 {
                format!("entries appeared or vanished near {name}")
            } else if a.1 != b.1 {
                format!("{name}: size {} -> {}", a.1, b.1)
            } else {
                format!("{name} was modified or replaced")
            };
        }
    }
    format!("{} entries before, {} after", before.0.len(), after.0.len())
}

/// Suffix of the marker file beside a complete file snapshot (`X.done`, `complete = "marker"`).
pub const MARKER_SUFFIX: &str = ".done";

/// True for names that are never snapshots: temporary names, dot-files and markers.
pub(crate) fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".partial")
        || name.ends_with(".part")
        || name.ends_with(MARKER_SUFFIX)
        || name.ends_with('~')
}

/// Total size and newest mtime of a file or directory tree (the journal key of a directory uses
/// these, its inode and its path).
///
/// The entry itself is opened without following a symlink and its identity (inode, size, mtime)
/// read from the open descriptor: a symlink swapped in after the folder was listed is refused,
/// not followed.
pub(crate) fn key_of(path: &Path) -> std::io::Result<crate::journal::Key> {
    let listed = std::fs::symlink_metadata(path)?;
    let opened = if listed.is_dir() {
        open_dir(path)?
    } else if listed.is_file() {
        open_file(path)?
    } else {
        return Err(std::io::Error::other(format!(
            "{} is neither a regular file nor a directory",
            path.display()
        )));
    };
    let meta = opened.metadata()?;
    if meta.ino() != listed.ino() || meta.is_dir() != listed.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} was replaced while coffre looked at it",
            path.display()
        )));
    }
    let (mut size, mut mtime) = (0u64, meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
    if meta.is_dir() {
        for rel in walk(path)? {
            let m = std::fs::symlink_metadata(path.join(&rel))?;
            if !m.is_dir() {
                size += m.len();
            }
            mtime = mtime.max(m.mtime() * 1_000_000_000 + m.mtime_nsec());
        }
    } else {
        size = meta.len();
    }
    Ok(crate::journal::Key {
        path: path.to_path_buf(),
        size,
        mtime_ns: mtime,
        ino: meta.ino(),
    })
}

/// Write `dir` as a tar stream in a stable order (sorted by path), keeping modes, symlinks and
/// mtimes; owners are written numerically.
#[cfg(test)]
pub(crate) fn write_tar<W: Write>(dir: &Path, out: W) -> io::Result<()> {
    let root = open_dir(dir)?;
    write_tar_at(&root, dir, out)
}

/// [`write_tar`] of the directory `root` is open on (`dir` is its path). Regular files are read
/// through descriptors opened beneath `root` without following symlinks, each checked to be the
/// inode listed; symlinks are stored as symlinks, never followed.
pub(crate) fn write_tar_at<W: Write>(root: &File, dir: &Path, out: W) -> io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for rel in walk(dir)?.into_iter().skip(1) {
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full)?;
        if meta.is_file() {
            let mut f = open_beneath(root, dir, &rel)?;
            check_identity(&f, Some(meta.ino()), &full)?;
            b.append_file(&rel, &mut f)?;
        } else {
            b.append_path_with_name(&full, &rel)?;
        }
    }
    b.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_stable_and_fingerprint_sees_changes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("base");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("z.txt"), b"zz").unwrap();
        std::fs::write(root.join("a.txt"), b"aa").unwrap();
        std::fs::write(root.join("b/c/d"), b"dd").unwrap();
        let names = walk(&root).unwrap();
        let names: Vec<String> = names.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, vec!["", "a.txt", "b", "b/c", "b/c/d", "z.txt"]);
        let mut t1 = Vec::new();
        write_tar(&root, &mut t1).unwrap();
        let mut t2 = Vec::new();
        write_tar(&root, &mut t2).unwrap();
        assert_eq!(t1, t2);
        let f1 = fingerprint(&root).unwrap();
        std::fs::write(root.join("b/c/d"), b"ddd").unwrap();
        let f2 = fingerprint(&root).unwrap();
        assert_ne!(f1, f2);
        assert!(describe_change(&f1, &f2).contains("b/c/d"));
    }

    /// Issue 11, point 9: a symlink swapped in where a snapshot (or a file in it) was is never
    /// followed, and the open descriptor is checked.
    #[test]
    fn swapped_in_symlinks_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"not a snapshot").unwrap();
        let secret_dir = d.path().join("secret-dir");
        std::fs::create_dir(&secret_dir).unwrap();
        std::fs::write(secret_dir.join("x"), b"not a snapshot").unwrap();
        // A file snapshot replaced by a symlink.
        let snap = d.path().join("dump.sql");
        std::os::unix::fs::symlink(&secret, &snap).unwrap();
        let e = open_file(&snap).unwrap_err();
        assert!(
            e.to_string().contains("replaced while coffre read it"),
            "{e}"
        );
        // A directory snapshot replaced by a symlink to a directory.
        let snapdir = d.path().join("base");
        std::os::unix::fs::symlink(&secret_dir, &snapdir).unwrap();
        assert!(open_dir(&snapdir).is_err());
        assert!(write_tar(&snapdir, Vec::new()).is_err());
        // A directory where a file was expected, a FIFO: refused without blocking.
        assert!(open_file(d.path()).is_err());
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        assert!(open_file(&fifo)
            .unwrap_err()
            .to_string()
            .contains("regular file"));
        // Inside a snapshot, a sub-folder swapped for a symlink is not followed.
        let real = d.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("sub/f"), b"ok").unwrap();
        let root = open_dir(&real).unwrap();
        assert!(open_beneath(&root, &real, Path::new("sub/f")).is_ok());
        std::fs::remove_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&secret_dir, real.join("sub")).unwrap();
        assert!(open_beneath(&root, &real, Path::new("sub/x")).is_err());
        // A file replaced by another one after it was fingerprinted.
        let plain = d.path().join("plain");
        std::fs::write(&plain, b"one").unwrap();
        let before = fingerprint(&plain).unwrap();
        std::fs::write(d.path().join("other"), b"two").unwrap();
        std::fs::rename(d.path().join("other"), &plain).unwrap();
        let f = open_file(&plain).unwrap();
        assert!(check_identity(&f, before.root_ino(), &plain).is_err());
    }
}
