//! Fleet simulator: N concurrent agent streams with realistic synthetic inventories against
//! the real collector, and — in the same run — against a decode-and-drop server speaking the
//! same protocol over the same mTLS, which gives the upper bound. Prints CI changes/s (or
//! events/s), ack latency p50/p99, collector peak RSS, and the collector/drop ratio; and,
//! from /proc/<pid>/stat over the measured window, the CPU each server and this simulator
//! used (cores, and µs per change or batch: the simulator shares the machine's cores with
//! the server it drives), plus the collector's CPU per version while it judges the backlog.
//!
//! Scenarios:
//! - `changes`: each agent sends a snapshot of ~800 packages, then deltas of `--changes`
//!   package version bumps, pipelined; the figure is CI changes/s persisted and acked.
//! - `fleet`: many mostly idle agents: a heartbeat every 30 s and a metrics summary every
//!   60 s (spread evenly); the figures are collector RSS and metrics ack latency.
//!
//! ```text
//! fleet-sim run --scenario changes --agents 50 --seconds 20
//! fleet-sim run --scenario fleet --agents 10000 --seconds 120
//! ```
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use cmdb_bench::{collector_status, event_at};
use cmdb_proto::convert::timestamp_from_system;
// The decode-and-drop server decodes the stream as the collector does: the ingest view
// (`ItemChange.old_attrs` stepped over), converted to `v1`'s types.
use cmdb_proto::ingest::{
    self,
    agent_service_server::{AgentService, AgentServiceServer},
};
use cmdb_proto::v1::{
    self, AgentMessage, CollectorMessage, agent_message, agent_service_client::AgentServiceClient,
    collector_message, event,
};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser)]
#[command(name = "fleet-sim")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Scenario {
    Changes,
    Fleet,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a collector and a decode-and-drop server, simulate agents against both, report.
    Run {
        #[arg(long, value_enum, default_value = "changes")]
        scenario: Scenario,
        #[arg(long, default_value_t = 50)]
        agents: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Package changes per delta (changes scenario).
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Deltas each agent keeps unacknowledged (changes scenario). The real agent
        /// pipelines up to 5 000 events in batches of up to 500 events / 1 MiB.
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// The collector binary (default: next to this one).
        #[arg(long)]
        collector_bin: Option<PathBuf>,
        /// Skip the decode-and-drop comparison.
        #[arg(long)]
        skip_drop: bool,
        /// Seconds of traffic before measuring starts (default: 2 for `changes`, 0 for
        /// `fleet`, whose measured window then includes every agent's connect).
        #[arg(long)]
        warmup: Option<u64>,
        /// Fleet: a stream that connects after its first slot sends at once and keeps
        /// that phase (what this simulator did before 2026-12-05: a burst every 30 s).
        #[arg(long)]
        bunched: bool,
        /// The collector's sled cache in MiB (`[store] cache_bytes`; default: the
        /// collector's default).
        #[arg(long)]
        cache_mib: Option<u64>,
        /// The collector's `[judgment] worker_nice` (default: the collector's default, 10;
        /// 0 gives judgment and host links the same CPU priority as ingest).
        #[arg(long)]
        worker_nice: Option<i32>,
        /// The collector's `[limits] concurrent_applies` (default: the collector's
        /// default, twice the cores).
        #[arg(long)]
        concurrent_applies: Option<usize>,
    },
    /// Serve the decode-and-drop AgentService (used by `run`).
    DropServer {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        port: u16,
    },
}

// === synthetic agents ===

struct SimAgent {
    agent_id: String,
    instance_id: String,
    identity: v1::HostIdentity,
    cert: String,
    key: String,
}

fn package(i: usize, generation: u64) -> v1::Item {
    let s = |x: String| v1::Value {
        kind: Some(v1::value::Kind::String(x)),
    };
    let n = |x: i64| v1::Value {
        kind: Some(v1::value::Kind::Int(x)),
    };
    let name = format!("lib-synthetic-{i:04}");
    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("manager".into(), s("dpkg".into()));
    attrs.insert("name".into(), s(name.clone()));
    attrs.insert(
        "version".into(),
        s(format!("{}.{}.{}-{}", i % 7, i % 13, generation, i % 3)),
    );
    attrs.insert("arch".into(), s("amd64".into()));
    attrs.insert(
        "vendor".into(),
        s("Debian Synthetic Maintainers <synthetic@example.org>".into()),
    );
    attrs.insert("source".into(), s(format!("synthetic-src-{}", i / 4)));
    attrs.insert("install_time".into(), s("2026-11-01T10:00:00Z".into()));
    attrs.insert(
        "size_bytes".into(),
        n(i64::try_from(i).unwrap_or(0) * 1024 + 4096),
    );
    attrs.insert(
        "summary".into(),
        s(format!("synthetic library number {i} for benchmarks")),
    );
    v1::Item {
        class: "package".into(),
        key: format!("dpkg:{name}:amd64"),
        attrs,
    }
}

fn snapshot(agent: &SimAgent, packages: usize) -> v1::Snapshot {
    let at = SystemTime::now();
    cmdb_bench::snapshot(
        "sim",
        agent.instance_id.clone(),
        agent.identity.clone(),
        vec![collector_status("dpkg", "package", packages as u64, 5)],
        (0..packages).map(|i| package(i, 0)).collect(),
        at,
    )
}

fn delta(generation: u64, changes: usize, packages: usize, offset: usize) -> v1::Delta {
    v1::Delta {
        changes: (0..changes)
            .map(|j| {
                let i = (offset + j) % packages;
                v1::ItemChange {
                    kind: v1::ChangeKind::Changed as i32,
                    class: "package".into(),
                    key: package(i, 0).key,
                    old_attrs: package(i, generation - 1).attrs,
                    new_attrs: package(i, generation).attrs,
                }
            })
            .collect(),
        collectors: vec![],
        relations_added: vec![],
        relations_removed: vec![],
        content_hash: vec![],
    }
}

fn metrics() -> v1::Metrics {
    v1::Metrics {
        window_start: Some(timestamp_from_system(SystemTime::now())),
        window_seconds: 60,
        summaries: (0..20)
            .map(|i| v1::MetricSummary {
                name: [
                    "cpu.percent",
                    "memory.used_bytes",
                    "interface.rx_bytes",
                    "filesystem.used_bytes",
                ][i % 4]
                    .into(),
                labels: [("n".to_owned(), i.to_string())].into_iter().collect(),
                min: 1.0,
                avg: 2.0,
                max: 3.0,
                p95: 2.9,
                samples: 4,
            })
            .collect(),
    }
}

fn ev(seq: u64, kind: event::Kind) -> v1::Event {
    event_at(seq, SystemTime::now(), kind)
}

// === enrollment ===

async fn enroll_all(url: &str, ca: &str, token: &str, n: usize) -> anyhow::Result<Vec<SimAgent>> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )?
        .connect()
        .await?;
    let mut handles = Vec::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..n {
        let mut client = AgentServiceClient::new(channel.clone());
        let token = token.to_owned();
        let sem = Arc::clone(&sem);
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&key)?
                .pem()?;
            let instance_id = format!("00000000-0000-4000-8000-{i:012}");
            let identity = v1::HostIdentity {
                hostname: Some(format!("sim-{i:05}")),
                product_uuid: Some(format!("5157a5e0-0000-4000-8000-{i:012}")),
                machine_id: Some(format!("{i:032x}")),
                ..Default::default()
            };
            let resp = client
                .enroll(v1::EnrollRequest {
                    token,
                    csr_pem: csr,
                    identity: Some(identity.clone()),
                    agent_version: "sim".into(),
                    instance_id: instance_id.clone(),
                })
                .await?
                .into_inner();
            anyhow::Ok(SimAgent {
                agent_id: resp.agent_id,
                instance_id,
                identity,
                cert: resp.certificate_chain_pem,
                key: key.serialize_pem(),
            })
        }));
    }
    let mut agents = Vec::with_capacity(n);
    for h in handles {
        agents.push(h.await??);
    }
    Ok(agents)
}

// === one simulated stream ===

#[derive(Default)]
struct Totals {
    changes: AtomicU64,
    events: AtomicU64,
    acked_batches: AtomicU64,
    errors: AtomicU64,
}

async fn agent_channel(url: &str, ca: &str, a: &SimAgent) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(&a.cert, &a.key))
                .domain_name("localhost"),
        )?
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .await?)
}

struct Run {
    scenario: Scenario,
    changes: usize,
    inflight: usize,
    packages: usize,
    start_at: Instant,
    measure_from: Instant,
    until: Instant,
    totals: Arc<Totals>,
    latencies: Arc<Mutex<Vec<f64>>>,
    /// Fleet: late streams send at once and keep that phase (see `simulate`).
    bunched: bool,
}

async fn simulate(
    url: String,
    ca: Arc<String>,
    a: SimAgent,
    idx: usize,
    n: usize,
    run: Arc<Run>,
) -> anyhow::Result<()> {
    let channel = agent_channel(&url, &ca, &a).await?;
    let mut client = AgentServiceClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(4 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(v1::Hello {
            identity: Some(a.identity.clone()),
            agent_version: "sim".into(),
            instance_id: a.instance_id.clone(),
            last_acked_seq: 0,
            inventory_hash: vec![],
        })),
    })
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let first = inbound.message().await?.context("no Ack after Hello")?;
    let mut seq = match first.kind {
        Some(collector_message::Kind::Ack(ack)) => ack.up_to_seq,
        _ => bail!("expected Ack"),
    };
    // In-flight batches: seq → (sent at, changes in it).
    let inflight: Arc<Mutex<std::collections::BTreeMap<u64, (Instant, u64)>>> = Arc::default();
    let reader = {
        let inflight = Arc::clone(&inflight);
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            while let Ok(Some(CollectorMessage { kind })) = inbound.message().await {
                if let Some(collector_message::Kind::Ack(ack)) = kind {
                    let now = Instant::now();
                    let mut done = inflight.lock().await;
                    let acked: Vec<u64> = done.range(..=ack.up_to_seq).map(|(k, _)| *k).collect();
                    for k in acked {
                        if let Some((sent, changes)) = done.remove(&k)
                            && sent >= run.measure_from
                            && now <= run.until
                        {
                            run.totals.changes.fetch_add(changes, Ordering::Relaxed);
                            run.totals.acked_batches.fetch_add(1, Ordering::Relaxed);
                            run.latencies
                                .lock()
                                .await
                                .push(now.duration_since(sent).as_secs_f64());
                        }
                    }
                }
            }
        })
    };
    let send = |seq: u64, events: Vec<v1::Event>, changes: u64| {
        let tx = tx.clone();
        let inflight = Arc::clone(&inflight);
        let totals = Arc::clone(&run.totals);
        async move {
            inflight.lock().await.insert(seq, (Instant::now(), changes));
            totals
                .events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            tx.send(AgentMessage {
                kind: Some(agent_message::Kind::Batch(v1::Batch { events })),
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream closed"))
        }
    };
    match run.scenario {
        Scenario::Changes => {
            seq += 1;
            send(
                seq,
                vec![ev(seq, event::Kind::Snapshot(snapshot(&a, run.packages)))],
                run.packages as u64,
            )
            .await?;
            let mut generation = 1u64;
            while Instant::now() < run.until {
                if inflight.lock().await.len() >= run.inflight {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                generation += 1;
                seq += 1;
                let d = delta(
                    generation,
                    run.changes,
                    run.packages,
                    (generation as usize * run.changes) % run.packages,
                );
                send(
                    seq,
                    vec![ev(seq, event::Kind::Delta(d))],
                    run.changes as u64,
                )
                .await?;
            }
        }
        Scenario::Fleet => {
            // Spread the fleet evenly over the 30 s / 60 s periods, each agent on a fixed
            // phase like a real agent's timer. A stream that connected after its first slot
            // (the connect storm takes seconds at 10 000 agents) skips the slots it missed
            // instead of sending at once: otherwise every late agent fires at connect and
            // the fleet stays bunched into a burst every 30 s for the whole run
            // (`--bunched` keeps that behaviour, a reconnect storm's load).
            const PERIOD: Duration = Duration::from_secs(30);
            let offset = Duration::from_millis((idx as u64 * 60_000) / n.max(1) as u64);
            let mut next = run.start_at + offset;
            let mut tick = 0u64;
            if !run.bunched {
                while next < Instant::now() {
                    next += PERIOD;
                    tick += 1;
                }
            }
            tokio::time::sleep_until(next.into()).await;
            while Instant::now() < run.until {
                let hb = ev(0, event::Kind::Heartbeat(v1::Heartbeat::default()));
                tx.send(AgentMessage {
                    kind: Some(agent_message::Kind::Batch(v1::Batch { events: vec![hb] })),
                })
                .await?;
                if tick.is_multiple_of(2) {
                    seq += 1;
                    send(seq, vec![ev(seq, event::Kind::Metrics(metrics()))], 1).await?;
                }
                tick += 1;
                if run.bunched {
                    tokio::time::sleep(PERIOD).await;
                } else {
                    next += PERIOD;
                    tokio::time::sleep_until(next.into()).await;
                }
            }
        }
    }
    // Let the last acks arrive.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while !inflight.lock().await.is_empty() && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tx);
    reader.abort();
    Ok(())
}

// === decode-and-drop server ===

struct DecodeAndDrop;

#[tonic::async_trait]
impl AgentService for DecodeAndDrop {
    async fn enroll(
        &self,
        _: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unimplemented("decode-and-drop server"))
    }
    type ConnectStream = ReceiverStream<Result<CollectorMessage, Status>>;
    async fn connect(
        &self,
        req: Request<Streaming<ingest::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(async move {
            let ack = |up_to| {
                Ok(CollectorMessage {
                    kind: Some(collector_message::Kind::Ack(v1::Ack {
                        up_to_seq: up_to,
                        max_rate_hint: 0,
                        ..Default::default()
                    })),
                })
            };
            let mut last = 0;
            while let Ok(Some(m)) = inbound.message().await {
                match v1::AgentMessage::from(m).kind {
                    Some(agent_message::Kind::Hello(_)) if tx.send(ack(0)).await.is_err() => {
                        return;
                    }
                    Some(agent_message::Kind::Hello(_)) => {}
                    Some(agent_message::Kind::Batch(b)) => {
                        let max = b.events.iter().map(|e| e.seq).max().unwrap_or(0);
                        if max > last {
                            last = max;
                            if tx.send(ack(last)).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn drop_server(pki: &Path, port: u16) -> anyhow::Result<()> {
    let read = |f: &str| {
        std::fs::read_to_string(pki.join(f)).with_context(|| format!("{}/{f}", pki.display()))
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem")?, read("server.key")?))
        .client_ca_root(Certificate::from_pem(read("ca.pem")?));
    Server::builder()
        .tls_config(tls)?
        .add_service(
            AgentServiceServer::new(DecodeAndDrop).max_decoding_message_size(64 * 1024 * 1024),
        )
        .serve(([127, 0, 0, 1], port).into())
        .await?;
    Ok(())
}

// === orchestration ===

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The value of counter `name` (a line `name value`) on the collector's `/metrics`.
fn scrape(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    conn.take(1 << 20).read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// After the traffic stopped: how far the judgment engine was behind (CI versions written
/// but not yet judged), how long it took to judge them all (at most `limit`), and the CPU
/// seconds the collector (process `pid`) used meanwhile.
fn judgment_backlog(
    port: u16,
    pid: u32,
    limit: Duration,
) -> Option<(f64, f64, Duration, Option<f64>)> {
    let cpu_from = cpu_seconds(pid);
    let written = scrape(port, "cmdb_ci_versions_total")?;
    let judged = scrape(port, "cmdb_judged_versions_total")?;
    let t = Instant::now();
    while t.elapsed() < limit {
        if scrape(port, "cmdb_judged_versions_total")? >= written {
            let cpu = cpu_seconds(pid).zip(cpu_from).map(|(b, a)| b - a);
            return Some((written, written - judged, t.elapsed(), cpu));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on {port}")
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU time of the server and of this simulator over the measured window.
    cpu: Option<WindowCpu>,
    /// What `per_second` counts over the measured window.
    count: u64,
}

/// CPU seconds (user + system, every thread) a process used over the measured window.
#[derive(Clone, Copy)]
struct WindowCpu {
    server: f64,
    simulator: f64,
}

/// CPU seconds (user + system, all threads, exited ones included) of process `pid` so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    cmdb_bench::pid_cpu(pid).map(|d| d.as_secs_f64())
}

/// Both processes' CPU seconds now.
fn cpu_pair(server: u32) -> Option<(f64, f64)> {
    Some((cpu_seconds(server)?, cpu_seconds(std::process::id())?))
}

/// What one `drive` simulates besides the agents.
#[derive(Clone, Copy)]
struct Load {
    scenario: Scenario,
    seconds: u64,
    changes: usize,
    inflight: usize,
    warmup: Duration,
    bunched: bool,
}

/// Simulates `agents` against the server at `url` (process `server`, for its CPU time).
async fn drive(url: &str, ca: &str, agents: Vec<SimAgent>, load: Load, server: u32) -> Figures {
    let Load {
        scenario,
        seconds,
        changes,
        inflight,
        warmup,
        bunched,
    } = load;
    let n = agents.len();
    let start_at = Instant::now();
    let run = Arc::new(Run {
        scenario,
        changes,
        inflight: inflight.max(1),
        packages: 800,
        start_at,
        measure_from: start_at + warmup,
        until: start_at + warmup + Duration::from_secs(seconds),
        totals: Arc::default(),
        latencies: Arc::default(),
        bunched,
    });
    let ca = Arc::new(ca.to_owned());
    let mut handles = Vec::new();
    for (i, a) in agents.into_iter().enumerate() {
        handles.push(tokio::spawn(simulate(
            url.to_owned(),
            Arc::clone(&ca),
            a,
            i,
            n,
            Arc::clone(&run),
        )));
    }
    // CPU over the measured window only (not enrollment, snapshots or warm-up).
    let window = tokio::spawn({
        let (from, until) = (run.measure_from, run.until);
        async move {
            tokio::time::sleep_until(from.into()).await;
            let start = cpu_pair(server)?;
            tokio::time::sleep_until(until.into()).await;
            let end = cpu_pair(server)?;
            Some(WindowCpu {
                server: end.0 - start.0,
                simulator: end.1 - start.1,
            })
        }
    });
    for h in handles {
        if !matches!(h.await, Ok(Ok(()))) {
            run.totals.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let cpu = window.await.ok().flatten();
    let mut lat = run.latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
            * 1000.0
    };
    let count = if scenario == Scenario::Changes {
        run.totals.changes.load(Ordering::Relaxed)
    } else {
        run.totals.acked_batches.load(Ordering::Relaxed)
    };
    Figures {
        per_second: count as f64 / seconds as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: run.totals.errors.load(Ordering::Relaxed),
        cpu,
        count,
    }
}

/// "server 1.31 cores (19.4 µs per change), simulator 0.55 cores (8.1 µs)".
fn cpu_line(f: &Figures, seconds: u64, unit: &str) -> String {
    let Some(cpu) = f.cpu else {
        return "CPU not read (no /proc)".to_owned();
    };
    let per = |s: f64| {
        if f.count == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", s * 1e6 / f.count as f64)
        }
    };
    format!(
        "{:.2} cores ({} µs per {unit}), simulator {:.2} cores ({} µs)",
        cpu.server / seconds as f64,
        per(cpu.server),
        cpu.simulator / seconds as f64,
        per(cpu.simulator)
    )
}

/// Collector settings a run may change from the collector's defaults.
#[derive(Clone, Copy, Default)]
struct Knobs {
    cache_mib: Option<u64>,
    worker_nice: Option<i32>,
    concurrent_applies: Option<usize>,
}

async fn run_bench(
    load: Load,
    n: usize,
    collector_bin: PathBuf,
    skip_drop: bool,
    knobs: Knobs,
) -> anyhow::Result<()> {
    let Knobs {
        cache_mib,
        worker_nice,
        concurrent_applies,
    } = knobs;
    let Load {
        scenario,
        seconds,
        warmup,
        ..
    } = load;
    let me = std::env::current_exe()?;
    let work = std::env::temp_dir().join(format!("cmdb-fleet-{}", std::process::id()));
    let data = work.join("collector");
    std::fs::create_dir_all(&data)?;
    let status = Command::new(&collector_bin)
        .args(["pki", "init", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("pki init failed");
    }
    let (grpc, http) = (free_port()?, free_port()?);
    std::fs::write(
        work.join("collector.toml"),
        format!(
            "data_dir = {:?}\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n[limits]\nper_agent_events_per_second = 1000000\nmax_streams = {}\n{}{}{}",
            data.display().to_string(),
            n + 100,
            concurrent_applies.map_or(String::new(), |c| format!("concurrent_applies = {c}\n")),
            cache_mib.map_or(String::new(), |m| format!(
                "[store]\ncache_bytes = {}\n",
                m * 1024 * 1024
            )),
            worker_nice.map_or(String::new(), |n| format!(
                "[judgment]\nworker_nice = {n}\n"
            ))
        ),
    )?;
    let collector = Proc(
        Command::new(&collector_bin)
            .args(["serve", "--config"])
            .arg(work.join("collector.toml"))
            .env("CMDB_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_port(grpc)?;
    let token = String::from_utf8(
        Command::new(&collector_bin)
            .args([
                "token",
                "create",
                "--uses",
                &n.to_string(),
                "--ttl",
                "1h",
                "--data-dir",
            ])
            .arg(&data)
            .stderr(Stdio::null())
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let ca = std::fs::read_to_string(data.join("pki/ca.pem"))?;
    let url = format!("https://127.0.0.1:{grpc}");
    let t = Instant::now();
    let agents = enroll_all(&url, &ca, &token, n).await?;
    eprintln!("enrolled {n} agents in {:.1} s", t.elapsed().as_secs_f64());
    let rss_after_enroll = peak_rss_mib(collector.0.id());
    let reuse: Vec<(String, String, String, String, v1::HostIdentity)> = agents
        .iter()
        .map(|a| {
            (
                a.agent_id.clone(),
                a.instance_id.clone(),
                a.cert.clone(),
                a.key.clone(),
                a.identity.clone(),
            )
        })
        .collect();
    let started = Instant::now();
    let ours = drive(&url, &ca, agents, load, collector.0.id()).await;
    let traffic = started.elapsed();
    let backlog = if scenario == Scenario::Changes {
        let pid = collector.0.id();
        tokio::task::spawn_blocking(move || judgment_backlog(http, pid, Duration::from_secs(300)))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let rss = peak_rss_mib(collector.0.id());
    drop(collector);

    let (unit, cpu_unit) = if scenario == Scenario::Changes {
        ("CI changes/s", "change")
    } else {
        ("metrics batches/s", "batch")
    };
    println!(
        "scenario {:?}: {n} agents, {seconds} s measured after {} s of warm-up{}{}{}{}",
        if scenario == Scenario::Changes {
            "changes"
        } else {
            "fleet"
        },
        warmup.as_secs(),
        if load.bunched { ", bunched" } else { "" },
        cache_mib.map_or(String::new(), |m| format!(", sled cache {m} MiB")),
        worker_nice.map_or(String::new(), |n| format!(", worker_nice {n}")),
        concurrent_applies.map_or(String::new(), |c| format!(", concurrent_applies {c}")),
    );
    println!("| server | {unit} | ack p50 ms | ack p99 ms | peak RSS MiB | failed streams |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| cmdb-collector (sled, durable acks) | {:.0} | {:.2} | {:.2} | {rss:.0} (after enrollment {rss_after_enroll:.0}) | {} |",
        ours.per_second, ours.p50_ms, ours.p99_ms, ours.errors
    );
    println!(
        "CPU over the measured window: cmdb-collector {}",
        cpu_line(&ours, seconds, cpu_unit)
    );
    if let Some((written, behind, drained, cpu)) = backlog {
        let all = traffic + drained;
        println!(
            "judgment: {behind:.0} of {written:.0} CI versions still to judge when the traffic \
             stopped, all judged {:.1} s later; {:.0} versions/s written and judged end to end \
             ({:.1} s)",
            drained.as_secs_f64(),
            written / all.as_secs_f64(),
            all.as_secs_f64()
        );
        if let Some(cpu) = cpu.filter(|_| behind > 0.0) {
            println!(
                "judgment catch-up: collector {:.2} cores, {:.1} µs of collector CPU per version judged",
                cpu / drained.as_secs_f64().max(1e-3),
                cpu * 1e6 / behind
            );
        }
    } else if scenario == Scenario::Changes {
        println!("judgment: backlog not drained within 300 s (or /metrics unreadable)");
    }
    if !skip_drop {
        let port = free_port()?;
        let dropper = Proc(
            Command::new(&me)
                .args(["drop-server", "--pki"])
                .arg(data.join("pki"))
                .args(["--port", &port.to_string()])
                .spawn()?,
        );
        wait_port(port)?;
        let agents = reuse
            .into_iter()
            .map(|(agent_id, instance_id, cert, key, identity)| SimAgent {
                agent_id,
                instance_id,
                identity,
                cert,
                key,
            })
            .collect();
        let url = format!("https://127.0.0.1:{port}");
        let upper = drive(&url, &ca, agents, load, dropper.0.id()).await;
        let drss = peak_rss_mib(dropper.0.id());
        println!(
            "| decode-and-drop (upper bound) | {:.0} | {:.2} | {:.2} | {drss:.0} | {} |",
            upper.per_second, upper.p50_ms, upper.p99_ms, upper.errors
        );
        println!(
            "CPU over the measured window: decode-and-drop {}",
            cpu_line(&upper, seconds, cpu_unit)
        );
        if upper.per_second > 0.0 {
            println!(
                "ratio collector / decode-and-drop: {:.2}",
                ours.per_second / upper.per_second
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::DropServer { pki, port } => rt.block_on(drop_server(&pki, port)),
        Cmd::Run {
            scenario,
            agents,
            seconds,
            changes,
            inflight,
            collector_bin,
            skip_drop,
            warmup,
            bunched,
            cache_mib,
            worker_nice,
            concurrent_applies,
        } => {
            let bin = match collector_bin {
                Some(b) => b,
                None => std::env::current_exe()?
                    .parent()
                    .map(|d| d.join("cmdb-collector"))
                    .context("no directory for this executable")?,
            };
            let warmup = Duration::from_secs(warmup.unwrap_or(match scenario {
                Scenario::Changes => 2,
                Scenario::Fleet => 0,
            }));
            let load = Load {
                scenario,
                seconds,
                changes,
                inflight,
                warmup,
                bunched,
            };
            rt.block_on(run_bench(
                load,
                agents,
                bin,
                skip_drop,
                Knobs {
                    cache_mib,
                    worker_nice,
                    concurrent_applies,
                },
            ))
        }
    }
}
