//! The commands that read keys or write the keyring, catalog, journal or access log, as typed
//! requests. The same code runs them in a standalone CLI run (under the state folder's lock) and in
//! the daemon's process for a caller of its control socket (`daemon::control`): a request is one
//! serde value of [`Command`], never a command line, so no global option, config path,
//! environment or working directory crosses the socket.
//!
//! Output goes through [`Out`]: printed directly in a local run, sent as frames to the caller
//! through the socket.
//!
//! The caller's side lives here too: [`client`] routes a command to the running daemon (or runs
//! it here under the state folder's lock), speaking [`protocol`] (the frames both halves of the
//! socket share; the daemon's half is `daemon::control`), and [`receive`] writes a restore's
//! plaintext as it arrives. What runs in the caller's process only (`check-config`, `keys init`,
//! a file provider's master-key rotation, `status`, a point-in-time restore's recovery settings)
//! is in its command's file. Each command has its own arguments type ([`BackupArgs`], ...), and
//! each handler takes its own.

use std::io::IsTerminal;

use anyhow::Result;

use crate::ids::SnapshotId;
use crate::ops::snapshot::protect::Protection;
use crate::ops::snapshot::restore::Request;
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
    /// The daemon is busy (its connections for this caller, or for everyone, are all in use):
    /// nothing was run; try again shortly (EX_TEMPFAIL). PostgreSQL retries an archive or
    /// restore command that fails this way.
    pub const BUSY: u8 = 75;
    /// Refused by role: the control socket does not allow this caller the command (not an
    /// operator, an archiver outside its WAL, not in the erasure group, not allowed through the
    /// socket), or the caller may not even connect to it (permission denied on the socket).
    /// Bad arguments are [`USAGE`], whoever sends them.
    pub const REFUSED: u8 = 77;
}

mod access;
mod args;
pub mod client;
mod out;
pub mod protocol;
pub mod receive;

pub(crate) use access::validate_request;
pub use access::{check_bounds, Access, MAX_NAME, MAX_PURPOSE};
pub use args::*;
pub use out::{Frame, Out};

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
    pub restore_sink: Option<tokio::sync::mpsc::Sender<crate::ops::snapshot::restore::Chunk>>,
    /// In the daemon: a handle on the running instance, for work that outlives the request
    /// (the WAL prefetch of a recovery session).
    pub daemon: Option<std::sync::Arc<Coffre>>,
    /// In the daemon: the empty file the caller opened (with its own rights) and passed with
    /// its request, for `wal-fetch` to write the WAL file into (see `daemon::control`).
    pub caller_file: std::sync::Mutex<Option<std::os::fd::OwnedFd>>,
    /// The recovery session a point-in-time restore opened: its id goes back to the caller,
    /// who writes it into restore_command (through the socket, in an `S` frame).
    pub session: std::sync::Mutex<Option<String>>,
}

/// What every command gets from the command line besides its own arguments.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    /// `--config` (or `$COFFRE_CONFIG`), as given.
    pub config: Option<std::path::PathBuf>,
}

impl Globals {
    /// The config file: the one given, else the default.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
    }

    pub fn load_config(&self) -> Result<crate::config::Config> {
        Ok(crate::config::Config::load(&self.config_path())?)
    }
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

// The commands, one file each (after the output macros they use).
mod audit;
mod backup;
mod catalog;
pub mod check_config;
mod drill;
mod hold;
pub mod keys;
pub mod restore;
mod retention;
mod shred;
mod snapshots;
pub mod status;
mod verify;
mod wal;

/// The source a command names with `--source` (restore's is checked against the stores too, by
/// the restore itself: on a new host a source may be in the stores only).
fn source_arg(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Backup(BackupArgs { source, .. })
        | Command::WalPush(WalPushArgs { source, .. })
        | Command::WalFetch(WalFetchArgs { source, .. }) => Some(source),
        Command::Snapshots(SnapshotsArgs { source, .. })
        | Command::Drill(DrillArgs { source, .. }) => source.as_deref(),
        _ => None,
    }
}

/// A `--source` that is neither configured nor in the catalog (a source removed from the config
/// keeps its snapshots listed) is a usage error, exit 2, naming the configured sources: an
/// empty answer would read as "nothing protected yet".
fn check_source(app: &Coffre, cmd: &Command, w: &Out) -> Result<Option<u8>> {
    let Some(source) = source_arg(cmd) else {
        return Ok(None);
    };
    if app.config.source(source).is_some() || app.catalog.summary()?.contains_key(source) {
        return Ok(None);
    }
    errln!(
        w,
        "error: source `{source}` is not configured (and the catalog has no snapshot of it); the configured sources are {}",
        app.config.source_names()
    );
    Ok(Some(exit::USAGE))
}

pub async fn execute(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    if let Some(code) = check_source(app, cmd, &ctx.out)? {
        return Ok(code);
    }
    match cmd {
        Command::Backup(a) => backup::run(app, a, ctx).await,
        Command::WalPush(a) => wal::push(app, a, ctx).await,
        Command::WalFetch(a) => wal::fetch(app, a, ctx).await,
        Command::Snapshots(a) => snapshots::run(app, a, ctx).await,
        Command::Catalog { command } => catalog::run(app, command, ctx).await,
        Command::Restore(a) => restore::run(app, a, ctx).await,
        Command::Verify(a) => verify::run(app, a, ctx).await,
        Command::Keys { command } => keys::run(app, command, ctx).await,
        Command::Audit { command } => audit::run(app, command, ctx).await,
        Command::Retention { command } => retention::run(app, command, ctx).await,
        Command::Shred(a) => shred::run(app, a, ctx).await,
        Command::Drill(a) => drill::run(app, a, ctx).await,
        Command::Hold { command } => hold::run(app, command, ctx).await,
        // Local-only commands never reach here (main.rs runs them).
        Command::CheckConfig { .. } | Command::Daemon | Command::Status { .. } => Ok(exit::OK),
    }
}
