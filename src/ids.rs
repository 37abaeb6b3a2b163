//! Newtype identifiers. Snapshot ids are ULIDs (time-ordered, 26 ASCII characters); names of
//! sources, stores and providers are short, path-safe tokens so they can appear in object paths.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Time-ordered snapshot identifier (ULID). Sorting ids sorts snapshots by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(ulid::Ulid);

impl SnapshotId {
    /// A fresh id for a snapshot protected now.
    pub fn new() -> Self {
        SnapshotId(ulid::Ulid::new())
    }

    /// An id for a given creation time (tests, and ids planned ahead).
    pub fn from_timestamp_ms(ms: u64) -> Self {
        SnapshotId(ulid::Ulid::from_parts(ms, rand::random::<u128>()))
    }

    /// Creation time encoded in the id, in milliseconds since the Unix epoch.
    /// The all-zero id: "unknown" in records where a real id could not be read.
    pub(crate) fn nil() -> Self {
        SnapshotId(ulid::Ulid::nil())
    }

    pub(crate) fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl Default for SnapshotId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

/// A snapshot id that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a snapshot id (expected 26 characters such as 01JD3Q5W6Z8X9Y0ABCDEFGHJKM; `coffre snapshots` lists them)")]
pub struct BadSnapshotId(pub String);

impl FromStr for SnapshotId {
    type Err = BadSnapshotId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s.trim())
            .map(SnapshotId)
            .map_err(|_| BadSnapshotId(s.chars().take(64).collect()))
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = BadSnapshotId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> String {
        id.to_string()
    }
}

/// True when `name` is usable as a source, store, provider or epoch name: 1 to 64 characters of
/// ASCII letters, digits, `-`, `_` and `.`, not starting with `.`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Identifier of an epoch key: the UTC day on which the snapshots it covers expire, and a
/// generation (a fresh key for the same day after an early shred), e.g. `2026-12-28.1`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EpochId(String);

impl EpochId {
    /// The first-generation epoch of a UTC day.
    pub fn for_day(day: time::Date) -> Self {
        EpochId(format!(
            "{:04}-{:02}-{:02}.1",
            day.year(),
            u8::from(day.month()),
            day.day()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EpochId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EpochId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochId({})", self.0)
    }
}

impl TryFrom<String> for EpochId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_valid_name(&s) {
            Ok(EpochId(s))
        } else {
            Err(format!("`{s}` is not a valid epoch id"))
        }
    }
}

impl From<EpochId> for String {
    fn from(e: EpochId) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_round_trip_and_sort_by_time() {
        let a = SnapshotId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = SnapshotId::new();
        assert!(a < b);
        let parsed: SnapshotId = a.to_string().parse().unwrap();
        assert_eq!(parsed, a);
        assert!("not-an-id".parse::<SnapshotId>().is_err());
    }

    #[test]
    fn names_are_path_safe() {
        assert!(is_valid_name("site-a"));
        assert!(is_valid_name("emr_2.db"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("../etc"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(".hidden"));
        assert!(!is_valid_name(&"x".repeat(65)));
    }

    #[test]
    fn epoch_for_day() {
        let d = time::Date::from_calendar_date(2026, time::Month::December, 8).unwrap();
        assert_eq!(EpochId::for_day(d).as_str(), "2026-12-08.1");
    }
}
