//! The operations: each one a short list of named steps over the layers below (keys, stores,
//! catalog, access log, retention policy), run by the daemon and the CLI alike. Grouped in rooms;
//! each room's module doc says what it owns and what it may call. Lowest first (a room calls
//! only rooms before it):
//!
//! - [`verify`]: replica checks without any key;
//! - [`audit_replicate`]: the access log's sealed copies in the stores;
//! - [`pitr`]: point-in-time recovery settings and the restored data folder;
//! - [`lifecycle`]: the end of what coffre keeps (retention, shred, the destruction protocol,
//!   re-wrap, rotation, erasure records, the clock guard, WAL and access-log expiry);
//! - [`snapshot`]: a snapshot in (protect, commit) and out (restore);
//! - [`wal`]: the WAL archive (push, fetch, spool, archiving ahead, continuity and copies);
//! - [`drill`]: disaster-recovery drills, snapshot and point-in-time.

pub mod audit_replicate;
pub mod drill;
pub mod lifecycle;
pub mod pitr;
pub mod snapshot;
pub mod verify;
pub mod wal;
