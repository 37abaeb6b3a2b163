//! `coffre check-config`: the config file's problems, then what it needs from this host. Runs
//! here only, never through the daemon.

use anyhow::{bail, Result};

use super::ctx::Globals;
use crate::config::Config;

/// `check-config`: every problem of the file in one pass, then (unless `--portable`) what it
/// needs from this host, for the account the service runs as.
pub fn run(globals: &Globals, a: &super::args::CheckConfigArgs) -> Result<()> {
    let (portable, user) = (a.portable, a.user.as_deref());
    use crate::config::host::{host_problems, Account};
    let path = globals.config_path();
    let text =
        std::fs::read_to_string(&path).map_err(|source| crate::config::ConfigError::Read {
            path: path.clone(),
            source,
        })?;
    let who = match (portable, user) {
        (true, _) => None,
        (false, Some(u)) => Some(Account::named(u).map_err(anyhow::Error::msg)?),
        (false, None) => Some(Account::current()),
    };
    let (config, mut problems) =
        Config::check_text(&text, Some(&crate::config::config_folder(&path)));
    if let (Some(c), Some(who)) = (&config, &who) {
        for p in host_problems(c, who) {
            if !problems.iter().any(|q| q.key == p.key) {
                problems.push(p);
            }
        }
    }
    if !problems.is_empty() {
        let mut e = crate::config::ConfigError::Invalid {
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
