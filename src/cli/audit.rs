//! `coffre audit verify|expire|show`: the access log.

use anyhow::{bail, Result};

use super::args::AuditCommand;
use super::ctx::{exit, Ctx};
use super::out::{errln, outln, Out};
use crate::Coffre;

pub(super) async fn run(app: &Coffre, command: &AuditCommand, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    match command {
        AuditCommand::Verify => verify(app, w).await,
        AuditCommand::Expire { json } => expire(app, ctx, *json).await,
        AuditCommand::Show {
            since,
            until,
            snapshot,
            actor,
            action,
            json,
        } => {
            let filter = Filter {
                since: since.as_deref(),
                until: until.as_deref(),
                snapshot: snapshot.as_deref(),
                actor: actor.as_deref(),
                action: action.as_deref(),
            };
            show(app, w, &filter, *json)
        }
    }
}

/// `audit verify`: the local chain, then every store's sealed copy against it.
async fn verify(app: &Coffre, w: &Out) -> Result<u8> {
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

/// `audit expire`: the access log's own retention, now.
async fn expire(app: &Coffre, ctx: &Ctx, json: bool) -> Result<u8> {
    let w = &ctx.out;
    let now = time::OffsetDateTime::now_utc();
    let r = crate::ops::lifecycle::audit_expire::expire(app, now, &ctx.actor.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    if json {
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

/// What `audit show` keeps.
struct Filter<'a> {
    since: Option<&'a str>,
    until: Option<&'a str>,
    snapshot: Option<&'a str>,
    actor: Option<&'a str>,
    action: Option<&'a str>,
}

/// Does the entry's `action` pass `--action filter`: the same action, or one of a family
/// (`hold` for `hold-add` and `hold-release`)? `None`: the filter is no known action (exit 2).
fn action_matcher(filter: &str) -> Option<impl Fn(&str) -> bool + '_> {
    let family = crate::audit::action_families().contains(&filter);
    if !family && !crate::audit::ACTIONS.contains(&filter) {
        return None;
    }
    Some(move |action: &str| {
        action == filter
            || (family
                && action
                    .strip_prefix(filter)
                    .is_some_and(|rest| rest.starts_with('-')))
    })
}

/// `audit show`: the entries that pass the filter, oldest first.
fn show(app: &Coffre, w: &Out, f: &Filter, json: bool) -> Result<u8> {
    let action = match f.action.map(action_matcher) {
        Some(None) => {
            errln!(
                w,
                "error: --action `{}` is no action of the access log: use one of {}, or a family of them: {}",
                f.action.unwrap_or_default(),
                crate::audit::ACTIONS.join(", "),
                crate::audit::action_families().join(", ")
            );
            return Ok(exit::USAGE);
        }
        Some(Some(m)) => Some(m),
        None => None,
    };
    let now = time::OffsetDateTime::now_utc();
    let since = f
        .since
        .map(|t| time_bound(t, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let until = f
        .until
        .map(|t| time_bound(t, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until: {e}"))?;
    let entries: Vec<_> = app
        .audit
        .entries()?
        .into_iter()
        .filter(|e| in_window(&e.time, since, until))
        .filter(|e| {
            f.snapshot
                .is_none_or(|s| e.target.snapshot.as_deref() == Some(s))
        })
        .filter(|e| f.actor.is_none_or(|a| actor_matches(&e.actor, a)))
        .filter(|e| action.as_ref().is_none_or(|m| m(&e.action)))
        .collect();
    if json {
        w.json(&entries)?;
        return Ok(exit::OK);
    }
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
    Ok(exit::OK)
}

/// `--actor alice` matches alice's own runs and hers through the daemon (`alice (via
/// coffre-daemon)`): the person, whatever the channel.
fn actor_matches(recorded: &str, person: &str) -> bool {
    recorded == person
        || recorded
            .strip_prefix(person)
            .is_some_and(|rest| rest.starts_with(" (via "))
}

/// A `--since`/`--until` of `audit show` that is not a time.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a time: give an RFC 3339 time (2026-12-01T08:00:00Z), a date (2026-12-01) or a duration before now (24h, 7d)")]
struct NotATime(String);

/// A bound of `audit show`: an RFC 3339 time, a date (its midnight UTC), or a duration before
/// `now` (`24h`, `7d`, `90min`).
fn time_bound(text: &str, now: time::OffsetDateTime) -> Result<time::OffsetDateTime, NotATime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(text, &day) {
        return Ok(d.midnight().assume_utc());
    }
    if let Ok(d) = humantime::parse_duration(text) {
        if let Some(t) = time::Duration::try_from(d)
            .ok()
            .and_then(|d| now.checked_sub(d))
        {
            return Ok(t);
        }
    }
    Err(NotATime(text.to_string()))
}

/// Whether an entry's time is in [since, until); an entry whose time does not parse is shown
/// only when no bound is given.
fn in_window(
    time: &str,
    since: Option<time::OffsetDateTime>,
    until: Option<time::OffsetDateTime>,
) -> bool {
    if since.is_none() && until.is_none() {
        return true;
    }
    let Ok(t) = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
    else {
        return false;
    };
    since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_are_times_dates_or_durations_and_anything_else_is_refused() {
        let now = time::macros::datetime!(2026-12-02 12:00 UTC);
        assert_eq!(
            time_bound("2026-12-01T08:00:00Z", now).unwrap(),
            time::macros::datetime!(2026-12-01 08:00 UTC)
        );
        assert_eq!(
            time_bound("2026-12-01", now).unwrap(),
            time::macros::datetime!(2026-12-01 00:00 UTC)
        );
        assert_eq!(
            time_bound("24h", now).unwrap(),
            time::macros::datetime!(2026-12-01 12:00 UTC)
        );
        let e = time_bound("yesterday", now).unwrap_err();
        assert!(e.to_string().contains("not a time"), "{e}");
        assert!(in_window(
            "2026-12-01T10:00:00.5Z",
            Some(time::macros::datetime!(2026-12-01 08:00 UTC)),
            Some(now)
        ));
        assert!(!in_window("2026-12-02T12:00:00Z", None, Some(now)));
    }

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
