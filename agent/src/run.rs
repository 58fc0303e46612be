//! `cmdb-agent run`: the resident agent. Schedules discovery (full inventory at start and
//! every `inventory` ± jitter; listening ports, connections and services every `fast`;
//! watched files re-hashed on inotify events and verified every `file_verify`), service
//! monitors (every `monitor`, and at once when the set changes: see [`crate::monitor`]),
//! metrics (sampled every `metrics_sample`, summarised per `metrics_window`), turns
//! inventories into deltas against the last queued one, appends everything to the durable
//! outbox, and lets [`crate::transport`] deliver it. Heartbeats never go through the outbox.
//!
//! Monitor results are `monitor` CIs: a round is queued as a partial inventory whose only
//! report is `monitor` (so a status change is a delta at once), and the latest round is
//! spliced into every full inventory (so snapshots carry it). Rounds are not paced by the
//! CPU budget: they are small and their point is to be on time. The collector's `Config`
//! is kept in the state directory, so a restarted agent evaluates the collector's monitors
//! in its first snapshot instead of reporting them removed until it reconnects.
//!
//! Why deltas are computed against the last *queued* inventory rather than the last
//! acknowledged one: an event is durable in the outbox before anyone sees it, and the outbox
//! either delivers it or (on overflow) replaces inventory events by a Gap and forces a full
//! snapshot, so the queued inventory is exactly what the collector will have once the
//! outbox drains. Diffing against the acked one would resend the same changes in every
//! delta while the collector is unreachable.
//!
//! On SIGTERM: a Shutdown event is queued, the agent waits (bounded) for it to be acked,
//! then exits. A restart always begins with a full snapshot, so nothing depends on
//! in-memory state surviving a crash.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cmdb_proto::convert::timestamp_from_system;
use cmdb_proto::model::{
    self, AgentInfo, CollectorReport, CollectorState, HostIdentity, Inventory, class,
};
use cmdb_proto::v1::{self, event};
use rand::Rng;
use tokio::sync::{Mutex, mpsc, watch};

use crate::budget::Budget;
use crate::config::AgentConfig;
use crate::discover::{self, Context, Options};
use crate::hostroot::HostRoot;
use crate::metrics::{Sampler, Window};
use crate::monitor::{self, Checker, MonitorSpec, Round};
use crate::outbox::{Outbox, OutboxConfig};
use crate::tls::TlsFiles;
use crate::transport::{self, FromCollector, HelloInfo, Link, TransportSettings};
use crate::watch::{FileWatcher, WatchEvent};

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Not enrolled yet: no certificate in the state directory.
    #[error(
        "{0} is missing: enroll first (cmdb-agent enroll --collector URL --token T --ca-file CA)"
    )]
    NotEnrolled(String),
    /// The state directory is unusable.
    #[error("state: {0}")]
    State(#[from] crate::state::StateError),
    /// The outbox cannot be opened.
    #[error("outbox: {0}")]
    Outbox(String),
    /// The file watcher could not start.
    #[error("file watch: {0}")]
    Watch(String),
}

/// Classes refreshed on the fast schedule.
const FAST_CLASSES: &[&str] = &[class::LISTENING_PORT, class::CONNECTION, class::SERVICE];

struct Agent {
    ctx: Context,
    info: AgentInfo,
    link: Arc<Link>,
    /// The last inventory queued in the outbox (None until the first snapshot).
    base: Mutex<Option<Inventory>>,
    last_snapshot: Mutex<Option<Instant>>,
    snapshot_every: Duration,
    budget: Budget,
    /// Asks the inventory task for a full discovery now (a snapshot is owed).
    full_requested: tokio::sync::Notify,
    /// The outbox required a snapshot while only a partial discovery was at hand.
    snapshot_owed: std::sync::atomic::AtomicBool,
    /// Evaluates service monitors.
    checker: Arc<Checker>,
    /// The latest monitor round, spliced into every full inventory.
    monitor_round: Mutex<Option<Round>>,
}

fn jittered(every: Duration, percent: u8) -> Duration {
    let p = f64::from(percent.min(50)) / 100.0;
    let f = rand::rng().random_range((1.0 - p)..=(1.0 + p));
    every.mul_f64(f)
}

fn now_event(kind: event::Kind) -> v1::Event {
    v1::Event {
        seq: 0,
        observed_at: Some(timestamp_from_system(SystemTime::now())),
        kind: Some(kind),
    }
}

impl Agent {
    async fn append(&self, ev: v1::Event) -> bool {
        let outbox = self.link.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.append(ev)).await {
            Ok(Ok(_)) => {
                self.link.new_events.notify_one();
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Cannot append to the outbox; the event is lost and a snapshot will follow.");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "Outbox worker failed.");
                false
            }
        }
    }

    /// Runs discovery for `only` (None = everything) off the async threads.
    async fn discover(&self, only: Option<BTreeSet<String>>) -> Option<Inventory> {
        self.budget.pace().await;
        if let Err(e) = self.budget.memory_check() {
            tracing::warn!(error = %e, "Over the memory budget; discovery skipped this round.");
            return None;
        }
        let ctx = self.ctx.clone();
        let info = self.info.clone();
        tokio::task::spawn_blocking(move || match only {
            Some(only) => discover::run_partial(&ctx, info, &only),
            None => discover::run(&ctx, info, None),
        })
        .await
        .ok()
    }

    /// Queues `current` as a snapshot (first time, when due, when forced) or as a delta.
    /// A partial inventory (`full` false) never becomes a snapshot. A full one gets the
    /// latest monitor round first: discovery does not evaluate monitors.
    async fn queue_inventory(&self, mut current: Inventory, full: bool, force_snapshot: bool) {
        let mut base = self.base.lock().await;
        if full && let Some(round) = self.monitor_round.lock().await.as_ref() {
            current
                .collectors
                .retain(|c| c.name != monitor::REPORT_NAME);
            current.items.retain(|i| i.class != class::MONITOR);
            current.collectors.push(round.report.clone());
            current.items.extend(round.items.iter().cloned());
            current.canonicalize();
        }
        let outbox = self.link.outbox.clone();
        let required = tokio::task::spawn_blocking(move || outbox.take_snapshot_required())
            .await
            .unwrap_or(true)
            | self
                .snapshot_owed
                .swap(false, std::sync::atomic::Ordering::SeqCst);
        let due = self
            .last_snapshot
            .lock()
            .await
            .is_none_or(|t| t.elapsed() >= self.snapshot_every);
        let want_snapshot = base.is_none() || force_snapshot || required || due;
        if want_snapshot && !full {
            // A snapshot is owed: ask for the full discovery that will carry it.
            if required {
                tracing::info!("Snapshot required; requesting a full discovery.");
                self.snapshot_owed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.full_requested.notify_one();
            return;
        }
        let event = if want_snapshot {
            let snap = crate::delta::snapshot(&current);
            self.set_hello_hash(&current);
            *base = Some(current);
            *self.last_snapshot.lock().await = Some(Instant::now());
            Some(event::Kind::Snapshot(snap))
        } else if let Some(b) = base.take() {
            let result = crate::delta::diff(b, current);
            let kind = result.delta.map(event::Kind::Delta);
            self.set_hello_hash(&result.next_base);
            *base = Some(result.next_base);
            kind
        } else {
            None
        };
        if let Some(kind) = event
            && !self.append(now_event(kind)).await
        {
            // The change did not reach the outbox: forget the base so that the next full
            // discovery, requested now, is queued as a snapshot, which restates it.
            *base = None;
            self.full_requested.notify_one();
        }
    }

    /// Evaluates `specs` off the async threads and keeps the round for the next snapshot.
    async fn evaluate_monitors(&self, specs: Vec<MonitorSpec>) -> Round {
        let checker = Arc::clone(&self.checker);
        let round = tokio::task::spawn_blocking(move || checker.evaluate(&specs))
            .await
            .unwrap_or_else(|e| Round::failed(format!("monitor round failed: {e}")));
        *self.monitor_round.lock().await = Some(round.clone());
        round
    }

    /// Queues a monitor round as a partial inventory: a changed status is a delta now.
    async fn queue_monitors(&self, round: Round) {
        let mut inv = Inventory {
            schema: model::SCHEMA.to_owned(),
            collected_at: SystemTime::now(),
            agent: self.info.clone(),
            // A partial inventory's host block is unused (the base keeps its own).
            host: HostIdentity::default(),
            collectors: vec![round.report],
            items: round.items,
            relations: Vec::new(),
        };
        inv.canonicalize();
        self.queue_inventory(inv, false, false).await;
    }

    fn set_hello_hash(&self, inv: &Inventory) {
        let identity = inv.host.clone();
        let hash = inv.content_hash().to_vec();
        self.link.hello.send_modify(|h| {
            h.identity = identity;
            h.inventory_hash = hash;
        });
    }

    /// Re-hashes the changed files and queues the resulting delta.
    async fn files_changed(&self, paths: Vec<String>) {
        // Only the file class is re-evaluated: the refresh starts from the base's files.
        let Some(mut current) = self
            .base
            .lock()
            .await
            .as_ref()
            .map(|b| crate::delta::class_part(b, class::FILE))
        else {
            return;
        };
        let root = self.ctx.root.clone();
        let options = self.ctx.options.clone();
        let described = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|p| {
                    let r = discover::files::describe_file(&root, &p, &options);
                    (p, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (path, result) in described {
            current
                .items
                .retain(|i| !(i.class == class::FILE && i.key == path));
            match result {
                Ok(item) => current.items.push(item),
                Err(e) => {
                    tracing::debug!(path, error = %e, "Watched file not describable; treated as removed.")
                }
            }
        }
        // The only report: the classes of every other collector are kept from the base.
        current.collectors = vec![CollectorReport {
            name: "files".into(),
            status: CollectorState::Ok,
            duration_ms: 0,
            items: 0,
            message: None,
            classes: vec![class::FILE.into()],
        }];
        current.collected_at = SystemTime::now();
        current.canonicalize();
        self.queue_inventory(current, false, false).await;
    }
}

/// The monitors of `agent.toml` and the effective set with the collector's.
struct MonitorSet {
    local: Vec<MonitorSpec>,
    /// What is evaluated (sorted by name).
    specs: Vec<MonitorSpec>,
}

impl MonitorSet {
    /// Takes the collector's monitors from `config`; true when the effective set changed.
    fn adopt(&mut self, config: &v1::Config) -> bool {
        let (remote, skipped) = monitor::from_collector(config);
        for why in &skipped {
            tracing::warn!(monitor = %why, "A monitor from the collector is invalid and skipped.");
        }
        let (specs, dropped) = monitor::effective(&self.local, &remote);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                limit = monitor::MAX_MONITORS,
                "Monitors from the collector beyond the limit are skipped."
            );
        }
        if specs == self.specs {
            return false;
        }
        self.specs = specs;
        true
    }
}

/// After a burst of work (a discovery pass, a window's metrics) is queued and freed: hands
/// the freed memory back to the OS, which glibc would otherwise keep resident.
fn release_free_memory() {
    cmdb_malloc::release_free_memory();
}

fn only(classes: &[&str]) -> BTreeSet<String> {
    classes.iter().map(|c| (*c).to_owned()).collect()
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<(), RunError> {
    crate::tls::install_crypto_provider();
    if let Err(e) = Budget::lower_priority() {
        tracing::info!(error = %e, "Could not lower the agent's priority.");
    }
    let files = TlsFiles {
        ca: cfg.tls.ca.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    };
    for p in [&files.ca, &files.cert, &files.key] {
        if !p.exists() {
            return Err(RunError::NotEnrolled(p.display().to_string()));
        }
    }
    let instance_id = crate::state::instance_id(&cfg.state_dir)?;
    let outbox_cfg = OutboxConfig {
        dir: cfg.state_dir.join("outbox"),
        max_bytes: cfg.outbox.max_bytes,
        cache_bytes: cfg.outbox.cache_bytes,
    };
    let opened = tokio::task::spawn_blocking(move || Outbox::open(outbox_cfg))
        .await
        .map_err(|e| RunError::Outbox(e.to_string()))?
        .map_err(|e| RunError::Outbox(e.to_string()))?;
    if let Some(moved) = &opened.moved_aside {
        tracing::error!(moved_to = %moved.display(), "The outbox was corrupt and has been moved aside; a full snapshot follows.");
    }
    let options = Options {
        watch_globs: cfg.watch.globs.clone(),
        file_hash_cap_bytes: cfg.watch.hash_cap_bytes,
        max_watched_files: cfg.watch.max_files,
        timeout_scale: 1.0,
    };
    let ctx = Context {
        root: HostRoot::new(cfg.host_root.clone()),
        options,
    };
    let info = AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        instance_id: instance_id.clone(),
    };
    let (hello_tx, _) = watch::channel(HelloInfo {
        agent_version: info.version.clone(),
        instance_id: instance_id.clone(),
        ..HelloInfo::default()
    });
    let (connected_tx, _) = watch::channel(false);
    let kept_config = {
        let dir = cfg.state_dir.clone();
        match tokio::task::spawn_blocking(move || crate::state::collector_config(&dir)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "The kept collector configuration is unusable; its monitors wait for the collector.");
                None
            }
            Err(_) => None,
        }
    };
    let mut monitors = MonitorSet {
        local: cfg.monitors.clone(),
        specs: Vec::new(),
    };
    if let Some(c) = &kept_config {
        monitors.adopt(c);
    } else {
        monitors.specs = monitor::effective(&monitors.local, &[]).0;
    }
    // Initialised with the kept Config, so that the collector resending it is no change.
    let (config_tx, config_rx) = watch::channel(kept_config);
    let link = Arc::new(Link {
        outbox: opened.outbox,
        new_events: tokio::sync::Notify::new(),
        hello: hello_tx,
        connected: connected_tx,
        collector_config: config_tx,
        started: Instant::now(),
    });
    let agent = Arc::new(Agent {
        ctx,
        info,
        link: Arc::clone(&link),
        base: Mutex::new(None),
        last_snapshot: Mutex::new(None),
        snapshot_every: cfg.intervals.snapshot,
        budget: Budget::new(cfg.budget.cpu_percent, cfg.budget.memory_bytes),
        full_requested: tokio::sync::Notify::new(),
        snapshot_owed: std::sync::atomic::AtomicBool::new(false),
        checker: Arc::new(Checker::new(
            HostRoot::new(cfg.host_root.clone()),
            monitor::DEFAULT_CHECK_TIMEOUT.min(cfg.budget.command_timeout),
        )),
        monitor_round: Mutex::new(None),
    });

    // The first full inventory precedes the first connection: Hello carries its identity.
    // The first monitor round runs beside it, so the first snapshot carries the monitors.
    let (inv, _) = tokio::join!(
        agent.discover(None),
        agent.evaluate_monitors(monitors.specs.clone())
    );
    if let Some(inv) = inv {
        agent.queue_inventory(inv, true, true).await;
    }
    release_free_memory();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<FromCollector>(8);
    let settings = TransportSettings {
        endpoints: cfg.collectors.clone(),
        tls: files,
        connect_timeout: cfg.transport.connect_timeout,
        backoff_initial: cfg.transport.backoff_initial,
        backoff_max: cfg.transport.backoff_max,
        max_batch_events: usize::try_from(cfg.transport.max_batch_events).unwrap_or(500),
        max_batch_bytes: usize::try_from(cfg.transport.max_batch_bytes).unwrap_or(usize::MAX),
        max_inflight_events: 5_000,
        heartbeat: cfg.intervals.heartbeat,
    };
    let transport = tokio::spawn(transport::run(
        Arc::clone(&link),
        settings,
        cmd_tx,
        stop_rx.clone(),
    ));

    let mut tasks = Vec::new();
    // Full inventory every `inventory` ± jitter, and on the collector's command.
    let (full_tx, mut full_rx) = mpsc::channel::<bool>(4);
    {
        let agent = Arc::clone(&agent);
        let every = cfg.intervals.inventory;
        let jitter = cfg.intervals.inventory_jitter_percent;
        tasks.push(tokio::spawn(async move {
            loop {
                let force = tokio::select! {
                    () = tokio::time::sleep(jittered(every, jitter)) => false,
                    f = full_rx.recv() => f.unwrap_or(false),
                    () = agent.full_requested.notified() => false,
                };
                if let Some(inv) = agent.discover(None).await {
                    agent.queue_inventory(inv, true, force).await;
                }
                release_free_memory();
            }
        }));
    }
    {
        let full_tx = full_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(c) = cmd_rx.recv().await {
                let _ = full_tx.send(matches!(c, FromCollector::FullSnapshot)).await;
            }
        }));
    }
    // Ports, connections and services every `fast`.
    {
        let agent = Arc::clone(&agent);
        let every = cfg.intervals.fast;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(jittered(every, 10)).await;
                if let Some(inv) = agent.discover(Some(only(FAST_CLASSES))).await {
                    agent.queue_inventory(inv, false, false).await;
                }
                release_free_memory();
            }
        }));
    }
    // Service monitors every `monitor` ± 10 %, and at once when the set changes.
    {
        let agent = Arc::clone(&agent);
        let every = cfg.intervals.monitor;
        let state_dir = cfg.state_dir.clone();
        let mut config_rx = config_rx;
        tasks.push(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + jittered(every, 10);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {
                        if monitors.specs.is_empty() {
                            next = tokio::time::Instant::now() + jittered(every, 10);
                            continue;
                        }
                    }
                    changed = config_rx.changed() => {
                        if changed.is_err() {
                            // The link (and with it the sender) lives as long as the agent.
                            std::future::pending::<()>().await;
                        }
                        let Some(config) = config_rx.borrow_and_update().clone() else {
                            continue;
                        };
                        let dir = state_dir.clone();
                        let kept = config.clone();
                        match tokio::task::spawn_blocking(move || {
                            crate::state::save_collector_config(&dir, &kept)
                        })
                        .await
                        {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "Cannot keep the collector configuration; after a restart its monitors wait for the collector."),
                            Err(_) => {}
                        }
                        if !monitors.adopt(&config) {
                            continue;
                        }
                        tracing::info!(monitors = monitors.specs.len(), "The monitor set changed; evaluating now.");
                    }
                }
                let round = agent.evaluate_monitors(monitors.specs.clone()).await;
                agent.queue_monitors(round).await;
                next = tokio::time::Instant::now() + jittered(every, 10);
            }
        }));
    }
    // Watched files: inotify hints, verified on a schedule.
    let (watch_tx, mut watch_rx) = mpsc::channel::<WatchEvent>(16);
    let _watcher = match FileWatcher::start(
        agent.ctx.root.clone(),
        &cfg.watch.globs,
        cfg.intervals.file_debounce,
        watch_tx,
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "File watching unavailable; watched files are verified on schedule only.");
            None
        }
    };
    {
        let agent = Arc::clone(&agent);
        let verify = cfg.intervals.file_verify;
        tasks.push(tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    e = watch_rx.recv() => e,
                    () = tokio::time::sleep(jittered(verify, 10)) => Some(WatchEvent::Rescan),
                };
                match ev {
                    Some(WatchEvent::Changed(paths)) => agent.files_changed(paths).await,
                    Some(WatchEvent::Rescan) => {
                        if let Some(inv) = agent.discover(Some(only(&[class::FILE]))).await {
                            agent.queue_inventory(inv, false, false).await;
                        }
                    }
                    None => tokio::time::sleep(verify).await,
                }
                release_free_memory();
            }
        }));
    }
    // Metrics: a sample every `metrics_sample`, a summary event per window.
    {
        let agent = Arc::clone(&agent);
        let sample_every = cfg.intervals.metrics_sample;
        let window_len = cfg.intervals.metrics_window;
        tasks.push(tokio::spawn(async move {
            let mut sampler = Sampler::new(agent.ctx.root.clone());
            let mut window = Window::new(SystemTime::now(), window_len);
            let mut window_started = Instant::now();
            let mut tick = tokio::time::interval(sample_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sample = sampler.sample(SystemTime::now());
                window.push(&sample);
                if window_started.elapsed() >= window_len {
                    let summary = window.summarise();
                    window = Window::new(SystemTime::now(), window_len);
                    window_started = Instant::now();
                    if !summary.summaries.is_empty() {
                        agent.append(now_event(event::Kind::Metrics(summary))).await;
                    }
                    // Metrics dropped for room during this window reach the collector as
                    // one Gap, so that every loss is known there.
                    let outbox = agent.link.outbox.clone();
                    if let Ok(Ok(true)) =
                        tokio::task::spawn_blocking(move || outbox.report_dropped_metrics()).await
                    {
                        agent.link.new_events.notify_one();
                    }
                    // Also what the transport freed since (encoded batches, acks).
                    release_free_memory();
                }
            }
        }));
    }

    termination().await;
    tracing::info!("Stopping: sending a graceful Shutdown event.");
    for t in &tasks {
        t.abort();
    }
    let shutdown = now_event(event::Kind::Shutdown(v1::Shutdown {
        reason: "SIGTERM".into(),
    }));
    let outbox = link.outbox.clone();
    let seq = tokio::task::spawn_blocking(move || outbox.append(shutdown))
        .await
        .ok()
        .and_then(Result::ok);
    link.new_events.notify_one();
    if let Some(seq) = seq {
        // Wait (bounded) for the collector to acknowledge the Shutdown. A session being set
        // up gets a moment to come up; with no collector reachable the stop is not held.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        while Instant::now() < deadline && link.outbox.acked_seq() < seq {
            if !*link.connected.borrow() && started.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = transport.await;
    Ok(())
}

async fn termination() {
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
        _ => std::future::pending::<()>().await,
    }
}
