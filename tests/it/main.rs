//! coffre's integration tests, in one binary (one link instead of twenty on two cores): each
//! module is one former test file, named for what it covers. The tests that change the
//! process-wide environment (`retention_pkcs11`, `servers_smoke`) stay binaries of their own, and
//! so does `package_deb` (a release build of its own that would take both cores from the tests
//! beside it, whose stall and start-up limits are real time).
//! Run one module with `cargo test --test it e2e_daemon::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/faulty.rs"]
mod faulty;
#[path = "../common/matrix.rs"]
mod matrix;

mod audit_retention;
mod changing_snapshot;
mod cli_help;
mod config_files;
mod e2e_audit;
mod e2e_daemon;
mod e2e_drill;
mod e2e_fleet;
mod e2e_operator;
mod e2e_operator_rest;
mod e2e_pitr;
mod e2e_pitr_timelines;
mod e2e_pitr_trust;
mod e2e_pkcs11;
mod e2e_prometheus;
mod e2e_roles;
mod e2e_shred;
mod e2e_socket;
mod e2e_stores;
mod e2e_wal;
mod faults_config;
mod faults_disk;
mod faults_format;
mod faults_kill;
mod faults_store;
mod golden;
mod golden_manifest_v1;
mod install_checks;
mod keyring_copies;
mod keys_rotate;
mod layers;
mod retention_clock;
mod systemd_unit;
