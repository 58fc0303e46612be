//! Router tests against an in-memory fake store: each request goes through the whole
//! middleware stack with `tower::ServiceExt::oneshot`, no socket.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use cmdb_proto::model::{AttrValue, Attrs, CollectorReport, CollectorState, HostIdentity};
use cmdb_proto::v1;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::store::record_map::RecordMap;
use crate::store::{
    AgentRecord, ApplyOutcome, ChangeKind, CiFilter, CiRecord, CiState, CiVersion, CloneRecord,
    FeedEntry, FeedPos, HostId, MetricRecord, MetricSummary, RecordOp, RelationRecord,
};

const TOKEN: &str = "s3cret-token";

// === fake store ===

#[derive(Clone, Copy, PartialEq)]
enum Failure {
    None,
    Backend,
    Corrupt,
}

struct FakeStore {
    agents: Vec<AgentRecord>,
    cis: Vec<CiRecord>,
    versions: HashMap<String, Vec<CiVersion>>,
    relations: Vec<RelationRecord>,
    metrics: Vec<MetricRecord>,
    clones: Vec<CloneRecord>,
    fail: Failure,
    /// Every read takes this long (a slow disk).
    delay: Duration,
    /// collection → id → value
    records: RecordMap,
}

impl FakeStore {
    fn check(&self) -> Result<(), StoreError> {
        std::thread::sleep(self.delay);
        match self.fail {
            Failure::None => Ok(()),
            Failure::Backend => Err(StoreError::Backend("disk on fire at /secret/path".into())),
            Failure::Corrupt => Err(StoreError::Corrupt {
                key: "ci/x".into(),
                reason: "bad bytes".into(),
            }),
        }
    }
}

impl Store for FakeStore {
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.check()?;
        Ok(self.agents.iter().find(|a| a.agent_id == id).cloned())
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.check()?;
        Ok(self.agents.clone())
    }
    fn put_agent(&self, _: &AgentRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend("read-only fake".into()))
    }
    fn identify(
        &self,
        _: &str,
        _: &str,
        _: &HostIdentity,
        _: SystemTime,
    ) -> Result<HostId, StoreError> {
        Err(StoreError::Backend("read-only fake".into()))
    }
    fn apply(&self, _: &str, _: &[v1::Event]) -> Result<ApplyOutcome, StoreError> {
        Err(StoreError::Backend("read-only fake".into()))
    }
    fn ci(&self, id: &str) -> Result<Option<CiRecord>, StoreError> {
        self.check()?;
        Ok(self.cis.iter().find(|c| c.id == id).cloned())
    }
    fn ci_versions(&self, id: &str) -> Result<Vec<CiVersion>, StoreError> {
        self.check()?;
        Ok(self.versions.get(id).cloned().unwrap_or_default())
    }
    fn cis(&self, f: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        self.check()?;
        let hostname_of = |host_id: &str| {
            self.agents
                .iter()
                .find(|a| a.host_id.as_deref() == Some(host_id))
                .and_then(|a| a.hostname.clone())
        };
        let mut out: Vec<CiRecord> = self
            .cis
            .iter()
            .filter(|c| f.include_absent || c.state == CiState::Present)
            .filter(|c| f.class.as_ref().is_none_or(|k| *k == c.class))
            .filter(|c| {
                f.host
                    .as_ref()
                    .is_none_or(|h| *h == c.host_id || hostname_of(&c.host_id).as_ref() == Some(h))
            })
            .filter(|c| {
                f.q.as_ref().is_none_or(|q| {
                    let q = q.to_lowercase();
                    c.key.to_lowercase().contains(&q)
                        || c.attrs
                            .values()
                            .any(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains(&q)))
                })
            })
            .filter(|c| f.after.as_ref().is_none_or(|a| c.id > *a))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(f.limit);
        Ok(out)
    }
    fn relations_of(&self, id: &str) -> Result<Vec<RelationRecord>, StoreError> {
        self.check()?;
        Ok(self
            .relations
            .iter()
            .filter(|r| r.from == id || r.to == id)
            .cloned()
            .collect())
    }
    fn metrics(
        &self,
        host_id: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        self.check()?;
        Ok(self
            .metrics
            .iter()
            .filter(|m| m.host_id == host_id && m.window_start >= from && m.window_start < to)
            .cloned()
            .collect())
    }
    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError> {
        self.check()?;
        Ok(self.clones.clone())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.check()?;
        Ok(123_456)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn feed(&self, _: Option<&FeedPos>, _: usize) -> Result<Vec<FeedEntry>, StoreError> {
        self.check()?;
        Ok(Vec::new())
    }
    fn record(&self, collection: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.check()?;
        self.records.get(collection, id)
    }
    fn records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.check()?;
        self.records.list(collection, after, limit)
    }
    fn write_records(&self, ops: &[RecordOp]) -> Result<(), StoreError> {
        self.check()?;
        self.records.write(ops)
    }
}

struct FixedTokens;

impl Authenticator for FixedTokens {
    fn authenticate(&self, bearer: &str) -> Option<Principal> {
        (bearer == TOKEN).then(|| Principal {
            name: "admin".into(),
            role: "admin".into(),
        })
    }
}

// === fixtures ===

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
}

fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn agent(n: u32, host: &str, hostname: &str) -> AgentRecord {
    AgentRecord {
        agent_id: format!("agt-{n:04}"),
        host_id: Some(host.into()),
        instance_id: format!("inst-{n}"),
        version: "0.1.0".into(),
        hostname: Some(hostname.into()),
        identity: HostIdentity {
            hostname: Some(hostname.into()),
            machine_id: Some(format!("mid-{n}")),
            ..HostIdentity::default()
        },
        enrolled_at: t(0),
        last_seen: Some(t(100)),
        last_seq: 42,
        connected: true,
        outbox_events: 0,
        outbox_bytes: 0,
        collectors: vec![CollectorReport {
            name: "dpkg".into(),
            status: CollectorState::Ok,
            duration_ms: 4,
            items: 2,
            message: None,
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

fn ci(n: u32, host: &str, class: &str, key: &str, state: CiState) -> CiRecord {
    CiRecord {
        id: format!("ci-{n:016x}"),
        host_id: host.into(),
        class: class.into(),
        key: key.into(),
        state,
        attrs: attrs(&[("name", AttrValue::Str(key.to_uppercase()))]),
        version: 1,
        first_seen: t(10),
        last_seen: t(20),
        last_changed: t(10),
        source_agent: "agt-0001".into(),
        source_seq: 7,
    }
}

fn fixture(fail: Failure) -> FakeStore {
    let h1 = "host-00000000000000a1";
    let h2 = "host-00000000000000b2";
    let mut cis = vec![
        ci(1, h1, "package", "dpkg:bash:amd64", CiState::Present),
        ci(2, h1, "package", "dpkg:curl:amd64", CiState::Present),
        ci(3, h1, "service", "ssh.service", CiState::Present),
        ci(4, h1, "package", "dpkg:telnet:amd64", CiState::Absent),
        ci(5, h2, "package", "dpkg:bash:amd64", CiState::Present),
        ci(6, h2, "os", "os", CiState::Present),
        ci(7, h2, "file", "/etc/ssh/sshd_config", CiState::Present),
    ];
    cis[0].version = 3;
    cis[0].attrs = attrs(&[
        ("name", AttrValue::Str("bash".into())),
        ("version", AttrValue::Str("5.2.15-3".into())),
        ("size", AttrValue::Int(7000)),
    ]);
    let bash = cis[0].id.clone();
    let v = |n: u64, change, old: Attrs, new: Attrs, seq| CiVersion {
        ci_id: bash.clone(),
        version: n,
        change,
        state: CiState::Present,
        attrs: new,
        old_attrs: old,
        observed_at: t(n * 100),
        agent_id: "agt-0001".into(),
        seq,
        change_id: None,
    };
    let a1 = attrs(&[
        ("name", AttrValue::Str("bash".into())),
        ("version", AttrValue::Str("5.2.15-2".into())),
    ]);
    let a2 = attrs(&[
        ("name", AttrValue::Str("bash".into())),
        ("version", AttrValue::Str("5.2.15-3".into())),
    ]);
    let versions = HashMap::from([(
        bash.clone(),
        vec![
            v(1, ChangeKind::Added, Attrs::new(), a1.clone(), 10),
            v(2, ChangeKind::Changed, a1, a2.clone(), 20),
            v(3, ChangeKind::Changed, a2, cis[0].attrs.clone(), 30),
        ],
    )]);
    let relations = vec![
        RelationRecord {
            from: cis[2].id.clone(),
            to: bash.clone(),
            kind: "runs".into(),
            host_id: h1.into(),
            present: true,
            from_ref: String::new(),
            to_ref: String::new(),
        },
        RelationRecord {
            from: bash.clone(),
            to: "ci-ffffffffffffffff".into(),
            kind: "depends_on".into(),
            host_id: h1.into(),
            present: true,
            from_ref: String::new(),
            to_ref: String::new(),
        },
    ];
    let metrics = (0..3)
        .map(|i| MetricRecord {
            host_id: h1.into(),
            window_start: t(1000 + i * 60),
            window_seconds: 60,
            summaries: vec![MetricSummary {
                name: "cpu_percent".into(),
                labels: BTreeMap::new(),
                min: 1.0,
                avg: 2.0,
                max: 3.0,
                p95: 2.5,
                samples: 4,
            }],
        })
        .collect();
    FakeStore {
        agents: vec![agent(2, h2, "db-1"), agent(1, h1, "web-1")],
        cis,
        versions,
        relations,
        metrics,
        clones: vec![CloneRecord {
            host_id: h1.into(),
            agents: vec!["agt-0001".into(), "agt-0003".into()],
            identity_key: "product_uuid=4c4c".into(),
            detected_at: t(500),
            clone_host_id: String::new(),
        }],
        fail,
        delay: Duration::ZERO,
        records: RecordMap::default(),
    }
}

fn app_with(store: FakeStore) -> (Router, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::new());
    let state = ApiState {
        store: Arc::new(store),
        auth: Arc::new(FixedTokens),
        telemetry: Arc::clone(&telemetry),
        judgment: None,
        audit: None,
        licenses: None,
        config_audit: None,

        cmdb_health: None,
        fleet: None,
    };
    (router(state), telemetry)
}

fn app() -> Router {
    app_with(fixture(Failure::None)).0
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
    fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    let req = Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    send(app, req).await
}

async fn get_anon(app: &Router, uri: &str) -> Reply {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

// === auth ===

#[tokio::test]
async fn api_needs_a_valid_bearer_token() {
    let app = app();
    let none = get_anon(&app, "/api/v1/agents").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.error_code(), "unauthorized");
    assert!(none.headers.contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(
        none.headers[header::CONTENT_TYPE],
        "application/json",
        "errors are JSON"
    );

    for value in [
        "Bearer wrong".to_owned(),
        format!("Basic {TOKEN}"),
        "Bearer ".to_owned(),
        format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 1)),
        TOKEN.to_owned(),
    ] {
        let req = Request::get("/api/v1/agents")
            .header(header::AUTHORIZATION, value.as_str())
            .body(Body::empty())
            .unwrap();
        let r = send(&app, req).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{value}");
        assert_eq!(r.error_code(), "unauthorized");
    }

    // Two Authorization headers are ambiguous, even if one of them is good.
    let req = Request::get("/api/v1/agents")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::AUTHORIZATION, "Bearer wrong")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::UNAUTHORIZED);

    // The scheme is case-insensitive.
    let req = Request::get("/api/v1/agents")
        .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::OK);

    // Auth comes before validation: a bad query without a token is still a 401.
    let r = get_anon(&app, "/api/v1/cis?limit=0").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// === open routes ===

#[tokio::test]
async fn healthz_reflects_the_store() {
    let r = get_anon(&app(), "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));

    let (broken, _) = app_with(fixture(Failure::Backend));
    let r = get_anon(&broken, "/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json(), json!({"status": "unavailable"}));
}

#[tokio::test]
async fn metrics_expose_the_collector_metrics() {
    let (app, telemetry) = app_with(fixture(Failure::None));
    telemetry.agent_connected();
    telemetry.events("heartbeat", 3);
    let r = get_anon(&app, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], PROMETHEUS_TEXT);
    let text = r.text();
    for needle in [
        "cmdb_agents_connected 1",
        "cmdb_events_total{kind=\"heartbeat\"} 3",
        "cmdb_ci_versions_total 0",
        "cmdb_ack_latency_seconds_count 0",
        "cmdb_store_size_bytes 123456",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let req = Request::get("/metrics")
        .header(
            header::ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.headers[header::CONTENT_TYPE], OPENMETRICS_TEXT);
    assert!(r.text().ends_with("# EOF\n"));
}

#[tokio::test]
async fn metrics_survive_a_broken_store() {
    let (app, telemetry) = app_with(fixture(Failure::Backend));
    let _ = telemetry.encode(77);
    let r = get_anon(&app, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("cmdb_store_size_bytes 77"));
}

// === agents ===

#[tokio::test]
async fn agents_list_and_detail() {
    let app = app();
    let r = get(&app, "/api/v1/agents").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["agent_id"], "agt-0001", "sorted by id");
    assert_eq!(items[0]["hostname"], "web-1");
    assert_eq!(items[0]["host_id"], "host-00000000000000a1");
    assert_eq!(items[0]["last_seen"], "2026-09-21T14:15:00Z");
    assert_eq!(items[0]["collectors"][0]["status"], "ok");

    let r = get(&app, "/api/v1/agents/agt-0002").await;
    assert_eq!(r.status, StatusCode::OK);
    let back: AgentRecord = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(back, agent(2, "host-00000000000000b2", "db-1"));

    let r = get(&app, "/api/v1/agents/agt-9999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json(),
        json!({"error": {"code": "not_found", "message": "no agent agt-9999"}})
    );
}

// === cis ===

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn cis_filters() {
    let app = app();
    let all = get(&app, "/api/v1/cis").await;
    assert_eq!(all.status, StatusCode::OK);
    let v = all.json();
    assert_eq!(ids(&v).len(), 6, "present only by default");
    assert_eq!(v["next_after"], Value::Null);
    let first = &v["items"][0];
    assert_eq!(first["class"], "package");
    assert_eq!(first["key"], "dpkg:bash:amd64");
    assert_eq!(first["state"], "present");
    assert_eq!(first["attrs"]["size"], 7000);
    assert_eq!(first["version"], 3);

    let v = get(&app, "/api/v1/cis?include_absent=true").await.json();
    assert_eq!(ids(&v).len(), 7);

    let v = get(&app, "/api/v1/cis?class=package&host=web-1")
        .await
        .json();
    assert_eq!(ids(&v), ["ci-0000000000000001", "ci-0000000000000002"]);

    let v = get(&app, "/api/v1/cis?class=package&host=host-00000000000000b2")
        .await
        .json();
    assert_eq!(ids(&v), ["ci-0000000000000005"]);

    let v = get(&app, "/api/v1/cis?q=SSH").await.json();
    assert_eq!(ids(&v), ["ci-0000000000000003", "ci-0000000000000007"]);

    // Blank template slots mean "not given".
    let v = get(
        &app,
        "/api/v1/cis?class=&host=&q=&include_absent=&limit=&after=",
    )
    .await
    .json();
    assert_eq!(ids(&v).len(), 6);

    // Unknown class names are fine: they match nothing.
    let r = get(&app, "/api/v1/cis?class=spaceship").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"items": [], "next_after": null}));
}

#[tokio::test]
async fn cis_paginate_by_keyset() {
    let app = app();
    let mut seen = Vec::new();
    let mut uri = "/api/v1/cis?include_absent=1&limit=2".to_owned();
    for _ in 0..10 {
        let v = get(&app, &uri).await.json();
        let page = ids(&v);
        assert!(page.len() <= 2);
        seen.extend(page);
        match v["next_after"].as_str() {
            Some(after) => uri = format!("/api/v1/cis?include_absent=1&limit=2&after={after}"),
            None => break,
        }
    }
    let expected: Vec<String> = (1..=7).map(|n| format!("ci-{n:016x}")).collect();
    assert_eq!(seen, expected, "every CI exactly once, in id order");

    // A page that ends exactly at the last CI says so.
    let v = get(&app, "/api/v1/cis?include_absent=true&limit=7")
        .await
        .json();
    assert_eq!(ids(&v).len(), 7);
    assert_eq!(v["next_after"], Value::Null);
    let v = get(&app, "/api/v1/cis?include_absent=true&limit=6")
        .await
        .json();
    assert_eq!(v["next_after"], "ci-0000000000000006");
}

#[tokio::test]
async fn cis_reject_bad_queries() {
    let app = app();
    for uri in [
        "/api/v1/cis?limit=0",
        "/api/v1/cis?limit=1001",
        "/api/v1/cis?limit=-1",
        "/api/v1/cis?limit=many",
        "/api/v1/cis?include_absent=perhaps",
        "/api/v1/cis?clas=package",
        "/api/v1/cis?limit=1&limit=2",
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(r.error_code(), "bad_request", "{uri}");
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = get(&app, "/api/v1/cis?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn ci_detail_carries_the_history() {
    let app = app();
    let r = get(&app, "/api/v1/cis/ci-0000000000000001").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["id"], "ci-0000000000000001");
    assert_eq!(v["host_id"], "host-00000000000000a1");
    assert_eq!(v["attrs"]["version"], "5.2.15-3");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["change"], "added");
    assert_eq!(versions[0]["old_attrs"], json!({}));
    assert_eq!(versions[1]["change"], "changed");
    assert_eq!(versions[1]["old_attrs"]["version"], "5.2.15-2");
    assert_eq!(versions[1]["attrs"]["version"], "5.2.15-3");
    assert_eq!(versions[2]["seq"], 30);

    // What cmdbctl reads back is what the store holds.
    let back: CiDetail = serde_json::from_slice(&r.body).unwrap();
    let store = fixture(Failure::None);
    assert_eq!(back.ci, store.cis[0]);
    assert_eq!(back.versions, store.versions["ci-0000000000000001"]);

    let r = get(&app, "/api/v1/cis/ci-00000000000000ff").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");

    let long = format!("/api/v1/cis/{}", "a".repeat(MAX_ID_BYTES + 1));
    assert_eq!(get(&app, &long).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn relations_resolve_the_other_end() {
    let app = app();
    let r = get(&app, "/api/v1/cis/ci-0000000000000001/relations").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(
        v,
        json!({"items": [
            {"from": "ci-0000000000000003", "to": "ci-0000000000000001", "kind": "runs",
             "host_id": "host-00000000000000a1", "present": true, "direction": "incoming",
             "from_ref": "", "to_ref": "",
             "other": {"id": "ci-0000000000000003", "class": "service", "key": "ssh.service",
                       "state": "present"}, "derived": false},
            {"from": "ci-0000000000000001", "to": "ci-ffffffffffffffff", "kind": "depends_on",
             "host_id": "host-00000000000000a1", "present": true, "direction": "outgoing",
             "from_ref": "", "to_ref": "",
             "other": null, "derived": false},
        ]})
    );
    let back: List<json::RelationView> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(back.items.len(), 2);

    let r = get(&app, "/api/v1/cis/ci-0000000000000002/relations").await;
    assert_eq!(r.json(), json!({"items": []}));

    let r = get(&app, "/api/v1/cis/ci-00000000000000ff/relations").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn clones_list() {
    let r = get(&app(), "/api/v1/clones").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"items": [{"host_id": "host-00000000000000a1",
                          "agents": ["agt-0001", "agt-0003"],
                          "identity_key": "product_uuid=4c4c",
                          "clone_host_id": "",
                          "detected_at": "2026-09-21T14:21:40Z"}]})
    );
}

#[tokio::test]
async fn host_metrics_by_range() {
    let app = app();
    let uri = "/api/v1/hosts/host-00000000000000a1/metrics?from=2026-09-21T14:30:00Z&to=2026-09-21T14:32:00Z";
    let r = get(&app, uri).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["host_id"], "host-00000000000000a1");
    assert_eq!(v["from"], "2026-09-21T14:30:00Z");
    assert_eq!(v["to"], "2026-09-21T14:32:00Z");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["window_start"], "2026-09-21T14:30:00Z");
    assert_eq!(items[0]["summaries"][0]["name"], "cpu_percent");
    assert_eq!(items[0]["summaries"][0]["p95"], 2.5);

    // Default: the last hour, which holds nothing in the fixture.
    let r = get(&app, "/api/v1/hosts/host-00000000000000a1/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["items"], json!([]));
    let from = humantime::parse_rfc3339(v["from"].as_str().unwrap()).unwrap();
    let to = humantime::parse_rfc3339(v["to"].as_str().unwrap()).unwrap();
    assert_eq!(to.duration_since(from).unwrap(), Duration::from_secs(3600));

    for bad in [
        "from=yesterday",
        "to=2026-09-21",
        "from=2026-09-21T14:00:00Z&to=2026-09-21T13:00:00Z",
        "from=2026-09-01T00:00:00Z&to=2026-09-21T00:00:00Z",
        "since=2026-09-21T13:00:00Z",
    ] {
        let r = get(&app, &format!("/api/v1/hosts/h/metrics?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.error_code(), "bad_request");
    }
}

// === everything else ===

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = app();
    let r = get(&app, "/api/v1/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
    // `/` is the web console now; other paths outside the API are still JSON 404s.
    let r = get_anon(&app, "/index.php").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");

    let req = Request::builder()
        .method(Method::POST)
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_code(), "method_not_allowed");
}

#[tokio::test]
async fn store_failures_are_generic_5xx() {
    let (app, _) = app_with(fixture(Failure::Backend));
    for uri in [
        "/api/v1/agents",
        "/api/v1/agents/agt-0001",
        "/api/v1/cis",
        "/api/v1/cis/ci-0000000000000001",
        "/api/v1/cis/ci-0000000000000001/relations",
        "/api/v1/clones",
        "/api/v1/hosts/h/metrics",
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(r.error_code(), "unavailable");
        assert!(
            !r.text().contains("/secret/path"),
            "internals leaked: {}",
            r.text()
        );
    }
    let (app, _) = app_with(fixture(Failure::Corrupt));
    let r = get(&app, "/api/v1/cis").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error_code(), "internal");
    assert!(!r.text().contains("bad bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_and_queue_behind_the_limit() {
    let store = FakeStore {
        delay: Duration::from_millis(300),
        ..fixture(Failure::None)
    };
    let state = ApiState {
        store: Arc::new(store),
        auth: Arc::new(FixedTokens),
        telemetry: Arc::new(Telemetry::new()),
        judgment: None,
        audit: None,
        licenses: None,
        config_audit: None,

        cmdb_health: None,
        fleet: None,
    };
    let limits = Limits {
        max_concurrent_requests: 1,
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let app = router_with_limits(state, limits);
    // One slot: the second request waits ~300 ms, then needs 300 ms more: past 500 ms.
    let (a, b) = tokio::join!(get(&app, "/api/v1/clones"), get(&app, "/api/v1/clones"));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
    let late = if a.status == StatusCode::OK { b } else { a };
    assert_eq!(late.error_code(), "unavailable");
}

// === whoami and the console ===

#[tokio::test]
async fn whoami_names_the_tokens_principal_and_needs_a_token() {
    let app = app();
    let r = get(&app, "/api/v1/whoami").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"name": "admin", "role": "admin"}));
    assert_eq!(
        get_anon(&app, "/api/v1/whoami").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_console_is_served_at_the_root_without_a_token() {
    let app = app();
    let r = get_anon(&app, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );
    assert!(String::from_utf8_lossy(&r.body).contains("/console/app.js"));
    // The API is untouched: still bearer-only, unknown routes still a JSON 404.
    assert_eq!(
        get_anon(&app, "/api/v1/cis").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get_anon(&app, "/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_and_fleet_answer_503_without_their_services() {
    let (app, _) = app_with(fixture(Failure::None));
    for uri in [
        "/api/v1/cmdb-health",
        "/api/v1/cmdb-health/failing",
        "/api/v1/fleet",
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
    }
}

#[tokio::test]
async fn health_and_fleet_routes_check_their_parameters() {
    let store: Arc<dyn Store> = Arc::new(fixture(Failure::None));
    let state = ApiState {
        store: Arc::clone(&store),
        auth: Arc::new(FixedTokens),
        telemetry: Arc::new(Telemetry::new()),
        judgment: None,
        audit: None,
        licenses: None,
        config_audit: None,
        cmdb_health: Some(Arc::new(crate::cmdb_health::CmdbHealth::new(
            Arc::clone(&store),
            None,
            crate::cmdb_health::HealthSettings::default(),
        ))),
        fleet: Some(Arc::new(crate::fleet::Fleet::new(
            store,
            std::time::Duration::from_secs(30),
            3,
        ))),
    };
    let app = router(state);
    for uri in [
        "/api/v1/cmdb-health?kpi=nope",
        "/api/v1/cmdb-health?bogus=1",
        "/api/v1/cmdb-health/failing?limit=0",
        "/api/v1/cmdb-health/failing?limit=1001",
        "/api/v1/fleet?status=sideways",
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
    }
    let r = get(&app, "/api/v1/cmdb-health/failing?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(&app, "/api/v1/fleet").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let n = v["items"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(v["summary"]["agents"].as_u64(), Some(n));
    assert_eq!(v["up_window_seconds"], 90);
}
