//! Who may access, and the daemon as the one owner of keys and state: with the daemon running,
//! every command that touches keys or state goes through its control socket as a typed request
//! run in the daemon's process. Real Unix users (an operator and an outsider) are created by the
//! test; it needs root (tests/run runs as root on CI).

use crate::common::config::ConfigBuilder;
use crate::common::daemon::{coffre_command, OnDrop, TestDaemon};
use crate::common::free_port;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

struct Users {
    _made: crate::common::users::UnixUsers,
    group: String,
    op: String,
    outsider: String,
}

impl Users {
    fn create() -> Users {
        let mut m = crate::common::users::UnixUsers::new();
        let group = m.group("cofops");
        let op = m.user("cofop", &[&group]);
        let outsider = m.user("cofout", &[]);
        Users {
            _made: m,
            group,
            op,
            outsider,
        }
    }

    fn uid(name: &str) -> u32 {
        crate::common::users::UnixUsers::uid(name).as_raw()
    }
}

/// A daemon on two local stores, with an operator and an outsider, one file snapshot and one
/// directory snapshot protected before it started.
struct Host {
    /// First, so that it goes (killed) before its folder.
    daemon: TestDaemon,
    users: Users,
    _tmp: tempfile::TempDir,
    d: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

/// Protect, before any daemon runs, a file snapshot (`d/emr.sql`) and a directory snapshot
/// (`d/base`) of source `emr`.
fn protect_two_snapshots(d: &Path, config: &Path) {
    std::fs::write(
        d.join("emr.sql"),
        "INSERT INTO patients VALUES ('CANARY-ZXQ-PATIENT');\n".repeat(2000),
    )
    .unwrap();
    let tree = d.join("base");
    std::fs::create_dir_all(tree.join("global")).unwrap();
    std::fs::write(tree.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(tree.join("global/pg_control"), vec![7u8; 70_000]).unwrap();
    for snap in [d.join("emr.sql"), tree] {
        let st = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["backup", "--source", "emr"])
            .arg(&snap)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

struct Out {
    code: i32,
    text: String,
}

impl Host {
    /// `wrap`: a shell command line the daemon is started under (`{daemon}` is replaced).
    fn start(wrap: Option<&str>) -> Host {
        Host::start_with(wrap, true)
    }

    /// `socket_in_config` false: no `daemon.control-socket`; the daemon finds its socket folder
    /// in `RUNTIME_DIRECTORY`, as under systemd, and the commands run here do not have it.
    fn start_with(wrap: Option<&str>, socket_in_config: bool) -> Host {
        let users = Users::create();
        let tmp = tempfile::tempdir().unwrap();
        let d: PathBuf = tmp.path().to_path_buf();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["in", "run", "op", "out"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // The operator's own folder: restores land there, written by the operator.
        std::fs::set_permissions(d.join("op"), std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(
            &d.join("op"),
            Some(nix::unistd::Uid::from_raw(Users::uid(&users.op))),
            None,
        )
        .unwrap();
        let port = free_port();
        let socket_line = if socket_in_config {
            format!(
                "control-socket = \"{}\"",
                d.join("run/coffre.sock").display()
            )
        } else {
            String::new()
        };
        let config = ConfigBuilder::new(&d)
            .table("daemon", &socket_line)
            .status(port)
            .audit(&format!("operators-group = \"{}\"", users.group))
            .source("emr", &d.join("in"), "complete = \"marker\"")
            .local_stores(&[("a", "a"), ("b", "b")])
            .file_keys()
            .write(&d.join("coffre.toml"));
        // Operators need neither the config nor the state: the socket is all they use.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        protect_two_snapshots(&d, &config);
        let daemon_line = format!("exec {BIN} --config {} daemon", config.display());
        let mut cmd = match wrap {
            Some(w) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(w.replace("{daemon}", &daemon_line));
                c
            }
            None => {
                let mut c = coffre_command(&config);
                c.arg("daemon");
                c
            }
        };
        if !socket_in_config {
            cmd.env("RUNTIME_DIRECTORY", d.join("run"));
        }
        cmd.env("COFFRE_LOG", "warn");
        let socket = d.join("run/coffre.sock");
        let daemon = TestDaemon::spawn_as_is(cmd, Some(&d.join("daemon.log")))
            .on_drop(OnDrop::Kill)
            .wait_socket_file(&socket, 30);
        Host {
            users,
            _tmp: tmp,
            d,
            config,
            socket,
            daemon,
        }
    }

    /// Run coffre as `user` in `dir`, finding the daemon through COFFRE_SOCKET only.
    fn as_user(&self, user: &str, dir: &Path, args: &[&str]) -> Out {
        let out = Command::new("runuser")
            .args([
                "-u",
                user,
                "--",
                "env",
                &format!("COFFRE_SOCKET={}", self.socket.display()),
                BIN,
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Root with the daemon's config (as an administrator on the host would run it).
    fn as_root(&self, args: &[&str]) -> Out {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Send raw request bytes to the socket as `user` and return the daemon's frames as text.
    fn raw(&self, user: &str, request: &[u8]) -> String {
        let req = self.d.join(format!("req-{}", rand::random::<u32>()));
        std::fs::write(&req, request).unwrap();
        std::fs::set_permissions(&req, std::fs::Permissions::from_mode(0o644)).unwrap();
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\ns.sendall(open('{}','rb').read())\nbuf=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  buf+=c\nsys.stdout.write(buf.decode('utf-8','replace'))\n",
            self.socket.display(),
            req.display()
        );
        let out = Command::new("runuser")
            .args(["-u", user, "--", "/usr/bin/python3", "-c", &script])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        let o = self.as_root(&["audit", "show", "--json"]);
        assert_eq!(o.code, 0, "{}", o.text);
        serde_json::from_str(o.text.trim_end()).unwrap_or_else(|e| panic!("{e}: {}", o.text))
    }
}

fn tree_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn outsiders_cannot_connect_and_operators_restore_files_they_own() {
    let h = Host::start(None);
    let op = h.users.op.clone();
    let opdir = h.d.join("op");

    // The outsider cannot even connect (0660 socket for the operators' group, 0750 folder).
    let o = h.as_user(
        &h.users.outsider,
        &h.d,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "/tmp/x.sql",
            "--purpose",
            "curiosity",
        ],
    );
    assert_eq!(o.code, 77, "{}", o.text);
    assert!(o.text.contains("permission denied"), "{}", o.text);
    assert!(!Path::new("/tmp/x.sql").exists());
    let mode = std::fs::metadata(&h.socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let dmode = std::fs::metadata(h.d.join("run")).unwrap().mode() & 0o777;
    assert_eq!(dmode, 0o750);

    // The operator lists without reading the config (0600 root) or the state.
    let o = h.as_user(&op, &opdir, &["snapshots", "--json"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let list: Vec<serde_json::Value> = serde_json::from_str(o.text.trim_end()).unwrap();
    assert_eq!(list.len(), 2, "{}", o.text);
    let file_id = list[0]["id"].as_str().unwrap().to_string();
    let dir_id = list[1]["id"].as_str().unwrap().to_string();

    // A file restore, relative to the operator's working folder: the file is the operator's.
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "restore",
            &file_id,
            "--source",
            "emr",
            "--to",
            "dump.sql",
            "--purpose",
            "DR rehearsal",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let restored = opdir.join("dump.sql");
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(h.d.join("emr.sql")).unwrap()
    );
    let m = std::fs::metadata(&restored).unwrap();
    assert_eq!(
        m.uid(),
        Users::uid(&op),
        "the restored file is the operator's"
    );
    assert_eq!(m.mode() & 0o777, 0o600);

    // A directory restore through the socket: the tar stream is unpacked by the operator.
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "restore",
            &dir_id,
            "--source",
            "emr",
            "--to",
            "pgdata",
            "--purpose",
            "DR rehearsal",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(
        tree_files(&opdir.join("pgdata")),
        tree_files(&h.d.join("base"))
    );
    assert_eq!(
        std::fs::metadata(opdir.join("pgdata/global/pg_control"))
            .unwrap()
            .uid(),
        Users::uid(&op)
    );

    // The target exists: refused before anything is accessed; nothing replaced.
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "dump.sql",
            "--purpose",
            "again",
        ],
    );
    assert_ne!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("already exists"), "{}", o.text);

    // Key rotation through the daemon is root's only; the refusal is logged with the operator.
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "keys",
            "rotate",
            "--to-provider",
            "local",
            "--purpose",
            "try",
        ],
    );
    assert_eq!(o.code, 77, "{}", o.text);
    assert!(o.text.contains("root only"), "{}", o.text);

    let entries = h.audit();
    let by_op = format!("{op} (via coffre-daemon)");
    let restores: Vec<_> = entries
        .iter()
        .filter(|e| e["actor"] == by_op.as_str() && e["action"] == "restore")
        .collect();
    assert!(
        restores.iter().filter(|e| e["outcome"] == "ok").count() == 2,
        "{entries:?}"
    );
    assert!(entries.iter().any(|e| e["actor"] == op.as_str()
        && e["action"] == "keys-rotate"
        && e["outcome"].as_str().unwrap().starts_with("refused")));
    // `--actor` names the person: their runs through the daemon are theirs too.
    let o = h.as_root(&["audit", "show", "--actor", &op, "--json"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let mine: Vec<serde_json::Value> = serde_json::from_str(o.text.trim_end()).unwrap();
    assert!(
        mine.iter()
            .any(|e| e["actor"] == by_op.as_str() && e["action"] == "restore"),
        "{mine:?}"
    );
    assert!(mine
        .iter()
        .all(|e| e["actor"] == op.as_str() || e["actor"] == by_op.as_str()));
    // Time bounds: a duration before now finds the restores; a word that is not a time is
    // refused, not answered with nothing.
    let o = h.as_root(&[
        "audit", "show", "--since", "1h", "--action", "restore", "--json",
    ]);
    assert_eq!(o.code, 0, "{}", o.text);
    let recent: Vec<serde_json::Value> = serde_json::from_str(o.text.trim_end()).unwrap();
    assert!(recent.len() >= 2, "{recent:?}");
    let o = h.as_root(&["audit", "show", "--since", "yesterday"]);
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(o.text.contains("not a time"), "{}", o.text);
    let o = h.as_root(&["audit", "verify"]);
    assert_eq!(o.code, 0, "{}", o.text);
}

#[test]
fn a_config_or_command_line_from_the_caller_never_reaches_the_daemon() {
    let h = Host::start(None);
    let op = h.users.op.clone();
    let opdir = h.d.join("op");
    // A config an operator controls: its verify-command would leave a mark if it ran.
    let mark = h.d.join("out/PWNED");
    let evil = opdir.join("evil.toml");
    let cfg = std::fs::read_to_string(&h.config).unwrap().replace(
        "complete = \"marker\"",
        &format!(
            "complete = \"marker\"\n[source.drill]\nverify-command = \"touch {}\"",
            mark.display()
        ),
    );
    std::fs::write(&evil, cfg).unwrap();
    nix::unistd::chown(
        &evil,
        Some(nix::unistd::Uid::from_raw(Users::uid(&op))),
        None,
    )
    .unwrap();

    // --config is the client's own: it only finds the socket; the daemon runs its own config.
    let o = h.as_user(
        &op,
        &opdir,
        &["--config", "evil.toml", "drill", "--purpose", "rehearsal"],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("OK"), "{}", o.text);
    assert!(!mark.exists(), "the caller's verify-command ran");

    // The old protocol (a command line and a working folder) is not a request.
    let legacy = b"{\"args\":[\"drill\",\"--config\",\"evil.toml\"],\"cwd\":\"/\"}\n";
    let a = h.raw(&op, legacy);
    assert!(a.contains("bad request"), "{a}");
    // Nor is a typed request with anything beside the command.
    let extra = b"{\"v\":1,\"command\":{\"drill\":{\"source\":null,\"store\":null,\"all_stores\":false,\"snapshot\":null,\"fresh_catalog\":false,\"purpose\":\"x\",\"json\":false}},\"config\":\"evil.toml\"}\n";
    let a = h.raw(&op, extra);
    assert!(a.contains("bad request") && a.contains("config"), "{a}");
    // Commands that never go through the socket.
    let daemon = b"{\"v\":1,\"command\":\"daemon\"}\n";
    let a = h.raw(&op, daemon);
    assert!(a.contains("refused"), "{a}");
    assert!(!mark.exists());

    // A backup through the daemon reads only from the source's own folder.
    let o = h.as_user(
        &op,
        &opdir,
        &["backup", "--source", "emr", h.config.to_str().unwrap()],
    );
    assert_ne!(o.code, 0, "{}", o.text);
}

#[test]
fn oversized_requests_are_refused_before_logging_and_the_log_keeps_working() {
    let h = Host::start(None);
    let op = h.users.op.clone();
    let opdir = h.d.join("op");

    // A request line over 64 KiB: cut off, answered, nothing logged.
    let mut big =
        b"{\"v\":1,\"command\":{\"hold\":{\"add\":{\"snapshot\":\"x\",\"purpose\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70_000));
    big.extend(b"\"}}}}\n");
    let a = h.raw(&op, &big);
    assert!(a.contains("longer than"), "{a}");

    // A purpose over 1 KiB: refused, and the refusal logs a bounded purpose.
    let long = "é".repeat(2_000);
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "a.sql",
            "--purpose",
            &long,
        ],
    );
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(o.text.contains("at most 1024"), "{}", o.text);
    assert!(!opdir.join("a.sql").exists());

    // Many refusals: logged up to the rate limit, the rest counted.
    for _ in 0..15 {
        let o = h.as_user(
            &op,
            &opdir,
            &["keys", "rotate", "--to-provider", "local", "--purpose", "x"],
        );
        assert_eq!(o.code, 77, "{}", o.text);
    }
    let entries = h.audit();
    let refusals = entries
        .iter()
        .filter(|e| e["outcome"].as_str().unwrap_or("").starts_with("refused"))
        .count();
    assert!(refusals <= 10, "{refusals} refusals logged in one minute");
    assert!(entries
        .iter()
        .all(|e| e["purpose"].as_str().unwrap_or("").len() <= 1100));

    // The log still takes entries: a restore works and the chain is intact.
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "b.sql",
            "--purpose",
            "vérification — « DR »",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.as_root(&["audit", "verify"]);
    assert_eq!(o.code, 0, "{}", o.text);
}

/// Under systemd the daemon's socket is in `RUNTIME_DIRECTORY` (/run/coffre), which an
/// administrator's shell does not have: the command finds the socket the daemon recorded in the
/// state folder's lock, and runs through the daemon (it could not run beside it).
#[test]
fn a_command_from_a_shell_finds_the_socket_of_a_daemon_started_by_systemd() {
    let h = Host::start_with(None, false);
    assert!(!h.d.join("state/run/coffre.sock").exists());
    let o = h.as_root(&["snapshots", "--json"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let rows: serde_json::Value = serde_json::from_str(&o.text).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{}", o.text);
    // The access log names the daemon as the way in.
    let o = h.as_root(&[
        "restore",
        "latest",
        "--source",
        "emr",
        "--to",
        h.d.join("out/r").to_str().unwrap(),
        "--purpose",
        "DR rehearsal",
    ]);
    assert_eq!(o.code, 0, "{}", o.text);
    let entries = h.audit();
    assert!(
        entries.iter().any(|e| e["action"] == "restore"
            && e["outcome"] == "ok"
            && e["actor"] == "root (via coffre-daemon)"),
        "{entries:?}"
    );
}

#[test]
fn commands_fail_rather_than_run_beside_a_daemon_whose_socket_is_gone() {
    let h = Host::start(None);
    let before = std::fs::read(h.d.join("keys/master.key")).unwrap();
    std::fs::remove_file(&h.socket).unwrap();
    for args in [
        &["snapshots"][..],
        &[
            "backup",
            "--source",
            "emr",
            h.d.join("emr.sql").to_str().unwrap(),
        ][..],
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            h.d.join("out/r.sql").to_str().unwrap(),
            "--purpose",
            "x",
        ][..],
        &["keys", "init"][..],
    ] {
        let o = h.as_root(args);
        assert_ne!(o.code, 0, "{args:?}: {}", o.text);
        assert!(o.text.contains("daemon"), "{args:?}: {}", o.text);
    }
    assert!(!h.d.join("out/r.sql").exists());
    assert_eq!(std::fs::read(h.d.join("keys/master.key")).unwrap(), before);
    // Only the two snapshots from before: nothing ran beside the daemon.
    let a = std::fs::read_dir(h.d.join("stores/a"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert!(a > 0);
    // An operator without the config in a folder of their own: an error, no new state there.
    let opdir = h.d.join("op");
    let o = h.as_user(&h.users.op.clone(), &opdir, &["snapshots"]);
    assert_ne!(o.code, 0, "{}", o.text);
    assert_eq!(std::fs::read_dir(&opdir).unwrap().count(), 0);
}

#[test]
fn a_restore_through_a_sandboxed_daemon_is_written_by_the_operator() {
    // The daemon runs in its own mount namespace where the operator's folder is read-only, as
    // under the unit's ProtectSystem=strict: the operator still gets the file.
    let tmp_op = tempfile::tempdir().unwrap();
    let opdir = tmp_op.path().join("op-restores");
    std::fs::create_dir_all(&opdir).unwrap();
    std::fs::set_permissions(tmp_op.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrap = format!(
        "exec unshare --mount --propagation private sh -c 'mount --bind -o ro {o} {o} && {{daemon}}'",
        o = opdir.display()
    );
    let h = Host::start(Some(&wrap));
    let op = h.users.op.clone();
    nix::unistd::chown(
        &opdir,
        Some(nix::unistd::Uid::from_raw(Users::uid(&op))),
        None,
    )
    .unwrap();
    let o = h.as_user(
        &op,
        &opdir,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "pgdata",
            "--purpose",
            "DR",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(
        tree_files(&opdir.join("pgdata")),
        tree_files(&h.d.join("base"))
    );
    assert_eq!(
        std::fs::metadata(opdir.join("pgdata")).unwrap().uid(),
        Users::uid(&op)
    );
}

/// Issue 13, 3.13: a restore through the daemon streams, and on a terminal the operator sees its
/// progress (bytes, rate, time left) while it runs, not all output at the end.
#[test]
fn a_restore_through_the_daemon_shows_progress_on_a_terminal() {
    let h = Host::start(None);
    let op = h.users.op.clone();
    let (id, body) = h.backup("progress.sql");
    let tmp_op = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp_op.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let to = tmp_op.path().join("restored.sql");
    // `script` gives the caller a pseudo-terminal, as an operator's shell has.
    let line = format!(
        "COFFRE_SOCKET={} {BIN} restore {id} --source emr --to {} --purpose DR",
        h.socket.display(),
        to.display()
    );
    let out = Command::new("runuser")
        .args(["-u", &op, "--", "script", "-qefc", &line, "/dev/null"])
        .current_dir(tmp_op.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(std::fs::read(&to).unwrap(), body);
    let bar = text
        .find(" eta ")
        .unwrap_or_else(|| panic!("no progress bar on the terminal: {text:?}"));
    let total = format!("/{}", human_bytes(body.len() as u64));
    assert!(
        text.contains(&total),
        "the bar shows the size ({total}): {text:?}"
    );
    let done = text
        .find(&format!("restored snapshot {id} to "))
        .unwrap_or_else(|| panic!("no final line: {text:?}"));
    assert!(bar < done, "progress came before the end: {text:?}");
    // Without a terminal (a script), no bar: the same final line only.
    let o = h.as_user(
        &op,
        tmp_op.path(),
        &[
            "restore",
            &id,
            "--source",
            "emr",
            "--to",
            "again.sql",
            "--purpose",
            "DR",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(!o.text.contains(" eta "), "{}", o.text);
}

/// indicatif's `{total_bytes}` (binary units, two decimals above a KiB).
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

impl Host {
    /// Stop the daemon (SIGTERM) and wait for it.
    fn stop_daemon(&mut self) {
        let _ = nix::sys::signal::kill(self.daemon.pid(), nix::sys::signal::Signal::SIGTERM);
        let _ = self.daemon.child.wait();
    }

    /// The epoch snapshot `id`'s key object names in store `a`.
    fn epoch_of(&self, id: &str) -> String {
        let p = self
            .d
            .join(format!("stores/a/coffre/snapshots/emr/{id}/key.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["epoch"].as_str().unwrap().to_string()
    }

    /// A new dump in the source folder, protected by `coffre backup` as root (through the
    /// daemon when it runs); returns its id and bytes.
    fn backup(&self, name: &str) -> (String, Vec<u8>) {
        let body = format!("INSERT INTO notes VALUES ('{name}', 'CANARY-ZXQ-PATIENT');\n")
            .repeat(3000)
            .into_bytes();
        let p = self.d.join("in").join(name);
        std::fs::write(&p, &body).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(["backup", "--source", "emr"])
            .arg(&p)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "backup {name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = stdout.trim().to_string();
        assert_eq!(
            id.len(),
            26,
            "backup {name} printed no snapshot id: {stdout}"
        );
        (id, body)
    }

    /// Restore `id` from `store` as root into a fresh path under `out`.
    fn restore_from(&self, id: &str, store: &str) -> (Out, PathBuf) {
        let to = self
            .d
            .join("out")
            .join(format!("{id}-{store}-{}", rand::random::<u32>()));
        let o = self.as_root(&[
            "restore",
            id,
            "--source",
            "emr",
            "--store",
            store,
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "check",
        ]);
        (o, to)
    }

    /// Restore `id` from `store` as root; the bytes, or None when it cannot be restored.
    fn restored(&self, id: &str, store: &str) -> Option<Vec<u8>> {
        let (o, to) = self.restore_from(id, store);
        (o.code == 0).then(|| std::fs::read(&to).unwrap())
    }

    /// Restore directory snapshot `id` from `store` as root and check it is the `base` tree.
    fn assert_restores_base(&self, id: &str, store: &str) {
        let (o, to) = self.restore_from(id, store);
        assert_eq!(o.code, 0, "{id} from {store}: {}", o.text);
        assert_eq!(tree_files(&to), tree_files(&self.d.join("base")));
    }

    /// Every epoch `keys status` reports destroyed.
    fn destroyed_epochs(&self) -> Vec<String> {
        let o = self.as_root(&["keys", "status", "--json"]);
        assert_eq!(o.code, 0, "{}", o.text);
        let v: serde_json::Value = serde_json::from_str(o.text.trim_end()).unwrap();
        v[0]["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["destroyed"].is_null())
            .map(|e| e["epoch"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Finding 2 of issue 11, as it was seen: an early `shred` through the socket, then three
/// ordinary backups. The shredded snapshot's epoch-mate stays restorable from both stores, the
/// shredded epoch stays destroyed (for the daemon, for a standalone run after it, and for a new
/// host that rebuilds from the stores), and no new snapshot is sealed under it.
#[test]
fn a_shred_through_the_daemon_then_three_backups_resurrect_nothing() {
    let mut h = Host::start(None);
    let list = h.as_root(&["snapshots", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(list.text.trim_end()).unwrap();
    let (a, b) = (
        list[0]["id"].as_str().unwrap().to_string(),
        list[1]["id"].as_str().unwrap().to_string(),
    );
    let epoch = h.epoch_of(&a);
    assert_eq!(
        h.epoch_of(&b),
        epoch,
        "the two snapshots must be epoch-mates"
    );

    let o = h.as_root(&[
        "shred",
        "--snapshot",
        &a,
        "--purpose",
        "erasure order",
        "--yes",
    ]);
    assert_eq!(o.code, 0, "{}", o.text);
    let fresh: Vec<(String, Vec<u8>)> = ["c.sql", "d.sql", "e.sql"]
        .iter()
        .map(|n| h.backup(n))
        .collect();
    for (id, _) in &fresh {
        assert_ne!(
            h.epoch_of(id),
            epoch,
            "{id} sealed under the shredded epoch"
        );
    }
    assert!(h.destroyed_epochs().contains(&epoch));
    for store in ["a", "b"] {
        assert!(h.restored(&a, store).is_none(), "A restored from {store}");
        h.assert_restores_base(&b, store);
        for (id, body) in &fresh {
            assert_eq!(
                h.restored(id, store).as_ref(),
                Some(body),
                "{id} from {store}"
            );
        }
    }
    // After the daemon: the same for a standalone run, and for a new host (own state folder,
    // the same master key) that rebuilds its catalog from the stores' authenticated objects.
    h.stop_daemon();
    assert!(h.destroyed_epochs().contains(&epoch));
    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("/state\"", "/state-new-host\"")
        .replace("/run/coffre.sock", "/run/new-host.sock");
    let host2 = h.d.join("new-host.toml");
    std::fs::write(&host2, text).unwrap();
    std::fs::set_permissions(&host2, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run2 = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&host2)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = run2(&["catalog", "rebuild"]);
    assert_eq!(code, 0, "{text}");
    for (id, body) in &fresh {
        let to = h.d.join("out").join(format!("{id}-host2"));
        let (code, text) = run2(&[
            "restore",
            id,
            "--source",
            "emr",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "new host",
        ]);
        assert_eq!(code, 0, "{text}");
        assert_eq!(&std::fs::read(&to).unwrap(), body);
    }
    let (code, text) = run2(&["keys", "status", "--json"]);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert!(
        v[0]["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["epoch"] == epoch.as_str() && !e["destroyed"].is_null()),
        "the new host's keyring (from the stores) has the epoch live again: {text}"
    );
}

/// Issue 11: concurrent `hold add`/`hold release`, `shred`, `backup` and `retention run`, in a
/// loop, first through the daemon, then standalone (the state lock serialises them): nothing
/// At once: a backup of `name`, a hold added to `held` then released, an early shred of
/// `victim` and a retention run. Their results, in that order.
#[allow(clippy::type_complexity)]
fn concurrently(
    h: &Host,
    name: &str,
    held: &str,
    victim: &str,
) -> ((String, Vec<u8>), (Out, Out), Out, Out) {
    std::thread::scope(|s| {
        let backup = s.spawn(|| h.backup(name));
        let holds = s.spawn(|| {
            let add = h.as_root(&["hold", "add", held, "--purpose", "litigation"]);
            let release = h.as_root(&["hold", "release", held, "--purpose", "litigation over"]);
            (add, release)
        });
        let shred = s.spawn(|| {
            h.as_root(&[
                "shred",
                "--snapshot",
                victim,
                "--purpose",
                "erasure order",
                "--yes",
            ])
        });
        let retention = s.spawn(|| h.as_root(&["retention", "run"]));
        (
            backup.join().unwrap(),
            holds.join().unwrap(),
            shred.join().unwrap(),
            retention.join().unwrap(),
        )
    })
}

/// committed is lost, nothing shredded comes back, and the access log stays intact.
#[test]
fn concurrent_holds_shreds_backups_and_retention_lose_nothing_and_resurrect_nothing() {
    let mut h = Host::start(None);
    let list = h.as_root(&["snapshots", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(list.text.trim_end()).unwrap();
    let first = list[0]["id"].as_str().unwrap().to_string();
    let held = list[1]["id"].as_str().unwrap().to_string();
    let first_body = std::fs::read(h.d.join("emr.sql")).unwrap();

    let mut live: Vec<(String, Vec<u8>)> = vec![(first, first_body)];
    let mut shredded: Vec<(String, String)> = Vec::new();
    let mut round = 0;
    for phase in ["daemon", "standalone"] {
        if phase == "standalone" {
            h.stop_daemon();
        }
        for _ in 0..3 {
            round += 1;
            let (victim, _) = live.remove(0);
            let victim_epoch = h.epoch_of(&victim);
            let name = format!("round-{round}.sql");
            let (backup, holds, shred, retention) = concurrently(&h, &name, &held, &victim);
            assert_eq!(holds.0.code, 0, "{phase} hold add: {}", holds.0.text);
            assert_eq!(holds.1.code, 0, "{phase} hold release: {}", holds.1.text);
            assert_eq!(shred.code, 0, "{phase} shred: {}", shred.text);
            assert_eq!(retention.code, 0, "{phase} retention: {}", retention.text);
            live.push(backup);
            shredded.push((victim, victim_epoch));
        }
    }

    let destroyed = h.destroyed_epochs();
    for (id, epoch) in &shredded {
        assert!(
            destroyed.contains(epoch),
            "{id}'s epoch {epoch} is live: {destroyed:?}"
        );
        for store in ["a", "b"] {
            assert!(
                h.restored(id, store).is_none(),
                "shredded {id} restored from {store}"
            );
        }
    }
    for (id, body) in &live {
        assert!(
            !destroyed.contains(&h.epoch_of(id)),
            "{id} under a destroyed epoch"
        );
        for store in ["a", "b"] {
            assert_eq!(
                h.restored(id, store).as_ref(),
                Some(body),
                "{id} from {store}"
            );
        }
    }
    for store in ["a", "b"] {
        h.assert_restores_base(&held, store);
    }
    let o = h.as_root(&["audit", "verify"]);
    assert_eq!(o.code, 0, "{}", o.text);
}
