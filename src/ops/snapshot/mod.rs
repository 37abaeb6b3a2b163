//! Snapshots in and out.

pub mod commit;
pub mod protect;
pub mod restore;
