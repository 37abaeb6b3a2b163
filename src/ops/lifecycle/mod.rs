//! The end of what coffre keeps.

pub mod audit_expire;
pub mod clock_guard;
pub mod destroy;
pub mod erasure;
pub mod rotate;
pub mod shred;
pub mod wal_retention;
