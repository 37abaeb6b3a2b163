//! The `coffre` command: parses the CLI, loads the config, starts tracing and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use coffre::config::{Config, ProviderKind, DEFAULT_CONFIG_PATH};
use coffre::ids::SnapshotId;
use coffre::pipeline::Protection;
use coffre::restore::{Request, Selector};
use coffre::Coffre;

/// Exit code of `coffre backup` when the snapshot is committed in min-sites but not every store.
const EXIT_DEGRADED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "coffre",
    version,
    about = "Encrypted, geographically separated backups of EMR database snapshots"
)]
struct Cli {
    /// Config file (default: $COFFRE_CONFIG, else /etc/coffre/coffre.toml).
    #[arg(long, global = true, env = "COFFRE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr: text, json, or auto (json under systemd).
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch the sources, protect each snapshot, keep the stores caught up,
    /// serve the status endpoint (systemd Type=notify).
    Daemon,
    /// Print the running daemon's status (from its status endpoint).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Protect one snapshot (a file or a directory) now; prints the snapshot id.
    Backup {
        /// Source the snapshot belongs to.
        #[arg(long)]
        source: String,
        /// The snapshot: a dump file, or a directory such as a pg_basebackup.
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, oldest first, and where each is committed.
    Snapshots {
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The local catalog (a cache of the stores' manifests).
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Restore a snapshot from any surviving store (logged in the access log first).
    Restore(RestoreArgs),
    /// Check every replica (present, header valid, SHA-256 matches) without any key.
    Verify {
        /// Only this snapshot.
        snapshot: Option<SnapshotId>,
        #[arg(long)]
        json: bool,
    },
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
    /// Validate the config file and print every problem.
    CheckConfig,
    /// Retention: what would be shredded and when.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Crypto-shred one snapshot now (an erasure order), or show destruction records.
    Shred {
        /// The snapshot to shred.
        #[arg(long, required_unless_present = "records")]
        snapshot: Option<SnapshotId>,
        /// Why (recorded in the access log and the destruction record).
        #[arg(long, required_unless_present = "records")]
        purpose: Option<String>,
        /// Do it (without --yes, only say what would happen).
        #[arg(long)]
        yes: bool,
        /// Show the destruction records instead.
        #[arg(long)]
        records: bool,
        #[arg(long)]
        json: bool,
    },
    /// Disaster-recovery drill: restore into a scratch folder, verify, time it, wipe it.
    Drill {
        #[arg(long)]
        source: Option<String>,
        /// Only this store (default: every store).
        #[arg(long, conflicts_with = "all_stores")]
        store: Option<String>,
        /// Every store (the default).
        #[arg(long)]
        all_stores: bool,
        /// This snapshot (default: the source's drill.pick, latest).
        #[arg(long)]
        snapshot: Option<SnapshotId>,
        /// Rebuild the catalog from the stores first (a drill as on a new host).
        #[arg(long)]
        fresh_catalog: bool,
        /// Why (recorded in the access log).
        #[arg(long, default_value = "disaster-recovery drill")]
        purpose: String,
        #[arg(long)]
        json: bool,
    },
    /// Legal holds: a held snapshot is never shredded.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
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

#[derive(Subcommand)]
enum HoldCommand {
    /// Put a snapshot under legal hold.
    Add {
        snapshot: SnapshotId,
        #[arg(long)]
        purpose: String,
    },
    /// Release a legal hold.
    Release {
        snapshot: SnapshotId,
        #[arg(long)]
        purpose: String,
    },
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot id, or `latest`.
    snapshot: Selector,
    #[arg(long)]
    source: String,
    /// Where to write the snapshot (must not exist).
    #[arg(long)]
    to: PathBuf,
    /// Use only this store.
    #[arg(long)]
    store: Option<String>,
    /// Why the data is accessed (recorded in the access log).
    #[arg(long)]
    purpose: String,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Rebuild the catalog from the stores' manifests.
    Rebuild {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the master key of every file provider that has none yet (mode 0600).
    Init,
    /// Providers, their health and their epochs (no key material).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate the master key of a file provider (re-seal its keyring here and in the stores),
    /// or wrap every snapshot's data key with another provider too. No data is re-encrypted.
    Rotate {
        /// File provider whose master key is rotated.
        #[arg(long, requires = "new_master_key")]
        provider: Option<String>,
        /// The new master key file (64 hex characters, mode 0600).
        #[arg(long)]
        new_master_key: Option<PathBuf>,
        /// Create the new master key file.
        #[arg(long)]
        create: bool,
        /// Wrap every snapshot's data key with this provider as well.
        #[arg(long, conflicts_with = "provider")]
        to_provider: Option<String>,
        /// Why (recorded in the access log).
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
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
        /// Entries at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Entries before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("COFFRE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn load_config(cli: &Cli) -> Result<Config> {
    Ok(Config::load(&config_path(cli))?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// When the daemon runs, access commands go through its control socket, which checks the
/// caller's peer credentials. None: no daemon answers, run locally.
fn via_daemon(cli: &Cli) -> Option<ExitCode> {
    use coffre::daemon::control;
    if std::env::var_os(control::ACTOR_ENV).is_some() {
        return None;
    }
    let name = match &cli.command {
        Command::Restore(_) => "restore",
        Command::Drill { .. } => "drill",
        Command::Shred { .. } => "shred",
        Command::Hold { .. } => "hold",
        Command::Audit { .. } => "audit",
        _ => return None,
    };
    let path = std::env::var_os("COFFRE_SOCKET")
        .map(PathBuf::from)
        .or_else(|| {
            Config::load(&config_path(cli))
                .ok()
                .map(|c| control::socket_path(&c))
        })
        .unwrap_or_else(|| PathBuf::from("/run/coffre/coffre.sock"));
    if !path.exists() {
        return None;
    }
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().skip(1).position(|a| a == name)? + 1;
    let resp = control::call(&path, &args[i..])?;
    print!("{}", resp.stdout);
    eprint!("{}", resp.stderr);
    Some(ExitCode::from(resp.exit.clamp(0, 255) as u8))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(code) = via_daemon(&cli) {
        return Ok(code);
    }
    match &cli.command {
        Command::CheckConfig => {
            let c = load_config(&cli)?;
            println!(
                "{}: valid ({} source(s), {} store(s) in {} site(s), {} key provider(s))",
                config_path(&cli).display(),
                c.sources.len(),
                c.stores.len(),
                c.sites().len(),
                c.key_providers.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Init,
        } => {
            let c = load_config(&cli)?;
            for k in &c.key_providers {
                match (k.kind, &k.master_key) {
                    (ProviderKind::File, Some(path)) => {
                        if path.exists() {
                            println!(
                                "{}: master key {} already exists (kept)",
                                k.name,
                                path.display()
                            );
                        } else {
                            coffre::keys::file::create_master_key(path)
                                .with_context(|| format!("creating {}", path.display()))?;
                            println!("{}: created master key {} (mode 0600): back it up off-site, it is needed for every restore", k.name, path.display());
                        }
                    }
                    (ProviderKind::File, None) => println!(
                        "{}: master key comes from a systemd credential; nothing to create",
                        k.name
                    ),
                    (ProviderKind::Pkcs11, _) => {
                        println!("{}: keys live on the token; nothing to create", k.name)
                    }
                }
            }
            let app = Coffre::open(c).await?;
            for p in &app.providers {
                p.health()
                    .with_context(|| format!("provider {}", p.name()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    provider: Some(provider),
                    new_master_key: Some(new_key),
                    create,
                    purpose,
                    json,
                    ..
                },
        } => {
            let config = load_config(&cli)?;
            let r = coffre::keys::rotate::rotate_master_key_everywhere(
                &config,
                provider,
                new_key,
                *create,
                &coffre::audit::current_user(),
                purpose,
            )
            .await?;
            if *json {
                print_json(&r)?;
            } else {
                println!(
                    "master key of provider {provider} rotated: keyring re-sealed under {}; {} store(s) updated, {} old copies deleted",
                    new_key.display(),
                    r.stores_updated.len(),
                    r.old_copies_deleted
                );
                println!("now point master-key at {} in the config of every host using provider {provider}, and destroy the old key's copies", new_key.display());
            }
            if !r.store_failures.is_empty() {
                bail!("some stores still hold the keyring under the old master key ({}); run the same rotation again once they are back", r.store_failures.join("; "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon => {
            let config = load_config(&cli)?;
            coffre::daemon::run(config_path(&cli), config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = load_config(&cli)?;
            status_command(&config, *json).await
        }
        _ => {
            let config = load_config(&cli)?;
            let app = Coffre::open(config).await?;
            let result = command(&app, &cli.command).await;
            if writes_access_log(&cli.command) {
                // The access log's sealed copy follows it to the stores (best effort: the daemon
                // and the next command retry).
                if let Err(e) = coffre::audit::replicate::replicate(&app).await {
                    tracing::warn!(error = %e, "access log not replicated to the stores yet");
                }
            }
            result
        }
    }
}

fn writes_access_log(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Restore(_)
            | Command::Drill { .. }
            | Command::Shred { records: false, .. }
            | Command::Hold { .. }
            | Command::Catalog { .. }
            | Command::Retention {
                command: RetentionCommand::Run { .. }
            }
            | Command::Audit {
                command: AuditCommand::Expire { .. }
            }
    )
}

async fn command(app: &Coffre, cmd: &Command) -> Result<ExitCode> {
    match cmd {
        Command::Backup { source, path, json } => {
            let out = coffre::pipeline::protect(app, source, path).await?;
            if *json {
                print_json(&out)?;
            } else {
                println!("{}", out.manifest.snapshot);
            }
            for f in &out.failed {
                eprintln!(
                    "warning: store `{}` did not receive snapshot {}: {}",
                    f.store, out.manifest.snapshot, f.error
                );
            }
            if out.protection == Protection::Degraded {
                eprintln!(
                    "warning: snapshot {} is degraded: committed in {} of {} stores (at least min-sites sites)",
                    out.manifest.snapshot,
                    out.committed.len(),
                    app.stores.len()
                );
                return Ok(ExitCode::from(EXIT_DEGRADED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshots { source, json } => {
            let list = app.catalog.list(source.as_deref())?;
            if *json {
                let v: Vec<_> = list
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.manifest.snapshot,
                            "source": e.manifest.source,
                            "created": e.manifest.created,
                            "kind": e.manifest.kind,
                            "name": e.manifest.original_name,
                            "size": e.manifest.size,
                            "sealed_size": e.manifest.sealed_size,
                            "sealed_sha256": e.manifest.sealed_sha256,
                            "stores": e.replicas.iter().filter(|r| r.state == coffre::catalog::ReplicaState::Committed).map(|r| r.store.clone()).collect::<Vec<_>>(),
                            "replicas": e.replicas,
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else {
                println!(
                    "{:<26}  {:<12}  {:<20}  {:>14}  stores",
                    "id", "source", "created", "size"
                );
                for e in &list {
                    let stores: Vec<_> = e
                        .replicas
                        .iter()
                        .filter(|r| r.state == coffre::catalog::ReplicaState::Committed)
                        .map(|r| r.store.as_str())
                        .collect();
                    println!(
                        "{:<26}  {:<12}  {:<20}  {:>14}  {}",
                        e.manifest.snapshot,
                        e.manifest.source,
                        e.manifest.created,
                        e.manifest.size,
                        stores.join(",")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Rebuild { json },
        } => {
            let actor = coffre::audit::current_user();
            app.audit.append(coffre::audit::NewEntry {
                actor: actor.clone(),
                action: "catalog-rebuild".into(),
                target: Default::default(),
                purpose: "rebuild the local catalog from the stores".into(),
                outcome: "started".into(),
                exposes: None,
            })?;
            let (snapshots, replicas) = app.rebuild_catalog().await?;
            app.audit.append(coffre::audit::NewEntry {
                actor,
                action: "catalog-rebuild".into(),
                target: Default::default(),
                purpose: "rebuild the local catalog from the stores".into(),
                outcome: format!("ok: {snapshots} snapshots, {replicas} replicas"),
                exposes: None,
            })?;
            if *json {
                print_json(&serde_json::json!({"snapshots": snapshots, "replicas": replicas}))?;
            } else {
                println!(
                    "catalog rebuilt: {snapshots} snapshot(s), {replicas} committed replica(s)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(a) => {
            if a.purpose.trim().is_empty() {
                bail!(
                    "--purpose must say why the data is accessed; it is recorded in the access log"
                );
            }
            let req = Request {
                source: a.source.clone(),
                snapshot: a.snapshot,
                to: a.to.clone(),
                store: a.store.clone(),
                purpose: a.purpose.clone(),
                actor: coffre::audit::current_user(),
                action: "restore".into(),
                progress: std::io::stderr().is_terminal() && !a.json,
            };
            let report = coffre::restore::restore(app, &req).await?;
            if a.json {
                print_json(&report)?;
            } else {
                println!(
                    "restored snapshot {} to {} ({} bytes, from {}, {:.1} s)",
                    report.snapshot,
                    report.to.display(),
                    report.size,
                    report.stores_used.join(" then "),
                    report.seconds
                );
            }
            for f in &report.failures {
                eprintln!(
                    "warning: replica in store `{}` failed ({}): {}",
                    f.store, f.kind, f.error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { snapshot, json } => {
            let checks = coffre::verify::verify(app, *snapshot).await;
            let bad = checks.iter().filter(|c| !c.ok()).count();
            if *json {
                print_json(&checks)?;
            } else {
                for c in &checks {
                    println!(
                        "{}  {:<12}  {:<12}  {}{}",
                        c.snapshot,
                        c.source,
                        c.store,
                        c.state,
                        c.detail
                            .as_deref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    );
                }
                println!("{} replica(s) checked, {} not ok", checks.len(), bad);
            }
            if snapshot.is_some() && checks.is_empty() {
                bail!(
                    "snapshot {} is not known in the catalog or any store",
                    snapshot.map(|s| s.to_string()).unwrap_or_default()
                );
            }
            Ok(if bad > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Keys {
            command: KeysCommand::Status { json },
        } => {
            // Snapshots per epoch, from the catalog's key objects.
            let mut per_epoch: std::collections::BTreeMap<String, u64> = Default::default();
            for k in app.catalog.all_keys()? {
                *per_epoch.entry(k.epoch.to_string()).or_default() += 1;
            }
            let mut out = Vec::new();
            for p in &app.providers {
                let health = p
                    .health()
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| e.to_string());
                let epochs: Vec<_> = p
                    .epochs()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| {
                        let due = coffre::retention::epoch_day(&e.epoch)
                            .and_then(|d| d.next_day())
                            .map(|d| format!("{d}T00:00:00Z"));
                        serde_json::json!({
                            "epoch": e.epoch,
                            "created": e.created,
                            "destroyed": e.destroyed,
                            "snapshots": per_epoch.get(e.epoch.as_str()).copied().unwrap_or(0),
                            "due": due,
                        })
                    })
                    .collect();
                out.push(serde_json::json!({
                    "provider": p.name(),
                    "kind": p.kind(),
                    "health": health,
                    "epochs": epochs,
                }));
            }
            if *json {
                print_json(&out)?;
            } else {
                for p in &out {
                    println!(
                        "provider {} ({}): {}",
                        p["provider"].as_str().unwrap_or("?"),
                        p["kind"].as_str().unwrap_or("?"),
                        p["health"].as_str().unwrap_or("?")
                    );
                    for e in p["epochs"].as_array().into_iter().flatten() {
                        println!(
                            "  epoch {:<24} snapshots {:>5}  {}",
                            e["epoch"].as_str().unwrap_or("?"),
                            e["snapshots"],
                            match e["destroyed"].as_str() {
                                Some(d) => format!("destroyed {d}"),
                                None =>
                                    format!("due {}", e["due"].as_str().unwrap_or("never (hold)")),
                            }
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let n = app.audit.verify()?;
            println!(
                "access log {}: {} entries, chain intact",
                app.audit.path().display(),
                n
            );
            let findings = coffre::audit::replicate::verify_stores(app)
                .await
                .map_err(anyhow::Error::msg)?;
            for f in &findings {
                println!(
                    "store `{}`{}: {}",
                    f.store,
                    f.seq.map(|s| format!(" entry {s}")).unwrap_or_default(),
                    f.problem
                );
            }
            if let Some(f) = findings.first() {
                bail!(
                    "the access log and its copy in store `{}` disagree ({} finding(s)); first: {}",
                    f.store,
                    findings.len(),
                    f.problem
                );
            }
            println!("store copies agree with the local log");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Expire { json },
        } => {
            let now = time::OffsetDateTime::now_utc();
            let r = coffre::audit::expire::expire(app, now, &coffre::audit::current_user())
                .await
                .map_err(anyhow::Error::msg)?;
            if *json {
                print_json(&r)?;
            } else {
                match &r.local {
                    Some(p) => println!(
                        "local log: entries {}-{} removed (older than audit.retention)",
                        p.first, p.through
                    ),
                    None => println!("local log: no entry older than audit.retention"),
                }
                for d in &r.epochs {
                    println!(
                        "epoch {} destroyed: {} sealed segment copies deleted (record {})",
                        d.epoch,
                        d.copies.len(),
                        d.record
                    );
                }
                for (e, day) in &r.upcoming {
                    println!("epoch {e}: kept until the end of {day}");
                }
            }
            if let Some(e) = r.errors.first() {
                bail!(
                    "{} access-log epoch(s) not destroyed; first: {e}",
                    r.errors.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Show {
                    since,
                    until,
                    snapshot,
                    actor,
                    action,
                    json,
                },
        } => {
            let entries: Vec<_> = app
                .audit
                .entries()?
                .into_iter()
                .filter(|e| since.as_ref().is_none_or(|s| e.time.as_str() >= s.as_str()))
                .filter(|e| until.as_ref().is_none_or(|u| e.time.as_str() < u.as_str()))
                .filter(|e| {
                    snapshot
                        .as_ref()
                        .is_none_or(|s| e.target.snapshot.as_ref() == Some(s))
                })
                .filter(|e| actor.as_ref().is_none_or(|a| &e.actor == a))
                .filter(|e| action.as_ref().is_none_or(|a| &e.action == a))
                .collect();
            if *json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    println!(
                        "{:>6}  {}  {:<10}  {:<16}  {:<26}  {}  purpose: {}",
                        e.seq,
                        e.time,
                        e.actor,
                        e.action,
                        e.target.snapshot.as_deref().unwrap_or("-"),
                        e.outcome,
                        e.purpose
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    to_provider: Some(to),
                    purpose,
                    json,
                    ..
                },
        } => {
            let n = coffre::keys::rotate::add_provider_wraps(
                app,
                to,
                &coffre::audit::current_user(),
                purpose,
            )
            .await?;
            if *json {
                print_json(&serde_json::json!({"provider": to, "key_objects_rewritten": n}))?;
            } else {
                println!("{n} snapshot key(s) now also wrapped by provider {to}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Rotate { .. },
        } => bail!(
            "keys rotate needs either --provider NAME --new-master-key PATH, or --to-provider NAME"
        ),
        Command::Retention { command } => {
            let now = time::OffsetDateTime::now_utc();
            match command {
                RetentionCommand::Plan { json } => {
                    let plan = coffre::retention::shred::current_plan(app, now)?;
                    if *json {
                        print_json(&plan)?;
                    } else {
                        for ep in &plan.due {
                            println!("epoch {} is due now:", ep.epoch);
                            for id in &ep.shred {
                                println!("  shred {id}");
                            }
                            for k in &ep.keep {
                                println!(
                                    "  keep  {} ({}) -> epoch {}",
                                    k.snapshot, k.reason, k.to_epoch
                                );
                            }
                        }
                        for u in &plan.upcoming {
                            println!(
                                "{}  {:<12}  epoch {}  destroyed at {}",
                                u.snapshot, u.source, u.epoch, u.due
                            );
                        }
                    }
                }
                RetentionCommand::Run { json } => {
                    let (done, errors) =
                        coffre::retention::shred::run_due(app, now, &coffre::audit::current_user())
                            .await;
                    if *json {
                        print_json(&done)?;
                    } else {
                        for r in &done {
                            println!(
                                "epoch {} destroyed: {} snapshot(s) shredded, {} kept by re-wrap",
                                r.epoch,
                                r.snapshots.len(),
                                r.rewrapped.len()
                            );
                        }
                    }
                    if let Some(e) = errors.first() {
                        bail!("{} epoch(s) not shredded; first: {e}", errors.len());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shred {
            records: true,
            json,
            ..
        } => {
            let recs: Vec<serde_json::Value> = app
                .catalog
                .destructions()?
                .iter()
                .filter_map(|r| serde_json::from_str(r).ok())
                .collect();
            if *json {
                print_json(&recs)?;
            } else {
                for r in &recs {
                    println!(
                        "{}  {}  epoch {}  {} snapshot(s)  {}",
                        r["record"].as_str().unwrap_or("?"),
                        r["time"].as_str().unwrap_or("?"),
                        r["epoch"].as_str().unwrap_or("?"),
                        r["snapshots"].as_array().map(|a| a.len()).unwrap_or(0),
                        r["reason"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shred {
            snapshot,
            purpose,
            yes,
            json,
            ..
        } => {
            let (Some(id), Some(purpose)) = (snapshot, purpose) else {
                bail!("shred needs --snapshot ID and --purpose TEXT");
            };
            if purpose.trim().is_empty() {
                bail!("--purpose must say why the snapshot is destroyed");
            }
            let key = app.catalog.get_key(id)?.with_context(|| {
                format!("snapshot {id} is not in the catalog (run `coffre catalog rebuild`)")
            })?;
            if !*yes {
                let mates = app
                    .catalog
                    .all_keys()?
                    .iter()
                    .filter(|k| k.epoch == key.epoch && k.snapshot != *id)
                    .count();
                println!("would crypto-shred snapshot {id}: destroy epoch key {} after moving its {mates} epoch-mate(s) to a fresh epoch key, then delete its copies. Add --yes to do it.", key.epoch);
                return Ok(ExitCode::from(2));
            }
            let r = coffre::retention::shred::shred_one(
                app,
                id,
                &coffre::audit::current_user(),
                purpose,
            )
            .await?;
            if *json {
                print_json(&r)?;
            } else {
                println!("snapshot {id} crypto-shredded: epoch {} destroyed in {} provider(s), {} copies deleted (record {})", r.epoch, r.providers.len(), r.copies.len(), r.record);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            source,
            store,
            snapshot,
            fresh_catalog,
            purpose,
            json,
            ..
        } => {
            let req = coffre::drill::DrillRequest {
                source: source.clone(),
                store: store.clone(),
                snapshot: *snapshot,
                fresh_catalog: *fresh_catalog,
                actor: coffre::audit::current_user(),
                purpose: purpose.clone(),
            };
            let reports = coffre::drill::drill(app, &req)
                .await
                .map_err(anyhow::Error::msg)?;
            if *json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    println!(
                        "drill {} source {} store {} snapshot {}: {} (restore {:.1} s, verify {:.1} s, RTO {:.1} s, scratch wiped: {}){}",
                        r.drill,
                        r.source,
                        r.store,
                        r.snapshot.map(|s| s.to_string()).unwrap_or_default(),
                        if r.ok { "OK" } else { "FAILED" },
                        r.restore_seconds,
                        r.verify_seconds,
                        r.rto_seconds,
                        r.scratch_wiped,
                        r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                    );
                }
            }
            Ok(if reports.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Hold { command } => {
            let actor = coffre::audit::current_user();
            match command {
                HoldCommand::Add { snapshot, purpose } => {
                    coffre::retention::shred::hold_add(app, snapshot, &actor, purpose).await?;
                    println!("snapshot {snapshot} is under legal hold: it will not be shredded until released");
                }
                HoldCommand::Release { snapshot, purpose } => {
                    let k = coffre::retention::shred::hold_release(app, snapshot, &actor, purpose)
                        .await?;
                    println!(
                        "hold on snapshot {snapshot} released: its key is back under epoch {}",
                        k.epoch
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig
        | Command::Daemon
        | Command::Status { .. }
        | Command::Keys {
            command: KeysCommand::Init,
        } => Ok(ExitCode::SUCCESS),
    }
}

async fn status_command(config: &Config, json: bool) -> Result<ExitCode> {
    let addr = config.status.listen;
    let url = format!("http://{addr}/status");
    let mut req = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(tf) = &config.status.token_file {
        let token = std::fs::read_to_string(tf)
            .with_context(|| format!("reading status.token-file {}", tf.display()))?;
        req = req.bearer_auth(token.trim());
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("the daemon's status endpoint {url} does not answer: is `coffre daemon` running with this config?"))?;
    if !resp.status().is_success() {
        bail!("the status endpoint {url} answered {}", resp.status());
    }
    let doc: serde_json::Value =
        serde_json::from_str(&resp.text().await?).context("status is not JSON")?;
    if json {
        print_json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "coffre {} on {} (up {:.0} s, ready: {})",
        doc["version"].as_str().unwrap_or("?"),
        doc["host"].as_str().unwrap_or("?"),
        doc["uptime_seconds"].as_f64().unwrap_or(0.0),
        doc["ready"]
    );
    for s in doc["sources"].as_array().into_iter().flatten() {
        println!(
            "source {:<12} {:<10} snapshots {:>5}  last {}  age {}",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["snapshots"],
            s["last_snapshot"].as_str().unwrap_or("-"),
            s["age_seconds"]
                .as_f64()
                .map(|a| format!("{a:.0} s"))
                .unwrap_or_else(|| "-".into())
        );
    }
    for s in doc["stores"].as_array().into_iter().flatten() {
        println!(
            "store  {:<12} site {:<10} up {:<5} lag {:>4}  last error {}",
            s["name"].as_str().unwrap_or("?"),
            s["site"].as_str().unwrap_or("?"),
            s["up"],
            s["lag_snapshots"],
            s["last_error_kind"].as_str().unwrap_or("-")
        );
    }
    for a in doc["alerts"].as_array().into_iter().flatten() {
        println!("ALERT: {}", a.as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}
