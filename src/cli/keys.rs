//! `coffre keys`: key providers and epochs, wraps of another provider (through the daemon or
//! under the lock), and what runs here only: `keys init` (the master keys) and the rotation of a
//! file provider's master key.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::args::{KeysCommand, KeysInitArgs, KeysRotateArgs};
use super::ctx::{exit, Ctx, Globals};
use super::out::{outln, Out};
use crate::config::ProviderKind;
use crate::lock::{self, Role};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, command: &KeysCommand, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match command {
        // `keys init` runs in the caller's process only ([`init`]).
        KeysCommand::Init(_) => Ok(exit::OK),
        KeysCommand::Status { json } => status(app, w, *json),
        KeysCommand::Rotate(KeysRotateArgs {
            to_provider: Some(to),
            purpose,
            json,
            ..
        }) => {
            let n = crate::ops::lifecycle::rotate::add_provider_wraps(
                app,
                to,
                &ctx.actor.clone(),
                purpose,
            )
            .await?;
            if *json {
                w.json(&serde_json::json!({"provider": to, "key_objects_rewritten": n}))?;
            } else {
                outln!(w, "{n} snapshot key(s) now also wrapped by provider {to}");
            }
            Ok(exit::OK)
        }
        KeysCommand::Rotate(_) => bail!(
            "keys rotate needs either --provider NAME --new-master-key PATH, or --to-provider NAME"
        ),
    }
}

/// `keys status`: each provider's health and epochs (snapshots under each, due day).
fn status(app: &Coffre, w: &Out, json: bool) -> Result<u8> {
    // Snapshots per epoch, from the catalog's key objects.
    let mut per_epoch: std::collections::BTreeMap<String, u64> = Default::default();
    for k in app.catalog.all_keys()? {
        *per_epoch.entry(k.epoch.to_string()).or_default() += 1;
    }
    let out: Vec<serde_json::Value> = app
        .providers
        .iter()
        .map(|p| provider_status(p.as_ref(), &per_epoch))
        .collect();
    if json {
        w.json(&out)?;
        return Ok(exit::OK);
    }
    for p in &out {
        outln!(
            w,
            "provider {} ({}): {}",
            p["provider"].as_str().unwrap_or("?"),
            p["kind"].as_str().unwrap_or("?"),
            p["health"].as_str().unwrap_or("?")
        );
        for e in p["epochs"].as_array().into_iter().flatten() {
            outln!(
                w,
                "  epoch {:<24} snapshots {:>5}  {}",
                e["epoch"].as_str().unwrap_or("?"),
                e["snapshots"],
                epoch_fate(e)
            );
        }
    }
    Ok(exit::OK)
}

fn provider_status(
    p: &dyn crate::keys::KeyProvider,
    per_epoch: &std::collections::BTreeMap<String, u64>,
) -> serde_json::Value {
    let health = p
        .health()
        .map(|_| "ok".to_string())
        .unwrap_or_else(|e| e.to_string());
    let all = p.epochs().unwrap_or_default();
    // The object-authentication key is not an epoch snapshots expire with: shown apart
    // (crate::auth).
    let object_auth = all
        .iter()
        .any(|e| e.epoch.as_str() == crate::keys::OBJECT_AUTH_EPOCH);
    let epochs: Vec<_> = all
        .into_iter()
        .filter(|e| e.epoch.as_str() != crate::keys::OBJECT_AUTH_EPOCH)
        .map(|e| {
            let due = due_of(&e.epoch);
            serde_json::json!({
                "epoch": e.epoch,
                "created": e.created,
                "destroyed": e.destroyed,
                "snapshots": per_epoch.get(e.epoch.as_str()).copied().unwrap_or(0),
                "due": due,
            })
        })
        .collect();
    serde_json::json!({
        "provider": p.name(),
        "kind": p.kind(),
        "health": health,
        "object_auth_key": object_auth,
        "epochs": epochs,
    })
}

/// `destroyed <time>`, `due <day>`, or why neither.
fn epoch_fate(e: &serde_json::Value) -> String {
    match e["destroyed"].as_str() {
        Some(d) => format!("destroyed {d}"),
        None => match e["due"].as_str() {
            Some(due) => format!("due {due}"),
            None if e["epoch"].as_str().is_some_and(|x| x.starts_with("hold-")) => {
                "never while the legal hold lasts".to_string()
            }
            None => "no due day".to_string(),
        },
    }
}

/// When an epoch key is due to be destroyed: the start of the day after the one it stands for
/// (a snapshot epoch `2026-12-31.2` or an access-log epoch `audit-2033-12-01.1`); none for a
/// legal hold's epoch.
fn due_of(epoch: &crate::ids::EpochId) -> Option<String> {
    crate::retention::epoch_day(epoch)
        .or_else(|| crate::ops::lifecycle::audit_expire::epoch_day(epoch))
        .and_then(|d| d.next_day())
        .map(|d| format!("{d}T00:00:00Z"))
}

/// `keys init`, in the caller's process only: with `--to`, one new master key file; without,
/// every file provider's missing master key.
pub async fn init(globals: &Globals, a: &KeysInitArgs) -> Result<()> {
    match &a.to {
        Some(to) => keys_init_to(to),
        None => keys_init(globals).await,
    }
}

/// `keys rotate --provider`, in the caller's process only (the daemon must not run).
pub async fn rotate(globals: &Globals, a: &KeysRotateArgs) -> Result<()> {
    let (Some(provider), Some(new_key)) = (&a.provider, &a.new_master_key) else {
        bail!(
            "keys rotate needs either --provider NAME --new-master-key PATH, or --to-provider NAME"
        );
    };
    rotate_master_key(globals, provider, new_key, a.create, &a.purpose, a.json).await
}

/// `keys init`: create each file provider's master key that does not exist yet (a systemd
/// credential's source file is created with `keys init --to`), then check every provider.
async fn keys_init(globals: &Globals) -> Result<()> {
    let mut c = globals.load_config()?;
    // A master key that is a systemd credential exists only inside the running service:
    // here it is its source file, which `keys init --to` creates.
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        for k in c.key_providers.iter_mut() {
            let Some(cred) = k.master_key_credential.clone() else {
                continue;
            };
            let Some(src) = crate::config::credential_source(&cred) else {
                bail!(
                    "key-provider {}: master-key-credential = \"{cred}\" is not a credential the coffre unit loads: it loads every file of {} as {}<file>. Name it {}master.key, then create that file with `coffre keys init --to {}/master.key`",
                    k.name,
                    crate::config::CREDENTIALS_SOURCE_DIR,
                    crate::config::CREDENTIAL_PREFIX,
                    crate::config::CREDENTIAL_PREFIX,
                    crate::config::CREDENTIALS_SOURCE_DIR
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
                    crate::keys::file::create_master_key(path)
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
    globals: &Globals,
    provider: &str,
    new_key: &std::path::Path,
    create: bool,
    purpose: &str,
    json: bool,
) -> Result<()> {
    let config = globals.load_config()?;
    let _lock = lock::acquire(&config.state_dir, Role::Command)?;
    let r = crate::ops::lifecycle::rotate::rotate_master_key_everywhere(
        &config,
        provider,
        new_key,
        create,
        &crate::actor::current_user(),
        purpose,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
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
            crate::config::CREDENTIALS_SOURCE_DIR
        );
    }
    crate::keys::file::create_master_key(to)
        .with_context(|| format!("creating the master key {}", to.display()))?;
    println!(
        "created master key {} (mode 0600): back it up off-site, it is needed for every restore",
        to.display()
    );
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned());
    let under_unit = to
        .parent()
        .is_some_and(|p| p == std::path::Path::new(crate::config::CREDENTIALS_SOURCE_DIR));
    match name {
        Some(n) if under_unit => println!(
            "the coffre unit loads it as the credential {}{n}: set master-key-credential = \"{}{n}\" in the file provider",
            crate::config::CREDENTIAL_PREFIX,
            crate::config::CREDENTIAL_PREFIX
        ),
        _ => println!(
            "set master-key = \"{}\" in the file provider, or move it to {}/NAME (the credential {}NAME)",
            to.display(),
            crate::config::CREDENTIALS_SOURCE_DIR,
            crate::config::CREDENTIAL_PREFIX
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(s: &str) -> crate::ids::EpochId {
        crate::ids::EpochId::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn snapshot_and_access_log_epochs_are_due_the_day_after_and_holds_never() {
        assert_eq!(
            due_of(&epoch("2026-12-31.2")).as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            due_of(&epoch("audit-2033-12-01.1")).as_deref(),
            Some("2033-12-02T00:00:00Z")
        );
        assert_eq!(due_of(&epoch("hold-01M8T9P5ADDMESVD5NXHW8FV3Z")), None);
    }
}
