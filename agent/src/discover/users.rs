//! `user` and `group` CIs from the host's local account files, /etc/passwd and /etc/group
//! (parsed by [`super::passwd`]), plus UID_MIN/UID_MAX from /etc/login.defs to tell system
//! accounts from people. Every group is a CI, also one without listed members. Accounts from
//! other NSS sources (LDAP, SSSD, systemd dynamic users) are not local configuration and are
//! not reported. /etc/shadow is never read: password hashes are not inventory.
//!
//! A malformed line is skipped with a warning naming the file and line (`partial`); so is a
//! second entry with a name already seen (the first wins, as in getpwnam). No /etc/passwd
//! at all is `unsupported` (a scratch container); an unreadable one is `permission_denied`.

use std::collections::{BTreeMap, BTreeSet};

use cmdb_proto::model::{Item, class};

use super::passwd::{self, GroupEntry, PasswdEntry};
use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};

/// useradd's defaults when /etc/login.defs does not say otherwise.
const DEFAULT_UID_MIN: u32 = 1000;
const DEFAULT_UID_MAX: u32 = 60000;

pub struct UserCollector;

impl Collector for UserCollector {
    fn name(&self) -> &'static str {
        "users"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::USER, class::GROUP]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root)
    }
}

/// The range of uids that belong to people (login.defs UID_MIN..=UID_MAX); the rest are
/// system accounts, including nobody (65534).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    pub min: u32,
    pub max: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            min: DEFAULT_UID_MIN,
            max: DEFAULT_UID_MAX,
        }
    }
}

impl UidRange {
    pub fn is_system(self, uid: u32) -> bool {
        uid < self.min || uid > self.max
    }
}

/// Reads UID_MIN and UID_MAX from /etc/login.defs text; unparseable values keep the
/// defaults (login.defs is `KEY VALUE` lines with `#` comments).
pub fn parse_login_defs(text: &str) -> UidRange {
    let mut range = UidRange::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(v) = value.parse::<u32>() else {
            continue;
        };
        match key {
            "UID_MIN" => range.min = v,
            "UID_MAX" => range.max = v,
            _ => {}
        }
    }
    range
}

/// Whether a login shell lets the account log in (an empty field means /bin/sh).
pub fn is_login_shell(shell: &str) -> bool {
    let base = shell.rsplit('/').next().unwrap_or(shell);
    !matches!(base, "nologin" | "false")
}

fn collect(root: &HostRoot) -> Outcome {
    let passwd_text = match root.read_to_string("/etc/passwd") {
        Ok(t) => t,
        Err(e) if e.is_not_found() => {
            return Outcome::unsupported("no local account database (no /etc/passwd)");
        }
        Err(e) => return read_failed(&e),
    };
    let mut out = Outcome::new();
    let group_text = match root.read_to_string("/etc/group") {
        Ok(t) => t,
        Err(e) => {
            // Users are still worth reporting; groups and memberships are not known.
            match e {
                ReadError::PermissionDenied(_) => out.permission_denied(e.to_string()),
                _ => out.warn(format!("cannot read groups: {e}")),
            }
            String::new()
        }
    };
    let range = match root.read_to_string("/etc/login.defs") {
        Ok(t) => parse_login_defs(&t),
        Err(_) => UidRange::default(),
    };
    let (users, bad) = passwd::parse_passwd(&passwd_text);
    bad.iter().for_each(|b| out.warn(b.to_string()));
    let (groups, bad) = passwd::parse_group(&group_text);
    bad.iter().for_each(|b| out.warn(b.to_string()));
    for item in account_items(users, groups, range, &mut out) {
        out.push(item);
    }
    out
}

fn read_failed(e: &ReadError) -> Outcome {
    let mut o = Outcome::new();
    if e.is_permission_denied() {
        o.permission_denied(e.to_string());
    } else {
        o.fail(cmdb_proto::model::CollectorState::Error, e.to_string());
    }
    o
}

/// Builds the `user` and `group` items; duplicate names are warned about on `out`.
pub fn account_items(
    users: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
    range: UidRange,
    out: &mut Outcome,
) -> Vec<Item> {
    let users = first_wins(users, |u| &u.name, "/etc/passwd", "user", out);
    let groups = first_wins(groups, |g| &g.name, "/etc/group", "group", out);
    // Lookups below go in file order, so a shared gid names the first group (getgrgid).

    // gid → name, first wins (getgrgid); supplementary memberships by user name.
    let mut group_name: BTreeMap<u32, &str> = BTreeMap::new();
    let mut member_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for g in &groups {
        group_name.entry(g.gid).or_insert(&g.name);
        for m in &g.members {
            member_of.entry(m).or_default().insert(&g.name);
        }
    }
    let mut primary_members: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();

    let mut items = Vec::with_capacity(users.len() + groups.len());
    for u in &users {
        let primary = group_name.get(&u.gid).copied();
        if let Some(p) = primary {
            primary_members.entry(p).or_default().insert(&u.name);
        }
        let all: BTreeSet<&str> = member_of
            .get(u.name.as_str())
            .into_iter()
            .flatten()
            .copied()
            .chain(primary)
            .collect();
        items.push(
            Item::new(class::USER, u.name.as_str())
                .with("uid", u.uid)
                .with("gid", u.gid)
                .with("primary_group", primary)
                .with("home", u.home.as_str())
                .with("shell", u.shell.as_str())
                .with("gecos", u.gecos.as_str())
                .with("groups", all.into_iter().collect::<Vec<_>>())
                .with("login_shell", is_login_shell(&u.shell))
                .with("system_account", range.is_system(u.uid)),
        );
    }
    for g in &groups {
        let mut members: Vec<&str> = g.members.iter().map(String::as_str).collect();
        members.sort_unstable();
        members.dedup();
        let primary: Vec<&str> = primary_members
            .get(g.name.as_str())
            .into_iter()
            .flatten()
            .copied()
            .collect();
        items.push(
            Item::new(class::GROUP, g.name.as_str())
                .with("gid", g.gid)
                .with("members", members)
                .with("primary_members", primary),
        );
    }
    items
}

/// Keeps the first entry per name, in file order, warning about later ones.
fn first_wins<T>(
    entries: Vec<T>,
    name: impl Fn(&T) -> &str,
    file: &str,
    what: &str,
    out: &mut Outcome,
) -> Vec<T> {
    let mut seen = BTreeSet::new();
    let mut kept = Vec::with_capacity(entries.len());
    for e in entries {
        if seen.insert(name(&e).to_owned()) {
            kept.push(e);
        } else {
            out.warn(format!(
                "{file}: duplicate {what} name {:?} (first entry kept)",
                name(&e)
            ));
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmdb_proto::model::{AttrValue, CollectorState};
    use proptest::prelude::*;

    fn strs(item: &Item, attr: &str) -> Vec<String> {
        item.attr(attr)
            .and_then(AttrValue::as_list)
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    fn find<'a>(items: &'a [Item], class: &str, key: &str) -> &'a Item {
        items
            .iter()
            .find(|i| i.class == class && i.key == key)
            .unwrap()
    }

    #[test]
    fn memberships_primary_groups_and_duplicates() {
        let (users, _) = passwd::parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n\
             alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
             svc:x:998:4242::/:/usr/sbin/nologin\n\
             alice:x:1001:1001::/home/alice2:/bin/sh\n\
             nobody:x:65534:65534::/nonexistent:/bin/false\n",
        );
        let (groups, _) = passwd::parse_group(
            "root:x:0:\nsudo:x:27:alice,bob\nadm:x:4:alice, alice\nalice:x:1000:\nempty:x:50:\nsudo:x:99:root\n",
        );
        let mut out = Outcome::new();
        let items = account_items(users, groups, UidRange::default(), &mut out);
        assert_eq!(out.state(), CollectorState::Partial);
        let m = out.message().unwrap();
        assert!(
            m.contains(r#"/etc/passwd: duplicate user name "alice""#),
            "{m}"
        );
        assert!(
            m.contains(r#"/etc/group: duplicate group name "sudo""#),
            "{m}"
        );

        let alice = find(&items, class::USER, "alice");
        assert_eq!(strs(alice, "groups"), vec!["adm", "alice", "sudo"]);
        assert_eq!(alice.attr("uid"), Some(&AttrValue::Int(1000)));
        assert_eq!(alice.attr("system_account"), Some(&AttrValue::Bool(false)));
        let root = find(&items, class::USER, "root");
        // The second "sudo" (listing root) lost to the first.
        assert_eq!(strs(root, "groups"), vec!["root"]);
        let svc = find(&items, class::USER, "svc");
        assert_eq!(svc.attr("primary_group"), Some(&AttrValue::Null));
        assert!(strs(svc, "groups").is_empty());
        assert_eq!(svc.attr("login_shell"), Some(&AttrValue::Bool(false)));
        let nobody = find(&items, class::USER, "nobody");
        assert_eq!(nobody.attr("system_account"), Some(&AttrValue::Bool(true)));
        assert_eq!(nobody.attr("login_shell"), Some(&AttrValue::Bool(false)));

        let empty = find(&items, class::GROUP, "empty");
        assert!(strs(empty, "members").is_empty());
        let adm = find(&items, class::GROUP, "adm");
        assert_eq!(strs(adm, "members"), vec!["alice"]);
        let alice_g = find(&items, class::GROUP, "alice");
        assert_eq!(strs(alice_g, "primary_members"), vec!["alice"]);
        assert_eq!(items.len(), 4 + 5);
    }

    #[test]
    fn login_defs_and_shells() {
        let r = parse_login_defs(
            "# comment\nUID_MIN\t\t\t  500\nUID_MAX 59999\nGID_MIN 500\nUID_MIN bogus\n",
        );
        assert_eq!(
            r,
            UidRange {
                min: 500,
                max: 59999
            }
        );
        assert!(r.is_system(499));
        assert!(!r.is_system(500));
        assert!(r.is_system(65534));
        assert_eq!(parse_login_defs(""), UidRange::default());
        assert!(is_login_shell("/bin/bash"));
        assert!(is_login_shell(""));
        assert!(!is_login_shell("/usr/sbin/nologin"));
        assert!(!is_login_shell("/sbin/nologin"));
        assert!(!is_login_shell("/bin/false"));
    }

    #[test]
    fn missing_and_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let o = collect(&HostRoot::new(dir.path()));
        assert_eq!(o.state(), CollectorState::Unsupported);
        let o = read_failed(&ReadError::PermissionDenied("/etc/passwd".into()));
        assert_eq!(o.state(), CollectorState::PermissionDenied);
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let o = collect(&HostRoot::new(dir.path()));
        assert_eq!(o.state(), CollectorState::Partial);
        assert_eq!(o.items.len(), 1);
    }

    proptest! {
        #[test]
        fn arbitrary_files_never_panic(p in any::<String>(), g in any::<String>(), d in any::<String>()) {
            let (users, _) = passwd::parse_passwd(&p);
            let (groups, _) = passwd::parse_group(&g);
            let mut out = Outcome::new();
            let n = users.len() + groups.len();
            let items = account_items(users, groups, parse_login_defs(&d), &mut out);
            prop_assert!(items.len() <= n);
        }

        #[test]
        fn every_group_is_an_item(names in proptest::collection::btree_set("[a-z]{1,8}", 0..30)) {
            let text: String = names.iter().enumerate().map(|(i, n)| format!("{n}:x:{i}:\n")).collect();
            let (groups, bad) = passwd::parse_group(&text);
            prop_assert!(bad.is_empty());
            let mut out = Outcome::new();
            let items = account_items(Vec::new(), groups, UidRange::default(), &mut out);
            prop_assert_eq!(items.len(), names.len());
            prop_assert_eq!(out.state(), CollectorState::Ok);
        }
    }
}
