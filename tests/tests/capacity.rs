//! End-to-end: capacity roll-ups and forecasts through the real `cmdb-collector` and
//! `cmdbctl`. A raw enrolled agent sends five days of filesystem metrics with chosen
//! timestamps (ingest applies metric windows whatever their age; the minute tier keeps
//! them for `store.metrics_retention`, 7 d by default) growing linearly towards a known
//! exhaustion date; the collector's capacity loop (tuned to run every second) rolls them
//! up, forecasts, raises a capacity incident, and the API and cmdbctl show it all. Every
//! wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use cmdb_proto::v1;
use common::raw_agent::RawAgent;
use common::{Collector, bin, wait_for};
use serde_json::Value;

const GB: f64 = 1e9;
const DAY: u64 = 86_400;

const CAPACITY: &str = "[capacity]\ninterval = \"1s\"\nrecompute_interval = \"1s\"\nrollup_lateness = \"7d\"\nforecast_window = \"7d\"\n";

fn int(x: i64) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::Int(x)),
    }
}

fn item(class: &str, key: &str, attrs: &[(&str, i64)]) -> v1::Item {
    v1::Item {
        class: class.into(),
        key: key.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), int(*v)))
            .collect(),
    }
}

fn summary(name: &str, label: Option<(&str, &str)>, v: f64) -> v1::MetricSummary {
    v1::MetricSummary {
        name: name.into(),
        labels: label
            .map(|(k, l)| [(k.to_owned(), l.to_owned())].into_iter().collect())
            .unwrap_or_default(),
        min: v,
        avg: v,
        max: v,
        p95: v,
        samples: 4,
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
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

#[test]
fn linear_disk_growth_is_forecast_with_its_exhaustion_date_through_api_and_cmdbctl() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Collector::start_with(&tmp.path().join("collector"), CAPACITY);
    let mut a = RawAgent::enroll(&c, "db-01");

    // Inventory: /var is 100 GB, / is 50 GB; 16 GB of memory.
    let seq = a.next_seq();
    let snap = a.snapshot(vec![
        item("filesystem", "/var", &[("size_bytes", 100_000_000_000)]),
        item("filesystem", "/", &[("size_bytes", 50_000_000_000)]),
        item(
            "memory",
            "memory",
            &[("total_bytes", 16_000_000_000), ("swap_total_bytes", 0)],
        ),
    ]);
    a.send(vec![RawAgent::event(seq, SystemTime::now(), snap)]);

    // Five days of windows, one every 10 minutes: /var grows 3 GB/day from 50 GB (90 % =
    // 90 GB on day 40/3 after the start), / stays at 10 GB, memory at 4 GB.
    let now = secs(SystemTime::now());
    let start = now - now % 3600 - 5 * DAY;
    let used = |t: u64| 50.0 * GB + 3.0 * GB * (t - start) as f64 / DAY as f64;
    let mut events = Vec::new();
    let mut t = start;
    while t + 60 <= now {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(t);
        let seq = a.next_seq();
        events.push(RawAgent::event(
            seq,
            at + Duration::from_secs(60),
            RawAgent::metrics(
                at,
                60,
                vec![
                    summary("filesystem.used_bytes", Some(("mount", "/var")), used(t)),
                    summary("filesystem.used_bytes", Some(("mount", "/")), 10.0 * GB),
                    summary("memory.used_bytes", None, 4.0 * GB),
                ],
            ),
        ));
        t += 600;
    }
    let n = events.len();
    assert!(n >= 5 * 144, "{n}");
    a.send(events);

    // The loop rolls up, forecasts and raises the incident.
    let host_id = wait_for(Duration::from_secs(30), "an at-risk forecast", || {
        let v = c.get("/api/v1/capacity/forecast");
        v["items"]
            .as_array()?
            .iter()
            .find(|f| f["resource"] == "filesystem:/var" && !f["incident"].is_null())
            .map(|f| f["host_id"].as_str().unwrap().to_owned())
    });
    let all = c.get(&format!(
        "/api/v1/capacity/forecast?host={host_id}&all=true"
    ));
    let items = all["items"].as_array().unwrap();
    let find = |r: &str| -> &Value {
        items
            .iter()
            .find(|f| f["resource"] == r)
            .unwrap_or_else(|| panic!("no {r} in {all}"))
    };
    let var = find("filesystem:/var");
    assert_eq!(var["status"], "at_risk", "{var}");
    assert_eq!(var["hostname"], "db-01");
    assert_eq!(var["unit"], "bytes");
    assert_eq!(var["threshold"].as_f64().unwrap(), 90.0 * GB);
    let slope = var["slope_per_day"].as_f64().unwrap();
    assert!((slope - 3.0 * GB).abs() < 0.01 * GB, "{slope}");
    // Hour points average the windows at :00 … :50, i.e. the value at :25: the fitted
    // crossing is 25 minutes before the exact one.
    let exact = start as f64 + 40.0 / 3.0 * DAY as f64;
    let got = humantime::parse_rfc3339(var["exhaustion_at"].as_str().unwrap()).unwrap();
    let off = secs(got) as f64 - exact;
    assert!(off.abs() < 3600.0, "exhaustion off by {off} s: {var}");
    let days = var["days_to_threshold"].as_f64().unwrap();
    assert!(
        (days - (exact - now as f64) / DAY as f64).abs() < 0.1,
        "{days}"
    );
    assert!(var["confidence"].as_f64().unwrap() > 0.5, "{var}");
    let root = find("filesystem:/");
    assert_eq!(root["status"], "ok");
    assert!(root["exhaustion_at"].is_null());
    assert_eq!(find("memory")["status"], "ok");
    assert_eq!(find("memory")["capacity"].as_f64().unwrap(), 16e9);

    // One capacity incident, about /var.
    let number = var["incident"].as_str().unwrap().to_owned();
    let inc = c.get(&format!("/api/v1/incidents/{number}"));
    assert_eq!(inc["category"], "capacity", "{inc}");
    let open = c.get("/api/v1/incidents?category=capacity&open=true");
    assert_eq!(open["items"].as_array().unwrap().len(), 1, "{open}");

    // Series: hourly points over the five days; days once complete.
    let from =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(start));
    let v = c.get(&format!(
        "/api/v1/capacity?host=db-01&resource=filesystem:/var&tier=hour&from={from}"
    ));
    let s = &v["items"][0];
    assert_eq!(s["tier"], "hour");
    assert_eq!(s["capacity"].as_f64().unwrap(), 100.0 * GB);
    let pts = s["points"].as_array().unwrap();
    assert!((119..=121).contains(&pts.len()), "{}", pts.len());
    assert_eq!(pts[0]["t"], from.to_string());
    assert_eq!(pts[0]["samples"], 24);
    let days = c.get(&format!(
        "/api/v1/capacity?host={host_id}&tier=day&from={from}"
    ));
    assert!(
        days["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| (4..=5).contains(&s["points"].as_array().unwrap().len())),
        "{days}"
    );

    // Every role reads; bad parameters are 400s, an unknown host a 404.
    let viewer = c.api_token("cap-viewer", "viewer");
    let (status, _) = c.send("GET", "/api/v1/capacity/forecast", &viewer, None);
    assert_eq!(status, 200);
    for (path, want) in [
        ("/api/v1/capacity", 400),
        ("/api/v1/capacity?host=db-01&tier=week", 400),
        (
            "/api/v1/capacity?host=db-01&tier=minute&from=2020-01-01T00:00:00Z",
            400,
        ),
        ("/api/v1/capacity?host=nope", 404),
        ("/api/v1/capacity/forecast?all=maybe", 400),
        ("/api/v1/capacity/forecast?bogus=1", 400),
    ] {
        let (status, body) = c.send("GET", path, &c.admin_token, None);
        assert_eq!(status, want, "{path}: {body}");
    }

    // cmdbctl: table, CSV and JSON.
    let (code, out, err) = cmdbctl(&c, &["capacity", "forecast"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("filesystem:/var") && out.contains("at_risk"),
        "{out}"
    );
    assert!(out.contains(&number), "{out}");
    let (code, out, err) = cmdbctl(&c, &["--format", "csv", "capacity", "forecast", "--all"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("host_id,hostname,resource,unit,status")
    );
    assert_eq!(lines.count(), items.len(), "{out}");
    let (code, out, err) = cmdbctl(
        &c,
        &[
            "--format",
            "json",
            "capacity",
            "--host",
            "db-01",
            "--resource",
            "filesystem:/",
            "--tier",
            "day",
            "--from",
            "-6d",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"][0]["resource"], "filesystem:/");
    let (code, out, _) = cmdbctl(
        &c,
        &[
            "capacity",
            "--host",
            "db-01",
            "--resource",
            "memory",
            "--tier",
            "hour",
            "--from",
            "-3h",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("3.7 GiB"), "{out}");
    let (code, _, err) = cmdbctl(&c, &["capacity"]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = cmdbctl(&c, &["--format", "csv", "agents"]);
    assert_eq!(code, 64, "{err}");

    // A restart keeps the forecasts and their incident: no second incident is raised.
    // (The raw agent's stream would hold the graceful shutdown open: close it first.)
    drop(a);
    c.stop();
    c.restart();
    std::thread::sleep(Duration::from_secs(3));
    let v = c.get("/api/v1/capacity/forecast");
    assert_eq!(v["items"][0]["incident"], number.as_str(), "{v}");
    let open = c.get("/api/v1/incidents?category=capacity");
    assert_eq!(open["items"].as_array().unwrap().len(), 1, "{open}");
}
