//! Reading a snapshot as it landed: a single file, or a directory turned into one tar stream in a
//! stable (byte-wise sorted) order, and a fingerprint to detect a snapshot that changes or
//! vanishes while it is read.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// (relative path, size, mtime ns, inode) of every entry; equal before and after reading means the
/// snapshot did not change while it was read.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, i128, u64)>);

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

pub fn fingerprint(path: &Path) -> io::Result<Fingerprint> {
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

/// A short description of what changed (paths are the snapshot's own file names).
pub fn describe_change(before: &Fingerprint, after: &Fingerprint) -> String {
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

/// Write `dir` as a tar stream in a stable order (sorted by path), keeping modes, symlinks and
/// mtimes; owners are written numerically.
pub fn write_tar<W: Write>(dir: &Path, out: W) -> io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for rel in walk(dir)?.into_iter().skip(1) {
        b.append_path_with_name(dir.join(&rel), &rel)?;
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
}
