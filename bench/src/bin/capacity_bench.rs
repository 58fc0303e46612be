//! Capacity: the forecast pass and the roll-up, on synthetic fleets held in memory.
//!
//! 1. **Forecasts** (the target: 10 000 hosts × 10 resources over 30 days of hourly points
//!    in ≤ 2 s): `capacity::forecast_series` — the exact function the collector's pass runs
//!    per (host, resource): binned Theil–Sen fit, confidence, threshold crossing — over
//!    `--hosts × --resources` series of `--points` hourly points. Series are drawn from
//!    `--templates` distinct shapes (growth + noise + outliers, some flat, some full) so
//!    that memory stays small while the working set (≈ templates × points × 48 bytes) is
//!    far larger than the caches. Timed with 1 thread and with `--threads`.
//! 2. **Roll-up**: `capacity::rollup::rollup_host` for one completed hour of 1-minute
//!    windows (60 windows × `--resources` series) for `--rollup-hosts` hosts, through an
//!    in-memory record store (so block JSON encode/decode is included, sled's I/O is not).
//! 3. **Forecast with reads**: `capacity::forecast_host` (hour blocks decoded from the
//!    record store + capacities + fits) for `--read-hosts` hosts with `--points` hours of
//!    history, to show what the stored-block decoding adds per host.
//!
//! `capacity-bench --runs 5` prints each run and the medians.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use cmdb_bench::{MemStore, host_id, median_f64, thread_cpu_secs};
use cmdb_collector::capacity::forecast::Scratch;
use cmdb_collector::capacity::rollup::{self, HOUR};
use cmdb_collector::capacity::series::{Kind, Point};
use cmdb_collector::capacity::{self, CapacitySettings, HostRef, Status};
use cmdb_collector::store::{MetricRecord, MetricSummary, RecordOp, Store};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    #[arg(long, default_value_t = 10)]
    resources: usize,
    /// Hourly points per series (720 = 30 days).
    #[arg(long, default_value_t = 720)]
    points: usize,
    /// Distinct series shapes.
    #[arg(long, default_value_t = 2000)]
    templates: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 10_000)]
    rollup_hosts: usize,
    #[arg(long, default_value_t = 200)]
    read_hosts: usize,
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
}

const T0: u64 = 1_800_000_000 - 1_800_000_000 % 86_400;

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Series shape `i`: level, growth per hour, noise, 5 % outliers for a third of them.
fn template(i: usize, points: usize) -> Vec<Point> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    let level = 20.0 + 50.0 * r.next();
    let growth = if i.is_multiple_of(4) {
        0.0
    } else {
        0.05 * r.next()
    };
    let noise = 5.0 * r.next();
    (0..points)
        .map(|k| {
            let mut v = level + growth * k as f64 + noise * (r.next() - 0.5);
            if i.is_multiple_of(3) && r.next() < 0.05 {
                v *= 3.0;
            }
            Point {
                t: T0 + k as u64 * HOUR,
                min: v,
                avg: v,
                max: v,
                p95: v,
                n: 240,
            }
        })
        .collect()
}

const KINDS: [Kind; 5] = [
    Kind::Filesystem,
    Kind::Memory,
    Kind::Cpu,
    Kind::Swap,
    Kind::Interface,
];

/// Forecasts series `range` of the fleet; returns (series, at risk).
fn forecast_range(
    settings: &CapacitySettings,
    templates: &[Vec<Point>],
    range: std::ops::Range<usize>,
    now: u64,
) -> (usize, usize) {
    let mut scratch = Scratch::default();
    let mut xy = Vec::new();
    let mut at_risk = 0;
    let n = range.len();
    for s in range {
        let pts = &templates[s % templates.len()];
        let kind = KINDS[s % KINDS.len()];
        let (status, ..) =
            capacity::forecast_series(settings, kind, pts, Some(100.0), now, &mut scratch, &mut xy);
        if status == Status::AtRisk {
            at_risk += 1;
        }
    }
    (n, at_risk)
}

/// The forecasts on this thread: (wall, CPU seconds, at risk).
fn forecasts_here(args: &Args, templates: &[Vec<Point>]) -> (Duration, f64, usize) {
    let settings = CapacitySettings::default();
    let total = args.hosts * args.resources;
    let now = T0 + args.points as u64 * HOUR;
    // Thread CPU time, so other processes on a shared core do not count.
    let cpu = thread_cpu_secs();
    let t = Instant::now();
    let (_, risky) = forecast_range(&settings, templates, 0..total, now);
    (t.elapsed(), thread_cpu_secs() - cpu, risky)
}

fn forecasts(args: &Args, templates: &[Vec<Point>], threads: usize) -> (Duration, usize) {
    let settings = CapacitySettings::default();
    let total = args.hosts * args.resources;
    let now = T0 + args.points as u64 * HOUR;
    let t = Instant::now();
    let threads = threads.max(1);
    let at_risk = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let range = (k * total / threads)..((k + 1) * total / threads);
                let settings = &settings;
                sc.spawn(move || forecast_range(settings, templates, range, now).1)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum::<usize>()
    });
    (t.elapsed(), at_risk)
}

fn summaries(resources: usize, v: f64) -> Vec<MetricSummary> {
    (0..resources)
        .map(|r| MetricSummary {
            name: "filesystem.used_bytes".into(),
            labels: [("mount".to_owned(), format!("/m{r}"))]
                .into_iter()
                .collect(),
            min: v,
            avg: v,
            max: v,
            p95: v,
            samples: 4,
        })
        .collect()
}

/// One hour of windows for `hosts` hosts.
fn minute_store(hosts: usize, resources: usize, hour: u64) -> MemStore {
    let windows = (0..hosts)
        .map(|h| {
            let host = host_id(h);
            let w = (0..60)
                .map(|m| MetricRecord {
                    host_id: host.clone(),
                    window_start: rollup::time(hour + m * 60),
                    window_seconds: 60,
                    summaries: summaries(resources, (h + m as usize) as f64),
                })
                .collect();
            (host, w)
        })
        .collect();
    MemStore::with_windows(windows)
}

fn rollup_hour(store: &MemStore, hour: u64) -> Result<Duration> {
    let mut hosts: Vec<&str> = store.window_hosts().collect();
    hosts.sort();
    let t = Instant::now();
    for h in hosts {
        rollup::rollup_host(store, h, hour, hour + HOUR)?;
    }
    Ok(t.elapsed())
}

/// A store whose hour tier holds `points` hours of every resource for `hosts` hosts.
fn history_store(args: &Args, templates: &[Vec<Point>]) -> Result<(MemStore, Vec<HostRef>)> {
    let store = MemStore::default();
    let mut refs = Vec::new();
    for h in 0..args.read_hosts {
        let host = host_id(h);
        let mut ops = Vec::new();
        let days = args.points.div_ceil(24);
        for d in 0..days {
            let start = T0 + d as u64 * 86_400;
            let mut series = std::collections::BTreeMap::new();
            for r in 0..args.resources {
                let pts: Vec<Point> = templates[(h * args.resources + r) % templates.len()]
                    .iter()
                    .filter(|p| p.t >= start && p.t < start + 86_400)
                    .copied()
                    .collect();
                series.insert(format!("filesystem:/m{r}"), pts);
            }
            let block = rollup::Block {
                host_id: host.clone(),
                start,
                series,
            };
            ops.push(RecordOp::Put {
                collection: rollup::C_HOUR,
                id: format!("{start:012}/{host}"),
                value: serde_json::to_vec(&block)?,
            });
        }
        store.write_records(&ops)?;
        refs.push(HostRef {
            host_id: host,
            hostname: None,
        });
    }
    Ok((store, refs))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let templates: Vec<Vec<Point>> = (0..args.templates)
        .map(|i| template(i, args.points))
        .collect();
    let series = args.hosts * args.resources;
    eprintln!(
        "forecasts: {} hosts × {} resources = {series} series of {} hourly points",
        args.hosts, args.resources, args.points
    );
    let (mut one, mut cpu, mut many) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let (d1, c1, risky) = forecasts_here(&args, &templates);
        let (dn, _) = forecasts(&args, &templates, args.threads);
        eprintln!(
            "run {run}: 1 thread {:.3} s ({c1:.2} CPU s), {} threads {:.3} s ({risky} at risk)",
            d1.as_secs_f64(),
            args.threads,
            dn.as_secs_f64()
        );
        one.push(d1.as_secs_f64());
        cpu.push(c1);
        many.push(dn.as_secs_f64());
    }
    let (m1, mc, mn) = (
        median_f64(&mut one),
        median_f64(&mut cpu),
        median_f64(&mut many),
    );
    println!(
        "| forecasts, {series} series × {} points, 1 thread | {m1:.3} s wall, {mc:.2} CPU s | {:.1} µs/series (CPU) |",
        args.points,
        mc * 1e6 / series as f64
    );
    println!(
        "| forecasts, {series} series × {} points, {} threads | {mn:.3} s | |",
        args.points, args.threads
    );

    // Roll-up of one hour.
    let hour = T0 + 10 * 86_400 + 5 * HOUR;
    let store = minute_store(args.rollup_hosts, args.resources, hour);
    let mut r = Vec::new();
    for run in 0..args.runs {
        let d = rollup_hour(&store, hour)?;
        eprintln!(
            "run {run}: roll-up of one hour, {} hosts: {:.3} s",
            args.rollup_hosts,
            d.as_secs_f64()
        );
        r.push(d.as_secs_f64());
    }
    let mr = median_f64(&mut r);
    println!(
        "| roll-up of 1 hour (60 windows × {} series) for {} hosts, 1 thread | {mr:.3} s | {:.0} µs/host |",
        args.resources,
        args.rollup_hosts,
        mr * 1e6 / args.rollup_hosts as f64
    );

    // Forecasts including the hour-block reads.
    let (store, refs) = history_store(&args, &templates)?;
    let settings = CapacitySettings::default();
    let now = T0 + args.points as u64 * HOUR;
    let mut f = Vec::new();
    for run in 0..args.runs {
        let t = Instant::now();
        let mut n = 0;
        for h in &refs {
            n += capacity::forecast_host(&store, &settings, h, now)?.len();
        }
        let d = t.elapsed().as_secs_f64();
        eprintln!(
            "run {run}: forecast_host with reads, {} hosts ({n} forecasts): {d:.3} s",
            refs.len()
        );
        f.push(d);
    }
    let mf = median_f64(&mut f);
    println!(
        "| forecast_host incl. decoding {} days of hour blocks, {} hosts, 1 thread | {mf:.3} s | {:.2} ms/host |",
        args.points.div_ceil(24),
        refs.len(),
        mf * 1e3 / refs.len() as f64
    );
    Ok(())
}
