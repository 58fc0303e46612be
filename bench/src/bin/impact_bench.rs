//! Impact analysis and host-link figures (docs/BENCHMARKS.md), medians of `--runs` runs:
//! 1. **impact query**: `impact::impact` at depth 3 and 6 from a listening port, a service
//!    and a host of a `--hosts` fleet held in memory ([`MemGraph`]): per host 1 interface,
//!    3 services each running a process listening on a port, 20 packages-like leaf CIs,
//!    `--conns` outbound connections to other hosts' ports (with the derived
//!    connection → port and host → host relations), so popular ports gather many clients.
//! 2. **host-link recompute**: the full recompute the task does on start
//!    (`LinkIndex` fed with every interface, port and connection, then `settle`), and an
//!    incremental step (one host's connections replaced), reported as connections/s.
//!
//! The in-memory graph measures the walk itself; through the HTTP route each edge read is a
//! sled prefix scan (agents' relations + derived records), see the note in BENCHMARKS.md.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use cmdb_bench::{median, ms};
use cmdb_collector::host_links::LinkIndex;
use cmdb_collector::impact::{MAX_NODES, MemGraph, NodeInfo, impact};
use cmdb_collector::store::{HOST_CLASS, host_ci_id};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Outbound connections per host.
    #[arg(long, default_value_t = 10)]
    conns: usize,
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
}

fn addr(h: usize) -> IpAddr {
    IpAddr::from([10, (h >> 16) as u8, (h >> 8) as u8, h as u8])
}

fn node(id: String, class: &str, host: &str) -> NodeInfo {
    NodeInfo {
        key: id.clone(),
        id,
        class: class.to_owned(),
        host_id: host.to_owned(),
        hostname: Some(format!("{host}.example")),
    }
}

/// (host, target host, target port index) of every connection.
fn connections(args: &Args) -> Vec<(usize, usize, usize)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = Vec::with_capacity(args.hosts * args.conns);
    for h in 0..args.hosts {
        for _ in 0..args.conns {
            // A skewed choice: a few "database" hosts get most of the clients.
            let t = if rng.random_bool(0.5) {
                rng.random_range(0..args.hosts.min(20))
            } else {
                rng.random_range(0..args.hosts)
            };
            if t != h {
                out.push((h, t, rng.random_range(0..3)));
            }
        }
    }
    out
}

fn graph(args: &Args, conns: &[(usize, usize, usize)]) -> MemGraph {
    let mut g = MemGraph::default();
    for h in 0..args.hosts {
        let host = format!("h{h}");
        g.add_node(node(host_ci_id(&host), HOST_CLASS, &host));
        for s in 0..3 {
            let (svc, proc_, port) = (
                format!("h{h}-s{s}"),
                format!("h{h}-x{s}"),
                format!("h{h}-p{s}"),
            );
            g.add_node(node(svc.clone(), "service", &host));
            g.add_node(node(proc_.clone(), "process", &host));
            g.add_node(node(port.clone(), "listening_port", &host));
            g.add_edge(&svc, &proc_, "runs");
            g.add_edge(&proc_, &port, "listens_on");
        }
        for p in 0..20 {
            g.add_node(node(format!("h{h}-pkg{p}"), "package", &host));
        }
    }
    for (i, (h, t, p)) in conns.iter().enumerate() {
        let host = format!("h{h}");
        let c = format!("h{h}-c{i}");
        g.add_node(node(c.clone(), "connection", &host));
        g.add_edge(&format!("h{h}-x0"), &c, "connects_to");
        g.add_edge(&c, &format!("h{t}-p{p}"), "connects_to");
        g.add_edge(
            &host_ci_id(&host),
            &host_ci_id(&format!("h{t}")),
            "connects_to",
        );
    }
    g
}

fn feed_index(ix: &mut LinkIndex, args: &Args, conns: &[(usize, usize, usize)]) {
    for h in 0..args.hosts {
        let host = format!("h{h}");
        ix.set_interface(&format!("{host}-eth0"), &host, Some(vec![addr(h)]));
        for p in 0..3 {
            ix.set_port(
                &format!("{host}-p{p}"),
                &host,
                "k",
                Some((IpAddr::from([0, 0, 0, 0]), 5000 + p as u16)),
            );
        }
    }
    for (i, (h, t, p)) in conns.iter().enumerate() {
        ix.set_connection(
            &format!("h{h}-c{i}"),
            &format!("h{h}"),
            "k",
            Some((addr(*t), 5000 + *p as u16)),
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let conns = connections(&args);
    println!(
        "fleet: {} hosts, {} connections, {} runs",
        args.hosts,
        conns.len(),
        args.runs
    );
    let t = Instant::now();
    let g = graph(&args, &conns);
    println!(
        "graph built in {:.0} ms ({} nodes)",
        ms(t.elapsed()),
        g.nodes.len()
    );

    let roots = [
        ("listening port of a popular host", "h0-p0".to_owned()),
        ("service of a popular host", "h0-s0".to_owned()),
        ("host (popular)", host_ci_id("h0")),
        (
            "listening port of a quiet host",
            format!("h{}-p1", args.hosts - 1),
        ),
    ];
    for depth in [3, 6] {
        for (what, root) in &roots {
            let mut times = Vec::new();
            let mut size = (0, false);
            for _ in 0..args.runs {
                let t = Instant::now();
                let i = impact(&g, root, depth, MAX_NODES)?
                    .ok_or_else(|| anyhow::anyhow!("no root"))?;
                times.push(t.elapsed());
                size = (i.nodes.len(), i.truncated);
            }
            println!(
                "impact depth {depth} from {what}: median {:.2} ms, {} nodes{}",
                ms(median(times)),
                size.0,
                if size.1 {
                    " (truncated at the node cap)"
                } else {
                    ""
                }
            );
        }
    }

    let mut full = Vec::new();
    let mut incr = Vec::new();
    let mut links = 0;
    for _ in 0..args.runs {
        let mut ix = LinkIndex::default();
        let t = Instant::now();
        feed_index(&mut ix, &args, &conns);
        let w = ix.settle();
        full.push(t.elapsed());
        links = w.len();
        // One host's connections go and come back elsewhere.
        let t = Instant::now();
        for (i, (h, _, _)) in conns.iter().enumerate().filter(|(_, c)| c.0 == 1) {
            ix.set_connection(&format!("h{h}-c{i}"), "h1", "k", Some((addr(2), 5000)));
        }
        let _ = ix.settle();
        incr.push(t.elapsed());
    }
    let f = median(full);
    println!(
        "host links full recompute: median {:.0} ms for {} connections = {:.0} connections/s ({} relations written)",
        ms(f),
        conns.len(),
        conns.len() as f64 / f.as_secs_f64(),
        links
    );
    println!(
        "host links incremental (one host's connections moved): median {:.3} ms",
        ms(median(incr))
    );
    Ok(())
}
