//! The audit against a planted register with known missing, unregistered and mismatched
//! CIs; imports refused with row numbers and nothing committed; state transitions;
//! persistence; the compliance contract.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};

use super::*;
use crate::store::memory::Planted;
use crate::store::{AgentRecord, CiRecord, CiState};

/// Records in memory plus a fixed set of agents and CIs.
type Fake = Planted;

type Log = crate::judgment::RecordedActions;

fn auditor() -> Actor {
    Actor {
        name: "ann".into(),
        role: "auditor".into(),
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

fn agent(n: u32, host: &str, name: &str) -> AgentRecord {
    let mut a = AgentRecord::new(&format!("agt-{n}"), "i", "1", HostIdentity::default(), t(0));
    a.host_id = Some(host.to_owned());
    a.hostname = Some(name.to_owned());
    a
}

fn ci(host: &str, class: &str, key: &str, attrs: &[(&str, AttrValue)]) -> CiRecord {
    CiRecord {
        id: crate::store::ci_id(host, class, key),
        host_id: host.to_owned(),
        class: class.to_owned(),
        key: key.to_owned(),
        state: CiState::Present,
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Attrs>(),
        version: 1,
        first_seen: t(NOW - 10 * DAY),
        last_seen: t(NOW - DAY),
        last_changed: t(NOW - 10 * DAY),
        source_agent: "agt-1".into(),
        source_seq: 1,
    }
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.into())
}

const H1: &str = "host-0000000000000001";
const H2: &str = "host-0000000000000002";
const H3: &str = "host-0000000000000003";

/// Two audited hosts (web-01 by name, db-01 by id) and one outside the register (H3).
fn planted() -> Fake {
    let mut absent_recent = ci(H1, "package", "curl", &[("version", s("8.0"))]);
    absent_recent.state = CiState::Absent;
    absent_recent.last_seen = t(NOW - 2 * DAY);
    let mut absent_old = ci(H2, "package", "vim", &[("version", s("9.0"))]);
    absent_old.state = CiState::Absent;
    absent_old.last_seen = t(NOW - 30 * DAY);
    Fake {
        agents: vec![
            agent(1, H1, "web-01"),
            agent(2, H2, "db-01"),
            agent(3, H3, "x-01"),
        ],
        cis: vec![
            // healthy
            ci(
                H1,
                "package",
                "nginx",
                &[("version", s("1.24")), ("arch", s("amd64"))],
            ),
            // mismatched version (string vs string)
            ci(
                H1,
                "package",
                "openssl",
                &[("version", s("3.0.2")), ("arch", s("amd64"))],
            ),
            // unregistered on an audited host
            ci(H1, "package", "netcat", &[("version", s("1.0"))]),
            // absent two days ago: within the 7-day grace, healthy
            absent_recent,
            // absent 30 days: missing
            absent_old,
            // numeric attribute compared with a CSV string: healthy; with a wrong number:
            // mismatched
            ci(H2, "cpu", "0", &[("cores", AttrValue::Int(8))]),
            ci(H2, "cpu", "1", &[("cores", AttrValue::Int(4))]),
            // unregistered package on the host outside the register: out of scope
            ci(H3, "package", "nginx", &[("version", s("1.24"))]),
            // class outside the register: ignored
            ci(H1, "user", "root", &[]),
        ],
        ..Fake::default()
    }
}

const REGISTER_CSV: &str = "class,key,host,attr.version,attr.arch,attr.cores\n\
package,nginx,web-01,1.24,amd64,\n\
package,openssl,WEB-01,3.0.7,amd64,\n\
package,curl,web-01,8.0,,\n\
package,vim,host-0000000000000002,9.0,,\n\
package,postgresql,db-01,16,,\n\
cpu,0,db-01,,,8\n\
cpu,1,db-01,,,6\n\
package,nginx,ghost-01,,,\n";

fn open(store: Arc<Fake>, log: Option<Arc<Log>>) -> ConfigAudit {
    ConfigAudit::open(store, log.map(|l| l as Arc<dyn AuditSink>)).unwrap()
}

fn triples(run: &Run, kind: Kind) -> Vec<(String, String, String, Option<String>)> {
    run.deficiencies
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| {
            (
                d.class.clone(),
                d.host.clone(),
                d.key.clone(),
                d.attribute.clone(),
            )
        })
        .collect()
}

fn q(c: &str, h: &str, k: &str, a: Option<&str>) -> (String, String, String, Option<String>) {
    (c.into(), h.into(), k.into(), a.map(str::to_owned))
}

#[test]
fn planted_register_gives_exactly_the_planted_deficiencies() {
    let store = Arc::new(planted());
    let log = Arc::new(Log::default());
    let a = open(store.clone(), Some(log.clone()));
    let rows = register::parse_csv(REGISTER_CSV.as_bytes()).unwrap();
    assert_eq!(a.import(&auditor(), rows, t(NOW)).unwrap(), 8);
    let info = a.run_audit(&auditor(), None, t(NOW)).unwrap();
    let run = a.run(&info.id).unwrap();
    assert_eq!(
        triples(&run, Kind::Missing),
        vec![
            q("package", "db-01", "postgresql", None),
            q("package", "ghost-01", "nginx", None),
            q("package", "host-0000000000000002", "vim", None),
        ]
    );
    assert_eq!(
        triples(&run, Kind::Unregistered),
        vec![q("package", "web-01", "netcat", None)]
    );
    assert_eq!(
        triples(&run, Kind::Mismatched),
        vec![
            q("cpu", "db-01", "1", Some("cores")),
            q("package", "WEB-01", "openssl", Some("version")),
        ]
    );
    let m = run
        .deficiencies
        .iter()
        .find(|d| d.key == "openssl")
        .unwrap();
    assert_eq!(m.expected.as_deref(), Some("3.0.7"));
    assert_eq!(m.actual.as_deref(), Some("3.0.2"));
    assert_eq!(
        m.ci_id.as_deref(),
        Some(crate::store::ci_id(H1, "package", "openssl").as_str())
    );
    assert_eq!(
        info.summary,
        Summary {
            registered: 8,
            // nginx, openssl, netcat on web-01; cpu 0 and 1 on db-01 (curl is absent)
            live: 5,
            missing: 3,
            unregistered: 1,
            mismatched: 2,
        }
    );
    assert_eq!(
        info.classes,
        vec![
            ClassCount {
                class: "cpu".into(),
                registered: 2,
                healthy: 1,
                unregistered: 0
            },
            ClassCount {
                class: "package".into(),
                registered: 6,
                healthy: 2,
                unregistered: 1
            },
        ]
    );
    // Ids follow the sorted order.
    let ids: Vec<&str> = run.deficiencies.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "d-000001", "d-000002", "d-000003", "d-000004", "d-000005", "d-000006"
        ]
    );
    assert!(run.deficiencies.iter().all(|d| d.state == DefState::Open));
    assert_eq!(
        *log.entries.lock().unwrap(),
        ["audit.register.import", "audit.run"]
    );

    // With no grace the recently absent curl is missing too.
    let strict = a.run_audit(&auditor(), Some(0), t(NOW)).unwrap();
    assert_eq!(strict.summary.missing, 4);
    assert_eq!(strict.id, "run-000002");
}

#[test]
fn compliance_follows_the_contract() {
    let store = Arc::new(planted());
    let a = open(store, None);
    assert_eq!(ComplianceSource::latest(&a).unwrap(), None);
    a.import(
        &auditor(),
        register::parse_csv(REGISTER_CSV.as_bytes()).unwrap(),
        t(NOW),
    )
    .unwrap();
    let info = a.run_audit(&auditor(), None, t(NOW)).unwrap();
    let r = ComplianceSource::latest(&a).unwrap().unwrap();
    assert_eq!(r.run_id, info.id);
    assert_eq!(
        r.classes,
        vec![
            ComplianceRow {
                class: "cpu".into(),
                healthy: 1,
                total: 2
            },
            ComplianceRow {
                class: "package".into(),
                healthy: 2,
                total: 7
            },
        ]
    );
    let mut reasons: Vec<(String, String)> = r
        .failing
        .iter()
        .map(|f| (f.key.clone(), f.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("1".to_owned(), "mismatched: cores".to_owned()),
            ("netcat".into(), "unregistered".into()),
            ("nginx".into(), "missing".into()),
            ("openssl".into(), "mismatched: version".into()),
            ("postgresql".into(), "missing".into()),
            ("vim".into(), "missing".into()),
        ]
    );
    let vim = r.failing.iter().find(|f| f.key == "vim").unwrap();
    assert_eq!(vim.host_id.as_deref(), Some(H2));
    assert_eq!(vim.ci_id, None);
}

#[test]
fn several_mismatched_attributes_are_one_failing_item() {
    let mut store = planted();
    store.cis.push(ci(
        H1,
        "service",
        "sshd",
        &[("state", s("stopped")), ("enabled", AttrValue::Bool(false))],
    ));
    let a = open(Arc::new(store), None);
    let rows = register::parse_json(
        br#"[{"class":"service","key":"sshd","host":"web-01",
              "attributes":{"state":"running","enabled":true}}]"#,
    )
    .unwrap();
    a.import(&auditor(), rows, t(NOW)).unwrap();
    let info = a.run_audit(&auditor(), None, t(NOW)).unwrap();
    assert_eq!(info.summary.mismatched, 1);
    assert_eq!(info.deficiencies_total, 2);
    let r = a.compliance().unwrap().unwrap();
    assert_eq!(r.failing.len(), 1);
    assert_eq!(r.failing[0].reason, "mismatched: enabled, state");
}

#[test]
fn states_move_forward_only_and_persist() {
    let store = Arc::new(planted());
    let a = open(store.clone(), None);
    a.import(
        &auditor(),
        register::parse_csv(REGISTER_CSV.as_bytes()).unwrap(),
        t(NOW),
    )
    .unwrap();
    let run = a.run_audit(&auditor(), None, t(NOW)).unwrap().id;
    let d = a
        .set_state(
            &auditor(),
            &run,
            "d-000002",
            DefState::ActionTaken,
            Some("ticket 42".into()),
            t(NOW + 60),
        )
        .unwrap();
    assert_eq!(d.state, DefState::ActionTaken);
    assert_eq!(d.note, "ticket 42");
    assert_eq!(d.updated_by.as_deref(), Some("ann"));
    assert!(matches!(
        a.set_state(
            &auditor(),
            &run,
            "d-000002",
            DefState::ActionTaken,
            None,
            t(NOW)
        ),
        Err(AuditError::Conflict(_))
    ));
    a.set_state(
        &auditor(),
        &run,
        "d-000002",
        DefState::Verified,
        None,
        t(NOW + 120),
    )
    .unwrap();
    assert!(matches!(
        a.set_state(
            &auditor(),
            &run,
            "d-000002",
            DefState::ActionTaken,
            None,
            t(NOW)
        ),
        Err(AuditError::Conflict(_))
    ));
    assert!(matches!(
        a.set_state(&auditor(), &run, "d-000002", DefState::Open, None, t(NOW)),
        Err(AuditError::Conflict(_))
    ));
    assert!(matches!(
        a.set_state(
            &auditor(),
            &run,
            "d-000099",
            DefState::Verified,
            None,
            t(NOW)
        ),
        Err(AuditError::NotFound(_))
    ));
    assert!(matches!(
        a.set_state(
            &auditor(),
            "run-000042",
            "d-000001",
            DefState::Verified,
            None,
            t(NOW)
        ),
        Err(AuditError::NotFound(_))
    ));
    // Open straight to verified is forward too.
    a.set_state(
        &auditor(),
        &run,
        "d-000001",
        DefState::Verified,
        None,
        t(NOW),
    )
    .unwrap();
    // Everything survives a reopen.
    let again = open(store, None);
    assert_eq!(again.register().0.rows, 8);
    let r = again.run(&run).unwrap();
    assert_eq!(r.deficiencies[1].state, DefState::Verified);
    assert_eq!(r.deficiencies[1].note, "ticket 42");
    assert_eq!(r.deficiencies[0].state, DefState::Verified);
    assert_eq!(r.deficiencies[2].state, DefState::Open);
    assert_eq!(again.runs().len(), 1);
}

#[test]
fn bad_imports_name_rows_and_commit_nothing() {
    let store = Arc::new(planted());
    let a = open(store.clone(), None);
    a.import(
        &auditor(),
        register::parse_csv(REGISTER_CSV.as_bytes()).unwrap(),
        t(NOW),
    )
    .unwrap();
    let before = store.records.all(REGISTER);

    // Unknown column.
    let e = register::parse_csv(b"class,key,host,colour\npackage,a,h,red\n").unwrap_err();
    assert_eq!(e.errors[0].row, 1);
    assert!(
        e.errors[0].reason.contains("unknown column \"colour\""),
        "{e}"
    );
    // Missing required column.
    let e = register::parse_csv(b"class,key\npackage,a\n").unwrap_err();
    assert!(e.to_string().contains("required column \"host\""), "{e}");
    // Malformed row, empty field, duplicate key: each with its line number.
    let e = register::parse_csv(
        b"class,key,host\npackage,a,h\npackage,b\npackage,,h\npackage,a,h\npackage,c,h\n",
    )
    .unwrap_err();
    let rows: Vec<(usize, &str)> = e
        .errors
        .iter()
        .map(|r| (r.row, r.reason.as_str()))
        .collect();
    assert_eq!(rows.len(), 3, "{e}");
    assert_eq!(rows[0].0, 3);
    assert!(rows[0].1.contains("2 fields where the header has 3"), "{e}");
    assert_eq!(rows[1], (4, "key is empty"));
    assert_eq!(rows[2].0, 5);
    assert!(
        rows[2].1.contains("duplicate") && rows[2].1.contains("row 2"),
        "{e}"
    );
    // JSON: wrong types, unknown fields, non-objects.
    let e = register::parse_json(
        br#"[{"class":"package","key":"a","host":"h"},
             {"class":"package","key":"b","host":"h","attributes":{"v":[1]}},
             {"class":5,"key":"c","host":"h"},
             {"class":"package","key":"d","host":"h","colour":"red"},
             "row"]"#,
    )
    .unwrap_err();
    let rows: Vec<usize> = e.errors.iter().map(|r| r.row).collect();
    assert_eq!(rows, [2, 3, 4, 5], "{e}");
    assert!(e.errors[0].reason.contains("an array"), "{e}");
    assert!(e.errors[2].reason.contains("colour"), "{e}");
    let e = register::parse_json(b"{\"rows\": 1}").unwrap_err();
    assert_eq!(e.errors[0].row, 0);

    // A refused audit entry changes nothing either.
    let refusing = ConfigAudit::open(
        store.clone(),
        Some(Arc::new(Log {
            refuse: true,
            ..Log::default()
        })),
    )
    .unwrap();
    let rows = register::parse_csv(b"class,key,host\npackage,zzz,web-01\n").unwrap();
    assert!(matches!(
        refusing.import(&auditor(), rows, t(NOW)),
        Err(AuditError::Audit(_))
    ));
    assert_eq!(store.records.all(REGISTER), before);
    assert_eq!(refusing.register().0.rows, 8);
}

#[test]
fn a_large_register_is_chunked_and_replaced_whole() {
    let store = Arc::new(Fake::default());
    let a = open(store.clone(), None);
    let big: Vec<RegisterRow> = (0..60_000)
        .map(|i| RegisterRow {
            class: "package".into(),
            key: format!("pkg-{i:06}-{}", "x".repeat(120)),
            host: "web-01".into(),
            attributes: BTreeMap::from([("version".to_owned(), serde_json::json!("1.0"))]),
        })
        .collect();
    a.import(&auditor(), big.clone(), t(NOW)).unwrap();
    let chunks = a.register().0.chunks;
    assert!(chunks >= 2, "{chunks}");
    let again = open(store.clone(), None);
    assert_eq!(again.register().1.to_rows(), big);
    // A smaller import removes the surplus chunks.
    a.import(&auditor(), big[..3].to_vec(), t(NOW)).unwrap();
    assert_eq!(store.records.all(REGISTER).len(), 2);
    assert_eq!(open(store, None).register().1.len(), 3);
}

#[test]
fn reports_escape_and_defuse() {
    let mut store = planted();
    store.cis.push(ci(
        H1,
        "file",
        "<script>alert(1)</script>",
        &[("mode", s("=cmd|' /C calc'!A0"))],
    ));
    let a = open(Arc::new(store), None);
    let rows = register::parse_json(
        br#"[{"class":"file","key":"<script>alert(1)</script>","host":"web-01","attributes":{"mode":"0644"}}]"#,
    )
    .unwrap();
    a.import(&auditor(), rows, t(NOW)).unwrap();
    let id = a.run_audit(&auditor(), None, t(NOW)).unwrap().id;
    let run = a.run(&id).unwrap();
    let html = report::html(&run);
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("src="));
    let csv = String::from_utf8(report::csv(&run).unwrap()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), report::CSV_COLUMNS.join(","));
    let row = lines.next().unwrap();
    assert!(row.contains("mismatched") && row.contains("'=cmd"), "{row}");
}

#[test]
fn attribute_comparison() {
    use engine::matches;
    use serde_json::json;
    assert!(matches(&json!("8"), Some(&AttrValue::Int(8))));
    assert!(!matches(&json!("8.5"), Some(&AttrValue::Int(8))));
    assert!(matches(&json!(8), Some(&AttrValue::Int(8))));
    assert!(matches(&json!(2.5), Some(&AttrValue::Float(2.5))));
    assert!(matches(&json!("true"), Some(&AttrValue::Bool(true))));
    assert!(matches(&json!(true), Some(&AttrValue::Bool(true))));
    assert!(!matches(&json!(true), Some(&AttrValue::Bool(false))));
    assert!(matches(&json!("a"), Some(&s("a"))));
    assert!(!matches(&json!("a"), Some(&s("A"))));
    assert!(!matches(&json!("a"), None));
}

mod prop {
    use proptest::prelude::*;

    use super::register;

    proptest! {
        #[test]
        fn csv_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = register::parse_csv(&data);
        }

        #[test]
        fn csv_parser_never_panics_on_csv_like_text(
            lines in proptest::collection::vec("[a-z.,\"\\n ]{0,40}", 0..12)
        ) {
            let text = format!("class,key,host,attr.v\n{}", lines.join("\n"));
            let _ = register::parse_csv(text.as_bytes());
        }

        #[test]
        fn json_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = register::parse_json(&data);
        }
    }
}

mod reference;

/// The engine (compact register, sharded index, observers fed in any order and split in
/// any way) finds exactly what the reference — the engine before it, one observer fed in
/// id order — finds: ambiguous hostnames, a host named by hostname and by id, absent CIs
/// in and out of the grace period, class `host`, unknown hosts.
mod against_reference {
    use proptest::prelude::*;

    use super::*;
    use crate::config_audit::engine::{Index, Outcome};
    use crate::config_audit::register::Register;
    use crate::store::CiView;

    const IDS: [&str; 4] = [H1, H2, H3, "host-0000000000000004"];

    fn value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::json!("1")),
            Just(serde_json::json!("2")),
            Just(serde_json::json!(1)),
            Just(serde_json::json!(true)),
        ]
    }

    fn row() -> impl Strategy<Value = RegisterRow> {
        (
            proptest::sample::select(vec!["package", "cpu", "host"]),
            0..4usize,
            proptest::sample::select(vec!["a", "A", "b", "c", "ghost", H1, H2, H3]),
            proptest::collection::btree_map(
                proptest::sample::select(vec!["version".to_owned(), "arch".to_owned()]),
                value(),
                0..3,
            ),
        )
            .prop_map(|(class, k, host, attributes)| RegisterRow {
                class: class.into(),
                key: if class == "host" {
                    IDS[k].to_owned()
                } else {
                    format!("k{k}")
                },
                host: host.into(),
                attributes,
            })
    }

    fn attr() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            Just(s("1")),
            Just(s("2")),
            Just(AttrValue::Int(1)),
            Just(AttrValue::Bool(true)),
        ]
    }

    fn live() -> impl Strategy<Value = CiRecord> {
        (
            0..5usize,
            proptest::sample::select(vec!["package", "cpu", "host", "user"]),
            0..4usize,
            proptest::collection::btree_map(
                proptest::sample::select(vec!["version".to_owned(), "arch".to_owned()]),
                attr(),
                0..3,
            ),
            proptest::sample::select(vec![
                (CiState::Present, 1),
                (CiState::Absent, 2),
                (CiState::Absent, 30),
                (CiState::Retired, 2),
            ]),
        )
            .prop_map(|(h, class, k, attrs, (state, days))| {
                let host = IDS.get(h).copied().unwrap_or("host-unknown");
                let key = if class == "host" {
                    IDS[k].to_owned()
                } else {
                    format!("k{k}")
                };
                let mut c = ci(host, class, &key, &[]);
                c.attrs = attrs;
                c.state = state;
                c.last_seen = t(NOW - days * DAY);
                c
            })
    }

    fn hosts(names: &[&str]) -> Hosts {
        let mut h = Hosts::default();
        for (id, name) in IDS.iter().zip(names) {
            h.add(id, Some(name));
        }
        h
    }

    fn same(got: &Outcome, want: &Outcome) -> Result<(), TestCaseError> {
        prop_assert_eq!(&got.summary, &want.summary);
        prop_assert_eq!(&got.classes, &want.classes);
        prop_assert_eq!(&got.found, &want.found);
        Ok(())
    }

    proptest! {
        #[test]
        fn engine_matches_the_reference(
            names in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "A", ""]), 4),
            rows in proptest::collection::vec(row(), 0..24),
            cis in proptest::collection::vec(live(), 0..40),
            split in proptest::collection::vec(any::<bool>(), 40),
            seed in any::<u64>(),
        ) {
            // The register refuses a (class, key, host) twice; the store has one CI per id.
            let mut keys = std::collections::HashSet::new();
            let rows: Vec<RegisterRow> = rows
                .into_iter()
                .filter(|r| keys.insert((r.class.clone(), r.key.clone(), r.host.clone())))
                .collect();
            let mut ids = std::collections::HashSet::new();
            let mut cis: Vec<CiRecord> = cis.into_iter().filter(|c| ids.insert(c.id.clone())).collect();
            let hosts = hosts(&names);
            let cutoff = t(NOW - 7 * DAY);

            let mut old = reference::Auditor::new(&rows, &hosts, cutoff);
            cis.sort_by(|a, b| a.id.cmp(&b.id));
            for class in old.classes() {
                for c in cis.iter().filter(|c| c.class == class) {
                    old.observe(c);
                }
            }
            let want = old.finish();

            let reg = Register::from_rows(rows.clone());
            prop_assert_eq!(reg.to_rows(), rows);
            let index = Index::new(&reg, &hosts, cutoff);
            // Any order, any split.
            let mut order: Vec<usize> = (0..cis.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut parts = [index.observer(), index.observer()];
            for i in order {
                parts[usize::from(split[i])].observe(&CiView::of(&cis[i]));
            }
            same(&index.finish(parts.into()), &want)?;
            // One observer, in id order.
            let mut one = index.observer();
            for c in &cis {
                one.observe(&CiView::of(c));
            }
            same(&index.finish(vec![one]), &want)?;
        }
    }
}
