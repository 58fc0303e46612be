//! The side file `<dir>.seq` next to the outbox directory: the seq floor that survives the
//! directory being moved aside. One short line, replaced atomically (write a temporary file,
//! fsync, rename, fsync the parent), with a checksum so that a damaged file is recognised
//! instead of read as a smaller number.
//!
//! Two modes: `running H` says "no seq above H has been handed out" (H is reserved ahead, so
//! that the file is rewritten once per [`RESERVE`] appends, not on every one); `clean N`,
//! written on an orderly close, says "the last seq handed out was exactly N", which also
//! lets open notice that the store lost events it had made durable.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How far ahead a running outbox reserves seqs in the side file.
pub(super) const RESERVE: u64 = 1024;

const MAGIC: &str = "cmdb-outbox-seq";
const VERSION: &str = "1";

/// What the side file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SideSeq {
    /// Written on an orderly close: the last seq handed out.
    Clean(u64),
    /// Written while running: no seq above this has been handed out.
    Running(u64),
}

impl SideSeq {
    pub(super) fn seq(self) -> u64 {
        match self {
            SideSeq::Clean(s) | SideSeq::Running(s) => s,
        }
    }
}

/// What reading the side file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Read {
    Missing,
    /// Present but not a valid side file (damaged, truncated, foreign).
    Damaged,
    Valid(SideSeq),
}

/// `<dir>.seq` beside `dir`; `None` when `dir` has no final component.
pub(super) fn path_for(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?;
    let mut side = name.to_os_string();
    side.push(".seq");
    Some(dir.with_file_name(side))
}

pub(super) fn read(path: &Path) -> io::Result<Read> {
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e),
    };
    Ok(parse(&text).map_or(Read::Damaged, Read::Valid))
}

fn checksum(body: &str) -> String {
    hex::encode(&blake3::hash(body.as_bytes()).as_bytes()[..8])
}

fn body(side: SideSeq) -> String {
    match side {
        SideSeq::Clean(s) => format!("{MAGIC} {VERSION} clean {s}"),
        SideSeq::Running(s) => format!("{MAGIC} {VERSION} running {s}"),
    }
}

pub(super) fn render(side: SideSeq) -> String {
    let body = body(side);
    let sum = checksum(&body);
    format!("{body} {sum}\n")
}

pub(super) fn parse(bytes: &[u8]) -> Option<SideSeq> {
    let text = std::str::from_utf8(bytes).ok()?;
    let line = text.strip_suffix('\n')?;
    let (body, sum) = line.rsplit_once(' ')?;
    if checksum(body) != sum {
        return None;
    }
    let mut parts = body.split(' ');
    let (magic, version, mode, seq) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || magic != MAGIC || version != VERSION {
        return None;
    }
    let seq: u64 = seq.parse().ok()?;
    match mode {
        "clean" => Some(SideSeq::Clean(seq)),
        "running" => Some(SideSeq::Running(seq)),
        _ => None,
    }
}

/// Replaces the side file atomically and durably.
pub(super) fn write(path: &Path, side: SideSeq) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(render(side).as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename itself must survive a power cut, or the old value could come back.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_survives_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("outbox")).unwrap();
        assert_eq!(path.file_name().unwrap(), "outbox.seq");
        assert_eq!(read(&path).unwrap(), Read::Missing);
        write(&path, SideSeq::Running(1024)).unwrap();
        assert_eq!(read(&path).unwrap(), Read::Valid(SideSeq::Running(1024)));
        write(&path, SideSeq::Clean(7)).unwrap();
        assert_eq!(read(&path).unwrap(), Read::Valid(SideSeq::Clean(7)));
        fs::write(&path, b"cmdb-outbox-seq 1 clean 8 0000000000000000\n").unwrap();
        assert_eq!(read(&path).unwrap(), Read::Damaged);
    }

    #[test]
    fn a_directory_without_a_name_has_no_side_file() {
        assert_eq!(path_for(Path::new("/")), None);
    }

    proptest! {
        #[test]
        fn any_single_byte_flip_is_detected(seq in any::<u64>(), clean in any::<bool>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let side = if clean { SideSeq::Clean(seq) } else { SideSeq::Running(seq) };
            let mut bytes = render(side).into_bytes();
            prop_assert_eq!(parse(&bytes), Some(side));
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert_eq!(parse(&bytes), None);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
        }
    }
}
