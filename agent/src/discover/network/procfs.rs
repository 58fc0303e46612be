//! Interface addresses from /proc/net text, for host roots that are not the live host
//! (where a netlink socket would describe the agent's own namespace) and as the fallback
//! when netlink fails.
//!
//! - IPv6 comes from /proc/net/if_inet6, which lists every address with its interface,
//!   prefix length and flags: complete.
//! - IPv4 has no such file. The local addresses are the `/32 host LOCAL` leaves of
//!   /proc/net/fib_trie, and each is given the interface and prefix length of the
//!   longest on-link (non-gateway) route in /proc/net/route that contains it. Limits: an
//!   address without an on-link route of its own — a /32 (VIP, keepalived, WireGuard peer
//!   addresses), or any address of an interface that is down (the kernel removes its
//!   routes) — cannot be attributed and is left out (the collector says so); addresses in
//!   127.0.0.0/8 are given to the loopback interface with the prefix of their local route;
//!   with two interfaces in one subnet, both addresses go to the route's interface; only
//!   the main routing table is in /proc/net/route.
//!
//! Every parser is pure and skips malformed lines with a [`BadLine`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A /proc/net line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: &'static str,
}

/// A `LOCAL` leaf of the FIB: a local address (/32) or a local subnet (127.0.0.0/8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FibLocal {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// Parses /proc/net/fib_trie, returning its `LOCAL` entries (all tables), sorted, unique.
///
/// ```text
/// Local:
///   +-- 0.0.0.0/0 3 0 5
///      +-- 192.0.2.0/24 2 0 2
///         |-- 192.0.2.2
///            /32 host LOCAL
/// ```
pub fn parse_fib_trie(text: &str) -> (Vec<FibLocal>, Vec<BadLine>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let fail = |reason| BadLine {
            line: n + 1,
            reason,
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("|-- ") {
            match rest.trim().parse::<Ipv4Addr>() {
                Ok(a) => leaf = Some(a),
                Err(_) => {
                    leaf = None;
                    bad.push(fail("leaf is not an IPv4 address"));
                }
            }
        } else if line.starts_with("+-- ") || line.ends_with(':') {
            // An inner node or a table header ("Main:", "Local:", "Id 100:").
            leaf = None;
        } else if let Some(info) = line.strip_prefix('/') {
            let mut f = info.split_ascii_whitespace();
            let (Some(len), Some(_scope), Some(kind)) = (f.next(), f.next(), f.next()) else {
                bad.push(fail("route entry is not \"/len scope type\""));
                continue;
            };
            let Some(address) = leaf else {
                bad.push(fail("route entry without a leaf address"));
                continue;
            };
            let Ok(prefix_len) = len.parse::<u8>() else {
                bad.push(fail("prefix length is not a number"));
                continue;
            };
            if prefix_len > 32 {
                bad.push(fail("prefix length above 32"));
                continue;
            }
            if kind == "LOCAL" {
                out.push(FibLocal {
                    address,
                    prefix_len,
                });
            }
        } else {
            bad.push(fail("unrecognised line"));
        }
    }
    out.sort();
    out.dedup();
    (out, bad)
}

/// `RTF_GATEWAY`: the route goes through a router, so it says nothing about on-link
/// addresses.
pub const RTF_GATEWAY: u16 = 0x0002;

/// One /proc/net/route entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub destination: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub flags: u16,
    pub metric: u32,
    pub prefix_len: u8,
}

/// Parses /proc/net/route. Addresses are printed as the hex of the network-order word
/// read in the host's byte order, so they are decoded with the host's byte order too
/// (the file always comes from the machine the agent runs on).
pub fn parse_route(text: &str) -> (Vec<Route>, Vec<BadLine>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with("Iface") {
            continue;
        }
        let fail = |reason| BadLine {
            line: n + 1,
            reason,
        };
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 8 {
            bad.push(fail("fewer than 8 fields"));
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else {
            bad.push(fail("destination, gateway or mask is not hex"));
            continue;
        };
        let (Ok(flags), Ok(metric)) = (u16::from_str_radix(f[3], 16), f[6].parse::<u32>()) else {
            bad.push(fail("flags or metric is not a number"));
            continue;
        };
        let mask = u32::from(Ipv4Addr::from(mask.to_ne_bytes()));
        if mask.leading_ones() + mask.trailing_zeros() != 32 {
            bad.push(fail("mask is not a contiguous prefix"));
            continue;
        }
        out.push(Route {
            iface: f[0].to_owned(),
            destination: Ipv4Addr::from(dest.to_ne_bytes()),
            gateway: Ipv4Addr::from(gw.to_ne_bytes()),
            flags,
            metric,
            prefix_len: mask.leading_ones() as u8,
        });
    }
    (out, bad)
}

/// One /proc/net/if_inet6 entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inet6Entry {
    pub address: Ipv6Addr,
    pub ifindex: u32,
    pub prefix_len: u8,
    pub scope: u32,
    /// IFA_F_* flags (0x01 temporary, 0x80 permanent, …).
    pub flags: u32,
    pub iface: String,
}

/// Parses /proc/net/if_inet6: `address(32 hex) ifindex prefixlen scope flags name`, all hex.
pub fn parse_if_inet6(text: &str) -> (Vec<Inet6Entry>, Vec<BadLine>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason| BadLine {
            line: n + 1,
            reason,
        };
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() != 6 {
            bad.push(fail("expected 6 fields"));
            continue;
        }
        if f[0].len() != 32 {
            bad.push(fail("address is not 32 hex digits"));
            continue;
        }
        let Ok(addr) = u128::from_str_radix(f[0], 16) else {
            bad.push(fail("address is not hex"));
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(ifindex), Some(prefix), Some(scope), Some(flags)) =
            (hex(f[1]), hex(f[2]), hex(f[3]), hex(f[4]))
        else {
            bad.push(fail("index, prefix, scope or flags is not hex"));
            continue;
        };
        let Some(prefix_len) = u8::try_from(prefix).ok().filter(|p| *p <= 128) else {
            bad.push(fail("prefix length above 128"));
            continue;
        };
        out.push(Inet6Entry {
            address: Ipv6Addr::from(addr),
            ifindex,
            prefix_len,
            scope,
            flags,
            iface: f[5].to_owned(),
        });
    }
    (out, bad)
}

/// IPv4 addresses with prefix length, per interface name.
pub type Ipv4ByIface = BTreeMap<String, Vec<(Ipv4Addr, u8)>>;

/// IPv4 addresses per interface name, and the local addresses no interface could be found
/// for (see the module doc).
pub fn attribute_ipv4(
    locals: &[FibLocal],
    routes: &[Route],
    loopback: Option<&str>,
) -> (Ipv4ByIface, Vec<Ipv4Addr>) {
    let mut by_iface = Ipv4ByIface::new();
    let mut unmatched = Vec::new();
    let contains = |net: Ipv4Addr, len: u8, a: Ipv4Addr| {
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len.min(32)))
        };
        u32::from(a) & mask == u32::from(net) & mask
    };
    for local in locals.iter().filter(|l| l.prefix_len == 32) {
        let a = local.address;
        let best = routes
            .iter()
            .filter(|r| r.flags & RTF_GATEWAY == 0 && contains(r.destination, r.prefix_len, a))
            // Longest prefix, then lowest metric, then the first listed.
            .min_by_key(|r| (std::cmp::Reverse(r.prefix_len), r.metric));
        if let Some(r) = best {
            by_iface
                .entry(r.iface.clone())
                .or_default()
                .push((a, r.prefix_len));
            continue;
        }
        let subnet = locals
            .iter()
            .filter(|l| l.prefix_len < 32 && contains(l.address, l.prefix_len, a))
            .max_by_key(|l| l.prefix_len);
        match (subnet, loopback) {
            (Some(s), Some(lo)) if a.is_loopback() => {
                by_iface
                    .entry(lo.to_owned())
                    .or_default()
                    .push((a, s.prefix_len));
            }
            _ => unmatched.push(a),
        }
    }
    for v in by_iface.values_mut() {
        v.sort();
        v.dedup();
    }
    (by_iface, unmatched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 192.0.2.0/30 2 0 2
        |-- 192.0.2.2
           /32 host LOCAL
";

    // Captured on x86_64 (little endian), as the fixtures are.
    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn fib_trie_locals() {
        let (l, bad) = parse_fib_trie(FIB_TRIE);
        assert!(bad.is_empty(), "{bad:?}");
        let got: Vec<String> = l
            .iter()
            .map(|x| format!("{}/{}", x.address, x.prefix_len))
            .collect();
        assert_eq!(got, vec!["127.0.0.0/8", "127.0.0.1/32", "192.0.2.2/32"]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn routes_and_attribution() {
        let (r, bad) = parse_route(ROUTE);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(r[0].gateway, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(r[1].destination, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(r[1].prefix_len, 24);
        let (l, _) = parse_fib_trie(FIB_TRIE);
        let (by, unmatched) = attribute_ipv4(&l, &r, Some("lo"));
        assert_eq!(by["eth0"], vec![(Ipv4Addr::new(192, 0, 2, 2), 24)]);
        assert_eq!(by["lo"], vec![(Ipv4Addr::LOCALHOST, 8)]);
        assert!(unmatched.is_empty());
    }

    #[test]
    fn unroutable_addresses_are_reported_unmatched() {
        let l = [FibLocal {
            address: Ipv4Addr::new(10, 9, 9, 9),
            prefix_len: 32,
        }];
        let (by, unmatched) = attribute_ipv4(&l, &[], Some("lo"));
        assert!(by.is_empty());
        assert_eq!(unmatched, vec![Ipv4Addr::new(10, 9, 9, 9)]);
    }

    #[test]
    fn if_inet6_entries() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
zz 04 40 00 82 eth0
";
        let (e, bad) = parse_if_inet6(text);
        assert_eq!(bad.len(), 1);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].address, Ipv6Addr::LOCALHOST);
        assert_eq!(e[0].prefix_len, 128);
        assert_eq!(e[1].address.to_string(), "fe80::fc:ff:fe00:1");
        assert_eq!(
            (e[2].ifindex, e[2].flags, e[2].iface.as_str()),
            (4, 0x82, "eth0")
        );
    }

    #[test]
    fn malformed_lines_are_reported() {
        let (_, bad) = parse_fib_trie("Main:\n  /32 host LOCAL\n  |-- nonsense\n ???\n");
        assert_eq!(bad.len(), 3);
        let (r, bad) = parse_route("Iface\tx\neth0 zz 0 0 0 0 0 0\neth0 0 0 1 0 0 0 00FF00FF\n");
        assert!(r.is_empty());
        assert_eq!(bad.len(), 2);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_fib_trie(&s);
            let _ = parse_route(&s);
            let _ = parse_if_inet6(&s);
        }

        #[test]
        fn if_inet6_round_trips(addr in any::<u128>(), idx in 1_u32..100_000, p in 0_u8..=128, flags in any::<u8>()) {
            let line = format!("{addr:032x} {idx:02x} {p:02x} 00 {flags:02x} eth0\n");
            let (e, bad) = parse_if_inet6(&line);
            prop_assert!(bad.is_empty());
            prop_assert_eq!(e[0].address, Ipv6Addr::from(addr));
            prop_assert_eq!((e[0].ifindex, e[0].prefix_len, e[0].flags), (idx, p, u32::from(flags)));
        }

        #[test]
        fn route_round_trips(dest in any::<[u8; 4]>(), len in 0_u8..=32) {
            let mask: u32 = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            let mask_word = u32::from_ne_bytes(mask.to_be_bytes());
            let dest_word = u32::from_ne_bytes(dest);
            let line = format!("eth1\t{dest_word:08X}\t00000000\t0001\t0\t0\t100\t{mask_word:08X}\t0\t0\t0\n");
            let (r, bad) = parse_route(&line);
            prop_assert!(bad.is_empty());
            prop_assert_eq!(r[0].destination, Ipv4Addr::from(dest));
            prop_assert_eq!(r[0].prefix_len, len);
            prop_assert_eq!(r[0].metric, 100);
        }

        #[test]
        fn fib_locals_are_found_among_noise(a in any::<[u8; 4]>(), noise in "[ +|a-z0-9./-]{0,30}") {
            let ip = Ipv4Addr::from(a);
            let text = format!("Local:\n  +-- 0.0.0.0/0 3 0 5\n{noise}\n     |-- {ip}\n        /32 host LOCAL\n");
            let (l, _) = parse_fib_trie(&text);
            let want = FibLocal { address: ip, prefix_len: 32 };
            prop_assert!(l.contains(&want));
        }

        #[test]
        fn attribution_never_panics(
            locals in proptest::collection::vec((any::<[u8; 4]>(), 0_u8..=32), 0..10),
            routes in proptest::collection::vec((any::<[u8; 4]>(), 0_u8..=32, any::<u16>()), 0..10),
        ) {
            let locals: Vec<FibLocal> = locals.into_iter().map(|(a, p)| FibLocal { address: a.into(), prefix_len: p }).collect();
            let routes: Vec<Route> = routes.into_iter().map(|(d, p, f)| Route {
                iface: "x".into(), destination: d.into(), gateway: Ipv4Addr::UNSPECIFIED, flags: f, metric: 0, prefix_len: p,
            }).collect();
            let (by, unmatched) = attribute_ipv4(&locals, &routes, Some("lo"));
            let n: usize = by.values().map(Vec::len).sum::<usize>() + unmatched.len();
            prop_assert!(n <= locals.iter().filter(|l| l.prefix_len == 32).count());
        }
    }
}
