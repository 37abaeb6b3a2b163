//! Driving the real `coffre` binary in end-to-end tests: a private folder per test holding the
//! config, the state folder, the master key, the source folder and restore targets, and a
//! [`CoffreEnv::run`] that starts `coffre --config FILE ...` with a clean environment, and
//! [`CoffreEnv::daemon`] that starts the daemon on it ([`super::daemon::TestDaemon`]).
#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::daemon::TestDaemon;
use super::servers::{Azurite, S3Server};

/// Environment variable names the generated configs use for store credentials.
pub const S3_AK_ENV: &str = "COFFRE_TEST_S3_AK";
pub const S3_SK_ENV: &str = "COFFRE_TEST_S3_SK";
pub const AZ_KEY_ENV: &str = "COFFRE_TEST_AZ_KEY";

/// The coffre binary built by cargo for this test run.
pub fn coffre_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coffre"))
}

/// `[[store]]` table of an S3 store on `s3`, credentials from [`S3_AK_ENV`]/[`S3_SK_ENV`].
pub fn s3_store(name: &str, site: &str, s3: &S3Server) -> String {
    format!(
        r#"
[[store]]
name = "{name}"
kind = "s3"
site = "{site}"
jurisdiction = "CA-QC"
bucket = "{bucket}"
endpoint = "{endpoint}"
region = "{region}"
access-key-id-env = "{S3_AK_ENV}"
secret-access-key-env = "{S3_SK_ENV}"
"#,
        bucket = s3.bucket(),
        endpoint = s3.endpoint(),
        region = s3.region(),
    )
}

/// `[[store]]` table of an Azure Blob store on `az`, account key from [`AZ_KEY_ENV`].
pub fn azure_store(name: &str, site: &str, az: &Azurite) -> String {
    format!(
        r#"
[[store]]
name = "{name}"
kind = "azure"
site = "{site}"
jurisdiction = "CA-QC"
account = "{account}"
container = "{container}"
endpoint = "{endpoint}"
access-key-env = "{AZ_KEY_ENV}"
"#,
        account = az.account(),
        container = az.container(),
        endpoint = az.endpoint(),
    )
}

/// `[[store]]` table of a local store named `name` in `site` (jurisdiction CA-QC) at `path`.
pub fn local_store(name: &str, site: &str, path: &Path) -> String {
    format!(
        r#"[[store]]
name = "{name}"
kind = "local"
site = "{site}"
jurisdiction = "CA-QC"
path = "{path}"
"#,
        path = path.display(),
    )
}

/// [`local_store`] tables for `(name, site)` pairs, each at `root/stores/<site>`.
pub fn local_stores(root: &Path, stores: &[(&str, &str)]) -> String {
    stores
        .iter()
        .map(|(name, site)| local_store(name, site, &root.join("stores").join(site)))
        .collect()
}

/// `[[key-provider]]` table of the file provider `local`: key at `master_key`, created if missing.
pub fn file_key_provider(master_key: &Path) -> String {
    format!(
        r#"[[key-provider]]
name = "local"
kind = "file"
master-key = "{key}"
create-master-key = true
"#,
        key = master_key.display(),
    )
}

/// What one coffre invocation did.
pub struct Run {
    pub args: Vec<String>,
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Panic (showing the whole run) unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{self}");
        self
    }
    pub fn expect_ok(&self) -> &Run {
        self.expect_code(0)
    }
    /// Panic unless the command failed (non-zero exit, not a signal).
    pub fn expect_failure(&self) -> &Run {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure\n{self}"
        );
        self
    }
    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// The `error: ...` line(s) coffre prints on failure.
    pub fn error_text(&self) -> String {
        self.stderr
            .lines()
            .skip_while(|l| !l.starts_with("error:"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "coffre {}\n--- exit: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// A coffre installation in a temp folder: config, state, master key, source folder.
pub struct CoffreEnv {
    pub dir: TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub master_key: PathBuf,
    /// The `emr` source's folder.
    pub incoming: PathBuf,
    /// Free folder for restore targets.
    pub out: PathBuf,
    envs: Vec<(String, String)>,
    stores: String,
}

impl CoffreEnv {
    /// A config with source `emr`, a file key provider (created on first use), `min-sites = 2`,
    /// fast retries (1 retry, 100 ms), 64 KiB segments, and the given `[[store]]` tables.
    pub fn new(stores: &str) -> CoffreEnv {
        let dir = tempfile::Builder::new()
            .prefix("coffre-e2e-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let incoming = root.join("incoming");
        let out = root.join("out");
        fs::create_dir_all(&incoming).unwrap();
        fs::create_dir_all(&out).unwrap();
        let env = CoffreEnv {
            config: root.join("coffre.toml"),
            state: root.join("state"),
            master_key: root.join("keys").join("master.key"),
            incoming,
            out,
            dir,
            envs: Vec::new(),
            stores: stores.to_string(),
        };
        env.write_config(&env.config_text(&env.state.clone()));
        env
    }

    /// Set the credentials of the test servers for the child processes.
    pub fn with_s3(mut self, s3: &S3Server) -> CoffreEnv {
        self.set_env(S3_AK_ENV, s3.access_key());
        self.set_env(S3_SK_ENV, s3.secret_key());
        self
    }
    pub fn with_azure(mut self, az: &Azurite) -> CoffreEnv {
        self.set_env(AZ_KEY_ENV, az.access_key());
        self
    }
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.envs.retain(|(k0, _)| k0 != k);
        self.envs.push((k.to_string(), v.to_string()));
    }

    /// The config text for a given state folder.
    pub fn config_text(&self, state: &Path) -> String {
        format!(
            r#"state-dir = "{state}"

[pipeline]
segment-size = "64KiB"
part-size = "5MiB"
zstd-threads = 1

[replication]
min-sites = 2
retries = 1
backoff = "100ms"

[[source]]
name = "emr"
path = "{incoming}"

{provider}{stores}"#,
            state = state.display(),
            incoming = self.incoming.display(),
            provider = file_key_provider(&self.master_key),
            stores = self.stores,
        )
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.config, text).expect("write config");
    }

    /// `coffre --config CONFIG ARGS...` with a clean environment (no AWS_*/AZURE_* leaking in).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with_config(&self.config, args)
    }

    pub fn command_with_config(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(coffre_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("COFFRE_LOG", "warn")
            .arg("--config")
            .arg(config)
            .arg("--log-format")
            .arg("text")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some(t) = std::env::var_os("TMPDIR") {
            c.env("TMPDIR", t);
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// The daemon's control socket (`<state>/run/coffre.sock`).
    pub fn socket(&self) -> PathBuf {
        self.state.join("run/coffre.sock")
    }

    /// `coffre daemon` on this config, its log in `daemon.log`, not yet waited for.
    pub fn spawn_daemon(&self) -> TestDaemon {
        TestDaemon::spawn(self.command(&[]), Some(&self.dir.path().join("daemon.log")))
    }

    /// `coffre daemon` on this config, once its control socket answers (60 s at most).
    pub fn daemon(&self) -> TestDaemon {
        self.spawn_daemon().wait_socket(&self.socket(), 60)
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_config(&self.config, args)
    }

    pub fn run_with_config(&self, config: &Path, args: &[&str]) -> Run {
        let out = self
            .command_with_config(config, args)
            .output()
            .expect("cannot start coffre");
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `coffre backup --source emr PATH`, expecting exit 0 (protected); returns the snapshot id.
    pub fn backup(&self, path: &Path) -> String {
        let r = self.run(&["backup", "--source", "emr", path.to_str().unwrap()]);
        r.expect_ok();
        let id = r.stdout.trim().to_string();
        assert_eq!(id.len(), 26, "backup did not print a snapshot id\n{r}");
        id
    }

    /// `coffre restore SNAP --source emr --to TO --purpose PURPOSE --json [--store S]`.
    pub fn restore(&self, snap: &str, to: &Path, store: Option<&str>) -> Run {
        let mut args = vec![
            "restore",
            snap,
            "--source",
            "emr",
            "--to",
            to.to_str().unwrap(),
            "--purpose",
            "e2e test restore",
            "--json",
        ];
        if let Some(s) = store {
            args.push("--store");
            args.push(s);
        }
        self.run(&args)
    }

    /// `coffre verify [ID] --json`: (exit code, checks).
    pub fn verify(&self, id: Option<&str>) -> (Run, Vec<serde_json::Value>) {
        let mut args = vec!["verify"];
        if let Some(id) = id {
            args.push(id);
        }
        args.push("--json");
        let r = self.run(&args);
        let checks = r
            .json()
            .as_array()
            .unwrap_or_else(|| panic!("verify --json is not an array\n{r}"))
            .clone();
        (r, checks)
    }
}

/// Several MiB of SQL-dump-like text (a pg_dump `COPY` section) with the canary patient in the
/// middle. Deterministic.
pub fn emr_sql(target_len: usize) -> Vec<u8> {
    const FIRST: [&str; 12] = [
        "Marie", "Jean", "Luc", "Sophie", "Amélie", "Pierre", "Chloé", "Louis", "Emma", "Gabriel",
        "Léa", "Nathan",
    ];
    const LAST: [&str; 12] = [
        "Tremblay",
        "Gagnon",
        "Roy",
        "Côté",
        "Bouchard",
        "Gauthier",
        "Morin",
        "Lavoie",
        "Fortin",
        "Gagné",
        "Ouellet",
        "Pelletier",
    ];
    const DX: [&str; 8] = [
        "E11.9", "I10", "J45.909", "M54.5", "F32.9", "K21.9", "N39.0", "R51",
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut out = String::with_capacity(target_len + 4096);
    out.push_str("--\n-- PostgreSQL database dump\n--\n\nSET client_encoding = 'UTF8';\n\n");
    out.push_str("CREATE TABLE public.patients (id bigint, first_name text, last_name text, birth_date date, insurance_number text, diagnosis text, notes text);\n\n");
    out.push_str("COPY public.patients (id, first_name, last_name, birth_date, insurance_number, diagnosis, notes) FROM stdin;\n");
    let mut id = 1u64;
    let mut canary_written = false;
    while out.len() < target_len {
        if !canary_written && out.len() >= target_len / 2 {
            out.push_str(&format!(
                "{id}\tZoé\t{}\t1971-04-02\t{}\tZ99.9\tcanary patient: must never appear in a store\n",
                super::servers::CANARY_LAST_NAME,
                super::servers::CANARY_INSURANCE
            ));
            canary_written = true;
            id += 1;
            continue;
        }
        let r = next();
        out.push_str(&format!(
            "{id}\t{}\t{}\t19{:02}-{:02}-{:02}\t{}{:08}-{:02}\t{}\tvisit {} note: {} bp {}/{} hr {}\n",
            FIRST[(r % 12) as usize],
            LAST[((r >> 4) % 12) as usize],
            30 + (r >> 8) % 70,
            1 + (r >> 16) % 12,
            1 + (r >> 20) % 28,
            LAST[((r >> 24) % 12) as usize].chars().take(3).collect::<String>().to_uppercase(),
            (r >> 28) % 100_000_000,
            (r >> 56) % 100,
            DX[((r >> 40) % 8) as usize],
            (r >> 44) % 20,
            ["stable", "follow-up in 3 months", "refer to cardiology", "renew prescription"]
                [((r >> 48) % 4) as usize],
            100 + (r >> 50) % 60,
            60 + (r >> 52) % 40,
            50 + (r >> 54) % 60,
        ));
        id += 1;
    }
    out.push_str("\\.\n\n--\n-- PostgreSQL database dump complete\n--\n");
    out.into_bytes()
}

/// Does `needle` occur in `hay`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `root` (recursively, not following symlinks).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Names in `dir` (not recursive).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Give `bytes`, the whole WAL segment named `name` (its size a power of two, as
/// `--wal-segsize`), the first page header PostgreSQL 15 writes (`XLogLongPageHeaderData`:
/// magic, `XLP_LONG_HEADER`, the timeline and start LSN the name says, a system id, the segment
/// size), since `wal-fetch` serves a segment only when that header matches its name.
pub fn stamp_wal_header(bytes: &mut [u8], name: &str) {
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).unwrap();
    let (tli, log, seg) = (hex(0..8) as u32, hex(8..16), hex(16..24));
    let size = bytes.len() as u64;
    assert!(
        size.is_power_of_two(),
        "a WAL segment's size is a power of two"
    );
    bytes[..40].fill(0);
    bytes[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    bytes[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    bytes[4..8].copy_from_slice(&tli.to_le_bytes());
    bytes[8..16].copy_from_slice(&((log << 32) | (seg * size)).to_le_bytes());
    bytes[24..32].copy_from_slice(&0x7300_0000_0000_0001u64.to_le_bytes());
    bytes[32..36].copy_from_slice(&(size as u32).to_le_bytes());
    bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
}
