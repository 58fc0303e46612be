//! Licence position throughput: the figures behind "license position over 10 000 hosts ×
//! 800 packages ≤ 1 s" (docs/BENCHMARKS.md).
//!
//! Three measurements, medians of `--runs` runs each:
//! 1. **position**: `position::position` over an index of `--hosts` × `--packages`
//!    package installs (the request path of `GET /api/v1/licenses/position`), with 40
//!    entitlements; also the software inventory (`position::software`).
//! 2. **index build**: folding the same `--hosts` × `--packages` package CIs (plus one cpu
//!    and three user CIs per host) into the index (`IndexBuilder`): the computation of a
//!    refresh, CIs generated in memory and streamed, never all held at once.
//! 3. **store scan**: a full `Licenses::refresh` against the real sled store holding
//!    `--scan-hosts` × `--packages` package CIs (written through `Store::apply`), i.e. the
//!    store read + decode + index build; reported per package CI, and extrapolated to the
//!    full fleet.
//!
//! 800 packages per host: 760 common names shared by every host (vendor "Debian") and 40
//! licensable products drawn from the built-in rules (SQL Server editions, Java, Teams,
//! TeamViewer, JetBrains, …), present on a varying subset of hosts.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use cmdb_bench::{attrs, ci, collector_status, host_id, hostname, median, ms, populate};
use cmdb_collector::licenses::entitlements::{Entitlement, Metric};
use cmdb_collector::licenses::lists::{ListMatcher, Lists};
use cmdb_collector::licenses::normalise::{Normaliser, RuleSet};
use cmdb_collector::licenses::position::{self, IndexBuilder, SoftwareIndex};
use cmdb_collector::licenses::{LicenseSettings, Licenses};
use cmdb_collector::store::Store;
use cmdb_collector::store::sled::SledStore;
use cmdb_proto::model::{AttrValue, Attrs};
use cmdb_proto::v1;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    #[arg(long, default_value_t = 800)]
    packages: usize,
    /// Hosts written to the sled store for the scan measurement (0: skip it).
    #[arg(long, default_value_t = 250)]
    scan_hosts: usize,
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
}

const LICENSABLE: &[&str] = &[
    "mssql-server-enterprise",
    "mssql-server-standard",
    "mssql-server",
    "oracle-java17",
    "jdk-21",
    "teams",
    "teamviewer",
    "anydesk",
    "zoom",
    "slack-desktop",
    "intellij-idea-ultimate",
    "pycharm-professional",
    "clion",
    "goland",
    "webstorm",
    "datagrip",
    "rider",
    "docker-ee",
    "mongodb-enterprise-server",
    "elasticsearch",
    "kibana",
    "logstash",
    "elastic-agent",
    "redis-enterprise",
    "mysql-commercial-server",
    "mariadb-enterprise-server",
    "vmware-horizon-client",
    "vmware-workstation",
    "icaclient",
    "citrix-vda",
    "atlassian-jira",
    "atlassian-confluence",
    "atlassian-bitbucket",
    "bamboo",
    "redhat-release",
    "satellite",
    "ubuntu-advantage-tools",
    "landscape-client",
    "canonical-livepatch",
    "mdatp",
];

/// The `p`-th package name of host `h`.
fn package_name(h: usize, p: usize, packages: usize) -> String {
    let common = packages.saturating_sub(LICENSABLE.len());
    if p < common {
        format!("lib-common-{p:04}")
    } else {
        let i = p - common;
        // Each licensable product on a different share of hosts; absent hosts get a
        // common-looking package instead, so every host has `packages` packages.
        if (h + i).is_multiple_of(i % 5 + 1) {
            LICENSABLE[i % LICENSABLE.len()].to_owned()
        } else {
            format!("lib-extra-{i:04}")
        }
    }
}

fn package_attrs(name: &str, h: usize) -> Attrs {
    attrs(&[
        ("manager", AttrValue::Str("dpkg".into())),
        ("name", AttrValue::Str(name.to_owned())),
        ("version", AttrValue::Str(format!("1.{}.0", h % 4))),
        ("arch", AttrValue::Str("amd64".into())),
        ("vendor", AttrValue::Str("Debian".into())),
    ])
}

fn build_index(args: &Args, nz: &Normaliser, lm: &ListMatcher) -> SoftwareIndex {
    let mut b = IndexBuilder::new(nz, lm);
    for h in 0..args.hosts {
        let host = host_id(h);
        b.hostname(&host, Some(hostname(h)));
        b.add_cpu(&ci(
            &host,
            "cpu",
            "cpu".into(),
            attrs(&[("cores", AttrValue::Int(4 + (h % 4) as i64 * 4))]),
        ));
        for u in 0..3 {
            b.add_user(&ci(
                &host,
                "user",
                format!("user{u}"),
                attrs(&[
                    ("uid", AttrValue::Int(1000 + u)),
                    ("login_shell", AttrValue::Bool(true)),
                    ("system_account", AttrValue::Bool(false)),
                ]),
            ));
        }
        for p in 0..args.packages {
            let name = package_name(h, p, args.packages);
            b.add_package(&ci(
                &host,
                "package",
                format!("dpkg:{name}:amd64"),
                package_attrs(&name, h),
            ));
        }
    }
    b.finish(SystemTime::now())
}

fn entitlements() -> Vec<Entitlement> {
    let products = [
        ("Microsoft", "SQL Server", Metric::PerCore),
        ("Oracle", "Java SE", Metric::PerCore),
        ("Microsoft", "Teams", Metric::PerUser),
        ("TeamViewer", "TeamViewer", Metric::PerHost),
        ("JetBrains", "IntelliJ IDEA", Metric::PerUser),
        ("Elastic", "Elasticsearch", Metric::PerHost),
        ("Atlassian", "Jira", Metric::PerUser),
        ("Red Hat", "Enterprise Linux", Metric::PerHost),
    ];
    (0..40)
        .map(|i| {
            let (v, p, m) = products[i % products.len()];
            Entitlement {
                contract: format!("EA-{i:03}"),
                vendor: v.into(),
                product: p.into(),
                edition: String::new(),
                metric: m,
                quantity: 1000 + i as u64,
                expires: Some(
                    if i % 3 == 0 {
                        "2027-01-15"
                    } else {
                        "2030-12-31"
                    }
                    .into(),
                ),
                notes: String::new(),
            }
        })
        .collect()
}

fn item(class: &str, key: String, attrs: &Attrs) -> v1::Item {
    v1::Item {
        class: class.into(),
        key,
        attrs: cmdb_proto::convert::attrs_to_proto(attrs),
    }
}

/// Host `h`'s snapshot: `packages` package CIs and a cpu, from the dpkg and cpu collectors.
fn inventory(h: usize, packages: usize) -> (Vec<v1::Item>, Vec<v1::CollectorStatus>) {
    let mut items: Vec<v1::Item> = (0..packages)
        .map(|p| {
            let name = package_name(h, p, packages);
            item(
                "package",
                format!("dpkg:{name}:amd64"),
                &package_attrs(&name, h),
            )
        })
        .collect();
    items.push(item(
        "cpu",
        "cpu".into(),
        &attrs(&[("cores", AttrValue::Int(8))]),
    ));
    let collectors = vec![
        collector_status("dpkg", "package", packages as u64, 1),
        collector_status("cpu", "cpu", 1, 1),
    ];
    (items, collectors)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runs = args.runs.max(1);
    let nz = Normaliser::new(&RuleSet::default(), true);
    let lm = ListMatcher::new(&Lists::default());
    println!(
        "license-bench: {} hosts x {} packages = {} package CIs, {runs} runs",
        args.hosts,
        args.packages,
        args.hosts * args.packages
    );

    let mut builds = Vec::new();
    let mut index = SoftwareIndex::default();
    for run in 0..runs {
        let t = Instant::now();
        index = build_index(&args, &nz, &lm);
        let d = t.elapsed();
        println!("  index build run {run}: {:.0} ms", ms(d));
        builds.push(d);
    }
    println!(
        "  index: {} hosts, {} products, {} installs scanned",
        index.hosts.len(),
        index.products.len(),
        index.packages_scanned
    );

    let ents = entitlements();
    let now = SystemTime::now();
    let window = Duration::from_secs(60 * 86_400);
    let mut positions = Vec::new();
    let mut softwares = Vec::new();
    let mut rows = 0;
    for run in 0..runs {
        let t = Instant::now();
        let p = position::position(&index, &ents, now, window, 100);
        let d = t.elapsed();
        rows = p.len();
        let t2 = Instant::now();
        let s = position::software(&index, false);
        let d2 = t2.elapsed();
        println!(
            "  position run {run}: {:.1} ms ({rows} rows); software: {:.1} ms ({} rows)",
            ms(d),
            ms(d2),
            s.len()
        );
        positions.push(d);
        softwares.push(d2);
    }

    println!(
        "median: position {:.1} ms ({rows} rows), software {:.1} ms, index build {:.0} ms",
        ms(median(positions)),
        ms(median(softwares)),
        ms(median(builds))
    );

    if args.scan_hosts > 0 {
        let dir = tempfile_dir()?;
        let store = Arc::new(SledStore::open(&dir.join("store"), 256 * 1024 * 1024)?);
        let t = Instant::now();
        // One snapshot per host written to a fresh sled store.
        populate(store.as_ref(), args.scan_hosts, SystemTime::now(), |h| {
            inventory(h, args.packages)
        })?;
        println!(
            "  sled: {} hosts x {} packages written in {:.1} s",
            args.scan_hosts,
            args.packages,
            t.elapsed().as_secs_f64()
        );
        let l = Licenses::open(
            store.clone() as Arc<dyn Store>,
            None,
            None,
            LicenseSettings::default(),
        )?;
        let mut scans = Vec::new();
        for run in 0..runs {
            let t = Instant::now();
            let r = l.refresh(SystemTime::now())?;
            let d = t.elapsed();
            println!(
                "  refresh over sled run {run}: {:.0} ms ({} packages)",
                ms(d),
                r.packages
            );
            scans.push(d);
        }
        let m = median(scans);
        let cis = (args.scan_hosts * args.packages) as f64;
        let per_ci_us = m.as_secs_f64() * 1e6 / cis;
        println!(
            "median: refresh over sled {:.0} ms for {} package CIs = {:.2} us/CI; \
             extrapolated to {} CIs: {:.0} s",
            ms(m),
            cis,
            per_ci_us,
            args.hosts * args.packages,
            per_ci_us * (args.hosts * args.packages) as f64 / 1e6
        );
        drop(l);
        drop(store);
        std::fs::remove_dir_all(&dir).context("removing the bench store")?;
    }
    Ok(())
}

/// A fresh directory under the system temp dir.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "license-bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
