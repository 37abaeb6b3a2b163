//! Point-in-time recovery on a restored base backup: which base backup a restore starts from,
//! the recovery settings PostgreSQL reads, and how coffre starts PostgreSQL on the copy
//! ([`recovery`]); every read and write of the restored (untrusted) data folder's control files
//! ([`pgdir`]).
//!
//! May call: app, ids, store; no other room (restore, `wal-fetch` and drills call it, never the
//! reverse). `recovery` calls `pgdir`.

pub mod pgdir;
pub mod recovery;
