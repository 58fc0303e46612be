//! The audit log: every CMDB mutation (API writes, automatic incident changes) as one entry
//! of an append-only, hash-chained JSON-lines file, `<data_dir>/audit/audit.log`, whose head
//! is anchored in the store. [`AuditLog::verify`] (behind `cmdbctl audit-log verify`)
//! recomputes the chain.
//!
//! # Format (design)
//!
//! One entry per line, fields in this order:
//! `{"seq":1,"at":"2026-01-02T03:04:05.678Z","actor":"alice","role":"change-manager",
//! "action":"change.approve","object":"CHG0000012","why":null,"details":{…},
//! "prev_hash":"<64 hex>","hash":"<64 hex>"}`.
//! - `seq` starts at 1 and increases by one; `prev_hash` is the previous entry's `hash`, 64
//!   zeros for seq 1.
//! - `hash` = lowercase hex SHA-256 of the entry's *canonical* form: the same object without
//!   `hash`, fields in the order above, no whitespace, `details` with object keys sorted by
//!   their UTF-8 bytes at every depth, strings escaped as JSON requires and nothing more
//!   (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters as `\u00xx`),
//!   numbers as serde_json prints them. The line written is exactly that canonical form
//!   with `,"hash":"<hex>"` before its closing brace, so a verifier takes the line, cuts the
//!   trailing `,"hash":"<64 hex>"}`, appends `}` and hashes those bytes. Hashing the bytes
//!   as written (rather than re-serialising parsed values) keeps verification exact for
//!   floats, whose text a JSON parser need not reproduce; the price is that any byte
//!   change, even re-indenting, counts as an edit.
//! - The anchor: after each append, record `audit/head` in the store holds
//!   `{"seq":…,"hash":…}` of the last entry, so cutting entries off the end of the file
//!   (which leaves a valid chain behind) is detected too.
//!
//! # Promises
//!
//! - **One writer**: the file is `flock`ed exclusively while open; a second
//!   [`AuditLog::open`] of it fails with [`AuditError::Locked`].
//! - **Durable**: [`AuditLog::append`] returns only after its line was written in one write
//!   and `fdatasync`ed. Appends are serialised by a mutex, so seqs have no gaps. A failed
//!   write is cut back off the file; a failed fsync stops all further appends (the page
//!   cache can no longer be trusted) until the collector restarts.
//! - The anchor is written after the fsync. If the store fails, append still succeeds (the
//!   entry is durable in the file), logs at ERROR, and the next append re-anchors.
//! - [`AuditLog::open`] continues the chain from the last line. A torn last line (no line
//!   end: a crash mid-write, never acknowledged) is cut off with a WARN naming its byte
//!   offset. A file exactly one entry ahead of the anchor (a crash between the fsync and the
//!   anchor) is re-anchored. Any other disagreement with the anchor (a cut-off tail, a
//!   replaced file) is logged at ERROR and recorded in the chain itself as an
//!   `audit.anchor_mismatch` entry, which every later verify reports: evidence of tampering
//!   is never erased by carrying on.
//! - Reads ([`AuditLog::verify`], [`AuditLog::entries`]) stream the file line by line with a
//!   bounded line length and bounded bookkeeping: memory does not grow with the log.
//!
//! # What verify can and cannot detect
//!
//! It detects, and names by seq and line: an edited entry (its hash no longer matches), an
//! entry rewritten with a recomputed hash (the next entry's `prev_hash`, or the anchor, no
//! longer matches), removed entries (a seq gap), inserted, duplicated or reordered entries,
//! malformed lines, a torn last line, and a tail cut off behind the anchor. It cannot
//! detect an attacker who can write both the file and the store: the chain has no secret,
//! so rewriting everything from some entry to the end *and* the anchor yields a valid log.
//! Nor can it detect entries appended with valid hashes while the anchor is also advanced.
//! When only the file's tail was rewritten consistently, the anchor shows that the head
//! differs but cannot say which entry was first changed. Detection is by comparison with
//! the store's anchor, so a log whose anchor was lost can no longer be checked at its end
//! (reported as `unanchored`).
//!
//! Blocking API (file I/O and fsync): async callers use `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{RecordOp, Store, StoreError};

#[cfg(test)]
mod tests;

/// The log's directory under the data directory.
pub const AUDIT_DIR: &str = "audit";
/// The log's file name.
pub const AUDIT_FILE: &str = "audit.log";
/// Store collection of the anchor.
pub const ANCHOR_COLLECTION: &str = "audit";
/// Record id of the anchor.
pub const ANCHOR_ID: &str = "head";
/// `prev_hash` of seq 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Largest entry (one line) accepted by `append`.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Longest line a reader looks at; longer ones are reported malformed, unread.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most entries one [`AuditLog::entries`] call returns.
pub const MAX_PAGE: usize = 1000;
/// Most problems one verify report lists (the rest are counted).
pub const MAX_PROBLEMS: usize = 1000;
/// Actor of the entries the collector writes about the log itself.
pub const SYSTEM_ACTOR: &str = "cmdb-collector";
/// Role of [`SYSTEM_ACTOR`].
pub const SYSTEM_ROLE: &str = "system";
/// Action of the entry recording that the log disagreed with its anchor at open.
pub const ANCHOR_MISMATCH_ACTION: &str = "audit.anchor_mismatch";

/// Out-of-order entries and single removals a verify remembers to pair them up later.
const MAX_PENDING: usize = 1024;
/// Bytes of a torn line quoted in the log.
const TORN_PREVIEW: u64 = 200;

/// What a caller records: who did what to which object, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// The principal's name (a token's owner, an agent id, or [`SYSTEM_ACTOR`]).
    pub actor: String,
    /// The principal's role: viewer, operator, change-manager, auditor, admin or system.
    pub role: String,
    /// Dotted verb, e.g. `change.approve`, `baseline.capture`, `incident.open`.
    pub action: String,
    /// What was changed: a change number, a CI id, a baseline name.
    pub object: String,
    /// The stated reason, if any.
    pub why: Option<String>,
    /// Anything else worth keeping (a JSON value; `null` when nothing).
    pub details: Value,
}

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "millis")]
    pub at: SystemTime,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub object: String,
    pub why: Option<String>,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The store's record of the log's head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

/// The outcome of a verify.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditVerifyReport {
    /// Lines that parsed as entries.
    pub entries: u64,
    /// The seq the chain reached.
    pub head_seq: u64,
    /// The seq the store's anchor records, if it has one.
    pub anchor_seq: Option<u64>,
    /// No problems.
    pub ok: bool,
    /// In file order, at most [`MAX_PROBLEMS`].
    pub problems: Vec<AuditProblem>,
    /// Problems beyond [`MAX_PROBLEMS`], not listed.
    pub omitted_problems: u64,
}

/// One thing wrong with the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditProblem {
    /// The entry concerned, when known.
    pub seq: Option<u64>,
    /// 1-based line of the file (for a cut-off tail: the first missing line).
    pub line: usize,
    pub kind: AuditProblemKind,
    /// What was found, naming seq and line, e.g. "seq 17 (line 17): hash mismatch".
    pub message: String,
}

/// The kinds of [`AuditProblem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditProblemKind {
    /// An entry's content changed (its own hash, or the chain after it, says so).
    Edited,
    /// Entries are missing from the middle of the chain.
    Removed,
    /// An entry that does not belong where it is: out of order, duplicated or forged.
    Inserted,
    /// A line that is not an audit entry.
    Malformed,
    /// The end of the log is missing: a torn last line, or entries cut off behind the anchor.
    Truncated,
    /// The store has no anchor, so a cut-off end cannot be detected.
    Unanchored,
}

impl std::fmt::Display for AuditProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Edited => "edited",
            Self::Removed => "removed",
            Self::Inserted => "inserted",
            Self::Malformed => "malformed",
            Self::Truncated => "truncated",
            Self::Unanchored => "unanchored",
        })
    }
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// An audit log failure.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading, writing or syncing the log file failed.
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store holding the anchor failed.
    #[error("audit log anchor: {0}")]
    Store(#[from] StoreError),
    /// The entry is larger than [`MAX_ENTRY_BYTES`].
    #[error("audit entry of {bytes} bytes exceeds the limit of {MAX_ENTRY_BYTES}")]
    TooLarge { bytes: usize },
    /// The event lacks a required field, or its time is before 1970 or after 9999.
    #[error("audit event needs a valid {field}")]
    Invalid { field: &'static str },
    /// Another process has the log open for appending.
    #[error(
        "audit log {path} is locked by another process (a second collector on this data directory?)"
    )]
    Locked { path: PathBuf },
    /// An earlier fsync failed; appends are refused until the collector restarts.
    #[error("audit log refuses appends until the collector restarts: {reason}")]
    Poisoned { reason: String },
}

/// The open log. Share it behind an `Arc`; all methods take `&self`.
pub struct AuditLog {
    path: PathBuf,
    store: Arc<dyn Store>,
    head: Mutex<Head>,
}

/// The writer's state, under the mutex.
struct Head {
    file: File,
    seq: u64,
    hash: String,
    /// Bytes of complete lines in the file.
    len: u64,
    /// Set when an fsync failed.
    poisoned: Option<String>,
}

// === impl AuditLog ===

impl AuditLog {
    /// Opens (creating) `<data_dir>/audit/audit.log` and continues its chain; see the module
    /// docs for torn lines and anchor disagreements.
    pub fn open(data_dir: &Path, store: Arc<dyn Store>) -> Result<Self, AuditError> {
        let dir = data_dir.join(AUDIT_DIR);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        let path = dir.join(AUDIT_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        // One writer per file: a second collector on the same data directory would fork the
        // chain. The lock lives as long as the file handle.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked { path });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(AuditError::Io { path, source });
            }
        }
        if !existed {
            // The new file's directory entry must survive a crash too.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&dir))?;
        }
        let len = cut_torn_tail(&file, &path).map_err(io(&path))?;
        let last = last_entry(&file, &path, len).map_err(io(&path))?;
        let log = Self {
            path: path.clone(),
            store,
            head: Mutex::new(Head {
                file,
                seq: last.as_ref().map_or(0, |l| l.seq),
                hash: last
                    .as_ref()
                    .map_or_else(|| GENESIS_HASH.to_owned(), |l| l.hash.clone()),
                len,
                poisoned: None,
            }),
        };
        log.reconcile_anchor(last.as_ref())?;
        Ok(log)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq and hash of the last entry (0 and [`GENESIS_HASH`] when empty).
    pub fn head(&self) -> (u64, String) {
        let head = self.lock();
        (head.seq, head.hash.clone())
    }

    /// Appends `event` now; returns once the entry is durable.
    pub fn append(&self, event: AuditEvent) -> Result<AuditEntry, AuditError> {
        self.append_at(event, SystemTime::now())
    }

    /// Appends `event` with the time `at` (kept to the millisecond).
    pub fn append_at(&self, event: AuditEvent, at: SystemTime) -> Result<AuditEntry, AuditError> {
        if event.actor.is_empty() {
            return Err(AuditError::Invalid { field: "actor" });
        }
        if event.action.is_empty() {
            return Err(AuditError::Invalid { field: "action" });
        }
        // RFC 3339 covers 1970..=9999 here; formatting outside that range would panic.
        let in_range = at
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() <= 253_402_300_799);
        if !in_range {
            return Err(AuditError::Invalid { field: "at" });
        }
        let at_text = humantime::format_rfc3339_millis(at).to_string();
        let at = humantime::parse_rfc3339(&at_text).unwrap_or(at);
        let mut head = self.lock();
        if let Some(reason) = &head.poisoned {
            return Err(AuditError::Poisoned {
                reason: reason.clone(),
            });
        }
        let seq = head.seq + 1;
        let fields = Fields {
            seq,
            at: &at_text,
            actor: &event.actor,
            role: &event.role,
            action: &event.action,
            object: &event.object,
            why: event.why.as_deref(),
            details: &event.details,
            prev_hash: &head.hash,
        };
        let canonical = fields.canonical();
        let hash = sha256_hex(canonical.as_bytes());
        let line = line_of(&canonical, &hash);
        if line.len() > MAX_ENTRY_BYTES {
            return Err(AuditError::TooLarge { bytes: line.len() });
        }
        if let Err(source) = head.file.write_all(line.as_bytes()) {
            // Cut a partial line back off, so the next append starts on a line of its own.
            let back = head.len;
            if let Err(e) = head.file.set_len(back).and_then(|()| head.file.sync_data()) {
                head.poisoned = Some(format!(
                    "a failed write could not be cut back to byte {back}: {e}"
                ));
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                source,
            });
        }
        if let Err(source) = head.file.sync_data() {
            head.poisoned = Some(format!("fsync failed: {source}"));
            tracing::error!(path = %self.path.display(), error = %source, "Syncing the audit log failed; appends are refused until the collector restarts.");
            return Err(AuditError::Io {
                path: self.path.clone(),
                source,
            });
        }
        let entry = AuditEntry {
            seq,
            at,
            actor: event.actor,
            role: event.role,
            action: event.action,
            object: event.object,
            why: event.why,
            details: event.details,
            prev_hash: std::mem::replace(&mut head.hash, hash.clone()),
            hash,
        };
        head.seq = seq;
        head.len += line.len() as u64;
        self.write_anchor(seq, &entry.hash);
        Ok(entry)
    }

    /// Recomputes the chain up to the current head and compares its end with the anchor.
    /// Appends wait only while the head and anchor are read, not during the scan.
    pub fn verify(&self) -> Result<AuditVerifyReport, AuditError> {
        let (len, anchor) = {
            let head = self.lock();
            (head.len, read_anchor(self.store.as_ref())?)
        };
        verify_file(&self.path, anchor.as_ref(), Some(len))
    }

    /// Entries with seq above `after_seq` (all when `None`), in file order, at most `limit`
    /// (capped at [`MAX_PAGE`]). Lines that are not entries are skipped (verify reports them).
    pub fn entries(
        &self,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let len = self.lock().len;
        let limit = limit.min(MAX_PAGE);
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut lines = Lines::open(&self.path, Some(len)).map_err(io)?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(line) = lines.next_line().map_err(io)? else {
                break;
            };
            let RawLine::Complete(bytes) = line else {
                continue;
            };
            let Ok(raw) = serde_json::from_slice::<RawEntry>(&bytes) else {
                continue;
            };
            if after_seq.is_some_and(|a| raw.seq <= a) {
                continue;
            }
            let Ok(at) = humantime::parse_rfc3339_weak(&raw.at) else {
                continue;
            };
            out.push(AuditEntry {
                seq: raw.seq,
                at,
                actor: raw.actor,
                role: raw.role,
                action: raw.action,
                object: raw.object,
                why: raw.why,
                details: raw.details,
                prev_hash: raw.prev_hash,
                hash: raw.hash,
            });
        }
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, Head> {
        // A panic mid-append leaves at worst a line the next open cuts off or verify names.
        self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records (seq, hash) as the head in the store; a failure is logged, and healed by the
    /// next append.
    fn write_anchor(&self, seq: u64, hash: &str) {
        let anchor = Anchor {
            seq,
            hash: hash.to_owned(),
        };
        let result = serde_json::to_vec(&anchor)
            .map_err(|e| StoreError::Backend(e.to_string()))
            .and_then(|value| {
                self.store.write_records(&[RecordOp::Put {
                    collection: ANCHOR_COLLECTION,
                    id: ANCHOR_ID.to_owned(),
                    value,
                }])
            });
        if let Err(e) = result {
            tracing::error!(seq, error = %e, "Anchoring the audit log head in the store failed; the entry is durable in the file and the next append anchors again.");
        }
    }

    /// Compares the file's head with the store's anchor at open.
    fn reconcile_anchor(&self, last: Option<&LastEntry>) -> Result<(), AuditError> {
        let anchor = read_anchor(self.store.as_ref());
        let path = self.path.display().to_string();
        let (seq, hash, prev) = match last {
            Some(l) => (l.seq, l.hash.as_str(), l.prev_hash.as_str()),
            None => (0, GENESIS_HASH, GENESIS_HASH),
        };
        let anchor = match anchor {
            Ok(a) => a,
            // An anchor that does not decode is a disagreement like any other.
            Err(StoreError::Corrupt { reason, .. }) => {
                return self.record_mismatch(
                    seq,
                    hash,
                    None,
                    &format!("the anchor cannot be decoded: {reason}"),
                );
            }
            Err(e) => return Err(e.into()),
        };
        match anchor {
            None if seq == 0 => Ok(()),
            None => {
                tracing::warn!(
                    path,
                    seq,
                    "The store has no anchor for the audit log (a new or restored store); anchoring its current head."
                );
                self.write_anchor(seq, hash);
                Ok(())
            }
            Some(a) if a.seq == seq && a.hash == hash => Ok(()),
            Some(a) if a.seq + 1 == seq && a.hash == prev => {
                tracing::warn!(
                    path,
                    seq,
                    "The audit log was one entry ahead of its anchor (a crash between the append and anchoring); re-anchored."
                );
                self.write_anchor(seq, hash);
                Ok(())
            }
            Some(a) => {
                let why = if a.seq > seq {
                    format!(
                        "the log ends at seq {seq} but the anchor records seq {}: entries were cut off",
                        a.seq
                    )
                } else {
                    format!(
                        "the log's head (seq {seq}) does not match the anchor (seq {})",
                        a.seq
                    )
                };
                self.record_mismatch(seq, hash, Some(&a), &why)
            }
        }
    }

    /// Logs an anchor disagreement at ERROR and records it in the chain (which re-anchors).
    fn record_mismatch(
        &self,
        seq: u64,
        hash: &str,
        anchor: Option<&Anchor>,
        why: &str,
    ) -> Result<(), AuditError> {
        tracing::error!(path = %self.path.display(), log_seq = seq, anchor_seq = anchor.map(|a| a.seq), reason = why, "The audit log disagrees with its anchor in the store; recording it in the log. Run `cmdbctl audit-log verify`.");
        self.append(AuditEvent {
            actor: SYSTEM_ACTOR.to_owned(),
            role: SYSTEM_ROLE.to_owned(),
            action: ANCHOR_MISMATCH_ACTION.to_owned(),
            object: AUDIT_FILE.to_owned(),
            why: Some(why.to_owned()),
            details: serde_json::json!({
                "log_seq": seq,
                "log_hash": hash,
                "anchor_seq": anchor.map(|a| a.seq),
                "anchor_hash": anchor.map(|a| a.hash.clone()),
            }),
        })?;
        Ok(())
    }
}

/// The anchor the store holds, if any.
pub fn read_anchor(store: &dyn Store) -> Result<Option<Anchor>, StoreError> {
    let Some(bytes) = store.record(ANCHOR_COLLECTION, ANCHOR_ID)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            key: format!("{ANCHOR_COLLECTION}/{ANCHOR_ID}"),
            reason: e.to_string(),
        })
}

// === the canonical form ===

/// The hashed fields of an entry.
struct Fields<'a> {
    seq: u64,
    at: &'a str,
    actor: &'a str,
    role: &'a str,
    action: &'a str,
    object: &'a str,
    why: Option<&'a str>,
    details: &'a Value,
    prev_hash: &'a str,
}

impl Fields<'_> {
    /// The canonical serialisation (see the module docs): what `hash` is computed over.
    fn canonical(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("{\"seq\":");
        out.push_str(&self.seq.to_string());
        for (name, value) in [
            ("at", self.at),
            ("actor", self.actor),
            ("role", self.role),
            ("action", self.action),
            ("object", self.object),
        ] {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            push_json_string(&mut out, value);
        }
        out.push_str(",\"why\":");
        match self.why {
            Some(why) => push_json_string(&mut out, why),
            None => out.push_str("null"),
        }
        out.push_str(",\"details\":");
        push_canonical_value(&mut out, self.details);
        out.push_str(",\"prev_hash\":");
        push_json_string(&mut out, self.prev_hash);
        out.push('}');
        out
    }
}

/// The line written for a canonical form and its hash (with the line end).
fn line_of(canonical: &str, hash: &str) -> String {
    let body = canonical.strip_suffix('}').unwrap_or(canonical);
    format!("{body},\"hash\":\"{hash}\"}}\n")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_canonical_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => push_json_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_canonical_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here, whatever order serde_json's map keeps (preserve_order may be on).
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, key);
                out.push(':');
                if let Some(value) = map.get(key) {
                    push_canonical_value(out, value);
                }
            }
            out.push('}');
        }
    }
}

/// An entry as parsed from a line, `at` kept as written (it is hashed as a string).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    seq: u64,
    at: String,
    actor: String,
    role: String,
    action: String,
    object: String,
    why: Option<String>,
    details: Value,
    prev_hash: String,
    hash: String,
}

impl RawEntry {
    #[cfg(test)]
    fn fields(&self) -> Fields<'_> {
        Fields {
            seq: self.seq,
            at: &self.at,
            actor: &self.actor,
            role: &self.role,
            action: &self.action,
            object: &self.object,
            why: self.why.as_deref(),
            details: &self.details,
            prev_hash: &self.prev_hash,
        }
    }
}

/// Length of a line's tail `,"hash":"<64 hex>"}`.
const HASH_TAIL: usize = 9 + 64 + 2;

/// Whether `line` ends in `,"hash":"<hash>"}` and `hash` is the SHA-256 of what precedes
/// that tail, closed with `}`.
fn line_hash_ok(line: &[u8], hash: &str) -> bool {
    let Some(split) = line.len().checked_sub(HASH_TAIL) else {
        return false;
    };
    let (body, tail) = line.split_at(split);
    if tail != format!(",\"hash\":\"{hash}\"}}").as_bytes() {
        return false;
    }
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    hex::encode(hasher.finalize()) == hash
}

// === reading the file ===

/// One line of the file.
enum RawLine {
    /// A line with its line end (not included).
    Complete(Vec<u8>),
    /// The last bytes of the file, without a line end.
    Torn(Vec<u8>),
    /// A line longer than [`MAX_LINE_BYTES`] (skipped unread).
    Overlong,
}

/// Streams lines with bounded memory.
struct Lines {
    reader: BufReader<std::io::Take<File>>,
}

impl Lines {
    /// The file's lines, up to byte `len` when given.
    fn open(path: &Path, len: Option<u64>) -> std::io::Result<Self> {
        let file = File::open(path)?;
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, file.take(len.unwrap_or(u64::MAX))),
        })
    }

    fn next_line(&mut self) -> std::io::Result<Option<RawLine>> {
        let mut line = Vec::new();
        let mut overlong = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(match (line.is_empty() && !overlong, overlong) {
                    (true, _) => None,
                    (false, true) => Some(RawLine::Overlong),
                    (false, false) => Some(RawLine::Torn(line)),
                });
            }
            let (chunk, found) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], Some(i)),
                None => (buf, None),
            };
            if !overlong && line.len() + chunk.len() <= MAX_LINE_BYTES {
                line.extend_from_slice(chunk);
            } else {
                overlong = true;
                line = Vec::new();
            }
            let used = found.map_or(buf.len(), |i| i + 1);
            self.reader.consume(used);
            if found.is_some() {
                return Ok(Some(if overlong {
                    RawLine::Overlong
                } else {
                    RawLine::Complete(line)
                }));
            }
        }
    }
}

/// Cuts a torn last line (no line end) off the file; returns the length of complete lines.
fn cut_torn_tail(file: &File, path: &Path) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let complete = match last_newline(file, len)? {
        Some(at) => at + 1,
        None => 0,
    };
    if complete < len {
        let mut preview =
            vec![0u8; usize::try_from((len - complete).min(TORN_PREVIEW)).unwrap_or(0)];
        let n = file.read_at(&mut preview, complete)?;
        preview.truncate(n);
        tracing::warn!(
            path = %path.display(),
            offset = complete,
            bytes = len - complete,
            torn = %String::from_utf8_lossy(&preview),
            "The audit log ended in a torn line (a crash mid-append, never acknowledged); cut off at byte offset {complete}."
        );
        file.set_len(complete)?;
        file.sync_all()?;
    }
    Ok(complete)
}

/// The offset of the last `\n` before `end`, reading backwards in chunks.
fn last_newline(file: &File, end: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut hi = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let want = usize::try_from(hi - lo).unwrap_or(0);
        let chunk = &mut buf[..want];
        file.read_exact_at(chunk, lo)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// What the chain continues from.
struct LastEntry {
    seq: u64,
    hash: String,
    prev_hash: String,
}

/// The last entry of the first `len` bytes (complete lines only). When the last line is
/// not an entry, the whole file is scanned for the last one that is.
fn last_entry(file: &File, path: &Path, len: u64) -> std::io::Result<Option<LastEntry>> {
    if len == 0 {
        return Ok(None);
    }
    // The last line ends at len - 1; it starts after the newline before that.
    let start = last_newline(file, len - 1)?.map_or(0, |at| at + 1);
    let line_len = len - 1 - start;
    if line_len <= MAX_LINE_BYTES as u64 {
        let mut line = vec![0u8; usize::try_from(line_len).unwrap_or(0)];
        file.read_exact_at(&mut line, start)?;
        if let Ok(raw) = serde_json::from_slice::<RawEntry>(&line) {
            return Ok(Some(LastEntry {
                seq: raw.seq,
                hash: raw.hash,
                prev_hash: raw.prev_hash,
            }));
        }
    }
    let mut lines = Lines::open(path, Some(len))?;
    let mut last = None;
    let mut line_no = 0usize;
    let mut last_line = 0usize;
    while let Some(line) = lines.next_line()? {
        line_no += 1;
        if let RawLine::Complete(bytes) = line
            && let Ok(raw) = serde_json::from_slice::<RawEntry>(&bytes)
        {
            last_line = line_no;
            last = Some(LastEntry {
                seq: raw.seq,
                hash: raw.hash,
                prev_hash: raw.prev_hash,
            });
        }
    }
    tracing::error!(
        path = %path.display(),
        line = line_no,
        continues_after_line = last_line,
        continues_after_seq = last.as_ref().map_or(0, |l| l.seq),
        "The last line of the audit log is not an entry; the chain continues from the last one that is. Run `cmdbctl audit-log verify`."
    );
    Ok(last)
}

// === verify ===

/// Verifies the log at `path` (its first `len` bytes when given) against `anchor`: the
/// offline form of [`AuditLog::verify`], for tools that read a copy of the file.
pub fn verify_file(
    path: &Path,
    anchor: Option<&Anchor>,
    len: Option<u64>,
) -> Result<AuditVerifyReport, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let mut lines = Lines::open(path, len).map_err(io)?;
    let mut v = Verifier::new(anchor);
    let mut line_no = 0usize;
    let mut next = match lines.next_line().map_err(io)? {
        Some(l) => {
            line_no += 1;
            Some(Item::parse(l, line_no))
        }
        None => None,
    };
    while let Some(cur) = next.take() {
        next = match lines.next_line().map_err(io)? {
            Some(l) => {
                line_no += 1;
                Some(Item::parse(l, line_no))
            }
            None => None,
        };
        v.process(cur, next.as_ref());
    }
    Ok(v.finish(line_no))
}

/// A parsed line, as verify sees it.
enum Item {
    Entry(Parsed),
    Bad {
        line: usize,
        seq: Option<u64>,
        reason: String,
        torn: bool,
    },
}

struct Parsed {
    line: usize,
    seq: u64,
    prev_hash: String,
    hash: String,
    hash_ok: bool,
    /// For [`ANCHOR_MISMATCH_ACTION`] entries: their reason.
    mismatch: Option<String>,
}

impl Item {
    fn parse(raw: RawLine, line: usize) -> Self {
        let (bytes, torn) = match raw {
            RawLine::Complete(b) => (b, false),
            RawLine::Torn(b) => (b, true),
            RawLine::Overlong => {
                return Item::Bad {
                    line,
                    seq: None,
                    reason: format!("longer than {MAX_LINE_BYTES} bytes"),
                    torn: false,
                };
            }
        };
        match serde_json::from_slice::<RawEntry>(&bytes) {
            Ok(raw) if !torn => Item::Entry(Parsed {
                line,
                seq: raw.seq,
                hash_ok: line_hash_ok(&bytes, &raw.hash),
                mismatch: (raw.action == ANCHOR_MISMATCH_ACTION && raw.actor == SYSTEM_ACTOR)
                    .then(|| raw.why.clone().unwrap_or_default()),
                prev_hash: raw.prev_hash,
                hash: raw.hash,
            }),
            parsed => {
                let seq = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(Value::as_u64));
                let reason = match parsed {
                    Ok(_) => "a complete entry without its line end".to_owned(),
                    Err(e) => format!("not an audit entry: {e}"),
                };
                Item::Bad {
                    line,
                    seq,
                    reason,
                    torn,
                }
            }
        }
    }
}

/// The entry the chain reached.
struct HeadInfo {
    seq: u64,
    /// None when the entry was malformed (its link cannot be checked).
    hash: Option<String>,
    prev_hash: Option<String>,
    line: usize,
    /// A problem was already reported for it: do not blame it twice.
    reported: bool,
}

/// The streaming verifier: one line of lookahead, bounded bookkeeping.
struct Verifier<'a> {
    anchor: Option<&'a Anchor>,
    /// The seq the next entry should have.
    expected: u64,
    head: Option<HeadInfo>,
    /// Entries seen ahead of their place, by seq.
    early: BTreeMap<u64, Parsed>,
    /// Single removals reported, by seq → problem index (retracted if the entry shows up).
    removed: BTreeMap<u64, usize>,
    /// Malformed lines since the last accepted entry (problem indexes).
    malformed: Vec<usize>,
    problems: Vec<Option<AuditProblem>>,
    omitted: u64,
    entries: u64,
    /// The accepted entry at the anchor's seq: (hash, line).
    at_anchor: Option<(String, usize)>,
    /// Line of the accepted entry right after the anchor's seq.
    after_anchor: Option<usize>,
}

impl<'a> Verifier<'a> {
    fn new(anchor: Option<&'a Anchor>) -> Self {
        Self {
            anchor,
            expected: 1,
            head: None,
            early: BTreeMap::new(),
            removed: BTreeMap::new(),
            malformed: Vec::new(),
            problems: Vec::new(),
            omitted: 0,
            entries: 0,
            at_anchor: None,
            after_anchor: None,
        }
    }

    fn problem(
        &mut self,
        kind: AuditProblemKind,
        seq: Option<u64>,
        line: usize,
        message: String,
    ) -> Option<usize> {
        if self.problems.len() >= MAX_PROBLEMS {
            self.omitted += 1;
            return None;
        }
        self.problems.push(Some(AuditProblem {
            seq,
            line,
            kind,
            message,
        }));
        Some(self.problems.len() - 1)
    }

    /// The hash the next entry's `prev_hash` must equal, when known.
    fn head_hash(&self) -> Option<String> {
        match &self.head {
            None => Some(GENESIS_HASH.to_owned()),
            Some(h) => h.hash.clone(),
        }
    }

    /// `p` becomes the head, at seq `as_seq`.
    fn accept(&mut self, p: &Parsed, as_seq: u64, reported: bool) {
        if let Some(why) = &p.mismatch {
            let kind = if why.contains("cut off") {
                AuditProblemKind::Truncated
            } else {
                AuditProblemKind::Edited
            };
            self.problem(
                kind,
                Some(as_seq),
                p.line,
                format!(
                    "seq {as_seq} (line {}): the collector found the log disagreeing with its anchor at startup: {why}",
                    p.line
                ),
            );
        }
        self.head = Some(HeadInfo {
            seq: as_seq,
            hash: Some(p.hash.clone()),
            prev_hash: Some(p.prev_hash.clone()),
            line: p.line,
            reported,
        });
        self.expected = as_seq + 1;
        self.malformed.clear();
        if let Some(a) = self.anchor {
            if a.seq == as_seq {
                self.at_anchor = Some((p.hash.clone(), p.line));
            }
            if a.seq + 1 == as_seq {
                self.after_anchor = Some(p.line);
            }
        }
    }

    /// Accepts entries seen early whose place has come.
    fn catch_up(&mut self) {
        while let Some(p) = self.early.remove(&self.expected) {
            let seq = p.seq;
            self.accept(&p, seq, true);
        }
    }

    fn process(&mut self, cur: Item, next: Option<&Item>) {
        match cur {
            Item::Bad {
                line,
                seq,
                reason,
                torn,
            } => self.bad(line, seq, &reason, torn),
            Item::Entry(p) => {
                self.entries += 1;
                if p.hash_ok {
                    self.entry(p, next);
                } else {
                    self.hash_mismatch(p, next);
                }
            }
        }
    }

    fn bad(&mut self, line: usize, seq: Option<u64>, reason: &str, torn: bool) {
        let (kind, message) = if torn {
            (
                AuditProblemKind::Truncated,
                format!("line {line} has no line end: a torn or cut-off write ({reason})"),
            )
        } else {
            (
                AuditProblemKind::Malformed,
                match seq {
                    Some(s) => format!("seq {s} (line {line}): {reason}"),
                    None => format!("line {line}: {reason}"),
                },
            )
        };
        let index = self.problem(kind, seq, line, message);
        if !torn && seq == Some(self.expected) {
            // It holds the expected entry, unreadably: the chain goes on past it unchecked.
            self.head = Some(HeadInfo {
                seq: self.expected,
                hash: None,
                prev_hash: None,
                line,
                reported: true,
            });
            self.expected += 1;
            self.malformed.clear();
        } else if let Some(i) = index {
            self.malformed.push(i);
        }
    }

    fn hash_mismatch(&mut self, p: Parsed, next: Option<&Item>) {
        let expected = self.expected;
        let occupies = p.seq == expected
            || match next {
                Some(Item::Entry(n)) => n.seq == expected + 1 && n.prev_hash == p.hash,
                Some(Item::Bad { .. }) | None => true,
            };
        if occupies {
            let message = if p.seq == expected {
                format!("seq {expected} (line {}): hash mismatch", p.line)
            } else {
                format!(
                    "seq {expected} (line {}): hash mismatch (its seq field reads {})",
                    p.line, p.seq
                )
            };
            self.problem(AuditProblemKind::Edited, Some(expected), p.line, message);
            self.accept(&p, expected, true);
        } else {
            self.problem(
                AuditProblemKind::Edited,
                Some(p.seq),
                p.line,
                format!(
                    "seq {} (line {}): hash mismatch, and it does not fit the chain at seq {expected}",
                    p.seq, p.line
                ),
            );
        }
    }

    fn entry(&mut self, p: Parsed, next: Option<&Item>) {
        if p.seq > self.expected {
            self.catch_up();
        }
        let expected = self.expected;
        let head_hash = self.head_hash();
        if p.seq == expected {
            self.in_place(p, next, head_hash);
        } else if head_hash.as_deref() == Some(p.prev_hash.as_str()) {
            // It links to the head, so it is the next entry with its seq changed.
            self.problem(
                AuditProblemKind::Edited,
                Some(expected),
                p.line,
                format!(
                    "seq {expected} (line {}): its seq field reads {} but it follows seq {}",
                    p.line,
                    p.seq,
                    expected - 1
                ),
            );
            self.accept(&p, expected, true);
        } else if p.seq > expected {
            self.ahead(p, next);
        } else {
            self.behind(p, next);
        }
    }

    /// The expected seq: check its link to the head.
    fn in_place(&mut self, p: Parsed, next: Option<&Item>, head_hash: Option<String>) {
        let Some(want) = head_hash else {
            return self.accept(&p, p.seq, false);
        };
        let head_reported = self.head.as_ref().is_some_and(|h| h.reported);
        if p.prev_hash == want || head_reported {
            return self.accept(&p, p.seq, false);
        }
        let Some((head_seq, head_line)) = self.head.as_ref().map(|h| (h.seq, h.line)) else {
            self.problem(
                AuditProblemKind::Edited,
                Some(p.seq),
                p.line,
                format!(
                    "seq {} (line {}): its prev_hash is not the genesis hash (64 zeros)",
                    p.seq, p.line
                ),
            );
            return self.accept(&p, p.seq, true);
        };
        // The link is broken: either the head was rewritten (with a recomputed hash), or
        // this entry was. If what follows still links to this entry, this one is genuine.
        let this_genuine = match next {
            Some(Item::Entry(n)) => n.prev_hash == p.hash,
            Some(Item::Bad { .. }) => true,
            None => match self.anchor {
                Some(a) if a.seq == p.seq => a.hash == p.hash,
                _ => true,
            },
        };
        if this_genuine {
            self.problem(
                AuditProblemKind::Edited,
                Some(head_seq),
                head_line,
                format!(
                    "seq {head_seq} (line {head_line}) was rewritten: its hash is not the prev_hash of seq {} (line {})",
                    p.seq, p.line
                ),
            );
            self.accept(&p, p.seq, false);
        } else {
            self.problem(
                AuditProblemKind::Edited,
                Some(p.seq),
                p.line,
                format!(
                    "seq {} (line {}) was rewritten: its prev_hash is not the hash of seq {head_seq} (line {head_line}) and the next entry does not link to it",
                    p.seq, p.line
                ),
            );
            self.accept(&p, p.seq, true);
        }
    }

    /// A seq beyond the expected one: entries removed, or this one out of order.
    fn ahead(&mut self, p: Parsed, next: Option<&Item>) {
        let expected = self.expected;
        let out_of_order = match next {
            Some(Item::Entry(n)) => n.prev_hash != p.hash && n.seq < p.seq,
            _ => false,
        };
        if out_of_order {
            self.problem(
                AuditProblemKind::Inserted,
                Some(p.seq),
                p.line,
                format!(
                    "seq {} (line {}) is out of order: expected seq {expected}",
                    p.seq, p.line
                ),
            );
            if self.early.len() < MAX_PENDING {
                self.early.insert(p.seq, p);
            }
            return;
        }
        let missing = p.seq - expected;
        if missing <= self.malformed.len() as u64 {
            // The malformed lines since the head stand for the missing entries.
            let pending = std::mem::take(&mut self.malformed);
            for (i, index) in pending.into_iter().enumerate() {
                let seq = expected + i as u64;
                if let Some(Some(problem)) = self.problems.get_mut(index) {
                    problem.seq = Some(seq);
                    problem
                        .message
                        .push_str(&format!(" (it stood for seq {seq})"));
                }
            }
            return self.accept(&p, p.seq, false);
        }
        let message = match (missing, expected) {
            (1, 1) => format!("seq 1 missing before seq {}", p.seq),
            (1, _) => format!(
                "seq {expected} missing between {} and {}",
                expected - 1,
                p.seq
            ),
            (_, 1) => format!("seq 1..{} missing before seq {}", p.seq - 1, p.seq),
            _ => format!(
                "seq {expected}..{} missing between {} and {}",
                p.seq - 1,
                expected - 1,
                p.seq
            ),
        };
        let index = self.problem(AuditProblemKind::Removed, Some(expected), p.line, message);
        if let (1, Some(i)) = (missing, index)
            && self.removed.len() < MAX_PENDING
        {
            self.removed.insert(expected, i);
        }
        self.accept(&p, p.seq, false);
    }

    /// A seq the chain already passed: a duplicate, a forgery, or an entry out of order.
    fn behind(&mut self, p: Parsed, next: Option<&Item>) {
        if let Some(h) = &self.head
            && h.seq == p.seq
        {
            let (head_line, head_seq) = (h.line, h.seq);
            if h.hash.as_deref() == Some(p.hash.as_str()) {
                self.problem(
                    AuditProblemKind::Inserted,
                    Some(p.seq),
                    p.line,
                    format!(
                        "seq {} (line {}) is a copy of line {head_line}",
                        p.seq, p.line
                    ),
                );
                return;
            }
            let next_links = matches!(next, Some(Item::Entry(n)) if n.prev_hash == p.hash);
            if h.prev_hash.as_deref() == Some(p.prev_hash.as_str()) && next_links {
                // The chain goes on from this one: the head was the intruder.
                self.problem(
                    AuditProblemKind::Inserted,
                    Some(head_seq),
                    head_line,
                    format!(
                        "seq {head_seq} (line {head_line}) is not part of the chain: seq {} follows the seq {head_seq} at line {}",
                        head_seq + 1,
                        p.line
                    ),
                );
                let seq = p.seq;
                return self.accept(&p, seq, false);
            }
        }
        let message = if let Some(index) = self.removed.remove(&p.seq) {
            // Reported missing earlier: it was moved, not removed.
            if let Some(slot) = self.problems.get_mut(index) {
                *slot = None;
            }
            format!(
                "seq {} (line {}) is out of order: it belongs between seq {} and {}",
                p.seq,
                p.line,
                p.seq.saturating_sub(1),
                p.seq + 1
            )
        } else {
            format!(
                "seq {} (line {}) is out of order or a duplicate: the chain is already at seq {}",
                p.seq,
                p.line,
                self.expected - 1
            )
        };
        self.problem(AuditProblemKind::Inserted, Some(p.seq), p.line, message);
    }

    fn finish(mut self, last_line: usize) -> AuditVerifyReport {
        self.catch_up();
        let head_seq = self.expected - 1;
        let head_line = self.head.as_ref().map_or(0, |h| h.line);
        match self.anchor {
            None if head_seq > 0 => {
                self.problem(
                    AuditProblemKind::Unanchored,
                    None,
                    last_line,
                    format!("the store holds no anchor for this log of {head_seq} entries: a cut-off end cannot be detected"),
                );
            }
            None => {}
            Some(a) if a.seq > head_seq => {
                let cut = if a.seq == head_seq + 1 {
                    format!("seq {} was cut off", a.seq)
                } else {
                    format!("seq {}..{} were cut off", head_seq + 1, a.seq)
                };
                self.problem(
                    AuditProblemKind::Truncated,
                    Some(head_seq + 1),
                    last_line + 1,
                    format!(
                        "the log ends at seq {head_seq} (line {head_line}) but the store's anchor records seq {}: {cut}",
                        a.seq
                    ),
                );
            }
            Some(a) => {
                let rewritten = match &self.at_anchor {
                    Some((hash, line)) if *hash != a.hash => Some(*line),
                    _ => None,
                };
                let head_reported =
                    a.seq == head_seq && self.head.as_ref().is_some_and(|h| h.reported);
                if let Some(line) = rewritten
                    && !head_reported
                {
                    self.problem(
                        AuditProblemKind::Edited,
                        Some(a.seq),
                        line,
                        format!(
                            "seq {} (line {line}): its hash differs from the store's anchor: the entry, or the chain up to it, was rewritten",
                            a.seq
                        ),
                    );
                }
                if a.seq < head_seq {
                    let line = self.after_anchor.unwrap_or(last_line);
                    self.problem(
                        AuditProblemKind::Inserted,
                        Some(a.seq + 1),
                        line,
                        format!(
                            "seq {}..{head_seq} (from line {line}) come after the store's anchor (seq {}): appended behind the collector's back, or anchoring failed (see the collector log)",
                            a.seq + 1,
                            a.seq
                        ),
                    );
                }
            }
        }
        let problems: Vec<AuditProblem> = self.problems.into_iter().flatten().collect();
        AuditVerifyReport {
            entries: self.entries,
            head_seq,
            anchor_seq: self.anchor.map(|a| a.seq),
            ok: problems.is_empty() && self.omitted == 0,
            problems,
            omitted_problems: self.omitted,
        }
    }
}

/// serde adapter: `SystemTime` as RFC 3339 with milliseconds.
mod millis {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}
