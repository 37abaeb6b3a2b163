//! coffre: encrypted, geographically separated backups of EMR database snapshots.
//!
//! ```text
//! watch (notify + startup scan) -> intake (complete? settled? marker?) -> journal (local, crash-safe)
//!   -> read stream -> zstd (multi-threaded) -> seal (segmented AES-256-GCM, data key per snapshot)
//!   -> fan-out: one upload per store, concurrent, bounded memory -> manifest (written last) -> catalog
//! WAL: PostgreSQL archive_command -> wal-push (or the spool, drained by the daemon; archived ahead
//!   of the archiver) -> the same seal, fan-out and commit under wal/<source>/<timeline>/<name>/
//! PITR: restore a base backup -> recovery settings (restore_command = wal-fetch in a recovery
//!   session) -> PostgreSQL replays the WAL to the target and promotes (restore --replay, drills)
//! side paths: keys (providers, epochs, wrap/unwrap, destroy) | restore | verify | access log
//!   | retention and shred (snapshots, WAL, access log: one destruction protocol) | status
//! ```
//!
//! Invariants kept across the crate:
//! - compress and seal once; every store receives the same sealed bytes;
//! - a snapshot is committed in a store iff its manifest is there (written last, `PutMode::Create`)
//!   and the data matches the manifest's SHA-256;
//! - no plaintext, key material or personal data reaches a store, a log line or the status page;
//! - no path leads to plaintext without an access-log entry written (and fsynced) first.

// Errors carry the context an operator needs (store, path, source error); they are returned on
// cold paths, so their size is not worth boxing.
#![allow(clippy::result_large_err)]

pub mod actor;
pub mod app;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod format;
pub mod fsutil;
pub mod ids;
pub mod inflight;
pub mod journal;
pub mod keys;
pub mod lock;
pub mod ops;
pub mod progress;
pub mod retention;
pub mod status;
pub mod store;

pub use app::Coffre;
pub use config::Config;
pub use ids::SnapshotId;
