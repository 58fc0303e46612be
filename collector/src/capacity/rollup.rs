//! The roll-up tiers: 1-minute metric windows (the store's [`MetricRecord`]s, pruned by
//! `store.metrics_retention`) → 1-hour points → 1-day points, persisted as record
//! collections.
//!
//! On-disk layout: the hour tier is collection [`C_HOUR`], one record per (host, UTC day)
//! holding every resource's ≤ 24 hourly points; the day tier is [`C_DAY`], one record per
//! (host, 30-day block aligned on the epoch) holding ≤ 30 daily points per resource. Ids are
//! `<block start, 12 decimal digits>/<host id>`, so blocks sort by time first: retention
//! deletes from the front of the collection, and a host's range is a handful of point
//! lookups.
//!
//! Promises: rolling up `[from, to)` (hour-aligned) recomputes every hour point in that
//! range from the minute windows, replacing what was there, and every day point of the
//! complete days it touches from that day's hour points. Re-rolling a range is therefore
//! idempotent: a pass interrupted by a crash is simply redone, nothing is counted twice.
//! A host's writes are never split across [`Store::write_records`] calls (several hosts may
//! share one); the caller advances its durable watermark only after every host is done.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::series::{Acc, Point, resource_of};
use crate::store::{MetricRecord, RecordOp, Store, StoreError};

/// Hour-tier records: one per (host, UTC day).
pub const C_HOUR: &str = "capacity_hour";
/// Day-tier records: one per (host, 30-day block).
pub const C_DAY: &str = "capacity_day";

pub const HOUR: u64 = 3600;
pub const DAY: u64 = 86_400;
/// Span of one hour-tier record.
pub const HOUR_BLOCK: u64 = DAY;
/// Span of one day-tier record.
pub const DAY_BLOCK: u64 = 30 * DAY;
/// Resources one block keeps at most (the agent sends at most 256 series).
pub const MAX_RESOURCES: usize = 512;
/// Records retention deletes per write.
const PRUNE_BATCH: usize = 1000;

/// A tier of roll-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Minute,
    Hour,
    Day,
}

impl Tier {
    pub fn parse(s: &str) -> Result<Tier, String> {
        match s {
            "minute" => Ok(Tier::Minute),
            "hour" => Ok(Tier::Hour),
            "day" => Ok(Tier::Day),
            _ => Err(format!("{s:?} is not minute, hour or day")),
        }
    }

    fn collection(self) -> Option<(&'static str, u64)> {
        match self {
            Tier::Minute => None,
            Tier::Hour => Some((C_HOUR, HOUR_BLOCK)),
            Tier::Day => Some((C_DAY, DAY_BLOCK)),
        }
    }
}

/// resource id → points.
type Series = BTreeMap<String, Vec<Point>>;

/// One stored block of one tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub host_id: String,
    pub start: u64,
    /// resource id → points, in time order.
    pub series: BTreeMap<String, Vec<Point>>,
}

pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn floor(t: u64, step: u64) -> u64 {
    t - t % step
}

fn block_id(start: u64, host: &str) -> String {
    format!("{start:012}/{host}")
}

fn corrupt(id: &str, e: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: id.to_owned(),
        reason: e.to_string(),
    }
}

fn load(
    store: &dyn Store,
    collection: &str,
    start: u64,
    host: &str,
) -> Result<Option<Block>, StoreError> {
    let id = block_id(start, host);
    match store.record(collection, &id)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| corrupt(&id, &e)),
    }
}

fn put(collection: &'static str, b: &Block) -> Result<RecordOp, StoreError> {
    let id = block_id(b.start, &b.host_id);
    if b.series.is_empty() {
        return Ok(RecordOp::Delete { collection, id });
    }
    let value = serde_json::to_vec(b).map_err(|e| corrupt(&id, &e))?;
    Ok(RecordOp::Put {
        collection,
        id,
        value,
    })
}

/// Replaces, in `block`, every point with `t` in `[from, to)` by the points of `fresh`
/// (resource → points, all within the range).
fn splice(block: &mut Block, from: u64, to: u64, fresh: &BTreeMap<String, Vec<Point>>) {
    for pts in block.series.values_mut() {
        pts.retain(|p| p.t < from || p.t >= to);
    }
    for (r, pts) in fresh {
        if !block.series.contains_key(r) && block.series.len() >= MAX_RESOURCES {
            continue;
        }
        let s = block.series.entry(r.clone()).or_default();
        s.extend(pts.iter().copied());
        s.sort_by_key(|p| p.t);
    }
    block.series.retain(|_, v| !v.is_empty());
}

/// Hour points of `[from, to)` from minute windows: resource → points.
pub fn hour_points(recs: &[MetricRecord]) -> BTreeMap<String, Vec<Point>> {
    let mut accs: BTreeMap<(String, u64), Acc> = BTreeMap::new();
    for rec in recs {
        let hour = floor(secs(rec.window_start), HOUR);
        for s in &rec.summaries {
            let Some(r) = resource_of(s) else { continue };
            accs.entry((r, hour)).or_default().add(
                s.min,
                s.avg,
                s.max,
                s.p95,
                u64::from(s.samples),
            );
        }
    }
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for ((r, hour), mut acc) in accs {
        if let Some(p) = acc.point(hour) {
            out.entry(r).or_default().push(p);
        }
    }
    out
}

/// Rolls up `[from, to)` (hour-aligned seconds) of one host and writes the result (one
/// atomic write); see the module doc. Returns the minute windows read.
pub fn rollup_host(store: &dyn Store, host: &str, from: u64, to: u64) -> Result<usize, StoreError> {
    let (n, ops) = rollup_host_ops(store, host, from, to)?;
    if !ops.is_empty() {
        store.write_records(&ops)?;
    }
    Ok(n)
}

/// [`rollup_host`] without the write: the minute windows read and the record writes that
/// bring the host's blocks up to date (callers batch several hosts into one write; the
/// blocks of different hosts never overlap).
pub fn rollup_host_ops(
    store: &dyn Store,
    host: &str,
    from: u64,
    to: u64,
) -> Result<(usize, Vec<RecordOp>), StoreError> {
    if to <= from {
        return Ok((0, Vec::new()));
    }
    let recs = store.metrics(host, time(from), time(to))?;
    let fresh = hour_points(&recs);
    let mut ops = Vec::new();
    // Hour tier: every day block the range touches.
    let mut hour_blocks = BTreeMap::new();
    let mut b = floor(from, HOUR_BLOCK);
    while b < to {
        let mut block = load(store, C_HOUR, b, host)?.unwrap_or_else(|| Block {
            host_id: host.to_owned(),
            start: b,
            series: BTreeMap::new(),
        });
        let lo = from.max(b);
        let hi = to.min(b + HOUR_BLOCK);
        let part: BTreeMap<String, Vec<Point>> = fresh
            .iter()
            .map(|(r, pts)| {
                let v: Vec<Point> = pts
                    .iter()
                    .filter(|p| p.t >= lo && p.t < hi)
                    .copied()
                    .collect();
                (r.clone(), v)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let before = block.clone();
        splice(&mut block, lo, hi, &part);
        if block != before {
            ops.push(put(C_HOUR, &block)?);
        }
        hour_blocks.insert(b, block);
        b += HOUR_BLOCK;
    }
    // Day tier: the complete days among those blocks, from their hour points.
    let mut by_day_block: BTreeMap<u64, (BTreeSet<u64>, Series)> = BTreeMap::new();
    for (day, block) in &hour_blocks {
        if day + DAY > to {
            continue;
        }
        let entry = by_day_block.entry(floor(*day, DAY_BLOCK)).or_default();
        entry.0.insert(*day);
        for (r, pts) in &block.series {
            let mut acc = Acc::default();
            for p in pts {
                acc.add_point(p);
            }
            if let Some(p) = acc.point(*day) {
                entry.1.entry(r.clone()).or_default().push(p);
            }
        }
    }
    for (db, (days, fresh)) in by_day_block {
        let mut block = load(store, C_DAY, db, host)?.unwrap_or_else(|| Block {
            host_id: host.to_owned(),
            start: db,
            series: BTreeMap::new(),
        });
        let before = block.clone();
        for pts in block.series.values_mut() {
            pts.retain(|p| !days.contains(&p.t));
        }
        splice(&mut block, 0, 0, &fresh);
        if block != before {
            ops.push(put(C_DAY, &block)?);
        }
    }
    Ok((recs.len(), ops))
}

/// Points of one host and tier in `[from, to)`: resource → points (the minute tier reads
/// the stored windows). At most `max_blocks` blocks are read.
pub fn read(
    store: &dyn Store,
    host: &str,
    tier: Tier,
    from: u64,
    to: u64,
) -> Result<BTreeMap<String, Vec<Point>>, StoreError> {
    let Some((collection, span)) = tier.collection() else {
        let recs = store.metrics(host, time(from), time(to))?;
        let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for rec in &recs {
            let t = secs(rec.window_start);
            for s in &rec.summaries {
                let Some(r) = resource_of(s) else { continue };
                out.entry(r).or_default().push(Point {
                    t,
                    min: s.min,
                    avg: s.avg,
                    max: s.max,
                    p95: s.p95,
                    n: u64::from(s.samples),
                });
            }
        }
        return Ok(out);
    };
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut b = floor(from, span);
    while b < to {
        if let Some(block) = load(store, collection, b, host)? {
            for (r, pts) in block.series {
                out.entry(r)
                    .or_default()
                    .extend(pts.into_iter().filter(|p| p.t >= from && p.t < to));
            }
        }
        b += span;
    }
    out.retain(|_, v| !v.is_empty());
    Ok(out)
}

/// Deletes the blocks of `tier` that end at or before `before` (seconds). Returns how many.
pub fn prune(store: &dyn Store, tier: Tier, before: u64) -> Result<u64, StoreError> {
    let Some((collection, span)) = tier.collection() else {
        return Ok(0);
    };
    let mut deleted = 0;
    loop {
        let page = store.records(collection, None, PRUNE_BATCH)?;
        let ops: Vec<RecordOp> = page
            .iter()
            .take_while(|(id, _)| {
                id.get(..12)
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|start| start + span <= before)
            })
            .map(|(id, _)| RecordOp::Delete {
                collection,
                id: id.clone(),
            })
            .collect();
        if ops.is_empty() {
            return Ok(deleted);
        }
        store.write_records(&ops)?;
        deleted += ops.len() as u64;
        if ops.len() < page.len() {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::capacity::fake_store::FakeStore as MemoryStore;
    use crate::store::MetricSummary;

    const T0: u64 = 1_800_000_000 - 1_800_000_000 % DAY;

    fn window(host: &str, t: u64, used: f64) -> MetricRecord {
        MetricRecord {
            host_id: host.into(),
            window_start: time(t),
            window_seconds: 60,
            summaries: vec![MetricSummary {
                name: "filesystem.used_bytes".into(),
                labels: [("mount".to_owned(), "/".to_owned())].into_iter().collect(),
                min: used,
                avg: used,
                max: used,
                p95: used,
                samples: 4,
            }],
        }
    }

    #[test]
    fn minutes_roll_up_to_hours_and_days_idempotently() {
        let store = MemoryStore::default();
        // Two days of minutes: value = minute index.
        let recs: Vec<MetricRecord> = (0..2 * 1440)
            .map(|i| window("h1", T0 + i * 60, i as f64))
            .collect();
        store.put_metrics(&recs);
        let n = rollup_host(&store, "h1", T0, T0 + 2 * DAY).unwrap();
        assert_eq!(n, 2880);
        let hours = read(&store, "h1", Tier::Hour, T0, T0 + 2 * DAY).unwrap();
        let fs = &hours["filesystem:/"];
        assert_eq!(fs.len(), 48);
        assert_eq!(fs[1].t, T0 + HOUR);
        assert_eq!(fs[1].min, 60.0);
        assert_eq!(fs[1].max, 119.0);
        assert!((fs[1].avg - 89.5).abs() < 1e-9);
        assert_eq!(fs[1].n, 240);
        let days = read(&store, "h1", Tier::Day, T0, T0 + 2 * DAY).unwrap();
        let d = &days["filesystem:/"];
        assert_eq!(d.len(), 2);
        assert!((d[0].avg - 719.5).abs() < 1e-9);
        assert_eq!(d[1].max, 2879.0);
        // Re-rolling a range (a restart before the watermark moved) changes nothing.
        rollup_host(&store, "h1", T0 + 3 * HOUR, T0 + 2 * DAY).unwrap();
        assert_eq!(
            read(&store, "h1", Tier::Hour, T0, T0 + 2 * DAY).unwrap(),
            hours
        );
        assert_eq!(
            read(&store, "h1", Tier::Day, T0, T0 + 2 * DAY).unwrap(),
            days
        );
        // Retention drops whole blocks.
        assert_eq!(prune(&store, Tier::Hour, T0 + DAY).unwrap(), 1);
        let left = read(&store, "h1", Tier::Hour, T0, T0 + 2 * DAY).unwrap();
        assert_eq!(left["filesystem:/"].len(), 24);
        assert_eq!(prune(&store, Tier::Day, T0 + DAY).unwrap(), 0);
    }

    #[test]
    fn a_partial_range_keeps_the_other_hours_and_skips_incomplete_days() {
        let store = MemoryStore::default();
        let recs: Vec<MetricRecord> = (0..600).map(|i| window("h1", T0 + i * 60, 1.0)).collect();
        store.put_metrics(&recs);
        rollup_host(&store, "h1", T0, T0 + 5 * HOUR).unwrap();
        rollup_host(&store, "h1", T0 + 5 * HOUR, T0 + 10 * HOUR).unwrap();
        let hours = read(&store, "h1", Tier::Hour, T0, T0 + DAY).unwrap();
        assert_eq!(hours["filesystem:/"].len(), 10);
        assert!(
            read(&store, "h1", Tier::Day, T0, T0 + DAY)
                .unwrap()
                .is_empty()
        );
    }
}
