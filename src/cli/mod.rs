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
//! is in its command's file (`restore_caller` for restore's). Each command has its own arguments
//! type ([`BackupArgs`], ...), and each handler takes its own.
//!
//! This file only declares the files and dispatches ([`execute`]): the command files import
//! what they share from lower files (`args`, `ctx` for [`Ctx`] and the exit codes, `out` for
//! [`Out`] and the `outln!`/`errln!` macros), never from here.

use anyhow::Result;

use crate::Coffre;

mod access;
mod args;
pub mod client;
mod ctx;
mod out;
pub mod protocol;
pub mod receive;

pub(crate) use access::validate_request;
pub use access::{check_bounds, Access, RequestError, MAX_NAME, MAX_PURPOSE};
pub use args::*;
pub use ctx::{bounded, error_text, exit, Ctx, Globals};
use out::errln;
pub use out::{Frame, Out};

// The commands, one file each.
mod audit;
mod backup;
mod catalog;
pub mod check_config;
mod drill;
mod hold;
pub mod keys;
pub mod restore;
pub mod restore_caller;
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
