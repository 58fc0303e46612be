//! What each judgment command asks the API: method, path, query and JSON body, built
//! without touching the network so the requests are tested as data. Bodies are the
//! collector's own request types (`NewChange`, `ChangeUpdate`, `NewWaiver`,
//! `IncidentAction`), so client and server agree on their shape at compile time; files
//! (`change import`, `policies set`) are sent as they are, after a local JSON syntax check,
//! and the API judges their content.

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use cmdb_collector::changes::{ChangeType, ChangeUpdate, NewChange};
use cmdb_collector::http::judgment::MAX_IMPORT_BYTES;
use cmdb_collector::judgment::{IncidentAction, NewWaiver};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{
    AuditLogArgs, AuditLogCommand, AvailabilityArgs, BaselineCommand, ChangeCommand,
    ChangeCreateArgs, ChangeTypeArg, ChangeUpdateArgs, ChangesArgs, Command, DriftArgs,
    IncidentCommand, IncidentsArgs, PoliciesCommand, RangeArgs, TransitionArgs, WaiverCommand,
};
use crate::client::segment;
use crate::times::TimeArg;

/// One API request.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: Method,
    /// Starting with `/api/v1/`, segments encoded.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

/// How the answer is shown in table mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Changes,
    Change,
    Baselines,
    BaselineSummary,
    /// A whole baseline; `items` lists its CIs.
    Baseline {
        items: bool,
    },
    BaselineDiff,
    /// A page of drift; a full page (`limit`) hints at `--after`.
    Drift {
        limit: usize,
    },
    Waivers,
    Waiver,
    Policies,
    Incidents,
    Incident,
    Availability,
    Outages,
    AuditLog {
        limit: usize,
    },
    /// Exits 1 unless the chain holds.
    AuditVerify,
}

/// Bad input found before anything was sent (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The API's default page size.
const DEFAULT_LIMIT: usize = 100;

fn get(path: String) -> Request {
    Request {
        method: Method::GET,
        path,
        query: Vec::new(),
        body: None,
    }
}

fn with_body<T: Serialize>(method: Method, path: String, body: &T) -> Result<Request, Invalid> {
    let body = serde_json::to_value(body).map_err(|e| Invalid(format!("cannot encode: {e}")))?;
    Ok(Request {
        method,
        path,
        query: Vec::new(),
        body: Some(body),
    })
}

/// An id for a URL path; `.` and `..` would be resolved away by the URL itself.
pub fn path_id(id: &str) -> Result<String, Invalid> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(Invalid(format!("{id:?} is not an id")));
    }
    Ok(segment(id))
}

fn at(t: TimeArg, now: SystemTime, what: &str) -> Result<SystemTime, Invalid> {
    t.resolve(now)
        .map_err(|e| Invalid(format!("--{what}: {e}")))
}

fn query_time(
    q: &mut Vec<(&'static str, String)>,
    name: &'static str,
    t: Option<TimeArg>,
    now: SystemTime,
) -> Result<(), Invalid> {
    if let Some(t) = t {
        let t = at(t, now, name)?;
        q.push((name, humantime::format_rfc3339_seconds(t).to_string()));
    }
    Ok(())
}

fn query_opt(q: &mut Vec<(&'static str, String)>, name: &'static str, v: Option<impl ToString>) {
    if let Some(v) = v {
        q.push((name, v.to_string()));
    }
}

/// The request for a judgment command, or `None` for the CMDB commands (`agents`, `cis`,
/// …) that `run` handles itself. `now` anchors relative times.
pub fn build(cmd: &Command, now: SystemTime) -> Result<Option<(Request, View)>, Invalid> {
    let r = match cmd {
        Command::Agents
        | Command::Agent { .. }
        | Command::Cis(_)
        | Command::Ci { .. }
        | Command::Relations { .. }
        | Command::Clones
        | Command::Whoami
        | Command::Capacity(_)
        | Command::Impact(_)
        | Command::Licenses(_)
        | Command::Audit(_)
        | Command::Health(_)
        | Command::Fleet(_) => return Ok(None),
        Command::Changes(a) => (changes(a, now)?, View::Changes),
        Command::Change(c) => change(c, now)?,
        Command::Baselines => (get("/api/v1/baselines".into()), View::Baselines),
        Command::Baseline(c) => baseline(c)?,
        Command::Drift(a) => drift(a),
        Command::Waivers => (get("/api/v1/waivers".into()), View::Waivers),
        Command::Waiver(c) => waiver(c, now)?,
        Command::Policies(PoliciesCommand::Show) => {
            (get("/api/v1/policies".into()), View::Policies)
        }
        Command::Policies(PoliciesCommand::Set { file }) => (
            Request {
                method: Method::PUT,
                path: "/api/v1/policies".into(),
                query: Vec::new(),
                body: Some(json_file(file)?),
            },
            View::Policies,
        ),
        Command::Incidents(a) => (incidents(a), View::Incidents),
        Command::Incident(c) => incident(c)?,
        Command::Availability(a) => (availability(a, now)?, View::Availability),
        Command::Outages(a) => {
            let mut r = get("/api/v1/outages".into());
            range(&mut r.query, a, now)?;
            (r, View::Outages)
        }
        Command::AuditLog(a) => audit_log(a),
    };
    Ok(Some(r))
}

fn changes(a: &ChangesArgs, now: SystemTime) -> Result<Request, Invalid> {
    let mut r = get("/api/v1/changes".into());
    query_time(&mut r.query, "from", a.from, now)?;
    query_time(&mut r.query, "to", a.to, now)?;
    query_opt(&mut r.query, "state", a.state.as_ref());
    Ok(r)
}

fn change(c: &ChangeCommand, now: SystemTime) -> Result<(Request, View), Invalid> {
    let transition = |a: &TransitionArgs, to: &str| -> Result<(Request, View), Invalid> {
        let mut body = serde_json::json!({ "to": to });
        if let Some(note) = &a.note {
            body["note"] = Value::from(note.as_str());
        }
        let path = format!("/api/v1/changes/{}/transition", path_id(&a.id)?);
        Ok((
            Request {
                method: Method::POST,
                path,
                query: Vec::new(),
                body: Some(body),
            },
            View::Change,
        ))
    };
    Ok(match c {
        ChangeCommand::Show { id } => (
            get(format!("/api/v1/changes/{}", path_id(id)?)),
            View::Change,
        ),
        ChangeCommand::Create(a) => (
            with_body(Method::POST, "/api/v1/changes".into(), &new_change(a, now)?)?,
            View::Change,
        ),
        ChangeCommand::Update(a) => (
            with_body(
                Method::PATCH,
                format!("/api/v1/changes/{}", path_id(&a.id)?),
                &change_update(a, now)?,
            )?,
            View::Change,
        ),
        ChangeCommand::Approve(a) => transition(a, "approved")?,
        ChangeCommand::Implement(a) => transition(a, "implementing")?,
        ChangeCommand::Complete(a) => transition(a, "implemented")?,
        ChangeCommand::Close(a) => transition(a, "closed")?,
        ChangeCommand::Fail(a) => transition(a, "failed")?,
        ChangeCommand::Cancel(a) => transition(a, "cancelled")?,
        ChangeCommand::Import { file } => (
            Request {
                method: Method::POST,
                path: "/api/v1/changes/import".into(),
                query: Vec::new(),
                body: Some(json_file(file)?),
            },
            View::Changes,
        ),
    })
}

fn change_type(t: ChangeTypeArg) -> ChangeType {
    match t {
        ChangeTypeArg::Normal => ChangeType::Normal,
        ChangeTypeArg::Standard => ChangeType::Standard,
        ChangeTypeArg::Emergency => ChangeType::Emergency,
    }
}

fn new_change(a: &ChangeCreateArgs, now: SystemTime) -> Result<NewChange, Invalid> {
    Ok(NewChange {
        title: a.title.clone(),
        description: a.description.clone().unwrap_or_default(),
        change_type: change_type(a.change_type),
        scope: a.scope.clone(),
        window_start: at(a.start, now, "start")?,
        window_end: at(a.end, now, "end")?,
        expected: a.expect.clone(),
        outage_expected: a.outage_expected.unwrap_or(false),
        external_id: None,
        state: None,
    })
}

fn change_update(a: &ChangeUpdateArgs, now: SystemTime) -> Result<ChangeUpdate, Invalid> {
    let u = ChangeUpdate {
        title: a.title.clone(),
        description: a.description.clone(),
        scope: (!a.scope.is_empty()).then(|| a.scope.clone()),
        window_start: a.start.map(|t| at(t, now, "start")).transpose()?,
        window_end: a.end.map(|t| at(t, now, "end")).transpose()?,
        expected: if a.clear_expect {
            Some(Vec::new())
        } else {
            (!a.expect.is_empty()).then(|| a.expect.clone())
        },
        outage_expected: a.outage_expected,
    };
    if u == ChangeUpdate::default() {
        return Err(Invalid(
            "nothing to update: give --title, --description, --scope, --start, --end, \
             --expect, --clear-expect or --outage-expected"
                .into(),
        ));
    }
    Ok(u)
}

fn baseline(c: &BaselineCommand) -> Result<(Request, View), Invalid> {
    Ok(match c {
        BaselineCommand::Show { id, items } => (
            get(format!("/api/v1/baselines/{}", path_id(id)?)),
            View::Baseline { items: *items },
        ),
        BaselineCommand::Capture { name, scope } => (
            with_body(
                Method::POST,
                "/api/v1/baselines".into(),
                &serde_json::json!({ "name": name, "scope": scope }),
            )?,
            View::BaselineSummary,
        ),
        BaselineCommand::Approve { id } => (
            Request {
                method: Method::POST,
                path: format!("/api/v1/baselines/{}/approve", path_id(id)?),
                query: Vec::new(),
                body: None,
            },
            View::BaselineSummary,
        ),
        BaselineCommand::Diff { id } => (
            get(format!("/api/v1/baselines/{}/diff", path_id(id)?)),
            View::BaselineDiff,
        ),
    })
}

fn drift(a: &DriftArgs) -> (Request, View) {
    let mut r = get("/api/v1/drift".into());
    let q = &mut r.query;
    query_opt(q, "host", a.host.as_ref());
    query_opt(q, "ci", a.ci.as_ref());
    query_opt(q, "verdict", a.verdict.as_ref());
    query_opt(q, "open", a.open);
    query_opt(q, "change", a.change.as_ref());
    query_opt(q, "limit", a.limit);
    query_opt(q, "after", a.after.as_ref());
    let limit = a.limit.map_or(DEFAULT_LIMIT, usize::from);
    (r, View::Drift { limit })
}

fn waiver(c: &WaiverCommand, now: SystemTime) -> Result<(Request, View), Invalid> {
    Ok(match c {
        WaiverCommand::Create {
            scope,
            attributes,
            justification,
            expires,
        } => {
            let w = NewWaiver {
                scope: scope.clone(),
                attributes: attributes.clone(),
                justification: justification.clone(),
                expires_at: at(*expires, now, "expires")?,
            };
            (
                with_body(Method::POST, "/api/v1/waivers".into(), &w)?,
                View::Waiver,
            )
        }
        WaiverCommand::Revoke { id, note } => (
            Request {
                method: Method::POST,
                path: format!("/api/v1/waivers/{}/revoke", path_id(id)?),
                query: Vec::new(),
                body: note.as_ref().map(|n| serde_json::json!({ "note": n })),
            },
            View::Waiver,
        ),
    })
}

fn incidents(a: &IncidentsArgs) -> Request {
    let mut r = get("/api/v1/incidents".into());
    let q = &mut r.query;
    query_opt(q, "state", a.state.as_ref());
    query_opt(q, "open", a.open);
    query_opt(q, "category", a.category.as_ref());
    query_opt(q, "host", a.host.as_ref());
    query_opt(q, "limit", a.limit);
    r
}

fn incident(c: &IncidentCommand) -> Result<(Request, View), Invalid> {
    let act = |number: &str, action: IncidentAction| -> Result<(Request, View), Invalid> {
        let path = format!("/api/v1/incidents/{}/actions", path_id(number)?);
        Ok((with_body(Method::POST, path, &action)?, View::Incident))
    };
    match c {
        IncidentCommand::Show { number } => Ok((
            get(format!("/api/v1/incidents/{}", path_id(number)?)),
            View::Incident,
        )),
        IncidentCommand::Ack { number, note } => {
            act(number, IncidentAction::Acknowledge { note: note.clone() })
        }
        IncidentCommand::Assign { number, assignee } => act(
            number,
            IncidentAction::Assign {
                assignee: assignee.clone(),
            },
        ),
        IncidentCommand::Resolve { number, note } => {
            act(number, IncidentAction::Resolve { note: note.clone() })
        }
        IncidentCommand::Reopen { number, note } => {
            act(number, IncidentAction::Reopen { note: note.clone() })
        }
        IncidentCommand::Close {
            number,
            note,
            change,
        } => act(
            number,
            IncidentAction::Close {
                note: note.clone().unwrap_or_default(),
                change_id: change.clone(),
            },
        ),
    }
}

fn range(
    q: &mut Vec<(&'static str, String)>,
    a: &RangeArgs,
    now: SystemTime,
) -> Result<(), Invalid> {
    query_time(q, "from", a.from, now)?;
    query_time(q, "to", a.to, now)
}

fn availability(a: &AvailabilityArgs, now: SystemTime) -> Result<Request, Invalid> {
    let mut r = get("/api/v1/availability".into());
    range(&mut r.query, &a.range, now)?;
    query_opt(&mut r.query, "ci", a.ci.as_ref());
    Ok(r)
}

fn audit_log(a: &AuditLogArgs) -> (Request, View) {
    if let Some(AuditLogCommand::Verify) = a.command {
        return (get("/api/v1/audit-log/verify".into()), View::AuditVerify);
    }
    let mut r = get("/api/v1/audit-log".into());
    query_opt(&mut r.query, "after", a.after);
    query_opt(&mut r.query, "limit", a.limit);
    let limit = a.limit.map_or(DEFAULT_LIMIT, usize::from);
    (r, View::AuditLog { limit })
}

/// A JSON file (`-`: stdin), bounded by the largest body the API takes.
fn json_file(path: &Path) -> Result<Value, Invalid> {
    let name = path.display().to_string();
    let err = |reason: String| Invalid(format!("{name}: {reason}"));
    let mut text = Vec::new();
    let limit = MAX_IMPORT_BYTES as u64 + 1;
    let read = if name == "-" {
        std::io::stdin().take(limit).read_to_end(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut text))
    };
    read.map_err(|e| err(e.to_string()))?;
    if text.len() > MAX_IMPORT_BYTES {
        return Err(err(format!("larger than {MAX_IMPORT_BYTES} bytes")));
    }
    serde_json::from_slice(&text).map_err(|e| err(format!("not JSON: {e}")))
}
