//! Capacity management: roll-ups of the agents' 1-minute metric summaries into 1-hour and
//! 1-day tiers ([`rollup`]), per host and resource series for the API, a time-to-threshold
//! forecast per (host, resource) from a robust trend fit ([`forecast`]), and a capacity
//! incident (through [`Judgment::raise_alerts`]) when a resource is forecast to cross its
//! threshold within the horizon.
//!
//! Promises:
//! - Tiers and retention: minute = the store's metric windows (`store.metrics_retention`,
//!   default 7 d), hour (default 90 d), day (default 2 y), all configurable (`[capacity]`).
//! - A pass ([`Capacity::pass`]) rolls up the hours completed since the durable watermark
//!   (record `capacity_state/rollup`), re-rolling the last `rollup_lateness` (default 3 h)
//!   for windows that arrived late; windows older than that when they arrive are kept in
//!   the minute tier but not rolled up. The watermark advances only after every host is
//!   rolled up (their blocks written in flushed batches of 64 hosts), and re-rolling is
//!   idempotent, so a restart neither loses nor double-counts.
//! - Forecasts use the hour tier over `forecast_window` (default 30 d): the hourly average
//!   for memory, swap, filesystems and processes, the hourly p95 for cpu, load and
//!   interfaces. Fewer than `min_points` hourly points (default 24) or a span shorter than
//!   `min_span` (default 24 h) is `not_enough_data`. A resource with a known capacity
//!   (cpu: 100 %; memory/swap: the `memory` CI's total_bytes/swap_total_bytes; a filesystem:
//!   its CI's size_bytes; an interface: its CI's speed_mbps) has a threshold (a percentage
//!   per kind, `[capacity.thresholds]`); one without (load, processes, interfaces of unknown
//!   speed) gets a trend only (`threshold` null, status `ok` or `not_enough_data`).
//! - `at_risk`: the current value is at or over the threshold, or the fitted line reaches
//!   it within `horizon` (default 14 d). An at-risk forecast whose confidence is at least
//!   `incident_min_confidence` raises a capacity alert (dedup key: host, class `capacity`,
//!   key = resource id); it is cleared once the resource is no longer at risk (or its
//!   confidence falls below the bar, or it disappears). The alert is raised once, on the
//!   transition; the incident number is kept with the forecast.
//! - Forecasts are stored per host (collection `capacity_forecast`) for the API; they are
//!   recomputed after every roll-up (at least hourly, `recompute_interval`).
//!
//! Never touches the CIs or the metric windows themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize};

use crate::incidents::AlertKind;
use crate::judgment::{ExternalAlert, Judgment};
use crate::store::{CiFilter, RecordOp, Store, StoreError, ci_id, host_ci_id};

pub mod forecast;
pub mod rollup;
pub mod series;

#[cfg(test)]
pub(crate) mod fake_store;

use forecast::{FitLimits, Scratch};
use rollup::{DAY, HOUR, Tier, floor, secs, time};
use series::{Kind, Point};

/// Forecasts, one record per host.
pub const C_FORECAST: &str = "capacity_forecast";
/// The roll-up watermark.
pub const C_STATE: &str = "capacity_state";
const STATE_ID: &str = "rollup";
/// A minute window is rolled up once this long after its hour ended (agents send each
/// window shortly after it closes).
pub const SETTLE: Duration = Duration::from_secs(120);
/// Most forecast rows one API answer carries.
pub const MAX_FORECAST_ITEMS: usize = 10_000;
/// Hosts whose roll-up blocks share one (flushed) store write.
const ROLLUP_BATCH_HOSTS: usize = 64;
/// Host forecast records written per store call.
const WRITE_BATCH: usize = 256;
/// Most CIs of one class read for one host's capacities.
const MAX_CIS: usize = 1024;

/// A capacity failure.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// The store failed.
    #[error("capacity store: {0}")]
    Store(#[from] StoreError),
    /// A request that cannot be answered as asked.
    #[error("{0}")]
    Invalid(String),
    /// No such host.
    #[error("no host {0:?}")]
    UnknownHost(String),
}

// === settings ===

/// `[capacity]` in the collector configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySettings {
    /// Run the roll-up/forecast loop. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often the loop wakes to see whether an hour completed. Default "5m".
    #[serde(default = "d_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Roll up and forecast at least this often even when no hour completed. Default "1h".
    #[serde(default = "d_hour", deserialize_with = "duration")]
    pub recompute_interval: Duration,
    /// How far back each roll-up re-reads minute windows, for windows that arrive late.
    /// Default "3h".
    #[serde(default = "d_lateness", deserialize_with = "duration")]
    pub rollup_lateness: Duration,
    /// Hour-tier retention. Default "90d".
    #[serde(default = "d_hour_retention", deserialize_with = "duration")]
    pub hour_retention: Duration,
    /// Day-tier retention. Default "730d" (2 years).
    #[serde(default = "d_day_retention", deserialize_with = "duration")]
    pub day_retention: Duration,
    /// The hour-tier history a forecast fits. Default "30d".
    #[serde(default = "d_window", deserialize_with = "duration")]
    pub forecast_window: Duration,
    /// A crossing forecast within this is at risk. Default "14d".
    #[serde(default = "d_horizon", deserialize_with = "duration")]
    pub horizon: Duration,
    /// Fewest hourly points for a forecast. Default 24.
    #[serde(default = "d_min_points")]
    pub min_points: usize,
    /// Shortest span of those points. Default "24h".
    #[serde(default = "d_min_span", deserialize_with = "duration")]
    pub min_span: Duration,
    /// At-risk forecasts below this confidence raise no incident. Default 0.2.
    #[serde(default = "d_min_confidence")]
    pub incident_min_confidence: f64,
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// Thresholds in percent of the capacity, per resource kind (`[capacity.thresholds]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Default 90.
    #[serde(default = "p90")]
    pub cpu: f64,
    /// Default 95.
    #[serde(default = "p95")]
    pub memory: f64,
    /// Default 80.
    #[serde(default = "p80")]
    pub swap: f64,
    /// Default 90.
    #[serde(default = "p90")]
    pub filesystem: f64,
    /// Of the link speed. Default 90.
    #[serde(default = "p90")]
    pub interface: f64,
}

fn yes() -> bool {
    true
}
fn d_interval() -> Duration {
    Duration::from_secs(300)
}
fn d_hour() -> Duration {
    Duration::from_secs(3600)
}
fn d_lateness() -> Duration {
    Duration::from_secs(3 * 3600)
}
fn d_hour_retention() -> Duration {
    Duration::from_secs(90 * DAY)
}
fn d_day_retention() -> Duration {
    Duration::from_secs(730 * DAY)
}
fn d_window() -> Duration {
    Duration::from_secs(30 * DAY)
}
fn d_horizon() -> Duration {
    Duration::from_secs(14 * DAY)
}
fn d_min_points() -> usize {
    forecast::MIN_POINTS
}
fn d_min_span() -> Duration {
    Duration::from_secs(DAY)
}
fn d_min_confidence() -> f64 {
    0.2
}
fn p80() -> f64 {
    80.0
}
fn p90() -> f64 {
    90.0
}
fn p95() -> f64 {
    95.0
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu: p90(),
            memory: p95(),
            swap: p80(),
            filesystem: p90(),
            interface: p90(),
        }
    }
}

impl Default for CapacitySettings {
    fn default() -> Self {
        CapacitySettings {
            enabled: true,
            interval: d_interval(),
            recompute_interval: d_hour(),
            rollup_lateness: d_lateness(),
            hour_retention: d_hour_retention(),
            day_retention: d_day_retention(),
            forecast_window: d_window(),
            horizon: d_horizon(),
            min_points: d_min_points(),
            min_span: d_min_span(),
            incident_min_confidence: d_min_confidence(),
            thresholds: Thresholds::default(),
        }
    }
}

impl CapacitySettings {
    /// Checks values that parse but cannot work; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let t = &self.thresholds;
        for (f, v) in [
            ("capacity.thresholds.cpu", t.cpu),
            ("capacity.thresholds.memory", t.memory),
            ("capacity.thresholds.swap", t.swap),
            ("capacity.thresholds.filesystem", t.filesystem),
            ("capacity.thresholds.interface", t.interface),
        ] {
            if !(v > 0.0 && v <= 100.0) {
                return Err((f, "must be a percentage above 0 and at most 100".into()));
            }
        }
        if !(0.0..=1.0).contains(&self.incident_min_confidence) {
            return Err((
                "capacity.incident_min_confidence",
                "must be from 0 to 1".into(),
            ));
        }
        if self.interval.is_zero() || self.recompute_interval.is_zero() {
            return Err((
                "capacity.interval",
                "interval and recompute_interval must be positive".into(),
            ));
        }
        if self.forecast_window < Duration::from_secs(HOUR) || self.min_points < 2 {
            return Err((
                "capacity.forecast_window",
                "the window must be at least 1h and min_points at least 2".into(),
            ));
        }
        if self.hour_retention < self.forecast_window {
            return Err((
                "capacity.hour_retention",
                "must be at least forecast_window (forecasts read the hour tier)".into(),
            ));
        }
        Ok(())
    }

    /// The threshold percentage of a resource kind (None: no capacity, trend only).
    fn percent(&self, kind: Kind) -> Option<f64> {
        let t = &self.thresholds;
        match kind {
            Kind::Cpu => Some(t.cpu),
            Kind::Memory => Some(t.memory),
            Kind::Swap => Some(t.swap),
            Kind::Filesystem => Some(t.filesystem),
            Kind::Interface => Some(t.interface),
            Kind::Load | Kind::Processes => None,
        }
    }
}

// === forecasts ===

/// A forecast's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    AtRisk,
    Ok,
    NotEnoughData,
}

/// The forecast of one (host, resource), as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub host_id: String,
    pub hostname: Option<String>,
    pub resource: String,
    pub unit: String,
    pub status: Status,
    /// The last hourly value fitted (see the module doc), if any.
    pub current: Option<f64>,
    /// Total capacity in `unit`, when known.
    pub capacity: Option<f64>,
    /// The threshold in `unit` (capacity × threshold_percent / 100), when a capacity is known.
    pub threshold: Option<f64>,
    pub threshold_percent: Option<f64>,
    /// Trend, `unit` per day.
    pub slope_per_day: Option<f64>,
    /// When the fitted line reaches the threshold (now if already over it), if it does.
    #[serde(with = "crate::store::opt_time")]
    pub exhaustion_at: Option<SystemTime>,
    pub days_to_threshold: Option<f64>,
    /// 0..1 (see [`forecast`]).
    pub confidence: f64,
    /// Hourly points fitted.
    pub points: usize,
    /// The capacity incident raised for it, while at risk.
    pub incident: Option<String>,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub computed_at: SystemTime,
}

/// The forecast of one series of hourly points (time-ordered).
pub fn forecast_series(
    settings: &CapacitySettings,
    kind: Kind,
    points: &[Point],
    capacity: Option<f64>,
    now: u64,
    scratch: &mut Scratch,
    xy: &mut Vec<(f64, f64)>,
) -> (Status, Option<f64>, Option<forecast::Fit>, Option<f64>) {
    xy.clear();
    xy.extend(
        points
            .iter()
            .map(|p| (p.t as f64, kind.fitted(p)))
            .filter(|(_, v)| v.is_finite()),
    );
    let current = xy.last().map(|p| p.1);
    let limits = FitLimits {
        min_points: settings.min_points,
        min_span_secs: settings.min_span.as_secs_f64(),
        window_secs: settings.forecast_window.as_secs_f64(),
    };
    let Some(fit) = forecast::fit(xy, &limits, scratch) else {
        return (Status::NotEnoughData, current, None, None);
    };
    let level = match (capacity, settings.percent(kind)) {
        (Some(c), Some(pct)) if c > 0.0 => c * pct / 100.0,
        _ => return (Status::Ok, current, Some(fit), None),
    };
    let now_f = now as f64;
    let crossing = if current.is_some_and(|c| c >= level) || fit.at(now_f) >= level {
        Some(now_f)
    } else {
        fit.reaches(level).filter(|t| t.is_finite())
    };
    let at_risk = crossing.is_some_and(|t| t - now_f <= settings.horizon.as_secs_f64());
    let status = if at_risk { Status::AtRisk } else { Status::Ok };
    (status, current, Some(fit), crossing)
}

/// A host as the capacity pass sees it.
#[derive(Clone, Debug)]
pub struct HostRef {
    pub host_id: String,
    pub hostname: Option<String>,
}

/// Every identified host, once, with its hostname.
pub fn hosts(store: &dyn Store) -> Result<Vec<HostRef>, StoreError> {
    let mut by_id: BTreeMap<String, Option<String>> = BTreeMap::new();
    for a in store.agents()? {
        if let Some(h) = a.host_id {
            let e = by_id.entry(h).or_default();
            if e.is_none() {
                *e = a.hostname.clone();
            }
        }
    }
    Ok(by_id
        .into_iter()
        .map(|(host_id, hostname)| HostRef { host_id, hostname })
        .collect())
}

/// Resolves a host id or hostname.
pub fn resolve_host(store: &dyn Store, host: &str) -> Result<HostRef, CapacityError> {
    let all = hosts(store)?;
    all.iter()
        .find(|h| h.host_id == host)
        .or_else(|| all.iter().find(|h| h.hostname.as_deref() == Some(host)))
        .cloned()
        .ok_or_else(|| CapacityError::UnknownHost(host.to_owned()))
}

fn attr_f64(attrs: &cmdb_proto::model::Attrs, name: &str) -> Option<f64> {
    match attrs.get(name)? {
        cmdb_proto::model::AttrValue::Int(i) => Some(*i as f64),
        cmdb_proto::model::AttrValue::Float(f) => Some(*f),
        cmdb_proto::model::AttrValue::Str(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite() && *v > 0.0)
}

/// Known capacities of a host's resources, from its CIs (see the module doc).
pub fn capacities(store: &dyn Store, host: &str) -> Result<HashMap<String, f64>, StoreError> {
    let mut out = HashMap::new();
    out.insert("cpu".to_owned(), 100.0);
    let of = |class: &str| {
        store.cis(&CiFilter {
            class: Some(class.to_owned()),
            host: Some(host.to_owned()),
            limit: MAX_CIS,
            ..CiFilter::default()
        })
    };
    for ci in of("memory")? {
        if let Some(v) = attr_f64(&ci.attrs, "total_bytes") {
            out.insert("memory".to_owned(), v);
        }
        if let Some(v) = attr_f64(&ci.attrs, "swap_total_bytes") {
            out.insert("swap".to_owned(), v);
        }
    }
    for ci in of("filesystem")? {
        if let Some(v) = attr_f64(&ci.attrs, "size_bytes") {
            out.insert(format!("filesystem:{}", ci.key), v);
        }
    }
    for ci in of("network_interface")? {
        if let Some(mbps) = attr_f64(&ci.attrs, "speed_mbps") {
            // Mbit/s → bytes/s.
            out.insert(format!("interface:{}:rx", ci.key), mbps * 125_000.0);
            out.insert(format!("interface:{}:tx", ci.key), mbps * 125_000.0);
        }
    }
    Ok(out)
}

/// The CI a resource's incident is about.
fn resource_ci(host: &str, resource: &str) -> String {
    match Kind::of(resource) {
        Some(Kind::Cpu) => ci_id(host, "cpu", "cpu"),
        Some(Kind::Memory | Kind::Swap) => ci_id(host, "memory", "memory"),
        Some(Kind::Filesystem) => ci_id(
            host,
            "filesystem",
            resource.strip_prefix("filesystem:").unwrap_or(resource),
        ),
        Some(Kind::Interface) => {
            let name = resource
                .strip_prefix("interface:")
                .and_then(|r| r.rsplit_once(':'))
                .map(|(n, _)| n)
                .unwrap_or(resource);
            ci_id(host, "network_interface", name)
        }
        _ => host_ci_id(host),
    }
}

/// The forecasts of one host.
pub fn forecast_host(
    store: &dyn Store,
    settings: &CapacitySettings,
    host: &HostRef,
    now: u64,
) -> Result<Vec<Forecast>, StoreError> {
    let from = now.saturating_sub(settings.forecast_window.as_secs());
    let series = rollup::read(store, &host.host_id, Tier::Hour, from, now + 1)?;
    let caps = capacities(store, &host.host_id)?;
    let mut scratch = Scratch::default();
    let mut xy = Vec::new();
    let mut out = Vec::with_capacity(series.len());
    for (resource, points) in &series {
        let Some(kind) = Kind::of(resource) else {
            continue;
        };
        let capacity = caps.get(resource).copied();
        let (status, current, fit, crossing) =
            forecast_series(settings, kind, points, capacity, now, &mut scratch, &mut xy);
        let pct = capacity.and(settings.percent(kind));
        out.push(Forecast {
            host_id: host.host_id.clone(),
            hostname: host.hostname.clone(),
            resource: resource.clone(),
            unit: kind.unit().to_owned(),
            status,
            current,
            capacity,
            threshold: capacity.zip(pct).map(|(c, p)| c * p / 100.0),
            threshold_percent: pct,
            slope_per_day: fit.map(|f| f.slope * DAY as f64),
            exhaustion_at: crossing
                .filter(|t| *t < 1e12)
                .map(|t| time(t.max(0.0) as u64)),
            days_to_threshold: crossing.map(|t| ((t - now as f64) / DAY as f64).max(0.0)),
            confidence: fit.map(|f| f.confidence).unwrap_or(0.0),
            points: fit.map(|f| f.points).unwrap_or(points.len()),
            incident: None,
            computed_at: time(now),
        });
    }
    Ok(out)
}

/// The stored forecasts of one host.
pub fn stored_forecasts(store: &dyn Store, host: &str) -> Result<Vec<Forecast>, StoreError> {
    match store.record(C_FORECAST, host)? {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: format!("{C_FORECAST}/{host}"),
            reason: e.to_string(),
        }),
    }
}

/// Stored forecasts for the API: one host's (by id or hostname) or every host's; only the
/// at-risk ones unless `all`. At most [`MAX_FORECAST_ITEMS`]; the flag says whether more
/// were left out.
pub fn list_forecasts(
    store: &dyn Store,
    host: Option<&str>,
    all: bool,
) -> Result<(Vec<Forecast>, bool), CapacityError> {
    let keep = |f: &Forecast| all || f.status == Status::AtRisk;
    let mut out = Vec::new();
    if let Some(h) = host {
        let h = resolve_host(store, h)?;
        out.extend(
            stored_forecasts(store, &h.host_id)?
                .into_iter()
                .filter(|f| keep(f)),
        );
        return Ok((out, false));
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.records(C_FORECAST, after.as_deref(), 500)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, v) in &page {
            let fs: Vec<Forecast> = serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
                key: format!("{C_FORECAST}/{id}"),
                reason: e.to_string(),
            })?;
            for f in fs.into_iter().filter(|f| keep(f)) {
                if out.len() >= MAX_FORECAST_ITEMS {
                    return Ok((out, true));
                }
                out.push(f);
            }
        }
    }
    Ok((out, false))
}

// === series for the API ===

/// One point as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PointView {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub t: SystemTime,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub p95: f64,
    pub samples: u64,
}

/// One series of one host and tier.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesView {
    pub host_id: String,
    pub hostname: Option<String>,
    pub resource: String,
    pub unit: String,
    pub capacity: Option<f64>,
    pub tier: Tier,
    pub points: Vec<PointView>,
}

/// The series of one host (by id or hostname) in `[from, to)`, optionally one resource.
pub fn series(
    store: &dyn Store,
    host: &str,
    resource: Option<&str>,
    tier: Tier,
    from: SystemTime,
    to: SystemTime,
) -> Result<Vec<SeriesView>, CapacityError> {
    let h = resolve_host(store, host)?;
    let data = rollup::read(store, &h.host_id, tier, secs(from), secs(to))?;
    let caps = capacities(store, &h.host_id)?;
    Ok(data
        .into_iter()
        .filter(|(r, _)| resource.is_none_or(|want| want == r))
        .filter_map(|(r, pts)| {
            let kind = Kind::of(&r)?;
            Some(SeriesView {
                host_id: h.host_id.clone(),
                hostname: h.hostname.clone(),
                unit: kind.unit().to_owned(),
                capacity: caps.get(&r).copied(),
                tier,
                points: pts
                    .iter()
                    .map(|p| PointView {
                        t: time(p.t),
                        min: p.min,
                        avg: p.avg,
                        max: p.max,
                        p95: p.p95,
                        samples: p.n,
                    })
                    .collect(),
                resource: r,
            })
        })
        .collect())
}

// === the pass and the loop ===

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PassState {
    /// Every hour before this (seconds) is rolled up.
    hour_done: Option<u64>,
    last_pass: Option<u64>,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    pub hosts: usize,
    pub windows: usize,
    pub pruned: u64,
    pub forecasts: usize,
    pub at_risk: usize,
    pub raised: usize,
    pub cleared: usize,
}

/// The roll-up, retention and forecast engine.
pub struct Capacity {
    store: Arc<dyn Store>,
    settings: CapacitySettings,
    judgment: Option<Arc<Judgment>>,
    /// The minute tier's retention (`store.metrics_retention`): older windows are gone.
    minute_retention: Duration,
}

impl Capacity {
    pub fn new(
        store: Arc<dyn Store>,
        settings: CapacitySettings,
        judgment: Option<Arc<Judgment>>,
        minute_retention: Duration,
    ) -> Self {
        Capacity {
            store,
            settings,
            judgment,
            minute_retention,
        }
    }

    pub fn settings(&self) -> &CapacitySettings {
        &self.settings
    }

    fn state(&self) -> Result<PassState, StoreError> {
        match self.store.record(C_STATE, STATE_ID)? {
            None => Ok(PassState::default()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("{C_STATE}/{STATE_ID}"),
                reason: e.to_string(),
            }),
        }
    }

    /// One pass when due (an hour completed since the watermark, or `recompute_interval`
    /// elapsed since the last pass, or `force`): roll up, enforce retention, forecast,
    /// raise and clear capacity incidents. `None` when not due.
    pub fn pass(&self, now: SystemTime, force: bool) -> Result<Option<PassReport>, StoreError> {
        let store = self.store.as_ref();
        let now_s = secs(now);
        let mut state = self.state()?;
        let to = floor(now_s.saturating_sub(SETTLE.as_secs()), HOUR);
        let due = force
            || state.hour_done.is_none_or(|h| h < to)
            || state
                .last_pass
                .is_none_or(|l| now_s >= l + self.settings.recompute_interval.as_secs());
        if !due {
            return Ok(None);
        }
        let oldest = floor(
            to.saturating_sub(self.minute_retention.as_secs()) + HOUR - 1,
            HOUR,
        );
        let from = match state.hour_done {
            Some(h) => h
                .min(to)
                .saturating_sub(self.settings.rollup_lateness.as_secs())
                .max(oldest),
            None => oldest,
        };
        let from = floor(from, HOUR);
        let hosts = hosts(store)?;
        let mut report = PassReport {
            hosts: hosts.len(),
            ..PassReport::default()
        };
        let mut ops = Vec::new();
        let mut batched = 0;
        for h in &hosts {
            let (n, host_ops) = rollup::rollup_host_ops(store, &h.host_id, from, to)?;
            report.windows += n;
            if !host_ops.is_empty() {
                ops.extend(host_ops);
                batched += 1;
            }
            // Each write is flushed: batch hosts, but keep a batch's size bounded.
            if batched >= ROLLUP_BATCH_HOSTS {
                store.write_records(&ops)?;
                ops.clear();
                batched = 0;
            }
        }
        if !ops.is_empty() {
            store.write_records(&ops)?;
        }
        state.hour_done = Some(state.hour_done.map_or(to, |h| h.max(to)));
        report.pruned += rollup::prune(
            store,
            Tier::Hour,
            now_s.saturating_sub(self.settings.hour_retention.as_secs()),
        )?;
        report.pruned += rollup::prune(
            store,
            Tier::Day,
            now_s.saturating_sub(self.settings.day_retention.as_secs()),
        )?;
        self.forecast_all(&hosts, now_s, &mut report)?;
        state.last_pass = Some(now_s);
        let value = serde_json::to_vec(&state).map_err(|e| StoreError::Corrupt {
            key: format!("{C_STATE}/{STATE_ID}"),
            reason: e.to_string(),
        })?;
        store.write_records(&[RecordOp::Put {
            collection: C_STATE,
            id: STATE_ID.to_owned(),
            value,
        }])?;
        Ok(Some(report))
    }

    fn forecast_all(
        &self,
        hosts: &[HostRef],
        now: u64,
        report: &mut PassReport,
    ) -> Result<(), StoreError> {
        let store = self.store.as_ref();
        let mut ops = Vec::new();
        for h in hosts {
            let prev: HashMap<String, Option<String>> = stored_forecasts(store, &h.host_id)
                .unwrap_or_default()
                .into_iter()
                .map(|f| (f.resource, f.incident))
                .collect();
            let mut fs = forecast_host(store, &self.settings, h, now)?;
            let mut raise = Vec::new();
            let mut raise_idx = Vec::new();
            let mut clear = Vec::new();
            for (i, f) in fs.iter_mut().enumerate() {
                let risky = f.status == Status::AtRisk
                    && f.confidence >= self.settings.incident_min_confidence;
                if f.status == Status::AtRisk {
                    report.at_risk += 1;
                }
                let had = prev.get(&f.resource).cloned().flatten();
                match (risky, had) {
                    (true, Some(n)) => f.incident = Some(n),
                    (true, None) => {
                        raise.push(ExternalAlert {
                            kind: AlertKind::Capacity,
                            host_id: h.host_id.clone(),
                            ci_id: resource_ci(&h.host_id, &f.resource),
                            class: "capacity".into(),
                            key: f.resource.clone(),
                            summary: alert_summary(f),
                            at: time(now),
                        });
                        raise_idx.push(i);
                    }
                    (false, Some(_)) => clear.push(f.resource.clone()),
                    (false, None) => {}
                }
            }
            // Resources that vanished clear too.
            for (r, inc) in &prev {
                if inc.is_some() && !fs.iter().any(|f| &f.resource == r) {
                    clear.push(r.clone());
                }
            }
            if let Some(j) = &self.judgment {
                if !raise.is_empty() {
                    match j.raise_alerts(&raise) {
                        Ok(numbers) => {
                            report.raised += numbers.len();
                            for (i, n) in raise_idx.iter().zip(numbers) {
                                fs[*i].incident = Some(n);
                            }
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            host = %h.host_id,
                            "Capacity incidents could not be raised; the next pass retries."
                        ),
                    }
                }
                if !clear.is_empty() {
                    let keys: Vec<_> = clear
                        .iter()
                        .map(|r| {
                            (
                                h.host_id.clone(),
                                "capacity".to_owned(),
                                r.clone(),
                                AlertKind::Capacity,
                            )
                        })
                        .collect();
                    match j.clear_alerts(&keys, time(now), "capacity forecast no longer at risk") {
                        Ok(()) => report.cleared += keys.len(),
                        Err(e) => tracing::error!(
                            error = %e,
                            host = %h.host_id,
                            "Capacity incidents could not be cleared."
                        ),
                    }
                }
            }
            report.forecasts += fs.len();
            let value = serde_json::to_vec(&fs).map_err(|e| StoreError::Corrupt {
                key: format!("{C_FORECAST}/{}", h.host_id),
                reason: e.to_string(),
            })?;
            ops.push(if fs.is_empty() {
                RecordOp::Delete {
                    collection: C_FORECAST,
                    id: h.host_id.clone(),
                }
            } else {
                RecordOp::Put {
                    collection: C_FORECAST,
                    id: h.host_id.clone(),
                    value,
                }
            });
            if ops.len() >= WRITE_BATCH {
                store.write_records(&ops)?;
                ops.clear();
            }
        }
        if !ops.is_empty() {
            store.write_records(&ops)?;
        }
        Ok(())
    }
}

fn alert_summary(f: &Forecast) -> String {
    let days = f.days_to_threshold.unwrap_or(0.0);
    let pct = f.threshold_percent.unwrap_or(0.0);
    if days <= 0.0 {
        format!("{} at or over {pct:.0} % of capacity", f.resource)
    } else {
        format!(
            "{} forecast to reach {pct:.0} % of capacity in {days:.1} days",
            f.resource
        )
    }
}

/// The loop: wakes every `interval` and runs [`Capacity::pass`] when due. Runs until
/// aborted (the server aborts it at shutdown; a pass in flight completes its current
/// atomic write, and the watermark makes the next start redo the rest).
pub async fn run(cap: Arc<Capacity>) {
    let mut tick = tokio::time::interval(cap.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = Arc::clone(&cap);
        match tokio::task::spawn_blocking(move || c.pass(SystemTime::now(), false)).await {
            Ok(Ok(Some(r))) => tracing::info!(
                hosts = r.hosts,
                windows = r.windows,
                pruned = r.pruned,
                forecasts = r.forecasts,
                at_risk = r.at_risk,
                raised = r.raised,
                cleared = r.cleared,
                "Capacity pass done."
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Capacity pass failed."),
            Err(e) => tracing::error!(error = %e, "Capacity pass task failed."),
        }
    }
}

#[cfg(test)]
mod tests;
