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
//! - **Config**: right after that first Ack, a `Config` built for the identified host by the
//!   [`AgentConfigFn`] hook (by default: the heartbeat interval, no monitors). The agent keeps
//!   the latest one and evaluates its monitors besides its own.
//! - **Bounds**: message size (tonic decode limit), events per batch (INVALID_ARGUMENT),
//!   per-agent rate (token bucket; RESOURCE_EXHAUSTED when an agent ignores the hint),
//!   concurrent streams (UNAVAILABLE). A malformed message ends that stream alone.

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
use tokio::sync::{Notify, Semaphore, mpsc};
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
    /// agent id → the notify that ends its current stream (superseded by a newer one).
    live: Mutex<HashMap<String, (u64, Arc<Notify>)>>,
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
                limits,
                streams,
                live: Mutex::new(HashMap::new()),
                next_generation: std::sync::atomic::AtomicU64::new(1),
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

async fn serve_stream(
    inner: Arc<Inner>,
    agent_id: String,
    generation: u64,
    stop: Arc<Notify>,
    mut inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<CollectorMessage, Status>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut limit = RateLimit::new(inner.limits.per_agent_events_per_second);
    let ended: Result<(), Status> = loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            () = stop.notified() => break Err(Status::aborted("superseded by a newer stream of this agent")),
        };
        let batch = match msg {
            Ok(Some(AgentMessage {
                kind: Some(agent_message::Kind::Batch(b)),
            })) => v1::Batch::from(b),
            Ok(Some(_)) => {
                break Err(Status::invalid_argument(
                    "only Batch messages may follow Hello",
                ));
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        };
        if let Err(status) = validate(&batch.events, inner.limits.max_batch_events) {
            inner.telemetry.refused("malformed");
            break Err(status);
        }
        if inner.pki.is_revoked(&agent_id) {
            inner.telemetry.refused("revoked");
            break Err(Status::permission_denied("this agent has been revoked"));
        }
        if !limit.take(batch.events.len()) {
            inner.telemetry.refused("rate");
            break Err(Status::resource_exhausted(format!(
                "more than {} events/s: follow the Ack's max_rate_hint",
                inner.limits.per_agent_events_per_second
            )));
        }
        let received = Instant::now();
        let (heartbeats, events): (Vec<v1::Event>, Vec<v1::Event>) = batch
            .events
            .into_iter()
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
            inner
                .telemetry
                .ack_latency(received.elapsed().as_secs_f64());
            let ack = CollectorMessage {
                kind: Some(collector_message::Kind::Ack(ack(&inner.limits, o.last_seq))),
            };
            if tx.send(Ok(ack)).await.is_err() {
                break Ok(());
            }
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

    #[test]
    fn rate_limit_allows_bursts_then_refuses() {
        let mut r = RateLimit::new(100);
        assert!(r.take(150));
        assert!(r.take(50));
        assert!(!r.take(50));
    }
}
