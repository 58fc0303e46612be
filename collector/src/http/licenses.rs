//! The licence routes (`/api/v1/licenses/...`): the normalised software inventory, the
//! compliance position, entitlements (import as CSV or JSON), expiring entitlements,
//! normalisation rules, allow/deny lists, unapproved and denied software, and a refresh.
//! docs/API.md "Licenses" is the reference. Reads are open to every role; writes are
//! role-checked here:
//!
//! | action | roles |
//! |---|---|
//! | import entitlements | change-manager, admin |
//! | replace rules, replace allow/deny lists | admin |
//! | refresh the index now | operator, change-manager, admin |
//!
//! A refused role is a 403 and changes nothing; a malformed body or parameter is a 400 (an
//! import names every bad row, up to 20, and commits nothing); a collector without the
//! licence service answers 503.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::query::{InvalidParam, given, parse_bool};
use super::{ApiError, ApiState, Principal, actor};
use crate::licenses::entitlements::{self, Entitlement, MAX_IMPORT_BYTES};
use crate::licenses::lists::Lists;
use crate::licenses::normalise::{RuleSet, builtin_rules};
use crate::licenses::position::{
    DeniedInstall, MAX_HOSTS_LISTED, PositionRow, SoftwareRow, Status, Unapproved,
};
use crate::licenses::{Expiring, LicenseError, Licenses, RefreshReport};

const IMPORTERS: &[&str] = &["change-manager", "admin"];
const ADMINS: &[&str] = &["admin"];
const OPERATORS: &[&str] = &["operator", "change-manager", "admin"];
/// Default hosts listed per position row.
const DEFAULT_HOSTS_LIMIT: usize = 100;
/// Widest `days` of `/expiring`.
const MAX_EXPIRY_DAYS: u64 = 3650;

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/licenses/software", get(software))
        .route("/api/v1/licenses/position", get(position))
        .route(
            "/api/v1/licenses/entitlements",
            get(list_entitlements)
                .post(import_entitlements)
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/api/v1/licenses/expiring", get(expiring))
        .route(
            "/api/v1/licenses/rules",
            get(get_rules)
                .put(put_rules)
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route(
            "/api/v1/licenses/lists",
            get(get_lists)
                .put(put_lists)
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/api/v1/licenses/unapproved", get(unapproved))
        .route("/api/v1/licenses/denied", get(denied))
        .route("/api/v1/licenses/refresh", post(refresh))
}

// === plumbing ===

fn service(state: &ApiState) -> Result<Arc<Licenses>, ApiError> {
    state.licenses.clone().ok_or_else(|| {
        ApiError::unavailable("the licence service is not running on this collector")
    })
}

impl From<LicenseError> for ApiError {
    fn from(e: LicenseError) -> Self {
        match e {
            LicenseError::Invalid(m) => ApiError::bad_request(m),
            LicenseError::Import(i) => ApiError::bad_request(i.to_string()),
            LicenseError::Store(s) => ApiError::store("licenses", &s),
            LicenseError::Audit(m) => ApiError::audit_refused("licences", &m),
            LicenseError::Corrupt { .. } => ApiError::corrupt("licences", &e),
        }
    }
}

/// Runs blocking licence work on the blocking pool.
async fn blocking<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Licenses) -> Result<T, LicenseError> + Send + 'static,
{
    super::on_blocking_pool(service(state)?, "licence", move |s: &Arc<Licenses>| f(s)).await
}

fn opt_bool(param: &'static str, v: Option<String>) -> Result<bool, ApiError> {
    Ok(given(param, v)?
        .map(|s| parse_bool(&s).map_err(|reason| InvalidParam { param, reason }))
        .transpose()?
        .unwrap_or(false))
}

fn opt_number(param: &'static str, v: Option<String>, max: u64) -> Result<Option<u64>, ApiError> {
    given(param, v)?
        .map(|s| match s.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::from(InvalidParam {
                param,
                reason: format!("must be a whole number from 0 to {max}"),
            })),
        })
        .transpose()
}

/// Case-insensitive substring filter (an absent filter matches).
fn contains(filter: &Option<String>, text: &str) -> bool {
    filter
        .as_ref()
        .is_none_or(|f| text.to_lowercase().contains(&f.to_lowercase()))
}

fn built_at(l: &Licenses) -> Option<String> {
    l.index()
        .built_at
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

// === software and position ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SoftwareParams {
    vendor: Option<String>,
    product: Option<String>,
    normalised: Option<String>,
}

/// `GET /api/v1/licenses/software`.
#[derive(Serialize, Deserialize)]
pub struct SoftwareList {
    pub items: Vec<SoftwareRow>,
    /// When the index was built (`null`: not yet).
    pub built_at: Option<String>,
    pub packages_scanned: u64,
    pub products_overflow: u64,
}

async fn software(
    State(state): State<ApiState>,
    q: Result<Query<SoftwareParams>, QueryRejection>,
) -> Result<Json<SoftwareList>, ApiError> {
    let Query(q) = q?;
    let vendor = given("vendor", q.vendor)?;
    let product = given("product", q.product)?;
    let normalised = opt_bool("normalised", q.normalised)?;
    let l = service(&state)?;
    let index = l.index();
    let items = crate::licenses::position::software(&index, normalised)
        .into_iter()
        .filter(|r| contains(&vendor, &r.vendor) && contains(&product, &r.product))
        .collect();
    Ok(Json(SoftwareList {
        items,
        built_at: built_at(&l),
        packages_scanned: index.packages_scanned,
        products_overflow: index.products_overflow,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionParams {
    vendor: Option<String>,
    product: Option<String>,
    status: Option<String>,
    hosts_limit: Option<String>,
}

/// `GET /api/v1/licenses/position`.
#[derive(Serialize, Deserialize)]
pub struct PositionList {
    pub items: Vec<PositionRow>,
    pub built_at: Option<String>,
    pub expiry_window_days: u64,
}

async fn position(
    State(state): State<ApiState>,
    q: Result<Query<PositionParams>, QueryRejection>,
) -> Result<Json<PositionList>, ApiError> {
    let Query(q) = q?;
    let vendor = given("vendor", q.vendor)?;
    let product = given("product", q.product)?;
    let status = given("status", q.status)?
        .map(|s| {
            serde_json::from_value::<Status>(serde_json::Value::String(s)).map_err(|_| {
                ApiError::from(InvalidParam {
                    param: "status",
                    reason: "must be compliant, shortfall, surplus or unlicensed".into(),
                })
            })
        })
        .transpose()?;
    let hosts_limit = opt_number("hosts_limit", q.hosts_limit, MAX_HOSTS_LISTED as u64)?
        .map_or(DEFAULT_HOSTS_LIMIT, |n| n as usize);
    let l = service(&state)?;
    let window = l.settings().expiry_window;
    let built = built_at(&l);
    let items = tokio::task::spawn_blocking(move || l.position(SystemTime::now(), hosts_limit))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "A licence position task failed.");
            ApiError::internal()
        })?
        .into_iter()
        .filter(|r| {
            contains(&vendor, &r.vendor)
                && contains(&product, &r.product)
                && status.is_none_or(|s| r.status == s)
        })
        .collect();
    Ok(Json(PositionList {
        items,
        built_at: built,
        expiry_window_days: window.as_secs() / 86_400,
    }))
}

// === entitlements ===

/// `{"items": [...]}` lists.
#[derive(Serialize, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

async fn list_entitlements(
    State(state): State<ApiState>,
) -> Result<Json<Items<Entitlement>>, ApiError> {
    Ok(Json(Items {
        items: service(&state)?.entitlements(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportParams {
    replace: Option<String>,
}

/// The answer to an import.
#[derive(Serialize, Deserialize)]
pub struct ImportResult {
    /// Rows imported.
    pub imported: usize,
    /// The stored set after the import.
    pub items: Vec<Entitlement>,
}

async fn import_entitlements(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    q: Result<Query<ImportParams>, QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<ImportResult>), ApiError> {
    let a = actor(&p, IMPORTERS, "import entitlements")?;
    let Query(q) = q?;
    let replace = opt_bool("replace", q.replace)?;
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
            "send the entitlements as text/csv or application/json",
        ));
    };
    let (imported, items) = blocking(&state, move |l| {
        let parsed = if csv {
            entitlements::parse_csv(&body)?
        } else {
            entitlements::parse_json(&body)?
        };
        let n = parsed.len();
        Ok((n, l.import(&a, parsed, replace)?))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(ImportResult { imported, items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiringParams {
    days: Option<String>,
}

/// `GET /api/v1/licenses/expiring`.
#[derive(Serialize, Deserialize)]
pub struct ExpiringList {
    pub items: Vec<Expiring>,
    pub window_days: u64,
}

async fn expiring(
    State(state): State<ApiState>,
    q: Result<Query<ExpiringParams>, QueryRejection>,
) -> Result<Json<ExpiringList>, ApiError> {
    let Query(q) = q?;
    let days = opt_number("days", q.days, MAX_EXPIRY_DAYS)?;
    let l = service(&state)?;
    let window = days.map_or(l.settings().expiry_window, |d| {
        Duration::from_secs(d * 86_400)
    });
    Ok(Json(ExpiringList {
        items: l.expiring(SystemTime::now(), Some(window)),
        window_days: window.as_secs() / 86_400,
    }))
}

// === rules and lists ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesParams {
    builtin: Option<String>,
}

async fn get_rules(
    State(state): State<ApiState>,
    q: Result<Query<RulesParams>, QueryRejection>,
) -> Result<Json<RuleSet>, ApiError> {
    let Query(q) = q?;
    if opt_bool("builtin", q.builtin)? {
        return Ok(Json(builtin_rules()));
    }
    Ok(Json(service(&state)?.rules()))
}

async fn put_rules(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<RuleSet>, JsonRejection>,
) -> Result<Json<RuleSet>, ApiError> {
    let a = actor(&p, ADMINS, "replace normalisation rules")?;
    let Json(rules) = body?;
    Ok(Json(
        blocking(&state, move |l| l.set_rules(&a, rules)).await?,
    ))
}

async fn get_lists(State(state): State<ApiState>) -> Result<Json<Lists>, ApiError> {
    Ok(Json(service(&state)?.lists()))
}

async fn put_lists(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<Lists>, JsonRejection>,
) -> Result<Json<Lists>, ApiError> {
    let a = actor(&p, ADMINS, "replace allow and deny lists")?;
    let Json(lists) = body?;
    Ok(Json(
        blocking(&state, move |l| l.set_lists(&a, lists)).await?,
    ))
}

async fn unapproved(State(state): State<ApiState>) -> Result<Json<Items<Unapproved>>, ApiError> {
    Ok(Json(Items {
        items: service(&state)?.index().unapproved.clone(),
    }))
}

async fn denied(State(state): State<ApiState>) -> Result<Json<Items<DeniedInstall>>, ApiError> {
    Ok(Json(Items {
        items: service(&state)?.index().denied.clone(),
    }))
}

async fn refresh(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<RefreshReport>, ApiError> {
    actor(&p, OPERATORS, "refresh the licence index")?;
    Ok(Json(
        blocking(&state, |l| l.refresh(SystemTime::now())).await?,
    ))
}
