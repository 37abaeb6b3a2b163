//! The state folder's lock: one process at a time owns the keyring, catalog, journal and access
//! log of a state folder. The daemon holds it for as long as it runs (commands then reach it
//! through the control socket); a standalone command holds it for its run.
//!
//! The lock is an exclusive `flock` on `<state-dir>/coffre.lock`, released by the kernel when the
//! process ends however it ends (a `kill -9` leaves no stale lock). The file says who holds it
//! (`<pid> <role>`), for the messages of those who wait.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Who holds a state folder's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Daemon,
    Command,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Daemon => "daemon",
            Role::Command => "command",
        }
    }
}

/// What the lock file says of its holder.
struct Holder {
    pid: String,
    role: String,
    /// A daemon whose control socket listens.
    ready: bool,
    /// Where that socket listens, as the daemon recorded it.
    socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("cannot open the state folder's lock {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a coffre daemon (pid {pid}) owns the state folder {state_dir}: commands go through its control socket; if the socket does not answer, see `systemctl status coffre` or its log")]
    DaemonRunning {
        pid: String,
        state_dir: PathBuf,
        /// Its control socket is not listening yet (it is starting).
        starting: bool,
        /// Where its control socket listens, once it does (the daemon's own path: a command run
        /// from a shell may compute another, e.g. without systemd's `RUNTIME_DIRECTORY`).
        socket: Option<PathBuf>,
    },
    #[error("another coffre {role} (pid {pid}) holds the state folder {state_dir}: stop it before starting the daemon")]
    Busy {
        pid: String,
        role: String,
        state_dir: PathBuf,
    },
}

impl LockError {
    /// The lock file could not be opened for lack of rights (a caller who is not the daemon's
    /// user, e.g. PostgreSQL's account in the packaged layout, where the state folder is the
    /// daemon's alone).
    pub fn denied(&self) -> bool {
        matches!(self, LockError::Open { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }

    /// For a state folder that a daemon owns: whether it is still starting, and where its
    /// control socket listens when it recorded that.
    pub fn daemon_running(&self) -> Option<(bool, Option<&Path>)> {
        match self {
            LockError::DaemonRunning {
                starting, socket, ..
            } => Some((*starting, socket.as_deref())),
            _ => None,
        }
    }
}

/// A held lock; released on drop (or when the process ends).
pub struct StateLock {
    file: Flock<File>,
}

impl std::fmt::Debug for StateLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateLock")
    }
}

pub(crate) fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("coffre.lock")
}

/// The holder recorded in the lock file.
fn holder(f: &mut File) -> Holder {
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.take(4352).read_to_string(&mut s);
    let line = s.lines().next().unwrap_or_default();
    let mut it = line.splitn(4, ' ');
    let pid = it.next().unwrap_or("?").to_string();
    let role = it.next().unwrap_or("?").to_string();
    let ready = it.next() == Some("ready");
    let socket = it
        .next()
        .filter(|p| ready && p.starts_with('/'))
        .map(PathBuf::from);
    Holder {
        pid,
        role,
        ready,
        socket,
    }
}

impl StateLock {
    /// Note in the lock file that the daemon's control socket listens at `socket` (commands
    /// stop waiting for a starting daemon and go through it, at that path).
    pub(crate) fn mark_ready(&mut self, socket: &Path) -> std::io::Result<()> {
        let record = format!(
            "{} {} ready {}\n",
            std::process::id(),
            Role::Daemon.as_str(),
            socket.display()
        );
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(record.as_bytes())?;
        Ok(())
    }
}

/// How long a starting daemon waits for a command that holds the state folder (commands are
/// short; one that holds it longer is stuck, and the daemon says which).
const DAEMON_WAITS_FOR_COMMAND: std::time::Duration = std::time::Duration::from_secs(120);

/// Take the lock of `state_dir` for `role`.
///
/// A starting daemon waits up to two minutes for a command that holds it, then fails naming
/// it; it never starts beside another daemon. A command waits for another command to finish
/// (saying so on stderr once), and is refused when the holder is a daemon: it must go through
/// the daemon's socket, never beside it.
pub fn acquire(state_dir: &Path, role: Role) -> Result<StateLock, LockError> {
    acquire_waiting(state_dir, role, DAEMON_WAITS_FOR_COMMAND)
}

/// [`acquire`], a daemon waiting at most `daemon_wait` for a command.
fn acquire_waiting(
    state_dir: &Path,
    role: Role,
    daemon_wait: std::time::Duration,
) -> Result<StateLock, LockError> {
    let path = lock_path(state_dir);
    let open_err = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    crate::fsutil::create_private_dir(state_dir).map_err(open_err)?;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
    };
    let mut f = open().map_err(open_err)?;
    let mut said = false;
    let waited_since = std::time::Instant::now();
    let mut f = loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((mut busy, nix::errno::Errno::EWOULDBLOCK)) => {
                // Read again on every try: the holder may change (a daemon taking over from a
                // command), and a new holder writes its record just after it locks.
                let Holder {
                    pid,
                    role: held_by,
                    ready,
                    socket,
                } = holder(&mut busy);
                if held_by == Role::Daemon.as_str() {
                    return Err(LockError::DaemonRunning {
                        pid,
                        state_dir: state_dir.to_path_buf(),
                        starting: !ready,
                        socket,
                    });
                }
                if role == Role::Daemon && waited_since.elapsed() >= daemon_wait {
                    return Err(LockError::Busy {
                        pid,
                        role: held_by,
                        state_dir: state_dir.to_path_buf(),
                    });
                }
                if !said {
                    if role == Role::Daemon {
                        tracing::warn!(pid = %pid, "a coffre command holds the state folder: the daemon waits for it to finish");
                    } else {
                        eprintln!("waiting for another coffre command (pid {pid}) to finish with the state folder...");
                    }
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                f = busy;
            }
            Err((_, e)) => return Err(open_err(std::io::Error::from(e))),
        }
    };
    let record = format!("{} {}\n", std::process::id(), role.as_str());
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| f.write_all(record.as_bytes()))
        .map_err(open_err)?;
    Ok(StateLock { file: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_refuses_a_busy_lock_and_a_command_is_told_a_daemon_runs() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), Role::Daemon).unwrap();
        // flock is per open file description: a second open in this process conflicts too.
        match acquire(d.path(), Role::Command) {
            Err(LockError::DaemonRunning { pid, starting, .. }) => {
                assert_eq!(pid, std::process::id().to_string());
                assert!(starting);
            }
            other => panic!("expected DaemonRunning, got {other:?}"),
        }
        match acquire(d.path(), Role::Daemon) {
            Err(LockError::DaemonRunning { .. }) => {}
            other => panic!("expected DaemonRunning, got {other:?}"),
        }
        let mut held = held;
        let sock = Path::new("/run/coffre test/coffre.sock");
        held.mark_ready(sock).unwrap();
        match acquire(d.path(), Role::Command) {
            Err(LockError::DaemonRunning {
                starting, socket, ..
            }) => {
                assert!(!starting);
                assert_eq!(socket.as_deref(), Some(sock));
            }
            other => panic!("expected DaemonRunning, got {other:?}"),
        }
        drop(held);
        let again = acquire(d.path(), Role::Daemon);
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn a_starting_daemon_waits_for_a_command_then_gives_up_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), Role::Command).unwrap();
        let short = std::time::Duration::from_millis(300);
        match acquire_waiting(d.path(), Role::Daemon, short) {
            Err(LockError::Busy { role, .. }) => assert_eq!(role, "command"),
            other => panic!("expected Busy, got {other:?}"),
        }
        // A command that finishes while the daemon waits: the daemon gets the folder.
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let daemon = acquire_waiting(d.path(), Role::Daemon, std::time::Duration::from_secs(30));
        assert!(daemon.is_ok(), "{daemon:?}");
        release.join().unwrap();
    }
}
