//! The configuration audit routes (`/api/v1/audit/...`). docs/API.md "Configuration
//! audit" is the reference. Reads are open to every role; writes are role-checked here:
//!
//! | action | roles |
//! |---|---|
//! | replace the register, run an audit | auditor, admin |
//! | move a deficiency forward | auditor, admin, operator |
//!
//! A refused role is a 403 and changes nothing; a malformed body is a 400 (an import names
//! every bad row, up to 20, and commits nothing); a backward state change is a 409; a
//! collector without the audit service answers 503.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, Principal, actor};
use crate::config_audit::register::{self, MAX_IMPORT_BYTES, RegisterRow};
use crate::config_audit::{
    AuditError, ConfigAudit, DefState, Deficiency, RegisterMeta, Run, RunInfo, report,
};

const AUDITORS: &[&str] = &["auditor", "admin"];
const UPDATERS: &[&str] = &["auditor", "admin", "operator"];
/// Largest register page.
const MAX_PAGE: usize = 1000;

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/api/v1/audit/register",
            get(get_register)
                .put(put_register)
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/api/v1/audit/runs", get(list_runs).post(start_run))
        .route("/api/v1/audit/runs/{id}", get(get_run))
        .route("/api/v1/audit/runs/{id}/report", get(get_report))
        .route(
            "/api/v1/audit/runs/{id}/deficiencies/{def}",
            post(update_deficiency),
        )
}

fn service(state: &ApiState) -> Result<Arc<ConfigAudit>, ApiError> {
    state.config_audit.clone().ok_or_else(|| {
        ApiError::unavailable("the configuration audit is not running on this collector")
    })
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Invalid(m) => ApiError::bad_request(m),
            AuditError::Import(i) => ApiError::bad_request(i.to_string()),
            AuditError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            AuditError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            AuditError::Store(s) => ApiError::store("config audit", &s),
            AuditError::Audit(m) => ApiError::audit_refused("configuration audit", &m),
            AuditError::Corrupt { .. } => ApiError::corrupt("configuration audit", &e),
        }
    }
}

/// Runs blocking configuration audit work on the blocking pool.
async fn blocking<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&ConfigAudit) -> Result<T, AuditError> + Send + 'static,
{
    super::on_blocking_pool(
        service(state)?,
        "configuration audit",
        move |s: &Arc<ConfigAudit>| f(s),
    )
    .await
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > super::MAX_ID_BYTES {
        return Err(ApiError::bad_request("the id is empty or too long"));
    }
    Ok(())
}

// === register ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterParams {
    after: Option<usize>,
    limit: Option<usize>,
}

/// `GET /api/v1/audit/register`: one page of rows (`next_after`: the offset of the next).
#[derive(Serialize, Deserialize)]
pub struct RegisterPage {
    #[serde(flatten)]
    pub meta: RegisterMeta,
    pub items: Vec<RegisterRow>,
    pub next_after: Option<String>,
}

async fn get_register(
    State(state): State<ApiState>,
    q: Result<Query<RegisterParams>, QueryRejection>,
) -> Result<Json<RegisterPage>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let (meta, rows) = service(&state)?.register();
    let from = q.after.unwrap_or(0).min(rows.len());
    let to = from.saturating_add(limit).min(rows.len());
    Ok(Json(RegisterPage {
        meta,
        items: rows.rows(from, to),
        next_after: (to < rows.len()).then(|| to.to_string()),
    }))
}

/// `PUT /api/v1/audit/register`.
#[derive(Serialize, Deserialize)]
pub struct ImportResult {
    pub rows: u64,
}

async fn put_register(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImportResult>, ApiError> {
    let a = actor(&p, AUDITORS, "replace the audit register")?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let csv = if ct.starts_with("text/csv") {
        true
    } else if ct.starts_with("application/json") {
        false
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the register as text/csv or application/json",
        ));
    };
    let rows = blocking(&state, move |s| {
        let parsed = if csv {
            register::parse_csv(&body)?
        } else {
            register::parse_json(&body)?
        };
        s.import(&a, parsed, SystemTime::now())
    })
    .await?;
    Ok(Json(ImportResult { rows }))
}

// === runs ===

/// `GET /api/v1/audit/runs`: newest first.
#[derive(Serialize, Deserialize)]
pub struct RunList {
    pub items: Vec<RunInfo>,
}

async fn list_runs(State(state): State<ApiState>) -> Result<Json<RunList>, ApiError> {
    let mut items = service(&state)?.runs();
    items.reverse();
    Ok(Json(RunList { items }))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    missing_after_days: Option<u64>,
}

async fn start_run(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunInfo>), ApiError> {
    let a = actor(&p, AUDITORS, "run a configuration audit")?;
    let b: RunBody = if body.iter().all(u8::is_ascii_whitespace) {
        RunBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?
    };
    let info = blocking(&state, move |s| {
        s.run_audit(&a, b.missing_after_days, SystemTime::now())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn get_run(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    check_id(&id)?;
    Ok(Json(blocking(&state, move |s| s.run(&id)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    format: Option<String>,
}

async fn get_report(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    q: Result<Query<ReportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Query(q) = q?;
    let format = q.format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(ApiError::bad_request("format must be json, csv or html"));
    }
    let rid = id.clone();
    let run = blocking(&state, move |s| s.run(&rid)).await?;
    let (ct, ext, body) = match format.as_str() {
        "csv" => (
            "text/csv; charset=utf-8",
            "csv",
            report::csv(&run).map_err(|e| {
                tracing::error!(error = %e, "Cannot write a CSV audit report.");
                ApiError::internal()
            })?,
        ),
        "html" => (
            "text/html; charset=utf-8",
            "html",
            report::html(&run).into_bytes(),
        ),
        _ => (
            "application/json",
            "json",
            serde_json::to_vec_pretty(&run).map_err(|_| ApiError::internal())?,
        ),
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"audit-{}.{ext}\"",
        id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if format == "html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
    }
    Ok(resp.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: DefState,
    note: Option<String>,
}

async fn update_deficiency(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Path((id, def)): Path<(String, String)>,
    body: Result<Json<StateBody>, JsonRejection>,
) -> Result<Json<Deficiency>, ApiError> {
    let a = actor(&p, UPDATERS, "update an audit deficiency")?;
    check_id(&id)?;
    check_id(&def)?;
    let Json(b) = body?;
    Ok(Json(
        blocking(&state, move |s| {
            s.set_state(&a, &id, &def, b.state, b.note, SystemTime::now())
        })
        .await?,
    ))
}
