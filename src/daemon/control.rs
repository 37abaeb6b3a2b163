//! The control socket: when the daemon runs, the CLI's restore, drill, shred, hold and audit
//! commands go through a Unix socket. The daemon reads the caller's peer credentials, admits root
//! and members of `audit.operators-group`, refuses everyone else (and logs the refusal in the
//! access log), and runs the command as itself with the caller recorded as the actor.
//!
//! Protocol: one JSON line `{"args": [...], "cwd": "..."}`, answered by one JSON line
//! `{"exit": n, "stdout": "...", "stderr": "..."}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};

/// Commands that may go through the socket.
pub const ALLOWED: &[&str] = &["restore", "drill", "shred", "hold", "audit"];
/// Set on the child the daemon runs: the command runs locally and records this actor.
pub const ACTOR_ENV: &str = "COFFRE_ACTOR";

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub args: Vec<String>,
    pub cwd: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Where the socket is: `daemon.control-socket`, else `$RUNTIME_DIRECTORY/coffre.sock`, else
/// `<state-dir>/run/coffre.sock`.
pub fn socket_path(config: &crate::Config) -> PathBuf {
    if let Some(p) = &config.daemon.control_socket {
        return p.clone();
    }
    match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(d) => PathBuf::from(d).join("coffre.sock"),
        None => config.state_dir.join("run").join("coffre.sock"),
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Root, or a member (primary or supplementary) of the operators' group.
pub fn is_operator(uid: u32, group: Option<&str>) -> Result<bool, String> {
    if uid == 0 {
        return Ok(true);
    }
    let Some(group) = group else {
        return Ok(false);
    };
    let g = nix::unistd::Group::from_name(group)
        .map_err(|e| format!("group lookup: {e}"))?
        .ok_or_else(|| format!("audit.operators-group `{group}` does not exist"))?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    Ok(match user {
        Some(u) => u.gid == g.gid || g.mem.iter().any(|m| m == &u.name),
        None => false,
    })
}

/// Accept connections until cancelled.
pub async fn serve(
    path: PathBuf,
    config_path: PathBuf,
    app_rx: watch::Receiver<Arc<Coffre>>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Anyone may connect; the peer credentials decide.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    tracing::info!(socket = %path.display(), "control socket listening");
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
        let config_path = config_path.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &app, &config_path).await {
                tracing::warn!(error = %e, "control socket request failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn handle(stream: UnixStream, app: &Coffre, config_path: &Path) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let actor = user_name(uid);
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r);
    reader.read_line(&mut line).await?;
    let respond = |exit: i32, stdout: String, stderr: String| {
        let mut s = serde_json::to_string(&Response {
            exit,
            stdout,
            stderr,
        })
        .unwrap_or_default();
        s.push('\n');
        s
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            w.write_all(respond(2, String::new(), format!("error: bad request: {e}\n")).as_bytes())
                .await?;
            return Ok(());
        }
    };
    let command = req.args.first().cloned().unwrap_or_default();
    let group = app.config.audit.operators_group.clone();
    let allowed = is_operator(uid, group.as_deref());
    let refusal = match (&allowed, ALLOWED.contains(&command.as_str())) {
        (_, false) => Some(format!(
            "`{command}` is not a command the control socket runs"
        )),
        (Ok(true), true) => None,
        (Ok(false), true) => Some(format!(
            "user {actor} is not in the operators' group{}",
            group
                .as_deref()
                .map(|g| format!(" `{g}`"))
                .unwrap_or_else(|| " (audit.operators-group is not set: only root may)".into())
        )),
        (Err(e), true) => Some(e.clone()),
    };
    if let Some(reason) = refusal {
        let purpose = req
            .args
            .iter()
            .position(|a| a == "--purpose")
            .and_then(|i| req.args.get(i + 1))
            .cloned()
            .unwrap_or_default();
        let logged = app.audit.append(NewEntry {
            actor: actor.clone(),
            action: command.clone(),
            target: Target::default(),
            purpose,
            outcome: format!("refused: {reason}"),
            exposes: None,
        });
        tracing::warn!(actor = %actor, command = %command, "control socket refused a request: {reason}");
        let mut msg = format!("error: refused: {reason}\n");
        if let Err(e) = logged {
            msg.push_str(&format!("error: {e}\n"));
        }
        w.write_all(respond(77, String::new(), msg).as_bytes())
            .await?;
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(config_path)
        .args(&req.args)
        .current_dir(&req.cwd)
        .env(ACTOR_ENV, &actor)
        .env("COFFRE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    w.write_all(
        respond(
            out.status.code().unwrap_or(1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
        .as_bytes(),
    )
    .await?;
    Ok(())
}

/// Client side: send the command to the daemon. None when no daemon answers on `path`.
pub fn call(path: &Path, args: &[String]) -> Option<Response> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
    let cwd = std::env::current_dir().ok()?;
    let mut line = serde_json::to_string(&Request {
        args: args.to_vec(),
        cwd,
    })
    .ok()?;
    line.push('\n');
    s.write_all(line.as_bytes()).ok()?;
    let mut resp = String::new();
    std::io::BufReader::new(s).read_line(&mut resp).ok()?;
    serde_json::from_str(&resp).ok()
}
