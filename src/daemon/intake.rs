//! Intake: which entries of a source folder are complete snapshots, and a crash-safe journal that
//! makes each one protected exactly once, across restarts and `kill -9`.
//!
//! Rules (per source, `complete = ...`):
//! - `marker`: a directory is complete once it holds `backup_manifest` (pg_basebackup writes it
//!   last); a file `X` once `X.done` exists beside it;
//! - `settled`: size and mtime (of every file, for a directory) unchanged for `settle-time`, and no
//!   process has a file open for writing (checked through /proc when permitted);
//! - `rename`: anything present with a final name is complete (writers rename into the folder).
//!
//! Temporary names (`*.tmp`, `*.partial`, `*.part`, dot-files) and markers are never snapshots.
//!
//! Journal invariant: an entry is keyed by (source, path, size, mtime, inode); it is `done` only
//! after the snapshot is committed in at least one store; an entry left `sealing` by a crash is
//! checked against the stores at start (its snapshot id is recorded first) and either marked done
//! or protected again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{CompleteRule, SourceConfig};
pub use crate::journal::{Journal, JournalError, JournalState, Key};

pub const MARKER_DIR: &str = "backup_manifest";
pub use crate::ops::snapshot::protect::source::MARKER_SUFFIX;
/// Which names are never snapshots, and the identity the journal keys an entry by: shared with
/// `coffre backup`, which records what it protected from a source's folder.
pub(crate) use crate::ops::snapshot::protect::source::{is_ignored_name, key_of};

/// True when some process has `path` (or a file under it) open for writing. Without permission
/// to read other processes' fds this sees only what it can, and the settle time does the rest.
pub(crate) fn open_for_writing(path: &Path) -> bool {
    let Ok(target) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !link.starts_with(&target) {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            if flags & 0o3 != 0 {
                return true;
            }
        }
    }
    false
}

/// Why a source folder cannot be scanned: which folder, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{} does not exist: coffre never creates a source folder; create it (writable by the dump user, readable by coffre) or fix source.path", .path.display())]
    Missing { path: PathBuf },
    #[error("{} is not readable by coffre (permission denied): give its account read and search access (e.g. the group coffre)", .path.display())]
    NotReadable { path: PathBuf },
    #[error("{} cannot be read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Decides completeness for one source, remembering when each entry was last seen changing.
pub struct SourceGate {
    source: SourceConfig,
    seen: HashMap<PathBuf, (Key, Instant)>,
}

impl SourceGate {
    pub fn new(source: SourceConfig) -> SourceGate {
        SourceGate {
            source,
            seen: HashMap::new(),
        }
    }

    pub fn source(&self) -> &SourceConfig {
        &self.source
    }

    /// The source folder, readable; an error names the folder, why it cannot be read and what
    /// to do (coffre never creates a source folder).
    pub(crate) fn open_folder(&self) -> Result<std::fs::ReadDir, FolderError> {
        let path = self.source.path.clone();
        match std::fs::read_dir(&self.source.path) {
            Ok(rd) => Ok(rd),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(FolderError::Missing { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(FolderError::NotReadable { path })
            }
            Err(source) => Err(FolderError::Read { path, source }),
        }
    }

    /// Complete snapshots in the folder now, with their keys ([`SourceGate::open_folder`]'s error
    /// when the folder cannot be read).
    pub fn scan(&mut self, now: Instant) -> Result<Vec<Key>, FolderError> {
        let rd = self.open_folder()?;
        let mut names: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| !is_ignored_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        names.sort();
        let mut out = Vec::new();
        let present: std::collections::HashSet<PathBuf> = names.iter().cloned().collect();
        self.seen.retain(|p, _| present.contains(p));
        for path in names {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !(meta.is_file() || meta.is_dir()) {
                continue;
            }
            let complete = match self.source.complete {
                CompleteRule::Marker => {
                    // Markers count only as what they are, never through a symlink.
                    if meta.is_dir() {
                        std::fs::symlink_metadata(path.join(MARKER_DIR)).is_ok_and(|m| m.is_file())
                    } else {
                        let mut m = path.clone().into_os_string();
                        m.push(MARKER_SUFFIX);
                        std::fs::symlink_metadata(Path::new(&m)).is_ok()
                    }
                }
                CompleteRule::Rename => true,
                CompleteRule::Settled => {
                    let Ok(key) = key_of(&path) else { continue };
                    let entry = self.seen.entry(path.clone()).or_insert((key.clone(), now));
                    if entry.0 != key {
                        *entry = (key, now);
                        false
                    } else {
                        now.duration_since(entry.1) >= self.source.settle_time
                            && !open_for_writing(&path)
                    }
                }
            };
            if complete {
                if let Ok(key) = key_of(&path) {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SnapshotId;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    fn source(dir: &Path, rule: CompleteRule) -> SourceConfig {
        SourceConfig {
            name: "emr".into(),
            path: dir.to_path_buf(),
            complete: rule,
            settle_time: Duration::from_secs(5),
            retention: Default::default(),
            drill: Default::default(),
            pitr: None,
        }
    }

    #[test]
    fn ignored_names() {
        for n in [".x", "a.tmp", "a.partial", "a.part", "a.sql.done", "a~"] {
            assert!(is_ignored_name(n), "{n}");
        }
        assert!(!is_ignored_name("emr.sql"));
    }

    #[test]
    fn marker_rule() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("emr.sql"), b"x").unwrap();
        std::fs::create_dir(d.path().join("base")).unwrap();
        let mut i = SourceGate::new(source(d.path(), CompleteRule::Marker));
        assert!(i.scan(Instant::now()).unwrap().is_empty());
        std::fs::write(d.path().join("emr.sql.done"), b"").unwrap();
        std::fs::write(d.path().join("base/backup_manifest"), b"{}").unwrap();
        let found: Vec<_> = i
            .scan(Instant::now())
            .unwrap()
            .into_iter()
            .map(|k| k.path)
            .collect();
        assert_eq!(found, vec![d.path().join("base"), d.path().join("emr.sql")]);
    }

    /// Issue 11, point 9: symlinks in the source folder (or as a marker) are never followed, and
    /// the journal key comes from the open descriptor.
    #[test]
    fn symlinks_are_not_snapshots_nor_markers() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("secret");
        std::fs::write(&target, b"x").unwrap();
        std::fs::create_dir(elsewhere.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("emr.sql")).unwrap();
        std::fs::write(d.path().join("emr.sql.done"), b"").unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("dir"), d.path().join("base")).unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("real/backup_manifest")).unwrap();
        let mut i = SourceGate::new(source(d.path(), CompleteRule::Rename));
        assert!(i
            .scan(Instant::now())
            .unwrap()
            .iter()
            .all(|k| k.path == d.path().join("real")));
        let mut i = SourceGate::new(source(d.path(), CompleteRule::Marker));
        assert!(i.scan(Instant::now()).unwrap().is_empty());
        assert!(key_of(&d.path().join("emr.sql")).is_err());
        assert!(key_of(&d.path().join("base")).is_err());
        let k = key_of(&d.path().join("real")).unwrap();
        assert_eq!(
            k.ino,
            std::fs::symlink_metadata(d.path().join("real"))
                .unwrap()
                .ino()
        );
    }

    /// Issue 13, 3.4: a missing source folder is an error that says coffre never creates one,
    /// and the scan does not create it.
    #[test]
    fn a_missing_source_folder_is_an_error_and_is_not_created() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        let mut i = SourceGate::new(source(&gone, CompleteRule::Rename));
        let e = i.scan(Instant::now()).unwrap_err().to_string();
        assert!(
            e.contains("does not exist: coffre never creates a source folder"),
            "{e}"
        );
        assert!(!gone.exists());
        std::fs::create_dir(&gone).unwrap();
        assert!(i.scan(Instant::now()).unwrap().is_empty());
    }

    #[test]
    fn settled_rule_waits_for_quiet_and_writers() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("emr.sql");
        std::fs::write(&f, b"x").unwrap();
        let mut i = SourceGate::new(source(d.path(), CompleteRule::Settled));
        let t0 = Instant::now();
        assert!(i.scan(t0).unwrap().is_empty());
        assert!(i.scan(t0 + Duration::from_secs(2)).unwrap().is_empty());
        // A change restarts the clock.
        std::fs::write(&f, b"xy").unwrap();
        assert!(i.scan(t0 + Duration::from_secs(6)).unwrap().is_empty());
        assert_eq!(i.scan(t0 + Duration::from_secs(12)).unwrap().len(), 1);
        // An open writer holds it back.
        let w = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        assert!(open_for_writing(&f));
        assert!(i.scan(t0 + Duration::from_secs(20)).unwrap().is_empty());
        drop(w);
        assert!(!open_for_writing(&f));
        assert_eq!(i.scan(t0 + Duration::from_secs(21)).unwrap().len(), 1);
    }

    #[test]
    fn journal_states_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.sqlite");
        let f = d.path().join("emr.sql");
        std::fs::write(&f, b"x").unwrap();
        let k = key_of(&f).unwrap();
        let id = SnapshotId::new();
        {
            let j = Journal::open(&p).unwrap();
            assert_eq!(j.get("emr", &k).unwrap(), None);
            j.mark_sealing("emr", &k, &id).unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.interrupted().unwrap().len(), 1);
        j.mark_done("emr", &k, &id).unwrap();
        assert_eq!(j.get("emr", &k).unwrap(), Some(JournalState::Done(id)));
        assert!(j.interrupted().unwrap().is_empty());
        assert_eq!(j.observe_clock(100).unwrap(), None);
        assert_eq!(j.observe_clock(50).unwrap(), Some(100));
        assert_eq!(j.observe_clock(200).unwrap(), Some(100));
    }
}
