//! The commands as typed requests: parsed by clap on the command line, carried as one serde
//! value through the control socket (kebab-case, so a request reads like the command line).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::ids::SnapshotId;
use crate::ops::snapshot::restore::Selector;

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Run the daemon: its six workers watch the sources and protect each snapshot (intake),
    /// keep the stores caught up (catch-up), scrub replicas (scrub), run scheduled drills
    /// (drill), archive the spooled WAL (wal-spool) and shred expired epochs (shred); it serves
    /// the status endpoint and the control socket (systemd Type=notify).
    Daemon,
    /// Print the running daemon's status (from its status endpoint).
    Status(StatusArgs),
    /// Protect one snapshot (a file or a directory) now; prints the snapshot id.
    Backup(BackupArgs),
    /// Archive one PostgreSQL WAL file (`archive_command = 'coffre wal-push --source NAME %p'`):
    /// exits 0 only once it is committed in at least replication.min-sites sites.
    WalPush(WalPushArgs),
    /// Restore one archived WAL file (`restore_command = 'coffre wal-fetch --source NAME %f %p'`);
    /// exits 1 when it is not archived (the end of the archive, for PostgreSQL).
    WalFetch(WalFetchArgs),
    /// List snapshots, oldest first, and where each is committed.
    Snapshots(SnapshotsArgs),
    /// The local catalog (a cache of the stores' manifests).
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Restore a snapshot from any surviving store (logged in the access log first).
    Restore(RestoreArgs),
    /// Check every replica (present, header valid, SHA-256 matches) without any key.
    Verify(VerifyArgs),
    /// Key providers and epoch keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The access log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Validate the config file and print every problem: syntax, values, and on this host every
    /// file and credential it names (present, readable by the service user, safe owner and mode)
    /// and every source folder (present, readable).
    CheckConfig(CheckConfigArgs),
    /// Retention: what would be shredded and when.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Crypto-shred one snapshot now (an erasure order), or show destruction records.
    Shred(ShredArgs),
    /// Disaster-recovery drill: restore into a scratch folder, verify, time it, wipe it.
    Drill(DrillArgs),
    /// Legal holds: a held snapshot is never shredded.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
}

// The arguments of `coffre status` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre backup` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct BackupArgs {
    /// Source the snapshot belongs to.
    #[arg(long)]
    pub source: String,
    /// The snapshot: a dump file, or a directory such as a pg_basebackup.
    pub path: PathBuf,
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre wal-push` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct WalPushArgs {
    /// Source whose WAL this is (it needs a `[source.pitr]` table).
    #[arg(long)]
    pub source: String,
    /// The WAL file (`%p`).
    pub path: PathBuf,
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre wal-fetch` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct WalFetchArgs {
    /// Source whose WAL archive to read (the one `wal-push` archived into).
    #[arg(long)]
    pub source: String,
    /// The WAL file name (`%f`).
    pub name: String,
    /// Where to write it (`%p`).
    pub to: PathBuf,
    /// Why, for the access log (accepted for compatibility: the restore_command coffre
    /// writes never carries one; the restore or drill that opened the session logged its
    /// own).
    #[arg(
        long,
        default_value = "point-in-time recovery (PostgreSQL restore_command)"
    )]
    pub purpose: String,
    /// The recovery session this fetch belongs to (written by `coffre restore --target-*`
    /// into restore_command): the access log gets one entry when the session starts and a
    /// summary when it ends, and through the daemon the next segments are fetched ahead.
    #[arg(long, value_name = "ID")]
    #[serde(default)]
    pub session: Option<String>,
    /// Read from this store only, with no fallback to the others (point-in-time drills pin
    /// the store they drill).
    #[arg(long, value_name = "NAME")]
    #[serde(default)]
    pub store: Option<String>,
}

// The arguments of `coffre snapshots` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct SnapshotsArgs {
    /// Only this source's snapshots (one of the config, or one the catalog still holds
    /// snapshots of; another is an error, exit 2).
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre verify` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct VerifyArgs {
    /// Only this snapshot.
    pub snapshot: Option<SnapshotId>,
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre check-config` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct CheckConfigArgs {
    /// Check the config as data only, for another host: skip the files, credentials and
    /// folders it names.
    #[arg(long)]
    pub portable: bool,
    /// The account the service runs as, whose access to the files and folders is checked
    /// (default: the current user; `coffre` under the packaged unit).
    #[arg(long, value_name = "USER", conflicts_with = "portable")]
    pub user: Option<String>,
}

// The arguments of `coffre shred` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct ShredArgs {
    /// The snapshot to shred.
    #[arg(long, required_unless_present = "records")]
    pub snapshot: Option<SnapshotId>,
    /// Why (recorded in the access log and the destruction record).
    #[arg(long, required_unless_present = "records")]
    pub purpose: Option<String>,
    /// Do it (without --yes, only say what would happen).
    #[arg(long)]
    pub yes: bool,
    /// Show the destruction records instead.
    #[arg(long)]
    pub records: bool,
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre drill` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct DrillArgs {
    /// Only this source (default: every source; one that is not configured is an error,
    /// exit 2).
    #[arg(long)]
    pub source: Option<String>,
    /// Only this store (default: every store).
    #[arg(long, conflicts_with = "all_stores")]
    pub store: Option<String>,
    /// Every store (the default).
    #[arg(long)]
    pub all_stores: bool,
    /// This snapshot (default: the source's drill.pick, latest).
    #[arg(long)]
    pub snapshot: Option<SnapshotId>,
    /// Rebuild the catalog from the stores first (a drill as on a new host).
    #[arg(long)]
    pub fresh_catalog: bool,
    /// Why (recorded in the access log).
    #[arg(long, default_value = "disaster-recovery drill")]
    pub purpose: String,
    #[arg(long)]
    pub json: bool,
}

// The arguments of `coffre keys init` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct KeysInitArgs {
    /// Write a new master key to this file (mode 0600, never over an existing file) and
    /// nothing else: no config is read, no state created. For `master-key-credential`:
    /// `--to /etc/coffre/credentials/master.key`.
    #[arg(long, value_name = "FILE")]
    pub to: Option<PathBuf>,
}

// The arguments of `coffre keys rotate` (a plain comment: the subcommand's help is its variant's).
#[derive(Args, Serialize, Deserialize, Debug, Clone)]
pub struct KeysRotateArgs {
    /// File provider whose master key is rotated.
    #[arg(long, requires = "new_master_key")]
    pub provider: Option<String>,
    /// The new master key file (64 hex characters, mode 0600).
    #[arg(long)]
    pub new_master_key: Option<PathBuf>,
    /// Create the new master key file.
    #[arg(long)]
    pub create: bool,
    /// Wrap every snapshot's data key with this provider as well.
    #[arg(long, conflicts_with = "provider")]
    pub to_provider: Option<String>,
    /// Why (recorded in the access log).
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionCommand {
    /// Show due epochs (shred / keep with reasons) and when each snapshot's epoch is due.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Carry out the due part of the plan now (what the daemon does on its schedule).
    Run {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum HoldCommand {
    /// Put a snapshot under legal hold.
    Add {
        /// The snapshot to hold (its id).
        snapshot: SnapshotId,
        /// Why (recorded in the access log: the case or order the hold is for).
        #[arg(long)]
        purpose: String,
    },
    /// Release a legal hold.
    Release {
        /// The held snapshot to release (its id).
        snapshot: SnapshotId,
        /// Why (recorded in the access log).
        #[arg(long)]
        purpose: String,
    },
}

#[derive(Args, Serialize, Deserialize, Debug, Clone)]
#[command(group(clap::ArgGroup::new("pitr").multiple(false)))]
pub struct RestoreArgs {
    /// Snapshot id, or `latest`. With a `--target-*` (point-in-time recovery) it may be left
    /// out: the base backup is then chosen for the target.
    #[arg(required_unless_present = "pitr")]
    pub snapshot: Option<Selector>,
    /// Point-in-time recovery to this moment (RFC 3339, e.g. 2026-12-06T17:30:00Z): restores
    /// the newest base backup protected before it and writes the recovery settings.
    #[arg(long, group = "pitr", value_name = "TIME")]
    pub target_time: Option<String>,
    /// Point-in-time recovery to this WAL location (e.g. 0/3000148).
    #[arg(long, group = "pitr", value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Point-in-time recovery to the end of this transaction.
    #[arg(long, group = "pitr", value_name = "XID")]
    pub target_xid: Option<String>,
    /// Point-in-time recovery to this restore point (pg_create_restore_point()).
    #[arg(long, group = "pitr", value_name = "NAME")]
    pub target_name: Option<String>,
    /// Point-in-time recovery to the end of the archived WAL.
    #[arg(long, group = "pitr")]
    pub target_latest: bool,
    /// After a point-in-time restore, run PostgreSQL on DIR (as you, who must own it; never as
    /// root) until it has replayed to the target and promoted, then stop it and report the
    /// replay time. Its output goes to DIR/coffre-replay.log.
    #[arg(long, requires = "pitr")]
    #[serde(default)]
    pub replay: bool,
    /// What the replayed copy does with its WAL once you start it. `off` (the default): coffre
    /// appends `archive_mode = 'off'` to its postgresql.auto.conf, so it archives nothing (an
    /// investigation copy). `preserve`: it keeps the backup's archive settings and, started,
    /// archives its new timeline into the source (a disaster recovery's new primary). Either
    /// way its new timeline's history file is queued for its archiver.
    #[arg(long, value_enum, value_name = "MODE", requires = "replay")]
    #[serde(default)]
    pub archive_mode: Option<ArchiveMode>,
    /// The PostgreSQL programs for --replay (default: /usr/lib/postgresql/<PG_VERSION>/bin,
    /// else `postgres` on PATH).
    #[arg(long, value_name = "DIR", requires = "replay")]
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// Source the snapshot belongs to (its name in the config).
    #[arg(long)]
    pub source: String,
    /// Where to write the snapshot (must not exist).
    #[arg(long)]
    pub to: PathBuf,
    /// Use only this store.
    #[arg(long)]
    pub store: Option<String>,
    /// Why the data is accessed (recorded in the access log).
    #[arg(long)]
    pub purpose: String,
    #[arg(long)]
    pub json: bool,
}

/// `restore --archive-mode`: whether a `--replay` copy archives once started.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveMode {
    /// `archive_mode = 'off'` appended to the copy's postgresql.auto.conf.
    #[default]
    Off,
    /// The backup's own archive settings, untouched.
    Preserve,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum CatalogCommand {
    /// Rebuild the catalog from the stores' manifests.
    Rebuild {
        /// This machine replaces the lost host of this id (the `host` of the config): its claim
        /// on its namespace in every store is taken over (logged), so that this machine can
        /// back up as that host again.
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Authenticate key objects written before authentication existed, once every store that
    /// holds a snapshot agrees with the catalog (an operator's decision: logged).
    Seal {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum KeysCommand {
    /// Create the master key of every file provider that has none yet (mode 0600); with --to,
    /// write one new master key file to install as a systemd credential.
    Init(KeysInitArgs),
    /// Providers, their health and their epochs (no key material).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate the master key of a file provider (re-seal its keyring here and in the stores),
    /// or wrap every snapshot's data key with another provider too. No data is re-encrypted.
    Rotate(KeysRotateArgs),
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum AuditCommand {
    /// Check the hash chain; exits non-zero and names the first bad entry.
    Verify,
    /// Carry out the access log's retention now (the daemon does it on its shred schedule):
    /// entries older than `audit.retention` leave the local log, and sealed segments whose
    /// epoch has ended are crypto-shredded in every store.
    Expire {
        #[arg(long)]
        json: bool,
    },
    /// Show entries, optionally filtered.
    Show {
        /// Entries at or after this time: RFC 3339, a date (its midnight UTC), or a duration
        /// before now (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Entries before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only entries about this snapshot (its id).
        #[arg(long)]
        snapshot: Option<String>,
        /// Only entries of this person: their own runs and theirs through the daemon (the
        /// account name, e.g. `alice` matches `alice (via coffre-daemon)`).
        #[arg(long)]
        actor: Option<String>,
        /// Only entries of this action (restore, drill, hold-add, hold-release, shred,
        /// key-rewrap, wal-fetch, ...; docs/operations.md lists them) or family (hold, key,
        /// wal, ...); an unknown one is refused, listing them (exit 2).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

impl RestoreArgs {
    /// The point-in-time recovery target, if one of the `--target-*` options is given.
    pub fn pitr_target(
        &self,
    ) -> Result<Option<crate::ops::pitr::recovery::Target>, crate::ops::pitr::recovery::PitrError>
    {
        crate::ops::pitr::recovery::Target::from_options(
            self.target_time.as_deref(),
            self.target_lsn.as_deref(),
            self.target_xid.as_deref(),
            self.target_name.as_deref(),
            self.target_latest,
        )
    }
}
