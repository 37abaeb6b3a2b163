//! What a command runs with besides its own arguments: its context ([`Ctx`]: who runs it, where
//! its output and restored bytes go), the global options ([`Globals`]), the exit codes, and the
//! error text a failed command prints.

use anyhow::Result;

use super::out::Out;
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
