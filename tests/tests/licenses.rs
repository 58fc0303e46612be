//! End-to-end: software licences through the real `cmdb-collector`, `cmdb-agent` and
//! `cmdbctl`. An agent on a fixture host (Debian 12, 4 cores, one interactive user) with
//! SQL Server Enterprise, Teams and TeamViewer added to its dpkg database; entitlements
//! imported as CSV with a known shortfall; bad imports refused with row numbers and nothing
//! committed; a deny list that opens a security incident and, emptied, resolves it; expiry
//! pre-alerts in the API and the log; the position as a table, JSON and CSV. Every wait is
//! bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{Agent, AgentSpec, Collector, bin, copy_tree, fixtures, run_ok, wait_for};
use serde_json::{Value, json};

const CONFIG: &str = "[agents]\nheartbeat = \"1s\"\n[licenses]\nrefresh = \"1s\"\n";

fn dpkg_entry(name: &str, version: &str) -> String {
    format!(
        "Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: misc\n\
         Installed-Size: 100\nMaintainer: Vendor <v@example.com>\nArchitecture: amd64\n\
         Version: {version}\nDescription: {name}\n\n"
    )
}

fn host_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let status = root.join("var/lib/dpkg/status");
    let mut text = std::fs::read_to_string(&status).unwrap();
    if !text.ends_with("\n\n") {
        text.push('\n');
    }
    for (name, version) in [
        ("mssql-server-enterprise", "16.0.4135.4-1"),
        ("teams", "1.5.00.23861"),
        ("teamviewer", "15.48.4"),
    ] {
        text.push_str(&dpkg_entry(name, version));
    }
    std::fs::write(&status, text).unwrap();
    root
}

/// POST a raw body; (status, JSON answer).
fn post_raw(c: &Collector, path: &str, token: &str, ct: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}{path}", c.api()))
        .bearer_auth(token)
        .header("content-type", ct)
        .body(body.to_owned())
        .timeout(Duration::from_secs(20))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn day_in(days: u64) -> String {
    let t = SystemTime::now() + Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

fn cmdbctl(c: &Collector, args: &[&str]) -> String {
    run_ok(
        Command::new(bin("cmdbctl"))
            .args(["--url", &c.api(), "--token", &c.admin_token])
            .args(args),
    )
}

fn row<'a>(position: &'a Value, product: &str) -> Option<&'a Value> {
    position["items"]
        .as_array()?
        .iter()
        .find(|r| r["product"] == product)
}

#[test]
fn licence_position_imports_lists_and_incidents_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = host_root(tmp.path());
    let c = Collector::start_with(&tmp.path().join("collector"), CONFIG);
    let mut a = Agent::enroll(
        &c,
        &tmp.path().join("agent"),
        &AgentSpec {
            host_root: root,
            watch: vec![],
            extra: String::new(),
        },
    );
    a.start();

    // The index sees the agent's packages (refreshed every second).
    let software = wait_for(
        Duration::from_secs(60),
        "SQL Server in the inventory",
        || {
            let s = c.get("/api/v1/licenses/software?normalised=true");
            s["items"]
                .as_array()?
                .iter()
                .any(|r| r["product"] == "SQL Server")
                .then_some(s)
        },
    );
    let sql = software["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["product"] == "SQL Server")
        .unwrap();
    assert_eq!(sql["vendor"], "Microsoft");
    assert_eq!(sql["edition"], "Enterprise");
    assert_eq!(sql["versions"], json!(["16.0.4135.4-1"]));
    let cores = sql["cores"].as_u64().unwrap();
    let cpu = c.cis("class=cpu");
    assert_eq!(cores, cpu[0]["attrs"]["cores"].as_u64().unwrap());
    assert!(cores >= 2, "the fixture has 4 cores");

    // Without entitlements the licensable products are unlicensed.
    let p = c.get("/api/v1/licenses/position");
    assert_eq!(row(&p, "TeamViewer").unwrap()["status"], "unlicensed");

    // A known shortfall: 2 core licences (one set expiring soon) against the host's cores;
    // Teams per user with one interactive user (`debian`, uid 1000) and 5 seats.
    let soon = day_in(10);
    let csv = format!(
        "contract,vendor,product,metric,quantity,expires\n\
         EA-1,Microsoft,SQL Server,per-core,1,{soon}\n\
         EA-2,Microsoft,SQL Server,per-core,1,\n\
         EA-3,Microsoft,Teams,per-user,5,\n\
         OLD,Microsoft,SQL Server,per-core,100,2020-01-01\n"
    );
    let file = tmp.path().join("ents.csv");
    std::fs::write(&file, csv).unwrap();
    let out = cmdbctl(&c, &["licenses", "import", file.to_str().unwrap()]);
    assert!(out.contains("EA-1"), "{out}");

    let p = c.get("/api/v1/licenses/position?hosts_limit=10");
    let sql = row(&p, "SQL Server").unwrap();
    assert_eq!(sql["metric"], "per-core");
    assert_eq!(sql["entitled"], 2);
    assert_eq!(sql["consumed"].as_u64().unwrap(), cores);
    assert_eq!(sql["balance"].as_i64().unwrap(), 2 - cores as i64);
    assert_eq!(sql["status"], "shortfall");
    assert_eq!(sql["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(sql["expiring"][0]["contract"], "EA-1");
    assert_eq!(sql["expired"][0]["contract"], "OLD");
    let teams = row(&p, "Teams").unwrap();
    assert_eq!(teams["consumed"], 1);
    assert_eq!(teams["status"], "surplus");

    // The expiring entitlement: listed, and announced once in the log.
    let exp = c.get("/api/v1/licenses/expiring");
    assert_eq!(exp["items"].as_array().unwrap().len(), 1);
    assert_eq!(exp["items"][0]["contract"], "EA-1");
    wait_for(Duration::from_secs(20), "the expiry log line", || {
        c.log()
            .contains("A licence entitlement expires soon.")
            .then_some(())
    });

    // cmdbctl: table, CSV and JSON.
    let table = cmdbctl(&c, &["licenses", "position"]);
    assert!(table.starts_with("VENDOR"), "{table}");
    assert!(table.contains("shortfall"), "{table}");
    let csv_out = cmdbctl(
        &c,
        &[
            "licenses",
            "position",
            "--format",
            "csv",
            "--status",
            "shortfall",
        ],
    );
    let mut lines = csv_out.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("vendor,product,edition,metric")
    );
    let line = lines.next().unwrap();
    assert!(
        line.starts_with("Microsoft,SQL Server,,per-core,2,"),
        "{csv_out}"
    );
    assert!(lines.next().is_none(), "{csv_out}");
    let js: Value =
        serde_json::from_str(&cmdbctl(&c, &["licenses", "software", "--format", "json"])).unwrap();
    assert!(js["items"].as_array().unwrap().len() > 40);

    // Bad imports: every bad row named, nothing committed.
    let before = c.get("/api/v1/licenses/entitlements");
    let bad = "contract,vendor,product,metric,quantity\n\
               N-1,Oracle,Java SE,per-core,4\n\
               N-2,Oracle,Java SE\n\
               N-3,Oracle,Java SE,per-core,four\n\
               n-1,oracle,java se,per-host,1\n";
    let (status, body) = post_raw(
        &c,
        "/api/v1/licenses/entitlements",
        &c.admin_token,
        "text/csv",
        bad,
    );
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("row 3: 3 fields where the header has 5"),
        "{msg}"
    );
    assert!(msg.contains("row 4: quantity \"four\""), "{msg}");
    assert!(msg.contains("row 5: duplicate key"), "{msg}");
    let (status, body) = post_raw(
        &c,
        "/api/v1/licenses/entitlements",
        &c.admin_token,
        "text/csv",
        "contract,vendor,product,metric,quantity,colour\nX,Y,Z,per-host,1,red\n",
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("row 1: unknown column \"colour\"")
    );
    let (status, body) = post_raw(
        &c,
        "/api/v1/licenses/entitlements",
        &c.admin_token,
        "application/json",
        r#"[{"contract":"J","vendor":"V","product":"P","metric":"per-host","quantity":"7"}]"#,
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("row 1: quantity must be a number")
    );
    let failed = Command::new(bin("cmdbctl"))
        .args([
            "--url",
            &c.api(),
            "--token",
            &c.admin_token,
            "licenses",
            "import",
        ])
        .arg(tmp.path().join("missing.csv"))
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(64));
    assert_eq!(c.get("/api/v1/licenses/entitlements"), before);

    // Roles: a viewer reads but may not import or change the lists.
    let viewer = c.api_token("vera", "viewer");
    let (status, _) = post_raw(
        &c,
        "/api/v1/licenses/entitlements",
        &viewer,
        "text/csv",
        "contract,vendor,product,metric,quantity\nV,V,V,per-host,1\n",
    );
    assert_eq!(status, 403);
    let (status, _) = c.send(
        "PUT",
        "/api/v1/licenses/lists",
        &viewer,
        Some(&json!({"deny": []})),
    );
    assert_eq!(status, 403);
    assert_eq!(
        c.get_with("/api/v1/licenses/position", &viewer)["items"],
        c.get("/api/v1/licenses/position")["items"]
    );

    // A deny list opens a security incident for the TeamViewer install ...
    c.call(
        "PUT",
        "/api/v1/licenses/lists",
        Some(&json!({"allow": [{"vendor": "Microsoft"}], "deny": [{"product": "TeamViewer", "reason": "remote access tools are banned"}]})),
    );
    let inc = wait_for(Duration::from_secs(30), "a security incident", || {
        let list = c.get("/api/v1/incidents?category=security");
        list["items"].as_array()?.first().cloned()
    });
    let alert = &inc["alerts"][0];
    assert_eq!(alert["kind"], "denied");
    assert_eq!(alert["class"], "license");
    assert_eq!(alert["key"], "dpkg:teamviewer:amd64");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("remote access tools are banned")
    );
    let denied = c.get("/api/v1/licenses/denied");
    assert_eq!(denied["items"].as_array().unwrap().len(), 1);
    // ... the allow list reports the rest as unapproved (no incident) ...
    let unapproved = c.get("/api/v1/licenses/unapproved");
    assert!(
        unapproved["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["product"] == "bash")
    );
    assert_eq!(
        c.get("/api/v1/incidents?category=security")["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // ... and removing the deny entry resolves it.
    c.call(
        "PUT",
        "/api/v1/licenses/lists",
        Some(&json!({"allow": [], "deny": []})),
    );
    let number = inc["number"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(30), "the incident resolved", || {
        let i = c.get(&format!("/api/v1/incidents/{number}"));
        (i["state"] == "resolved").then_some(())
    });
    let refreshed = c.call("POST", "/api/v1/licenses/refresh", None);
    assert_eq!(refreshed["denied"], 0);
    a.stop();
}
