//! The `cpu` CI: model, vendor and topology (sockets, cores, logical CPUs, threads per
//! core), a stable clock figure, hardware virtualization support and cache size, from
//! /proc/cpuinfo and /sys/devices/system/cpu.
//!
//! It promises stable values: `mhz` is the cpufreq maximum when the kernel has one, else
//! the cpuinfo clock rounded to an integer (steady on VMs), never a momentary sample that
//! changes each run. Topology comes from cpuinfo's `physical id` / `core id` (x86, one
//! read); where cpuinfo lacks them (arm64) from each online CPU's sysfs `topology`; what
//! neither gives is `null`. It never runs lscpu.

pub mod cpuinfo;

use std::collections::{BTreeMap, BTreeSet};

use cmdb_proto::model::{Item, class};

use super::{Collector, Context, Outcome};
use crate::hostroot::HostRoot;
use cpuinfo::Processor;

pub struct CpuCollector;

impl Collector for CpuCollector {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::CPU]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root)
    }
}

const SYS_CPU: &str = "/sys/devices/system/cpu";
/// The kernel's NR_CPUS ceiling: a range list beyond it is garbage, not a host.
const MAX_CPUS: u32 = 8192;

fn collect(root: &HostRoot) -> Outcome {
    let text = match root.read_to_string_capped("/proc/cpuinfo", 16 * 1024 * 1024) {
        Ok(t) => t,
        Err(e) => return Outcome::error(format!("cannot read cpu information: {e}")),
    };
    let mut outcome = Outcome::new();
    let (processors, warnings) = cpuinfo::parse(&text);
    for w in warnings {
        outcome.warn(format!("/proc/cpuinfo {w}"));
    }
    let online = match root.read_trimmed(format!("{SYS_CPU}/online")) {
        Ok(Some(list)) => {
            let (cpus, bad) = parse_cpu_list(&list);
            if bad {
                outcome.warn(format!("{SYS_CPU}/online: malformed CPU list {list:?}"));
            }
            Some(cpus)
        }
        _ => None,
    };
    let online = online
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| processors.iter().map(|p| p.index).collect());

    let topology =
        topology_from_cpuinfo(&processors).or_else(|| topology_from_sysfs(root, &online));
    let first = processors.first();
    let max_khz = online
        .first()
        .and_then(|cpu| {
            root.read_trimmed(format!("{SYS_CPU}/cpu{cpu}/cpufreq/cpuinfo_max_freq"))
                .ok()
                .flatten()
        })
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|k| *k > 0);
    let mhz = match max_khz {
        Some(khz) => Some((khz + 500) / 1000),
        None => first
            .and_then(|p| p.mhz)
            .map(|m| m.round())
            .filter(|m| *m >= 1.0 && *m < 1e9)
            .map(|m| m as u64),
    };

    let arm = first.and_then(|p| p.implementer.map(|i| (i, p.part)));
    let vendor = first.and_then(|p| p.vendor_id.clone()).or_else(|| {
        arm.and_then(|(i, _)| cpuinfo::arm_implementer(i))
            .map(str::to_owned)
    });
    let model = first.and_then(|p| p.model_name.clone()).or_else(|| {
        let (i, part) = arm?;
        let name = cpuinfo::arm_part(i, part?)?;
        Some(match cpuinfo::arm_implementer(i) {
            Some(v) => format!("{v} {name}"),
            None => name.to_owned(),
        })
    });

    let item = Item::new(class::CPU, "cpu")
        .with("model", model)
        .with("vendor", vendor)
        .with("sockets", topology.as_ref().map(|t| t.sockets))
        .with("cores", topology.as_ref().map(|t| t.cores))
        .with("logical_cpus", online.len())
        .with(
            "threads_per_core",
            topology.as_ref().map(|t| t.threads_per_core),
        )
        .with("mhz", mhz)
        .with(
            "virtualization_support",
            first.and_then(|p| p.virtualization),
        )
        .with("cache_size_bytes", first.and_then(|p| p.cache_bytes))
        .with("microcode", first.and_then(|p| p.microcode.clone()));
    outcome.push(item);
    outcome
}

/// Sockets, cores and threads per core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub sockets: usize,
    pub cores: usize,
    pub threads_per_core: usize,
}

/// Counts distinct packages, distinct (package, core) pairs and the most logical CPUs on
/// one core, from (package, core) per logical CPU.
pub fn topology(pairs: impl IntoIterator<Item = (u32, u32)>) -> Option<Topology> {
    let mut per_core: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for pair in pairs {
        *per_core.entry(pair).or_default() += 1;
    }
    let sockets: BTreeSet<u32> = per_core.keys().map(|(s, _)| *s).collect();
    Some(Topology {
        sockets: sockets.len(),
        cores: per_core.len(),
        threads_per_core: per_core.values().copied().max()?,
    })
}

fn topology_from_cpuinfo(processors: &[Processor]) -> Option<Topology> {
    let pairs: Option<Vec<(u32, u32)>> = processors
        .iter()
        .map(|p| Some((p.physical_id?, p.core_id?)))
        .collect();
    topology(pairs?)
}

fn topology_from_sysfs(root: &HostRoot, online: &[u32]) -> Option<Topology> {
    let read = |cpu: u32, file: &str| {
        let v = root
            .read_trimmed(format!("{SYS_CPU}/cpu{cpu}/topology/{file}"))
            .ok()??;
        // Some arm firmware leaves the package id at -1: one package.
        Some(u32::try_from(v.parse::<i64>().ok()?).unwrap_or(0))
    };
    let pairs: Option<Vec<(u32, u32)>> = online
        .iter()
        .map(|cpu| Some((read(*cpu, "physical_package_id")?, read(*cpu, "core_id")?)))
        .collect();
    topology(pairs?)
}

/// Parses a kernel CPU list ("0-3,8,10-11") into sorted CPU numbers; the flag says some
/// part was malformed (and skipped). Numbers at or beyond the kernel's NR_CPUS ceiling (8192) are dropped.
pub fn parse_cpu_list(list: &str) -> (Vec<u32>, bool) {
    let mut cpus = BTreeSet::new();
    let mut bad = false;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a
                .trim()
                .parse::<u32>()
                .ok()
                .zip(b.trim().parse::<u32>().ok()),
            None => part.trim().parse::<u32>().ok().map(|a| (a, a)),
        };
        match range {
            Some((a, b)) if a <= b && b < MAX_CPUS => cpus.extend(a..=b),
            _ => bad = true,
        }
    }
    (cpus.into_iter().collect(), bad)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use cmdb_proto::model::AttrValue;
    use proptest::prelude::*;

    #[test]
    fn cpu_lists_are_expanded() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            (vec![0, 1, 2, 3, 8, 10, 11], false)
        );
        assert_eq!(parse_cpu_list("0"), (vec![0], false));
        assert_eq!(parse_cpu_list("0-1,x,5-2"), (vec![0, 1], true));
        assert_eq!(parse_cpu_list("0-4294967295"), (vec![], true));
    }

    #[test]
    fn topology_counts_packages_cores_and_threads() {
        // 2 sockets × 2 cores × 2 threads.
        let pairs = [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
        ];
        assert_eq!(
            topology(pairs),
            Some(Topology {
                sockets: 2,
                cores: 4,
                threads_per_core: 2
            })
        );
        assert_eq!(topology([]), None);
    }

    #[test]
    fn arm_topology_comes_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let put = |p: &str, v: &str| {
            let path = dir.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, v).unwrap();
        };
        let mut info = String::new();
        for cpu in 0..4 {
            info.push_str(&format!(
                "processor\t: {cpu}\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n"
            ));
            put(
                &format!("sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"),
                "-1\n",
            );
            put(
                &format!("sys/devices/system/cpu/cpu{cpu}/topology/core_id"),
                &format!("{cpu}\n"),
            );
        }
        put("proc/cpuinfo", &info);
        put("sys/devices/system/cpu/online", "0-3\n");
        let o = collect(&HostRoot::new(dir.path()));
        let cpu = &o.items[0];
        let get = |k: &str| cpu.attr(k).cloned().unwrap();
        assert_eq!(get("vendor"), AttrValue::from("ARM"));
        assert_eq!(get("model"), AttrValue::from("ARM Neoverse-N1"));
        assert_eq!(get("sockets"), AttrValue::Int(1));
        assert_eq!(get("cores"), AttrValue::Int(4));
        assert_eq!(get("threads_per_core"), AttrValue::Int(1));
        assert_eq!(get("logical_cpus"), AttrValue::Int(4));
        assert_eq!(get("mhz"), AttrValue::Null);
        assert_eq!(o.state(), cmdb_proto::model::CollectorState::Ok);
    }

    proptest! {
        #[test]
        fn cpu_list_never_panics(text in "[0-9,\\- x]{0,40}") {
            let (cpus, _) = parse_cpu_list(&text);
            prop_assert!(cpus.len() <= MAX_CPUS as usize);
        }
    }
}
