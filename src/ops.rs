//! The operations: each one a short list of named steps over the layers below (keys, stores,
//! catalog, access log, retention policy), run by the daemon and the CLI alike. Grouped in rooms.

pub mod audit_replicate;
pub mod drill;
pub mod lifecycle;
pub mod pitr;
pub mod snapshot;
pub mod verify;
pub mod wal;
