//! Relations between CIs that different collectors discovered, derived after every
//! collector has run, from attributes each collector promises to fill:
//!
//! | relation | from the attribute |
//! |---|---|
//! | process `listens_on` listening_port | `listening_port.exe` = the process key |
//! | process `connects_to` connection | `connection.exe` = the process key |
//! | service `runs` process | `service.main_pid` ∈ `process.pids` |
//! | filesystem `mounted_on` disk | `filesystem.disks` (disk names) |
//! | user `member_of` group | `user.groups` (group names, primary group included) |
//!
//! Relations whose ends are not both in the inventory (a class left out by `--only`, a
//! collector that failed) are dropped: a relation never points at nothing.

use std::collections::{BTreeSet, HashMap};

use cmdb_proto::model::{AttrValue, Item, Relation, class, reference};

/// Derives the cross-collector relations of DESIGN.md from `items`.
pub fn derive(items: &[Item]) -> Vec<Relation> {
    let mut out = Vec::new();
    let mut pid_to_process: HashMap<i64, &str> = HashMap::new();
    for i in items.iter().filter(|i| i.class == class::PROCESS) {
        for pid in list(i, "pids").filter_map(AttrValue::as_i64) {
            pid_to_process.insert(pid, &i.key);
        }
    }
    let rel = |from: String, to: String, kind: &str| Relation {
        from,
        to,
        kind: kind.to_owned(),
    };
    for i in items {
        match i.class.as_str() {
            class::LISTENING_PORT => {
                if let Some(exe) = i.attr("exe").and_then(AttrValue::as_str) {
                    out.push(rel(
                        reference(class::PROCESS, exe),
                        i.reference(),
                        "listens_on",
                    ));
                }
            }
            class::CONNECTION => {
                if let Some(exe) = i.attr("exe").and_then(AttrValue::as_str) {
                    out.push(rel(
                        reference(class::PROCESS, exe),
                        i.reference(),
                        "connects_to",
                    ));
                }
            }
            class::SERVICE => {
                let pid = i.attr("main_pid").and_then(AttrValue::as_i64);
                if let Some(exe) = pid.filter(|p| *p > 0).and_then(|p| pid_to_process.get(&p)) {
                    out.push(rel(i.reference(), reference(class::PROCESS, exe), "runs"));
                }
            }
            class::FILESYSTEM => {
                for disk in list(i, "disks").filter_map(AttrValue::as_str) {
                    out.push(rel(
                        i.reference(),
                        reference(class::DISK, disk),
                        "mounted_on",
                    ));
                }
            }
            class::USER => {
                for g in list(i, "groups").filter_map(AttrValue::as_str) {
                    out.push(rel(i.reference(), reference(class::GROUP, g), "member_of"));
                }
            }
            _ => {}
        }
    }
    out
}

fn list<'a>(item: &'a Item, name: &str) -> impl Iterator<Item = &'a AttrValue> {
    item.attr(name)
        .and_then(AttrValue::as_list)
        .unwrap_or_default()
        .iter()
}

/// Drops relations with an end that is not among `items`.
pub fn retain_resolvable(relations: &mut Vec<Relation>, items: &[Item]) {
    let known: BTreeSet<String> = items.iter().map(Item::reference).collect();
    relations.retain(|r| known.contains(&r.from) && known.contains(&r.to));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_every_documented_relation() {
        let items = vec![
            Item::new(class::PROCESS, "/usr/sbin/sshd").with("pids", vec![100_i64, 200]),
            Item::new(class::LISTENING_PORT, "tcp:0.0.0.0:22").with("exe", "/usr/sbin/sshd"),
            Item::new(class::SERVICE, "ssh.service").with("main_pid", 100_i64),
            Item::new(class::DISK, "sda"),
            Item::new(class::FILESYSTEM, "/").with("disks", vec!["sda"]),
            Item::new(class::USER, "alice").with("groups", vec!["alice", "sudo"]),
            Item::new(class::GROUP, "alice"),
            Item::new(class::GROUP, "sudo"),
        ];
        let mut rels = derive(&items);
        retain_resolvable(&mut rels, &items);
        let kinds: Vec<(&str, &str, &str)> = rels
            .iter()
            .map(|r| (r.from.as_str(), r.kind.as_str(), r.to.as_str()))
            .collect();
        assert!(kinds.contains(&(
            "process//usr/sbin/sshd",
            "listens_on",
            "listening_port/tcp:0.0.0.0:22"
        )));
        assert!(kinds.contains(&("service/ssh.service", "runs", "process//usr/sbin/sshd")));
        assert!(kinds.contains(&("filesystem//", "mounted_on", "disk/sda")));
        assert!(kinds.contains(&("user/alice", "member_of", "group/sudo")));
        assert_eq!(rels.len(), 5);
    }

    #[test]
    fn dangling_relations_are_dropped() {
        let items = vec![Item::new(class::USER, "bob").with("groups", vec!["missing"])];
        let mut rels = derive(&items);
        retain_resolvable(&mut rels, &items);
        assert!(rels.is_empty());
    }
}
