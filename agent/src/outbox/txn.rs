//! A planned change to the outbox: removals, replacements and new events staged in memory
//! over the sled trees, with the accounting and meta record they imply, committed in one
//! sled transaction across the `events`, `index` and `meta` trees (all or nothing, also
//! across a crash). Not durable until the caller flushes.

use std::collections::BTreeMap;

use cmdb_proto::v1;
use prost::Message;
use sled::Transactional;
use sled::transaction::TransactionError;

use super::record::{self, Kind, Meta};

/// Bookkeeping each stored event is charged on top of its encoded size (keys, index entry,
/// sled's per-entry overhead), so that the byte bound also bounds the number of events.
pub(super) const PER_EVENT_OVERHEAD: u64 = 64;

/// The accounted size of an encoded event.
pub(super) fn accounted(encoded_len: usize) -> u64 {
    u64::try_from(encoded_len)
        .unwrap_or(u64::MAX)
        .saturating_add(PER_EVENT_OVERHEAD)
}

/// The sled handles of one outbox.
pub(super) struct Trees {
    pub db: sled::Db,
    /// seq (u64 BE) -> protobuf-encoded `v1::Event` (its `seq` field equals the key).
    pub events: sled::Tree,
    /// kind byte ++ seq (u64 BE) -> accounted size (u64 BE).
    pub index: sled::Tree,
    /// "state" -> [`Meta`] record.
    pub meta: sled::Tree,
}

/// Why a plan could not be made.
#[derive(Debug)]
pub(super) enum PlanError {
    Storage(sled::Error),
    /// A stored event (by its events-tree key) does not decode as what the index says.
    Corrupt(Vec<u8>),
}

impl From<sled::Error> for PlanError {
    fn from(e: sled::Error) -> Self {
        PlanError::Storage(e)
    }
}

enum Write {
    Put {
        kind: Kind,
        value: Vec<u8>,
    },
    /// `kind` is `None` for an events-tree entry the index does not know (corruption).
    Remove {
        kind: Option<Kind>,
    },
}

pub(super) struct Txn<'a> {
    pub trees: &'a Trees,
    pub meta: Meta,
    pub events: u64,
    pub bytes: u64,
    writes: BTreeMap<Vec<u8>, Write>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(trees: &'a Trees, meta: Meta, events: u64, bytes: u64) -> Self {
        Txn {
            trees,
            meta,
            events,
            bytes,
            writes: BTreeMap::new(),
        }
    }

    /// The size of a stored entry as this plan sees it; `None` if the plan removed it.
    pub(super) fn live_size(&self, seq: u64, tree_size: u64) -> Option<u64> {
        match self.writes.get(record::seq_key(seq).as_slice()) {
            Some(Write::Remove { .. }) => None,
            Some(Write::Put { value, .. }) => Some(accounted(value.len())),
            None => Some(tree_size),
        }
    }

    /// Stored entries of `kind` as this plan sees them, oldest first.
    pub(super) fn live(
        &self,
        kind: Kind,
    ) -> impl DoubleEndedIterator<Item = Result<(u64, u64), PlanError>> + use<'a> {
        let trees = self.trees;
        trees.index.scan_prefix([kind as u8]).map(move |item| {
            let (k, v) = item?;
            match (record::parse_index_key(&k), record::parse_size(&v)) {
                (Some((_, seq)), Some(size)) => Ok((seq, size)),
                // Open checks every index entry and only this module writes them.
                _ => Err(PlanError::Storage(sled::Error::ReportableBug(
                    "invalid outbox index entry".into(),
                ))),
            }
        })
    }

    /// The stored event at `seq`, decoded; a stored value that does not decode, or decodes
    /// to another seq or to no storable kind, is [`PlanError::Corrupt`].
    pub(super) fn event(&self, seq: u64) -> Result<Option<v1::Event>, PlanError> {
        let key = record::seq_key(seq);
        let bytes: Vec<u8> = match self.writes.get(key.as_slice()) {
            Some(Write::Remove { .. }) => return Ok(None),
            Some(Write::Put { value, .. }) => value.clone(),
            None => match self.trees.events.get(key)? {
                Some(v) => v.to_vec(),
                None => return Ok(None),
            },
        };
        decode(&bytes, seq)
            .map(Some)
            .ok_or_else(|| PlanError::Corrupt(key.to_vec()))
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.meta.last_seq = self.meta.last_seq.saturating_add(1);
        self.meta.last_seq
    }

    /// Stages the removal of a stored event of known kind and size.
    pub(super) fn remove(&mut self, seq: u64, kind: Kind, size: u64) {
        self.writes.insert(
            record::seq_key(seq).to_vec(),
            Write::Remove { kind: Some(kind) },
        );
        self.events = self.events.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
    }

    /// Whether the plan already writes or removes the events-tree entry `key`.
    pub(super) fn is_staged(&self, key: &[u8]) -> bool {
        self.writes.contains_key(key)
    }

    /// Stages the removal of an events-tree entry the index does not describe.
    pub(super) fn remove_unindexed(&mut self, key: Vec<u8>) {
        self.writes.insert(key, Write::Remove { kind: None });
    }

    /// Stages a re-encoded version of a stored event (same seq, same kind).
    pub(super) fn replace(&mut self, event: &v1::Event, kind: Kind, old_size: u64) {
        let value = event.encode_to_vec();
        self.bytes = self
            .bytes
            .saturating_sub(old_size)
            .saturating_add(accounted(value.len()));
        self.writes.insert(
            record::seq_key(event.seq).to_vec(),
            Write::Put { kind, value },
        );
    }

    /// Stages a new event; `event.seq` must already be assigned.
    pub(super) fn add(&mut self, event: &v1::Event, kind: Kind) {
        let value = event.encode_to_vec();
        self.events = self.events.saturating_add(1);
        self.bytes = self.bytes.saturating_add(accounted(value.len()));
        self.writes.insert(
            record::seq_key(event.seq).to_vec(),
            Write::Put { kind, value },
        );
    }

    /// Applies the plan in one transaction (not yet flushed) and returns the new state.
    pub(super) fn commit(self) -> Result<(Meta, u64, u64), sled::Error> {
        let meta_bytes = self.meta.encode();
        let writes = &self.writes;
        let trees = self.trees;
        let result: Result<(), TransactionError<()>> = (&trees.events, &trees.index, &trees.meta)
            .transaction(|(events, index, meta)| {
                for (key, write) in writes {
                    let seq = record::parse_seq_key(key);
                    match write {
                        Write::Put { kind, value } => {
                            events.insert(key.as_slice(), value.as_slice())?;
                            if let Some(seq) = seq {
                                let size = accounted(value.len()).to_be_bytes();
                                index.insert(&record::index_key(*kind, seq)[..], &size[..])?;
                            }
                        }
                        Write::Remove { kind } => {
                            events.remove(key.as_slice())?;
                            if let (Some(kind), Some(seq)) = (kind, seq) {
                                index.remove(&record::index_key(*kind, seq)[..])?;
                            }
                        }
                    }
                }
                meta.insert(record::META_KEY, meta_bytes.as_slice())?;
                Ok(())
            });
        match result {
            Ok(()) => Ok((self.meta, self.events, self.bytes)),
            Err(TransactionError::Storage(e)) => Err(e),
            // The closure never aborts.
            Err(TransactionError::Abort(())) => Err(sled::Error::ReportableBug(
                "outbox transaction aborted".into(),
            )),
        }
    }
}

/// Decodes a stored event and checks it is what the outbox stores under `seq`.
pub(super) fn decode(bytes: &[u8], seq: u64) -> Option<v1::Event> {
    let event = v1::Event::decode(bytes).ok()?;
    (event.seq == seq && Kind::of(&event).is_some()).then_some(event)
}
