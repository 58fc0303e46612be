//! Incidents: the ITIL record an operator works from. This module owns the model, the
//! priority matrix and the state machine; `correlate` decides which alerts land in which
//! incident, and the judgment engine persists them.
//!
//! States: new → acknowledged → in_progress → resolved → closed. Any open state may go to
//! resolved (by a person or automatically when every alert recovered); resolved may be
//! reopened (in_progress) or closed; closed is final.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::policy::Level;

/// Most timeline entries kept per incident (older entries are summarised by a counter).
pub const MAX_TIMELINE: usize = 1000;
/// Most alerts listed per incident (later ones are counted).
pub const MAX_ALERTS: usize = 5000;
/// Most drift record ids listed per alert (later ones are counted; the drift list by CI
/// has them all).
pub const MAX_DRIFT_IDS: usize = 20;

/// ITIL priority from impact and urgency (1 high … 3 low): (1,1)→1; (1,2),(2,1)→2;
/// (1,3),(2,2),(3,1)→3; (2,3),(3,2)→4; (3,3)→5. Out-of-range inputs are clamped.
pub fn priority(impact: Level, urgency: Level) -> u8 {
    impact.clamp(1, 3) + urgency.clamp(1, 3) - 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Availability,
    Capacity,
    UnauthorizedChange,
    Security,
    Identity,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Availability => "availability",
            Category::Capacity => "capacity",
            Category::UnauthorizedChange => "unauthorized-change",
            Category::Security => "security",
            Category::Identity => "identity",
        }
    }

    /// Impact and urgency when no criticality rule says otherwise.
    pub fn default_criticality(self) -> (Level, Level) {
        match self {
            Category::Availability => (2, 1),
            Category::Security => (2, 1),
            Category::UnauthorizedChange => (2, 2),
            Category::Capacity => (2, 3),
            Category::Identity => (3, 2),
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = IncidentError;
    fn from_str(s: &str) -> Result<Self, IncidentError> {
        Ok(match s {
            "availability" => Category::Availability,
            "capacity" => Category::Capacity,
            "unauthorized-change" => Category::UnauthorizedChange,
            "security" => Category::Security,
            "identity" => Category::Identity,
            other => {
                return Err(IncidentError::Invalid(format!(
                    "unknown category {other:?}"
                )));
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    New,
    Acknowledged,
    InProgress,
    Resolved,
    Closed,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::New => "new",
            IncidentState::Acknowledged => "acknowledged",
            IncidentState::InProgress => "in_progress",
            IncidentState::Resolved => "resolved",
            IncidentState::Closed => "closed",
        }
    }

    /// New, acknowledged or in progress: alerts still join it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            IncidentState::New | IncidentState::Acknowledged | IncidentState::InProgress
        )
    }
}

impl fmt::Display for IncidentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IncidentState {
    type Err = IncidentError;
    fn from_str(s: &str) -> Result<Self, IncidentError> {
        Ok(match s {
            "new" => IncidentState::New,
            "acknowledged" => IncidentState::Acknowledged,
            "in_progress" => IncidentState::InProgress,
            "resolved" => IncidentState::Resolved,
            "closed" => IncidentState::Closed,
            other => {
                return Err(IncidentError::Invalid(format!(
                    "unknown incident state {other:?}"
                )));
            }
        })
    }
}

/// Whether a person may move an incident `from → to`.
pub fn legal(from: IncidentState, to: IncidentState) -> bool {
    use IncidentState::*;
    matches!(
        (from, to),
        (New, Acknowledged)
            | (New, InProgress)
            | (Acknowledged, InProgress)
            | (New | Acknowledged | InProgress, Resolved)
            | (Resolved, InProgress)
            | (Resolved, Closed)
            | (New | Acknowledged | InProgress, Closed)
    )
}

/// What kind of condition an alert reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An unauthorized CI change.
    Drift,
    /// The host stopped sending heartbeats.
    HostDown,
    /// A service monitor reports down.
    MonitorDown,
    /// Two live agents claim one host.
    Clone,
    /// A deny-listed CI is present.
    Denied,
    /// Exhaustion forecast within the horizon.
    Capacity,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Drift => "drift",
            AlertKind::HostDown => "host_down",
            AlertKind::MonitorDown => "monitor_down",
            AlertKind::Clone => "clone",
            AlertKind::Denied => "denied",
            AlertKind::Capacity => "capacity",
        }
    }

    pub fn category(self) -> Category {
        match self {
            AlertKind::Drift => Category::UnauthorizedChange,
            AlertKind::HostDown | AlertKind::MonitorDown => Category::Availability,
            AlertKind::Clone => Category::Identity,
            AlertKind::Denied => Category::Security,
            AlertKind::Capacity => Category::Capacity,
        }
    }
}

/// One alert inside an incident, keyed by its dedup key (host, class, key, kind).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlertRecord {
    pub dedup: String,
    pub kind: AlertKind,
    pub host_id: String,
    pub ci_id: String,
    pub class: String,
    pub key: String,
    pub summary: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub first_at: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub last_at: SystemTime,
    pub firing: bool,
    /// Joined because its host was down (topology suppression): it opened no incident.
    #[serde(default)]
    pub suppressed: bool,
    /// Times it fired (including re-fires after recovering).
    pub count: u64,
    /// Drift records behind it (unauthorized-change alerts), the first [`MAX_DRIFT_IDS`].
    #[serde(default)]
    pub drift_ids: Vec<String>,
    #[serde(default)]
    pub drift_ids_overflow: u64,
}

/// One line of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub at: SystemTime,
    /// `collector` for automatic entries, else the principal's name.
    pub actor: String,
    pub event: String,
    pub message: String,
}

/// How an incident was resolved or closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// `recovered` (automatic), `fixed`, `accepted` (by a retroactive change), `duplicate`,
    /// `other`…
    pub code: String,
    pub note: String,
    #[serde(default)]
    pub change_id: Option<String>,
}

/// An incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `INC` + 7 digits.
    pub number: String,
    pub title: String,
    pub category: Category,
    /// The CI the incident is about (the host's CI for grouped or availability incidents).
    pub ci_id: String,
    pub host_id: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub impact: Level,
    pub urgency: Level,
    pub priority: u8,
    pub state: IncidentState,
    /// The first event's observation time.
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub updated_at: SystemTime,
    #[serde(default, with = "crate::store::opt_time")]
    pub resolved_at: Option<SystemTime>,
    #[serde(default, with = "crate::store::opt_time")]
    pub closed_at: Option<SystemTime>,
    #[serde(default)]
    pub assignee: Option<String>,
    #[serde(default)]
    pub flapping: bool,
    pub alerts: Vec<AlertRecord>,
    /// Alerts beyond [`MAX_ALERTS`], counted only.
    #[serde(default)]
    pub alerts_overflow: u64,
    pub timeline: Vec<TimelineEntry>,
    #[serde(default)]
    pub timeline_overflow: u64,
    #[serde(default)]
    pub resolution: Option<Resolution>,
}

impl Incident {
    /// Appends to the timeline (bounded: the oldest entries after the first are dropped and
    /// counted).
    pub fn log(&mut self, at: SystemTime, actor: &str, event: &str, message: impl Into<String>) {
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline.remove(1);
            self.timeline_overflow += 1;
        }
        self.timeline.push(TimelineEntry {
            at,
            actor: actor.to_owned(),
            event: event.to_owned(),
            message: message.into(),
        });
        self.updated_at = self.updated_at.max(at);
    }

    /// Recomputes impact, urgency and priority as the most severe over `levels`.
    pub fn set_criticality(&mut self, impact: Level, urgency: Level) {
        self.impact = self.impact.min(impact);
        self.urgency = self.urgency.min(urgency);
        self.priority = priority(self.impact, self.urgency);
    }

    /// Whether every alert has recovered.
    pub fn all_recovered(&self) -> bool {
        self.alerts.iter().all(|a| !a.firing)
    }
}

/// A refused incident request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    /// Not a move the state machine allows.
    #[error("incident {number}: cannot go from {from} to {to}")]
    IllegalTransition {
        number: String,
        from: IncidentState,
        to: IncidentState,
    },
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
}

/// Moves `inc` to `to` on a person's request (and logs it).
pub fn transition(
    inc: &mut Incident,
    to: IncidentState,
    actor: &str,
    note: &str,
    now: SystemTime,
) -> Result<(), IncidentError> {
    if !legal(inc.state, to) {
        return Err(IncidentError::IllegalTransition {
            number: inc.number.clone(),
            from: inc.state,
            to,
        });
    }
    let from = inc.state;
    inc.state = to;
    match to {
        IncidentState::Resolved => inc.resolved_at = Some(now),
        IncidentState::Closed => inc.closed_at = Some(now),
        IncidentState::InProgress if from == IncidentState::Resolved => inc.resolved_at = None,
        _ => {}
    }
    let msg = if note.is_empty() {
        format!("{from} → {to}")
    } else {
        format!("{from} → {to}: {note}")
    };
    inc.log(now, actor, to.as_str(), msg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_itil_matrix() {
        let want = [
            ((1, 1), 1),
            ((1, 2), 2),
            ((2, 1), 2),
            ((1, 3), 3),
            ((2, 2), 3),
            ((3, 1), 3),
            ((2, 3), 4),
            ((3, 2), 4),
            ((3, 3), 5),
        ];
        for ((i, u), p) in want {
            assert_eq!(priority(i, u), p, "impact {i} urgency {u}");
        }
    }

    proptest! {
        #[test]
        fn priority_is_monotone_and_in_range(i in any::<u8>(), u in any::<u8>()) {
            let p = priority(i, u);
            prop_assert!((1..=5).contains(&p));
            let (ci, cu) = (i.clamp(1, 3), u.clamp(1, 3));
            if ci < 3 { prop_assert!(priority(ci + 1, cu) == p + 1); }
            if cu < 3 { prop_assert!(priority(ci, cu + 1) == p + 1); }
            prop_assert_eq!(priority(ci, cu), priority(cu, ci));
        }

        #[test]
        fn state_names_round_trip(s in prop::sample::select(vec![
            IncidentState::New, IncidentState::Acknowledged, IncidentState::InProgress,
            IncidentState::Resolved, IncidentState::Closed])) {
            prop_assert_eq!(s.as_str().parse::<IncidentState>().unwrap(), s);
        }
    }

    #[test]
    fn closed_is_final() {
        use IncidentState::*;
        for to in [New, Acknowledged, InProgress, Resolved, Closed] {
            assert!(!legal(Closed, to));
        }
        assert!(legal(New, Acknowledged));
        assert!(!legal(Acknowledged, New));
        assert!(legal(Resolved, InProgress));
    }
}
