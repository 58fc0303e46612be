//! Configuration audit throughput: the figures behind "audit of 10 000 hosts × 800
//! packages against a register of the same size ≤ 5 s" (docs/BENCHMARKS.md).
//!
//! Two measurements, medians of `--runs` runs:
//! 1. **compute**: the engine ([`Index`] + one [`Observer`] per thread, `--threads`) over a
//!    register of `--hosts` × `--packages` rows (one expected attribute each, hosts named
//!    by hostname, held as a compact [`Register`]) and as many live package CIs, generated
//!    in memory and streamed one by one (never all held; each thread generates the hosts
//!    of its shard). Reported with and without the cost of generating the CIs (a pass that
//!    only generates them, on as many threads), so the audit's own cost is the difference;
//!    wall and process CPU time. Planted: every 1000th host lacks one registered package
//!    (missing), every 500th has one extra (unregistered), every 700th has one version
//!    differing (mismatched); the counts are checked against the result.
//! 2. **store scan**: a full `ConfigAudit::run_audit` against the real sled store holding
//!    `--scan-hosts` × `--packages` package CIs, i.e. store read + decode + audit +
//!    storing the run; reported per CI and extrapolated to the full fleet. The planted
//!    deficiencies and the number of live CIs are checked against each run's result.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use cmdb_bench::{ci, collector_status, host_id, hostname, median, ms, populate, process_cpu};
use cmdb_collector::config_audit::ConfigAudit;
use cmdb_collector::config_audit::engine::{Hosts, Index, Observer};
use cmdb_collector::config_audit::register::{Register, RegisterRow};
use cmdb_collector::judgment::Actor;
use cmdb_collector::store::sled::SledStore;
use cmdb_collector::store::{CiRecord, CiView, Store};
use cmdb_proto::model::{AttrValue, Attrs};
use cmdb_proto::v1;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    #[arg(long, default_value_t = 800)]
    packages: usize,
    /// Hosts written to the sled store for the scan measurement (0: skip it). At least
    /// `--hosts` measures the full size (use `--hosts 1` to skip the compute part then).
    #[arg(long, default_value_t = 100)]
    scan_hosts: usize,
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// sled cache of the store measurement, MiB (the collector's default `cache_bytes` is
    /// 256 MiB).
    #[arg(long, default_value_t = 256)]
    cache_mib: u64,
    /// Observer threads of the compute measurement.
    #[arg(long, default_value_t = cmdb_collector::config_audit::engine::SHARDS)]
    threads: usize,
    /// Directory of the store measurement's sled store (default: a fresh temporary one).
    /// A store this bench wrote there before with the same `--scan-hosts` and `--packages`
    /// is reused as it is (writing 8 M CIs takes ~15 min).
    #[arg(long)]
    store: Option<std::path::PathBuf>,
    /// Keep the store directory afterwards (for a later `--store` run).
    #[arg(long)]
    keep: bool,
}

/// Resident memory of the process now, in MiB (0 where unreadable).
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn key(p: usize) -> String {
    format!("dpkg:pkg-{p:04}:amd64")
}

fn version(h: usize) -> String {
    format!("1.{}.0", h % 4)
}

fn register_rows(hosts: usize, packages: usize) -> impl Iterator<Item = RegisterRow> {
    (0..hosts).flat_map(move |h| {
        let name = hostname(h);
        (0..packages).map(move |p| RegisterRow {
            class: "package".into(),
            key: key(p),
            host: name.clone(),
            attributes: BTreeMap::from([(
                "version".to_owned(),
                serde_json::Value::String(version(h)),
            )]),
        })
    })
}

/// The live package CIs of host `h`: (key, version), with the planted deficiencies.
fn live(h: usize, packages: usize) -> impl Iterator<Item = (String, String)> {
    let skip0 = h.is_multiple_of(1000);
    let extra = h.is_multiple_of(500);
    let differ = h.is_multiple_of(700);
    (0..packages)
        .filter(move |p| !(skip0 && *p == 0))
        .map(move |p| {
            let v = if differ && p == 1 {
                "9.9.9".to_owned()
            } else {
                version(h)
            };
            (key(p), v)
        })
        .chain(extra.then(|| ("dpkg:extra-tool:amd64".to_owned(), version(h))))
}

fn package_ci(host: &str, key: String, v: String) -> CiRecord {
    let mut attrs = Attrs::new();
    attrs.insert("name".into(), AttrValue::Str(key.clone()));
    attrs.insert("version".into(), AttrValue::Str(v));
    attrs.insert("arch".into(), AttrValue::Str("amd64".into()));
    ci(host, "package", key, attrs)
}

fn expected(hosts: usize) -> (u64, u64, u64) {
    let count = |m: usize| (0..hosts).filter(|h| h.is_multiple_of(m)).count() as u64;
    (count(1000), count(500), count(700))
}

/// Host `h`'s snapshot: its live package CIs (with the planted deficiencies) and the dpkg
/// collector.
fn inventory(h: usize, packages: usize) -> (Vec<v1::Item>, Vec<v1::CollectorStatus>) {
    let items: Vec<v1::Item> = live(h, packages)
        .map(|(k, v)| {
            let mut attrs = Attrs::new();
            attrs.insert("version".into(), AttrValue::Str(v));
            v1::Item {
                class: "package".into(),
                key: k,
                attrs: cmdb_proto::convert::attrs_to_proto(&attrs),
            }
        })
        .collect();
    let n = items.len() as u64;
    (items, vec![collector_status("dpkg", "package", n, 1)])
}

/// Generates the live CIs of the hosts of shard `shard` (of `threads`), handing each to `f`.
fn each_ci(
    hosts: usize,
    packages: usize,
    shard: usize,
    threads: usize,
    mut f: impl FnMut(&CiRecord),
) {
    for h in (shard..hosts).step_by(threads.max(1)) {
        let host = host_id(h);
        for (k, v) in live(h, packages) {
            f(&package_ci(&host, k, v));
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runs = args.runs.max(1);
    let threads = args.threads.max(1);
    let n = args.hosts * args.packages;
    println!(
        "audit-bench: {} hosts x {} packages = {n} register rows and live CIs, {runs} runs, \
         {threads} observer threads",
        args.hosts, args.packages
    );
    let rss0 = rss_mib();
    let t = Instant::now();
    let reg = Register::from_rows(register_rows(args.hosts, args.packages));
    println!(
        "  register generated and held compact in {:.1} s: {} rows, RSS +{} MiB",
        t.elapsed().as_secs_f64(),
        reg.len(),
        rss_mib().saturating_sub(rss0)
    );
    let mut hosts = Hosts::default();
    for h in 0..args.hosts {
        hosts.add(&host_id(h), Some(&hostname(h)));
    }
    let (want_missing, want_unreg, want_mismatch) = expected(args.hosts);

    let mut gens = Vec::new();
    let mut audits = Vec::new();
    let mut indexes = Vec::new();
    let mut cpus = Vec::new();
    for run in 0..runs {
        // Generation only.
        let t = Instant::now();
        std::thread::scope(|s| {
            for shard in 0..threads {
                s.spawn(move || {
                    let mut sink = 0usize;
                    each_ci(args.hosts, args.packages, shard, threads, |c| {
                        sink = sink.wrapping_add(c.key.len());
                    });
                    std::hint::black_box(sink);
                });
            }
        });
        let g = t.elapsed();
        // Index + generation + observe + finish.
        let (t, c0) = (Instant::now(), process_cpu());
        let index = Index::new(&reg, &hosts, SystemTime::UNIX_EPOCH);
        let built = t.elapsed();
        let observers: Vec<Observer<'_, '_>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|shard| {
                    let index = &index;
                    s.spawn(move || {
                        let mut o = index.observer();
                        each_ci(args.hosts, args.packages, shard, threads, |c| {
                            o.observe(&CiView::of(c));
                        });
                        o
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let observed = t.elapsed();
        let out = index.finish(observers);
        let d = t.elapsed();
        let used = process_cpu().saturating_sub(c0);
        let s = &out.summary;
        anyhow::ensure!(
            (s.missing, s.unregistered, s.mismatched) == (want_missing, want_unreg, want_mismatch),
            "wrong answer: {s:?}, want missing {want_missing}, unregistered {want_unreg}, \
             mismatched {want_mismatch}"
        );
        println!(
            "  run {run}: audit {:.0} ms (index {:.0} ms, observe incl. generation {:.0} ms, \
             finish {:.0} ms; CPU {:.0} ms) incl. CI generation {:.0} ms => audit alone {:.0} ms; \
             {} deficiencies",
            ms(d),
            ms(built),
            ms(observed.saturating_sub(built)),
            ms(d.saturating_sub(observed)),
            ms(used),
            ms(g),
            ms(d.saturating_sub(g)),
            out.found.len()
        );
        gens.push(g);
        audits.push(d);
        indexes.push(built);
        cpus.push(used);
    }
    let (a, g) = (median(audits), median(gens));
    println!(
        "median: audit {:.0} ms incl. generating the CIs ({:.0} ms), {:.0} ms without; \
         index {:.0} ms; CPU {:.0} ms",
        ms(a),
        ms(g),
        ms(a.saturating_sub(g)),
        ms(median(indexes)),
        ms(median(cpus))
    );
    drop(reg);

    if args.scan_hosts > 0 {
        let dir = args.store.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("audit-bench-{}", std::process::id()))
        });
        // Written whole by this bench for this size (created once the store is complete).
        let marker = dir.join(format!("written-{}x{}", args.scan_hosts, args.packages));
        let reuse = args.store.is_some() && marker.exists();
        if !reuse {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).context("store dir")?;
        let store = Arc::new(SledStore::open(
            &dir.join("store"),
            args.cache_mib * 1024 * 1024,
        )?);
        if reuse {
            println!("  sled: reusing the store in {}", dir.display());
        } else {
            let t = Instant::now();
            populate(store.as_ref(), args.scan_hosts, SystemTime::now(), |h| {
                inventory(h, args.packages)
            })?;
            store.flush()?;
            std::fs::write(&marker, b"").context("store marker")?;
            println!(
                "  sled: {} hosts x {} packages written in {:.1} s",
                args.scan_hosts,
                args.packages,
                t.elapsed().as_secs_f64()
            );
        }
        let svc = ConfigAudit::open(store.clone() as Arc<dyn Store>, None)?;
        let actor = Actor {
            name: "bench".into(),
            role: "admin".into(),
        };
        svc.import(
            &actor,
            Register::from_rows(register_rows(args.scan_hosts, args.packages)),
            SystemTime::now(),
        )?;
        let (scan_missing, scan_unreg, scan_mismatch) = expected(args.scan_hosts);
        let mut scans = Vec::new();
        let mut cis = 0;
        let mut cpus = Vec::new();
        for run in 0..runs {
            let (t, c0) = (Instant::now(), process_cpu());
            let info = svc.run_audit(&actor, Some(0), SystemTime::now())?;
            let d = t.elapsed();
            let used = process_cpu().saturating_sub(c0);
            // The planted deficiencies, and every live CI seen exactly once: a scan that
            // skips or repeats CIs fails the bench.
            let s = &info.summary;
            let want_live = (args.scan_hosts * args.packages) as u64 - scan_missing + scan_unreg;
            anyhow::ensure!(
                (s.missing, s.unregistered, s.mismatched, s.live)
                    == (scan_missing, scan_unreg, scan_mismatch, want_live),
                "wrong answer from the store run: {s:?}, want missing {scan_missing}, \
                 unregistered {scan_unreg}, mismatched {scan_mismatch}, live {want_live}"
            );
            cis = info.summary.live + info.summary.missing;
            println!(
                "  store run {run}: {:.0} ms (CPU {:.0} ms) for {} live CIs ({} deficiencies)",
                ms(d),
                ms(used),
                info.summary.live,
                info.deficiencies_total
            );
            scans.push(d);
            cpus.push(used);
        }
        println!("median: store audit CPU {:.0} ms", ms(median(cpus)));
        let d = median(scans);
        let per = d.as_secs_f64() / cis.max(1) as f64;
        if args.scan_hosts >= args.hosts {
            println!(
                "median: store audit {:.0} ms = {:.2} µs per CI ({cis} CIs, measured at full size)",
                ms(d),
                per * 1e6,
            );
        } else {
            println!(
                "median: store audit {:.0} ms = {:.2} µs per CI => {:.1} s extrapolated to {n} CIs",
                ms(d),
                per * 1e6,
                per * n as f64
            );
        }
        drop(svc);
        drop(store);
        if args.keep {
            println!("  store kept in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}
