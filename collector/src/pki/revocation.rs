//! The agent revocation list: `<pki dir>/revoked.json`, `{"version": 1, "agents": {"agt-…":
//! {"revoked_at": <unix s>}}}`, changed under a flock with an atomic rewrite (see
//! [`crate::tokens::json_file`]) so that `cmdb-collector agent revoke` can run next to a
//! serving collector.
//!
//! Invariants: an id once revoked stays revoked (there is no un-revoke; re-enrollment makes
//! a new id). Readers keep an in-memory set reloaded when the file's stamp changes. A list
//! that cannot be read makes every agent count as revoked (fail closed) until it can; a
//! corrupt list is never replaced, since that would silently un-revoke agents. The list is
//! bounded by [`MAX_REVOKED`].

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::tokens::json_file::{JsonFile, JsonFileError, Stamp};

/// Most revoked agents the list holds.
pub const MAX_REVOKED: usize = 200_000;
const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
const FILE_NAME: &str = "revoked.json";
const FORMAT_VERSION: u32 = 1;

/// Why the revocation list could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The file could not be read or written.
    #[error(transparent)]
    File(#[from] JsonFileError),
    /// The list already holds [`MAX_REVOKED`] agents.
    #[error("the revocation list already holds {MAX_REVOKED} agents")]
    Full,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RevokedFile {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    agents: BTreeMap<String, Revoked>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revoked {
    revoked_at: u64,
}

#[derive(Default)]
struct Cache {
    /// `None` until loaded; then the stamp of the version loaded (inner `None`: no file).
    loaded: Option<Option<Stamp>>,
    ids: HashSet<String>,
    /// The last read failed; reported once per failure streak.
    broken: bool,
}

/// The revocation list of one PKI directory.
pub(crate) struct Revocations {
    file: JsonFile,
    cache: Mutex<Cache>,
}

impl Revocations {
    pub(crate) fn new(dir: &Path) -> Revocations {
        Revocations {
            file: JsonFile::new(dir.join(FILE_NAME), MAX_FILE_BYTES),
            cache: Mutex::new(Cache::default()),
        }
    }

    pub(crate) fn revoke(&self, agent_id: &str, now: SystemTime) -> Result<(), RevocationError> {
        let revoked_at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.file.update(|doc: &mut RevokedFile| {
            if doc.agents.contains_key(agent_id) {
                return Ok(((), false));
            }
            if doc.agents.len() >= MAX_REVOKED {
                return Err(RevocationError::Full);
            }
            doc.version = FORMAT_VERSION;
            doc.agents
                .insert(agent_id.to_string(), Revoked { revoked_at });
            Ok(((), true))
        })?;
        tracing::info!(agent_id, "Agent revoked.");
        Ok(())
    }

    pub(crate) fn is_revoked(&self, agent_id: &str) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match self.refresh(&mut cache) {
            Ok(()) => {
                if cache.broken {
                    tracing::info!(path = %self.file.path().display(), "Revocation list readable again.");
                    cache.broken = false;
                }
                cache.ids.contains(agent_id)
            }
            Err(e) => {
                if !cache.broken {
                    tracing::error!(path = %self.file.path().display(), error = %e, "Revocation list unreadable; refusing every agent until it is fixed.");
                    cache.broken = true;
                }
                // Forget the old set, so that recovery always re-reads.
                cache.loaded = None;
                true
            }
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<(String, SystemTime)>, RevocationError> {
        let (doc, _) = self.file.read::<RevokedFile>()?;
        Ok(doc
            .agents
            .into_iter()
            .map(|(id, r)| {
                let at = UNIX_EPOCH
                    .checked_add(Duration::from_secs(r.revoked_at))
                    .unwrap_or(UNIX_EPOCH);
                (id, at)
            })
            .collect())
    }

    fn refresh(&self, cache: &mut Cache) -> Result<(), JsonFileError> {
        let stamp = self.file.stamp()?;
        if cache.loaded == Some(stamp) {
            return Ok(());
        }
        let (doc, read_stamp) = self.file.read::<RevokedFile>()?;
        cache.ids = doc.agents.into_keys().collect();
        cache.loaded = Some(read_stamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn revocations_are_seen_by_other_instances_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let server = Revocations::new(dir.path());
        let cli = Revocations::new(dir.path());
        assert!(!server.is_revoked("agt-1"));
        cli.revoke("agt-1", SystemTime::now()).unwrap();
        cli.revoke("agt-1", SystemTime::now()).unwrap();
        assert!(server.is_revoked("agt-1"));
        assert!(!server.is_revoked("agt-2"));
        assert_eq!(server.list().unwrap().len(), 1);
    }

    #[test]
    fn unreadable_list_fails_closed_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let r = Revocations::new(dir.path());
        r.revoke("agt-1", SystemTime::now()).unwrap();
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, b"{broken").unwrap();
        assert!(r.is_revoked("agt-2"));
        // A corrupt list is not overwritten by a revoke.
        assert!(r.revoke("agt-3", SystemTime::now()).is_err());
        std::fs::write(&path, good).unwrap();
        assert!(!r.is_revoked("agt-2"));
        assert!(r.is_revoked("agt-1"));
    }
}
