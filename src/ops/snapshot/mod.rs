//! Snapshots in and out: the protection pipeline ([`protect`], reading a source as it landed in
//! `protect/source`), the one commit protocol shared by a backup, a catch-up and a repair
//! ([`commit`]), and restore ([`restore`]: stream, verify, write under a temporary name) into
//! the one place restored bytes land ([`destination`]: local restore, the socket client and
//! `wal-fetch` alike).
//!
//! May call: app, keys, format, store, catalog, audit, auth, config, journal, progress, inflight,
//! fsutil, retention (the epoch a new key goes under), and in ops only
//! `lifecycle::destroy` (the destruction record that names a shredded snapshot). Nothing here
//! calls `wal`, `pitr` or `drill`: they call it.

pub mod commit;
pub mod destination;
pub mod protect;
pub mod restore;
