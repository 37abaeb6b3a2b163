//! Real Unix users and groups for the tests that check who may do what (operators, erasers,
//! archivers, outsiders): made with a random tag so that runs never meet, removed when the
//! value is dropped. Creating them needs root (tests/run runs as root on CI).

use std::process::Command;

/// Users and groups made for one test.
pub struct UnixUsers {
    tag: String,
    users: Vec<String>,
    groups: Vec<String>,
}

impl UnixUsers {
    pub fn new() -> UnixUsers {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates Unix users: run the suite as root (tests/run does on CI)"
        );
        UnixUsers {
            tag: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
            users: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// A new group `<prefix><tag>`; returns its name.
    pub fn group(&mut self, prefix: &str) -> String {
        let name = format!("{prefix}{}", self.tag);
        let st = Command::new("groupadd").arg(&name).status().unwrap();
        assert!(st.success(), "groupadd {name}");
        self.groups.push(name.clone());
        name
    }

    /// A new user `<prefix><tag>` (no home, no group of its own), member of `groups`; returns
    /// its name.
    pub fn user(&mut self, prefix: &str, groups: &[&str]) -> String {
        let name = format!("{prefix}{}", self.tag);
        let mut c = Command::new("useradd");
        c.args(["-M", "-N", "-s", "/bin/sh"]);
        if !groups.is_empty() {
            c.args(["-G", &groups.join(",")]);
        }
        let st = c.arg(&name).status().unwrap();
        assert!(st.success(), "useradd {name}");
        self.users.push(name.clone());
        name
    }

    pub fn uid(name: &str) -> nix::unistd::Uid {
        nix::unistd::User::from_name(name).unwrap().unwrap().uid
    }
}

impl Drop for UnixUsers {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).status();
        }
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).status();
        }
    }
}

/// An operator made for one test (in the group `postgres`, the operators' group of the PITR
/// tests) who is not the archiver; removed after it.
pub struct TempUser {
    pub name: String,
    _made: UnixUsers,
}

impl TempUser {
    pub fn operator() -> TempUser {
        let mut m = UnixUsers::new();
        let name = m.user("cofpitr", &["postgres"]);
        TempUser { name, _made: m }
    }
}
