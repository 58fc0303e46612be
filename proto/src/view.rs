//! From the collector's ingest view ([`crate::ingest`]) to [`crate::v1`]'s types.
//!
//! The view decodes the agent stream as `v1` does except for `ItemChange.old_attrs`, which
//! it steps over; converting gives `v1` messages with that field empty and every other
//! field moved, not copied (only the `ItemChange` vector of a delta is rebuilt). The test
//! below checks, for arbitrary messages, that decoding as the view and converting equals
//! decoding as `v1` and clearing `old_attrs`.

use crate::{ingest, v1};

impl From<ingest::ItemChange> for v1::ItemChange {
    fn from(c: ingest::ItemChange) -> Self {
        v1::ItemChange {
            kind: c.kind,
            class: c.class,
            key: c.key,
            old_attrs: Default::default(),
            new_attrs: c.new_attrs,
        }
    }
}

impl From<ingest::Delta> for v1::Delta {
    fn from(d: ingest::Delta) -> Self {
        v1::Delta {
            changes: d.changes.into_iter().map(v1::ItemChange::from).collect(),
            collectors: d.collectors,
            relations_added: d.relations_added,
            relations_removed: d.relations_removed,
            content_hash: d.content_hash,
        }
    }
}

impl From<ingest::Event> for v1::Event {
    fn from(e: ingest::Event) -> Self {
        use ingest::event::Kind as K;
        use v1::event::Kind;
        v1::Event {
            seq: e.seq,
            observed_at: e.observed_at,
            kind: e.kind.map(|k| match k {
                K::Snapshot(s) => Kind::Snapshot(s),
                K::Delta(d) => Kind::Delta(d.into()),
                K::Metrics(m) => Kind::Metrics(m),
                K::Heartbeat(h) => Kind::Heartbeat(h),
                K::Shutdown(s) => Kind::Shutdown(s),
                K::Gap(g) => Kind::Gap(g),
            }),
        }
    }
}

impl From<ingest::Batch> for v1::Batch {
    fn from(b: ingest::Batch) -> Self {
        v1::Batch {
            events: b.events.into_iter().map(v1::Event::from).collect(),
        }
    }
}

impl From<ingest::AgentMessage> for v1::AgentMessage {
    fn from(m: ingest::AgentMessage) -> Self {
        use ingest::agent_message::Kind as K;
        use v1::agent_message::Kind;
        v1::AgentMessage {
            kind: m.kind.map(|k| match k {
                K::Hello(h) => Kind::Hello(h),
                K::Batch(b) => Kind::Batch(b.into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn value() -> impl Strategy<Value = v1::Value> {
        use v1::value::Kind;
        prop_oneof![
            any::<i64>().prop_map(Kind::Int),
            "[a-z0-9.:-]{0,12}".prop_map(Kind::String),
            any::<bool>().prop_map(Kind::Bool),
        ]
        .prop_map(|k| v1::Value { kind: Some(k) })
    }

    fn attrs() -> impl Strategy<Value = BTreeMap<String, v1::Value>> {
        proptest::collection::btree_map("[a-z_]{1,8}", value(), 0..6)
    }

    fn change() -> impl Strategy<Value = v1::ItemChange> {
        (0i32..5, "[a-z]{1,8}", "[a-z0-9:]{0,16}", attrs(), attrs()).prop_map(
            |(kind, class, key, old_attrs, new_attrs)| v1::ItemChange {
                kind,
                class,
                key,
                old_attrs,
                new_attrs,
            },
        )
    }

    fn event() -> impl Strategy<Value = v1::Event> {
        use v1::event::Kind;
        let delta = (
            proptest::collection::vec(change(), 0..8),
            proptest::collection::vec(any::<u8>(), 0..33),
        )
            .prop_map(|(changes, content_hash)| {
                Kind::Delta(v1::Delta {
                    changes,
                    relations_added: vec![v1::Relation {
                        from: "package/a".into(),
                        to: "service/b".into(),
                        kind: "runs".into(),
                    }],
                    content_hash,
                    ..Default::default()
                })
            });
        let kind = prop_oneof![
            delta,
            Just(Kind::Heartbeat(v1::Heartbeat::default())),
            Just(Kind::Gap(v1::Gap::default())),
            Just(Kind::Metrics(v1::Metrics::default())),
        ];
        (any::<u64>(), proptest::option::of(kind)).prop_map(|(seq, kind)| v1::Event {
            seq,
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            kind,
        })
    }

    fn without_old_attrs(mut m: v1::AgentMessage) -> v1::AgentMessage {
        if let Some(v1::agent_message::Kind::Batch(b)) = &mut m.kind {
            for e in &mut b.events {
                if let Some(v1::event::Kind::Delta(d)) = &mut e.kind {
                    for c in &mut d.changes {
                        c.old_attrs.clear();
                    }
                }
            }
        }
        m
    }

    proptest! {
        #[test]
        fn view_decodes_as_v1_without_old_attrs(
            events in proptest::collection::vec(event(), 0..6),
        ) {
            let msg = v1::AgentMessage {
                kind: Some(v1::agent_message::Kind::Batch(v1::Batch { events })),
            };
            let bytes = msg.encode_to_vec();
            let viewed = ingest::AgentMessage::decode(bytes.as_slice()).unwrap();
            prop_assert_eq!(v1::AgentMessage::from(viewed), without_old_attrs(msg));
        }
    }

    #[test]
    fn a_hello_passes_whole() {
        let msg = v1::AgentMessage {
            kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
                agent_version: "1.2.3".into(),
                instance_id: "inst".into(),
                last_acked_seq: 42,
                inventory_hash: vec![1, 2, 3],
                ..Default::default()
            })),
        };
        let viewed = ingest::AgentMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(v1::AgentMessage::from(viewed), msg);
    }

    /// The view leaves out exactly `old_attrs`: the rest of an `ItemChange` survives.
    #[test]
    fn only_old_attrs_is_left_out() {
        let attrs: BTreeMap<String, v1::Value> = [(
            "version".to_owned(),
            v1::Value {
                kind: Some(v1::value::Kind::String("1.0".into())),
            },
        )]
        .into();
        let c = v1::ItemChange {
            kind: v1::ChangeKind::Changed as i32,
            class: "package".into(),
            key: "dpkg:bash:amd64".into(),
            old_attrs: attrs.clone(),
            new_attrs: attrs.clone(),
        };
        let viewed = ingest::ItemChange::decode(c.encode_to_vec().as_slice()).unwrap();
        assert_eq!(viewed.new_attrs, attrs);
        let back = v1::ItemChange::from(viewed);
        assert!(back.old_attrs.is_empty());
        assert_eq!(back.new_attrs, c.new_attrs);
        assert_eq!((back.kind, back.class, back.key), (c.kind, c.class, c.key));
    }
}
