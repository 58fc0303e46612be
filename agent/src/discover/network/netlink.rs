//! Interface addresses from the running kernel: one rtnetlink `RTM_GETADDR` dump over a
//! `NETLINK_ROUTE` socket (rtnetlink(7)), the same question `ip addr` asks. The messages are
//! parsed by hand with every length checked against the bytes actually received; a
//! malformed frame ends the dump with an error, a malformed address message is skipped and
//! counted. The socket has a receive timeout and the whole dump a deadline, so a kernel that
//! never answers cannot hang the collector.
//!
//! The dump itself ([`dump`]: socket, request, framing, errors, deadline) is shared with the
//! socket tables' `NETLINK_SOCK_DIAG` dump (`discover/sockets/diag.rs`).
//!
//! Only for the live host: a netlink socket talks to the agent's own network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use rustix::net::{
    AddressFamily, Protocol, RecvFlags, SendFlags, SocketFlags, SocketType, bind, recv, sendto,
    socket_with,
};

pub const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTA_HDRLEN: usize = 4;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;

const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// Attribute type bits that are flags, not part of the type (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Receive buffer: the kernel sends dump batches of at most 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;
/// A dump bigger than this is refused (a host with ~10^5 addresses is not plausible; a
/// socket table of 65 536 sockets, the most the sockets collector keeps, is ~7 MiB).
const MAX_DUMP_BYTES: usize = 16 * 1024 * 1024;

/// One address, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrRecord {
    /// The interface index (`/sys/class/net/<if>/ifindex`).
    pub index: u32,
    /// The local address (IFA_LOCAL, else IFA_ADDRESS — they differ only on point-to-point
    /// links, where IFA_ADDRESS is the peer).
    pub address: IpAddr,
    pub prefix_len: u8,
    pub scope: u8,
    /// IFA_F_* flags (IFA_FLAGS when present: it carries the bits that do not fit in 8).
    pub flags: u32,
}

/// Why the netlink dump could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be created, configured or bound.
    #[error("netlink socket: {0}")]
    Socket(Errno),
    /// The request could not be sent.
    #[error("netlink send: {0}")]
    Send(Errno),
    /// Receiving failed.
    #[error("netlink receive: {0}")]
    Recv(Errno),
    /// The kernel did not finish the dump in time.
    #[error("netlink dump did not finish within {0:?}")]
    Timeout(Duration),
    /// The kernel answered with an error.
    #[error("kernel refused the dump (errno {0})")]
    Kernel(i32),
    /// A frame was inconsistent with the bytes received.
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
    /// The dump exceeded [`MAX_DUMP_BYTES`].
    #[error("netlink dump larger than {0} bytes")]
    TooLarge(usize),
    /// What was dumped changed while the kernel was dumping (NLM_F_DUMP_INTR).
    #[error("the dump was interrupted by a concurrent change")]
    Interrupted,
}

/// Whether a datagram ended the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

/// Dumps every address of every interface. Retries once if a concurrent change
/// interrupted the dump. `deadline` bounds each attempt.
pub fn dump_addresses(deadline: Duration) -> Result<(Vec<AddrRecord>, usize), NetlinkError> {
    match addresses_once(deadline) {
        Err(NetlinkError::Interrupted) => addresses_once(deadline),
        other => other,
    }
}

fn addresses_once(deadline: Duration) -> Result<(Vec<AddrRecord>, usize), NetlinkError> {
    let mut records = Vec::new();
    let mut skipped = 0;
    dump(None, &request, deadline, &mut |kind, payload| {
        take_address(kind, payload, &mut records, &mut skipped);
    })?;
    Ok((records, skipped))
}

/// An answer of the address dump: an address into `out`, a malformed one counted.
fn take_address(kind: u16, payload: &[u8], out: &mut Vec<AddrRecord>, skipped: &mut usize) {
    if kind == RTM_NEWADDR {
        match parse_ifaddr(payload) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(_) => *skipped += 1,
        }
    }
}

/// One dump over a new netlink socket of `protocol` (`None`: `NETLINK_ROUTE`): sends
/// `request(seq)`, hands each answer message to `on_message(type, payload)`, returns at
/// NLMSG_DONE. A dump that a concurrent change interrupted is
/// [`NetlinkError::Interrupted`]: the caller starts again with fresh results. `deadline`
/// bounds the whole dump.
pub fn dump(
    protocol: Option<Protocol>,
    request: &dyn Fn(u32) -> Vec<u8>,
    deadline: Duration,
    on_message: &mut dyn FnMut(u16, &[u8]),
) -> Result<(), NetlinkError> {
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        protocol,
    )
    .map_err(NetlinkError::Socket)?;
    set_socket_timeout(&fd, Timeout::Recv, Some(Duration::from_millis(250)))
        .map_err(NetlinkError::Socket)?;
    let kernel = SocketAddrNetlink::new(0, 0);
    bind(&fd, &kernel).map_err(NetlinkError::Socket)?;

    // Any value distinguishes our answers from stray multicast; time keeps it varied.
    let seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() | 1)
        .unwrap_or(1);
    sendto(&fd, &request(seq), SendFlags::empty(), &kernel).map_err(NetlinkError::Send)?;

    let start = Instant::now();
    let mut buf = vec![0_u8; RECV_BUFFER];
    let mut total = 0_usize;
    loop {
        if start.elapsed() > deadline {
            return Err(NetlinkError::Timeout(deadline));
        }
        let n = match recv(&fd, &mut buf[..], RecvFlags::TRUNC) {
            Ok((_, n)) => n,
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(e) => return Err(NetlinkError::Recv(e)),
        };
        if n > buf.len() {
            return Err(NetlinkError::Malformed(
                "datagram larger than the receive buffer",
            ));
        }
        total = total.saturating_add(n);
        if total > MAX_DUMP_BYTES {
            return Err(NetlinkError::TooLarge(MAX_DUMP_BYTES));
        }
        let Some(datagram) = buf.get(..n) else {
            return Err(NetlinkError::Malformed("datagram length"));
        };
        if parse_messages(datagram, seq, on_message)? == Progress::Done {
            return Ok(());
        }
    }
}

/// The RTM_GETADDR dump request for all address families.
pub fn request(seq: u32) -> Vec<u8> {
    let mut m = dump_request(RTM_GETADDR, seq, IFADDRMSG_LEN);
    // struct ifaddrmsg, all zero: AF_UNSPEC, every interface.
    m.extend_from_slice(&[0_u8; IFADDRMSG_LEN]);
    m
}

/// The header of a dump request of type `kind` whose payload of `payload_len` bytes the
/// caller appends.
pub fn dump_request(kind: u16, seq: u32, payload_len: usize) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload_len;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0_u32.to_ne_bytes());
    m
}

pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one received datagram (one or more netlink messages) of an address dump, as
/// [`dump_addresses`] does. Address messages are appended to `out`; malformed address
/// messages are counted in `skipped`. Messages with another sequence number are not ours
/// and are ignored.
#[cfg(test)]
pub fn parse_datagram(
    buf: &[u8],
    seq: u32,
    out: &mut Vec<AddrRecord>,
    skipped: &mut usize,
) -> Result<Progress, NetlinkError> {
    parse_messages(buf, seq, &mut |kind, payload| {
        take_address(kind, payload, out, skipped);
    })
}

/// Parses one received datagram (one or more netlink messages): the control messages
/// (done, error, overrun, an interrupted dump) here, every other message of sequence
/// number `seq` handed to `on_message(type, payload)`. Messages with another sequence
/// number are not ours and are ignored.
pub fn parse_messages(
    buf: &[u8],
    seq: u32,
    on_message: &mut dyn FnMut(u16, &[u8]),
) -> Result<Progress, NetlinkError> {
    let mut at = 0;
    while buf.len().saturating_sub(at) >= NLMSG_HDRLEN {
        let malformed = NetlinkError::Malformed;
        let len = u32_at(buf, at).ok_or(malformed("header"))? as usize;
        let kind = u16_at(buf, at + 4).ok_or(malformed("header"))?;
        let flags = u16_at(buf, at + 6).ok_or(malformed("header"))?;
        let msg_seq = u32_at(buf, at + 8).ok_or(malformed("header"))?;
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            return Err(malformed("message length outside the datagram"));
        }
        let payload = buf
            .get(at + NLMSG_HDRLEN..at + len)
            .ok_or(malformed("payload"))?;
        at = at.saturating_add(align4(len));
        if msg_seq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(NetlinkError::Interrupted);
        }
        match kind {
            NLMSG_DONE => {
                // Newer kernels put the dump's final error code here.
                if let Some(code) = u32_at(payload, 0).map(|c| c as i32)
                    && code < 0
                {
                    return Err(NetlinkError::Kernel(-code));
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                let code = u32_at(payload, 0).ok_or(malformed("error message"))? as i32;
                if code != 0 {
                    return Err(NetlinkError::Kernel(code.saturating_neg()));
                }
            }
            NLMSG_OVERRUN => return Err(malformed("overrun")),
            NLMSG_NOOP => {}
            _ => on_message(kind, payload),
        }
    }
    // Bytes after the last whole message that are not alignment padding: the kernel never
    // sends that, so the frame boundaries cannot be trusted.
    if buf
        .get(at..)
        .is_some_and(|rest| rest.iter().any(|b| *b != 0))
    {
        return Err(NetlinkError::Malformed(
            "trailing bytes after the last message",
        ));
    }
    Ok(Progress::More)
}

/// An address message that cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed RTM_NEWADDR: {0}")]
pub struct BadAddr(&'static str);

/// Parses the payload of one RTM_NEWADDR (struct ifaddrmsg + attributes). `Ok(None)` for
/// address families other than IPv4/IPv6.
pub fn parse_ifaddr(payload: &[u8]) -> Result<Option<AddrRecord>, BadAddr> {
    let head = payload
        .get(..IFADDRMSG_LEN)
        .ok_or(BadAddr("shorter than ifaddrmsg"))?;
    let (family, prefix_len, flags8, scope) = (head[0], head[1], head[2], head[3]);
    let index = u32_at(head, 4).ok_or(BadAddr("index"))?;
    let addr_len = match family {
        AF_INET => 4,
        AF_INET6 => 16,
        _ => return Ok(None),
    };
    if (family == AF_INET && prefix_len > 32) || prefix_len > 128 {
        return Err(BadAddr("prefix length out of range"));
    }
    let mut local = None;
    let mut address = None;
    let mut flags = u32::from(flags8);
    let mut at = IFADDRMSG_LEN;
    while payload.len().saturating_sub(at) >= RTA_HDRLEN {
        let rta_len = usize::from(u16_at(payload, at).ok_or(BadAddr("attribute"))?);
        let rta_type = u16_at(payload, at + 2).ok_or(BadAddr("attribute"))? & NLA_TYPE_MASK;
        if rta_len < RTA_HDRLEN || rta_len > payload.len() - at {
            return Err(BadAddr("attribute length outside the message"));
        }
        let data = payload
            .get(at + RTA_HDRLEN..at + rta_len)
            .ok_or(BadAddr("attribute data"))?;
        match rta_type {
            IFA_ADDRESS | IFA_LOCAL => {
                if data.len() != addr_len {
                    return Err(BadAddr("address length does not match the family"));
                }
                let ip = ip_from(family, data).ok_or(BadAddr("address"))?;
                if rta_type == IFA_LOCAL {
                    local = Some(ip);
                } else {
                    address = Some(ip);
                }
            }
            IFA_FLAGS => flags = u32_at(data, 0).ok_or(BadAddr("IFA_FLAGS"))?,
            _ => {}
        }
        at = at.saturating_add(align4(rta_len));
    }
    let address = local.or(address).ok_or(BadAddr("no address attribute"))?;
    Ok(Some(AddrRecord {
        index,
        address,
        prefix_len,
        scope,
        flags,
    }))
}

pub fn ip_from(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => {
            let b: [u8; 4] = data.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        AF_INET6 => {
            let b: [u8; 16] = data.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod encode {
    //! Test-only encoders for the messages the kernel sends.
    use super::*;

    pub fn newaddr(seq: u32, r: &AddrRecord, with_local: bool) -> Vec<u8> {
        let (family, bytes): (u8, Vec<u8>) = match r.address {
            IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
            IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
        };
        let mut p = vec![family, r.prefix_len, (r.flags & 0xff) as u8, r.scope];
        p.extend_from_slice(&r.index.to_ne_bytes());
        let mut attr = |t: u16, data: &[u8]| {
            let l = RTA_HDRLEN + data.len();
            p.extend_from_slice(&(l as u16).to_ne_bytes());
            p.extend_from_slice(&t.to_ne_bytes());
            p.extend_from_slice(data);
            p.resize(align4(p.len()), 0);
        };
        attr(IFA_ADDRESS, &bytes);
        if with_local {
            attr(IFA_LOCAL, &bytes);
        }
        attr(IFA_FLAGS, &r.flags.to_ne_bytes());
        attr(3, b"eth0\0"); // IFA_LABEL, ignored
        message(seq, RTM_NEWADDR, 0x02, &p)
    }

    pub fn message(seq: u32, kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242_u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    pub fn done(seq: u32) -> Vec<u8> {
        message(seq, NLMSG_DONE, 0x02, &0_i32.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;
    use proptest::prelude::*;

    fn rec(addr: &str, prefix: u8, index: u32, flags: u32) -> AddrRecord {
        AddrRecord {
            index,
            address: addr.parse().unwrap(),
            prefix_len: prefix,
            scope: 0,
            flags,
        }
    }

    #[test]
    fn a_dump_parses_until_done() {
        let a = rec("192.0.2.2", 24, 4, 0x80);
        let b = rec("fe80::fc:ff:fe00:1", 64, 4, 0x280);
        let mut dg = newaddr(7, &a, true);
        dg.extend(newaddr(7, &b, false));
        dg.extend(newaddr(99, &a, true)); // someone else's sequence: ignored
        let mut out = Vec::new();
        let mut skipped = 0;
        assert_eq!(
            parse_datagram(&dg, 7, &mut out, &mut skipped).unwrap(),
            Progress::More
        );
        assert_eq!(out, vec![a.clone(), b]);
        assert_eq!(
            parse_datagram(&done(7), 7, &mut out, &mut skipped).unwrap(),
            Progress::Done
        );
        assert_eq!(skipped, 0);
    }

    #[test]
    fn kernel_errors_and_interrupted_dumps_are_errors() {
        let err = message(1, NLMSG_ERROR, 0, &(-13_i32).to_ne_bytes());
        assert!(matches!(
            parse_datagram(&err, 1, &mut Vec::new(), &mut 0),
            Err(NetlinkError::Kernel(13))
        ));
        let intr = message(1, NLMSG_DONE, NLM_F_DUMP_INTR, &0_i32.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&intr, 1, &mut Vec::new(), &mut 0),
            Err(NetlinkError::Interrupted)
        ));
    }

    #[test]
    fn bad_frames_are_errors_and_bad_addresses_are_skipped() {
        let mut frame = done(1);
        frame[0] = 200; // claims more bytes than received
        assert!(parse_datagram(&frame, 1, &mut Vec::new(), &mut 0).is_err());

        let short = message(1, RTM_NEWADDR, 0, &[AF_INET, 24, 0]);
        let mut skipped = 0;
        let mut out = Vec::new();
        parse_datagram(&short, 1, &mut out, &mut skipped).unwrap();
        assert_eq!((out.len(), skipped), (0, 1));
    }

    #[test]
    fn the_request_is_a_dump_of_all_families() {
        let r = request(5);
        assert_eq!(r.len(), 24);
        assert_eq!(u16_at(&r, 4), Some(RTM_GETADDR));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(r[16], 0);
    }

    #[test]
    fn live_dump_is_well_formed() {
        // The sandbox may forbid netlink; when it answers, every record must be sane.
        let Ok((records, skipped)) = dump_addresses(Duration::from_secs(3)) else {
            return;
        };
        assert_eq!(skipped, 0);
        for r in records {
            let max = if r.address.is_ipv4() { 32 } else { 128 };
            assert!(r.prefix_len <= max, "{r:?}");
            assert!(r.index > 0, "{r:?}");
        }
    }

    fn arb_record() -> impl Strategy<Value = AddrRecord> {
        let v4 = (any::<[u8; 4]>(), 0_u8..=32).prop_map(|(b, p)| (IpAddr::from(b), p));
        let v6 = (any::<[u8; 16]>(), 0_u8..=128).prop_map(|(b, p)| (IpAddr::from(b), p));
        (prop_oneof![v4, v6], any::<u32>(), any::<u8>(), any::<u32>()).prop_map(
            |((address, prefix_len), index, scope, flags)| AddrRecord {
                index,
                address,
                prefix_len,
                scope,
                flags,
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512), seq in any::<u32>()) {
            let _ = parse_datagram(&b, seq, &mut Vec::new(), &mut 0);
            let _ = parse_ifaddr(&b);
        }

        #[test]
        fn encoded_records_round_trip(rs in proptest::collection::vec(arb_record(), 0..20), local in any::<bool>()) {
            let mut dg = Vec::new();
            for r in &rs {
                dg.extend(newaddr(3, r, local));
            }
            dg.extend(done(3));
            let mut out = Vec::new();
            let mut skipped = 0;
            prop_assert_eq!(parse_datagram(&dg, 3, &mut out, &mut skipped).unwrap(), Progress::Done);
            prop_assert_eq!(skipped, 0);
            prop_assert_eq!(out, rs);
        }

        #[test]
        fn corrupted_dumps_never_panic(rs in proptest::collection::vec(arb_record(), 1..5), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut dg = Vec::new();
            for r in &rs {
                dg.extend(newaddr(3, r, true));
            }
            let i = flip.index(dg.len());
            dg[i] = byte;
            let _ = parse_datagram(&dg, 3, &mut Vec::new(), &mut 0);
        }
    }
}
