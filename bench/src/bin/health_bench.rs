//! health-bench: the cost of the CMDB health report.
//!
//! 1. `--hosts` × `--cis` synthetic CI records (default 10 000 × 800 = 8 M; 2 % of package
//!    CIs lack a version, 1 % are stale, 0.5 % hosts duplicate another's machine id) fed to
//!    the report builder: the in-memory KPI computation alone, streamed (the records are
//!    made on the fly, never all held).
//! 2. `--scan-hosts` × `--cis` package CIs written to a sled store through `Store::apply`,
//!    then the whole report computed from the store (walk + decode + KPIs): reported per
//!    CI and extrapolated to the full fleet.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use cmdb_bench::{collector_status, host_id, hostname, populate, str_attr as s};
use cmdb_collector::cmdb_health::{self, ComplianceInput, HealthSettings, Kpi, ReportBuilder};
use cmdb_collector::store::sled::SledStore;
use cmdb_collector::store::{CiRecord, CiState, HOST_CLASS, ci_id, host_ci_id};
use cmdb_proto::model::Attrs;
use cmdb_proto::v1;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    #[arg(long, default_value_t = 800)]
    cis: usize,
    /// Hosts written to sled for the store walk (0 skips it).
    #[arg(long, default_value_t = 100)]
    scan_hosts: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let settings = HealthSettings::default();
    let now = SystemTime::now();
    let old = now - Duration::from_secs(5 * 86_400);

    // 1. The builder alone.
    let t = Instant::now();
    let mut b = ReportBuilder::new(&settings, now);
    // As `compute` does: every host CI first, then the rest judged as they come.
    for h in 0..args.hosts {
        let host = host_id(h);
        let dup = h % 200 == 1;
        let attrs: Attrs = [
            ("hostname".to_owned(), s(&hostname(h))),
            (
                "machine_id".to_owned(),
                s(&format!("{:032x}", if dup { h - 1 } else { h })),
            ),
        ]
        .into_iter()
        .collect();
        b.add_ci(&CiRecord {
            id: host_ci_id(&host),
            host_id: host.clone(),
            class: HOST_CLASS.into(),
            key: host.clone(),
            state: CiState::Present,
            attrs,
            version: 1,
            first_seen: now,
            last_seen: now,
            last_changed: now,
            source_agent: "agt".into(),
            source_seq: 1,
        });
    }
    b.hosts_complete();
    for h in 0..args.hosts {
        let host = host_id(h);
        for c in 0..args.cis {
            let name = format!("pkg{c:04}");
            let mut attrs: Attrs = [
                ("manager".to_owned(), s("dpkg")),
                ("name".to_owned(), s(&name)),
                ("arch".to_owned(), s("amd64")),
            ]
            .into_iter()
            .collect();
            if (h * args.cis + c) % 50 != 0 {
                attrs.insert("version".into(), s("1.0-1"));
            }
            let key = format!("dpkg:{name}:amd64");
            b.add_ci(&CiRecord {
                id: ci_id(&host, "package", &key),
                host_id: host.clone(),
                class: "package".into(),
                key,
                state: CiState::Present,
                attrs,
                version: 1,
                first_seen: now,
                last_seen: if (h * args.cis + c) % 100 == 7 {
                    old
                } else {
                    now
                },
                last_changed: now,
                source_agent: "agt".into(),
                source_seq: 1,
            });
        }
    }
    let rep = b.finish(ComplianceInput::NoSource);
    let took = t.elapsed();
    let total = args.hosts * (args.cis + 1);
    println!(
        "builder: {} hosts x {} CIs = {} CIs in {:.2} s ({:.0} ns/CI)",
        args.hosts,
        args.cis,
        total,
        took.as_secs_f64(),
        took.as_nanos() as f64 / total as f64
    );
    for r in rep.rows(None, None) {
        println!(
            "  {:<13} {:<8} {:>9} / {:>9}",
            r.kpi.as_str(),
            r.class,
            r.healthy,
            r.total
        );
    }
    let (_, failing) = rep.failing(Some(Kpi::Correctness), None, 1);
    println!("  correctness failing: {failing}");

    // 2. Through sled.
    if args.scan_hosts > 0 {
        let dir = std::env::temp_dir().join(format!("health-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = Arc::new(SledStore::open(&dir.join("store"), 256 * 1024 * 1024)?);
        let t = Instant::now();
        populate(store.as_ref(), args.scan_hosts, now, |_| {
            inventory(args.cis)
        })?;
        println!(
            "populate: {} hosts x {} CIs in {:.1} s",
            args.scan_hosts,
            args.cis,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let rep = cmdb_health::compute(store.as_ref(), None, &settings, SystemTime::now())?;
        let took = t.elapsed();
        let n = rep.cis_scanned.max(1);
        let per = took.as_nanos() as f64 / n as f64;
        println!(
            "sled report: {} CIs in {:.2} s ({:.0} ns/CI); extrapolated to {} CIs: {:.0} s",
            rep.cis_scanned,
            took.as_secs_f64(),
            per,
            total,
            per * total as f64 / 1e9
        );
        drop(store);
        std::fs::remove_dir_all(&dir).context("removing the bench store")?;
    }
    Ok(())
}

/// A host's snapshot: `cis` packages, all with a version, from the dpkg collector.
fn inventory(cis: usize) -> (Vec<v1::Item>, Vec<v1::CollectorStatus>) {
    let str_value = |x: &str| v1::Value {
        kind: Some(v1::value::Kind::String(x.to_owned())),
    };
    let items: Vec<v1::Item> = (0..cis)
        .map(|c| v1::Item {
            class: "package".into(),
            key: format!("dpkg:pkg{c:04}:amd64"),
            attrs: [
                ("manager".to_owned(), str_value("dpkg")),
                ("name".to_owned(), str_value(&format!("pkg{c:04}"))),
                ("version".to_owned(), str_value("1.0-1")),
            ]
            .into_iter()
            .collect(),
        })
        .collect();
    (
        items,
        vec![collector_status("dpkg", "package", cis as u64, 1)],
    )
}
