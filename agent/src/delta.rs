//! Inventory deltas: what changed between the inventory the collector already holds (the
//! *base*) and a new discovery pass, and how to apply such a delta. Pure functions, no I/O.
//!
//! What it promises:
//! - **Only authoritative classes are diffed.** A class is diffed when every collector in
//!   `current.collectors` that claims it reported `ok` or `unsupported` and at least one
//!   reported `ok` (`package` has six claimants, dpkg/rpm/apk/…, and on any host all but
//!   one or two are `unsupported`: a collector with nothing to read on this host is an
//!   authoritative "none"). A class with a `partial`, `timeout`, `error` or
//!   `permission_denied` claimant, or with no claimant in `current` at all (a partial run
//!   such as the 60 s listening_port/connection/service pass), keeps `base`'s items
//!   untouched: a collector that failed or did not run never means "removed".
//! - **Relations follow their ends.** A relation is diffed only when both ends' classes
//!   (the part of `<class>/<key>` before the first `/`) were diffed; any other relation is
//!   kept from `base`. A kept or current relation whose end lies in a diffed class but
//!   names an item that no longer exists is removed: a relation never points at nothing.
//! - **`apply(base, diff(base, current).delta) == next_base`**, content hash included
//!   (property-tested). `next_base` keeps `base`'s header (schema, collected_at, agent,
//!   host): a delta carries content, not the header; the host identity travels in `Hello`.
//!   Its `collectors` merge `base`'s and `current`'s reports by collector name (current
//!   wins, new names are appended), which `apply` repeats from `Delta.collectors`.
//! - **`delta` is `None` when nothing changed**: no item or relation change and no
//!   collector whose state differs from the one `base` recorded (durations alone never
//!   produce a delta).
//! - **Application is state-based.** `ADDED` and `CHANGED` set the item to `new_attrs`,
//!   `REMOVED` deletes it if present; `old_attrs` are history for the collector, never a
//!   precondition. That is what lets the outbox fold a superseded change into a later one
//!   even when the collector may already have applied the earlier one (see
//!   [`crate::outbox`]). A non-empty `content_hash` is checked after applying; an empty one
//!   means "not checkable" (the outbox clears it on deltas whose changes it moved).
//!
//! Items are identified by (class, key); duplicates in an input collapse, the last wins.
//! What it never does: touch the disk, the network or the clock.

use std::collections::{BTreeMap, BTreeSet};

use cmdb_proto::convert::{self, ConvertError};
use cmdb_proto::model::{
    AttrValue, Attrs, CollectorReport, CollectorState, Inventory, Item, Relation,
};
use cmdb_proto::v1;

/// A delta that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeltaError {
    /// An item change whose kind is unspecified or unknown to this version.
    #[error("item change {class}/{key} has unknown kind {kind}")]
    UnknownKind {
        class: String,
        key: String,
        kind: i32,
    },
    /// A collector status in the delta does not describe a valid report.
    #[error("invalid collector status in delta: {0}")]
    Collector(#[from] ConvertError),
    /// The inventory after applying does not hash to the delta's `content_hash`.
    #[error("content hash mismatch after applying delta: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
}

/// The outcome of [`diff`].
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaResult {
    /// What to send; `None` when nothing changed.
    pub delta: Option<v1::Delta>,
    /// `base` with the diffed classes replaced: the base of the next diff once `delta` is
    /// queued (and what the collector holds once it applied it).
    pub next_base: Inventory,
}

type ItemKey = (String, String);
/// An item's (class, key), borrowed.
type ItemRef<'a> = (&'a str, &'a str);

// === diff ===

/// Diffs `current` against `base` (see the module doc for which classes are diffed).
///
/// Both are taken by value: the comparison borrows them, and `next_base` is built by moving
/// their items, so a refresh copies only what changed (the agent runs this every 60 s on
/// an inventory of thousands of items; copying it all was most of its allocations).
pub fn diff(base: Inventory, current: Inventory) -> DeltaResult {
    let diffed = diffed_classes(&current.collectors);
    let is_diffed = |class: &str| diffed.contains(class);

    let (changes, relations_added, relations_removed, next_relations) = {
        // Borrowed views; duplicates collapse, the last wins.
        let base_items: BTreeMap<ItemRef<'_>, &Attrs> = item_refs(base.items.iter());
        let current_items: BTreeMap<ItemRef<'_>, &Attrs> =
            item_refs(current.items.iter().filter(|i| is_diffed(&i.class)));

        let mut changes = Vec::new();
        for (k, old) in base_items.iter().filter(|((c, _), _)| is_diffed(c)) {
            match current_items.get(k) {
                None => changes.push(change(v1::ChangeKind::Removed, *k, Some(old), None)),
                Some(new) if !same_attrs(old, new) => {
                    changes.push(change(v1::ChangeKind::Changed, *k, Some(old), Some(new)));
                }
                Some(_) => {}
            }
        }
        for (k, new) in &current_items {
            if !base_items.contains_key(k) {
                changes.push(change(v1::ChangeKind::Added, *k, None, Some(new)));
            }
        }
        changes.sort_by(|a, b| (&a.class, &a.key).cmp(&(&b.class, &b.key)));

        let next_keys: BTreeSet<ItemRef<'_>> = base_items
            .keys()
            .filter(|(class, _)| !is_diffed(class))
            .chain(current_items.keys())
            .copied()
            .collect();
        let both_diffed =
            |r: &Relation| is_diffed(relation_class(&r.from)) && is_diffed(relation_class(&r.to));
        let base_relations: BTreeSet<&Relation> = base.relations.iter().collect();
        let mut next_relations: BTreeSet<&Relation> = base_relations
            .iter()
            .filter(|r| !both_diffed(r))
            .copied()
            .collect();
        next_relations.extend(current.relations.iter().filter(|r| both_diffed(r)));
        next_relations.retain(|r| resolvable(r, &next_keys, &is_diffed));
        let relations_added: Vec<v1::Relation> = next_relations
            .difference(&base_relations)
            .map(|r| v1::Relation::from(*r))
            .collect();
        let relations_removed: Vec<v1::Relation> = base_relations
            .difference(&next_relations)
            .map(|r| v1::Relation::from(*r))
            .collect();
        let next_relations: Vec<Relation> = next_relations.into_iter().cloned().collect();
        (changes, relations_added, relations_removed, next_relations)
    };

    let collectors_changed = current.collectors.iter().any(|c| {
        base.collectors
            .iter()
            .rev()
            .find(|b| b.name == c.name)
            .is_none_or(|b| b.status != c.status)
    });
    let collectors = merge_collectors(&base.collectors, &current.collectors);

    // base's items of the classes not diffed, then current's of those diffed (disjoint
    // classes), moved; keyed like the views above, so duplicates collapse the same way.
    let next_items: BTreeMap<(String, String), Attrs> = base
        .items
        .into_iter()
        .filter(|i| !is_diffed(&i.class))
        .chain(current.items.into_iter().filter(|i| is_diffed(&i.class)))
        .map(|i| ((i.class, i.key), i.attrs))
        .collect();
    let mut next_base = Inventory {
        schema: base.schema,
        collected_at: base.collected_at,
        agent: base.agent,
        host: base.host,
        collectors,
        items: next_items
            .into_iter()
            .map(|((class, key), attrs)| Item { class, key, attrs })
            .collect(),
        relations: next_relations,
    };
    next_base.canonicalize();

    let changed =
        !changes.is_empty() || !relations_added.is_empty() || !relations_removed.is_empty();
    let delta = (changed || collectors_changed).then(|| v1::Delta {
        changes,
        collectors: current
            .collectors
            .iter()
            .map(v1::CollectorStatus::from)
            .collect(),
        relations_added,
        relations_removed,
        content_hash: next_base.content_hash().to_vec(),
    });
    DeltaResult { delta, next_base }
}

/// What a refresh of `class` alone starts from: `base`'s header, its items of `class` and
/// its relations with both ends in `class`, and no collector reports (the caller adds the
/// one that re-evaluated the class). Diffing a refresh built on it gives what a refresh
/// built on a full copy of `base` gives, since only the refreshed class is diffed
/// (property-tested), without copying the rest of the inventory.
pub fn class_part(base: &Inventory, class: &str) -> Inventory {
    Inventory {
        schema: base.schema.clone(),
        collected_at: base.collected_at,
        agent: base.agent.clone(),
        host: base.host.clone(),
        collectors: Vec::new(),
        items: base
            .items
            .iter()
            .filter(|i| i.class == class)
            .cloned()
            .collect(),
        relations: base
            .relations
            .iter()
            .filter(|r| relation_class(&r.from) == class && relation_class(&r.to) == class)
            .cloned()
            .collect(),
    }
}

/// Classes `collectors` is authoritative for (module doc: ok or unsupported, at least one ok).
fn diffed_classes(collectors: &[CollectorReport]) -> BTreeSet<String> {
    // class -> (some claimant ok, every claimant ok or unsupported)
    let mut claims: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for c in collectors {
        for class in &c.classes {
            let entry = claims.entry(class.as_str()).or_insert((false, true));
            entry.0 |= c.status == CollectorState::Ok;
            entry.1 &= matches!(c.status, CollectorState::Ok | CollectorState::Unsupported);
        }
    }
    claims
        .into_iter()
        .filter(|(_, (any_ok, all_fine))| *any_ok && *all_fine)
        .map(|(class, _)| class.to_owned())
        .collect()
}

/// The class part of a relation end `<class>/<key>`.
fn relation_class(end: &str) -> &str {
    end.split_once('/').map_or(end, |(class, _)| class)
}

/// False when an end lies in a diffed class but names no item of `items`.
fn resolvable(
    r: &Relation,
    items: &BTreeSet<ItemRef<'_>>,
    is_diffed: &impl Fn(&str) -> bool,
) -> bool {
    [&r.from, &r.to].into_iter().all(|end| {
        let Some((class, key)) = end.split_once('/') else {
            return true;
        };
        !is_diffed(class) || items.contains(&(class, key))
    })
}

fn item_map(items: &[Item]) -> BTreeMap<ItemKey, Attrs> {
    items
        .iter()
        .map(|i| ((i.class.clone(), i.key.clone()), i.attrs.clone()))
        .collect()
}

/// (class, key) → attrs, borrowed; the last of duplicate keys wins.
fn item_refs<'a>(items: impl Iterator<Item = &'a Item>) -> BTreeMap<ItemRef<'a>, &'a Attrs> {
    items
        .map(|i| ((i.class.as_str(), i.key.as_str()), &i.attrs))
        .collect()
}

fn change(
    kind: v1::ChangeKind,
    (class, key): ItemRef<'_>,
    old: Option<&Attrs>,
    new: Option<&Attrs>,
) -> v1::ItemChange {
    v1::ItemChange {
        kind: kind as i32,
        class: class.to_owned(),
        key: key.to_owned(),
        old_attrs: old.map(convert::attrs_to_proto).unwrap_or_default(),
        new_attrs: new.map(convert::attrs_to_proto).unwrap_or_default(),
    }
}

/// Attribute equality that is reflexive for floats (bit equality), so that a NaN never
/// reads as a change on every pass.
fn same_attrs(a: &Attrs, b: &Attrs) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

fn same_value(a: &AttrValue, b: &AttrValue) -> bool {
    match (a, b) {
        (AttrValue::Float(x), AttrValue::Float(y)) => x.to_bits() == y.to_bits(),
        (AttrValue::List(x), AttrValue::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        _ => a == b,
    }
}

/// `base`'s reports with `current`'s merged in by name: replaced in place, new names appended.
fn merge_collectors(base: &[CollectorReport], current: &[CollectorReport]) -> Vec<CollectorReport> {
    let mut merged: Vec<CollectorReport> = Vec::with_capacity(base.len() + current.len());
    for c in base.iter().chain(current) {
        match merged.iter_mut().find(|m| m.name == c.name) {
            Some(slot) => *slot = c.clone(),
            None => merged.push(c.clone()),
        }
    }
    merged
}

// === apply ===

/// Applies `delta` to `base` the way the collector does (state-based; module doc) and checks
/// the content hash when the delta carries one.
pub fn apply(base: &Inventory, delta: &v1::Delta) -> Result<Inventory, DeltaError> {
    let mut items = item_map(&base.items);
    for c in &delta.changes {
        apply_change(&mut items, c)?;
    }
    let mut relations: BTreeSet<Relation> = base.relations.iter().cloned().collect();
    for r in &delta.relations_removed {
        relations.remove(&Relation::from(r));
    }
    relations.extend(delta.relations_added.iter().map(Relation::from));
    let reports = delta
        .collectors
        .iter()
        .map(CollectorReport::try_from)
        .collect::<Result<Vec<_>, _>>()?;

    let mut inv = Inventory {
        schema: base.schema.clone(),
        collected_at: base.collected_at,
        agent: base.agent.clone(),
        host: base.host.clone(),
        collectors: merge_collectors(&base.collectors, &reports),
        items: items
            .into_iter()
            .map(|((class, key), attrs)| Item { class, key, attrs })
            .collect(),
        relations: relations.into_iter().collect(),
    };
    inv.canonicalize();
    if !delta.content_hash.is_empty() {
        let actual = inv.content_hash();
        if delta.content_hash.as_slice() != actual.as_slice() {
            return Err(DeltaError::HashMismatch {
                expected: hex::encode(&delta.content_hash),
                actual: hex::encode(actual),
            });
        }
    }
    Ok(inv)
}

fn apply_change(
    items: &mut BTreeMap<ItemKey, Attrs>,
    c: &v1::ItemChange,
) -> Result<(), DeltaError> {
    let key = (c.class.clone(), c.key.clone());
    match v1::ChangeKind::try_from(c.kind) {
        Ok(v1::ChangeKind::Added | v1::ChangeKind::Changed) => {
            items.insert(key, convert::attrs_from_proto(&c.new_attrs));
        }
        Ok(v1::ChangeKind::Removed) => {
            items.remove(&key);
        }
        Ok(v1::ChangeKind::Unspecified) | Err(_) => {
            return Err(DeltaError::UnknownKind {
                class: c.class.clone(),
                key: c.key.clone(),
                kind: c.kind,
            });
        }
    }
    Ok(())
}

// === snapshot ===

/// A Snapshot event body for a full inventory, with its content hash.
pub fn snapshot(inv: &Inventory) -> v1::Snapshot {
    v1::Snapshot {
        inventory: Some(v1::Inventory::from(inv)),
        content_hash: inv.content_hash().to_vec(),
    }
}

// === merge ===

/// Two changes to the same (class, key), `earlier` then `later`, as one change from the
/// state before `earlier` to the state after `later`; `None` when those states are equal
/// (added then removed, or changed back). The class and key are `later`'s. When either kind
/// is unknown the pair cannot be reasoned about and `later` is returned as it is (under
/// state-based application it alone decides the final state).
pub fn merge_changes(earlier: &v1::ItemChange, later: &v1::ItemChange) -> Option<v1::ItemChange> {
    use v1::ChangeKind::{Added, Changed, Removed};
    let (Ok(first), Ok(last)) = (
        v1::ChangeKind::try_from(earlier.kind),
        v1::ChangeKind::try_from(later.kind),
    ) else {
        return Some(later.clone());
    };
    if first == v1::ChangeKind::Unspecified || last == v1::ChangeKind::Unspecified {
        return Some(later.clone());
    }
    // The state before `earlier` and after `later`; None = absent.
    let before = (first != Added).then_some(&earlier.old_attrs);
    let after = (last != Removed).then_some(&later.new_attrs);
    let (kind, old, new) = match (before, after) {
        (None, None) => return None,
        (None, Some(new)) => (Added, Default::default(), new.clone()),
        (Some(old), None) => (Removed, old.clone(), Default::default()),
        (Some(old), Some(new)) => {
            if same_attrs(
                &convert::attrs_from_proto(old),
                &convert::attrs_from_proto(new),
            ) {
                return None;
            }
            (Changed, old.clone(), new.clone())
        }
    };
    Some(v1::ItemChange {
        kind: kind as i32,
        class: later.class.clone(),
        key: later.key.clone(),
        old_attrs: old,
        new_attrs: new,
    })
}

#[cfg(test)]
mod tests;
