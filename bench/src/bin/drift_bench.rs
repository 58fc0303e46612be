//! Drift evaluation + correlation throughput: the judgment engine's real code path
//! (`Judgment::process_feed`: policies, change records, waivers, drift records, alerts,
//! correlation into incidents, the record batch it would commit) over a synthetic change
//! feed held in memory, so the figure is the engine's own cost, not the store's.
//!
//! The feed: `--hosts` hosts, each with packages and watched files; every version is one
//! CI change. The mix (per 100 versions): 50 volatile-only changes (filesystem usage,
//! listening-port pids: recorded, no drift), 30 package upgrades inside an approved
//! change's scope and window (authorized), 10 covered by a waiver (accepted), 10
//! unauthorized file edits (drift records, alerts, incidents grouped per host).
//!
//! `drift-bench --versions 1000000 --runs 5` prints versions/s per run and the median.
//! One thread: the engine is a single writer by design.

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use cmdb_collector::changes::{ChangeState, ChangeType, NewChange};
use cmdb_collector::judgment::{Actor, Judgment, JudgmentSettings, NewWaiver};
use cmdb_collector::store::record_map::RecordMap;
use cmdb_collector::store::{
    AgentRecord, ApplyOutcome, ChangeKind, CiFilter, CiRecord, CiState, CiVersion, CloneRecord,
    FeedEntry, FeedPos, HostId, MetricRecord, RecordOp, RelationRecord, Store, StoreError,
};
use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};
use cmdb_proto::v1;

#[derive(Parser)]
struct Args {
    /// CI versions per run.
    #[arg(long, default_value_t = 1_000_000)]
    versions: usize,
    /// Hosts the versions are spread over.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// A store that serves a prepared feed and keeps records in memory. The feed is handed
/// out by moving entries (the engine reads each once, in order), so the figure excludes
/// the store's own read cost (decoding pages: the store's `feed_read_cost` test measures
/// it) and is the engine's.
struct FeedStore {
    feed: Mutex<std::collections::VecDeque<FeedEntry>>,
    records: RecordMap,
    written: Mutex<u64>,
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend("not in the benchmark store".into()))
}

impl Store for FeedStore {
    fn agent(&self, _id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(None)
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn put_agent(&self, _rec: &AgentRecord) -> Result<(), StoreError> {
        unsupported()
    }
    fn identify(
        &self,
        _a: &str,
        _i: &str,
        _id: &HostIdentity,
        _now: SystemTime,
    ) -> Result<HostId, StoreError> {
        unsupported()
    }
    fn apply(&self, _a: &str, _e: &[v1::Event]) -> Result<ApplyOutcome, StoreError> {
        unsupported()
    }
    fn ci(&self, _id: &str) -> Result<Option<CiRecord>, StoreError> {
        Ok(None)
    }
    fn ci_versions(&self, _id: &str) -> Result<Vec<CiVersion>, StoreError> {
        Ok(Vec::new())
    }
    fn cis(&self, _f: &CiFilter) -> Result<Vec<CiRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn relations_of(&self, _id: &str) -> Result<Vec<RelationRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn metrics(
        &self,
        _h: &str,
        _f: SystemTime,
        _t: SystemTime,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        Ok(Vec::new())
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
        let mut feed = self
            .feed
            .lock()
            .map_err(|_| StoreError::Backend("poisoned".into()))?;
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
        *self
            .written
            .lock()
            .map_err(|_| StoreError::Backend("poisoned".into()))? += bytes;
        // Drift records are the bulk; keeping them all would measure memory growth, not
        // the engine. Keep the rest (incidents, changes, open drift).
        let kept: Vec<RecordOp> = ops
            .iter()
            .filter(|op| {
                !matches!(
                    op,
                    RecordOp::Put {
                        collection: "drift",
                        ..
                    }
                )
            })
            .cloned()
            .collect();
        self.records.write(&kept)
    }
}

fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.to_owned())
}

/// The synthetic feed.
fn make_feed(n: usize, hosts: usize, at: SystemTime) -> Vec<FeedEntry> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // One commit = one agent's batch: 100 versions of one host, hosts in turn.
        let h = (i / 100) % hosts;
        let host_id = format!("host-{h:016x}");
        let round = i / (100 * hosts);
        let slot = i % 100;
        let (class, key, old, new) = if slot < 50 {
            let old = attrs(&[
                ("device", s("/dev/sda1")),
                ("fstype", s("ext4")),
                ("size_bytes", AttrValue::Int(100_000_000)),
                ("used_bytes", AttrValue::Int(round as i64)),
            ]);
            let mut new = old.clone();
            new.insert("used_bytes".into(), AttrValue::Int(round as i64 + 1));
            ("filesystem", "/".to_owned(), old, new)
        } else if slot < 80 {
            let name = format!("pkg{}", slot);
            let old = attrs(&[
                ("manager", s("dpkg")),
                ("name", s(&name)),
                ("version", s(&format!("1.{round}"))),
                ("arch", s("amd64")),
            ]);
            let mut new = old.clone();
            new.insert("version".into(), s(&format!("1.{}", round + 1)));
            ("package", format!("dpkg:{name}:amd64"), old, new)
        } else if slot < 90 {
            let old = attrs(&[
                ("sha256", s(&format!("{round:064x}"))),
                ("size", AttrValue::Int(10)),
            ]);
            let mut new = old.clone();
            new.insert("sha256".into(), s(&format!("{:064x}", round + 1)));
            ("file", format!("/etc/motd.d/{slot}"), old, new)
        } else {
            let old = attrs(&[
                ("sha256", s(&format!("{round:064x}"))),
                ("size", AttrValue::Int(10)),
            ]);
            let mut new = old.clone();
            new.insert("sha256".into(), s(&format!("{:064x}", round + 1)));
            ("file", format!("/etc/app/{slot}.conf"), old, new)
        };
        let ci_id = format!("ci-{:016x}", (h * 100 + slot) as u64);
        out.push(FeedEntry {
            pos: FeedPos {
                commit: (i / 100) as u64 + 1,
                ci_id: ci_id.clone(),
                version: round as u64 + 2,
            },
            host_id,
            class: class.to_owned(),
            key,
            version: CiVersion {
                ci_id,
                version: round as u64 + 2,
                change: ChangeKind::Changed,
                state: CiState::Present,
                attrs: new,
                old_attrs: old,
                observed_at: at,
                agent_id: format!("agt-{h}"),
                seq: i as u64 + 1,
                change_id: None,
            },
        });
    }
    // Feed order is (commit, ci id, version).
    out.sort_by(|a, b| a.pos.cmp(&b.pos));
    out
}

fn run_once(feed: Vec<FeedEntry>) -> Result<(usize, Duration, Duration, usize, u64)> {
    let n = feed.len();
    let store = Arc::new(FeedStore {
        feed: Mutex::new(feed.into()),
        records: RecordMap::default(),
        written: Mutex::new(0),
    });
    let settings = JudgmentSettings {
        initial_baselines: false,
        ..JudgmentSettings::default()
    };
    let j = Judgment::open(store.clone(), settings, None, None).context("open")?;
    let admin = Actor {
        name: "bench".into(),
        role: "admin".into(),
    };
    let now = SystemTime::now();
    // 30 % of versions: package upgrades covered by an approved change.
    let change = j.create_change(
        &admin,
        NewChange {
            title: "Patch Tuesday".into(),
            description: String::new(),
            change_type: ChangeType::Normal,
            scope: vec!["class=package".into()],
            window_start: now - Duration::from_secs(3600),
            window_end: now + Duration::from_secs(3600),
            expected: vec![],
            outage_expected: false,
            external_id: None,
            state: None,
        },
    )?;
    j.transition_change(&admin, &change.id, ChangeState::Approved, None)?;
    // A few changes elsewhere, so that the engine looks past non-matching ones.
    for k in 0..20 {
        let c = j.create_change(
            &admin,
            NewChange {
                title: format!("other {k}"),
                description: String::new(),
                change_type: ChangeType::Normal,
                scope: vec![format!("host=db-{k}-*")],
                window_start: now - Duration::from_secs(3600),
                window_end: now + Duration::from_secs(3600),
                expected: vec![],
                outage_expected: false,
                external_id: None,
                state: None,
            },
        )?;
        j.transition_change(&admin, &c.id, ChangeState::Approved, None)?;
    }
    j.create_waiver(
        &admin,
        NewWaiver {
            scope: vec!["class=file key=/etc/motd.d/*".into()],
            attributes: vec![],
            justification: "banner rotates".into(),
            expires_at: now + Duration::from_secs(3600),
        },
    )?;
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut handled = 0;
    loop {
        let k = j.process_feed()?;
        if k == 0 {
            break;
        }
        handled += k;
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu().saturating_sub(cpu0);
    anyhow::ensure!(handled == n, "handled {handled} of {n}");
    let incidents = j
        .incidents(&cmdb_collector::judgment::IncidentQuery {
            limit: 1000,
            ..Default::default()
        })?
        .len();
    let written = *store
        .written
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok((n, elapsed, cpu, incidents, written))
}

/// CPU time (user + system) of the calling thread, from /proc/thread-self/stat (clock
/// ticks: 10 ms resolution, fine for runs of seconds). On a shared machine this is the
/// honest "one core" figure: wall time also counts the time other processes had the core.
fn thread_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_millis(ticks * 10)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let at = SystemTime::now();
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    for run in 0..args.runs {
        let feed = make_feed(args.versions, args.hosts, at);
        let (n, elapsed, cpu, incidents, written) = run_once(feed)?;
        let rate = n as f64 / elapsed.as_secs_f64();
        let cpu_rate = n as f64 / cpu.as_secs_f64().max(0.01);
        println!(
            "run {}: {n} versions in {:.3} s wall ({rate:.0}/s), {:.2} s CPU ({cpu_rate:.0} per CPU-second); {incidents} incidents, {:.1} MB of records",
            run + 1,
            elapsed.as_secs_f64(),
            cpu.as_secs_f64(),
            written as f64 / 1e6
        );
        rates.push(rate);
        cpu_rates.push(cpu_rate);
    }
    rates.sort_by(f64::total_cmp);
    cpu_rates.sort_by(f64::total_cmp);
    println!(
        "median over {} runs: {:.0} versions/s wall, {:.0} versions per CPU-second",
        rates.len(),
        rates[rates.len() / 2],
        cpu_rates[cpu_rates.len() / 2]
    );
    Ok(())
}
