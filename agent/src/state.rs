//! The agent's own state directory. It holds `instance_id`, minted once (a random UUID) and
//! kept, so that the collector can tell a reinstalled agent from a new host, and
//! `collector_config.pb`, the collector's latest `Config` (protobuf), so that a restarted
//! agent evaluates the collector's monitors before it reaches a collector. Both are written
//! to a temporary file, fsynced and renamed, so a crash never leaves half a file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cmdb_proto::v1;
use prost::Message;

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
    /// The kept collector configuration is not a valid `Config` message.
    #[error("{path}: not a collector Config: {reason}")]
    CorruptConfig { path: PathBuf, reason: String },
}

const INSTANCE_ID_FILE: &str = "instance_id";
const COLLECTOR_CONFIG_FILE: &str = "collector_config.pb";
/// A kept Config larger than this is not read (256 monitors take about 100 KiB).
const MAX_COLLECTOR_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

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
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    write_durably(dir, INSTANCE_ID_FILE, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// The collector's latest `Config` kept in `dir`; `None` when none was kept yet.
pub fn collector_config(dir: &Path) -> Result<Option<v1::Config>, StateError> {
    use std::io::Read;
    let path = dir.join(COLLECTOR_CONFIG_FILE);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    if let Err(source) = file
        .take(MAX_COLLECTOR_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
    {
        return Err(StateError::Io { path, source });
    }
    if bytes.len() as u64 > MAX_COLLECTOR_CONFIG_BYTES {
        return Err(StateError::CorruptConfig {
            path,
            reason: format!("larger than {MAX_COLLECTOR_CONFIG_BYTES} bytes"),
        });
    }
    v1::Config::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| StateError::CorruptConfig {
            path,
            reason: e.to_string(),
        })
}

/// Keeps `config` in `dir` as the collector's latest (write, fsync, rename).
pub fn save_collector_config(dir: &Path, config: &v1::Config) -> Result<(), StateError> {
    write_durably(dir, COLLECTOR_CONFIG_FILE, &config.encode_to_vec())
}

/// Writes `dir/name` so that a crash leaves the old file or the new one, never half of one.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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

    #[test]
    fn the_collector_config_is_kept_and_a_corrupt_one_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(collector_config(dir.path()).unwrap(), None);
        let c = v1::Config {
            heartbeat_seconds: 30,
            monitors: vec![v1::MonitorSpec {
                name: "web".into(),
                kind: v1::MonitorKind::TcpPort as i32,
                target: "443".into(),
            }],
            ..Default::default()
        };
        save_collector_config(dir.path(), &c).unwrap();
        assert_eq!(collector_config(dir.path()).unwrap(), Some(c));
        fs::write(dir.path().join(COLLECTOR_CONFIG_FILE), b"\xff\xff\xff").unwrap();
        assert!(matches!(
            collector_config(dir.path()),
            Err(StateError::CorruptConfig { .. })
        ));
    }
}
