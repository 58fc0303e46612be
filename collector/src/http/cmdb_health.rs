//! The CMDB health routes (reads, open to every role): the KPI figures and the failing
//! CIs behind them, from [`crate::cmdb_health`]. 503 when the service is not configured.
//!
//! - `GET /api/v1/cmdb-health?kpi=&class=`: `{"generated_at", "cache_ttl_seconds",
//!   "cis_scanned", "compliance", "kpis": [{"kpi", "class", "healthy", "total", "ratio"}]}`;
//!   `compliance` is the audit run the compliance rows come from (`{"run_id",
//!   "finished_at"}`) or why there are none (`"no audit has run"`).
//! - `GET /api/v1/cmdb-health/failing?kpi=&class=&limit=`: `{"items": [{"ci_id", "class",
//!   "key", "host_id", "kpi", "reason"}], "total", "truncated", "generated_at"}`; `limit`
//!   1..=1000, default 100; `total` is the exact number failing, `truncated` says more
//!   exist than are listed (the report keeps at most
//!   [`crate::cmdb_health::MAX_FAILING_KEPT`] per KPI and class).
//!
//! The report is computed over the whole store and cached for `[cmdb_health] cache_ttl`
//! (default 60 s).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::query::{DEFAULT_LIMIT, MAX_LIMIT, given, parse_limit};
use super::{ApiError, ApiResult, ApiState};
use crate::cmdb_health::{CmdbHealth, ComplianceStatus, Failing, HealthReport, Kpi, KpiRow};

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/cmdb-health", get(get_kpis))
        .route("/api/v1/cmdb-health/failing", get(get_failing))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiParams {
    kpi: Option<String>,
    class: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailingParams {
    kpi: Option<String>,
    class: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
struct KpiBody {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    generated_at: SystemTime,
    cache_ttl_seconds: u64,
    cis_scanned: u64,
    compliance: ComplianceStatus,
    kpis: Vec<KpiRow>,
}

#[derive(Debug, Serialize)]
struct FailingBody {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    generated_at: SystemTime,
    items: Vec<Failing>,
    total: u64,
    truncated: bool,
}

fn kpi_param(v: Option<String>) -> Result<Option<Kpi>, ApiError> {
    given("kpi", v)?
        .map(|k| {
            Kpi::parse(&k).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid kpi: {k:?} is not completeness, correctness or compliance"
                ))
            })
        })
        .transpose()
}

fn service(state: &ApiState) -> Result<Arc<CmdbHealth>, ApiError> {
    state
        .cmdb_health
        .clone()
        .ok_or_else(|| ApiError::unavailable("CMDB health is not enabled on this collector"))
}

async fn report(health: Arc<CmdbHealth>) -> Result<Arc<HealthReport>, ApiError> {
    match tokio::task::spawn_blocking(move || health.report()).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(ApiError::store("cmdb health", &e)),
        Err(e) => {
            tracing::error!(error = %e, "A CMDB health task failed.");
            Err(ApiError::internal())
        }
    }
}

async fn get_kpis(
    State(state): State<ApiState>,
    q: Result<Query<KpiParams>, QueryRejection>,
) -> ApiResult<KpiBody> {
    let Query(q) = q?;
    let kpi = kpi_param(q.kpi)?;
    let class = given("class", q.class)?;
    let health = service(&state)?;
    let ttl = health.settings().cache_ttl.as_secs();
    let rep = report(health).await?;
    Ok(Json(KpiBody {
        generated_at: rep.generated_at,
        cache_ttl_seconds: ttl,
        cis_scanned: rep.cis_scanned,
        compliance: rep.compliance.clone(),
        kpis: rep.rows(kpi, class.as_deref()),
    }))
}

async fn get_failing(
    State(state): State<ApiState>,
    q: Result<Query<FailingParams>, QueryRejection>,
) -> ApiResult<FailingBody> {
    let Query(q) = q?;
    let kpi = kpi_param(q.kpi)?;
    let class = given("class", q.class)?;
    let limit = match given("limit", q.limit)? {
        None => DEFAULT_LIMIT,
        Some(l) => {
            parse_limit(&l).map_err(|r| ApiError::bad_request(format!("invalid limit: {r}")))?
        }
    };
    debug_assert!(limit <= MAX_LIMIT);
    let health = service(&state)?;
    let rep = report(health).await?;
    let (items, total) = rep.failing(kpi, class.as_deref(), limit);
    let truncated = total > items.len() as u64;
    Ok(Json(FailingBody {
        generated_at: rep.generated_at,
        items,
        total,
        truncated,
    }))
}
