//! Replication of the access log: new entries are sealed (same object format as snapshots, a
//! fresh data key per segment, wrapped by every key provider under an epoch named for the end of
//! the log's retention) and written to every store as
//! `<prefix>/audit/<host>/audit-<day>.1/<first>-<last>.sealed` with its key object beside it.
//! `verify_stores` reads every store's copy back and compares it, entry by entry, with the local
//! log: an edit, a deletion, a truncated tail or a missing segment on either side is named.
//!
//! May call: app, audit, format, keys, store; no other room (`lifecycle::audit_expire` lists
//! the segments through it).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::app::Coffre;
use crate::format::seal::{self, Header};
use crate::ids::{EpochId, SnapshotId};
use crate::keys::DataKey;
use crate::store::{KeyObject, Store};

/// Why the access log's sealed copy could not be written to, listed in or read from a store
/// (the store's own error names the store and what to do).
#[derive(Debug, thiserror::Error)]
pub enum AuditCopyError {
    #[error("cannot read the access log: {0}")]
    ReadLog(std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Seal(#[from] crate::format::seal::SealError),
    #[error(transparent)]
    KeyObject(#[from] crate::format::objects::KeyObjectError),
    #[error("{0}")]
    Zstd(std::io::Error),
}

/// How long sealed segments of the access log are kept (their epoch is the day this ends).
pub(crate) fn retention_epoch(app: &Coffre) -> EpochId {
    // audit.retention is at most 100 years (config validation); checked all the same.
    let end = time::Duration::try_from(app.config.audit.retention)
        .ok()
        .and_then(|r| time::OffsetDateTime::now_utc().checked_add(r))
        .unwrap_or_else(|| time::Date::MAX.midnight().assume_utc());
    let day = end.date();
    EpochId::try_from(format!(
        "audit-{:04}-{:02}-{:02}.1",
        day.year(),
        u8::from(day.month()),
        day.day()
    ))
    .unwrap_or_else(|_| EpochId::for_day(day))
}

fn segment_dir(s: &Store, host: &str) -> object_store::path::Path {
    s.ns_of(host).join("audit").join(host)
}

/// One sealed segment of the access log in a store: entries `first..=last`.
pub(crate) struct Segment {
    pub first: u64,
    pub last: u64,
    pub data: object_store::path::Path,
    pub key: object_store::path::Path,
}

/// Highest entry number a segment name may carry: names are written with 12 digits, and an
/// access log never gets near a trillion entries. A name beyond it was not written by coffre.
pub(crate) const MAX_SEQ: u64 = 999_999_999_999;

/// Entries `first..=last` named by a segment's file name (`<first>-<last>.sealed`), if it is a
/// name coffre could have written: both numbers in 1..=[`MAX_SEQ`], `first <= last`.
fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".sealed")?.split_once('-')?;
    let (first, last) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
    (1 <= first && first <= last && last <= MAX_SEQ).then_some((first, last))
}

/// Every sealed segment of `host` in a store, oldest first, and the objects that look like
/// segments but whose names are out of range (planted, or damaged: never trusted, never an
/// overflow).
pub(crate) async fn segments_and_strays(
    s: &Store,
    host: &str,
) -> Result<(Vec<Segment>, Vec<String>), AuditCopyError> {
    let dir = segment_dir(s, host);
    let metas = s.list(&dir).await?;
    let mut out = Vec::new();
    let mut strays = Vec::new();
    for m in metas {
        let name = m.location.filename().unwrap_or_default().to_string();
        if !name.ends_with(".sealed") {
            continue;
        }
        let Some((first, last)) = parse_segment_name(&name) else {
            strays.push(m.location.to_string());
            continue;
        };
        let key =
            object_store::path::Path::from(m.location.as_ref().replace(".sealed", ".key.json"));
        out.push(Segment {
            first,
            last,
            data: m.location.clone(),
            key,
        });
    }
    out.sort_by_key(|x| x.first);
    Ok((out, strays))
}

/// Every sealed segment of `host` in a store, oldest first. Objects whose names are out of range
/// are left out, with a warning (`coffre audit verify` reports them).
pub(crate) async fn segments(s: &Store, host: &str) -> Result<Vec<Segment>, AuditCopyError> {
    let (segs, strays) = segments_and_strays(s, host).await?;
    for stray in strays {
        tracing::warn!(store = %s.name, object = %stray, "access-log segment name out of range: ignored (not written by coffre?); see `coffre audit verify`");
    }
    Ok(segs)
}

/// Seal and upload the entries not yet in each store. Returns entries written per store.
pub async fn replicate(app: &Coffre) -> Result<BTreeMap<String, u64>, AuditCopyError> {
    let text = match std::fs::read_to_string(app.audit.path()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(AuditCopyError::ReadLog(e)),
    };
    let lines: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<crate::audit::Entry>(l)
                .ok()
                .map(|e| (e.seq, l))
        })
        .collect();
    let local_last = lines.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    let mut written = BTreeMap::new();
    for s in &app.stores {
        // A segment claiming entries the local log never had is not trusted to say what the
        // store holds (a planted `1-999999999999` would stop replication for good).
        let mut have = 0;
        for seg in segments(s, &app.host).await? {
            if seg.last > local_last {
                tracing::warn!(store = %s.name, object = %seg.data, local_last, "access-log segment in the store goes past the local log: ignored for replication; run `coffre audit verify`");
            } else {
                have = have.max(seg.last);
            }
        }
        let new: Vec<&(u64, &str)> = lines.iter().filter(|(seq, _)| *seq > have).collect();
        let (Some(first), Some(last)) = (new.first(), new.last()) else {
            continue;
        };
        let mut body = String::new();
        for (_, l) in &new {
            body.push_str(l);
            body.push('\n');
        }
        let id = SnapshotId::new();
        let epoch = retention_epoch(app);
        let dek = DataKey::generate();
        let wraps = crate::keys::wrap_for_all(&app.providers, &epoch, &dek, &id)?;
        let compressed = zstd::encode_all(body.as_bytes(), 3).map_err(AuditCopyError::Zstd)?;
        let header = Header::new(&id, 16);
        let sealed = seal::seal_to_vec(&dek, &header, &compressed)?;
        let key = KeyObject {
            format: crate::format::objects::KEY_OBJECT_FORMAT,
            snapshot: id,
            source: "audit".into(),
            epoch: epoch.clone(),
            planned_expiry: String::new(),
            wraps,
            legal_hold: None,
            auth: Vec::new(),
        };
        let dir = segment_dir(s, &app.host).join(epoch.as_str());
        let stem = format!("{:012}-{:012}", first.0, last.0);
        app.push_keyrings(s).await?;
        s.put(
            &dir.clone().join(format!("{stem}.key.json")),
            key.to_json().into(),
        )
        .await?;
        s.put(&dir.join(format!("{stem}.sealed")), sealed.into())
            .await?;
        written.insert(s.name.clone(), new.len() as u64);
    }
    Ok(written)
}

/// A disagreement between the local log and a store's copy.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub store: String,
    pub seq: Option<u64>,
    pub problem: String,
}

/// Compare every store's sealed copy with the local log.
pub(crate) async fn verify_stores(app: &Coffre) -> Result<Vec<Finding>, AuditCopyError> {
    verify_stores_at(app, time::OffsetDateTime::now_utc()).await
}

/// [`verify_stores`] with the clock given (entries past retention are judged at `now`).
pub async fn verify_stores_at(
    app: &Coffre,
    now: time::OffsetDateTime,
) -> Result<Vec<Finding>, AuditCopyError> {
    let local = LocalLog::read(app);
    // An hour of slack for the clocks of the hosts that pruned and that verify.
    let expired_by = now.saturating_add(time::Duration::hours(1));
    let mut findings = Vec::new();
    for s in &app.stores {
        let mut f = StoreFindings {
            store: s.name.clone(),
            list: Vec::new(),
        };
        let (segs, strays) = segments_and_strays(s, &app.host).await?;
        for stray in strays {
            f.push(None, format!(
                "{stray} is not a segment coffre writes (entry numbers out of range): it was planted or damaged; it is ignored"
            ));
        }
        let joined = open_segments(app, s, &segs, local.first, &mut f).await;
        check_chains(&joined, local.first, &mut f);
        compare_entries(app, &joined, &local, expired_by, &mut f);
        findings.extend(f.list);
    }
    Ok(findings)
}

/// The local access log, by entry number.
struct LocalLog {
    entries: BTreeMap<u64, String>,
    /// Its first entry: the head may have been pruned at the end of its retention, and each
    /// store deletes its oldest segments when their epoch ends, so a store copy may begin
    /// anywhere up to here, and entries older than this are not compared.
    first: u64,
    last: u64,
}

impl LocalLog {
    fn read(app: &Coffre) -> LocalLog {
        let text = std::fs::read_to_string(app.audit.path()).unwrap_or_default();
        let entries: BTreeMap<u64, String> = text
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<crate::audit::Entry>(l)
                    .ok()
                    .map(|e| (e.seq, l.to_string()))
            })
            .collect();
        let last = entries.keys().max().copied().unwrap_or(0);
        let first = entries
            .keys()
            .min()
            .copied()
            .unwrap_or(last.saturating_add(1));
        LocalLog {
            entries,
            first,
            last,
        }
    }
}

/// The findings of one store.
struct StoreFindings {
    store: String,
    list: Vec<Finding>,
}

impl StoreFindings {
    fn push(&mut self, seq: Option<u64>, problem: String) {
        self.list.push(Finding {
            store: self.store.clone(),
            seq,
            problem,
        });
    }
}

/// Open every segment of a store's copy and join their entries; a missing range (of entries the
/// local log still holds) and a segment that does not open are findings.
async fn open_segments(
    app: &Coffre,
    s: &Store,
    segs: &[Segment],
    local_first: u64,
    f: &mut StoreFindings,
) -> String {
    let mut expect: Option<u64> = None;
    let mut joined = String::new();
    for seg in segs {
        let (first, last) = (seg.first, seg.last);
        // Entries the local log still holds must be in the copy; older ones may be gone (a
        // store that was down while they expired gets only the newer ones).
        let from = expect.unwrap_or(1).max(local_first.max(1));
        if first > from {
            f.push(
                Some(from),
                format!(
                    "segment {from}..{} is missing from the store copy",
                    first.saturating_sub(1)
                ),
            );
        }
        let bytes = match s.get_small(&seg.data, 256 * 1024 * 1024).await {
            Ok(b) => b,
            Err(e) => {
                f.push(Some(first), e.to_string());
                continue;
            }
        };
        match open_segment(app, s, seg, &bytes).await {
            Ok(p) => joined.push_str(&String::from_utf8_lossy(&p)),
            Err(e) => f.push(
                Some(first),
                format!("segment {first}-{last} does not open: {e}"),
            ),
        }
        expect = last.checked_add(1);
    }
    joined
}

/// The entries of one sealed segment: its key object, the data key, open, decompress.
async fn open_segment(
    app: &Coffre,
    s: &Store,
    seg: &Segment,
    sealed: &[u8],
) -> Result<Vec<u8>, AuditCopyError> {
    let kb = s
        .get_small(&seg.key, crate::format::objects::MAX_SMALL_OBJECT)
        .await?;
    let k = KeyObject::parse(&kb)?;
    let dek = crate::keys::unwrap_dek(&app.providers, &k)?;
    let plain = seal::open_to_vec(&dek, sealed, Some(&k.snapshot.to_string()))?;
    zstd::decode_all(&plain[..]).map_err(AuditCopyError::Zstd)
}

/// The chain is checked in two parts: entries past the local log's retention (a store that was
/// down while they expired may lack some of them: each contiguous run of them is checked on its
/// own) and the entries the local log still holds (compared one by one as well).
fn check_chains(joined: &str, local_first: u64, f: &mut StoreFindings) {
    let mut parts: Vec<String> = vec![String::new()];
    let mut current = String::new();
    let mut last_old: Option<u64> = None;
    for line in joined.lines() {
        let seq = serde_json::from_str::<crate::audit::Entry>(line)
            .map(|e| e.seq)
            .unwrap_or(u64::MAX);
        let part = if seq < local_first {
            if last_old.is_some_and(|l| l.checked_add(1) != Some(seq)) {
                parts.push(String::new());
            }
            last_old = Some(seq);
            parts.last_mut().unwrap_or(&mut current)
        } else {
            &mut current
        };
        part.push_str(line);
        part.push('\n');
    }
    parts.push(current);
    for part in &parts {
        if let Err(e) = crate::audit::verify_chain(
            std::path::Path::new("store copy"),
            part.as_bytes(),
            crate::audit::Head::Anywhere,
        ) {
            f.push(None, format!("store copy: {e}"));
        }
    }
}

/// Each entry of the store copy against the local log: the same line, or past the local log's
/// retention (then it must really be past `audit.retention`).
fn compare_entries(
    app: &Coffre,
    joined: &str,
    local: &LocalLog,
    expired_by: time::OffsetDateTime,
    f: &mut StoreFindings,
) {
    let retention = time::Duration::try_from(app.config.audit.retention).ok();
    for line in joined.lines() {
        let Ok(e) = serde_json::from_str::<crate::audit::Entry>(line) else {
            continue;
        };
        if e.seq < local.first {
            // Past the local log's retention; its segment goes when its epoch ends. Unless it is
            // not past it: then entries were cut from the local log's head (a forged pruning
            // record passes the local check, not this one).
            let at = time::OffsetDateTime::parse(
                &e.time,
                &time::format_description::well_known::Rfc3339,
            );
            let expired = at.is_ok_and(|t| {
                retention
                    .and_then(|r| t.checked_add(r))
                    .is_some_and(|end| end <= expired_by)
            });
            if !expired {
                f.push(Some(e.seq), format!(
                    "entry {} (written {}) is not past audit.retention, yet the local log no longer holds it: entries were removed from the head of the local log",
                    e.seq, e.time
                ));
            }
            continue;
        }
        match local.entries.get(&e.seq) {
            Some(l) if l == line => {}
            Some(_) => f.push(
                Some(e.seq),
                format!(
                    "entry {} differs between the local log and the store copy",
                    e.seq
                ),
            ),
            None => f.push(Some(e.seq), format!(
                "entry {} is in the store copy but not in the local log (local log ends at {}): the local log was truncated or entries were deleted",
                e.seq, local.last
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, point 9: a planted segment named with `u64::MAX` (or anything coffre does not
    /// write) is not a segment: no overflow, no stop.
    #[test]
    fn segment_names_out_of_range_are_not_segments() {
        assert_eq!(
            parse_segment_name("000000000001-000000000042.sealed"),
            Some((1, 42))
        );
        let max = u64::MAX;
        for bad in [
            format!("000000000001-{max}.sealed"),
            format!("{max}-{max}.sealed"),
            "000000000009-000000000001.sealed".to_string(),
            "000000000000-000000000001.sealed".to_string(),
            "1000000000000-1000000000001.sealed".to_string(),
            "18446744073709551616-1.sealed".to_string(),
            "x-1.sealed".to_string(),
        ] {
            assert_eq!(parse_segment_name(&bad), None, "{bad}");
        }
    }
}
