//! PostgreSQL WAL file names, checked before any of them becomes part of an object path: a
//! segment (`TTTTTTTTXXXXXXXXYYYYYYYY`), a partial segment (`<segment>.partial`), a backup
//! history file (`<segment>.XXXXXXXX.backup`) and a timeline history file (`TTTTTTTT.history`).
//! Anything else is refused, so a name can never climb out of its folder in a store.

use std::fmt;

/// What a WAL file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    Segment,
    Partial,
    BackupHistory,
    TimelineHistory,
}

/// A checked WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    name: String,
    timeline: u32,
    kind: WalFileKind,
    /// Log number and segment number (the last 16 hex digits of a segment's name); 0 for a
    /// timeline history file.
    log_seg: u64,
}

fn is_upper_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalName {
    pub fn parse(name: &str) -> Result<WalName, String> {
        let bad = || {
            format!(
                "`{}` is not a PostgreSQL WAL file name (a 24-hex-digit segment, \
                 `<segment>.partial`, `<segment>.<8 hex>.backup` or `<8 hex>.history`)",
                name.escape_debug()
            )
        };
        let (stem, rest) = match name.split_once('.') {
            Some((s, r)) => (s, Some(r)),
            None => (name, None),
        };
        let kind = match (stem.len(), rest) {
            (24, None) => WalFileKind::Segment,
            (24, Some("partial")) => WalFileKind::Partial,
            (24, Some(r)) => match r.split_once('.') {
                Some((off, "backup")) if off.len() == 8 && is_upper_hex(off) => {
                    WalFileKind::BackupHistory
                }
                _ => return Err(bad()),
            },
            (8, Some("history")) => WalFileKind::TimelineHistory,
            _ => return Err(bad()),
        };
        if !is_upper_hex(stem) {
            return Err(bad());
        }
        let timeline = u32::from_str_radix(&stem[..8], 16).map_err(|_| bad())?;
        if timeline == 0 {
            return Err(bad());
        }
        let log_seg = if stem.len() == 24 {
            let log = u64::from_str_radix(&stem[8..16], 16).map_err(|_| bad())?;
            let seg = u64::from_str_radix(&stem[16..24], 16).map_err(|_| bad())?;
            (log << 32) | seg
        } else {
            0
        };
        Ok(WalName {
            name: name.to_string(),
            timeline,
            kind,
            log_seg,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
    pub fn timeline(&self) -> u32 {
        self.timeline
    }
    /// The timeline as the 8 hex digits PostgreSQL writes (the folder name in a store).
    pub fn timeline_hex(&self) -> String {
        format!("{:08X}", self.timeline)
    }
    pub fn kind(&self) -> WalFileKind {
        self.kind
    }
    /// Position of a segment in its timeline (log number << 32 | segment number).
    pub fn position(&self) -> u64 {
        self.log_seg
    }
}

/// The WAL file a PostgreSQL `backup_label` starts at: the name in
/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`, checked.
pub fn backup_label_start(label: &str) -> Option<String> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))?;
    let name = line.split_once("(file ")?.1.split_once(')')?.0.trim();
    let w = WalName::parse(name).ok()?;
    (w.kind() == WalFileKind::Segment).then(|| name.to_string())
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_label_names_its_start_segment() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n";
        assert_eq!(
            backup_label_start(label).as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(
            backup_label_start("START WAL LOCATION: 0/2 (file ../../x)\n"),
            None
        );
        assert_eq!(backup_label_start("nothing here"), None);
    }

    #[test]
    fn the_four_kinds_of_wal_file_are_recognised() {
        let s = WalName::parse("00000002000000010000003A").unwrap();
        assert_eq!(
            (s.kind(), s.timeline(), s.position()),
            (WalFileKind::Segment, 2, (1 << 32) | 0x3A)
        );
        assert_eq!(s.timeline_hex(), "00000002");
        let p = WalName::parse("000000010000000000000005.partial").unwrap();
        assert_eq!(p.kind(), WalFileKind::Partial);
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!((b.kind(), b.position()), (WalFileKind::BackupHistory, 2));
        let h = WalName::parse("00000003.history").unwrap();
        assert_eq!((h.kind(), h.timeline()), (WalFileKind::TimelineHistory, 3));
    }

    #[test]
    fn names_that_could_leave_their_folder_or_are_not_wal_are_refused() {
        for bad in [
            "",
            "..",
            "../00000001000000000000000A",
            "00000001000000000000000a",
            "00000001000000000000000A/",
            "0000000100000000000000A",
            "00000001000000000000000AB",
            "000000010000000000000002.0000002.backup",
            "000000010000000000000002.backup",
            "00000000000000000000000A",
            "00000001.history.x",
            "0000001.history",
            "00000001000000000000000A.partial.partial",
            "RECOVERYHISTORY",
            "00000001000000000000000A\n",
        ] {
            let e = WalName::parse(bad).unwrap_err();
            assert!(e.contains("not a PostgreSQL WAL file name"), "{bad:?}: {e}");
        }
    }
}
