//! The key layout of the one sled tree (see the `sled` module doc for the table).
//!
//! Every key starts with a short ASCII prefix naming its record kind; no prefix is a prefix
//! of another. Variable-length parts are separated by NUL (classes and hostnames with a NUL
//! byte are refused before they get here); CI ids have a fixed length, so they need no
//! separator when they end a key or sit between fixed-size parts. Times are big-endian u64
//! seconds since the epoch so that byte order is time order.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a CI id: "ci-" + 16 hex digits.
pub(super) const CI_ID_LEN: usize = 19;

pub(super) const META_FORMAT: &[u8] = b"meta/format";
pub(super) const META_COMMIT: &[u8] = b"meta/commit";
pub(super) const AGENT: &[u8] = b"a/";
pub(super) const CI: &[u8] = b"c/";
pub(super) const CI_HOST: &[u8] = b"i/";
pub(super) const VERSION: &[u8] = b"v/";
pub(super) const IDENTITY: &[u8] = b"k/";
pub(super) const BY_CLASS: &[u8] = b"xc/";
pub(super) const BY_HOST_CLASS: &[u8] = b"xhc/";
pub(super) const BY_HOSTNAME: &[u8] = b"xn/";
pub(super) const ABSENT: &[u8] = b"xa/";
pub(super) const RELATION: &[u8] = b"r/";
pub(super) const RELATION_REV: &[u8] = b"rr/";
pub(super) const RELATION_HOST: &[u8] = b"xr/";
pub(super) const METRIC: &[u8] = b"m/";
pub(super) const METRIC_TIME: &[u8] = b"mt/";
pub(super) const CLONE: &[u8] = b"cl/";

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Seconds since the epoch, big-endian (times before 1970 clamp to 0).
pub(super) fn time_be(t: SystemTime) -> [u8; 8] {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_be_bytes()
}

pub(super) fn agent(id: &str) -> Vec<u8> {
    key(&[AGENT, id.as_bytes()])
}

/// CI records are clustered by host: one agent's batch touches one key range.
pub(super) fn ci(host: &str, id: &str) -> Vec<u8> {
    key(&[&cis_of_host(host), id.as_bytes()])
}

/// All CI records of a host, in id order.
pub(super) fn cis_of_host(host: &str) -> Vec<u8> {
    key(&[CI, host.as_bytes(), b"\0"])
}

/// CI id → host id (how a bare CI id finds its record).
pub(super) fn ci_host(id: &str) -> Vec<u8> {
    key(&[CI_HOST, id.as_bytes()])
}

pub(super) fn version(host: &str, ci_id: &str, version: u64) -> Vec<u8> {
    key(&[&versions_of(host, ci_id), &version.to_be_bytes()])
}

pub(super) fn versions_of(host: &str, ci_id: &str) -> Vec<u8> {
    key(&[VERSION, host.as_bytes(), b"\0", ci_id.as_bytes()])
}

pub(super) fn identity(identity_key: &str) -> Vec<u8> {
    key(&[IDENTITY, identity_key.as_bytes()])
}

pub(super) fn by_class_prefix(class: &str) -> Vec<u8> {
    key(&[BY_CLASS, class.as_bytes(), b"\0"])
}

pub(super) fn by_host_class_prefix(host: &str, class: &str) -> Vec<u8> {
    key(&[
        BY_HOST_CLASS,
        host.as_bytes(),
        b"\0",
        class.as_bytes(),
        b"\0",
    ])
}

/// The index entries of a CI, with their values (written once, at creation: host and
/// class never change): id → host, class → (id, host), (host, class) → id.
pub(super) fn ci_indexes(host: &str, class: &str, ci_id: &str) -> [(Vec<u8>, Vec<u8>); 3] {
    [
        (ci_host(ci_id), host.as_bytes().to_vec()),
        (
            key(&[&by_class_prefix(class), ci_id.as_bytes()]),
            host.as_bytes().to_vec(),
        ),
        (
            key(&[&by_host_class_prefix(host, class), ci_id.as_bytes()]),
            Vec::new(),
        ),
    ]
}

pub(super) fn by_hostname_prefix(hostname: &str) -> Vec<u8> {
    key(&[BY_HOSTNAME, hostname.as_bytes(), b"\0"])
}

pub(super) fn by_hostname(hostname: &str, host: &str) -> Vec<u8> {
    key(&[&by_hostname_prefix(hostname), host.as_bytes()])
}

/// Absent CIs by the time they became absent (retention scans this in time order).
pub(super) fn absent(since: SystemTime, ci_id: &str) -> Vec<u8> {
    key(&[ABSENT, &time_be(since), ci_id.as_bytes()])
}

pub(super) fn relation(from: &str, to: &str, kind: &str) -> Vec<u8> {
    key(&[RELATION, from.as_bytes(), to.as_bytes(), kind.as_bytes()])
}

pub(super) fn relations_from(ci_id: &str) -> Vec<u8> {
    key(&[RELATION, ci_id.as_bytes()])
}

pub(super) fn relation_rev(from: &str, to: &str, kind: &str) -> Vec<u8> {
    key(&[
        RELATION_REV,
        to.as_bytes(),
        from.as_bytes(),
        kind.as_bytes(),
    ])
}

pub(super) fn relations_to(ci_id: &str) -> Vec<u8> {
    key(&[RELATION_REV, ci_id.as_bytes()])
}

pub(super) fn relation_host_prefix(host: &str) -> Vec<u8> {
    key(&[RELATION_HOST, host.as_bytes(), b"\0"])
}

pub(super) fn relation_host(host: &str, from: &str, to: &str, kind: &str) -> Vec<u8> {
    key(&[
        &relation_host_prefix(host),
        from.as_bytes(),
        to.as_bytes(),
        kind.as_bytes(),
    ])
}

pub(super) fn metric_prefix(host: &str) -> Vec<u8> {
    key(&[METRIC, host.as_bytes(), b"\0"])
}

pub(super) fn metric(host: &str, window_start: SystemTime) -> Vec<u8> {
    key(&[&metric_prefix(host), &time_be(window_start)])
}

/// Metric windows by time, for retention.
pub(super) fn metric_time(window_start: SystemTime, host: &str) -> Vec<u8> {
    key(&[METRIC_TIME, &time_be(window_start), host.as_bytes()])
}

pub(super) fn clone(detected_at: SystemTime, clone_host: &str) -> Vec<u8> {
    key(&[CLONE, &time_be(detected_at), clone_host.as_bytes()])
}

/// The CI id a fixed-layout index key ends with.
pub(super) fn trailing_ci_id(k: &[u8]) -> Option<String> {
    let start = k.len().checked_sub(CI_ID_LEN)?;
    let id = std::str::from_utf8(k.get(start..)?).ok()?;
    id.starts_with("ci-").then(|| id.to_owned())
}

/// The part of `k` after `prefix`, if `k` starts with it.
pub(super) fn after_prefix<'a>(k: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    k.strip_prefix(prefix)
}

/// Splits the (from, to, kind) tail of a relation key.
pub(super) fn relation_parts(tail: &[u8]) -> Option<(String, String, String)> {
    let from = std::str::from_utf8(tail.get(..CI_ID_LEN)?).ok()?;
    let to = std::str::from_utf8(tail.get(CI_ID_LEN..2 * CI_ID_LEN)?).ok()?;
    let kind = std::str::from_utf8(tail.get(2 * CI_ID_LEN..)?).ok()?;
    Some((from.to_owned(), to.to_owned(), kind.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prefixes_are_prefix_free() {
        let all = [
            META_FORMAT,
            META_COMMIT,
            AGENT,
            CI,
            VERSION,
            IDENTITY,
            BY_CLASS,
            CI_HOST,
            BY_HOST_CLASS,
            BY_HOSTNAME,
            ABSENT,
            RELATION,
            RELATION_REV,
            RELATION_HOST,
            METRIC,
            METRIC_TIME,
            CLONE,
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{a:?} is a prefix of {b:?}");
                }
            }
        }
    }

    #[test]
    fn time_keys_sort_by_time() {
        let t1 = UNIX_EPOCH + Duration::from_secs(255);
        let t2 = UNIX_EPOCH + Duration::from_secs(256);
        assert!(metric("h", t1) < metric("h", t2));
        let id = "ci-0123456789abcdef";
        assert!(version("h", id, 255) < version("h", id, 256));
    }

    #[test]
    fn ids_round_trip_out_of_keys() {
        let id = "ci-0123456789abcdef";
        for (k, _) in ci_indexes("host-1", "package", id) {
            assert_eq!(trailing_ci_id(&k).as_deref(), Some(id));
        }
        assert_eq!(trailing_ci_id(&ci("host-1", id)).as_deref(), Some(id));
        let other = "ci-fedcba9876543210";
        let k = relation(id, other, "runs");
        let tail = after_prefix(&k, RELATION).unwrap();
        assert_eq!(
            relation_parts(tail),
            Some((id.to_owned(), other.to_owned(), "runs".to_owned()))
        );
        assert_eq!(relation_parts(b"short"), None);
    }
}
