//! The `coffre` command: parses the CLI, starts tracing and the runtime, then runs the command
//! through the running daemon's control socket when one answers, or here under the state
//! folder's lock when none runs (`coffre::cli` holds the commands themselves).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use coffre::cli::{Command, Ctx, KeysCommand, Out};
use coffre::config::{Config, ProviderKind, DEFAULT_CONFIG_PATH};
use coffre::daemon::control;
use coffre::lock::{self, Role};
use coffre::Coffre;

mod manual;

#[derive(Parser)]
#[command(
    name = "coffre",
    version = coffre::status::LONG_VERSION,
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
    command: Top,
}

/// The commands, and `generate` for packaging, which is not one of them (it never goes
/// through the daemon, and stays out of the manual and the completions).
// Parsed once per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Top {
    #[command(flatten)]
    Run(Command),
    /// Write the man pages or the shell completions (packaging/build-deb.sh).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: manual::Generate,
    },
}

/// The CLI with what every command's help shares (exit status, `--json`).
fn cli_command() -> clap::Command {
    manual::annotate(Cli::command())
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
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

/// At most two glibc malloc arenas (unless `MALLOC_ARENA_MAX` says otherwise). glibc gives
/// each thread that allocates concurrently an arena of its own, up to 8 per core, and keeps
/// what an arena once held: the tokio workers and blocking threads that seal one WAL segment
/// after another each kept their peak, so the daemon grew to about 200 MiB while archiving, and
/// stays at 30 to 85 MiB with two (benches/README.md, "Memory while archiving"). Called first
/// in `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a glibc malloc parameter; no other thread runs yet, and the
        // result (0 when refused) changes nothing but memory use.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::from_arg_matches(&cli_command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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
            eprintln!("error: {}", coffre::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// Parse, then one arm per command: the few that run here only (no daemon needed, or none may
/// run), and every other through [`route`].
async fn run(cli: Cli) -> Result<ExitCode> {
    let command = match &cli.command {
        Top::Run(command) => command,
        Top::Generate { what } => {
            manual::run(Cli::command(), what)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    match command {
        Command::CheckConfig { portable, user } => check_config(&cli, *portable, user.as_deref()),
        Command::Keys {
            command: KeysCommand::Init { to: Some(to) },
        } => keys_init_to(to),
        Command::Keys {
            command: KeysCommand::Init { to: None },
        } => keys_init(&cli).await,
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
        } => rotate_master_key(&cli, provider, new_key, *create, purpose, *json).await,
        Command::Daemon => daemon(&cli).await,
        Command::Status { json } => return status(&cli, *json).await,
        cmd => return route(&cli, cmd).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

/// `keys init`: create each file provider's master key that does not exist yet (a systemd
/// credential's source file is created with `keys init --to`), then check every provider.
async fn keys_init(cli: &Cli) -> Result<()> {
    let mut c = load_config(cli)?;
    // A master key that is a systemd credential exists only inside the running service:
    // here it is its source file, which `keys init --to` creates.
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        for k in c.key_providers.iter_mut() {
            let Some(cred) = k.master_key_credential.clone() else {
                continue;
            };
            let Some(src) = coffre::config::credential_source(&cred) else {
                bail!(
                    "key-provider {}: master-key-credential = \"{cred}\" is not a credential the coffre unit loads: it loads every file of {} as {}<file>. Name it {}master.key, then create that file with `coffre keys init --to {}/master.key`",
                    k.name,
                    coffre::config::CREDENTIALS_SOURCE_DIR,
                    coffre::config::CREDENTIAL_PREFIX,
                    coffre::config::CREDENTIAL_PREFIX,
                    coffre::config::CREDENTIALS_SOURCE_DIR
                );
            };
            if std::fs::symlink_metadata(&src).is_err() {
                bail!(
                    "key-provider {}: the master key is the systemd credential `{cred}`, which the unit loads from {} and which does not exist yet; keys init creates no key there by itself. Create it with `coffre keys init --to {}` (or install your existing master key there, mode 0600), then run `coffre keys init` again",
                    k.name,
                    src.display(),
                    src.display()
                );
            }
            println!(
                "{}: master key is the credential `{cred}`, from {}",
                k.name,
                src.display()
            );
            k.master_key = Some(src);
            k.master_key_credential = None;
            k.create_master_key = false;
        }
    }
    let _lock = lock::acquire(&c.state_dir, Role::Command)?;
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
    for p in app.providers() {
        p.health()
            .with_context(|| format!("provider {}", p.name()))?;
    }
    Ok(())
}

/// `keys rotate --provider P --new-master-key F`: re-seal the keyring under a new master key,
/// here and in every store.
async fn rotate_master_key(
    cli: &Cli,
    provider: &str,
    new_key: &std::path::Path,
    create: bool,
    purpose: &str,
    json: bool,
) -> Result<()> {
    let config = load_config(cli)?;
    let _lock = lock::acquire(&config.state_dir, Role::Command)?;
    let r = coffre::ops::lifecycle::rotate::rotate_master_key_everywhere(
        &config,
        provider,
        new_key,
        create,
        &coffre::actor::current_user(),
        purpose,
    )
    .await?;
    if json {
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
    Ok(())
}

async fn daemon(cli: &Cli) -> Result<()> {
    let stop = coffre::daemon::stop_signal()?;
    let config = load_config(cli)?;
    coffre::daemon::run(config_path(cli), config, stop).await?;
    Ok(())
}

async fn status(cli: &Cli, json: bool) -> Result<ExitCode> {
    let config = config_for_status(cli)?;
    coffre::cli::status::run(&config, json)
        .await
        .map(ExitCode::from)
}

/// `check-config`: every problem of the file in one pass, then (unless `--portable`) what it
/// needs from this host, for the account the service runs as.
fn check_config(cli: &Cli, portable: bool, user: Option<&str>) -> Result<()> {
    use coffre::config::host::{host_problems, Account};
    let path = config_path(cli);
    let text =
        std::fs::read_to_string(&path).map_err(|source| coffre::config::ConfigError::Read {
            path: path.clone(),
            source,
        })?;
    let who = match (portable, user) {
        (true, _) => None,
        (false, Some(u)) => Some(Account::named(u).map_err(anyhow::Error::msg)?),
        (false, None) => Some(Account::current()),
    };
    let (config, mut problems) =
        Config::check_text(&text, Some(&coffre::config::config_folder(&path)));
    if let (Some(c), Some(who)) = (&config, &who) {
        for p in host_problems(c, who) {
            if !problems.iter().any(|q| q.key == p.key) {
                problems.push(p);
            }
        }
    }
    if !problems.is_empty() {
        let mut e = coffre::config::ConfigError::Invalid {
            path: path.clone(),
            problems,
        }
        .to_string();
        if config.is_none() && who.is_some() {
            e.push_str("\n(the files, credentials and source folders it names are checked once the file can be read)");
        }
        bail!(e);
    }
    let Some(c) = config else {
        bail!("internal error: no config and no problem");
    };
    println!(
        "{}: valid ({} source(s), {} store(s) in {} site(s), {} key provider(s))",
        path.display(),
        c.sources.len(),
        c.stores.len(),
        c.sites().len(),
        c.key_providers.len()
    );
    match who {
        Some(who) => println!(
            "on this host, for {} (uid {}): every file, credential and source folder it names is in place",
            who.name, who.uid
        ),
        None => println!(
            "--portable: the files, credentials and source folders it names were not checked; run `coffre check-config` on the host that runs it"
        ),
    }
    Ok(())
}

/// `keys init --to FILE`: one new master key, mode 0600, in a folder that exists, never over
/// anything; no config is read and nothing else is created.
fn keys_init_to(to: &std::path::Path) -> Result<()> {
    if std::fs::symlink_metadata(to).is_ok() {
        bail!(
            "{} already exists: keys init --to never overwrites a file (it may be the only master key that opens your snapshots). Keep it, or move it away and run the command again",
            to.display()
        );
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "the folder {} does not exist: create it first (root-only, mode 0700; the package's tmpfiles creates {})",
            parent.display(),
            coffre::config::CREDENTIALS_SOURCE_DIR
        );
    }
    coffre::keys::file::create_master_key(to)
        .with_context(|| format!("creating the master key {}", to.display()))?;
    println!(
        "created master key {} (mode 0600): back it up off-site, it is needed for every restore",
        to.display()
    );
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned());
    let under_unit = to
        .parent()
        .is_some_and(|p| p == std::path::Path::new(coffre::config::CREDENTIALS_SOURCE_DIR));
    match name {
        Some(n) if under_unit => println!(
            "the coffre unit loads it as the credential {}{n}: set master-key-credential = \"{}{n}\" in the file provider",
            coffre::config::CREDENTIAL_PREFIX,
            coffre::config::CREDENTIAL_PREFIX
        ),
        _ => println!(
            "set master-key = \"{}\" in the file provider, or move it to {}/NAME (the credential {}NAME)",
            to.display(),
            coffre::config::CREDENTIALS_SOURCE_DIR,
            coffre::config::CREDENTIAL_PREFIX
        ),
    }
    Ok(())
}

/// Through the daemon when one answers on its control socket; otherwise here, holding the state
/// folder's lock. Never here beside a running daemon: its lock refuses that.
async fn route(cli: &Cli, cmd: &Command) -> Result<ExitCode> {
    if let Command::Restore(a) = cmd {
        // Before anything is restored: a replay as root could only fail at the end.
        if a.replay && nix::unistd::geteuid().is_root() {
            return Err(coffre::ops::pitr::recovery::PitrError::ReplayAsRoot.into());
        }
        if a.pitr_target()?.is_some() {
            pitr_command(cli, a, "check")?;
        }
    }
    let code = route_code(cli, cmd).await?;
    if code == coffre::cli::exit::OK {
        if let Command::Restore(a) = cmd {
            if let Some(target) = a.pitr_target()? {
                pitr_settings(cli, a, &target)?;
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// The restore_command of a point-in-time restore: this binary, the config and socket it was
/// given, the source and the recovery session. Also made before anything is restored, so that a
/// path PostgreSQL's configuration cannot hold is refused first.
fn pitr_command(cli: &Cli, a: &coffre::cli::RestoreArgs, session: &str) -> Result<String> {
    let exe = std::env::current_exe().context("where is this coffre binary")?;
    let config = cli.config.as_deref().map(std::path::absolute).transpose()?;
    let socket = std::env::var_os("COFFRE_SOCKET").map(PathBuf::from);
    Ok(coffre::ops::pitr::recovery::restore_command(
        &exe,
        config.as_deref(),
        socket.as_deref(),
        &a.source,
        session,
        // WAL from any store with a good copy (fallback), even when the base backup came from
        // `--store`: a disaster restore takes what survives; drills pin their store.
        None,
    )?)
}

/// A point-in-time restore's base backup is in place (written here, by the caller): make it
/// start in targeted recovery, fetching WAL with this binary and the config it was given; with
/// `--replay`, replay it and leave it archiving as `--archive-mode` says.
fn pitr_settings(
    cli: &Cli,
    a: &coffre::cli::RestoreArgs,
    target: &coffre::ops::pitr::recovery::Target,
) -> Result<()> {
    use coffre::ops::pitr::recovery as pitr;
    // One recovery session per restore, opened by coffre (the daemon, or this process without
    // one) with the restore: its WAL fetches are one access entry and a summary.
    let session = control::RECOVERY_SESSION.get().cloned().ok_or_else(|| {
        anyhow::anyhow!("the restore opened no recovery session for the replay (is the daemon an older coffre? use the coffre binary of the daemon's version)")
    })?;
    let command = pitr_command(cli, a, &session)?;
    let to = std::path::absolute(&a.to)?;
    pitr::write_recovery(&to, &pitr::settings_text(target, &command, None)?)?;
    let tell = |say: &str| {
        if a.json {
            eprintln!("{say}");
        } else {
            println!("{say}");
        }
    };
    if !a.replay {
        tell(&format!(
            "wrote recovery.signal and the recovery settings (restore_command = '{command}', target: {}) in {}: start PostgreSQL on it to replay the archived WAL; it promotes at the target. It keeps the backup's archive settings: once promoted it archives its new timeline into source `{}` (a disaster recovery's new primary); for an investigation copy add archive_mode = off to that file first, or restore with --replay --archive-mode off",
            target.describe(),
            to.join("postgresql.auto.conf").display(),
            a.source
        ));
    } else {
        tell(&format!(
            "replaying the archived WAL to the target: PostgreSQL runs on {} (output in {})",
            to.display(),
            to.join("coffre-replay.log").display()
        ));
        let r = pitr::replay(&to, a.pg_bin.as_deref(), &command)?;
        let mode = a.archive_mode.unwrap_or_default();
        let after = pitr::after_replay(&to, mode == coffre::cli::ArchiveMode::Preserve)?;
        tell(&format!(
            "replayed to {} in {:.1} s: PostgreSQL promoted at the target and was stopped; {} is a database ready to start (recovery settings left in its postgresql.auto.conf: remove them or leave them, they are read only in recovery). {}",
            target.describe(),
            r.seconds,
            to.display(),
            archive_note(&after, &a.source)
        ));
    }
    if let Some(note) = owner_note(&to) {
        tell(&note);
    }
    Ok(())
}

/// What a replayed copy does with its WAL once started (`--archive-mode`).
fn archive_note(after: &coffre::ops::pitr::recovery::AfterReplay, source: &str) -> String {
    let timeline = after.timeline.map_or_else(
        || "its new timeline".to_string(),
        |t| format!("timeline {t}"),
    );
    let history = after
        .history_queued
        .as_deref()
        .map_or_else(String::new, |h| {
            format!(" (the history file {h} first: it is queued in pg_wal/archive_status)")
        });
    if after.archive_off {
        format!(
            "Archive mode off (--archive-mode off, the default for --replay): archive_mode = 'off' is appended to its postgresql.auto.conf, so started it archives nothing into source `{source}`, as an investigation copy should. To make it the new primary, remove that line: it then archives {timeline}{history}"
        )
    } else {
        format!(
            "Archive mode preserved (--archive-mode preserve): it keeps the backup's archive settings, so started it archives {timeline} into source `{source}` as its archive_command says{history}"
        )
    }
}

/// Who owns the restored folder, when PostgreSQL's account (postgres) cannot open it as it is.
fn owner_note(to: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(to).ok()?;
    let uid = meta.uid();
    let owner = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    (owner != "postgres").then(|| {
        format!(
            "{} is owned by {owner} (mode {:04o}): PostgreSQL, which runs as postgres, cannot open it. Run `chown -R postgres: {}` before starting PostgreSQL on it",
            to.display(),
            meta.mode() & 0o7777,
            to.display()
        )
    })
}

async fn route_code(cli: &Cli, cmd: &Command) -> Result<u8> {
    let config = Config::load(&config_path(cli));
    let socket = std::env::var_os("COFFRE_SOCKET")
        .map(PathBuf::from)
        .or_else(|| config.as_ref().ok().map(control::socket_path))
        .unwrap_or_else(|| PathBuf::from("/run/coffre/coffre.sock"));
    let refused = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => return remote(s, cmd).await,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(refused_connection(&socket))
        }
        Err(e) => e,
    };
    let config = config.map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(no coffre daemon answers on {} either: {refused})",
            socket.display()
        )
    })?;
    let _lock = match lock::acquire(&config.state_dir, Role::Command) {
        Ok(l) => l,
        Err(e) if e.daemon_running().is_some() => {
            let (starting, recorded) = e.daemon_running().unwrap_or_default();
            // The daemon's own socket path wins over the one computed here (a shell has no
            // systemd RUNTIME_DIRECTORY); COFFRE_SOCKET, when set, is the caller's choice.
            let socket = match recorded {
                Some(p) if std::env::var_os("COFFRE_SOCKET").is_none() => p.to_path_buf(),
                _ => socket.clone(),
            };
            // A daemon that is starting holds the lock before its socket listens: wait for it.
            // One that is ready may have started since our first try: try its socket again.
            let limit = std::time::Duration::from_secs(if starting { 30 } else { 3 });
            if let Some(s) = wait_for_socket(&socket, limit) {
                return remote(s, cmd).await;
            }
            bail!(
                "{e}. Its control socket {} does not answer ({refused}); nothing was run",
                socket.display()
            )
        }
        Err(e) if e.denied() => bail!("{}", daemon_down(cmd, &socket, &refused, &e)),
        Err(other) => return Err(other.into()),
    };
    run_here(config, cmd).await
}

/// Run `cmd` in this process (no daemon runs; the caller holds the state folder's lock).
async fn run_here(mut config: Config, cmd: &Command) -> Result<u8> {
    // Bad arguments exit 2 here as through the daemon (`cli::validate_request`).
    if let Err(e) = coffre::cli::check_bounds(cmd) {
        eprintln!("error: bad arguments: {e}");
        return Ok(coffre::cli::exit::USAGE);
    }
    if cmd.access() == coffre::cli::Access::Read {
        // Listing and checking never create a master key (docs/security.md): a missing key is
        // reported, with how to create it (`keys init`).
        for k in &mut config.key_providers {
            k.create_master_key = false;
        }
    }
    let app = Coffre::open(config).await?;
    let ctx = Ctx {
        actor: coffre::actor::current_user(),
        out: Out::local(),
        restore_sink: None,
        caller_file: Default::default(),
        daemon: None,
        session: Default::default(),
    };
    let result = coffre::cli::execute(&app, cmd, &ctx).await;
    if let Some(id) = ctx.session.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = control::RECOVERY_SESSION.set(id);
    }
    if cmd.writes_access_log() {
        // The access log's sealed copy follows it to the stores (best effort: the daemon and
        // the next command retry).
        if let Err(e) = coffre::ops::audit_replicate::replicate(&app).await {
            tracing::warn!(error = %e, "access log not replicated to the stores yet");
        }
    }
    result
}

/// No daemon answers and this caller may not run the command without one (the state folder is
/// the daemon's): say so, and what PostgreSQL does meanwhile for its archive and restore
/// commands.
fn daemon_down(
    cmd: &Command,
    socket: &std::path::Path,
    refused: &std::io::Error,
    e: &coffre::lock::LockError,
) -> String {
    let then = match cmd {
        Command::WalPush { .. } => {
            ". PostgreSQL keeps the WAL file and retries archive_command until a push succeeds: nothing is lost while the daemon is down, but pg_wal grows"
        }
        Command::WalFetch { .. } => ". The recovery waits: PostgreSQL retries restore_command",
        _ => "",
    };
    format!(
        "the coffre daemon is not running: no daemon answers on its control socket {} ({refused}), and without it only the daemon's user may use the state folder ({e}). Start it (`systemctl start coffre`; `systemctl status coffre` and `journalctl -u coffre` say why it stopped){then}",
        socket.display()
    )
}

/// The caller may not connect to the control socket (permission denied): a refusal by role,
/// exit 77 like one the daemon gives.
fn refused_connection(socket: &std::path::Path) -> u8 {
    eprintln!(
        "error: refused: cannot connect to the daemon's control socket {}: permission denied. Only root and members of the operators' group (audit.operators-group) may use coffre on this host",
        socket.display()
    );
    coffre::cli::exit::REFUSED
}

/// Connect to the socket of a daemon that is starting, for up to `limit`.
fn wait_for_socket(
    socket: &std::path::Path,
    limit: std::time::Duration,
) -> Option<std::os::unix::net::UnixStream> {
    let t = std::time::Instant::now();
    let mut said = false;
    while t.elapsed() < limit {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(socket) {
            return Some(s);
        }
        if !said && t.elapsed() > std::time::Duration::from_secs(2) {
            eprintln!(
                "the coffre daemon holds the state folder but its control socket {} does not answer yet; waiting...",
                socket.display()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// Send the command to the daemon. Paths are made absolute here; a restore's target is checked
/// and then written here, with the caller's own rights.
async fn remote(s: std::os::unix::net::UnixStream, cmd: &Command) -> Result<u8> {
    let mut cmd = cmd.clone();
    let mut writer = None;
    let mut file = None;
    match &mut cmd {
        Command::Restore(a) => {
            a.to =
                std::path::absolute(&a.to).with_context(|| format!("--to {}", a.to.display()))?;
            coffre::ops::snapshot::restore::check_target(&a.to)?;
            writer = Some(client::Restore::new(
                a.to.clone(),
                std::io::stderr().is_terminal() && !a.json,
            ));
        }
        Command::Backup { path, .. } => {
            *path = std::fs::canonicalize(&*path)
                .with_context(|| format!("snapshot {}", path.display()))?;
        }
        Command::WalPush { path, .. } => {
            *path = std::path::absolute(&*path)
                .with_context(|| format!("WAL file {}", path.display()))?;
            // Opened here, with our rights and without following a symlink; the daemon reads
            // this descriptor only, never the path.
            let f = coffre::ops::wal::archive::open_wal_file(path)?;
            file = Some(std::os::fd::OwnedFd::from(f));
        }
        Command::WalFetch { to, .. } => {
            *to = std::path::absolute(&*to).with_context(|| format!("{}", to.display()))?;
            let mut w = client::Restore::new(to.clone(), false);
            // The daemon writes the file into this one, which we open with our rights.
            file = Some(w.prepare().map_err(anyhow::Error::msg)?);
            writer = Some(w);
        }
        _ => {}
    }
    let code = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let w = writer
            .as_mut()
            .map(|w| w as &mut dyn control::RestoreWriter);
        control::call(s, &cmd, w, file)
    })
    .await
    .context("the control socket client stopped")?
    .map_err(anyhow::Error::msg)?;
    Ok(code)
}

/// The config `status` needs (the status address and token): the file as well as it can be
/// read, so that a file broken since the daemon started still reaches the running daemon.
fn config_for_status(cli: &Cli) -> Result<Config> {
    let path = config_path(cli);
    let err = match Config::load(&path) {
        Ok(c) => return Ok(c),
        Err(e @ coffre::config::ConfigError::Read { .. }) => return Err(e.into()),
        Err(e) => e,
    };
    let text = std::fs::read_to_string(&path)?;
    let (config, problems) = Config::check_text(&text, Some(&coffre::config::config_folder(&path)));
    let Some(config) = config else {
        return Err(err.into());
    };
    eprintln!(
        "warning: {} has {} problem(s) (`coffre check-config` lists them); the running daemon is asked at {} all the same",
        path.display(),
        problems.len(),
        config.status.listen
    );
    Ok(config)
}

mod client {
    //! The caller's side of a restore through the daemon: the plaintext arrives on the socket
    //! and is written here, by the caller, into a private temporary file or folder beside the
    //! target, moved into place only when the daemon says every check passed.

    use std::path::PathBuf;
    use std::sync::mpsc::SyncSender;
    use std::thread::JoinHandle;

    use bytes::Bytes;
    use coffre::daemon::control::{Begin, RestoreWriter, Written};
    use coffre::store::SnapshotKind;

    pub struct Restore {
        to: PathBuf,
        tmp: Option<PathBuf>,
        size: u64,
        tx: Option<SyncSender<Bytes>>,
        writer: Option<JoinHandle<std::io::Result<u64>>>,
        progress: Option<indicatif::ProgressBar>,
        show_progress: bool,
        done: bool,
        /// An empty file opened beside the target for the daemon to write into ([`prepare`]).
        prepared: Option<(PathBuf, std::fs::File)>,
        /// The daemon wrote the plaintext into the prepared file.
        written: bool,
    }

    impl Restore {
        pub fn new(to: PathBuf, show_progress: bool) -> Restore {
            Restore {
                to,
                tmp: None,
                size: 0,
                tx: None,
                writer: None,
                progress: None,
                show_progress,
                done: false,
                prepared: None,
                written: false,
            }
        }

        /// Open an empty private file beside the target and return a descriptor of it to pass
        /// to the daemon, which writes the plaintext into it (`wal-fetch`).
        pub fn prepare(&mut self) -> Result<std::os::fd::OwnedFd, String> {
            use std::os::unix::fs::OpenOptionsExt;
            // One name per target, cleared first: a fetch killed before its rename leaves at
            // most one such file beside %p, removed by the next fetch to it.
            let tmp = coffre::ops::snapshot::restore::partial_path_tagged(&self.to, "fetch");
            coffre::ops::snapshot::restore::remove_any(&tmp);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            let fd = f
                .try_clone()
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            self.prepared = Some((tmp, f));
            Ok(fd.into())
        }

        /// Remove the prepared file, unused.
        fn drop_prepared(&mut self) {
            if let Some((p, _)) = self.prepared.take() {
                coffre::ops::snapshot::restore::remove_any(&p);
            }
        }

        fn join(&mut self) -> Result<u64, String> {
            self.tx = None;
            if let Some(pb) = self.progress.take() {
                pb.finish_and_clear();
            }
            match self.writer.take() {
                None => Err("nothing was restored".into()),
                Some(h) => match h.join() {
                    Ok(Ok(n)) => Ok(n),
                    Ok(Err(e)) => Err(format!("cannot write {}: {e}", self.to.display())),
                    Err(_) => Err(format!("the writer of {} stopped", self.to.display())),
                },
            }
        }
    }

    impl RestoreWriter for Restore {
        fn begin(&mut self, b: &Begin) -> Result<(), String> {
            if self.writer.is_some() || self.written {
                return Err("the daemon began a second restore on one request".into());
            }
            // The daemon sends the bytes instead of writing them into the prepared file.
            self.drop_prepared();
            let tmp = coffre::ops::snapshot::restore::partial_path(&self.to, &b.snapshot);
            coffre::ops::snapshot::restore::remove_any(&tmp);
            let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(4);
            let t = tmp.clone();
            let kind = b.kind;
            let h = std::thread::Builder::new()
                .name("coffre-restore-write".into())
                .spawn(move || match kind {
                    SnapshotKind::File | SnapshotKind::Wal => {
                        coffre::ops::snapshot::restore::write_file(rx, &t)
                    }
                    SnapshotKind::Directory => coffre::ops::snapshot::restore::unpack_tar(rx, &t),
                })
                .map_err(|e| format!("cannot start the writer: {e}"))?;
            self.tmp = Some(tmp);
            self.size = b.size;
            self.tx = Some(tx);
            self.writer = Some(h);
            if self.show_progress {
                let pb = indicatif::ProgressBar::new(b.size);
                pb.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                self.progress = Some(pb);
            }
            Ok(())
        }

        fn data(&mut self, bytes: Vec<u8>) -> Result<(), String> {
            let n = bytes.len() as u64;
            let sent = match &self.tx {
                Some(tx) => tx.send(Bytes::from(bytes)).is_ok(),
                None => return Err("restored data before its header".into()),
            };
            if !sent {
                // The writer stopped: its error says why.
                let e = self
                    .join()
                    .err()
                    .unwrap_or_else(|| "the writer stopped".into());
                self.abort();
                return Err(e);
            }
            if let Some(pb) = &self.progress {
                pb.inc(n);
            }
            Ok(())
        }

        fn written(&mut self, w: &Written) -> Result<(), String> {
            let Some((tmp, f)) = self.prepared.take() else {
                return Err("the daemon wrote into a file that was not passed".into());
            };
            if self.writer.is_some() || self.written {
                coffre::ops::snapshot::restore::remove_any(&tmp);
                return Err("the daemon began a second restore on one request".into());
            }
            let n = f.metadata().map(|m| m.len());
            drop(f);
            self.tmp = Some(tmp);
            match n {
                Ok(n) if n == w.size => {
                    self.size = n;
                    self.written = true;
                    Ok(())
                }
                Ok(n) => {
                    self.abort();
                    Err(format!(
                        "the daemon wrote {n} bytes of the {} it announced; nothing was left at {}",
                        w.size,
                        self.to.display()
                    ))
                }
                Err(e) => {
                    self.abort();
                    Err(format!("cannot check the file written: {e}"))
                }
            }
        }

        fn finish(&mut self) -> Result<(), String> {
            if self.written {
                let Some(tmp) = self.tmp.clone() else {
                    return Err("nothing was restored".into());
                };
                if let Err(e) = coffre::ops::snapshot::restore::rename_into_place(&tmp, &self.to) {
                    self.abort();
                    return Err(format!(
                        "cannot move the WAL file to {}: {e}; nothing was left there",
                        self.to.display()
                    ));
                }
                self.done = true;
                return Ok(());
            }
            self.drop_prepared();
            let n = match self.join() {
                Ok(n) => n,
                Err(e) => {
                    self.abort();
                    return Err(e);
                }
            };
            let Some(tmp) = self.tmp.clone() else {
                return Err("nothing was restored".into());
            };
            if n != self.size {
                self.abort();
                return Err(format!(
                    "received {n} bytes of the {} the snapshot holds; nothing was left at {}",
                    self.size,
                    self.to.display()
                ));
            }
            if let Err(e) = coffre::ops::snapshot::restore::rename_into_place(&tmp, &self.to) {
                self.abort();
                return Err(format!(
                    "cannot move the restored snapshot to {}: {e}; nothing was left there",
                    self.to.display()
                ));
            }
            self.done = true;
            Ok(())
        }

        fn abort(&mut self) {
            self.drop_prepared();
            if self.writer.is_some() {
                let _ = self.join();
            }
            if let Some(t) = self.tmp.take() {
                coffre::ops::snapshot::restore::remove_any(&t);
            }
        }
    }

    impl Drop for Restore {
        fn drop(&mut self) {
            if !self.done {
                self.abort();
            }
        }
    }
}
