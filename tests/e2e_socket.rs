//! Who may access: with the daemon running, restore goes through its control socket, which reads
//! the caller's peer credentials. A Unix user outside the operators' group is refused (and the
//! refusal is in the access log); an operator is allowed. Needs root (it creates test users).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

struct Users {
    group: String,
    op: String,
    outsider: String,
}

impl Users {
    fn create() -> Users {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates Unix users: run the suite as root (tests/run does on CI)"
        );
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let u = Users {
            group: format!("cofops{tag}"),
            op: format!("cofop{tag}"),
            outsider: format!("cofout{tag}"),
        };
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("groupadd").arg(&u.group));
        ok(Command::new("useradd").args(["-M", "-N", "-s", "/bin/sh", "-G", &u.group, &u.op]));
        ok(Command::new("useradd").args(["-M", "-N", "-s", "/bin/sh", &u.outsider]));
        u
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.op).status();
        let _ = Command::new("userdel").arg(&self.outsider).status();
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

fn as_user(user: &str, dir: &Path, socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            "env",
            &format!("COFFRE_SOCKET={}", socket.display()),
            BIN,
        ])
        .args(args)
        .current_dir(dir)
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
}

#[test]
fn the_control_socket_refuses_outsiders_and_admits_operators() {
    let users = Users::create();
    let tmp = tempfile::tempdir().unwrap();
    let d: PathBuf = tmp.path().to_path_buf();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The outsider and the operator each get a folder they may write in (restores land there,
    // written by the daemon).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = d.join("coffre.toml");
    let dd = d.display();
    std::fs::write(
        &config,
        format!(
            r#"state-dir = "{dd}/state"
[daemon]
control-socket = "{dd}/run/coffre.sock"
[status]
listen = "127.0.0.1:{port}"
[audit]
operators-group = "{group}"
[[source]]
name = "emr"
path = "{dd}/in"
complete = "marker"
[[store]]
name = "a"
kind = "local"
site = "a"
jurisdiction = "CA-QC"
path = "{dd}/stores/a"
[[store]]
name = "b"
kind = "local"
site = "b"
jurisdiction = "CA-QC"
path = "{dd}/stores/b"
[[key-provider]]
name = "local"
kind = "file"
master-key = "{dd}/keys/master.key"
create-master-key = true
"#,
            group = users.group
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("emr.sql"),
        "INSERT INTO patients VALUES ('CANARY-ZXQ-PATIENT');\n".repeat(100),
    )
    .unwrap();
    let st = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["backup", "--source", "emr"])
        .arg(d.join("emr.sql"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = d.join("run/coffre.sock");
    let t = Instant::now();
    while !socket.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "control socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The outsider cannot read the keys, and the daemon refuses them.
    let (code, out) = as_user(
        &users.outsider,
        &d,
        &socket,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "by-outsider.sql",
            "--purpose",
            "curiosity",
        ],
    );
    assert_eq!(code, 77, "{out}");
    assert!(
        out.contains("refused") && out.contains(&users.outsider) && out.contains(&users.group),
        "{out}"
    );
    assert!(!d.join("by-outsider.sql").exists());
    let (code, out) = as_user(
        &users.outsider,
        &d,
        &socket,
        &[
            "shred",
            "--snapshot",
            "01JD0000000000000000000000",
            "--purpose",
            "x",
            "--yes",
        ],
    );
    assert_eq!(code, 77, "{out}");

    // The operator is admitted; the daemon restores and records the operator as the actor.
    let (code, out) = as_user(
        &users.op,
        &d,
        &socket,
        &[
            "restore",
            "latest",
            "--source",
            "emr",
            "--to",
            "by-operator.sql",
            "--purpose",
            "DR rehearsal",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read(d.join("by-operator.sql")).unwrap(),
        std::fs::read(d.join("emr.sql")).unwrap()
    );

    let (code, out) = as_user(&users.op, &d, &socket, &["audit", "show", "--json"]);
    assert_eq!(code, 0, "{out}");
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e["actor"] == users.outsider.as_str())
        .collect();
    assert_eq!(refused.len(), 2, "{out}");
    assert!(refused
        .iter()
        .all(|e| e["outcome"].as_str().unwrap().starts_with("refused")));
    assert_eq!(refused[0]["purpose"], "curiosity");
    let by_op = format!("{} (via coffre-daemon)", users.op);
    assert!(
        entries.iter().any(|e| e["actor"] == by_op.as_str()
            && e["action"] == "restore"
            && e["outcome"] == "ok"),
        "{out}"
    );

    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
}
