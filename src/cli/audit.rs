//! `coffre audit verify|expire|show`: the access log.

use anyhow::{bail, Result};

use super::*;

pub(super) async fn run(app: &Coffre, cmd: &Command, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match cmd {
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let n = app.audit.verify()?;
            outln!(
                w,
                "access log {}: {} entries, chain intact",
                app.audit.path().display(),
                n
            );
            let findings = crate::ops::audit_replicate::verify_stores(app)
                .await
                .map_err(anyhow::Error::msg)?;
            for f in &findings {
                outln!(
                    w,
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
            outln!(w, "store copies agree with the local log");
            Ok(exit::OK)
        }
        Command::Audit {
            command: AuditCommand::Expire { json },
        } => {
            let now = time::OffsetDateTime::now_utc();
            let r = crate::ops::audit_expire::expire(app, now, &ctx.actor.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            if *json {
                w.json(&r)?;
            } else {
                match &r.local {
                    Some(p) => outln!(
                        w,
                        "local log: entries {}-{} removed (older than audit.retention)",
                        p.first,
                        p.through
                    ),
                    None => outln!(w, "local log: no entry older than audit.retention"),
                }
                for d in &r.epochs {
                    outln!(
                        w,
                        "epoch {} destroyed: {} sealed segment copies deleted (record {})",
                        d.epoch,
                        d.copies.len(),
                        d.record
                    );
                }
                for (e, day) in &r.upcoming {
                    outln!(w, "epoch {e}: kept until the end of {day}");
                }
            }
            if let Some(e) = r.errors.first() {
                bail!(
                    "{} access-log epoch(s) not destroyed; first: {e}",
                    r.errors.len()
                );
            }
            Ok(exit::OK)
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
                .filter(|e| actor.as_ref().is_none_or(|a| actor_matches(&e.actor, a)))
                .filter(|e| action.as_ref().is_none_or(|a| &e.action == a))
                .collect();
            if *json {
                w.json(&entries)?;
            } else {
                for e in &entries {
                    outln!(
                        w,
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
            Ok(exit::OK)
        }
        other => bail!("internal error: `{}` was routed to `audit`", other.action()),
    }
}

/// `--actor alice` matches alice's own runs and hers through the daemon (`alice (via
/// coffre-daemon)`): the person, whatever the channel.
fn actor_matches(recorded: &str, person: &str) -> bool {
    recorded == person
        || recorded
            .strip_prefix(person)
            .is_some_and(|rest| rest.starts_with(" (via "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_matches_the_person_on_every_channel_and_nobody_else() {
        assert!(actor_matches("root", "root"));
        assert!(actor_matches("root (via coffre-daemon)", "root"));
        assert!(!actor_matches("rooted (via coffre-daemon)", "root"));
        assert!(!actor_matches("alice", "root"));
        assert!(actor_matches(
            "alice (via coffre-daemon)",
            "alice (via coffre-daemon)"
        ));
    }
}
