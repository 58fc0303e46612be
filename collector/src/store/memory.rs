//! A test-only in-memory [`Store`] in which only the record collections work (`record`,
//! `records`, `write_records`, with the trait's bounds); everything about agents and CIs
//! answers an error. Modules that keep their own records (notify, audit) test against it so
//! that they never depend on a backend. `fail_writes` makes `write_records` fail, to
//! exercise a failing store. [`Planted`] adds a fixed set of agents and CIs to it, for the
//! services that read the CMDB (configuration audit, CMDB health).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use cmdb_proto::model::HostIdentity;
use cmdb_proto::v1;

use super::record_map::RecordMap;
use super::{
    AgentRecord, ApplyOutcome, CiFilter, CiRecord, CiState, CiVersion, CloneRecord, FeedEntry,
    FeedPos, HostId, MetricRecord, RecordOp, RelationRecord, Store, StoreError,
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

/// Planted agents and CIs, read as the sled store answers them (`cis` filters by class and
/// state, pages by id after `after`, at most `limit`); everything else is [`MemoryRecords`].
#[derive(Default)]
pub struct Planted {
    pub agents: Vec<AgentRecord>,
    pub cis: Vec<CiRecord>,
    pub records: MemoryRecords,
    /// `cis` calls so far (to see a cache work).
    pub cis_calls: AtomicU64,
}

impl Store for Planted {
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.agents.iter().find(|a| a.agent_id == id).cloned())
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.agents.clone())
    }
    fn put_agent(&self, r: &AgentRecord) -> Result<(), StoreError> {
        self.records.put_agent(r)
    }
    fn identify(
        &self,
        agent: &str,
        instance: &str,
        identity: &HostIdentity,
        now: SystemTime,
    ) -> Result<HostId, StoreError> {
        self.records.identify(agent, instance, identity, now)
    }
    fn apply(&self, agent: &str, events: &[v1::Event]) -> Result<ApplyOutcome, StoreError> {
        self.records.apply(agent, events)
    }
    fn ci(&self, id: &str) -> Result<Option<CiRecord>, StoreError> {
        Ok(self.cis.iter().find(|c| c.id == id).cloned())
    }
    fn ci_versions(&self, id: &str) -> Result<Vec<CiVersion>, StoreError> {
        self.records.ci_versions(id)
    }
    fn cis(&self, f: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        self.cis_calls.fetch_add(1, Ordering::SeqCst);
        let mut out: Vec<CiRecord> = self
            .cis
            .iter()
            .filter(|c| f.class.as_ref().is_none_or(|k| *k == c.class))
            .filter(|c| f.include_absent || c.state == CiState::Present)
            .filter(|c| f.after.as_ref().is_none_or(|a| c.id > *a))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(f.limit);
        Ok(out)
    }
    fn relations_of(&self, id: &str) -> Result<Vec<RelationRecord>, StoreError> {
        self.records.relations_of(id)
    }
    fn metrics(
        &self,
        host: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        self.records.metrics(host, from, to)
    }
    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError> {
        self.records.clones()
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn feed(&self, after: Option<&FeedPos>, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        self.records.feed(after, limit)
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
