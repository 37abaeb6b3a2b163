//! Trust boundaries of the control socket, by role (issue 27): a source's archiver archives and
//! fetches that source's WAL and nothing else, operators cannot archive or erase, erasure is for
//! root and `audit.erasure-group`, the daemon reads only the WAL file descriptor a caller
//! passed (never a path), a recovery session belongs to its caller, and one caller cannot take
//! every connection from PostgreSQL's archiver. Real Unix users (an operator, an eraser, an
//! archiver, an outsider) are created by the test; it needs root (tests/run runs as root on CI).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::config::ConfigBuilder;
use crate::common::daemon::{OnDrop, TestDaemon};
use crate::common::users::UnixUsers;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");
const CANARY: &[u8] = b"CANARY-ROLES-Bouchard-RAMQ-BOUC55667788";
/// 1 MiB segments (PostgreSQL's --wal-segsize=1), to keep the test quick.
const SEG_SIZE: usize = 1 << 20;

struct Users {
    _made: UnixUsers,
    ops: String,
    era: String,
    op: String,
    eraser: String,
    arch: String,
    outsider: String,
}

impl Users {
    fn create() -> Users {
        let mut m = UnixUsers::new();
        let ops = m.group("rlops");
        let era = m.group("rlera");
        let op = m.user("rlop", &[&ops]);
        let eraser = m.user("rler", &[&ops, &era]);
        // The archiver reaches the socket through the socket's group, and is only an archiver.
        let arch = m.user("rlar", &[&ops]);
        let outsider = m.user("rlout", &[]);
        Users {
            _made: m,
            ops,
            era,
            op,
            eraser,
            arch,
            outsider,
        }
    }

    fn uid(name: &str) -> nix::unistd::Uid {
        UnixUsers::uid(name)
    }
}

struct Host {
    /// First, so that it goes (killed) before its folder.
    _daemon: TestDaemon,
    users: Users,
    _tmp: tempfile::TempDir,
    d: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

struct Out {
    code: i32,
    text: String,
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code().unwrap_or(-1),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

impl Host {
    /// A daemon on two local stores; source `emr` archives WAL with the archiver user, its
    /// `pg_wal` owned by the archiver; source `lab` archives WAL with no archiver named.
    fn start(archive_async: bool) -> Host {
        let users = Users::create();
        let tmp = tempfile::Builder::new()
            .prefix("coffre-roles-")
            .tempdir()
            .unwrap();
        let d = tmp.path().to_path_buf();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["in", "lab", "run", "pg_wal", "op"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let chown = |p: &Path, user: &str| {
            nix::unistd::chown(p, Some(Users::uid(user)), None).unwrap();
        };
        chown(&d.join("pg_wal"), &users.arch);
        std::fs::set_permissions(d.join("pg_wal"), std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&d.join("op"), &users.op);
        let config = ConfigBuilder::new(&d)
            .table(
                "daemon",
                &format!(
                    "control-socket = \"{}\"",
                    d.join("run/coffre.sock").display()
                ),
            )
            .status(0)
            .audit(&format!(
                "operators-group = \"{}\"\nerasure-group = \"{}\"",
                users.ops, users.era
            ))
            .source("emr", &d.join("in"), "complete = \"marker\"")
            .pitr(
                "7d",
                &format!(
                    "archiver = \"{}\"\npg-wal = \"{}\"\narchive-async = {archive_async}",
                    users.arch,
                    d.join("pg_wal").display()
                ),
            )
            .source("lab", &d.join("lab"), "complete = \"marker\"")
            .pitr("7d", "")
            .local_stores(&[("a", "a"), ("b", "b")])
            .file_keys()
            .write(&d.join("coffre.toml"));
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Under a umask that lets others read new files, as a daemon started by hand may have.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "umask 022; exec {BIN} --config '{}' daemon",
                config.display()
            ))
            .env("COFFRE_LOG", "warn");
        let socket = d.join("run/coffre.sock");
        let daemon = TestDaemon::spawn_as_is(cmd, Some(&d.join("daemon.log")))
            .on_drop(OnDrop::Kill)
            .wait_socket_file(&socket, 30);
        Host {
            _daemon: daemon,
            users,
            _tmp: tmp,
            d,
            config,
            socket,
        }
    }

    /// Run coffre as `user`, finding the daemon through COFFRE_SOCKET only.
    fn as_user(&self, user: &str, args: &[&str]) -> Out {
        let out = Command::new("runuser")
            .args(["-u", user, "--", "env"])
            .arg(format!("COFFRE_SOCKET={}", self.socket.display()))
            .arg(BIN)
            .args(args)
            .current_dir(&self.d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out::from(out)
    }

    fn as_root(&self, args: &[&str]) -> Out {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out::from(out)
    }

    /// `wal-fetch NAME TO` of source `emr` as `user`, in recovery session `session` if given.
    fn fetch(&self, user: &str, session: Option<&str>, name: &str, to: &Path) -> Out {
        let mut args = vec!["wal-fetch", "--source", "emr"];
        if let Some(s) = session {
            args.extend(["--session", s]);
        }
        args.extend([name, to.to_str().unwrap()]);
        self.as_user(user, &args)
    }

    /// One raw request line sent as `user`; the daemon's answer frames as text.
    fn raw(&self, user: &str, request: &str) -> String {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\ns.sendall({:?}.encode())\nbuf=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  buf+=c\nsys.stdout.write(buf.decode('utf-8','replace'))\n",
            self.socket.display(),
            request
        );
        self.python(user, &script)
    }

    /// A python3 script run as `user` (raw socket requests).
    fn python(&self, user: &str, script: &str) -> String {
        let out = Command::new("runuser")
            .args(["-u", user, "--", "/usr/bin/python3", "-c", script])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// A WAL segment written into pg_wal as the archiver would find it.
    fn segment(&self, name: &str, seed: u64) -> (PathBuf, Vec<u8>) {
        let p = self.d.join("pg_wal").join(name);
        let bytes = wal_bytes(name, seed);
        std::fs::write(&p, &bytes).unwrap();
        nix::unistd::chown(&p, Some(Users::uid(&self.users.arch)), None).unwrap();
        (p, bytes)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        let o = self.as_root(&["audit", "show", "--json"]);
        assert_eq!(o.code, 0, "{}", o.text);
        serde_json::from_str(o.text.trim_end()).unwrap_or_else(|e| panic!("{e}: {}", o.text))
    }

    /// Every file under both stores, as bytes (a canary must never be in one).
    fn store_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for s in ["a", "b"] {
            for f in crate::common::coffre::files_under(&self.d.join("stores").join(s)) {
                all.extend(std::fs::read(f).unwrap_or_default());
            }
        }
        all
    }
}

/// A WAL segment of [`SEG_SIZE`] whose first page header matches its name (the header
/// PostgreSQL 15 writes), then compressible pseudo-random records.
fn wal_bytes(name: &str, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; SEG_SIZE];
    let mut x = seed | 1;
    let mut at = 64;
    while at + 8 <= SEG_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[at..at + 8].copy_from_slice(&x.to_le_bytes());
        at += 32;
    }
    crate::common::coffre::stamp_wal_header(&mut v, name);
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn refusals_for(h: &Host, actor: &str) -> usize {
    h.audit()
        .iter()
        .filter(|e| {
            e["actor"].as_str() == Some(actor)
                && e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("refused"))
        })
        .count()
}

#[test]
fn the_archiver_archives_only_its_sources_wal_and_operators_cannot_archive() {
    let h = Host::start(false);
    let (arch, op) = (h.users.arch.clone(), h.users.op.clone());
    let (seg, bytes) = h.segment("000000010000000000000003", 3);
    let seg_s = seg.display().to_string();

    // The archiver archives its source's WAL; the push is in the access log under its name.
    let o = h.as_user(&arch, &["wal-push", "--source", "emr", &seg_s]);
    assert_eq!(o.code, 0, "{}", o.text);
    let pushes: Vec<serde_json::Value> = h
        .audit()
        .into_iter()
        .filter(|e| {
            e["action"] == "wal-push"
                && e["actor"].as_str() == Some(&*format!("{arch} (via coffre-daemon)"))
        })
        .collect();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0]["target"]["source"], "emr");
    assert!(
        pushes[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("000000010000000000000003")),
        "{pushes:?}"
    );

    // ... and fetches it back.
    let to = h.d.join("pg_wal/RECOVERYXLOG");
    let o = h.fetch(&arch, None, "000000010000000000000003", &to);
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(std::fs::read(&to).unwrap(), bytes);

    // Not another source's WAL, and nothing else through the socket: not even a listing.
    let (other, _) = h.segment("000000010000000000000004", 4);
    let o = h.as_user(
        &arch,
        &["wal-push", "--source", "lab", other.to_str().unwrap()],
    );
    assert_eq!(o.code, 77, "{}", o.text);
    assert!(o.text.contains("archiver of source(s) emr"), "{}", o.text);
    for args in [
        &["snapshots"][..],
        &["audit", "show"][..],
        &[
            "shred",
            "--snapshot",
            "01JDW7Z4Q0Z8X5N8W3S1V2K9AB",
            "--purpose",
            "x",
            "--yes",
        ][..],
        &["retention", "run"][..],
    ] {
        let o = h.as_user(&arch, args);
        assert_eq!(o.code, 77, "{args:?}: {}", o.text);
        assert!(o.text.contains("may only archive and fetch"), "{}", o.text);
    }

    // An operator cannot put bytes of its choosing under the source's next WAL name, even a
    // copy it made of the real segment in its own folder.
    let mine = h.d.join("op/000000010000000000000004");
    std::fs::write(&mine, wal_bytes("000000010000000000000004", 99)).unwrap();
    nix::unistd::chown(&mine, Some(Users::uid(&op)), None).unwrap();
    let o = h.as_user(
        &op,
        &["wal-push", "--source", "emr", mine.to_str().unwrap()],
    );
    assert_eq!(o.code, 77, "{}", o.text);
    assert!(o.text.contains("not the archiver"), "{}", o.text);
    assert!(refusals_for(&h, &op) >= 1);
    // So the primary's own segment 4 still archives.
    let o = h.as_user(
        &arch,
        &["wal-push", "--source", "emr", other.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    // The outsider cannot even connect.
    let o = h.as_user(&h.users.outsider, &["wal-push", "--source", "emr", &seg_s]);
    assert_ne!(o.code, 0, "{}", o.text);
}

#[test]
fn wal_push_reads_only_the_descriptor_the_caller_passed_never_a_path() {
    // archive-async: the push that the review won with a symlink swap (N2).
    let h = Host::start(true);
    let arch = h.users.arch.clone();
    let key = h.d.join("keys/master.key");
    assert!(key.is_file());
    // A symlink to the master key under a WAL name, in the archiver's own pg_wal.
    let link = h.d.join("pg_wal/000000010000000000000005");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(Users::uid(&arch).as_raw()), None).unwrap();
    // coffre's client opens it without following the link: nothing is sent.
    let o = h.as_user(
        &arch,
        &["wal-push", "--source", "emr", link.to_str().unwrap()],
    );
    assert_ne!(o.code, 0, "{}", o.text);
    // A raw request naming the path, with no descriptor: the daemon opens nothing.
    let req = format!(
        "{{\"v\":1,\"command\":{{\"wal-push\":{{\"source\":\"emr\",\"path\":\"{}\",\"json\":false}}}}}}\n",
        link.display()
    );
    for _ in 0..20 {
        let answer = h.raw(&arch, &req);
        assert!(
            answer.contains("must come open with the request"),
            "{answer}"
        );
    }
    // A file the archiver opened outside the configured pg_wal is refused too.
    let outside = h.d.join("op/000000010000000000000005");
    std::fs::write(&outside, wal_bytes("000000010000000000000005", 5)).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = h.as_user(
        &arch,
        &["wal-push", "--source", "emr", outside.to_str().unwrap()],
    );
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(
        o.text
            .contains("not the entry of that name in the source's pg_wal"),
        "{}",
        o.text
    );
    // Nothing of the key reached a store or the spool, and the name is not archived.
    let key_bytes = std::fs::read(&key).unwrap();
    assert!(!contains(&h.store_bytes(), &key_bytes));
    let to = h.d.join("pg_wal/RECOVERYXLOG");
    let o = h.fetch(&arch, None, "000000010000000000000005", &to);
    assert_eq!(o.code, 1, "{}", o.text);
    // A real segment through the spool while store a is broken (so it stays spooled): the
    // spooled plaintext is 0600 whatever the daemon's umask (N13); once the store is back it is
    // archived, and fetched back byte for byte.
    let store_a = h.d.join("stores/a");
    std::fs::rename(&store_a, h.d.join("stores/a.off")).unwrap();
    std::fs::write(&store_a, b"not a folder").unwrap();
    let (seg, bytes) = h.segment("000000010000000000000006", 6);
    let o = h.as_user(
        &arch,
        &["wal-push", "--source", "emr", seg.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("spooled"), "{}", o.text);
    let spooled = h.d.join("state/spool/emr/000000010000000000000006");
    let mode = std::fs::metadata(&spooled).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "spooled WAL is {mode:o}");
    std::fs::remove_file(&store_a).unwrap();
    std::fs::rename(h.d.join("stores/a.off"), &store_a).unwrap();
    let t = Instant::now();
    while spooled.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the spool never drained once store a was back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = h.fetch(&arch, None, "000000010000000000000006", &to);
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
    let stored = h.store_bytes();
    assert!(stored.len() > 1000, "the stores hold the archived segment");
    assert!(!contains(&stored, &key_bytes));
    assert!(!contains(&stored, CANARY));
}

#[test]
fn erasure_is_for_root_and_the_erasure_group_only() {
    let h = Host::start(false);
    let (op, eraser) = (h.users.op.clone(), h.users.eraser.clone());
    std::fs::write(h.d.join("in/emr.sql"), [CANARY, b"\n"].concat().repeat(500)).unwrap();
    std::fs::write(h.d.join("in/emr.sql.done"), b"").unwrap();
    let t = Instant::now();
    let id = loop {
        let o = h.as_root(&["snapshots", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(o.text.trim()).unwrap_or_default();
        if let Some(s) = list.first() {
            break s["id"].as_str().unwrap().to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not protected: {}",
            o.text
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // An operator holds, but neither releases a hold, shreds, runs retention, nor expires the log.
    let o = h.as_user(&op, &["hold", "add", &id, "--purpose", "litigation 4711"]);
    assert_eq!(o.code, 0, "{}", o.text);
    for args in [
        vec!["hold", "release", &id, "--purpose", "done"],
        vec![
            "shred",
            "--snapshot",
            &id,
            "--purpose",
            "erasure request",
            "--yes",
        ],
        vec!["retention", "run"],
        vec!["audit", "expire"],
    ] {
        let o = h.as_user(&op, &args);
        assert_eq!(o.code, 77, "{args:?}: {}", o.text);
        assert!(o.text.contains("may not erase"), "{}", o.text);
    }
    assert!(refusals_for(&h, &op) >= 4);
    // A member of the erasure group may.
    let o = h.as_user(
        &eraser,
        &["hold", "release", &id, "--purpose", "litigation over"],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.as_user(
        &eraser,
        &[
            "shred",
            "--snapshot",
            &id,
            "--purpose",
            "erasure request 12",
            "--yes",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.as_root(&["snapshots", "--json"]);
    assert!(!o.text.contains(&id), "{}", o.text);
}

/// A point-in-time restore of source `emr` into `to` as `user` (root: `None`), through the
/// daemon, to the end of the archive; returns the recovery session its restore_command names.
fn pitr_session(h: &Host, user: Option<&str>, to: &Path, purpose: &str) -> String {
    let args = [
        "restore",
        "--source",
        "emr",
        "--to",
        to.to_str().unwrap(),
        "--target-latest",
        "--purpose",
        purpose,
    ];
    let o = match user {
        Some(u) => h.as_user(u, &args),
        None => h.as_root(&args),
    };
    assert_eq!(o.code, 0, "{}", o.text);
    let auto = std::fs::read_to_string(to.join("postgresql.auto.conf")).unwrap();
    let at = auto
        .find("--session ")
        .expect("restore_command names its session")
        + 10;
    auto[at..].split(' ').next().unwrap().to_string()
}

#[test]
fn a_recovery_session_belongs_to_its_caller_and_its_prefetch_to_the_session() {
    let h = Host::start(false);
    let (arch, op) = (h.users.arch.clone(), h.users.op.clone());
    for (i, n) in ["000000010000000000000007", "000000010000000000000008"]
        .iter()
        .enumerate()
    {
        let (seg, _) = h.segment(n, 70 + i as u64);
        let o = h.as_user(
            &arch,
            &["wal-push", "--source", "emr", seg.to_str().unwrap()],
        );
        assert_eq!(o.code, 0, "{}", o.text);
    }
    // A base backup lands in the source folder (marker last) and is protected.
    let base = h.d.join("in/base");
    std::fs::create_dir_all(base.join("global")).unwrap();
    std::fs::write(base.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        base.join("backup_label"),
        "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\n",
    )
    .unwrap();
    std::fs::write(base.join("global/pg_control"), vec![3u8; 8192]).unwrap();
    std::fs::write(base.join("backup_manifest"), "{}\n").unwrap();
    let t = Instant::now();
    while !h
        .as_root(&["snapshots", "--json"])
        .text
        .contains("directory")
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the base backup was not protected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Root restores; PostgreSQL (the archiver) fetches in the session coffre opened for it.
    let session = pitr_session(&h, None, &h.d.join("r1"), "investigation 27-7");
    let to = h.d.join("pg_wal/RECOVERYXLOG");
    let o = h.fetch(&arch, Some(&session), "000000010000000000000007", &to);
    assert_eq!(o.code, 0, "{}", o.text);
    // Its start is logged with the restore's purpose, which never went into the settings.
    let started: Vec<serde_json::Value> = h
        .audit()
        .into_iter()
        .filter(|e| {
            e["action"] == "wal-fetch"
                && e["outcome"].as_str().is_some_and(|o| o.contains(&session))
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["purpose"], "investigation 27-7");
    // The operator reuses the id: refused, and the segment prefetched for the session is not
    // handed out.
    let mine = h.d.join("op/RECOVERYXLOG");
    let o = h.fetch(&op, Some(&session), "000000010000000000000008", &mine);
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(
        o.text
            .contains("belongs to another caller, source or store"),
        "{}",
        o.text
    );
    assert!(!mine.exists());
    // Nor is it the archiver's under another store than the session's.
    let o = h.as_user(
        &arch,
        &[
            "wal-fetch",
            "--source",
            "emr",
            "--session",
            &session,
            "--store",
            "a",
            "000000010000000000000008",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(
        o.text.contains("another caller, source or store"),
        "{}",
        o.text
    );
    // An id no restore opened is refused.
    let o = h.fetch(
        &op,
        Some("01JOPERATORSOWNSESSION00"),
        "000000010000000000000008",
        &mine,
    );
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(o.text.contains("was not opened by coffre"), "{}", o.text);
    // Under the session of its own restore the operator's fetch is allowed, logged as its own.
    let own = pitr_session(&h, Some(&op), &h.d.join("op/r2"), "ticket 4711");
    let o = h.fetch(&op, Some(&own), "000000010000000000000008", &mine);
    assert_eq!(o.code, 0, "{}", o.text);
    let started = h
        .audit()
        .iter()
        .filter(|e| {
            e["action"] == "wal-fetch"
                && e["actor"].as_str().is_some_and(|a| a.starts_with(&op))
                && e["outcome"].as_str().is_some_and(|o| o.contains("started"))
        })
        .count();
    assert_eq!(started, 1);
}

#[test]
fn one_caller_cannot_take_every_connection_and_the_archiver_keeps_its_own() {
    let h = Host::start(false);
    let (arch, op) = (h.users.arch.clone(), h.users.op.clone());
    // The operator opens connections and sends nothing (each is held up to the read deadline);
    // past its share the daemon answers busy, exit 75, and the archiver still archives.
    let script = format!(
        "import socket,struct,sys,json,time\nheld=[]\nfor i in range(4):\n  s=socket.socket(socket.AF_UNIX); s.connect('{sock}'); held.append(s)\ntime.sleep(0.3)\ns=socket.socket(socket.AF_UNIX); s.connect('{sock}')\nbuf=b''\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  buf+=c\nsys.stdout.write(buf.decode('utf-8','replace'))\nopen('{flag}','w').write('held')\ntime.sleep(4)\n",
        sock = h.socket.display(),
        flag = h.d.join("op/held").display(),
    );
    let sock_script = script.clone();
    let op2 = op.clone();
    let d = h.d.clone();
    let holder = std::thread::spawn(move || {
        let out = Command::new("runuser")
            .args(["-u", &op2, "--", "/usr/bin/python3", "-c", &sock_script])
            .current_dir(&d)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    let t = Instant::now();
    while !h.d.join("op/held").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the holder never got its answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (seg, _) = h.segment("000000010000000000000009", 9);
    let o = h.as_user(
        &arch,
        &["wal-push", "--source", "emr", seg.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let answer = holder.join().unwrap();
    assert!(answer.contains("busy"), "{answer}");
    assert!(answer.contains("\"exit\":75"), "{answer}");
}

/// Issue 28 item 21: the refusal rate limit (10 a minute) is per caller: an operator's burst of
/// refused erasures does not hide the eraser's refused key rotation that follows.
#[test]
fn one_callers_burst_of_refusals_does_not_hide_anothers() {
    let h = Host::start(false);
    let op = h.users.op.clone();
    for _ in 0..12 {
        let o = h.as_user(&op, &["retention", "run"]);
        assert_eq!(o.code, 77, "{}", o.text);
    }
    assert_eq!(
        refusals_for(&h, &op),
        10,
        "the operator's refusals past 10 are counted, not logged"
    );
    let eraser = h.users.eraser.clone();
    let o = h.as_user(
        &eraser,
        &[
            "keys",
            "rotate",
            "--to-provider",
            "local",
            "--purpose",
            "rotate",
        ],
    );
    assert_eq!(o.code, 77, "{}", o.text);
    assert_eq!(
        refusals_for(&h, &eraser),
        1,
        "another caller's refusal was hidden by the operator's burst"
    );
    // The operator's next logged refusal (after the minute) carries the count; within the
    // minute, more of its refusals stay counted only.
    let o = h.as_user(&op, &["audit", "expire"]);
    assert_eq!(o.code, 77, "{}", o.text);
    assert_eq!(refusals_for(&h, &op), 10);
}

/// Issue 27, N14: a backup through the socket protects the path the daemon checked (its
/// canonical form inside the source folder), not the path as sent: a request naming a link
/// inside the source protects the file the link resolved to when it was checked.
#[test]
fn a_backup_through_the_daemon_protects_the_path_it_checked() {
    let h = Host::start(false);
    let op = h.users.op.clone();
    // No marker: the intake leaves it to the operator's backup.
    std::fs::write(
        h.d.join("in/dump.sql"),
        [CANARY, b"\n"].concat().repeat(200),
    )
    .unwrap();
    std::os::unix::fs::symlink("dump.sql", h.d.join("in/alias.sql")).unwrap();
    let req = format!(
        "{{\"v\":1,\"command\":{{\"backup\":{{\"source\":\"emr\",\"path\":\"{}\",\"json\":false}}}}}}\n",
        h.d.join("in/alias.sql").display()
    );
    let answer = h.raw(&op, &req);
    assert!(answer.contains("\"exit\":0"), "{answer}");
    let o = h.as_root(&["snapshots", "--json"]);
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(
        o.text.contains("dump.sql") && !o.text.contains("alias.sql"),
        "{}",
        o.text
    );
    // A link out of the source folder is refused, as before.
    std::os::unix::fs::symlink("/etc", h.d.join("in/etc")).unwrap();
    let req = format!(
        "{{\"v\":1,\"command\":{{\"backup\":{{\"source\":\"emr\",\"path\":\"{}\",\"json\":false}}}}}}\n",
        h.d.join("in/etc/passwd").display()
    );
    let answer = h.raw(&op, &req);
    assert!(answer.contains("is not inside source"), "{answer}");
    assert!(!contains(&h.store_bytes(), b"root:x:0:0"));
}
