//! The judgment engine: the collector's single writer of baselines, change records,
//! waivers, policies, drift records, incidents and outages.
//!
//! It consumes the store's change feed (every CI version, in commit order) and runs the
//! drift engine ([`crate::drift`]) on each version, correlates the resulting alerts
//! ([`crate::correlate`]) into incidents, turns heartbeats into host up/down and `monitor`
//! CIs into service outages ([`crate::availability`]), and serves the API's mutations.
//!
//! # Invariants
//! - One lock (`state`) serialises everything; every step builds its record writes and
//!   commits them with ONE `Store::write_records` (atomic, durable), including the feed
//!   position it reached. A crash therefore replays exactly the feed entries whose effects
//!   were not committed: each CI version is judged once.
//! - If a commit fails, the in-memory state is reloaded from the store (the last committed
//!   truth) before the error is returned, so memory never runs ahead of disk.
//! - Notifications are records written in the same batch as the incident change they
//!   announce (the notifier's outbox), so none is lost and none is sent for a change that
//!   did not commit.
//! - Every mutation is appended to the audit log: API mutations with the principal, the
//!   engine's own (incidents opened/resolved, baselines captured/advanced) as `collector`.
//!   The entry is written before the records: a mutation that cannot be audited does not
//!   happen; one whose record write then fails stays in the log as an attempt (the log
//!   may say a little more than the store, never less).
//!
//! # What it keeps in memory
//! Change records, waivers, baselines (with their items), policies, open drift per CI,
//! incidents that are not closed, host liveness. Drift records, closed incidents and
//! outages are read from the store on demand. Flip history for flap detection is memory
//! only (a restart forgets it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use cmdb_proto::model::Attrs;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::availability::{AvailabilityFigures, Outage, OutageSubject, figures};
use crate::baselines::{
    Baseline, BaselineDiff, BaselineError, BaselineItem, BaselineState, BaselineSummary, Hostnames,
    diff, items_of, live_items,
};
use crate::changes::{
    self, ChangeError, ChangeImport, ChangeRecord, ChangeState, ChangeType, ChangeUpdate, NewChange,
};
use crate::correlate::{AlertEvent, CorrelationSettings, Correlator, Effect, dedup_key};
use crate::drift::{DeviationKind, DriftRecord, Verdict, deviation, judge, significant, states};
use crate::incidents::{self, AlertKind, Incident, IncidentError, IncidentState, Resolution};
use crate::policy::{
    self, AttributePolicies, CriticalityRule, DenyRule, PolicyError, Waiver, criticality,
};
use crate::selector::{Selector, Subject};
use crate::store::{FeedEntry, FeedPos, RecordOp, Store, StoreError, host_ci_id};

/// Feed entries judged per step.
pub const FEED_BATCH: usize = 2000;
/// Feed entries judged per step while the engine is behind (its last step was full): a
/// step rewrites every incident it touched (whole, alerts and all), so under a backlog
/// fewer, larger steps judge more versions per second (BENCHMARKS.md, 2026-12-06).
pub const FEED_BATCH_BEHIND: usize = 5_000;
/// Most incidents, drift records or outages one list returns.
pub const MAX_LIST: usize = 1000;
/// Most drift record ids an open drift keeps (the drift list by CI has them all).
pub const MAX_OPEN_DRIFT_IDS: usize = 100;
/// Most change records and waivers kept (older final ones should be archived first).
pub const MAX_CHANGES: usize = 100_000;

const C_JUDGMENT: &str = "judgment";
const C_CHANGE: &str = "change";
const C_WAIVER: &str = "waiver";
const C_BASELINE: &str = "baseline";
const C_DRIFT: &str = "drift";
const C_OPEN_DRIFT: &str = "open_drift";
const C_INCIDENT: &str = "incident";
const C_OUTAGE: &str = "outage";
const C_LIVENESS: &str = "liveness";
const ENGINE: &str = "collector";

/// Who asks for a mutation.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub role: String,
}

impl Actor {
    /// The engine itself.
    pub fn engine() -> Actor {
        Actor {
            name: ENGINE.into(),
            role: "system".into(),
        }
    }
}

/// Where mutations are recorded (the hash-chained audit log).
pub trait AuditSink: Send + Sync + 'static {
    /// Appends one entry; durable when it returns.
    fn append(
        &self,
        actor: &Actor,
        action: &str,
        object: &str,
        why: Option<&str>,
        details: serde_json::Value,
    ) -> Result<(), String>;
}

/// For tests: an audit sink that keeps the actions appended, or refuses every entry.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct RecordedActions {
    pub(crate) entries: Mutex<Vec<String>>,
    /// Every `append` fails (a full disk).
    pub(crate) refuse: bool,
}

#[cfg(test)]
impl AuditSink for RecordedActions {
    fn append(
        &self,
        _: &Actor,
        action: &str,
        _: &str,
        _: Option<&str>,
        _: serde_json::Value,
    ) -> Result<(), String> {
        if self.refuse {
            return Err("disk full".into());
        }
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(action.to_owned());
        Ok(())
    }
}

/// Where incident notifications go: record writes for the notifier's outbox, committed
/// with the incident change, and a wake-up after the commit.
pub trait NoticeSink: Send + Sync + 'static {
    /// `event`: opened, updated, resolved or closed.
    fn notice_ops(&self, event: &str, incident: &Incident, now: SystemTime) -> Vec<RecordOp>;
    fn wake(&self);
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct JudgmentSettings {
    pub correlation: CorrelationSettings,
    /// The agents' heartbeat interval.
    pub heartbeat: Duration,
    /// A host is down after this many missed heartbeats.
    pub missed_heartbeats: u32,
    /// A host's first inventory becomes its initial baseline (pending approval), and its
    /// CIs are judged only from then on.
    pub initial_baselines: bool,
    /// Resolved incidents close by themselves after this long.
    pub auto_close: Duration,
}

impl Default for JudgmentSettings {
    fn default() -> Self {
        JudgmentSettings {
            correlation: CorrelationSettings::default(),
            heartbeat: Duration::from_secs(30),
            missed_heartbeats: 3,
            initial_baselines: true,
            auto_close: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// Why a judgment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JudgmentError {
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// No such record.
    #[error("{0}")]
    NotFound(String),
    /// A malformed or out-of-range request.
    #[error("{0}")]
    Invalid(String),
    /// A request that conflicts with the record's state (an illegal transition, …).
    #[error("{0}")]
    Conflict(String),
    /// The audit log could not record the mutation (nothing was changed).
    #[error("audit log: {0}")]
    Audit(String),
    /// A stored record does not decode.
    #[error("corrupt {collection} record {id}: {reason}")]
    Corrupt {
        collection: &'static str,
        id: String,
        reason: String,
    },
}

impl From<ChangeError> for JudgmentError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::IllegalTransition { .. } | ChangeError::NotEditable { .. } => {
                JudgmentError::Conflict(e.to_string())
            }
            _ => JudgmentError::Invalid(e.to_string()),
        }
    }
}

impl From<IncidentError> for JudgmentError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::IllegalTransition { .. } => JudgmentError::Conflict(e.to_string()),
            IncidentError::Invalid(m) => JudgmentError::Invalid(m),
        }
    }
}

impl From<PolicyError> for JudgmentError {
    fn from(e: PolicyError) -> Self {
        JudgmentError::Invalid(e.to_string())
    }
}

impl From<BaselineError> for JudgmentError {
    fn from(e: BaselineError) -> Self {
        match e {
            BaselineError::Store(s) => JudgmentError::Store(s),
            BaselineError::TooLarge => JudgmentError::Invalid(e.to_string()),
        }
    }
}

/// Numbers handed out so far, per kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counters {
    change: u64,
    waiver: u64,
    baseline: u64,
    drift: u64,
    incident: u64,
    outage: u64,
}

/// A CI with unauthorized drift that has not been reverted or accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OpenDrift {
    ci_id: String,
    host_id: String,
    class: String,
    key: String,
    /// Significant attributes before the first unauthorized change (`None`: the CI did
    /// not exist). Back to these = reverted.
    baseline: Option<Attrs>,
    drift_ids: Vec<String>,
}

/// A host's availability state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Liveness {
    outage_id: String,
    planned: bool,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    since: SystemTime,
}

#[derive(Clone, Debug, Default)]
struct HostInfo {
    hostname: Option<String>,
}

/// Policies kept as one record each.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Policies {
    pub attributes: AttributePolicies,
    pub criticality: Vec<CriticalityRule>,
    pub deny: Vec<DenyRule>,
}

struct State {
    cursor: Option<FeedPos>,
    /// The last step read a full batch: the next one reads [`FEED_BATCH_BEHIND`].
    behind: bool,
    counters: Counters,
    policies: Policies,
    changes: BTreeMap<String, ChangeRecord>,
    waivers: BTreeMap<String, Waiver>,
    baselines: BTreeMap<String, Baseline>,
    /// Host id → (commit its initial baseline was captured after, that baseline's id).
    baselined: HashMap<String, (u64, String)>,
    open_drift: HashMap<String, OpenDrift>,
    corr: Correlator,
    /// What the store holds of each incident in memory (see `stored`); absent for one read
    /// from the layout before it, which its next write replaces.
    stored: HashMap<String, stored::Shape>,
    hosts: BTreeMap<String, HostInfo>,
    liveness: HashMap<String, Liveness>,
    clones_seen: BTreeSet<String>,
}

/// The change records and waivers in force during one step.
struct Rules {
    changes: Vec<ChangeRecord>,
    waivers: Vec<Waiver>,
}

/// What one step writes and announces.
#[derive(Default)]
struct Batch {
    ops: Vec<RecordOp>,
    /// Incident number → the strongest effect this step had on it.
    touched: BTreeMap<String, &'static str>,
    audit: Vec<(Actor, String, String, Option<String>, serde_json::Value)>,
    /// Change records that gained evidence (written once per step, not per entry).
    changes: BTreeSet<String>,
    /// CIs whose open drift grew (written once per step).
    open_drift: BTreeSet<String>,
}

impl Batch {
    fn put<T: Serialize>(&mut self, collection: &'static str, id: &str, value: &T) {
        // Most records are a few hundred bytes: one allocation instead of a growth series.
        let mut buf = Vec::with_capacity(768);
        match serde_json::to_writer(&mut buf, value).map(|()| buf) {
            Ok(value) => self.ops.push(RecordOp::Put {
                collection,
                id: id.to_owned(),
                value,
            }),
            // Our own types always serialise; a failure is a bug worth a loud log.
            Err(e) => {
                tracing::error!(collection, id, error = %e, "Cannot encode a judgment record.")
            }
        }
    }

    fn delete(&mut self, collection: &'static str, id: &str) {
        self.ops.push(RecordOp::Delete {
            collection,
            id: id.to_owned(),
        });
    }

    fn touch(&mut self, number: &str, effect: Effect) {
        let name = match effect {
            Effect::Opened => "opened",
            Effect::Resolved => "resolved",
            Effect::Updated => "updated",
        };
        let e = self.touched.entry(number.to_owned()).or_insert(name);
        // opened > resolved > updated: an incident opened and updated in one step is
        // announced once, as opened.
        if *e == "updated" || (name == "opened") {
            *e = name;
        }
    }

    fn audit(
        &mut self,
        actor: &Actor,
        action: &str,
        object: &str,
        why: Option<&str>,
        details: serde_json::Value,
    ) {
        self.audit.push((
            actor.clone(),
            action.to_owned(),
            object.to_owned(),
            why.map(str::to_owned),
            details,
        ));
    }
}

/// The engine. Share it behind an `Arc`; all methods block (call from `spawn_blocking`).
pub struct Judgment {
    store: Arc<dyn Store>,
    settings: JudgmentSettings,
    audit: Option<Arc<dyn AuditSink>>,
    notices: Option<Arc<dyn NoticeSink>>,
    state: Mutex<State>,
    /// When this engine started: silence is counted from here at the earliest, so a
    /// collector that was down itself does not declare every host down on restart.
    started: SystemTime,
}

fn decode<T: DeserializeOwned>(
    collection: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<T, JudgmentError> {
    serde_json::from_slice(bytes).map_err(|e| JudgmentError::Corrupt {
        collection,
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

/// Every record of a collection, decoded.
fn load_all<T: DeserializeOwned>(
    store: &dyn Store,
    collection: &'static str,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<Vec<T>, JudgmentError> {
    Ok(load_pairs(store, collection, |_, v| keep(v))?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Every record of a collection with its id, decoded, in id order. Pages until the store
/// returns an empty page (a short page need not be the last).
fn load_pairs<T: DeserializeOwned>(
    store: &dyn Store,
    collection: &'static str,
    mut keep: impl FnMut(&str, &T) -> bool,
) -> Result<Vec<(String, T)>, JudgmentError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.records(collection, after.as_deref(), 1000)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, bytes) in page {
            let v: T = decode(collection, &id, &bytes)?;
            if keep(&id, &v) {
                out.push((id, v));
            }
        }
    }
    Ok(out)
}

fn get<T: DeserializeOwned>(
    store: &dyn Store,
    collection: &'static str,
    id: &str,
) -> Result<Option<T>, JudgmentError> {
    match store.record(collection, id)? {
        Some(bytes) => Ok(Some(decode(collection, id, &bytes)?)),
        None => Ok(None),
    }
}

impl State {
    fn load(store: &dyn Store, settings: &JudgmentSettings) -> Result<State, JudgmentError> {
        let cursor = get(store, C_JUDGMENT, "cursor")?;
        let counters = get(store, C_JUDGMENT, "counters")?.unwrap_or_default();
        let policies = get(store, C_JUDGMENT, "policies")?.unwrap_or_default();
        let clones_seen = get(store, C_JUDGMENT, "clones_seen")?.unwrap_or_default();
        let changes: Vec<ChangeRecord> = load_all(store, C_CHANGE, |_| true)?;
        let waivers: Vec<Waiver> = load_all(store, C_WAIVER, |_| true)?;
        let baselines: Vec<Baseline> = load_all(store, C_BASELINE, |_| true)?;
        let open: Vec<OpenDrift> = load_all(store, C_OPEN_DRIFT, |_| true)?;
        let mut incidents = Vec::new();
        let mut shapes = HashMap::new();
        for header in load_all(store, C_INCIDENT, |i: &Incident| {
            i.state != IncidentState::Closed
        })? {
            let inline = stored::is_inline(&header);
            let inc = stored::complete(store, header)?;
            if !inline {
                shapes.insert(inc.number.clone(), stored::Shape::of(&inc));
            }
            incidents.push(inc);
        }
        let liveness: HashMap<String, Liveness> =
            load_pairs(store, C_LIVENESS, |_, _: &Liveness| true)?
                .into_iter()
                .collect();
        let baselined = baselines
            .iter()
            .filter(|b| b.initial)
            .filter_map(|b| {
                b.host_id
                    .clone()
                    .map(|h| (h, (b.captured_commit, b.id.clone())))
            })
            .collect();
        Ok(State {
            cursor,
            behind: false,
            counters,
            policies,
            changes: changes.into_iter().map(|c| (c.id.clone(), c)).collect(),
            waivers: waivers.into_iter().map(|w| (w.id.clone(), w)).collect(),
            baselines: baselines.into_iter().map(|b| (b.id.clone(), b)).collect(),
            baselined,
            open_drift: open.into_iter().map(|o| (o.ci_id.clone(), o)).collect(),
            corr: Correlator::new(
                settings.correlation,
                incidents
                    .into_iter()
                    .map(|i| (i.number.clone(), i))
                    .collect(),
            ),
            stored: shapes,
            hosts: BTreeMap::new(),
            liveness,
            clones_seen,
        })
    }

    fn hostname(&self, host_id: &str) -> Option<String> {
        self.hosts.get(host_id).and_then(|h| h.hostname.clone())
    }

    fn hostnames(&self) -> Hostnames {
        self.hosts
            .iter()
            .map(|(id, h)| (id.clone(), h.hostname.clone()))
            .collect()
    }
}

fn next(counter: &mut u64, prefix: &str, width: usize) -> String {
    *counter += 1;
    format!("{prefix}{:0width$}", *counter)
}

// === impl Judgment ===

impl Judgment {
    /// Loads the engine's state from the store.
    pub fn open(
        store: Arc<dyn Store>,
        settings: JudgmentSettings,
        audit: Option<Arc<dyn AuditSink>>,
        notices: Option<Arc<dyn NoticeSink>>,
    ) -> Result<Judgment, JudgmentError> {
        let mut state = State::load(store.as_ref(), &settings)?;
        if let Ok(agents) = store.agents() {
            for a in agents {
                if let Some(h) = a.host_id {
                    state.hosts.insert(
                        h,
                        HostInfo {
                            hostname: a.hostname,
                        },
                    );
                }
            }
        }
        Ok(Judgment {
            store,
            settings,
            audit,
            notices,
            state: Mutex::new(state),
            started: SystemTime::now(),
        })
    }

    /// The hostname the engine knows for `host_id` (from its agents), without a store read.
    pub fn hostname_of(&self, host_id: &str) -> Option<String> {
        let mut st = self.lock();
        if !st.hosts.contains_key(host_id) {
            self.refresh_hosts(&mut st);
        }
        st.hostname(host_id)
    }

    pub fn settings(&self) -> &JudgmentSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits a step: audit entries first (a mutation that cannot be audited does not
    /// happen), then the records, then notifications are woken. On failure the state is
    /// reloaded from the store.
    fn commit(
        &self,
        st: &mut State,
        mut batch: Batch,
        now: SystemTime,
    ) -> Result<(), JudgmentError> {
        for ci in std::mem::take(&mut batch.open_drift) {
            // Resolved in the same step: its delete is already in the batch.
            if let Some(od) = st.open_drift.get(&ci) {
                batch.put(C_OPEN_DRIFT, &ci, od);
            }
        }
        for id in std::mem::take(&mut batch.changes) {
            if let Some(c) = st.changes.get(&id) {
                let c = c.clone();
                batch.put(C_CHANGE, &id, &c);
            }
        }
        let touched = batch.touched.clone();
        let mut shapes = Vec::with_capacity(touched.len());
        for (number, event) in &touched {
            let Some(inc) = st.corr.incidents.get_mut(number) else {
                continue;
            };
            // Serialised in place: an incident of thousands of alerts is not copied per step.
            shapes.push((
                number.clone(),
                stored::write(&mut batch, inc, st.stored.get(number)),
            ));
            let inc = &*inc;
            if let Some(n) = &self.notices {
                batch.ops.extend(n.notice_ops(event, inc, now));
            }
            if *event != "updated" {
                batch.audit(
                    &Actor::engine(),
                    &format!("incident.{event}"),
                    number,
                    None,
                    serde_json::json!({"title": inc.title, "category": inc.category, "priority": inc.priority}),
                );
            }
        }
        batch.put(C_JUDGMENT, "counters", &st.counters);
        let result = (|| {
            if let Some(audit) = &self.audit {
                for (actor, action, object, why, details) in batch.audit.drain(..) {
                    audit
                        .append(&actor, &action, &object, why.as_deref(), details)
                        .map_err(JudgmentError::Audit)?;
                }
            }
            self.store.write_records(&batch.ops)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                if !batch.touched.is_empty()
                    && let Some(n) = &self.notices
                {
                    n.wake();
                }
                st.stored.extend(shapes);
                // Closed incidents leave memory: they are history in the store.
                st.corr.forget_closed();
                let open = &st.corr.incidents;
                st.stored.retain(|number, _| open.contains_key(number));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "A judgment step failed to commit; reloading state from the store.");
                self.reload(st);
                Err(e)
            }
        }
    }

    /// Replaces the in-memory state with the store's (after a step that could not commit).
    fn reload(&self, st: &mut State) {
        match State::load(self.store.as_ref(), &self.settings) {
            Ok(mut fresh) => {
                fresh.hosts = std::mem::take(&mut st.hosts);
                *st = fresh;
            }
            Err(e) => tracing::error!(error = %e, "Reloading judgment state failed."),
        }
    }

    // === the feed ===

    /// Judges the next feed entries. Returns how many were handled (0: caught up).
    pub fn process_feed(&self) -> Result<usize, JudgmentError> {
        let mut st = self.lock();
        let limit = if st.behind {
            FEED_BATCH_BEHIND
        } else {
            FEED_BATCH
        };
        let entries = self.store.feed(st.cursor.as_ref(), limit)?;
        st.behind = entries.len() >= limit;
        let Some(last) = entries.last() else {
            return Ok(0);
        };
        let now = SystemTime::now();
        let mut batch = Batch::default();
        st.cursor = Some(last.pos.clone());
        let cursor = st.cursor.clone();
        batch.put(C_JUDGMENT, "cursor", &cursor);
        // Hosts seen for the first time get their initial baseline before their entries
        // are judged: everything up to this step's last commit is part of it. The host CI
        // alone (written when the agent is identified, before its first snapshot) does not
        // count: a baseline of nothing would make the whole first inventory drift.
        if self.settings.initial_baselines {
            let new_hosts: BTreeSet<String> = entries
                .iter()
                .filter(|e| e.class != crate::store::HOST_CLASS)
                .filter(|e| !st.baselined.contains_key(&e.host_id))
                .map(|e| e.host_id.clone())
                .collect();
            for host in new_hosts {
                let commit = entries
                    .iter()
                    .filter(|e| e.host_id == host)
                    .map(|e| e.pos.commit)
                    .max()
                    .unwrap_or(0);
                self.capture_initial(&mut st, &host, commit, now, &mut batch)?;
            }
        }
        // What can authorise or accept, computed once per step (not per entry).
        let rules = Rules {
            changes: st
                .changes
                .values()
                .filter(|c| c.state.authorizes())
                .cloned()
                .collect(),
            waivers: st
                .waivers
                .values()
                .filter(|w| !w.revoked)
                .cloned()
                .collect(),
        };
        for e in &entries {
            self.judge_entry(&mut st, &rules, e, now, &mut batch);
        }
        let n = entries.len();
        // Derived work: agents' applies and acks go first while they keep coming.
        self.store.wait_for_idle_writers();
        self.commit(&mut st, batch, now)?;
        Ok(n)
    }

    fn capture_initial(
        &self,
        st: &mut State,
        host: &str,
        commit: u64,
        now: SystemTime,
        batch: &mut Batch,
    ) -> Result<(), JudgmentError> {
        if !st.hosts.contains_key(host) {
            self.refresh_hosts(st);
        }
        let hostname = st.hostname(host);
        let scope: Selector = format!("host={host}")
            .parse()
            .map_err(|e: crate::selector::SelectorError| JudgmentError::Invalid(e.to_string()))?;
        let mut hosts = Hostnames::new();
        hosts.insert(host.to_owned(), hostname.clone());
        let live = live_items(self.store.as_ref(), std::slice::from_ref(&scope), &hosts)?;
        let id = next(&mut st.counters.baseline, "BL", 7);
        let b = Baseline {
            id: id.clone(),
            name: format!("initial {}", hostname.as_deref().unwrap_or(host)),
            scope: vec![scope],
            state: BaselineState::Pending,
            initial: true,
            host_id: Some(host.to_owned()),
            captured_commit: commit,
            captured_at: now,
            captured_by: ENGINE.into(),
            approved_at: None,
            approved_by: None,
            advances: 0,
            last_advanced_by: None,
            items: items_of(&live),
        };
        batch.put(C_BASELINE, &id, &b);
        batch.audit(
            &Actor::engine(),
            "baseline.capture",
            &id,
            Some("first inventory of the host"),
            serde_json::json!({"host_id": host, "items": b.items.len(), "initial": true}),
        );
        st.baselined.insert(host.to_owned(), (commit, id.clone()));
        st.baselines.insert(id, b);
        Ok(())
    }

    fn judge_entry(
        &self,
        st: &mut State,
        rules: &Rules,
        e: &FeedEntry,
        now: SystemTime,
        batch: &mut Batch,
    ) {
        let Some((old, new)) = states(e) else {
            return;
        };
        let hostname = st.hostname(&e.host_id);
        let subject = Subject {
            host_id: &e.host_id,
            hostname: hostname.as_deref(),
            class: &e.class,
            key: &e.key,
            ci_id: &e.pos.ci_id,
        };
        let at = e.version.observed_at;
        if e.class == "monitor" {
            self.judge_monitor(st, e, new, hostname.clone(), batch);
        }
        self.judge_deny(st, e, &subject, new.is_some(), hostname.clone(), batch);
        if st.policies.attributes.ignored(&e.class) {
            return;
        }
        if self.settings.initial_baselines {
            match st.baselined.get(&e.host_id) {
                Some((commit, baseline)) if e.pos.commit > *commit => {
                    // Committed after the capture's feed position but already in the
                    // captured live state (it landed while the capture read): not drift.
                    let captured = st
                        .baselines
                        .get(baseline)
                        .and_then(|b| b.items.get(&e.pos.ci_id))
                        .is_some_and(|item| item.version >= e.version.version);
                    if captured {
                        return;
                    }
                }
                _ => return,
            }
        }
        let Some(dev) = deviation(&st.policies.attributes, &e.class, old, new) else {
            return;
        };
        // A revert: back to the state before the first unauthorized change.
        if let Some(od) = st.open_drift.get(&e.pos.ci_id) {
            let now_sig = new.map(|a| significant(&st.policies.attributes, &e.class, a));
            if now_sig == od.baseline {
                let od = od.clone();
                self.resolve_open_drift(st, &od, at, "reverted", now, batch);
                return;
            }
        }
        let verdict = judge(&rules.changes, &rules.waivers, &subject, &dev, at);
        let id = next(&mut st.counters.drift, "DRF", 10);
        let mut rec = DriftRecord {
            id: id.clone(),
            ci_id: e.pos.ci_id.clone(),
            host_id: e.host_id.clone(),
            hostname: hostname.clone(),
            class: e.class.clone(),
            key: e.key.clone(),
            deviation: dev,
            verdict: verdict.clone(),
            agent_id: e.version.agent_id.clone(),
            seq: e.version.seq,
            version: e.version.version,
            observed_at: at,
            evaluated_at: now,
            open: false,
            resolved_at: None,
            resolution: None,
            incident: None,
        };
        match &verdict {
            Verdict::Authorized { change_id } => {
                if let Some(c) = st.changes.get_mut(change_id) {
                    c.add_evidence(&id);
                    batch.changes.insert(change_id.clone());
                }
            }
            Verdict::Accepted { .. } => {}
            Verdict::Unauthorized => {
                rec.open = true;
                let od = st
                    .open_drift
                    .entry(e.pos.ci_id.clone())
                    .or_insert_with(|| OpenDrift {
                        ci_id: e.pos.ci_id.clone(),
                        host_id: e.host_id.clone(),
                        class: e.class.clone(),
                        key: e.key.clone(),
                        baseline: old.map(|a| significant(&st.policies.attributes, &e.class, a)),
                        drift_ids: Vec::new(),
                    });
                if od.drift_ids.len() < MAX_OPEN_DRIFT_IDS {
                    od.drift_ids.push(id.clone());
                }
                batch.open_drift.insert(e.pos.ci_id.clone());
                let (impact, urgency) = criticality(
                    &st.policies.criticality,
                    &subject,
                    AlertKind::Drift.category().default_criticality(),
                );
                let ev = AlertEvent {
                    kind: AlertKind::Drift,
                    host_id: e.host_id.clone(),
                    hostname,
                    ci_id: e.pos.ci_id.clone(),
                    class: e.class.clone(),
                    key: e.key.clone(),
                    summary: drift_summary(&rec),
                    at,
                    impact,
                    urgency,
                    drift_id: Some(id.clone()),
                };
                let (number, effect) = fire(st, &ev);
                batch.touch(&number, effect);
                rec.incident = Some(number);
            }
        }
        batch.put(C_DRIFT, &id, &rec);
    }

    /// Marks a CI's open drift resolved (reverted or accepted) and recovers its alert.
    fn resolve_open_drift(
        &self,
        st: &mut State,
        od: &OpenDrift,
        at: SystemTime,
        resolution: &str,
        now: SystemTime,
        batch: &mut Batch,
    ) {
        st.open_drift.remove(&od.ci_id);
        batch.delete(C_OPEN_DRIFT, &od.ci_id);
        for id in &od.drift_ids {
            match get::<DriftRecord>(self.store.as_ref(), C_DRIFT, id) {
                Ok(Some(mut d)) => {
                    d.open = false;
                    d.resolved_at = Some(now);
                    d.resolution = Some(resolution.to_owned());
                    batch.put(C_DRIFT, id, &d);
                }
                // Written earlier in this very step: patch it in the batch.
                Ok(None) => patch_pending_drift(batch, id, now, resolution),
                Err(e) => tracing::warn!(drift = %id, error = %e, "Cannot update a drift record."),
            }
        }
        let dedup = dedup_key(&od.host_id, &od.class, &od.key, AlertKind::Drift);
        for (number, effect) in st.corr.recover(&dedup, at, resolution) {
            batch.touch(&number, effect);
        }
    }

    fn judge_monitor(
        &self,
        st: &mut State,
        e: &FeedEntry,
        new: Option<&Attrs>,
        hostname: Option<String>,
        batch: &mut Batch,
    ) {
        let status = new
            .and_then(|a| a.get("status"))
            .and_then(|v| v.as_str())
            .unwrap_or("removed");
        let detail = new
            .and_then(|a| a.get("detail"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let at = e.version.observed_at;
        let dedup = dedup_key(&e.host_id, &e.class, &e.key, AlertKind::MonitorDown);
        let open_outage = format!("monitor:{}", e.pos.ci_id);
        match status {
            "down" => {
                if st.liveness.contains_key(&open_outage) {
                    return;
                }
                let subject = Subject {
                    host_id: &e.host_id,
                    hostname: hostname.as_deref(),
                    class: &e.class,
                    key: &e.key,
                    ci_id: &e.pos.ci_id,
                };
                let (impact, urgency) = criticality(
                    &st.policies.criticality,
                    &subject,
                    AlertKind::MonitorDown.category().default_criticality(),
                );
                let ev = AlertEvent {
                    kind: AlertKind::MonitorDown,
                    host_id: e.host_id.clone(),
                    hostname: hostname.clone(),
                    ci_id: e.pos.ci_id.clone(),
                    class: e.class.clone(),
                    key: e.key.clone(),
                    summary: format!("monitor {} down: {detail}", e.key),
                    at,
                    impact,
                    urgency,
                    drift_id: None,
                };
                let (number, effect) = fire(st, &ev);
                batch.touch(&number, effect);
                let id = next(&mut st.counters.outage, "OUT", 10);
                let outage = Outage {
                    id: id.clone(),
                    subject: OutageSubject::Monitor,
                    ci_id: e.pos.ci_id.clone(),
                    host_id: e.host_id.clone(),
                    hostname,
                    name: e.key.clone(),
                    start: at,
                    end: None,
                    planned: false,
                    change_id: None,
                    cause: detail,
                    incident: Some(number),
                };
                batch.put(C_OUTAGE, &id, &outage);
                let l = Liveness {
                    outage_id: id,
                    planned: false,
                    since: at,
                };
                batch.put(C_LIVENESS, &open_outage, &l);
                st.liveness.insert(open_outage, l);
            }
            "up" | "removed" => {
                if let Some(l) = st.liveness.remove(&open_outage) {
                    batch.delete(C_LIVENESS, &open_outage);
                    self.end_outage(&l.outage_id, at, batch);
                }
                for (number, effect) in st.corr.recover(&dedup, at, &format!("monitor {status}")) {
                    batch.touch(&number, effect);
                }
            }
            _ => {}
        }
    }

    fn end_outage(&self, id: &str, at: SystemTime, batch: &mut Batch) {
        match get::<Outage>(self.store.as_ref(), C_OUTAGE, id) {
            Ok(Some(mut o)) => {
                o.end = Some(at.max(o.start));
                batch.put(C_OUTAGE, id, &o);
            }
            Ok(None) => {
                // Opened in this very step: patch the pending write.
                for op in batch.ops.iter_mut().rev() {
                    if let RecordOp::Put {
                        collection: C_OUTAGE,
                        id: pid,
                        value,
                    } = op
                        && pid == id
                        && let Ok(mut o) = serde_json::from_slice::<Outage>(value)
                    {
                        o.end = Some(at.max(o.start));
                        if let Ok(v) = serde_json::to_vec(&o) {
                            *value = v;
                        }
                        break;
                    }
                }
            }
            Err(e) => tracing::warn!(outage = %id, error = %e, "Cannot close an outage record."),
        }
    }

    fn judge_deny(
        &self,
        st: &mut State,
        e: &FeedEntry,
        s: &Subject<'_>,
        present: bool,
        hostname: Option<String>,
        batch: &mut Batch,
    ) {
        let Some(rule) = st.policies.deny.iter().find(|r| r.selector.matches(s)) else {
            return;
        };
        let at = e.version.observed_at;
        if present {
            let reason = rule.reason.clone();
            fire_denied(st, s, hostname, &reason, at, batch);
        } else {
            let dedup = dedup_key(&e.host_id, &e.class, &e.key, AlertKind::Denied);
            for (number, effect) in st.corr.recover(&dedup, at, "removed") {
                batch.touch(&number, effect);
            }
        }
    }

    /// A changed deny list applies to what is already there: present CIs it now matches
    /// fire (repeats join their open incident), denied alerts it no longer matches recover.
    fn reapply_deny_list(
        &self,
        st: &mut State,
        now: SystemTime,
        batch: &mut Batch,
    ) -> Result<(), JudgmentError> {
        self.refresh_hosts(st);
        let hosts = st.hostnames();
        let scope: Vec<Selector> = st
            .policies
            .deny
            .iter()
            .map(|r| r.selector.clone())
            .collect();
        if !scope.is_empty() {
            let live = live_items(self.store.as_ref(), &scope, &hosts)?;
            for ci in live.values() {
                let hostname = st.hostname(&ci.host_id);
                let s = Subject {
                    host_id: &ci.host_id,
                    hostname: hostname.as_deref(),
                    class: &ci.class,
                    key: &ci.key,
                    ci_id: &ci.id,
                };
                let Some(reason) = st
                    .policies
                    .deny
                    .iter()
                    .find(|r| r.selector.matches(&s))
                    .map(|r| r.reason.clone())
                else {
                    continue;
                };
                fire_denied(st, &s, hostname.clone(), &reason, now, batch);
            }
        }
        let firing: Vec<(String, String, String, String, String)> = st
            .corr
            .incidents
            .values()
            .flat_map(|i| i.alerts.iter())
            .filter(|a| a.kind == AlertKind::Denied && a.firing && a.class != LICENSE_ALERT_CLASS)
            .map(|a| {
                (
                    a.dedup.clone(),
                    a.host_id.clone(),
                    a.class.clone(),
                    a.key.clone(),
                    a.ci_id.clone(),
                )
            })
            .collect();
        for (dedup, host_id, class, key, ci_id) in firing {
            let hostname = st.hostname(&host_id);
            let s = Subject {
                host_id: &host_id,
                hostname: hostname.as_deref(),
                class: &class,
                key: &key,
                ci_id: &ci_id,
            };
            if !st.policies.deny.iter().any(|r| r.selector.matches(&s)) {
                for (number, effect) in st.corr.recover(&dedup, now, "no longer denied") {
                    batch.touch(&number, effect);
                }
            }
        }
        Ok(())
    }

    // === availability and periodic work ===

    fn refresh_hosts(&self, st: &mut State) {
        match self.store.agents() {
            Ok(agents) => {
                for a in agents {
                    if let Some(h) = a.host_id {
                        st.hosts.insert(
                            h,
                            HostInfo {
                                hostname: a.hostname,
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot read agents for the judgment engine."),
        }
    }

    /// Periodic work (every second or so): host liveness, clones, flapping, auto-close.
    pub fn tick(&self, now: SystemTime) -> Result<(), JudgmentError> {
        let agents = self.store.agents()?;
        let clones = self.store.clones()?;
        let mut st = self.lock();
        let mut batch = Batch::default();
        // The freshest agent per host speaks for it.
        let mut by_host: BTreeMap<String, crate::store::AgentRecord> = BTreeMap::new();
        for a in agents {
            let Some(h) = a.host_id.clone() else { continue };
            if a.revoked {
                continue;
            }
            st.hosts.insert(
                h.clone(),
                HostInfo {
                    hostname: a.hostname.clone(),
                },
            );
            let fresher = by_host.get(&h).is_none_or(|b| a.last_seen > b.last_seen);
            if fresher {
                by_host.insert(h, a);
            }
        }
        let limit = self.settings.heartbeat * self.settings.missed_heartbeats.max(1);
        for (host, a) in &by_host {
            let Some(last_seen) = a.last_seen else {
                continue;
            };
            let graceful = !a.connected
                && a.last_shutdown
                    .as_ref()
                    .is_some_and(|s| s.received_at + Duration::from_secs(5) >= last_seen);
            let silent = now
                .duration_since(last_seen.max(self.started))
                .unwrap_or_default();
            let down = st.liveness.get(host).cloned();
            match down {
                None => {
                    let planned_change = if graceful {
                        let at = a.last_shutdown.as_ref().map_or(last_seen, |s| s.at);
                        let hostname = st.hostname(host);
                        st.changes
                            .values()
                            .find(|c| c.plans_outage_for(host, hostname.as_deref(), at))
                            .map(|c| c.id.clone())
                    } else {
                        None
                    };
                    if planned_change.is_some() || silent > limit {
                        let start = if graceful {
                            a.last_shutdown.as_ref().map_or(last_seen, |s| s.at)
                        } else {
                            last_seen
                        };
                        self.host_down(&mut st, host, start, graceful, planned_change, &mut batch);
                    }
                }
                Some(l) => {
                    // Back: seen again after the outage began, and not a shutdown's last word.
                    if last_seen > l.since && !graceful && silent <= limit {
                        self.host_up(&mut st, host, &l, last_seen, &mut batch);
                    }
                }
            }
        }
        // Clones: one identity incident per clone record.
        for c in clones {
            if st.clones_seen.contains(&c.clone_host_id) || c.clone_host_id.is_empty() {
                continue;
            }
            st.clones_seen.insert(c.clone_host_id.clone());
            let hostname = st.hostname(&c.host_id);
            let ci = host_ci_id(&c.host_id);
            let s = Subject {
                host_id: &c.host_id,
                hostname: hostname.as_deref(),
                class: crate::store::HOST_CLASS,
                key: &c.host_id,
                ci_id: &ci,
            };
            let (impact, urgency) = criticality(
                &st.policies.criticality,
                &s,
                AlertKind::Clone.category().default_criticality(),
            );
            let ev = AlertEvent {
                kind: AlertKind::Clone,
                host_id: c.host_id.clone(),
                hostname,
                ci_id: ci,
                class: crate::store::HOST_CLASS.into(),
                key: c.clone_host_id.clone(),
                summary: format!(
                    "agents {} claim one identity ({}); the newcomer is host {}",
                    c.agents.join(", "),
                    c.identity_key,
                    c.clone_host_id
                ),
                at: c.detected_at,
                impact,
                urgency,
                drift_id: None,
            };
            let (number, effect) = fire(&mut st, &ev);
            batch.touch(&number, effect);
            let seen = st.clones_seen.clone();
            batch.put(C_JUDGMENT, "clones_seen", &seen);
        }
        for number in st.corr.tick(now) {
            batch.touch(&number, Effect::Resolved);
        }
        let auto_close = self.settings.auto_close;
        let stale: Vec<String> = st
            .corr
            .incidents
            .values()
            .filter(|i| {
                i.state == IncidentState::Resolved
                    && i.resolved_at
                        .is_some_and(|r| now.duration_since(r).unwrap_or_default() >= auto_close)
            })
            .map(|i| i.number.clone())
            .collect();
        for number in stale {
            if let Some(inc) = st.corr.incidents.get_mut(&number) {
                inc.state = IncidentState::Closed;
                inc.closed_at = Some(now);
                inc.log(
                    now,
                    ENGINE,
                    "closed",
                    "resolved long enough: closed automatically",
                );
                batch.touched.insert(number, "closed");
            }
        }
        if batch.ops.is_empty() && batch.touched.is_empty() {
            return Ok(());
        }
        self.commit(&mut st, batch, now)
    }

    fn host_down(
        &self,
        st: &mut State,
        host: &str,
        start: SystemTime,
        graceful: bool,
        planned_change: Option<String>,
        batch: &mut Batch,
    ) {
        let hostname = st.hostname(host);
        let ci = host_ci_id(host);
        let id = next(&mut st.counters.outage, "OUT", 10);
        let planned = planned_change.is_some();
        let mut outage = Outage {
            id: id.clone(),
            subject: OutageSubject::Host,
            ci_id: ci.clone(),
            host_id: host.to_owned(),
            hostname: hostname.clone(),
            name: hostname.clone().unwrap_or_else(|| host.to_owned()),
            start,
            end: None,
            planned,
            change_id: planned_change.clone(),
            cause: if graceful {
                "graceful shutdown".into()
            } else {
                format!("{} missed heartbeats", self.settings.missed_heartbeats)
            },
            incident: None,
        };
        if !planned {
            let s = Subject {
                host_id: host,
                hostname: hostname.as_deref(),
                class: crate::store::HOST_CLASS,
                key: host,
                ci_id: &ci,
            };
            let (impact, urgency) = criticality(
                &st.policies.criticality,
                &s,
                AlertKind::HostDown.category().default_criticality(),
            );
            let ev = AlertEvent {
                kind: AlertKind::HostDown,
                host_id: host.to_owned(),
                hostname: hostname.clone(),
                ci_id: ci.clone(),
                class: crate::store::HOST_CLASS.into(),
                key: host.to_owned(),
                summary: format!(
                    "host {} is down: {}",
                    hostname.as_deref().unwrap_or(host),
                    outage.cause
                ),
                at: start,
                impact,
                urgency,
                drift_id: None,
            };
            let (number, effect) = fire(st, &ev);
            batch.touch(&number, effect);
            outage.incident = Some(number);
        }
        tracing::info!(host, planned, change = ?planned_change, "Host is down.");
        batch.put(C_OUTAGE, &id, &outage);
        let l = Liveness {
            outage_id: id,
            planned,
            since: start,
        };
        batch.put(C_LIVENESS, host, &l);
        st.liveness.insert(host.to_owned(), l);
    }

    fn host_up(&self, st: &mut State, host: &str, l: &Liveness, at: SystemTime, batch: &mut Batch) {
        st.liveness.remove(host);
        batch.delete(C_LIVENESS, host);
        self.end_outage(&l.outage_id, at, batch);
        let dedup = dedup_key(host, crate::store::HOST_CLASS, host, AlertKind::HostDown);
        for (number, effect) in st.corr.recover(&dedup, at, "heartbeats resumed") {
            batch.touch(&number, effect);
        }
        tracing::info!(host, "Host is up again.");
    }

    // === alerts raised outside the engine ===

    /// Files alerts raised by modules that judge on their own schedule (capacity forecasts,
    /// license deny lists): each goes through correlation like the engine's own (dedup key
    /// (host, class, key, kind), grouping, flapping), with the impact and urgency of the
    /// kind's category adjusted by the criticality policy. Firing a key that is already
    /// firing only updates its incident, so callers may re-raise on every run. Returns the
    /// incident number of each alert, in order. One commit for all of them.
    pub fn raise_alerts(&self, alerts: &[ExternalAlert]) -> Result<Vec<String>, JudgmentError> {
        let mut st = self.lock();
        let mut batch = Batch::default();
        let mut numbers = Vec::with_capacity(alerts.len());
        let mut now = SystemTime::UNIX_EPOCH;
        for a in alerts {
            if !st.hosts.contains_key(&a.host_id) {
                self.refresh_hosts(&mut st);
            }
            let hostname = st.hostname(&a.host_id);
            let s = Subject {
                host_id: &a.host_id,
                hostname: hostname.as_deref(),
                class: &a.class,
                key: &a.key,
                ci_id: &a.ci_id,
            };
            let (impact, urgency) = criticality(
                &st.policies.criticality,
                &s,
                a.kind.category().default_criticality(),
            );
            let ev = AlertEvent {
                kind: a.kind,
                host_id: a.host_id.clone(),
                hostname,
                ci_id: a.ci_id.clone(),
                class: a.class.clone(),
                key: a.key.clone(),
                summary: a.summary.clone(),
                at: a.at,
                impact,
                urgency,
                drift_id: None,
            };
            let (number, effect) = fire(&mut st, &ev);
            batch.touch(&number, effect);
            numbers.push(number);
            now = now.max(a.at);
        }
        if batch.touched.is_empty() {
            return Ok(numbers);
        }
        self.commit(&mut st, batch, now)?;
        Ok(numbers)
    }

    /// Files the recovery of alerts raised with [`Judgment::raise_alerts`]: each
    /// `(host_id, class, key, kind)` stops firing, and an incident whose alerts have all
    /// recovered resolves ("resolved" propagates to every incident holding the key). Keys
    /// that are not firing are ignored. One commit for all of them.
    pub fn clear_alerts(
        &self,
        keys: &[(String, String, String, AlertKind)],
        at: SystemTime,
        why: &str,
    ) -> Result<(), JudgmentError> {
        let mut st = self.lock();
        let mut batch = Batch::default();
        for (host, class, key, kind) in keys {
            let dedup = dedup_key(host, class, key, *kind);
            for (number, effect) in st.corr.recover(&dedup, at, why) {
                batch.touch(&number, effect);
            }
        }
        if batch.touched.is_empty() {
            return Ok(());
        }
        self.commit(&mut st, batch, at)
    }

    // === change records ===

    pub fn changes(
        &self,
        from: Option<SystemTime>,
        to: Option<SystemTime>,
        state: Option<ChangeState>,
    ) -> Vec<ChangeRecord> {
        let st = self.lock();
        let mut v: Vec<ChangeRecord> = st
            .changes
            .values()
            .filter(|c| state.is_none_or(|s| c.state == s))
            // Overlapping [from, to): ends after `from` and starts before `to`.
            .filter(|c| {
                from.is_none_or(|f| c.window.end > f) && to.is_none_or(|t| c.window.start < t)
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.window.start.cmp(&b.window.start).then(a.id.cmp(&b.id)));
        v
    }

    pub fn change(&self, id: &str) -> Result<ChangeRecord, JudgmentError> {
        self.lock()
            .changes
            .get(id)
            .cloned()
            .ok_or_else(|| JudgmentError::NotFound(format!("no change {id}")))
    }

    pub fn create_change(
        &self,
        actor: &Actor,
        req: NewChange,
    ) -> Result<ChangeRecord, JudgmentError> {
        let now = SystemTime::now();
        let mut st = self.lock();
        if st.changes.len() >= MAX_CHANGES {
            return Err(JudgmentError::Invalid(format!(
                "at most {MAX_CHANGES} change records"
            )));
        }
        if req.state.is_some() {
            return Err(JudgmentError::Invalid(
                "state is set by transitions, not at creation (imports may carry it)".into(),
            ));
        }
        let mut counter = st.counters.change;
        let id = next(&mut counter, "CHG", 7);
        let c = changes::create(id.clone(), req, &actor.name, now)?;
        st.counters.change = counter;
        let mut batch = Batch::default();
        batch.put(C_CHANGE, &id, &c);
        batch.audit(
            actor,
            "change.create",
            &id,
            None,
            serde_json::to_value(&c).unwrap_or_default(),
        );
        st.changes.insert(id, c.clone());
        self.commit(&mut st, batch, now)?;
        Ok(c)
    }

    pub fn update_change(
        &self,
        actor: &Actor,
        id: &str,
        u: ChangeUpdate,
    ) -> Result<ChangeRecord, JudgmentError> {
        let now = SystemTime::now();
        let mut st = self.lock();
        let mut c = st
            .changes
            .get(id)
            .cloned()
            .ok_or_else(|| JudgmentError::NotFound(format!("no change {id}")))?;
        let details = serde_json::to_value(&u).unwrap_or_default();
        changes::update(&mut c, u, &actor.name, now)?;
        let mut batch = Batch::default();
        batch.put(C_CHANGE, id, &c);
        batch.audit(actor, "change.update", id, None, details);
        st.changes.insert(id.to_owned(), c.clone());
        self.commit(&mut st, batch, now)?;
        Ok(c)
    }

    /// Moves a change; closing one advances the baselines its evidence touched.
    pub fn transition_change(
        &self,
        actor: &Actor,
        id: &str,
        to: ChangeState,
        note: Option<&str>,
    ) -> Result<ChangeRecord, JudgmentError> {
        let now = SystemTime::now();
        let mut st = self.lock();
        let mut c = st
            .changes
            .get(id)
            .cloned()
            .ok_or_else(|| JudgmentError::NotFound(format!("no change {id}")))?;
        let from = c.state;
        changes::transition(&mut c, to)?;
        c.updated_at = now;
        c.history.push(changes::ChangeEvent {
            at: now,
            actor: actor.name.clone(),
            from: Some(from),
            to,
        });
        let mut batch = Batch::default();
        if to == ChangeState::Closed {
            // The listed evidence, or (when it overflowed the list) every drift record the
            // change authorised: a full scan of the drift records, once, at closing.
            let evidence = if c.evidence_overflow == 0 {
                c.evidence.clone()
            } else {
                self.drift_ids_authorized_by(&c.id)?
            };
            // It changes baselines in memory as it goes: a failure midway reloads.
            let advanced = match self.advance_baselines(&mut st, &evidence, &c.id, &mut batch) {
                Ok(n) => n,
                Err(e) => {
                    self.reload(&mut st);
                    return Err(e);
                }
            };
            batch.audit(
                &Actor::engine(),
                "baseline.advance",
                id,
                Some("change closed"),
                serde_json::json!({"cis": advanced}),
            );
        }
        batch.put(C_CHANGE, id, &c);
        batch.audit(
            actor,
            &format!("change.{}", to.as_str()),
            id,
            note,
            serde_json::json!({"from": from, "to": to}),
        );
        st.changes.insert(id.to_owned(), c.clone());
        self.commit(&mut st, batch, now)?;
        Ok(c)
    }

    /// Moves the baselines covering the CIs of `drift_ids` to those CIs' current state.
    /// Returns how many CIs were advanced.
    fn advance_baselines(
        &self,
        st: &mut State,
        drift_ids: &[String],
        by: &str,
        batch: &mut Batch,
    ) -> Result<usize, JudgmentError> {
        let mut cis = BTreeSet::new();
        for id in drift_ids {
            if let Some(d) = get::<DriftRecord>(self.store.as_ref(), C_DRIFT, id)? {
                cis.insert(d.ci_id);
            }
        }
        let mut changed_baselines = BTreeSet::new();
        for ci_id in &cis {
            let ci = self.store.ci(ci_id)?;
            let hostname = ci.as_ref().and_then(|c| st.hostname(&c.host_id));
            for b in st.baselines.values_mut() {
                if b.state == BaselineState::Superseded {
                    continue;
                }
                let item = ci.as_ref().and_then(|c| {
                    (c.state == crate::store::CiState::Present).then(|| BaselineItem {
                        host_id: c.host_id.clone(),
                        class: c.class.clone(),
                        key: c.key.clone(),
                        attrs: c.attrs.clone(),
                        version: c.version,
                    })
                });
                let covers = match &ci {
                    Some(c) => b.covers(&Subject {
                        host_id: &c.host_id,
                        hostname: hostname.as_deref(),
                        class: &c.class,
                        key: &c.key,
                        ci_id,
                    }),
                    None => b.items.contains_key(ci_id),
                };
                if covers {
                    b.advance_item(ci_id, item, by);
                    changed_baselines.insert(b.id.clone());
                }
            }
        }
        for id in changed_baselines {
            if let Some(b) = st.baselines.get(&id) {
                batch.put(C_BASELINE, &id, b);
            }
        }
        Ok(cis.len())
    }

    /// Imports an ITSM export: all or nothing; refuses duplicates of an external id
    /// (within the import and against existing changes), naming the entry.
    pub fn import_changes(
        &self,
        actor: &Actor,
        import: ChangeImport,
    ) -> Result<Vec<ChangeRecord>, JudgmentError> {
        let now = SystemTime::now();
        if import.changes.len() > changes::MAX_IMPORT {
            return Err(JudgmentError::Invalid(format!(
                "at most {} changes per import",
                changes::MAX_IMPORT
            )));
        }
        let mut st = self.lock();
        let mut seen: BTreeSet<String> = st
            .changes
            .values()
            .filter_map(|c| c.external_id.clone())
            .collect();
        let mut counter = st.counters.change;
        let mut out = Vec::new();
        for (i, req) in import.changes.into_iter().enumerate() {
            let Some(ext) = req.external_id.clone() else {
                return Err(JudgmentError::Invalid(format!(
                    "changes[{i}]: external_id is required in an import"
                )));
            };
            if !seen.insert(ext.clone()) {
                return Err(JudgmentError::Invalid(format!(
                    "changes[{i}]: external_id {ext:?} already exists"
                )));
            }
            let id = next(&mut counter, "CHG", 7);
            let c = changes::create(id, req, &actor.name, now)
                .map_err(|e| JudgmentError::Invalid(format!("changes[{i}]: {e}")))?;
            out.push(c);
        }
        let mut batch = Batch::default();
        for c in &out {
            batch.put(C_CHANGE, &c.id, c);
        }
        batch.audit(
            actor,
            "change.import",
            &format!("{} changes", out.len()),
            None,
            serde_json::json!({"ids": out.iter().map(|c| c.id.clone()).collect::<Vec<_>>()}),
        );
        st.counters.change = counter;
        for c in &out {
            st.changes.insert(c.id.clone(), c.clone());
        }
        self.commit(&mut st, batch, now)?;
        Ok(out)
    }

    // === baselines ===

    pub fn baselines(&self) -> Vec<BaselineSummary> {
        self.lock()
            .baselines
            .values()
            .map(Baseline::summary)
            .collect()
    }

    pub fn baseline(&self, id: &str) -> Result<Baseline, JudgmentError> {
        self.lock()
            .baselines
            .get(id)
            .cloned()
            .ok_or_else(|| JudgmentError::NotFound(format!("no baseline {id}")))
    }

    pub fn capture_baseline(
        &self,
        actor: &Actor,
        name: &str,
        scope: &[String],
    ) -> Result<BaselineSummary, JudgmentError> {
        if name.trim().is_empty() || name.len() > 256 {
            return Err(JudgmentError::Invalid("name must be 1 to 256 bytes".into()));
        }
        let scope = changes::parse_scope(scope)?;
        let now = SystemTime::now();
        let mut st = self.lock();
        self.refresh_hosts(&mut st);
        let live = live_items(self.store.as_ref(), &scope, &st.hostnames())?;
        let id = next(&mut st.counters.baseline, "BL", 7);
        let b = Baseline {
            id: id.clone(),
            name: name.to_owned(),
            scope,
            state: BaselineState::Pending,
            initial: false,
            host_id: None,
            captured_commit: 0,
            captured_at: now,
            captured_by: actor.name.clone(),
            approved_at: None,
            approved_by: None,
            advances: 0,
            last_advanced_by: None,
            items: items_of(&live),
        };
        let mut batch = Batch::default();
        batch.put(C_BASELINE, &id, &b);
        batch.audit(
            actor,
            "baseline.capture",
            &id,
            None,
            serde_json::json!({"name": name, "scope": b.scope, "items": b.items.len()}),
        );
        let summary = b.summary();
        st.baselines.insert(id, b);
        self.commit(&mut st, batch, now)?;
        Ok(summary)
    }

    /// Approves a pending baseline; approved baselines of the same scope are superseded.
    pub fn approve_baseline(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<BaselineSummary, JudgmentError> {
        let now = SystemTime::now();
        let mut st = self.lock();
        let Some(b) = st.baselines.get(id).cloned() else {
            return Err(JudgmentError::NotFound(format!("no baseline {id}")));
        };
        if b.state != BaselineState::Pending {
            return Err(JudgmentError::Conflict(format!(
                "baseline {id} is {:?}, not pending",
                b.state
            )));
        }
        let mut batch = Batch::default();
        let scope_text: Vec<String> = b.scope.iter().map(ToString::to_string).collect();
        for other in st.baselines.values_mut() {
            let same = other
                .scope
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                == scope_text;
            if other.id != id && other.state == BaselineState::Approved && same {
                other.state = BaselineState::Superseded;
                batch.put(C_BASELINE, &other.id.clone(), &other.clone());
            }
        }
        let b = st.baselines.entry(id.to_owned()).or_insert(b);
        b.state = BaselineState::Approved;
        b.approved_at = Some(now);
        b.approved_by = Some(actor.name.clone());
        let b = b.clone();
        batch.put(C_BASELINE, id, &b);
        batch.audit(
            actor,
            "baseline.approve",
            id,
            None,
            serde_json::json!({"items": b.items.len()}),
        );
        self.commit(&mut st, batch, now)?;
        Ok(b.summary())
    }

    pub fn diff_baseline(&self, id: &str) -> Result<BaselineDiff, JudgmentError> {
        let mut st = self.lock();
        let b = st
            .baselines
            .get(id)
            .cloned()
            .ok_or_else(|| JudgmentError::NotFound(format!("no baseline {id}")))?;
        self.refresh_hosts(&mut st);
        let hosts = st.hostnames();
        let policies = st.policies.attributes.clone();
        drop(st);
        let live = live_items(self.store.as_ref(), &b.scope, &hosts)?;
        Ok(diff(&b, &live, &policies, SystemTime::now()))
    }

    // === drift ===

    /// Drift records in id order after `after`, filtered.
    pub fn drift(&self, q: &DriftQuery) -> Result<Vec<DriftRecord>, JudgmentError> {
        let limit = q.limit.clamp(1, MAX_LIST);
        let mut out = Vec::new();
        let mut after = q.after.clone();
        // Bounded scan: at most 100 pages per request.
        for _ in 0..100 {
            let page = self.store.records(C_DRIFT, after.as_deref(), 1000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let full = page.len() == 1000;
            for (id, bytes) in page {
                let d: DriftRecord = decode(C_DRIFT, &id, &bytes)?;
                if q.matches(&d) {
                    out.push(d);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Every drift record authorised by `change_id` (a full scan of the drift records).
    fn drift_ids_authorized_by(&self, change_id: &str) -> Result<Vec<String>, JudgmentError> {
        let pairs = load_pairs(
            self.store.as_ref(),
            C_DRIFT,
            |_, d: &DriftRecord| matches!(&d.verdict, Verdict::Authorized { change_id: c } if c == change_id),
        )?;
        Ok(pairs.into_iter().map(|(id, _)| id).collect())
    }

    // === waivers ===

    pub fn waivers(&self) -> Vec<Waiver> {
        self.lock().waivers.values().cloned().collect()
    }

    pub fn create_waiver(&self, actor: &Actor, req: NewWaiver) -> Result<Waiver, JudgmentError> {
        let now = SystemTime::now();
        let scope = changes::parse_scope(&req.scope)?;
        if req.justification.trim().is_empty() || req.justification.len() > policy::MAX_TEXT_BYTES {
            return Err(JudgmentError::Invalid(format!(
                "justification is required (at most {} bytes)",
                policy::MAX_TEXT_BYTES
            )));
        }
        if req.expires_at <= now {
            return Err(JudgmentError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        if req.attributes.len() > 256 {
            return Err(JudgmentError::Invalid("at most 256 attributes".into()));
        }
        let mut st = self.lock();
        if st.waivers.len() >= policy::MAX_RULES {
            return Err(JudgmentError::Invalid(format!(
                "at most {} waivers",
                policy::MAX_RULES
            )));
        }
        let id = next(&mut st.counters.waiver, "WVR", 7);
        let w = Waiver {
            id: id.clone(),
            scope,
            attributes: req.attributes,
            justification: req.justification,
            created_at: now,
            created_by: actor.name.clone(),
            expires_at: req.expires_at,
            revoked: false,
        };
        let mut batch = Batch::default();
        batch.put(C_WAIVER, &id, &w);
        batch.audit(
            actor,
            "waiver.create",
            &id,
            Some(&w.justification),
            serde_json::to_value(&w).unwrap_or_default(),
        );
        st.waivers.insert(id, w.clone());
        self.commit(&mut st, batch, now)?;
        Ok(w)
    }

    pub fn revoke_waiver(
        &self,
        actor: &Actor,
        id: &str,
        why: Option<&str>,
    ) -> Result<Waiver, JudgmentError> {
        let now = SystemTime::now();
        let mut st = self.lock();
        let Some(w) = st.waivers.get_mut(id) else {
            return Err(JudgmentError::NotFound(format!("no waiver {id}")));
        };
        if w.revoked {
            return Err(JudgmentError::Conflict(format!(
                "waiver {id} is already revoked"
            )));
        }
        w.revoked = true;
        let w = w.clone();
        let mut batch = Batch::default();
        batch.put(C_WAIVER, id, &w);
        batch.audit(actor, "waiver.revoke", id, why, serde_json::json!({}));
        self.commit(&mut st, batch, now)?;
        Ok(w)
    }

    // === policies ===

    pub fn policies(&self) -> Policies {
        self.lock().policies.clone()
    }

    pub fn set_policies(&self, actor: &Actor, p: Policies) -> Result<Policies, JudgmentError> {
        policy::validate_attribute_policies(&p.attributes)?;
        policy::validate_criticality(&p.criticality)?;
        policy::validate_deny_rules(&p.deny)?;
        let now = SystemTime::now();
        let mut st = self.lock();
        let mut batch = Batch::default();
        batch.put(C_JUDGMENT, "policies", &p);
        batch.audit(
            actor,
            "policy.set",
            "policies",
            None,
            serde_json::to_value(&p).unwrap_or_default(),
        );
        let deny_changed = st.policies.deny != p.deny;
        st.policies = p.clone();
        if deny_changed && let Err(e) = self.reapply_deny_list(&mut st, now, &mut batch) {
            self.reload(&mut st);
            return Err(e);
        }
        self.commit(&mut st, batch, now)?;
        Ok(p)
    }

    // === incidents ===

    /// Incidents, newest first: the open and resolved ones from memory, closed ones from
    /// the store when asked for.
    pub fn incidents(&self, q: &IncidentQuery) -> Result<Vec<Incident>, JudgmentError> {
        let limit = q.limit.clamp(1, MAX_LIST);
        let wants_closed = q.state.is_none_or(|s| s == IncidentState::Closed);
        let mut v: Vec<Incident> = if wants_closed {
            load_all(self.store.as_ref(), C_INCIDENT, |i: &Incident| q.matches(i))?
        } else {
            self.lock()
                .corr
                .incidents
                .values()
                .filter(|i| q.matches(i))
                .cloned()
                .collect()
        };
        if wants_closed {
            // Memory is fresher than the store for incidents not yet closed.
            let st = self.lock();
            for i in v.iter_mut() {
                if let Some(m) = st.corr.incidents.get(&i.number) {
                    *i = m.clone();
                }
            }
            v.retain(|i| q.matches(i));
        }
        v.sort_by(|a, b| b.number.cmp(&a.number));
        v.truncate(limit);
        // Headers from the store get their alerts and timeline only once listed.
        v.into_iter()
            .map(|i| stored::complete(self.store.as_ref(), i))
            .collect()
    }

    pub fn incident(&self, number: &str) -> Result<Incident, JudgmentError> {
        if let Some(i) = self.lock().corr.incidents.get(number) {
            return Ok(i.clone());
        }
        let header = get(self.store.as_ref(), C_INCIDENT, number)?
            .ok_or_else(|| JudgmentError::NotFound(format!("no incident {number}")))?;
        stored::complete(self.store.as_ref(), header)
    }

    /// A person's action on an incident.
    pub fn act_on_incident(
        &self,
        actor: &Actor,
        number: &str,
        action: IncidentAction,
    ) -> Result<Incident, JudgmentError> {
        let now = SystemTime::now();
        let mut st = self.lock();
        let Some(inc) = st.corr.incidents.get(number).cloned() else {
            return match get::<Incident>(self.store.as_ref(), C_INCIDENT, number)? {
                Some(i) => Err(JudgmentError::Conflict(format!(
                    "incident {number} is {}: nothing can change it",
                    i.state
                ))),
                None => Err(JudgmentError::NotFound(format!("no incident {number}"))),
            };
        };
        let mut inc = inc;
        let mut batch = Batch::default();
        let (action_name, details, why) = match &action {
            IncidentAction::Acknowledge { note } => {
                incidents::transition(
                    &mut inc,
                    IncidentState::Acknowledged,
                    &actor.name,
                    note.as_deref().unwrap_or(""),
                    now,
                )?;
                ("incident.acknowledge", serde_json::json!({}), note.clone())
            }
            IncidentAction::Assign { assignee } => {
                if assignee.trim().is_empty() || assignee.len() > 256 {
                    return Err(JudgmentError::Invalid(
                        "assignee must be 1 to 256 bytes".into(),
                    ));
                }
                if !inc.state.is_open() {
                    return Err(JudgmentError::Conflict(format!(
                        "incident {number} is {}: only open incidents can be assigned",
                        inc.state
                    )));
                }
                inc.assignee = Some(assignee.clone());
                inc.log(
                    now,
                    &actor.name,
                    "assigned",
                    format!("assigned to {assignee}"),
                );
                if inc.state != IncidentState::InProgress {
                    incidents::transition(
                        &mut inc,
                        IncidentState::InProgress,
                        &actor.name,
                        "",
                        now,
                    )?;
                }
                (
                    "incident.assign",
                    serde_json::json!({"assignee": assignee}),
                    None,
                )
            }
            IncidentAction::Resolve { note } => {
                incidents::transition(&mut inc, IncidentState::Resolved, &actor.name, note, now)?;
                inc.resolution = Some(Resolution {
                    code: "fixed".into(),
                    note: note.clone(),
                    change_id: None,
                });
                (
                    "incident.resolve",
                    serde_json::json!({}),
                    Some(note.clone()),
                )
            }
            IncidentAction::Reopen { note } => {
                incidents::transition(&mut inc, IncidentState::InProgress, &actor.name, note, now)?;
                inc.resolution = None;
                ("incident.reopen", serde_json::json!({}), Some(note.clone()))
            }
            IncidentAction::Close { note, change_id } => {
                if let Some(cid) = change_id
                    && let Err(e) =
                        self.accept_by_change(&mut st, &mut inc, cid, actor, now, &mut batch)
                {
                    // Refused midway (a CI outside the change's scope, a store error):
                    // nothing of it may stay in memory.
                    self.reload(&mut st);
                    return Err(e);
                }
                incidents::transition(&mut inc, IncidentState::Closed, &actor.name, note, now)?;
                if inc.resolved_at.is_none() {
                    inc.resolved_at = Some(now);
                }
                if inc.resolution.is_none() || change_id.is_some() {
                    inc.resolution = Some(Resolution {
                        code: if change_id.is_some() {
                            "accepted".into()
                        } else {
                            "closed".into()
                        },
                        note: note.clone(),
                        change_id: change_id.clone(),
                    });
                }
                (
                    "incident.close",
                    serde_json::json!({"change_id": change_id}),
                    Some(note.clone()),
                )
            }
        };
        batch.audit(actor, action_name, number, why.as_deref(), details);
        let event = match inc.state {
            IncidentState::Resolved => "resolved",
            IncidentState::Closed => "closed",
            _ => "updated",
        };
        st.corr.incidents.insert(number.to_owned(), inc.clone());
        batch.touched.insert(number.to_owned(), event);
        self.commit(&mut st, batch, now)?;
        Ok(inc)
    }

    /// Closing an unauthorized-change incident by a retroactive emergency change: its
    /// drift becomes authorized evidence of the change, and the baselines advance.
    fn accept_by_change(
        &self,
        st: &mut State,
        inc: &mut Incident,
        change_id: &str,
        actor: &Actor,
        now: SystemTime,
        batch: &mut Batch,
    ) -> Result<(), JudgmentError> {
        let Some(mut change) = st.changes.get(change_id).cloned() else {
            return Err(JudgmentError::NotFound(format!("no change {change_id}")));
        };
        if change.change_type != ChangeType::Emergency {
            return Err(JudgmentError::Invalid(format!(
                "change {change_id} is {:?}: only an emergency change can accept drift retroactively",
                change.change_type
            )));
        }
        if matches!(
            change.state,
            ChangeState::Draft | ChangeState::Cancelled | ChangeState::Failed
        ) {
            return Err(JudgmentError::Conflict(format!(
                "change {change_id} is {}: it must be approved to accept drift",
                change.state
            )));
        }
        let drift_ids: Vec<String> = inc
            .alerts
            .iter()
            .flat_map(|a| a.drift_ids.iter().cloned())
            .collect();
        if drift_ids.is_empty() {
            return Err(JudgmentError::Invalid(format!(
                "incident {} has no drift to accept",
                inc.number
            )));
        }
        for id in &drift_ids {
            let Some(mut d) = get::<DriftRecord>(self.store.as_ref(), C_DRIFT, id)? else {
                continue;
            };
            let hostname = st.hostname(&d.host_id);
            let s = Subject {
                host_id: &d.host_id,
                hostname: hostname.as_deref(),
                class: &d.class,
                key: &d.key,
                ci_id: &d.ci_id,
            };
            if !change.scope.iter().any(|sel| sel.matches(&s)) {
                return Err(JudgmentError::Invalid(format!(
                    "change {change_id}'s scope does not cover {} {} (drift {id})",
                    d.class, d.key
                )));
            }
            d.verdict = Verdict::Authorized {
                change_id: change_id.to_owned(),
            };
            d.open = false;
            d.resolved_at = Some(now);
            d.resolution = Some(format!("accepted by {change_id}"));
            batch.put(C_DRIFT, id, &d);
            change.add_evidence(id);
            if let Some(od) = st.open_drift.remove(&d.ci_id) {
                batch.delete(C_OPEN_DRIFT, &od.ci_id);
            }
        }
        for a in inc.alerts.iter_mut() {
            a.firing = false;
        }
        let n = self.advance_baselines(st, &drift_ids, change_id, batch)?;
        inc.log(
            now,
            &actor.name,
            "accepted",
            format!("drift accepted into the baseline by {change_id} ({n} CIs)"),
        );
        change.updated_at = now;
        batch.put(C_CHANGE, change_id, &change);
        st.changes.insert(change_id.to_owned(), change);
        batch.audit(
            actor,
            "baseline.advance",
            change_id,
            Some("retroactive emergency change closed an incident"),
            serde_json::json!({"incident": inc.number, "cis": n}),
        );
        Ok(())
    }

    // === availability ===

    /// Availability figures over `[from, to)` for one CI (a host's CI or a monitor CI), or
    /// for every host and every CI with an outage.
    pub fn availability(
        &self,
        from: SystemTime,
        to: SystemTime,
        ci: Option<&str>,
    ) -> Result<Vec<AvailabilityFigures>, JudgmentError> {
        let now = SystemTime::now();
        let outages: Vec<Outage> = load_all(self.store.as_ref(), C_OUTAGE, |o: &Outage| {
            o.start < to && o.end.is_none_or(|e| e > from) && ci.is_none_or(|c| o.ci_id == c)
        })?;
        let mut subjects: BTreeMap<String, (String, String, OutageSubject)> = BTreeMap::new();
        {
            let mut st = self.lock();
            self.refresh_hosts(&mut st);
            for (h, info) in &st.hosts {
                let id = host_ci_id(h);
                if ci.is_none_or(|c| c == id) {
                    subjects.insert(
                        id,
                        (
                            h.clone(),
                            info.hostname.clone().unwrap_or_else(|| h.clone()),
                            OutageSubject::Host,
                        ),
                    );
                }
            }
        }
        for o in &outages {
            subjects
                .entry(o.ci_id.clone())
                .or_insert_with(|| (o.host_id.clone(), o.name.clone(), o.subject));
        }
        if let Some(c) = ci
            && subjects.is_empty()
        {
            match self.store.ci(c)? {
                Some(rec) => {
                    let subject = if rec.class == "monitor" {
                        OutageSubject::Monitor
                    } else {
                        OutageSubject::Host
                    };
                    subjects.insert(c.to_owned(), (rec.host_id, rec.key, subject));
                }
                None => return Err(JudgmentError::NotFound(format!("no CI {c}"))),
            }
        }
        Ok(subjects
            .into_iter()
            .map(|(ci_id, (host, name, subject))| {
                figures(&ci_id, &host, &name, subject, &outages, from, to, now)
            })
            .collect())
    }

    /// Outage records overlapping `[from, to)`.
    pub fn outages(&self, from: SystemTime, to: SystemTime) -> Result<Vec<Outage>, JudgmentError> {
        load_all(self.store.as_ref(), C_OUTAGE, |o: &Outage| {
            o.start < to && o.end.is_none_or(|e| e > from)
        })
    }
}

/// Raises the security alert of a deny-listed CI.
fn fire_denied(
    st: &mut State,
    s: &Subject<'_>,
    hostname: Option<String>,
    reason: &str,
    at: SystemTime,
    batch: &mut Batch,
) {
    let (impact, urgency) = criticality(
        &st.policies.criticality,
        s,
        AlertKind::Denied.category().default_criticality(),
    );
    let ev = AlertEvent {
        kind: AlertKind::Denied,
        host_id: s.host_id.to_owned(),
        hostname,
        ci_id: s.ci_id.to_owned(),
        class: s.class.to_owned(),
        key: s.key.to_owned(),
        summary: format!("{} {} is denied: {reason}", s.class, s.key),
        at,
        impact,
        urgency,
        drift_id: None,
    };
    let (number, effect) = fire(st, &ev);
    batch.touch(&number, effect);
}

fn fire(st: &mut State, ev: &AlertEvent) -> (String, Effect) {
    let counters = &mut st.counters;
    st.corr
        .fire(ev, &mut || next(&mut counters.incident, "INC", 7))
}

/// Patches a drift record written earlier in the same step.
fn patch_pending_drift(batch: &mut Batch, id: &str, now: SystemTime, resolution: &str) {
    for op in batch.ops.iter_mut().rev() {
        if let RecordOp::Put {
            collection: C_DRIFT,
            id: pid,
            value,
        } = op
            && pid == id
            && let Ok(mut d) = serde_json::from_slice::<DriftRecord>(value)
        {
            d.open = false;
            d.resolved_at = Some(now);
            d.resolution = Some(resolution.to_owned());
            if let Ok(v) = serde_json::to_vec(&d) {
                *value = v;
            }
            return;
        }
    }
}

fn drift_summary(d: &DriftRecord) -> String {
    let what = match d.deviation.kind {
        DeviationKind::Added => "added".to_owned(),
        DeviationKind::Removed => "removed".to_owned(),
        DeviationKind::Changed => {
            let names: Vec<&str> = d
                .deviation
                .changes
                .iter()
                .take(5)
                .map(|c| c.name.as_str())
                .collect();
            format!("changed ({})", names.join(", "))
        }
    };
    format!("{} {} {what}", d.class, d.key)
}

/// The class of the licence module's deny-list alerts: the policy deny list never
/// recovers them (the licence module clears its own).
pub const LICENSE_ALERT_CLASS: &str = "license";

/// An alert from outside the engine, for [`Judgment::raise_alerts`].
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalAlert {
    /// Its category (capacity, security, …) follows from the kind.
    pub kind: AlertKind,
    pub host_id: String,
    /// The CI the alert is about (the host's CI for host-wide alerts).
    pub ci_id: String,
    /// The dedup key is (host_id, class, key, kind): the same four clear the alert.
    pub class: String,
    pub key: String,
    /// One line for the incident's timeline and title.
    pub summary: String,
    /// When it was observed (an incident's start is its first alert's).
    pub at: SystemTime,
}

/// A waiver request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWaiver {
    pub scope: Vec<String>,
    #[serde(default)]
    pub attributes: Vec<String>,
    pub justification: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub expires_at: SystemTime,
}

/// A person's action on an incident.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum IncidentAction {
    Acknowledge {
        #[serde(default)]
        note: Option<String>,
    },
    Assign {
        assignee: String,
    },
    Resolve {
        note: String,
    },
    Reopen {
        note: String,
    },
    Close {
        #[serde(default)]
        note: String,
        /// A retroactive emergency change accepting the incident's drift.
        #[serde(default)]
        change_id: Option<String>,
    },
}

/// Filter for drift lists.
#[derive(Clone, Debug, Default)]
pub struct DriftQuery {
    pub host: Option<String>,
    pub ci: Option<String>,
    pub verdict: Option<String>,
    pub open: Option<bool>,
    pub change: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

impl DriftQuery {
    fn matches(&self, d: &DriftRecord) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| d.host_id == h || d.hostname.as_deref() == Some(h))
            && self.ci.as_deref().is_none_or(|c| d.ci_id == c)
            && self
                .verdict
                .as_deref()
                .is_none_or(|v| d.verdict.name() == v)
            && self.open.is_none_or(|o| d.open == o)
            && self.change.as_deref().is_none_or(
                |c| matches!(&d.verdict, Verdict::Authorized { change_id } if change_id == c),
            )
    }
}

/// Filter for incident lists.
#[derive(Clone, Debug, Default)]
pub struct IncidentQuery {
    pub state: Option<IncidentState>,
    /// Open = new, acknowledged or in progress.
    pub open: Option<bool>,
    pub category: Option<incidents::Category>,
    pub host: Option<String>,
    pub limit: usize,
}

impl IncidentQuery {
    fn matches(&self, i: &Incident) -> bool {
        self.state.is_none_or(|s| i.state == s)
            && self.open.is_none_or(|o| i.state.is_open() == o)
            && self.category.is_none_or(|c| i.category == c)
            && self
                .host
                .as_deref()
                .is_none_or(|h| i.host_id == h || i.hostname.as_deref() == Some(h))
    }
}

mod stored;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::sled::SledStore;
    use cmdb_proto::convert::timestamp_from_system;
    use cmdb_proto::model::HostIdentity;
    use cmdb_proto::v1;

    /// A step after a full one reads up to `FEED_BATCH_BEHIND`; after a partial one, back
    /// to `FEED_BATCH`; nothing is skipped or judged twice either way.
    #[test]
    fn a_backlog_is_judged_in_larger_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 16 << 20).unwrap());
        let identity = HostIdentity {
            machine_id: Some("mid-1".into()),
            product_uuid: Some("uuid-1".into()),
            ..HostIdentity::default()
        };
        store
            .identify("agt-1", "inst-1", &identity, SystemTime::now())
            .unwrap();
        let n = FEED_BATCH + FEED_BATCH_BEHIND + 500;
        let items = (0..n)
            .map(|i| v1::Item {
                class: "package".into(),
                key: format!("p{i:05}"),
                attrs: [(
                    "version".to_owned(),
                    v1::Value {
                        kind: Some(v1::value::Kind::String(format!("1.{i}"))),
                    },
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let snapshot = v1::Event {
            seq: 1,
            observed_at: Some(timestamp_from_system(SystemTime::now())),
            kind: Some(v1::event::Kind::Snapshot(v1::Snapshot {
                inventory: Some(v1::Inventory {
                    schema: "cmdb.inventory/v1".into(),
                    items,
                    collectors: vec![v1::CollectorStatus {
                        name: "packages".into(),
                        state: v1::CollectorState::Ok as i32,
                        classes: vec!["package".into()],
                        ..Default::default()
                    }],
                    collected_at: Some(timestamp_from_system(SystemTime::now())),
                    agent: Some(v1::AgentInfo {
                        version: "0.1.0".into(),
                        instance_id: "inst-1".into(),
                    }),
                    host: Some(v1::HostIdentity::default()),
                    relations: vec![],
                }),
                content_hash: vec![1; 4],
            })),
        };
        let applied = store.apply("agt-1", &[snapshot]).unwrap();
        assert_eq!(applied.ci_versions, n as u64, "{applied:?}");
        let j =
            Judgment::open(Arc::clone(&store), JudgmentSettings::default(), None, None).unwrap();
        let steps: Vec<usize> = std::iter::from_fn(|| Some(j.process_feed().unwrap()))
            .take_while(|&k| k > 0)
            .collect();
        // The feed also holds the host CI's first version (written by `identify`).
        assert_eq!(steps, [FEED_BATCH, FEED_BATCH_BEHIND, 501]);
        assert!(!j.lock().behind);
    }

    #[test]
    fn external_alerts_open_update_and_resolve_one_incident() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 16 << 20).unwrap());
        let j = Judgment::open(store, JudgmentSettings::default(), None, None).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let alert = ExternalAlert {
            kind: AlertKind::Capacity,
            host_id: "h1".into(),
            ci_id: host_ci_id("h1"),
            class: "filesystem".into(),
            key: "/var".into(),
            summary: "/var full in 5 days".into(),
            at,
        };
        let first = j.raise_alerts(std::slice::from_ref(&alert)).unwrap();
        // Re-raising the firing key lands on the same incident.
        let again = j
            .raise_alerts(&[ExternalAlert {
                at: at + Duration::from_secs(3600),
                ..alert.clone()
            }])
            .unwrap();
        assert_eq!(first, again);
        let inc = j.incident(&first[0]).unwrap();
        assert_eq!(inc.category, incidents::Category::Capacity);
        assert!(inc.state.is_open());
        // Clearing an unknown key does nothing; clearing the key resolves the incident.
        j.clear_alerts(
            &[(
                "h2".into(),
                "filesystem".into(),
                "/var".into(),
                AlertKind::Capacity,
            )],
            at,
            "x",
        )
        .unwrap();
        assert!(j.incident(&first[0]).unwrap().state.is_open());
        j.clear_alerts(
            &[(
                "h1".into(),
                "filesystem".into(),
                "/var".into(),
                AlertKind::Capacity,
            )],
            at + Duration::from_secs(7200),
            "forecast no longer at risk",
        )
        .unwrap();
        assert_eq!(
            j.incident(&first[0]).unwrap().state,
            IncidentState::Resolved
        );
    }

    /// An incident stored apart (header, alerts, timeline) comes back whole in an engine
    /// opened on the same store, which goes on writing it step by step; a closed one is
    /// read from the store alone.
    #[test]
    fn incidents_come_back_whole_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 16 << 20).unwrap());
        let open =
            || Judgment::open(Arc::clone(&store), JudgmentSettings::default(), None, None).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let alert = |key: &str, secs: u64| ExternalAlert {
            kind: AlertKind::Capacity,
            host_id: "h1".into(),
            ci_id: host_ci_id("h1"),
            class: "filesystem".into(),
            key: key.into(),
            summary: format!("{key} full in 5 days"),
            at: at + Duration::from_secs(secs),
        };
        let j = open();
        let number = j.raise_alerts(&[alert("/var", 0)]).unwrap().remove(0);
        for (i, key) in ["/srv", "/home", "/var"].into_iter().enumerate() {
            j.raise_alerts(&[alert(key, 10 * (i as u64 + 1))]).unwrap();
        }
        let before = j.incident(&number).unwrap();
        assert_eq!(before.alerts.len(), 3);
        drop(j);

        let j = open();
        assert_eq!(j.incident(&number).unwrap(), before);
        assert_eq!(
            j.lock().stored.get(&number),
            Some(&stored::Shape::of(&before))
        );
        j.raise_alerts(&[alert("/opt", 100)]).unwrap();
        let key = |k: &str| {
            (
                "h1".to_owned(),
                "filesystem".to_owned(),
                k.to_owned(),
                AlertKind::Capacity,
            )
        };
        j.clear_alerts(
            &[key("/var"), key("/srv"), key("/home"), key("/opt")],
            at + Duration::from_secs(200),
            "no longer at risk",
        )
        .unwrap();
        let resolved = j.incident(&number).unwrap();
        assert_eq!(resolved.state, IncidentState::Resolved);
        assert_eq!(resolved.alerts.len(), 4);
        let closed = j
            .act_on_incident(
                &Actor::engine(),
                &number,
                IncidentAction::Close {
                    note: "done".into(),
                    change_id: None,
                },
            )
            .unwrap();
        assert!(j.lock().stored.is_empty());
        // Closed, it is read from the store (whose times are whole seconds).
        let closed_read = j.incident(&number).unwrap();
        assert_eq!(closed_read.alerts, closed.alerts);
        assert_eq!(closed_read.timeline.len(), closed.timeline.len());
        assert_eq!(closed_read.state, IncidentState::Closed);
        let closed = closed_read;
        drop(j);

        let j = open();
        assert!(!j.lock().corr.incidents.contains_key(&number));
        assert_eq!(j.incident(&number).unwrap(), closed);
        let listed = j
            .incidents(&IncidentQuery {
                state: Some(IncidentState::Closed),
                limit: 10,
                ..IncidentQuery::default()
            })
            .unwrap();
        assert_eq!(listed, vec![closed]);
    }
}
