//! The judgment routes: change records, baselines, drift, waivers, policies, incidents,
//! availability and the audit log. Reads are open to every role; writes are role-checked
//! here (DESIGN.md "Access"):
//!
//! | action | roles |
//! |---|---|
//! | create/update/move change records (not approve), capture baselines, act on incidents | operator, change-manager, admin |
//! | approve changes and baselines, waivers, close an incident with a change | change-manager, admin |
//! | policies (volatile attributes, criticality, deny list) | admin |
//! | audit-log verification | auditor, admin |
//!
//! A refused role is a 403 and changes nothing; a malformed body or parameter is a 400;
//! an illegal state move is a 409.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::query::{InvalidParam, given, parse_bool, parse_limit, parse_time};
use super::{ApiError, ApiResult, ApiState, Principal, actor, path_id};
use crate::availability::{AvailabilityFigures, Outage};
use crate::baselines::{Baseline, BaselineDiff, BaselineSummary};
use crate::changes::{ChangeImport, ChangeRecord, ChangeState, ChangeUpdate, NewChange};
use crate::drift::DriftRecord;
use crate::incidents::Incident;
use crate::judgment::{
    DriftQuery, IncidentAction, IncidentQuery, Judgment, JudgmentError, NewWaiver, Policies,
};
use crate::policy::Waiver;

/// Largest change import accepted.
pub const MAX_IMPORT_BYTES: usize = 8 * 1024 * 1024;
/// Widest availability period one request may ask for.
pub const MAX_AVAILABILITY_RANGE: Duration = Duration::from_secs(400 * 24 * 3600);

const WRITERS: &[&str] = &["operator", "change-manager", "admin"];
const MANAGERS: &[&str] = &["change-manager", "admin"];
const ADMINS: &[&str] = &["admin"];
const AUDITORS: &[&str] = &["auditor", "admin"];

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/changes", get(list_changes).post(create_change))
        .route(
            "/api/v1/changes/import",
            post(import_changes).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/api/v1/changes/{id}", get(get_change).patch(update_change))
        .route("/api/v1/changes/{id}/transition", post(transition_change))
        .route(
            "/api/v1/baselines",
            get(list_baselines).post(capture_baseline),
        )
        .route("/api/v1/baselines/{id}", get(get_baseline))
        .route("/api/v1/baselines/{id}/approve", post(approve_baseline))
        .route("/api/v1/baselines/{id}/diff", get(diff_baseline))
        .route("/api/v1/drift", get(list_drift))
        .route("/api/v1/waivers", get(list_waivers).post(create_waiver))
        .route("/api/v1/waivers/{id}/revoke", post(revoke_waiver))
        .route("/api/v1/policies", get(get_policies).put(put_policies))
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/incidents/{id}", get(get_incident))
        .route("/api/v1/incidents/{id}/actions", post(act_on_incident))
        .route("/api/v1/availability", get(availability))
        .route("/api/v1/outages", get(outages))
        .route("/api/v1/audit-log", get(audit_entries))
        .route("/api/v1/audit-log/verify", get(audit_verify))
}

// === plumbing ===

fn engine(state: &ApiState) -> Result<Arc<Judgment>, ApiError> {
    state.judgment.clone().ok_or_else(|| {
        ApiError::unavailable("the judgment engine is not running on this collector")
    })
}

impl From<JudgmentError> for ApiError {
    fn from(e: JudgmentError) -> Self {
        match e {
            JudgmentError::NotFound(m) => ApiError::not_found(m),
            JudgmentError::Invalid(m) => ApiError::bad_request(m),
            JudgmentError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            JudgmentError::Store(s) => ApiError::store("judgment", &s),
            JudgmentError::Audit(m) => ApiError::audit_refused("judgment", &m),
            JudgmentError::Corrupt { .. } => ApiError::corrupt("judgment", &e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", r.body_text());
        }
        ApiError::bad_request(r.body_text())
    }
}

/// Runs blocking judgment work on the blocking pool.
async fn blocking<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Judgment) -> Result<T, JudgmentError> + Send + 'static,
{
    super::on_blocking_pool(engine(state)?, "judgment", move |s: &Arc<Judgment>| f(s)).await
}

fn opt_time(param: &'static str, v: Option<String>) -> Result<Option<SystemTime>, ApiError> {
    given(param, v)?
        .map(|s| parse_time(&s).map_err(|reason| InvalidParam { param, reason }.into()))
        .transpose()
}

fn opt_parse<T>(
    param: &'static str,
    v: Option<String>,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ApiError> {
    given(param, v)?
        .map(|s| f(&s).map_err(|reason| InvalidParam { param, reason }.into()))
        .transpose()
}

fn limit(v: Option<String>) -> Result<usize, ApiError> {
    Ok(opt_parse("limit", v, parse_limit)?.unwrap_or(100))
}

/// A list that is always complete: `{"items": [...]}`.
#[derive(Serialize, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

fn items<T>(items: Vec<T>) -> Json<Items<T>> {
    Json(Items { items })
}

// === change records ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    from: Option<String>,
    to: Option<String>,
    state: Option<String>,
}

async fn list_changes(
    State(state): State<ApiState>,
    q: Result<Query<ChangesParams>, QueryRejection>,
) -> ApiResult<Items<ChangeRecord>> {
    let Query(q) = q?;
    let from = opt_time("from", q.from)?;
    let to = opt_time("to", q.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && t <= f
    {
        return Err(ApiError::bad_request("invalid to: must be after from"));
    }
    let st = opt_parse("state", q.state, |s| {
        s.parse::<ChangeState>().map_err(|e| e.to_string())
    })?;
    let j = engine(&state)?;
    Ok(items(j.changes(from, to, st)))
}

async fn create_change(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<NewChange>, JsonRejection>,
) -> Result<(StatusCode, Json<ChangeRecord>), ApiError> {
    let a = actor(&p, WRITERS, "create change records")?;
    let Json(req) = body?;
    let c = blocking(&state, move |j| j.create_change(&a, req)).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

async fn import_changes(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<ChangeImport>, JsonRejection>,
) -> Result<(StatusCode, Json<Items<ChangeRecord>>), ApiError> {
    // Imports may carry approved states from the ITSM tool: a manager's act.
    let a = actor(&p, MANAGERS, "import change records")?;
    let Json(req) = body?;
    let v = blocking(&state, move |j| j.import_changes(&a, req)).await?;
    Ok((StatusCode::CREATED, items(v)))
}

async fn get_change(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<ChangeRecord> {
    let id = path_id(id)?;
    Ok(Json(engine(&state)?.change(&id)?))
}

async fn update_change(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ChangeUpdate>, JsonRejection>,
) -> ApiResult<ChangeRecord> {
    let a = actor(&p, WRITERS, "update change records")?;
    let id = path_id(id)?;
    let Json(u) = body?;
    Ok(Json(
        blocking(&state, move |j| j.update_change(&a, &id, u)).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    to: String,
    #[serde(default)]
    note: Option<String>,
}

async fn transition_change(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<TransitionBody>, JsonRejection>,
) -> ApiResult<ChangeRecord> {
    let id = path_id(id)?;
    let Json(b) = body?;
    let to: ChangeState =
        b.to.parse()
            .map_err(|e: crate::changes::ChangeError| ApiError::bad_request(e.to_string()))?;
    let a = if to == ChangeState::Approved {
        actor(&p, MANAGERS, "approve change records")?
    } else {
        actor(&p, WRITERS, "move change records")?
    };
    if b.note.as_ref().is_some_and(|n| n.len() > 4096) {
        return Err(ApiError::bad_request("note is longer than 4096 bytes"));
    }
    Ok(Json(
        blocking(&state, move |j| {
            j.transition_change(&a, &id, to, b.note.as_deref())
        })
        .await?,
    ))
}

// === baselines ===

async fn list_baselines(State(state): State<ApiState>) -> ApiResult<Items<BaselineSummary>> {
    Ok(items(engine(&state)?.baselines()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    name: String,
    scope: Vec<String>,
}

async fn capture_baseline(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<CaptureBody>, JsonRejection>,
) -> Result<(StatusCode, Json<BaselineSummary>), ApiError> {
    let a = actor(&p, WRITERS, "capture baselines")?;
    let Json(b) = body?;
    let s = blocking(&state, move |j| j.capture_baseline(&a, &b.name, &b.scope)).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

async fn get_baseline(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Baseline> {
    let id = path_id(id)?;
    Ok(Json(engine(&state)?.baseline(&id)?))
}

async fn approve_baseline(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<BaselineSummary> {
    let a = actor(&p, MANAGERS, "approve baselines")?;
    let id = path_id(id)?;
    Ok(Json(
        blocking(&state, move |j| j.approve_baseline(&a, &id)).await?,
    ))
}

async fn diff_baseline(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<BaselineDiff> {
    let id = path_id(id)?;
    Ok(Json(blocking(&state, move |j| j.diff_baseline(&id)).await?))
}

// === drift ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriftParams {
    host: Option<String>,
    ci: Option<String>,
    verdict: Option<String>,
    open: Option<String>,
    change: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

async fn list_drift(
    State(state): State<ApiState>,
    q: Result<Query<DriftParams>, QueryRejection>,
) -> ApiResult<Items<DriftRecord>> {
    let Query(q) = q?;
    let verdict = given("verdict", q.verdict)?;
    if let Some(v) = &verdict
        && !["authorized", "accepted", "unauthorized"].contains(&v.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "invalid verdict: {v:?} is not authorized, accepted or unauthorized"
        )));
    }
    let query = DriftQuery {
        host: given("host", q.host)?,
        ci: given("ci", q.ci)?,
        verdict,
        open: opt_parse("open", q.open, parse_bool)?,
        change: given("change", q.change)?,
        after: given("after", q.after)?,
        limit: limit(q.limit)?,
    };
    Ok(items(blocking(&state, move |j| j.drift(&query)).await?))
}

// === waivers ===

async fn list_waivers(State(state): State<ApiState>) -> ApiResult<Items<Waiver>> {
    Ok(items(engine(&state)?.waivers()))
}

async fn create_waiver(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<NewWaiver>, JsonRejection>,
) -> Result<(StatusCode, Json<Waiver>), ApiError> {
    let a = actor(&p, MANAGERS, "grant waivers")?;
    let Json(w) = body?;
    let w = blocking(&state, move |j| j.create_waiver(&a, w)).await?;
    Ok((StatusCode::CREATED, Json(w)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    #[serde(default)]
    note: Option<String>,
}

async fn revoke_waiver(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    body: Option<Json<NoteBody>>,
) -> ApiResult<Waiver> {
    let a = actor(&p, MANAGERS, "revoke waivers")?;
    let id = path_id(id)?;
    let note = body.and_then(|Json(b)| b.note);
    Ok(Json(
        blocking(&state, move |j| j.revoke_waiver(&a, &id, note.as_deref())).await?,
    ))
}

// === policies ===

async fn get_policies(State(state): State<ApiState>) -> ApiResult<Policies> {
    Ok(Json(engine(&state)?.policies()))
}

async fn put_policies(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<Policies>, JsonRejection>,
) -> ApiResult<Policies> {
    let a = actor(&p, ADMINS, "change policies")?;
    let Json(pol) = body?;
    Ok(Json(
        blocking(&state, move |j| j.set_policies(&a, pol)).await?,
    ))
}

// === incidents ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentParams {
    state: Option<String>,
    open: Option<String>,
    category: Option<String>,
    host: Option<String>,
    limit: Option<String>,
}

async fn list_incidents(
    State(state): State<ApiState>,
    q: Result<Query<IncidentParams>, QueryRejection>,
) -> ApiResult<Items<Incident>> {
    let Query(q) = q?;
    let query = IncidentQuery {
        state: opt_parse("state", q.state, |s| {
            s.parse()
                .map_err(|e: crate::incidents::IncidentError| e.to_string())
        })?,
        open: opt_parse("open", q.open, parse_bool)?,
        category: opt_parse("category", q.category, |s| {
            s.parse()
                .map_err(|e: crate::incidents::IncidentError| e.to_string())
        })?,
        host: given("host", q.host)?,
        limit: limit(q.limit)?,
    };
    Ok(items(blocking(&state, move |j| j.incidents(&query)).await?))
}

async fn get_incident(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Incident> {
    let id = path_id(id)?;
    Ok(Json(blocking(&state, move |j| j.incident(&id)).await?))
}

async fn act_on_incident(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<IncidentAction>, JsonRejection>,
) -> ApiResult<Incident> {
    let id = path_id(id)?;
    let Json(action) = body?;
    let a = match &action {
        IncidentAction::Close {
            change_id: Some(_), ..
        } => actor(&p, MANAGERS, "accept drift with a change")?,
        _ => actor(&p, WRITERS, "act on incidents")?,
    };
    let too_long = |s: &str| s.len() > 4096;
    let long = match &action {
        IncidentAction::Acknowledge { note } => note.as_deref().is_some_and(too_long),
        IncidentAction::Assign { assignee } => too_long(assignee),
        IncidentAction::Resolve { note } | IncidentAction::Reopen { note } => too_long(note),
        IncidentAction::Close { note, .. } => too_long(note),
    };
    if long {
        return Err(ApiError::bad_request("note is longer than 4096 bytes"));
    }
    Ok(Json(
        blocking(&state, move |j| j.act_on_incident(&a, &id, action)).await?,
    ))
}

// === availability ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeParams {
    from: Option<String>,
    to: Option<String>,
    ci: Option<String>,
}

fn range(
    q_from: Option<String>,
    q_to: Option<String>,
) -> Result<(SystemTime, SystemTime), ApiError> {
    let now = SystemTime::now();
    let to = opt_time("to", q_to)?.unwrap_or(now);
    let from = opt_time("from", q_from)?.unwrap_or(to - Duration::from_secs(30 * 24 * 3600));
    if to <= from {
        return Err(ApiError::bad_request("invalid to: must be after from"));
    }
    if to.duration_since(from).unwrap_or_default() > MAX_AVAILABILITY_RANGE {
        return Err(ApiError::bad_request(
            "invalid from: the range is longer than 400 days",
        ));
    }
    Ok((from, to))
}

/// Availability over a period, per CI.
#[derive(Serialize, Deserialize)]
pub struct AvailabilityReport {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub from: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub to: SystemTime,
    pub items: Vec<AvailabilityFigures>,
}

async fn availability(
    State(state): State<ApiState>,
    q: Result<Query<RangeParams>, QueryRejection>,
) -> ApiResult<AvailabilityReport> {
    let Query(q) = q?;
    let (from, to) = range(q.from, q.to)?;
    let ci = given("ci", q.ci)?;
    let items = blocking(&state, move |j| j.availability(from, to, ci.as_deref())).await?;
    Ok(Json(AvailabilityReport { from, to, items }))
}

async fn outages(
    State(state): State<ApiState>,
    q: Result<Query<RangeParams>, QueryRejection>,
) -> ApiResult<Items<Outage>> {
    let Query(q) = q?;
    if q.ci.is_some() {
        return Err(ApiError::bad_request(
            "unknown parameter ci (use /availability?ci=)",
        ));
    }
    let (from, to) = range(q.from, q.to)?;
    Ok(items(blocking(&state, move |j| j.outages(from, to)).await?))
}

// === audit log ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    after: Option<String>,
    limit: Option<String>,
}

async fn audit_entries(
    State(state): State<ApiState>,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let after = opt_parse("after", q.after, |s| {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a sequence number"))
    })?;
    let limit = limit(q.limit)?;
    let log = state
        .audit
        .clone()
        .ok_or_else(|| ApiError::unavailable("the audit log is not configured"))?;
    let v = tokio::task::spawn_blocking(move || log.entries_json(after, limit))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            tracing::error!(error = %e, "Cannot read the audit log.");
            ApiError::unavailable("the audit log cannot be read; the collector log has the details")
        })?;
    Ok(Json(v))
}

async fn audit_verify(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor(&p, AUDITORS, "verify the audit log")?;
    let log = state
        .audit
        .clone()
        .ok_or_else(|| ApiError::unavailable("the audit log is not configured"))?;
    let v = tokio::task::spawn_blocking(move || log.verify_json())
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            tracing::error!(error = %e, "Cannot verify the audit log.");
            ApiError::unavailable("the audit log cannot be read; the collector log has the details")
        })?;
    Ok(Json(v))
}
