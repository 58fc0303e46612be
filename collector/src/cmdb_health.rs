//! CMDB health KPIs: how complete, correct and compliant the CMDB is, per class, each a
//! KPI = healthy / total with the failing CIs listable.
//!
//! - **completeness**: a present CI is healthy when every required attribute of its class
//!   is present and non-empty (not null, not `""`, not `[]`). The required lists default to
//!   [`default_required`] (attributes the agent's collectors fill whenever their source is
//!   readable: a subset of DESIGN.md's table, leaving out what virtual machines and
//!   containers commonly lack, such as disk serials or SMBIOS serial numbers) and are
//!   replaced per class by `[cmdb_health.required]`.
//! - **correctness**: a present CI fails when it is *stale* (not observed within its class's
//!   effective duration), an *orphan* (its host CI does not exist or is retired) or, for
//!   host CIs, a *duplicate host* (another live host CI shares a strong identity key —
//!   product_uuid, serial_number or machine_id, normalised as identification does, placeholders
//!   ignored — or the same hostname; both count as failing). The codebase has no per-class
//!   retention notion beyond `store.absent_retention` (which is about absent CIs), so the
//!   effective durations are configured: host CIs default to 1 day, measured from the freshest
//!   of the host CI's `last_seen` and its agents' `last_seen` (heartbeats); every other class
//!   defaults to 2 days = 2 × the agent's full-snapshot interval (24 h), because an unchanged
//!   CI is confirmed (its `last_seen` refreshed) only by a full snapshot — deltas carry
//!   changes only. `[cmdb_health.stale_after]` overrides it per class.
//! - **compliance**: the latest finished audit run, read through
//!   [`crate::compliance::ComplianceSource`]; absent (and said so) when there is no source or
//!   no run yet.
//!
//! Totals count present CIs only (absent and retired ones are not part of the live CMDB).
//! The report walks the whole store, so it is cached for `cache_ttl` (default 60 s): a
//! request within that time of the last computation gets the same report (its
//! `generated_at` tells its age). Concurrent requests on a stale cache compute it once.
//! The failing CIs kept per (KPI, class) are bounded by [`MAX_FAILING_KEPT`]; the counts
//! are exact.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cmdb_proto::model::{AttrValue, Attrs};
use serde::{Deserialize, Serialize};

use crate::compliance::ComplianceSource;
use crate::store::{CiFilter, CiRecord, CiState, HOST_CLASS, Store, StoreError};

/// Failing CIs kept per (KPI, class); beyond it only the count grows.
pub const MAX_FAILING_KEPT: usize = 1000;
/// CIs read per store page while walking.
pub const PAGE: usize = 10_000;
/// Longest cache TTL accepted.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most classes in `[cmdb_health.required]` / `[cmdb_health.stale_after]`.
pub const MAX_CONFIG_CLASSES: usize = 1024;
/// Most required attributes per class.
pub const MAX_REQUIRED_ATTRS: usize = 64;

const DAY: Duration = Duration::from_secs(86_400);

/// The three KPIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kpi {
    Completeness,
    Correctness,
    Compliance,
}

impl Kpi {
    pub fn as_str(self) -> &'static str {
        match self {
            Kpi::Completeness => "completeness",
            Kpi::Correctness => "correctness",
            Kpi::Compliance => "compliance",
        }
    }

    /// Parses a KPI name.
    pub fn parse(s: &str) -> Option<Kpi> {
        match s {
            "completeness" => Some(Kpi::Completeness),
            "correctness" => Some(Kpi::Correctness),
            "compliance" => Some(Kpi::Compliance),
            _ => None,
        }
    }
}

/// `[cmdb_health]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Required attributes per class, replacing that class's built-in list
    /// ([`default_required`]); an empty list makes every CI of the class complete.
    #[serde(default)]
    pub required: BTreeMap<String, Vec<String>>,
    /// Effective duration of host CIs. Default "1d".
    #[serde(default = "default_host_stale", with = "dur")]
    pub host_stale_after: Duration,
    /// Effective duration of every other class. Default "2d" (2 × the agent's snapshot
    /// interval).
    #[serde(default = "default_stale", with = "dur")]
    pub default_stale_after: Duration,
    /// Per-class effective durations, e.g. `package = "3d"`.
    #[serde(default, with = "dur_map")]
    pub stale_after: BTreeMap<String, Duration>,
    /// How long a computed report is served before it is computed again. Default "60s".
    #[serde(default = "default_ttl", with = "dur")]
    pub cache_ttl: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            required: BTreeMap::new(),
            host_stale_after: default_host_stale(),
            default_stale_after: default_stale(),
            stale_after: BTreeMap::new(),
            cache_ttl: default_ttl(),
        }
    }
}

fn default_host_stale() -> Duration {
    DAY
}
fn default_stale() -> Duration {
    2 * DAY
}
fn default_ttl() -> Duration {
    Duration::from_secs(60)
}

impl HealthSettings {
    /// A field and why it cannot work.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.host_stale_after.is_zero() {
            return Err(("cmdb_health.host_stale_after", "must be positive".into()));
        }
        if self.default_stale_after.is_zero() {
            return Err(("cmdb_health.default_stale_after", "must be positive".into()));
        }
        if self.cache_ttl > MAX_CACHE_TTL {
            return Err(("cmdb_health.cache_ttl", "must be at most 1h".into()));
        }
        if self.required.len() > MAX_CONFIG_CLASSES {
            return Err((
                "cmdb_health.required",
                format!("at most {MAX_CONFIG_CLASSES} classes"),
            ));
        }
        for (class, attrs) in &self.required {
            if class.is_empty() || attrs.len() > MAX_REQUIRED_ATTRS {
                return Err((
                    "cmdb_health.required",
                    format!(
                        "class {class:?}: a non-empty class with at most {MAX_REQUIRED_ATTRS} attributes"
                    ),
                ));
            }
            if let Some(a) = attrs.iter().find(|a| a.is_empty() || a.len() > 256) {
                return Err((
                    "cmdb_health.required",
                    format!("class {class:?}: attribute name {a:?} must be 1 to 256 bytes"),
                ));
            }
        }
        if self.stale_after.len() > MAX_CONFIG_CLASSES {
            return Err((
                "cmdb_health.stale_after",
                format!("at most {MAX_CONFIG_CLASSES} classes"),
            ));
        }
        if let Some((class, _)) = self.stale_after.iter().find(|(_, d)| d.is_zero()) {
            return Err((
                "cmdb_health.stale_after",
                format!("class {class:?}: must be positive"),
            ));
        }
        Ok(())
    }

    /// The required attributes of `class`.
    pub fn required_of(&self, class: &str) -> Vec<String> {
        match self.required.get(class) {
            Some(list) => list.clone(),
            None => default_required(class)
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// The effective duration of `class`.
    pub fn stale_after_of(&self, class: &str) -> Duration {
        if let Some(d) = self.stale_after.get(class) {
            return *d;
        }
        if class == HOST_CLASS {
            self.host_stale_after
        } else {
            self.default_stale_after
        }
    }
}

/// The built-in required attributes of a class (none for a class not listed).
pub fn default_required(class: &str) -> &'static [&'static str] {
    match class {
        "host" => &["hostname", "machine_id"],
        "system" => &["vendor", "product", "virtualization"],
        "os" => &["name", "version", "kernel", "arch", "hostname"],
        "cpu" => &["model", "logical_cpus"],
        "memory" => &["total_bytes"],
        "memory_module" => &["size_bytes"],
        "disk" => &["size_bytes"],
        "filesystem" => &["device", "fstype", "size_bytes"],
        "network_interface" => &["mtu", "state"],
        "package" => &["manager", "name", "version"],
        "service" => &["manager", "load_state", "active_state", "sub_state"],
        "listening_port" => &["protocol", "address", "port"],
        "connection" => &["protocol", "remote_address", "remote_port"],
        "user" => &["uid", "home", "shell"],
        "group" => &["gid"],
        "kernel_module" => &["size"],
        "file" => &["size", "mode", "owner"],
        "process" => &["exe", "count"],
        _ => &[],
    }
}

/// One KPI figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KpiRow {
    pub kpi: Kpi,
    pub class: String,
    pub healthy: u64,
    pub total: u64,
    /// healthy / total (1 when total is 0).
    pub ratio: f64,
}

/// One failing CI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failing {
    /// The CI (none for a compliance item the audit found missing).
    pub ci_id: Option<String>,
    pub class: String,
    pub key: String,
    pub host_id: Option<String>,
    pub kpi: Kpi,
    pub reason: String,
}

/// The failing CIs of one (KPI, class): the exact count and at most [`MAX_FAILING_KEPT`].
#[derive(Clone, Debug, Default)]
pub struct FailBucket {
    pub count: u64,
    pub items: Vec<Failing>,
}

/// Where the compliance figures come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ComplianceStatus {
    /// Why there are none: "no audit has run", "no audit source", "the audit source failed…".
    None(String),
    /// The audit run they come from.
    Run {
        run_id: String,
        #[serde(with = "cmdb_proto::model::rfc3339")]
        finished_at: SystemTime,
    },
}

/// A computed health report.
#[derive(Clone, Debug)]
pub struct HealthReport {
    pub generated_at: SystemTime,
    /// Present CIs looked at.
    pub cis_scanned: u64,
    /// By KPI, then class.
    pub kpis: Vec<KpiRow>,
    pub compliance: ComplianceStatus,
    pub failing: BTreeMap<(Kpi, String), FailBucket>,
}

impl HealthReport {
    /// KPI rows, filtered.
    pub fn rows(&self, kpi: Option<Kpi>, class: Option<&str>) -> Vec<KpiRow> {
        self.kpis
            .iter()
            .filter(|r| kpi.is_none_or(|k| r.kpi == k) && class.is_none_or(|c| r.class == c))
            .cloned()
            .collect()
    }

    /// At most `limit` failing CIs (by KPI, class, then as found), with the exact number
    /// that match.
    pub fn failing(
        &self,
        kpi: Option<Kpi>,
        class: Option<&str>,
        limit: usize,
    ) -> (Vec<Failing>, u64) {
        let mut items = Vec::new();
        let mut total = 0u64;
        for ((k, c), bucket) in &self.failing {
            if kpi.is_some_and(|want| *k != want) || class.is_some_and(|want| c != want) {
                continue;
            }
            total += bucket.count;
            for f in &bucket.items {
                if items.len() >= limit {
                    break;
                }
                items.push(f.clone());
            }
        }
        (items, total)
    }
}

/// Whether an attribute value counts as present.
fn filled(v: Option<&AttrValue>) -> bool {
    match v {
        None | Some(AttrValue::Null) => false,
        Some(AttrValue::Str(s)) => !s.trim().is_empty(),
        Some(AttrValue::List(l)) => !l.is_empty(),
        Some(_) => true,
    }
}

fn attr_str<'a>(attrs: &'a Attrs, name: &str) -> Option<&'a str> {
    attrs.get(name).and_then(AttrValue::as_str)
}

/// A strong identity value normalised as identification does; `None` for placeholders.
fn strong_key(v: Option<&str>) -> Option<String> {
    let v = v?;
    if cmdb_proto::identity::is_placeholder(v) {
        return None;
    }
    Some(v.trim().to_lowercase())
}

/// Builds a report from CIs and agents fed in any order (hosts first is not needed).
pub struct ReportBuilder<'a> {
    settings: &'a HealthSettings,
    now: SystemTime,
    required: HashMap<String, Vec<String>>,
    /// host id → what the host checks need
    hosts: HashMap<String, HostInfo>,
    /// host id → freshest agent last_seen
    agent_seen: HashMap<String, SystemTime>,
    /// Non-host present CIs: (id, class, key, host, last_seen), judged at the end for
    /// orphans (the host may come later).
    pending: Vec<Pending>,
    counts: BTreeMap<(Kpi, String), (u64, u64)>,
    failing: BTreeMap<(Kpi, String), FailBucket>,
    scanned: u64,
    /// Every host CI has been fed: other CIs are judged as they come (nothing pending).
    hosts_complete: bool,
}

struct HostInfo {
    ci_id: String,
    state: CiState,
    hostname: Option<String>,
    keys: Vec<String>,
    last_seen: SystemTime,
}

struct Pending {
    ci_id: String,
    class: String,
    key: String,
    host_id: String,
    stale: Option<String>,
}

fn fmt_age(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl<'a> ReportBuilder<'a> {
    pub fn new(settings: &'a HealthSettings, now: SystemTime) -> Self {
        ReportBuilder {
            settings,
            now,
            required: HashMap::new(),
            hosts: HashMap::new(),
            agent_seen: HashMap::new(),
            pending: Vec::new(),
            counts: BTreeMap::new(),
            failing: BTreeMap::new(),
            scanned: 0,
            hosts_complete: false,
        }
    }

    /// Says every host CI has been fed: later CIs are judged at once instead of being kept
    /// until [`ReportBuilder::finish`], so memory stays bounded by the hosts, not the CIs.
    /// Feeding a host CI after this is a caller bug (its CIs may have been called orphans).
    pub fn hosts_complete(&mut self) {
        self.hosts_complete = true;
    }

    fn fail(&mut self, f: Failing) {
        let bucket = self.failing.entry((f.kpi, f.class.clone())).or_default();
        bucket.count += 1;
        if bucket.items.len() < MAX_FAILING_KEPT {
            bucket.items.push(f);
        }
    }

    fn count(&mut self, kpi: Kpi, class: &str, healthy: bool) {
        let c = self.counts.entry((kpi, class.to_owned())).or_default();
        c.0 += u64::from(healthy);
        c.1 += 1;
    }

    /// An agent: its `last_seen` keeps its host fresh.
    pub fn add_agent(&mut self, agent: &crate::store::AgentRecord) {
        if let (Some(host), Some(seen)) = (&agent.host_id, agent.last_seen) {
            let e = self.agent_seen.entry(host.clone()).or_insert(seen);
            *e = (*e).max(seen);
        }
    }

    /// One CI (any state; only present ones are judged, but host CIs of every state are
    /// remembered for the orphan check).
    pub fn add_ci(&mut self, ci: &CiRecord) {
        if ci.class == HOST_CLASS {
            let keys = ["product_uuid", "serial_number", "machine_id"]
                .iter()
                .filter_map(|k| strong_key(attr_str(&ci.attrs, k)).map(|v| format!("{k}={v}")))
                .collect();
            let hostname = attr_str(&ci.attrs, "hostname")
                .map(|h| h.trim().to_lowercase())
                .filter(|h| !h.is_empty());
            if ci.state == CiState::Present {
                self.completeness(ci);
            }
            self.hosts.insert(
                ci.host_id.clone(),
                HostInfo {
                    ci_id: ci.id.clone(),
                    state: ci.state,
                    hostname,
                    keys,
                    last_seen: ci.last_seen,
                },
            );
            return;
        }
        if ci.state != CiState::Present {
            return;
        }
        self.scanned += 1;
        self.completeness(ci);
        let limit = self.settings.stale_after_of(&ci.class);
        let age = self.now.duration_since(ci.last_seen).unwrap_or_default();
        let stale = (age > limit).then(|| {
            format!(
                "stale: last seen {} ago (effective duration {})",
                fmt_age(age),
                fmt_age(limit)
            )
        });
        let p = Pending {
            ci_id: ci.id.clone(),
            class: ci.class.clone(),
            key: ci.key.clone(),
            host_id: ci.host_id.clone(),
            stale,
        };
        if self.hosts_complete {
            self.judge(p);
        } else {
            self.pending.push(p);
        }
    }

    /// Correctness of a non-host CI: stale, orphan.
    fn judge(&mut self, p: Pending) {
        let mut r = Vec::new();
        if let Some(s) = p.stale {
            r.push(s);
        }
        match self.hosts.get(&p.host_id).map(|h| h.state) {
            None => r.push(format!("orphan: host CI {} does not exist", p.host_id)),
            Some(CiState::Retired) => {
                r.push(format!("orphan: host CI {} is retired", p.host_id));
            }
            Some(_) => {}
        }
        self.count(Kpi::Correctness, &p.class, r.is_empty());
        if !r.is_empty() {
            self.fail(Failing {
                ci_id: Some(p.ci_id),
                class: p.class,
                key: p.key,
                host_id: Some(p.host_id),
                kpi: Kpi::Correctness,
                reason: r.join("; "),
            });
        }
    }

    /// Counts the completeness of a present CI; returns whether it failed.
    fn completeness(&mut self, ci: &CiRecord) -> bool {
        let required = self
            .required
            .entry(ci.class.clone())
            .or_insert_with(|| self.settings.required_of(&ci.class));
        let missing: Vec<&str> = required
            .iter()
            .filter(|a| !filled(ci.attrs.get(a.as_str())))
            .map(String::as_str)
            .collect();
        let failed = !missing.is_empty();
        let reason = format!("missing: {}", missing.join(", "));
        self.count(Kpi::Completeness, &ci.class, !failed);
        if failed {
            self.fail(Failing {
                ci_id: Some(ci.id.clone()),
                class: ci.class.clone(),
                key: ci.key.clone(),
                host_id: Some(ci.host_id.clone()),
                kpi: Kpi::Completeness,
                reason,
            });
        }
        failed
    }

    /// The report, with the compliance of `compliance`.
    pub fn finish(mut self, compliance: ComplianceInput) -> HealthReport {
        // Hosts: stale (the freshest of the CI and its agents), then duplicates among the
        // live (present, not stale) ones.
        let limit = self.settings.stale_after_of(HOST_CLASS);
        let mut host_ids: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.state == CiState::Present)
            .map(|(id, _)| id.clone())
            .collect();
        host_ids.sort();
        let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut live_by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in &host_ids {
            let Some(h) = self.hosts.get(id) else {
                continue;
            };
            self.scanned += 1;
            let seen = self
                .agent_seen
                .get(id)
                .map_or(h.last_seen, |a| (*a).max(h.last_seen));
            let age = self.now.duration_since(seen).unwrap_or_default();
            let r = reasons.entry(id.clone()).or_default();
            if age > limit {
                r.push(format!(
                    "stale: last seen {} ago (effective duration {})",
                    fmt_age(age),
                    fmt_age(limit)
                ));
                continue;
            }
            for k in &h.keys {
                live_by_key.entry(k.clone()).or_default().push(id.clone());
            }
            if let Some(name) = &h.hostname {
                live_by_key
                    .entry(format!("hostname={name}"))
                    .or_default()
                    .push(id.clone());
            }
        }
        for (key, ids) in &live_by_key {
            if ids.len() < 2 {
                continue;
            }
            for id in ids {
                let others: Vec<&str> = ids
                    .iter()
                    .filter(|o| *o != id)
                    .map(String::as_str)
                    .collect();
                reasons.entry(id.clone()).or_default().push(format!(
                    "duplicate host: {key} shared with {}",
                    others.join(", ")
                ));
            }
        }
        for (id, r) in reasons {
            let Some(h) = self.hosts.get(&id) else {
                continue;
            };
            let ci_id = h.ci_id.clone();
            self.count(Kpi::Correctness, HOST_CLASS, r.is_empty());
            if !r.is_empty() {
                self.fail(Failing {
                    ci_id: Some(ci_id),
                    class: HOST_CLASS.to_owned(),
                    key: id.clone(),
                    host_id: Some(id.clone()),
                    kpi: Kpi::Correctness,
                    reason: r.join("; "),
                });
            }
        }
        // Everything else not judged yet: stale, orphan.
        for p in std::mem::take(&mut self.pending) {
            self.judge(p);
        }
        let status = match compliance {
            ComplianceInput::NoSource => ComplianceStatus::None("no audit source".into()),
            ComplianceInput::Failed => ComplianceStatus::None(
                "the audit source failed; the collector log has the details".into(),
            ),
            ComplianceInput::Report(None) => ComplianceStatus::None("no audit has run".into()),
            ComplianceInput::Report(Some(rep)) => {
                for row in &rep.classes {
                    let c = self
                        .counts
                        .entry((Kpi::Compliance, row.class.clone()))
                        .or_default();
                    c.0 += row.healthy.min(row.total);
                    c.1 += row.total;
                }
                for f in rep.failing {
                    self.fail(Failing {
                        ci_id: f.ci_id,
                        class: f.class,
                        key: f.key,
                        host_id: f.host_id,
                        kpi: Kpi::Compliance,
                        reason: f.reason,
                    });
                }
                ComplianceStatus::Run {
                    run_id: rep.run_id,
                    finished_at: rep.finished_at,
                }
            }
        };
        let kpis = self
            .counts
            .iter()
            .map(|((kpi, class), (healthy, total))| KpiRow {
                kpi: *kpi,
                class: class.clone(),
                healthy: *healthy,
                total: *total,
                ratio: if *total == 0 {
                    1.0
                } else {
                    *healthy as f64 / *total as f64
                },
            })
            .collect();
        HealthReport {
            generated_at: self.now,
            cis_scanned: self.scanned,
            kpis,
            compliance: status,
            failing: self.failing,
        }
    }
}

/// What the compliance source said.
pub enum ComplianceInput {
    NoSource,
    Failed,
    Report(Option<crate::compliance::ComplianceReport>),
}

/// Walks the whole store into a report (blocking).
pub fn compute(
    store: &dyn Store,
    compliance: Option<&dyn ComplianceSource>,
    settings: &HealthSettings,
    now: SystemTime,
) -> Result<HealthReport, StoreError> {
    let mut b = ReportBuilder::new(settings, now);
    for agent in store.agents()? {
        b.add_agent(&agent);
    }
    // Host CIs of every state (retired hosts make orphans), then every present CI.
    walk(store, Some(HOST_CLASS), true, |ci| b.add_ci(ci))?;
    b.hosts_complete();
    walk(store, None, false, |ci| {
        if ci.class != HOST_CLASS {
            b.add_ci(ci);
        }
    })?;
    let input = match compliance {
        None => ComplianceInput::NoSource,
        Some(src) => match src.latest() {
            Ok(r) => ComplianceInput::Report(r),
            Err(e) => {
                tracing::error!(error = %e, "The compliance source failed; the health report has no compliance figures.");
                ComplianceInput::Failed
            }
        },
    };
    Ok(b.finish(input))
}

fn walk(
    store: &dyn Store,
    class: Option<&str>,
    include_absent: bool,
    mut f: impl FnMut(&CiRecord),
) -> Result<(), StoreError> {
    let mut after = None;
    loop {
        let page = store.cis(&CiFilter {
            class: class.map(str::to_owned),
            include_absent,
            limit: PAGE,
            after: after.clone(),
            ..CiFilter::default()
        })?;
        for ci in &page {
            f(ci);
        }
        match page.last() {
            Some(last) if page.len() >= PAGE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// A cached report: when it was computed, the compliance source's latest run id then, the
/// report.
type Cached = (Instant, Option<String>, Arc<HealthReport>);

/// The health service: the store, the compliance source and a cached report.
pub struct CmdbHealth {
    store: Arc<dyn Store>,
    compliance: Option<Arc<dyn ComplianceSource>>,
    settings: HealthSettings,
    cache: Mutex<Option<Cached>>,
}

impl CmdbHealth {
    pub fn new(
        store: Arc<dyn Store>,
        compliance: Option<Arc<dyn ComplianceSource>>,
        settings: HealthSettings,
    ) -> Self {
        CmdbHealth {
            store,
            compliance,
            settings,
            cache: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// The cached report, or a new one when it is older than `cache_ttl` or a newer audit
    /// run has finished since (blocking; one computation at a time, the others wait for it
    /// and share it).
    pub fn report(&self) -> Result<Arc<HealthReport>, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let run = self.compliance.as_ref().and_then(|c| c.latest_run_id());
        if let Some((at, cached_run, rep)) = cache.as_ref()
            && at.elapsed() < self.settings.cache_ttl
            && *cached_run == run
        {
            return Ok(Arc::clone(rep));
        }
        let rep = Arc::new(compute(
            self.store.as_ref(),
            self.compliance.as_deref(),
            &self.settings,
            SystemTime::now(),
        )?);
        *cache = Some((Instant::now(), run, Arc::clone(&rep)));
        Ok(rep)
    }
}

mod dur {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

mod dur_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, s)| {
                humantime::parse_duration(&s)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {s:?}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
