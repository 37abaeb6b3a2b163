//! Access log: an append-only, hash-chained record of every access to protected data (restore,
//! key unwrap, drill, shred, holds, rotation, catalog rebuild) and every refusal.
//!
//! Invariants: one JSON object per line; each entry carries a sequence number and the SHA-256 of
//! the previous line, so an edit, deletion, insertion, reordering or truncation of the tail breaks
//! the chain (`verify`). Each entry is fsynced before the action it announces proceeds; if it
//! cannot be written, the action is refused. This is not tracing: nothing here goes to the logs.

use crate::clock::now_rfc3339;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

impl Target {
    /// The snapshot a key object belongs to, under the epoch it names.
    pub(crate) fn key_object(k: &crate::format::objects::KeyObject) -> Target {
        Target {
            source: Some(k.source.clone()),
            snapshot: Some(k.snapshot.to_string()),
            epoch: Some(k.epoch.to_string()),
            ..Default::default()
        }
    }
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
    /// Set on the record written before the log's head is pruned at the end of its retention:
    /// which entries go and the hash of the last of them, which the first entry kept points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
    pub prev: String,
}

/// Entries `first..=through` leave the log (their retention ended); `last_hash` is the SHA-256 of
/// entry `through`'s line, the `prev` of the entry that then starts the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pruned {
    pub first: u64,
    pub through: u64,
    pub last_hash: String,
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

/// Longest purpose kept in an entry, in bytes (a longer one is cut, with [`TRUNCATED`] at its
/// end). Callers that take a purpose from outside (the control socket, the CLI) should refuse a
/// longer one before anything is logged.
pub const MAX_PURPOSE_BYTES: usize = 1024;
/// Longest outcome kept in an entry (outcomes quote error messages).
pub const MAX_OUTCOME_BYTES: usize = 4096;
/// Longest actor kept in an entry.
pub const MAX_ACTOR_BYTES: usize = 256;
/// Longest action kept in an entry.
pub const MAX_ACTION_BYTES: usize = 64;
/// Longest `exposes` text kept in an entry.
pub const MAX_EXPOSES_BYTES: usize = 1024;
/// Longest value of each target field (source, snapshot, store, hash, epoch).
pub const MAX_TARGET_FIELD_BYTES: usize = 256;
/// What ends a field that was cut to its bound.
pub const TRUNCATED: &str = "…[truncated]";

/// Every action an entry may have (docs/operations.md, "The access log", lists them): what
/// coffre does, and the name of each command, under which a refusal by the control socket is
/// logged. `audit show --action` takes one of these, or a family (`hold`: `hold-add` and
/// `hold-release`), and refuses anything else.
pub const ACTIONS: &[&str] = &[
    "restore",
    "drill",
    "drill-result",
    "key-unwrap",
    "key-rewrap",
    "key-rotate",
    "keyring-push",
    "keyring-sweep",
    "shred",
    "hold-add",
    "hold-release",
    "wal-push",
    "wal-push-compare",
    "wal-fetch",
    "catalog-rebuild",
    "catalog-seal",
    "audit-expire",
    "retention-run",
    "host-take-over",
    // Refusals only: the command's name.
    "backup",
    "snapshots",
    "verify",
    "keys-status",
    "keys-rotate",
    "keys-init",
    "audit-show",
    "audit-verify",
    "retention-plan",
];

/// The families of [`ACTIONS`]: the word before the first `-` of an action, when that word is
/// not an action itself (`hold`, `key`, `keys`, ...).
pub fn action_families() -> Vec<&'static str> {
    let mut v: Vec<&str> = ACTIONS
        .iter()
        .filter_map(|a| a.split_once('-').map(|(f, _)| f))
        .filter(|f| !ACTIONS.contains(f))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `s` cut to at most `max` bytes, on a character boundary, ending with [`TRUNCATED`] when it
/// was cut.
pub(crate) fn bound_text(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let room = max.saturating_sub(TRUNCATED.len());
    let mut cut = room.min(s.len());
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + TRUNCATED.len());
    out.push_str(&s[..cut]);
    out.push_str(TRUNCATED);
    out
}

impl NewEntry {
    /// Every caller-supplied text cut to its bound, so that no entry is ever huge (defense in
    /// depth: the entry points refuse oversized input before they log it).
    fn bounded(self) -> NewEntry {
        let field = |v: Option<String>| v.map(|s| bound_text(s, MAX_TARGET_FIELD_BYTES));
        NewEntry {
            actor: bound_text(self.actor, MAX_ACTOR_BYTES),
            action: bound_text(self.action, MAX_ACTION_BYTES),
            target: Target {
                source: field(self.target.source),
                snapshot: field(self.target.snapshot),
                store: field(self.target.store),
                sealed_sha256: field(self.target.sealed_sha256),
                epoch: field(self.target.epoch),
            },
            purpose: bound_text(self.purpose, MAX_PURPOSE_BYTES),
            outcome: bound_text(self.outcome, MAX_OUTCOME_BYTES),
            exposes: self.exposes.map(|s| bound_text(s, MAX_EXPOSES_BYTES)),
        }
    }
}

/// The last line of `f` that is not blank, as written (without its newline, nor the `\r` of a
/// CRLF ending, as [`BufRead::lines`] gives it), found by reading bytes backwards from the end:
/// any length works and nothing is decoded here.
fn last_line(mut f: File) -> std::io::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 8 * 1024;
    let len = f.metadata()?.len();
    let mut pos = len;
    // The bytes from `pos` to the end of the file.
    let mut buf: Vec<u8> = Vec::new();
    // Index in `buf` of the last byte that is not blank, once found.
    let mut last: Option<usize> = None;
    loop {
        if let Some(j) = last {
            if let Some(i) = buf[..j].iter().rposition(|b| *b == b'\n') {
                buf.drain(..=i);
                break;
            }
        }
        if pos == 0 {
            break;
        }
        let n = CHUNK.min(pos);
        pos -= n;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0u8; n as usize];
        f.read_exact(&mut chunk)?;
        let grown = chunk.len();
        chunk.extend_from_slice(&buf);
        buf = chunk;
        last = match last {
            Some(j) => Some(j + grown),
            None => buf.iter().rposition(|b| !b.is_ascii_whitespace()),
        };
    }
    let Some(_) = last else { return Ok(None) };
    // The line ends at its newline (blank lines after it are not part of it).
    if let Some(end) = buf.iter().position(|b| *b == b'\n') {
        buf.truncate(end);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(buf))
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

fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The oldest run of entries whose time is before `cutoff` (an entry whose time does not parse
/// stops the run: never prune what cannot be dated), as a pruning range.
fn range_before(entries: &[(Entry, String)], cutoff: time::OffsetDateTime) -> Option<Pruned> {
    let mut through = None;
    for (e, hash) in entries {
        let at =
            time::OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339);
        match at {
            Ok(t) if t < cutoff => through = Some((e.seq, hash.clone())),
            _ => break,
        }
    }
    let ((first, _), (through, last_hash)) = (entries.first()?, through?);
    Some(Pruned {
        first: first.seq,
        through,
        last_hash,
    })
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

    /// Read the last entry to find the chain's tail: bytes are read backwards from the end of
    /// the file to the newline before the last non-empty line, so an entry of any length is
    /// found whole, and nothing is decoded before the line is (a fixed window could start
    /// inside an entry or inside a multi-byte character and lock every later append out).
    fn load_tail(&self) -> Result<Tail, AuditError> {
        let f = match File::open(&self.path) {
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
        let line = last_line(f).map_err(|source| AuditError::Read {
            path: self.path.clone(),
            source,
        })?;
        match line {
            None => Ok(Tail {
                seq: 0,
                hash: GENESIS.into(),
            }),
            Some(line) => {
                let e: Entry = serde_json::from_slice(&line).map_err(|err| AuditError::Broken {
                    path: self.path.clone(),
                    line: 0,
                    seq: 0,
                    reason: format!(
                        "its last entry does not parse ({err}), so no entry can be chained to it and every access is refused; run `coffre audit verify` to see where the log is broken"
                    ),
                })?;
                Ok(Tail {
                    seq: e.seq,
                    hash: hex::encode(Sha256::digest(&line)),
                })
            }
        }
    }

    /// Open the log for appending and take its exclusive lock. The pruning of the head replaces
    /// the file (rename): a writer that opened the old file before that retries on the new one,
    /// so no entry lands in a file that is no longer the log.
    fn lock_current(&self) -> Result<nix::fcntl::Flock<File>, AuditError> {
        let write_err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            crate::fsutil::create_private_dir(dir).map_err(write_err)?;
        }
        loop {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .map_err(write_err)?;
            let f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, errno)| write_err(std::io::Error::from(errno)))?;
            let held = f.metadata().map_err(write_err)?.ino();
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() == held => return Ok(f),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(write_err(e)),
            }
        }
    }

    /// Append an entry and fsync it. Returns the entry as written.
    pub fn append(&self, new: NewEntry) -> Result<Entry, AuditError> {
        self.append_inner(new, None)
    }

    fn append_inner(&self, new: NewEntry, pruned: Option<Pruned>) -> Result<Entry, AuditError> {
        // One writer at a time, across processes too (the daemon and the commands it runs for
        // the control socket): an exclusive lock on the log, and the tail read under it.
        let _guard = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = self.lock_current()?;
        self.append_locked(&mut f, new, pruned)
    }

    /// Append under the locks the caller holds (the in-process mutex and the file's flock).
    fn append_locked(
        &self,
        f: &mut nix::fcntl::Flock<File>,
        new: NewEntry,
        pruned: Option<Pruned>,
    ) -> Result<Entry, AuditError> {
        let write_err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        let new = new.bounded();
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
            pruned,
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

    /// End of retention for the head of the log: remove the entries written before `cutoff`,
    /// keeping the chain verifiable. First a pruning record is appended (which entries go, and
    /// the hash of the last of them, which the first entry kept points to); then, under the
    /// log's lock, the file is rewritten without them (temporary file, fsync, rename, fsync of
    /// the folder). A crash in between leaves the record and the whole log (valid); the next
    /// run finishes. Returns the range removed, if any.
    pub(crate) fn prune_before(
        &self,
        cutoff: time::OffsetDateTime,
        actor: &str,
        purpose: &str,
    ) -> Result<Option<Pruned>, AuditError> {
        // Never prune a broken chain: the break might be inside the range and its evidence
        // would go with it.
        self.verify()?;
        // Everything below under the log's locks: two runs at once (the daemon and a CLI
        // `audit expire`) see each other's record and write one.
        let _guard = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut lock = self.lock_current()?;
        let entries = self.lines()?;
        let Some(pruned) = range_before(&entries, cutoff) else {
            return Ok(None);
        };
        // A record left by an interrupted run for the same range is reused.
        let recorded = entries
            .iter()
            .any(|(e, _)| e.pruned.as_ref() == Some(&pruned));
        if !recorded {
            self.append_locked(
                &mut lock,
                NewEntry {
                    actor: actor.into(),
                    action: "audit-expire".into(),
                    target: Target::default(),
                    purpose: purpose.into(),
                    outcome: format!(
                        "ok: entries {}-{} leave the local log (older than its retention)",
                        pruned.first, pruned.through
                    ),
                    exposes: None,
                },
                Some(pruned.clone()),
            )?;
        }
        self.rewrite_without(pruned.through)?;
        Ok(Some(pruned))
    }

    /// Rewrite the log file without its entries up to `through`: temporary file, fsync,
    /// rename, fsync of the folder (under the caller's locks).
    fn rewrite_without(&self, through: u64) -> Result<(), AuditError> {
        let write_err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|source| AuditError::Read {
            path: self.path.clone(),
            source,
        })?;
        let mut kept = String::with_capacity(text.len());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let seq = serde_json::from_str::<Entry>(line)
                .map(|e| e.seq)
                .map_err(|err| AuditError::Broken {
                    path: self.path.clone(),
                    line: 0,
                    seq: 0,
                    reason: format!("an entry does not parse ({err}); run `coffre audit verify`"),
                })?;
            if seq > through {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        let tmp = self.path.with_extension("log.pruning");
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        f.write_all(kept.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(write_err)?;
        std::fs::rename(&tmp, &self.path).map_err(write_err)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
        }
        Ok(())
    }

    /// Every entry with the SHA-256 of its line.
    fn lines(&self) -> Result<Vec<(Entry, String)>, AuditError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(AuditError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let e: Entry = serde_json::from_str(line).map_err(|err| AuditError::Broken {
                path: self.path.clone(),
                line: i as u64 + 1,
                seq: 0,
                reason: format!("does not parse: {err}"),
            })?;
            out.push((e, line_hash(line)));
        }
        Ok(out)
    }

    /// Sequence number of the first entry (1 unless the head was pruned; 0 when empty).
    #[cfg(test)]
    pub(crate) fn first_seq(&self) -> Result<u64, AuditError> {
        Ok(self.lines()?.first().map(|(e, _)| e.seq).unwrap_or(0))
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
        Ok(self.lines()?.into_iter().map(|(e, _)| e).collect())
    }
}

/// Where a chain may begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The local log: at entry 1 (previous hash all zeros), or just after a range that a
    /// pruning record in the log itself names (the end of the log's retention).
    Local,
    /// A store's copy: its oldest segments are deleted when their epoch ends, so it may begin
    /// anywhere; the caller compares its entries with the local log.
    Anywhere,
}

/// Verify the hash chain of the local log.
pub(crate) fn verify_lines(path: &Path, r: impl BufRead) -> Result<u64, AuditError> {
    verify_chain(path, r, Head::Local)
}

/// Verify a hash chain read from any source (the local file or a store's copy).
pub(crate) fn verify_chain(path: &Path, r: impl BufRead, head: Head) -> Result<u64, AuditError> {
    let mut prev = GENESIS.to_string();
    let mut n = 0;
    let mut first: Option<(u64, String)> = None;
    let mut records = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let lineno = i as u64 + 1;
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
        if first.is_none() {
            if e.seq == 0 {
                return Err(broken(0, "sequence numbers start at 1".into()));
            }
            first = Some((e.seq, e.prev.clone()));
            if e.seq > 1 || head == Head::Anywhere {
                // Checked at the end (Local) or by the caller (Anywhere).
                prev = e.prev.clone();
            }
        }
        let expect_seq = first.as_ref().map(|f| f.0).unwrap_or(1) + i as u64;
        if let Some(p) = &e.pruned {
            records.push(p.clone());
        }
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
    if let (Head::Local, Some((seq, prev))) = (head, first) {
        let covered = records
            .iter()
            .any(|p| p.through + 1 == seq && p.last_hash == prev);
        if seq > 1 && !covered {
            return Err(AuditError::Broken {
                path: path.to_path_buf(),
                line: 1,
                seq,
                reason: format!(
                    "the log starts at sequence {seq} but no pruning record in it covers entries 1-{}: entries were deleted from its head",
                    seq - 1
                ),
            });
        }
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
    fn a_70_kb_purpose_is_cut_and_later_appends_still_work() {
        // Finding 4a: one refused request with a 70 KB purpose locked every later access out.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        log.append(entry("restore")).unwrap();
        let mut big = entry("refused");
        big.purpose = "x".repeat(70 * 1024);
        big.actor = "a".repeat(10_000);
        big.outcome = "refused: ".to_string() + &"o".repeat(100_000);
        big.target.snapshot = Some("s".repeat(5_000));
        let written = log.append(big).unwrap();
        assert!(written.purpose.len() <= MAX_PURPOSE_BYTES);
        assert!(written.purpose.ends_with(TRUNCATED), "the cut is visible");
        assert!(written.actor.len() <= MAX_ACTOR_BYTES);
        assert!(written.outcome.len() <= MAX_OUTCOME_BYTES);
        assert!(written.target.snapshot.unwrap().len() <= MAX_TARGET_FIELD_BYTES);
        let longest = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(str::len)
            .max()
            .unwrap();
        assert!(longest < 8 * 1024, "no line is huge: {longest}");
        for a in ["restore", "drill", "hold"] {
            log.append(entry(a)).unwrap();
        }
        assert_eq!(log.verify().unwrap(), 5);
    }

    /// An entry line as an older version wrote it (no bound), chained after `prev`.
    fn raw_line(seq: u64, prev: &str, purpose: String) -> String {
        serde_json::to_string(&Entry {
            seq,
            time: now_rfc3339(),
            host: "h".into(),
            actor: "tester".into(),
            action: "refused".into(),
            target: Target::default(),
            purpose,
            outcome: "refused: test".into(),
            exposes: None,
            pruned: None,
            prev: prev.into(),
        })
        .unwrap()
    }

    #[test]
    fn a_huge_entry_already_in_the_log_is_read_whole() {
        // A log written before the bound: its last entry is 70 KB (more than the old 64 KiB
        // window), and multi-byte throughout.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        log.append(entry("restore")).unwrap();
        let prev = line_hash(std::fs::read_to_string(&p).unwrap().trim_end());
        let line = raw_line(2, &prev, "é—«»".repeat(8_500));
        assert!(line.len() > 70 * 1024);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        drop(f);
        let e = log.append(entry("drill")).unwrap();
        assert_eq!((e.seq, e.prev.as_str()), (3, line_hash(&line).as_str()));
        log.append(entry("hold")).unwrap();
        assert_eq!(log.verify().unwrap(), 4);
    }

    #[test]
    fn two_hundred_french_purposes_around_the_old_window_keep_appends_working() {
        // Finding 4b: ordinary French purposes put the old 64 KiB window's start inside a
        // multi-byte character and every append failed ("stream did not contain valid UTF-8").
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        // Accents, dashes and guillemets throughout, as in notes written in French.
        let words = "« Été — déléguée » é—«é»— ";
        // Appends after which the old 64 KiB window started inside a character.
        let mut mid_char = 0;
        for i in 0..200 {
            // Sizes 200..1000 bytes, cut on a character boundary, so the file's length (and
            // the old window's start) steps through every offset within a character.
            let mut purpose = words.repeat(40);
            let mut n = 200 + (i * 37) % 800;
            while !purpose.is_char_boundary(n) {
                n -= 1;
            }
            purpose.truncate(n);
            let mut e = entry("restore");
            e.purpose = purpose;
            log.append(e)
                .unwrap_or_else(|err| panic!("append {i} failed: {err}"));
            let bytes = std::fs::read(&p).unwrap();
            if let Some(start) = bytes.len().checked_sub(64 * 1024) {
                if bytes[start] & 0xC0 == 0x80 {
                    mid_char += 1;
                }
            }
        }
        assert!(std::fs::metadata(&p).unwrap().len() > 2 * 64 * 1024);
        assert!(
            mid_char > 10,
            "the old window started inside a character: {mid_char}"
        );
        assert_eq!(log.verify().unwrap(), 200);
        let e = log.entries().unwrap();
        assert!(e[199].purpose.starts_with("« Été"));
    }

    #[test]
    fn a_corrupt_last_line_names_audit_verify() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        log.append(entry("restore")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        // Half an entry, with half a character at its end.
        f.write_all(b"{\"seq\":2,\"time\":\"2026-\xc3\n").unwrap();
        drop(f);
        let err = log.append(entry("drill")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AuditError::Broken { .. }), "{text}");
        assert!(text.contains("coffre audit verify"), "{text}");
        assert!(text.contains("last entry does not parse"), "{text}");
    }

    #[test]
    fn the_last_line_is_found_whatever_surrounds_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let last = |bytes: &[u8]| {
            std::fs::write(&p, bytes).unwrap();
            last_line(File::open(&p).unwrap()).unwrap()
        };
        assert_eq!(last(b""), None);
        assert_eq!(last(b"\n\n  \n"), None);
        assert_eq!(last(b"a"), Some(b"a".to_vec()));
        assert_eq!(last(b"a\nbc\n"), Some(b"bc".to_vec()));
        assert_eq!(last(b"a\nbc\r\n\n \n"), Some(b"bc".to_vec()));
        assert_eq!(
            last(b"a\n\xc3\xa9t\xc3\xa9\n"),
            Some("été".as_bytes().to_vec())
        );
        // Longer than a chunk, and a newline exactly at a chunk boundary.
        for len in [8 * 1024 - 1, 8 * 1024, 8 * 1024 + 1, 70 * 1024] {
            let mut b = b"first\n".to_vec();
            b.extend(std::iter::repeat_n(b'x', len));
            b.push(b'\n');
            assert_eq!(last(&b).map(|l| l.len()), Some(len), "{len}");
        }
        let mut b = vec![b'y'; 8 * 1024 - 1];
        b.push(b'\n');
        b.extend_from_slice(b"z\n");
        assert_eq!(last(&b), Some(b"z".to_vec()));
    }

    #[test]
    fn bound_text_cuts_on_a_character_boundary() {
        assert_eq!(bound_text("court".into(), 10), "court");
        let s = "é".repeat(600);
        let cut = bound_text(s, MAX_PURPOSE_BYTES);
        assert!(cut.len() <= MAX_PURPOSE_BYTES);
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.trim_end_matches(TRUNCATED).chars().all(|c| c == 'é'));
        // A bound smaller than the marker still gives valid text.
        assert_eq!(bound_text("abcdef".into(), 3), TRUNCATED);
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

    /// Rewrite the time of every entry so that entries `1..=old` look `days` old.
    fn age(p: &Path, old: u64, days: i64) {
        let text = std::fs::read_to_string(p).unwrap();
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for line in text.lines() {
            let mut e: Entry = serde_json::from_str(line).unwrap();
            if e.seq <= old {
                e.time = (time::OffsetDateTime::now_utc() - time::Duration::days(days))
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
            }
            e.prev = prev;
            let l = serde_json::to_string(&e).unwrap();
            prev = line_hash(&l);
            out.push_str(&l);
            out.push('\n');
        }
        std::fs::write(p, out).unwrap();
    }

    #[test]
    fn pruning_the_head_keeps_the_chain_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        for a in ["restore", "drill", "shred", "restore", "drill"] {
            log.append(entry(a)).unwrap();
        }
        age(&p, 3, 40);
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        let pruned = log.prune_before(cutoff, "tester", "retention").unwrap();
        let pruned = pruned.expect("entries 1-3 are older than the cutoff");
        assert_eq!((pruned.first, pruned.through), (1, 3));
        let left = log.entries().unwrap();
        let seqs: Vec<u64> = left.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5, 6], "entries 4, 5 and the pruning record 6");
        assert_eq!(left[2].action, "audit-expire");
        assert_eq!(left[2].pruned.as_ref(), Some(&pruned));
        assert_eq!(log.first_seq().unwrap(), 4);
        assert_eq!(log.verify().unwrap(), 3);
        // Appends go on in the new file, from any handle.
        AccessLog::open(&p, "h").append(entry("hold")).unwrap();
        assert_eq!(log.verify().unwrap(), 4);
        // Nothing left to prune: no second record.
        assert!(log
            .prune_before(cutoff, "tester", "retention")
            .unwrap()
            .is_none());
        assert_eq!(log.entries().unwrap().len(), 4);
        // The file stays private.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn two_prunes_at_once_write_one_record_and_appends_in_between_survive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        for _ in 0..20 {
            log.append(entry("restore")).unwrap();
        }
        age(&p, 10, 40);
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        std::thread::scope(|sc| {
            for _ in 0..2 {
                let p = p.clone();
                sc.spawn(move || {
                    AccessLog::open(&p, "h")
                        .prune_before(cutoff, "t", "r")
                        .unwrap()
                });
            }
            let p = p.clone();
            sc.spawn(move || {
                let other = AccessLog::open(&p, "h");
                for _ in 0..20 {
                    other.append(entry("drill")).unwrap();
                }
            });
        });
        let left = log.entries().unwrap();
        let records = left.iter().filter(|e| e.pruned.is_some()).count();
        assert_eq!(records, 1, "one pruning record");
        assert_eq!(left.iter().filter(|e| e.action == "drill").count(), 20);
        assert_eq!(left[0].seq, 11);
        assert_eq!(log.verify().unwrap(), left.len() as u64);
    }

    #[test]
    fn a_head_cut_without_a_pruning_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::open(&p, "h");
        for a in ["restore", "drill", "shred", "restore"] {
            log.append(entry(a)).unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        // Someone deletes the first two entries.
        let cut: String = text.lines().skip(2).map(|l| format!("{l}\n")).collect();
        let err = verify_lines(Path::new("x"), cut.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("no pruning record"),
            "names the deleted head: {err}"
        );
        // A store copy may begin anywhere (its oldest segments expire); its chain still holds.
        assert_eq!(
            verify_chain(Path::new("x"), cut.as_bytes(), Head::Anywhere).unwrap(),
            2
        );
        // A pruning record for a different range does not excuse the cut.
        age(&p, 1, 40);
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        log.prune_before(cutoff, "tester", "retention").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let cut: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let err = verify_lines(Path::new("x"), cut.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("entries 1-2"), "{err}");
        // An undated entry is never pruned, nor anything after it.
        let log2 = AccessLog::open(&dir.path().join("b.log"), "h");
        log2.append(entry("restore")).unwrap();
        let q = dir.path().join("b.log");
        let bad = std::fs::read_to_string(&q).unwrap().replacen(
            &log2.entries().unwrap()[0].time,
            "not a time",
            1,
        );
        std::fs::write(&q, bad).unwrap();
        assert!(log2
            .prune_before(time::OffsetDateTime::now_utc(), "t", "r")
            .unwrap()
            .is_none());
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
