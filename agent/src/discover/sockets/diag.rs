//! The kernel's socket tables through `NETLINK_SOCK_DIAG` (sock_diag(7)): one
//! `SOCK_DIAG_BY_FAMILY` dump per protocol and family, asking only for the states the
//! caller wants, the same question `ss` asks. Only for the live host (a netlink socket
//! talks to the agent's own network namespace, as /proc/net does).
//!
//! Why not only /proc/net/tcp: the kernel prints that file a page at a time, and every
//! read(2) after the first restarts its walk of the TCP hash table from the beginning when
//! it cannot resume, including the read that finds the end. The table is sized from the
//! machine's memory at boot (262 144 buckets on a 24 GiB machine), however few sockets
//! there are, so each minute's refresh walked it several times: about 30 % of the idle
//! agent's CPU (docs/BENCHMARKS.md, "Resident agent footprint"). A netlink dump walks it once per
//! family and resumes where it stopped; asking for LISTEN alone (the `tcp_port` monitors)
//! skips the established table altogether.
//!
//! The answers (struct inet_diag_msg, linux/inet_diag.h) are parsed by hand with every
//! length checked, on top of the shared netlink dump (`network::netlink::dump`: framing,
//! errors, deadline). A message too short to hold an inet_diag_msg, or of another family,
//! is skipped and counted. The result is the same [`SocketEntry`] the /proc parser gives.

use std::net::IpAddr;
use std::time::Duration;

use rustix::net::netlink;

use super::Protocol;
use super::proc_net::{Family, SocketEntry};
use crate::discover::network::netlink::{
    AF_INET, AF_INET6, NLMSG_HDRLEN, NetlinkError, dump, dump_request, ip_from, u32_at,
};

/// `SOCK_DIAG_BY_FAMILY`: the request, and the type of every answer.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// struct inet_diag_req_v2.
const REQ_LEN: usize = 56;
/// struct inet_diag_msg (its attributes, if any, follow it and are not read).
pub const MSG_LEN: usize = 72;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// How long one dump may take.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// The bit of state `s` in a request's state mask.
pub const fn state_bit(s: u8) -> u32 {
    1 << s
}

fn family_code(family: Family) -> u8 {
    match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

fn protocol_code(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// The dump request: every socket of `protocol` and `family` in one of `states` (a mask of
/// [`state_bit`]s), any address, no extensions.
pub fn request(seq: u32, protocol: Protocol, family: Family, states: u32) -> Vec<u8> {
    let mut m = dump_request(SOCK_DIAG_BY_FAMILY, seq, REQ_LEN);
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zero sockid.
    m.extend_from_slice(&[family_code(family), protocol_code(protocol), 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.resize(NLMSG_HDRLEN + REQ_LEN, 0);
    m
}

/// An answer that is not a socket of the family asked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed inet_diag_msg: {0}")]
pub struct BadDiag(&'static str);

/// Parses one answer's payload (struct inet_diag_msg) of a `family` dump.
pub fn parse_msg(payload: &[u8], family: Family) -> Result<SocketEntry, BadDiag> {
    let m = payload
        .get(..MSG_LEN)
        .ok_or(BadDiag("shorter than inet_diag_msg"))?;
    let code = family_code(family);
    if m[0] != code {
        return Err(BadDiag("another address family"));
    }
    let len = match family {
        Family::V4 => 4,
        Family::V6 => 16,
    };
    let addr = |at: usize| -> Result<IpAddr, BadDiag> {
        m.get(at..at + len)
            .and_then(|b| ip_from(code, b))
            .ok_or(BadDiag("address"))
    };
    // Ports are in network byte order; uid and inode in the host's.
    let port = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
    Ok(SocketEntry {
        local: addr(8)?,
        local_port: port(4),
        remote: addr(24)?,
        remote_port: port(6),
        state: m[1],
        uid: u32_at(m, 64).ok_or(BadDiag("uid"))?,
        inode: u64::from(u32_at(m, 68).ok_or(BadDiag("inode"))?),
    })
}

/// Dumps the `protocol`/`family` sockets in `states`, calling `keep` for each; returns how
/// many answers were malformed and skipped. On an error some entries may have been given
/// to `keep` already: the caller drops them before it reads the table another way.
pub fn dump_table(
    protocol: Protocol,
    family: Family,
    states: u32,
    keep: &mut dyn FnMut(SocketEntry),
) -> Result<usize, NetlinkError> {
    let mut skipped = 0;
    dump(
        Some(netlink::SOCK_DIAG),
        &|seq| request(seq, protocol, family, states),
        DEADLINE,
        &mut |kind, payload| {
            if kind == SOCK_DIAG_BY_FAMILY {
                match parse_msg(payload, family) {
                    Ok(e) => keep(e),
                    Err(_) => skipped += 1,
                }
            }
        },
    )?;
    Ok(skipped)
}

#[cfg(test)]
pub(crate) mod encode {
    //! Test-only encoder for the answers the kernel sends.
    use super::*;
    use crate::discover::network::netlink::encode::message;

    /// One answer for `e` in a `family` dump, with an attribute after the message.
    pub fn answer(seq: u32, family: Family, e: &SocketEntry) -> Vec<u8> {
        let mut p = vec![family_code(family), e.state, 0, 0];
        p.extend_from_slice(&e.local_port.to_be_bytes());
        p.extend_from_slice(&e.remote_port.to_be_bytes());
        for a in [e.local, e.remote] {
            let mut b = match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            b.resize(16, 0);
            p.extend_from_slice(&b);
        }
        p.extend_from_slice(&[0; 12]); // interface, cookie
        p.extend_from_slice(&[0; 12]); // expires, rqueue, wqueue
        p.extend_from_slice(&e.uid.to_ne_bytes());
        p.extend_from_slice(&(e.inode as u32).to_ne_bytes());
        // INET_DIAG_SHUTDOWN (8), one byte: what every answer carries.
        p.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
        message(seq, SOCK_DIAG_BY_FAMILY, 0x02, &p)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

    use proptest::prelude::*;

    use super::encode::answer;
    use super::*;
    use crate::discover::network::netlink::encode::done;
    use crate::discover::network::netlink::{Progress, parse_messages};
    use crate::discover::sockets::proc_net::{STATE_ESTABLISHED, STATE_LISTEN};

    fn entry(local: &str, lport: u16, remote: &str, rport: u16, state: u8) -> SocketEntry {
        SocketEntry {
            local: local.parse().unwrap(),
            local_port: lport,
            remote: remote.parse().unwrap(),
            remote_port: rport,
            state,
            uid: 1000,
            inode: 123_456,
        }
    }

    /// Parses datagrams as `dump_table` does.
    fn parse_all(
        datagrams: &[Vec<u8>],
        seq: u32,
        family: Family,
    ) -> Result<(Vec<SocketEntry>, usize), NetlinkError> {
        let (mut out, mut skipped) = (Vec::new(), 0);
        for d in datagrams {
            let progress = parse_messages(d, seq, &mut |kind, payload| {
                if kind == SOCK_DIAG_BY_FAMILY {
                    match parse_msg(payload, family) {
                        Ok(e) => out.push(e),
                        Err(_) => skipped += 1,
                    }
                }
            })?;
            if progress == Progress::Done {
                break;
            }
        }
        Ok((out, skipped))
    }

    #[test]
    fn the_request_asks_one_family_protocol_and_states() {
        let r = request(9, Protocol::Tcp, Family::V6, state_bit(STATE_LISTEN));
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 9);
        assert_eq!(&r[16..20], &[10, 6, 0, 0]);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 1 << 10);
        assert!(r[24..].iter().all(|b| *b == 0));
        let r = request(9, Protocol::Udp, Family::V4, !0);
        assert_eq!(&r[16..20], &[2, 17, 0, 0]);
    }

    #[test]
    fn answers_parse_to_the_entries_the_proc_parser_gives() {
        let a = entry("127.0.0.1", 8080, "0.0.0.0", 0, STATE_LISTEN);
        let b = entry("192.0.2.7", 51000, "198.51.100.1", 443, STATE_ESTABLISHED);
        let mut dg = answer(3, Family::V4, &a);
        dg.extend(answer(3, Family::V4, &b));
        dg.extend(answer(4, Family::V4, &b)); // another dump's: ignored
        let (got, skipped) = parse_all(&[dg, done(3)], 3, Family::V4).unwrap();
        assert_eq!((got, skipped), (vec![a, b], 0));

        let c = entry(
            "::ffff:10.0.0.1",
            22,
            "::ffff:10.0.0.9",
            40000,
            STATE_ESTABLISHED,
        );
        let (got, _) = parse_all(&[answer(5, Family::V6, &c), done(5)], 5, Family::V6).unwrap();
        assert_eq!(got, vec![c]);
    }

    #[test]
    fn short_and_foreign_answers_are_skipped() {
        let a = entry("127.0.0.1", 1, "0.0.0.0", 0, STATE_LISTEN);
        let mut short = answer(3, Family::V4, &a);
        // Cut the payload to 40 bytes: the header's length says 56.
        short.truncate(NLMSG_HDRLEN + 40);
        short[0..4].copy_from_slice(&((NLMSG_HDRLEN + 40) as u32).to_ne_bytes());
        let v6 = answer(3, Family::V6, &entry("::1", 1, "::", 0, STATE_LISTEN));
        let (got, skipped) = parse_all(&[short, v6, done(3)], 3, Family::V4).unwrap();
        assert!(got.is_empty());
        assert_eq!(skipped, 2);
    }

    /// The running kernel's answer holds what /proc/net/tcp holds for a listener and both
    /// ends of a connection this test makes (same addresses, ports, state, uid, inode).
    #[test]
    fn the_live_dump_agrees_with_proc_net() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let cport = client.local_addr().unwrap().port();

        let states = state_bit(STATE_LISTEN) | state_bit(STATE_ESTABLISHED);
        let mut diag = Vec::new();
        let skipped = dump_table(Protocol::Tcp, Family::V4, states, &mut |e| diag.push(e))
            .expect("sock_diag dump");
        assert_eq!(skipped, 0);
        let mut text = String::new();
        std::fs::File::open("/proc/net/tcp")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let proc: Vec<SocketEntry> = text
            .lines()
            .filter_map(|l| {
                super::super::proc_net::parse_line(l, Family::V4)
                    .ok()
                    .flatten()
            })
            .collect();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ours = |es: &[SocketEntry]| -> Vec<SocketEntry> {
            let mut v: Vec<SocketEntry> = es
                .iter()
                .filter(|e| e.state == STATE_LISTEN || e.state == STATE_ESTABLISHED)
                .filter(|e| e.local == lo && (e.local_port == port || e.local_port == cport))
                .cloned()
                .collect();
            v.sort_by_key(|e| (e.local_port, e.remote_port, e.state));
            v
        };
        let from_diag = ours(&diag);
        assert_eq!(from_diag.len(), 3, "listener and both ends: {from_diag:?}");
        assert!(
            from_diag
                .iter()
                .any(|e| e.state == STATE_LISTEN && e.inode != 0)
        );
        assert_eq!(from_diag, ours(&proc));
        // Only the states asked for.
        assert!(
            diag.iter()
                .all(|e| e.state == STATE_LISTEN || e.state == STATE_ESTABLISHED)
        );
        drop((client, server));
    }

    fn arb_ip(v6: bool) -> BoxedStrategy<IpAddr> {
        if v6 {
            any::<[u8; 16]>()
                .prop_map(|b| IpAddr::V6(Ipv6Addr::from(b)))
                .boxed()
        } else {
            any::<[u8; 4]>()
                .prop_map(|b| IpAddr::V4(Ipv4Addr::from(b)))
                .boxed()
        }
    }

    fn arb_entry(v6: bool) -> impl Strategy<Value = SocketEntry> {
        (
            arb_ip(v6),
            any::<u16>(),
            arb_ip(v6),
            any::<u16>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(local, local_port, remote, remote_port, state, uid, inode)| SocketEntry {
                    local,
                    local_port,
                    remote,
                    remote_port,
                    state,
                    uid,
                    inode: u64::from(inode),
                },
            )
    }

    proptest! {
        #[test]
        fn encoded_answers_round_trip(
            v6 in any::<bool>(),
            es in proptest::collection::vec(arb_entry(false), 0..20),
            es6 in proptest::collection::vec(arb_entry(true), 0..20),
        ) {
            let (family, es) = if v6 { (Family::V6, es6) } else { (Family::V4, es) };
            let dg: Vec<u8> = es.iter().flat_map(|e| answer(7, family, e)).collect();
            let (got, skipped) = parse_all(&[dg, done(7)], 7, family).unwrap();
            prop_assert_eq!(skipped, 0);
            prop_assert_eq!(got, es);
        }

        #[test]
        fn arbitrary_payloads_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
            let _ = parse_msg(&b, if v6 { Family::V6 } else { Family::V4 });
        }

        #[test]
        fn corrupted_dumps_never_panic(
            es in proptest::collection::vec(arb_entry(false), 1..5),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut dg: Vec<u8> = es.iter().flat_map(|e| answer(7, Family::V4, e)).collect();
            let i = flip.index(dg.len());
            dg[i] = byte;
            let _ = parse_all(&[dg, done(7)], 7, Family::V4);
        }
    }
}
