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
pub(super) const VERSION: &[u8] = b"v/";
pub(super) const IDENTITY: &[u8] = b"k/";
pub(super) const BY_CLASS: &[u8] = b"xc/";
pub(super) const BY_HOSTNAME: &[u8] = b"xn/";
pub(super) const ABSENT: &[u8] = b"xa/";
pub(super) const RELATION: &[u8] = b"r/";
pub(super) const RELATION_REV: &[u8] = b"rr/";
pub(super) const RELATION_HOST: &[u8] = b"xr/";
pub(super) const METRIC: &[u8] = b"m/";
pub(super) const METRIC_TIME: &[u8] = b"mt/";
pub(super) const CLONE: &[u8] = b"cl/";
pub(super) const RECORD: &[u8] = b"j/";

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

/// CI records are clustered by host, then class: one agent's batch touches one key range,
/// and the records of a (host, class) are themselves that pair's index, in id order.
pub(super) fn ci(host: &str, class: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(CI.len() + host.len() + class.len() + 2 + id.len());
    k.extend_from_slice(CI);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(class.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// All CI records of a host, by class then id.
pub(super) fn cis_of_host(host: &str) -> Vec<u8> {
    key(&[CI, host.as_bytes(), b"\0"])
}

/// All CI records of a host in one class, in id order.
pub(super) fn cis_of_host_class(host: &str, class: &str) -> Vec<u8> {
    key(&[CI, host.as_bytes(), b"\0", class.as_bytes(), b"\0"])
}

/// (host, class, id) of a CI record key.
pub(super) fn ci_parts(k: &[u8]) -> Option<(&str, &str, &str)> {
    let tail = k.strip_prefix(CI)?;
    let start = tail.len().checked_sub(CI_ID_LEN)?;
    let (rest, id) = tail.split_at(start);
    let rest = rest.strip_suffix(b"\0")?;
    let sep = rest.iter().position(|&b| b == 0)?;
    let (host, class) = (&rest[..sep], &rest[sep + 1..]);
    let id = std::str::from_utf8(id)
        .ok()
        .filter(|id| id.starts_with("ci-"))?;
    Some((
        std::str::from_utf8(host).ok()?,
        std::str::from_utf8(class).ok()?,
        id,
    ))
}

/// The value of an absent-index entry: `<host>\0<class>` (where the CI's record is).
pub(super) fn ci_location(host: &str, class: &str) -> Vec<u8> {
    key(&[host.as_bytes(), b"\0", class.as_bytes()])
}

/// (host, class) out of an absent-index value.
pub(super) fn parse_location(v: &[u8]) -> Option<(String, String)> {
    let sep = v.iter().position(|&b| b == 0)?;
    let host = std::str::from_utf8(&v[..sep]).ok()?;
    let class = std::str::from_utf8(&v[sep + 1..]).ok()?;
    Some((host.to_owned(), class.to_owned()))
}

/// All version pages of one commit.
pub(super) fn version_pages(commit: u64) -> Vec<u8> {
    key(&[VERSION, &commit.to_be_bytes()])
}

/// The key of a page of `commit` whose first entry is (`ci_id`, `version`); also the
/// upper bound of a lookup of that entry (the page holding it is the last one at or
/// before it).
pub(super) fn version_page(commit: u64, ci_id: &[u8], version: u64) -> Vec<u8> {
    key(&[
        VERSION,
        &commit.to_be_bytes(),
        ci_id,
        &version.to_be_bytes(),
    ])
}

/// The commit number of a version page key (`v/<u64 BE commit>…`).
pub(super) fn page_commit(k: &[u8]) -> Option<u64> {
    let tail = k.strip_prefix(VERSION)?;
    Some(u64::from_be_bytes(*tail.first_chunk::<8>()?))
}

pub(super) fn identity(identity_key: &str) -> Vec<u8> {
    key(&[IDENTITY, identity_key.as_bytes()])
}

pub(super) fn by_class_prefix(class: &str) -> Vec<u8> {
    key(&[BY_CLASS, class.as_bytes(), b"\0"])
}

/// The class index entry of a CI (written once, at creation: host and class never change):
/// `xc/<class>\0<ci id>` → host. It also resolves bare CI ids: the classes are few, so
/// `location` probes each of them.
pub(super) fn by_class(class: &str, ci_id: &str) -> Vec<u8> {
    key(&[BY_CLASS, class.as_bytes(), b"\0", ci_id.as_bytes()])
}

/// The class of a class index key (`xc/<class>\0…`).
pub(super) fn class_of_index_key(k: &[u8]) -> Option<&[u8]> {
    let tail = k.strip_prefix(BY_CLASS)?;
    let sep = tail.iter().position(|&b| b == 0)?;
    Some(&tail[..sep])
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

/// All records of one collection, in id order (collection names have no NUL, ids neither:
/// byte order after this prefix is id order).
pub(super) fn records_of(collection: &str) -> Vec<u8> {
    key(&[RECORD, collection.as_bytes(), b"\0"])
}

pub(super) fn record(collection: &str, id: &str) -> Vec<u8> {
    key(&[RECORD, collection.as_bytes(), b"\0", id.as_bytes()])
}

/// (collection, id) of a record key.
pub(super) fn record_parts(k: &[u8]) -> Option<(&str, &str)> {
    let tail = k.strip_prefix(RECORD)?;
    let sep = tail.iter().position(|&b| b == 0)?;
    let collection = std::str::from_utf8(&tail[..sep]).ok()?;
    let id = std::str::from_utf8(&tail[sep + 1..]).ok()?;
    Some((collection, id))
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
            BY_HOSTNAME,
            ABSENT,
            RELATION,
            RELATION_REV,
            RELATION_HOST,
            METRIC,
            METRIC_TIME,
            CLONE,
            RECORD,
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
        let id = b"ci-0123456789abcdef";
        assert!(version_page(255, id, 9) < version_page(256, id, 1));
        assert!(version_page(7, id, 255) < version_page(7, id, 256));
        assert!(version_page(7, id, 3).starts_with(&version_pages(7)));
        assert_eq!(page_commit(&version_page(258, id, 3)), Some(258));
        assert_eq!(page_commit(&version_pages(9)), Some(9));
        assert_eq!(page_commit(b"v/short"), None);
    }

    #[test]
    fn ids_round_trip_out_of_keys() {
        let id = "ci-0123456789abcdef";
        let k = by_class("package", id);
        assert_eq!(trailing_ci_id(&k).as_deref(), Some(id));
        assert_eq!(class_of_index_key(&k), Some(&b"package"[..]));
        assert!(k.starts_with(&by_class_prefix("package")));
        let k = ci("host-1", "package", id);
        assert_eq!(trailing_ci_id(&k).as_deref(), Some(id));
        assert_eq!(ci_parts(&k), Some(("host-1", "package", id)));
        assert!(k.starts_with(&cis_of_host_class("host-1", "package")));
        assert!(k.starts_with(&cis_of_host("host-1")));
        assert_eq!(ci_parts(b"c/host-1\0ci-0123456789abcdef"), None);
        assert_eq!(
            parse_location(&ci_location("host-1", "package")),
            Some(("host-1".into(), "package".into()))
        );
        let other = "ci-fedcba9876543210";
        let k = relation(id, other, "runs");
        let tail = after_prefix(&k, RELATION).unwrap();
        assert_eq!(
            relation_parts(tail),
            Some((id.to_owned(), other.to_owned(), "runs".to_owned()))
        );
        assert_eq!(relation_parts(b"short"), None);
        let k = record("baselines", "web servers");
        assert!(k.starts_with(&records_of("baselines")));
        assert!(!k.starts_with(&records_of("baseline")));
        assert_eq!(record_parts(&k), Some(("baselines", "web servers")));
        assert_eq!(record_parts(b"j/no-separator"), None);
    }
}
