//! The caller's half of the control socket (the daemon's is `daemon::control`; the frames
//! both speak are [`super::protocol`]): route a command to the running daemon, or run it here
//! under the state folder's lock when none runs, and read the daemon's answer: its text to this
//! process's stdout and stderr, a restore's plaintext to a [`RestoreWriter`] that writes it with
//! the caller's own rights.
//!
//! May call: `config`, `lock`, `app`, `ops` (the restore destination, opening a WAL file), and
//! the commands of [`super`].

use std::io::{IsTerminal, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::access::{check_bounds, Access};
use super::args::{BackupArgs, Command, RestoreArgs, WalFetchArgs, WalPushArgs};
use super::ctx::{exit, Ctx, Globals};
use super::out::Out;
use super::protocol::{
    encode_request, read_frame, Begin, CallError, Exit, Written, FIRST_ANSWER, TAG_BEGIN, TAG_DATA,
    TAG_EXIT, TAG_SESSION, TAG_STDERR, TAG_STDOUT, TAG_WRITTEN,
};
use super::receive::{Incoming, ReceiveError};
use crate::config::Config;
use crate::lock::{self, Role};
use crate::Coffre;

/// The daemon's answer to a command (or this process's, without a daemon): its exit code, and
/// the recovery session a point-in-time restore opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: u8,
    pub session: Option<String>,
}

impl Answer {
    fn code(code: u8) -> Answer {
        Answer {
            code,
            session: None,
        }
    }
}

/// Writes a restore's plaintext on the caller's side.
pub trait RestoreWriter {
    fn begin(&mut self, b: &Begin) -> Result<(), ReceiveError>;
    fn data(&mut self, bytes: Vec<u8>) -> Result<(), ReceiveError>;
    /// The daemon wrote the whole plaintext into the file passed with the request.
    fn written(&mut self, w: &Written) -> Result<(), ReceiveError>;
    /// Every check passed: make it durable and move it into place.
    fn finish(&mut self) -> Result<(), ReceiveError>;
    /// Something failed: remove what was written.
    fn abort(&mut self);
}

/// Through the daemon when one answers on its control socket; otherwise here, holding the state
/// folder's lock. Never here beside a running daemon: its lock refuses that. The exit code, and
/// the recovery session a point-in-time restore opened.
pub async fn route(globals: &Globals, cmd: &Command) -> Result<Answer> {
    let config = Config::load(&globals.config_path());
    let socket = std::env::var_os("COFFRE_SOCKET")
        .map(PathBuf::from)
        .or_else(|| config.as_ref().ok().map(Config::control_socket_path))
        .unwrap_or_else(|| PathBuf::from("/run/coffre/coffre.sock"));
    let refused = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => return remote(s, cmd).await,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(Answer::code(refused_connection(&socket)))
        }
        Err(e) => e,
    };
    let config = config.map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(no coffre daemon answers on {} either: {refused})",
            socket.display()
        )
    })?;
    let _lock = match lock::acquire(&config.state_dir, Role::Command) {
        Ok(l) => l,
        Err(e) if e.daemon_running().is_some() => {
            let (starting, recorded) = e.daemon_running().unwrap_or_default();
            // The daemon's own socket path wins over the one computed here (a shell has no
            // systemd RUNTIME_DIRECTORY); COFFRE_SOCKET, when set, is the caller's choice.
            let socket = match recorded {
                Some(p) if std::env::var_os("COFFRE_SOCKET").is_none() => p.to_path_buf(),
                _ => socket.clone(),
            };
            // A daemon that is starting holds the lock before its socket listens: wait for it.
            // One that is ready may have started since our first try: try its socket again.
            let limit = std::time::Duration::from_secs(if starting { 30 } else { 3 });
            if let Some(s) = wait_for_socket(&socket, limit) {
                return remote(s, cmd).await;
            }
            bail!(
                "{e}. Its control socket {} does not answer ({refused}); nothing was run",
                socket.display()
            )
        }
        Err(e) if e.denied() => bail!("{}", daemon_down(cmd, &socket, &refused, &e)),
        Err(other) => return Err(other.into()),
    };
    run_here(config, cmd).await
}

/// Run `cmd` in this process (no daemon runs; the caller holds the state folder's lock).
async fn run_here(mut config: Config, cmd: &Command) -> Result<Answer> {
    // Bad arguments exit 2 here as through the daemon (`cli::validate_request`).
    if let Err(e) = check_bounds(cmd) {
        eprintln!("error: bad arguments: {e}");
        return Ok(Answer::code(exit::USAGE));
    }
    if cmd.access() == Access::Read {
        // Listing and checking never create a master key (docs/security.md): a missing key is
        // reported, with how to create it (`keys init`).
        for k in &mut config.key_providers {
            k.create_master_key = false;
        }
    }
    let app = Coffre::open(config).await?;
    let ctx = Ctx {
        actor: crate::actor::current_user(),
        out: Out::local(),
        restore_sink: None,
        caller_file: Default::default(),
        daemon: None,
        session: Default::default(),
    };
    let result = super::execute(&app, cmd, &ctx).await;
    let session = ctx.session.lock().unwrap_or_else(|e| e.into_inner()).take();
    if cmd.writes_access_log() {
        // The access log's sealed copy follows it to the stores (best effort: the daemon and
        // the next command retry).
        if let Err(e) = crate::ops::audit_replicate::replicate(&app).await {
            tracing::warn!(error = %e, "access log not replicated to the stores yet");
        }
    }
    Ok(Answer {
        code: result?,
        session,
    })
}

/// No daemon answers and this caller may not run the command without one (the state folder is
/// the daemon's): say so, and what PostgreSQL does meanwhile for its archive and restore
/// commands.
fn daemon_down(
    cmd: &Command,
    socket: &std::path::Path,
    refused: &std::io::Error,
    e: &crate::lock::LockError,
) -> String {
    let then = cmd.while_daemon_down();
    format!(
        "the coffre daemon is not running: no daemon answers on its control socket {} ({refused}), and without it only the daemon's user may use the state folder ({e}). Start it (`systemctl start coffre`; `systemctl status coffre` and `journalctl -u coffre` say why it stopped){then}",
        socket.display()
    )
}

/// The caller may not connect to the control socket (permission denied): a refusal by role,
/// exit 77 like one the daemon gives.
fn refused_connection(socket: &std::path::Path) -> u8 {
    eprintln!(
        "error: refused: cannot connect to the daemon's control socket {}: permission denied. Only root and members of the operators' group (audit.operators-group) may use coffre on this host",
        socket.display()
    );
    exit::REFUSED
}

/// Connect to the socket of a daemon that is starting, for up to `limit`.
fn wait_for_socket(
    socket: &std::path::Path,
    limit: std::time::Duration,
) -> Option<std::os::unix::net::UnixStream> {
    let t = std::time::Instant::now();
    let mut said = false;
    while t.elapsed() < limit {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(socket) {
            return Some(s);
        }
        if !said && t.elapsed() > std::time::Duration::from_secs(2) {
            eprintln!(
                "the coffre daemon holds the state folder but its control socket {} does not answer yet; waiting...",
                socket.display()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// Send the command to the daemon. Paths are made absolute here; a restore's target is checked
/// and then written here, with the caller's own rights.
async fn remote(s: std::os::unix::net::UnixStream, cmd: &Command) -> Result<Answer> {
    let mut cmd = cmd.clone();
    let Handover { writer, file } = match &mut cmd {
        Command::Restore(a) => a.hand_over()?,
        Command::Backup(a) => a.hand_over()?,
        Command::WalPush(a) => a.hand_over()?,
        Command::WalFetch(a) => a.hand_over()?,
        _ => Handover::default(),
    };
    let answer = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let w = writer.as_mut().map(|w| w as &mut dyn RestoreWriter);
        call(s, &cmd, w, file)
    })
    .await
    .context("the control socket client stopped")??;
    Ok(answer)
}

/// What the caller hands the daemon with a command besides its arguments: the destination it
/// writes a restore's plaintext into, and a file passed with the request.
#[derive(Default)]
struct Handover {
    writer: Option<Incoming>,
    file: Option<OwnedFd>,
}

impl RestoreArgs {
    /// The target made absolute and checked; the plaintext is written there by this process.
    fn hand_over(&mut self) -> Result<Handover> {
        self.to =
            std::path::absolute(&self.to).with_context(|| format!("--to {}", self.to.display()))?;
        crate::ops::snapshot::restore::check_target(&self.to)?;
        Ok(Handover {
            writer: Some(Incoming::new(
                self.to.clone(),
                std::io::stderr().is_terminal() && !self.json,
            )),
            file: None,
        })
    }
}

impl BackupArgs {
    /// The snapshot's path, canonical (the daemon checks it is inside the source's folder).
    fn hand_over(&mut self) -> Result<Handover> {
        self.path = std::fs::canonicalize(&self.path)
            .with_context(|| format!("snapshot {}", self.path.display()))?;
        Ok(Handover::default())
    }
}

impl WalPushArgs {
    /// The WAL file, opened here, with our rights and without following a symlink; the daemon
    /// reads this descriptor only, never the path.
    fn hand_over(&mut self) -> Result<Handover> {
        self.path = std::path::absolute(&self.path)
            .with_context(|| format!("WAL file {}", self.path.display()))?;
        let f = crate::ops::wal::archive::open_wal_file(&self.path)?;
        Ok(Handover {
            writer: None,
            file: Some(OwnedFd::from(f)),
        })
    }
}

impl WalFetchArgs {
    /// An empty file beside `%p`, opened with our rights, for the daemon to write into.
    fn hand_over(&mut self) -> Result<Handover> {
        self.to =
            std::path::absolute(&self.to).with_context(|| format!("{}", self.to.display()))?;
        let mut w = Incoming::new(self.to.clone(), false);
        let file = Some(w.prepare()?);
        Ok(Handover {
            writer: Some(w),
            file,
        })
    }
}

/// Send `command` and read the answer (its exit code, and the recovery session a point-in-time
/// restore opened). Text goes to this process's stdout
/// and stderr; a restore's plaintext to `restore`, which writes it with the caller's rights.
/// `file`: an empty file the caller opened, passed with the request for the daemon to write
/// into (`wal-fetch`).
pub fn call(
    mut s: std::os::unix::net::UnixStream,
    command: &Command,
    restore: Option<&mut dyn RestoreWriter>,
    file: Option<OwnedFd>,
) -> Result<Answer, CallError> {
    let line = encode_request(command)?;
    let silent = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    s.set_read_timeout(Some(FIRST_ANSWER))
        .and_then(|()| s.set_write_timeout(Some(FIRST_ANSWER)))
        .map_err(CallError::Setup)?;
    send_request(&s, &line, file.as_ref())
        .and_then(|sent| s.write_all(&line[sent..]))
        .map_err(|e| match silent(&e) {
            true => CallError::Hung,
            false => CallError::Send(e),
        })?;
    let mut r = std::io::BufReader::new(s);
    let mut restore = restore;
    let mut session = None;
    let mut first = true;
    loop {
        let frame = match first {
            true => first_frame(&mut r),
            false => read_frame(&mut r),
        };
        first = false;
        let (tag, body) = match frame {
            Ok(f) => f,
            Err(e) => {
                if let Some(w) = restore.as_mut() {
                    w.abort();
                }
                return Err(e);
            }
        };
        if let Some(code) = on_frame(tag, body, &mut restore, &mut session)? {
            return Ok(Answer { code, session });
        }
    }
}

/// Send the first bytes of `line` with `file`'s descriptor attached (the kernel delivers it with
/// them); returns how many bytes went. Without a file, nothing is sent here.
pub(crate) fn send_request(
    s: &std::os::unix::net::UnixStream,
    line: &[u8],
    file: Option<&OwnedFd>,
) -> std::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let Some(file) = file else {
        return Ok(0);
    };
    let fds = [file.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("cannot attach the file descriptor"));
    }
    loop {
        match rustix::net::sendmsg(
            s,
            &[std::io::IoSlice::new(line)],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(std::io::Error::from),
        }
    }
}

/// The first frame of the answer, within [`FIRST_ANSWER`] (then the socket waits as long as it
/// takes). `Err(None)`: nothing came in time.
fn first_frame(
    r: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
) -> Result<(u8, Vec<u8>), CallError> {
    let mut head = [0u8; 1];
    let n = loop {
        match r.read(&mut head) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(CallError::Hung)
            }
            Err(e) => return Err(CallError::Closed(e)),
        }
    };
    let untimed = r
        .get_ref()
        .set_read_timeout(None)
        .and_then(|()| r.get_ref().set_write_timeout(None));
    if let Err(e) = untimed {
        return Err(CallError::Setup(e));
    }
    read_frame(&mut std::io::Read::chain(&head[..n], r))
}

/// Act on one frame: text to stdout or stderr, restored bytes to `restore`; the exit frame
/// ends the answer (its code returned).
fn on_frame(
    tag: u8,
    body: Vec<u8>,
    restore: &mut Option<&mut dyn RestoreWriter>,
    session: &mut Option<String>,
) -> Result<Option<u8>, CallError> {
    let nothing_to_restore = || CallError::NothingToRestore;
    match tag {
        TAG_STDOUT => {
            let mut o = std::io::stdout();
            let _ = o.write_all(&body);
            let _ = o.flush();
        }
        TAG_STDERR => {
            let _ = std::io::stderr().write_all(&body);
        }
        TAG_BEGIN => {
            let b: Begin = serde_json::from_slice(&body).map_err(CallError::BadHeader)?;
            restore
                .as_mut()
                .ok_or_else(nothing_to_restore)?
                .begin(&b)
                .map_err(CallError::Writer)?;
        }
        TAG_DATA => restore
            .as_mut()
            .ok_or_else(nothing_to_restore)?
            .data(body)
            .map_err(CallError::Writer)?,
        TAG_WRITTEN => {
            let x: Written = serde_json::from_slice(&body).map_err(CallError::BadAnswer)?;
            restore
                .as_mut()
                .ok_or_else(nothing_to_restore)?
                .written(&x)
                .map_err(CallError::Writer)?;
        }
        TAG_SESSION => {
            let id = String::from_utf8(body).map_err(|_| CallError::BadSession)?;
            *session = Some(id);
        }
        TAG_EXIT => {
            let e: Exit = serde_json::from_slice(&body).map_err(CallError::BadAnswer)?;
            if let Some(w) = restore.as_mut() {
                if e.exit == exit::OK {
                    w.finish().map_err(CallError::Writer)?;
                } else {
                    w.abort();
                }
            }
            return Ok(Some(e.exit));
        }
        t => return Err(CallError::UnknownFrame(t)),
    }
    Ok(None)
}

/// The caller's own destination writes what the daemon streams.
impl RestoreWriter for Incoming {
    fn begin(&mut self, b: &Begin) -> Result<(), ReceiveError> {
        Incoming::begin(self, &b.snapshot, b.kind, b.size)
    }
    fn data(&mut self, bytes: Vec<u8>) -> Result<(), ReceiveError> {
        Incoming::data(self, bytes)
    }
    fn written(&mut self, w: &Written) -> Result<(), ReceiveError> {
        Incoming::written(self, w.size)
    }
    fn finish(&mut self) -> Result<(), ReceiveError> {
        Incoming::finish(self)
    }
    fn abort(&mut self) {
        Incoming::abort(self)
    }
}
