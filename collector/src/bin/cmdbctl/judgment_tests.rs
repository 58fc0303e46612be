//! The judgment commands over loopback HTTP, two ways:
//! - against a stub server that records each request and answers canned JSON: what
//!   cmdbctl sends (method, path, query, body) and how it shows the answers and errors;
//! - against the real router with a judgment engine over the in-memory store of `tests`:
//!   the client and the server agree on every body, role checks included.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use cmdb_collector::availability::{AvailabilityFigures, Outage, OutageSubject};
use cmdb_collector::baselines::{BaselineState, BaselineSummary};
use cmdb_collector::changes::{self, AttrChange, ChangeRecord, ChangeType, NewChange};
use cmdb_collector::drift::{Deviation, DeviationKind, DriftRecord, Verdict};
use cmdb_collector::http::judgment::AvailabilityReport;
use cmdb_collector::http::{ApiState, Authenticator, Principal, router};
use cmdb_collector::incidents::{
    AlertKind, AlertRecord, Category, Incident, IncidentState, TimelineEntry,
};
use cmdb_collector::judgment::{Judgment, JudgmentSettings, Policies};
use cmdb_collector::policy::Waiver;
use cmdb_collector::telemetry::Telemetry;
use cmdb_proto::model::AttrValue;
use serde_json::{Value, json};

use super::*;
use crate::cli::{Cli, Format, Settings};
use crate::tests::{Server, output, store};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
}

fn command(args: &[&str]) -> Command {
    Cli::try_parse_from(std::iter::once("cmdbctl").chain(args.iter().copied()))
        .unwrap()
        .command
}

// === the stub ===

/// One request the stub received.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Option<Value>,
}

/// A canned answer: method, path, status, body.
type Answer = (Method, String, StatusCode, Value);

#[derive(Clone, Default)]
struct Stub {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The last one given for a method and path wins.
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Stub {
    fn answer(&self, method: Method, path: &str, status: u16, body: Value) {
        self.answers.lock().unwrap().push((
            method,
            path.to_owned(),
            StatusCode::from_u16(status).unwrap(),
            body,
        ));
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn last(&self) -> Seen {
        let mut seen = self.take();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        seen.remove(0)
    }
}

async fn stub_handler(
    State(stub): State<Stub>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = reqwest::Url::parse(&format!("http://x{uri}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query,
        content_type: headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: (!body.is_empty()).then(|| serde_json::from_slice(&body).unwrap()),
    };
    stub.seen.lock().unwrap().push(seen);
    let answers = stub.answers.lock().unwrap();
    match answers
        .iter()
        .rev()
        .find(|(m, p, _, _)| *m == method && p == uri.path())
    {
        Some((_, _, status, body)) => (*status, axum::Json(body.clone())).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "not_found", "message": "no such route"}})),
        )
            .into_response(),
    }
}

fn stub_server() -> (Server, Stub) {
    let stub = Stub::default();
    let app = axum::Router::new()
        .fallback(stub_handler)
        .with_state(stub.clone());
    (Server::serve(app), stub)
}

fn run_args(server: &Server, format: Format, args: &[&str]) -> Result<String, RunError> {
    output(&server.settings(format, command(args)))
}

// === canned records ===

fn change_record() -> ChangeRecord {
    let mut c = changes::create(
        "CHG0000001".into(),
        NewChange {
            title: "Upgrade openssl".into(),
            description: "CVE-2026-0001".into(),
            change_type: ChangeType::Normal,
            scope: vec!["host=web-* class=package".into(), "ci=ci-9".into()],
            window_start: t(3600),
            window_end: t(7200),
            expected: vec![changes::ExpectedChange {
                class: "package".into(),
                key: "dpkg:openssl:*".into(),
                attribute: "version".into(),
                old: None,
                new: Some("3.0.1*".into()),
            }],
            outage_expected: true,
            external_id: None,
            state: None,
        },
        "alice",
        t(0),
    )
    .unwrap();
    changes::transition(&mut c, changes::ChangeState::Approved).unwrap();
    c.history.push(changes::ChangeEvent {
        at: t(60),
        actor: "carol".into(),
        from: Some(changes::ChangeState::Draft),
        to: changes::ChangeState::Approved,
    });
    c
}

fn incident_record() -> Incident {
    Incident {
        number: "INC0000007".into(),
        title: "Unauthorized change on web-1".into(),
        category: Category::UnauthorizedChange,
        ci_id: "ci-1".into(),
        host_id: "host-a1".into(),
        hostname: Some("web-1".into()),
        impact: 2,
        urgency: 2,
        priority: 3,
        state: IncidentState::Acknowledged,
        started_at: t(0),
        updated_at: t(120),
        resolved_at: None,
        closed_at: None,
        assignee: None,
        flapping: false,
        alerts: vec![AlertRecord {
            dedup: "host-a1|file|/etc/ssh/sshd_config|drift".into(),
            kind: AlertKind::Drift,
            host_id: "host-a1".into(),
            ci_id: "ci-1".into(),
            class: "file".into(),
            key: "/etc/ssh/sshd_config".into(),
            summary: "file /etc/ssh/sshd_config changed: sha256".into(),
            first_at: t(0),
            last_at: t(0),
            firing: true,
            suppressed: false,
            count: 1,
            drift_ids: vec!["DRF0000000001".into()],
            drift_ids_overflow: 0,
        }],
        alerts_overflow: 0,
        timeline: vec![
            TimelineEntry {
                at: t(0),
                actor: "collector".into(),
                event: "opened".into(),
                message: "unauthorized change".into(),
            },
            TimelineEntry {
                at: t(120),
                actor: "bob".into(),
                event: "acknowledged".into(),
                message: "looking".into(),
            },
        ],
        timeline_overflow: 0,
        resolution: None,
    }
}

fn drift_record(id: &str, verdict: Verdict, open: bool) -> DriftRecord {
    DriftRecord {
        id: id.into(),
        ci_id: "ci-1".into(),
        host_id: "host-a1".into(),
        hostname: Some("web-1".into()),
        class: "file".into(),
        key: "/etc/ssh/sshd_config".into(),
        deviation: Deviation {
            kind: DeviationKind::Changed,
            changes: vec![
                AttrChange {
                    name: "sha256".into(),
                    old: Some(AttrValue::Str("aa".into())),
                    new: Some(AttrValue::Str("bb".into())),
                },
                AttrChange {
                    name: "size".into(),
                    old: Some(AttrValue::Int(10)),
                    new: Some(AttrValue::Int(12)),
                },
            ],
        },
        verdict,
        agent_id: "agt-1".into(),
        seq: 9,
        version: 3,
        observed_at: t(0),
        evaluated_at: t(1),
        open,
        resolved_at: None,
        resolution: None,
        incident: open.then(|| "INC0000007".to_owned()),
    }
}

fn waiver_record(id: &str, revoked: bool) -> Waiver {
    Waiver {
        id: id.into(),
        scope: vec!["class=file key=/etc/motd".parse().unwrap()],
        attributes: vec!["sha256".into()],
        justification: "banner rotates daily".into(),
        created_at: t(0),
        created_by: "carol".into(),
        expires_at: t(86_400),
        revoked,
    }
}

fn baseline_summary() -> BaselineSummary {
    BaselineSummary {
        id: "BL0000002".into(),
        name: "web packages".into(),
        scope: vec!["host=web-* class=package".parse().unwrap()],
        state: BaselineState::Pending,
        initial: false,
        captured_at: t(0),
        captured_by: "bob".into(),
        approved_at: None,
        approved_by: None,
        advances: 0,
        items: 812,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

// === requests ===

#[test]
fn change_commands_send_the_records_the_api_takes() {
    let (server, stub) = stub_server();
    let c = to_json(&change_record());
    stub.answer(Method::POST, "/api/v1/changes", 201, c.clone());
    stub.answer(Method::PATCH, "/api/v1/changes/CHG0000001", 200, c.clone());
    stub.answer(
        Method::POST,
        "/api/v1/changes/CHG0000001/transition",
        200,
        c.clone(),
    );

    let before = SystemTime::now();
    let text = run_args(
        &server,
        Format::Table,
        &[
            "change",
            "create",
            "--title",
            "Upgrade openssl",
            "--type",
            "emergency",
            "--scope",
            "host=web-* class=package",
            "--scope",
            "ci=ci-9",
            "--start",
            "-30m",
            "--end",
            "+2h",
            "--expect",
            "class=package,key=dpkg:openssl:*,attribute=version,new=3.0.1*",
            "--expect",
            "key=/etc/app.conf,old=a,b",
            "--outage-expected",
            "--description",
            "CVE-2026-0001",
        ],
    )
    .unwrap();
    let after = SystemTime::now();
    let seen = stub.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/v1/changes")
    );
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    let body = seen.body.unwrap();
    let time = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let (start, end) = (time(&body["window_start"]), time(&body["window_end"]));
    // Relative times are anchored at the run, to the second.
    let secs = |d: Duration| d.as_secs();
    assert!(start + Duration::from_secs(1) >= before - Duration::from_secs(1800));
    assert!(start <= after - Duration::from_secs(1800));
    assert_eq!(secs(end.duration_since(start).unwrap()), 9000);
    let mut rest = body.clone();
    rest["window_start"] = Value::Null;
    rest["window_end"] = Value::Null;
    assert_eq!(
        rest,
        json!({
            "title": "Upgrade openssl",
            "description": "CVE-2026-0001",
            "type": "emergency",
            "scope": ["host=web-* class=package", "ci=ci-9"],
            "window_start": null,
            "window_end": null,
            "expected": [
                {"class": "package", "key": "dpkg:openssl:*", "attribute": "version",
                 "old": null, "new": "3.0.1*"},
                {"class": "*", "key": "/etc/app.conf", "attribute": "*", "old": "a,b",
                 "new": null}
            ],
            "outage_expected": true,
            "external_id": null,
            "state": null
        })
    );
    // The answer is shown as the record.
    assert!(text.starts_with("id               CHG0000001\n"), "{text}");

    run_args(
        &server,
        Format::Json,
        &[
            "change",
            "update",
            "CHG0000001",
            "--title",
            "Upgrade openssl to 3.0.15",
            "--end",
            "2026-11-25T12:00:00+01:00",
            "--outage-expected=false",
        ],
    )
    .unwrap();
    let seen = stub.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PATCH", "/api/v1/changes/CHG0000001")
    );
    assert_eq!(
        seen.body.unwrap(),
        json!({"title": "Upgrade openssl to 3.0.15", "description": null, "scope": null,
               "window_start": null, "window_end": "2026-11-25T11:00:00Z", "expected": null,
               "outage_expected": false})
    );

    run_args(
        &server,
        Format::Json,
        &["change", "update", "CHG0000001", "--clear-expect"],
    )
    .unwrap();
    assert_eq!(stub.last().body.unwrap()["expected"], json!([]));

    for (verb, to) in [
        ("approve", "approved"),
        ("implement", "implementing"),
        ("complete", "implemented"),
        ("close", "closed"),
        ("fail", "failed"),
        ("cancel", "cancelled"),
    ] {
        run_args(&server, Format::Json, &["change", verb, "CHG0000001"]).unwrap();
        let seen = stub.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/api/v1/changes/CHG0000001/transition"),
            "{verb}"
        );
        assert_eq!(seen.body.unwrap(), json!({"to": to}), "{verb}");
    }
    run_args(
        &server,
        Format::Json,
        &["change", "approve", "CHG0000001", "--note", "CAB 2026-47"],
    )
    .unwrap();
    assert_eq!(
        stub.last().body.unwrap(),
        json!({"to": "approved", "note": "CAB 2026-47"})
    );
}

#[test]
fn files_are_sent_as_they_are() {
    let (server, stub) = stub_server();
    let dir = tempfile::tempdir().unwrap();
    let import = json!({"changes": [{
        "title": "Patch db", "type": "standard", "scope": ["host=db-*"],
        "window_start": "2026-11-25T10:00:00Z", "window_end": "2026-11-25T11:00:00Z",
        "external_id": "RFC-1001", "state": "approved"}]});
    let import_file = dir.path().join("import.json");
    std::fs::write(&import_file, import.to_string()).unwrap();
    stub.answer(
        Method::POST,
        "/api/v1/changes/import",
        201,
        json!({"items": [to_json(&change_record())]}),
    );
    let text = run_args(
        &server,
        Format::Table,
        &["change", "import", import_file.to_str().unwrap()],
    )
    .unwrap();
    let seen = stub.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/v1/changes/import")
    );
    assert_eq!(seen.body.unwrap(), import);
    assert!(text.starts_with("ID          TYPE    STATE"), "{text}");

    let policies = to_json(&Policies::default());
    let policy_file = dir.path().join("policies.json");
    std::fs::write(&policy_file, policies.to_string()).unwrap();
    stub.answer(Method::PUT, "/api/v1/policies", 200, policies.clone());
    run_args(
        &server,
        Format::Json,
        &["policies", "set", policy_file.to_str().unwrap()],
    )
    .unwrap();
    let seen = stub.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PUT", "/api/v1/policies")
    );
    assert_eq!(seen.body.unwrap(), policies);

    // A missing or malformed file is a usage error, and nothing is sent.
    std::fs::write(dir.path().join("bad.json"), "{\"changes\": [").unwrap();
    for file in ["bad.json", "missing.json"] {
        let path = dir.path().join(file);
        let r = run_args(
            &server,
            Format::Table,
            &["change", "import", path.to_str().unwrap()],
        );
        assert_eq!(exit_code(&r), 64, "{file}");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(file), "{e}");
    }
    assert!(stub.take().is_empty());
}

#[test]
fn baseline_waiver_and_incident_commands() {
    let (server, stub) = stub_server();
    let summary = to_json(&baseline_summary());
    stub.answer(Method::POST, "/api/v1/baselines", 201, summary.clone());
    stub.answer(
        Method::POST,
        "/api/v1/baselines/BL0000002/approve",
        200,
        summary,
    );
    let text = run_args(
        &server,
        Format::Table,
        &[
            "baseline",
            "capture",
            "--name",
            "web packages",
            "--scope",
            "host=web-* class=package",
        ],
    )
    .unwrap();
    assert_eq!(
        stub.last().body.unwrap(),
        json!({"name": "web packages", "scope": ["host=web-* class=package"]})
    );
    assert!(text.contains("items     812\n"), "{text}");
    run_args(&server, Format::Json, &["baseline", "approve", "BL0000002"]).unwrap();
    let seen = stub.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str(), seen.body),
        ("POST", "/api/v1/baselines/BL0000002/approve", None)
    );

    let w = to_json(&waiver_record("WVR0000001", false));
    stub.answer(Method::POST, "/api/v1/waivers", 201, w.clone());
    stub.answer(Method::POST, "/api/v1/waivers/WVR0000001/revoke", 200, w);
    let before = SystemTime::now();
    run_args(
        &server,
        Format::Json,
        &[
            "waiver",
            "create",
            "--scope",
            "class=file key=/etc/motd",
            "--attribute",
            "sha256",
            "--attribute",
            "size",
            "--justification",
            "banner rotates daily",
            "--expires",
            "7d",
        ],
    )
    .unwrap();
    let body = stub.last().body.unwrap();
    let expires = humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let week = Duration::from_secs(7 * 86_400);
    assert!(expires + Duration::from_secs(1) >= before + week);
    assert!(expires <= SystemTime::now() + week);
    assert_eq!(
        json!({"scope": body["scope"], "attributes": body["attributes"],
               "justification": body["justification"]}),
        json!({"scope": ["class=file key=/etc/motd"], "attributes": ["sha256", "size"],
               "justification": "banner rotates daily"})
    );
    run_args(
        &server,
        Format::Json,
        &["waiver", "revoke", "WVR0000001", "--note", "banner fixed"],
    )
    .unwrap();
    assert_eq!(stub.last().body.unwrap(), json!({"note": "banner fixed"}));
    run_args(&server, Format::Json, &["waiver", "revoke", "WVR0000001"]).unwrap();
    let seen = stub.last();
    assert_eq!((seen.body, seen.content_type), (None, None));

    let inc = to_json(&incident_record());
    stub.answer(
        Method::POST,
        "/api/v1/incidents/INC0000007/actions",
        200,
        inc,
    );
    let cases: [(&[&str], Value); 6] = [
        (
            &["incident", "ack", "INC0000007"],
            json!({"action": "acknowledge", "note": null}),
        ),
        (
            &["incident", "assign", "INC0000007", "bob"],
            json!({"action": "assign", "assignee": "bob"}),
        ),
        (
            &["incident", "resolve", "INC0000007", "--note", "restored"],
            json!({"action": "resolve", "note": "restored"}),
        ),
        (
            &["incident", "reopen", "INC0000007", "--note", "back again"],
            json!({"action": "reopen", "note": "back again"}),
        ),
        (
            &["incident", "close", "INC0000007"],
            json!({"action": "close", "note": "", "change_id": null}),
        ),
        (
            &[
                "incident",
                "close",
                "INC0000007",
                "--note",
                "emergency fix",
                "--change",
                "CHG0000009",
            ],
            json!({"action": "close", "note": "emergency fix", "change_id": "CHG0000009"}),
        ),
    ];
    for (args, body) in cases {
        run_args(&server, Format::Json, args).unwrap();
        let seen = stub.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/api/v1/incidents/INC0000007/actions"),
            "{args:?}"
        );
        assert_eq!(seen.body.unwrap(), body, "{args:?}");
    }
    // Resolving needs a note: a usage error before anything is sent.
    assert!(
        Cli::try_parse_from(["cmdbctl", "incident", "resolve", "INC0000007"])
            .unwrap_err()
            .use_stderr()
    );
}

#[test]
fn list_commands_send_their_filters() {
    let (server, stub) = stub_server();
    for path in [
        "/api/v1/changes",
        "/api/v1/drift",
        "/api/v1/incidents",
        "/api/v1/outages",
        "/api/v1/audit-log",
    ] {
        stub.answer(Method::GET, path, 200, json!({"items": []}));
    }
    stub.answer(
        Method::GET,
        "/api/v1/availability",
        200,
        json!({"from": "2026-11-01T00:00:00Z", "to": "2026-11-25T00:00:00Z", "items": []}),
    );
    type Query = Vec<(String, String)>;
    let q = |pairs: &[(&str, &str)]| -> Query {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let cases: [(&[&str], &str, Query); 7] = [
        (
            &[
                "changes",
                "--from",
                "2026-11-25T00:00:00Z",
                "--to",
                "2026-12-01T00:00:00+01:00",
                "--state",
                "approved",
            ],
            "/api/v1/changes",
            q(&[
                ("from", "2026-11-25T00:00:00Z"),
                ("to", "2026-11-30T23:00:00Z"),
                ("state", "approved"),
            ]),
        ),
        (&["changes"], "/api/v1/changes", q(&[])),
        (
            &[
                "drift",
                "--host",
                "web-1",
                "--ci",
                "ci-1",
                "--verdict",
                "unauthorized",
                "--open",
                "--change",
                "CHG0000001",
                "--limit",
                "50",
                "--after",
                "DRF0000000100",
            ],
            "/api/v1/drift",
            q(&[
                ("host", "web-1"),
                ("ci", "ci-1"),
                ("verdict", "unauthorized"),
                ("open", "true"),
                ("change", "CHG0000001"),
                ("limit", "50"),
                ("after", "DRF0000000100"),
            ]),
        ),
        (
            &[
                "incidents",
                "--state",
                "in_progress",
                "--open=false",
                "--category",
                "unauthorized-change",
                "--host",
                "web-1",
                "--limit",
                "5",
            ],
            "/api/v1/incidents",
            q(&[
                ("state", "in_progress"),
                ("open", "false"),
                ("category", "unauthorized-change"),
                ("host", "web-1"),
                ("limit", "5"),
            ]),
        ),
        (
            &[
                "availability",
                "--from",
                "2026-11-01T00:00:00Z",
                "--to",
                "2026-11-25T00:00:00Z",
                "--ci",
                "ci-h",
            ],
            "/api/v1/availability",
            q(&[
                ("from", "2026-11-01T00:00:00Z"),
                ("to", "2026-11-25T00:00:00Z"),
                ("ci", "ci-h"),
            ]),
        ),
        (
            &["outages", "--from", "2026-11-01T00:00:00Z"],
            "/api/v1/outages",
            q(&[("from", "2026-11-01T00:00:00Z")]),
        ),
        (
            &["audit-log", "--after", "41", "--limit", "2"],
            "/api/v1/audit-log",
            q(&[("after", "41"), ("limit", "2")]),
        ),
    ];
    for (args, path, query) in cases {
        run_args(&server, Format::Table, args).unwrap();
        let seen = stub.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str(), seen.body),
            ("GET", path, None),
            "{args:?}"
        );
        assert_eq!(seen.query, query, "{args:?}");
    }

    // Relative times are sent as absolute RFC 3339 times.
    let before = SystemTime::now();
    run_args(&server, Format::Table, &["outages", "--from", "-7d"]).unwrap();
    let seen = stub.last();
    let from = humantime::parse_rfc3339(&seen.query[0].1).unwrap();
    let week = Duration::from_secs(7 * 86_400);
    assert!(from + Duration::from_secs(1) >= before - week && from <= SystemTime::now() - week);
}

// === views ===

#[test]
fn table_views_of_the_answers() {
    let (server, stub) = stub_server();
    stub.answer(
        Method::GET,
        "/api/v1/changes",
        200,
        json!({"items": [to_json(&change_record())]}),
    );
    let text = run_args(&server, Format::Table, &["changes"]).unwrap();
    assert_eq!(
        text,
        "ID          TYPE    STATE     START                 END                   OUTAGE  TITLE            SCOPE\n\
         CHG0000001  normal  approved  2026-09-21T15:13:20Z  2026-09-21T16:13:20Z  yes     Upgrade openssl  host=web-* class=package; ci=ci-9\n"
    );

    stub.answer(
        Method::GET,
        "/api/v1/changes/CHG0000001",
        200,
        to_json(&change_record()),
    );
    let text = run_args(&server, Format::Table, &["change", "show", "CHG0000001"]).unwrap();
    assert_eq!(
        text,
        "\
id               CHG0000001
title            Upgrade openssl
type             normal
state            approved
window           2026-09-21T15:13:20Z to 2026-09-21T16:13:20Z
scope            host=web-* class=package
                 ci=ci-9
outage expected  yes
created          2026-09-21T14:13:20Z by alice
updated          2026-09-21T14:13:20Z
evidence         0 drift records
description      CVE-2026-0001

EXPECTED CLASS  KEY             ATTRIBUTE  OLD  NEW
package         dpkg:openssl:*  version    *    3.0.1*

AT                    ACTOR  FROM   TO
2026-09-21T14:13:20Z  alice  -      draft
2026-09-21T14:14:20Z  carol  draft  approved
"
    );

    stub.answer(
        Method::GET,
        "/api/v1/incidents/INC0000007",
        200,
        to_json(&incident_record()),
    );
    let text = run_args(&server, Format::Table, &["incident", "show", "INC0000007"]).unwrap();
    assert!(
        text.contains("priority  3 (impact 2, urgency 2)\n"),
        "{text}"
    );
    assert!(text.contains("host      web-1 (host-a1)\n"), "{text}");
    assert!(
        text.contains(
            "ALERT  CLASS  KEY                   SUMMARY                                    FIRING  COUNT  FIRST                 LAST\n\
             drift  file   /etc/ssh/sshd_config  file /etc/ssh/sshd_config changed: sha256  yes     1      2026-09-21T14:13:20Z  2026-09-21T14:13:20Z\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "AT                    ACTOR      EVENT         MESSAGE\n\
             2026-09-21T14:13:20Z  collector  opened        unauthorized change\n\
             2026-09-21T14:15:20Z  bob        acknowledged  looking\n"
        ),
        "{text}"
    );

    stub.answer(
        Method::GET,
        "/api/v1/incidents",
        200,
        json!({"items": [to_json(&incident_record())]}),
    );
    let text = run_args(&server, Format::Table, &["incidents", "--open"]).unwrap();
    assert_eq!(
        text,
        "NUMBER      PRI  STATE         CATEGORY             HOST   TITLE                         STARTED               ASSIGNEE\n\
         INC0000007  3    acknowledged  unauthorized-change  web-1  Unauthorized change on web-1  2026-09-21T14:13:20Z  -\n"
    );

    let drift = vec![
        drift_record(
            "DRF0000000001",
            Verdict::Authorized {
                change_id: "CHG0000001".into(),
            },
            false,
        ),
        drift_record("DRF0000000002", Verdict::Unauthorized, true),
    ];
    stub.answer(
        Method::GET,
        "/api/v1/drift",
        200,
        json!({ "items": to_json(&drift) }),
    );
    let text = run_args(&server, Format::Table, &["drift", "--limit", "2"]).unwrap();
    assert_eq!(
        text,
        "ID             OBSERVED              HOST   CLASS  KEY                   KIND     ATTRIBUTES    VERDICT       BY          STATUS\n\
         DRF0000000001  2026-09-21T14:13:20Z  web-1  file   /etc/ssh/sshd_config  changed  sha256, size  authorized    CHG0000001  -\n\
         DRF0000000002  2026-09-21T14:13:20Z  web-1  file   /etc/ssh/sshd_config  changed  sha256, size  unauthorized  INC0000007  open\n"
    );

    let now = SystemTime::now();
    let mut active = waiver_record("WVR0000002", false);
    active.expires_at = now + Duration::from_secs(3600);
    let waivers = vec![
        waiver_record("WVR0000001", true),
        waiver_record("WVR0000003", false),
        active,
    ];
    stub.answer(
        Method::GET,
        "/api/v1/waivers",
        200,
        json!({ "items": to_json(&waivers) }),
    );
    let text = run_args(&server, Format::Table, &["waivers"]).unwrap();
    let statuses: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(statuses, ["revoked", "expired", "active"], "{text}");

    let figures = AvailabilityFigures {
        ci_id: "ci-h".into(),
        host_id: "host-a1".into(),
        name: "web-1".into(),
        subject: OutageSubject::Host,
        from: t(0),
        to: t(86_400),
        agreed_seconds: 82_800,
        planned_downtime_seconds: 3600,
        unplanned_downtime_seconds: 90,
        availability_percent: 99.891_304,
        outages: 1,
        planned_outages: 1,
        mtbf_seconds: Some(82_710.0),
        mtrs_seconds: Some(90.0),
        outage_list: Vec::new(),
    };
    let report = AvailabilityReport {
        from: t(0),
        to: t(86_400),
        items: vec![figures],
    };
    stub.answer(Method::GET, "/api/v1/availability", 200, to_json(&report));
    let text = run_args(&server, Format::Table, &["availability"]).unwrap();
    assert_eq!(
        text,
        "period 2026-09-21T14:13:20Z to 2026-09-22T14:13:20Z\n\n\
         CI    NAME   SUBJECT  AVAILABILITY  UNPLANNED DOWN  PLANNED DOWN  OUTAGES         MTBF         MTRS\n\
         ci-h  web-1  host     99.891%       1m 30s          1h            1 (+1 planned)  22h 58m 30s  1m 30s\n"
    );

    let outage = Outage {
        id: "OUT0000000001".into(),
        subject: OutageSubject::Monitor,
        ci_id: "ci-m".into(),
        host_id: "host-a1".into(),
        hostname: Some("web-1".into()),
        name: "nginx".into(),
        start: t(0),
        end: Some(t(300)),
        planned: false,
        change_id: None,
        cause: "ActiveState=failed".into(),
        incident: Some("INC0000008".into()),
    };
    stub.answer(
        Method::GET,
        "/api/v1/outages",
        200,
        json!({"items": [to_json(&outage)]}),
    );
    let text = run_args(&server, Format::Table, &["outages"]).unwrap();
    assert_eq!(
        text,
        "ID             SUBJECT  NAME   HOST   START                 END                   DURATION  PLANNED  CAUSE               REF\n\
         OUT0000000001  monitor  nginx  web-1  2026-09-21T14:13:20Z  2026-09-21T14:18:20Z  5m        no       ActiveState=failed  INC0000008\n"
    );

    stub.answer(
        Method::GET,
        "/api/v1/audit-log",
        200,
        json!({"items": [
            {"seq": 41, "at": "2026-11-25T10:00:00Z", "actor": "carol", "role": "change-manager",
             "action": "change.approved", "object": "CHG0000001", "why": "CAB 2026-47",
             "details": {"from": "draft", "to": "approved"}, "prev_hash": "ab", "hash": "cd"},
            {"seq": 42, "at": "2026-11-25T10:00:05Z", "actor": "collector", "role": "system",
             "action": "incident.opened", "object": "INC0000007", "why": null,
             "details": {}, "prev_hash": "cd", "hash": "ef"}
        ]}),
    );
    let text = run_args(&server, Format::Table, &["audit-log", "--limit", "5"]).unwrap();
    assert_eq!(
        text,
        "SEQ  AT                    ACTOR      ROLE            ACTION           OBJECT      WHY\n\
         41   2026-11-25T10:00:00Z  carol      change-manager  change.approved  CHG0000001  CAB 2026-47\n\
         42   2026-11-25T10:00:05Z  collector  system          incident.opened  INC0000007  -\n"
    );
    // JSON mode prints the API's answer as it is.
    let text = run_args(&server, Format::Json, &["audit-log"]).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["items"][0]["hash"], "cd");
}

#[test]
fn full_pages_hint_at_the_next_one() {
    let shown = render_judgment::render(
        View::Drift { limit: 1 },
        json!({"items": [to_json(&drift_record("DRF0000000005", Verdict::Unauthorized, true))]}),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        shown.hint.as_deref(),
        Some("more entries may follow: add --after DRF0000000005 for the next page")
    );
    let shown = render_judgment::render(
        View::AuditLog { limit: 100 },
        json!({"items": []}),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(shown.hint, None);
}

// === errors ===

#[test]
fn api_refusals_are_exit_1_with_the_api_message() {
    let (server, stub) = stub_server();
    stub.answer(
        Method::POST,
        "/api/v1/changes/CHG0000001/transition",
        409,
        json!({"error": {"code": "conflict",
                         "message": "change CHG0000001: cannot go from draft to closed"}}),
    );
    let r = run_args(&server, Format::Table, &["change", "close", "CHG0000001"]);
    assert_eq!(exit_code(&r), 1);
    assert_eq!(
        r.unwrap_err().to_string(),
        "change CHG0000001: cannot go from draft to closed (HTTP 409, conflict)"
    );
    stub.answer(
        Method::PUT,
        "/api/v1/policies",
        403,
        json!({"error": {"code": "forbidden",
                         "message": "role operator may not change policies (allowed: admin)"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, "{}").unwrap();
    let r = run_args(
        &server,
        Format::Json,
        &["policies", "set", file.to_str().unwrap()],
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "role operator may not change policies (allowed: admin) (HTTP 403, forbidden)"
    );

    // An answer that is not the record expected is an error, not a panic.
    stub.answer(
        Method::GET,
        "/api/v1/incidents/INC0000001",
        200,
        json!({"number": 7}),
    );
    let r = run_args(&server, Format::Table, &["incident", "show", "INC0000001"]);
    assert_eq!(exit_code(&r), 1);
    assert!(
        r.unwrap_err().to_string().starts_with("unexpected answer"),
        "decode error"
    );
}

#[test]
fn bad_input_is_a_usage_error_and_sends_nothing() {
    let (server, stub) = stub_server();
    for args in [
        &["change", "update", "CHG0000001"][..],
        &["change", "show", ".."],
        &["incident", "ack", "."],
    ] {
        let r = run_args(&server, Format::Table, args);
        assert_eq!(exit_code(&r), 64, "{args:?}");
    }
    assert!(stub.take().is_empty());
    for args in [
        &["changes", "--state", "done"][..],
        &["changes", "--from", "yesterday"],
        &[
            "change", "create", "--title", "x", "--type", "normal", "--scope", "host=a",
        ],
        &[
            "change", "create", "--title", "x", "--type", "major", "--scope", "host=a", "--start",
            "now", "--end", "+1h",
        ],
        &[
            "change", "create", "--title", "x", "--type", "normal", "--start", "now", "--end",
            "+1h",
        ],
        &[
            "change",
            "create",
            "--title",
            "x",
            "--type",
            "normal",
            "--scope",
            "host=a",
            "--start",
            "now",
            "--end",
            "+1h",
            "--expect",
            "atribute=version",
        ],
        &[
            "change",
            "update",
            "C",
            "--expect",
            "key=a",
            "--clear-expect",
        ],
        &["drift", "--verdict", "maybe"],
        &["drift", "--limit", "0"],
        &["incidents", "--category", "hardware"],
        &[
            "waiver",
            "create",
            "--scope",
            "host=a",
            "--justification",
            "x",
            "--expires",
            "soon",
        ],
        &["audit-log", "--after", "-1"],
        &["audit-log", "verify", "--limit", "5"],
        &["policies"],
        &["incident", "assign", "INC1"],
    ] {
        let e = Cli::try_parse_from(std::iter::once("cmdbctl").chain(args.iter().copied()))
            .unwrap_err();
        assert!(e.use_stderr(), "{args:?} should be a usage error");
    }
}

#[test]
fn expected_change_patterns() {
    use crate::cli::expected_change;
    let e =
        expected_change("class=package,key=dpkg:openssl:*,attribute=version,old=3.0.*").unwrap();
    assert_eq!(
        (
            e.class.as_str(),
            e.key.as_str(),
            e.attribute.as_str(),
            e.old.as_deref(),
            e.new
        ),
        ("package", "dpkg:openssl:*", "version", Some("3.0.*"), None)
    );
    let e = expected_change("attribute=options,new=rw,relatime").unwrap();
    assert_eq!(
        (e.class.as_str(), e.new.as_deref()),
        ("*", Some("rw,relatime"))
    );
    for bad in [
        "",
        "class",
        "class=",
        "class=a,class=b",
        "colour=red",
        "key=a,Size=1",
    ] {
        assert!(expected_change(bad).is_err(), "{bad:?}");
    }
}

// === audit-log verify ===

#[test]
fn audit_log_verify_fails_with_exit_1_when_the_chain_breaks() {
    let (server, stub) = stub_server();
    let path = "/api/v1/audit-log/verify";
    stub.answer(
        Method::GET,
        path,
        200,
        json!({"entries": 3, "head_seq": 3, "ok": true, "problems": []}),
    );
    let r = run_args(&server, Format::Table, &["audit-log", "verify"]);
    assert_eq!(r.unwrap(), "ok: 3 entries, head seq 3\n");

    let broken = json!({"entries": 3, "head_seq": 3, "ok": false, "problems": [
        {"seq": 2, "line": 2, "kind": "hash_mismatch", "message": "entry 2 was altered"},
        {"seq": null, "line": 4, "kind": "malformed", "message": "line 4 is not JSON"}
    ]});
    stub.answer(Method::GET, path, 200, broken.clone());
    let mut out = Vec::new();
    let r = run(
        &server.settings(Format::Table, command(&["audit-log", "verify"])),
        &mut out,
    );
    assert_eq!(exit_code(&r), 1);
    assert_eq!(
        r.unwrap_err().to_string(),
        "the audit log does not verify: 2 problems (ok: false)"
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "FAILED: 3 entries, head seq 3, 2 problems\n\n\
         SEQ  LINE  KIND           MESSAGE\n\
         2    2     hash_mismatch  entry 2 was altered\n\
         -    4     malformed      line 4 is not JSON\n"
    );
    // Scripts reading JSON get the report and the same exit code.
    let mut out = Vec::new();
    let r = run(
        &server.settings(Format::Json, command(&["audit-log", "verify"])),
        &mut out,
    );
    assert_eq!(exit_code(&r), 1);
    let printed: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(printed, broken);

    // A reader that went away does not turn a broken chain into a pass.
    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    for format in [Format::Table, Format::Json] {
        let r = run(
            &server.settings(format, command(&["audit-log", "verify"])),
            &mut Closed,
        );
        assert_eq!(exit_code(&r), 1, "{format:?}");
    }

    // "ok" with problems listed, or no verdict at all, is not a pass.
    stub.answer(
        Method::GET,
        path,
        200,
        json!({"entries": 3, "head_seq": 3, "ok": true,
               "problems": [{"seq": 1, "line": 1, "kind": "x", "message": "y"}]}),
    );
    let r = run_args(&server, Format::Json, &["audit-log", "verify"]);
    assert_eq!(exit_code(&r), 1);
    stub.answer(Method::GET, path, 200, json!({"entries": 3}));
    let r = run_args(&server, Format::Json, &["audit-log", "verify"]);
    assert_eq!(exit_code(&r), 1);
    // A refusal of the role is the API's message.
    stub.answer(
        Method::GET,
        path,
        403,
        json!({"error": {"code": "forbidden",
                         "message": "role viewer may not verify the audit log (allowed: auditor, admin)"}}),
    );
    let r = run_args(&server, Format::Table, &["audit-log", "verify"]);
    assert_eq!(exit_code(&r), 1);
    assert!(r.unwrap_err().to_string().contains("(HTTP 403, forbidden)"));
}

// === against the real engine ===

/// Tokens named after their role.
struct RoleTokens;

impl Authenticator for RoleTokens {
    fn authenticate(&self, bearer: &str) -> Option<Principal> {
        ["viewer", "operator", "change-manager", "auditor", "admin"]
            .contains(&bearer)
            .then(|| Principal {
                name: format!("{bearer}-user"),
                role: bearer.to_owned(),
            })
    }
}

fn engine_server() -> Server {
    let store: Arc<dyn cmdb_collector::store::Store> = Arc::new(store());
    let judgment =
        Judgment::open(Arc::clone(&store), JudgmentSettings::default(), None, None).unwrap();
    Server::serve(router(ApiState {
        store,
        auth: Arc::new(RoleTokens),
        telemetry: Arc::new(Telemetry::new()),
        judgment: Some(Arc::new(judgment)),
        audit: None,
        licenses: None,
        config_audit: None,

        cmdb_health: None,
        fleet: None,
    }))
}

fn as_role(server: &Server, role: &str, format: Format, args: &[&str]) -> Result<String, RunError> {
    let mut s: Settings = server.settings(format, command(args));
    s.token = role.to_owned();
    output(&s)
}

#[test]
fn against_the_judgment_engine() {
    let server = engine_server();
    let json_of =
        |r: Result<String, RunError>| -> Value { serde_json::from_str(&r.unwrap()).unwrap() };

    // A change: created by an operator, approved only by a change manager.
    let c = json_of(as_role(
        &server,
        "operator",
        Format::Json,
        &[
            "change",
            "create",
            "--title",
            "Rotate sshd config",
            "--type",
            "normal",
            "--scope",
            "host=web-1 class=file",
            "--start",
            "+1h",
            "--end",
            "+3h",
            "--expect",
            "class=file,attribute=sha256",
        ],
    ));
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["state"], "draft");
    assert_eq!(c["created_by"], "operator-user");
    let r = as_role(
        &server,
        "operator",
        Format::Table,
        &["change", "approve", &id],
    );
    assert_eq!(exit_code(&r), 1);
    assert_eq!(
        r.unwrap_err().to_string(),
        "role operator may not approve change records (allowed: change-manager, admin) \
         (HTTP 403, forbidden)"
    );
    let text = as_role(
        &server,
        "change-manager",
        Format::Table,
        &["change", "approve", &id, "--note", "CAB"],
    )
    .unwrap();
    assert!(text.contains("state            approved\n"), "{text}");
    let r = as_role(
        &server,
        "operator",
        Format::Table,
        &["change", "complete", &id],
    );
    assert!(
        r.unwrap_err().to_string().ends_with("(HTTP 409, conflict)"),
        "approved → implemented is not a move"
    );
    let text = as_role(
        &server,
        "operator",
        Format::Table,
        &[
            "change",
            "update",
            &id,
            "--title",
            "Rotate sshd config (v2)",
        ],
    )
    .unwrap();
    assert!(text.contains("Rotate sshd config (v2)"), "{text}");
    let text = as_role(
        &server,
        "viewer",
        Format::Table,
        &["changes", "--from", "now", "--state", "approved"],
    )
    .unwrap();
    assert!(text.lines().nth(1).unwrap().starts_with(&id), "{text}");
    let text = as_role(
        &server,
        "viewer",
        Format::Table,
        &["changes", "--to", "+30m"],
    )
    .unwrap();
    assert_eq!(text.lines().count(), 1, "the window starts later: {text}");

    // A baseline of the package CIs of web-1: two present, one absent.
    let b = json_of(as_role(
        &server,
        "operator",
        Format::Json,
        &[
            "baseline",
            "capture",
            "--name",
            "web-1 packages",
            "--scope",
            "host=web-1 class=package",
        ],
    ));
    assert_eq!(b["items"], 2);
    let bid = b["id"].as_str().unwrap().to_owned();
    let text = as_role(
        &server,
        "admin",
        Format::Table,
        &["baseline", "approve", &bid],
    )
    .unwrap();
    assert!(text.contains("approved  "), "{text}");
    let text = as_role(
        &server,
        "viewer",
        Format::Table,
        &["baseline", "show", &bid, "--items"],
    )
    .unwrap();
    assert!(text.contains("dpkg:bash:amd64"), "{text}");
    assert!(text.contains("dpkg:curl:amd64"), "{text}");
    let text = as_role(
        &server,
        "viewer",
        Format::Table,
        &["baseline", "diff", &bid],
    )
    .unwrap();
    assert!(
        text.contains("differences  0 changed, 0 added, 0 removed, 2 unchanged\n"),
        "{text}"
    );
    let text = as_role(&server, "viewer", Format::Table, &["baselines"]).unwrap();
    assert!(text.contains("web-1 packages  approved  2"), "{text}");

    // A waiver, granted and revoked by a change manager.
    let w = json_of(as_role(
        &server,
        "change-manager",
        Format::Json,
        &[
            "waiver",
            "create",
            "--scope",
            "class=file key=/etc/motd",
            "--justification",
            "banner rotates",
            "--expires",
            "2d",
        ],
    ));
    let wid = w["id"].as_str().unwrap().to_owned();
    let text = as_role(
        &server,
        "change-manager",
        Format::Table,
        &["waiver", "revoke", &wid, "--note", "fixed"],
    )
    .unwrap();
    assert!(text.contains("status         revoked\n"), "{text}");
    let r = as_role(
        &server,
        "change-manager",
        Format::Table,
        &["waiver", "revoke", &wid],
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("waiver {wid} is already revoked (HTTP 409, conflict)"),
        "a revoke without a note reaches the engine too"
    );
    let text = as_role(&server, "viewer", Format::Table, &["waivers"]).unwrap();
    assert!(text.contains(&format!("{wid}  revoked")), "{text}");

    // Policies: what `show --format json` prints, `set` takes back (admins only).
    let shown = as_role(&server, "viewer", Format::Json, &["policies", "show"]).unwrap();
    let mut p: Policies = serde_json::from_str(&shown).unwrap();
    p.deny.push(cmdb_collector::policy::DenyRule {
        selector: "class=package key=dpkg:telnet*".parse().unwrap(),
        reason: "cleartext logins".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.json");
    std::fs::write(&file, serde_json::to_string_pretty(&p).unwrap()).unwrap();
    let r = as_role(
        &server,
        "change-manager",
        Format::Table,
        &["policies", "set", file.to_str().unwrap()],
    );
    assert!(
        r.unwrap_err()
            .to_string()
            .ends_with("(HTTP 403, forbidden)")
    );
    let text = as_role(
        &server,
        "admin",
        Format::Table,
        &["policies", "set", file.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        text.contains("class=package key=dpkg:telnet*  cleartext logins\n"),
        "{text}"
    );

    // Nothing drifted and nothing broke.
    for args in [&["drift"][..], &["incidents"], &["outages"]] {
        let text = as_role(&server, "viewer", Format::Table, args).unwrap();
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
    }
    let text = as_role(&server, "viewer", Format::Table, &["availability"]).unwrap();
    assert!(text.starts_with("period "), "{text}");
    let r = as_role(
        &server,
        "viewer",
        Format::Table,
        &["incident", "show", "INC0000001"],
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "no incident INC0000001 (HTTP 404, not_found)"
    );
    // This collector keeps no audit log.
    let r = as_role(&server, "auditor", Format::Table, &["audit-log", "verify"]);
    assert_eq!(
        r.unwrap_err().to_string(),
        "the audit log is not configured (HTTP 503, unavailable)"
    );
}
