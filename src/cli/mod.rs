//! The commands that read keys or write the keyring, catalog, journal or access log, as typed
//! requests. The same code runs them in a standalone CLI run (under the state folder's lock) and in
//! the daemon's process for a caller of its control socket (`daemon::control`): a request is one
//! serde value of [`Command`], never a command line, so no global option, config path,
//! environment or working directory crosses the socket.
//!
//! Output goes through [`Out`]: printed directly in a local run, sent as frames to the caller
//! through the socket.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::ids::SnapshotId;
use crate::ops::protect::Protection;
use crate::ops::restore::{Request, Selector};
use crate::Coffre;

/// Exit codes, the same for a local run and one through the daemon.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    /// A usage problem (bad arguments, a bad request to the control socket).
    pub const USAGE: u8 = 2;
    /// `coffre backup`: committed in min-sites but not every store.
    pub const DEGRADED: u8 = 3;
    /// Nothing was done on purpose: a dry run (`shred` without `--yes`) said what would be.
    pub const DRY_RUN: u8 = 4;
    /// Refused by the control socket (not an operator, or not allowed through it).
    pub const REFUSED: u8 = 77;
}

/// One frame of a command's output.
#[derive(Debug)]
pub enum Frame {
    Stdout(String),
    Stderr(String),
}

/// Where a command's text output goes.
pub struct Out {
    remote: Option<tokio::sync::mpsc::UnboundedSender<Frame>>,
}

impl Out {
    /// Print to this process's stdout and stderr.
    pub fn local() -> Out {
        Out { remote: None }
    }

    /// Send to a control-socket caller.
    pub fn remote(tx: tokio::sync::mpsc::UnboundedSender<Frame>) -> Out {
        Out { remote: Some(tx) }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub fn out(&self, mut s: String) {
        s.push('\n');
        match &self.remote {
            // A caller that went away does not stop the command.
            Some(tx) => {
                let _ = tx.send(Frame::Stdout(s));
            }
            None => print!("{s}"),
        }
    }

    pub fn err(&self, mut s: String) {
        s.push('\n');
        match &self.remote {
            Some(tx) => {
                let _ = tx.send(Frame::Stderr(s));
            }
            None => eprint!("{s}"),
        }
    }

    pub fn json<T: Serialize>(&self, v: &T) -> Result<()> {
        self.out(serde_json::to_string_pretty(v)?);
        Ok(())
    }

    /// Print rows under a header, each column as wide as its widest cell (two spaces apart);
    /// the columns named in `right` are right-aligned (numbers). The last column is not padded.
    pub fn table(&self, head: &[&str], rows: &[Vec<String>], right: &[usize]) {
        for line in table_lines(head, rows, right) {
            self.out(line);
        }
    }
}

fn table_lines(head: &[&str], rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(width.len()) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = width[i].saturating_sub(c.chars().count());
            if right.contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i != last {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let mut out = vec![line(head.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).take(width.len()).collect())),
    );
    out
}

macro_rules! outln {
    ($out:expr, $($arg:tt)*) => { $out.out(format!($($arg)*)) };
}
macro_rules! errln {
    ($out:expr, $($arg:tt)*) => { $out.err(format!($($arg)*)) };
}

/// Who runs a command and where its output and restored bytes go.
pub struct Ctx {
    /// Recorded in the access log: the OS user of a local run, or `<user> (via coffre-daemon)`.
    pub actor: String,
    pub out: Out,
    /// Through the socket: restored bytes go to the caller, who writes them with its own rights.
    pub restore_sink: Option<tokio::sync::mpsc::Sender<crate::ops::restore::Chunk>>,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Run the daemon: watch the sources, protect each snapshot, keep the stores caught up,
    /// scrub replicas, run scheduled drills, shred expired epochs, serve the status endpoint
    /// and the control socket (systemd Type=notify).
    Daemon,
    /// Print the running daemon's status (from its status endpoint).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Protect one snapshot (a file or a directory) now; prints the snapshot id.
    Backup {
        /// Source the snapshot belongs to.
        #[arg(long)]
        source: String,
        /// The snapshot: a dump file, or a directory such as a pg_basebackup.
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, oldest first, and where each is committed.
    Snapshots {
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The local catalog (a cache of the stores' manifests).
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Restore a snapshot from any surviving store (logged in the access log first).
    Restore(RestoreArgs),
    /// Check every replica (present, header valid, SHA-256 matches) without any key.
    Verify {
        /// Only this snapshot.
        snapshot: Option<SnapshotId>,
        #[arg(long)]
        json: bool,
    },
    /// Key providers and epoch keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The access log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Validate the config file and print every problem: syntax, values, and on this host every
    /// file and credential it names (present, readable by the service user, safe owner and mode)
    /// and every source folder (present, readable).
    CheckConfig {
        /// Check the config as data only, for another host: skip the files, credentials and
        /// folders it names.
        #[arg(long)]
        portable: bool,
        /// The account the service runs as, whose access to the files and folders is checked
        /// (default: the current user; `coffre` under the packaged unit).
        #[arg(long, value_name = "USER", conflicts_with = "portable")]
        user: Option<String>,
    },
    /// Retention: what would be shredded and when.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Crypto-shred one snapshot now (an erasure order), or show destruction records.
    Shred {
        /// The snapshot to shred.
        #[arg(long, required_unless_present = "records")]
        snapshot: Option<SnapshotId>,
        /// Why (recorded in the access log and the destruction record).
        #[arg(long, required_unless_present = "records")]
        purpose: Option<String>,
        /// Do it (without --yes, only say what would happen).
        #[arg(long)]
        yes: bool,
        /// Show the destruction records instead.
        #[arg(long)]
        records: bool,
        #[arg(long)]
        json: bool,
    },
    /// Disaster-recovery drill: restore into a scratch folder, verify, time it, wipe it.
    Drill {
        #[arg(long)]
        source: Option<String>,
        /// Only this store (default: every store).
        #[arg(long, conflicts_with = "all_stores")]
        store: Option<String>,
        /// Every store (the default).
        #[arg(long)]
        all_stores: bool,
        /// This snapshot (default: the source's drill.pick, latest).
        #[arg(long)]
        snapshot: Option<SnapshotId>,
        /// Rebuild the catalog from the stores first (a drill as on a new host).
        #[arg(long)]
        fresh_catalog: bool,
        /// Why (recorded in the access log).
        #[arg(long, default_value = "disaster-recovery drill")]
        purpose: String,
        #[arg(long)]
        json: bool,
    },
    /// Legal holds: a held snapshot is never shredded.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionCommand {
    /// Show due epochs (shred / keep with reasons) and when each snapshot's epoch is due.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Carry out the due part of the plan now (what the daemon does on its schedule).
    Run {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum HoldCommand {
    /// Put a snapshot under legal hold.
    Add {
        snapshot: SnapshotId,
        #[arg(long)]
        purpose: String,
    },
    /// Release a legal hold.
    Release {
        snapshot: SnapshotId,
        #[arg(long)]
        purpose: String,
    },
}

#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct RestoreArgs {
    /// Snapshot id, or `latest`.
    pub snapshot: Selector,
    #[arg(long)]
    pub source: String,
    /// Where to write the snapshot (must not exist).
    #[arg(long)]
    pub to: PathBuf,
    /// Use only this store.
    #[arg(long)]
    pub store: Option<String>,
    /// Why the data is accessed (recorded in the access log).
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum CatalogCommand {
    /// Rebuild the catalog from the stores' manifests.
    Rebuild {
        #[arg(long)]
        json: bool,
    },
    /// Authenticate key objects written before authentication existed, once every store that
    /// holds a snapshot agrees with the catalog (an operator's decision: logged).
    Seal {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum KeysCommand {
    /// Create the master key of every file provider that has none yet (mode 0600); with --to,
    /// write one new master key file to install as a systemd credential.
    Init {
        /// Write a new master key to this file (mode 0600, never over an existing file) and
        /// nothing else: no config is read, no state created. For `master-key-credential`:
        /// `--to /etc/coffre/credentials/master.key`.
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
    },
    /// Providers, their health and their epochs (no key material).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate the master key of a file provider (re-seal its keyring here and in the stores),
    /// or wrap every snapshot's data key with another provider too. No data is re-encrypted.
    Rotate {
        /// File provider whose master key is rotated.
        #[arg(long, requires = "new_master_key")]
        provider: Option<String>,
        /// The new master key file (64 hex characters, mode 0600).
        #[arg(long)]
        new_master_key: Option<PathBuf>,
        /// Create the new master key file.
        #[arg(long)]
        create: bool,
        /// Wrap every snapshot's data key with this provider as well.
        #[arg(long, conflicts_with = "provider")]
        to_provider: Option<String>,
        /// Why (recorded in the access log).
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum AuditCommand {
    /// Check the hash chain; exits non-zero and names the first bad entry.
    Verify,
    /// Carry out the access log's retention now (the daemon does it on its shred schedule):
    /// entries older than `audit.retention` leave the local log, and sealed segments whose
    /// epoch has ended are crypto-shredded in every store.
    Expire {
        #[arg(long)]
        json: bool,
    },
    /// Show entries, optionally filtered.
    Show {
        /// Entries at or after this time: RFC 3339, a date (its midnight UTC), or a duration
        /// before now (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Entries before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Longest `--purpose` accepted (bytes): it is recorded in the access log.
pub const MAX_PURPOSE: usize = crate::audit::MAX_PURPOSE_BYTES;
/// Longest name, filter or id accepted in a request (bytes).
pub const MAX_NAME: usize = 256;

/// Who may run a command through the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Listing and checking (no plaintext, no key use): operators.
    Read,
    /// Access to protected data, erasure, holds, backups: operators, logged.
    Operate,
    /// Key rotation: root only.
    Root,
    /// Never through the socket (runs without a daemon, or is the daemon).
    LocalOnly,
}

/// An error and its causes, joined by ": ", each cause once: most errors here already name
/// their cause in their own message, and repeating it reads as two failures.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn bounded(s: &str, max: usize) -> String {
    crate::audit::bound_text(s.to_string(), max)
}

impl Command {
    pub fn access(&self) -> Access {
        match self {
            Command::Daemon | Command::CheckConfig { .. } | Command::Status { .. } => {
                Access::LocalOnly
            }
            Command::Keys {
                command: KeysCommand::Init { .. },
            } => Access::LocalOnly,
            Command::Keys {
                command:
                    KeysCommand::Rotate {
                        provider: Some(_), ..
                    },
            } => Access::LocalOnly,
            Command::Keys {
                command: KeysCommand::Rotate { .. },
            } => Access::Root,
            Command::Snapshots { .. }
            | Command::Verify { .. }
            | Command::Keys {
                command: KeysCommand::Status { .. },
            }
            | Command::Audit {
                command: AuditCommand::Show { .. } | AuditCommand::Verify,
            }
            | Command::Retention {
                command: RetentionCommand::Plan { .. },
            }
            | Command::Shred { records: true, .. } => Access::Read,
            Command::Backup { .. }
            | Command::Catalog { .. }
            | Command::Restore(_)
            | Command::Retention { .. }
            | Command::Shred { .. }
            | Command::Drill { .. }
            | Command::Hold { .. }
            | Command::Audit { .. } => Access::Operate,
        }
    }

    /// Why a command does not go through the socket.
    pub fn local_only_reason(&self) -> &'static str {
        match self {
            Command::Keys {
                command: KeysCommand::Rotate { .. },
            } => "rotating a master key replaces the key the running daemon holds: stop the daemon (systemctl stop coffre), rotate as root, then start it",
            Command::Keys {
                command: KeysCommand::Init { .. },
            } => "keys are created before the daemon first starts (or by it, with create-master-key)",
            _ => "it runs in the caller's own process",
        }
    }

    /// The access-log action name of a command.
    pub fn action(&self) -> &'static str {
        match self {
            Command::Daemon => "daemon",
            Command::Status { .. } => "status",
            Command::Backup { .. } => "backup",
            Command::Snapshots { .. } => "snapshots",
            Command::Catalog {
                command: CatalogCommand::Rebuild { .. },
            } => "catalog-rebuild",
            Command::Catalog {
                command: CatalogCommand::Seal { .. },
            } => "catalog-seal",
            Command::Restore(_) => "restore",
            Command::Verify { .. } => "verify",
            Command::Keys { command } => match command {
                KeysCommand::Init { .. } => "keys-init",
                KeysCommand::Status { .. } => "keys-status",
                KeysCommand::Rotate { .. } => "keys-rotate",
            },
            Command::Audit { command } => match command {
                AuditCommand::Verify => "audit-verify",
                AuditCommand::Expire { .. } => "audit-expire",
                AuditCommand::Show { .. } => "audit-show",
            },
            Command::CheckConfig { .. } => "check-config",
            Command::Retention { command } => match command {
                RetentionCommand::Plan { .. } => "retention-plan",
                RetentionCommand::Run { .. } => "retention-run",
            },
            Command::Shred { .. } => "shred",
            Command::Drill { .. } => "drill",
            Command::Hold { command } => match command {
                HoldCommand::Add { .. } => "hold-add",
                HoldCommand::Release { .. } => "hold-release",
            },
        }
    }

    /// Commands that append to the access log (its sealed copy then follows it to the stores).
    pub fn writes_access_log(&self) -> bool {
        matches!(
            self,
            Command::Restore(_)
                | Command::Drill { .. }
                | Command::Shred { records: false, .. }
                | Command::Hold { .. }
                | Command::Catalog { .. }
                | Command::Retention {
                    command: RetentionCommand::Run { .. }
                }
                | Command::Audit {
                    command: AuditCommand::Expire { .. }
                }
        )
    }

    /// The caller's `--purpose`, if the command has one.
    pub fn purpose(&self) -> Option<&str> {
        match self {
            Command::Restore(a) => Some(&a.purpose),
            Command::Shred { purpose, .. } => purpose.as_deref(),
            Command::Drill { purpose, .. } => Some(purpose),
            Command::Hold {
                command: HoldCommand::Add { purpose, .. } | HoldCommand::Release { purpose, .. },
            } => Some(purpose),
            Command::Keys {
                command: KeysCommand::Rotate { purpose, .. },
            } => Some(purpose),
            _ => None,
        }
    }

    /// Every name, filter and path of the request, for the size checks.
    fn texts(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        match self {
            Command::Backup { source, .. } => v.push(source),
            Command::Snapshots { source, .. } => v.extend(source.as_deref()),
            Command::Restore(a) => {
                v.push(&a.source);
                v.extend(a.store.as_deref());
            }
            Command::Drill { source, store, .. } => {
                v.extend(source.as_deref());
                v.extend(store.as_deref());
            }
            Command::Audit {
                command:
                    AuditCommand::Show {
                        since,
                        until,
                        snapshot,
                        actor,
                        action,
                        ..
                    },
            } => {
                for f in [since, until, snapshot, actor, action] {
                    v.extend(f.as_deref());
                }
            }
            Command::Keys {
                command: KeysCommand::Rotate { to_provider, .. },
            } => v.extend(to_provider.as_deref()),
            _ => {}
        }
        v
    }
}

/// Check a request from the control socket before anything runs or is logged: sizes bounded,
/// a purpose where one is needed, paths the daemon may read.
pub fn validate_request(app: &Coffre, cmd: &Command) -> std::result::Result<(), String> {
    if let Some(p) = cmd.purpose() {
        if p.len() > MAX_PURPOSE {
            return Err(format!(
                "--purpose is {} bytes; at most {MAX_PURPOSE} are accepted (it is recorded in the access log): say why in fewer words",
                p.len()
            ));
        }
    }
    if let Some(t) = cmd.texts().into_iter().find(|t| t.len() > MAX_NAME) {
        return Err(format!(
            "an argument of {} bytes is longer than the {MAX_NAME} accepted",
            t.len()
        ));
    }
    match cmd {
        Command::Backup { source, path, .. } => {
            // The daemon reads the snapshot with its own rights: only from the source's own
            // folder, never a path of the caller's choosing elsewhere (its keys, its log).
            let Some(src) = app.config.source(source) else {
                return Err(format!(
                    "source `{source}` is not configured; the configured sources are {}",
                    app.config.source_names()
                ));
            };
            let root = std::fs::canonicalize(&src.path)
                .map_err(|e| format!("source folder {}: {e}", src.path.display()))?;
            let p = std::fs::canonicalize(path).map_err(|e| {
                format!(
                    "{}: {e} (give an absolute path the daemon can see)",
                    path.display()
                )
            })?;
            if p == root || !p.starts_with(&root) {
                return Err(format!(
                    "{} is not inside source `{source}`'s folder {}: through the daemon, backup reads only from the source's folder",
                    path.display(),
                    root.display()
                ));
            }
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    new_master_key: Some(_),
                    ..
                },
        } => return Err(cmd.local_only_reason().to_string()),
        _ => {}
    }
    Ok(())
}

// The commands, one file each (after the output macros they use).
mod audit;
mod backup;
mod catalog;
mod drill;
mod hold;
mod keys;
mod restore;
mod retention;
mod shred;
mod snapshots;
pub mod status;
mod verify;

pub async fn execute(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    match cmd {
        Command::Backup { .. } => backup::run(app, cmd, ctx).await,
        Command::Snapshots { .. } => snapshots::run(app, cmd, ctx).await,
        Command::Catalog { .. } => catalog::run(app, cmd, ctx).await,
        Command::Restore(_) => restore::run(app, cmd, ctx).await,
        Command::Verify { .. } => verify::run(app, cmd, ctx).await,
        Command::Keys {
            command: KeysCommand::Init { .. },
        } => Ok(exit::OK),
        Command::Keys { .. } => keys::run(app, cmd, ctx).await,
        Command::Audit { .. } => audit::run(app, cmd, ctx).await,
        Command::Retention { .. } => retention::run(app, cmd, ctx).await,
        Command::Shred { .. } => shred::run(app, cmd, ctx).await,
        Command::Drill { .. } => drill::run(app, cmd, ctx).await,
        Command::Hold { .. } => hold::run(app, cmd, ctx).await,
        // Local-only commands never reach here (main.rs runs them).
        Command::CheckConfig { .. } | Command::Daemon | Command::Status { .. } => Ok(exit::OK),
    }
}

#[cfg(test)]
mod tests {
    use super::table_lines;

    #[test]
    fn table_columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "12".into(), "x".into()],
            vec!["longer".to_string(), "3".into(), "yy".into()],
        ];
        let lines = table_lines(&["id", "size", "state"], &rows, &[1]);
        assert_eq!(
            lines,
            vec![
                "id      size  state".to_string(),
                "a         12  x".into(),
                "longer     3  yy".into(),
            ]
        );
    }
}
