//! One small JSON document on disk that several processes read and change: the token file,
//! the revocation list.
//!
//! Invariants: a change happens under an exclusive `flock` on a sibling `<name>.lock` file
//! (never on the document itself, whose inode every rewrite replaces), and is written as a
//! whole new file (`<name>.tmp`, fsync, rename, fsync of the directory). A reader therefore
//! sees one complete version, old or new, and needs no lock. The document is created with
//! mode 0600. A document larger than its bound, or one that does not parse, is an error:
//! never silently replaced by an empty one, since that would forget tokens or revocations.
//!
//! Writers in one process queue on an in-process mutex before they poll the `flock`: with
//! polling alone, an enrollment storm (thousands of agents enrolling at once, 64 blocking
//! threads each waiting for the lock) let a few writers win every poll while others passed
//! the [`LOCK_WAIT`] deadline and failed with nothing wrong. The flock still orders this
//! process against others (the CLI).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a writer waits for another writer before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_POLL: Duration = Duration::from_millis(5);

/// Why the document could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// A file system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The document is not the JSON we wrote.
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The document is larger than its bound.
    #[error("{path} is {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// Another writer held the lock for longer than [`LOCK_WAIT`].
    #[error("{path} stayed locked by another writer for {LOCK_WAIT:?}")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
    },
}

/// Identifies one version of the document on disk: every rewrite is a new inode with a new
/// mtime, so a changed stamp means "re-read".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// A JSON document at a fixed path.
#[derive(Debug, Clone)]
pub struct JsonFile {
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
    max_bytes: u64,
    /// Writers of this process (and of this value's clones) take turns here first.
    writers: Arc<Mutex<()>>,
}

impl JsonFile {
    /// The document at `path`, refused when larger than `max_bytes`.
    pub fn new(path: PathBuf, max_bytes: u64) -> JsonFile {
        let with_suffix = |suffix: &str| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        JsonFile {
            lock_path: with_suffix(".lock"),
            tmp_path: with_suffix(".tmp"),
            path,
            max_bytes,
            writers: Arc::new(Mutex::new(())),
        }
    }

    /// The document's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current version's stamp, or `None` when the document does not exist yet.
    pub fn stamp(&self) -> Result<Option<Stamp>, JsonFileError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some(Stamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&self.path, e)),
        }
    }

    /// Reads the document (no lock needed, see the module doc); a missing document reads as
    /// `T::default()`. Returns the stamp of the version read, when it existed.
    pub fn read<T: DeserializeOwned + Default>(&self) -> Result<(T, Option<Stamp>), JsonFileError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((T::default(), None)),
            Err(e) => return Err(self.io(&self.path, e)),
        };
        let meta = file.metadata().map_err(|e| self.io(&self.path, e))?;
        if meta.len() > self.max_bytes {
            return Err(JsonFileError::TooLarge {
                path: self.path.clone(),
                size: meta.len(),
                max: self.max_bytes,
            });
        }
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        };
        let mut bytes = Vec::new();
        // +1 so that a file that grew after the metadata call is still caught.
        (&mut file)
            .take(self.max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(&self.path, e))?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(JsonFileError::TooLarge {
                path: self.path.clone(),
                size: bytes.len() as u64,
                max: self.max_bytes,
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|source| JsonFileError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        Ok((value, Some(stamp)))
    }

    /// Read, change and rewrite the document under the exclusive lock. `change` returns
    /// `(result, changed)`; the document is rewritten only when `changed` is true, and not at
    /// all when `change` fails.
    pub fn update<T, R, E>(
        &self,
        change: impl FnOnce(&mut T) -> Result<(R, bool), E>,
    ) -> Result<R, E>
    where
        T: DeserializeOwned + Serialize + Default,
        E: From<JsonFileError>,
    {
        let turn = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = self.lock()?;
        let (mut doc, _) = self.read::<T>()?;
        let (result, changed) = change(&mut doc)?;
        if changed {
            self.write(&doc)?;
        }
        drop(lock);
        drop(turn);
        Ok(result)
    }

    fn lock(&self) -> Result<File, JsonFileError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| self.io(&self.lock_path, e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_POLL);
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(JsonFileError::LockTimeout {
                        path: self.lock_path.clone(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(self.io(&self.lock_path, e)),
            }
        }
    }

    fn write<T: Serialize>(&self, doc: &T) -> Result<(), JsonFileError> {
        let mut bytes =
            serde_json::to_vec_pretty(doc).map_err(|source| JsonFileError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        if bytes.len() as u64 > self.max_bytes {
            return Err(JsonFileError::TooLarge {
                path: self.path.clone(),
                size: bytes.len() as u64,
                max: self.max_bytes,
            });
        }
        write_atomically(&self.path, &self.tmp_path, &bytes, 0o600)
            .map_err(|e| self.io(&self.path, e))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> JsonFileError {
        JsonFileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `tmp`, syncs it, renames it over `path` and syncs the directory: after
/// a crash `path` holds the old or the new content, never a mix.
pub fn write_atomically(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, path)?;
    sync_parent(path)
}

/// fsync of the directory holding `path`, so that a rename or a new file survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::BTreeMap;

    type Doc = BTreeMap<String, u32>;

    #[test]
    fn missing_reads_as_default_and_update_creates_0600() {
        let dir = tempfile::tempdir().unwrap();
        let f = JsonFile::new(dir.path().join("doc.json"), 1024);
        let (doc, stamp): (Doc, _) = f.read().unwrap();
        assert!(doc.is_empty() && stamp.is_none());
        f.update(|d: &mut Doc| {
            d.insert("a".into(), 1);
            Ok::<_, JsonFileError>(((), true))
        })
        .unwrap();
        let (doc, stamp): (Doc, _) = f.read().unwrap();
        assert_eq!(doc.get("a"), Some(&1));
        assert_eq!(stamp, f.stamp().unwrap());
        let mode = std::fs::metadata(f.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = JsonFile::new(dir.path().join("doc.json"), 1024);
        let r = f.update(|d: &mut Doc| {
            d.insert("a".into(), 1);
            Err::<((), bool), _>(JsonFileError::LockTimeout { path: "x".into() })
        });
        assert!(r.is_err());
        assert!(f.stamp().unwrap().is_none());
    }

    #[test]
    fn corrupt_and_oversized_documents_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        std::fs::write(&path, b"{not json").unwrap();
        let f = JsonFile::new(path.clone(), 1024);
        assert!(matches!(
            f.read::<Doc>(),
            Err(JsonFileError::Corrupt { .. })
        ));
        // An update must not replace a corrupt document with an empty one.
        let r = f.update(|_: &mut Doc| Ok::<_, JsonFileError>(((), true)));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
        std::fs::write(&path, vec![b' '; 2000]).unwrap();
        assert!(matches!(
            f.read::<Doc>(),
            Err(JsonFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let f = JsonFile::new(path.clone(), 1 << 20);
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        f.update(|d: &mut Doc| {
                            *d.entry("n".into()).or_default() += 1;
                            Ok::<_, JsonFileError>(((), true))
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (doc, _): (Doc, _) = JsonFile::new(path, 1 << 20).read().unwrap();
        assert_eq!(doc.get("n"), Some(&100));
    }

    #[test]
    fn clones_queue_in_process_and_lose_nothing() {
        // The server's shape: one value, cloned into many blocking threads.
        let dir = tempfile::tempdir().unwrap();
        let f = JsonFile::new(dir.path().join("doc.json"), 1 << 20);
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        f.update(|d: &mut Doc| {
                            *d.entry("n".into()).or_default() += 1;
                            Ok::<_, JsonFileError>(((), true))
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (doc, _): (Doc, _) = f.read().unwrap();
        assert_eq!(doc.get("n"), Some(&160));
    }
}
