//! The overflow policy: what an append gives up, in order, when the new event would take the
//! outbox past `max_bytes`. See the invariants in the [`super`] module doc; this file only
//! plans (into a [`Txn`]), it never commits.

use std::collections::BTreeMap;
use std::time::SystemTime;

use cmdb_proto::convert;
use cmdb_proto::v1;
use prost::Message;

use super::record::Kind;
use super::txn::{PlanError, Txn, accounted};
use crate::delta;

/// At most this many accounted bytes of pending deltas are read by one compaction. This
/// bounds its transient memory (a map of the changed (class, key) pairs) and the size of the
/// one transaction that rewrites them (see "sled's deadlock" in the module doc).
pub(super) const COMPACTION_WINDOW_BYTES: u64 = 2 << 20;

/// What happens to the incoming event once room has been made (or not).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// It fits: store it.
    Store,
    /// It is dropped, and counted: a Metrics event with no older metrics left to drop, or a
    /// Delta superseded by the snapshot that a Gap now requires.
    DropIncoming,
    /// Only events that are never dropped are left, and it still does not fit.
    Full,
}

/// The accounted size `event` will have once it carries any seq (a seq is at most 10 bytes).
pub(super) fn bound(event: &v1::Event) -> u64 {
    let without_seq = if event.seq == 0 {
        event.encoded_len()
    } else {
        event.encoded_len() - 1 - prost::encoding::encoded_len_varint(event.seq)
    };
    accounted(without_seq + 11)
}

/// A Gap event (without seq) reporting what was dropped since the previous Gap.
pub(super) fn gap_event(txn: &Txn<'_>, reason: &str) -> v1::Event {
    v1::Event {
        seq: 0,
        observed_at: Some(convert::timestamp_from_system(SystemTime::now())),
        kind: Some(v1::event::Kind::Gap(v1::Gap {
            dropped_metrics: txn.meta.unreported_metrics,
            dropped_inventory_changes: txn.meta.unreported_changes,
            reason: reason.to_owned(),
        })),
    }
}

/// Appends a Gap reporting everything dropped since the last one, if it fits; returns
/// whether it did (if not, the counts stay pending for the next Gap).
pub(super) fn append_gap(txn: &mut Txn<'_>, max_bytes: u64, reason: &str) -> bool {
    let mut gap = gap_event(txn, reason);
    if txn.bytes.saturating_add(bound(&gap)) > max_bytes {
        return false;
    }
    gap.seq = txn.next_seq();
    txn.add(&gap, Kind::Gap);
    txn.meta.gaps += 1;
    txn.meta.unreported_metrics = 0;
    txn.meta.unreported_changes = 0;
    true
}

/// Why a metrics-only Gap was appended.
pub(super) const METRICS_GAP_REASON: &str = "outbox full: the oldest metrics were dropped";

/// Appends a Gap reporting the metrics dropped since the last Gap, if any, making room for
/// it by dropping older metrics (counted into the same Gap). Returns whether one was added.
pub(super) fn report_metrics(txn: &mut Txn<'_>, max_bytes: u64) -> Result<bool, PlanError> {
    if txn.meta.unreported_metrics == 0 {
        return Ok(false);
    }
    let need = bound(&gap_event(txn, METRICS_GAP_REASON));
    for entry in txn.live(Kind::Metrics) {
        let (seq, size) = entry?;
        if txn.bytes.saturating_add(need) <= max_bytes {
            break;
        }
        if let Some(size) = txn.live_size(seq, size) {
            txn.remove(seq, Kind::Metrics, size);
            txn.meta.dropped_metrics += 1;
            txn.meta.unreported_metrics += 1;
        }
    }
    Ok(append_gap(txn, max_bytes, METRICS_GAP_REASON))
}

/// Makes room for `incoming` (of `kind`) by the policy in the module doc.
pub(super) fn make_room(
    txn: &mut Txn<'_>,
    kind: Kind,
    incoming: &mut v1::Event,
    max_bytes: u64,
) -> Result<Disposition, PlanError> {
    let fits = |txn: &Txn<'_>, ev: &v1::Event| txn.bytes.saturating_add(bound(ev)) <= max_bytes;
    if fits(txn, incoming) {
        return Ok(Disposition::Store);
    }

    // (1) The oldest metrics go first.
    for entry in txn.live(Kind::Metrics) {
        let (seq, size) = entry?;
        if fits(txn, incoming) {
            break;
        }
        if let Some(size) = txn.live_size(seq, size) {
            txn.remove(seq, Kind::Metrics, size);
            txn.meta.dropped_metrics += 1;
            txn.meta.unreported_metrics += 1;
        }
    }
    if fits(txn, incoming) {
        return Ok(Disposition::Store);
    }
    if kind == Kind::Metrics {
        // Never give up inventory for metrics: the newest metrics go too.
        txn.meta.dropped_metrics += 1;
        txn.meta.unreported_metrics += 1;
        return Ok(Disposition::DropIncoming);
    }

    // (2) Compaction: first whatever a newer snapshot supersedes, then superseded changes.
    supersede(txn, kind)?;
    if fits(txn, incoming) {
        return Ok(Disposition::Store);
    }
    if kind != Kind::Snapshot {
        let incoming_delta = match incoming.kind.as_mut() {
            Some(v1::event::Kind::Delta(d)) => Some(d),
            _ => None,
        };
        merge_deltas(txn, incoming_delta)?;
        if fits(txn, incoming) {
            return Ok(Disposition::Store);
        }
    }

    // (3) A Gap and a forced snapshot take the place of every pending inventory event.
    drop_inventory(txn)?;
    if let Some(v1::event::Kind::Delta(d)) = &incoming.kind {
        txn.meta.dropped_inventory_events += 1;
        txn.meta.unreported_changes += d.changes.len() as u64;
    }
    txn.meta.snapshot_required = true;
    txn.meta.awaiting_snapshot = true;
    append_gap(
        txn,
        max_bytes,
        "outbox full: pending inventory events dropped; a full snapshot follows",
    );
    if kind == Kind::Delta {
        return Ok(Disposition::DropIncoming);
    }
    Ok(if fits(txn, incoming) {
        Disposition::Store
    } else {
        Disposition::Full
    })
}

fn changes_in(txn: &Txn<'_>, seq: u64) -> Result<u64, PlanError> {
    Ok(match txn.event(seq)?.and_then(|e| e.kind) {
        Some(v1::event::Kind::Delta(d)) => d.changes.len() as u64,
        // A snapshot counts as one change.
        _ => 1,
    })
}

/// Drops the inventory events older than the newest pending snapshot (all of them when the
/// incoming event is itself a snapshot): the snapshot restates everything they changed.
fn supersede(txn: &mut Txn<'_>, incoming: Kind) -> Result<(), PlanError> {
    let cutoff = if incoming == Kind::Snapshot {
        u64::MAX
    } else {
        match newest_snapshot(txn)? {
            Some(seq) => seq,
            None => return Ok(()),
        }
    };
    for kind in [Kind::Snapshot, Kind::Delta] {
        for entry in txn.live(kind) {
            let (seq, size) = entry?;
            if seq >= cutoff {
                break;
            }
            let Some(size) = txn.live_size(seq, size) else {
                continue;
            };
            let n = changes_in(txn, seq)?;
            txn.remove(seq, kind, size);
            txn.meta.compacted_changes += n;
        }
    }
    Ok(())
}

fn newest_snapshot(txn: &Txn<'_>) -> Result<Option<u64>, PlanError> {
    for entry in txn.live(Kind::Snapshot).rev() {
        let (seq, size) = entry?;
        if txn.live_size(seq, size).is_some() {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Drops every pending Snapshot and Delta (step 3), counting them for the Gap.
fn drop_inventory(txn: &mut Txn<'_>) -> Result<(), PlanError> {
    for kind in [Kind::Snapshot, Kind::Delta] {
        for entry in txn.live(kind) {
            let (seq, size) = entry?;
            let Some(size) = txn.live_size(seq, size) else {
                continue;
            };
            let n = changes_in(txn, seq)?;
            txn.remove(seq, kind, size);
            txn.meta.dropped_inventory_events += 1;
            txn.meta.unreported_changes += n;
        }
    }
    Ok(())
}

/// Where the changes to one (class, key) sit among the compacted deltas.
struct Chain {
    first: u64,
    last: u64,
}

type ItemKey = (String, String);

/// The seq standing for the incoming delta (always the newest).
const INCOMING: u64 = u64::MAX;

/// Folds every change to a (class, key) that a later pending delta changes again into that
/// later change ([`delta::merge_changes`]), among the deltas after the newest pending
/// snapshot (within [`COMPACTION_WINDOW_BYTES`]) and the incoming delta.
///
/// Safe against deltas the collector already applied but had not acknowledged: application
/// is state-based, every change still sets its item to the state it had at that seq, and the
/// last change of every chain stays where it was. Deltas from a chain's first change up to
/// (not including) its last lose their `content_hash`: the collector can no longer check the
/// intermediate states, only the final one.
fn merge_deltas(txn: &mut Txn<'_>, incoming: Option<&mut v1::Delta>) -> Result<(), PlanError> {
    let after = newest_snapshot(txn)?.unwrap_or(0);
    let mut window: Vec<(u64, u64)> = Vec::new();
    let mut window_bytes = 0u64;
    let mut complete = true;
    for entry in txn.live(Kind::Delta) {
        let (seq, size) = entry?;
        let Some(size) = txn.live_size(seq, size) else {
            continue;
        };
        if seq <= after {
            continue;
        }
        if window_bytes.saturating_add(size) > COMPACTION_WINDOW_BYTES && !window.is_empty() {
            complete = false;
            break;
        }
        window_bytes = window_bytes.saturating_add(size);
        window.push((seq, size));
    }
    // The incoming delta joins only when nothing between it and the window was left out.
    let incoming = if complete { incoming } else { None };

    let mut chains: BTreeMap<ItemKey, Chain> = BTreeMap::new();
    let mut note = |c: &v1::ItemChange, seq: u64| {
        let k = (c.class.clone(), c.key.clone());
        chains
            .entry(k)
            .and_modify(|ch| ch.last = seq)
            .or_insert(Chain {
                first: seq,
                last: seq,
            });
    };
    for (seq, _) in &window {
        if let Some(v1::event::Kind::Delta(d)) = txn.event(*seq)?.and_then(|e| e.kind) {
            d.changes.iter().for_each(|c| note(c, *seq));
        }
    }
    if let Some(d) = &incoming {
        d.changes.iter().for_each(|c| note(c, INCOMING));
    }
    chains.retain(|_, ch| ch.first != ch.last);
    if chains.is_empty() {
        return Ok(());
    }
    let mut ranges: Vec<(u64, u64)> = chains.values().map(|c| (c.first, c.last)).collect();
    ranges.sort_unstable();

    let mut carried: BTreeMap<ItemKey, v1::ItemChange> = BTreeMap::new();
    let (mut next_range, mut covered_until) = (0usize, 0u64);
    for (seq, size) in window {
        while next_range < ranges.len() && ranges[next_range].0 <= seq {
            covered_until = covered_until.max(ranges[next_range].1);
            next_range += 1;
        }
        let Some(mut event) = txn.event(seq)? else {
            continue;
        };
        let Some(v1::event::Kind::Delta(d)) = event.kind.as_mut() else {
            return Err(PlanError::Corrupt(super::record::seq_key(seq).to_vec()));
        };
        let folded = fold(&mut d.changes, seq, &chains, &mut carried);
        let mut modified = folded.folded > 0 || folded.merged;
        txn.meta.compacted_changes += folded.folded;
        if seq < covered_until && !d.content_hash.is_empty() {
            d.content_hash.clear();
            modified = true;
        }
        if !modified {
            continue;
        }
        let emptied = folded.folded > 0
            && d.changes.is_empty()
            && d.relations_added.is_empty()
            && d.relations_removed.is_empty();
        if emptied {
            txn.remove(seq, Kind::Delta, size);
        } else {
            txn.replace(&event, Kind::Delta, size);
        }
    }
    if let Some(d) = incoming {
        let folded = fold(&mut d.changes, INCOMING, &chains, &mut carried);
        txn.meta.compacted_changes += folded.folded;
    }
    Ok(())
}

struct Folded {
    /// Changes moved out of this delta into a later one.
    folded: u64,
    /// Whether an earlier change was merged into one of this delta's changes.
    merged: bool,
}

fn fold(
    changes: &mut Vec<v1::ItemChange>,
    seq: u64,
    chains: &BTreeMap<ItemKey, Chain>,
    carried: &mut BTreeMap<ItemKey, v1::ItemChange>,
) -> Folded {
    let mut out = Folded {
        folded: 0,
        merged: false,
    };
    let mut kept = Vec::with_capacity(changes.len());
    for c in changes.drain(..) {
        let k = (c.class.clone(), c.key.clone());
        match chains.get(&k) {
            Some(chain) if chain.last != seq => {
                let next = match carried.remove(&k) {
                    Some(prev) => delta::merge_changes(&prev, &c).unwrap_or(c),
                    None => c,
                };
                carried.insert(k, next);
                out.folded += 1;
            }
            Some(_) => match carried.remove(&k) {
                // No net change (added then removed, changed back): the later change is kept
                // as it is, because the collector may already hold the intermediate state.
                Some(prev) => {
                    kept.push(delta::merge_changes(&prev, &c).unwrap_or(c));
                    out.merged = true;
                }
                None => kept.push(c),
            },
            None => kept.push(c),
        }
    }
    *changes = kept;
    out
}
