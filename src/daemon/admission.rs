//! Who may use the control socket for what: the caller resolved from its uid ([`Caller`]: its
//! name, the sources whose archiver it is, whether it is an operator or in the erasure group),
//! the groups behind those roles, the admission rule by command ([`admission`]) with the text
//! of each refusal ([`Refusal`]), and the rate-limited logging of refusals in the access log.
//! The socket's server (`daemon::control`) asks it; it starts no task and reads no request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::app::Coffre;
use crate::audit::{NewEntry, Target};
use crate::cli::{self, Access, Command};

/// Refusals logged in the access log per minute; more are counted and logged with the next.
const REFUSALS_PER_MINUTE: u32 = 10;

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// A group a role names could not be looked up.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum GroupError {
    #[error("group lookup: {0}")]
    Lookup(nix::errno::Errno),
    #[error("{key} `{group}` does not exist")]
    Missing { key: &'static str, group: String },
}

/// Root, or a member (primary or supplementary) of the operators' group.
pub(crate) fn is_operator(uid: u32, group: Option<&str>) -> Result<bool, GroupError> {
    if uid == 0 {
        return Ok(true);
    }
    match group {
        Some(g) => in_group(uid, g, "audit.operators-group"),
        None => Ok(false),
    }
}

/// Is `uid` a member (primary or supplementary) of `group` (named by the config key `key`)?
fn in_group(uid: u32, group: &str, key: &'static str) -> Result<bool, GroupError> {
    let g = nix::unistd::Group::from_name(group)
        .map_err(GroupError::Lookup)?
        .ok_or_else(|| GroupError::Missing {
            key,
            group: group.to_string(),
        })?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    Ok(match user {
        Some(u) => u.gid == g.gid || g.mem.iter().any(|m| m == &u.name),
        None => false,
    })
}

/// Is `uid` the archiver `spec` names: that user when a user has that name (e.g. `postgres`,
/// whose group of the same name may hold people), else a member of the group of that name.
fn is_archiver(uid: u32, spec: &str) -> bool {
    match nix::unistd::User::from_name(spec) {
        Ok(Some(u)) => u.uid.as_raw() == uid,
        _ => in_group(uid, spec, "[source.pitr] archiver").unwrap_or(false),
    }
}

/// The PITR sources whose archiver `uid` is.
fn archiver_of(app: &Coffre, uid: u32) -> Vec<String> {
    app.config
        .sources
        .iter()
        .filter(|s| {
            s.pitr
                .as_ref()
                .and_then(|p| p.archiver.as_deref())
                .is_some_and(|a| is_archiver(uid, a))
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Who is calling, resolved once per connection from its uid, in a blocking thread (user and
/// group lookups may ask NSS, LDAP or SSSD, and must not hold up the accept loop): its name,
/// the PITR sources whose archiver it is, and (for another caller than root or an archiver)
/// whether it is an operator and in the erasure group.
pub(super) struct Caller {
    pub(super) uid: u32,
    pub(super) name: String,
    pub(super) archives: Vec<String>,
    operator: Result<bool, GroupError>,
    /// None: `audit.erasure-group` is not set.
    eraser: Option<Result<bool, GroupError>>,
}

impl Caller {
    pub(super) fn resolve(app: &Coffre, uid: u32) -> Caller {
        let mut c = Caller {
            uid,
            name: user_name(uid),
            archives: Vec::new(),
            operator: Ok(uid == 0),
            eraser: None,
        };
        if uid == 0 {
            return c;
        }
        c.archives = archiver_of(app, uid);
        if c.archives.is_empty() {
            let audit = &app.config.audit;
            c.operator = is_operator(uid, audit.operators_group.as_deref());
            c.eraser = audit
                .erasure_group
                .as_deref()
                .map(|g| in_group(uid, g, "audit.erasure-group"));
        }
        c
    }
}

/// Refusals logged per caller (uid) and window; the rest are counted and reported with that
/// caller's next logged one. Per caller, so that one account's burst never hides another's
/// refusals.
pub(super) struct RefusalLimiter {
    callers: std::collections::HashMap<u32, RefusalWindow>,
}

/// One caller's minute: its start, refusals logged in it, and those not logged since the last
/// logged one.
struct RefusalWindow {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    pub(super) fn new() -> RefusalLimiter {
        RefusalLimiter {
            callers: Default::default(),
        }
    }

    /// Some(n): log this refusal of `uid`, with n earlier ones of the same caller that were not
    /// logged. None: count it.
    fn admit(&mut self, uid: u32, now: Instant) -> Option<u64> {
        let minute = Duration::from_secs(60);
        // Forget the callers whose minute is over and who have nothing left to report.
        self.callers
            .retain(|_, w| now.duration_since(w.start) < minute || w.suppressed > 0);
        let w = self.callers.entry(uid).or_insert(RefusalWindow {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= minute {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < REFUSALS_PER_MINUTE {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Why the control socket does not run a command for a caller (exit 77); the text is the
/// refusal the caller reads and the access log records.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("`{action}` does not go through the control socket: {reason}")]
    LocalOnly {
        action: &'static str,
        reason: &'static str,
    },
    #[error("user {name} is the archiver of source(s) {sources}: through the daemon it may only archive and fetch their WAL (wal-push, wal-fetch), not `{action}`; an operator runs that")]
    ArchiverOnly {
        name: String,
        sources: String,
        action: &'static str,
    },
    #[error("`{action}` through the daemon is for root only (user {name})")]
    RootOnly { action: &'static str, name: String },
    #[error("user {name} is not the archiver of this source: only `[source.pitr] archiver` (the account PostgreSQL runs as) and root may archive its WAL, so that nobody else puts bytes under its WAL names")]
    NotArchiver { name: String },
    #[error("user {name} may not erase (`{action}`): only root and members of audit.erasure-group `{group}` may")]
    NotEraser {
        name: String,
        action: &'static str,
        group: String,
    },
    #[error("`{action}` erases, and audit.erasure-group is not set: only root may (user {name})")]
    NoErasureGroup { action: &'static str, name: String },
    #[error("user {name} is not in the operators' group{}", operators_group.as_deref().map(|g| format!(" `{g}`")).unwrap_or_else(|| " (audit.operators-group is not set: only root may)".into()))]
    NotOperator {
        name: String,
        operators_group: Option<String>,
    },
    /// A group a role names could not be looked up.
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// May this caller run this command through the socket? Roles by capability and source:
/// root runs everything that goes through the socket; a source's archiver archives and
/// fetches that source's WAL and nothing else (whatever groups it is in); erasure needs
/// `audit.erasure-group`; the rest is for operators.
pub(super) fn admission(caller: &Caller, app: &Coffre, command: &Command) -> Result<(), Refusal> {
    let name = caller.name.clone();
    let action = command.action();
    let access = command.access();
    if access == Access::LocalOnly {
        return Err(Refusal::LocalOnly {
            action,
            reason: command.local_only_reason(),
        });
    }
    if caller.uid == 0 {
        return Ok(());
    }
    let archives = &caller.archives;
    if !archives.is_empty() {
        return match command.wal_source() {
            Some(source) if archives.iter().any(|a| a == source) => Ok(()),
            _ => Err(Refusal::ArchiverOnly {
                name,
                sources: archives.join(", "),
                action,
            }),
        };
    }
    let audit = &app.config.audit;
    match access {
        Access::LocalOnly => Ok(()),
        Access::Root => Err(Refusal::RootOnly { action, name }),
        Access::Archive => Err(Refusal::NotArchiver { name }),
        Access::Erase => match &audit.erasure_group {
            Some(_) if caller.eraser.clone().unwrap_or(Ok(false))? => Ok(()),
            Some(g) => Err(Refusal::NotEraser {
                name,
                action,
                group: g.clone(),
            }),
            None => Err(Refusal::NoErasureGroup { action, name }),
        },
        Access::Read | Access::Operate | Access::Fetch => match caller.operator.clone()? {
            true => Ok(()),
            false => Err(Refusal::NotOperator {
                name,
                operators_group: audit.operators_group.clone(),
            }),
        },
    }
}

/// Log a refusal, rate-limited, with bounded text from the caller.
pub(super) fn log_refusal(
    app: &Coffre,
    limiter: &Mutex<RefusalLimiter>,
    uid: u32,
    name: &str,
    command: &Command,
    reason: &str,
) -> Result<(), crate::audit::AuditError> {
    let action = command.action();
    let admitted = limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(uid, Instant::now());
    let Some(suppressed) = admitted else {
        return Ok(());
    };
    let mut outcome = format!("refused: {}", cli::bounded(reason, 512));
    if suppressed > 0 {
        outcome.push_str(&format!(
            " ({suppressed} earlier refusal(s) not logged: rate limit)"
        ));
    }
    app.audit
        .append(NewEntry {
            actor: name.to_string(),
            action: action.to_string(),
            target: Target::default(),
            purpose: cli::bounded(command.purpose().unwrap_or_default(), cli::MAX_PURPOSE),
            outcome,
            exposes: None,
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_up_to_the_limit_then_counted() {
        let mut l = RefusalLimiter::new();
        let t0 = Instant::now();
        for _ in 0..REFUSALS_PER_MINUTE {
            assert_eq!(l.admit(1000, t0), Some(0));
        }
        assert_eq!(l.admit(1000, t0), None);
        assert_eq!(l.admit(1000, t0), None);
        // Another caller's refusals are logged all the same.
        assert_eq!(l.admit(1001, t0), Some(0));
        let later = t0 + Duration::from_secs(61);
        assert_eq!(l.admit(1000, later), Some(2));
        assert_eq!(l.admit(1000, later), Some(0));
        // A caller whose minute is over, with nothing to report, is forgotten.
        assert!(!l.callers.contains_key(&1001));
    }
}
