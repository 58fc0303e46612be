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

use std::time::SystemTime;

use cmdb_proto::model::{Attrs, CollectorReport, HostIdentity};
use cmdb_proto::v1;
use serde::{Deserialize, Serialize};

pub mod sled;

/// Agent ids come from the CN of the agent's client certificate ("agt-<uuid>").
pub type AgentId = String;
/// Host CI ids: "host-<16 hex>" (stable; minted at first identification).
pub type HostId = String;
/// CI ids: "ci-<16 hex>" = blake3(host_id, class, key), URL-safe.
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
    pub host_id: HostId,
    pub agents: Vec<AgentId>,
    /// The identity key both claimed, e.g. "product_uuid=4c4c…".
    pub identity_key: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub detected_at: SystemTime,
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
}

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
