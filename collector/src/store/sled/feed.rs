//! The change feed: every CI version any commit wrote, in (commit, CI id, version) order,
//! read straight out of the version pages — it needs no key or index of its own.
//!
//! Why this order is the pages' order: a page key is `v/<u64 BE commit><first ci id><u64
//! BE first version>` and the entries of a commit's pages are sorted by (ci id, version)
//! and split without overlap, so a forward scan of `v/` yields versions in exactly
//! [`FeedPos`] order. A read resumes by seeking to the page holding the position (the last
//! page of its commit starting at or before it) and skipping entries up to it, so a
//! position in the middle of a page, between entries, or in a commit that wrote no versions
//! (record writes, agent-only updates) all resume exactly.
//!
//! Why nothing is missed or repeated: commit numbers are assigned under the writer lock,
//! one batch after the other, and a batch is visible whole or not at all; so a version
//! committed after a read has a higher commit number than anything that read returned, and
//! lands after the consumer's position. A read stops at the last commit number the store
//! had published when it began (`commits`, stored after the batch is applied) and lists
//! the classes after that, so every CI it returns can be located (without the bound, a
//! commit creating a new class in the middle of a read was reported as corrupt: the
//! `a_consumer_reading_during_writes…` test); later commits are the next read's. Pages
//! never change once written, so a position once returned stays valid for good.
//!
//! What an entry costs: the page scan itself is shared by the ~40 entries of a 4 KiB page;
//! each entry then needs its CI's identity (host, class, key: class-index probes through a
//! [`Locator`], most-found class first, plus one CI record read; kept in the store's
//! [`Identities`], shared by every read, so a CI met again costs a hash lookup) and its
//! `old_attrs` (one page lookup in the commit of the previous version, none
//! when the previous version is the entry just returned). Measured in the module doc of
//! `sled`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::codec::{PageEntries, decode_version_payload};
use super::history;
use super::keys;
use super::locate::Locator;
use super::txn::{backend, read_ci};
use super::vlog::VersionLog;
use crate::store::{CiVersion, FeedEntry, FeedHead, FeedPos, StoreError};

/// Who a CI is; fixed when it is created (its id is a digest of host, class and key).
struct Identity {
    host: String,
    class: String,
    key: String,
}

/// CI identities met by feed reads, kept across reads: a reader behind the feed's tail
/// (the judgment engine in a backlog) meets the same CIs step after step, and an identity
/// never changes, so a cached one is never stale. Bounded: two generations of at most
/// [`Identities::GENERATION`] entries each; when the newer one is full the older one is
/// dropped (an entry met in the older one moves to the newer one), which keeps the CIs
/// met recently in at most two generations' worth of memory.
#[derive(Default)]
pub(super) struct Identities {
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    new: HashMap<Box<str>, Arc<Identity>>,
    old: HashMap<Box<str>, Arc<Identity>>,
}

impl Identities {
    /// Entries per generation (~250 bytes each with its strings and map slots: ~16 MiB for
    /// both, full). A drift storm over 20 hosts × 800 packages fits in one.
    pub(super) const GENERATION: usize = 32_768;

    fn get(&self, id: &str) -> Option<Arc<Identity>> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(who) = g.new.get(id) {
            return Some(Arc::clone(who));
        }
        let who = g.old.remove(id)?;
        g.insert(id, Arc::clone(&who));
        Some(who)
    }

    fn insert(&self, id: &str, who: Arc<Identity>) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, who);
    }

    /// How many identities are held (both generations).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.new.len() + g.old.len()
    }
}

impl Generations {
    fn insert(&mut self, id: &str, who: Arc<Identity>) {
        if self.new.len() >= Identities::GENERATION {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(id.into(), who);
    }
}

/// What a feed read behind the tail reads: the tree, the version log its pages are in, and
/// the identities met by earlier reads.
pub(super) struct Source<'a> {
    pub(super) tree: &'a sled::Tree,
    pub(super) log: &'a VersionLog,
    pub(super) identities: &'a Identities,
}

/// The entries after `after` (all from the start when `None`) of commits up to
/// `last_commit`, at most `limit`.
pub(super) fn read(
    src: &Source<'_>,
    last_commit: u64,
    after: Option<&FeedPos>,
    limit: usize,
) -> Result<Vec<FeedEntry>, StoreError> {
    let mut out: Vec<FeedEntry> = Vec::new();
    walk(src, last_commit, after, limit, |at, who| {
        let v = decode_version_payload(at.page, at.payload)?;
        // A CI changed twice by one commit has adjacent entries: the previous version
        // is then usually the entry just returned.
        let old_attrs = match out.last() {
            Some(e)
                if v.prev == at.commit
                    && e.pos.commit == at.commit
                    && at.version.checked_sub(1) == Some(e.pos.version)
                    && e.pos.ci_id == at.id =>
            {
                e.version.attrs.clone()
            }
            _ => history::attrs_before(src.tree, src.log, at.id, at.version, v.prev)?,
        };
        out.push(FeedEntry {
            pos: at.pos(),
            host_id: who.host.clone(),
            class: who.class.clone(),
            key: who.key.clone(),
            version: CiVersion {
                ci_id: at.id.to_owned(),
                version: at.version,
                change: v.change,
                state: v.state,
                attrs: v.attrs,
                old_attrs,
                observed_at: v.observed_at,
                agent_id: v.agent_id,
                seq: v.seq,
                change_id: v.change_id,
            },
        });
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// The same positions as [`read`], without the versions' contents: no payload decoding and
/// no previous-version lookups, only each CI's identity.
pub(super) fn read_heads(
    src: &Source<'_>,
    last_commit: u64,
    after: Option<&FeedPos>,
    limit: usize,
) -> Result<Vec<FeedHead>, StoreError> {
    let mut out: Vec<FeedHead> = Vec::new();
    walk(src, last_commit, after, limit, |at, who| {
        out.push(FeedHead {
            pos: at.pos(),
            host_id: who.host.clone(),
            class: who.class.clone(),
            key: who.key.clone(),
        });
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// One version entry met by [`walk`].
struct At<'a> {
    commit: u64,
    /// The key of the page holding it (named in corruption reports).
    page: &'a [u8],
    id: &'a str,
    version: u64,
    payload: &'a [u8],
}

impl At<'_> {
    fn pos(&self) -> FeedPos {
        FeedPos {
            commit: self.commit,
            ci_id: self.id.to_owned(),
            version: self.version,
        }
    }
}

/// Calls `visit` with every version entry after `after` of commits up to `last_commit`, in
/// feed order, with its CI's identity, until it returns `false`.
fn walk(
    src: &Source<'_>,
    last_commit: u64,
    after: Option<&FeedPos>,
    limit: usize,
    mut visit: impl FnMut(&At<'_>, &Identity) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if limit == 0 {
        return Ok(());
    }
    // Made after `last_commit` was read, when first needed: it knows every class those
    // commits created.
    let Source {
        tree,
        log,
        identities,
    } = *src;
    let mut locator: Option<Locator<'_>> = None;
    for kv in tree.range(start_key(tree, after)?..) {
        let (k, value) = kv.map_err(backend)?;
        if !k.starts_with(keys::VERSION) {
            break;
        }
        let commit = keys::page_commit(&k).ok_or_else(|| corrupt(&k, "malformed page key"))?;
        if commit > last_commit {
            break;
        }
        let page = log.page(&k, &value)?;
        for entry in PageEntries::new(&k, &page)? {
            let (id, version, payload) = entry?;
            if after
                .is_some_and(|a| (commit, id, version) <= (a.commit, a.ci_id.as_str(), a.version))
            {
                continue;
            }
            let who = match identities.get(id) {
                Some(known) => known,
                None => {
                    let locator = match &mut locator {
                        Some(l) => l,
                        None => locator.insert(Locator::new(tree)?),
                    };
                    let who = Arc::new(identity(tree, locator, id, &k)?);
                    identities.insert(id, Arc::clone(&who));
                    who
                }
            };
            let at = At {
                commit,
                page: &k,
                id,
                version,
                payload,
            };
            if !visit(&at, &who)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Where a read after `after` starts: the page that may hold the next entry.
fn start_key(tree: &sled::Tree, after: Option<&FeedPos>) -> Result<Vec<u8>, StoreError> {
    let Some(a) = after else {
        return Ok(keys::VERSION.to_vec());
    };
    let first = keys::version_pages(a.commit);
    // Key order is position order only for ids of the one fixed length; for any other
    // (no CI has one) start at the commit's first page: the skip does the rest.
    if a.ci_id.len() != keys::CI_ID_LEN {
        return Ok(first);
    }
    let at = keys::version_page(a.commit, a.ci_id.as_bytes(), a.version);
    match tree.range(first.clone()..=at).next_back() {
        Some(kv) => Ok(kv.map_err(backend)?.0.to_vec()),
        None => Ok(first),
    }
}

/// Host, class and key of CI `id`, whose version is in page `page`.
fn identity(
    tree: &sled::Tree,
    locator: &mut Locator<'_>,
    id: &str,
    page: &[u8],
) -> Result<Identity, StoreError> {
    let Some((host, class)) = locator.locate(id)? else {
        return Err(corrupt(
            page,
            &format!("it holds a version of CI {id}, which is in no class index"),
        ));
    };
    let Some(ci) = read_ci(tree, &host, &class, id)? else {
        return Err(corrupt(
            page,
            &format!("it holds a version of CI {id}, whose record is missing"),
        ));
    };
    Ok(Identity {
        host,
        class,
        key: ci.row.key,
    })
}

fn corrupt(key: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: usize) -> Arc<Identity> {
        Arc::new(Identity {
            host: format!("h{n}"),
            class: "package".into(),
            key: format!("k{n}"),
        })
    }

    #[test]
    fn identities_stay_bounded_and_keep_the_recent_ones() {
        let ids = Identities::default();
        let cap = Identities::GENERATION;
        for n in 0..cap {
            ids.insert(&format!("id{n}"), who(n));
        }
        assert_eq!(ids.len(), cap);
        // The newer generation is full: the next insert starts another one.
        ids.insert("late", who(cap));
        assert_eq!(ids.len(), cap + 1);
        // Met again: moved to the newer generation, so it outlives the next rollover.
        let first = ids.get("id0").map(|w| w.key.clone());
        assert_eq!(first.as_deref(), Some("k0"));
        for n in 0..cap {
            ids.insert(&format!("again{n}"), who(n));
        }
        assert!(ids.len() <= 2 * cap, "{} entries", ids.len());
        assert!(
            ids.get("id1").is_none(),
            "an old entry not met again is dropped"
        );
        assert_eq!(
            ids.get("id0").map(|w| w.host.clone()).as_deref(),
            Some("h0")
        );
        assert_eq!(ids.get("nobody").map(|w| w.host.clone()), None);
    }
}
