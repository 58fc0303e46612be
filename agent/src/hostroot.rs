//! Every path the agent reads on the host goes through [`HostRoot`], so that
//! `--host-root DIR` (the agent in a container with the host at /host, or a fixture tree in
//! a test) changes where /proc, /sys, /etc, /var, /lib and /run are read from, everywhere.
//!
//! Reads are size-capped: a host file is input, and input is bounded.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Default cap for one file read through [`HostRoot::read_to_string`].
pub const DEFAULT_READ_CAP: u64 = 16 * 1024 * 1024;

/// A failed read of a host file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file does not exist.
    #[error("{0}: not found")]
    NotFound(PathBuf),
    /// The agent lacks the permission (not root, no CAP_DAC_READ_SEARCH).
    #[error("{0}: permission denied")]
    PermissionDenied(PathBuf),
    /// The file is larger than the cap for this read.
    #[error("{path}: larger than {cap} bytes")]
    TooLarge { path: PathBuf, cap: u64 },
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ReadError {
    pub fn from_io(path: &Path, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound(path.to_owned()),
            io::ErrorKind::PermissionDenied => ReadError::PermissionDenied(path.to_owned()),
            _ => ReadError::Io {
                path: path.to_owned(),
                source: e,
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::NotFound(_))
    }

    pub fn is_permission_denied(&self) -> bool {
        matches!(self, ReadError::PermissionDenied(_))
    }
}

/// The root the host's filesystem is read from ("/" on a normal install).
#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot::new("/")
    }
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    /// True when reading the running host itself (root is "/"), where the live kernel's
    /// answers (statvfs, uname, /proc/self) are the host's answers.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The directory the host is mounted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps an absolute host path ("/proc/meminfo") to where it is readable.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let p = host_path.as_ref();
        let rel = p.strip_prefix("/").unwrap_or(p);
        self.root.join(rel)
    }

    /// Reads a host file as UTF-8 (lossily), capped at [`DEFAULT_READ_CAP`].
    pub fn read_to_string(&self, host_path: impl AsRef<Path>) -> Result<String, ReadError> {
        self.read_to_string_capped(host_path, DEFAULT_READ_CAP)
    }

    /// Reads a host file as UTF-8 (invalid bytes replaced), refusing files over `cap` bytes.
    pub fn read_to_string_capped(
        &self,
        host_path: impl AsRef<Path>,
        cap: u64,
    ) -> Result<String, ReadError> {
        let bytes = self.read_capped(host_path, cap)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Reads a host file's bytes, refusing files over `cap` bytes.
    pub fn read_capped(&self, host_path: impl AsRef<Path>, cap: u64) -> Result<Vec<u8>, ReadError> {
        let path = self.path(host_path);
        let file = fs::File::open(&path).map_err(|e| ReadError::from_io(&path, e))?;
        let mut buf = Vec::new();
        // Read one byte past the cap to tell "exactly cap" from "more than cap"; /proc and
        // /sys files report size 0, so the length must come from reading, not metadata.
        file.take(cap.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| ReadError::from_io(&path, e))?;
        if buf.len() as u64 > cap {
            return Err(ReadError::TooLarge { path, cap });
        }
        Ok(buf)
    }

    /// Reads a small attribute file (sysfs, procfs) and trims it; `None` when absent or empty.
    pub fn read_trimmed(&self, host_path: impl AsRef<Path>) -> Result<Option<String>, ReadError> {
        match self.read_to_string_capped(host_path, 64 * 1024) {
            Ok(s) => {
                let t = s.trim();
                Ok((!t.is_empty()).then(|| t.to_owned()))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The target of a symlink on the host, as text (never followed across the root).
    pub fn read_link(&self, host_path: impl AsRef<Path>) -> Result<PathBuf, ReadError> {
        let path = self.path(host_path);
        fs::read_link(&path).map_err(|e| ReadError::from_io(&path, e))
    }

    /// Names of the entries of a host directory, sorted.
    pub fn read_dir_names(&self, host_path: impl AsRef<Path>) -> Result<Vec<String>, ReadError> {
        let path = self.path(host_path);
        let rd = fs::read_dir(&path).map_err(|e| ReadError::from_io(&path, e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| ReadError::from_io(&path, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Whether a host path exists (without following a final symlink's target outside root).
    pub fn exists(&self, host_path: impl AsRef<Path>) -> bool {
        fs::symlink_metadata(self.path(host_path)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_mapped_under_the_root() {
        let r = HostRoot::new("/host");
        assert_eq!(r.path("/proc/meminfo"), PathBuf::from("/host/proc/meminfo"));
        assert_eq!(r.path("etc/passwd"), PathBuf::from("/host/etc/passwd"));
        assert!(HostRoot::default().is_live());
        assert!(!r.is_live());
    }

    #[test]
    fn reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/big"), vec![b'x'; 100]).unwrap();
        let r = HostRoot::new(dir.path());
        assert!(matches!(
            r.read_capped("/etc/big", 99),
            Err(ReadError::TooLarge { .. })
        ));
        assert_eq!(r.read_capped("/etc/big", 100).unwrap().len(), 100);
        assert!(r.read_to_string("/etc/missing").unwrap_err().is_not_found());
        assert_eq!(r.read_trimmed("/etc/missing").unwrap(), None);
    }
}
