//! cmdb patch (see PATCHED.md): a bulk forward scan that works a leaf at a time.
//!
//! `Iter::next` pins an epoch guard, takes the concurrency-control read lock, binary
//! searches the current leaf for its last key and allocates the prefix-decoded key, once
//! per item. `Tree::scan_leaves` does the lock, the pin and the search once per leaf,
//! copies that leaf's items in range into reusable buffers, releases the guard and the
//! lock, and only then hands the items to the caller's closure by reference (so the
//! closure may do anything, including calling into this `Db`). It moves to the next leaf
//! by the leaf's right-sibling link when that sibling still starts where the leaf ends, and
//! otherwise looks the leaf's high key up from the root, as `Iter` always does.
//!
//! Consistency is `Iter`'s: every item is read from one leaf as that leaf was at one
//! moment, each key of the range at most once and in ascending order; writes that race
//! with the scan may or may not be seen.

use std::ops::{Bound, RangeBounds};

use super::*;

/// Where the scan is: the lowest key it may still return.
enum Cursor {
    /// Not looked up yet (or the sibling link could not be used): look `lo` up from the
    /// root.
    Seek,
    /// The right sibling of the leaf just read, which ended (exclusive) at `lo`.
    Sibling(PageId),
}

impl Tree {
    /// Calls `f(key, value)` for every item of `range`, in key order, until `f` returns
    /// `false`. A leaf's items are copied out under one epoch guard and one read of the
    /// concurrency control, then visited with both released; keys and values are borrowed
    /// from buffers reused across leaves (nothing is allocated per item once they have
    /// grown).
    ///
    /// # Errors
    ///
    /// As [`Tree::range`]'s iterator: an I/O or corruption error of the page cache.
    pub fn scan_leaves<K, R, F>(&self, range: R, mut f: F) -> Result<()>
    where
        K: AsRef<[u8]>,
        R: RangeBounds<K>,
        F: FnMut(&[u8], &[u8]) -> bool,
    {
        // The lowest key still wanted (inclusive): the smallest key above an excluded
        // start `s` is `s` followed by a zero byte.
        let mut lo: Vec<u8> = match range.start_bound() {
            Bound::Included(s) => s.as_ref().to_vec(),
            Bound::Excluded(s) => {
                let mut v = s.as_ref().to_vec();
                v.push(0);
                v
            }
            Bound::Unbounded => Vec::new(),
        };
        let hi: Bound<Vec<u8>> = match range.end_bound() {
            Bound::Included(e) => Bound::Included(e.as_ref().to_vec()),
            Bound::Excluded(e) => Bound::Excluded(e.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let below_hi = |k: &[u8]| match &hi {
            Bound::Included(h) => k <= h.as_slice(),
            Bound::Excluded(h) => k < h.as_slice(),
            Bound::Unbounded => true,
        };

        let mut keys: Vec<u8> = Vec::new();
        let mut values: Vec<u8> = Vec::new();
        // (end of the key in `keys`, end of the value in `values`) of each item.
        let mut ends: Vec<(usize, usize)> = Vec::new();
        let mut cursor = Cursor::Seek;

        loop {
            if !below_hi(&lo) {
                return Ok(());
            }
            keys.clear();
            values.clear();
            ends.clear();
            // Whether the range ends within this leaf.
            let mut done = false;
            {
                let _cc = concurrency_control::read();
                let guard = pin();
                let sibling = match cursor {
                    Cursor::Sibling(pid) => {
                        match self.view_for_pid(pid, &guard)? {
                            // Usable only while it still starts exactly where the previous
                            // leaf ended (no split or merge moved the boundary since), is a
                            // leaf, and is not being merged away.
                            Some(view)
                                if view.lo.as_ref() == lo.as_slice()
                                    && !view.merging
                                    && view.merging_child.is_none()
                                    && !view.data.is_index() =>
                            {
                                Some(view)
                            }
                            _ => None,
                        }
                    }
                    Cursor::Seek => None,
                };
                let view = match sibling {
                    Some(view) => view,
                    None => self.view_for_key(&lo, &guard)?,
                };
                let node: &Node = &view;
                let leaf = match node.data.leaf_ref() {
                    Some(leaf) => leaf,
                    None => {
                        return Err(Error::ReportableBug(
                            "scan_leaves: the lookup of a key ended on an index node"
                                .to_owned(),
                        ))
                    }
                };
                let prefix_len = usize::from(node.prefix_len);
                let prefix = &node.lo[..prefix_len];
                // view_for_key and the sibling check give node.lo <= lo < node.hi, so `lo`
                // shares the node's prefix (every key between lo and hi does).
                let (start, searched) = match lo.get(prefix_len..) {
                    Some(encoded) if lo.starts_with(prefix) => {
                        match leaf
                            .keys
                            .binary_search_by(|k| fastcmp(k, encoded))
                        {
                            Ok(i) | Err(i) => (i, true),
                        }
                    }
                    // Cannot happen (see above); should it, compare every key with lo.
                    _ => (0, false),
                };
                for (k, v) in
                    leaf.keys[start..].iter().zip(&leaf.values[start..])
                {
                    let from = keys.len();
                    keys.extend_from_slice(prefix);
                    keys.extend_from_slice(k);
                    if !searched && keys[from..] < *lo.as_slice() {
                        keys.truncate(from);
                        continue;
                    }
                    if !below_hi(&keys[from..]) {
                        keys.truncate(from);
                        done = true;
                        break;
                    }
                    values.extend_from_slice(v);
                    ends.push((keys.len(), values.len()));
                }
                if node.hi.is_empty() {
                    done = true;
                } else if !done {
                    lo.clear();
                    lo.extend_from_slice(&node.hi);
                    cursor = match node.next {
                        Some(next) => Cursor::Sibling(next.get()),
                        None => Cursor::Seek,
                    };
                }
            }
            let (mut k0, mut v0) = (0, 0);
            for &(k1, v1) in &ends {
                if !f(&keys[k0..k1], &values[v0..v1]) {
                    return Ok(());
                }
                k0 = k1;
                v0 = v1;
            }
            if done {
                return Ok(());
            }
        }
    }
}
