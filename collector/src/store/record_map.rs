//! An in-memory record collection with the [`Store`](super::Store) record semantics
//! (validation by [`check_collection`] and [`check_record_op`], all-or-nothing writes, id
//! order): what test stores and benchmark stores delegate their record methods to, so that
//! every fake keeps records exactly like the real store promises.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{RecordOp, StoreError, check_collection, check_record_op};

/// collection → id → value.
#[derive(Debug, Default)]
pub struct RecordMap {
    records: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl RecordMap {
    /// [`Store::record`](super::Store::record).
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_collection(collection)?;
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(records.get(collection).and_then(|c| c.get(id)).cloned())
    }

    /// [`Store::records`](super::Store::records).
    pub fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        check_collection(collection)?;
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = records.get(collection) else {
            return Ok(Vec::new());
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(c.range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect())
    }

    /// [`Store::write_records`](super::Store::write_records): every op is checked before
    /// any is applied.
    pub fn write(&self, ops: &[RecordOp]) -> Result<(), StoreError> {
        for op in ops {
            check_record_op(op)?;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                RecordOp::Put {
                    collection,
                    id,
                    value,
                } => {
                    records
                        .entry((*collection).to_owned())
                        .or_default()
                        .insert(id.clone(), value.clone());
                }
                RecordOp::Delete { collection, id } => {
                    if let Some(c) = records.get_mut(*collection) {
                        c.remove(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every record of `collection`, in id order.
    pub fn all(&self, collection: &str) -> Vec<(String, Vec<u8>)> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .get(collection)
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}
