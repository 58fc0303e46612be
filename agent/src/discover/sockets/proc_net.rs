//! Parser for the kernel's socket tables /proc/net/{tcp,tcp6,udp,udp6}: one line per
//! socket, `sl: local rem st tx:rx tr:when retrnsmt uid timeout inode …`.
//!
//! Addresses are printed as the raw 32-bit words of the in-kernel (network-order) address,
//! each formatted with `%08X` as a *native* integer: on little-endian machines the bytes of
//! every word therefore appear reversed ("0100007F" is 127.0.0.1), on big-endian machines
//! they appear in network order. [`word_bytes`] undoes that per target endianness, so a
//! file is decoded correctly on the machine that produced it (a fixture captured on x86_64
//! decodes correctly only on a little-endian agent). Ports are printed already converted to
//! host order (`ntohs`) and need no such care.
//!
//! Pure text in, entries out: nothing here touches the filesystem, and malformed lines are
//! reported, never guessed at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP_ESTABLISHED: a connected TCP socket (and a connected UDP socket).
pub const STATE_ESTABLISHED: u8 = 0x01;
/// TCP_CLOSE: what an unconnected UDP socket reports.
pub const STATE_CLOSE: u8 = 0x07;
/// TCP_LISTEN.
pub const STATE_LISTEN: u8 = 0x0A;

/// Which table a line comes from: /proc/net/tcp and udp hold IPv4, tcp6 and udp6 IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The `family` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// Hex digits of one address in this family's table.
    fn hex_len(self) -> usize {
        match self {
            Family::V4 => 8,
            Family::V6 => 32,
        }
    }
}

/// One socket line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// The kernel's TCP state number (UDP reuses it: 07 unconnected, 01 connected).
    pub state: u8,
    /// The socket's owner uid (the uid that created it), readable by anyone.
    pub uid: u32,
    /// The socket inode: what /proc/<pid>/fd/N links to as "socket:[inode]"; 0 for
    /// sockets no process holds (TIME_WAIT, orphans).
    pub inode: u64,
}

/// A line that is not a socket line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses one table. The header line is recognised and skipped; other unparsable lines are
/// returned as [`BadLine`]s (numbered from 1) and the rest is kept.
pub fn parse(text: &str, family: Family) -> (Vec<SocketEntry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match parse_line(line, family) {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => {}
            Err(reason) => bad.push(BadLine {
                line: n + 1,
                reason,
            }),
        }
    }
    (entries, bad)
}

/// Parses one line: `Ok(None)` for the header and blank lines, `Err(reason)` for anything
/// that is not a well-formed socket line of `family`.
pub fn parse_line(line: &str, family: Family) -> Result<Option<SocketEntry>, &'static str> {
    let mut f = line.split_ascii_whitespace();
    let Some(sl) = f.next() else {
        return Ok(None);
    };
    if sl == "sl" {
        return Ok(None);
    }
    if !sl.ends_with(':') || !sl[..sl.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return Err("does not start with a slot number");
    }
    let (Some(local), Some(remote), Some(state)) = (f.next(), f.next(), f.next()) else {
        return Err("too few fields");
    };
    // tx_queue:rx_queue, tr:tm->when, retrnsmt: not needed.
    let (Some(_), Some(_), Some(_), Some(uid), Some(_timeout), Some(inode)) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err("too few fields");
    };
    let (local, local_port) = parse_endpoint(local, family).ok_or("bad local address")?;
    let (remote, remote_port) = parse_endpoint(remote, family).ok_or("bad remote address")?;
    let state = (state.len() == 2)
        .then(|| hex_u32(state))
        .flatten()
        .and_then(|s| u8::try_from(s).ok())
        .ok_or("bad state")?;
    let uid = decimal(uid).ok_or("bad uid")?;
    let inode = decimal(inode).ok_or("bad inode")?;
    let uid = u32::try_from(uid).map_err(|_| "bad uid")?;
    Ok(Some(SocketEntry {
        local,
        local_port,
        remote,
        remote_port,
        state,
        uid,
        inode,
    }))
}

/// "0100007F:0016" → (127.0.0.1, 22) on a little-endian machine.
fn parse_endpoint(text: &str, family: Family) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    if addr.len() != family.hex_len() || port.len() != 4 {
        return None;
    }
    let port = u16::try_from(hex_u32(port)?).ok()?;
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_exact_mut(4).take(addr.len() / 8).enumerate() {
        let word = hex_u32(addr.get(i * 8..i * 8 + 8)?)?;
        chunk.copy_from_slice(&word_bytes(word));
    }
    let ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(bytes)),
    };
    Some((ip, port))
}

/// The in-memory bytes of a 32-bit word the kernel printed as a native integer.
#[cfg(target_endian = "little")]
fn word_bytes(word: u32) -> [u8; 4] {
    word.to_le_bytes()
}

/// The in-memory bytes of a 32-bit word the kernel printed as a native integer.
#[cfg(target_endian = "big")]
fn word_bytes(word: u32) -> [u8; 4] {
    word.to_be_bytes()
}

/// Strict hex: only [0-9A-Fa-f], at most 8 digits (`from_str_radix` would accept a sign).
fn hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Strict unsigned decimal.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The inode of a /proc/<pid>/fd link text "socket:[12345]"; `None` for anything else.
pub fn socket_inode(link: &str) -> Option<u64> {
    decimal(link.strip_prefix("socket:[")?.strip_suffix(']')?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Real lines (x86_64): sshd on 0.0.0.0:22, an established connection, the v6 header.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 16001 1 0000000000000000 100 0 0 10 0                     
   1: 0A7AA8C0:0016 017AA8C0:C488 01 00000000:00000000 02:0008F5C2 00000000     0        0 24001 4 0000000000000000 20 4 31 10 -1                    
";

    #[cfg(target_endian = "little")]
    #[test]
    fn decodes_real_ipv4_lines() {
        let (e, bad) = parse(TCP, Family::V4);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].local, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            (e[0].local_port, e[0].state, e[0].inode),
            (22, STATE_LISTEN, 16001)
        );
        assert_eq!(e[1].local, IpAddr::from([192, 168, 122, 10]));
        assert_eq!(e[1].remote, IpAddr::from([192, 168, 122, 1]));
        assert_eq!((e[1].remote_port, e[1].state), (50312, STATE_ESTABLISHED));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn decodes_ipv6_words_including_mapped_and_loopback() {
        let line = |addr: &str| {
            format!(
                "   0: {addr}:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0"
            )
        };
        let parse1 = |addr: &str| parse_line(&line(addr), Family::V6).unwrap().unwrap().local;
        assert_eq!(
            parse1("00000000000000000000000001000000"),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse1("0000000000000000FFFF00000100007F"),
            "::ffff:127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse1("B80D0120000000000000000001000000"),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn rejects_malformed_lines_and_keeps_the_rest() {
        let text = format!(
            "{TCP}garbage\n   2: 0000000:0016 00000000:0000 0A 0 0 0 0 0 1\n   3: 00000000:+016 00000000:0000 0A 0 0 0 0 0 1\n   4: 00000000:0016 00000000:0000 0A 0 0 0 -1 0 1\n"
        );
        let (e, bad) = parse(&text, Family::V4);
        assert_eq!(e.len(), 2);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7]);
        // A v4 line is not a v6 line.
        assert!(parse_line(TCP.lines().nth(1).unwrap(), Family::V6).is_err());
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("socket:[]"), None);
        assert_eq!(socket_inode("socket:[+1]"), None);
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    fn hex(n: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(b"0123456789ABCDEF".to_vec()), n)
            .prop_map(|v| String::from_utf8(v).unwrap())
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            for fam in [Family::V4, Family::V6] {
                let (e, bad) = parse(&s, fam);
                prop_assert!(e.len() + bad.len() <= s.lines().count());
            }
            let _ = socket_inode(&s);
        }

        #[test]
        fn well_formed_lines_round_trip(
            a in hex(32), r in hex(32), lp in any::<u16>(), rp in any::<u16>(),
            st in any::<u8>(), uid in any::<u32>(), inode in any::<u64>(), v6 in any::<bool>()
        ) {
            let (fam, n) = if v6 { (Family::V6, 32) } else { (Family::V4, 8) };
            let line = format!(
                "  12: {}:{lp:04X} {}:{rp:04X} {st:02X} 00000000:00000000 00:00000000 00000000 {uid:>5} 0 {inode} 1 0000000000000000 20 0 0 10 -1",
                &a[..n], &r[..n]
            );
            let e = parse_line(&line, fam).unwrap().unwrap();
            prop_assert_eq!((e.local_port, e.remote_port, e.state, e.uid, e.inode), (lp, rp, st, uid, inode));
            prop_assert_eq!(e.local.is_ipv6(), v6);
            // Re-encoding the decoded address gives the original text back.
            let bytes: Vec<u8> = match e.local {
                IpAddr::V4(v) => v.octets().to_vec(),
                IpAddr::V6(v) => v.octets().to_vec(),
            };
            let text: String = bytes
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            prop_assert_eq!(text, a[..n].to_owned());
        }

        #[test]
        fn corrupting_a_field_gives_an_error_not_a_panic(
            pos in 0usize..120, byte in any::<u8>()
        ) {
            let mut line = TCP.lines().nth(2).unwrap().as_bytes().to_vec();
            if pos < line.len() {
                line[pos] = byte;
            }
            let line = String::from_utf8_lossy(&line);
            let _ = parse_line(&line, Family::V4);
        }
    }
}
