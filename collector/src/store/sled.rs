//! The embedded [`Store`]: sled 0.34, one tree, one writer building at a time.
//!
//! # Invariants
//! - Every mutation (identify, apply, retention, put_agent, write_records) runs as one
//!   transaction (`txn` module) built under the writer lock and commits as ONE
//!   `sled::Batch` on ONE tree: all of its writes land together or not at all, on disk
//!   (sled recovers batches atomically) and for readers (a batch holds sled's
//!   concurrency-control write lock; every read takes it shared). The batch is applied
//!   under the commit lock, taken before the writer lock is released, so the next writer
//!   builds while it is applied (`pipeline` module: its reads of the tree wait for it).
//! - Every batch that writes anything carries the next commit number (`meta/commit`), one
//!   more than the last, and batches are applied in that order (build order). The number is
//!   published to readers (`SledStore::commits`) only after its batch is applied: every
//!   commit up to the published number is visible, whole, and anything committed later has
//!   a higher number. The change feed relies on both.
//! - An agent's `last_seq` is written in the same batch as the effects of the events it
//!   covers, so the watermark and the data can never disagree: replaying a batch after a
//!   crash applies exactly the events that were not yet durable.
//! - A CI's class index entry (`xc/`) is written once, when it is created (its host and
//!   class never change). A CI is in the absent index iff its state is absent, keyed by the
//!   time it became absent (`last_changed`).
//! - Version `n` of a CI exists for every n in 1..=`CiRecord::version` and is reachable
//!   from the CI record through the version chain (below); versions are never rewritten or
//!   deleted. CIs are never deleted either: present → absent → retired.
//!
//! # On-disk layout (tree `cmdb`; `\0` separates variable parts, CI ids are 19 bytes)
//! | key | value |
//! |---|---|
//! | `meta/format` | `cmdb-store/3` (checked at open; a `/2` store opens as is and is marked `/3`; `/1` stores are refused, not migrated) |
//! | `meta/commit` | u64 BE number of the last batch (compared with the seal at open) |
//! | `a/<agent id>` | [`AgentRecord`] (JSON) |
//! | `c/<host id>\0<class>\0<ci id>` | CI record (binary, `codec`) — host CIs too (class `host`) |
//! | `v/<u64 BE commit><ci id><u64 BE version>` | reference (21 bytes) to a version page in the version log (`vlog`): the versions that commit wrote, from that entry on; a `/2` store's pages are inline here |
//! | `xc/<class>\0<ci id>` | host id (class index; also resolves bare CI ids) |
//! | `k/<kind>=<value>` | host id (identity-key index) |
//! | `xn/<hostname>\0<host id>` | empty (hostname → hosts) |
//! | `xa/<u64 BE secs absent since><ci id>` | `<host id>\0<class>` (absent CIs, for retention) |
//! | `r/<from ci><to ci><kind>` | [`RelationRecord`]; `rr/<to><from><kind>` and `xr/<host>\0<from><to><kind>` index it |
//! | `m/<host>\0<u64 BE window start secs>` | [`MetricRecord`]; `mt/<u64 BE secs><host>` indexes it by time |
//! | `cl/<u64 BE secs><clone host id>` | [`CloneRecord`] |
//! | `j/<collection>\0<id>` | a record of the collector's own (`write_records`): the owning module's bytes, opaque here |
//!
//! CI records are clustered by (host, class) and ordered by id inside it: the records of a
//! pair ARE its index (`cis(host, class)`, snapshot reconciliation), a host's CIs are its
//! classes' ranges merged by id, and one agent's batch lands in one narrow key range.
//! `cis(class)` scans the class index; `cis()` merges the class index ranges by id. A bare
//! CI id (the API's) is resolved by probing `xc/<class>\0<id>` for each class (a skip scan
//! finds them: one seek per class); the store accepts at most `txn::MAX_CLASSES` (1024)
//! distinct classes so that this stays cheap (DESIGN.md has 17).
//!
//! # Versions: pages and chains
//! A version is not a key of its own (a new sled key costs several times an update, see
//! below). Each commit writes the versions it made as pages of about 4 KiB under
//! `v/<commit>`, sorted by (ci id, version), each page keyed by its first entry. The CI
//! record names the commit whose page holds its latest version (`head`); every version
//! names the commit of the previous one (`prev`, 0 for version 1). `ci_versions` walks
//! that chain newest first, one page lookup per version. A version stores its full
//! attributes but not `old_attrs`: that is the previous version's `attrs` (a CI's
//! attributes never change without a version), so the walk derives it. Pages are written
//! once and never change, so they live outside the tree: appended to the version log
//! (`vlog` module, `versions/*.vlog`) while the transaction is built, synced before its
//! batch is applied, and the tree keeps a 21-byte reference under the page's key (file,
//! offset, length, CRC-32). In the tree a page cost about six bytes written per byte
//! stored (leaf rewrites, splits and segment cleaning); in the log it is written once.
//!
//! # The change feed (`feed` module)
//! `feed` lists every stored version in (commit, CI id, version) order — which is simply
//! the key order of the version pages, so the feed needs no key of its own and costs
//! nothing to write. A read seeks to the page holding the consumer's position and skips
//! to the entry after it, so it resumes exactly anywhere, also inside a page. Each entry
//! gets its CI's host, class and key (the id is resolved by class probes, `locate`, most
//! found class first; then the CI record) and its `old_attrs` (one page lookup in the
//! commit of the previous version). Measured with `feed_read_cost` (20 000 CIs of 17
//! classes, 80 % packages, then 20 000 changes; debug build, shared 2-core VM): ~80 µs per
//! entry against ~130–150 µs per version to write it in the same run; about two thirds is
//! resolving the CI (probes + record read), a quarter the `old_attrs` lookup. Identities
//! are cached only within one read: a CI seen in an earlier read is resolved again.
//!
//! # The collector's own records
//! Baselines, change records, incidents and the like are opaque values under
//! `j/<collection>\0<id>`, one key each: they are read by id and rewritten in place, and
//! they are few next to versions, so pages would buy nothing. `write_records` checks every
//! op first (`store::check_record_op`: nothing is written when one is refused), then
//! commits them as one transaction like any other write: one batch, a commit number,
//! sealed by the flush before it returns. Records are not CI versions: they write no page,
//! so they make no feed entries (the feed's commit numbers have gaps where they were).
//! `verify` counts them and checks their keys; their values are not ours to check.
//!
//! # Encoding (`codec` module)
//! CI records and version pages are a small length-prefixed binary format (varints,
//! strings, tagged attribute values; times in whole seconds like the JSON they replace;
//! floats bit for bit). The writer keeps CI rows with their attributes encoded and
//! compares encodings (they are canonical) instead of building attribute maps; deltas are
//! encoded straight from protobuf. Decoding checks every length, tag and UTF-8 string and
//! refuses trailing bytes: damage is [`StoreError::Corrupt`], never a panic. Agents,
//! relations, metrics and clones stay JSON (at most one write per call each).
//!
//! # Durability
//! `identify`, `apply`, `put_agent`, `retire_absent`, `prune_metrics` and `write_records`
//! return only after `Db::flush` (fsync): when `apply` returns, the ack may be sent. The
//! version pages a batch refers to are already on disk by then: the version log is synced
//! before the batch is applied (one `fdatasync`, ~0.2 ms here, shared by the commits it
//! covers), so no reference sled makes durable can point at a page that is not. The
//! flush runs after the writer lock is released and is shared (`group_commit` module): a
//! caller whose batch was committed while other writers were still queued waits (at most
//! 4 ms) for the flush of the last of them instead of running its own, because a sled
//! batch cannot commit while a flush holds sled's concurrency-control lock — one fsync per
//! commit made the writer lock the bottleneck in bursts. A caller never returns before a
//! flush that started after its own batch. `record_heartbeat` and `set_connected` are NOT
//! flushed (they are liveness, refreshed every 30 s): they become durable with the next
//! flush by anyone, and a crash may lose the last few; `connected` is reset to false for
//! every agent at open anyway. Heartbeats are not even a batch each: they wait in memory
//! (`liveness` module), visible to every read at once, and are written together at most a
//! second later (or by `Store::flush`, which the collector calls at shutdown).
//!
//! # Corruption and refusal
//! [`SledStore::open`] returns [`StoreError::Open`] — and the collector refuses to start —
//! when sled cannot open the directory (locked by another process, unreadable, corrupt
//! beyond what its recovery accepts, or sled panics while opening) or when the tree holds
//! data without our format marker (or another format's). Nothing is ever moved aside or
//! repaired silently. A record that does not decode later is reported as
//! [`StoreError::Corrupt`] for that read; so is a version chain that breaks.
//!
//! sled's own recovery silently drops everything after a damaged log segment (measured:
//! flipping bytes late in `db` reopened "fine" with an agent watermark 13 events behind).
//! Every batch therefore carries a commit number (`meta/commit`), and after each flush the
//! number it covered goes to a seal file beside sled's (`seal` module): an open that finds
//! the tree behind its seal refuses with `StoreError::Open`.
//!
//! sled can also silently drop damaged records from the MIDDLE of its log (measured: a
//! CI at version 49 with 47 versions left, watermark intact). The seal cannot see that;
//! [`SledStore::verify`] can (a full scan: every chain complete, every stored version on a
//! chain, indexes and records agree). It is not run at every open because its cost grows
//! with the store. A lost page breaks the chains of every CI with a version in it (their
//! older history becomes unreadable, reported); with one key per version a loss was a gap.
//!
//! # Why one batch on one tree, not a multi-tree transaction
//! sled transactions are optimistic closures that may re-run, keep every read and write in
//! a per-transaction cache and serialise through the same global lock; a batch is one log
//! reservation with no retries. All reads an apply needs are point lookups or short scans
//! done under our writer lock, so the overlay in the `txn` module gives read-your-writes
//! without sled transactions. The one exception is an optimisation: an apply reads the rows
//! of the CIs its deltas name before it takes the lock (`apply::Prepared`), and the writer
//! uses them only if no commit since then wrote a CI of that host (`Writer::host_written`,
//! kept under the lock); otherwise it reads them again under the lock.
//!
//! # Cost per CI change, and what was measured
//! A change reads its CI record (one `get`) and writes it back plus its share of a version
//! page; a new CI writes its record and its class index entry. In sled 0.34 every key of a
//! batch is a separate tree insert that clones the leaf node and appends to the log, and a
//! NEW key also splits a leaf every few inserts, so the number of new keys dominates;
//! value size matters less (values over 22 bytes are reference-counted, under it inline).
//! Measured with the `throughput_of_ci_changes` test (release, shared 2-core VM; the layout
//! choices with throwaway sled-only micro-benchmarks of the same key patterns):
//! - before (format 1: JSON, `old_attrs` stored, 5 keys per new CI, 2 per change, one key
//!   per version): 32 600 changes/s, ~2 000 bytes on disk per change;
//! - versions → pages, binary records without `old_attrs`, records clustered by
//!   (host, class) so `xhc/` went: 49 000/s (build 0.91 → 0.63 s, sled batch 1.9 → 1.2 s),
//!   199 → 89 MB on disk;
//! - `i/` (id → host) dropped, bare ids resolved by class probes (2 keys per new CI instead
//!   of 3): about +15 % in runs under similar load;
//! - the writer keeps attributes encoded (compares bytes, builds no maps; deltas encoded
//!   straight from protobuf): fewer allocations and frees (dropping the call's decoded
//!   records alone had been ~8 % of the profile); the figures below;
//! - tried and dropped: a writer-side cache of CI rows (no `get` per change) — the build
//!   got ~300 ms faster and sled's batch as much slower: the `get` had warmed the very
//!   nodes the insert then touches (the cost is memory traffic in sled's tree, paid once
//!   either way); sled `Mode::LowSpace` and other segment sizes: within the noise or worse;
//!   `use_compression` needs sled's `compression` feature (not built).
//! - after (format 2): 74 000–94 000 changes/s, ~82 000 typical with quiet neighbours
//!   (1.2 s for the 100 000: build ~0.42 s, sled batch ~0.63 s, flush ~0.15 s; new CIs
//!   ~65 000/s, changed CIs ~105 000/s); ~800 bytes on disk per change. Run interleaved
//!   with the format-1 code under the same (busy) load: 23 000 → 75 000–84 000 changes/s,
//!   process CPU 5.2–6.3 s → 1.9–2.4 s (both including building the events). Most of what
//!   is left is sled's own work: one `get` and one insert per change, a second insert per
//!   new CI, and its log writer threads.
//! - format 3 (pages in the version log): sled's log takes ~1.3 GB instead of ~4.2 GB over
//!   a `fleet-sim` `changes` storm of ~1.1 M changes (counted by node kind in a
//!   temporary sled build; docs/BENCHMARKS.md), peak RSS ~15 % lower, ingest the same:
//!   under that load the collector is bound by CPU per change, not by the bytes written.
//!
//! # Bounds
//! Reads are capped ([`MAX_LIST`] for lists, [`MAX_AGENTS`] agents, [`MAX_CI_VERSIONS`]
//! versions, [`MAX_METRICS`] windows, [`MAX_FEED`] feed entries, [`MAX_RECORDS`] records
//! per call); record ids, values and collection names are bounded (`store` module); a
//! snapshot reconciles at most `apply::MAX_RECONCILE` CIs per class; classes, keys and
//! hostnames are bounded in length before they become keys, classes in number
//! (`txn::MAX_CLASSES`).

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use cmdb_proto::model::{AttrValue, HostIdentity};
use cmdb_proto::v1;

use super::{
    AgentRecord, ApplyOutcome, CiFilter, CiRecord, CiState, CiVersion, CiView, CloneRecord,
    FeedEntry, FeedHead, FeedPos, HOST_CLASS, HostId, MetricRecord, RecordOp, RelationRecord,
    ScanPart, Store, StoreError, check_collection, check_record_op, valid_record_id,
};
use locate::Locator;
use txn::{Txn, backend, decode};

mod apply;
mod codec;
mod feed;
mod feed_tail;
mod group_commit;
mod history;
mod hosts;
mod keys;
mod liveness;
mod locate;
mod pipeline;
mod seal;
mod txn;
mod verify;
mod vlog;

pub use verify::VerifyReport;

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod scan_leaves_tests;
#[cfg(test)]
mod tests;

const FORMAT: &[u8] = b"cmdb-store/3";
/// The format before the version log (`vlog`): pages inline in the tree. Opened as is; its
/// marker becomes [`FORMAT`] (new commits write references an older collector cannot read).
const FORMAT_INLINE_PAGES: &[u8] = b"cmdb-store/2";
const TREE: &str = "cmdb";
/// Most records any list read returns (clones, relations, CIs per page).
pub const MAX_LIST: usize = 10_000;
/// Most agents `agents` returns (the fleet target is 10 000).
pub const MAX_AGENTS: usize = 100_000;
/// `CiFilter::limit` of 0 means this many.
pub const DEFAULT_CI_LIMIT: usize = 1_000;
/// Most versions `ci_versions` returns (the newest ones, oldest first).
pub const MAX_CI_VERSIONS: usize = 10_000;
/// Most metric windows one `metrics` call returns (a week of minutes per host fits).
pub const MAX_METRICS: usize = 20_000;
/// Most entries one `feed` call returns (the consumer pages on by position).
pub const MAX_FEED: usize = 10_000;
/// Most records one `records` call returns.
pub const MAX_RECORDS: usize = MAX_LIST;
/// Default window in which an agent seen (but not connected) still counts as live.
pub const DEFAULT_LIVE_WINDOW: Duration = Duration::from_secs(300);
/// Records one retention batch handles (retention loops over batches).
const RETENTION_CHUNK: usize = 5_000;
/// The agent id recorded on versions written by retention.
pub const RETENTION_AGENT: &str = "collector:retention";

/// The sled-backed store. Cheap to share behind an `Arc`; all methods block.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Version pages (the tree holds references to them).
    vlog: vlog::VersionLog,
    path: PathBuf,
    writer: Mutex<Writer>,
    /// Taken under `writer` by a writer whose transaction is built, held while its batch
    /// is applied (`pipeline` module).
    committing: Mutex<()>,
    /// The last transaction whose batch was applied or failed (`pipeline` module).
    finished: pipeline::Finished,
    live_window: Duration,
    /// Number of the last committed batch (`meta/commit`), published after its batch is
    /// applied, under `committing`.
    commits: AtomicU64,
    /// Highest commit number written to the seal file.
    sealed: Mutex<u64>,
    /// Heartbeats not yet written (`liveness` module).
    liveness: liveness::Liveness,
    /// Who flushes after a durable write (`group_commit` module).
    group: group_commit::GroupCommit,
    /// The versions of the latest commits, for feed readers that keep up (`feed_tail`).
    tail: feed_tail::FeedTail,
    /// CI identities met by feed reads behind the tail (`feed::Identities`).
    identities: feed::Identities,
}

/// What the writer keeps between transactions (guarded by the writer lock).
struct Writer {
    /// Every class the store has CIs of (loaded at open, extended by commits).
    classes: HashSet<String>,
    /// Host → the number of the last transaction built (since open) that writes one of
    /// its CI records: rows read without the lock as of commit N are current if their host
    /// has no later one (`apply::Prepared`). One entry per host written.
    host_written: HashMap<String, u64>,
    /// Agent → the same for its agent record. One entry per agent written.
    agent_written: HashMap<String, u64>,
    /// Number of the last transaction built (`pipeline`: it may still be in flight).
    built: u64,
    /// Ticket of the last transaction built (never reused).
    tickets: u64,
}

impl Writer {
    /// Whether no transaction built after commit `as_of` writes a CI record of `host`.
    fn rows_current(&self, host: &str, as_of: u64) -> bool {
        self.host_written.get(host).is_none_or(|&n| n <= as_of)
    }

    /// Whether no transaction built after commit `as_of` writes the record of `agent`.
    fn agent_current(&self, agent: &str, as_of: u64) -> bool {
        self.agent_written.get(agent).is_none_or(|&n| n <= as_of)
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("live_window", &self.live_window)
            .finish_non_exhaustive()
    }
}

// === impl SledStore ===

impl SledStore {
    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`. Refuses an
    /// unusable directory with [`StoreError::Open`]; never moves data aside.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let refuse = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| refuse(format!("cannot create: {e}")))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Durability is ours to decide: flush before every ack, never on a timer.
            .flush_every_ms(None);
        // sled can panic on some corrupt files instead of returning an error.
        let db = match catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(refuse(e.to_string())),
            Err(_) => return Err(refuse("sled panicked while opening it (corrupt?)".into())),
        };
        let tree = db.open_tree(TREE).map_err(|e| refuse(e.to_string()))?;
        match tree
            .get(keys::META_FORMAT)
            .map_err(|e| refuse(e.to_string()))?
        {
            Some(v) if v.as_ref() == FORMAT => {}
            Some(v) if v.as_ref() == FORMAT_INLINE_PAGES => {
                tree.insert(keys::META_FORMAT, FORMAT)
                    .map_err(|e| refuse(e.to_string()))?;
            }
            Some(v) => {
                return Err(refuse(format!(
                    "unknown store format {:?} (expected {:?})",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            None if !tree.is_empty() => {
                return Err(refuse("data without a format marker".into()));
            }
            None => {
                tree.insert(keys::META_FORMAT, FORMAT)
                    .map_err(|e| refuse(e.to_string()))?;
            }
        }
        let commit = match tree
            .get(keys::META_COMMIT)
            .map_err(|e| refuse(e.to_string()))?
        {
            None => 0,
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| refuse(format!("corrupt commit number {:?}", v.as_ref())))?,
        };
        let seal_path = seal::path(dir);
        let sealed = match seal::read(dir) {
            seal::Seal::Commit(sealed) if commit < sealed => {
                return Err(refuse(format!(
                    "it lost acknowledged writes: sled recovered commit {commit}, but commit \
                     {sealed} was durable (per {}). sled drops a damaged part of its log on \
                     recovery. Restore a backup, or move the directory aside deliberately to \
                     start empty",
                    seal_path.display()
                )));
            }
            seal::Seal::Commit(sealed) => sealed,
            seal::Seal::Missing => 0,
            seal::Seal::Unreadable(why) => {
                tracing::warn!(
                    path = %seal_path.display(),
                    reason = %why,
                    "Store seal is unreadable; it is rewritten, and this open could not check for lost writes."
                );
                0
            }
        };
        if sealed != commit {
            seal::write(dir, commit).map_err(|e| refuse(format!("cannot write the seal: {e}")))?;
        }
        let vlog = vlog::VersionLog::open(dir).map_err(|e| refuse(e.to_string()))?;
        let classes = all_classes(&tree)
            .map_err(|e| refuse(e.to_string()))?
            .into_iter()
            .collect();
        let store = SledStore {
            db,
            tree,
            vlog,
            path: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                classes,
                host_written: HashMap::new(),
                agent_written: HashMap::new(),
                built: commit,
                tickets: 0,
            }),
            committing: Mutex::new(()),
            finished: pipeline::Finished::default(),
            live_window: DEFAULT_LIVE_WINDOW,
            commits: AtomicU64::new(commit),
            sealed: Mutex::new(commit),
            liveness: liveness::Liveness::new(),
            group: group_commit::GroupCommit::new(commit),
            tail: feed_tail::FeedTail::new(commit, feed_tail::MAX_BYTES),
            identities: feed::Identities::default(),
        };
        store.reset_connected().map_err(|e| refuse(e.to_string()))?;
        store.sync().map_err(|e| refuse(e.to_string()))?;
        Ok(store)
    }

    /// What feed reads behind the tail read.
    fn feed_source(&self) -> feed::Source<'_> {
        feed::Source {
            tree: &self.tree,
            log: &self.vlog,
            identities: &self.identities,
        }
    }

    /// Scans the whole store for lost or inconsistent records (see the `verify` module).
    /// Slow on a big store: an operator's check, not part of every start.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        verify::verify(&self.tree, &self.vlog)
    }

    /// Sets the window in which a disconnected agent still counts as live for clone
    /// detection (default [`DEFAULT_LIVE_WINDOW`]).
    #[must_use]
    pub fn with_live_window(mut self, window: Duration) -> Self {
        self.live_window = window;
        self
    }

    /// Nobody is connected to a collector that just started.
    fn reset_connected(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            for kv in self.tree.scan_prefix(keys::AGENT) {
                let (k, v) = kv.map_err(backend)?;
                let mut rec: AgentRecord = decode(&k, &v)?;
                if rec.connected {
                    rec.connected = false;
                    txn.agents.insert(rec.agent_id.clone(), rec);
                }
            }
            Ok(())
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // The lock guards no data of its own (sled holds it, batches are atomic), so a
        // panic in another writer leaves nothing half-done: carry on.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in a transaction under the writer lock and commits it (not flushed), once
    /// every transaction built before has finished.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(false, |_, txn| f(txn))
    }

    /// `write`, with the writer's state for `f` to read. `pipelined`: `f` may start while
    /// the previous transaction's batch is still being applied (its reads of the tree wait
    /// for it; `pipeline` module). Returns once this transaction's batch is applied.
    fn write_with<T>(
        &self,
        pipelined: bool,
        f: impl FnOnce(&Writer, &mut Txn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writing = self.group.writing();
        let mut writer = self.lock();
        if self.finished.take_broken() {
            // A batch failed: let everything in flight finish, then number on from the
            // last one published.
            self.finished.wait_for(writer.tickets);
            writer.built = self.commits.load(Ordering::Acquire);
        }
        if !pipelined {
            self.finished.wait_for(writer.tickets);
        }
        let horizon = self.liveness.horizon();
        let txn = Txn::new(&self.tree, writer.built + 1, &writer.classes)
            .with_beats(&self.liveness, horizon);
        let mut txn = txn.settling(&self.finished, writer.tickets);
        let value = f(&writer, &mut txn)?;
        let Some(mut built) = txn.build(&self.vlog)? else {
            return Ok(value);
        };
        let (number, ticket) = (built.number, writer.tickets + 1);
        writer.built = number;
        writer.tickets = ticket;
        let finishing = self.finished.finishing(ticket);
        writer.classes.extend(std::mem::take(&mut built.classes));
        for host in std::mem::take(&mut built.hosts) {
            writer.host_written.insert(host, number);
        }
        let agents = std::mem::take(&mut built.agents);
        for agent in &agents {
            writer.agent_written.insert(agent.clone(), number);
        }
        // Batches are applied in the order they were built: the commit lock is taken
        // before the writer lock is released.
        let committing = self
            .committing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(writer);
        let applied = if self.commits.load(Ordering::Acquire) + 1 == number {
            built.apply(&self.tree, &self.vlog)
        } else {
            Err(StoreError::Backend(
                "an earlier write to the store failed; this one was built on it and is dropped"
                    .into(),
            ))
        };
        // On error (or a panic) `finishing` marks the ticket finished and the chain broken.
        let versions = applied?;
        // Before the number is published: a feed read up to it finds it in the tail.
        let evicted = self.tail.push(number, versions);
        self.commits.store(number, Ordering::Release);
        // The next transactions read the records just written.
        self.liveness.written(agents.iter(), horizon);
        finishing.succeeded();
        drop(committing);
        // The feed tail's evicted entries are freed after the locks, not while others wait.
        drop(evicted);
        Ok(value)
    }

    /// Makes every commit so far durable (sled's flush: fsync) and seals it. Pending
    /// heartbeats stay pending (`Store::flush` writes them first).
    fn sync(&self) -> Result<u64, StoreError> {
        // Every batch numbered up to here was applied before this flush starts: it covers them.
        let covered = self.commits.load(Ordering::Acquire);
        self.db.flush().map_err(backend)?;
        let mut sealed = self.sealed.lock().unwrap_or_else(PoisonError::into_inner);
        if covered > *sealed {
            seal::write(&self.path, covered)
                .map_err(|e| StoreError::Backend(format!("cannot write the store seal: {e}")))?;
            *sealed = covered;
        }
        Ok(covered)
    }

    /// Returns once every commit so far is durable: flushed by this caller or by a flush
    /// another one started later (group commit, `group_commit` module).
    fn durable(&self) -> Result<(), StoreError> {
        let mine = self.commits.load(Ordering::Acquire);
        self.group.wait_durable(mine, || self.sync())
    }

    /// Writes pending heartbeats when due (`force`: whenever there are any), in chunks.
    fn write_beats(&self, force: bool) -> Result<(), StoreError> {
        let Some((_elected, ids)) = self.liveness.due(force) else {
            return Ok(());
        };
        for chunk in ids.chunks(liveness::CHUNK) {
            self.write(|txn| {
                for id in chunk {
                    // The beat is folded in by `peek_agent`; a record written since needs
                    // nothing (its beat is gone), an agent that vanished neither.
                    if let Some(rec) = txn.peek_agent(id)? {
                        txn.agents.insert(id.clone(), rec);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Values under `prefix` after `after` (exclusive), in key order.
    fn scan_from(&self, prefix: &[u8], after: Option<&[u8]>) -> sled::Iter {
        match after {
            Some(a) => {
                let mut start = prefix.to_vec();
                start.extend_from_slice(a);
                self.tree
                    .range::<Vec<u8>, _>((Bound::Excluded(start), Bound::Unbounded))
            }
            None => self.tree.scan_prefix(prefix),
        }
    }

    /// CIs of `class` in id order (its class index), after `filter.after`, at most
    /// `limit` of them passing `filter` and `q`.
    fn cis_of_class(
        &self,
        class: &str,
        filter: &CiFilter,
        q: Option<&str>,
        limit: usize,
        out: &mut Vec<CiRecord>,
    ) -> Result<(), StoreError> {
        // xc/<class>\0<ci id> → host
        let prefix = keys::by_class_prefix(class);
        let mut found = 0;
        for kv in self.scan_from(&prefix, filter.after.as_deref().map(str::as_bytes)) {
            let (k, host) = kv.map_err(backend)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(id) = keys::trailing_ci_id(&k) else {
                continue;
            };
            let Some(rec) = self.ci_of(&String::from_utf8_lossy(&host), class, &id)? else {
                continue;
            };
            if matches(&rec, filter, q) {
                out.push(rec);
                found += 1;
                if found >= limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// CI records of one (host, class) (their keys are that pair's index), after
    /// `filter.after`.
    fn cis_from_records(
        &self,
        host: &str,
        class: &str,
        filter: &CiFilter,
        q: Option<&str>,
        limit: usize,
        out: &mut Vec<CiRecord>,
    ) -> Result<(), StoreError> {
        let prefix = keys::cis_of_host_class(host, class);
        let mut found = 0;
        for kv in self.scan_from(&prefix, filter.after.as_deref().map(str::as_bytes)) {
            let (k, v) = kv.map_err(backend)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(id) = keys::trailing_ci_id(&k) else {
                continue;
            };
            let (rec, _) = codec::decode_ci(&k, host, class, &id, &v)?;
            if matches(&rec, filter, q) {
                out.push(rec);
                found += 1;
                if found >= limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The classes `host` has CIs of, in order (a skip scan: one seek per class).
    fn classes_of(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let prefix = keys::cis_of_host(host);
        let mut classes = Vec::new();
        let mut from = prefix.clone();
        while let Some(kv) = self.tree.range(from.as_slice()..).next() {
            let (k, _) = kv.map_err(backend)?;
            if !k.starts_with(&prefix) {
                break;
            }
            match keys::ci_parts(&k) {
                Some((_, class, _)) => {
                    // Every key of this class starts with `<class>\0`; `<class>\x01` is
                    // past them all.
                    from = keys::cis_of_host_class(host, class);
                    if let Some(last) = from.last_mut() {
                        *last = 1;
                    }
                    classes.push(class.to_owned());
                }
                None => {
                    // Not ours to interpret: step over it.
                    from = k.to_vec();
                    from.push(0);
                }
            }
        }
        Ok(classes)
    }

    fn ci_of(&self, host: &str, class: &str, id: &str) -> Result<Option<CiRecord>, StoreError> {
        txn::read_ci(&self.tree, host, class, id)?
            .map(|ci| ci.record())
            .transpose()
    }

    /// Where a CI id's record is: (host, class). Probes the class index once per class
    /// (there are few, see `txn::MAX_CLASSES`).
    fn location(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        Locator::new(&self.tree)?.locate(id)
    }

    /// CIs of every class in id order (the class index ranges merged), after
    /// `filter.after`, at most `limit` passing `filter` and `q`.
    fn cis_of_all_classes(
        &self,
        filter: &CiFilter,
        q: Option<&str>,
        limit: usize,
        out: &mut Vec<CiRecord>,
    ) -> Result<(), StoreError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let after = filter.after.as_deref().map(str::as_bytes);
        let mut ranges = Vec::new();
        let mut heads = BinaryHeap::new();
        for class in all_classes(&self.tree)? {
            let prefix = keys::by_class_prefix(&class);
            let iter = self.scan_from(&prefix, after);
            ranges.push((class, prefix, iter));
            let last = ranges.len() - 1;
            if let Some(head) = next_entry(&mut ranges, last)? {
                heads.push(Reverse(head));
            }
        }
        let mut found = 0;
        while let Some(Reverse((id, i, host))) = heads.pop() {
            if let Some(next) = next_entry(&mut ranges, i)? {
                heads.push(Reverse(next));
            }
            let class = &ranges[i].0;
            let Some(rec) = self.ci_of(&host, class, &id)? else {
                continue;
            };
            if matches(&rec, filter, q) {
                out.push(rec);
                found += 1;
                if found >= limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Host ids `host` names: the id itself if such a host exists, else hosts with that
    /// hostname.
    fn resolve_host(&self, host: &str) -> Result<Vec<HostId>, StoreError> {
        if host.starts_with("host-")
            && self
                .tree
                .contains_key(keys::ci(host, HOST_CLASS, &super::host_ci_id(host)))
                .map_err(backend)?
        {
            return Ok(vec![host.to_owned()]);
        }
        let prefix = keys::by_hostname_prefix(host);
        let mut out = Vec::new();
        for k in self.tree.scan_prefix(&prefix).keys().take(MAX_LIST) {
            let k = k.map_err(backend)?;
            if let Some(h) = keys::after_prefix(&k, &prefix) {
                out.push(String::from_utf8_lossy(h).into_owned());
            }
        }
        Ok(out)
    }

    fn list<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        cap: usize,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(prefix).take(cap) {
            let (k, v) = kv.map_err(backend)?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Deletes or retires records found under a time index, in bounded batches.
    fn sweep(
        &self,
        prefix: &[u8],
        before: SystemTime,
        mut each: impl FnMut(&mut Txn<'_>, &[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<u64, StoreError> {
        let mut end = prefix.to_vec();
        end.extend_from_slice(&keys::time_be(before));
        let mut total = 0u64;
        loop {
            let (n, more) = self.write(|txn| {
                let mut n = 0u64;
                let mut seen = 0usize;
                for kv in self.tree.range(prefix.to_vec()..end.clone()) {
                    let (k, v) = kv.map_err(backend)?;
                    seen += 1;
                    if each(txn, &k, &v)? {
                        n += 1;
                    }
                    if seen >= RETENTION_CHUNK {
                        break;
                    }
                }
                Ok((n, seen >= RETENTION_CHUNK))
            })?;
            total += n;
            if !more {
                break;
            }
        }
        self.durable()?;
        Ok(total)
    }
}

/// Every class the store has CIs of, in order: a skip scan of the class index (one seek per
/// class).
fn all_classes(tree: &sled::Tree) -> Result<Vec<String>, StoreError> {
    let mut classes = Vec::new();
    let mut from = keys::BY_CLASS.to_vec();
    while let Some(kv) = tree.range(from.as_slice()..).next() {
        let (k, _) = kv.map_err(backend)?;
        if !k.starts_with(keys::BY_CLASS) {
            break;
        }
        match keys::class_of_index_key(&k) {
            Some(class) => {
                classes.push(String::from_utf8_lossy(class).into_owned());
                // Every key of this class starts with `<class>\0`; `<class>\x01` is past them.
                from = keys::by_class_prefix(&String::from_utf8_lossy(class));
                if let Some(last) = from.last_mut() {
                    *last = 1;
                }
            }
            None => {
                // Not ours to interpret: step over it.
                from = k.to_vec();
                from.push(0);
            }
        }
    }
    Ok(classes)
}

/// The next (ci id, range number, host) of class index range `i`, if any.
fn next_entry(
    ranges: &mut [(String, Vec<u8>, sled::Iter)],
    i: usize,
) -> Result<Option<(String, usize, String)>, StoreError> {
    let (_, prefix, iter) = &mut ranges[i];
    for kv in iter.by_ref() {
        let (k, v) = kv.map_err(backend)?;
        if !k.starts_with(prefix) {
            return Ok(None);
        }
        if let Some(id) = keys::trailing_ci_id(&k) {
            return Ok(Some((id, i, String::from_utf8_lossy(&v).into_owned())));
        }
    }
    Ok(None)
}

/// Whether `rec` passes the state and text conditions of `filter` (`q` pre-lowercased).
fn matches(rec: &CiRecord, filter: &CiFilter, q: Option<&str>) -> bool {
    if !filter.include_absent && rec.state != CiState::Present {
        return false;
    }
    let Some(q) = q else {
        return true;
    };
    fn value_matches(v: &AttrValue, q: &str) -> bool {
        match v {
            AttrValue::Str(s) => s.to_lowercase().contains(q),
            AttrValue::List(l) => l.iter().any(|v| value_matches(v, q)),
            _ => false,
        }
    }
    rec.key.to_lowercase().contains(q) || rec.attrs.values().any(|v| value_matches(v, q))
}

impl Store for SledStore {
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let key = keys::agent(id);
        match self.tree.get(&key).map_err(backend)? {
            Some(v) => {
                let mut rec = [decode(&key, &v)?];
                self.liveness.overlay(&mut rec);
                let [rec] = rec;
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut recs: Vec<AgentRecord> = self.list(keys::AGENT, MAX_AGENTS)?;
        self.liveness.overlay(&mut recs);
        Ok(recs)
    }

    /// Writes `rec` and flushes. Store-owned progress is protected from stale copies: the
    /// watermark (`last_seq`) never moves backwards and a known `host_id` is never erased.
    fn put_agent(&self, rec: &AgentRecord) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut rec = rec.clone();
            if let Some(stored) = txn.peek_agent(&rec.agent_id)? {
                rec.last_seq = rec.last_seq.max(stored.last_seq);
                if rec.host_id.is_none() {
                    rec.host_id = stored.host_id;
                }
            }
            txn.agents.insert(rec.agent_id.clone(), rec);
            Ok(())
        })?;
        self.durable()
    }

    fn identify(
        &self,
        agent_id: &str,
        instance_id: &str,
        identity: &HostIdentity,
        now: SystemTime,
    ) -> Result<HostId, StoreError> {
        let host = self.write(|txn| {
            hosts::identify(txn, agent_id, instance_id, identity, now, self.live_window)
        })?;
        self.durable()?;
        Ok(host)
    }

    fn apply(&self, agent_id: &str, events: &[v1::Event]) -> Result<ApplyOutcome, StoreError> {
        let now = SystemTime::now();
        // Before the writer lock (apply::Prepared): the agent's record and, for deltas, ids,
        // encoded attributes and the rows of the CIs they name. The commit number first:
        // every commit up to it is in what is read after it.
        let as_of = self.commits.load(Ordering::Acquire);
        let prepared = apply::Prepared::read(&self.tree, agent_id, events)?;
        let outcome = self.write_with(true, |writer, txn| {
            let prepared = prepared.map(|p| {
                p.trusted(
                    |host| writer.rows_current(host, as_of),
                    writer.agent_current(agent_id, as_of),
                )
            });
            apply::apply_events(txn, agent_id, events, now, prepared)
        })?;
        self.durable()?;
        Ok(outcome)
    }

    fn ci(&self, id: &str) -> Result<Option<CiRecord>, StoreError> {
        match self.location(id)? {
            Some((host, class)) => self.ci_of(&host, &class, id),
            None => Ok(None),
        }
    }

    fn ci_versions(&self, id: &str) -> Result<Vec<CiVersion>, StoreError> {
        let Some((host, class)) = self.location(id)? else {
            return Ok(Vec::new());
        };
        let Some(ci) = txn::read_ci(&self.tree, &host, &class, id)? else {
            return Ok(Vec::new());
        };
        history::versions(
            &self.tree,
            &self.vlog,
            &ci.record()?,
            ci.row.head,
            MAX_CI_VERSIONS,
        )
    }

    fn cis(&self, filter: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        let limit = match filter.limit {
            0 => DEFAULT_CI_LIMIT,
            n => n.min(MAX_LIST),
        };
        let q = filter
            .q
            .as_deref()
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase);
        let q = q.as_deref();
        let mut out = Vec::new();
        match (&filter.host, &filter.class) {
            (Some(host), class) => {
                // Records are clustered by (host, class) in id order: one range per pair,
                // each read up to `limit`, merged by id when there are several.
                let mut ranges = 0;
                for h in &self.resolve_host(host)? {
                    let classes = match class {
                        Some(c) => vec![c.clone()],
                        None => self.classes_of(h)?,
                    };
                    for c in &classes {
                        self.cis_from_records(h, c, filter, q, limit, &mut out)?;
                        ranges += 1;
                        if ranges > 1 {
                            out.sort_by(|a, b| a.id.cmp(&b.id));
                            out.truncate(limit);
                        }
                    }
                }
            }
            (None, Some(class)) => self.cis_of_class(class, filter, q, limit, &mut out)?,
            (None, None) => self.cis_of_all_classes(filter, q, limit, &mut out)?,
        }
        Ok(out)
    }

    /// Walks the CI records themselves, host by host (a skip scan over `c/`: one seek per
    /// host, then the (host, class) range), instead of the class index plus one lookup per
    /// CI; decodes only what [`CiView`] exposes, attributes on demand.
    fn scan_class(
        &self,
        class: &str,
        part: ScanPart,
        f: &mut dyn FnMut(&CiView<'_>),
    ) -> Result<(), StoreError> {
        let mut from = keys::CI.to_vec();
        while let Some(kv) = self.tree.range(from.as_slice()..).next() {
            let (k, _) = kv.map_err(backend)?;
            if !k.starts_with(keys::CI) {
                break;
            }
            let Some((host, _, _)) = keys::ci_parts(&k) else {
                // Not ours to interpret: step over it.
                from = k.to_vec();
                from.push(0);
                continue;
            };
            if part.holds(host) {
                // `<host>\0<class>\0` up to `<host>\0<class>\x01`, a leaf at a time
                // (vendor/sled: `Tree::scan_leaves`, no allocation per CI).
                let prefix = keys::cis_of_host_class(host, class);
                let mut upper = prefix.clone();
                if let Some(last) = upper.last_mut() {
                    *last = 1;
                }
                let mut failed = None;
                self.tree
                    .scan_leaves(prefix.as_slice()..upper.as_slice(), |k, v| {
                        // Keys here are `<prefix><id>`: (host, class) are known, only the
                        // id needs checking. Any other tail: as `ci_parts` reads it.
                        let parts = match k.get(prefix.len()..) {
                            Some(id) if id.len() == keys::CI_ID_LEN => std::str::from_utf8(id)
                                .ok()
                                .filter(|id| id.starts_with("ci-"))
                                .map(|id| (host, class, id)),
                            _ => keys::ci_parts(k),
                        };
                        let Some((host, class, id)) = parts else {
                            return true;
                        };
                        match codec::decode_scan_row(k, v) {
                            Ok(row) => {
                                f(&CiView::encoded(
                                    (id, host, class, row.key),
                                    row.state,
                                    row.last_seen,
                                    row.attrs,
                                    (codec::find_attr, codec::find_str_attr),
                                ));
                                true
                            }
                            Err(e) => {
                                failed = Some(e);
                                false
                            }
                        }
                    })
                    .map_err(backend)?;
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            // Every key of this host starts with `<host>\0`; `<host>\x01` is past them.
            from = keys::cis_of_host(host);
            if let Some(last) = from.last_mut() {
                *last = 1;
            }
        }
        Ok(())
    }

    fn relations_of(&self, id: &str) -> Result<Vec<RelationRecord>, StoreError> {
        let mut out: Vec<RelationRecord> = self.list(&keys::relations_from(id), MAX_LIST)?;
        let prefix = keys::relations_to(id);
        for k in self.tree.scan_prefix(&prefix).keys().take(MAX_LIST) {
            let k = k.map_err(backend)?;
            // rr/<to><from><kind>: swap back into the forward key.
            let Some(tail) = keys::after_prefix(&k, keys::RELATION_REV) else {
                continue;
            };
            let Some((to, from, kind)) = keys::relation_parts(tail) else {
                continue;
            };
            if from == to {
                continue; // a self-relation is already in the forward list
            }
            let fkey = keys::relation(&from, &to, &kind);
            if let Some(v) = self.tree.get(&fkey).map_err(backend)? {
                out.push(decode(&fkey, &v)?);
            }
        }
        Ok(out)
    }

    fn metrics(
        &self,
        host_id: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        let start = keys::metric(host_id, from);
        let end = keys::metric(host_id, to);
        let mut out = Vec::new();
        for kv in self.tree.range(start..end).take(MAX_METRICS) {
            let (k, v) = kv.map_err(backend)?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError> {
        self.list(keys::CLONE, MAX_LIST)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk().map_err(backend)? + self.vlog.size_on_disk()?)
    }

    /// At most [`MAX_FEED`] entries per call.
    fn feed(&self, after: Option<&FeedPos>, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        // Every commit numbered up to here is applied whole (the number is published after
        // its batch). The read stops there and lists the classes after this load, so it
        // can locate every CI it returns; later commits are the next read's.
        let last_commit = self.commits.load(Ordering::Acquire);
        let limit = limit.min(MAX_FEED);
        match self.tail.read(last_commit, after, limit) {
            Some(entries) => entries.iter().map(|e| e.decode()).collect(),
            None => feed::read(&self.feed_source(), last_commit, after, limit),
        }
    }

    /// At most [`MAX_FEED`] entries per call; bounded as [`Store::feed`] is.
    fn feed_heads(
        &self,
        after: Option<&FeedPos>,
        limit: usize,
    ) -> Result<Vec<FeedHead>, StoreError> {
        let last_commit = self.commits.load(Ordering::Acquire);
        let limit = limit.min(MAX_FEED);
        match self.tail.read(last_commit, after, limit) {
            Some(entries) => entries.iter().map(|e| e.head()).collect(),
            None => feed::read_heads(&self.feed_source(), last_commit, after, limit),
        }
    }

    fn record(&self, collection: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_collection(collection)?;
        if !valid_record_id(id) {
            return Ok(None);
        }
        let value = self
            .tree
            .get(keys::record(collection, id))
            .map_err(backend)?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// At most [`MAX_RECORDS`] per call.
    fn records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        check_collection(collection)?;
        let prefix = keys::records_of(collection);
        let mut out = Vec::new();
        for kv in self
            .scan_from(&prefix, after.map(str::as_bytes))
            .take(limit.min(MAX_RECORDS))
        {
            let (k, v) = kv.map_err(backend)?;
            let Some(id) = keys::after_prefix(&k, &prefix) else {
                break;
            };
            let id = std::str::from_utf8(id).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "record id is not UTF-8".into(),
            })?;
            out.push((id.to_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// One transaction like any other write (one batch, a commit number, sealed by the
    /// flush), but it writes no versions: no feed entries.
    fn write_records(&self, ops: &[RecordOp]) -> Result<(), StoreError> {
        for op in ops {
            check_record_op(op)?;
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            for op in ops {
                match op {
                    RecordOp::Put {
                        collection,
                        id,
                        value,
                    } => txn.raw.put(keys::record(collection, id), value.clone()),
                    RecordOp::Delete { collection, id } => {
                        txn.raw.delete(keys::record(collection, id));
                    }
                }
            }
            Ok(())
        })?;
        self.durable()
    }

    fn wait_for_idle_writers(&self) {
        self.group.wait_quiet(crate::store::DERIVED_WAIT);
    }

    /// Writes the pending heartbeats, then makes everything durable.
    fn flush(&self) -> Result<(), StoreError> {
        self.write_beats(true)?;
        self.durable()
    }

    fn set_connected(
        &self,
        agent_id: &str,
        connected: bool,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        self.write(|txn| {
            let Some(mut rec) = txn.peek_agent(agent_id)? else {
                return Ok(false);
            };
            rec.connected = connected;
            rec.last_seen = Some(now);
            txn.agents.insert(agent_id.to_owned(), rec);
            Ok(true)
        })
    }

    fn record_heartbeat(
        &self,
        agent_id: &str,
        outbox_events: u64,
        outbox_bytes: u64,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        if !self
            .tree
            .contains_key(keys::agent(agent_id))
            .map_err(backend)?
        {
            return Ok(false);
        }
        self.liveness
            .record(agent_id, now, outbox_events, outbox_bytes);
        self.write_beats(false)?;
        Ok(true)
    }

    fn retire_absent(&self, absent_before: SystemTime) -> Result<u64, StoreError> {
        let now = SystemTime::now();
        self.sweep(keys::ABSENT, absent_before, |txn, k, v| {
            let (Some(id), Some((host, class))) =
                (keys::trailing_ci_id(k), keys::parse_location(v))
            else {
                // Not ours to interpret; drop the stray index entry so the sweep advances.
                txn.raw.delete(k.to_vec());
                return Ok(false);
            };
            let src = apply::Source {
                agent_id: RETENTION_AGENT,
                seq: 0,
                observed_at: now,
            };
            let retired = apply::retire_ci(txn, &host, &class, &id, &src)?;
            // Always drop the entry we visited (retire_ci removes the CI's own entry; a
            // stale one without an absent CI behind it goes too), so every chunk advances.
            txn.raw.delete(k.to_vec());
            Ok(retired)
        })
    }

    fn prune_metrics(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.sweep(keys::METRIC_TIME, before, |txn, k, _| {
            // mt/<8 bytes time><host>
            let tail = keys::after_prefix(k, keys::METRIC_TIME).unwrap_or_default();
            let host = tail.get(8..).unwrap_or_default();
            let mut mkey = keys::metric_prefix(&String::from_utf8_lossy(host));
            mkey.extend_from_slice(tail.get(..8).unwrap_or_default());
            txn.raw.delete(mkey);
            txn.raw.delete(k.to_vec());
            Ok(true)
        })
    }
}
