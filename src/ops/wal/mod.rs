//! The WAL archive for point-in-time recovery: `wal-push` and `wal-fetch` ([`archive`], with the
//! spool's read side), the asynchronous spool ([`spool`]), archiving ahead of PostgreSQL's
//! archiver ([`ahead`]), and the archive's continuity and per-store copies, with their repair
//! ([`check`]).
//!
//! May call: app, keys, format, store, catalog, audit, auth, clock, fsutil, and in ops:
//! `snapshot::protect` (the sealing pipeline, opening files beneath a folder), `snapshot::commit`
//! (the commit protocol) and `verify` (a copy's check). Inside the room: spool and ahead call
//! archive (push), check calls archive (a sealed copy's read); archive calls none of them.
//! The WAL archive's retention is `lifecycle::wal_retention`'s.

pub mod ahead;
pub mod archive;
pub mod check;
pub mod spool;
