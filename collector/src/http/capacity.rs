//! The capacity routes: roll-up series per host and resource, and the forecasts (by
//! default the at-risk list). Both are reads, open to every role (viewer, operator,
//! change-manager, auditor, admin); capacity has no writes over the API (the forecasts and
//! incidents come from the collector's own loop, see [`crate::capacity`]).
//!
//! - `GET /api/v1/capacity?host=&resource=&from=&to=&tier=minute|hour|day`: `host` (id or
//!   hostname) is required; `to` defaults to now, `from` to a day before `to`; `tier`
//!   defaults by range width (≤ 2 d minute, ≤ 90 d hour, else day). Widest ranges: minute
//!   2 d, hour 400 d, day 3 y. An unknown host is a 404, a bad parameter a 400.
//! - `GET /api/v1/capacity/forecast?host=&all=true|false`: stored forecasts, at-risk only
//!   unless `all=true`; at most [`MAX_FORECAST_ITEMS`] rows (`truncated` says whether more
//!   were left out).

use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::query::{given, parse_bool, parse_time};
use super::{ApiError, ApiResult, ApiState};
use crate::capacity::rollup::Tier;
use crate::capacity::{
    CapacityError, Forecast, MAX_FORECAST_ITEMS, SeriesView, list_forecasts, series,
};

const DAY: Duration = Duration::from_secs(86_400);
/// Range when `from` is not given.
pub const DEFAULT_RANGE: Duration = DAY;

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/capacity", get(get_series))
        .route("/api/v1/capacity/forecast", get(get_forecasts))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesParams {
    host: Option<String>,
    resource: Option<String>,
    from: Option<String>,
    to: Option<String>,
    tier: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastParams {
    host: Option<String>,
    all: Option<String>,
}

#[derive(Debug, Serialize)]
struct SeriesList {
    items: Vec<SeriesView>,
}

#[derive(Debug, Serialize)]
struct ForecastList {
    items: Vec<Forecast>,
    truncated: bool,
}

fn time_param(param: &'static str, v: Option<String>) -> Result<Option<SystemTime>, ApiError> {
    given(param, v)?
        .map(|s| parse_time(&s).map_err(|r| ApiError::bad_request(format!("invalid {param}: {r}"))))
        .transpose()
}

/// The widest range a tier may be asked for.
fn max_range(tier: Tier) -> Duration {
    match tier {
        Tier::Minute => 2 * DAY,
        Tier::Hour => 400 * DAY,
        Tier::Day => 3 * 366 * DAY,
    }
}

impl From<CapacityError> for ApiError {
    fn from(e: CapacityError) -> Self {
        match e {
            CapacityError::Store(s) => ApiError::store("capacity", &s),
            CapacityError::Invalid(m) => ApiError::bad_request(m),
            CapacityError::UnknownHost(h) => ApiError::not_found(format!("no host {h:?}")),
        }
    }
}

/// Runs a blocking capacity read on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CapacityError> + Send + 'static,
{
    super::on_blocking_pool((), "capacity read", move |_: &()| f()).await
}

async fn get_series(
    State(state): State<ApiState>,
    q: Result<Query<SeriesParams>, QueryRejection>,
) -> ApiResult<SeriesList> {
    let Query(q) = q?;
    let host = given("host", q.host)?
        .ok_or_else(|| ApiError::bad_request("invalid host: required (a host id or hostname)"))?;
    let resource = given("resource", q.resource)?;
    let to = time_param("to", q.to)?.unwrap_or_else(SystemTime::now);
    let from = match time_param("from", q.from)? {
        Some(f) => f,
        None => to
            .checked_sub(DEFAULT_RANGE)
            .ok_or_else(|| ApiError::bad_request("invalid to: too early"))?,
    };
    let width = to
        .duration_since(from)
        .ok()
        .filter(|w| !w.is_zero())
        .ok_or_else(|| ApiError::bad_request("invalid from: must be before to"))?;
    let tier = match given("tier", q.tier)? {
        Some(t) => {
            Tier::parse(&t).map_err(|r| ApiError::bad_request(format!("invalid tier: {r}")))?
        }
        None if width <= 2 * DAY => Tier::Minute,
        None if width <= 90 * DAY => Tier::Hour,
        None => Tier::Day,
    };
    if width > max_range(tier) {
        return Err(ApiError::bad_request(format!(
            "invalid from: the {} tier serves at most {} per request",
            serde_json::to_value(tier)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            humantime::format_duration(max_range(tier))
        )));
    }
    let store = state.store.clone();
    let items =
        blocking(move || series(store.as_ref(), &host, resource.as_deref(), tier, from, to))
            .await?;
    Ok(Json(SeriesList { items }))
}

async fn get_forecasts(
    State(state): State<ApiState>,
    q: Result<Query<ForecastParams>, QueryRejection>,
) -> ApiResult<ForecastList> {
    let Query(q) = q?;
    let host = given("host", q.host)?;
    let all = match given("all", q.all)? {
        None => false,
        Some(s) => {
            parse_bool(&s).map_err(|r| ApiError::bad_request(format!("invalid all: {r}")))?
        }
    };
    let store = state.store.clone();
    let (items, truncated) =
        blocking(move || list_forecasts(store.as_ref(), host.as_deref(), all)).await?;
    debug_assert!(items.len() <= MAX_FORECAST_ITEMS);
    Ok(Json(ForecastList { items, truncated }))
}
