//! The drift engine's judgment of one CI change, in DESIGN.md's order:
//! 1. an ignored class, or only volatile attributes changed → recorded only (no drift);
//! 2. covered by an approved/implementing change record whose scope, window and expected
//!    changes match → authorized (the change gets the drift record as evidence);
//! 3. covered by an unexpired waiver → accepted;
//! 4. otherwise → unauthorized: an alert for correlation.
//!
//! Pure functions over plain data: the judgment engine feeds them store versions and
//! persists what they decide. A revert is decided by the engine too, from
//! [`significant`] states: a CI whose significant attributes are back to what they were
//! before its first unauthorized change has no drift left.

use std::time::SystemTime;

use cmdb_proto::model::{AttrValue, Attrs};
use serde::{Deserialize, Serialize};

use crate::changes::{AttrChange, ChangeRecord};
use crate::policy::{AttributePolicies, Waiver};
use crate::selector::Subject;
use crate::store::{ChangeKind, FeedEntry};

/// What kind of deviation a CI change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviationKind {
    Added,
    Changed,
    Removed,
}

/// The significant part of a CI change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deviation {
    pub kind: DeviationKind,
    /// Attributes whose value changed (for additions and removals: every significant
    /// attribute, with `old` or `new` absent).
    pub changes: Vec<AttrChange>,
}

/// The verdict on a deviation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Authorized { change_id: String },
    Accepted { waiver_id: String },
    Unauthorized,
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Authorized { .. } => "authorized",
            Verdict::Accepted { .. } => "accepted",
            Verdict::Unauthorized => "unauthorized",
        }
    }
}

/// The attributes of `attrs` that drift is judged on (volatile ones removed).
pub fn significant(policies: &AttributePolicies, class: &str, attrs: &Attrs) -> Attrs {
    attrs
        .iter()
        .filter(|(k, _)| !policies.volatile(class, k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The CI's state before and after a feed entry: `None` = absent. `None` overall for
/// versions that are not evaluated (retirement).
pub fn states(entry: &FeedEntry) -> Option<(Option<&Attrs>, Option<&Attrs>)> {
    let v = &entry.version;
    match v.change {
        ChangeKind::Added => Some((None, Some(&v.attrs))),
        ChangeKind::Changed => Some((Some(&v.old_attrs), Some(&v.attrs))),
        ChangeKind::Removed => Some((Some(&v.old_attrs), None)),
        ChangeKind::Retired => None,
    }
}

/// The significant difference between two states of a CI of `class`, or `None` when
/// only volatile attributes (or nothing) changed, or the class is ignored.
pub fn deviation(
    policies: &AttributePolicies,
    class: &str,
    old: Option<&Attrs>,
    new: Option<&Attrs>,
) -> Option<Deviation> {
    if policies.ignored(class) {
        return None;
    }
    let kind = match (old, new) {
        (None, None) => return None,
        (None, Some(_)) => DeviationKind::Added,
        (Some(_), None) => DeviationKind::Removed,
        (Some(_), Some(_)) => DeviationKind::Changed,
    };
    let empty = Attrs::new();
    let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let mut changes = Vec::new();
    for (name, ov) in o {
        let nv = n.get(name);
        if !policies.volatile(class, name) && !same(Some(ov), nv) {
            changes.push(AttrChange {
                name: name.clone(),
                old: Some(ov.clone()),
                new: nv.cloned(),
            });
        }
    }
    for (name, nv) in n {
        if !o.contains_key(name) && !policies.volatile(class, name) && !same(None, Some(nv)) {
            changes.push(AttrChange {
                name: name.clone(),
                old: None,
                new: Some(nv.clone()),
            });
        }
    }
    changes.sort_by(|a, b| a.name.cmp(&b.name));
    if kind == DeviationKind::Changed && changes.is_empty() {
        return None;
    }
    Some(Deviation { kind, changes })
}

/// Absent and null are the same; floats compare bit for bit (what the agent sent).
fn same(a: Option<&AttrValue>, b: Option<&AttrValue>) -> bool {
    match (a, b) {
        (None | Some(AttrValue::Null), None | Some(AttrValue::Null)) => true,
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Steps 2–4: the verdict on a deviation of `s` observed at `at`, given the change records
/// and waivers in force. Changes are consulted in the order given (the engine passes them
/// by id, so the oldest matching change wins).
pub fn judge<'c>(
    changes: impl IntoIterator<Item = &'c ChangeRecord>,
    waivers: impl IntoIterator<Item = &'c Waiver>,
    s: &Subject<'_>,
    dev: &Deviation,
    at: SystemTime,
) -> Verdict {
    let attr_changes: &[AttrChange] = if dev.kind == DeviationKind::Changed {
        &dev.changes
    } else {
        &[]
    };
    for c in changes {
        if c.authorizes(s, attr_changes, at) {
            return Verdict::Authorized {
                change_id: c.id.clone(),
            };
        }
    }
    let names: Vec<&str> = attr_changes.iter().map(|c| c.name.as_str()).collect();
    for w in waivers {
        if w.covers(s, &names, at) {
            return Verdict::Accepted {
                waiver_id: w.id.clone(),
            };
        }
    }
    Verdict::Unauthorized
}

/// A stored drift record: one deviation, its verdict and its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// `DRF` + 10 digits, in evaluation order.
    pub id: String,
    pub ci_id: String,
    pub host_id: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub class: String,
    pub key: String,
    #[serde(flatten)]
    pub deviation: Deviation,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Evidence: who observed it, in which event, when.
    pub agent_id: String,
    pub seq: u64,
    pub version: u64,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub observed_at: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub evaluated_at: SystemTime,
    /// Unauthorized drift stays open until reverted or accepted.
    pub open: bool,
    #[serde(default, with = "crate::store::opt_time")]
    pub resolved_at: Option<SystemTime>,
    /// `reverted`, `accepted by CHG…`, …
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub incident: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::changes::{ChangeState, ChangeType, NewChange, create, transition};

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), AttrValue::Str((*v).to_owned())))
            .collect()
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn volatile_only_changes_are_not_drift() {
        let p = AttributePolicies::default();
        let a = attrs(&[("sha256", "aa"), ("mtime", "1")]);
        let b = attrs(&[("sha256", "aa"), ("mtime", "2")]);
        assert_eq!(deviation(&p, "file", Some(&a), Some(&b)), None);
        let c = attrs(&[("sha256", "bb"), ("mtime", "2")]);
        let d = deviation(&p, "file", Some(&a), Some(&c)).unwrap();
        assert_eq!(d.kind, DeviationKind::Changed);
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.changes[0].name, "sha256");
        assert_eq!(deviation(&p, "process", None, Some(&a)), None);
        let added = deviation(&p, "file", None, Some(&a)).unwrap();
        assert_eq!(added.kind, DeviationKind::Added);
        assert_eq!(added.changes.len(), 1, "volatile attrs are left out");
    }

    #[test]
    fn the_evaluation_order_is_change_then_waiver_then_unauthorized() {
        let p = AttributePolicies::default();
        let s = Subject {
            host_id: "host-1",
            hostname: Some("web-1"),
            class: "file",
            key: "/etc/motd",
            ci_id: "ci-1",
        };
        let dev = deviation(
            &p,
            "file",
            Some(&attrs(&[("sha256", "a")])),
            Some(&attrs(&[("sha256", "b")])),
        )
        .unwrap();
        let mut change = create(
            "CHG1".into(),
            NewChange {
                title: "motd".into(),
                description: String::new(),
                change_type: ChangeType::Normal,
                scope: vec!["host=web-1".into()],
                window_start: t(0),
                window_end: t(100),
                expected: vec![],
                outage_expected: false,
                external_id: None,
                state: None,
            },
            "bob",
            t(0),
        )
        .unwrap();
        let waiver = Waiver {
            id: "WVR1".into(),
            scope: vec!["class=file".parse().unwrap()],
            attributes: vec![],
            justification: "lab".into(),
            created_at: t(0),
            created_by: "alice".into(),
            expires_at: t(1000),
            revoked: false,
        };
        assert_eq!(
            judge([&change], [&waiver], &s, &dev, t(10)),
            Verdict::Accepted {
                waiver_id: "WVR1".into()
            },
            "a draft change authorises nothing"
        );
        transition(&mut change, ChangeState::Approved).unwrap();
        assert_eq!(
            judge([&change], [&waiver], &s, &dev, t(10)),
            Verdict::Authorized {
                change_id: "CHG1".into()
            }
        );
        assert_eq!(
            judge([&change], [&waiver], &s, &dev, t(2000)),
            Verdict::Unauthorized
        );
    }

    fn value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            Just(AttrValue::Null),
            any::<i64>().prop_map(AttrValue::Int),
            "[a-c]{0,3}".prop_map(AttrValue::Str),
        ]
    }

    proptest! {
        /// The deviation lists exactly the significant attributes whose values differ.
        #[test]
        fn deviation_is_the_significant_difference(
            a in prop::collection::btree_map("(mtime|sha256|size|mode|owner)", value(), 0..5),
            b in prop::collection::btree_map("(mtime|sha256|size|mode|owner)", value(), 0..5),
        ) {
            let p = AttributePolicies::default();
            let d = deviation(&p, "file", Some(&a), Some(&b));
            let want: Vec<&str> = ["mode", "owner", "sha256", "size"]
                .into_iter()
                .filter(|k| !same(a.get(*k), b.get(*k)))
                .collect();
            match d {
                None => prop_assert!(want.is_empty()),
                Some(d) => {
                    let got: Vec<&str> = d.changes.iter().map(|c| c.name.as_str()).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
