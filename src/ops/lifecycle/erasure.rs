//! The catch-up of earlier erasures, for a provider that keeps a replicated keyring (the `file`
//! provider), run before every retention run, shred and access-log expiry:
//!
//! - after an epoch key is destroyed, every store's keyring copy must be replaced by the new
//!   keyring (which no longer holds the key): [`crate::ops::lifecycle::destroy`] pushes it and records each
//!   store in the destruction record; a push that failed leaves a lasting alert (shown by
//!   `status`) and is retried here until it succeeds, when the records that named it are
//!   updated;
//! - a crashed atomic write of the keyring leaves `<name>.tmp-<pid>` beside it, holding keys that
//!   may since have been destroyed: stale ones are removed.
//!
//! May call: app, catalog, audit, config, fsutil and `crate::ops::lifecycle::destroy` (records, alerts).
//! Nothing here logs key material: only store names, epoch ids and paths.

use std::path::{Path, PathBuf};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::config::ProviderKind;

pub use crate::ops::lifecycle::destroy::KeyringPush;
use crate::ops::lifecycle::destroy::{
    keyring_alert as alert_key, KEYRING_ALERT_PREFIX as ALERT_PREFIX,
};

/// A temporary keyring older than this is stale even if its writer's pid is alive again (pids are
/// reused; an atomic write takes milliseconds).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Retry the keyring pushes that failed after earlier destructions. Returns what still fails.
pub(crate) async fn retry_pending(app: &Coffre, actor: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let pending: Vec<String> = match app.catalog.alerts() {
        Ok(a) => a
            .into_iter()
            .filter_map(|(k, _, _)| k.strip_prefix(ALERT_PREFIX).map(str::to_string))
            .collect(),
        Err(e) => return vec![format!("pending keyring pushes cannot be read: {e}")],
    };
    for name in pending {
        let Some(s) = app.store(&name) else {
            let why = format!(
                "store `{name}` may still hold a keyring copy with destroyed keys, and it is no longer configured: delete its `keyring` folder by hand, then clear this alert by configuring it again for one run"
            );
            let _ = app.catalog.set_alert(&alert_key(&name), &why);
            errors.push(why);
            continue;
        };
        match app.push_keyrings(s).await {
            Ok(()) => {
                let _ = app.audit.append(NewEntry {
                    actor: actor.into(),
                    action: "keyring-push".into(),
                    target: Target {
                        store: Some(name.clone()),
                        ..Default::default()
                    },
                    purpose: "erasure: retry of a keyring push that failed after a destruction"
                        .into(),
                    outcome: "ok: the store's keyring copy no longer holds destroyed keys".into(),
                    exposes: None,
                });
                tracing::info!(store = %name, "keyring copy replaced on retry: erasure complete in this store");
                if let Err(e) = mark_pushed(app, &name).await {
                    errors.push(e.to_string());
                }
                let _ = app.catalog.clear_alert(&alert_key(&name));
            }
            Err(e) => {
                tracing::error!(store = %name, error = %e, "keyring copy still not replaced: erasure incomplete in this store");
                errors.push(format!(
                    "store `{name}` still holds an old keyring copy (push failed again: {e}); retried at the next run"
                ));
            }
        }
    }
    errors
}

/// Update the destruction records that said `store`'s keyring push failed.
async fn mark_pushed(app: &Coffre, store: &str) -> Result<(), crate::catalog::CatalogError> {
    let texts = app.catalog.destructions()?;
    for text in texts {
        let Ok(mut r) =
            serde_json::from_str::<crate::ops::lifecycle::destroy::DestructionRecord>(&text)
        else {
            continue;
        };
        let mut changed = false;
        for k in r
            .keyrings
            .iter_mut()
            .filter(|k| k.store == store && !k.pushed)
        {
            k.pushed = true;
            k.detail = format!(
                "keyring copy replaced on retry at {}",
                crate::clock::now_rfc3339()
            );
            changed = true;
        }
        if changed {
            r.complete = r.is_complete();
            crate::ops::lifecycle::destroy::keep_record(app, &r).await?;
        }
    }
    Ok(())
}

/// Temporary keyrings (`<stem>.tmp-<pid>`) beside `keyring` that no running write owns.
fn stale_temporaries(keyring: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(stem)) = (keyring.parent(), keyring.file_stem()) else {
        return Ok(vec![]);
    };
    let prefix = format!("{}.tmp-", stem.to_string_lossy());
    let own = std::process::id();
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        let writer_alive = pid == own || Path::new("/proc").join(pid.to_string()).exists();
        if old || !writer_alive {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Remove the stale temporary keyrings of every `file` provider (left by a crashed atomic write:
/// they hold keys that may since have been destroyed). Returns the paths removed; failures are
/// in the second list.
pub(crate) fn sweep_stale_keyrings(app: &Coffre, actor: &str) -> (Vec<PathBuf>, Vec<String>) {
    let (mut removed, mut errors) = (Vec::new(), Vec::new());
    for k in &app.config.key_providers {
        if k.kind != ProviderKind::File {
            continue;
        }
        let keyring = app.config.keyring_path(k);
        let stale = match stale_temporaries(&keyring) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!(
                    "cannot look for stale temporary keyrings beside {}: {e}",
                    keyring.display()
                ));
                continue;
            }
        };
        for p in stale {
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!(
                    "stale temporary keyring {} (it may hold destroyed keys) cannot be removed: {e}; remove it by hand",
                    p.display()
                )),
            }
        }
        if removed.iter().any(|p| p.parent() == keyring.parent()) {
            let _ = crate::fsutil::sync_dir(&keyring);
        }
    }
    for e in &errors {
        tracing::error!(error = %e, "stale temporary keyring");
    }
    if !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            "stale temporary keyrings removed (left by a crashed write)"
        );
        let _ = app.audit.append(NewEntry {
            actor: actor.into(),
            action: "keyring-sweep".into(),
            target: Target::default(),
            purpose: "erasure: temporary keyrings left by a crashed write may hold destroyed keys"
                .into(),
            outcome: format!(
                "ok: removed {}",
                removed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            exposes: None,
        });
    }
    (removed, errors)
}

/// Before a retention run, shred or expiry: sweep stale temporary keyrings and retry the keyring
/// pushes that failed earlier. Returns what still fails (each also a lasting alert or an error
/// in the logs).
pub async fn catch_up(app: &Coffre, actor: &str) -> Vec<String> {
    let (_, mut errors) = sweep_stale_keyrings(app, actor);
    errors.extend(retry_pending(app, actor).await);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_temporaries_of_this_keyring_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("local.keyring");
        std::fs::write(&ring, b"ring").unwrap();
        // A crashed writer (no such process), a live one (this process), another keyring's,
        // and unrelated names.
        let dead = dir.path().join("local.tmp-4194305");
        let live = dir.path().join(format!("local.tmp-{}", std::process::id()));
        for p in [
            &dead,
            &live,
            &dir.path().join("other.tmp-4194305"),
            &dir.path().join("local.tmp-x"),
            &dir.path().join("local.keyring.bak"),
        ] {
            std::fs::write(p, b"old ring").unwrap();
        }
        assert_eq!(stale_temporaries(&ring).unwrap(), vec![dead]);
        assert!(stale_temporaries(&dir.path().join("none/local.keyring"))
            .unwrap()
            .is_empty());
    }
}
