//! `coffre restore` in the caller's process: refused before anything is restored when it could
//! only fail at the end, routed to the daemon or run here ([`super::client::route`]), then for
//! a point-in-time restore the recovery settings (and with `--replay` the replay) once the base
//! backup is in place. The handler that restores is `restore`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::args::{ArchiveMode, Command, RestoreArgs};
use super::ctx::{exit, Globals};

/// `coffre restore` from the command line: refused before anything is restored when it could
/// only fail at the end, then through the daemon or here ([`super::client::route`]); a
/// point-in-time restore's recovery settings are written here, by the caller, afterwards.
pub async fn routed(globals: &Globals, a: &RestoreArgs) -> Result<u8> {
    // Before anything is restored: a replay as root could only fail at the end.
    if a.replay && nix::unistd::geteuid().is_root() {
        return Err(crate::ops::pitr::recovery::PitrError::ReplayAsRoot.into());
    }
    let target = a.pitr_target()?;
    if target.is_some() {
        pitr_command(globals, a, "check")?;
    }
    let answer = super::client::route(globals, &Command::Restore(a.clone())).await?;
    if answer.code == exit::OK {
        if let Some(target) = target {
            pitr_settings(globals, a, &target, answer.session)?;
        }
    }
    Ok(answer.code)
}

/// The restore_command of a point-in-time restore: this binary, the config and socket it was
/// given, the source and the recovery session. Also made before anything is restored, so that a
/// path PostgreSQL's configuration cannot hold is refused first.
fn pitr_command(globals: &Globals, a: &RestoreArgs, session: &str) -> Result<String> {
    let exe = std::env::current_exe().context("where is this coffre binary")?;
    let config = globals
        .config
        .as_deref()
        .map(std::path::absolute)
        .transpose()?;
    let socket = std::env::var_os("COFFRE_SOCKET").map(PathBuf::from);
    Ok(crate::ops::pitr::recovery::restore_command(
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
    globals: &Globals,
    a: &RestoreArgs,
    target: &crate::ops::pitr::recovery::Target,
    session: Option<String>,
) -> Result<()> {
    use crate::ops::pitr::recovery as pitr;
    // One recovery session per restore, opened by coffre (the daemon, or this process without
    // one) with the restore: its WAL fetches are one access entry and a summary.
    let session = session.ok_or_else(|| {
        anyhow::anyhow!("the restore opened no recovery session for the replay (is the daemon an older coffre? use the coffre binary of the daemon's version)")
    })?;
    let command = pitr_command(globals, a, &session)?;
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
        let after = pitr::after_replay(&to, mode == ArchiveMode::Preserve)?;
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
fn archive_note(after: &crate::ops::pitr::recovery::AfterReplay, source: &str) -> String {
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
