//! The operations: each one a short list of named steps over the layers below (keys, stores,
//! catalog, access log, retention policy), run by the daemon and the CLI alike.

pub mod audit_expire;
pub mod audit_replicate;
pub mod clock_guard;
pub mod commit;
pub mod destination;
pub mod destroy;
pub mod drill;
pub mod erasure;
pub mod pgdir;
pub mod pitr;
pub mod protect;
pub mod restore;
pub mod rotate;
pub mod shred;
pub mod verify;
pub mod wal;
pub mod wal_ahead;
pub mod wal_check;
pub mod wal_retention;
pub mod wal_spool;
