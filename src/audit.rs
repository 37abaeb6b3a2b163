//! Access log: an append-only, hash-chained record of every access to protected data (restore,
//! key unwrap, drill, shred, holds, rotation, catalog rebuild) and every refusal.
//!
//! Invariants: one JSON object per line; each entry carries a sequence number and the SHA-256 of
//! the previous line, so an edit, deletion, insertion, reordering or truncation of the tail breaks
//! the chain (`verify`). Each entry is fsynced before the action it announces proceeds; if it
//! cannot be written, the action is refused. This is not tracing: nothing here goes to the logs.

pub mod replicate;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the access log {path} cannot be written ({source}): the access is refused, because every access must be logged first. Free space or fix permissions on the state folder")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the access log {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the access log {path} is broken at line {line} (sequence {seq}): {reason}")]
    Broken {
        path: PathBuf,
        line: u64,
        seq: u64,
        reason: String,
    },
}

/// What an entry is about (no personal data: ids, names, hashes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub host: String,
    pub actor: String,
    pub action: String,
    pub target: Target,
    pub purpose: String,
    /// `started`, `ok`, `failed: ...`, `refused: ...`.
    pub outcome: String,
    /// What the access exposes, e.g. "every patient in the database".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposes: Option<String>,
    pub prev: String,
}

/// Fields the caller gives for a new entry.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub actor: String,
    pub action: String,
    pub target: Target,
    pub purpose: String,
    pub outcome: String,
    pub exposes: Option<String>,
}

struct Tail {
    seq: u64,
    hash: String,
}

pub struct AccessLog {
    path: PathBuf,
    host: String,
    tail: Mutex<()>,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The OS user running this process (the actor of CLI accesses).
pub fn current_user() -> String {
    // Set by the daemon on the command it runs for a caller of its control socket.
    if let Ok(actor) = std::env::var(replicate_actor_env()) {
        if !actor.is_empty() {
            return format!("{actor} (via coffre-daemon)");
        }
    }
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid:{uid}"))
}

fn replicate_actor_env() -> &'static str {
    crate::daemon::control::ACTOR_ENV
}

impl AccessLog {
    pub fn open(path: &Path, host: &str) -> AccessLog {
        AccessLog {
            path: path.to_path_buf(),
            host: host.to_string(),
            tail: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the last line to find the chain's tail.
    fn load_tail(&self) -> Result<Tail, AuditError> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Tail {
                    seq: 0,
                    hash: GENESIS.into(),
                })
            }
            Err(source) => {
                return Err(AuditError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let read_err = |source| AuditError::Read {
            path: self.path.clone(),
            source,
        };
        let len = f.metadata().map_err(read_err)?.len();
        let start = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(start)).map_err(read_err)?;
        let mut buf = String::new();
        f.read_to_string(&mut buf).map_err(read_err)?;
        let last = buf.lines().rev().find(|l| !l.trim().is_empty());
        match last {
            None => Ok(Tail {
                seq: 0,
                hash: GENESIS.into(),
            }),
            Some(line) => {
                let e: Entry = serde_json::from_str(line).map_err(|err| AuditError::Broken {
                    path: self.path.clone(),
                    line: 0,
                    seq: 0,
                    reason: format!("last entry does not parse ({err}); run `coffre audit verify`"),
                })?;
                Ok(Tail {
                    seq: e.seq,
                    hash: line_hash(line),
                })
            }
        }
    }

    /// Append an entry and fsync it. Returns the entry as written.
    pub fn append(&self, new: NewEntry) -> Result<Entry, AuditError> {
        // One writer at a time, across processes too (the daemon and the commands it runs for
        // the control socket): an exclusive lock on the log, and the tail read under it.
        let _guard = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let write_err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            crate::keys::file::create_private_dir(dir).map_err(write_err)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(write_err)?;
        let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| write_err(std::io::Error::from(errno)))?;
        let tail = self.load_tail()?;
        let entry = Entry {
            seq: tail.seq + 1,
            time: now_rfc3339(),
            host: self.host.clone(),
            actor: new.actor,
            action: new.action,
            target: new.target,
            purpose: new.purpose,
            outcome: new.outcome,
            exposes: new.exposes,
            prev: tail.hash,
        };
        let line =
            serde_json::to_string(&entry).map_err(|e| write_err(std::io::Error::other(e)))?;
        let before = f.metadata().map_err(write_err)?.len();
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        if let Err(e) = f.write_all(&bytes).and_then(|_| f.sync_data()) {
            // A partial line would break the chain: cut it off again.
            let _ = f.set_len(before);
            return Err(write_err(e));
        }
        Ok(entry)
    }

    /// Check the whole chain; returns the number of entries.
    pub fn verify(&self) -> Result<u64, AuditError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(AuditError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        verify_lines(&self.path, BufReader::new(f))
    }

    /// Every entry, in order (after a successful verify, callers filter).
    pub fn entries(&self) -> Result<Vec<Entry>, AuditError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(AuditError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|source| AuditError::Read {
                path: self.path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let e: Entry = serde_json::from_str(&line).map_err(|err| AuditError::Broken {
                path: self.path.clone(),
                line: i as u64 + 1,
                seq: 0,
                reason: format!("does not parse: {err}"),
            })?;
            out.push(e);
        }
        Ok(out)
    }
}

/// Verify a hash chain read from any source (the local file or a store's copy).
pub fn verify_lines(path: &Path, r: impl BufRead) -> Result<u64, AuditError> {
    let mut prev = GENESIS.to_string();
    let mut n = 0;
    for (i, line) in r.lines().enumerate() {
        let lineno = i as u64 + 1;
        let expect_seq = lineno;
        let line = line.map_err(|source| AuditError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let broken = |seq: u64, reason: String| AuditError::Broken {
            path: path.to_path_buf(),
            line: lineno,
            seq,
            reason,
        };
        let e: Entry = serde_json::from_str(&line)
            .map_err(|err| broken(0, format!("entry does not parse: {err}")))?;
        if e.seq != expect_seq {
            return Err(broken(
                e.seq,
                format!(
                    "expected sequence {expect_seq}: an entry was deleted, inserted or reordered"
                ),
            ));
        }
        if e.prev != prev {
            return Err(broken(
                e.seq,
                "its previous-entry hash does not match the entry before it: an entry was edited, deleted, inserted or reordered".into(),
            ));
        }
        prev = line_hash(&line);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> NewEntry {
        NewEntry {
            actor: "tester".into(),
            action: action.into(),
            target: Target {
                snapshot: Some("01J".into()),
                ..Default::default()
            },
            purpose: "unit test".into(),
            outcome: "ok".into(),
            exposes: None,
        }
    }

    #[test]
    fn two_writers_on_one_log_keep_the_chain() {
        // The daemon and a command it runs for the control socket both append.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let daemon = AccessLog::open(&p, "h");
        daemon.append(entry("restore")).unwrap();
        let child = AccessLog::open(&p, "h");
        child.append(entry("restore")).unwrap();
        daemon.append(entry("refused")).unwrap();
        child.append(entry("drill")).unwrap();
        assert_eq!(daemon.verify().unwrap(), 4);
    }

    #[test]
    fn chain_verifies_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/access.log");
        let log = AccessLog::open(&p, "h");
        for a in ["restore", "unwrap", "shred", "drill"] {
            log.append(entry(a)).unwrap();
        }
        // A new handle continues the chain.
        let log2 = AccessLog::open(&p, "h");
        log2.append(entry("hold")).unwrap();
        assert_eq!(log2.verify().unwrap(), 5);

        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let check = |ls: Vec<String>| {
            let joined = ls.join("\n") + "\n";
            verify_lines(Path::new("x"), joined.as_bytes())
        };
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Edited.
        let mut v = own(&lines);
        v[1] = v[1].replace("unwrap", "unwrop");
        assert!(matches!(check(v), Err(AuditError::Broken { line: 3, .. })));
        // Deleted.
        let mut v = own(&lines);
        v.remove(2);
        assert!(matches!(check(v), Err(AuditError::Broken { line: 3, .. })));
        // Swapped.
        let mut v = own(&lines);
        v.swap(1, 2);
        assert!(matches!(check(v), Err(AuditError::Broken { line: 2, .. })));
        // Inserted.
        let mut v = own(&lines);
        v.insert(1, lines[0].to_string());
        assert!(matches!(check(v), Err(AuditError::Broken { line: 2, .. })));
        // Tail truncated mid-line.
        let mut v = own(&lines);
        let last = v.pop().unwrap();
        v.push(last[..last.len() / 2].to_string());
        assert!(check(v).is_err());
    }
}
