//! Finding a CI's record from its bare id (the API's ids, the ids in version pages).
//!
//! A CI record's key is `c/<host>\0<class>\0<id>`, and the id alone names neither host nor
//! class: the class index `xc/<class>\0<id>` → host does, so a lookup probes it once per
//! class (the store keeps classes few, `txn::MAX_CLASSES`). A [`Locator`] lists the classes
//! once and, when it is reused for many ids (the change feed), probes the classes it found
//! most often first: most CIs of a fleet are packages, so most lookups then cost one probe.

use super::keys;
use super::txn::backend;
use crate::store::StoreError;

/// Resolves CI ids to (host, class) by class probes.
pub(super) struct Locator<'a> {
    tree: &'a sled::Tree,
    /// Every class the store had when the locator was made, with how often a probe of it
    /// found the id; kept in descending order of that count.
    classes: Vec<(String, u64)>,
}

impl<'a> Locator<'a> {
    /// A locator for the classes in the store now: an id of a class added later is not
    /// found (make a new locator after the writes you need to see).
    pub(super) fn new(tree: &'a sled::Tree) -> Result<Self, StoreError> {
        let classes = super::all_classes(tree)?
            .into_iter()
            .map(|c| (c, 0))
            .collect();
        Ok(Locator { tree, classes })
    }

    /// Where the record of CI `id` is: (host, class), or None for an unknown id.
    pub(super) fn locate(&mut self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        for i in 0..self.classes.len() {
            let probe = keys::by_class(&self.classes[i].0, id);
            let Some(host) = self.tree.get(probe).map_err(backend)? else {
                continue;
            };
            let class = self.classes[i].0.clone();
            self.classes[i].1 += 1;
            // Keep the order by hits: this one moves up past those found less often.
            let mut j = i;
            while j > 0 && self.classes[j].1 > self.classes[j - 1].1 {
                self.classes.swap(j, j - 1);
                j -= 1;
            }
            return Ok(Some((String::from_utf8_lossy(&host).into_owned(), class)));
        }
        Ok(None)
    }
}
