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

/// Which part of a name made it no WAL file name (the message is the same for all: it says
/// what a WAL file name looks like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalNamePart {
    /// Neither 24 hex digits (with or without a suffix) nor `<8 hex>.history`.
    Shape,
    /// A 24-digit stem with a suffix other than `.partial` or `.<8 hex>.backup`.
    Suffix,
    /// The stem is not upper-case hex.
    NotHex,
    /// Timeline 0 does not exist.
    TimelineZero,
}

/// A name that is not a PostgreSQL WAL file name.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalNameError {
    #[error(
        "`{}` is not a PostgreSQL WAL file name (a 24-hex-digit segment, \
         `<segment>.partial`, `<segment>.<8 hex>.backup` or `<8 hex>.history`)",
        .name.escape_debug()
    )]
    NotAWalName { name: String, part: WalNamePart },
}

/// A WAL segment whose first page header does not match its name or size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalHeaderError {
    #[error("{size} bytes is not a WAL segment's size (a power of two from 1 MiB to 1 GiB)")]
    Size { size: u64 },
    #[error("no WAL segment header (xlp_magic {magic:#06X}, xlp_info {info:#06X})")]
    NoHeader { magic: u16, info: u16 },
    #[error("its header says segments of {seg_size} bytes, the file has {size}")]
    SegmentSize { seg_size: u64, size: u64 },
    #[error(
        "its first page is at LSN {:X}/{:X}, the name says {named}",
        .pageaddr >> 32,
        .pageaddr & 0xFFFF_FFFF
    )]
    Position { pageaddr: u64, named: String },
    #[error("its first page is on timeline {tli}, the name says {named}")]
    Timeline { tli: u32, named: u32 },
}

fn is_upper_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalName {
    pub fn parse(name: &str) -> Result<WalName, WalNameError> {
        let bad = |part| WalNameError::NotAWalName {
            name: name.to_string(),
            part,
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
                _ => return Err(bad(WalNamePart::Suffix)),
            },
            (8, Some("history")) => WalFileKind::TimelineHistory,
            _ => return Err(bad(WalNamePart::Shape)),
        };
        if !is_upper_hex(stem) {
            return Err(bad(WalNamePart::NotHex));
        }
        let timeline = u32::from_str_radix(&stem[..8], 16).map_err(|_| bad(WalNamePart::NotHex))?;
        if timeline == 0 {
            return Err(bad(WalNamePart::TimelineZero));
        }
        let log_seg = if stem.len() == 24 {
            let log =
                u64::from_str_radix(&stem[8..16], 16).map_err(|_| bad(WalNamePart::NotHex))?;
            let seg =
                u64::from_str_radix(&stem[16..24], 16).map_err(|_| bad(WalNamePart::NotHex))?;
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

/// `XLP_LONG_HEADER` in `xlp_info`: the first page of every segment has the long header.
/// PostgreSQL's default `--wal-segsize`, used when no segment's size says otherwise.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// Segments per log file for a segment size (PostgreSQL: 0x100000000 / segment size).
pub fn segments_per_log(segment_size: u64) -> u64 {
    if segment_size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&segment_size) {
        0x1_0000_0000 / segment_size
    } else {
        0x1_0000_0000 / DEFAULT_SEGMENT_SIZE
    }
}

const XLP_LONG_HEADER: u16 = 0x0002;
/// `xlp_magic` of every PostgreSQL release so far (9.x's 0xD0xx to 18's 0xD1xx).
const WAL_MAGIC: std::ops::RangeInclusive<u16> = 0xD000..=0xD1FF;

/// Check that `bytes`, served as WAL file `name`, are that segment: its first page header
/// (`xlp_magic`, `xlp_info`, `xlp_tli` at offset 4, `xlp_pageaddr` at 8, `xlp_seg_size` at 32)
/// must give the segment start LSN of the name, a timeline no later than the name's, and the
/// file's own size as the segment size (a power of two from 1 MiB to 1 GiB, PostgreSQL's
/// `--wal-segsize`). A substituted segment (another position, a later timeline, another
/// cluster's segment size) is refused.
///
/// The timeline may be an *earlier* one: at a promotion PostgreSQL copies the last segment of
/// the old timeline into the first one of the new timeline, first page header included.
/// A `.partial` segment is checked the same way (it is the whole segment file, renamed at a
/// promotion). Timeline history and backup history files are text and have no page header:
/// they pass unchecked.
pub fn check_first_page(name: &WalName, bytes: &[u8]) -> Result<(), WalHeaderError> {
    if !matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
        return Ok(());
    }
    let size = bytes.len() as u64;
    if !size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&size) {
        return Err(WalHeaderError::Size { size });
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| (u64::from(u32_at(o + 4)) << 32) | u64::from(u32_at(o));
    let (magic, info, tli, pageaddr) = (u16_at(0), u16_at(2), u32_at(4), u64_at(8));
    if !WAL_MAGIC.contains(&magic) || info & XLP_LONG_HEADER == 0 {
        return Err(WalHeaderError::NoHeader { magic, info });
    }
    let seg_size = u64::from(u32_at(32));
    if seg_size != size {
        return Err(WalHeaderError::SegmentSize { seg_size, size });
    }
    let (log, seg) = (name.position() >> 32, name.position() & 0xFFFF_FFFF);
    let start = (seg < (1 << 32) / size).then(|| (log << 32) | (seg * size));
    if start != Some(pageaddr) {
        return Err(WalHeaderError::Position {
            pageaddr,
            named: start.map_or("no valid position for this segment size".to_string(), |s| {
                format!("{:X}/{:X}", s >> 32, s & 0xFFFF_FFFF)
            }),
        });
    }
    if tli == 0 || tli > name.timeline() {
        return Err(WalHeaderError::Timeline {
            tli,
            named: name.timeline(),
        });
    }
    Ok(())
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

    /// A segment of `size` bytes whose first page header says (timeline, LSN, segment size).
    fn segment(size: usize, tli: u32, pageaddr: u64, seg_size: u32) -> Vec<u8> {
        let mut v = vec![0u8; size];
        v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        v[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        v[4..8].copy_from_slice(&tli.to_le_bytes());
        v[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        v[24..32].copy_from_slice(&0x1234_5678_9ABC_DEF0u64.to_le_bytes());
        v[32..36].copy_from_slice(&seg_size.to_le_bytes());
        v
    }

    #[test]
    fn a_segment_is_served_only_when_its_first_page_header_matches_its_name() {
        let mib16 = 16 << 20;
        let name = WalName::parse("00000002000000010000003A").unwrap();
        let lsn = (1u64 << 32) | (0x3A * mib16 as u64);
        assert_eq!(
            check_first_page(&name, &segment(mib16, 2, lsn, mib16 as u32)),
            Ok(())
        );
        // The first segment of a new timeline starts with its parent's page (promotion).
        assert_eq!(
            check_first_page(&name, &segment(mib16, 1, lsn, mib16 as u32)),
            Ok(())
        );
        // 1 MiB segments: 4096 per log file.
        let small = WalName::parse("000000010000000000000FFF").unwrap();
        let one_mib = segment(1 << 20, 1, 0xFFF << 20, 1 << 20);
        assert_eq!(check_first_page(&small, &one_mib), Ok(()));
        let partial = WalName::parse("00000002000000010000003A.partial").unwrap();
        assert!(check_first_page(
            &partial,
            &segment(mib16, 2, lsn + mib16 as u64, mib16 as u32)
        )
        .unwrap_err()
        .to_string()
        .contains("the name says 1/3A000000"));
        for (bytes, says) in [
            // Another segment's bytes under this name.
            (
                segment(mib16, 2, lsn - mib16 as u64, mib16 as u32),
                "first page is at LSN 1/39000000",
            ),
            // A later timeline's segment.
            (segment(mib16, 3, lsn, mib16 as u32), "on timeline 3"),
            (segment(mib16, 0, lsn, mib16 as u32), "on timeline 0"),
            // Another cluster's segment size, or not the file's.
            (segment(mib16, 2, lsn, 1 << 20), "segments of 1048576 bytes"),
            (segment(4096, 2, lsn, 4096), "not a WAL segment's size"),
            (vec![0u8; mib16], "no WAL segment header"),
        ] {
            let e = check_first_page(&name, &bytes).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        // 64 MiB segments: segment 0x50 is past the 64 a log file holds.
        let big = 64 << 20;
        let past = WalName::parse("000000020000000100000050").unwrap();
        let e = check_first_page(&past, &segment(big, 2, lsn, big as u32))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no valid position"), "{e}");
        // History files are text: not checked.
        for n in [
            "00000002.history",
            "00000002000000010000003A.00000028.backup",
        ] {
            let w = WalName::parse(n).unwrap();
            assert_eq!(
                check_first_page(&w, b"1\t0/3000000\tno recovery target\n"),
                Ok(())
            );
        }
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
            assert!(
                e.to_string().contains("not a PostgreSQL WAL file name"),
                "{bad:?}: {e}"
            );
        }
    }
}
