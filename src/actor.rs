//! Who is acting: the actor recorded in the access log for a local run.

/// The OS user running this process (the actor of CLI accesses).
pub fn current_user() -> String {
    // No environment variable names the actor: a socket caller's name comes from its peer
    // credentials (daemon::control), never from anything the caller sets.
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid:{uid}"))
}
