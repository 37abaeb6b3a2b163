//! Shared helpers for coffre's integration tests: `mod common;` in a test file, then
//! `common::S3Server::start()` and friends. Real servers on 127.0.0.1; install them once with
//! `tests/setup.sh`.
#![allow(dead_code, unused_imports)]

pub mod coffre;
pub mod servers;
pub mod users;

pub use servers::*;
