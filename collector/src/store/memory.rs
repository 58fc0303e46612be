//! A test-only in-memory [`Store`] in which only the record collections work (`record`,
//! `records`, `write_records`, with the trait's bounds); everything about agents and CIs
//! answers an error. Modules that keep their own records (notify, audit) test against it so
//! that they never depend on a backend. `fail_writes` makes `write_records` fail, to
//! exercise a failing store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use cmdb_proto::model::HostIdentity;
use cmdb_proto::v1;

use super::record_map::RecordMap;
use super::{
    AgentRecord, ApplyOutcome, CiFilter, CiRecord, CiVersion, CloneRecord, FeedEntry, FeedPos,
    HostId, MetricRecord, RecordOp, RelationRecord, Store, StoreError,
};

/// Records keyed by (collection, id).
#[derive(Default)]
pub struct MemoryRecords {
    records: RecordMap,
    /// When set, `write_records` fails and writes nothing.
    pub fail_writes: AtomicBool,
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend(
        "the in-memory test store keeps records only".into(),
    ))
}

impl MemoryRecords {
    /// Every record of `collection`, in id order.
    pub fn all(&self, collection: &str) -> Vec<(String, Vec<u8>)> {
        self.records.all(collection)
    }
}

impl Store for MemoryRecords {
    fn agent(&self, _: &str) -> Result<Option<AgentRecord>, StoreError> {
        unsupported()
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        unsupported()
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
    fn cis(&self, _: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        unsupported()
    }
    fn relations_of(&self, _: &str) -> Result<Vec<RelationRecord>, StoreError> {
        unsupported()
    }
    fn metrics(
        &self,
        _: &str,
        _: SystemTime,
        _: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        unsupported()
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
        self.records.get(collection, id)
    }

    fn records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.records.list(collection, after, limit)
    }

    fn write_records(&self, ops: &[RecordOp]) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected write failure".into()));
        }
        self.records.write(ops)
    }
}
