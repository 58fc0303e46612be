//! `tcp_port` monitors: up when a TCP socket listens on the port, IPv4 or IPv6, read from
//! /proc/net/tcp and tcp6 under the host root by the `sockets` collector's own table reader
//! ([`crate::discover::sockets::tcp_listeners`]), once for every port monitor of a round.
//!
//! The tables are this host's network namespace's (the same caveat as the `sockets`
//! collector in a container). A table that exists but cannot be read makes a port that was
//! not found in the other `unknown`, not `down`: the listener may be in the unread one.

use std::collections::BTreeSet;

use super::{MonitorSpec, Verdict};
use crate::discover::sockets::{host_text, tcp_listeners};
use crate::hostroot::HostRoot;

/// At most this many addresses are named in an "up" detail.
const MAX_ADDRESSES: usize = 4;

/// One verdict per spec, in order.
pub fn check(root: &HostRoot, specs: &[&MonitorSpec]) -> Vec<Verdict> {
    let ports: BTreeSet<u16> = specs.iter().filter_map(|s| s.port()).collect();
    let found = tcp_listeners(root, &ports);
    specs
        .iter()
        .map(|s| {
            let Some(port) = s.port() else {
                return Verdict::unknown(format!("{:?} is not a port number", s.target));
            };
            if let Some(addrs) = found.by_port.get(&port) {
                let mut names: Vec<String> =
                    addrs.iter().take(MAX_ADDRESSES).map(host_text).collect();
                if addrs.len() > MAX_ADDRESSES {
                    names.push(format!("{} more", addrs.len() - MAX_ADDRESSES));
                }
                return Verdict::up(format!("listening on {}", names.join(", ")));
            }
            if !found.any_table {
                return Verdict::unknown(match found.unreadable.first() {
                    Some(why) => format!("cannot read the TCP socket tables: {why}"),
                    None => "no /proc/net/tcp or tcp6 (no procfs or no IP stack)".to_owned(),
                });
            }
            if let Some(why) = found.unreadable.first() {
                return Verdict::unknown(format!(
                    "not listening in the tables read; cannot read {why}"
                ));
            }
            Verdict::down(format!("nothing listens on TCP port {port}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{MonitorKind, MonitorStatus};
    use std::fs;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    // Real lines (x86_64): sshd listening on 0.0.0.0:22, a connection from :22 to a client,
    // a TIME_WAIT on :8080 (state 06, not listening).
    const TCP: &str = "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 16001 1 0000000000000000 100 0 0 10 0\n   1: 0A7AA8C0:0016 017AA8C0:C488 01 00000000:00000000 02:0008F5C2 00000000     0        0 24001 1 0000000000000000 20 4 31 10 -1\n   2: 0100007F:1F90 0100007F:C000 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000\n";
    // nginx on [::]:443 and on [::1]:8080.
    const TCP6: &str = "   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31001 1 0000000000000000 100 0 0 10 0\n   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 31002 1 0000000000000000 100 0 0 10 0\n";

    fn port(p: &str) -> MonitorSpec {
        MonitorSpec {
            name: format!("port-{p}"),
            kind: MonitorKind::TcpPort,
            target: p.into(),
        }
    }

    fn run(root: &std::path::Path, ports: &[&str]) -> Vec<Verdict> {
        let specs: Vec<MonitorSpec> = ports.iter().map(|p| port(p)).collect();
        let refs: Vec<&MonitorSpec> = specs.iter().collect();
        check(&HostRoot::new(root), &refs)
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn listeners_in_either_table_are_up_and_others_down() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        fs::write(dir.path().join("proc/net/tcp"), format!("{HEADER}{TCP}")).unwrap();
        fs::write(dir.path().join("proc/net/tcp6"), format!("{HEADER}{TCP6}")).unwrap();
        let v = run(dir.path(), &["22", "443", "8080", "9000"]);
        assert_eq!(v[0], Verdict::up("listening on 0.0.0.0"));
        assert_eq!(v[1], Verdict::up("listening on [::]"));
        // The TIME_WAIT on 127.0.0.1:8080 does not count; the v6 loopback listener does.
        assert_eq!(v[2], Verdict::up("listening on [::1]"));
        assert_eq!(v[3], Verdict::down("nothing listens on TCP port 9000"));

        // Without tcp6 (IPv6 disabled) the v4 table alone decides.
        fs::remove_file(dir.path().join("proc/net/tcp6")).unwrap();
        let v = run(dir.path(), &["22", "443"]);
        assert_eq!(v[0].status, MonitorStatus::Up);
        assert_eq!(v[1], Verdict::down("nothing listens on TCP port 443"));
    }

    #[test]
    fn no_tables_or_unreadable_tables_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let v = run(dir.path(), &["22"]);
        assert_eq!(
            v[0],
            Verdict::unknown("no /proc/net/tcp or tcp6 (no procfs or no IP stack)")
        );
        // tcp6 is a directory: it exists but cannot be read as a table.
        fs::create_dir_all(dir.path().join("proc/net/tcp6")).unwrap();
        fs::write(dir.path().join("proc/net/tcp"), HEADER).unwrap();
        let v = run(dir.path(), &["22"]);
        assert_eq!(v[0].status, MonitorStatus::Unknown);
        assert!(
            v[0].detail
                .starts_with("not listening in the tables read; cannot read"),
            "{v:?}"
        );
    }
}
