//! One write transaction: an in-memory overlay over the tree that reads its own writes and
//! commits as ONE `sled::Batch` (atomic on disk and for readers).
//!
//! CI and agent records are kept typed while the transaction runs (a CI touched by several
//! events of one call is decoded once and encoded once); everything else is raw bytes. Only
//! one transaction runs at a time (the store's writer lock), so what it reads from the tree
//! cannot change under it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys;
use crate::store::{AgentRecord, CiId, CiRecord, StoreError};

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

pub(super) struct Txn<'a> {
    tree: &'a sled::Tree,
    pub(super) cis: BTreeMap<CiId, CiRecord>,
    pub(super) agents: BTreeMap<String, AgentRecord>,
    pub(super) raw: Raw,
}

impl<'a> Txn<'a> {
    pub(super) fn new(tree: &'a sled::Tree) -> Self {
        Txn {
            tree,
            cis: BTreeMap::new(),
            agents: BTreeMap::new(),
            raw: Raw::default(),
        }
    }

    /// The raw value of `key` as this transaction sees it (not for CI or agent records).
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.raw.0.get(key) {
            return Ok(pending.clone());
        }
        Ok(self.tree.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    pub(super) fn get_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        if let Some(pending) = self.raw.0.get(key) {
            return pending.as_deref().map(|b| decode(key, b)).transpose();
        }
        match self.tree.get(key).map_err(backend)? {
            Some(v) => decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// A copy of the CI of `host` as this transaction sees it; does not mark it for writing.
    pub(super) fn peek_ci(&self, host: &str, id: &str) -> Result<Option<CiRecord>, StoreError> {
        if let Some(rec) = self.cis.get(id) {
            return Ok(Some(rec.clone()));
        }
        let key = keys::ci(host, id);
        match self.tree.get(&key).map_err(backend)? {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// The host a CI id belongs to.
    pub(super) fn host_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(&keys::ci_host(id))?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    /// Loads the CI into the transaction (it will be written at commit). False if unknown.
    pub(super) fn load_ci(&mut self, host: &str, id: &str) -> Result<bool, StoreError> {
        if self.cis.contains_key(id) {
            return Ok(true);
        }
        let key = keys::ci(host, id);
        match self.tree.get(&key).map_err(backend)? {
            Some(v) => {
                let rec: CiRecord = decode(&key, &v)?;
                self.cis.insert(id.to_owned(), rec);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) fn peek_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        if let Some(rec) = self.agents.get(id) {
            return Ok(Some(rec.clone()));
        }
        let key = keys::agent(id);
        match self.tree.get(&key).map_err(backend)? {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Keys under `prefix` as this transaction sees them, in order, at most `limit`.
    pub(super) fn keys_with_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for kv in self.tree.scan_prefix(prefix).keys() {
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

    /// Applies everything as one atomic batch stamped with commit number `number` (see
    /// `seal`). Returns whether anything was written (nothing written: no number used).
    pub(super) fn commit(self, number: u64) -> Result<bool, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for (id, rec) in &self.cis {
            let key = keys::ci(&rec.host_id, id);
            let value = encode(&key, rec)?;
            batch.insert(key, value);
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
        if n == 0 {
            return Ok(false);
        }
        batch.insert(keys::META_COMMIT, &number.to_be_bytes());
        self.tree.apply_batch(batch).map_err(backend)?;
        Ok(true)
    }
}
