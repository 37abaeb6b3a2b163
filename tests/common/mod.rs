//! Shared helpers for coffre's integration tests: `mod common;` in a test file, then
//! `common::S3Server::start()` and friends; [`coffre::CoffreEnv`] (a private installation),
//! [`config::ConfigBuilder`] (every config), [`daemon::TestDaemon`] (every daemon and wait
//! loop) and [`users`] (every Unix user). Real servers on 127.0.0.1; install them once with
//! `tests/setup.sh`.
#![allow(dead_code, unused_imports)]

pub mod coffre;
pub mod config;
pub mod daemon;
pub mod servers;
pub mod users;

pub use servers::*;
