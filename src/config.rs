//! Configuration: inert serde data, then one `validate()` pass that reports every problem with its
//! key path and what to do about it. Live components (stores, key providers) are built from a
//! validated config elsewhere (`store::build`, `app::build_providers`).
//!
//! Invariants: secrets are only ever given by path, environment variable name or systemd credential
//! name, never inline; there is no option that turns sealing off; relative paths are relative to the
//! working directory (the repository root for the embedded default, absolute under systemd).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::ids::is_valid_name;

pub mod host;

/// Where the config is read from when neither `--config` nor `COFFRE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coffre/coffre.toml";

/// The packaged unit loads every file of this folder as a systemd credential
/// (`LoadCredential=coffre:/etc/coffre/credentials` in systemd/coffre.service)...
pub const CREDENTIALS_SOURCE_DIR: &str = "/etc/coffre/credentials";
/// ...named `coffre_<file>`...
pub const CREDENTIAL_PREFIX: &str = "coffre_";
/// ...which the daemon reads here (its `$CREDENTIALS_DIRECTORY`).
pub const SERVICE_CREDENTIALS_DIR: &str = "/run/credentials/coffre.service";

/// The file on this host that the packaged unit loads as the credential `name`
/// (`coffre_s3-secret` is `/etc/coffre/credentials/s3-secret`); none for a name it does not load.
pub fn credential_source(name: &str) -> Option<PathBuf> {
    let file = name.strip_prefix(CREDENTIAL_PREFIX)?;
    if file.is_empty() || file.contains('/') || file == "." || file == ".." {
        return None;
    }
    Some(Path::new(CREDENTIALS_SOURCE_DIR).join(file))
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}. {}", read_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} has {} problem(s):\n{}", problems.len(), render(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {}: {}", p.key, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One validation finding: the key path (`store[1].endpoint`) and what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Folder for the local catalog, journal, keyrings and access log (created mode 0700).
    pub state_dir: PathBuf,
    /// Host name written in manifests and the access log; defaults to the OS host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Compression, sealing and upload tuning.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Replication policy across stores.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// HTTP status endpoint.
    #[serde(default)]
    pub status: StatusConfig,
    /// Access log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Schedules of the daemon's workers.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Carrying out retention: crypto-shredding and its guards.
    #[serde(default)]
    pub shred: ShredConfig,
    /// Folders where snapshots land.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Object stores that receive sealed copies.
    #[serde(default, rename = "store")]
    pub stores: Vec<StoreConfig>,
    /// Key providers that wrap each snapshot's data key.
    #[serde(default, rename = "key-provider")]
    pub key_providers: Vec<KeyProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineConfig {
    /// zstd compression level, 1 to 19.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// zstd worker threads; 0 means one per CPU core.
    #[serde(default)]
    pub zstd_threads: u32,
    /// Plaintext size of one sealed segment: a power of two from 64 KiB to 16 MiB.
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// Multipart upload part size (at least 5 MiB, the S3 minimum).
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Parts in flight per store.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
}

fn default_zstd_level() -> i32 {
    3
}
fn default_segment_size() -> ByteSize {
    ByteSize::mib(1)
}
fn default_part_size() -> ByteSize {
    ByteSize::mib(8)
}
fn default_upload_concurrency() -> usize {
    4
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            zstd_level: default_zstd_level(),
            zstd_threads: 0,
            segment_size: default_segment_size(),
            part_size: default_part_size(),
            upload_concurrency: default_upload_concurrency(),
        }
    }
}

impl PipelineConfig {
    /// log2 of the segment size (validated to be a power of two in range).
    pub fn segment_log2(&self) -> u8 {
        self.segment_size.as_u64().trailing_zeros() as u8
    }

    pub fn threads(&self) -> u32 {
        if self.zstd_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        } else {
            self.zstd_threads
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicationConfig {
    /// A snapshot counts as protected only when committed in at least this many distinct sites.
    #[serde(default = "default_min_sites")]
    pub min_sites: usize,
    /// Jurisdictions (e.g. `CA-QC`) where stores may be; any other needs a privacy impact assessment.
    #[serde(default = "default_jurisdictions")]
    pub allowed_jurisdictions: Vec<String>,
    /// Attempts per store operation before the store is marked down for this snapshot.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff between attempts (doubled each time, with jitter).
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// A store that sends nothing for this long in the middle of a transfer is treated as failed
    /// (a restore goes on from another store).
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: Duration,
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_min_sites() -> usize {
    2
}
fn default_jurisdictions() -> Vec<String> {
    vec!["CA-QC".to_string()]
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            min_sites: default_min_sites(),
            allowed_jurisdictions: default_jurisdictions(),
            retries: default_retries(),
            backoff: default_backoff(),
            stall_timeout: default_stall_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StatusConfig {
    /// Address of the status endpoint; loopback by default.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding a bearer token; required when `listen` is not a loopback address.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9640))
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: default_listen(),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonConfig {
    /// How often source folders are scanned (file-system events also wake the scan).
    #[serde(default = "default_scan_interval", with = "humantime_serde")]
    pub scan_interval: Duration,
    /// How often lagging stores are caught up and store health is probed.
    #[serde(default = "default_catch_up_interval", with = "humantime_serde")]
    pub catch_up_interval: Duration,
    /// How often every replica is re-read and its hash checked (the scrub).
    #[serde(default = "default_scrub_every", with = "humantime_serde")]
    pub scrub_every: Duration,
    /// On SIGTERM, how long in-flight work may take before the daemon exits anyway (it is resumed
    /// at the next start).
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Unix socket through which the CLI's restore, drill, shred, hold and audit commands reach
    /// the running daemon (default `$RUNTIME_DIRECTORY/coffre.sock`, else
    /// `<state-dir>/run/coffre.sock`).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

fn default_audit_retention() -> Duration {
    Duration::from_secs(7 * 365 * 86_400 + 2 * 86_400)
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: default_audit_retention(),
            path: None,
            operators_group: None,
            erasure_group: None,
        }
    }
}

fn default_scan_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_catch_up_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_scrub_every() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            scan_interval: default_scan_interval(),
            catch_up_interval: default_catch_up_interval(),
            scrub_every: default_scrub_every(),
            drain_timeout: default_drain_timeout(),
            control_socket: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuditConfig {
    /// How long access-log entries are kept, locally and in their sealed copies in the stores;
    /// past it they are destroyed (`coffre audit expire`, the daemon's shred schedule).
    #[serde(default = "default_audit_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Access log file; defaults to `<state-dir>/audit/access.log`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Unix group whose members may reach the control socket (it owns the socket) and, unless
    /// they are a source's archiver, list, verify, restore, drill, hold and back up through it.
    #[serde(default)]
    pub operators_group: Option<String>,
    /// Unix group whose members (with root) may erase through the daemon: shred a snapshot
    /// before its time, release a hold, run retention now, expire the access log. Unset: root
    /// only. Keep the database's account and day-to-day operators out of it.
    #[serde(default)]
    pub erasure_group: Option<String>,
}

/// How coffre decides that a snapshot in a source folder is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompleteRule {
    /// A marker file exists: `backup_manifest` inside a directory, or `NAME.done` beside a file.
    Marker,
    /// Size and mtime unchanged for `settle-time`, and no process has the file open for writing.
    Settled,
    /// The snapshot was renamed into the folder: anything that is not a temporary name is complete.
    Rename,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceConfig {
    /// Name of the source (path-safe: letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Folder where this source's snapshots land.
    pub path: PathBuf,
    /// How a snapshot is known to be complete.
    #[serde(default = "default_complete")]
    pub complete: CompleteRule,
    /// For `settled`: how long size and mtime must stay unchanged.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle_time: Duration,
    /// Retention of this source's snapshots.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Disaster-recovery drills of this source.
    #[serde(default)]
    pub drill: DrillConfig,
    /// Continuous archiving of this source's PostgreSQL WAL (`coffre wal-push`).
    #[serde(default)]
    pub pitr: Option<PitrConfig>,
}

/// `[source.pitr]`: WAL archiving for point-in-time recovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PitrConfig {
    /// How far back any moment can be recovered; a WAL file is planned to expire one day after
    /// the window has moved past it.
    #[serde(default = "default_pitr_window", with = "humantime_serde")]
    pub window: Duration,
    /// Through the daemon, acknowledge a pushed WAL file once it is fsynced in the local spool
    /// (`<state-dir>/spool/<source>/`) and replicate it in the background (pgBackRest's
    /// `archive-async`): PostgreSQL is not held up by the stores, at the price of a window
    /// where the newest WAL is on this host only.
    #[serde(default)]
    pub archive_async: bool,
    /// Largest spool; past it, pushes are archived synchronously again (PostgreSQL then waits).
    #[serde(default = "default_spool_max")]
    pub spool_max: bytesize::ByteSize,
    /// WAL files archived at once (each one in every store), so that a backlog drains at the
    /// stores' throughput rather than one file's round trips: the daemon archives the segments
    /// after the one pushed that PostgreSQL has marked `.ready`, ahead of their own push
    /// ([`crate::ops::wal::ahead`]), and in archive-async the spooled files. 1: one at a time.
    #[serde(default = "default_archive_parallel")]
    pub archive_parallel: usize,
    /// zstd level of the source's WAL files (snapshots use `pipeline.zstd-level`). WAL
    /// compresses almost as well at level 1 as at 3 (7.33:1 against 7.46:1 on pgbench WAL) in
    /// about half the CPU, and archiving speed is what keeps `pg_wal` from filling up.
    #[serde(default = "default_wal_zstd_level")]
    pub zstd_level: i32,
    /// Who archives this source's WAL through the daemon: a user name (e.g. "postgres"), or,
    /// when no user has that name, a group whose members may. Only it (and root) may `wal-push` for this source, and
    /// it may do nothing else through the socket but `wal-fetch` of this source: never an
    /// operator, never erasure. Unset: only root archives through the daemon.
    #[serde(default)]
    pub archiver: Option<String>,
    /// The source's `pg_wal` folder (e.g. "/var/lib/postgresql/15/main/pg_wal"). When set, a
    /// pushed WAL file must be that folder's entry of its name (the same file, reached with no
    /// symlink), and the daemon archives the next `.ready` segments ahead of their push
    /// (`archive-parallel`), opened beneath that folder. Unset: no look-ahead.
    #[serde(default)]
    pub pg_wal: Option<PathBuf>,
}

fn default_wal_zstd_level() -> i32 {
    1
}

fn default_archive_parallel() -> usize {
    4
}

fn default_spool_max() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(4)
}

fn default_pitr_window() -> Duration {
    Duration::from_secs(14 * 86_400)
}

/// Which snapshot a drill restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DrillPick {
    #[default]
    Latest,
    Random,
}

/// A drill restores a snapshot into a scratch folder, checks it, runs `verify-command`, records
/// the time to restore and verify, and wipes the scratch folder whatever happens.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DrillConfig {
    /// How often the daemon drills this source (e.g. "7d"); unset: only `coffre drill`.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Command run (by `sh -c`) on the restored copy; placeholders `{dir}` (the restored
    /// directory, or the folder holding the restored file), `{file}` (the restored file or
    /// directory) and `{port}` (a free TCP port on 127.0.0.1). Exit status 0 means the copy works.
    /// Its output is discarded: it may hold personal data. A relative path as its first word is
    /// taken from the config file's folder, like every relative path of the config.
    #[serde(default)]
    pub verify_command: Option<String>,
    /// `latest` (default) or `random`.
    #[serde(default)]
    pub pick: DrillPick,
    /// Stores to drill (default: every store).
    #[serde(default)]
    pub stores: Option<Vec<String>>,
    /// Limit for restore plus verify.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Scratch folder (default `<state-dir>/drills`); wiped after every drill.
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
    /// A point-in-time drill (source with `[source.pitr]`): restore a base backup, replay the
    /// archived WAL to a random point of the window with PostgreSQL, then run the verify
    /// command on the promoted database.
    #[serde(default)]
    pub pitr: bool,
    /// OS user PostgreSQL runs as for the replay (it owns the scratch copy; it must be in
    /// `audit.operators-group` to fetch WAL through the socket). Required for a PITR drill, and
    /// never the daemon's own user nor root.
    #[serde(default)]
    pub pg_user: Option<String>,
    /// The PostgreSQL programs for the replay (default: from the backup's PG_VERSION).
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
}

fn default_complete() -> CompleteRule {
    CompleteRule::Settled
}
fn default_settle() -> Duration {
    Duration::from_secs(30)
}

/// Retention of one source. Rules whose outcome is known when a snapshot is protected (the first
/// snapshot of each hour, day, week, month, year is the one kept for that period) decide the
/// planned expiry, hence the epoch key its data key is wrapped under; `keep-last` and holds are
/// applied when an epoch falls due, by re-wrapping the keys they keep under a later epoch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetentionConfig {
    /// Keep every snapshot at least this long.
    #[serde(default = "default_keep_within", with = "humantime_serde")]
    pub keep_within: Duration,
    /// Keep the N newest snapshots whatever their age.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the first snapshot of each UTC hour for N hours.
    #[serde(default)]
    pub keep_hourly: u32,
    /// Keep the first snapshot of each UTC day for N days.
    #[serde(default)]
    pub keep_daily: u32,
    /// Keep the first snapshot of each ISO week for N weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// Keep the first snapshot of each month for N months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Keep the first snapshot of each year for N years.
    #[serde(default)]
    pub keep_yearly: u32,
    /// Never shred a snapshot younger than this, whatever the rules say.
    #[serde(default, with = "humantime_serde")]
    pub min_age: Option<Duration>,
}

fn default_keep_within() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_within: default_keep_within(),
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            min_age: None,
        }
    }
}

/// Shredding policy and guards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShredConfig {
    /// Carry out the retention plan in the daemon (destroy due epoch keys, delete objects).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often the daemon checks for due epochs.
    #[serde(default = "default_shred_every", with = "humantime_serde")]
    pub every: Duration,
    /// If the clock moved forward more than this since the last time the daemon saw it, shredding
    /// stops and the status raises an alert instead of destroying years of backups.
    #[serde(default = "default_max_clock_jump", with = "humantime_serde")]
    pub max_clock_jump: Duration,
}

fn default_shred_every() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_clock_jump() -> Duration {
    Duration::from_secs(3 * 86_400)
}

impl Default for ShredConfig {
    fn default() -> Self {
        ShredConfig {
            enabled: true,
            every: default_shred_every(),
            max_clock_jump: default_max_clock_jump(),
        }
    }
}

/// Kind of object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Local,
    S3,
    Azure,
    Gcs,
}

/// One object store. Flat on purpose (one table per store, the fields of its kind); `validate()`
/// refuses fields that do not belong to the kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreConfig {
    /// Name of the store (path-safe).
    pub name: String,
    /// local, s3, azure or gcs.
    pub kind: StoreKind,
    /// Geographic site (region) of the store; replication counts distinct sites.
    pub site: String,
    /// Jurisdiction of the site, e.g. `CA-QC`.
    pub jurisdiction: String,
    /// Reference of the privacy impact assessment that allows this store outside the allow-list.
    #[serde(default)]
    pub privacy_impact_assessment: Option<String>,
    /// Prefix of every coffre object in this store.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Must stay true: coffre refuses stores whose TLS certificates are not verified.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// local: folder of the store.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// s3, gcs: bucket name.
    #[serde(default)]
    pub bucket: Option<String>,
    /// s3, azure: endpoint URL (https, or http on a loopback address for tests).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// s3: region.
    #[serde(default)]
    pub region: Option<String>,
    /// s3: use virtual-hosted-style URLs (AWS) rather than path-style (most S3-compatible stores).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// s3: environment variable holding the access key id (default: the AWS_* environment).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    /// s3: file holding the access key id.
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// s3: environment variable holding the secret access key.
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// s3: file holding the secret access key (mode 0600 or 0400).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// azure: storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// azure: container.
    #[serde(default)]
    pub container: Option<String>,
    /// azure: environment variable holding the account key.
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// azure: file holding the account key (mode 0600 or 0400).
    #[serde(default)]
    pub access_key_file: Option<PathBuf>,
    /// gcs: service account JSON file.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    "coffre".to_string()
}
fn default_true() -> bool {
    true
}

/// Kind of key provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    File,
    Pkcs11,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeyProviderConfig {
    /// Name of the provider (path-safe).
    pub name: String,
    /// file or pkcs11.
    pub kind: ProviderKind,
    /// file: path of the master key (64 hex characters, mode 0600 or 0400).
    #[serde(default)]
    pub master_key: Option<PathBuf>,
    /// file: systemd credential holding the master key (`LoadCredential=NAME:...`).
    #[serde(default)]
    pub master_key_credential: Option<String>,
    /// file: create the master key (mode 0600) if it does not exist yet.
    #[serde(default)]
    pub create_master_key: bool,
    /// file: sealed keyring; defaults to `<state-dir>/keys/<name>.keyring`.
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    /// pkcs11: path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// pkcs11: label of the token.
    #[serde(default)]
    pub token_label: Option<String>,
    /// pkcs11: file holding the user PIN (mode 0600 or 0400).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
}

impl Config {
    /// Where the daemon's control socket is: `daemon.control-socket`, else
    /// `$RUNTIME_DIRECTORY/coffre.sock`, else `<state-dir>/run/coffre.sock`.
    pub fn control_socket_path(&self) -> PathBuf {
        if let Some(p) = &self.daemon.control_socket {
            return p.clone();
        }
        match std::env::var_os("RUNTIME_DIRECTORY") {
            Some(d) => PathBuf::from(d).join("coffre.sock"),
            None => self.state_dir.join("run").join("coffre.sock"),
        }
    }

    /// Read, parse and validate a config file.
    /// Read, resolve and validate a config file. A relative path in it is taken from the folder
    /// the file is in (as Prometheus and docker compose do), never from the working directory:
    /// the same file names the same state, stores and keys from wherever it is run.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match Self::check_text(&text, Some(&config_folder(path))) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// Parse and validate config text; `path` only names the file in errors.
    /// Relative paths stay as written (resolved against the working directory when used).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        match Self::check_text(text, None) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// Every problem of config text in one pass: each syntax or type error with its line (and
    /// key path where there is one), found by setting aside the line the parser stopped at and
    /// parsing again (up to [`MAX_PARSE_ERRORS`]), then every validation problem of what
    /// remains. The config is returned when it could be read at all, with the lines set aside
    /// left at their defaults (so a problem may follow from one reported above it). With
    /// `base`, relative paths are taken from that folder before validation.
    pub fn check_text(text: &str, base: Option<&Path>) -> (Option<Config>, Vec<Problem>) {
        let mut text = text.to_string();
        let mut problems = Vec::new();
        let mut set_aside = BTreeSet::new();
        loop {
            let e = match toml::from_str::<Config>(&text) {
                Ok(mut config) => {
                    if let Some(base) = base {
                        config.resolve_paths(base);
                    }
                    problems.extend(config.validate());
                    return (Some(config), problems);
                }
                Err(e) => e,
            };
            let message = e.message().trim().replace('\n', " ");
            let Some(span) = e.span() else {
                problems.push(Problem {
                    key: "config".into(),
                    message,
                });
                break;
            };
            let first = line_of(&text, span.start);
            let last = line_of(&text, span.end.max(span.start + 1) - 1);
            problems.push(Problem {
                key: match key_path_at(&text, first) {
                    Some(k) => format!("{k} (line {first})"),
                    None => format!("line {first}"),
                },
                message: if last > first {
                    format!("{message} (lines {first} to {last})")
                } else {
                    message
                },
            });
            // A whole table (a missing field), a line already set aside, or too many: stop.
            if last != first || !set_aside.insert(first) || problems.len() >= MAX_PARSE_ERRORS {
                break;
            }
            text = text
                .split('\n')
                .enumerate()
                .map(|(i, l)| if i + 1 == first { "" } else { l })
                .collect::<Vec<_>>()
                .join("\n");
        }
        (None, problems)
    }

    /// Every relative path of the config taken from `base` (`.` and `..` resolved lexically).
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = lexical_join(base, p);
            }
        };
        let opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                at(p)
            }
        };
        at(&mut self.state_dir);
        opt(&mut self.status.token_file);
        opt(&mut self.daemon.control_socket);
        opt(&mut self.audit.path);
        for s in &mut self.sources {
            at(&mut s.path);
            opt(&mut s.drill.scratch_dir);
            if let Some(c) = &mut s.drill.verify_command {
                if let Some(resolved) = command_from(base, c) {
                    *c = resolved;
                }
            }
        }
        for s in &mut self.stores {
            opt(&mut s.path);
            opt(&mut s.access_key_id_file);
            opt(&mut s.secret_access_key_file);
            opt(&mut s.access_key_file);
            opt(&mut s.service_account_file);
        }
        for k in &mut self.key_providers {
            opt(&mut k.master_key);
            opt(&mut k.keyring);
            opt(&mut k.module);
            opt(&mut k.pin_file);
        }
    }

    pub fn host(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "unknown-host".to_string())
        })
    }

    pub(crate) fn audit_path(&self) -> PathBuf {
        self.audit
            .path
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit").join("access.log"))
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// "`emr`, `base`": the configured sources, for an error about one that is not.
    pub(crate) fn source_names(&self) -> String {
        names_list(self.sources.iter().map(|s| s.name.as_str()))
    }

    /// "`site-a`, `site-b`": the configured stores, for an error about one that is not.
    pub(crate) fn store_names(&self) -> String {
        names_list(self.stores.iter().map(|s| s.name.as_str()))
    }

    /// Every problem in the config, each with its key path. Empty when the config is usable.
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut push = |key: String, message: String| p.push(Problem { key, message });
        self.validate_pipeline(&mut push);
        validate_durations(self, &mut push);
        self.validate_sources(&mut push);
        self.validate_stores(&mut push);
        self.validate_sites(&mut push);
        self.validate_providers(&mut push);
        self.validate_status(&mut push);
        if let Err(e) = check_host_id(&self.host()) {
            push(
                "host".into(),
                format!("{e}; set `host = \"...\"` at the top of the config (the host's id in every store it shares)"),
            );
        }
        p
    }

    fn validate_pipeline(&self, push: &mut impl FnMut(String, String)) {
        let pl = &self.pipeline;
        if !(1..=19).contains(&pl.zstd_level) {
            push(
                "pipeline.zstd-level".into(),
                format!(
                    "{} is out of range: use 1 to 19 (3 is a good default)",
                    pl.zstd_level
                ),
            );
        }
        let seg = pl.segment_size.as_u64();
        if !seg.is_power_of_two() || !(64 * 1024..=16 * 1024 * 1024).contains(&seg) {
            push(
                "pipeline.segment-size".into(),
                format!("{seg} bytes is not a power of two from 64 KiB to 16 MiB (e.g. \"1MiB\")"),
            );
        }
        if pl.part_size.as_u64() < 5 * 1024 * 1024 || pl.part_size.as_u64() > 512 * 1024 * 1024 {
            push(
                "pipeline.part-size".into(),
                "must be from 5 MiB (the S3 minimum part) to 512 MiB".into(),
            );
        }
        if !(1..=64).contains(&pl.upload_concurrency) {
            push(
                "pipeline.upload-concurrency".into(),
                "must be from 1 to 64".into(),
            );
        }
        if pl.zstd_threads > 256 {
            push(
                "pipeline.zstd-threads".into(),
                "must be at most 256 (0 = one per core)".into(),
            );
        }
    }

    fn validate_sources(&self, push: &mut impl FnMut(String, String)) {
        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = format!("source[{i}]");
            if !is_valid_name(&s.name) {
                push(
                    format!("{key}.name"),
                    format!(
                        "`{}` is not a valid name: use letters, digits, `-`, `_`, `.`",
                        s.name
                    ),
                );
            }
            if !names.insert(s.name.clone()) {
                push(
                    format!("{key}.name"),
                    format!("source `{}` is defined twice", s.name),
                );
            }
            validate_retention_bounds(&s.retention, &key, push);
            if let Some(p) = &s.pitr {
                validate_pitr(p, &key, push);
            }
        }
    }

    fn validate_stores(&self, push: &mut impl FnMut(String, String)) {
        let mut store_names = BTreeSet::new();
        for (i, s) in self.stores.iter().enumerate() {
            let key = format!("store[{i}]");
            if !is_valid_name(&s.name) {
                push(
                    format!("{key}.name"),
                    format!(
                        "`{}` is not a valid name: use letters, digits, `-`, `_`, `.`",
                        s.name
                    ),
                );
            }
            if !store_names.insert(s.name.clone()) {
                push(
                    format!("{key}.name"),
                    format!("store `{}` is defined twice", s.name),
                );
            }
            if s.prefix.is_empty()
                || s.prefix.starts_with('/')
                || s.prefix.ends_with('/')
                || s.prefix
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                push(
                    format!("{key}.prefix"),
                    "must be a relative path such as `coffre` or `clinics/coffre`".into(),
                );
            }
            if !s.tls_verify {
                push(
                    format!("{key}.tls-verify"),
                    "coffre never talks to a store without verifying its TLS certificate: remove tls-verify = false and install the store's CA certificate instead".into(),
                );
            }
            self.validate_jurisdiction(s, &key, push);
            validate_store_kind(s, &key, push);
            self.validate_store_folder(s, &key, push);
        }
        if self.stores.is_empty() {
            push(
                "store".into(),
                "no store is configured: add at least two [[store]] tables in distinct sites"
                    .into(),
            );
        }
    }

    fn validate_jurisdiction(
        &self,
        s: &StoreConfig,
        key: &str,
        push: &mut impl FnMut(String, String),
    ) {
        if !self
            .replication
            .allowed_jurisdictions
            .iter()
            .any(|j| j == &s.jurisdiction)
            && s.privacy_impact_assessment
                .as_deref()
                .unwrap_or("")
                .trim()
                .is_empty()
        {
            push(
                format!("{key}.jurisdiction"),
                format!(
                    "`{}` is outside replication.allowed-jurisdictions ({}): personal information may leave it only under a privacy impact assessment; name it in privacy-impact-assessment or choose a store in an allowed jurisdiction",
                    s.jurisdiction,
                    self.replication.allowed_jurisdictions.join(", ")
                ),
            );
        }
    }

    /// The state folder (keyrings, catalog, journal) and the access log must not travel with
    /// the data, nor a store live among them.
    fn validate_store_folder(
        &self,
        s: &StoreConfig,
        key: &str,
        push: &mut impl FnMut(String, String),
    ) {
        let (StoreKind::Local, Some(sp)) = (s.kind, &s.path) else {
            return;
        };
        let audit = self.audit_path();
        for (what, p) in [("state-dir", &self.state_dir), ("audit.path", &audit)] {
            if path_within(p, sp) {
                push(
                    format!("{key}.path"),
                    format!("{} contains {what} ({}): keys and the access log must never be stored with the data; use separate folders", sp.display(), p.display()),
                );
            } else if path_within(sp, p) {
                push(
                    format!("{key}.path"),
                    format!(
                        "{} is inside {what} ({}): use a folder outside it",
                        sp.display(),
                        p.display()
                    ),
                );
            }
        }
    }

    fn validate_sites(&self, push: &mut impl FnMut(String, String)) {
        let sites: BTreeSet<&str> = self.stores.iter().map(|s| s.site.as_str()).collect();
        if self.replication.min_sites == 0 {
            push(
                "replication.min-sites".into(),
                "must be at least 1 (2 or more for disaster recovery)".into(),
            );
        }
        if sites.len() < self.replication.min_sites {
            push(
                "replication.min-sites".into(),
                format!(
                    "{} distinct site(s) configured ({}) but min-sites is {}: add stores in other sites",
                    sites.len(),
                    sites.iter().copied().collect::<Vec<_>>().join(", "),
                    self.replication.min_sites
                ),
            );
        }
    }

    fn validate_providers(&self, push: &mut impl FnMut(String, String)) {
        let mut provider_names = BTreeSet::new();
        for (i, k) in self.key_providers.iter().enumerate() {
            let key = format!("key-provider[{i}]");
            if !is_valid_name(&k.name) {
                push(
                    format!("{key}.name"),
                    format!("`{}` is not a valid name", k.name),
                );
            }
            if !provider_names.insert(k.name.clone()) {
                push(
                    format!("{key}.name"),
                    format!("key provider `{}` is defined twice", k.name),
                );
            }
            match k.kind {
                ProviderKind::File => self.validate_file_provider(k, &key, push),
                ProviderKind::Pkcs11 => validate_pkcs11_provider(k, &key, push),
            }
        }
        if self.key_providers.is_empty() {
            push(
                "key-provider".into(),
                "no key provider is configured: add a [[key-provider]] (kind = \"file\" or \"pkcs11\")".into(),
            );
        }
    }

    fn validate_file_provider(
        &self,
        k: &KeyProviderConfig,
        key: &str,
        push: &mut impl FnMut(String, String),
    ) {
        match (&k.master_key, &k.master_key_credential) {
            (None, None) | (Some(_), Some(_)) => push(
                format!("{key}.master-key"),
                "a file provider needs exactly one of master-key (a path) or master-key-credential (a systemd credential name)".into(),
            ),
            _ => {}
        }
        if let Some(mk) = &k.master_key {
            if let Some(problem) = present_secret_file_problem(mk) {
                push(format!("{key}.master-key"), problem);
            }
        }
        for (what, f) in [
            ("module", k.module.is_some()),
            ("token-label", k.token_label.is_some()),
            ("pin-file", k.pin_file.is_some()),
        ] {
            if f {
                push(
                    format!("{key}.{what}"),
                    "belongs to pkcs11 providers, not file".into(),
                );
            }
        }
        // A key inside a data store would travel with the data it protects.
        let keyring = self.keyring_path(k);
        for (j, s) in self.stores.iter().enumerate() {
            let (StoreKind::Local, Some(sp)) = (s.kind, &s.path) else {
                continue;
            };
            for (what, kp) in [
                ("master-key", k.master_key.as_ref()),
                ("keyring", Some(&keyring)),
            ] {
                if let Some(kp) = kp.filter(|kp| path_within(kp, sp)) {
                    push(
                        format!("{key}.{what}"),
                        format!("{} is inside store[{j}] ({}): keys must never be stored with the data they protect; move it out of the store", kp.display(), sp.display()),
                    );
                }
            }
        }
    }

    fn validate_status(&self, push: &mut impl FnMut(String, String)) {
        if !self.status.listen.ip().is_loopback() && self.status.token_file.is_none() {
            push(
                "status.token-file".into(),
                format!("status.listen {} is not a loopback address: set token-file so that only holders of the bearer token can read the status", self.status.listen),
            );
        }
        if let Some(tf) = &self.status.token_file {
            if let Some(problem) = present_secret_file_problem(tf) {
                push("status.token-file".into(), problem);
            }
        }
    }
    /// The sealed keyring of a file provider.
    pub(crate) fn keyring_path(&self, k: &KeyProviderConfig) -> PathBuf {
        k.keyring.clone().unwrap_or_else(|| {
            self.state_dir
                .join("keys")
                .join(format!("{}.keyring", k.name))
        })
    }

    /// Distinct sites of the configured stores, with the stores in each.
    pub fn sites(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &self.stores {
            m.entry(s.site.clone()).or_default().push(s.name.clone());
        }
        m
    }
}

// A table: one arm per store kind, the fields each kind needs and the ones it refuses.
#[allow(clippy::too_many_lines)]
fn validate_store_kind(s: &StoreConfig, key: &str, push: &mut impl FnMut(String, String)) {
    let has = |f: bool, name: &str, push: &mut dyn FnMut(String, String)| {
        if f {
            push(
                format!("{key}.{name}"),
                format!("does not apply to a {:?} store: remove it", s.kind).to_lowercase(),
            );
        }
    };
    let s3_fields = [
        ("region", s.region.is_some()),
        ("access-key-id-env", s.access_key_id_env.is_some()),
        ("access-key-id-file", s.access_key_id_file.is_some()),
        ("secret-access-key-env", s.secret_access_key_env.is_some()),
        ("secret-access-key-file", s.secret_access_key_file.is_some()),
        ("virtual-hosted-style", s.virtual_hosted_style),
    ];
    let azure_fields = [
        ("account", s.account.is_some()),
        ("container", s.container.is_some()),
        ("access-key-env", s.access_key_env.is_some()),
        ("access-key-file", s.access_key_file.is_some()),
    ];
    match s.kind {
        StoreKind::Local => {
            if s.path.is_none() {
                push(
                    format!("{key}.path"),
                    "a local store needs path (its folder)".into(),
                );
            }
            has(s.bucket.is_some(), "bucket", push);
            has(s.endpoint.is_some(), "endpoint", push);
            has(
                s.service_account_file.is_some(),
                "service-account-file",
                push,
            );
            for (n, f) in s3_fields.iter().chain(azure_fields.iter()) {
                has(*f, n, push);
            }
        }
        StoreKind::S3 => {
            if s.bucket.is_none() {
                push(format!("{key}.bucket"), "an s3 store needs bucket".into());
            }
            has(s.path.is_some(), "path", push);
            has(
                s.service_account_file.is_some(),
                "service-account-file",
                push,
            );
            for (n, f) in azure_fields.iter() {
                has(*f, n, push);
            }
            for (n, f) in [
                ("secret-access-key-file", &s.secret_access_key_file),
                ("access-key-id-file", &s.access_key_id_file),
            ] {
                if let Some(problem) = f.as_deref().and_then(present_secret_file_problem) {
                    push(format!("{key}.{n}"), problem);
                }
            }
        }
        StoreKind::Azure => {
            if s.account.is_none() {
                push(
                    format!("{key}.account"),
                    "an azure store needs account".into(),
                );
            }
            if s.container.is_none() {
                push(
                    format!("{key}.container"),
                    "an azure store needs container".into(),
                );
            }
            has(s.path.is_some(), "path", push);
            has(s.bucket.is_some(), "bucket", push);
            has(
                s.service_account_file.is_some(),
                "service-account-file",
                push,
            );
            for (n, f) in s3_fields.iter() {
                has(*f, n, push);
            }
            if let Some(problem) = s
                .access_key_file
                .as_deref()
                .and_then(present_secret_file_problem)
            {
                push(format!("{key}.access-key-file"), problem);
            }
        }
        StoreKind::Gcs => {
            if s.bucket.is_none() {
                push(format!("{key}.bucket"), "a gcs store needs bucket".into());
            }
            has(s.path.is_some(), "path", push);
            for (n, f) in s3_fields.iter().chain(azure_fields.iter()) {
                has(*f, n, push);
            }
            if let Some(problem) = s
                .service_account_file
                .as_deref()
                .and_then(present_secret_file_problem)
            {
                push(format!("{key}.service-account-file"), problem);
            }
        }
    }
    validate_endpoint(s, key, push);
}

/// An endpoint is a URL over TLS (plain http only on a loopback test store).
fn validate_endpoint(s: &StoreConfig, key: &str, push: &mut impl FnMut(String, String)) {
    if let Some(ep) = &s.endpoint {
        match url::Url::parse(ep) {
            Err(e) => push(format!("{key}.endpoint"), format!("`{ep}` is not a URL: {e}")),
            Ok(u) => match u.scheme() {
                "https" => {}
                "http" if is_loopback_host(&u) => {}
                "http" => push(
                    format!("{key}.endpoint"),
                    format!("`{ep}` is plaintext http: health data travels only over TLS; use https (plain http is accepted only on a loopback test store)"),
                ),
                other => push(
                    format!("{key}.endpoint"),
                    format!("scheme `{other}` is not supported: use https"),
                ),
            },
        }
    }
}

/// What is wrong with a host id ([`check_host_id`]); the id is shown escaped and cut.
#[derive(Debug, thiserror::Error)]
pub enum HostIdError {
    #[error("host id \"{0}\" must be 1 to 63 characters long")]
    Length(String),
    #[error("host id \"{0}\" must not start with `.` or `-`")]
    Start(String),
    #[error("host id \"{0}\" has the character {1:?}: use letters, digits, `.`, `_` and `-` only")]
    Character(String, char),
}

/// A host id names a folder in every store the host shares (`<prefix>/hosts/<id>`) and is
/// written in manifests and the access log: 1 to 63 letters, digits, `.`, `_` or `-`, not
/// starting with `.` or `-`.
pub(crate) fn check_host_id(id: &str) -> Result<(), HostIdError> {
    let shown = || {
        id.chars()
            .take(64)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    if id.is_empty() || id.len() > 63 {
        return Err(HostIdError::Length(shown()));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(HostIdError::Start(shown()));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(HostIdError::Character(shown(), c)),
        None => Ok(()),
    }
}

pub(crate) fn is_loopback_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// What is wrong with a file that holds a secret, if anything: it must exist, be a regular file
/// (after following symlinks, as systemd credentials may be), belong to the user coffre runs as
/// (or root: a root-owned 0400 file is readable by root only) and be neither readable nor
/// writable by group or others.
pub(crate) fn secret_file_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{} does not exist: put the secret there (owned by the user coffre runs as, mode 0600) or fix the path in the config",
                path.display()
            ))
        }
        Err(e) => {
            return Some(format!(
                "cannot check {}: {e}. It must be readable by the user coffre runs as",
                path.display()
            ))
        }
    };
    if !meta.is_file() {
        return Some(format!(
            "{} is not a regular file: it must be a file holding the secret",
            path.display()
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "{} belongs to uid {}, not to the user coffre runs as (uid {me}) or root: another account could replace the secret; run `chown {me} {}`",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        Some(format!(
            "{} is readable or writable by group or others (mode {:o}): it holds a secret; run `chmod 600 {}`",
            path.display(),
            mode,
            path.display()
        ))
    } else {
        None
    }
}

/// [`secret_file_problem`] for a file that may not exist yet when the config is checked (it may be
/// checked on another host, and a systemd credential exists only while the service runs): the
/// reader of the secret reports a missing file.
pub(crate) fn present_secret_file_problem(path: &Path) -> Option<String> {
    if std::fs::symlink_metadata(path).is_err() {
        return None;
    }
    secret_file_problem(path)
}

/// Why a secret file (token, credential) was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// What [`secret_file_problem`] found (missing, wrong owner or mode, ...), with what to do.
    #[error("{0}")]
    Unsafe(String),
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Read a secret file after [`secret_file_problem`] found nothing wrong with it; trimmed.
pub(crate) fn read_secret_file(path: &Path) -> Result<secrecy::SecretString, SecretFileError> {
    if let Some(problem) = secret_file_problem(path) {
        return Err(SecretFileError::Unsafe(problem));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        SecretFileError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?);
    Ok(secrecy::SecretString::from(text.trim().to_string()))
}

/// At most this many syntax and type errors are reported from one file.
pub const MAX_PARSE_ERRORS: usize = 50;

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The key path (`store[1].endpoint`) of the `key = value` on 1-based `line`, from the table
/// headers above it; none when the line is no such pair.
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut key = None;
    for (i, l) in text.split('\n').enumerate().take(line) {
        let t = l.trim();
        if let Some(h) = t.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            let n = counts.entry(h.trim().to_string()).or_insert(0);
            table = format!("{}[{}]", h.trim(), *n);
            *n += 1;
        } else if let Some(h) = t.strip_prefix('[').and_then(|h| h.split(']').next()) {
            // A sub-table of the last array element (`[source.retention]`).
            let h = h.trim();
            table = match counts.keys().find(|a| h.starts_with(&format!("{a}."))) {
                Some(a) => format!("{a}[{}]{}", counts[a] - 1, &h[a.len()..]),
                None => h.to_string(),
            };
        } else if i + 1 == line {
            let k = t.split('=').next().filter(|_| t.contains('='))?.trim();
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return None;
            }
            key = Some(k.to_string());
        }
    }
    let key = key?;
    Some(if table.is_empty() {
        key
    } else {
        format!("{table}.{key}")
    })
}

/// Upper bound of every retention period: 100 years (the time arithmetic on them stays far
/// from the end of the calendar).
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 366 * 86_400);

fn validate_retention_bounds(
    r: &RetentionConfig,
    key: &str,
    push: &mut impl FnMut(String, String),
) {
    for (name, n, max) in [
        ("keep-hourly", r.keep_hourly, 100 * 366 * 24),
        ("keep-daily", r.keep_daily, 100 * 366),
        ("keep-weekly", r.keep_weekly, 100 * 53),
        ("keep-monthly", r.keep_monthly, 100 * 12),
        ("keep-yearly", r.keep_yearly, 100),
    ] {
        if n > max {
            push(
                format!("{key}.retention.{name}"),
                format!("{n} is more than 100 years of periods: use at most {max}"),
            );
        }
    }
}

fn validate_pkcs11_provider(
    k: &KeyProviderConfig,
    key: &str,
    push: &mut impl FnMut(String, String),
) {
    if k.module.is_none() {
        push(
            format!("{key}.module"),
            "a pkcs11 provider needs module (path of the PKCS#11 library)".into(),
        );
    }
    if k.token_label.is_none() {
        push(
            format!("{key}.token-label"),
            "a pkcs11 provider needs token-label".into(),
        );
    }
    match &k.pin_file {
        None => push(
            format!("{key}.pin-file"),
            "a pkcs11 provider needs pin-file (a file holding the user PIN)".into(),
        ),
        Some(pf) => {
            if let Some(problem) = present_secret_file_problem(pf) {
                push(format!("{key}.pin-file"), problem);
            }
        }
    }
    for (what, f) in [
        ("master-key", k.master_key.is_some()),
        ("master-key-credential", k.master_key_credential.is_some()),
        ("keyring", k.keyring.is_some()),
    ] {
        if f {
            push(
                format!("{key}.{what}"),
                "belongs to file providers, not pkcs11".into(),
            );
        }
    }
}

fn validate_pitr(p: &PitrConfig, key: &str, push: &mut impl FnMut(String, String)) {
    if !(1..=19).contains(&p.zstd_level) {
        push(
            format!("{key}.pitr.zstd-level"),
            format!(
                "{} is out of range: use 1 to 19 (1, the default, is the fastest; 3 stores WAL about 2 % smaller for twice the CPU)",
                p.zstd_level
            ),
        );
    }
    if !(1..=16).contains(&p.archive_parallel) {
        push(
            format!("{key}.pitr.archive-parallel"),
            format!(
                "{} is out of range: use 1 to 16 spooled WAL files archived at once (4 is a good default)",
                p.archive_parallel
            ),
        );
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// The bounds of one duration key: the least and most it may be (each with how a person says
/// it), and what the key is for. Every humantime duration of the config has one, so that no
/// value that passes `validate` can overflow the time arithmetic done with it.
struct DurationBound {
    key: String,
    value: Option<Duration>,
    least: Edge,
    most: Edge,
    what: &'static str,
}

fn bound(
    key: impl Into<String>,
    value: impl Into<Option<Duration>>,
    least: Edge,
    most: Edge,
    what: &'static str,
) -> DurationBound {
    DurationBound {
        key: key.into(),
        value: value.into(),
        least,
        most,
        what,
    }
}

type Edge = (Duration, &'static str);
const NONE: Edge = (Duration::ZERO, "0s");
const MS1: Edge = (Duration::from_millis(1), "1ms");
const MS100: Edge = (Duration::from_millis(100), "100ms");
const ONE_SECOND: Edge = (SECOND, "1 second");
const ONE_MINUTE: Edge = (MINUTE, "1 minute");
const ONE_HOUR: Edge = (HOUR, "1 hour");
const ONE_DAY: Edge = (DAY, "1 day");
const CENTURY: Edge = (MAX_RETENTION, "100 years");

/// The daemon's, the stores' and the access log's durations with their bounds.
fn global_bounds(c: &Config) -> Vec<DurationBound> {
    let (r, d) = (&c.replication, &c.daemon);
    vec![
        bound(
            "replication.backoff",
            r.backoff,
            MS1,
            ONE_HOUR,
            "the first pause between attempts at a store",
        ),
        bound(
            "replication.stall-timeout",
            r.stall_timeout,
            ONE_SECOND,
            ONE_DAY,
            "how long a silent store is waited for",
        ),
        bound(
            "daemon.scan-interval",
            d.scan_interval,
            MS100,
            ONE_DAY,
            "how often the source folders are scanned",
        ),
        bound(
            "daemon.catch-up-interval",
            d.catch_up_interval,
            MS100,
            ONE_DAY,
            "how often lagging stores are caught up",
        ),
        bound(
            "daemon.scrub-every",
            d.scrub_every,
            MS100,
            (90 * DAY, "90 days"),
            "how often every copy is re-read",
        ),
        bound(
            "daemon.drain-timeout",
            d.drain_timeout,
            NONE,
            ONE_HOUR,
            "how long work in flight may take after SIGTERM",
        ),
        bound(
            "audit.retention",
            c.audit.retention,
            ONE_DAY,
            CENTURY,
            "the access log is destroyed when its retention ends; default 7 years",
        ),
        bound(
            "shred.every",
            c.shred.every,
            ONE_SECOND,
            ONE_DAY,
            "how often due epochs are looked for",
        ),
        bound(
            "shred.max-clock-jump",
            c.shred.max_clock_jump,
            ONE_HOUR,
            CENTURY,
            "a forward clock jump past it stops shredding",
        ),
    ]
}

/// One source's durations with their bounds.
fn source_bounds(i: usize, s: &SourceConfig) -> Vec<DurationBound> {
    let key = |k: &str| format!("source[{i}].{k}");
    let (r, d) = (&s.retention, &s.drill);
    let mut b = vec![
        bound(
            key("settle-time"),
            s.settle_time,
            ONE_SECOND,
            ONE_DAY,
            "how long a snapshot must stay unchanged",
        ),
        bound(
            key("retention.keep-within"),
            r.keep_within,
            ONE_HOUR,
            CENTURY,
            "every snapshot is kept at least this long",
        ),
        bound(
            key("retention.min-age"),
            r.min_age,
            NONE,
            CENTURY,
            "no snapshot younger than this is shredded",
        ),
        bound(
            key("drill.every"),
            d.every,
            ONE_MINUTE,
            (366 * DAY, "1 year"),
            "how often the daemon drills this source",
        ),
        bound(
            key("drill.timeout"),
            d.timeout,
            ONE_SECOND,
            (7 * DAY, "7 days"),
            "the limit of one drill",
        ),
    ];
    if let Some(p) = &s.pitr {
        let what = "how far back any moment can be recovered";
        b.push(bound(key("pitr.window"), p.window, ONE_HOUR, CENTURY, what));
    }
    b
}

/// Every duration out of its bounds, with its key path and what to use instead.
fn validate_durations(c: &Config, push: &mut impl FnMut(String, String)) {
    let sources = c.sources.iter().enumerate();
    let all = global_bounds(c)
        .into_iter()
        .chain(sources.flat_map(|(i, s)| source_bounds(i, s)));
    for b in all {
        let Some(v) = b.value else { continue };
        let (limit, said) = if v < b.least.0 {
            ("less", b.least.1)
        } else if v > b.most.0 {
            ("more", b.most.1)
        } else {
            continue;
        };
        push(
            b.key,
            format!(
                "{} is {limit} than {said}: use {} to {} ({})",
                humantime::format_duration(v),
                b.least.1,
                b.most.1,
                b.what
            ),
        );
    }
}

/// Names as a list for an error ("none" when empty).
fn names_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// What to do when the config file cannot be read, by why.
fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => "Pass --config FILE or set COFFRE_CONFIG",
        std::io::ErrorKind::PermissionDenied => "The file is there but this account may not read it (the package installs it root:coffre 0640): run the command as root (sudo); the commands the daemon runs (restore, drill, shred, hold, audit) reach it through its control socket without the file, for members of the operators' group",
        _ => "Check the file and the disk it is on",
    }
}

/// The folder a config file is in (`.` for a bare file name).
pub fn config_folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A shell command whose first word is a relative path (`scripts/check.sh`, `./check.sh`) with
/// that word taken from `base` and shell-quoted, as every relative path of the config is: a
/// drill runs from the daemon's working folder (`/` under systemd), never the config's. `None`
/// when there is nothing to resolve: a bare name (looked up in PATH), an absolute path, or a
/// first word with quotes, escapes, variables or placeholders, which is left as written.
fn command_from(base: &Path, cmd: &str) -> Option<String> {
    let lead = cmd.len() - cmd.trim_start().len();
    let rest = &cmd[lead..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let first = &rest[..end];
    let plain = !first.contains([
        '\'', '"', '\\', '$', '`', '{', '}', '~', ';', '&', '|', '<', '>', '(', ')', '*', '?',
    ]);
    if !plain || !first.contains('/') || first.starts_with('/') {
        return None;
    }
    let abs = lexical_join(base, Path::new(first));
    let quoted = format!("'{}'", abs.to_string_lossy().replace('\'', "'\\''"));
    Some(format!("{quoted}{}", &rest[end..]))
}

/// `base` joined with relative `p`, `.` dropped and `..` taking off the component before it (a
/// leading `..` of a relative base is kept).
fn lexical_join(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let joined = base.join(p);
    let mut out: Vec<Component> = Vec::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

/// `p` made absolute against the working directory, with `.` and `..` resolved lexically.
fn lexical_absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `p` with its longest existing ancestor canonicalized (symlinks resolved) and the rest, which
/// does not exist yet, appended.
fn resolved(p: &Path) -> PathBuf {
    let abs = lexical_absolute(p);
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// True when `inner` lies within `outer` (or is it), compared both as written (made absolute,
/// `.` and `..` resolved) and with symlinks resolved for the parts that exist: a symlinked
/// folder does not hide that two paths are the same place.
pub(crate) fn path_within(inner: &Path, outer: &Path) -> bool {
    lexical_absolute(inner).starts_with(lexical_absolute(outer))
        || resolved(inner).starts_with(resolved(outer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 28 item 18: a drill's verify command by a relative path is the config folder's,
    /// like every relative path of the config; anything else is left as written.
    #[test]
    fn a_verify_commands_relative_path_is_taken_from_the_config_folder() {
        let base = Path::new("/etc/coffre");
        assert_eq!(
            command_from(base, "scripts/check.sh {file} {port}").as_deref(),
            Some("'/etc/coffre/scripts/check.sh' {file} {port}")
        );
        assert_eq!(
            command_from(base, "  ./check.sh x").as_deref(),
            Some("'/etc/coffre/check.sh' x")
        );
        assert_eq!(
            command_from(base, "../lib/check").as_deref(),
            Some("'/etc/lib/check'")
        );
        for kept in [
            "pg_isready -p {port}",
            "/usr/local/bin/check {dir}",
            "{dir}/bin/check",
            "\"scripts/x y.sh\" {file}",
            "$HOME/check.sh",
            "./it's.sh",
            "",
        ] {
            assert_eq!(command_from(base, kept), None, "{kept}");
        }
    }

    const GOOD: &str = r#"
state-dir = "/tmp/coffre-test-state"
[[source]]
name = "emr"
path = "/tmp/in"
[[store]]
name = "a"
kind = "local"
site = "mtl"
jurisdiction = "CA-QC"
path = "/tmp/a"
[[store]]
name = "b"
kind = "s3"
site = "qc"
jurisdiction = "CA-QC"
bucket = "x"
endpoint = "http://127.0.0.1:9000"
[[key-provider]]
name = "local"
kind = "file"
master-key = "/tmp/coffre-nonexistent/master.key"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml(text, Path::new("t.toml")) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn good_config_validates() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(c.stores.len(), 2);
        assert_eq!(c.pipeline.segment_log2(), 20);
        assert_eq!(c.replication.min_sites, 2);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_location() {
        let e = Config::from_toml(
            &GOOD.replace("[[source]]", "colour = 1\n[[source]]"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = Config::from_toml(
            &GOOD.replace("name = \"emr\"", "name = 5"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn audit_retention_out_of_range_is_refused() {
        for bad in ["1s", "12h", "200years"] {
            let ps = problems(&GOOD.replace(
                "[[source]]",
                &format!("[audit]\nretention = \"{bad}\"\n[[source]]"),
            ));
            assert!(
                ps.iter()
                    .any(|p| p.key == "audit.retention" && p.message.contains("1 day to 100 years")),
                "{bad}: {ps:?}"
            );
        }
        let ps = problems(&GOOD.replace("[[source]]", "[audit]\nretention = \"30d\"\n[[source]]"));
        assert!(ps.iter().all(|p| p.key != "audit.retention"), "{ps:?}");
    }

    #[test]
    fn wal_zstd_level_defaults_to_1_and_out_of_range_is_refused() {
        let with = |extra: &str| {
            GOOD.replace(
                "[[store]]\nname = \"a\"",
                &format!("[source.pitr]\n{extra}[[store]]\nname = \"a\""),
            )
        };
        for bad in ["0", "20", "-1"] {
            let ps = problems(&with(&format!("zstd-level = {bad}\n")));
            assert!(
                ps.iter()
                    .any(|p| p.key == "source[0].pitr.zstd-level"
                        && p.message.contains("use 1 to 19")),
                "{bad}: {ps:?}"
            );
        }
        let c = Config::from_toml(&with("zstd-level = 3\n"), Path::new("t.toml")).unwrap();
        assert_eq!(c.sources[0].pitr.as_ref().map(|p| p.zstd_level), Some(3));
        let c = Config::from_toml(&with(""), Path::new("t.toml")).unwrap();
        assert_eq!(c.sources[0].pitr.as_ref().map(|p| p.zstd_level), Some(1));
    }

    #[test]
    fn archive_parallel_out_of_range_is_refused() {
        let with = |n: &str| {
            GOOD.replace(
                "[[store]]\nname = \"a\"",
                &format!("[source.pitr]\narchive-async = true\narchive-parallel = {n}\n[[store]]\nname = \"a\""),
            )
        };
        for bad in ["0", "17"] {
            let ps = problems(&with(bad));
            assert!(
                ps.iter().any(|p| p.key == "source[0].pitr.archive-parallel"
                    && p.message.contains("use 1 to 16")),
                "{bad}: {ps:?}"
            );
        }
        let c = Config::from_toml(&with("8"), Path::new("t.toml")).unwrap();
        assert_eq!(
            c.sources[0].pitr.as_ref().map(|p| p.archive_parallel),
            Some(8)
        );
        let c = Config::from_toml(
            &GOOD.replace(
                "[[store]]\nname = \"a\"",
                "[source.pitr]\n[[store]]\nname = \"a\"",
            ),
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            c.sources[0].pitr.as_ref().map(|p| p.archive_parallel),
            Some(4)
        );
    }

    #[test]
    fn plaintext_http_store_is_refused_unless_loopback() {
        let ps = problems(&GOOD.replace("http://127.0.0.1:9000", "http://s3.example.com"));
        assert!(
            ps.iter()
                .any(|p| p.key == "store[1].endpoint" && p.message.contains("plaintext http")),
            "{ps:?}"
        );
    }

    #[test]
    fn one_site_only_is_refused() {
        let ps = problems(&GOOD.replace("site = \"qc\"", "site = \"mtl\""));
        assert!(
            ps.iter().any(|p| p.key == "replication.min-sites"),
            "{ps:?}"
        );
    }

    #[test]
    fn jurisdiction_outside_allow_list_needs_a_pia() {
        let text = GOOD.replace(
            "jurisdiction = \"CA-QC\"\nbucket",
            "jurisdiction = \"US-VA\"\nbucket",
        );
        let ps = problems(&text);
        assert!(
            ps.iter().any(|p| p.key == "store[1].jurisdiction"),
            "{ps:?}"
        );
        let text = text.replace(
            "bucket = \"x\"",
            "bucket = \"x\"\nprivacy-impact-assessment = \"PIA-2026-014\"",
        );
        assert!(problems(&text).is_empty());
    }

    #[test]
    fn tls_verification_off_is_refused() {
        let ps = problems(&GOOD.replace("bucket = \"x\"", "bucket = \"x\"\ntls-verify = false"));
        assert!(ps.iter().any(|p| p.key == "store[1].tls-verify"), "{ps:?}");
    }

    #[test]
    fn key_inside_a_store_is_refused() {
        let ps = problems(&GOOD.replace("/tmp/coffre-nonexistent/master.key", "/tmp/a/master.key"));
        assert!(
            ps.iter()
                .any(|p| p.key == "key-provider[0].master-key"
                    && p.message.contains("inside store[0]")),
            "{ps:?}"
        );
    }

    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, "00").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ps =
            problems(&GOOD.replace("/tmp/coffre-nonexistent/master.key", key.to_str().unwrap()));
        assert!(ps.iter().any(|p| p.message.contains("chmod 600")), "{ps:?}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(problems(
            &GOOD.replace("/tmp/coffre-nonexistent/master.key", key.to_str().unwrap())
        )
        .is_empty());
    }

    /// Issue 11, point 9: a symlinked folder does not hide that a key is inside a store, and the
    /// state folder and the access log are checked too.
    #[test]
    fn inside_a_store_sees_through_symlinks_and_covers_state_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&store, &alias).unwrap();
        let with = |text: &str| {
            GOOD.replace("/tmp/a\"", &format!("{}\"", store.display()))
                .replace("/tmp/coffre-nonexistent/master.key", text)
        };
        let key = format!("{}/keys/master.key", alias.display());
        let ps = problems(&with(&key));
        assert!(
            ps.iter()
                .any(|p| p.key == "key-provider[0].master-key"
                    && p.message.contains("inside store[0]")),
            "{ps:?}"
        );
        // The state folder inside the store (through the symlink), and the store inside it.
        let text = with("/tmp/coffre-nonexistent/master.key").replace(
            "/tmp/coffre-test-state",
            &format!("{}/state", alias.display()),
        );
        let ps = problems(&text);
        assert!(
            ps.iter()
                .any(|p| p.key == "store[0].path" && p.message.contains("state-dir")),
            "{ps:?}"
        );
        let text = with("/tmp/coffre-nonexistent/master.key")
            .replace("/tmp/coffre-test-state", &dir.path().display().to_string());
        let ps = problems(&text);
        assert!(
            ps.iter()
                .any(|p| p.key == "store[0].path" && p.message.contains("inside state-dir")),
            "{ps:?}"
        );
        // The access log inside the store.
        let text = format!(
            "{}\n[audit]\npath = \"{}/log/access.log\"\n",
            with("/tmp/coffre-nonexistent/master.key"),
            alias.display()
        );
        let ps = problems(&text);
        assert!(
            ps.iter()
                .any(|p| p.key == "store[0].path" && p.message.contains("audit.path")),
            "{ps:?}"
        );
        assert!(problems(&with("/tmp/coffre-nonexistent/master.key")).is_empty());
    }

    #[test]
    fn retention_periods_are_bounded() {
        let text = GOOD.replace(
            "path = \"/tmp/in\"",
            "path = \"/tmp/in\"\n[source.retention]\nkeep-within = \"200years\"\nkeep-yearly = 4000000000\nkeep-daily = 40000\nmin-age = \"101years\"",
        );
        let ps = problems(&text);
        for k in ["keep-within", "keep-yearly", "keep-daily", "min-age"] {
            assert!(
                ps.iter()
                    .any(|p| p.key == format!("source[0].retention.{k}")
                        && p.message.contains("100 years")),
                "{k}: {ps:?}"
            );
        }
        let text = GOOD.replace(
            "path = \"/tmp/in\"",
            "path = \"/tmp/in\"\n[source.retention]\nkeep-within = \"99years\"\nkeep-yearly = 100",
        );
        assert!(problems(&text).is_empty());
    }

    #[test]
    fn every_duration_is_bounded_so_no_accepted_config_overflows_the_clock() {
        let text = GOOD
            .replace(
                "path = \"/tmp/in\"",
                "path = \"/tmp/in\"\nsettle-time = \"0s\"\n[source.pitr]\nwindow = \"100000000years\"\n[source.drill]\nevery = \"1s\"\ntimeout = \"30d\"",
            )
            .replace(
                "[[source]]",
                "[replication]\nbackoff = \"2h\"\nstall-timeout = \"0s\"\n[daemon]\nscan-interval = \"5d\"\ndrain-timeout = \"1000years\"\n[shred]\nevery = \"0s\"\nmax-clock-jump = \"200years\"\n[[source]]",
            );
        let ps = problems(&text);
        for (key, says) in [
            (
                "source[0].pitr.window",
                "is more than 100 years: use 1 hour to 100 years",
            ),
            ("source[0].settle-time", "is less than 1 second"),
            ("source[0].drill.every", "is less than 1 minute"),
            ("source[0].drill.timeout", "is more than 7 days"),
            ("replication.backoff", "is more than 1 hour"),
            ("replication.stall-timeout", "is less than 1 second"),
            ("daemon.scan-interval", "is more than 1 day"),
            ("daemon.drain-timeout", "is more than 1 hour"),
            ("shred.every", "is less than 1 second"),
            ("shred.max-clock-jump", "is more than 100 years"),
        ] {
            assert!(
                ps.iter().any(|p| p.key == key && p.message.contains(says)),
                "{key}: {ps:?}"
            );
        }
        // At the bounds: accepted.
        let text = GOOD.replace(
            "path = \"/tmp/in\"",
            "path = \"/tmp/in\"\n[source.pitr]\nwindow = \"100years\"",
        );
        assert!(problems(&text).is_empty(), "{:?}", problems(&text));
        // The embedded default and the production example stay inside every bound.
        for (name, text) in [
            ("config/coffre.toml", include_str!("../config/coffre.toml")),
            (
                "config/production.example.toml",
                include_str!("../config/production.example.toml"),
            ),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            let mut out = Vec::new();
            validate_durations(&c, &mut |k, m| out.push(format!("{k}: {m}")));
            assert!(out.is_empty(), "{name}: {out:?}");
        }
    }

    #[test]
    fn secret_files_missing_foreign_or_not_files_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let m = secret_file_problem(&missing).unwrap();
        assert!(m.contains("does not exist"), "{m}");
        // Not an error when the config is checked (the file may live on the target host only).
        assert!(present_secret_file_problem(&missing).is_none());
        // A dangling symlink is named.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&missing, &link).unwrap();
        assert!(present_secret_file_problem(&link)
            .unwrap()
            .contains("does not exist"));
        let m = secret_file_problem(dir.path()).unwrap();
        assert!(m.contains("not a regular file"), "{m}");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secret_file_problem(&ok), None);
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&read_secret_file(&ok).unwrap()),
            "s3cr3t"
        );
        assert!(read_secret_file(&missing)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        // Owned by someone else (when this test runs as root, a file given away to nobody).
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&ok, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let m = secret_file_problem(&ok).unwrap();
            assert!(m.contains("belongs to uid 65534"), "{m}");
        } else {
            // /etc/passwd belongs to root: accepted for ownership, refused for its mode.
            let m = secret_file_problem(Path::new("/etc/passwd")).unwrap();
            assert!(m.contains("chmod 600"), "{m}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("http://127.0.0.1:9000", "http://s3.example.com")
            .replace("name = \"emr\"", "name = \"../emr\"")
            .replace("[[source]]", "[pipeline]\nzstd-level = 40\n[[source]]");
        let ps = problems(&text);
        assert!(ps.len() >= 3, "{ps:?}");
    }

    #[test]
    fn fields_of_another_kind_are_refused() {
        let ps =
            problems(&GOOD.replace("path = \"/tmp/a\"", "path = \"/tmp/a\"\nbucket = \"oops\""));
        assert!(ps.iter().any(|p| p.key == "store[0].bucket"), "{ps:?}");
    }
}
