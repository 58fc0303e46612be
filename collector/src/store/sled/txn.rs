//! One write transaction: an in-memory overlay over the tree that reads its own writes and
//! commits as ONE `sled::Batch` (atomic on disk and for readers).
//!
//! CI and agent records are kept typed while the transaction runs (a CI touched by several
//! events of one call is decoded once and encoded once); versions are collected and written
//! at commit as the version pages of this transaction's commit number; everything else is
//! raw bytes. Only one transaction is built at a time (the store's writer lock), and its
//! first read of the tree waits for the batch still being applied, if any (`pipeline`;
//! every read goes through `Txn::tree`), so what it reads cannot change under it.
//! [`Txn::build`] turns it into the batch that the writer applies under the commit lock.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply::Source;
use super::codec::{self, CiRow, PageWriter, VersionFields};
use super::feed_tail::{OldAttrs, TailEntry};
use super::keys;
use super::liveness::Liveness;
use super::pipeline::Finished;
use super::vlog::{Mark, VersionLog};
use crate::store::{AgentRecord, ChangeKind, CiId, CiRecord, CiState, StoreError};

/// Version pages close at about this many bytes: small enough that a history lookup reads
/// little more than the version it wants (one page per version), big enough that a call's
/// versions need few references in the tree.
const PAGE_TARGET: usize = 4096;

/// Most distinct CI classes the store accepts (DESIGN.md has 17): resolving a bare CI id
/// probes the class index once per class, so their number must stay small. Items of a new
/// class beyond it are rejected.
pub(super) const MAX_CLASSES: usize = 1024;

pub(super) fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn encode<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Raw pending writes: `None` deletes.
#[derive(Default)]
pub(super) struct Raw(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl Raw {
    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.0.insert(key, Some(value));
    }

    pub(super) fn put_json<T: Serialize>(
        &mut self,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode(&key, value)?;
        self.0.insert(key, Some(bytes));
        Ok(())
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.0.insert(key, None);
    }
}

/// A CI loaded into the transaction: its record's key and its row.
pub(super) struct TxnCi {
    /// `c/<host>\0<class>\0<ci id>`
    pub(super) rkey: Vec<u8>,
    pub(super) row: CiRow,
}

impl TxnCi {
    /// (host, class, id) out of the record key.
    pub(super) fn parts(&self) -> (&str, &str, &str) {
        keys::ci_parts(&self.rkey).unwrap_or(("", "", ""))
    }

    /// The API's view of it.
    pub(super) fn record(&self) -> Result<CiRecord, StoreError> {
        let (host, class, id) = self.parts();
        codec::row_to_record(&self.rkey, &self.row, host, class, id)
    }
}

/// Versions written by the transaction, for its pages and then the feed's tail.
pub(super) struct Versions {
    number: u64,
    entries: Vec<TailEntry>,
}

impl Versions {
    /// Records version `row.version` of `ci` as it is now (state and attributes), which
    /// replaced `old`, and makes this transaction's page its head.
    pub(super) fn record(
        &mut self,
        ci: &mut TxnCi,
        change: ChangeKind,
        src: &Source<'_>,
        old: OldAttrs,
    ) {
        let row = &mut ci.row;
        let mut payload = Vec::with_capacity(24 + src.agent_id.len() + row.attrs.len());
        codec::put_version_payload(
            &mut payload,
            &VersionFields {
                prev: row.head,
                change,
                state: row.state,
                observed_at: src.observed_at,
                agent_id: src.agent_id,
                seq: src.seq,
                change_id: None,
                attrs: &row.attrs,
            },
        );
        row.head = self.number;
        let id = keys::trailing_ci_id(&ci.rkey).unwrap_or_default();
        self.entries.push(TailEntry {
            commit: self.number,
            id,
            version: row.version,
            rkey: ci.rkey.clone(),
            key: row.key.clone(),
            payload,
            old,
        });
    }
}

pub(super) struct Txn<'a> {
    tree: &'a sled::Tree,
    number: u64,
    /// The classes the store has CIs of (the writer keeps the set), and the new ones.
    classes: &'a HashSet<String>,
    pub(super) new_classes: BTreeSet<String>,
    pub(super) cis: HashMap<CiId, TxnCi>,
    /// CIs read ahead of use (`prefetch_cis`) as the tree has them; not written unless
    /// `load_ci` moves them into `cis`. `None`: not in the tree.
    prefetched: HashMap<CiId, Option<TxnCi>>,
    pub(super) versions: Versions,
    pub(super) agents: BTreeMap<String, AgentRecord>,
    pub(super) raw: Raw,
    /// Pending heartbeats (`liveness`) and the last one this transaction folds in.
    beats: Option<(&'a Liveness, u64)>,
    /// The transaction in flight when this one began (`pipeline`): every read of the tree
    /// waits for its ticket to finish first, once.
    settle: Option<(&'a Finished, u64)>,
    settled: Cell<bool>,
    /// An agent record read before the writer lock (`apply::Prepared`), used by
    /// `peek_agent` in place of the tree's.
    seeded_agent: Option<AgentRecord>,
}

impl<'a> Txn<'a> {
    /// A transaction that will commit as number `number` (the store's next one).
    pub(super) fn new(tree: &'a sled::Tree, number: u64, classes: &'a HashSet<String>) -> Self {
        Txn {
            tree,
            number,
            classes,
            new_classes: BTreeSet::new(),
            cis: HashMap::new(),
            prefetched: HashMap::new(),
            versions: Versions {
                number,
                entries: Vec::new(),
            },
            agents: BTreeMap::new(),
            raw: Raw::default(),
            beats: None,
            settle: None,
            settled: Cell::new(false),
            seeded_agent: None,
        }
    }

    /// Reads of the tree wait for `ticket` (the transaction in flight) to finish.
    pub(super) fn settling(mut self, finished: &'a Finished, ticket: u64) -> Self {
        self.settle = Some((finished, ticket));
        self
    }

    /// The tree, once the transaction in flight when this one began has finished (see
    /// `pipeline`): every read goes through here.
    fn tree(&self) -> &'a sled::Tree {
        if !self.settled.get() {
            if let Some((finished, ticket)) = self.settle {
                finished.wait_for(ticket);
            }
            self.settled.set(true);
        }
        self.tree
    }

    /// Takes `rec`, read before this transaction began, as the tree's record of its agent
    /// (the caller vouches that no transaction built since wrote it).
    pub(super) fn seed_agent(&mut self, rec: AgentRecord) {
        self.seeded_agent = Some(rec);
    }

    /// Reads agent records with the heartbeats in `liveness` recorded up to `horizon`.
    pub(super) fn with_beats(mut self, liveness: &'a Liveness, horizon: u64) -> Self {
        self.beats = Some((liveness, horizon));
        self
    }

    /// The raw value of `key` as this transaction sees it (not for CI or agent records).
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.raw.0.get(key) {
            return Ok(pending.clone());
        }
        Ok(self.tree().get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    pub(super) fn get_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        if let Some(pending) = self.raw.0.get(key) {
            return pending.as_deref().map(|b| decode(key, b)).transpose();
        }
        match self.tree().get(key).map_err(backend)? {
            Some(v) => decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// A copy of a CI as this transaction sees it; does not mark it for writing.
    pub(super) fn peek_ci(
        &self,
        host: &str,
        class: &str,
        id: &str,
    ) -> Result<Option<CiRecord>, StoreError> {
        if let Some(ci) = self.cis.get(id) {
            return ci.record().map(Some);
        }
        match self.prefetched.get(id) {
            Some(ci) => ci.as_ref().map(TxnCi::record).transpose(),
            None => read_ci(self.tree(), host, class, id)?
                .map(|ci| ci.record())
                .transpose(),
        }
    }

    /// The state of a CI as this transaction sees it; does not mark it for writing.
    pub(super) fn peek_state(
        &self,
        host: &str,
        class: &str,
        id: &str,
    ) -> Result<Option<CiState>, StoreError> {
        if let Some(ci) = self.cis.get(id) {
            return Ok(Some(ci.row.state));
        }
        match self.prefetched.get(id) {
            Some(ci) => Ok(ci.as_ref().map(|ci| ci.row.state)),
            None => Ok(read_ci(self.tree(), host, class, id)?.map(|ci| ci.row.state)),
        }
    }

    /// Reads the CIs `ids` of (host, class) that the transaction has not loaded, in one
    /// pass over the tree in key order ([`read_rows`]), for the `load_ci`, `peek_state` and
    /// `peek_ci` calls that follow. Only an optimisation: what those calls return is the
    /// same without it.
    pub(super) fn prefetch_cis(
        &mut self,
        host: &str,
        class: &str,
        ids: &[&str],
    ) -> Result<(), StoreError> {
        let wanted: Vec<&str> = ids
            .iter()
            .filter(|id| !self.cis.contains_key(**id) && !self.prefetched.contains_key(**id))
            .copied()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let rows = read_rows(self.tree(), host, class, &wanted)?;
        self.prefetched.reserve(rows.len());
        self.prefetched.extend(rows);
        Ok(())
    }

    /// Takes rows read before this transaction began ([`read_rows`] outside the writer
    /// lock) as what the tree holds now. The caller vouches that no commit since that read
    /// wrote any of them (`SledStore::apply` checks the hosts each commit wrote). Rows the
    /// transaction has already loaded or read keep their values.
    pub(super) fn seed_rows(&mut self, rows: HashMap<CiId, Option<TxnCi>>) {
        if self.prefetched.is_empty() && self.cis.is_empty() {
            self.prefetched = rows;
            return;
        }
        for (id, ci) in rows {
            if !self.cis.contains_key(&id) {
                self.prefetched.entry(id).or_insert(ci);
            }
        }
    }

    /// Loads the CI into the transaction (it will be written at commit). False if unknown.
    pub(super) fn load_ci(
        &mut self,
        host: &str,
        class: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        if self.cis.contains_key(id) {
            return Ok(true);
        }
        let read = match self.prefetched.remove(id) {
            Some(ci) => ci,
            None => read_ci(self.tree(), host, class, id)?,
        };
        match read {
            Some(ci) => {
                self.cis.insert(id.to_owned(), ci);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether CIs of `class` may be created: a class already in the store, or a new one
    /// while there are fewer than [`MAX_CLASSES`].
    pub(super) fn class_allowed(&self, class: &str) -> bool {
        self.classes.contains(class)
            || self.new_classes.contains(class)
            || self.classes.len() + self.new_classes.len() < MAX_CLASSES
    }

    /// Adds a CI that does not exist yet (`row.head` 0), with its index entry and its
    /// first version.
    pub(super) fn create_ci(
        &mut self,
        host: &str,
        class: &str,
        id: CiId,
        row: CiRow,
        src: &Source<'_>,
    ) {
        self.raw
            .put(keys::by_class(class, &id), host.as_bytes().to_vec());
        if !self.classes.contains(class) && !self.new_classes.contains(class) {
            self.new_classes.insert(class.to_owned());
        }
        let mut ci = TxnCi {
            rkey: keys::ci(host, class, &id),
            row,
        };
        self.versions
            .record(&mut ci, ChangeKind::Added, src, OldAttrs::None);
        self.cis.insert(id, ci);
    }

    /// Ids of the CIs of (host, class) as this transaction sees them, in order, at most
    /// `limit` from the tree.
    pub(super) fn ci_ids_of(
        &self,
        host: &str,
        class: &str,
        limit: usize,
    ) -> Result<Vec<CiId>, StoreError> {
        let mut ids = Vec::new();
        for k in self
            .tree()
            .scan_prefix(keys::cis_of_host_class(host, class))
            .keys()
            .take(limit)
        {
            if let Some(id) = keys::trailing_ci_id(&k.map_err(backend)?) {
                ids.push(id);
            }
        }
        ids.extend(
            self.cis
                .iter()
                .filter(|(_, ci)| {
                    let (h, c, _) = ci.parts();
                    h == host && c == class
                })
                .map(|(id, _)| id.clone()),
        );
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    pub(super) fn peek_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        if let Some(rec) = self.agents.get(id) {
            return Ok(Some(rec.clone()));
        }
        let mut rec = match &self.seeded_agent {
            Some(seeded) if seeded.agent_id == id => Some(seeded.clone()),
            _ => read_agent(self.tree(), id)?,
        };
        if let (Some(rec), Some((liveness, horizon))) = (rec.as_mut(), self.beats)
            && let Some(beat) = liveness.get(id, horizon)
        {
            beat.apply_to(rec);
        }
        Ok(rec)
    }

    /// Keys under `prefix` as this transaction sees them, in order, at most `limit`.
    pub(super) fn keys_with_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for kv in self.tree().scan_prefix(prefix).keys() {
            merged.insert(kv.map_err(backend)?.to_vec(), true);
            if merged.len() >= limit {
                break;
            }
        }
        for (k, v) in self
            .raw
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            merged.insert(k.clone(), v.is_some());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, live)| live.then_some(k))
            .take(limit)
            .collect())
    }

    /// Everything this transaction writes, as one batch stamped with its commit number
    /// (see `seal`; version pages are keyed by it), for [`Built::apply`]. `None` when it
    /// writes nothing (no number used).
    /// Its version pages are appended to `log` (not yet synced) and the batch refers to them.
    pub(super) fn build(self, log: &VersionLog) -> Result<Option<Built>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut hosts = BTreeSet::new();
        for ci in self.cis.into_values() {
            let host = ci.parts().0;
            if !hosts.contains(host) {
                hosts.insert(host.to_owned());
            }
            batch.insert(ci.rkey, codec::encode_row(&ci.row));
            n += 1;
        }
        for (id, rec) in &self.agents {
            let key = keys::agent(id);
            let value = encode(&key, rec)?;
            batch.insert(key, value);
            n += 1;
        }
        for (k, v) in self.raw.0 {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
            n += 1;
        }
        let mut entries = self.versions.entries;
        entries.sort_unstable_by(|a, b| (&a.id, a.version).cmp(&(&b.id, b.version)));
        let mut pages = PageWriter::new(PAGE_TARGET);
        for e in &entries {
            pages.push(&e.id, e.version, &e.payload);
        }
        for page in pages.finish() {
            let key = keys::version_page(self.number, page.first_id.as_bytes(), page.first_version);
            batch.insert(key, &log.append(&page.bytes)?[..]);
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        batch.insert(keys::META_COMMIT, &self.number.to_be_bytes());
        Ok(Some(Built {
            number: self.number,
            batch,
            log_mark: log.mark(),
            hosts,
            agents: self.agents.into_keys().collect(),
            classes: self.new_classes,
            versions: entries,
        }))
    }
}

/// A transaction's writes, built and not yet applied (see [`Txn::build`]).
pub(super) struct Built {
    /// Its commit number.
    pub(super) number: u64,
    batch: sled::Batch,
    /// The end of its version pages in the version log.
    log_mark: Mark,
    /// The hosts whose CI records it writes.
    pub(super) hosts: BTreeSet<String>,
    /// The agents whose records it writes.
    pub(super) agents: Vec<String>,
    /// Classes it adds.
    pub(super) classes: BTreeSet<String>,
    /// Its versions, in feed order.
    pub(super) versions: Vec<TailEntry>,
}

impl Built {
    /// Applies the batch (atomic on disk and for readers) once the version pages it refers
    /// to are on disk; returns the versions for the feed's tail.
    pub(super) fn apply(
        self,
        tree: &sled::Tree,
        log: &VersionLog,
    ) -> Result<Vec<TailEntry>, StoreError> {
        log.sync_through(self.log_mark)?;
        tree.apply_batch(self.batch).map_err(backend)?;
        Ok(self.versions)
    }
}

/// An agent record from the tree (without pending heartbeats).
pub(super) fn read_agent(tree: &sled::Tree, id: &str) -> Result<Option<AgentRecord>, StoreError> {
    let key = keys::agent(id);
    match tree.get(&key).map_err(backend)? {
        Some(v) => Ok(Some(decode(&key, &v)?)),
        None => Ok(None),
    }
}

/// A CI record from the tree.
pub(super) fn read_ci(
    tree: &sled::Tree,
    host: &str,
    class: &str,
    id: &str,
) -> Result<Option<TxnCi>, StoreError> {
    let rkey = keys::ci(host, class, id);
    match tree.get(&rkey).map_err(backend)? {
        Some(v) => {
            let row = codec::decode_row(&rkey, &v)?;
            Ok(Some(TxnCi { rkey, row }))
        }
        None => Ok(None),
    }
}

/// The CI records `ids` of (host, class), read in one pass over the tree in key order
/// (`sled::Tree::get_many`: one walk from the root per leaf, not per CI, and every batch
/// seen whole or not at all); `None` for an id with no record.
pub(super) fn read_rows(
    tree: &sled::Tree,
    host: &str,
    class: &str,
    ids: &[&str],
) -> Result<Vec<(CiId, Option<TxnCi>)>, StoreError> {
    let mut wanted: Vec<(Vec<u8>, &str)> = ids
        .iter()
        .map(|id| (keys::ci(host, class, id), *id))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let keys: Vec<&[u8]> = wanted.iter().map(|(k, _)| k.as_slice()).collect();
    let values = tree.get_many(&keys).map_err(backend)?;
    let mut out = Vec::with_capacity(wanted.len());
    for ((rkey, id), value) in wanted.into_iter().zip(values) {
        let ci = match value {
            Some(v) => Some(TxnCi {
                row: codec::decode_row(&rkey, &v)?,
                rkey,
            }),
            None => None,
        };
        out.push((id.to_owned(), ci));
    }
    Ok(out)
}
