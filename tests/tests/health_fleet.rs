//! End-to-end: CMDB health KPIs and the fleet view through the real `cmdb-collector` and
//! `cmdbctl`, fed by raw agents over real mTLS. Planted: one package without a version
//! (incomplete), and a second machine with the first one's hostname while both are live
//! (two live host CIs sharing a hostname, both failing correctness; the second also lacks
//! a machine id, so its host CI is incomplete). The fleet view shows
//! both agents up with the backlog their heartbeats reported, then one down once its
//! connection is gone. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use cmdb_proto::v1::{self, event};
use common::raw_agent::RawAgent;
use common::{Collector, bin, wait_for};
use serde_json::Value;

const CONFIG: &str = "[agents]\nheartbeat = \"1s\"\n[cmdb_health]\ncache_ttl = \"0s\"\n";

fn s(x: &str) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::String(x.to_owned())),
    }
}

fn package(name: &str, version: Option<&str>) -> v1::Item {
    let mut attrs: std::collections::HashMap<String, v1::Value> = [
        ("manager".to_owned(), s("dpkg")),
        ("name".to_owned(), s(name)),
        ("arch".to_owned(), s("amd64")),
    ]
    .into_iter()
    .collect();
    if let Some(v) = version {
        attrs.insert("version".into(), s(v));
    }
    v1::Item {
        class: "package".into(),
        key: format!("dpkg:{name}:amd64"),
        attrs: attrs.into_iter().collect(),
    }
}

fn heartbeat(a: &mut RawAgent, events: u64, bytes: u64) {
    a.send(vec![RawAgent::event(
        0,
        SystemTime::now(),
        event::Kind::Heartbeat(v1::Heartbeat {
            outbox_events: events,
            outbox_bytes: bytes,
            uptime_seconds: 10,
        }),
    )]);
}

fn kpi(h: &Value, kpi: &str, class: &str) -> (u64, u64) {
    h["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kpi"] == kpi && r["class"] == class)
        .map(|r| (r["healthy"].as_u64().unwrap(), r["total"].as_u64().unwrap()))
        .unwrap_or((u64::MAX, u64::MAX))
}

fn cmdbctl(c: &Collector, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("cmdbctl"))
        .args(["--url", &c.api(), "--token", &c.admin_token])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fleet_item<'a>(f: &'a Value, agent: &str) -> Option<&'a Value> {
    f["items"]
        .as_array()?
        .iter()
        .find(|i| i["agent_id"] == agent)
}

#[test]
fn health_kpis_and_fleet_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start_with(&tmp.path().join("collector"), CONFIG);

    let mut a = RawAgent::enroll(&c, "web-01");
    let seq = a.next_seq();
    let snap = a.snapshot(vec![
        package("bash", Some("5.2.15-2")),
        package("curl", None),
    ]);
    a.send(vec![RawAgent::event(seq, SystemTime::now(), snap)]);

    // Another machine (its own product UUID, no machine id) calling itself web-01 too,
    // while the first is live: two live host CIs with one hostname.
    let other = v1::HostIdentity {
        hostname: Some("web-01".into()),
        product_uuid: Some("11111111-2222-4333-8444-555555555555".into()),
        ..v1::HostIdentity::default()
    };
    let mut b = RawAgent::enroll_with(&c, other);
    heartbeat(&mut b, 0, 0);

    let h = wait_for(Duration::from_secs(30), "the KPIs of both hosts", || {
        let h = c.get("/api/v1/cmdb-health");
        (kpi(&h, "completeness", "host").1 == 2 && kpi(&h, "completeness", "package").1 == 2)
            .then_some(h)
    });
    assert_eq!(kpi(&h, "completeness", "host"), (1, 2), "{h}");
    assert_eq!(kpi(&h, "completeness", "package"), (1, 2), "{h}");
    assert_eq!(kpi(&h, "correctness", "host"), (0, 2), "{h}");
    assert_eq!(kpi(&h, "correctness", "package"), (2, 2), "{h}");
    // The configuration audit is the compliance source; nothing has run yet.
    assert_eq!(h["compliance"], "no audit has run");
    assert!(
        h["kpis"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["kpi"] != "compliance")
    );
    assert_eq!(h["cis_scanned"], 4);
    let ratio = h["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kpi"] == "completeness" && r["class"] == "package")
        .unwrap()["ratio"]
        .as_f64()
        .unwrap();
    assert!((ratio - 0.5).abs() < 1e-9);

    let f = c.get("/api/v1/cmdb-health/failing?kpi=completeness&class=package");
    let items = f["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{f}");
    assert_eq!(items[0]["key"], "dpkg:curl:amd64");
    assert_eq!(items[0]["reason"], "missing: version");
    assert_eq!(f["truncated"], false);
    let f = c.get("/api/v1/cmdb-health/failing?kpi=correctness");
    let items = f["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{f}");
    for i in items {
        assert_eq!(i["class"], "host");
        let reason = i["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("duplicate host: hostname=web-01 shared with host-"),
            "{reason}"
        );
    }
    let f = c.get("/api/v1/cmdb-health/failing?limit=1");
    assert_eq!(f["items"].as_array().unwrap().len(), 1);
    assert_eq!(f["total"], 4, "{f}");
    assert_eq!(f["truncated"], true);
    let (code, _, _) = cmdbctl(&c, &["health", "failing", "--limit", "0"]);
    assert_ne!(code, 0);
    let bad = c.send(
        "GET",
        "/api/v1/cmdb-health?kpi=nope",
        &c.admin_token.clone(),
        None,
    );
    assert_eq!(bad.0, 400);

    // Compliance from a configuration audit run: the first host's register expects bash
    // as installed and a curl version the CI lacks (a mismatch).
    let host_a = c
        .agents()
        .iter()
        .find(|x| x["agent_id"] == a.agent_id.as_str())
        .and_then(|x| x["host_id"].as_str())
        .unwrap()
        .to_owned();
    let register = serde_json::json!([
        {"class": "package", "key": "dpkg:bash:amd64", "host": host_a,
         "attributes": {"version": "5.2.15-2"}},
        {"class": "package", "key": "dpkg:curl:amd64", "host": host_a,
         "attributes": {"version": "7.88.1-10"}},
    ]);
    c.call("PUT", "/api/v1/audit/register", Some(&register));
    let run = c.call("POST", "/api/v1/audit/runs", Some(&serde_json::json!({})));
    assert_eq!(run["summary"]["mismatched"], 1, "{run}");
    let h = c.get("/api/v1/cmdb-health");
    assert_eq!(h["compliance"]["run_id"], run["id"], "{h}");
    assert_eq!(kpi(&h, "compliance", "package"), (1, 2), "{h}");
    let f = c.get("/api/v1/cmdb-health/failing?kpi=compliance");
    let items = f["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{f}");
    assert_eq!(items[0]["key"], "dpkg:curl:amd64", "{f}");

    let (code, out, err) = cmdbctl(&c, &["--format", "csv", "health", "--class", "package"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("completeness,package,1,2,0.5000"), "{out}");
    assert!(out.contains("correctness,package,2,2,1.0000"), "{out}");
    let (code, out, err) = cmdbctl(&c, &["health", "failing", "--kpi", "completeness"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dpkg:curl:amd64") && out.contains("missing: version"),
        "{out}"
    );

    // The fleet: both up, with the backlog of their last heartbeat.
    heartbeat(&mut a, 7, 7000);
    let fl = wait_for(
        Duration::from_secs(20),
        "a's backlog in the fleet view",
        || {
            heartbeat(&mut a, 7, 7000);
            heartbeat(&mut b, 0, 0);
            let fl = c.get("/api/v1/fleet");
            (fleet_item(&fl, &a.agent_id)?["outbox_events"] == 7 && fl["summary"]["up"] == 2)
                .then_some(fl)
        },
    );
    assert_eq!(fl["summary"]["agents"], 2);
    assert_eq!(fl["summary"]["down"], 0);
    let versions: u64 = fl["summary"]["versions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(versions, 2);
    let ia = fleet_item(&fl, &a.agent_id).unwrap();
    assert_eq!(ia["outbox_bytes"], 7000);
    assert_eq!(ia["hostname"], "web-01");
    assert_eq!(ia["up"], true);
    assert_eq!(ia["failures"], 0);
    assert_eq!(ia["collectors"][0]["name"], "raw");
    assert_eq!(ia["collectors"][0]["status"], "ok");
    let (code, out, err) = cmdbctl(&c, &["--format", "csv", "fleet"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&a.agent_id) && out.contains("web-01"), "{out}");

    // The clone's connection goes away (as with SIGKILL: no Shutdown event): it goes down.
    let b_id = b.agent_id.clone();
    drop(b);
    let fl = wait_for(Duration::from_secs(30), "the clone down", || {
        heartbeat(&mut a, 3, 300);
        let fl = c.get("/api/v1/fleet");
        (fleet_item(&fl, &b_id)?["up"] == false).then_some(fl)
    });
    assert_eq!(fl["summary"]["down"], 1);
    let down = c.get("/api/v1/fleet?status=down");
    let ids: Vec<&str> = down["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id.as_str()]);
    // Heartbeats are not acked: wait for the new backlog to land.
    let up = wait_for(Duration::from_secs(20), "a's new backlog", || {
        heartbeat(&mut a, 3, 300);
        let up = c.get("/api/v1/fleet?status=up");
        (up["items"][0]["outbox_events"] == 3).then_some(up)
    });
    assert_eq!(up["items"].as_array().unwrap().len(), 1);
    assert_eq!(up["items"][0]["agent_id"], a.agent_id.as_str());
    assert_eq!(up["items"][0]["outbox_bytes"], 300);
}
