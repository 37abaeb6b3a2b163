//! The control socket's protocol, shared by its two halves (the daemon's server in
//! `daemon::control`, the caller's client in [`super::client`]): the request line, the answer's
//! frames, and their encoding. It owns no socket and runs nothing.
//!
//! A request is one JSON line `{"v": 1, "command": <cli::Command>}` of at most [`MAX_REQUEST`]
//! bytes. The answer is a sequence of frames (tag byte, 4-byte big-endian length, payload): `o`
//! and `e` text for stdout and stderr, `B` (JSON) and `D` (bytes) for a restore's plaintext,
//! which the caller writes with its own rights, `W` (JSON) when the daemon wrote the plaintext
//! into the file the caller passed, `S` the recovery session a point-in-time restore opened,
//! and last `X` (JSON `{"exit": n}`).

use std::io::Read;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::args::Command;

/// Protocol version of a request.
pub const VERSION: u32 = 1;
/// Longest request line accepted (bytes, newline included).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest data frame a client accepts.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Longest wait of a caller for the daemon's first frame. The daemon answers every request at
/// once (a refusal, a bad request, busy, or an empty `e` frame when the command starts), within
/// its own read timeout for the request line and the admission checks (group lookups, the
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

/// Why the caller's exchange with the daemon failed (the caller's side of the socket).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
    #[error(
        "the request is longer than {MAX_REQUEST} bytes: shorten --purpose or the other arguments"
    )]
    TooLong,
    #[error("cannot set up the control socket: {0}")]
    Setup(std::io::Error),
    #[error("cannot send the request to the daemon: {0}")]
    Send(std::io::Error),
    #[error("the coffre daemon accepted the connection on its control socket but answered nothing for {} s: it is stopped or hung (`systemctl status coffre`; state T is a stopped process: `kill -CONT` it or restart the service). This command did not start", FIRST_ANSWER.as_secs())]
    Hung,
    #[error("the daemon closed the control socket before answering ({0}); see its log (journalctl -u coffre)")]
    Closed(std::io::Error),
    #[error("the daemon sent a frame of {0} bytes: protocol error")]
    FrameTooLong(usize),
    #[error("the daemon's answer was cut: {0}")]
    Cut(std::io::Error),
    #[error("bad restore header from the daemon: {0}")]
    BadHeader(serde_json::Error),
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(serde_json::Error),
    #[error("bad recovery session id from the daemon")]
    BadSession,
    #[error("the daemon sent restored data for a command that restores nothing")]
    NothingToRestore,
    #[error("the daemon sent an unknown frame {0}: protocol error")]
    UnknownFrame(u8),
    /// The caller's writer of restored bytes failed.
    #[error("{0}")]
    Writer(super::receive::ReceiveError),
}

/// The request line for `command`: JSON and a newline, at most [`MAX_REQUEST`] bytes.
pub fn encode_request(command: &Command) -> Result<Vec<u8>, CallError> {
    let mut line = serde_json::to_vec(&Request {
        v: VERSION,
        command: command.clone(),
    })
    .map_err(CallError::Encode)?;
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(CallError::TooLong);
    }
    Ok(line)
}

/// A frame's head: its tag and the payload's length.
pub fn frame_head(tag: u8, len: usize) -> [u8; 5] {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(len as u32).to_be_bytes());
    head
}

pub fn push_frame(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    buf.extend_from_slice(&frame_head(tag, payload.len()));
    buf.extend_from_slice(payload);
}

pub fn push_exit(buf: &mut Vec<u8>, code: u8) {
    let body =
        serde_json::to_vec(&Exit { exit: code }).unwrap_or_else(|_| b"{\"exit\":1}".to_vec());
    push_frame(buf, TAG_EXIT, &body);
}

/// An answer that is only an error message and an exit code.
pub fn fail(code: u8, msg: String) -> Vec<u8> {
    let mut buf = Vec::new();
    push_frame(&mut buf, TAG_STDERR, msg.as_bytes());
    push_exit(&mut buf, code);
    buf
}

/// One frame of the daemon's answer: its tag and body.
pub fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), CallError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(CallError::Closed)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(CallError::FrameTooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(CallError::Cut)?;
    Ok((head[0], body))
}
