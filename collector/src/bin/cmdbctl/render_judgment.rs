//! Table views of the judgment answers: change records, baselines, drift, waivers,
//! policies, incidents, availability and the audit log. Like `render`, each function
//! returns the whole text; [`render`] picks the view a command asked for and decodes the
//! API's JSON into the collector's own types.

use std::time::{Duration, SystemTime};

use cmdb_collector::availability::{Outage, OutageSubject};
use cmdb_collector::baselines::{Baseline, BaselineDiff, BaselineState, BaselineSummary};
use cmdb_collector::changes::{AttrChange, ChangeRecord, ChangeType};
use cmdb_collector::drift::{DeviationKind, DriftRecord, Verdict};
use cmdb_collector::http::json::List;
use cmdb_collector::http::judgment::AvailabilityReport;
use cmdb_collector::incidents::Incident;
use cmdb_collector::judgment::Policies;
use cmdb_collector::policy::Waiver;
use cmdb_collector::selector::Selector;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::render::{opt, opt_when, value, when};
use crate::requests::View;
use crate::table::Table;

/// A view's text, and a line for stderr when more entries follow.
#[derive(Debug, Default, PartialEq)]
pub struct Shown {
    pub text: String,
    pub hint: Option<String>,
}

impl From<String> for Shown {
    fn from(text: String) -> Self {
        Shown { text, hint: None }
    }
}

fn de<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

/// The table view of `v` for `view`; `now` decides what has expired.
pub fn render(view: View, v: Value, now: SystemTime) -> Result<Shown, serde_json::Error> {
    Ok(match view {
        View::Changes => changes(&de::<List<ChangeRecord>>(v)?.items).into(),
        View::Change => change(&de(v)?).into(),
        View::Baselines => baselines(&de::<List<BaselineSummary>>(v)?.items).into(),
        View::BaselineSummary => baseline_summary(&de(v)?).into(),
        View::Baseline { items } => baseline(&de(v)?, items).into(),
        View::BaselineDiff => baseline_diff(&de(v)?).into(),
        View::Drift { limit } => {
            let items = de::<List<DriftRecord>>(v)?.items;
            Shown {
                text: drift(&items),
                hint: more(items.len(), limit, items.last().map(|d| d.id.clone())),
            }
        }
        View::Waivers => waivers(&de::<List<Waiver>>(v)?.items, now).into(),
        View::Waiver => waiver(&de(v)?, now).into(),
        View::Policies => policies(&de(v)?).into(),
        View::Incidents => incidents(&de::<List<Incident>>(v)?.items).into(),
        View::Incident => incident(&de(v)?).into(),
        View::Availability => availability(&de(v)?).into(),
        View::Outages => outages(&de::<List<Outage>>(v)?.items, now).into(),
        View::AuditLog { limit } => {
            let items = de::<List<AuditEntry>>(v)?.items;
            Shown {
                text: audit_log(&items),
                hint: more(items.len(), limit, items.last().map(|e| e.seq.to_string())),
            }
        }
        View::AuditVerify => verify(&de(v)?).into(),
    })
}

/// A full page may have a next one.
fn more(got: usize, limit: usize, last: Option<String>) -> Option<String> {
    match last {
        Some(last) if got >= limit => Some(format!(
            "more entries may follow: add --after {last} for the next page"
        )),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn scope(s: &[Selector]) -> String {
    s.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// "2026-11-25T10:00:00Z by alice"
fn by(t: SystemTime, who: &str) -> String {
    format!("{} by {who}", when(t))
}

fn seconds(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

fn opt_seconds(s: Option<f64>) -> String {
    match s {
        // Whole seconds are precise enough for MTBF and MTRS.
        Some(s) if s.is_finite() && s >= 0.0 => seconds(s.round() as u64),
        _ => "-".to_owned(),
    }
}

fn change_type(t: ChangeType) -> &'static str {
    match t {
        ChangeType::Standard => "standard",
        ChangeType::Normal => "normal",
        ChangeType::Emergency => "emergency",
    }
}

fn baseline_state(s: BaselineState) -> &'static str {
    match s {
        BaselineState::Pending => "pending",
        BaselineState::Approved => "approved",
        BaselineState::Superseded => "superseded",
    }
}

fn deviation(k: DeviationKind) -> &'static str {
    match k {
        DeviationKind::Added => "added",
        DeviationKind::Changed => "changed",
        DeviationKind::Removed => "removed",
    }
}

fn subject(s: OutageSubject) -> &'static str {
    match s {
        OutageSubject::Host => "host",
        OutageSubject::Monitor => "monitor",
    }
}

/// An attribute's value, or blank when it has none (added or removed).
fn attr(v: Option<&cmdb_proto::model::AttrValue>) -> String {
    v.map(value).unwrap_or_default()
}

/// Key/value lines whose value has several lines: the key on the first only.
fn multi(kv: &mut Table, key: &str, values: impl IntoIterator<Item = String>) {
    let mut first = true;
    for v in values {
        kv.row([if first { key } else { "" }, &v]);
        first = false;
    }
    if first {
        kv.row([key, "-"]);
    }
}

// === change records ===

/// `changes`, `change import`.
pub fn changes(items: &[ChangeRecord]) -> String {
    let mut t = Table::new(&[
        "ID", "TYPE", "STATE", "START", "END", "OUTAGE", "TITLE", "SCOPE",
    ]);
    for c in items {
        t.row([
            c.id.clone(),
            change_type(c.change_type).to_owned(),
            c.state.as_str().to_owned(),
            when(c.window.start),
            when(c.window.end),
            yes_no(c.outage_expected).to_owned(),
            c.title.clone(),
            scope(&c.scope),
        ]);
    }
    t.render()
}

/// `change show` and every change command that answers with the record.
pub fn change(c: &ChangeRecord) -> String {
    let mut kv = Table::headerless(2).max_cell(100);
    kv.row(["id", &c.id]);
    kv.row(["title", &c.title]);
    kv.row(["type", change_type(c.change_type)]);
    kv.row(["state", c.state.as_str()]);
    kv.row([
        "window".to_owned(),
        format!("{} to {}", when(c.window.start), when(c.window.end)),
    ]);
    multi(&mut kv, "scope", c.scope.iter().map(ToString::to_string));
    kv.row(["outage expected", yes_no(c.outage_expected)]);
    if let Some(x) = &c.external_id {
        kv.row(["external id", x]);
    }
    kv.row(["created", &by(c.created_at, &c.created_by)]);
    kv.row(["updated", &when(c.updated_at)]);
    let evidence = c.evidence.len() as u64 + c.evidence_overflow;
    kv.row(["evidence", &format!("{evidence} drift records")]);
    if !c.description.is_empty() {
        kv.row(["description", &c.description]);
    }
    let mut out = kv.render();
    if !c.expected.is_empty() {
        let mut t = Table::new(&["EXPECTED CLASS", "KEY", "ATTRIBUTE", "OLD", "NEW"]);
        for e in &c.expected {
            t.row([
                e.class.as_str(),
                &e.key,
                &e.attribute,
                e.old.as_deref().unwrap_or("*"),
                e.new.as_deref().unwrap_or("*"),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    let mut t = Table::new(&["AT", "ACTOR", "FROM", "TO"]);
    for h in &c.history {
        t.row([
            when(h.at),
            h.actor.clone(),
            h.from.map_or("-", |s| s.as_str()).to_owned(),
            h.to.as_str().to_owned(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

// === baselines ===

/// `baselines`.
pub fn baselines(items: &[BaselineSummary]) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "STATE",
        "ITEMS",
        "CAPTURED",
        "APPROVED BY",
        "SCOPE",
    ]);
    for b in items {
        t.row([
            b.id.clone(),
            b.name.clone(),
            baseline_state(b.state).to_owned(),
            b.items.to_string(),
            when(b.captured_at),
            opt(b.approved_by.as_deref()).to_owned(),
            scope(&b.scope),
        ]);
    }
    t.render()
}

/// `baseline capture`, `baseline approve`, and the head of `baseline show`.
pub fn baseline_summary(b: &BaselineSummary) -> String {
    let mut kv = Table::headerless(2).max_cell(100);
    kv.row(["id", &b.id]);
    kv.row(["name", &b.name]);
    kv.row(["state", baseline_state(b.state)]);
    kv.row(["initial", yes_no(b.initial)]);
    multi(&mut kv, "scope", b.scope.iter().map(ToString::to_string));
    kv.row(["items", &b.items.to_string()]);
    kv.row(["captured", &by(b.captured_at, &b.captured_by)]);
    let approved = match (b.approved_at, &b.approved_by) {
        (Some(at), Some(who)) => by(at, who),
        (at, _) => opt_when(at),
    };
    kv.row(["approved", &approved]);
    kv.row(["advances", &b.advances.to_string()]);
    kv.render()
}

/// `baseline show [--items]`.
pub fn baseline(b: &Baseline, items: bool) -> String {
    let mut out = baseline_summary(&b.summary());
    if items {
        let mut t = Table::new(&["CI", "HOST", "CLASS", "KEY", "ATTRIBUTES"]);
        for (id, item) in &b.items {
            t.row([
                id.clone(),
                item.host_id.clone(),
                item.class.clone(),
                item.key.clone(),
                item.attrs.len().to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// One row per changed attribute, the entry's own cells on the first.
fn attr_rows(t: &mut Table, head: Vec<String>, changes: &[AttrChange]) {
    let width = head.len();
    let mut head = Some(head);
    for c in changes {
        let mut row = head.take().unwrap_or_else(|| vec![String::new(); width]);
        row.extend([c.name.clone(), attr(c.old.as_ref()), attr(c.new.as_ref())]);
        t.row(row);
    }
    if let Some(head) = head {
        t.row(head);
    }
}

/// `baseline diff`: what differs, one row per changed attribute (additions and removals
/// in one row each; `ci ID` has their attributes).
pub fn baseline_diff(d: &BaselineDiff) -> String {
    let mut kv = Table::headerless(2);
    kv.row(["baseline", &d.baseline_id]);
    kv.row(["compared", &when(d.compared_at)]);
    kv.row([
        "differences".to_owned(),
        format!(
            "{} changed, {} added, {} removed, {} unchanged",
            d.changed, d.added, d.removed, d.unchanged
        ),
    ]);
    let mut out = kv.render();
    if d.entries.is_empty() {
        return out;
    }
    let mut t = Table::new(&[
        "KIND",
        "CI",
        "HOST",
        "CLASS",
        "KEY",
        "ATTRIBUTE",
        "BASELINE",
        "LIVE",
    ])
    .max_cell(40);
    for e in &d.entries {
        let head = vec![
            deviation(e.kind).to_owned(),
            e.ci_id.clone(),
            e.host_id.clone(),
            e.class.clone(),
            e.key.clone(),
        ];
        let changes: &[AttrChange] = if e.kind == DeviationKind::Changed {
            &e.changes
        } else {
            &[]
        };
        attr_rows(&mut t, head, changes);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

// === drift ===

/// `drift`: one row per record; BY is the authorising change, the accepting waiver or
/// the incident it raised.
pub fn drift(items: &[DriftRecord]) -> String {
    let mut t = Table::new(&[
        "ID",
        "OBSERVED",
        "HOST",
        "CLASS",
        "KEY",
        "KIND",
        "ATTRIBUTES",
        "VERDICT",
        "BY",
        "STATUS",
    ]);
    for d in items {
        let by = match &d.verdict {
            Verdict::Authorized { change_id } => change_id.clone(),
            Verdict::Accepted { waiver_id } => waiver_id.clone(),
            Verdict::Unauthorized => opt(d.incident.as_deref()).to_owned(),
        };
        let attrs = if d.deviation.kind == DeviationKind::Changed {
            d.deviation
                .changes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            String::new()
        };
        let status = if d.open {
            "open".to_owned()
        } else {
            opt(d.resolution.as_deref()).to_owned()
        };
        t.row([
            d.id.clone(),
            when(d.observed_at),
            d.hostname.clone().unwrap_or_else(|| d.host_id.clone()),
            d.class.clone(),
            d.key.clone(),
            deviation(d.deviation.kind).to_owned(),
            attrs,
            d.verdict.name().to_owned(),
            by,
            status,
        ]);
    }
    t.render()
}

// === waivers ===

fn waiver_status(w: &Waiver, now: SystemTime) -> &'static str {
    if w.revoked {
        "revoked"
    } else if w.expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

fn waiver_attributes(w: &Waiver) -> String {
    if w.attributes.is_empty() {
        "all".to_owned()
    } else {
        w.attributes.join(", ")
    }
}

/// `waivers`.
pub fn waivers(items: &[Waiver], now: SystemTime) -> String {
    let mut t = Table::new(&[
        "ID",
        "STATUS",
        "EXPIRES",
        "SCOPE",
        "ATTRIBUTES",
        "CREATED BY",
        "JUSTIFICATION",
    ]);
    for w in items {
        t.row([
            w.id.clone(),
            waiver_status(w, now).to_owned(),
            when(w.expires_at),
            scope(&w.scope),
            waiver_attributes(w),
            w.created_by.clone(),
            w.justification.clone(),
        ]);
    }
    t.render()
}

/// `waiver create`, `waiver revoke`.
pub fn waiver(w: &Waiver, now: SystemTime) -> String {
    let mut kv = Table::headerless(2).max_cell(100);
    kv.row(["id", &w.id]);
    kv.row(["status", waiver_status(w, now)]);
    multi(&mut kv, "scope", w.scope.iter().map(ToString::to_string));
    kv.row(["attributes", &waiver_attributes(w)]);
    kv.row(["justification", &w.justification]);
    kv.row(["created", &by(w.created_at, &w.created_by)]);
    kv.row(["expires", &when(w.expires_at)]);
    kv.render()
}

// === policies ===

/// `policies show`, `policies set`.
pub fn policies(p: &Policies) -> String {
    let mut classes = Table::new(&["CLASS", "IGNORED", "VOLATILE ATTRIBUTES"]).max_cell(100);
    for (class, cp) in &p.attributes.classes {
        classes.row([
            class.clone(),
            yes_no(cp.ignore).to_owned(),
            cp.volatile.join(", "),
        ]);
    }
    let level = |l: Option<u8>| l.map_or_else(|| "-".to_owned(), |l| l.to_string());
    let mut crit = Table::new(&["CRITICALITY SELECTOR", "IMPACT", "URGENCY"]);
    for r in &p.criticality {
        crit.row([r.selector.to_string(), level(r.impact), level(r.urgency)]);
    }
    let mut deny = Table::new(&["DENIED SELECTOR", "REASON"]).max_cell(100);
    for r in &p.deny {
        deny.row([r.selector.to_string(), r.reason.clone()]);
    }
    [classes.render(), crit.render(), deny.render()].join("\n")
}

// === incidents ===

fn host(hostname: Option<&str>, host_id: &str) -> String {
    hostname.unwrap_or(host_id).to_owned()
}

/// `incidents`.
pub fn incidents(items: &[Incident]) -> String {
    let mut t = Table::new(&[
        "NUMBER", "PRI", "STATE", "CATEGORY", "HOST", "TITLE", "STARTED", "ASSIGNEE",
    ]);
    for i in items {
        t.row([
            i.number.clone(),
            i.priority.to_string(),
            i.state.as_str().to_owned(),
            i.category.as_str().to_owned(),
            host(i.hostname.as_deref(), &i.host_id),
            i.title.clone(),
            when(i.started_at),
            opt(i.assignee.as_deref()).to_owned(),
        ]);
    }
    t.render()
}

/// `incident show` and the incident actions: the record, its alerts, its timeline.
pub fn incident(i: &Incident) -> String {
    let mut kv = Table::headerless(2).max_cell(100);
    kv.row(["number", &i.number]);
    kv.row(["title", &i.title]);
    kv.row(["category", i.category.as_str()]);
    kv.row(["state", i.state.as_str()]);
    kv.row([
        "priority".to_owned(),
        format!(
            "{} (impact {}, urgency {})",
            i.priority, i.impact, i.urgency
        ),
    ]);
    kv.row(["ci", &i.ci_id]);
    let host_line = match &i.hostname {
        Some(name) => format!("{name} ({})", i.host_id),
        None => i.host_id.clone(),
    };
    kv.row(["host", &host_line]);
    kv.row(["started", &when(i.started_at)]);
    kv.row(["updated", &when(i.updated_at)]);
    kv.row(["resolved", &opt_when(i.resolved_at)]);
    kv.row(["closed", &opt_when(i.closed_at)]);
    kv.row(["assignee", opt(i.assignee.as_deref())]);
    if i.flapping {
        kv.row(["flapping", "yes"]);
    }
    if let Some(r) = &i.resolution {
        let mut text = r.code.clone();
        if !r.note.is_empty() {
            text.push_str(": ");
            text.push_str(&r.note);
        }
        if let Some(c) = &r.change_id {
            text.push_str(&format!(" (change {c})"));
        }
        kv.row(["resolution", &text]);
    }
    let mut out = kv.render();

    let mut alerts = Table::new(&[
        "ALERT", "CLASS", "KEY", "SUMMARY", "FIRING", "COUNT", "FIRST", "LAST",
    ]);
    for a in &i.alerts {
        let firing = match (a.firing, a.suppressed) {
            (true, true) => "yes (suppressed)",
            (true, false) => "yes",
            (false, _) => "no",
        };
        alerts.row([
            a.kind.as_str().to_owned(),
            a.class.clone(),
            a.key.clone(),
            a.summary.clone(),
            firing.to_owned(),
            a.count.to_string(),
            when(a.first_at),
            when(a.last_at),
        ]);
    }
    out.push('\n');
    out.push_str(&alerts.render());
    if i.alerts_overflow > 0 {
        out.push_str(&format!("… and {} more alerts\n", i.alerts_overflow));
    }

    let mut timeline = Table::new(&["AT", "ACTOR", "EVENT", "MESSAGE"]).max_cell(100);
    for e in &i.timeline {
        timeline.row([
            when(e.at),
            e.actor.clone(),
            e.event.clone(),
            e.message.clone(),
        ]);
    }
    out.push('\n');
    if i.timeline_overflow > 0 {
        out.push_str(&format!(
            "({} older timeline entries were not kept)\n",
            i.timeline_overflow
        ));
    }
    out.push_str(&timeline.render());
    out
}

// === availability ===

/// `availability`: the period, then one row per CI.
pub fn availability(r: &AvailabilityReport) -> String {
    let mut out = format!("period {} to {}\n\n", when(r.from), when(r.to));
    let mut t = Table::new(&[
        "CI",
        "NAME",
        "SUBJECT",
        "AVAILABILITY",
        "UNPLANNED DOWN",
        "PLANNED DOWN",
        "OUTAGES",
        "MTBF",
        "MTRS",
    ]);
    for f in &r.items {
        t.row([
            f.ci_id.clone(),
            f.name.clone(),
            subject(f.subject).to_owned(),
            format!("{:.3}%", f.availability_percent),
            seconds(f.unplanned_downtime_seconds),
            seconds(f.planned_downtime_seconds),
            format!("{} (+{} planned)", f.outages, f.planned_outages),
            opt_seconds(f.mtbf_seconds),
            opt_seconds(f.mtrs_seconds),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `outages`; an open outage's duration runs to `now`.
pub fn outages(items: &[Outage], now: SystemTime) -> String {
    let mut t = Table::new(&[
        "ID", "SUBJECT", "NAME", "HOST", "START", "END", "DURATION", "PLANNED", "CAUSE", "REF",
    ]);
    for o in items {
        let end = o.end.map_or_else(|| "open".to_owned(), when);
        let lasted = o
            .end
            .unwrap_or(now)
            .duration_since(o.start)
            .unwrap_or_default();
        let reference = o
            .change_id
            .as_deref()
            .or(o.incident.as_deref())
            .unwrap_or("-");
        t.row([
            o.id.clone(),
            subject(o.subject).to_owned(),
            o.name.clone(),
            host(o.hostname.as_deref(), &o.host_id),
            when(o.start),
            end,
            seconds(lasted.as_secs()),
            yes_no(o.planned).to_owned(),
            o.cause.clone(),
            reference.to_owned(),
        ]);
    }
    t.render()
}

// === audit log ===

/// One audit-log entry as the API serves it (only what the table shows is required).
#[derive(Debug, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    #[serde(default)]
    pub role: Option<String>,
    pub action: String,
    pub object: String,
    #[serde(default)]
    pub why: Option<String>,
}

/// The answer of `GET /api/v1/audit-log/verify`.
#[derive(Debug, Deserialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub head_seq: Option<u64>,
    pub ok: bool,
    #[serde(default)]
    pub problems: Vec<VerifyProblem>,
}

/// Why the chain does not hold at one entry.
#[derive(Debug, Deserialize)]
pub struct VerifyProblem {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub line: Option<u64>,
    pub kind: String,
    pub message: String,
}

impl VerifyReport {
    /// The chain holds only when the collector says so and names no problem.
    pub fn holds(&self) -> bool {
        self.ok && self.problems.is_empty()
    }
}

/// `audit-log`.
pub fn audit_log(items: &[AuditEntry]) -> String {
    let mut t = Table::new(&["SEQ", "AT", "ACTOR", "ROLE", "ACTION", "OBJECT", "WHY"]);
    for e in items {
        t.row([
            e.seq.to_string(),
            e.at.clone(),
            e.actor.clone(),
            opt(e.role.as_deref()).to_owned(),
            e.action.clone(),
            e.object.clone(),
            opt(e.why.as_deref()).to_owned(),
        ]);
    }
    t.render()
}

/// `audit-log verify`: a verdict line, then each problem.
pub fn verify(r: &VerifyReport) -> String {
    let head = r
        .head_seq
        .map_or_else(|| "none".to_owned(), |s| s.to_string());
    if r.holds() {
        return format!("ok: {} entries, head seq {head}\n", r.entries);
    }
    let mut out = format!(
        "FAILED: {} entries, head seq {head}, {} problems\n",
        r.entries,
        r.problems.len()
    );
    if !r.problems.is_empty() {
        let mut t = Table::new(&["SEQ", "LINE", "KIND", "MESSAGE"]).max_cell(120);
        let num = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        for p in &r.problems {
            t.row([num(p.seq), num(p.line), p.kind.clone(), p.message.clone()]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}
