//! The `sockets` and `process` collectors on the running host, cross-checked against `ss`.
//!
//! The test opens its own TCP listener, an established loopback connection to it and an
//! unconnected UDP socket before running the agent, so there is always something to find
//! with a known owner: this test process (pid and exe).
//!
//! Comparing with `ss -ltnH` / `ss -lunH` (Local Address:Port column) needs normalising
//! both sides:
//! - ss writes the IPv6 wildcard of a dual-stack socket as `*` (and old versions the IPv4
//!   one too), a v6-only one as `[::]` and the IPv4 wildcard as `0.0.0.0`; /proc/net only
//!   knows the address. All wildcard forms become `*`, so the comparison does not tell the
//!   wildcards' families apart (the fixtures test that exactly).
//! - ss appends `%iface` for sockets bound to a device (SO_BINDTODEVICE, e.g.
//!   `127.0.0.53%lo:53`); /proc/net does not show the device, so the suffix is dropped.
//! - IPv6 addresses lose their brackets; IPv4-mapped ones are `::ffff:a.b.c.d` on both sides.
//!
//! UDP: `ss -l` selects UDP sockets in the CLOSE state (unconnected, no remote), which is
//! the collector's definition of a listening UDP port, so the sets are compared as well.
//!
//! Other programs may open or close ports while the test runs: every port seen by ss both
//! before and after the agent ran must be in the agent's output, and every port in the
//! agent's output must have been seen by ss before or after; a mismatch is retried twice.
//! Without `ss` the comparison is skipped with a note (the own-socket checks still run).

// Test helpers fail the test by panicking; clippy's test exemption covers only #[test] fns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command as StdCommand;

use serde_json::{Value, json};

type Endpoint = (String, u16);

fn inventory(only: &str) -> Value {
    common::inventory(std::path::Path::new("/"), only, &[], &[])
}

fn items<'a>(inv: &'a Value, class: &str) -> Vec<&'a Value> {
    inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["class"] == class)
        .collect()
}

fn item<'a>(inv: &'a Value, class: &str, key: &str) -> &'a Value {
    items(inv, class)
        .into_iter()
        .find(|i| i["key"] == key)
        .map(|i| &i["attrs"])
        .unwrap_or_else(|| panic!("no {class} {key} in {inv:#}"))
}

/// Wildcards of either family become "*", brackets and %iface go.
fn normalise(addr: &str, port: u16) -> Endpoint {
    let addr = addr.split('%').next().unwrap_or(addr);
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let addr = match addr {
        "*" | "0.0.0.0" | "::" => "*",
        a => a,
    };
    (addr.to_owned(), port)
}

/// The Local Address:Port column of `ss <args>`; `None` when ss is absent or fails.
fn ss(args: &str) -> Option<BTreeSet<Endpoint>> {
    let out = StdCommand::new("ss").arg(args).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "ss {args} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let mut set = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(local) = line.split_whitespace().nth(3) else {
            continue;
        };
        let (addr, port) = local.rsplit_once(':').unwrap();
        set.insert(normalise(addr, port.parse().unwrap()));
    }
    Some(set)
}

fn agent_ports(inv: &Value, protocol: &str) -> BTreeSet<Endpoint> {
    items(inv, "listening_port")
        .into_iter()
        .map(|i| &i["attrs"])
        .filter(|a| a["protocol"] == protocol)
        .map(|a| {
            normalise(
                a["address"].as_str().unwrap(),
                u16::try_from(a["port"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn own_sockets_are_found_with_this_process_as_owner() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();

    let inv = inventory("process,listening_port,connection");
    let pid = std::process::id();
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_str().unwrap().trim_end_matches(" (deleted)");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let comm = comm.trim();

    let l = item(&inv, "listening_port", &format!("tcp:127.0.0.1:{port}"));
    assert_eq!(l["pid"], json!(pid));
    assert_eq!(l["exe"], json!(exe));
    assert_eq!(l["process"], json!(comm));
    assert_eq!(l["family"], json!("ipv4"));
    let u = item(&inv, "listening_port", &format!("udp:127.0.0.1:{udp_port}"));
    assert_eq!(u["pid"], json!(pid));

    let out = item(&inv, "connection", &format!("tcp:127.0.0.1:{port}"));
    assert_eq!(out["direction"], json!("outbound"));
    assert_eq!(out["loopback"], json!(true));
    assert_eq!(out["exe"], json!(exe));
    let inbound = item(&inv, "connection", &format!("tcp:127.0.0.1:in:{port}"));
    assert_eq!(inbound["direction"], json!("inbound"));
    assert_eq!(inbound["local_port"], json!(port));
    assert_eq!(inbound["exe"], json!(exe));

    let p = item(&inv, "process", exe);
    assert!(p["pids"].as_array().unwrap().contains(&json!(pid)), "{p}");
    let listens = json!({
        "from": format!("process/{exe}"),
        "to": format!("listening_port/tcp:127.0.0.1:{port}"),
        "kind": "listens_on",
    });
    assert!(
        inv["relations"].as_array().unwrap().contains(&listens),
        "{:#}",
        inv["relations"]
    );
    drop((client, server, udp));
}

/// Compares the agent's listening ports of `protocol` with `ss <args>`, retrying races.
fn compare_with_ss(protocol: &str, args: &str) {
    // Hold a socket of this protocol open so neither set is trivially empty.
    let _tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let _udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut last = String::new();
    for _attempt in 0..3 {
        let Some(before) = ss(args) else {
            eprintln!("skipping the ss comparison: `ss {args}` is not available here");
            return;
        };
        let inv = inventory("listening_port");
        let Some(after) = ss(args) else { return };
        let agent = agent_ports(&inv, protocol);
        let stable: BTreeSet<_> = before.intersection(&after).cloned().collect();
        let seen: BTreeSet<_> = before.union(&after).cloned().collect();
        let missing: Vec<_> = stable.difference(&agent).collect();
        let extra: Vec<_> = agent.difference(&seen).collect();
        if missing.is_empty() && extra.is_empty() {
            return;
        }
        last = format!("missing (ss has, agent not): {missing:?}; extra (agent only): {extra:?}");
    }
    panic!("{protocol} listening ports differ from `ss {args}`: {last}");
}

#[test]
fn tcp_listening_ports_match_ss() {
    compare_with_ss("tcp", "-ltnH");
}

#[test]
fn udp_listening_ports_match_ss() {
    compare_with_ss("udp", "-lunH");
}
