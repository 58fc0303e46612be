//! The CMDB store: agents, hosts, CIs with their version history, relations, metric
//! summaries and clone records, behind the [`Store`] trait. `sled.rs` is the embedded
//! implementation; a PostgreSQL one comes later, so NO module outside `store/` touches sled.
//!
//! Promises every implementation keeps:
//! - [`Store::apply`] is atomic per call and idempotent per (agent, seq): events with a seq at
//!   or below the agent's `last_seq` are skipped, so at-least-once delivery gives exactly-once
//!   effect. After `apply` returns, the effect is durable (flushed): ingest acks only then.
//! - CIs are never deleted on disappearance: they become `absent` (with a version recording
//!   it) and `retired` after the retention period. Every change is a new version carrying
//!   the source agent, seq and observation time.
//! - A collector that did not report `ok` for a class never makes that class's CIs absent.
//! - Host CIs are CIs too: class [`HOST_CLASS`], key = host id, owned by the host itself.
//!
//! Backend-independent pieces live here and in [`identify`] (host identification as a pure
//! function); everything sled-specific stays in [`sled`].

use std::time::{Duration, SystemTime};

use cmdb_proto::model::{Attrs, CollectorReport, HostIdentity};
use cmdb_proto::v1;
use serde::{Deserialize, Serialize};

pub mod identify;
#[cfg(test)]
pub mod memory;
pub mod record_map;
pub mod sled;

/// The class of host CIs (key = host id).
pub const HOST_CLASS: &str = "host";

/// Agent ids come from the CN of the agent's client certificate (`agt-<uuid>`).
pub type AgentId = String;
/// Host CI ids: `host-<16 hex>` (stable; minted at first identification).
pub type HostId = String;
/// CI ids: `ci-<16 hex>` = blake3(host_id, class, key), URL-safe.
pub type CiId = String;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database reported an error (I/O, corruption).
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored record could not be decoded (a bug or corruption).
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store on disk is unusable; the operator must act (move it aside, restore).
    #[error("store at {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    /// Events arrived for an agent that was never identified (call `identify` first).
    #[error("agent {agent_id} has no identified host; identify it before applying events")]
    Unidentified { agent_id: AgentId },
}

/// The CI id of (host, class, key): "ci-" + the first 16 hex digits of
/// blake3(host_id \0 class \0 key). Stable, URL-safe, fixed length.
pub fn ci_id(host_id: &str, class: &str, key: &str) -> CiId {
    let mut h = blake3::Hasher::new();
    h.update(host_id.as_bytes());
    h.update(b"\0");
    h.update(class.as_bytes());
    h.update(b"\0");
    h.update(key.as_bytes());
    let hex = h.finalize().to_hex();
    format!("ci-{}", &hex.as_str()[..16])
}

/// The CI id of a host's own CI.
pub fn host_ci_id(host_id: &str) -> CiId {
    ci_id(host_id, HOST_CLASS, host_id)
}

/// What the collector knows about one enrolled agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    /// The host CI this agent reports for, once identified.
    pub host_id: Option<HostId>,
    pub instance_id: String,
    pub version: String,
    pub hostname: Option<String>,
    pub identity: HostIdentity,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub enrolled_at: SystemTime,
    #[serde(with = "opt_time")]
    pub last_seen: Option<SystemTime>,
    /// Highest seq applied (exactly-once watermark).
    pub last_seq: u64,
    pub connected: bool,
    /// Backlog the agent reported in its last heartbeat.
    pub outbox_events: u64,
    pub outbox_bytes: u64,
    /// Collector statuses from the agent's last inventory.
    pub collectors: Vec<CollectorReport>,
    pub revoked: bool,
    /// The last graceful shutdown the agent announced.
    #[serde(default)]
    pub last_shutdown: Option<ShutdownRecord>,
    /// Gap events received: the agent's outbox had to drop something.
    #[serde(default)]
    pub gaps: u64,
    /// Totals reported by those Gap events.
    #[serde(default)]
    pub dropped_metrics: u64,
    #[serde(default)]
    pub dropped_inventory_changes: u64,
    /// Hex blake3 content hash of the agent's inventory after the last applied Snapshot or
    /// Delta (empty until one arrives): compare with Hello's `inventory_hash`.
    #[serde(default)]
    pub inventory_hash: String,
}

impl AgentRecord {
    /// A freshly enrolled agent: not identified, nothing applied, not connected.
    pub fn new(
        agent_id: &str,
        instance_id: &str,
        version: &str,
        identity: HostIdentity,
        enrolled_at: SystemTime,
    ) -> Self {
        AgentRecord {
            agent_id: agent_id.to_owned(),
            host_id: None,
            instance_id: instance_id.to_owned(),
            version: version.to_owned(),
            hostname: identity.hostname.clone(),
            identity,
            enrolled_at,
            last_seen: None,
            last_seq: 0,
            connected: false,
            outbox_events: 0,
            outbox_bytes: 0,
            collectors: Vec::new(),
            revoked: false,
            last_shutdown: None,
            gaps: 0,
            dropped_metrics: 0,
            dropped_inventory_changes: 0,
            inventory_hash: String::new(),
        }
    }
}

/// A graceful Shutdown event as received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShutdownRecord {
    /// When the agent said it stopped (the event's observed_at).
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub at: SystemTime,
    pub reason: String,
    /// When the collector applied it. An agent whose last word was a shutdown (nothing seen
    /// after `received_at`) is not live, whatever its `last_seen`.
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub received_at: SystemTime,
}

/// Lifecycle of a CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiState {
    Present,
    Absent,
    Retired,
}

/// The current state of one CI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CiRecord {
    pub id: CiId,
    pub host_id: HostId,
    pub class: String,
    pub key: String,
    pub state: CiState,
    pub attrs: Attrs,
    /// Number of the latest version (1-based).
    pub version: u64,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub first_seen: SystemTime,
    /// Observation time of the latest event that confirmed or changed this CI.
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub last_seen: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub last_changed: SystemTime,
    pub source_agent: AgentId,
    pub source_seq: u64,
}

/// What a version records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
    Retired,
}

/// One version of a CI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CiVersion {
    pub ci_id: CiId,
    pub version: u64,
    pub change: ChangeKind,
    pub state: CiState,
    pub attrs: Attrs,
    /// Attributes before this version (empty for the first).
    pub old_attrs: Attrs,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub observed_at: SystemTime,
    pub agent_id: AgentId,
    pub seq: u64,
    /// Change record that authorised it (set by the drift engine later).
    pub change_id: Option<String>,
}

/// A relation between two CIs of one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationRecord {
    pub from: CiId,
    pub to: CiId,
    pub kind: String,
    pub host_id: HostId,
    pub present: bool,
    /// The ends as the agent named them, `<class>/<key>`.
    #[serde(default)]
    pub from_ref: String,
    #[serde(default)]
    pub to_ref: String,
}

/// A stored one-minute metric window of one host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub host_id: HostId,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub window_start: SystemTime,
    pub window_seconds: u32,
    pub summaries: Vec<MetricSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub p95: f64,
    pub samples: u32,
}

/// Two live agents claiming one host identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloneRecord {
    /// The host both agents claimed (the original).
    pub host_id: HostId,
    /// The live agent(s) already on `host_id`, then the newcomer.
    pub agents: Vec<AgentId>,
    /// The identity key both claimed, e.g. "product_uuid=4c4c…".
    pub identity_key: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub detected_at: SystemTime,
    /// The host minted for the newcomer (its attr `clone_of` = `host_id`).
    #[serde(default)]
    pub clone_host_id: HostId,
}

/// Filter for [`Store::cis`]. All given conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct CiFilter {
    pub class: Option<String>,
    /// A host id, or a hostname (exact match).
    pub host: Option<String>,
    /// Case-insensitive substring of the key or of any string attribute value.
    pub q: Option<String>,
    /// Include absent and retired CIs (default: present only).
    pub include_absent: bool,
    /// At most this many (the API caps it).
    pub limit: usize,
    /// Skip CIs whose id is <= this (keyset pagination; results are ordered by id).
    pub after: Option<CiId>,
}

/// One CI as a bulk scan ([`Store::scan_class`]) hands it over: its identity, state and
/// last sighting borrowed from the store's own buffers, its attributes looked up one by one
/// (a backend may leave them encoded and decode only those asked for).
pub struct CiView<'a> {
    pub id: &'a str,
    pub host_id: &'a str,
    pub class: &'a str,
    pub key: &'a str,
    pub state: CiState,
    pub last_seen: SystemTime,
    attrs: ViewAttrs<'a>,
}

/// A backend's lookup of one attribute in its encoded attributes, decoding it.
type Find = fn(&[u8], &str) -> Option<cmdb_proto::model::AttrValue>;

/// A backend's lookup of a string attribute in its encoded attributes, borrowing it.
type FindStr = for<'b> fn(&'b [u8], &str) -> Option<&'b str>;

enum ViewAttrs<'a> {
    Decoded(&'a Attrs),
    /// Bytes the backend checked, and its lookup for them.
    Encoded {
        bytes: &'a [u8],
        find: Find,
        find_str: FindStr,
    },
}

impl<'a> CiView<'a> {
    /// A view of a decoded record.
    pub fn of(rec: &'a CiRecord) -> Self {
        CiView {
            id: &rec.id,
            host_id: &rec.host_id,
            class: &rec.class,
            key: &rec.key,
            state: rec.state,
            last_seen: rec.last_seen,
            attrs: ViewAttrs::Decoded(&rec.attrs),
        }
    }

    /// A view whose attributes stay encoded: `find(bytes, name)` decodes one of them,
    /// `find_str(bytes, name)` borrows one that is a string (`None` if absent or not a
    /// string).
    pub(crate) fn encoded(
        (id, host_id, class, key): (&'a str, &'a str, &'a str, &'a str),
        state: CiState,
        last_seen: SystemTime,
        bytes: &'a [u8],
        (find, find_str): (Find, FindStr),
    ) -> Self {
        CiView {
            id,
            host_id,
            class,
            key,
            state,
            last_seen,
            attrs: ViewAttrs::Encoded {
                bytes,
                find,
                find_str,
            },
        }
    }

    /// The attribute `name`, if the CI has it.
    pub fn attr(&self, name: &str) -> Option<std::borrow::Cow<'a, cmdb_proto::model::AttrValue>> {
        match &self.attrs {
            ViewAttrs::Decoded(a) => a.get(name).map(std::borrow::Cow::Borrowed),
            ViewAttrs::Encoded { bytes, find, .. } => {
                find(bytes, name).map(std::borrow::Cow::Owned)
            }
        }
    }

    /// The attribute `name` if the CI has it and it is a string, borrowed (a backend that
    /// keeps attributes encoded decodes nothing else and allocates nothing).
    pub fn attr_str(&self, name: &str) -> Option<&'a str> {
        match &self.attrs {
            ViewAttrs::Decoded(a) => match a.get(name) {
                Some(cmdb_proto::model::AttrValue::Str(s)) => Some(s.as_str()),
                _ => None,
            },
            ViewAttrs::Encoded {
                bytes, find_str, ..
            } => find_str(bytes, name),
        }
    }
}

/// One of several concurrent bulk scans ([`Store::scan_class`]): it reads the CIs of the
/// hosts whose id hashes to `index` (of `of` parts), so the parts together read every CI
/// exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanPart {
    pub index: usize,
    pub of: usize,
}

impl ScanPart {
    /// The whole scan in one part.
    pub const ALL: ScanPart = ScanPart { index: 0, of: 1 };

    /// Whether this part reads the CIs of `host_id` (FNV-1a of the id, modulo `of`).
    pub fn holds(&self, host_id: &str) -> bool {
        if self.of <= 1 {
            return true;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in host_id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.of as u64) as usize == self.index
    }
}

/// Result of one [`Store::apply`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyOutcome {
    /// The agent's watermark after this call (ack this).
    pub last_seq: u64,
    /// Events applied now (not skipped as duplicates).
    pub applied: u64,
    /// Events skipped because their seq was already applied.
    pub duplicates: u64,
    /// CI versions written.
    pub ci_versions: u64,
    /// Events (or items inside them) that could not be applied: unknown kind, seq 0 on a
    /// sequenced event, an inventory that does not convert, a class with a NUL byte, a new
    /// class beyond the store's limit of distinct classes (sled: 1024). Their seq still
    /// advances the watermark: resending them cannot succeed.
    pub rejected: u64,
    /// Events without `observed_at`: versions got the time of receipt instead.
    pub missing_observed_at: u64,
    /// Heartbeats (seq 0) passed to apply: recorded, never sequenced.
    pub unsequenced: u64,
}

/// A position in the change feed: versions are ordered by (commit, CI id, version).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeedPos {
    /// The store commit (one `apply`, `identify` or retention batch) that wrote the version.
    pub commit: u64,
    pub ci_id: CiId,
    pub version: u64,
}

/// One CI version from the change feed, with the CI's identity: what the drift engine
/// evaluates. `version.old_attrs` is filled (the previous version's attributes).
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEntry {
    pub pos: FeedPos,
    pub host_id: HostId,
    pub class: String,
    pub key: String,
    pub version: CiVersion,
}

/// A feed entry without the version's contents: which CI changed, and where it is in the
/// feed ([`Store::feed_heads`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FeedHead {
    pub pos: FeedPos,
    pub host_id: HostId,
    pub class: String,
    pub key: String,
}

impl From<FeedEntry> for FeedHead {
    fn from(e: FeedEntry) -> Self {
        FeedHead {
            pos: e.pos,
            host_id: e.host_id,
            class: e.class,
            key: e.key,
        }
    }
}

/// Collections of the collector's own records (baselines, change records, incidents, …),
/// kept by the store as opaque values (the owning module chooses the encoding, JSON so far).
/// Names are short ASCII words; ids are at most [`MAX_RECORD_ID_BYTES`] bytes.
pub const MAX_RECORD_ID_BYTES: usize = 256;
/// Largest single record value the store accepts.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// One write of [`Store::write_records`].
#[derive(Clone, Debug, PartialEq)]
pub enum RecordOp {
    Put {
        collection: &'static str,
        id: String,
        value: Vec<u8>,
    },
    Delete {
        collection: &'static str,
        id: String,
    },
}

/// Longest collection name the store accepts (names are short ASCII words).
pub const MAX_COLLECTION_BYTES: usize = 64;

impl RecordOp {
    pub fn collection(&self) -> &'static str {
        match self {
            RecordOp::Put { collection, .. } | RecordOp::Delete { collection, .. } => collection,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            RecordOp::Put { id, .. } | RecordOp::Delete { id, .. } => id,
        }
    }
}

/// Refuses a collection name every backend could not store as it is: empty, longer than
/// [`MAX_COLLECTION_BYTES`], not ASCII, or with a NUL byte (the key separator). Names are
/// the owning modules' constants, so a refusal is a bug: [`StoreError::Backend`].
pub fn check_collection(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > MAX_COLLECTION_BYTES
        || !name.is_ascii()
        || name.contains('\0')
    {
        return Err(StoreError::Backend(format!(
            "invalid record collection name {:?}: it must be 1 to {MAX_COLLECTION_BYTES} \
             ASCII bytes without NUL",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// Whether `id` can name a record: 1 to [`MAX_RECORD_ID_BYTES`] bytes without NUL. A read
/// of an id that cannot exist finds nothing (ids often come from API paths).
pub fn valid_record_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_RECORD_ID_BYTES && !id.contains('\0')
}

/// What every [`Store::write_records`] checks before writing anything: a valid collection
/// name and id, and a value of at most [`MAX_RECORD_BYTES`].
pub fn check_record_op(op: &RecordOp) -> Result<(), StoreError> {
    check_collection(op.collection())?;
    let id = op.id();
    if !valid_record_id(id) {
        return Err(StoreError::Backend(format!(
            "invalid record id {:?} ({} bytes) in collection {}: it must be 1 to \
             {MAX_RECORD_ID_BYTES} bytes without NUL",
            id.chars().take(80).collect::<String>(),
            id.len(),
            op.collection()
        )));
    }
    if let RecordOp::Put { value, .. } = op
        && value.len() > MAX_RECORD_BYTES
    {
        return Err(StoreError::Backend(format!(
            "record {}/{id} is {} bytes, over the limit of {MAX_RECORD_BYTES}",
            op.collection(),
            value.len()
        )));
    }
    Ok(())
}

/// How long a feed step of derived work waits for agents' writes to pause before it commits
/// anyway ([`Store::wait_for_idle_writers`]). Under a sustained storm each step then waits
/// the whole 250 ms (steps are up to 5 000 entries: still up to 20 000 judged per second),
/// and ingest keeps the writer lock meanwhile: measured, +23 % CI changes/s acked and a
/// quarter off ack p99 (docs/BENCHMARKS.md).
pub const DERIVED_WAIT: Duration = Duration::from_millis(250);

/// The CMDB store. Blocking API: async callers use `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    // === agents ===
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    fn put_agent(&self, rec: &AgentRecord) -> Result<(), StoreError>;

    // === ingest ===
    /// Identifies the host of `agent_id` from `identity` (ranked keys, placeholders ignored),
    /// minting a host CI if none matches, records the mapping on the agent, and returns the
    /// host id. Records a clone when another *live* agent already claims the same host.
    fn identify(
        &self,
        agent_id: &str,
        instance_id: &str,
        identity: &HostIdentity,
        now: SystemTime,
    ) -> Result<HostId, StoreError>;
    /// Applies events of one agent in seq order, exactly once, atomically and durably.
    fn apply(&self, agent_id: &str, events: &[v1::Event]) -> Result<ApplyOutcome, StoreError>;

    // === reads ===
    fn ci(&self, id: &str) -> Result<Option<CiRecord>, StoreError>;
    /// All versions of a CI, oldest first.
    fn ci_versions(&self, id: &str) -> Result<Vec<CiVersion>, StoreError>;
    fn cis(&self, filter: &CiFilter) -> Result<Vec<CiRecord>, StoreError>;
    /// Every CI of `class` (absent and retired ones included) on the hosts `part` holds,
    /// each handed to `f` once, in no promised order: the bulk read of the configuration
    /// audit (parts may run concurrently). Cheaper than paging [`Store::cis`] where the
    /// backend can skip the class index and the full decode; the default does exactly that
    /// paging.
    fn scan_class(
        &self,
        class: &str,
        part: ScanPart,
        f: &mut dyn FnMut(&CiView<'_>),
    ) -> Result<(), StoreError> {
        const PAGE: usize = 5_000;
        let mut after: Option<String> = None;
        loop {
            let page = self.cis(&CiFilter {
                class: Some(class.to_owned()),
                include_absent: true,
                limit: PAGE,
                after: after.clone(),
                ..CiFilter::default()
            })?;
            for ci in page.iter().filter(|c| part.holds(&c.host_id)) {
                f(&CiView::of(ci));
            }
            match page.last() {
                Some(last) if page.len() >= PAGE => after = Some(last.id.clone()),
                _ => return Ok(()),
            }
        }
    }
    /// Relations with `id` at either end.
    fn relations_of(&self, id: &str) -> Result<Vec<RelationRecord>, StoreError>;
    fn metrics(
        &self,
        host_id: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError>;
    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError>;
    /// Bytes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    // === change feed (the drift engine's input) ===
    /// CI versions written after `after` (all of them from the start when `None`), in
    /// [`FeedPos`] order, at most `limit`. Every version any commit wrote appears exactly
    /// once, so a consumer that persists the last position it handled misses nothing and
    /// sees nothing twice. Record writes ([`Store::write_records`]) produce no entries.
    fn feed(&self, after: Option<&FeedPos>, limit: usize) -> Result<Vec<FeedEntry>, StoreError>;
    /// The same positions as [`Store::feed`], without the versions' contents: for consumers
    /// that look only at which CIs changed (host links reads the current CI of the few
    /// classes it follows), sparing the attribute decoding and previous-version lookups of
    /// every entry they skip.
    fn feed_heads(
        &self,
        after: Option<&FeedPos>,
        limit: usize,
    ) -> Result<Vec<FeedHead>, StoreError> {
        Ok(self
            .feed(after, limit)?
            .into_iter()
            .map(FeedHead::from)
            .collect())
    }

    // === the collector's own records ===
    /// One record of `collection`, if present (an id that cannot exist, see
    /// [`valid_record_id`], is not). An invalid collection name is an error
    /// ([`check_collection`]).
    fn record(&self, collection: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records of `collection` whose id sorts after `after` (from the first when `None`),
    /// in id order (bytewise), at most `limit`.
    fn records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `ops` atomically (all or none) and durably (flushed before it returns).
    /// Refuses invalid collection names, ids that are empty, over [`MAX_RECORD_ID_BYTES`]
    /// or hold a NUL, and values over [`MAX_RECORD_BYTES`] ([`check_record_op`]) with
    /// [`StoreError::Backend`] and writes nothing.
    fn write_records(&self, ops: &[RecordOp]) -> Result<(), StoreError>;
    /// For derived work (the judgment engine's and host links' feed steps) before it
    /// commits: waits, at most [`DERIVED_WAIT`], until no write is in flight, so that
    /// agents' applies (and their acks) go first while they keep coming. Backends with no
    /// writer contention return at once.
    fn wait_for_idle_writers(&self) {}

    // === liveness (cheap, not flushed: durable with the next flush) ===
    /// Marks the agent's stream up or down. Returns false for an unknown agent.
    fn set_connected(
        &self,
        agent_id: &str,
        connected: bool,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let Some(mut rec) = self.agent(agent_id)? else {
            return Ok(false);
        };
        rec.connected = connected;
        rec.last_seen = Some(now);
        self.put_agent(&rec)?;
        Ok(true)
    }
    /// Records a heartbeat: last_seen and the reported outbox backlog. No version, no flush.
    /// Returns false for an unknown agent.
    fn record_heartbeat(
        &self,
        agent_id: &str,
        outbox_events: u64,
        outbox_bytes: u64,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let Some(mut rec) = self.agent(agent_id)? else {
            return Ok(false);
        };
        rec.last_seen = Some(now);
        rec.outbox_events = outbox_events;
        rec.outbox_bytes = outbox_bytes;
        self.put_agent(&rec)?;
        Ok(true)
    }

    // === maintenance ===
    /// Retires CIs that have been absent since before `absent_before` (a Retired version
    /// each; nothing is deleted). Returns how many. The default does nothing.
    fn retire_absent(&self, absent_before: SystemTime) -> Result<u64, StoreError> {
        let _ = absent_before;
        Ok(0)
    }
    /// Deletes metric windows that started before `before`. Returns how many. The default
    /// does nothing.
    fn prune_metrics(&self, before: SystemTime) -> Result<u64, StoreError> {
        let _ = before;
        Ok(0)
    }
}

/// serde adapter for `Option<SystemTime>` as RFC 3339 or null.
pub mod opt_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
