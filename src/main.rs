//! The `coffre` command: parses the CLI, starts tracing and the runtime, then runs the command
//! through the running daemon's control socket when one answers, or here under the state
//! folder's lock when none runs (`coffre::cli` holds the commands themselves).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use coffre::cli::{self, Command, Globals, KeysCommand};

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
/// run), and every other through the daemon or under the lock ([`cli::client::route`]).
async fn run(cli: Cli) -> Result<ExitCode> {
    let command = match &cli.command {
        Top::Run(command) => command,
        Top::Generate { what } => {
            manual::run(Cli::command(), what)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let globals = Globals {
        config: cli.config.clone(),
    };
    let g = &globals;
    match command {
        Command::CheckConfig(a) => cli::check_config::run(g, a),
        Command::Keys {
            command: KeysCommand::Init(a),
        } => cli::keys::init(g, a).await,
        Command::Keys {
            command: KeysCommand::Rotate(a),
        } if a.provider.is_some() => cli::keys::rotate(g, a).await,
        Command::Daemon => daemon(g).await,
        Command::Status(a) => return cli::status::run_local(g, a.json).await.map(ExitCode::from),
        Command::Restore(a) => return cli::restore_caller::routed(g, a).await.map(ExitCode::from),
        cmd => {
            let answer = cli::client::route(g, cmd).await?;
            return Ok(ExitCode::from(answer.code));
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

async fn daemon(g: &Globals) -> Result<()> {
    let stop = coffre::daemon::stop_signal()?;
    let config = g.load_config()?;
    coffre::daemon::run(g.config_path(), config, stop).await?;
    Ok(())
}
