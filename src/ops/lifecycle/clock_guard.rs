//! The clock guard of every destruction: retention, early shred and the access log's expiry
//! refuse to run when the clock moved forward more than `shred.max-clock-jump` since coffre last
//! saw it, whichever entry point calls them (the daemon's loop, `coffre retention run`,
//! `coffre shred`, `coffre audit expire`, the control socket). A clock set ten years ahead would
//! otherwise make every epoch due at once and shred every backup.
//!
//! The last time seen is kept in the journal (`<state-dir>/journal.sqlite`, shared with the
//! daemon's own guard); the newest snapshot in the catalog also counts, so a host where no
//! destruction ever ran still has a reference. A jumped time is never recorded, so running again
//! (or restarting) does not launder it.

use crate::app::Coffre;
use crate::journal::Journal;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    #[error("the clock jumped forward: it says {now}, but coffre last saw {last}, {ahead} earlier, more than shred.max-clock-jump ({max}). Nothing was destroyed, because a wrong clock makes every epoch due at once. Check the system clock; if it is right (coffre really did not run for that long), raise shred.max-clock-jump for one run")]
    Jumped {
        now: String,
        last: String,
        ahead: String,
        max: String,
    },
    #[error("the clock guard cannot read or record the last time coffre saw ({reason}); nothing was destroyed. Check the state folder")]
    Unreadable { reason: String },
}

/// The lasting alert raised while the guard refuses (cleared by the next run it allows).
const ALERT_KEY: &str = "clock-jump";

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix}"))
}

/// The latest time coffre is known to have seen: the journal's record and the newest snapshot's
/// creation time (unix seconds).
fn last_seen(app: &Coffre, journal: &Journal) -> Result<Option<i64>, ClockError> {
    let unreadable = |reason: String| ClockError::Unreadable { reason };
    let recorded = journal
        .last_clock()
        .map_err(|e| unreadable(e.to_string()))?;
    let newest = app
        .catalog
        .summary()
        .map_err(|e| unreadable(e.to_string()))?
        .values()
        .filter_map(|s| {
            time::OffsetDateTime::parse(
                &s.last_created,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
        })
        .map(|t| t.unix_timestamp())
        .max();
    Ok(recorded.max(newest))
}

/// Refuse when `now` is more than `shred.max-clock-jump` after the last time seen; otherwise
/// record `now` as seen. Call it before anything is destroyed.
pub fn check(app: &Coffre, now: time::OffsetDateTime) -> Result<(), ClockError> {
    let journal = Journal::open(&app.config.state_dir.join("journal.sqlite")).map_err(|e| {
        ClockError::Unreadable {
            reason: e.to_string(),
        }
    })?;
    let max = app.config.shred.max_clock_jump;
    let max_secs = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
    if let Some(last) = last_seen(app, &journal)? {
        let ahead = now.unix_timestamp().saturating_sub(last);
        if ahead > max_secs {
            let err = ClockError::Jumped {
                now: rfc3339(now.unix_timestamp()),
                last: rfc3339(last),
                ahead: humantime::format_duration(std::time::Duration::from_secs(
                    ahead.unsigned_abs(),
                ))
                .to_string(),
                max: humantime::format_duration(max).to_string(),
            };
            tracing::error!(error = %err, "destruction refused by the clock guard");
            let _ = app.catalog.set_alert(ALERT_KEY, &err.to_string());
            return Err(err);
        }
    }
    journal
        .observe_clock(now.unix_timestamp())
        .map_err(|e| ClockError::Unreadable {
            reason: e.to_string(),
        })?;
    let _ = app.catalog.clear_alert(ALERT_KEY);
    Ok(())
}
