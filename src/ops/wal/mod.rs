//! The WAL archive.

pub mod ahead;
pub mod archive;
pub mod check;
pub mod spool;
