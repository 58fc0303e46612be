//! End-to-end: the ISO/IEC 20000 configuration audit through the real `cmdb-collector`
//! and `cmdbctl`. Three raw enrolled agents (web-01, db-01, x-01) send hand-made
//! inventories over mTLS; a register with planted deficiencies is imported with cmdbctl
//! (a bad one over HTTP is refused with its row numbers and commits nothing); an audit
//! run finds exactly the planted missing, unregistered and mismatched CIs; one deficiency
//! moves open → action_taken → verified (backwards is a 409, a viewer a 403); the CSV and
//! HTML reports are downloaded. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use cmdb_proto::v1;
use common::raw_agent::RawAgent;
use common::{Collector, bin, run_ok, wait_for};
use serde_json::{Value, json};

fn text(x: &str) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::String(x.to_owned())),
    }
}

fn pkg(name: &str, version: &str) -> v1::Item {
    v1::Item {
        class: "package".into(),
        key: name.into(),
        attrs: [
            ("name".to_owned(), text(name)),
            ("version".to_owned(), text(version)),
        ]
        .into_iter()
        .collect(),
    }
}

fn cmdbctl(c: &Collector, args: &[&str]) -> String {
    run_ok(
        Command::new(bin("cmdbctl"))
            .args(["--url", &c.api(), "--token", &c.admin_token])
            .args(args),
    )
}

fn put_raw(c: &Collector, path: &str, token: &str, ct: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .put(format!("{}{path}", c.api()))
        .bearer_auth(token)
        .header("content-type", ct)
        .body(body.to_owned())
        .timeout(Duration::from_secs(20))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

const REGISTER: &str = "class,key,host,attr.version\n\
package,nginx,web-01,1.24\n\
package,openssl,web-01,3.0.7\n\
package,postgresql,db-01,16\n\
package,curl,db-01,\n";

#[test]
fn planted_register_audit_states_and_reports_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start_with(&tmp.path().join("collector"), "");
    let inventories = [
        (
            "web-01",
            vec![
                pkg("nginx", "1.24"),
                pkg("openssl", "3.0.2"),
                pkg("netcat", "1.10"),
            ],
        ),
        ("db-01", vec![pkg("curl", "8.5.0")]),
        ("x-01", vec![pkg("nginx", "1.24"), pkg("telnet", "0.17")]),
    ];
    let mut agents = Vec::new();
    for (host, items) in inventories {
        let mut a = RawAgent::enroll(&c, host);
        let seq = a.next_seq();
        let snap = a.snapshot(items);
        a.send(vec![RawAgent::event(seq, SystemTime::now(), snap)]);
        agents.push(a);
    }
    wait_for(Duration::from_secs(30), "six package CIs", || {
        (c.cis("class=package").len() == 6).then_some(())
    });

    // A bad register over HTTP: refused with row numbers, nothing committed.
    let (status, body) = put_raw(
        &c,
        "/api/v1/audit/register",
        &c.admin_token,
        "text/csv",
        "class,key,host\npackage,a,web-01\npackage,b\npackage,a,web-01\n",
    );
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("row 3") && msg.contains("row 4"), "{msg}");
    assert_eq!(c.get("/api/v1/audit/register")["rows"], 0);
    let (status, _) = put_raw(
        &c,
        "/api/v1/audit/register",
        &c.admin_token,
        "text/csv",
        "class,key,host,colour\npackage,a,web-01,red\n",
    );
    assert_eq!(status, 400);

    // A viewer may read but not import or run.
    let viewer = c.api_token("vera", "viewer");
    let (status, _) = put_raw(&c, "/api/v1/audit/register", &viewer, "text/csv", REGISTER);
    assert_eq!(status, 403);
    let (status, _) = c.send("POST", "/api/v1/audit/runs", &viewer, Some(&json!({})));
    assert_eq!(status, 403);

    // Import with cmdbctl.
    let file = tmp.path().join("register.csv");
    std::fs::write(&file, REGISTER).unwrap();
    let out = cmdbctl(&c, &["audit", "import", file.to_str().unwrap()]);
    assert!(out.contains("4 register rows imported"), "{out}");
    let reg = c.get("/api/v1/audit/register?limit=2");
    assert_eq!(reg["rows"], 4);
    assert_eq!(reg["items"].as_array().unwrap().len(), 2);
    assert_eq!(reg["next_after"], "2");

    // Run as an auditor over HTTP.
    let auditor = c.api_token("ann", "auditor");
    let (status, run) = c.send(
        "POST",
        "/api/v1/audit/runs",
        &auditor,
        Some(&json!({"missing_after_days": 0})),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(
        run["summary"],
        json!({"registered": 4, "live": 4, "missing": 1, "unregistered": 1, "mismatched": 1})
    );
    let id = run["id"].as_str().unwrap().to_owned();
    let list = c.get("/api/v1/audit/runs");
    assert_eq!(list["items"][0]["id"], id.as_str());

    let full = c.get(&format!("/api/v1/audit/runs/{id}"));
    let defs = full["deficiencies"].as_array().unwrap();
    let got: Vec<(String, String, String, String, String, String)> = defs
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
            (
                s("kind"),
                s("host"),
                s("key"),
                s("attribute"),
                s("expected"),
                s("actual"),
            )
        })
        .collect();
    let e = |k: &str, h: &str, key: &str, a: &str, x: &str, y: &str| {
        (
            k.to_owned(),
            h.to_owned(),
            key.to_owned(),
            a.to_owned(),
            x.to_owned(),
            y.to_owned(),
        )
    };
    // curl is registered without expectations; x-01 is outside the register.
    assert_eq!(
        got,
        vec![
            e("missing", "db-01", "postgresql", "", "", ""),
            e("unregistered", "web-01", "netcat", "", "", ""),
            e(
                "mismatched",
                "web-01",
                "openssl",
                "version",
                "3.0.7",
                "3.0.2"
            ),
        ]
    );
    assert!(defs.iter().all(|d| d["state"] == "open"));
    let unreg = &defs[1];
    assert!(unreg["ci_id"].as_str().unwrap().starts_with("ci-"));
    assert!(unreg["host_id"].as_str().unwrap().starts_with("host-"));

    // One deficiency through its states; backwards is a 409; a viewer is refused.
    let path = format!("/api/v1/audit/runs/{id}/deficiencies/d-000003");
    let (status, _) = c.send("POST", &path, &viewer, Some(&json!({"state": "verified"})));
    assert_eq!(status, 403);
    let operator = c.api_token("otto", "operator");
    let (status, d) = c.send(
        "POST",
        &path,
        &operator,
        Some(&json!({"state": "action_taken", "note": "upgrade CHG-7 <b>"})),
    );
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "action_taken");
    assert_eq!(d["updated_by"], "otto");
    let out = cmdbctl(
        &c,
        &[
            "audit",
            "deficiency",
            &id,
            "d-000003",
            "--state",
            "verified",
            "--note",
            "checked",
        ],
    );
    assert!(out.contains("verified"), "{out}");
    let (status, body) = c.send(
        "POST",
        &path,
        &operator,
        Some(&json!({"state": "action_taken"})),
    );
    assert_eq!(status, 409, "{body}");
    let full = c.get(&format!("/api/v1/audit/runs/{id}"));
    assert_eq!(full["deficiencies"][2]["state"], "verified");
    assert_eq!(full["deficiencies"][2]["note"], "checked");

    // cmdbctl show (latest by default), and the reports.
    let out = cmdbctl(&c, &["audit", "show"]);
    assert!(
        out.contains("postgresql") && out.contains("netcat"),
        "{out}"
    );
    let csv_file = tmp.path().join("audit.csv");
    cmdbctl(
        &c,
        &[
            "audit",
            "export",
            &id,
            "--format",
            "csv",
            "-o",
            csv_file.to_str().unwrap(),
        ],
    );
    let csv = std::fs::read_to_string(&csv_file).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("id,kind,class,key,host"));
    assert!(
        lines[3].contains("openssl") && lines[3].contains("verified"),
        "{csv}"
    );
    let html_file = tmp.path().join("audit.html");
    cmdbctl(
        &c,
        &[
            "audit",
            "export",
            &id,
            "--as",
            "html",
            "-o",
            html_file.to_str().unwrap(),
        ],
    );
    let html = std::fs::read_to_string(&html_file).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<style>") && html.contains("postgresql"));
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));
    let csv_show = cmdbctl(&c, &["--format", "csv", "audit", "show", &id]);
    assert_eq!(csv_show, csv);
    drop(agents);
}
