//! A full consistency scan of the store, for operators (and tests) who need to know that
//! nothing was lost — sled 0.34 can silently drop damaged log records from the middle of
//! its log at recovery, which neither its own checks nor the seal (tail rollback) catch.
//!
//! Checked: every CI record decodes and is reachable from its id (`i/`); every CI's versions
//! are exactly 1..=`version`; every `i/` entry has its CI; every agent record decodes and
//! its host exists. Reads everything once (time and memory grow with the store): run it
//! on demand, not on every start.

use std::collections::HashMap;

use super::keys;
use super::txn::{backend, decode};
use crate::store::{AgentRecord, CiRecord, StoreError, host_ci_id};

/// Problems listed verbatim (the count covers all of them).
const MAX_LISTED: usize = 100;

/// What [`super::SledStore::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub cis: u64,
    pub versions: u64,
    pub agents: u64,
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

/// Per CI (`<host>\0<ci id>`): the next version number expected, and whether the run so
/// far was contiguous from 1.
type Runs = HashMap<Vec<u8>, (u64, bool)>;

pub(super) fn verify(tree: &sled::Tree) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut runs: Runs = HashMap::new();
    for k in tree.scan_prefix(keys::VERSION).keys() {
        let k = k.map_err(backend)?;
        report.versions += 1;
        let tail = keys::after_prefix(&k, keys::VERSION).unwrap_or_default();
        let Some(split) = tail.len().checked_sub(8) else {
            report.problem(format!(
                "malformed version key {:?}",
                String::from_utf8_lossy(&k)
            ));
            continue;
        };
        let (ci, num) = tail.split_at(split);
        let num = num.try_into().map(u64::from_be_bytes).unwrap_or(0);
        let run = runs.entry(ci.to_vec()).or_insert((1, true));
        run.1 &= num == run.0;
        run.0 = num + 1;
    }
    for kv in tree.scan_prefix(keys::CI) {
        let (k, v) = kv.map_err(backend)?;
        report.cis += 1;
        let rec: CiRecord = match decode(&k, &v) {
            Ok(r) => r,
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        let host = tree.get(keys::ci_host(&rec.id)).map_err(backend)?;
        if host.as_deref() != Some(rec.host_id.as_bytes()) {
            report.problem(format!(
                "CI {} is not indexed to its host {}",
                rec.id, rec.host_id
            ));
        }
        let tail = keys::after_prefix(&k, keys::CI).unwrap_or_default();
        match runs.remove(tail) {
            Some((next, true)) if next == rec.version + 1 => {}
            Some((next, contiguous)) => report.problem(format!(
                "CI {} is at version {} but its stored versions {} (next {next})",
                rec.id,
                rec.version,
                if contiguous {
                    "stop early"
                } else {
                    "have gaps"
                }
            )),
            None => report.problem(format!("CI {} has no versions", rec.id)),
        }
    }
    for ci in runs.keys() {
        report.problem(format!(
            "versions without a CI record: {}",
            String::from_utf8_lossy(ci)
        ));
    }
    for kv in tree.scan_prefix(keys::CI_HOST) {
        let (k, v) = kv.map_err(backend)?;
        let Some(id) = keys::trailing_ci_id(&k) else {
            report.problem(format!(
                "malformed CI id key {:?}",
                String::from_utf8_lossy(&k)
            ));
            continue;
        };
        if !tree
            .contains_key(keys::ci(&String::from_utf8_lossy(&v), &id))
            .map_err(backend)?
        {
            report.problem(format!("CI {id} is indexed but its record is missing"));
        }
    }
    for kv in tree.scan_prefix(keys::AGENT) {
        let (k, v) = kv.map_err(backend)?;
        report.agents += 1;
        match decode::<AgentRecord>(&k, &v) {
            Ok(a) => {
                if let Some(h) = &a.host_id
                    && !tree
                        .contains_key(keys::ci(h, &host_ci_id(h)))
                        .map_err(backend)?
                {
                    report.problem(format!("agent {} maps to missing host {h}", a.agent_id));
                }
            }
            Err(e) => report.problem(e.to_string()),
        }
    }
    Ok(report)
}
