//! Software licences: a normalised software inventory, entitlements, the compliance
//! position, expiry pre-alerts, and allow/deny lists (deny = security incident).
//!
//! [`Licenses`] owns the operator's data — normalisation rules ([`normalise`]), allow and
//! deny lists ([`lists`]) and entitlements ([`entitlements`]) — kept in the store's record
//! collection `licenses` (ids `rules`, `lists`, `entitlements`, `announced`; JSON, each
//! write one atomic `write_records`). Every write is appended to the audit log first when
//! an [`AuditSink`] is given: no audit entry, no change.
//!
//! Reads are served from an in-memory [`SoftwareIndex`] ([`position`]), rebuilt by
//! [`Licenses::refresh`]: a streaming scan of the present `package`, `cpu` and `user` CIs,
//! at start, every `refresh` period, and at once after rules or lists change. The position
//! is therefore as fresh as the last refresh (its `built_at` says when); computing it from
//! the index is independent of the store.
//!
//! After each refresh: deny-listed installs raise one [`AlertKind::Denied`] alert each
//! through the judgment engine (dedup key (host, [`ALERT_CLASS`], package key)); alerts
//! whose install disappeared or is no longer denied are cleared. Entitlements that end
//! within the expiry window are announced once each: a WARN log line "A licence
//! entitlement expires soon." with contract, vendor, product and the date (remembered in
//! the `announced` record across restarts).

pub mod entitlements;
pub mod lists;
pub mod normalise;
pub mod position;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::incidents::{AlertKind, Category, IncidentState};
use crate::judgment::{Actor, AuditSink, ExternalAlert, IncidentQuery, Judgment};
use crate::store::{CiFilter, RecordOp, Store, StoreError};
use entitlements::{Entitlement, ImportError};
use lists::{ListMatcher, Lists};
use normalise::{Normaliser, RuleSet};
use position::{IndexBuilder, PositionRow, SoftwareIndex, SoftwareRow};

/// The record collection.
pub const COLLECTION: &str = "licenses";
/// The class of the licence module's deny alerts (their CI is the package CI).
pub const ALERT_CLASS: &str = crate::judgment::LICENSE_ALERT_CLASS;
/// CIs read per store page during a refresh.
const SCAN_PAGE: usize = 5_000;
/// Largest rules or lists file read.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// `[licenses]` settings.
#[derive(Clone, Debug)]
pub struct LicenseSettings {
    /// Loaded at start, replacing the stored rules.
    pub rules_file: Option<PathBuf>,
    /// Loaded at start, replacing the stored lists.
    pub lists_file: Option<PathBuf>,
    /// Apply the built-in rules after the operator's.
    pub builtin_rules: bool,
    /// Entitlements ending within this are flagged and announced.
    pub expiry_window: Duration,
    /// How often the index is rebuilt.
    pub refresh: Duration,
}

impl Default for LicenseSettings {
    fn default() -> Self {
        LicenseSettings {
            rules_file: None,
            lists_file: None,
            builtin_rules: true,
            expiry_window: Duration::from_secs(60 * 86_400),
            refresh: Duration::from_secs(300),
        }
    }
}

/// Why a licence operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    /// The request or file content is invalid; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// An import was refused as a whole.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log refused the entry; nothing changed.
    #[error("audit log: {0}")]
    Audit(String),
    /// A stored record does not decode.
    #[error("corrupt licence record {id}: {reason}")]
    Corrupt { id: &'static str, reason: String },
}

/// The operator's data.
#[derive(Clone, Debug, Default)]
struct Data {
    rules: RuleSet,
    lists: Lists,
    entitlements: Vec<Entitlement>,
    announced: BTreeSet<String>,
}

/// What one refresh did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshReport {
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub built_at: SystemTime,
    pub hosts: u64,
    pub packages: u64,
    pub products: u64,
    pub denied: u64,
    pub unapproved: u64,
    pub alerts_raised: u64,
    pub alerts_cleared: u64,
    pub expiring_announced: u64,
    pub millis: u64,
}

/// An entitlement ending within the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiring {
    #[serde(flatten)]
    pub entitlement: Entitlement,
    /// Whole days left (0: ends tonight).
    pub days_left: u64,
    /// The expiry log line has been written.
    pub announced: bool,
}

/// The licence service (see the module doc).
pub struct Licenses {
    store: Arc<dyn Store>,
    judgment: Option<Arc<Judgment>>,
    audit: Option<Arc<dyn AuditSink>>,
    settings: LicenseSettings,
    data: Mutex<Data>,
    index: RwLock<Arc<SoftwareIndex>>,
    /// (host, package key) of the deny alerts this module has firing.
    firing: Mutex<HashSet<(String, String)>>,
    refreshing: Mutex<()>,
    wake: tokio::sync::Notify,
}

fn decode<T: serde::de::DeserializeOwned + Default>(
    store: &dyn Store,
    id: &'static str,
) -> Result<T, LicenseError> {
    match store.record(COLLECTION, id)? {
        None => Ok(T::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| LicenseError::Corrupt {
            id,
            reason: e.to_string(),
        }),
    }
}

fn put<T: Serialize>(id: &str, v: &T) -> Result<RecordOp, LicenseError> {
    Ok(RecordOp::Put {
        collection: COLLECTION,
        id: id.to_owned(),
        value: serde_json::to_vec(v).map_err(|e| LicenseError::Invalid(e.to_string()))?,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, LicenseError> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| LicenseError::Invalid(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| LicenseError::Invalid(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(LicenseError::Invalid(format!(
            "{}: larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Parses a rules or lists file: JSON, or TOML when the name ends in `.toml`.
fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LicenseError> {
    let bytes = read_file(path)?;
    let bad = |e: String| LicenseError::Invalid(format!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "toml") {
        let text = String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        toml::from_str(&text).map_err(|e| bad(e.to_string()))
    } else {
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
    }
}

impl Licenses {
    /// Loads the stored data, then the configured files (which replace the stored rules or
    /// lists and are stored). Builds no index yet: call [`Licenses::refresh`].
    pub fn open(
        store: Arc<dyn Store>,
        judgment: Option<Arc<Judgment>>,
        audit: Option<Arc<dyn AuditSink>>,
        settings: LicenseSettings,
    ) -> Result<Licenses, LicenseError> {
        let mut data = Data {
            rules: decode(store.as_ref(), "rules")?,
            lists: decode(store.as_ref(), "lists")?,
            entitlements: decode(store.as_ref(), "entitlements")?,
            announced: decode(store.as_ref(), "announced")?,
        };
        let mut ops = Vec::new();
        if let Some(p) = &settings.rules_file {
            let rules: RuleSet = parse_file(p)?;
            rules
                .validate()
                .map_err(|e| LicenseError::Invalid(format!("{}: {e}", p.display())))?;
            ops.push(put("rules", &rules)?);
            data.rules = rules;
        }
        if let Some(p) = &settings.lists_file {
            let lists: Lists = parse_file(p)?;
            lists
                .validate()
                .map_err(|e| LicenseError::Invalid(format!("{}: {e}", p.display())))?;
            ops.push(put("lists", &lists)?);
            data.lists = lists;
        }
        if !ops.is_empty() {
            store.write_records(&ops)?;
        }
        // The deny alerts already firing (from before a restart), so that those whose
        // install went away while the collector was down are cleared by the first refresh.
        let mut firing = HashSet::new();
        if let Some(j) = &judgment {
            // Only incidents in memory (not closed): a resolved one has no firing alert.
            let open = [
                IncidentState::New,
                IncidentState::Acknowledged,
                IncidentState::InProgress,
            ];
            for state in open {
                let q = IncidentQuery {
                    state: Some(state),
                    open: None,
                    category: Some(Category::Security),
                    host: None,
                    limit: usize::MAX,
                };
                let incidents = j.incidents(&q).unwrap_or_default();
                for i in incidents {
                    for a in &i.alerts {
                        if a.kind == AlertKind::Denied && a.firing && a.class == ALERT_CLASS {
                            firing.insert((a.host_id.clone(), a.key.clone()));
                        }
                    }
                }
            }
        }
        Ok(Licenses {
            store,
            judgment,
            audit,
            settings,
            data: Mutex::new(data),
            index: RwLock::new(Arc::new(SoftwareIndex::default())),
            firing: Mutex::new(firing),
            refreshing: Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &LicenseSettings {
        &self.settings
    }

    /// The current index (empty until the first refresh).
    pub fn index(&self) -> Arc<SoftwareIndex> {
        match self.index.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn audit(
        &self,
        actor: &Actor,
        action: &str,
        details: serde_json::Value,
    ) -> Result<(), LicenseError> {
        match &self.audit {
            Some(a) => a
                .append(actor, action, "licenses", None, details)
                .map_err(LicenseError::Audit),
            None => Ok(()),
        }
    }

    // === reads ===

    pub fn rules(&self) -> RuleSet {
        self.data().rules.clone()
    }

    pub fn lists(&self) -> Lists {
        self.data().lists.clone()
    }

    pub fn entitlements(&self) -> Vec<Entitlement> {
        self.data().entitlements.clone()
    }

    pub fn software(&self, normalised_only: bool) -> Vec<SoftwareRow> {
        position::software(&self.index(), normalised_only)
    }

    pub fn position(&self, now: SystemTime, hosts_limit: usize) -> Vec<PositionRow> {
        let ents = self.entitlements();
        position::position(
            &self.index(),
            &ents,
            now,
            self.settings.expiry_window,
            hosts_limit,
        )
    }

    /// Entitlements ending within `window` (the configured one when `None`), soonest first.
    pub fn expiring(&self, now: SystemTime, window: Option<Duration>) -> Vec<Expiring> {
        let window = window.unwrap_or(self.settings.expiry_window);
        let d = self.data();
        let mut out: Vec<Expiring> = d
            .entitlements
            .iter()
            .filter(|e| e.expiring(now, window))
            .map(|e| Expiring {
                days_left: e
                    .ends_at()
                    .and_then(|end| end.duration_since(now).ok())
                    .map(|left| left.as_secs() / 86_400)
                    .unwrap_or(0),
                announced: d.announced.contains(&announce_key(e)),
                entitlement: e.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.days_left, &a.entitlement.contract).cmp(&(b.days_left, &b.entitlement.contract))
        });
        out
    }

    // === writes ===

    /// Replaces the rules; the index is rebuilt at the next refresh (woken now).
    pub fn set_rules(&self, actor: &Actor, rules: RuleSet) -> Result<RuleSet, LicenseError> {
        rules
            .validate()
            .map_err(|e| LicenseError::Invalid(e.to_string()))?;
        let mut d = self.data();
        self.audit(
            actor,
            "licenses.rules.set",
            serde_json::json!({ "rules": rules.rules.len() }),
        )?;
        self.store.write_records(&[put("rules", &rules)?])?;
        d.rules = rules.clone();
        drop(d);
        self.wake.notify_one();
        Ok(rules)
    }

    /// Replaces the allow and deny lists; applied at the next refresh (woken now).
    pub fn set_lists(&self, actor: &Actor, lists: Lists) -> Result<Lists, LicenseError> {
        lists
            .validate()
            .map_err(|e| LicenseError::Invalid(e.to_string()))?;
        let mut d = self.data();
        self.audit(
            actor,
            "licenses.lists.set",
            serde_json::json!({ "allow": lists.allow.len(), "deny": lists.deny.len() }),
        )?;
        self.store.write_records(&[put("lists", &lists)?])?;
        d.lists = lists.clone();
        drop(d);
        self.wake.notify_one();
        Ok(lists)
    }

    /// Imports entitlements (already parsed, so complete): merged by key, or replacing
    /// the whole set. Returns the stored set.
    pub fn import(
        &self,
        actor: &Actor,
        imported: Vec<Entitlement>,
        replace: bool,
    ) -> Result<Vec<Entitlement>, LicenseError> {
        let mut d = self.data();
        let count = imported.len();
        let next = if replace {
            imported
        } else {
            entitlements::merge(&d.entitlements, imported)
        };
        if next.len() > entitlements::MAX_ROWS {
            return Err(LicenseError::Invalid(format!(
                "the import would store {} entitlements; at most {} are kept",
                next.len(),
                entitlements::MAX_ROWS
            )));
        }
        self.audit(
            actor,
            "licenses.entitlements.import",
            serde_json::json!({ "rows": count, "replace": replace, "stored": next.len() }),
        )?;
        self.store.write_records(&[put("entitlements", &next)?])?;
        d.entitlements = next.clone();
        Ok(next)
    }

    // === refresh ===

    /// Rebuilds the index from the store, files the deny alerts and announces expiring
    /// entitlements. Blocking; one refresh at a time.
    pub fn refresh(&self, now: SystemTime) -> Result<RefreshReport, LicenseError> {
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let (rules, lists) = {
            let d = self.data();
            (d.rules.clone(), d.lists.clone())
        };
        let normaliser = Normaliser::new(&rules, self.settings.builtin_rules);
        let matcher = ListMatcher::new(&lists);
        let mut b = IndexBuilder::new(&normaliser, &matcher);
        for agent in self.store.agents()? {
            if let Some(h) = agent.host_id {
                b.hostname(&h, agent.hostname);
            }
        }
        scan(self.store.as_ref(), "cpu", |ci| b.add_cpu(ci))?;
        scan(self.store.as_ref(), "user", |ci| b.add_user(ci))?;
        scan(self.store.as_ref(), "package", |ci| b.add_package(ci))?;
        let index = Arc::new(b.finish(now));
        match self.index.write() {
            Ok(mut g) => *g = Arc::clone(&index),
            Err(p) => *p.into_inner() = Arc::clone(&index),
        }
        let (raised, cleared) = self.file_alerts(&index, now);
        let announced = self.announce(now)?;
        let report = RefreshReport {
            built_at: now,
            hosts: index.hosts.len() as u64,
            packages: index.packages_scanned,
            products: index.products.len() as u64,
            denied: index.denied.len() as u64,
            unapproved: index.unapproved.len() as u64,
            alerts_raised: raised,
            alerts_cleared: cleared,
            expiring_announced: announced,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        tracing::debug!(?report, "Licence index rebuilt.");
        Ok(report)
    }

    /// Raises alerts for newly denied installs, clears those no longer denied. A failure
    /// is logged and retried by the next refresh (the firing set only records successes).
    fn file_alerts(&self, index: &SoftwareIndex, now: SystemTime) -> (u64, u64) {
        let Some(j) = &self.judgment else {
            return (0, 0);
        };
        let mut firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
        let current: HashSet<(String, String)> = index
            .denied
            .iter()
            .map(|d| (d.host_id.clone(), d.package_key.clone()))
            .collect();
        let new: Vec<ExternalAlert> = index
            .denied
            .iter()
            .filter(|d| !firing.contains(&(d.host_id.clone(), d.package_key.clone())))
            .map(|d| ExternalAlert {
                kind: AlertKind::Denied,
                host_id: d.host_id.clone(),
                ci_id: d.ci_id.clone(),
                class: ALERT_CLASS.to_owned(),
                key: d.package_key.clone(),
                summary: format!(
                    "deny-listed software {} {} ({}): {}",
                    d.vendor, d.product, d.package_key, d.reason
                ),
                at: now,
            })
            .collect();
        let gone: Vec<(String, String)> = firing.difference(&current).cloned().collect();
        let mut raised = 0;
        let mut cleared = 0;
        if !new.is_empty() {
            match j.raise_alerts(&new) {
                Ok(_) => {
                    raised = new.len() as u64;
                    for a in new {
                        firing.insert((a.host_id, a.key));
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot raise deny-list alerts."),
            }
        }
        if !gone.is_empty() {
            let keys: Vec<(String, String, String, AlertKind)> = gone
                .iter()
                .map(|(h, k)| {
                    (
                        h.clone(),
                        ALERT_CLASS.to_owned(),
                        k.clone(),
                        AlertKind::Denied,
                    )
                })
                .collect();
            match j.clear_alerts(&keys, now, "no longer installed or no longer denied") {
                Ok(()) => {
                    cleared = gone.len() as u64;
                    for g in &gone {
                        firing.remove(g);
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot clear deny-list alerts."),
            }
        }
        (raised, cleared)
    }

    /// Logs each entitlement newly inside the expiry window once; returns how many.
    fn announce(&self, now: SystemTime) -> Result<u64, LicenseError> {
        let mut d = self.data();
        let window = self.settings.expiry_window;
        let fresh: Vec<Entitlement> = d
            .entitlements
            .iter()
            .filter(|e| e.expiring(now, window) && !d.announced.contains(&announce_key(e)))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut announced = d.announced.clone();
        // Forget announcements of entitlements that are gone, so the record stays bounded.
        let live: HashSet<String> = d.entitlements.iter().map(announce_key).collect();
        announced.retain(|k| live.contains(k));
        for e in &fresh {
            announced.insert(announce_key(e));
        }
        self.store.write_records(&[put("announced", &announced)?])?;
        d.announced = announced;
        for e in &fresh {
            tracing::warn!(
                contract = %e.contract,
                vendor = %e.vendor,
                product = %e.product,
                quantity = e.quantity,
                expires = e.expires.as_deref().unwrap_or(""),
                "A licence entitlement expires soon."
            );
        }
        Ok(fresh.len() as u64)
    }

    /// The background loop: refresh now, then every `refresh` period or when woken by a
    /// change of rules or lists. A refresh that took `d` is followed by a pause of at
    /// least 9 × `d`, so that on a large store the refresh uses at most a tenth of one
    /// core whatever `refresh` says. Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            let me = Arc::clone(&self);
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || me.refresh(SystemTime::now())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "The licence refresh failed."),
                Err(e) => tracing::error!(error = %e, "The licence refresh task failed."),
            }
            let took = started.elapsed();
            let period = self
                .settings
                .refresh
                .max(Duration::from_secs(1))
                .max(took.saturating_mul(9));
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

fn announce_key(e: &Entitlement) -> String {
    let (c, v, p) = e.key();
    format!(
        "{c}\u{1f}{v}\u{1f}{p}\u{1f}{}",
        e.expires.as_deref().unwrap_or("")
    )
}

/// Every present CI of `class`, page by page.
fn scan(
    store: &dyn Store,
    class: &str,
    mut f: impl FnMut(&crate::store::CiRecord),
) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        let page = store.cis(&CiFilter {
            class: Some(class.to_owned()),
            limit: SCAN_PAGE,
            after: after.clone(),
            ..CiFilter::default()
        })?;
        for ci in &page {
            f(ci);
        }
        match page.last() {
            Some(last) if page.len() >= SCAN_PAGE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
