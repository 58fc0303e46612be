//! ISO/IEC 20000 configuration audit: the authorised register against the live CMDB.
//!
//! **Register** ([`register`]): rows of (class, natural key, host — a hostname or a host
//! id — and expected attributes), imported from CSV or JSON. An import replaces the whole
//! register atomically (one `write_records`) or is refused whole, naming each bad row.
//! Stored in the record collection `audit_register` as JSON chunks (`chunk-NNNNNN`, each
//! under [`CHUNK_BYTES`]) plus a `meta` record, and held in memory for runs in the compact
//! form [`register::Register`].
//!
//! **Scope.** The audited classes are those present in the register; the audited hosts
//! are those the register names (a hostname names every host with that name, compared
//! case-insensitively; a host id names that host). A run ([`engine`]) reads the CIs of
//! each audited class with the store's bulk scan (`Store::scan_class`, absent ones
//! included; [`engine::SHARDS`] scans at once, each over its part of the hosts, each
//! feeding its own observer) and finds:
//! - **missing**: a register row with no CI of that (host, class, key) seen live: a CI is
//!   seen live when present, or absent but last seen within `missing_after_days` (default
//!   [`DEFAULT_MISSING_AFTER_DAYS`]; 0 = present only). A row whose host the CMDB does
//!   not know is missing.
//! - **unregistered**: a present CI of an audited class on an audited host with no row
//!   (for class `host`, on any host: registering hosts audits the whole fleet's hosts).
//! - **mismatched**: a CI seen live whose attribute differs from the row's expected value
//!   (one deficiency per attribute; an attribute the CI lacks differs). Strings compare
//!   exactly; a string expectation (CSV cells are strings) matches a number or boolean
//!   whose text it is.
//!
//! **Runs** are stored in `audit_runs` (`run-NNNNNN`: times, summary, per-class counts)
//! and their deficiencies in `audit_defs` (`run-NNNNNN/NNNNNN`, chunks of
//! [`DEFS_PER_CHUNK`]), at most [`MAX_STORED_DEFICIENCIES`] per run (the summary counts
//! are exact; `truncated` says when the list is not) and the last [`MAX_RUNS`] runs (older
//! ones are deleted with the next run). Deficiencies are sorted by (kind, class, host,
//! key, attribute) and numbered `d-NNNNNN`. Each carries a corrective-action state that
//! moves forward only: open → action_taken → verified (or open → verified).
//!
//! Every write (import, run, state change) is appended to the audit log first when an
//! [`AuditSink`] is given: no audit entry, no change. [`ConfigAudit`] implements
//! [`ComplianceSource`] from the latest run. Reports ([`report`]): JSON, CSV, and one
//! self-contained HTML page.

pub mod engine;
mod fxhash;
pub mod register;
pub mod report;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::compliance::{ComplianceFailure, ComplianceReport, ComplianceRow, ComplianceSource};
use crate::judgment::{Actor, AuditSink};
use crate::store::{RecordOp, ScanPart, Store, StoreError};
use engine::{ClassCount, Found, Hosts, Index, Kind, SHARDS, Summary};
use register::{ImportError, Register, RegisterRow};

/// Register collection.
pub const REGISTER: &str = "audit_register";
/// Run collection.
pub const RUNS: &str = "audit_runs";
/// Deficiency collection.
pub const DEFS: &str = "audit_defs";
/// Largest register chunk record.
pub const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Deficiencies per stored chunk.
pub const DEFS_PER_CHUNK: usize = 5_000;
/// Deficiencies stored per run.
pub const MAX_STORED_DEFICIENCIES: usize = 100_000;
/// Runs kept.
pub const MAX_RUNS: usize = 100;
/// Default grace for absent CIs.
pub const DEFAULT_MISSING_AFTER_DAYS: u64 = 7;
/// Largest `missing_after_days`.
pub const MAX_MISSING_AFTER_DAYS: u64 = 3650;
/// Longest note on a deficiency.
pub const MAX_NOTE_BYTES: usize = 4096;

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("{0}")]
    NotFound(String),
    /// A state change that does not move forward.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("corrupt audit record {id}: {reason}")]
    Corrupt { id: String, reason: String },
}

/// A deficiency's corrective-action state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefState {
    Open,
    ActionTaken,
    Verified,
}

impl DefState {
    pub fn as_str(self) -> &'static str {
        match self {
            DefState::Open => "open",
            DefState::ActionTaken => "action_taken",
            DefState::Verified => "verified",
        }
    }
}

/// One stored deficiency (a flat object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deficiency {
    pub id: String,
    pub kind: Kind,
    pub class: String,
    pub key: String,
    pub host: String,
    pub host_id: Option<String>,
    pub ci_id: Option<String>,
    pub attribute: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
    pub state: DefState,
    pub note: String,
    #[serde(with = "crate::store::opt_time")]
    pub updated_at: Option<SystemTime>,
    pub updated_by: Option<String>,
}

/// A run without its deficiencies (what `audit_runs` stores and the list shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: String,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "cmdb_proto::model::rfc3339")]
    pub finished_at: SystemTime,
    pub started_by: String,
    pub missing_after_days: u64,
    pub summary: Summary,
    pub classes: Vec<ClassCount>,
    /// Deficiencies found.
    pub deficiencies_total: u64,
    /// Fewer were stored (see [`MAX_STORED_DEFICIENCIES`]).
    pub truncated: bool,
    pub millis: u64,
}

/// A run with its deficiencies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    #[serde(flatten)]
    pub info: RunInfo,
    pub deficiencies: Vec<Deficiency>,
}

/// The stored register's description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterMeta {
    pub rows: u64,
    pub chunks: u64,
    #[serde(with = "crate::store::opt_time", default)]
    pub imported_at: Option<SystemTime>,
    #[serde(default)]
    pub imported_by: Option<String>,
}

/// The configuration audit service (see the module doc).
pub struct ConfigAudit {
    store: Arc<dyn Store>,
    audit: Option<Arc<dyn AuditSink>>,
    register: RwLock<(RegisterMeta, Arc<Register>)>,
    /// Runs, oldest first.
    runs: Mutex<Vec<RunInfo>>,
    /// One write (import, run, state change) at a time.
    writing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn corrupt(id: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    }
}

fn chunk_id(n: u64) -> String {
    format!("chunk-{n:06}")
}

fn def_chunk_id(run: &str, n: usize) -> String {
    format!("{run}/{n:06}")
}

/// The chunk index of `d-NNNNNN`.
fn def_index(id: &str) -> Option<usize> {
    let n: usize = id.strip_prefix("d-")?.parse().ok()?;
    n.checked_sub(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConfigAudit {
    /// Loads the stored register and run list.
    pub fn open(
        store: Arc<dyn Store>,
        audit: Option<Arc<dyn AuditSink>>,
    ) -> Result<ConfigAudit, AuditError> {
        let meta: RegisterMeta = match store.record(REGISTER, "meta")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("meta", e))?,
            None => RegisterMeta::default(),
        };
        let mut rows = Register::default();
        for n in 0..meta.chunks {
            let id = chunk_id(n);
            let b = store
                .record(REGISTER, &id)?
                .ok_or_else(|| corrupt(&id, "the chunk is missing"))?;
            let chunk: Vec<RegisterRow> =
                serde_json::from_slice(&b).map_err(|e| corrupt(&id, e))?;
            for r in &chunk {
                rows.push(r);
            }
        }
        let mut runs = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.records(RUNS, after.as_deref(), 500)?;
            for (id, b) in &page {
                runs.push(serde_json::from_slice::<RunInfo>(b).map_err(|e| corrupt(id, e))?);
            }
            match page.last() {
                Some((id, _)) if page.len() >= 500 => after = Some(id.clone()),
                _ => break,
            }
        }
        Ok(ConfigAudit {
            store,
            audit,
            register: RwLock::new((meta, Arc::new(rows))),
            runs: Mutex::new(runs),
            writing: Mutex::new(()),
        })
    }

    fn audit_log(
        &self,
        actor: &Actor,
        action: &str,
        details: serde_json::Value,
    ) -> Result<(), AuditError> {
        match &self.audit {
            Some(a) => a
                .append(actor, action, "config_audit", None, details)
                .map_err(AuditError::Audit),
            None => Ok(()),
        }
    }

    /// The register as stored: its description and rows.
    pub fn register(&self) -> (RegisterMeta, Arc<Register>) {
        match self.register.read() {
            Ok(g) => (g.0.clone(), Arc::clone(&g.1)),
            Err(p) => {
                let g = p.into_inner();
                (g.0.clone(), Arc::clone(&g.1))
            }
        }
    }

    /// Replaces the register with `rows` (already parsed, so complete). Returns the count.
    pub fn import(
        &self,
        actor: &Actor,
        rows: impl Into<Register>,
        now: SystemTime,
    ) -> Result<u64, AuditError> {
        let rows: Register = rows.into();
        if rows.len() > register::MAX_ROWS {
            return Err(AuditError::Invalid(format!(
                "more than {} register rows",
                register::MAX_ROWS
            )));
        }
        let _w = lock(&self.writing);
        let (old, _) = self.register();
        let mut ops = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
        let flush = |buf: &mut Vec<u8>, ops: &mut Vec<RecordOp>| {
            if !buf.is_empty() {
                buf.push(b']');
                ops.push(RecordOp::Put {
                    collection: REGISTER,
                    id: chunk_id(ops.len() as u64),
                    value: std::mem::take(buf),
                });
            }
        };
        for r in (0..rows.len()).filter_map(|i| rows.row(i)) {
            let one = serde_json::to_vec(&r).map_err(|e| AuditError::Invalid(e.to_string()))?;
            if !buf.is_empty() && buf.len() + one.len() + 2 > CHUNK_BYTES {
                flush(&mut buf, &mut ops);
            }
            buf.push(if buf.is_empty() { b'[' } else { b',' });
            buf.extend_from_slice(&one);
        }
        flush(&mut buf, &mut ops);
        let chunks = ops.len() as u64;
        for n in chunks..old.chunks {
            ops.push(RecordOp::Delete {
                collection: REGISTER,
                id: chunk_id(n),
            });
        }
        let meta = RegisterMeta {
            rows: rows.len() as u64,
            chunks,
            imported_at: Some(now),
            imported_by: Some(actor.name.clone()),
        };
        ops.push(RecordOp::Put {
            collection: REGISTER,
            id: "meta".into(),
            value: serde_json::to_vec(&meta).map_err(|e| AuditError::Invalid(e.to_string()))?,
        });
        self.audit_log(
            actor,
            "audit.register.import",
            serde_json::json!({ "rows": rows.len() }),
        )?;
        self.store.write_records(&ops)?;
        let n = meta.rows;
        let rows = Arc::new(rows);
        match self.register.write() {
            Ok(mut g) => *g = (meta, rows),
            Err(p) => *p.into_inner() = (meta, rows),
        }
        Ok(n)
    }

    /// Runs the list (oldest first).
    pub fn runs(&self) -> Vec<RunInfo> {
        lock(&self.runs).clone()
    }

    /// The latest run's description.
    pub fn latest(&self) -> Option<RunInfo> {
        lock(&self.runs).last().cloned()
    }

    fn info(&self, id: &str) -> Result<RunInfo, AuditError> {
        lock(&self.runs)
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| AuditError::NotFound(format!("no audit run {id}")))
    }

    fn stored_defs(info: &RunInfo) -> usize {
        usize::try_from(info.deficiencies_total)
            .unwrap_or(usize::MAX)
            .min(MAX_STORED_DEFICIENCIES)
    }

    fn chunk(&self, run: &str, n: usize) -> Result<Vec<Deficiency>, AuditError> {
        let id = def_chunk_id(run, n);
        let b = self
            .store
            .record(DEFS, &id)?
            .ok_or_else(|| corrupt(&id, "the chunk is missing"))?;
        serde_json::from_slice(&b).map_err(|e| corrupt(&id, e))
    }

    /// One run with its stored deficiencies.
    pub fn run(&self, id: &str) -> Result<Run, AuditError> {
        let info = self.info(id)?;
        let stored = Self::stored_defs(&info);
        let mut deficiencies = Vec::with_capacity(stored);
        for n in 0..stored.div_ceil(DEFS_PER_CHUNK) {
            deficiencies.append(&mut self.chunk(id, n)?);
        }
        Ok(Run { info, deficiencies })
    }

    /// Runs an audit now. Blocking.
    pub fn run_audit(
        &self,
        actor: &Actor,
        missing_after_days: Option<u64>,
        now: SystemTime,
    ) -> Result<RunInfo, AuditError> {
        let days = missing_after_days.unwrap_or(DEFAULT_MISSING_AFTER_DAYS);
        if days > MAX_MISSING_AFTER_DAYS {
            return Err(AuditError::Invalid(format!(
                "missing_after_days must be from 0 to {MAX_MISSING_AFTER_DAYS}"
            )));
        }
        let _w = lock(&self.writing);
        let started = std::time::Instant::now();
        let (_, rows) = self.register();
        let mut hosts = Hosts::default();
        for a in self.store.agents()? {
            if let Some(h) = &a.host_id {
                hosts.add(h, a.hostname.as_deref());
            }
        }
        let cutoff = now
            .checked_sub(Duration::from_secs(days * 86_400))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let index = Index::new(&rows, &hosts, cutoff);
        let classes = index.classes();
        let store = self.store.as_ref();
        let observers = std::thread::scope(|s| {
            let parts: Vec<_> = (0..SHARDS)
                .map(|index_of| {
                    let (index, classes) = (&index, &classes);
                    s.spawn(move || {
                        let part = ScanPart {
                            index: index_of,
                            of: SHARDS,
                        };
                        let mut o = index.observer();
                        for class in classes {
                            store.scan_class(class, part, &mut |ci| o.observe(ci))?;
                        }
                        Ok::<_, StoreError>(o)
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let outcome = index.finish(observers);
        let finished = SystemTime::now().max(now);
        let id = {
            let runs = lock(&self.runs);
            let last = runs
                .last()
                .and_then(|r| r.id.strip_prefix("run-"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            format!("run-{:06}", last + 1)
        };
        let total = outcome.found.len();
        let info = RunInfo {
            id: id.clone(),
            started_at: now,
            finished_at: finished,
            started_by: actor.name.clone(),
            missing_after_days: days,
            summary: outcome.summary,
            classes: outcome.classes,
            deficiencies_total: total as u64,
            truncated: total > MAX_STORED_DEFICIENCIES,
            millis: millis(started.elapsed()),
        };
        let mut ops = Vec::new();
        let stored: Vec<Deficiency> = outcome
            .found
            .into_iter()
            .take(MAX_STORED_DEFICIENCIES)
            .enumerate()
            .map(|(i, f)| deficiency(i, f))
            .collect();
        for (n, chunk) in stored.chunks(DEFS_PER_CHUNK).enumerate() {
            ops.push(RecordOp::Put {
                collection: DEFS,
                id: def_chunk_id(&id, n),
                value: serde_json::to_vec(chunk).map_err(|e| AuditError::Invalid(e.to_string()))?,
            });
        }
        ops.push(RecordOp::Put {
            collection: RUNS,
            id: id.clone(),
            value: serde_json::to_vec(&info).map_err(|e| AuditError::Invalid(e.to_string()))?,
        });
        // Forget the oldest runs beyond MAX_RUNS.
        let old: Vec<RunInfo> = {
            let runs = lock(&self.runs);
            let excess = (runs.len() + 1).saturating_sub(MAX_RUNS);
            runs[..excess].to_vec()
        };
        for r in &old {
            ops.push(RecordOp::Delete {
                collection: RUNS,
                id: r.id.clone(),
            });
            for n in 0..Self::stored_defs(r).div_ceil(DEFS_PER_CHUNK) {
                ops.push(RecordOp::Delete {
                    collection: DEFS,
                    id: def_chunk_id(&r.id, n),
                });
            }
        }
        self.audit_log(
            actor,
            "audit.run",
            serde_json::json!({
                "run": id,
                "missing_after_days": days,
                "summary": info.summary,
            }),
        )?;
        self.store.write_records(&ops)?;
        let mut runs = lock(&self.runs);
        let drop_n = old.len().min(runs.len());
        runs.drain(..drop_n);
        runs.push(info.clone());
        Ok(info)
    }

    /// Moves one deficiency forward (open → action_taken → verified).
    pub fn set_state(
        &self,
        actor: &Actor,
        run: &str,
        def: &str,
        state: DefState,
        note: Option<String>,
        now: SystemTime,
    ) -> Result<Deficiency, AuditError> {
        if let Some(n) = &note
            && (n.len() > MAX_NOTE_BYTES || n.chars().any(|c| c.is_control() && c != '\n'))
        {
            return Err(AuditError::Invalid(format!(
                "the note must be at most {MAX_NOTE_BYTES} bytes without control characters"
            )));
        }
        let _w = lock(&self.writing);
        let info = self.info(run)?;
        let missing = || AuditError::NotFound(format!("no deficiency {def} in run {run}"));
        let i = def_index(def).ok_or_else(missing)?;
        if i >= Self::stored_defs(&info) {
            return Err(missing());
        }
        let n = i / DEFS_PER_CHUNK;
        let mut chunk = self.chunk(run, n)?;
        let d = chunk.get_mut(i % DEFS_PER_CHUNK).ok_or_else(missing)?;
        if state <= d.state {
            return Err(AuditError::Conflict(format!(
                "deficiency {def} is {}; it can only move forward (open → action_taken → verified)",
                d.state.as_str()
            )));
        }
        let from = d.state;
        d.state = state;
        if let Some(note) = note {
            d.note = note;
        }
        d.updated_at = Some(now);
        d.updated_by = Some(actor.name.clone());
        let out = d.clone();
        self.audit_log(
            actor,
            "audit.deficiency.update",
            serde_json::json!({
                "run": run, "deficiency": def, "from": from.as_str(),
                "to": state.as_str(), "note": out.note,
            }),
        )?;
        self.store.write_records(&[RecordOp::Put {
            collection: DEFS,
            id: def_chunk_id(run, n),
            value: serde_json::to_vec(&chunk).map_err(|e| AuditError::Invalid(e.to_string()))?,
        }])?;
        Ok(out)
    }

    /// The compliance position of the latest run (see [`crate::compliance`]).
    pub fn compliance(&self) -> Result<Option<ComplianceReport>, AuditError> {
        let Some(info) = self.latest() else {
            return Ok(None);
        };
        let run = self.run(&info.id)?;
        Ok(Some(compliance_of(&run)))
    }
}

/// The compliance report of a run.
pub fn compliance_of(run: &Run) -> ComplianceReport {
    let classes = run
        .info
        .classes
        .iter()
        .map(|c| ComplianceRow {
            class: c.class.clone(),
            healthy: c.healthy,
            total: c.registered + c.unregistered,
        })
        .collect();
    let mut failing: Vec<ComplianceFailure> = Vec::new();
    let mut mismatched: std::collections::BTreeMap<(String, String, String), (usize, Vec<String>)> =
        std::collections::BTreeMap::new();
    for d in &run.deficiencies {
        match d.kind {
            Kind::Missing | Kind::Unregistered => failing.push(ComplianceFailure {
                ci_id: d.ci_id.clone(),
                class: d.class.clone(),
                key: d.key.clone(),
                host_id: d.host_id.clone(),
                reason: d.kind.as_str().to_owned(),
            }),
            Kind::Mismatched => {
                let k = (d.class.clone(), d.host.clone(), d.key.clone());
                let slot = mismatched.entry(k).or_insert_with(|| {
                    failing.push(ComplianceFailure {
                        ci_id: d.ci_id.clone(),
                        class: d.class.clone(),
                        key: d.key.clone(),
                        host_id: d.host_id.clone(),
                        reason: String::new(),
                    });
                    (failing.len() - 1, Vec::new())
                });
                slot.1.push(d.attribute.clone().unwrap_or_default());
            }
        }
    }
    for (i, attrs) in mismatched.into_values() {
        failing[i].reason = format!("mismatched: {}", attrs.join(", "));
    }
    ComplianceReport {
        run_id: run.info.id.clone(),
        finished_at: run.info.finished_at,
        classes,
        failing,
    }
}

impl ComplianceSource for ConfigAudit {
    fn latest(&self) -> Result<Option<ComplianceReport>, String> {
        self.compliance().map_err(|e| e.to_string())
    }

    fn latest_run_id(&self) -> Option<String> {
        self.latest().map(|r| r.id)
    }
}

fn deficiency(i: usize, f: Found) -> Deficiency {
    Deficiency {
        id: format!("d-{:06}", i + 1),
        kind: f.kind,
        class: f.class,
        key: f.key,
        host: f.host,
        host_id: f.host_id,
        ci_id: f.ci_id,
        attribute: f.attribute,
        expected: f.expected,
        actual: f.actual,
        state: DefState::Open,
        note: String::new(),
        updated_at: None,
        updated_by: None,
    }
}

#[cfg(test)]
mod tests;
