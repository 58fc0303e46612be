//! End-to-end scenarios of the CMDB's judgment: real `cmdb-collector` and `cmdb-agent`
//! processes over loopback mTLS, an agent on a private copy of a fixture host whose watched
//! files the test edits. Intervals are short; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{Agent, AgentSpec, Collector, copy_tree, fixtures, wait_for};
use serde_json::{Value, json};

/// Collector settings for tests: 1 s heartbeats (the agents' FAST_INTERVALS), the
/// default grouping window.
const FAST_COLLECTOR: &str = "[agents]\nheartbeat = \"1s\"\n";

/// A private copy of the debian12 fixture host with `n` watched files.
fn host(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let root = dir.join("host");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let watched = root.join("etc/cmdb-test");
    std::fs::create_dir_all(&watched).unwrap();
    for i in 0..n {
        std::fs::write(
            watched.join(format!("f{i:02}.conf")),
            format!("setting = {i}\n"),
        )
        .unwrap();
    }
    (root, watched)
}

fn spec(root: &Path) -> AgentSpec {
    AgentSpec {
        host_root: root.to_owned(),
        watch: vec!["/etc/cmdb-test/*.conf".into()],
        extra: String::new(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn in_secs(s: i64) -> String {
    let now = SystemTime::now();
    let t = if s >= 0 {
        now + Duration::from_secs(s as u64)
    } else {
        now - Duration::from_secs((-s) as u64)
    };
    rfc3339(t)
}

/// Starts collector + agent; returns them with the host id once the initial baseline
/// exists (from then on, changes are judged).
fn setup(dir: &Path, files: usize, collector_extra: &str) -> (Collector, Agent, String, PathBuf) {
    let (root, watched) = host(dir, files);
    let c = Collector::start_with(
        &dir.join("collector"),
        &format!("{FAST_COLLECTOR}{collector_extra}"),
    );
    let mut a = Agent::enroll(&c, &dir.join("agent"), &spec(&root));
    a.start();
    let host_id = wait_for(Duration::from_secs(30), "initial baseline", || {
        let list = c.call("GET", "/api/v1/baselines", None);
        list["items"]
            .as_array()?
            .iter()
            .find(|b| b["initial"] == true && b["items"].as_u64().unwrap_or(0) > 0)
            .and_then(|b| b["scope"][0].as_str())
            .and_then(|s| s.strip_prefix("host=").map(str::to_owned))
    });
    // Every watched file is in the store before the test edits one.
    wait_for(Duration::from_secs(20), "watched files", || {
        (c.cis(&format!("class=file&host={host_id}")).len() >= files).then_some(())
    });
    (c, a, host_id, watched)
}

fn incidents(c: &Collector, query: &str) -> Vec<Value> {
    c.call("GET", &format!("/api/v1/incidents?{query}"), None)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn file_ci_id(c: &Collector, host_id: &str, path: &str) -> String {
    c.cis(&format!("class=file&host={host_id}"))
        .into_iter()
        .find(|ci| ci["key"] == path)
        .and_then(|ci| ci["id"].as_str().map(str::to_owned))
        .unwrap()
}

#[test]
fn an_unauthorized_edit_opens_exactly_one_incident_with_the_matrix_priority() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, host_id, watched) = setup(tmp.path(), 20, "");
    // Watched files on this host are business-critical: impact 1 (urgency stays the
    // category's default 2) → priority 2 by the matrix.
    c.call(
        "PUT",
        "/api/v1/policies",
        Some(&json!({
            "attributes": c.call("GET", "/api/v1/policies", None)["attributes"],
            "criticality": [{"selector": "class=file", "impact": 1}],
            "deny": []
        })),
    );
    let started = Instant::now();
    std::fs::write(watched.join("f00.conf"), "setting = tampered\n").unwrap();
    let inc = wait_for(Duration::from_secs(5), "an incident within 5 s", || {
        incidents(&c, "category=unauthorized-change")
            .into_iter()
            .next()
    });
    eprintln!("incident visible after {:?}: {inc}", started.elapsed());
    let ci = file_ci_id(&c, &host_id, "/etc/cmdb-test/f00.conf");
    assert_eq!(inc["ci_id"], ci.as_str());
    assert_eq!(inc["category"], "unauthorized-change");
    assert_eq!(
        (inc["impact"].as_u64(), inc["urgency"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(inc["priority"], 2);
    assert_eq!(inc["state"], "new");
    // Exactly one, and its drift record carries the evidence.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(incidents(&c, "").len(), 1);
    let drift = c.call("GET", &format!("/api/v1/drift?ci={ci}"), None)["items"].clone();
    let d = &drift[0];
    assert_eq!(d["verdict"], "unauthorized");
    assert_eq!(d["open"], true);
    assert_eq!(d["changes"][0]["name"], "sha256");
    assert!(d["agent_id"].as_str().unwrap().starts_with("agt-"));
    assert!(d["seq"].as_u64().unwrap() > 0);

    // Restore it (the incident resolves), then a burst of 20 edits: one incident, 20 CIs.
    std::fs::write(watched.join("f00.conf"), "setting = 0\n").unwrap();
    wait_for(Duration::from_secs(10), "the revert resolves it", || {
        let i = c.call(
            "GET",
            &format!("/api/v1/incidents/{}", inc["number"].as_str().unwrap()),
            None,
        );
        (i["state"] == "resolved").then_some(())
    });
    for i in 0..20 {
        std::fs::write(
            watched.join(format!("f{i:02}.conf")),
            format!("burst {i}\n"),
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let burst = loop {
        let open = incidents(&c, "open=true");
        if let Some(inc) = open.first()
            && inc["alerts"].as_array().map(Vec::len) == Some(20)
        {
            break inc.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no incident listing all 20: {:?}",
            incidents(&c, "")
                .iter()
                .map(|i| (
                    i["number"].clone(),
                    i["state"].clone(),
                    i["alerts"].as_array().map(Vec::len)
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        incidents(&c, "open=true").len(),
        1,
        "one burst is one incident"
    );
    let mut keys: Vec<&str> = burst["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 20);
    assert_eq!(keys[0], "/etc/cmdb-test/f00.conf");
    assert_eq!(keys[19], "/etc/cmdb-test/f19.conf");
}

#[test]
fn an_approved_change_authorises_its_edits_and_advances_the_baseline_when_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, host_id, watched) = setup(tmp.path(), 2, "");
    let manager = c.api_token("carol", "change-manager");
    let operator = c.api_token("oscar", "operator");
    let body = json!({
        "title": "Tune f00",
        "type": "normal",
        "scope": [format!("host={host_id} class=file")],
        "window_start": in_secs(-60),
        "window_end": in_secs(12),
    });
    let (status, change) = c.send("POST", "/api/v1/changes", &operator, Some(&body));
    assert_eq!(status, 201, "{change}");
    let id = change["id"].as_str().unwrap().to_owned();
    // Operators may not approve.
    let (status, err) = c.send(
        "POST",
        &format!("/api/v1/changes/{id}/transition"),
        &operator,
        Some(&json!({"to": "approved"})),
    );
    assert_eq!(status, 403, "{err}");
    let (status, _) = c.send(
        "POST",
        &format!("/api/v1/changes/{id}/transition"),
        &manager,
        Some(&json!({"to": "approved"})),
    );
    assert_eq!(status, 200);

    std::fs::write(watched.join("f00.conf"), "setting = tuned\n").unwrap();
    let ci = file_ci_id(&c, &host_id, "/etc/cmdb-test/f00.conf");
    let evidence = wait_for(Duration::from_secs(10), "the drift as evidence", || {
        let ch = c.call("GET", &format!("/api/v1/changes/{id}"), None);
        ch["evidence"].as_array().filter(|e| !e.is_empty()).cloned()
    });
    let drift = c.call("GET", &format!("/api/v1/drift?change={id}"), None)["items"].clone();
    assert_eq!(drift[0]["id"], evidence[0]);
    assert_eq!(drift[0]["verdict"], "authorized");
    assert_eq!(drift[0]["change_id"], id.as_str());
    assert_eq!(drift[0]["ci_id"], ci.as_str());
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        incidents(&c, "").is_empty(),
        "an authorised change opens nothing"
    );

    // Close it: implementing → implemented → closed; the initial baseline advances.
    for to in ["implementing", "implemented", "closed"] {
        c.call(
            "POST",
            &format!("/api/v1/changes/{id}/transition"),
            Some(&json!({"to": to})),
        );
    }
    let sha_now = c.call("GET", &format!("/api/v1/cis/{ci}"), None)["attrs"]["sha256"].clone();
    let baselines = c.call("GET", "/api/v1/baselines", None);
    let initial = baselines["items"][0]["id"].as_str().unwrap().to_owned();
    let b = c.call("GET", &format!("/api/v1/baselines/{initial}"), None);
    assert_eq!(
        b["items"][&ci]["attrs"]["sha256"], sha_now,
        "the baseline advanced"
    );
    assert!(b["advances"].as_u64().unwrap() >= 1);
    let diff = c.call("GET", &format!("/api/v1/baselines/{initial}/diff"), None);
    assert_eq!(diff["changed"], 0, "{diff}");

    // The same kind of edit after the window: unauthorized.
    wait_for(Duration::from_secs(20), "the window to end", || {
        let end = humantime::parse_rfc3339(body["window_end"].as_str().unwrap()).unwrap();
        (SystemTime::now() > end + Duration::from_secs(1)).then_some(())
    });
    std::fs::write(watched.join("f00.conf"), "setting = late\n").unwrap();
    let inc = wait_for(
        Duration::from_secs(10),
        "an incident after the window",
        || incidents(&c, "").into_iter().next(),
    );
    assert_eq!(inc["category"], "unauthorized-change");
    assert_eq!(inc["ci_id"], ci.as_str());
}

#[test]
fn a_revert_resolves_the_incident_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, _host, watched) = setup(tmp.path(), 1, "");
    let original = std::fs::read(watched.join("f00.conf")).unwrap();
    std::fs::write(watched.join("f00.conf"), "drifted\n").unwrap();
    let inc = wait_for(Duration::from_secs(10), "an incident", || {
        incidents(&c, "").into_iter().next()
    });
    std::fs::write(watched.join("f00.conf"), &original).unwrap();
    let number = inc["number"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resolved = loop {
        let i = c.call("GET", &format!("/api/v1/incidents/{number}"), None);
        if i["state"] == "resolved" {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "not resolved: {i}\ndrift: {}\nversions: {}",
            c.call("GET", "/api/v1/drift", None),
            c.call(
                "GET",
                &format!("/api/v1/cis/{}", i["ci_id"].as_str().unwrap()),
                None
            )["versions"]
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(resolved["resolution"]["code"], "recovered");
    let drift = c.call("GET", "/api/v1/drift", None)["items"].clone();
    assert_eq!(drift[0]["open"], false);
    assert_eq!(drift[0]["resolution"], "reverted");
    // Closing needs an operator; a viewer is refused and nothing changes.
    let viewer = c.api_token("vera", "viewer");
    let (status, _) = c.send(
        "POST",
        &format!("/api/v1/incidents/{number}/actions"),
        &viewer,
        Some(&json!({"action": "close", "note": "done"})),
    );
    assert_eq!(status, 403);
    let closed = c.call(
        "POST",
        &format!("/api/v1/incidents/{number}/actions"),
        Some(&json!({"action": "close", "note": "verified"})),
    );
    assert_eq!(closed["state"], "closed");
}

#[test]
fn sigkill_is_an_outage_and_a_graceful_stop_in_an_approved_window_is_planned() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, mut a, host_id, _watched) = setup(tmp.path(), 1, "");
    let host_ci = c.call(
        "GET",
        &format!("/api/v1/cis?class=host&host={host_id}"),
        None,
    )["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let killed_at = SystemTime::now();
    a.kill9();
    // Down after 3 missed 1 s heartbeats.
    let inc = wait_for(Duration::from_secs(15), "an availability incident", || {
        incidents(&c, "category=availability").into_iter().next()
    });
    let detected = SystemTime::now().duration_since(killed_at).unwrap();
    assert!(
        detected >= Duration::from_secs(2),
        "not before the missed heartbeats: {detected:?}"
    );
    assert_eq!(inc["ci_id"], host_ci.as_str());
    assert_eq!(
        inc["priority"], 2,
        "availability defaults to impact 2, urgency 1"
    );
    std::thread::sleep(Duration::from_secs(3));
    a.start();
    let number = inc["number"].as_str().unwrap();
    wait_for(
        Duration::from_secs(20),
        "resolved when the host is back",
        || {
            let i = c.call("GET", &format!("/api/v1/incidents/{number}"), None);
            (i["state"] == "resolved").then_some(())
        },
    );
    let restarted_at = SystemTime::now();
    let report = c.call(
        "GET",
        &format!("/api/v1/availability?ci={host_ci}&from={}", in_secs(-3600)),
        None,
    );
    let f = &report["items"][0];
    assert_eq!(f["outages"], 1, "{report}");
    let down = f["unplanned_downtime_seconds"].as_u64().unwrap();
    let real = restarted_at.duration_since(killed_at).unwrap().as_secs();
    assert!(
        down >= 5 && down <= real + 2,
        "downtime {down}s, the agent was dead about {real}s"
    );
    assert!(f["availability_percent"].as_f64().unwrap() < 100.0);
    assert!(f["mtrs_seconds"].as_f64().is_some());

    // A graceful stop inside an approved outage window: planned downtime, no incident.
    let change = c.call(
        "POST",
        "/api/v1/changes",
        Some(&json!({
            "title": "Reboot for kernel", "type": "normal",
            "scope": [format!("host={host_id}")],
            "window_start": in_secs(-10), "window_end": in_secs(600),
            "outage_expected": true
        })),
    );
    let id = change["id"].as_str().unwrap();
    c.call(
        "POST",
        &format!("/api/v1/changes/{id}/transition"),
        Some(&json!({"to": "approved"})),
    );
    let before = incidents(&c, "").len();
    a.stop();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        incidents(&c, "").len(),
        before,
        "a planned stop opens nothing"
    );
    let outages = c.call("GET", "/api/v1/outages", None)["items"].clone();
    let planned: Vec<&Value> = outages
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["planned"] == true)
        .collect();
    assert_eq!(planned.len(), 1, "{outages}");
    assert_eq!(planned[0]["change_id"], id);
    a.start();
    wait_for(Duration::from_secs(20), "the planned outage ends", || {
        let o = c.call("GET", "/api/v1/outages", None)["items"].clone();
        o.as_array()?
            .iter()
            .any(|o| o["planned"] == true && !o["end"].is_null())
            .then_some(())
    });
    let report = c.call(
        "GET",
        &format!("/api/v1/availability?ci={host_ci}&from={}", in_secs(-3600)),
        None,
    );
    assert_eq!(
        report["items"][0]["outages"], 1,
        "the planned stop is not an outage"
    );
    assert!(
        report["items"][0]["planned_downtime_seconds"]
            .as_u64()
            .unwrap()
            >= 5
    );
}

#[test]
fn edits_that_keep_flipping_are_one_flapping_incident() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, _host, watched) = setup(
        tmp.path(),
        1,
        "[judgment]\nflap_threshold = 3\nflap_window = \"5m\"\n",
    );
    let original = std::fs::read(watched.join("f00.conf")).unwrap();
    for i in 0..6 {
        std::fs::write(watched.join("f00.conf"), format!("flip {i}\n")).unwrap();
        wait_for(Duration::from_secs(10), "fired", || {
            incidents(&c, "open=true").into_iter().next()
        });
        std::fs::write(watched.join("f00.conf"), &original).unwrap();
        wait_for(Duration::from_secs(10), "recovered", || {
            let all = incidents(&c, "");
            all.iter()
                .all(|i| i["state"] == "resolved" || i["flapping"] == true)
                .then_some(())
        });
    }
    let all = incidents(&c, "");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["flapping"], true);
    assert_ne!(
        all[0]["state"], "resolved",
        "a flapping incident stays open"
    );
}

#[test]
fn a_clone_opens_an_identity_incident() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, host_id, _w) = setup(tmp.path(), 1, "");
    let root = tmp.path().join("host");
    let mut clone = Agent::enroll(&c, &tmp.path().join("clone"), &spec(&root));
    clone.start();
    let inc = wait_for(Duration::from_secs(20), "an identity incident", || {
        incidents(&c, "category=identity").into_iter().next()
    });
    assert_eq!(inc["host_id"], host_id.as_str());
    assert!(
        inc["alerts"][0]["summary"]
            .as_str()
            .unwrap()
            .contains(&clone.agent_id)
    );
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start_with(&tmp.path().join("collector"), FAST_COLLECTOR);
    let ok = json!({"title": "t", "type": "normal", "scope": ["host=web-*"],
                    "window_start": in_secs(0), "window_end": in_secs(60)});
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut bad = ok.clone();
    bad["scope"] = json!(["colour=red"]);
    cases.push((bad, "unknown field"));
    let mut bad = ok.clone();
    bad["scope"] = json!(["host"]);
    cases.push((bad, "malformed term"));
    let mut bad = ok.clone();
    bad["window_end"] = json!(in_secs(-60));
    cases.push((bad, "before"));
    let mut bad = ok.clone();
    bad["type"] = json!("urgent");
    cases.push((bad, "type"));
    let mut bad = ok.clone();
    bad["colour"] = json!("red");
    cases.push((bad, "colour"));
    for (body, why) in cases {
        let (status, err) = c.send("POST", "/api/v1/changes", &c.admin_token, Some(&body));
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(why),
            "{why}: {err}"
        );
    }
    assert!(
        c.call("GET", "/api/v1/changes", None)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Illegal transitions are 409 and leave the state alone.
    let change = c.call("POST", "/api/v1/changes", Some(&ok));
    let id = change["id"].as_str().unwrap();
    let (status, err) = c.send(
        "POST",
        &format!("/api/v1/changes/{id}/transition"),
        &c.admin_token,
        Some(&json!({"to": "closed"})),
    );
    assert_eq!(status, 409, "{err}");
    let (status, _) = c.send(
        "POST",
        &format!("/api/v1/changes/{id}/transition"),
        &c.admin_token,
        Some(&json!({"to": "finished"})),
    );
    assert_eq!(status, 400);
    assert_eq!(
        c.call("GET", &format!("/api/v1/changes/{id}"), None)["state"],
        "draft"
    );

    // The forward schedule of change: windows overlapping [from, to).
    let mut later = ok.clone();
    later["title"] = json!("later");
    later["window_start"] = json!(in_secs(7200));
    later["window_end"] = json!(in_secs(9000));
    let later_id = c.call("POST", "/api/v1/changes", Some(&later))["id"].clone();
    let ids = |q: &str| -> Vec<Value> {
        c.call("GET", &format!("/api/v1/changes?{q}"), None)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(&format!("from={}&to={}", in_secs(-10), in_secs(3600))),
        vec![json!(id)]
    );
    assert_eq!(
        ids(&format!("from={}", in_secs(3600))),
        vec![later_id.clone()]
    );
    assert_eq!(ids(""), vec![json!(id), later_id]);
    let (status, _) = c.send(
        "GET",
        &format!("/api/v1/changes?from={}&to={}", in_secs(60), in_secs(0)),
        &c.admin_token,
        None,
    );
    assert_eq!(status, 400, "a schedule that ends before it starts");

    // Unknown roles cannot be minted; unknown tokens are 401.
    let out = std::process::Command::new(common::bin("cmdb-collector"))
        .args([
            "api-token",
            "create",
            "--name",
            "x",
            "--role",
            "overlord",
            "--data-dir",
        ])
        .arg(&c.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (status, _) = c.send("GET", "/api/v1/incidents", "not-a-token", None);
    assert_eq!(status, 401);
    // Waivers: no justification, or already expired.
    for body in [
        json!({"scope": ["class=file"], "justification": "", "expires_at": in_secs(60)}),
        json!({"scope": ["class=file"], "justification": "lab", "expires_at": in_secs(-60)}),
    ] {
        let (status, err) = c.send("POST", "/api/v1/waivers", &c.admin_token, Some(&body));
        assert_eq!(status, 400, "{err}");
    }
    assert!(
        c.call("GET", "/api/v1/waivers", None)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Policies with a bad level.
    let (status, _) = c.send(
        "PUT",
        "/api/v1/policies",
        &c.admin_token,
        Some(&json!({"attributes": {"classes": {}}, "criticality": [{"selector": "host=x", "impact": 7}], "deny": []})),
    );
    assert_eq!(status, 400);
}

#[test]
fn a_collector_killed_mid_stream_judges_every_version_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut c, _a, _host, watched) = setup(tmp.path(), 3, "");
    std::fs::write(watched.join("f00.conf"), "one\n").unwrap();
    let inc = wait_for(Duration::from_secs(10), "an incident", || {
        incidents(&c, "").into_iter().next()
    });
    // Edits while the collector is dead are buffered by the agent and judged after restart.
    c.kill9();
    std::fs::write(watched.join("f01.conf"), "two\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.restart();
    std::fs::write(watched.join("f02.conf"), "three\n").unwrap();
    let drift = wait_for(Duration::from_secs(20), "three drift records", || {
        let d = c.call("GET", "/api/v1/drift", None)["items"]
            .as_array()
            .cloned()?;
        (d.len() >= 3).then_some(d)
    });
    std::thread::sleep(Duration::from_secs(2));
    let drift_now = c.call("GET", "/api/v1/drift", None)["items"].clone();
    assert_eq!(
        drift_now.as_array().unwrap().len(),
        3,
        "each version judged once: {drift_now}"
    );
    // One commit's versions come in CI id order, not file order.
    let mut keys: Vec<&str> = drift.iter().map(|d| d["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "/etc/cmdb-test/f00.conf",
            "/etc/cmdb-test/f01.conf",
            "/etc/cmdb-test/f02.conf"
        ]
    );
    // The incident survived the restart and took the later edits (same host, same burst
    // window): still one incident.
    let all = incidents(&c, "");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["number"], inc["number"]);
    assert_eq!(all[0]["alerts"].as_array().unwrap().len(), 3);
}

#[test]
fn a_retroactive_emergency_change_accepts_the_drift_into_the_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, host_id, watched) = setup(tmp.path(), 2, "");
    std::fs::write(watched.join("f00.conf"), "hotfix\n").unwrap();
    let inc = wait_for(Duration::from_secs(10), "an incident", || {
        incidents(&c, "").into_iter().next()
    });
    let number = inc["number"].as_str().unwrap();
    let ci = inc["ci_id"].as_str().unwrap().to_owned();
    // A normal change cannot accept drift retroactively; an emergency one can.
    let mk = |ty: &str| {
        let ch = c.call(
            "POST",
            "/api/v1/changes",
            Some(&json!({"title": "Night hotfix", "type": ty,
                         "scope": [format!("host={host_id}")],
                         "window_start": in_secs(-600), "window_end": in_secs(60)})),
        );
        let id = ch["id"].as_str().unwrap().to_owned();
        c.call(
            "POST",
            &format!("/api/v1/changes/{id}/transition"),
            Some(&json!({"to": "approved"})),
        );
        id
    };
    let normal = mk("normal");
    let (status, err) = c.send(
        "POST",
        &format!("/api/v1/incidents/{number}/actions"),
        &c.admin_token,
        Some(&json!({"action": "close", "note": "hotfix", "change_id": normal})),
    );
    assert_eq!(status, 400, "{err}");
    let emergency = mk("emergency");
    let closed = c.call(
        "POST",
        &format!("/api/v1/incidents/{number}/actions"),
        Some(&json!({"action": "close", "note": "hotfix at night", "change_id": emergency})),
    );
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["resolution"]["code"], "accepted");
    assert_eq!(closed["resolution"]["change_id"], emergency.as_str());
    let drift = c.call("GET", &format!("/api/v1/drift?ci={ci}"), None)["items"][0].clone();
    assert_eq!(drift["verdict"], "authorized");
    assert_eq!(drift["change_id"], emergency.as_str());
    assert_eq!(drift["open"], false);
    let change = c.call("GET", &format!("/api/v1/changes/{emergency}"), None);
    assert_eq!(change["evidence"][0], drift["id"]);
    // The baseline took the hotfix: its diff against live state is clean.
    let initial = c.call("GET", "/api/v1/baselines", None)["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let diff = c.call("GET", &format!("/api/v1/baselines/{initial}/diff"), None);
    assert_eq!(diff["changed"], 0, "{diff}");
}

#[test]
fn deny_listed_cis_open_a_security_incident_while_present() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _a, host_id, watched) = setup(tmp.path(), 1, "");
    // Already there when the rule arrives: the new deny list applies to it at once.
    std::fs::write(watched.join("backdoor1.conf"), "x\n").unwrap();
    wait_for(Duration::from_secs(10), "the file CI", || {
        c.cis(&format!("class=file&host={host_id}"))
            .iter()
            .any(|ci| ci["key"] == "/etc/cmdb-test/backdoor1.conf")
            .then_some(())
    });
    let mut policies = c.call("GET", "/api/v1/policies", None);
    policies["deny"] = json!([{"selector": "class=file key=/etc/cmdb-test/backdoor*",
                               "reason": "known implant"}]);
    c.call("PUT", "/api/v1/policies", Some(&policies));
    let sec = wait_for(Duration::from_secs(10), "a security incident", || {
        incidents(&c, "category=security").into_iter().next()
    });
    assert!(
        sec["title"].as_str().unwrap().contains("backdoor1"),
        "{sec}"
    );
    assert_eq!(
        sec["priority"], 2,
        "security defaults to impact 2, urgency 1"
    );
    std::fs::remove_file(watched.join("backdoor1.conf")).unwrap();
    let number = sec["number"].as_str().unwrap();
    wait_for(Duration::from_secs(10), "resolved when removed", || {
        let i = c.call("GET", &format!("/api/v1/incidents/{number}"), None);
        (i["state"] == "resolved").then_some(())
    });
    // A new one arriving later is caught as it arrives.
    std::fs::write(watched.join("backdoor2.conf"), "y\n").unwrap();
    wait_for(Duration::from_secs(10), "the second one flagged", || {
        incidents(&c, "category=security&open=true")
            .iter()
            .any(|i| {
                i["alerts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["key"] == "/etc/cmdb-test/backdoor2.conf")
                })
            })
            .then_some(())
    });
}
