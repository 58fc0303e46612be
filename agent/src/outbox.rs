//! The agent's durable outbox: every event bound for the collector (snapshots, deltas,
//! metrics, shutdowns, gaps) gets the next seq and is on disk before anybody may send it;
//! it leaves only when the collector acknowledges it. Embedded sled, blocking API (callers
//! use `spawn_blocking`). Heartbeats never enter it (seq 0 by protocol), so a backlog can
//! never delay them.
//!
//! # Invariants
//!
//! 1. **Seqs** start at 1, strictly increase and are never reused: not after everything was
//!    acknowledged and trimmed, not across restarts, not after a corrupt store was moved
//!    aside. Gaps in the sequence are normal (dropped metrics, compacted deltas, reserved
//!    blocks skipped after a crash).
//! 2. **Durability**: [`Outbox::append`] returns the seq only after the event is flushed
//!    (`sled::Db::flush`, an fsync); so does every other change ([`Outbox::append_all`] per
//!    event, [`Outbox::ack`] per chunk of its trim). Nothing relies on sled's background
//!    flusher (`flush_every_ms` is off).
//! 3. **Bounded**: the accounted size of the pending events, each event's encoded size plus
//!    64 bytes of bookkeeping, never exceeds `max_bytes` (default 64 MiB); an event larger
//!    than that is refused. sled's cache is `cache_bytes` (default 256 KiB).
//! 4. **Inventory changes are never silently dropped**: each one is pending, acknowledged,
//!    merged into a later pending change, superseded by a later pending snapshot, or covered
//!    by a Gap event plus `snapshot_required` (the caller then queues a full snapshot).
//! 5. **Shutdown and Gap events are never dropped.** Metrics are the first to go.
//!
//! # Overflow policy
//!
//! When an append would exceed `max_bytes`, in order, until it fits:
//! 1. the **oldest Metrics** events are dropped (`dropped_metrics`); an incoming Metrics
//!    event stops there: with no older metrics left it is dropped itself, never inventory;
//! 2. **compaction**: inventory events older than the newest pending Snapshot (or all of
//!    them, when the incoming event is a Snapshot) are dropped as superseded; then every
//!    ItemChange to a (class, key) that a later pending delta (or the incoming one) changes
//!    again is merged into that later change with [`crate::delta::merge_changes`], and the
//!    deltas are re-encoded in place under their seqs (`compacted_changes`). Deltas from a
//!    chain's first change up to its last lose their `content_hash` (empty = not checkable);
//!    a delta left with no change at all is removed. One compaction reads at most 2 MiB of
//!    pending deltas, the oldest first (the incoming delta joins only if that covers them
//!    all);
//! 3. every pending Snapshot and Delta is dropped (`dropped_inventory_events`), a Gap event
//!    `{dropped_metrics, dropped_inventory_changes, reason}` is appended (`gaps`; the counts
//!    are everything dropped since the previous Gap, a dropped snapshot counting as one
//!    change), and `snapshot_required` is set. An incoming Delta is superseded by the coming
//!    snapshot and dropped (counted), as is every Delta appended until a Snapshot is: until
//!    then the collector could not apply it. An incoming Snapshot, Shutdown or Gap is kept.
//!
//! If Shutdown and Gap events alone leave no room, the append fails with
//! [`OutboxError::Full`]. Compaction is safe against deltas the collector applied without
//! acknowledging them yet (a reconnect, an agent crash between send and ack): delta
//! application is state-based (see [`crate::delta`]), each change still sets its item to
//! the state it had at its seq, and the last change of each item stays where it was.
//!
//! # On-disk layout
//!
//! One sled database in `dir` (sled configured explicitly: `cache_capacity` from the
//! config, `flush_every_ms(None)`, `Mode::LowSpace`, 256 KiB segments for a new store and
//! the size recorded in sled's `conf` for an existing one), three trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `events` | seq, u64 big-endian (key order = FIFO order) | protobuf `cmdb.v1.Event`, its `seq` equal to the key |
//! | `index` | kind byte (1 snapshot, 2 delta, 3 metrics, 4 shutdown, 5 gap) ++ seq BE | accounted size, u64 BE |
//! | `meta` | `"state"` | `OBX1`, nine u64 BE (last seq, acked seq, the counters, the unreported drop counts), a flags byte (snapshot required, awaiting snapshot) |
//!
//! Every change (append, the drops and rewrites of an overflow, a trim) is one sled
//! transaction across the three trees, so the index and the meta record always describe the
//! events tree exactly, also after a crash. Stats are recomputed from `index` on open.
//!
//! Beside the directory, `<dir>.seq` holds the seq floor in one checksummed line, replaced
//! atomically (write, fsync, rename, fsync the directory). While running it says `running
//! H` with H reserved 1024 seqs ahead (rewritten once per 1024 appends); an orderly close
//! (dropping the last handle) rewrites it as `clean N`, N the exact last seq.
//!
//! # Corruption
//!
//! If sled fails to open the directory with a corruption-like error (corruption, an
//! unsupported or buggy state, unexpected end of file, invalid data, not a directory), or
//! panics (caught with `catch_unwind`), or the meta record or an index entry is
//! undecodable or inconsistent, the directory is renamed to `<dir>.corrupt-<unix secs>`,
//! a fresh one is opened and [`Opened::moved_aside`] says where the old one went. Other
//! errors (permissions, a lock held by another process) are returned and nothing is moved.
//! The fresh outbox starts after the side file's seq (after a floor derived from the
//! current time in milliseconds when the side file is missing or damaged too), so that no
//! seq the collector may have acknowledged is reused; it records a Gap and sets
//! `snapshot_required`. The same happens, without moving anything, when a cleanly closed
//! outbox comes back with a last seq below the side file's: the store lost events it had
//! made durable. An individual event that does not decode when read is removed, counted
//! (`corrupt_events`) and reported by a Gap, and `snapshot_required` is set.
//!
//! # Space amplification
//!
//! sled never shrinks its file below the high-water mark of live data and keeps superseded
//! versions until it rewrites a segment, so the directory is larger than the pending events.
//! Measured by `tests::space_amplification` (10 000 events of 1 KiB, i.e. 10.5 MiB
//! accounted, on this kind of machine): appended and acknowledged one at a time, the
//! directory stays at 2.5 MiB; appended as a backlog it peaks at 19 MiB (1.8x the live
//! bytes) and stays at 21 MiB (2x) after everything was acknowledged, reused by later
//! appends but not returned to the file system. Plan about 2-3x `max_bytes` of disk for the
//! outbox (up to about 200 MiB at the 64 MiB default).
//!
//! # sled's deadlock
//!
//! sled 0.34.7 can deadlock when a commit moves to a new log segment while a file truncation
//! is pending and enough earlier segment writes are queued to occupy every thread of its IO
//! pool (all of them then wait for the segment accountant the committing thread holds, and
//! the truncation it waits for never runs; seen here with 1 000 unflushed 1 KiB appends,
//! about one run in ten; sled issue #1412 is the same family). The outbox therefore flushes
//! every commit before the next one starts (so `append_all` costs one fsync per event) and
//! keeps each transaction to a few segments: trims go in chunks of 512 events, one
//! compaction rewrites at most 2 MiB of deltas, and events above 128 KiB go to sled's blob
//! files rather than the log. `tests::space_amplification` runs that write pattern under a
//! watchdog.
//!
//! What it never does: send anything, decide what to send, or look inside an event beyond
//! what the overflow policy needs.

mod overflow;
mod record;
mod seqfile;
mod txn;

#[cfg(test)]
mod model_check;
#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use cmdb_proto::v1;

use record::{Kind, Meta};
use seqfile::{Read as SideRead, SideSeq};
use txn::{PlanError, Trees, Txn};

/// Default bound on the outbox's accounted size.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Default sled page cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 10;
/// The smallest `max_bytes` accepted (a few events must fit).
pub const MIN_MAX_BYTES: u64 = 4 << 10;

/// Removals per transaction while trimming acknowledged events (bounds a trim's memory).
const TRIM_CHUNK: usize = 512;
/// How many corrupt events one call will step over before giving up.
const MAX_CORRUPT_PER_CALL: usize = 1024;

/// Where the outbox lives and how big it may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// The sled directory; `<dir>.seq` is kept beside it.
    pub dir: PathBuf,
    /// Bound on the accounted size of pending events.
    pub max_bytes: u64,
    /// sled's `cache_capacity`.
    pub cache_bytes: u64,
}

impl OutboxConfig {
    /// The defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        OutboxConfig {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// What the outbox has done since it was created (persisted across restarts).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct OutboxStats {
    /// Pending events.
    pub events: u64,
    /// Their accounted size (encoded size + 64 bytes each).
    pub bytes: u64,
    /// Metrics events dropped to make room.
    pub dropped_metrics: u64,
    /// Item changes merged into later ones, plus those in superseded deltas and snapshots.
    pub compacted_changes: u64,
    /// Snapshot and Delta events replaced by a Gap and a forced snapshot.
    pub dropped_inventory_events: u64,
    /// Gap events the outbox appended.
    pub gaps: u64,
    /// Stored events that did not decode and were skipped.
    pub corrupt_events: u64,
}

/// An outbox that cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The configuration cannot describe a usable outbox.
    #[error("invalid outbox configuration: {0}")]
    Config(&'static str),
    /// The store could not be opened for a reason other than corruption (permissions, a lock
    /// held by another process, a full disk); nothing was moved.
    #[error("cannot open outbox {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    /// A corrupt outbox could not be renamed out of the way.
    #[error("cannot move corrupt outbox {dir} aside: {source}")]
    MoveAside { dir: PathBuf, source: io::Error },
    /// The side file holding the seq floor could not be read or written.
    #[error("outbox seq file {path}: {source}")]
    SeqFile { path: PathBuf, source: io::Error },
    /// Reading or writing the store failed.
    #[error("outbox storage: {0}")]
    Storage(#[from] sled::Error),
    /// Heartbeats are never stored (seq 0 by protocol).
    #[error("heartbeats are not stored in the outbox")]
    Heartbeat,
    /// The event has no kind.
    #[error("event has no kind")]
    NoKind,
    /// The event alone is larger than the whole outbox.
    #[error("event of {size} bytes exceeds the outbox bound of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// Only events that are never dropped (Shutdown, Gap) are left and the event does not fit.
    #[error("outbox full: an event of {size} bytes does not fit beside Shutdown and Gap events")]
    Full { size: u64 },
    /// Corrupt events kept turning up within one call.
    #[error("outbox: more than {0} corrupt events in one call")]
    TooManyCorrupt(usize),
}

/// An opened outbox and, if the old directory was corrupt, where it was moved.
pub struct Opened {
    pub outbox: Outbox,
    pub moved_aside: Option<PathBuf>,
}

/// The durable outbox. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    trees: Trees,
    max_bytes: u64,
    seq_path: PathBuf,
    state: Mutex<State>,
}

struct State {
    meta: Meta,
    events: u64,
    bytes: u64,
    /// The side file promises no seq above this was handed out.
    reserved: u64,
}

// === impl Outbox ===

impl Outbox {
    /// Opens (or creates) the outbox in `cfg.dir`, moving a corrupt one aside.
    pub fn open(cfg: OutboxConfig) -> Result<Opened, OutboxError> {
        if cfg.max_bytes < MIN_MAX_BYTES {
            return Err(OutboxError::Config("max_bytes must be at least 4 KiB"));
        }
        let seq_path = seqfile::path_for(&cfg.dir)
            .ok_or(OutboxError::Config("the outbox directory needs a name"))?;
        let side_err = |source| OutboxError::SeqFile {
            path: seq_path.clone(),
            source,
        };
        let side = seqfile::read(&seq_path).map_err(side_err)?;
        if side == SideRead::Damaged {
            tracing::warn!(path = %seq_path.display(), "The outbox seq file is damaged; it will be rewritten.");
        }

        let opened = match open_trees(&cfg) {
            Ok(trees) => match load(&trees) {
                Ok(loaded) => Ok((trees, loaded)),
                Err(why) => {
                    drop(trees);
                    Err(why)
                }
            },
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Corrupt(why)) => Err(why),
        };
        let (trees, loaded, moved_aside, loss) = match opened {
            Ok((trees, loaded)) => {
                let loss = match (&loaded, side) {
                    (Some(l), SideRead::Valid(SideSeq::Clean(n))) if n > l.meta.last_seq => {
                        Some(format!(
                            "outbox store came back at seq {} below its last seq {n}",
                            l.meta.last_seq
                        ))
                    }
                    (None, SideRead::Valid(s)) if s.seq() > 0 => Some(format!(
                        "outbox directory {} was missing; starting after seq {}",
                        cfg.dir.display(),
                        s.seq()
                    )),
                    _ => None,
                };
                (trees, loaded, None, loss)
            }
            Err(why) => {
                let moved = move_aside(&cfg.dir)?;
                tracing::error!(dir = %cfg.dir.display(), moved_to = %moved.display(), reason = %why,
                    "The outbox was corrupt and was moved aside; its pending events are lost and a full snapshot will follow.");
                let trees = match open_trees(&cfg) {
                    Ok(t) => t,
                    Err(OpenFailure::Fatal(e)) => return Err(e),
                    Err(OpenFailure::Corrupt(why)) => {
                        return Err(OutboxError::Open {
                            dir: cfg.dir.clone(),
                            source: sled::Error::Unsupported(why),
                        });
                    }
                };
                let reason = format!(
                    "outbox was corrupt ({why}) and was moved aside to {}",
                    moved.display()
                );
                (trees, None, Some(moved), Some(reason))
            }
        };

        let fresh = loaded.is_none();
        let Loaded {
            mut meta,
            events,
            bytes,
        } = loaded.unwrap_or_default();
        // Never below what the side file promises; after losing the store and the side file,
        // never below the clock (no agent hands out a seq per millisecond since 1970).
        let floor = match side {
            SideRead::Valid(s) => s.seq(),
            // A first start.
            SideRead::Missing if moved_aside.is_none() => 0,
            SideRead::Missing | SideRead::Damaged if fresh => time_floor(),
            // The store itself knows its last seq.
            SideRead::Missing | SideRead::Damaged => 0,
        };
        if floor > meta.last_seq {
            meta.last_seq = floor;
            if fresh {
                meta.acked_seq = floor;
            }
        }
        // A requirement the caller took but never fulfilled (a crash in between) comes back.
        if meta.awaiting_snapshot {
            meta.snapshot_required = true;
        }

        let reserved = meta.last_seq.saturating_add(seqfile::RESERVE);
        seqfile::write(&seq_path, SideSeq::Running(reserved)).map_err(side_err)?;
        let outbox = Outbox {
            inner: Arc::new(Inner {
                trees,
                max_bytes: cfg.max_bytes,
                seq_path: seq_path.clone(),
                state: Mutex::new(State {
                    meta,
                    events,
                    bytes,
                    reserved,
                }),
            }),
        };
        {
            let mut st = outbox.lock();
            match loss {
                Some(reason) => outbox.record_loss(&mut st, &reason)?,
                None => {
                    // Persist the (possibly raised) seq floor and flags.
                    let txn = Txn::new(&outbox.inner.trees, st.meta.clone(), st.events, st.bytes);
                    outbox.commit(&mut st, txn)?;
                }
            }
        }
        Ok(Opened {
            outbox,
            moved_aside,
        })
    }

    /// Assigns the next seq (overwriting `event.seq`) and stores the event durably before
    /// returning the seq. Under overflow the returned seq may belong to an event that was
    /// dropped right away (a Metrics event, or a Delta superseded by a required snapshot):
    /// that is counted in [`Outbox::stats`], never silent.
    pub fn append(&self, event: v1::Event) -> Result<u64, OutboxError> {
        let kind = self.check(&event)?;
        let mut st = self.lock();
        self.append_locked(&mut st, event, kind)
    }

    /// Appends several events in one call. All are checked first (nothing is stored if one
    /// is refused); on a storage error or [`OutboxError::Full`] midway, the events before it
    /// are stored. Each event is flushed as it is committed, not once for the batch: see
    /// "sled's deadlock" in the module doc.
    pub fn append_all(&self, events: Vec<v1::Event>) -> Result<Vec<u64>, OutboxError> {
        let kinds = events
            .iter()
            .map(|e| self.check(e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut st = self.lock();
        let mut seqs = Vec::with_capacity(events.len());
        let mut failure = None;
        for (event, kind) in events.into_iter().zip(kinds) {
            match self.append_locked(&mut st, event, kind) {
                Ok(seq) => seqs.push(seq),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(seqs),
        }
    }

    /// Appends a Gap reporting the metrics dropped for room since the last Gap, if any, so
    /// that the collector learns of every loss even when no inventory had to go (older
    /// metrics make room for the Gap itself). The caller calls this once per metrics window,
    /// which coalesces a whole overflow episode into few Gaps. Returns whether one was added.
    pub fn report_dropped_metrics(&self) -> Result<bool, OutboxError> {
        let mut st = self.lock();
        if st.meta.unreported_metrics == 0 {
            return Ok(false);
        }
        let before = st.meta.clone();
        let mut txn = Txn::new(&self.inner.trees, st.meta.clone(), st.events, st.bytes);
        match overflow::report_metrics(&mut txn, self.inner.max_bytes) {
            Ok(appended) => {
                self.commit(&mut st, txn)?;
                log_overflow(&before, &st.meta, self.inner.max_bytes);
                Ok(appended)
            }
            Err(PlanError::Storage(e)) => Err(e.into()),
            Err(PlanError::Corrupt(key)) => {
                self.discard_corrupt(&mut st, key)?;
                Ok(false)
            }
        }
    }

    /// Stored events with seq > `after`, in seq order: at most `max_events`, and at most
    /// about `max_bytes` of encoded events (always at least one, if any is pending). A stored
    /// event that does not decode is removed, counted and reported by a Gap, and
    /// `snapshot_required` is set.
    pub fn read_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<v1::Event>, OutboxError> {
        let mut out = Vec::new();
        if max_events == 0 || after == u64::MAX {
            return Ok(out);
        }
        let mut st = self.lock();
        let mut corrupt: Vec<Vec<u8>> = Vec::new();
        let mut total = 0usize;
        let start = record::seq_key(after + 1);
        for item in self.inner.trees.events.range(start..) {
            let (key, value) = item?;
            let event = record::parse_seq_key(&key).and_then(|seq| txn::decode(&value, seq));
            match event {
                Some(event) => {
                    if !out.is_empty() && total.saturating_add(value.len()) > max_bytes {
                        break;
                    }
                    total = total.saturating_add(value.len());
                    out.push(event);
                    if out.len() >= max_events {
                        break;
                    }
                }
                None => {
                    corrupt.push(key.to_vec());
                    if corrupt.len() >= MAX_CORRUPT_PER_CALL {
                        break;
                    }
                }
            }
        }
        for key in corrupt {
            self.discard_corrupt(&mut st, key)?;
        }
        Ok(out)
    }

    /// Durably trims every event with seq <= `up_to`. Acks at or below the current watermark
    /// are no-ops. An ack above the last seq handed out (the collector has seen seqs this
    /// outbox does not know: its state was lost) moves the seq counter past it, so that new
    /// events are not taken for duplicates, and requires a snapshot.
    pub fn ack(&self, up_to: u64) -> Result<(), OutboxError> {
        let mut st = self.lock();
        if up_to <= st.meta.acked_seq {
            return Ok(());
        }
        let trees = &self.inner.trees;
        loop {
            let mut txn = Txn::new(trees, st.meta.clone(), st.events, st.bytes);
            let from = record::seq_key(st.meta.acked_seq.saturating_add(1));
            let keys: Vec<sled::IVec> = trees
                .events
                .range(from..=record::seq_key(up_to))
                .keys()
                .take(TRIM_CHUNK)
                .collect::<Result<_, _>>()?;
            let done = keys.len() < TRIM_CHUNK;
            let chunk_end = match keys.last().and_then(|k| record::parse_seq_key(k)) {
                Some(last) if !done => last,
                _ => up_to,
            };
            for kind in Kind::ALL {
                let lo = record::index_key(kind, st.meta.acked_seq.saturating_add(1));
                let hi = record::index_key(kind, chunk_end);
                for entry in trees.index.range(lo..=hi) {
                    let (k, v) = entry?;
                    if let (Some((_, seq)), Some(size)) =
                        (record::parse_index_key(&k), record::parse_size(&v))
                    {
                        txn.remove(seq, kind, size);
                    }
                }
            }
            for key in keys {
                if !txn.is_staged(&key) {
                    // An event without an index entry: not accounted, but trimmed all the same.
                    txn.remove_unindexed(key.to_vec());
                }
            }
            txn.meta.acked_seq = chunk_end;
            if chunk_end > txn.meta.last_seq {
                tracing::warn!(
                    acked = chunk_end,
                    last_seq = txn.meta.last_seq,
                    "The collector acknowledged seqs this outbox never handed out; continuing after them and requiring a full snapshot."
                );
                txn.meta.last_seq = chunk_end;
                txn.meta.snapshot_required = true;
                txn.meta.awaiting_snapshot = true;
            }
            self.commit(&mut st, txn)?;
            if done {
                break;
            }
        }
        Ok(())
    }

    /// Everything at or below this seq was acknowledged (for `Hello.last_acked_seq`).
    pub fn acked_seq(&self) -> u64 {
        self.lock().meta.acked_seq
    }

    /// The highest seq handed out so far.
    pub fn last_seq(&self) -> u64 {
        self.lock().meta.last_seq
    }

    /// Pending events and bytes, and what overflow and corruption have cost so far.
    pub fn stats(&self) -> OutboxStats {
        let st = self.lock();
        OutboxStats {
            events: st.events,
            bytes: st.bytes,
            dropped_metrics: st.meta.dropped_metrics,
            compacted_changes: st.meta.compacted_changes,
            dropped_inventory_events: st.meta.dropped_inventory_events,
            gaps: st.meta.gaps,
            corrupt_events: st.meta.corrupt_events,
        }
    }

    /// True once (then reset; persisted across restarts until taken) after inventory events
    /// were lost or replaced by a Gap: the caller must queue a full Snapshot next. Until a
    /// Snapshot is appended, Deltas are dropped as superseded by it; after a restart with
    /// that snapshot still missing, this is true again.
    ///
    /// If the reset cannot be stored, this still answers true and the flag stays set on
    /// disk: at worst one snapshot too many.
    pub fn take_snapshot_required(&self) -> bool {
        let mut st = self.lock();
        if !st.meta.snapshot_required {
            return false;
        }
        let mut txn = Txn::new(&self.inner.trees, st.meta.clone(), st.events, st.bytes);
        txn.meta.snapshot_required = false;
        if let Err(e) = self.commit(&mut st, txn) {
            tracing::warn!(error = %e, "Could not store that the snapshot requirement was taken.");
        }
        true
    }

    // --- internals ---

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves State as it was before the failed call:
        // State only changes after a successful commit.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, event: &v1::Event) -> Result<Kind, OutboxError> {
        if matches!(event.kind, Some(v1::event::Kind::Heartbeat(_))) {
            return Err(OutboxError::Heartbeat);
        }
        let kind = Kind::of(event).ok_or(OutboxError::NoKind)?;
        let size = overflow::bound(event);
        if size > self.inner.max_bytes {
            return Err(OutboxError::TooLarge {
                size,
                max: self.inner.max_bytes,
            });
        }
        Ok(kind)
    }

    fn append_locked(
        &self,
        st: &mut State,
        mut event: v1::Event,
        kind: Kind,
    ) -> Result<u64, OutboxError> {
        for _ in 0..MAX_CORRUPT_PER_CALL {
            let before = st.meta.clone();
            let mut txn = Txn::new(&self.inner.trees, st.meta.clone(), st.events, st.bytes);
            match self.plan_append(&mut txn, &mut event, kind) {
                Ok(outcome) => {
                    self.commit(st, txn)?;
                    log_overflow(&before, &st.meta, self.inner.max_bytes);
                    return outcome;
                }
                Err(PlanError::Storage(e)) => return Err(e.into()),
                Err(PlanError::Corrupt(key)) => self.discard_corrupt(st, key)?,
            }
        }
        Err(OutboxError::TooManyCorrupt(MAX_CORRUPT_PER_CALL))
    }

    fn plan_append(
        &self,
        txn: &mut Txn<'_>,
        event: &mut v1::Event,
        kind: Kind,
    ) -> Result<Result<u64, OutboxError>, PlanError> {
        if kind == Kind::Delta && txn.meta.awaiting_snapshot {
            txn.meta.dropped_inventory_events += 1;
            return Ok(Ok(txn.next_seq()));
        }
        let max = self.inner.max_bytes;
        match overflow::make_room(txn, kind, event, max)? {
            overflow::Disposition::Store => {
                event.seq = txn.next_seq();
                txn.add(event, kind);
                if kind == Kind::Snapshot {
                    // Stored after any Gap: it restates everything that was lost.
                    txn.meta.awaiting_snapshot = false;
                    txn.meta.snapshot_required = false;
                }
                Ok(Ok(event.seq))
            }
            overflow::Disposition::DropIncoming => Ok(Ok(txn.next_seq())),
            overflow::Disposition::Full => Ok(Err(OutboxError::Full {
                size: overflow::bound(event),
            })),
        }
    }

    /// Removes a stored event that does not decode, counts it, records a Gap and requires a
    /// snapshot.
    fn discard_corrupt(&self, st: &mut State, key: Vec<u8>) -> Result<(), OutboxError> {
        let trees = &self.inner.trees;
        let mut txn = Txn::new(trees, st.meta.clone(), st.events, st.bytes);
        let indexed = match record::parse_seq_key(&key) {
            Some(seq) => Kind::ALL
                .into_iter()
                .map(|kind| Ok((kind, trees.index.get(record::index_key(kind, seq))?)))
                .collect::<Result<Vec<_>, sled::Error>>()?
                .into_iter()
                .find_map(|(kind, size)| Some((kind, seq, record::parse_size(&size?)?))),
            None => None,
        };
        match indexed {
            Some((kind, seq, size)) => txn.remove(seq, kind, size),
            None => txn.remove_unindexed(key.clone()),
        }
        txn.meta.corrupt_events += 1;
        txn.meta.unreported_changes += 1;
        txn.meta.snapshot_required = true;
        txn.meta.awaiting_snapshot = true;
        tracing::error!(key = %hex::encode(&key),
            "An outbox event could not be decoded and was dropped; a full snapshot will follow.");
        overflow::append_gap(
            &mut txn,
            self.inner.max_bytes,
            "corrupt outbox event skipped",
        );
        self.commit(st, txn)
    }

    /// Records a loss found on open: a Gap, `snapshot_required`, deltas superseded until the
    /// next snapshot.
    fn record_loss(&self, st: &mut State, reason: &str) -> Result<(), OutboxError> {
        let mut txn = Txn::new(&self.inner.trees, st.meta.clone(), st.events, st.bytes);
        txn.meta.snapshot_required = true;
        txn.meta.awaiting_snapshot = true;
        overflow::append_gap(&mut txn, self.inner.max_bytes, reason);
        self.commit(st, txn)
    }

    /// Commits a plan and flushes it, first extending the side file's reservation if the
    /// plan hands out seqs beyond it. Every commit is flushed before the next one starts
    /// (see "sled's deadlock" in the module doc).
    fn commit(&self, st: &mut State, txn: Txn<'_>) -> Result<(), OutboxError> {
        if txn.meta.last_seq > st.reserved {
            let reserved = txn.meta.last_seq.saturating_add(seqfile::RESERVE);
            seqfile::write(&self.inner.seq_path, SideSeq::Running(reserved)).map_err(|source| {
                OutboxError::SeqFile {
                    path: self.inner.seq_path.clone(),
                    source,
                }
            })?;
            st.reserved = reserved;
        }
        let (meta, events, bytes) = txn.commit()?;
        st.meta = meta;
        st.events = events;
        st.bytes = bytes;
        self.inner.trees.db.flush()?;
        Ok(())
    }
}

/// One log line per overflow episode, not per dropped event.
fn log_overflow(before: &Meta, after: &Meta, max_bytes: u64) {
    if before.unreported_metrics == 0 && after.unreported_metrics > 0 {
        tracing::warn!(
            max_bytes,
            "The outbox is full; the oldest metrics are being dropped."
        );
    }
    if after.gaps > before.gaps {
        tracing::warn!(
            max_bytes,
            dropped_inventory_events =
                after.dropped_inventory_events - before.dropped_inventory_events,
            "The outbox is full; pending inventory events were replaced by a Gap and a full snapshot is required."
        );
    }
    if after.compacted_changes > before.compacted_changes {
        tracing::info!(
            compacted_changes = after.compacted_changes - before.compacted_changes,
            "The outbox is full; superseded inventory changes were compacted."
        );
    }
}

impl Drop for Inner {
    /// An orderly close: flush, then record the exact last seq in the side file.
    fn drop(&mut self) {
        let last = self
            .state
            .get_mut()
            .map_or_else(|p| p.into_inner().meta.last_seq, |s| s.meta.last_seq);
        if self.trees.db.flush().is_ok() {
            let _ = seqfile::write(&self.seq_path, SideSeq::Clean(last));
        }
    }
}

// === opening ===

enum OpenFailure {
    /// The directory is damaged: move it aside.
    Corrupt(String),
    /// Anything else: report, touch nothing.
    Fatal(OutboxError),
}

/// What a sound existing store holds.
#[derive(Default)]
struct Loaded {
    meta: Meta,
    events: u64,
    bytes: u64,
}

/// sled's log segment size for a new outbox (sled's default is 512 KiB). sled writes its
/// log through a buffer of one segment whose pages become resident one by one as flushes
/// fill it, and which is freed when the segment rolls: this is the amplitude of that
/// sawtooth in the agent's RSS (docs/BENCHMARKS.md, "Resident agent footprint"). A node
/// larger than about a quarter of a segment is written to its own blob file instead, as
/// full snapshots already were.
const SEGMENT_BYTES: usize = 256 * 1024;

/// The segment size to open the store in `dir` with: the one it was created with, which
/// sled records in its `conf` file and insists on (a store of an older agent has sled's
/// default), else [`SEGMENT_BYTES`].
fn segment_size(dir: &Path) -> usize {
    // The file is text lines followed by a binary CRC-32.
    let mut raw = Vec::new();
    let read = fs::File::open(dir.join("conf")).and_then(|f| f.take(4096).read_to_end(&mut raw));
    read.ok()
        .and_then(|_| persisted_segment_size(&String::from_utf8_lossy(&raw)))
        .unwrap_or(SEGMENT_BYTES)
}

/// `segment_size: N` from the text of sled's `conf` file, if N is a size sled accepts (a
/// power of two from 256 bytes to 16 MiB); `None` otherwise. With `None` the store is
/// opened with [`SEGMENT_BYTES`], and sled refuses a store made with another size, which
/// then counts as damaged like any other unreadable store.
fn persisted_segment_size(conf: &str) -> Option<usize> {
    let value = conf
        .lines()
        .find_map(|line| line.strip_prefix("segment_size:"))?;
    let size: usize = value.trim().parse().ok()?;
    (size.is_power_of_two() && (256..=1 << 24).contains(&size)).then_some(size)
}

fn open_trees(cfg: &OutboxConfig) -> Result<Trees, OpenFailure> {
    if cfg.dir.exists() && !cfg.dir.is_dir() {
        return Err(OpenFailure::Corrupt("not a directory".into()));
    }
    let config = sled::Config::new()
        .path(&cfg.dir)
        .segment_size(segment_size(&cfg.dir))
        .cache_capacity(cfg.cache_bytes)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let db = config.open()?;
        let events = db.open_tree("events")?;
        let index = db.open_tree("index")?;
        let meta = db.open_tree("meta")?;
        Ok::<_, sled::Error>(Trees {
            db,
            events,
            index,
            meta,
        })
    }));
    match opened {
        Ok(Ok(trees)) => Ok(trees),
        Ok(Err(e)) => Err(classify(&cfg.dir, e)),
        Err(_) => Err(OpenFailure::Corrupt("sled panicked while opening".into())),
    }
}

fn classify(dir: &Path, e: sled::Error) -> OpenFailure {
    use io::ErrorKind as K;
    let corrupt = match &e {
        sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            K::UnexpectedEof | K::InvalidData | K::NotADirectory | K::IsADirectory
        ),
        _ => false,
    };
    if corrupt {
        OpenFailure::Corrupt(e.to_string())
    } else {
        OpenFailure::Fatal(OutboxError::Open {
            dir: dir.to_owned(),
            source: e,
        })
    }
}

/// Reads and checks the meta record and the index; `Ok(None)` for a fresh, empty store,
/// `Err(why)` for anything undecodable or inconsistent.
fn load(trees: &Trees) -> Result<Option<Loaded>, String> {
    let storage = |e: sled::Error| format!("reading the store failed: {e}");
    let Some(raw) = trees.meta.get(record::META_KEY).map_err(storage)? else {
        let empty = trees.events.is_empty() && trees.index.is_empty();
        return if empty {
            Ok(None)
        } else {
            Err("meta record missing beside stored events".into())
        };
    };
    let meta = Meta::decode(&raw).ok_or("meta record undecodable")?;
    let (mut events, mut bytes) = (0u64, 0u64);
    for entry in trees.index.iter() {
        let (k, v) = entry.map_err(storage)?;
        let (Some((_, seq)), Some(size)) = (record::parse_index_key(&k), record::parse_size(&v))
        else {
            return Err("undecodable index entry".into());
        };
        if seq <= meta.acked_seq || seq > meta.last_seq {
            return Err(format!(
                "index entry for seq {seq} outside ({}, {}]",
                meta.acked_seq, meta.last_seq
            ));
        }
        events += 1;
        bytes = bytes.saturating_add(size);
    }
    let outside = |k: &[u8]| {
        record::parse_seq_key(k).is_none_or(|s| s <= meta.acked_seq || s > meta.last_seq)
    };
    for end in [trees.events.first(), trees.events.last()] {
        if let Some((k, _)) = end.map_err(storage)?
            && outside(&k)
        {
            return Err("stored event outside the recorded seq range".into());
        }
    }
    Ok(Some(Loaded {
        meta,
        events,
        bytes,
    }))
}

/// Renames `dir` to `<dir>.corrupt-<unix secs>` (with a counter if that exists already).
fn move_aside(dir: &Path) -> Result<PathBuf, OutboxError> {
    let err = |source| OutboxError::MoveAside {
        dir: dir.to_owned(),
        source,
    };
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = dir
        .file_name()
        .ok_or_else(|| err(io::Error::other("directory has no name")))?
        .to_string_lossy()
        .into_owned();
    for attempt in 0..100u32 {
        let suffix = if attempt == 0 {
            format!("{name}.corrupt-{secs}")
        } else {
            format!("{name}.corrupt-{secs}-{attempt}")
        };
        let target = dir.with_file_name(suffix);
        if target.exists() {
            continue;
        }
        std::fs::rename(dir, &target).map_err(err)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        return Ok(target);
    }
    Err(err(io::Error::other(
        "no free name to move the directory to",
    )))
}

/// A seq floor from the clock: milliseconds since the epoch.
fn time_floor() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
