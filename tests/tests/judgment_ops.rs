//! End-to-end scenarios of the collector's operational promises: incident notices reach
//! HTTP sinks through an outage of the sink, in order and filtered per sink; `cmdbctl
//! audit-log verify` names an edited and a removed audit entry; a host that goes down
//! absorbs its service monitor's alert into one incident that resolves by itself; and the
//! monitor's outage shows in the availability figures. Real `cmdb-collector`, `cmdb-agent`
//! and `cmdbctl` processes over loopback; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{Agent, AgentSpec, Collector, bin, copy_tree, fixtures, wait_for};
use serde_json::{Value, json};

/// Collector settings for tests: 1 s heartbeats (the agents' FAST_INTERVALS).
const FAST_COLLECTOR: &str = "[agents]\nheartbeat = \"1s\"\n";

// === shared helpers ===

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

fn incidents(c: &Collector, query: &str) -> Vec<Value> {
    c.call("GET", &format!("/api/v1/incidents?{query}"), None)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn incident(c: &Collector, number: &str) -> Value {
    c.call("GET", &format!("/api/v1/incidents/{number}"), None)
}

fn host_ci_id(c: &Collector, host_id: &str) -> String {
    c.call(
        "GET",
        &format!("/api/v1/cis?class=host&host={host_id}"),
        None,
    )["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn hostname_of(c: &Collector, agent_id: &str) -> String {
    c.get(&format!("/api/v1/agents/{agent_id}"))["hostname"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One sample of the collector's Prometheus text (`name value`, no labels).
fn metric(c: &Collector, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", c.api()))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

// === 1. notifications ===

/// One request a sink receiver got.
#[derive(Clone, Debug)]
struct Hit {
    /// What the receiver answered.
    status: u16,
    /// The `Idempotency-Key` header, `<sink>:<seq>`.
    key: String,
    content_type: String,
    body: Value,
}

impl Hit {
    fn seq(&self) -> u64 {
        self.key.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

#[derive(Clone)]
struct ReceiverState {
    hits: Arc<Mutex<Vec<(String, Hit)>>>,
    accepting: Arc<AtomicBool>,
}

/// An HTTP server on 127.0.0.1 receiving every sink (`POST /<sink>`) and recording each
/// request. While not accepting it answers 503, as a sink that is down does.
struct Receiver {
    port: u16,
    state: ReceiverState,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = ReceiverState {
            hits: Arc::new(Mutex::new(Vec::new())),
            accepting: Arc::new(AtomicBool::new(false)),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/{sink}", axum::routing::post(receive))
            .with_state(state.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            port,
            state,
            _rt: rt,
        }
    }

    fn url(&self, sink: &str) -> String {
        format!("http://127.0.0.1:{}/{sink}", self.port)
    }

    fn set_accepting(&self, on: bool) {
        self.state.accepting.store(on, Ordering::SeqCst);
    }

    /// Every request for `sink`, in arrival order.
    fn hits(&self, sink: &str) -> Vec<Hit> {
        self.state
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == sink)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// The requests for `sink` that were answered 2xx, in arrival order.
    fn delivered(&self, sink: &str) -> Vec<Hit> {
        self.hits(sink)
            .into_iter()
            .filter(|h| h.status == 200)
            .collect()
    }
}

async fn receive(
    axum::extract::State(st): axum::extract::State<ReceiverState>,
    axum::extract::Path(sink): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let status = if st.accepting.load(Ordering::SeqCst) {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hit = Hit {
        status: status.as_u16(),
        key: header("idempotency-key"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    st.hits.lock().unwrap().push((sink, hit));
    status
}

/// The `event` of each json notice (or the state of each ServiceNow record) about `number`.
fn events(hits: &[Hit], number: &str) -> Vec<String> {
    hits.iter()
        .filter(|h| h.body["number"] == number || h.body["correlation_id"] == number)
        .map(|h| {
            h.body["event"]
                .as_str()
                .or(h.body["state"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A sink's requests lost nothing and kept order: every notice attempted was delivered
/// exactly once (no crash, so no resend), and deliveries follow the enqueue order.
fn assert_lossless_in_order(rx: &Receiver, sink: &str) -> Vec<u64> {
    let all = rx.hits(sink);
    let delivered = rx.delivered(sink);
    let seqs: Vec<u64> = delivered.iter().map(Hit::seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{sink}: deliveries out of order or repeated: {seqs:?}"
    );
    for h in &all {
        assert!(
            h.key.starts_with(&format!("{sink}:")),
            "{sink}: idempotency key {:?}",
            h.key
        );
        assert!(
            seqs.contains(&h.seq()),
            "{sink}: {} was attempted but never delivered",
            h.key
        );
        assert!(h.content_type.starts_with("application/json"), "{h:?}");
    }
    seqs
}

/// A private copy of the debian12 fixture host with one watched file.
fn watched_host(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("host");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let watched = root.join("etc/cmdb-test");
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::write(watched.join("f00.conf"), "setting = 0\n").unwrap();
    (root, watched)
}

#[test]
fn notices_outlast_a_sink_outage_in_order_and_each_sink_gets_only_what_it_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    // Two sinks for everything; one for availability only; one for P1 and P2 only.
    let sinks = format!(
        "[notify]\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n\n\
         [[notify.sinks]]\nname = \"hook\"\nurl = \"{}\"\nformat = \"json\"\n\n\
         [[notify.sinks]]\nname = \"snow\"\nurl = \"{}\"\nformat = \"servicenow\"\n\n\
         [[notify.sinks]]\nname = \"avail\"\nurl = \"{}\"\nformat = \"json\"\n\
         categories = [\"availability\"]\n\n\
         [[notify.sinks]]\nname = \"urgent\"\nurl = \"{}\"\nformat = \"json\"\nmin_priority = 2\n",
        rx.url("hook"),
        rx.url("snow"),
        rx.url("avail"),
        rx.url("urgent"),
    );
    let (root, watched) = watched_host(tmp.path());
    let c = Collector::start_with(
        &tmp.path().join("collector"),
        &format!("{FAST_COLLECTOR}{sinks}"),
    );
    let mut a = Agent::enroll(
        &c,
        &tmp.path().join("agent"),
        &AgentSpec {
            host_root: root,
            watch: vec!["/etc/cmdb-test/*.conf".into()],
            extra: String::new(),
        },
    );
    a.start();
    let host_id = wait_for(Duration::from_secs(30), "initial baseline", || {
        c.call("GET", "/api/v1/baselines", None)["items"]
            .as_array()?
            .iter()
            .find(|b| b["initial"] == true && b["items"].as_u64().unwrap_or(0) > 0)
            .and_then(|b| b["scope"][0].as_str())
            .and_then(|s| s.strip_prefix("host=").map(str::to_owned))
    });
    wait_for(Duration::from_secs(20), "the watched file's CI", || {
        c.cis(&format!("class=file&host={host_id}"))
            .into_iter()
            .find(|ci| ci["key"] == "/etc/cmdb-test/f00.conf")
    });
    let hostname = hostname_of(&c, &a.agent_id);

    // The receiver is down (503): an unauthorized edit opens an incident, its notice is
    // tried and retried.
    std::fs::write(watched.join("f00.conf"), "setting = tampered\n").unwrap();
    let inc = wait_for(Duration::from_secs(10), "a drift incident", || {
        incidents(&c, "category=unauthorized-change")
            .into_iter()
            .next()
    });
    let number = inc["number"].as_str().unwrap().to_owned();
    assert_eq!(
        inc["priority"], 3,
        "unauthorized change: impact 2, urgency 2"
    );
    wait_for(
        Duration::from_secs(10),
        "failed retries on both sinks",
        || (rx.hits("hook").len() >= 3 && rx.hits("snow").len() >= 3).then_some(()),
    );
    // The revert resolves it while the sink is still down: the resolution queues behind.
    std::fs::write(watched.join("f00.conf"), "setting = 0\n").unwrap();
    let resolved = wait_for(Duration::from_secs(10), "the revert resolves it", || {
        Some(incident(&c, &number)).filter(|i| i["state"] == "resolved")
    });
    assert!(metric(&c, "cmdb_notify_failed_attempts_total") >= 6.0);
    // At least two notices (opened, resolved) queued for each of the two sinks: the backlog
    // shows while the sink is down.
    wait_for(Duration::from_secs(5), "4 notices pending", || {
        (metric(&c, "cmdb_notify_pending") >= 4.0).then_some(())
    });

    // The receiver comes back: opened, then resolved, on each sink.
    rx.set_accepting(true);
    let back = Instant::now();
    for sink in ["hook", "snow"] {
        wait_for(
            Duration::from_secs(10),
            &format!("{sink}: the resolution delivered"),
            || {
                events(&rx.delivered(sink), &number)
                    .iter()
                    .any(|e| e == "resolved" || e == "6")
                    .then_some(())
            },
        );
    }
    eprintln!(
        "backlog delivered {:?} after the sink came back",
        back.elapsed()
    );

    // json: the notice as documented, opened first and resolved last.
    let hook = rx.delivered("hook");
    let ev = events(&hook, &number);
    assert_eq!(ev.first().map(String::as_str), Some("opened"), "{ev:?}");
    assert_eq!(ev.last().map(String::as_str), Some("resolved"), "{ev:?}");
    assert!(ev[1..ev.len() - 1].iter().all(|e| e == "updated"), "{ev:?}");
    let opened = &hook[0].body;
    assert_eq!(opened["source"], "cmdb");
    assert_eq!(opened["event"], "opened");
    assert_eq!(opened["number"], number.as_str());
    assert_eq!(opened["title"], inc["title"]);
    assert_eq!(opened["category"], "unauthorized-change");
    assert_eq!(opened["priority"], 3);
    assert_eq!(
        (opened["impact"].as_u64(), opened["urgency"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(opened["state"], "new");
    assert_eq!(opened["ci_id"], inc["ci_id"]);
    assert_eq!(opened["host_id"], host_id.as_str());
    assert_eq!(opened["hostname"], hostname.as_str());
    assert_eq!(opened["started_at"], inc["started_at"]);
    assert!(opened["resolved_at"].is_null());
    let last = &hook.last().unwrap().body;
    assert_eq!(last["event"], "resolved");
    assert_eq!(last["state"], "resolved");
    assert_eq!(last["resolved_at"], resolved["resolved_at"]);
    assert_eq!(last["priority"], 3);

    // servicenow: an incident-table record coalescing on the incident number.
    let snow = rx.delivered("snow");
    let states = events(&snow, &number);
    assert_eq!(states.first().map(String::as_str), Some("1"), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("6"), "{states:?}");
    assert!(
        snow.iter()
            .all(|h| h.body["correlation_id"] == number.as_str())
    );
    let new = &snow[0].body;
    assert_eq!(new["correlation_display"], "cmdb");
    assert_eq!(new["short_description"], inc["title"]);
    assert_eq!(new["category"], "unauthorized-change");
    assert_eq!(
        (new["impact"].as_str(), new["urgency"].as_str()),
        (Some("2"), Some("2"))
    );
    assert_eq!(new["cmdb_ci"], hostname.as_str());
    assert!(new["description"].as_str().unwrap().contains(&number));
    assert!(new.get("close_code").is_none(), "{new}");
    let done = &snow.last().unwrap().body;
    assert_eq!(done["close_code"], "Solution provided");
    assert!(
        done["close_notes"]
            .as_str()
            .unwrap()
            .starts_with("Resolved in cmdb at ")
    );

    // Nothing lost, nothing repeated, same notices on both sinks, outbox empty.
    let hook_seqs = assert_lossless_in_order(&rx, "hook");
    let snow_seqs = assert_lossless_in_order(&rx, "snow");
    assert_eq!(hook_seqs, snow_seqs, "both sinks get every notice");
    wait_for(Duration::from_secs(5), "an empty outbox", || {
        (metric(&c, "cmdb_notify_pending") == 0.0).then_some(())
    });
    assert_eq!(metric(&c, "cmdb_notify_dead_total"), 0.0);

    // The filtered sinks never heard of the drift incident (P3, unauthorized-change)...
    assert!(rx.hits("avail").is_empty(), "{:?}", rx.hits("avail"));
    assert!(rx.hits("urgent").is_empty(), "{:?}", rx.hits("urgent"));
    // ...but both get a P2 availability incident: the agent dies.
    a.kill9();
    let down = wait_for(Duration::from_secs(15), "an availability incident", || {
        incidents(&c, "category=availability").into_iter().next()
    });
    let down_number = down["number"].as_str().unwrap();
    assert_eq!(down["priority"], 2);
    for sink in ["avail", "urgent", "hook", "snow"] {
        wait_for(
            Duration::from_secs(10),
            &format!("{sink}: the host-down notice"),
            || {
                events(&rx.delivered(sink), down_number)
                    .first()
                    .filter(|e| *e == "opened" || *e == "1")
                    .cloned()
            },
        );
    }
    for sink in ["avail", "urgent"] {
        let hits = rx.hits(sink);
        assert!(
            hits.iter().all(|h| h.body["number"] == down_number),
            "{sink} got more than the availability incident: {hits:?}"
        );
        assert_eq!(hits[0].body["category"], "availability");
        assert_lossless_in_order(&rx, sink);
    }
}

// === 2. the audit log ===

/// `cmdbctl --url … --token … --format F audit-log verify`: exit code, stdout, stderr.
fn cmdbctl_verify(c: &Collector, token: &str, format: &str) -> (i32, String, String) {
    let out = Command::new(bin("cmdbctl"))
        .args(["--url", &c.api(), "--token", token, "--format", format])
        .args(["audit-log", "verify"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit log's lines with `edit` applied to them, in place.
fn rewrite_log(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    edit(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn line_of(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(&format!("{{\"seq\":{seq},")))
        .unwrap_or_else(|| panic!("no line for seq {seq}"))
}

#[test]
fn cmdbctl_audit_log_verify_names_the_edited_and_the_removed_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Collector::start_with(&tmp.path().join("collector"), FAST_COLLECTOR);
    let manager = c.api_token("carol", "change-manager");
    let auditor = c.api_token("audrey", "auditor");

    // A few mutations by two people.
    let change = c.call(
        "POST",
        "/api/v1/changes",
        Some(&json!({"title": "Rotate TLS keys", "type": "normal",
                     "scope": ["host=web-* class=file"],
                     "window_start": in_secs(60), "window_end": in_secs(3600)})),
    );
    let id = change["id"].as_str().unwrap();
    let (status, body) = c.send(
        "POST",
        &format!("/api/v1/changes/{id}/transition"),
        &manager,
        Some(&json!({"to": "approved", "note": "CAB 2026-47"})),
    );
    assert_eq!(status, 200, "{body}");
    let baseline = c.call(
        "POST",
        "/api/v1/baselines",
        Some(&json!({"name": "web files", "scope": ["host=web-* class=file"]})),
    );
    let (status, body) = c.send(
        "POST",
        &format!(
            "/api/v1/baselines/{}/approve",
            baseline["id"].as_str().unwrap()
        ),
        &manager,
        None,
    );
    assert_eq!(status, 200, "{body}");
    c.call(
        "POST",
        "/api/v1/waivers",
        Some(
            &json!({"scope": ["class=file key=/etc/motd"], "justification": "banner rotates",
                     "expires_at": in_secs(7 * 86400)}),
        ),
    );
    let entries = c.get("/api/v1/audit-log")["items"]
        .as_array()
        .cloned()
        .unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("test-admin", "change.create"),
            ("carol", "change.approved"),
            ("test-admin", "baseline.capture"),
            ("carol", "baseline.approve"),
            ("test-admin", "waiver.create"),
        ]
    );
    let seq_of = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .and_then(|e| e["seq"].as_u64())
            .unwrap()
    };
    let approved = seq_of("change.approved");
    let captured = seq_of("baseline.capture");
    let head = entries.last().unwrap()["seq"].as_u64().unwrap();

    let (code, out, err) = cmdbctl_verify(&c, &auditor, "table");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("ok: {head} entries, head seq {head}"));

    // Someone rewrites who approved the change (the line stays valid JSON).
    let log = c.dir.join("audit/audit.log");
    let original = std::fs::read(&log).unwrap();
    c.stop();
    rewrite_log(&log, |lines| {
        let i = line_of(lines, approved);
        assert!(lines[i].contains("\"actor\":\"carol\""));
        lines[i] = lines[i].replace("\"actor\":\"carol\"", "\"actor\":\"test-admin\"");
        serde_json::from_str::<Value>(&lines[i]).expect("still JSON");
    });
    c.restart();
    let (code, out, err) = cmdbctl_verify(&c, &auditor, "table");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("FAILED"), "{out}");
    assert!(out.contains("edited"), "{out}");
    assert!(
        out.contains(&format!("seq {approved} (line {approved}): hash mismatch")),
        "{out}"
    );
    let (code, out, err) = cmdbctl_verify(&c, &auditor, "json");
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        (report["head_seq"].as_u64(), report["anchor_seq"].as_u64()),
        (Some(head), Some(head))
    );
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "only the edited entry: {report}");
    assert_eq!(problems[0]["seq"], approved);
    assert_eq!(problems[0]["kind"], "edited");

    // Another tamper on the original log: the baseline capture's line is deleted.
    c.stop();
    std::fs::write(&log, &original).unwrap();
    rewrite_log(&log, |lines| {
        let i = line_of(lines, captured);
        lines.remove(i);
    });
    c.restart();
    let (code, out, err) = cmdbctl_verify(&c, &auditor, "table");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(
        out.contains(&format!(
            "seq {captured} missing between {} and {}",
            captured - 1,
            captured + 1
        )),
        "{out}"
    );

    // The untouched log verifies again: the restarts did not make the problems.
    c.stop();
    std::fs::write(&log, &original).unwrap();
    c.restart();
    let (code, out, err) = cmdbctl_verify(&c, &auditor, "table");
    assert_eq!(code, 0, "{out}{err}");
    // Only auditors and admins may verify.
    let (code, out, err) = cmdbctl_verify(&c, &manager, "table");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("HTTP 403"), "{out}{err}");
}

// === 3 and 4. suppression and monitor outages ===

/// A listener on 0.0.0.0:8443 in /proc/net/tcp's format (0x20FB = 8443, state 0A = LISTEN).
const LISTEN_8443: &str = "   9: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 47001 1 0000000000000000 100 0 0 10 0\n";

/// Agent schedules: 1 s heartbeats, monitors every 300 ms, no periodic rescans during the
/// test (so that /proc/net/tcp edits reach the CMDB only through the monitor).
const MONITOR_INTERVALS: &str = "[intervals]\nheartbeat = \"1s\"\nmetrics_sample = \"1s\"\nmetrics_window = \"10s\"\nfile_debounce = \"100ms\"\nfast = \"1h\"\ninventory = \"1h\"\nmonitor = \"300ms\"\n";

/// The collector's monitor for every host.
const TLS_MONITOR: &str = "\n[[availability.monitors]]\nname = \"tls\"\nselector = \"host=*\"\nkind = \"tcp_port\"\ntarget = \"8443\"\n";

/// Replaces the fixture's /proc/net/tcp in one rename, so the agent never reads half of it.
fn set_tcp(root: &Path, text: &str) {
    let tmp = root.join("proc/net/.tcp.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, root.join("proc/net/tcp")).unwrap();
}

fn monitor_ci(c: &Collector, host_id: &str, name: &str) -> Option<Value> {
    c.cis(&format!("class=monitor&host={host_id}"))
        .into_iter()
        .find(|ci| ci["key"] == name)
}

fn alert<'a>(inc: &'a Value, kind: &str) -> Option<&'a Value> {
    inc["alerts"].as_array()?.iter().find(|a| a["kind"] == kind)
}

#[test]
fn a_dead_host_absorbs_its_monitor_alert_and_the_one_incident_resolves_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let closed = std::fs::read_to_string(root.join("proc/net/tcp")).unwrap();
    let listening = format!("{closed}{LISTEN_8443}");
    set_tcp(&root, &listening);
    let c = Collector::start_with(
        &tmp.path().join("collector"),
        &format!("{FAST_COLLECTOR}{TLS_MONITOR}"),
    );
    let mut a = Agent::enroll(
        &c,
        &tmp.path().join("agent"),
        &AgentSpec {
            host_root: root.clone(),
            watch: vec!["/etc/hostname".into()],
            extra: MONITOR_INTERVALS.into(),
        },
    );
    a.start();
    let host_id = wait_for(Duration::from_secs(20), "agent identified", || {
        c.agents()
            .into_iter()
            .find(|ag| ag["agent_id"] == a.agent_id.as_str())
            .and_then(|ag| ag["host_id"].as_str().map(str::to_owned))
    });
    // The collector's monitor reached the agent through its Config.
    let mon = wait_for(Duration::from_secs(20), "monitor tls up", || {
        monitor_ci(&c, &host_id, "tls").filter(|ci| ci["attrs"]["status"] == "up")
    });
    let mon_id = mon["id"].as_str().unwrap().to_owned();
    let host_ci = host_ci_id(&c, &host_id);
    let hostname = hostname_of(&c, &a.agent_id);

    // The port stops listening: a monitor_down availability incident.
    set_tcp(&root, &closed);
    let port_closed = SystemTime::now();
    let inc = wait_for(Duration::from_secs(10), "a monitor_down incident", || {
        incidents(&c, "category=availability").into_iter().next()
    });
    let number = inc["number"].as_str().unwrap().to_owned();
    assert_eq!(
        inc["title"],
        format!("Service monitor tls down on {hostname}")
    );
    assert_eq!(inc["ci_id"], mon_id.as_str());
    assert_eq!(inc["priority"], 2);
    let m = alert(&inc, "monitor_down").unwrap();
    assert_eq!(
        (m["firing"].as_bool(), m["suppressed"].as_bool()),
        (Some(true), Some(false))
    );

    // The host dies: after 3 missed 1 s heartbeats its host_down alert joins the same
    // incident, which now says the host is down.
    a.kill9();
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    let inc = wait_for(Duration::from_secs(15), "host_down in the incident", || {
        let i = incident(&c, &number);
        alert(&i, "host_down")
            .is_some_and(|al| al["firing"] == true)
            .then_some(i)
    });
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "not before the missed heartbeats: {:?}",
        killed.elapsed()
    );
    assert_eq!(inc["title"], format!("Host {hostname} is down"));
    assert_eq!(inc["ci_id"], host_ci.as_str());
    assert_eq!(inc["alerts"].as_array().unwrap().len(), 2, "{inc}");
    assert_eq!(alert(&inc, "monitor_down").unwrap()["firing"], true);
    let all = incidents(&c, "");
    assert_eq!(all.len(), 1, "one incident, not two: {all:?}");

    // Back, with the port listening: both alerts recover and the incident resolves itself.
    set_tcp(&root, &listening);
    a.start();
    let restarted_at = SystemTime::now();
    let resolved = wait_for(Duration::from_secs(20), "the incident resolves", || {
        Some(incident(&c, &number)).filter(|i| i["state"] == "resolved")
    });
    // Both outages ended before the incident could resolve.
    let resolved_seen = SystemTime::now();
    assert_eq!(resolved["resolution"]["code"], "recovered");
    for al in resolved["alerts"].as_array().unwrap() {
        assert_eq!(al["firing"], false, "every alert recovered: {al}");
    }
    let recovered = resolved["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["event"] == "recovered")
        .count();
    assert_eq!(recovered, 2, "{}", resolved["timeline"]);
    let all = incidents(&c, "");
    assert_eq!(all.len(), 1, "still one incident: {all:?}");
    wait_for(Duration::from_secs(5), "monitor tls up again", || {
        monitor_ci(&c, &host_id, "tls").filter(|ci| ci["attrs"]["status"] == "up")
    });

    // 4. The monitor's figures: one unplanned outage, about as long as the port was closed.
    let report = c.get(&format!(
        "/api/v1/availability?ci={mon_id}&from={}",
        in_secs(-3600)
    ));
    let f = &report["items"][0];
    assert_eq!(f["ci_id"], mon_id.as_str(), "{report}");
    assert_eq!(f["subject"], "monitor");
    assert_eq!(f["name"], "tls");
    assert_eq!(f["outages"], 1, "{report}");
    let o = &f["outage_list"][0];
    assert_eq!(o["incident"], number.as_str());
    assert_eq!(o["cause"], "nothing listens on TCP port 8443");
    assert!(!o["end"].is_null(), "the outage ended: {o}");
    let down = f["unplanned_downtime_seconds"].as_u64().unwrap();
    let secs = |from: SystemTime, to: SystemTime| to.duration_since(from).unwrap().as_secs();
    let (at_least, at_most) = (
        secs(port_closed, restarted_at),
        secs(port_closed, resolved_seen),
    );
    assert!(
        down + 1 >= at_least && down <= at_most + 1,
        "monitor downtime {down}s; the port was closed for {at_least}s to {at_most}s"
    );
    let mtrs = f["mtrs_seconds"].as_f64().unwrap();
    assert!(
        (mtrs - down as f64).abs() < 1.0,
        "MTRS {mtrs} of one {down}s outage"
    );
    assert!(f["availability_percent"].as_f64().unwrap() < 100.0);
    // The host has its own outage: the kill.
    let host = c.get(&format!(
        "/api/v1/availability?ci={host_ci}&from={}",
        in_secs(-3600)
    ));
    let h = &host["items"][0];
    assert_eq!(h["outages"], 1, "{host}");
    let host_down = h["unplanned_downtime_seconds"].as_u64().unwrap();
    let (dead_at_least, dead_at_most) = (
        secs(killed_at, restarted_at),
        secs(killed_at, resolved_seen),
    );
    assert!(
        // It starts at the last heartbeat before the kill: up to one interval earlier.
        host_down + 1 >= dead_at_least && host_down <= dead_at_most + 2,
        "host downtime {host_down}s; the agent was dead for {dead_at_least}s to {dead_at_most}s"
    );
    a.stop();
}
