//! The agent's side of the `Connect` stream: connect over mTLS with failover across the
//! configured collectors, exponential backoff with full jitter between attempts, resume
//! after the collector's watermark, drain the outbox at the rate the Acks hint, and keep
//! heartbeats on their own priority lane so that a backlog never delays them.
//!
//! Never: sends an event that is not durable in the outbox first; trims the outbox before
//! the collector acknowledged; holds more than `max_inflight_events` unacknowledged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use cmdb_proto::convert::timestamp_from_system;
use cmdb_proto::v1::{
    self, AgentMessage, agent_message, agent_service_client::AgentServiceClient, collector_message,
    event,
};
use futures_util::Stream;
use rand::Rng;
use tokio::sync::{Notify, mpsc, watch};

use crate::outbox::Outbox;
use crate::tls::TlsFiles;

/// What a session needs besides the outbox.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    pub endpoints: Vec<String>,
    pub tls: TlsFiles,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    /// Unacknowledged events in flight at most.
    pub max_inflight_events: u64,
    pub heartbeat: Duration,
}

/// The agent's self-description sent in Hello.
#[derive(Clone, Debug, Default)]
pub struct HelloInfo {
    pub identity: cmdb_proto::model::HostIdentity,
    pub agent_version: String,
    pub instance_id: String,
    pub inventory_hash: Vec<u8>,
}

/// What the run loop learns from the collector.
#[derive(Debug)]
pub enum FromCollector {
    /// Send a full snapshot (collector asked, e.g. after detecting a hash mismatch).
    FullSnapshot,
    /// Rediscover everything now.
    Rescan,
}

/// A session-level failure (the loop backs off and retries).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP/TLS connection failed.
    #[error("connect {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// The collector refused or ended the stream.
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    /// The collector broke the protocol (no Ack after Hello).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The local outbox failed.
    #[error("outbox: {0}")]
    Outbox(String),
}

/// Shared state between the run loop and the transport.
pub struct Link {
    pub outbox: Outbox,
    /// Notified when new events are in the outbox.
    pub new_events: Notify,
    /// The latest Hello info (identity changes when the inventory does).
    pub hello: watch::Sender<HelloInfo>,
    /// Whether a session is up (for heartbeats and status).
    pub connected: watch::Sender<bool>,
    /// The collector's latest `Config` (sent after every Hello); changed only when it differs.
    pub collector_config: watch::Sender<Option<v1::Config>>,
    pub started: Instant,
}

/// Runs sessions forever (until `stop` fires), failing over and backing off.
pub async fn run(
    link: Arc<Link>,
    settings: TransportSettings,
    commands: mpsc::Sender<FromCollector>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    let mut endpoint_idx = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let endpoint = settings
            .endpoints
            .get(endpoint_idx % settings.endpoints.len().max(1))
            .cloned()
            .unwrap_or_default();
        let started = Instant::now();
        let result = tokio::select! {
            r = session(&link, &settings, &endpoint, &commands) => r,
            _ = stop.changed() => return,
        };
        let _ = link.connected.send(false);
        let healthy = started.elapsed() > Duration::from_secs(30);
        match &result {
            Ok(()) => tracing::info!(endpoint = %endpoint, "Collector closed the stream."),
            Err(TransportError::Status(s))
                if s.code() == tonic::Code::PermissionDenied
                    || s.code() == tonic::Code::Unauthenticated =>
            {
                tracing::error!(endpoint = %endpoint, message = %s.message(), "Collector refused this agent; will keep retrying slowly.");
            }
            Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "Collector session failed."),
        }
        if healthy {
            attempt = 0;
        } else {
            attempt = attempt.saturating_add(1);
            // Fail over to the next collector after a failed attempt.
            endpoint_idx = endpoint_idx.wrapping_add(1);
        }
        let delay = full_jitter(settings.backoff_initial, settings.backoff_max, attempt);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(max, initial · 2^attempt)].
pub fn full_jitter(initial: Duration, max: Duration, attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let cap = initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(max)
        .max(Duration::from_millis(1));
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// Two outbound lanes, heartbeats first: a stuck batch lane never delays a heartbeat.
struct PriorityStream {
    priority: mpsc::Receiver<AgentMessage>,
    normal: mpsc::Receiver<AgentMessage>,
}

impl Stream for PriorityStream {
    type Item = AgentMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(Some(m)) = self.priority.poll_recv(cx) {
            return Poll::Ready(Some(m));
        }
        self.normal.poll_recv(cx)
    }
}

fn heartbeat_message(link: &Link) -> AgentMessage {
    let stats = link.outbox.stats();
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(v1::Batch {
            events: vec![v1::Event {
                seq: 0,
                observed_at: Some(timestamp_from_system(SystemTime::now())),
                kind: Some(event::Kind::Heartbeat(v1::Heartbeat {
                    outbox_events: stats.events,
                    outbox_bytes: stats.bytes,
                    uptime_seconds: link.started.elapsed().as_secs(),
                })),
            }],
        })),
    }
}

/// Acknowledged events since the last `malloc_trim` after which the transport trims again.
const TRIM_AFTER_ACKED_EVENTS: u64 = 100;
/// Acknowledged outbox bytes since the last `malloc_trim` after which the transport trims
/// again: one snapshot (a single event) is enough.
const TRIM_AFTER_ACKED_BYTES: u64 = 64 * 1024;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransportError::Outbox(e.to_string()))
}

/// One connected session: Hello, resume, then send/receive until the stream ends.
async fn session(
    link: &Arc<Link>,
    settings: &TransportSettings,
    endpoint: &str,
    commands: &mpsc::Sender<FromCollector>,
) -> Result<(), TransportError> {
    let channel = crate::tls::connect(endpoint, &settings.tls, settings.connect_timeout)
        .await
        .map_err(|e| TransportError::Connect {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(4 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let (prio_tx, prio_rx) = mpsc::channel::<AgentMessage>(2);
    let (main_tx, main_rx) = mpsc::channel::<AgentMessage>(2);
    let hello = link.hello.borrow().clone();
    let outbox = link.outbox.clone();
    let acked = blocking(move || outbox.acked_seq()).await?;
    prio_tx
        .send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(v1::Hello {
                identity: Some(v1::HostIdentity::from(&hello.identity)),
                agent_version: hello.agent_version.clone(),
                instance_id: hello.instance_id.clone(),
                last_acked_seq: acked,
                inventory_hash: hello.inventory_hash.clone(),
            })),
        })
        .await
        .map_err(|_| TransportError::Protocol("stream closed before Hello".into()))?;
    let response = tokio::time::timeout(
        settings.connect_timeout,
        client.connect(PriorityStream {
            priority: prio_rx,
            normal: main_rx,
        }),
    )
    .await
    .map_err(|_| TransportError::Protocol("no response to Connect in time".into()))??;
    let mut inbound = response.into_inner();

    // The collector's first Ack is its watermark for us: resume after it.
    let first = tokio::time::timeout(settings.connect_timeout, inbound.message())
        .await
        .map_err(|_| TransportError::Protocol("no Ack after Hello".into()))??;
    let (watermark, pace) = match first.and_then(|m| m.kind) {
        Some(collector_message::Kind::Ack(a)) => (a.up_to_seq, Pace::of(&a)),
        other => {
            return Err(TransportError::Protocol(format!(
                "expected Ack after Hello, got {other:?}"
            )));
        }
    };
    let outbox = link.outbox.clone();
    blocking(move || outbox.ack(watermark))
        .await?
        .map_err(|e| TransportError::Outbox(e.to_string()))?;
    let _ = link.connected.send(true);
    tracing::info!(endpoint, watermark, "Connected to the collector.");
    // Connecting (TLS handshake, HTTP/2 set-up, the resumed backlog read from the outbox)
    // leaves freed memory behind that glibc would keep resident.
    blocking(cmdb_malloc::release_free_memory).await?;
    let mut last_trim = watermark;
    let mut acked_bytes = 0u64;

    let (acked_tx, acked_rx) = watch::channel(watermark);
    let (pace_tx, pace_rx) = watch::channel(pace);
    let sender = tokio::spawn(send_loop(
        Arc::clone(link),
        settings.clone(),
        main_tx,
        watermark,
        acked_rx,
        pace_rx,
    ));
    let heartbeats = {
        let link = Arc::clone(link);
        let every = settings.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // try_send: if even the priority lane is full the collector is not reading;
                // skipping one heartbeat is right (the next one says the same).
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    prio_tx.try_send(heartbeat_message(&link))
                {
                    return;
                }
            }
        })
    };

    let result = loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(status) => break Err(TransportError::Status(status)),
        };
        match msg.kind {
            Some(collector_message::Kind::Ack(a)) => {
                let outbox = link.outbox.clone();
                let up_to = a.up_to_seq;
                let acked = blocking(move || {
                    let before = outbox.stats().bytes;
                    outbox
                        .ack(up_to)
                        .map(|()| before.saturating_sub(outbox.stats().bytes))
                })
                .await;
                match acked {
                    Ok(Ok(bytes)) => acked_bytes = acked_bytes.saturating_add(bytes),
                    Ok(Err(e)) => break Err(TransportError::Outbox(e.to_string())),
                    Err(e) => break Err(e),
                }
                let _ = acked_tx.send(up_to);
                let _ = pace_tx.send(Pace::of(&a));
                // A large acknowledged batch (a snapshot, a drained backlog) freed its
                // encoded events and outbox pages: hand that memory back to the OS.
                if up_to.saturating_sub(last_trim) >= TRIM_AFTER_ACKED_EVENTS
                    || acked_bytes >= TRIM_AFTER_ACKED_BYTES
                {
                    last_trim = up_to;
                    acked_bytes = 0;
                    match blocking(cmdb_malloc::release_free_memory).await {
                        Ok(_) => {}
                        Err(e) => break Err(e),
                    }
                }
            }
            Some(collector_message::Kind::Command(c)) => {
                let what = match v1::CommandKind::try_from(c.kind) {
                    Ok(v1::CommandKind::FullSnapshot) => Some(FromCollector::FullSnapshot),
                    Ok(v1::CommandKind::Rescan) => Some(FromCollector::Rescan),
                    _ => None,
                };
                if let Some(w) = what {
                    let _ = commands.try_send(w);
                }
            }
            Some(collector_message::Kind::Config(c)) => {
                tracing::debug!(
                    heartbeat = c.heartbeat_seconds,
                    monitors = c.monitors.len(),
                    "Collector configuration received."
                );
                // The run loop reacts to a change only: a reconnect resends the same Config.
                link.collector_config.send_if_modified(|current| {
                    if current.as_ref() == Some(&c) {
                        return false;
                    }
                    *current = Some(c);
                    true
                });
            }
            None => {}
        }
    };
    sender.abort();
    heartbeats.abort();
    result
}

/// What the collector's latest Ack allows: the rate to drain a backlog at and the size of
/// a Batch. A batch the collector would refuse is refused again on every resend and the
/// backlog never drains, so the agent keeps the collector's limits even when its own
/// configuration allows more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pace {
    /// Events per second; 0: no limit.
    rate: u32,
    /// Events per Batch; 0: not said.
    max_events: u32,
    /// Bytes per message; 0: not said.
    max_bytes: u64,
}

impl Pace {
    fn of(a: &v1::Ack) -> Self {
        Pace {
            rate: a.max_rate_hint,
            max_events: a.max_batch_events,
            max_bytes: a.max_message_bytes,
        }
    }

    /// The most events one batch may hold: the collector's limit, and at most one second of
    /// the rate (its bucket holds two, so a paced batch always fits).
    fn batch_events(self) -> usize {
        let cap = |n: u32| match n {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        cap(self.rate).min(cap(self.max_events))
    }

    /// The most event bytes one batch may hold: an eighth of the collector's message limit
    /// is left for the message's own framing.
    fn batch_bytes(self) -> usize {
        match self.max_bytes {
            0 => usize::MAX,
            n => usize::try_from(n - n / 8).unwrap_or(usize::MAX).max(1),
        }
    }
}

/// Sends outbox events after `cursor` in batches, at most `max_inflight_events` beyond the
/// last ack, paced by the collector's rate hint (events/s; 0 = unlimited).
async fn send_loop(
    link: Arc<Link>,
    settings: TransportSettings,
    tx: mpsc::Sender<AgentMessage>,
    mut cursor: u64,
    mut acked: watch::Receiver<u64>,
    pace: watch::Receiver<Pace>,
) {
    let mut budget = 0f64;
    let mut last = Instant::now();
    loop {
        let in_flight = cursor.saturating_sub(*acked.borrow());
        if in_flight >= settings.max_inflight_events {
            if acked.changed().await.is_err() {
                return;
            }
            continue;
        }
        let outbox = link.outbox.clone();
        let p = *pace.borrow();
        let (after, max_events, max_bytes) = (
            cursor,
            settings
                .max_batch_events
                .min(
                    usize::try_from(settings.max_inflight_events - in_flight).unwrap_or(usize::MAX),
                )
                .min(p.batch_events())
                .max(1),
            settings.max_batch_bytes.min(p.batch_bytes()),
        );
        let notified = link.new_events.notified();
        let events = match tokio::task::spawn_blocking(move || {
            outbox.read_after(after, max_events, max_bytes)
        })
        .await
        {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Cannot read the outbox.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        if events.is_empty() {
            notified.await;
            continue;
        }
        // Pace to the hinted rate (token bucket with one second of burst).
        let hint = p.rate;
        if hint > 0 {
            let r = f64::from(hint);
            budget = (budget + last.elapsed().as_secs_f64() * r).min(r);
            last = Instant::now();
            let need = events.len() as f64;
            if budget < need {
                let wait = (need - budget) / r;
                tokio::time::sleep(Duration::from_secs_f64(wait.min(10.0))).await;
                budget = need;
                last = Instant::now();
            }
            budget -= need;
        }
        let Some(last_seq) = events.last().map(|e| e.seq) else {
            continue;
        };
        let msg = AgentMessage {
            kind: Some(agent_message::Kind::Batch(v1::Batch { events })),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
        cursor = last_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_the_collectors_limits() {
        let ack = |rate, events, bytes| v1::Ack {
            up_to_seq: 0,
            max_rate_hint: rate,
            max_batch_events: events,
            max_message_bytes: bytes,
        };
        // An older collector says nothing: no limit from it.
        let old = Pace::of(&ack(0, 0, 0));
        assert_eq!(
            (old.batch_events(), old.batch_bytes()),
            (usize::MAX, usize::MAX)
        );
        // One second of the rate, or the batch limit, whichever is smaller.
        assert_eq!(Pace::of(&ack(20, 1000, 0)).batch_events(), 20);
        assert_eq!(Pace::of(&ack(2000, 1000, 0)).batch_events(), 1000);
        assert_eq!(Pace::of(&ack(0, 7, 0)).batch_events(), 7);
        // Bytes: headroom for the message's framing.
        assert_eq!(Pace::of(&ack(0, 0, 800)).batch_bytes(), 700);
        assert_eq!(Pace::of(&ack(0, 0, 1)).batch_bytes(), 1);
    }

    #[test]
    fn full_jitter_is_bounded_and_grows() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        assert_eq!(full_jitter(i, m, 0), Duration::ZERO);
        for attempt in 1..30 {
            let d = full_jitter(i, m, attempt);
            assert!(d <= m, "{d:?}");
            assert!(d <= i * (1 << attempt.min(20)));
        }
    }
}
