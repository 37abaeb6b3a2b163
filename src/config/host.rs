//! What a config needs from the host it runs on, checked by `coffre check-config` (not by
//! `--portable`): every file and credential it names exists, is readable by the account the
//! service runs as, and has a safe owner and mode; every source folder exists and is readable.
//! Nothing is created, nothing secret is read.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    credential_source, Config, Problem, ProviderKind, CREDENTIALS_SOURCE_DIR, CREDENTIAL_PREFIX,
    SERVICE_CREDENTIALS_DIR,
};

/// Why the account named for `coffre check-config --as` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("cannot look up the user `{name}`: {source}")]
    Lookup {
        name: String,
        source: nix::errno::Errno,
    },
    #[error("there is no user `{name}` on this host: pass the account the service runs as (`coffre` under the packaged unit), or install the package first")]
    NoSuchUser { name: String },
    #[error("`{name}` is not a valid user name")]
    BadName { name: String },
}

/// The account whose access is checked.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

impl Account {
    /// The account this process runs as.
    pub fn current() -> Account {
        let uid = nix::unistd::geteuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        let mut groups: Vec<u32> = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        groups.push(nix::unistd::getegid().as_raw());
        Account {
            name: user
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {}", uid.as_raw())),
            uid: uid.as_raw(),
            groups,
        }
    }

    /// A named account of this host, with its groups.
    pub fn named(name: &str) -> Result<Account, AccountError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| AccountError::Lookup {
                name: name.to_string(),
                source,
            })?
            .ok_or_else(|| AccountError::NoSuchUser {
                name: name.to_string(),
            })?;
        let cname = std::ffi::CString::new(name).map_err(|_| AccountError::BadName {
            name: name.to_string(),
        })?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        groups.push(user.gid.as_raw());
        Ok(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            groups,
        })
    }

    fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this account has the `want` permission bits (4 read, 2 write, 1 search/execute)
    /// on a file with this metadata.
    fn may(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        if self.is_root() {
            return true;
        }
        let mode = meta.permissions().mode();
        let bits = if meta.uid() == self.uid {
            (mode >> 6) & 7
        } else if self.groups.contains(&meta.gid()) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        bits & want == want
    }

    /// The first folder on the way to `path` that this account may not search, if any.
    fn blocked_at(&self, path: &Path) -> Option<PathBuf> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut cur = PathBuf::new();
        let mut comps: Vec<_> = abs.components().collect();
        comps.pop();
        for c in comps {
            cur.push(c);
            if let Ok(m) = std::fs::metadata(&cur) {
                if !self.may(&m, 1) {
                    return Some(cur);
                }
            }
        }
        None
    }
}

/// Every problem the config meets on this host for `who`, each with its key path.
pub fn host_problems(c: &Config, who: &Account) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut push = |key: String, message: String| p.push(Problem { key, message });

    for (i, s) in c.sources.iter().enumerate() {
        if let Some(m) = source_problem(&s.path, who) {
            push(format!("source[{i}].path"), m);
        }
    }
    for (i, k) in c.key_providers.iter().enumerate() {
        let key = format!("key-provider[{i}]");
        match k.kind {
            ProviderKind::File => {
                if let Some(path) = &k.master_key {
                    // With create-master-key, a missing key is made at the first start.
                    let to_create = k.create_master_key && std::fs::symlink_metadata(path).is_err();
                    if let Some(m) = secret_problem(path, who).filter(|_| !to_create) {
                        push(format!("{key}.master-key"), m);
                    }
                }
                if let Some(name) = &k.master_key_credential {
                    if let Some(m) = credential_problem(name, who) {
                        push(format!("{key}.master-key-credential"), m);
                    }
                }
            }
            ProviderKind::Pkcs11 => {
                if let Some(module) = &k.module {
                    if let Some(m) = module_problem(module, who) {
                        push(format!("{key}.module"), m);
                    }
                }
                if let Some(pin) = &k.pin_file {
                    if let Some(m) = secret_problem(pin, who) {
                        push(format!("{key}.pin-file"), m);
                    }
                }
            }
        }
    }
    for (i, s) in c.stores.iter().enumerate() {
        for (what, f) in [
            ("access-key-id-file", &s.access_key_id_file),
            ("secret-access-key-file", &s.secret_access_key_file),
            ("access-key-file", &s.access_key_file),
            ("service-account-file", &s.service_account_file),
        ] {
            if let Some(path) = f {
                if let Some(m) = secret_problem(path, who) {
                    push(format!("store[{i}].{what}"), m);
                }
            }
        }
    }
    if let Some(tf) = &c.status.token_file {
        if let Some(m) = secret_problem(tf, who) {
            push("status.token-file".into(), m);
        }
    }
    for (key, m) in role_problems(c) {
        push(key, m);
    }
    p
}

/// The roles of the control socket on this host: the groups exist, each archiving source
/// names an archiver that exists and is not in the erasure group, and its `pg-wal` is an
/// absolute folder.
fn role_problems(c: &Config) -> Vec<(String, String)> {
    use nix::unistd::{Group, User};
    let mut p = Vec::new();
    let group = |name: &str| Group::from_name(name).ok().flatten();
    for (key, g) in [
        ("audit.operators-group", &c.audit.operators_group),
        ("audit.erasure-group", &c.audit.erasure_group),
    ] {
        if let Some(g) = g.as_deref().filter(|g| group(g).is_none()) {
            p.push((key.to_string(), format!("group `{g}` does not exist on this host: create it (groupadd {g}) or correct the name")));
        }
    }
    let erasers = c.audit.erasure_group.as_deref().and_then(group);
    for (i, s) in c.sources.iter().enumerate() {
        let Some(pitr) = &s.pitr else { continue };
        let key = format!("source[{i}].pitr");
        match pitr.archiver.as_deref() {
            None => p.push((format!("{key}.archiver"), format!("source `{}` archives WAL but names no archiver: through the daemon only root may wal-push; set archiver = \"postgres\" (the account PostgreSQL runs as)", s.name))),
            Some(a) => match (User::from_name(a).ok().flatten(), group(a)) {
                (None, None) => p.push((format!("{key}.archiver"), format!("`{a}` is neither a user nor a group on this host"))),
                (Some(u), _) => {
                    if erasers.as_ref().is_some_and(|g| g.gid == u.gid || g.mem.contains(&u.name)) {
                        p.push((format!("{key}.archiver"), format!("the archiver `{a}` is in the erasure group: whoever takes the database could erase its backups; take it out of audit.erasure-group")));
                    }
                }
                (None, Some(_)) => {}
            },
        }
        if let Some(dir) = &pitr.pg_wal {
            if !dir.is_absolute() {
                p.push((format!("{key}.pg-wal"), format!("{} is not an absolute path: give the cluster's pg_wal folder, e.g. /var/lib/postgresql/15/main/pg_wal", dir.display())));
            }
        }
    }
    p
}

/// A source folder: it must exist (coffre never creates one) and be listable by `who`.
pub(crate) fn source_problem(path: &Path, who: &Account) -> Option<String> {
    let d = path.display();
    let create = format!("coffre never creates a source folder: create it, writable by the database's dump user and readable by {} (e.g. `install -d -m 2750 -o postgres -g coffre {d}`), or fix the path", who.name);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("{d} does not exist: {create}"))
        }
        Err(e) => return Some(format!("cannot check {d}: {e}. {create}")),
    };
    if !meta.is_dir() {
        return Some(format!(
            "{d} is not a folder: snapshots land in a folder; fix the path"
        ));
    }
    if let Some(at) = who.blocked_at(path) {
        return Some(format!(
            "{} (uid {}) cannot reach {d}: it may not enter {}; give it search permission there (e.g. `chmod o+x {}` or the group coffre)",
            who.name,
            who.uid,
            at.display(),
            at.display()
        ));
    }
    if !who.may(&meta, 4 | 1) {
        return Some(format!(
            "{d} is not readable by {} (uid {}; owner uid {}, group {}, mode {:o}): give it read access, e.g. `chgrp coffre {d} && chmod g+rxs {d}`",
            who.name,
            who.uid,
            meta.uid(),
            meta.gid(),
            meta.permissions().mode() & 0o7777
        ));
    }
    None
}

/// A PKCS#11 module: a regular file `who` may read, that no one but root (or its owner) may
/// replace.
fn module_problem(path: &Path, who: &Account) -> Option<String> {
    let d = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{d} does not exist: install the token's PKCS#11 library (e.g. `apt install softhsm2` for SoftHSM2) or fix the path"
            ))
        }
        Err(e) => return Some(format!("cannot check {d}: {e}")),
    };
    if !meta.is_file() {
        return Some(format!(
            "{d} is not a regular file: name the PKCS#11 library (a .so)"
        ));
    }
    if who.blocked_at(path).is_some() || !who.may(&meta, 4) {
        return Some(format!(
            "{d} is not readable by {} (uid {})",
            who.name, who.uid
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Some(format!(
            "{d} is writable by group or others (mode {:o}): anyone who may replace it sees the PIN and every key operation; run `chmod go-w {d}`",
            meta.permissions().mode() & 0o7777
        ));
    }
    None
}

/// A file holding a secret. Under the packaged unit, a path in the service's credentials folder
/// is checked at its source in /etc/coffre/credentials (the folder exists only while the service
/// runs).
pub(crate) fn secret_problem(path: &Path, who: &Account) -> Option<String> {
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        if let Ok(name) = path.strip_prefix(SERVICE_CREDENTIALS_DIR) {
            return credential_problem(&name.to_string_lossy(), who);
        }
    }
    file_secret_problem(path, who)
}

/// A systemd credential of the packaged unit, at its source file.
pub(crate) fn credential_problem(name: &str, who: &Account) -> Option<String> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        return file_secret_problem(&Path::new(&dir).join(name), who);
    }
    let Some(src) = credential_source(name) else {
        return Some(format!(
            "the credential `{name}` is not one the coffre unit loads: it loads every file of {CREDENTIALS_SOURCE_DIR} as {CREDENTIAL_PREFIX}<file> (read at {SERVICE_CREDENTIALS_DIR}/{CREDENTIAL_PREFIX}<file>); rename it {CREDENTIAL_PREFIX}<file>"
        ));
    };
    let s = src.display();
    // systemd reads it as root and skips symlinks when loading a folder.
    let meta = match std::fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = if name.ends_with("master.key") {
                format!(" (a new master key: `coffre keys init --to {s}`)")
            } else {
                String::new()
            };
            return Some(format!(
                "the credential `{name}` comes from {s}, which does not exist: put the secret there (root, mode 0600){hint}, or fix the name"
            ));
        }
        Err(e) => return Some(format!("cannot check {s} (the credential `{name}`): {e}")),
    };
    if meta.file_type().is_symlink() {
        return Some(format!(
            "{s} (the credential `{name}`) is a symlink, which systemd skips when it loads {CREDENTIALS_SOURCE_DIR}: put the file itself there"
        ));
    }
    if !meta.is_file() {
        return Some(format!(
            "{s} (the credential `{name}`) is not a regular file: it must be the file holding the secret"
        ));
    }
    if meta.uid() != 0 {
        return Some(format!(
            "{s} (the credential `{name}`) belongs to uid {}, not root: another account could replace the secret; run `chown root: {s}`",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "{s} (the credential `{name}`) is readable or writable by group or others (mode {mode:o}): run `chmod 600 {s}`"
        ));
    }
    None
}

/// A secret file read directly by `who`: present, regular, owned by `who` (or root when `who`
/// is root), no access for group or others, and reachable.
fn file_secret_problem(path: &Path, who: &Account) -> Option<String> {
    let d = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{d} does not exist: put the secret there (owned by {}, mode 0600) or fix the path",
                who.name
            ))
        }
        Err(e) => {
            return Some(format!(
                "cannot check {d}: {e}. It must be readable by {}",
                who.name
            ))
        }
    };
    if !meta.is_file() {
        return Some(format!(
            "{d} is not a regular file: it must be a file holding the secret"
        ));
    }
    if meta.uid() != who.uid && meta.uid() != 0 {
        return Some(format!(
            "{d} belongs to uid {}, not to {} (uid {}) or root: another account could replace the secret; run `chown {} {d}`",
            meta.uid(),
            who.name,
            who.uid,
            who.name
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "{d} is readable or writable by group or others (mode {mode:o}): it holds a secret; run `chmod 600 {d}`"
        ));
    }
    if let Some(at) = who.blocked_at(path) {
        return Some(format!(
            "{} (uid {}) cannot reach {d}: it may not enter {}",
            who.name,
            who.uid,
            at.display()
        ));
    }
    if !who.may(&meta, 4) {
        return Some(format!(
            "{d} is not readable by {} (uid {}; owner uid {}, mode {mode:o}): run `chown {} {d}`",
            who.name,
            who.uid,
            meta.uid(),
            who.name
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Account {
        Account {
            name: "nobody".into(),
            uid: 65534,
            groups: vec![65534],
        }
    }

    /// Issue 27: a PITR source names an archiver that exists and is not in the erasure group,
    /// its pg-wal is absolute, and the role groups exist.
    #[test]
    fn roles_name_accounts_that_exist_and_the_archiver_cannot_erase() {
        let text = |pitr: &str, erasure: &str| {
            format!(
                r#"state-dir = "/tmp/coffre-test-state"
[replication]
min-sites = 1
[audit]
operators-group = "root"
{erasure}
[[source]]
name = "emr"
path = "/tmp/in"
[source.pitr]
{pitr}
[[store]]
name = "a"
kind = "local"
site = "mtl"
jurisdiction = "CA-QC"
path = "/tmp/a"
[[key-provider]]
name = "local"
kind = "file"
master-key = "/tmp/coffre-nonexistent/master.key"
"#
            )
        };
        let roles = |pitr: &str, erasure: &str| {
            let (c, p) = Config::check_text(&text(pitr, erasure), None);
            assert!(p.is_empty(), "{p:?}");
            role_problems(&c.unwrap())
        };
        let none = roles("", "");
        assert_eq!(none.len(), 1, "{none:?}");
        assert_eq!(none[0].0, "source[0].pitr.archiver");
        assert!(none[0].1.contains("names no archiver"), "{none:?}");
        assert!(roles("archiver = \"root\"", "").is_empty());
        let ghost = roles("archiver = \"no-such-account-27\"", "");
        assert!(
            ghost[0].1.contains("neither a user nor a group"),
            "{ghost:?}"
        );
        let eraser = roles("archiver = \"root\"", "erasure-group = \"root\"");
        assert!(
            eraser[0].1.contains("is in the erasure group"),
            "{eraser:?}"
        );
        let rel = roles("archiver = \"root\"\npg-wal = \"main/pg_wal\"", "");
        assert_eq!(rel[0].0, "source[0].pitr.pg-wal", "{rel:?}");
        let missing = roles(
            "archiver = \"root\"",
            "erasure-group = \"no-such-group-27\"",
        );
        assert_eq!(missing[0].0, "audit.erasure-group", "{missing:?}");
    }

    #[test]
    fn a_missing_source_folder_says_coffre_never_creates_it() {
        let d = tempfile::tempdir().unwrap();
        let m = source_problem(&d.path().join("nope"), &Account::current()).unwrap();
        assert!(m.contains("does not exist"), "{m}");
        assert!(m.contains("coffre never creates a source folder"), "{m}");
        assert!(source_problem(d.path(), &Account::current()).is_none());
    }

    #[test]
    fn a_root_only_folder_is_unreadable_for_another_account() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("in");
        std::fs::create_dir(&src).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::geteuid().as_raw() == 65534 {
            return;
        }
        let m = source_problem(&src, &nobody()).unwrap();
        assert!(m.contains("not readable by nobody"), "{m}");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(source_problem(&src, &nobody()), None);
    }

    #[test]
    fn credentials_are_checked_at_their_source_and_must_be_named_as_the_unit_loads_them() {
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return;
        }
        let m = credential_problem("master.key", &nobody()).unwrap();
        assert!(m.contains("is not one the coffre unit loads"), "{m}");
        let m = secret_problem(
            Path::new("/run/credentials/coffre.service/coffre_unit-test-absent"),
            &nobody(),
        )
        .unwrap();
        assert!(
            m.contains("comes from /etc/coffre/credentials/unit-test-absent, which does not exist"),
            "{m}"
        );
    }
}
