//! `coffre backup`: protect one file or folder now. When the path is an entry of the source's
//! own folder (what the daemon's intake would take), the intake's journal records it as done
//! under the identity the intake keys it by (path, size, mtime, inode), so that the intake does
//! not protect it a second time; a file or folder changed since is a new snapshot and is taken.

use anyhow::{bail, Result};

use super::args::BackupArgs;
use super::ctx::{exit, Ctx};
use super::out::{errln, outln};
use crate::ids::SnapshotId;
use crate::ops::snapshot::protect::Protection;
use crate::Coffre;

pub(super) async fn run(app: &Coffre, a: &BackupArgs, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    let BackupArgs { source, path, json } = a;
    let before = intake_key(app, source, path);
    let out = crate::ops::snapshot::protect::protect(app, source, path).await?;
    if let Some(key) = before {
        if let Err(e) = record_for_intake(app, source, key, &out.manifest.snapshot) {
            errln!(
                w,
                "warning: the daemon's intake may protect {} again: {e}",
                path.display()
            );
        }
    }
    if *json {
        w.json(&BackupJson {
            snapshot: &out.manifest.snapshot,
            outcome: &out,
        })?;
    } else {
        outln!(w, "{}", out.manifest.snapshot);
    }
    for f in &out.failed {
        errln!(
            w,
            "warning: store `{}` did not receive snapshot {}: {}",
            f.store,
            out.manifest.snapshot,
            f.error
        );
    }
    if out.protection == Protection::Degraded {
        errln!(w,
                "warning: snapshot {} is degraded: committed in {} of {} stores (at least min-sites sites)",
                out.manifest.snapshot,
                out.committed.len(),
                app.stores.len()
            );
        return Ok(exit::DEGRADED);
    }
    Ok(exit::OK)
}

/// `backup --json`: the snapshot id at the top, then the outcome's own fields (manifest,
/// stores committed and failed, protection, epoch, planned expiry).
#[derive(serde::Serialize)]
struct BackupJson<'a> {
    snapshot: &'a SnapshotId,
    #[serde(flatten)]
    outcome: &'a crate::ops::snapshot::protect::Outcome,
}

/// The intake's journal key of `path` when it is an entry of `source`'s folder, named as the
/// intake names it (the configured folder joined with the entry's name).
fn intake_key(app: &Coffre, source: &str, path: &std::path::Path) -> Option<crate::journal::Key> {
    let src = app.config.source(source)?;
    let root = std::fs::canonicalize(&src.path).ok()?;
    let p = std::fs::canonicalize(path).ok()?;
    let name = p.file_name()?;
    if p.parent() != Some(root.as_path())
        || crate::ops::snapshot::protect::source::is_ignored_name(&name.to_string_lossy())
    {
        return None;
    }
    crate::ops::snapshot::protect::source::key_of(&src.path.join(name)).ok()
}

/// Record in the intake's journal that the entry `before` (its identity before the backup) is
/// protected as `id`, if it is still the same entry now.
fn record_for_intake(
    app: &Coffre,
    source: &str,
    before: crate::journal::Key,
    id: &SnapshotId,
) -> Result<()> {
    let now = crate::ops::snapshot::protect::source::key_of(&before.path)?;
    if now != before {
        bail!(
            "{} changed while it was protected; the intake takes the new version",
            before.path.display()
        );
    }
    let journal = crate::journal::Journal::open(&app.config.state_dir.join("journal.sqlite"))?;
    journal.mark_done(source, &now, id)?;
    Ok(())
}
