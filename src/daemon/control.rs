//! The control socket's server (the daemon's half; the caller's is `cli::client`, the frames
//! both speak `cli::protocol`): while the daemon runs it is the only process that reads keys or writes
//! the keyring, catalog, journal and access log, and every CLI command that does reaches it here.
//!
//! A request is one JSON line `{"v": 1, "command": <cli::Command>}`: a typed value, each field
//! validated and bounded, executed in the daemon's own process. No command line, global option,
//! config path, environment or working directory comes from the caller. The daemon reads the
//! caller's peer credentials (`SO_PEERCRED`) and admits by role (`daemon::admission`): a source's
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
//! The answer is a sequence of frames (`cli::protocol`). The first frame comes at once (a
//! refusal, or an empty `e` frame when the command starts): a caller that gets none within
//! `cli::protocol::FIRST_ANSWER` says the daemon is stopped or hung rather than wait forever.
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

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::admission::{admission, log_refusal, Caller, RefusalLimiter};
use crate::app::Coffre;
use crate::cli::protocol::{
    fail, frame_head, push_exit, push_frame, Begin, Request, Written, MAX_REQUEST, TAG_BEGIN,
    TAG_DATA, TAG_SESSION, TAG_STDERR, TAG_STDOUT, TAG_WRITTEN, VERSION,
};
use crate::cli::{self, exit, Access, Command, Ctx, Frame, Out};
use crate::ops::snapshot::restore::Chunk;

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
/// Where the socket is: `daemon.control-socket`, else `$RUNTIME_DIRECTORY/coffre.sock`, else
/// `<state-dir>/run/coffre.sock`.
pub fn socket_path(config: &crate::Config) -> PathBuf {
    config.control_socket_path()
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
    let slots = Arc::new(Slots::new());
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
        let (slots, limiter) = (slots.clone(), limiter.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, app, &slots, &limiter).await {
                tracing::warn!(error = %e, "control socket request failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

use std::os::unix::fs::DirBuilderExt;

/// One connection's task: who calls (resolved off the async threads), its place among the
/// connections served (or busy), then the request.
async fn connection(
    stream: UnixStream,
    app: Arc<Coffre>,
    slots: &Slots,
    limiter: &Mutex<RefusalLimiter>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let a = app.clone();
    let caller = tokio::task::spawn_blocking(move || Caller::resolve(&a, uid))
        .await
        .map_err(std::io::Error::other)?;
    let Some(slot) = slots.take(uid, !caller.archives.is_empty()) else {
        busy(stream).await;
        return Ok(());
    };
    let r = handle(stream, &app, limiter, &caller).await;
    drop(slot);
    r
}

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

/// Write one frame within [`WRITE_TIMEOUT`]: a caller that stops reading is cut off.
async fn write_frame(
    w: &mut (impl AsyncWriteExt + Unpin),
    tag: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let head = frame_head(tag, payload.len());
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

/// Why a request line could not be read: a bad request (exit 2).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("no complete request within {} s", READ_TIMEOUT.as_secs())]
    TimedOut,
    #[error("reading the request: {0}")]
    Read(std::io::Error),
    #[error("the request is longer than {MAX_REQUEST} bytes or ends without a newline")]
    TooLong,
}

/// The first bytes the caller sent and the descriptor it passed with them, if any (at most one
/// is kept; the kernel closes any more, and a descriptor arriving later is never read).
async fn first_read(stream: &UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>), RequestError> {
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
        Err(_) => Err(RequestError::TimedOut),
        Ok(Err(e)) => Err(RequestError::Read(e)),
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
) -> Result<Vec<u8>, RequestError> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    match tokio::time::timeout(limit, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(RequestError::TimedOut),
        Ok(Err(e)) => Err(RequestError::Read(e)),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => Err(RequestError::TooLong),
        Ok(Ok(_)) => Ok(line),
    }
}

/// One connection: read and parse the request, admit it (version, caller, command), run it in
/// the daemon's process, and stream its text and restored bytes back, then its exit code.
async fn handle(
    stream: UnixStream,
    app: &Arc<Coffre>,
    limiter: &Mutex<RefusalLimiter>,
    caller: &Caller,
) -> std::io::Result<()> {
    let name = caller.name.clone();
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
    let passed = passed.filter(|_| command.takes_callers_file());
    if let Some(answer) = refusal(app, limiter, caller, req.v, &mut command) {
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
    caller: &Caller,
    version: u32,
    command: &mut Command,
) -> Option<Vec<u8>> {
    let (uid, name) = (caller.uid, caller.name.as_str());
    let (code, reason) = if version != VERSION {
        (
            exit::USAGE,
            format!(
                "request version {version} is not {VERSION}: use the coffre binary of the daemon's version"
            ),
        )
    } else if let Err(refusal) = admission(caller, app, command) {
        (exit::REFUSED, refusal.to_string())
    } else {
        let reason = cli::validate_request(app, command).err()?.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::send_request;
    use std::io::Write;

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
        assert!(e.to_string().contains("longer than"), "{e}");
        let mut ok: &[u8] = b"{}\n";
        assert_eq!(read_request(&mut ok, READ_TIMEOUT).await.unwrap(), b"{}\n");
        let mut cut: &[u8] = b"{\"v\":1";
        assert!(read_request(&mut cut, READ_TIMEOUT).await.is_err());
    }
}
