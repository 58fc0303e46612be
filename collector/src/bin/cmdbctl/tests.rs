//! cmdbctl against the real router over loopback HTTP, backed by a small in-memory store:
//! the client, the server and the JSON between them agree. (The end-to-end tests in
//! `tests/` drive the binary against a real collector.) `judgment_tests` reuses the store
//! and the server with a judgment engine behind the router.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cmdb_collector::http::{ApiState, Authenticator, Principal, router};
use cmdb_collector::store::record_map::RecordMap;
use cmdb_collector::store::{
    AgentRecord, ApplyOutcome, ChangeKind, CiFilter, CiRecord, CiState, CiVersion, CloneRecord,
    FeedEntry, FeedPos, HostId, MetricRecord, RecordOp, RelationRecord, Store, StoreError,
};
use cmdb_collector::telemetry::Telemetry;
use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};
use cmdb_proto::v1;
use serde_json::Value;

use super::*;
use crate::cli::Settings;

const TOKEN: &str = "tok";

pub(crate) struct MemStore {
    agents: Vec<AgentRecord>,
    cis: Vec<CiRecord>,
    versions: HashMap<String, Vec<CiVersion>>,
    relations: Vec<RelationRecord>,
    /// collection → id → value
    records: RecordMap,
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend("read-only test store".into()))
}

impl Store for MemStore {
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.agents.iter().find(|a| a.agent_id == id).cloned())
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.agents.clone())
    }
    fn put_agent(&self, _: &AgentRecord) -> Result<(), StoreError> {
        unsupported()
    }
    fn identify(
        &self,
        _: &str,
        _: &str,
        _: &HostIdentity,
        _: SystemTime,
    ) -> Result<HostId, StoreError> {
        unsupported()
    }
    fn apply(&self, _: &str, _: &[v1::Event]) -> Result<ApplyOutcome, StoreError> {
        unsupported()
    }
    fn ci(&self, id: &str) -> Result<Option<CiRecord>, StoreError> {
        Ok(self.cis.iter().find(|c| c.id == id).cloned())
    }
    fn ci_versions(&self, id: &str) -> Result<Vec<CiVersion>, StoreError> {
        Ok(self.versions.get(id).cloned().unwrap_or_default())
    }
    fn cis(&self, f: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        let mut out: Vec<CiRecord> = self
            .cis
            .iter()
            .filter(|c| f.include_absent || c.state == CiState::Present)
            .filter(|c| f.class.as_ref().is_none_or(|k| *k == c.class))
            .filter(|c| f.host.as_ref().is_none_or(|h| *h == c.host_id))
            .filter(|c| f.after.as_ref().is_none_or(|a| c.id > *a))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(f.limit);
        Ok(out)
    }
    fn relations_of(&self, id: &str) -> Result<Vec<RelationRecord>, StoreError> {
        Ok(self
            .relations
            .iter()
            .filter(|r| r.from == id || r.to == id)
            .cloned()
            .collect())
    }
    fn metrics(
        &self,
        _: &str,
        _: SystemTime,
        _: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn feed(&self, _: Option<&FeedPos>, _: usize) -> Result<Vec<FeedEntry>, StoreError> {
        Ok(Vec::new())
    }
    fn record(&self, collection: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.records.get(collection, id)
    }
    fn records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.records.list(collection, after, limit)
    }
    fn write_records(&self, ops: &[RecordOp]) -> Result<(), StoreError> {
        self.records.write(ops)
    }
}

struct OneToken;

impl Authenticator for OneToken {
    fn authenticate(&self, bearer: &str) -> Option<Principal> {
        (bearer == TOKEN).then(|| Principal {
            name: "test".into(),
            role: "viewer".into(),
        })
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
}

pub(crate) fn store() -> MemStore {
    let ci = |n: u32, class: &str, key: &str, state| CiRecord {
        id: format!("ci-{n:016x}"),
        host_id: "host-a1".into(),
        class: class.into(),
        key: key.into(),
        state,
        attrs: Attrs::from([("name".to_owned(), AttrValue::Str(key.into()))]),
        version: 1,
        first_seen: t(0),
        last_seen: t(0),
        last_changed: t(0),
        source_agent: "agt-1".into(),
        source_seq: 1,
    };
    let cis = vec![
        ci(1, "package", "dpkg:bash:amd64", CiState::Present),
        ci(2, "package", "dpkg:curl:amd64", CiState::Present),
        ci(3, "service", "ssh.service", CiState::Present),
        ci(4, "package", "dpkg:telnet:amd64", CiState::Absent),
        ci(5, "os", "os", CiState::Present),
    ];
    let old = cis[0].attrs.clone();
    let mut new = old.clone();
    new.insert("version".into(), AttrValue::Str("5.2".into()));
    let versions = HashMap::from([(
        cis[0].id.clone(),
        vec![
            CiVersion {
                ci_id: cis[0].id.clone(),
                version: 1,
                change: ChangeKind::Added,
                state: CiState::Present,
                attrs: old.clone(),
                old_attrs: Attrs::new(),
                observed_at: t(0),
                agent_id: "agt-1".into(),
                seq: 1,
                change_id: None,
            },
            CiVersion {
                ci_id: cis[0].id.clone(),
                version: 2,
                change: ChangeKind::Changed,
                state: CiState::Present,
                attrs: new,
                old_attrs: old,
                observed_at: t(60),
                agent_id: "agt-1".into(),
                seq: 2,
                change_id: None,
            },
        ],
    )]);
    let relations = vec![RelationRecord {
        from: cis[2].id.clone(),
        to: cis[0].id.clone(),
        kind: "runs".into(),
        host_id: "host-a1".into(),
        present: true,
        from_ref: String::new(),
        to_ref: String::new(),
    }];
    let agents = vec![AgentRecord {
        agent_id: "agt-1".into(),
        host_id: Some("host-a1".into()),
        instance_id: "i".into(),
        version: "0.1.0".into(),
        hostname: Some("web-1".into()),
        identity: HostIdentity::default(),
        enrolled_at: t(0),
        last_seen: Some(t(60)),
        last_seq: 2,
        connected: true,
        outbox_events: 0,
        outbox_bytes: 0,
        collectors: Vec::new(),
        revoked: false,
        last_shutdown: None,
        gaps: 0,
        dropped_metrics: 0,
        dropped_inventory_changes: 0,
        inventory_hash: String::new(),
    }];
    MemStore {
        agents,
        cis,
        versions,
        relations,
        records: RecordMap::default(),
    }
}

/// The router on 127.0.0.1, served from a thread of its own until dropped.
pub(crate) struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        Self::serve(router(ApiState {
            store: Arc::new(store()),
            auth: Arc::new(OneToken),
            telemetry: Arc::new(Telemetry::new()),
            judgment: None,
            audit: None,
            licenses: None,
            config_audit: None,

            cmdb_health: None,
            fleet: None,
        }))
    }

    /// Serves `app` until dropped.
    pub(crate) fn serve(app: axum::Router) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(crate) fn settings(&self, format: Format, command: Command) -> Settings {
        Settings {
            base_url: self.url.clone(),
            token: TOKEN.into(),
            format,
            command,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn output(s: &Settings) -> Result<String, RunError> {
    let mut out = Vec::new();
    run(s, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn commands_against_the_router() {
    let server = Server::start();

    let text = output(&server.settings(Format::Table, Command::Agents)).unwrap();
    assert!(text.starts_with("AGENT  HOSTNAME  HOST"), "{text}");
    assert!(
        text.contains("agt-1  web-1     host-a1  0.1.0    connected"),
        "{text}"
    );

    let text = output(&server.settings(
        Format::Table,
        Command::Ci {
            id: "ci-0000000000000001".into(),
        },
    ))
    .unwrap();
    assert!(
        text.contains("~ version") || text.contains("+ version"),
        "{text}"
    );
    assert!(text.contains("5.2"), "{text}");

    let text = output(&server.settings(
        Format::Table,
        Command::Relations {
            id: "ci-0000000000000001".into(),
        },
    ))
    .unwrap();
    assert!(
        text.contains("in         runs  ci-0000000000000003  service  ssh.service"),
        "{text}"
    );

    let text = output(&server.settings(Format::Table, Command::Whoami)).unwrap();
    assert_eq!(text, "test (viewer)\n");
    let text = output(&server.settings(Format::Json, Command::Whoami)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, serde_json::json!({"name": "test", "role": "viewer"}));

    let text = output(&server.settings(Format::Json, Command::Clones)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, serde_json::json!({"items": []}));

    let text =
        output(&server.settings(Format::Json, Command::Agent { id: "agt-1".into() })).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["agent_id"], "agt-1");
}

#[test]
fn cis_all_follows_every_page() {
    let server = Server::start();
    let args = CisArgs {
        include_absent: true,
        limit: Some(2),
        all: true,
        ..CisArgs::default()
    };
    let text = output(&server.settings(Format::Json, Command::Cis(args))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(v["next_after"], Value::Null);

    // One page only, then --after picks up where it stopped.
    let args = CisArgs {
        limit: Some(2),
        ..CisArgs::default()
    };
    let text = output(&server.settings(Format::Json, Command::Cis(args))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["next_after"], "ci-0000000000000002");
    let args = CisArgs {
        class: Some("package".into()),
        after: Some("ci-0000000000000001".into()),
        ..CisArgs::default()
    };
    let text = output(&server.settings(Format::Table, Command::Cis(args))).unwrap();
    assert_eq!(text.lines().count(), 2, "header + curl: {text}");
    assert!(text.contains("dpkg:curl:amd64"));
}

#[test]
fn errors_map_to_exit_codes() {
    let server = Server::start();
    let r = output(&server.settings(
        Format::Table,
        Command::Ci {
            id: "ci-nope".into(),
        },
    ));
    let e = r.map(|_| ()).unwrap_err();
    assert_eq!(e.to_string(), "no CI ci-nope (HTTP 404, not_found)");
    assert_eq!(exit_code::<()>(&Err(e)), 1);

    let mut s = server.settings(Format::Table, Command::Agents);
    s.token = "wrong".into();
    let e = output(&s).map(|_| ()).unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid bearer token (HTTP 401, unauthorized)"),
        "{e}"
    );

    let e = output(&server.settings(Format::Table, Command::Agent { id: "..".into() }))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(exit_code::<()>(&Err(e)), 64);

    let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
    assert_eq!(exit_code::<()>(&Err(RunError::Output(broken))), 0);
    assert_eq!(exit_code(&Ok(())), 0);
}
