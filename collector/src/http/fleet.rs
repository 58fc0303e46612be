//! The fleet route (a read, open to every role): `GET /api/v1/fleet?status=up|down&version=`
//! → `{"summary": {"agents", "up", "down", "versions": {"<version>": n}}, "items": [...],
//! "truncated", "up_window_seconds"}`, from [`crate::fleet`]. The summary counts the whole
//! fleet; the filters narrow `items` (at most [`crate::fleet::MAX_FLEET_ITEMS`]). 503 when
//! the service is not configured.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::query::MAX_PARAM_BYTES;
use super::{ApiError, ApiResult, ApiState};
use crate::fleet::{Fleet, FleetFilter, FleetView};

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/fleet", get(get_fleet))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetParams {
    status: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Serialize)]
struct FleetBody {
    #[serde(flatten)]
    view: FleetView,
    up_window_seconds: u64,
}

async fn get_fleet(
    State(state): State<ApiState>,
    q: Result<Query<FleetParams>, QueryRejection>,
) -> ApiResult<FleetBody> {
    let Query(q) = q?;
    let up = match q.status.as_deref() {
        None | Some("") => None,
        Some("up") => Some(true),
        Some("down") => Some(false),
        Some(_) => return Err(ApiError::bad_request("invalid status: up or down")),
    };
    let version = match q.version {
        Some(v) if v.len() > MAX_PARAM_BYTES => {
            return Err(ApiError::bad_request(format!(
                "invalid version: longer than {MAX_PARAM_BYTES} bytes"
            )));
        }
        Some(v) if v.is_empty() => None,
        v => v,
    };
    let fleet: Arc<Fleet> = state
        .fleet
        .clone()
        .ok_or_else(|| ApiError::unavailable("the fleet view is not enabled on this collector"))?;
    let window = fleet.window().as_secs();
    let filter = FleetFilter { up, version };
    let view = match tokio::task::spawn_blocking(move || fleet.view(&filter)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(ApiError::store("fleet", &e)),
        Err(e) => {
            tracing::error!(error = %e, "A fleet task failed.");
            return Err(ApiError::internal());
        }
    };
    Ok(Json(FleetBody {
        view,
        up_window_seconds: window,
    }))
}
