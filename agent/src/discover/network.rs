//! Network interfaces as `network_interface` CIs, keyed by interface name, from
//! /sys/class/net/<if> (MAC, MTU, operational state, speed, duplex, ARPHRD type, driver,
//! bond/bridge master, wireless) and the addresses configured on them.
//!
//! Addresses: on the live host, an rtnetlink address dump ([`netlink`]), which is exactly
//! what `ip addr` shows; under another host root — or when netlink fails, which makes the
//! status `partial` — /proc/net text ([`procfs`], whose module doc lists its IPv4 limits).
//! Under a host root, /proc/1/net is read before /proc/net, because /proc/net is the
//! reader's own namespace. IPv6 privacy (temporary) addresses are left out: they rotate
//! daily and would be reported as configuration drift; every other address — global, ULA,
//! link-local, deprecated — is listed as "addr/prefix" (IPv6 in RFC 5952 compressed form).
//!
//! `mac` is null when the interface has none or an all-zero one (loopback, tunnels);
//! `speed_mbps` and `duplex` are null when the kernel does not know them (a link that is
//! down answers EINVAL, virtio answers -1 / "unknown"). `virtual` is true for interfaces
//! with no device under them (/sys/devices/virtual/net/…): bridges, veths, bonds, tunnels —
//! identity.rs leaves those out of the host's MAC set.
//!
//! Never: changes an interface, runs `ip` or `ethtool`, or sends a packet.

pub mod netlink;
pub mod procfs;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use cmdb_proto::model::{AttrValue, Item, class};

use super::{Collector, Context, Outcome};
use crate::hostroot::{HostRoot, ReadError};
use crate::identity;

/// IFA_F_TEMPORARY (for IPv6; the same bit means "secondary" for IPv4, which is kept).
const IFA_F_TEMPORARY: u32 = 0x01;

/// ARPHRD_LOOPBACK.
const ARPHRD_LOOPBACK: u32 = 772;

/// How long the netlink dump may take before falling back to /proc/net.
const NETLINK_DEADLINE: Duration = Duration::from_secs(3);

pub struct NetworkCollector;

impl Collector for NetworkCollector {
    fn name(&self) -> &'static str {
        "network_interface"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::NETWORK_INTERFACE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let entries = match ctx.root.read_dir_names("/sys/class/net") {
            Ok(n) => n,
            Err(e) if e.is_not_found() => {
                return Outcome::unsupported(
                    "no /sys/class/net: no network interfaces are visible",
                );
            }
            Err(e @ ReadError::PermissionDenied(_)) => {
                let mut o = Outcome::new();
                o.permission_denied(e.to_string());
                return o;
            }
            Err(e) => return Outcome::error(e.to_string()),
        };
        let mut out = Outcome::new();
        let mut ifaces = Vec::new();
        for name in entries {
            // bonding_masters and other plain files in the directory are not interfaces;
            // interfaces are (links to) directories.
            let dir = format!("/sys/class/net/{name}");
            if !std::fs::metadata(ctx.root.path(&dir)).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let mut a = Attrs {
                root: &ctx.root,
                dir,
                out: &mut out,
            };
            let Some(ifindex) = a.u64("ifindex") else {
                continue;
            };
            let type_num = a.u64("type").and_then(|t| u32::try_from(t).ok());
            ifaces.push(Iface {
                name,
                ifindex,
                type_num,
            });
        }
        let addrs = addresses(&ctx.root, &ifaces, &mut out);
        for i in &ifaces {
            let item = interface_item(&ctx.root, i, &addrs, &mut out);
            out.push(item);
        }
        out
    }
}

struct Iface {
    name: String,
    ifindex: u64,
    type_num: Option<u32>,
}

/// Addresses per interface; a family is `None` when it could not be read at all.
#[derive(Default)]
struct Addresses {
    v4: Option<BTreeMap<String, Vec<(Ipv4Addr, u8)>>>,
    v6: Option<BTreeMap<String, Vec<(Ipv6Addr, u8)>>>,
}

fn interface_item(root: &HostRoot, i: &Iface, addrs: &Addresses, out: &mut Outcome) -> Item {
    let mut a = Attrs {
        root,
        dir: format!("/sys/class/net/{}", i.name),
        out,
    };
    let mac = a
        .text("address")
        .map(|m| m.to_ascii_lowercase())
        .filter(|m| !identity::is_placeholder(m));
    let is_virtual = root
        .read_link(&a.dir)
        .ok()
        .map(|t| t.to_string_lossy().contains("/devices/virtual/"));
    let speed = a
        .text("speed")
        .and_then(|s| s.parse::<i64>().ok())
        // -1 (and its unsigned twin on old kernels) means unknown.
        .filter(|s| *s > 0 && *s != i64::from(u32::MAX));
    let duplex = a.text("duplex").filter(|d| d != "unknown");
    let wireless = a.exists("wireless") || a.exists("phy80211");
    let list4 = addrs.v4.as_ref().map(|m| {
        m.get(&i.name)
            .map(|v| v.iter().map(|(ip, p)| format!("{ip}/{p}")).collect())
            .unwrap_or_else(Vec::new)
    });
    let list6 = addrs.v6.as_ref().map(|m| {
        m.get(&i.name)
            .map(|v| v.iter().map(|(ip, p)| format!("{ip}/{p}")).collect())
            .unwrap_or_else(Vec::new)
    });
    Item::new(class::NETWORK_INTERFACE, i.name.clone())
        .with("mac", mac)
        .with("mtu", a.u64("mtu"))
        .with("state", a.text("operstate"))
        .with("speed_mbps", speed)
        .with("duplex", duplex)
        .with("virtual", is_virtual)
        .with("type", i.type_num.map(arphrd_name))
        .with("driver", a.link_name("device/driver"))
        .with("master", a.link_name("master"))
        .with("wireless", wireless)
        .with("ipv4", list_or_null(list4))
        .with("ipv6", list_or_null(list6))
}

fn list_or_null(v: Option<Vec<String>>) -> AttrValue {
    v.map_or(AttrValue::Null, AttrValue::from)
}

/// The link type as `ip link` names it (iproute2's ll_types), else "[<number>]" as ip does.
pub fn arphrd_name(t: u32) -> String {
    let name = match t {
        0 => "netrom",
        1 => "ether",
        24 => "ieee1394",
        32 => "infiniband",
        256 => "slip",
        512 => "ppp",
        768 => "ipip",
        769 => "tunnel6",
        772 => "loopback",
        776 => "sit",
        778 => "gre",
        280 => "can",
        519 => "rawip",
        801 => "ieee802.11",
        802 => "ieee802.11/prism",
        803 => "ieee802.11/radiotap",
        804 => "ieee802.15.4",
        823 => "ip6gre",
        824 => "netlink",
        825 => "6lowpan",
        65534 => "none",
        65535 => "void",
        _ => return format!("[{t}]"),
    };
    name.to_owned()
}

fn addresses(root: &HostRoot, ifaces: &[Iface], out: &mut Outcome) -> Addresses {
    if root.is_live() {
        match netlink::dump_addresses(NETLINK_DEADLINE) {
            Ok((records, skipped)) => {
                if skipped > 0 {
                    out.warn(format!(
                        "netlink: {skipped} malformed address message(s) skipped"
                    ));
                }
                return from_netlink(&records, ifaces);
            }
            Err(e) => out.warn(format!(
                "{e}; addresses read from /proc/net instead (IPv4 attributed through routes)"
            )),
        }
    }
    from_procfs(root, ifaces, out)
}

fn from_netlink(records: &[netlink::AddrRecord], ifaces: &[Iface]) -> Addresses {
    let names: BTreeMap<u64, &str> = ifaces
        .iter()
        .map(|i| (i.ifindex, i.name.as_str()))
        .collect();
    let mut v4: BTreeMap<String, Vec<(Ipv4Addr, u8)>> = BTreeMap::new();
    let mut v6: BTreeMap<String, Vec<(Ipv6Addr, u8)>> = BTreeMap::new();
    for r in records {
        // An interface that appeared after /sys/class/net was listed: not in this pass.
        let Some(name) = names.get(&u64::from(r.index)) else {
            continue;
        };
        match r.address {
            IpAddr::V4(a) => v4
                .entry((*name).to_owned())
                .or_default()
                .push((a, r.prefix_len)),
            IpAddr::V6(a) if r.flags & IFA_F_TEMPORARY == 0 => v6
                .entry((*name).to_owned())
                .or_default()
                .push((a, r.prefix_len)),
            IpAddr::V6(_) => {}
        }
    }
    sort_lists(&mut v4);
    sort_lists(&mut v6);
    Addresses {
        v4: Some(v4),
        v6: Some(v6),
    }
}

fn sort_lists<T: Ord>(m: &mut BTreeMap<String, Vec<T>>) {
    for v in m.values_mut() {
        v.sort();
        v.dedup();
    }
}

/// Reads /proc/1/net/<file> under a host root (the host's namespace), else /proc/net/<file>.
pub(crate) fn read_proc_net(root: &HostRoot, file: &str) -> Result<(String, String), ReadError> {
    if !root.is_live() {
        let p = format!("/proc/1/net/{file}");
        match root.read_to_string(&p) {
            Ok(t) => return Ok((p, t)),
            Err(e) if e.is_not_found() || e.is_permission_denied() => {}
            Err(e) => return Err(e),
        }
    }
    let p = format!("/proc/net/{file}");
    root.read_to_string(&p).map(|t| (p, t))
}

fn from_procfs(root: &HostRoot, ifaces: &[Iface], out: &mut Outcome) -> Addresses {
    let record = |e: ReadError, out: &mut Outcome, what: &str| match e {
        ReadError::PermissionDenied(_) => out.permission_denied(format!("{e}; {what} unknown")),
        _ => out.warn(format!("{e}; {what} unknown")),
    };
    let loopback = ifaces
        .iter()
        .find(|i| i.type_num == Some(ARPHRD_LOOPBACK))
        .map(|i| i.name.as_str());

    let v4 = match (
        read_proc_net(root, "fib_trie"),
        read_proc_net(root, "route"),
    ) {
        (Ok((fib_path, fib)), Ok((route_path, route))) => {
            let (locals, bad) = procfs::parse_fib_trie(&fib);
            for b in bad {
                out.warn(format!("{fib_path} {b}"));
            }
            let (routes, bad) = procfs::parse_route(&route);
            for b in bad {
                out.warn(format!("{route_path} {b}"));
            }
            let (mut by, unmatched) = procfs::attribute_ipv4(&locals, &routes, loopback);
            if !unmatched.is_empty() {
                let list: Vec<String> = unmatched.iter().map(ToString::to_string).collect();
                out.warn(format!(
                    "local IPv4 address(es) {} have no on-link route in {route_path}: \
                     interface unknown, left out",
                    list.join(", ")
                ));
            }
            sort_lists(&mut by);
            Some(by)
        }
        (Err(e), _) | (_, Err(e)) => {
            record(e, out, "IPv4 addresses");
            None
        }
    };

    let v6 = match read_proc_net(root, "if_inet6") {
        Ok((path, text)) => {
            let (entries, bad) = procfs::parse_if_inet6(&text);
            for b in bad {
                out.warn(format!("{path} {b}"));
            }
            let mut by: BTreeMap<String, Vec<(Ipv6Addr, u8)>> = BTreeMap::new();
            for e in entries
                .into_iter()
                .filter(|e| e.flags & IFA_F_TEMPORARY == 0)
            {
                by.entry(e.iface)
                    .or_default()
                    .push((e.address, e.prefix_len));
            }
            sort_lists(&mut by);
            Some(by)
        }
        // A kernel without IPv6 (ipv6.disable=1) has no if_inet6 but does have the rest of
        // /proc/net: no IPv6 addresses, known for sure.
        Err(e) if e.is_not_found() && read_proc_net(root, "dev").is_ok() => Some(BTreeMap::new()),
        Err(e) => {
            record(e, out, "IPv6 addresses");
            None
        }
    };
    Addresses { v4, v6 }
}

/// Reads one interface's sysfs attributes. Absent → `None`; EINVAL and friends (the
/// driver does not know, e.g. the speed of a down link) → `None`; permission →
/// `permission_denied`; anything else → `partial`.
struct Attrs<'a> {
    root: &'a HostRoot,
    dir: String,
    out: &'a mut Outcome,
}

impl Attrs<'_> {
    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.dir)
    }

    fn text(&mut self, rel: &str) -> Option<String> {
        let path = self.path(rel);
        match self.root.read_trimmed(&path) {
            Ok(v) => v,
            Err(e) => {
                if let Some(msg) = unknown_or_problem(&e) {
                    match e {
                        ReadError::PermissionDenied(_) => self.out.permission_denied(msg),
                        _ => self.out.warn(msg),
                    }
                }
                None
            }
        }
    }

    fn u64(&mut self, rel: &str) -> Option<u64> {
        let v = self.text(rel)?;
        let parsed = v.parse().ok();
        if parsed.is_none() {
            let p = self.path(rel);
            self.out.warn(format!("{p}: not a number: {v:?}"));
        }
        parsed
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.exists(self.path(rel))
    }

    fn link_name(&mut self, rel: &str) -> Option<String> {
        self.root
            .read_link(self.path(rel))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }
}

/// `None` when a read error only means "the kernel does not know" (sysfs answers EINVAL,
/// ENODEV or EOPNOTSUPP for attributes a driver cannot report right now); otherwise the
/// message to report.
pub fn unknown_or_problem(e: &ReadError) -> Option<String> {
    if let ReadError::Io { source, .. } = e {
        let quiet = [
            rustix::io::Errno::INVAL,
            rustix::io::Errno::NODEV,
            rustix::io::Errno::OPNOTSUPP,
        ];
        if source
            .raw_os_error()
            .is_some_and(|code| quiet.iter().any(|q| q.raw_os_error() == code))
        {
            return None;
        }
    }
    Some(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::PathBuf;

    #[test]
    fn einval_means_unknown_but_other_errors_are_reported() {
        let einval = ReadError::Io {
            path: PathBuf::from("/sys/class/net/eno3/speed"),
            source: io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()),
        };
        assert_eq!(unknown_or_problem(&einval), None);
        let eio = ReadError::Io {
            path: PathBuf::from("/sys/class/net/eno3/speed"),
            source: io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
        };
        assert!(unknown_or_problem(&eio).is_some());
        let denied = ReadError::PermissionDenied(PathBuf::from("/x"));
        assert!(unknown_or_problem(&denied).is_some());
    }

    #[test]
    fn arphrd_names_follow_iproute2() {
        assert_eq!(arphrd_name(1), "ether");
        assert_eq!(arphrd_name(772), "loopback");
        assert_eq!(arphrd_name(65534), "none");
        assert_eq!(arphrd_name(4242), "[4242]");
    }

    #[test]
    fn netlink_records_map_to_names_without_temporary_addresses() {
        let ifaces = vec![Iface {
            name: "wlan0".into(),
            ifindex: 3,
            type_num: Some(1),
        }];
        let rec = |a: &str, p: u8, flags: u32, index: u32| netlink::AddrRecord {
            index,
            address: a.parse().unwrap(),
            prefix_len: p,
            scope: 0,
            flags,
        };
        let a = from_netlink(
            &[
                rec("192.168.1.23", 24, 0, 3),
                rec("192.168.1.99", 24, IFA_F_TEMPORARY, 3), // "secondary" for IPv4: kept
                rec("2a01:db8::1234", 64, IFA_F_TEMPORARY, 3),
                rec("2a01:db8::1", 64, 0x200, 3),
                rec("10.0.0.1", 8, 0, 99),
            ],
            &ifaces,
        );
        let v4 = a.v4.unwrap();
        assert_eq!(v4["wlan0"].len(), 2);
        assert_eq!(v4.len(), 1);
        assert_eq!(
            a.v6.unwrap()["wlan0"],
            vec![("2a01:db8::1".parse().unwrap(), 64)]
        );
    }
}
