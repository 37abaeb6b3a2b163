//! Point-in-time recovery.

pub mod pgdir;
pub mod recovery;
