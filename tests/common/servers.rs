//! Real servers on 127.0.0.1 for integration tests (install them with `tests/setup.sh`):
//!
//! * [`S3Server`]  — s3s-fs 0.14.1: S3 over a folder, checks SigV4 signatures, conditional puts.
//! * [`Azurite`]   — Azurite 3.35.0 (Azure Blob emulator), account `devstoreaccount1`.
//! * [`SoftHsm`]   — a SoftHSM2 token in a private token dir (PKCS#11, no server).
//! * [`Prometheus`] — a Prometheus server scraping given targets every second, and `promtool`.
//! * [`Postgres`]  — PostgreSQL clusters on a private Unix socket, and the synthetic EMR database
//!   generator `tests/testdata/make-emr-db.sh`.
//!
//! Every server lives in its own temp dir (removed on drop) with its output in a log file there;
//! the process is killed by PID on drop, also when the test panics (the log tail is then printed).
//! Readiness waits up to 30 s (`COFFRE_TEST_READY_SECS` to change) and then panics with the log
//! tail. A missing binary panics with "X not found: run tests/setup.sh".
//! s3s-fs logs failed requests at `RUST_LOG=info` (`COFFRE_TEST_S3S_LOG` to change).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tempfile::TempDir;

/// Bucket created in every [`S3Server`], container created in every [`Azurite`].
pub const TEST_BUCKET: &str = "coffre-test";
/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Canary patient written by `make-emr-db.sh`: must never appear in plaintext in a backup.
pub const CANARY_LAST_NAME: &str = "CANARY-ZXQ-PATIENT";
pub const CANARY_INSURANCE: &str = "CNRY-99887766-00";

const SETUP_HINT: &str = "run tests/setup.sh";

// ------------------------------------------------------------------------------------------
// small helpers
// ------------------------------------------------------------------------------------------

/// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0")
}

fn ready_timeout() -> Duration {
    let secs = env::var("COFFRE_TEST_READY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Find a program on PATH, then in ~/.cargo/bin (where `cargo install` puts s3s-fs) and
/// /usr/local/bin; panic with "NAME not found: run tests/setup.sh".
pub fn find_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| panic!("{name} not found: {SETUP_HINT}"))
}

/// Last `n` lines of a log file (lossy UTF-8), or a note that it cannot be read.
pub fn log_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid of this process.
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("cannot create a temp dir")
}

/// Run a command to completion; panic with its output if it fails.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} ({SETUP_HINT})"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// ------------------------------------------------------------------------------------------
// a child process with its log
// ------------------------------------------------------------------------------------------

struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

enum StartError {
    /// The process exited before it was ready (message includes the log tail).
    Exited(String),
    TimedOut(String),
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}: {SETUP_HINT}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Poll `ready` until it is true, the process exits, or the timeout passes.
    fn wait_ready(
        &mut self,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), StartError> {
        let timeout = ready_timeout();
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.exit_status() {
                self.child = None;
                return Err(StartError::Exited(format!(
                    "{} exited before {what} ({st}); log {}:\n{}\n({SETUP_HINT})",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 30)
                )));
            }
            if ready() {
                // A server that lost a port race exits at once, while the port answers for
                // whoever holds it: make sure ours is still alive a moment later.
                sleep(Duration::from_millis(100));
                if let Some(st) = self.exit_status() {
                    self.child = None;
                    return Err(StartError::Exited(format!(
                        "{} exited right after {what} ({st}); log {}:\n{}\n({SETUP_HINT})",
                        self.name,
                        self.log.display(),
                        log_tail(&self.log, 30)
                    )));
                }
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(StartError::TimedOut(format!(
                    "{} not ready ({what}) after {timeout:?}; log {}:\n{}\n({SETUP_HINT})",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 30)
                )));
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            // The child is not reaped yet, so its PID cannot have been reused.
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -{sig} {pid}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Hard kill (SIGKILL) and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `sig`, wait up to `grace` for the process to exit, then SIGKILL.
    fn terminate(&mut self, sig: &str, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        self.signal(sig);
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if self.exit_status().is_some() {
                self.child = None;
                return;
            }
            sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- {} (pid {:?}) log {}, last lines:\n{}",
                self.name,
                self.pid(),
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        self.kill();
    }
}

fn mark_log(log: &Path, what: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "===== coffre test helper: {what} =====");
    }
}

fn log_says_port_in_use(log: &Path) -> bool {
    let t = log_tail(log, 30).to_lowercase();
    t.contains("in use") || t.contains("eaddrinuse")
}

// ------------------------------------------------------------------------------------------
// S3: s3s-fs
// ------------------------------------------------------------------------------------------

/// An S3 server (s3s-fs) on 127.0.0.1 storing objects as plain files under a temp dir.
/// Bucket [`TEST_BUCKET`] exists; objects are files under [`S3Server::root`].
pub struct S3Server {
    proc: Proc,
    port: u16,
    access_key: String,
    secret_key: String,
    dir: TempDir,
}

impl S3Server {
    /// Start s3s-fs on a free port with bucket `coffre-test`, wait until it accepts connections.
    pub fn start() -> S3Server {
        let bin = find_bin("s3s-fs");
        let dir = tempdir("coffre-s3-");
        let data = dir.path().join("data");
        fs::create_dir_all(data.join(TEST_BUCKET)).expect("create bucket dir");
        let access_key = "coffre-test-ak".to_string();
        let secret_key = format!("coffre-test-sk-{}", hex::encode(rand::random::<[u8; 8]>()));
        let log = dir.path().join("s3s-fs.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            if port_open(port) {
                continue;
            }
            let mut proc = Self::spawn(&bin, port, &access_key, &secret_key, &data, &log);
            match proc.wait_ready("accepting on its port", || port_open(port)) {
                Ok(()) => {
                    return S3Server {
                        proc,
                        port,
                        access_key,
                        secret_key,
                        dir,
                    }
                }
                Err(StartError::Exited(m)) if log_says_port_in_use(&log) => last = m,
                Err(StartError::Exited(m)) | Err(StartError::TimedOut(m)) => panic!("{m}"),
            }
        }
        panic!("s3s-fs: no free port after 5 tries: {last}");
    }

    fn spawn(bin: &Path, port: u16, ak: &str, sk: &str, data: &Path, log: &Path) -> Proc {
        mark_log(log, &format!("start s3s-fs on port {port}"));
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ak, "--secret-key", sk])
            .arg(data)
            // logs its start and every failed request (e.g. signature mismatch)
            .env(
                "RUST_LOG",
                env::var("COFFRE_TEST_S3S_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1");
        Proc::spawn("s3s-fs", cmd, log)
    }

    /// `http://127.0.0.1:PORT` (path-style: use `with_virtual_hosted_style_request(false)`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn bucket(&self) -> &str {
        TEST_BUCKET
    }
    pub fn region(&self) -> &str {
        "us-east-1"
    }
    pub fn access_key(&self) -> &str {
        &self.access_key
    }
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }
    /// object_store builder for bucket `coffre-test` here (path-style, http, us-east-1).
    pub fn s3_builder(&self) -> object_store::aws::AmazonS3Builder {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(self.bucket())
            .with_access_key_id(self.access_key())
            .with_secret_access_key(self.secret_key())
            .with_region(self.region())
            .with_virtual_hosted_style_request(false)
    }
    /// The bucket's folder: object `a/b` is the file `root()/a/b` (s3s-fs keeps ETags and
    /// metadata apart, in `data_dir()/.bucket-*.json`: a file changed on disk is served as is,
    /// with its old ETag).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data").join(TEST_BUCKET)
    }
    /// The folder holding all buckets (s3s-fs's ROOT).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// Create another bucket (a folder under ROOT); returns its folder.
    pub fn create_bucket(&self, name: &str) -> PathBuf {
        let p = self.data_dir().join(name);
        fs::create_dir_all(&p).expect("create bucket dir");
        p
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
    pub fn is_running(&mut self) -> bool {
        self.proc.running()
    }
    /// Stop the server (SIGTERM, then SIGKILL after 5 s) and reap it. Data stays.
    pub fn stop(&mut self) {
        self.proc.terminate("TERM", Duration::from_secs(5));
    }
    /// Crash the server (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
    /// Stop if running, then start again on the same port with the same data and keys.
    pub fn restart(&mut self) {
        self.stop();
        let bin = find_bin("s3s-fs");
        let data = self.data_dir();
        let log = self.log_path();
        self.proc = Self::spawn(
            &bin,
            self.port,
            &self.access_key,
            &self.secret_key,
            &data,
            &log,
        );
        let port = self.port;
        if let Err(StartError::Exited(m) | StartError::TimedOut(m)) = self
            .proc
            .wait_ready("accepting after restart", || port_open(port))
        {
            panic!("{m}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Azure Blob: Azurite
// ------------------------------------------------------------------------------------------

/// An Azurite blob service on 127.0.0.1 with container [`TEST_BUCKET`].
///
/// object_store: either `MicrosoftAzureBuilder::new().with_account(a.account())
/// .with_access_key(a.access_key()).with_container_name(a.container())
/// .with_endpoint(a.endpoint()).with_allow_http(true)` (per-instance; works with several
/// Azurites in one process), or `.with_use_emulator(true)`, which takes the URL only from the
/// process-wide env var `AZURITE_BLOB_STORAGE_URL` (= [`Azurite::blob_url`]).
pub struct Azurite {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let bin = find_bin("azurite-blob");
        let dir = tempdir("coffre-azurite-");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("create azurite dir");
        let log = dir.path().join("azurite.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            if port_open(port) {
                continue;
            }
            let mut proc = Self::spawn(&bin, port, &data, &log);
            match Self::wait(&mut proc, port) {
                Ok(()) => return Azurite { proc, port, dir },
                Err(StartError::Exited(m)) if log_says_port_in_use(&log) => last = m,
                Err(StartError::Exited(m)) | Err(StartError::TimedOut(m)) => panic!("{m}"),
            }
        }
        panic!("azurite: no free port after 5 tries: {last}");
    }

    fn spawn(bin: &Path, port: u16, data: &Path, log: &Path) -> Proc {
        mark_log(log, &format!("start azurite-blob on port {port}"));
        let mut cmd = Command::new(bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data)
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
            .current_dir(data);
        Proc::spawn("azurite-blob", cmd, log)
    }

    /// Ready = the port accepts and a signed "create container coffre-test" answers 201 or 409.
    fn wait(proc: &mut Proc, port: u16) -> Result<(), StartError> {
        let mut last_err = String::new();
        let r = proc.wait_ready("creating its container", || {
            if !port_open(port) {
                return false;
            }
            match azure_create_container(port, TEST_BUCKET) {
                Ok(201) | Ok(409) => true,
                Ok(code) => {
                    last_err = format!("create container: HTTP {code}");
                    false
                }
                Err(e) => {
                    last_err = format!("create container: {e}");
                    false
                }
            }
        });
        r.map_err(|e| match e {
            StartError::TimedOut(m) if !last_err.is_empty() => {
                StartError::TimedOut(format!("{m}\nlast error: {last_err}"))
            }
            other => other,
        })
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (for `with_endpoint`, path-style).
    pub fn endpoint(&self) -> String {
        format!("{}/{AZURITE_ACCOUNT}", self.blob_url())
    }
    /// `http://127.0.0.1:PORT` (for `AZURITE_BLOB_STORAGE_URL` with `with_use_emulator(true)`).
    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn account(&self) -> &str {
        AZURITE_ACCOUNT
    }
    pub fn access_key(&self) -> &str {
        AZURITE_KEY
    }
    pub fn container(&self) -> &str {
        TEST_BUCKET
    }
    /// object_store builder for container `coffre-test` here (endpoint mode, no env var).
    pub fn azure_builder(&self) -> object_store::azure::MicrosoftAzureBuilder {
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(self.account())
            .with_access_key(self.access_key())
            .with_container_name(self.container())
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
    }
    /// Create another container (201 created or 409 already there); panics otherwise.
    pub fn create_container(&self, name: &str) {
        match azure_create_container(self.port, name) {
            Ok(201) | Ok(409) => {}
            other => panic!(
                "create container {name}: {other:?}; log:\n{}",
                log_tail(&self.log_path(), 20)
            ),
        }
    }
    /// Azurite's workspace (--location): blob data and its metadata DB.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("azurite.log")
    }
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
    pub fn is_running(&mut self) -> bool {
        self.proc.running()
    }
    /// Graceful stop (SIGTERM, so Azurite saves its metadata DB; SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.proc.terminate("TERM", Duration::from_secs(10));
    }
    /// Crash it (SIGKILL): Azurite may lose blobs written in the last seconds.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
    /// Stop if running, start again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let bin = find_bin("azurite-blob");
        self.proc = Self::spawn(&bin, self.port, &self.data_dir(), &self.log_path());
        if let Err(StartError::Exited(m) | StartError::TimedOut(m)) =
            Self::wait(&mut self.proc, self.port)
        {
            panic!("{m}");
        }
    }
}

/// RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`) for x-ms-date.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        d,
        MO[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `PUT /devstoreaccount1/NAME?restype=container`, SharedKey-signed, over a raw HTTP/1.1
/// connection. Returns the HTTP status code.
fn azure_create_container(port: u16, name: &str) -> Result<u16, String> {
    let date = http_date(SystemTime::now());
    let version = "2021-08-06";
    let path = format!("/{AZURITE_ACCOUNT}/{name}");
    // VERB, then 11 empty standard headers (Content-Length is empty when 0), then the
    // canonicalized x-ms-* headers and resource. Path-style: the account appears twice.
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}{path}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .map_err(|e| e.to_string())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(string_to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let req = format!(
        "PUT {path}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\n\
         x-ms-version: {version}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{sig}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    // Read until the status line is complete (Connection: close ends the rest).
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let status = text.lines().next().unwrap_or_default();
    status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {status:?}"))
}

// ------------------------------------------------------------------------------------------
// PKCS#11: SoftHSM2
// ------------------------------------------------------------------------------------------

/// A SoftHSM2 configuration with its own token dir, and one initialised token.
///
/// SoftHSM reads `SOFTHSM2_CONF` when the module is initialised (C_Initialize), once per
/// process: give it to a coffre child process with `cmd.env(SoftHsm::CONF_ENV, h.conf_path())`.
/// In-process (cryptoki) tests can only use one conf per test binary: put several tokens
/// in it with [`SoftHsm::add_token`].
pub struct SoftHsm {
    label: String,
    user_pin: String,
    so_pin: String,
    conf: PathBuf,
    module: PathBuf,
    pin_file: PathBuf,
    dir: TempDir,
}

impl SoftHsm {
    pub const CONF_ENV: &'static str = "SOFTHSM2_CONF";

    /// Path of libsofthsm2.so; panics "libsofthsm2.so not found: run tests/setup.sh".
    pub fn find_module() -> PathBuf {
        [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/local/lib/softhsm/libsofthsm2.so",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("libsofthsm2.so not found: {SETUP_HINT}"))
    }

    /// New token dir + conf, and a token `label` with the given PINs.
    pub fn init(label: &str, user_pin: &str, so_pin: &str) -> SoftHsm {
        let module = Self::find_module();
        let dir = tempdir("coffre-softhsm-");
        let tokens = dir.path().join("tokens");
        fs::create_dir_all(&tokens).expect("create token dir");
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        let pin_file = dir.path().join("user.pin");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)
            .expect("create pin file");
        f.write_all(user_pin.as_bytes()).expect("write pin file");
        let h = SoftHsm {
            label: label.to_string(),
            user_pin: user_pin.to_string(),
            so_pin: so_pin.to_string(),
            conf,
            module,
            pin_file,
            dir,
        };
        h.add_token(label, user_pin, so_pin);
        h
    }

    /// Initialise one more token in the same token dir (same conf).
    pub fn add_token(&self, label: &str, user_pin: &str, so_pin: &str) {
        let util = find_bin("softhsm2-util");
        run_ok(
            Command::new(util)
                .env(Self::CONF_ENV, &self.conf)
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", so_pin, "--pin", user_pin]),
            "softhsm2-util --init-token",
        );
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf
    }
    pub fn module_path(&self) -> &Path {
        &self.module
    }
    /// A file (mode 0600) holding the user PIN, without a trailing newline.
    pub fn pin_file(&self) -> &Path {
        &self.pin_file
    }
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn user_pin(&self) -> &str {
        &self.user_pin
    }
    pub fn so_pin(&self) -> &str {
        &self.so_pin
    }
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }
    /// `pkcs11-tool --list-objects` (logged in) on the token; panics if it fails.
    pub fn list_objects(&self) -> String {
        self.pkcs11_tool(&["--login", "--pin", &self.user_pin, "--list-objects"])
    }
    /// Run pkcs11-tool on this module and token with the given extra args; returns stdout.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let tool = find_bin("pkcs11-tool");
        let out = run_ok(
            Command::new(tool)
                .env(Self::CONF_ENV, &self.conf)
                .arg("--module")
                .arg(&self.module)
                .args(["--token-label", &self.label])
                .args(args),
            "pkcs11-tool",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

// ------------------------------------------------------------------------------------------
// PostgreSQL
// ------------------------------------------------------------------------------------------

/// Files written by `tests/testdata/make-emr-db.sh` (see [`Postgres::make_emr_db`]).
#[derive(Debug, Clone)]
pub struct EmrDb {
    pub dir: PathBuf,
    /// pg_dump plain SQL
    pub sql: PathBuf,
    /// pg_dump custom format
    pub dump: PathBuf,
    /// pg_basebackup plain format (a PGDATA; `backup_manifest` is written last)
    pub basebackup: PathBuf,
    /// `table|count` per line
    pub counts: PathBuf,
}

impl EmrDb {
    /// counts.txt as table -> row count (patients includes the canary).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        parse_counts(&fs::read_to_string(&self.counts).expect("read counts.txt"))
    }
}

fn parse_counts(s: &str) -> BTreeMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let (t, n) = l.trim().split_once('|')?;
            Some((t.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

const COUNTS_SQL: &str = "SELECT 'patients', count(*) FROM patients UNION ALL SELECT 'encounters', count(*) FROM encounters \
     UNION ALL SELECT 'lab_results', count(*) FROM lab_results UNION ALL SELECT 'medications', count(*) FROM medications";

/// Superuser of clusters made by [`Postgres`]; clients connect as it over the socket (trust).
pub const PG_SUPERUSER: &str = "postgres";

/// A throw-away PostgreSQL cluster on a private Unix socket (no TCP), e.g. to restore into.
/// As root the server runs as user `postgres`; client tools run as the caller with `-U postgres`.
pub struct Postgres {
    proc: Proc,
    bin: PathBuf,
    port: u16,
    dir: TempDir,
}

static PG_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Postgres {
    /// Highest `/usr/lib/postgresql/*/bin` with `initdb` (or `$PGBIN`); panics with the hint.
    pub fn pg_bin_dir() -> PathBuf {
        if let Some(p) = env::var_os("PGBIN").map(PathBuf::from) {
            if p.join("initdb").exists() {
                return p;
            }
        }
        let mut best: Option<(Vec<u64>, PathBuf)> = None;
        if let Ok(rd) = fs::read_dir("/usr/lib/postgresql") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ver: Vec<u64> = name.split('.').filter_map(|x| x.parse().ok()).collect();
                let bin = e.path().join("bin");
                if ver.is_empty() || !bin.join("initdb").exists() {
                    continue;
                }
                if best.as_ref().is_none_or(|(v, _)| ver > *v) {
                    best = Some((ver, bin));
                }
            }
        }
        best.map(|(_, b)| b)
            .unwrap_or_else(|| panic!("PostgreSQL (initdb) not found: {SETUP_HINT}"))
    }

    /// Path of `tests/testdata/make-emr-db.sh` in this crate.
    pub fn emr_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/make-emr-db.sh")
    }

    /// Run `make-emr-db.sh --out OUT_DIR --patients N --port P` (a private, short-lived cluster)
    /// and return the snapshot paths. Takes ~4 s for 50 patients, ~15 s for 2000.
    /// Its output goes to OUT_DIR/make-emr-db.log.
    pub fn make_emr_db(out_dir: &Path, patients: u32) -> EmrDb {
        find_bin("bash");
        Self::pg_bin_dir();
        fs::create_dir_all(out_dir).expect("create out dir");
        let log = out_dir.join("make-emr-db.log");
        let logf = File::create(&log).expect("create make-emr-db.log");
        let port = free_port();
        let st = Command::new("bash")
            .arg(Self::emr_script())
            .arg("--out")
            .arg(out_dir)
            .args([
                "--patients",
                &patients.to_string(),
                "--port",
                &port.to_string(),
            ])
            .env("PGBIN", Self::pg_bin_dir())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup fd"))
            .stderr(logf)
            .status()
            .expect("cannot run bash");
        if !st.success() {
            panic!(
                "make-emr-db.sh failed ({st}); log {}:\n{}\n({SETUP_HINT})",
                log.display(),
                log_tail(&log, 30)
            );
        }
        let db = EmrDb {
            dir: out_dir.to_path_buf(),
            sql: out_dir.join("emr.sql"),
            dump: out_dir.join("emr.dump"),
            basebackup: out_dir.join("basebackup"),
            counts: out_dir.join("counts.txt"),
        };
        for p in [
            &db.sql,
            &db.dump,
            &db.counts,
            &db.basebackup.join("backup_manifest"),
        ] {
            assert!(p.exists(), "make-emr-db.sh did not write {}", p.display());
        }
        db
    }

    /// A new, empty cluster (initdb) running on a private socket.
    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// [`Postgres::start`] with extra server settings, `("archive_mode", "on")` for example
    /// (each passed as `-c name=value`).
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        let bin = Self::pg_bin_dir();
        let dir = Self::private_dir();
        let data = dir.path().join("data");
        fs::create_dir_all(&data).expect("create data dir");
        Self::chown_pg(&[&data]);
        let mut initdb = Self::as_server_user(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
            "-U",
            PG_SUPERUSER,
        ]);
        run_ok(&mut initdb, "initdb");
        Self::launch(bin, dir, settings)
    }

    /// Start a cluster on a copy of `data_dir` (e.g. a restored pg_basebackup): PostgreSQL
    /// replays the WAL shipped with the backup, then accepts connections.
    pub fn start_from(data_dir: &Path) -> Postgres {
        Self::start_from_with(data_dir, &[])
    }

    /// [`Postgres::start_from`] with extra server settings (`-c name=value`).
    pub fn start_from_with(data_dir: &Path, settings: &[(&str, &str)]) -> Postgres {
        let bin = Self::pg_bin_dir();
        let dir = Self::private_dir();
        let data = dir.path().join("data");
        run_ok(
            Command::new("cp").arg("-a").arg(data_dir).arg(&data),
            "copy the data dir",
        );
        let _ = fs::remove_file(data.join("postmaster.pid"));
        Self::chown_pg(&[&data]);
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod data dir");
        Self::launch(bin, dir, settings)
    }

    fn private_dir() -> TempDir {
        let n = PG_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = tempdir(&format!("coffre-pg{n}-"));
        // user postgres must reach data/ and the socket dir
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    fn chown_pg(paths: &[&Path]) {
        if is_root() {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).args(paths);
            run_ok(
                &mut c,
                "chown postgres (is PostgreSQL installed? the user postgres must exist)",
            );
        }
    }

    /// Server-side programs (initdb, postgres) run as user postgres when we are root;
    /// `setpriv` execs in place, so the PID we hold is the postmaster's.
    fn as_server_user(prog: &Path) -> Command {
        if is_root() {
            let mut c = Command::new(find_bin("setpriv"));
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(prog);
            c.env("HOME", "/var/lib/postgresql");
            c
        } else {
            Command::new(prog)
        }
    }

    fn launch(bin: PathBuf, dir: TempDir, settings: &[(&str, &str)]) -> Postgres {
        let data = dir.path().join("data");
        let sock = dir.path().join("s");
        fs::create_dir_all(&sock).expect("create socket dir");
        Self::chown_pg(&[&sock]);
        let log = dir.path().join("postgres.log");
        let port = free_port();
        mark_log(
            &log,
            &format!("start postgres, socket {}/.s.PGSQL.{port}", sock.display()),
        );
        let mut cmd = Self::as_server_user(&bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&sock)
            .args(["-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ])
            .args([
                "-c",
                "wal_level=replica",
                "-c",
                "max_wal_senders=4",
                "-c",
                "logging_collector=off",
            ]);
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let mut proc = Proc::spawn("postgres", cmd, &log);
        let isready = bin.join("pg_isready");
        let r = proc.wait_ready("accepting connections", || {
            Command::new(&isready)
                .arg("-q")
                .arg("-h")
                .arg(&sock)
                .args([
                    "-p",
                    &port.to_string(),
                    "-U",
                    PG_SUPERUSER,
                    "-d",
                    "postgres",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        if let Err(StartError::Exited(m) | StartError::TimedOut(m)) = r {
            panic!("{m}");
        }
        Postgres {
            proc,
            bin,
            port,
            dir,
        }
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// Socket directory, for `-h` / `PGHOST`.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("s")
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
    /// A client tool (psql, pg_dump, pg_restore, pg_basebackup...) with -h/-p/-U set
    /// (the args are placed first, so add the tool's own options after).
    pub fn client(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", PG_SUPERUSER])
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .stdin(Stdio::null());
        c
    }
    /// Run SQL with `psql -At` in database `db`; returns stdout; panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run_ok(
            self.client("psql").args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn create_db(&self, db: &str) {
        run_ok(self.client("createdb").arg(db), "createdb");
    }
    /// `createdb DB` then `pg_restore --no-owner -d DB DUMP` (custom-format dump).
    pub fn restore_dump(&self, dump: &Path, db: &str) {
        self.create_db(db);
        run_ok(
            self.client("pg_restore")
                .args(["--no-owner", "--exit-on-error", "-d", db])
                .arg(dump),
            "pg_restore",
        );
    }
    /// `createdb DB` then `psql -f SQL` (plain dump).
    pub fn restore_sql(&self, sql: &Path, db: &str) {
        self.create_db(db);
        run_ok(
            self.client("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f"])
                .arg(sql),
            "psql -f",
        );
    }
    /// Row counts of the EMR tables in `db`, comparable with [`EmrDb::counts`].
    pub fn emr_counts(&self, db: &str) -> BTreeMap<String, u64> {
        parse_counts(&self.psql(db, COUNTS_SQL))
    }
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
    /// Fast shutdown (SIGINT; SIGKILL after 30 s).
    pub fn stop(&mut self) {
        self.proc.terminate("INT", Duration::from_secs(30));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() && self.proc.child.is_some() {
            eprintln!(
                "--- postgres (pid {:?}) log {}, last lines:\n{}",
                self.proc.pid(),
                self.log_path().display(),
                log_tail(&self.log_path(), 20)
            );
        }
        // Immediate shutdown lets the postmaster take its backends down with it.
        self.proc.terminate("QUIT", Duration::from_secs(10));
    }
}

// ------------------------------------------------------------------------------------------
// Prometheus (Debian package `prometheus`, which also ships promtool)
// ------------------------------------------------------------------------------------------

/// A Prometheus server on 127.0.0.1 scraping `targets` under job `job` every second, with rule
/// files loaded; its TSDB lives in a temp dir.
pub struct Prometheus {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Start Prometheus and wait until `/-/ready` answers 200.
    pub fn start(job: &str, targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let bin = find_bin("prometheus");
        let dir = tempdir("coffre-prometheus-");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("'{}'", p.display()))
            .collect();
        let text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        fs::write(&config, text).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            if port_open(port) {
                continue;
            }
            mark_log(&log, &format!("start prometheus on port {port}"));
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .current_dir(dir.path());
            let mut proc = Proc::spawn("prometheus", cmd, &log);
            match proc.wait_ready("answering /-/ready", || {
                matches!(http_get_text(port, "/-/ready"), Ok((200, _)))
            }) {
                Ok(()) => return Prometheus { proc, port, dir },
                Err(StartError::Exited(m)) if log_says_port_in_use(&log) => last = m,
                Err(StartError::Exited(m)) | Err(StartError::TimedOut(m)) => panic!("{m}"),
            }
        }
        panic!("prometheus: no free port after 5 tries: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// GET an API path; `Ok(data)` when Prometheus answers `"status": "success"`.
    pub fn api(&self, path_and_query: &str) -> Result<serde_json::Value, String> {
        let (code, body) = http_get_text(self.port, path_and_query)?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the `result` array of a vector (or the value of a scalar, as one item).
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let data = self.api(&format!("/api/v1/query?query={q}"))?;
        match &data["result"] {
            serde_json::Value::Array(a) if data["resultType"] == "vector" => Ok(a.clone()),
            other => Ok(vec![other.clone()]),
        }
    }

    /// The value of the sample whose `label` is `value` in the result of `promql`, if any.
    pub fn value_where(&self, promql: &str, label: &str, value: &str) -> Option<f64> {
        self.query(promql)
            .ok()?
            .iter()
            .find(|s| s["metric"][label] == value)
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
    }
}

/// `promtool ARGS...` (stdin from `stdin` when given): (success, stdout + stderr).
pub fn promtool(args: &[&str], stdin: Option<&[u8]>, dir: &Path) -> (bool, String) {
    let bin = find_bin("promtool");
    let mut child = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}: {SETUP_HINT}", bin.display()));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("promtool stdin");
        w.write_all(input).expect("write promtool stdin");
    }
    let out = child.wait_with_output().expect("wait for promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`: (status, body).
pub fn http_get_text(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    Ok((code, body.to_string()))
}
