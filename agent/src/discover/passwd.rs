//! Parsers for the account databases /etc/passwd and /etc/group, shared by the `user`/`group`
//! collector, the `file` collector (owner and group names) and the `process` collector
//! (user names). Malformed lines are skipped and reported by line number; nothing panics.

use std::collections::HashMap;

use crate::hostroot::{HostRoot, ReadError};

/// One /etc/passwd entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

/// One /etc/group entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// A line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: {reason}")]
pub struct BadLine {
    pub file: &'static str,
    pub line: usize,
    pub reason: &'static str,
}

/// Parses /etc/passwd text. Comments, blank lines and NIS compat lines (`+`/`-`) are not
/// entries and are skipped silently.
pub fn parse_passwd(text: &str) -> (Vec<PasswdEntry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if skip(line) {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        let fail = |reason| BadLine {
            file: "/etc/passwd",
            line: n + 1,
            reason,
        };
        if f.len() != 7 {
            bad.push(fail("expected 7 colon-separated fields"));
            continue;
        }
        if f[0].is_empty() {
            bad.push(fail("empty user name"));
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            bad.push(fail("uid or gid is not a number"));
            continue;
        };
        entries.push(PasswdEntry {
            name: f[0].to_owned(),
            uid,
            gid,
            gecos: f[4].to_owned(),
            home: f[5].to_owned(),
            shell: f[6].to_owned(),
        });
    }
    (entries, bad)
}

/// Parses /etc/group text, keeping every group, also those without listed members.
pub fn parse_group(text: &str) -> (Vec<GroupEntry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if skip(line) {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        let fail = |reason| BadLine {
            file: "/etc/group",
            line: n + 1,
            reason,
        };
        if f.len() != 4 {
            bad.push(fail("expected 4 colon-separated fields"));
            continue;
        }
        if f[0].is_empty() {
            bad.push(fail("empty group name"));
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            bad.push(fail("gid is not a number"));
            continue;
        };
        let members = f[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        entries.push(GroupEntry {
            name: f[0].to_owned(),
            gid,
            members,
        });
    }
    (entries, bad)
}

fn skip(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t.starts_with('+') || t.starts_with('-')
}

/// uid → user name and gid → group name, from the host's files (first entry wins, as in
/// getpwuid). Missing files give empty maps; callers then report numeric ids.
#[derive(Clone, Debug, Default)]
pub struct AccountNames {
    pub users: HashMap<u32, String>,
    pub groups: HashMap<u32, String>,
}

impl AccountNames {
    pub fn load(root: &HostRoot) -> Result<Self, ReadError> {
        let mut names = AccountNames::default();
        match root.read_to_string("/etc/passwd") {
            Ok(t) => {
                for e in parse_passwd(&t).0 {
                    names.users.entry(e.uid).or_insert(e.name);
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        match root.read_to_string("/etc/group") {
            Ok(t) => {
                for e in parse_group(&t).0 {
                    names.groups.entry(e.gid).or_insert(e.name);
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        Ok(names)
    }

    /// The user name, or the uid as text when unknown.
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The group name, or the gid as text when unknown.
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_lines_and_reports_bad_ones() {
        let (users, bad) = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\n\nbroken line\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nx:x:NaN:0:::\n+::::::\n",
        );
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].uid, 65534);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 4);
        let (groups, bad) = parse_group("root:x:0:\nsudo:x:27:alice, bob\nbad\n");
        assert_eq!(groups.len(), 2);
        assert!(groups[0].members.is_empty());
        assert_eq!(groups[1].members, vec!["alice", "bob"]);
        assert_eq!(bad.len(), 1);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            let (u, bad) = parse_passwd(&s);
            let lines = s.lines().count();
            prop_assert!(u.len() + bad.len() <= lines);
            let _ = parse_group(&s);
        }
    }
}
