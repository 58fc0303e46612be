//! What the benchmark binaries (`src/bin/*.rs`) share: medians and milliseconds of timed
//! runs, CPU time from /proc, the synthetic fleet's names and CI records, a host's inventory
//! snapshot and writing one per host to a store, and [`MemStore`], an in-memory [`Store`]
//! for the benches that measure an engine rather than a backend.
//!
//! The benches' printed figures (docs/BENCHMARKS.md) depend on these: keep their behaviour
//! as it is.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use cmdb_collector::store::record_map::RecordMap;
use cmdb_collector::store::{
    AgentRecord, ApplyOutcome, CiFilter, CiRecord, CiState, CiVersion, CloneRecord, FeedEntry,
    FeedPos, HostId, MetricRecord, RecordOp, RelationRecord, Store, StoreError,
};
use cmdb_proto::convert::timestamp_from_system;
use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};
use cmdb_proto::v1::{self, event};

// === timed runs ===

/// `d` in milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `runs` (of an even count, the upper of the two middle ones).
///
/// Panics when `runs` is empty (the binaries refuse `--runs 0`).
pub fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// The median of `values` as [`median`] takes it, sorting `values` in place
/// ([`f64::total_cmp`] order).
///
/// Panics when `values` is empty (the binaries refuse `--runs 0`).
pub fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

// === CPU time ===

/// Clock ticks per second of /proc's `utime` and `stime` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// User + system CPU time, in clock ticks, of a `/proc/…/stat` line (0 where unreadable).
fn stat_ticks(stat: &str) -> u64 {
    // The fields after the command name (which may hold spaces and parentheses): state is
    // the 3rd field, utime and stime the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn cpu_ticks(stat_path: &str) -> u64 {
    stat_ticks(&std::fs::read_to_string(stat_path).unwrap_or_default())
}

fn ticks_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// CPU time (user + system) of the process so far, from /proc/self/stat (clock ticks: 10 ms
/// resolution; 0 where unreadable).
pub fn process_cpu() -> Duration {
    ticks_duration(cpu_ticks("/proc/self/stat"))
}

/// CPU time (user + system, every thread, exited ones included) of process `pid` so far,
/// from /proc/<pid>/stat (10 ms resolution); `None` when it cannot be read (no such process).
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ticks_duration(stat_ticks(&stat)))
}

/// CPU time (user + system) of the calling thread so far, from /proc/thread-self/stat (10 ms
/// resolution; 0 where unreadable). On a shared machine this is the honest "one core"
/// figure: wall time also counts the time other processes had the core.
pub fn thread_cpu() -> Duration {
    ticks_duration(cpu_ticks("/proc/thread-self/stat"))
}

/// [`thread_cpu`] in seconds, as ticks / 100 (the arithmetic capacity-bench's figures
/// were computed with).
pub fn thread_cpu_secs() -> f64 {
    cpu_ticks("/proc/thread-self/stat") as f64 / TICKS_PER_SECOND as f64
}

// === the synthetic fleet ===

/// The host id of host `h`.
pub fn host_id(h: usize) -> String {
    format!("host-{h:016x}")
}

/// The hostname of host `h`.
pub fn hostname(h: usize) -> String {
    format!("node{h:05}")
}

/// A string attribute value.
pub fn str_attr(v: &str) -> AttrValue {
    AttrValue::Str(v.to_owned())
}

/// Attributes from (name, value) pairs.
pub fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A present CI of host `host`, at its first version, seen at the epoch by `agt-bench`.
pub fn ci(host: &str, class: &str, key: String, attrs: Attrs) -> CiRecord {
    CiRecord {
        id: cmdb_collector::store::ci_id(host, class, &key),
        host_id: host.to_owned(),
        class: class.to_owned(),
        key,
        state: CiState::Present,
        attrs,
        version: 1,
        first_seen: SystemTime::UNIX_EPOCH,
        last_seen: SystemTime::UNIX_EPOCH,
        last_changed: SystemTime::UNIX_EPOCH,
        source_agent: "agt-bench".into(),
        source_seq: 1,
    }
}

// === inventories ===

/// A collector that ran fine and reported `items` items of `class`.
pub fn collector_status(
    name: &str,
    class: &str,
    items: u64,
    duration_ms: u64,
) -> v1::CollectorStatus {
    v1::CollectorStatus {
        name: name.into(),
        state: v1::CollectorState::Ok as i32,
        duration_ms,
        items,
        message: None,
        classes: vec![class.into()],
    }
}

/// A snapshot of a whole inventory, collected at `at` by agent version `agent_version`
/// (no relations, a zero content hash).
pub fn snapshot(
    agent_version: &str,
    instance_id: String,
    host: v1::HostIdentity,
    collectors: Vec<v1::CollectorStatus>,
    items: Vec<v1::Item>,
    at: SystemTime,
) -> v1::Snapshot {
    v1::Snapshot {
        inventory: Some(v1::Inventory {
            schema: "cmdb.inventory/v1".into(),
            collected_at: Some(timestamp_from_system(at)),
            agent: Some(v1::AgentInfo {
                version: agent_version.into(),
                instance_id,
            }),
            host: Some(host),
            collectors,
            items,
            relations: vec![],
        }),
        content_hash: vec![0; 32],
    }
}

/// Event `seq`, observed at `at`.
pub fn event_at(seq: u64, at: SystemTime, kind: event::Kind) -> v1::Event {
    v1::Event {
        seq,
        observed_at: Some(timestamp_from_system(at)),
        kind: Some(kind),
    }
}

/// Writes hosts `0..hosts` to `store` as agents would: each host's agent (`agt-{h:08}`,
/// instance `inst-{h:08}`, host [`hostname`]) registered and identified, then one snapshot
/// (event 1, at `now`) of the items and collectors `inventory(h)` gives. Fails on a store
/// error or a rejected snapshot.
pub fn populate<S: Store + ?Sized>(
    store: &S,
    hosts: usize,
    now: SystemTime,
    mut inventory: impl FnMut(usize) -> (Vec<v1::Item>, Vec<v1::CollectorStatus>),
) -> Result<()> {
    for h in 0..hosts {
        let agent = format!("agt-{h:08}");
        let instance = format!("inst-{h:08}");
        let identity = HostIdentity {
            hostname: Some(hostname(h)),
            machine_id: Some(format!("{h:032x}")),
            ..HostIdentity::default()
        };
        store.put_agent(&AgentRecord::new(
            &agent,
            &instance,
            "bench",
            identity.clone(),
            now,
        ))?;
        store.identify(&agent, &instance, &identity, now)?;
        let (items, collectors) = inventory(h);
        let host = v1::HostIdentity {
            hostname: identity.hostname.clone(),
            machine_id: identity.machine_id.clone(),
            ..v1::HostIdentity::default()
        };
        let snap = snapshot("bench", instance.clone(), host, collectors, items, now);
        let ev = event_at(1, now, event::Kind::Snapshot(snap));
        let out = store.apply(&agent, &[ev])?;
        anyhow::ensure!(out.rejected == 0, "snapshot of host {h} rejected");
    }
    Ok(())
}

// === an in-memory store ===

/// An in-memory [`Store`] for the benches that measure an engine, not a backend: metric
/// windows (`metrics`), a prepared change feed (`feed`) and record collections (`record`,
/// `records`, `write_records`). Agents, CIs, relations and clones are empty; writing agents
/// or events answers an error. (The collector's own in-memory store,
/// `cmdb_collector::store::memory`, exists in its tests only.)
///
/// The feed is handed out by moving entries (an engine reads each once, in order), so a
/// figure excludes the store's own read cost (decoding pages: the sled store's
/// `feed_read_cost` test measures it).
#[derive(Default)]
pub struct MemStore {
    windows: HashMap<String, Vec<MetricRecord>>,
    feed: Mutex<VecDeque<FeedEntry>>,
    records: RecordMap,
    /// Puts into this collection are counted in `written` but not kept.
    discard: Option<&'static str>,
    /// Bytes of the values `write_records` was given.
    written: AtomicU64,
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend("not in the benchmark store".into()))
}

fn poisoned(_: impl std::fmt::Display) -> StoreError {
    StoreError::Backend("poisoned".into())
}

impl MemStore {
    /// A store whose `metrics` serve `windows` (by host id).
    pub fn with_windows(windows: HashMap<String, Vec<MetricRecord>>) -> Self {
        MemStore {
            windows,
            ..MemStore::default()
        }
    }

    /// A store whose `feed` serves `feed` (in the feed's order: (commit, CI id, version)).
    pub fn with_feed(feed: Vec<FeedEntry>) -> Self {
        MemStore {
            feed: Mutex::new(feed.into()),
            ..MemStore::default()
        }
    }

    /// Puts into `collection` are counted but not kept (keeping a bulk collection would
    /// measure memory growth, not the engine).
    pub fn discarding(self, collection: &'static str) -> Self {
        MemStore {
            discard: Some(collection),
            ..self
        }
    }

    /// The host ids that have metric windows, in no particular order.
    pub fn window_hosts(&self) -> impl Iterator<Item = &str> {
        self.windows.keys().map(String::as_str)
    }

    /// Bytes of the record values written so far, kept or discarded.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Store for MemStore {
    fn agent(&self, _: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(None)
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(Vec::new())
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
        Ok(None)
    }
    fn ci_versions(&self, _: &str) -> Result<Vec<CiVersion>, StoreError> {
        Ok(Vec::new())
    }
    fn cis(&self, _: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn relations_of(&self, _: &str) -> Result<Vec<RelationRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn metrics(
        &self,
        host: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        Ok(self
            .windows
            .get(host)
            .map(|w| {
                w.iter()
                    .filter(|m| m.window_start >= from && m.window_start < to)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
    fn clones(&self) -> Result<Vec<CloneRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn feed(&self, after: Option<&FeedPos>, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        let mut feed = self.feed.lock().map_err(poisoned)?;
        // Entries up to `after` were handed out before: they are gone.
        while feed
            .front()
            .is_some_and(|e| after.is_some_and(|a| &e.pos <= a))
        {
            feed.pop_front();
        }
        let n = limit.min(feed.len());
        Ok(feed.drain(..n).collect())
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
        let bytes: u64 = ops
            .iter()
            .map(|op| match op {
                RecordOp::Put { value, .. } => value.len() as u64,
                RecordOp::Delete { .. } => 0,
            })
            .sum();
        self.written.fetch_add(bytes, Ordering::Relaxed);
        let Some(discard) = self.discard else {
            return self.records.write(ops);
        };
        let kept: Vec<RecordOp> = ops
            .iter()
            .filter(|op| !matches!(op, RecordOp::Put { collection, .. } if *collection == discard))
            .cloned()
            .collect();
        self.records.write(&kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn median_is_the_middle_of_the_sorted_runs() {
        assert_eq!(median(secs(&[7])), Duration::from_secs(7));
        assert_eq!(median(secs(&[9, 1, 5])), Duration::from_secs(5));
        // An even count: the upper of the two middle ones.
        assert_eq!(median(secs(&[4, 1, 3, 2])), Duration::from_secs(3));
    }

    #[test]
    #[should_panic]
    fn median_of_no_runs_panics() {
        median(Vec::new());
    }

    #[test]
    fn median_f64_sorts_in_place() {
        let mut v = [3.0, -1.0, 2.5, 10.0];
        assert_eq!(median_f64(&mut v), 3.0);
        assert_eq!(v, [-1.0, 2.5, 3.0, 10.0]);
        let mut one = [0.5];
        assert_eq!(median_f64(&mut one), 0.5);
        // NaN sorts last, out of the middle.
        let mut nan = [f64::NAN, 1.0, 2.0];
        assert_eq!(median_f64(&mut nan), 2.0);
    }

    #[test]
    fn ms_is_milliseconds() {
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
        assert_eq!(ms(Duration::ZERO), 0.0);
    }

    #[test]
    fn pid_cpu_reads_a_live_process_and_not_a_missing_one() {
        assert!(pid_cpu(std::process::id()).is_some());
        assert!(pid_cpu(u32::MAX).is_none());
    }

    #[test]
    fn stat_ticks_add_utime_and_stime() {
        // A command name with spaces and a parenthesis; utime 250, stime 17.
        let stat = "4242 (my (odd) cmd) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 17 0 0 20 0 1 0";
        assert_eq!(stat_ticks(stat), 267);
        assert_eq!(
            ticks_duration(stat_ticks(stat)),
            Duration::from_millis(2670)
        );
        assert_eq!(stat_ticks(""), 0);
        assert_eq!(stat_ticks("1 (x) R 1 2"), 0);
        // One unreadable field counts as 0.
        let odd = "1 (x) R 1 1 1 0 -1 0 0 0 0 0 ? 5 0";
        assert_eq!(stat_ticks(odd), 5);
    }

    #[test]
    fn cpu_times_count_this_thread_spinning() {
        // Spin until the thread has used a clock tick (10 ms), for 10 s at most.
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu() == Duration::ZERO && spin.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let used = thread_cpu();
        assert!(used > Duration::ZERO);
        // Read later, so at least as much.
        assert!(thread_cpu_secs() >= used.as_secs_f64() - 1e-9);
        assert!(process_cpu() > Duration::ZERO);
    }

    fn entry(commit: u64, n: u64) -> FeedEntry {
        FeedEntry {
            pos: FeedPos {
                commit,
                ci_id: format!("ci-{n}"),
                version: 2,
            },
            host_id: host_id(0),
            class: "file".into(),
            key: format!("/etc/{n}"),
            version: CiVersion {
                ci_id: format!("ci-{n}"),
                version: 2,
                change: cmdb_collector::store::ChangeKind::Changed,
                state: CiState::Present,
                attrs: Attrs::new(),
                old_attrs: Attrs::new(),
                observed_at: SystemTime::UNIX_EPOCH,
                agent_id: "agt-0".into(),
                seq: n,
                change_id: None,
            },
        }
    }

    #[test]
    fn the_feed_is_handed_out_once_in_order() {
        let store = MemStore::with_feed((1..=5).map(|n| entry(n, n)).collect());
        let first = store.feed(None, 2).unwrap();
        assert_eq!(
            first.iter().map(|e| e.pos.commit).collect::<Vec<_>>(),
            [1, 2]
        );
        let rest = store.feed(Some(&first[1].pos), 10).unwrap();
        assert_eq!(
            rest.iter().map(|e| e.pos.commit).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(store.feed(Some(&rest[2].pos), 10).unwrap().is_empty());
        assert!(MemStore::default().feed(None, 10).unwrap().is_empty());
    }

    #[test]
    fn discarded_puts_are_counted_not_kept() {
        let put = |collection, id: &str, len| RecordOp::Put {
            collection,
            id: id.into(),
            value: vec![1; len],
        };
        let store = MemStore::default().discarding("drift");
        store
            .write_records(&[put("drift", "a", 10), put("incidents", "b", 3)])
            .unwrap();
        assert_eq!(store.written(), 13);
        assert_eq!(store.record("drift", "a").unwrap(), None);
        assert_eq!(store.record("incidents", "b").unwrap(), Some(vec![1; 3]));

        let keeps = MemStore::default();
        keeps.write_records(&[put("drift", "a", 4)]).unwrap();
        assert_eq!(keeps.written(), 4);
        assert_eq!(keeps.records("drift", None, 10).unwrap().len(), 1);
    }

    #[test]
    fn metrics_serve_the_windows_in_the_range() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let window = |s| MetricRecord {
            host_id: host_id(1),
            window_start: at(s),
            window_seconds: 60,
            summaries: Vec::new(),
        };
        let store = MemStore::with_windows(HashMap::from([(
            host_id(1),
            vec![window(0), window(60), window(120)],
        )]));
        let got = store.metrics(&host_id(1), at(60), at(120)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].window_start, at(60));
        assert!(
            store
                .metrics(&host_id(2), at(0), at(999))
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.window_hosts().collect::<Vec<_>>(), [host_id(1)]);
        assert!(store.agents().unwrap().is_empty());
        assert!(
            store
                .put_agent(&AgentRecord::new(
                    "a",
                    "i",
                    "v",
                    HostIdentity::default(),
                    at(0)
                ))
                .is_err()
        );
    }

    #[test]
    fn populate_writes_one_agent_and_snapshot_per_host() {
        let dir = std::env::temp_dir().join(format!("cmdb-bench-lib-{}", std::process::id()));
        let store = cmdb_collector::store::sled::SledStore::open(&dir, 8 << 20).unwrap();
        let now = SystemTime::now();
        populate(&store, 3, now, |h| {
            let items = (0..=h)
                .map(|p| v1::Item {
                    class: "package".into(),
                    key: format!("dpkg:pkg{p}:amd64"),
                    attrs: cmdb_proto::convert::attrs_to_proto(&attrs(&[(
                        "version",
                        str_attr("1.0"),
                    )])),
                })
                .collect::<Vec<_>>();
            let n = items.len() as u64;
            (items, vec![collector_status("dpkg", "package", n, 1)])
        })
        .unwrap();
        let mut agents: Vec<String> = store
            .agents()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        agents.sort();
        assert_eq!(agents, ["agt-00000000", "agt-00000001", "agt-00000002"]);
        let packages = store
            .cis(&CiFilter {
                class: Some("package".into()),
                limit: 100,
                ..CiFilter::default()
            })
            .unwrap();
        assert_eq!(packages.len(), 1 + 2 + 3);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ci_is_present_at_its_first_version() {
        let c = ci(
            &host_id(3),
            "package",
            "dpkg:x:amd64".into(),
            attrs(&[("name", str_attr("x"))]),
        );
        assert_eq!(c.host_id, "host-0000000000000003");
        assert_eq!(
            c.id,
            cmdb_collector::store::ci_id(&host_id(3), "package", "dpkg:x:amd64")
        );
        assert_eq!((c.state, c.version), (CiState::Present, 1));
        assert_eq!(c.attrs.get("name"), Some(&AttrValue::Str("x".into())));
        assert_eq!(hostname(42), "node00042");
    }
}
