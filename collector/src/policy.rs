//! Policies the drift engine and the incident engine apply: which attributes of a class are
//! volatile (recorded, never drift), waivers (accepted deviations with an expiry and a
//! justification), criticality rules (impact and urgency of a CI's incidents) and the
//! deny list (software that must not be installed: a security incident).
//!
//! Everything here is plain data with validation; the judgment engine owns persistence.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::selector::{Selector, Subject};

/// Most rules of one kind (waivers, criticality rules, deny rules).
pub const MAX_RULES: usize = 10_000;
/// Longest justification or title text.
pub const MAX_TEXT_BYTES: usize = 4096;

/// How the drift engine treats one class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPolicy {
    /// Changes to CIs of this class are recorded as versions but never evaluated.
    #[serde(default)]
    pub ignore: bool,
    /// Attributes whose changes are recorded but never drift.
    #[serde(default)]
    pub volatile: Vec<String>,
}

/// Attribute policies per class; classes not listed drift on every attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributePolicies {
    pub classes: BTreeMap<String, ClassPolicy>,
}

impl Default for AttributePolicies {
    /// Volatile by default: what changes on a healthy host without anyone changing its
    /// configuration (usage counters, pids, clock-like fields, link state), and classes that
    /// are observations rather than configuration (processes, connections, monitors, the
    /// host record itself).
    fn default() -> Self {
        let mut classes = BTreeMap::new();
        for class in ["process", "connection", "monitor", crate::store::HOST_CLASS] {
            classes.insert(
                class.to_owned(),
                ClassPolicy {
                    ignore: true,
                    volatile: Vec::new(),
                },
            );
        }
        let volatile: &[(&str, &[&str])] = &[
            (
                "filesystem",
                &[
                    "used_bytes",
                    "available_bytes",
                    "inodes_used",
                    "inodes_free",
                ],
            ),
            ("listening_port", &["pid", "user"]),
            (
                "service",
                &["main_pid", "active_state", "sub_state", "memory_bytes"],
            ),
            ("os", &["boot_time", "uptime_seconds"]),
            ("cpu", &["mhz"]),
            ("kernel_module", &["used_by", "refcount", "instances"]),
            ("network_interface", &["state", "speed_mbps", "duplex"]),
            ("file", &["mtime"]),
            (
                "memory",
                &["free_bytes", "available_bytes", "swap_free_bytes"],
            ),
        ];
        for (class, attrs) in volatile {
            classes.insert(
                (*class).to_owned(),
                ClassPolicy {
                    ignore: false,
                    volatile: attrs.iter().map(|a| (*a).to_owned()).collect(),
                },
            );
        }
        AttributePolicies { classes }
    }
}

impl AttributePolicies {
    /// Whether `class` is evaluated at all.
    pub fn ignored(&self, class: &str) -> bool {
        self.classes.get(class).is_some_and(|p| p.ignore)
    }

    /// Whether `attr` of `class` is volatile.
    pub fn volatile(&self, class: &str, attr: &str) -> bool {
        self.classes
            .get(class)
            .is_some_and(|p| p.volatile.iter().any(|v| v == attr))
    }
}

/// A deviation accepted for a while: CIs matching `scope` (an OR of selectors), optionally
/// only the listed attributes, until `expires_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiver {
    pub id: String,
    pub scope: Vec<Selector>,
    /// Attribute names covered; empty = every attribute (and additions/removals).
    #[serde(default)]
    pub attributes: Vec<String>,
    pub justification: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub created_at: SystemTime,
    pub created_by: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub expires_at: SystemTime,
    /// Withdrawn before expiry.
    #[serde(default)]
    pub revoked: bool,
}

impl Waiver {
    /// Whether the waiver covers a deviation of `s` in `changed` attributes observed at `at`.
    pub fn covers(&self, s: &Subject<'_>, changed: &[&str], at: SystemTime) -> bool {
        !self.revoked
            && at < self.expires_at
            && self.scope.iter().any(|sel| sel.matches(s))
            && (self.attributes.is_empty()
                || (!changed.is_empty()
                    && changed
                        .iter()
                        .all(|c| self.attributes.iter().any(|a| a == c))))
    }
}

/// Impact or urgency: 1 (high) to 3 (low).
pub type Level = u8;

/// Sets the impact and/or urgency of incidents about CIs matching `selector`. Later rules
/// override earlier ones field by field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalityRule {
    pub selector: Selector,
    #[serde(default)]
    pub impact: Option<Level>,
    #[serde(default)]
    pub urgency: Option<Level>,
}

/// An invalid policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Impact and urgency are 1, 2 or 3.
    #[error("{field} must be 1, 2 or 3, not {value}")]
    Level { field: &'static str, value: u8 },
    /// A rule with nothing to set.
    #[error("a criticality rule must set impact or urgency")]
    Empty,
    /// Too many rules or too long a text.
    #[error("{0}")]
    TooLarge(String),
    /// A policy that cannot be used, with the reason.
    #[error("{0}")]
    Invalid(String),
}

/// Checks a list of criticality rules.
pub fn validate_criticality(rules: &[CriticalityRule]) -> Result<(), PolicyError> {
    if rules.len() > MAX_RULES {
        return Err(PolicyError::TooLarge(format!(
            "at most {MAX_RULES} criticality rules"
        )));
    }
    for r in rules {
        if r.impact.is_none() && r.urgency.is_none() {
            return Err(PolicyError::Empty);
        }
        for (field, v) in [("impact", r.impact), ("urgency", r.urgency)] {
            if let Some(v) = v
                && !(1..=3).contains(&v)
            {
                return Err(PolicyError::Level { field, value: v });
            }
        }
    }
    Ok(())
}

/// Checks attribute policies.
pub fn validate_attribute_policies(p: &AttributePolicies) -> Result<(), PolicyError> {
    if p.classes.len() > 1024 {
        return Err(PolicyError::TooLarge("at most 1024 classes".into()));
    }
    for (class, cp) in &p.classes {
        if class.is_empty() || class.len() > 128 || class.chars().any(char::is_control) {
            return Err(PolicyError::Invalid(format!("bad class name {class:?}")));
        }
        if cp.volatile.len() > 256 || cp.volatile.iter().any(|a| a.is_empty() || a.len() > 128) {
            return Err(PolicyError::Invalid(format!(
                "class {class}: at most 256 volatile attributes of 1 to 128 bytes"
            )));
        }
    }
    Ok(())
}

/// The impact and urgency of an incident about `s`: the category's default, overridden by
/// every matching rule in order.
pub fn criticality(
    rules: &[CriticalityRule],
    s: &Subject<'_>,
    default: (Level, Level),
) -> (Level, Level) {
    let (mut impact, mut urgency) = default;
    for r in rules.iter().filter(|r| r.selector.matches(s)) {
        if let Some(i) = r.impact {
            impact = i;
        }
        if let Some(u) = r.urgency {
            urgency = u;
        }
    }
    (impact, urgency)
}

/// Software (or any CI) that must not be present: a matching present CI opens a security
/// incident, its removal resolves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub selector: Selector,
    /// Why it is denied (shown in the incident).
    pub reason: String,
}

/// Checks a deny list.
pub fn validate_deny_rules(rules: &[DenyRule]) -> Result<(), PolicyError> {
    if rules.len() > MAX_RULES {
        return Err(PolicyError::TooLarge(format!(
            "at most {MAX_RULES} deny rules"
        )));
    }
    if let Some(r) = rules.iter().find(|r| r.reason.len() > MAX_TEXT_BYTES) {
        return Err(PolicyError::TooLarge(format!(
            "deny rule {}: reason over {MAX_TEXT_BYTES} bytes",
            r.selector
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn subject<'a>(class: &'a str, key: &'a str) -> Subject<'a> {
        Subject {
            host_id: "host-1",
            hostname: Some("web-1"),
            class,
            key,
            ci_id: "ci-1",
        }
    }

    #[test]
    fn defaults_cover_the_usual_noise() {
        let p = AttributePolicies::default();
        assert!(p.ignored("process"));
        assert!(p.ignored("connection"));
        assert!(!p.ignored("file"));
        assert!(p.volatile("filesystem", "used_bytes"));
        assert!(p.volatile("listening_port", "pid"));
        assert!(!p.volatile("file", "sha256"));
        assert!(!p.volatile("package", "version"));
    }

    #[test]
    fn waivers_cover_scope_attributes_and_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let w = Waiver {
            id: "WVR1".into(),
            scope: vec!["class=file key=/etc/motd".parse().unwrap()],
            attributes: vec!["sha256".into(), "size".into()],
            justification: "banner rotates".into(),
            created_at: t0,
            created_by: "alice".into(),
            expires_at: t0 + Duration::from_secs(60),
            revoked: false,
        };
        let s = subject("file", "/etc/motd");
        assert!(w.covers(&s, &["sha256"], t0));
        assert!(w.covers(&s, &["sha256", "size"], t0));
        assert!(!w.covers(&s, &["sha256", "mode"], t0));
        assert!(
            !w.covers(&s, &[], t0),
            "an addition is not an attribute change"
        );
        assert!(!w.covers(&s, &["sha256"], t0 + Duration::from_secs(60)));
        assert!(!w.covers(&subject("file", "/etc/issue"), &["sha256"], t0));
    }

    #[test]
    fn criticality_rules_override_in_order() {
        let rules = vec![
            CriticalityRule {
                selector: "host=web-*".parse().unwrap(),
                impact: Some(1),
                urgency: None,
            },
            CriticalityRule {
                selector: "class=file".parse().unwrap(),
                impact: None,
                urgency: Some(3),
            },
        ];
        validate_criticality(&rules).unwrap();
        assert_eq!(criticality(&rules, &subject("file", "/x"), (2, 2)), (1, 3));
        assert_eq!(
            criticality(&rules, &subject("package", "x"), (2, 2)),
            (1, 2)
        );
        assert_eq!(criticality(&[], &subject("package", "x"), (2, 2)), (2, 2));
        let bad = vec![CriticalityRule {
            selector: "host=x".parse().unwrap(),
            impact: Some(4),
            urgency: None,
        }];
        assert_eq!(
            validate_criticality(&bad),
            Err(PolicyError::Level {
                field: "impact",
                value: 4
            })
        );
    }
}
