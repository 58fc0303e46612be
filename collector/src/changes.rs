//! Change records (RFCs): what may change, where and when. The drift engine asks
//! [`ChangeRecord::authorizes`] whether an observed CI change is covered.
//!
//! State machine (DESIGN.md): draft → approved → implementing → implemented → closed, and
//! failed or cancelled on the way. [`transition`] is the only way a state changes; it
//! refuses anything else with [`ChangeError::IllegalTransition`]. Standard changes are
//! pre-approved: they are created in `approved`.
//!
//! Only `approved` and `implementing` changes authorise, and only inside their window.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use cmdb_proto::model::AttrValue;
use serde::{Deserialize, Serialize};

use crate::selector::{Glob, Selector, Subject, Window};

/// Most selectors in one change's scope, and most expected changes.
pub const MAX_SCOPE: usize = 64;
/// Most change records one import may carry.
pub const MAX_IMPORT: usize = 10_000;
/// Longest title; descriptions may be up to 16 times longer.
pub const MAX_TITLE_BYTES: usize = 512;
/// Most drift records attached to one change as evidence (more are counted, not listed).
pub const MAX_EVIDENCE: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    Standard,
    Normal,
    Emergency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    Draft,
    Approved,
    Implementing,
    Implemented,
    Closed,
    Failed,
    Cancelled,
}

impl ChangeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Draft => "draft",
            ChangeState::Approved => "approved",
            ChangeState::Implementing => "implementing",
            ChangeState::Implemented => "implemented",
            ChangeState::Closed => "closed",
            ChangeState::Failed => "failed",
            ChangeState::Cancelled => "cancelled",
        }
    }

    /// Closed, failed and cancelled changes never move again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ChangeState::Closed | ChangeState::Failed | ChangeState::Cancelled
        )
    }

    /// Whether a change in this state authorises changes inside its window.
    pub fn authorizes(self) -> bool {
        matches!(self, ChangeState::Approved | ChangeState::Implementing)
    }
}

impl fmt::Display for ChangeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChangeState {
    type Err = ChangeError;
    fn from_str(s: &str) -> Result<Self, ChangeError> {
        Ok(match s {
            "draft" => ChangeState::Draft,
            "approved" => ChangeState::Approved,
            "implementing" => ChangeState::Implementing,
            "implemented" => ChangeState::Implemented,
            "closed" => ChangeState::Closed,
            "failed" => ChangeState::Failed,
            "cancelled" => ChangeState::Cancelled,
            other => return Err(ChangeError::UnknownState(other.to_owned())),
        })
    }
}

/// Whether `from → to` is a legal move.
pub fn legal(from: ChangeState, to: ChangeState) -> bool {
    use ChangeState::*;
    matches!(
        (from, to),
        (Draft, Approved)
            | (Draft, Cancelled)
            | (Approved, Implementing)
            | (Approved, Cancelled)
            | (Approved, Closed)
            | (Implementing, Implemented)
            | (Implementing, Failed)
            | (Implemented, Closed)
            | (Implemented, Failed)
    )
}

/// Moves `change` to `to`, or says why not. `Approved` needs the change-manager role;
/// the caller checks roles, this checks the state machine.
pub fn transition(change: &mut ChangeRecord, to: ChangeState) -> Result<(), ChangeError> {
    if !legal(change.state, to) {
        return Err(ChangeError::IllegalTransition {
            id: change.id.clone(),
            from: change.state,
            to,
        });
    }
    change.state = to;
    Ok(())
}

/// An expected change: which CIs and attributes may change, optionally from and to which
/// values (globs over the value's text form: strings as they are, numbers in decimal,
/// `null` for absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedChange {
    #[serde(default = "star")]
    pub class: String,
    #[serde(default = "star")]
    pub key: String,
    #[serde(default = "star")]
    pub attribute: String,
    #[serde(default)]
    pub old: Option<String>,
    #[serde(default)]
    pub new: Option<String>,
}

fn star() -> String {
    "*".to_owned()
}

impl ExpectedChange {
    fn matches(
        &self,
        class: &str,
        key: &str,
        attr: &str,
        old: Option<&AttrValue>,
        new: Option<&AttrValue>,
    ) -> bool {
        Glob::new(self.class.as_str()).matches(class)
            && Glob::new(self.key.as_str()).matches(key)
            && Glob::new(self.attribute.as_str()).matches(attr)
            && self
                .old
                .as_deref()
                .is_none_or(|p| Glob::new(p).matches(&value_text(old)))
            && self
                .new
                .as_deref()
                .is_none_or(|p| Glob::new(p).matches(&value_text(new)))
    }
}

/// The text an expected-change value glob is matched against.
pub fn value_text(v: Option<&AttrValue>) -> String {
    match v {
        None | Some(AttrValue::Null) => "null".to_owned(),
        Some(AttrValue::Str(s)) => s.clone(),
        Some(AttrValue::Int(i)) => i.to_string(),
        Some(AttrValue::Float(f)) => f.to_string(),
        Some(AttrValue::Bool(b)) => b.to_string(),
        Some(list @ AttrValue::List(_)) => serde_json::to_string(list).unwrap_or_default(),
    }
}

/// One attribute that changed, as the drift engine reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttrChange {
    pub name: String,
    pub old: Option<AttrValue>,
    pub new: Option<AttrValue>,
}

/// A change record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub change_type: ChangeType,
    pub state: ChangeState,
    pub scope: Vec<Selector>,
    pub window: Window,
    #[serde(default)]
    pub expected: Vec<ExpectedChange>,
    #[serde(default)]
    pub outage_expected: bool,
    /// The id in the ITSM tool it was imported from, if any.
    #[serde(default)]
    pub external_id: Option<String>,
    pub created_by: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub updated_at: SystemTime,
    /// Drift records this change authorised (evidence), oldest first.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// Evidence beyond [`MAX_EVIDENCE`], counted only.
    #[serde(default)]
    pub evidence_overflow: u64,
    /// State changes: (time, actor, from, to).
    #[serde(default)]
    pub history: Vec<ChangeEvent>,
}

/// One state change of a change record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub at: SystemTime,
    pub actor: String,
    pub from: Option<ChangeState>,
    pub to: ChangeState,
}

impl ChangeRecord {
    /// Whether this change authorises the observed change of `s` (its `changed`
    /// attributes, or an addition/removal when `changed` is empty) at `at`.
    pub fn authorizes(&self, s: &Subject<'_>, changed: &[AttrChange], at: SystemTime) -> bool {
        if !self.state.authorizes() || !self.window.contains(at) {
            return false;
        }
        if !self.scope.iter().any(|sel| sel.matches(s)) {
            return false;
        }
        if self.expected.is_empty() {
            return true;
        }
        if changed.is_empty() {
            // An addition or removal: some expected change must name the CI.
            return self
                .expected
                .iter()
                .any(|e| e.matches(s.class, s.key, "*", None, None) || e.attribute == "*");
        }
        changed.iter().all(|c| {
            self.expected
                .iter()
                .any(|e| e.matches(s.class, s.key, &c.name, c.old.as_ref(), c.new.as_ref()))
        })
    }

    /// Whether the change could affect hosts at `at` with an outage (planned downtime).
    pub fn plans_outage_for(&self, host_id: &str, hostname: Option<&str>, at: SystemTime) -> bool {
        self.outage_expected
            && self.state.authorizes()
            && self.window.contains(at)
            && self
                .scope
                .iter()
                .any(|sel| sel.may_match_host(host_id, hostname))
    }

    /// Adds a drift record as evidence (bounded).
    pub fn add_evidence(&mut self, drift_id: &str) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(drift_id.to_owned());
        } else {
            self.evidence_overflow += 1;
        }
    }
}

/// What a client sends to create a change (and what an ITSM import carries per change).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChange {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub change_type: ChangeType,
    pub scope: Vec<String>,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub window_start: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub window_end: SystemTime,
    #[serde(default)]
    pub expected: Vec<ExpectedChange>,
    #[serde(default)]
    pub outage_expected: bool,
    #[serde(default)]
    pub external_id: Option<String>,
    /// Only for imports: the state in the source tool (default draft; standard changes
    /// are approved).
    #[serde(default)]
    pub state: Option<ChangeState>,
}

/// A field update of a change record (`PATCH`): only drafts and approved changes may be
/// edited, and editing an approved change's scope or window sends it back to draft.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeUpdate {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub scope: Option<Vec<String>>,
    #[serde(default, with = "opt_rfc3339")]
    pub window_start: Option<SystemTime>,
    #[serde(default, with = "opt_rfc3339")]
    pub window_end: Option<SystemTime>,
    #[serde(default)]
    pub expected: Option<Vec<ExpectedChange>>,
    #[serde(default)]
    pub outage_expected: Option<bool>,
}

mod opt_rfc3339 {
    pub use crate::store::opt_time::{deserialize, serialize};
}

/// Why a change request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// A field is missing, too long or malformed.
    #[error("{0}")]
    Invalid(String),
    /// A scope selector does not parse.
    #[error("scope[{index}]: {reason}")]
    Scope { index: usize, reason: String },
    /// The window ends before it starts.
    #[error("{0}")]
    Window(#[from] crate::selector::InvalidWindow),
    /// Not a move the state machine allows.
    #[error("change {id}: cannot go from {from} to {to}")]
    IllegalTransition {
        id: String,
        from: ChangeState,
        to: ChangeState,
    },
    /// Not a state name.
    #[error("unknown change state {0:?}")]
    UnknownState(String),
    /// Editing a change in a state that does not allow it.
    #[error("change {id} is {state}: only draft and approved changes can be edited")]
    NotEditable { id: String, state: ChangeState },
}

/// Parses and checks a scope.
pub fn parse_scope(scope: &[String]) -> Result<Vec<Selector>, ChangeError> {
    if scope.is_empty() {
        return Err(ChangeError::Invalid(
            "scope must name at least one selector (e.g. \"host=web-*\")".into(),
        ));
    }
    if scope.len() > MAX_SCOPE {
        return Err(ChangeError::Invalid(format!(
            "scope has more than {MAX_SCOPE} selectors"
        )));
    }
    scope
        .iter()
        .enumerate()
        .map(|(index, s)| {
            s.parse::<Selector>().map_err(|e| ChangeError::Scope {
                index,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn check_text(field: &str, s: &str, max: usize, required: bool) -> Result<(), ChangeError> {
    if required && s.trim().is_empty() {
        return Err(ChangeError::Invalid(format!("{field} is required")));
    }
    if s.len() > max {
        return Err(ChangeError::Invalid(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(())
}

fn check_expected(expected: &[ExpectedChange]) -> Result<(), ChangeError> {
    if expected.len() > MAX_SCOPE {
        return Err(ChangeError::Invalid(format!(
            "more than {MAX_SCOPE} expected changes"
        )));
    }
    for (i, e) in expected.iter().enumerate() {
        for (name, v) in [
            ("class", Some(&e.class)),
            ("key", Some(&e.key)),
            ("attribute", Some(&e.attribute)),
            ("old", e.old.as_ref()),
            ("new", e.new.as_ref()),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 1024)
            {
                return Err(ChangeError::Invalid(format!(
                    "expected[{i}].{name} must be 1 to 1024 bytes"
                )));
            }
        }
    }
    Ok(())
}

/// Builds a change record from a request; `id` and the clock come from the caller.
pub fn create(
    id: String,
    req: NewChange,
    actor: &str,
    now: SystemTime,
) -> Result<ChangeRecord, ChangeError> {
    check_text("title", &req.title, MAX_TITLE_BYTES, true)?;
    check_text("description", &req.description, 16 * MAX_TITLE_BYTES, false)?;
    if let Some(x) = &req.external_id {
        check_text("external_id", x, 256, true)?;
    }
    let scope = parse_scope(&req.scope)?;
    let window = Window::new(req.window_start, req.window_end)?;
    check_expected(&req.expected)?;
    let state = match (req.state, req.change_type) {
        (Some(s), _) => s,
        (None, ChangeType::Standard) => ChangeState::Approved,
        (None, _) => ChangeState::Draft,
    };
    Ok(ChangeRecord {
        id,
        title: req.title,
        description: req.description,
        change_type: req.change_type,
        state,
        scope,
        window,
        expected: req.expected,
        outage_expected: req.outage_expected,
        external_id: req.external_id,
        created_by: actor.to_owned(),
        created_at: now,
        updated_at: now,
        evidence: Vec::new(),
        evidence_overflow: 0,
        history: vec![ChangeEvent {
            at: now,
            actor: actor.to_owned(),
            from: None,
            to: state,
        }],
    })
}

/// Applies an update; an approved change whose scope, window or expectations change goes
/// back to draft (it must be approved again).
pub fn update(
    change: &mut ChangeRecord,
    u: ChangeUpdate,
    actor: &str,
    now: SystemTime,
) -> Result<(), ChangeError> {
    if !matches!(change.state, ChangeState::Draft | ChangeState::Approved) {
        return Err(ChangeError::NotEditable {
            id: change.id.clone(),
            state: change.state,
        });
    }
    let mut next = change.clone();
    let mut reapprove = false;
    if let Some(t) = u.title {
        check_text("title", &t, MAX_TITLE_BYTES, true)?;
        next.title = t;
    }
    if let Some(d) = u.description {
        check_text("description", &d, 16 * MAX_TITLE_BYTES, false)?;
        next.description = d;
    }
    if let Some(s) = u.scope {
        next.scope = parse_scope(&s)?;
        reapprove = true;
    }
    if u.window_start.is_some() || u.window_end.is_some() {
        next.window = Window::new(
            u.window_start.unwrap_or(change.window.start),
            u.window_end.unwrap_or(change.window.end),
        )?;
        reapprove = true;
    }
    if let Some(e) = u.expected {
        check_expected(&e)?;
        next.expected = e;
        reapprove = true;
    }
    if let Some(o) = u.outage_expected {
        next.outage_expected = o;
        reapprove = true;
    }
    if reapprove && next.state == ChangeState::Approved && next.change_type != ChangeType::Standard
    {
        next.history.push(ChangeEvent {
            at: now,
            actor: actor.to_owned(),
            from: Some(ChangeState::Approved),
            to: ChangeState::Draft,
        });
        next.state = ChangeState::Draft;
    }
    next.updated_at = now;
    *change = next;
    Ok(())
}

/// An ITSM export: `{"changes": [NewChange, …]}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeImport {
    pub changes: Vec<NewChange>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn new_change(scope: &[&str]) -> NewChange {
        NewChange {
            title: "Rotate sshd config".into(),
            description: String::new(),
            change_type: ChangeType::Normal,
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            window_start: t(0),
            window_end: t(3600),
            expected: Vec::new(),
            outage_expected: false,
            external_id: None,
            state: None,
        }
    }

    fn subject<'a>(class: &'a str, key: &'a str) -> Subject<'a> {
        Subject {
            host_id: "host-1",
            hostname: Some("web-1"),
            class,
            key,
            ci_id: "ci-1",
        }
    }

    fn attr(name: &str, old: &str, new: &str) -> AttrChange {
        AttrChange {
            name: name.into(),
            old: Some(AttrValue::Str(old.into())),
            new: Some(AttrValue::Str(new.into())),
        }
    }

    #[test]
    fn only_approved_changes_in_window_and_scope_authorise() {
        let mut c = create("CHG1".into(), new_change(&["host=web-*"]), "bob", t(0)).unwrap();
        let s = subject("file", "/etc/ssh/sshd_config");
        let ch = [attr("sha256", "a", "b")];
        assert_eq!(c.state, ChangeState::Draft);
        assert!(!c.authorizes(&s, &ch, t(10)));
        transition(&mut c, ChangeState::Approved).unwrap();
        assert!(c.authorizes(&s, &ch, t(10)));
        assert!(!c.authorizes(&s, &ch, t(3600)), "window end is exclusive");
        let other = Subject {
            hostname: Some("db-1"),
            ..s
        };
        assert!(!c.authorizes(&other, &ch, t(10)));
        transition(&mut c, ChangeState::Implementing).unwrap();
        assert!(c.authorizes(&s, &ch, t(10)));
        transition(&mut c, ChangeState::Implemented).unwrap();
        assert!(!c.authorizes(&s, &ch, t(10)));
    }

    #[test]
    fn expected_changes_narrow_what_is_authorised() {
        let mut req = new_change(&["host=web-1"]);
        req.expected = vec![ExpectedChange {
            class: "package".into(),
            key: "dpkg:openssl:*".into(),
            attribute: "version".into(),
            old: Some("3.0.*".into()),
            new: Some("3.0.1?".into()),
        }];
        let mut c = create("CHG2".into(), req, "bob", t(0)).unwrap();
        transition(&mut c, ChangeState::Approved).unwrap();
        let s = subject("package", "dpkg:openssl:amd64");
        assert!(c.authorizes(&s, &[attr("version", "3.0.9", "3.0.11")], t(1)));
        assert!(!c.authorizes(&s, &[attr("version", "3.0.9", "3.1.0")], t(1)));
        assert!(!c.authorizes(
            &s,
            &[attr("version", "3.0.9", "3.0.11"), attr("vendor", "a", "b")],
            t(1)
        ));
        assert!(!c.authorizes(&subject("package", "dpkg:bash:amd64"), &[], t(1)));
    }

    #[test]
    fn the_state_machine_refuses_illegal_moves() {
        let mut c = create("CHG3".into(), new_change(&["host=a"]), "bob", t(0)).unwrap();
        let e = transition(&mut c, ChangeState::Closed).unwrap_err();
        assert_eq!(e.to_string(), "change CHG3: cannot go from draft to closed");
        assert_eq!(c.state, ChangeState::Draft);
        transition(&mut c, ChangeState::Cancelled).unwrap();
        assert!(transition(&mut c, ChangeState::Approved).is_err());
        let std = create(
            "CHG4".into(),
            NewChange {
                change_type: ChangeType::Standard,
                ..new_change(&["host=a"])
            },
            "bob",
            t(0),
        )
        .unwrap();
        assert_eq!(std.state, ChangeState::Approved);
    }

    #[test]
    fn bad_requests_are_refused_with_reasons() {
        let mut req = new_change(&["host=a"]);
        req.window_end = req.window_start;
        assert!(matches!(
            create("C".into(), req, "b", t(0)),
            Err(ChangeError::Window(_))
        ));
        let e = create("C".into(), new_change(&["host=a", "colour=red"]), "b", t(0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scope[1]: unknown field \"colour\" in selector (fields: host, class, key, ci)"
        );
        assert!(create("C".into(), new_change(&[]), "b", t(0)).is_err());
        let mut req = new_change(&["host=a"]);
        req.title = " ".into();
        assert!(create("C".into(), req, "b", t(0)).is_err());
    }

    #[test]
    fn editing_an_approved_scope_needs_approval_again() {
        let mut c = create("C".into(), new_change(&["host=a"]), "b", t(0)).unwrap();
        transition(&mut c, ChangeState::Approved).unwrap();
        update(
            &mut c,
            ChangeUpdate {
                title: Some("new title".into()),
                ..Default::default()
            },
            "b",
            t(1),
        )
        .unwrap();
        assert_eq!(c.state, ChangeState::Approved);
        update(
            &mut c,
            ChangeUpdate {
                scope: Some(vec!["host=b".into()]),
                ..Default::default()
            },
            "b",
            t(2),
        )
        .unwrap();
        assert_eq!(c.state, ChangeState::Draft);
        let bad = ChangeUpdate {
            window_end: Some(t(0)),
            window_start: Some(t(5)),
            ..Default::default()
        };
        let before = c.clone();
        assert!(update(&mut c, bad, "b", t(3)).is_err());
        assert_eq!(c, before, "a refused update changes nothing");
    }
}
