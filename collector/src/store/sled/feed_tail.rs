//! The feed's tail in memory: the CI versions of the latest commits, as the writer had them,
//! so that feed consumers that keep up (the judgment engine, host links) read them without
//! going back to the tree.
//!
//! Why: reading an entry from the tree costs its CI's identity (class-index probes and a
//! CI record read) and its previous attributes (a page lookup in an earlier commit); the
//! writer knows both when it writes the version. Under a sustained stream of changes those
//! reads were a quarter of the collector's CPU, each consumer paying for them again.
//!
//! Invariants:
//! - The tail holds every version of every commit numbered `first..=last pushed`, in feed
//!   order ((commit, CI id, version)); commits are pushed whole, before the store publishes
//!   their number, and evicted whole from the front (which moves `first`). A commit that
//!   wrote no versions has nothing to push: it is covered all the same.
//! - So a read after position `p` can be answered from the tail exactly when `p.commit >=
//!   first` (everything after `p` is in it), or when there is no `p` and `first` is 1 (the
//!   tail still holds the store's whole history). Otherwise the caller reads the tree; the
//!   two give identical entries (`feed_tail_matches_the_tree` test).
//! - Bounded: at most [`MAX_BYTES`] of entries (approximate accounting), oldest commits go
//!   first. A store opened afresh starts with an empty tail after its last commit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use cmdb_proto::model::Attrs;

use super::codec::{decode_attrs, decode_version_payload};
use super::keys;
use crate::store::{CiId, CiVersion, FeedEntry, FeedHead, FeedPos, StoreError};

/// Most bytes of entries the tail keeps (a few seconds of the heaviest change stream; a
/// consumer further behind reads the tree).
pub(super) const MAX_BYTES: usize = 32 << 20;

/// What a version replaced, as the writer knew it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum OldAttrs {
    /// The CI's first version: nothing.
    None,
    /// The same attributes as the version's own (a removal or a retirement).
    Same,
    /// Other attributes, in `codec::encode_attrs` form.
    Encoded(Vec<u8>),
}

/// One version written by a commit.
#[derive(Debug)]
pub(super) struct TailEntry {
    pub(super) commit: u64,
    pub(super) id: CiId,
    pub(super) version: u64,
    /// The CI's record key (`c/<host>\0<class>\0<id>`): its host and class.
    pub(super) rkey: Vec<u8>,
    pub(super) key: String,
    /// The version entry as written to its page.
    pub(super) payload: Vec<u8>,
    pub(super) old: OldAttrs,
}

impl TailEntry {
    fn bytes(&self) -> usize {
        let old = match &self.old {
            OldAttrs::Encoded(b) => b.len(),
            _ => 0,
        };
        128 + self.id.len() + self.rkey.len() + self.key.len() + self.payload.len() + old
    }

    fn pos_le(&self, p: &FeedPos) -> bool {
        (self.commit, self.id.as_str(), self.version) <= (p.commit, p.ci_id.as_str(), p.version)
    }

    /// The CI's host and class, from its record key.
    fn host_class(&self) -> Result<(&str, &str), StoreError> {
        let (host, class, _) = keys::ci_parts(&self.rkey).ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(&self.rkey).into_owned(),
            reason: "malformed CI record key in the feed tail".into(),
        })?;
        Ok((host, class))
    }

    fn pos(&self) -> FeedPos {
        FeedPos {
            commit: self.commit,
            ci_id: self.id.clone(),
            version: self.version,
        }
    }

    /// The feed head: the entry without the version's contents (nothing decoded).
    pub(super) fn head(&self) -> Result<FeedHead, StoreError> {
        let (host, class) = self.host_class()?;
        Ok(FeedHead {
            pos: self.pos(),
            host_id: host.to_owned(),
            class: class.to_owned(),
            key: self.key.clone(),
        })
    }

    /// The feed entry, decoded.
    pub(super) fn decode(&self) -> Result<FeedEntry, StoreError> {
        let (host, class) = self.host_class()?;
        let v = decode_version_payload(&self.rkey, &self.payload)?;
        let old_attrs = match &self.old {
            OldAttrs::None => Attrs::new(),
            OldAttrs::Same => v.attrs.clone(),
            OldAttrs::Encoded(b) => decode_attrs(&self.rkey, b)?,
        };
        Ok(FeedEntry {
            pos: self.pos(),
            host_id: host.to_owned(),
            class: class.to_owned(),
            key: self.key.clone(),
            version: CiVersion {
                ci_id: self.id.clone(),
                version: self.version,
                change: v.change,
                state: v.state,
                attrs: v.attrs,
                old_attrs,
                observed_at: v.observed_at,
                agent_id: v.agent_id,
                seq: v.seq,
                change_id: v.change_id,
            },
        })
    }
}

struct Inner {
    /// Every commit from this number on is in `entries` (whole).
    first: u64,
    entries: VecDeque<Arc<TailEntry>>,
    bytes: usize,
}

pub(super) struct FeedTail {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl FeedTail {
    /// An empty tail for a store whose last commit is `last_commit`.
    pub(super) fn new(last_commit: u64, max_bytes: usize) -> Self {
        FeedTail {
            inner: Mutex::new(Inner {
                first: last_commit + 1,
                entries: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    /// Adds commit `commit`'s versions (in feed order; empty when it wrote none). Commits
    /// come in number order, each once, before the store publishes the number. Returns the
    /// entries it evicted, for the caller to free outside its locks.
    pub(super) fn push(&self, commit: u64, entries: Vec<TailEntry>) -> Vec<Arc<TailEntry>> {
        let mut evicted = Vec::new();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.is_empty() {
            return evicted;
        }
        for e in entries {
            debug_assert_eq!(e.commit, commit);
            inner.bytes += e.bytes();
            inner.entries.push_back(Arc::new(e));
        }
        // Whole commits out of the front while over budget; the newest commit stays even
        // if it alone is over (it is what caught-up consumers read next).
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.entries.front().map(|e| e.commit) else {
                break;
            };
            if oldest == commit {
                break;
            }
            while inner.entries.front().is_some_and(|e| e.commit == oldest) {
                if let Some(e) = inner.entries.pop_front() {
                    inner.bytes -= e.bytes();
                    evicted.push(e);
                }
            }
            inner.first = oldest + 1;
        }
        evicted
    }

    /// The entries after `after` of commits up to `last_commit`, at most `limit`; `None` when
    /// the tail no longer (or never did) hold them all and the tree must be read.
    pub(super) fn read(
        &self,
        last_commit: u64,
        after: Option<&FeedPos>,
        limit: usize,
    ) -> Option<Vec<Arc<TailEntry>>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let start = match after {
            None if inner.first == 1 => 0,
            None => return None,
            Some(a) if a.commit >= inner.first => inner.entries.partition_point(|e| e.pos_le(a)),
            Some(_) => return None,
        };
        Some(
            inner
                .entries
                .range(start..)
                .take_while(|e| e.commit <= last_commit)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(commit: u64, id: &str, version: u64) -> TailEntry {
        TailEntry {
            commit,
            id: id.into(),
            version,
            rkey: keys::ci("h", "package", id),
            key: "k".into(),
            payload: vec![0; 100],
            old: OldAttrs::None,
        }
    }

    fn pos(commit: u64, id: &str, version: u64) -> FeedPos {
        FeedPos {
            commit,
            ci_id: id.into(),
            version,
        }
    }

    fn ids(v: &[Arc<TailEntry>]) -> Vec<(u64, &str, u64)> {
        v.iter()
            .map(|e| (e.commit, e.id.as_str(), e.version))
            .collect()
    }

    #[test]
    fn reads_resume_inside_and_between_commits() {
        let tail = FeedTail::new(0, MAX_BYTES);
        tail.push(
            1,
            vec![entry(1, "a", 1), entry(1, "b", 1), entry(1, "b", 2)],
        );
        tail.push(3, vec![entry(3, "a", 2)]);
        let all = tail.read(3, None, 10).unwrap();
        assert_eq!(
            ids(&all),
            [(1, "a", 1), (1, "b", 1), (1, "b", 2), (3, "a", 2)]
        );
        let mid = tail.read(3, Some(&pos(1, "b", 1)), 10).unwrap();
        assert_eq!(ids(&mid), [(1, "b", 2), (3, "a", 2)]);
        // Commit 2 wrote no versions: a position in it resumes at commit 3.
        let gap = tail.read(3, Some(&pos(2, "zz", 9)), 10).unwrap();
        assert_eq!(ids(&gap), [(3, "a", 2)]);
        // Unpublished commits are not returned; limits hold.
        assert_eq!(ids(&tail.read(2, None, 10).unwrap()).len(), 3);
        assert_eq!(ids(&tail.read(3, None, 2).unwrap()).len(), 2);
        assert!(tail.read(3, Some(&pos(3, "a", 2)), 10).unwrap().is_empty());
    }

    #[test]
    fn a_reopened_store_reads_its_history_from_the_tree() {
        let tail = FeedTail::new(5, MAX_BYTES);
        tail.push(6, vec![entry(6, "a", 1)]);
        assert!(tail.read(6, None, 10).is_none());
        assert!(tail.read(6, Some(&pos(5, "a", 1)), 10).is_none());
        assert_eq!(tail.read(6, Some(&pos(6, "", 0)), 10).unwrap().len(), 1);
    }

    #[test]
    fn eviction_is_by_whole_commits_and_moves_the_boundary() {
        let one = entry(1, "a", 1).bytes();
        let tail = FeedTail::new(0, 3 * one);
        assert!(
            tail.push(1, vec![entry(1, "a", 1), entry(1, "b", 1)])
                .is_empty()
        );
        assert!(tail.push(2, vec![entry(2, "a", 2)]).is_empty());
        assert_eq!(tail.read(2, None, 10).unwrap().len(), 3);
        let evicted = tail.push(3, vec![entry(3, "a", 3)]);
        // Commit 1 went (both entries, handed back to be freed), so from-the-start and
        // positions in it go to the tree.
        assert_eq!(
            evicted
                .iter()
                .map(|e| (e.commit, e.id.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (1, "b")]
        );
        assert!(tail.read(3, None, 10).is_none());
        assert!(tail.read(3, Some(&pos(1, "a", 1)), 10).is_none());
        assert_eq!(
            ids(&tail.read(3, Some(&pos(2, "", 0)), 10).unwrap()).len(),
            2
        );
        // A single commit over the budget stays (the newest is always readable).
        tail.push(4, (0..10).map(|i| entry(4, &format!("c{i}"), 1)).collect());
        assert_eq!(tail.read(4, Some(&pos(4, "", 0)), 100).unwrap().len(), 10);
        assert!(tail.read(4, Some(&pos(3, "", 0)), 100).is_none());
    }
}
