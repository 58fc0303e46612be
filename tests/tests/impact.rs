//! End-to-end: derived host-to-host relations and impact analysis through the real
//! `cmdb-collector` and `cmdbctl`. Two synthetic agents over real mTLS: host db-1 listens
//! on 5432 (postgres, run by postgresql.service), host app-1 has an outbound connection to
//! db-1's address on that port. The collector derives app-1 → db-1 `connects_to` (and the
//! connection → listening port relation); the impact of db-1's port and service then
//! contains app-1 at a known hop count. When the connection goes, the relations turn
//! absent. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, SystemTime};

use cmdb_collector::store::{ci_id, host_ci_id};
use cmdb_proto::v1;
use common::raw_agent::RawAgent;
use common::{Collector, bin, wait_for};
use serde_json::Value;

fn s(x: &str) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::String(x.to_owned())),
    }
}

fn int(x: i64) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::Int(x)),
    }
}

fn list(xs: &[&str]) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::List(v1::ValueList {
            values: xs.iter().map(|x| s(x)).collect(),
        })),
    }
}

fn item(class: &str, key: &str, attrs: Vec<(&str, v1::Value)>) -> v1::Item {
    v1::Item {
        class: class.into(),
        key: key.into(),
        attrs: attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

fn rel(from: &str, to: &str, kind: &str) -> v1::Relation {
    v1::Relation {
        from: from.into(),
        to: to.into(),
        kind: kind.into(),
    }
}

/// A snapshot of `items` and `relations`; `connection` is always reported ok, so a
/// snapshot without connections makes the earlier ones absent.
fn send_snapshot(a: &mut RawAgent, items: Vec<v1::Item>, relations: Vec<v1::Relation>) {
    let mut kind = a.snapshot(items);
    if let v1::event::Kind::Snapshot(snap) = &mut kind {
        let inv = snap.inventory.as_mut().unwrap();
        inv.relations = relations;
        inv.collectors[0].classes.push("connection".into());
    }
    let seq = a.next_seq();
    a.send(vec![RawAgent::event(seq, SystemTime::now(), kind)]);
}

fn host_of(c: &Collector, agent: &RawAgent) -> String {
    c.agents()
        .iter()
        .find(|x| x["agent_id"] == agent.agent_id.as_str())
        .and_then(|x| x["host_id"].as_str())
        .unwrap()
        .to_owned()
}

/// (direction, class/key, hops) of an impact answer.
fn nodes(v: &Value) -> BTreeSet<(String, String, u64)> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["direction"].as_str().unwrap().to_owned(),
                format!(
                    "{}/{}",
                    n["class"].as_str().unwrap(),
                    n["key"].as_str().unwrap()
                ),
                n["hops"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn down(items: &[(&str, u64)]) -> BTreeSet<(String, String, u64)> {
    items
        .iter()
        .map(|(k, h)| ("downstream".to_owned(), (*k).to_owned(), *h))
        .collect()
}

#[test]
fn connections_between_hosts_become_relations_and_drive_the_impact_set() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(&tmp.path().join("collector"));
    let mut db = RawAgent::enroll(&c, "db-1");
    let mut app = RawAgent::enroll(&c, "app-1");

    let eth0 = |addr: &str| {
        item(
            "network_interface",
            "eth0",
            vec![("ipv4", list(&[addr])), ("ipv6", list(&[]))],
        )
    };
    send_snapshot(
        &mut db,
        vec![
            eth0("10.20.0.2/24"),
            item(
                "listening_port",
                "tcp:0.0.0.0:5432",
                vec![
                    ("protocol", s("tcp")),
                    ("address", s("0.0.0.0")),
                    ("port", int(5432)),
                ],
            ),
            item("process", "postgres", vec![("pid", int(900))]),
            item(
                "service",
                "postgresql.service",
                vec![("state", s("running"))],
            ),
        ],
        vec![
            rel("service/postgresql.service", "process/postgres", "runs"),
            rel(
                "process/postgres",
                "listening_port/tcp:0.0.0.0:5432",
                "listens_on",
            ),
        ],
    );
    let app_items = |with_conn: bool| {
        let mut v = vec![
            eth0("10.20.0.1/24"),
            item("process", "app", vec![("pid", int(1200))]),
        ];
        if with_conn {
            v.push(item(
                "connection",
                "tcp:10.20.0.2:5432",
                vec![
                    ("protocol", s("tcp")),
                    ("direction", s("outbound")),
                    ("remote_address", s("10.20.0.2")),
                    ("remote_port", int(5432)),
                ],
            ));
        }
        v
    };
    send_snapshot(
        &mut app,
        app_items(true),
        vec![rel(
            "process/app",
            "connection/tcp:10.20.0.2:5432",
            "connects_to",
        )],
    );

    let a = host_of(&c, &app);
    let b = host_of(&c, &db);
    let host_a = host_ci_id(&a);
    let host_b = host_ci_id(&b);
    let port = ci_id(&b, "listening_port", "tcp:0.0.0.0:5432");
    let conn = ci_id(&a, "connection", "tcp:10.20.0.2:5432");
    let service = ci_id(&b, "service", "postgresql.service");

    // The derived host-to-host relation, from both ends.
    let link = wait_for(
        Duration::from_secs(20),
        "the app-1 → db-1 relation",
        || {
            let v = c.get(&format!("/api/v1/cis/{host_a}/relations"));
            v["items"]
                .as_array()?
                .iter()
                .find(|r| r["kind"] == "connects_to" && r["to"] == host_b.as_str())
                .cloned()
        },
    );
    assert_eq!(link["from"], host_a.as_str(), "{link}");
    assert_eq!(link["present"], true, "{link}");
    assert_eq!(link["direction"], "outgoing", "{link}");
    assert_eq!(link["other"]["class"], "host", "{link}");
    assert_eq!(link["derived"], true, "{link}");
    // The agents' own relations of the host (if any) are not marked derived.
    let host_rel = c.get(&format!("/api/v1/cis/{host_a}/relations"));
    for r in host_rel["items"].as_array().unwrap() {
        assert_eq!(
            r["derived"],
            r["kind"] == "connects_to"
                && r["from"] == host_a.as_str()
                && r["to"] == host_b.as_str(),
            "{r}"
        );
    }
    let of_b = c.get(&format!("/api/v1/cis/{host_b}/relations"));
    assert!(
        of_b["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"] == host_a.as_str() && r["direction"] == "incoming"),
        "{of_b}"
    );
    // The connection → listening port relation.
    let of_port = c.get(&format!("/api/v1/cis/{port}/relations"));
    assert!(
        of_port["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"] == conn.as_str()
                && r["kind"] == "connects_to"
                && r["present"] == true),
        "{of_port}"
    );

    // The exact downstream impact set of db-1's port: its process and service, app-1's
    // connection, the process using it, host app-1 (2 hops), and what app-1 holds (3).
    let v = c.get(&format!("/api/v1/cis/{port}/impact?depth=3"));
    assert_eq!(v["root"], port.as_str());
    assert_eq!(v["depth"], 3);
    assert_eq!(v["truncated"], false);
    let got: BTreeSet<_> = nodes(&v)
        .into_iter()
        .filter(|(d, _, _)| d == "downstream")
        .collect();
    assert_eq!(
        got,
        down(&[
            ("process/postgres", 1),
            ("connection/tcp:10.20.0.2:5432", 1),
            ("service/postgresql.service", 2),
            ("process/app", 2),
            (&format!("host/{a}"), 2),
            ("network_interface/eth0", 3),
        ]),
        "{v}"
    );
    let node_a = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == host_a.as_str())
        .unwrap();
    assert_eq!(node_a["hostname"], "app-1");
    assert_eq!(node_a["host_id"], a.as_str());
    assert_eq!(node_a["via"], "contains");
    // Upstream: db-1 itself, the listening process and the service running it.
    let up: BTreeSet<_> = nodes(&v)
        .into_iter()
        .filter(|(d, _, _)| d == "upstream")
        .map(|(_, k, h)| (k, h))
        .collect();
    assert_eq!(
        up,
        BTreeSet::from([
            (format!("host/{b}"), 1),
            ("process/postgres".to_owned(), 1),
            ("service/postgresql.service".to_owned(), 2),
        ])
    );
    // From the service, app-1 is four hops away: service → process → port → connection
    // → host.
    let v = c.get(&format!("/api/v1/cis/{service}/impact?depth=4"));
    assert!(
        nodes(&v).contains(&("downstream".into(), format!("host/{a}"), 4)),
        "{v}"
    );
    let v = c.get(&format!("/api/v1/cis/{service}/impact?depth=3"));
    assert!(
        !v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == host_a.as_str()),
        "depth 3 stops before app-1: {v}"
    );

    // cmdbctl: CSV rows, and the JSON is the API's.
    let out = Command::new(bin("cmdbctl"))
        .args(["--url", &c.api(), "--token", &c.admin_token])
        .args(["--format", "csv", "impact", &port, "--depth", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "direction,hops,via,id,class,key,host_id,hostname"
    );
    assert!(
        csv.lines()
            .any(|l| l == format!("downstream,2,contains,{host_a},host,{a},{a},app-1")),
        "{csv}"
    );
    assert!(!csv.contains("network_interface"), "depth 2: {csv}");

    // Bad requests.
    let viewer = c.api_token("impact-viewer", "viewer");
    let (status, _) = c.send("GET", &format!("/api/v1/cis/{port}/impact"), &viewer, None);
    assert_eq!(status, 200, "every role reads");
    let (status, body) = c.send(
        "GET",
        &format!("/api/v1/cis/{port}/impact?depth=9"),
        &viewer,
        None,
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = c.send(
        "GET",
        "/api/v1/cis/ci-0000000000000000/impact",
        &viewer,
        None,
    );
    assert_eq!(status, 404);

    // The connection goes: the derived relations turn absent and app-1 leaves the set.
    send_snapshot(&mut app, app_items(false), vec![]);
    wait_for(
        Duration::from_secs(20),
        "the relation to turn absent",
        || {
            let v = c.get(&format!("/api/v1/cis/{host_a}/relations"));
            v["items"]
                .as_array()?
                .iter()
                .any(|r| r["to"] == host_b.as_str() && r["present"] == false)
                .then_some(())
        },
    );
    let v = c.get(&format!("/api/v1/cis/{port}/impact"));
    assert_eq!(
        nodes(&v)
            .into_iter()
            .filter(|(d, _, _)| d == "downstream")
            .collect::<BTreeSet<_>>(),
        down(&[("process/postgres", 1), ("service/postgresql.service", 2)]),
        "{v}"
    );
}
