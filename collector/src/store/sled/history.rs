//! Reading version history out of the version pages.
//!
//! Versions are not keyed one by one: each commit writes the versions it made as a few
//! pages under `v/<commit>`, sorted by (ci id, version). A CI record names the commit of
//! its latest version (`head`) and every version names the commit of the one before it
//! (`prev`, 0 for version 1), so a CI's history is a chain walked newest first, one page
//! lookup per version. `old_attrs` is the previous version's `attrs` (every version stores
//! the full attributes, and a CI's attributes never change without a version).

use std::cmp::Ordering;

use cmdb_proto::model::Attrs;

use super::codec::{PageEntries, StoredVersion, decode_version_payload};
use super::keys;
use super::txn::backend;
use super::vlog::VersionLog;
use crate::store::{CiRecord, CiVersion, StoreError};

/// Version `version` of CI `id`, looked up in the pages of `commit`.
pub(super) fn find_version(
    tree: &sled::Tree,
    log: &VersionLog,
    commit: u64,
    id: &str,
    version: u64,
) -> Result<Option<StoredVersion>, StoreError> {
    let lo = keys::version_pages(commit);
    let hi = keys::version_page(commit, id.as_bytes(), version);
    // The page holding it is the last one whose first entry is not after it.
    let Some(kv) = tree.range(lo..=hi).next_back() else {
        return Ok(None);
    };
    let (k, value) = kv.map_err(backend)?;
    let page = log.page(&k, &value)?;
    for entry in PageEntries::new(&k, &page)? {
        let (eid, ev, payload) = entry?;
        match (eid, ev).cmp(&(id, version)) {
            Ordering::Less => {}
            Ordering::Equal => return decode_version_payload(&k, payload).map(Some),
            Ordering::Greater => break,
        }
    }
    Ok(None)
}

/// The `old_attrs` of version `version` of CI `id` whose previous version is in the pages
/// of commit `prev`: that version's attributes (none for version 1). One page lookup.
pub(super) fn attrs_before(
    tree: &sled::Tree,
    log: &VersionLog,
    id: &str,
    version: u64,
    prev: u64,
) -> Result<Attrs, StoreError> {
    if version <= 1 {
        return Ok(Attrs::new());
    }
    match find_version(tree, log, prev, id, version - 1)? {
        Some(v) => Ok(v.attrs),
        None => Err(StoreError::Corrupt {
            key: id.to_owned(),
            reason: format!(
                "version {} is missing from page {prev} (damaged store? run verify)",
                version - 1
            ),
        }),
    }
}

/// A CI's chain is broken: a version it needs is not in the page it points to.
fn missing(rec: &CiRecord, version: u64, commit: u64) -> StoreError {
    StoreError::Corrupt {
        key: rec.id.clone(),
        reason: format!(
            "version {version} of {} versions is missing from page {commit} (damaged store? \
             run verify)",
            rec.version
        ),
    }
}

/// The newest `max` versions of `rec` (whose latest version is in page `head`), oldest
/// first, each with the attributes it replaced.
pub(super) fn versions(
    tree: &sled::Tree,
    log: &VersionLog,
    rec: &CiRecord,
    head: u64,
    max: usize,
) -> Result<Vec<CiVersion>, StoreError> {
    // Newest first; one more than `max` when there is one: its attributes are the oldest
    // returned version's `old_attrs`.
    let mut chain: Vec<(u64, StoredVersion)> = Vec::new();
    let (mut version, mut commit) = (rec.version, head);
    while version >= 1 && chain.len() <= max {
        let v = find_version(tree, log, commit, &rec.id, version)?
            .ok_or_else(|| missing(rec, version, commit))?;
        commit = v.prev;
        chain.push((version, v));
        version -= 1;
    }
    let mut older = if chain.len() > max {
        chain.pop().map(|(_, v)| v.attrs).unwrap_or_default()
    } else {
        Default::default()
    };
    let mut out = Vec::with_capacity(chain.len());
    for (version, v) in chain.into_iter().rev() {
        let old_attrs = std::mem::replace(&mut older, v.attrs.clone());
        out.push(CiVersion {
            ci_id: rec.id.clone(),
            version,
            change: v.change,
            state: v.state,
            attrs: v.attrs,
            old_attrs,
            observed_at: v.observed_at,
            agent_id: v.agent_id,
            seq: v.seq,
            change_id: v.change_id,
        });
    }
    Ok(out)
}

/// Walks the whole chain of `rec` (for `verify`): Ok(number of versions found) or a
/// description of where it breaks.
pub(super) fn check_chain(
    tree: &sled::Tree,
    log: &VersionLog,
    rec: &CiRecord,
    head: u64,
) -> Result<Result<u64, String>, StoreError> {
    let (mut version, mut commit) = (rec.version, head);
    let mut found = 0;
    while version >= 1 {
        let found_version = match find_version(tree, log, commit, &rec.id, version) {
            Ok(v) => v,
            // A damaged page breaks this chain; the scan goes on with the next CI.
            Err(StoreError::Corrupt { key, reason }) => {
                return Ok(Err(format!(
                    "CI {} version {version}: {key}: {reason}",
                    rec.id
                )));
            }
            Err(e) => return Err(e),
        };
        let Some(v) = found_version else {
            return Ok(Err(format!(
                "CI {} is at version {} but version {version} is missing (page {commit})",
                rec.id, rec.version
            )));
        };
        found += 1;
        if version == 1 && v.prev != 0 {
            return Ok(Err(format!(
                "CI {}: version 1 points to an older page {}",
                rec.id, v.prev
            )));
        }
        commit = v.prev;
        version -= 1;
    }
    if rec.version == 0 {
        return Ok(Err(format!("CI {} has no versions", rec.id)));
    }
    Ok(Ok(found))
}
