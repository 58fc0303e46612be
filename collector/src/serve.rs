//! `cmdb-collector serve`: opens the store, PKI and tokens, then runs the agents' gRPC
//! service (mTLS) and the HTTP API side by side until shutdown. The bound addresses are
//! logged and written to `<data_dir>/listen.json` (so that port 0 works for tests and
//! quickstart).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cmdb_proto::ingest::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::audit_log::{AuditEvent, AuditLog};
use crate::config::CollectorConfig;
use crate::http::{ApiState, Authenticator, Principal};
use crate::incidents::Incident;
use crate::ingest::{AgentConfigFn, Ingest};
use crate::judgment::{Actor, AuditSink, Judgment, NoticeSink};
use crate::notify::{IncidentNotice, NoticeEvent, Notifier};
use crate::pki::Pki;
use crate::store::Store;
use crate::store::sled::SledStore;
use crate::telemetry::Telemetry;
use crate::tokens::Tokens;

/// Why the collector could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The PKI is missing or unreadable.
    #[error("PKI in {dir}: {message} (run `cmdb-collector pki init --data-dir {data_dir}` first)")]
    Pki {
        dir: PathBuf,
        data_dir: PathBuf,
        message: String,
    },
    /// The token file is unreadable.
    #[error("tokens: {0}")]
    Tokens(String),
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A server failed while running.
    #[error("{0} server: {1}")]
    Server(&'static str, String),
    /// The judgment engine's state cannot be loaded.
    #[error("judgment state: {0}")]
    Judgment(String),
    /// I/O on the data directory.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// API tokens (tokens.json) as the HTTP layer's authenticator.
struct TokenAuth(Arc<Tokens>);

impl Authenticator for TokenAuth {
    fn authenticate(&self, bearer: &str) -> Option<Principal> {
        match self.0.verify_api_token(bearer) {
            Ok(Some(p)) => Some(Principal {
                name: p.name,
                role: p.role.to_string(),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read API tokens.");
                None
            }
        }
    }
}

/// Where the servers actually listen.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenAddrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// Runs until `shutdown` completes. `on_listening` is told the bound addresses once both
/// listeners are up.
pub async fn serve(
    cfg: CollectorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(ListenAddrs) + Send,
) -> Result<(), ServeError> {
    serve_with(cfg, None, shutdown, on_listening).await
}

/// [`serve`] with the hook that builds each agent's `Config` ([`Ingest::with_agent_config`];
/// `None`: the default, the heartbeat interval and no monitors).
pub async fn serve_with(
    cfg: CollectorConfig,
    agent_config: Option<AgentConfigFn>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(ListenAddrs) + Send,
) -> Result<(), ServeError> {
    crate::tls::install_crypto_provider();
    let data_dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServeError::Io {
        path: data_dir.clone(),
        source,
    })?;
    let pki_err = |e: &dyn std::fmt::Display| ServeError::Pki {
        dir: pki_dir(&data_dir),
        data_dir: data_dir.clone(),
        message: e.to_string(),
    };
    let pki = Arc::new(Pki::open(&pki_dir(&data_dir)).map_err(|e| pki_err(&e))?);
    let server_tls = pki.server_tls().map_err(|e| pki_err(&e))?;
    let tokens = Arc::new(Tokens::open(&data_dir).map_err(|e| ServeError::Tokens(e.to_string()))?);
    let store: Arc<dyn Store> = Arc::new(SledStore::open(
        &store_dir(&data_dir),
        cfg.store.cache_bytes,
    )?);
    let telemetry = Arc::new(Telemetry::new());

    let grpc_listener =
        TcpListener::bind(cfg.grpc_listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.grpc_listen,
                source,
            })?;
    let http_listener =
        TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.http_listen,
                source,
            })?;
    let addrs = ListenAddrs {
        grpc: grpc_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: cfg.grpc_listen,
                source,
            })?,
        http: http_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: cfg.http_listen,
                source,
            })?,
    };
    write_listen_file(&data_dir, &addrs)?;
    tracing::info!(grpc = %addrs.grpc, http = %addrs.http, data_dir = %data_dir.display(), "Collector listening.");
    on_listening(addrs);

    let ingest = Ingest::new(
        Arc::clone(&store),
        Arc::clone(&pki),
        Arc::clone(&tokens),
        Arc::clone(&telemetry),
        cfg.limits.clone(),
        cfg.agents.clone(),
    );
    let audit = Arc::new(
        AuditLog::open(&data_dir, Arc::clone(&store))
            .map_err(|e| ServeError::Judgment(format!("audit log: {e}")))?,
    );
    let notifier = Arc::new(
        Notifier::new(Arc::clone(&store), cfg.notify.sinks.clone())
            .map_err(|e| ServeError::Judgment(format!("notifier: {e}")))?
            .with_max_attempts_age(cfg.notify.max_attempts_age)
            .with_backoff(cfg.notify.backoff_initial, cfg.notify.backoff_max)
            .with_telemetry(Arc::clone(&telemetry)),
    );
    let judgment = Arc::new(
        Judgment::open(
            Arc::clone(&store),
            cfg.judgment_settings(),
            Some(Arc::new(AuditAdapter(Arc::clone(&audit))) as Arc<dyn AuditSink>),
            Some(Arc::new(NoticeAdapter(Arc::clone(&notifier))) as Arc<dyn NoticeSink>),
        )
        .map_err(|e| ServeError::Judgment(e.to_string()))?,
    );
    // Derived work on threads of its own at a lower CPU priority (crate::background).
    let worker = |name: &str| {
        crate::background::Worker::spawn(name, cfg.judgment.worker_nice)
            .map_err(|e| ServeError::Judgment(e.to_string()))
    };
    let judge_task = tokio::spawn(run_judgment(
        Arc::clone(&judgment),
        Arc::clone(&telemetry),
        worker("cmdb-judgment")?,
    ));
    let licenses = Arc::new(
        crate::licenses::Licenses::open(
            Arc::clone(&store),
            Some(Arc::clone(&judgment)),
            Some(Arc::new(AuditAdapter(Arc::clone(&audit))) as Arc<dyn AuditSink>),
            cfg.licenses.settings(),
        )
        .map_err(|e| ServeError::Judgment(format!("licenses: {e}")))?,
    );
    let licenses_task = tokio::spawn(Arc::clone(&licenses).run());
    // Derived host-to-host relations from observed connections (crate::host_links).
    let host_links_task = tokio::spawn(
        Arc::new(crate::host_links::HostLinks::new(Arc::clone(&store)))
            .run(worker("cmdb-host-links")?),
    );

    let config_audit = Arc::new(
        crate::config_audit::ConfigAudit::open(
            Arc::clone(&store),
            Some(Arc::new(AuditAdapter(Arc::clone(&audit))) as Arc<dyn AuditSink>),
        )
        .map_err(|e| ServeError::Judgment(format!("configuration audit: {e}")))?,
    );
    let (notify_stop_tx, notify_stop) = tokio::sync::oneshot::channel::<()>();
    let notify_task = tokio::spawn(Arc::clone(&notifier).run(async move {
        let _ = notify_stop.await;
    }));
    let agent_config = agent_config.unwrap_or_else(|| {
        monitors_hook(
            cfg.agents.heartbeat,
            cfg.availability.monitors.clone(),
            Arc::clone(&judgment),
        )
    });
    let ingest = ingest.with_agent_config(agent_config);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut grpc_stop = stop_tx.subscribe();
    let mut http_stop = stop_tx.subscribe();
    let grpc = tonic::transport::Server::builder()
        .tls_config(server_tls)
        .map_err(|e| ServeError::Server("gRPC", e.to_string()))?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .add_service(
            AgentServiceServer::new(ingest)
                .max_decoding_message_size(cfg.limits.max_message_bytes)
                .max_encoding_message_size(1024 * 1024),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), async move {
            let _ = grpc_stop.recv().await;
        });
    // CMDB health KPIs; compliance comes from the latest configuration audit run.
    let cmdb_health = Arc::new(crate::cmdb_health::CmdbHealth::new(
        Arc::clone(&store) as Arc<dyn crate::store::Store>,
        Some(Arc::clone(&config_audit) as Arc<dyn crate::compliance::ComplianceSource>),
        cfg.cmdb_health.clone(),
    ));
    let fleet = Arc::new(crate::fleet::Fleet::new(
        Arc::clone(&store) as Arc<dyn crate::store::Store>,
        cfg.agents.heartbeat,
        cfg.availability.missed_heartbeats,
    ));
    let api = crate::http::router(ApiState {
        store: Arc::clone(&store),
        auth: Arc::new(TokenAuth(Arc::clone(&tokens))),
        telemetry: Arc::clone(&telemetry),
        judgment: Some(Arc::clone(&judgment)),
        audit: Some(Arc::new(AuditAdapter(Arc::clone(&audit))) as Arc<dyn crate::http::AuditReader>),
        licenses: Some(licenses),
        config_audit: Some(config_audit),

        cmdb_health: Some(cmdb_health),
        fleet: Some(fleet),
    });
    let http = axum::serve(http_listener, api).with_graceful_shutdown(async move {
        let _ = http_stop.recv().await;
    });
    let maintenance = tokio::spawn(maintain(
        Arc::clone(&store),
        cfg.store.absent_retention,
        cfg.store.metrics_retention,
    ));
    let capacity_task = cfg.capacity.enabled.then(|| {
        tokio::spawn(crate::capacity::run(Arc::new(
            crate::capacity::Capacity::new(
                Arc::clone(&store),
                cfg.capacity.clone(),
                Some(Arc::clone(&judgment)),
                cfg.store.metrics_retention,
            ),
        )))
    });
    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move { http.await });
    shutdown.await;
    tracing::info!("Collector shutting down.");
    let _ = stop_tx.send(());
    maintenance.abort();
    if let Some(t) = &capacity_task {
        t.abort();
    }
    judge_task.abort();
    licenses_task.abort();
    host_links_task.abort();
    let _ = notify_stop_tx.send(());
    let _ = notify_task.await;
    let grpc_res = grpc_task.await;
    let http_res = http_task.await;
    store.flush()?;
    match grpc_res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServeError::Server("gRPC", e.to_string())),
        Err(e) => return Err(ServeError::Server("gRPC", e.to_string())),
    }
    match http_res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Server("HTTP", e.to_string())),
        Err(e) => Err(ServeError::Server("HTTP", e.to_string())),
    }
}

/// Hourly: retire CIs absent longer than the retention, prune old metric summaries.
async fn maintain(store: Arc<dyn Store>, absent_retention: Duration, metrics_retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let store = Arc::clone(&store);
        let done = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now();
            let retired = store.retire_absent(now - absent_retention)?;
            let pruned = store.prune_metrics(now - metrics_retention)?;
            Ok::<_, crate::store::StoreError>((retired, pruned))
        })
        .await;
        match done {
            Ok(Ok((retired, pruned))) if retired + pruned > 0 => {
                tracing::info!(retired, pruned, "Store maintenance done.");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Store maintenance failed."),
            Err(e) => tracing::error!(error = %e, "Store maintenance task failed."),
        }
    }
}

/// The audit log as the judgment engine's sink and the API's reader.
struct AuditAdapter(Arc<AuditLog>);

impl AuditSink for AuditAdapter {
    fn append(
        &self,
        actor: &Actor,
        action: &str,
        object: &str,
        why: Option<&str>,
        details: serde_json::Value,
    ) -> Result<(), String> {
        self.0
            .append(AuditEvent {
                actor: actor.name.clone(),
                role: actor.role.clone(),
                action: action.to_owned(),
                object: object.to_owned(),
                why: why.map(str::to_owned),
                details,
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl crate::http::AuditReader for AuditAdapter {
    fn entries_json(&self, after: Option<u64>, limit: usize) -> Result<serde_json::Value, String> {
        let items = self.0.entries(after, limit).map_err(|e| e.to_string())?;
        Ok(serde_json::json!({ "items": items }))
    }

    fn verify_json(&self) -> Result<serde_json::Value, String> {
        let report = self.0.verify().map_err(|e| e.to_string())?;
        serde_json::to_value(report).map_err(|e| e.to_string())
    }
}

/// The notifier as the judgment engine's notice sink.
struct NoticeAdapter(Arc<Notifier>);

impl NoticeSink for NoticeAdapter {
    fn notice_ops(
        &self,
        event: &str,
        inc: &Incident,
        now: std::time::SystemTime,
    ) -> Vec<crate::store::RecordOp> {
        let event = match event {
            "opened" => NoticeEvent::Opened,
            "resolved" => NoticeEvent::Resolved,
            "closed" => NoticeEvent::Closed,
            _ => NoticeEvent::Updated,
        };
        let summary = inc
            .timeline
            .last()
            .map(|t| t.message.clone())
            .unwrap_or_default();
        let notice = IncidentNotice {
            event,
            number: inc.number.clone(),
            title: inc.title.clone(),
            category: inc.category.as_str().to_owned(),
            priority: inc.priority,
            impact: inc.impact,
            urgency: inc.urgency,
            state: inc.state.as_str().to_owned(),
            ci_id: inc.ci_id.clone(),
            host_id: inc.host_id.clone(),
            hostname: inc.hostname.clone(),
            started_at: inc.started_at,
            resolved_at: inc.resolved_at,
            summary,
            timeline_len: inc.timeline.len() + inc.timeline_overflow as usize,
        };
        self.0.enqueue_ops(&notice, now)
    }

    fn wake(&self) {
        self.0.wake();
    }
}

/// The agents' `Config`: the heartbeat interval and the monitors whose selector matches
/// the agent's host (by host id or hostname).
fn monitors_hook(
    heartbeat: Duration,
    monitors: Vec<crate::availability::MonitorConfig>,
    judgment: Arc<Judgment>,
) -> AgentConfigFn {
    use cmdb_proto::v1;
    let heartbeat_seconds = u32::try_from(heartbeat.as_secs()).unwrap_or(30).max(1);
    Arc::new(move |host: &str| {
        let hostname = judgment.hostname_of(host);
        let monitors = monitors
            .iter()
            .filter(|m| m.selector.may_match_host(host, hostname.as_deref()))
            .map(|m| v1::MonitorSpec {
                name: m.name.clone(),
                kind: match m.kind.as_str() {
                    "systemd_unit" => v1::MonitorKind::SystemdUnit,
                    "process" => v1::MonitorKind::Process,
                    _ => v1::MonitorKind::TcpPort,
                } as i32,
                target: m.target.clone(),
            })
            .collect();
        v1::Config {
            heartbeat_seconds,
            monitors,
            ..Default::default()
        }
    })
}

/// How often the judgment engine looks at the change feed when it is caught up.
pub const FEED_POLL: Duration = Duration::from_millis(100);
/// How often host liveness, clones, flapping and auto-close are checked.
pub const JUDGMENT_TICK: Duration = Duration::from_secs(1);

/// The judgment engine's loop: drains the change feed (polling when caught up) on
/// `worker`, and runs the periodic checks. A failing step is logged and retried; it never
/// stops the loop.
async fn run_judgment(
    judgment: Arc<Judgment>,
    telemetry: Arc<Telemetry>,
    worker: crate::background::Worker,
) {
    let mut last_tick = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let j = Arc::clone(&judgment);
        let t = Arc::clone(&telemetry);
        let step = worker
            .run(move || {
                let mut handled = 0;
                loop {
                    let n = j.process_feed()?;
                    t.judged_versions(n as u64);
                    handled += n;
                    if n == 0 || handled >= 20_000 {
                        return Ok::<_, crate::judgment::JudgmentError>(handled);
                    }
                }
            })
            .await;
        let busy = match step {
            Ok(Ok(n)) => {
                failures = 0;
                n > 0
            }
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                tracing::error!(error = %e, failures, "Judging the change feed failed; retrying.");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "The judgment task failed; retrying.");
                false
            }
        };
        if last_tick.elapsed() >= JUDGMENT_TICK {
            last_tick = std::time::Instant::now();
            let j = Arc::clone(&judgment);
            match tokio::task::spawn_blocking(move || j.tick(std::time::SystemTime::now())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "The judgment tick failed."),
                Err(e) => tracing::error!(error = %e, "The judgment tick task failed."),
            }
        }
        if !busy {
            // Back off a little after repeated failures (a broken store must not spin).
            let pause = FEED_POLL * failures.clamp(1, 50);
            tokio::time::sleep(pause).await;
        }
    }
}

fn write_listen_file(data_dir: &Path, addrs: &ListenAddrs) -> Result<(), ServeError> {
    let path = data_dir.join("listen.json");
    let tmp = data_dir.join("listen.json.tmp");
    let io = |source| ServeError::Io {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_string_pretty(addrs).map_err(|e| io(std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process still dies on the default action.
            std::future::pending::<()>().await;
        }
    }
}
