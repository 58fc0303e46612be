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
//!
//! Cold leaves: once the page cache has filled up (paged a page out), a right sibling that
//! is not resident, stored as a base node plus at most `PAGE_CONSOLIDATION_THRESHOLD`
//! set/delete links, is read straight from the log (`PageCache::read_cold_node`) and its
//! items are copied out of the serialized bytes, the links merged in (`cold_leaf`): no
//! `Node` is built (no allocation per item), nothing is inserted into the cache, so a
//! one-pass scan of a store much larger than the cache neither pays for nor evicts for
//! pages it reads once. Anything else (resident, other links, an index node, merging, a
//! boundary that moved, bytes that do not parse) takes the cached path above.

use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering::Relaxed;

use super::*;

/// Whether `k` is below the range's end.
fn below(hi: &Bound<Vec<u8>>, k: &[u8]) -> bool {
    match hi {
        Bound::Included(h) => k <= h.as_slice(),
        Bound::Excluded(h) => k < h.as_slice(),
        Bound::Unbounded => true,
    }
}

/// One of sled's variable-length `u64`s (`impl Serialize for u64`), bounds-checked.
fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = buf.split_first()?;
    let (value, used) = match first {
        0..=240 => (u64::from(first), 0),
        241..=248 => {
            (240 + 256 * (u64::from(first) - 241) + u64::from(*rest.first()?), 1)
        }
        249 => (
            2288 + 256 * u64::from(*rest.first()?) + u64::from(*rest.get(1)?),
            2,
        ),
        other => {
            let sz = usize::from(other) - 247;
            let mut aligned = [0; 8];
            aligned[..sz].copy_from_slice(rest.get(..sz)?);
            (u64::from_le_bytes(aligned), sz)
        }
    };
    *buf = rest.get(used..)?;
    Some(value)
}

/// A length-prefixed byte string (`impl Serialize for IVec`), borrowed.
fn take_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(buf)?).ok()?;
    if buf.len() < len {
        return None;
    }
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    Some(bytes)
}

/// One byte.
fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = buf.split_first()?;
    *buf = rest;
    Some(b)
}

/// What `cold_leaf` found after the leaf's items.
struct ColdLeaf<'a> {
    /// The range ends within this leaf.
    done: bool,
    /// The leaf's high key (exclusive; empty: the last leaf).
    hi: &'a [u8],
    /// The right sibling's page id (0: none).
    next: u64,
}

/// Appends `prefix + k` and `v` to the buffers if the key is in `[lo, hi)`; `false` if it
/// is at or past `hi` (nothing appended: the range ends here).
fn push_item(
    prefix: &[u8],
    k: &[u8],
    v: &[u8],
    lo: &[u8],
    hi: &Bound<Vec<u8>>,
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
    ends: &mut Vec<(usize, usize)>,
) -> bool {
    let from = keys.len();
    keys.extend_from_slice(prefix);
    keys.extend_from_slice(k);
    if keys[from..] < *lo {
        // Cannot happen (the leaf starts at lo); skip it as the cached path would.
        keys.truncate(from);
        return true;
    }
    if !below(hi, &keys[from..]) {
        keys.truncate(from);
        return false;
    }
    values.extend_from_slice(v);
    ends.push((keys.len(), values.len()));
    true
}

/// The `Link::Set`/`Link::Del` updates of `links` (serialized `Link`s, in the order they
/// apply), the last one per key, sorted by (prefix-encoded) key; `None` for any other link
/// or bytes that do not parse.
fn leaf_updates(links: &[Vec<u8>]) -> Option<Vec<(&[u8], Option<&[u8]>)>> {
    let mut ops: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(links.len());
    for link in links {
        let buf = &mut link.as_slice();
        let op = match take_u8(buf)? {
            0 => {
                let k = take_bytes(buf)?;
                (k, Some(take_bytes(buf)?))
            }
            1 => (take_bytes(buf)?, None),
            // Merge links: not a plain leaf state.
            _ => return None,
        };
        match ops.binary_search_by(|(k, _)| k.cmp(&op.0)) {
            Ok(i) => ops[i] = op,
            Err(i) => ops.insert(i, op),
        }
    }
    Some(ops)
}

/// Copies the items in `[lo, hi)` of the leaf serialized in `frags` (its base, `impl
/// Serialize for Node`: next, merging child, merging, prefix length, lo, hi, then the
/// leaf's key count, keys and values; then its links, as `Node::apply` would apply them)
/// into the buffers, as the cached path does from a `Node`. `None` (buffers possibly partly
/// filled) if the node is not a leaf starting exactly at `lo`, is merging, has links other
/// than sets and deletes, or does not parse: the caller then uses the cached path.
fn cold_leaf<'a>(
    frags: &'a [Vec<u8>],
    lo: &[u8],
    hi: &Bound<Vec<u8>>,
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
    ends: &mut Vec<(usize, usize)>,
) -> Option<ColdLeaf<'a>> {
    let (base, links) = frags.split_first()?;
    let buf = &mut base.as_slice();
    let next = take_varint(buf)?;
    let merging_child = take_varint(buf)?;
    let merging = take_u8(buf)? != 0;
    let prefix_len = usize::from(take_u8(buf)?);
    let node_lo = take_bytes(buf)?;
    let node_hi = take_bytes(buf)?;
    let is_leaf = take_u8(buf)? == 0;
    if merging_child != 0 || merging || !is_leaf || node_lo != lo {
        return None;
    }
    let prefix = node_lo.get(..prefix_len)?;
    let ops = if links.is_empty() { Vec::new() } else { leaf_updates(links)? };
    let n = take_varint(buf)?;
    // Keys first, then values: a second cursor at the values.
    let mut key_buf: &[u8] = buf;
    let mut value_buf: &[u8] = buf;
    for _ in 0..n {
        take_bytes(&mut value_buf)?;
    }
    let leaf = |done| Some(ColdLeaf { done, hi: node_hi, next });
    // Merge the base's items (sorted) with the updates (sorted): an update replaces or
    // removes the base's item of its key, or adds one.
    let mut op = 0;
    for _ in 0..n {
        let k = take_bytes(&mut key_buf)?;
        let v = take_bytes(&mut value_buf)?;
        let mut base_item = Some(v);
        while let Some(&(ok, ov)) = ops.get(op) {
            if ok > k {
                break;
            }
            op += 1;
            if ok == k {
                base_item = None;
            }
            if let Some(ov) = ov {
                if !push_item(prefix, ok, ov, lo, hi, keys, values, ends) {
                    return leaf(true);
                }
            }
        }
        if let Some(v) = base_item {
            if !push_item(prefix, k, v, lo, hi, keys, values, ends) {
                return leaf(true);
            }
        }
    }
    for &(ok, ov) in &ops[op..] {
        if let Some(ov) = ov {
            if !push_item(prefix, ok, ov, lo, hi, keys, values, ends) {
                return leaf(true);
            }
        }
    }
    leaf(false)
}

/// Where the scan is: the lowest key it may still return.
enum Cursor {
    /// Not looked up yet (or the sibling link could not be used): look `lo` up from the
    /// root.
    Seek,
    /// The right sibling of the leaf just read, which ended (exclusive) at `lo`.
    Sibling(PageId),
}

impl Tree {
    /// How many leaves `scan_leaves` has read straight from the log (not resident in the
    /// page cache; read without deserializing or caching them) since this database was
    /// opened, over all its trees, and how many of those were stored as a base plus links.
    /// For tests and diagnostics.
    #[doc(hidden)]
    pub fn scan_leaves_cold_reads(&self) -> (u64, u64) {
        let pc = &self.context.pagecache;
        (pc.cold_leaf_reads.load(Relaxed), pc.cold_leaf_reads_linked.load(Relaxed))
    }

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
        let below_hi = |k: &[u8]| below(&hi, k);

        let mut keys: Vec<u8> = Vec::new();
        let mut values: Vec<u8> = Vec::new();
        // (end of the key in `keys`, end of the value in `values`) of each item.
        let mut ends: Vec<(usize, usize)> = Vec::new();
        let mut cursor = Cursor::Seek;
        // The serialized fragments of a leaf read straight from the log.
        let mut frags: Vec<Vec<u8>> = Vec::new();

        loop {
            if !below_hi(&lo) {
                return Ok(());
            }
            keys.clear();
            values.clear();
            ends.clear();
            // Whether the range ends within this leaf.
            let mut done = false;
            'leaf: {
                let _cc = concurrency_control::read();
                let guard = pin();
                if let Cursor::Sibling(pid) = cursor {
                    if self.context.pagecache.read_cold_node(
                        pid,
                        &guard,
                        &mut frags,
                    ) {
                        match cold_leaf(
                            &frags,
                            &lo,
                            &hi,
                            &mut keys,
                            &mut values,
                            &mut ends,
                        ) {
                            Some(leaf) => {
                                let pc = &self.context.pagecache;
                                pc.cold_leaf_reads.fetch_add(1, Relaxed);
                                if frags.len() > 1 {
                                    pc.cold_leaf_reads_linked
                                        .fetch_add(1, Relaxed);
                                }
                                if leaf.done || leaf.hi.is_empty() {
                                    done = true;
                                } else {
                                    lo.clear();
                                    lo.extend_from_slice(leaf.hi);
                                    cursor = match leaf.next {
                                        0 => Cursor::Seek,
                                        next => Cursor::Sibling(next),
                                    };
                                }
                                break 'leaf;
                            }
                            None => {
                                keys.clear();
                                values.clear();
                                ends.clear();
                            }
                        }
                    }
                }
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
