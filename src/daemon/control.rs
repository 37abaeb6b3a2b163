//! The control socket: while the daemon runs it is the only process that reads keys or writes
//! the keyring, catalog, journal and access log, and every CLI command that does reaches it here.
//!
//! A request is one JSON line `{"v": 1, "command": <cli::Command>}`: a typed value, each field
//! validated and bounded, executed in the daemon's own process. No command line, global option,
//! config path, environment or working directory comes from the caller. The daemon reads the
//! caller's peer credentials (`SO_PEERCRED`) and admits by role ([`admission`]): a source's
//! archiver archives and fetches that source's WAL and nothing else; erasure (early shred,
//! hold release, retention run, access-log expiry) is for root and `audit.erasure-group`;
//! listing, access and backups are for operators; key rotation for root only. A refusal exits
//! 77 and is logged in the access log (rate-limited per caller); a bad request (over-long
//! purpose or name, a backup path outside the source's folder) exits 2, as it does locally, and
//! is logged the same way. The only child processes the daemon
//! starts are its own: a drill's PostgreSQL (as `drill.pg-user`, with settings coffre forces)
//! and the configured verify command; none takes text from a caller.
//!
//! The socket is 0660 for the operators' group in a 0750 folder, so other local users cannot
//! even connect. Each connection has a read deadline and a bounded request line; at most
//! [`MAX_CONNECTIONS`] are served at once.
//!
//! The answer is a sequence of frames (tag byte, 4-byte big-endian length, payload): `o` and
//! `e` text for stdout and stderr, `B` (JSON) and `D` (bytes) for a restore's plaintext, which
//! the caller writes with its own rights, and last `X` (JSON `{"exit": n}`). The first frame
//! comes at once (a refusal, or an empty `e` frame when the command starts): a caller that gets
//! none within [`FIRST_ANSWER`] says the daemon is stopped or hung rather than wait forever.
//!
//! `wal-push` reads only the descriptor the caller passed with the request (the caller opened
//! the WAL file with its own rights, without following a symlink): the daemon never opens a
//! caller's path, so a symlink or a file swapped in cannot make it read what the caller could
//! not.
//!
//! `wal-fetch` hands its file over without frames: the caller opens an empty temporary file
//! beside `%p` with its own rights and passes its descriptor with the request line
//! (SCM_RIGHTS); the daemon writes the segment into that file, fsyncs it and answers `W`
//! (JSON: object and size), and the caller checks the size and renames it into place. The
//! daemon opens nothing of the caller's: it can write only into the one file the caller gave
//! it, which it checks is an empty regular file open for writing. Any other descriptor, or one
//! passed with another command, is closed unused, and a caller that passes none gets frames.

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::cli::{self, exit, Access, Command, Ctx, Frame, Out};
use crate::ops::snapshot::restore::Chunk;

/// Protocol version of a request.
pub const VERSION: u32 = 1;
/// Longest request line accepted (bytes, newline included).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; more are answered "busy" (exit 75).
pub const MAX_CONNECTIONS: usize = 16;
/// Of those, kept for the sources' archivers (`wal-push`, `wal-fetch`), so that callers who
/// hold every other connection never make PostgreSQL's archiving fail.
pub const ARCHIVER_SLOTS: usize = 4;
/// Connections one caller (other than root and the archivers) may hold at once.
pub const PER_CALLER: usize = 4;
/// Connections one archiver may hold at once (its pushes, its recovery's fetches): not all 16,
/// so that one source's archiver cannot starve another's, nor the operators.
pub const PER_ARCHIVER: usize = 8;
/// Longest wait for a caller to take one frame of the answer; a caller that stops reading is
/// cut off (a restore it started is aborted, nothing is left looking complete).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time budget of an archiving command (`wal-push`, `wal-fetch`) through the socket: past it
/// the command is stopped and fails, and PostgreSQL retries it.
pub const ARCHIVE_BUDGET: Duration = Duration::from_secs(15 * 60);
/// How long a caller may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals logged in the access log per minute; more are counted and logged with the next.
const REFUSALS_PER_MINUTE: u32 = 10;
/// Longest data frame a client accepts.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Longest wait of a caller for the daemon's first frame. The daemon answers every request at
/// once (a refusal, a bad request, busy, or an empty `e` frame when the command starts), within
/// its own [`READ_TIMEOUT`] for the request line and the admission checks (group lookups, the
/// backup path): a daemon that accepted the connection and sent nothing for this long is
/// stopped or hung (SIGSTOP, a debugger), and the caller fails rather than wait forever. After
/// the first frame there is no limit: a restore's bytes may take long to come.
pub const FIRST_ANSWER: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub command: Command,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Begin {
    pub snapshot: crate::ids::SnapshotId,
    pub kind: crate::store::SnapshotKind,
    pub size: u64,
}

/// The `W` frame: the plaintext is in the file the caller passed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Written {
    pub snapshot: crate::ids::SnapshotId,
    pub size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Exit {
    pub exit: u8,
}

pub const TAG_STDOUT: u8 = b'o';
pub const TAG_STDERR: u8 = b'e';
pub const TAG_BEGIN: u8 = b'B';
pub const TAG_DATA: u8 = b'D';
pub const TAG_WRITTEN: u8 = b'W';
pub const TAG_EXIT: u8 = b'X';
/// The recovery session a point-in-time restore opened (its id, text), sent before `X`.
pub const TAG_SESSION: u8 = b'S';

/// The recovery session the daemon (or this process, without one) opened for the restore this
/// process asked for: `coffre restore --target-*` writes it into restore_command.
pub static RECOVERY_SESSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Where the socket is: `daemon.control-socket`, else `$RUNTIME_DIRECTORY/coffre.sock`, else
/// `<state-dir>/run/coffre.sock`.
pub fn socket_path(config: &crate::Config) -> PathBuf {
    config.control_socket_path()
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Root, or a member (primary or supplementary) of the operators' group.
pub(crate) fn is_operator(uid: u32, group: Option<&str>) -> Result<bool, String> {
    if uid == 0 {
        return Ok(true);
    }
    match group {
        Some(g) => in_group(uid, g, "audit.operators-group"),
        None => Ok(false),
    }
}

/// Is `uid` a member (primary or supplementary) of `group` (named by the config key `key`)?
fn in_group(uid: u32, group: &str, key: &str) -> Result<bool, String> {
    let g = nix::unistd::Group::from_name(group)
        .map_err(|e| format!("group lookup: {e}"))?
        .ok_or_else(|| format!("{key} `{group}` does not exist"))?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    Ok(match user {
        Some(u) => u.gid == g.gid || g.mem.iter().any(|m| m == &u.name),
        None => false,
    })
}

/// Is `uid` the archiver `spec` names: that user when a user has that name (e.g. `postgres`,
/// whose group of the same name may hold people), else a member of the group of that name.
fn is_archiver(uid: u32, spec: &str) -> bool {
    match nix::unistd::User::from_name(spec) {
        Ok(Some(u)) => u.uid.as_raw() == uid,
        _ => in_group(uid, spec, "[source.pitr] archiver").unwrap_or(false),
    }
}

/// The PITR sources whose archiver `uid` is.
fn archiver_of(app: &Coffre, uid: u32) -> Vec<String> {
    app.config
        .sources
        .iter()
        .filter(|s| {
            s.pitr
                .as_ref()
                .and_then(|p| p.archiver.as_deref())
                .is_some_and(|a| is_archiver(uid, a))
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Refusals logged per caller (uid) and window; the rest are counted and reported with that
/// caller's next logged one. Per caller, so that one account's burst never hides another's
/// refusals.
struct RefusalLimiter {
    callers: std::collections::HashMap<u32, RefusalWindow>,
}

/// One caller's minute: its start, refusals logged in it, and those not logged since the last
/// logged one.
struct RefusalWindow {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    fn new() -> RefusalLimiter {
        RefusalLimiter {
            callers: Default::default(),
        }
    }

    /// Some(n): log this refusal of `uid`, with n earlier ones of the same caller that were not
    /// logged. None: count it.
    fn admit(&mut self, uid: u32, now: Instant) -> Option<u64> {
        let minute = Duration::from_secs(60);
        // Forget the callers whose minute is over and who have nothing left to report.
        self.callers
            .retain(|_, w| now.duration_since(w.start) < minute || w.suppressed > 0);
        let w = self.callers.entry(uid).or_insert(RefusalWindow {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= minute {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < REFUSALS_PER_MINUTE {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Make the socket's folder 0750 and the socket 0660, both for the operators' group, when the
/// daemon owns them. A group the daemon cannot hand them to is a warning: then only root and
/// the daemon's own group can connect.
fn set_access(path: &Path, group: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let gid = group.and_then(|g| {
        nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|g| g.gid)
    });
    let me = nix::unistd::geteuid().as_raw();
    if let Some(dir) = path.parent() {
        let m = std::fs::metadata(dir)?;
        if m.uid() == me {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
            if let Some(gid) = gid {
                if let Err(e) = nix::unistd::chown(dir, None, Some(gid)) {
                    tracing::warn!(folder = %dir.display(), error = %e, "cannot give the control socket's folder to the operators' group (is the daemon's user a member? SupplementaryGroups= in the unit)");
                }
            }
        } else if m.mode() & 0o005 != 0 {
            tracing::warn!(folder = %dir.display(), "the control socket's folder is not the daemon's and others may enter it; the socket's own mode still keeps them out");
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = gid {
        if let Err(e) = nix::unistd::chown(path, None, Some(gid)) {
            tracing::warn!(socket = %path.display(), error = %e, "cannot give the control socket to the operators' group: only root and the daemon's group can use it");
        }
    }
    Ok(())
}

/// Bind the socket at `path`: 0660 for the operators' group, in a 0750 folder.
pub fn bind(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)?;
        }
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    set_access(path, group)?;
    tracing::info!(socket = %path.display(), "control socket listening");
    Ok(listener)
}

/// Accept connections until cancelled.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    app_rx: watch::Receiver<Arc<Coffre>>,
    cancel: CancellationToken,
) {
    let slots = Slots::new();
    let limiter = Arc::new(Mutex::new(RefusalLimiter::new()));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
        };
        let app = app_rx.borrow().clone();
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        let Some(slot) = slots.take(uid, !archiver_of(&app, uid).is_empty()) else {
            tokio::spawn(busy(stream));
            continue;
        };
        let limiter = limiter.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &app, &limiter).await {
                tracing::warn!(error = %e, "control socket request failed");
            }
            drop(slot);
        });
    }
    let _ = std::fs::remove_file(&path);
}

use std::os::unix::fs::DirBuilderExt;

/// The connections being served: [`MAX_CONNECTIONS`] in all, [`ARCHIVER_SLOTS`] of them only
/// for archivers, at most [`PER_ARCHIVER`] for one archiver and [`PER_CALLER`] for one other
/// caller (root excepted).
struct Slots {
    general: Arc<Semaphore>,
    archivers: Arc<Semaphore>,
    per_caller: Held,
}

/// Connections held per caller (uid).
type Held = Arc<Mutex<std::collections::HashMap<u32, usize>>>;

/// One connection's place; given back when dropped.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    caller: Option<(u32, Held)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((uid, map)) = &self.caller {
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(uid);
                }
            }
        }
    }
}

impl Slots {
    fn new() -> Slots {
        Slots {
            general: Arc::new(Semaphore::new(MAX_CONNECTIONS - ARCHIVER_SLOTS)),
            archivers: Arc::new(Semaphore::new(ARCHIVER_SLOTS)),
            per_caller: Default::default(),
        }
    }

    /// A place for a connection of `uid`, or None (busy).
    fn take(&self, uid: u32, archiver: bool) -> Option<Slot> {
        if uid == 0 {
            let permit = self.general.clone().try_acquire_owned().ok()?;
            return Some(Slot {
                _permit: permit,
                caller: None,
            });
        }
        let limit = if archiver { PER_ARCHIVER } else { PER_CALLER };
        let mut m = self.per_caller.lock().unwrap_or_else(|e| e.into_inner());
        let held = m.get(&uid).copied().unwrap_or(0);
        if held >= limit {
            return None;
        }
        // An archiver takes its kept places first, then the common ones.
        let permit = if archiver {
            self.archivers
                .clone()
                .try_acquire_owned()
                .or_else(|_| self.general.clone().try_acquire_owned())
                .ok()?
        } else {
            self.general.clone().try_acquire_owned().ok()?
        };
        m.insert(uid, held + 1);
        Some(Slot {
            _permit: permit,
            caller: Some((uid, self.per_caller.clone())),
        })
    }
}

/// The answer to a connection past the limits: busy, exit 75, nothing run.
async fn busy(mut stream: UnixStream) {
    let mut buf = Vec::new();
    push_frame(
        &mut buf,
        TAG_STDERR,
        format!("error: busy: the daemon serves {MAX_CONNECTIONS} requests at once ({PER_CALLER} per caller, {PER_ARCHIVER} per archiver), and all of yours or all of them are in use; nothing was run: try again shortly (exit {})\n", exit::BUSY).as_bytes(),
    );
    push_exit(&mut buf, exit::BUSY);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&buf)).await;
}

fn push_frame(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
}

fn push_exit(buf: &mut Vec<u8>, code: u8) {
    let body =
        serde_json::to_vec(&Exit { exit: code }).unwrap_or_else(|_| b"{\"exit\":1}".to_vec());
    push_frame(buf, TAG_EXIT, &body);
}

/// Write one frame within [`WRITE_TIMEOUT`]: a caller that stops reading is cut off.
async fn write_frame(
    w: &mut (impl AsyncWriteExt + Unpin),
    tag: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    let write = async {
        w.write_all(&head).await?;
        w.write_all(payload).await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the caller read nothing for {} s", WRITE_TIMEOUT.as_secs()),
        )),
    }
}

/// The first bytes the caller sent and the descriptor it passed with them, if any (at most one
/// is kept; the kernel closes any more, and a descriptor arriving later is never read).
async fn first_read(stream: &UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>), String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; MAX_REQUEST];
    let read = async {
        loop {
            stream.readable().await?;
            let got = stream.try_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let r = rustix::net::recvmsg(stream, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
                let mut fd = None;
                for m in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = m {
                        for f in fds {
                            fd.get_or_insert(f);
                        }
                    }
                }
                Ok((r.bytes, fd))
            });
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => Err(format!(
            "no complete request within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok((n, fd))) => {
            buf.truncate(n);
            Ok((buf, fd))
        }
    }
}

/// Read one request line of at most [`MAX_REQUEST`] bytes within `limit`.
async fn read_request(
    r: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    match tokio::time::timeout(limit, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(format!(
            "no complete request within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => Err(format!(
            "the request is longer than {MAX_REQUEST} bytes or ends without a newline"
        )),
        Ok(Ok(_)) => Ok(line),
    }
}

/// One connection: read and parse the request, admit it (version, caller, command), run it in
/// the daemon's process, and stream its text and restored bytes back, then its exit code.
async fn handle(
    stream: UnixStream,
    app: &Arc<Coffre>,
    limiter: &Mutex<RefusalLimiter>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let name = user_name(uid);
    let t0 = Instant::now();
    let first = first_read(&stream).await;
    let (mut r, mut w) = stream.into_split();
    let (first, passed) = match first {
        Ok(x) => x,
        Err(reason) => {
            w.write_all(&fail(
                exit::USAGE,
                format!("error: bad request: {reason}\n"),
            ))
            .await?;
            return Ok(());
        }
    };
    // The rest of the line, within what is left of READ_TIMEOUT.
    let left = READ_TIMEOUT.saturating_sub(t0.elapsed());
    let req = match read_request(&mut AsyncReadExt::chain(&first[..], &mut r), left).await {
        Err(reason) => {
            w.write_all(&fail(
                exit::USAGE,
                format!("error: bad request: {reason}\n"),
            ))
            .await?;
            drain(&mut r).await;
            return Ok(());
        }
        Ok(line) => {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => req,
                Err(e) => {
                    let msg = format!("error: bad request: {e} (is this coffre the same version as the daemon?)\n");
                    return w.write_all(&fail(exit::USAGE, msg)).await;
                }
            }
        }
    };
    let mut command = req.command;
    // Only `wal-fetch` (a file to write) and `wal-push` (the WAL file to read) take a file the
    // caller passed; any other is closed now.
    let passed =
        passed.filter(|_| matches!(command, Command::WalFetch { .. } | Command::WalPush { .. }));
    if let Some(answer) = refusal(app, limiter, (uid, &name), req.v, &mut command) {
        return w.write_all(&answer).await;
    }
    // Answer at once (an empty stderr frame): the caller waits at most FIRST_ANSWER for it.
    write_frame(&mut w, TAG_STDERR, b"").await?;
    // Run it here, in the daemon's process; text and restored bytes stream back as they come.
    let (text_tx, text_rx) = mpsc::unbounded_channel::<Frame>();
    let (data_tx, data_rx) = mpsc::channel::<Chunk>(4);
    let ctx = Ctx {
        actor: format!("{name} (via coffre-daemon)"),
        out: Out::remote(text_tx),
        restore_sink: Some(data_tx),
        daemon: Some(app.clone()),
        caller_file: std::sync::Mutex::new(passed),
        session: Default::default(),
    };
    let run = run_command(app, &command, ctx);
    let ((code, session), (mut w, alive)) = tokio::join!(run, pump(w, text_rx, data_rx));
    if alive {
        let mut buf = Vec::new();
        if let Some(id) = session {
            push_frame(&mut buf, TAG_SESSION, id.as_bytes());
        }
        push_exit(&mut buf, code);
        w.write_all(&buf).await?;
    }
    Ok(())
}

/// A request the daemon does not run, and the answer: refused by role (77), or a bad request
/// (version, bounds, a path the daemon may not read: 2, as the same arguments get locally).
/// Both are logged (rate-limited per caller).
fn refusal(
    app: &Coffre,
    limiter: &Mutex<RefusalLimiter>,
    (uid, name): (u32, &str),
    version: u32,
    command: &mut Command,
) -> Option<Vec<u8>> {
    let (code, reason) = if version != VERSION {
        (
            exit::USAGE,
            format!(
                "request version {version} is not {VERSION}: use the coffre binary of the daemon's version"
            ),
        )
    } else if let Err(reason) = admission(uid, name, app, command) {
        (exit::REFUSED, reason)
    } else {
        let reason = cli::validate_request(app, command).err()?;
        (exit::USAGE, reason)
    };
    let what = if code == exit::REFUSED {
        "refused"
    } else {
        "bad request"
    };
    let logged = match code {
        exit::REFUSED => log_refusal(app, limiter, uid, name, command, &reason),
        _ => log_refusal(
            app,
            limiter,
            uid,
            name,
            command,
            &format!("{what}: {reason}"),
        ),
    };
    tracing::warn!(actor = %name, command = %command.action(), "control socket refused a request: {what}: {reason}");
    let mut msg = format!("error: {what}: {reason}\n");
    if let Err(e) = logged {
        msg.push_str(&format!("error: {e}\n"));
    }
    Some(fail(code, msg))
}

/// Run an admitted command in the daemon's process (within its budget: archiving commands
/// have [`ARCHIVE_BUDGET`]); its exit code and the recovery session it opened, if any.
async fn run_command(app: &Arc<Coffre>, command: &Command, ctx: Ctx) -> (u8, Option<String>) {
    let action = command.action();
    let budget = match command.access() {
        Access::Archive | Access::Fetch => Some(ARCHIVE_BUDGET),
        _ => None,
    };
    let executed = match budget {
        Some(b) => tokio::time::timeout(b, cli::execute(app, command, &ctx))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "`{action}` ran past its time budget of {} s through the daemon and was stopped (the stores are likely slow or down); PostgreSQL retries it",
                    b.as_secs()
                ))
            }),
        None => cli::execute(app, command, &ctx).await,
    };
    let code = match executed {
        Ok(code) => code,
        Err(e) => {
            ctx.out.err(format!("error: {}", cli::error_text(&e)));
            exit::FAILURE
        }
    };
    let session = ctx.session.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(ctx);
    (code, session)
}

/// An answer that is only an error message and an exit code.
fn fail(code: u8, msg: String) -> Vec<u8> {
    let mut buf = Vec::new();
    push_frame(&mut buf, TAG_STDERR, msg.as_bytes());
    push_exit(&mut buf, code);
    buf
}

/// Read (and drop) a bounded rest of a request over the size limit, so that the caller gets
/// the answer rather than a reset for the bytes it sent past the limit.
async fn drain(r: &mut OwnedReadHalf) {
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::copy(&mut r.take(4 * MAX_REQUEST as u64), &mut sink),
    )
    .await;
}

/// Forward a running command's text and restored bytes to the caller as frames until both
/// channels close. A caller that went away: what comes next is dropped (a restore sees its
/// sink close and stops). Returns the writer and whether the caller is still there.
async fn pump(
    mut w: OwnedWriteHalf,
    mut text_rx: mpsc::UnboundedReceiver<Frame>,
    mut data_rx: mpsc::Receiver<Chunk>,
) -> (OwnedWriteHalf, bool) {
    let mut text_open = true;
    let mut data_open = true;
    let mut alive = true;
    while text_open || data_open {
        tokio::select! {
            biased;
            d = data_rx.recv(), if data_open => match d {
                None => data_open = false,
                Some(chunk) if alive => {
                    let r = match chunk {
                        Chunk::Begin { snapshot, kind, size } => {
                            let body = serde_json::to_vec(&Begin { snapshot, kind, size }).unwrap_or_default();
                            write_frame(&mut w, TAG_BEGIN, &body).await
                        }
                        Chunk::Data(b) => write_frame(&mut w, TAG_DATA, &b).await,
                        Chunk::Written { snapshot, size } => {
                            let body = serde_json::to_vec(&Written { snapshot, size }).unwrap_or_default();
                            write_frame(&mut w, TAG_WRITTEN, &body).await
                        }
                    };
                    if r.is_err() {
                        alive = false;
                        data_rx.close();
                    }
                }
                Some(_) => {}
            },
            t = text_rx.recv(), if text_open => match t {
                None => text_open = false,
                Some(f) if alive => {
                    let (tag, s) = match f {
                        Frame::Stdout(s) => (TAG_STDOUT, s),
                        Frame::Stderr(s) => (TAG_STDERR, s),
                    };
                    if write_frame(&mut w, tag, s.as_bytes()).await.is_err() {
                        alive = false;
                        data_rx.close();
                    }
                }
                Some(_) => {}
            },
        }
    }
    (w, alive)
}

/// May this caller run this command through the socket? Roles by capability and source:
/// root runs everything that goes through the socket; a source's archiver archives and
/// fetches that source's WAL and nothing else (whatever groups it is in); erasure needs
/// `audit.erasure-group`; the rest is for operators.
fn admission(uid: u32, name: &str, app: &Coffre, command: &Command) -> Result<(), String> {
    let access = command.access();
    if access == Access::LocalOnly {
        return Err(format!(
            "`{}` does not go through the control socket: {}",
            command.action(),
            command.local_only_reason()
        ));
    }
    if uid == 0 {
        return Ok(());
    }
    let archives = archiver_of(app, uid);
    if !archives.is_empty() {
        return match command {
            Command::WalPush { source, .. } | Command::WalFetch { source, .. }
                if archives.contains(source) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "user {name} is the archiver of source(s) {}: through the daemon it may only archive and fetch their WAL (wal-push, wal-fetch), not `{}`; an operator runs that",
                archives.join(", "),
                command.action()
            )),
        };
    }
    let audit = &app.config.audit;
    match access {
        Access::LocalOnly => Ok(()),
        Access::Root => Err(format!(
            "`{}` through the daemon is for root only (user {name})",
            command.action()
        )),
        Access::Archive => Err(format!(
            "user {name} is not the archiver of this source: only `[source.pitr] archiver` (the account PostgreSQL runs as) and root may archive its WAL, so that nobody else puts bytes under its WAL names"
        )),
        Access::Erase => match &audit.erasure_group {
            Some(g) if in_group(uid, g, "audit.erasure-group")? => Ok(()),
            Some(g) => Err(format!(
                "user {name} may not erase (`{}`): only root and members of audit.erasure-group `{g}` may",
                command.action()
            )),
            None => Err(format!(
                "`{}` erases, and audit.erasure-group is not set: only root may (user {name})",
                command.action()
            )),
        },
        Access::Read | Access::Operate | Access::Fetch => {
            match is_operator(uid, audit.operators_group.as_deref()) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "user {name} is not in the operators' group{}",
                    audit
                        .operators_group
                        .as_deref()
                        .map(|g| format!(" `{g}`"))
                        .unwrap_or_else(|| " (audit.operators-group is not set: only root may)".into())
                )),
                Err(e) => Err(e),
            }
        }
    }
}

/// Log a refusal, rate-limited, with bounded text from the caller.
fn log_refusal(
    app: &Coffre,
    limiter: &Mutex<RefusalLimiter>,
    uid: u32,
    name: &str,
    command: &Command,
    reason: &str,
) -> Result<(), crate::audit::AuditError> {
    let action = command.action();
    let admitted = limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(uid, Instant::now());
    let Some(suppressed) = admitted else {
        return Ok(());
    };
    let mut outcome = format!("refused: {}", cli::bounded(reason, 512));
    if suppressed > 0 {
        outcome.push_str(&format!(
            " ({suppressed} earlier refusal(s) not logged: rate limit)"
        ));
    }
    app.audit
        .append(NewEntry {
            actor: name.to_string(),
            action: action.to_string(),
            target: Target::default(),
            purpose: cli::bounded(command.purpose().unwrap_or_default(), cli::MAX_PURPOSE),
            outcome,
            exposes: None,
        })
        .map(|_| ())
}

/// The caller's side: send `command` and read the answer. Text goes to this process's stdout
/// and stderr; a restore's plaintext to `restore`, which writes it with the caller's rights.
/// `file`: an empty file the caller opened, passed with the request for the daemon to write
/// into (`wal-fetch`).
pub fn call(
    mut s: std::os::unix::net::UnixStream,
    command: &Command,
    restore: Option<&mut dyn RestoreWriter>,
    file: Option<OwnedFd>,
) -> Result<u8, String> {
    let mut line = serde_json::to_vec(&Request {
        v: VERSION,
        command: command.clone(),
    })
    .map_err(|e| format!("cannot encode the request: {e}"))?;
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(format!(
            "the request is longer than {MAX_REQUEST} bytes: shorten --purpose or the other arguments"
        ));
    }
    let silent = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let hung = || {
        format!(
            "the coffre daemon accepted the connection on its control socket but answered nothing for {} s: it is stopped or hung (`systemctl status coffre`; state T is a stopped process: `kill -CONT` it or restart the service). This command did not start",
            FIRST_ANSWER.as_secs()
        )
    };
    s.set_read_timeout(Some(FIRST_ANSWER))
        .and_then(|()| s.set_write_timeout(Some(FIRST_ANSWER)))
        .map_err(|e| format!("cannot set up the control socket: {e}"))?;
    send_request(&s, &line, file.as_ref())
        .and_then(|sent| s.write_all(&line[sent..]))
        .map_err(|e| match silent(&e) {
            true => hung(),
            false => format!("cannot send the request to the daemon: {e}"),
        })?;
    let mut r = std::io::BufReader::new(s);
    let mut restore = restore;
    let mut first = true;
    loop {
        let frame = match first {
            true => first_frame(&mut r).map_err(|e| e.unwrap_or_else(hung)),
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
        if let Some(code) = on_frame(tag, body, &mut restore)? {
            return Ok(code);
        }
    }
}

/// Send the first bytes of `line` with `file`'s descriptor attached (the kernel delivers it with
/// them); returns how many bytes went. Without a file, nothing is sent here.
fn send_request(
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
) -> Result<(u8, Vec<u8>), Option<String>> {
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
                return Err(None)
            }
            Err(e) => return Err(Some(format!(
                "the daemon closed the control socket before answering ({e}); see its log (journalctl -u coffre)"
            ))),
        }
    };
    let untimed = r
        .get_ref()
        .set_read_timeout(None)
        .and_then(|()| r.get_ref().set_write_timeout(None));
    if let Err(e) = untimed {
        return Err(Some(format!("cannot set up the control socket: {e}")));
    }
    read_frame(&mut std::io::Read::chain(&head[..n], r)).map_err(Some)
}

/// One frame of the daemon's answer: its tag and body.
fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(|e| {
        format!(
            "the daemon closed the control socket before answering ({e}); see its log (journalctl -u coffre)"
        )
    })?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "the daemon sent a frame of {len} bytes: protocol error"
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("the daemon's answer was cut: {e}"))?;
    Ok((head[0], body))
}

/// Act on one frame: text to stdout or stderr, restored bytes to `restore`; the exit frame
/// ends the answer (its code returned).
fn on_frame(
    tag: u8,
    body: Vec<u8>,
    restore: &mut Option<&mut dyn RestoreWriter>,
) -> Result<Option<u8>, String> {
    let nothing_to_restore =
        || "the daemon sent restored data for a command that restores nothing".to_string();
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
            let b: Begin = serde_json::from_slice(&body)
                .map_err(|e| format!("bad restore header from the daemon: {e}"))?;
            restore.as_mut().ok_or_else(nothing_to_restore)?.begin(&b)?;
        }
        TAG_DATA => restore
            .as_mut()
            .ok_or_else(nothing_to_restore)?
            .data(body)?,
        TAG_WRITTEN => {
            let x: Written = serde_json::from_slice(&body)
                .map_err(|e| format!("bad answer from the daemon: {e}"))?;
            restore
                .as_mut()
                .ok_or_else(nothing_to_restore)?
                .written(&x)?;
        }
        TAG_SESSION => {
            let id = String::from_utf8(body)
                .map_err(|_| "bad recovery session id from the daemon".to_string())?;
            let _ = RECOVERY_SESSION.set(id);
        }
        TAG_EXIT => {
            let e: Exit = serde_json::from_slice(&body)
                .map_err(|e| format!("bad answer from the daemon: {e}"))?;
            if let Some(w) = restore.as_mut() {
                if e.exit == exit::OK {
                    w.finish()?;
                } else {
                    w.abort();
                }
            }
            return Ok(Some(e.exit));
        }
        t => {
            return Err(format!(
                "the daemon sent an unknown frame {t}: protocol error"
            ))
        }
    }
    Ok(None)
}

/// Writes a restore's plaintext on the caller's side.
pub trait RestoreWriter {
    fn begin(&mut self, b: &Begin) -> Result<(), String>;
    fn data(&mut self, bytes: Vec<u8>) -> Result<(), String>;
    /// The daemon wrote the whole plaintext into the file passed with the request.
    fn written(&mut self, w: &Written) -> Result<(), String>;
    /// Every check passed: make it durable and move it into place.
    fn finish(&mut self) -> Result<(), String>;
    /// Something failed: remove what was written.
    fn abort(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One operator holds at most PER_CALLER connections, one archiver PER_ARCHIVER, and the
    /// archivers' kept places stay free of operators.
    #[test]
    fn the_socket_is_shared_fairly() {
        let slots = Slots::new();
        let op: Vec<Slot> = (0..PER_CALLER)
            .map_while(|_| slots.take(1000, false))
            .collect();
        assert_eq!(op.len(), PER_CALLER);
        assert!(
            slots.take(1000, false).is_none(),
            "past the operator's share"
        );
        // Other operators fill the common places; the archivers' stay.
        let others: Vec<Slot> = (0..100u32)
            .map_while(|i| slots.take(2000 + i / 4, false))
            .collect();
        assert_eq!(op.len() + others.len(), MAX_CONNECTIONS - ARCHIVER_SLOTS);
        let arch: Vec<Slot> = (0..10).map_while(|_| slots.take(3000, true)).collect();
        assert_eq!(arch.len(), ARCHIVER_SLOTS);
        drop(others);
        let arch2: Vec<Slot> = (0..20).map_while(|_| slots.take(3000, true)).collect();
        assert_eq!(
            arch.len() + arch2.len(),
            PER_ARCHIVER,
            "past the archiver's share"
        );
        drop(op);
        assert!(
            slots.take(1000, false).is_some(),
            "places come back when dropped"
        );
    }

    #[test]
    fn refusals_are_logged_up_to_the_limit_then_counted() {
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        for _ in 0..REFUSALS_PER_MINUTE {
            assert_eq!(l.admit(1000, t0), Some(0));
        }
        assert_eq!(l.admit(1000, t0), None);
        assert_eq!(l.admit(1000, t0), None);
        // Another caller's refusals are logged all the same.
        assert_eq!(l.admit(1001, t0), Some(0));
        let later = t0 + Duration::from_secs(61);
        assert_eq!(l.admit(1000, later), Some(2));
        assert_eq!(l.admit(1000, later), Some(0));
        // A caller whose minute is over, with nothing to report, is forgotten.
        assert!(!l.callers.contains_key(&1001));
    }

    /// A descriptor sent with the request line arrives with its first bytes; the daemon's
    /// writes land in the caller's file.
    #[tokio::test]
    async fn a_file_passed_with_the_request_arrives_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("RECOVERYXLOG.partial");
        let f = std::fs::File::create_new(&path).unwrap();
        let (daemon, caller) = UnixStream::pair().unwrap();
        let caller = caller.into_std().unwrap();
        caller.set_nonblocking(false).unwrap();
        let line = b"{\"v\":1}\n".to_vec();
        let sent = tokio::task::spawn_blocking(move || {
            let n = send_request(&caller, &line, Some(&OwnedFd::from(f))).unwrap();
            (n, caller)
        })
        .await
        .unwrap();
        assert_eq!(sent.0, 8, "the whole line went with the descriptor");
        let (bytes, fd) = first_read(&daemon).await.unwrap();
        assert_eq!(bytes, b"{\"v\":1}\n");
        let mut f = crate::fsutil::empty_file_to_write(fd.expect("no descriptor arrived")).unwrap();
        f.write_all(b"segment").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"segment");

        // Without one: the bytes alone.
        let (daemon, caller) = UnixStream::pair().unwrap();
        let mut caller = caller.into_std().unwrap();
        caller.set_nonblocking(false).unwrap();
        assert_eq!(send_request(&caller, b"x\n", None).unwrap(), 0);
        caller.write_all(b"x\n").unwrap();
        let (bytes, fd) = first_read(&daemon).await.unwrap();
        assert_eq!(bytes, b"x\n");
        assert!(fd.is_none());
    }

    #[tokio::test]
    async fn a_request_line_is_bounded() {
        let long = vec![b'a'; MAX_REQUEST + 10];
        let mut r: &[u8] = &long;
        let e = read_request(&mut r, READ_TIMEOUT).await.unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        let mut ok: &[u8] = b"{}\n";
        assert_eq!(read_request(&mut ok, READ_TIMEOUT).await.unwrap(), b"{}\n");
        let mut cut: &[u8] = b"{\"v\":1";
        assert!(read_request(&mut cut, READ_TIMEOUT).await.is_err());
    }
}
