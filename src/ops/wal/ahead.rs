//! Archiving ahead. PostgreSQL's archiver runs one `archive_command` at a time. While it waits on
//! one `wal-push`, the daemon archives the next segments PostgreSQL has already marked ready
//! (`pg_wal/archive_status/<name>.ready`), up to `[source.pitr] archive-parallel` of them, each
//! through the same [`crate::ops::wal::archive::push`] (committed in `min-sites` sites). When PostgreSQL
//! then asks for one of them, the push is already done: it is acknowledged at once if the file is
//! still the one that was archived, the same inode, size, modification and change time, before
//! and after it was read (any write changes the change time). Otherwise the request goes the
//! normal way, which compares the bytes with the archived copy and refuses other bytes.
//!
//! PostgreSQL keeps a `.ready` segment in `pg_wal` until it is acknowledged, so what is read
//! ahead is there to read. Nothing is acknowledged that is not committed. A look-ahead that fails
//! is forgotten: the request for that segment archives it itself, and reports the failure to
//! PostgreSQL. pgBackRest's asynchronous `archive-push` works the same way.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::app::Coffre;
use crate::format::wal::{WalFileKind, WalName};
use crate::ops::wal::archive::Pushed;

/// A file as it was when it was archived ahead: a write changes `ctime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn identity(file: &std::fs::File) -> Option<Identity> {
    let m = file.metadata().ok()?;
    m.is_file().then(|| Identity {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

enum State {
    Running(Arc<tokio::sync::Notify>),
    Done {
        file: Identity,
        pushed: Pushed,
        at: Instant,
    },
}

/// (source, WAL file name) -> what the look-ahead did with it.
type Key = (String, String);

fn ahead() -> std::sync::MutexGuard<'static, HashMap<Key, State>> {
    static A: OnceLock<Mutex<HashMap<Key, State>>> = OnceLock::new();
    A.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A segment archived ahead and never asked for (PostgreSQL restarted, or a push came with
/// another path) is forgotten after this.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Longest wait on a look-ahead of the requested segment before archiving it directly.
const WAIT_AT_MOST: Duration = Duration::from_secs(600);

/// Segments archived ahead and then acknowledged from it (`coffre_wal_archived_ahead_total`),
/// until the status moves them into the counter kept in the catalog.
pub static ACKNOWLEDGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The `.ready` segments after `current` in `status_dir`, in name order.
fn ready_after(status_dir: &Path, current: &WalName) -> Vec<WalName> {
    let Ok(rd) = std::fs::read_dir(status_dir) else {
        return Vec::new();
    };
    let mut names: Vec<WalName> = rd
        .flatten()
        .filter_map(|e| {
            let f = e.file_name();
            let n = f.to_str()?.strip_suffix(".ready")?;
            let w = WalName::parse(n).ok()?;
            (w.kind() == WalFileKind::Segment && w.as_str() > current.as_str()).then_some(w)
        })
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names
}

/// Start archiving the `.ready` segments after `current`, so that at most `archive-parallel`
/// are in flight for `source`. Does nothing when `archive-parallel` is 1 or the source names no
/// `pg_wal` folder (`[source.pitr] pg-wal`): the daemon opens segments only beneath the folder
/// the config names, never beside a path a caller sent.
pub fn start(app: &Arc<Coffre>, source: &str, current: &WalName, actor: &str) {
    let Some(pitr) = app.config.source(source).and_then(|s| s.pitr.as_ref()) else {
        return;
    };
    let parallel = pitr.archive_parallel;
    let Some(dir) = pitr.pg_wal.clone().filter(|_| parallel > 1) else {
        return;
    };
    let ready = ready_after(&dir.join("archive_status"), current);
    let mut todo: Vec<(WalName, Arc<tokio::sync::Notify>)> = Vec::new();
    {
        let mut a = ahead();
        a.retain(|_, s| !matches!(s, State::Done { at, .. } if at.elapsed() > FORGET_AFTER));
        let mut running = a
            .iter()
            .filter(|((s, _), st)| s == source && matches!(st, State::Running(_)))
            .count();
        for name in ready {
            if running >= parallel {
                break;
            }
            let key = (source.to_string(), name.to_string());
            if a.contains_key(&key) {
                continue;
            }
            let n = Arc::new(tokio::sync::Notify::new());
            a.insert(key, State::Running(n.clone()));
            todo.push((name, n));
            running += 1;
        }
    }
    for (wal, notify) in todo {
        let (app, source, actor) = (app.clone(), source.to_string(), actor.to_string());
        let dir = dir.clone();
        tokio::spawn(async move {
            let name = wal.to_string();
            let p = dir.join(wal.as_str());
            // Beneath the configured pg_wal, no symlink followed; read from this descriptor.
            let (r, before, after) = match open_segment(&dir, &wal) {
                Ok(f) => {
                    let before = identity(&f);
                    let r = crate::ops::wal::archive::push(&app, &source, &p, &f, &actor).await;
                    (r, before, identity(&f))
                }
                Err(e) => (
                    Err(crate::ops::wal::archive::WalError::Read { path: p, source: e }),
                    None,
                    None,
                ),
            };
            let key = (source.clone(), name.clone());
            {
                let mut a = ahead();
                match (r, before, after) {
                    (Ok(pushed), Some(b), Some(f)) if b == f => {
                        tracing::debug!(source, wal = %name, "WAL file archived ahead of its push");
                        a.insert(
                            key,
                            State::Done {
                                file: f,
                                pushed,
                                at: Instant::now(),
                            },
                        );
                    }
                    (r, _, _) => {
                        if let Err(e) = r {
                            // Its own push archives it again and reports the failure.
                            tracing::debug!(source, wal = %name, error = %e, "archiving ahead failed");
                        }
                        a.remove(&key);
                    }
                }
            }
            notify.notify_waiters();
        });
    }
}

/// Open a `.ready` segment beneath the configured `pg_wal` with the daemon's rights, as
/// PostgreSQL left it: no symlink followed, a regular file with one link, owned by the owner of
/// `pg_wal` (a hard link of some other file the daemon may read, planted under a WAL name, is
/// refused: the look-ahead reads only what PostgreSQL wrote).
fn open_segment(dir: &Path, wal: &WalName) -> std::io::Result<std::fs::File> {
    let f = crate::ops::snapshot::protect::open_regular_beneath(dir, Path::new(wal.as_str()))?;
    let (m, owner) = (f.metadata()?, std::fs::metadata(dir)?.uid());
    if m.nlink() != 1 || m.uid() != owner {
        return Err(std::io::Error::other(format!(
            "{} is not a WAL file as PostgreSQL writes them (links {}, owner uid {} where pg_wal's is {owner}): not archived ahead",
            wal,
            m.nlink(),
            m.uid()
        )));
    }
    Ok(f)
}

/// The push of `name` (the file `file`, passed by the caller), if it was archived ahead from
/// this very file: waits for a look-ahead still running. None: archive it the normal way.
pub async fn take(source: &str, name: &WalName, file_passed: &std::fs::File) -> Option<Pushed> {
    let key = (source.to_string(), name.to_string());
    let deadline = Instant::now() + WAIT_AT_MOST;
    loop {
        let notify = {
            let mut a = ahead();
            match a.get(&key) {
                None => return None,
                Some(State::Running(n)) => n.clone(),
                Some(State::Done { .. }) => {
                    let Some(State::Done { file, pushed, .. }) = a.remove(&key) else {
                        return None;
                    };
                    if identity(file_passed) != Some(file) {
                        tracing::info!(source, wal = %pushed.name, "WAL file changed since it was archived ahead: compared with the archived copy");
                        return None;
                    }
                    ACKNOWLEDGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Some(pushed);
                }
            }
        };
        // Registered before the state is looked at again, so no wake-up is missed.
        let notified = notify.notified();
        if !matches!(ahead().get(&key), Some(State::Running(_))) {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_lists_later_segments_in_order_only() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "000000010000000000000005.ready",
            "000000010000000000000003.ready",
            "000000010000000000000002.ready",
            "000000010000000000000004.done",
            "00000002.history.ready",
            "000000010000000000000006.partial.ready",
            "000000010000000000000007.00000028.backup.ready",
            "not-wal.ready",
        ] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        let cur = WalName::parse("000000010000000000000002").unwrap();
        let got: Vec<String> = ready_after(d.path(), &cur)
            .iter()
            .map(|w| w.to_string())
            .collect();
        assert_eq!(
            got,
            ["000000010000000000000003", "000000010000000000000005"]
        );
        assert!(ready_after(&d.path().join("missing"), &cur).is_empty());
    }

    /// A hard link planted under a WAL name, or a file of another owner, is not read ahead.
    #[test]
    fn only_a_segment_as_postgresql_wrote_it_is_opened_ahead() {
        let d = tempfile::tempdir().unwrap();
        let name = WalName::parse("000000010000000000000003").unwrap();
        std::fs::write(d.path().join("secret"), b"key").unwrap();
        std::fs::hard_link(d.path().join("secret"), d.path().join(name.as_str())).unwrap();
        let e = open_segment(d.path(), &name).unwrap_err();
        assert!(e.to_string().contains("links 2"), "{e}");
        std::fs::remove_file(d.path().join(name.as_str())).unwrap();
        std::fs::write(d.path().join(name.as_str()), b"wal").unwrap();
        assert!(open_segment(d.path(), &name).is_ok());
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(d.path().join(name.as_str()), Some(2), None).unwrap();
            let e = open_segment(d.path(), &name).unwrap_err();
            assert!(e.to_string().contains("owner uid 2"), "{e}");
        }
    }

    #[test]
    fn a_write_changes_the_identity() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let a = identity(&f).unwrap();
        assert_eq!(identity(&f), Some(a));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, b"two").unwrap();
        assert_ne!(identity(&f), Some(a));
        // Another file under the same name is another identity.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"two").unwrap();
        let g = std::fs::File::open(&p).unwrap();
        assert_ne!(identity(&g), identity(&f));
    }
}
