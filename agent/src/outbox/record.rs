//! On-disk encodings of the outbox: event keys, index keys and the meta record. Every decoder
//! checks lengths and tags and returns `None` on anything unexpected; nothing here panics.

use cmdb_proto::v1;

/// The kinds of event the outbox stores (heartbeats never are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    Snapshot = 1,
    Delta = 2,
    Metrics = 3,
    Shutdown = 4,
    Gap = 5,
}

impl Kind {
    pub(super) const ALL: [Kind; 5] = [
        Kind::Snapshot,
        Kind::Delta,
        Kind::Metrics,
        Kind::Shutdown,
        Kind::Gap,
    ];

    /// The stored kind of `event`; `None` for heartbeats and events without a kind.
    pub(super) fn of(event: &v1::Event) -> Option<Kind> {
        use v1::event::Kind as K;
        match event.kind.as_ref()? {
            K::Snapshot(_) => Some(Kind::Snapshot),
            K::Delta(_) => Some(Kind::Delta),
            K::Metrics(_) => Some(Kind::Metrics),
            K::Shutdown(_) => Some(Kind::Shutdown),
            K::Gap(_) => Some(Kind::Gap),
            K::Heartbeat(_) => None,
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// `events` tree key: the seq, big-endian, so that key order is seq order.
pub(super) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(super) fn parse_seq_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `index` tree key: kind byte, then the seq big-endian (per-kind FIFO order).
pub(super) fn index_key(kind: Kind, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind as u8;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn parse_index_key(key: &[u8]) -> Option<(Kind, u64)> {
    let (kind, seq) = key.split_first()?;
    Some((Kind::from_byte(*kind)?, parse_seq_key(seq)?))
}

/// `index` tree value: the accounted size of the event.
pub(super) fn parse_size(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// The persisted part of the outbox state: one record under [`META_KEY`] in the `meta` tree,
/// rewritten in the same transaction as every change to the events it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// The highest seq ever handed out (0 = none yet).
    pub last_seq: u64,
    /// Everything at or below this was acknowledged and trimmed.
    pub acked_seq: u64,
    pub dropped_metrics: u64,
    pub compacted_changes: u64,
    pub dropped_inventory_events: u64,
    pub gaps: u64,
    pub corrupt_events: u64,
    /// Metrics dropped since the last Gap event (the next Gap reports them).
    pub unreported_metrics: u64,
    /// Inventory changes dropped since the last Gap event.
    pub unreported_changes: u64,
    /// The caller must queue a full snapshot (see `take_snapshot_required`).
    pub snapshot_required: bool,
    /// Inventory was lost: deltas are superseded until the next snapshot is appended.
    pub awaiting_snapshot: bool,
}

pub(super) const META_KEY: &[u8] = b"state";
const META_MAGIC: &[u8; 4] = b"OBX1";
const META_U64S: usize = 9;
const META_LEN: usize = 4 + 8 * META_U64S + 1;

impl Meta {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_LEN);
        out.extend_from_slice(META_MAGIC);
        for v in [
            self.last_seq,
            self.acked_seq,
            self.dropped_metrics,
            self.compacted_changes,
            self.dropped_inventory_events,
            self.gaps,
            self.corrupt_events,
            self.unreported_metrics,
            self.unreported_changes,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.push(u8::from(self.snapshot_required) | (u8::from(self.awaiting_snapshot) << 1));
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Meta> {
        if bytes.len() != META_LEN || &bytes[..4] != META_MAGIC {
            return None;
        }
        let mut u = [0u64; META_U64S];
        for (i, slot) in u.iter_mut().enumerate() {
            let at = 4 + 8 * i;
            *slot = u64::from_be_bytes(bytes[at..at + 8].try_into().ok()?);
        }
        let flags = bytes[META_LEN - 1];
        if flags > 3 {
            return None;
        }
        let meta = Meta {
            last_seq: u[0],
            acked_seq: u[1],
            dropped_metrics: u[2],
            compacted_changes: u[3],
            dropped_inventory_events: u[4],
            gaps: u[5],
            corrupt_events: u[6],
            unreported_metrics: u[7],
            unreported_changes: u[8],
            snapshot_required: flags & 1 != 0,
            awaiting_snapshot: flags & 2 != 0,
        };
        (meta.acked_seq <= meta.last_seq).then_some(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn meta_round_trips(v in prop::collection::vec(any::<u64>(), META_U64S), flags in 0u8..4) {
            let meta = Meta {
                last_seq: v[0].max(v[1]), acked_seq: v[1], dropped_metrics: v[2],
                compacted_changes: v[3], dropped_inventory_events: v[4], gaps: v[5],
                corrupt_events: v[6], unreported_metrics: v[7], unreported_changes: v[8],
                snapshot_required: flags & 1 != 0, awaiting_snapshot: flags & 2 != 0,
            };
            prop_assert_eq!(Meta::decode(&meta.encode()), Some(meta));
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = Meta::decode(&bytes);
            let _ = parse_index_key(&bytes);
            let _ = parse_seq_key(&bytes);
            let _ = parse_size(&bytes);
        }

        #[test]
        fn keys_sort_like_seqs(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(seq_key(a).cmp(&seq_key(b)), a.cmp(&b));
            prop_assert_eq!(index_key(Kind::Delta, a).cmp(&index_key(Kind::Delta, b)), a.cmp(&b));
            prop_assert_eq!(parse_index_key(&index_key(Kind::Gap, a)), Some((Kind::Gap, a)));
        }
    }
}
