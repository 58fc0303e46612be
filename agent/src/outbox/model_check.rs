//! A proptest model check of the outbox. Random sequences of appends (metrics, shutdowns,
//! inventory deltas and snapshots of random sizes), collector deliveries, acks, snapshot
//! requirements taken, orderly reopens and crash reopens run against the real outbox, in an
//! outbox small enough to overflow all the time, next to a simple in-memory model:
//!
//! - the model keeps every appended event and, while nothing overflows, the exact pending
//!   set (appends in, acks out), which must match `read_after` and survive reopening;
//! - the agent's true inventory, from which deltas are made with [`crate::delta::diff`];
//! - a simulated collector that reads with `read_after`, applies with
//!   [`crate::delta::apply`] (content hashes checked), and acks what it applied.
//!
//! Checked after every step: seqs strictly increase and are never reused (also across
//! reopens and crashes); pending events are in seq order above the watermark; the stats
//! match what is pending and `bytes <= max_bytes`; Metrics and Shutdown events come back
//! byte for byte; Shutdown and Gap events are never dropped; metrics are dropped oldest
//! first and every metrics event is pending, acknowledged or counted as dropped; no delta
//! reaches the collector between a Gap and the next snapshot. At the end, after the agent
//! has honoured `take_snapshot_required` and everything was delivered, the collector's
//! inventory equals the agent's: no inventory change was lost.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use cmdb_proto::model::{
    AgentInfo, AttrValue, CollectorReport, CollectorState, HostIdentity, Inventory, Item, SCHEMA,
};
use cmdb_proto::v1;
use proptest::prelude::*;
use prost::Message;

use super::tests::{config, metrics, shutdown};
use super::*;
use crate::delta;

#[derive(Clone, Debug)]
enum Op {
    Metrics(usize),
    Shutdown(usize),
    /// Deltas in a row (an outage), each a list of item mutations: (key index, new value
    /// or removal, padding length).
    Deltas(Vec<Vec<(u8, Option<i64>, usize)>>),
    Snapshot,
    Deliver(usize),
    Ack,
    TakeSnapshotRequired,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..1500).prop_map(Op::Metrics),
        1 => (0usize..120).prop_map(Op::Shutdown),
        4 => mutations().prop_map(|m| Op::Deltas(vec![m])),
        2 => prop::collection::vec(mutations(), 2..16).prop_map(Op::Deltas),
        1 => Just(Op::Snapshot),
        3 => (1usize..8).prop_map(Op::Deliver),
        2 => Just(Op::Ack),
        1 => Just(Op::TakeSnapshotRequired),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<(u8, Option<i64>, usize)>> {
    prop::collection::vec(
        (0u8..32, prop::option::weighted(0.8, 0i64..4), 0usize..150),
        1..5,
    )
}

fn inventory(items: &BTreeMap<u8, (i64, usize)>) -> Inventory {
    Inventory {
        schema: SCHEMA.into(),
        collected_at: UNIX_EPOCH,
        agent: AgentInfo {
            version: "0.1.0".into(),
            instance_id: "i".into(),
        },
        host: HostIdentity::default(),
        collectors: vec![CollectorReport {
            name: "dpkg".into(),
            status: CollectorState::Ok,
            duration_ms: 1,
            items: items.len() as u64,
            message: None,
            classes: vec!["package".into()],
        }],
        items: items
            .iter()
            .map(|(k, (v, pad))| {
                Item::new("package", format!("dpkg:pkg{k}:amd64"))
                    .with("version", *v)
                    .with("description", AttrValue::Str("d".repeat(*pad)))
            })
            .collect(),
        relations: Vec::new(),
    }
}

struct Collector {
    state: Inventory,
    applied: u64,
    /// A Gap arrived; only a snapshot may follow for inventory.
    stale: bool,
}

impl Collector {
    fn receive(&mut self, e: &v1::Event) -> Result<(), TestCaseError> {
        prop_assert!(
            e.seq > self.applied,
            "seq {} at or below {}",
            e.seq,
            self.applied
        );
        self.applied = e.seq;
        match &e.kind {
            Some(v1::event::Kind::Snapshot(s)) => {
                let inv = Inventory::try_from(s.inventory.as_ref().unwrap()).unwrap();
                prop_assert_eq!(s.content_hash.clone(), inv.content_hash().to_vec());
                self.state = inv;
                self.stale = false;
            }
            Some(v1::event::Kind::Delta(d)) => {
                prop_assert!(
                    !self.stale,
                    "a delta (seq {}) between a Gap and a snapshot",
                    e.seq
                );
                match delta::apply(&self.state, d) {
                    Ok(inv) => self.state = inv,
                    Err(err) => prop_assert!(false, "delta seq {} does not apply: {}", e.seq, err),
                }
            }
            Some(v1::event::Kind::Gap(_)) => self.stale = true,
            _ => {}
        }
        Ok(())
    }
}

struct Harness {
    root: PathBuf,
    dir: PathBuf,
    max_bytes: u64,
    outbox: Option<Outbox>,
    /// Every event stored or dropped, by seq, as appended (encoded with its seq).
    appended: BTreeMap<u64, (Kind, Vec<u8>)>,
    /// The highest seq ever handed out.
    high: u64,
    /// The exact pending set while no overflow happened; resynced after one.
    pending: BTreeMap<u64, Vec<u8>>,
    acked_metrics: BTreeSet<u64>,
    gaps_seen: BTreeSet<u64>,
    truth: BTreeMap<u8, (i64, usize)>,
    collector: Collector,
    crashes: u32,
}

impl Harness {
    fn new(root: &Path, max_bytes: u64) -> Self {
        let dir = root.join("outbox");
        let outbox = Outbox::open(config(&dir, max_bytes)).unwrap().outbox;
        Harness {
            root: root.to_owned(),
            dir,
            max_bytes,
            outbox: Some(outbox),
            appended: BTreeMap::new(),
            high: 0,
            pending: BTreeMap::new(),
            acked_metrics: BTreeSet::new(),
            gaps_seen: BTreeSet::new(),
            truth: BTreeMap::new(),
            collector: Collector {
                state: inventory(&BTreeMap::new()),
                applied: 0,
                stale: false,
            },
            crashes: 0,
        }
    }

    fn outbox(&self) -> &Outbox {
        self.outbox.as_ref().unwrap()
    }

    fn pending_now(&self) -> Vec<v1::Event> {
        self.outbox()
            .read_after(self.outbox().acked_seq(), usize::MAX, usize::MAX)
            .unwrap()
    }

    fn append(&mut self, mut event: v1::Event) -> Result<(), TestCaseError> {
        let kind = Kind::of(&event).unwrap();
        let before = self.outbox().stats();
        let result = self.outbox().append(event.clone());
        let after = self.outbox().stats();
        let seq = match result {
            Ok(seq) => seq,
            Err(OutboxError::Full { .. }) => {
                prop_assert!(kind != Kind::Metrics && kind != Kind::Delta);
                self.resync();
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("append failed: {e}"))),
        };
        prop_assert!(seq > self.high, "seq {} not above {}", seq, self.high);
        self.high = self.outbox().last_seq();
        prop_assert!(self.high >= seq);
        event.seq = seq;
        let bytes = event.encode_to_vec();
        self.appended.insert(seq, (kind, bytes.clone()));
        let quiet = before.dropped_metrics == after.dropped_metrics
            && before.compacted_changes == after.compacted_changes
            && before.dropped_inventory_events == after.dropped_inventory_events
            && before.gaps == after.gaps;
        if quiet {
            self.pending.insert(seq, bytes);
        } else {
            self.resync();
        }
        Ok(())
    }

    fn resync(&mut self) {
        self.pending = self
            .pending_now()
            .into_iter()
            .map(|e| (e.seq, e.encode_to_vec()))
            .collect();
    }

    fn deliver(&mut self, n: usize) -> Result<(), TestCaseError> {
        let events = self
            .outbox()
            .read_after(self.collector.applied, n, 64 << 10)
            .unwrap();
        for e in &events {
            self.collector.receive(e)?;
        }
        Ok(())
    }

    fn ack(&mut self) {
        let up_to = self.collector.applied;
        for e in self.pending_now() {
            if e.seq <= up_to && matches!(e.kind, Some(v1::event::Kind::Metrics(_))) {
                self.acked_metrics.insert(e.seq);
            }
        }
        self.outbox().ack(up_to).unwrap();
        let watermark = up_to.max(self.outbox().acked_seq());
        self.pending.retain(|seq, _| *seq > watermark);
    }

    fn snapshot(&mut self) -> Result<(), TestCaseError> {
        let snap = delta::snapshot(&inventory(&self.truth));
        self.append(v1::Event {
            seq: 0,
            observed_at: None,
            kind: Some(v1::event::Kind::Snapshot(snap)),
        })
    }

    fn reopen(&mut self, crash: bool) -> Result<(), TestCaseError> {
        let before_pending = self.pending_now();
        let before_stats = self.outbox().stats();
        let before_acked = self.outbox().acked_seq();
        if crash {
            // The files as a crash right after the last flush leaves them: copied while open.
            self.crashes += 1;
            let copy = self.root.join(format!("crash-{}", self.crashes));
            copy_dir(&self.dir, &copy);
            let side = seqfile::path_for(&self.dir).unwrap();
            let side_copy = self.root.join(format!("crash-{}.seq", self.crashes));
            fs::copy(&side, &side_copy).unwrap();
            self.outbox = None;
            fs::remove_dir_all(&self.dir).unwrap();
            fs::rename(&copy, &self.dir).unwrap();
            fs::rename(&side_copy, &side).unwrap();
        } else {
            self.outbox = None;
        }
        let opened = super::tests::open_retrying(config(&self.dir, self.max_bytes));
        prop_assert!(opened.moved_aside.is_none());
        self.outbox = Some(opened.outbox);
        prop_assert_eq!(self.pending_now(), before_pending);
        prop_assert_eq!(self.outbox().stats(), before_stats);
        prop_assert_eq!(self.outbox().acked_seq(), before_acked);
        prop_assert!(self.outbox().last_seq() >= self.high);
        if !crash {
            prop_assert_eq!(
                self.outbox().last_seq(),
                self.high,
                "an orderly close continues exactly"
            );
        }
        // After a crash the reserved block is skipped.
        self.high = self.outbox().last_seq();
        Ok(())
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let outbox = self.outbox();
        let stats = outbox.stats();
        let acked = outbox.acked_seq();
        let pending = self.pending_now();
        prop_assert!(
            stats.bytes <= self.max_bytes,
            "{} > {}",
            stats.bytes,
            self.max_bytes
        );
        prop_assert_eq!(stats.events, pending.len() as u64);
        let bytes: u64 = pending
            .iter()
            .map(|e| txn::accounted(e.encoded_len()))
            .sum();
        prop_assert_eq!(stats.bytes, bytes);
        prop_assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        prop_assert!(
            pending
                .iter()
                .all(|e| e.seq > acked && e.seq <= outbox.last_seq())
        );

        let present: BTreeMap<u64, &v1::Event> = pending.iter().map(|e| (e.seq, e)).collect();
        let model: Vec<u64> = self.pending.keys().copied().collect();
        prop_assert_eq!(
            present.keys().copied().collect::<Vec<_>>(),
            model,
            "pending set differs from the model"
        );
        for e in &pending {
            match &e.kind {
                Some(v1::event::Kind::Metrics(_)) | Some(v1::event::Kind::Shutdown(_)) => {
                    let original = &self.appended.get(&e.seq).unwrap().1;
                    prop_assert_eq!(&e.encode_to_vec(), original, "seq {} was altered", e.seq);
                }
                Some(v1::event::Kind::Gap(_)) => {
                    self.gaps_seen.insert(e.seq);
                }
                _ => {}
            }
        }
        // Never dropped: every shutdown and gap above the watermark is still there.
        for (seq, (kind, _)) in self.appended.range(acked + 1..) {
            if *kind == Kind::Shutdown {
                prop_assert!(present.contains_key(seq), "shutdown {} dropped", seq);
            }
        }
        for seq in self.gaps_seen.range(acked + 1..) {
            prop_assert!(present.contains_key(seq), "gap {} dropped", seq);
        }
        // Metrics: oldest first, and each one pending, acknowledged or counted.
        let metrics: Vec<u64> = self
            .appended
            .iter()
            .filter(|(_, (k, _))| *k == Kind::Metrics)
            .map(|(s, _)| *s)
            .collect();
        let present_metrics: Vec<u64> = metrics
            .iter()
            .copied()
            .filter(|s| present.contains_key(s))
            .collect();
        if let Some(oldest) = present_metrics.first() {
            let newer: Vec<u64> = metrics.iter().copied().filter(|s| s >= oldest).collect();
            prop_assert_eq!(
                &present_metrics,
                &newer,
                "a newer metrics event was dropped before an older one"
            );
        }
        prop_assert_eq!(
            metrics.len() as u64,
            present_metrics.len() as u64 + self.acked_metrics.len() as u64 + stats.dropped_metrics
        );
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Metrics(size) => self.append(metrics(*size))?,
            Op::Shutdown(size) => self.append(shutdown(&"s".repeat(*size)))?,
            Op::Deltas(deltas) => {
                for mutations in deltas {
                    let base = inventory(&self.truth);
                    for (k, v, pad) in mutations {
                        match v {
                            Some(v) => {
                                self.truth.insert(*k, (*v, *pad));
                            }
                            None => {
                                self.truth.remove(k);
                            }
                        }
                    }
                    let r = delta::diff(base, inventory(&self.truth));
                    if let Some(d) = r.delta {
                        self.append(v1::Event {
                            seq: 0,
                            observed_at: None,
                            kind: Some(v1::event::Kind::Delta(d)),
                        })?;
                        self.check()?;
                    }
                }
            }
            Op::Snapshot => self.snapshot()?,
            Op::Deliver(n) => self.deliver(*n)?,
            Op::Ack => self.ack(),
            Op::TakeSnapshotRequired => {
                if self.outbox().take_snapshot_required() {
                    self.snapshot()?;
                }
            }
            Op::Reopen => self.reopen(false)?,
            Op::Crash => self.reopen(true)?,
        }
        self.check()
    }

    /// Delivers and acknowledges everything, honours a snapshot requirement, and compares.
    fn converge(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..3 {
            for _ in 0..10_000 {
                let before = self.collector.applied;
                self.deliver(64)?;
                self.ack();
                if self.collector.applied == before {
                    break;
                }
            }
            if !self.outbox().take_snapshot_required() {
                break;
            }
            self.snapshot()?;
        }
        self.check()?;
        prop_assert_eq!(self.outbox().stats().events, 0);
        let mut got = self.collector.state.clone();
        got.canonicalize();
        let mut want = inventory(&self.truth);
        want.canonicalize();
        prop_assert_eq!(
            got.items,
            want.items,
            "the collector's inventory differs from the agent's"
        );
        Ok(())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn outbox_matches_its_model(
        max_bytes in prop::sample::select(vec![8 << 10, 12 << 10, 16 << 10, 64 << 10]),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = Harness::new(tmp.path(), max_bytes);
        for op in &ops {
            h.run(op)?;
        }
        h.converge()?;
    }
}
