//! The seal: a small file beside sled's own (`cmdb-store.seal`) holding the number of the
//! last commit known to be durable, so that an open can tell when sled recovered an OLDER
//! state than the one we acknowledged.
//!
//! Why: when sled finds a damaged segment in its log it recovers up to there and silently
//! drops the rest — acknowledged events would vanish and agents, told their events were
//! durable, would never resend them. Every batch stores its commit number in the tree
//! (`meta/commit`, inside the batch, so atomically); after each successful flush the seal
//! is rewritten (temp file + rename) with the number that flush covered. At open, a tree
//! whose commit number is below the seal's has lost acknowledged writes: refuse.
//!
//! The seal is written without fsync: after a power loss it may be older than the tree
//! (a weaker check, never a false alarm) — it can never be newer, because it is written
//! only after sled's flush returned. An unreadable seal is reported by the caller and
//! replaced; it never blocks an open on its own.

use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "cmdb-store.seal";
const TAG: &str = "cmdb-seal/1";

pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// What the seal file says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seal {
    /// No seal yet (a new store, or one written before seals existed).
    Missing,
    /// The file is there but does not parse (torn by a crash, or edited).
    Unreadable(String),
    /// The last durable commit number.
    Commit(u64),
}

pub(super) fn read(dir: &Path) -> Seal {
    let text = match std::fs::read_to_string(path(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Seal::Missing,
        Err(e) => return Seal::Unreadable(e.to_string()),
    };
    parse(&text).map_or_else(|| Seal::Unreadable(format!("{text:?}")), Seal::Commit)
}

fn parse(text: &str) -> Option<u64> {
    let mut parts = text.trim_end_matches('\n').split(' ');
    let (tag, n, rest) = (parts.next()?, parts.next()?, parts.next());
    (tag == TAG && rest.is_none()).then_some(())?;
    n.parse().ok()
}

/// Replaces the seal with `commit` (temp file + rename: readers see old or new, whole).
pub(super) fn write(dir: &Path, commit: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{TAG} {commit}")?;
    }
    std::fs::rename(&tmp, path(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Seal::Missing);
        write(dir.path(), 42).unwrap();
        assert_eq!(read(dir.path()), Seal::Commit(42));
        std::fs::write(path(dir.path()), b"").unwrap();
        assert!(matches!(read(dir.path()), Seal::Unreadable(_)));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_the_format(text in ".{0,40}") {
            if let Some(n) = parse(&text) {
                prop_assert_eq!(text.trim_end_matches('\n'), format!("{TAG} {n}"));
            }
        }
    }
}
