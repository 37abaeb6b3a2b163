//! `coffre keys status|rotate`: key providers and epochs; wraps of another provider.

use anyhow::{bail, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::Keys {
            command: KeysCommand::Status { json },
        } => status(app, w, *json),
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    to_provider: Some(to),
                    purpose,
                    json,
                    ..
                },
        } => {
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
        Command::Keys {
            command: KeysCommand::Rotate { .. },
        } => bail!(
            "keys rotate needs either --provider NAME --new-master-key PATH, or --to-provider NAME"
        ),
        other => bail!("internal error: `{}` was routed to `keys`", other.action()),
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
