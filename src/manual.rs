//! What an ops team reads and types: the help text every command shares (exit status, `--json`),
//! and the hidden `coffre generate` that writes the man pages and shell completions from the
//! same clap definitions, so that the packaged manual never disagrees with `--help`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use clap_complete::Shell;

use coffre::cli::exit;

/// `coffre generate ...`: for packaging (packaging/build-deb.sh), hidden from help and manual.
#[derive(Subcommand)]
pub enum Generate {
    /// Man pages: coffre.1 and one page per subcommand (coffre-backup.1, coffre-keys-rotate.1...).
    Man {
        /// Folder to write into (created if missing).
        dir: PathBuf,
    },
    /// Shell completions: coffre.bash, _coffre (zsh) and coffre.fish.
    Completions {
        /// Folder to write into (created if missing).
        dir: PathBuf,
    },
}

const JSON_HELP: &str =
    "Print the result as JSON on stdout (errors and logs stay on stderr, as text)";

/// The exit codes, as (code, meaning): the same for a local run and one through the daemon.
fn exit_codes() -> [(u8, &'static str); 6] {
    [
        (exit::OK, "success"),
        (exit::FAILURE, "failure; the error is printed on stderr"),
        (
            exit::USAGE,
            "usage error: bad arguments, or a request the daemon's control socket cannot read",
        ),
        (
            exit::DEGRADED,
            "degraded: coffre backup committed the snapshot in min-sites sites but not in every store",
        ),
        (
            exit::DRY_RUN,
            "nothing done on purpose: a dry run (coffre shred without --yes) printed what it would do",
        ),
        (
            exit::REFUSED,
            "refused by the daemon's control socket: the caller is not an operator, or the command may not go through it",
        ),
    ]
}

fn exit_status_long() -> String {
    let mut s = String::from("Exit status:\n");
    for (code, meaning) in exit_codes() {
        s.push_str(&format!("  {code:<3} {meaning}\n"));
    }
    s.push_str("\nSee coffre(1) and the coffre-<command>(1) man pages.");
    s
}

fn exit_status_short() -> String {
    let codes: Vec<String> = exit_codes()
        .iter()
        .map(|(c, m)| format!("{c} {}", m.split([':', ';', ' ']).next().unwrap_or(m)))
        .collect();
    format!("Exit status: {} (details: --help)", codes.join(", "))
}

/// The CLI as clap builds it, plus what every command shares: the exit status in its help, and
/// a description of `--json` wherever the flag exists. Used to parse and to generate.
pub fn annotate(cmd: clap::Command) -> clap::Command {
    let cmd = if cmd.get_arguments().any(|a| a.get_id() == "json") {
        cmd.mut_arg("json", |a| match a.get_help() {
            Some(_) => a,
            None => a.help(JSON_HELP),
        })
    } else {
        cmd
    };
    let cmd = if cmd.has_subcommands() {
        cmd.mut_subcommands(annotate)
    } else {
        cmd
    };
    cmd.after_help(exit_status_short())
        .after_long_help(exit_status_long())
}

/// Write what `what` asks for, from the CLI `root` (as derived: annotated here).
pub fn run(root: clap::Command, what: &Generate) -> Result<()> {
    let root = annotate(public(&root));
    let (dir, written) = match what {
        Generate::Man { dir } => (dir, man_pages(root, dir)),
        Generate::Completions { dir } => (dir, completions(root, dir)),
    };
    for p in written.with_context(|| format!("writing into {}", dir.display()))? {
        println!("{}", p.display());
    }
    Ok(())
}

/// The CLI without its hidden commands, which clap_complete would otherwise offer.
fn public(root: &clap::Command) -> clap::Command {
    let mut public = clap::Command::new("coffre")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(root.is_subcommand_required_set())
        .args(root.get_arguments().cloned())
        .subcommands(root.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = root.get_about() {
        public = public.about(about.clone());
    }
    public
}

fn man_pages(root: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // Building names the subcommands coffre-backup, coffre-keys-rotate... (their pages' names).
    let mut root = root.disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    man_page_tree(&root, dir, &mut written)?;
    Ok(written)
}

fn man_page_tree(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    // The exit codes get their own EXIT STATUS section (a list), not clap_mangen's EXTRA (text).
    let man = clap_mangen::Man::new(
        cmd.clone()
            .after_help(None::<&str>)
            .after_long_help(None::<&str>),
    )
    .manual("coffre manual")
    .source(concat!("coffre ", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render(&mut page)?;
    let page = String::from_utf8_lossy(&page).into_owned();
    let section = exit_status_roff(cmd.get_arguments().any(|a| a.get_id() == "json"));
    let page = match page.find(".SH VERSION") {
        Some(at) => format!("{}{section}{}", &page[..at], &page[at..]),
        None => format!("{page}{section}"),
    };
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_page_tree(sub, dir, written)?;
    }
    Ok(())
}

fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

fn exit_status_roff(json: bool) -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit_codes() {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_escape(meaning)));
    }
    if json {
        s.push_str(".PP\nWith \\fB\\-\\-json\\fR, the result is one JSON document on stdout; errors and logs stay on stderr, and the exit status is the same.\n");
    }
    s
}

fn completions(mut root: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(shell, &mut root, "coffre", dir)?);
    }
    Ok(written)
}
