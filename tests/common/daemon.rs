//! The one test daemon: the real `coffre daemon` started from a prepared [`Command`] (usually
//! [`super::coffre::CoffreEnv::command`]), its log in a file, waited for until its control
//! socket or status server answers, stopped with SIGTERM, killed with -9, and always reaped.
//! Also the one wait loop ([`wait_until`]) and the status server's HTTP client ([`http_get`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `coffre --config CONFIG` (the binary cargo built for this run); add the rest.
pub fn coffre_command(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffre"));
    c.arg("--config").arg(config);
    c
}

/// Poll `f` every 200 ms until it says yes; panic after `secs` seconds naming `what`.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

/// `GET path` on the status server at `port`: (HTTP code, body), `None` when it does not answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The body of `GET path` on the status server at `port`, whatever its code.
pub fn http_body(port: u16, path: &str) -> Option<String> {
    http_get(port, path).map(|(_, body)| body)
}

/// What dropping a [`TestDaemon`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGCONT then SIGTERM, up to 20 s for it to drain, then -9.
    Stop,
    /// -9 at once.
    Kill,
}

/// A running `coffre daemon`.
pub struct TestDaemon {
    pub child: Child,
    /// Where its stderr goes (`None`: nowhere).
    pub log: Option<PathBuf>,
    /// Its status server's port, once [`TestDaemon::wait_ready`] or [`TestDaemon::wait_answering`]
    /// knows it.
    pub port: Option<u16>,
    on_drop: OnDrop,
}

impl TestDaemon {
    /// Spawn `cmd` (a `coffre --config ...` command; `daemon` is added) with stdin and stdout
    /// closed and stderr written to `log` (a new file; `None`: dropped). Waits for nothing:
    /// see the `wait_*`.
    pub fn spawn(mut cmd: Command, log: Option<&Path>) -> TestDaemon {
        cmd.arg("daemon");
        Self::spawn_logging(cmd, log, false)
    }

    /// [`TestDaemon::spawn`] of a command that already says how to start the daemon (under a
    /// wrapper: `sh -c '... exec coffre ... daemon'`).
    pub fn spawn_as_is(cmd: Command, log: Option<&Path>) -> TestDaemon {
        Self::spawn_logging(cmd, log, false)
    }

    /// [`TestDaemon::spawn`], its stderr appended to `log` (one log across restarts).
    pub fn spawn_appending(mut cmd: Command, log: &Path) -> TestDaemon {
        cmd.arg("daemon");
        Self::spawn_logging(cmd, Some(log), true)
    }

    fn spawn_logging(mut cmd: Command, log: Option<&Path>, append: bool) -> TestDaemon {
        let stderr = match log {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(p)
                    .expect("daemon log"),
            ),
            None => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the daemon");
        TestDaemon {
            child,
            log: log.map(Path::to_path_buf),
            port: None,
            on_drop: OnDrop::Stop,
        }
    }

    /// What dropping it does (default: [`OnDrop::Stop`]).
    pub fn on_drop(mut self, on_drop: OnDrop) -> TestDaemon {
        self.on_drop = on_drop;
        self
    }

    /// Poll `ready` every 100 ms for up to `secs`; on a timeout, panic with `what` and the log.
    fn wait_for(self, what: &str, secs: u64, mut ready: impl FnMut() -> bool) -> TestDaemon {
        let t = Instant::now();
        while !ready() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self
    }

    /// Wait (up to `secs`) until the control socket accepts a connection.
    pub fn wait_socket(self, socket: &Path, secs: u64) -> TestDaemon {
        self.wait_for("the daemon's control socket never answered", secs, || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        })
    }

    /// Wait (up to `secs`) until the socket file exists.
    pub fn wait_socket_file(self, socket: &Path, secs: u64) -> TestDaemon {
        self.wait_for("control socket never appeared", secs, || socket.exists())
    }

    /// Wait (up to `secs`) until the status server at `port` says `/readyz` 200.
    pub fn wait_ready(mut self, port: u16, secs: u64) -> TestDaemon {
        self.port = Some(port);
        self.wait_for(&format!("daemon not ready in {secs} s"), secs, || {
            matches!(http_get(port, "/readyz"), Some((200, _)))
        })
    }

    /// Wait (up to `secs`) until the status server at `port` answers at all.
    pub fn wait_answering(mut self, port: u16, secs: u64) -> TestDaemon {
        self.port = Some(port);
        wait_until("the status server answers", secs, || {
            http_get(port, "/readyz").is_some()
        });
        self
    }

    /// `GET /status` of its status server, which must answer 200 with JSON.
    pub fn status(&self) -> serde_json::Value {
        let port = self.port.expect("the status server's port (wait_ready)");
        let (code, body) = http_get(port, "/status").expect("status endpoint answers");
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the daemon");
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Has it exited (reaping it)?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM; it must exit 0 within 20 s. Returns its log.
    pub fn stop(mut self) -> String {
        self.signal(Signal::SIGTERM);
        let t = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                assert!(st.success(), "daemon exited with {st}: {}", self.log_text());
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_text()
    }

    /// SIGTERM and wait for it to exit, however it exits and however long it drains.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let _ = kill(self.pid(), Signal::SIGTERM);
        self.child.wait().ok()
    }

    /// kill -9 and reap, keeping the value (to start another in its place).
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -9 and reap. Returns its log.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() && self.log.is_some() {
            eprintln!("--- coffre daemon log:\n{}", self.log_text());
        }
        if self.on_drop == OnDrop::Stop {
            let _ = kill(self.pid(), Signal::SIGCONT);
            let _ = kill(self.pid(), Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
