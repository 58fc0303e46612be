//! Table views of the CMDB answers (agents, CIs, relations, clones), one function per
//! command; `render_judgment` has the judgment views. Each returns the whole text,
//! so the views are tested without a terminal or a server.

use std::collections::BTreeSet;
use std::time::SystemTime;

use cmdb_collector::http::json::{CiDetail, Direction, RelationView};
use cmdb_collector::store::{AgentRecord, ChangeKind, CiRecord, CiState, CloneRecord};
use cmdb_proto::model::{AttrValue, Attrs};

use crate::table::Table;

pub fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn opt_when(t: Option<SystemTime>) -> String {
    t.map_or_else(|| "never".to_owned(), when)
}

pub fn opt(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// An attribute value as shown in tables: `null` spelled out (an empty cell means "no such
/// attribute"), lists comma-separated.
pub fn value(v: &AttrValue) -> String {
    match v {
        AttrValue::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

fn state(s: CiState) -> &'static str {
    match s {
        CiState::Present => "present",
        CiState::Absent => "absent",
        CiState::Retired => "retired",
    }
}

fn change(c: ChangeKind) -> &'static str {
    match c {
        ChangeKind::Added => "added",
        ChangeKind::Changed => "changed",
        ChangeKind::Removed => "removed",
        ChangeKind::Retired => "retired",
    }
}

fn agent_status(a: &AgentRecord) -> &'static str {
    if a.revoked {
        "revoked"
    } else if a.connected {
        "connected"
    } else {
        "disconnected"
    }
}

/// `agents`.
pub fn agents(items: &[AgentRecord]) -> String {
    let mut t = Table::new(&[
        "AGENT",
        "HOSTNAME",
        "HOST",
        "VERSION",
        "STATUS",
        "LAST SEEN",
        "LAST SEQ",
        "OUTBOX",
    ]);
    for a in items {
        t.row([
            a.agent_id.clone(),
            opt(a.hostname.as_deref()).to_owned(),
            opt(a.host_id.as_deref()).to_owned(),
            a.version.clone(),
            agent_status(a).to_owned(),
            opt_when(a.last_seen),
            a.last_seq.to_string(),
            a.outbox_events.to_string(),
        ]);
    }
    t.render()
}

/// `agent ID`.
pub fn agent(a: &AgentRecord) -> String {
    let id = &a.identity;
    let mut kv = Table::headerless(2).max_cell(80);
    kv.row(["agent", &a.agent_id]);
    kv.row(["status", agent_status(a)]);
    kv.row(["hostname", opt(a.hostname.as_deref())]);
    kv.row(["host", opt(a.host_id.as_deref())]);
    kv.row(["instance", &a.instance_id]);
    kv.row(["version", &a.version]);
    kv.row(["enrolled", &when(a.enrolled_at)]);
    kv.row(["last seen", &opt_when(a.last_seen)]);
    kv.row(["last seq", &a.last_seq.to_string()]);
    kv.row([
        "outbox".to_owned(),
        format!("{} events, {} bytes", a.outbox_events, a.outbox_bytes),
    ]);
    kv.row(["fqdn", opt(id.fqdn.as_deref())]);
    kv.row(["product uuid", opt(id.product_uuid.as_deref())]);
    kv.row(["serial number", opt(id.serial_number.as_deref())]);
    kv.row(["machine id", opt(id.machine_id.as_deref())]);
    kv.row(["macs", &id.macs.join(", ")]);
    let mut out = kv.render();
    if !a.collectors.is_empty() {
        let mut t = Table::new(&["COLLECTOR", "STATUS", "ITEMS", "MS", "MESSAGE"]);
        for c in &a.collectors {
            t.row([
                c.name.clone(),
                c.status.as_str().to_owned(),
                c.items.to_string(),
                c.duration_ms.to_string(),
                opt(c.message.as_deref()).to_owned(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// `cis`.
pub fn cis(items: &[CiRecord]) -> String {
    let mut t = Table::new(&["ID", "CLASS", "KEY", "HOST", "STATE", "VER", "LAST CHANGED"]);
    for c in items {
        t.row([
            c.id.clone(),
            c.class.clone(),
            c.key.clone(),
            c.host_id.clone(),
            state(c.state).to_owned(),
            c.version.to_string(),
            when(c.last_changed),
        ]);
    }
    t.render()
}

/// One attribute that differs between two versions.
#[derive(Debug, PartialEq)]
pub enum AttrChange<'a> {
    Added(&'a str, &'a AttrValue),
    Changed(&'a str, &'a AttrValue, &'a AttrValue),
    Removed(&'a str, &'a AttrValue),
}

/// The attributes that differ from `old` to `new`, by name.
pub fn attr_diff<'a>(old: &'a Attrs, new: &'a Attrs) -> Vec<AttrChange<'a>> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| match (old.get(name), new.get(name)) {
            (None, Some(n)) => Some(AttrChange::Added(name, n)),
            (Some(o), None) => Some(AttrChange::Removed(name, o)),
            (Some(o), Some(n)) if o != n => Some(AttrChange::Changed(name, o, n)),
            _ => None,
        })
        .collect()
}

/// `ci ID`: the record, its attributes, then its history with what each version changed.
pub fn ci(d: &CiDetail) -> String {
    let c = &d.ci;
    let mut kv = Table::headerless(2).max_cell(80);
    kv.row(["id", &c.id]);
    kv.row(["class", &c.class]);
    kv.row(["key", &c.key]);
    kv.row(["host", &c.host_id]);
    kv.row(["state", state(c.state)]);
    kv.row(["version", &c.version.to_string()]);
    kv.row(["first seen", &when(c.first_seen)]);
    kv.row(["last seen", &when(c.last_seen)]);
    kv.row(["last changed", &when(c.last_changed)]);
    kv.row([
        "source".to_owned(),
        format!("{} seq {}", c.source_agent, c.source_seq),
    ]);
    let mut out = kv.render();

    let mut attrs = Table::new(&["ATTRIBUTE", "VALUE"]).max_cell(80);
    for (name, v) in &c.attrs {
        attrs.row([name.clone(), value(v)]);
    }
    out.push('\n');
    out.push_str(&attrs.render());

    let with_change_ids = d.versions.iter().any(|v| v.change_id.is_some());
    let mut headers = vec![
        "VER",
        "CHANGE",
        "STATE",
        "OBSERVED AT",
        "SOURCE",
        "ATTRIBUTE",
        "OLD",
        "NEW",
    ];
    if with_change_ids {
        headers.push("CHANGE RECORD");
    }
    let mut history = Table::new(&headers).max_cell(40);
    for v in &d.versions {
        let mut head = vec![
            v.version.to_string(),
            change(v.change).to_owned(),
            state(v.state).to_owned(),
            when(v.observed_at),
            format!("{} seq {}", v.agent_id, v.seq),
        ];
        let diff = attr_diff(&v.old_attrs, &v.attrs);
        let mut lines: Vec<[String; 3]> = diff
            .iter()
            .map(|d| match d {
                AttrChange::Added(n, new) => [format!("+ {n}"), String::new(), value(new)],
                AttrChange::Changed(n, old, new) => [format!("~ {n}"), value(old), value(new)],
                AttrChange::Removed(n, old) => [format!("- {n}"), value(old), String::new()],
            })
            .collect();
        if lines.is_empty() {
            lines.push(Default::default());
        }
        for (i, line) in lines.into_iter().enumerate() {
            let mut row = if i == 0 {
                std::mem::take(&mut head)
            } else {
                vec![String::new(); 5]
            };
            row.extend(line);
            if with_change_ids && i == 0 {
                row.push(v.change_id.clone().unwrap_or_default());
            }
            history.row(row);
        }
    }
    out.push('\n');
    out.push_str(&history.render());
    out
}

/// `relations ID`.
pub fn relations(items: &[RelationView]) -> String {
    let mut t = Table::new(&[
        "DIRECTION",
        "KIND",
        "OTHER",
        "CLASS",
        "KEY",
        "STATE",
        "PRESENT",
        "SOURCE",
    ]);
    for r in items {
        let (direction, other_id) = match r.direction {
            Direction::Outgoing => ("out", &r.relation.to),
            Direction::Incoming => ("in", &r.relation.from),
        };
        let (class, key, other_state) = match &r.other {
            Some(o) => (o.class.as_str(), o.key.as_str(), state(o.state)),
            None => ("-", "-", "unknown"),
        };
        t.row([
            direction,
            r.relation.kind.as_str(),
            other_id.as_str(),
            class,
            key,
            other_state,
            if r.relation.present { "yes" } else { "no" },
            if r.derived { "derived" } else { "agent" },
        ]);
    }
    t.render()
}

/// `clones`.
pub fn clones(items: &[CloneRecord]) -> String {
    let mut t = Table::new(&["HOST", "AGENTS", "IDENTITY KEY", "DETECTED"]).max_cell(80);
    for c in items {
        t.row([
            c.host_id.clone(),
            c.agents.join(", "),
            c.identity_key.clone(),
            when(c.detected_at),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cmdb_collector::http::json::CiRef;
    use cmdb_collector::store::{CiVersion, RelationRecord};
    use cmdb_proto::model::{CollectorReport, CollectorState, HostIdentity};
    use proptest::prelude::*;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
    }

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn agent_record() -> AgentRecord {
        AgentRecord {
            agent_id: "agt-1".into(),
            host_id: Some("host-a1".into()),
            instance_id: "inst".into(),
            version: "0.1.0".into(),
            hostname: Some("web-1".into()),
            identity: HostIdentity {
                macs: vec!["52:54:00:12:34:56".into()],
                ..HostIdentity::default()
            },
            enrolled_at: t(0),
            last_seen: None,
            last_seq: 42,
            connected: false,
            outbox_events: 3,
            outbox_bytes: 900,
            collectors: vec![CollectorReport {
                name: "dpkg".into(),
                status: CollectorState::Partial,
                duration_ms: 4,
                items: 700,
                message: Some("line 7 malformed".into()),
                classes: vec!["package".into()],
            }],
            revoked: false,
            last_shutdown: None,
            gaps: 0,
            dropped_metrics: 0,
            dropped_inventory_changes: 0,
            inventory_hash: String::new(),
        }
    }

    #[test]
    fn agents_table() {
        let text = agents(&[agent_record()]);
        assert_eq!(
            text,
            "AGENT  HOSTNAME  HOST     VERSION  STATUS        LAST SEEN  LAST SEQ  OUTBOX\n\
             agt-1  web-1     host-a1  0.1.0    disconnected  never      42        3\n"
        );
        let detail = agent(&agent_record());
        assert!(
            detail.contains("outbox         3 events, 900 bytes\n"),
            "{detail}"
        );
        assert!(
            detail.contains("macs           52:54:00:12:34:56\n"),
            "{detail}"
        );
        assert!(
            detail.contains("dpkg       partial  700    4   line 7 malformed\n"),
            "{detail}"
        );
    }

    fn ci_detail() -> CiDetail {
        let v1 = attrs(&[
            ("name", AttrValue::Str("bash".into())),
            ("version", AttrValue::Str("5.2.15-2".into())),
            ("vendor", AttrValue::Null),
        ]);
        let v2 = attrs(&[
            ("name", AttrValue::Str("bash".into())),
            ("version", AttrValue::Str("5.2.15-3".into())),
            ("size", AttrValue::Int(7000)),
        ]);
        let version = |n, change, state, old: &Attrs, new: &Attrs| CiVersion {
            ci_id: "ci-1".into(),
            version: n,
            change,
            state,
            attrs: new.clone(),
            old_attrs: old.clone(),
            observed_at: t(n * 100),
            agent_id: "agt-1".into(),
            seq: n * 10,
            change_id: None,
        };
        CiDetail {
            ci: CiRecord {
                id: "ci-1".into(),
                host_id: "host-a1".into(),
                class: "package".into(),
                key: "dpkg:bash:amd64".into(),
                state: CiState::Absent,
                attrs: v2.clone(),
                version: 3,
                first_seen: t(100),
                last_seen: t(300),
                last_changed: t(300),
                source_agent: "agt-1".into(),
                source_seq: 30,
            },
            versions: vec![
                version(1, ChangeKind::Added, CiState::Present, &Attrs::new(), &v1),
                version(2, ChangeKind::Changed, CiState::Present, &v1, &v2),
                version(3, ChangeKind::Removed, CiState::Absent, &v2, &v2),
            ],
        }
    }

    #[test]
    fn ci_view_shows_each_versions_changes() {
        let text = ci(&ci_detail());
        let expected_history = "\
VER  CHANGE   STATE    OBSERVED AT           SOURCE        ATTRIBUTE  OLD       NEW
1    added    present  2026-09-21T14:15:00Z  agt-1 seq 10  + name               bash
                                                           + vendor             null
                                                           + version            5.2.15-2
2    changed  present  2026-09-21T14:16:40Z  agt-1 seq 20  + size               7000
                                                           - vendor   null
                                                           ~ version  5.2.15-2  5.2.15-3
3    removed  absent   2026-09-21T14:18:20Z  agt-1 seq 30
";
        assert!(text.ends_with(expected_history), "{text}");
        assert!(
            text.starts_with("id            ci-1\nclass         package\n"),
            "{text}"
        );
        assert!(
            text.contains("ATTRIBUTE  VALUE\nname       bash\nsize       7000\n"),
            "{text}"
        );
    }

    #[test]
    fn change_records_get_a_column_when_present() {
        let mut d = ci_detail();
        d.versions[1].change_id = Some("CHG-7".into());
        let text = ci(&d);
        assert!(text.contains("CHANGE RECORD"));
        assert!(
            text.contains("+ size               7000      CHG-7\n"),
            "{text}"
        );
    }

    #[test]
    fn relations_table() {
        let items = vec![
            RelationView {
                relation: RelationRecord {
                    from: "ci-svc".into(),
                    to: "ci-1".into(),
                    kind: "runs".into(),
                    host_id: "host-a1".into(),
                    present: true,
                    from_ref: String::new(),
                    to_ref: String::new(),
                },
                direction: Direction::Incoming,
                other: Some(CiRef {
                    id: "ci-svc".into(),
                    class: "service".into(),
                    key: "ssh.service".into(),
                    state: CiState::Present,
                }),
                derived: false,
            },
            RelationView {
                relation: RelationRecord {
                    from: "ci-1".into(),
                    to: "ci-gone".into(),
                    kind: "depends_on".into(),
                    host_id: "host-a1".into(),
                    present: false,
                    from_ref: String::new(),
                    to_ref: String::new(),
                },
                direction: Direction::Outgoing,
                other: None,
                derived: true,
            },
        ];
        assert_eq!(
            relations(&items),
            "DIRECTION  KIND        OTHER    CLASS    KEY          STATE    PRESENT  SOURCE\n\
             in         runs        ci-svc   service  ssh.service  present  yes      agent\n\
             out        depends_on  ci-gone  -        -            unknown  no       derived\n"
        );
    }

    #[test]
    fn clones_table() {
        let text = clones(&[CloneRecord {
            host_id: "host-a1".into(),
            agents: vec!["agt-1".into(), "agt-2".into()],
            identity_key: "product_uuid=4c4c".into(),
            detected_at: t(0),
            clone_host_id: String::new(),
        }]);
        assert_eq!(
            text,
            "HOST     AGENTS        IDENTITY KEY       DETECTED\n\
             host-a1  agt-1, agt-2  product_uuid=4c4c  2026-09-21T14:13:20Z\n"
        );
    }

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            Just(AttrValue::Null),
            any::<bool>().prop_map(AttrValue::Bool),
            any::<i64>().prop_map(AttrValue::Int),
            "[a-z0-9]{0,6}".prop_map(AttrValue::Str),
        ]
    }

    proptest! {
        /// Applying the diff to the old attributes gives the new ones.
        #[test]
        fn diff_is_exact(
            old in proptest::collection::btree_map("[a-e]", attr_value(), 0..5),
            new in proptest::collection::btree_map("[a-e]", attr_value(), 0..5),
        ) {
            let mut rebuilt = old.clone();
            for change in attr_diff(&old, &new) {
                match change {
                    AttrChange::Added(n, v) | AttrChange::Changed(n, _, v) => {
                        prop_assert!(change_is_real(&old, n, v));
                        rebuilt.insert(n.to_owned(), v.clone());
                    }
                    AttrChange::Removed(n, _) => {
                        rebuilt.remove(n);
                    }
                }
            }
            prop_assert_eq!(rebuilt, new);
        }
    }

    fn change_is_real(old: &Attrs, name: &str, new: &AttrValue) -> bool {
        old.get(name) != Some(new)
    }
}
