//! The impact route: `GET /api/v1/cis/{id}/impact?depth=N` — what is affected if the CI
//! fails (downstream) and what it depends on (upstream), up to N hops (default
//! [`DEFAULT_DEPTH`], 1 to [`MAX_DEPTH`]). A read, open to every role. An unknown CI is a
//! 404, a bad depth a 400. See [`crate::impact`] for the walk and its direction rules.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;

use super::{ApiError, ApiResult, ApiState, path_id, read};
use crate::impact::{DEFAULT_DEPTH, Impact, MAX_DEPTH, MAX_NODES, StoreGraph, impact};

/// The routes, to be merged under the bearer-token layer.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/cis/{id}/impact", get(get_impact))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImpactParams {
    depth: Option<String>,
}

/// `depth`: absent or empty = the default; else an integer 1 to [`MAX_DEPTH`].
pub fn parse_depth(v: Option<&str>) -> Result<u32, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(DEFAULT_DEPTH),
        Some(s) => match s.parse::<u32>() {
            Ok(d) if (1..=MAX_DEPTH).contains(&d) => Ok(d),
            _ => Err(format!(
                "invalid depth: {:?} is not an integer from 1 to {MAX_DEPTH}",
                s.chars().take(32).collect::<String>()
            )),
        },
    }
}

async fn get_impact(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<ImpactParams>, QueryRejection>,
) -> ApiResult<Impact> {
    let id = path_id(id)?;
    let Query(params) = params?;
    let depth = parse_depth(params.depth.as_deref()).map_err(ApiError::bad_request)?;
    let lookup = id.clone();
    let found = read(&state, "impact", move |s| {
        impact(&StoreGraph::new(s), &lookup, depth, MAX_NODES)
    })
    .await?;
    found
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no CI {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_defaults_and_bounds() {
        assert_eq!(parse_depth(None), Ok(DEFAULT_DEPTH));
        assert_eq!(parse_depth(Some("")), Ok(DEFAULT_DEPTH));
        assert_eq!(parse_depth(Some("1")), Ok(1));
        assert_eq!(parse_depth(Some("6")), Ok(6));
        for bad in ["0", "7", "-1", "x", "3.5", "99999999999999999999"] {
            assert!(parse_depth(Some(bad)).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn depth_parser_never_panics(s in ".{0,40}") {
            if let Ok(d) = parse_depth(Some(&s)) {
                proptest::prop_assert!((1..=MAX_DEPTH).contains(&d));
            }
        }
    }
}
