use std::time::{Duration, UNIX_EPOCH};

use cmdb_proto::model::{AgentInfo, HostIdentity, SCHEMA};
use proptest::prelude::*;

use super::*;

fn report(name: &str, status: CollectorState, classes: &[&str]) -> CollectorReport {
    CollectorReport {
        name: name.into(),
        status,
        duration_ms: 1,
        items: 0,
        message: None,
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn inventory(
    collectors: Vec<CollectorReport>,
    items: Vec<Item>,
    relations: Vec<Relation>,
) -> Inventory {
    let mut inv = Inventory {
        schema: SCHEMA.into(),
        collected_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        agent: AgentInfo {
            version: "0.1.0".into(),
            instance_id: "i".into(),
        },
        host: HostIdentity::default(),
        collectors,
        items,
        relations,
    };
    inv.canonicalize();
    inv
}

fn rel(from: &str, to: &str) -> Relation {
    Relation {
        from: from.into(),
        to: to.into(),
        kind: "runs".into(),
    }
}

fn kinds(d: &v1::Delta) -> Vec<(i32, String)> {
    d.changes.iter().map(|c| (c.kind, c.key.clone())).collect()
}

const OK: CollectorState = CollectorState::Ok;

#[test]
fn added_changed_removed_carry_old_and_new_attrs() {
    let base = inventory(
        vec![report("dpkg", OK, &["package"])],
        vec![
            Item::new("package", "dpkg:bash:amd64").with("version", "5.1"),
            Item::new("package", "dpkg:vim:amd64").with("version", "9.0"),
        ],
        vec![],
    );
    let current = inventory(
        vec![report("dpkg", OK, &["package"])],
        vec![
            Item::new("package", "dpkg:bash:amd64").with("version", "5.2"),
            Item::new("package", "dpkg:curl:amd64").with("version", "7.88"),
        ],
        vec![],
    );
    let r = diff(base.clone(), current.clone());
    let d = r.delta.clone().unwrap();
    assert_eq!(
        kinds(&d),
        vec![
            (v1::ChangeKind::Changed as i32, "dpkg:bash:amd64".into()),
            (v1::ChangeKind::Added as i32, "dpkg:curl:amd64".into()),
            (v1::ChangeKind::Removed as i32, "dpkg:vim:amd64".into()),
        ]
    );
    let bash = &d.changes[0];
    assert_eq!(
        AttrValue::from(&bash.old_attrs["version"]),
        AttrValue::from("5.1")
    );
    assert_eq!(
        AttrValue::from(&bash.new_attrs["version"]),
        AttrValue::from("5.2")
    );
    assert!(d.changes[1].old_attrs.is_empty());
    assert!(d.changes[2].new_attrs.is_empty());
    assert_eq!(d.content_hash, current.content_hash().to_vec());
    assert_eq!(apply(&base, &d).unwrap(), r.next_base);
}

#[test]
fn a_failed_or_missing_collector_never_removes_anything() {
    let base = inventory(
        vec![
            report("dpkg", OK, &["package"]),
            report("users", OK, &["user", "group"]),
        ],
        vec![
            Item::new("package", "dpkg:bash:amd64"),
            Item::new("user", "root").with("uid", 0_i64),
        ],
        vec![],
    );
    for status in [
        CollectorState::Partial,
        CollectorState::Timeout,
        CollectorState::Error,
        CollectorState::PermissionDenied,
        CollectorState::Unsupported,
    ] {
        // dpkg failed and reported nothing; users did not run at all.
        let current = inventory(vec![report("dpkg", status, &["package"])], vec![], vec![]);
        let r = diff(base.clone(), current.clone());
        let d = r.delta.expect("the collector's state changed");
        assert!(d.changes.is_empty(), "{status}: {d:?}");
        assert_eq!(r.next_base.items, base.items, "{status}");
        assert_eq!(r.next_base.collectors[0].status, status);
        assert_eq!(r.next_base.collectors.len(), 2, "users' report is kept");
    }
}

#[test]
fn unsupported_siblings_do_not_block_a_multi_collector_class() {
    let base = inventory(
        vec![
            report("dpkg", OK, &["package"]),
            report("rpm", CollectorState::Unsupported, &["package"]),
        ],
        vec![Item::new("package", "dpkg:vim:amd64")],
        vec![],
    );
    let current = inventory(
        vec![
            report("dpkg", OK, &["package"]),
            report("rpm", CollectorState::Unsupported, &["package"]),
        ],
        vec![],
        vec![],
    );
    let d = diff(base.clone(), current.clone()).delta.unwrap();
    assert_eq!(
        kinds(&d),
        vec![(v1::ChangeKind::Removed as i32, "dpkg:vim:amd64".into())]
    );

    // A sibling that timed out makes the whole class untouchable.
    let current = inventory(
        vec![
            report("dpkg", OK, &["package"]),
            report("rpm", CollectorState::Timeout, &["package"]),
        ],
        vec![],
        vec![],
    );
    let r = diff(base.clone(), current.clone());
    assert!(r.delta.unwrap().changes.is_empty());
    assert_eq!(r.next_base.items, base.items);
}

#[test]
fn a_partial_run_keeps_the_other_classes_and_their_relations() {
    let base = inventory(
        vec![
            report("service", OK, &["service"]),
            report("process", OK, &["process"]),
        ],
        vec![
            Item::new("service", "ssh.service").with("active_state", "active"),
            Item::new("process", "/usr/sbin/sshd"),
        ],
        vec![rel("service/ssh.service", "process//usr/sbin/sshd")],
    );
    // Only the service collector ran: the ssh unit is gone, sshd (not rediscovered) is kept.
    let current = inventory(vec![report("service", OK, &["service"])], vec![], vec![]);
    let r = diff(base.clone(), current.clone());
    let d = r.delta.unwrap();
    assert_eq!(
        kinds(&d),
        vec![(v1::ChangeKind::Removed as i32, "ssh.service".into())]
    );
    // The relation's service end no longer exists: it goes, not dangling.
    assert_eq!(d.relations_removed.len(), 1);
    assert_eq!(r.next_base.items.len(), 1);
    assert_eq!(r.next_base.items[0].class, "process");
    assert!(r.next_base.relations.is_empty());
}

#[test]
fn relations_are_diffed_only_between_diffed_classes() {
    let base = inventory(
        vec![report("a", OK, &["a"]), report("b", OK, &["b"])],
        vec![Item::new("a", "1"), Item::new("b", "1")],
        vec![rel("a/1", "b/1")],
    );
    // Only "a" ran; its relation to b/1 is not re-reported but must be kept.
    let current = inventory(
        vec![report("a", OK, &["a"])],
        vec![Item::new("a", "1")],
        vec![],
    );
    let r = diff(base.clone(), current.clone());
    assert!(r.delta.is_none());
    assert_eq!(r.next_base.relations, base.relations);

    // Both ran: the relation disappeared.
    let current = inventory(
        vec![report("a", OK, &["a"]), report("b", OK, &["b"])],
        vec![Item::new("a", "1"), Item::new("b", "1")],
        vec![],
    );
    let d = diff(base.clone(), current.clone()).delta.unwrap();
    assert!(d.changes.is_empty());
    assert_eq!(
        d.relations_removed,
        vec![v1::Relation::from(&rel("a/1", "b/1"))]
    );
}

#[test]
fn nothing_changed_is_none_even_when_durations_differ() {
    let inv = inventory(
        vec![report("dpkg", OK, &["package"])],
        vec![Item::new("package", "x").with("ratio", f64::NAN)],
        vec![],
    );
    let mut again = inv.clone();
    again.collectors[0].duration_ms = 999;
    let r = diff(inv.clone(), again.clone());
    assert!(r.delta.is_none());
    assert_eq!(r.next_base.collectors[0].duration_ms, 999);
    assert_eq!(r.next_base.content_hash(), inv.content_hash());
}

#[test]
fn apply_refuses_unknown_kinds_and_wrong_hashes() {
    let base = inventory(vec![], vec![], vec![]);
    let bad = v1::Delta {
        changes: vec![v1::ItemChange {
            kind: 0,
            class: "a".into(),
            key: "1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(matches!(
        apply(&base, &bad),
        Err(DeltaError::UnknownKind { kind: 0, .. })
    ));
    let wrong = v1::Delta {
        changes: vec![v1::ItemChange {
            kind: v1::ChangeKind::Added as i32,
            class: "a".into(),
            key: "1".into(),
            ..Default::default()
        }],
        content_hash: vec![0; 32],
        ..Default::default()
    };
    assert!(matches!(
        apply(&base, &wrong),
        Err(DeltaError::HashMismatch { .. })
    ));
}

#[test]
fn snapshot_carries_the_content_hash() {
    let inv = inventory(vec![], vec![Item::new("a", "1")], vec![]);
    let s = snapshot(&inv);
    assert_eq!(s.content_hash, inv.content_hash().to_vec());
    let back = Inventory::try_from(s.inventory.as_ref().unwrap()).unwrap();
    assert_eq!(back, inv);
}

// === property tests ===

const CLASSES: &[&str] = &["a", "b", "c", "d"];

fn state() -> impl Strategy<Value = Option<CollectorState>> {
    prop_oneof![
        3 => Just(Some(CollectorState::Ok)),
        1 => Just(Some(CollectorState::Partial)),
        1 => Just(Some(CollectorState::Timeout)),
        1 => Just(Some(CollectorState::Error)),
        1 => Just(Some(CollectorState::PermissionDenied)),
        1 => Just(Some(CollectorState::Unsupported)),
        1 => Just(None),
    ]
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        Just(AttrValue::Null),
        any::<bool>().prop_map(AttrValue::Bool),
        (0i64..3).prop_map(AttrValue::Int),
        (0u8..3).prop_map(|f| AttrValue::Float(f64::from(f) / 2.0)),
        "[xy]{0,2}".prop_map(AttrValue::Str),
        prop::collection::vec((0i64..2).prop_map(AttrValue::Int), 0..2).prop_map(AttrValue::List),
    ]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    prop::collection::btree_map("[pq]", attr_value(), 0..3)
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(
        (prop::sample::select(CLASSES), "[0-4]", attrs()).prop_map(|(class, key, attrs)| Item {
            class: class.to_owned(),
            key,
            attrs,
        }),
        0..14,
    )
}

fn end() -> impl Strategy<Value = String> {
    (prop::sample::select(CLASSES), "[0-4]").prop_map(|(c, k)| format!("{c}/{k}"))
}

fn relations() -> impl Strategy<Value = Vec<Relation>> {
    prop::collection::vec(
        (
            end(),
            end(),
            prop::sample::select(&["runs", "member_of"][..]),
        )
            .prop_map(|(from, to, kind)| Relation {
                from,
                to,
                kind: kind.to_owned(),
            }),
        0..6,
    )
}

/// Collectors: one per class, plus "cd" sharing classes c and d (like six package managers).
fn collectors() -> impl Strategy<Value = Vec<CollectorReport>> {
    (prop::collection::vec(state(), CLASSES.len()), state()).prop_map(|(states, shared)| {
        let mut out: Vec<CollectorReport> = CLASSES
            .iter()
            .zip(states)
            .filter_map(|(class, s)| s.map(|s| report(&format!("col-{class}"), s, &[class])))
            .collect();
        if let Some(s) = shared {
            out.push(report("col-cd", s, &["c", "d"]));
        }
        out
    })
}

fn arb_inventory() -> impl Strategy<Value = Inventory> {
    (collectors(), items(), relations()).prop_map(|(c, i, r)| {
        // Not canonicalized on purpose: diff must cope with any order and with duplicates.
        Inventory {
            schema: SCHEMA.into(),
            collected_at: UNIX_EPOCH,
            agent: AgentInfo {
                version: "0.1.0".into(),
                instance_id: "i".into(),
            },
            host: HostIdentity::default(),
            collectors: c,
            items: i,
            relations: r,
        }
    })
}

fn canonical(inv: &Inventory) -> Inventory {
    let mut inv = inv.clone();
    // Duplicate keys collapse, the last wins (module doc).
    let map = item_map(&inv.items);
    inv.items = map
        .into_iter()
        .map(|((class, key), attrs)| Item { class, key, attrs })
        .collect();
    inv.canonicalize();
    inv
}

/// One state-based change applied to one item slot.
fn apply_one(state: Option<Attrs>, c: &v1::ItemChange) -> Option<Attrs> {
    let mut m = BTreeMap::new();
    if let Some(s) = state {
        m.insert((c.class.clone(), c.key.clone()), s);
    }
    apply_change(&mut m, c).unwrap();
    m.into_values().next()
}

fn change_between(before: &Option<Attrs>, after: &Option<Attrs>) -> Option<v1::ItemChange> {
    let kind = match (before, after) {
        (None, None) => return None,
        (None, Some(_)) => v1::ChangeKind::Added,
        (Some(_), None) => v1::ChangeKind::Removed,
        (Some(_), Some(_)) => v1::ChangeKind::Changed,
    };
    Some(change(kind, ("a", "1"), before.as_ref(), after.as_ref()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn apply_of_diff_is_next_base(base in arb_inventory(), current in arb_inventory()) {
        let r = diff(base.clone(), current.clone());
        let diffed = diffed_classes(&current.collectors);
        let canon_base = canonical(&base);
        match &r.delta {
            Some(d) => {
                prop_assert_eq!(&apply(&base, d).unwrap(), &r.next_base);
                prop_assert_eq!(d.content_hash.clone(), r.next_base.content_hash().to_vec());
                prop_assert_eq!(d.collectors.len(), current.collectors.len());
                for c in &d.changes {
                    prop_assert!(diffed.contains(&c.class), "change to non-diffed class {}", c.class);
                }
            }
            None => {
                prop_assert_eq!(&r.next_base.items, &canon_base.items);
                prop_assert_eq!(&r.next_base.relations, &canon_base.relations);
                prop_assert_eq!(r.next_base.content_hash(), canon_base.content_hash());
            }
        }
        // Items of a class that was not diffed are exactly base's.
        let kept = |inv: &Inventory| -> Vec<Item> {
            inv.items.iter().filter(|i| !diffed.contains(&i.class)).cloned().collect()
        };
        prop_assert_eq!(kept(&r.next_base), kept(&canon_base));
        // Items of a diffed class are exactly current's.
        let canon_current = canonical(&current);
        let fresh = |inv: &Inventory| -> Vec<Item> {
            inv.items.iter().filter(|i| diffed.contains(&i.class)).cloned().collect()
        };
        prop_assert_eq!(fresh(&r.next_base), fresh(&canon_current));
        // Diffing the result against itself, as the same collectors report it, finds nothing.
        let mut again = r.next_base.clone();
        again.collectors = current.collectors.clone();
        prop_assert!(diff(r.next_base.clone(), again.clone()).delta.is_none());
    }

    #[test]
    fn a_refresh_built_on_class_part_diffs_like_one_built_on_the_whole_base(
        base in arb_inventory(),
        class in prop::sample::select(CLASSES),
        fresh in items(),
        status in prop::sample::select(&[CollectorState::Ok, CollectorState::Partial][..]),
    ) {
        // As a watched-file refresh does: the re-described keys are replaced, the other
        // items of the class stay.
        let fresh: Vec<Item> = fresh.into_iter().filter(|i| i.class == class).collect();
        let refresh = |mut current: Inventory| {
            current.items.retain(|i| !(i.class == class && fresh.iter().any(|f| f.key == i.key)));
            current.items.extend(fresh.iter().cloned());
            current.collectors = vec![report("refresh", status, &[class])];
            current.canonicalize();
            current
        };
        let whole = diff(base.clone(), refresh(base.clone()));
        let part = diff(base.clone(), refresh(class_part(&base, class)));
        prop_assert_eq!(whole, part);
    }

    #[test]
    fn merge_changes_is_both_changes_in_sequence(
        s0 in prop::option::of(attrs()),
        s1 in prop::option::of(attrs()),
        s2 in prop::option::of(attrs()),
    ) {
        let (Some(earlier), Some(later)) = (change_between(&s0, &s1), change_between(&s1, &s2)) else {
            return Ok(());
        };
        let sequential = apply_one(apply_one(s0.clone(), &earlier), &later);
        let merged = merge_changes(&earlier, &later);
        let at_once = match &merged {
            Some(m) => apply_one(s0.clone(), m),
            None => s0.clone(),
        };
        prop_assert_eq!(&sequential, &at_once);
        prop_assert_eq!(&sequential, &s2);
        if let Some(m) = &merged {
            // History: the merged change starts where `earlier` started.
            prop_assert_eq!(change_between(&s0, &s2), Some(m.clone()));
        } else {
            prop_assert_eq!(&s0, &s2);
        }
    }

    #[test]
    fn merge_changes_never_panics_on_arbitrary_kinds(
        k1 in -1i32..5, k2 in -1i32..5, a in attrs(), b in attrs(),
    ) {
        let c1 = v1::ItemChange { kind: k1, class: "a".into(), key: "1".into(),
            old_attrs: convert::attrs_to_proto(&a), new_attrs: convert::attrs_to_proto(&b) };
        let c2 = v1::ItemChange { kind: k2, ..c1.clone() };
        let _ = merge_changes(&c1, &c2);
    }
}

#[test]
fn a_monitor_round_diffs_only_monitors_and_a_failed_one_removes_none() {
    let monitor = |name: &str, status: &str| {
        Item::new("monitor", name)
            .with("kind", "tcp_port")
            .with("status", status)
    };
    let base = inventory(
        vec![
            report("dpkg", OK, &["package"]),
            report("monitor", OK, &["monitor"]),
        ],
        vec![
            Item::new("package", "dpkg:bash:amd64"),
            monitor("ssh", "up"),
            monitor("web", "up"),
        ],
        vec![],
    );
    // A round: ssh went down, web left the set; packages were not looked at.
    let round = inventory(
        vec![report("monitor", OK, &["monitor"])],
        vec![monitor("ssh", "down")],
        vec![],
    );
    let r = diff(base.clone(), round.clone());
    let d = r.delta.unwrap();
    assert_eq!(
        kinds(&d),
        vec![
            (v1::ChangeKind::Changed as i32, "ssh".into()),
            (v1::ChangeKind::Removed as i32, "web".into()),
        ]
    );
    assert!(r.next_base.items.iter().any(|i| i.class == "package"));
    // A round that could not run reports error and no items: nothing is removed.
    let failed = inventory(
        vec![report("monitor", CollectorState::Error, &["monitor"])],
        vec![],
        vec![],
    );
    let r = diff(base.clone(), failed.clone());
    assert!(r.delta.unwrap().changes.is_empty());
    assert_eq!(r.next_base.items, base.items);
}
