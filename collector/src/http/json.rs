//! The JSON bodies of the HTTP API, shared by the server ([`super::router`]) and its client
//! (`cmdbctl`), so both sides agree on the shape at compile time.
//!
//! Records from the store (`AgentRecord`, `CiRecord`, `CloneRecord`, …) are served as they are; this
//! module only adds the envelopes around them. Adding a field is compatible (clients ignore
//! unknown fields); renaming or removing one is a new API version.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::store::{CiId, CiRecord, CiState, CiVersion, HostId, MetricRecord, RelationRecord};

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `unavailable` (with status 503).
    pub status: String,
}

/// `GET /api/v1/whoami`: the principal of the bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    /// viewer, operator, change-manager, auditor or admin.
    pub role: String,
}

/// A list that is always complete: `{"items": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

/// One page of a keyset-paginated list: pass `next_after` as `after` for the next page;
/// `null` means this was the last page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

/// `GET /api/v1/cis/{id}`: the current record plus its whole history, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CiDetail {
    #[serde(flatten)]
    pub ci: CiRecord,
    pub versions: Vec<CiVersion>,
}

/// Which end of a relation the requested CI is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The requested CI is `from`.
    Outgoing,
    /// The requested CI is `to`.
    Incoming,
}

/// The other end of a relation, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiRef {
    pub id: CiId,
    pub class: String,
    pub key: String,
    pub state: CiState,
}

/// `GET /api/v1/cis/{id}/relations` items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelationView {
    #[serde(flatten)]
    pub relation: RelationRecord,
    pub direction: Direction,
    /// The other end's class and key; `null` when that CI is not in the store.
    pub other: Option<CiRef>,
    /// Derived by the collector from observed connections (`crate::host_links`), not
    /// reported by an agent.
    #[serde(default)]
    pub derived: bool,
}

/// `GET /api/v1/hosts/{id}/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    pub host_id: HostId,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub from: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub to: SystemTime,
    /// One-minute windows starting between `from` and `to`, oldest first.
    pub items: Vec<MetricRecord>,
}

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `internal`, `unavailable`.
    pub code: String,
    /// For humans; may change between versions.
    pub message: String,
}
