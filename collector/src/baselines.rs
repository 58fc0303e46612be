//! Baselines: named, scoped snapshots of CIs, captured from live state, approved by a
//! change manager, diffable against live state, advanced when a change that touched them
//! closes.
//!
//! A baseline's items are the full attributes at capture time; comparisons use only the
//! significant attributes (the class's volatile attributes never differ).

use std::collections::BTreeMap;
use std::time::SystemTime;

use cmdb_proto::model::Attrs;
use serde::{Deserialize, Serialize};

use crate::changes::AttrChange;
use crate::drift::{DeviationKind, deviation};
use crate::policy::AttributePolicies;
use crate::selector::{Selector, Subject};
use crate::store::{CiFilter, CiRecord, CiState, Store, StoreError};

/// Most CIs one baseline may hold: a wider scope is refused, not truncated.
pub const MAX_BASELINE_ITEMS: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineState {
    /// Captured, waiting for a change manager.
    Pending,
    Approved,
    /// A newer baseline of the same scope was approved.
    Superseded,
}

/// One CI in a baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineItem {
    pub host_id: String,
    pub class: String,
    pub key: String,
    pub attrs: Attrs,
    /// The CI's version when captured (or advanced): later versions are judged.
    #[serde(default)]
    pub version: u64,
}

/// A baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// `BL` + 7 digits.
    pub id: String,
    pub name: String,
    pub scope: Vec<Selector>,
    pub state: BaselineState,
    /// A host's first inventory (made by the collector, not a person).
    #[serde(default)]
    pub initial: bool,
    /// The host of an initial baseline.
    #[serde(default)]
    pub host_id: Option<String>,
    /// The store commit an initial baseline was captured after: versions of its host up to
    /// this commit are part of the capture, not drift.
    #[serde(default)]
    pub captured_commit: u64,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub captured_at: SystemTime,
    pub captured_by: String,
    #[serde(default, with = "crate::store::opt_time")]
    pub approved_at: Option<SystemTime>,
    #[serde(default)]
    pub approved_by: Option<String>,
    /// Times a closing change advanced it, and the last one.
    #[serde(default)]
    pub advances: u64,
    #[serde(default)]
    pub last_advanced_by: Option<String>,
    /// CI id → item.
    pub items: BTreeMap<String, BaselineItem>,
}

/// A baseline without its items (lists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineSummary {
    pub id: String,
    pub name: String,
    pub scope: Vec<Selector>,
    pub state: BaselineState,
    pub initial: bool,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub captured_at: SystemTime,
    pub captured_by: String,
    #[serde(default, with = "crate::store::opt_time")]
    pub approved_at: Option<SystemTime>,
    pub approved_by: Option<String>,
    pub advances: u64,
    pub items: usize,
}

impl Baseline {
    pub fn summary(&self) -> BaselineSummary {
        BaselineSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            scope: self.scope.clone(),
            state: self.state,
            initial: self.initial,
            captured_at: self.captured_at,
            captured_by: self.captured_by.clone(),
            approved_at: self.approved_at,
            approved_by: self.approved_by.clone(),
            advances: self.advances,
            items: self.items.len(),
        }
    }

    /// Whether the baseline's scope covers `s`.
    pub fn covers(&self, s: &Subject<'_>) -> bool {
        self.scope.iter().any(|sel| sel.matches(s))
    }

    /// Moves one CI of the baseline to its current state (`None`: it is gone).
    pub fn advance_item(&mut self, ci_id: &str, item: Option<BaselineItem>, by: &str) {
        match item {
            Some(item) => {
                self.items.insert(ci_id.to_owned(), item);
            }
            None => {
                self.items.remove(ci_id);
            }
        }
        self.advances += 1;
        self.last_advanced_by = Some(by.to_owned());
    }
}

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The scope covers more than [`MAX_BASELINE_ITEMS`].
    #[error("the scope covers more than {MAX_BASELINE_ITEMS} CIs; narrow it")]
    TooLarge,
}

/// Host id → hostname, for selector matching.
pub type Hostnames = BTreeMap<String, Option<String>>;

/// The live, present CIs matching `scope`, read from the store page by page. Hosts are
/// narrowed by the selectors' host terms and classes by exact class terms first, so a
/// scoped capture reads only what it may keep.
pub fn live_items(
    store: &dyn Store,
    scope: &[Selector],
    hosts: &Hostnames,
) -> Result<BTreeMap<String, CiRecord>, BaselineError> {
    let mut out = BTreeMap::new();
    for sel in scope {
        for (host_id, hostname) in hosts {
            if !sel.may_match_host(host_id, hostname.as_deref()) {
                continue;
            }
            let mut after = None;
            loop {
                let page = store.cis(&CiFilter {
                    class: sel.exact_class().map(str::to_owned),
                    host: Some(host_id.clone()),
                    q: None,
                    include_absent: false,
                    limit: 1000,
                    after: after.clone(),
                })?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let full = page.len() == 1000;
                for ci in page {
                    if ci.state != CiState::Present {
                        continue;
                    }
                    let s = Subject {
                        host_id: &ci.host_id,
                        hostname: hostname.as_deref(),
                        class: &ci.class,
                        key: &ci.key,
                        ci_id: &ci.id,
                    };
                    if sel.matches(&s) {
                        out.insert(ci.id.clone(), ci);
                        if out.len() > MAX_BASELINE_ITEMS {
                            return Err(BaselineError::TooLarge);
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Items of a capture.
pub fn items_of(live: &BTreeMap<String, CiRecord>) -> BTreeMap<String, BaselineItem> {
    live.iter()
        .map(|(id, ci)| {
            (
                id.clone(),
                BaselineItem {
                    host_id: ci.host_id.clone(),
                    class: ci.class.clone(),
                    key: ci.key.clone(),
                    attrs: ci.attrs.clone(),
                    version: ci.version,
                },
            )
        })
        .collect()
}

/// One difference between a baseline and live state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffEntry {
    pub ci_id: String,
    pub host_id: String,
    pub class: String,
    pub key: String,
    pub kind: DeviationKind,
    pub changes: Vec<AttrChange>,
}

/// A baseline against live state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineDiff {
    pub baseline_id: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub compared_at: SystemTime,
    pub unchanged: usize,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub entries: Vec<DiffEntry>,
}

/// Compares `b` with the live CIs of its scope (significant attributes only).
pub fn diff(
    b: &Baseline,
    live: &BTreeMap<String, CiRecord>,
    policies: &AttributePolicies,
    now: SystemTime,
) -> BaselineDiff {
    let mut d = BaselineDiff {
        baseline_id: b.id.clone(),
        compared_at: now,
        unchanged: 0,
        added: 0,
        removed: 0,
        changed: 0,
        entries: Vec::new(),
    };
    for (id, item) in &b.items {
        let now_attrs = live.get(id).map(|c| &c.attrs);
        match deviation(policies, &item.class, Some(&item.attrs), now_attrs) {
            None => d.unchanged += 1,
            Some(dev) => {
                match dev.kind {
                    DeviationKind::Removed => d.removed += 1,
                    _ => d.changed += 1,
                }
                d.entries.push(DiffEntry {
                    ci_id: id.clone(),
                    host_id: item.host_id.clone(),
                    class: item.class.clone(),
                    key: item.key.clone(),
                    kind: dev.kind,
                    changes: dev.changes,
                });
            }
        }
    }
    for (id, ci) in live {
        if b.items.contains_key(id) || policies.ignored(&ci.class) {
            continue;
        }
        if let Some(dev) = deviation(policies, &ci.class, None, Some(&ci.attrs)) {
            d.added += 1;
            d.entries.push(DiffEntry {
                ci_id: id.clone(),
                host_id: ci.host_id.clone(),
                class: ci.class.clone(),
                key: ci.key.clone(),
                kind: dev.kind,
                changes: dev.changes,
            });
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cmdb_proto::model::AttrValue;

    use super::*;

    fn ci(id: &str, class: &str, sha: &str) -> CiRecord {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        CiRecord {
            id: id.into(),
            host_id: "host-1".into(),
            class: class.into(),
            key: format!("/etc/{id}"),
            state: CiState::Present,
            attrs: [
                ("sha256".to_owned(), AttrValue::Str(sha.into())),
                ("mtime".to_owned(), AttrValue::Int(1)),
            ]
            .into_iter()
            .collect(),
            version: 1,
            first_seen: t,
            last_seen: t,
            last_changed: t,
            source_agent: "agt".into(),
            source_seq: 1,
        }
    }

    #[test]
    fn diff_reports_added_removed_and_changed_significant_attributes() {
        let p = AttributePolicies::default();
        let live0: BTreeMap<_, _> = ["a", "b", "c"]
            .into_iter()
            .map(|id| (id.to_owned(), ci(id, "file", "x")))
            .collect();
        let b = Baseline {
            id: "BL1".into(),
            name: "web".into(),
            scope: vec!["host=host-1".parse().unwrap()],
            state: BaselineState::Approved,
            initial: false,
            host_id: None,
            captured_commit: 0,
            captured_at: SystemTime::UNIX_EPOCH,
            captured_by: "alice".into(),
            approved_at: None,
            approved_by: None,
            advances: 0,
            last_advanced_by: None,
            items: items_of(&live0),
        };
        let mut live = live0.clone();
        live.remove("a");
        live.insert("b".into(), ci("b", "file", "y"));
        let mut touched = ci("c", "file", "x");
        touched.attrs.insert("mtime".into(), AttrValue::Int(2));
        live.insert("c".into(), touched);
        live.insert("d".into(), ci("d", "file", "z"));
        live.insert("p".into(), ci("p", "process", "z"));
        let d = diff(&b, &live, &p, SystemTime::UNIX_EPOCH);
        assert_eq!((d.unchanged, d.added, d.removed, d.changed), (1, 1, 1, 1));
        let kinds: Vec<_> = d
            .entries
            .iter()
            .map(|e| (e.ci_id.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a", DeviationKind::Removed),
                ("b", DeviationKind::Changed),
                ("d", DeviationKind::Added)
            ]
        );
    }
}
