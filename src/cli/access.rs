//! Which command may run where: through the control socket (and for whom), or only here; what
//! it is called in the access log; and the bounds a request from the socket must keep.

use super::*;

/// Longest `--purpose` accepted (bytes): it is recorded in the access log.
pub const MAX_PURPOSE: usize = crate::audit::MAX_PURPOSE_BYTES;
/// Longest name, filter or id accepted in a request (bytes).
pub const MAX_NAME: usize = 256;

/// Who may run a command through the control socket (docs/security.md has the table of
/// commands and roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Listing and checking (no plaintext, no key use): operators.
    Read,
    /// Access to protected data, holds, backups from a source folder: operators, logged.
    Operate,
    /// Archiving WAL (`wal-push`): the source's archiver (`[source.pitr] archiver`) and root
    /// only; never an operator, who could otherwise archive bytes of their choosing under the
    /// source's next WAL name.
    Archive,
    /// Fetching WAL (`wal-fetch`): the source's archiver (PostgreSQL's `restore_command` during
    /// a restore), operators and root.
    Fetch,
    /// Destroying copies before their time or ending what keeps them (early shred, hold
    /// release, retention run, access-log expiry): root and `audit.erasure-group`, so that a
    /// compromised database or a day-to-day operator cannot erase the backups.
    Erase,
    /// Key rotation: root only.
    Root,
    /// Never through the socket (runs without a daemon, or is the daemon).
    LocalOnly,
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
                    KeysCommand::Rotate(KeysRotateArgs {
                        provider: Some(_), ..
                    }),
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
            | Command::Shred(ShredArgs { records: true, .. }) => Access::Read,
            Command::WalPush { .. } => Access::Archive,
            Command::WalFetch { .. } => Access::Fetch,
            Command::Shred { .. }
            | Command::Hold {
                command: HoldCommand::Release { .. },
            }
            | Command::Retention {
                command: RetentionCommand::Run { .. },
            }
            | Command::Audit {
                command: AuditCommand::Expire { .. },
            } => Access::Erase,
            Command::Backup { .. }
            | Command::Catalog { .. }
            | Command::Restore(_)
            | Command::Drill { .. }
            | Command::Hold { .. } => Access::Operate,
        }
    }

    /// Why a command does not go through the socket.
    pub(crate) fn local_only_reason(&self) -> &'static str {
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
            Command::WalPush { .. } => "wal-push",
            Command::WalFetch { .. } => "wal-fetch",
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
                | Command::WalFetch { .. }
                | Command::WalPush { .. }
                | Command::Drill { .. }
                | Command::Shred(ShredArgs { records: false, .. })
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

    /// Whether the command takes a file the caller passed with its request: `wal-fetch` (the
    /// empty file to write) and `wal-push` (the WAL file to read).
    pub(crate) fn takes_callers_file(&self) -> bool {
        matches!(self, Command::WalFetch(_) | Command::WalPush(_))
    }

    /// The source whose WAL the command archives or fetches (`wal-push`, `wal-fetch`).
    pub(crate) fn wal_source(&self) -> Option<&str> {
        match self {
            Command::WalPush(WalPushArgs { source, .. })
            | Command::WalFetch(WalFetchArgs { source, .. }) => Some(source),
            _ => None,
        }
    }

    /// What PostgreSQL does meanwhile when the command cannot run because the daemon is down
    /// (appended to that error).
    pub(crate) fn while_daemon_down(&self) -> &'static str {
        match self {
            Command::WalPush(_) => {
                ". PostgreSQL keeps the WAL file and retries archive_command until a push succeeds: nothing is lost while the daemon is down, but pg_wal grows"
            }
            Command::WalFetch(_) => ". The recovery waits: PostgreSQL retries restore_command",
            _ => "",
        }
    }

    /// The caller's `--purpose`, if the command has one.
    pub fn purpose(&self) -> Option<&str> {
        match self {
            Command::Restore(a) => Some(&a.purpose),
            Command::WalFetch(WalFetchArgs { purpose, .. }) => Some(purpose),
            Command::Shred(ShredArgs { purpose, .. }) => purpose.as_deref(),
            Command::Drill(DrillArgs { purpose, .. }) => Some(purpose),
            Command::Hold {
                command: HoldCommand::Add { purpose, .. } | HoldCommand::Release { purpose, .. },
            } => Some(purpose),
            Command::Keys {
                command: KeysCommand::Rotate(KeysRotateArgs { purpose, .. }),
            } => Some(purpose),
            _ => None,
        }
    }

    /// Every name, filter and path of the request, for the size checks.
    fn texts(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        match self {
            Command::Backup(BackupArgs { source, .. })
            | Command::WalPush(WalPushArgs { source, .. }) => v.push(source),
            Command::WalFetch(WalFetchArgs { source, name, .. }) => {
                v.push(source);
                v.push(name);
            }
            Command::Snapshots(SnapshotsArgs { source, .. }) => v.extend(source.as_deref()),
            Command::Restore(a) => {
                v.push(&a.source);
                v.extend(a.store.as_deref());
            }
            Command::Drill(DrillArgs { source, store, .. }) => {
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
                command: KeysCommand::Rotate(KeysRotateArgs { to_provider, .. }),
            } => v.extend(to_provider.as_deref()),
            _ => {}
        }
        v
    }
}

/// The bounds every request keeps, in a local run as through the control socket (exit 2, usage,
/// either way): `--purpose` at most [`MAX_PURPOSE`] bytes, names and filters at most
/// [`MAX_NAME`].
pub fn check_bounds(cmd: &Command) -> std::result::Result<(), String> {
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
    Ok(())
}

/// Check a request from the control socket before anything runs: [`check_bounds`], then the
/// paths the daemon may read. A backup's path is replaced by the canonical path that was
/// checked, so the path protected is the path checked (N14). A failure is a bad request (exit 2,
/// usage), not a refusal by role.
pub(crate) fn validate_request(app: &Coffre, cmd: &mut Command) -> std::result::Result<(), String> {
    check_bounds(cmd)?;
    match cmd {
        Command::Backup(BackupArgs { source, path, .. }) => {
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
            let p = std::fs::canonicalize(&*path).map_err(|e| {
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
            *path = p;
        }
        Command::WalPush(WalPushArgs { path, .. }) => {
            // The daemon reads only the descriptor the caller passed; the path gives the name.
            if !path.is_absolute() {
                return Err(format!(
                    "{}: give the WAL file's absolute path",
                    path.display()
                ));
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            crate::format::wal::WalName::parse(name.as_deref().unwrap_or_default())
                .map_err(|e| e.to_string())?;
        }
        Command::Keys {
            command:
                KeysCommand::Rotate(KeysRotateArgs {
                    new_master_key: Some(_),
                    ..
                }),
        } => return Err(cmd.local_only_reason().to_string()),
        _ => {}
    }
    Ok(())
}
