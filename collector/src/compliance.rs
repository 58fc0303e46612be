//! The contract between the configuration audit ([`crate::config_audit`]) and the CMDB
//! health KPIs ([`crate::cmdb_health`]): the health report's *compliance* KPI is the
//! latest audit run, read through [`ComplianceSource`] so neither module depends on the
//! other's internals.
//!
//! Semantics (per class, from the latest finished audit run):
//! - `total` = registered items of the class plus live items of the class the run found
//!   unregistered;
//! - `healthy` = registered items found live with every expected attribute matching;
//! - every other item is a [`ComplianceFailure`] whose `reason` says which deficiency
//!   (`missing`, `unregistered` or `mismatched: <attr>, …`) it is.
#![forbid(unsafe_code)]

use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// Compliance of one class in the latest audit run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComplianceRow {
    pub class: String,
    pub healthy: u64,
    pub total: u64,
}

/// One item that is not compliant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComplianceFailure {
    /// The live CI, when there is one (a missing CI has none).
    pub ci_id: Option<String>,
    pub class: String,
    /// The CI's natural key (as in the register).
    pub key: String,
    pub host_id: Option<String>,
    /// `missing`, `unregistered` or `mismatched: <attr>, …`.
    pub reason: String,
}

/// The compliance position of the latest finished audit run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComplianceReport {
    pub run_id: String,
    #[serde(serialize_with = "ser_time")]
    pub finished_at: SystemTime,
    pub classes: Vec<ComplianceRow>,
    pub failing: Vec<ComplianceFailure>,
}

/// Where the health report reads compliance from. Blocking (callers use
/// `spawn_blocking`).
pub trait ComplianceSource: Send + Sync + 'static {
    /// The latest finished audit run's compliance, `None` when no audit has run.
    fn latest(&self) -> Result<Option<ComplianceReport>, String>;

    /// The id of the latest finished run, cheaply: a consumer caching [`Self::latest`] asks
    /// this to know when a new run makes its cache stale. `None`: no run, or the source
    /// cannot tell (the consumer then relies on its own expiry).
    fn latest_run_id(&self) -> Option<String> {
        None
    }
}

fn ser_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}
