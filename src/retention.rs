//! Retention policy, with the clock passed in. `planned_expiry` decides, when a snapshot
//! is protected, how long it is kept (hence the epoch key its data key is wrapped under);
//! `plan` decides, for epochs whose day is over, which snapshots are shredded and which are kept
//! (held, newest of their source, within `keep-last`, younger than `min-age`) by re-wrapping their
//! data keys under a later epoch. Carrying a plan out is `ops::lifecycle::shred`'s. Pure but for
//! [`live_epoch`] and [`live_hold_epoch`], which ask the key providers which generation of an
//! epoch is still live (no provider destroyed it).
//!
//! How this differs from restic's `forget`: restic decides at `forget` time which snapshots of a
//! set to keep, so an old snapshot's fate depends on the ones that come later. coffre decides
//! when the snapshot is protected ("the first snapshot of each day is the daily one"), so the key
//! can be wrapped under the epoch of its real expiry and re-wraps stay rare; only `keep-last`,
//! holds and the newest-snapshot guard are applied late, by moving keys, never data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Date, Duration as TDuration, Month, OffsetDateTime, Time};

use crate::config::RetentionConfig;
use crate::ids::{EpochId, SnapshotId};

/// What retention needs to know of one snapshot.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: SnapshotId,
    pub source: String,
    pub created: OffsetDateTime,
    pub epoch: EpochId,
    pub hold: Option<String>,
    /// Kept past its plan for this reason while it holds (the base backup that starts a
    /// point-in-time recovery window).
    pub keep: Option<String>,
}

fn start_of_day(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_time(Time::MIDNIGHT)
}

/// First day of the month `months` after `d`'s; the last day of the calendar when that is past
/// its end.
fn add_months(d: Date, months: u32) -> Date {
    let total = i64::from(d.year()) * 12 + (i64::from(u8::from(d.month())) - 1) + i64::from(months);
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) as u8 + 1);
    i32::try_from(y)
        .ok()
        .and_then(|y| {
            Date::from_calendar_date(y, Month::try_from(m).unwrap_or(Month::January), 1).ok()
        })
        .unwrap_or(Date::MAX)
}

/// Why a snapshot is kept as long as it is (the rule that sets its expiry).
pub fn planned_expiry(
    rules: &RetentionConfig,
    created: OffsetDateTime,
    earlier: &[OffsetDateTime],
) -> (OffsetDateTime, &'static str) {
    // Every period is bounded by config validation (100 years); the arithmetic saturates all
    // the same (at the end of the calendar: kept, never a panic).
    let within = TDuration::try_from(rules.keep_within).unwrap_or(TDuration::days(30));
    let mut best = (created.saturating_add(within), "keep-within");
    let mut consider = |t: OffsetDateTime, why: &'static str| {
        if t > best.0 {
            best = (t, why);
        }
    };
    if let Some(min) = rules.min_age.and_then(|m| TDuration::try_from(m).ok()) {
        consider(created.saturating_add(min), "min-age");
    }
    let first_in = |start: OffsetDateTime| !earlier.iter().any(|e| *e >= start && *e < created);
    if rules.keep_hourly > 0 {
        let start =
            created.replace_time(Time::from_hms(created.hour(), 0, 0).unwrap_or(Time::MIDNIGHT));
        if first_in(start) {
            consider(
                start.saturating_add(TDuration::hours(rules.keep_hourly as i64)),
                "keep-hourly",
            );
        }
    }
    let day = start_of_day(created);
    if rules.keep_daily > 0 && first_in(day) {
        consider(
            day.saturating_add(TDuration::days(rules.keep_daily as i64)),
            "keep-daily",
        );
    }
    if rules.keep_weekly > 0 {
        let week = day - TDuration::days(created.weekday().number_days_from_monday() as i64);
        if first_in(week) {
            consider(
                week.saturating_add(TDuration::weeks(rules.keep_weekly as i64)),
                "keep-weekly",
            );
        }
    }
    if rules.keep_monthly > 0 {
        let month = day.replace_day(1).unwrap_or(day);
        if first_in(month) {
            let end = add_months(month.date(), rules.keep_monthly)
                .midnight()
                .assume_utc();
            consider(end, "keep-monthly");
        }
    }
    if rules.keep_yearly > 0 {
        let year = Date::from_calendar_date(created.year(), Month::January, 1)
            .map(|d| d.midnight().assume_utc())
            .unwrap_or(day);
        if first_in(year) {
            let end = i32::try_from(rules.keep_yearly)
                .ok()
                .and_then(|n| created.year().checked_add(n))
                .and_then(|y| Date::from_calendar_date(y, Month::January, 1).ok())
                .unwrap_or(Date::MAX)
                .midnight()
                .assume_utc();
            consider(end, "keep-yearly");
        }
    }
    best
}

/// The UTC day an epoch covers, if it is a day epoch (hold epochs have none).
pub(crate) fn epoch_day(e: &EpochId) -> Option<Date> {
    let s = e.as_str();
    let day = s.split('.').next()?;
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(day, &fmt).ok()
}

/// Generation of a day epoch (`2026-12-28.2` → 2).
pub(crate) fn epoch_generation(e: &EpochId) -> u32 {
    e.as_str()
        .rsplit('.')
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

/// The epoch of the same day with the given generation.
pub(crate) fn epoch_with_generation(day: Date, generation: u32) -> EpochId {
    let base = EpochId::for_day(day);
    let s = base.as_str().trim_end_matches(".1").to_string();
    EpochId::try_from(format!("{s}.{generation}")).unwrap_or(base)
}

/// The epoch new keys of `day` go under: the newest generation of that day that no provider has
/// destroyed (an early shred destroys one generation and starts the next).
pub(crate) fn live_epoch(
    providers: &[std::sync::Arc<dyn crate::keys::KeyProvider>],
    day: Date,
) -> EpochId {
    let mut max_gen = 0;
    let mut destroyed = std::collections::BTreeSet::new();
    for p in providers {
        for e in p.epochs().unwrap_or_default() {
            if epoch_day(&e.epoch) == Some(day) {
                let g = epoch_generation(&e.epoch);
                max_gen = max_gen.max(g);
                if e.destroyed.is_some() {
                    destroyed.insert(g);
                }
            }
        }
    }
    match max_gen {
        0 => epoch_with_generation(day, 1),
        g if destroyed.contains(&g) => epoch_with_generation(day, g + 1),
        g => epoch_with_generation(day, g),
    }
}

/// An epoch is due once its UTC day is over.
pub(crate) fn is_due(e: &EpochId, now: OffsetDateTime) -> bool {
    epoch_day(e).is_some_and(|d| {
        d.next_day()
            .is_some_and(|n| n.midnight().assume_utc() <= now)
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keep {
    pub snapshot: SnapshotId,
    pub source: String,
    pub reason: String,
    /// Epoch its key moves to.
    pub to_epoch: EpochId,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EpochPlan {
    pub epoch: EpochId,
    pub shred: Vec<SnapshotId>,
    pub keep: Vec<Keep>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Upcoming {
    pub snapshot: SnapshotId,
    pub source: String,
    pub epoch: EpochId,
    /// When its epoch key is due to be destroyed (end of the epoch's day), RFC 3339.
    pub due: String,
    /// The guard that keeps it when its epoch comes, as things stand now (legal hold, the base
    /// backup of a point-in-time window, newest of its source, `keep-last`): its key then moves
    /// to a later epoch instead of being destroyed. Absent: destroyed at `due`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// A retention plan at `now`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Plan {
    pub due: Vec<EpochPlan>,
    pub upcoming: Vec<Upcoming>,
}

/// Hold epoch of one snapshot.
pub(crate) fn hold_epoch(id: &SnapshotId) -> EpochId {
    EpochId::try_from(format!("hold-{id}")).unwrap_or_else(|_| EpochId::for_day(Date::MIN))
}

/// Whether `e` is the epoch of a legal hold.
pub(crate) fn is_hold_epoch(e: &EpochId) -> bool {
    e.as_str().starts_with("hold-")
}

/// The hold epoch a snapshot's key goes to now: `hold-<id>` for its first hold, then
/// `hold-<id>.2`, `hold-<id>.3`, ...: a released hold's key is destroyed, and a destroyed epoch
/// never comes back, so a new hold of the same snapshot takes the next generation.
pub(crate) fn live_hold_epoch(
    providers: &[std::sync::Arc<dyn crate::keys::KeyProvider>],
    id: &SnapshotId,
) -> EpochId {
    let first = hold_epoch(id);
    let prefix = format!("{}.", first.as_str());
    let mut max_gen = 0;
    let mut destroyed = std::collections::BTreeSet::new();
    for p in providers {
        for e in p.epochs().unwrap_or_default() {
            let g = if e.epoch == first {
                1
            } else if let Some(g) = e
                .epoch
                .as_str()
                .strip_prefix(&prefix)
                .and_then(|g| g.parse::<u32>().ok())
            {
                g
            } else {
                continue;
            };
            max_gen = max_gen.max(g);
            if e.destroyed.is_some() {
                destroyed.insert(g);
            }
        }
    }
    let generation = match max_gen {
        0 => 1,
        g if destroyed.contains(&g) => g + 1,
        g => g,
    };
    if generation == 1 {
        first
    } else {
        EpochId::try_from(format!("{prefix}{generation}")).unwrap_or(first)
    }
}

/// The guard that keeps `it` past its epoch whatever the time (a legal hold, the base backup
/// of a point-in-time window, the newest snapshot of its source, `keep-last`), and the epoch its
/// key moves to; `rank` is its place among its source's snapshots, newest first.
fn guard(it: &Item, rank: usize, r: &RetentionConfig, tomorrow: Date) -> Option<(String, EpochId)> {
    let later = EpochId::for_day(tomorrow);
    if let Some(h) = &it.hold {
        Some((format!("legal hold: {h}"), hold_epoch(&it.id)))
    } else if let Some(why) = &it.keep {
        Some((why.clone(), later))
    } else if rank == 0 {
        Some(("newest snapshot of its source".into(), later))
    } else if (rank as u64) < r.keep_last as u64 {
        Some((format!("keep-last {}", r.keep_last), later))
    } else {
        None
    }
}

/// Decide, at `now`, what happens to the snapshots of every due epoch, and for the others
/// when their epoch comes and whether a guard keeps them then.
pub fn plan(
    items: &[Item],
    rules: &BTreeMap<String, RetentionConfig>,
    now: OffsetDateTime,
) -> Plan {
    // Newest first per source, for the newest-snapshot guard and keep-last.
    let mut by_source: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for it in items {
        by_source.entry(it.source.as_str()).or_default().push(it);
    }
    for v in by_source.values_mut() {
        v.sort_by_key(|x| std::cmp::Reverse(x.id));
    }
    let tomorrow = (now + TDuration::days(1)).date();
    let mut due: BTreeMap<EpochId, EpochPlan> = BTreeMap::new();
    let mut upcoming = Vec::new();
    for it in items {
        let rank = by_source
            .get(it.source.as_str())
            .and_then(|v| v.iter().position(|x| x.id == it.id))
            .unwrap_or(usize::MAX);
        let r = rules.get(&it.source).cloned().unwrap_or_default();
        let guarded = guard(it, rank, &r, tomorrow);
        if !is_due(&it.epoch, now) {
            if let Some(d) = epoch_day(&it.epoch).and_then(|d| d.next_day()) {
                upcoming.push(Upcoming {
                    snapshot: it.id,
                    source: it.source.clone(),
                    epoch: it.epoch.clone(),
                    due: d
                        .midnight()
                        .assume_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    kept: guarded.map(|(why, _)| why),
                });
            }
            continue;
        }
        let ep = due.entry(it.epoch.clone()).or_insert_with(|| EpochPlan {
            epoch: it.epoch.clone(),
            shred: vec![],
            keep: vec![],
        });
        let young = r
            .min_age
            .and_then(|m| TDuration::try_from(m).ok())
            .map(|m| it.created + m);
        let keep = |reason: String, to: EpochId| Keep {
            snapshot: it.id,
            source: it.source.clone(),
            reason,
            to_epoch: to,
        };
        if let Some((why, to)) = guarded {
            ep.keep.push(keep(why, to));
        } else if let Some(until) = young.filter(|u| *u > now) {
            ep.keep
                .push(keep("min-age".into(), EpochId::for_day(until.date())));
        } else {
            ep.shred.push(it.id);
        }
    }
    upcoming.sort_by(|a, b| a.due.cmp(&b.due).then(a.snapshot.cmp(&b.snapshot)));
    Plan {
        due: due.into_values().collect(),
        upcoming,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn rules() -> RetentionConfig {
        RetentionConfig {
            keep_within: std::time::Duration::from_secs(2 * 86_400),
            keep_daily: 7,
            keep_monthly: 3,
            ..Default::default()
        }
    }

    #[test]
    fn first_of_day_and_month_are_kept_longer() {
        let r = rules();
        let t0 = datetime!(2026-11-01 03:00 UTC);
        let (e, why) = planned_expiry(&r, t0, &[]);
        assert_eq!((e, why), (datetime!(2027-02-01 00:00 UTC), "keep-monthly"));
        let t1 = datetime!(2026-11-02 03:00 UTC);
        let (e, why) = planned_expiry(&r, t1, &[t0]);
        assert_eq!((e, why), (datetime!(2026-11-09 00:00 UTC), "keep-daily"));
        let t2 = datetime!(2026-11-02 15:00 UTC);
        let (e, why) = planned_expiry(&r, t2, &[t0, t1]);
        assert_eq!((e, why), (datetime!(2026-11-04 15:00 UTC), "keep-within"));
    }

    /// Issue 11, point 9: periods past the end of the calendar saturate, never panic.
    #[test]
    fn huge_periods_do_not_overflow() {
        let r = RetentionConfig {
            keep_within: std::time::Duration::from_secs(u64::MAX / 4),
            keep_hourly: u32::MAX,
            keep_daily: u32::MAX,
            keep_weekly: u32::MAX,
            keep_monthly: u32::MAX,
            keep_yearly: u32::MAX,
            min_age: Some(std::time::Duration::from_secs(u64::MAX)),
            ..Default::default()
        };
        let (e, _) = planned_expiry(&r, datetime!(2026-11-01 03:00 UTC), &[]);
        assert!(e.year() >= 9999, "{e}");
        assert_eq!(
            add_months(time::macros::date!(2026 - 11 - 15), u32::MAX),
            Date::MAX
        );
    }

    #[test]
    fn epochs_are_due_when_their_day_is_over() {
        let e = EpochId::for_day(time::macros::date!(2026 - 12 - 28));
        assert!(!is_due(&e, datetime!(2026-12-28 23:59 UTC)));
        assert!(is_due(&e, datetime!(2026-12-29 00:00 UTC)));
        assert_eq!(epoch_generation(&e), 1);
        let e2 = epoch_with_generation(time::macros::date!(2026 - 12 - 28), 2);
        assert_eq!(e2.as_str(), "2026-12-28.2");
        assert!(!is_due(
            &hold_epoch(&SnapshotId::new()),
            datetime!(2099-01-01 00:00 UTC)
        ));
    }

    fn item(source: &str, created: OffsetDateTime, epoch_day: Date, hold: Option<&str>) -> Item {
        let id = SnapshotId::from_timestamp_ms(created.unix_timestamp() as u64 * 1000);
        Item {
            id,
            source: source.into(),
            created,
            epoch: EpochId::for_day(epoch_day),
            hold: hold.map(str::to_string),
            keep: None,
        }
    }

    #[test]
    fn plan_shreds_due_snapshots_but_keeps_held_newest_and_keep_last() {
        use time::macros::date;
        let d = date!(2026 - 11 - 10);
        let items = vec![
            item("emr", datetime!(2026-11-01 01:00 UTC), d, None),
            item(
                "emr",
                datetime!(2026-11-02 01:00 UTC),
                d,
                Some("court order 42"),
            ),
            item("emr", datetime!(2026-11-03 01:00 UTC), d, None),
            item("emr", datetime!(2026-11-04 01:00 UTC), d, None),
            item(
                "emr",
                datetime!(2026-11-05 01:00 UTC),
                date!(2026 - 12 - 01),
                None,
            ),
            item("other", datetime!(2026-11-04 01:00 UTC), d, None),
        ];
        let mut rules = BTreeMap::new();
        rules.insert(
            "emr".to_string(),
            RetentionConfig {
                keep_last: 2,
                ..Default::default()
            },
        );
        let now = datetime!(2026-11-11 12:00 UTC);
        let p = plan(&items, &rules, now);
        assert_eq!(p.due.len(), 1);
        let ep = &p.due[0];
        // Shredded: the oldest emr and the 3rd newest emr (keep-last 2 keeps 11-05 and 11-04).
        assert_eq!(ep.shred, vec![items[0].id, items[2].id]);
        let reasons: Vec<_> = ep
            .keep
            .iter()
            .map(|k| (k.snapshot, k.reason.as_str()))
            .collect();
        assert!(reasons.contains(&(items[1].id, "legal hold: court order 42")));
        assert!(reasons.contains(&(items[3].id, "keep-last 2")));
        assert!(reasons.contains(&(items[5].id, "newest snapshot of its source")));
        assert_eq!(p.upcoming.len(), 1);
        assert_eq!(p.upcoming[0].due, "2026-12-02T00:00:00Z");
        // Before the epoch's day is over nothing is due.
        assert!(plan(&items, &rules, datetime!(2026-11-10 23:00 UTC))
            .due
            .is_empty());
    }
}
