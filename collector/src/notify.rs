//! Incident notifications: a durable outbox in the store, drained to HTTP sinks (a webhook
//! receiving JSON, or a ServiceNow incident table) with retries.
//!
//! This is the last stage of the collector's pipeline: the incident engine hands over an
//! [`IncidentNotice`] and never hears back; nothing here reads incidents or reaches upstream.
//!
//! # The outbox (design)
//!
//! - **Enqueue is part of the incident change.** [`Notifier::enqueue_ops`] does not write: it
//!   returns one [`RecordOp::Put`] per sink whose filter matches, and the incident engine
//!   writes them in the *same* `write_records` batch as the incident itself. So a committed
//!   incident change always has its notifications queued, and a failed one has none: the
//!   outbox can neither lose nor invent a notification. After the commit the caller calls
//!   [`Notifier::wake`]; a missed wake only delays delivery (the loop also polls every
//!   [`IDLE_POLL`]).
//! - **Layout.** Collection [`OUTBOX`] (`"notify"`), id `<sink>:<seq>` with `seq` a
//!   zero-padded 20-digit u64, value an [`OutboxEntry`] (JSON). Ids of one sink are
//!   contiguous and sort in enqueue order. `seq` comes from a counter that starts, at
//!   [`Notifier::new`], after the highest queued seq and no lower than the wall clock in
//!   microseconds, so seqs keep increasing across restarts (unless the clock steps back
//!   across one while nothing is queued, when order does not matter). The entry holds the
//!   notice, not the rendered body: the body is rendered per attempt from the sink's
//!   *current* configuration, so fixing a sink's URL or format fixes its backlog too.
//! - **Durable** means: once the caller's batch committed, the entry survives a crash and a
//!   restart, and stays until a sink answered 2xx (then it is deleted) or it is dead-lettered.
//!   Attempt count, last error and next attempt time are written back after every failed
//!   attempt, so backoff also survives restarts.
//! - **Delivery is at least once.** A crash between a sink's 2xx and the delete resends the
//!   entry; every request carries `Idempotency-Key: <id>`, and ServiceNow targets should
//!   coalesce on `correlation_id` (see docs/OPERATIONS.md).
//! - **Order per sink.** Each sink has its own worker that sends its entries strictly one
//!   after the other in id order: an entry is never sent before every older entry of the same
//!   sink was delivered or dead-lettered. Sinks do not wait for one another. "Older" means
//!   an earlier `enqueue_ops` call: a caller that commits batches concurrently must call it
//!   in commit order (under the lock that serialises its writes), or a later notice of an
//!   incident may overtake an earlier one that was committed after it.
//! - **Retries**: exponential backoff with full jitter per entry, uniform in
//!   [0, min(5 min, 1 s · 2^(attempts−1))] by default (`[notify] backoff_initial` and
//!   `backoff_max` in collector.toml, [`Notifier::with_backoff`]); a network error, a
//!   timeout (per sink, default 10 s) and any non-2xx answer all count as failures.
//!   Redirects are not followed.
//! - **Dead letters.** An entry that fails an attempt when it has been queued for
//!   `max_attempts_age` (default 24 h) or longer moves to collection [`DEAD_LETTERS`]
//!   (`"notify_dead"`, a [`DeadLetter`]) in one atomic write with its delete, and is logged at
//!   ERROR. So are entries whose sink is no longer configured (at start) and entries that
//!   cannot be decoded. Nothing is dropped silently; dead letters are never deleted here.
//! - **Store failures** while writing back are retried (with backoff, logged at ERROR) before
//!   the worker moves on, so a delivered entry is never left behind to be re-sent out of
//!   order.
//!
//! Not bounded in count: the outbox holds what was queued during the last `max_attempts_age`
//! (the `cmdb_notify_pending` gauge shows it). Strings in a notice are capped at enqueue
//! so one entry stays small. Plain `http://` only: the collector's reqwest is built without
//! a TLS backend; configuration refuses `https://`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{InvalidSink, SinkConfig, SinkFormat, validate_sinks};
use crate::store::{RecordOp, Store, StoreError};
use crate::telemetry::Telemetry;

#[cfg(test)]
mod tests;

/// The outbox collection.
pub const OUTBOX: &str = "notify";
/// Where undeliverable notifications go.
pub const DEAD_LETTERS: &str = "notify_dead";
/// Default for how long an entry is retried.
pub const DEFAULT_MAX_ATTEMPTS_AGE: Duration = Duration::from_secs(24 * 3600);
/// First retry delay bound (full jitter).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Cap of the retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A worker with nothing queued looks at the outbox at least this often, wake or not.
pub const IDLE_POLL: Duration = Duration::from_secs(60);
/// Longest title kept in an entry, in bytes.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest summary kept in an entry, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 16 * 1024;
/// Longest of any other string of a notice kept in an entry, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// ServiceNow's `short_description` limit, in characters.
pub const SERVICENOW_SHORT_DESCRIPTION: usize = 160;
/// The `close_code` sent when an incident resolves or closes (an out-of-box ServiceNow
/// resolution code of current releases).
pub const SERVICENOW_CLOSE_CODE: &str = "Solution provided";

/// Entries read from the outbox at once, per sink.
const BATCH: usize = 256;
/// A sink's pending count is recounted at most this often while its backlog exceeds a batch.
const RECOUNT_EVERY: Duration = Duration::from_secs(10);
/// Retry bounds for failing store writes and reads.
const STORE_RETRY: Duration = Duration::from_secs(1);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest error text kept in an entry.
const MAX_ERROR_BYTES: usize = 512;
/// Longest part of a refusing sink's answer kept in the error text.
const MAX_ANSWER_SNIPPET: usize = 200;

/// What happened to the incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeEvent {
    Opened,
    Updated,
    Resolved,
    Closed,
}

/// One incident change to notify about, filled by the incident engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentNotice {
    pub event: NoticeEvent,
    /// The incident number, e.g. "INC0000042": stable across the incident's notices.
    pub number: String,
    pub title: String,
    /// availability, capacity, unauthorized-change, security or identity.
    pub category: String,
    /// 1 (highest) to 5, from the ITIL impact × urgency matrix.
    pub priority: u8,
    /// 1 (high) to 3.
    pub impact: u8,
    /// 1 (high) to 3.
    pub urgency: u8,
    /// new, acknowledged, in progress, resolved or closed.
    pub state: String,
    pub ci_id: String,
    pub host_id: String,
    pub hostname: Option<String>,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "crate::store::opt_time")]
    pub resolved_at: Option<SystemTime>,
    pub summary: String,
    /// Events in the incident's timeline so far.
    pub timeline_len: usize,
}

/// One queued notification (the value of an [`OUTBOX`] record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub sink: String,
    pub seq: u64,
    #[serde(with = "millis")]
    pub enqueued_at: SystemTime,
    pub notice: IncidentNotice,
    /// Failed attempts so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "opt_millis")]
    pub last_attempt_at: Option<SystemTime>,
    /// Not before this (none: as soon as possible).
    #[serde(with = "opt_millis")]
    pub next_attempt_at: Option<SystemTime>,
}

/// A notification given up on (the value of a [`DEAD_LETTERS`] record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its id in the outbox.
    pub id: String,
    pub sink: String,
    #[serde(with = "millis")]
    pub died_at: SystemTime,
    pub reason: String,
    /// The entry, when it could be decoded.
    pub entry: Option<OutboxEntry>,
    /// The stored bytes (lossy UTF-8) of an entry that could not be decoded.
    pub raw: Option<String>,
}

/// Why a [`Notifier`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A sink's configuration cannot work.
    #[error("notification {field}: {0}", field = .0.field)]
    InvalidSink(#[from] InvalidSink),
    /// The outbox could not be read.
    #[error("notification outbox: {0}")]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("notification HTTP client: {0}")]
    Client(String),
}

/// One configured sink and its worker's shared state.
struct Sink {
    cfg: SinkConfig,
    /// `<name>:`, the prefix of its outbox ids.
    prefix: String,
    wake: Notify,
    pending: AtomicU64,
}

/// Exponential backoff with full jitter.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

/// Queues incident notifications (as record writes for the caller's batch) and delivers
/// them. Share it behind an `Arc`: [`Notifier::run`] takes one.
pub struct Notifier {
    store: Arc<dyn Store>,
    sinks: Vec<Sink>,
    client: reqwest::Client,
    next_seq: AtomicU64,
    max_age: Duration,
    backoff: Backoff,
    telemetry: Arc<Telemetry>,
}

// === impl Notifier ===

impl Notifier {
    /// A notifier for `sinks` (validated again here) over `store`'s outbox. Blocking: reads
    /// the outbox ids once to continue the seq counter. Defaults: `max_attempts_age` 24 h,
    /// backoff 1 s doubling to 5 min, a private [`Telemetry`].
    pub fn new(store: Arc<dyn Store>, sinks: Vec<SinkConfig>) -> Result<Self, NotifyError> {
        validate_sinks(&sinks)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("cmdb-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(error_chain(&e)))?;
        let highest = highest_seq(store.as_ref())?;
        let clock = unix_micros(SystemTime::now());
        let sinks = sinks
            .into_iter()
            .map(|cfg| Sink {
                prefix: format!("{}:", cfg.name),
                cfg,
                wake: Notify::new(),
                pending: AtomicU64::new(0),
            })
            .collect();
        Ok(Self {
            store,
            sinks,
            client,
            next_seq: AtomicU64::new(highest.saturating_add(1).max(clock)),
            max_age: DEFAULT_MAX_ATTEMPTS_AGE,
            backoff: Backoff {
                initial: INITIAL_BACKOFF,
                max: MAX_BACKOFF,
            },
            telemetry: Arc::new(Telemetry::new()),
        })
    }

    /// Dead-letters entries still failing this long after they were queued.
    pub fn with_max_attempts_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Reports sent / failed / dead / pending through `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Other retry delay bounds (tests use milliseconds).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            initial,
            max: max.max(initial),
        };
        self
    }

    /// The record writes that queue `notice` for every sink whose filter matches (category,
    /// `min_priority`), to be written by the caller in the same `write_records` batch as the
    /// incident change; then call [`Notifier::wake`]. Empty when no sink wants it.
    pub fn enqueue_ops(&self, notice: &IncidentNotice, now: SystemTime) -> Vec<RecordOp> {
        let matching: Vec<&Sink> = self.sinks.iter().filter(|s| s.wants(notice)).collect();
        if matching.is_empty() {
            return Vec::new();
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let notice = bounded(notice);
        let now = representable(now);
        let mut ops = Vec::with_capacity(matching.len());
        for sink in matching {
            let entry = OutboxEntry {
                sink: sink.cfg.name.clone(),
                seq,
                enqueued_at: now,
                notice: notice.clone(),
                attempts: 0,
                last_error: None,
                last_attempt_at: None,
                next_attempt_at: None,
            };
            match serde_json::to_vec(&entry) {
                Ok(value) => ops.push(RecordOp::Put {
                    collection: OUTBOX,
                    id: outbox_id(&sink.cfg.name, seq),
                    value,
                }),
                // Serialising plain strings and numbers does not fail; should it ever, the
                // operator must hear about the notification that was not queued.
                Err(e) => tracing::error!(
                    sink = %sink.cfg.name,
                    incident = %notice.number,
                    error = %e,
                    "An incident notification could not be encoded and was not queued."
                ),
            }
        }
        ops
    }

    /// Tells the delivery loop that entries were committed.
    pub fn wake(&self) {
        for sink in &self.sinks {
            sink.wake.notify_one();
        }
    }

    /// The delivery loop, until `shutdown` completes. First dead-letters entries of sinks no
    /// longer configured, then runs one worker per sink. Dropping an attempt half-way (at
    /// shutdown) is safe: the entry stays queued and is sent again.
    pub async fn run(self: Arc<Self>, shutdown: impl Future) {
        let work = async {
            self.sweep().await;
            let workers = (0..self.sinks.len()).map(|i| self.sink_loop(i));
            futures_util::future::join_all(workers).await;
            // Workers never end; with no sinks there are none: wait for the shutdown.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = work => {}
            _ = shutdown => {}
        }
        tracing::info!("Incident notification delivery stopped.");
    }

    // === the delivery loop ===

    /// Counts what is queued per sink and dead-letters entries no configured sink owns.
    async fn sweep(&self) {
        let mut after: Option<String> = None;
        let mut counts = vec![0u64; self.sinks.len()];
        loop {
            let from = after.clone();
            let page = self
                .blocking(move |s| s.records(OUTBOX, from.as_deref(), BATCH))
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "Reading the notification outbox at start failed; entries of removed sinks stay queued.");
                    return;
                }
            };
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            for (id, raw) in page {
                match self.sinks.iter().position(|s| id.starts_with(&s.prefix)) {
                    Some(i) => counts[i] += 1,
                    None => {
                        let owner = id.split_once(':').map_or(id.as_str(), |(n, _)| n);
                        let reason = format!("sink {owner:?} is no longer configured");
                        let entry = serde_json::from_slice::<OutboxEntry>(&raw).ok();
                        let raw = entry.is_none().then_some(raw);
                        self.bury(None, &id, entry, raw, reason).await;
                    }
                }
            }
        }
        for (sink, n) in self.sinks.iter().zip(counts) {
            sink.pending.store(n, Ordering::Relaxed);
        }
        self.report_pending();
    }

    /// One sink's worker: its entries, oldest first, one at a time, forever.
    async fn sink_loop(&self, i: usize) {
        let Some(sink) = self.sinks.get(i) else {
            return;
        };
        let mut last_count: Option<Instant> = None;
        let mut store_delay = STORE_RETRY;
        loop {
            let prefix = sink.prefix.clone();
            let batch = match self.blocking(move |s| read_prefix(s, &prefix, BATCH)).await {
                Ok(b) => {
                    store_delay = STORE_RETRY;
                    b
                }
                Err(e) => {
                    tracing::warn!(sink = %sink.cfg.name, error = %e, "Reading the notification outbox failed; retrying.");
                    tokio::time::sleep(store_delay).await;
                    store_delay = (store_delay * 2).min(STORE_RETRY_MAX);
                    continue;
                }
            };
            if batch.len() < BATCH {
                sink.pending.store(batch.len() as u64, Ordering::Relaxed);
                self.report_pending();
            } else if last_count.is_none_or(|t| t.elapsed() >= RECOUNT_EVERY) {
                let prefix = sink.prefix.clone();
                if let Ok(n) = self.blocking(move |s| count_prefix(s, &prefix)).await {
                    sink.pending.store(n, Ordering::Relaxed);
                    self.report_pending();
                }
                last_count = Some(Instant::now());
            }
            if batch.is_empty() {
                // A wake between the read and here left a permit: no wake-up is lost.
                let _ = tokio::time::timeout(IDLE_POLL, sink.wake.notified()).await;
                continue;
            }
            for (id, raw) in batch {
                self.deliver(sink, id, raw, &mut last_count).await;
            }
        }
    }

    /// Sends one entry until it is delivered or dead-lettered. `last_count` is when the
    /// sink's queue was last counted in full (see [`Notifier::recount_pending`]).
    async fn deliver(
        &self,
        sink: &Sink,
        id: String,
        raw: Vec<u8>,
        last_count: &mut Option<Instant>,
    ) {
        let mut entry: OutboxEntry = match serde_json::from_slice(&raw) {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("the outbox entry cannot be decoded: {e}");
                self.bury(Some(sink), &id, None, Some(raw), reason).await;
                return;
            }
        };
        loop {
            if let Some(at) = entry.next_attempt_at {
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            let now = SystemTime::now();
            match self.post(sink, &id, &entry.notice).await {
                Ok(status) => {
                    self.persist(vec![RecordOp::Delete {
                        collection: OUTBOX,
                        id: id.clone(),
                    }])
                    .await;
                    self.telemetry.notify_sent();
                    decrement(&sink.pending);
                    self.report_pending();
                    tracing::info!(
                        sink = %sink.cfg.name,
                        id = %id,
                        incident = %entry.notice.number,
                        event = ?entry.notice.event,
                        attempts = entry.attempts + 1,
                        status,
                        "Incident notification delivered."
                    );
                    return;
                }
                Err(why) => {
                    self.telemetry.notify_attempt_failed();
                    entry.attempts = entry.attempts.saturating_add(1);
                    entry.last_error = Some(why.clone());
                    entry.last_attempt_at = Some(now);
                    let age = now.duration_since(entry.enqueued_at).unwrap_or_default();
                    if age >= self.max_age {
                        let reason = format!(
                            "still undeliverable after {} (max_attempts_age) and {} attempts; last error: {why}",
                            humantime::format_duration(Duration::from_secs(age.as_secs())),
                            entry.attempts
                        );
                        self.bury(Some(sink), &id, Some(entry), None, reason).await;
                        return;
                    }
                    let delay = self.backoff.delay(entry.attempts);
                    entry.next_attempt_at = Some(now + delay);
                    tracing::warn!(
                        sink = %sink.cfg.name,
                        id = %id,
                        incident = %entry.notice.number,
                        attempts = entry.attempts,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %why,
                        "Incident notification attempt failed; it will be retried."
                    );
                    match serde_json::to_vec(&entry) {
                        Ok(value) => {
                            self.persist(vec![RecordOp::Put {
                                collection: OUTBOX,
                                id: id.clone(),
                                value,
                            }])
                            .await;
                        }
                        // The stored entry stays as it was: only its attempt count is stale.
                        Err(e) => {
                            tracing::warn!(id = %id, error = %e, "An outbox entry could not be re-encoded.");
                        }
                    }
                    self.recount_pending(sink, last_count).await;
                }
            }
        }
    }

    /// Counts what `sink` has queued while its oldest entry keeps failing: the worker reads
    /// no new batch until that entry is delivered, so without this the pending gauge would
    /// stand still during the very outage it is there to show. Recounts after every failed
    /// attempt while the gauge is below a batch (one store read), at most every
    /// [`RECOUNT_EVERY`] above.
    async fn recount_pending(&self, sink: &Sink, last_count: &mut Option<Instant>) {
        let small = sink.pending.load(Ordering::Relaxed) < BATCH as u64;
        if !small && last_count.is_some_and(|t| t.elapsed() < RECOUNT_EVERY) {
            return;
        }
        let prefix = sink.prefix.clone();
        if let Ok(n) = self.blocking(move |s| count_prefix(s, &prefix)).await {
            sink.pending.store(n, Ordering::Relaxed);
            self.report_pending();
        }
        *last_count = Some(Instant::now());
    }

    /// One POST. Ok(status) for a 2xx answer; otherwise the reason, for the entry.
    async fn post(&self, sink: &Sink, id: &str, notice: &IncidentNotice) -> Result<u16, String> {
        let body = render(sink.cfg.format, notice).map_err(|e| format!("cannot render: {e}"))?;
        let mut req = self
            .client
            .post(&sink.cfg.url)
            .timeout(sink.cfg.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .header("Idempotency-Key", id)
            .body(body);
        if let Some(auth) = &sink.cfg.authorization {
            // Validated with the configuration; a value that still fails is left out, and
            // the sink's 401 says so.
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(auth) {
                value.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, value);
            }
        }
        let resp = req.send().await.map_err(|e| {
            let text = if e.is_timeout() {
                format!(
                    "timed out after {}",
                    humantime::format_duration(sink.cfg.timeout)
                )
            } else {
                // The URL may carry secrets in its query; the entry and the log name the sink.
                error_chain(&e.without_url())
            };
            truncate(&text, MAX_ERROR_BYTES).to_owned()
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let snippet = answer_snippet(resp).await;
        let text = if snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {snippet}")
        };
        Err(truncate(&text, MAX_ERROR_BYTES).to_owned())
    }

    /// Moves an entry to the dead letters (atomically with its delete), loudly.
    async fn bury(
        &self,
        sink: Option<&Sink>,
        id: &str,
        entry: Option<OutboxEntry>,
        raw: Option<Vec<u8>>,
        reason: String,
    ) {
        let sink_name = entry.as_ref().map_or_else(
            || id.split_once(':').map_or(id, |(n, _)| n).to_owned(),
            |e| e.sink.clone(),
        );
        let dead = DeadLetter {
            id: id.to_owned(),
            sink: sink_name.clone(),
            died_at: SystemTime::now(),
            reason: reason.clone(),
            entry,
            raw: raw.map(|r| String::from_utf8_lossy(&r).into_owned()),
        };
        let value = match serde_json::to_vec(&dead) {
            Ok(v) => v,
            // Cannot happen for these types; keep at least the reason.
            Err(_) => reason.clone().into_bytes(),
        };
        let dead_id = self.free_dead_id(id).await;
        self.persist(vec![
            RecordOp::Put {
                collection: DEAD_LETTERS,
                id: dead_id.clone(),
                value,
            },
            RecordOp::Delete {
                collection: OUTBOX,
                id: id.to_owned(),
            },
        ])
        .await;
        self.telemetry.notify_dead();
        if let Some(sink) = sink {
            decrement(&sink.pending);
            self.report_pending();
        }
        let (incident, attempts, last_error) = dead.entry.as_ref().map_or((None, 0, None), |e| {
            (
                Some(e.notice.number.as_str()),
                e.attempts,
                e.last_error.as_deref(),
            )
        });
        tracing::error!(
            sink = %sink_name,
            id = %id,
            dead_letter = %dead_id,
            incident = incident.unwrap_or("unknown"),
            attempts,
            last_error = last_error.unwrap_or(""),
            reason = %reason,
            "Incident notification moved to the dead letters; it will not be sent again."
        );
    }

    /// `id`, or `id.N` when a dead letter already has that id (a seq reused after the clock
    /// stepped back): a dead letter is never overwritten.
    async fn free_dead_id(&self, id: &str) -> String {
        for n in 0..1000u32 {
            let candidate = if n == 0 {
                id.to_owned()
            } else {
                format!("{id}.{n}")
            };
            let probe = candidate.clone();
            match self.blocking(move |s| s.record(DEAD_LETTERS, &probe)).await {
                Ok(None) => return candidate,
                Ok(Some(_)) => continue,
                // Cannot tell: a unique suffix from the clock.
                Err(_) => break,
            }
        }
        format!("{id}.{}", unix_micros(SystemTime::now()))
    }

    /// Writes `ops` until the store takes them.
    async fn persist(&self, ops: Vec<RecordOp>) {
        let mut delay = STORE_RETRY;
        loop {
            let attempt = ops.clone();
            match self.blocking(move |s| s.write_records(&attempt)).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, retry_in_s = delay.as_secs(), "Writing the notification outbox failed; delivery of this sink waits until it succeeds.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }

    /// Runs a blocking store call on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    fn report_pending(&self) {
        let total = self
            .sinks
            .iter()
            .map(|s| s.pending.load(Ordering::Relaxed))
            .sum();
        self.telemetry.notify_pending(total);
    }
}

// === impl Sink ===

impl Sink {
    fn wants(&self, notice: &IncidentNotice) -> bool {
        (self.cfg.categories.is_empty() || self.cfg.categories.contains(&notice.category))
            && notice.priority <= self.cfg.min_priority
    }
}

// === impl Backoff ===

impl Backoff {
    /// The delay before the next attempt after `attempts` failures.
    fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        let ceiling = self
            .initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

// === payloads ===

/// The `json` format: `{"source":"cmdb", ...the notice}`.
#[derive(Serialize)]
struct JsonBody<'a> {
    source: &'static str,
    #[serde(flatten)]
    notice: &'a IncidentNotice,
}

/// The `servicenow` format: an incident-table record. Choice values are strings, as the
/// Table API returns them (ServiceNow accepts numbers too).
#[derive(Serialize)]
struct ServiceNowIncident {
    short_description: String,
    description: String,
    impact: String,
    urgency: String,
    category: String,
    cmdb_ci: String,
    correlation_id: String,
    correlation_display: &'static str,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_notes: Option<String>,
}

/// The request body for `format`. Times outside 1970..=9999 are clamped into it.
pub fn render(format: SinkFormat, notice: &IncidentNotice) -> Result<Vec<u8>, serde_json::Error> {
    let clamped;
    let notice = if representable(notice.started_at) != notice.started_at
        || notice.resolved_at.is_some_and(|t| representable(t) != t)
    {
        clamped = IncidentNotice {
            started_at: representable(notice.started_at),
            resolved_at: notice.resolved_at.map(representable),
            ..notice.clone()
        };
        &clamped
    } else {
        notice
    };
    match format {
        SinkFormat::Json => serde_json::to_vec(&JsonBody {
            source: "cmdb",
            notice,
        }),
        SinkFormat::Servicenow => serde_json::to_vec(&servicenow(notice)),
    }
}

/// ServiceNow incident states: 1 New, 2 In Progress, 6 Resolved, 7 Closed.
fn servicenow_state(notice: &IncidentNotice) -> u8 {
    match notice.event {
        NoticeEvent::Opened => 1,
        NoticeEvent::Resolved => 6,
        NoticeEvent::Closed => 7,
        NoticeEvent::Updated => {
            let state = notice.state.to_ascii_lowercase().replace(['_', '-'], " ");
            match state.as_str() {
                "new" => 1,
                "resolved" => 6,
                "closed" => 7,
                _ => 2,
            }
        }
    }
}

fn servicenow(n: &IncidentNotice) -> ServiceNowIncident {
    let state = servicenow_state(n);
    let host = n.hostname.as_deref().unwrap_or(&n.host_id);
    let mut description = String::new();
    if !n.summary.is_empty() {
        description.push_str(&n.summary);
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "cmdb incident {} ({}, P{}, impact {}, urgency {}), state {}.\nHost: {} ({}); CI: {}.\nStarted: {}",
        n.number,
        n.category,
        n.priority,
        n.impact,
        n.urgency,
        n.state,
        host,
        n.host_id,
        n.ci_id,
        humantime::format_rfc3339_seconds(n.started_at),
    ));
    if let Some(at) = n.resolved_at {
        description.push_str(&format!(
            "; resolved: {}",
            humantime::format_rfc3339_seconds(at)
        ));
    }
    description.push_str(&format!(". Timeline: {} events.", n.timeline_len));
    let resolved = state == 6 || state == 7;
    let close_notes = resolved.then(|| {
        let at = n
            .resolved_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "an unknown time".to_owned());
        if n.summary.is_empty() {
            format!("Resolved in cmdb at {at}.")
        } else {
            format!("Resolved in cmdb at {at}: {}", n.summary)
        }
    });
    ServiceNowIncident {
        short_description: n.title.chars().take(SERVICENOW_SHORT_DESCRIPTION).collect(),
        description,
        impact: n.impact.to_string(),
        urgency: n.urgency.to_string(),
        category: n.category.clone(),
        cmdb_ci: host.to_owned(),
        correlation_id: n.number.clone(),
        correlation_display: "cmdb",
        state: state.to_string(),
        close_code: resolved.then_some(SERVICENOW_CLOSE_CODE),
        close_notes,
    }
}

// === outbox layout ===

fn outbox_id(sink: &str, seq: u64) -> String {
    format!("{sink}:{seq:020}")
}

/// The highest seq among queued ids (0 when none).
fn highest_seq(store: &dyn Store) -> Result<u64, StoreError> {
    let mut highest = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.records(OUTBOX, after.as_deref(), BATCH)?;
        let Some((last, _)) = page.last() else {
            return Ok(highest);
        };
        after = Some(last.clone());
        for (id, _) in &page {
            if let Some(seq) = id.rsplit_once(':').and_then(|(_, s)| s.parse::<u64>().ok()) {
                highest = highest.max(seq);
            }
        }
    }
}

/// Up to `limit` entries whose id starts with `prefix`, in id order.
fn read_prefix(
    store: &dyn Store,
    prefix: &str,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    // Every id with the prefix sorts after the bare prefix, and they are contiguous.
    let page = store.records(OUTBOX, Some(prefix), limit)?;
    Ok(page
        .into_iter()
        .take_while(|(id, _)| id.starts_with(prefix))
        .collect())
}

fn count_prefix(store: &dyn Store, prefix: &str) -> Result<u64, StoreError> {
    let mut n = 0u64;
    let mut after = prefix.to_owned();
    loop {
        let page = store.records(OUTBOX, Some(&after), BATCH)?;
        let mine: Vec<_> = page
            .into_iter()
            .take_while(|(id, _)| id.starts_with(prefix))
            .collect();
        n += mine.len() as u64;
        match mine.last() {
            Some((last, _)) if mine.len() == BATCH => after = last.clone(),
            _ => return Ok(n),
        }
    }
}

// === small pieces ===

fn decrement(n: &AtomicU64) {
    let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}

/// `t` clamped to what RFC 3339 can write (1970 to 9999): formatting panics outside.
fn representable(t: SystemTime) -> SystemTime {
    const LAST: u64 = 253_402_300_799;
    match t.duration_since(UNIX_EPOCH) {
        Err(_) => UNIX_EPOCH,
        Ok(d) if d.as_secs() > LAST => UNIX_EPOCH + Duration::from_secs(LAST),
        Ok(_) => t,
    }
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The notice with every string capped, so one entry stays small.
fn bounded(n: &IncidentNotice) -> IncidentNotice {
    let cap = |s: &str, max: usize| truncate(s, max).to_owned();
    IncidentNotice {
        event: n.event,
        number: cap(&n.number, MAX_FIELD_BYTES),
        title: cap(&n.title, MAX_TITLE_BYTES),
        category: cap(&n.category, MAX_FIELD_BYTES),
        priority: n.priority,
        impact: n.impact,
        urgency: n.urgency,
        state: cap(&n.state, MAX_FIELD_BYTES),
        ci_id: cap(&n.ci_id, MAX_FIELD_BYTES),
        host_id: cap(&n.host_id, MAX_FIELD_BYTES),
        hostname: n.hostname.as_deref().map(|h| cap(h, MAX_FIELD_BYTES)),
        started_at: representable(n.started_at),
        resolved_at: n.resolved_at.map(representable),
        summary: cap(&n.summary, MAX_SUMMARY_BYTES),
        timeline_len: n.timeline_len,
    }
}

/// The start of a refusing sink's answer, for the error text (bounded, single line).
async fn answer_snippet(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ANSWER_SNIPPET {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(one_line.trim(), MAX_ANSWER_SNIPPET).to_owned()
}

/// An error with its causes, "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// serde adapter: `SystemTime` as RFC 3339 with milliseconds (backoff is sub-second).
mod millis {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

/// serde adapter: `Option<SystemTime>` as RFC 3339 with milliseconds, or null.
mod opt_millis {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
