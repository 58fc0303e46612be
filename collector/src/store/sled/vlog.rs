//! The version log: version pages in append-only files beside sled's (format 3).
//!
//! A version page is written once and never changes, so keeping it in sled's B-tree cost
//! far more than its size: sled rewrites a whole leaf (up to 16 pages of ~4 KiB) for every
//! batch that adds to it, rewrites both halves when it splits, and its segment cleaner
//! copies live leaves again. Counted during the `changes` storm of `fleet-sim` (20 agents,
//! 10 s, node bytes handed to sled's log by kind): version leaves were ~1.45 GB written
//! plus ~0.8 GB of cleaning for ~1.1 M versions of ~330 B, about 6 bytes written per byte
//! stored, more than the CI rows themselves. Here each page is written once, and the tree
//! holds a 21-byte reference to it under the same key (`v/<commit><ci id><version>`).
//!
//! # Files
//! `versions/NNNNNNNN.vlog` in the store directory: page bytes one after another, nothing
//! else. A file is closed for appends once the next page would take it past
//! [`FILE_MAX`]; pages never span files. A reference names the file, offset, length and
//! CRC-32 of its page; a read checks all four (a short file, a hole or flipped bits are
//! [`StoreError::Corrupt`], never a panic and never wrong data).
//!
//! # Invariants
//! - Pages are appended while a transaction is built (under the writer lock, in commit
//!   order) and synced (`fdatasync`) before the sled batch that refers to them is applied
//!   ([`VersionLog::sync_through`]). sled may make a batch durable whenever it writes its
//!   log, so a reference can never be durable before its page: not after SIGKILL, not
//!   after a power loss.
//! - Bytes after the last referenced page (a transaction built and never applied, a write
//!   torn by a crash) are never read; appends continue after them. Nothing is truncated or
//!   rewritten, so an open needs no recovery.
//! - Readers only ever follow references from the tree, which only point at synced pages.
//!
//! # Format 2 stores
//! A store written before this module keeps its pages inline in the tree (a value starting
//! with the page tag). [`VersionLog::page`] reads both, so a format 2 store opens as is and
//! new commits write references; its marker becomes format 3 so that an older collector
//! refuses it instead of misreading references as pages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::store::StoreError;

/// The directory of the version log, inside the store directory.
const DIR: &str = "versions";
/// A file takes no more appends once the next page would take it past this size.
pub(super) const FILE_MAX: u64 = 1 << 30;
/// A reference's first byte (a page's is `codec::TAG_PAGE`, 0xB1).
pub(super) const TAG_REF: u8 = 0xB2;
/// Tag, file (u32), offset (u64), length (u32), CRC-32 (u32), big-endian.
pub(super) const REF_LEN: usize = 21;
/// No page is larger (a page closes at ~4 KiB; one entry may exceed it alone, and an entry
/// carries at most one CI's attributes).
const PAGE_MAX: u32 = 64 << 20;

/// Pages kept after a read (about 4 KiB each): a feed read looks up the previous version of
/// every entry, and consecutive entries' previous versions are mostly in the same page.
const RECENT_PAGES: usize = 512;

/// A page's bytes: borrowed from the tree's value (format 2) or read from the log.
#[derive(Debug)]
pub(super) enum PageBytes<'v> {
    Inline(&'v [u8]),
    Logged(Arc<Vec<u8>>),
}

impl std::ops::Deref for PageBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            PageBytes::Inline(b) => b,
            PageBytes::Logged(b) => b,
        }
    }
}

/// The last [`RECENT_PAGES`] pages read, checked, by (file, offset); oldest out first.
#[derive(Default)]
struct Recent {
    pages: HashMap<(u32, u64), Arc<Vec<u8>>>,
    order: VecDeque<(u32, u64)>,
}

impl Recent {
    fn get(&self, at: (u32, u64), len: u32) -> Option<Arc<Vec<u8>>> {
        self.pages
            .get(&at)
            .filter(|p| p.len() == len as usize)
            .cloned()
    }

    fn insert(&mut self, at: (u32, u64), page: Arc<Vec<u8>>) {
        if self.pages.insert(at, page).is_some() {
            return;
        }
        self.order.push_back(at);
        if self.order.len() > RECENT_PAGES
            && let Some(old) = self.order.pop_front()
        {
            self.pages.remove(&old);
        }
    }
}

/// A position in the log: everything before it was appended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Mark {
    file: u32,
    end: u64,
}

/// What the tree holds for a page: where it is and its checksum.
struct PageRef {
    file: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

impl PageRef {
    fn encode(&self) -> [u8; REF_LEN] {
        let mut r = [0u8; REF_LEN];
        r[0] = TAG_REF;
        r[1..5].copy_from_slice(&self.file.to_be_bytes());
        r[5..13].copy_from_slice(&self.offset.to_be_bytes());
        r[13..17].copy_from_slice(&self.len.to_be_bytes());
        r[17..21].copy_from_slice(&self.crc.to_be_bytes());
        r
    }

    /// `None` unless `value` is a reference (its tag and length).
    fn decode(value: &[u8]) -> Option<PageRef> {
        let r = <&[u8; REF_LEN]>::try_from(value).ok()?;
        if r[0] != TAG_REF {
            return None;
        }
        Some(PageRef {
            file: u32::from_be_bytes(r[1..5].try_into().ok()?),
            offset: u64::from_be_bytes(r[5..13].try_into().ok()?),
            len: u32::from_be_bytes(r[13..17].try_into().ok()?),
            crc: u32::from_be_bytes(r[17..21].try_into().ok()?),
        })
    }
}

/// Where the next page goes.
struct Tail {
    at: Mark,
    handle: Arc<File>,
    /// Files appended to since the last sync (the current one and any it replaced).
    unsynced: Vec<Arc<File>>,
}

pub(super) struct VersionLog {
    dir: PathBuf,
    max: u64,
    tail: Mutex<Tail>,
    /// Everything before it is on disk.
    synced: Mutex<Mark>,
    /// Open files by number, for reads (bounded by the number of files).
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    recent: Mutex<Recent>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("version log: {what} {}: {e}", path.display()))
}

fn corrupt(key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

/// A log file opened (created if need be) for reads and appends, and its length.
fn open_for_append(path: &Path) -> Result<(Arc<File>, u64), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io("cannot open", path, e))?;
    let end = file
        .metadata()
        .map_err(|e| io("cannot stat", path, e))?
        .len();
    Ok((Arc::new(file), end))
}

fn file_name(n: u32) -> String {
    format!("{n:08}.vlog")
}

impl VersionLog {
    /// Opens (or creates) the log of the store in `store_dir`; appends go to the end of its
    /// last file.
    pub(super) fn open(store_dir: &Path) -> Result<VersionLog, StoreError> {
        VersionLog::open_with(store_dir, FILE_MAX)
    }

    pub(super) fn open_with(store_dir: &Path, max: u64) -> Result<VersionLog, StoreError> {
        let dir = store_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
        let mut last = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", &dir, e))?;
            let name = entry.file_name();
            let n = name
                .to_str()
                .and_then(|s| s.strip_suffix(".vlog"))
                .filter(|s| s.len() == 8)
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(n) = n {
                last = last.max(n);
            }
        }
        let (handle, end) = open_for_append(&dir.join(file_name(last)))?;
        let mark = Mark { file: last, end };
        Ok(VersionLog {
            dir,
            max,
            tail: Mutex::new(Tail {
                at: mark,
                handle: Arc::clone(&handle),
                unsynced: Vec::new(),
            }),
            synced: Mutex::new(mark),
            files: RwLock::new(BTreeMap::from([(last, handle)])),
            recent: Mutex::new(Recent::default()),
        })
    }

    /// Appends `page` (not yet synced) and returns the tree's reference to it.
    pub(super) fn append(&self, page: &[u8]) -> Result<[u8; REF_LEN], StoreError> {
        let len = u32::try_from(page.len())
            .ok()
            .filter(|&l| l <= PAGE_MAX)
            .ok_or_else(|| StoreError::Backend(format!("version page of {} bytes", page.len())))?;
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.at.end > 0 && tail.at.end + u64::from(len) > self.max {
            let file =
                tail.at.file.checked_add(1).ok_or_else(|| {
                    StoreError::Backend("version log: out of file numbers".into())
                })?;
            // A file left by a crash after it was created: appends go after what it holds.
            let (handle, end) = open_for_append(&self.dir.join(file_name(file)))?;
            self.files
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(file, Arc::clone(&handle));
            let old = std::mem::replace(&mut tail.handle, handle);
            tail.unsynced.push(old);
            tail.at = Mark { file, end };
        }
        let Mark { file, end: offset } = tail.at;
        tail.handle
            .write_all_at(page, offset)
            .map_err(|e| io("cannot write", &self.dir.join(file_name(file)), e))?;
        tail.at.end += u64::from(len);
        Ok(PageRef {
            file,
            offset,
            len,
            crc: crc32fast::hash(page),
        }
        .encode())
    }

    /// Bytes in the log's files.
    pub(super) fn size_on_disk(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io("cannot list", &self.dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", &self.dir, e))?;
            total += entry
                .metadata()
                .map_err(|e| io("cannot stat", &entry.path(), e))?
                .len();
        }
        Ok(total)
    }

    /// Everything appended so far ends here.
    pub(super) fn mark(&self) -> Mark {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner).at
    }

    /// Returns once everything appended before `mark` is on disk (one `fdatasync` per file
    /// written since the last sync, shared by every caller it covers).
    pub(super) fn sync_through(&self, mark: Mark) -> Result<(), StoreError> {
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if mark <= *synced {
            return Ok(());
        }
        let (files, now) = {
            let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
            let mut files = std::mem::take(&mut tail.unsynced);
            files.push(Arc::clone(&tail.handle));
            (files, tail.at)
        };
        for f in files {
            f.sync_data().map_err(|e| io("cannot sync", &self.dir, e))?;
        }
        *synced = now;
        Ok(())
    }

    /// The page bytes of a version page value from the tree: the value itself for a page
    /// stored inline (format 2), else the page its reference names, checked.
    pub(super) fn page<'v>(
        &self,
        key: &[u8],
        value: &'v [u8],
    ) -> Result<PageBytes<'v>, StoreError> {
        if value.first() != Some(&TAG_REF) {
            return Ok(PageBytes::Inline(value));
        }
        let Some(PageRef {
            file,
            offset,
            len,
            crc,
        }) = PageRef::decode(value)
        else {
            return Err(corrupt(
                key,
                format!("version page reference of {} bytes", value.len()),
            ));
        };
        if len > PAGE_MAX {
            return Err(corrupt(
                key,
                format!("version page reference of {len} bytes"),
            ));
        }
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get((file, offset), len);
        if let Some(page) = recent {
            return Ok(PageBytes::Logged(page));
        }
        let handle = self.file(key, file)?;
        let mut buf = vec![0u8; len as usize];
        handle.read_exact_at(&mut buf, offset).map_err(|e| {
            corrupt(
                key,
                format!(
                    "version page {} at {offset}+{len} unreadable: {e}",
                    file_name(file)
                ),
            )
        })?;
        if crc32fast::hash(&buf) != crc {
            return Err(corrupt(
                key,
                format!(
                    "version page {} at {offset}+{len} fails its checksum",
                    file_name(file)
                ),
            ));
        }
        let page = Arc::new(buf);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((file, offset), Arc::clone(&page));
        Ok(PageBytes::Logged(page))
    }

    fn file(&self, key: &[u8], n: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self
            .files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&n)
        {
            return Ok(Arc::clone(f));
        }
        let path = self.dir.join(file_name(n));
        let f = Arc::new(File::open(&path).map_err(|e| {
            corrupt(
                key,
                format!("version log file {} unreadable: {e}", path.display()),
            )
        })?);
        let mut files = self.files.write().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(files.entry(n).or_insert(f)))
    }
}

impl std::fmt::Debug for VersionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn pages_round_trip_and_reopen_appends_after_them() {
        let dir = temp();
        let log = VersionLog::open(dir.path()).expect("open");
        let a = log.append(b"\xB1first page").expect("append");
        let b = log.append(b"\xB1second").expect("append");
        log.sync_through(log.mark()).expect("sync");
        assert_eq!(log.page(b"k", &a).expect("a")[..], b"\xB1first page"[..]);
        assert_eq!(log.page(b"k", &b).expect("b")[..], b"\xB1second"[..]);
        drop(log);
        let log = VersionLog::open(dir.path()).expect("reopen");
        let c = log.append(b"\xB1third").expect("append");
        assert_eq!(log.page(b"k", &a).expect("a")[..], b"\xB1first page"[..]);
        assert_eq!(log.page(b"k", &c).expect("c")[..], b"\xB1third"[..]);
        assert_eq!(&c[5..13], &18u64.to_be_bytes(), "after the first two pages");
    }

    #[test]
    fn inline_pages_are_read_as_they_are() {
        let dir = temp();
        let log = VersionLog::open(dir.path()).expect("open");
        let inline = b"\xB1an inline format-2 page";
        assert!(matches!(log.page(b"k", inline), Ok(PageBytes::Inline(p)) if p == inline));
    }

    #[test]
    fn files_roll_over_and_old_ones_stay_readable() {
        let dir = temp();
        let log = VersionLog::open_with(dir.path(), 10).expect("open");
        let refs: Vec<_> = (0..5u8)
            .map(|i| log.append(&[0xB1, i, i, i, i, i]).expect("append"))
            .collect();
        log.sync_through(log.mark()).expect("sync");
        let files: Vec<u32> = refs
            .iter()
            .map(|r| u32::from_be_bytes([r[1], r[2], r[3], r[4]]))
            .collect();
        assert_eq!(files, [0, 1, 2, 3, 4], "one 6-byte page per 10-byte file");
        drop(log);
        let log = VersionLog::open_with(dir.path(), 10).expect("reopen");
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(log.page(b"k", r).expect("read")[1], i as u8);
        }
        let next = log.append(b"\xB1x").expect("append");
        assert_eq!(&next[1..5], &4u32.to_be_bytes(), "fits after the last page");
        assert_eq!(log.size_on_disk().expect("size"), 5 * 6 + 2);
    }

    #[test]
    fn damage_is_reported_not_returned() {
        let dir = temp();
        let log = VersionLog::open(dir.path()).expect("open");
        let r = log.append(b"\xB1some page bytes").expect("append");
        log.sync_through(log.mark()).expect("sync");
        let path = dir.path().join(DIR).join(file_name(0));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[3] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let err = log.page(b"k", &r).expect_err("flipped bit");
        assert!(err.to_string().contains("checksum"), "{err}");
        std::fs::write(&path, &bytes[..4]).expect("truncate");
        let err = log.page(b"k", &r).expect_err("short file");
        assert!(err.to_string().contains("unreadable"), "{err}");
        let mut missing = r;
        missing[1..5].copy_from_slice(&7u32.to_be_bytes());
        let err = log.page(b"k", &missing).expect_err("no such file");
        assert!(err.to_string().contains("unreadable"), "{err}");
        let err = log.page(b"k", &r[..20]).expect_err("short reference");
        assert!(err.to_string().contains("reference of 20 bytes"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_value_reads_or_errs_without_panicking(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let dir = temp();
            let log = VersionLog::open(dir.path()).expect("open");
            log.append(b"\xB1page").expect("append");
            let _ = log.page(b"k", &value);
        }
    }
}
