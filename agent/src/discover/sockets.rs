//! The `sockets` collector: listening ports and established TCP connections, from the
//! kernel's socket tables (this host's network namespace), with each socket's owning
//! process from the /proc/<pid>/fd links. On the live host the tables come from a
//! `NETLINK_SOCK_DIAG` dump per table (`diag`: a fraction of the kernel's work for
//! /proc/net/tcp); under another host root, or when that dump fails (said in the
//! collector's messages), from /proc/net/{tcp,tcp6,udp,udp6}. Both give the same entries.
//!
//! `listening_port`: TCP sockets in LISTEN and UDP sockets that are bound and unconnected,
//! keyed `<proto>:<address>:<port>` (IPv6 in brackets, IPv4-mapped IPv6 kept as IPv6 text:
//! `tcp:[::ffff:127.0.0.1]:8080`). Sockets sharing a key (SO_REUSEPORT) are one CI. Attrs:
//! protocol, family (ipv4/ipv6), address, port, pid, process (comm), exe, user (the socket's
//! owner uid, named from /etc/passwd; numeric when unknown).
//!
//! `connection`: established TCP, aggregated so that the key is stable across reconnects.
//! Outbound connections (the local port is not one this host listens on) are keyed by the
//! remote endpoint, `tcp:<remote>:<port>`; inbound ones, whose remote port is ephemeral, by
//! remote address and service port, `tcp:<remote>:in:<local port>`. Attrs: protocol, family,
//! direction, remote_address, remote_port (null inbound), local_port (null outbound: it is
//! ephemeral), count, loopback, process/exe (the owner with most of the connections) and
//! processes (every owner's name, sorted). Loopback connections are kept (they are real
//! dependencies). At most [`MAX_CONNECTIONS`] CIs; the rest are counted in a warning.
//!
//! Owners: `pid`/`process`/`exe` come from the fd scan; `exe` equals the process CI key so
//! relations.rs can link process `listens_on`/`connects_to`. A socket whose owner could not be
//! read for lack of privilege keeps a null owner and the collector says `permission_denied`;
//! sockets no process holds (kernel sockets) keep a null owner silently. It never guesses an
//! owner from a port number.

pub mod diag;
mod owners;
pub mod proc_net;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;

use cmdb_proto::model::{AttrValue, Item, class};

use self::proc_net::{Family, STATE_CLOSE, STATE_ESTABLISHED, STATE_LISTEN, SocketEntry};
use super::passwd::AccountNames;
use super::process::{self, Exe};
use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};

/// At most this many `connection` CIs (endpoints, after aggregation).
pub const MAX_CONNECTIONS: usize = 4096;
/// At most this many `listening_port` CIs.
pub const MAX_LISTENING: usize = 4096;
/// At most this many sockets are kept from the tables (a busy proxy can have 100 000
/// established sockets; they are counted, not all held in memory).
pub const MAX_SOCKETS: usize = 65_536;
/// Real lines are ~150 bytes; a longer one is not a socket line.
const MAX_LINE: usize = 4096;

/// The transport protocol of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

const TABLES: [(&str, Protocol, Family); 4] = [
    ("/proc/net/tcp", Protocol::Tcp, Family::V4),
    ("/proc/net/tcp6", Protocol::Tcp, Family::V6),
    ("/proc/net/udp", Protocol::Udp, Family::V4),
    ("/proc/net/udp6", Protocol::Udp, Family::V6),
];

pub struct SocketCollector;

impl Collector for SocketCollector {
    fn name(&self) -> &'static str {
        "sockets"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::LISTENING_PORT, class::CONNECTION]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        collect(&ctx.root)
    }
}

/// A socket kept from the tables.
#[derive(Clone, Debug)]
struct Socket {
    protocol: Protocol,
    family: Family,
    entry: SocketEntry,
}

impl Socket {
    fn is_listening(&self) -> bool {
        match self.protocol {
            Protocol::Tcp => self.entry.state == STATE_LISTEN,
            // ss -l shows UDP sockets in CLOSE, i.e. not connected; connect() would have set
            // a remote and ESTABLISHED.
            Protocol::Udp => {
                self.entry.state == STATE_CLOSE
                    && self.entry.remote.is_unspecified()
                    && self.entry.remote_port == 0
            }
        }
    }

    fn is_established_tcp(&self) -> bool {
        self.protocol == Protocol::Tcp && self.entry.state == STATE_ESTABLISHED
    }
}

/// The process holding a socket.
#[derive(Clone, Debug, Default)]
struct Owner {
    pid: Option<u32>,
    process: Option<String>,
    exe: Option<String>,
}

fn collect(root: &HostRoot) -> Outcome {
    let mut out = Outcome::new();
    let mut sockets = Vec::new();
    let mut any_table = false;
    let mut dropped_sockets = 0usize;
    for (path, protocol, family) in TABLES {
        if root.is_live() {
            let (kept, dropped) = (sockets.len(), dropped_sockets);
            // Only the states kept above: the kernel skips the rest.
            let states = match protocol {
                Protocol::Tcp => diag::state_bit(STATE_LISTEN) | diag::state_bit(STATE_ESTABLISHED),
                Protocol::Udp => diag::state_bit(STATE_CLOSE),
            };
            let mut keep = |entry| {
                keep_socket(&mut sockets, &mut dropped_sockets, protocol, family, entry);
            };
            match diag::dump_table(protocol, family, states, &mut keep) {
                Ok(skipped) => {
                    if skipped > 0 {
                        out.warn(format!(
                            "sock_diag {} {}: {skipped} malformed answer(s) skipped",
                            protocol.as_str(),
                            family.as_str()
                        ));
                    }
                    any_table = true;
                    continue;
                }
                Err(e) => {
                    // What the failed dump gave is dropped: the file is read whole, and
                    // nothing is lost if it reads (the status stays as the file makes it).
                    sockets.truncate(kept);
                    dropped_sockets = dropped;
                    out.note(format!("{e}; {path} read instead"));
                }
            }
        }
        let keep = |entry| {
            keep_socket(&mut sockets, &mut dropped_sockets, protocol, family, entry);
        };
        let read = read_table(root, path, family, keep, |b| {
            out.warn(format!("{path} {b}"));
        });
        match read {
            Ok(()) => any_table = true,
            // tcp6/udp6 are absent when IPv6 is disabled; all four absent is handled below.
            Err(e) if e.is_not_found() => {}
            Err(e) if e.is_permission_denied() => {
                any_table = true;
                out.permission_denied(e.to_string());
            }
            Err(e) => {
                any_table = true;
                out.warn(e.to_string());
            }
        }
    }
    if !any_table {
        return Outcome::unsupported(
            "no /proc/net/tcp, tcp6, udp or udp6 (no procfs or no IP stack)",
        );
    }
    if dropped_sockets > 0 {
        out.warn(format!(
            "kept {MAX_SOCKETS} sockets, {dropped_sockets} more not inventoried"
        ));
    }

    let owners = resolve_owners(root, &sockets, &mut out);
    let names = AccountNames::load(root).unwrap_or_else(|e| {
        out.warn(format!("user names unavailable, uids shown: {e}"));
        AccountNames::default()
    });
    let owner_of = |s: &Socket| owners.get(&s.entry.inode).cloned().unwrap_or_default();

    listening_items(&sockets, &owner_of, &names, &mut out);
    connection_items(&sockets, &owner_of, &mut out);
    out
}

/// Keeps a listening or established socket of a table, up to [`MAX_SOCKETS`] (the rest
/// are counted in `dropped`).
fn keep_socket(
    sockets: &mut Vec<Socket>,
    dropped: &mut usize,
    protocol: Protocol,
    family: Family,
    entry: SocketEntry,
) {
    let s = Socket {
        protocol,
        family,
        entry,
    };
    if !(s.is_listening() || s.is_established_tcp()) {
        return;
    }
    if sockets.len() < MAX_SOCKETS {
        sockets.push(s);
    } else {
        *dropped += 1;
    }
}

/// TCP listeners on some ports, from the tables as the collector reads them (the `tcp_port`
/// monitors).
#[derive(Debug, Default)]
pub struct TcpListeners {
    /// Port → the local addresses listening on it (wanted ports only).
    pub by_port: BTreeMap<u16, BTreeSet<IpAddr>>,
    /// Tables that exist but could not be read, with why; an absent tcp6 (IPv6 disabled)
    /// is not listed.
    pub unreadable: Vec<String>,
    /// At least one table was read.
    pub any_table: bool,
}

/// Which of `ports` have a TCP socket in LISTEN, IPv4 or IPv6. Malformed lines are skipped:
/// a monitor reports a status, not the table's health (the `sockets` collector does that).
pub fn tcp_listeners(root: &HostRoot, ports: &BTreeSet<u16>) -> TcpListeners {
    let mut out = TcpListeners::default();
    for (path, protocol, family) in TABLES {
        if protocol != Protocol::Tcp {
            continue;
        }
        let by_port = &mut out.by_port;
        let mut keep = |e: SocketEntry| {
            if e.state == STATE_LISTEN && ports.contains(&e.local_port) {
                by_port.entry(e.local_port).or_default().insert(e.local);
            }
        };
        // Listeners only: the kernel does not walk its established sockets at all. What a
        // failed dump gave is kept (a set: the file's entries add nothing twice).
        if root.is_live()
            && diag::dump_table(protocol, family, diag::state_bit(STATE_LISTEN), &mut keep).is_ok()
        {
            out.any_table = true;
            continue;
        }
        match read_table(root, path, family, keep, |_| {}) {
            Ok(()) => out.any_table = true,
            Err(e) if e.is_not_found() => {}
            Err(e) => out.unreadable.push(e.to_string()),
        }
    }
    out
}

/// Streams one table through [`proc_net::parse_line`], calling `keep` for each entry and
/// `bad` for each malformed line, holding one line (at most [`MAX_LINE`] bytes) at a time.
fn read_table(
    root: &HostRoot,
    path: &str,
    family: Family,
    mut keep: impl FnMut(SocketEntry),
    mut bad: impl FnMut(proc_net::BadLine),
) -> Result<(), ReadError> {
    let real = root.path(path);
    let io_err = |e| ReadError::from_io(&real, e);
    let mut reader = BufReader::new(File::open(&real).map_err(io_err)?);
    let mut buf = Vec::with_capacity(256);
    for line in 1.. {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .map_err(io_err)?;
        if n == 0 {
            break;
        }
        if !buf.ends_with(b"\n") && n == MAX_LINE {
            skip_line(&mut reader).map_err(io_err)?;
            bad(proc_net::BadLine {
                line,
                reason: "line too long",
            });
            continue;
        }
        match proc_net::parse_line(&String::from_utf8_lossy(&buf), family) {
            Ok(Some(e)) => keep(e),
            Ok(None) => {}
            Err(reason) => bad(proc_net::BadLine { line, reason }),
        }
    }
    Ok(())
}

/// Consumes input up to and including the next newline without buffering it.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = chunk.len();
                reader.consume(len);
            }
        }
    }
}

/// inode → owner, for every kept socket a process holds.
fn resolve_owners(root: &HostRoot, sockets: &[Socket], out: &mut Outcome) -> HashMap<u64, Owner> {
    let wanted: HashSet<u64> = sockets
        .iter()
        .map(|s| s.entry.inode)
        .filter(|i| *i != 0)
        .collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    let pids = match process::list_pids(root, process::MAX_PIDS) {
        Ok((pids, _)) => pids,
        Err(e) => {
            out.warn(format!("socket owners unknown: {e}"));
            return HashMap::new();
        }
    };
    let scan = owners::scan(root, &pids, &wanted);
    let unresolved = wanted.len() - scan.owners.len();
    if scan.capped {
        out.warn(format!(
            "stopped after {} descriptor links; {unresolved} socket owners unknown",
            owners::MAX_FD_LINKS
        ));
    }
    if unresolved > 0 && scan.denied > 0 {
        out.permission_denied(format!(
            "sockets without a known owner: {unresolved}; processes whose descriptors are unreadable: {} ({})",
            scan.denied,
            process::denied_hint("socket owners")
        ));
    }
    let mut info: HashMap<u32, Owner> = HashMap::new();
    let mut resolved = HashMap::with_capacity(scan.owners.len());
    for (inode, pid) in scan.owners {
        let owner = info
            .entry(pid)
            .or_insert_with(|| Owner {
                pid: Some(pid),
                process: process::read_comm(root, pid),
                exe: process::read_exe(root, pid)
                    .ok()
                    .flatten()
                    .map(|Exe { path, .. }| path),
            })
            .clone();
        resolved.insert(inode, owner);
    }
    resolved
}

/// `0.0.0.0` / `[::1]`: the host part of a key.
pub fn host_text(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn listening_items(
    sockets: &[Socket],
    owner_of: &impl Fn(&Socket) -> Owner,
    names: &AccountNames,
    out: &mut Outcome,
) {
    // key → (socket, owner); among SO_REUSEPORT twins the lowest known pid wins.
    let mut by_key: BTreeMap<String, (&Socket, Owner)> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.is_listening()) {
        let key = format!(
            "{}:{}:{}",
            s.protocol.as_str(),
            host_text(&s.entry.local),
            s.entry.local_port
        );
        let owner = owner_of(s);
        match by_key.get_mut(&key) {
            Some(existing) => {
                let better = match (owner.pid, existing.1.pid) {
                    (Some(a), Some(b)) => a < b,
                    (Some(_), None) => true,
                    _ => false,
                };
                if better {
                    *existing = (s, owner);
                }
            }
            None => {
                by_key.insert(key, (s, owner));
            }
        }
    }
    let total = by_key.len();
    for (key, (s, owner)) in by_key.into_iter().take(MAX_LISTENING) {
        out.push(
            Item::new(class::LISTENING_PORT, key)
                .with("protocol", s.protocol.as_str())
                .with("family", s.family.as_str())
                .with("address", s.entry.local.to_string())
                .with("port", i64::from(s.entry.local_port))
                .with("pid", owner.pid)
                .with("process", owner.process)
                .with("exe", owner.exe)
                .with("user", names.user(s.entry.uid)),
        );
    }
    if total > MAX_LISTENING {
        out.warn(format!(
            "{} listening ports not inventoried (limit {MAX_LISTENING})",
            total - MAX_LISTENING
        ));
    }
}

/// (exe, process) of a socket's owner.
type OwnerName = (Option<String>, Option<String>);

/// One aggregated connection CI under construction.
struct Endpoint {
    family: Family,
    inbound: bool,
    remote: IpAddr,
    remote_port: u16,
    local_port: u16,
    count: u64,
    /// (exe, process) → connections, for sockets with a known owner.
    by_owner: BTreeMap<OwnerName, u64>,
}

fn connection_items(sockets: &[Socket], owner_of: &impl Fn(&Socket) -> Owner, out: &mut Outcome) {
    // Ports this host listens on, with the addresses (a wildcard listener takes any).
    let mut listening: HashMap<u16, Vec<IpAddr>> = HashMap::new();
    for s in sockets
        .iter()
        .filter(|s| s.protocol == Protocol::Tcp && s.is_listening())
    {
        listening
            .entry(s.entry.local_port)
            .or_default()
            .push(s.entry.local.to_canonical());
    }
    let is_inbound = |s: &Socket| {
        listening.get(&s.entry.local_port).is_some_and(|addrs| {
            let local = s.entry.local.to_canonical();
            addrs.iter().any(|a| a.is_unspecified() || *a == local)
        })
    };

    let mut by_key: BTreeMap<String, Endpoint> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.is_established_tcp()) {
        let inbound = is_inbound(s);
        let remote = host_text(&s.entry.remote);
        let key = if inbound {
            format!("tcp:{remote}:in:{}", s.entry.local_port)
        } else {
            format!("tcp:{remote}:{}", s.entry.remote_port)
        };
        let ep = by_key.entry(key).or_insert_with(|| Endpoint {
            family: s.family,
            inbound,
            remote: s.entry.remote,
            remote_port: s.entry.remote_port,
            local_port: s.entry.local_port,
            count: 0,
            by_owner: BTreeMap::new(),
        });
        ep.count += 1;
        let owner = owner_of(s);
        if owner.exe.is_some() || owner.process.is_some() {
            *ep.by_owner.entry((owner.exe, owner.process)).or_default() += 1;
        }
    }

    let total = by_key.len();
    for (key, ep) in by_key.into_iter().take(MAX_CONNECTIONS) {
        // The owner with most connections; on a tie the first in (exe, process) order.
        let mut top: Option<(&OwnerName, u64)> = None;
        for (who, n) in &ep.by_owner {
            if top.is_none_or(|(_, best)| *n > best) {
                top = Some((who, *n));
            }
        }
        let (exe, process) = top.map(|(w, _)| w.clone()).unwrap_or_default();
        let processes: BTreeSet<String> = ep
            .by_owner
            .keys()
            .filter_map(|(exe, comm)| {
                comm.clone().or_else(|| {
                    exe.as_deref()
                        .and_then(|e| e.rsplit('/').next())
                        .map(str::to_owned)
                })
            })
            .collect();
        let (remote_port, local_port): (AttrValue, AttrValue) = if ep.inbound {
            (AttrValue::Null, i64::from(ep.local_port).into())
        } else {
            (i64::from(ep.remote_port).into(), AttrValue::Null)
        };
        out.push(
            Item::new(class::CONNECTION, key)
                .with("protocol", "tcp")
                .with("family", ep.family.as_str())
                .with("direction", if ep.inbound { "inbound" } else { "outbound" })
                .with("remote_address", ep.remote.to_string())
                .with("remote_port", remote_port)
                .with("local_port", local_port)
                .with("count", ep.count)
                .with("loopback", ep.remote.to_canonical().is_loopback())
                .with("process", process)
                .with("exe", exe)
                .with("processes", processes.into_iter().collect::<Vec<_>>()),
        );
    }
    if total > MAX_CONNECTIONS {
        out.warn(format!(
            "{} connection endpoints not inventoried (limit {MAX_CONNECTIONS})",
            total - MAX_CONNECTIONS
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the live host the collector reads the tables through sock_diag; read through
    /// procfs instead (the same host under another root path), this test's sockets give the
    /// same CIs: a TCP listener, both ends of a connection to it, an unconnected UDP socket.
    #[test]
    fn the_live_host_gives_the_same_cis_from_netlink_and_from_procfs() {
        use std::net::{TcpListener, TcpStream, UdpSocket};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();

        let ours = |o: Outcome| -> Vec<(String, String, String)> {
            let mut v: Vec<_> = o
                .items
                .into_iter()
                .filter(|i| {
                    i.key.ends_with(&format!(":{port}")) || i.key.ends_with(&format!(":{uport}"))
                })
                .map(|i| (i.class.clone(), i.key.clone(), format!("{:?}", i.attrs)))
                .collect();
            v.sort();
            v
        };
        let live = HostRoot::new("/");
        assert!(live.is_live());
        let procfs = HostRoot::new("/proc/self/root");
        assert!(!procfs.is_live());
        let via_netlink = ours(collect(&live));
        let via_procfs = ours(collect(&procfs));
        let keys: Vec<(&str, &str)> = via_netlink
            .iter()
            .map(|(c, k, _)| (c.as_str(), k.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("connection", format!("tcp:127.0.0.1:{port}").as_str()),
                ("connection", format!("tcp:127.0.0.1:in:{port}").as_str()),
                ("listening_port", format!("tcp:127.0.0.1:{port}").as_str()),
                ("listening_port", format!("udp:127.0.0.1:{uport}").as_str()),
            ]
        );
        assert_eq!(via_netlink, via_procfs);
        drop((client, server, udp));
    }

    #[test]
    fn overlong_lines_are_skipped_without_losing_the_next() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        let good = "   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n";
        let text = format!("{}\n{good}", "x".repeat(3 * MAX_LINE));
        std::fs::write(dir.path().join("proc/net/tcp"), text).unwrap();
        let (mut kept, mut bad) = (Vec::new(), Vec::new());
        read_table(
            &HostRoot::new(dir.path()),
            "/proc/net/tcp",
            Family::V4,
            |e| kept.push(e),
            |b| bad.push(b),
        )
        .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].local_port, 22);
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].line, bad[0].reason), (1, "line too long"));
    }

    #[test]
    fn udp_listens_only_when_unconnected() {
        let entry = |state, remote: [u8; 4], remote_port| Socket {
            protocol: Protocol::Udp,
            family: Family::V4,
            entry: SocketEntry {
                local: IpAddr::from([0, 0, 0, 0]),
                local_port: 68,
                remote: IpAddr::from(remote),
                remote_port,
                state,
                uid: 0,
                inode: 1,
            },
        };
        assert!(entry(STATE_CLOSE, [0, 0, 0, 0], 0).is_listening());
        assert!(!entry(STATE_ESTABLISHED, [192, 0, 2, 1], 123).is_listening());
        assert!(!entry(STATE_ESTABLISHED, [192, 0, 2, 1], 123).is_established_tcp());
    }

    #[test]
    fn no_tables_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let out = collect(&HostRoot::new(dir.path()));
        assert_eq!(out.state(), cmdb_proto::model::CollectorState::Unsupported);
    }
}
