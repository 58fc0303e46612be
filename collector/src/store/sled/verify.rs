//! A full consistency scan of the store, for operators (and tests) who need to know that
//! nothing was lost — sled 0.34 can silently drop damaged log records from the middle of
//! its log at recovery, which neither its own checks nor the seal (tail rollback) catch.
//!
//! Checked: every CI record decodes, is in its class index (`xc/`, which also resolves bare
//! ids), and its version chain reaches versions `version` down to 1 (see `history`); every
//! version page decodes and every version in it belongs to some CI's chain; every class
//! index entry has its CI; every absent-index entry has an absent CI behind it; every agent
//! record decodes and its host exists; every record of the collector's own collections
//! (`j/`, opaque values) has a well-formed key. Reads everything once plus one page lookup
//! per version (time grows with the store): run it on demand, not on every start.

use super::codec::{self, PageEntries};
use super::history;
use super::keys;
use super::txn::{backend, decode};
use super::vlog::VersionLog;
use crate::store::{
    AgentRecord, CiState, HOST_CLASS, StoreError, check_collection, host_ci_id, valid_record_id,
};

/// Problems listed verbatim (the count covers all of them).
const MAX_LISTED: usize = 100;

/// What [`super::SledStore::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub cis: u64,
    pub versions: u64,
    pub agents: u64,
    /// Records of the collector's own collections (`Store::write_records`).
    pub records: u64,
    /// Number of problems found (0: consistent).
    pub problem_count: u64,
    /// The first problems, described.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_consistent(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(what);
        }
    }
}

pub(super) fn verify(tree: &sled::Tree, log: &VersionLog) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut reachable = 0u64;
    for kv in tree.scan_prefix(keys::CI) {
        let (k, v) = kv.map_err(backend)?;
        report.cis += 1;
        let Some((host, class, id)) = keys::ci_parts(&k) else {
            report.problem(format!(
                "malformed CI key {:?}",
                String::from_utf8_lossy(&k)
            ));
            continue;
        };
        let (rec, head) = match codec::decode_ci(&k, host, class, id, &v) {
            Ok(r) => r,
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        if tree
            .get(keys::by_class(class, id))
            .map_err(backend)?
            .as_deref()
            != Some(host.as_bytes())
        {
            report.problem(format!(
                "CI {id} is not in the class index (class {class}, host {host})"
            ));
        }
        match history::check_chain(tree, log, &rec, head)? {
            Ok(n) => reachable += n,
            Err(why) => report.problem(why),
        }
    }
    for kv in tree.scan_prefix(keys::VERSION) {
        let (k, value) = kv.map_err(backend)?;
        let page = match log.page(&k, &value) {
            Ok(page) => page,
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        let entries = match PageEntries::new(&k, &page) {
            Ok(e) => e,
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        for entry in entries {
            match entry.and_then(|(_, _, payload)| codec::decode_version_payload(&k, payload)) {
                Ok(_) => report.versions += 1,
                Err(e) => report.problem(e.to_string()),
            }
        }
    }
    if report.versions > reachable {
        report.problem(format!(
            "{} stored versions belong to no CI's history (a CI record lost an update?)",
            report.versions - reachable
        ));
    }
    for kv in tree.scan_prefix(keys::BY_CLASS) {
        let (k, host) = kv.map_err(backend)?;
        let (Some(id), Some(class)) = (keys::trailing_ci_id(&k), keys::class_of_index_key(&k))
        else {
            report.problem(format!(
                "malformed class index key {:?}",
                String::from_utf8_lossy(&k)
            ));
            continue;
        };
        let record = keys::ci(
            &String::from_utf8_lossy(&host),
            &String::from_utf8_lossy(class),
            &id,
        );
        if !tree.contains_key(record).map_err(backend)? {
            report.problem(format!(
                "CI {id} is in the class index but its record is missing"
            ));
        }
    }
    for kv in tree.scan_prefix(keys::ABSENT) {
        let (k, v) = kv.map_err(backend)?;
        let found = match (keys::trailing_ci_id(&k), keys::parse_location(&v)) {
            (Some(id), Some((host, class))) => tree
                .get(keys::ci(&host, &class, &id))
                .map_err(backend)?
                .map(|v| (id, host, class, v)),
            _ => None,
        };
        let absent = match &found {
            Some((id, host, class, v)) => codec::decode_ci(&k, host, class, id, v)
                .is_ok_and(|(rec, _)| rec.state == CiState::Absent),
            None => false,
        };
        if !absent {
            report.problem(format!(
                "absent index entry {:?} has no absent CI behind it",
                String::from_utf8_lossy(&k)
            ));
        }
    }
    for kv in tree.scan_prefix(keys::AGENT) {
        let (k, v) = kv.map_err(backend)?;
        report.agents += 1;
        match decode::<AgentRecord>(&k, &v) {
            Ok(a) => {
                if let Some(h) = &a.host_id
                    && !tree
                        .contains_key(keys::ci(h, HOST_CLASS, &host_ci_id(h)))
                        .map_err(backend)?
                {
                    report.problem(format!("agent {} maps to missing host {h}", a.agent_id));
                }
            }
            Err(e) => report.problem(e.to_string()),
        }
    }
    for k in tree.scan_prefix(keys::RECORD).keys() {
        let k = k.map_err(backend)?;
        report.records += 1;
        let valid = keys::record_parts(&k).is_some_and(|(collection, id)| {
            check_collection(collection).is_ok() && valid_record_id(id)
        });
        if !valid {
            report.problem(format!(
                "malformed record key {:?}",
                String::from_utf8_lossy(&k)
            ));
        }
    }
    Ok(report)
}
