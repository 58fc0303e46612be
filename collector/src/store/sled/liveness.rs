//! Heartbeats kept in memory and written in groups, not one sled batch each.
//!
//! Why: at 10 000 agents a heartbeat every 30 s is 333 writes/s. Each was a transaction
//! under the writer lock and a `sled::Batch`, and a batch takes sled's global
//! concurrency-control lock exclusively, so it also waits for every flush (fsync) in
//! progress. Measured with `fleet-sim --scenario fleet --agents 10000`: the writer lock
//! saturated in heartbeat bursts (lock waits up to 880 ms, ack p99 1.27 s) while each
//! commit itself took ~0.2 ms. Heartbeats are liveness, never acknowledged and never
//! flushed on their own (the module doc of `sled.rs`), so nothing forces a batch each.
//!
//! Promises:
//! - **Read your heartbeat**: `agent`/`agents` and every transaction that reads an agent
//!   record (`Txn::peek_agent`) see the latest heartbeat at once; a heartbeat is pending
//!   only while no transaction has written that agent since. A transaction folds the
//!   heartbeats recorded before it began (`horizon`) into the records it writes and drops
//!   them from here once committed, so a later write never goes back to older values.
//! - **Bounded staleness on disk**: pending heartbeats are written at least every
//!   [`WRITE_EVERY`] by the heartbeat that finds them due (in chunks of [`CHUNK`] agents,
//!   releasing the writer lock between chunks), and before `Store::flush` (shutdown). A
//!   crash loses at most the heartbeats of the last [`WRITE_EVERY`] plus whatever was not
//!   flushed, as before: liveness only; `connected` is reset at open anyway.
//! - **Bounded memory**: one entry per agent at most.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::store::AgentRecord;

/// Pending heartbeats are written at least this often (when heartbeats keep coming).
pub(super) const WRITE_EVERY: Duration = Duration::from_secs(1);
/// Agents per transaction when writing pending heartbeats.
pub(super) const CHUNK: usize = 256;

/// One agent's latest heartbeat not yet in the tree.
#[derive(Clone, Copy, Debug)]
pub(super) struct Beat {
    /// Order of recording (store-wide), to tell a folded beat from a newer one.
    pub(super) number: u64,
    pub(super) at: SystemTime,
    pub(super) outbox_events: u64,
    pub(super) outbox_bytes: u64,
}

impl Beat {
    /// What the heartbeat does to the agent's record (as `record_heartbeat` always did).
    pub(super) fn apply_to(&self, rec: &mut AgentRecord) {
        rec.last_seen = Some(self.at);
        rec.outbox_events = self.outbox_events;
        rec.outbox_bytes = self.outbox_bytes;
    }
}

/// The pending heartbeats of a store.
pub(super) struct Liveness {
    pending: Mutex<HashMap<String, Beat>>,
    /// Number of the last beat recorded.
    recorded: AtomicU64,
    /// When pending beats were last written (or the store opened); a `try_lock` elects the
    /// one caller that writes them.
    written: Mutex<Instant>,
}

// === impl Liveness ===

impl Liveness {
    pub(super) fn new() -> Self {
        Liveness {
            pending: Mutex::new(HashMap::new()),
            recorded: AtomicU64::new(0),
            written: Mutex::new(Instant::now()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Beat>> {
        // A plain map of values: a panic elsewhere cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a heartbeat of `agent_id` (replacing an older pending one).
    pub(super) fn record(&self, agent_id: &str, at: SystemTime, events: u64, bytes: u64) {
        let mut map = self.map();
        // Numbered under the map lock, so numbers grow in map order.
        let number = self.recorded.fetch_add(1, Ordering::AcqRel) + 1;
        let beat = Beat {
            number,
            at,
            outbox_events: events,
            outbox_bytes: bytes,
        };
        match map.get_mut(agent_id) {
            Some(b) => *b = beat,
            None => {
                map.insert(agent_id.to_owned(), beat);
            }
        }
    }

    /// Number of the last beat recorded: a transaction that begins now folds beats up to it.
    pub(super) fn horizon(&self) -> u64 {
        let _map = self.map();
        self.recorded.load(Ordering::Acquire)
    }

    /// The pending beat of `agent_id` recorded up to `horizon`, if any.
    pub(super) fn get(&self, agent_id: &str, horizon: u64) -> Option<Beat> {
        self.map()
            .get(agent_id)
            .filter(|b| b.number <= horizon)
            .copied()
    }

    /// Overlays the pending beats on records read from the tree.
    pub(super) fn overlay(&self, recs: &mut [AgentRecord]) {
        let map = self.map();
        if map.is_empty() {
            return;
        }
        for rec in recs {
            if let Some(b) = map.get(&rec.agent_id) {
                b.apply_to(rec);
            }
        }
    }

    /// Drops the beats of `agents` recorded up to `horizon`: a committed transaction wrote them.
    pub(super) fn written<'a>(&self, agents: impl Iterator<Item = &'a String>, horizon: u64) {
        let mut map = self.map();
        if map.is_empty() {
            return;
        }
        for id in agents {
            if map.get(id).is_some_and(|b| b.number <= horizon) {
                map.remove(id);
            }
        }
    }

    /// When pending beats are due to be written (`force`: now, e.g. before a shutdown
    /// flush), the agent ids to write, and the guard that makes this caller the only
    /// writer until it is dropped. `None`: not due, nothing pending, or another caller is
    /// writing them.
    pub(super) fn due(&self, force: bool) -> Option<(MutexGuard<'_, Instant>, Vec<String>)> {
        let mut written = if force {
            self.written.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            let w = self.written.try_lock().ok()?;
            if w.elapsed() < WRITE_EVERY {
                return None;
            }
            w
        };
        *written = Instant::now();
        let ids: Vec<String> = self.map().keys().cloned().collect();
        (!ids.is_empty()).then_some((written, ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> AgentRecord {
        AgentRecord::new(id, "i", "v", Default::default(), SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn a_newer_beat_survives_the_commit_of_an_older_one() {
        let l = Liveness::new();
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        l.record("a", t(1), 1, 10);
        let horizon = l.horizon();
        l.record("a", t(2), 2, 20);
        assert!(l.get("a", horizon).is_none(), "recorded after the horizon");
        l.written([String::from("a")].iter(), horizon);
        let mut recs = [rec("a"), rec("b")];
        l.overlay(&mut recs);
        assert_eq!((recs[0].last_seen, recs[0].outbox_events), (Some(t(2)), 2));
        assert_eq!(recs[1].last_seen, rec("b").last_seen);
        l.written([String::from("a")].iter(), l.horizon());
        let mut recs = [rec("a")];
        l.overlay(&mut recs);
        assert_eq!(recs[0].outbox_events, 0);
    }

    #[test]
    fn pending_beats_are_due_once_per_interval() {
        let l = Liveness::new();
        assert!(l.due(true).is_none(), "nothing pending");
        l.record("a", SystemTime::UNIX_EPOCH, 0, 0);
        assert!(l.due(false).is_none(), "just written");
        let (guard, ids) = l.due(true).unwrap();
        assert_eq!(ids, vec!["a".to_owned()]);
        drop(guard);
        assert!(l.due(false).is_none(), "written just now");
    }
}
