//! A test-only [`Store`] for capacity: metric windows, agents and CIs held in memory,
//! records in a [`MemoryRecords`]. Everything else answers an error.

use std::sync::Mutex;
use std::time::SystemTime;

use cmdb_proto::model::HostIdentity;
use cmdb_proto::v1;

use crate::store::memory::MemoryRecords;
use crate::store::{
    AgentRecord, ApplyOutcome, CiFilter, CiRecord, CiVersion, CloneRecord, FeedEntry, FeedPos,
    HostId, MetricRecord, RecordOp, RelationRecord, Store, StoreError,
};

#[derive(Default)]
pub struct FakeStore {
    pub records: MemoryRecords,
    pub windows: Mutex<Vec<MetricRecord>>,
    pub agent_list: Mutex<Vec<AgentRecord>>,
    pub ci_list: Mutex<Vec<CiRecord>>,
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend("not in the capacity fake store".into()))
}

impl FakeStore {
    pub fn put_metrics(&self, recs: &[MetricRecord]) {
        if let Ok(mut w) = self.windows.lock() {
            w.extend(recs.iter().cloned());
        }
    }
}

impl Store for FakeStore {
    fn agent(&self, _: &str) -> Result<Option<AgentRecord>, StoreError> {
        unsupported()
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self
            .agent_list
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default())
    }
    fn put_agent(&self, _: &AgentRecord) -> Result<(), StoreError> {
        unsupported()
    }
    fn identify(
        &self,
        _: &str,
        _: &str,
        _: &HostIdentity,
        _: SystemTime,
    ) -> Result<HostId, StoreError> {
        unsupported()
    }
    fn apply(&self, _: &str, _: &[v1::Event]) -> Result<ApplyOutcome, StoreError> {
        unsupported()
    }
    fn ci(&self, _: &str) -> Result<Option<CiRecord>, StoreError> {
        unsupported()
    }
    fn ci_versions(&self, _: &str) -> Result<Vec<CiVersion>, StoreError> {
        unsupported()
    }
    fn cis(&self, f: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        let all = self.ci_list.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(all
            .into_iter()
            .filter(|c| f.class.as_ref().is_none_or(|k| &c.class == k))
            .filter(|c| f.host.as_ref().is_none_or(|h| &c.host_id == h))
            .take(f.limit)
            .collect())
    }
    fn relations_of(&self, _: &str) -> Result<Vec<RelationRecord>, StoreError> {
        unsupported()
    }
    fn metrics(
        &self,
        host: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        let w = self.windows.lock().map(|w| w.clone()).unwrap_or_default();
        let mut v: Vec<MetricRecord> = w
            .into_iter()
            .filter(|m| m.host_id == host && m.window_start >= from && m.window_start < to)
            .collect();
        v.sort_by_key(|m| m.window_start);
        Ok(v)
    }
    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError> {
        unsupported()
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn feed(&self, _: Option<&FeedPos>, _: usize) -> Result<Vec<FeedEntry>, StoreError> {
        unsupported()
    }
    fn record(&self, collection: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.records.record(collection, id)
    }
    fn records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.records.records(collection, after, limit)
    }
    fn write_records(&self, ops: &[RecordOp]) -> Result<(), StoreError> {
        self.records.write_records(ops)
    }
}
