//! The end of what coffre keeps, and the key moves that keep the rest: carrying out the retention
//! plan for snapshots, holds and early shred ([`shred`]), the WAL archive's share
//! ([`wal_retention`]), the access log's expiry ([`audit_expire`]); the one destruction protocol,
//! the one re-wrap and the destruction records ([`destroy`]); the catch-up of keyring pushes
//! after an erasure ([`erasure`]); the clock guard every destruction runs first
//! ([`clock_guard`]); key rotation and provider migration ([`rotate`]).
//!
//! May call: app, keys, store, catalog, audit, auth, config, format, journal, retention (the
//! plan), clock, fsutil, and in ops only `audit_replicate` (the listing of the access log's
//! segments). Inside the room, `destroy` calls none of its callers (shred, wal_retention,
//! audit_expire): they decide what is due and check holds and key objects first.

pub mod audit_expire;
pub mod clock_guard;
pub mod destroy;
pub mod erasure;
pub mod rotate;
pub mod shred;
pub mod wal_retention;
