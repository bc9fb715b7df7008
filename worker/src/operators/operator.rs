//! Who runs an operator command, as the audit trail records it (SPEC
//! §11.2): the admin token's name over the admin API, the OS user for a
//! command run on the ledger itself.

use std::fmt;

/// The `who` of an operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(String);

impl Operator {
    /// The worker itself: what it does unasked.
    pub fn worker() -> Operator {
        Operator(crate::ledger::WORKER.to_owned())
    }

    /// An operator who presented the admin token configured under `name`.
    pub fn token(name: &str) -> Operator {
        Operator(name.to_owned())
    }

    /// The OS user running this process: the name `/etc/passwd` gives its
    /// real uid, else `$USER`, else `uid:N`. (Whoever can open the ledger
    /// can write it anyway; this records who did, not who may.)
    pub fn local_user() -> Operator {
        let uid = rustix::process::getuid().as_raw();
        let name = passwd_name(uid)
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| format!("uid:{uid}"));
        Operator(name)
    }

    /// The OS user with `uid` (a peer of the worker's admin socket): the
    /// name `/etc/passwd` gives it, else `uid:N`.
    pub fn os_user(uid: u32) -> Operator {
        Operator(passwd_name(uid).unwrap_or_else(|| format!("uid:{uid}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of `uid` in `/etc/passwd`.
fn passwd_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| user_of(&passwd, uid))
}

/// The name of `uid` in the text of a passwd file.
fn user_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let line_uid: u32 = fields.next()?.parse().ok()?;
        (line_uid == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_named_by_its_passwd_line() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_of(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_of(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_of(passwd, 1001), None);
    }
}
