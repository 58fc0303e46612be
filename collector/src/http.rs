//! The collector's HTTP API (axum): `/healthz`, `/metrics` and the read-only JSON API under
//! `/api/v1`. docs/API.md is the user-facing reference; [`json`] holds the bodies.
//!
//! Promises:
//! - Everything under `/api/v1` needs `Authorization: Bearer <token>`, checked by the
//!   [`Authenticator`] before any handler runs; `/healthz` and `/metrics` are open (they
//!   reveal no CMDB content) so load balancers and Prometheus need no token.
//! - Every error is JSON `{"error": {"code", "message"}}` with a fitting status, including
//!   unknown routes, bad query strings and timeouts. Store failures are logged with their
//!   cause and answered with a generic message: internals never leak to clients.
//! - Store calls are blocking and run on tokio's blocking pool, never on the async workers.
//! - Bounded: request bodies ([`MAX_BODY_BYTES`]), requests in flight
//!   ([`MAX_CONCURRENT_REQUESTS`], others wait), time per request ([`REQUEST_TIMEOUT`],
//!   waiting included), page sizes (`limit` ≤ 1000), metric ranges (≤ 24 h), token and id
//!   lengths.
//!
//! The web console ([`crate::console`]) is served at `/` and `/console/…` without a token:
//! its assets hold no CMDB data, and the page calls this API with the token it is given.
//!
//! Writes go through the judgment engine ([`judgment`] routes), role-checked; the CI data
//! itself is written only by ingest.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;

use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

pub mod capacity;
pub mod impact;

pub mod config_audit;

pub mod cmdb_health;
pub mod fleet;
pub mod json;
pub mod judgment;
pub mod licenses;
#[cfg(test)]
pub(crate) mod openapi_schema;
#[cfg(test)]
mod openapi_tests;
pub mod query;
#[cfg(test)]
mod tests;

use json::{CiDetail, CiRef, Direction, ErrorBody, ErrorDetail, Health, HostMetrics, List, Page};
use query::{CisParams, MetricsParams};

/// Largest request body accepted (change imports have their own, larger bound).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests handled at once; further ones wait (and count against their timeout).
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// Longest a request may take, waiting for a slot included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `/healthz` (and the store size read of `/metrics`) waits this long for the store, once
/// the request has its slot.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest bearer token looked at; longer ones are refused unseen.
pub const MAX_TOKEN_BYTES: usize = 512;
/// Longest id accepted in a path.
pub const MAX_ID_BYTES: usize = 256;

/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text, served when the scraper asks for it.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Checks API bearer tokens.
///
/// Called on the async runtime for every `/api/v1` request: it must be fast and must not
/// block (an in-memory lookup of a token digest, say).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal the token belongs to, or `None` for an unknown, expired or revoked one.
    fn authenticate(&self, bearer: &str) -> Option<Principal>;
}

/// Who made a request. Handlers find it in the request extensions.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    /// viewer, operator, change-manager, auditor or admin; every role may read.
    pub role: String,
}

/// The actor of a write, or 403 naming the roles that may do `what`.
pub(crate) fn actor(
    p: &Principal,
    allowed: &[&str],
    what: &str,
) -> Result<crate::judgment::Actor, ApiError> {
    if !allowed.contains(&p.role.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "role {} may not {what} (allowed: {})",
                p.role,
                allowed.join(", ")
            ),
        ));
    }
    Ok(crate::judgment::Actor {
        name: p.name.clone(),
        role: p.role.clone(),
    })
}

/// Reads the audit log for the API (implemented by the hash-chained log).
pub trait AuditReader: Send + Sync + 'static {
    /// `{"items": [entries after `after`, at most `limit`]}`. Blocking.
    fn entries_json(&self, after: Option<u64>, limit: usize) -> Result<serde_json::Value, String>;
    /// The verification report. Blocking.
    fn verify_json(&self) -> Result<serde_json::Value, String>;
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<dyn Authenticator>,
    pub telemetry: Arc<Telemetry>,
    /// The judgment engine (baselines, changes, drift, incidents, availability); `None`
    /// answers its routes with 503.
    pub judgment: Option<Arc<crate::judgment::Judgment>>,
    pub audit: Option<Arc<dyn AuditReader>>,
    /// The licence service; `None` answers its routes with 503.
    pub licenses: Option<Arc<crate::licenses::Licenses>>,
    /// The configuration audit service; `None` answers its routes with 503.
    pub config_audit: Option<Arc<crate::config_audit::ConfigAudit>>,

    /// The CMDB health KPIs; `None` answers their routes with 503.
    pub cmdb_health: Option<Arc<crate::cmdb_health::CmdbHealth>>,
    /// The fleet view; `None` answers its route with 503.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// The bounds of the HTTP surface; [`Limits::default`] is what [`router`] uses.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Requests handled at once; further ones wait (and count against their timeout).
    pub max_concurrent_requests: usize,
    /// Longest a request may take, waiting for a slot included.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: MAX_BODY_BYTES,
            max_concurrent_requests: MAX_CONCURRENT_REQUESTS,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// The whole HTTP surface, ready for `axum::serve`, with the default [`Limits`].
pub fn router(state: ApiState) -> Router {
    router_with_limits(state, Limits::default())
}

/// [`router`] with other bounds.
pub fn router_with_limits(state: ApiState, limits: Limits) -> Router {
    let api = Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{id}", get(get_agent))
        .route("/api/v1/cis", get(list_cis))
        .route("/api/v1/cis/{id}", get(get_ci))
        .route("/api/v1/cis/{id}/relations", get(ci_relations))
        .route("/api/v1/clones", get(list_clones))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/hosts/{id}/metrics", get(host_metrics))
        .merge(judgment::routes())
        .merge(capacity::routes())
        .merge(licenses::routes())
        .merge(impact::routes())
        .merge(config_audit::routes())
        .merge(cmdb_health::routes())
        .merge(fleet::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(crate::console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The slot is taken inside the timed future, so waiting for it counts against the
        // timeout (tower's ConcurrencyLimit waits in poll_ready, which Timeout does not time).
        // One semaphore serves every route: Router::layer wraps each route separately.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .layer(TimeoutLayer::new(limits.request_timeout))
                .layer(middleware::from_fn_with_state(
                    Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
                    in_flight_slot,
                )),
        )
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

// === errors ===

/// An API error: its status and the JSON body that goes with it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the collector log has the details",
        )
    }

    fn unavailable(message: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A store failure, after logging it: the client learns only that the store failed.
    /// The audit log refused the entry of a mutation of `what`, so it was not made.
    fn audit_refused(what: &'static str, e: &str) -> Self {
        tracing::error!(error = %e, what, "The audit log refused an entry; the change was not made.");
        Self::unavailable("the audit log is unavailable; nothing was changed")
    }

    /// A record of `what` does not decode: logged, and a bare 500 to the caller.
    fn corrupt(what: &'static str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, what, "A stored record is corrupt.");
        Self::internal()
    }

    fn store(what: &'static str, e: &StoreError) -> Self {
        tracing::error!(error = %e, what, "Store read for the API failed.");
        match e {
            StoreError::Corrupt { .. } | StoreError::Unidentified { .. } => Self::internal(),
            StoreError::Backend(_) | StoreError::Open { .. } => {
                Self::unavailable("the store is unavailable; the collector log has the details")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cmdb\""),
            );
        }
        resp
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<query::InvalidParam> for ApiError {
    fn from(e: query::InvalidParam) -> Self {
        Self::bad_request(e.to_string())
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The JSON 404 of an unknown route, for routers outside the API (the console's assets).
pub(crate) fn not_found_response() -> Response {
    ApiError::not_found("no such route").into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route (docs/API.md lists each route's methods)",
    )
}

/// Turns a timeout (or any other middleware failure) into a JSON 503.
async fn overloaded(err: tower::BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!("An API request timed out.");
        ApiError::unavailable("request timed out; the collector is busy")
    } else {
        tracing::error!(error = %err, "An API request failed in middleware.");
        ApiError::internal()
    }
}

/// Holds one of the in-flight slots while the request runs.
async fn in_flight_slot(State(slots): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    match slots.acquire().await {
        Ok(_slot) => next.run(req).await,
        // Only a closed semaphore fails, and nothing closes it.
        Err(_) => ApiError::internal().into_response(),
    }
}

// === auth ===

async fn require_bearer(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let token = match bearer_token(req.headers()) {
        Ok(t) => t,
        Err(why) => return ApiError::unauthorized(why).into_response(),
    };
    match state.auth.authenticate(token) {
        Some(principal) => {
            tracing::debug!(principal = %principal.name, role = %principal.role, path = %req.uri().path(), "API request.");
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        None => ApiError::unauthorized("invalid bearer token").into_response(),
    }
}

/// The token of the single `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("missing bearer token (Authorization: Bearer <token>)");
    };
    let value = value
        .to_str()
        .map_err(|_| "malformed Authorization header")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("malformed Authorization header")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("missing bearer token (Authorization: Bearer <token>)");
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err("invalid bearer token");
    }
    Ok(token)
}

// === store access ===

/// Runs a blocking store read on the blocking pool.
async fn read<T, F>(state: &ApiState, what: &'static str, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::store(what, &e)),
        Err(e) => {
            tracing::error!(error = %e, what, "A store read task failed.");
            Err(ApiError::internal())
        }
    }
}

/// Runs blocking work of a service `svc` on the blocking pool; its errors become the API's
/// (each service maps its own), a panicked task a logged 500.
pub(crate) async fn on_blocking_pool<S, T, E, F>(
    svc: S,
    what: &'static str,
    f: F,
) -> Result<T, ApiError>
where
    S: Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
    F: FnOnce(&S) -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&svc)).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => {
            tracing::error!(error = %e, what, "A blocking API task failed.");
            Err(ApiError::internal())
        }
    }
}

/// A path id, bounded.
fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = p?;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::bad_request(format!(
            "id must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(id)
}

// === open routes ===

async fn healthz(State(state): State<ApiState>) -> Response {
    // A point read of an id that cannot exist: touches the store, costs nothing.
    let probe = read(&state, "health probe", |s| s.ci("ci-healthz").map(|_| ()));
    match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
        Ok(Ok(())) => axum::Json(Health {
            status: "ok".to_owned(),
        })
        .into_response(),
        Ok(Err(_)) | Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "unavailable".to_owned(),
            }),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let size = read(&state, "store size", |s| s.size_on_disk());
    // A failing or slow store must not take the collector's own metrics down with it:
    // report the last known size.
    let size = match tokio::time::timeout(HEALTH_TIMEOUT, size).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) | Err(_) => state.telemetry.store_size_bytes(),
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (OPENMETRICS_TEXT, state.telemetry.encode_openmetrics(size))
    } else {
        (PROMETHEUS_TEXT, state.telemetry.encode(size))
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

// === /api/v1 ===

async fn list_agents(State(state): State<ApiState>) -> ApiResult<List<crate::store::AgentRecord>> {
    let mut items = read(&state, "agents", |s| s.agents()).await?;
    items.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Ok(axum::Json(List { items }))
}

async fn get_agent(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<crate::store::AgentRecord> {
    let id = path_id(id)?;
    let lookup = id.clone();
    match read(&state, "agent", move |s| s.agent(&lookup)).await? {
        Some(agent) => Ok(axum::Json(agent)),
        None => Err(ApiError::not_found(format!("no agent {id}"))),
    }
}

async fn list_cis(
    State(state): State<ApiState>,
    params: Result<Query<CisParams>, QueryRejection>,
) -> ApiResult<Page<crate::store::CiRecord>> {
    let Query(params) = params?;
    let (filter, page) = params.into_filter()?;
    let mut items = read(&state, "cis", move |s| s.cis(&filter)).await?;
    // The filter asked for one more than a page: its presence says another page follows.
    // Sorting guards against a backend that breaks the id order it promises.
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let next_after = if items.len() > page {
        items.truncate(page);
        items.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok(axum::Json(Page { items, next_after }))
}

async fn get_ci(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<CiDetail> {
    let id = path_id(id)?;
    let lookup = id.clone();
    let found = read(&state, "ci", move |s| {
        let Some(ci) = s.ci(&lookup)? else {
            return Ok(None);
        };
        let versions = s.ci_versions(&lookup)?;
        Ok(Some(CiDetail { ci, versions }))
    })
    .await?;
    found
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no CI {id}")))
}

async fn ci_relations(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<List<json::RelationView>> {
    let id = path_id(id)?;
    let lookup = id.clone();
    let found = read(&state, "relations", move |s| {
        if s.ci(&lookup)?.is_none() {
            return Ok(None);
        }
        // The agents' relations, then the derived host links (crate::host_links).
        let reported = s.relations_of(&lookup)?;
        let first_derived = reported.len();
        let mut relations = reported;
        relations.extend(crate::host_links::derived_relations_of(s, &lookup)?);
        // Resolve each other end once, however many relations point at it.
        let mut resolved = std::collections::HashMap::<String, Option<CiRef>>::new();
        let mut items = Vec::with_capacity(relations.len());
        for (i, relation) in relations.into_iter().enumerate() {
            let (direction, other_id) = if relation.from == lookup {
                (Direction::Outgoing, relation.to.clone())
            } else {
                (Direction::Incoming, relation.from.clone())
            };
            let other = match resolved.get(&other_id) {
                Some(known) => known.clone(),
                None => {
                    let other = s.ci(&other_id)?.map(|c| CiRef {
                        id: c.id,
                        class: c.class,
                        key: c.key,
                        state: c.state,
                    });
                    resolved.insert(other_id, other.clone());
                    other
                }
            };
            items.push(json::RelationView {
                relation,
                direction,
                other,
                derived: i >= first_derived,
            });
        }
        Ok(Some(items))
    })
    .await?;
    match found {
        Some(items) => Ok(axum::Json(List { items })),
        None => Err(ApiError::not_found(format!("no CI {id}"))),
    }
}

/// Who the token belongs to: the console shows the name and offers only what the role may do.
async fn whoami(axum::Extension(p): axum::Extension<Principal>) -> axum::Json<json::WhoAmI> {
    axum::Json(json::WhoAmI {
        name: p.name,
        role: p.role,
    })
}

async fn list_clones(State(state): State<ApiState>) -> ApiResult<List<crate::store::CloneRecord>> {
    let items = read(&state, "clones", |s| s.clones()).await?;
    Ok(axum::Json(List { items }))
}

async fn host_metrics(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<MetricsParams>, QueryRejection>,
) -> ApiResult<HostMetrics> {
    let host_id = path_id(id)?;
    let Query(params) = params?;
    let (from, to) = params.range(SystemTime::now())?;
    let lookup = host_id.clone();
    let items = read(&state, "metrics", move |s| s.metrics(&lookup, from, to)).await?;
    Ok(axum::Json(HostMetrics {
        host_id,
        from,
        to,
        items,
    }))
}
