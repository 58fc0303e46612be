//! The agents' gRPC service: `Enroll` and the authenticated `Connect` stream.
//!
//! Promises:
//! - **Authentication**: `Connect` requires a client certificate issued by our CA (verified by
//!   rustls); the agent id is its CN. Unknown, revoked and mismatched agents (a Hello whose
//!   instance id is not the one enrolled with that certificate) are refused with
//!   PERMISSION_DENIED and nothing is stored.
//! - **Ordering and exactly-once**: one live stream per agent (a new stream supersedes the
//!   old one); events are applied in seq order by [`Store::apply`], which skips seqs already
//!   applied, so at-least-once delivery has an exactly-once effect.
//! - **Ack means durable**: an Ack is sent only after `apply` returned, i.e. after the store
//!   flushed. The first Ack after Hello carries the agent's watermark so that it resumes.
//! - **Read-ahead, coalesced apply**: a stream's reader task decodes and checks (shape,
//!   revocation, rate) up to [`READ_AHEAD`] batches ahead of its applier. The applier takes
//!   the batches already waiting (never waits for more) until they hold `max_batch_events`
//!   events (so at most twice that per call), applies them in one `Store::apply`, and sends
//!   one cumulative Ack for the last seq. A backlog thus pays the store's fixed cost per call
//!   once per group instead of once per batch. Batches read before a refused message are
//!   still applied and acknowledged; the stream then ends with the refusal.
//! - **Config**: right after that first Ack, a `Config` built for the identified host by the
//!   [`AgentConfigFn`] hook (by default: the heartbeat interval, no monitors). The agent keeps
//!   the latest one and evaluates its monitors besides its own.
//! - **Bounds**: message size (tonic decode limit), read-ahead (4 batches per stream and
//!   [`READ_AHEAD_BYTES`] of encoded batches for all streams together), events per batch
//!   (INVALID_ARGUMENT), per-agent rate (token bucket; RESOURCE_EXHAUSTED when an agent
//!   ignores the hint), concurrent streams (UNAVAILABLE). A malformed message ends that stream alone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cmdb_proto::model::HostIdentity;
// The stream is decoded as the ingest view (`ItemChange.old_attrs` stepped over: the store
// keeps each CI's previous attributes itself) and its events converted to `v1`'s types.
use cmdb_proto::ingest::{AgentMessage, agent_message, agent_service_server::AgentService};
use cmdb_proto::v1::{
    self, CollectorMessage, EnrollRequest, EnrollResponse, collector_message, event,
};
use futures_util::Stream;
use prost::Message as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{AgentSettings, Limits};
use crate::pki::{self, Pki};
use crate::store::{AgentRecord, Store};
use crate::telemetry::Telemetry;
use crate::tokens::Tokens;

/// How long an agent has to send Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Outbound messages buffered per stream (acks are tiny; the agent reads them promptly).
const OUTBOUND_BUFFER: usize = 32;
/// Batches of a stream decoded and checked ahead of the one being applied.
const READ_AHEAD: usize = 4;
/// Encoded bytes of the batches read but not yet applied, all streams together: a reader
/// waits for room before it queues a batch (and its agent, by HTTP/2 flow control), so the
/// read-ahead costs at most this much beyond one batch per stream, however many streams.
const READ_AHEAD_BYTES: usize = 64 * 1024 * 1024;

/// Builds the `Config` sent to an agent after its Hello was accepted, from the id of the host
/// CI it was identified as (`host-…`, the `host` column of `/api/v1/agents`).
///
/// Called once per accepted stream, on a blocking thread (it may read the store), before any
/// batch of that stream is applied. It must not fail: a hook with nothing to say returns the
/// default. What the agent does with the result: `monitors` are checked there (at most
/// [`cmdb_proto::monitor::MAX_MONITORS`], valid names and targets, unique names; the rest is
/// skipped and logged) and evaluated besides the agent's own, winning on a name clash; the
/// agent keeps the latest `Config` across restarts, so an empty `monitors` list removes
/// every monitor the collector gave it.
pub type AgentConfigFn = Arc<dyn Fn(&str) -> v1::Config + Send + Sync>;

/// The AgentService implementation.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
    agent_config: AgentConfigFn,
}

struct Inner {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    tokens: Arc<Tokens>,
    telemetry: Arc<Telemetry>,
    limits: Limits,
    streams: Arc<Semaphore>,
    /// The read-ahead's byte budget ([`READ_AHEAD_BYTES`] permits, one per encoded byte).
    read_ahead: Arc<Semaphore>,
    /// agent id → the notify that ends its current stream (superseded by a newer one).
    live: Mutex<HashMap<String, (u64, Arc<Notify>)>>,
    /// Turns to apply sequenced events (`[limits] concurrent_applies`).
    apply_slots: Arc<Semaphore>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl Ingest {
    pub fn new(
        store: Arc<dyn Store>,
        pki: Arc<Pki>,
        tokens: Arc<Tokens>,
        telemetry: Arc<Telemetry>,
        limits: Limits,
        agents: AgentSettings,
    ) -> Self {
        let streams = Arc::new(Semaphore::new(limits.max_streams));
        let heartbeat_seconds = u32::try_from(agents.heartbeat.as_secs()).unwrap_or(30);
        let agent_config: AgentConfigFn = Arc::new(move |_host: &str| v1::Config {
            heartbeat_seconds,
            ..Default::default()
        });
        Ingest {
            inner: Arc::new(Inner {
                store,
                pki,
                tokens,
                telemetry,
                streams,
                read_ahead: Arc::new(Semaphore::new(READ_AHEAD_BYTES)),
                live: Mutex::new(HashMap::new()),
                next_generation: std::sync::atomic::AtomicU64::new(1),
                apply_slots: Arc::new(Semaphore::new(limits.apply_slots())),
                limits,
            }),
            agent_config,
        }
    }

    /// Replaces the hook that builds each agent's `Config` (default: the heartbeat interval
    /// of `[agents]`, no monitors). Clones made earlier keep the hook they had.
    pub fn with_agent_config(self, f: AgentConfigFn) -> Self {
        Ingest {
            agent_config: f,
            ..self
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "Store failure while serving an agent.");
    Status::internal("collector store failure")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<CollectorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Ingest {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let req = request.into_inner();
        let inner = Arc::clone(&self.inner);
        let now = SystemTime::now();
        let result = blocking(move || {
            let resp = pki::enroll(&inner.pki, &inner.tokens, &req, now).map_err(Status::from)?;
            let identity = req
                .identity
                .as_ref()
                .map(HostIdentity::from)
                .unwrap_or_default();
            let record = AgentRecord::new(
                &resp.agent_id,
                &req.instance_id,
                &req.agent_version,
                identity,
                now,
            );
            inner.store.put_agent(&record).map_err(internal)?;
            Ok::<_, Status>(resp)
        })
        .await?;
        match &result {
            Ok(resp) => {
                self.inner.telemetry.enrollment("ok");
                tracing::info!(agent_id = %resp.agent_id, "Agent enrolled.");
            }
            Err(status) => {
                self.inner.telemetry.enrollment("refused");
                tracing::warn!(reason = %status.message(), "Enrollment refused.");
            }
        }
        result.map(Response::new)
    }

    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ConnectStream>, Status> {
        let inner = Arc::clone(&self.inner);
        let refuse = |reason: &'static str, status: Status| {
            inner.telemetry.refused(reason);
            tracing::warn!(reason, message = %status.message(), "Agent stream refused.");
            status
        };

        // === who is this? ===
        let agent_id = {
            let certs = request.peer_certs().ok_or_else(|| {
                refuse(
                    "no_certificate",
                    Status::unauthenticated("a client certificate is required; enroll first"),
                )
            })?;
            let leaf = certs.first().ok_or_else(|| {
                refuse(
                    "no_certificate",
                    Status::unauthenticated("a client certificate is required; enroll first"),
                )
            })?;
            pki::agent_id_from_cert(leaf.as_ref()).map_err(|e| {
                refuse(
                    "bad_certificate",
                    Status::unauthenticated(format!("unusable client certificate: {e}")),
                )
            })?
        };
        if inner.pki.is_revoked(&agent_id) {
            return Err(refuse(
                "revoked",
                Status::permission_denied("this agent has been revoked"),
            ));
        }
        let permit = Arc::clone(&inner.streams)
            .try_acquire_owned()
            .map_err(|_| {
                refuse(
                    "too_many_streams",
                    Status::unavailable("collector at its stream limit; retry later"),
                )
            })?;
        let store = Arc::clone(&inner.store);
        let id = agent_id.clone();
        let record = blocking(move || store.agent(&id))
            .await?
            .map_err(internal)?
            .ok_or_else(|| {
                refuse(
                    "unknown_agent",
                    Status::permission_denied("unknown agent; enroll again"),
                )
            })?;
        if record.revoked {
            return Err(refuse(
                "revoked",
                Status::permission_denied("this agent has been revoked"),
            ));
        }

        // === Hello ===
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(refuse(
                    "protocol",
                    Status::invalid_argument("the first message must be Hello"),
                ));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(refuse(
                    "protocol",
                    Status::deadline_exceeded("no Hello received in time"),
                ));
            }
        };
        if hello.instance_id != record.instance_id {
            return Err(refuse(
                "identity_mismatch",
                Status::permission_denied(
                    "the Hello's instance id is not the one this certificate was issued to",
                ),
            ));
        }
        let identity = hello
            .identity
            .as_ref()
            .map(HostIdentity::from)
            .unwrap_or_default();
        let now = SystemTime::now();
        let store = Arc::clone(&inner.store);
        let (aid, iid, ver) = (
            agent_id.clone(),
            hello.instance_id.clone(),
            hello.agent_version.clone(),
        );
        let host_id = blocking(move || {
            let host = store.identify(&aid, &iid, &identity, now)?;
            // The version the agent runs now (an upgrade keeps the enrollment).
            if let Some(mut rec) = store.agent(&aid)?
                && rec.version != ver
            {
                rec.version = ver;
                store.put_agent(&rec)?;
            }
            store.set_connected(&aid, true, now)?;
            Ok::<_, crate::store::StoreError>(host)
        })
        .await?
        .map_err(internal)?;

        // === supersede an older stream of the same agent ===
        let generation = inner
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        if let Ok(mut live) = inner.live.lock()
            && let Some((_, old)) = live.insert(agent_id.clone(), (generation, Arc::clone(&stop)))
        {
            old.notify_one();
        }
        inner.telemetry.agent_connected();
        tracing::info!(agent_id = %agent_id, host_id = %host_id, last_seq = record.last_seq, "Agent connected.");

        let hook = Arc::clone(&self.agent_config);
        let hid = host_id.clone();
        let config = blocking(move || hook(&hid)).await?;
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let first = [
            collector_message::Kind::Ack(ack(&inner.limits, record.last_seq)),
            collector_message::Kind::Config(config),
        ];
        for kind in first {
            let _ = tx.send(Ok(CollectorMessage { kind: Some(kind) })).await;
        }
        tokio::spawn(serve_stream(
            Arc::clone(&inner),
            agent_id,
            generation,
            stop,
            inbound,
            tx,
            permit,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// An Ack up to `up_to_seq` with the limits the agent must keep: the rate it may drain a
/// backlog at and the size of a Batch (an agent configured for larger batches than these
/// would be refused on every resend).
fn ack(limits: &Limits, up_to_seq: u64) -> v1::Ack {
    v1::Ack {
        up_to_seq,
        max_rate_hint: limits.per_agent_events_per_second,
        max_batch_events: u32::try_from(limits.max_batch_events).unwrap_or(u32::MAX),
        max_message_bytes: u64::try_from(limits.max_message_bytes).unwrap_or(u64::MAX),
    }
}

/// Per-agent token bucket: `rate` events/s sustained, bursts up to two seconds' worth.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.last = now;
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

fn kind_name(e: &v1::Event) -> &'static str {
    match e.kind {
        Some(event::Kind::Snapshot(_)) => "snapshot",
        Some(event::Kind::Delta(_)) => "delta",
        Some(event::Kind::Metrics(_)) => "metrics",
        Some(event::Kind::Heartbeat(_)) => "heartbeat",
        Some(event::Kind::Shutdown(_)) => "shutdown",
        Some(event::Kind::Gap(_)) => "gap",
        None => "empty",
    }
}

/// Checks a batch: bounded, sequenced events strictly increasing, heartbeats unsequenced.
fn validate(events: &[v1::Event], max: usize) -> Result<(), Status> {
    if events.len() > max {
        return Err(Status::invalid_argument(format!(
            "batch of {} events exceeds the limit of {max}",
            events.len()
        )));
    }
    let mut last = 0u64;
    for e in events {
        match (&e.kind, e.seq) {
            (None, _) => return Err(Status::invalid_argument("event without a kind")),
            (Some(event::Kind::Heartbeat(_)), 0) => {}
            (Some(event::Kind::Heartbeat(_)), _) => {
                return Err(Status::invalid_argument(
                    "heartbeats are not sequenced (seq 0)",
                ));
            }
            (Some(_), 0) => return Err(Status::invalid_argument("event without a seq")),
            (Some(_), s) if s <= last => {
                return Err(Status::invalid_argument(format!(
                    "seq {s} after {last}: events must be in increasing seq order"
                )));
            }
            (Some(_), s) => last = s,
        }
    }
    Ok(())
}

/// A checked batch, when it was decoded (for the ack latency), and its share of the
/// read-ahead budget, given back when it is dropped (applied, or the stream ended).
struct Received {
    batch: v1::Batch,
    at: Instant,
    budget: Option<OwnedSemaphorePermit>,
}

/// How a stream ended: closed by the agent (`Ok`), or why it is refused.
type StreamEnd = Result<(), Status>;

/// What a stream's reader hands to its applier, in arrival order.
enum Inbound {
    /// A checked batch.
    Batch(Received),
    /// The stream ends: the agent closed it (`Ok`), or why it is refused.
    End(StreamEnd),
}

/// Reads, decodes and checks the stream's messages while the applier is busy, so that the
/// next batches are ready (and may be applied together) when the current one is durable.
/// At most [`READ_AHEAD`] wait in `out`, within the shared [`READ_AHEAD_BYTES`]; past
/// that the reader waits, and so does the agent's stream (HTTP/2 flow control). Ends after
/// sending `End`, or when the applier is gone.
async fn read_stream(
    inner: Arc<Inner>,
    agent_id: String,
    mut inbound: Streaming<AgentMessage>,
    out: mpsc::Sender<Inbound>,
) {
    let mut limit = RateLimit::new(inner.limits.per_agent_events_per_second);
    loop {
        let item = match inbound.message().await {
            Ok(Some(msg)) => {
                let size = msg.encoded_len().clamp(1, READ_AHEAD_BYTES);
                match msg.kind {
                    Some(agent_message::Kind::Batch(b)) => {
                        match check(&inner, &agent_id, &mut limit, v1::Batch::from(b)) {
                            Ok(batch) => Inbound::Batch(Received {
                                batch,
                                at: Instant::now(),
                                budget: take_budget(&inner.read_ahead, size).await,
                            }),
                            Err(status) => Inbound::End(Err(status)),
                        }
                    }
                    _ => Inbound::End(Err(Status::invalid_argument(
                        "only Batch messages may follow Hello",
                    ))),
                }
            }
            Ok(None) => Inbound::End(Ok(())),
            Err(status) => Inbound::End(Err(status)),
        };
        let last = matches!(item, Inbound::End(_));
        if out.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Waits for `bytes` of the read-ahead budget (`None` only if the budget was closed,
/// which nothing does).
async fn take_budget(budget: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(bytes).unwrap_or(u32::MAX);
    Arc::clone(budget).acquire_many_owned(n).await.ok()
}

/// A batch as it arrives: well-formed, from an agent not revoked, within its rate.
fn check(
    inner: &Inner,
    agent_id: &str,
    limit: &mut RateLimit,
    batch: v1::Batch,
) -> Result<v1::Batch, Status> {
    if let Err(status) = validate(&batch.events, inner.limits.max_batch_events) {
        inner.telemetry.refused("malformed");
        return Err(status);
    }
    if inner.pki.is_revoked(agent_id) {
        inner.telemetry.refused("revoked");
        return Err(Status::permission_denied("this agent has been revoked"));
    }
    if !limit.take(batch.events.len()) {
        inner.telemetry.refused("rate");
        return Err(Status::resource_exhausted(format!(
            "more than {} events/s: follow the Ack's max_rate_hint",
            inner.limits.per_agent_events_per_second
        )));
    }
    Ok(batch)
}

/// Aborts the task when dropped (a stream's reader, when its applier ends for any reason).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a batch holds events other than heartbeats (they are applied to the store; a
/// heartbeat only updates the agent's liveness in memory).
fn sequenced(r: &Received) -> bool {
    r.batch
        .events
        .iter()
        .any(|e| !matches!(e.kind, Some(event::Kind::Heartbeat(_))))
}

/// The batches to apply together: the first, then those already read behind it
/// (`try_recv`: never waits), until they hold `max_events` events; and the stream's end if
/// the reader reached it. One `Store::apply` and one Ack cover them all: the store's
/// fixed cost per call (its writer, its commit, the flush an Ack waits for, the agent's
/// record) is paid once for the lot, which is what a backlog needs.
fn coalesce(
    first: Received,
    rx: &mut mpsc::Receiver<Inbound>,
    max_events: usize,
) -> (Vec<Received>, Option<StreamEnd>) {
    let mut batches = vec![first];
    let end = coalesce_into(&mut batches, rx, max_events);
    (batches, end)
}

/// Adds what is queued in `rx` to `batches` while they hold fewer than `max_events` events;
/// the stream's end, if it came.
fn coalesce_into(
    batches: &mut Vec<Received>,
    rx: &mut mpsc::Receiver<Inbound>,
    max_events: usize,
) -> Option<StreamEnd> {
    let mut events: usize = batches.iter().map(|r| r.batch.events.len()).sum();
    while events < max_events {
        match rx.try_recv() {
            Ok(Inbound::Batch(r)) => {
                events += r.batch.events.len();
                batches.push(r);
            }
            Ok(Inbound::End(end)) => return Some(end),
            Err(_) => break,
        }
    }
    None
}

async fn serve_stream(
    inner: Arc<Inner>,
    agent_id: String,
    generation: u64,
    stop: Arc<Notify>,
    inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<CollectorMessage, Status>>,
    _permit: OwnedSemaphorePermit,
) {
    let (read_tx, mut read_rx) = mpsc::channel(READ_AHEAD);
    let _reader = AbortOnDrop(tokio::spawn(read_stream(
        Arc::clone(&inner),
        agent_id.clone(),
        inbound,
        read_tx,
    )));
    let ended: StreamEnd = loop {
        let first = tokio::select! {
            m = read_rx.recv() => m,
            () = stop.notified() => break Err(Status::aborted("superseded by a newer stream of this agent")),
        };
        let first = match first {
            Some(Inbound::Batch(r)) => r,
            Some(Inbound::End(end)) => break end,
            None => break Ok(()),
        };
        let max_events = inner.limits.max_batch_events;
        let (mut batches, mut end) = coalesce(first, &mut read_rx, max_events);
        // Sequenced events wait for a turn to apply (`[limits] concurrent_applies`); what
        // the reader queues meanwhile is applied with them. Heartbeats alone do not wait.
        // The turn is given back once the apply is done, before the Ack is queued: an agent
        // slow to read its Acks holds no turn.
        let turn = if batches.iter().any(sequenced) {
            let turn = tokio::select! {
                t = Arc::clone(&inner.apply_slots).acquire_owned() => t.ok(),
                () = stop.notified() => break Err(Status::aborted("superseded by a newer stream of this agent")),
            };
            if end.is_none() {
                end = coalesce_into(&mut batches, &mut read_rx, max_events);
            }
            turn
        } else {
            None
        };
        let received: Vec<Instant> = batches.iter().map(|r| r.at).collect();
        // The budget is given back once the batches are applied, not when their events move.
        let mut budget = Vec::with_capacity(batches.len());
        let (heartbeats, events): (Vec<v1::Event>, Vec<v1::Event>) = batches
            .into_iter()
            .flat_map(|r| {
                budget.extend(r.budget);
                r.batch.events
            })
            .partition(|e| matches!(e.kind, Some(event::Kind::Heartbeat(_))));
        for e in &events {
            inner.telemetry.events(kind_name(e), 1);
        }
        let store = Arc::clone(&inner.store);
        let id = agent_id.clone();
        let applied = blocking(move || {
            let now = SystemTime::now();
            for hb in &heartbeats {
                if let Some(event::Kind::Heartbeat(h)) = &hb.kind {
                    store.record_heartbeat(&id, h.outbox_events, h.outbox_bytes, now)?;
                }
            }
            if events.is_empty() {
                return Ok((None, heartbeats.len()));
            }
            store
                .apply(&id, &events)
                .map(|o| (Some(o), heartbeats.len()))
        })
        .await;
        drop(turn);
        drop(budget);
        let outcome = match applied {
            Ok(Ok((outcome, beats))) => {
                inner.telemetry.events("heartbeat", beats as u64);
                outcome
            }
            Ok(Err(e)) => break Err(internal(e)),
            Err(status) => break Err(status),
        };
        if let Some(o) = outcome {
            inner.telemetry.ci_versions(o.ci_versions);
            for at in received {
                inner.telemetry.ack_latency(at.elapsed().as_secs_f64());
            }
            let ack = CollectorMessage {
                kind: Some(collector_message::Kind::Ack(ack(&inner.limits, o.last_seq))),
            };
            if tx.send(Ok(ack)).await.is_err() {
                break Ok(());
            }
        }
        if let Some(end) = end {
            break end;
        }
    };
    if let Err(status) = &ended {
        tracing::info!(agent_id = %agent_id, code = ?status.code(), message = %status.message(), "Agent stream ended.");
        let _ = tx.send(Err(status.clone())).await;
    } else {
        tracing::info!(agent_id = %agent_id, "Agent stream closed by the agent.");
    }
    inner.telemetry.agent_disconnected();
    let current = inner
        .live
        .lock()
        .map(|mut live| {
            let mine = live.get(&agent_id).is_some_and(|(g, _)| *g == generation);
            if mine {
                live.remove(&agent_id);
            }
            mine
        })
        .unwrap_or(false);
    if current {
        let store = Arc::clone(&inner.store);
        let _ = blocking(move || store.set_connected(&agent_id, false, SystemTime::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: event::Kind) -> v1::Event {
        v1::Event {
            seq,
            observed_at: None,
            kind: Some(kind),
        }
    }

    #[test]
    fn batches_are_validated() {
        let hb = || event::Kind::Heartbeat(v1::Heartbeat::default());
        let sd = || event::Kind::Shutdown(v1::Shutdown::default());
        assert!(validate(&[ev(0, hb()), ev(1, sd()), ev(5, sd())], 10).is_ok());
        assert!(validate(&[ev(2, sd()), ev(2, sd())], 10).is_err());
        assert!(validate(&[ev(0, sd())], 10).is_err());
        assert!(validate(&[ev(3, hb())], 10).is_err());
        assert!(validate(&[ev(1, sd()), ev(2, sd())], 1).is_err());
        assert!(validate(&[v1::Event::default()], 10).is_err());
    }

    fn batch(seqs: std::ops::Range<u64>) -> Received {
        let sd = || event::Kind::Shutdown(v1::Shutdown::default());
        let events = seqs.map(|s| ev(s, sd())).collect();
        Received {
            batch: v1::Batch { events },
            at: Instant::now(),
            budget: None,
        }
    }

    fn seqs(batches: &[Received]) -> Vec<u64> {
        batches
            .iter()
            .flat_map(|r| r.batch.events.iter().map(|e| e.seq))
            .collect()
    }

    #[test]
    fn coalesce_takes_what_is_queued_up_to_the_event_bound() {
        let (tx, mut rx) = mpsc::channel(8);
        for r in [3..5, 5..8, 8..10, 10..11] {
            assert!(tx.try_send(Inbound::Batch(batch(r))).is_ok());
        }
        // 2 + 2 + 3 = 7 events reach the bound of 6: the last two batches stay queued.
        let (got, end) = coalesce(batch(1..3), &mut rx, 6);
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(end.is_none());
        let (got, end) = coalesce(batch(20..21), &mut rx, 6);
        assert_eq!(seqs(&got), vec![20, 8, 9, 10]);
        assert!(end.is_none());
        // Nothing queued: the first batch alone, without waiting.
        let (got, end) = coalesce(batch(30..31), &mut rx, 6);
        assert_eq!(seqs(&got), vec![30]);
        assert!(end.is_none());
    }

    #[test]
    fn heartbeats_alone_are_not_sequenced_and_a_wait_gathers_what_came() {
        let beats = Received {
            batch: v1::Batch {
                events: vec![ev(0, event::Kind::Heartbeat(v1::Heartbeat::default()))],
            },
            at: Instant::now(),
            budget: None,
        };
        assert!(!sequenced(&beats));
        assert!(sequenced(&batch(1..2)));
        // Batches that arrive while a stream waits for its turn join what it had.
        let (tx, mut rx) = mpsc::channel(8);
        let (mut got, end) = coalesce(batch(1..3), &mut rx, 6);
        assert!(end.is_none());
        for r in [3..5, 5..8] {
            assert!(tx.try_send(Inbound::Batch(batch(r))).is_ok());
        }
        assert!(coalesce_into(&mut got, &mut rx, 6).is_none());
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(coalesce_into(&mut got, &mut rx, 6).is_none());
        assert_eq!(got.len(), 3, "at the bound nothing more is taken");
    }

    #[test]
    fn coalesce_keeps_the_batches_before_the_end_of_the_stream() {
        let (tx, mut rx) = mpsc::channel(8);
        assert!(tx.try_send(Inbound::Batch(batch(2..4))).is_ok());
        let refused = Status::invalid_argument("malformed");
        assert!(tx.try_send(Inbound::End(Err(refused))).is_ok());
        assert!(tx.try_send(Inbound::Batch(batch(9..10))).is_ok());
        let (got, end) = coalesce(batch(1..2), &mut rx, 100);
        // The good batches are applied (and acked) before the stream ends with the error;
        // nothing after the end is taken.
        assert_eq!(seqs(&got), vec![1, 2, 3]);
        assert!(matches!(end, Some(Err(s)) if s.code() == tonic::Code::InvalidArgument));
        let (got, end) = coalesce(batch(5..6), &mut rx, 100);
        assert_eq!(seqs(&got), vec![5, 9]);
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn the_read_ahead_waits_for_its_byte_budget() {
        let budget = Arc::new(Semaphore::new(10));
        let held = take_budget(&budget, 8).await;
        assert!(held.is_some());
        // 5 more bytes do not fit while 8 of 10 are held by a batch not yet applied.
        let wait = tokio::time::timeout(Duration::from_millis(50), take_budget(&budget, 5));
        assert!(wait.await.is_err());
        let next = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { take_budget(&budget, 5).await.is_some() }
        });
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(matches!(got, Ok(Ok(true))));
        assert_eq!(budget.available_permits(), 10);
    }

    #[test]
    fn rate_limit_allows_bursts_then_refuses() {
        let mut r = RateLimit::new(100);
        assert!(r.take(150));
        assert!(r.take(50));
        assert!(!r.take(50));
    }
}
