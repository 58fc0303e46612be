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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use cmdb_bench::{MemStore, attrs, host_id, median_f64, str_attr as s, thread_cpu};
use cmdb_collector::changes::{ChangeState, ChangeType, NewChange};
use cmdb_collector::judgment::{Actor, Judgment, JudgmentSettings, NewWaiver};
use cmdb_collector::store::{ChangeKind, CiState, CiVersion, FeedEntry, FeedPos};
use cmdb_proto::model::AttrValue;

#[derive(Parser)]
struct Args {
    /// CI versions per run.
    #[arg(long, default_value_t = 1_000_000)]
    versions: usize,
    /// Hosts the versions are spread over.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
}

/// The synthetic feed.
fn make_feed(n: usize, hosts: usize, at: SystemTime) -> Vec<FeedEntry> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // One commit = one agent's batch: 100 versions of one host, hosts in turn.
        let h = (i / 100) % hosts;
        let host_id = host_id(h);
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
        } else {
            let old = attrs(&[
                ("sha256", s(&format!("{round:064x}"))),
                ("size", AttrValue::Int(10)),
            ]);
            let mut new = old.clone();
            new.insert("sha256".into(), s(&format!("{:064x}", round + 1)));
            // Under a waiver (/etc/motd.d) or unauthorized (/etc/app).
            let key = if slot < 90 {
                format!("/etc/motd.d/{slot}")
            } else {
                format!("/etc/app/{slot}.conf")
            };
            ("file", key, old, new)
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

/// A normal change of `scope` (one selector) whose window is the hour either side of `now`.
fn new_change(title: String, scope: &str, now: SystemTime) -> NewChange {
    NewChange {
        title,
        description: String::new(),
        change_type: ChangeType::Normal,
        scope: vec![scope.to_owned()],
        window_start: now - Duration::from_secs(3600),
        window_end: now + Duration::from_secs(3600),
        expected: vec![],
        outage_expected: false,
        external_id: None,
        state: None,
    }
}

fn run_once(feed: Vec<FeedEntry>) -> Result<(usize, Duration, Duration, usize, u64)> {
    let n = feed.len();
    // Drift records are the bulk; keeping them all would measure memory growth, not the
    // engine. The store keeps the rest (incidents, changes, open drift).
    let store = Arc::new(MemStore::with_feed(feed).discarding("drift"));
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
        new_change("Patch Tuesday".into(), "class=package", now),
    )?;
    j.transition_change(&admin, &change.id, ChangeState::Approved, None)?;
    // A few changes elsewhere, so that the engine looks past non-matching ones.
    for k in 0..20 {
        let c = j.create_change(
            &admin,
            new_change(format!("other {k}"), &format!("host=db-{k}-*"), now),
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
    let written = store.written();
    Ok((n, elapsed, cpu, incidents, written))
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
    println!(
        "median over {} runs: {:.0} versions/s wall, {:.0} versions per CPU-second",
        rates.len(),
        median_f64(&mut rates),
        median_f64(&mut cpu_rates)
    );
    Ok(())
}
