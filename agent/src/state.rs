//! The agent's own state directory. Today it holds `instance_id`, minted once (a random
//! UUID) and kept, so that the collector can tell a reinstalled agent from a new host.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A state directory that cannot hold what the agent must keep.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or file could not be created or read.
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but does not hold a UUID.
    #[error("{0}: not a UUID; move it aside to mint a new instance id")]
    Corrupt(PathBuf),
}

const INSTANCE_ID_FILE: &str = "instance_id";

/// Reads the instance id kept in `dir`, minting and durably storing one on first use.
pub fn instance_id(dir: &Path) -> Result<String, StateError> {
    let path = dir.join(INSTANCE_ID_FILE);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim();
            return uuid::Uuid::parse_str(s)
                .map(|u| u.hyphenated().to_string())
                .map_err(|_| StateError::Corrupt(path.clone()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    fs::create_dir_all(dir).map_err(io)?;
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    // Write-then-rename so that a crash never leaves a half-written id behind.
    let tmp = dir.join(format!("{INSTANCE_ID_FILE}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(id.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = instance_id(dir.path()).unwrap();
        let b = instance_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(INSTANCE_ID_FILE), "garbage").unwrap();
        assert!(matches!(
            instance_id(dir.path()),
            Err(StateError::Corrupt(_))
        ));
    }
}
